//! The Qpien client: one shared value that every task sends through.
//!
//! Each call goes: token (cached, renewed ahead of expiry, one refresh however
//! many tasks wait) -> rate-limit permit -> HTTP POST -> answer read through
//! the `response` module. Transport errors, timeouts, 5xx, 429 and transient
//! GraphQL codes are retried with exponential backoff and jitter (the `backon`
//! crate), within `retry.max_attempts`; a refused token is renewed once and the
//! call retried; the rest fails at once with a [`QpienError`] that says why.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{HeaderMap, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::batch::{self, Batcher, Outcome, Waiting};
use super::config::{AuthScheme, QpienConfig};
use super::convert::OutboundMessage;
use super::documents::{Documents, Operation};
use super::error::QpienError;
use super::ingest::Intake;
use super::limit::{ConversationLocks, RateLimiter};
use super::response::{interpret, Failure};
use super::types::*;

/// A shared handle on the Qpien API. Clone it freely: clones share the token,
/// the rate limit and the per-conversation order.
///
/// ```no_run
/// # async fn demo() -> Result<(), flowbot::internals::qpien::QpienError> {
/// use flowbot::internals::qpien::{QpienClient, QpienConfig, Secret};
/// let client = QpienClient::new(QpienConfig {
///     client_id: Secret::new(std::env::var("QPIEN_ID").unwrap_or_default()),
///     client_secret: Secret::new(std::env::var("QPIEN_SECRET").unwrap_or_default()),
///     ..QpienConfig::default()
/// })?;
/// let page = client.get_conversation_list(1, 20, None).await?;
/// println!("{} conversations", page.docs.len());
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct QpienClient {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    http: reqwest::Client,
    config: QpienConfig,
    /// `config.endpoint`, parsed once.
    endpoint: reqwest::Url,
    documents: Documents,
    token: Mutex<Option<Token>>,
    token_error: std::sync::Mutex<Option<String>>,
    limiter: RateLimiter,
    order: ConversationLocks,
    /// Replies waiting to share a request.
    batcher: Batcher,
    stats: Counters,
    intake: Intake,
}

#[derive(Debug, Clone)]
struct Token {
    value: Arc<str>,
    renew_at: Instant,
    /// When a call last took it.
    used: Instant,
}

#[derive(Debug, Default)]
struct Counters {
    ok: AtomicU64,
    failed: AtomicU64,
    rate_limited: AtomicU64,
    retries: AtomicU64,
    token_refreshes: AtomicU64,
    duplicates: AtomicU64,
    batched: AtomicU64,
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Counts since the client was made, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ClientStats {
    /// Calls that succeeded.
    pub ok: u64,
    /// Calls that failed for good.
    pub failed: u64,
    /// 429 answers.
    pub rate_limited: u64,
    /// Attempts repeated after a transient failure.
    pub retries: u64,
    /// Tokens obtained.
    pub token_refreshes: u64,
    /// Creates Qpien already had (a resend recognised by its `frontMsgId`).
    pub duplicates: u64,
    /// Replies sent in a request with others (see [`QpienConfig::batch`]).
    pub batched: u64,
}

/// What a created message came back as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    /// Qpien's id for it (absent when Qpien recognised a resend and said no more).
    pub id: Option<String>,
    /// The idempotency key it was sent with.
    pub front_msg_id: String,
}

/// A GraphQL request body, written in one pass.
#[derive(Serialize)]
struct GraphqlRequest<'a, V> {
    query: &'a str,
    variables: &'a V,
}

/// `{"input": ...}`, the variables of a mutation.
#[derive(Serialize)]
struct Input<'a, T> {
    input: &'a T,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TokenAnswer {
    #[serde(alias = "token", alias = "access_token")]
    access_token: String,
    /// Seconds, as a number or a numeric string.
    #[serde(default, alias = "expires_in", deserialize_with = "seconds")]
    expires_in: Option<u64>,
}

fn seconds<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::Number(n) => n.as_u64().or_else(|| n.as_f64().map(|f| f.max(0.0) as u64)),
        Value::String(s) => s.trim().parse::<f64>().ok().map(|f| f.max(0.0) as u64),
        _ => None,
    })
}

