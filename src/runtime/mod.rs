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
//! One process may run several bots (`[[bots]]`): each gets all of the above
//! for itself (store namespace, Qpien client and budget, queues, outbox,
//! timers, reload, poller, in a `bot` span), and they share only the HTTP
//! server and the metrics registry, so what one bot does cannot hold up
//! another. The single-bot configuration is the same thing with one unnamed
//! bot ([`Spec`]).
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
mod metrics_pages;
mod outbox;
mod payload;
mod poll;
mod reload;
mod serve;
mod starts;
mod timers;

pub use metrics::Metrics;
use metrics::{BotLabel, MetricSet, Watched};
pub use payload::OutboxAction;
pub(crate) use reload::{count_live, live_state};

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::config::{Config, ServerConfig, StoreBackend, StoreConfig};
use crate::engine::Bot;
use crate::handler::Registry;
use crate::qpien::{QpienClient, QpienConfig};
use crate::store::{MemoryStore, SqliteStore, StateStore};
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
    bots: Vec<Unit>,
    /// The process's own tasks (the timers of a store of several bots).
    tasks: Vec<JoinHandle<()>>,
    deadline: Duration,
    stop: watch::Sender<bool>,
    server: JoinHandle<()>,
}

/// One bot's moving parts, as shutdown sees them.
struct Unit {
    turns: Arc<Lanes<Dispatcher>>,
    outbox: Arc<Outbox>,
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
        let mut drained = Drained {
            turns_left: 0,
            replies_left: 0,
        };
        for t in &self.tasks {
            t.abort();
        }
        for t in self.tasks {
            let _ = t.await;
        }
        for unit in &self.bots {
            for t in &unit.tasks {
                t.abort();
            }
        }
        for unit in self.bots {
            for t in unit.tasks {
                let _ = t.await;
            }
            let _ = tokio::time::timeout_at(deadline, unit.turns.drained()).await;
            let _ = tokio::time::timeout_at(deadline, unit.outbox.drained()).await;
            drained.turns_left += unit.turns.len();
            drained.replies_left += unit.outbox.len();
            // Past the deadline nothing goes on: what is left is in the store.
            unit.turns.abort_all().await;
            unit.outbox.abort_all().await;
        }
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

/// One bot as the runtime runs it: the single-bot configuration is one of
/// these without a name; each `[[bots]]` entry is one with its name, its
/// webhook and its store namespace applied.
struct Spec {
    name: Option<String>,
    /// Its key in a store that holds several bots (`""`: the single bot).
    key: String,
    flow: PathBuf,
    qpien: QpienConfig,
    server: ServerConfig,
    store: StoreConfig,
}

impl Spec {
    fn all(config: &Config) -> Vec<Spec> {
        if config.bots.is_empty() {
            return vec![Spec {
                name: None,
                key: String::new(),
                flow: config.flow.clone(),
                qpien: config.qpien.clone(),
                server: config.server.clone(),
                store: config.store.clone(),
            }];
        }
        config
            .bots
            .iter()
            .map(|b| {
                let mut server = config.server.clone();
                server.webhook_path = b.webhook_path();
                if !b.webhook_secret.is_empty() {
                    server.webhook_secret = b.webhook_secret.clone();
                }
                // One store for every bot (SQLite's file, PostgreSQL's
                // schema and pool), each row keyed by the bot's namespace.
                let store = config.store.clone();
                let ns = b.store_namespace();
                Spec {
                    name: Some(b.name.clone()),
                    key: ns,
                    flow: b.flow.clone(),
                    qpien: b.qpien.clone(),
                    server,
                    store,
                }
            })
            .collect()
    }

    /// What an error of this bot is prefixed with.
    fn at(&self) -> String {
        match &self.name {
            Some(n) => format!("bots[{n}]: "),
            None => String::new(),
        }
    }

    fn span(&self) -> tracing::Span {
        match &self.name {
            Some(n) => tracing::info_span!("bot", bot = %n),
            None => tracing::Span::none(),
        }
    }
}

/// The file flowbot kept for one bot before one file held them all:
/// `flowbot.db` with namespace `acme`: `flowbot.acme.db` (`flowbot bots
/// import-store` moves it).
pub(crate) fn per_bot_file(path: &Path, ns: &str) -> PathBuf {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "flowbot".into());
    let name = match path.extension() {
        Some(ext) => format!("{stem}.{ns}.{}", ext.to_string_lossy()),
        None => format!("{stem}.{ns}"),
    };
    path.with_file_name(name)
}

