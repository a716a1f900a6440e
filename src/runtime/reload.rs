//! The bot in service, and hot reload: the flow's files are watched (by
//! modification time: this works alike on every file system, mounted config
//! maps included) and the new flow swapped in between turns when it loads; a
//! flow that does not load is refused and logged, and the running one kept.
//! Conversations saved under the old version are placed by the engine (state
//! name, `migrate:`) at their next turn.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::flows::{stamps_of, BotSlot, Flows};
use super::metrics::Metrics;
use super::Stop;
use crate::engine::{Bot, Stored};
use crate::store::{StateStore, StoreError};
use tracing::Instrument;

/// What the reload task needs.
pub(crate) struct Reload {
    pub(crate) slot: Arc<BotSlot>,
    pub(crate) flows: Arc<Flows>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) every: Duration,
    pub(crate) stop: Stop,
    /// The store, to count the conversations a reload moves.
    pub(crate) store: Arc<dyn StateStore>,
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

/// Watches the flow's files until shutdown: a change is read and compiled
/// (through the process's cache, so bots of the same files compile it
/// once) before it is put in service.
pub(crate) async fn run(r: Reload) {
    let mut seen: Vec<Option<SystemTime>> = stamps_of(&r.slot.sources());
    while r.stop.pause(r.every).await {
        let current = r.slot.sources();
        let now = stamps_of(&current);
        if now == seen {
            continue;
        }
        seen = now;
        let main = current.main.clone();
        let compiled = match r.flows.read(&main) {
            Ok(sources) if sources.version == current.version => continue,
            Ok(sources) => r.slot.compiled(&sources).await.map(|bot| (sources, bot)),
            Err(e) => Err(e),
        };
        match compiled {
            Ok((sources, bot)) => {
                // The files it names now (an include added or removed).
                seen = stamps_of(&sources);
                let version = sources.version;
                let old = r.slot.get().await.ok();
                r.slot.set(sources);
                r.metrics.reloads.count("ok");
                tracing::info!(flow = %main.display(), version, "flow reloaded");
                if let Some(old) = old {
                    tokio::spawn(log_migration(r.store.clone(), old, bot).in_current_span());
                }
            }
            Err(e) => {
                r.metrics.reloads.count("rejected");
                tracing::error!(flow = %main.display(), "flow change refused, the running flow is kept:\n{e}");
            }
        }
    }
}
