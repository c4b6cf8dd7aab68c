//! The results as one markdown table, systems side by side (one column each, and an
//! `ai-proxy / nginx` ratio column when both ran), with the machine and notes around it.

use std::time::Duration;

use crate::machine::Machine;
use crate::results::{Load, SystemResults};

/// What the report says besides the numbers.
pub struct Context<'a> {
    pub machine: &'a Machine,
    pub quick: bool,
    /// Runs of each latency and throughput point (medians shown when more than 1).
    pub rounds: usize,
    pub nginx_version: Option<&'a str>,
    pub latency_requests: usize,
    pub loads: &'a [(Load, Duration)],
    pub stream_counts: &'a [usize],
    pub stream_pace: (usize, Duration),
    /// The stream ramp window, and the mock's listen backlog it was derived from.
    pub stream_window: (usize, Option<u32>),
    pub elapsed: Duration,
    pub notes: &'a [String],
}

pub fn render(res: &[SystemResults], cx: &Context) -> String {
    let mut md = String::new();
    md.push_str("## ai-proxy load bench (`cargo bench --bench proxy`)\n\n");
    md.push_str(&format!("- machine: {}\n", cx.machine));
    md.push_str(&format!(
        "- run: {}, {} s in all; every system on 127.0.0.1, order rotated between points{}\n",
        if cx.quick { "--quick" } else { "full" },
        cx.elapsed.as_secs(),
        if cx.rounds > 1 {
            format!(
                "; latency and throughput points run {} times, systems interleaved: medians shown",
                cx.rounds
            )
        } else {
            String::new()
        }
    ));
    md.push_str(&format!(
        "- systems: {}\n",
        res.iter()
            .map(|s| describe(s.name, cx))
            .collect::<Vec<_>>()
            .join("; ")
    ));
    md.push_str(
        "- load generator: in the bench process, tokio multi-thread + hyper HTTP/1.1 client, \
         keep-alive connections, closed loop\n",
    );
    md.push_str(&format!(
        "- streams: connections opened and requests in flight at most {} at a time \
         (mock listen backlog {})\n\n",
        cx.stream_window.0,
        cx.stream_window
            .1
            .map_or("unknown".into(), |b| b.to_string())
    ));
    md.push_str(&table(res, cx));
    if !cx.notes.is_empty() {
        md.push_str("\nNotes:\n\n");
        for n in cx.notes {
            md.push_str(&format!("- {n}\n"));
        }
    }
    md
}

fn describe(name: &str, cx: &Context) -> String {
    match name {
        "direct" => "direct = load generator → ai-proxy-mock".to_string(),
        "ai-proxy" => format!(
            "ai-proxy = → gateway ({} threads; metrics on, access log to stdout) → mock",
            cx.machine.cores
        ),
        "ai-proxy-auth" => format!(
            "ai-proxy-auth = → gateway ({} threads; as ai-proxy, plus 100 client keys: key, allowlist and rate limit checked) → mock",
            cx.machine.cores
        ),
        "ai-proxy-redis" => format!(
            "ai-proxy-redis = → gateway ({} threads; as ai-proxy-auth, the limits shared in a redis-server, whose CPU and RSS count in the process rows; a request waits for one script call, its end is recorded without waiting) → mock",
            cx.machine.cores
        ),
        "ai-proxy-messages" => format!(
            "ai-proxy-messages = → gateway ({} threads; as ai-proxy, the same requests sent as Anthropic Messages to /v1/messages, translated to chat completions and back) → mock",
            cx.machine.cores
        ),
        "baseline" => {
            "baseline = → the `--baseline` gateway binary, ai-proxy's config → mock".to_string()
        }
        "ai-proxy-bare" => format!(
            "ai-proxy-bare = → gateway ({} threads; metrics and access log off) → mock",
            cx.machine.cores
        ),
        "nginx" => format!(
            "nginx = → nginx {} ({} workers, unbuffered, keepalive 256) → mock",
            cx.nginx_version.unwrap_or("?"),
            cx.machine.cores
        ),
        other => other.to_string(),
    }
}

/// Rows of the table; the point name is shown on a group's first row only.
struct Table<'a> {
    res: &'a [SystemResults],
    direct: Option<&'a SystemResults>,
    /// Indexes of ai-proxy and nginx, when both ran.
    ratio: Option<(usize, usize)>,
    rows: Vec<Vec<String>>,
    point: String,
}

