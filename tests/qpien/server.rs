//! A stand-in Qpien for the client's tests: a real axum server on loopback that
//! issues expiring tokens, checks the Authorization header and scopes, keeps a
//! fixed-window rate limit with its headers and 429, fails on demand, and
//! records what was created (deduplicated by `frontMsgId`, as Qpien does).
//! It finds each request's operation by parsing the query with apollo-compiler.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::time::Instant;

/// How the server behaves; change it between calls through `Server::set`.
#[derive(Debug, Clone)]
pub struct Settings {
    pub client_id: String,
    pub client_secret: String,
    /// `expiresIn` the server reports.
    pub reported_lifetime: u64,
    /// How long a token really works.
    pub real_lifetime: Duration,
    /// Accept only `Authorization: <token>` (no `Bearer `).
    pub bare_auth: bool,
    /// Requests per window (fixed window), and the window.
    pub limit: Option<(u32, Duration)>,
    /// Whether to send `X-RateLimit-Remaining` / `X-RateLimit-Reset`.
    pub rate_headers: bool,
    pub scopes: Vec<&'static str>,
    /// Wrap results and errors in `{success, data, code, message}`.
    pub envelope: bool,
    /// How long issuing a token takes.
    pub token_delay: Duration,
    /// How long every other answer takes.
    pub delay: Duration,
    /// Refuse every token (as if revoked).
    pub reject_tokens: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            client_id: "id-1".into(),
            client_secret: "secret-1".into(),
            reported_lifetime: 3600,
            real_lifetime: Duration::from_secs(3600),
            bare_auth: false,
            limit: None,
            rate_headers: true,
            scopes: vec![
                "read_messages",
                "write_messages",
                "read_conversations",
                "write_conversations",
                "read_channels",
            ],
            envelope: false,
            token_delay: Duration::ZERO,
            delay: Duration::ZERO,
            reject_tokens: false,
        }
    }
}

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub at: Instant,
    pub field: String,
    pub variables: Value,
    pub authorization: Option<String>,
    pub status: u16,
}

#[derive(Default)]
pub struct Shared {
    pub settings: Mutex<Settings>,
    tokens: Mutex<HashMap<String, Instant>>,
    pub token_calls: AtomicU32,
    pub seen: Mutex<Vec<Seen>>,
    /// Created messages, in order, deduplicated by frontMsgId.
    pub created: Mutex<Vec<Value>>,
    pub updates: Mutex<Vec<Value>>,
    /// Answer the next N requests with HTTP 500 before doing anything.
    pub fail_before: AtomicU32,
    /// Record the next N creates, then answer HTTP 500 (the answer is lost).
    pub fail_after: AtomicU32,
    /// Error codes to answer the next requests with (besides the token's).
    pub inject: Mutex<VecDeque<&'static str>>,
    pub messages: Mutex<HashMap<String, Vec<Value>>>,
    pub conversations: Mutex<Vec<Value>>,
    window: Mutex<Option<(Instant, u32)>>,
    pub auth_failures: AtomicU32,
}

pub struct Server {
    pub url: String,
    pub shared: Arc<Shared>,
}

impl Server {
    pub async fn start(settings: Settings) -> Server {
        let shared = Arc::new(Shared::default());
        *shared.settings.lock().unwrap() = settings;
        let app = Router::new()
            .route("/graphql", post(graphql))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Server {
            url: format!("http://{addr}/graphql"),
            shared,
        }
    }

    pub fn set(&self, f: impl FnOnce(&mut Settings)) {
        f(&mut self.shared.settings.lock().unwrap());
    }

    pub fn token_calls(&self) -> u32 {
        self.shared.token_calls.load(Ordering::SeqCst)
    }

    pub fn created(&self) -> Vec<Value> {
        self.shared.created.lock().unwrap().clone()
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.shared.seen.lock().unwrap().clone()
    }

    pub fn count(&self, field: &str, status: u16) -> usize {
        self.seen()
            .iter()
            .filter(|s| s.field == field && s.status == status)
            .count()
    }
}

/// The root field of the (first) operation in `query`, without an `external` prefix.
fn root_field(query: &str) -> Option<String> {
    use apollo_compiler::ast::{Definition, Document, Selection};
    let doc = Document::parse(query, "request.graphql").ok()?;
    doc.definitions.iter().find_map(|d| match d {
        Definition::OperationDefinition(op) => op.selection_set.iter().find_map(|s| match s {
            Selection::Field(f) => Some(f.name.to_string()),
            _ => None,
        }),
        _ => None,
    })
}

