//! `flowbot run`: the production process.
//!
//! ```text
//! webhook (http.rs) ─┐   inbox.rs:                    ┌─> dispatch.rs: one turn at a time per
//! poller (poll.rs) ──┼─> Inbox::accept ─> route.rs ─> lanes conversation (Bot::step), one atomic commit
//! timers (timers.rs) ┘   (dedup, durable)  (claims)    └─> outbox.rs: replies delivered in order per
//!                                                          conversation through the Qpien client
//! ```
//! Every accepted event is in the store before it is acknowledged (on
//! SQLite, one whose conversation is idle is run first and written with its
//! turn: `at_once.rs`); every reply
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
//! (`claims.rs`, `route.rs`). Flows are compiled when a bot first needs
//! one, shared by content, in a cache bounded in bytes (`flows.rs`).
//!
//! One process may run several bots (`[[bots]]`, or the store's registry:
//! `registry.rs`): they share the store (one SQLite file and writer, or one
//! PostgreSQL schema and pool, every row keyed by bot), the HTTP server, the
//! metrics registry, one timer task and the process's workers (with a cap per
//! bot, `lanes::Share`); each has its own Qpien client and budget, queues,
//! outbox, claims, reload and poller, in a `bot` span, so that what one bot
//! does cannot hold up another. `host.rs` holds the bots while the process
//! runs, and adds, changes, pauses and removes them without a restart. The
//! single-bot configuration is the same thing with one unnamed bot
//! ([`Spec`]).
//!
//! The runtime owns all I/O; the engine stays pure. Each task is handed only
//! the handles it uses (as in mini-redis): the HTTP handlers an [`http::App`],
//! the poller a [`poll::Poller`], the dispatcher and the sender their lanes'
//! workers, reload a [`reload::Reload`]. [`start`] wires them; [`Running`]
//! shuts them down in order: stop accepting, drain turns, flush the outbox.

mod at_once;
pub mod capture;
mod claims;
mod console;
mod dispatch;
mod erasure;
mod flows;
mod host;
mod http;
mod inbox;
mod lanes;
mod metrics;
mod metrics_pages;
mod outbox;
mod payload;
mod poll;
mod registry;
mod reload;
mod retention;
mod route;
mod serve;
mod starts;
mod timers;

