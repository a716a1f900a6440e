//! The bot registry: bots added, changed, paused, resumed and removed while
//! the process runs, through `/admin/bots` (and `flowbot bots`), on every
//! instance sharing the store; their credentials sealed at rest.

use std::path::Path;
use std::time::{Duration, Instant};

use flowbot::internals::config::{BotConfig, Config, StoreBackend};
use flowbot::internals::qpien::Secret;
use flowbot::internals::sim::RunningSim;
use flowbot::{Registry, Running};
use serde_json::{json, Value};

use crate::qpien::start_sim;
use crate::runtime::{config, message, replies, temp_dir, wait_until, ECHO};

const ADMIN: &str = "admin-token-of-the-registry-tests";
const CLIENT_ID: &str = "registry-client";
const CLIENT_SECRET: &str = "registry-client-secret";

/// A simulator that knows the registry bots' Qpien account.
async fn sim() -> RunningSim {
    start_sim(|c| {
        c.auto_create_conversations = true;
        c.client_id = CLIENT_ID.into();
        c.client_secret = CLIENT_SECRET.into();
    })
    .await
}
const GREETER: &str = r#"
version: 1
intents:
  - { regex: '^(?P<said>.+)$', say: "Greeter: {{ said }}", goto: start }
states:
  start: {}
"#;

/// A process of registry bots only, its credentials sealed with a key of
/// `dir` (`None`: no key).
fn registry_config(sim: &RunningSim, dir: &Path, key: bool) -> Config {
    let mut c = config(sim, dir);
    c.runtime.registry = true;
    c.server.admin_token = Secret::new(ADMIN);
    if key {
        let file = dir.join("secret.key");
        std::fs::write(
            &file,
            flowbot::internals::sealed::SecretKey::generate() + "\n",
        )
        .unwrap();
        c.server.secret_key_file = Some(file);
    }
    c
}

/// A bot's specification for the API, reaching `sim`.
fn spec(name: &str, flow: &Path, sim: &RunningSim) -> Value {
    json!({
        "name": name,
        "flow": flow,
        "webhook_secret": format!("webhook-secret-of-{name}"),
        "qpien": {
            "endpoint": sim.graphql_url(),
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "whatsapp_operation": "create_message",
            "retry": { "max_attempts": 4, "min_delay": "5ms", "max_delay": "20ms" },
        },
    })
}

struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    fn of(running: &Running) -> Api {
        Api {
            base: format!("http://{}", running.addr()),
            http: reqwest::Client::new(),
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(ADMIN);
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let bytes = r.bytes().await.unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, None).await
    }

    /// A customer's message to `bot`'s webhook: the status.
    async fn deliver(&self, bot: &str, id: &str, conversation: &str, text: &str) -> u16 {
        crate::bots::post(
            &self.http,
            &format!("{}/bots/{bot}/webhook", self.base),
            &format!("webhook-secret-of-{bot}"),
            &message(id, conversation, text),
        )
        .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bot_is_added_paused_resumed_changed_and_removed_while_the_process_runs() {
    let sim = sim().await;
    let dir = temp_dir("registry-life");
    std::fs::write(dir.join("echo.yaml"), ECHO).unwrap();
    std::fs::write(dir.join("greeter.yaml"), GREETER).unwrap();
    let running = flowbot::start(registry_config(&sim, &dir, true), Registry::new())
        .await
        .unwrap();
    let api = Api::of(&running);
    // No bot yet: the process serves, and the webhook is not there.
    let (status, _) = api.get("/readyz").await;
    assert_eq!(status, 200);
    assert_eq!(api.deliver("acme", "m0", "c1", "hi").await, 404);
    // The token is needed.
    let refused = api
        .http
        .post(format!("{}/admin/bots", api.base))
        .body(spec("acme", &dir.join("echo.yaml"), &sim).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status().as_u16(), 401);

    // Added: answered at once.
    let added_at = Instant::now();
    let (status, body) = api
        .post("/admin/bots", spec("acme", &dir.join("echo.yaml"), &sim))
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["state"], "active");
    assert_eq!(api.deliver("acme", "m1", "c1", "hello").await, 200);
    wait_until("the new bot's answer", Duration::from_secs(5), || {
        replies(&sim, "c1") == ["Echo: hello"]
    })
    .await;
    assert!(
        added_at.elapsed() < Duration::from_secs(1),
        "answered {:?} after it was added",
        added_at.elapsed()
    );

    // Credentials are shown as sealed only, and stored sealed.
    let (_, shown) = api.get("/admin/bots/acme").await;
    assert_eq!(shown["spec"]["qpien"]["client_secret"], "(sealed)");
    assert_eq!(shown["spec"]["webhook_secret"], "(sealed)");
    assert!(!shown.to_string().contains(CLIENT_SECRET));
    for file in ["flowbot.db", "flowbot.db-wal"] {
        if let Ok(bytes) = std::fs::read(dir.join(file)) {
            let text = String::from_utf8_lossy(&bytes);
            assert!(
                !text.contains(CLIENT_SECRET) && !text.contains("webhook-secret-of-acme"),
                "{file} holds a credential in clear"
            );
        }
    }

    // Paused: acknowledged and kept, answered when resumed, in order.
    let (status, body) = api.post("/admin/bots/acme/pause", json!({})).await;
    assert_eq!(
        (status, body["state"].as_str()),
        (200, Some("paused")),
        "{body}"
    );
    assert_eq!(api.deliver("acme", "m2", "c1", "one").await, 200);
    assert_eq!(api.deliver("acme", "m3", "c1", "two").await, 200);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        replies(&sim, "c1"),
        ["Echo: hello"],
        "a paused bot answers nothing"
    );
    let (_, listed) = api.get("/admin/bots").await;
    assert_eq!(listed["bots"][0]["state"], "paused");
    assert_eq!(listed["bots"][0]["running"], false);
    let (status, _) = api.post("/admin/bots/acme/resume", json!({})).await;
    assert_eq!(status, 200);
    wait_until("what was kept, answered", Duration::from_secs(5), || {
        replies(&sim, "c1") == ["Echo: hello", "Echo: one", "Echo: two"]
    })
    .await;

    // Changed: another flow, no restart; its conversations stay.
    let (status, body) = api
        .call(
            reqwest::Method::PATCH,
            "/admin/bots/acme",
            Some(json!({ "flow": dir.join("greeter.yaml") })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(api.deliver("acme", "m4", "c1", "three").await, 200);
    wait_until("the changed flow's answer", Duration::from_secs(5), || {
        replies(&sim, "c1").last().map(String::as_str) == Some("Greeter: three")
    })
    .await;
    let (_, listed) = api.get("/admin/bots").await;
    assert_eq!(listed["bots"][0]["turns"], 4, "{listed}");

    // A change that cannot work is refused, and the bot stays as it was.
    let (status, body) = api
        .call(
            reqwest::Method::PATCH,
            "/admin/bots/acme",
            Some(json!({ "flow": dir.join("missing.yaml") })),
        )
        .await;
    assert_eq!(status, 400);
    assert!(
        body["error"].as_str().unwrap().contains("missing.yaml"),
        "{body}"
    );
    let (status, body) = api
        .post("/admin/bots", spec("acme", &dir.join("echo.yaml"), &sim))
        .await;
    assert_eq!(status, 409, "{body}");

    // Removed: 404; listed with --all only; its conversations kept.
    let (status, _) = api
        .call(reqwest::Method::DELETE, "/admin/bots/acme", None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(api.deliver("acme", "m5", "c1", "four").await, 404);
    let (_, listed) = api.get("/admin/bots").await;
    assert_eq!(listed["bots"], json!([]));
    let (_, listed) = api.get("/admin/bots?all=true").await;
    assert_eq!(listed["bots"][0]["state"], "removed");
    // Added again, it goes on with the conversations it had.
    let (status, _) = api
        .post("/admin/bots", spec("acme", &dir.join("greeter.yaml"), &sim))
        .await;
    assert_eq!(status, 201);
    assert_eq!(
        api.deliver("acme", "m2", "c1", "one").await,
        200,
        "a duplicate still"
    );
    assert_eq!(api.deliver("acme", "m6", "c1", "five").await, 200);
    wait_until("the re-added bot's answer", Duration::from_secs(5), || {
        replies(&sim, "c1").last().map(String::as_str) == Some("Greeter: five")
    })
    .await;
    assert_eq!(replies(&sim, "c1").len(), 5);
    running.shutdown().await;

    // After a restart the registry's bots come back as they were.
    let running = flowbot::start(registry_config_again(&sim, &dir), Registry::new())
        .await
        .unwrap();
    let api = Api::of(&running);
    assert_eq!(api.deliver("acme", "m7", "c1", "six").await, 200);
    wait_until("the answer after a restart", Duration::from_secs(5), || {
        replies(&sim, "c1").last().map(String::as_str) == Some("Greeter: six")
    })
    .await;
    running.shutdown().await;
}

/// The configuration of a process started again on `dir` (same key).
fn registry_config_again(sim: &RunningSim, dir: &Path) -> Config {
    let mut c = config(sim, dir);
    c.runtime.registry = true;
    c.server.admin_token = Secret::new(ADMIN);
    c.server.secret_key_file = Some(dir.join("secret.key"));
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_secret_key_only_references_to_credentials_are_taken() {
    let sim = sim().await;
    let dir = temp_dir("registry-nokey");
    std::fs::write(dir.join("echo.yaml"), ECHO).unwrap();
    let running = flowbot::start(registry_config(&sim, &dir, false), Registry::new())
        .await
        .unwrap();
    let api = Api::of(&running);
    let (status, body) = api
        .post("/admin/bots", spec("shop", &dir.join("echo.yaml"), &sim))
        .await;
    assert_eq!(status, 400);
    let error = body["error"].as_str().unwrap();
    assert!(
        error.contains("FLOWBOT_SECRET_KEY") && error.contains("_file"),
        "{error}"
    );
    // The same credentials as files on the server are taken.
    std::fs::write(dir.join("hook.secret"), "webhook-secret-of-shop\n").unwrap();
    std::fs::write(dir.join("client.secret"), format!("{CLIENT_SECRET}\n")).unwrap();
    let mut by_file = spec("shop", &dir.join("echo.yaml"), &sim);
    by_file.as_object_mut().unwrap().remove("webhook_secret");
    by_file["webhook_secret_file"] = json!(dir.join("hook.secret"));
    let q = by_file["qpien"].as_object_mut().unwrap();
    q.remove("client_secret");
    q.insert(
        "client_secret_file".into(),
        json!(dir.join("client.secret")),
    );
    std::fs::write(dir.join("client.id"), CLIENT_ID).unwrap();
    q.remove("client_id");
    q.insert("client_id_file".into(), json!(dir.join("client.id")));
    let (status, body) = api.post("/admin/bots", by_file).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(api.deliver("shop", "m1", "c1", "hi").await, 200);
    wait_until("the answer", Duration::from_secs(5), || {
        replies(&sim, "c1") == ["Echo: hi"]
    })
    .await;
    // Bad requests say what is wrong.
    let (status, body) = api.post("/admin/bots", json!({ "flow": "x.yaml" })).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("a bot needs a `name`"))
    );
    let (status, body) = api
        .post(
            "/admin/bots",
            json!({ "name": "Bad Name", "flow": "x.yaml" }),
        )
        .await;
    assert_eq!(status, 400);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("bots[Bad Name].name"),
        "{body}"
    );
    let (status, body) = api
        .post(
            "/admin/bots",
            json!({ "name": "other", "flow": dir.join("echo.yaml"), "webhook_path": "/bots/shop/webhook",
                    "webhook_secret_file": dir.join("hook.secret") }),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bots_of_the_file_are_imported_and_the_file_wins() {
    let sim = sim().await;
    let dir = temp_dir("registry-file");
    std::fs::write(dir.join("echo.yaml"), ECHO).unwrap();
    let base = registry_config(&sim, &dir, true);
    let mut qpien = base.qpien.clone();
    qpien.client_id = Secret::new(CLIENT_ID);
    qpien.client_secret = Secret::new(CLIENT_SECRET);
    let file_bot = |name: &str| BotConfig {
        flow: dir.join("echo.yaml"),
        ..crate::bots::bot_in(&dir, name, &qpien)
    };
    let c = Config {
        bots: vec![file_bot("north"), file_bot("south")],
        ..base.clone()
    };
    let running = flowbot::start(c.clone(), Registry::new()).await.unwrap();
    let api = Api::of(&running);
    let (_, listed) = api.get("/admin/bots").await;
    let names: Vec<_> = listed["bots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| (b["name"].as_str().unwrap(), b["source"].as_str().unwrap()))
        .collect();
    assert_eq!(names, [("north", "file"), ("south", "file")]);
    // Changed in the file only; paused through the API, and still paused
    // after a restart.
    let (status, body) = api
        .call(
            reqwest::Method::PATCH,
            "/admin/bots/north",
            Some(json!({"webhook_path": "/n"})),
        )
        .await;
    assert_eq!(status, 409);
    assert!(
        body["error"].as_str().unwrap().contains("[[bots]]"),
        "{body}"
    );
    let (status, _) = api.post("/admin/bots/north/pause", json!({})).await;
    assert_eq!(status, 200);
    running.shutdown().await;

    // `south` leaves the file: it leaves the registry too.
    let c = Config {
        bots: vec![file_bot("north")],
        ..base.clone()
    };
    let running = flowbot::start(c, Registry::new()).await.unwrap();
    let api = Api::of(&running);
    let (_, listed) = api.get("/admin/bots?all=true").await;
    let states: Vec<_> = listed["bots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| (b["name"].as_str().unwrap(), b["state"].as_str().unwrap()))
        .collect();
    assert_eq!(states, [("north", "paused"), ("south", "removed")]);
    assert_eq!(api.deliver("south", "s1", "s1", "hi").await, 404);
    assert_eq!(api.deliver("north", "n1", "n1", "hi").await, 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(replies(&sim, "n1").is_empty());
    let (status, _) = api.post("/admin/bots/north/resume", json!({})).await;
    assert_eq!(status, 200);
    wait_until("the kept message, answered", Duration::from_secs(5), || {
        replies(&sim, "n1") == ["Echo: hi"]
    })
    .await;
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_instance_sees_a_bot_added_paused_and_removed_on_the_first() {
    let Some(url) = crate::store::postgres_url("a_second_instance_sees_a_bot_added") else {
        return;
    };
    let schema = crate::scale::fresh_schema(&url, "registry").await;
    let sim = sim().await;
    let dir = temp_dir("registry-two");
    std::fs::write(dir.join("echo.yaml"), ECHO).unwrap();
    let mut c = registry_config(&sim, &dir, true);
    c.store.backend = StoreBackend::Postgres;
    c.store.url = Secret::new(url);
    c.store.schema = schema;
    // Only a notification can make it within the second.
    c.runtime.registry_interval = Duration::from_secs(30);
    let first = flowbot::start(c.clone(), Registry::new()).await.unwrap();
    let second = flowbot::start(c, Registry::new()).await.unwrap();
    let (a, b) = (Api::of(&first), Api::of(&second));
    let added = Instant::now();
    let (status, body) = a
        .post("/admin/bots", spec("shared", &dir.join("echo.yaml"), &sim))
        .await;
    assert_eq!(status, 201, "{body}");
    let mut seen = false;
    while added.elapsed() < Duration::from_secs(1) {
        if b.deliver("shared", "m1", "c1", "hello").await == 200 {
            seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        seen,
        "the second instance did not have the bot within a second"
    );
    wait_until("the answer", Duration::from_secs(5), || {
        replies(&sim, "c1") == ["Echo: hello"]
    })
    .await;
    // Paused on the first: the second keeps what it is sent.
    let (status, _) = a.post("/admin/bots/shared/pause", json!({})).await;
    assert_eq!(status, 200);
    let paused = Instant::now();
    loop {
        let (_, listed) = b.get("/admin/bots").await;
        if listed["bots"][0]["running"] == false {
            break;
        }
        assert!(
            paused.elapsed() < Duration::from_secs(1),
            "the second instance still runs the paused bot: {listed}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(b.deliver("shared", "m2", "c2", "kept").await, 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(replies(&sim, "c2").is_empty());
    let (status, _) = a.post("/admin/bots/shared/resume", json!({})).await;
    assert_eq!(status, 200);
    wait_until("the kept message, answered", Duration::from_secs(5), || {
        replies(&sim, "c2") == ["Echo: kept"]
    })
    .await;
    let (status, _) = a
        .call(reqwest::Method::DELETE, "/admin/bots/shared", None)
        .await;
    assert_eq!(status, 200);
    let removed = Instant::now();
    let mut gone = false;
    while removed.elapsed() < Duration::from_secs(1) {
        if b.deliver("shared", "m3", "c3", "gone?").await == 404 {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(gone, "the second instance still served the removed bot");
    first.shutdown().await;
    second.shutdown().await;
}

/// `flowbot bots ...` against the running process, as an operator types it.
fn cli(running: &Running, args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_flowbot"))
        .arg("bots")
        .args(args)
        .args(["--url", &format!("http://{}", running.addr())])
        .env("FLOWBOT_SERVER__ADMIN_TOKEN", ADMIN)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bots_command_adds_lists_shows_pauses_and_removes() {
    let sim = sim().await;
    let dir = temp_dir("registry-cli");
    std::fs::write(dir.join("echo.yaml"), ECHO).unwrap();
    let running = flowbot::start(registry_config(&sim, &dir, true), Registry::new())
        .await
        .unwrap();
    let flow = dir.join("echo.yaml").display().to_string();
    let endpoint = format!("qpien.endpoint={}", sim.graphql_url());
    let (ok, out, err) = cli(
        &running,
        &[
            "add",
            "cli-bot",
            "--flow",
            &flow,
            "--set",
            &endpoint,
            "--set",
            "qpien.whatsapp_operation=create_message",
            "--set",
            &format!("qpien.client_id={CLIENT_ID}"),
            "--secret",
            "qpien.client_secret=THE_CLIENT_SECRET",
            "--secret",
            "webhook_secret=THE_HOOK_SECRET",
        ],
        &[
            ("THE_CLIENT_SECRET", CLIENT_SECRET),
            ("THE_HOOK_SECRET", "webhook-secret-of-cli-bot"),
        ],
    );
    assert!(ok, "{out}{err}");
    assert!(out.contains("bot `cli-bot` added (active)"), "{out}");
    assert!(out.contains("/bots/cli-bot/webhook"), "{out}");
    let api = Api::of(&running);
    assert_eq!(api.deliver("cli-bot", "m1", "c1", "hello").await, 200);
    wait_until("the answer", Duration::from_secs(5), || {
        replies(&sim, "c1") == ["Echo: hello"]
    })
    .await;
    let (ok, out, _) = cli(&running, &["list"], &[]);
    assert!(ok);
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("NAME") && lines[0].contains("429S"),
        "{out}"
    );
    let row: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(&row[..3], ["cli-bot", "active", "api"], "{out}");
    let (ok, out, _) = cli(&running, &["show", "cli-bot"], &[]);
    assert!(ok);
    let shown: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(shown["spec"]["qpien"]["client_secret"], "(sealed)");
    assert!(!out.contains(CLIENT_SECRET));
    let (ok, out, _) = cli(&running, &["pause", "cli-bot"], &[]);
    assert!(ok && out.contains("paused"), "{out}");
    let (ok, out, err) = cli(
        &running,
        &["update", "cli-bot", "--set", "webhook_path=/hooks/cli"],
        &[],
    );
    assert!(ok, "{out}{err}");
    let (_, shown) = api.get("/admin/bots/cli-bot").await;
    assert_eq!(
        (shown["state"].as_str(), shown["webhook_path"].as_str()),
        (Some("paused"), Some("/hooks/cli"))
    );
    let (ok, _, err) = cli(&running, &["remove", "cli-bot"], &[]);
    assert!(ok, "{err}");
    let (ok, out, _) = cli(&running, &["show", "cli-bot"], &[]);
    assert!(ok && out.contains(r#""state": "removed""#), "{out}");
    let (ok, _, err) = cli(&running, &["show", "never-added"], &[]);
    assert!(!ok && err.contains("no bot named `never-added`"), "{err}");
    // A credential from an unset variable is said to be so.
    let (ok, _, err) = cli(
        &running,
        &[
            "add",
            "x",
            "--flow",
            &flow,
            "--secret",
            "webhook_secret=NOT_SET_ANYWHERE",
        ],
        &[],
    );
    assert!(!ok && err.contains("NOT_SET_ANYWHERE is not set"), "{err}");
    running.shutdown().await;
}
