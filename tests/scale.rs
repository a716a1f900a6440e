//! PostgreSQL as the store: `flowbot run` on it end to end, and what happens
//! when the database goes away. These tests need `FLOWBOT_TEST_POSTGRES_URL`
//! (`.ci/run` sets it); without it they say so and pass.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use flowbot::internals::config::{Config, StoreBackend};
use flowbot::internals::qpien::Secret;

use crate::runtime::{message, wait_until, Harness, ECHO};
use crate::store::postgres_url;

/// `c` on PostgreSQL at `url`, in `schema`.
pub(crate) fn on_postgres(c: &mut Config, url: &str, schema: &str) {
    c.store.backend = StoreBackend::Postgres;
    c.store.url = Secret::new(url.to_owned());
    c.store.schema = schema.to_owned();
}

/// A schema of its own for a test, dropped first.
pub(crate) async fn fresh_schema(url: &str, name: &str) -> String {
    let schema = format!("test_{}_{name}", std::process::id());
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
        .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .await
        .unwrap();
    schema
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flowbot_runs_on_postgres() {
    let Some(url) = postgres_url("flowbot_runs_on_postgres") else {
        return;
    };
    let schema = fresh_schema(&url, "run").await;
    let mut h = Harness::start("pg-run", ECHO, |c| {
        on_postgres(c, &url, &schema);
    })
    .await;
    h.post(&message("m1", "c1", "hello")).await;
    h.post(&message("m1", "c1", "hello")).await;
    h.post(&message("m2", "c1", "again")).await;
    wait_until("two replies", Duration::from_secs(5), || {
        h.replies("c1").len() == 2
    })
    .await;
    let r = h.http.get(h.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200, "{}", r.text().await.unwrap());
    h.stop().await;
    assert_eq!(h.replies("c1"), ["Echo: hello", "Echo: again"]);
}

/// A TCP proxy in front of PostgreSQL that can be cut (every connection
/// dropped, new ones refused) and restored.
struct Proxy {
    addr: std::net::SocketAddr,
    up: Arc<AtomicBool>,
}

impl Proxy {
    async fn start(target: std::net::SocketAddr) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(AtomicBool::new(true));
        let state = up.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                if !state.load(Ordering::SeqCst) {
                    continue;
                }
                let state = state.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    let copy = tokio::io::copy_bidirectional(&mut inbound, &mut outbound);
                    let cut = async {
                        while state.load(Ordering::SeqCst) {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    };
                    tokio::select! { _ = copy => {}, _ = cut => {} }
                });
            }
        });
        Proxy { addr, up }
    }

    fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::SeqCst);
    }
}

/// PostgreSQL unreachable: `/readyz` says so, webhooks answer 503 with
/// `Retry-After` (Qpien delivers again), and once it is back the bot
/// reconnects and nothing accepted is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_going_away_means_503_then_recovery() {
    let Some(url) = postgres_url("postgres_going_away_means_503_then_recovery") else {
        return;
    };
    let schema = fresh_schema(&url, "away").await;
    let config: tokio_postgres::Config = url.parse().unwrap();
    let host = match &config.get_hosts()[0] {
        tokio_postgres::config::Host::Tcp(h) => h.clone(),
        #[allow(unreachable_patterns)]
        _ => "127.0.0.1".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let target = tokio::net::lookup_host((host.as_str(), port))
        .await
        .unwrap()
        .next()
        .unwrap();
    let proxy = Proxy::start(target).await;
    let user = config.get_user().unwrap_or("postgres").to_owned();
    let db = config.get_dbname().unwrap_or("postgres").to_owned();
    let proxied = format!("postgres://{user}@{}/{db}", proxy.addr);
    let mut h = Harness::start("pg-away", ECHO, |c| {
        on_postgres(c, &proxied, &schema);
    })
    .await;
    h.post(&message("m1", "c1", "before")).await;
    wait_until("the first reply", Duration::from_secs(5), || {
        h.replies("c1").len() == 1
    })
    .await;

    proxy.set_up(false);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let body = serde_json::to_vec(&message("m2", "c1", "during")).unwrap();
    let r = h
        .http
        .post(h.url("/webhook"))
        .header("content-type", "application/json")
        .header(
            "X-Qpien-Signature",
            flowbot::internals::qpien::webhook::sign(crate::runtime::SECRET.as_bytes(), &body),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 503);
    assert!(r.headers().contains_key("retry-after"));
    let ready = h.http.get(h.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status().as_u16(), 503);
    let why = ready.text().await.unwrap();
    assert!(why.contains("postgres"), "{why}");

    // Back: Qpien's redelivery is accepted and answered, once.
    proxy.set_up(true);
    let end = tokio::time::Instant::now() + Duration::from_secs(10);
    while h.post(&message("m2", "c1", "during")).await != 200 {
        assert!(
            tokio::time::Instant::now() < end,
            "the store did not come back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_until("the second reply", Duration::from_secs(10), || {
        h.replies("c1").len() == 2
    })
    .await;
    h.stop().await;
    assert_eq!(h.replies("c1"), ["Echo: before", "Echo: during"]);
}

