//! Runs the `ai-proxy` binary as a child process for integration tests: temp dir, config file, captured log, readiness wait, cleanup.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::client::Client;
use super::free_port;
use ai_proxy_mock::MockServer;

/// Path of the gateway binary built by cargo for this test run.
pub const GATEWAY_BIN: &str = env!("CARGO_BIN_EXE_ai-proxy");

/// How long `start*` waits for the first discovery round (see [`Gateway::wait_ready_on`]).
pub const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// Bound on `run_gateway_cmd` and `Gateway::wait_exit`.
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(30);

const POLL_EVERY: Duration = Duration::from_millis(20);

/// Variables passed through from the test environment; everything else is cleared so the
/// gateway only sees what a test sets (unless `inherit_env(true)`).
const PASS_ENV: &[&str] = &[
    "PATH",
    "HOME",
    "TMPDIR",
    "LANG",
    "LLVM_PROFILE_FILE",
    "CARGO_LLVM_COV",
];

fn base_command(cwd: &Path, inherit: bool, hosts: Option<&Path>) -> Command {
    let mut cmd = match hosts {
        None => Command::new(GATEWAY_BIN),
        Some(hosts) => in_mount_namespace_with_hosts(hosts),
    };
    cmd.current_dir(cwd);
    if !inherit {
        cmd.env_clear();
        for k in PASS_ENV {
            if let Some(v) = std::env::var_os(k) {
                cmd.env(k, v);
            }
        }
    }
    cmd.env("RUST_LOG", "info").env("RUST_BACKTRACE", "1");
    cmd
}

/// A command that runs the gateway in its own mount namespace, with `hosts` bind-mounted over
/// `/etc/hosts`: the test decides what names resolve to, for the gateway alone. `unshare`
/// execs (no fork), so the child's PID is the gateway's. As root a mount namespace is enough;
/// otherwise a user namespace maps the user to root inside it.
fn in_mount_namespace_with_hosts(hosts: &Path) -> Command {
    let as_root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    let mut cmd = Command::new("unshare");
    if !as_root {
        cmd.args(["--user", "--map-root-user"]);
    }
    cmd.args([
        "--mount",
        "sh",
        "-c",
        r#"mount --bind "$0" /etc/hosts && exec "$@""#,
    ])
    .arg(hosts)
    .arg(GATEWAY_BIN);
    cmd
}

/// Options for starting a gateway; finish with [`GatewayBuilder::start`].
pub struct GatewayBuilder {
    config: Option<String>,
    envs: Vec<(String, String)>,
    args: Vec<String>,
    port: Option<u16>,
    ready_path: Option<String>,
    ready_timeout: Duration,
    inherit_env: bool,
    hosts_file: Option<PathBuf>,
    open_files: Option<u64>,
}

impl GatewayBuilder {
    /// Start the gateway with this open-files limit (soft and hard, so that the gateway's own
    /// raise to the hard limit keeps it).
    pub fn open_files(mut self, limit: u64) -> Self {
        self.open_files = Some(limit);
        self
    }

    /// Resolve names through this file instead of `/etc/hosts` (see
    /// [`in_mount_namespace_with_hosts`]); edit it in place (not by rename) to change what a
    /// name resolves to while the gateway runs.
    pub fn hosts_file(mut self, path: &Path) -> Self {
        self.hosts_file = Some(path.to_path_buf());
        self
    }

