//! The dispatcher: runs each accepted item as a turn, one at a time per
//! conversation, in arrival order, and commits it atomically.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::Instrument;

use super::codec::{self, OutboxAction};
use super::metrics::Metrics;
use super::{send, RuntimeError, Shared};
use crate::engine::Stored;
use crate::message::{Channel, Effect, Event};
use crate::qpien::{plan_replies, Ingested};
use crate::store::{Accepted, InboxItem, NewInbound, OutboxItem, StoredSession, TurnCommit};

/// Queues every inbox item left unfinished by the last run.
pub(crate) async fn resume(shared: &Arc<Shared>) -> Result<(), RuntimeError> {
    let pending = shared.store.pending(usize::MAX >> 1).await?;
    if !pending.is_empty() {
        tracing::info!(count = pending.len(), "resuming unfinished turns");
    }
    for item in pending {
        dispatch(shared, item);
    }
    Ok(())
}

/// Records an inbound item (once per key) and queues its turn. `Ok(false)`: a
/// duplicate, nothing to do.
pub(crate) async fn accept(
    shared: &Arc<Shared>,
    ingested: Ingested,
) -> Result<bool, crate::store::StoreError> {
    let accepted = shared
        .store
        .accept(NewInbound {
            key: ingested.key,
            conversation: ingested.conversation,
            payload: codec::encode(&ingested.event),
            received_at: crate::time::now(),
        })
        .await?;
    match accepted {
        Accepted::New(item) => {
            dispatch(shared, item);
            Ok(true)
        }
        Accepted::Duplicate => {
            shared.metrics.dedup_hits.inc();
            Ok(false)
        }
    }
}

/// Queues a stored item for its conversation's worker.
pub(crate) fn dispatch(shared: &Arc<Shared>, item: InboxItem) {
    let conversation = item.conversation.clone();
    if let Some(key) = shared.turns.push(&conversation, item.seq, item) {
        tokio::spawn(worker(shared.clone(), key));
    }
    shared.metrics.queue_depth.set(shared.turns.len() as i64);
}

async fn worker(shared: Arc<Shared>, conversation: Arc<str>) {
    while let Some(item) = shared.turns.next(&conversation) {
        let span = tracing::info_span!("turn", conversation = &*conversation, key = %item.key);
        run(&shared, item).instrument(span).await;
        shared.turns.done();
        shared.metrics.queue_depth.set(shared.turns.len() as i64);
    }
}

/// Retries a store call until it works (the store is the source of truth: a
/// turn cannot be skipped), backing off; gives up only at shutdown.
async fn persist<T, F, Fut>(shared: &Shared, what: &str, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, crate::store::StoreError>>,
{
    let mut delay = Duration::from_millis(50);
    loop {
        match f().await {
            Ok(v) => return Some(v),
            Err(e) => {
                tracing::error!(error = %e, "store failed to {what}; retrying");
                if !shared.pause(delay).await && shared.is_stopping() {
                    return None;
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

async fn run(shared: &Arc<Shared>, item: InboxItem) {
    let started = Instant::now();
    let conversation = item.conversation.as_str();
    let bot = shared.bot();
    let Some(stored) = persist(shared, "load a session", || {
        shared.store.session(conversation)
    })
    .await
    else {
        return;
    };
    let stored: Option<Stored> = stored.and_then(|s| match codec::decode(&s.data) {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::warn!(error = %e, "unreadable session; the conversation starts over");
            None
        }
    });
    let turn = match codec::decode::<Event>(&item.payload) {
        Ok(event) => {
            bot.step(conversation, stored, &event, crate::time::now())
                .await
        }
        Err(e) => {
            tracing::error!(error = %e, "unreadable inbox item; skipped");
            bot.unchanged(stored)
        }
    };
    let channel = turn
        .stored
        .as_ref()
        .map_or(Channel::default(), |s| s.channel);
    let plan = plan_replies(
        shared.client.config(),
        conversation,
        channel,
        &item.key,
        &turn.messages,
    );
    let mut outbox: Vec<Vec<u8>> = plan
        .into_iter()
        .map(|message| {
            codec::encode(&OutboxAction::Message {
                message: Box::new(message),
            })
        })
        .collect();
    if turn.effects.contains(&Effect::Handoff) {
        outbox.push(codec::encode(&OutboxAction::Handoff));
    }
    let session = turn.stored.as_ref().map(|s| StoredSession {
        data: codec::encode(s),
        due_at: turn.due,
    });
    let commit = TurnCommit {
        inbox_seq: item.seq,
        conversation: conversation.to_owned(),
        session,
        outbox,
    };
    let Some(ids) = persist(shared, "commit a turn", || {
        shared.store.commit(commit.clone())
    })
    .await
    else {
        return;
    };
    let result = if turn.errors.is_empty() {
        "ok"
    } else {
        "error"
    };
    Metrics::count(&shared.metrics.turns, result);
    shared
        .metrics
        .turn_latency
        .observe(started.elapsed().as_secs_f64());
    tracing::debug!(replies = ids.len(), "turn committed");
    for (id, payload) in ids.into_iter().zip(commit.outbox) {
        send::queue(
            shared,
            OutboxItem {
                id,
                conversation: conversation.to_owned(),
                payload,
            },
        );
    }
}

/// Accepts and queues the inactivity timer of `conversation` due at `due`.
pub(crate) async fn fire_timer(shared: &Arc<Shared>, conversation: String, due: i64) {
    let key = format!("idle:{conversation}:{due}");
    let ingested = Ingested {
        key,
        conversation,
        event: Event::Idle { due },
    };
    if let Err(e) = accept(shared, ingested).await {
        tracing::error!(error = %e, "cannot record a timer");
    }
}
