//! Client access control: the gateway's own API keys, each with an optional model allowlist
//! and limits (counted by `state`), and an admin key for the admin routes.
//!
//! Keys are held as SHA-256 digests once loaded, never as text. A presented key is hashed and
//! looked up by its digest, so the time a lookup takes depends on digests alone and says
//! nothing about any key; the admin digest is compared in constant time. No key, and no
//! digest, is ever written to a log line, a metric label, an error or `/v1/endpoints`: keys
//! are known by their `name`.

mod allowlist;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use http::HeaderMap;
use serde::Deserialize;
use subtle::ConstantTimeEq;

pub use allowlist::ModelAllowlist;

use crate::env::Env;
use crate::state::{Budget, KeyLimits, LimitedKey};

/// The header some SDKs (Anthropic's, Azure's) send the key in.
pub const API_KEY_HEADER: &str = "x-api-key";

/// `auth:` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    keys: Option<Vec<KeyConfig>>,
    admin_key: Option<String>,
    admin_key_env: Option<String>,
    admin_key_file: Option<PathBuf>,
    /// A model outside a key's allowlist is a 404, as if it did not exist (default: 403).
    hide_unlisted_models: Option<bool>,
}

/// One entry of `auth.keys`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyConfig {
    key: Option<String>,
    key_env: Option<String>,
    key_file: Option<PathBuf>,
    name: Option<String>,
    models: Option<Vec<String>>,
    requests_per_minute: Option<u32>,
    tokens_per_minute: Option<u64>,
    max_concurrent: Option<u32>,
    budget: Option<Budget>,
}

/// A key's SHA-256.
type Digest = [u8; 32];

fn digest(key: &[u8]) -> Digest {
    let d = ring::digest::digest(&ring::digest::SHA256, key);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// A client key, as the gateway knows it.
#[derive(Debug)]
pub struct ClientKey {
    /// Shown in the access log and metrics in place of the key.
    pub name: String,
    /// `None`: every model.
    models: Option<ModelAllowlist>,
    /// `None`: no limits.
    limited: Option<Arc<LimitedKey>>,
}

impl ClientKey {
    /// Whether this key may call `model`.
    pub fn allows(&self, model: &str) -> bool {
        self.models.as_ref().is_none_or(|m| m.allows(model))
    }

    /// Whether this key may call anything without naming a model (only an unrestricted key
    /// may: such requests reach the default endpoint whatever they are).
    pub fn allows_any_model(&self) -> bool {
        self.models.is_none()
    }

    /// The key's limits and counts, if it has limits.
    pub fn limited(&self) -> Option<&Arc<LimitedKey>> {
        self.limited.as_ref()
    }

    /// The key's limits (all `None` without).
    pub fn limits(&self) -> KeyLimits {
        self.limited.as_ref().map(|l| l.limits).unwrap_or_default()
    }

    /// Count a refusal of this key's request (`rate_limited`, `model_not_allowed`, ...).
    pub fn count_refusal(&self, reason: &str) {
        if let Some(m) = crate::metrics::get() {
            m.client_refused(&self.name, reason);
        }
    }
}

/// Why a request is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// No key where one is needed.
    Missing,
    /// A key that is not (or no longer) valid.
    Unknown,
}

impl Denied {
    /// The client's error message.
    pub fn message(self, admin: bool) -> &'static str {
        match (self, admin) {
            (Denied::Missing, false) => {
                "You didn't provide an API key. Send it as `Authorization: Bearer <key>` (or `x-api-key`)."
            }
            (Denied::Missing, true) => {
                "This route needs the gateway's admin key, as `Authorization: Bearer <key>`."
            }
            (Denied::Unknown, false) => "Incorrect API key provided.",
            (Denied::Unknown, true) => "Incorrect admin key provided.",
        }
    }
}

/// The gateway's access control, as configured. `Auth::default()` is open.
#[derive(Debug, Default)]
pub struct Auth {
    /// The client keys, found by digest; a request's context keeps a key's position.
    clients: Vec<ClientKey>,
    by_digest: HashMap<Digest, usize>,
    admin: Option<Digest>,
    pub hide_unlisted_models: bool,
}