use metrics::MetricSet;
pub use metrics::Metrics;
pub use payload::OutboxAction;
pub(crate) use reload::{count_live, live_state};

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{BotConfig, Config, ServerConfig, StoreBackend, StoreConfig};
use crate::engine::Bot;
use crate::handler::Registry;
use crate::qpien::{QpienClient, QpienConfig};
use crate::store::{MemoryStore, SqliteStore, StateStore};

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
    host: Arc<host::Host>,
    /// The process's own tasks (the timers of a store of several bots, the
    /// registry's watch).
    tasks: Vec<JoinHandle<()>>,
    deadline: Duration,
    stop: watch::Sender<bool>,
    server: JoinHandle<()>,
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
        let left = self.host.stop_all(deadline).await;
        let drained = Drained {
            turns_left: left.turns,
            replies_left: left.replies,
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

/// One bot as the runtime runs it: the single-bot configuration is one of
/// these without a name; each `[[bots]]` entry is one with its name, its
/// webhook and its store namespace applied.
pub(crate) struct Spec {
    pub(crate) name: Option<String>,
    /// Its key in a store that holds several bots (`""`: the single bot).
    pub(crate) key: String,
    pub(crate) flow: PathBuf,
    pub(crate) qpien: QpienConfig,
    pub(crate) server: ServerConfig,
    pub(crate) store: StoreConfig,
}

impl Spec {
    fn all(config: &Config) -> Vec<Spec> {
        if config.bots.is_empty() && config.runtime.registry {
            // The registry's bots only: the top-level flow is no bot.
            return Vec::new();
        }
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
            .map(|b| Spec::of_bot(config, b))
            .collect()
    }

    /// One bot of several.
    fn of_bot(config: &Config, b: &BotConfig) -> Spec {
        let mut server = config.server.clone();
        server.webhook_path = b.webhook_path();
        if !b.webhook_secret.is_empty() {
            server.webhook_secret = b.webhook_secret.clone();
        }
        // One store for every bot (SQLite's file, PostgreSQL's schema and
        // pool), each row keyed by the bot's namespace.
        Spec {
            name: Some(b.name.clone()),
            key: b.store_namespace(),
            flow: b.flow.clone(),
            qpien: b.qpien.clone(),
            server,
            store: config.store.clone(),
        }
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
pub fn check(config: &Config, registry: &Registry) -> Result<Vec<Arc<Bot>>, RuntimeError> {
    let registry = with_live_http(config, registry)?;
    let flows = flows::Flows::new(registry, config.limits.clone(), u64::MAX);
    Spec::all(config)
        .iter()
        .map(|spec| check_one(config, spec, &flows))
        .collect()
}

/// What [`check`] checks of one bot: its configuration, and its flow
/// compiled (through `flows`, which keeps it).
fn check_one(config: &Config, spec: &Spec, flows: &flows::Flows) -> Result<Arc<Bot>, RuntimeError> {
    let sources = read_flow(spec, flows)?;
    check_spec(config, spec)?;
    let bot = flows
        .bot_now(&sources, None)
        .map_err(|e| flow_error(spec, e))?;
    warn_schedules(spec, &bot);
    Ok(bot)
}

/// A bot's flow, read (not compiled).
fn read_flow(
    spec: &Spec,
    flows: &flows::Flows,
) -> Result<Arc<crate::flow::FlowSources>, RuntimeError> {
    flows.read(&spec.flow).map_err(|e| flow_error(spec, e))
}

fn flow_error(spec: &Spec, e: crate::engine::BotError) -> RuntimeError {
    RuntimeError::Flow {
        path: spec.flow.display().to_string(),
        message: e.to_string(),
    }
}

/// What the flow's schedules risk (their firings outgrowing the budget,
/// WhatsApp's window) is said where the bot runs, not only by `validate`.
fn warn_schedules(spec: &Spec, bot: &Bot) {
    for w in bot.flow().warnings.warnings() {
        if w.path.starts_with("schedules") {
            tracing::warn!(bot = spec.name.as_deref(), "{w}");
        }
    }
}

/// The configuration of one bot, but its flow: secrets, a way to receive
/// messages, Qpien's endpoint, the store.
fn check_spec(config: &Config, spec: &Spec) -> Result<(), RuntimeError> {
    let at = spec.at();
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
    Ok(())
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
pub(crate) struct Stores {
    sqlite: std::collections::HashMap<PathBuf, SqliteStore>,
    #[cfg(feature = "postgres")]
    postgres: Option<crate::store::PostgresStore>,
}

impl Stores {
    /// The registry of the store the bots share, opening it.
    async fn registry(
        &mut self,
        store: &StoreConfig,
    ) -> Result<Arc<dyn crate::store::BotRegistry>, RuntimeError> {
        match store.backend {
            #[cfg(feature = "postgres")]
            StoreBackend::Postgres => {
                let db = postgres_store(store).await?;
                self.postgres = Some(db.clone());
                Ok(Arc::new(db))
            }
            StoreBackend::Sqlite => {
                let f = SqliteStore::open(&store.path, store.sqlite_options())?;
                self.sqlite.insert(store.path.clone(), f.clone());
                Ok(Arc::new(f))
            }
            StoreBackend::Memory => Ok(Arc::new(crate::store::MemoryRegistry::default())),
            #[cfg(not(feature = "postgres"))]
            StoreBackend::Postgres => Err(no_postgres()),
        }
    }

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

    /// The store `spec`'s bot is kept in, opened the first time; its own
    /// handle comes from [`Shared::bot`], without holding `self`, so that
    /// bots added together are registered in one commit.
    pub(crate) async fn file_of(&mut self, spec: &Spec) -> Result<Shared, RuntimeError> {
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
            return Ok(Shared::Postgres(db));
        }
        if store.backend != StoreBackend::Sqlite {
            return Ok(Shared::Own(open_store(store).await?));
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
        Ok(Shared::Sqlite(file))
    }
}

/// A store as [`Stores::file_of`] gives it: one bots share, or a bot's own.
pub(crate) enum Shared {
    Sqlite(SqliteStore),
    #[cfg(feature = "postgres")]
    Postgres(crate::store::PostgresStore),
    Own(Arc<dyn StateStore>),
}

impl Shared {
    /// The handle of the bot kept under `key`.
    pub(crate) async fn bot(self, key: &str) -> Result<Arc<dyn StateStore>, RuntimeError> {
        Ok(match self {
            Shared::Sqlite(f) => Arc::new(f.bot(key).await?),
            #[cfg(feature = "postgres")]
            Shared::Postgres(db) => Arc::new(db.bot(key).await?),
            Shared::Own(s) => s,
        })
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
            session_cache_bytes: store.session_cache_bytes,
            ..Default::default()
        })
        .await?,
    )
}

/// What a build without the `postgres` feature says to `store.backend = "postgres"`.
#[cfg(not(feature = "postgres"))]
fn no_postgres() -> RuntimeError {
    RuntimeError::Config(
        "store.backend = \"postgres\" needs flowbot built with the `postgres` feature".into(),
    )
}

async fn open_store(store: &StoreConfig) -> Result<Arc<dyn StateStore>, RuntimeError> {
    Ok(match store.backend {
        StoreBackend::Sqlite => Arc::new(SqliteStore::open(&store.path, store.sqlite_options())?),
        StoreBackend::Memory => Arc::new(MemoryStore::new()),
        #[cfg(feature = "postgres")]
        StoreBackend::Postgres => Arc::new(postgres_store(store).await?),
        #[cfg(not(feature = "postgres"))]
        StoreBackend::Postgres => return Err(no_postgres()),
    })
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

/// The registry with the network as its `http:` client (within
/// `[http]`'s allow list and `limits.http_body_bytes`), unless it has one.
/// With `[nlu.llm]`, that endpoint is also the registry's classifier
/// (unless it has one).
fn with_live_http(config: &Config, registry: &Registry) -> Result<Registry, RuntimeError> {
    let live = crate::fetch::LiveHttp::new(&config.http, config.limits.http_body_bytes)
        .map_err(RuntimeError::Config)?;
    with_llm(config, registry.clone().http_or(Arc::new(live)))
}

/// The registry with `[nlu.llm]`'s endpoint as its classifier, unless it
/// has one; an error if the section is wrong, or this build has no `llm`.
pub(crate) fn with_llm(config: &Config, registry: Registry) -> Result<Registry, RuntimeError> {
    let Some(llm) = &config.nlu.llm else {
        return Ok(registry);
    };
    #[cfg(feature = "llm")]
    {
        let c = crate::nlu::llm::LlmClassifier::new(llm.clone()).map_err(RuntimeError::Config)?;
        Ok(registry.classifier_or(Arc::new(c)))
    }
    #[cfg(not(feature = "llm"))]
    {
        let _ = (llm, registry);
        Err(RuntimeError::Config(
            "`[nlu.llm]` needs flowbot built with the `llm` feature".into(),
        ))
    }
}

/// Starts the runtime for `config` with the handlers of `registry`: checks it
/// (see [`check`]), opens the store, binds the server, resumes unfinished
/// work. With several bots (`[[bots]]`, or `runtime.registry`), the bots are
/// those of the store's registry, `[[bots]]` imported into it first, and each
/// gets its own Qpien client, queues, outbox, reload and poller: what one bot
/// does (a failing action, Qpien's 429s, a flow that does not reload) touches
/// no other.
pub async fn start(config: Config, registry: Registry) -> Result<Running, RuntimeError> {
    let many = !config.bots.is_empty() || config.runtime.registry;
    let specs = Spec::all(&config);
    check_open_files(&specs)?;
    let http = crate::qpien::client::http_client()?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let stop = Stop(stop_rx);
    let mut stores = Stores::default();
    let book = match many {
        true => Some(stores.registry(&config.store).await?),
        false => None,
    };
    // The key credentials given through the admin API are sealed with.
    let key = match many {
        true => crate::sealed::SecretKey::load(config.server.secret_key_file.as_deref())
            .map_err(|e| RuntimeError::Config(e.to_string()))?,
        false => None,
    };
    // Several bots in one store: one task reads the timers of them all.
    let shared = stores.shared().filter(|_| many);
    let flows = Arc::new(flows::Flows::new(
        with_live_http(&config, &registry)?,
        config.limits.clone(),
        config.runtime.flow_cache_bytes,
    ));
    let host = Arc::new(host::Host {
        stores: tokio::sync::Mutex::new(stores),
        flows: flows.clone(),
        http,
        set: Arc::new(MetricSet::new(flows.clone())),
        stop: stop.clone(),
        directory: Default::default(),
        shared_timers: shared.is_some(),
        key,
        book,
        seen: Default::default(),
        workers: many.then(|| lanes::Workers::new(config.runtime.workers)),
        file_bots: config
            .bots
            .iter()
            .enumerate()
            .map(|(i, b)| (b.name.clone(), i))
            .collect(),
        config,
    });
    let mut tasks = Vec::new();
    match host.book.is_some() {
        false => {
            let spec = specs.into_iter().next().expect("one bot");
            host.add(spec, host::Applied::single()).await?;
        }
        true => tasks.push(registry::open(&host).await?),
    }
    let config = &host.config;
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
    if let Some(store) = shared {
        tasks.push(host.run_timers(store));
    }
    tasks.push(host.drop_idle_tokens());
    tasks.push(host.sweep_old_data());
    let server = {
        let app = http::router(&host, many);
        let stop = stop.clone();
        let server = config.server.clone();
        tokio::spawn(async move { serve::serve(listener, app, &server, stop).await })
    };
    match many {
        false => tracing::info!(%addr, flow = %config.flow.display(), "flowbot running"),
        true => tracing::info!(%addr, bots = host.directory.len(), "flowbot running"),
    }
    Ok(Running {
        addr,
        deadline: config.runtime.shutdown_deadline,
        host,
        tasks,
        stop: stop_tx,
        server,
    })
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
