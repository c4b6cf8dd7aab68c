//! DNS fleets: an endpoint whose host resolves to several addresses serves from each of them,
//! and follows the name as it changes. The gateway runs in its own mount namespace with a
//! test hosts file over `/etc/hosts`, so `fleet.test` resolves to mocks on 127.0.0.2-4.

mod common;

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::Path;
use std::time::Duration;

use common::*;

/// Discovery (and so DNS) runs this often.
const INTERVAL: Duration = Duration::from_secs(1);
/// Slack on top of one interval for a round to finish and publish.
const SLACK: Duration = Duration::from_secs(2);

const HOSTS: [Ipv4Addr; 3] = [
    Ipv4Addr::new(127, 0, 0, 2),
    Ipv4Addr::new(127, 0, 0, 3),
    Ipv4Addr::new(127, 0, 0, 4),
];

/// A port free on every one of `ips` (the fleet's URL names one port for all its addresses).
fn port_free_on_all(ips: &[Ipv4Addr]) -> u16 {
    for _ in 0..50 {
        let first = TcpListener::bind((ips[0], 0)).expect("bind 127.0.0.2:0");
        let port = first.local_addr().unwrap().port();
        if ips[1..]
            .iter()
            .all(|ip| TcpListener::bind((*ip, port)).is_ok())
        {
            return port;
        }
    }
    panic!("no port free on all of {ips:?} in 50 tries");
}

/// Rewrites the hosts file in place (same inode: the bind mount shows the new content).
fn write_hosts(path: &Path, ips: &[Ipv4Addr]) {
    let mut text = String::from("127.0.0.1 localhost\n");
    for ip in ips {
        text.push_str(&format!("{ip} fleet.test\n"));
    }
    std::fs::write(path, text).expect("write hosts file");
}

/// The addresses `/v1/endpoints` lists as the fleet's members.
async fn member_addresses(gw: &Gateway) -> Vec<String> {
    let ep = endpoint_named(gw, "fleet").await;
    let mut addrs: Vec<String> = ep["members"]
        .as_array()
        .unwrap_or_else(|| panic!("members listed: {ep}"))
        .iter()
        .map(|m| m["address"].as_str().unwrap().to_string())
        .collect();
    addrs.sort();
    addrs
}

fn addrs(ips: &[Ipv4Addr], port: u16) -> Vec<String> {
    let mut v: Vec<String> = ips.iter().map(|ip| format!("{ip}:{port}")).collect();
    v.sort();
    v
}

/// Waits (one interval and some slack at most) until the members are `want`; how long it took.
async fn wait_members(gw: &Gateway, want: &[String], what: &str) -> Duration {
    let took = poll_until(INTERVAL + SLACK, || async {
        member_addresses(gw).await == want
    })
    .await;
    match took {
        Some(took) => took,
        None => panic!(
            "{what}: members {:?} after {:?}, want {want:?}",
            member_addresses(gw).await,
            INTERVAL + SLACK
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_with_three_addresses_is_served_by_all_and_followed_as_it_changes() {
    let port = port_free_on_all(&HOSTS);
    let mut mocks = Vec::new();
    for ip in HOSTS {
        let name = format!("pod-{}", ip.octets()[3]);
        let addr = SocketAddr::from((ip, port));
        let mock = MockServer::start_on(MockConfig::openai(&name, ["m"]), addr)
            .await
            .unwrap_or_else(|e| panic!("mock on {addr}: {e}"));
        mocks.push(mock);
    }
    let dir = tempfile::tempdir().unwrap();
    let hosts = dir.path().join("hosts");
    write_hosts(&hosts, &HOSTS);
    let yaml = format!(
        "listen: \"127.0.0.1:{{port}}\"\nthreads: 2\ntimeout_secs: 10\nconnect_timeout_secs: 1\n\
         discovery_interval_secs: {}\nbalancing: {{policy: round_robin}}\n\
         endpoints:\n  - url: http://fleet.test:{port}\n    name: fleet\n",
        INTERVAL.as_secs()
    );
    let gw = Gateway::builder()
        .config(yaml)
        .hosts_file(&hosts)
        .start()
        .await;
    wait_members(&gw, &addrs(&HOSTS, port), "at start").await;

    // Requests spread over all three members.
    for i in 0..30 {
        let r = post_chat(&gw, "m", &[]).await;
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
    }
    for m in &mocks {
        let n = inference_requests(m).len();
        assert!(n >= 5, "{} served {n} of 30", m.name());
    }

    // One address leaves the name under load: it leaves the fleet within an interval, and no
    // request fails (those in flight on it finish there).
    let load = Load::start(&gw.url, "m", 4);
    write_hosts(&hosts, &HOSTS[..2]);
    let took = wait_members(&gw, &addrs(&HOSTS[..2], port), "after removing one").await;
    let outcomes = load.stop().await;
    outcomes.assert_none_failed();
    assert!(outcomes.completed > 0, "the load ran");
    println!(
        "left after {took:?}; {} requests under load",
        outcomes.completed
    );
    let gone = &mocks[2];
    let before = inference_requests(gone).len();
    for i in 0..12 {
        let r = post_chat(&gw, "m", &[]).await;
        assert_eq!(r.status, 200, "request {i} after the removal: {}", r.text());
    }
    assert_eq!(
        inference_requests(gone).len(),
        before,
        "a member that left gets no new request"
    );

    // It comes back: it joins and serves again.
    write_hosts(&hosts, &HOSTS);
    wait_members(&gw, &addrs(&HOSTS, port), "after adding it back").await;
    for i in 0..12 {
        let r = post_chat(&gw, "m", &[]).await;
        assert_eq!(r.status, 200, "request {i} after the return: {}", r.text());
    }
    assert!(
        inference_requests(gone).len() > before,
        "the member that joined again serves"
    );

    // Each member has its own health: one pod that stops is ejected alone, and its requests
    // fail over to the others.
    let stopped = mocks.remove(0);
    let stopped_addr = stopped.addr().to_string();
    stopped.shutdown().await;
    for i in 0..12 {
        let r = post_chat(&gw, "m", &[]).await;
        assert_eq!(r.status, 200, "request {i} with one pod down: {}", r.text());
    }
    let ep = endpoint_named(&gw, "fleet").await;
    for m in ep["members"].as_array().unwrap() {
        let down = m["address"] == stopped_addr.as_str();
        assert_eq!(m["healthy"], !down, "{m}");
    }
    assert_eq!(ep["healthy"], true, "the fleet serves: {ep}");
}
