//! Model fallbacks (`fallbacks:` in the config): when every endpoint of a request's model failed
//! before answering, or none is in service, the request moves to the next fallback model that
//! has an endpoint in service, with the body's `model` rewritten to that model's id.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;

use crate::openai::with_model;
use crate::routes::{Pool, Routes};

/// The fallback models a request may still move to, and the body to rewrite for them.
pub struct FallbackChain {
    /// The body sent to the requested model.
    body: Bytes,
    /// The fallback models not tried yet, in order, with their pools as of the request's start.
    next: VecDeque<(String, Arc<Pool>)>,
}

impl FallbackChain {
    /// The chain of `models` that have endpoints in `routes` and that the request's key
    /// `allows`; `None` when none is left.
    pub fn new(
        body: Bytes,
        models: &[String],
        routes: &Routes,
        allows: impl Fn(&str) -> bool,
    ) -> Option<Self> {
        let next: VecDeque<_> = models
            .iter()
            .filter(|m| allows(m))
            .filter_map(|m| routes.pool(m).map(|p| (m.clone(), p.clone())))
            .collect();
        (!next.is_empty()).then_some(FallbackChain { body, next })
    }

    /// Fallback models left.
    pub fn remaining(&self) -> usize {
        self.next.len()
    }

    /// Whether a fallback model has an endpoint in service now.
    pub fn available(&self) -> bool {
        self.next.iter().any(|(_, p)| p.has_candidate(&[]))
    }

    /// Move to the next fallback model with an endpoint in service: its id, its pool and the
    /// body rewritten for it.
    pub fn advance(&mut self) -> Option<(String, Arc<Pool>, Bytes)> {
        while let Some((model, pool)) = self.next.pop_front() {
            if !pool.has_candidate(&[]) {
                continue;
            }
            // The body had a top-level `model` to route by, so it has one to replace.
            let body = with_model(&self.body, &model)?;
            return Some((model, pool, body));
        }
        None
    }
}
