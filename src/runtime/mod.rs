//! `flowbot run`: the production process.
//!
//! ```text
//! webhook (http.rs) ─┐                      ┌─> turns.rs: one turn at a time per conversation,
//! poller (poll.rs) ──┼─> store.accept ─> lanes   one atomic commit (inbox done, session, outbox)
//! timers (timers.rs) ┘   (dedup, durable)        └─> send.rs: outbox delivered in order per
//!                                                    conversation through the Qpien client
//! ```
//! Every accepted message is in the store before it is acknowledged; every reply
//! is in the store before it is sent, and leaves it only once Qpien has it. On
//! start, unfinished inbox items and undelivered outbox items are resumed, so a
//! crash loses nothing and, with `frontMsgId`, repeats nothing.
//!
//! The runtime owns all I/O; the engine stays pure. Flows are reloaded when
//! their files change (a bad edit is refused and logged); sessions saved under
//! another flow version are placed by state name and `migrate:`.

mod codec;
mod http;
mod lanes;
mod metrics;
mod poll;
mod send;
mod timers;
mod turns;

pub use codec::OutboxAction;
pub use metrics::Metrics;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{Config, StoreBackend};
use crate::engine::Bot;
use crate::handler::Registry;
use crate::qpien::QpienClient;
use crate::store::{InboxItem, MemoryStore, OutboxItem, SqliteOptions, SqliteStore, StateStore};

/// Why the runtime could not start.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// A configuration value that cannot work.
    #[error("configuration: {0}")]
    Config(String),
    /// The flow does not load.
    #[error("flow {path}:\n{message}")]
    Flow {
        /// The flow file.
        path: String,
        /// The diagnostics.
        message: String,
    },
    /// The store cannot be opened.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// The Qpien client cannot be made.
    #[error(transparent)]
    Qpien(#[from] crate::qpien::QpienError),
    /// The address cannot be bound.
    #[error("cannot listen on {addr}: {message}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        message: String,
    },
}

/// What every part of the runtime shares.
pub(crate) struct Shared {
    pub(crate) config: Config,
    bot: RwLock<Arc<Bot>>,
    pub(crate) registry: Registry,
    pub(crate) store: Arc<dyn StateStore>,
    pub(crate) client: QpienClient,
    pub(crate) metrics: Metrics,
    pub(crate) flow_version: Arc<AtomicI64>,
    pub(crate) turns: lanes::Lanes<InboxItem>,
    pub(crate) outbox: lanes::Lanes<OutboxItem>,
    pub(crate) stopping: watch::Receiver<bool>,
}

impl Shared {
    /// The bot as of now (a reload swaps it between turns).
    pub(crate) fn bot(&self) -> Arc<Bot> {
        self.bot.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(crate) fn set_bot(&self, bot: Bot) {
        self.flow_version
            .store(metric_version(&bot), Ordering::Relaxed);
        *self.bot.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(bot);
    }

    pub(crate) fn is_stopping(&self) -> bool {
        *self.stopping.borrow()
    }

    /// Sleeps, or returns early (`false`) when shutdown begins.
    pub(crate) async fn pause(&self, d: Duration) -> bool {
        let mut stopping = self.stopping.clone();
        tokio::select! {
            _ = tokio::time::sleep(d) => !self.is_stopping(),
            _ = stopping.wait_for(|s| *s) => false,
        }
    }
}

/// The flow's fingerprint as a gauge can carry it exactly (low 52 bits).
fn metric_version(bot: &Bot) -> i64 {
    (bot.flow().version & ((1 << 52) - 1)) as i64
}

/// A running runtime: its address, and a way to stop it.
pub struct Running {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    server: JoinHandle<()>,
    tasks: Vec<JoinHandle<()>>,
}

/// How a shutdown went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drained {
    /// Accepted messages whose turn had not run at the deadline (they are in
    /// the store and run at the next start).
    pub turns_left: usize,
    /// Replies not delivered at the deadline (likewise kept).
    pub replies_left: usize,
}

