//! The Qpien client against the simulator (the one Qpien double, real HTTP on
//! loopback), and the schema/documents checks.

use std::time::Duration;

use flowbot::internals::qpien::types::ExternalMessage;
use flowbot::internals::qpien::{
    dialect, plan_replies, AuthScheme, BatchConfig, Dialect, Intake, Operation, QpienClient,
    QpienConfig, QpienError, RateLimitConfig, RetryConfig, Secret, SenderKind,
};
use flowbot::internals::sim::{self, ResetFormat, RunningSim, SimConfig};
use flowbot::{
    ButtonKind, Channel, Choice, InfoButton, ListMessage, ListSection, Media, MediaKind, Outgoing,
};
use serde_json::{json, Value};
use tokio::time::Instant;

/// A simulator on a free port, no rate limit, no webhooks, the test key.
pub(crate) async fn start_sim(f: impl FnOnce(&mut SimConfig)) -> RunningSim {
    let mut c = SimConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        client_id: "id-1".into(),
        client_secret: "secret-1".into(),
        rate_limit: None,
        ..SimConfig::default()
    };
    f(&mut c);
    sim::start(c).await.unwrap()
}

fn token_calls(sim: &RunningSim) -> usize {
    sim.state()
        .requests()
        .iter()
        .filter(|r| r.operation == "generateOAuthToken")
        .count()
}

fn config(sim: &RunningSim) -> QpienConfig {
    QpienConfig {
        endpoint: sim.graphql_url(),
        dialect: sim.state().config().dialect,
        client_id: Secret::new("id-1"),
        client_secret: Secret::new("secret-1"),
        request_timeout: Duration::from_secs(5),
        rate_limit: RateLimitConfig {
            requests: 10_000,
            per: Duration::from_secs(1),
            default_reset: Duration::from_secs(1),
        },
        retry: RetryConfig {
            max_attempts: 5,
            min_delay: Duration::from_millis(5),
            max_delay: Duration::from_millis(40),
        },
        ..QpienConfig::default()
    }
}

fn client(sim: &RunningSim) -> QpienClient {
    QpienClient::new(config(sim)).unwrap()
}

fn text_turn(
    conversation: &str,
    cause: &str,
    n: usize,
) -> Vec<flowbot::internals::qpien::OutboundMessage> {
    let messages: Vec<Outgoing> = (0..n)
        .map(|i| Outgoing::text(format!("{cause} #{i}")))
        .collect();
    plan_replies(
        &QpienConfig::default(),
        conversation,
        Channel::LiveChat,
        cause,
        &messages,
    )
}

#[test]
fn every_document_is_valid_against_its_dialects_schema() {
    use apollo_compiler::{ExecutableDocument, Schema};
    for d in [Dialect::Documented, Dialect::External] {
        let schema = Schema::parse_and_validate(dialect::schema(d), "schema.graphql")
            .unwrap_or_else(|e| panic!("the {d:?} schema is invalid:\n{}", e.errors));
        for op in Operation::ALL {
            let path = format!("{d:?}/{}.graphql", op.name());
            let doc = ExecutableDocument::parse_and_validate(&schema, op.embedded_in(d), &path)
                .unwrap_or_else(|e| panic!("{path} is invalid:\n{}", e.errors));
            let operation = doc.operations.iter().next().expect("one operation");
            let root = operation
                .selection_set
                .fields()
                .next()
                .expect("a root field");
            assert_eq!(root.name.as_str(), op.root_field(d), "{path}: root field");
        }
    }
}

#[test]
fn a_typo_in_a_document_is_caught() {
    use apollo_compiler::{ExecutableDocument, Schema};
    let schema = Schema::parse_and_validate(dialect::schema(Dialect::Documented), "s").unwrap();
    let typo = Operation::CreateMessage
        .embedded()
        .replace("frontMsgId", "frontMessageId");
    assert!(ExecutableDocument::parse_and_validate(&schema, typo, "typo.graphql").is_err());
    // Ids are scalars now: selecting into one is refused, as a real server would.
    let sub = Operation::GetConversation
        .embedded()
        .replace("    joinedCPerson\n", "    joinedCPerson { _id }\n");
    assert!(ExecutableDocument::parse_and_validate(&schema, sub, "sub.graphql").is_err());
}

