//! An embedded Qpien: the API as `../qpien/schema.graphql` describes it, served
//! by a real GraphQL server, plus webhooks and a web playground.
//!
//! It is a peer of the bot, not part of it: it shares the schema and the
//! webhook signature with [`crate::qpien`] and nothing of the engine or the
//! runtime, so tests that run the bot against it exercise the same wire as
//! production. What it does, as `../shared`'s Qpien notes describe:
//! - either dialect ([`Dialect`]): the documented operations with bare
//!   results, or the `external...` operations with `{success, code, message,
//!   data}` envelopes;
//! - tokens from `generateOAuthToken` that expire (the lifetime it reports, or
//!   an earlier real one to test renewal), `Bearer`, bare or either, scopes per
//!   operation, the error codes `UNAUTHORIZED`, `TOKEN_EXPIRED`,
//!   `INVALID_CLIENT`, `INSUFFICIENT_SCOPES` (with `requiredScope`);
//! - the rate limit (100 a minute by default) with `X-RateLimit-*` headers
//!   (the reset in seconds, as a Unix time, or none) and 429;
//! - conversations typed as Qpien documents them (ids, `channels` and `tags`
//!   as objects), messages, `createMessage` deduplicated by `frontMsgId` (or
//!   not), `updateConversation` for handoff and release;
//! - webhooks (`NEW_INCOMING_MESSAGE`, `JOIN_CONVERSATION`, and on request the
//!   ASSUMED `LEAVE_CONVERSATION`) signed with HMAC-SHA256 over the exact
//!   body, delivered in order and retried with exponential backoff;
//! - fault injection: a share of 5xx answers, of slow answers, of duplicate
//!   webhook deliveries, and tokens that die before their announced expiry;
//!   and, for tests, scripted faults ([`SimState::fail_next`],
//!   [`SimState::lose_next_creates`], [`SimState::hold_next_creates`],
//!   [`SimState::inject`], [`SimState::reject_tokens`]) and a log of every
//!   request ([`SimState::requests`]). It is the one Qpien double of the tests.
//!
//! The GraphQL schema is built at start from `schema.graphql` itself (with
//! async-graphql's dynamic schema; the external dialect's is derived from it),
//! so the simulator cannot drift from the client's idea of the API; a test
//! compares the two.

mod http;
mod schema;
pub use schema::sdl;
mod state;
mod webhooks;

pub use state::{CustomerInput, SeenRequest, SimState, SimStats};

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::qpien::{AuthScheme, Dialect};
use tokio::task::JoinHandle;

/// Faults to inject, each a share between 0 and 1.
#[derive(Debug, Clone, PartialEq)]
pub struct Faults {
    /// Share of API requests answered with HTTP 500 (before doing anything).
    pub server_errors: f64,
    /// Share of API requests answered late.
    pub slow: f64,
    /// How late.
    pub slow_delay: Duration,
    /// Share of webhook deliveries sent twice.
    pub duplicate_webhooks: f64,
    /// Seed of the random choices (a run can be repeated).
    pub seed: u64,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            server_errors: 0.0,
            slow: 0.0,
            slow_delay: Duration::from_millis(500),
            duplicate_webhooks: 0.0,
            seed: 7,
        }
    }
}

/// How `X-RateLimit-Reset` is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ResetFormat {
    /// Seconds until the window resets (as Qpien documents it).
    #[default]
    Seconds,
    /// The reset moment as a Unix time in seconds (common middleware).
    UnixSeconds,
    /// The reset moment as a Unix time in milliseconds.
    UnixMillis,
    /// No `X-RateLimit-*` headers at all (429 still comes).
    None,
}

impl std::str::FromStr for ResetFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "seconds" => Ok(ResetFormat::Seconds),
            "unix" | "unix-seconds" => Ok(ResetFormat::UnixSeconds),
            "unix-millis" => Ok(ResetFormat::UnixMillis),
            "none" => Ok(ResetFormat::None),
            other => Err(format!(
                "unknown reset format `{other}` (seconds, unix-seconds, unix-millis, none)"
            )),
        }
    }
}