/// Each turn counts: a message run twice, or out of order, shows.
pub(crate) const COUNTER: &str = r##"
version: 1
vars: { n: 0 }
intents:
  - { regex: '^(?P<said>.+)$', goto: count }
states:
  start: {}
  count:
    set: { n: "{{ n | int + 1 }}" }
    say: "#{{ n }} {{ said }}"
    next: start
"##;

/// Three instances on one PostgreSQL schema, webhooks spread across them at
/// random: each conversation's turns run one at a time, in order, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_answer_every_message_once_in_order() {
    use crate::qpien::start_sim;
    use crate::runtime::{config, replies, temp_dir, SECRET};
    use flowbot::internals::qpien::webhook::sign;
    let Some(url) = postgres_url("three_instances_answer_every_message_once_in_order") else {
        return;
    };
    let schema = fresh_schema(&url, "three").await;
    let qpien = start_sim(|c| c.auto_create_conversations = true).await;
    let mut bots = Vec::new();
    for i in 0..3 {
        let dir = temp_dir(&format!("pg-three-{i}"));
        std::fs::write(dir.join("flow.yaml"), COUNTER).unwrap();
        let mut c = config(&qpien, &dir);
        on_postgres(&mut c, &url, &schema);
        c.runtime.claim_ttl = Duration::from_secs(2);
        bots.push(flowbot::start(c, flowbot::Registry::new()).await.unwrap());
    }
    let addrs: Vec<_> = bots.iter().map(|b| b.addr()).collect();
    let http = reqwest::Client::new();
    let conversations = 20;
    let per = 6;
    let mut rng = fastrand::Rng::with_seed(7);
    for round in 0..per {
        for c in 0..conversations {
            let body = serde_json::to_vec(&message(
                &format!("m{c}-{round}"),
                &format!("c{c}"),
                &format!("m{round}"),
            ))
            .unwrap();
            let addr = addrs[rng.usize(..addrs.len())];
            let status = http
                .post(format!("http://{addr}/webhook"))
                .header("content-type", "application/json")
                .header("X-Qpien-Signature", sign(SECRET.as_bytes(), &body))
                .body(body)
                .send()
                .await
                .unwrap()
                .status();
            assert_eq!(status.as_u16(), 200);
        }
    }
    wait_until("every reply", Duration::from_secs(30), || {
        qpien.state().created().len() >= conversations * per
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    for b in bots {
        b.shutdown().await;
    }
    assert_eq!(qpien.state().created().len(), conversations * per);
    for c in 0..conversations {
        let want: Vec<String> = (0..per).map(|r| format!("#{} m{r}", r + 1)).collect();
        assert_eq!(replies(&qpien, &format!("c{c}")), want, "conversation c{c}");
    }
}

#[path = "../examples/chaos.rs"]
#[allow(clippy::duplicate_mod)]
mod chaos;

/// The chaos run, short (`scripts/chaos.sh` runs it at full size): three
/// instances, faults, a SIGKILL and a SIGTERM; every message answered once,
/// in order, 0 x 429, nothing left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_three_instances_a_kill_and_a_stop() {
    let Some(url) = postgres_url("chaos_three_instances_a_kill_and_a_stop") else {
        return;
    };
    let mut opts = chaos::Options::new(100, env!("CARGO_BIN_EXE_flowbot").into(), url);
    opts.concurrency = 25;
    opts.seed = 11;
    let report = chaos::run(opts).await;
    assert!(report.ok(), "{}", report.line());
}

