//! The bot in service, and hot reload: the flow's files are watched (by
//! modification time: this works alike on every file system, mounted config
//! maps included) and the new flow swapped in between turns when it loads; a
//! flow that does not load is refused and logged, and the running one kept.
//! Conversations saved under the old version are placed by the engine (state
//! name, `migrate:`) at their next turn.

use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use super::metrics::Metrics;
use super::Stop;
use crate::engine::{Bot, BotError, Stored};
use crate::flow::{Flow, FlowLimits};
use crate::handler::Registry;
use crate::store::{StateStore, StoreError};
use tracing::Instrument;

/// Flows compiled by this process, by file: a bot loading a file another
/// bot compiled, unchanged since (its files read again and fingerprinted),
/// binds that compiled flow instead of compiling it again, at start and at
/// reload, so that bots sharing a file keep one compiled flow after a change
/// too. (Only by file: a bot's reload watches the files its flow names.)
#[derive(Default)]
pub(crate) struct FlowCache(std::sync::Mutex<std::collections::HashMap<PathBuf, Arc<Flow>>>);

impl FlowCache {
    /// The bot of the flow at `path`, compiled here or by another bot.
    pub(crate) fn load(
        &self,
        path: &std::path::Path,
        registry: &Registry,
        limits: &FlowLimits,
    ) -> Result<Bot, BotError> {
        let mut flows = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(flow) = flows.get(path).filter(|f| f.sources_unchanged(limits)) {
            return Bot::bind(flow.clone(), registry.clone());
        }
        let bot = Bot::load_with(path, registry.clone(), limits)?;
        flows.insert(path.to_owned(), bot.flow().clone());
        Ok(bot)
    }
}

/// The bot in service; a reload swaps it.
pub(crate) struct BotSlot {
    bot: RwLock<Arc<Bot>>,
    /// The flow version, for the metrics.
    version: Arc<AtomicI64>,
}

impl BotSlot {
    pub(crate) fn new(bot: Bot) -> BotSlot {
        BotSlot {
            version: Arc::new(AtomicI64::new(metric_version(&bot))),
            bot: RwLock::new(Arc::new(bot)),
        }
    }

    /// The bot as of now.
    pub(crate) fn get(&self) -> Arc<Bot> {
        self.bot.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set(&self, bot: Bot) {
        self.version.store(metric_version(&bot), Ordering::Relaxed);
        *self.bot.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(bot);
    }

    /// The flow version as a gauge shows it.
    pub(crate) fn version_gauge(&self) -> Arc<AtomicI64> {
        self.version.clone()
    }
}

/// The flow's fingerprint as a gauge can carry it exactly (low 52 bits).
fn metric_version(bot: &Bot) -> i64 {
    (bot.flow().version & ((1 << 52) - 1)) as i64
}

fn stamps(files: &[PathBuf]) -> Vec<Option<SystemTime>> {
    files
        .iter()
        .map(|f| std::fs::metadata(f).and_then(|m| m.modified()).ok())
        .collect()
}

/// What the reload task needs.
pub(crate) struct Reload {
    pub(crate) slot: Arc<BotSlot>,
    pub(crate) flow: PathBuf,
    pub(crate) limits: FlowLimits,
    pub(crate) registry: Registry,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) every: Duration,
    pub(crate) stop: Stop,
    /// The account's approved WhatsApp templates, when known.
    pub(crate) templates: Option<Vec<crate::flow::TemplateInfo>>,
    /// The store, to count the conversations a reload moves.
    pub(crate) store: Arc<dyn StateStore>,
    /// The process's compiled flows.
    pub(crate) flows: Arc<FlowCache>,
}

/// The live conversations of each state of `bot`'s flow: the store's
/// sessions, read a page at a time, those ended (kept for a schedule) or
/// expired left out.
pub(crate) async fn count_live(
    store: &dyn StateStore,
    bot: &Bot,
    now: crate::time::Millis,
) -> Result<std::collections::BTreeMap<String, u64>, StoreError> {
    const PAGE: usize = 1000;
    let mut out = std::collections::BTreeMap::new();
    let mut after = String::new();
    loop {
        let page = store.sessions(&after, PAGE).await?;
        for (_, s) in &page {
            if let Some(state) = live_state(&s.data, bot, now) {
                *out.entry(state).or_insert(0) += 1;
            }
        }
        match page.last() {
            Some((last, _)) if page.len() == PAGE => after.clone_from(last),
            _ => return Ok(out),
        }
    }
}

