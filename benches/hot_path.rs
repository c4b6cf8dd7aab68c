//! Micro-benchmarks of the per-request work: reading `model` out of request bodies of typical
//! and long-prompt sizes, picking an upstream from a model's pool, and rewriting the request
//! header for the chosen endpoint.
//! Run: `cargo bench --bench hot_path`.

use std::sync::Arc;

use ai_proxy::balance::{Balancing, PolicyName};
use ai_proxy::deployment::{Deployment, DeploymentState};
use ai_proxy::endpoint::{ApiKey, Endpoint, EndpointKind};
use ai_proxy::openai::peek_model;
use ai_proxy::routes::Pool;
use ai_proxy::upstream::Upstream;
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use pingora::http::RequestHeader;

/// A chat request whose prompt makes it about `size` bytes, `model` last (as OpenAI SDKs send).
fn chat_body(size: usize) -> Vec<u8> {
    let content = "lorem ipsum ".repeat(size / 12);
    format!(
        r#"{{"messages":[{{"role":"system","content":"You are helpful."}},{{"role":"user","content":"{content}"}}],"temperature":0.2,"stream":true,"model":"meta-llama/Llama-3.3-70B-Instruct"}}"#
    )
    .into_bytes()
}

fn bench_peek(c: &mut Criterion) {
    let mut g = c.benchmark_group("peek_model");
    for size in [1 << 10, 64 << 10, 1 << 20] {
        let body = chat_body(size);
        g.throughput(Throughput::Bytes(body.len() as u64));
        g.bench_with_input(BenchmarkId::from_parameter(size), &body, |b, body| {
            b.iter(|| peek_model(black_box(body)).unwrap())
        });
    }
    g.finish();
}

fn bench_select(c: &mut Criterion) {
    let members: Vec<Deployment> = (0..4)
        .map(|i| {
            let port = 9000 + i as u16;
            let ep = Endpoint::new(
                &format!("http://127.0.0.1:{port}"),
                EndpointKind::Openai,
                None,
                None,
                None,
            )
            .unwrap();
            Deployment {
                upstream: Arc::new(Upstream::new(Arc::new(ep), ([127, 0, 0, 1], port).into())),
                state: Arc::new(DeploymentState::new(Default::default())),
                upstream_model: Arc::from("m"),
            }
        })
        .collect();
    for (name, policy) in [
        ("round_robin", PolicyName::RoundRobin),
        ("least_outstanding", PolicyName::LeastOutstanding),
    ] {
        let balancing = Balancing {
            default: policy,
            ..Balancing::default()
        };
        let pool = Pool::new("m", members.clone(), &balancing);
        c.bench_function(&format!("pool_select_4_{name}"), |b| {
            b.iter(|| pool.select(black_box(&[]), None).map(|d| d.upstream.id))
        });
        c.bench_function(&format!("pool_select_4_one_tried_{name}"), |b| {
            b.iter(|| pool.select(black_box(&[1]), None).map(|d| d.upstream.id))
        });
    }
}

fn bench_rewrite(c: &mut Criterion) {
    let key = Some(ApiKey::new("sk-upstream-key").unwrap());
    let openai = Endpoint::new(
        "http://10.0.0.5:8000",
        EndpointKind::Openai,
        None,
        key.clone(),
        None,
    )
    .unwrap();
    let ocf = Endpoint::new("http://10.0.0.6:8092", EndpointKind::Ocf, None, key, None).unwrap();
    let mut client = RequestHeader::build("POST", b"/v1/chat/completions", None).unwrap();
    for (k, v) in [
        ("host", "gateway.example:8000"),
        ("authorization", "Bearer client-key"),
        ("content-type", "application/json"),
        ("content-length", "1024"),
        ("user-agent", "OpenAI/Python 1.50.0"),
        ("accept", "application/json"),
    ] {
        client.insert_header(k, v).unwrap();
    }
    for (name, ep) in [("openai", &openai), ("ocf_path", &ocf)] {
        c.bench_function(&format!("rewrite_request_{name}"), |b| {
            b.iter_batched_ref(
                || client.clone(),
                |req| ep.rewrite_request(req).unwrap(),
                criterion::BatchSize::SmallInput,
            )
        });
    }
}