    /// Config YAML; every `{port}` is replaced with the gateway's port. Passed as `--config <file>`.
    pub fn config(mut self, yaml: impl Into<String>) -> Self {
        self.config = Some(yaml.into());
        self
    }

    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.envs.push((k.to_string(), v.to_string()));
        self
    }

    pub fn arg(mut self, a: &str) -> Self {
        self.args.push(a.to_string());
        self
    }

    /// Use this port instead of a free one.
    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// Wait for 200 on this path instead of `/ready` (e.g. `/health`).
    pub fn ready_path(mut self, path: &str) -> Self {
        self.ready_path = Some(path.to_string());
        self
    }

    /// Do not wait for readiness at all.
    pub fn no_wait(mut self) -> Self {
        self.ready_path = None;
        self
    }

    pub fn ready_timeout(mut self, t: Duration) -> Self {
        self.ready_timeout = t;
        self
    }

    /// Keep the test process environment (default: cleared except PATH, HOME, ...).
    pub fn inherit_env(mut self, inherit: bool) -> Self {
        self.inherit_env = inherit;
        self
    }

    /// Spawn the gateway and wait until it is ready; panics (with the gateway log) on failure.
    pub async fn start(self) -> Gateway {
        let port = self.port.unwrap_or_else(free_port);
        let dir = tempfile::Builder::new()
            .prefix("ai-proxy-test-")
            .tempdir()
            .expect("create temp dir");
        let log_path = dir.path().join("gateway.log");
        let log = File::create(&log_path).expect("create gateway.log");
        let mut cmd = base_command(dir.path(), self.inherit_env, self.hosts_file.as_deref());
        let config_path = self.config.map(|yaml| {
            let path = dir.path().join("config.yaml");
            std::fs::write(&path, yaml.replace("{port}", &port.to_string()))
                .expect("write config.yaml");
            cmd.arg("--config").arg(&path);
            path
        });
        if config_path.is_none() && !self.envs.iter().any(|(k, _)| k == "PORT") {
            cmd.env("PORT", port.to_string());
        }
        cmd.args(&self.args);
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        let port = match self.envs.iter().find(|(k, _)| k == "PORT") {
            Some((_, v)) if config_path.is_none() => v.parse().expect("PORT must be a number"),
            _ => port,
        };
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log);
        if let Some(limit) = self.open_files {
            use std::os::unix::process::CommandExt;
            let lim = libc::rlimit {
                rlim_cur: limit,
                rlim_max: limit,
            };
            // SAFETY: setrlimit is async-signal-safe and only reads `lim`, copied into the
            // closure; lowering a limit needs no privilege.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {GATEWAY_BIN}: {e}"));
        let mut gw = Gateway {
            port,
            url: format!("http://127.0.0.1:{port}"),
            child,
            dir,
            log_path,
            config_path,
            exit_status: None,
        };
        if let Some(path) = self.ready_path {
            gw.wait_ready_on(&path, self.ready_timeout).await;
        }
        gw
    }
}

/// A running gateway process. Dropping it kills the process; if the test is panicking, the
/// gateway log is printed to stderr first.
pub struct Gateway {
    pub port: u16,
    /// `http://127.0.0.1:PORT`
    pub url: String,
    child: Child,
    dir: TempDir,
    log_path: PathBuf,
    config_path: Option<PathBuf>,
    exit_status: Option<ExitStatus>,
}

impl Gateway {
    pub fn builder() -> GatewayBuilder {
        GatewayBuilder {
            config: None,
            envs: Vec::new(),
            args: Vec::new(),
            port: None,
            ready_path: Some("/ready".to_string()),
            ready_timeout: READY_TIMEOUT,
            inherit_env: false,
            hosts_file: None,
            open_files: None,
        }
    }

    /// Start with this config YAML (`{port}` is replaced by a free port) and wait for `/ready`.
    pub async fn start(yaml: &str) -> Gateway {
        Self::builder().config(yaml).start().await
    }

    /// Start with the YAML built from a free port and wait for `/ready`.
    pub async fn start_with(yaml: impl FnOnce(u16) -> String) -> Gateway {
        let port = free_port();
        Self::builder().port(port).config(yaml(port)).start().await
    }

    /// Start without a config file, with these env vars (`PORT` is set to a free port unless
    /// given), and wait for `/ready`.
    pub async fn start_env(envs: &[(&str, &str)]) -> Gateway {
        let mut b = Self::builder();
        for (k, v) in envs {
            b = b.env(k, v);
        }
        b.start().await
    }

    /// Start in front of `mocks` (each an endpoint named as the mock), with `extra` top-level
    /// YAML, and wait until every mock's models are discovered.
    pub async fn over(mocks: &[&MockServer], extra: &str) -> Gateway {
        let mut yaml = format!("listen: \"127.0.0.1:{{port}}\"\nthreads: 2\n{extra}\nendpoints:\n");
        for m in mocks {
            yaml.push_str(&format!("  - url: {}\n    name: {}\n", m.url(), m.name()));
        }
        let gw = Self::start(&yaml).await;
        for m in mocks {
            super::api::wait_discovered(&gw, m.name()).await;
        }
        gw
    }

