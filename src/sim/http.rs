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

/// The operation a query calls, by its documented name (the first root field).
fn operation_of(query: &str, dialect: crate::qpien::Dialect) -> String {
    use async_graphql::parser::types::{DocumentOperations, Selection};
    let Ok(doc) = async_graphql::parser::parse_query(query) else {
        return String::new();
    };
    let ops: Vec<_> = match &doc.operations {
        DocumentOperations::Single(op) => vec![op],
        DocumentOperations::Multiple(map) => map.values().collect(),
    };
    ops.iter()
        .flat_map(|op| op.node.selection_set.node.items.iter())
        .find_map(|s| match &s.node {
            Selection::Field(f) => Some(f.node.name.node.to_string()),
            _ => None,
        })
        .map(|field| {
            crate::qpien::Operation::from_root_field(&field, dialect)
                .map_or(field, |op| op.name().to_owned())
        })
        .unwrap_or_default()
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
    let seen = |status: StatusCode| SeenRequest {
        at: tokio::time::Instant::now(),
        operation: operation_of(raw["query"].as_str().unwrap_or(""), config.dialect),
        variables: raw["variables"].clone(),
        authorization: authorization.clone(),
        status: status.as_u16(),
    };
    let window = match sim.rate() {
        Ok(w) => w,
        Err(reset) => {
            let limit = config.rate_limit.map_or(0, |l| l.0);
            let mut r = (StatusCode::TOO_MANY_REQUESTS, "rate limit exceeded").into_response();
            rate_headers(&mut r, config.reset_format, limit, 0, reset);
            sim.record(seen(StatusCode::TOO_MANY_REQUESTS));
            return r;
        }
    };
    let faults = &config.faults;
    if sim.take(|s| &mut s.fail_next) || sim.roll(faults.server_errors) {
        sim.counters.injected_errors.fetch_add(1, Ordering::Relaxed);
        sim.record(seen(StatusCode::INTERNAL_SERVER_ERROR));
        return (StatusCode::INTERNAL_SERVER_ERROR, "injected fault").into_response();
    }
    if sim.roll(faults.slow) {
        tokio::time::sleep(faults.slow_delay).await;
    }
    let request: async_graphql::Request = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            sim.record(seen(StatusCode::BAD_REQUEST));
            return json_response(
                StatusCode::BAD_REQUEST,
                json!({"errors": [{"message": format!("bad request: {e}")}]}),
            );
        }
    };
    let lost = Arc::new(Lost::default());
    let response = app
        .schema
        .execute(
            request
                .data(sim.clone())
                .data(Auth(authorization.clone()))
                .data(lost.clone()),
        )
        .await;
    if lost.0.load(Ordering::SeqCst) {
        sim.record(seen(StatusCode::INTERNAL_SERVER_ERROR));
        return (StatusCode::INTERNAL_SERVER_ERROR, "the answer was lost").into_response();
    }
    let mut r = json_response(
        StatusCode::OK,
        serde_json::to_value(&response).unwrap_or_default(),
    );
    if let Some((limit, remaining, reset)) = window {
        rate_headers(&mut r, config.reset_format, limit, remaining, reset);
    }
    sim.record(seen(StatusCode::OK));
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