impl Auth {
    /// From the `auth:` section. `field` prefixes errors (`auth`).
    pub fn from_config(c: AuthConfig, env: &dyn Env) -> Result<Auth, String> {
        let mut auth = Auth {
            hide_unlisted_models: c.hide_unlisted_models.unwrap_or(false),
            ..Auth::default()
        };
        for (i, k) in c.keys.unwrap_or_default().into_iter().enumerate() {
            let field = format!("auth.keys[{i}]");
            let key = secret(&field, "key", k.key, k.key_env, k.key_file, env)?
                .ok_or_else(|| format!("{field}: set one of key, key_env or key_file"))?;
            let name = k.name.unwrap_or_else(|| format!("key-{}", i + 1));
            if name.trim().is_empty() {
                return Err(format!("{field}.name: must not be empty"));
            }
            let models = k
                .models
                .map(|m| ModelAllowlist::new(&m).map_err(|e| format!("{field}.models: {e}")))
                .transpose()?;
            let limits = KeyLimits::new(
                &field,
                k.requests_per_minute,
                k.tokens_per_minute,
                k.max_concurrent,
                k.budget,
            )?;
            let limited =
                (!limits.is_empty()).then(|| Arc::new(LimitedKey::new(name.clone(), limits)));
            auth.add_client(&field, &key, name, models, limited)?;
        }
        let admin = secret(
            "auth",
            "admin_key",
            c.admin_key,
            c.admin_key_env,
            c.admin_key_file,
            env,
        )?;
        auth.admin = admin.map(|k| digest(k.as_bytes()));
        Ok(auth)
    }

    /// The environment-only form: `AI_PROXY_KEYS` (a comma list, named `key-1`, `key-2`...)
    /// and `AI_PROXY_ADMIN_KEY`.
    pub fn from_env(env: &dyn Env) -> Result<Auth, String> {
        let mut auth = Auth::default();
        if let Some(list) = env.var("AI_PROXY_KEYS") {
            let keys = list.split(',').map(str::trim).filter(|k| !k.is_empty());
            for (i, key) in keys.enumerate() {
                let field = format!("env AI_PROXY_KEYS (key {})", i + 1);
                auth.add_client(&field, key, format!("key-{}", i + 1), None, None)?;
            }
        }
        auth.admin = env
            .var("AI_PROXY_ADMIN_KEY")
            .map(|k| digest(k.trim().as_bytes()));
        Ok(auth)
    }

    fn add_client(
        &mut self,
        field: &str,
        key: &str,
        name: String,
        models: Option<ModelAllowlist>,
        limited: Option<Arc<LimitedKey>>,
    ) -> Result<(), String> {
        if let Some(other) = self.clients.iter().find(|c| c.name == name) {
            return Err(format!("{field}: the name {:?} is used twice", other.name));
        }
        let at = self.clients.len();
        if let Some(other) = self.by_digest.insert(digest(key.as_bytes()), at) {
            let other = &self.clients[other].name;
            return Err(format!("{field}: the same key as {other:?}"));
        }
        self.clients.push(ClientKey {
            name,
            models,
            limited,
        });
        Ok(())
    }

    /// One line for the start-up log and `--check-config`: how many keys, never which.
    pub fn summary(&self) -> String {
        if self.clients.is_empty() && self.admin.is_none() {
            return "auth: open (no client keys)".into();
        }
        let limited = self.clients.iter().filter(|c| c.limited.is_some()).count();
        let restricted = self.clients.iter().filter(|c| c.models.is_some()).count();
        format!(
            "auth: {} client key(s) ({restricted} with a model allowlist, {limited} with limits), {}",
            self.clients.len(),
            if self.admin.is_some() { "an admin key" } else { "no admin key" }
        )
    }

    /// Every client key, in the config's order.
    pub fn keys(&self) -> &[ClientKey] {
        &self.clients
    }

    /// The client key at `at` (from [`Auth::client`] on this same `Auth`).
    pub fn key(&self, at: usize) -> Option<&ClientKey> {
        self.clients.get(at)
    }

    /// Requests need a client key.
    pub fn requires_client_key(&self) -> bool {
        !self.clients.is_empty()
    }

    /// The position of a request's key (see [`Auth::key`]): `None` when the gateway is open.
    pub fn client(&self, headers: &HeaderMap) -> Result<Option<usize>, Denied> {
        if self.clients.is_empty() {
            return Ok(None);
        }
        let mut presented = false;
        for key in presented_keys(headers) {
            presented = true;
            if let Some(&at) = self.by_digest.get(&digest(key)) {
                return Ok(Some(at));
            }
        }
        Err(if presented {
            Denied::Unknown
        } else {
            Denied::Missing
        })
    }