/// The request path's share of the access log and of token counting: one line formatted, and
/// the `usage` found in a chat completion answer.
fn bench_observability(c: &mut Criterion) {
    use ai_proxy::access_log::{format_line, Entry, Timestamp};
    use ai_proxy::usage::{find, Tokens};
    let mut line = Vec::with_capacity(512);
    c.bench_function("access_log_line", |b| {
        b.iter(|| {
            line.clear();
            let entry = Entry {
                time: Timestamp::now(),
                request_id: "a1b2c3d4e5f60718-2f",
                method: "POST",
                path: "/v1/chat/completions",
                key: Some("team-a"),
                model: Some("meta-llama/Llama-3.3-70B-Instruct"),
                endpoint: Some("vllm-a"),
                status: 200,
                attempts: 1,
                retries: &[],
                ttfb: Some(std::time::Duration::from_micros(12_345)),
                duration: Some(std::time::Duration::from_micros(812_500)),
                bytes_in: 1024,
                bytes_out: 2210,
                tokens: Some(Tokens {
                    prompt: 120,
                    completion: 380,
                }),
                error: None,
            };
            format_line(black_box(&entry), &mut line);
            line.len()
        })
    });
    let answer = br#"{"id":"chatcmpl-1","object":"chat.completion","created":1764162309,"model":"meta-llama/Llama-3.3-70B-Instruct","choices":[{"index":0,"message":{"role":"assistant","content":"Hello! How can I help you today? I can answer questions, write code, or explain things."},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":21,"total_tokens":33,"prompt_tokens_details":{"cached_tokens":0}},"system_fingerprint":"fp_1"}"#;
    c.bench_function("usage_find_chat_answer", |b| {
        b.iter(|| find(black_box(answer)))
    });
}

/// What access control adds to a request: find the key among 100 (SHA-256 and a lookup),
/// check its glob allowlist and count it against its per-process limits (taken and released).
fn bench_auth(c: &mut Criterion) {
    use ai_proxy::auth::{Auth, AuthConfig};
    let limiter = std::sync::Arc::new(ai_proxy::state::Limiter::default());
    let mut yaml = String::from("keys:\n");
    for i in 0..100 {
        yaml.push_str(&format!(
            "  - key: sk-client-key-{i:04}-5e2b7c9d10a3\n    models: [\"team-{i}-*\", \"gpt-4o-mini\"]\n    requests_per_minute: 1000000000\n"
        ));
    }
    let config: AuthConfig = serde_yaml::from_str(&yaml).expect("auth yaml");
    let auth = Auth::from_config(config, &[("UNUSED", "")]).expect("auth config");
    let mut headers = http::HeaderMap::new();
    headers.insert(
        http::header::AUTHORIZATION,
        "Bearer sk-client-key-0042-5e2b7c9d10a3".parse().unwrap(),
    );
    c.bench_function("auth_client_check", |b| {
        b.iter(|| {
            let at = auth.client(black_box(&headers)).unwrap().unwrap();
            let client = auth.key(at).unwrap();
            let key = client.limited().unwrap();
            // The local limiter never waits: its future is ready at once.
            drop(futures::executor::block_on(limiter.admit(key)).unwrap());
            client.allows(black_box("team-42-llama-3-8b"))
        })
    });
}

/// The Anthropic frontend's share of a request: a ~1 KiB Messages request translated to the
/// chat body of one attempt, and one streamed chat chunk (a text delta) translated to its
/// Anthropic event.
fn bench_anthropic(c: &mut Criterion) {
    use ai_proxy::frontends::anthropic::{ChatRequest, StreamTranslator};
    let prompt = "lorem ipsum ".repeat(56);
    let request = format!(
        r#"{{"model":"claude-sonnet-4-5","max_tokens":1024,"system":[{{"type":"text","text":"You are a helpful assistant."}}],"messages":[{{"role":"user","content":"Hi!"}},{{"role":"assistant","content":"Hello! How can I help?"}},{{"role":"user","content":[{{"type":"text","text":"{prompt}"}}]}}],"temperature":0.2,"stream":true}}"#
    );
    c.bench_function("anthropic_request_1k", |b| {
        b.iter(|| {
            let req = ChatRequest::from_messages(black_box(request.as_bytes())).unwrap();
            req.body(black_box("m"))
        })
    });
    let reply = ChatRequest::from_messages(request.as_bytes())
        .unwrap()
        .reply();
    let chunk = b"data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1764162309,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" world\"},\"logprobs\":null,\"finish_reason\":null}]}\n\n";
    let mut stream = StreamTranslator::new(reply);
    let mut out = bytes::BytesMut::with_capacity(4096);
    // The first chunk also starts the message and its text block: measure the steady state.
    stream.push(chunk, &mut out);
    c.bench_function("anthropic_stream_chunk", |b| {
        b.iter(|| {
            out.clear();
            stream.push(black_box(chunk), &mut out);
            out.len()
        })
    });
}

criterion_group!(
    benches,
    bench_peek,
    bench_select,
    bench_rewrite,
    bench_observability,
    bench_auth,
    bench_anthropic
);
criterion_main!(benches);
