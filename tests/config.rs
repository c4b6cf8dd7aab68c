//! Configuration through the real binary: the legacy environment modes, `PORT` / `TIMEOUT`
//! overrides, bad config files (clear one-line errors, no panics), `--check-config`, `--help`,
//! and a listen port that is already taken.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

/// A bad config must be rejected at least this fast.
const FAST_EXIT: Duration = Duration::from_secs(5);

/// Send a chat request for `model` and check the named mock answered it.
async fn chat_ok(gw: &Gateway, model: &str, mock_name: &str) {
    let r = post_chat(gw, model, &[]).await;
    assert_eq!(r.status, 200, "{model}: {}", r.text());
    assert_eq!(r.header("x-mock-name"), Some(mock_name), "{model}");
}

fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Run the gateway to completion, timing it.
fn run_timed(args: &[&str], envs: &[(&str, &str)]) -> (Output, Duration) {
    let t0 = Instant::now();
    let out = run_gateway_cmd(args, envs);
    (out, t0.elapsed())
}

/// A rejected start: non-zero exit within [`FAST_EXIT`], exactly one line on stderr that
/// contains every `needles` entry, and no panic.
fn assert_rejected(what: &str, out: &Output, took: Duration, needles: &[&str]) {
    let err = stderr_of(out);
    assert!(
        !out.status.success(),
        "{what}: exit status {} (want non-zero)\nstderr: {err}",
        out.status
    );
    assert!(
        took < FAST_EXIT,
        "{what}: took {took:?} to exit\nstderr: {err}"
    );
    assert!(!err.contains("panicked"), "{what}: panicked:\n{err}");
    assert!(
        !stdout_of(out).contains("panicked"),
        "{what}: panicked (stdout)"
    );
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines.len(),
        1,
        "{what}: want one line on stderr, got:\n{err}"
    );
    for n in needles {
        assert!(
            lines[0].contains(n),
            "{what}: stderr should mention {n:?}: {err}"
        );
    }
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write config file");
    p
}

/// Whether anything accepts TCP on 127.0.0.1:port.
async fn accepts(port: u16) -> bool {
    tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_ok()
}

/// Local addresses (hex, as in /proc/net/tcp) of the IPv4 sockets listening on `port`;
/// `None` when /proc/net/tcp is not readable.
fn listening_ipv4_addrs(port: u16) -> Option<Vec<String>> {
    let text = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let want = format!("{port:04X}");
    Some(
        text.lines()
            .skip(1)
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                let (addr, p) = f.get(1)?.split_once(':')?;
                (p == want && f.get(3) == Some(&"0A")).then(|| addr.to_string())
            })
            .collect(),
    )
}

