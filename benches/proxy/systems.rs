//! The systems under test, started once per run: the mock upstream (its own process), and in
//! front of it nothing (`direct`), the gateway (`ai-proxy`) or the reference (`nginx`).

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::client::Api;
use crate::machine::{self, Machine};
use crate::nginx::{self, NginxConf};
use crate::opts::Opts;
use crate::process::{self, Proc, Stop};
use crate::procstat;

/// The model the mock serves and every request asks for.
pub const MODEL: &str = "mock-gpt";
/// The client key the load generator sends, and one of `ai-proxy-auth`'s keys.
pub const CLIENT_KEY_HEADER: &str = "Bearer sk-bench-client-7d2f9a41c6e08b35";
/// Client keys `ai-proxy-auth` holds besides the bench's: a realistic key table.
const OTHER_KEYS: usize = 99;

const READY_WITHIN: Duration = Duration::from_secs(30);

/// One way to reach the mock: directly or through a proxy.
pub struct System {
    pub name: &'static str,
    pub addr: SocketAddr,
    /// The proxy's process (`None` for `direct`).
    proc: Option<Proc>,
    /// Every PID of the proxy (nginx: master and workers), for CPU and RSS.
    pids: Vec<u32>,
    /// The client API its requests use.
    pub api: Api,
}

impl System {
    pub fn is_proxy(&self) -> bool {
        self.proc.is_some()
    }

    pub fn pids(&self) -> &[u32] {
        &self.pids
    }

    /// `Err` when the proxy process has died.
    pub fn check_alive(&mut self) -> Result<(), String> {
        self.proc.as_mut().map_or(Ok(()), Proc::check_alive)
    }

    pub fn proc(&self) -> Option<&Proc> {
        self.proc.as_ref()
    }
}

/// Everything the bench started. Fields drop in order: proxies, then the mock, then the
/// temp dir (configs and logs).
pub struct Lab {
    pub systems: Vec<System>,
    /// `ai-proxy-redis`'s shared state: kept running (and stopped on drop) with the proxies.
    _redis: Option<Proc>,
    pub mock: Proc,
    pub mock_addr: SocketAddr,
    pub nginx_version: Option<String>,
    /// Things the report should say about the setup (e.g. nginx skipped).
    pub notes: Vec<String>,
    dir: tempfile::TempDir,
}

/// The `ai-proxy-mock` binary, built now if need be: it is another package of the workspace,
/// so cargo does not build it for this bench, but its artifacts go to the same directory as
/// the gateway's.
fn mock_binary() -> Result<std::path::PathBuf, String> {
    let gateway = Path::new(env!("CARGO_BIN_EXE_ai-proxy"));
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let profile_dir = gateway
        .parent()
        .ok_or("the gateway binary has no directory")?;
    let mut build = Command::new(cargo);
    // As a default member (no `--package`), with the features of `cargo build --bins`: the
    // binary that build made is reused.
    build.args(["build", "--quiet", "--bin", "ai-proxy-mock"]);
    if profile_dir.ends_with("release") {
        build.arg("--release");
    }
    let status = build
        .status()
        .map_err(|e| format!("cannot run cargo build for ai-proxy-mock: {e}"))?;
    if !status.success() {
        return Err(format!("cargo build of ai-proxy-mock failed: {status}"));
    }
    Ok(profile_dir.join("ai-proxy-mock"))
}