/// The same with 50 bots in each of the three instances (conversation c on
/// bot c mod 50): claims, fences, budgets and the registry keyed by bot hold
/// through the kill and the stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_fifty_bots_over_three_instances() {
    let Some(url) = postgres_url("chaos_fifty_bots_over_three_instances") else {
        return;
    };
    let mut opts = chaos::Options::new(100, env!("CARGO_BIN_EXE_flowbot").into(), url);
    opts.concurrency = 25;
    opts.seed = 13;
    opts.bots = 50;
    let report = chaos::run(opts).await;
    assert!(report.ok(), "{}", report.line());
}

/// Arrival order across instances: two instances, each message of a
/// conversation sent to the other instance than the one before, the moment
/// the one before was acknowledged (so the holder of the conversation is
/// often sent a message while the one before, accepted by the other
/// instance, is still on its way to it), with deliveries twice and one
/// instance killed with SIGKILL mid-run: every conversation answered once,
/// in the order its customer wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_taking_turns_run_a_conversation_in_arrival_order() {
    let Some(url) = postgres_url("two_instances_taking_turns_run_a_conversation_in_arrival_order")
    else {
        return;
    };
    let mut opts = chaos::Options::new(40, env!("CARGO_BIN_EXE_flowbot").into(), url);
    opts.instances = 2;
    opts.alternate = true;
    opts.concurrency = 20;
    opts.seed = 5;
    let report = chaos::run(opts).await;
    assert!(report.ok(), "{}", report.line());
}

/// Three instances, each configured with Qpien's whole budget, under more
/// replies than it allows: they share it through the database, so together
/// they get no 429, and use most of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_share_one_request_budget() {
    use crate::qpien::start_sim;
    use crate::runtime::{config, temp_dir, SECRET};
    use flowbot::internals::qpien::webhook::sign;
    use flowbot::internals::qpien::RateLimitConfig;
    let Some(url) = postgres_url("three_instances_share_one_request_budget") else {
        return;
    };
    const BUDGET: u32 = 20;
    let schema = fresh_schema(&url, "budget").await;
    let qpien = start_sim(|c| {
        c.auto_create_conversations = true;
        c.rate_limit = Some((BUDGET, Duration::from_secs(1)));
    })
    .await;
    let mut bots = Vec::new();
    for i in 0..3 {
        let dir = temp_dir(&format!("pg-budget-{i}"));
        std::fs::write(dir.join("flow.yaml"), COUNTER).unwrap();
        let mut c = config(&qpien, &dir);
        on_postgres(&mut c, &url, &schema);
        c.qpien.rate_limit = RateLimitConfig {
            requests: BUDGET,
            per: Duration::from_secs(1),
            default_reset: Duration::from_secs(1),
        };
        // One reply a request: the requests are what is shared.
        c.qpien.batch.max = 1;
        c.runtime.shutdown_deadline = Duration::from_millis(300);
        bots.push(flowbot::start(c, flowbot::Registry::new()).await.unwrap());
    }
    let addrs: Vec<_> = bots.iter().map(|b| b.addr()).collect();
    let http = reqwest::Client::new();
    let mut rng = fastrand::Rng::with_seed(3);
    // 400 replies: twenty seconds of budget.
    for i in 0..400 {
        let body =
            serde_json::to_vec(&message(&format!("b{i}"), &format!("c{}", i % 60), "hi")).unwrap();
        let addr = addrs[rng.usize(..addrs.len())];
        let status = http
            .post(format!("http://{addr}/webhook"))
            .header("content-type", "application/json")
            .header("X-Qpien-Signature", sign(SECRET.as_bytes(), &body))
            .body(body)
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status.as_u16(), 200);
    }
    // Measured once the replies flow (turns may be slow on a busy machine).
    wait_until("the first replies", Duration::from_secs(30), || {
        qpien.state().created().len() >= BUDGET as usize
    })
    .await;
    let start = tokio::time::Instant::now();
    tokio::time::sleep(Duration::from_secs(7)).await;
    let requests = qpien.state().requests();
    for b in bots {
        b.shutdown().await;
    }
    assert_eq!(qpien.state().stats().rate_limited, 0, "a 429");
    // Every request Qpien answered in 5 s of the middle of the run.
    let from = start + Duration::from_secs(1);
    let to = from + Duration::from_secs(5);
    let used = requests
        .iter()
        .filter(|r| r.at >= from && r.at < to && r.status == 200)
        .count();
    let budget = 5 * BUDGET as usize;
    // How much of the budget is used is a figure, not a test's business (it
    // depends on the machine's load and the build); the test asks only that
    // sharing does not starve the instances.
    eprintln!("{used} requests of a budget of {budget} in 5 s");
    assert!(
        used * 2 >= budget,
        "{used} requests of a budget of {budget} in 5 s"
    );
}

