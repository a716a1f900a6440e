//! The shared request budget, measured against the simulator's rate limit (a
//! fixed window with 429s, as Qpien's): replies leave at once while the budget
//! is ample, and under overload the budget is used to the full without a 429.
//!
//! Run: `cargo bench --bench ratelimit` (options: `-- --requests R --window-ms W`).
//! The budget is scaled down in time (100 requests per 2 s by default, the same
//! algorithm as Qpien's 100 a minute) so that the run takes seconds.
//! 1. Light load: replies at 10% and at 20% of the budget, one at a time from
//!    many conversations; latency from the send to Qpien's answer, p50 / p99.
//! 2. Overload: three times the budget offered for five windows; 429s received
//!    and the share of the budget used.

#![allow(missing_docs)]

mod support;
use support::{arg, percentile};

use std::time::{Duration, Instant};

use flowbot::internals::qpien::{
    plan_replies, QpienClient, QpienConfig, RateLimitConfig, RetryConfig, Secret,
};
use flowbot::internals::sim::{self, SimConfig};
use flowbot::{Channel, Outgoing};

async fn setup(requests: u32, window: Duration) -> (sim::RunningSim, QpienClient) {
    let sim = sim::start(SimConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        rate_limit: Some((requests, window)),
        auto_create_conversations: true,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let d = SimConfig::default();
    let client = QpienClient::new(QpienConfig {
        endpoint: sim.graphql_url(),
        client_id: Secret::new(d.client_id),
        client_secret: Secret::new(d.client_secret),
        rate_limit: RateLimitConfig {
            requests,
            per: window,
            default_reset: window,
        },
        retry: RetryConfig {
            max_attempts: 10,
            min_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(200),
        },
        ..QpienConfig::default()
    })
    .unwrap();
    client.check_token().await.unwrap();
    (sim, client)
}

fn reply(client: &QpienClient, i: usize) -> flowbot::internals::qpien::OutboundMessage {
    plan_replies(
        client.config(),
        &format!("c{}", i % 500),
        Channel::LiveChat,
        &format!("m{i}"),
        &[Outgoing::text(format!("reply {i}"))],
    )
    .remove(0)
}

/// Replies at `share` of the budget for two windows; latencies of each send.
async fn light(requests: u32, window: Duration, share: f64) -> Vec<Duration> {
    let (sim, client) = setup(requests, window).await;
    // Start in a fresh window, with the token's request behind us.
    tokio::time::sleep(window + window / 10).await;
    let rate = f64::from(requests) * share / window.as_secs_f64();
    let count = (rate * window.as_secs_f64() * 2.0) as usize;
    let gap = Duration::from_secs_f64(1.0 / rate);
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::new();
    for i in 0..count {
        tokio::time::sleep_until(start + gap * i as u32).await;
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            client.send(&reply(&client, i)).await.unwrap();
            t.elapsed()
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.push(t.await.unwrap());
    }
    assert_eq!(sim.state().stats().rate_limited, 0);
    sim.shutdown().await;
    lat.sort();
    lat
}

/// Three times the budget offered for `windows` windows.
async fn overload(requests: u32, window: Duration, windows: u32) -> (u64, f64) {
    let (sim, client) = setup(requests, window).await;
    tokio::time::sleep(window + window / 10).await;
    let before = sim.state().stats();
    let offered = requests as usize * 3 * windows as usize;
    let start = Instant::now();
    let deadline = start + window * windows;
    let mut tasks = Vec::new();
    for i in 0..offered {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let m = reply(&client, i);
            tokio::select! {
                r = client.send(&m) => r.is_ok(),
                _ = tokio::time::sleep_until(deadline.into()) => false,
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let after = sim.state().stats();
    let created = after.created - before.created;
    let used = created as f64 / f64::from(requests * windows);
    sim.shutdown().await;
    (after.rate_limited - before.rate_limited, used)
}

fn main() {
    let requests = arg("--requests", 100u32);
    let window = Duration::from_millis(arg("--window-ms", 2000u64));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    println!("budget: {requests} requests per {window:?} (Qpien's 100 a minute, scaled in time)");
    for share in [0.1, 0.2] {
        let lat = rt.block_on(light(requests, window, share));
        println!(
            "light load at {:.0}% of the budget: {} replies, latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            share * 100.0,
            lat.len(),
            percentile(&lat, 0.5).as_secs_f64() * 1000.0,
            percentile(&lat, 0.99).as_secs_f64() * 1000.0,
            lat.last().copied().unwrap_or_default().as_secs_f64() * 1000.0
        );
    }
    let (rejected, used) = rt.block_on(overload(requests, window, 5));
    println!(
        "overload (3x the budget for 5 windows): {rejected} x 429, {:.1}% of the budget used",
        used * 100.0
    );
}
