//! A real `flowbot run` process, killed with SIGKILL in the middle of a burst
//! and started again: every accepted message is answered exactly once.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use flowbot::internals::qpien::webhook::sign;
use serde_json::Value;

use crate::qpien::start_sim;
use crate::runtime::{message, wait_until, SECRET};
use flowbot::internals::sim::RunningSim;

/// Each turn counts: a message processed twice would leave a gap.
const COUNTER: &str = r##"
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

pub(crate) struct Bot {
    pub(crate) child: Child,
    pub(crate) url: String,
}

/// A test that fails leaves no process behind.
impl Drop for Bot {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(dir: &Path, qpien: &RunningSim) -> Bot {
    spawn_with(dir, qpien, &[("RUST_LOG", "warn")])
}

pub(crate) fn spawn_with(dir: &Path, qpien: &RunningSim, env: &[(&str, &str)]) -> Bot {
    let mut child = Command::new(env!("CARGO_BIN_EXE_flowbot"))
        .args(["run", "--config"])
        .arg(dir.join("flowbot.toml"))
        .env("FLOWBOT_QPIEN__ENDPOINT", qpien.graphql_url())
        .env("FLOWBOT_QPIEN__CLIENT_ID", "id-1")
        .env("FLOWBOT_QPIEN__CLIENT_SECRET", "secret-1")
        .env("FLOWBOT_SERVER__WEBHOOK_SECRET", SECRET)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.join("stderr.log")).unwrap())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .trim()
        .strip_prefix("flowbot listening on ")
        .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
        .to_owned();
    Bot { child, url }
}

