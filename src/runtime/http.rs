//! The HTTP side: Qpien's webhook, the probes and the metrics.
//!
//! The webhook checks, in this order: that a signature is there (401), the size
//! (413), the signature over the raw bytes, in constant time (401); then it
//! reads the JSON leniently, whatever the `Content-Type`. A correctly signed
//! delivery is never refused for its content: one flowbot cannot use is kept as
//! a dead letter (see `flowbot dead-letters`) and answered 200, since Qpien
//! would retry a refusal for ever. 200 means the event is durable (or was a
//! duplicate, or is not for the bot, or is a dead letter). A full queue answers
//! 503 with `Retry-After`, before storing, so Qpien delivers again later.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tracing::Instrument;

use super::flows::BotSlot;
use super::host::Host;
use super::inbox::Inbox;
use super::metrics::{MetricSet, Metrics};
use super::Stop;
use crate::config::ServerConfig;
use crate::qpien::ingest::top_level_keys;
use crate::qpien::webhook::{self, SIGNATURE_HEADER};
use crate::qpien::Delivery;
use crate::qpien::QpienClient;
use crate::store::{DeadLetter, StateStore};

/// Whether reading a body failed because it took too long (tower-http's body
/// timeout) rather than because it was too large.
fn is_timeout(e: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if s.is::<tower_http::timeout::TimeoutError>() {
            return true;
        }
        source = s.source();
    }
    false
}

/// What makes this delivery unique, for events whose body names no identity
/// of their own (see [`crate::qpien::Intake::delivery`]): the time it arrived
/// and a sequence number.
fn arrival() -> String {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{}.{n}", crate::time::now())
}

/// What the HTTP handlers need.
pub(crate) struct App {
    pub(crate) server: ServerConfig,
    /// `[retention]`, for `/admin/retention`.
    pub(crate) retention: crate::config::RetentionConfig,
    pub(crate) inbox: Arc<Inbox>,
    pub(crate) store: Arc<dyn StateStore>,
    pub(crate) client: QpienClient,
    pub(crate) bot: Arc<BotSlot>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) stop: Stop,
    /// Where verified deliveries are kept (`server.capture_dir`).
    pub(crate) capture: Option<Arc<super::capture::Capture>>,
    /// The runtime's clock (WhatsApp's window is read by it).
    pub(crate) clock: crate::time::ClockHandle,
    /// The bot's name (none for the one bot of a single-bot process).
    pub(crate) name: Option<String>,
    /// The span its requests are logged in (`bot = name`).
    pub(crate) span: tracing::Span,
    /// The last readiness checks (store, Qpien token) and when they ran:
    /// `/readyz` asked often, or by anyone, runs them at most once a second.
    pub(crate) checked: tokio::sync::Mutex<Option<(std::time::Instant, Checks)>>,
    /// Starts per conversation an hour (`server.start_limit`).
    pub(crate) starts: super::starts::StartLimit,
}

/// What the readiness checks found: the store's and Qpien's problems, if any, and the flow's.
#[derive(Debug, Clone)]
pub(crate) struct Checks {
    store: Option<String>,
    qpien: Option<String>,
    /// The flow's name, or why it does not compile.
    flow: Result<String, String>,
}

impl Checks {
    fn ready(&self) -> bool {
        self.store.is_none() && self.qpien.is_none() && self.flow.is_ok()
    }
}

/// How long readiness checks are reused.
const CHECKS_FOR: Duration = Duration::from_secs(1);

/// The process's routes: the probes and the metrics at the root; the one bot
/// of a single-bot process at the root too; with several (`many`), each bot
/// under `/bots/<name>` (its `/readyz`, `/metrics`, debug and admin
/// endpoints) and its webhook at its own path, both looked up in the
/// directory at each request (so a bot added or removed is routed at once),
/// a root `/readyz` that lists them all, and the registry's `/admin/bots`.
pub(crate) fn router(host: &Arc<Host>, many: bool) -> Router {
    let mut root = Router::new().route("/healthz", get(healthz));
    let set = host.set.clone();
    if !many {
        let one = host
            .directory
            .all()
            .into_iter()
            .next()
            .expect("one bot")
            .app();
        root = root.route(
            "/metrics",
            get(render_metrics).with_state((set, MetricsPage::All)),
        );
        root = root.merge(bot_routes(one.clone()));
        if one.server.webhook {
            root = root.merge(webhook_route(one.clone()));
        }
        return root;
    }
    let top = host.config.runtime.metrics_top_bots;
    root = root
        .route(
            "/metrics",
            get(render_metrics).with_state((set, MetricsPage::Root(top))),
        )
        .route("/readyz", get(readyz_all).with_state(host.clone()));
    if !host.config.server.admin_token.is_empty() {
        root = root.merge(super::registry::routes(host.clone()));
    }
    let host = host.clone();
    root.fallback(move |req: axum::extract::Request| {
        let host = host.clone();
        async move { to_bot(&host, req).await }
    })
}

