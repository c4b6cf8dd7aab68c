//! `ai_proxy::discovery::parse::ocf_models` on arbitrary `GET /v1/dnt/table` answers.
//! Properties: no panic; the ids are sorted, each once, non-empty, trimmed, never a
//! wildcard (`*`, `all`), and carry no upstream metadata.
#![no_main]

use ai_proxy::discovery::parse::ocf_models;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(models) = ocf_models(data) {
        for w in models.windows(2) {
            assert!(w[0].id < w[1].id, "not sorted / not unique: {models:?}");
        }
        for m in &models {
            assert!(!m.id.is_empty(), "empty id");
            assert_eq!(m.id.trim(), m.id, "untrimmed id");
            assert!(m.id != "*" && m.id != "all", "wildcard listed as a model");
            assert!(m.created.is_none() && m.owned_by.is_none());
        }
    }
});
