//! The bots of a process, while it runs: each is a [`Live`] in the
//! [`Directory`] the HTTP server routes by, and may be added, changed,
//! paused, resumed and removed without a restart (see `registry.rs` for where
//! those changes come from).
//!
//! A bot has two layers. What lasts as long as the bot is in this process:
//! its store handle, its metrics and its [`Inbox`], so that an event accepted
//! at any moment, even while the bot is being changed, lands in the one inbox
//! and is run exactly once. What a change replaces: its configuration, Qpien
//! client, compiled flow and HTTP endpoints (an [`App`]), and its workers (a
//! [`Unit`]: the turns' and the replies' lanes and the bot's tasks). A paused
//! bot has no unit: its inbox only records, and resuming starts a unit that
//! runs what was recorded.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::Instrument;

use super::dispatch::Dispatcher;
use super::flows::{BotSlot, Flows};
use super::http::App;
use super::inbox::Inbox;
use super::lanes::{Lanes, Share, Workers};
use super::metrics::{BotLabel, MetricSet, Metrics, Watched};
use super::outbox::{Outbox, Sender};
use super::{claims, outbox, poll, reload, route, starts, timers};
use super::{RuntimeError, Spec, Stop, Stores};
use crate::config::Config;
use crate::qpien::QpienClient;
use crate::store::{BotSource, BotState, StateStore};

/// A bot's workers: its lanes and its tasks, stopped together.
pub(crate) struct Unit {
    turns: Arc<Lanes<Dispatcher>>,
    outbox: Arc<Outbox>,
    tasks: Vec<JoinHandle<()>>,
    stop: watch::Sender<bool>,
}

/// What a unit left undone when it stopped.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Left {
    pub(crate) turns: usize,
    pub(crate) replies: usize,
}

impl Unit {
    /// Stops taking work, lets what is in progress finish until `deadline`,
    /// then stops the rest where it is (it is all in the store).
    async fn stop(self, deadline: tokio::time::Instant) -> Left {
        let _ = self.stop.send(true);
        for t in &self.tasks {
            t.abort();
        }
        for t in self.tasks {
            let _ = t.await;
        }
        let _ = tokio::time::timeout_at(deadline, self.turns.drained()).await;
        let _ = tokio::time::timeout_at(deadline, self.outbox.drained()).await;
        let left = Left {
            turns: self.turns.len(),
            replies: self.outbox.len(),
        };
        self.turns.abort_all().await;
        self.outbox.abort_all().await;
        left
    }
}

/// What a change of a bot replaces: how it is configured and reached.
pub(crate) struct Face {
    pub(crate) spec: Spec,
    pub(crate) client: QpienClient,
    pub(crate) slot: Arc<BotSlot>,
    pub(crate) app: Arc<App>,
}

/// One bot in this process.
pub(crate) struct Live {
    /// Its name (none: the one bot of a single-bot process).
    pub(crate) name: Option<String>,
    /// Its key in the store.
    pub(crate) key: String,
    pub(crate) store: Arc<dyn StateStore>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) inbox: Arc<Inbox>,
    /// Its event log, and how its log lines name conversations.
    pub(crate) log: Arc<crate::insights::Log>,
    face: std::sync::RwLock<Arc<Face>>,
    unit: tokio::sync::Mutex<Option<Unit>>,
    /// What the registry said last, as applied here.
    pub(crate) applied: std::sync::Mutex<Applied>,
}

/// A bot's registry row as this process applied it.
#[derive(Debug, Clone)]
pub(crate) struct Applied {
    pub(crate) version: u64,
    pub(crate) state: BotState,
    pub(crate) source: BotSource,
    /// Its specification as stored (secrets sealed), to tell a change.
    pub(crate) spec: String,
}

impl Applied {
    /// The one bot of a single-bot process (no registry).
    pub(crate) fn single() -> Applied {
        Applied {
            version: 0,
            state: BotState::Active,
            source: BotSource::File,
            spec: String::new(),
        }
    }
}

