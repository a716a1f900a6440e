//! The simulator's HTTP side: the GraphQL endpoint (with the rate limit and
//! injected faults in front of it), the playground's REST calls, and the
//! playground's static files (embedded in the binary; Mermaid included, so no
//! CDN is needed at run time).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use async_graphql::dynamic::Schema;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};

use super::schema::{Auth, Lost};
use super::state::{CustomerInput, SeenRequest, SimState};
use super::ResetFormat;

#[derive(Clone)]
struct App {
    sim: Arc<SimState>,
    schema: Schema,
}

pub(crate) fn router(sim: Arc<SimState>, schema: Schema) -> Router {
    Router::new()
        // Qpien's own path, and the short one.
        .route("/api/v1", post(graphql))
        .route("/graphql", post(graphql))
        .route("/", get(index))
        .route("/app.js", get(app_js))
        .route("/style.css", get(style_css))
        .route("/vendor/mermaid.min.js", get(mermaid_js))
        .route("/sim/config", get(config))
        .route("/sim/stats", get(stats))
        .route("/sim/clock", get(clock).post(advance_clock))
        .route("/sim/conversations", get(list).post(create))
        .route("/sim/conversations/{id}", get(show))
        .route("/sim/conversations/{id}/messages", post(say))
        .route("/sim/conversations/{id}/agent", post(agent))
        .with_state(App { sim, schema })
}

fn json_response(status: StatusCode, v: Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response()
}

/// A request's document, read once.
type Query = async_graphql::parser::types::ExecutableDocument;
type RootField = async_graphql::Positioned<async_graphql::parser::types::Field>;

/// The root fields of a request's document (none: it does not parse).
fn root_fields(doc: Option<&Query>) -> Vec<&RootField> {
    use async_graphql::parser::types::{DocumentOperations, Selection};
    let Some(doc) = doc else {
        return Vec::new();
    };
    let ops: Vec<_> = match &doc.operations {
        DocumentOperations::Single(op) => vec![op],
        DocumentOperations::Multiple(map) => map.values().collect(),
    };
    ops.into_iter()
        .flat_map(|op| op.node.selection_set.node.items.iter())
        .filter_map(|s| match &s.node {
            Selection::Field(f) => Some(f),
            _ => None,
        })
        .collect()
}

/// The operations a request runs, by their documented names, each with its
/// variables: a document of one root field is recorded with the request's
/// variables; one of several (replies sent together, each aliased) as one
/// operation a field, each with its arguments' values under the arguments'
/// names, as if sent alone.
fn operations_of(
    fields: &[&RootField],
    variables: &Value,
    dialect: crate::qpien::Dialect,
) -> Vec<(String, Value)> {
    let name = |field: &str| {
        crate::qpien::Operation::from_root_field(field, dialect)
            .map_or(field.to_owned(), |op| op.name().to_owned())
    };
    match fields {
        [] => vec![(String::new(), variables.clone())],
        [one] => vec![(name(&one.node.name.node), variables.clone())],
        several => several
            .iter()
            .map(|f| {
                let args: serde_json::Map<String, Value> = f
                    .node
                    .arguments
                    .iter()
                    .map(|(arg, value)| {
                        let value = value
                            .node
                            .clone()
                            .into_const_with(|v| {
                                async_graphql::Value::from_json(
                                    variables.get(v.as_str()).cloned().unwrap_or(Value::Null),
                                )
                            })
                            .and_then(|v| v.into_json())
                            .unwrap_or(Value::Null);
                        (arg.node.to_string(), value)
                    })
                    .collect();
                (name(&f.node.name.node), Value::Object(args))
            })
            .collect(),
    }
}

/// Gives each error of a root field the field's `path` (its alias), and the
/// field a `null` in `data`, as the GraphQL spec asks ("If an error can be
/// associated to a particular field in the GraphQL result, it must contain an
/// entry with the key path"): the executor leaves a root field's error
/// without one, and that is how a client tells whose error it is when one
/// request carries several replies.
fn name_failed_fields(fields: &[&RootField], response: &mut async_graphql::Response) {
    use async_graphql::PathSegment;
    for error in &mut response.errors {
        if !error.path.is_empty() {
            continue;
        }
        let Some(at) = error.locations.first() else {
            continue;
        };
        let Some(field) = fields.iter().find(|f| f.pos == *at) else {
            continue;
        };
        let key = field.node.response_key().node.to_string();
        if let async_graphql::Value::Object(data) = &mut response.data {
            data.entry(async_graphql::Name::new(&key))
                .or_insert(async_graphql::Value::Null);
        }
        error.path = vec![PathSegment::Field(key)];
    }
}

