//! Prometheus metrics, `GET /metrics`. Labels are of low cardinality only: a model label is a
//! model the gateway routes (never a name a client made up), an endpoint label a configured
//! endpoint's name, a status an HTTP code. Per-endpoint gauges (in flight, health, models)
//! are read when scraped, so the request path does not keep them.
//!
//! The request path touches no label map: the counters of a route (model and endpoint) and of
//! an endpoint are looked up once, when discovery builds the pool or upstream, and kept there
//! ([`RouteCounters`], [`Metrics::attempts`]); histograms are sharded per thread
//! ([`histogram`]).

mod histogram;

use std::sync::OnceLock;

use bytes::Bytes;
use prometheus::{IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};

pub use histogram::Histogram;

use crate::usage::Tokens;

/// From 1 ms to about 2 minutes: LLM requests span that whole range.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];
/// The gateway's own time per request: microseconds to a few milliseconds.
const OVERHEAD_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1,
];

/// Every metric the gateway exports.
pub struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub request_duration: Histogram,
    pub time_to_first_byte: Histogram,
    pub overhead: Histogram,
    upstream_attempts: IntCounterVec,
    pub upstream_failures: IntCounterVec,
    pub retries: IntCounterVec,
    pub deployment_healthy: IntGaugeVec,
    pub discovery_runs: IntCounterVec,
    pub config_reloads: IntCounterVec,
    client_refusals: IntCounterVec,
    state_errors: IntCounterVec,
    tokens: IntCounterVec,
    inflight: IntGaugeVec,
    healthy: IntGaugeVec,
    models: IntGaugeVec,
}

static METRICS: OnceLock<Metrics> = OnceLock::new();

/// The process's metrics; `None` when the config turned them off (nothing is recorded).
pub fn get() -> Option<&'static Metrics> {
    METRICS.get()
}

/// Turn metrics on for this process (once; later calls keep the first).
pub fn enable() {
    METRICS.get_or_init(Metrics::new);
}

