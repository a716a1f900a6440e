//! Background loops: inactivity timers (`after: { idle: ... }`) and flow reload.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use super::metrics::Metrics;
use super::{turns, Shared};
use crate::engine::Bot;

/// Fires due inactivity timers. Due times are stored with the sessions, so
/// they survive restarts; a session in handoff has none.
pub(crate) async fn run(shared: Arc<Shared>) {
    let every = shared.config.runtime.timer_interval;
    while shared.pause(every).await {
        match shared.store.due_timers(crate::time::now(), 500).await {
            Ok(due) => {
                for (conversation, at) in due {
                    turns::fire_timer(&shared, conversation, at).await;
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot read due timers"),
        }
    }
}

fn stamps(files: &[PathBuf]) -> Vec<Option<SystemTime>> {
    files
        .iter()
        .map(|f| std::fs::metadata(f).and_then(|m| m.modified()).ok())
        .collect()
}

/// Watches the flow's files (by modification time: this works alike on every
/// file system, mounted config maps included) and swaps in the new flow when
/// it loads; a flow that does not load is refused and the old one kept.
pub(crate) async fn reload(shared: Arc<Shared>) {
    let every = shared.config.runtime.reload_interval;
    let mut files = shared.bot().flow().files.clone();
    let mut seen = stamps(&files);
    while shared.pause(every).await {
        let now = stamps(&files);
        if now == seen {
            continue;
        }
        seen = now;
        match Bot::load(&shared.config.flow, shared.registry.clone()) {
            Ok(bot) => {
                let version = bot.flow().version;
                if version == shared.bot().flow().version {
                    continue;
                }
                files = bot.flow().files.clone();
                seen = stamps(&files);
                shared.set_bot(bot);
                Metrics::count(&shared.metrics.reloads, "ok");
                tracing::info!(flow = %shared.config.flow.display(), version, "flow reloaded");
            }
            Err(e) => {
                Metrics::count(&shared.metrics.reloads, "rejected");
                tracing::error!(flow = %shared.config.flow.display(), "flow change refused, the running flow is kept:\n{e}");
            }
        }
    }
}
