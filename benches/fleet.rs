//! Fleet simulation of the balancing policies, on loopback: `cargo bench --bench fleet`.
//!
//! One gateway (the release binary) in front of mock model servers started in this process.
//! Every mock serves one model per policy, and `balancing.models` maps each model to its
//! policy, so the policies run one after another against the same fleet, side by side in one
//! run. Two scenarios:
//!
//! Every mock serves at most `SLOTS` requests at once, as a model server works on one batch;
//! more wait for a slot, so a server sent more than it can take answers later.
//!
//! - (a) **slow endpoint**: three endpoints, one three times slower (60 ms vs 20 ms to the
//!   response head); closed-loop clients, each request a new conversation.
//! - (b) **prefix cache**: four endpoints that answer fast (30 ms) when they saw the
//!   conversation's start among their last 16, slowly (300 ms) otherwise, as a server with a
//!   KV prefix cache; clients run multi-turn conversations, turn after turn.
//!
//! It prints p50/p99 latency and time to first byte per policy, and stops by itself; the
//! gateway is stopped by PID (and killed by the kernel if the bench dies).

// The proxy bench's process handling; this bench uses only part of it.
#[allow(dead_code)]
#[path = "proxy/process.rs"]
mod process;
#[allow(dead_code)]
#[path = "proxy/procstat.rs"]
mod procstat;

use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ai_proxy_mock::{MockConfig, MockServer, PrefixCache};
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use process::{Proc, Stop};
use serde_json::json;

const POLICIES: [&str; 4] = [
    "round_robin",
    "least_outstanding",
    "latency",
    "prefix_affinity",
];
/// Clients sending at once.
const CLIENTS: usize = 24;
/// Requests each model server works on at once (its batch); more wait for a slot.
const SLOTS: usize = 4;
/// Scenario (a): the slow endpoint's name.
const SLOW_ENDPOINT: &str = "a2";
/// Scenario (a): requests per policy, each a one-turn conversation.
const SLOW_REQUESTS: usize = 1_200;
/// Scenario (b): conversations per policy, and turns in each.
const CONVERSATIONS: usize = 96;
const TURNS: usize = 5;

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("fleet bench: skipped (run it with `cargo bench --bench fleet`)");
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Err(e) = rt.block_on(run()) {
        eprintln!("fleet bench failed: {e}");
        std::process::exit(1);
    }
}

async fn run() -> Result<(), String> {
    let started = Instant::now();
    let fast = Duration::from_millis(20);
    let slow_fleet = [fast, fast, fast * 3];
    let mut mocks = Vec::new();
    for (i, delay) in slow_fleet.iter().enumerate() {
        let cfg = MockConfig::openai(format!("a{i}"), models("a")).with_record(false);
        let cfg = cfg.with_delay(*delay).with_max_concurrency(SLOTS);
        mocks.push(start(cfg).await?);
    }
    let cache = PrefixCache {
        hit: Duration::from_millis(30),
        miss: Duration::from_millis(300),
        capacity: 16,
    };
    for i in 0..4 {
        let cfg = MockConfig::openai(format!("b{i}"), models("b")).with_record(false);
        let cfg = cfg.with_prefix_cache(cache).with_max_concurrency(SLOTS);
        mocks.push(start(cfg).await?);
    }
    let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
    let (_gateway, addr) = start_gateway(&mocks, dir.path())?;

    println!("\n## Fleet simulation (`cargo bench --bench fleet`)\n");
    println!(
        "(a) three endpoints, one three times slower (60 ms vs 20 ms to the response head), each \
         serving {SLOTS} requests at once; {CLIENTS} clients, {SLOW_REQUESTS} requests per \
         policy, each a new conversation\n"
    );
    println!("| policy | latency p50 | latency p99 | TTFB p50 | TTFB p99 | on the slow endpoint |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    for policy in POLICIES {
        let r = drive(addr, &format!("a-{policy}"), SLOW_REQUESTS, 1).await?;
        println!(
            "| {policy} | {} | {} | {} | {} | {:.1}% |",
            ms(r.latency.value_at_quantile(0.5)),
            ms(r.latency.value_at_quantile(0.99)),
            ms(r.ttfb.value_at_quantile(0.5)),
            ms(r.ttfb.value_at_quantile(0.99)),
            100.0 * r.on_slow as f64 / r.latency.len() as f64
        );
    }

    println!(
        "\n(b) four endpoints with a prefix cache (30 ms to the head for a conversation start \
         seen among its last 16, else 300 ms), each serving {SLOTS} requests at once; \
         {CLIENTS} clients, {CONVERSATIONS} conversations of {TURNS} turns per policy\n"
    );
    println!("| policy | TTFB mean | TTFB p50 | TTFB p99 | latency p99 | cache hits |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    for policy in POLICIES {
        let r = drive(addr, &format!("b-{policy}"), CONVERSATIONS, TURNS).await?;
        let hits = r
            .ttfb
            .iter_recorded()
            .filter(|v| v.value_iterated_to() < 150_000);
        let hits: u64 = hits.map(|v| v.count_at_value()).sum();
        println!(
            "| {policy} | {} | {} | {} | {} | {:.0}% |",
            ms(r.ttfb.mean() as u64),
            ms(r.ttfb.value_at_quantile(0.5)),
            ms(r.ttfb.value_at_quantile(0.99)),
            ms(r.latency.value_at_quantile(0.99)),
            100.0 * hits as f64 / r.ttfb.len() as f64
        );
    }
    println!("\ndone in {:.0} s", started.elapsed().as_secs_f64());
    drop(mocks);
    Ok(())
}

