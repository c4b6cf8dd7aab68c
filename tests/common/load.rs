//! Steady client load for operations tests (reload, upgrade): clients send chat requests in a
//! loop, each on a new connection, alternating JSON answers and streams, until stopped; every
//! outcome is kept.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinHandle;

use super::api::chat_body;
use super::client::{sse_data, Client};

/// The longest one request of the load may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// Clients sending requests until [`Load::stop`].
pub struct Load {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicUsize>,
    failures: Arc<Mutex<Vec<String>>>,
    tasks: Vec<JoinHandle<()>>,
}

/// What a load did.
#[derive(Debug)]
pub struct Outcomes {
    pub completed: usize,
    /// One line per failed request: what it was and what went wrong.
    pub failures: Vec<String>,
}

impl Outcomes {
    /// Panics, listing them, when any request failed.
    pub fn assert_none_failed(&self) {
        assert!(
            self.failures.is_empty(),
            "{} of {} requests failed: {:?}",
            self.failures.len(),
            self.completed,
            self.failures
        );
    }
}

impl Load {
    /// `clients` loops of `POST {base}/v1/chat/completions` for `model`.
    pub fn start(base: &str, model: &str, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicUsize::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let url = format!("{base}/v1/chat/completions");
        let tasks = (0..clients)
            .map(|c| {
                let (stop, done, failures) = (stop.clone(), done.clone(), failures.clone());
                let (url, model) = (url.clone(), model.to_string());
                tokio::spawn(async move {
                    let client = Client::new().timeout(REQUEST_TIMEOUT);
                    let mut n = 0usize;
                    while !stop.load(Ordering::Relaxed) {
                        let stream = (c + n).is_multiple_of(2);
                        n += 1;
                        if let Err(e) = one_request(&client, &url, &model, stream).await {
                            let kind = if stream { "stream" } else { "json" };
                            failures
                                .lock()
                                .unwrap()
                                .push(format!("client {c} {kind}: {e}"));
                        }
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        Load {
            stop,
            done,
            failures,
            tasks,
        }
    }

    /// Requests finished so far, failed or not.
    pub fn completed(&self) -> usize {
        self.done.load(Ordering::Relaxed)
    }

    /// Wait (bounded) until `more` requests have finished after this call.
    pub async fn wait_for_more(&self, more: usize, timeout: Duration) -> bool {
        let target = self.completed() + more;
        super::api::poll_until(timeout, || async { self.completed() >= target })
            .await
            .is_some()
    }

    /// Stop after the requests in progress and report.
    pub async fn stop(self) -> Outcomes {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.expect("load client task");
        }
        let failures = self.failures.lock().unwrap().clone();
        Outcomes {
            completed: self.done.load(Ordering::Relaxed),
            failures,
        }
    }
}

/// One chat request; a stream counts only when it ends with `[DONE]`.
async fn one_request(client: &Client, url: &str, model: &str, stream: bool) -> Result<(), String> {
    let body = chat_body(model, stream);
    if !stream {
        let r = client
            .try_request(
                "POST",
                url,
                &[("content-type", "application/json")],
                super::client::ReqBody::full(body),
            )
            .await?;
        return match r.status {
            200 => Ok(()),
            s => Err(format!("HTTP {s}: {}", r.text())),
        };
    }
    let mut s = client.try_post_stream(url, body, &[]).await?;
    if s.status != 200 {
        return Err(format!("HTTP {}", s.status));
    }
    let bytes = s.read_to_end().await;
    match (s.error(), sse_data(&bytes).last().map(String::as_str)) {
        (None, Some("[DONE]")) => Ok(()),
        (e, last) => Err(format!("stream ended early ({e:?}, last event {last:?})")),
    }
}