impl Live {
    pub(crate) fn face(&self) -> Arc<Face> {
        self.face.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(crate) fn app(&self) -> Arc<App> {
        self.face().app.clone()
    }

    pub(crate) fn applied(&self) -> Applied {
        self.applied
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn span(&self) -> tracing::Span {
        self.face().spec.span()
    }

    /// Whether its workers run.
    pub(crate) async fn is_running(&self) -> bool {
        self.unit.lock().await.is_some()
    }

    /// Stops its workers (a pause, a change, a removal, shutdown): from now on
    /// its inbox only records.
    pub(crate) async fn stop_unit(&self, deadline: tokio::time::Instant) -> Left {
        let unit = self.unit.lock().await.take();
        self.inbox.detach().await;
        match unit {
            Some(u) => u.stop(deadline).await,
            None => Left::default(),
        }
    }
}

/// The bots of the process, by name, by webhook path and by store key.
#[derive(Default)]
pub(crate) struct Directory(std::sync::RwLock<Entries>);

#[derive(Default)]
struct Entries {
    by_name: HashMap<String, Arc<Live>>,
    by_path: HashMap<String, Arc<Live>>,
    by_key: HashMap<String, Arc<Live>>,
}

impl Directory {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Entries> {
        self.0.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Entries> {
        self.0.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The bot named `name`.
    pub(crate) fn get(&self, name: &str) -> Option<Arc<Live>> {
        self.read().by_name.get(name).cloned()
    }

    /// The bot whose webhook is at `path`, if its webhook is on.
    pub(crate) fn webhook(&self, path: &str) -> Option<Arc<App>> {
        self.read().by_path.get(path).map(|l| l.app())
    }

    /// The inbox of the bot kept under `key` in the store.
    pub(crate) fn inbox_of_key(&self, key: &str) -> Option<Arc<Inbox>> {
        self.read().by_key.get(key).map(|l| l.inbox.clone())
    }

    /// Every bot, by name.
    pub(crate) fn all(&self) -> Vec<Arc<Live>> {
        let mut v: Vec<_> = self.read().by_name.values().cloned().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    pub(crate) fn len(&self) -> usize {
        self.read().by_name.len()
    }

    /// The bot that already has `path` or `key`, other than `name`.
    pub(crate) fn clash(
        &self,
        name: &str,
        path: &str,
        key: &str,
    ) -> Option<(String, &'static str)> {
        let e = self.read();
        let other = |l: &Arc<Live>| l.name.as_deref() != Some(name);
        if let Some(l) = e.by_path.get(path).filter(|l| other(l)) {
            return Some((l.name.clone().unwrap_or_default(), "webhook_path"));
        }
        if let Some(l) = e.by_key.get(key).filter(|l| other(l)) {
            return Some((l.name.clone().unwrap_or_default(), "store_namespace"));
        }
        None
    }

    fn insert(&self, live: Arc<Live>) {
        let mut e = self.write();
        let face = live.face();
        if let Some(old) = e
            .by_name
            .insert(live.name.clone().unwrap_or_default(), live.clone())
        {
            let old_path = old.face().spec.server.webhook_path.clone();
            e.by_path.remove(&old_path);
        }
        if face.spec.server.webhook {
            e.by_path
                .insert(face.spec.server.webhook_path.clone(), live.clone());
        }
        e.by_key.insert(live.key.clone(), live);
    }

    /// Points the bot's webhook path at its face, after a change of it.
    fn reroute(&self, live: &Arc<Live>, old_path: &str) {
        let mut e = self.write();
        if e.by_path
            .get(old_path)
            .is_some_and(|l| Arc::ptr_eq(l, live))
        {
            e.by_path.remove(old_path);
        }
        let face = live.face();
        if face.spec.server.webhook {
            e.by_path
                .insert(face.spec.server.webhook_path.clone(), live.clone());
        }
    }

    fn remove(&self, name: &str) -> Option<Arc<Live>> {
        let mut e = self.write();
        let live = e.by_name.remove(name)?;
        let path = live.face().spec.server.webhook_path.clone();
        if e.by_path.get(&path).is_some_and(|l| Arc::ptr_eq(l, &live)) {
            e.by_path.remove(&path);
        }
        if e.by_key
            .get(&live.key)
            .is_some_and(|l| Arc::ptr_eq(l, &live))
        {
            e.by_key.remove(&live.key);
        }
        Some(live)
    }
}

/// The runtime of every bot of the process: what adding or changing one
/// needs, shared.
pub(crate) struct Host {
    pub(crate) config: Config,
    pub(crate) stores: tokio::sync::Mutex<Stores>,
    /// The process's compiled flows.
    pub(crate) flows: Arc<Flows>,
    /// One HTTP client (pool, TLS configuration) for every bot's Qpien client.
    pub(crate) http: reqwest::Client,
    pub(crate) set: Arc<MetricSet>,
    /// The process's shutdown.
    pub(crate) stop: Stop,
    pub(crate) directory: Arc<Directory>,
    /// Whether one task reads the timers of every bot (a store they share).
    pub(crate) shared_timers: bool,
    /// The key credentials given through the admin API are sealed with.
    pub(crate) key: Option<crate::sealed::SecretKey>,
    /// The registry (a process of several bots).
    pub(crate) book: Option<Arc<dyn crate::store::BotRegistry>>,
    /// The highest registry version applied; held while one is applied, so
    /// changes apply one at a time.
    pub(crate) seen: tokio::sync::Mutex<u64>,
    /// The process's workers for turns and for sends, with several bots
    /// (see [`super::lanes::Share`]).
    pub(crate) workers: Option<Workers>,
    /// Where each `[[bots]]` entry is in `config.bots`, by name.
    pub(crate) file_bots: HashMap<String, usize>,
}

impl Host {
    /// The `[[bots]]` entry named `name`.
    pub(crate) fn file_bot(&self, name: &str) -> Option<&crate::config::BotConfig> {
        self.file_bots.get(name).map(|i| &self.config.bots[*i])
    }

    /// Opens a bot's store, client and flow, and its endpoints; its workers
    /// run when `run` says so.
    pub(crate) async fn add(
        &self,
        spec: Spec,
        applied: Applied,
    ) -> Result<Arc<Live>, RuntimeError> {
        let span = spec.span();
        let run = applied.state == BotState::Active;
        let key = spec.key.clone();
        let name = spec.name.clone();
        // A configuration that cannot run leaves nothing behind (no store
        // file made for it).
        super::check_spec(&self.config, &spec)?;
        let shared = self.stores.lock().await.file_of(&spec).await?;
        let store = shared.bot(&key).await?;
        let mut metrics = self.set.bot(&BotLabel::new(name.as_deref()));
        if self.config.server.debug {
            metrics.classify.recent = Some(Default::default());
        }
        let metrics = Arc::new(metrics);
        let log = Arc::new(crate::insights::Log::new(
            store.clone(),
            &self.config.insights,
            self.config.log.conversations,
        ));
        let inbox = Arc::new(Inbox::new(
            store.clone(),
            metrics.clone(),
            log.clone(),
            self.config.runtime.queue_capacity,
            self.config.runtime.max_pending_per_conversation.max(1),
            self.config.runtime.at_once_wait,
        ));
        let face = self
            .face(spec, store.clone(), inbox.clone(), metrics.clone())
            .instrument(span.clone())
            .await?;
        self.set.watch(Watched {
            bot: BotLabel::new(name.as_deref()),
            client: face.client.clone(),
            flow_version: face.slot.version_gauge(),
        });
        let live = Arc::new(Live {
            name,
            key,
            store,
            metrics,
            inbox,
            log,
            face: std::sync::RwLock::new(Arc::new(face)),
            unit: Default::default(),
            applied: std::sync::Mutex::new(applied),
        });
        if run {
            if let Err(e) = self.start_unit(&live).instrument(span.clone()).await {
                self.set.unwatch(&BotLabel::new(live.name.as_deref()));
                return Err(e);
            }
        }
        self.directory.insert(live.clone());
        tracing::debug!(parent: &span, running = run, "bot added");
        Ok(live)
    }

    /// A bot's configuration made live: its flow checked and compiled, its
    /// Qpien client, its endpoints.
    async fn face(
        &self,
        spec: Spec,
        store: Arc<dyn StateStore>,
        inbox: Arc<Inbox>,
        metrics: Arc<Metrics>,
    ) -> Result<Face, RuntimeError> {
        let config = &self.config;
        // Read now (a file that cannot be read stops the start); compiled
        // when first needed, but for the one bot of a single-bot process,
        // whose flow is checked as it always was (see `flows.rs`).
        let sources = super::read_flow(&spec, &self.flows)?;
        super::check_spec(config, &spec)?;
        let client = QpienClient::with_http(spec.qpien.clone(), self.http.clone())?;
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
        let slot = Arc::new(BotSlot::new(self.flows.clone(), sources, client.clone()));
        if self.book.is_none() {
            let bot = slot.get().await.map_err(|e| super::flow_error(&spec, e))?;
            super::warn_schedules(&spec, &bot);
        }
        let capture = match &spec.server.capture_dir {
            Some(dir) => {
                let dir = match &spec.name {
                    Some(n) => dir.join(n),
                    None => dir.clone(),
                };
                Some(
                    super::capture::Capture::new(&dir, spec.server.capture_max_bytes).map_err(
                        |e| {
                            RuntimeError::Config(format!(
                                "server.capture_dir {}: {e}",
                                dir.display()
                            ))
                        },
                    )?,
                )
            }
            None => None,
        };
        let app = Arc::new(App {
            capture,
            server: spec.server.clone(),
            retention: config.retention.clone(),
            inbox,
            store,
            client: client.clone(),
            bot: slot.clone(),
            metrics,
            stop: self.stop.clone(),
            name: spec.name.clone(),
            span: spec.span(),
            clock: config.clock.clone(),
            checked: Default::default(),
            starts: starts::StartLimit::new(spec.server.start_limit),
        });
        Ok(Face {
            spec,
            client,
            slot,
            app,
        })
    }

    /// Starts a bot's workers: replies already committed go out first, then
    /// the turns it has waiting, then what comes in.
    pub(crate) async fn start_unit(&self, live: &Arc<Live>) -> Result<(), RuntimeError> {
        let mut held = live.unit.lock().await;
        if held.is_some() {
            return Ok(());
        }
        let config = &self.config;
        let face = live.face();
        let (stop_tx, stop_rx) = watch::channel(false);
        let stop = Stop(stop_rx);
        let span = tracing::Span::current();
        let store = live.store.clone();
        let metrics = live.metrics.clone();
        let (feedback, mut learned) = tokio::sync::mpsc::unbounded_channel();
        let share = |all: fn(&Workers) -> &Arc<tokio::sync::Semaphore>| {
            self.workers
                .as_ref()
                .map(|w| Share::new(all(w).clone(), config.runtime.max_per_bot))
        };
        let claims = claims::Claims::new(store.clone(), config.runtime.claim_ttl);
        let outbox = Outbox::new(Lanes::shared(
            Sender {
                claims: claims.clone(),
                client: face.client.clone(),
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
                log: live.log.clone(),
            },
            metrics.outbox_depth.clone(),
            share(|w| &w.sends),
        ));
        let turns = Lanes::shared(
            Dispatcher {
                claims: claims.clone(),
                store: store.clone(),
                bot: face.slot.clone(),
                client: face.client.clone(),
                outbox: outbox.clone(),
                metrics: metrics.clone(),
                stop: stop.clone(),
                max_attempts: config.runtime.max_turn_attempts.max(1),
                suspects: tokio::sync::Semaphore::new(1),
                handoff: super::dispatch::Handoff::new(
                    config.handoff.check_interval,
                    &face.spec.qpien.released_statuses,
                ),
                clock: config.clock.clone(),
                log: live.log.clone(),
            },
            metrics.queue_depth.clone(),
            share(|w| &w.turns),
        );
        let runner = Arc::new(route::Runner {
            log: live.log.clone(),
            claims,
            turns: turns.clone(),
            outbox: outbox.clone(),
        });
        // What the sender learns (a refused handoff) becomes an event of its own.
        let feedback_task = {
            let inbox = live.inbox.clone();
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
        live.inbox.attach(runner.clone()).await?;
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
        if !self.shared_timers {
            tasks.push(tokio::spawn(
                timers::run(
                    store.clone(),
                    live.inbox.clone(),
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
                    slot: face.slot.clone(),
                    flows: self.flows.clone(),
                    metrics: metrics.clone(),
                    every: config.runtime.reload_interval,
                    stop: stop.clone(),
                    store: store.clone(),
                })
                .instrument(span.clone()),
            ));
        }
        if config.polling.enabled {
            tasks.push(tokio::spawn(
                poll::run(poll::Poller {
                    log: live.log.clone(),
                    client: face.client.clone(),
                    store: store.clone(),
                    inbox: live.inbox.clone(),
                    config: config.polling.clone(),
                    stop: stop.clone(),
                    started: crate::time::now(),
                })
                .instrument(span.clone()),
            ));
        }
        *held = Some(Unit {
            turns,
            outbox,
            tasks,
            stop: stop_tx,
        });
        Ok(())
    }

    /// How long a bot's workers may take to stop (a pause, a change).
    fn deadline(&self) -> tokio::time::Instant {
        tokio::time::Instant::now() + self.config.runtime.shutdown_deadline
    }

    /// Pauses a bot: its deliveries are recorded, and run when it resumes.
    pub(crate) async fn pause(&self, live: &Arc<Live>) {
        let left = live
            .stop_unit(self.deadline())
            .instrument(live.span())
            .await;
        tracing::info!(parent: &live.span(), turns_left = left.turns, replies_left = left.replies, "bot paused");
    }

    /// Resumes a paused bot.
    pub(crate) async fn resume(&self, live: &Arc<Live>) -> Result<(), RuntimeError> {
        self.start_unit(live).instrument(live.span()).await?;
        tracing::info!(parent: &live.span(), "bot resumed");
        Ok(())
    }

    /// Gives a bot a new configuration (its store key stays): the new one is
    /// checked and made first, so a change that cannot work leaves the bot
    /// as it was; then its workers stop and start again on it.
    pub(crate) async fn change(&self, live: &Arc<Live>, spec: Spec) -> Result<(), RuntimeError> {
        let span = spec.span();
        let face = self
            .face(
                spec,
                live.store.clone(),
                live.inbox.clone(),
                live.metrics.clone(),
            )
            .instrument(span.clone())
            .await?;
        let was_running = live.is_running().await;
        live.stop_unit(self.deadline())
            .instrument(span.clone())
            .await;
        let label = BotLabel::new(live.name.as_deref());
        self.set.unwatch(&label);
        self.set.watch(Watched {
            bot: label,
            client: face.client.clone(),
            flow_version: face.slot.version_gauge(),
        });
        let old_path = live.face().spec.server.webhook_path.clone();
        *live.face.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(face);
        self.directory.reroute(live, &old_path);
        if was_running {
            self.start_unit(live).instrument(span.clone()).await?;
        }
        tracing::info!(parent: &span, "bot changed");
        Ok(())
    }

    /// Takes a bot out of the process: its webhook answers 404 from now on;
    /// what it had waiting stays in the store.
    pub(crate) async fn remove(&self, name: &str) {
        let Some(live) = self.directory.remove(name) else {
            return;
        };
        live.stop_unit(self.deadline())
            .instrument(live.span())
            .await;
        self.set.unwatch(&BotLabel::new(live.name.as_deref()));
        tracing::info!(parent: &live.span(), "bot removed");
    }

    /// Stops every bot's workers by `deadline`: what they left undone.
    pub(crate) async fn stop_all(&self, deadline: tokio::time::Instant) -> Left {
        let lives = self.directory.all();
        let stops = lives.iter().map(|l| l.stop_unit(deadline));
        let mut left = Left::default();
        for l in futures_util::future::join_all(stops).await {
            left.turns += l.turns;
            left.replies += l.replies;
        }
        left
    }

    /// Drops the Qpien tokens no call took for `runtime.token_idle`, every
    /// bot's, checked a few times within that time.
    pub(crate) fn drop_idle_tokens(self: &Arc<Self>) -> JoinHandle<()> {
        let host = self.clone();
        let idle = self.config.runtime.token_idle;
        let every = (idle / 4).clamp(Duration::from_millis(10), Duration::from_secs(60));
        tokio::spawn(async move {
            while host.stop.pause(every).await {
                let dropped = host
                    .directory
                    .all()
                    .iter()
                    .filter(|live| live.face().client.drop_idle_token(idle))
                    .count();
                if dropped > 0 {
                    tracing::debug!(dropped, "idle Qpien tokens dropped");
                }
            }
        })
    }

    /// `[retention]`: every bot's old data removed, by one task.
    pub(crate) fn sweep_old_data(self: &Arc<Self>) -> JoinHandle<()> {
        let host = self.clone();
        tokio::spawn(super::retention::run(
            move || host.directory.all().iter().map(|l| l.app()).collect(),
            self.config.retention.clone(),
            self.config.clock.clone(),
            self.stop.clone(),
        ))
    }

    /// The timers of every bot, read by one task (a store they share).
    pub(crate) fn run_timers(self: &Arc<Self>, store: Arc<dyn StateStore>) -> JoinHandle<()> {
        tokio::spawn(timers::run_for_every_bot(
            store,
            self.directory.clone(),
            self.config.runtime.timer_interval,
            self.config.clock.clone(),
            self.stop.clone(),
        ))
    }
}
