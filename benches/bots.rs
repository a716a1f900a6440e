//! Many bots in one process (`[[bots]]`): what an idle bot costs in
//! resident memory, how long the process takes to serve them all, and turns/s
//! when all of them receive load at once.
//!
//! Run: `cargo bench --bench bots` (options: `-- --bots N --conversations C
//! --concurrency K --normal --store postgres --flow-cache-bytes B`; `--normal` for `durability =
//! "normal"`; `--store postgres` for PostgreSQL at `FLOWBOT_TEST_POSTGRES_URL`,
//! in a schema of its own, counting the process's connections).
//!
//! The server is this executable started again as a bot author's binary
//! would be (`flowbot::main` with the support flow's action registered, `run
//! --config FILE`), its `flowbot.toml` naming N bots, each with the support
//! flow, its own webhook path, its rows in the one SQLite file, its Qpien
//! client, queues and timers;
//! replies go to a stand-in Qpien (one per process, unlimited).
//! 1. **Start-up**: from the process's start to every bot ready in the root
//!    `/readyz` (up to 100 bots: each has its store open and a token; past
//!    100 the root checks the store once and no bot has failed its checks).
//! 2. **Memory per idle bot**: the process's resident memory (`VmRSS`) with
//!    N bots, minus that with one, over N - 1, both measured a second after
//!    all were ready.
//! 3. **Turns/s, all at once**: C conversations run the support script
//!    (11 turns), conversation c on bot c mod N, K at a time; counted until
//!    the last reply reached the stand-in.
//! 4. **A flooded bot**: the reply latency of the other bots (a new
//!    conversation's greeting, from the webhook's send to the reply reaching
//!    the stand-in; P probes at R a second over up to 10 bots), quiet, then
//!    while bot 0 is sent the support script at 100 times the probes' rate
//!    (open loop): the others' p99 should stay within 2x of quiet
//!    (`--probes P --probe-rate R`, 400 and 50 by default: bot 0 is sent
//!    5,000 messages a second).

#![allow(missing_docs)]

mod support;
use support::{arg, percentile, post, script, stand_in_watching, Probes, SECRET};

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

#[path = "../examples/support_bot.rs"]
#[allow(dead_code, unreachable_pub)]
mod support_bot;

/// Writes the configuration of `bots` bots under `dir`; returns its path.
fn config(
    dir: &Path,
    bots: usize,
    qpien: &str,
    port: u16,
    normal: bool,
    schema: Option<&str>,
) -> std::path::PathBuf {
    // `FLOWS` flow files, each the support flow under a name and greeting
    // of its own (so each is compiled on its own); bot b runs flow b mod
    // FLOWS.
    let support =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/flows/support.yaml"))
            .unwrap();
    let flows = flows().min(bots).max(1);
    let paths: Vec<std::path::PathBuf> = (0..flows)
        .map(|f| {
            let path = dir.join(format!("support-{f}.yaml"));
            let text = support
                .replacen("name: support", &format!("name: support_{f}"), 1)
                .replacen(
                    "Hi! How can we help?",
                    &format!("Hi! How can we help? ({f})"),
                    1,
                );
            std::fs::write(&path, text).unwrap();
            path
        })
        .collect();
    let mut toml = format!(
        "[qpien]\nendpoint = {qpien:?}\nwhatsapp_operation = \"create_message\"\n\
         [qpien.rate_limit]\nrequests = 10000000\nper = \"1s\"\n\
         [server]\nlisten = \"127.0.0.1:{port}\"\n\
         [store]\npath = {:?}\ndurability = \"{}\"\n\
         [runtime]\nreload = false\nqueue_capacity = 1000000\nflow_cache_bytes = {}\n\
         [log]\nlevel = \"warn\"\n",
        dir.join("flowbot.db"),
        if normal { "normal" } else { "full" },
        arg("--flow-cache-bytes", 256u64 << 20),
    );
    if let Some(schema) = schema {
        toml = toml.replace(
            "[store]\n",
            &format!("[store]\nbackend = \"postgres\"\nschema = \"{schema}\"\n"),
        );
    }
    for b in 0..bots {
        let flow = &paths[b % flows];
        toml.push_str(&format!("[[bots]]\nname = \"b{b}\"\nflow = {flow:?}\n"));
    }
    let path = dir.join("flowbot.toml");
    std::fs::write(&path, toml).unwrap();
    path
}

