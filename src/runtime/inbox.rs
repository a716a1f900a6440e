//! The inbox: where events come in. The webhook, the poller and the timers
//! hand theirs here; each is recorded once in the store (deduplicated by its
//! key) before it is acknowledged, then routed to the bot's workers
//! (`route.rs`), one conversation's turns in arrival order. Where the store
//! writes a message with its turn's commit, one whose conversation is idle
//! is queued first and written with its turn (`at_once.rs`).

use std::sync::Arc;

use super::at_once::Pending;
use super::dispatch::{Dispatcher, Queued};
use super::lanes::Lanes;
use super::metrics::Metrics;
use super::payload::{self, event_letter};
use super::route::Runner;
use crate::message::Event;
use crate::qpien::Ingested;
use crate::store::{Accepted, NewInbound, StateStore, StoreError};
use crate::time::Millis;

/// A message run at once, known to the inbox until it is answered.
struct InFlight<'a> {
    inbox: &'a Inbox,
    conversation: &'a str,
    pending: &'a Arc<Pending>,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.inbox.written(self.conversation, self.pending);
    }
}

/// Where events come in: webhook, poller and timers all hand theirs here.
///
/// An inbox outlives the workers that run its turns: a paused bot's inbox
/// has none ([`Inbox::detach`]) and only records what comes in; when it is
/// resumed, [`Inbox::attach`] hands the new workers everything recorded
/// meanwhile.
pub(crate) struct Inbox {
    store: Arc<dyn StateStore>,
    /// The workers, while the bot runs.
    runner: std::sync::RwLock<Option<Arc<Runner>>>,
    /// Held (shared) by each acceptance from before it stores to after it
    /// routes, and (alone) by `attach` while it reads what is pending: an
    /// event is routed by its acceptance or found by the attach, never lost
    /// between them and never both.
    gate: tokio::sync::RwLock<()>,
    metrics: Arc<Metrics>,
    capacity: usize,
    /// Most turns and replies one conversation may have waiting.
    per_conversation: usize,
    /// When the last new event was accepted (0: none since the start).
    last_event: std::sync::atomic::AtomicI64,
    /// How log lines name conversations.
    log: Arc<crate::insights::Log>,
    /// How long an acknowledgement waits for a turn run at once (zero: no
    /// message is run at once).
    at_once_wait: std::time::Duration,
    /// Messages run at once whose acceptance is not written yet, by
    /// conversation (see `at_once.rs`).
    at_once: std::sync::Mutex<std::collections::HashMap<String, Arc<Pending>>>,
}

impl Inbox {
    pub(crate) fn new(
        store: Arc<dyn StateStore>,
        metrics: Arc<Metrics>,
        log: Arc<crate::insights::Log>,
        capacity: usize,
        per_conversation: usize,
        at_once_wait: std::time::Duration,
    ) -> Inbox {
        Inbox {
            store,
            runner: Default::default(),
            gate: Default::default(),
            metrics,
            capacity,
            per_conversation,
            last_event: Default::default(),
            log,
            at_once_wait,
            at_once: Default::default(),
        }
    }

