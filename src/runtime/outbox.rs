//! The sender: delivers the outbox through the Qpien client, in order per
//! conversation, item by item, marking each delivered only once Qpien has it.
//!
//! A reply that was in flight when the process stopped is reconciled before
//! it is sent again: whether Qpien drops a second create with the same
//! `frontMsgId` is not documented, and a create may reach Qpien just before a
//! crash. Replies go out one at a time per conversation, so only the first
//! reply of each conversation left from before the start can be in that case:
//! it reads the conversation's recent messages (`getMessageList`, inside the
//! rate budget) and is marked delivered instead of sent if its `frontMsgId` is
//! already there.
//!
//! Only a bounded part of the outbox is held in memory ([`Outbox`]): at most
//! `runtime.outbox_in_memory` replies in all and
//! `runtime.outbox_in_memory_per_conversation` per conversation. Beyond, a new
//! reply stays in the store only ("spilled"), and as the held ones are
//! delivered the rest are read back from the store in commit order. So a long
//! Qpien outage piles replies up on disk, not in memory, and a restart with a
//! large outbox reads it a part at a time.
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
    /// What is held in memory (told when an item is done).
    pub(crate) held: Arc<Held>,
    /// Conversations whose first reply from before the start was reconciled.
    pub(crate) reconciled: Mutex<HashSet<String>>,
    /// Conversations taken over from a stopped instance, whose next reply is
    /// reconciled.
    pub(crate) adopted: Mutex<HashSet<String>>,
    /// What WhatsApp's window is read by.
    pub(crate) clock: crate::time::ClockHandle,
}

/// How many of a conversation's newest messages are read to reconcile.
const RECONCILE_PAGE: u32 = 50;

/// The outbox in memory: the sender's lanes, fed within [`Held`]'s bounds.
pub(crate) struct Outbox {
    lanes: Arc<Lanes<Sender>>,
}

impl Outbox {
    pub(crate) fn new(lanes: Arc<Lanes<Sender>>) -> Arc<Outbox> {
        Arc::new(Outbox { lanes })
    }

    fn held(&self) -> &Held {
        &self.lanes.worker().held
    }

    /// Queues a reply just committed, or leaves it in the store when memory
    /// holds its share already (it is read back as the outbox drains).
    pub(crate) fn queue(&self, item: OutboxItem) {
        if self.held().admit(&item) {
            self.lanes.queue(item);
        }
    }

    /// Whether `conversation` has replies held here.
    pub(crate) fn has(&self, conversation: &str) -> bool {
        self.lanes.has(conversation)
            || self
                .held()
                .lock()
                .per_conversation
                .contains_key(conversation)
    }

    /// A conversation was just claimed (shared store): the replies an
    /// instance that stopped left for it are held here like new ones (or
    /// left in the store, to be read back, when memory holds its share).
    pub(crate) async fn adopt(&self, conversation: &str) -> Result<(), StoreError> {
        let sender = self.lanes.worker();
        let items = sender.store.outbox_of(conversation).await?;
        if items.is_empty() {
            return Ok(());
        }
        // Its first reply may have reached Qpien before that instance stopped.
        sender
            .adopted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(conversation.to_owned());
        for item in items {
            if self.held().admit_old(&item) {
                self.lanes.queue(item);
            }
        }
        Ok(())
    }

    /// Items held (queued or being delivered).
    pub(crate) fn len(&self) -> usize {
        self.lanes.len()
    }

    /// Waits until what is held is delivered (what the store still has waits
    /// for the next run).
    pub(crate) async fn drained(&self) {
        self.lanes.drained().await
    }

    /// Stops the deliveries where they are (see [`Lanes::abort_all`]).
    pub(crate) async fn abort_all(&self) {
        self.lanes.abort_all().await
    }

    /// Starts from what the last run left: all of it is in the store.
    pub(crate) async fn resume(&self) -> Result<(), StoreError> {
        self.held().spill_from(0);
        let n = self.refill().await?;
        if n > 0 {
            tracing::info!(count = n, "resuming undelivered replies");
        }
        Ok(())
    }

    /// Reads spilled replies back while memory has room; returns how many.
    async fn refill(&self) -> Result<usize, StoreError> {
        let held = self.held();
        let mut total = 0;
        while let Some((after, room)) = held.begin_read() {
            let store = &self.lanes.worker().store;
            let items = match store.outbox(after, room).await {
                Ok(items) => items,
                Err(e) => {
                    held.abandon_read();
                    return Err(e);
                }
            };
            let read = items.len();
            let queue = held.end_read(after, room, items);
            let progressed = !queue.is_empty();
            total += queue.len();
            for item in queue {
                self.lanes.queue(item);
            }
            if read < room || !progressed {
                break;
            }
        }
        Ok(total)
    }