/// Starts the server with `bots` bots; returns it, its address and the time
/// until every bot was ready.
async fn serve(
    dir: &Path,
    bots: usize,
    qpien: &str,
    normal: bool,
    postgres: Option<(&str, &str)>,
) -> (Child, String, Duration) {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = config(dir, bots, qpien, port, normal, postgres.map(|p| p.1));
    let started = Instant::now();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["run", "--config"])
        .arg(&config)
        .env("FLOWBOT_STORE__URL", postgres.map_or("", |p| p.0))
        .env("FLOWBOT_QPIEN__CLIENT_ID", "id")
        .env("FLOWBOT_QPIEN__CLIENT_SECRET", "secret")
        .env("FLOWBOT_SERVER__WEBHOOK_SECRET", SECRET)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let addr = format!("127.0.0.1:{port}");
    let url = format!("http://{addr}/readyz");
    let deadline = started + Duration::from_secs(60);
    let took = loop {
        if let Ok(r) = http.get(&url).send().await {
            if let Ok(body) =
                serde_json::from_slice::<serde_json::Value>(&r.bytes().await.unwrap_or_default())
            {
                // Past 100 bots the root runs no bot's checks: a bot's
                // `ready` is then its last checks', `null` before any.
                let all = body["ready"] == true
                    && body["bots"].as_object().is_some_and(|b| {
                        b.len() == bots && b.values().all(|v| v["ready"] != false)
                    });
                if all {
                    break started.elapsed();
                }
            }
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the server exited: {status}");
        }
        assert!(Instant::now() < deadline, "{bots} bots ready within 60 s");
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    (child, addr, took)
}

/// The resident memory of process `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn stop(mut child: Child) {
    // SIGTERM, so the bots stop as in production; then wait.
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let _ = child.wait();
}