/// Replies committed here for a conversation another instance then took
/// over are that instance's to send (it adopts them from the store, in
/// order): sent here too, they would reach the customer twice or out of
/// order. Here the first reply's answer is held back by Qpien while the
/// claim moves to another owner; the reply queued behind it is not sent,
/// and stays in the store for the holder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_of_a_conversation_taken_over_are_left_to_its_new_holder() {
    let Some(url) = postgres_url("replies_of_a_conversation_taken_over_are_left_to_its_new_holder")
    else {
        return;
    };
    let schema = fresh_schema(&url, "left").await;
    let mut h = Harness::start("pg-left", ECHO, |c| {
        on_postgres(c, &url, &schema);
        c.runtime.claim_ttl = Duration::from_millis(600);
        c.qpien.request_timeout = Duration::from_millis(800);
    })
    .await;
    let (db, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    h.qpien.state().hold_next_creates(1);
    assert_eq!(h.post(&message("m1", "c1", "one")).await, 200);
    tokio::time::timeout(Duration::from_secs(10), h.qpien.state().held())
        .await
        .expect("the first reply reached Qpien");
    assert_eq!(h.post(&message("m2", "c1", "two")).await, 200);
    let stored = || async {
        db.query_one(
            &format!("SELECT count(*) FROM {schema}.outbox WHERE conversation = 'c1'"),
            &[],
        )
        .await
        .unwrap()
        .get::<_, i64>(0)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while stored().await < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the second reply was not committed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let taken = db
        .execute(
            &format!(
                "UPDATE {schema}.claims SET owner = 'another', token = token + 1000, \
                 expires_at = expires_at + 3600000 WHERE conversation = 'c1'"
            ),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(taken, 1, "the conversation was claimed here");
    // The renewal finds the claim gone; the held answer times out and the
    // sender would go on with the next reply.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        h.replies("c1"),
        ["Echo: one"],
        "nothing sent after the take-over"
    );
    assert!(
        stored().await >= 1,
        "the second reply is left in the store for the holder"
    );
    h.stop().await;
}

/// On PostgreSQL (`None` without it), a claim of a third of a second's
/// renewal: conversation c1's first message waits in its action (until
/// `gate` opens) and its next two are queued behind it. A client of the
/// database, and the schema, to take the claim away.
async fn blocked_behind_a_claim(
    test: &str,
    tag: &str,
) -> Option<(
    Harness,
    Arc<tokio::sync::Semaphore>,
    tokio_postgres::Client,
    String,
)> {
    use crate::bots::{blocking_registry, BLOCKING};
    let url = postgres_url(test)?;
    let schema = fresh_schema(&url, tag).await;
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let h = Harness::with(
        &format!("pg-{tag}"),
        BLOCKING,
        blocking_registry(gate.clone()),
        |c| {
            on_postgres(c, &url, &schema);
            c.runtime.claim_ttl = Duration::from_millis(600);
        },
    )
    .await;
    let (db, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    h.post(&message("m1", "c1", "wait")).await;
    h.post(&message("m2", "c1", "one")).await;
    h.post(&message("m3", "c1", "two")).await;
    // The first turn waits in its action; the other two are queued here.
    tokio::time::sleep(Duration::from_millis(300)).await;
    Some((h, gate, db, schema))
}

/// The same, with the claim taken back here (by a fourth message) while the
/// first turn still waits: the conversation's pending messages, read again
/// under the new claim, take the place of the turns queued under the lost
/// one, the first among them behind its turn in progress (which its fence
/// stops). Kept, the turns of the lost claim would be left and the fourth
/// message answered first; each message is answered once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turns_queued_under_a_claim_since_taken_back_do_not_overtake() {
    let Some((mut h, gate, db, schema)) = blocked_behind_a_claim(
        "turns_queued_under_a_claim_since_taken_back_do_not_overtake",
        "retaken",
    )
    .await
    else {
        return;
    };
    let sql = format!("SELECT token, owner FROM {schema}.claims WHERE conversation = 'c1'");
    let claim = || async {
        db.query_opt(&sql, &[])
            .await
            .unwrap()
            .map(|r| (r.get::<_, i64>(0), r.get::<_, String>(1)))
    };
    let stolen = claim().await.unwrap().0 + 1000;
    db.execute(
        &format!(
            "UPDATE {schema}.claims SET owner = 'another', token = {stolen}, expires_at = 0 \
             WHERE conversation = 'c1'"
        ),
        &[],
    )
    .await
    .unwrap();
    // A renewal (every third of the claim's time to live) finds the claim
    // gone; the next message claims the conversation again here, under a new
    // token, while its first turn still waits.
    tokio::time::sleep(Duration::from_millis(500)).await;
    h.post(&message("m4", "c1", "three")).await;
    let mut retaken = false;
    for _ in 0..100 {
        if claim().await.is_some_and(|(_, owner)| owner != "another") {
            retaken = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(retaken, "the conversation was claimed back");
    gate.add_permits(10);
    wait_until("four replies", Duration::from_secs(15), || {
        h.replies("c1").len() >= 4
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    h.stop().await;
    assert_eq!(
        h.replies("c1"),
        [
            "Done waiting.",
            "Slow echo: one",
            "Slow echo: two",
            "Slow echo: three"
        ]
    );
}

/// A claim taken over while its holder still has turns of it queued (as when
/// the holder paused past its claim's time to live): the turn running is
/// fenced, and those queued behind it are left to the claim's new holder,
/// none committed without a token over what the holder writes. Here the
/// other instance lets the claim lapse at once, so this one takes the
/// conversation back and runs its messages again: each answered once, in
/// the order its customer wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turns_queued_behind_a_lost_claim_are_left_to_its_new_holder() {
    let Some((mut h, gate, db, schema)) = blocked_behind_a_claim(
        "turns_queued_behind_a_lost_claim_are_left_to_its_new_holder",
        "lost",
    )
    .await
    else {
        return;
    };
    let taken = db
        .execute(
            &format!(
                "UPDATE {schema}.claims SET owner = 'another', token = token + 1000, \
                 expires_at = 0 WHERE conversation = 'c1'"
            ),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(taken, 1, "the conversation was claimed here");
    // The waiting turn (and its run again, once the claim is back) go on.
    gate.add_permits(10);
    wait_until("three replies", Duration::from_secs(15), || {
        h.replies("c1").len() >= 3
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    h.stop().await;
    assert_eq!(
        h.replies("c1"),
        ["Done waiting.", "Slow echo: one", "Slow echo: two"]
    );
}
