//! End to end: signed webhooks in over HTTP, the durable SQLite store, replies
//! out over HTTP to a stand-in Qpien on loopback. Everything runs on this
//! machine's 2 cores: the load generator, the bot and the stand-in.
//!
//! Run: `cargo bench --bench e2e` (options: `-- --conversations N --concurrency C
//! --rate R --normal --postgres --no-session-cache --alone`; `--postgres` uses
//! `FLOWBOT_TEST_POSTGRES_URL`; `--no-session-cache`: every turn reads its
//! session from the store; `--alone`: every message is written before its
//! turn, none with it).
//! 1. Throughput: N conversations each run the support script (11 turns) as
//!    fast as the bot acknowledges; turns/s counts until the last reply is out.
//! 2. Acknowledgement latency at a fixed rate R turns/s (open loop): p50, p99.
//!
//! The stand-in has no rate limit (Qpien's 100 calls a minute would cap the
//! run at 1.7 replies a second); the bot's own limiter is opened as wide.

#![allow(missing_docs)]

mod support;
use support::{arg, bot_config, open_loop, post, script, stand_in, summary};

/// As the `flowbot` binary does (src/main.rs).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flowbot::internals::qpien::Secret;

#[path = "../examples/support_bot.rs"]
#[allow(dead_code, unreachable_pub)]
mod support_bot;

async fn wait_for(created: &AtomicUsize, n: usize) {
    while created.load(Ordering::Relaxed) < n {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else to parse from it.
    let conversations = arg("--conversations", 2000usize);
    let rate = arg("--rate", 1000usize);
    let concurrency = arg("--concurrency", 64usize);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let created = Arc::new(AtomicUsize::new(0));
        let qpien = stand_in(created.clone()).await;
        let dir = std::env::temp_dir().join(format!("flowbot-e2e-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let normal = std::env::args().any(|a| a == "--normal");
        let mut config = bot_config(qpien, &dir, normal);
        if std::env::args().any(|a| a == "--postgres") {
            // The PostgreSQL store, in a fresh schema of FLOWBOT_TEST_POSTGRES_URL's database.
            let url = std::env::var("FLOWBOT_TEST_POSTGRES_URL")
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
            let schema = format!("bench_{}", std::process::id());
            config.store.backend = flowbot::internals::config::StoreBackend::Postgres;
            config.store.url = Secret::new(url);
            config.store.schema = schema;
        }
        if std::env::args().any(|a| a == "--no-session-cache") {
            config.store.session_cache_bytes = 0;
        }
        if std::env::args().any(|a| a == "--alone") {
            config.runtime.at_once_wait = Duration::ZERO;
        }
        let running = flowbot::start(config, support_bot::registry())
            .await
            .unwrap();
        let url = format!("http://{}/webhook", running.addr());
        let http = support::Loader::default();

        // One conversation first: how many replies a script makes.
        for m in script("warmup", 0) {
            post(&http, &url, &m).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let per_script = created.load(Ordering::Relaxed);
        println!("replies per conversation (after folding): {per_script}");

        // 1. Throughput, closed loop: `concurrency` senders (Qpien's delivery
        //    connections), each conversation sending its next message once the
        //    previous one is acknowledged.
        let base = created.load(Ordering::Relaxed);
        let started = Instant::now();
        let base_requests = support::REPLY_REQUESTS.load(Ordering::Relaxed);
        let slots = Arc::new(tokio::sync::Semaphore::new(concurrency));
        let tasks: Vec<_> = (0..conversations)
            .map(|c| {
                let http = http.clone();
                let url = url.clone();
                let slots = slots.clone();
                tokio::spawn(async move {
                    let _slot = slots.acquire_owned().await.unwrap();
                    for m in script(&format!("c{c}"), 1) {
                        post(&http, &url, &m).await;
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let acked = started.elapsed();
        wait_for(&created, base + per_script * conversations).await;
        let done = started.elapsed();
        let turns = conversations * 11;
        let requests = support::REPLY_REQUESTS.load(Ordering::Relaxed) - base_requests;
        println!(
            "throughput: {turns} turns ({conversations} conversations, {concurrency} at a time) acknowledged in {:.2}s, all replies out in {:.2}s: {:.0} turns/s, {:.1} replies a request",
            acked.as_secs_f64(),
            done.as_secs_f64(),
            turns as f64 / done.as_secs_f64(),
            (per_script * conversations) as f64 / requests.max(1) as f64
        );

        // 2. Acknowledgement latency at a fixed rate, open loop.
        let seconds = 5;
        let lat = open_loop(&http, &url, rate, seconds, "r").await;
        println!(
            "ack latency at {rate} turns/s for {seconds}s ({} requests): {}",
            lat.len(),
            summary(&lat)
        );
        running.shutdown().await;
        let _ = std::fs::remove_dir_all(&dir);
    });
}
