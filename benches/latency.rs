//! Latency, end to end: how long a customer waits.
//!
//! Run: `cargo bench --bench latency` (options: `-- --requests R --window-ms W
//! --windows N --rate T --seconds S`).
//!
//! 1. **Reply latency** at 10% and at 50% of the request budget: from a
//!    signed webhook leaving the load generator to the `createMessage` it
//!    causes reaching the simulator (which enforces the budget as Qpien does:
//!    a fixed window, 429 past it), the bot pacing its calls with its client's
//!    limiter (`[qpien.rate_limit]`, the same budget). Each delivery is the
//!    first message of a new conversation (one reply each), spread evenly
//!    over N windows. The budget is Qpien's 100 a minute scaled in requests
//!    and time (1,000 per 2 s by default) so that a run takes seconds and
//!    yields thousands of samples; the pacing does not depend on the scale.
//! 2. **Acknowledgement latency** at T turns/s (1,000 by default) for S
//!    seconds, open loop, with `durability = full` and then `normal`: from the
//!    delivery's send to its 200, the support script's turns against a
//!    stand-in Qpien with no limit.
//!
//! Everything shares this machine's 2 cores: the generator, the bot and the
//! simulator.

#![allow(missing_docs)]

mod support;
use support::{arg, bot_config, open_loop, post, stand_in, summary};

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::collections::HashMap;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flowbot::internals::qpien::{RateLimitConfig, Secret};
use flowbot::internals::sim::{self, SimConfig};
use serde_json::{json, Value};

#[path = "../examples/support_bot.rs"]
#[allow(dead_code, unreachable_pub)]
mod support_bot;

/// The first message of conversation `id`: one reply.
fn hello(id: &str) -> Value {
    json!({"event": "NEW_INCOMING_MESSAGE", "data": {"_id": format!("{id}-m"), "conversation": id,
        "senderType": "user", "channelType": "LiveChat", "content": "hello"}})
}

fn http() -> support::Loader {
    support::Loader::default()
}

/// Replies at `share` of a budget of `requests` per `window`, for `windows`
/// windows: latencies from each webhook's send to its reply reaching the
/// simulator, sorted, and how many calls the simulator refused (429).
async fn replies(
    requests: u32,
    window: Duration,
    windows: u32,
    share: f64,
) -> (Vec<Duration>, u64) {
    let sim = sim::start(SimConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        rate_limit: Some((requests, window)),
        auto_create_conversations: true,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let dir = std::env::temp_dir().join(format!("flowbot-latency-{}-{share}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut config = bot_config(sim.graphql_url(), &dir, false);
    let d = SimConfig::default();
    config.qpien.client_id = Secret::new(d.client_id);
    config.qpien.client_secret = Secret::new(d.client_secret);
    config.qpien.rate_limit = RateLimitConfig {
        requests,
        per: window,
        default_reset: window,
    };
    let running = flowbot::start(config, support_bot::registry())
        .await
        .unwrap();
    let url = format!("http://{}/webhook", running.addr());
    let http = http();
    // One conversation first (the token, the first turn), then a fresh window.
    post(&http, &url, &hello("warmup")).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while sim.state().count("createMessage", 200) == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        sim.state().count("createMessage", 200),
        1,
        "the warm-up was answered"
    );
    tokio::time::sleep(window + window / 10).await;

    let rate = f64::from(requests) * share / window.as_secs_f64();
    let count = (rate * window.as_secs_f64() * f64::from(windows)) as usize;
    let gap = Duration::from_secs_f64(1.0 / rate);
    let mut sent = HashMap::with_capacity(count);
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(count);
    for i in 0..count {
        tokio::time::sleep_until((start + gap * i as u32).into()).await;
        let id = format!("s{i}");
        sent.insert(id.clone(), Instant::now());
        let (http, url) = (http.clone(), url.clone());
        tasks.push(tokio::spawn(
            async move { post(&http, &url, &hello(&id)).await },
        ));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let deadline = Instant::now() + window * 4;
    while sim.state().count("createMessage", 200) < count + 1 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut lat = Vec::with_capacity(count);
    for seen in sim.state().requests() {
        if seen.operation != "createMessage" || seen.status != 200 {
            continue;
        }
        let conversation = seen.variables["input"]["conversationId"]
            .as_str()
            .unwrap_or("");
        if let Some(at) = sent.remove(conversation) {
            lat.push(seen.at.into_std().saturating_duration_since(at));
        }
    }
    assert!(
        sent.is_empty(),
        "{} replies never reached the simulator",
        sent.len()
    );
    let refused = sim.state().stats().rate_limited;
    assert_eq!(refused, 0, "the bot kept within the budget");
    running.shutdown().await;
    sim.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    lat.sort();
    (lat, refused)
}

/// Acknowledgement latencies at `rate` turns/s for `seconds`, sorted.
async fn acks(rate: usize, seconds: usize, normal: bool) -> Vec<Duration> {
    let qpien = stand_in(Arc::new(AtomicUsize::new(0))).await;
    let dir = std::env::temp_dir().join(format!("flowbot-ack-{}-{normal}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let running = flowbot::start(bot_config(qpien, &dir, normal), support_bot::registry())
        .await
        .unwrap();
    let url = format!("http://{}/webhook", running.addr());
    let http = http();
    // A second of the same load first: connections, the store's first pages.
    open_loop(&http, &url, rate, 1, "w").await;
    let lat = open_loop(&http, &url, rate, seconds, "r").await;
    running.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    lat
}

fn main() {
    let requests = arg("--requests", 1000u32);
    let window = Duration::from_millis(arg("--window-ms", 2000u64));
    let windows = arg("--windows", 3u32);
    let rate = arg("--rate", 1000usize);
    let seconds = arg("--seconds", 5usize);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!(
        "budget: {requests} requests per {window:?} (Qpien's 100 a minute, scaled), {windows} windows at each load"
    );
    for share in [0.1, 0.5] {
        let (lat, refused) = rt.block_on(replies(requests, window, windows, share));
        println!(
            "reply latency at {:.0}% of the budget ({} replies): {}; {refused} x 429",
            share * 100.0,
            lat.len(),
            summary(&lat)
        );
    }
    for normal in [false, true] {
        let lat = rt.block_on(acks(rate, seconds, normal));
        println!(
            "ack latency at {rate} turns/s for {seconds}s, durability {} ({} deliveries): {}",
            if normal { "normal" } else { "full" },
            lat.len(),
            summary(&lat)
        );
    }
}
