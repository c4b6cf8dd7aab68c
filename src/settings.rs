//! The settings every request reads, published with each routing snapshot.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::auth::Auth;
use crate::balance::KeySource;
use crate::state::Limiter;

pub const DEFAULT_TIMEOUT_SECS: u64 = 60;
pub const DEFAULT_MAX_BODY_BYTES: usize = 32 * 1024 * 1024;
/// Request line and headers together; OpenAI's own SDK requests are under 2 KiB.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 64 * 1024;
/// Attempts per request across endpoints: the first one and up to two failovers.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
/// The longest wait for a rate-limited deployment's `Retry-After` before retrying it.
pub const DEFAULT_MAX_RETRY_WAIT_SECS: u64 = 5;
/// Retries (and their waits) start only this long after the request arrived.
pub const DEFAULT_RETRY_BUDGET_SECS: u64 = 30;

/// What each request reads from the config: swapped with the routes on a reload, so a request
/// sees one consistent version of both.
#[derive(Debug, Clone)]
pub struct RequestSettings {
    /// Larger request bodies get 413.
    pub max_body_bytes: usize,
    /// The longest a client may take to send its body.
    pub body_deadline: Duration,
    /// Attempts per request, each on a different endpoint.
    pub max_attempts: u32,
    /// Larger request heads get 431.
    pub max_header_bytes: usize,
    /// `stream_usage: force`.
    pub force_stream_usage: bool,
    /// Models to try when every endpoint of a model failed before answering.
    pub fallbacks: HashMap<String, Vec<String>>,
    /// Models with a longer context, for a prompt over a model's context window.
    pub context_window_fallbacks: HashMap<String, Vec<String>>,
    /// The longest wait for a rate-limited deployment before retrying it.
    pub max_retry_wait: Duration,
    /// No retry starts past this time since the request arrived.
    pub retry_budget: Duration,
    /// Where `prefix_affinity` pools read a request's key from.
    pub affinity_key: KeySource,
    /// Who may send requests.
    pub auth: Arc<Auth>,
    /// Counts their limits.
    pub limiter: Arc<Limiter>,
}

impl Default for RequestSettings {
    fn default() -> Self {
        RequestSettings {
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            body_deadline: Duration::from_secs(DEFAULT_TIMEOUT_SECS),
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            force_stream_usage: false,
            fallbacks: HashMap::new(),
            context_window_fallbacks: HashMap::new(),
            max_retry_wait: Duration::from_secs(DEFAULT_MAX_RETRY_WAIT_SECS),
            retry_budget: Duration::from_secs(DEFAULT_RETRY_BUDGET_SECS),
            affinity_key: KeySource::default(),
            auth: Arc::default(),
            limiter: Arc::default(),
        }
    }
}