    /// Whether a request may use the admin routes: with the admin key when there is one,
    /// else on the same terms as any other request.
    pub fn admin(&self, headers: &HeaderMap) -> Result<(), Denied> {
        let Some(admin) = &self.admin else {
            return self.client(headers).map(|_| ());
        };
        let mut presented = false;
        for key in presented_keys(headers) {
            presented = true;
            if bool::from(digest(key).ct_eq(admin)) {
                return Ok(());
            }
        }
        Err(if presented {
            Denied::Unknown
        } else {
            Denied::Missing
        })
    }

    /// Keep the per-process counts of every key that `running` knows (the same key, by
    /// digest), whatever its new limits: a reload neither refills nor empties a window, nor
    /// forgets the requests in flight.
    pub fn keep_limits_of(&mut self, running: &Auth) {
        for (digest, &at) in &self.by_digest {
            let old = running.by_digest.get(digest).map(|&i| &running.clients[i]);
            let Some(kept) = old.and_then(|old| old.limited.as_ref()) else {
                continue;
            };
            if let Some(new) = self.clients[at].limited.as_mut().and_then(Arc::get_mut) {
                new.keep_counts_of(kept);
            }
        }
    }
}

/// A secret given inline, by environment variable or by file (exactly one, or none).
fn secret(
    section: &str,
    key: &str,
    inline: Option<String>,
    env_var: Option<String>,
    file: Option<PathBuf>,
    env: &dyn Env,
) -> Result<Option<String>, String> {
    let value = match (inline, env_var, file) {
        (None, None, None) => return Ok(None),
        (Some(k), None, None) => k,
        (None, Some(var), None) => env.var(&var).ok_or_else(|| {
            format!("{section}.{key}_env: environment variable {var:?} is not set")
        })?,
        (None, None, Some(path)) => std::fs::read_to_string(&path)
            .map_err(|e| format!("{section}.{key}_file: cannot read {path:?}: {e}"))?,
        _ => {
            return Err(format!(
                "{section}: set only one of {key}, {key}_env and {key}_file"
            ))
        }
    };
    let value = value.trim();
    if value.is_empty() {
        return Err(format!("{section}.{key}: the key is empty"));
    }
    Ok(Some(value.to_string()))
}

