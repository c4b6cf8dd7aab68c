//! Load bench of the gateway against a direct path and nginx, on loopback, in one run:
//! `cargo bench --bench proxy` (or `-- --quick` for a smoke run). See benches/README.md.
//!
//! It starts the mock upstream (`ai-proxy-mock`), the gateway (`ai-proxy`) and, when `nginx` is
//! on PATH, nginx, each as its own process; drives them with its own tokio + hyper load
//! generator; prints a markdown table and writes it to `target/bench-proxy.md`. Every process
//! it starts is stopped by PID when the run ends, panics or fails.

// A bench target's root resolves `mod x;` next to itself (benches/x.rs); the modules live
// in benches/proxy/ so they do not look like benches of their own.
#[path = "proxy/checks.rs"]
mod checks;
#[path = "proxy/client.rs"]
mod client;
#[path = "proxy/latency.rs"]
mod latency;
#[path = "proxy/machine.rs"]
mod machine;
#[path = "proxy/net.rs"]
mod net;
#[path = "proxy/nginx.rs"]
mod nginx;
#[path = "proxy/opts.rs"]
mod opts;
#[path = "proxy/process.rs"]
mod process;
#[path = "proxy/procstat.rs"]
mod procstat;
#[path = "proxy/report.rs"]
mod report;
#[path = "proxy/results.rs"]
mod results;
#[path = "proxy/stats.rs"]
mod stats;
#[path = "proxy/streams.rs"]
mod streams;
#[path = "proxy/systems.rs"]
mod systems;
#[path = "proxy/throughput.rs"]
mod throughput;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use client::Pace;
use machine::Machine;
use opts::Opts;
use results::{Load, SystemResults};
use systems::Lab;
use tokio::runtime::Runtime;