impl<'a> Table<'a> {
    fn new(res: &'a [SystemResults]) -> Self {
        let idx = |n: &str| res.iter().position(|s| s.name == n);
        Table {
            res,
            direct: res.iter().find(|s| s.name == "direct"),
            ratio: idx("ai-proxy").zip(idx("nginx")),
            rows: Vec::new(),
            point: String::new(),
        }
    }

    fn point(&mut self, name: String) {
        self.point = name;
    }

    fn push(&mut self, metric: &str, cells: Vec<String>, ratio: String) {
        let mut row = vec![std::mem::take(&mut self.point), metric.to_string()];
        row.extend(cells);
        if self.ratio.is_some() {
            row.push(ratio);
        }
        self.rows.push(row);
    }

    /// A numeric row; `with_ratio` adds ai-proxy ÷ nginx.
    fn num(
        &mut self,
        metric: &str,
        value: impl Fn(&SystemResults) -> Option<f64>,
        fmt: fn(f64) -> String,
        with_ratio: bool,
    ) {
        let vals: Vec<Option<f64>> = self.res.iter().map(&value).collect();
        let cells = vals.iter().map(|v| v.map_or("—".into(), fmt)).collect();
        let ratio = match self.ratio {
            Some((a, n)) if with_ratio => match (vals[a], vals[n]) {
                (Some(a), Some(n)) if n.abs() > f64::EPSILON => format!("{:.2}×", a / n),
                _ => String::new(),
            },
            _ => String::new(),
        };
        self.push(metric, cells, ratio);
    }

    fn text(&mut self, metric: &str, value: impl Fn(&SystemResults) -> Option<String>) {
        let cells = self
            .res
            .iter()
            .map(|s| value(s).unwrap_or_else(|| "—".into()))
            .collect();
        self.push(metric, cells, String::new());
    }

    /// `value(proxy) - value(direct)` for proxies.
    fn added(
        &mut self,
        metric: &str,
        value: impl Fn(&SystemResults) -> Option<f64>,
        fmt: fn(f64) -> String,
    ) {
        let base = self.direct.and_then(&value);
        self.num(
            metric,
            |s| {
                if s.is_proxy {
                    Some(value(s)? - base?)
                } else {
                    None
                }
            },
            fmt,
            true,
        );
    }
}

