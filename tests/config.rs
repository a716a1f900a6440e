//! `flowbot run --config`: configuration errors name the key and its source.

use std::process::Command;

fn flowbot(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_flowbot"));
    cmd.args(args);
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("FLOWBOT_")) {
        cmd.env_remove(k);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn file(name: &str, text: &str) -> String {
    let dir = crate::runtime::temp_dir(&format!("config-{name}"));
    let path = dir.join("flowbot.toml");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

#[test]
fn a_missing_file_is_named() {
    let (code, _, err) = flowbot(&["run", "--config", "/nonexistent/flowbot.toml"], &[]);
    assert_eq!(code, 2);
    assert!(
        err.contains("config file /nonexistent/flowbot.toml not found"),
        "{err}"
    );
}

#[test]
fn an_unknown_or_mistyped_key_is_named_with_its_file() {
    let path = file("unknown", "[server]\nwebhok = true\n");
    let (code, _, err) = flowbot(&["run", "--config", &path, "--check"], &[]);
    assert_eq!(code, 2);
    assert!(
        // (figment shows the file relative to the working directory when it can.)
        err.contains("server.webhok") && err.contains("config-unknown/flowbot.toml"),
        "{err}"
    );
    let path = file("typed", "[runtime]\nqueue_capacity = \"lots\"\n");
    let (code, _, err) = flowbot(&["run", "--config", &path, "--check"], &[]);
    assert_eq!(code, 2);
    assert!(err.contains("runtime.queue_capacity"), "{err}");
}

#[test]
fn a_bad_environment_value_is_named() {
    let (code, _, err) = flowbot(
        &["run", "--check"],
        &[("FLOWBOT_STORE__BUSY_TIMEOUT", "soon")],
    );
    assert_eq!(code, 2);
    assert!(
        err.contains("STORE.BUSY_TIMEOUT") && err.contains("FLOWBOT_"),
        "{err}"
    );
}

#[test]
fn secrets_are_refused_in_the_file() {
    let path = file("secret", "[qpien]\nclient_secret = \"hunter2\"\n");
    let (code, _, err) = flowbot(&["run", "--config", &path, "--check"], &[]);
    assert_eq!(code, 2);
    assert!(
        err.contains("qpien.client_secret") && err.contains("FLOWBOT_QPIEN__CLIENT_SECRET"),
        "{err}"
    );
    assert!(!err.contains("hunter2"), "{err}");
}

#[test]
fn a_valid_configuration_checks_out() {
    let (code, out, err) = flowbot(
        &["run", "--check"],
        &[
            ("FLOWBOT_FLOW", "flows/order_form.yaml"),
            ("FLOWBOT_QPIEN__CLIENT_ID", "i"),
            ("FLOWBOT_QPIEN__CLIENT_SECRET", "s"),
            (
                "FLOWBOT_SERVER__WEBHOOK_SECRET",
                "webhook-secret-long-enough",
            ),
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("flows/order_form.yaml"), "{out}");
}

/// `run` says what `validate` says of a schedule that can outgrow the budget.
#[test]
fn run_warns_of_a_schedule_that_fires_faster_than_the_budget_sends() {
    let dir = crate::runtime::temp_dir("config-schedule-budget");
    let flow = dir.join("flow.yaml");
    std::fs::write(
        &flow,
        "version: 1\nsettings: { default_language: en }\nschedules:\n  - { name: ping, state: ping, cron: \"* * * * *\" }\nstates:\n  start: { say: hi }\n  ping: { say: ping, template: { name: ping } }\n",
    )
    .unwrap();
    let (code, _, err) = flowbot(
        &["run", "--check"],
        &[
            ("FLOWBOT_FLOW", &flow.display().to_string()),
            ("FLOWBOT_QPIEN__CLIENT_ID", "i"),
            ("FLOWBOT_QPIEN__CLIENT_SECRET", "s"),
            (
                "FLOWBOT_SERVER__WEBHOOK_SECRET",
                "webhook-secret-long-enough",
            ),
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("can fire every 1m") && err.contains("about 100 conversations"),
        "{err}"
    );
}

/// A webhook secret too short to resist guessing is refused, by `run
/// --check` as by `run`, and so is a webhook path the server cannot route
/// (or that would shadow another endpoint), and a schema `run` would refuse.
#[test]
fn weak_secrets_bad_paths_and_schemas_are_refused_before_the_start() {
    let base = [
        ("FLOWBOT_FLOW", "flows/order_form.yaml"),
        ("FLOWBOT_QPIEN__CLIENT_ID", "i"),
        ("FLOWBOT_QPIEN__CLIENT_SECRET", "s"),
    ];
    let with = |extra: &[(&'static str, &'static str)]| {
        let mut env = base.to_vec();
        env.extend_from_slice(extra);
        env
    };
    let (code, _, err) = flowbot(
        &["run", "--check"],
        &with(&[("FLOWBOT_SERVER__WEBHOOK_SECRET", "w")]),
    );
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("server.webhook_secret is shorter than 16"),
        "{err}"
    );
    for path in [
        "webhook",
        "",
        "/h/{",
        "/{id}",
        "/api/start",
        "/admin/x",
        "/healthz",
        "/a//b",
        "/a b",
    ] {
        let (code, _, err) = flowbot(
            &["run", "--check"],
            &with(&[
                (
                    "FLOWBOT_SERVER__WEBHOOK_SECRET",
                    "webhook-secret-long-enough",
                ),
                ("FLOWBOT_SERVER__WEBHOOK_PATH", path),
            ]),
        );
        assert_eq!(code, 2, "{path:?}: {err}");
        assert!(err.contains("server.webhook_path"), "{path:?}: {err}");
    }
    let (code, _, err) = flowbot(
        &["run", "--check"],
        &with(&[
            (
                "FLOWBOT_SERVER__WEBHOOK_SECRET",
                "webhook-secret-long-enough",
            ),
            ("FLOWBOT_STORE__BACKEND", "postgres"),
            ("FLOWBOT_STORE__URL", "postgres://x@127.0.0.1:9/x"),
            (
                "FLOWBOT_STORE__SCHEMA",
                "a_schema_name_of_more_than_sixty_three_characters_is_refused_by_it",
            ),
        ]),
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("store.schema"), "{err}");
}

#[test]
fn the_check_refuses_what_run_would_refuse_without_showing_secrets() {
    // No webhook secret: `run` refuses, so `run --check` does too.
    let (code, _, err) = flowbot(
        &["run", "--check"],
        &[
            ("FLOWBOT_FLOW", "flows/order_form.yaml"),
            ("FLOWBOT_QPIEN__CLIENT_ID", "i"),
            ("FLOWBOT_QPIEN__CLIENT_SECRET", "hunter2"),
        ],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("server.webhook_secret"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
    // No Qpien credentials.
    let (code, _, err) = flowbot(
        &["run", "--check"],
        &[
            ("FLOWBOT_FLOW", "flows/order_form.yaml"),
            (
                "FLOWBOT_SERVER__WEBHOOK_SECRET",
                "webhook-secret-long-enough",
            ),
        ],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("FLOWBOT_QPIEN__CLIENT_ID"), "{err}");
}

#[test]
fn running_without_a_webhook_secret_says_how_to_set_it() {
    let dir = crate::runtime::temp_dir("config-no-secret");
    let flow = concat!(env!("CARGO_MANIFEST_DIR"), "/flows/order_form.yaml");
    let out = Command::new(env!("CARGO_BIN_EXE_flowbot"))
        .arg("run")
        .current_dir(&dir)
        .env_remove("FLOWBOT_SERVER__WEBHOOK_SECRET")
        .env("FLOWBOT_FLOW", flow)
        .env("FLOWBOT_SERVER__LISTEN", "127.0.0.1:0")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("FLOWBOT_SERVER__WEBHOOK_SECRET"), "{err}");
    // Refused before anything was made: no database in the folder.
    let left: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
}

const TWO_BOTS: &str = r#"
[server]
listen = "127.0.0.1:0"

[qpien]
endpoint = "https://qpien.example/api/v1"

[[bots]]
name = "acme"
flow = "../../../work-flows/order_form.yaml"

[[bots]]
name = "shop-2"
flow = "../../../work-flows/order_form.yaml"
webhook_path = "/hooks/shop"
[bots.qpien]
rate_limit = { requests = 50, per = "1m" }
"#;

/// A `[[bots]]` file, its flows pointing at this repository's.
fn bots_file(name: &str, extra: &str) -> String {
    let flow = format!("{}/flows/order_form.yaml", env!("CARGO_MANIFEST_DIR"));
    file(
        name,
        &format!(
            "{}{extra}",
            TWO_BOTS.replace("../../../work-flows/order_form.yaml", &flow)
        ),
    )
}

#[test]
fn several_bots_check_out_with_their_own_secrets() {
    let path = bots_file("bots-ok", "");
    let secrets = [
        ("FLOWBOT_BOTS__ACME__QPIEN__CLIENT_ID", "a"),
        ("FLOWBOT_BOTS__ACME__QPIEN__CLIENT_SECRET", "b"),
        (
            "FLOWBOT_BOTS__ACME__WEBHOOK_SECRET",
            "webhook-secret-of-acme",
        ),
        ("FLOWBOT_BOTS__SHOP_2__QPIEN__CLIENT_ID", "d"),
        ("FLOWBOT_BOTS__SHOP_2__QPIEN__CLIENT_SECRET", "e"),
        (
            "FLOWBOT_BOTS__SHOP_2__WEBHOOK_SECRET",
            "webhook-secret-of-shop-2",
        ),
    ];
    let (code, out, err) = flowbot(&["run", "--config", &path, "--check"], &secrets);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("acme: flow") && out.contains("shop-2: flow") && out.contains("2 bots"),
        "{out}"
    );
    // One bot's missing secret is named with that bot's variable.
    let (code, _, err) = flowbot(&["run", "--config", &path, "--check"], &secrets[..5]);
    assert_eq!(code, 2);
    assert!(
        err.contains("bots[shop-2].webhook_secret")
            && err.contains("FLOWBOT_BOTS__SHOP_2__WEBHOOK_SECRET"),
        "{err}"
    );
}

#[test]
fn a_bad_bots_section_is_named() {
    let secret = bots_file(
        "bots-secret",
        "[[bots]]\nname = \"leaky\"\nflow = \"x.yaml\"\n[bots.qpien]\nclient_secret = \"hunter2\"\n",
    );
    let (code, _, err) = flowbot(&["run", "--config", &secret, "--check"], &[]);
    assert_eq!(code, 2);
    assert!(
        err.contains("bots[leaky].qpien.client_secret")
            && err.contains("FLOWBOT_BOTS__LEAKY__QPIEN__CLIENT_SECRET"),
        "{err}"
    );
    assert!(!err.contains("hunter2"), "{err}");
    let twice = bots_file(
        "bots-twice",
        "[[bots]]\nname = \"acme\"\nflow = \"x.yaml\"\nwebhook_path = \"/other\"\n",
    );
    let (code, _, err) = flowbot(&["run", "--config", &twice, "--check"], &[]);
    assert_eq!(code, 2);
    assert!(
        err.contains("bots[acme].name") && err.contains("its own"),
        "{err}"
    );
    let bad = bots_file(
        "bots-name",
        "[[bots]]\nname = \"Big Bot\"\nflow = \"x.yaml\"\n",
    );
    let (code, _, err) = flowbot(&["run", "--config", &bad, "--check"], &[]);
    assert_eq!(code, 2);
    assert!(err.contains("bots[Big Bot].name"), "{err}");
    let typo = bots_file(
        "bots-typo",
        "[[bots]]\nname = \"x\"\nflow = \"x.yaml\"\nwebhok_path = \"/x\"\n",
    );
    let (code, _, err) = flowbot(&["run", "--config", &typo, "--check"], &[]);
    assert_eq!(code, 2);
    assert!(err.contains("webhok_path"), "{err}");
}

/// Logs written anywhere but a terminal carry no colour codes.
#[test]
fn logs_to_a_file_or_a_pipe_have_no_colour_codes() {
    use std::io::{BufRead, BufReader};
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_flowbot"))
        .args(["run"])
        .env(
            "FLOWBOT_FLOW",
            format!("{}/flows/multilang.yaml", env!("CARGO_MANIFEST_DIR")),
        )
        .env("FLOWBOT_STORE__BACKEND", "memory")
        .env("FLOWBOT_SERVER__LISTEN", "127.0.0.1:0")
        .env(
            "FLOWBOT_SERVER__WEBHOOK_SECRET",
            "webhook-secret-long-enough",
        )
        .env("FLOWBOT_QPIEN__CLIENT_ID", "i")
        .env("FLOWBOT_QPIEN__CLIENT_SECRET", "s")
        .env("FLOWBOT_QPIEN__ENDPOINT", "http://127.0.0.1:9/graphql")
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut line = String::new();
    let mut reader = BufReader::new(stderr);
    while reader.read_line(&mut line).unwrap_or(0) > 0 && !line.contains("flowbot running") {}
    let _ = child.kill();
    let _ = child.wait();
    assert!(line.contains("flowbot running"), "{line}");
    assert!(!line.contains('\u{1b}'), "colour codes in {line:?}");
}

/// `flowbot demo` runs from any folder: its flow is built in. What it writes
/// (the flow, the store) is in a private folder of its own (0700, a random
/// name, never a guessable path a link could be planted at), removed when it
/// stops.
#[test]
fn the_demo_runs_from_any_folder() {
    use std::io::{BufRead, BufReader};
    use std::os::unix::fs::PermissionsExt;
    let dir = crate::runtime::temp_dir("demo-anywhere");
    let tmp = crate::runtime::temp_dir("demo-tmp");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_flowbot"))
        .args(["demo", "--listen", "127.0.0.1:0"])
        .current_dir(&dir)
        .env("TMPDIR", &tmp)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut out = String::new();
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    while reader.read_line(&mut line).unwrap_or(0) > 0 {
        out.push_str(&line);
        if line.contains("open the playground") {
            break;
        }
        line.clear();
    }
    // (name, mode, whether it is a folder holding the flow), while it runs.
    let written: Vec<(String, u32, bool)> = std::fs::read_dir(&tmp)
        .unwrap()
        .map(Result::unwrap)
        .map(|e| {
            let meta = e.metadata().unwrap();
            (
                e.file_name().into_string().unwrap(),
                meta.permissions().mode() & 0o777,
                meta.is_dir() && e.path().join("support.yaml").is_file(),
            )
        })
        .collect();
    let _ = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let _ = child.wait();
    assert!(
        out.contains("the support example (built in) answered by")
            && out.contains("open the playground"),
        "{out}"
    );
    assert!(
        !written.is_empty()
            && written.iter().all(|(name, mode, _)| {
                *mode == 0o700
                    && name.starts_with("flowbot-demo-")
                    && name.len() > "flowbot-demo-".len() + 4
            })
            && written.iter().any(|(_, _, flow)| *flow),
        "only private folders, one with the flow: {written:?}"
    );
    assert_eq!(
        std::fs::read_dir(&tmp).unwrap().count(),
        0,
        "removed at the stop"
    );
}

/// Two bots whose names read the same environment variables (`a-b` and
/// `a_b` both read `FLOWBOT_BOTS__A_B__*`: one secret would serve both) are
/// refused, and so is a bot's webhook path the server cannot route.
#[test]
fn bots_that_would_share_variables_or_bad_paths_are_refused() {
    let flow = format!("{}/flows/order_form.yaml", env!("CARGO_MANIFEST_DIR"));
    let path = file(
        "bots-prefix",
        &format!(
            "[[bots]]\nname = \"a-b\"\nflow = \"{flow}\"\n\n[[bots]]\nname = \"a_b\"\nflow = \"{flow}\"\n"
        ),
    );
    let (code, _, err) = flowbot(&["run", "--config", &path, "--check"], &[]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("bots[a_b].name") && err.contains("FLOWBOT_BOTS__A_B__"),
        "{err}"
    );
    let path = file(
        "bots-path",
        &format!("[[bots]]\nname = \"acme\"\nflow = \"{flow}\"\nwebhook_path = \"/bots/other/webhook\"\n"),
    );
    let (code, _, err) = flowbot(&["run", "--config", &path, "--check"], &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("bots[acme].webhook_path"), "{err}");
}

/// A store that needs more open files than the process may have is refused
/// at the start, with the numbers and how to raise the limit, not with
/// "unable to open database file" halfway through; the bots share it, so
/// their number does not count.
#[test]
fn too_many_bots_for_the_open_file_limit_say_so() {
    let flow = format!("{}/flows/order_form.yaml", env!("CARGO_MANIFEST_DIR"));
    let dir = crate::runtime::temp_dir("bots-files");
    // Bots share one store: what needs the files is its pool.
    let mut text = String::from(
        "[server]\nlisten = \"127.0.0.1:0\"\n[store]\nbackend = \"postgres\"\nmax_connections = 400\n",
    );
    for i in 0..20 {
        text.push_str(&format!("\n[[bots]]\nname = \"b{i}\"\nflow = \"{flow}\"\n"));
    }
    std::fs::write(dir.join("flowbot.toml"), text).unwrap();
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -n 300 && exec {} run --config flowbot.toml",
            env!("CARGO_BIN_EXE_flowbot")
        ))
        .env("FLOWBOT_STORE__URL", "postgres://127.0.0.1:1/none")
        .current_dir(&dir)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("the store of 20 bot(s) needs about 465 open files")
            && stderr.contains("limit is 300"),
        "{stderr}"
    );
}

