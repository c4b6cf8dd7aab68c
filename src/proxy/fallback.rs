//! Model fallbacks (`fallbacks:` and `context_window_fallbacks:` in the config): when every
//! endpoint of a request's model failed before answering, or none is in service (or the prompt
//! is over its context window), the request moves to the next model of the chain that has an
//! endpoint in service, with the body's `model` (JSON or a multipart field) rewritten to that
//! model's name.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;

use super::model_field::ModelField;
use crate::routes::{Pool, Routes};

/// The fallback models a request may still move to, and the body to rewrite for them.
pub struct FallbackChain {
    /// The body sent to the requested model.
    body: Bytes,
    /// Where it names the model.
    field: ModelField,
    /// The fallback models not tried yet, in order, with their pools as of the request's start.
    next: VecDeque<(String, Arc<Pool>)>,
}

impl FallbackChain {
    /// The chain `map` names for `model`, if any.
    pub fn of(
        map: &HashMap<String, Vec<String>>,
        model: &str,
        body: &Bytes,
        field: &ModelField,
        routes: &Routes,
        allows: impl Fn(&str) -> bool,
    ) -> Option<Self> {
        // Most configs have no fallbacks: skip hashing the model for nothing.
        if map.is_empty() {
            return None;
        }
        let models = map.get(model)?;
        Self::new(body.clone(), field.clone(), models, routes, allows)
    }

    /// The chain of `models` that have endpoints in `routes` and that the request's key
    /// `allows`; `None` when none is left.
    pub fn new(
        body: Bytes,
        field: ModelField,
        models: &[String],
        routes: &Routes,
        allows: impl Fn(&str) -> bool,
    ) -> Option<Self> {
        let next: VecDeque<_> = models
            .iter()
            .filter(|m| allows(m))
            .filter_map(|m| routes.pool(m).map(|p| (m.clone(), p.clone())))
            .collect();
        (!next.is_empty()).then_some(FallbackChain { body, field, next })
    }

    /// Fallback models left.
    pub fn remaining(&self) -> usize {
        self.next.len()
    }

    /// Whether a fallback model has an endpoint in service now.
    pub fn available(&self) -> bool {
        self.next.iter().any(|(_, p)| p.has_candidate(&[]))
    }

    /// Move to the next fallback model with an endpoint in service: its name, its pool, and
    /// the body rewritten for it with where that body names it.
    pub fn advance(&mut self) -> Option<(String, Arc<Pool>, (Bytes, ModelField))> {
        while let Some((model, pool)) = self.next.pop_front() {
            if !pool.has_candidate(&[]) {
                continue;
            }
            // The body named a model to route by, so it has one to replace.
            let renamed = self.field.rename(&self.body, &model)?;
            return Some((model, pool, renamed));
        }
        None
    }
}