impl Lab {
    pub fn start(opts: &Opts, m: &Machine) -> Result<Lab, String> {
        let dir = tempfile::Builder::new()
            .prefix("ai-proxy-bench-")
            .tempdir()
            .map_err(|e| format!("temp dir: {e}"))?;
        let mut notes = Vec::new();

        let mock_addr = local(process::free_port()?);
        let mut cmd = Command::new(mock_binary()?);
        cmd.arg("--listen")
            .arg(mock_addr.to_string())
            .arg("--models")
            .arg(MODEL)
            .env("RUST_LOG", "warn");
        let mut mock = Proc::spawn(
            "ai-proxy-mock",
            cmd,
            &dir.path().join("mock.log"),
            Stop::Kill,
        )?;
        process::wait_ready(&mut mock, mock_addr, "/health", READY_WITHIN)?;

        let mut systems = Vec::new();
        if opts.wants("direct") {
            systems.push(System {
                name: "direct",
                addr: mock_addr,
                proc: None,
                pids: Vec::new(),
                api: Api::Chat,
            });
        }
        let redis = if opts.wants("ai-proxy-redis") {
            Some(start_redis(dir.path())?)
        } else {
            None
        };
        let gateway = Path::new(env!("CARGO_BIN_EXE_ai-proxy"));
        let baseline = opts.baseline.as_deref();
        let gateways = [
            (opts.wants("ai-proxy"), Observability::On, gateway),
            (
                baseline.is_some(),
                Observability::Baseline,
                baseline.unwrap_or(gateway),
            ),
            (opts.wants("ai-proxy-bare"), Observability::Off, gateway),
            (opts.wants("ai-proxy-auth"), Observability::Auth, gateway),
            (
                opts.wants("ai-proxy-messages"),
                Observability::Messages,
                gateway,
            ),
        ];
        let shared = redis
            .as_ref()
            .map(|(_, addr)| (Observability::Redis(*addr), gateway));
        let gateways = gateways
            .into_iter()
            .chain(shared.map(|(obs, bin)| (true, obs, bin)));
        for (wanted, obs, bin) in gateways {
            if wanted {
                let mut system = start_gateway(dir.path(), mock_addr, obs, bin)?;
                // The shared limits' cost is the gateway's CPU and memory plus its Redis's.
                if let (Observability::Redis(_), Some((redis, _))) = (obs, &redis) {
                    system.pids.push(redis.pid());
                }
                systems.push(system);
            }
        }
        let mut nginx_version = None;
        if opts.wants("nginx") {
            match nginx::find() {
                Some(bin) => {
                    nginx_version = nginx::version(&bin);
                    systems.push(start_nginx(&bin, dir.path(), mock_addr, m)?);
                }
                None => notes.push("nginx is not on PATH: no reference column.".to_string()),
            }
        }
        Ok(Lab {
            systems,
            _redis: redis.map(|(proc, _)| proc),
            mock,
            mock_addr,
            nginx_version,
            notes,
            dir,
        })
    }

    /// Where configs and logs are (kept only while the bench runs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Metrics and access log at their defaults (on, the log to stdout: a file the bench keeps),
/// the same for another binary (`--baseline`) or with client keys (`ai-proxy-auth`), or both
/// off (`ai-proxy-bare`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Observability {
    On,
    Baseline,
    Auth,
    /// As `Auth`, the limits shared in the Redis at this address.
    Redis(SocketAddr),
    Off,
    /// As `On`, driven through Anthropic's Messages API (translated to chat completions).
    Messages,
}

/// `ai-proxy-auth`'s `auth:` section: 100 keys, the bench's with a model allowlist (a glob)
/// and every kind of limit far above what the bench sends, so every check runs and none
/// refuses.
fn auth_section() -> String {
    let key = CLIENT_KEY_HEADER.trim_start_matches("Bearer ");
    let mut yaml = format!(
        "auth:\n  admin_key: sk-bench-admin\n  keys:\n    - key: {key}\n      name: bench\n      \
         models: [\"mock-*\", \"other-model\"]\n      requests_per_minute: 1000000000\n      \
         tokens_per_minute: 1000000000000\n      max_concurrent: 1000000\n      \
         budget: {{tokens: 1000000000000000, period: month}}\n"
    );
    for i in 0..OTHER_KEYS {
        yaml.push_str(&format!(
            "    - key: sk-bench-other-{i:04}\n      name: other-{i}\n      models: [\"team-{i}-*\"]\n"
        ));
    }
    yaml
}

