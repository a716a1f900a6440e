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
//! `runtime.outbox_in_memory_per_conversation` per conversation. Beyond, a
//! conversation's new replies stay in the store only ("spilled"), and as its
//! held ones are delivered the rest are read back from the store in commit
//! order. So a long Qpien outage piles replies up on disk, not in memory, and
//! a restart with a large outbox reads it a part at a time.
//!
//! Spilling is per conversation, and fair: a conversation whose backlog fills
//! its share spills alone, so the next conversation's reply is still held
//! and sent at once; when memory as a whole is full, the conversations
//! waiting in the store are read back in turn (the one that waited longest
//! first, a share each), never one conversation's whole backlog before
//! another's first reply. Sending is fair too: each conversation sends one
//! reply at a time and the rate limiter serves them in arrival order, so a
//! conversation with a thousand replies waiting has one in the limiter's
//! queue, like any other.
//!
//! The client already retries transient failures (with backoff and the same
//! `frontMsgId`); what still fails transiently, or fails on credentials or
//! scopes (which a fixed configuration cures), stays at the head of its
//! conversation and is tried again later ([`Backoff::DELIVERY`]). A request
//! Qpien refuses for good (a bad input) is dropped with an error log, so that
//! one bad message cannot block a conversation forever.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use super::claims::Lease;
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
    /// Whether this instance still holds a conversation (shared store).
    pub(crate) claims: Arc<super::claims::Claims>,
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
    /// How log lines name conversations.
    pub(crate) log: Arc<crate::insights::Log>,
}

/// How a delivery ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Delivery {
    /// Qpien took it.
    Sent,
    /// Qpien refused it for good.
    Dropped,
    /// WhatsApp's window closed before it could go.
    Withheld,
    /// Its conversation was taken over by another instance, which sends it.
    Left,
}

/// How many of a conversation's newest messages are read to reconcile.
const RECONCILE_PAGE: u32 = 50;

/// The outbox in memory: the sender's lanes, fed within [`Held`]'s bounds.
pub(crate) struct Outbox {
    lanes: Arc<Lanes<Sender>>,
}

/// Conversations listed per read of the store at start.
const LIST_PAGE: usize = 1_000;

impl Outbox {
    pub(crate) fn new(lanes: Arc<Lanes<Sender>>) -> Arc<Outbox> {
        Arc::new(Outbox { lanes })
    }

    fn held(&self) -> &Held {
        &self.lanes.worker().held
    }

    /// Queues a reply just committed (with what it says, so that it is not
    /// decoded from the item's payload again), or leaves it in the store when
    /// memory holds its share already (it is read back as the outbox drains).
    pub(crate) fn queue(&self, item: OutboxItem, action: OutboxAction) {
        if self.held().admit(&item) {
            self.lanes.queue(Reply {
                item,
                action: Some(action),
            });
        }
    }

    /// Whether `conversation` has replies held here (or waiting in the
    /// store to be read back).
    pub(crate) fn has(&self, conversation: &str) -> bool {
        self.lanes.has(conversation) || self.held().lock().convs.contains_key(conversation)
    }

    /// The replies of `conversation` not yet sent, as far as this process
    /// knows: held, and left in the store since it started.
    pub(crate) fn waiting(&self, conversation: &str) -> usize {
        self.held()
            .lock()
            .convs
            .get(conversation)
            .map_or(0, |c| c.held + c.stored)
    }

