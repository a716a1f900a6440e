//! The inbox and the dispatcher: every event is recorded once (the inbox), then
//! run as a turn, one at a time per conversation, in arrival order, and
//! committed atomically (the dispatcher).
//!
//! A turn is four steps: decode the event and the stored conversation, ask the
//! engine ([`Bot::step`](crate::Bot::step), which makes every decision), plan
//! the replies as `createMessage` inputs, and commit inbox item, conversation
//! and outbox in one write. Then the replies go to the sender.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tracing::Instrument;

use super::lanes::{Lanes, Worker};
use super::metrics::Metrics;
use super::outbox::Sender;
use super::payload::{self, OutboxAction};
use super::reload::BotSlot;
use super::Stop;
use crate::engine::{Stored, Turn};
use crate::message::{Channel, Effect, Event};
use crate::qpien::types::ExternalConversation;
use crate::qpien::{plan_replies, Ingested, QpienClient};
use crate::retry::{until_ok, Backoff};
use crate::store::{
    Accepted, InboxItem, NewInbound, OutboxItem, StateStore, StoreError, StoredSession, TurnCommit,
};
use crate::time::Millis;

/// Where events come in: webhook, poller and timers all hand theirs here.
pub(crate) struct Inbox {
    store: Arc<dyn StateStore>,
    turns: Arc<Lanes<Dispatcher>>,
    metrics: Arc<Metrics>,
    capacity: usize,
}

impl Inbox {
    pub(crate) fn new(
        store: Arc<dyn StateStore>,
        turns: Arc<Lanes<Dispatcher>>,
        metrics: Arc<Metrics>,
        capacity: usize,
    ) -> Inbox {
        Inbox {
            store,
            turns,
            metrics,
            capacity,
        }
    }

    /// Records an event (once per key) and queues its turn. `Ok(false)`: a
    /// duplicate, nothing to do.
    pub(crate) async fn accept(&self, ingested: Ingested) -> Result<bool, StoreError> {
        let accepted = self
            .store
            .accept(NewInbound {
                key: ingested.key,
                conversation: ingested.conversation,
                payload: payload::encode(&ingested.event),
                received_at: crate::time::now(),
            })
            .await?;
        match accepted {
            Accepted::New(item) => {
                self.turns.queue(item);
                Ok(true)
            }
            Accepted::Duplicate => {
                self.metrics.dedup_hits.inc();
                Ok(false)
            }
        }
    }

    /// Records and queues the inactivity timer of `conversation` due at `due`.
    pub(crate) async fn fire_timer(&self, conversation: String, due: Millis) {
        let ingested = Ingested {
            key: format!("idle:{conversation}:{due}"),
            conversation,
            event: Event::Idle { due },
        };
        if let Err(e) = self.accept(ingested).await {
            tracing::error!(error = %e, "cannot record a timer");
        }
    }

    /// Whether the queue is at capacity (new deliveries are refused with 503).
    pub(crate) fn is_full(&self) -> bool {
        self.turns.len() >= self.capacity
    }

    /// Queues every item left unfinished by the last run.
    pub(crate) async fn resume(&self) -> Result<(), StoreError> {
        let pending = self.store.pending(usize::MAX >> 1).await?;
        self.turns.resume(pending, "unfinished turns");
        Ok(())
    }
}

/// Runs turns: what the dispatcher's lanes do with each inbox item.
pub(crate) struct Dispatcher {
    pub(crate) store: Arc<dyn StateStore>,
    pub(crate) bot: Arc<BotSlot>,
    /// For planning replies (`frontMsgId` prefix, WhatsApp mutation) and for
    /// reading a handed-off conversation.
    pub(crate) client: QpienClient,
    pub(crate) outbox: Arc<Lanes<Sender>>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) stop: Stop,
    pub(crate) handoff: Handoff,
}

/// Watching handed-off conversations: Qpien documents no event for an agent
/// leaving, but `joinedCPerson` is "the person currently joined". So when the
/// customer writes during a handoff, the conversation is read (at most once per
/// `check_interval` each) and given back to the bot when nobody is joined or
/// its status is one of `qpien.released_statuses`.
pub(crate) struct Handoff {
    check_interval: Duration,
    released: Vec<String>,
    last_check: Mutex<HashMap<String, Instant>>,
}

impl Handoff {
    pub(crate) fn new(check_interval: Duration, released_statuses: &[String]) -> Handoff {
        Handoff {
            check_interval,
            released: released_statuses.to_vec(),
            last_check: Mutex::new(HashMap::new()),
        }
    }

    /// Whether a check is due for `conversation` now (and marks it done).
    fn due(&self, conversation: &str) -> bool {
        let mut last = self.last_check.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if last
            .get(conversation)
            .is_some_and(|t| now.duration_since(*t) < self.check_interval)
        {
            return false;
        }
        if last.len() >= 100_000 {
            let every = self.check_interval;
            last.retain(|_, t| now.duration_since(*t) < every);
        }
        last.insert(conversation.to_owned(), now);
        true
    }