/// How many distinct flow files the bots run (`--flows`, default 100).
fn flows() -> usize {
    arg("--flows", 100usize)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).is_some_and(|a| a == "run") {
        // The server: a bot author's binary.
        std::process::exit(match flowbot::main(support_bot::registry()) {
            c if c == std::process::ExitCode::SUCCESS => 0,
            _ => 1,
        });
    }
    let bots = arg("--bots", 100usize).max(2);
    let conversations = arg("--conversations", 2000usize);
    let concurrency = arg("--concurrency", 64usize);
    let normal = args.iter().any(|a| a == "--normal");
    let url = std::env::var("FLOWBOT_TEST_POSTGRES_URL").unwrap_or_default();
    let postgres = args
        .windows(2)
        .any(|w| w[0] == "--store" && w[1] == "postgres")
        .then(|| {
            assert!(
                !url.is_empty(),
                "--store postgres reads FLOWBOT_TEST_POSTGRES_URL"
            );
            (url.as_str(), format!("bench_bots_{}", std::process::id()))
        });
    let pg = postgres.as_ref().map(|(u, s)| (*u, s.as_str()));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = std::env::temp_dir().join(format!("flowbot-bots-{}", std::process::id()));
    rt.block_on(async {
        let created = Arc::new(AtomicUsize::new(0));
        let probes = Arc::new(Probes::default());
        let qpien = stand_in_watching(created.clone(), probes.clone()).await;

        // One bot, for the process's own share.
        let (one, one_addr, one_start) = serve(&dir.join("one"), 1, &qpien, normal, pg).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let rss_one = rss_kib(one.id());
        // The same load on one bot, in the same run: what all bots together
        // are compared with.
        let rate_one = all_at_once(&one_addr, 1, conversations, concurrency, &created).await;
        stop(one);

        // N bots.
        let (many, addr, many_start) = serve(&dir.join("many"), bots, &qpien, normal, pg).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let rss_many = rss_kib(many.id());
        // PostgreSQL: the process's connections, idle and at their most under load.
        let connections = match pg {
            Some((url, _)) => Some(Connections::watch(url).await),
            None => None,
        };
        let per_bot = (rss_many.saturating_sub(rss_one)) as f64 / (bots - 1) as f64;

        // All at once: conversation c on bot c mod N.
        let rate = all_at_once(&addr, bots, conversations, concurrency, &created).await;
        let rss_loaded = rss_kib(many.id());
        let flood = flooded(&addr, bots, &probes).await;
        let connections = match connections {
            Some(c) => Some(c.finish().await),
            None => None,
        };
        stop(many);

        match pg {
            None => println!(
                "{bots} bots (the support flow each, SQLite with durability {}, its own Qpien client), unpinned",
                if normal { "normal" } else { "full" }
            ),
            Some(_) => println!(
                "{bots} bots (the support flow each, PostgreSQL, its own Qpien client), unpinned"
            ),
        }
        println!(
            "ready: 1 bot in {:.0} ms, {bots} bots in {:.0} ms",
            one_start.as_secs_f64() * 1e3,
            many_start.as_secs_f64() * 1e3
        );
        println!(
            "resident: 1 bot {rss_one} KiB, {bots} idle bots {rss_many} KiB: {per_bot:.0} KiB per idle bot"
        );
        println!(
            "all at once: {} turns ({conversations} conversations over {bots} bots, {concurrency} at a time): {rate:.0} turns/s; resident after: {rss_loaded} KiB",
            conversations * 11
        );
        println!(
            "one bot: {rate_one:.0} turns/s with the same load in the same run; all bots at {:.0}% of it; {} distinct flow files",
            rate / rate_one * 100.0,
            flows().min(bots)
        );
        let (quiet, loud, flood_rate) = flood;
        println!(
            "a flooded bot: the others' reply p99 {:.1} ms quiet, {:.1} ms while bot b0 is sent {flood_rate:.0} messages/s ({:.2}x; p50 {:.1} ms and {:.1} ms)",
            percentile(&quiet, 0.99).as_secs_f64() * 1e3,
            percentile(&loud, 0.99).as_secs_f64() * 1e3,
            percentile(&loud, 0.99).as_secs_f64() / percentile(&quiet, 0.99).as_secs_f64(),
            percentile(&quiet, 0.5).as_secs_f64() * 1e3,
            percentile(&loud, 0.5).as_secs_f64() * 1e3,
        );
        if let Some((idle, most)) = connections {
            println!(
                "connections to PostgreSQL: {idle} with {bots} idle bots, at most {most} under load (store.max_connections = 16, and one that listens)"
            );
        }
        if let Some((url, schema)) = pg {
            let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.unwrap();
            tokio::spawn(conn);
            let _ = client
                .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                .await;
        }
    });
    let _ = std::fs::remove_dir_all(&dir);
}

