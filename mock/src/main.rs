//! `ai-proxy-mock`: runs the bundled mock upstream (OpenAI-compatible server or OCF head) as a standalone process.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use ai_proxy_mock::{MockConfig, MockServer, MockTls};
use clap::{Parser, ValueEnum};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Kind {
    Openai,
    Ocf,
}

/// Mock OpenAI-compatible / OCF upstream for ai-proxy tests and benches.
#[derive(Debug, Parser)]
#[command(
    name = "ai-proxy-mock",
    version,
    about = "Mock OpenAI-compatible / OCF upstream for ai-proxy tests and benches"
)]
struct Cli {
    /// Address to listen on (loopback only is recommended).
    #[arg(long, default_value = "127.0.0.1:9101")]
    listen: SocketAddr,
    /// Upstream kind to imitate.
    #[arg(long, value_enum, default_value = "openai")]
    kind: Kind,
    /// Name returned in the x-mock-name response header (default: mock-<kind>).
    #[arg(long)]
    name: Option<String>,
    /// Comma-separated model ids (default: mock-gpt,mock-embed for openai; mock-ocf-llm for ocf).
    #[arg(long, value_delimiter = ',')]
    models: Option<Vec<String>>,
    /// OCF: serve this file verbatim at GET /v1/dnt/table.
    #[arg(long)]
    dnt_table: Option<PathBuf>,
    /// Content events per stream.
    #[arg(long, default_value_t = 5)]
    sse_events: usize,
    /// Pause between stream events, in milliseconds.
    #[arg(long, default_value_t = 0)]
    sse_interval_ms: u64,
    /// Delay before response headers, in milliseconds.
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    /// PEM certificate chain: serve HTTPS.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Keep every request in memory (only useful in-process; grows without bound).
    #[arg(long)]
    record: bool,
}

fn config(cli: Cli) -> Result<MockConfig, String> {
    let (mut cfg, default_models): (MockConfig, &[&str]) = match cli.kind {
        Kind::Openai => (
            MockConfig::openai("mock-openai", Vec::<String>::new()),
            &["mock-gpt", "mock-embed"],
        ),
        Kind::Ocf => (
            MockConfig::ocf("mock-ocf", Vec::<String>::new()),
            &["mock-ocf-llm"],
        ),
    };
    if let Some(name) = cli.name {
        cfg.name = name;
    }
    cfg.models = match cli.models {
        Some(m) => m
            .into_iter()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect(),
        None => default_models.iter().map(|s| s.to_string()).collect(),
    };
    if let Some(path) = cli.dnt_table {
        let bytes = std::fs::read(&path)
            .map_err(|e| format!("cannot read --dnt-table {}: {e}", path.display()))?;
        cfg.dnt_table = Some(bytes.into());
    }
    if let (Some(cert), Some(key)) = (cli.tls_cert, cli.tls_key) {
        cfg.tls = Some(MockTls::from_files(&cert, &key).map_err(|e| {
            format!(
                "cannot read --tls-cert {} / --tls-key {}: {e}",
                cert.display(),
                key.display()
            )
        })?);
    }
    cfg.sse_events = cli.sse_events;
    cfg.sse_interval = Duration::from_millis(cli.sse_interval_ms);
    cfg.response_delay = Duration::from_millis(cli.delay_ms);
    cfg.record = cli.record;
    Ok(cfg)
}

async fn wait_for_signal() -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r,
        _ = term.recv() => Ok(()),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    let listen = cli.listen;
    let cfg = match config(cli) {
        Ok(c) => c,
        Err(e) => {
            log::error!("{e}");
            return ExitCode::from(2);
        }
    };
    let kind = cfg.kind.as_str();
    let models = cfg.models.join(",");
    let server = match MockServer::start_on(cfg, listen).await {
        Ok(s) => s,
        Err(e) => {
            log::error!("cannot start the mock on {listen}: {e}");
            return ExitCode::FAILURE;
        }
    };
    log::info!(
        "ai-proxy-mock ({kind}) listening on {}, models: {models}",
        server.url()
    );
    let res = wait_for_signal().await;
    server.shutdown().await;
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("signal handling failed: {e}");
            ExitCode::FAILURE
        }
    }
}
