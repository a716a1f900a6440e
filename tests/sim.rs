//! The embedded Qpien simulator: its schema is the client's, the client works
//! against it, and the bot runs the support scenario through it end to end
//! (webhooks, polling, and with faults injected).

use std::net::SocketAddr;
use std::time::Duration;

use flowbot::internals::qpien::{QpienClient, QpienConfig, QpienError, RetryConfig, Secret};
use flowbot::internals::sim::{self, CustomerInput, Faults, RunningSim, SimConfig};
use flowbot::Config;
use flowbot::Running;
use serde_json::Value;

use crate::runtime::{temp_dir, wait_until};

fn local() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn sim_config() -> SimConfig {
    SimConfig {
        listen: local(),
        ..SimConfig::default()
    }
}

fn client_for(sim: &RunningSim) -> QpienClient {
    let d = SimConfig::default();
    QpienClient::new(QpienConfig {
        endpoint: sim.graphql_url(),
        client_id: Secret::new(d.client_id),
        client_secret: Secret::new(d.client_secret),
        retry: RetryConfig {
            max_attempts: 8,
            min_delay: Duration::from_millis(5),
            max_delay: Duration::from_millis(50),
        },
        ..QpienConfig::default()
    })
    .unwrap()
}

#[test]
fn the_simulator_serves_exactly_the_clients_schema() {
    use flowbot::internals::qpien::doctor::schema_diff;
    use flowbot::internals::qpien::{dialect, Dialect};
    for d in [Dialect::Documented, Dialect::External] {
        let served = sim::sdl(d).unwrap();
        let ours = dialect::schema(d);
        assert_eq!(schema_diff(ours, &served), Vec::<String>::new(), "{d:?}");
        assert_eq!(schema_diff(&served, ours), Vec::<String>::new(), "{d:?}");
    }
    // And the comparison is not vacuous.
    let fewer = dialect::schema(Dialect::Documented).replace("  frontMsgId: String\n", "");
    assert!(!schema_diff(dialect::schema(Dialect::Documented), &fewer).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_works_against_the_simulator() {
    let sim = sim::start(sim_config()).await.unwrap();
    let client = client_for(&sim);
    let conv = sim
        .state()
        .create_conversation("livechat", Some("en"), "Ada Lovelace");
    sim.state().customer_message(
        &conv,
        &CustomerInput {
            text: "hi".into(),
            ..Default::default()
        },
    );
    let page = client.get_message_list(&conv, 1, 10).await.unwrap();
    assert_eq!(page.docs.len(), 1);
    let incoming = flowbot::internals::qpien::to_incoming(&page.docs[0]);
    assert_eq!(
        (incoming.text.as_str(), incoming.channel),
        ("hi", flowbot::Channel::LiveChat)
    );
    assert_eq!(incoming.contact.first_name.as_deref(), Some("Ada"));
    let plan = flowbot::internals::qpien::plan_replies(
        client.config(),
        &conv,
        flowbot::Channel::LiveChat,
        "m1",
        &[flowbot::Outgoing::text("hello")],
    );
    client.send_all(&plan).await.unwrap();
    client.send_all(&plan).await.unwrap(); // a resend: recognised by frontMsgId
    assert_eq!(sim.state().bot_messages(&conv).len(), 1);
    assert_eq!(sim.state().stats().duplicate_creates, 1);
    let list = client.get_conversation_list(1, 10, None).await.unwrap();
    assert_eq!(list.docs[0].id.as_deref(), Some(conv.as_str()));
    client.handoff(&conv).await.unwrap();
    assert_eq!(
        sim.state().conversation(&conv).unwrap()["conversation"]["status"],
        "PENDING"
    );
    assert_eq!(client.connected_platforms().await.unwrap().len(), 4);
    // WhatsApp's own mutation is refused in another channel.
    let mut wa = plan[0].clone();
    wa.operation = flowbot::internals::qpien::Operation::CreateMessageByWhatsapp;
    wa.input.front_msg_id = "other".into();
    assert_eq!(
        client.send(&wa).await.unwrap_err().code(),
        Some("BAD_USER_INPUT")
    );

    // Its errors are Qpien's.
    let wrong = QpienClient::new(QpienConfig {
        client_secret: Secret::new("nope"),
        ..client.config().clone()
    })
    .unwrap();
    assert!(matches!(
        wrong.check_token().await,
        Err(QpienError::InvalidClient(_))
    ));
    sim.state()
        .configure(|c| c.scopes.retain(|s| s != "write_conversations"));
    assert_eq!(
        client.release(&conv).await.unwrap_err(),
        QpienError::InsufficientScopes {
            operation: "updateConversation",
            required: "write_conversations".into()
        }
    );
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_simulator_limits_rates_and_expires_tokens() {
    let sim = sim::start(SimConfig {
        rate_limit: None,
        token_real_lifetime: Some(Duration::from_millis(300)),
        ..sim_config()
    })
    .await
    .unwrap();
    let client = client_for(&sim);
    let conv = sim.state().create_conversation("whatsapp", None, "Bo");
    for i in 0..3 {
        client.get_conversation(&conv).await.unwrap();
        if i == 1 {
            tokio::time::sleep(Duration::from_millis(400)).await;
        }
    }
    let stats = sim.state().stats();
    assert!(
        stats.tokens >= 2,
        "the early-expired token was renewed: {stats:?}"
    );
    sim.state().configure(|c| {
        c.rate_limit = Some((4, Duration::from_secs(1)));
        c.token_real_lifetime = None;
    });
    // Over the limit: the headers keep the client at 4 a second, no 429.
    for _ in 0..6 {
        client.get_conversation(&conv).await.unwrap();
    }
    assert_eq!(sim.state().stats().rate_limited, 0);
    // A raw burst over the limit gets 429s with the headers.
    let http = reqwest::Client::new();
    let mut limited = 0;
    for _ in 0..6 {
        let r = http
            .post(sim.graphql_url())
            .body("{}")
            .send()
            .await
            .unwrap();
        if r.status().as_u16() == 429 {
            assert!(r.headers().get("x-ratelimit-reset").is_some());
            limited += 1;
        }
    }
    assert!(limited >= 2, "{limited}");
    sim.shutdown().await;
}

/// The support scenario's customer side, and the bot's answer to each step.
fn scenario() -> Vec<(CustomerInput, &'static str)> {
    let t = |s: &str| CustomerInput {
        text: s.into(),
        ..Default::default()
    };
    let b = |id: &str, title: &str| CustomerInput {
        text: title.into(),
        button: Some(id.into()),
        ..Default::default()
    };
    let l = |id: &str, title: &str| CustomerInput {
        text: title.into(),
        list: Some(id.into()),
        ..Default::default()
    };
    vec![
        (t("hello"), "Hi! How can we help?"),
        (b("orders", "My orders"), "Your order number? (6 digits)"),
        (t("12"), "That doesn't look like an order number."),
        (t("123456"), "Order 123456 is shipped.\n\nWhat next?"),
        (
            l("track", "Track"),
            "Tracking link: https://t.example/123456",
        ),
        (t("hi again"), "Hi! How can we help?"),
        (b("orders", "My orders"), "Your order number? (6 digits)"),
        (t("222222"), "Order 222222 is shipped.\n\nWhat next?"),
        (l("return", "Return it"), "Why are you returning it?"),
        (t("too big"), "Confirm return of 222222?"),
        (b("yes", "Yes"), "Return booked."),
    ]
}

fn contents(sim: &RunningSim, conv: &str) -> Vec<String> {
    sim.state()
        .bot_messages(conv)
        .iter()
        .map(|m| m["content"].as_str().unwrap_or("").to_owned())
        .collect()
}

/// Runs the scenario in `conversations` conversations at once, each step
/// waiting for the bot's answer like a customer would.
async fn play(sim: &RunningSim, conversations: usize) -> Vec<String> {
    let ids: Vec<String> = (0..conversations)
        .map(|i| {
            sim.state()
                .create_conversation("whatsapp", Some("en"), &format!("Customer {i}"))
        })
        .collect();
    for (step, (input, _)) in scenario().into_iter().enumerate() {
        for id in &ids {
            sim.state().customer_message(id, &input).unwrap();
        }
        for id in &ids {
            wait_until(
                &format!("step {step} in {id}"),
                Duration::from_secs(20),
                || sim.state().bot_messages(id).len() > step,
            )
            .await;
        }
    }
    let expected: Vec<String> = scenario().into_iter().map(|(_, r)| r.to_owned()).collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    for id in &ids {
        assert_eq!(contents(sim, id), expected, "conversation {id}");
    }
    ids
}

async fn bot_for(sim: &RunningSim, name: &str, tweak: impl FnOnce(&mut Config)) -> Running {
    let dir = temp_dir(name);
    let d = SimConfig::default();
    let mut c = Config {
        flow: "flows/support.yaml".into(),
        ..Config::default()
    };
    c.qpien.endpoint = sim.graphql_url();
    c.qpien.client_id = Secret::new(d.client_id);
    c.qpien.client_secret = Secret::new(d.client_secret.clone());
    c.qpien.retry = RetryConfig {
        max_attempts: 10,
        min_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(100),
    };
    c.server.listen = local();
    c.server.webhook_secret = Secret::new(sim.state().config().webhook_secret);
    c.store.path = dir.join("flowbot.db");
    c.handoff.check_interval = Duration::ZERO;
    tweak(&mut c);
    let bot = flowbot::start(c, crate::support_bot::registry())
        .await
        .unwrap();
    let url = format!("http://{}/webhook", bot.addr());
    if sim.state().config().webhook_url.is_none() && !name.contains("poll") {
        sim.state().configure(|s| s.webhook_url = Some(url));
    }
    bot
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_support_scenario_through_webhooks() {
    let sim = sim::start(sim_config()).await.unwrap();
    let bot = bot_for(&sim, "sim-webhook", |_| {}).await;
    let ids = play(&sim, 1).await;
    let first = &sim.state().bot_messages(&ids[0])[0];
    assert_eq!(first["flowBotQuickReply"][1]["id"], "billing");
    bot.shutdown().await;
    sim.shutdown().await;
}

/// The same scenario when the account speaks the external dialect
/// (`externalCreateMessage`, envelopes, the token sent bare): the bot is told
/// `qpien.dialect = "external"` and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_support_scenario_in_the_external_dialect() {
    use flowbot::internals::qpien::{AuthScheme, Dialect};
    let sim = sim::start(SimConfig {
        dialect: Dialect::External,
        auth: Some(AuthScheme::Bare),
        ..sim_config()
    })
    .await
    .unwrap();
    let bot = bot_for(&sim, "sim-external", |c| {
        c.qpien.dialect = Dialect::External
    })
    .await;
    let ids = play(&sim, 1).await;
    let first = &sim.state().bot_messages(&ids[0])[0];
    assert_eq!(first["flowBotQuickReply"][1]["id"], "billing");
    let ops: std::collections::BTreeSet<String> = sim
        .state()
        .requests()
        .into_iter()
        .map(|r| r.operation)
        .collect();
    assert!(ops.contains("createMessage"), "{ops:?}");
    assert!(sim
        .state()
        .requests()
        .iter()
        .filter(|r| r.operation != "generateOAuthToken")
        .all(|r| r
            .authorization
            .as_deref()
            .is_some_and(|a| !a.starts_with("Bearer "))));
    bot.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_support_scenario_through_polling() {
    // A generous budget: polling keeps to half of it, and this test is about
    // correctness, not about waiting for Qpien's 100 calls a minute.
    let sim = sim::start(SimConfig {
        rate_limit: None,
        ..sim_config()
    })
    .await
    .unwrap();
    let bot = bot_for(&sim, "sim-poll", |c| {
        c.qpien.rate_limit.requests = 6_000;
        c.server.webhook = false;
        c.polling.enabled = true;
        c.polling.interval = Duration::from_millis(100);
        c.polling.max_interval = Duration::from_millis(300);
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await; // polling has started
    play(&sim, 1).await;
    bot.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_support_scenario_with_faults_injected() {
    let sim = sim::start(SimConfig {
        token_real_lifetime: Some(Duration::from_millis(150)),
        rate_limit: None,
        faults: Faults {
            server_errors: 0.2,
            slow: 0.1,
            slow_delay: Duration::from_millis(150),
            duplicate_webhooks: 0.3,
            seed: 42,
        },
        webhook_retry_delay: Duration::from_millis(50),
        ..sim_config()
    })
    .await
    .unwrap();
    let bot = bot_for(&sim, "sim-faults", |c| {
        c.qpien.rate_limit.requests = 10_000;
        c.qpien.rate_limit.per = Duration::from_secs(1);
    })
    .await;
    play(&sim, 3).await;
    let stats = sim.state().stats();
    assert!(stats.injected_errors > 0 && stats.tokens >= 2, "{stats:?}");
    assert_eq!(stats.created, 33, "{stats:?}");
    let metrics: String = reqwest::get(format!("http://{}/metrics", bot.addr()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let dedup: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("flowbot_dedup_hits_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    assert!(
        dedup > 0.0,
        "duplicate webhooks were injected and recognised"
    );
    bot.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_in_the_simulator_silences_the_bot_until_leaving() {
    let sim = sim::start(sim_config()).await.unwrap();
    let bot = bot_for(&sim, "sim-agent", |_| {}).await;
    let conv = sim.state().create_conversation("livechat", None, "Cy");
    let say = |t: &str| CustomerInput {
        text: t.into(),
        ..Default::default()
    };
    sim.state().customer_message(&conv, &say("hello"));
    wait_until("the greeting", Duration::from_secs(5), || {
        sim.state().bot_messages(&conv).len() == 1
    })
    .await;
    sim.state().agent_join(&conv);
    sim.state().agent_message(&conv, "Hi, I am Alex");
    sim.state().customer_message(&conv, &say("hello again"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        sim.state().bot_messages(&conv).len(),
        1,
        "silent while the agent is there"
    );
    sim.state().agent_leave(&conv);
    sim.state().customer_message(&conv, &say("back to the bot"));
    wait_until("the bot again", Duration::from_secs(5), || {
        sim.state().bot_messages(&conv).len() == 2
    })
    .await;
    let debug = reqwest::get(format!("http://{}/debug/conversations/{conv}", bot.addr()))
        .await
        .unwrap();
    assert_eq!(
        debug.status().as_u16(),
        404,
        "debug endpoints are off unless asked for"
    );
    bot.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_wires_everything_and_serves_the_playground() {
    let demo = flowbot::internals::cli::Demo::start(
        std::path::Path::new("flows/support.yaml"),
        local(),
        crate::support_bot::registry(),
    )
    .await
    .unwrap();
    let page = reqwest::get(demo.sim.url())
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("flowbot playground"));
    // A favicon inline (no request that would 404), and an avatar drawn,
    // not an emoji a machine without emoji fonts shows as a box.
    assert!(page.contains(r#"<link rel="icon" href="data:image/svg+xml"#));
    assert!(
        page.chars().all(|c| (c as u32) < 0x1F000),
        "no emoji in the page"
    );
    let js = reqwest::get(format!("{}vendor/mermaid.min.js", demo.sim.url()))
        .await
        .unwrap();
    assert_eq!(js.status().as_u16(), 200);
    assert!(
        js.text().await.unwrap().len() > 1_000_000,
        "Mermaid is bundled"
    );
    let conv = demo
        .sim
        .state()
        .create_conversation("whatsapp", Some("en"), "Di");
    demo.sim.state().customer_message(
        &conv,
        &CustomerInput {
            text: "hello".into(),
            ..Default::default()
        },
    );
    wait_until("the greeting", Duration::from_secs(5), || {
        demo.sim.state().bot_messages(&conv).len() == 1
    })
    .await;
    let bot = format!("http://{}", demo.bot.addr());
    let state: Value = reqwest::get(format!("{bot}/debug/conversations/{conv}"))
        .await
        .unwrap()
        .text()
        .await
        .map(|t| serde_json::from_str(&t).unwrap())
        .unwrap();
    assert_eq!(state["state"], "start");
    assert_eq!(state["node"], "s0");
    // A WhatsApp conversation: the window closes 24 hours after the customer wrote.
    let left = state["window_closes"].as_i64().unwrap() - state["now"].as_i64().unwrap();
    assert!(
        left > 23 * 3600 * 1000 && left <= 24 * 3600 * 1000,
        "{state}"
    );
    let flow: Value = reqwest::get(format!("{bot}/debug/flow"))
        .await
        .unwrap()
        .text()
        .await
        .map(|t| serde_json::from_str(&t).unwrap())
        .unwrap();
    let whole = flow["mermaid"].as_str().unwrap();
    assert!(whole.starts_with("flowchart"));
    // Around one state: it and its neighbours only.
    let around: Value = reqwest::get(format!("{bot}/debug/flow/around/ask_order"))
        .await
        .unwrap()
        .text()
        .await
        .map(|t| serde_json::from_str::<Value>(&t).unwrap())
        .unwrap();
    let around = around["mermaid"].as_str().unwrap();
    let nodes = |m: &str| {
        m.lines()
            .filter(|l| l.contains("[\"") || l.contains("((\""))
            .count()
    };
    assert!(
        nodes(around) >= 2 && nodes(around) < nodes(whole),
        "{around}"
    );
    assert!(
        around.contains("\"lookup\"") && !around.contains("\"confirm_return\""),
        "{around}"
    );
    let missing = reqwest::get(format!("{bot}/debug/flow/around/nowhere"))
        .await
        .unwrap();
    assert_eq!(missing.status().as_u16(), 404);

    // The demo's clock moves forward on request: a day on, the window is shut.
    let http = reqwest::Client::new();
    let moved = http
        .post(format!("{bot}/debug/clock"))
        .body(r#"{"advance": "1day 1h"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(moved.status().as_u16(), 200);
    let state: Value = reqwest::get(format!("{bot}/debug/conversations/{conv}"))
        .await
        .unwrap()
        .text()
        .await
        .map(|t| serde_json::from_str::<Value>(&t).unwrap())
        .unwrap();
    assert!(
        state["now"].as_i64().unwrap() > state["window_closes"].as_i64().unwrap(),
        "{state}"
    );
    for (body, why) in [
        (r#"{"advance": "soon"}"#, "is not a duration"),
        (r#"{"advance": "400days"}"#, "at most a year"),
        ("[]", "the body must be"),
    ] {
        let refused = http
            .post(format!("{bot}/debug/clock"))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status().as_u16(), 400, "{body}");
        let text = refused.text().await.unwrap();
        assert!(text.contains(why), "{body}: {text}");
    }
    demo.shutdown().await;
}

/// Webhooks are signed over the exact body and retried with growing delays
/// until the receiver answers 200; deliveries keep their order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_are_signed_and_retried_with_backoff() {
    use axum::body::Bytes;
    use axum::http::{HeaderMap, StatusCode};
    use std::sync::{Arc, Mutex};
    type Log = Arc<Mutex<Vec<(tokio::time::Instant, bool, Value)>>>;
    let log: Log = Arc::default();
    let receiver = {
        let log = log.clone();
        axum::Router::new().route(
            "/webhook",
            axum::routing::post(move |headers: HeaderMap, body: Bytes| {
                let log = log.clone();
                async move {
                    let sig = headers
                        .get("x-qpien-signature")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_owned();
                    let valid =
                        flowbot::internals::qpien::webhook::verify(b"hook-secret", &body, &sig);
                    let v: Value = serde_json::from_slice(&body).unwrap();
                    let mut log = log.lock().unwrap();
                    log.push((tokio::time::Instant::now(), valid, v));
                    // The first three attempts fail.
                    if log.len() <= 3 {
                        StatusCode::SERVICE_UNAVAILABLE
                    } else {
                        StatusCode::OK
                    }
                }
            }),
        )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/webhook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, receiver).await.unwrap() });
    let sim = sim::start(SimConfig {
        webhook_url: Some(url),
        webhook_secret: "hook-secret".into(),
        webhook_retry_delay: Duration::from_millis(40),
        ..sim_config()
    })
    .await
    .unwrap();
    let conv = sim.state().create_conversation("whatsapp", None, "Eve");
    for t in ["one", "two"] {
        sim.state().customer_message(
            &conv,
            &CustomerInput {
                text: t.into(),
                ..Default::default()
            },
        );
    }
    wait_until("both deliveries", Duration::from_secs(5), || {
        sim.state().stats().webhooks_delivered == 2
    })
    .await;
    let log = log.lock().unwrap().clone();
    assert_eq!(log.len(), 5, "3 failures, then 'one', then 'two'");
    assert!(
        log.iter().all(|(_, valid, _)| *valid),
        "every delivery is signed"
    );
    let texts: Vec<&str> = log
        .iter()
        .map(|(_, _, v)| v["data"]["content"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["one", "one", "one", "one", "two"]);
    assert_eq!(log[0].2["event"], "NEW_INCOMING_MESSAGE");
    let gaps: Vec<Duration> = log.windows(2).take(3).map(|w| w[1].0 - w[0].0).collect();
    assert!(
        gaps[0] >= Duration::from_millis(40)
            && gaps[1] >= Duration::from_millis(80)
            && gaps[2] >= Duration::from_millis(160),
        "{gaps:?}"
    );
    assert_eq!(sim.state().stats().webhook_failures, 3);
    sim.shutdown().await;
}
