//! `flowbot doctor` through the real binary, against the simulator in several
//! dialects and configurations.

use std::process::Output;

use flowbot::internals::qpien::{AuthScheme, Dialect};
use flowbot::internals::sim::SimConfig;

use crate::qpien::start_sim;

async fn doctor(sim_url: &str, env: &[(&str, &str)], args: &[&str]) -> (Output, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_flowbot"))
        .arg("doctor")
        .args(args)
        .env("FLOWBOT_QPIEN__ENDPOINT", sim_url)
        .env("FLOWBOT_QPIEN__CLIENT_ID", "id-1")
        .env("FLOWBOT_QPIEN__CLIENT_SECRET", "secret-1")
        .envs(env.iter().copied())
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    (out, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_matching_account_passes() {
    let sim = start_sim(|c| c.rate_limit = Some((100, std::time::Duration::from_secs(60)))).await;
    sim.state().create_conversation("whatsapp", None, "Ada");
    let (out, text) = doctor(&sim.graphql_url(), &[], &[]).await;
    assert_eq!(out.status.code(), Some(0), "{text}");
    for line in [
        "[ok  ] token: obtained with the documented dialect's document",
        "[ok  ] auth scheme: the server takes: bearer, bare",
        "[ok  ] answers: results come bare",
        "X-RateLimit-Limit 100",
        "[ok  ] schema: every type and field",
        "[ok  ] documents: every document in use is valid",
        "[ok  ] shared requests: replies of several conversations can share a request",
        "[ok  ] createMessage: allowed",
        "Nothing to change in the configuration.",
    ] {
        assert!(text.contains(line), "missing {line:?} in:\n{text}");
    }
    // Nothing was created by the probes.
    assert!(sim.state().created().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_external_account_is_recognised_and_the_lines_to_set_are_given() {
    let sim = start_sim(|c| {
        c.dialect = Dialect::External;
        c.auth = Some(AuthScheme::Bare);
    })
    .await;
    let (out, text) = doctor(&sim.graphql_url(), &[], &[]).await;
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("the account speaks `external`"), "{text}");
    assert!(text.contains("qpien.dialect = \"external\""), "{text}");
    assert!(
        text.contains("results come in a {success, code, message, data} envelope"),
        "{text}"
    );
    // With the line set, it passes.
    let (out, text) = doctor(
        &sim.graphql_url(),
        &[("FLOWBOT_QPIEN__DIALECT", "external")],
        &[],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("the server takes: bare"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_scope_and_a_bare_only_server_are_named() {
    let sim = start_sim(|c| {
        c.scopes = SimConfig::default()
            .scopes
            .into_iter()
            .filter(|s| s != "write_conversations")
            .collect();
        c.auth = Some(AuthScheme::Bare);
        c.introspection = false;
    })
    .await;
    let dir = crate::runtime::temp_dir("doctor-docs");
    let (out, text) = doctor(
        &sim.graphql_url(),
        &[],
        &["--write-documents", dir.join("docs").to_str().unwrap()],
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("lacks the scope `write_conversations`"),
        "{text}"
    );
    assert!(
        text.contains("configured `bearer`, the server takes only `bare`"),
        "{text}"
    );
    assert!(text.contains("qpien.auth_scheme = \"bare\""), "{text}");
    assert!(text.contains("introspection is not allowed"), "{text}");
    let written = std::fs::read_to_string(dir.join("docs/createMessage.graphql")).unwrap();
    assert!(
        written.contains("createMessage(input: $input)"),
        "{written}"
    );
}

/// A replaced message document that cannot be repeated under aliases (it
/// uses a fragment) is named: its replies go one a request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_document_that_cannot_carry_several_replies_is_named() {
    let sim = start_sim(|_| {}).await;
    let dir = crate::runtime::temp_dir("doctor-batch");
    std::fs::write(
        dir.join("createMessage.graphql"),
        "mutation CreateMessage($input: CreateMessageInput!) {\n  createMessage(input: $input) { ...Made }\n}\n\
         fragment Made on ExternalMessage { _id frontMsgId }\n",
    )
    .unwrap();
    let (_, text) = doctor(
        &sim.graphql_url(),
        &[("FLOWBOT_QPIEN__DOCUMENTS_DIR", dir.to_str().unwrap())],
        &[],
    )
    .await;
    assert!(
        text.contains(
            "shared requests: one reply a request for:\n    createMessage: not one mutation of one field"
        ),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_key_stops_at_the_token() {
    let sim = start_sim(|_| {}).await;
    let (out, text) = doctor(
        &sim.graphql_url(),
        &[("FLOWBOT_QPIEN__CLIENT_SECRET", "wrong")],
        &[],
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("the API key was refused"), "{text}");
}

#[test]
fn the_schema_diff_names_what_differs() {
    use flowbot::internals::qpien::doctor::schema_diff;
    let ours = "type Query { a: ID b: String }\ntype T { x: Int }";
    let live = "type Query { a: String }";
    let diff = schema_diff(ours, live);
    assert_eq!(
        diff,
        [
            "Query.a: ours is ID, the account's is String",
            "Query.b: not in the account's schema",
            "type T: not in the account's schema",
        ]
    );
}

/// The account's templates: listed by `doctor`, written with `--templates`,
/// and checked offline by `validate --templates`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn templates_are_listed_written_and_checked_offline() {
    let sim = start_sim(|c| c.scopes.push("read_whatsappBusinessTemplates".into())).await;
    let dir = crate::runtime::temp_dir("doctor-templates");
    let file = dir.join("templates.json");
    let (out, text) = doctor(
        &sim.graphql_url(),
        &[],
        &["--templates", file.to_str().unwrap()],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains("getWhatsappBusinessTemplateList: 5 template(s) listed, 5 approved")
            && text.contains("order_update (en, 2 parameter(s))"),
        "{text}"
    );
    let flow = dir.join("flow.yaml");
    std::fs::write(
        &flow,
        "settings: { default_language: en }\nstates:\n  start:\n    say: hi\n    \
         template: { name: order_update, params: [\"{{ name }}\"] }\n",
    )
    .unwrap();
    let validate = |with: bool| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_flowbot"));
        cmd.arg("validate").arg(&flow);
        if with {
            cmd.arg("--templates").arg(&file);
        }
        cmd.output().unwrap()
    };
    let out = validate(false);
    assert_eq!(out.status.code(), Some(0), "unchecked without the list");
    let out = validate(true);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("template `order_update` (en) has 2 parameters; 1 given")
            && err.contains("flow.yaml:5"),
        "{err}"
    );
}

/// The simulator answers at Qpien's own path (`/api/v1`) too; a wrong
/// address is told apart from a wrong document: a 404, a web page, JSON
/// that is no GraphQL answer, each said for what it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_endpoint_is_named_as_such() {
    let sim = start_sim(|_| {}).await;
    let (out, text) = doctor(&sim.api_url(), &[], &[]).await;
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(sim.api_url().ends_with("/api/v1"));
    let base = sim.graphql_url().trim_end_matches("/graphql").to_owned();
    let (out, text) = doctor(&format!("{base}/api/v2"), &[], &[]).await;
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("answered 404: there is no GraphQL endpoint at this address"),
        "{text}"
    );
    assert!(!text.contains("built-in documents"), "{text}");
    // A stand-in: a web page, and JSON of another kind.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let app = axum::Router::new()
        .route(
            "/page",
            axum::routing::post(|| async {
                axum::response::Html("<html><body>Welcome</body></html>")
            }),
        )
        .route(
            "/json",
            axum::routing::post(|| async { axum::Json(serde_json::json!({"status": "ok"})) }),
        );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let (out, text) = doctor(&format!("http://127.0.0.1:{port}/page"), &[], &[]).await;
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("answered a web page (text/html"), "{text}");
    let (_, text) = doctor(&format!("http://127.0.0.1:{port}/json"), &[], &[]).await;
    assert!(
        text.contains("answered JSON that is not a GraphQL response"),
        "{text}"
    );
}