/// Every outgoing kind, sent through the client; the variables the simulator
/// received are the snapshot.
#[tokio::test]
async fn graphql_variables_for_each_message_kind() {
    let sim = start_sim(|_| {}).await;
    let client = client(&sim);
    let choice = |id: &str, title: &str| Choice {
        id: id.into(),
        title: title.into(),
        description: None,
    };
    let cases: Vec<(&str, Channel, Vec<Outgoing>)> = vec![
        ("text", Channel::LiveChat, vec![Outgoing::text("Hello!")]),
        (
            "quick_replies_with_folded_text",
            Channel::WhatsApp,
            vec![
                Outgoing::text("Welcome to Acme."),
                Outgoing {
                    text: "What can we do for you?".into(),
                    quick_replies: vec![choice("orders", "My orders"), choice("agent", "A person")],
                    ..Outgoing::default()
                },
            ],
        ),
        (
            "list",
            Channel::WhatsApp,
            vec![Outgoing {
                list: Some(ListMessage {
                    header: Some("Help".into()),
                    body: "Pick a topic".into(),
                    footer: Some("Acme".into()),
                    button: "Topics".into(),
                    sections: vec![ListSection {
                        title: Some("Orders".into()),
                        rows: vec![
                            Choice {
                                id: "track".into(),
                                title: "Track".into(),
                                description: Some("Where is my parcel".into()),
                            },
                            choice("return", "Return"),
                        ],
                    }],
                }),
                ..Outgoing::default()
            }],
        ),
        (
            "informative_buttons",
            Channel::Instagram,
            vec![Outgoing {
                text: "Reach us".into(),
                buttons: vec![
                    InfoButton {
                        kind: ButtonKind::Url,
                        title: "Website".into(),
                        value: "https://example.com".into(),
                    },
                    InfoButton {
                        kind: ButtonKind::Phone,
                        title: "Call".into(),
                        value: "+905551112233".into(),
                    },
                ],
                ..Outgoing::default()
            }],
        ),
        (
            "media",
            Channel::LiveChat,
            vec![Outgoing {
                media: Some(Media {
                    url: "https://example.com/invoice.pdf".into(),
                    kind: MediaKind::Document,
                    caption: Some("Your invoice".into()),
                }),
                ..Outgoing::default()
            }],
        ),
        (
            "email_turn_is_one_email",
            Channel::Email,
            vec![
                Outgoing::text("Thanks for writing."),
                Outgoing::text("1. Orders\n2. Returns"),
            ],
        ),
    ];
    let mut received = serde_json::Map::new();
    for (name, channel, messages) in cases {
        let conversation = format!("c-{name}");
        sim.state()
            .create_conversation_with_id(&conversation, channel.as_str(), None, "Ada");
        let planned = plan_replies(
            client.config(),
            &conversation,
            channel,
            &format!("in-{name}"),
            &messages,
        );
        let before = sim.state().requests().len();
        client.send_all(&planned).await.unwrap();
        let sent: Vec<Value> = sim.state().requests()[before..]
            .iter()
            .filter(|s| s.operation.starts_with("create"))
            .map(|s| json!({"operation": s.operation, "variables": s.variables}))
            .collect();
        received.insert(name.to_owned(), Value::Array(sent));
    }
    insta::assert_json_snapshot!("qpien_variables", received);
}

fn text_conversations(sim: &RunningSim, ids: impl IntoIterator<Item = String>) {
    for id in ids {
        sim.state()
            .create_conversation_with_id(&id, "livechat", None, "Ada");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_callers_share_one_token_request() {
    let sim = start_sim(|c| c.token_delay = Duration::from_millis(200)).await;
    text_conversations(&sim, (0..25).map(|i| format!("c{i}")));
    let client = client(&sim);
    let calls = (0..25).map(|i| {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .send(&text_turn(&format!("c{i}"), &format!("m{i}"), 1)[0])
                .await
                .unwrap()
        })
    });
    for call in calls {
        call.await.unwrap();
    }
    assert_eq!(token_calls(&sim), 1);
    assert_eq!(sim.state().created().len(), 25);
    let auths: std::collections::HashSet<Option<String>> = sim
        .state()
        .requests()
        .into_iter()
        .filter(|s| s.operation == "createMessage")
        .map(|s| s.authorization)
        .collect();
    assert_eq!(auths.len(), 1, "{auths:?}");
    assert!(auths
        .iter()
        .all(|a| a.as_deref().is_some_and(|a| a.starts_with("Bearer "))));
}