impl Metrics {
    fn new() -> Metrics {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry.register(Box::new(c.clone())).expect("unique name");
            c
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry.register(Box::new(g.clone())).expect("unique name");
            g
        };
        let histogram = Histogram::new;
        Metrics {
            requests: counter(
                "ai_proxy_requests_total",
                "Requests answered, by routed model, serving endpoint and the HTTP status sent to the client (endpoint \"\" when the gateway answered itself).",
                &["model", "endpoint", "status"],
            ),
            request_duration: histogram(
                "ai_proxy_request_duration_seconds",
                "From the request head to the end of the response.",
                LATENCY_BUCKETS,
            ),
            time_to_first_byte: histogram(
                "ai_proxy_time_to_first_byte_seconds",
                "From the request head to the proxied response head (streams and non-streams).",
                LATENCY_BUCKETS,
            ),
            overhead: histogram(
                "ai_proxy_overhead_seconds",
                "The gateway's own time per proxied request: from the request head to the request going upstream (reading and routing the body); upstream time excluded.",
                OVERHEAD_BUCKETS,
            ),
            upstream_attempts: counter(
                "ai_proxy_upstream_attempts_total",
                "Attempts sent to an endpoint (a request that failed over counts one per endpoint tried).",
                &["endpoint"],
            ),
            upstream_failures: counter(
                "ai_proxy_upstream_failures_total",
                "Attempts that failed, by endpoint, model (\"\" for a fault of the address: connect, reset, probe) and reason.",
                &["endpoint", "model", "reason"],
            ),
            retries: counter(
                "ai_proxy_retries_total",
                "Failed attempts that the gateway retried, by the model that failed, the failure class (as in the access log's `retries`) and the request's outcome (recovered: the client got a success; failed: it did not).",
                &["model", "class", "outcome"],
            ),
            discovery_runs: counter(
                "ai_proxy_discovery_runs_total",
                "Discovery polls (the active health probes), by endpoint and result (ok, failed).",
                &["endpoint", "result"],
            ),
            client_refusals: counter(
                "ai_proxy_client_refusals_total",
                "Requests refused by access control, by client key name (\"-\" for a missing or unknown key) and reason (invalid_key, model_not_allowed, rate_limited, tokens_limited, concurrency_limited, budget_exceeded, state_unavailable).",
                &["key", "reason"],
            ),
            state_errors: counter(
                "ai_proxy_state_errors_total",
                "Calls to the shared state (Redis) that failed or timed out, by operation (admit, finish, renew, usage, probe).",
                &["operation"],
            ),
            config_reloads: counter(
                "ai_proxy_config_reloads_total",
                "Config reloads (SIGHUP or a changed file), by result (applied, rejected).",
                &["result"],
            ),
            tokens: counter(
                "ai_proxy_tokens_total",
                "Tokens of answered requests, by routed model, serving endpoint and kind (prompt, completion), from the `usage` of JSON answers and of a stream's usage chunk.",
                &["model", "endpoint", "kind"],
            ),
            inflight: gauge(
                "ai_proxy_inflight_requests",
                "Requests sent to an endpoint whose response has not ended.",
                &["endpoint"],
            ),
            healthy: gauge(
                "ai_proxy_endpoint_healthy",
                "1 when the endpoint's last poll succeeded and it is in service, else 0.",
                &["endpoint"],
            ),
            deployment_healthy: gauge(
                "ai_proxy_deployment_healthy",
                "1 when a model is in service on an endpoint (its deployment not ejected nor held by a Retry-After), else 0.",
                &["endpoint", "model"],
            ),
            models: gauge(
                "ai_proxy_endpoint_models",
                "Models an endpoint serves, as of its last good poll.",
                &["endpoint"],
            ),
            registry,
        }
    }

    /// The attempts counter of an endpoint.
    pub fn attempts(&self, endpoint: &str) -> IntCounter {
        self.upstream_attempts.with_label_values(&[endpoint])
    }

    /// Count a refused request of client key `key` ("-": missing or unknown) for `reason`.
    pub fn client_refused(&self, key: &str, reason: &str) {
        self.client_refusals.with_label_values(&[key, reason]).inc();
    }

    /// Count a failed call to the shared state.
    pub fn state_error(&self, operation: &str) {
        self.state_errors.with_label_values(&[operation]).inc();
    }

    /// The counters of requests routed to `model` and served by `endpoint`.
    pub fn route(&self, model: &str, endpoint: &str) -> RouteCounters {
        RouteCounters {
            model: model.to_string(),
            endpoint: endpoint.to_string(),
            ok: self.requests.with_label_values(&[model, endpoint, "200"]),
            prompt_tokens: self.tokens.with_label_values(&[model, endpoint, "prompt"]),
            completion_tokens: self
                .tokens
                .with_label_values(&[model, endpoint, "completion"]),
        }
    }

    /// The text exposition, with the per-endpoint gauges set from `gauges` (read from the
    /// routing snapshot at scrape time).
    pub fn render<'a>(&self, gauges: impl IntoIterator<Item = EndpointGauges<'a>>) -> Bytes {
        for g in gauges {
            for (model, up) in &g.models_up {
                self.deployment_healthy
                    .with_label_values(&[g.endpoint, model])
                    .set(i64::from(*up));
            }
            let gauge = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
            self.inflight
                .with_label_values(&[g.endpoint])
                .set(gauge(g.in_flight));
            self.healthy
                .with_label_values(&[g.endpoint])
                .set(i64::from(g.healthy));
            self.models
                .with_label_values(&[g.endpoint])
                .set(gauge(g.models));
        }
        let mut out = String::with_capacity(16 * 1024);
        if let Err(e) = TextEncoder::new().encode_utf8(&self.registry.gather(), &mut out) {
            log::error!("metrics: cannot encode: {e}");
        }
        for h in [
            &self.request_duration,
            &self.time_to_first_byte,
            &self.overhead,
        ] {
            h.render(&mut out);
        }
        Bytes::from(out)
    }
}

/// An endpoint's gauges as one scrape reads them.
pub struct EndpointGauges<'a> {
    pub endpoint: &'a str,
    /// Each model it serves, and whether some member's deployment of it is in service.
    pub models_up: Vec<(&'a str, bool)>,
    /// Requests in flight on all its members.
    pub in_flight: usize,
    /// Some member polled and in service.
    pub healthy: bool,
    /// Public models it serves.
    pub models: usize,
}

/// The counters of one route (a model and an endpoint serving it), looked up once.
#[derive(Debug)]
pub struct RouteCounters {
    model: String,
    endpoint: String,
    /// `ai_proxy_requests_total` with status 200, by far the most counted.
    ok: IntCounter,
    prompt_tokens: IntCounter,
    completion_tokens: IntCounter,
}

impl RouteCounters {
    /// Count a request answered with `status` (its digits).
    pub fn request(&self, metrics: &Metrics, status: &str) {
        if status == "200" {
            self.ok.inc();
        } else {
            metrics
                .requests
                .with_label_values(&[&self.model, &self.endpoint, status])
                .inc();
        }
    }

    /// Count one answer's tokens.
    pub fn tokens(&self, tokens: Tokens) {
        self.prompt_tokens.inc_by(tokens.prompt);
        self.completion_tokens.inc_by(tokens.completion);
    }
}
