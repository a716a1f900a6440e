//! The LLM classifier end to end: a real `flowbot run` with `[nlu.llm]`
//! asking a local stand-in for an OpenAI-compatible endpoint, and the
//! classifier's budget, breaker, cache, timeout and retry against it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use flowbot::{Classifier, ClassifyError, ClassifyInput, IntentInfo, LlmClassifier, LlmConfig};
use serde_json::{json, Value};

use crate::crash::{post, spawn_with};
use crate::qpien::start_sim;
use crate::replay::run_flowbot;
use crate::runtime::{message, replies, temp_dir, wait_until};

const KEY: &str = "sk-test-3c1f";

/// What the stand-in saw: each request's customer text and system prompt.
#[derive(Default)]
struct Seen {
    texts: Mutex<Vec<String>>,
    prompts: Mutex<Vec<String>>,
    unauthorized: AtomicUsize,
}

/// The stand-in: the customer's text says how to answer.
async fn stand_in() -> (u16, Arc<Seen>) {
    let seen = Arc::new(Seen::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let s = seen.clone();
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(
            move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let seen = s.clone();
                async move {
                    let auth = headers
                        .get(header::AUTHORIZATION)
                        .and_then(|v| v.to_str().ok());
                    if auth != Some(&format!("Bearer {KEY}")) {
                        seen.unauthorized.fetch_add(1, Ordering::SeqCst);
                        return StatusCode::UNAUTHORIZED.into_response();
                    }
                    let req: Value = serde_json::from_slice(&body).unwrap();
                    let text = req["messages"][1]["content"].as_str().unwrap().to_owned();
                    seen.prompts
                        .lock()
                        .unwrap()
                        .push(req["messages"][0]["content"].as_str().unwrap().into());
                    seen.texts.lock().unwrap().push(text.clone());
                    let content = if text.contains("parcel") {
                        r#"{"intent": "track_order", "confidence": 0.92}"#
                    } else if text.contains("refund") {
                        r#"{"intent": "refund", "confidence": 0.99}"#
                    } else if text.contains("slow") {
                        tokio::time::sleep(Duration::from_millis(1500)).await;
                        r#"{"intent": "track_order", "confidence": 0.9}"#
                    } else if text.contains("broken") {
                        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
                    } else {
                        r#"{"intent": null, "confidence": 0}"#
                    };
                    axum::Json(json!({
                        "choices": [{"message": {"role": "assistant", "content": content}}]
                    }))
                    .into_response()
                }
            },
        ),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (port, seen)
}

const FLOW: &str = r#"
nlu:
  intents:
    track_order: { title: Track my order, examples: ["where is my order", "track my order"] }
    human: { examples: ["talk to a person", "a human please"] }
intents:
  - { intent: track_order, goto: tracking }
  - { intent: human, goto: person }
