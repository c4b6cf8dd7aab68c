//! `ai_proxy::discovery::parse::openai_models` on arbitrary `GET /v1/models` answers.
//! Properties: no panic; the ids are non-empty and each listed once.
#![no_main]

use std::collections::HashSet;

use ai_proxy::discovery::parse::openai_models;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(models) = openai_models(data) {
        let mut seen = HashSet::new();
        for m in &models {
            assert!(!m.id.is_empty(), "empty id in {models:?}");
            assert!(seen.insert(m.id.as_str()), "id {:?} listed twice", m.id);
        }
    }
});
