//! The ceiling: how close `flowbot run` comes to what this machine can do for
//! a webhook at all. The same closed-loop load generator (the support script,
//! signed deliveries, `--concurrency` at a time) runs, in one run, against:
//!
//! 1. a bare axum handler that only checks the signature and answers 200;
//! 2. a durable handler: the signature checked, the delivery written to the
//!    bot's own SQLite store (its writer thread, group commit, the same
//!    durability) and 200 once it is on disk: the least a webhook costs that
//!    is acknowledged only when it cannot be lost, and nothing else;
//! 3. the bot: `flowbot::start` with the support flow, the durable SQLite store
//!    and its replies sent to a stand-in Qpien (counted until the last is out).
//!
//! Each server is this same executable started again in a role (`--serve-bare`,
//! `--serve-durable`, `--serve-bot URL`), pinned with `taskset -c 1`, while the
//! generator and the stand-in run here; run it pinned to the other core:
//!
//! `taskset -c 0 cargo bench --bench ceiling` (options: `-- --conversations N
//! --concurrency C --normal --no-insights --no-session-cache --alone --batch N
//! --in-flight K`; `--normal` runs the durable handler and the bot with
//! `durability = "normal"`; `--batch 1` sends each reply in a request of its
//! own; the last three without the conversation event log, without the
//! sessions kept in memory, or with every message written alone before its
//! turn (`runtime.at_once_wait = "0s"`), to measure what each costs or saves).
//! Without `taskset` on the machine, the servers run unpinned and it says so.
//!
//! Besides turns a second, it prints each server's CPU time a turn (its
//! threads' user and system time from `/proc`), and for the two that write,
//! their store thread's share of it: on a machine whose speed drifts from run
//! to run, the ratio of the two moves less than the rates.

#![allow(missing_docs)]

mod support;
use support::{arg, bot_config, post, stand_in, SECRET};

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::routing;
use axum::Router;
use flowbot::internals::qpien::webhook::verify;
use std::io::BufRead;

#[path = "../examples/support_bot.rs"]
#[allow(dead_code, unreachable_pub)]
mod support_bot;

