//! Client-key limits (`requests_per_minute`, `tokens_per_minute`, `max_concurrent`, `budget`),
//! shared by replicas through a real Redis (`state:`) or kept per process without it: the 429
//! answers and their headers, releases and expiring leases, the fallback when Redis goes away
//! (`on_error: allow | deny`) and the recovery when it comes back, and `GET /v1/keys`.
//!
//! Every test starts its own redis-server, mock and gateways on free loopback ports.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use serde_json::{json, Value};

const KEY_A: &str = "sk-lim-team-a-5c81e0f4a2";
const KEY_B: &str = "sk-lim-team-b-d93a7b1e60";
const ADMIN: &str = "sk-lim-admin-7e24c9f1b8";
const ALL_KEYS: [&str; 3] = [KEY_A, KEY_B, ADMIN];
const MODEL: &str = "m";

/// Prompt words of a 100-token request: the mock counts one prompt token per word and one
/// completion token per event, 5 events by default (see `mock/src/shapes.rs`).
const WORDS_FOR_100: usize = 95;

// ---------------------------------------------------------------------------------------------
// Config

/// One `auth.keys` entry with these limit lines (e.g. `"requests_per_minute: 60"`).
fn key(secret: &str, name: &str, limits: &[&str]) -> String {
    let mut out = format!("    - key: {secret}\n      name: {name}\n");
    for l in limits {
        out.push_str(&format!("      {l}\n"));
    }
    out
}

/// A `state:` block on this Redis with these extra lines (e.g. `"on_error: deny"`).
///
/// `timeout_ms` is 1000 unless given: on a busy test host (debug builds, tests in parallel on
/// few CPUs) a call can take longer than the default 50 ms, and one late answer puts a replica
/// on per-process limits until the next probe, which is not what most tests look at. The tests
/// of a slow or gone Redis set their own.
fn state(redis: &RedisServer, lines: &[&str]) -> String {
    let mut out = format!("state:\n  redis_url: \"{}\"\n", redis.url());
    if !lines.iter().any(|l| l.starts_with("timeout_ms:")) {
        out.push_str("  timeout_ms: 1000\n");
    }
    for l in lines {
        out.push_str(&format!("  {l}\n"));
    }
    out
}

/// A gateway config in front of `mock` (endpoint `up`), with the admin key, these key entries
/// and extra top-level YAML (a `state:` block, `metrics:`, ...).
fn config(mock: &MockServer, keys: &[String], extra: &str) -> String {
    format!(
        "listen: \"127.0.0.1:{{port}}\"\nthreads: 1\n{extra}\
         auth:\n  admin_key: {ADMIN}\n  keys:\n{}\
         endpoints:\n  - url: {}\n    name: up\n",
        keys.concat(),
        mock.url()
    )
}

/// `n` gateways with the same config, started at once.
async fn replicas(n: usize, yaml: &str) -> Vec<Gateway> {
    futures::future::join_all((0..n).map(|_| Gateway::start(yaml))).await
}

fn urls(gws: &[Gateway]) -> Vec<String> {
    gws.iter().map(|g| g.url.clone()).collect()
}

// ---------------------------------------------------------------------------------------------
// Requests

fn bearer(key: &str) -> String {
    format!("Bearer {key}")
}

/// A chat request whose prompt is `words` words (that many prompt tokens at the mock).
fn body(stream: bool, words: usize, include_usage: bool) -> String {
    let mut b = json!({
        "model": MODEL,
        "stream": stream,
        "messages": [{"role": "user", "content": vec!["word"; words].join(" ")}],
    });
    if include_usage {
        b["stream_options"] = json!({"include_usage": true});
    }
    b.to_string()
}

/// `POST {base}/v1/chat/completions` with this key and body; a transport error is returned.
async fn try_chat(base: &str, key: &str, body: String) -> Result<Resp, String> {
    Client::new()
        .timeout(Duration::from_secs(10))
        .try_request(
            "POST",
            &format!("{base}/v1/chat/completions"),
            &[
                ("authorization", &bearer(key)),
                ("content-type", "application/json"),
            ],
            ReqBody::full(body),
        )
        .await
}

/// A JSON chat request of `words` prompt words (panics on transport errors).
async fn chat(base: &str, key: &str, words: usize) -> Resp {
    try_chat(base, key, body(false, words, false))
        .await
        .unwrap_or_else(|e| panic!("POST {base}/v1/chat/completions: {e}"))
}

/// A streaming chat request; returns once the response head arrived.
async fn open_stream(base: &str, key: &str) -> StreamResp {
    Client::new()
        .post_stream(
            &format!("{base}/v1/chat/completions"),
            body(true, 5, false),
            &[("authorization", &bearer(key))],
        )
        .await
}

/// A stream's whole answer as a [`Resp`] (for a refused stream: its JSON error).
async fn into_resp(mut s: StreamResp) -> Resp {
    let body = s.read_to_end().await;
    Resp {
        status: s.status,
        headers: s.headers.clone(),
        body,
    }
}

async fn get_with(base: &str, path: &str, headers: &[(&str, &str)]) -> Resp {
    Client::new()
        .request("GET", &format!("{base}{path}"), headers, ReqBody::empty())
        .await
}

/// `GET /v1/keys` with the admin key, as JSON (asserting 200).
async fn keys_view(base: &str) -> Value {
    let r = get_with(base, "/v1/keys", &[("authorization", &bearer(ADMIN))]).await;
    assert_eq!(r.status, 200, "GET /v1/keys: {}", r.text());
    r.json()
}

/// The `/v1/keys` entry named `name`.
fn entry(view: &Value, name: &str) -> Value {
    view["data"]
        .as_array()
        .unwrap_or_else(|| panic!("no data list: {view}"))
        .iter()
        .find(|e| e["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no key {name} in /v1/keys: {view}"))
}

/// A usage number of key `name` in `/v1/keys` on `base`.
async fn usage_of(base: &str, name: &str, field: &str) -> u64 {
    let v = keys_view(base).await;
    entry(&v, name)["usage"][field]
        .as_u64()
        .unwrap_or_else(|| panic!("usage.{field} of {name} is not a number: {v}"))
}

