//! `state:`, the shared state of every replica (Redis), as written and as checked.

use std::time::Duration;

use serde::Deserialize;

use crate::env::Env;

pub const DEFAULT_KEY_PREFIX: &str = "ai-proxy:";
pub const DEFAULT_TIMEOUT_MS: u64 = 50;
pub const DEFAULT_LEASE_SECS: f64 = 10.0;

/// What a request of a limited key gets while Redis cannot be reached.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// The per-process limits decide.
    #[default]
    Allow,
    /// 503.
    Deny,
}

/// `state:` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    redis_url: Option<String>,
    redis_url_env: Option<String>,
    key_prefix: Option<String>,
    timeout_ms: Option<u64>,
    on_error: Option<OnError>,
    lease_secs: Option<f64>,
}

/// `state:`, checked. (`Debug` never shows the URL: it may hold a password.)
#[derive(Clone, PartialEq)]
pub struct StateSettings {
    pub redis_url: String,
    pub key_prefix: String,
    /// The longest wait for one Redis call on a request's path.
    pub timeout: Duration,
    pub on_error: OnError,
    /// How long a `max_concurrent` slot outlives a replica that stopped renewing it.
    pub lease: Duration,
}

impl std::fmt::Debug for StateSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateSettings")
            .field("key_prefix", &self.key_prefix)
            .field("timeout", &self.timeout)
            .field("on_error", &self.on_error)
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

impl StateSettings {
    pub fn from_config(c: StateConfig, env: &dyn Env) -> Result<StateSettings, String> {
        let redis_url = match (c.redis_url, c.redis_url_env) {
            (Some(url), None) => url,
            (None, Some(var)) => env.var(&var).ok_or_else(|| {
                format!("state.redis_url_env: environment variable {var:?} is not set")
            })?,
            (None, None) => return Err("state: set redis_url or redis_url_env".into()),
            (Some(_), Some(_)) => {
                return Err("state: set only one of redis_url and redis_url_env".into())
            }
        };
        // The message never repeats the URL: it may hold a password.
        redis::Client::open(redis_url.trim()).map_err(|_| {
            "state.redis_url: not a Redis URL (redis://[:password@]host[:port][/db], rediss://..., or unix:///path)".to_string()
        })?;
        let timeout_ms = c.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS);
        if !(1..=10_000).contains(&timeout_ms) {
            return Err(format!(
                "state.timeout_ms: {timeout_ms} is not between 1 and 10000"
            ));
        }
        let lease = c.lease_secs.unwrap_or(DEFAULT_LEASE_SECS);
        if !(lease.is_finite() && (1.0..=3600.0).contains(&lease)) {
            return Err(format!(
                "state.lease_secs: {lease} is not between 1 and 3600"
            ));
        }
        let key_prefix = c.key_prefix.unwrap_or_else(|| DEFAULT_KEY_PREFIX.into());
        if key_prefix.contains(['{', '}']) {
            return Err("state.key_prefix: must not contain { or } (the key's name is the Redis Cluster hash tag)".into());
        }
        Ok(StateSettings {
            redis_url: redis_url.trim().to_string(),
            key_prefix,
            timeout: Duration::from_millis(timeout_ms),
            on_error: c.on_error.unwrap_or_default(),
            lease: Duration::from_secs_f64(lease),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(yaml: &str) -> Result<StateSettings, String> {
        let env = [("REDIS_URL", "redis://:hunter2@10.0.0.9:6380/2")];
        StateSettings::from_config(serde_yaml::from_str(yaml).unwrap(), &env)
    }

    #[test]
    fn defaults_and_the_url_from_the_environment() {
        let s = settings("redis_url_env: REDIS_URL\n").unwrap();
        assert_eq!(s.key_prefix, "ai-proxy:");
        assert_eq!(s.timeout, Duration::from_millis(50));
        assert_eq!(s.on_error, OnError::Allow);
        assert_eq!(s.lease, Duration::from_secs(10));
        assert!(!format!("{s:?}").contains("hunter2"));
        let s =
            settings("redis_url: redis://127.0.0.1:6379\non_error: deny\ntimeout_ms: 5\n").unwrap();
        assert_eq!(
            (s.on_error, s.timeout),
            (OnError::Deny, Duration::from_millis(5))
        );
    }

    #[test]
    fn errors_name_the_field_and_never_the_url() {
        for (yaml, want) in [
            ("key_prefix: x\n", "set redis_url or redis_url_env"),
            ("redis_url: a\nredis_url_env: REDIS_URL\n", "only one"),
            ("redis_url_env: NOPE\n", "state.redis_url_env"),
            (
                "redis_url: \"http://:hunter2@h\"\n",
                "state.redis_url: not a Redis URL",
            ),
            ("redis_url: redis://h\ntimeout_ms: 0\n", "state.timeout_ms"),
            (
                "redis_url: redis://h\nlease_secs: 0.5\n",
                "state.lease_secs",
            ),
            (
                "redis_url: redis://h\nkey_prefix: \"a{b\"\n",
                "state.key_prefix",
            ),
        ] {
            let e = settings(yaml).unwrap_err();
            assert!(e.contains(want), "{yaml:?}: {e}");
            assert!(!e.contains("hunter2"), "{e}");
        }
    }
}