/// A deployment of several bots from when each had its own SQLite file:
/// `flowbot bots import-store` moves each file's conversations, waiting
/// messages and replies into the one file, under that bot, once.
#[tokio::test]
async fn bots_import_store_moves_each_bots_file_into_the_one_file() {
    use flowbot::internals::store::*;
    let flow = format!("{}/flows/order_form.yaml", env!("CARGO_MANIFEST_DIR"));
    let dir = crate::runtime::temp_dir("bots-import");
    std::fs::write(
        dir.join("flowbot.toml"),
        format!(
            "[store]\npath = \"{}\"\n[[bots]]\nname = \"acme\"\nflow = \"{flow}\"\n[[bots]]\nname = \"globex-2\"\nflow = \"{flow}\"\n",
            dir.join("flowbot.db").display()
        ),
    )
    .unwrap();
    // acme's file as the earlier version left it: a conversation, a reply
    // not yet sent and a message not yet run; globex-2 never had one.
    {
        let old = SqliteStore::open(dir.join("flowbot.acme.db"), SqliteOptions::default()).unwrap();
        let inbound = |key: &str| NewInbound {
            key: key.into(),
            conversation: "c1".into(),
            payload: b"{}".to_vec(),
            received_at: flowbot::internals::time::now(),
        };
        let Accepted::New(first) = old.accept(inbound("m1")).await.unwrap() else {
            panic!("new")
        };
        old.commit(TurnCommit {
            inbox_seq: first.seq,
            conversation: "c1".into(),
            session: Some(StoredSession {
                data: b"acme's session".to_vec(),
                due_at: None,
            }),
            outbox: vec![b"a reply".to_vec()],
            fence: None,
            at: 0,
            events: Vec::new(),
        })
        .await
        .unwrap();
        old.accept(inbound("m2")).await.unwrap();
    }
    let config = dir.join("flowbot.toml").display().to_string();
    let (code, out, err) = flowbot(&["bots", "import-store", "--config", &config], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("acme: 1 conversations, 2 inbox rows, 1 replies to send")
            && out.contains("1 bot(s) imported"),
        "{out}"
    );
    assert!(
        !dir.join("flowbot.acme.db").exists() && dir.join("flowbot.acme.db.imported").is_file()
    );
    let file = SqliteStore::open(dir.join("flowbot.db"), SqliteOptions::default()).unwrap();
    let acme = file.bot("acme").await.unwrap();
    assert_eq!(
        acme.session("c1").await.unwrap().unwrap().data,
        b"acme's session"
    );
    assert_eq!(acme.outbox(0, 10).await.unwrap()[0].payload, b"a reply");
    let pending = acme.pending(10).await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].key, "m2");
    // The keys of messages already run came too: a redelivery is a duplicate.
    assert_eq!(
        acme.accept(NewInbound {
            key: "m1".into(),
            conversation: "c1".into(),
            payload: b"{}".to_vec(),
            received_at: 2,
        })
        .await
        .unwrap(),
        Accepted::Duplicate
    );
    assert!(file
        .bot("globex_2")
        .await
        .unwrap()
        .session("c1")
        .await
        .unwrap()
        .is_none());
    drop((acme, file));
    // Once: a second run finds nothing to move.
    let (code, out, _) = flowbot(&["bots", "import-store", "--config", &config], &[]);
    assert_eq!(code, 0);
    assert!(out.contains("0 bot(s) imported"), "{out}");
}