    /// Whether Qpien shows the conversation as nobody's.
    fn is_back(&self, c: &ExternalConversation) -> bool {
        !c.has_agent()
            || c.status
                .as_deref()
                .is_some_and(|s| self.released.iter().any(|r| r.eq_ignore_ascii_case(s)))
    }
}

#[async_trait]
impl Worker for Dispatcher {
    type Item = InboxItem;

    fn key(item: &InboxItem) -> (&str, u64) {
        (&item.conversation, item.seq)
    }

    async fn run(&self, conversation: &str, item: InboxItem) -> bool {
        let span = tracing::info_span!("turn", conversation, key = %item.key);
        self.turn(item).instrument(span).await;
        true
    }
}

impl Dispatcher {
    /// Retries a store call until it works (a turn cannot be skipped); gives
    /// up only at shutdown, leaving the item for the next start.
    async fn persist<T, F, Fut>(&self, what: &str, f: F) -> Option<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, StoreError>>,
    {
        until_ok(Backoff::STORE, what, |d| self.stop.pause(d), f).await
    }

    /// Before a customer's message in a handoff, reads the conversation (when
    /// a check is due) and, when Qpien shows nobody on it, gives it back to the
    /// bot first: the release's turn, and the conversation after it.
    async fn check_handoff(
        &self,
        conversation: &str,
        stored: Option<Stored>,
        event: &Event,
        now: Millis,
    ) -> (Option<Turn>, Option<Stored>) {
        let in_handoff = stored.as_ref().is_some_and(|s| s.session.handoff);
        if !in_handoff || !matches!(event, Event::Message(_)) || !self.handoff.due(conversation) {
            return (None, stored);
        }
        let back = match self.client.get_conversation(conversation).await {
            Ok(Some(c)) => self.handoff.is_back(&c),
            Ok(None) => {
                tracing::warn!(
                    "Qpien does not know a handed-off conversation; the bot takes it back"
                );
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read a handed-off conversation; it stays with the person");
                false
            }
        };
        if !back {
            return (None, stored);
        }
        let mut release = self
            .bot
            .get()
            .step(conversation, stored, &Event::Release, now)
            .await;
        // `then` puts the message turn's stored form back.
        let stored = release.stored.take();
        (Some(release), stored)
    }

    async fn turn(&self, item: InboxItem) {
        let started = Instant::now();
        let conversation = item.conversation.as_str();
        let bot = self.bot.get();
        let stored = self
            .persist("load a session", || self.store.session(conversation))
            .await;
        let Some(stored) = stored else { return };
        let stored: Option<Stored> = stored.and_then(|s| match payload::decode(&s.data) {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::warn!(error = %e, "unreadable session; the conversation starts over");
                None
            }
        });
        let now = crate::time::now();
        let (turn, released_by) = match payload::decode::<Event>(&item.payload) {
            Ok(event) => {
                let (checked, stored) = self.check_handoff(conversation, stored, &event, now).await;
                let turn = bot.step(conversation, stored, &event, now).await;
                match checked {
                    Some(release) => (release.then(turn), Some("checked")),
                    None => {
                        let by = turn.released.then_some(match event {
                            Event::Release => "manual",
                            Event::HandoffFailed => "handoff_failed",
                            Event::AgentLeft => "agent_left",
                            _ => "timeout",
                        });
                        (turn, by)
                    }
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "unreadable inbox item; skipped");
                (bot.unchanged(stored), None)
            }
        };
        let channel = turn
            .stored
            .as_ref()
            .map_or(Channel::default(), |s| s.channel);
        let plan = plan_replies(
            self.client.config(),
            conversation,
            channel,
            &item.key,
            &turn.messages,
        );
        let mut outbox: Vec<Vec<u8>> = plan
            .into_iter()
            .map(|message| {
                payload::encode(&OutboxAction::Message {
                    message: Box::new(message),
                })
            })
            .collect();
        if turn.effects.contains(&Effect::Handoff) {
            outbox.push(payload::encode(&OutboxAction::Handoff));
        }
        if let Some(by) = released_by {
            tracing::info!(by, "the conversation is back with the bot");
            Metrics::count(&self.metrics.releases, by);
            // Qpien still shows a person on it: say it is released.
            if matches!(by, "manual" | "timeout") {
                outbox.push(payload::encode(&OutboxAction::Release));
            }
        }
        let commit = TurnCommit {
            inbox_seq: item.seq,
            conversation: conversation.to_owned(),
            session: turn.stored.as_ref().map(|s| StoredSession {
                data: payload::encode(s),
                due_at: turn.due,
            }),
            outbox,
        };
        let ids = self
            .persist("commit a turn", || self.store.commit(commit.clone()))
            .await;
        let Some(ids) = ids else { return };
        let result = if turn.errors.is_empty() {
            "ok"
        } else {
            "error"
        };
        Metrics::count(&self.metrics.turns, result);
        self.metrics
            .turn_latency
            .observe(started.elapsed().as_secs_f64());
        tracing::debug!(replies = ids.len(), "turn committed");
        for (id, payload) in ids.into_iter().zip(commit.outbox) {
            self.outbox.queue(OutboxItem {
                id,
                conversation: conversation.to_owned(),
                payload,
            });
        }
    }
}