// ---------------------------------------------------------------------------------------------
// Legacy environment modes
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn env_endpoints_json_object_gives_each_endpoint_its_key() {
    let m1 = start_mock(MockConfig::openai("up-1", ["model-1"])).await;
    let m2 = start_mock(MockConfig::openai("up-2", ["model-2"])).await;
    let endpoints_env = json!({ m1.url(): "key-1", m2.url(): "key-2" }).to_string();
    let gw = Gateway::start_env(&[("ENDPOINTS", &endpoints_env)]).await;

    assert_eq!(model_ids(&gw).await, ["model-1", "model-2"]);
    let eps = endpoints(&gw).await;
    assert_eq!(eps.len(), 2, "{eps:?}");
    assert!(eps
        .iter()
        .all(|e| e["type"] == "openai" && e["has_api_key"] == true));

    chat_ok(&gw, "model-1", "up-1").await;
    chat_ok(&gw, "model-2", "up-2").await;
    for (mock, key) in [(&m1, "Bearer key-1"), (&m2, "Bearer key-2")] {
        let auths = auth_headers(mock);
        assert!(auths.len() >= 2, "discovery + chat reached {}", mock.name());
        assert!(
            auths.iter().all(|a| a.as_deref() == Some(key)),
            "{} must only see {key:?}: {auths:?}",
            mock.name()
        );
        assert!(mock
            .requests()
            .iter()
            .any(|r| r.path == "/v1/chat/completions"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn env_endpoints_list_shares_api_key() {
    let m1 = start_mock(MockConfig::openai("up-1", ["model-1"])).await;
    let m2 = start_mock(MockConfig::openai("up-2", ["model-2"])).await;
    let list = format!("{},{}", m1.url(), m2.url());
    let gw = Gateway::start_env(&[("ENDPOINTS", &list), ("API_KEY", "sk-shared-key")]).await;

    assert_eq!(model_ids(&gw).await, ["model-1", "model-2"]);
    assert_eq!(endpoints(&gw).await.len(), 2);
    chat_ok(&gw, "model-1", "up-1").await;
    chat_ok(&gw, "model-2", "up-2").await;
    for mock in [&m1, &m2] {
        let auths = auth_headers(mock);
        assert!(auths.len() >= 2, "discovery + chat reached {}", mock.name());
        assert!(
            auths
                .iter()
                .all(|a| a.as_deref() == Some("Bearer sk-shared-key")),
            "{}: {auths:?}",
            mock.name()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn env_target_openai_url_is_the_single_endpoint() {
    let mock = start_mock(MockConfig::openai("target", ["target-model"])).await;
    let gw = Gateway::start_env(&[
        ("TARGET_OPENAI_URL", &mock.url()),
        ("API_KEY", "sk-target-key"),
    ])
    .await;

    let eps = endpoints(&gw).await;
    assert_eq!(eps.len(), 1, "{eps:?}");
    assert_eq!(eps[0]["url"], mock.url().as_str());
    assert_eq!(eps[0]["type"], "openai");
    assert_eq!(eps[0]["discovery"]["status"], "ok");
    assert_eq!(model_ids(&gw).await, ["target-model"]);
    chat_ok(&gw, "target-model", "target").await;
    let auths = auth_headers(&mock);
    assert!(
        auths
            .iter()
            .all(|a| a.as_deref() == Some("Bearer sk-target-key")),
        "{auths:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn env_timeout_gives_504_on_a_slow_upstream() {
    let mock = start_mock(MockConfig::openai("slow", ["slow-model"])).await;
    let gw = Gateway::start_env(&[("TARGET_OPENAI_URL", &mock.url()), ("TIMEOUT", "1")]).await;

    // Well inside the timeout: fine.
    let r = post_chat(&gw, "slow-model", &[("x-mock-delay-ms", "100")]).await;
    assert_eq!(r.status, 200, "{}", r.text());

    let t0 = Instant::now();
    let r = post_chat(&gw, "slow-model", &[("x-mock-delay-ms", "3000")]).await;
    let took = t0.elapsed();
    assert_eq!(r.status, 504, "{}", r.text());
    let v = r.json();
    assert_eq!(v["error"]["code"], "upstream_timeout", "{v}");
    assert_eq!(v["error"]["type"], "api_error", "{v}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(2900),
        "504 after {took:?} (TIMEOUT=1, upstream delay 3 s)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn env_port_is_honoured() {
    let mock = start_mock(MockConfig::openai("up", ["m"])).await;
    let port = free_port();
    let port_s = port.to_string();
    let gw = Gateway::start_env(&[("TARGET_OPENAI_URL", &mock.url()), ("PORT", &port_s)]).await;
    assert_eq!(gw.port, port);
    let r = get(&format!("http://127.0.0.1:{port}/health")).await;
    assert_eq!(r.status, 200);
    assert_eq!(model_ids(&gw).await, ["m"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_env_overrides_yaml_listen_port_and_keeps_host() {
    let mock = start_mock(MockConfig::openai("up", ["m"])).await;
    let yaml_port = free_port();
    let env_port = free_port();
    assert_ne!(yaml_port, env_port);
    let yaml = format!(
        "listen: \"127.0.0.1:{yaml_port}\"\nendpoints:\n  - url: {}\n",
        mock.url()
    );
    let gw = Gateway::builder()
        .port(env_port)
        .env("PORT", &env_port.to_string())
        .config(yaml.clone())
        .start()
        .await;
    assert_eq!(get(&gw.at("/health")).await.status, 200);
    assert_eq!(model_ids(&gw).await, ["m"]);
    assert!(
        !accepts(yaml_port).await,
        "the YAML port {yaml_port} must not be used when PORT is set"
    );
    // The host of `listen` is kept: it listens on 127.0.0.1 only, not on every address.
    if let Some(addrs) = listening_ipv4_addrs(env_port) {
        assert!(!addrs.is_empty(), "nothing listens on {env_port}");
        assert!(
            addrs.iter().all(|a| a == "0100007F"),
            "listening on {addrs:?}, want only 127.0.0.1"
        );
    }
    // --check-config shows the effective address too.
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "c.yaml", &yaml);
    let out = run_gateway_cmd(
        &["--check-config", path.to_str().unwrap()],
        &[("PORT", &env_port.to_string())],
    );
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(
        stdout_of(&out).contains(&format!("127.0.0.1:{env_port}")),
        "{}",
        stdout_of(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_env_overrides_yaml_timeout() {
    let mock = start_mock(MockConfig::openai("slow", ["slow-model"])).await;
    let gw = Gateway::builder()
        .config(format!(
            "listen: \"127.0.0.1:{{port}}\"\ntimeout_secs: 30\nendpoints:\n  - url: {}\n",
            mock.url()
        ))
        .env("TIMEOUT", "1")
        .start()
        .await;
    let t0 = Instant::now();
    let r = post_chat(&gw, "slow-model", &[("x-mock-delay-ms", "3000")]).await;
    assert_eq!(r.status, 504, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "upstream_timeout");
    assert!(
        t0.elapsed() < Duration::from_millis(2900),
        "{:?}",
        t0.elapsed()
    );
}

// ---------------------------------------------------------------------------------------------
// Bad configuration, --check-config, --help
// ---------------------------------------------------------------------------------------------

/// (file name, YAML, what stderr must mention)
const BAD_FILES: &[(&str, &str, &[&str])] = &[
    (
        "unknown-key.yaml",
        "listne: \"127.0.0.1:8000\"\n",
        &["listne"],
    ),
    (
        "unknown-endpoint-key.yaml",
        "endpoints:\n  - url: http://127.0.0.1:1\n    tyep: ocf\n",
        &["tyep", "endpoints[0]"],
    ),
    ("wrong-type.yaml", "timeout_secs: soon\n", &["timeout_secs"]),
    (
        "zero-timeout.yaml",
        "timeout_secs: 0\n",
        &["timeout_secs"],
    ),
    ("bad-listen.yaml", "listen: nowhere\n", &["listen"]),
    (
        "ftp-url.yaml",
        "endpoints:\n  - url: ftp://x\n",
        &["endpoints[0].url", "ftp"],
    ),
    (
        "not-a-url.yaml",
        "endpoints:\n  - url: not a url\n",
        &["endpoints[0].url"],
    ),
    (
        "credentials-in-url.yaml",
        "endpoints:\n  - url: http://user:hunter2@127.0.0.1:1\n",
        &["endpoints[0].url"],
    ),
    (
        "unknown-type.yaml",
        "endpoints:\n  - url: http://127.0.0.1:1\n    type: grpc\n",
        &["endpoints[0].type", "grpc"],
    ),
    (
        "duplicate-names.yaml",
        "endpoints:\n  - url: http://127.0.0.1:1\n    name: twin\n  - url: http://127.0.0.1:2\n    name: twin\n",
        &["endpoints[1].name", "twin"],
    ),
    (
        "duplicate-urls.yaml",
        "endpoints:\n  - url: http://127.0.0.1:1\n  - url: http://127.0.0.1:1/\n",
        &["duplicate"],
    ),
    (
        "unset-key-env.yaml",
        "endpoints:\n  - url: http://127.0.0.1:1\n    api_key_env: AI_PROXY_TEST_SURELY_UNSET\n",
        &["endpoints[0].api_key_env", "AI_PROXY_TEST_SURELY_UNSET"],
    ),
    (
        "missing-ca-file.yaml",
        "endpoints:\n  - url: https://127.0.0.1:1\n    ca_file: /nonexistent/ai-proxy-ca.pem\n",
        &["endpoints[0].ca_file", "/nonexistent/ai-proxy-ca.pem"],
    ),
    (
        "yaml-syntax.yaml",
        "endpoints: [\n",
        &["line"],
    ),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_config_files_are_rejected_with_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    for (name, yaml, needles) in BAD_FILES {
        let path = write(dir.path(), name, yaml);
        let path_s = path.to_str().unwrap();
        let mut needles = needles.to_vec();
        needles.push(path_s);

        let (out, took) = run_timed(&["--config", path_s], &[]);
        assert_rejected(&format!("--config {name}"), &out, took, &needles);
        let (out, took) = run_timed(&["--check-config", path_s], &[]);
        assert_rejected(&format!("--check-config {name}"), &out, took, &needles);
    }
    // Secrets in a rejected URL are not echoed.
    let path = dir.path().join("credentials-in-url.yaml");
    let out = run_gateway_cmd(&["--check-config", path.to_str().unwrap()], &[]);
    assert!(!stderr_of(&out).contains("hunter2"), "{}", stderr_of(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_ca_file_contents_are_rejected_without_panic() {
    let dir = tempfile::tempdir().unwrap();
    let not_pem = write(dir.path(), "not-pem.pem", "hello\n");
    let bad_der = write(
        dir.path(),
        "bad-der.pem",
        "-----BEGIN CERTIFICATE-----\nAAAABBBBCCCC\n-----END CERTIFICATE-----\n",
    );
    for ca in [&not_pem, &bad_der] {
        let yaml = format!(
            "endpoints:\n  - url: https://127.0.0.1:1\n    ca_file: {}\n",
            ca.display()
        );
        let path = write(dir.path(), "ca.yaml", &yaml);
        let path_s = path.to_str().unwrap();
        let ca_s = ca.to_str().unwrap();
        let (out, took) = run_timed(&["--config", path_s], &[]);
        assert_rejected(
            &format!("ca_file {ca_s}"),
            &out,
            took,
            &["endpoints[0].ca_file", ca_s],
        );
        let (out, took) = run_timed(&["--check-config", path_s], &[]);
        assert_rejected(
            &format!("--check-config ca_file {ca_s}"),
            &out,
            took,
            &["endpoints[0].ca_file"],
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_api_key_names_the_api_key_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "bad-key.yaml",
        "endpoints:\n  - url: http://127.0.0.1:1\n    api_key: \"sk-bad\\nkey\"\n",
    );
    let path_s = path.to_str().unwrap();
    let (out, took) = run_timed(&["--check-config", path_s], &[]);
    assert_rejected("bad api_key", &out, took, &["endpoints[0].api_key"]);
    assert!(!stderr_of(&out).contains("sk-bad"), "{}", stderr_of(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_config_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("does-not-exist.yaml");
    let path_s = path.to_str().unwrap();
    for flag in ["--config", "--check-config"] {
        let (out, took) = run_timed(&[flag, path_s], &[]);
        assert_rejected(&format!("{flag} missing file"), &out, took, &[path_s]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_environment_is_rejected_with_one_clear_line() {
    let dead = format!("http://127.0.0.1:{}", free_port());
    let cases: &[(&[(&str, &str)], &str)] = &[
        (&[("ENDPOINTS", "{bad json")], "ENDPOINTS"),
        (&[("ENDPOINTS", "ftp://127.0.0.1:1")], "ENDPOINTS"),
        (
            &[("ENDPOINTS", r#"{"http://127.0.0.1:1": 5}"#)],
            "ENDPOINTS",
        ),
        (&[("TARGET_OPENAI_URL", &dead), ("PORT", "http")], "PORT"),
        (
            &[("TARGET_OPENAI_URL", &dead), ("TIMEOUT", "soon")],
            "TIMEOUT",
        ),
    ];
    for (envs, needle) in cases {
        let (out, took) = run_timed(&[], envs);
        assert_rejected(&format!("env {envs:?}"), &out, took, &[needle]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn help_mentions_the_options() {
    let (out, took) = run_timed(&["--help"], &[]);
    assert!(out.status.success(), "{}", out.status);
    assert!(took < FAST_EXIT);
    let text = stdout_of(&out);
    assert!(text.contains("--config"), "{text}");
    assert!(text.contains("--check-config"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_in_use_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dead = format!("http://127.0.0.1:{}", free_port());
    let dir = tempfile::tempdir().unwrap();

    // From the YAML `listen`.
    let path = write(
        dir.path(),
        "taken.yaml",
        &format!("listen: \"127.0.0.1:{port}\"\nendpoints:\n  - url: {dead}\n"),
    );
    let (out, took) = run_timed(&["--config", path.to_str().unwrap()], &[]);
    assert_rejected(
        "listen on a taken port",
        &out,
        took,
        &[&format!("127.0.0.1:{port}")],
    );
    assert!(
        stderr_of(&out).to_lowercase().contains("in use"),
        "{}",
        stderr_of(&out)
    );

    // From env PORT (legacy mode, default host 0.0.0.0 overlaps 127.0.0.1).
    let port_s = port.to_string();
    let (out, took) = run_timed(&[], &[("PORT", &port_s), ("TARGET_OPENAI_URL", &dead)]);
    assert_rejected("PORT on a taken port", &out, took, &[&port_s]);
    drop(taken);
}
