//! YAML and legacy-env configuration, validated into one `Config`; the one seam to Pingora's
//! `ServerConf`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use pingora::protocols::tls::CaType;
use pingora::server::configuration::ServerConf;
use serde::Deserialize;

use crate::access_log;
use crate::auth::{Auth, AuthConfig};
use crate::balance::{AffinityOptions, Balancing, KeySource, PolicyName};
use crate::endpoint::{
    redact_userinfo, ApiKey, DeclaredModel, Endpoint, EndpointKind, MessagesMode, Timeouts,
};
pub use crate::env::{Env, EnvFile, ProcessEnv};
use crate::health::HealthPolicy;
use crate::settings::RequestSettings;
pub use crate::settings::{
    DEFAULT_MAX_ATTEMPTS, DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_HEADER_BYTES,
    DEFAULT_MAX_RETRY_WAIT_SECS, DEFAULT_RETRY_BUDGET_SECS, DEFAULT_TIMEOUT_SECS,
};
use crate::state::{Limiter, StateConfig, StateSettings};

pub const DEFAULT_LISTEN: &str = "0.0.0.0:8000";
pub const DEFAULT_DISCOVERY_INTERVAL_SECS: u64 = 30;
pub const DEFAULT_CONNECT_TIMEOUT_SECS: u64 = 5;
/// SIGTERM: how long requests in flight (streams) may take to finish. Kubernetes' default
/// termination grace period is 30 s; an idle gateway exits at once whatever this is.
pub const DEFAULT_SHUTDOWN_GRACE_SECS: u64 = 25;
/// A client has this long to send a request head (keep-alive idle time included).
pub const DEFAULT_HEADER_TIMEOUT_SECS: u64 = 30;
/// A discovery poll (the active probe) that takes longer marks the endpoint down.
pub const DEFAULT_PROBE_TIMEOUT_SECS: u64 = 5;
/// The legacy tool's upstream when nothing else is configured.
pub const DEFAULT_TARGET_URL: &str = "https://api.openai.com";
/// The config file read when `--config` is not given and the file exists.
pub const DEFAULT_CONFIG_PATH: &str = "conf/ai-proxy.yaml";
/// Where a graceful upgrade hands the listening sockets to the new process.
pub const DEFAULT_UPGRADE_SOCK: &str = "/tmp/ai-proxy-upgrade.sock";

/// The YAML file as written. Strict: unknown keys are errors.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    timeout_secs: Option<u64>,
    connect_timeout_secs: Option<u64>,
    max_body_bytes: Option<usize>,
    discovery_interval_secs: Option<u64>,
    threads: Option<usize>,
    max_attempts: Option<u32>,
    metrics: Option<bool>,
    access_log: Option<String>,
    stream_usage: Option<StreamUsage>,
    total_timeout_secs: Option<f64>,
    shutdown_grace_secs: Option<u64>,
    shutdown_delay_secs: Option<f64>,
    upgrade_sock: Option<PathBuf>,
    watch_config_secs: Option<f64>,
    header_timeout_secs: Option<u64>,
    max_header_bytes: Option<usize>,
    max_connections: Option<usize>,
    health: Option<HealthConfig>,
    fallbacks: Option<HashMap<String, Vec<String>>>,
    context_window_fallbacks: Option<HashMap<String, Vec<String>>>,
    max_retry_wait_secs: Option<f64>,
    retry_budget_secs: Option<f64>,
    aliases: Option<HashMap<String, String>>,
    balancing: Option<BalancingConfig>,
    auth: Option<AuthConfig>,
    state: Option<StateConfig>,
    endpoints: Option<Vec<EndpointConfig>>,
}

/// `balancing:`: the default policy and per-model overrides.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct BalancingConfig {
    policy: Option<PolicyName>,
    models: Option<HashMap<String, PolicyName>>,
    prefix_affinity: Option<AffinityConfig>,
}

/// `balancing.prefix_affinity:`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AffinityConfig {
    key: Option<KeySource>,
    epsilon: Option<f64>,
}

/// `health:`: passive health thresholds (see `health.rs`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HealthConfig {
    failure_threshold: Option<u32>,
    ejection_secs: Option<f64>,
    max_ejection_secs: Option<f64>,
    probe_timeout_secs: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EndpointConfig {
    url: String,
    #[serde(rename = "type", default)]
    kind: EndpointKind,
    name: Option<String>,
    api_key: Option<String>,
    api_key_env: Option<String>,
    ca_file: Option<PathBuf>,
    timeouts: Option<TimeoutsConfig>,
    weight: Option<u32>,
    models: Option<Vec<DeclaredModelConfig>>,
    discover: Option<bool>,
    #[serde(default)]
    messages: MessagesMode,
}

/// One entry of an endpoint's `models:`: an upstream id, or `{id, name}` to serve it under a
/// public name.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum DeclaredModelConfig {
    Id(String),
    Named { id: String, name: Option<String> },
}

/// An endpoint's `timeouts:`, each overriding the top-level default.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TimeoutsConfig {
    connect_secs: Option<f64>,
    first_byte_secs: Option<f64>,
    idle_secs: Option<f64>,
    total_secs: Option<f64>,
}

/// `stream_usage:`: whether the gateway asks upstreams for a stream's usage chunk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamUsage {
    /// Streams carry usage when their client asks (`stream_options.include_usage`).
    #[default]
    Client,
    /// Every chat or completions stream asks for usage; the usage chunk is removed from what a
    /// client that did not ask receives, so tokens are counted for every stream.
    Force,
}

