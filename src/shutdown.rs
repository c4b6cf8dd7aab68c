//! Signals and the process's lifecycle.
//!
//! - SIGTERM drains: `/ready` answers 503 at once; after `shutdown_delay_secs` (time for load
//!   balancers to notice) Pingora closes the listeners; requests in flight, streams included,
//!   then get up to `shutdown_grace_secs`, and the process exits (code 0) as soon as the last
//!   one ends, so an idle gateway stops at once while a busy one lets its streams finish.
//! - SIGQUIT is Pingora's graceful upgrade: the listening sockets go to a new process started
//!   with `--upgrade`, and this one then drains as above.
//! - SIGHUP reloads the config (see `reload.rs`), as does a change of the file when watched.
//! - SIGINT stops at once.
//!
//! Pingora itself only knows an unconditional grace period (it sleeps the whole period, then
//! drops every task): [`exit_when_drained`] ends that sleep early when nothing is left to wait
//! for.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::{ExecutionPhase, ShutdownSignal, ShutdownSignalWatch};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::broadcast;

use crate::env::ProcessEnv;
use crate::reload::{Reloaded, Reloader};

/// How often the drain checks the count of requests in flight.
const DRAIN_POLL: Duration = Duration::from_millis(50);

/// The requests the gateway is handling now (from reading their head to their last byte), and
/// whether it is draining.
#[derive(Debug, Default, Clone)]
pub struct Lifecycle(Arc<State>);

#[derive(Debug, Default)]
struct State {
    active: AtomicUsize,
    draining: AtomicBool,
}

impl Lifecycle {
    /// Count one request until the guard is dropped.
    pub fn start(&self) -> ActiveRequest {
        self.0.active.fetch_add(1, Ordering::Relaxed);
        ActiveRequest(self.0.clone())
    }

    /// Requests in flight.
    pub fn count(&self) -> usize {
        self.0.active.load(Ordering::Relaxed)
    }

    /// Shutting down: `/ready` answers 503 from now on.
    pub fn begin_draining(&self) {
        self.0.draining.store(true, Ordering::Relaxed);
    }

    pub fn is_draining(&self) -> bool {
        self.0.draining.load(Ordering::Relaxed)
    }
}

/// One request in flight; see [`Lifecycle::start`].
#[derive(Debug)]
pub struct ActiveRequest(Arc<State>);

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The gateway's signal handling (in place of Pingora's `UnixShutdownSignalWatch`).
pub struct Signals {
    pub lifecycle: Lifecycle,
    pub reloader: Reloader,
}

/// The signals the gateway handles.
struct Handlers {
    quit: Signal,
    term: Signal,
    int: Signal,
    hup: Signal,
}

impl Handlers {
    fn install() -> std::io::Result<Handlers> {
        Ok(Handlers {
            quit: signal(SignalKind::quit())?,
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }
}

#[async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        let mut on = match Handlers::install() {
            Ok(h) => h,
            Err(e) => {
                log::error!(
                    "cannot install signal handlers ({e}); the gateway stops only when killed"
                );
                return std::future::pending().await;
            }
        };
        loop {
            let watch_every = self.reloader.current().watch_config;
            let file_check = async move {
                match watch_every {
                    Some(every) => tokio::time::sleep(every).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = on.quit.recv() => {
                    log::info!("SIGQUIT: handing the listening sockets to the new process, then draining");
                    return ShutdownSignal::GracefulUpgrade;
                }
                _ = on.int.recv() => return ShutdownSignal::FastShutdown,
                _ = on.term.recv() => return self.drain(&mut on.int).await,
                _ = on.hup.recv() => self.reload("SIGHUP", self.reloader.reload(&ProcessEnv)),
                () = file_check => {
                    self.reload("config file changed", self.reloader.reload_if_changed(&ProcessEnv));
                }
            }
        }
    }
}

impl Signals {
    /// SIGTERM: report not ready, keep serving for the shutdown delay, then let Pingora close
    /// the listeners. SIGINT during the delay stops at once.
    async fn drain(&self, int: &mut Signal) -> ShutdownSignal {
        self.lifecycle.begin_draining();
        let config = self.reloader.current();
        log::info!(
            "SIGTERM: draining: /ready answers 503; new connections accepted for {:.1} s more; \
             then up to {} s for the {} request(s) in flight",
            config.shutdown_delay.as_secs_f64(),
            config.shutdown_grace.as_secs(),
            self.lifecycle.count()
        );
        if !config.shutdown_delay.is_zero() {
            tokio::select! {
                () = tokio::time::sleep(config.shutdown_delay) => {}
                _ = int.recv() => return ShutdownSignal::FastShutdown,
            }
        }
        ShutdownSignal::GracefulTerminate
    }

    fn reload(&self, why: &str, outcome: Result<Reloaded, String>) {
        let result = match &outcome {
            Ok(Reloaded::Applied) => Some("applied"),
            Err(_) => Some("rejected"),
            Ok(_) => None,
        };
        if let (Some(m), Some(result)) = (crate::metrics::get(), result) {
            m.config_reloads.with_label_values(&[result]).inc();
        }
        match outcome {
            // Discovery says when it is in force (it publishes the routes that carry it).
            Ok(Reloaded::Applied) => log::info!("reload ({why}): new config accepted"),
            Ok(Reloaded::Unchanged) => {}
            Ok(Reloaded::NoFile) => log::info!(
                "reload ({why}): the config comes from the environment alone; nothing to read again"
            ),
            Err(e) => log::error!("reload ({why}) rejected, the running config stays: {e}"),
        }
    }
}

/// Exit with code 0 once the server is in its grace period (after SIGTERM, or after a graceful
/// upgrade handed the sockets over) and no request is in flight. Runs on its own thread,
/// because Pingora's main thread sleeps through the grace period; if the period ends first,
/// Pingora stops the remaining requests and exits itself.
pub fn exit_when_drained(
    mut phases: broadcast::Receiver<ExecutionPhase>,
    lifecycle: Lifecycle,
    grace: Duration,
) {
    let spawned = std::thread::Builder::new()
        .name("drain".into())
        .spawn(move || {
            loop {
                match phases.blocking_recv() {
                    Ok(ExecutionPhase::ShutdownGracePeriod) => break,
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
            let started = Instant::now();
            while started.elapsed() < grace {
                if lifecycle.count() == 0 {
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
                lifecycle.count()
            );
        });
    if let Err(e) = spawned {
        log::warn!("cannot start the drain watch ({e}); waiting the whole grace period");
    }
}