/// Wait (bounded) until usage `field` of key `name` on `base` satisfies `ok`; the last value
/// seen either way.
async fn wait_usage(base: &str, name: &str, field: &str, ok: impl Fn(u64) -> bool) -> u64 {
    let last = Mutex::new(None);
    poll_until(Duration::from_secs(5), || async {
        let n = usage_of(base, name, field).await;
        *last.lock().unwrap() = Some(n);
        ok(n)
    })
    .await;
    let n = *last.lock().unwrap();
    n.expect("at least one look")
}

/// The `state` of `/v1/keys` on `base`.
async fn state_of(base: &str) -> String {
    keys_view(base).await["state"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Wait (bounded by `timeout`) until every gateway's `/v1/keys` says `state: want`; the time it
/// took, `None` on timeout.
async fn wait_state(bases: &[String], want: &str, timeout: Duration) -> Option<Duration> {
    poll_until(timeout, || async {
        for b in bases {
            if state_of(b).await != want {
                return false;
            }
        }
        true
    })
    .await
}

/// Sum of every `ai_proxy_state_errors_total` series on `base`'s `/metrics` (admin key).
async fn state_errors(base: &str) -> f64 {
    let r = get_with(base, "/metrics", &[("authorization", &bearer(ADMIN))]).await;
    assert_eq!(r.status, 200, "GET /metrics: {}", r.text());
    r.text()
        .lines()
        .filter(|l| {
            l.starts_with("ai_proxy_state_errors_total{")
                || l.starts_with("ai_proxy_state_errors_total ")
        })
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

// ---------------------------------------------------------------------------------------------
// Assertions

/// A header as a number (panics, showing the headers, when it is missing or not a number).
fn header_u64(r: &Resp, name: &str) -> u64 {
    r.header(name)
        .unwrap_or_else(|| panic!("no {name} header in {:?}", r.headers))
        .parse()
        .unwrap_or_else(|e| panic!("{name}: {:?} is not a whole number: {e}", r.header(name)))
}

/// An OpenAI error answer from a limit: 429, JSON, an `error` object with `message`, `type`,
/// `param` and `code`, this code, a message. Returns the `error` object.
fn assert_limited(r: &Resp, code: &str) -> Value {
    assert_eq!(r.status, 429, "body: {}", r.text());
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("application/json")),
        "content-type {:?}",
        r.header("content-type")
    );
    let v = r.json();
    let e = v["error"]
        .as_object()
        .unwrap_or_else(|| panic!("no error object: {v}"));
    for k in ["message", "type", "param", "code"] {
        assert!(e.contains_key(k), "missing `{k}`: {v}");
    }
    assert_eq!(e["code"], code, "{v}");
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    v["error"].clone()
}

/// A 429 `rate_limit_exceeded` with `Retry-After` in whole seconds (1..=60); the seconds.
fn assert_rate_limited(r: &Resp) -> u64 {
    assert_limited(r, "rate_limit_exceeded");
    let secs = header_u64(r, "retry-after");
    assert!((1..=60).contains(&secs), "Retry-After {secs}");
    secs
}

/// A 429 `insufficient_quota` (code and type).
fn assert_out_of_budget(r: &Resp) {
    let e = assert_limited(r, "insufficient_quota");
    assert_eq!(e["type"], "insufficient_quota", "{e}");
}

/// `statuses` is some 200s, then only 429s; the number of 200s.
fn admitted_then_refused(statuses: &[u16]) -> usize {
    let ok = statuses.iter().take_while(|s| **s == 200).count();
    assert!(
        statuses[ok..].iter().all(|s| *s == 429),
        "after the first refusal only 429s: {statuses:?}"
    );
    ok
}

/// No configured key in the body or headers of any of these answers, nor in the logs.
fn assert_no_key(answers: &[&Resp], gws: &[&Gateway]) {
    for key in ALL_KEYS {
        for r in answers {
            assert!(
                !r.text().contains(key),
                "an answer holds a key: {}",
                r.text()
            );
            for (name, value) in &r.headers {
                let v = String::from_utf8_lossy(value.as_bytes());
                assert!(!v.contains(key), "header {name} holds a key");
            }
        }
        for gw in gws {
            assert!(!gw.logs().contains(key), "the log holds a key");
        }
    }
}

/// After a client dropped a stream and its slot went to a new one, the upstream soon has at
/// most `max` again. Not its peak: the upstream notices the cut stream's connection close a
/// moment after the gateway, which frees the slot as it closes it, so the new stream may
/// arrive first.
async fn assert_upstream_settles_at(mock: &MockServer, max: usize) {
    let settled = poll_until(Duration::from_secs(2), || async { mock.in_flight() <= max }).await;
    assert!(
        settled.is_some(),
        "the upstream still has {} streams (max {max})",
        mock.in_flight()
    );
}

// ---------------------------------------------------------------------------------------------
// UTC dates

/// (year, month, day) of a day number since 1970-01-01 (H. Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn today() -> i64 {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    i64::try_from(secs / 86_400).unwrap()
}

/// The next UTC midnight after now, as `YYYY-MM-DDT00:00:00Z`.
fn next_midnight() -> String {
    let (y, m, d) = civil_from_days(today() + 1);
    format!("{y:04}-{m:02}-{d:02}T00:00:00Z")
}

/// The first of next month, UTC midnight, as `YYYY-MM-01T00:00:00Z`.
fn next_month() -> String {
    let (y, m, _) = civil_from_days(today());
    let (y, m) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
    format!("{y:04}-{m:02}-01T00:00:00Z")
}

