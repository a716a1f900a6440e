//! Handoffs that always end, through the simulator over real HTTP: Qpien
//! documents no event for an agent leaving, so the bot reads the conversation
//! when the customer writes; `handoff_timeout`, a release by hand and the
//! (ASSUMED) `LEAVE_CONVERSATION` end a handoff too; a handoff Qpien refuses is
//! not silent.

use std::time::Duration;

use flowbot::internals::qpien::{RetryConfig, Secret};
use flowbot::internals::sim::{self, CustomerInput, RunningSim, SimConfig};
use flowbot::{Config, Registry, Running};

use crate::runtime::{temp_dir, wait_until};

const FLOW: &str = r#"
version: 1
release: welcome_back
settings:
  release_message: "You are back with the bot."
  handoff_failed_message: "Nobody can take over right now; the bot stays with you."
intents:
  - { text: agent, goto: human }
states:
  start:
    say: "Hi! Write agent for a person."
    on:
      - { text: ping, say: pong }
  human:
    say: "Connecting you to a person."
    handoff: true
  welcome_back:
    say: "Anything else?"
    on:
      - { text: ping, say: pong, goto: start }
"#;

const ADMIN: &str = "admin-token-for-tests";

struct Setup {
    sim: RunningSim,
    bot: Running,
    conv: String,
    http: reqwest::Client,
}

