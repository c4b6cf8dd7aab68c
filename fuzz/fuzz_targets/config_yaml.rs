//! `ai_proxy::config::Config::from_yaml` on arbitrary config text (UTF-8, lossily), with an
//! empty environment. Properties: no panic; an error is one line (the CLI prints it as
//! `ai-proxy: invalid config: <error>`); an accepted config has at least one endpoint, with
//! distinct names.
#![no_main]

use std::collections::HashSet;

use ai_proxy::config::{Config, Env, Source};
use libfuzzer_sys::fuzz_target;

struct NoEnv;

impl Env for NoEnv {
    fn var(&self, _name: &str) -> Option<String> {
        None
    }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    // `ca_file` makes the config read that file: keep the fuzzer away from device and
    // kernel files (`/dev/zero`, `/dev/stdin` would never end).
    if ["/dev", "/proc", "/sys"].iter().any(|p| text.contains(p)) {
        return;
    }
    match Config::from_yaml(&text, Source::Yaml("fuzz.yaml".into()), &NoEnv) {
        Ok(c) => {
            assert!(!c.endpoints.is_empty());
            let mut names = HashSet::new();
            for e in &c.endpoints {
                assert!(names.insert(e.name.as_str()), "duplicate name {:?}", e.name);
            }
        }
        Err(e) => assert!(!e.contains(['\n', '\r']), "multi-line error: {e:?}"),
    }
});
