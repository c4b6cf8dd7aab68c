//! Where configuration reads environment variables from: the process, an env file (as
//! `docker run --env-file` reads it), or a test's own list.

use std::collections::HashMap;

/// Environment lookups go through this so tests can pass their own.
pub trait Env {
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }
}

/// An env file as `docker run --env-file` reads it: `KEY=VALUE` lines, `#` comments and
/// blank lines skipped, values taken as written (no quotes removed).
#[derive(Debug, Default)]
pub struct EnvFile(HashMap<String, String>);

impl EnvFile {
    pub fn parse(text: &str) -> Result<EnvFile, String> {
        let mut vars = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim_start();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (key, value) = line
                .split_once('=')
                .ok_or_else(|| format!("line {}: expected KEY=VALUE", n + 1))?;
            if key.is_empty() || key.contains(char::is_whitespace) {
                return Err(format!("line {}: {key:?} is not a variable name", n + 1));
            }
            vars.insert(key.to_string(), value.to_string());
        }
        Ok(EnvFile(vars))
    }
}

impl Env for EnvFile {
    fn var(&self, name: &str) -> Option<String> {
        self.0.get(name).filter(|v| !v.is_empty()).cloned()
    }
}

impl<const N: usize> Env for [(&str, &str); N] {
    fn var(&self, name: &str) -> Option<String> {
        self.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    }
}
