//! Many bots in one process (`[[bots]]`): each with its own flow, Qpien
//! account, webhook, store namespace and `bot` label, and nothing one bot
//! does (an action that never returns, Qpien's 429s, a flow that no longer
//! loads) delays or stops another.

use std::sync::Arc;
use std::time::Duration;

use flowbot::internals::config::{BotConfig, Config};
use flowbot::internals::qpien::webhook::sign;
use flowbot::internals::qpien::Secret;
use flowbot::Registry;
use tokio::sync::Semaphore;

use crate::qpien::start_sim;
use crate::runtime::{config, message, replies, temp_dir, wait_until, ECHO};

pub(crate) const BLOCKING: &str = r#"
version: 1
intents:
  - { text: wait, goto: waiting }
  - { regex: '^(?P<said>.+)$', say: "Slow echo: {{ said }}", goto: start }
states:
  start: {}
  waiting:
    call: { action: block }
    say: "Done waiting."
    next: start
"#;

/// An action that returns only when the test adds a permit.
pub(crate) fn blocking_registry(gate: Arc<Semaphore>) -> Registry {
    struct Block(Arc<Semaphore>);
    #[flowbot::async_trait]
    impl flowbot::Action for Block {
        async fn run(
            &self,
            _: &mut flowbot::ActionContext<'_>,
        ) -> Result<flowbot::ActionOutcome, flowbot::ActionError> {
            self.0.acquire().await.unwrap().forget();
            Ok(flowbot::ActionOutcome::Continue)
        }
    }
    Registry::new().action("block", Block(gate))
}

/// Bot `name` of a test: its flow `<dir>/<name>.yaml`, its own webhook
/// secret (`webhook-secret-of-<name>`), reaching Qpien as `qpien` says.
pub(crate) fn bot_in(
    dir: &std::path::Path,
    name: &str,
    qpien: &flowbot::internals::qpien::QpienConfig,
) -> BotConfig {
    BotConfig {
        name: name.into(),
        flow: dir.join(format!("{name}.yaml")),
        qpien: qpien.clone(),
        webhook_secret: Secret::new(format!("webhook-secret-of-{name}")),
        ..BotConfig::default()
    }
}