fn header_f64(headers: &HeaderMap, name: &str) -> Option<f64> {
    headers
        .get(name)?
        .to_str()
        .ok()?
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v >= 0.0)
}

fn header_u64(headers: &HeaderMap, name: &str) -> Option<u64> {
    header_f64(headers, name).map(|v| v.ceil() as u64)
}

/// The body of a request running `op` (its document `query`) with `variables`.
fn request_body<V: Serialize>(
    op: Operation,
    query: &str,
    variables: &V,
) -> Result<Vec<u8>, Failure> {
    serde_json::to_vec(&GraphqlRequest { query, variables }).map_err(|e| {
        Failure::Error(QpienError::Decode {
            operation: op.name(),
            message: format!("cannot write the request: {e}"),
        })
    })
}

/// A call's result read as `T`: a create Qpien already had reads as null.
fn read_result<T: DeserializeOwned>(
    op: Operation,
    result: Result<Value, Failure>,
) -> Result<T, QpienError> {
    let value = match result {
        Ok(v) => v,
        Err(Failure::Duplicate) => Value::Null,
        Err(Failure::Error(e)) => return Err(e),
        Err(Failure::Auth { code, message }) => {
            return Err(QpienError::Unauthorized {
                operation: op.name(),
                code,
                message,
            })
        }
    };
    serde_path_to_error::deserialize(value).map_err(|e| QpienError::Decode {
        operation: op.name(),
        message: format!("at `{}`: {}", e.path(), e.inner()),
    })
}

/// The HTTP client Qpien clients send through (connection pool, TLS
/// configuration: about 30 KiB); a process running several bots makes one
/// and gives it to each (timeouts are set per request).
/// Why an answer was not read whole.
#[derive(Debug)]
pub(crate) enum Limited {
    /// Larger than the limit (given).
    TooLarge(usize),
    /// The connection failed.
    Failed(reqwest::Error),
}

