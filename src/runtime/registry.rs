//! The bot registry, as the running process follows it: `[[bots]]` imported
//! at start (the file wins for the bots it names), every row applied to the
//! [`Directory`](super::host::Directory) (a bot added, changed, paused,
//! resumed, removed), and the admin API that changes it (`/admin/bots`,
//! Bearer `server.admin_token`; `flowbot bots ...` calls it).
//!
//! Every instance reads the rows changed since the last it applied: at once
//! when PostgreSQL's `NOTIFY` says a row changed, and every
//! `runtime.registry_interval` in any case (a notification lost with its
//! connection is then made up for). The instance that takes an API call
//! writes the row, then applies it before it answers, so the call's effect
//! is there when `flowbot bots add` returns.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Map, Value};
use tokio::task::JoinHandle;

use super::host::{Applied, Host, Live};
use super::{RuntimeError, Spec};
use crate::store::{BotRecord, BotSource, BotState, NewBot};
use futures_util::StreamExt;

/// The keys of a bot's specification that hold credentials: given through
/// the API they are sealed before they are stored.
const CREDENTIALS: [(&str, Option<&str>); 3] = [
    ("client_id", Some("qpien")),
    ("client_secret", Some("qpien")),
    ("webhook_secret", None),
];

/// How many bots start at once (their store calls share commits).
const STARTING_AT_ONCE: usize = 64;

/// Largest specification the API takes (bytes of JSON).
const MAX_SPEC_BYTES: usize = 64 * 1024;

/// Imports `[[bots]]` into the registry, starts every bot it holds,
/// and watches it for changes. A `[[bots]]` entry that cannot start stops
/// the start (as before the registry); a bot registered through the API
/// that cannot is left out, with an error in the log, and the others start.
pub(crate) async fn open(host: &Arc<Host>) -> Result<JoinHandle<()>, RuntimeError> {
    let book = host.book.clone().expect("a registry");
    let rows = book.bots_since(0).await?;
    let by_name: std::collections::HashMap<&str, &BotRecord> =
        rows.iter().map(|r| (r.name.as_str(), r)).collect();
    let mut writes = Vec::new();
    for bot in &host.config.bots {
        let spec = bot
            .spec
            .clone()
            .unwrap_or_else(|| json!({ "flow": bot.flow }))
            .to_string();
        let row = by_name.get(bot.name.as_str()).copied();
        // Paused stays paused across a restart; removed or new: active.
        let state = match row.map(|r| r.state) {
            Some(BotState::Paused) => BotState::Paused,
            _ => BotState::Active,
        };
        let same =
            row.is_some_and(|r| r.spec == spec && r.source == BotSource::File && r.state == state);
        if !same {
            writes.push(NewBot {
                name: bot.name.clone(),
                spec,
                state,
                source: BotSource::File,
            });
        }
    }
    let in_file: std::collections::HashSet<&str> =
        host.config.bots.iter().map(|b| b.name.as_str()).collect();
    for row in &rows {
        if row.source == BotSource::File
            && row.state != BotState::Removed
            && !in_file.contains(row.name.as_str())
        {
            tracing::warn!(
                bot = %row.name,
                "this bot is no longer in the configuration's [[bots]]: removed from the \
                 registry (its conversations stay in the store)"
            );
            writes.push(NewBot {
                name: row.name.clone(),
                spec: row.spec.clone(),
                state: BotState::Removed,
                source: BotSource::File,
            });
        }
    }
    // One commit for them all, however many bots the file names.
    if !writes.is_empty() {
        book.put_bots(&writes).await?;
    }
    // Every bot at once (each has its own name, so its own row): their store
    // handles and resumed work are read in shared commits. The file's bots
    // must start.
    let mut seen = host.seen.lock().await;
    let rows = book.bots_since(0).await?;
    *seen = rows.iter().map(|r| r.version).max().unwrap_or(0);
    let started = futures_util::stream::iter(
        rows.iter()
            .map(|row| async move { (row, apply(host, row).await) }),
    )
    .buffer_unordered(STARTING_AT_ONCE)
    .collect::<Vec<_>>()
    .await;
    for (row, result) in started {
        if let Err(e) = result {
            if row.source == BotSource::File && in_file.contains(row.name.as_str()) {
                return Err(e);
            }
            tracing::error!(bot = %row.name, error = %e, "a registered bot cannot start; the others do");
        }
    }
    drop(seen);
    let changes = book.registry_changes().await?;
    let host = host.clone();
    Ok(tokio::spawn(async move {
        let mut changes = changes;
        let every = host.config.runtime.registry_interval;
        loop {
            let go_on = match changes.as_mut() {
                Some(rx) => tokio::select! {
                    got = rx.recv() => got.is_some() || host.stop.pause(every).await,
                    go = host.stop.pause(every) => go,
                },
                None => host.stop.pause(every).await,
            };
            if !go_on || host.stop.is_stopping() {
                return;
            }
            sync(&host).await;
        }
    }))
}

