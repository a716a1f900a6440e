//! `http:` steps end to end: a real `flowbot run` (the process `crash`
//! starts) calling a local stand-in for a shop's API that is slow, fails,
//! answers too much, redirects to where it may not and needs a secret; the
//! secret is then looked for everywhere the process writes.

use std::time::Duration;

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::crash::{post, spawn_with};
use crate::qpien::start_sim;
use crate::replay::run_flowbot;
use crate::runtime::{message, replies, temp_dir, wait_until};

const TOKEN: &str = "tok-9f3a1c-never-shown";

/// The stand-in: each path a behaviour.
async fn stand_in() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let app = axum::Router::new().fallback(move |req: axum::extract::Request| async move {
        let auth = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let query = req.uri().query().unwrap_or("").to_owned();
        let json = |body: String| -> Response {
            ([(header::CONTENT_TYPE, "application/json")], body).into_response()
        };
        match req.uri().path() {
            "/order" if auth == format!("Bearer {TOKEN}") && query == "lang=tr" => {
                json(r#"{"status":"shipped"}"#.into())
            }
            "/order" => StatusCode::UNAUTHORIZED.into_response(),
            "/slow" => {
                tokio::time::sleep(Duration::from_secs(3)).await;
                json(r#"{"status":"late"}"#.into())
            }
            "/fail" => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
            "/huge" => json(format!(r#"{{"status":"{}"}}"#, "x".repeat(100 * 1024))),
            "/notjson" => "<html>hello</html>".into_response(),
            "/redirect-name" => (
                StatusCode::FOUND,
                [(header::LOCATION, format!("http://localhost:{port}/order"))],
            )
                .into_response(),
            "/redirect-ip" => (
                StatusCode::FOUND,
                [(header::LOCATION, format!("http://127.0.0.2:{port}/order"))],
            )
                .into_response(),
            "/redirect-ok" => (
                StatusCode::FOUND,
                [(
                    header::LOCATION,
                    format!("http://127.0.0.1:{port}/order?lang=tr"),
                )],
            )
                .into_response(),
            _ => StatusCode::NOT_FOUND.into_response(),
        }
    });
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    port
}

fn flow(port: u16) -> String {
    format!(
        r#"
version: 1
settings:
  http: {{ allow: ["127.0.0.1"] }}
intents:
  - {{ regex: '^(?P<what>[a-z-]+)$', goto: call }}
states:
  start: {{}}
  call:
    http:
      name: shop
      url: "http://127.0.0.1:{port}/{{{{ what }}}}"
      query: {{ lang: tr }}
      headers: {{ Authorization: "Bearer {{{{ secret.SHOP_TOKEN }}}}" }}
      timeout: 1s
      retries: 0
      save: {{ status: /status }}
      status: code
      on_error: failed
    say: "ok {{{{ status }}}}"
    next: start
  failed: {{ say: "failed {{{{ code }}}}", next: start }}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_steps_call_within_their_limits_and_never_leak_the_secret() {
    let port = stand_in().await;
    let qpien = start_sim(|c| c.auto_create_conversations = true).await;
    let dir = temp_dir("http-step");
    std::fs::write(dir.join("flow.yaml"), flow(port)).unwrap();
    std::fs::write(
        dir.join("flowbot.toml"),
        format!(
            "flow = \"flow.yaml\"\n[server]\nlisten = \"127.0.0.1:0\"\ncapture_dir = \"{}\"\n[limits]\nhttp_body_bytes = 65536\n[log]\nlevel = \"flowbot=trace,reqwest=trace,hyper=trace\"\n",
            dir.join("captures").display()
        ),
    )
    .unwrap();
    let mut bot = spawn_with(
        &dir,
        &qpien,
        &[("RUST_LOG", "trace"), ("FLOWBOT_SECRET_SHOP_TOKEN", TOKEN)],
    );
    let http = reqwest::Client::new();
    let cases = [
        ("order", "ok shipped"),
        ("redirect-ok", "ok shipped"),
        ("fail", "failed 500"),
        ("slow", "failed 0"),
        ("huge", "failed 0"),
        ("notjson", "failed 0"),
        ("redirect-name", "failed 0"),
        ("redirect-ip", "failed 0"),
        ("missing", "failed 404"),
    ];
    for (i, (what, _)) in cases.iter().enumerate() {
        let conversation = format!("http-{what}");
        assert!(
            post(
                &http,
                &bot.url,
                &message(&format!("m{i}"), &conversation, what)
            )
            .await
        );
    }
    wait_until("every answer", Duration::from_secs(20), || {
        cases
            .iter()
            .all(|(what, _)| !replies(&qpien, &format!("http-{what}")).is_empty())
    })
    .await;
    for (what, want) in cases {
        assert_eq!(replies(&qpien, &format!("http-{what}")), [want], "{what}");
    }
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &bot.child.id().to_string()])
        .status();
    let _ = bot.child.wait();
    let log = std::fs::read_to_string(dir.join("stderr.log")).unwrap();
    for why in [
        "answered 500",
        "no answer within 1s",
        "larger than 65536 bytes",
        "the answer is not JSON",
        &format!("a redirect to http://localhost:{port}/order: host `localhost` is not in"),
        "127.0.0.2 is not in settings.http.allow",
        "answered 404",
    ] {
        assert!(log.contains(why), "no `{why}` in the log:\n{log}");
    }
    // The secret went out (the stand-in checked it) and is nowhere else.
    let mut places = vec![dir.join("stderr.log")];
    for entry in walk(&dir) {
        places.push(entry);
    }
    for place in places {
        let bytes = std::fs::read(&place).unwrap_or_default();
        assert!(
            !bytes.windows(TOKEN.len()).any(|w| w == TOKEN.as_bytes()),
            "the secret is in {}",
            place.display()
        );
    }
    // Captures were written, so they were looked at.
    assert!(walk(&dir.join("captures")).next().is_some());
}

/// Every file under `dir`.
fn walk(dir: &std::path::Path) -> impl Iterator<Item = std::path::PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            match p.is_dir() {
                true => todo.push(p),
                false => out.push(p),
            }
        }
    }
    out.into_iter()
}

/// `replay` calls nothing unless given `--live-http`: without it the step
/// fails and says which request to mock; with it, the stand-in answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_calls_the_network_only_with_live_http() {
    let port = stand_in().await;
    let dir = temp_dir("live-http");
    std::fs::write(dir.join("flow.yaml"), flow(port)).unwrap();
    let replay = |live: bool| {
        let args = if live {
            vec!["replay", "flow.yaml", "--live-http"]
        } else {
            vec!["replay", "flow.yaml"]
        };
        let dir = dir.clone();
        async move {
            let ran = run_flowbot(
                &dir,
                &args,
                &[("FLOWBOT_SECRET_SHOP_TOKEN", TOKEN)],
                b"{\"conversation\":\"c\",\"text\":\"order\"}\n",
            )
            .await;
            (ran.stdout, ran.stderr)
        }
    };
    let (out, err) = replay(false).await;
    assert_eq!(
        out, "{\"conversation\":\"c\",\"text\":\"failed 0\"}\n",
        "{err}"
    );
    assert!(err.contains("give the request `shop` a mock"), "{err}");
    let (out, err) = replay(true).await;
    assert_eq!(
        out, "{\"conversation\":\"c\",\"text\":\"ok shipped\"}\n",
        "{err}"
    );
}