/// `X-RateLimit-Reset` in the configured form.
fn reset_value(format: ResetFormat, reset: std::time::Duration) -> Option<HeaderValue> {
    let secs = (reset.as_secs_f64().ceil() as u64).max(1);
    // Rounded up: the moment said is never before the window resets.
    let at_ms = crate::time::now().max(0) as u64 + reset.as_micros().div_ceil(1000) as u64;
    let v = match format {
        ResetFormat::Seconds => secs,
        ResetFormat::UnixSeconds => at_ms.div_ceil(1000),
        ResetFormat::UnixMillis => at_ms,
        ResetFormat::None => return None,
    };
    Some(v.into())
}

fn rate_headers(
    r: &mut Response,
    format: ResetFormat,
    limit: u32,
    remaining: u32,
    reset: std::time::Duration,
) {
    let Some(reset) = reset_value(format, reset) else {
        return;
    };
    let h = r.headers_mut();
    h.insert("x-ratelimit-limit", limit.into());
    h.insert("x-ratelimit-remaining", remaining.into());
    h.insert("x-ratelimit-reset", reset);
}

async fn graphql(State(app): State<App>, headers: HeaderMap, body: Bytes) -> Response {
    let sim = &app.sim;
    let config = sim.config();
    sim.counters.requests.fetch_add(1, Ordering::Relaxed);
    let raw: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let query = raw["query"].as_str().unwrap_or("");
    let doc = async_graphql::parser::parse_query(query).ok();
    let fields = root_fields(doc.as_ref());
    let operations = operations_of(&fields, &raw["variables"], config.dialect);
    let record = |status: StatusCode| {
        for (operation, variables) in &operations {
            sim.record(SeenRequest {
                at: tokio::time::Instant::now(),
                operation: operation.clone(),
                variables: variables.clone(),
                authorization: authorization.clone(),
                status: status.as_u16(),
            });
        }
    };
    let window = match sim.rate() {
        Ok(w) => w,
        Err(reset) => {
            let limit = config.rate_limit.map_or(0, |l| l.0);
            let mut r = (StatusCode::TOO_MANY_REQUESTS, "rate limit exceeded").into_response();
            rate_headers(&mut r, config.reset_format, limit, 0, reset);
            record(StatusCode::TOO_MANY_REQUESTS);
            return r;
        }
    };
    let faults = &config.faults;
    if sim.take(|s| &mut s.fail_next) || sim.roll(faults.server_errors) {
        sim.counters.injected_errors.fetch_add(1, Ordering::Relaxed);
        record(StatusCode::INTERNAL_SERVER_ERROR);
        return (StatusCode::INTERNAL_SERVER_ERROR, "injected fault").into_response();
    }
    if sim.roll(faults.slow) {
        tokio::time::sleep(faults.slow_delay).await;
    }
    let request: async_graphql::Request = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            record(StatusCode::BAD_REQUEST);
            return json_response(
                StatusCode::BAD_REQUEST,
                json!({"errors": [{"message": format!("bad request: {e}")}]}),
            );
        }
    };
    if let Some(max) = config.max_root_fields {
        if fields.len() > max {
            record(StatusCode::OK);
            return json_response(
                StatusCode::OK,
                json!({"errors": [{
                    "message": format!("a document may hold at most {max} root fields, not {}", fields.len()),
                    "extensions": {"code": "GRAPHQL_VALIDATION_FAILED"},
                }]}),
            );
        }
    }
    let lost = Arc::new(Lost::default());
    let mut response = app
        .schema
        .execute(
            request
                .data(sim.clone())
                .data(Auth(authorization.clone()))
                .data(lost.clone()),
        )
        .await;
    if lost.0.load(Ordering::SeqCst) {
        record(StatusCode::INTERNAL_SERVER_ERROR);
        return (StatusCode::INTERNAL_SERVER_ERROR, "the answer was lost").into_response();
    }
    name_failed_fields(&fields, &mut response);
    let mut r = json_response(
        StatusCode::OK,
        serde_json::to_value(&response).unwrap_or_default(),
    );
    if let Some((limit, remaining, reset)) = window {
        rate_headers(&mut r, config.reset_format, limit, remaining, reset);
    }
    record(StatusCode::OK);
    r
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

