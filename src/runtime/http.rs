//! The HTTP side: Qpien's webhook, the probes and the metrics.
//!
//! The webhook checks, in this order: size (413), content type (415),
//! signature over the raw bytes, in constant time (401), then reads the JSON
//! (400). Only then is anything stored; 200 means the event is durable (or was
//! a duplicate, or is not for the bot). A full queue answers 503 with
//! `Retry-After`, before storing, so Qpien delivers again later.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

use super::dispatch::Inbox;
use super::metrics::Metrics;
use super::reload::BotSlot;
use super::Stop;
use crate::config::ServerConfig;
use crate::qpien::webhook::{self, SIGNATURE_HEADER};
use crate::qpien::QpienClient;
use crate::store::StateStore;

/// What the HTTP handlers need.
pub(crate) struct App {
    pub(crate) server: ServerConfig,
    pub(crate) inbox: Arc<Inbox>,
    pub(crate) store: Arc<dyn StateStore>,
    pub(crate) client: QpienClient,
    pub(crate) bot: Arc<BotSlot>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) stop: Stop,
}

pub(crate) fn router(shared: Arc<App>) -> Router {
    let mut app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics));
    if shared.server.debug {
        app = app
            .route("/debug/flow", get(debug_flow))
            .route("/debug/conversations/{id}", get(debug_conversation));
    }
    if shared.server.webhook {
        app = app.route(
            &shared.server.webhook_path,
            post(webhook).layer(DefaultBodyLimit::max(shared.server.max_body_bytes)),
        );
    }
    app.with_state(shared)
}

fn reply(status: StatusCode, body: &'static str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        format!("{{\"status\":\"{body}\"}}"),
    )
        .into_response()
}

async fn healthz() -> Response {
    reply(StatusCode::OK, "alive")
}

async fn readyz(State(shared): State<Arc<App>>) -> Response {
    let store = tokio::time::timeout(Duration::from_secs(2), shared.store.ping()).await;
    let store_ok = matches!(store, Ok(Ok(())));
    let token = tokio::time::timeout(Duration::from_secs(5), shared.client.check_token()).await;
    let token_msg = match token {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => Some("no token within 5s".to_owned()),
    };
    let ready = store_ok && token_msg.is_none() && !shared.stop.is_stopping();
    let body = serde_json::json!({
        "ready": ready,
        "store": if store_ok { "ok" } else { "unreachable" },
        "flow": shared.bot.get().flow().name,
        "qpien": token_msg.as_deref().unwrap_or("ok"),
        "stopping": shared.stop.is_stopping(),
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn debug_json(status: StatusCode, v: serde_json::Value) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
        ],
        v.to_string(),
    )
        .into_response()
}

/// The flow as a Mermaid graph (nodes `s<index>`), for the playground.
async fn debug_flow(State(shared): State<Arc<App>>) -> Response {
    let bot = shared.bot.get();
    debug_json(
        StatusCode::OK,
        serde_json::json!({"name": bot.flow().name, "mermaid": bot.flow().to_mermaid()}),
    )
}

/// A conversation's saved state and variables, for the playground.
async fn debug_conversation(
    State(shared): State<Arc<App>>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Response {
    let stored = match shared.store.session(&id).await {
        Ok(s) => s,
        Err(e) => {
            return debug_json(
                StatusCode::SERVICE_UNAVAILABLE,
                serde_json::json!({"error": e.to_string()}),
            )
        }
    };
    let Some(record) =
        stored.and_then(|s| super::payload::decode::<crate::engine::Stored>(&s.data).ok())
    else {
        return debug_json(StatusCode::OK, serde_json::json!({"state": null}));
    };
    let bot = shared.bot.get();
    let node = bot.flow().state_id(&record.state).map(|i| format!("s{i}"));
    let vars: serde_json::Map<String, serde_json::Value> = record
        .session
        .vars
        .iter()
        .map(|(k, v)| (k.to_string(), serde_json::to_value(v).unwrap_or_default()))
        .collect();
    debug_json(
        StatusCode::OK,
        serde_json::json!({
            "state": record.state,
            "node": node,
            "vars": vars,
            "handoff": record.session.handoff,
            "language": record.session.language,
            "channel": record.channel,
        }),
    )
}

async fn metrics(State(shared): State<Arc<App>>) -> Response {
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        shared.metrics.render(),
    )
        .into_response()
}

async fn webhook(State(shared): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Response {
    let started = Instant::now();
    let (status, result) = handle(&shared, &headers, &body).await;
    Metrics::count(&shared.metrics.webhooks, result);
    shared
        .metrics
        .ack_latency
        .observe(started.elapsed().as_secs_f64());
    if status == StatusCode::SERVICE_UNAVAILABLE {
        let mut r = reply(status, result);
        r.headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("5"));
        return r;
    }
    reply(status, result)
}

async fn handle(shared: &App, headers: &HeaderMap, body: &[u8]) -> (StatusCode, &'static str) {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !json {
        return (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type");
    }
    let signature = headers
        .get(SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let secret = shared.server.webhook_secret.expose().as_bytes();
    if signature.is_empty() || !webhook::verify(secret, body, signature) {
        tracing::warn!("webhook refused: missing or bad signature");
        return (StatusCode::UNAUTHORIZED, "bad_signature");
    }
    let prefix = &shared.client.config().front_msg_id_prefix;
    let ingested = match crate::qpien::from_delivery(body, signature, prefix) {
        Ok(Ok(i)) => i,
        Ok(Err(why)) => {
            tracing::debug!(%why, "webhook delivery ignored");
            return (StatusCode::OK, "ignored");
        }
        Err(e) => {
            tracing::warn!(error = %e, "webhook refused");
            return (StatusCode::BAD_REQUEST, "bad_payload");
        }
    };
    if shared.inbox.is_full() {
        return (StatusCode::SERVICE_UNAVAILABLE, "busy");
    }
    match shared.inbox.accept(ingested).await {
        Ok(true) => (StatusCode::OK, "accepted"),
        Ok(false) => (StatusCode::OK, "duplicate"),
        Err(e) => {
            tracing::error!(error = %e, "cannot store a webhook event");
            (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable")
        }
    }
}