fn table(res: &[SystemResults], cx: &Context) -> String {
    let mut t = Table::new(res);

    t.point(format!(
        "latency, c=1, 1 KiB, {} req",
        thousands(cx.latency_requests as f64)
    ));
    let lat = |p: fn(&crate::latency::LatencyResult) -> Option<u64>| {
        move |s: &SystemResults| s.latency.as_ref().and_then(p).map(|ns| ns as f64 / 1e3)
    };
    t.num("p50", lat(|l| l.p50_ns), us, false);
    t.num("p99", lat(|l| l.p99_ns), us, false);
    t.num("p99.9", lat(|l| l.p999_ns), us, false);
    t.added("added p50", lat(|l| l.p50_ns), signed_us);
    t.added("added p99", lat(|l| l.p99_ns), signed_us);
    t.added("added p99.9", lat(|l| l.p999_ns), signed_us);
    t.text("failed", |s| {
        s.latency.as_ref().map(|l| l.failures.to_string())
    });

    for &(load, dur) in cx.loads {
        t.point(format!("{}, {} s", load.label(), dur.as_secs_f64()));
        t.num(
            "req/s",
            |s| s.throughput(load).map(|r| r.rps),
            thousands,
            true,
        );
        t.num(
            "p99",
            |s| s.throughput(load).and_then(|r| r.p99_us).map(|v| v as f64),
            us,
            true,
        );
        t.text("failed", |s| {
            s.throughput(load).map(|r| r.failures.to_string())
        });
    }

    let (events, pace) = cx.stream_pace;
    for &n in cx.stream_counts {
        t.point(format!(
            "{} streams × {events} events, {} ms apart",
            thousands(n as f64),
            pace.as_millis()
        ));
        let st = move |s: &SystemResults| s.stream(n).cloned();
        t.num(
            "completed",
            |s| st(s).map(|r| r.completed as f64),
            thousands,
            false,
        );
        t.text("failed", |s| st(s).map(|r| r.failures.to_string()));
        t.num(
            "peak open at once",
            |s| st(s).map(|r| r.peak_open as f64),
            thousands,
            false,
        );
        let f = |p: fn(&crate::streams::StreamResult) -> Option<u64>| {
            move |s: &SystemResults| st(s).as_ref().and_then(p).map(|v| v as f64)
        };
        t.num("TTFB p50", f(|r| r.ttfb_p50_us), us, false);
        t.num("TTFB p99", f(|r| r.ttfb_p99_us), us, false);
        t.added("added TTFB p50", f(|r| r.ttfb_p50_us), signed_us);
        t.added("added TTFB p99", f(|r| r.ttfb_p99_us), signed_us);
        t.num("inter-event gap p99", f(|r| r.gap_p99_us), us, false);
        t.text(
            &format!("stalls (gap > {} ms)", pace.as_millis() * 3),
            |s| {
                st(s).map(|r| {
                    format!(
                        "{} in {} streams",
                        thousands(r.stalls as f64),
                        thousands(r.stalled_streams as f64)
                    )
                })
            },
        );
        t.num(
            "listen-queue overflows",
            |s| st(s).and_then(|r| r.listen_overflows).map(|v| v as f64),
            thousands,
            false,
        );
        t.text("connect all / stream phase", |s| {
            st(s).map(|r| {
                format!(
                    "{:.1} s / {:.1} s",
                    r.connect_phase.as_secs_f64(),
                    r.stream_phase.as_secs_f64()
                )
            })
        });
    }

    t.point("proxy process".to_string());
    let cpu_load = res.iter().find_map(|s| s.cpu_per_10k.map(|(_, l)| l));
    t.num(
        &format!(
            "CPU s / 10k req ({})",
            cpu_load.map_or("c=64, 1 KiB".into(), |l| l.label())
        ),
        |s| s.cpu_per_10k.map(|(c, _)| c),
        |v| format!("{v:.3} s"),
        true,
    );
    t.num("RSS idle", |s| s.rss_idle_kib.map(|k| k as f64), mib, true);
    let peak_n = res.iter().find_map(|s| s.rss_peak_kib.map(|(_, n)| n));
    t.num(
        &format!(
            "RSS peak ({} streams)",
            peak_n.map_or("largest".into(), |n| thousands(n as f64))
        ),
        |s| s.rss_peak_kib.map(|(k, _)| k as f64),
        mib,
        true,
    );
    t.num(
        &format!(
            "open files peak ({} streams)",
            peak_n.map_or("largest".into(), |n| thousands(n as f64))
        ),
        |s| s.fds_peak.map(|k| k as f64),
        thousands,
        false,
    );
    t.num(
        "RSS after load",
        |s| s.rss_after_kib.map(|k| k as f64),
        mib,
        true,
    );

    let mut header = vec!["point".to_string(), "metric".to_string()];
    header.extend(res.iter().map(|s| s.name.to_string()));
    if t.ratio.is_some() {
        header.push("ai-proxy / nginx".to_string());
    }
    let mut md = row(&header);
    let mut align = vec!["---".to_string(), "---".to_string()];
    align.extend((2..header.len()).map(|_| "---:".to_string()));
    md.push_str(&row(&align));
    for r in &t.rows {
        md.push_str(&row(r));
    }
    md
}

fn row(cells: &[String]) -> String {
    format!("| {} |\n", cells.join(" | "))
}

/// Microseconds, in the unit that reads best.
fn us(v: f64) -> String {
    let a = v.abs();
    if a < 100.0 {
        format!("{v:.1} µs")
    } else if a < 1_000.0 {
        format!("{v:.0} µs")
    } else if a < 100_000.0 {
        format!("{:.2} ms", v / 1e3)
    } else if a < 10_000_000.0 {
        format!("{:.0} ms", v / 1e3)
    } else {
        format!("{:.1} s", v / 1e6)
    }
}

fn signed_us(v: f64) -> String {
    if v >= 0.0 {
        format!("+{}", us(v))
    } else {
        us(v)
    }
}

fn mib(kib: f64) -> String {
    format!("{:.1} MiB", kib / 1024.0)
}

/// A whole number with thousands separators: 12,345.
pub fn thousands(v: f64) -> String {
    let n = v.round() as i64;
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}