/// A request for one bot of several: its webhook, or one of its routes under
/// `/bots/<name>`.
async fn to_bot(host: &Host, req: axum::extract::Request) -> Response {
    let path = req.uri().path();
    if req.method() == axum::http::Method::POST {
        if let Some(app) = host.directory.webhook(path) {
            return webhook(State(app), req).await;
        }
    }
    let Some((name, tail)) = path
        .strip_prefix("/bots/")
        .map(|rest| rest.split_once('/').unwrap_or((rest, "")))
    else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let Some(live) = host.directory.get(name) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if tail == "metrics" && req.method() == axum::http::Method::GET {
        let page = MetricsPage::Bot(name.into());
        return render_metrics(State((host.set.clone(), page))).await;
    }
    let local = match req.uri().query() {
        Some(q) => format!("/{tail}?{q}"),
        None => format!("/{tail}"),
    };
    let (mut parts, body) = req.into_parts();
    let Ok(uri) = local.parse() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    parts.uri = uri;
    let routes = bot_routes(live.app());
    match tower::ServiceExt::oneshot(routes, axum::extract::Request::from_parts(parts, body)).await
    {
        Ok(r) => r,
        Err(never) => match never {},
    }
}

fn webhook_route(app: Arc<App>) -> Router {
    Router::new()
        .route(&app.server.webhook_path, post(webhook))
        .with_state(app)
}