    /// `url` + `path`.
    pub fn at(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// Everything the gateway wrote to stdout and stderr so far.
    pub fn logs(&self) -> String {
        std::fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The temp dir used as the gateway's working directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The config file (when started with one); rewrite it to test reloads.
    pub fn config_path(&self) -> Option<&Path> {
        self.config_path.as_deref()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status if the process has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.exit_status.is_none() {
            self.exit_status = self.child.try_wait().ok().flatten();
        }
        self.exit_status
    }

    /// Send a signal by name (`TERM`, `INT`, `HUP`, `QUIT`, ...) to the gateway's PID.
    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{sig} {} failed", self.child.id());
    }

    /// Wait (bounded by `timeout`) for the process to exit.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_wait() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
    }

    /// Poll `GET /ready` until 200 (bounded by [`READY_TIMEOUT`]).
    pub async fn wait_ready(&mut self) {
        self.wait_ready_on("/ready", READY_TIMEOUT).await
    }

    /// Poll `GET path` until 200; panics with the log if the process exits or time runs out.
    /// On `/ready`, a 503 `no_models` also ends the wait: the first discovery round is done,
    /// and a test of a gateway that finds nothing to route starts from there.
    pub async fn wait_ready_on(&mut self, path: &str, timeout: Duration) {
        let url = self.at(path);
        let client = Client::new().timeout(Duration::from_secs(2));
        let deadline = Instant::now() + timeout;
        let mut last = String::from("no attempt");
        loop {
            if let Some(status) = self.try_wait() {
                panic!(
                    "gateway exited ({status}) before {path} answered 200; last: {last}\n--- gateway log ---\n{}",
                    self.logs()
                );
            }
            match client.try_get(&url).await {
                Ok(r) if r.status == 200 => return,
                Ok(r) if path == "/ready" && r.text().contains(r#""no_models""#) => return,
                Ok(r) => last = format!("status {} {}", r.status, r.text()),
                Err(e) => last = e,
            }
            if Instant::now() >= deadline {
                panic!(
                    "gateway not ready on {url} after {timeout:?}; last: {last}\n--- gateway log ---\n{}",
                    self.logs()
                );
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
    }

    /// Kill the process now (also done on drop).
    pub fn kill(&mut self) {
        if self.try_wait().is_none() {
            let _ = self.child.kill();
            self.exit_status = self.child.wait().ok();
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "--- gateway log ({}) ---\n{}",
                self.log_path.display(),
                self.logs()
            );
        }
    }
}

/// Run the gateway binary to completion (e.g. `--check-config`) with these args and env vars, in
/// a fresh temp dir and a cleared environment. Bounded by [`EXIT_TIMEOUT`] (panics if exceeded).
pub fn run_gateway_cmd(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let dir = tempfile::Builder::new()
        .prefix("ai-proxy-cmd-")
        .tempdir()
        .expect("create temp dir");
    let out_path = dir.path().join("stdout.log");
    let err_path = dir.path().join("stderr.log");
    let mut cmd = base_command(dir.path(), false, None);
    cmd.args(args)
        .envs(envs.iter().copied())
        .stdin(Stdio::null())
        .stdout(File::create(&out_path).expect("create stdout.log"))
        .stderr(File::create(&err_path).expect("create stderr.log"));
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot spawn {GATEWAY_BIN}: {e}"));
    let deadline = Instant::now() + EXIT_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(POLL_EVERY),
            Ok(None) | Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "gateway {args:?} did not exit within {EXIT_TIMEOUT:?}\nstdout:\n{}\nstderr:\n{}",
                    std::fs::read_to_string(&out_path).unwrap_or_default(),
                    std::fs::read_to_string(&err_path).unwrap_or_default()
                );
            }
        }
    };
    Output {
        status,
        stdout: std::fs::read(&out_path).unwrap_or_default(),
        stderr: std::fs::read(&err_path).unwrap_or_default(),
    }
}