#[tokio::test]
async fn the_token_is_renewed_ahead_of_its_expiry() {
    let sim = start_sim(|c| c.token_lifetime = Duration::from_secs(1)).await;
    let client = QpienClient::new(QpienConfig {
        token_refresh_margin: Duration::from_millis(400),
        ..config(&sim)
    })
    .unwrap();
    client.get_conversation_list(1, 10, None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    client.get_conversation_list(1, 10, None).await.unwrap();
    assert_eq!(token_calls(&sim), 2);
    assert_eq!(client.stats().retries, 0, "no call was refused");
    assert_eq!(sim.state().count("getConversationList", 200), 2);
}

#[tokio::test]
async fn a_token_left_idle_is_dropped_and_fetched_again_when_needed() {
    let sim = start_sim(|_| {}).await;
    let client = client(&sim);
    assert!(!client.drop_idle_token(Duration::ZERO), "none yet");
    client.get_conversation_list(1, 10, None).await.unwrap();
    // Used just now: kept while calls take it.
    assert!(!client.drop_idle_token(Duration::from_secs(60)));
    client.get_conversation_list(1, 10, None).await.unwrap();
    assert_eq!(token_calls(&sim), 1);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(client.drop_idle_token(Duration::from_millis(40)));
    assert!(!client.drop_idle_token(Duration::ZERO), "dropped once");
    client.get_conversation_list(1, 10, None).await.unwrap();
    assert_eq!(token_calls(&sim), 2, "fetched again on the next call");
    assert_eq!(client.stats().token_refreshes, 2);
}

#[tokio::test]
async fn an_expired_token_is_renewed_once_and_the_call_retried() {
    let sim = start_sim(|c| c.token_real_lifetime = Some(Duration::from_millis(150))).await;
    text_conversations(&sim, ["c1".to_string()]);
    let client = client(&sim);
    client.send(&text_turn("c1", "a", 1)[0]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(250)).await;
    client.send(&text_turn("c1", "b", 1)[0]).await.unwrap();
    assert_eq!(token_calls(&sim), 2);
    assert_eq!(
        sim.state().count("createMessage", 200),
        3,
        "one refused, then retried"
    );
    assert_eq!(sim.state().created().len(), 2);
}

#[tokio::test]
async fn a_token_refused_twice_is_an_unauthorized_error() {
    let sim = start_sim(|_| {}).await;
    sim.state().reject_tokens(true);
    let err = client(&sim).get_conversation("c1").await.unwrap_err();
    assert!(
        matches!(err, QpienError::Unauthorized { ref code, .. } if code == "UNAUTHORIZED"),
        "{err:?}"
    );
    assert!(!err.is_retryable());
    assert_eq!(token_calls(&sim), 2);
}

#[tokio::test]
async fn a_wrong_api_key_is_invalid_client_and_not_retried() {
    for dialect in [Dialect::Documented, Dialect::External] {
        let sim = start_sim(|c| c.dialect = dialect).await;
        let client = QpienClient::new(QpienConfig {
            client_secret: Secret::new("wrong"),
            ..config(&sim)
        })
        .unwrap();
        let err = client.get_conversation("c1").await.unwrap_err();
        assert!(matches!(err, QpienError::InvalidClient(_)), "{err:?}");
        assert!(err.to_string().contains("client id and secret"), "{err}");
        assert_eq!(token_calls(&sim), 1);
        assert_eq!(sim.state().requests().len(), 1);
    }
}

#[tokio::test]
async fn a_missing_scope_is_named_and_the_token_dropped() {
    for dialect in [Dialect::Documented, Dialect::External] {
        let sim = start_sim(|c| {
            c.scopes = vec!["read_messages".into(), "read_conversations".into()];
            c.dialect = dialect;
        })
        .await;
        text_conversations(&sim, ["c1".to_string()]);
        let client = client(&sim);
        let err = client.send(&text_turn("c1", "m", 1)[0]).await.unwrap_err();
        assert_eq!(
            err,
            QpienError::InsufficientScopes {
                operation: "createMessage",
                required: "write_messages".into()
            }
        );
        assert!(err.to_string().contains("`write_messages`"), "{err}");
        assert_eq!(sim.state().count("createMessage", 200), 1, "not retried");
        // Old tokens do not gain new scopes (FACT): the next call gets a new one.
        sim.state()
            .configure(|c| c.scopes.push("write_messages".into()));
        client.send(&text_turn("c1", "m", 1)[0]).await.unwrap();
        assert_eq!(token_calls(&sim), 2, "{dialect:?}");
    }
}

/// Every error code, in GraphQL `errors` and in an envelope, maps to the right
/// error and retry decision.
#[tokio::test]
async fn every_error_code_maps_to_its_error() {
    for dialect in [Dialect::Documented, Dialect::External] {
        let sim = start_sim(|c| c.dialect = dialect).await;
        text_conversations(&sim, ["c1".to_string()]);
        let client = client(&sim);
        client.check_token().await.unwrap();
        // Transient codes are retried until the call succeeds.
        for code in ["INTERNAL_SERVER_ERROR", "SERVICE_UNAVAILABLE", "TIMEOUT"] {
            sim.state().inject([code, code]);
            let before = sim.state().created().len();
            client.send(&text_turn("c1", code, 1)[0]).await.unwrap();
            assert_eq!(sim.state().created().len(), before + 1, "{code}");
        }
        // Permanent codes fail at once.
        for code in ["BAD_USER_INPUT", "NOT_FOUND", "FORBIDDEN", "SOMETHING_NEW"] {
            sim.state().inject([code]);
            let before = sim.state().requests().len();
            let err = client.get_conversation("c1").await.unwrap_err();
            assert_eq!(err.code(), Some(code), "{err:?}");
            assert!(!err.is_retryable(), "{code}");
            assert!(matches!(err, QpienError::Api { .. }), "{err:?}");
            assert_eq!(
                sim.state().requests().len(),
                before + 1,
                "{code} was retried"
            );
        }
        // A duplicate is a success.
        sim.state().inject(["DUPLICATE_MESSAGE"]);
        let sent = client.send(&text_turn("c1", "dup", 1)[0]).await.unwrap();
        assert_eq!(sent.front_msg_id, "flowbot:dup:0");
        assert_eq!(client.stats().duplicates, 1);
    }
}

#[tokio::test]
async fn a_lost_answer_is_retried_without_duplicating_the_message() {
    let sim = start_sim(|_| {}).await;
    text_conversations(&sim, ["c1".to_string()]);
    let client = client(&sim);
    client.check_token().await.unwrap();
    sim.state().lose_next_creates(2);
    sim.state().fail_next(1);
    let sent = client.send_all(&text_turn("c1", "in-7", 2)).await.unwrap();
    assert_eq!(sent.len(), 2);
    let created = sim.state().created();
    assert_eq!(created.len(), 2, "{created:#?}");
    assert_eq!(created[0]["input"]["frontMsgId"], "flowbot:in-7:0");
    assert_eq!(created[1]["input"]["frontMsgId"], "flowbot:in-7:1");
    let failed = sim
        .state()
        .requests()
        .iter()
        .filter(|s| s.status == 500)
        .count();
    assert_eq!(failed, 3);
    // A restart that sends the same turn again creates nothing new.
    let restarted = QpienClient::new(config(&sim)).unwrap();
    restarted
        .send_all(&text_turn("c1", "in-7", 2))
        .await
        .unwrap();
    assert_eq!(sim.state().created().len(), 2);
    assert!(client.stats().retries >= 3);
}

/// Each request carries its bot's timeout (the HTTP client itself is shared
/// by the bots of a process and has none).
#[tokio::test]
async fn a_request_gives_up_after_the_configured_timeout() {
    let sim = start_sim(|_| {}).await;
    text_conversations(&sim, ["c1".to_string()]);
    let client = QpienClient::new(QpienConfig {
        request_timeout: Duration::from_millis(300),
        retry: RetryConfig {
            max_attempts: 1,
            ..config(&sim).retry
        },
        ..config(&sim)
    })
    .unwrap();
    client.check_token().await.unwrap();
    // The create is recorded; its answer is held back for 30 s.
    sim.state().hold_next_creates(1);
    let sent = tokio::time::timeout(
        Duration::from_secs(10),
        client.send_all(&text_turn("c1", "in-9", 1)),
    )
    .await
    .expect("the client gave up before the held answer came");
    match sent {
        Err((_, QpienError::Timeout { timeout, .. })) => {
            assert_eq!(timeout, Duration::from_millis(300))
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
}

/// No request goes over the server's limit when the client's budget matches it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_is_sent_over_the_limit() {
    let sim = start_sim(|c| {
        c.rate_limit = Some((6, Duration::from_millis(1000)));
        c.reset_format = ResetFormat::None;
    })
    .await;
    text_conversations(&sim, (0..4).map(|i| format!("c{i}")));
    let client = QpienClient::new(QpienConfig {
        rate_limit: RateLimitConfig {
            requests: 6,
            per: Duration::from_millis(1000),
            default_reset: Duration::from_secs(1),
        },
        // One reply a request: the budget is what is measured.
        batch: BatchConfig {
            max: 1,
            ..BatchConfig::default()
        },
        ..config(&sim)
    })
    .unwrap();
    let start = Instant::now();
    let tasks: Vec<_> = (0..4)
        .map(|c| {
            let client = client.clone();
            tokio::spawn(async move {
                client
                    .send_all(&text_turn(&format!("c{c}"), &format!("m{c}"), 3))
                    .await
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(sim.state().created().len(), 12);
    assert_eq!(sim.state().count("createMessage", 429), 0);
    assert_eq!(sim.state().count("generateOAuthToken", 429), 0);
    // 13 requests at 6 a second, 2 at once: more than 1.5 s.
    assert!(
        start.elapsed() >= Duration::from_millis(1500),
        "{:?}",
        start.elapsed()
    );
}

/// With a generous local budget, the server's `X-RateLimit-Remaining` and
/// `Reset` alone keep the client under the limit, whichever form the reset
/// takes.
#[tokio::test]
async fn the_rate_headers_are_obeyed_in_every_reset_form() {
    for format in [
        ResetFormat::Seconds,
        ResetFormat::UnixSeconds,
        ResetFormat::UnixMillis,
    ] {
        let sim = start_sim(|c| {
            c.rate_limit = Some((4, Duration::from_millis(1000)));
            c.reset_format = format;
        })
        .await;
        text_conversations(&sim, ["c1".to_string()]);
        let client = client(&sim);
        let start = Instant::now();
        client.send_all(&text_turn("c1", "m", 7)).await.unwrap();
        assert_eq!(sim.state().created().len(), 7);
        assert_eq!(sim.state().count("createMessage", 429), 0, "{format:?}");
        assert_eq!(client.stats().rate_limited, 0);
        // 8 requests at 4 a second: one wait for the reset, never a long one.
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "{format:?}: {:?}",
            start.elapsed()
        );
    }
}

/// Without the headers, a 429 stops every request until the reset, then the
/// messages go through, once each.
#[tokio::test]
async fn a_429_waits_for_the_reset() {
    let sim = start_sim(|c| {
        c.rate_limit = Some((3, Duration::from_millis(1000)));
        c.reset_format = ResetFormat::None;
    })
    .await;
    text_conversations(&sim, ["c1".to_string()]);
    let client = client(&sim);
    client.send_all(&text_turn("c1", "m", 5)).await.unwrap();
    assert_eq!(sim.state().created().len(), 5);
    let seen = sim.state().requests();
    let rejected: Vec<_> = seen.iter().filter(|s| s.status == 429).collect();
    assert_eq!(rejected.len(), 1, "one 429, then a wait for the reset");
    let after = seen.iter().find(|s| s.at > rejected[0].at).unwrap();
    assert!(after.at - rejected[0].at >= Duration::from_millis(900));
    assert_eq!(client.stats().rate_limited, 1);
}

/// Sends to one conversation stay in order; a burst in one conversation does
/// not hold the others back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_are_ordered_per_conversation_and_fair_across_them() {
    let sim = start_sim(|_| {}).await;
    text_conversations(&sim, ["busy".to_string(), "quiet".to_string()]);
    // A tight budget: five requests per half second.
    let client = QpienClient::new(QpienConfig {
        rate_limit: RateLimitConfig {
            requests: 5,
            per: Duration::from_millis(500),
            default_reset: Duration::from_secs(1),
        },
        ..config(&sim)
    })
    .unwrap();
    client.check_token().await.unwrap();
    let burst = {
        let client = client.clone();
        tokio::spawn(async move { client.send_all(&text_turn("busy", "b", 10)).await })
    };
    tokio::time::sleep(Duration::from_millis(120)).await;
    let quiet = {
        let client = client.clone();
        tokio::spawn(async move { client.send_all(&text_turn("quiet", "q", 1)).await })
    };
    // The same conversation from two tasks: the second waits for the first.
    let busy_again = {
        let client = client.clone();
        tokio::spawn(async move { client.send_all(&text_turn("busy", "b2", 2)).await })
    };
    burst.await.unwrap().unwrap();
    quiet.await.unwrap().unwrap();
    busy_again.await.unwrap().unwrap();
    let created = sim.state().created();
    let order: Vec<&str> = created
        .iter()
        .map(|c| c["input"]["frontMsgId"].as_str().unwrap())
        .collect();
    let quiet_at = order
        .iter()
        .position(|f| f.starts_with("flowbot:q:"))
        .unwrap();
    // Five a window: the busy conversation takes the first window; the quiet
    // one goes out in the second, not after the whole burst.
    assert!(
        quiet_at <= 8,
        "the quiet conversation waited behind the burst: {order:?}"
    );
    let busy: Vec<&str> = order
        .iter()
        .copied()
        .filter(|f| f.starts_with("flowbot:b"))
        .collect();
    let mut expected: Vec<String> = (0..10).map(|i| format!("flowbot:b:{i}")).collect();
    expected.extend((0..2).map(|i| format!("flowbot:b2:{i}")));
    assert_eq!(busy, expected);
}

#[tokio::test]
async fn the_auth_scheme_is_configurable() {
    let sim = start_sim(|c| c.auth = Some(AuthScheme::Bare)).await;
    let bare = QpienClient::new(QpienConfig {
        auth_scheme: Some(AuthScheme::Bare),
        ..config(&sim)
    })
    .unwrap();
    bare.get_conversation_list(1, 5, None).await.unwrap();
    let last = sim.state().requests().pop().unwrap();
    assert!(
        last.authorization
            .as_deref()
            .is_some_and(|a| !a.is_empty() && !a.starts_with("Bearer ")),
        "{last:?}"
    );
    // The documented scheme is refused by a server that wants the bare token.
    let err = client(&sim).get_conversation("c").await.unwrap_err();
    assert!(matches!(err, QpienError::Unauthorized { .. }), "{err:?}");
    // The external dialect sends the token bare unless told otherwise.
    assert_eq!(
        QpienConfig {
            dialect: Dialect::External,
            ..QpienConfig::default()
        }
        .auth(),
        AuthScheme::Bare
    );
}

#[tokio::test]
async fn documents_can_be_replaced_from_files() {
    let sim = start_sim(|c| c.dialect = Dialect::External).await;
    text_conversations(&sim, ["c1".to_string()]);
    let dir = tempdir();
    // A documented-dialect client pointed at an external server: the two
    // documents it needs are replaced, nothing else changes.
    std::fs::write(
        dir.join("createMessage.graphql"),
        "mutation Send($input: CreateMessageInput!) {\n  externalCreateMessage(input: $input) { success data { _id } }\n}\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("generateOAuthToken.graphql"),
        Operation::GenerateOAuthToken.embedded_in(Dialect::External),
    )
    .unwrap();
    let client = QpienClient::new(QpienConfig {
        documents_dir: Some(dir.clone()),
        dialect: Dialect::Documented,
        ..config(&sim)
    })
    .unwrap();
    assert!(client.documents().is_overridden(Operation::CreateMessage));
    assert!(!client.documents().is_overridden(Operation::GetMessage));
    let sent = client.send(&text_turn("c1", "m", 1)[0]).await.unwrap();
    assert!(sent.id.is_some());
    assert_eq!(sim.state().created().len(), 1);

    std::fs::write(dir.join("createMesage.graphql"), "mutation { x }").unwrap();
    let err = QpienClient::new(QpienConfig {
        documents_dir: Some(dir.clone()),
        ..config(&sim)
    })
    .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("createMesage.graphql") && text.contains("createMessage"),
        "{text}"
    );
    std::fs::remove_dir_all(dir).ok();
}

fn tempdir() -> std::path::PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "flowbot-qpien-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test]
async fn conversations_and_messages_are_read_as_documented_in_both_dialects() {
    for dialect in [Dialect::Documented, Dialect::External] {
        let sim = start_sim(|c| c.dialect = dialect).await;
        let client = client(&sim);
        sim.state()
            .create_conversation_with_id("c1", "whatsapp", Some("en"), "Ada Lovelace");
        for i in 0..3 {
            sim.state().insert_message(
                "c1",
                json!({"_id": format!("m{i}"), "conversation": "c1", "senderType": "user",
                "content": format!("hello {i}"), "channelType": "WhatsApp", "unknownField": [1]}),
            );
        }
        let page = client.get_message_list("c1", 1, 2).await.unwrap();
        assert_eq!(page.docs.len(), 2);
        assert!(page.has_next_page);
        assert_eq!(page.total_docs, Some(3));
        let page2 = client.get_message_list("c1", 2, 2).await.unwrap();
        assert_eq!(page2.docs[0].content.as_deref(), Some("hello 2"));
        assert!(!page2.has_next_page);
        let one = client.get_message("m1").await.unwrap().unwrap();
        assert_eq!(one.content.as_deref(), Some("hello 1"));
        let conversations = client.get_conversation_list(1, 20, None).await.unwrap();
        assert_eq!(conversations.docs.len(), 1);
        assert!(!conversations.has_next_page);
        let c = client.get_conversation("c1").await.unwrap().unwrap();
        // FACT: `customer` is the account's id; channels and tags are objects.
        assert_eq!(c.customer.as_deref(), Some("acct-sim"));
        assert_eq!(c.channels[0].kind.as_deref(), Some("WhatsApp"));
        assert!(!c.has_agent());
        assert_eq!(
            c.last_message.as_ref().and_then(|m| m.id.as_deref()),
            Some("m2")
        );
        sim.state().agent_join("c1");
        let c = client.get_conversation("c1").await.unwrap().unwrap();
        assert_eq!(c.joined_c_person.as_deref(), Some("agent-1"));
        assert!(client.get_conversation("nope").await.unwrap().is_none());
        assert_eq!(
            client.connected_platforms().await.unwrap()[0]
                .channel_type
                .as_deref(),
            Some("WhatsApp")
        );
    }
}

#[tokio::test]
async fn handoff_and_release_update_the_conversation() {
    let sim = start_sim(|_| {}).await;
    text_conversations(&sim, ["c1".to_string()]);
    let client = QpienClient::new(QpienConfig {
        handoff_assign_to: Some("agent-7".into()),
        ..config(&sim)
    })
    .unwrap();
    client.handoff("c1").await.unwrap();
    client.release("c1").await.unwrap();
    assert_eq!(
        sim.state().updates(),
        vec![
            json!({"conversationId": "c1", "status": "PENDING", "joinedPerson": "agent-7"}),
            json!({"conversationId": "c1", "status": "OPEN"}),
        ]
    );
}

#[tokio::test]
async fn slow_answers_and_dead_servers_fail_after_the_retries() {
    let sim = start_sim(|_| {}).await;
    let client = QpienClient::new(QpienConfig {
        request_timeout: Duration::from_millis(100),
        retry: RetryConfig {
            max_attempts: 2,
            ..config(&sim).retry
        },
        ..config(&sim)
    })
    .unwrap();
    client.check_token().await.unwrap();
    sim.state().configure(|c| {
        c.faults.slow = 1.0;
        c.faults.slow_delay = Duration::from_millis(400);
    });
    let start = Instant::now();
    let err = client.get_conversation("c1").await.unwrap_err();
    assert!(matches!(err, QpienError::Timeout { .. }), "{err:?}");
    assert!(err.is_retryable());
    assert!(
        start.elapsed() >= Duration::from_millis(200),
        "two attempts"
    );

    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://{}/graphql", listener.local_addr().unwrap());
    drop(listener);
    let client = QpienClient::new(QpienConfig {
        endpoint: dead,
        ..config(&sim)
    })
    .unwrap();
    let err = client.check_token().await.unwrap_err();
    assert!(matches!(err, QpienError::Transport { .. }), "{err:?}");
    assert!(err.is_retryable());
}

#[test]
fn secrets_never_show_in_debug_output() {
    let config = QpienConfig {
        client_id: Secret::new("the-client-id"),
        client_secret: Secret::new("the-client-secret"),
        ..QpienConfig::default()
    };
    let client = QpienClient::new(config.clone()).unwrap();
    for text in [format!("{config:?}"), format!("{client:?}")] {
        assert!(!text.contains("the-client-id"), "{text}");
        assert!(!text.contains("the-client-secret"), "{text}");
    }
}

#[test]
fn customer_messages_become_events_and_others_do_not() {
    use flowbot::internals::qpien::to_incoming;
    let intake = Intake::with_defaults();
    use flowbot::Event;
    let read = |v: Value| -> ExternalMessage { serde_json::from_value(v).unwrap() };
    let tap = read(
        json!({"_id": "m1", "conversation": {"_id": "c1"}, "senderType": "user",
        "channelType": "WhatsApp", "content": "My orders", "flowBotQuickReplyResponseId": "orders",
        "sender": {"_id": "u1", "firstName": "Ada", "language": "tr"}}),
    );
    let Ok(Event::Message(incoming)) = intake.message(&tap, None, None).map(|i| i.event) else {
        panic!("a customer's tap is an event")
    };
    assert_eq!(incoming.button.as_deref(), Some("orders"));
    assert_eq!(incoming.text, "My orders");
    assert_eq!(incoming.contact.language.as_deref(), Some("tr"));
    assert_eq!(incoming.channel, Channel::WhatsApp);
    assert_eq!(tap.conversation.as_deref(), Some("c1"));

    let pick = read(
        json!({"_id": "m2", "senderType": "user", "channelType": "livechat",
        "listMessage": {"selectedRowId": "track"}, "content": "Track"}),
    );
    assert_eq!(to_incoming(&pick).list.as_deref(), Some("track"));
    let reply = read(
        json!({"_id": "m3", "senderType": "user", "listReply": {"id": "return", "title": "Return"}}),
    );
    let incoming = to_incoming(&reply);
    assert_eq!(
        (incoming.list.as_deref(), incoming.text.as_str()),
        (Some("return"), "Return")
    );
    let photo = read(
        json!({"_id": "m4", "senderType": "user", "messageType": "image",
        "media": [{"url": "https://x/y.jpg", "type": "image"}], "content": null}),
    );
    assert_eq!(to_incoming(&photo).media, Some(MediaKind::Image));
    let email = read(
        json!({"_id": "m5", "senderType": "user", "channelType": "Email",
        "contentHtml": "<p>Hi &amp; hello</p>"}),
    );
    let incoming = to_incoming(&email);
    assert_eq!(
        (incoming.text.as_str(), incoming.channel),
        ("Hi & hello", Channel::Email)
    );

    for not_customer in [
        json!({"_id": "x1", "senderType": "bot", "content": "hi"}),
        json!({"_id": "x2", "senderType": "system", "content": "closed"}),
        json!({"_id": "x3", "senderType": "user", "sender": {"type": "PERSON"}, "content": "agent"}),
        json!({"_id": "x4", "senderType": "user", "frontMsgId": "flowbot:m1:0", "content": "me"}),
        json!({"_id": "x5", "conversation": "c1", "senderType": "user", "isGroupOrChannel": true}),
        json!({"_id": "x6", "conversation": "c1", "senderType": "user", "commentData": {"postId": "p1"}}),
        json!({"_id": "x7", "conversation": "c1", "senderType": "Widget"}),
    ] {
        let msg = read(not_customer.clone());
        assert!(intake.message(&msg, None, None).is_err(), "{not_customer}");
    }
    // Without senderType: the table's `""` entry decides (a customer by default).
    let bare = read(json!({"_id": "x8", "conversation": "c1", "content": "hi"}));
    assert!(intake.message(&bare, None, None).is_ok());
    assert_eq!(intake.sender(&bare), SenderKind::Customer);
    // Groups and comments are answered when configured.
    let open = Intake::new(&QpienConfig {
        answer_groups: true,
        answer_comments: true,
        ..QpienConfig::default()
    });
    for v in [
        json!({"_id": "g1", "conversation": "c1", "senderType": "user", "isGroupOrChannel": true}),
        json!({"_id": "g2", "conversation": "c1", "senderType": "user", "commentData": {"x": 1}}),
    ] {
        assert!(open.message(&read(v), None, None).is_ok());
    }
}

#[test]
fn webhook_signatures_and_payloads() {
    use flowbot::internals::qpien::webhook::{parse, sign, verify, WebhookEvent};
    let body = br#"{"event":"NEW_INCOMING_MESSAGE","data":{"_id":"m1","conversation":"c1","senderType":"user","content":"hi"}}"#;
    let sig = sign(b"s3cret", body);
    assert_eq!(sig.len(), 64);
    assert!(verify(b"s3cret", body, &sig));
    assert!(verify(b"s3cret", body, &sig.to_uppercase()));
    assert!(!verify(b"other", body, &sig));
    assert!(!verify(b"s3cret", &body[1..], &sig));
    assert!(!verify(b"s3cret", body, "zz"));
    assert!(
        matches!(parse(body), Ok(WebhookEvent::NewMessage(m)) if m.content.as_deref() == Some("hi"))
    );
    // As documented (ids), and with objects in their place: both read.
    for join in [
        &br#"{"event":"JOIN_CONVERSATION","data":{"_id":"c1","customer":"acct","joinedPerson":"a1","channels":[{"_id":"p1","name":"WA","type":"WhatsApp"}]}}"#[..],
        &br#"{"event":"JOIN_CONVERSATION","data":{"_id":"c1","customer":{"_id":"acct"},"joinedPerson":{"_id":"a1","type":"PERSON"},"channels":["WhatsApp"]}}"#[..],
    ] {
        assert!(
            matches!(parse(join), Ok(WebhookEvent::AgentJoined { conversation, person, .. })
                if conversation == "c1" && person.as_deref() == Some("a1")),
            "{}",
            String::from_utf8_lossy(join)
        );
    }
    let bare = br#"{"_id":"m2","conversation":"c1","senderType":"user","content":"x"}"#;
    assert!(matches!(parse(bare), Ok(WebhookEvent::NewMessage(_))));
    assert!(
        matches!(parse(br#"{"event":"CONTACT_UPDATED","data":{}}"#), Ok(WebhookEvent::Other(e)) if e == "CONTACT_UPDATED")
    );
    assert!(parse(b"not json").is_err());
    let no_conv = br#"{"event":"NEW_INCOMING_MESSAGE","data":{"_id":"m1"}}"#;
    assert!(parse(no_conv)
        .unwrap_err()
        .to_string()
        .contains("conversation"));
}

#[test]
fn agent_events_are_keyed_by_what_identifies_them() {
    use flowbot::internals::qpien::{Delivery, Intake};
    let intake = Intake::with_defaults();
    let key = |body: &str, arrival: &str| match intake.delivery(body.as_bytes(), arrival) {
        Delivery::Event(i) => i.key,
        other => panic!("{other:?}"),
    };
    // A delivery id or a time: a redelivery (another arrival) has the same key.
    let with_id = r#"{"event":"JOIN_CONVERSATION","deliveryId":"d1","data":{"_id":"c1","joinedPerson":"a1"}}"#;
    assert_eq!(key(with_id, "1"), key(with_id, "2"));
    assert_eq!(key(with_id, "1"), "join:c1:a1:id:d1");
    let timed = r#"{"event":"LEAVE_CONVERSATION","data":{"_id":"c1","leftPerson":"a1","leftAt":"2026-11-26T10:00:00Z"}}"#;
    assert_eq!(key(timed, "1"), "leave:c1:a1:at:2026-11-26T10:00:00Z");
    let later = timed.replace("10:00:00", "10:05:00");
    assert_ne!(key(timed, "1"), key(&later, "1"));
    // A conversation's `createdAt` does not tell two joins apart; `updatedAt` does.
    let conv = r#"{"event":"JOIN_CONVERSATION","data":{"_id":"c1","createdAt":"2026-01-01","updatedAt":"2026-11-26T10:00:00Z"}}"#;
    assert_eq!(key(conv, "1"), "join:c1:-:at:2026-11-26T10:00:00Z");
    // Nothing that identifies it: each arrival is an event of its own.
    let bare = r#"{"event":"JOIN_CONVERSATION","data":{"_id":"c1"}}"#;
    assert_ne!(key(bare, "1"), key(bare, "2"));
}

/// A simulator that answers every request `slow` late (and is set up by
/// `tweak`), holding text conversations `ids`, and a client with its token
/// whose replies share requests: one request under way, at most 20 replies.
async fn slow_qpien(
    slow: Duration,
    ids: &[String],
    tweak: impl FnOnce(&mut SimConfig),
) -> (RunningSim, QpienClient) {
    let sim = start_sim(|c| {
        c.faults.slow = 1.0;
        c.faults.slow_delay = slow;
        tweak(c);
    })
    .await;
    text_conversations(&sim, ids.iter().cloned());
    let client = QpienClient::new(QpienConfig {
        batch: BatchConfig {
            max: 20,
            in_flight: 1,
        },
        ..config(&sim)
    })
    .unwrap();
    client.check_token().await.unwrap();
    (sim, client)
}

/// Sends one reply to each of `conversations` at once; what each send gave.
async fn send_each(
    client: &QpienClient,
    conversations: &[String],
) -> Vec<Result<flowbot::internals::qpien::Sent, QpienError>> {
    let calls: Vec<_> = conversations
        .iter()
        .map(|c| {
            let (client, c) = (client.clone(), c.clone());
            tokio::spawn(async move { client.send(&text_turn(&c, &format!("in-{c}"), 1)[0]).await })
        })
        .collect();
    let mut results = Vec::new();
    for call in calls {
        results.push(call.await.unwrap());
    }
    results
}

fn fronts_created(sim: &RunningSim) -> Vec<String> {
    let mut fronts: Vec<String> = sim
        .state()
        .created()
        .iter()
        .map(|c| c["input"]["frontMsgId"].as_str().unwrap().to_owned())
        .collect();
    fronts.sort();
    fronts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_ready_together_share_a_request_and_a_failed_one_is_retried_whole() {
    let ids: Vec<String> = (0..25).map(|i| format!("c{i:02}")).collect();
    let (sim, client) = slow_qpien(Duration::from_millis(150), &ids, |_| {}).await;
    let before = sim.state().stats().requests;
    let calls_before = client.stats().ok;
    // The first reply leaves alone; the other 24 wait for it, then leave
    // as 20 and 4 (one request under way at a time). The request of 20
    // fails once (HTTP 500) and is retried whole.
    let sends = {
        let (client, ids) = (client.clone(), ids.clone());
        tokio::spawn(async move { send_each(&client, &ids).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    sim.state().fail_next(1);
    let results = sends.await.unwrap();
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let requests = sim.state().stats().requests - before;
    // The first alone (or with what came in the meantime), the rest in one
    // or two: with the failed one, at most four requests.
    assert!((3..=4).contains(&requests), "{requests} requests");
    let mut expected: Vec<String> = ids.iter().map(|c| format!("flowbot:in-{c}:0")).collect();
    expected.sort();
    assert_eq!(fronts_created(&sim), expected, "each reply created once");
    assert!(client.stats().batched >= 24, "{:?}", client.stats());
    assert_eq!(client.stats().ok - calls_before, 25);
    // The simulator saw each reply as an operation of its own.
    let seen = sim.state().count("createMessage", 200);
    assert_eq!(seen, 25);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_refused_in_a_shared_request_fails_alone() {
    let mut ids: Vec<String> = (0..6).map(|i| format!("c{i}")).collect();
    let (sim, client) = slow_qpien(Duration::from_millis(100), &ids, |_| {}).await;
    // A conversation Qpien does not know: its create fails, the others not.
    ids.insert(3, "unknown".into());
    let results = send_each(&client, &ids).await;
    for (id, result) in ids.iter().zip(&results) {
        if id == "unknown" {
            assert!(
                matches!(result, Err(QpienError::Api { code, .. }) if code == "NOT_FOUND"),
                "{result:?}"
            );
        } else {
            assert!(result.is_ok(), "{id}: {result:?}");
        }
    }
    assert_eq!(sim.state().created().len(), 6);
    assert!(client.stats().batched >= 5, "{:?}", client.stats());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_qpien_that_refuses_several_replies_a_request_gets_one_a_request() {
    let ids: Vec<String> = (0..8).map(|i| format!("c{i}")).collect();
    let (sim, client) = slow_qpien(Duration::from_millis(100), &ids, |c| {
        c.max_root_fields = Some(1);
    })
    .await;
    let results = send_each(&client, &ids).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(sim.state().created().len(), 8, "each created once");
    assert_eq!(client.stats().batched, 0);
    // One request of several was refused; from then on each goes alone.
    let before = sim.state().stats().requests;
    let more: Vec<String> = (8..12).map(|i| format!("c{i}")).collect();
    text_conversations(&sim, more.clone());
    let results = send_each(&client, &more).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(sim.state().stats().requests - before, 4);
}