/// Checks what [`start`] would refuse without starting anything: each bot's
/// flow (within `[limits]`), the secrets the configuration needs (present,
/// never shown), a way to receive messages, Qpien's endpoint and documents.
/// `flowbot run --check` runs this. Returns the loaded bots, in the order of
/// the configuration.
pub fn check(config: &Config, registry: &Registry) -> Result<Vec<Bot>, RuntimeError> {
    let flows = reload::FlowCache::default();
    Spec::all(config)
        .iter()
        .map(|spec| check_one(config, spec, registry, &flows))
        .collect()
}

fn check_one(
    config: &Config,
    spec: &Spec,
    registry: &Registry,
    flows: &reload::FlowCache,
) -> Result<Bot, RuntimeError> {
    let at = spec.at();
    let failed = |e: crate::engine::BotError| RuntimeError::Flow {
        path: spec.flow.display().to_string(),
        message: e.to_string(),
    };
    let bot = flows
        .load(&spec.flow, registry, &config.limits)
        .map_err(failed)?;
    // What the flow's schedules risk (their firings outgrowing the budget,
    // WhatsApp's window) is said where the bot runs, not only by `validate`.
    for w in bot.flow().warnings.warnings() {
        if w.path.starts_with("schedules") {
            tracing::warn!(bot = spec.name.as_deref(), "{w}");
        }
    }
    if spec.server.webhook && spec.server.webhook_secret.expose().len() < MIN_SECRET {
        let (key, env) = match &spec.name {
            Some(n) => (
                format!("bots[{n}].webhook_secret"),
                format!("{}WEBHOOK_SECRET", crate::config::bot_env_prefix(n)),
            ),
            None => (
                "server.webhook_secret".to_owned(),
                "FLOWBOT_SERVER__WEBHOOK_SECRET".to_owned(),
            ),
        };
        let what = if spec.server.webhook_secret.is_empty() {
            "is required to verify webhooks".to_owned()
        } else {
            format!("is shorter than {MIN_SECRET} characters, too easy to guess")
        };
        return Err(RuntimeError::Config(format!(
            "{key} {what}: set {env} (or {key}_file) to the secret Qpien signs webhooks \
             with, or turn the webhook off with server.webhook = false"
        )));
    }
    if spec.store.backend == StoreBackend::Postgres
        && !crate::store::is_schema_name(&spec.store.schema)
    {
        return Err(RuntimeError::Config(format!(
            "{at}store.schema: `{}` must be 1 to 63 lowercase letters, digits or `_`, not \
             starting with a digit (with [[bots]], `<store.schema>_<namespace>`)",
            spec.store.schema
        )));
    }
    if !spec.server.webhook && !config.polling.enabled {
        return Err(RuntimeError::Config(
            "nothing to receive messages: enable server.webhook or polling.enabled".into(),
        ));
    }
    for (key, env, secret) in [
        ("qpien.client_id", "CLIENT_ID", &spec.qpien.client_id),
        (
            "qpien.client_secret",
            "CLIENT_SECRET",
            &spec.qpien.client_secret,
        ),
    ] {
        if secret.is_empty() {
            let env = match &spec.name {
                Some(n) => format!("{}QPIEN__{env}", crate::config::bot_env_prefix(n)),
                None => format!("FLOWBOT_QPIEN__{env}"),
            };
            return Err(RuntimeError::Config(format!(
                "{at}{key} is required to call Qpien: set {env} (or {key}_file)"
            )));
        }
    }
    QpienClient::new(spec.qpien.clone()).map_err(|e| RuntimeError::Config(format!("{at}{e}")))?;
    if spec.store.backend == StoreBackend::Postgres && spec.store.url.is_empty() {
        return Err(RuntimeError::Config(
            "store.url is required with store.backend = \"postgres\": set FLOWBOT_STORE__URL \
             (or store.url_file)"
                .into(),
        ));
    }
    Ok(bot)
}

/// Refuses to start bots whose stores need more open files than the
/// process may have (raised to the system's hard limit first): said up front,
/// with the numbers, rather than as SQLite's "unable to open database file"
/// halfway through.
fn check_open_files(specs: &[Spec]) -> Result<(), RuntimeError> {
    // SQLite: the database, its journal, its shared memory and its lock;
    // PostgreSQL: a pool of up to 16 connections and one that listens.
    let files: std::collections::HashSet<&Path> = specs
        .iter()
        .filter(|s| s.store.backend == StoreBackend::Sqlite)
        .map(|s| s.store.path.as_path())
        .collect();
    let need: u64 = files.len() as u64 * 4
        + specs
            .iter()
            .find(|s| s.store.backend == StoreBackend::Postgres)
            .map_or(0, |s| s.store.max_connections as u64 + 1)
        + 64;
    let limit = rlimit::increase_nofile_limit(u64::MAX).unwrap_or(1024);
    if need > limit {
        return Err(RuntimeError::Config(format!(
            "the store of {} bot(s) needs about {need} open files (SQLite: 4 a file; \
             PostgreSQL: store.max_connections and one that listens), and the open-file \
             limit is {limit}: raise it (`ulimit -n {need}` in the shell, LimitNOFILE={need} \
             in a systemd unit) or lower store.max_connections",
            specs.len()
        )));
    }
    Ok(())
}