    fn runner(&self) -> Option<Arc<Runner>> {
        self.runner
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Hands turns to `runner` from now on, and first everything left
    /// unfinished (see [`Inbox::resume`]).
    pub(crate) async fn attach(&self, runner: Arc<Runner>) -> Result<(), StoreError> {
        let _alone = self.gate.write().await;
        *self.runner.write().unwrap_or_else(|e| e.into_inner()) = Some(runner.clone());
        self.resume(&runner.turns).await
    }

    /// Only records events from now on (a paused bot).
    pub(crate) async fn detach(&self) {
        let _alone = self.gate.write().await;
        *self.runner.write().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// When the last new event was accepted (0: none since the start).
    pub(crate) fn last_event(&self) -> Millis {
        self.last_event.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// How many turns and replies `conversation` has waiting here.
    fn waiting(&self, conversation: &str) -> usize {
        match self.runner() {
            Some(r) => r.turns.queued(conversation) + r.outbox.waiting(conversation),
            None => 0,
        }
    }

    /// Records an event (once per key) and queues its turn. `Ok(false)`: a
    /// duplicate, nothing to do. A customer's message to a conversation that
    /// has its cap of turns and replies waiting is kept as a dead letter
    /// instead (and counts as accepted): one customer's flood delays only
    /// itself, and grows nothing.
    pub(crate) async fn accept(&self, ingested: Ingested) -> Result<bool, StoreError> {
        let _routing = self.gate.read().await;
        if matches!(ingested.event, Event::Message(_)) {
            let waiting = self.waiting(&ingested.conversation);
            if waiting >= self.per_conversation {
                return self.overflow(ingested, waiting).await;
            }
        }
        let mut item = NewInbound {
            key: ingested.key,
            conversation: ingested.conversation,
            payload: payload::encode(&ingested.event),
            received_at: crate::time::now(),
        };
        let runner = self.runner();
        loop {
            // The conversation's message run at once before this one is
            // written first: the store's order is the order of arrival.
            let earlier = self.lock_at_once().get(&item.conversation).cloned();
            if let Some(earlier) = earlier {
                // How it went is its own delivery's answer (a failure there
                // is refused, to come again); this one is written after.
                let _ = earlier.write(&*self.store, &self.metrics).await;
                self.written(&item.conversation, &earlier);
            }
            let Some(runner) = runner.as_ref().filter(|r| self.runs_at_once(r, &item)) else {
                break;
            };
            // One message of a conversation at once at a time: reserved under
            // the lock (one that came first meanwhile is written first).
            let pending = {
                let mut at_once = self.lock_at_once();
                if at_once.contains_key(&item.conversation) {
                    None
                } else {
                    // The payload is the acceptance's, to write; the turn
                    // reads the event.
                    let pending = Pending::new(NewInbound {
                        key: item.key.clone(),
                        conversation: item.conversation.clone(),
                        payload: std::mem::take(&mut item.payload),
                        received_at: item.received_at,
                    });
                    at_once.insert(item.conversation.clone(), pending.clone());
                    Some(pending)
                }
            };
            if let Some(pending) = pending {
                return self
                    .run_at_once(runner, pending, item, ingested.event)
                    .await;
            }
        }
        let (accepted, older) = self.store.accept_seeing_older(item).await?;
        match accepted {
            Accepted::New(item) => {
                self.metrics.acceptances.count("alone");
                self.last_event
                    .store(crate::time::now(), std::sync::atomic::Ordering::Relaxed);
                // Stored: the delivery is accepted whatever comes next. If
                // the instance that holds the conversation cannot be woken,
                // its sweep finds the message (see `route.rs`). A paused
                // bot's waits for it to be resumed.
                if let Some(runner) = runner {
                    if let Err(e) = runner.route(item, Some(ingested.event), older).await {
                        tracing::warn!(error = %e, "an accepted message waits for the next sweep");
                    }
                }
                Ok(true)
            }
            Accepted::Duplicate => {
                self.metrics.dedup_hits.inc();
                Ok(false)
            }
        }
    }

    fn lock_at_once(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, Arc<Pending>>> {
        self.at_once.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `item` is run before it is acknowledged (see `at_once.rs`):
    /// the store writes a message with its turn, no other instance runs
    /// conversations here, and the conversation has nothing under way.
    fn runs_at_once(&self, runner: &Runner, item: &NewInbound) -> bool {
        !self.at_once_wait.is_zero()
            && self.store.commits_acceptance()
            && !runner.claims.shared()
            && !runner.turns.has(&item.conversation)
    }

    /// Runs `item`'s turn (its acceptance `pending`, reserved) and answers
    /// once it is written: with the turn's commit, or alone at the deadline.
    async fn run_at_once(
        &self,
        runner: &Runner,
        pending: Arc<Pending>,
        item: NewInbound,
        event: Event,
    ) -> Result<bool, StoreError> {
        let conversation = item.conversation.clone();
        let queued = item.accepted(0);
        // Forgotten however this ends (an answer, or a delivery whose
        // connection closed: its turn still writes it).
        let _in_flight = InFlight {
            inbox: self,
            conversation: &conversation,
            pending: &pending,
        };
        runner.turns.queue(Queued {
            item: queued,
            event: Some(event),
            pending: Some(pending.clone()),
            // Only a store of one process writes an acceptance with its turn.
            claim: None,
        });
        let written = match tokio::time::timeout(self.at_once_wait, pending.written()).await {
            Ok(written) => written,
            Err(_) => pending.write(&*self.store, &self.metrics).await,
        };
        match written? {
            Some(_) => {
                self.last_event
                    .store(crate::time::now(), std::sync::atomic::Ordering::Relaxed);
                Ok(true)
            }
            None => {
                self.metrics.dedup_hits.inc();
                Ok(false)
            }
        }
    }

    /// Forgets `pending` (written) as its conversation's message run at once.
    fn written(&self, conversation: &str, pending: &Arc<Pending>) {
        let mut at_once = self.lock_at_once();
        if at_once
            .get(conversation)
            .is_some_and(|p| Arc::ptr_eq(p, pending))
        {
            at_once.remove(conversation);
        }
    }

    /// Keeps a message past its conversation's cap as a dead letter.
    async fn overflow(&self, ingested: Ingested, waiting: usize) -> Result<bool, StoreError> {
        let reason = format!(
            "the conversation had {waiting} turns and replies waiting \
             (runtime.max_pending_per_conversation = {})",
            self.per_conversation
        );
        let name = self.log.name(&ingested.conversation).await;
        tracing::warn!(conversation = %name, %reason, "a message is set aside");
        let letter = event_letter(
            "overflow",
            &ingested.conversation,
            &ingested.key,
            reason,
            payload::encode(&ingested.event),
            crate::time::now(),
        );
        self.store.add_dead_letter(letter).await?;
        self.metrics.dead_letters.inc();
        self.metrics.overflow.inc();
        Ok(true)
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
        self.runner()
            .is_some_and(|r| r.turns.len() >= self.capacity)
    }

    /// Queues every item left unfinished by the last run.
    ///
    /// Items already resumed once and still unfinished are suspects (their
    /// turn may be what stopped the process): they are queued first, fewest
    /// attempts first, and run one at a time (see [`Dispatcher::turn`]), so
    /// that a poison message cannot take another conversation's turn down with
    /// it and reaches its attempt limit alone.
    async fn resume(&self, turns: &Arc<Lanes<Dispatcher>>) -> Result<(), StoreError> {
        let mut pending = self.store.pending(usize::MAX >> 1).await?;
        // Within a conversation the suspect is the oldest item: the order
        // below keeps each conversation's items in arrival order.
        pending.sort_by_key(|i| (i.attempts == 0, i.attempts, i.seq));
        turns.resume(
            pending.into_iter().map(Into::into).collect(),
            "unfinished turns",
        );
        Ok(())
    }
}