impl Running {
    /// The address the HTTP server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops taking new work, lets the turns in progress finish and the outbox
    /// flush, within `runtime.shutdown_deadline`.
    pub async fn shutdown(self) -> Drained {
        let _ = self.stop.send(true);
        let deadline = tokio::time::Instant::now() + self.shared.config.runtime.shutdown_deadline;
        let _ = self.server.await;
        for t in self.tasks {
            t.abort();
        }
        let _ = tokio::time::timeout_at(deadline, self.shared.turns.drained()).await;
        let _ = tokio::time::timeout_at(deadline, self.shared.outbox.drained()).await;
        let drained = Drained {
            turns_left: self.shared.turns.len(),
            replies_left: self.shared.outbox.len(),
        };
        tracing::info!(?drained, "flowbot stopped");
        drained
    }

    /// Runs until `signal` completes, then shuts down.
    pub async fn until(self, signal: impl std::future::Future<Output = ()>) -> Drained {
        signal.await;
        tracing::info!("shutting down");
        self.shutdown().await
    }
}

/// Starts the runtime for `config` with the handlers of `registry`: opens the
/// store, loads the flow, binds the server, resumes unfinished work.
pub async fn start(config: Config, registry: Registry) -> Result<Running, RuntimeError> {
    let bot = Bot::load(&config.flow, registry.clone()).map_err(|e| RuntimeError::Flow {
        path: config.flow.display().to_string(),
        message: e.to_string(),
    })?;
    if config.server.webhook && config.server.webhook_secret.is_empty() {
        return Err(RuntimeError::Config(
            "server.webhook_secret is required to verify webhooks: set FLOWBOT_SERVER__WEBHOOK_SECRET \
             (or server.webhook_secret_file), or turn the webhook off with server.webhook = false"
                .into(),
        ));
    }
    if !config.server.webhook && !config.polling.enabled {
        return Err(RuntimeError::Config(
            "nothing to receive messages: enable server.webhook or polling.enabled".into(),
        ));
    }
    let store: Arc<dyn StateStore> = match config.store.backend {
        StoreBackend::Sqlite => Arc::new(SqliteStore::open(
            &config.store.path,
            SqliteOptions {
                busy_timeout: config.store.busy_timeout,
                max_batch: config.store.max_batch,
                durability: config.store.durability,
            },
        )?),
        StoreBackend::Memory => Arc::new(MemoryStore::new()),
    };
    let client = QpienClient::new(config.qpien.clone())?;
    let listener = tokio::net::TcpListener::bind(config.server.listen)
        .await
        .map_err(|e| RuntimeError::Bind {
            addr: config.server.listen,
            message: e.to_string(),
        })?;
    let addr = listener.local_addr().map_err(|e| RuntimeError::Bind {
        addr: config.server.listen,
        message: e.to_string(),
    })?;
    let (stop, stopping) = watch::channel(false);
    let flow_version = Arc::new(AtomicI64::new(metric_version(&bot)));
    let shared = Arc::new(Shared {
        metrics: Metrics::new(client.clone(), flow_version.clone()),
        flow_version,
        bot: RwLock::new(Arc::new(bot)),
        registry,
        store,
        client,
        turns: lanes::Lanes::default(),
        outbox: lanes::Lanes::default(),
        stopping,
        config,
    });
    // Unfinished work first: replies already committed go out before any
    // resumed turn can queue newer ones behind them.
    send::resume(&shared).await?;
    turns::resume(&shared).await?;

    let server = {
        let app = http::router(shared.clone());
        let mut stopping = shared.stopping.clone();
        tokio::spawn(async move {
            let shutdown = async move {
                let _ = stopping.wait_for(|s| *s).await;
            };
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
            {
                tracing::error!(error = %e, "HTTP server failed");
            }
        })
    };
    let mut tasks = vec![tokio::spawn(timers::run(shared.clone()))];
    if shared.config.runtime.reload {
        tasks.push(tokio::spawn(timers::reload(shared.clone())));
    }
    if shared.config.polling.enabled {
        tasks.push(tokio::spawn(poll::run(shared.clone())));
    }
    tracing::info!(%addr, flow = %shared.config.flow.display(), "flowbot running");
    Ok(Running {
        addr,
        shared,
        stop,
        server,
        tasks,
    })
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
