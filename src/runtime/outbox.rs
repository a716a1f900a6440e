//! The sender: delivers the outbox through the Qpien client, in order per
//! conversation, item by item, marking each delivered only once Qpien has it.
//!
//! Replies that were in flight when the process stopped are reconciled before
//! they are sent again: whether Qpien drops a second create with the same
//! `frontMsgId` is not documented, and a create may reach Qpien just before a
//! crash. So the first resumed reply of each conversation reads its recent
//! messages (`getMessageList`, inside the rate budget) and every resumed reply
//! whose `frontMsgId` is already there is marked delivered instead of sent.
//!
//! The client already retries transient failures (with backoff and the same
//! `frontMsgId`); what still fails transiently, or fails on credentials or
//! scopes (which a fixed configuration cures), stays at the head of its
//! conversation and is tried again later ([`Backoff::DELIVERY`]). A request
//! Qpien refuses for good (a bad input) is dropped with an error log, so that
//! one bad message cannot block a conversation forever.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use super::lanes::{Lanes, Worker};
use super::metrics::Metrics;
use super::payload::{self, OutboxAction};
use super::Stop;
use crate::message::Event;
use crate::qpien::{Ingested, QpienClient, QpienError};
use crate::retry::{until_ok, Backoff};
use crate::store::{OutboxItem, StateStore, StoreError};

/// Delivers outbox items: what the sender's lanes do with each.
pub(crate) struct Sender {
    pub(crate) client: QpienClient,
    pub(crate) store: Arc<dyn StateStore>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) stop: Stop,
    /// Events the sender learns (a handoff Qpien refused), back to the inbox.
    pub(crate) feedback: tokio::sync::mpsc::UnboundedSender<Ingested>,
    /// Resumed at start, not yet reconciled: outbox ids by conversation.
    pub(crate) resumed: Mutex<HashMap<String, HashSet<u64>>>,
    /// `frontMsgId`s already in Qpien, per conversation being reconciled.
    pub(crate) present: Mutex<HashMap<String, HashSet<String>>>,
}

/// How many of a conversation's newest messages are read to reconcile.
const RECONCILE_PAGE: u32 = 50;

/// Queues every undelivered outbox item left by the last run.
pub(crate) async fn resume(lanes: &Arc<Lanes<Sender>>) -> Result<(), StoreError> {
    let items = lanes.worker().store.outbox(usize::MAX >> 1).await?;
    {
        let mut resumed = lanes
            .worker()
            .resumed
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for item in &items {
            resumed
                .entry(item.conversation.clone())
                .or_default()
                .insert(item.id);
        }
    }
    lanes.resume(items, "undelivered replies");
    Ok(())
}

/// Why a delivery failed, as the sender treats it.
#[derive(Debug, thiserror::Error)]
enum Failure {
    /// Worth trying again later: transient, or cured by fixing the configuration.
    #[error("{0}")]
    Later(QpienError),
    /// Refused for good.
    #[error("{0}")]
    Refused(QpienError),
}

impl From<QpienError> for Failure {
    fn from(e: QpienError) -> Self {
        let later = e.is_retryable()
            || matches!(
                e,
                QpienError::InvalidClient(_)
                    | QpienError::InsufficientScopes { .. }
                    | QpienError::Unauthorized { .. }
                    | QpienError::Config(_)
            );
        if later {
            Failure::Later(e)
        } else {
            Failure::Refused(e)
        }
    }
}

#[async_trait]
impl Worker for Sender {
    type Item = OutboxItem;

    fn key(item: &OutboxItem) -> (&str, u64) {
        (&item.conversation, item.id)
    }

