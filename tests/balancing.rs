//! Balancing policies end to end: per-model policies from the config, and what each does with
//! a pool where one endpoint is much slower than the others.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use common::*;

/// Requests sent at once, and by each of those clients one after another.
const CLIENTS: usize = 8;
const EACH: usize = 12;

/// Send `CLIENTS` x `EACH` chat requests for `model`; how many each endpoint served.
async fn served_by(gw: &Arc<Gateway>, model: &'static str) -> HashMap<String, usize> {
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let gw = gw.clone();
            tokio::spawn(async move {
                let mut names = Vec::new();
                for _ in 0..EACH {
                    let r = post_chat(&gw, model, &[]).await;
                    assert_eq!(r.status, 200, "{}", r.text());
                    names.push(r.header("x-ai-proxy-endpoint").unwrap().to_string());
                }
                names
            })
        })
        .collect();
    let mut counts = HashMap::new();
    for c in clients {
        for name in c.await.unwrap() {
            *counts.entry(name).or_insert(0) += 1;
        }
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_aware_policies_send_clearly_fewer_requests_to_a_slow_endpoint_than_round_robin() {
    let models = ["m-rr", "m-lo", "m-lat"];
    let fast = Duration::from_millis(20);
    let a = start_mock(MockConfig::openai("fast-a", models).with_delay(fast)).await;
    let b = start_mock(MockConfig::openai("fast-b", models).with_delay(fast)).await;
    let slow = start_mock(MockConfig::openai("slow", models).with_delay(fast * 10)).await;
    let gw = Arc::new(
        Gateway::over(
            &[&a, &b, &slow],
            "balancing:\n  policy: least_outstanding\n  models:\n    m-rr: round_robin\n    m-lat: latency",
        )
        .await,
    );

    let rr = served_by(&gw, "m-rr").await;
    let lo = served_by(&gw, "m-lo").await;
    let lat = served_by(&gw, "m-lat").await;
    let total = CLIENTS * EACH;
    let slow_rr = rr.get("slow").copied().unwrap_or(0);
    let slow_lo = lo.get("slow").copied().unwrap_or(0);
    let slow_lat = lat.get("slow").copied().unwrap_or(0);
    eprintln!("served: round robin {rr:?}, least outstanding {lo:?}, latency {lat:?}");
    // Round robin gives each endpoint its turn: a third, whatever its speed.
    assert_eq!(slow_rr, total / 3, "{rr:?}");
    // Least outstanding sees the slow endpoint's requests pile up and sends it far fewer:
    // about a third of round robin's share in runs here; asserted with room for a loaded CI.
    assert!(
        slow_lo * 3 < slow_rr * 2,
        "round robin {rr:?}, least outstanding {lo:?}"
    );
    assert_eq!(lo.values().sum::<usize>(), total);
    // Latency measures the slow endpoint once or twice, then sends it (almost) nothing.
    assert!(
        slow_lat * 4 < slow_rr,
        "round robin {rr:?}, latency {lat:?}"
    );
    assert_eq!(lat.values().sum::<usize>(), total);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_follows_the_endpoint_weights() {
    let a = start_mock(MockConfig::openai("a", ["m"])).await;
    let b = start_mock(MockConfig::openai("b", ["m"])).await;
    let yaml = format!(
        "listen: \"127.0.0.1:{{port}}\"\nthreads: 2\nbalancing:\n  policy: weighted\nendpoints:\n  - url: {}\n    name: a\n  - url: {}\n    name: b\n    weight: 3\n",
        a.url(),
        b.url()
    );
    let gw = Gateway::start(&yaml).await;
    wait_discovered(&gw, "a").await;
    wait_discovered(&gw, "b").await;
    let mut counts: HashMap<String, usize> = HashMap::new();
    for _ in 0..40 {
        let r = post_chat(&gw, "m", &[]).await;
        assert_eq!(r.status, 200);
        *counts
            .entry(r.header("x-ai-proxy-endpoint").unwrap().to_string())
            .or_default() += 1;
    }
    assert_eq!(counts["a"], 10, "{counts:?}");
    assert_eq!(counts["b"], 30, "{counts:?}");
}

/// A chat turn of conversation `c`: the opening question, then `turn` more exchanges.
fn turn_body(c: usize, turn: usize) -> String {
    let mut messages = vec![
        serde_json::json!({"role": "system", "content": "You are a helpful assistant."}),
        serde_json::json!({"role": "user", "content": format!("Conversation {c}: tell me a story.")}),
    ];
    for t in 0..turn {
        messages.push(serde_json::json!({"role": "assistant", "content": format!("Part {t}.")}));
        messages.push(serde_json::json!({"role": "user", "content": "Go on."}));
    }
    serde_json::json!({"model": "m", "messages": messages}).to_string()
}

/// One turn, sent once the turn before it has ended in the gateway too: a request is counted
/// in flight until just after its last byte is written, and a conversation's next turn must
/// not find its home over the load bound because of that instant.
async fn send_turn(gw: &Gateway, c: usize, turn: usize) -> String {
    let idle = poll_until(Duration::from_secs(5), || async {
        endpoints(gw).await.iter().all(|e| e["in_flight"] == 0)
    })
    .await;
    assert!(idle.is_some(), "requests stayed in flight");
    let r = post_json(&gw.at("/v1/chat/completions"), turn_body(c, turn), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.header("x-ai-proxy-endpoint").unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefix_affinity_keeps_a_conversation_on_one_endpoint_and_moves_it_when_ejected() {
    let mocks = [
        start_mock(MockConfig::openai("e0", ["m"])).await,
        start_mock(MockConfig::openai("e1", ["m"])).await,
        start_mock(MockConfig::openai("e2", ["m"])).await,
    ];
    let gw = Gateway::over(
        &[&mocks[0], &mocks[1], &mocks[2]],
        "balancing:\n  policy: prefix_affinity\nhealth:\n  failure_threshold: 1\n  ejection_secs: 60",
    )
    .await;

    // Every turn of each conversation reaches the endpoint of its first turn.
    let mut homes = Vec::new();
    for c in 0..6 {
        let home = send_turn(&gw, c, 0).await;
        for turn in 1..5 {
            assert_eq!(
                send_turn(&gw, c, turn).await,
                home,
                "conversation {c}, turn {turn}"
            );
        }
        homes.push(home);
    }

    // Conversation 0's endpoint fails: that turn fails over, the endpoint is ejected, and the
    // later turns all go to one other endpoint.
    let home = &homes[0];
    let failing = mocks.iter().find(|m| m.name() == home).unwrap();
    failing.set_fault(Some(ai_proxy_mock::Fault::Status {
        status: 503,
        retry_after: None,
    }));
    let moved = send_turn(&gw, 0, 5).await;
    assert_ne!(&moved, home);
    for turn in 6..10 {
        assert_eq!(
            send_turn(&gw, 0, turn).await,
            moved,
            "turn {turn} after the ejection"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefix_affinity_spreads_one_hot_key_within_the_load_bound() {
    let delay = Duration::from_millis(400);
    let mocks = [
        start_mock(MockConfig::openai("h0", ["m"]).with_delay(delay)).await,
        start_mock(MockConfig::openai("h1", ["m"]).with_delay(delay)).await,
        start_mock(MockConfig::openai("h2", ["m"]).with_delay(delay)).await,
    ];
    let gw = Arc::new(
        Gateway::over(
            &[&mocks[0], &mocks[1], &mocks[2]],
            "balancing:\n  policy: prefix_affinity\n  prefix_affinity:\n    epsilon: 0.25",
        )
        .await,
    );
    // Nine requests of one user, 20 ms apart, each held 400 ms upstream: all in flight
    // together, each chosen once the one before it is counted in flight.
    let requests: Vec<_> = (0..9u64)
        .map(|i| {
            let gw = gw.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(20 * i)).await;
                let body = serde_json::json!({"model": "m", "user": "hot-user",
                    "messages": [{"role": "user", "content": "hi"}]});
                let r = post_json(&gw.at("/v1/chat/completions"), body.to_string(), &[]).await;
                assert_eq!(r.status, 200);
                r.header("x-ai-proxy-endpoint").unwrap().to_string()
            })
        })
        .collect();
    let mut counts: HashMap<String, usize> = HashMap::new();
    for r in requests {
        *counts.entry(r.await.unwrap()).or_default() += 1;
    }
    // No endpoint above ceil(1.25 x 9 / 3) = 4 at once; the key's home takes the most.
    assert!(counts.values().all(|&n| n <= 4), "{counts:?}");
    assert!(counts.len() >= 2, "{counts:?}");
}