/// Where the endpoints came from (shown at start-up).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Yaml(PathBuf),
    Env,
}

/// The validated configuration everything else is built from.
#[derive(Debug)]
pub struct Config {
    pub source: Source,
    /// The YAML file it was read from (what a reload reads again); `None` in env-only mode.
    pub file: Option<PathBuf>,
    pub listen: SocketAddr,
    /// Upstream read timeout: time to first byte and every gap between later chunks.
    pub timeout: Duration,
    pub connect_timeout: Duration,
    pub max_body_bytes: usize,
    pub discovery_interval: Duration,
    /// Worker threads of the proxy service.
    pub threads: usize,
    /// Attempts per request, each on a different endpoint, before the failure is final.
    pub max_attempts: u32,
    /// SIGTERM: the longest wait for requests in flight before they are stopped.
    pub shutdown_grace: Duration,
    /// SIGTERM: how long the gateway keeps accepting (with `/ready` at 503) before it closes
    /// its listeners, so that load balancers take it out first.
    pub shutdown_delay: Duration,
    /// Graceful upgrade: the Unix socket the listening sockets are handed over on.
    pub upgrade_sock: PathBuf,
    /// Reload when the config file's content changes, checked this often (`None`: SIGHUP only).
    pub watch_config: Option<Duration>,
    /// A client's time to send a request head, keep-alive idle time included.
    pub header_timeout: Duration,
    /// Request line and headers together; larger heads get 431.
    pub max_header_bytes: usize,
    /// Record metrics and serve `GET /metrics`.
    pub metrics: bool,
    /// Where the access log goes.
    pub access_log: access_log::Target,
    pub stream_usage: StreamUsage,
    /// Client connections served at once (`None`: no cap but the open-files limit).
    pub max_connections: Option<usize>,
    pub health: HealthPolicy,
    /// How long a discovery poll (the active health probe) may take.
    pub probe_timeout: Duration,
    /// Models to try, in order, when every endpoint of a model failed before answering.
    pub fallbacks: HashMap<String, Vec<String>>,
    /// Models with a longer context to try, in order, when a model answers that the prompt
    /// is over its context window.
    pub context_window_fallbacks: HashMap<String, Vec<String>>,
    /// The longest wait for a rate-limited deployment before retrying it (`Retry-After`).
    pub max_retry_wait: Duration,
    /// No retry (nor wait) starts past this time since the request arrived.
    pub retry_budget: Duration,
    /// Other names of public model names (`aliases:`): alias -> model.
    pub aliases: BTreeMap<String, String>,
    /// The balancing policy of each model.
    pub balancing: Balancing,
    /// Client keys and the admin key (`auth:`, else `AI_PROXY_KEYS`); open by default.
    pub auth: Arc<Auth>,
    /// Shared state of the replicas (`state:`): `None` counts limits per process.
    pub state: Option<StateSettings>,
    /// Counts the client keys' limits; one for the life of the process (a reload keeps it).
    pub limiter: Arc<Limiter>,
    pub endpoints: Vec<Arc<Endpoint>>,
}

impl Config {
    /// Load from a YAML file (which may leave `endpoints` to the environment).
    pub fn from_file(path: &Path, env: &dyn Env) -> Result<Config, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
        Self::from_yaml(&text, Source::Yaml(path.to_path_buf()), env)
            .map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Parse YAML text; an empty document is a config with every default.
    pub fn from_yaml(text: &str, source: Source, env: &dyn Env) -> Result<Config, String> {
        let file: FileConfig = if text.trim().is_empty() {
            FileConfig::default()
        } else {
            serde_yaml::from_str::<Option<FileConfig>>(text)
                .map_err(|e| {
                    one_line(&e.to_string())
                        .replace("struct FileConfig", "a mapping of config keys")
                        .replace("struct EndpointConfig", "an endpoint mapping")
                })?
                .unwrap_or_default()
        };
        Self::build(file, source, env)
    }

    /// The legacy mode: everything from the environment.
    pub fn from_env(env: &dyn Env) -> Result<Config, String> {
        Self::build(FileConfig::default(), Source::Env, env)
    }

    /// What `ai-proxy` does without `--config`: the default file if present, else the env.
    pub fn load_default(env: &dyn Env) -> Result<Config, String> {
        let path = Path::new(DEFAULT_CONFIG_PATH);
        if path.exists() {
            Self::from_file(path, env)
        } else {
            Self::from_env(env)
        }
    }