/// The shortest webhook secret accepted: a shorter one is guessed quickly.
const MIN_SECRET: usize = 16;

/// The stores of a process's bots: a SQLite file is opened once, and each
/// bot gets its handle on it.
#[derive(Default)]
struct Stores {
    sqlite: std::collections::HashMap<PathBuf, SqliteStore>,
    #[cfg(feature = "postgres")]
    postgres: Option<crate::store::PostgresStore>,
}

impl Stores {
    /// The one store every bot shares, when they share one.
    fn shared(&self) -> Option<Arc<dyn StateStore>> {
        #[cfg(feature = "postgres")]
        if let Some(db) = &self.postgres {
            return Some(Arc::new(db.clone()));
        }
        match self.sqlite.values().collect::<Vec<_>>()[..] {
            [one] => Some(Arc::new(one.clone())),
            _ => None,
        }
    }

    async fn open(&mut self, spec: &Spec) -> Result<Arc<dyn StateStore>, RuntimeError> {
        let store = &spec.store;
        #[cfg(feature = "postgres")]
        if store.backend == StoreBackend::Postgres {
            // One schema and one pool, whatever the number of bots.
            let db = match &self.postgres {
                Some(db) => db.clone(),
                None => {
                    let db = postgres_store(store).await?;
                    self.postgres = Some(db.clone());
                    db
                }
            };
            return Ok(Arc::new(db.bot(&spec.key).await?));
        }
        if store.backend != StoreBackend::Sqlite {
            return open_store(store).await;
        }
        let file = match self.sqlite.get(&store.path) {
            Some(f) => f.clone(),
            None => {
                let f = SqliteStore::open(&store.path, store.sqlite_options())?;
                self.sqlite.insert(store.path.clone(), f.clone());
                f
            }
        };
        if spec.name.is_some() {
            let earlier = per_bot_file(&store.path, &spec.key);
            if earlier.is_file() {
                tracing::warn!(
                    file = %earlier.display(),
                    "this file holds this bot's conversations from an earlier version, which kept a file per bot: \
                     stop the process and run `flowbot bots import-store` to move them into {}",
                    store.path.display()
                );
            }
        }
        Ok(Arc::new(file.bot(&spec.key).await?))
    }
}

#[cfg(feature = "postgres")]
pub(crate) async fn postgres_store(
    store: &StoreConfig,
) -> Result<crate::store::PostgresStore, RuntimeError> {
    Ok(
        crate::store::PostgresStore::open(crate::store::PostgresOptions {
            url: store.url.expose().to_owned(),
            schema: store.schema.clone(),
            max_connections: store.max_connections,
            ..Default::default()
        })
        .await?,
    )
}

async fn open_store(store: &StoreConfig) -> Result<Arc<dyn StateStore>, RuntimeError> {
    Ok(match store.backend {
        StoreBackend::Sqlite => Arc::new(SqliteStore::open(&store.path, store.sqlite_options())?),
        StoreBackend::Memory => Arc::new(MemoryStore::new()),
        #[cfg(feature = "postgres")]
        StoreBackend::Postgres => Arc::new(postgres_store(store).await?),
        #[cfg(not(feature = "postgres"))]
        StoreBackend::Postgres => {
            return Err(RuntimeError::Config(
                "store.backend = \"postgres\" needs flowbot built with the `postgres` feature"
                    .into(),
            ))
        }
    })
}

/// One bot, opened: its store, its client, its flow in service.
struct Opened {
    spec: Spec,
    store: Arc<dyn StateStore>,
    client: QpienClient,
    slot: Arc<BotSlot>,
    /// The account's approved WhatsApp templates, when read.
    templates: Option<Vec<crate::flow::TemplateInfo>>,
}