fn start_gateway(
    dir: &Path,
    mock: SocketAddr,
    obs: Observability,
    bin: &Path,
) -> Result<System, String> {
    let addr = local(process::free_port()?);
    let (name, extra) = match obs {
        Observability::On => ("ai-proxy", String::new()),
        Observability::Messages => ("ai-proxy-messages", String::new()),
        Observability::Baseline => ("baseline", String::new()),
        Observability::Auth => ("ai-proxy-auth", auth_section()),
        Observability::Redis(redis) => (
            "ai-proxy-redis",
            format!(
                "state:\n  redis_url: \"redis://{redis}/\"\n  timeout_ms: 200\n{}",
                auth_section()
            ),
        ),
        Observability::Off => (
            "ai-proxy-bare",
            "metrics: false\naccess_log: \"off\"\n".to_string(),
        ),
    };
    let yaml = format!(
        "# generated by benches/proxy.rs; everything else at its default (threads = cores)\n\
         listen: \"{addr}\"\n{extra}\
         endpoints:\n  - url: http://{mock}\n    type: openai\n    name: mock\n"
    );
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, yaml).map_err(|e| format!("write {}: {e}", path.display()))?;
    let mut cmd = Command::new(bin);
    // The shipped default log level, whatever the caller's environment says.
    cmd.arg("--config").arg(&path).env("RUST_LOG", "info");
    let log = dir.join(format!("{name}.log"));
    let mut proc = Proc::spawn(name, cmd, &log, Stop::Kill)?;
    // /ready: the first discovery round is done, so the model is routable.
    process::wait_ready(&mut proc, addr, "/ready", READY_WITHIN)?;
    Ok(System {
        name,
        addr,
        pids: vec![proc.pid()],
        proc: Some(proc),
        api: if obs == Observability::Messages {
            Api::Messages
        } else {
            Api::Chat
        },
    })
}

/// A `redis-server` of its own on a free loopback port, nothing saved, ready once it answers
/// `PING`.
fn start_redis(dir: &Path) -> Result<(Proc, SocketAddr), String> {
    use std::io::{Read, Write};
    let addr = local(process::free_port()?);
    let mut cmd = Command::new("redis-server");
    cmd.args(["--bind", "127.0.0.1", "--port"])
        .arg(addr.port().to_string())
        .args(["--save", "", "--appendonly", "no", "--dir"])
        .arg(dir);
    let mut proc = Proc::spawn("redis-server", cmd, &dir.join("redis.log"), Stop::Kill)?;
    let deadline = Instant::now() + READY_WITHIN;
    // Bounded by the deadline; each turn a connection attempt.
    loop {
        proc.check_alive()?;
        let pong = std::net::TcpStream::connect(addr).ok().and_then(|mut s| {
            s.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
            s.write_all(b"PING\r\n").ok()?;
            let mut buf = [0u8; 7];
            s.read_exact(&mut buf).ok()?;
            Some(&buf == b"+PONG\r\n")
        });
        if pong == Some(true) {
            return Ok((proc, addr));
        }
        if Instant::now() > deadline {
            return Err(format!(
                "redis-server did not answer on {addr} (is it installed? scripts/install-deps.sh)"
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn start_nginx(bin: &Path, dir: &Path, mock: SocketAddr, m: &Machine) -> Result<System, String> {
    let addr = local(process::free_port()?);
    let ndir = dir.join("nginx");
    std::fs::create_dir_all(&ndir).map_err(|e| format!("mkdir {}: {e}", ndir.display()))?;
    // SAFETY: geteuid has no preconditions.
    let as_root = unsafe { libc::geteuid() } == 0;
    let conf = NginxConf {
        dir: &ndir,
        listen: addr,
        upstream: mock,
        workers: m.cores,
        worker_connections: m.nofile.0,
        backlog: machine::somaxconn().unwrap_or(4096),
        as_root,
    };
    let path = ndir.join("nginx.conf");
    std::fs::write(&path, conf.render()).map_err(|e| format!("write {}: {e}", path.display()))?;
    let mut cmd = Command::new(bin);
    cmd.arg("-p")
        .arg(&ndir)
        .arg("-c")
        .arg(&path)
        // Errors to stderr, i.e. the process log the bench reads back.
        .arg("-e")
        .arg("stderr");
    let mut proc = Proc::spawn("nginx", cmd, &dir.join("nginx.log"), Stop::TermTree)?;
    process::wait_ready(&mut proc, addr, "/health", READY_WITHIN)?;
    // Workers fork right after start; wait (bounded) until all are there for CPU and RSS.
    let start = Instant::now();
    let mut workers = procstat::children(proc.pid());
    while workers.len() < m.cores && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
        workers = procstat::children(proc.pid());
    }
    let mut pids = vec![proc.pid()];
    pids.extend(workers);
    Ok(System {
        name: "nginx",
        addr,
        pids,
        api: Api::Chat,
        proc: Some(proc),
    })
}