/// Applies every row changed since the last applied.
pub(crate) async fn sync(host: &Host) {
    let Some(book) = &host.book else { return };
    let mut seen = host.seen.lock().await;
    let rows = match book.bots_since(*seen).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the bot registry");
            return;
        }
    };
    for row in rows {
        *seen = (*seen).max(row.version);
        if let Err(e) = apply(host, &row).await {
            tracing::error!(bot = %row.name, error = %e, "a change of a registered bot cannot be applied");
        }
    }
}

/// What a row says about its bot, made so here.
async fn apply(host: &Host, row: &BotRecord) -> Result<(), RuntimeError> {
    let applied = Applied {
        version: row.version,
        state: row.state,
        source: row.source,
        spec: row.spec.clone(),
    };
    let live = host.directory.get(&row.name);
    if row.state == BotState::Removed {
        if live.is_some() {
            host.remove(&row.name).await;
        }
        return Ok(());
    }
    let Some(live) = live else {
        let spec = resolve(host, row)?;
        if let Some((other, key)) =
            host.directory
                .clash(&row.name, &spec.server.webhook_path, &spec.key)
        {
            return Err(RuntimeError::Config(format!(
                "bots[{}].{key}: the same as bots[{other}]'s; each bot needs its own",
                row.name
            )));
        }
        host.add(spec, applied).await?;
        return Ok(());
    };
    let before = live.applied();
    if before.version >= row.version && before.version != 0 {
        return Ok(());
    }
    if before.spec != row.spec || before.source != row.source {
        let spec = resolve(host, row)?;
        if spec.key != live.key {
            // Its conversations are kept under its key: a new key is a new bot.
            host.remove(&row.name).await;
            host.add(spec, applied).await?;
            return Ok(());
        }
        host.change(&live, spec).await?;
    }
    match (row.state, live.is_running().await) {
        (BotState::Active, false) => host.resume(&live).await?,
        (BotState::Paused, true) => host.pause(&live).await,
        _ => {}
    }
    *live.applied.lock().unwrap_or_else(|e| e.into_inner()) = applied;
    Ok(())
}

/// The bot a row describes: a `[[bots]]` entry of this process's file as
/// the file says (with this process's secrets), any other from its stored
/// specification, its sealed secrets opened.
fn resolve(host: &Host, row: &BotRecord) -> Result<Spec, RuntimeError> {
    if row.source == BotSource::File {
        if let Some(b) = host.file_bot(&row.name) {
            return Ok(Spec::of_bot(&host.config, b));
        }
    }
    let spec: Value = serde_json::from_str(&row.spec).map_err(|e| {
        RuntimeError::Config(format!("bots[{}]: its stored specification: {e}", row.name))
    })?;
    let opened = open_secrets(host, &row.name, spec)?;
    let bot = host
        .config
        .registered_bot(&row.name, &opened)
        .map_err(|e| RuntimeError::Config(e.to_string()))?;
    Ok(Spec::of_bot(&host.config, &bot))
}

/// Where a credential sits in a specification.
fn credential_mut<'a>(
    spec: &'a mut Value,
    key: &str,
    section: Option<&str>,
) -> Option<&'a mut Value> {
    let obj = match section {
        Some(s) => spec.get_mut(s)?.as_object_mut()?,
        None => spec.as_object_mut()?,
    };
    obj.get_mut(key)
}

fn credential_name(key: &str, section: Option<&str>) -> String {
    match section {
        Some(s) => format!("{s}.{key}"),
        None => key.to_owned(),
    }
}

/// `spec` with its sealed credentials opened.
fn open_secrets(host: &Host, name: &str, mut spec: Value) -> Result<Value, RuntimeError> {
    for (key, section) in CREDENTIALS {
        let what = credential_name(key, section);
        if let Some(v) = credential_mut(&mut spec, key, section) {
            if let Some(sealed) = v.as_str().filter(|s| crate::sealed::is_sealed(s)) {
                let Some(k) = &host.key else {
                    return Err(RuntimeError::Config(format!(
                        "bots[{name}].{what} is sealed, and this process has no secret key: set {} \
                         (or server.secret_key_file) to the key it was sealed with",
                        crate::sealed::KEY_ENV
                    )));
                };
                let open = k
                    .open(&format!("{name}/{what}"), sealed)
                    .map_err(|e| RuntimeError::Config(format!("bots[{name}].{e}")))?;
                *v = Value::from(open);
            }
        }
    }
    Ok(spec)
}