async fn index() -> Response {
    asset(
        "text/html; charset=utf-8",
        include_str!("playground/index.html"),
    )
}

async fn app_js() -> Response {
    asset(
        "text/javascript; charset=utf-8",
        include_str!("playground/app.js"),
    )
}

async fn style_css() -> Response {
    asset(
        "text/css; charset=utf-8",
        include_str!("playground/style.css"),
    )
}

/// Mermaid 11 (MIT, `playground/vendor/mermaid.LICENSE`), stored gzipped.
async fn mermaid_js() -> Response {
    let mut r = (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        &include_bytes!("playground/vendor/mermaid.min.js.gz")[..],
    )
        .into_response();
    r.headers_mut()
        .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=86400"),
    );
    r
}

async fn config(State(app): State<App>) -> Response {
    let c = app.sim.config();
    json_response(
        StatusCode::OK,
        json!({"botUrl": c.bot_url, "webhook": c.webhook_url.is_some()}),
    )
}

async fn stats(State(app): State<App>) -> Response {
    json_response(
        StatusCode::OK,
        serde_json::to_value(app.sim.stats()).unwrap_or_default(),
    )
}

/// The simulator's time (`now`, ms since the epoch).
async fn clock(State(app): State<App>) -> Response {
    json_response(StatusCode::OK, json!({"now": app.sim.now()}))
}

/// Moves the simulator's clock forward: `{"advance": "30h"}`. Its time
/// decides WhatsApp's 24-hour window, so end-to-end tests cross it without
/// waiting.
async fn advance_clock(State(app): State<App>, body: Bytes) -> Response {
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let Some(by) = v["advance"]
        .as_str()
        .and_then(|s| humantime::parse_duration(s).ok())
    else {
        return json_response(
            StatusCode::BAD_REQUEST,
            json!({"error": "send {\"advance\": \"30h\"}"}),
        );
    };
    json_response(StatusCode::OK, json!({"now": app.sim.advance_clock(by)}))
}

async fn list(State(app): State<App>) -> Response {
    json_response(StatusCode::OK, json!(app.sim.conversation_list()))
}

async fn create(State(app): State<App>, body: Bytes) -> Response {
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let channel = v["channel"].as_str().unwrap_or("whatsapp");
    let name = v["name"].as_str().unwrap_or("Ada Lovelace");
    let id = app
        .sim
        .create_conversation(channel, v["language"].as_str(), name);
    json_response(StatusCode::CREATED, json!({"id": id}))
}

async fn show(State(app): State<App>, Path(id): Path<String>) -> Response {
    match app.sim.conversation(&id) {
        Some(c) => json_response(StatusCode::OK, c),
        None => json_response(
            StatusCode::NOT_FOUND,
            json!({"error": "no such conversation"}),
        ),
    }
}

async fn say(State(app): State<App>, Path(id): Path<String>, body: Bytes) -> Response {
    let input: CustomerInput = match serde_json::from_slice(&body) {
        Ok(i) => i,
        Err(e) => return json_response(StatusCode::BAD_REQUEST, json!({"error": e.to_string()})),
    };
    match app.sim.customer_message(&id, &input) {
        Some(m) => json_response(StatusCode::CREATED, json!({"id": m})),
        None => json_response(
            StatusCode::NOT_FOUND,
            json!({"error": "no such conversation"}),
        ),
    }
}

async fn agent(State(app): State<App>, Path(id): Path<String>, body: Bytes) -> Response {
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let ok = match v["action"].as_str() {
        Some("join") => app.sim.agent_join(&id),
        Some("leave") => app.sim.agent_leave(&id),
        Some("say") => app
            .sim
            .agent_message(&id, v["text"].as_str().unwrap_or(""))
            .is_some(),
        _ => {
            return json_response(
                StatusCode::BAD_REQUEST,
                json!({"error": "action must be join, leave or say"}),
            )
        }
    };
    if ok {
        json_response(StatusCode::OK, json!({"ok": true}))
    } else {
        json_response(
            StatusCode::NOT_FOUND,
            json!({"error": "no such conversation"}),
        )
    }
}
