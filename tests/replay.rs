//! The `flowbot replay` contract: JSON lines in, JSON lines out, deterministic.

use flowbot::Bot;
use std::process::{Command, Stdio};

/// What the `flowbot` binary did, run in a folder with arguments,
/// environment variables and standard input.
pub(crate) struct Ran {
    pub(crate) code: Option<i32>,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

/// Runs the `flowbot` binary in `dir` with `args` and `env`, writing
/// `stdin` to it (asynchronously: a stand-in served by the test's runtime
/// keeps answering).
pub(crate) async fn run_flowbot(
    dir: &std::path::Path,
    args: &[&str],
    env: &[(&str, &str)],
    stdin: &[u8],
) -> Ran {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_flowbot"))
        .current_dir(dir)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin).await.unwrap();
    drop(input);
    let out = child.wait_with_output().await.unwrap();
    Ran {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn replay(input: &str) -> (String, String) {
    let bot = Bot::load(
        concat!(env!("CARGO_MANIFEST_DIR"), "/flows/support.yaml"),
        crate::support_bot::registry(),
    )
    .unwrap();
    let (mut out, mut err) = (Vec::new(), Vec::new());
    crate::block_on(flowbot::internals::cli::replay(
        &bot,
        input.as_bytes(),
        &mut out,
        &mut err,
    ))
    .unwrap();
    (
        String::from_utf8(out).unwrap(),
        String::from_utf8(err).unwrap(),
    )
}

#[test]
fn the_contract_line_by_line() {
    let input = r#"{"conversation":"c1","text":"hello"}
{"conversation":"c2","text":"agent"}
not json
{"conversation":"c1","button":"orders"}
{"conversation":"c1","text":"123456"}
{"conversation":"c1","list":"track"}
{"conversation":"c3","text":"billing","channel":"fax"}
{"conversation":"c4","text":"hi","channel":"email","language":"tr","at":"2026-01-01T10:00:00Z"}
{"conversation":"c5"}
{"conversation":"c6","text":"hi"}
{"conversation":"c6","button":"billing"}
"#;
    let (out, err) = replay(input);
    let expected = r#"{"conversation":"c1","text":"Hi! How can we help?","quick_replies":[{"id":"orders","title":"My orders"},{"id":"billing","title":"Billing"},{"id":"agent","title":"Talk to us"}]}
{"conversation":"c2","text":"Connecting you to a person."}
{"conversation":"c2","handoff":true}
{"conversation":"c1","text":"Your order number? (6 digits)"}
{"conversation":"c1","text":"Order 123456 is shipped."}
{"conversation":"c1","list":{"body":"What next?","button":"Options","sections":[{"title":"Options","rows":[{"id":"track","title":"Track"},{"id":"return","title":"Return it"},{"id":"menu","title":"Main menu"}]}]}}
{"conversation":"c1","text":"Tracking link: https://t.example/123456"}
{"conversation":"c1","end":true}
{"conversation":"c4","text":"Hi! How can we help?\n\n1. My orders\n2. Billing\n3. Talk to us"}
{"conversation":"c6","text":"Hi! How can we help?","quick_replies":[{"id":"orders","title":"My orders"},{"id":"billing","title":"Billing"},{"id":"agent","title":"Talk to us"}]}
{"conversation":"c6","text":"Billing: see https://b.example","buttons":[{"type":"url","title":"Open billing","value":"https://b.example"}]}
{"conversation":"c6","end":true}
"#;
    assert_eq!(out, expected);
    let errs: Vec<&str> = err.lines().collect();
    assert_eq!(errs.len(), 3, "{err}");
    assert!(errs[0].starts_with("line 3: "));
    assert!(errs[1].starts_with("line 7: unknown channel `fax`"));
    assert!(errs[2].starts_with("line 9: a line needs one of"));
}

#[test]
fn replay_is_deterministic() {
    let input = std::iter::repeat_n(r#"{"conversation":"c","text":"hello"}"#, 20)
        .collect::<Vec<_>>()
        .join("\n");
    assert_eq!(replay(&input), replay(&input));
}

#[test]
fn time_moves_with_at() {
    let yaml_dir = std::env::temp_dir().join(format!("flowbot-replay-{}", std::process::id()));
    std::fs::create_dir_all(&yaml_dir).unwrap();
    let flow = yaml_dir.join("t.yaml");
    std::fs::write(&flow, "settings: { session_timeout: 30m }\nstates:\n  start: { say: Hi, on: [{ text: b, goto: b }] }\n  b: { say: B }\n").unwrap();
    let bot = Bot::load(&flow, flowbot::Registry::new()).unwrap();
    let input = r#"{"conversation":"c","text":"x","at":"2026-01-01T10:00:00Z"}
{"conversation":"c","text":"b","at":"2026-01-01T10:10:00Z"}
{"conversation":"c","text":"?","at":"2026-01-01T11:00:00Z"}
"#;
    let mut out = Vec::new();
    crate::block_on(flowbot::internals::cli::replay(
        &bot,
        input.as_bytes(),
        &mut out,
        std::io::sink(),
    ))
    .unwrap();
    let texts: Vec<String> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["text"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(texts, ["Hi", "B", "Hi"]);
    std::fs::remove_dir_all(&yaml_dir).ok();
}

#[test]
fn the_binary_exits_2_on_a_flow_that_does_not_load() {
    // An action no binary registers: the flow cannot load.
    let path = std::env::temp_dir().join(format!("flowbot-unbound-{}.yaml", std::process::id()));
    std::fs::write(
        &path,
        "version: 1\nstates:\n  start:\n    call: { action: send_fax }\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_flowbot"))
        .arg("replay")
        .arg(&path)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    std::fs::remove_file(&path).ok();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("action `send_fax` is not registered"));
}

#[test]
fn the_binary_replays_stdin_and_validates() {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_flowbot"))
        .args([
            "replay",
            concat!(env!("CARGO_MANIFEST_DIR"), "/flows/multilang.yaml"),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"{\"conversation\":\"c\",\"text\":\"hi\",\"language\":\"tr\"}\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("Acme'ye hoş geldiniz"));

    let v = Command::new(env!("CARGO_BIN_EXE_flowbot"))
        .args([
            "validate",
            concat!(env!("CARGO_MANIFEST_DIR"), "/flows/order_form.yaml"),
        ])
        .output()
        .unwrap();
    assert_eq!(v.status.code(), Some(0));
    let g = Command::new(env!("CARGO_BIN_EXE_flowbot"))
        .args([
            "graph",
            concat!(env!("CARGO_MANIFEST_DIR"), "/flows/multilang.yaml"),
        ])
        .output()
        .unwrap();
    let mermaid = String::from_utf8_lossy(&g.stdout);
    assert!(
        mermaid.starts_with("flowchart TD") && mermaid.contains("|\"button: hours\"|"),
        "{mermaid}"
    );
}

#[test]
fn validate_exit_codes() {
    let dir = std::env::temp_dir().join(format!("flowbot-validate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let warn = dir.join("warn.yaml");
    std::fs::write(
        &warn,
        "states:\n  start: { say: hi }\n  orphan: { say: alone }\n",
    )
    .unwrap();
    let bad = dir.join("bad.yaml");
    std::fs::write(&bad, "states:\n  start: { say: hi, next: nowhere }\n").unwrap();
    let code = |args: &[&std::path::Path], strict: bool| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_flowbot"));
        c.arg("validate");
        if strict {
            c.arg("--strict");
        }
        c.args(args).output().unwrap()
    };
    assert_eq!(code(&[&warn], false).status.code(), Some(0));
    assert_eq!(code(&[&warn], true).status.code(), Some(1));
    let out = code(&[&warn, &bad], false);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.yaml:2:") && err.contains("unknown state `nowhere`"),
        "{err}"
    );
    assert!(err.contains("unreachable"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

/// `chat` runs on the real clock and says so; `--at` fixes it (and says
/// so); a time it cannot read is a usage error.
#[test]
fn chat_runs_on_the_real_clock_unless_at_fixes_it() {
    let dir = crate::runtime::temp_dir("chat-clock");
    std::fs::write(
        dir.join("clock.yaml"),
        "states:\n  start:\n    say: \"Today is {{ now | datetime('date') }}.\"\n",
    )
    .unwrap();
    let chat = |args: &[&str]| {
        let args: Vec<&str> = ["chat", "clock.yaml"].iter().chain(args).copied().collect();
        let ran = crate::block_on(run_flowbot(&dir, &args, &[], b"hi\n/quit\n"));
        (ran.code, ran.stdout + &ran.stderr)
    };
    let (code, out) = chat(&["--at", "2026-12-24T10:00:00Z"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("Clock: fixed at 2026-12-24T10:00:00Z (--at)"),
        "{out}"
    );
    assert!(
        out.contains("Today is Thursday, December 24, 2026."),
        "{out}"
    );
    let (code, out) = chat(&[]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("Clock: real ("), "{out}");
    // Today, by the machine's clock (not the tests' fixed 2026-01-01).
    let today = flowbot::internals::time::format(flowbot::internals::time::now());
    assert!(
        out.contains(&format!("Clock: real ({}", &today[..10])),
        "{out}"
    );
    assert!(!out.contains("January 1, 2026"), "{out}");
    let (code, out) = chat(&["--at", "tomorrow"]);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("--at: `tomorrow` is not a time"), "{out}");
}