/// One bot's routes: its readiness, and its debug and admin endpoints when
/// they are on.
fn bot_routes(shared: Arc<App>) -> Router {
    let mut app = Router::new().route("/readyz", get(readyz));
    if shared.server.debug {
        app = app
            .route("/debug/flow", get(debug_flow))
            .route("/debug/flow/around/{state}", get(debug_flow_around))
            .route("/debug/clock", get(debug_clock).post(debug_clock_advance))
            .route("/debug/conversations/{id}", get(debug_conversation));
    }
    if !shared.server.api_token.is_empty() {
        app = app.route("/api/start", post(api_start));
    }
    if !shared.server.admin_token.is_empty() {
        app = app
            .route("/admin/conversations/{id}/release", post(admin_release))
            .route("/admin/dead-letters", get(admin_dead_letters))
            .route("/admin/dead-letters/{id}", get(admin_dead_letter))
            .route("/admin/dead-letters/{id}/retry", post(admin_retry))
            .route("/admin/reports/{kind}", get(admin_report))
            .route(
                "/admin/retention",
                get(admin_retention).post(admin_retention),
            )
            .route("/admin/contacts/{id}", axum::routing::delete(admin_erase))
            .route("/admin/contacts/{id}/export", get(admin_export))
            .route("/console", get(super::console::page))
            .route("/console/login", post(super::console::sign_in));
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
    let (ready, body) = readiness(&shared).await;
    readiness_reply(ready, &body)
}

/// Past this many bots the root `/readyz` runs no bot's checks (each is a
/// store write and a Qpien token): it checks the store once and reports what
/// each bot's own `/bots/<name>/readyz` found last.
const CHECKED_AT_ROOT: usize = 100;

/// The root `/readyz` of a process that runs several bots: ready while it
/// serves and at least one bot is ready (a bot that cannot work must not take
/// the others out of a load balancer); each bot's state in `bots`, and at
/// `/bots/<name>/readyz`. With more than [`CHECKED_AT_ROOT`] bots: ready
/// while it serves and the store answers; each bot's last checks, `null`
/// where none ran yet.
async fn readyz_all(State(host): State<Arc<Host>>) -> Response {
    let lives = host.directory.all();
    let apps: Vec<Arc<App>> = lives.iter().map(|l| l.app()).collect();
    let stopping = host.stop.is_stopping();
    let mut bots = serde_json::Map::new();
    let ready = if apps.len() <= CHECKED_AT_ROOT {
        let states = futures_util::future::join_all(apps.iter().map(|a| readiness(a))).await;
        // A process of the registry's bots may have none yet: it serves.
        let any = lives.is_empty() || states.iter().any(|(ready, _)| *ready);
        for ((live, app), (_, mut body)) in lives.iter().zip(&apps).zip(states) {
            body["state"] = serde_json::Value::from(super::registry::state_of(live).await);
            bots.insert(app.name.clone().unwrap_or_default(), body);
        }
        any && !stopping
    } else {
        let store = tokio::time::timeout(Duration::from_secs(2), apps[0].store.ping()).await;
        let store_ok = matches!(store, Ok(Ok(())));
        for (live, app) in lives.iter().zip(&apps) {
            let last = app.checked.try_lock().ok().and_then(|c| c.clone());
            let ready = last
                .map(|(_, c)| c.ready())
                .map_or(serde_json::Value::Null, serde_json::Value::from);
            bots.insert(
                app.name.clone().unwrap_or_default(),
                serde_json::json!({
                    "ready": ready,
                    "state": super::registry::state_of(live).await,
                }),
            );
        }
        store_ok && !stopping
    };
    let body = serde_json::json!({
        "ready": ready,
        "stopping": stopping,
        "bots": bots,
    });
    readiness_reply(ready, &body)
}

/// A readiness answer: 200 when ready, else 503, with the reasons.
fn readiness_reply(ready: bool, body: &serde_json::Value) -> Response {
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

/// Whether one bot is ready, and why not.
async fn readiness(shared: &App) -> (bool, serde_json::Value) {
    // One check at a time; callers meanwhile wait for its answer.
    let checks = {
        let mut last = shared.checked.lock().await;
        match last.as_ref() {
            Some((at, checks)) if at.elapsed() < CHECKS_FOR => checks.clone(),
            _ => {
                let checks = run_checks(shared).await;
                *last = Some((std::time::Instant::now(), checks.clone()));
                checks
            }
        }
    };
    let ready = checks.ready() && !shared.stop.is_stopping();
    let body = serde_json::json!({
        "ready": ready,
        "store": checks.store.as_deref().unwrap_or("ok"),
        "flow": match &checks.flow {
            Ok(name) => serde_json::Value::from(name.as_str()),
            Err(e) => serde_json::json!({ "error": e }),
        },
        "qpien": checks.qpien.as_deref().unwrap_or("ok"),
        "stopping": shared.stop.is_stopping(),
    });
    (ready, body)
}

/// Checks that the store can write, that a Qpien token can be had and that
/// the flow compiles (it is compiled now if no turn needed it yet).
async fn run_checks(shared: &App) -> Checks {
    let flow = shared
        .bot
        .get()
        .await
        .map(|b| b.flow().name.clone())
        .map_err(|e| e.to_string());
    let store = tokio::time::timeout(Duration::from_secs(2), shared.store.ping()).await;
    let store_msg = match store {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(format!("cannot write: {e}")),
        Err(_) => Some("no answer within 2s".to_owned()),
    };
    let token = tokio::time::timeout(Duration::from_secs(5), shared.client.check_token()).await;
    let token_msg = match token {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => Some(match shared.client.last_token_error() {
            Some(e) => format!("no token within 5s; the last attempt: {e}"),
            None => "no token within 5s".to_owned(),
        }),
    };
    Checks {
        store: store_msg,
        qpien: token_msg,
        flow,
    }
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
    flow_diagram(&shared, None).await
}

/// Only `state` and the states one step from it.
async fn debug_flow_around(
    State(shared): State<Arc<App>>,
    axum::extract::Path(state): axum::extract::Path<String>,
) -> Response {
    flow_diagram(&shared, Some(&state)).await
}

/// The flow as Mermaid, whole or `around` a state.
async fn flow_diagram(shared: &App, around: Option<&str>) -> Response {
    let bot = match shared.bot.get().await {
        Ok(b) => b,
        Err(e) => return flow_unavailable(e),
    };
    let flow = bot.flow();
    let mermaid = match around {
        None => flow.to_mermaid(),
        Some(name) => match flow.state_id(name) {
            Some(id) => flow.to_mermaid_around(id),
            None => {
                return debug_json(
                    StatusCode::NOT_FOUND,
                    serde_json::json!({"error": format!("the flow has no state `{name}`")}),
                )
            }
        },
    };
    debug_json(
        StatusCode::OK,
        serde_json::json!({"name": flow.name, "mermaid": mermaid}),
    )
}

/// The bot's clock: its time, and whether it can be moved (`flowbot demo`'s
/// can; the system's cannot).
async fn debug_clock(State(shared): State<Arc<App>>) -> Response {
    let movable = shared.clock.advance(Duration::ZERO);
    debug_json(
        StatusCode::OK,
        serde_json::json!({"now": shared.clock.now(), "movable": movable}),
    )
}

/// `{"advance": "1h"}`: moves the bot's clock forward (at most a year at a
/// time); due nudges, schedules and expiries fire at the timers' next round.
#[derive(serde::Deserialize)]
struct Advance {
    advance: String,
}

async fn debug_clock_advance(State(shared): State<Arc<App>>, body: Body) -> Response {
    let parsed = match axum::body::to_bytes(body, 4096).await {
        Ok(b) => serde_json::from_slice::<Advance>(&b).map_err(|e| e.to_string()),
        Err(_) => Err("the body is larger than 4096 bytes".to_owned()),
    };
    let by = match parsed {
        Ok(a) => humantime::parse_duration(&a.advance).map_err(|e| {
            format!(
                "`advance`: `{}` is not a duration (such as 1h or 1day): {e}",
                a.advance
            )
        }),
        Err(e) => Err(format!("the body must be {{\"advance\": \"1h\"}}: {e}")),
    };
    let by = match by.and_then(|by| {
        if by <= Duration::from_secs(366 * 86_400) {
            Ok(by)
        } else {
            Err("`advance`: at most a year at a time".to_owned())
        }
    }) {
        Ok(by) => by,
        Err(e) => return debug_json(StatusCode::BAD_REQUEST, serde_json::json!({"error": e})),
    };
    if !shared.clock.advance(by) {
        return debug_json(
            StatusCode::CONFLICT,
            serde_json::json!({"error": "this bot runs on the system's clock, which cannot be moved (flowbot demo's can)"}),
        );
    }
    tracing::info!(by = %humantime::format_duration(by), "the bot's clock moved forward");
    debug_json(
        StatusCode::OK,
        serde_json::json!({"now": shared.clock.now(), "movable": true}),
    )
}

/// The bot's flow does not compile (a broken file read at start).
fn flow_unavailable(e: crate::engine::BotError) -> Response {
    debug_json(
        StatusCode::SERVICE_UNAVAILABLE,
        serde_json::json!({"error": format!("the flow does not compile: {e}")}),
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
    let bot = match shared.bot.get().await {
        Ok(b) => b,
        Err(e) => return flow_unavailable(e),
    };
    let node = bot.flow().state_id(&record.state).map(|i| format!("s{i}"));
    // Personal data (`pii`) is shown masked.
    let vars: serde_json::Map<String, serde_json::Value> = record
        .session
        .vars
        .iter()
        .map(|(k, v)| {
            let shown = match bot.flow().is_private(k) {
                true => serde_json::Value::from("[pii]"),
                false => serde_json::to_value(v).unwrap_or_default(),
            };
            (k.to_string(), shown)
        })
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
            // WhatsApp's 24-hour window (the playground shows it).
            // 0: closed, the customer never wrote (a started conversation).
            "window_closes": record.channel.capabilities().reply_window_ms.map(|w| {
                match record.session.customer_at {
                    0 => 0,
                    at => at.saturating_add(w),
                }
            }),
            "now": shared.clock.now(),
            // The last classified message: intent (null: not sure),
            // confidence, and which classifier (absent: the built-in one).
            "intent": shared.metrics.classify.recent.as_ref().and_then(|r| r.get(&id)),
        }),
    )
}

