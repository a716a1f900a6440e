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
use crate::engine::Bot;
use crate::flow::FlowLimits;
use crate::handler::Registry;

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
        match Bot::load_with_templates(
            &r.flow,
            r.registry.clone(),
            &r.limits,
            r.templates.as_deref(),
        ) {
            Ok(bot) => {
                let version = bot.flow().version;
                if version == r.slot.get().flow().version {
                    continue;
                }
                files = bot.flow().files.clone();
                seen = stamps(&files);
                r.slot.set(bot);
                r.metrics.reloads.count("ok");
                tracing::info!(flow = %r.flow.display(), version, "flow reloaded");
            }
            Err(e) => {
                r.metrics.reloads.count("rejected");
                tracing::error!(flow = %r.flow.display(), "flow change refused, the running flow is kept:\n{e}");
            }
        }
    }
}
