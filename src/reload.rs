//! Config reload. On SIGHUP, or when the config file's content changes (`watch_config_secs`),
//! the file is read and validated whole; a valid config goes to discovery, which publishes
//! routes and request settings built from it in one snapshot. Requests in flight keep the
//! snapshot they started with, so none is dropped. An invalid file changes nothing: the error
//! is logged and the running config stays in force.

use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::config::{Config, Source};
use crate::env::Env;

/// Reads the config file again and hands a valid result to discovery.
pub struct Reloader {
    config: watch::Sender<Arc<Config>>,
    /// The file's bytes as last read, to tell a change when watching it.
    seen: Mutex<Option<Vec<u8>>>,
}

/// What a reload did.
#[derive(Debug, PartialEq, Eq)]
pub enum Reloaded {
    /// The new config is in force.
    Applied,
    /// The file is as it was (when watching: nothing to do).
    Unchanged,
    /// The config comes from the environment alone, which a running process cannot see change.
    NoFile,
}

impl Reloader {
    /// A reloader that starts from `config`, and the receiver discovery follows it with.
    pub fn new(config: Arc<Config>) -> (Reloader, watch::Receiver<Arc<Config>>) {
        let seen = config.file.as_ref().and_then(|p| std::fs::read(p).ok());
        let (tx, rx) = watch::channel(config);
        let reloader = Reloader {
            config: tx,
            seen: Mutex::new(seen),
        };
        (reloader, rx)
    }

    /// The config in force.
    pub fn current(&self) -> Arc<Config> {
        self.config.borrow().clone()
    }

    /// Read the file and apply it (SIGHUP), even when it looks unchanged: the CA files it
    /// names are read again too.
    pub fn reload(&self, env: &dyn Env) -> Result<Reloaded, String> {
        self.load(env, true)
    }

    /// Apply the file if its content changed since it was last read (the file watch).
    pub fn reload_if_changed(&self, env: &dyn Env) -> Result<Reloaded, String> {
        self.load(env, false)
    }

    fn load(&self, env: &dyn Env, always: bool) -> Result<Reloaded, String> {
        let running = self.current();
        let Some(path) = running.file.clone() else {
            return Ok(Reloaded::NoFile);
        };
        let bytes = std::fs::read(&path)
            .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
        {
            let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            if !always && seen.as_deref() == Some(bytes.as_slice()) {
                return Ok(Reloaded::Unchanged);
            }
            // A rejected file is not retried until it changes again (or SIGHUP).
            *seen = Some(bytes.clone());
        }
        let text = String::from_utf8(bytes)
            .map_err(|_| format!("{}: the file is not UTF-8 text", path.display()))?;
        let mut config = Config::from_yaml(&text, Source::Yaml(path.clone()), env)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if let Some(auth) = Arc::get_mut(&mut config.auth) {
            auth.keep_limits_of(&running.auth);
        }
        let ignored = config.keep_restart_only(&running);
        if !ignored.is_empty() {
            log::warn!(
                "reload: {} changed; that takes a restart (or a graceful upgrade), the running value stays",
                ignored.join(", ")
            );
        }
        self.config.send_replace(Arc::new(config));
        Ok(Reloaded::Applied)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NO_ENV: [(&str, &str); 0] = [];

    fn file_config(dir: &tempfile::TempDir, yaml: &str) -> Arc<Config> {
        let path = dir.path().join("c.yaml");
        std::fs::write(&path, yaml).unwrap();
        Arc::new(Config::from_file(&path, &NO_ENV).unwrap())
    }

    const ONE: &str = "listen: \"127.0.0.1:7000\"\nendpoints:\n  - url: http://127.0.0.1:9001\n";

    #[test]
    fn a_valid_file_is_applied_and_restart_only_keys_keep_their_running_value() {
        let dir = tempfile::tempdir().unwrap();
        let (reloader, mut rx) = Reloader::new(file_config(&dir, ONE));
        std::fs::write(
            dir.path().join("c.yaml"),
            "listen: \"127.0.0.1:7001\"\nmax_attempts: 5\nendpoints:\n  - url: http://127.0.0.1:9002\n",
        )
        .unwrap();
        assert_eq!(reloader.reload(&NO_ENV), Ok(Reloaded::Applied));
        assert!(rx.has_changed().unwrap());
        let c = rx.borrow_and_update().clone();
        assert_eq!(c.max_attempts, 5);
        assert_eq!(c.endpoints[0].url, "http://127.0.0.1:9002");
        assert_eq!(
            c.listen,
            "127.0.0.1:7000".parse().unwrap(),
            "listen needs a restart"
        );
    }

    #[test]
    fn an_invalid_file_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (reloader, rx) = Reloader::new(file_config(&dir, ONE));
        std::fs::write(dir.path().join("c.yaml"), "endpoints:\n  - url: nope\n").unwrap();
        let err = reloader.reload(&NO_ENV).unwrap_err();
        assert!(err.contains("endpoints[0].url"), "{err}");
        assert!(!rx.has_changed().unwrap());
        assert_eq!(reloader.current().endpoints[0].url, "http://127.0.0.1:9001");
    }

    #[test]
    fn the_watch_applies_changes_only() {
        let dir = tempfile::tempdir().unwrap();
        let (reloader, _rx) = Reloader::new(file_config(&dir, ONE));
        assert_eq!(reloader.reload_if_changed(&NO_ENV), Ok(Reloaded::Unchanged));
        std::fs::write(dir.path().join("c.yaml"), format!("{ONE}max_attempts: 2\n")).unwrap();
        assert_eq!(reloader.reload_if_changed(&NO_ENV), Ok(Reloaded::Applied));
        assert_eq!(reloader.reload_if_changed(&NO_ENV), Ok(Reloaded::Unchanged));
        assert_eq!(reloader.reload(&NO_ENV), Ok(Reloaded::Applied));
    }

    #[test]
    fn env_only_has_no_file_to_read() {
        let (reloader, _rx) = Reloader::new(Arc::new(Config::from_env(&NO_ENV).unwrap()));
        assert_eq!(reloader.reload(&NO_ENV), Ok(Reloaded::NoFile));
    }
}