/// Reads an answer's body, at most `limit` bytes: a larger one (by its
/// `Content-Length`, or as it streams in) stops the read, so no server can
/// make the reader hold more.
pub(crate) async fn read_limited(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<Vec<u8>, Limited> {
    if response.content_length().is_some_and(|n| n > limit as u64) {
        return Err(Limited::TooLarge(limit));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(Limited::Failed)? {
        if body.len() + chunk.len() > limit {
            return Err(Limited::TooLarge(limit));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

pub(crate) fn http_client() -> Result<reqwest::Client, QpienError> {
    reqwest::Client::builder()
        .user_agent(concat!("flowbot/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| QpienError::Config(format!("HTTP client: {e}")))
}

impl QpienClient {
    /// A client for `config`. Fails on a configuration that cannot work (no
    /// endpoint, a bad documents folder, a zero rate limit); the API key is
    /// checked on the first call.
    pub fn new(config: QpienConfig) -> Result<Self, QpienError> {
        Self::with_http(config, http_client()?)
    }

    /// A client for `config` that sends through `http` (see
    /// [`http_client`]): the bots of one process share one connection pool
    /// and TLS configuration, each request carrying its own bot's timeout.
    pub(crate) fn with_http(
        config: QpienConfig,
        http: reqwest::Client,
    ) -> Result<Self, QpienError> {
        let Ok(endpoint) = reqwest::Url::parse(&config.endpoint) else {
            return Err(QpienError::Config(format!(
                "endpoint `{}` is not a URL",
                config.endpoint
            )));
        };
        let documents = match &config.documents_dir {
            Some(dir) => Documents::with_overrides(dir, config.dialect)?,
            None => Documents::embedded(config.dialect),
        };
        Ok(QpienClient {
            inner: Arc::new(Inner {
                limiter: RateLimiter::new(&config.rate_limit)?,
                intake: Intake::new(&config),
                batcher: Batcher::new(config.batch.clone()),
                http,
                config,
                endpoint,
                documents,
                token: Mutex::new(None),
                token_error: std::sync::Mutex::new(None),
                order: ConversationLocks::default(),
                stats: Counters::default(),
            }),
        })
    }

    /// The configuration in use.
    pub fn config(&self) -> &QpienConfig {
        &self.inner.config
    }

    /// The rules that turn Qpien's messages into events.
    pub fn intake(&self) -> &Intake {
        &self.inner.intake
    }

    /// The documents in use.
    pub fn documents(&self) -> &Documents {
        &self.inner.documents
    }

    /// Counts since the client was made.
    pub fn stats(&self) -> ClientStats {
        let s = &self.inner.stats;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ClientStats {
            ok: get(&s.ok),
            failed: get(&s.failed),
            rate_limited: get(&s.rate_limited),
            retries: get(&s.retries),
            token_refreshes: get(&s.token_refreshes),
            duplicates: get(&s.duplicates),
            batched: get(&s.batched),
        }
    }

    /// Makes sure a valid token is at hand (obtaining one if needed): the
    /// readiness check of a deployment.
    pub async fn check_token(&self) -> Result<(), QpienError> {
        self.token().await.map(drop)
    }

    /// Runs `op` with `variables` (any serializable value: a typed struct is
    /// written straight into the request body) and reads its result as `T`.
    pub async fn execute<T: DeserializeOwned, V: Serialize + Sync>(
        &self,
        op: Operation,
        variables: V,
    ) -> Result<T, QpienError> {
        read_result(op, self.execute_value(op, &variables).await)
    }

    /// Runs `op`, renewing a refused token once.
    async fn execute_value<V: Serialize + Sync>(
        &self,
        op: Operation,
        variables: &V,
    ) -> Result<Value, Failure> {
        let mut renewed = false;
        loop {
            let token = self.token().await.map_err(Failure::Error)?;
            let body = || request_body(op, self.inner.documents.get(op), variables);
            let result = self
                .call(op, body, Some(&token), |b| interpret(op, b))
                .await;
            match self.settle(result, Some(&token), &mut renewed).await {
                Some(result) => return result,
                None => continue,
            }
        }
    }

    /// Counts how a call ended and drops a token Qpien refused. `None`: the
    /// token was refused for the first time (`renewed` is set): try again
    /// with a new one.
    async fn settle(
        &self,
        result: Result<Value, Failure>,
        token: Option<&str>,
        renewed: &mut bool,
    ) -> Option<Result<Value, Failure>> {
        let stats = &self.inner.stats;
        match result {
            Err(Failure::Auth { .. }) if !*renewed => {
                *renewed = true;
                if let Some(token) = token {
                    self.forget_token(token).await;
                }
                None
            }
            Err(Failure::Error(e @ QpienError::InsufficientScopes { .. })) => {
                // FACT: an old token does not gain scopes added to the key
                // since; the next call gets a new one.
                if let Some(token) = token {
                    self.forget_token(token).await;
                }
                stats.failed.fetch_add(1, Ordering::Relaxed);
                Some(Err(Failure::Error(e)))
            }
            Err(Failure::Duplicate) => {
                stats.duplicates.fetch_add(1, Ordering::Relaxed);
                stats.ok.fetch_add(1, Ordering::Relaxed);
                Some(Err(Failure::Duplicate))
            }
            other => {
                let counter = if other.is_ok() {
                    &stats.ok
                } else {
                    &stats.failed
                };
                counter.fetch_add(1, Ordering::Relaxed);
                Some(other)
            }
        }
    }

    /// The current token, obtained or renewed if needed. The lock is held
    /// through the renewal, so concurrent callers wait for the one request.
    async fn token(&self) -> Result<Arc<str>, QpienError> {
        let mut slot = self.inner.token.lock().await;
        if let Some(t) = slot.as_mut() {
            let now = Instant::now();
            if now < t.renew_at {
                t.used = now;
                return Ok(t.value.clone());
            }
        }
        // Token calls are calls: counted, and their last failure kept for
        // `/readyz` (which may give up waiting before the retries end).
        match self.obtain_token().await {
            Ok(token) => {
                self.inner.stats.ok.fetch_add(1, Ordering::Relaxed);
                *lock(&self.inner.token_error) = None;
                *slot = Some(token.clone());
                Ok(token.value)
            }
            Err(e) => {
                self.inner.stats.failed.fetch_add(1, Ordering::Relaxed);
                *lock(&self.inner.token_error) = Some(e.to_string());
                Err(e)
            }
        }
    }

    /// Drops the token if no call took it for `idle`: it is fetched again
    /// when next needed, and meanwhile an idle bot holds no credential of
    /// Qpien's in memory. Says whether it dropped one. A token being renewed
    /// or taken right now is left alone.
    pub fn drop_idle_token(&self, idle: Duration) -> bool {
        let Ok(mut slot) = self.inner.token.try_lock() else {
            return false;
        };
        if slot.as_ref().is_some_and(|t| t.used.elapsed() >= idle) {
            *slot = None;
            return true;
        }
        false
    }

    /// Draws requests from a budget shared with other instances too.
    pub fn share_budget(&self, budget: Arc<dyn super::limit::SharedBudget>) {
        self.inner.limiter.share(budget);
    }

    /// Why the last attempt to obtain a token failed, if it did.
    pub fn last_token_error(&self) -> Option<String> {
        lock(&self.inner.token_error).clone()
    }

    async fn obtain_token(&self) -> Result<Token, QpienError> {
        let config = &self.inner.config;
        if config.client_id.is_empty() || config.client_secret.is_empty() {
            return Err(QpienError::Config(
                "no API key: set the client id and secret (qpien.client_id, qpien.client_secret)"
                    .into(),
            ));
        }
        let op = Operation::GenerateOAuthToken;
        let variables = json!({"input": {
            "clientId": config.client_id.expose(),
            "clientSecret": config.client_secret.expose(),
        }});
        let body = || request_body(op, self.inner.documents.get(op), &variables);
        let value = match self.call(op, body, None, |b| interpret(op, b)).await {
            Ok(v) => v,
            Err(Failure::Auth { message, .. }) => return Err(QpienError::InvalidClient(message)),
            Err(Failure::Duplicate) => Value::Null,
            Err(Failure::Error(e)) => return Err(e),
        };
        let answer: TokenAnswer = match value {
            Value::String(s) => TokenAnswer {
                access_token: s,
                expires_in: None,
            },
            v => serde_path_to_error::deserialize(v).map_err(|e| QpienError::Decode {
                operation: op.name(),
                message: format!("at `{}`: {}", e.path(), e.inner()),
            })?,
        };
        let lifetime = answer
            .expires_in
            .map(Duration::from_secs)
            .unwrap_or(config.token_lifetime);
        let margin = config.token_refresh_margin.min(lifetime / 2);
        let token = Token {
            value: Arc::from(answer.access_token),
            renew_at: Instant::now() + lifetime - margin,
            used: Instant::now(),
        };
        self.inner
            .stats
            .token_refreshes
            .fetch_add(1, Ordering::Relaxed);
        tracing::debug!(lifetime = ?lifetime, "obtained a Qpien token");
        Ok(token)
    }

    /// Drops `stale` if it is still the cached token (another task may have
    /// renewed it already).
    async fn forget_token(&self, stale: &str) {
        let mut slot = self.inner.token.lock().await;
        if slot.as_ref().is_some_and(|t| &*t.value == stale) {
            *slot = None;
        }
    }

    /// One call with retries of transient failures: `body` writes the
    /// request, `read` reads a GraphQL answer.
    async fn call<R>(
        &self,
        op: Operation,
        body: impl Fn() -> Result<Vec<u8>, Failure>,
        token: Option<&str>,
        read: impl Fn(Value) -> Result<R, Failure>,
    ) -> Result<R, Failure> {
        let mut delays = self.inner.config.retry.backoff().delays();
        loop {
            let permit = self.inner.limiter.acquire().await;
            let result = match body() {
                Ok(body) => self.attempt(op, body, token, &read).await,
                Err(f) => Err(f),
            };
            // The request has ended: from now it counts in the window.
            drop(permit);
            let failure = match result {
                Ok(v) => return Ok(v),
                Err(f) => f,
            };
            if op == Operation::GenerateOAuthToken {
                *lock(&self.inner.token_error) = Some(DisplayFailure(&failure).to_string());
            }
            let retryable = matches!(&failure, Failure::Error(e) if e.is_retryable());
            if !retryable {
                return Err(failure);
            }
            let Some(delay) = delays.next() else {
                return Err(failure);
            };
            self.inner.stats.retries.fetch_add(1, Ordering::Relaxed);
            let rate_limited = matches!(&failure, Failure::Error(QpienError::RateLimited { .. }));
            tracing::debug!(operation = op.name(), error = %DisplayFailure(&failure), ?delay, "retrying");
            if !rate_limited {
                // After a 429 the limiter itself waits for the reset.
                tokio::time::sleep(delay).await;
            }
        }
    }

    /// One HTTP request.
    async fn attempt<R>(
        &self,
        op: Operation,
        body: Vec<u8>,
        token: Option<&str>,
        read: impl Fn(Value) -> Result<R, Failure>,
    ) -> Result<R, Failure> {
        let inner = &self.inner;
        let mut request = inner
            .http
            .post(inner.endpoint.clone())
            .timeout(inner.config.request_timeout)
            .header(CONTENT_TYPE, "application/json")
            .body(body);
        if let Some(token) = token {
            let value = match inner.config.auth() {
                AuthScheme::Bearer => format!("Bearer {token}"),
                AuthScheme::Bare => token.to_owned(),
            };
            request = request.header(AUTHORIZATION, value);
        }
        let response = request.send().await.map_err(|e| {
            Failure::Error(if e.is_timeout() {
                QpienError::Timeout {
                    operation: op.name(),
                    timeout: inner.config.request_timeout,
                }
            } else {
                QpienError::Transport {
                    operation: op.name(),
                    message: crate::text::error_chain(&e),
                }
            })
        })?;
        let headers = response.headers();
        let reset = header_f64(headers, "x-ratelimit-reset")
            .map(|v| inner.limiter.reset_after(v, crate::time::now()));
        inner
            .limiter
            .observe(header_u64(headers, "x-ratelimit-remaining"), reset);
        let status = response.status();
        if status.as_u16() == 429 {
            inner.stats.rate_limited.fetch_add(1, Ordering::Relaxed);
            let reset = reset
                .or_else(|| header_f64(headers, RETRY_AFTER.as_str()).map(Duration::from_secs_f64));
            let reset = inner.limiter.pause(reset);
            tracing::warn!(operation = op.name(), ?reset, "Qpien rate limit hit (429)");
            return Err(Failure::Error(QpienError::RateLimited {
                operation: op.name(),
                reset,
            }));
        }
        let bytes = read_limited(response, inner.config.max_response_bytes)
            .await
            .map_err(|e| {
                Failure::Error(match e {
                    Limited::TooLarge(limit) => QpienError::TooLarge {
                        operation: op.name(),
                        limit,
                    },
                    Limited::Failed(e) => QpienError::Transport {
                        operation: op.name(),
                        message: crate::text::error_chain(&e),
                    },
                })
            })?;
        let parsed: Option<Value> = serde_json::from_slice(&bytes).ok();
        if status.is_server_error() {
            return Err(Failure::Error(QpienError::Http {
                operation: op.name(),
                status: status.as_u16(),
            }));
        }
        match parsed {
            Some(body) if body.get("errors").is_some() || status.is_success() => read(body),
            _ if status.as_u16() == 401 => Err(Failure::Auth {
                code: "UNAUTHORIZED".into(),
                message: format!("HTTP {status}"),
            }),
            _ if !status.is_success() => Err(Failure::Error(QpienError::Http {
                operation: op.name(),
                status: status.as_u16(),
            })),
            _ => Err(Failure::Error(QpienError::Decode {
                operation: op.name(),
                message: format!(
                    "not JSON: {}",
                    String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
                ),
            })),
        }
    }

    /// Sends one message, after any other send to the same conversation.
    pub async fn send(&self, message: &OutboundMessage) -> Result<Sent, QpienError> {
        let _turn = self.inner.order.lock(&message.input.conversation_id).await;
        self.send_unordered(message).await
    }

    /// Sends a turn's messages in order (they must all be for one conversation);
    /// stops at the first failure, returning what was sent before it.
    pub async fn send_all(
        &self,
        messages: &[OutboundMessage],
    ) -> Result<Vec<Sent>, (Vec<Sent>, QpienError)> {
        let Some(first) = messages.first() else {
            return Ok(Vec::new());
        };
        let _turn = self.inner.order.lock(&first.input.conversation_id).await;
        let mut sent = Vec::with_capacity(messages.len());
        for m in messages {
            match self.send_unordered(m).await {
                Ok(s) => sent.push(s),
                Err(e) => return Err((sent, e)),
            }
        }
        Ok(sent)
    }

    async fn send_unordered(&self, message: &OutboundMessage) -> Result<Sent, QpienError> {
        let created: Option<CreatedMessage> = if self.inner.batcher.on() {
            self.send_batched(message).await?
        } else {
            self.send_alone(message).await?
        };
        Ok(Sent {
            id: created.and_then(|c| c.id),
            front_msg_id: message.input.front_msg_id.clone(),
        })
    }

    /// Sends one message in a request of its own.
    async fn send_alone(
        &self,
        message: &OutboundMessage,
    ) -> Result<Option<CreatedMessage>, QpienError> {
        let input = Input {
            input: &message.input,
        };
        self.execute(message.operation, input).await
    }

    /// Sends one message in the next request of replies (see the `batch`
    /// module): with the others waiting then, or alone.
    async fn send_batched(
        &self,
        message: &OutboundMessage,
    ) -> Result<Option<CreatedMessage>, QpienError> {
        let op = message.operation;
        let input =
            serde_json::value::to_raw_value(&message.input).map_err(|e| QpienError::Decode {
                operation: op.name(),
                message: format!("cannot write the request: {e}"),
            })?;
        let mut renewed = false;
        let mut delays = self.inner.config.retry.backoff().delays();
        let result = loop {
            let (answer, start) = self.inner.batcher.submit(op, input.clone());
            if start {
                tokio::spawn(self.clone().send_requests());
            }
            let Ok(answer) = answer.await else {
                return Err(QpienError::Transport {
                    operation: op.name(),
                    message: "the request was dropped (shutting down)".into(),
                });
            };
            let result = match answer.outcome {
                Outcome::Alone => return self.send_alone(message).await,
                // Its own transient error: tried again, in a later request.
                Outcome::Own(Err(Failure::Error(e))) if e.is_retryable() => {
                    if let Some(delay) = delays.next() {
                        self.inner.stats.retries.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(delay).await;
                        continue;
                    }
                    Err(Failure::Error(e))
                }
                Outcome::Own(result) => result,
                Outcome::Whole(failure) => Err(failure),
            };
            if let Some(result) = self
                .settle(result, answer.token.as_deref(), &mut renewed)
                .await
            {
                break result;
            }
        };
        read_result(op, result)
    }

    /// A runner: sends the waiting replies, a request at a time, until none
    /// waits.
    async fn send_requests(self) {
        while let Some(batch) = self.inner.batcher.take() {
            self.send_request(batch).await;
        }
    }

    /// Sends one request of replies (all of one operation) and tells each
    /// how it ended.
    async fn send_request(&self, batch: Vec<Waiting>) {
        let op = batch[0].op;
        let n = batch.len();
        let token = match self.token().await {
            Ok(t) => t,
            Err(e) => {
                for w in batch {
                    w.answer(Outcome::Whole(Failure::Error(e.clone())), None);
                }
                return;
            }
        };
        let batcher = &self.inner.batcher;
        let single = self.inner.documents.get(op);
        if n > 1 && batch::head(single, n).is_none() {
            // A replaced document that cannot be repeated under aliases.
            if batcher.refuse() {
                tracing::warn!(
                    operation = op.name(),
                    "the {} document cannot carry several replies; one a request (qpien.batch.max = 1 says so)",
                    op.name()
                );
            }
            for w in batch {
                w.answer(Outcome::Alone, Some(token.clone()));
            }
            return;
        }
        let body = || {
            batch::body(single, &batch).ok_or_else(|| {
                Failure::Error(QpienError::Decode {
                    operation: op.name(),
                    message: "cannot write the request".into(),
                })
            })
        };
        let result = self
            .call(op, body, Some(&token), |answer| {
                if n == 1 {
                    interpret(op, answer).map(|v| vec![Ok(v)])
                } else {
                    batch::split(op, answer, n)
                }
            })
            .await;
        match result {
            Ok(parts) => {
                if n > 1 {
                    let batched = &self.inner.stats.batched;
                    batched.fetch_add(n as u64, Ordering::Relaxed);
                }
                for (w, part) in batch.into_iter().zip(parts) {
                    // A request of one: its error was the request's, retried.
                    let outcome = if n == 1 {
                        part.map_or_else(Outcome::Whole, |v| Outcome::Own(Ok(v)))
                    } else {
                        Outcome::Own(part)
                    };
                    w.answer(outcome, Some(token.clone()));
                }
            }
            Err(failure) if n > 1 && batch::refused(&failure) => {
                if batcher.refuse() {
                    tracing::warn!(
                        operation = op.name(),
                        error = %DisplayFailure(&failure),
                        "Qpien refused {n} replies in one request; one a request for the next hour"
                    );
                }
                for w in batch {
                    w.answer(Outcome::Alone, Some(token.clone()));
                }
            }
            Err(failure) => {
                for w in batch {
                    w.answer(Outcome::Whole(failure.clone()), Some(token.clone()));
                }
            }
        }
    }

    /// Reads one message.
    pub async fn get_message(&self, id: &str) -> Result<Option<ExternalMessage>, QpienError> {
        self.execute(Operation::GetMessage, json!({"messageId": id}))
            .await
    }

    /// Reads page `page` (from 1) of a conversation's messages.
    pub async fn get_message_list(
        &self,
        conversation: &str,
        page: u32,
        limit: u32,
    ) -> Result<Page<ExternalMessage>, QpienError> {
        self.execute(
            Operation::GetMessageList,
            json!({"conversationId": conversation, "page": page, "limit": limit}),
        )
        .await
    }

    /// Reads one conversation.
    pub async fn get_conversation(
        &self,
        id: &str,
    ) -> Result<Option<ExternalConversation>, QpienError> {
        self.execute(Operation::GetConversation, json!({"conversationId": id}))
            .await
    }

    /// Reads page `page` (from 1) of the conversations, of one status if given.
    pub async fn get_conversation_list(
        &self,
        page: u32,
        limit: u32,
        status: Option<&str>,
    ) -> Result<Page<ExternalConversation>, QpienError> {
        self.execute(
            Operation::GetConversationList,
            json!({"page": page, "limit": limit, "status": status}),
        )
        .await
    }

    /// Lists the connected channels.
    pub async fn connected_platforms(&self) -> Result<Vec<ConnectedPlatform>, QpienError> {
        let page: Page<ConnectedPlatform> = self
            .execute(Operation::GetAllConnectedPlatformList, json!({}))
            .await?;
        Ok(page.docs)
    }

    /// The account's approved WhatsApp templates (see [`super::templates`]).
    pub async fn templates(&self) -> Result<Vec<crate::flow::TemplateInfo>, QpienError> {
        let page: Page<super::templates::WhatsappTemplate> = self
            .execute(
                Operation::GetWhatsappBusinessTemplateList,
                json!({"page": 1, "limit": 500}),
            )
            .await?;
        Ok(page.docs.iter().filter_map(|t| t.info()).collect())
    }

    /// Changes a conversation's status or assignment.
    pub async fn update_conversation(
        &self,
        input: &UpdateConversationInput,
    ) -> Result<Option<ExternalConversation>, QpienError> {
        self.execute(Operation::UpdateConversation, json!({"input": input}))
            .await
    }

    /// Asks for a person: sets the handoff status (and assignment, if configured).
    pub async fn handoff(&self, conversation: &str) -> Result<(), QpienError> {
        let config = &self.inner.config;
        self.update_conversation(&UpdateConversationInput {
            conversation_id: conversation.to_owned(),
            status: Some(config.handoff_status.clone()),
            joined_person: config.handoff_assign_to.clone(),
        })
        .await
        .map(drop)
    }

    /// Gives the conversation back to the bot: sets the release status.
    pub async fn release(&self, conversation: &str) -> Result<(), QpienError> {
        self.update_conversation(&UpdateConversationInput {
            conversation_id: conversation.to_owned(),
            status: Some(self.inner.config.release_status.clone()),
            joined_person: None,
        })
        .await
        .map(drop)
    }
}

struct DisplayFailure<'a>(&'a Failure);

impl std::fmt::Display for DisplayFailure<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Failure::Auth { code, .. } => f.write_str(code),
            Failure::Duplicate => f.write_str("duplicate"),
            Failure::Error(e) => e.fmt(f),
        }
    }
}