    fn build(file: FileConfig, source: Source, env: &dyn Env) -> Result<Config, String> {
        let mut listen: SocketAddr = file
            .listen
            .as_deref()
            .unwrap_or(DEFAULT_LISTEN)
            .parse()
            .map_err(|_| {
                format!(
                    "listen: {:?} is not an ip:port address (e.g. \"0.0.0.0:8000\")",
                    file.listen.as_deref().unwrap_or_default()
                )
            })?;
        if let Some(port) = env.var("PORT") {
            listen.set_port(
                port.trim()
                    .parse()
                    .map_err(|_| format!("env PORT: {port:?} is not a port number"))?,
            );
        }
        let timeout_secs = match env.var("TIMEOUT") {
            Some(t) => t
                .trim()
                .parse()
                .map_err(|_| format!("env TIMEOUT: {t:?} is not a number of seconds"))?,
            None => file.timeout_secs.unwrap_or(DEFAULT_TIMEOUT_SECS),
        };
        positive("timeout_secs", timeout_secs)?;
        let connect_timeout_secs = positive_or(
            "connect_timeout_secs",
            file.connect_timeout_secs,
            DEFAULT_CONNECT_TIMEOUT_SECS,
        )?;
        let discovery_interval_secs = positive_or(
            "discovery_interval_secs",
            file.discovery_interval_secs,
            DEFAULT_DISCOVERY_INTERVAL_SECS,
        )?;
        let max_body_bytes = positive_or(
            "max_body_bytes",
            file.max_body_bytes,
            DEFAULT_MAX_BODY_BYTES,
        )?;
        let threads = match file.threads {
            Some(n) => positive("threads", n)?,
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };

        let max_attempts = positive_or("max_attempts", file.max_attempts, DEFAULT_MAX_ATTEMPTS)?;
        let health_config = file.health.unwrap_or_default();
        let probe_timeout = health_config
            .probe_timeout_secs
            .map_or(Ok(Duration::from_secs(DEFAULT_PROBE_TIMEOUT_SECS)), |s| {
                seconds("health.probe_timeout_secs", s)
            })?;
        let health = health_policy(health_config)?;
        let timeouts = Timeouts {
            connect: Duration::from_secs(connect_timeout_secs),
            first_byte: Duration::from_secs(timeout_secs),
            idle: Duration::from_secs(timeout_secs),
            total: file
                .total_timeout_secs
                .map(|s| seconds("total_timeout_secs", s))
                .transpose()?,
        };
        let header_timeout_secs = positive_or(
            "header_timeout_secs",
            file.header_timeout_secs,
            DEFAULT_HEADER_TIMEOUT_SECS,
        )?;
        let max_header_bytes = positive_or(
            "max_header_bytes",
            file.max_header_bytes,
            DEFAULT_MAX_HEADER_BYTES,
        )?;
        if let Some(n) = file.max_connections {
            positive("max_connections", n)?;
        }
        let shutdown_grace_secs = file
            .shutdown_grace_secs
            .unwrap_or(DEFAULT_SHUTDOWN_GRACE_SECS);
        // 0 turns these off.
        let optional_seconds = |field: &str, v: Option<f64>| match v {
            None => Ok(None),
            Some(0.0) => Ok(None),
            Some(s) => seconds(field, s).map(Some),
        };
        let shutdown_delay = optional_seconds("shutdown_delay_secs", file.shutdown_delay_secs)?
            .unwrap_or(Duration::ZERO);
        let watch_config = optional_seconds("watch_config_secs", file.watch_config_secs)?;
        let max_retry_wait = match file.max_retry_wait_secs {
            None => Duration::from_secs(DEFAULT_MAX_RETRY_WAIT_SECS),
            Some(s) => optional_seconds("max_retry_wait_secs", Some(s))?.unwrap_or(Duration::ZERO),
        };
        let retry_budget = file
            .retry_budget_secs
            .map_or(Ok(Duration::from_secs(DEFAULT_RETRY_BUDGET_SECS)), |s| {
                seconds("retry_budget_secs", s)
            })?;
        let upgrade_sock = file
            .upgrade_sock
            .unwrap_or_else(|| PathBuf::from(DEFAULT_UPGRADE_SOCK));
        if upgrade_sock.as_os_str().is_empty() || upgrade_sock.to_str().is_none() {
            return Err("upgrade_sock: give the path of a Unix socket".into());
        }
        let state = file
            .state
            .map(|s| StateSettings::from_config(s, env))
            .transpose()?;
        let config_file = match &source {
            Source::Yaml(path) => Some(path.clone()),
            Source::Env => None,
        };

        let (endpoints, source) = match file.endpoints {
            Some(list) if !list.is_empty() => {
                (yaml_endpoints(list, env, health, timeouts)?, source)
            }
            _ => (env_endpoints(env, health, timeouts)?, Source::Env),
        };
        Ok(Config {
            source,
            file: config_file,
            listen,
            timeout: Duration::from_secs(timeout_secs),
            connect_timeout: Duration::from_secs(connect_timeout_secs),
            max_body_bytes,
            discovery_interval: Duration::from_secs(discovery_interval_secs),
            threads,
            max_attempts,
            shutdown_grace: Duration::from_secs(shutdown_grace_secs),
            shutdown_delay,
            upgrade_sock,
            watch_config,
            header_timeout: Duration::from_secs(header_timeout_secs),
            max_header_bytes,
            max_connections: file.max_connections,
            metrics: file.metrics.unwrap_or(true),
            access_log: match file.access_log.as_deref().map(str::trim) {
                None | Some("stdout") => access_log::Target::Stdout,
                Some("off") => access_log::Target::Off,
                Some("") => return Err("access_log: give stdout, off or a file path".into()),
                Some(path) => access_log::Target::File(PathBuf::from(path)),
            },
            stream_usage: file.stream_usage.unwrap_or_default(),
            health,
            probe_timeout,
            fallbacks: fallbacks("fallbacks", file.fallbacks.unwrap_or_default())?,
            context_window_fallbacks: fallbacks(
                "context_window_fallbacks",
                file.context_window_fallbacks.unwrap_or_default(),
            )?,
            max_retry_wait,
            retry_budget,
            aliases: aliases(file.aliases.unwrap_or_default())?,
            balancing: balancing(file.balancing.unwrap_or_default())?,
            auth: Arc::new(match file.auth {
                Some(section) => Auth::from_config(section, env)?,
                None => Auth::from_env(env)?,
            }),
            limiter: Arc::new(Limiter::new(state.as_ref())?),
            state,
            endpoints,
        })
    }

