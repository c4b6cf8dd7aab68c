//! Reading the gateway's `GET /metrics` in tests: scrapes, settled scrapes and deltas.

use std::collections::HashMap;

use super::client::get;
use super::gateway::Gateway;

/// One scrape: `name{labels}` (labels as the exposition writes them, sorted) → value.
pub async fn scrape(gw: &Gateway) -> HashMap<String, f64> {
    let r = get(&gw.at("/metrics")).await;
    assert_eq!(r.status, 200);
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    r.text()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').expect("`series value`");
            (k.to_string(), v.parse().expect("a number"))
        })
        .collect()
}

/// Sum of every `ai_proxy_requests_total` series.
pub fn total_requests(m: &HashMap<String, f64>) -> f64 {
    m.iter()
        .filter(|(k, _)| k.starts_with("ai_proxy_requests_total{"))
        .map(|(_, v)| v)
        .sum()
}

/// A scrape taken once earlier requests are all counted: a request is counted just after its
/// answer, so one the client already saw may be counted a moment later. Settled when the next
/// scrape finds exactly one more request, its predecessor scrape (bounded).
pub async fn settled_scrape(gw: &Gateway) -> HashMap<String, f64> {
    let mut last = scrape(gw).await;
    for _ in 0..50 {
        let next = scrape(gw).await;
        if total_requests(&next) - total_requests(&last) == 1.0 {
            return next;
        }
        last = next;
    }
    panic!("request counts never settled");
}

/// `after - before` for a series (absent counts as 0).
pub fn delta(before: &HashMap<String, f64>, after: &HashMap<String, f64>, series: &str) -> f64 {
    after.get(series).copied().unwrap_or(0.0) - before.get(series).copied().unwrap_or(0.0)
}

/// The `ai_proxy_requests_total` series of a model, endpoint and status.
pub fn requests(model: &str, endpoint: &str, status: u16) -> String {
    format!(
        "ai_proxy_requests_total{{endpoint=\"{endpoint}\",model=\"{model}\",status=\"{status}\"}}"
    )
}

/// The `ai_proxy_tokens_total` series of a model, endpoint and kind (prompt, completion).
pub fn tokens(model: &str, endpoint: &str, kind: &str) -> String {
    format!("ai_proxy_tokens_total{{endpoint=\"{endpoint}\",kind=\"{kind}\",model=\"{model}\"}}")
}