/// Pause between two systems' runs of a point, so one's teardown does not overlap the next.
const BETWEEN_RUNS: Duration = Duration::from_millis(300);
/// Longer pause before stream points: thousands of connections are closing.
const BETWEEN_STREAM_RUNS: Duration = Duration::from_secs(1);
/// CPU use by others before the run above which the report warns.
const BUSY_BEFORE: f64 = 0.15;
/// Settle time before reading "RSS after load": past the gateway's 4 s upstream idle timeout,
/// so pooled connections left by the last point have closed.
const SETTLE: Duration = Duration::from_secs(6);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{}", opts::USAGE);
        return ExitCode::SUCCESS;
    }
    let opts = match Opts::parse(args) {
        Ok(o) => o,
        Err(msg) => {
            eprintln!("{msg}");
            return ExitCode::from(2);
        }
    };
    if !opts.run {
        // `cargo test --benches` runs bench binaries without `--bench`: do not start load.
        println!("proxy bench: skipped (run it with `cargo bench --bench proxy`)");
        return ExitCode::SUCCESS;
    }
    match run(&opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("proxy bench failed: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(opts: &Opts) -> Result<(), String> {
    let started = Instant::now();
    // Every stream of a point holds a client socket in the load generator and, in a
    // single-process proxy, a client and an upstream socket: room for the largest point.
    let most_streams = opts.stream_counts.iter().copied().max().unwrap_or(0) as u64;
    let nofile = machine::raise_nofile(2 * most_streams + 4096)?;
    let m = Machine::detect(nofile);
    println!("machine: {m}");
    // Other work on the machine (a build, another bench) skews every number: say so.
    let busy = machine::busy_fraction(Duration::from_secs(1));
    if let Some(b) = busy {
        println!("machine busy before the run: {:.0}%", b * 100.0);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;

    let mut lab = Lab::start(opts, &m)?;
    for s in &lab.systems {
        println!(
            "system {:>8}: http://{} (pids {:?})",
            s.name,
            s.addr,
            s.pids()
        );
    }
    println!(
        "mock: http://{}; configs and logs in {}",
        lab.mock_addr,
        lab.dir().display()
    );
    preflight(&rt, &lab)?;

    let mut res: Vec<SystemResults> = lab
        .systems
        .iter()
        .map(|s| SystemResults::new(s.name, s.is_proxy()))
        .collect();
    for (r, s) in res.iter_mut().zip(&lab.systems) {
        if s.is_proxy() {
            r.rss_idle_kib = Some(procstat::rss_kib(s.pids()));
        }
    }

    let mut point = 0;
    latency_point(&rt, &mut lab, &mut res, opts, point);
    point += 1;

    let loads: Vec<(Load, Duration)> = [
        (opts.small_body, opts.small_duration),
        (opts.large_body, opts.large_duration),
    ]
    .into_iter()
    .flat_map(|(body, dur)| {
        opts.concurrencies
            .iter()
            .map(move |&conc| (Load { body, conc }, dur))
    })
    .collect();
    // CPU per request is read on the first 1 KiB point (c=64 by default).
    let cpu_load = loads.first().map(|(l, _)| *l);
    for &(load, dur) in &loads {
        throughput_point(&rt, &mut lab, &mut res, opts, point, load, dur, cpu_load);
        point += 1;
    }

    let pace = Pace {
        events: opts.stream_events,
        interval: opts.stream_interval,
    };
    let backlog = net::listen_backlog(lab.mock_addr);
    let window = opts
        .stream_window
        .unwrap_or_else(|| net::stream_window(backlog));
    println!(
        "stream ramp window {window} (mock listen backlog {})",
        backlog.map_or("unknown".into(), |b| b.to_string())
    );
    let largest = opts.stream_counts.iter().copied().max().unwrap_or(0);
    let ramp = StreamRamp { pace, window };
    for &n in &opts.stream_counts {
        stream_point(&rt, &mut lab, &mut res, opts, point, n, ramp, n == largest);
        point += 1;
    }

    std::thread::sleep(SETTLE);
    for (r, s) in res.iter_mut().zip(lab.systems.iter_mut()) {
        if s.is_proxy() {
            r.rss_after_kib = Some(procstat::rss_kib(s.pids()));
        }
        if let Err(e) = s.check_alive() {
            r.died.get_or_insert(e);
        }
        if let Some((count, Some(first))) = s.proc().map(|p| p.log_problems()) {
            r.log_problems = Some((count, first));
        }
    }

    let stream_length = pace.interval * pace.events.saturating_sub(1) as u32;
    let mut notes = lab.notes.clone();
    if let Some(b) = busy.filter(|&b| b > BUSY_BEFORE) {
        notes.insert(
            0,
            format!(
                "the machine was {:.0}% busy with other work in the second before the run: \
                 numbers are noisier than usual.",
                b * 100.0
            ),
        );
    }
    if let Err(e) = lab.mock.check_alive() {
        notes.push(format!("the mock upstream died during the run: {e}"));
    }
    notes.extend(checks::notes(
        &res,
        &checks::Inputs {
            loads: &loads,
            stream_counts: &opts.stream_counts,
            stream_length,
            nofile_hard: m.nofile.1,
            stream_window: window,
            cores: m.cores,
        },
    ));
    let md = report::render(
        &res,
        &report::Context {
            machine: &m,
            quick: opts.quick,
            rounds: opts.rounds,
            nginx_version: lab.nginx_version.as_deref(),
            latency_requests: opts.latency_requests,
            loads: &loads,
            stream_counts: &opts.stream_counts,
            stream_pace: (opts.stream_events, opts.stream_interval),
            stream_window: (window, backlog),
            elapsed: started.elapsed(),
            notes: &notes,
        },
    );
    println!("\n{md}");
    let path = report_path();
    match std::fs::write(&path, &md) {
        Ok(()) => println!("written to {}", path.display()),
        Err(e) => eprintln!("could not write {}: {e}", path.display()),
    }
    drop(lab);
    println!("done in {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// The systems in the order they run at `point`: rotated by one each point, so no system is
/// always first (cold) or always last (after the others' leftovers).
fn order(n: usize, point: usize) -> impl Iterator<Item = usize> {
    (0..n).map(move |k| (k + point) % n)
}

/// One small request through each system: a misconfiguration fails here, not as a table of
/// errors.
fn preflight(rt: &Runtime, lab: &Lab) -> Result<(), String> {
    for s in &lab.systems {
        let req = client::request(s.api, 1024, false, None);
        let r = rt.block_on(async {
            let mut sender = client::connect(s.addr).await?;
            client::exchange_timed(&mut sender, req).await
        });
        if let Err(f) = r {
            let log = s.proc().map(|p| p.log_tail(20)).unwrap_or_default();
            return Err(format!(
                "preflight request through {} failed: {f}; end of its log:\n{log}",
                s.name
            ));
        }
    }
    Ok(())
}

fn latency_point(
    rt: &Runtime,
    lab: &mut Lab,
    res: &mut [SystemResults],
    opts: &Opts,
    point: usize,
) {
    let mut rounds = vec![Vec::new(); lab.systems.len()];
    for (round, i) in interleaved(lab.systems.len(), point, opts.rounds) {
        let s = &mut lab.systems[i];
        let req = client::request(s.api, opts.small_body, false, None);
        let r = rt.block_on(latency::run(
            s.addr,
            &req,
            opts.latency_warmup,
            opts.latency_requests,
        ));
        let ms = |v: Option<u64>| v.map_or(f64::NAN, |ns| ns as f64 / 1e3);
        println!(
            "latency c=1     {:>8}{}: p50 {:.1} µs  p99 {:.1} µs  p99.9 {:.1} µs  failed {}",
            s.name,
            round_label(round, opts.rounds),
            ms(r.p50_ns),
            ms(r.p99_ns),
            ms(r.p999_ns),
            r.failures
        );
        rounds[i].push(r);
        note_death(s, &mut res[i]);
        std::thread::sleep(BETWEEN_RUNS);
    }
    for (r, runs) in res.iter_mut().zip(&rounds) {
        r.latency = Some(latency::LatencyResult::median_of(runs));
    }
}

/// `(round, system)` in the order to run them: each round runs every system, in the order of
/// `order(n, point + round)`.
fn interleaved(n: usize, point: usize, rounds: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..rounds).flat_map(move |round| order(n, point + round).map(move |i| (round, i)))
}

fn round_label(round: usize, rounds: usize) -> String {
    if rounds > 1 {
        format!(" #{}", round + 1)
    } else {
        String::new()
    }
}

#[allow(clippy::too_many_arguments)]
fn throughput_point(
    rt: &Runtime,
    lab: &mut Lab,
    res: &mut [SystemResults],
    opts: &Opts,
    point: usize,
    load: Load,
    dur: Duration,
    cpu_load: Option<Load>,
) {
    let mut rounds = vec![Vec::new(); lab.systems.len()];
    let mut cpu_total = vec![0.0; lab.systems.len()];
    for (round, i) in interleaved(lab.systems.len(), point, opts.rounds) {
        let s = &mut lab.systems[i];
        let req = client::request(s.api, load.body, false, None);
        let cpu0 = procstat::cpu_seconds(s.pids());
        let r = rt.block_on(throughput::run(s.addr, req, load.conc, opts.warmup, dur));
        let cpu = procstat::cpu_seconds(s.pids()) - cpu0;
        cpu_total[i] += cpu;
        println!(
            "{:<15} {:>8}{}: {:.0} req/s  p99 {} µs  failed {}  (proxy CPU {:.2} s)",
            load.label(),
            s.name,
            round_label(round, opts.rounds),
            r.rps,
            r.p99_us.unwrap_or(0),
            r.failures,
            cpu
        );
        rounds[i].push(r);
        note_death(s, &mut res[i]);
        std::thread::sleep(BETWEEN_RUNS);
    }
    for (i, r) in res.iter_mut().enumerate() {
        let all = throughput::ThroughputResult::median_of(&rounds[i]);
        if r.is_proxy && Some(load) == cpu_load && all.total > 0 {
            r.cpu_per_10k = Some((cpu_total[i] / all.total as f64 * 10_000.0, load));
        }
        r.throughput.push((load, all));
    }
}

/// How streams are asked for and opened.
#[derive(Clone, Copy)]
struct StreamRamp {
    pace: Pace,
    window: usize,
}

#[allow(clippy::too_many_arguments)]
fn stream_point(
    rt: &Runtime,
    lab: &mut Lab,
    res: &mut [SystemResults],
    opts: &Opts,
    point: usize,
    n: usize,
    ramp: StreamRamp,
    sample_rss: bool,
) {
    for i in order(lab.systems.len(), point) {
        std::thread::sleep(BETWEEN_STREAM_RUNS);
        let s = &mut lab.systems[i];
        let req = client::request(s.api, opts.small_body, true, Some(ramp.pace));
        let sampler =
            (sample_rss && s.is_proxy()).then(|| procstat::Sampler::start(s.pids().to_vec()));
        let r = rt.block_on(streams::run(s.addr, req, n, ramp.window, ramp.pace));
        if let Some(sampler) = sampler {
            let peaks = sampler.finish();
            res[i].rss_peak_kib = Some((peaks.rss_kib, n));
            res[i].fds_peak = Some(peaks.fds);
        }
        println!(
            "streams {:<7} {:>8}: completed {}  failed {}  peak open {}  TTFB p99 {} µs  \
             gap p99 {} µs  stalls {}  ({:.1} s)",
            n,
            s.name,
            r.completed,
            r.failures,
            r.peak_open,
            r.ttfb_p99_us.unwrap_or(0),
            r.gap_p99_us.unwrap_or(0),
            r.stalls,
            r.stream_phase.as_secs_f64()
        );
        res[i].streams.push(r);
        note_death(s, &mut res[i]);
    }
}

fn note_death(s: &mut systems::System, r: &mut SystemResults) {
    if let Err(e) = s.check_alive() {
        eprintln!("{e}");
        r.died.get_or_insert(e);
    }
}

/// `target/bench-proxy.md`, next to the binaries cargo built for this bench.
fn report_path() -> PathBuf {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_ai-proxy"));
    bin.parent()
        .and_then(|profile| profile.parent())
        .map_or_else(
            || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"),
            PathBuf::from,
        )
        .join("bench-proxy.md")
}
