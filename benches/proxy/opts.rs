//! Command-line options of the proxy bench and the durations and sizes each mode implies.
//!
//! `cargo bench` passes `--bench` to a `harness = false` bench; `cargo test --benches` does
//! not. The bench only runs when it sees `--bench`, so a test run of all targets does not
//! start minutes of load by accident.

use std::time::Duration;

/// The systems the bench knows, in their default order.
pub const ALL_SYSTEMS: [&str; 7] = [
    "direct",
    "ai-proxy",
    "nginx",
    "ai-proxy-bare",
    "ai-proxy-auth",
    "ai-proxy-redis",
    "ai-proxy-messages",
];

/// Run only when asked for by name, to measure a feature's cost beside the default
/// `ai-proxy`: the gateway with metrics and access log off, and with client keys.
const OPT_IN: [&str; 4] = [
    "ai-proxy-bare",
    "ai-proxy-auth",
    "ai-proxy-redis",
    "ai-proxy-messages",
];

pub const USAGE: &str = "\
usage: cargo bench --bench proxy [-- OPTIONS]

  --quick            smoke run: short durations, 1,000 streams only (~40 s)
  --streams N[,M..]  concurrent stream counts to run (default 1000,10000)
  --stream-window N  streams connecting / awaiting their head at once (default: 3/4 of the
                     mock's listen backlog)
  --systems A[,B..]  subset of direct,ai-proxy,nginx,ai-proxy-bare,ai-proxy-auth,ai-proxy-redis,
                     ai-proxy-messages
                     (default: the first three; nginx only if on PATH; ai-proxy-bare = metrics
                     and access log off; ai-proxy-auth = 100 client keys, an allowlist and
                     per-process limits checked; ai-proxy-redis = the same limits shared in a
                     redis-server the bench starts; ai-proxy-messages = ai-proxy driven
                     through Anthropic's POST /v1/messages, translated to chat completions)
  --rounds N         run the latency and throughput points N times, the systems interleaved,
                     and report each value's median (default 1): for ratios within a few %
  --baseline PATH    also run the gateway binary at PATH (say, a release build of an earlier
                     commit) as system `baseline`, with ai-proxy's config: an A/B in one run
  --help             this text";

/// What to run and for how long.
#[derive(Clone, Debug)]
pub struct Opts {
    /// `--bench` was given (cargo bench); without it the bench does nothing.
    pub run: bool,
    pub quick: bool,
    /// Requests timed one after another at concurrency 1 (after `latency_warmup` untimed).
    pub latency_requests: usize,
    pub latency_warmup: usize,
    /// Untimed load before each fixed-duration point (connections, caches, pools).
    pub warmup: Duration,
    /// Timed window of the 1 KiB throughput points.
    pub small_duration: Duration,
    /// Timed window of the 256 KiB throughput points.
    pub large_duration: Duration,
    pub concurrencies: Vec<usize>,
    pub small_body: usize,
    pub large_body: usize,
    pub stream_counts: Vec<usize>,
    /// Content events per stream and the pause between them (asked of the mock per request).
    pub stream_events: usize,
    pub stream_interval: Duration,
    /// Stream ramp window: connections opened, and requests waiting for their head, at once.
    /// `None`: three quarters of the mock's listen backlog (see `net::stream_window`).
    pub stream_window: Option<usize>,
    /// Systems asked for on the command line (`None`: all that are available).
    pub systems: Option<Vec<String>>,
    /// Runs of each latency and throughput point per system, interleaved; medians reported.
    pub rounds: usize,
    /// `--baseline`: another gateway binary, run beside `ai-proxy` as system `baseline`.
    pub baseline: Option<std::path::PathBuf>,
}

impl Opts {
    fn full() -> Self {
        Opts {
            run: false,
            quick: false,
            latency_requests: 10_000,
            latency_warmup: 1_000,
            warmup: Duration::from_secs(1),
            small_duration: Duration::from_secs(5),
            large_duration: Duration::from_secs(3),
            concurrencies: vec![64, 256],
            small_body: 1024,
            large_body: 256 * 1024,
            stream_counts: vec![1_000, 10_000],
            stream_events: 32,
            stream_interval: Duration::from_millis(15),
            stream_window: None,
            systems: None,
            rounds: 1,
            baseline: None,
        }
    }

    fn quick() -> Self {
        Opts {
            quick: true,
            latency_requests: 2_000,
            latency_warmup: 200,
            warmup: Duration::from_millis(300),
            small_duration: Duration::from_secs(1),
            large_duration: Duration::from_secs(1),
            stream_counts: vec![1_000],
            ..Self::full()
        }
    }

    /// Parse the arguments after the program name. `Err` carries the message to print.
    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Opts, String> {
        let args: Vec<String> = args.into_iter().collect();
        let mut opts = if args.iter().any(|a| a == "--quick") {
            Self::quick()
        } else {
            Self::full()
        };
        let mut it = args.iter();
        // Bounded: each step consumes at least one argument.
        while let Some(arg) = it.next() {
            match arg.as_str() {
                "--bench" => opts.run = true,
                "--quick" => {}
                "--help" | "-h" => return Err(USAGE.to_string()),
                "--streams" => {
                    let v = it.next().ok_or("--streams needs a value")?;
                    opts.stream_counts = parse_counts(v)?;
                }
                "--stream-window" => {
                    let v = it.next().ok_or("--stream-window needs a value")?;
                    opts.stream_window = Some(parse_counts(v)?.first().copied().unwrap_or(1));
                }
                "--rounds" => {
                    let v = it.next().ok_or("--rounds needs a value")?;
                    opts.rounds = parse_counts(v)?.first().copied().unwrap_or(1);
                }
                "--baseline" => {
                    let v = it.next().ok_or("--baseline needs a path")?;
                    let path = std::path::PathBuf::from(v);
                    if !path.is_file() {
                        return Err(format!("--baseline: {v:?} is not a file"));
                    }
                    opts.baseline = Some(path);
                }
                "--systems" => {
                    let v = it.next().ok_or("--systems needs a value")?;
                    let names: Vec<String> = v.split(',').map(|s| s.trim().to_string()).collect();
                    if let Some(bad) = names.iter().find(|n| !ALL_SYSTEMS.contains(&n.as_str())) {
                        return Err(format!("unknown system {bad:?}\n{USAGE}"));
                    }
                    opts.systems = Some(names);
                }
                other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
            }
        }
        Ok(opts)
    }

    /// Whether `name` should run (before checking that it is available).
    pub fn wants(&self, name: &str) -> bool {
        self.systems
            .as_ref()
            .map_or(!OPT_IN.contains(&name), |s| s.iter().any(|n| n == name))
    }
}

fn parse_counts(v: &str) -> Result<Vec<usize>, String> {
    v.split(',')
        .map(|s| match s.trim().parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(format!("{s:?} is not a positive number")),
        })
        .collect()
}
