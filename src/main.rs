//! The `ai-proxy` command: parse the CLI, load and validate the config, run the gateway.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use ai_proxy::config::{Config, EnvFile, ProcessEnv, Source};
use clap::Parser;

/// jemalloc instead of glibc malloc: Pingora allocates per request and per chunk, and glibc's
/// per-thread arenas cost CPU and keep freed memory (see README, Performance).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc settings, read at its start: hand freed pages back to the OS after 1 s instead of
/// 10 s, from jemalloc's own background thread. Without that thread, pages are only returned
/// when the process allocates again, so a gateway that goes quiet after a burst of streams
/// kept their memory resident (73 MiB instead of 21 MiB after 1,000 streams in the bench).
#[export_name = "_rjem_malloc_conf"]
pub static MALLOC_CONF: &[u8] = b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

/// An OpenAI-compatible AI gateway: routes each request by its `model` to a healthy endpoint
/// (OpenAI-compatible servers and OCF networks), discovering models in the background.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// YAML config file. Default: conf/ai-proxy.yaml when it exists, else the environment
    /// (ENDPOINTS, API_KEY, TARGET_OPENAI_URL). Env PORT and TIMEOUT override the file.
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,

    /// Validate FILE, print a summary, and exit 0, or 1 with the problem. A YAML file is read
    /// with the current environment; a `.env` file (KEY=VALUE lines, as `docker run
    /// --env-file` takes) is checked as the environment of an env-only gateway.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["config", "upgrade"])]
    check_config: Option<PathBuf>,

    /// Zero-downtime upgrade: take the listening sockets over from the running gateway (at
    /// `upgrade_sock`) once it gets SIGQUIT, instead of binding them. See README, Operations.
    #[arg(long, short = 'u')]
    upgrade: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();

    if let Some(path) = cli.check_config {
        return match check_config(&path) {
            Ok(c) => {
                println!("{}: OK, {}", path.display(), summary(&c));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("ai-proxy: invalid config: {e}");
                ExitCode::FAILURE
            }
        };
    }

    let loaded = match &cli.config {
        Some(path) => Config::from_file(path, &ProcessEnv),
        None => Config::load_default(&ProcessEnv),
    };
    let config = match loaded {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ai-proxy: invalid config: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Pingora panics when it cannot bind; say why plainly instead. (An upgrade takes over the
    // running gateway's bound socket.)
    if cli.upgrade {
        log::info!(
            "upgrade: waiting for the running gateway's sockets on {}",
            config.upgrade_sock.display()
        );
    } else if let Err(e) = std::net::TcpListener::bind(config.listen) {
        eprintln!("ai-proxy: cannot listen on {}: {e}", config.listen);
        return ExitCode::FAILURE;
    }
    if let Err(e) = ai_proxy::access_log::start(&config.access_log) {
        eprintln!(
            "ai-proxy: access_log: cannot open {:?}: {e}",
            config.access_log
        );
        return ExitCode::FAILURE;
    }
    if !config.auth.requires_client_key() && !config.listen.ip().is_loopback() {
        log::warn!(
            "no client keys (auth.keys or AI_PROXY_KEYS) while listening on {}: anyone who \
             reaches this port can use every upstream key; see README, Access control",
            config.listen
        );
    }
    raise_open_file_limit();
    log::info!(
        "ai-proxy {} starting: {}",
        env!("CARGO_PKG_VERSION"),
        summary(&config)
    );
    ai_proxy::run(config, cli.upgrade);
    ExitCode::SUCCESS
}

/// `--check-config`: a YAML file, or a `.env` file read as the whole environment.
fn check_config(path: &Path) -> Result<Config, String> {
    if path.extension().is_some_and(|e| e == "env") {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let vars = EnvFile::parse(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        return Config::from_env(&vars).map_err(|e| format!("{}: {e}", path.display()));
    }
    Config::from_file(path, &ProcessEnv)
}

/// Every proxied request holds two sockets (client and upstream), so the usual soft limit of
/// 1024 open files caps the gateway near 500 concurrent streams. Raise the soft limit to the
/// hard one, as nginx's `worker_rlimit_nofile` would.
fn raise_open_file_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain libc calls on a stack value of the type they expect.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 || lim.rlim_cur >= lim.rlim_max {
            return;
        }
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
            log::info!(
                "open-file limit raised from {} to {}",
                lim.rlim_cur,
                lim.rlim_max
            );
        }
    }
}

fn summary(c: &Config) -> String {
    let from = match &c.source {
        Source::Yaml(p) => format!("endpoints from {}", p.display()),
        Source::Env => "endpoints from the environment".to_string(),
    };
    let endpoints: Vec<String> = c
        .endpoints
        .iter()
        .map(|e| format!("{} ({} {})", e.name, e.kind.as_str(), e.url))
        .collect();
    format!(
        "listen {}, {from}: {}; timeout {} s, discovery every {} s, max body {} bytes, {} threads; {}",
        c.listen,
        endpoints.join(", "),
        c.timeout.as_secs(),
        c.discovery_interval.as_secs(),
        c.max_body_bytes,
        c.threads,
        c.auth.summary()
    )
}
