//! Model lists out of discovery payloads: openai `GET /v1/models` and ocf `GET /v1/dnt/table`.

use std::collections::{BTreeMap, HashSet};

use serde::Deserialize;

/// A model an endpoint serves, with what its upstream said about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveredModel {
    pub id: String,
    pub created: Option<i64>,
    pub owned_by: Option<String>,
}

impl DiscoveredModel {
    fn bare(id: String) -> Self {
        DiscoveredModel {
            id,
            created: None,
            owned_by: None,
        }
    }
}

/// `{"data":[{"id":..,"created":..,"owned_by":..}]}`: ids in order, each once.
pub fn openai_models(body: &[u8]) -> Result<Vec<DiscoveredModel>, String> {
    #[derive(Deserialize)]
    struct ModelList {
        data: Vec<Entry>,
    }
    #[derive(Deserialize)]
    struct Entry {
        id: String,
        #[serde(default)]
        created: Option<i64>,
        #[serde(default)]
        owned_by: Option<String>,
    }
    let list: ModelList =
        serde_json::from_slice(body).map_err(|e| format!("not an OpenAI model list: {e}"))?;
    let mut seen = HashSet::new();
    Ok(list
        .data
        .into_iter()
        .filter(|m| !m.id.is_empty() && seen.insert(m.id.clone()))
        .map(|m| DiscoveredModel {
            id: m.id,
            created: m.created,
            owned_by: m.owned_by,
        })
        .collect())
}

/// The OCF service name whose peers `/v1/service/llm` reaches.
const LLM_SERVICE: &str = "llm";

/// The `model=NAME` identities of every `llm` service of every peer, each once, sorted.
/// Unknown fields are ignored and every field is optional; `*` and `all` are wildcards.
pub fn ocf_models(body: &[u8]) -> Result<Vec<DiscoveredModel>, String> {
    #[derive(Deserialize)]
    struct Peer {
        #[serde(default)]
        service: Option<Vec<Service>>,
    }
    #[derive(Deserialize)]
    struct Service {
        #[serde(default)]
        name: Option<String>,
        #[serde(default)]
        identity_group: Option<Vec<String>>,
    }
    let table: BTreeMap<String, Peer> =
        serde_json::from_slice(body).map_err(|e| format!("not an OCF peer table: {e}"))?;
    let mut ids = std::collections::BTreeSet::new();
    let services = table
        .into_values()
        .flat_map(|p| p.service.unwrap_or_default())
        .filter(|s| s.name.as_deref() == Some(LLM_SERVICE));
    for s in services {
        for entry in s.identity_group.unwrap_or_default() {
            if let Some((key, value)) = entry.split_once('=') {
                let value = value.trim();
                if key.trim() == "model" && !value.is_empty() && value != "*" && value != "all" {
                    ids.insert(value.to_string());
                }
            }
        }
    }
    Ok(ids.into_iter().map(DiscoveredModel::bare).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: Vec<DiscoveredModel>) -> Vec<String> {
        v.into_iter().map(|m| m.id).collect()
    }

    fn fixture(name: &str) -> Vec<u8> {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/ocf")
            .join(name);
        std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    #[test]
    fn openai_list() {
        let m = openai_models(
            br#"{"object":"list","data":[{"id":"a","object":"model","created":5,"owned_by":"vllm"},{"id":"b"},{"id":"a"}]}"#,
        )
        .unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].created, Some(5));
        assert_eq!(m[0].owned_by.as_deref(), Some("vllm"));
        assert!(openai_models(b"{}").is_err());
        assert!(openai_models(b"<html>").is_err());
    }

    #[test]
    fn ocf_docs_fixture() {
        let m = ocf_models(&fixture("opentela_docs_head_plus_worker.json")).unwrap();
        assert_eq!(ids(m), ["Qwen/Qwen3-8B"]);
    }

    #[test]
    fn ocf_prod_subset_fixture() {
        let m = ocf_models(&fixture("serving_api_dnt_table_prod_subset.json")).unwrap();
        assert_eq!(
            ids(m),
            [
                "Qwen/Qwen3.5-397B-A17B-VoMF",
                "google/gemma-4-31B-it-TsOA",
                "meta-llama/Llama-3.3-70B-Instruct",
                "swiss-ai/Apertus-70B-Instruct-2509"
            ]
        );
    }

    #[test]
    fn ocf_live_fixture_has_aliases_once() {
        let m = ids(ocf_models(&fixture("serving_api_dnt_table_live.json")).unwrap());
        assert_eq!(m.len(), 18);
        assert!(m.contains(&"swiss-ai/Apertus-70B-Instruct-2509".to_string()));
        assert!(m.contains(&"SwissAI-Research/swiss-ai/Apertus-70B-Instruct-2509".to_string()));
    }

    #[test]
    fn ocf_edge_cases() {
        let body = br#"{
            "/a": {"service": null},
            "/b": {"service": [{"name": "llm", "identity_group": ["model=*", "all", "model=x=y", "gpu=h100", "model= "]}]},
            "/c": {"service": [{"name": "sd", "identity_group": ["model=not-llm"]}, {"name": "llm"}]},
            "/d": {}
        }"#;
        assert_eq!(ids(ocf_models(body).unwrap()), ["x=y"]);
        assert!(ocf_models(b"[]").is_err());
        assert_eq!(ocf_models(b"{}").unwrap(), vec![]);
    }
}