    /// Pingora's settings, derived here and nowhere else.
    pub fn server_conf(&self) -> ServerConf {
        ServerConf {
            threads: self.threads,
            // SIGTERM: requests in flight get this long; `shutdown::Signals` exits as soon as
            // the last one ends, so the whole period is only spent when something is running.
            grace_period_seconds: Some(self.shutdown_grace.as_secs()),
            graceful_shutdown_timeout_seconds: Some(1),
            // The proxy decides retries itself (`max_attempts` per model, a reconnect, then
            // each fallback model's); this is only a backstop.
            max_retries: (self.max_attempts as usize + 1)
                * (1 + longest(&self.fallbacks) + longest(&self.context_window_fallbacks)),
            upgrade_sock: self.upgrade_sock.to_string_lossy().into_owned(),
            // Idle pooled connections are checked when taken, not watched by a task each
            // (patches/pingora-core/0001): no spawn per release, no hand-off per reuse.
            upstream_keepalive_idle_watch: false,
            // One single-threaded runtime per thread, each connection staying on its own: no
            // stealing, so no wake-ups of the other thread and no tasks moving between caches.
            work_stealing: false,
            ..ServerConf::default()
        }
    }

    /// The settings the request path reads, published with every routing snapshot.
    pub fn request_settings(&self) -> RequestSettings {
        RequestSettings {
            max_body_bytes: self.max_body_bytes,
            body_deadline: self.timeout,
            max_attempts: self.max_attempts,
            max_header_bytes: self.max_header_bytes,
            force_stream_usage: self.stream_usage == StreamUsage::Force,
            fallbacks: self.fallbacks.clone(),
            context_window_fallbacks: self.context_window_fallbacks.clone(),
            max_retry_wait: self.max_retry_wait,
            retry_budget: self.retry_budget,
            affinity_key: self.balancing.affinity.key,
            auth: self.auth.clone(),
            limiter: self.limiter.clone(),
        }
    }

    /// Keep `running`'s settings that only a restart can change (the listener, the threads,
    /// the process-wide outputs) in this newly loaded config; returns the keys whose new value
    /// is therefore not applied.
    pub fn keep_restart_only(&mut self, running: &Config) -> Vec<&'static str> {
        let mut ignored = Vec::new();
        macro_rules! keep {
            ($($field:ident => $key:literal),* $(,)?) => {$(
                if self.$field != running.$field {
                    ignored.push($key);
                    self.$field = running.$field.clone();
                }
            )*};
        }
        keep!(
            listen => "listen",
            threads => "threads",
            metrics => "metrics",
            access_log => "access_log",
            max_connections => "max_connections",
            header_timeout => "header_timeout_secs",
            shutdown_grace => "shutdown_grace_secs",
            upgrade_sock => "upgrade_sock",
            state => "state",
        );
        // Its counts and its connection live as long as the process.
        self.limiter = running.limiter.clone();
        ignored
    }
}

/// Seconds as a duration: positive, finite, at most a day.
fn seconds(field: &str, s: f64) -> Result<Duration, String> {
    if s.is_finite() && s > 0.0 && s <= 86_400.0 {
        Ok(Duration::from_secs_f64(s))
    } else {
        Err(format!("{field}: {s} is not between 0 and 86400 seconds"))
    }
}

/// `balancing:`, checked.
fn balancing(b: BalancingConfig) -> Result<Balancing, String> {
    let a = b.prefix_affinity.unwrap_or_default();
    let defaults = AffinityOptions::default();
    let epsilon = match a.epsilon {
        None => defaults.epsilon,
        Some(e) if e.is_finite() && (0.0..=10.0).contains(&e) => e,
        Some(_) => {
            return Err("balancing.prefix_affinity.epsilon: give a number from 0 to 10".into())
        }
    };
    Ok(Balancing {
        default: b.policy.unwrap_or_default(),
        models: b.models.unwrap_or_default(),
        affinity: AffinityOptions {
            key: a.key.unwrap_or(defaults.key),
            epsilon,
        },
    })
}

/// An endpoint's timeouts: its own `timeouts:` over the defaults.
fn endpoint_timeouts(
    own: Option<TimeoutsConfig>,
    defaults: Timeouts,
    field: &str,
) -> Result<Timeouts, String> {
    let Some(own) = own else {
        return Ok(defaults);
    };
    let pick = |key: &str, v: Option<f64>, default: Duration| {
        v.map_or(Ok(default), |s| seconds(&format!("{field}.{key}"), s))
    };
    Ok(Timeouts {
        connect: pick("connect_secs", own.connect_secs, defaults.connect)?,
        first_byte: pick("first_byte_secs", own.first_byte_secs, defaults.first_byte)?,
        idle: pick("idle_secs", own.idle_secs, defaults.idle)?,
        total: match own.total_secs {
            Some(s) => Some(seconds(&format!("{field}.total_secs"), s)?),
            None => defaults.total,
        },
    })
}

/// The longest list of a fallback map.
fn longest(map: &HashMap<String, Vec<String>>) -> usize {
    map.values().map(Vec::len).max().unwrap_or(0)
}