/// The keys a request presents: `Authorization: Bearer <key>`, then `x-api-key`.
fn presented_keys(headers: &HeaderMap) -> impl Iterator<Item = &[u8]> {
    let bearer = headers
        .get(http::header::AUTHORIZATION)
        .map(|v| v.as_bytes())
        .filter(|v| v.len() > 7 && v[..7].eq_ignore_ascii_case(b"bearer "))
        .map(|v| v[7..].trim_ascii());
    let api_key = headers
        .get(API_KEY_HEADER)
        .map(|v| v.as_bytes().trim_ascii());
    bearer.into_iter().chain(api_key).filter(|k| !k.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ENV: [(&str, &str); 2] = [("TEAM_B_KEY", "sk-team-b"), ("ADMIN", "sk-admin")];

    fn auth(yaml: &str) -> Result<Auth, String> {
        Auth::from_config(serde_yaml::from_str(yaml).unwrap(), &ENV)
    }

    /// The key a request presents, by reference.
    fn key_of<'a>(a: &'a Auth, h: &HeaderMap) -> Result<&'a ClientKey, Denied> {
        a.client(h).map(|at| {
            a.key(at.expect("keys configured"))
                .expect("a known position")
        })
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    const TWO: &str = "keys:\n  - key: sk-team-a\n    name: team-a\n    models: [\"llama-*\"]\n  - key_env: TEAM_B_KEY\n    name: team-b\nadmin_key_env: ADMIN\n";

    #[test]
    fn keys_by_bearer_or_x_api_key() {
        let a = auth(TWO).unwrap();
        let name = |h: &[(&'static str, &str)]| key_of(&a, &headers(h)).map(|c| c.name.clone());
        assert_eq!(
            name(&[("authorization", "Bearer sk-team-a")]).unwrap(),
            "team-a"
        );
        assert_eq!(
            name(&[("authorization", "bearer  sk-team-b ")]).unwrap(),
            "team-b"
        );
        assert_eq!(name(&[("x-api-key", "sk-team-b")]).unwrap(), "team-b");
        // The OpenAI SDK always sends its own `Authorization`: x-api-key still counts.
        assert_eq!(
            name(&[
                ("authorization", "Bearer unused"),
                ("x-api-key", "sk-team-a")
            ])
            .unwrap(),
            "team-a"
        );
        assert_eq!(name(&[]), Err(Denied::Missing));
        assert_eq!(
            name(&[("authorization", "Basic c2stdGVhbS1h")]),
            Err(Denied::Missing)
        );
        assert_eq!(
            name(&[("authorization", "Bearer sk-team-c")]),
            Err(Denied::Unknown)
        );
        assert_eq!(
            name(&[("authorization", "Bearer sk-admin")]),
            Err(Denied::Unknown)
        );
    }

    #[test]
    fn allowlists_and_admin() {
        let a = auth(TWO).unwrap();
        let team_a = key_of(&a, &headers(&[("x-api-key", "sk-team-a")])).unwrap();
        assert!(team_a.allows("llama-3-8b"));
        assert!(!team_a.allows("gpt-4o"));
        assert!(!team_a.allows_any_model());
        assert!(a
            .admin(&headers(&[("authorization", "Bearer sk-admin")]))
            .is_ok());
        assert_eq!(
            a.admin(&headers(&[("x-api-key", "sk-team-a")])),
            Err(Denied::Unknown)
        );
        assert_eq!(a.admin(&headers(&[])), Err(Denied::Missing));
        // Without an admin key, admin routes take any client key; open stays open.
        let no_admin = auth("keys:\n  - key: k1\n").unwrap();
        assert!(no_admin.admin(&headers(&[("x-api-key", "k1")])).is_ok());
        assert_eq!(no_admin.admin(&headers(&[])), Err(Denied::Missing));
        let open = Auth::default();
        assert!(matches!(open.client(&headers(&[])), Ok(None)));
        assert!(open.admin(&headers(&[])).is_ok());
    }

    #[test]
    fn config_errors_name_the_field_and_never_the_key() {
        let cases = [
            ("keys:\n  - name: x\n", "auth.keys[0]: set one of key"),
            (
                "keys:\n  - key: a\n    key_env: TEAM_B_KEY\n",
                "auth.keys[0]: set only one",
            ),
            ("keys:\n  - key_env: NOPE\n", "auth.keys[0].key_env"),
            (
                "keys:\n  - key: \" \"\n",
                "auth.keys[0].key: the key is empty",
            ),
            (
                "keys:\n  - key: sk-dup\n  - key: sk-dup\n",
                "auth.keys[1]: the same key as \"key-1\"",
            ),
            (
                "keys:\n  - key: a\n    name: n\n  - key: b\n    name: n\n",
                "used twice",
            ),
            (
                "keys:\n  - key: a\n    requests_per_minute: 0\n",
                "requests_per_minute",
            ),
            (
                "keys:\n  - key: a\n    models: [\"\"]\n",
                "auth.keys[0].models",
            ),
            ("admin_key_file: /nonexistent/k\n", "auth.admin_key_file"),
        ];
        for (yaml, want) in cases {
            let e = auth(yaml).unwrap_err();
            assert!(e.contains(want), "{yaml:?}: {e}");
            assert!(!e.contains("sk-dup") && !e.contains("sk-team"), "{e}");
        }
    }

    #[test]
    fn env_keys() {
        let a =
            Auth::from_env(&[("AI_PROXY_KEYS", "k1, k2,"), ("AI_PROXY_ADMIN_KEY", "adm")]).unwrap();
        let c = key_of(&a, &headers(&[("x-api-key", "k2")])).unwrap();
        assert_eq!(c.name, "key-2");
        assert!(c.allows_any_model());
        assert!(a.admin(&headers(&[("x-api-key", "adm")])).is_ok());
        assert!(!Auth::from_env(&[("X", "")]).unwrap().requires_client_key());
    }

    #[tokio::test]
    async fn a_reload_keeps_the_counts_of_every_key() {
        use crate::state::{Exceeded, Limiter};
        let limiter = Arc::new(Limiter::default());
        let running = auth("keys:\n  - key: k1\n    requests_per_minute: 1\n").unwrap();
        let h1 = headers(&[("x-api-key", "k1")]);
        let limited = |a: &Auth| key_of(a, &h1).unwrap().limited().unwrap().clone();
        drop(limiter.admit(&limited(&running)).await.unwrap());
        let mut reloaded =
            auth("keys:\n  - key: k1\n    requests_per_minute: 1\n    max_concurrent: 3\n")
                .unwrap();
        reloaded.keep_limits_of(&running);
        let refused = limiter.admit(&limited(&reloaded)).await.unwrap_err();
        assert_eq!(refused.exceeded, Exceeded::Requests, "k1's minute is kept");
        assert_eq!(limited(&reloaded).limits.max_concurrent, Some(3));
    }
}
