//! `flowbot run`: the production process.
//!
//! ```text
//! webhook (http.rs) ─┐                        ┌─> dispatch.rs: one turn at a time per
//! poller (poll.rs) ──┼─> Inbox::accept ─> lanes   conversation (Bot::step), one atomic commit
//! timers (timers.rs) ┘   (dedup, durable)         └─> outbox.rs: replies delivered in order per
//!                                                     conversation through the Qpien client
//! ```
//! Every accepted event is in the store before it is acknowledged; every reply
//! is in the store before it is sent, and leaves it only once Qpien has it. On
//! start, unfinished inbox items and undelivered outbox items are resumed, so a
//! crash loses nothing and, with `frontMsgId`, repeats nothing.
//!
//! Bounds (tested in `tests/hostile.rs`): connections are served with
//! timeouts and a cap (`serve.rs`); only a bounded part of the outbox is held
//! in memory, the rest waits in the store (`outbox.rs`); a turn that panics or
//! stops the process repeatedly is set aside (`dispatch.rs`). With a store
//! several instances share (PostgreSQL), a conversation runs where it is
//! claimed, and Qpien's budget is drawn by all of them from one window
//! (`claims.rs`).
//!
//! The runtime owns all I/O; the engine stays pure. Each task is handed only
//! the handles it uses (as in mini-redis): the HTTP handlers an [`http::App`],
//! the poller a [`poll::Poller`], the dispatcher and the sender their lanes'
//! workers, reload a [`reload::Reload`]. [`start`] wires them; [`Running`]
//! shuts them down in order: stop accepting, drain turns, flush the outbox.

pub mod capture;
mod claims;
mod dispatch;
mod http;
mod lanes;
mod metrics;
mod outbox;
mod payload;
mod poll;
mod reload;
mod serve;
mod timers;

pub use metrics::Metrics;
pub use payload::OutboxAction;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{Config, StoreBackend};
use crate::engine::Bot;
use crate::handler::Registry;
use crate::qpien::QpienClient;
use crate::store::{MemoryStore, SqliteOptions, SqliteStore, StateStore};
use dispatch::{Dispatcher, Inbox};
use lanes::Lanes;
use outbox::{Outbox, Sender};
use reload::BotSlot;

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

/// Shutdown, as every task sees it.
#[derive(Debug, Clone)]
pub(crate) struct Stop(watch::Receiver<bool>);

impl Stop {
    pub(crate) fn is_stopping(&self) -> bool {
        *self.0.borrow()
    }

    /// Sleeps, or returns early (`false`) when shutdown begins.
    pub(crate) async fn pause(&self, d: Duration) -> bool {
        let mut stopping = self.0.clone();
        tokio::select! {
            _ = tokio::time::sleep(d) => !self.is_stopping(),
            _ = stopping.wait_for(|s| *s) => false,
        }
    }

    /// Resolves when shutdown begins.
    pub(crate) async fn wait(&self) {
        let mut stopping = self.0.clone();
        let _ = stopping.wait_for(|s| *s).await;
    }
}