/// Each model's fallback list (`fallbacks`, `context_window_fallbacks`): no empty names, not
/// the model itself, each model once.
fn fallbacks(
    key: &str,
    map: HashMap<String, Vec<String>>,
) -> Result<HashMap<String, Vec<String>>, String> {
    let mut out = HashMap::with_capacity(map.len());
    for (model, list) in map {
        let field = format!("{key}.{model:?}");
        if model.is_empty() {
            return Err(format!("{key}: a model name is empty"));
        }
        if list.is_empty() {
            return Err(format!("{field}: the list is empty"));
        }
        let mut seen = HashSet::new();
        let mut chain = Vec::with_capacity(list.len());
        for fb in list {
            if fb.is_empty() {
                return Err(format!("{field}: a fallback model name is empty"));
            }
            if fb == model {
                return Err(format!("{field}: a model cannot fall back to itself"));
            }
            if seen.insert(fb.clone()) {
                chain.push(fb);
            }
        }
        out.insert(model, chain);
    }
    Ok(out)
}

/// `aliases:`: names that stand for another public model name.
fn aliases(map: HashMap<String, String>) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for (alias, model) in map {
        if alias.trim().is_empty() || model.trim().is_empty() {
            return Err("aliases: a name is empty".into());
        }
        if alias == model {
            return Err(format!("aliases.{alias:?}: a name cannot be its own alias"));
        }
        out.insert(alias, model);
    }
    for (alias, model) in &out {
        if out.contains_key(model) {
            return Err(format!(
                "aliases.{alias:?}: {model:?} is itself an alias; name a model"
            ));
        }
    }
    Ok(out)
}

/// An endpoint's `models:` and `discover:`.
fn declared_models(
    list: Option<Vec<DeclaredModelConfig>>,
    discover: Option<bool>,
    field: &dyn Fn(&str) -> String,
) -> Result<(Vec<DeclaredModel>, bool), String> {
    let discover = discover.unwrap_or(true);
    let mut out: Vec<DeclaredModel> = Vec::new();
    for (j, entry) in list.unwrap_or_default().into_iter().enumerate() {
        let (id, name) = match entry {
            DeclaredModelConfig::Id(id) => (id.clone(), id),
            DeclaredModelConfig::Named { id, name } => {
                let name = name.unwrap_or_else(|| id.clone());
                (id, name)
            }
        };
        if id.trim().is_empty() || name.trim().is_empty() {
            return Err(format!(
                "{}: a model id or name is empty",
                field(&format!("models[{j}]"))
            ));
        }
        if out.iter().any(|d| d.name == name || d.id == id) {
            return Err(format!(
                "{}: model {name:?} ({id:?}) is declared twice",
                field(&format!("models[{j}]"))
            ));
        }
        out.push(DeclaredModel { id, name });
    }
    if !discover && out.is_empty() {
        return Err(format!(
            "{}: an endpoint with `discover: false` needs its `models` listed",
            field("discover")
        ));
    }
    Ok((out, discover))
}

fn health_policy(h: HealthConfig) -> Result<HealthPolicy, String> {
    let d = HealthPolicy::default();
    let secs = |field: &str, v: Option<f64>, default: Duration| {
        v.map_or(Ok(default), |s| seconds(&format!("health.{field}"), s))
    };
    let policy = HealthPolicy {
        failure_threshold: h.failure_threshold.unwrap_or(d.failure_threshold),
        ejection: secs("ejection_secs", h.ejection_secs, d.ejection)?,
        max_ejection: secs("max_ejection_secs", h.max_ejection_secs, d.max_ejection)?,
    };
    positive("health.failure_threshold", policy.failure_threshold)?;
    if policy.max_ejection < policy.ejection {
        return Err("health.max_ejection_secs: must not be less than ejection_secs".into());
    }
    Ok(policy)
}

/// `value` (or `default` when unset), which must be greater than 0.
fn positive_or<T: Copy + Default + PartialEq>(
    field: &str,
    value: Option<T>,
    default: T,
) -> Result<T, String> {
    positive(field, value.unwrap_or(default))
}

/// `v`, which must be greater than 0.
fn positive<T: Copy + Default + PartialEq>(field: &str, v: T) -> Result<T, String> {
    if v == T::default() {
        Err(format!("{field}: must be greater than 0"))
    } else {
        Ok(v)
    }
}