    /// Refills as held replies are delivered, until shutdown.
    pub(crate) async fn run_refill(self: Arc<Self>, stop: Stop) {
        loop {
            tokio::select! {
                _ = self.held().wake.notified() => {}
                _ = stop.wait() => return,
            }
            if let Err(e) = self.refill().await {
                tracing::warn!(error = %e, "cannot read undelivered replies back; trying again");
                stop.pause(std::time::Duration::from_secs(1)).await;
                self.held().wake.notify_one();
            }
        }
    }
}

/// Which outbox items are held in memory, within the caps (see the module
/// docs), and where to read the others back from.
pub(crate) struct Held {
    state: Mutex<HeldState>,
    cap: usize,
    per_conversation: usize,
    wake: tokio::sync::Notify,
}

#[derive(Default)]
struct HeldState {
    ids: HashSet<u64>,
    per_conversation: HashMap<String, usize>,
    /// `Some(after)`: replies are being left in the store; the next read
    /// starts after this id.
    spill: Option<u64>,
    /// While a read runs: ids finished meanwhile (the read may still see them),
    /// and whether a reply was spilled meanwhile.
    finished_during_read: Option<HashSet<u64>>,
    spilled_during_read: bool,
    /// The smallest id committed by this run: older ones are from before the
    /// start (ids grow with each commit).
    first_fresh: Option<u64>,
}

