//! Polling mode, for deployments Qpien cannot reach by webhook.
//!
//! Each round reads the first page of conversations (one call); only those
//! whose last message is a customer's and differs from the one last seen are
//! read further (one call each), so an idle bot spends one request per round.
//! Messages older than the moment polling first started are history, not
//! questions: that moment is kept in the store (`poll:since`), as is each
//! conversation's last seen message (`poll:<conversation>`). Accepting goes
//! through the same deduplicated inbox as webhooks, so both can run together
//! without double answers. Between rounds the pause doubles while nothing
//! comes, up to `polling.max_interval`, and is never shorter than what keeps
//! polling within half of the request budget (replies need the rest).

use std::sync::Arc;

use super::inbox::Inbox;
use super::Stop;
use crate::config::PollingConfig;
use crate::qpien::types::ExternalMessage;
use crate::qpien::{QpienClient, SenderKind};
use crate::store::StateStore;
use crate::time::{parse_json_time, Millis};

/// When a message was created, as Qpien sends it.
fn created(m: &ExternalMessage) -> Option<Millis> {
    m.created_at.as_ref().and_then(parse_json_time)
}

/// What the poller needs.
pub(crate) struct Poller {
    /// How log lines name conversations.
    pub(crate) log: Arc<crate::insights::Log>,
    pub(crate) client: QpienClient,
    pub(crate) store: Arc<dyn StateStore>,
    pub(crate) inbox: Arc<Inbox>,
    pub(crate) config: PollingConfig,
    pub(crate) stop: Stop,
    /// When the bot started: on a first start, messages from before are
    /// history, and those since (while the poller itself was starting) are
    /// answered.
    pub(crate) started: Millis,
}

/// Polls until shutdown.
pub(crate) async fn run(shared: Poller) {
    let shared = &shared;
    let cfg = shared.config.clone();
    let since = match shared.store.cursor("poll:since").await {
        Ok(Some(s)) => s.parse().unwrap_or(shared.started),
        found => {
            if let Err(e) = found {
                tracing::error!(error = %e, "cannot read when polling started; starting from now");
            }
            let now = shared.started;
            if let Err(e) = shared
                .store
                .set_cursor("poll:since", &now.to_string())
                .await
            {
                tracing::error!(error = %e, "cannot record when polling started");
            }
            now
        }
    };
    let mut pause = cfg.interval;
    let budget = &shared.client.config().rate_limit;
    // Each request costs this much of the budget; polling keeps to half of it,
    // so that replies always find room.
    let per_call = budget.per / budget.requests.max(1);
    loop {
        // With several instances on one database, one polls at a time.
        match shared.store.lead("poll").await {
            Ok(true) => {}
            Ok(false) => {
                if !shared.stop.pause(cfg.interval).await {
                    return;
                }
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot tell which instance polls; waiting");
                if !shared.stop.pause(cfg.interval).await {
                    return;
                }
                continue;
            }
        }
        let mut calls = 0u32;
        let found = match round(shared, since, &mut calls).await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "polling failed");
                0
            }
        };
        pause = if found > 0 {
            cfg.interval
        } else {
            (pause * 2).min(cfg.max_interval)
        };
        pause = pause.max(per_call * calls * 2);
        if !shared.stop.pause(pause).await {
            return;
        }
    }
}

/// A conversation's messages since `cursor` (the last one seen), whichever
/// order the API pages them in, in as few calls as it allows: page 1 is enough
/// when it holds the newest message (`newest`) or the whole list; else (oldest
/// first) the last page, and the one before it only when the cursor is not on
/// the last page.
async fn recent_messages(
    shared: &Poller,
    conversation: &str,
    page_size: u32,
    newest: Option<&str>,
    cursor: Option<&str>,
    calls: &mut u32,
) -> Result<Vec<ExternalMessage>, crate::qpien::QpienError> {
    let client = &shared.client;
    *calls += 1;
    let first = client.get_message_list(conversation, 1, page_size).await?;
    let has = |docs: &[ExternalMessage], id: Option<&str>| {
        id.is_some_and(|id| docs.iter().any(|m| m.id.as_deref() == Some(id)))
    };
    let mut messages = first.docs;
    if !first.has_next_page || has(&messages, newest) {
        return Ok(messages);
    }
    let last = match first.total_docs {
        Some(total) => total.div_ceil(u64::from(page_size.max(1))) as u32,
        None => 2,
    };
    *calls += 1;
    let tail = client
        .get_message_list(conversation, last, page_size)
        .await?;
    let cursor_on_tail = has(&tail.docs, cursor);
    messages.extend(tail.docs);
    if !cursor_on_tail && last > 2 {
        *calls += 1;
        let before = client
            .get_message_list(conversation, last - 1, page_size)
            .await?;
        messages.extend(before.docs);
    }
    let mut seen = std::collections::HashSet::new();
    messages.retain(|m| m.id.as_ref().is_none_or(|id| seen.insert(id.clone())));
    Ok(messages)
}

/// One round; returns how many new messages were accepted.
async fn round(
    shared: &Poller,
    since: i64,
    calls: &mut u32,
) -> Result<usize, crate::qpien::QpienError> {
    *calls += 1;
    let cfg = &shared.config;
    let intake = shared.client.intake();
    let conversations = shared
        .client
        .get_conversation_list(1, cfg.conversations, cfg.status.as_deref())
        .await?;
    let mut found = 0;
    for conv in conversations.docs {
        let Some(id) = conv.id else { continue };
        let cursor = shared
            .store
            .cursor(&format!("poll:{id}"))
            .await
            .ok()
            .flatten();
        let newest = conv.last_message.as_ref().and_then(|m| m.id.clone());
        if let Some(last) = &conv.last_message {
            let customer = intake.sender(last) == SenderKind::Customer;
            if !customer || (last.id.is_some() && cursor == last.id) {
                continue;
            }
        }
        let mut messages = recent_messages(
            shared,
            &id,
            cfg.page_size,
            newest.as_deref(),
            cursor.as_deref(),
            calls,
        )
        .await?;
        messages.sort_by_key(|m| created(m).unwrap_or(i64::MAX));
        let mut last_seen = None;
        for msg in messages {
            last_seen = msg.id.clone().or(last_seen);
            if created(&msg).is_some_and(|t| t < since) {
                continue;
            }
            let Ok(ingested) = intake.message(&msg, Some(&id), conv.is_group_or_channel) else {
                continue;
            };
            match shared.inbox.accept(ingested).await {
                Ok(true) => found += 1,
                Ok(false) => {}
                Err(e) => tracing::error!(error = %e, "cannot store a polled message"),
            }
        }
        if let Some(last) = last_seen {
            if let Err(e) = shared.store.set_cursor(&format!("poll:{id}"), &last).await {
                // Harmless: the next round reads the messages again, and the
                // inbox recognises them.
                let name = shared.log.name(&id).await;
                tracing::warn!(error = %e, conversation = %name, "cannot save the polling cursor");
            }
        }
    }
    Ok(found)
}