/// The account's approved WhatsApp templates, to check the flow's against;
/// `None` (and a warning) when Qpien does not say within 5 s (start is not
/// held up longer for a check).
async fn read_templates(client: &QpienClient) -> Option<Vec<crate::flow::TemplateInfo>> {
    match tokio::time::timeout(Duration::from_secs(5), client.templates()).await {
        Ok(Ok(list)) => {
            tracing::info!(
                count = list.len(),
                "approved WhatsApp templates read from Qpien"
            );
            Some(list)
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "cannot read the WhatsApp templates; the flow's are not checked");
            None
        }
        Err(_) => {
            tracing::warn!(
                "no WhatsApp templates from Qpien within 10 s; the flow's are not checked"
            );
            None
        }
    }
}

/// Starts the runtime for `config` with the handlers of `registry`: checks it
/// (see [`check`]), opens the stores, binds the server, resumes unfinished
/// work. With `[[bots]]`, each bot gets its own store, Qpien client, queues,
/// outbox, timers, reload and poller: what one bot does (a failing action,
/// Qpien's 429s, a flow that does not reload) touches no other.
pub async fn start(config: Config, registry: Registry) -> Result<Running, RuntimeError> {
    let specs = Spec::all(&config);
    check_open_files(&specs)?;
    let mut opened = Vec::with_capacity(specs.len());
    // One HTTP client (pool, TLS configuration) for every bot's Qpien client.
    let http = crate::qpien::client::http_client()?;
    let mut stores = Stores::default();
    let flows = Arc::new(reload::FlowCache::default());
    for spec in specs {
        let bot = check_one(&config, &spec, &registry, &flows)?;
        let store = stores.open(&spec).await?;
        let client = QpienClient::with_http(spec.qpien.clone(), http.clone())?;
        // Kept in the store: Qpien's budgets (100 calls a minute), shared by
        // the instances of a shared store, and known to a restarted process
        // (it does not spend again what the one before spent). A budget over
        // 1,000 calls a second (a test stand-in's) is not: counting every
        // call in the database would cost more than it protects.
        let rate = f64::from(spec.qpien.rate_limit.requests)
            / spec.qpien.rate_limit.per.as_secs_f64().max(1e-3);
        if let Some(knew) = store.keeps_budget().filter(|_| rate <= 1_000.0) {
            client.share_budget(Arc::new(claims::StoreBudget {
                store: store.clone(),
                key: claims::StoreBudget::key_for(spec.qpien.client_id.expose()),
                hold: spec.qpien.request_timeout + Duration::from_secs(5),
                knew,
            }));
        }
        let templates = if bot.flow().whatsapp_templates.is_empty() {
            None
        } else {
            read_templates(&client).instrument(spec.span()).await
        };
        let bot = match &templates {
            Some(list) => {
                Bot::load_with_templates(&spec.flow, registry.clone(), &config.limits, Some(list))
                    .map_err(|e| RuntimeError::Flow {
                    path: spec.flow.display().to_string(),
                    message: e.to_string(),
                })?
            }
            // Bots of one flow file keep one compiled flow (`flows`); checked
            // against an account's templates, a flow is the bot's own.
            None => bot,
        };
        let slot = Arc::new(BotSlot::new(bot));
        opened.push(Opened {
            spec,
            store,
            client,
            slot,
            templates,
        });
    }
    let set = Arc::new(MetricSet::new(
        opened
            .iter()
            .map(|o| Watched {
                bot: BotLabel::new(o.spec.name.as_deref()),
                client: o.client.clone(),
                flow_version: o.slot.version_gauge(),
            })
            .collect(),
    ));
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
    let mut apps = Vec::with_capacity(opened.len());
    let mut bots = Vec::with_capacity(opened.len());
    // Several bots in one store: one task reads the timers of them all.
    let shared = stores.shared().filter(|_| !config.bots.is_empty());
    let mut inboxes = std::collections::HashMap::new();
    for o in opened {
        let span = o.spec.span();
        let key = o.spec.key.clone();
        let metrics = Arc::new(set.bot(&BotLabel::new(o.spec.name.as_deref())));
        let own_timers = shared.is_none();
        let (app, unit) = launch(
            &config,
            o,
            metrics,
            &registry,
            stop.clone(),
            own_timers,
            &flows,
        )
        .instrument(span)
        .await?;
        inboxes.insert(key, app.inbox.clone());
        apps.push(app);
        bots.push(unit);
    }
    let mut tasks = Vec::new();
    if let Some(store) = shared {
        tasks.push(tokio::spawn(timers::run_for_every_bot(
            store,
            inboxes,
            config.runtime.timer_interval,
            config.clock.clone(),
            stop.clone(),
        )));
    }
    let server = {
        let app = http::router(&apps, set, config.runtime.metrics_top_bots, stop.clone());
        let stop = stop.clone();
        let server = config.server.clone();
        tokio::spawn(async move { serve::serve(listener, app, &server, stop).await })
    };
    match config.bots.is_empty() {
        true => tracing::info!(%addr, flow = %config.flow.display(), "flowbot running"),
        false => tracing::info!(%addr, bots = config.bots.len(), "flowbot running"),
    }
    Ok(Running {
        addr,
        bots,
        tasks,
        deadline: config.runtime.shutdown_deadline,
        stop: stop_tx,
        server,
    })
}