/// `spec` as given to the API, its credentials sealed, or why it cannot be.
fn seal_secrets(host: &Host, name: &str, mut spec: Value) -> Result<Value, String> {
    for (key, section) in CREDENTIALS {
        let what = credential_name(key, section);
        let Some(v) = credential_mut(&mut spec, key, section) else {
            continue;
        };
        let Some(text) = v.as_str() else {
            return Err(format!("{what}: a string"));
        };
        if crate::sealed::is_sealed(text) {
            continue;
        }
        let Some(k) = &host.key else {
            return Err(format!(
                "{what}: credentials given through the API are stored encrypted, and this \
                 process has no secret key: set {} (or server.secret_key_file) to 64 hex digits \
                 (`flowbot bots keygen`), or give `{what}_file` (a file on the server) or the \
                 bot's environment variable ({}{}) instead",
                crate::sealed::KEY_ENV,
                crate::config::bot_env_prefix(name),
                what.to_ascii_uppercase().replace('.', "__")
            ));
        };
        *v = Value::from(k.seal(&format!("{name}/{what}"), text));
    }
    Ok(spec)
}

/// `spec` with its credentials shown only as being there.
fn redacted(mut spec: Value) -> Value {
    for (key, section) in CREDENTIALS {
        if let Some(v) = credential_mut(&mut spec, key, section) {
            *v = Value::from("(sealed)");
        }
    }
    spec
}

/// `patch` over `base`: objects merged key by key, `null` removes a key.
fn merge(base: &mut Value, patch: Value) {
    match (base, patch) {
        (Value::Object(b), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    b.remove(&k);
                } else {
                    merge(b.entry(k).or_insert(Value::Null), v);
                }
            }
        }
        (b, p) => *b = p,
    }
}

// --- The admin API -------------------------------------------------------

/// The routes of `/admin/bots` (when `server.admin_token` is set).
pub(crate) fn routes(host: Arc<Host>) -> Router {
    Router::new()
        .route("/admin/bots", get(list).post(add))
        .route("/admin/bots/{name}", get(show).patch(update).delete(remove))
        .route("/admin/bots/{name}/pause", post(pause))
        .route("/admin/bots/{name}/resume", post(resume))
        .with_state(host)
}

fn answer(status: StatusCode, v: Value) -> Response {
    (
        status,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response()
}

/// A call the API refuses: its status and what to do.
#[derive(Debug)]
struct Refusal(StatusCode, String);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        answer(self.0, json!({ "error": self.1 }))
    }
}

fn refused(status: StatusCode, error: impl Into<String>) -> Refusal {
    Refusal(status, error.into())
}

type Answer = Result<Response, Refusal>;

fn authorized(host: &Host, headers: &HeaderMap) -> Result<(), Refusal> {
    match super::http::bearer_is(headers, host.config.server.admin_token.expose()) {
        true => Ok(()),
        false => Err(refused(
            StatusCode::UNAUTHORIZED,
            "this needs the admin token: Authorization: Bearer <server.admin_token>",
        )),
    }
}

async fn read_json(body: Body) -> Result<Value, Refusal> {
    let bytes = axum::body::to_bytes(body, MAX_SPEC_BYTES)
        .await
        .map_err(|_| {
            refused(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("a bot's specification is at most {MAX_SPEC_BYTES} bytes of JSON"),
            )
        })?;
    let v: Value = serde_json::from_slice(&bytes).map_err(|e| {
        refused(
            StatusCode::BAD_REQUEST,
            format!(
                "the body is not JSON: {e} (line {}, column {})",
                e.line(),
                e.column()
            ),
        )
    })?;
    if !v.is_object() {
        return Err(refused(
            StatusCode::BAD_REQUEST,
            "the body is a JSON object: {\"name\": ..., \"flow\": ..., ...}",
        ));
    }
    Ok(v)
}

