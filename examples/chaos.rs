//! The chaos run: three `flowbot run` instances on one PostgreSQL database
//! serve conversations running the support scenario (`flows/support.yaml`)
//! while things go wrong, then every conversation is checked.
//!
//! - The simulator plays Qpien's API, with server errors and slow answers.
//! - This program plays Qpien's webhooks: each customer message goes to an
//!   instance chosen at random (or to each in turn), and the next is sent the
//!   moment it is acknowledged, as a customer typing fast produces; a fifth
//!   go twice, to another instance, half at once and half after the first
//!   was acknowledged; a delivery that fails goes again to another instance,
//!   as Qpien retries.
//! - One instance is killed with SIGKILL a third of the way through and
//!   started again a second later; with three instances, another is stopped
//!   with SIGTERM two thirds through.
//!
//! At the end every conversation's replies must be exactly what the engine
//! gives for the script (same `frontMsgId`s, same texts, same order: each
//! message answered once, in the order the customer sent them, whichever
//! instance took each), with no 429 and nothing left in any inbox or outbox.
//! The last line says so, or what went wrong.
//!
//! Run: `scripts/chaos.sh [--conversations N]` (it builds the binary and
//! provides the database), or
//! `cargo run --release --example chaos -- --bin target/release/flowbot
//! --postgres postgres://postgres@127.0.0.1:5432/postgres [--conversations N] [--bots N]`
//! (`--bots N`: each instance runs N bots, `[[bots]]` of one flow, and
//! conversation c goes to bot c mod N).

#![allow(missing_docs, unreachable_pub, dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flowbot::internals::qpien::webhook::sign;
use flowbot::internals::qpien::{plan_replies, QpienConfig};
use flowbot::internals::sim::{self, RunningSim, SimConfig};
use flowbot::{Bot, Channel, Event, Incoming};
use serde_json::{json, Value};

#[path = "support_bot.rs"]
mod support_bot;

const SECRET: &str = "chaos-webhook-secret";

/// Qpien's request budget in the run, per second, for all instances.
const RATE: u32 = 120;

/// What a run does.
#[derive(Debug, Clone)]
pub struct Options {
    /// Conversations, each running the 11-message script.
    pub conversations: usize,
    /// Conversations running at once.
    pub concurrency: usize,
    /// The `flowbot` binary.
    pub bin: PathBuf,
    /// A PostgreSQL database (a schema of its own is made in it).
    pub postgres: String,
    /// The random seed (a run can be repeated).
    pub seed: u64,
    /// The flow folder (`flows/support.yaml` is run).
    pub flows: PathBuf,
    /// Instances (2 or more; the third is the one stopped with SIGTERM).
    pub instances: usize,
    /// Each message of a conversation to the next instance in turn, rather
    /// than to one at random.
    pub alternate: bool,
    /// Bots in each instance (`[[bots]]`, one flow, one Qpien account);
    /// conversation c goes to bot c mod `bots`. 0: a single-bot instance.
    pub bots: usize,
}

impl Options {
    /// The full run's shape (`scripts/chaos.sh`), for `conversations`.
    pub fn new(conversations: usize, bin: PathBuf, postgres: String) -> Options {
        Options {
            conversations,
            concurrency: 50,
            bin,
            postgres,
            seed: 7,
            flows: PathBuf::from("flows"),
            instances: 3,
            alternate: false,
            bots: 0,
        }
    }
}

