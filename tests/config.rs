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
            ("FLOWBOT_SERVER__WEBHOOK_SECRET", "w"),
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("flows/order_form.yaml"), "{out}");
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
            ("FLOWBOT_SERVER__WEBHOOK_SECRET", "w"),
        ],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("FLOWBOT_QPIEN__CLIENT_ID"), "{err}");
}

#[test]
fn running_without_a_webhook_secret_says_how_to_set_it() {
    let (code, _, err) = flowbot(
        &["run"],
        &[
            ("FLOWBOT_FLOW", "flows/order_form.yaml"),
            ("FLOWBOT_SERVER__LISTEN", "127.0.0.1:0"),
        ],
    );
    assert_eq!(code, 2);
    assert!(err.contains("FLOWBOT_SERVER__WEBHOOK_SECRET"), "{err}");
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
        ("FLOWBOT_BOTS__ACME__WEBHOOK_SECRET", "c"),
        ("FLOWBOT_BOTS__SHOP_2__QPIEN__CLIENT_ID", "d"),
        ("FLOWBOT_BOTS__SHOP_2__QPIEN__CLIENT_SECRET", "e"),
        ("FLOWBOT_BOTS__SHOP_2__WEBHOOK_SECRET", "f"),
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
        .env("FLOWBOT_SERVER__WEBHOOK_SECRET", "w")
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

/// `flowbot demo` runs from any folder: its flow is built in.
#[test]
fn the_demo_runs_from_any_folder() {
    use std::io::{BufRead, BufReader};
    let dir = crate::runtime::temp_dir("demo-anywhere");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_flowbot"))
        .args(["demo", "--listen", "127.0.0.1:0"])
        .current_dir(&dir)
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
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        out.contains("the support example (built in) answered by")
            && out.contains("open the playground"),
        "{out}"
    );
}