pub(crate) async fn post(http: &reqwest::Client, url: &str, payload: &Value) -> bool {
    let body = serde_json::to_vec(payload).unwrap();
    let sent = http
        .post(format!("{url}/webhook"))
        .header("content-type", "application/json")
        .header("X-Qpien-Signature", sign(SECRET.as_bytes(), &body))
        .body(body)
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    matches!(sent, Ok(r) if r.status().as_u16() == 200)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_process_answers_every_accepted_message_exactly_once() {
    let qpien = start_sim(|c| {
        c.auto_create_conversations = true;
        c.faults.slow = 1.0;
        c.faults.slow_delay = Duration::from_millis(15);
    })
    .await;
    let dir = crate::runtime::temp_dir("crash");
    std::fs::write(dir.join("flow.yaml"), COUNTER).unwrap();
    std::fs::write(
        dir.join("flowbot.toml"),
        "flow = \"flow.yaml\"\n\
         [server]\nlisten = \"127.0.0.1:0\"\n\
         [store]\npath = \"flowbot.db\"\n\
         [qpien]\nwhatsapp_operation = \"create_message\"\n\
         [qpien.rate_limit]\nrequests = 100000\nper = \"1s\"\n\
         [qpien.retry]\nmin_delay = \"5ms\"\nmax_delay = \"20ms\"\n",
    )
    .unwrap();
    let http = reqwest::Client::new();
    let conversations = ["k1", "k2", "k3"];
    let messages: Vec<Value> = (0..60)
        .map(|i| {
            let c = conversations[i % 3];
            message(&format!("msg-{i}"), c, &format!("m{i}"))
        })
        .collect();

    let mut bot = spawn(&dir, &qpien);
    let mut accepted = 0;
    let mut next = 0;
    while next < messages.len() {
        if accepted == 25 {
            bot.child.kill().unwrap(); // SIGKILL
            bot.child.wait().unwrap();
            let delivered = qpien.state().created().len();
            assert!(delivered < accepted, "work was still in flight at the kill");
        }
        if post(&http, &bot.url, &messages[next]).await {
            accepted += 1;
            next += 1;
        } else {
            break; // The process is gone: Qpien keeps the rest for later.
        }
    }
    assert!(
        accepted >= 25 && next < messages.len(),
        "the kill came mid-burst"
    );

    // Restarted, the bot gets Qpien's redeliveries: some accepted messages
    // again, and everything not acknowledged.
    let mut bot = spawn(&dir, &qpien);
    for m in &messages[next.saturating_sub(5)..] {
        assert!(post(&http, &bot.url, m).await);
    }
    wait_until("every reply", Duration::from_secs(20), || {
        qpien.state().created().len() >= messages.len()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    bot.child.kill().unwrap();
    bot.child.wait().unwrap();

    assert_eq!(qpien.state().created().len(), messages.len());
    for (ci, c) in conversations.iter().enumerate() {
        let got = crate::runtime::replies(&qpien, c);
        let expected: Vec<String> = (0..20)
            .map(|k| format!("#{} m{}", k + 1, k * 3 + ci))
            .collect();
        assert_eq!(got, expected, "conversation {c}");
    }
}

/// A reply whose `createMessage` reached Qpien just before the process died is
/// not sent again after the restart, even by a Qpien that does not deduplicate
/// `frontMsgId`: the restarted bot reads the conversation first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_that_reached_qpien_before_a_kill_is_not_sent_again() {
    let qpien = start_sim(|c| {
        c.auto_create_conversations = true;
        c.dedup_creates = false;
    })
    .await;
    let dir = crate::runtime::temp_dir("reconcile");
    std::fs::write(dir.join("flow.yaml"), COUNTER).unwrap();
    std::fs::write(
        dir.join("flowbot.toml"),
        "flow = \"flow.yaml\"\n[server]\nlisten = \"127.0.0.1:0\"\n[store]\npath = \"flowbot.db\"\n\
         [qpien.retry]\nmin_delay = \"5ms\"\nmax_delay = \"20ms\"\n",
    )
    .unwrap();
    let http = reqwest::Client::new();
    let mut bot = spawn(&dir, &qpien);
    qpien.state().hold_next_creates(1);
    assert!(post(&http, &bot.url, &message("r-1", "rc", "hello")).await);
    // The create is in Qpien; its answer is held back; the process dies.
    tokio::time::timeout(Duration::from_secs(10), qpien.state().held())
        .await
        .expect("the reply reached the simulator");
    bot.child.kill().unwrap();
    bot.child.wait().unwrap();
    assert_eq!(crate::runtime::replies(&qpien, "rc").len(), 1);

    let mut bot = spawn(&dir, &qpien);
    assert!(post(&http, &bot.url, &message("r-2", "rc", "again")).await);
    wait_until("the next reply", Duration::from_secs(10), || {
        crate::runtime::replies(&qpien, "rc").len() >= 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    bot.child.kill().unwrap();
    bot.child.wait().unwrap();
    assert_eq!(
        crate::runtime::replies(&qpien, "rc"),
        ["#1 hello", "#2 again"],
        "one message per reply"
    );
}

/// JSON logs carry the conversation id; SIGTERM drains and exits cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_and_a_clean_stop_on_sigterm() {
    let qpien = start_sim(|c| c.auto_create_conversations = true).await;
    let dir = crate::runtime::temp_dir("sigterm");
    std::fs::write(dir.join("flow.yaml"), COUNTER).unwrap();
    std::fs::write(
        dir.join("flowbot.toml"),
        "flow = \"flow.yaml\"\n[server]\nlisten = \"127.0.0.1:0\"\n[log]\nformat = \"json\"\nlevel = \"flowbot=debug\"\n",
    )
    .unwrap();
    let mut bot = spawn_with(&dir, &qpien, &[("RUST_LOG", "flowbot=debug")]);
    let http = reqwest::Client::new();
    assert!(post(&http, &bot.url, &message("j1", "log-conv", "hello")).await);
    wait_until("the reply", Duration::from_secs(5), || {
        !qpien.state().created().is_empty()
    })
    .await;
    let status = Command::new("kill")
        .args(["-TERM", &bot.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = bot.child.wait().unwrap();
    assert_eq!(exit.code(), Some(0));
    let log = std::fs::read_to_string(dir.join("stderr.log")).unwrap();
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let committed = lines
        .iter()
        .find(|l| l["fields"]["message"] == "turn committed")
        .unwrap_or_else(|| panic!("no turn log in:\n{log}"));
    // Named by its keyed hash (`log.conversations = "hashed"`, the default).
    let named = committed["span"]["conversation"].as_str().unwrap();
    assert!(
        named.len() == 32 && named.bytes().all(|b| b.is_ascii_hexdigit()),
        "{committed}"
    );
    assert!(!log.contains("log-conv"), "{log}");
    assert!(
        lines
            .iter()
            .any(|l| l["fields"]["message"] == "flowbot stopped"),
        "{log}"
    );
}

/// Qpien's budget survives a restart: under more replies than the budget
/// allows, against a Qpien counting a fixed window, the process is killed
/// with SIGKILL and started again a second later, inside the same window.
/// The restarted process knows what the one before spent (the store keeps
/// the window) and starts cold besides: 0 x 429, every message answered
/// once, in order.
async fn a_restart_under_load(store: &str, env: &[(&str, &str)]) {
    const BUDGET: u32 = 20;
    let qpien = start_sim(|c| {
        c.auto_create_conversations = true;
        c.rate_limit = Some((BUDGET, Duration::from_secs(3)));
    })
    .await;
    // A folder per store: the two variants run side by side.
    let dir = crate::runtime::temp_dir(if store.contains("postgres") {
        "restart-budget-pg"
    } else {
        "restart-budget"
    });
    std::fs::write(dir.join("flow.yaml"), COUNTER).unwrap();
    std::fs::write(
        dir.join("flowbot.toml"),
        format!(
            "flow = \"flow.yaml\"\n[server]\nlisten = \"127.0.0.1:0\"\n{store}\n\
             [qpien]\nwhatsapp_operation = \"create_message\"\n\
             [qpien.rate_limit]\nrequests = {BUDGET}\nper = \"3s\"\n\
             [qpien.retry]\nmin_delay = \"5ms\"\nmax_delay = \"20ms\"\n"
        ),
    )
    .unwrap();
    let mut env = env.to_vec();
    env.push(("RUST_LOG", "warn"));
    let http = reqwest::Client::new();
    let conversations: Vec<String> = (0..12).map(|c| format!("rb{c}")).collect();
    let per = 4;
    let mut bot = spawn_with(&dir, &qpien, &env);
    for i in 0..per {
        for c in &conversations {
            assert!(
                post(
                    &http,
                    &bot.url,
                    &message(&format!("{c}-{i}"), c, &format!("m{i}"))
                )
                .await
            );
        }
    }
    // Mid-window: part of the budget spent, replies still waiting.
    wait_until("the first replies", Duration::from_secs(10), || {
        qpien.state().created().len() >= BUDGET as usize / 2
    })
    .await;
    bot.child.kill().unwrap();
    bot.child.wait().unwrap();
    let before = qpien.state().created().len();
    assert!(
        before < conversations.len() * per,
        "replies were still waiting"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut bot = spawn_with(&dir, &qpien, &env);
    wait_until("every reply", Duration::from_secs(30), || {
        qpien.state().created().len() >= conversations.len() * per
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    bot.child.kill().unwrap();
    bot.child.wait().unwrap();
    assert_eq!(
        qpien.state().stats().rate_limited,
        0,
        "a 429 after the restart"
    );
    for c in &conversations {
        let want: Vec<String> = (0..per).map(|i| format!("#{} m{i}", i + 1)).collect();
        assert_eq!(crate::runtime::replies(&qpien, c), want, "conversation {c}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_under_load_does_not_spend_the_budget_twice_on_sqlite() {
    a_restart_under_load("[store]\npath = \"flowbot.db\"", &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_under_load_does_not_spend_the_budget_twice_on_postgres() {
    let Some(url) = crate::store::postgres_url(
        "a_restart_under_load_does_not_spend_the_budget_twice_on_postgres",
    ) else {
        return;
    };
    let schema = format!("restart_budget_{}", std::process::id());
    a_restart_under_load(
        &format!("[store]\nbackend = \"postgres\"\nschema = \"{schema}\""),
        &[("FLOWBOT_STORE__URL", &url)],
    )
    .await;
}