/// Which `/metrics` page.
#[derive(Debug, Clone)]
enum MetricsPage {
    /// Every series (the one bot of a single-bot process).
    All,
    /// Totals of all bots and the series of this many of the busiest.
    Root(usize),
    /// One bot's series.
    Bot(Arc<str>),
}

async fn render_metrics(State((set, page)): State<(Arc<MetricSet>, MetricsPage)>) -> Response {
    let text = set.render();
    let text = match page {
        MetricsPage::All => text,
        MetricsPage::Root(top) => super::metrics_pages::root(&text, top),
        MetricsPage::Bot(name) => super::metrics_pages::of_bot(&text, &name),
    };
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

async fn webhook(State(shared): State<Arc<App>>, req: axum::extract::Request) -> Response {
    let started = Instant::now();
    // The request's own headers (the `HeaderMap` extractor would copy them).
    let (parts, body) = req.into_parts();
    let headers = parts.headers;
    let (status, result) = handle(&shared, &headers, body)
        .instrument(shared.span.clone())
        .await;
    shared.metrics.webhooks.count(result);
    shared
        .metrics
        .ack_latency
        .observe(started.elapsed().as_secs_f64());
    let mut r = reply(status, result);
    if status == StatusCode::SERVICE_UNAVAILABLE {
        r.headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("5"));
    }
    r
}

/// Whether a header's name (lower case, as `http` keeps it) looks like it
/// carries a credential: `authorization`, `cookie`, `x-api-key`,
/// `x-auth-token`, `x-hub-signature`, a session or a password...
fn is_credential(name: &str) -> bool {
    const WORDS: &[&str] = &[
        "auth",
        "cookie",
        "key",
        "token",
        "secret",
        "signature",
        "password",
        "passwd",
        "session",
        "credential",
        "jwt",
        "bearer",
    ];
    WORDS.iter().any(|w| name.contains(w))
}

/// The headers worth keeping with a dead letter: all but the signature and
/// credentials, as a JSON object.
pub(crate) fn kept_headers(headers: &HeaderMap) -> String {
    let kept: serde_json::Map<String, serde_json::Value> = headers
        .iter()
        .filter(|(name, _)| {
            let n = name.as_str();
            !n.eq_ignore_ascii_case(SIGNATURE_HEADER) && !is_credential(n)
        })
        .map(|(n, v)| {
            (
                n.as_str().to_owned(),
                serde_json::Value::from(String::from_utf8_lossy(v.as_bytes()).into_owned()),
            )
        })
        .collect();
    serde_json::Value::Object(kept).to_string()
}