/// How the simulator behaves.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// The operation set it serves (`documented` or `external`).
    pub dialect: Dialect,
    /// The `Authorization` form it accepts (`None`: both `Bearer <token>` and
    /// the bare token).
    pub auth: Option<AuthScheme>,
    /// How `X-RateLimit-Reset` is written.
    pub reset_format: ResetFormat,
    /// Whether a second create with the same `frontMsgId` returns the first
    /// message instead of making another (Qpien's behaviour is ASSUMED).
    pub dedup_creates: bool,
    /// Whether the schema may be introspected.
    pub introspection: bool,
    /// The most root fields one document may hold (`None`: any number, as
    /// GraphQL allows); beyond, the request is refused whole, like a server
    /// that limits a document's size.
    pub max_root_fields: Option<usize>,
    /// Whether an agent leaving sends the ASSUMED `LEAVE_CONVERSATION` webhook
    /// (Qpien documents no such event).
    pub leave_events: bool,
    /// How long issuing a token takes.
    pub token_delay: Duration,
    /// Whether a message created in a conversation it does not know opens
    /// that conversation (for tests that post webhooks by hand) instead of
    /// failing with `NOT_FOUND`.
    pub auto_create_conversations: bool,
    /// Where it listens.
    pub listen: SocketAddr,
    /// The API key it accepts.
    pub client_id: String,
    /// The API key's secret.
    pub client_secret: String,
    /// The key's scopes.
    pub scopes: Vec<String>,
    /// The lifetime `generateOAuthToken` announces.
    pub token_lifetime: Duration,
    /// How long tokens really work (shorter: early expiry).
    pub token_real_lifetime: Option<Duration>,
    /// Requests per window, and the window (`None`: no limit).
    pub rate_limit: Option<(u32, Duration)>,
    /// Where webhooks go.
    pub webhook_url: Option<String>,
    /// The webhook's HMAC secret.
    pub webhook_secret: String,
    /// Delivery attempts per webhook before it is given up.
    pub webhook_attempts: u32,
    /// The first retry delay (it doubles each time).
    pub webhook_retry_delay: Duration,
    /// Faults to inject.
    pub faults: Faults,
    /// The bot's debug endpoint, shown in the playground's side panel.
    pub bot_url: Option<String>,
    /// The account's approved WhatsApp templates: name, language, body with
    /// `{{1}}`, `{{2}}`... placeholders.
    pub templates: Vec<(String, String, String)>,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            dialect: Dialect::Documented,
            auth: None,
            reset_format: ResetFormat::Seconds,
            dedup_creates: true,
            introspection: true,
            max_root_fields: None,
            leave_events: false,
            token_delay: Duration::ZERO,
            auto_create_conversations: false,
            listen: SocketAddr::from(([127, 0, 0, 1], 8090)),
            client_id: "demo-client".into(),
            client_secret: "demo-secret".into(),
            scopes: [
                "read_messages",
                "write_messages",
                "read_conversations",
                "write_conversations",
                "read_channels",
                "read_whatsappBusinessTemplates",
            ]
            .map(String::from)
            .to_vec(),
            token_lifetime: Duration::from_secs(3600),
            token_real_lifetime: None,
            rate_limit: Some((100, Duration::from_secs(60))),
            webhook_url: None,
            webhook_secret: "demo-webhook-secret".into(),
            webhook_attempts: 8,
            webhook_retry_delay: Duration::from_millis(200),
            faults: Faults::default(),
            bot_url: None,
            templates: [
                (
                    "order_update",
                    "en",
                    "Hi {{1}}, your order {{2}} is on its way.",
                ),
                (
                    "order_followup",
                    "en",
                    "Hi {{1}}, anything else about your order?",
                ),
                (
                    "order_reminder",
                    "en",
                    "Your order of {{1}} bouquet(s) for {{2}} is waiting: reply Confirm or Change.",
                ),
                ("survey", "en", "How did we do, {{1}}? Answer 1 to 5."),
                (
                    "we_are_open",
                    "en",
                    "We are open again. Write to us any time.",
                ),
            ]
            .map(|(n, l, b)| (n.to_owned(), l.to_owned(), b.to_owned()))
            .to_vec(),
        }
    }
}

/// The simulator could not start.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The schema does not build.
    #[error("simulator schema: {0}")]
    Schema(String),
    /// The address cannot be bound.
    #[error("simulator cannot listen on {addr}: {message}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        message: String,
    },
}

/// A running simulator.
pub struct RunningSim {
    addr: SocketAddr,
    state: Arc<SimState>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl RunningSim {
    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The GraphQL endpoint, for the bot's `qpien.endpoint`.
    pub fn graphql_url(&self) -> String {
        format!("http://{}/graphql", self.addr)
    }

    /// The GraphQL endpoint at Qpien's own path (`/api/v1`), which
    /// answers as `/graphql` does: what `qpien.endpoint` names.
    pub fn api_url(&self) -> String {
        format!("http://{}/api/v1", self.addr)
    }

    /// The playground.
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// The state: conversations, messages, statistics, settings.
    pub fn state(&self) -> &Arc<SimState> {
        &self.state
    }

    /// Stops serving.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(2), t).await;
        }
    }
}

/// Starts the simulator.
pub async fn start(config: SimConfig) -> Result<RunningSim, SimError> {
    let schema = schema::build(config.dialect, config.introspection).map_err(SimError::Schema)?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| SimError::Bind {
            addr: config.listen,
            message: e.to_string(),
        })?;
    let addr = listener.local_addr().map_err(|e| SimError::Bind {
        addr: config.listen,
        message: e.to_string(),
    })?;
    let (deliveries, queue) = tokio::sync::mpsc::unbounded_channel();
    let state = Arc::new(SimState::new(config, deliveries));
    let (stop, stopping) = watch::channel(false);
    let app = http::router(state.clone(), schema);
    let mut stop_server = stopping.clone();
    let server = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stop_server.wait_for(|s| *s).await;
            })
            .await
        {
            tracing::error!(error = %e, "simulator HTTP server failed");
        }
    });
    let sender = tokio::spawn(webhooks::run(state.clone(), queue, stopping));
    tracing::info!(%addr, "Qpien simulator running");
    Ok(RunningSim {
        addr,
        state,
        stop,
        tasks: vec![server, sender],
    })
}