/// The state of a saved session, if it is a conversation in progress.
pub(crate) fn live_state(data: &[u8], bot: &Bot, now: crate::time::Millis) -> Option<String> {
    let stored: Stored = super::payload::decode(data).ok()?;
    bot.is_live(&stored.session, now)
        .then(|| stored.state.to_string())
}

/// Logs what a reload does to the conversations of the states it removed.
async fn log_migration(store: Arc<dyn StateStore>, old: Arc<Bot>, new: Arc<Bot>) {
    let moves = crate::flow::migration::migration(old.flow(), new.flow());
    if moves.is_empty() {
        return;
    }
    let live = match count_live(&*store, &old, crate::time::now()).await {
        Ok(l) => Some(l),
        Err(e) => {
            tracing::warn!(error = %e, "cannot count the conversations of the states the new flow removed");
            None
        }
    };
    for (m, line) in moves.iter().zip(crate::flow::migration::describe(
        &moves,
        live.as_ref(),
        new.flow(),
    )) {
        if m.to.is_some() {
            tracing::info!(state = %m.state, "flow reloaded: {line}");
        } else {
            tracing::warn!(state = %m.state, "flow reloaded: {line}");
        }
    }
}

/// Watches the flow's files until shutdown.
pub(crate) async fn run(r: Reload) {
    let mut files = r.slot.get().flow().files.clone();
    let mut seen = stamps(&files);
    while r.stop.pause(r.every).await {
        let now = stamps(&files);
        if now == seen {
            continue;
        }
        seen = now;
        let loaded = match r.templates.as_deref() {
            // Checked against the account's templates, a flow is the bot's own.
            Some(templates) => {
                Bot::load_with_templates(&r.flow, r.registry.clone(), &r.limits, Some(templates))
            }
            None => r.flows.load(&r.flow, &r.registry, &r.limits),
        };
        match loaded {
            Ok(bot) => {
                let version = bot.flow().version;
                if version == r.slot.get().flow().version {
                    continue;
                }
                files = bot.flow().files.clone();
                seen = stamps(&files);
                let old = r.slot.get();
                r.slot.set(bot);
                r.metrics.reloads.count("ok");
                tracing::info!(flow = %r.flow.display(), version, "flow reloaded");
                tokio::spawn(log_migration(r.store.clone(), old, r.slot.get()).in_current_span());
            }
            Err(e) => {
                r.metrics.reloads.count("rejected");
                tracing::error!(flow = %r.flow.display(), "flow change refused, the running flow is kept:\n{e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bots_loading_one_file_keep_one_compiled_flow_before_and_after_it_changes() {
        let dir = crate::files::private_temp_dir("flowbot-flow-cache-").unwrap();
        let path = dir.path().join("shop.yaml");
        let flow = |say: &str| {
            format!("version: 1\nstates:\n  start: {{ say: \"{say} {{{{ name | upper }}}}\" }}\n")
        };
        std::fs::write(&path, flow("Hi")).unwrap();
        let (cache, registry, limits) =
            (FlowCache::default(), Registry::new(), FlowLimits::default());
        let a = cache.load(&path, &registry, &limits).unwrap();
        let b = cache.load(&path, &registry, &limits).unwrap();
        assert!(Arc::ptr_eq(a.flow(), b.flow()));
        // Changed: the first bot to reload compiles it, the next binds it.
        std::fs::write(&path, flow("Hello")).unwrap();
        let a2 = cache.load(&path, &registry, &limits).unwrap();
        let b2 = cache.load(&path, &registry, &limits).unwrap();
        assert!(!Arc::ptr_eq(a.flow(), a2.flow()));
        assert!(Arc::ptr_eq(a2.flow(), b2.flow()));
        // A change that does not load is an error, not the old flow.
        std::fs::write(&path, "version: 1\nstates: [").unwrap();
        assert!(cache.load(&path, &registry, &limits).is_err());
    }
}
