//! Graceful shutdown. SIGTERM stops the listeners (Pingora) and then waits for requests in
//! flight, streams included, for up to `shutdown_grace_secs`; the process exits (code 0) as
//! soon as the last one ends, so an idle gateway stops at once while a busy one lets its
//! streams finish. SIGINT stops at once; SIGQUIT is Pingora's graceful upgrade.
//!
//! Pingora itself only knows an unconditional grace period (it sleeps the whole period, then
//! drops every task): this watch ends that sleep early when nothing is left to wait for.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::{ShutdownSignal, ShutdownSignalWatch};
use tokio::signal::unix::{signal, SignalKind};

/// How often the drain checks the count of requests in flight.
const DRAIN_POLL: Duration = Duration::from_millis(50);

/// Requests the gateway is handling now (from reading their head to their last byte).
#[derive(Debug, Default, Clone)]
pub struct ActiveRequests(Arc<AtomicUsize>);

impl ActiveRequests {
    /// Count one request until the guard is dropped.
    pub fn start(&self) -> ActiveRequest {
        self.0.fetch_add(1, Ordering::Relaxed);
        ActiveRequest(self.0.clone())
    }

    pub fn count(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

/// One request in flight; see [`ActiveRequests::start`].
#[derive(Debug)]
pub struct ActiveRequest(Arc<AtomicUsize>);

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The gateway's signal handling (in place of Pingora's `UnixShutdownSignalWatch`).
pub struct Signals {
    pub active: ActiveRequests,
    pub grace: Duration,
}

#[async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        let (Ok(mut quit), Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::quit()),
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            log::error!("cannot install signal handlers; the gateway stops only when killed");
            return std::future::pending().await;
        };
        tokio::select! {
            _ = quit.recv() => ShutdownSignal::GracefulUpgrade,
            _ = int.recv() => ShutdownSignal::FastShutdown,
            _ = term.recv() => {
                log::info!(
                    "SIGTERM: no new connections; waiting up to {} s for {} request(s) in flight",
                    self.grace.as_secs(),
                    self.active.count()
                );
                exit_when_drained(self.active.clone(), self.grace);
                ShutdownSignal::GracefulTerminate
            }
        }
    }
}

/// Exit with code 0 once no request is in flight. Runs on its own thread, because Pingora's
/// main thread sleeps through the grace period; if the period ends first, Pingora stops the
/// remaining requests and exits itself.
fn exit_when_drained(active: ActiveRequests, grace: Duration) {
    let spawned = std::thread::Builder::new()
        .name("drain".into())
        .spawn(move || {
            let started = Instant::now();
            while started.elapsed() < grace {
                if active.count() == 0 {
                    log::info!(
                        "drained after {:.1} s; exiting",
                        started.elapsed().as_secs_f64()
                    );
                    std::process::exit(0);
                }
                std::thread::sleep(DRAIN_POLL);
            }
            log::warn!(
                "grace period over with {} request(s) still in flight; stopping them",
                active.count()
            );
        });
    if let Err(e) = spawned {
        log::warn!("cannot start the drain watch ({e}); waiting the whole grace period");
    }
}
