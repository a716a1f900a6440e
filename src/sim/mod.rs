//! An embedded Qpien: the API as `../qpien/schema.graphql` describes it, served
//! by a real GraphQL server, plus webhooks and a web playground.
//!
//! It is a peer of the bot, not part of it: it shares the schema and the
//! webhook signature with [`crate::qpien`] and nothing of the engine or the
//! runtime, so tests that run the bot against it exercise the same wire as
//! production. What it does, as `../shared`'s Qpien notes describe:
//! - tokens from `generateOAuthToken` that expire (the lifetime it reports, or
//!   an earlier real one to test renewal), `Bearer` or bare, scopes per
//!   operation, the error codes `UNAUTHORIZED`, `TOKEN_EXPIRED`,
//!   `INVALID_CLIENT`, `INSUFFICIENT_SCOPES` (with `requiredScope`);
//! - the rate limit (100 a minute by default) with `X-RateLimit-*` headers and 429;
//! - conversations and messages, `createMessage` deduplicated by `frontMsgId`,
//!   `updateConversation` for handoff and release;
//! - webhooks (`NEW_INCOMING_MESSAGE`, `JOIN_CONVERSATION`, and the ASSUMED
//!   `LEAVE_CONVERSATION`) signed with HMAC-SHA256 over the exact body,
//!   delivered in order and retried with exponential backoff;
//! - fault injection: a share of 5xx answers, of slow answers, of duplicate
//!   webhook deliveries, and tokens that die before their announced expiry.
//!
//! The GraphQL schema is built at start from `schema.graphql` itself (with
//! async-graphql's dynamic schema), so the simulator cannot drift from the
//! client's idea of the API; a test compares the two.

mod http;
mod schema;
pub use schema::sdl;
mod state;
mod webhooks;

pub use state::{CustomerInput, SimState, SimStats};

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
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

/// How the simulator behaves.
#[derive(Debug, Clone)]
pub struct SimConfig {
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
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8090)),
            client_id: "demo-client".into(),
            client_secret: "demo-secret".into(),
            scopes: [
                "read_messages",
                "write_messages",
                "read_conversations",
                "write_conversations",
                "read_channels",
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
    let schema = schema::build().map_err(SimError::Schema)?;
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