    /// A conversation was just claimed (shared store): the replies an
    /// instance that stopped left for it are read back from the store like
    /// spilled ones, in order, before any new one of it is sent.
    pub(crate) async fn adopt(&self, conversation: &str) -> Result<(), StoreError> {
        let sender = self.lanes.worker();
        if sender.store.outbox_of(conversation, 0, 1).await?.is_empty() {
            return Ok(());
        }
        // Its first reply may have reached Qpien before that instance stopped.
        sender
            .adopted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(conversation.to_owned());
        self.held().spill(conversation, 0);
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

    /// Starts from what the last run left: all of it is in the store. Every
    /// conversation with replies there waits to be read back; a reply
    /// committed meanwhile waits behind its conversation's older ones.
    pub(crate) async fn resume(&self) -> Result<(), StoreError> {
        let held = self.held();
        held.lock().resuming = true;
        let listed = self.list_stored().await;
        held.lock().resuming = false;
        let listed = listed?;
        if listed > 0 {
            tracing::info!(conversations = listed, "resuming undelivered replies");
        }
        self.refill().await.map(drop)
    }

    /// Marks every conversation with replies in the store as spilled;
    /// returns how many.
    async fn list_stored(&self) -> Result<usize, StoreError> {
        let store = &self.lanes.worker().store;
        let mut after = String::new();
        let mut count = 0;
        loop {
            let page = store.outbox_conversations(&after, LIST_PAGE).await?;
            for conversation in &page {
                self.held().spill(conversation, 0);
            }
            count += page.len();
            let full = page.len() == LIST_PAGE;
            match page.into_iter().last() {
                Some(last) if full => after = last,
                _ => return Ok(count),
            }
        }
    }

    /// Reads spilled replies back while memory has room, a conversation at
    /// a time, in turn; returns how many.
    async fn refill(&self) -> Result<usize, StoreError> {
        let held = self.held();
        let store = &self.lanes.worker().store;
        let mut total = 0;
        while let Some((conversation, after, room)) = held.begin_read() {
            let items = match store.outbox_of(&conversation, after, room).await {
                Ok(items) => items,
                Err(e) => {
                    held.abandon_read(&conversation);
                    return Err(e);
                }
            };
            let queue = held.end_read(&conversation, after, room, items);
            total += queue.len();
            for item in queue {
                self.lanes.queue(Reply { item, action: None });
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
/// docs), and which conversations wait in the store to be read back.
pub(crate) struct Held {
    state: Mutex<HeldState>,
    cap: usize,
    per_conversation: usize,
    wake: tokio::sync::Notify,
}

#[derive(Default)]
struct HeldState {
    /// The ids held in memory.
    ids: HashSet<u64>,
    /// Conversations with replies held, or waiting in the store.
    convs: HashMap<String, ConvHeld>,
    /// Conversations with replies in the store only, each once, the one that
    /// has waited longest first (the one being read is not in it).
    waiting: VecDeque<String>,
    /// The conversation being read back now (one read at a time), the ids
    /// finished meanwhile (the read may still see them), and whether one of
    /// its replies was left in the store meanwhile.
    reading: Option<String>,
    finished_during_read: HashSet<u64>,
    spilled_during_read: bool,
    /// At start, until every conversation in the store is listed: a new
    /// reply waits behind its conversation's older ones there.
    resuming: bool,
    /// The smallest id committed by this run: older ones are from before the
    /// start (ids grow with each commit).
    first_fresh: Option<u64>,
}

/// One conversation's part of the outbox.
#[derive(Default)]
struct ConvHeld {
    /// Replies held in memory.
    held: usize,
    /// Replies left in the store since the start (to cap a conversation's
    /// backlog; those from before the start are not counted).
    stored: usize,
    /// `Some(after)`: its replies after this id wait in the store.
    spill: Option<u64>,
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

    /// Whether a just-committed item goes to memory (else it stays in the
    /// store, read back in its conversation's turn).
    fn admit(&self, item: &OutboxItem) -> bool {
        let mut s = self.lock();
        s.first_fresh = Some(s.first_fresh.map_or(item.id, |f| f.min(item.id)));
        if s.ids.contains(&item.id) {
            return false;
        }
        let full = s.ids.len() >= self.cap;
        let resuming = s.resuming;
        let reading_it = s.reading.as_deref() == Some(item.conversation.as_str());
        let conv = s.convs.entry(item.conversation.clone()).or_default();
        if conv.spill.is_none() && !resuming && !full && conv.held < self.per_conversation {
            conv.held += 1;
            s.ids.insert(item.id);
            return true;
        }
        conv.stored += 1;
        if conv.spill.is_none() {
            // Everything before this reply is held or sent.
            conv.spill = Some(if resuming {
                0
            } else {
                item.id.saturating_sub(1)
            });
            tracing::debug!(
                waiting = s.waiting.len() + 1,
                "a conversation's replies wait in the store"
            );
            s.waiting.push_back(item.conversation.clone());
        } else if reading_it {
            s.spilled_during_read = true;
        }
        false
    }

    /// Marks `conversation`'s replies after `after` as waiting in the store.
    fn spill(&self, conversation: &str, after: u64) {
        let mut s = self.lock();
        let reading_it = s.reading.as_deref() == Some(conversation);
        let conv = s.convs.entry(conversation.to_owned()).or_default();
        match conv.spill {
            Some(a) => {
                conv.spill = Some(a.min(after));
                if reading_it {
                    s.spilled_during_read = true;
                }
            }
            None => {
                conv.spill = Some(after);
                s.waiting.push_back(conversation.to_owned());
            }
        }
        drop(s);
        self.wake.notify_one();
    }

    /// Whether `id` is from before the start (a reconciliation candidate).
    fn is_from_before_start(&self, id: u64) -> bool {
        self.lock().first_fresh.is_none_or(|f| id < f)
    }

    /// An item is done (delivered or dropped, and so out of the store).
    fn finished(&self, item: &OutboxItem) {
        let mut s = self.lock();
        s.ids.remove(&item.id);
        if let Some(c) = s.convs.get_mut(&item.conversation) {
            c.held = c.held.saturating_sub(1);
            if c.held == 0 && c.spill.is_none() {
                s.convs.remove(&item.conversation);
            }
        }
        if s.reading.is_some() {
            s.finished_during_read.insert(item.id);
        }
        let refill = !s.waiting.is_empty();
        drop(s);
        if refill {
            self.wake.notify_one();
        }
    }

    /// The next conversation to read back, where its read starts and how
    /// many fit: the one that waited longest among those with room.
    fn begin_read(&self) -> Option<(String, u64, usize)> {
        let mut s = self.lock();
        if s.reading.is_some() {
            return None;
        }
        let room = self.cap.saturating_sub(s.ids.len());
        if room == 0 {
            return None;
        }
        for _ in 0..s.waiting.len() {
            let conversation = s.waiting.pop_front()?;
            let (held, after) = match s.convs.get(&conversation) {
                Some(c) => (c.held, c.spill),
                None => (0, None),
            };
            let Some(after) = after else { continue };
            let share = self.per_conversation.saturating_sub(held);
            if share == 0 {
                // Its share is held: it keeps its place for later.
                s.waiting.push_back(conversation);
                continue;
            }
            s.reading = Some(conversation.clone());
            s.finished_during_read.clear();
            s.spilled_during_read = false;
            return Some((conversation, after, room.min(share)));
        }
        None
    }

    fn abandon_read(&self, conversation: &str) {
        let mut s = self.lock();
        s.reading = None;
        s.waiting.push_front(conversation.to_owned());
    }

    /// Takes what a read of `conversation` found: the items to queue (in
    /// order), holding them; moves its read point, and ends its spill once
    /// the store has nothing more of it (else it goes to the back of the
    /// line, behind the conversations that waited longer).
    fn end_read(
        &self,
        conversation: &str,
        after: u64,
        room: usize,
        items: Vec<OutboxItem>,
    ) -> Vec<OutboxItem> {
        let mut s = self.lock();
        s.reading = None;
        let finished = std::mem::take(&mut s.finished_during_read);
        let spilled_meanwhile = s.spilled_during_read;
        let complete = items.len() < room;
        let mut cursor = after;
        let mut queue = Vec::new();
        for item in items {
            if s.ids.contains(&item.id) || finished.contains(&item.id) {
                cursor = item.id;
                continue;
            }
            s.ids.insert(item.id);
            cursor = item.id;
            queue.push(item);
        }
        let conv = s.convs.entry(conversation.to_owned()).or_default();
        conv.held += queue.len();
        conv.stored = conv.stored.saturating_sub(queue.len());
        // A spill marked meanwhile may start before the read point.
        let current = conv.spill.unwrap_or(after);
        let lowered = current < after;
        if complete && !spilled_meanwhile && !lowered {
            conv.spill = None;
            conv.stored = 0;
            if conv.held == 0 {
                s.convs.remove(conversation);
            }
        } else {
            conv.spill = Some(if lowered { current } else { cursor });
            s.waiting.push_back(conversation.to_owned());
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

/// A reply queued to be sent: its item and, for one just committed here,
/// what it says (its payload is then not read); one read back from the
/// store is decoded from its payload when sent.
pub(crate) struct Reply {
    item: OutboxItem,
    action: Option<OutboxAction>,
}

impl Worker for Sender {
    type Item = Reply;

    fn key(reply: &Reply) -> (&str, u64) {
        (&reply.item.conversation, reply.item.id)
    }

    async fn run(&self, conversation: &str, reply: Reply) -> bool {
        let Reply { item, action } = reply;
        // In an allocation of its own: the lane task stays small while the
        // reply waits on its shared request (what is in flight costs CPU).
        let done = Box::pin(self.deliver_once(conversation, &item, action)).await;
        if done {
            self.held.finished(&item);
        }
        done
    }
}

impl Sender {
    /// Delivers (or reconciles, or drops) one item and takes it out of the
    /// store; `false` at shutdown.
    async fn deliver_once(
        &self,
        conversation: &str,
        item: &OutboxItem,
        action: Option<OutboxAction>,
    ) -> bool {
        match self.lease(conversation).await {
            Some(true) => {}
            // Its new holder sends it: done here, left in the store.
            Some(false) => return self.left(conversation).await,
            None => return false,
        }
        let action = action.or_else(|| payload::decode(&item.payload).ok());
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
        let withhold = || async {
            let name = self.log.name(conversation).await;
            tracing::error!(
                conversation = %name,
                "a reply waited past WhatsApp's 24-hour window; dropped"
            );
            self.metrics.withheld.inc();
            self.metrics.deliveries.count("outside_window");
        };
        if closed() {
            withhold().await;
            return self.mark_delivered(item).await;
        }
        if let Some(OutboxAction::Message { message, .. }) = &action {
            if self.was_resumed(conversation, item.id)
                && self
                    .already_in_qpien(conversation, &message.input.front_msg_id)
                    .await
            {
                let name = self.log.name(conversation).await;
                tracing::info!(conversation = %name, front_msg_id = %message.input.front_msg_id,
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
                    withhold().await;
                    return Ok(Some(Delivery::Withheld));
                }
                // Or the conversation taken over meanwhile.
                match self.lease(conversation).await {
                    Some(true) => {}
                    Some(false) => return Ok(Some(Delivery::Left)),
                    None => return Ok(None),
                }
                match self.deliver(item, action.as_ref()).await.map_err(Failure::from) {
                    Ok(()) => Ok(Some(Delivery::Sent)),
                    Err(Failure::Refused(e)) if matches!(action, Some(OutboxAction::Handoff)) => {
                        // Not silent: the customer hears so and the bot stays.
                        let name = self.log.name(conversation).await;
                        tracing::error!(conversation = %name, error = %e, "Qpien refused the handoff; the bot stays in service");
                        self.metrics.handoff_failures.inc();
                        // Closed only at shutdown; the conversation then stays in
                        // handoff until the check at the customer's next message
                        // finds nobody on it.
                        let _ = self.feedback.send(Ingested {
                            key: format!("handoff_failed:{conversation}:{}", item.id),
                            conversation: conversation.to_owned(),
                            event: Event::HandoffFailed,
                        });
                        Ok(Some(Delivery::Dropped))
                    }
                    Err(Failure::Refused(e)) => {
                        let name = self.log.name(conversation).await;
                        tracing::error!(conversation = %name, error = %e, "Qpien refused a reply; dropped");
                        Ok(Some(Delivery::Dropped))
                    }
                    Err(later) => Err(later),
                }
            },
        )
        .await;
        match delivered.flatten() {
            // Shutting down: the item stays in the store for the next run.
            None => false,
            Some(Delivery::Left) => self.left(conversation).await,
            // Delivered, dropped or withheld (counted as such): taken out of
            // the store.
            Some(ended) => {
                match ended {
                    Delivery::Sent => self.metrics.deliveries.count("sent"),
                    Delivery::Dropped => self.metrics.deliveries.count("dropped"),
                    Delivery::Withheld | Delivery::Left => {}
                }
                self.mark_delivered(item).await
            }
        }
    }

    /// Whether this instance may deliver `conversation`'s replies: waits
    /// while its claim is stale (see [`super::claims::Lease`]); `Some(false)`:
    /// the conversation was taken over; `None` at shutdown.
    async fn lease(&self, conversation: &str) -> Option<bool> {
        loop {
            match self.claims.lease(conversation) {
                Lease::Held => return Some(true),
                Lease::Lost => return Some(false),
                Lease::Stale => {
                    if !self.stop.pause(std::time::Duration::from_millis(50)).await {
                        return None;
                    }
                }
            }
        }
    }

    /// A reply of a conversation taken over: done here, left in the store
    /// for its new holder, which adopted the conversation's replies in order.
    async fn left(&self, conversation: &str) -> bool {
        let name = self.log.name(conversation).await;
        tracing::info!(conversation = %name, "a reply is left to the conversation's new holder");
        self.metrics.deliveries.count("left");
        true
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
                let name = self.log.name(conversation).await;
                tracing::warn!(conversation = %name, error = %e, "cannot read the conversation to reconcile; sending");
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

#[cfg(test)]
mod tests {
    use super::*;

    fn item(id: u64, conversation: &str) -> OutboxItem {
        OutboxItem {
            id,
            conversation: conversation.into(),
            payload: Vec::new(),
        }
    }

    #[test]
    fn a_backlog_spills_alone_and_conversations_are_read_back_in_turn() {
        let held = Held::new(4, 2);
        // `a` fills its share: its third reply waits in the store...
        assert!(held.admit(&item(1, "a")));
        assert!(held.admit(&item(2, "a")));
        assert!(!held.admit(&item(3, "a")));
        // ...and so do its later ones, behind it, while `b` is held.
        assert!(!held.admit(&item(4, "a")));
        assert!(held.admit(&item(5, "b")));
        assert!(held.admit(&item(6, "b")));
        // Memory is full: `c` waits too, behind `a`.
        assert!(!held.admit(&item(7, "c")));
        assert_eq!(held.begin_read(), None, "no room");
        held.finished(&item(1, "a"));
        held.finished(&item(5, "b"));
        // `a` waited longest: its next one is read (one, its share's room).
        let (conv, after, room) = held.begin_read().unwrap();
        assert_eq!((conv.as_str(), after, room), ("a", 2, 1));
        let queued = held.end_read("a", after, room, vec![item(3, "a")]);
        assert_eq!(queued, vec![item(3, "a")]);
        // Then `c`, although `a` still has one in the store.
        let (conv, after, room) = held.begin_read().unwrap();
        assert_eq!((conv.as_str(), after, room), ("c", 6, 1));
        assert_eq!(held.end_read("c", after, room, vec![item(7, "c")]).len(), 1);
        // `c`'s read was not complete (as many as asked): it is read again
        // later, after `a`; nothing more fits now.
        assert_eq!(held.begin_read(), None);
        assert_eq!(held.lock().waiting, ["a", "c"]);
    }
}