fn unavailable(e: crate::store::StoreError) -> Refusal {
    refused(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
}

/// Every current row (the last of each name).
async fn rows(host: &Host) -> Result<Vec<BotRecord>, Refusal> {
    let book = host.book.as_ref().expect("a registry");
    book.bots_since(0).await.map_err(unavailable)
}

/// The current row of `name`, if any.
async fn row_of(host: &Host, name: &str) -> Result<Option<BotRecord>, Refusal> {
    Ok(rows(host).await?.into_iter().rev().find(|r| r.name == name))
}

/// What a bot looks like to `bots list` and `bots show`.
async fn view(host: &Host, row: &BotRecord, full: bool) -> Value {
    let spec: Value = serde_json::from_str(&row.spec).unwrap_or(Value::Null);
    let mut v = json!({
        "name": row.name,
        "state": row.state.as_str(),
        "source": row.source.as_str(),
        "version": row.version,
        "updated_at": row.updated_at,
        "flow": spec.get("flow"),
    });
    if let Some(live) = host.directory.get(&row.name) {
        let face = live.face();
        let turns = &live.metrics.turns;
        let last = match live.inbox.last_event() {
            0 => Value::Null,
            t => Value::from(t),
        };
        let m = Map::from_iter([
            ("running".to_owned(), Value::from(live.is_running().await)),
            (
                "webhook_path".to_owned(),
                Value::from(face.spec.server.webhook_path.clone()),
            ),
            ("last_event".to_owned(), last),
            (
                "turns".to_owned(),
                Value::from(turns.get("ok") + turns.get("error")),
            ),
            ("errors".to_owned(), Value::from(turns.get("error"))),
            (
                "rate_limited".to_owned(),
                Value::from(face.client.stats().rate_limited),
            ),
            (
                "flow_name".to_owned(),
                // Read from its sources: listing bots compiles no flow.
                Value::from(face.slot.sources().name.clone()),
            ),
        ]);
        v.as_object_mut().expect("an object").extend(m);
    }
    if full {
        v["spec"] = redacted(spec);
    }
    v
}

async fn list(State(host): State<Arc<Host>>, headers: HeaderMap, RawQuery(q): RawQuery) -> Answer {
    authorized(&host, &headers)?;
    let all = q
        .as_deref()
        .is_some_and(|q| q.split('&').any(|p| p == "all=true" || p == "all"));
    let mut rows: Vec<_> = rows(&host)
        .await?
        .into_iter()
        .filter(|r| all || r.state != BotState::Removed)
        .collect();
    rows.sort_by(|a, b| a.name.cmp(&b.name));
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        out.push(view(&host, r, false).await);
    }
    Ok(answer(StatusCode::OK, json!({ "bots": out })))
}