/// One model per policy, named `<scenario>-<policy>`.
fn models(scenario: &str) -> Vec<String> {
    POLICIES.iter().map(|p| format!("{scenario}-{p}")).collect()
}

async fn start(cfg: MockConfig) -> Result<MockServer, String> {
    MockServer::start(cfg)
        .await
        .map_err(|e| format!("mock: {e}"))
}

fn start_gateway(
    mocks: &[MockServer],
    dir: &std::path::Path,
) -> Result<(Proc, SocketAddr), String> {
    let port = process::free_port()?;
    let mut yaml = format!(
        "listen: \"127.0.0.1:{port}\"\naccess_log: \"off\"\nbalancing:\n  policy: round_robin\n  models:\n"
    );
    for scenario in ["a", "b"] {
        for p in POLICIES {
            yaml.push_str(&format!("    {scenario}-{p}: {p}\n"));
        }
    }
    yaml.push_str("endpoints:\n");
    for m in mocks {
        yaml.push_str(&format!("  - url: {}\n    name: {}\n", m.url(), m.name()));
    }
    let config = dir.join("fleet.yaml");
    std::fs::write(&config, yaml).map_err(|e| format!("write {}: {e}", config.display()))?;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ai-proxy"));
    cmd.arg("--config").arg(&config).env("RUST_LOG", "warn");
    let mut proc = Proc::spawn("ai-proxy", cmd, &dir.join("gateway.log"), Stop::Kill)?;
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    process::wait_ready(&mut proc, addr, "/ready", Duration::from_secs(20))?;
    Ok((proc, addr))
}

/// Latency and TTFB in microseconds, and how many requests the slow endpoint served.
struct Results {
    latency: Histogram<u64>,
    ttfb: Histogram<u64>,
    on_slow: u64,
}

impl Results {
    fn new() -> Results {
        let h = || Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid bounds");
        Results {
            latency: h(),
            ttfb: h(),
            on_slow: 0,
        }
    }

    fn add(&mut self, other: &Results) {
        let _ = self.latency.add(&other.latency);
        let _ = self.ttfb.add(&other.ttfb);
        self.on_slow += other.on_slow;
    }
}

fn ms(micros: u64) -> String {
    format!("{:.1} ms", micros as f64 / 1e3)
}

type Sender = http1::SendRequest<Full<Bytes>>;

async fn connect(addr: SocketAddr) -> Result<Sender, String> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// One chat request: (latency, TTFB, the endpoint that served it).
async fn chat(sender: &mut Sender, body: String) -> Result<(Duration, Duration, String), String> {
    let req = hyper::Request::post("/v1/chat/completions")
        .header("host", "localhost")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    sender
        .ready()
        .await
        .map_err(|e| format!("connection: {e}"))?;
    let t = Instant::now();
    let resp = tokio::time::timeout(Duration::from_secs(30), sender.send_request(req))
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| format!("request: {e}"))?;
    let ttfb = t.elapsed();
    let status = resp.status();
    let endpoint = resp
        .headers()
        .get("x-ai-proxy-endpoint")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    resp.into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?;
    if status != hyper::StatusCode::OK {
        return Err(format!("status {status}"));
    }
    Ok((t.elapsed(), ttfb, endpoint))
}

/// A chat body for turn `turn` of conversation `c`: the opening question, then the turns.
fn turn_body(model: &str, c: usize, turn: usize) -> String {
    let mut messages = vec![
        json!({"role": "system", "content": "You are a helpful assistant."}),
        json!({"role": "user", "content": format!("Conversation {c}: explain something.")}),
    ];
    for t in 0..turn {
        messages.push(json!({"role": "assistant", "content": format!("Answer {t}.")}));
        messages.push(json!({"role": "user", "content": "Tell me more."}));
    }
    json!({"model": model, "messages": messages}).to_string()
}

/// `CLIENTS` clients run `conversations` conversations of `turns` turns for `model`: each
/// client takes the next conversation and sends its turns one after another.
async fn drive(
    addr: SocketAddr,
    model: &str,
    conversations: usize,
    turns: usize,
) -> Result<Results, String> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let (next, model) = (next.clone(), model.to_string());
        clients.push(tokio::spawn(async move {
            let mut sender = connect(addr).await?;
            let mut r = Results::new();
            // Bounded: each conversation is taken once.
            loop {
                let c = next.fetch_add(1, Ordering::Relaxed);
                if c >= conversations {
                    break;
                }
                for turn in 0..turns {
                    let (latency, ttfb, endpoint) =
                        chat(&mut sender, turn_body(&model, c, turn)).await?;
                    r.latency.saturating_record(latency.as_micros() as u64);
                    r.ttfb.saturating_record(ttfb.as_micros() as u64);
                    r.on_slow += u64::from(endpoint == SLOW_ENDPOINT);
                }
            }
            Ok::<_, String>(r)
        }));
    }
    join(clients).await
}

async fn join(
    clients: Vec<tokio::task::JoinHandle<Result<Results, String>>>,
) -> Result<Results, String> {
    let mut all = Results::new();
    for c in clients {
        let r = c.await.map_err(|e| format!("client task: {e}"))??;
        all.add(&r);
    }
    Ok(all)
}
