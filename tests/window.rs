//! WhatsApp's 24-hour window end to end: the bot's clock and the simulator's
//! are moved together (the simulator's over HTTP, as a user's test would),
//! and the simulator refuses free-form messages outside the window as
//! WhatsApp does.

use std::time::Duration;

use flowbot::internals::qpien::{RetryConfig, Secret};
use flowbot::internals::sim::{self, CustomerInput, RunningSim, SimConfig};
use flowbot::{Config, ManualClock, Registry, Running};

use crate::runtime::temp_dir;

const FLOW: &str = r#"
version: 1
release: welcome_back
settings:
  default_language: en
  release_message: "You are back with the bot."
intents:
  - { text: agent, goto: human }
states:
  start:
    say: "Hi! Write order, or agent for a person."
    on: [{ text: order, goto: ordered }]
  ordered:
    set: { customer: "Dee" }
    say: "Thanks, your order is in."
    after:
      idle: 30h
      say: "Anything else about your order?"
      template: { name: order_followup, params: ["{{ customer }}"] }
  human:
    say: "Connecting you to a person."
    handoff: true
  welcome_back:
    say: "Anything else?"
"#;

const ADMIN: &str = "admin-token-for-window-tests";

struct Setup {
    sim: RunningSim,
    bot: Running,
    clock: ManualClock,
    conv: String,
    http: reqwest::Client,
}

impl Setup {
    async fn start(name: &str) -> Setup {
        Setup::with(name, FLOW).await
    }

    async fn with(name: &str, flow: &str) -> Setup {
        Setup::with_config(name, flow, |_| {}).await
    }