/// Wires one bot's tasks (in its span, so its logs carry `bot`), resumes its
/// unfinished work, and hands back what its HTTP endpoints need.
async fn launch(
    config: &Config,
    o: Opened,
    metrics: Arc<Metrics>,
    registry: &Registry,
    stop: Stop,
    own_timers: bool,
    flows: &Arc<reload::FlowCache>,
) -> Result<(Arc<http::App>, Unit), RuntimeError> {
    let Opened {
        spec,
        store,
        client,
        slot,
        templates,
    } = o;
    let span = tracing::Span::current();
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
            clock: config.clock.clone(),
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
                &spec.qpien.released_statuses,
            ),
            clock: config.clock.clone(),
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
        config.runtime.max_pending_per_conversation.max(1),
    ));
    // What the sender learns (a refused handoff) becomes an event of its own.
    let feedback_task = {
        let inbox = inbox.clone();
        tokio::spawn(
            async move {
                while let Some(ingested) = learned.recv().await {
                    if let Err(e) = inbox.accept(ingested).await {
                        tracing::error!(error = %e, "cannot record a refused handoff");
                    }
                }
            }
            .instrument(span.clone()),
        )
    };
    // Unfinished work first: replies already committed go out before any
    // resumed turn can queue newer ones behind them.
    outbox.resume().await?;
    inbox.resume().await?;

    let capture = match &spec.server.capture_dir {
        Some(dir) => {
            let dir = match &spec.name {
                Some(n) => dir.join(n),
                None => dir.clone(),
            };
            Some(
                capture::Capture::new(&dir, spec.server.capture_max_bytes).map_err(|e| {
                    RuntimeError::Config(format!("server.capture_dir {}: {e}", dir.display()))
                })?,
            )
        }
        None => None,
    };
    let app = Arc::new(http::App {
        capture,
        server: spec.server.clone(),
        inbox: inbox.clone(),
        store: store.clone(),
        client: client.clone(),
        bot: slot.clone(),
        metrics: metrics.clone(),
        stop: stop.clone(),
        name: spec.name.clone(),
        span: span.clone(),
        clock: config.clock.clone(),
        checked: Default::default(),
        starts: starts::StartLimit::new(spec.server.start_limit),
    });
    let mut tasks = vec![
        feedback_task,
        tokio::spawn(
            outbox
                .clone()
                .run_refill(stop.clone())
                .instrument(span.clone()),
        ),
        tokio::spawn(runner.run(stop.clone()).instrument(span.clone())),
    ];
    if own_timers {
        tasks.push(tokio::spawn(
            timers::run(
                store.clone(),
                inbox.clone(),
                config.runtime.timer_interval,
                config.clock.clone(),
                stop.clone(),
            )
            .instrument(span.clone()),
        ));
    }
    if config.runtime.reload {
        tasks.push(tokio::spawn(
            reload::run(reload::Reload {
                slot: slot.clone(),
                flow: spec.flow.clone(),
                limits: config.limits.clone(),
                registry: registry.clone(),
                metrics: metrics.clone(),
                every: config.runtime.reload_interval,
                stop: stop.clone(),
                templates,
                store: store.clone(),
                flows: flows.clone(),
            })
            .instrument(span.clone()),
        ));
    }
    if config.polling.enabled {
        tasks.push(tokio::spawn(
            poll::run(poll::Poller {
                client: client.clone(),
                store: store.clone(),
                inbox: inbox.clone(),
                config: config.polling.clone(),
                stop: stop.clone(),
                started: crate::time::now(),
            })
            .instrument(span.clone()),
        ));
    }
    Ok((
        app,
        Unit {
            turns,
            outbox,
            tasks,
        },
    ))
}

/// Resolves on Ctrl-C or SIGTERM. The signals are taken over when this is
/// called, not when it is first awaited: call it before saying the process
/// is up, so that a signal sent right after is not the default (an exit that
/// skips the clean stop).
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, Signal, SignalKind};
        let interrupt = signal(SignalKind::interrupt()).ok();
        let terminate = signal(SignalKind::terminate()).ok();
        async fn wait(s: Option<Signal>) {
            match s {
                Some(mut s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        }
        async move {
            tokio::select! {
                _ = wait(interrupt) => {},
                _ = wait(terminate) => {},
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}