/// Counts the connections named `flowbot` (the server's) while the load runs.
struct Connections {
    idle: i64,
    most: Arc<std::sync::atomic::AtomicI64>,
    done: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Connections {
    async fn watch(url: &str) -> Connections {
        let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        let count = "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'flowbot'";
        let idle: i64 = client.query_one(count, &[]).await.unwrap().get(0);
        let most = Arc::new(std::sync::atomic::AtomicI64::new(idle));
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let task = {
            let (most, done) = (most.clone(), done.clone());
            tokio::spawn(async move {
                while !done.load(Ordering::Relaxed) {
                    if let Ok(row) = client.query_one(count, &[]).await {
                        most.fetch_max(row.get::<_, i64>(0), Ordering::Relaxed);
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        };
        Connections {
            idle,
            most,
            done,
            task,
        }
    }

    async fn finish(self) -> (i64, i64) {
        self.done.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        (self.idle, self.most.load(Ordering::Relaxed))
    }
}

/// Runs `conversations` support scripts against the process at `addr`,
/// conversation c on bot c mod `bots`, `concurrency` at a time: turns/s
/// until the last reply reached the stand-in.
async fn all_at_once(
    addr: &str,
    bots: usize,
    conversations: usize,
    concurrency: usize,
    created: &Arc<AtomicUsize>,
) -> f64 {
    let http = support::Loader::default();
    let slots = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let base = created.load(Ordering::Relaxed);
    let started = Instant::now();
    let tasks: Vec<_> = (0..conversations)
        .map(|c| {
            let (http, slots) = (http.clone(), slots.clone());
            let url = format!("http://{addr}/bots/b{}/webhook", c % bots);
            let conversation = format!("{addr}-c{c}");
            tokio::spawn(async move {
                let _slot = slots.acquire_owned().await.unwrap();
                for m in script(&conversation, 0) {
                    post(&http, &url, &m).await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    // The support script folds to 11 createMessage calls per conversation.
    let want = base + conversations * 11;
    let deadline = Instant::now() + Duration::from_secs(120);
    while created.load(Ordering::Relaxed) < want && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(
        created.load(Ordering::Relaxed) >= want,
        "every reply reached the stand-in"
    );
    (conversations * 11) as f64 / started.elapsed().as_secs_f64()
}

/// The other bots' reply latencies, quiet and while bot 0 is flooded, and
/// the flood's turns/s (see the module docs, 4.).
async fn flooded(
    addr: &str,
    bots: usize,
    probes: &Arc<Probes>,
) -> (Vec<Duration>, Vec<Duration>, f64) {
    let count = arg("--probes", 400usize);
    let per_second = arg("--probe-rate", 50usize).max(1);
    let others = (bots - 1).min(10);
    let http = support::Loader::default();
    // One probe: a new conversation's first message, timed to its reply.
    let probe = |name: String, bot: usize| {
        let (http, probes) = (http.clone(), probes.clone());
        let url = format!("http://{addr}/bots/b{bot}/webhook");
        async move {
            let (tx, rx) = tokio::sync::oneshot::channel();
            probes.lock().unwrap().insert(name.clone(), tx);
            let hello = json!({"event": "NEW_INCOMING_MESSAGE", "data": {"_id": name,
                "conversation": name, "senderType": "user", "channelType": "WhatsApp",
                "content": "hello"}});
            let started = Instant::now();
            post(&http, &url, &hello).await;
            tokio::time::timeout(Duration::from_secs(30), rx)
                .await
                .expect("a probe's reply within 30 s")
                .unwrap();
            started.elapsed()
        }
    };
    // `per_second` probes a second, each bot in turn; sorted latencies.
    let run = |round: &'static str| {
        let probe = &probe;
        async move {
            let mut tasks = Vec::new();
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / per_second as f64));
            for i in 0..count {
                tick.tick().await;
                tasks.push(tokio::spawn(probe(
                    format!("probe-{round}-{i}"),
                    1 + i % others,
                )));
            }
            let mut all = Vec::new();
            for t in tasks {
                all.push(t.await.unwrap());
            }
            all.sort();
            all
        }
    };
    // Every bot's flow compiled and token fetched first.
    for b in 1..=others {
        probe(format!("probe-warm-{b}"), b).await;
    }
    let quiet = run("quiet").await;
    // The flood: bot 0 at 100 times the probes' rate (open loop), from
    // half a second before the probes to after them.
    let rate = 100 * per_second;
    let seconds = count / per_second + 2;
    let flood = {
        let (http, url) = (http.clone(), format!("http://{addr}/bots/b0/webhook"));
        tokio::spawn(async move { support::open_loop(&http, &url, rate, seconds, "flood-").await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let loud = run("loud").await;
    flood.await.unwrap();
    (quiet, loud, rate as f64)
}