/// serde_yaml messages may span lines; config errors are one line.
fn one_line(msg: &str) -> String {
    msg.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn yaml_endpoints(
    list: Vec<EndpointConfig>,
    env: &dyn Env,
    health: HealthPolicy,
    defaults: Timeouts,
) -> Result<Vec<Arc<Endpoint>>, String> {
    let mut names = HashSet::new();
    let mut out = Vec::with_capacity(list.len());
    for (i, ec) in list.into_iter().enumerate() {
        let field = |f: &str| format!("endpoints[{i}].{f}");
        let key = match (ec.api_key, ec.api_key_env) {
            (Some(_), Some(_)) => {
                return Err(format!(
                    "endpoints[{i}]: set api_key or api_key_env, not both"
                ))
            }
            (Some(k), None) => {
                Some(ApiKey::new(&k).map_err(|e| format!("{}: {e}", field("api_key")))?)
            }
            (None, Some(var)) => {
                let k = env.var(&var).ok_or_else(|| {
                    format!(
                        "{}: environment variable {var:?} is not set",
                        field("api_key_env")
                    )
                })?;
                Some(ApiKey::new(&k).map_err(|e| format!("{}: {e}", field("api_key_env")))?)
            }
            (None, None) => None,
        };
        let ca = match &ec.ca_file {
            Some(p) => Some(load_ca_file(p).map_err(|e| format!("{}: {e}", field("ca_file")))?),
            None => None,
        };
        let (declared, discover) = declared_models(ec.models, ec.discover, &field)?;
        let ep = Endpoint::new(&ec.url, ec.kind, ec.name, key, ca)
            .map_err(|e| format!("{}: {e}", field("url")))?
            .with_models(declared, discover)
            .with_messages(ec.messages)
            .with_health(health)
            .with_timeouts(endpoint_timeouts(
                ec.timeouts,
                defaults,
                &field("timeouts"),
            )?)
            .with_weight(match ec.weight {
                None => 1,
                Some(w @ 1..=10_000) => w as usize,
                Some(_) => {
                    return Err(format!(
                        "{}: give a weight from 1 to 10000",
                        field("weight")
                    ))
                }
            });
        if !names.insert(ep.name.clone()) {
            return Err(format!(
                "{}: duplicate endpoint name {:?} (set distinct `name`s)",
                field("name"),
                ep.name
            ));
        }
        out.push(Arc::new(ep));
    }
    Ok(out)
}

/// The legacy `ENDPOINTS` forms (contract §2).
fn env_endpoints(
    env: &dyn Env,
    health: HealthPolicy,
    timeouts: Timeouts,
) -> Result<Vec<Arc<Endpoint>>, String> {
    let shared_key = match env.var("API_KEY") {
        Some(k) => Some(ApiKey::new(&k).map_err(|e| format!("env API_KEY: {e}"))?),
        None => None,
    };
    let pairs: Vec<(String, Option<ApiKey>)> = match env.var("ENDPOINTS") {
        Some(v) if v.trim_start().starts_with('{') => {
            let map: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&v)
                .map_err(|e| format!("env ENDPOINTS: not a JSON object of url -> key: {e}"))?;
            map.into_iter()
                .map(|(url, key)| match key {
                    serde_json::Value::String(k) if !k.is_empty() => ApiKey::new(&k)
                        .map(|k| (url.clone(), Some(k)))
                        .map_err(|e| {
                            format!(
                                "env ENDPOINTS: the key for {:?}: {e}",
                                redact_userinfo(&url)
                            )
                        }),
                    serde_json::Value::String(_) | serde_json::Value::Null => Ok((url, None)),
                    _ => Err(format!(
                        "env ENDPOINTS: the key for {:?} must be a string",
                        redact_userinfo(&url)
                    )),
                })
                .collect::<Result<_, _>>()?
        }
        Some(v) => v
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(|u| (u.to_string(), shared_key.clone()))
            .collect(),
        None => vec![(
            env.var("TARGET_OPENAI_URL")
                .unwrap_or_else(|| DEFAULT_TARGET_URL.to_string()),
            shared_key,
        )],
    };
    if pairs.is_empty() {
        return Err("env ENDPOINTS: no endpoint URL given".into());
    }
    let mut names = HashSet::new();
    let mut out = Vec::with_capacity(pairs.len());
    for (url, key) in pairs {
        let ep = Endpoint::new(&url, EndpointKind::Openai, None, key, None)
            .map_err(|e| format!("env ENDPOINTS: {e}"))?
            .with_health(health)
            .with_timeouts(timeouts);
        if !names.insert(ep.name.clone()) {
            return Err(format!("env ENDPOINTS: {} is listed twice", ep.url));
        }
        out.push(Arc::new(ep));
    }
    Ok(out)
}