impl Held {
    pub(crate) fn new(cap: usize, per_conversation: usize) -> Arc<Held> {
        Arc::new(Held {
            state: Mutex::new(HeldState::default()),
            cap: cap.max(1),
            per_conversation: per_conversation.max(1),
            wake: tokio::sync::Notify::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HeldState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn has_room(&self, s: &HeldState, conversation: &str) -> bool {
        s.ids.len() < self.cap
            && s.per_conversation.get(conversation).copied().unwrap_or(0) < self.per_conversation
    }

    fn hold(s: &mut HeldState, item: &OutboxItem) {
        s.ids.insert(item.id);
        *s.per_conversation
            .entry(item.conversation.clone())
            .or_default() += 1;
    }

    /// Whether a just-committed item goes to memory (else it stays in the store).
    fn admit(&self, item: &OutboxItem) -> bool {
        {
            let mut s = self.lock();
            s.first_fresh = Some(s.first_fresh.map_or(item.id, |f| f.min(item.id)));
        }
        self.admit_old(item)
    }

    /// Whether an item found in the store goes to memory (else it stays there
    /// and is read back later).
    fn admit_old(&self, item: &OutboxItem) -> bool {
        let mut s = self.lock();
        if s.ids.contains(&item.id) {
            return false;
        }
        if s.spill.is_none() && self.has_room(&s, &item.conversation) {
            Self::hold(&mut s, item);
            return true;
        }
        if s.spill.is_none() {
            tracing::info!(
                "the outbox holds its share in memory; further replies wait in the store"
            );
        }
        let after = item.id.saturating_sub(1);
        s.spill = Some(s.spill.map_or(after, |a| a.min(after)));
        if s.finished_during_read.is_some() {
            s.spilled_during_read = true;
        }
        false
    }

    fn spill_from(&self, after: u64) {
        let mut s = self.lock();
        s.spill = Some(s.spill.map_or(after, |a| a.min(after)));
    }

    /// Whether `id` is from before the start (a reconciliation candidate).
    fn is_from_before_start(&self, id: u64) -> bool {
        self.lock().first_fresh.is_none_or(|f| id < f)
    }

    /// An item is done (delivered or dropped, and so out of the store).
    fn finished(&self, item: &OutboxItem) {
        let mut s = self.lock();
        s.ids.remove(&item.id);
        if let Some(n) = s.per_conversation.get_mut(&item.conversation) {
            *n -= 1;
            if *n == 0 {
                s.per_conversation.remove(&item.conversation);
            }
        }
        if let Some(f) = s.finished_during_read.as_mut() {
            f.insert(item.id);
        }
        let refill = s.spill.is_some();
        drop(s);
        if refill {
            self.wake.notify_one();
        }
    }

    /// Where a read of spilled items starts and how many fit, if one is due.
    fn begin_read(&self) -> Option<(u64, usize)> {
        let mut s = self.lock();
        let after = s.spill?;
        let room = self.cap.saturating_sub(s.ids.len());
        if room == 0 || s.finished_during_read.is_some() {
            return None;
        }
        s.finished_during_read = Some(HashSet::new());
        s.spilled_during_read = false;
        Some((after, room))
    }

    fn abandon_read(&self) {
        self.lock().finished_during_read = None;
    }

    /// Takes what a read found: the items to queue (in order), holding them;
    /// moves the read point; ends spilling once the store has nothing more.
    fn end_read(&self, after: u64, room: usize, items: Vec<OutboxItem>) -> Vec<OutboxItem> {
        let mut s = self.lock();
        let finished = s.finished_during_read.take().unwrap_or_default();
        let complete = items.len() < room;
        let mut cursor = after;
        let mut stopped = false;
        let mut queue = Vec::new();
        for item in items {
            if s.ids.contains(&item.id) || finished.contains(&item.id) {
                cursor = item.id;
                continue;
            }
            if !self.has_room(&s, &item.conversation) {
                stopped = true;
                break;
            }
            Self::hold(&mut s, &item);
            cursor = item.id;
            queue.push(item);
        }
        // A reply spilled during the read may be older than the read point.
        let current = s.spill.unwrap_or(after);
        s.spill = Some(if current < after { current } else { cursor });
        if complete && !stopped && !s.spilled_during_read && current >= after {
            s.spill = None;
            tracing::info!("the outbox is back in memory");
        }
        queue
    }
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
        let done = self.deliver_once(conversation, &item).await;
        if done {
            self.held.finished(&item);
        }
        done
    }
}

impl Sender {
    /// Delivers (or reconciles, or drops) one item and takes it out of the
    /// store; `false` at shutdown.
    async fn deliver_once(&self, conversation: &str, item: &OutboxItem) -> bool {
        let action: Option<OutboxAction> = payload::decode(&item.payload).ok();
        // A free-form WhatsApp reply past the customer's 24-hour window:
        // WhatsApp would refuse it (error 131047), so it is never sent.
        let window = match &action {
            Some(OutboxAction::Message {
                window_until: Some(closes),
                ..
            }) => Some(*closes),
            _ => None,
        };
        let closed = || window.is_some_and(|closes| self.clock.now() >= closes);
        let withhold = || {
            tracing::error!(
                conversation,
                "a reply waited past WhatsApp's 24-hour window; dropped"
            );
            self.metrics.withheld.inc();
            self.metrics.deliveries.count("outside_window");
        };
        if closed() {
            withhold();
            return self.mark_delivered(item).await;
        }
        if let Some(OutboxAction::Message { message, .. }) = &action {
            if self.was_resumed(conversation, item.id)
                && self
                    .already_in_qpien(conversation, &message.input.front_msg_id)
                    .await
            {
                tracing::info!(conversation, front_msg_id = %message.input.front_msg_id,
                    "a reply in flight at the last stop had reached Qpien; not sent again");
                self.metrics.deliveries.count("reconciled");
                return self.mark_delivered(item).await;
            }
        }
        let delivered = until_ok(
            Backoff::DELIVERY,
            "deliver a reply",
            |d| self.stop.pause(d),
            || async {
                // Qpien may have been away until the window closed.
                if closed() {
                    withhold();
                    return Ok(None);
                }
                match self.deliver(item, action.as_ref()).await.map_err(Failure::from) {
                    Ok(()) => Ok(Some(true)),
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
                        Ok(Some(false))
                    }
                    Err(Failure::Refused(e)) => {
                        tracing::error!(conversation, error = %e, "Qpien refused a reply; dropped");
                        Ok(Some(false))
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
        // (`None`: withheld, counted as such.)
        if let Some(sent) = sent {
            self.metrics
                .deliveries
                .count(if sent { "sent" } else { "dropped" });
        }
        // Delivered or dropped: take it out of the store.
        self.mark_delivered(item).await
    }

    /// Takes a delivered (or dropped) item out of the store; `false` at
    /// shutdown.
    async fn mark_delivered(&self, item: &OutboxItem) -> bool {
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
    /// Whether `id` is the first reply of its conversation left from before
    /// the start (the only one that may have reached Qpien unmarked).
    fn was_resumed(&self, conversation: &str, id: u64) -> bool {
        if self
            .adopted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(conversation)
        {
            return true;
        }
        self.held.is_from_before_start(id)
            && self
                .reconciled
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(conversation.to_owned())
    }

    /// Whether a message with `front` is among the conversation's newest in
    /// Qpien (read once per conversation; a failed read counts as no).
    async fn already_in_qpien(&self, conversation: &str, front: &str) -> bool {
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
        fronts.contains(front)
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
            Some(OutboxAction::Message { message, .. }) => {
                self.client.send(message).await.map(drop)
            }
            Some(OutboxAction::Handoff) => self.client.handoff(&item.conversation).await,
            Some(OutboxAction::Release) => self.client.release(&item.conversation).await,
        }
    }
}