    async fn run(&self, conversation: &str, item: OutboxItem) -> bool {
        let action: Option<OutboxAction> = payload::decode(&item.payload).ok();
        if let Some(OutboxAction::Message { message }) = &action {
            if self.was_resumed(conversation, item.id)
                && self
                    .already_in_qpien(conversation, &message.input.front_msg_id)
                    .await
            {
                tracing::info!(conversation, front_msg_id = %message.input.front_msg_id,
                    "a reply in flight at the last stop had reached Qpien; not sent again");
                Metrics::count(&self.metrics.deliveries, "reconciled");
                return until_ok(
                    Backoff::STORE,
                    "mark a reply delivered",
                    |d| self.stop.pause(d),
                    || self.store.delivered(item.id),
                )
                .await
                .is_some();
            }
        }
        let delivered = until_ok(
            Backoff::DELIVERY,
            "deliver a reply",
            |d| self.stop.pause(d),
            || async {
                match self.deliver(&item, action.as_ref()).await.map_err(Failure::from) {
                    Ok(()) => Ok(true),
                    Err(Failure::Refused(e)) if matches!(action, Some(OutboxAction::Handoff)) => {
                        // Not silent: the customer hears so and the bot stays.
                        tracing::error!(conversation, error = %e, "Qpien refused the handoff; the bot stays in service");
                        self.metrics.handoff_failures.inc();
                        // Closed only at shutdown; the conversation then stays in
                        // handoff until the check at the customer's next message
                        // finds nobody on it.
                        let _ = self.feedback.send(Ingested {
                            key: format!("handoff_failed:{conversation}:{}", item.id),
                            conversation: conversation.to_owned(),
                            event: Event::HandoffFailed,
                        });
                        Ok(false)
                    }
                    Err(Failure::Refused(e)) => {
                        tracing::error!(conversation, error = %e, "Qpien refused a reply; dropped");
                        Ok(false)
                    }
                    Err(later) => Err(later),
                }
            },
        )
        .await;
        let Some(sent) = delivered else {
            // Shutting down: the item stays in the store for the next run.
            return false;
        };
        Metrics::count(
            &self.metrics.deliveries,
            if sent { "sent" } else { "dropped" },
        );
        // Delivered or dropped: take it out of the store.
        until_ok(
            Backoff::STORE,
            "mark a reply delivered",
            |d| self.stop.pause(d),
            || self.store.delivered(item.id),
        )
        .await
        .is_some()
    }
}

impl Sender {
    /// Whether `id` was resumed at start (and so may have reached Qpien).
    fn was_resumed(&self, conversation: &str, id: u64) -> bool {
        let mut resumed = self.resumed.lock().unwrap_or_else(|e| e.into_inner());
        let Some(ids) = resumed.get_mut(conversation) else {
            return false;
        };
        let found = ids.remove(&id);
        if ids.is_empty() {
            resumed.remove(conversation);
            self.present
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(conversation);
        }
        found
    }

    /// Whether a message with `front` is among the conversation's newest in
    /// Qpien (read once per conversation; a failed read counts as no).
    async fn already_in_qpien(&self, conversation: &str, front: &str) -> bool {
        let cached = self
            .present
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(conversation)
            .map(|set| set.contains(front));
        if let Some(found) = cached {
            return found;
        }
        let mut fronts = HashSet::new();
        match self
            .client
            .get_message_list(conversation, 1, RECONCILE_PAGE)
            .await
        {
            Ok(first) => {
                let last = first
                    .total_docs
                    .map(|t| t.div_ceil(u64::from(RECONCILE_PAGE)) as u32)
                    .filter(|&p| p > 1 && first.has_next_page);
                fronts.extend(first.docs.into_iter().filter_map(|m| m.front_msg_id));
                // Oldest first: the newest are on the last page.
                if let Some(last) = last {
                    if let Ok(page) = self
                        .client
                        .get_message_list(conversation, last, RECONCILE_PAGE)
                        .await
                    {
                        fronts.extend(page.docs.into_iter().filter_map(|m| m.front_msg_id));
                    }
                }
            }
            Err(e) => {
                tracing::warn!(conversation, error = %e, "cannot read the conversation to reconcile; sending");
            }
        }
        let found = fronts.contains(front);
        self.present
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(conversation.to_owned(), fronts);
        found
    }

    async fn deliver(
        &self,
        item: &OutboxItem,
        action: Option<&OutboxAction>,
    ) -> Result<(), QpienError> {
        match action {
            None => Err(QpienError::Decode {
                operation: "outbox",
                message: "an unreadable outbox item".into(),
            }),
            Some(OutboxAction::Message { message }) => self.client.send(message).await.map(drop),
            Some(OutboxAction::Handoff) => self.client.handoff(&item.conversation).await,
            Some(OutboxAction::Release) => self.client.release(&item.conversation).await,
        }
    }
}
