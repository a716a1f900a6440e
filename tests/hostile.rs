//! The attack suite: inputs a careless author or an adversary could send, each
//! shown to be refused or bounded (flows and includes, templates, webhook
//! bodies and ids, slow connections, agent events, poison messages, a long
//! Qpien outage). Speed and memory are measured in `benches/load.rs`; here
//! every case checks behaviour.

use std::path::Path;

use flowbot::internals::flow::{Flow, FlowLimits, HandlerNames};
use flowbot::{Registry, TestConversation};

fn load(path: &Path) -> Result<Flow, String> {
    Flow::load(path, &HandlerNames::default()).map_err(|e| e.0.to_string())
}

fn from_yaml(yaml: &str) -> Result<Flow, String> {
    Flow::from_yaml("hostile.yaml", yaml, &HandlerNames::default()).map_err(|e| e.0.to_string())
}

fn dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("flowbot-hostile-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A valid flow with `n` states chained by `next`, the last one ending.
pub(crate) fn next_chain(n: usize, looped: bool) -> String {
    let mut s = String::from("version: 1\nstates:\n");
    for i in 0..n {
        let next = if i + 1 < n {
            format!("s{}", i + 1)
        } else if looped {
            "s0".into()
        } else {
            String::new()
        };
        if next.is_empty() {
            s.push_str(&format!("  s{i}: {{ say: \"{i}\", end: true }}\n"));
        } else {
            s.push_str(&format!("  s{i}: {{ say: \"{i}\", next: {next} }}\n"));
        }
    }
    s
}

#[test]
fn deeply_nested_documents_are_refused_at_the_depth_limit() {
    // 20,000 nested block sequences (40 KB).
    let e = from_yaml(&"- ".repeat(20_000)).unwrap_err();
    assert!(e.contains("nests deeper than 64 levels"), "{e}");
    // 100,000 nested flow sequences.
    let e = from_yaml(&"[".repeat(100_000)).unwrap_err();
    assert!(e.contains("nests too deep"), "{e}");
    // Deep mappings, one line each.
    let mut s = String::new();
    for i in 0..200 {
        s.push_str(&" ".repeat(i));
        s.push_str("k:\n");
    }
    let e = from_yaml(&s).unwrap_err();
    assert!(e.contains("nests deeper"), "{e}");
    assert!(e.contains("hostile.yaml:65:"), "{e}");
}

#[test]
fn a_huge_key_is_refused_and_not_quoted() {
    let key = "k".repeat(200_000);
    let mut s = format!("version: 1\nvars:\n  {key}:\n");
    for i in 0..10_000 {
        s.push_str(&format!("    - {i}\n"));
    }
    // YAML itself reads a plain key over 1024 characters as a value: the
    // document is refused, and the error quotes a short excerpt of it.
    let e = from_yaml(&s).unwrap_err();
    assert!(e.contains("hostile.yaml:3:"), "{e}");
    assert!(
        e.len() < 2_000,
        "the error quotes the key: {} bytes",
        e.len()
    );
    // An explicit key may be longer for YAML, not for a flow.
    let s = format!("version: 1\nvars:\n  ? {key}\n  : 1\n");
    let e = from_yaml(&s).unwrap_err();
    assert!(e.contains("a key is longer than 1024 characters"), "{e}");
    assert!(e.contains("hostile.yaml:3:5"), "{e}");
    assert!(
        e.len() < 2_000,
        "the error quotes the key: {} bytes",
        e.len()
    );
}

#[test]
fn too_many_nodes_and_too_large_files_are_refused() {
    let mut s = String::from("version: 1\nvars:\n  list:\n");
    for _ in 0..210_000 {
        s.push_str("    - 1\n");
    }
    let e = from_yaml(&s).unwrap_err();
    assert!(e.contains("more than 200000 nodes"), "{e}");

    let d = dir("large");
    let f = d.join("big.yaml");
    std::fs::write(
        &f,
        format!("version: 1\n# {}\n", "x".repeat(9 * 1024 * 1024)),
    )
    .unwrap();
    let e = load(&f).unwrap_err();
    assert!(e.contains("larger than 8388608 bytes"), "{e}");
    // The limits are the configuration's.
    let limits = FlowLimits {
        flow_file_bytes: 10 * 1024 * 1024,
        ..FlowLimits::default()
    };
    let e = Flow::load_with(&f, &HandlerNames::default(), &limits)
        .unwrap_err()
        .0
        .to_string();
    assert!(!e.contains("larger than"), "{e}");
}

#[test]
fn a_long_next_chain_loads_and_its_loop_is_found() {
    let flow = from_yaml(&next_chain(10_000, false)).unwrap();
    assert_eq!(flow.state_names().count(), 10_000);
    let e = from_yaml(&next_chain(10_000, true)).unwrap_err();
    assert!(e.contains("loop"), "{e}");
    assert!(e.contains("s0"), "{e}");
}

#[test]
fn many_problems_are_reported_by_the_first_thousand() {
    let mut s = String::from("version: 1\nstates:\n  start: { say: hi, end: true }\n");
    for i in 0..5_000 {
        s.push_str(&format!("  s{i}: {{ say: hi, goto_: x }}\n"));
    }
    let e = Flow::from_yaml("many.yaml", &s, &HandlerNames::default()).unwrap_err();
    assert_eq!(e.0 .0.len(), 1_001);
    assert!(e.0.to_string().contains("more than 1000 problems"));
}

#[test]
fn includes_stay_in_the_flow_folder() {
    let d = dir("includes");
    let inner = d.join("flows");
    std::fs::create_dir_all(&inner).unwrap();
    std::fs::write(
        d.join("outside.yaml"),
        "states: { secret: { say: SECRET, end: true } }\n",
    )
    .unwrap();
    for (include, why) in [
        ("/proc/self/environ", "not an absolute path"),
        ("/dev/zero", "not an absolute path"),
        ("../outside.yaml", "outside the flow's folder"),
        ("link.yaml", "outside the flow's folder"),
    ] {
        let _ = std::fs::remove_file(inner.join("link.yaml"));
        std::os::unix::fs::symlink(d.join("outside.yaml"), inner.join("link.yaml")).unwrap();
        let main = inner.join("main.yaml");
        std::fs::write(
            &main,
            format!("version: 1\ninclude: [\"{include}\"]\nstates:\n  start: {{ say: hi, end: true }}\n"),
        )
        .unwrap();
        let e = load(&main).unwrap_err();
        assert!(e.contains(why), "{include}: {e}");
        assert!(e.contains("main.yaml:2:"), "{include}: {e}");
        assert!(
            !e.contains("SECRET") && !e.contains("PATH="),
            "{include}: {e}"
        );
    }
    // A special file inside the folder is not read either (a FIFO would block).
    let main = inner.join("main.yaml");
    let fifo = inner.join("pipe.yaml");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    std::fs::write(
        &main,
        "version: 1\ninclude: [pipe.yaml]\nstates:\n  start: { say: hi, end: true }\n",
    )
    .unwrap();
    let e = load(&main).unwrap_err();
    assert!(e.contains("not a regular file"), "{e}");
    let e = load(&fifo).unwrap_err();
    assert!(e.contains("not a regular file"), "{e}");
    std::fs::write(
        &main,
        "version: 1\ninclude: [sub/part.yaml]\nstates:\n  start: { say: hi, end: true }\n",
    )
    .unwrap();
    std::fs::create_dir_all(inner.join("sub")).unwrap();
    std::fs::write(
        inner.join("sub/part.yaml"),
        "states: { more: { say: more, end: true } }\n",
    )
    .unwrap();
    assert!(load(&main).is_ok());
}

#[test]
fn another_files_content_is_quoted_only_as_a_short_excerpt() {
    let d = dir("excerpt");
    let secret = format!("SECRET-HEAD{}", "a".repeat(400));
    std::fs::write(
        d.join("part.yaml"),
        format!("states: {{ x: {{ say: [ {secret} }}\n"),
    )
    .unwrap();
    std::fs::write(
        d.join("main.yaml"),
        "version: 1\ninclude: [part.yaml]\nstates:\n  start: { say: hi, end: true }\n",
    )
    .unwrap();
    let e = load(&d.join("main.yaml")).unwrap_err();
    assert!(e.contains("part.yaml"), "{e}");
    // The line is shown around where the problem starts, shortened: never
    // the whole of it.
    assert!(!e.contains(&"a".repeat(200)), "{e}");
    assert!(e.lines().all(|l| l.chars().count() < 200), "{e}");
}

#[test]
fn unknown_filters_tests_and_functions_are_load_errors() {
    for (template, what) in [
        (
            "Hi {{ name | capitalise }}",
            "unknown filter `capitalise` (did you mean `capitalize`?)",
        ),
        (
            "{% if name is shouty %}!{% endif %}",
            "unknown test `shouty`",
        ),
        ("{{ frobnicate(name) }}", "unknown function `frobnicate`"),
    ] {
        let yaml = format!("version: 1\nstates:\n  start: {{ say: \"{template}\", end: true }}\n");
        let e = from_yaml(&yaml).unwrap_err();
        assert!(e.contains(what), "{template}: {e}");
        assert!(e.contains("hostile.yaml:3:"), "{template}: {e}");
    }
    // A constant repetition that would build a huge text at once, refused
    // before minijinja folds it (which would build it while loading).
    let e =
        from_yaml("version: 1\nstates:\n  start: { say: \"{{ 'x' * 1000000 }}\", end: true }\n")
            .unwrap_err();
    assert!(e.contains("repeats more than 10000 times"), "{e}");
    // Forty states each folding a different 100 MB literal: the first is refused.
    let mut yaml = String::from("version: 1\nstates:\n");
    for i in 0..40 {
        yaml.push_str(&format!(
            "  s{i}: {{ say: \"{{% set y = 'A{i}' * 50000000 %}}len {{{{ y | length }}}}\", next: s{} }}\n",
            i + 1
        ));
    }
    yaml.push_str("  s40: { say: bye, end: true }\n");
    let e = from_yaml(&yaml.replace("s0:", "start:")).unwrap_err();
    assert!(e.contains("repeats more than 10000 times"), "{e}");
    assert!(e.contains("hostile.yaml:3:"), "{e}");
    // Small factors whose product is large.
    let e = from_yaml(
        "version: 1\nstates:\n  start: { say: \"{{ ('ab' * 9000) * 9000 }}\", end: true }\n",
    )
    .unwrap_err();
    assert!(e.contains("would build 162000000 bytes"), "{e}");
    // What minijinja has, and what a template defines, is fine.
    from_yaml(
        "version: 1\nstates:\n  start:\n    say: \"{% macro b(x) %}*{{ x }}*{% endmacro %}{{ b(name | upper) }}{% for i in range(2) %}{{ loop.index }}{% endfor %}{{ name is defined }}\"\n    end: true\n",
    )
    .unwrap();
}

const COSTLY: &str = r#"
version: 1
settings:
  error_message: "Sorry, that went wrong."
states:
  start:
    ask: { text: "Your name?", save: name }
    set: { times: "1000000" }
    next: show
  show:
    say: "{% for c in name * (times | int) %}{{ c }}{% endfor %}"
    next: loop
  loop:
    say: "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}"
    next: big
  big:
    say: "{{ name * 1000 }}"
    next: fine
  fine:
    say: "Thanks {{ name }}"
    end: true
"#;

#[tokio::test]
async fn costly_templates_stop_at_their_limits_and_the_customer_gets_the_error_message() {
    let mut c = TestConversation::from_yaml(COSTLY, Registry::new()).unwrap();
    c.send("hi").await;
    let out: Vec<String> = c
        .send(&"n".repeat(100))
        .await
        .iter()
        .map(|m| m.text.clone())
        .collect();
    // Fuel stops the loops, the output limit stops the 100,000-character text;
    // no template source reaches the customer, and the flow goes on.
    assert_eq!(
        out,
        [
            "Sorry, that went wrong.",
            "Sorry, that went wrong.",
            "Sorry, that went wrong.",
            &format!("Thanks {}", "n".repeat(100))
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_reload_is_refused_and_the_running_flow_kept() {
    use crate::runtime::{message, wait_until, Harness, ECHO};
    use std::time::Duration;
    let mut h = Harness::start("hostile-reload", ECHO, |_| {}).await;
    h.post(&message("m1", "c1", "hello")).await;
    wait_until("a reply", Duration::from_secs(5), || {
        h.replies("c1").len() == 1
    })
    .await;
    for bad in [
        "- ".repeat(20_000),
        "[".repeat(100_000),
        "version: 1\ninclude: [/proc/self/environ]\nstates: { start: {} }\n".to_string(),
    ] {
        std::fs::write(h.dir.join("flow.yaml"), bad).unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    h.post(&message("m2", "c1", "still here")).await;
    wait_until("the old flow's reply", Duration::from_secs(5), || {
        h.replies("c1").len() == 2
    })
    .await;
    let metrics = h.metrics().await;
    h.stop().await;
    assert_eq!(h.replies("c1"), ["Echo: hello", "Echo: still here"]);
    assert!(
        metrics.contains("flowbot_reloads_total{result=\"rejected\"} 3"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_and_oversized_ids_become_dead_letters() {
    use crate::runtime::{message, wait_until, Harness, ECHO};
    use std::time::Duration;
    let mut h = Harness::start("hostile-ids", ECHO, |_| {}).await;
    let huge = "i".repeat(200_000);
    for (id, conv) in [
        ("", "c1"),
        ("  ", "c1"),
        (huge.as_str(), "c1"),
        ("m1", ""),
        ("m2", huge.as_str()),
    ] {
        assert_eq!(h.post(&message(id, conv, "hi")).await, 200);
    }
    // Empty ids do not shadow one another: a later message is answered.
    h.post(&message("m3", "c2", "hello")).await;
    wait_until("the reply", Duration::from_secs(5), || {
        h.replies("c2").len() == 1
    })
    .await;
    let metrics = h.metrics().await;
    h.stop().await;
    assert!(
        metrics.contains("flowbot_dead_letters_total 5"),
        "{metrics}"
    );
    assert!(h.replies("c1").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_says_why_qpien_or_the_store_fails() {
    use crate::runtime::{message, Harness, ECHO};
    use flowbot::internals::qpien::RetryConfig;
    use std::time::Duration;
    // Qpien refuses connections, and retries outlast /readyz's wait: the
    // reason is the last attempt's, and token failures are counted.
    let mut h = Harness::start("hostile-ready-qpien", ECHO, |c| {
        c.qpien.endpoint = "http://127.0.0.1:9/graphql".into();
        c.qpien.retry = RetryConfig {
            max_attempts: 20,
            min_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(2),
        };
    })
    .await;
    let r = h.http.get(h.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 503);
    let body = r.text().await.unwrap();
    assert!(
        body.contains("no token within 5s; the last attempt:"),
        "{body}"
    );
    assert!(body.to_lowercase().contains("connection refused"), "{body}");
    h.stop().await;

    let mut h = Harness::start("hostile-ready-unreachable", ECHO, |c| {
        c.qpien.endpoint = "http://127.0.0.1:9/graphql".into();
    })
    .await;
    let r = h.http.get(h.url("/readyz")).send().await.unwrap();
    assert!(r
        .text()
        .await
        .unwrap()
        .to_lowercase()
        .contains("connection refused"));
    let metrics = h.metrics().await;
    assert!(
        metrics.contains("flowbot_qpien_calls_total{result=\"failed\"} 1"),
        "{metrics}"
    );
    h.stop().await;

    // A store that cannot write (a full disk, here its size limit): webhooks
    // answer 503 and /readyz says why.
    // Turns hang (their commits would free space): the store stays full.
    let hang = "version: 1\nintents:\n  - { regex: '.*', goto: hang }\nstates:\n  start: {}\n  hang:\n    call: { action: hang }\n";
    let mut h = Harness::with("hostile-ready-store", hang, poison_registry(), |c| {
        c.store.max_bytes = Some(160 * 1024);
        c.runtime.shutdown_deadline = Duration::from_millis(300);
    })
    .await;
    let big = "x".repeat(8 * 1024);
    let mut refused = false;
    for i in 0..200 {
        if h.post(&message(&format!("m{i}"), &format!("c{i}"), &big))
            .await
            == 503
        {
            refused = true;
            break;
        }
    }
    assert!(refused, "the store never filled up");
    let r = h.http.get(h.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 503);
    let body = r.text().await.unwrap();
    assert!(body.contains("cannot write"), "{body}");
    assert!(body.contains("full"), "{body}");
    h.stop().await;
}

/// A child process killed when dropped, so that a failing test leaves none
/// running.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Opens `n` connections to `addr` and writes `prefix` on each (nothing, or
/// the start of a request that never ends).
async fn open_connections(
    addr: std::net::SocketAddr,
    n: usize,
    prefix: &[u8],
) -> Vec<tokio::net::TcpStream> {
    use tokio::io::AsyncWriteExt;
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        if !prefix.is_empty() {
            s.write_all(prefix).await.unwrap();
        }
        held.push(s);
    }
    held
}

/// A real `flowbot run` started with the common default of 1,024 open files
/// (systemd's soft limit): 2,000 idle or slow connections would use them all
/// without the connection handling of `runtime/serve.rs`, and with a long
/// header timeout they would keep the probes waiting, were the oldest idle
/// ones not closed to make room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_idle_or_slow_connections_stop_neither_probes_nor_webhooks() {
    use crate::qpien::start_sim;
    use crate::runtime::{message, replies, wait_until, SECRET};
    use flowbot::internals::qpien::webhook::sign;
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    use std::time::Duration;
    let qpien = start_sim(|c| c.auto_create_conversations = true).await;
    let d = dir("conns");
    std::fs::write(d.join("flow.yaml"), crate::runtime::ECHO).unwrap();
    std::fs::write(
        d.join("flowbot.toml"),
        "flow = \"flow.yaml\"\n[server]\nlisten = \"127.0.0.1:0\"\n[store]\npath = \"flowbot.db\"\n\
         [qpien]\nwhatsapp_operation = \"create_message\"\n",
    )
    .unwrap();
    let mut child = Command::new("sh")
        .args(["-c", "ulimit -Sn 1024 && exec \"$0\" run --config \"$1\""])
        .arg(env!("CARGO_BIN_EXE_flowbot"))
        .arg(d.join("flowbot.toml"))
        .env("FLOWBOT_QPIEN__ENDPOINT", qpien.graphql_url())
        .env("FLOWBOT_QPIEN__CLIENT_ID", "id-1")
        .env("FLOWBOT_QPIEN__CLIENT_SECRET", "secret-1")
        .env("FLOWBOT_SERVER__WEBHOOK_SECRET", SECRET)
        // Long enough that waiting for slow clients to time out would fail
        // this test: only shedding them makes room.
        .env("FLOWBOT_SERVER__HEADER_TIMEOUT", "60s")
        // A cap the 2,000 connections pass, wherever the hard file limit is.
        .env("FLOWBOT_SERVER__MAX_CONNECTIONS", "500")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(d.join("stderr.log")).unwrap())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let child = Reaped(child);
    let url = line
        .trim()
        .strip_prefix("flowbot listening on ")
        .unwrap()
        .to_owned();
    let addr: std::net::SocketAddr = url.trim_start_matches("http://").parse().unwrap();
    let idle = open_connections(addr, 1_000, b"").await;
    let slow = open_connections(
        addr,
        1_000,
        b"POST /webhook HTTP/1.1\r\nHost: x\r\nX-Slow: ",
    )
    .await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let health = client.get(format!("{url}/healthz")).send().await;
    let ready = client.get(format!("{url}/readyz")).send().await;
    let body = serde_json::to_vec(&message("m1", "c1", "hello")).unwrap();
    let webhook = client
        .post(format!("{url}/webhook"))
        .header("content-type", "application/json")
        .header("X-Qpien-Signature", sign(SECRET.as_bytes(), &body))
        .body(body)
        .send()
        .await;
    let answered = matches!(&webhook, Ok(r) if r.status().as_u16() == 200);
    if answered {
        wait_until("the reply", Duration::from_secs(5), || {
            replies(&qpien, "c1").len() == 1
        })
        .await;
    }
    drop((idle, slow, child));
    assert!(
        matches!(&health, Ok(r) if r.status().as_u16() == 200),
        "{health:?}"
    );
    assert!(
        ready.is_ok(),
        "/readyz answers (whatever it says): {ready:?}"
    );
    assert!(answered, "{webhook:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_and_the_cap_holds() {
    use crate::runtime::{Harness, ECHO};
    use std::time::{Duration, Instant};
    use tokio::io::AsyncReadExt;
    let mut h = Harness::start("hostile-cap", ECHO, |c| {
        c.server.max_connections = 50;
        c.server.header_timeout = Duration::from_millis(500);
    })
    .await;
    let addr = h.running.as_ref().unwrap().addr();
    // Four times the cap: the rest wait in the kernel's queue, and every idle
    // one is closed by the header timeout, so the probe gets through.
    let mut idle = open_connections(addr, 200, b"").await;
    let started = Instant::now();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let r = client.get(h.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(started.elapsed() < Duration::from_secs(8));
    // The server closed the first idle connection (end of stream, or reset).
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(5), idle[0].read(&mut buf)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_never_ends_gets_408() {
    use crate::runtime::{Harness, ECHO};
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut h = Harness::start("hostile-body", ECHO, |c| {
        c.server.body_timeout = Duration::from_millis(300);
    })
    .await;
    let addr = h.running.as_ref().unwrap().addr();
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        b"POST /webhook HTTP/1.1\r\nHost: x\r\nX-Qpien-Signature: 00\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"event\":",
    )
    .await
    .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    h.stop().await;
}

const POISON: &str = r#"
version: 1
intents:
  - { text: boom, goto: boom }
  - { text: hang, goto: hang }
  - { regex: '^(?P<said>.+)$', say: "Echo: {{ said }}", goto: start }
states:
  start: {}
  boom:
    call: { action: explode }
    say: never
  hang:
    call: { action: hang }
    say: never
"#;

fn poison_registry() -> Registry {
    struct Hang;
    #[flowbot::async_trait]
    impl flowbot::Action for Hang {
        async fn run(
            &self,
            _: &mut flowbot::ActionContext<'_>,
        ) -> Result<flowbot::ActionOutcome, flowbot::ActionError> {
            tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
            Ok(flowbot::ActionOutcome::Continue)
        }
    }
    Registry::new()
        .action(
            "explode",
            |_: &mut flowbot::ActionContext<'_>| -> Result<flowbot::ActionOutcome, flowbot::ActionError> {
                panic!("a bug in a handler")
            },
        )
        .action("hang", Hang)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_that_panics_every_time_is_set_aside_and_the_conversation_goes_on() {
    use crate::runtime::{message, wait_until, Harness};
    use std::time::Duration;
    let mut h = Harness::with("hostile-panic", POISON, poison_registry(), |_| {}).await;
    h.post(&message("m1", "c1", "boom")).await;
    h.post(&message("m2", "c1", "hello")).await;
    wait_until("the next message's reply", Duration::from_secs(5), || {
        h.replies("c1").len() == 1
    })
    .await;
    let metrics = h.metrics().await;
    h.stop().await;
    assert_eq!(h.replies("c1"), ["Echo: hello"]);
    assert!(
        metrics.contains("flowbot_dead_letters_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("flowbot_turns_total{result=\"set_aside\"} 1"),
        "{metrics}"
    );
    // The letter holds the message (run at once, it was queued as an event).
    let conn = rusqlite::Connection::open(h.dir.join("flowbot.db")).unwrap();
    let body: Vec<u8> = conn
        .query_row("SELECT body FROM dead_letters", [], |r| r.get(0))
        .unwrap();
    let body = String::from_utf8_lossy(&body);
    assert!(body.contains("boom"), "{body}");
}

/// A message whose turn never finishes (the process stops during it, here by
/// a shutdown while its action hangs) is resumed at every start: after
/// `max_turn_attempts` it is set aside, and the conversation's next message is
/// answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_stops_the_process_every_time_is_set_aside() {
    use crate::qpien::start_sim;
    use crate::runtime::{config, message, replies, wait_until, SECRET};
    use flowbot::internals::qpien::webhook::sign;
    use std::time::Duration;
    let qpien = start_sim(|c| c.auto_create_conversations = true).await;
    let d = dir("poison-restarts");
    std::fs::write(d.join("flow.yaml"), POISON).unwrap();
    let http = reqwest::Client::new();
    let post = |addr: std::net::SocketAddr, id: &str, conv: &str, text: &str| {
        let body = serde_json::to_vec(&message(id, conv, text)).unwrap();
        let req = http
            .post(format!("http://{addr}/webhook"))
            .header("content-type", "application/json")
            .header("X-Qpien-Signature", sign(SECRET.as_bytes(), &body))
            .body(body);
        async move { req.send().await.unwrap().status().as_u16() }
    };
    for run in 0..5 {
        let mut c = config(&qpien, &d);
        c.runtime.shutdown_deadline = Duration::from_millis(300);
        let bot = flowbot::start(c, poison_registry()).await.unwrap();
        if run == 0 {
            assert_eq!(post(bot.addr(), "m1", "c1", "hang").await, 200);
            assert_eq!(post(bot.addr(), "m2", "c1", "after").await, 200);
        }
        if run == 4 {
            wait_until("the next message's reply", Duration::from_secs(5), || {
                replies(&qpien, "c1").len() == 1
            })
            .await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        bot.shutdown().await;
        if run < 4 {
            assert!(
                replies(&qpien, "c1").is_empty(),
                "set aside too early, at run {run}"
            );
        }
    }
    assert_eq!(replies(&qpien, "c1"), ["Echo: after"]);
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Qpien is down while 10,000 replies (of 2 KB each) pile up: they wait in
/// the store, the process holds at most `outbox_in_memory` of them, its
/// resident memory stays flat, and once Qpien is back every reply is
/// delivered once, in order per conversation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_qpien_outage_piles_replies_up_on_disk_not_in_memory() {
    use crate::qpien::start_sim;
    use crate::runtime::{message, wait_until, SECRET};
    use flowbot::internals::qpien::webhook::sign;
    use std::collections::{HashMap, HashSet};
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    use std::time::Duration;
    let qpien = start_sim(|c| c.auto_create_conversations = true).await;
    let d = dir("outage");
    let filler = "x".repeat(2_000);
    let says: Vec<String> = (0..10)
        .map(|i| format!("\"{{{{ said }}}} #{i} {filler}\""))
        .collect();
    std::fs::write(
        d.join("flow.yaml"),
        format!(
            "version: 1\nintents:\n  - {{ regex: '^(?P<said>.+)$', goto: answer }}\nstates:\n  start: {{}}\n  answer:\n    say: [{}]\n    next: start\n",
            says.join(", ")
        ),
    )
    .unwrap();
    std::fs::write(
        d.join("flowbot.toml"),
        "flow = \"flow.yaml\"\n[server]\nlisten = \"127.0.0.1:0\"\n[store]\npath = \"flowbot.db\"\n\
         [runtime]\noutbox_in_memory = 500\noutbox_in_memory_per_conversation = 20\n\
         [qpien]\nwhatsapp_operation = \"create_message\"\n\
         [qpien.rate_limit]\nrequests = 100000\nper = \"1s\"\n\
         [qpien.retry]\nmax_attempts = 2\nmin_delay = \"5ms\"\nmax_delay = \"10ms\"\n",
    )
    .unwrap();
    qpien.state().configure(|c| c.faults.server_errors = 1.0);
    let mut child = Command::new(env!("CARGO_BIN_EXE_flowbot"))
        .args(["run", "--config"])
        .arg(d.join("flowbot.toml"))
        .env("FLOWBOT_QPIEN__ENDPOINT", qpien.graphql_url())
        .env("FLOWBOT_QPIEN__CLIENT_ID", "id-1")
        .env("FLOWBOT_QPIEN__CLIENT_SECRET", "secret-1")
        .env("FLOWBOT_SERVER__WEBHOOK_SECRET", SECRET)
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(d.join("stderr.log")).unwrap())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let child = Reaped(child);
    let url = line
        .trim()
        .strip_prefix("flowbot listening on ")
        .unwrap()
        .to_owned();
    let http = reqwest::Client::new();
    let metric = |name: &'static str| crate::bots::metric(&http, &url, name);
    let mut rss_at_2k = 0;
    for i in 0..1_000 {
        let body = serde_json::to_vec(&message(
            &format!("m{i}"),
            &format!("c{}", i % 50),
            &format!("n{i}"),
        ))
        .unwrap();
        let status = http
            .post(format!("{url}/webhook"))
            .header("content-type", "application/json")
            .header("X-Qpien-Signature", sign(SECRET.as_bytes(), &body))
            .body(body)
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status.as_u16(), 200);
        if i == 199 {
            let end = tokio::time::Instant::now() + Duration::from_secs(30);
            while metric("flowbot_turns_total{result=\"ok\"}").await < 200.0 {
                assert!(
                    tokio::time::Instant::now() < end,
                    "the first turns did not run"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            rss_at_2k = rss_kib(child.0.id());
        }
    }
    let end = tokio::time::Instant::now() + Duration::from_secs(60);
    while metric("flowbot_turns_total{result=\"ok\"}").await < 1_000.0 {
        assert!(tokio::time::Instant::now() < end, "the turns did not run");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rss_at_10k = rss_kib(child.0.id());
    let held = metric("flowbot_outbox_depth").await;
    assert!(qpien.state().created().is_empty());
    assert!(held <= 500.0, "{held} replies held in memory");
    // 8,000 more replies of 2 KB would be 16 MB more if held in memory.
    assert!(
        rss_at_10k < rss_at_2k + 6 * 1024,
        "resident memory grew from {rss_at_2k} KiB to {rss_at_10k} KiB"
    );

    // Qpien is back: every reply once, in order per conversation.
    qpien.state().configure(|c| c.faults.server_errors = 0.0);
    wait_until("every reply", Duration::from_secs(180), || {
        qpien.state().created().len() >= 10_000
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(child);
    let created = qpien.state().created();
    assert_eq!(created.len(), 10_000);
    let fronts: HashSet<String> = created
        .iter()
        .map(|m| m["input"]["frontMsgId"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(fronts.len(), 10_000, "a reply was sent twice");
    let mut last: HashMap<String, (u64, u64)> = HashMap::new();
    for m in &created {
        let conv = m["input"]["conversationId"].as_str().unwrap().to_owned();
        let content = m["input"]["content"].as_str().unwrap();
        let (n, k) = content.split_once(" #").unwrap();
        let n: u64 = n.trim_start_matches('n').parse().unwrap();
        let k: u64 = k.split(' ').next().unwrap().parse().unwrap();
        if let Some(prev) = last.insert(conv.clone(), (n, k)) {
            assert!(prev < (n, k), "{conv}: {prev:?} before {:?}", (n, k));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_out_of_fuel_is_logged_counted_and_answered_politely() {
    use crate::runtime::{message, wait_until, Harness};
    use std::time::Duration;
    let flow = "version: 1\nintents:\n  - { regex: '.*', goto: spin }\nstates:\n  start: {}\n  spin:\n    say: \"{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}\"\n    next: start\n";
    let mut h = Harness::start("hostile-fuel", flow, |_| {}).await;
    h.post(&message("m1", "c1", "go")).await;
    h.post(&message("m2", "c2", "go")).await;
    wait_until("two replies", Duration::from_secs(10), || {
        h.replies("c1").len() + h.replies("c2").len() == 2
    })
    .await;
    let r = h.http.get(h.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let metrics = h.metrics().await;
    h.stop().await;
    assert_eq!(
        h.replies("c1"),
        ["Sorry, something went wrong. Please try again."]
    );
    assert!(
        metrics.contains("flowbot_turns_total{result=\"error\"} 2"),
        "{metrics}"
    );
}

/// Conversation ids are one path segment whatever they hold: `flowbot release`
/// encodes them (an id naming another endpoint reaches only the release), and
/// the release endpoint applies the rule deliveries do (1 to 256 characters,
/// not blank, no control characters).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_ids_are_encoded_and_checked() {
    let h = admin_harness("hostile-release").await;
    for id in ["../dead-letters/1004/retry?x=", "a/b#c", "ünïcode %41"] {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_flowbot"))
            .args(["release", id, "--url", &h.url("")])
            .env("FLOWBOT_SERVER__ADMIN_TOKEN", ADMIN)
            .output()
            .await
            .unwrap();
        assert!(out.status.success(), "{id}: {out:?}");
    }
    let conn = rusqlite::Connection::open(h.dir.join("flowbot.db")).unwrap();
    let mut released: Vec<String> = conn
        .prepare("SELECT conversation FROM inbox WHERE key LIKE 'release:%'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    released.sort();
    assert_eq!(
        released,
        ["../dead-letters/1004/retry?x=", "a/b#c", "ünïcode %41"],
        "each id reached the release as it is"
    );
    let long = "x".repeat(60_000);
    for bad in [long.as_str(), "%20%20", "a%00b"] {
        let r = h
            .http
            .post(h.url(&format!("/admin/conversations/{bad}/release")))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 400, "{}", &bad[..bad.len().min(20)]);
    }
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_flowbot"))
        .args(["release", "   ", "--url", &h.url("")])
        .env("FLOWBOT_SERVER__ADMIN_TOKEN", ADMIN)
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

/// A Qpien (or anything at its address) answering with more than
/// `qpien.max_response_bytes` is read no further: the call fails with the
/// reason, whether the size is announced or streamed; and `/readyz`, asked
/// many times at once, calls Qpien once (its checks are reused for a second).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_from_qpien_are_bounded_and_readyz_does_no_work_per_request() {
    use crate::runtime::{Harness, ECHO};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    // 8 MiB of JSON-ish bytes, streamed without a length, 64 KiB at a time.
    let app = axum::Router::new().fallback(move || {
        counted.fetch_add(1, Ordering::SeqCst);
        async {
            let chunks = (0..128).map(|_| Ok::<_, std::convert::Infallible>(vec![b' '; 64 << 10]));
            axum::body::Body::from_stream(futures_util::stream::iter(chunks))
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let h = Harness::start("hostile-big-answers", ECHO, |c| {
        c.qpien.endpoint = format!("http://{addr}/graphql");
        c.qpien.max_response_bytes = 1 << 20;
        c.qpien.retry.max_attempts = 1;
    })
    .await;
    let before = calls.load(Ordering::SeqCst);
    let answers = futures_util::future::join_all((0..6).map(|_| async {
        let r = h.http.get(h.url("/readyz")).send().await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }))
    .await;
    for (status, body) in &answers {
        assert_eq!(*status, 503, "{body}");
        assert!(body.contains("larger than 1048576 bytes"), "{body}");
    }
    assert_eq!(
        calls.load(Ordering::SeqCst) - before,
        1,
        "one check for six asks"
    );
}

/// Dead-letter listings are pages of summaries: concurrent listings of many
/// large letters hold no bodies (a body is read by id), pages follow each
/// other, and a bad query is refused; `flowbot dead-letters list | head`
/// ends quietly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letter_listings_are_paged_summaries() {
    let h = admin_harness("hostile-letters").await;
    {
        let conn = rusqlite::Connection::open(h.dir.join("flowbot.db")).unwrap();
        let body = vec![b'x'; 100_000];
        for i in 0..250 {
            conn.execute(
                "INSERT INTO dead_letters (received_at, reason, headers, body) VALUES (?1, 'test', '{}', ?2)",
                rusqlite::params![i, body],
            )
            .unwrap();
        }
    }
    let get = |query: &'static str| {
        let req = h
            .http
            .get(h.url(&format!("/admin/dead-letters{query}")))
            .bearer_auth(ADMIN);
        async move {
            let r = req.send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let (status, first) = get("").await;
    assert_eq!(status, 200);
    assert!(
        first.len() < 20_000,
        "summaries only: {} bytes",
        first.len()
    );
    let first: serde_json::Value = serde_json::from_str(&first).unwrap();
    let ids: Vec<u64> = first
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids.len(), 100, "100 by default");
    assert_eq!(ids[0], 250, "newest first");
    assert_eq!(first[0]["bytes"], 100_000);
    assert!(first[0].get("body").is_none());
    let (_, next) = get("?before=151&limit=1000").await;
    let next: serde_json::Value = serde_json::from_str(&next).unwrap();
    assert_eq!(next.as_array().unwrap().len(), 150);
    assert_eq!(next[0]["id"], 150);
    assert_eq!(get("?limit=x").await.0, 400);
    assert_eq!(get("?sort=body").await.0, 400);
    // A reader that stops early (after more than a pipe holds): the CLI
    // ends quietly.
    {
        let conn = rusqlite::Connection::open(h.dir.join("flowbot.db")).unwrap();
        for i in 0..4_000 {
            conn.execute(
                "INSERT INTO dead_letters (received_at, reason, headers, body) VALUES (?1, 'a reason long enough to fill the pipe quickly', '{}', x'00')",
                rusqlite::params![i],
            )
            .unwrap();
        }
    }
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{} dead-letters list --url {} | head -1",
            env!("CARGO_BIN_EXE_flowbot"),
            h.url("")
        ))
        .env("FLOWBOT_SERVER__ADMIN_TOKEN", ADMIN)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);
}

/// The token of the admin endpoints in these tests.
const ADMIN: &str = "admin-token-of-the-hostile-tests";

/// A running bot with its admin endpoints on (token [`ADMIN`]).
async fn admin_harness(name: &str) -> crate::runtime::Harness {
    use flowbot::internals::qpien::Secret;
    crate::runtime::Harness::start(name, crate::runtime::ECHO, |c| {
        c.server.admin_token = Secret::new(ADMIN);
    })
    .await
}

/// A script that starts one customer's conversation in a loop gets 429 past
/// `server.start_limit` an hour (with when to try again); other customers,
/// and duplicates of a keyed start, are not held back; an hour later the
/// customer can be started again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_for_one_customer_are_limited_an_hour() {
    use flowbot::internals::qpien::Secret;
    const TOKEN: &str = "api-token-of-the-start-limit";
    let clock = flowbot::ManualClock::new(flowbot::internals::time::now());
    let h = crate::runtime::Harness::start("start-limit", crate::runtime::ECHO, |c| {
        c.server.api_token = Secret::new(TOKEN);
        c.server.start_limit = 3;
        c.clock = flowbot::internals::time::ClockHandle::new(clock.clone());
    })
    .await;
    let start = |conversation: &str, key: Option<&str>| {
        let mut body = serde_json::json!({"conversation": conversation, "state": "start"});
        if let Some(k) = key {
            body["key"] = k.into();
        }
        let req = h
            .http
            .post(h.url("/api/start"))
            .bearer_auth(TOKEN)
            .header("content-type", "application/json")
            .body(body.to_string());
        async move {
            let r = req.send().await.unwrap();
            let retry = r
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
            (r.status().as_u16(), retry, r.text().await.unwrap())
        }
    };
    assert_eq!(start("c-loop", Some("k1")).await.0, 202);
    assert_eq!(start("c-loop", Some("k1")).await.0, 200, "a duplicate");
    assert_eq!(start("c-loop", None).await.0, 202);
    assert_eq!(start("c-loop", None).await.0, 202);
    let (status, retry, body) = start("c-loop", None).await;
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("server.start_limit"), "{body}");
    assert!(retry.is_some_and(|s| s > 3500 && s <= 3600), "{retry:?}");
    assert_eq!(start("c-other", None).await.0, 202, "another customer");
    clock.advance(std::time::Duration::from_secs(3601));
    assert_eq!(start("c-loop", None).await.0, 202, "a new hour");
}
