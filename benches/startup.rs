//! Big flows and start-up: what a 1,000-state flow costs to load, and how
//! long `flowbot run` takes to serve with a store that already holds many
//! conversations.
//!
//! Run: `cargo bench --bench startup` (options: `-- --conversations N --runs R`;
//! `-- --write-flow DIR` only writes the generated flow there, to try it with
//! `flowbot validate` or an editor).
//!
//! The flow: 1,000 states (asks with validation, buttons, templates, `when:`
//! rules), 100 intents, spread over a main file and four included files.
//! 1. **Validate**: `Flow::load` in process (read, parse, validate, compile:
//!    one pass), the median of R runs; and `flowbot validate` as a command,
//!    from its start to its exit (the process's own start-up included).
//! 2. **Memory**: the bytes the loaded flow keeps, and the most the load held
//!    at once (this bench counts every allocation).
//! 3. **Ready to serve**: the `flowbot` binary started with `flowbot run` on
//!    that flow, its SQLite store holding N conversations (100,000 by
//!    default: 100 real ones made by the bot, then copied), a stand-in Qpien
//!    for its token; from the process's start to the first `200` of
//!    `/readyz`, the median of R starts. The same with an empty store, beside.

#![allow(missing_docs)]

mod support;
use support::{arg, big_flow, bot_config, post, stand_in};

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cap::Cap;
use flowbot::internals::flow::HandlerNames;
use flowbot::{Flow, Registry};
use serde_json::json;

/// Every allocation counted, to tell what the flow keeps.
#[global_allocator]
static ALLOC: Cap<std::alloc::System> = Cap::new(std::alloc::System, usize::MAX);

const FLOWBOT: &str = env!("CARGO_BIN_EXE_flowbot");

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