/// A signed delivery of `body` to `url`: the status.
pub(crate) async fn post(
    http: &reqwest::Client,
    url: &str,
    secret: &str,
    body: &serde_json::Value,
) -> u16 {
    let body = serde_json::to_vec(body).unwrap();
    http.post(url)
        .header("content-type", "application/json")
        .header("x-qpien-signature", sign(secret.as_bytes(), &body))
        .body(body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_bot_blocked_rate_limited_and_broken_never_holds_up_another() {
    isolation(None).await;
}

/// The same, the bots sharing a PostgreSQL schema and its pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_one_bot_blocked_rate_limited_and_broken_never_holds_up_another() {
    let Some(url) = crate::store::postgres_url("on_postgres_one_bot_blocked") else {
        return;
    };
    let schema = crate::scale::fresh_schema(&url, "isolation").await;
    isolation(Some((url, schema))).await;
}

/// `slow` blocked in an action, answered 429 and its flow broken while
/// `quick` answers; on SQLite, or on PostgreSQL at `postgres` (URL, schema).
async fn isolation(postgres: Option<(String, String)>) {
    // `slow`'s Qpien answers one call in two seconds and 429 to the rest;
    // `quick` has an account of its own.
    let sim_slow = start_sim(|c| {
        c.auto_create_conversations = true;
        c.rate_limit = Some((1, Duration::from_secs(2)));
    })
    .await;
    let sim_quick = start_sim(|c| c.auto_create_conversations = true).await;
    let dir = temp_dir(match postgres {
        Some(_) => "bots-isolation-pg",
        None => "bots-isolation",
    });
    std::fs::write(dir.join("slow.yaml"), BLOCKING).unwrap();
    std::fs::write(dir.join("quick.yaml"), ECHO).unwrap();
    let base = config(&sim_quick, &dir);
    let bot = |name: &str, sim: &flowbot::internals::sim::RunningSim| {
        let mut qpien = base.qpien.clone();
        qpien.endpoint = sim.graphql_url();
        bot_in(&dir, name, &qpien)
    };
    let mut c = Config {
        bots: vec![bot("slow", &sim_slow), bot("quick", &sim_quick)],
        ..base.clone()
    };
    if let Some((url, schema)) = &postgres {
        c.store.backend = flowbot::internals::config::StoreBackend::Postgres;
        c.store.url = Secret::new(url.clone());
        c.store.schema = schema.clone();
    }
    let gate = Arc::new(Semaphore::new(0));
    let running = flowbot::start(c, blocking_registry(gate.clone()))
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let url = |p: &str| format!("http://{}{p}", running.addr());

    // Each bot at its own path, with its own secret.
    let hook_slow = url("/bots/slow/webhook");
    let hook_quick = url("/bots/quick/webhook");
    assert_eq!(
        post(
            &http,
            &hook_quick,
            "webhook-secret-of-slow",
            &message("x", "q0", "hi")
        )
        .await,
        401,
        "one bot's secret opens no other's webhook"
    );
    assert_eq!(
        post(
            &http,
            &url("/webhook"),
            "webhook-secret-of-quick",
            &message("x", "q0", "hi")
        )
        .await,
        404
    );

    // `slow`: one conversation stuck in its action, others rate limited.
    assert_eq!(
        post(
            &http,
            &hook_slow,
            "webhook-secret-of-slow",
            &message("s1", "s-stuck", "wait")
        )
        .await,
        200
    );
    for i in 0..3 {
        let m = message(&format!("s-{i}"), &format!("s-conv-{i}"), "ping");
        assert_eq!(
            post(&http, &hook_slow, "webhook-secret-of-slow", &m).await,
            200
        );
    }
    // Its flow breaks; the reload is refused (and logged), the old flow kept.
    std::fs::write(dir.join("slow.yaml"), "version: 1\nstates: [not, a, map\n").unwrap();

    // `quick` answers everything meanwhile, and reloads its own flow.
    for i in 0..20 {
        let m = message(
            &format!("q-{i}"),
            &format!("q-conv-{i}"),
            &format!("hello {i}"),
        );
        assert_eq!(
            post(&http, &hook_quick, "webhook-secret-of-quick", &m).await,
            200
        );
    }
    wait_until("quick's 20 replies", Duration::from_secs(10), || {
        (0..20).all(|i| replies(&sim_quick, &format!("q-conv-{i}")) == [format!("Echo: hello {i}")])
    })
    .await;
    assert!(
        replies(&sim_slow, "s-stuck").is_empty(),
        "slow's action is still waiting: quick did not wait for it"
    );
    std::fs::write(dir.join("quick.yaml"), ECHO.replace("Echo:", "Echo again:")).unwrap();
    let metrics = || async {
        http.get(url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    let mut text = metrics().await;
    let end = tokio::time::Instant::now() + Duration::from_secs(10);
    while !(text.contains(r#"flowbot_reloads_total{bot="quick",result="ok"} 1"#)
        && text.contains(r#"flowbot_reloads_total{bot="slow",result="rejected"} 1"#))
    {
        assert!(
            tokio::time::Instant::now() < end,
            "reloads not counted:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        text = metrics().await;
    }
    let m = message("q-after", "q-conv-0", "again");
    assert_eq!(
        post(&http, &hook_quick, "webhook-secret-of-quick", &m).await,
        200
    );
    wait_until(
        "quick's reply on its new flow",
        Duration::from_secs(10),
        || replies(&sim_quick, "q-conv-0").last().map(String::as_str) == Some("Echo again: again"),
    )
    .await;

    // One family per metric, one series per bot.
    assert_eq!(
        text.matches("# TYPE flowbot_turns counter").count(),
        1,
        "{text}"
    );
    assert!(
        text.contains(r#"flowbot_turns_total{bot="quick",result="ok"}"#),
        "{text}"
    );
    assert!(
        text.contains(r#"flowbot_qpien_calls_total{bot="quick",result="ok"}"#),
        "{text}"
    );
    assert!(
        text.contains(r#"flowbot_flow_version{bot="slow"}"#),
        "{text}"
    );

    // Readiness per bot, and for the process.
    for path in ["/readyz", "/bots/quick/readyz", "/bots/slow/readyz"] {
        let r = http.get(url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}: {}", r.text().await.unwrap());
    }
    let all: serde_json::Value = serde_json::from_str(
        &http
            .get(url("/readyz"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(all["bots"]["quick"]["ready"], true, "{all}");

    // `slow` catches up in the end: its 429s paced it, its action returns.
    gate.add_permits(1);
    wait_until("slow's replies", Duration::from_secs(30), || {
        replies(&sim_slow, "s-stuck") == ["Done waiting."]
            && (0..3).all(|i| replies(&sim_slow, &format!("s-conv-{i}")) == ["Slow echo: ping"])
    })
    .await;
    assert!(
        sim_slow.state().stats().rate_limited > 0,
        "slow's Qpien did answer 429"
    );

    running.shutdown().await;
    if postgres.is_some() {
        return;
    }
    // One file holds both bots' conversations, each under its own key.
    assert!(!dir.join("flowbot.slow.db").exists() && !dir.join("flowbot.quick.db").exists());
    let count = |bot: &str| {
        let mut n = 0;
        flowbot::internals::store::read_sqlite_sessions(&dir.join("flowbot.db"), bot, &mut |_| {
            n += 1
        })
        .unwrap();
        n
    };
    assert_eq!((count("slow"), count("quick"), count("")), (4, 20, 0));
}

const NUDGING: &str = r#"
version: 1
states:
  start:
    say: "Hi from BOT."
    after: { idle: 1m, say: "Still there? (BOT)" }
"#;

/// Several bots in one store share one task for their timers: each bot's
/// nudge still comes, from that bot, to its own customers, after a restart
/// too; one bot's many due timers do not keep another's from firing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_timers_of_bots_sharing_a_store_fire_for_each_bot() {
    let sim = start_sim(|c| c.auto_create_conversations = true).await;
    let dir = temp_dir("bots-timers");
    std::fs::write(dir.join("a.yaml"), NUDGING.replace("BOT", "a")).unwrap();
    std::fs::write(dir.join("b.yaml"), NUDGING.replace("BOT", "b")).unwrap();
    let clock = flowbot::ManualClock::new(flowbot::internals::time::now());
    let base = config(&sim, &dir);
    let bot = |name: &str| bot_in(&dir, name, &base.qpien);
    let mut c = Config {
        bots: vec![bot("a"), bot("b")],
        clock: flowbot::internals::time::ClockHandle::new(clock.clone()),
        ..base.clone()
    };
    c.runtime.metrics_top_bots = 1;
    let running = flowbot::start(c.clone(), Registry::new()).await.unwrap();
    let http = reqwest::Client::new();
    let hook = |name: &str| format!("http://{}/bots/{name}/webhook", running.addr());
    let secret = |name: &str| format!("webhook-secret-of-{name}");
    for i in 0..30 {
        let conv = format!("a-{i}");
        assert_eq!(
            post(
                &http,
                &hook("a"),
                &secret("a"),
                &message(&conv, &conv, "hi")
            )
            .await,
            200
        );
    }
    assert_eq!(
        post(
            &http,
            &hook("b"),
            &secret("b"),
            &message("b-0", "b-0", "hi")
        )
        .await,
        200
    );
    wait_until("the greetings", Duration::from_secs(10), || {
        replies(&sim, "b-0") == ["Hi from b."]
            && (0..30).all(|i| replies(&sim, &format!("a-{i}")) == ["Hi from a."])
    })
    .await;
    clock.advance(Duration::from_secs(61));
    wait_until(
        "every nudge, from its own bot",
        Duration::from_secs(10),
        || {
            replies(&sim, "b-0") == ["Hi from b.", "Still there? (b)"]
                && (0..30)
                    .all(|i| replies(&sim, &format!("a-{i}")) == ["Hi from a.", "Still there? (a)"])
        },
    )
    .await;
    // The root page: totals of both, and the busiest bot's own series only;
    // each bot's page: its own.
    let page = |path: &str| {
        let req = http.get(format!("http://{}{path}", running.addr())).send();
        async move { req.await.unwrap().text().await.unwrap() }
    };
    let root = page("/metrics").await;
    assert!(
        root.contains("flowbot_turns_total{result=\"ok\"} 62\n")
            && root.contains("flowbot_turns_total{bot=\"a\",result=\"ok\"} 60\n")
            && !root.contains("bot=\"b\""),
        "{root}"
    );
    let of_b = page("/bots/b/metrics").await;
    assert!(
        of_b.contains("flowbot_turns_total{bot=\"b\",result=\"ok\"} 2\n")
            && !of_b.contains("bot=\"a\""),
        "{of_b}"
    );
    // A timer set before a restart fires after it.
    assert_eq!(
        post(
            &http,
            &hook("b"),
            &secret("b"),
            &message("b-1", "b-1", "hi")
        )
        .await,
        200
    );
    wait_until("b-1's greeting", Duration::from_secs(10), || {
        replies(&sim, "b-1") == ["Hi from b."]
    })
    .await;
    running.shutdown().await;
    let running = flowbot::start(c, Registry::new()).await.unwrap();
    clock.advance(Duration::from_secs(61));
    wait_until(
        "b-1's nudge after the restart",
        Duration::from_secs(10),
        || replies(&sim, "b-1") == ["Hi from b.", "Still there? (b)"],
    )
    .await;
    running.shutdown().await;
}

/// An action that counts how many of it run at once, and returns only when
/// the test adds a permit.
fn counting_registry(
    gate: Arc<Semaphore>,
    running: Arc<std::sync::atomic::AtomicUsize>,
    most: Arc<std::sync::atomic::AtomicUsize>,
) -> Registry {
    use std::sync::atomic::{AtomicUsize, Ordering};
    struct Count(Arc<Semaphore>, Arc<AtomicUsize>, Arc<AtomicUsize>);
    #[flowbot::async_trait]
    impl flowbot::Action for Count {
        async fn run(
            &self,
            _: &mut flowbot::ActionContext<'_>,
        ) -> Result<flowbot::ActionOutcome, flowbot::ActionError> {
            let now = self.1.fetch_add(1, Ordering::SeqCst) + 1;
            self.2.fetch_max(now, Ordering::SeqCst);
            self.0.acquire().await.unwrap().forget();
            self.1.fetch_sub(1, Ordering::SeqCst);
            Ok(flowbot::ActionOutcome::Continue)
        }
    }
    Registry::new().action("block", Count(gate, running, most))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooded_bot_takes_no_more_than_its_share_of_the_workers() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let sim = start_sim(|c| c.auto_create_conversations = true).await;
    let dir = temp_dir("bots-share");
    std::fs::write(dir.join("flood.yaml"), BLOCKING).unwrap();
    std::fs::write(dir.join("quiet.yaml"), ECHO).unwrap();
    let base = config(&sim, &dir);
    let bot = |name: &str| bot_in(&dir, name, &base.qpien);
    let mut c = Config {
        bots: vec![bot("flood"), bot("quiet")],
        ..base.clone()
    };
    // Four workers, three for one bot at most: the flood's forty blocked
    // turns hold three, and the quiet bot runs on the fourth.
    c.runtime.workers = 4;
    c.runtime.max_per_bot = 3;
    let gate = Arc::new(Semaphore::new(0));
    let (running_now, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let running = flowbot::start(
        c,
        counting_registry(gate.clone(), running_now.clone(), most.clone()),
    )
    .await
    .unwrap();
    let http = reqwest::Client::new();
    let hook = |name: &str| format!("http://{}/bots/{name}/webhook", running.addr());
    for i in 0..40 {
        let conv = format!("f{i}");
        let status = post(
            &http,
            &hook("flood"),
            "webhook-secret-of-flood",
            &message(&conv, &conv, "wait"),
        )
        .await;
        assert_eq!(status, 200);
    }
    wait_until("the flood's turns, blocked", Duration::from_secs(5), || {
        running_now.load(Ordering::SeqCst) == 3
    })
    .await;
    for i in 0..5 {
        let conv = format!("q{i}");
        let status = post(
            &http,
            &hook("quiet"),
            "webhook-secret-of-quiet",
            &message(&conv, &conv, "hi"),
        )
        .await;
        assert_eq!(status, 200);
    }
    wait_until(
        "the quiet bot's answers, during the flood",
        Duration::from_secs(5),
        || (0..5).all(|i| replies(&sim, &format!("q{i}")) == ["Echo: hi"]),
    )
    .await;
    assert_eq!(
        most.load(Ordering::SeqCst),
        3,
        "the flood took more than its share"
    );
    gate.add_permits(40);
    wait_until(
        "every flooded conversation, answered",
        Duration::from_secs(10),
        || (0..40).all(|i| replies(&sim, &format!("f{i}")) == ["Done waiting."]),
    )
    .await;
    assert_eq!(most.load(Ordering::SeqCst), 3);
    running.shutdown().await;
}

/// A metric of the root `/metrics` page (a process-wide series, or a
/// bot's), 0 when absent.
pub(crate) async fn metric(http: &reqwest::Client, base: &str, series: &str) -> f64 {
    let text = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// Flows compiled on first use, shared by content, kept to
/// `runtime.flow_cache_bytes`; a bot whose flow does not compile starts
/// all the same, says so in its `/readyz`, keeps its message and answers it
/// once its file is fixed; tokens left idle are dropped and fetched again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flows_are_compiled_on_first_use_shared_by_content_and_kept_to_their_bound() {
    let sim = start_sim(|c| c.auto_create_conversations = true).await;
    let dir = temp_dir("bots-lazy-flows");
    let base = config(&sim, &dir);
    // `a` and `b`: the same flow in two folders; `c`: another flow; `d`: a
    // flow that parses but does not compile (a `goto` to no state).
    for (file, text) in [
        ("a/echo.yaml", ECHO.to_owned()),
        ("b/echo.yaml", ECHO.to_owned()),
        ("c/echo.yaml", ECHO.replace("Echo:", "C says:")),
        ("d/echo.yaml", ECHO.replace("goto: start", "goto: nowhere")),
    ] {
        let path = dir.join(file);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    let one = flowbot::Flow::load(dir.join("a/echo.yaml"), &Default::default())
        .unwrap()
        .weight() as u64;
    let bots = ["a", "b", "c", "d"]
        .map(|name| BotConfig {
            flow: dir.join(format!("{name}/echo.yaml")),
            ..bot_in(&dir, name, &base.qpien)
        })
        .to_vec();
    let mut c = Config { bots, ..base };
    // Room for one compiled flow and a half.
    c.runtime.flow_cache_bytes = one + one / 2;
    c.runtime.token_idle = Duration::from_millis(300);
    c.server.admin_token = Secret::new("admin-token-of-the-lazy-test");
    let running = flowbot::start(c, Registry::new()).await.unwrap();
    let http = reqwest::Client::new();
    let root = format!("http://{}", running.addr());
    let say = |bot: &'static str, id: &str, conv: &str, text: &str| {
        let (http, url) = (http.clone(), format!("{root}/bots/{bot}/webhook"));
        let m = message(id, conv, text);
        async move {
            let secret = format!("webhook-secret-of-{bot}");
            assert_eq!(post(&http, &url, &secret, &m).await, 200);
        }
    };
    let compiled = || metric(&http, &root, "flowbot_flows_compiled_total");

    // Started, and nothing compiled yet; listing the bots compiles nothing.
    let list = http
        .get(format!("{root}/admin/bots"))
        .bearer_auth("admin-token-of-the-lazy-test")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(list.contains(r#""flow_name":"echo""#), "{list}");
    assert_eq!(
        compiled().await,
        0.0,
        "no flow is compiled before a bot needs it"
    );
    say("a", "a1", "ca", "one").await;
    wait_until("a's reply", Duration::from_secs(10), || {
        replies(&sim, "ca") == ["Echo: one"]
    })
    .await;
    say("b", "b1", "cb", "two").await;
    wait_until("b's reply", Duration::from_secs(10), || {
        replies(&sim, "cb") == ["Echo: two"]
    })
    .await;
    assert_eq!(compiled().await, 1.0, "a and b share one compiled flow");
    assert_eq!(metric(&http, &root, "flowbot_flow_cache_flows").await, 1.0);

    // `c` needs room: the flow of a and b goes (no turn holds it).
    say("c", "c1", "cc", "three").await;
    wait_until("c's reply", Duration::from_secs(10), || {
        replies(&sim, "cc") == ["C says: three"]
    })
    .await;
    assert_eq!(compiled().await, 2.0);
    assert_eq!(
        metric(&http, &root, "flowbot_flows_evicted_total").await,
        1.0
    );
    assert_eq!(metric(&http, &root, "flowbot_flow_cache_flows").await, 1.0);
    let bytes = metric(&http, &root, "flowbot_flow_cache_bytes").await;
    assert!(bytes > 0.0 && bytes <= (one + one / 2) as f64, "{bytes}");
    // `a` again: compiled again, and answering as before, its token dropped
    // meanwhile and fetched again.
    tokio::time::sleep(Duration::from_millis(700)).await;
    say("a", "a2", "ca", "four").await;
    wait_until("a's second reply", Duration::from_secs(10), || {
        replies(&sim, "ca") == ["Echo: one", "Echo: four"]
    })
    .await;
    assert_eq!(compiled().await, 3.0);
    assert_eq!(
        metric(
            &http,
            &root,
            r#"flowbot_qpien_token_refreshes_total{bot="a"}"#
        )
        .await,
        2.0,
        "a's idle token was dropped and fetched again"
    );

    // `d` does not compile: it says so, the others stay ready.
    let r = http
        .get(format!("{root}/bots/d/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let body: serde_json::Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    let error = body["flow"]["error"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(error.contains("nowhere"), "{body}");
    let r = http
        .get(format!("{root}/bots/a/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        http.get(format!("{root}/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // Its message is kept, and answered once the file is fixed.
    say("d", "d1", "cd", "five").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(replies(&sim, "cd").is_empty());
    std::fs::write(dir.join("d/echo.yaml"), ECHO.replace("Echo:", "D says:")).unwrap();
    wait_until("d's reply once fixed", Duration::from_secs(15), || {
        replies(&sim, "cd") == ["D says: five"]
    })
    .await;
    running.shutdown().await;
}