/// Load the PEM certificates of `path` as an endpoint's trusted CAs. Errors show the path
/// quoted and escaped (`{:?}`), so that they stay one line whatever the path holds.
pub fn load_ca_file(path: &Path) -> Result<Arc<CaType>, String> {
    use pingora::utils::tls::{parse_x509, WrappedX509};
    use tokio_rustls::rustls::RootCertStore;

    let pem = std::fs::read(path).map_err(|e| format!("cannot read {path:?}: {e}"))?;
    let mut certs = Vec::new();
    for der in rustls_pemfile::certs(&mut pem.as_slice()) {
        let der = der.map_err(|e| format!("{path:?}: bad PEM: {e}"))?;
        // Pingora's certificate wrapper panics on DER it cannot parse: check it first.
        RootCertStore::empty()
            .add(der.clone())
            .map_err(|e| format!("{path:?}: not a usable CA certificate: {e}"))?;
        certs.push(WrappedX509::new(der.to_vec(), parse_x509));
    }
    if certs.is_empty() {
        return Err(format!("{path:?}: no PEM certificate found"));
    }
    Ok(Arc::from(certs.into_boxed_slice()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NO_ENV: [(&str, &str); 0] = [];

    fn yaml(text: &str) -> Result<Config, String> {
        Config::from_yaml(text, Source::Yaml("t.yaml".into()), &NO_ENV)
    }

    #[test]
    fn full_example_parses() {
        let c = Config::from_yaml(
            r#"
listen: "127.0.0.1:9000"
timeout_secs: 7
max_body_bytes: 1000
discovery_interval_secs: 2
endpoints:
  - url: http://10.0.0.5:8000/
    type: openai
    name: vllm-a
    api_key: sk-a
  - url: https://api.openai.com
    api_key_env: OPENAI_API_KEY
  - url: http://ocf-head:8092
    type: ocf
"#,
            Source::Yaml("t.yaml".into()),
            &[("OPENAI_API_KEY", "sk-o")],
        )
        .unwrap();
        assert_eq!(c.listen, "127.0.0.1:9000".parse().unwrap());
        assert_eq!(c.timeout, Duration::from_secs(7));
        assert_eq!(c.max_body_bytes, 1000);
        assert_eq!(c.endpoints.len(), 3);
        assert_eq!(c.endpoints[0].name, "vllm-a");
        assert_eq!(c.endpoints[0].url, "http://10.0.0.5:8000");
        assert_eq!(c.endpoints[1].kind, EndpointKind::Openai);
        assert_eq!(c.endpoints[2].kind, EndpointKind::Ocf);
        assert_eq!(c.endpoints[2].name, "ocf-head:8092");
        assert!(matches!(c.source, Source::Yaml(_)));
        assert_eq!(c.stream_usage, StreamUsage::Client);
        assert_eq!(c.balancing.policy_for("any"), PolicyName::LeastOutstanding);
        let b = yaml("balancing:\n  policy: round_robin\n  models:\n    m: weighted\nendpoints:\n  - url: http://a\n    weight: 3\n").unwrap();
        assert_eq!(b.balancing.policy_for("m"), PolicyName::Weighted);
        assert_eq!(b.balancing.policy_for("other"), PolicyName::RoundRobin);
        assert_eq!(b.endpoints[0].weight, 3);
        assert_eq!(
            yaml("stream_usage: force").unwrap().stream_usage,
            StreamUsage::Force
        );
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            ("listen: 1\nbogus: 2\n", "bogus"),
            ("timeout_secs: soon\n", "timeout_secs"),
            ("endpoints:\n  - url: http://a\n    tyep: ocf\n", "tyep"),
            ("endpoints:\n  - url: http://a\n    type: grpc\n", "type"),
            ("endpoints:\n  - url: nope\n", "endpoints[0].url"),
            ("listen: localhost\n", "listen"),
            ("stream_usage: always\n", "stream_usage"),
            ("balancing:\n  policy: fastest\n", "balancing"),
            (
                "balancing:\n  prefix_affinity:\n    epsilon: -1\n",
                "balancing.prefix_affinity.epsilon",
            ),
            (
                "endpoints:\n  - url: http://a\n    weight: 0\n",
                "endpoints[0].weight",
            ),
            ("timeout_secs: 0\n", "timeout_secs"),
            (
                "endpoints:\n  - url: http://a\n    api_key_env: AI_PROXY_TEST_UNSET\n",
                "AI_PROXY_TEST_UNSET",
            ),
            (
                "endpoints:\n  - url: http://a\n  - url: http://a/\n",
                "duplicate endpoint name",
            ),
            (
                "endpoints:\n  - url: http://a\n    ca_file: /nonexistent/ca.pem\n",
                "endpoints[0].ca_file",
            ),
        ];
        for (text, want) in cases {
            let err = yaml(text).unwrap_err();
            assert!(err.contains(want), "{text:?} gave {err:?}");
            assert!(!err.contains('\n'), "multi-line error: {err:?}");
        }
    }

    /// Found by fuzzing (fuzz/ config_yaml): a double-quoted scalar with a blank line in it
    /// holds a newline, and the `api_key_env` (or `ca_file`) error showed it as is, making
    /// the one-line error two lines. `fuzzed` is the fuzzer's input, byte for byte.
    #[test]
    fn errors_stay_one_line_whatever_the_strings_hold() {
        let fuzzed = [
            &b"endpoints:\n  - url: \"http"[..],
            &[0x9a; 91],
            b"s://models.\xfainternal:84t4/v1\"\n    name: \"int--- \xe0\xdf.p\n/\n--el\"\n",
            b"    api_key_env: \"AI_P*aRca#a i-pro",
            "\u{fffd}".repeat(11).as_bytes(),
            b"\xef\xbf.\nmax_body_bytes: 67108864\n\n",
            b"# How often ev# How t'sits last good models.\n",
            b"discovery_interval_secs: i <key>\"\n",
            b"#   - url:     api_key_en-0v: OPENs _file: \"ca.pem\"\n",
        ]
        .concat();
        let fuzzed = String::from_utf8_lossy(&fuzzed);
        for text in [
            &fuzzed[..],
            "endpoints:\n  - url: http://a\n    api_key_env: \"A\\nB\"\n",
            "endpoints:\n  - url: http://a\n    ca_file: \"/nonexistent/a\\nb.pem\"\n",
        ] {
            let err = yaml(text).unwrap_err();
            assert!(!err.contains(['\n', '\r']), "multi-line error: {err:?}");
        }
    }

    #[test]
    fn declared_models_and_aliases() {
        let c = yaml(
            "aliases: {gpt-4o: short}\nendpoints:\n  - url: http://a\n    discover: false\n    models:\n      - plain\n      - {id: org/long-id, name: short}\n",
        )
        .unwrap();
        let ep = &c.endpoints[0];
        assert!(!ep.discover);
        assert_eq!(ep.public_name("org/long-id"), "short");
        assert_eq!(ep.public_name("plain"), "plain");
        assert_eq!(ep.public_name("other"), "other");
        assert_eq!(c.aliases["gpt-4o"], "short");
    }

    #[test]
    fn yaml_without_endpoints_uses_env() {
        let c = Config::from_yaml(
            "timeout_secs: 3\n",
            Source::Yaml("t".into()),
            &[("TARGET_OPENAI_URL", "http://127.0.0.1:1")],
        )
        .unwrap();
        assert_eq!(c.source, Source::Env);
        assert_eq!(c.endpoints[0].url, "http://127.0.0.1:1");
        assert_eq!(c.timeout, Duration::from_secs(3));
    }

    #[test]
    fn env_modes() {
        let c = Config::from_env(&[
            ("ENDPOINTS", r#"{"http://a:1":"ka","http://b:2":"kb"}"#),
            ("PORT", "9999"),
            ("TIMEOUT", "5"),
        ])
        .unwrap();
        assert_eq!(c.endpoints.len(), 2);
        assert!(c.endpoints.iter().all(|e| e.authorization.is_some()));
        assert_eq!(c.listen, "0.0.0.0:9999".parse().unwrap());
        assert_eq!(c.timeout, Duration::from_secs(5));

        let c =
            Config::from_env(&[("ENDPOINTS", "http://a:1, http://b:2"), ("API_KEY", "k")]).unwrap();
        assert_eq!(c.endpoints.len(), 2);
        assert_eq!(c.endpoints[1].authorization.as_ref().unwrap(), "Bearer k");

        let c = Config::from_env(&NO_ENV).unwrap();
        assert_eq!(c.endpoints[0].url, DEFAULT_TARGET_URL);
        assert!(c.endpoints[0].authorization.is_none());
        assert_eq!(c.listen, DEFAULT_LISTEN.parse().unwrap());

        assert!(Config::from_env(&[("ENDPOINTS", "{bad")]).is_err());
        assert!(Config::from_env(&[("PORT", "http")])
            .unwrap_err()
            .contains("PORT"));
    }

    #[test]
    fn port_env_keeps_the_host() {
        let c = Config::from_yaml(
            "listen: 127.0.0.1:1234\n",
            Source::Yaml("t".into()),
            &[("PORT", "4321")],
        )
        .unwrap();
        assert_eq!(c.listen, "127.0.0.1:4321".parse().unwrap());
    }

    #[test]
    fn empty_file_is_all_defaults() {
        let c = yaml("").unwrap();
        assert_eq!(c.max_body_bytes, DEFAULT_MAX_BODY_BYTES);
        assert!(c.threads >= 1);
        assert_eq!(c.server_conf().threads, c.threads);
        assert_eq!(
            c.server_conf().grace_period_seconds,
            Some(DEFAULT_SHUTDOWN_GRACE_SECS)
        );
        assert_eq!(c.max_attempts, DEFAULT_MAX_ATTEMPTS);
        assert_eq!(c.health, HealthPolicy::default());
    }

    #[test]
    fn resilience_settings() {
        let c = yaml(
            "max_attempts: 5\nshutdown_grace_secs: 3\nhealth:\n  failure_threshold: 2\n  ejection_secs: 0.5\n  max_ejection_secs: 60\n",
        )
        .unwrap();
        assert_eq!(c.max_attempts, 5);
        assert_eq!(c.shutdown_grace, Duration::from_secs(3));
        assert_eq!(c.health.failure_threshold, 2);
        assert_eq!(c.health.ejection, Duration::from_millis(500));
        assert_eq!(c.health.max_ejection, Duration::from_secs(60));
        assert!(c.server_conf().max_retries > 5);

        let c = yaml(
            "timeout_secs: 20\nconnect_timeout_secs: 3\ntotal_timeout_secs: 600\nendpoints:\n  - url: http://a:1\n  - url: http://b:1\n    timeouts: {first_byte_secs: 2.5, idle_secs: 7}\n",
        )
        .unwrap();
        let (a, b) = (c.endpoints[0].timeouts, c.endpoints[1].timeouts);
        assert_eq!(a.connect, Duration::from_secs(3));
        assert_eq!(
            (a.first_byte, a.idle),
            (Duration::from_secs(20), Duration::from_secs(20))
        );
        assert_eq!(a.total, Some(Duration::from_secs(600)));
        assert!(a.need_watchdog(), "a total needs the watchdog");
        assert_eq!(b.connect, Duration::from_secs(3));
        assert_eq!(b.first_byte, Duration::from_millis(2500));
        assert_eq!(b.idle, Duration::from_secs(7));
        assert_eq!(b.read(), Duration::from_secs(7));
        let plain = yaml("endpoints:\n  - url: http://a:1\n").unwrap();
        assert!(!plain.endpoints[0].timeouts.need_watchdog());

        let c = yaml("fallbacks:\n  big: [small, tiny, small]\n").unwrap();
        assert_eq!(c.fallbacks["big"], ["small", "tiny"]);

        for (text, field) in [
            ("max_attempts: 0", "max_attempts"),
            (
                "health:\n  failure_threshold: 0",
                "health.failure_threshold",
            ),
            ("health:\n  ejection_secs: -1", "health.ejection_secs"),
            (
                "health:\n  ejection_secs: 10\n  max_ejection_secs: 5",
                "health.max_ejection_secs",
            ),
            ("health:\n  probes: true", "probes"),
            ("fallbacks:\n  big: []", "fallbacks.\"big\""),
            ("total_timeout_secs: 0", "total_timeout_secs"),
            (
                "endpoints:\n  - url: http://a:1\n    timeouts: {idle_secs: -2}",
                "endpoints[0].timeouts.idle_secs",
            ),
            (
                "endpoints:\n  - url: http://a:1\n    timeouts: {ttfb: 2}",
                "ttfb",
            ),
            ("fallbacks:\n  big: [big]", "itself"),
            ("fallbacks:\n  big: small", "fallbacks"),
            (
                "endpoints:\n  - url: http://a:1\n    discover: false",
                "endpoints[0].discover",
            ),
            (
                "endpoints:\n  - url: http://a:1\n    models: [m, m]",
                "endpoints[0].models[1]",
            ),
            (
                "endpoints:\n  - url: http://a:1\n    models: [{id: ''}]",
                "endpoints[0].models[0]",
            ),
            ("aliases:\n  a: a", "aliases.\"a\""),
            ("aliases:\n  a: b\n  b: c", "alias"),
        ] {
            let e = yaml(text).unwrap_err();
            assert!(e.contains(field), "{text:?}: {e}");
        }
    }
}