fn unprefixed(field: &str) -> String {
    match field.strip_prefix("external") {
        Some(rest) if !rest.is_empty() => {
            let mut c = rest.chars();
            let first = c.next().unwrap().to_ascii_lowercase();
            std::iter::once(first).chain(c).collect()
        }
        _ => field.to_owned(),
    }
}

fn scope_of(field: &str) -> Option<&'static str> {
    match field {
        "getMessage" | "getMessageList" => Some("read_messages"),
        "createMessage" | "createMessageByWhatsapp" => Some("write_messages"),
        "getConversation" | "getConversationList" => Some("read_conversations"),
        "updateConversation" => Some("write_conversations"),
        "getAllConnectedPlatformList" => Some("read_channels"),
        _ => None,
    }
}

struct Answer {
    status: StatusCode,
    body: Value,
}

fn error(field: &str, envelope: bool, code: &str, extra: Value) -> Answer {
    let body = if envelope {
        json!({"data": {field: {"success": false, "code": code,
            "message": format!("{code} (test server)"), "data": extra}}})
    } else {
        let mut ext = json!({"code": code});
        if let (Some(e), Some(x)) = (ext.as_object_mut(), extra.as_object()) {
            e.extend(x.clone());
        }
        json!({"errors": [{"message": format!("{code} (test server)"), "extensions": ext}],
               "data": null})
    };
    Answer {
        status: StatusCode::OK,
        body,
    }
}

fn ok(field: &str, envelope: bool, result: Value) -> Answer {
    let result = if envelope {
        json!({"success": true, "code": null, "message": null, "data": result})
    } else {
        result
    };
    Answer {
        status: StatusCode::OK,
        body: json!({"data": {field: result}}),
    }
}

async fn graphql(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let query = request["query"].as_str().unwrap_or("");
    let variables = request["variables"].clone();
    let raw_field = root_field(query).unwrap_or_default();
    let field = unprefixed(&raw_field);
    let authorization = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let settings = s.settings.lock().unwrap().clone();

    // The rate limit, before anything else.
    let mut extra_headers: Vec<(&str, String)> = Vec::new();
    if let Some((limit, window)) = settings.limit {
        let now = Instant::now();
        let mut w = s.window.lock().unwrap();
        let (start, count) = match *w {
            Some((start, count)) if now < start + window => (start, count),
            _ => (now, 0),
        };
        let reset = (start + window).saturating_duration_since(now);
        let reset_secs = reset.as_secs_f64().ceil() as u64;
        if count >= limit {
            drop(w);
            record(&s, &raw_field, &variables, &authorization, 429);
            let mut response = (StatusCode::TOO_MANY_REQUESTS, "slow down").into_response();
            let h = response.headers_mut();
            h.insert("x-ratelimit-limit", limit.into());
            h.insert("x-ratelimit-remaining", 0.into());
            h.insert("x-ratelimit-reset", reset_secs.max(1).into());
            return response;
        }
        *w = Some((start, count + 1));
        if settings.rate_headers {
            extra_headers.push(("x-ratelimit-limit", limit.to_string()));
            extra_headers.push(("x-ratelimit-remaining", (limit - count - 1).to_string()));
            extra_headers.push(("x-ratelimit-reset", reset_secs.max(1).to_string()));
        }
    }
    if take_one(&s.fail_before) {
        record(&s, &raw_field, &variables, &authorization, 500);
        return (StatusCode::INTERNAL_SERVER_ERROR, "boom").into_response();
    }
    let answer = answer(
        &s,
        &settings,
        &raw_field,
        &field,
        &variables,
        &authorization,
    )
    .await;
    record(
        &s,
        &raw_field,
        &variables,
        &authorization,
        answer.status.as_u16(),
    );
    let mut response = (answer.status, Json(answer.body)).into_response();
    for (name, value) in extra_headers {
        response.headers_mut().insert(name, value.parse().unwrap());
    }
    response
}

fn take_one(counter: &AtomicU32) -> bool {
    counter
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}

fn record(s: &Shared, field: &str, variables: &Value, auth: &Option<String>, status: u16) {
    s.seen.lock().unwrap().push(Seen {
        at: Instant::now(),
        field: field.to_owned(),
        variables: variables.clone(),
        authorization: auth.clone(),
        status,
    });
}