#[test]
fn civil_dates() {
    assert_eq!(civil_from_days(0), (1970, 1, 1));
    assert_eq!(civil_from_days(19_782), (2024, 2, 29));
    assert_eq!(civil_from_days(20_792), (2026, 12, 5));
    assert_eq!(civil_from_days(-1), (1969, 12, 31));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_harness_starts_kills_and_restarts_on_the_same_port() {
    let mut redis = RedisServer::start().await;
    let (port, pid) = (redis.port(), redis.pid().expect("running"));
    assert_eq!(redis.url(), format!("redis://127.0.0.1:{port}/"));
    assert_eq!(
        redis.cmd(&["SET", "k", "v"]).await,
        Ok(Reply::Simple("OK".into()))
    );
    assert_eq!(
        redis.cmd(&["GET", "k"]).await.unwrap().text().as_deref(),
        Some("v")
    );
    assert_eq!(redis.keys().await, ["k"]);
    assert!(matches!(
        redis.cmd(&["NOSUCHCOMMAND"]).await,
        Ok(Reply::Error(_))
    ));

    redis.kill();
    assert!(redis.pid().is_none());
    assert!(redis.cmd(&["PING"]).await.is_err(), "still answering");
    // SAFETY: signal 0 only checks whether the (reaped) PID exists.
    let alive = unsafe { libc::kill(pid as libc::pid_t, 0) } == 0;
    assert!(!alive, "pid {pid} still exists");

    redis.restart().await;
    assert_eq!(redis.port(), port);
    assert_ne!(redis.pid(), Some(pid));
    assert_eq!(redis.cmd(&["PING"]).await, Ok(Reply::Simple("PONG".into())));
    assert!(redis.keys().await.is_empty(), "nothing is persisted");
}

// ---------------------------------------------------------------------------------------------
// Shared limits (Redis)

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_per_minute_is_one_limit_across_three_replicas() {
    let redis = RedisServer::start().await;
    let mock = start_mock(MockConfig::openai("up", [MODEL])).await;
    let yaml = config(
        &mock,
        &[key(KEY_A, "team-a", &["requests_per_minute: 60"])],
        &state(&redis, &[]),
    );
    let gws = replicas(3, &yaml).await;
    let bases = Arc::new(urls(&gws));

    // 300 requests from 10 clients, request i to replica i % 3: 100 each.
    let t0 = Instant::now();
    let tasks: Vec<_> = (0..10)
        .map(|c| {
            let bases = bases.clone();
            tokio::spawn(async move {
                let mut out = Vec::new();
                for j in 0..30 {
                    let replica = (c + 10 * j) % 3;
                    out.push((replica, chat(&bases[replica], KEY_A, 5).await));
                }
                out
            })
        })
        .collect();
    let mut answers = Vec::new();
    for t in tasks {
        answers.extend(t.await.unwrap());
    }
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(10), "300 requests took {took:?}");

    let ok: Vec<_> = answers.iter().filter(|(_, r)| r.status == 200).collect();
    let per_replica: Vec<usize> = (0..3)
        .map(|i| ok.iter().filter(|(r, _)| *r == i).count())
        .collect();
    assert!(
        (60..=63).contains(&ok.len()),
        "{} of 300 admitted in {took:?} (per replica {per_replica:?}); 60 a minute in all",
        ok.len()
    );
    for (_, r) in &ok {
        assert_eq!(r.header("x-ratelimit-limit-requests"), Some("60"));
        assert!(header_u64(r, "x-ratelimit-remaining-requests") <= 59);
    }
    for (_, r) in answers.iter().filter(|(_, r)| r.status != 200) {
        assert_rate_limited(r);
        assert_eq!(header_u64(r, "x-ratelimit-remaining-requests"), 0);
    }
    // Refused requests never reached the upstream.
    assert_eq!(inference_requests(&mock).len(), ok.len());

    for b in bases.iter() {
        let v = keys_view(b).await;
        assert_eq!(v["state"], "shared", "{v}");
        let team = entry(&v, "team-a");
        assert_eq!(team["limits"]["requests_per_minute"], 60, "{v}");
        assert_eq!(
            team["usage"]["requests_this_minute"],
            ok.len(),
            "the admitted requests, counted once for all replicas: {v}"
        );
    }
    // The shared state lives under the default prefix, and knows keys by name only.
    let keys = redis.keys().await;
    assert!(!keys.is_empty(), "nothing in Redis");
    for k in &keys {
        assert!(
            k.starts_with("ai-proxy:"),
            "Redis key {k:?} outside the prefix"
        );
        assert!(!k.contains(KEY_A), "a Redis key holds the client key: {k}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tokens_per_minute_is_one_limit_across_three_replicas() {
    let redis = RedisServer::start().await;
    let mock = start_mock(MockConfig::openai("up", [MODEL])).await;
    let yaml = config(
        &mock,
        &[key(KEY_A, "team-a", &["tokens_per_minute: 1000"])],
        &state(&redis, &["key_prefix: \"limits-test:\""]),
    );
    let gws = replicas(3, &yaml).await;
    let bases = urls(&gws);

    // 100 tokens each, one after the other, round robin: 1000 a minute is 10 of them.
    let mut answers = Vec::new();
    for i in 0..20 {
        answers.push(chat(&bases[i % 3], KEY_A, WORDS_FOR_100).await);
    }
    let first = &answers[0];
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(
        first.json()["usage"]["total_tokens"],
        100,
        "the mock's usage: {}",
        first.text()
    );
    let statuses: Vec<u16> = answers.iter().map(|r| r.status).collect();
    let ok = admitted_then_refused(&statuses);
    // Tokens are charged when a request ends: the next one may be checked just before.
    assert!((10..=11).contains(&ok), "{ok} admitted: {statuses:?}");
    for r in &answers[..ok] {
        assert_eq!(r.header("x-ratelimit-limit-tokens"), Some("1000"));
        assert!(header_u64(r, "x-ratelimit-remaining-tokens") <= 1000);
    }
    for r in &answers[ok..] {
        assert_rate_limited(r);
        assert_eq!(header_u64(r, "x-ratelimit-remaining-tokens"), 0);
    }
    assert_eq!(inference_requests(&mock).len(), ok);

    let want = 100 * ok as u64;
    for b in &bases {
        let seen = wait_usage(b, "team-a", "tokens_this_minute", |n| n == want).await;
        assert_eq!(seen, want, "tokens_this_minute on {b}");
        assert_eq!(state_of(b).await, "shared");
    }
    let keys = redis.keys().await;
    assert!(!keys.is_empty(), "nothing in Redis");
    for k in &keys {
        assert!(
            k.starts_with("limits-test:"),
            "Redis key {k:?} outside key_prefix"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn max_concurrent_holds_across_three_replicas_and_frees_at_the_end() {
    let redis = RedisServer::start().await;
    // Streams of 2 s: 20 events, 100 ms apart.
    let mock =
        start_mock(MockConfig::openai("up", [MODEL]).with_sse(20, Duration::from_millis(100)))
            .await;
    let yaml = config(
        &mock,
        &[key(KEY_A, "team-a", &["max_concurrent: 4"])],
        &state(&redis, &[]),
    );
    let gws = replicas(3, &yaml).await;
    let bases = urls(&gws);

    // 12 streams at once, 4 on each replica.
    let tasks: Vec<_> = (0..12)
        .map(|i| {
            let base = bases[i % 3].clone();
            tokio::spawn(async move { open_stream(&base, KEY_A).await })
        })
        .collect();
    let mut open = Vec::new();
    let mut refused = Vec::new();
    for t in tasks {
        let s = t.await.unwrap();
        if s.status == 200 {
            open.push(s);
        } else {
            refused.push(into_resp(s).await);
        }
    }
    assert_eq!(
        open.len(),
        4,
        "admitted of 12 (max 4); refused: {:?}",
        refused.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    for r in &refused {
        assert_rate_limited(r);
    }
    for b in &bases {
        assert_eq!(usage_of(b, "team-a", "in_flight").await, 4);
    }
    assert_eq!(mock.in_flight(), 4);

    // The streams run to their end; then every slot is free again.
    for s in &mut open {
        let body = s.read_to_end().await;
        assert!(s.error().is_none(), "{:?}", s.error());
        assert_eq!(sse_data(&body).last().map(String::as_str), Some("[DONE]"));
    }
    assert!(
        mock.peak_in_flight() <= 4,
        "the upstream saw {} at once",
        mock.peak_in_flight()
    );
    for b in &bases {
        let n = wait_usage(b, "team-a", "in_flight", |n| n == 0).await;
        assert_eq!(n, 0, "in_flight after the streams ended, on {b}");
    }
    let again: Vec<_> =
        futures::future::join_all((0..4).map(|i| open_stream(&bases[i % 3], KEY_A))).await;
    assert!(
        again.iter().all(|s| s.status == 200),
        "4 again after the end: {:?}",
        again.iter().map(|s| s.status).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stream_dropped_by_its_client_frees_its_slot_at_once() {
    let redis = RedisServer::start().await;
    // Streams of 10 s; the default lease (10 s) would not free a slot within this test.
    let mock =
        start_mock(MockConfig::openai("up", [MODEL]).with_sse(100, Duration::from_millis(100)))
            .await;
    let yaml = config(
        &mock,
        &[key(KEY_A, "team-a", &["max_concurrent: 4"])],
        &state(&redis, &[]),
    );
    let gws = replicas(3, &yaml).await;
    let bases = urls(&gws);

    let mut open = Vec::new();
    for i in 0..4 {
        let s = open_stream(&bases[i % 3], KEY_A).await;
        assert_eq!(s.status, 200, "stream {i}");
        open.push(s);
    }
    let full = into_resp(open_stream(&bases[1], KEY_A).await).await;
    assert_rate_limited(&full);
    assert_eq!(mock.peak_in_flight(), 4);

    // The client of the stream on replica 0 goes away: another replica admits one at once.
    drop(open.remove(0));
    let t0 = Instant::now();
    let mut admitted = None;
    for _ in 0..200 {
        let s = open_stream(&bases[1], KEY_A).await;
        if s.status == 200 {
            admitted = Some(s);
            break;
        }
        if t0.elapsed() > Duration::from_secs(1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = t0.elapsed();
    assert!(
        admitted.is_some(),
        "no slot freed within {took:?} of a client dropping its stream"
    );
    open.extend(admitted);
    let closed = poll_until(Duration::from_secs(2), || async {
        mock.streams().iter().any(|s| s.closed_early_at.is_some())
    })
    .await;
    assert!(closed.is_some(), "the upstream stream was not cut");
    for b in &bases {
        assert_eq!(usage_of(b, "team-a", "in_flight").await, 4);
    }
    assert_upstream_settles_at(&mock, 4).await;
    let full = into_resp(open_stream(&bases[2], KEY_A).await).await;
    assert_rate_limited(&full);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_replica_frees_its_slots_within_the_lease_and_live_leases_are_renewed() {
    let redis = RedisServer::start().await;
    let mock =
        start_mock(MockConfig::openai("up", [MODEL]).with_sse(100, Duration::from_millis(100)))
            .await;
    let yaml = config(
        &mock,
        &[key(KEY_A, "team-a", &["max_concurrent: 4"])],
        &state(&redis, &["lease_secs: 2"]),
    );
    let mut gws = replicas(3, &yaml).await;
    let bases = urls(&gws);

    // Replica 0 holds all 4 slots with 10 s streams.
    let mut held = Vec::new();
    for i in 0..4 {
        let s = open_stream(&bases[0], KEY_A).await;
        assert_eq!(s.status, 200, "stream {i}");
        held.push(s);
    }
    // For longer than the lease, the others keep refusing: live leases are renewed.
    let t0 = Instant::now();
    let mut looks = 0;
    while t0.elapsed() < Duration::from_secs(3) {
        let r = into_resp(open_stream(&bases[1 + looks % 2], KEY_A).await).await;
        assert_eq!(
            r.status,
            429,
            "admitted {:?} after 4 streams began, past the 2 s lease: {}",
            t0.elapsed(),
            r.text()
        );
        assert_rate_limited(&r);
        looks += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(mock.in_flight(), 4, "the 4 streams still run");

    // SIGKILL: replica 0 releases nothing; its leases expire within lease_secs.
    gws[0].signal("KILL");
    assert!(gws[0].wait_exit(Duration::from_secs(5)).await.is_some());
    let killed = Instant::now();
    drop(held);
    let mut admitted = Vec::new();
    let deadline = killed + Duration::from_millis(3500);
    let mut i = 0;
    while admitted.len() < 4 && Instant::now() < deadline {
        let s = open_stream(&bases[1 + i % 2], KEY_A).await;
        i += 1;
        if s.status == 200 {
            admitted.push(s);
        } else {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert_eq!(
        admitted.len(),
        4,
        "slots free {:?} after the holder was killed (lease 2 s)",
        killed.elapsed()
    );
    let full = into_resp(open_stream(&bases[2], KEY_A).await).await;
    assert_rate_limited(&full);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_daily_budget_stops_the_key_with_insufficient_quota_until_midnight() {
    let redis = RedisServer::start().await;
    let mock = start_mock(MockConfig::openai("up", [MODEL])).await;
    let yaml = config(
        &mock,
        &[
            key(KEY_A, "team-a", &["budget: {tokens: 300, period: day}"]),
            key(KEY_B, "team-b", &[]),
        ],
        &state(&redis, &[]),
    );
    let gws = replicas(2, &yaml).await;
    let bases = urls(&gws);
    let midnight_before = next_midnight();

    let mut answers = Vec::new();
    for i in 0..10 {
        answers.push(chat(&bases[i % 2], KEY_A, WORDS_FOR_100).await);
    }
    let statuses: Vec<u16> = answers.iter().map(|r| r.status).collect();
    let ok = admitted_then_refused(&statuses);
    // 100 tokens each: 3 fit 300; one more may pass before the third's tokens are charged.
    assert!((3..=4).contains(&ok), "{ok} admitted: {statuses:?}");
    for r in &answers[ok..] {
        assert_out_of_budget(r);
    }
    // Another key is not stopped.
    assert_eq!(chat(&bases[1], KEY_B, 5).await.status, 200);

    let midnight_after = next_midnight();
    for b in &bases {
        let used = wait_usage(b, "team-a", "budget_used", |n| n >= 300).await;
        assert!(used >= 300, "budget_used {used} on {b}");
        let v = keys_view(b).await;
        let team = entry(&v, "team-a");
        assert_eq!(
            team["limits"]["budget"],
            json!({"tokens": 300, "period": "day"}),
            "{v}"
        );
        assert_eq!(team["usage"]["budget_used"], 100 * ok as u64, "{v}");
        let resets = team["usage"]["budget_resets_at"].as_str().unwrap_or("");
        assert!(
            resets == midnight_before || resets == midnight_after,
            "budget_resets_at {resets:?}, next UTC midnight {midnight_after}: {v}"
        );
    }
}

/// One request of a [`Loop`]: the replica, when it ended, its status or transport error.
type Outcome = (usize, Instant, Result<u16, String>);

/// Sends requests round robin over `bases` until stopped, one after the other from each of
/// `clients` tasks; every outcome kept with its replica and time.
struct Loop {
    stop: Arc<AtomicBool>,
    outcomes: Arc<Mutex<Vec<Outcome>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Loop {
    fn start(bases: &[String], key: &'static str, clients: usize) -> Loop {
        let stop = Arc::new(AtomicBool::new(false));
        let outcomes = Arc::new(Mutex::new(Vec::new()));
        let tasks = (0..clients)
            .map(|c| {
                let (stop, outcomes, bases) = (stop.clone(), outcomes.clone(), bases.to_vec());
                tokio::spawn(async move {
                    // Bounded: stopped by the test, or at most 5000 requests per client.
                    for n in 0..5000 {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let replica = (c + n) % bases.len();
                        let r = try_chat(&bases[replica], key, body(false, 5, false)).await;
                        let outcome = r.map(|r| {
                            if r.status == 429 {
                                assert_rate_limited(&r);
                            }
                            r.status
                        });
                        outcomes
                            .lock()
                            .unwrap()
                            .push((replica, Instant::now(), outcome));
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                })
            })
            .collect();
        Loop {
            stop,
            outcomes,
            tasks,
        }
    }

    fn count(&self) -> usize {
        self.outcomes.lock().unwrap().len()
    }

    /// Wait (bounded) until `more` requests are done after this call.
    async fn wait_for_more(&self, more: usize) {
        let target = self.count() + more;
        let done = poll_until(Duration::from_secs(15), || async { self.count() >= target }).await;
        assert!(done.is_some(), "the loop is stuck at {}", self.count());
    }

    async fn stop(self) -> Vec<Outcome> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.expect("a loop client panicked");
        }
        let out = self.outcomes.lock().unwrap().clone();
        out
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_down_with_on_error_allow_serves_under_local_limits_then_shares_again() {
    let mut redis = RedisServer::start().await;
    let mock = start_mock(MockConfig::openai("up", [MODEL]).with_record(false)).await;
    let yaml = config(
        &mock,
        &[key(KEY_A, "team-a", &["requests_per_minute: 20"])],
        &format!("metrics: true\n{}", state(&redis, &["on_error: allow"])),
    );
    let gws = replicas(3, &yaml).await;
    let bases = urls(&gws);
    assert!(
        wait_state(&bases, "shared", Duration::from_secs(2))
            .await
            .is_some(),
        "not shared at the start"
    );

    // Shared: 20 a minute for the three together.
    let mut ok = 0;
    for i in 0..45 {
        let r = chat(&bases[i % 3], KEY_A, 5).await;
        match r.status {
            200 => ok += 1,
            _ => {
                assert_rate_limited(&r);
            }
        }
    }
    assert!((20..=21).contains(&ok), "{ok} of 45 admitted while shared");

    // A loop over the kill: nothing is lost, and each replica admits on its own.
    let load = Loop::start(&bases, KEY_A, 3);
    load.wait_for_more(30).await;
    redis.kill();
    let killed = Instant::now();
    load.wait_for_more(180).await;
    let outcomes = load.stop().await;
    let failed: Vec<_> = outcomes
        .iter()
        .filter(|(_, _, o)| !matches!(o, Ok(200 | 429)))
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests neither 200 nor 429: {:?}",
        failed.len(),
        outcomes.len(),
        &failed[..failed.len().min(10)]
    );
    let before: usize = outcomes
        .iter()
        .filter(|(_, t, o)| *t < killed && *o == Ok(200))
        .count();
    assert_eq!(before, 0, "the shared limit was used up before the kill");
    for replica in 0..3 {
        let after: Vec<u16> = outcomes
            .iter()
            .filter(|(r, t, _)| *r == replica && *t > killed)
            .map(|(_, _, o)| *o.as_ref().unwrap())
            .collect();
        let admitted = after.iter().filter(|s| **s == 200).count();
        assert!(
            (1..=21).contains(&admitted),
            "replica {replica} admitted {admitted} on its own after the kill (local 20 a minute): {after:?}"
        );
        assert_eq!(
            after.last(),
            Some(&429),
            "replica {replica}'s local limit ends in 429s: {after:?}"
        );
    }
    assert!(
        wait_state(&bases, "fallback", Duration::from_secs(3))
            .await
            .is_some(),
        "not in fallback with Redis gone: {:?}",
        futures::future::join_all(bases.iter().map(|b| state_of(b))).await
    );
    for b in &bases {
        let n = state_errors(b).await;
        assert!(n > 0.0, "ai_proxy_state_errors_total {n} on {b}");
    }

    // Redis back on the same port (empty): shared again within 5 s, with a fresh shared count.
    redis.restart().await;
    let back = wait_state(&bases, "shared", Duration::from_secs(5)).await;
    assert!(
        back.is_some(),
        "not shared 5 s after Redis came back: {:?}",
        futures::future::join_all(bases.iter().map(|b| state_of(b))).await
    );
    let mut ok = 0;
    for i in 0..45 {
        let r = chat(&bases[i % 3], KEY_A, 5).await;
        match r.status {
            200 => ok += 1,
            _ => {
                assert_rate_limited(&r);
            }
        }
    }
    assert!(
        (20..=21).contains(&ok),
        "{ok} of 45 admitted after the recovery (20 a minute, shared)"
    );
    // The switch and the recovery are logged once each, not once per request.
    for gw in &gws {
        let lines = gw
            .logs()
            .lines()
            .filter(|l| l.to_ascii_lowercase().contains("redis"))
            .count();
        assert!(
            lines <= 6,
            "{lines} log lines about Redis on {}:\n{}",
            gw.url,
            gw.logs()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_with_on_error_deny_answers_503_state_unavailable() {
    let mut redis = RedisServer::start().await;
    let mock = start_mock(MockConfig::openai("up", [MODEL])).await;
    let yaml = config(
        &mock,
        &[key(KEY_A, "team-a", &["requests_per_minute: 100"])],
        &state(&redis, &["on_error: deny"]),
    );
    let gw = Gateway::start(&yaml).await;
    assert_eq!(chat(&gw.url, KEY_A, 5).await.status, 200);

    redis.kill();
    for i in 0..5 {
        let t0 = Instant::now();
        let r = chat(&gw.url, KEY_A, 5).await;
        assert_openai_error(&r, 503, "state_unavailable");
        assert!(
            t0.elapsed() < Duration::from_secs(2),
            "request {i} took {:?}",
            t0.elapsed()
        );
    }
    let sent = inference_requests(&mock).len();
    assert_eq!(sent, 1, "denied requests never reach the upstream");

    redis.restart().await;
    let served = poll_until(Duration::from_secs(5), || async {
        chat(&gw.url, KEY_A, 5).await.status == 200
    })
    .await;
    assert!(served.is_some(), "not served 5 s after Redis came back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_redis_costs_a_request_at_most_timeout_ms_then_local_limits_apply() {
    let redis = RedisServer::start().await;
    let mock = start_mock(MockConfig::openai("up", [MODEL])).await;
    let yaml = config(
        &mock,
        &[key(KEY_A, "team-a", &["requests_per_minute: 1000"])],
        &state(&redis, &["on_error: allow", "timeout_ms: 100"]),
    );
    let gw = Gateway::start(&yaml).await;
    assert_eq!(chat(&gw.url, KEY_A, 5).await.status, 200);
    assert_eq!(state_of(&gw.url).await, "shared");

    // Redis stops answering (SIGSTOP): its connections stay open, no reply comes.
    redis.pause();
    for i in 0..10 {
        let t0 = Instant::now();
        let r = chat(&gw.url, KEY_A, 5).await;
        let took = t0.elapsed();
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        // 100 ms for Redis, and the rest of the request on a busy host.
        assert!(
            took < Duration::from_millis(1000),
            "request {i} took {took:?} with timeout_ms 100"
        );
    }
    let t0 = Instant::now();
    assert_eq!(state_of(&gw.url).await, "fallback");
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "/v1/keys took {:?} with Redis hung",
        t0.elapsed()
    );

    redis.resume();
    let back = wait_state(
        std::slice::from_ref(&gw.url),
        "shared",
        Duration::from_secs(5),
    )
    .await;
    assert!(back.is_some(), "not shared 5 s after Redis answered again");
    assert_eq!(chat(&gw.url, KEY_A, 5).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_view_needs_the_admin_key_and_shows_limits_and_usage_but_no_key() {
    let redis = RedisServer::start().await;
    let mock = start_mock(MockConfig::openai("up", [MODEL])).await;
    let yaml = config(
        &mock,
        &[
            key(
                KEY_A,
                "team-a",
                &[
                    "requests_per_minute: 60",
                    "tokens_per_minute: 1000",
                    "max_concurrent: 4",
                    "budget: {tokens: 500, period: day}",
                ],
            ),
            key(KEY_B, "team-b", &["requests_per_minute: 30"]),
        ],
        &state(&redis, &[]),
    );
    let gw = Gateway::start(&yaml).await;
    let mut seen = Vec::new();

    // Two requests of team-a: 5 prompt words and 5 completion tokens each.
    for _ in 0..2 {
        let r = chat(&gw.url, KEY_A, 5).await;
        assert_eq!(r.status, 200, "{}", r.text());
        for (h, want) in [
            ("x-ratelimit-limit-requests", 60),
            ("x-ratelimit-limit-tokens", 1000),
        ] {
            assert_eq!(header_u64(&r, h), want, "{h}");
        }
        header_u64(&r, "x-ratelimit-remaining-requests");
        header_u64(&r, "x-ratelimit-remaining-tokens");
        seen.push(r);
    }

    for headers in [
        vec![],
        vec![("authorization", "Bearer sk-not-a-key")],
        vec![("authorization", "Bearer sk-lim-team-a-5c81e0f4a2")],
        vec![("x-api-key", KEY_B)],
    ] {
        let r = get_with(&gw.url, "/v1/keys", &headers).await;
        assert_openai_error(&r, 401, "invalid_api_key");
        seen.push(r);
    }

    wait_usage(&gw.url, "team-a", "tokens_this_minute", |n| n == 20).await;
    let r = get_with(&gw.url, "/v1/keys", &[("authorization", &bearer(ADMIN))]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r
        .header("content-type")
        .is_some_and(|c| c.starts_with("application/json")));
    let v = r.json();
    seen.push(r);
    assert_eq!(v["object"], "list", "{v}");
    assert_eq!(v["state"], "shared", "{v}");
    assert_eq!(v["data"].as_array().map(Vec::len), Some(2), "{v}");

    let a = entry(&v, "team-a");
    assert_eq!(
        a["limits"],
        json!({
            "requests_per_minute": 60,
            "tokens_per_minute": 1000,
            "max_concurrent": 4,
            "budget": {"tokens": 500, "period": "day"},
        }),
        "{v}"
    );
    let u = &a["usage"];
    assert_eq!(u["requests_this_minute"], 2, "{v}");
    assert_eq!(u["tokens_this_minute"], 20, "{v}");
    assert_eq!(u["in_flight"], 0, "{v}");
    assert_eq!(u["budget_used"], 20, "{v}");
    assert!(u["budget_resets_at"].is_string(), "{v}");

    let b = entry(&v, "team-b");
    assert_eq!(b["limits"]["requests_per_minute"], 30, "{v}");
    for unset in ["tokens_per_minute", "max_concurrent", "budget"] {
        assert!(
            b["limits"][unset].is_null(),
            "team-b has no {unset}, yet: {v}"
        );
    }
    assert_eq!(b["usage"]["requests_this_minute"], 0, "{v}");

    let answers: Vec<&Resp> = seen.iter().collect();
    assert_no_key(&answers, &[&gw]);
}

// ---------------------------------------------------------------------------------------------
// Per-process limits (no `state:`)

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_state_tokens_per_minute_holds_on_one_gateway() {
    let mock = start_mock(MockConfig::openai("up", [MODEL])).await;
    let yaml = config(
        &mock,
        &[key(KEY_A, "team-a", &["tokens_per_minute: 1000"])],
        "",
    );
    let gw = Gateway::start(&yaml).await;
    assert_eq!(state_of(&gw.url).await, "local");

    let mut answers = Vec::new();
    for _ in 0..20 {
        answers.push(chat(&gw.url, KEY_A, WORDS_FOR_100).await);
    }
    let statuses: Vec<u16> = answers.iter().map(|r| r.status).collect();
    let ok = admitted_then_refused(&statuses);
    assert!((10..=11).contains(&ok), "{ok} admitted: {statuses:?}");
    for r in &answers[ok..] {
        assert_rate_limited(r);
        assert_eq!(header_u64(r, "x-ratelimit-remaining-tokens"), 0);
    }
    assert_eq!(answers[0].header("x-ratelimit-limit-tokens"), Some("1000"));
    let want = 100 * ok as u64;
    let seen = wait_usage(&gw.url, "team-a", "tokens_this_minute", |n| n == want).await;
    assert_eq!(seen, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_state_max_concurrent_holds_and_frees_on_drop_and_on_errors() {
    let mock =
        start_mock(MockConfig::openai("up", [MODEL]).with_sse(100, Duration::from_millis(100)))
            .await;
    let yaml = config(&mock, &[key(KEY_A, "team-a", &["max_concurrent: 2"])], "");
    let gw = Gateway::start(&yaml).await;
    assert_eq!(state_of(&gw.url).await, "local");

    // Error answers free their slots: 3 of them (one 5xx only, which never ejects the
    // endpoint), then both slots are free.
    for status in ["400", "500", "400"] {
        let r = Client::new()
            .request(
                "POST",
                &gw.at("/v1/chat/completions"),
                &[
                    ("authorization", &bearer(KEY_A)),
                    ("content-type", "application/json"),
                    ("x-mock-status", status),
                ],
                ReqBody::full(body(false, 5, false)),
            )
            .await;
        assert_eq!(r.status.to_string(), status, "{}", r.text());
    }
    assert_eq!(
        wait_usage(&gw.url, "team-a", "in_flight", |n| n == 0).await,
        0
    );

    let streams = futures::future::join_all((0..6).map(|_| open_stream(&gw.url, KEY_A))).await;
    let (mut open, refused): (Vec<_>, Vec<_>) = streams.into_iter().partition(|s| s.status == 200);
    assert_eq!(open.len(), 2, "admitted of 6 (max 2)");
    for s in refused {
        assert_rate_limited(&into_resp(s).await);
    }
    assert_eq!(usage_of(&gw.url, "team-a", "in_flight").await, 2);
    assert_eq!(mock.peak_in_flight(), 2);

    drop(open.remove(0));
    let t0 = Instant::now();
    let mut admitted = None;
    while admitted.is_none() && t0.elapsed() < Duration::from_secs(1) {
        let s = open_stream(&gw.url, KEY_A).await;
        if s.status == 200 {
            admitted = Some(s);
        } else {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert!(
        admitted.is_some(),
        "no slot freed within {:?} of a client dropping its stream",
        t0.elapsed()
    );
    assert_upstream_settles_at(&mock, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_state_a_monthly_budget_stops_the_key_until_the_first_of_next_month() {
    let mock = start_mock(MockConfig::openai("up", [MODEL])).await;
    let yaml = config(
        &mock,
        &[key(
            KEY_A,
            "team-a",
            &["budget: {tokens: 300, period: month}"],
        )],
        "",
    );
    let gw = Gateway::start(&yaml).await;
    let month_before = next_month();
    let mut statuses = Vec::new();
    let mut refused = Vec::new();
    for _ in 0..10 {
        let r = chat(&gw.url, KEY_A, WORDS_FOR_100).await;
        statuses.push(r.status);
        if r.status != 200 {
            refused.push(r);
        }
    }
    let ok = admitted_then_refused(&statuses);
    assert!((3..=4).contains(&ok), "{ok} admitted: {statuses:?}");
    for r in &refused {
        assert_out_of_budget(r);
    }
    let month_after = next_month();
    let used = wait_usage(&gw.url, "team-a", "budget_used", |n| n >= 300).await;
    assert_eq!(used, 100 * ok as u64);
    let v = keys_view(&gw.url).await;
    assert_eq!(v["state"], "local", "{v}");
    let team = entry(&v, "team-a");
    assert_eq!(
        team["limits"]["budget"],
        json!({"tokens": 300, "period": "month"})
    );
    let resets = team["usage"]["budget_resets_at"].as_str().unwrap_or("");
    assert!(
        resets == month_before || resets == month_after,
        "budget_resets_at {resets:?}, next month {month_after}: {v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_tokens_are_charged_from_the_usage_chunk_asked_for_or_forced() {
    let mock = start_mock(MockConfig::openai("up", [MODEL])).await;
    let keys = [key(KEY_A, "team-a", &["tokens_per_minute: 1000"])];
    let asked = Gateway::start(&config(&mock, &keys, "")).await;
    let forced = Gateway::start(&config(&mock, &keys, "stream_usage: force\n")).await;

    for (gw, include_usage) in [(&asked, true), (&forced, false)] {
        let mut s = Client::new()
            .post_stream(
                &gw.at("/v1/chat/completions"),
                body(true, WORDS_FOR_100, include_usage),
                &[("authorization", &bearer(KEY_A))],
            )
            .await;
        assert_eq!(s.status, 200);
        let events = sse_data(&s.read_to_end().await);
        assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
        let n = wait_usage(&gw.url, "team-a", "tokens_this_minute", |n| n == 100).await;
        assert_eq!(n, 100, "include_usage {include_usage}, on {}", gw.url);
    }
}

// ---------------------------------------------------------------------------------------------
// The OpenAI SDK

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_sdk_raises_rate_limit_errors_for_both_kinds_of_429() {
    let redis = RedisServer::start().await;
    let mock = start_mock(MockConfig::openai("up", [MODEL])).await;
    let yaml = config(
        &mock,
        &[
            key(KEY_A, "team-a", &["requests_per_minute: 2"]),
            key(KEY_B, "team-b", &["budget: {tokens: 250, period: day}"]),
        ],
        &state(&redis, &[]),
    );
    let gw = Gateway::start(&yaml).await;

    let script = r#"
import json, sys, openai
base, prompt = sys.argv[1], sys.argv[2]
def run(key, tries):
    client = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0)
    ok = 0
    for _ in range(tries):
        try:
            client.chat.completions.create(model="m", messages=[{"role": "user", "content": prompt}])
            ok += 1
        except openai.RateLimitError as e:
            print(json.dumps({"ok": ok, "status": e.status_code, "code": e.code, "type": e.type,
                              "retry_after": e.response.headers.get("retry-after")}))
            return
    print(json.dumps({"ok": ok, "status": None}))
run(sys.argv[3], 5)
run(sys.argv[4], 10)
"#;
    let prompt = vec!["word"; WORDS_FOR_100].join(" ");
    let (python, base) = (sdk_python(), gw.url.clone());
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python)
            .arg("-c")
            .arg(script)
            .args([base.as_str(), prompt.as_str(), KEY_A, KEY_B])
            .output()
    })
    .await
    .unwrap()
    .expect("run the SDK");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    assert_eq!(lines.len(), 2, "{stdout}");

    let rpm = &lines[0];
    assert_eq!(rpm["ok"], 2, "{rpm}");
    assert_eq!(rpm["status"], 429, "{rpm}");
    assert_eq!(rpm["code"], "rate_limit_exceeded", "{rpm}");
    let secs: u64 = rpm["retry_after"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("Retry-After: {rpm}"));
    assert!(secs >= 1, "{rpm}");

    let budget = &lines[1];
    let ok = budget["ok"].as_u64().unwrap_or(0);
    assert!((3..=4).contains(&ok), "{budget}");
    assert_eq!(budget["status"], 429, "{budget}");
    assert_eq!(budget["code"], "insufficient_quota", "{budget}");
    assert_eq!(budget["type"], "insufficient_quota", "{budget}");
}

// ---------------------------------------------------------------------------------------------
// The one-minute window's Lua, at chosen times

/// The window prelude with Redis's clock replaced by `sec` (seconds), then `body`: EVAL'd on a
/// real server, so that the minute can pass without waiting for it.
async fn window_at(redis: &RedisServer, sec: u64, body: &str) -> Reply {
    let prelude = include_str!("../src/state/scripts/window.lua")
        .replace("redis.call('TIME')", &format!("{{'{sec}', '0'}}"));
    assert!(
        prelude.contains(&format!("{{'{sec}', '0'}}")),
        "the prelude reads TIME"
    );
    let script = format!("{prelude}\n{body}");
    redis
        .cmd(&["EVAL", &script, "1", "w"])
        .await
        .expect("EVAL the window")
}

#[tokio::test]
async fn the_window_drops_the_seconds_that_left_it_and_keeps_the_rest() {
    let redis = RedisServer::start().await;
    let sum = |r: Reply| r.text().and_then(|t| t.parse::<i64>().ok()).unwrap_or(-1);
    let add =
        "window(KEYS[1], true) add(KEYS[1], tonumber(ARGV[1] or 1)) return window(KEYS[1], true)";
    let read = "return window(KEYS[1], false)";
    // 5 at t=1000, 3 at t=1030, 2 at t=1059: all in the minute at 1059.
    for (t, n) in [(1000, 5), (1030, 3), (1059, 2)] {
        let body = add.replace("ARGV[1] or 1", &n.to_string());
        window_at(&redis, t, &body).await;
    }
    assert_eq!(sum(window_at(&redis, 1059, read).await), 10);
    // At 1060 the first second has left (a window holds 60 seconds: 1001..=1060).
    assert_eq!(sum(window_at(&redis, 1060, read).await), 5);
    assert_eq!(
        sum(window_at(&redis, 1060, "return window(KEYS[1], true)").await),
        5
    );
    assert_eq!(sum(window_at(&redis, 1089, read).await), 5);
    assert_eq!(sum(window_at(&redis, 1090, read).await), 2);
    // Pruned: the stale seconds are gone from the hash, the live ones stay.
    window_at(&redis, 1090, "return window(KEYS[1], true)").await;
    let fields = redis.cmd(&["HKEYS", "w"]).await.unwrap().strings();
    assert!(!fields.contains(&"1000".to_string()) && !fields.contains(&"1030".to_string()));
    assert!(fields.contains(&"1059".to_string()), "{fields:?}");
    // Idle for over a minute past `from`: counted from scratch, nothing left.
    assert_eq!(sum(window_at(&redis, 1300, read).await), 0);
    // Counts added without a prune in between (an end's tokens) are in the sum all the same.
    window_at(&redis, 1301, "add(KEYS[1], 7) add(KEYS[1], 1) return 0").await;
    assert_eq!(sum(window_at(&redis, 1301, read).await), 8);
    assert_eq!(sum(window_at(&redis, 1361, read).await), 0);
}