states:
  start: { say: hi }
  tracking: { say: tracking }
  person: { say: a person }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flowbot_run_asks_the_llm_first_and_the_built_in_classifier_when_it_cannot() {
    let (port, seen) = stand_in().await;
    let qpien = start_sim(|c| c.auto_create_conversations = true).await;
    let dir = temp_dir("llm-run");
    std::fs::write(dir.join("flow.yaml"), FLOW).unwrap();
    std::fs::write(
        dir.join("flowbot.toml"),
        format!(
            "flow = \"flow.yaml\"\n[server]\nlisten = \"127.0.0.1:0\"\n\
             [nlu.llm]\nbase_url = \"http://127.0.0.1:{port}/v1\"\nmodel = \"test-model\"\n\
             key_env = \"TEST_LLM_KEY\"\ntimeout = \"1s\"\n"
        ),
    )
    .unwrap();
    let mut bot = spawn_with(&dir, &qpien, &[("RUST_LOG", "warn"), ("TEST_LLM_KEY", KEY)]);
    let http = reqwest::Client::new();
    let cases = [
        // The LLM knows.
        ("parcel", "where is my parcel", "tracking"),
        // It names an intent the flow does not have: not sure.
        ("refund", "I want a refund", "hi"),
        // It is too slow, twice: the built-in classifier answers.
        ("slow", "slow: talk to a person", "a person"),
    ];
    for (i, (conversation, text, _)) in cases.iter().enumerate() {
        assert!(
            post(
                &http,
                &bot.url,
                &message(&format!("m{i}"), conversation, text)
            )
            .await
        );
    }
    let answered =
        |cases: &[(&str, &str, &str)]| cases.iter().all(|(c, _, _)| !replies(&qpien, c).is_empty());
    wait_until("every answer", Duration::from_secs(20), || answered(&cases)).await;
    // The same words again: from the cache.
    assert!(
        post(
            &http,
            &bot.url,
            &message("m9", "again", "Where is my PARCEL")
        )
        .await
    );
    wait_until("the cached answer", Duration::from_secs(20), || {
        answered(&[("again", "", "")])
    })
    .await;
    for (conversation, _, want) in cases {
        assert_eq!(replies(&qpien, conversation), [want], "{conversation}");
    }
    assert_eq!(replies(&qpien, "again"), ["tracking"]);
    let texts = seen.texts.lock().unwrap().clone();
    assert_eq!(
        texts.iter().filter(|t| t.contains("slow")).count(),
        2,
        "one retry after a timeout: {texts:?}"
    );
    assert_eq!(
        texts.iter().filter(|t| t.contains("parcel")).count(),
        1,
        "{texts:?}"
    );
    assert_eq!(seen.unauthorized.load(Ordering::SeqCst), 0);
    let prompt = seen.prompts.lock().unwrap()[0].clone();
    assert!(prompt.contains("track_order: Track my order"), "{prompt}");
    assert!(prompt.contains("where is my order"), "{prompt}");
    let metrics = http
        .get(format!("{}/metrics", bot.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        r#"flowbot_classify_total{classifier="llm",result="intent"} 1"#,
        r#"flowbot_classify_total{classifier="llm",result="invalid"} 1"#,
        r#"flowbot_classify_total{classifier="llm",result="timeout"} 1"#,
        r#"flowbot_classify_total{classifier="llm",result="cached"} 1"#,
        r#"flowbot_classify_total{classifier="builtin",result="intent"} 1"#,
        r#"flowbot_classify_seconds_count{classifier="llm"} 4"#,
    ] {
        assert!(metrics.contains(line), "no `{line}` in\n{metrics}");
    }
    let _ = bot.child.kill();
    let _ = bot.child.wait();
    let log = std::fs::read_to_string(dir.join("stderr.log")).unwrap();
    assert!(!log.contains(KEY), "the key is in the log");
}

/// A folder with the flow and a flowbot.toml whose `[nlu.llm]` is the
/// stand-in on `port`.
fn project(name: &str, port: u16) -> std::path::PathBuf {
    let dir = temp_dir(name);
    std::fs::write(dir.join("flow.yaml"), FLOW).unwrap();
    std::fs::write(
        dir.join("flowbot.toml"),
        format!(
            "flow = \"flow.yaml\"\n[nlu.llm]\nbase_url = \"http://127.0.0.1:{port}/v1\"\n\
             model = \"test-model\"\nkey_env = \"TEST_LLM_KEY\"\n"
        ),
    )
    .unwrap();
    dir
}

fn intents() -> Vec<IntentInfo> {
    let dir = temp_dir("llm-intents");
    std::fs::write(dir.join("flow.yaml"), FLOW).unwrap();
    let bot = flowbot::Bot::load(dir.join("flow.yaml"), flowbot::Registry::new()).unwrap();
    bot.flow().nlu.as_ref().unwrap().intents.clone()
}

fn classifier(port: u16, f: impl FnOnce(&mut LlmConfig)) -> LlmClassifier {
    std::env::set_var("TEST_LLM_KEY_UNIT", KEY);
    let mut c = LlmConfig {
        base_url: format!("http://127.0.0.1:{port}/v1"),
        key_env: "TEST_LLM_KEY_UNIT".into(),
        timeout: Duration::from_secs(1),
        ..LlmConfig::default()
    };
    f(&mut c);
    LlmClassifier::new(c).unwrap()
}

async fn ask(
    c: &LlmClassifier,
    intents: &[IntentInfo],
    text: &str,
) -> Result<Option<String>, ClassifyError> {
    let input = ClassifyInput::new(text, None, intents, 0.5);
    c.classify(&input).await.map(|v| v.intent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_budget_and_the_breaker_keep_calls_bounded() {
    let (port, seen) = stand_in().await;
    let intents = intents();
    // Two calls a minute: the third new text is over budget; a cached one
    // is not a call.
    let c = classifier(port, |c| c.calls_per_minute = 2);
    assert_eq!(
        ask(&c, &intents, "parcel 1").await,
        Ok(Some("track_order".into()))
    );
    assert_eq!(ask(&c, &intents, "nothing").await, Ok(None));
    assert_eq!(
        ask(&c, &intents, "parcel 1").await,
        Ok(Some("track_order".into()))
    );
    assert_eq!(
        ask(&c, &intents, "parcel 2").await,
        Err(ClassifyError::OverBudget)
    );
    assert_eq!(seen.texts.lock().unwrap().len(), 2);
    // Two failures in a row open the circuit: the next call is not made.
    let c = classifier(port, |c| {
        c.failures_to_open = 2;
        c.retries = 0;
        c.open_for = Duration::from_millis(300);
    });
    let before = seen.texts.lock().unwrap().len();
    for i in 0..2 {
        assert!(matches!(
            ask(&c, &intents, &format!("broken {i}")).await,
            Err(ClassifyError::Failed(_))
        ));
    }
    assert_eq!(
        ask(&c, &intents, "parcel 3").await,
        Err(ClassifyError::CircuitOpen)
    );
    assert_eq!(seen.texts.lock().unwrap().len(), before + 2);
    // After its rest, one call tries again, and a success closes it.
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(
        ask(&c, &intents, "parcel 3").await,
        Ok(Some("track_order".into()))
    );
    assert_eq!(
        ask(&c, &intents, "parcel 4").await,
        Ok(Some("track_order".into()))
    );
    // A wrong key: the endpoint refuses, nothing retried.
    std::env::set_var("TEST_LLM_KEY_WRONG", "nope");
    let c = classifier(port, |c| c.key_env = "TEST_LLM_KEY_WRONG".into());
    assert!(matches!(
        ask(&c, &intents, "parcel 5").await,
        Err(ClassifyError::Failed(e)) if e.contains("401")
    ));
    assert_eq!(seen.unauthorized.load(Ordering::SeqCst), 1);
}

/// `chat` asks the LLM only with `--live-llm`, and shows how each message
/// was understood.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_asks_the_llm_only_with_live_llm_and_shows_the_intent() {
    let (port, seen) = stand_in().await;
    let dir = project("llm-chat", port);
    let chat = |live: bool| {
        let args = if live {
            vec!["chat", "flow.yaml", "--live-llm"]
        } else {
            vec!["chat", "flow.yaml"]
        };
        let dir = dir.clone();
        async move {
            let ran = run_flowbot(
                &dir,
                &args,
                &[("TEST_LLM_KEY", KEY)],
                b"hello\nwhere is my parcel\n/quit\n",
            )
            .await;
            ran.stdout + &ran.stderr
        }
    };
    let out = chat(false).await;
    assert!(!out.contains("· llm"), "{out}");
    assert!(seen.texts.lock().unwrap().is_empty());
    let out = chat(true).await;
    assert!(out.contains("(intent: track_order 0.92 · llm)"), "{out}");
    assert!(out.contains("bot> tracking"), "{out}");
    assert_eq!(
        seen.texts.lock().unwrap().len(),
        2,
        "hello, then the parcel"
    );
}

/// `replay` asks the LLM only with `--live-llm`; its JSON lines stay as
/// they are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_asks_the_llm_only_with_live_llm() {
    let (port, seen) = stand_in().await;
    let dir = project("llm-replay", port);
    let replay = |live: bool| {
        let args = if live {
            vec!["replay", "flow.yaml", "--live-llm"]
        } else {
            vec!["replay", "flow.yaml"]
        };
        let dir = dir.clone();
        async move {
            let ran = run_flowbot(
                &dir,
                &args,
                &[("TEST_LLM_KEY", KEY)],
                b"{\"conversation\":\"c\",\"text\":\"parcel?\"}\n",
            )
            .await;
            ran.stdout
        }
    };
    // The flow's own examples do not know the word.
    assert_eq!(
        replay(false).await,
        "{\"conversation\":\"c\",\"text\":\"hi\"}\n"
    );
    assert!(seen.texts.lock().unwrap().is_empty());
    assert_eq!(
        replay(true).await,
        "{\"conversation\":\"c\",\"text\":\"tracking\"}\n"
    );
    assert_eq!(seen.texts.lock().unwrap().len(), 1);
}