/// A running runtime: its address, and a way to stop it.
pub struct Running {
    addr: SocketAddr,
    turns: Arc<Lanes<Dispatcher>>,
    outbox: Arc<Outbox>,
    deadline: Duration,
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
        let deadline = tokio::time::Instant::now() + self.deadline;
        let mut server = self.server;
        if tokio::time::timeout_at(deadline, &mut server)
            .await
            .is_err()
        {
            server.abort();
            let _ = server.await;
        }
        for t in &self.tasks {
            t.abort();
        }
        for t in self.tasks {
            let _ = t.await;
        }
        let _ = tokio::time::timeout_at(deadline, self.turns.drained()).await;
        let _ = tokio::time::timeout_at(deadline, self.outbox.drained()).await;
        let drained = Drained {
            turns_left: self.turns.len(),
            replies_left: self.outbox.len(),
        };
        // Past the deadline nothing goes on: what is left is in the store.
        self.turns.abort_all().await;
        self.outbox.abort_all().await;
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

/// Checks what [`start`] would refuse without starting anything: the flow
/// (within `[limits]`), the secrets the configuration needs (present, never
/// shown), a way to receive messages, Qpien's endpoint and documents.
/// `flowbot run --check` runs this. Returns the loaded bot.
pub fn check(config: &Config, registry: &Registry) -> Result<Bot, RuntimeError> {
    let bot = Bot::load_with(&config.flow, registry.clone(), &config.limits).map_err(|e| {
        RuntimeError::Flow {
            path: config.flow.display().to_string(),
            message: e.to_string(),
        }
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
    for (key, env, secret) in [
        (
            "qpien.client_id",
            "FLOWBOT_QPIEN__CLIENT_ID",
            &config.qpien.client_id,
        ),
        (
            "qpien.client_secret",
            "FLOWBOT_QPIEN__CLIENT_SECRET",
            &config.qpien.client_secret,
        ),
    ] {
        if secret.is_empty() {
            return Err(RuntimeError::Config(format!(
                "{key} is required to call Qpien: set {env} (or {key}_file)"
            )));
        }
    }
    QpienClient::new(config.qpien.clone())?;
    if config.store.backend == StoreBackend::Postgres && config.store.url.is_empty() {
        return Err(RuntimeError::Config(
            "store.url is required with store.backend = \"postgres\": set FLOWBOT_STORE__URL \
             (or store.url_file)"
                .into(),
        ));
    }
    Ok(bot)
}

/// Starts the runtime for `config` with the handlers of `registry`: checks it
/// (see [`check`]), opens the store, binds the server, resumes unfinished work.
pub async fn start(config: Config, registry: Registry) -> Result<Running, RuntimeError> {
    let bot = check(&config, &registry)?;
    let store: Arc<dyn StateStore> = match config.store.backend {
        StoreBackend::Sqlite => Arc::new(SqliteStore::open(
            &config.store.path,
            SqliteOptions {
                busy_timeout: config.store.busy_timeout,
                max_batch: config.store.max_batch,
                durability: config.store.durability,
                max_bytes: config.store.max_bytes,
            },
        )?),
        StoreBackend::Memory => Arc::new(MemoryStore::new()),
        #[cfg(feature = "postgres")]
        StoreBackend::Postgres => Arc::new(
            crate::store::PostgresStore::open(crate::store::PostgresOptions {
                url: config.store.url.expose().to_owned(),
                schema: config.store.schema.clone(),
                ..Default::default()
            })
            .await?,
        ),
        #[cfg(not(feature = "postgres"))]
        StoreBackend::Postgres => {
            return Err(RuntimeError::Config(
                "store.backend = \"postgres\" needs flowbot built with the `postgres` feature"
                    .into(),
            ))
        }
    };
    let client = QpienClient::new(config.qpien.clone())?;
    // Shared through the database: Qpien's budgets (100 calls a minute).
    // A budget over 1,000 calls a second (a test stand-in's) is not: counting
    // every call in the database would cost more than it protects.
    let rate = f64::from(config.qpien.rate_limit.requests)
        / config.qpien.rate_limit.per.as_secs_f64().max(1e-3);
    if store.shared() && rate <= 1_000.0 {
        client.share_budget(Arc::new(claims::StoreBudget {
            store: store.clone(),
            key: claims::StoreBudget::key_for(config.qpien.client_id.expose()),
        }));
    }
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
    let (stop_tx, stop_rx) = watch::channel(false);
    let stop = Stop(stop_rx);
    let slot = Arc::new(BotSlot::new(bot));
    let metrics = Arc::new(Metrics::new(client.clone(), slot.version_gauge()));
    let (feedback, mut learned) = tokio::sync::mpsc::unbounded_channel();
    let outbox = Outbox::new(Lanes::new(
        Sender {
            client: client.clone(),
            store: store.clone(),
            metrics: metrics.clone(),
            stop: stop.clone(),
            feedback,
            held: outbox::Held::new(
                config.runtime.outbox_in_memory,
                config.runtime.outbox_in_memory_per_conversation,
            ),
            reconciled: Default::default(),
            adopted: Default::default(),
        },
        metrics.outbox_depth.clone(),
    ));
    let claims = claims::Claims::new(store.clone(), config.runtime.claim_ttl);
    let turns = Lanes::new(
        Dispatcher {
            claims: claims.clone(),
            store: store.clone(),
            bot: slot.clone(),
            client: client.clone(),
            outbox: outbox.clone(),
            metrics: metrics.clone(),
            stop: stop.clone(),
            max_attempts: config.runtime.max_turn_attempts.max(1),
            suspects: tokio::sync::Semaphore::new(1),
            handoff: dispatch::Handoff::new(
                config.handoff.check_interval,
                &config.qpien.released_statuses,
            ),
        },
        metrics.queue_depth.clone(),
    );
    let runner = Arc::new(claims::Runner {
        claims,
        turns: turns.clone(),
        outbox: outbox.clone(),
    });
    let inbox = Arc::new(Inbox::new(
        store.clone(),
        runner.clone(),
        metrics.clone(),
        config.runtime.queue_capacity,
    ));
    // What the sender learns (a refused handoff) becomes an event of its own.
    let feedback_task = {
        let inbox = inbox.clone();
        tokio::spawn(async move {
            while let Some(ingested) = learned.recv().await {
                if let Err(e) = inbox.accept(ingested).await {
                    tracing::error!(error = %e, "cannot record a refused handoff");
                }
            }
        })
    };
    // Unfinished work first: replies already committed go out before any
    // resumed turn can queue newer ones behind them.
    outbox.resume().await?;
    inbox.resume().await?;

    let capture = match &config.server.capture_dir {
        Some(dir) => Some(
            capture::Capture::new(dir, config.server.capture_max_bytes).map_err(|e| {
                RuntimeError::Config(format!("server.capture_dir {}: {e}", dir.display()))
            })?,
        ),
        None => None,
    };
    let server = {
        let app = http::router(Arc::new(http::App {
            capture,
            server: config.server.clone(),
            inbox: inbox.clone(),
            store: store.clone(),
            client: client.clone(),
            bot: slot.clone(),
            metrics: metrics.clone(),
            stop: stop.clone(),
        }));
        let stop = stop.clone();
        let server = config.server.clone();
        tokio::spawn(async move { serve::serve(listener, app, &server, stop).await })
    };
    let mut tasks = vec![
        feedback_task,
        tokio::spawn(outbox.clone().run_refill(stop.clone())),
        tokio::spawn(runner.run(stop.clone())),
        tokio::spawn(timers::run(
            store.clone(),
            inbox.clone(),
            config.runtime.timer_interval,
            stop.clone(),
        )),
    ];
    if config.runtime.reload {
        tasks.push(tokio::spawn(reload::run(reload::Reload {
            slot: slot.clone(),
            flow: config.flow.clone(),
            limits: config.limits.clone(),
            registry,
            metrics: metrics.clone(),
            every: config.runtime.reload_interval,
            stop: stop.clone(),
        })));
    }
    if config.polling.enabled {
        tasks.push(tokio::spawn(poll::run(poll::Poller {
            client: client.clone(),
            store: store.clone(),
            inbox: inbox.clone(),
            config: config.polling.clone(),
            stop: stop.clone(),
        })));
    }
    tracing::info!(%addr, flow = %config.flow.display(), "flowbot running");
    Ok(Running {
        addr,
        turns,
        outbox,
        deadline: config.runtime.shutdown_deadline,
        stop: stop_tx,
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
