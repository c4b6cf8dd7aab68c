//! Model fallbacks (`fallbacks:` in the config): when every endpoint of a request's model failed
//! before answering, or none is in service, the request moves to the next fallback model that
//! has an endpoint in service, with the body's `model` rewritten to that model's id.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;

use crate::openai::with_model;
use crate::routes::{Pool, Routes};

/// The fallback models a request may still move to, and the body to send them.
pub struct FallbackChain {
    /// The client's body, as read.
    body: Bytes,
    /// The fallback models not tried yet, in order, with their pools as of the request's start.
    next: VecDeque<(String, Arc<Pool>)>,
    /// The body rewritten for the fallback model in use (`None` while on the requested model).
    pub body_override: Option<Bytes>,
}

impl FallbackChain {
    /// The chain of `models` that have endpoints in `routes`; `None` when none has.
    pub fn new(body: Bytes, models: &[String], routes: &Routes) -> Option<Self> {
        let next: VecDeque<_> = models
            .iter()
            .filter_map(|m| routes.pool(m).map(|p| (m.clone(), p.clone())))
            .collect();
        (!next.is_empty()).then_some(FallbackChain {
            body,
            next,
            body_override: None,
        })
    }

    /// Fallback models left.
    pub fn remaining(&self) -> usize {
        self.next.len()
    }

    /// Whether a fallback model has an endpoint in service now.
    pub fn available(&self) -> bool {
        self.next.iter().any(|(_, p)| p.has_candidate(&[]))
    }

    /// Move to the next fallback model with an endpoint in service: its id and pool.
    pub fn advance(&mut self) -> Option<(String, Arc<Pool>)> {
        while let Some((model, pool)) = self.next.pop_front() {
            if !pool.has_candidate(&[]) {
                continue;
            }
            // The body had a top-level `model` to route by, so it has one to replace.
            self.body_override = Some(with_model(&self.body, &model)?);
            return Some((model, pool));
        }
        None
    }

    /// The body to send now: rewritten for a fallback model, or the client's own.
    pub fn body(&self) -> &Bytes {
        self.body_override.as_ref().unwrap_or(&self.body)
    }
}