async fn answer(
    s: &Shared,
    settings: &Settings,
    raw_field: &str,
    field: &str,
    variables: &Value,
    authorization: &Option<String>,
) -> Answer {
    let env = settings.envelope;
    if field == "generateOAuthToken" {
        s.token_calls.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(settings.token_delay).await;
        let input = &variables["input"];
        if input["clientId"] != settings.client_id.as_str()
            || input["clientSecret"] != settings.client_secret.as_str()
        {
            return error(raw_field, env, "INVALID_CLIENT", json!({}));
        }
        let n = s.token_calls.load(Ordering::SeqCst);
        let token = format!("tok-{n}");
        s.tokens
            .lock()
            .unwrap()
            .insert(token.clone(), Instant::now() + settings.real_lifetime);
        return ok(
            raw_field,
            env,
            json!({"accessToken": token, "expiresIn": settings.reported_lifetime}),
        );
    }
    // Authorization.
    let token = authorization.as_deref().and_then(|a| {
        if settings.bare_auth {
            (!a.starts_with("Bearer ")).then_some(a)
        } else {
            a.strip_prefix("Bearer ")
        }
    });
    let expiry = token.and_then(|t| s.tokens.lock().unwrap().get(t).copied());
    match expiry {
        _ if settings.reject_tokens => {
            s.auth_failures.fetch_add(1, Ordering::SeqCst);
            return error(raw_field, env, "UNAUTHORIZED", json!({}));
        }
        None => {
            s.auth_failures.fetch_add(1, Ordering::SeqCst);
            return error(raw_field, env, "UNAUTHORIZED", json!({}));
        }
        Some(t) if Instant::now() >= t => {
            s.auth_failures.fetch_add(1, Ordering::SeqCst);
            return error(raw_field, env, "TOKEN_EXPIRED", json!({}));
        }
        Some(_) => {}
    }
    if let Some(scope) = scope_of(field) {
        if !settings.scopes.contains(&scope) {
            return error(
                raw_field,
                env,
                "INSUFFICIENT_SCOPES",
                json!({"requiredScope": scope}),
            );
        }
    }
    let injected = s.inject.lock().unwrap().pop_front();
    if let Some(code) = injected {
        return error(raw_field, env, code, json!({}));
    }
    tokio::time::sleep(settings.delay).await;
    match field {
        "createMessage" | "createMessageByWhatsapp" => {
            let input = variables["input"].clone();
            let front = input["frontMsgId"].as_str().unwrap_or("").to_owned();
            let mut created = s.created.lock().unwrap();
            let existing = created
                .iter()
                .position(|m| m["input"]["frontMsgId"] == front.as_str());
            let index = match existing {
                Some(i) => i,
                None => {
                    created.push(json!({"operation": field, "input": input}));
                    created.len() - 1
                }
            };
            drop(created);
            if existing.is_none() && take_one(&s.fail_after) {
                return Answer {
                    status: StatusCode::INTERNAL_SERVER_ERROR,
                    body: json!({"errors": [{"message": "lost"}]}),
                };
            }
            ok(
                raw_field,
                env,
                json!({"_id": format!("m-{index}"), "frontMsgId": front}),
            )
        }
        "updateConversation" => {
            s.updates.lock().unwrap().push(variables["input"].clone());
            ok(
                raw_field,
                env,
                json!({"_id": variables["input"]["conversationId"], "status": variables["input"]["status"]}),
            )
        }
        "getMessageList" => {
            let conv = variables["conversationId"].as_str().unwrap_or("");
            let page = variables["page"].as_u64().unwrap_or(1) as usize;
            let limit = variables["limit"].as_u64().unwrap_or(20) as usize;
            let all = s
                .messages
                .lock()
                .unwrap()
                .get(conv)
                .cloned()
                .unwrap_or_default();
            let docs: Vec<Value> = all
                .iter()
                .skip((page - 1) * limit)
                .take(limit)
                .cloned()
                .collect();
            ok(
                raw_field,
                env,
                json!({"docs": docs, "hasNextPage": page * limit < all.len(), "totalDocs": all.len()}),
            )
        }
        "getMessage" => {
            let id = variables["messageId"].clone();
            let found = s
                .messages
                .lock()
                .unwrap()
                .values()
                .flatten()
                .find(|m| m["_id"] == id)
                .cloned();
            ok(raw_field, env, found.unwrap_or(Value::Null))
        }
        "getConversationList" => {
            let all = s.conversations.lock().unwrap().clone();
            ok(raw_field, env, Value::Array(all))
        }
        "getConversation" => {
            let id = variables["conversationId"].clone();
            let found = s
                .conversations
                .lock()
                .unwrap()
                .iter()
                .find(|c| c["_id"] == id)
                .cloned();
            ok(raw_field, env, found.unwrap_or(Value::Null))
        }
        "getAllConnectedPlatformList" => ok(
            raw_field,
            env,
            json!([{"_id": "p1", "name": "Support line", "channelType": "WhatsApp", "status": "ACTIVE"}]),
        ),
        other => error(
            raw_field,
            env,
            "GRAPHQL_VALIDATION_FAILED",
            json!({"field": other}),
        ),
    }
}
