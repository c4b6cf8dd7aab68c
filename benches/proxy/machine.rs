//! The machine the bench runs on (cores, CPU model, kernel) and the open-files limit it raises.

use std::fmt;

/// What the report says about the machine.
#[derive(Clone, Debug)]
pub struct Machine {
    pub cores: usize,
    pub cpu_model: String,
    pub kernel: String,
    /// RLIMIT_NOFILE (soft, hard) after [`raise_nofile`].
    pub nofile: (u64, u64),
}

impl Machine {
    pub fn detect(nofile: (u64, u64)) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_else(|| "unknown CPU".to_string());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| format!("Linux {}", s.trim()))
            .unwrap_or_else(|_| std::env::consts::OS.to_string());
        Machine {
            cores,
            cpu_model,
            kernel,
            nofile,
        }
    }
}

impl fmt::Display for Machine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} cores ({}), {}, open files limit {} (hard {})",
            self.cores, self.cpu_model, self.kernel, self.nofile.0, self.nofile.1
        )
    }
}

/// Raise this process's RLIMIT_NOFILE (children inherit it) so that `need` files fit, and
/// return (soft, hard). The soft limit goes to the hard one; the hard one is raised to `need`
/// only where the bench may (root, within the kernel's `fs.nr_open`), as an operator would
/// with `LimitNOFILE=` or `ulimit -n`. Elsewhere it is left alone and the report says what
/// did not fit in it.
pub fn raise_nofile(need: u64) -> Result<(u64, u64), String> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read/write the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(format!(
            "getrlimit(NOFILE): {}",
            std::io::Error::last_os_error()
        ));
    }
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(0);
    let wanted_hard = lim.rlim_max.max(need.min(nr_open));
    let attempts = [wanted_hard, lim.rlim_max];
    for hard in attempts.into_iter().filter(|&h| h > lim.rlim_cur) {
        let raised = libc::rlimit {
            rlim_cur: hard,
            rlim_max: hard,
        };
        // SAFETY: as above. Raising the hard limit fails with EPERM without privilege; the
        // next attempt keeps it.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim = raised;
            break;
        }
    }
    Ok((lim.rlim_cur, lim.rlim_max))
}

/// The kernel's cap on listen backlogs (`net.core.somaxconn`), if readable.
pub fn somaxconn() -> Option<u32> {
    std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Fraction of all CPUs busy over `over` (from /proc/stat), to tell whether other work shares
/// the machine with the bench.
pub fn busy_fraction(over: std::time::Duration) -> Option<f64> {
    fn sample() -> Option<(u64, u64)> {
        let text = std::fs::read_to_string("/proc/stat").ok()?;
        let line = text.lines().find(|l| l.starts_with("cpu "))?;
        let v: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .filter_map(|x| x.parse().ok())
            .collect();
        // user nice system idle iowait irq softirq steal ...
        let idle = v.get(3)? + v.get(4).unwrap_or(&0);
        Some((v.iter().sum(), idle))
    }
    let (t0, i0) = sample()?;
    std::thread::sleep(over);
    let (t1, i1) = sample()?;
    let total = t1.checked_sub(t0).filter(|&t| t > 0)?;
    let idle = i1.saturating_sub(i0);
    Some(1.0 - idle as f64 / total as f64)
}