async fn show(
    State(host): State<Arc<Host>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Answer {
    authorized(&host, &headers)?;
    match row_of(&host, &name).await? {
        Some(r) => Ok(answer(StatusCode::OK, view(&host, &r, true).await)),
        None => Err(no_bot(&name)),
    }
}

fn no_bot(name: &str) -> Refusal {
    refused(
        StatusCode::NOT_FOUND,
        format!("no bot named `{name}` (`flowbot bots list` lists them)"),
    )
}

/// Checks a specification as the runtime would run it (its flow loads, its
/// secrets are there, its paths are its own): the sealed form to store, or
/// the refusal.
fn prepared(host: &Host, name: &str, spec: Value) -> Result<Value, Refusal> {
    let bad = |e: String| refused(StatusCode::BAD_REQUEST, e);
    let mut spec = spec;
    if let Some(flow) = spec.get("flow").and_then(Value::as_str) {
        // A relative path is the process's: kept as the absolute path, so
        // that the row means the same file wherever it is read.
        let path = std::path::Path::new(flow);
        if path.is_relative() {
            if let Ok(abs) = std::path::absolute(path) {
                spec["flow"] = Value::from(abs.display().to_string());
            }
        }
    }
    let sealed = seal_secrets(host, name, spec).map_err(|e| bad(format!("bots[{name}].{e}")))?;
    let opened = open_secrets(host, name, sealed.clone()).map_err(|e| bad(e.to_string()))?;
    let bot = host
        .config
        .registered_bot(name, &opened)
        .map_err(|e| bad(e.to_string()))?;
    let spec = Spec::of_bot(&host.config, &bot);
    if let Some((other, key)) = host
        .directory
        .clash(name, &spec.server.webhook_path, &spec.key)
    {
        return Err(refused(
            StatusCode::CONFLICT,
            format!("bots[{name}].{key}: the same as bots[{other}]'s; each bot needs its own"),
        ));
    }
    super::check_one(&host.config, &spec, &host.flows)
        .map_err(|e| bad(format!("bots[{name}]: {e}")))?;
    Ok(sealed)
}

/// Writes a row, applies it here, and answers with the bot as it is now.
async fn write(
    host: &Host,
    name: &str,
    spec: &str,
    state: BotState,
    source: BotSource,
    status: StatusCode,
) -> Answer {
    let book = host.book.as_ref().expect("a registry");
    book.put_bot(name, spec, state, source)
        .await
        .map_err(unavailable)?;
    sync(host).await;
    if state == BotState::Removed {
        return Ok(answer(status, json!({ "name": name, "state": "removed" })));
    }
    match row_of(host, name).await? {
        Some(r) => Ok(answer(status, view(host, &r, true).await)),
        None => Err(no_bot(name)),
    }
}

async fn add(State(host): State<Arc<Host>>, headers: HeaderMap, body: Body) -> Answer {
    authorized(&host, &headers)?;
    let mut spec = read_json(body).await?;
    let obj = spec.as_object_mut().expect("an object");
    let Some(name) = obj
        .remove("name")
        .and_then(|n| n.as_str().map(str::to_owned))
    else {
        return Err(refused(StatusCode::BAD_REQUEST, "a bot needs a `name`"));
    };
    let state = match obj.remove("state").as_ref().map(|s| s.as_str()) {
        None | Some(Some("active")) => BotState::Active,
        Some(Some("paused")) => BotState::Paused,
        Some(_) => {
            return Err(refused(
                StatusCode::BAD_REQUEST,
                format!("bots[{name}].state: `active` or `paused`"),
            ))
        }
    };
    if let Some(r) = row_of(&host, &name).await? {
        if r.state != BotState::Removed {
            return Err(refused(
                StatusCode::CONFLICT,
                format!(
                    "a bot named `{name}` exists already ({}); `flowbot bots update` changes it",
                    r.state.as_str()
                ),
            ));
        }
    }
    let sealed = prepared(&host, &name, spec)?;
    let spec = sealed.to_string();
    write(
        &host,
        &name,
        &spec,
        state,
        BotSource::Api,
        StatusCode::CREATED,
    )
    .await
}

/// The row of `name` the API may change: it exists, is not removed, and
/// (for `file_ok` false) was not defined by `flowbot.toml`.
async fn changeable(host: &Host, name: &str, file_ok: bool) -> Result<BotRecord, Refusal> {
    match row_of(host, name).await? {
        None => Err(no_bot(name)),
        Some(r) if r.state == BotState::Removed => Err(no_bot(name)),
        Some(r) if r.source == BotSource::File && !file_ok => Err(refused(
            StatusCode::CONFLICT,
            format!(
                "bots[{name}] is defined in the configuration's [[bots]], which wins at each \
                 start: change it there"
            ),
        )),
        Some(r) => Ok(r),
    }
}

async fn update(
    State(host): State<Arc<Host>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Body,
) -> Answer {
    authorized(&host, &headers)?;
    let patch = read_json(body).await?;
    if patch.get("name").is_some() || patch.get("state").is_some() {
        return Err(refused(
            StatusCode::BAD_REQUEST,
            "a bot's name does not change, and its state changes with pause and resume",
        ));
    }
    let row = changeable(&host, &name, false).await?;
    let mut spec: Value = serde_json::from_str(&row.spec).unwrap_or_else(|_| json!({}));
    let key_before = spec.get("store_namespace").cloned();
    merge(&mut spec, patch);
    if spec.get("store_namespace").cloned() != key_before {
        return Err(refused(
            StatusCode::BAD_REQUEST,
            format!(
                "bots[{name}].store_namespace does not change: its conversations are kept under it"
            ),
        ));
    }
    let sealed = prepared(&host, &name, spec)?.to_string();
    write(
        &host,
        &name,
        &sealed,
        row.state,
        BotSource::Api,
        StatusCode::OK,
    )
    .await
}

async fn set_state(host: &Host, name: &str, state: BotState, headers: &HeaderMap) -> Answer {
    authorized(host, headers)?;
    let row = changeable(host, name, state != BotState::Removed).await?;
    write(host, name, &row.spec, state, row.source, StatusCode::OK).await
}

async fn pause(
    State(host): State<Arc<Host>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Answer {
    set_state(&host, &name, BotState::Paused, &headers).await
}

async fn resume(
    State(host): State<Arc<Host>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Answer {
    set_state(&host, &name, BotState::Active, &headers).await
}

async fn remove(
    State(host): State<Arc<Host>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Answer {
    set_state(&host, &name, BotState::Removed, &headers).await
}

/// Whether a live bot runs its workers (for the root `/readyz`).
pub(crate) async fn state_of(live: &Live) -> &'static str {
    let applied = live.applied();
    match (applied.state, live.is_running().await) {
        (BotState::Paused, _) => "paused",
        (_, true) => "active",
        (_, false) => "stopped",
    }
}