/// Whether a delivery carries Qpien's signature of its body.
fn signed(headers: &HeaderMap, body: &[u8]) -> bool {
    let sig = headers
        .get("X-Qpien-Signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    verify(SECRET.as_bytes(), body, sig)
}

/// Serves the bare handler: the signature checked, 200.
async fn serve_bare() {
    let app = Router::new().route(
        "/webhook",
        routing::post(|headers: HeaderMap, body: Bytes| async move {
            if signed(&headers, &body) {
                StatusCode::OK
            } else {
                StatusCode::UNAUTHORIZED
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    println!("{}", listener.local_addr().unwrap());
    axum::serve(listener, app).await.unwrap();
}

/// Serves the durable handler: the signature checked, the delivery written
/// as a message to a SQLite store (as the bot's, `--normal` as there), 200
/// once the write is committed; until the generator closes our stdin.
async fn serve_durable(normal: bool) {
    use flowbot::internals::store::{
        Durability, NewInbound, SqliteOptions, SqliteStore, StateStore,
    };
    let dir = std::env::temp_dir().join(format!("flowbot-ceiling-durable-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let options = SqliteOptions {
        durability: if normal {
            Durability::Normal
        } else {
            Durability::Full
        },
        ..SqliteOptions::default()
    };
    let store = Arc::new(SqliteStore::open(dir.join("flowbot.db"), options).unwrap());
    let keys = Arc::new(AtomicUsize::new(0));
    let app = Router::new().route(
        "/webhook",
        routing::post(move |headers: HeaderMap, body: Bytes| {
            let (store, keys) = (store.clone(), keys.clone());
            async move {
                if !signed(&headers, &body) {
                    return StatusCode::UNAUTHORIZED;
                }
                let item = NewInbound {
                    key: keys.fetch_add(1, Ordering::Relaxed).to_string(),
                    conversation: String::new(),
                    payload: body.to_vec(),
                    received_at: flowbot::internals::time::now(),
                };
                match store.accept(item).await {
                    Ok(_) => StatusCode::OK,
                    // The generator stops on the 500; the reason is here.
                    Err(e) => {
                        eprintln!("durable handler: the write failed: {e}");
                        StatusCode::INTERNAL_SERVER_ERROR
                    }
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    println!("{}", listener.local_addr().unwrap());
    axum::serve(listener, app)
        .with_graceful_shutdown(stdin_closed())
        .await
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Serves the bot, its replies going to the stand-in at `qpien`.
async fn serve_bot(qpien: String, normal: bool, no_log: bool, no_cache: bool, alone: bool) {
    let dir = std::env::temp_dir().join(format!("flowbot-ceiling-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut config = bot_config(qpien, &dir, normal);
    // `--no-insights`: without the conversation event log, to see its cost.
    config.insights.log = !no_log;
    // `--no-session-cache`: every turn reads its session from the file.
    if no_cache {
        config.store.session_cache_bytes = 0;
    }
    // `--alone`: every message written before its turn, none with it.
    if alone {
        config.runtime.at_once_wait = Duration::ZERO;
    }
    let running = flowbot::start(config, support_bot::registry())
        .await
        .unwrap();
    println!("{}", running.addr());
    stdin_closed().await;
    running.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Until the generator closes our stdin (how it stops a server that writes).
async fn stdin_closed() {
    let _ = tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)
    })
    .await;
}

/// Starts this executable in a role, pinned to core 1 when `taskset` is
/// there; returns it and the address it printed.
fn spawn(role: &[String]) -> (std::process::Child, String, bool) {
    let exe = std::env::current_exe().unwrap();
    let pinned = std::process::Command::new("taskset")
        .arg("-V")
        .output()
        .is_ok();
    let mut cmd = if pinned {
        let mut c = std::process::Command::new("taskset");
        c.arg("-c").arg("1").arg(&exe);
        c
    } else {
        std::process::Command::new(&exe)
    };
    let mut child = cmd
        .args(role)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut addr = String::new();
    out.read_line(&mut addr).unwrap();
    (child, addr.trim().to_owned(), pinned)
}

/// The CPU time a process has used so far (its threads' user and system
/// time, from `/proc`), where the system tells it.
fn cpu_of(pid: u32) -> Option<Duration> {
    cpu_in(&format!("/proc/{pid}/stat"))
}

/// The CPU time of `pid`'s thread named `name` so far (the store's writer:
/// `flowbot-sqlite`), where the system tells it.
fn thread_cpu_of(pid: u32, name: &str) -> Option<Duration> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
        .find(|t| std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == name))
        .and_then(|t| cpu_in(&t.path().join("stat").to_string_lossy()))
}

/// The user and system time in a `/proc` `stat` file.
fn cpu_in(path: &str) -> Option<Duration> {
    let stat = std::fs::read_to_string(path).ok()?;
    // The fields after the command's name (which may hold spaces), from 3.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // Linux counts in clock ticks of 1/100 s (USER_HZ) on every platform it
    // runs on.
    Some(Duration::from_millis(ticks * 10))
}

/// Microseconds of `pid`'s CPU per turn between two readings.
fn per_turn(before: Option<Duration>, after: Option<Duration>, turns: usize) -> String {
    match (before, after) {
        (Some(b), Some(a)) => format!("{:.0} µs", (a - b).as_secs_f64() * 1e6 / turns as f64),
        _ => "unknown (no /proc)".into(),
    }
}

/// Runs the support script on `conversations`, `concurrency` at a time;
/// the time until every delivery was acknowledged.
async fn load(url: &str, conversations: usize, concurrency: usize, tag: &str) -> Duration {
    let http = support::Loader::default();
    let slots = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let started = Instant::now();
    let tasks: Vec<_> = (0..conversations)
        .map(|c| {
            let (http, url, slots) = (http.clone(), url.to_owned(), slots.clone());
            let conversation = format!("{tag}{c}");
            tokio::spawn(async move {
                let _slot = slots.acquire_owned().await.unwrap();
                for m in support::script(&conversation, 0) {
                    post(&http, &url, &m).await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    started.elapsed()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    if args.iter().any(|a| a == "--serve-bare") {
        return rt.block_on(serve_bare());
    }
    if args.iter().any(|a| a == "--serve-durable") {
        return rt.block_on(serve_durable(args.iter().any(|a| a == "--normal")));
    }
    let no_log = args.iter().any(|a| a == "--no-insights");
    let no_cache = args.iter().any(|a| a == "--no-session-cache");
    let alone = args.iter().any(|a| a == "--alone");
    if let Some(i) = args.iter().position(|a| a == "--serve-bot") {
        let normal = args.iter().any(|a| a == "--normal");
        return rt.block_on(serve_bot(
            args[i + 1].clone(),
            normal,
            no_log,
            no_cache,
            alone,
        ));
    }
    let conversations = arg("--conversations", 2000usize);
    let concurrency = arg("--concurrency", 64usize);
    let normal = args.iter().any(|a| a == "--normal");
    rt.block_on(async move {
        let turns = conversations * 11;
        // 1. The bare handler.
        let (mut bare, addr, pinned) = spawn(&["--serve-bare".into()]);
        let url = format!("http://{addr}/webhook");
        load(&url, 50, concurrency, "w").await;
        let cpu = cpu_of(bare.id());
        let took = load(&url, conversations, concurrency, "c").await;
        let bare_cpu = per_turn(cpu, cpu_of(bare.id()), turns);
        let ceiling = turns as f64 / took.as_secs_f64();
        bare.kill().ok();
        bare.wait().ok();
        // 2. The durable handler.
        let mut role = vec!["--serve-durable".to_string()];
        if normal {
            role.push("--normal".into());
        }
        let (mut durable, addr, _) = spawn(&role);
        let url = format!("http://{addr}/webhook");
        load(&url, 50, concurrency, "w").await;
        let cpu = cpu_of(durable.id());
        let store_cpu = thread_cpu_of(durable.id(), "flowbot-sqlite");
        let took = load(&url, conversations, concurrency, "c").await;
        let durable_cpu = per_turn(cpu, cpu_of(durable.id()), turns);
        let durable_store_cpu =
            per_turn(store_cpu, thread_cpu_of(durable.id(), "flowbot-sqlite"), turns);
        let durable_rate = turns as f64 / took.as_secs_f64();
        drop(durable.stdin.take());
        let _ = tokio::task::spawn_blocking(move || durable.wait()).await;
        // 3. The bot, replies out to the stand-in.
        let created = Arc::new(AtomicUsize::new(0));
        let qpien = stand_in(created.clone()).await;
        let mut role = vec!["--serve-bot".to_string(), qpien];
        if normal {
            role.push("--normal".into());
        }
        if no_log {
            role.push("--no-insights".into());
        }
        if no_cache {
            role.push("--no-session-cache".into());
        }
        if alone {
            role.push("--alone".into());
        }
        // How replies share requests (`--batch N --in-flight K`), as given.
        for flag in ["--batch", "--in-flight"] {
            if let Some(i) = args.iter().position(|a| a == flag) {
                role.extend(args[i..].iter().take(2).cloned());
            }
        }
        let (mut bot, addr, _) = spawn(&role);
        let url = format!("http://{addr}/webhook");
        load(&url, 50, concurrency, "w").await;
        while created.load(Ordering::Relaxed) < 50 * 11 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let base = created.load(Ordering::Relaxed);
        let base_requests = support::REPLY_REQUESTS.load(Ordering::Relaxed);
        let cpu = cpu_of(bot.id());
        let store_cpu = thread_cpu_of(bot.id(), "flowbot-sqlite");
        let started = Instant::now();
        load(&url, conversations, concurrency, "c").await;
        // The support script folds to 11 createMessage calls per conversation.
        let deadline = Instant::now() + Duration::from_secs(120);
        while created.load(Ordering::Relaxed) < base + conversations * 11 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        assert!(
            created.load(Ordering::Relaxed) >= base + conversations * 11,
            "every reply reached the stand-in"
        );
        let bot_rate = turns as f64 / started.elapsed().as_secs_f64();
        let bot_cpu = per_turn(cpu, cpu_of(bot.id()), turns);
        let store_cpu = per_turn(store_cpu, thread_cpu_of(bot.id(), "flowbot-sqlite"), turns);
        let requests = support::REPLY_REQUESTS.load(Ordering::Relaxed) - base_requests;
        let replies = created.load(Ordering::Relaxed) - base;
        // Its stdin closed, the bot shuts down.
        drop(bot.stdin.take());
        let _ = tokio::task::spawn_blocking(move || bot.wait()).await;
        println!(
            "servers {}; {turns} turns ({conversations} conversations, {concurrency} at a time); durability {}; event log {}; sessions kept {}; messages written {}; replies {} a request, {} under way",
            if pinned { "pinned to core 1 (taskset -c 1)" } else { "not pinned (no taskset)" },
            if normal { "normal" } else { "full" },
            if no_log { "off" } else { "on" },
            if no_cache { "off" } else { "on" },
            if alone { "alone" } else { "with their turn when it runs at once" },
            arg("--batch", flowbot::internals::qpien::BatchConfig::default().max),
            arg("--in-flight", flowbot::internals::qpien::BatchConfig::default().in_flight),
        );
        println!("bare axum handler (signature, 200): {ceiling:.0} turns/s, {bare_cpu} of CPU a turn");
        println!("durable handler (signature, the delivery written to SQLite, 200): {durable_rate:.0} turns/s, {durable_cpu} of CPU a turn ({durable_store_cpu} of it the store's thread)");
        println!("flowbot run (SQLite, replies out): {bot_rate:.0} turns/s, {bot_cpu} of CPU a turn ({store_cpu} of it the store's thread), {:.1} replies a request", replies as f64 / requests.max(1) as f64);
        println!("flowbot's share of the ceiling: {:.0}%", 100.0 * bot_rate / ceiling);
        println!("flowbot's share of the durable handler's rate: {:.0}%", 100.0 * bot_rate / durable_rate);
    });
}