async fn handle(shared: &App, headers: &HeaderMap, body: Body) -> (StatusCode, &'static str) {
    // The signature first (nothing is read without one), then the size, then
    // the body, whatever its Content-Type says.
    let signature = headers
        .get(SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if signature.is_empty() {
        tracing::warn!("webhook refused: no signature");
        return (StatusCode::UNAUTHORIZED, "bad_signature");
    }
    let body = match axum::body::to_bytes(body, shared.server.max_body_bytes).await {
        Ok(b) => b,
        Err(e) if is_timeout(&e) => {
            tracing::warn!("webhook refused: the body took longer than server.body_timeout");
            return (StatusCode::REQUEST_TIMEOUT, "body_timeout");
        }
        Err(_) => return (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
    };
    let secret = shared.server.webhook_secret.expose().as_bytes();
    if !webhook::verify(secret, &body, signature) {
        tracing::warn!("webhook refused: bad signature");
        return (StatusCode::UNAUTHORIZED, "bad_signature");
    }
    if let Some(capture) = &shared.capture {
        capture.keep(kept_headers(headers), &body);
    }
    // Signed, and from the simulator: test traffic.
    let simulated = headers.contains_key(webhook::SIMULATOR_HEADER);
    let ingested = match shared.client.intake().delivery(&body, &arrival()) {
        Delivery::Event(mut i) => {
            if let (true, crate::message::Event::Message(m)) = (simulated, &mut i.event) {
                m.test = true;
            }
            *i
        }
        Delivery::Ignored(why) => {
            tracing::debug!(%why, "webhook delivery ignored");
            return (StatusCode::OK, "ignored");
        }
        Delivery::Unusable(reason) => {
            // Signed, so from Qpien: acknowledged (a refusal would be retried
            // for ever) and kept for a person to look at.
            let keys = top_level_keys(&body);
            let letter = DeadLetter {
                id: 0,
                received_at: shared.clock.now(),
                reason: reason.clone(),
                headers: kept_headers(headers),
                body: body.to_vec(),
            };
            shared.metrics.dead_letters.inc();
            return match shared.store.add_dead_letter(letter).await {
                Ok(id) => {
                    tracing::warn!(id, %reason, ?keys, "webhook delivery kept as a dead letter");
                    (StatusCode::OK, "dead_letter")
                }
                Err(e) => {
                    tracing::error!(error = %e, %reason, "cannot keep a dead letter");
                    (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable")
                }
            };
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

/// A request that carries the admin token (else it is refused with 401).
struct Admin;

impl axum::extract::FromRequestParts<Arc<App>> for Admin {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &Arc<App>,
    ) -> Result<Self, Response> {
        if is_admin(state, &parts.headers) {
            Ok(Admin)
        } else {
            Err(unauthorized())
        }
    }
}

/// Whether a request carries the admin token (`Authorization: Bearer <token>`),
/// compared in constant time.
fn is_admin(shared: &App, headers: &HeaderMap) -> bool {
    bearer_is(headers, shared.server.admin_token.expose())
}

/// Whether the request carries `Bearer <want>` (compared in constant time).
pub(crate) fn bearer_is(headers: &HeaderMap, want: &str) -> bool {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    !want.is_empty() && constant_eq(given.as_bytes(), want.as_bytes())
}

/// Whether two secrets are equal, in a time that does not depend on where
/// they differ.
pub(crate) fn constant_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether the query says `name=true` (or `1`, `yes`, `on`).
fn query_flag(query: Option<&str>, name: &str) -> bool {
    url::form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .any(|(k, v)| k == name && matches!(&*v, "true" | "1" | "yes" | "on"))
}

fn json_reply(status: StatusCode, v: serde_json::Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response()
}

fn store_failed(e: crate::store::StoreError) -> Response {
    json_reply(
        StatusCode::SERVICE_UNAVAILABLE,
        serde_json::json!({"error": e.to_string()}),
    )
}

fn no_letter(id: u64) -> Response {
    json_reply(
        StatusCode::NOT_FOUND,
        serde_json::json!({"error": format!("no dead letter {id}")}),
    )
}

fn unauthorized() -> Response {
    json_reply(
        StatusCode::UNAUTHORIZED,
        serde_json::json!({"error": "the admin token is missing or wrong"}),
    )
}

/// Gives a conversation back to the bot (`flowbot release`).
/// `POST /api/start`: what the business asks for.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct StartRequest {
    /// The conversation (Qpien's id).
    conversation: String,
    /// The state to start in.
    state: String,
    /// Variables set first.
    #[serde(default)]
    vars: std::collections::BTreeMap<String, serde_json::Value>,
    /// `interrupt` (default), `skip` or `queue`.
    #[serde(default)]
    mode: crate::message::StartMode,
    /// The channel of a conversation the bot has not seen (default WhatsApp).
    #[serde(default)]
    channel: Option<crate::message::Channel>,
    /// An idempotency key: a start with a key already seen is not run again.
    #[serde(default)]
    key: Option<String>,
    /// Test traffic: the run is left out of reports.
    #[serde(default)]
    test: bool,
}

/// Starts a conversation in a state (`flowbot start`): authenticated by
/// `server.api_token`; the state is checked against the flow in service; the
/// start is stored in the inbox like a message (so exactly once per `key`,
/// across restarts and instances) and runs in the conversation's turn order.
async fn api_start(State(shared): State<Arc<App>>, headers: HeaderMap, body: Body) -> Response {
    if !bearer_is(&headers, shared.server.api_token.expose()) {
        return unauthorized();
    }
    let bytes = match axum::body::to_bytes(body, shared.server.max_body_bytes).await {
        Ok(b) => b,
        Err(_) => {
            return json_reply(
                StatusCode::PAYLOAD_TOO_LARGE,
                serde_json::json!({"error": format!("the body is larger than {} bytes", shared.server.max_body_bytes)}),
            )
        }
    };
    let request: StartRequest = match serde_json::from_slice(&bytes) {
        Ok(r) => r,
        Err(e) => {
            return json_reply(
                StatusCode::BAD_REQUEST,
                serde_json::json!({"error": format!("line {} column {}: {e}", e.line(), e.column())}),
            )
        }
    };
    if !crate::qpien::ingest::usable(&request.conversation) {
        return json_reply(
            StatusCode::BAD_REQUEST,
            serde_json::json!({"error": format!("conversation: {}", crate::qpien::ingest::ID_RULE)}),
        );
    }
    let bot = match shared.bot.get().await {
        Ok(b) => b,
        Err(e) => {
            return json_reply(
                StatusCode::SERVICE_UNAVAILABLE,
                serde_json::json!({"error": format!("the flow does not compile: {e}")}),
            )
        }
    };
    if bot.flow().state_id(&request.state).is_none() {
        let hint = crate::flow::did_you_mean(&request.state, bot.flow().state_names())
            .map(|s| format!("; did you mean `{s}`?"))
            .unwrap_or_default();
        return json_reply(
            StatusCode::BAD_REQUEST,
            serde_json::json!({"error": format!("state: the flow has no state `{}`{hint}", request.state)}),
        );
    }
    let key = match &request.key {
        Some(k) if crate::qpien::ingest::usable(k) => format!("start:{k}"),
        Some(_) => {
            return json_reply(
                StatusCode::BAD_REQUEST,
                serde_json::json!({"error": "key: 1 to 256 characters"}),
            )
        }
        None => format!("start:{}:{}", request.conversation, arrival()),
    };
    let ingested = crate::qpien::Ingested {
        key,
        conversation: request.conversation.clone(),
        event: crate::message::Event::Start(crate::message::Start {
            state: request.state,
            vars: request.vars,
            mode: request.mode,
            channel: request.channel,
            test: request.test,
        }),
    };
    if shared.inbox.is_full() {
        let mut r = json_reply(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"error": "busy"}),
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("5"));
        return r;
    }
    if let Err(wait) = shared
        .starts
        .take(&request.conversation, shared.clock.now())
    {
        let secs = (wait + 999) / 1000;
        let mut r = json_reply(
            StatusCode::TOO_MANY_REQUESTS,
            serde_json::json!({"error": format!(
                "conversation {} was started {} times in the last hour (server.start_limit); try again in {secs} s",
                request.conversation, shared.server.start_limit
            )}),
        );
        if let Ok(v) = header::HeaderValue::from_str(&secs.to_string()) {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return r;
    }
    match shared.inbox.accept(ingested).await {
        Ok(true) => json_reply(
            StatusCode::ACCEPTED,
            serde_json::json!({"conversation": request.conversation, "status": "start queued"}),
        ),
        Ok(false) => {
            shared.starts.give_back(&request.conversation);
            json_reply(
                StatusCode::OK,
                serde_json::json!({"conversation": request.conversation, "status": "duplicate"}),
            )
        }
        Err(e) => {
            shared.starts.give_back(&request.conversation);
            store_failed(e)
        }
    }
}

async fn admin_release(
    State(shared): State<Arc<App>>,
    _: Admin,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Response {
    // The rule every entry point applies to conversation ids.
    if !crate::qpien::ingest::usable(&id) {
        return json_reply(
            StatusCode::BAD_REQUEST,
            serde_json::json!({"error": format!("conversation: {}", crate::qpien::ingest::ID_RULE)}),
        );
    }
    let ingested = crate::qpien::Ingested {
        key: format!("release:{id}:{}", crate::time::now()),
        conversation: id.clone(),
        event: crate::message::Event::Release,
    };
    match shared.inbox.accept(ingested).await {
        Ok(_) => json_reply(
            StatusCode::ACCEPTED,
            serde_json::json!({"conversation": id, "status": "release queued"}),
        ),
        Err(e) => store_failed(e),
    }
}

fn letter_json(d: &DeadLetter) -> serde_json::Value {
    serde_json::json!({
        "id": d.id,
        "received_at": d.received_at,
        "reason": d.reason,
        "bytes": d.body.len(),
        "keys": top_level_keys(&d.body),
        "headers": serde_json::from_str::<serde_json::Value>(&d.headers).unwrap_or_default(),
        "body": String::from_utf8_lossy(&d.body),
    })
}

/// A page of the dead-letter listing: `?before=ID&limit=N`.
#[derive(Debug, Default)]
struct Page {
    before: Option<u64>,
    limit: Option<usize>,
}

impl Page {
    /// Reads `before` and `limit` (whole numbers) from a query; another key
    /// or value is an error.
    fn parse(query: Option<&str>) -> Option<Page> {
        let mut page = Page::default();
        for (key, value) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            match &*key {
                "before" => page.before = Some(value.parse().ok()?),
                "limit" => page.limit = Some(value.parse().ok()?),
                _ => return None,
            }
        }
        Some(page)
    }
}

/// The most dead letters one listing page holds (summaries only: a body is
/// read by id).
const MAX_PAGE: usize = 1_000;

/// A report of the conversation event log (see [`crate::insights::report`]):
/// `funnel`, `outcomes` or `answers`, as a JSON array of rows; the query
/// `from`, `to` (a day, inclusive, or an RFC 3339 time; the last 7 days by
/// default), `flow_version`, `channel`, `include_test=true`.
async fn admin_report(
    State(shared): State<Arc<App>>,
    _: Admin,
    axum::extract::Path(kind): axum::extract::Path<String>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> Response {
    use crate::insights::report::Runs;
    let q = match report_query(&shared, query.as_deref()).await {
        Ok(q) => q,
        Err(why) => return json_reply(StatusCode::BAD_REQUEST, serde_json::json!({"error": why})),
    };
    let runs = match Runs::read(&*shared.store, &q).await {
        Ok(r) => r,
        Err(e) => return store_failed(e),
    };
    let rows = match kind.as_str() {
        "funnel" => serde_json::to_value(runs.funnel()),
        "outcomes" => serde_json::to_value(runs.outcomes()),
        "answers" => serde_json::to_value(runs.answers()),
        other => {
            return json_reply(
                StatusCode::NOT_FOUND,
                serde_json::json!({"error": format!("no report `{other}`: funnel, outcomes or answers")}),
            )
        }
    };
    json_reply(StatusCode::OK, rows.unwrap_or_default())
}

/// `[retention]` applied now (POST), or what it would remove (GET, or
/// `?dry_run=true`): the count per kind.
async fn admin_retention(
    State(shared): State<Arc<App>>,
    _: Admin,
    method: axum::http::Method,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> Response {
    let dry_run = method == axum::http::Method::GET || query_flag(query.as_deref(), "dry_run");
    let now = shared.clock.now();
    match super::retention::sweep(&shared, &shared.retention, now, dry_run).await {
        Ok(swept) => json_reply(
            StatusCode::OK,
            serde_json::json!({"dry_run": dry_run, "removed": swept}),
        ),
        Err(e) => store_failed(e),
    }
}

/// Erases everything held of a contact (`?dry_run=true`: counts it); see
/// [`super::erasure`].
async fn admin_erase(
    State(shared): State<Arc<App>>,
    _: Admin,
    axum::extract::Path(who): axum::extract::Path<String>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> Response {
    let dry_run = query_flag(query.as_deref(), "dry_run");
    if who.trim().is_empty() || who.chars().count() > 256 {
        return json_reply(
            StatusCode::BAD_REQUEST,
            serde_json::json!({"error": "the contact is a conversation id, a phone number or an e-mail address (1 to 256 characters)"}),
        );
    }
    match super::erasure::erase(&shared, &who, dry_run).await {
        Ok(erased) => {
            let mut body = serde_json::to_value(&erased).unwrap_or_default();
            body["dry_run"] = dry_run.into();
            json_reply(StatusCode::OK, body)
        }
        Err(e) => store_failed(e),
    }
}

/// Everything held of a contact, as JSON (an access request).
async fn admin_export(
    State(shared): State<Arc<App>>,
    _: Admin,
    axum::extract::Path(who): axum::extract::Path<String>,
) -> Response {
    match super::erasure::export(&shared, &who).await {
        Ok(held) => json_reply(StatusCode::OK, held),
        Err(e) => store_failed(e),
    }
}

/// A report's query (`from`, `to`, `flow_version`, `channel`,
/// `include_test`), the last 7 days by default, runs quiet past the flow's
/// `session_timeout` abandoned.
pub(crate) async fn report_query(
    shared: &App,
    query: Option<&str>,
) -> Result<crate::insights::report::Query, String> {
    let now = shared.clock.now();
    let mut q = crate::insights::report::Query::last_week(now);
    if let Ok(bot) = shared.bot.get().await {
        if let Some(t) = bot.flow().settings.session_timeout_ms {
            q.quiet = i64::try_from(t).unwrap_or(i64::MAX);
        }
    }
    for (key, value) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match &*key {
            "from" | "to" if value.is_empty() => {}
            "from" => {
                q.from = report_time(&value, false).ok_or_else(|| {
                    format!("`from`: `{value}` is not a day (2026-12-01) or an RFC 3339 time")
                })?
            }
            "to" => {
                q.to = report_time(&value, true).ok_or_else(|| {
                    format!("`to`: `{value}` is not a day (2026-12-01) or an RFC 3339 time")
                })?
            }
            "flow_version" => q.flow_version = Some(value.into_owned()).filter(|v| !v.is_empty()),
            "channel" => q.channel = Some(value.into_owned()).filter(|v| !v.is_empty()),
            "include_test" => q.include_test = matches!(&*value, "true" | "1" | "yes" | "on"),
            other => {
                return Err(format!(
                "unknown `{other}`: the query takes from, to, flow_version, channel, include_test"
            ))
            }
        }
    }
    if q.from >= q.to {
        return Err("`from` must be before `to`".into());
    }
    Ok(q)
}

/// A report's bound: a day (the start of it, or with `end` the start of the
/// next, so that `to` includes it) or an RFC 3339 time.
fn report_time(s: &str, end: bool) -> Option<crate::time::Millis> {
    if let Ok(day) = s.parse::<jiff::civil::Date>() {
        let day = if end { day.tomorrow().ok()? } else { day };
        return crate::time::parse_time(&format!("{day}T00:00:00Z"));
    }
    crate::time::parse_time(s)
}

/// The dead letters, newest first, a page at a time (`before` the last id of
/// the page before; 100 by default, at most 1,000): summaries, never bodies,
/// so a listing's memory does not grow with what the letters hold.
async fn admin_dead_letters(
    State(shared): State<Arc<App>>,
    _: Admin,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> Response {
    let Some(page) = Page::parse(query.as_deref()) else {
        return json_reply(
            StatusCode::BAD_REQUEST,
            serde_json::json!({"error": "the query is `before=ID&limit=N` (whole numbers)"}),
        );
    };
    let limit = page.limit.unwrap_or(100).clamp(1, MAX_PAGE);
    match shared.store.dead_letters(page.before, limit).await {
        Ok(list) => json_reply(
            StatusCode::OK,
            serde_json::Value::Array(
                list.iter()
                    .map(|d| {
                        serde_json::json!({
                            "id": d.id,
                            "received_at": d.received_at,
                            "reason": d.reason,
                            "bytes": d.bytes,
                        })
                    })
                    .collect(),
            ),
        ),
        Err(e) => store_failed(e),
    }
}

async fn admin_dead_letter(
    State(shared): State<Arc<App>>,
    _: Admin,
    axum::extract::Path(id): axum::extract::Path<u64>,
) -> Response {
    match shared.store.dead_letter(id).await {
        Ok(Some(d)) => json_reply(StatusCode::OK, letter_json(&d)),
        Ok(None) => no_letter(id),
        Err(e) => store_failed(e),
    }
}

/// Reads a dead letter again with the rules in force now (a newer flowbot, a
/// changed `qpien.sender_types`): usable, it is run and removed; still
/// unusable, it stays (409).
async fn admin_retry(
    State(shared): State<Arc<App>>,
    _: Admin,
    axum::extract::Path(id): axum::extract::Path<u64>,
) -> Response {
    let letter = match shared.store.dead_letter(id).await {
        Ok(Some(d)) => d,
        Ok(None) => return no_letter(id),
        Err(e) => return store_failed(e),
    };
    let key = format!("dead-letter-{id}");
    let status = match shared.client.intake().delivery(&letter.body, &key) {
        Delivery::Unusable(reason) => {
            return json_reply(
                StatusCode::CONFLICT,
                serde_json::json!({"id": id, "status": "still unusable", "reason": reason}),
            )
        }
        Delivery::Ignored(why) => format!("ignored: {why}"),
        Delivery::Event(ingested) => match shared.inbox.accept(*ingested).await {
            Ok(true) => "accepted".to_owned(),
            Ok(false) => "duplicate".to_owned(),
            Err(e) => return store_failed(e),
        },
    };
    if let Err(e) = shared.store.remove_dead_letter(id).await {
        tracing::warn!(id, error = %e, "a retried dead letter could not be removed; it may be retried again");
    }
    json_reply(
        StatusCode::OK,
        serde_json::json!({"id": id, "status": status}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_headers_drop_every_credential() {
        let mut h = HeaderMap::new();
        for (name, value) in [
            ("content-type", "application/json"),
            ("x-request-id", "r-1"),
            ("x-api-key", "k"),
            ("authorization", "Bearer t"),
            ("x-auth-token", "t"),
            ("cookie", "s=1"),
            ("x-hub-signature-256", "sha256=x"),
            ("x-client-secret", "s"),
            ("x-session-id", "s"),
        ] {
            h.insert(
                header::HeaderName::from_static(name),
                header::HeaderValue::from_static(value),
            );
        }
        h.insert(SIGNATURE_HEADER, header::HeaderValue::from_static("sig"));
        let kept: serde_json::Value = serde_json::from_str(&kept_headers(&h)).unwrap();
        let names: Vec<&str> = kept
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        assert_eq!(names, ["content-type", "x-request-id"]);
    }
}