/// Makes `conversations` conversations in the store at `db` with the flow at
/// `flow`: 100 real ones (each has said hello and waits at the first
/// question), then copies of them under other ids, with their inbox rows.
async fn fill(flow: &Path, db: &Path, conversations: usize) {
    let created = Arc::new(AtomicUsize::new(0));
    let qpien = stand_in(created.clone()).await;
    let mut config = bot_config(qpien, db.parent().unwrap(), false);
    config.flow = flow.into();
    config.store.path = db.into();
    let running = flowbot::start(config, Registry::new()).await.unwrap();
    let url = format!("http://{}/webhook", running.addr());
    let http = support::Loader::default();
    let real = conversations.min(100);
    for c in 0..real {
        let hello = json!({"event": "NEW_INCOMING_MESSAGE", "data": {"_id": format!("m{c}"),
            "conversation": format!("c{c}"), "senderType": "user", "channelType": "LiveChat",
            "content": "hello"}});
        post(&http, &url, &hello).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while created.load(Ordering::Relaxed) < real && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    running.shutdown().await;
    let copies = conversations.div_ceil(real.max(1)).saturating_sub(1);
    let db = rusqlite::Connection::open(db).unwrap();
    let sessions: i64 = db
        .query_row("SELECT count(*) FROM sessions", [], |r| r.get(0))
        .unwrap();
    assert_eq!(
        sessions as usize, real,
        "each real conversation has its session"
    );
    db.execute_batch(&format!(
        "BEGIN;
         CREATE TEMP TABLE n(i INTEGER PRIMARY KEY);
         WITH RECURSIVE k(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM k WHERE i < {copies})
           INSERT INTO n SELECT i FROM k;
         INSERT INTO sessions (bot, conversation, data, due_at)
           SELECT bot, conversation || '-' || i, data, due_at FROM sessions, n;
         INSERT INTO inbox (bot, key, conversation, payload, received_at, done, attempts)
           SELECT bot, key || '-' || i, conversation || '-' || i, payload, received_at, done, attempts
           FROM inbox, n;
         COMMIT;"
    ))
    .unwrap();
    let sessions: i64 = db
        .query_row("SELECT count(*) FROM sessions", [], |r| r.get(0))
        .unwrap();
    println!("store: {sessions} conversations");
}

/// Starts `flowbot run` with the flow and store under `dir`, waits for its
/// `/readyz` to answer 200, stops it; the time from its start to ready.
async fn ready(dir: &Path, flow: &Path, db: &Path, qpien: &str) -> Duration {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = dir.join("flowbot.toml");
    std::fs::write(
        &config,
        format!(
            "flow = {flow:?}\n[qpien]\nendpoint = {qpien:?}\n[server]\nlisten = \"127.0.0.1:{port}\"\n[store]\npath = {db:?}\n[runtime]\nreload = false\n[log]\nlevel = \"warn\"\n",
        ),
    )
    .unwrap();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}/readyz");
    let started = Instant::now();
    let mut child = Command::new(FLOWBOT)
        .args(["run", "--config"])
        .arg(&config)
        .env("FLOWBOT_QPIEN__CLIENT_ID", "id")
        .env("FLOWBOT_QPIEN__CLIENT_SECRET", "secret")
        .env("FLOWBOT_SERVER__WEBHOOK_SECRET", support::SECRET)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let deadline = started + Duration::from_secs(30);
    let took = loop {
        if let Ok(r) = http.get(&url).send().await {
            if r.status().is_success() {
                break started.elapsed();
            }
        }
        assert!(
            Instant::now() < deadline,
            "flowbot run became ready within 30 s"
        );
        if let Ok(Some(status)) = child.try_wait() {
            panic!("flowbot run exited: {status}");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    // SIGTERM would be gentler; killing it is enough here: the store is
    // opened again by the next start.
    child.kill().ok();
    child.wait().ok();
    took
}

/// What [`Flow::weight`] estimates beside what each flow keeps (counted),
/// for the 1,000-state flow and the example flows: the flow cache of many
/// bots (`runtime.flow_cache_bytes`) is bounded by the estimate, so the
/// bench fails when they part by more than half.
fn weights(big: &Path, names: &HandlerNames) {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("flows");
    let mut files: Vec<_> = std::fs::read_dir(&examples)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files.insert(0, big.to_path_buf());
    for file in files {
        // Loaded once first: what the process sets up once for all flows
        // (the phone number metadata, say) is not the flow's.
        let names = HandlerNames {
            // The example flows' actions (examples/support_bot.rs).
            actions: vec!["lookup_order".into(), "find_order".into()],
            ..names.clone()
        };
        drop(Flow::load(&file, &names).unwrap());
        let before = ALLOC.allocated();
        let flow = Flow::load(&file, &names).unwrap();
        let kept = ALLOC.allocated() - before;
        let weight = flow.weight();
        let ratio = weight as f64 / kept as f64;
        println!(
            "weight of {}: estimated {} KiB, kept {} KiB ({ratio:.2})",
            file.file_name().unwrap().to_string_lossy(),
            weight / 1024,
            kept / 1024
        );
        assert!(
            (0.5..=2.0).contains(&ratio),
            "Flow::weight is off by more than half for {}",
            file.display()
        );
    }
}

fn main() {
    let write: String = arg("--write-flow", String::new());
    if !write.is_empty() {
        println!("{}", big_flow(Path::new(&write)).display());
        return;
    }
    let conversations = arg("--conversations", 100_000usize);
    let runs = arg("--runs", 5usize).max(1);
    let dir = std::env::temp_dir().join(format!("flowbot-startup-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let flow = big_flow(&dir.join("flow"));
    let names = HandlerNames::default();

    // 1. and 2. Loading in process, and what the flow keeps.
    let before = ALLOC.allocated();
    let kept = Flow::load(&flow, &names).expect("the 1,000-state flow loads");
    let kept_bytes = ALLOC.allocated() - before;
    let states = kept.state_names().count();
    let intents = kept.intent_count();
    drop(kept);
    let mut loads = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        let f = Flow::load(&flow, &names).unwrap();
        loads.push(t.elapsed());
        drop(f);
    }
    let mut validates = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        let out = Command::new(FLOWBOT)
            .arg("validate")
            .arg(&flow)
            .output()
            .unwrap();
        validates.push(t.elapsed());
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    println!("flow: {states} states, {intents} intents, 5 files");
    println!(
        "Flow::load (read, validate, compile), median of {runs}: {}",
        ms(median(loads))
    );
    println!(
        "flowbot validate (the command, start to exit), median of {runs}: {}",
        ms(median(validates))
    );
    println!("memory kept by the loaded flow: {} KiB", kept_bytes / 1024);
    weights(&flow, &names);

    // 3. Ready to serve.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let qpien = stand_in(Arc::new(AtomicUsize::new(0))).await;
        let empty = dir.join("empty.db");
        let full = dir.join("full.db");
        fill(&flow, &full, conversations).await;
        let mut cold = Vec::new();
        let mut warm = Vec::new();
        for _ in 0..runs {
            let _ = std::fs::remove_file(&empty);
            cold.push(ready(&dir, &flow, &empty, &qpien).await);
            warm.push(ready(&dir, &flow, &full, &qpien).await);
        }
        println!(
            "flowbot run to /readyz, median of {runs}: {} with an empty store, {} with {conversations} conversations stored",
            ms(median(cold)),
            ms(median(warm))
        );
    });
    let _ = std::fs::remove_dir_all(&dir);
}