    async fn with_config(name: &str, flow: &str, edit: impl FnOnce(&mut Config)) -> Setup {
        let sim = sim::start(SimConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            ..SimConfig::default()
        })
        .await
        .unwrap();
        let dir = temp_dir(name);
        std::fs::write(dir.join("flow.yaml"), flow).unwrap();
        let d = SimConfig::default();
        let clock = ManualClock::new(flowbot::internals::time::now());
        let mut c = Config {
            flow: dir.join("flow.yaml"),
            clock: flowbot::internals::time::ClockHandle::new(clock.clone()),
            ..Config::default()
        };
        c.qpien.endpoint = sim.graphql_url();
        c.qpien.client_id = Secret::new(d.client_id);
        c.qpien.client_secret = Secret::new(d.client_secret);
        c.qpien.retry = RetryConfig {
            max_attempts: 3,
            min_delay: Duration::from_millis(5),
            max_delay: Duration::from_millis(20),
        };
        c.server.listen = "127.0.0.1:0".parse().unwrap();
        c.server.webhook_secret = Secret::new(sim.state().config().webhook_secret);
        c.server.admin_token = Secret::new(ADMIN);
        c.store.path = dir.join("flowbot.db");
        c.runtime.timer_interval = Duration::from_millis(50);
        edit(&mut c);
        let bot = flowbot::start(c, Registry::new()).await.unwrap();
        let url = format!("http://{}/webhook", bot.addr());
        sim.state().configure(|s| s.webhook_url = Some(url));
        let conv = sim
            .state()
            .create_conversation("whatsapp", Some("en"), "Dee");
        Setup {
            sim,
            bot,
            clock,
            conv,
            http: reqwest::Client::new(),
        }
    }

    fn say(&self, text: &str) {
        self.sim.state().customer_message(
            &self.conv,
            &CustomerInput {
                text: text.into(),
                ..Default::default()
            },
        );
    }

    /// What the bot sent: texts, and templates as `template:NAME(params)`.
    fn sent(&self) -> Vec<String> {
        self.sim
            .state()
            .bot_messages(&self.conv)
            .iter()
            .map(|m| match m["template"]["name"].as_str() {
                Some(name) => format!(
                    "template:{name}({})",
                    m["template"]["params"][0].as_str().unwrap_or("")
                ),
                None => m["content"].as_str().unwrap_or("").to_owned(),
            })
            .collect()
    }

    async fn expect(&self, what: &str, want: &[&str]) {
        let want: Vec<String> = want.iter().map(|t| t.to_string()).collect();
        let end = tokio::time::Instant::now() + Duration::from_secs(5);
        while self.sent() != want {
            if tokio::time::Instant::now() > end {
                panic!("{what}: expected {want:?}, got {:?}", self.sent());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Moves both clocks, the simulator's through its HTTP endpoint.
    async fn advance(&self, hours: u64) {
        self.clock.advance(Duration::from_secs(hours * 3600));
        let r = self
            .http
            .post(format!("{}sim/clock", self.sim.url()))
            .body(format!("{{\"advance\": \"{hours}h\"}}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }

    /// Waits until `/metrics` has the line `line` (a series and its value).
    async fn metric_reads(&self, line: &str) {
        let end = tokio::time::Instant::now() + Duration::from_secs(5);
        while !self.metrics().await.lines().any(|l| l == line) {
            assert!(tokio::time::Instant::now() < end, "{line}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn metrics(&self) -> String {
        self.http
            .get(format!("http://{}/metrics", self.bot.addr()))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nudge_after_30_hours_goes_out_as_a_template() {
    let s = Setup::start("window-nudge").await;
    s.say("hi");
    s.say("order");
    s.expect(
        "the answers",
        &[
            "Hi! Write order, or agent for a person.",
            "Thanks, your order is in.",
        ],
    )
    .await;
    s.advance(30).await;
    s.expect(
        "the nudge, as a template",
        &[
            "Hi! Write order, or agent for a person.",
            "Thanks, your order is in.",
            "template:order_followup(Dee)",
        ],
    )
    .await;
    let created = s.sim.state().created();
    assert_eq!(
        created.last().unwrap()["operation"],
        "sendWhatsappTemplateMessage"
    );
    assert_eq!(s.sim.state().stats().window_refusals, 0);
    // The customer answers: the window is open again, free-form is back.
    s.say("order");
    s.expect(
        "a free-form answer",
        &[
            "Hi! Write order, or agent for a person.",
            "Thanks, your order is in.",
            "template:order_followup(Dee)",
            "Thanks, your order is in.",
        ],
    )
    .await;
    s.bot.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_free_form_reply_25_hours_after_the_customer_wrote_is_never_sent() {
    let s = Setup::start("window-release").await;
    s.say("hi");
    s.say("agent");
    s.expect(
        "the handoff",
        &[
            "Hi! Write order, or agent for a person.",
            "Connecting you to a person.",
        ],
    )
    .await;
    // A person keeps it for 25 hours; then it is released by hand.
    s.advance(25).await;
    let r = s
        .http
        .post(format!(
            "http://{}/admin/conversations/{}/release",
            s.bot.addr(),
            s.conv
        ))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "accepted");
    // Both the release message and welcome_back's say are withheld.
    let end = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let metrics = s.metrics().await;
        if metrics.contains("flowbot_window_withheld_total 2") {
            break;
        }
        assert!(tokio::time::Instant::now() < end, "{metrics}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        s.sent(),
        [
            "Hi! Write order, or agent for a person.",
            "Connecting you to a person."
        ],
        "nothing free-form after the window"
    );
    assert_eq!(s.sim.state().stats().window_refusals, 0, "not even tried");
    s.bot.shutdown().await;
}

const SURVEY: &str = r#"
version: 1
settings: { default_language: en }
schedules:
  - { name: delivery_survey, state: survey, from: delivered_at, after: 2d }
states:
  start:
    say: "Hi! Write order."
    on: [{ text: order, goto: ordered }]
  ordered:
    set: { delivered_at: "{{ now }}", customer: "Dee" }
    say: "Ordered; we deliver today."
    end: true
  survey:
    say: "How did we do, {{ customer }}?"
    template: { name: survey, params: ["{{ customer }}"] }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_survey_fires_once_at_its_time() {
    let s = Setup::with("window-survey", SURVEY).await;
    s.say("hi");
    s.say("order");
    s.expect(
        "the order",
        &["Hi! Write order.", "Ordered; we deliver today."],
    )
    .await;
    // A day later: not yet.
    s.advance(24).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(s.sent().len(), 2);
    // Two days after the delivery: the survey, as a template (the window
    // closed a day ago), once.
    s.advance(25).await;
    s.expect(
        "the survey",
        &[
            "Hi! Write order.",
            "Ordered; we deliver today.",
            "template:survey(Dee)",
        ],
    )
    .await;
    s.advance(72).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(s.sent().len(), 3, "once: {:?}", s.sent());
    s.bot.shutdown().await;
}

const EVERY_MINUTE: &str = r#"
version: 1
settings: { default_language: en }
schedules:
  - { name: ping, state: ping, cron: "* * * * *", mode: interrupt }
states:
  start:
    say: "Hi!"
  ping:
    say: "Ping"
"#;

/// A schedule that fires faster than its messages go out: a firing that
/// finds the conversation's messages of the one before still queued sends
/// nothing, so the queue never holds more than one firing's messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_firing_while_the_last_one_is_still_queued_sends_nothing() {
    let s = Setup::with("window-every-minute", EVERY_MINUTE).await;
    s.say("hi");
    s.expect("the greeting", &["Hi!"]).await;
    // Qpien answers slowly: the first ping is still on its way when the
    // next firings come.
    s.sim.state().configure(|c| {
        c.faults.slow = 1.0;
        c.faults.slow_delay = Duration::from_secs(3);
    });
    let before = s.sim.state().stats().requests;
    s.clock.advance(Duration::from_secs(61));
    let end = tokio::time::Instant::now() + Duration::from_secs(5);
    while s.sim.state().stats().requests == before {
        assert!(tokio::time::Instant::now() < end, "the first ping goes out");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for n in 1..=2 {
        s.clock.advance(Duration::from_secs(60));
        s.metric_reads(&format!("flowbot_schedule_coalesced_total {n}"))
            .await;
    }
    s.sim.state().configure(|c| c.faults.slow = 0.0);
    s.expect("one ping for three firings", &["Hi!", "Ping"])
        .await;
    // Once it is out (delivered and marked, as the bot sees it: Qpien's
    // double has it a little before), the next firing sends again.
    s.metric_reads("flowbot_outbox_depth 0").await;
    s.clock.advance(Duration::from_secs(60));
    s.expect("the next ping", &["Hi!", "Ping", "Ping"]).await;
    s.bot.shutdown().await;
}

const STARTED: &str = r#"
version: 1
settings: { default_language: en }
states:
  start:
    say: "Hi! How can we help?"
  offer:
    say: "Hi! How can we help?"
    template: { name: order_followup, params: ["Dee"] }
"#;

/// Only the customer opens the window: a conversation the business starts,
/// where the customer never wrote, gets the template (or nothing) at every
/// start, however recent the bot's own session of it is; once the customer
/// writes, free-form is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_on_a_conversation_where_the_customer_never_wrote_stay_outside_the_window() {
    const TOKEN: &str = "api-token-for-window-tests";
    let s = Setup::with_config("window-starts", STARTED, |c| {
        c.server.api_token = Secret::new(TOKEN);
    })
    .await;
    let start = |state: &str, key: &str| {
        let req = s
            .http
            .post(format!("http://{}/api/start", s.bot.addr()))
            .bearer_auth(TOKEN)
            .header("content-type", "application/json")
            .body(
                serde_json::json!({"conversation": s.conv, "state": state, "key": key}).to_string(),
            );
        async move { req.send().await.unwrap().status().as_u16() }
    };
    // No template in `start`: withheld, three times, minutes apart.
    for (i, key) in ["a", "b", "c"].iter().enumerate() {
        assert_eq!(start("start", key).await, 202);
        let want = format!("flowbot_window_withheld_total {}", i + 1);
        let end = tokio::time::Instant::now() + Duration::from_secs(5);
        while !s.metrics().await.contains(&want) {
            assert!(tokio::time::Instant::now() < end, "{want}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        s.clock.advance(Duration::from_secs(90));
    }
    assert_eq!(s.sent(), Vec::<String>::new(), "nothing free-form");
    // A turn is counted once committed, just after what it withheld.
    let end = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut metrics = s.metrics().await;
    while !metrics.contains(r#"flowbot_turns_total{result="withheld"} 3"#)
        && tokio::time::Instant::now() < end
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
        metrics = s.metrics().await;
    }
    assert!(
        metrics.contains(r#"flowbot_turns_total{result="withheld"} 3"#)
            && !metrics.contains(r#"result="error""#),
        "withheld starts are not errors: {metrics}"
    );
    // With a template: the template, every time.
    assert_eq!(start("offer", "d").await, 202);
    s.expect("the template", &["template:order_followup(Dee)"])
        .await;
    s.clock.advance(Duration::from_secs(60));
    assert_eq!(start("offer", "e").await, 202);
    s.expect(
        "the template again",
        &[
            "template:order_followup(Dee)",
            "template:order_followup(Dee)",
        ],
    )
    .await;
    assert_eq!(s.sim.state().stats().window_refusals, 0, "never tried");
    // The customer writes: the window opens, free-form is back.
    s.say("hello");
    s.expect(
        "a free-form answer",
        &[
            "template:order_followup(Dee)",
            "template:order_followup(Dee)",
            "Hi! How can we help?",
        ],
    )
    .await;
    s.bot.shutdown().await;
}
