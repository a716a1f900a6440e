//! `[retention]`: each kind of data removed once older than its limit.
//!
//! One task for the process sweeps every bot's store in turn, each kind in
//! batches of `retention.batch` rows (a delete never holds a busy store for
//! long), until nothing older is left, every `retention.every`. The admin
//! endpoint `/admin/retention` (and `flowbot retention`) runs the same sweep
//! at once, or with `?dry_run=true` counts what it would remove. What goes
//! is counted in `flowbot_retention_deleted_total{kind}`.

use std::sync::Arc;

use serde::Serialize;

use super::http::App;
use crate::config::RetentionConfig;
use crate::store::{Expiring, StoreError};
use crate::time::Millis;

/// What a sweep removed (or would remove), per kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub(crate) struct Swept {
    pub(crate) sessions: u64,
    pub(crate) dead_letters: u64,
    pub(crate) events: u64,
    pub(crate) rollups: u64,
    pub(crate) captures: u64,
}

/// The most batches of one kind a sweep takes (a store that keeps growing
/// faster than it is swept is left for the next round).
const MAX_BATCHES: usize = 1_000;

/// Sweeps one bot: everything older than `[retention]` says, at `now`.
pub(crate) async fn sweep(
    app: &App,
    config: &RetentionConfig,
    now: Millis,
    dry_run: bool,
) -> Result<Swept, StoreError> {
    let before = |d: std::time::Duration| {
        now.saturating_sub(Millis::try_from(d.as_millis()).unwrap_or(Millis::MAX))
    };
    let batch = config.batch.max(1);
    let mut swept = Swept::default();
    for kind in Expiring::ALL {
        let limit = match kind {
            Expiring::Sessions => config.sessions,
            Expiring::DeadLetters => config.dead_letters,
            Expiring::Events => config.events,
            Expiring::Rollups => config.rollups,
        };
        let cutoff = before(limit);
        let total = if kind == Expiring::Events && !dry_run {
            fold(app, cutoff, now).await?
        } else if dry_run {
            app.store
                .expire(kind, cutoff, batch * MAX_BATCHES, true)
                .await?
        } else {
            let mut total = 0;
            for _ in 0..MAX_BATCHES {
                let n = app.store.expire(kind, cutoff, batch, false).await?;
                total += n;
                if (n as usize) < batch {
                    break;
                }
            }
            total
        };
        match kind {
            Expiring::Sessions => swept.sessions = total,
            Expiring::DeadLetters => swept.dead_letters = total,
            Expiring::Events => swept.events = total,
            Expiring::Rollups => swept.rollups = total,
        }
    }
    if let Some(capture) = &app.capture {
        let capture = capture.clone();
        let cutoff = before(config.captures);
        swept.captures =
            tokio::task::spawn_blocking(move || capture.expire(cutoff, usize::MAX, dry_run))
                .await
                .unwrap_or(0);
    }
    if !dry_run {
        let m = &app.metrics.retention_deleted;
        for (kind, n) in [
            ("sessions", swept.sessions),
            ("dead_letters", swept.dead_letters),
            ("events", swept.events),
            ("rollups", swept.rollups),
            ("captures", swept.captures),
        ] {
            if n > 0 {
                m.add(kind, n);
            }
        }
        if swept != Swept::default() {
            tracing::info!(?swept, "retention: old data removed");
        }
    }
    Ok(swept)
}

/// Folds the event log's runs that started before `cutoff` into hourly
/// roll-ups, an hour of runs at a time, each hour's roll-ups written and its
/// rows removed in one transaction: what reports say of those runs stays
/// the same. How many rows went.
async fn fold(app: &App, cutoff: Millis, now: Millis) -> Result<u64, StoreError> {
    use crate::insights::report::{Query, Runs, HOUR};
    let quiet = match app.bot.get().await {
        Ok(bot) => bot
            .flow()
            .settings
            .session_timeout_ms
            .map_or(24 * HOUR, |t| Millis::try_from(t).unwrap_or(Millis::MAX)),
        Err(_) => 24 * HOUR,
    };
    let mut removed = 0;
    for _ in 0..MAX_BATCHES {
        let Some(oldest) = app.store.oldest_run().await? else {
            break;
        };
        if oldest >= cutoff {
            break;
        }
        let from = oldest - oldest.rem_euclid(HOUR);
        let to = from + HOUR;
        let query = Query {
            from,
            to,
            flow_version: None,
            channel: None,
            include_test: true,
            now,
            quiet,
        };
        let mut runs = Runs::new(&query);
        let mut after = 0;
        loop {
            let page = app.store.events(from, to, after, 5_000).await?;
            let Some((last, _)) = page.last() else { break };
            after = *last;
            let n = page.len();
            for (_, e) in page {
                runs.add(e);
            }
            if n < 5_000 {
                break;
            }
        }
        removed += app.store.fold(from, to, runs.rollups()).await?;
    }
    Ok(removed)
}

/// Sweeps every bot `apps` gives, every `config.every`, until shutdown.
pub(crate) async fn run(
    apps: impl Fn() -> Vec<Arc<App>>,
    config: RetentionConfig,
    clock: crate::time::ClockHandle,
    stop: super::Stop,
) {
    if config.every.is_zero() {
        return;
    }
    while stop.pause(config.every).await {
        for app in apps() {
            if let Err(e) = sweep(&app, &config, clock.now(), false).await {
                tracing::warn!(error = %e, bot = app.name.as_deref().unwrap_or(""), "retention sweep failed; tried again next round");
            }
        }
    }
}