/// What a run found.
#[derive(Debug, Default)]
pub struct Report {
    pub messages: usize,
    pub conversations: usize,
    pub correct: usize,
    pub problems: Vec<String>,
    pub rate_limited: u64,
    pub left_in_inbox: i64,
    pub left_in_outbox: i64,
    pub elapsed: Duration,
    /// The longest a customer waited for an answer: a conversation whose
    /// instance was killed waits for the take-over (its claim's time to live
    /// plus one sweep).
    pub slowest_answer: Duration,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
            && self.correct == self.conversations
            && self.rate_limited == 0
            && self.left_in_inbox == 0
            && self.left_in_outbox == 0
    }

    /// The last line of a run.
    pub fn line(&self) -> String {
        if self.ok() {
            format!(
                "answered {m}/{m} exactly once, in order, 0 x 429",
                m = self.messages
            )
        } else {
            format!(
                "FAILED: {}/{} conversations right, {} x 429, {} left in inboxes, {} in outboxes; {}",
                self.correct,
                self.conversations,
                self.rate_limited,
                self.left_in_inbox,
                self.left_in_outbox,
                self.problems.iter().take(5).cloned().collect::<Vec<_>>().join("; ")
            )
        }
    }
}

/// One customer message of the script.
#[derive(Clone, Copy)]
enum Say {
    Text(&'static str),
    Tap(&'static str),
    Pick(&'static str),
}

/// The support scenario's script (SCENARIO.md): 11 messages, two sessions.
const SCRIPT: [Say; 11] = [
    Say::Text("hello"),
    Say::Tap("orders"),
    Say::Text("12"),
    Say::Text("123456"),
    Say::Pick("track"),
    Say::Text("hi again"),
    Say::Tap("orders"),
    Say::Text("222222"),
    Say::Pick("return"),
    Say::Text("too big"),
    Say::Tap("yes"),
];

fn incoming(say: Say) -> Incoming {
    let mut m = match say {
        Say::Text(t) => Incoming::text(t),
        Say::Tap(id) => Incoming::button(id),
        Say::Pick(id) => Incoming::list(id),
    };
    m.channel = Channel::LiveChat;
    m
}

fn webhook(conversation: &str, id: &str, say: Say) -> Value {
    let mut data = json!({"_id": id, "conversation": conversation, "senderType": "user",
        "channelType": "LiveChat"});
    match say {
        Say::Text(t) => data["content"] = json!(t),
        Say::Tap(b) => {
            data["content"] = json!(b);
            data["flowBotQuickReplyResponseId"] = json!(b);
        }
        Say::Pick(r) => {
            data["content"] = json!(r);
            data["listReply"] = json!({"id": r});
        }
    }
    json!({"event": "NEW_INCOMING_MESSAGE", "data": data})
}

/// What the engine answers to the script, as `(frontMsgId, content)` of each
/// `createMessage`: the reference every conversation is checked against.
async fn expected(flows: &Path, conversation: &str) -> Vec<(String, String)> {
    let bot = Bot::load(flows.join("support.yaml"), support_bot::registry()).expect("the flow");
    let config = QpienConfig::default();
    let mut stored = None;
    let mut out = Vec::new();
    for (i, say) in SCRIPT.iter().enumerate() {
        let id = format!("{conversation}-m{i}");
        let turn = bot
            .step(
                conversation,
                stored.take(),
                &Event::Message(incoming(*say)),
                0,
            )
            .await;
        for m in plan_replies(
            &config,
            conversation,
            Channel::LiveChat,
            &id,
            &turn.messages,
        ) {
            out.push((m.input.front_msg_id, m.input.content.unwrap_or_default()));
        }
        stored = turn.stored;
    }
    out
}

/// A running instance (killed if the run ends early).
struct Instance {
    child: Option<Child>,
    url: String,
}

impl Drop for Instance {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn spawn(opts: &Options, dir: &Path, sim: &RunningSim, schema: &str, n: usize) -> Instance {
    let config = dir.join(format!("instance-{n}.toml"));
    let flow = std::fs::canonicalize(opts.flows.join("support.yaml"))
        .expect("flows/support.yaml")
        .display()
        .to_string();
    let bots: String = (0..opts.bots)
        .map(|b| format!("[[bots]]\nname = \"b{b}\"\nflow = {flow:?}\n"))
        .collect();
    // With many bots, a small pool: they share it (and runs side by side in
    // the tests stay within the server's connections).
    let (top_flow, pool) = match opts.bots {
        0 => (format!("flow = {flow:?}\n"), ""),
        _ => (String::new(), "max_connections = 6\n"),
    };
    std::fs::write(
        &config,
        format!(
            "{top_flow}[server]\nlisten = \"127.0.0.1:0\"\n\
             [store]\nbackend = \"postgres\"\nschema = \"{schema}\"\n{pool}\
             [runtime]\nclaim_ttl = \"3s\"\nshutdown_deadline = \"3s\"\n\
             [qpien]\nwhatsapp_operation = \"create_message\"\n\
             [qpien.rate_limit]\nrequests = {share}\nper = \"1s\"\n\
             [qpien.retry]\nmax_attempts = 4\nmin_delay = \"10ms\"\nmax_delay = \"100ms\"\n\
             {bots}",
            share = RATE,
        ),
    )
    .expect("write the configuration");
    let mut child = Command::new(&opts.bin)
        .args(["run", "--config"])
        .arg(&config)
        .env("FLOWBOT_STORE__URL", &opts.postgres)
        .env("FLOWBOT_QPIEN__ENDPOINT", sim.graphql_url())
        .env("FLOWBOT_QPIEN__CLIENT_ID", "qpien-sim-client")
        .env("FLOWBOT_QPIEN__CLIENT_SECRET", "qpien-sim-secret")
        .env("FLOWBOT_SERVER__WEBHOOK_SECRET", SECRET)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join(format!("instance-{n}.log")))
                .expect("the log file"),
        )
        .spawn()
        .expect("start flowbot");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("the first line");
    let url = line
        .trim()
        .strip_prefix("flowbot listening on ")
        .unwrap_or_else(|| {
            panic!(
                "instance {n} did not start: {line:?} (see {})",
                dir.display()
            )
        })
        .to_owned();
    Instance {
        child: Some(child),
        url,
    }
}

fn signal(child: &Child, sig: &str) {
    let _ = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status();
}

/// Posts one delivery until a live instance takes it (200): the instance
/// `pick` names among the live ones (modulo their number), or the next ones
/// when it does not answer.
async fn deliver(
    http: &reqwest::Client,
    urls: &tokio::sync::RwLock<Vec<Option<String>>>,
    path: &str,
    body: &[u8],
    mut pick: usize,
) {
    let signature = sign(SECRET.as_bytes(), body);
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        let live: Vec<String> = urls.read().await.iter().flatten().cloned().collect();
        if !live.is_empty() {
            let url = &live[pick % live.len()];
            pick += 1;
            let sent = http
                .post(format!("{url}{path}"))
                .header("content-type", "application/json")
                .header("X-Qpien-Signature", &signature)
                .body(body.to_vec())
                .timeout(Duration::from_secs(5))
                .send()
                .await;
            if matches!(&sent, Ok(r) if r.status().as_u16() == 200) {
                return;
            }
        }
        assert!(Instant::now() < end, "no instance took a delivery for 60 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn created_for(sim: &RunningSim, conversation: &str) -> Vec<(String, String)> {
    sim.state()
        .created()
        .iter()
        .filter(|m| m["input"]["conversationId"] == conversation)
        .map(|m| {
            (
                m["input"]["frontMsgId"].as_str().unwrap_or("").to_owned(),
                m["input"]["content"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

/// Runs the chaos scenario (see the module docs).
pub async fn run(opts: Options) -> Report {
    let started = Instant::now();
    // Runs in one process (tests) each get their own folder and schema.
    let run = format!("{}_{:08x}", std::process::id(), fastrand::u32(..));
    let dir = std::env::temp_dir().join(format!("flowbot-chaos-{run}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a work folder");
    let schema = format!("chaos_{run}");
    {
        let (client, conn) = tokio_postgres::connect(&opts.postgres, tokio_postgres::NoTls)
            .await
            .expect("PostgreSQL");
        tokio::spawn(conn);
        client
            .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
            .await
            .expect("a fresh schema");
    }
    let mut sc = SimConfig {
        listen: "127.0.0.1:0".parse().expect("an address"),
        auto_create_conversations: true,
        ..SimConfig::default()
    };
    // Qpien's budget, scaled up so that a run takes seconds. Each instance
    // is configured with the whole budget: they share it through the
    // database, so together they stay within it.
    sc.rate_limit = Some((RATE, Duration::from_secs(1)));
    sc.faults.server_errors = 0.05;
    sc.faults.slow = 0.05;
    sc.faults.slow_delay = Duration::from_millis(200);
    sc.faults.seed = opts.seed;
    sc.client_id = "qpien-sim-client".into();
    sc.client_secret = "qpien-sim-secret".into();
    let sim = sim::start(sc).await.expect("the simulator");

    let mut instances: Vec<Instance> = (0..opts.instances.max(2))
        .map(|n| spawn(&opts, &dir, &sim, &schema, n))
        .collect();
    let urls = Arc::new(tokio::sync::RwLock::new(
        instances
            .iter()
            .map(|i| Some(i.url.clone()))
            .collect::<Vec<_>>(),
    ));
    let http = reqwest::Client::new();
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let slowest = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let total = opts.conversations;
    // Every conversation gets the same replies (ids aside).
    let replies_each = expected(&opts.flows, "k0").await.len();

    // The customers.
    let sem = Arc::new(tokio::sync::Semaphore::new(opts.concurrency.max(1)));
    let mut tasks = Vec::new();
    for c in 0..total {
        let (http, urls, sim_state, sem, done, slowest) = (
            http.clone(),
            urls.clone(),
            sim.state().clone(),
            sem.clone(),
            done.clone(),
            slowest.clone(),
        );
        let mut rng = fastrand::Rng::with_seed(opts.seed.wrapping_add(c as u64));
        let alternate = opts.alternate;
        let bots = opts.bots;
        tasks.push(tokio::spawn(async move {
            let _permit = sem.acquire().await.expect("the semaphore");
            let conversation = format!("k{c}");
            let path = match bots {
                0 => "/webhook".to_owned(),
                n => format!("/bots/b{}/webhook", c % n),
            };
            let count = |s: &flowbot::internals::sim::SimState| {
                s.created()
                    .iter()
                    .filter(|m| m["input"]["conversationId"] == conversation.as_str())
                    .count()
            };
            let first = rng.usize(..1 << 20);
            for (i, say) in SCRIPT.iter().enumerate() {
                let body = serde_json::to_vec(&webhook(
                    &conversation,
                    &format!("{conversation}-m{i}"),
                    *say,
                ))
                .expect("json");
                let pick = if alternate {
                    first + i
                } else {
                    rng.usize(..1 << 20)
                };
                // Qpien delivers a fifth twice, to another instance: half at
                // once, half after the first was acknowledged.
                let twice = rng.f64();
                if twice < 0.1 {
                    tokio::join!(
                        deliver(&http, &urls, &path, &body, pick),
                        deliver(&http, &urls, &path, &body, pick + 1)
                    );
                } else {
                    deliver(&http, &urls, &path, &body, pick).await;
                    if twice < 0.2 {
                        deliver(&http, &urls, &path, &body, pick + 1).await;
                    }
                }
                // No waiting for the answer: the next message goes the
                // moment this one is acknowledged.
            }
            let sent = Instant::now();
            let end = sent + Duration::from_secs(60);
            while count(&sim_state) < replies_each && Instant::now() < end {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let waited = sent.elapsed().as_micros() as u64;
            slowest.fetch_max(waited, std::sync::atomic::Ordering::SeqCst);
            done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }));
    }

    // The faults: SIGKILL at a third (restarted), SIGTERM at two thirds.
    let mut phase = 0;
    while done.load(std::sync::atomic::Ordering::SeqCst) < total {
        let d = done.load(std::sync::atomic::Ordering::SeqCst);
        if phase == 0 && d * 3 >= total {
            if let Some(child) = instances[0].child.as_mut() {
                urls.write().await[0] = None;
                signal(child, "-KILL");
                let _ = child.wait();
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            instances[0] = spawn(&opts, &dir, &sim, &schema, 0);
            urls.write().await[0] = Some(instances[0].url.clone());
            phase = 1;
        } else if phase == 1 && d * 3 >= total * 2 && instances.len() > 2 {
            urls.write().await[1] = None;
            if let Some(child) = instances[1].child.as_mut() {
                signal(child, "-TERM");
                let _ = child.wait();
            }
            instances[1].child = None;
            phase = 2;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for t in tasks {
        let _ = t.await;
    }
    // Let the last replies out, then stop.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let mut report = Report {
        messages: total * SCRIPT.len(),
        conversations: total,
        ..Report::default()
    };
    let (client, conn) = tokio_postgres::connect(&opts.postgres, tokio_postgres::NoTls)
        .await
        .expect("PostgreSQL");
    tokio::spawn(conn);
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        report.left_in_inbox = client
            .query_one(
                &format!("SELECT count(*) FROM {schema}.inbox WHERE NOT done"),
                &[],
            )
            .await
            .map(|r| r.get(0))
            .unwrap_or(-1);
        report.left_in_outbox = client
            .query_one(&format!("SELECT count(*) FROM {schema}.outbox"), &[])
            .await
            .map(|r| r.get(0))
            .unwrap_or(-1);
        if (report.left_in_inbox == 0 && report.left_in_outbox == 0) || Instant::now() > end {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for i in instances.iter_mut() {
        if let Some(child) = i.child.as_mut() {
            signal(child, "-TERM");
            let _ = child.wait();
        }
    }
    report.rate_limited = sim.state().stats().rate_limited;
    for c in 0..total {
        let conversation = format!("k{c}");
        let want = expected(&opts.flows, &conversation).await;
        let got = created_for(&sim, &conversation);
        if got == want {
            report.correct += 1;
        } else {
            report.problems.push(format!(
                "{conversation}: expected {} replies, got {}; first difference at {:?}",
                want.len(),
                got.len(),
                want.iter().zip(&got).position(|(a, b)| a != b)
            ));
        }
    }
    report.elapsed = started.elapsed();
    report.slowest_answer =
        Duration::from_micros(slowest.load(std::sync::atomic::Ordering::SeqCst));
    sim.shutdown().await;
    let _ = client
        .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .await;
    if report.ok() {
        // The instances' logs are kept only when something went wrong.
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        report
            .problems
            .insert(0, format!("logs in {}", dir.display()));
    }
    report
}

fn arg<T: std::str::FromStr>(args: &[String], name: &str) -> Option<T> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
}

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let mut opts = Options::new(
        arg(&args, "--conversations").unwrap_or(500),
        arg(&args, "--bin").unwrap_or_else(|| PathBuf::from("target/release/flowbot")),
        arg(&args, "--postgres")
            .or_else(|| std::env::var("FLOWBOT_TEST_POSTGRES_URL").ok())
            .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/postgres".into()),
    );
    opts.concurrency = arg(&args, "--concurrency").unwrap_or(opts.concurrency);
    opts.seed = arg(&args, "--seed").unwrap_or(opts.seed);
    opts.flows = arg(&args, "--flows").unwrap_or(opts.flows);
    opts.instances = arg(&args, "--instances").unwrap_or(opts.instances);
    opts.alternate = args.iter().any(|a| a == "--alternate");
    opts.bots = arg(&args, "--bots").unwrap_or(opts.bots);
    let rt = tokio::runtime::Runtime::new().expect("a runtime");
    let report = rt.block_on(run(opts));
    println!(
        "{} conversations, {} messages in {:.1} s; the longest wait for the last answer \
         {:.1} s (a conversation taken over after the SIGKILL waits for its claim to expire)",
        report.conversations,
        report.messages,
        report.elapsed.as_secs_f64(),
        report.slowest_answer.as_secs_f64(),
    );
    println!("{}", report.line());
    if report.ok() {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}