impl Setup {
    async fn start(name: &str, flow: &str, sim_tweak: impl FnOnce(&mut SimConfig)) -> Setup {
        let mut sc = SimConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            ..SimConfig::default()
        };
        sim_tweak(&mut sc);
        let sim = sim::start(sc).await.unwrap();
        let dir = temp_dir(name);
        std::fs::write(dir.join("flow.yaml"), flow).unwrap();
        let d = SimConfig::default();
        let mut c = Config {
            flow: dir.join("flow.yaml"),
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
        c.runtime.timer_interval = Duration::from_millis(100);
        c.handoff.check_interval = Duration::ZERO;
        c.qpien.dialect = sim.state().config().dialect;
        let bot = flowbot::start(c, Registry::new()).await.unwrap();
        let url = format!("http://{}/webhook", bot.addr());
        sim.state().configure(|s| s.webhook_url = Some(url));
        let conv = sim.state().create_conversation("livechat", None, "Dee");
        Setup {
            sim,
            bot,
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

    fn texts(&self) -> Vec<String> {
        self.sim
            .state()
            .bot_messages(&self.conv)
            .iter()
            .map(|m| m["content"].as_str().unwrap_or("").to_owned())
            .collect()
    }

    async fn expect(&self, what: &str, texts: &[&str]) {
        let want: Vec<String> = texts.iter().map(|t| t.to_string()).collect();
        // Generous: CI runs every test at once on two cores.
        let end = tokio::time::Instant::now() + Duration::from_secs(15);
        while self.texts() != want {
            if tokio::time::Instant::now() > end {
                panic!("{what}: expected {want:?}, got {:?}", self.texts());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Into a handoff with the agent on the conversation.
    async fn handed_off(&self) {
        self.say("hello");
        self.expect("the greeting", &["Hi! Write agent for a person."])
            .await;
        self.say("agent");
        wait_until("the handoff", Duration::from_secs(5), || {
            !self.sim.state().updates().is_empty()
        })
        .await;
        self.sim.state().agent_join(&self.conv);
        self.say("is anyone there?");
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(
            self.texts(),
            [
                "Hi! Write agent for a person.",
                "Connecting you to a person."
            ],
            "silent while the agent is on it"
        );
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

    async fn stop(self) {
        self.bot.shutdown().await;
        self.sim.shutdown().await;
    }
}

const BACK: [&str; 4] = [
    "Hi! Write agent for a person.",
    "Connecting you to a person.",
    "You are back with the bot.",
    "Anything else?",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_leaving_is_noticed_at_the_next_message() {
    let s = Setup::start("handoff-left", FLOW, |_| {}).await;
    s.handed_off().await;
    // Qpien sends nothing when the agent leaves: the conversation shows nobody.
    s.sim.state().agent_leave(&s.conv);
    s.say("hello?");
    let mut want = BACK.to_vec();
    // The message that found the bot back is answered in `release:`'s state.
    want.push("Anything else?");
    s.expect("the release and an answer", &want).await;
    s.say("ping");
    want.push("pong");
    want.push("Hi! Write agent for a person.");
    s.expect("service as usual", &want).await;
    assert!(
        s.metrics()
            .await
            .contains(r#"flowbot_releases_total{result="checked"} 1"#),
        "{}",
        s.metrics().await
    );
    s.stop().await;
}

/// The same, with an account that speaks the external dialect (envelopes,
/// `externalGetConversation`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_leaving_is_noticed_in_the_external_dialect() {
    use flowbot::internals::qpien::Dialect;
    let s = Setup::start("handoff-left-ext", FLOW, |c| c.dialect = Dialect::External).await;
    s.handed_off().await;
    s.sim.state().agent_leave(&s.conv);
    s.say("hello?");
    let mut want = BACK.to_vec();
    want.push("Anything else?");
    s.expect("the release", &want).await;
    assert!(s
        .sim
        .state()
        .requests()
        .iter()
        .any(|r| r.operation == "getConversation"));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversation_closed_in_qpien_comes_back() {
    let s = Setup::start("handoff-closed", FLOW, |_| {}).await;
    s.handed_off().await;
    s.sim.state().set_status(&s.conv, "Closed");
    s.say("new question");
    let mut want = BACK.to_vec();
    want.push("Anything else?");
    s.expect("the release", &want).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handoff_ends_at_its_timeout_without_a_message() {
    let flow = FLOW.replace(
        "  release_message:",
        "  handoff_timeout: 1s\n  release_message:",
    );
    let s = Setup::start("handoff-timeout", &flow, |_| {}).await;
    s.handed_off().await;
    s.expect("the release by timeout", &BACK).await;
    // Qpien is told the bot has it again.
    wait_until("the release update", Duration::from_secs(5), || {
        s.sim.state().updates().len() == 2
    })
    .await;
    assert_eq!(s.sim.state().updates()[1]["status"], "OPEN");
    assert!(s
        .metrics()
        .await
        .contains(r#"flowbot_releases_total{result="timeout"} 1"#));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_by_hand_needs_the_admin_token() {
    let s = Setup::start("handoff-manual", FLOW, |_| {}).await;
    s.handed_off().await;
    let url = format!(
        "http://{}/admin/conversations/{}/release",
        s.bot.addr(),
        s.conv
    );
    let refused = s.http.post(&url).send().await.unwrap();
    assert_eq!(refused.status().as_u16(), 401);
    let wrong = s.http.post(&url).bearer_auth("nope").send().await.unwrap();
    assert_eq!(wrong.status().as_u16(), 401);
    // The CLI, as an operator runs it.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_flowbot"))
        .args(["release", &s.conv, "--url"])
        .arg(format!("http://{}", s.bot.addr()))
        .env("FLOWBOT_SERVER__ADMIN_TOKEN", ADMIN)
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    s.expect("the release by hand", &BACK).await;
    wait_until("the release update", Duration::from_secs(5), || {
        s.sim.state().updates().len() == 2
    })
    .await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_handoff_is_said_and_the_bot_stays() {
    let s = Setup::start("handoff-refused", FLOW, |_| {}).await;
    s.say("hello");
    s.expect("the greeting", &["Hi! Write agent for a person."])
        .await;
    s.sim.state().inject_on("updateConversation", "FORBIDDEN");
    s.say("agent");
    let want = [
        "Hi! Write agent for a person.",
        "Connecting you to a person.",
        "Nobody can take over right now; the bot stays with you.",
        "Anything else?",
    ];
    s.expect("the refusal said", &want).await;
    s.say("ping");
    let mut more = want.to_vec();
    more.extend(["pong", "Hi! Write agent for a person."]);
    s.expect("still in service", &more).await;
    assert!(s
        .metrics()
        .await
        .contains("flowbot_handoff_failures_total 1"));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leave_event_is_still_understood() {
    let s = Setup::start("handoff-leave-event", FLOW, |c| c.leave_events = true).await;
    s.handed_off().await;
    s.sim.state().agent_leave(&s.conv);
    s.expect("the release by event", &BACK).await;
    s.stop().await;
}

/// Joins and leaves are told apart by what identifies them, not by their bytes:
/// the same agent joining, leaving and joining again (identical deliveries)
/// silences the bot again, and a second identical leave gives it back again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_leave_join_again_works_with_identical_deliveries() {
    let s = Setup::start("handoff-rejoin", FLOW, |c| c.leave_events = true).await;
    s.handed_off().await;
    s.sim.state().agent_leave(&s.conv);
    s.expect("the first release", &BACK).await;
    // The same agent joins again: the delivery is byte for byte the first one.
    s.sim.state().agent_join(&s.conv);
    tokio::time::sleep(Duration::from_millis(200)).await;
    s.say("ping");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(s.texts(), BACK, "silent while the agent is back on it");
    s.sim.state().agent_leave(&s.conv);
    let mut want = BACK.to_vec();
    want.extend(["You are back with the bot.", "Anything else?"]);
    s.expect("the second release", &want).await;
    s.say("ping");
    want.extend(["pong", "Hi! Write agent for a person."]);
    s.expect("service as usual", &want).await;
    s.stop().await;
}
