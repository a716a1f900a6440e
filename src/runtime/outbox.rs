//! The sender: delivers the outbox through the Qpien client, in order per
//! conversation, item by item, marking each delivered only once Qpien has it.
//!
//! The client already retries transient failures (with backoff and the same
//! `frontMsgId`); what still fails transiently, or fails on credentials or
//! scopes (which a fixed configuration cures), stays at the head of its
//! conversation and is tried again later ([`Backoff::DELIVERY`]). A request
//! Qpien refuses for good (a bad input) is dropped with an error log, so that
//! one bad message cannot block a conversation forever.

use std::sync::Arc;

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
}

/// Queues every undelivered outbox item left by the last run.
pub(crate) async fn resume(lanes: &Arc<Lanes<Sender>>) -> Result<(), StoreError> {
    let items = lanes.worker().store.outbox(usize::MAX >> 1).await?;
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
