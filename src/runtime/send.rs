//! The sender: delivers the outbox through the Qpien client, in order per
//! conversation, item by item, marking each delivered only once Qpien has it.
//!
//! The client already retries transient failures (with backoff and the same
//! `frontMsgId`); what still fails transiently, or fails on credentials or
//! scopes (which a fixed configuration cures), stays at the head of its
//! conversation and is tried again later. A request Qpien refuses for good
//! (a bad input) is dropped with an error log, so that one bad message cannot
//! block a conversation forever.

use std::sync::Arc;
use std::time::Duration;

use super::codec::{self, OutboxAction};
use super::metrics::Metrics;
use super::{RuntimeError, Shared};
use crate::qpien::QpienError;
use crate::store::OutboxItem;

/// Queues every undelivered outbox item left by the last run.
pub(crate) async fn resume(shared: &Arc<Shared>) -> Result<(), RuntimeError> {
    let items = shared.store.outbox(usize::MAX >> 1).await?;
    if !items.is_empty() {
        tracing::info!(count = items.len(), "resuming undelivered replies");
    }
    for item in items {
        queue(shared, item);
    }
    Ok(())
}

/// Queues one committed item for delivery.
pub(crate) fn queue(shared: &Arc<Shared>, item: OutboxItem) {
    let conversation = item.conversation.clone();
    if let Some(key) = shared.outbox.push(&conversation, item.id, item) {
        tokio::spawn(worker(shared.clone(), key));
    }
    shared.metrics.outbox_depth.set(shared.outbox.len() as i64);
}

fn keep_for_later(e: &QpienError) -> bool {
    e.is_retryable()
        || matches!(
            e,
            QpienError::InvalidClient(_)
                | QpienError::InsufficientScopes { .. }
                | QpienError::Unauthorized { .. }
                | QpienError::Config(_)
        )
}

async fn worker(shared: Arc<Shared>, conversation: Arc<str>) {
    while let Some(item) = shared.outbox.next(&conversation) {
        let mut delay = Duration::from_secs(1);
        loop {
            match deliver(&shared, &item).await {
                Ok(()) => {
                    Metrics::count(&shared.metrics.deliveries, "sent");
                    break;
                }
                Err(e) if keep_for_later(&e) => {
                    tracing::warn!(conversation = &*conversation, error = %e, ?delay, "delivery failed; will retry");
                    if !shared.pause(delay).await {
                        // Shutting down: the item stays in the store for the next run.
                        shared.outbox.done();
                        return;
                    }
                    delay = (delay * 2).min(Duration::from_secs(60));
                }
                Err(e) => {
                    tracing::error!(conversation = &*conversation, error = %e, "Qpien refused a reply; dropped");
                    Metrics::count(&shared.metrics.deliveries, "dropped");
                    break;
                }
            }
        }
        // Delivered or dropped: take it out of the store.
        let mut delay = Duration::from_millis(50);
        while let Err(e) = shared.store.delivered(item.id).await {
            tracing::error!(error = %e, "store failed to mark a reply delivered; retrying");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
        shared.outbox.done();
        shared.metrics.outbox_depth.set(shared.outbox.len() as i64);
    }
}

async fn deliver(shared: &Shared, item: &OutboxItem) -> Result<(), QpienError> {
    let action: OutboxAction = match codec::decode(&item.payload) {
        Ok(a) => a,
        Err(e) => {
            return Err(QpienError::Decode {
                operation: "outbox",
                message: e.to_string(),
            })
        }
    };
    match action {
        OutboxAction::Message { message } => shared.client.send(&message).await.map(drop),
        OutboxAction::Handoff => shared.client.handoff(&item.conversation).await,
    }
}
