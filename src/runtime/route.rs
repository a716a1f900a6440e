//! Where a message runs: the [`Runner`] of a bot routes each accepted
//! message to this instance's turns when it holds (or can claim) the
//! conversation, else wakes the instance that does; it keeps the claims
//! (`claims.rs`) renewed, gives up idle ones and takes over the
//! conversations of an instance that stopped.

use std::sync::Arc;
use std::time::Duration;

use super::claims::Claims;
use super::dispatch::{Dispatcher, Queued};
use super::lanes::Lanes;
use super::outbox::Outbox;
use super::Stop;
use crate::message::Event;
use crate::store::{InboxItem, StoreError};

/// What runs a conversation's work here: the claims, the turns' lanes and the
/// outbox.
pub(crate) struct Runner {
    /// How log lines name conversations.
    pub(crate) log: Arc<crate::insights::Log>,
    pub(crate) claims: Arc<Claims>,
    pub(crate) turns: Arc<Lanes<Dispatcher>>,
    pub(crate) outbox: Arc<Outbox>,
}

impl Runner {
    /// A message was just accepted: run it here if this instance holds (or can
    /// claim) its conversation, else wake the instance that does.
    /// `event` is the item's event as read on arrival, if it was; `older`,
    /// the order numbers of the conversation's older pending items, if the
    /// acceptance told them (see [`crate::store::StateStore::accept_seeing_older`]).
    pub(crate) async fn route(
        &self,
        item: InboxItem,
        event: Option<Event>,
        older: Option<Vec<u64>>,
    ) -> Result<(), StoreError> {
        if !self.claims.shared() {
            self.turns.queue(Queued {
                item,
                event,
                pending: None,
                claim: None,
            });
            return Ok(());
        }
        let conversation = item.conversation.clone();
        let acquired = self.claims.acquire(&conversation).await?;
        let claim = self.claims.fence(&conversation);
        match acquired {
            Some((false, _pinned)) => {
                // Held here. A message of it accepted by another instance
                // before this one came may still be on its way (the wake-up
                // is asynchronous): arrival order is the store's order, so
                // the older pending messages are read and queued first. Any
                // already run here is found committed when its turn comes
                // (see `Dispatcher::turn`). When the acceptance told which
                // are pending and this instance has them all, in its lane or
                // running, there is nothing to read: the one store request
                // of the acceptance was all.
                let all_here = older.is_some_and(|seqs| {
                    seqs.iter()
                        .all(|&seq| seq >= item.seq || self.turns.knows(&conversation, seq))
                });
                if !all_here {
                    for mut older in self.claims.store.pending_of(&conversation).await? {
                        if older.seq < item.seq {
                            older.resumed = true;
                            self.turns.queue(Queued {
                                claim,
                                ..older.into()
                            });
                        }
                    }
                }
                self.turns.queue(Queued {
                    item,
                    event,
                    pending: None,
                    claim,
                });
            }
            Some((true, _pinned)) => {
                // Its leftovers first, before any turn of it can run here.
                self.adopt(&conversation, Some(item.seq)).await?;
                self.turns.queue(Queued {
                    item,
                    event,
                    pending: None,
                    claim,
                });
            }
            None => self.claims.store.notify(&conversation).await?,
        }
        Ok(())
    }

    /// Reads what the store holds for a conversation just claimed (messages
    /// accepted elsewhere, replies of an instance that stopped) into the lanes.
    ///
    /// The replies are read first, while no turn of the conversation runs
    /// here: a reply this instance committed and delivered meanwhile could
    /// otherwise be read back and sent twice.
    ///
    /// Its messages other than `fresh` (the one just accepted) may have been
    /// running when their instance stopped: they count their attempts like
    /// any resumed turn, so that a message that stops every instance it
    /// reaches is set aside rather than taking them all down in turn.
    async fn adopt(&self, conversation: &str, fresh: Option<u64>) -> Result<(), StoreError> {
        self.outbox.adopt(conversation).await?;
        let pending = self.claims.store.pending_of(conversation).await?;
        let claim = self.claims.fence(conversation);
        for mut item in pending {
            // The fresh one is queued by its routing, once: queued here too,
            // it could be taken from the lane before that and run twice.
            if Some(item.seq) == fresh {
                continue;
            }
            item.resumed = true;
            // In place of a copy queued under a claim lost since (which
            // would be left when its turn came, and this one not run).
            self.turns.requeue(Queued {
                claim,
                ..item.into()
            });
        }
        Ok(())
    }

    /// Takes `conversation` if nobody holds it, and reads its work.
    async fn take(&self, conversation: &str) -> Result<(), StoreError> {
        match self.claims.acquire(conversation).await? {
            Some((true, _pinned)) => {
                let name = self.log.name(conversation).await;
                tracing::info!(conversation = %name, "conversation taken over");
                self.adopt(conversation, None).await
            }
            Some((false, _pinned)) => {
                // Held here already: read what another instance accepted. The
                // read may be older than a commit made here meanwhile: marked
                // resumed, each item is checked to be still pending before
                // its turn runs (see `Dispatcher::turn`).
                let claim = self.claims.fence(conversation);
                for mut item in self.claims.store.pending_of(conversation).await? {
                    item.resumed = true;
                    self.turns.queue(Queued {
                        claim,
                        ..item.into()
                    });
                }
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Whether this instance has work for `conversation` in memory.
    fn busy(&self, conversation: &str) -> bool {
        self.turns.has(conversation) || self.outbox.has(conversation)
    }

    /// Keeps the claims: renews the busy ones, gives up the idle ones, and
    /// takes over conversations whose instance stopped; wakes for the
    /// conversations other instances name. Until shutdown.
    pub(crate) async fn run(self: Arc<Self>, stop: Stop) {
        if !self.claims.shared() {
            return;
        }
        let mut woken = match self.claims.store.listen().await {
            Ok(rx) => rx,
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for other instances; relying on sweeps");
                None
            }
        };
        let every = (self.claims.ttl / 3).max(Duration::from_millis(100));
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.wait() => return,
                _ = tick.tick() => {
                    if let Err(e) = self.sweep().await {
                        tracing::warn!(error = %e, "keeping the claims failed; trying again");
                    }
                }
                Some(conversation) = async {
                    match woken.as_mut() {
                        Some(rx) => rx.recv().await,
                        None => std::future::pending().await,
                    }
                } => {
                    if let Err(e) = self.take(&conversation).await {
                        let name = self.log.name(&conversation).await;
                        tracing::warn!(error = %e, conversation = %name, "cannot take up a conversation");
                    }
                }
            }
        }
    }

    async fn sweep(&self) -> Result<(), StoreError> {
        // Idle (no work here, no routing under way): checked and taken out
        // under one lock, then given up in the store; a message routed
        // meanwhile claims again once that is done.
        let idle = self.claims.retire(|c| !self.busy(c));
        let mut failed = None;
        for (conversation, token) in &idle {
            if let Err(e) = self.claims.store.unclaim(conversation, *token).await {
                failed.get_or_insert(e);
            }
            self.claims.given_up(conversation);
        }
        let busy: Vec<String> = self.claims.held_conversations();
        let asked = std::time::Instant::now();
        let lost = self.claims.store.renew(&busy, self.claims.ttl).await?;
        self.claims.renewed(&busy, asked);
        for lost in lost {
            let name = self.log.name(&lost).await;
            tracing::warn!(conversation = %name, "a claim was lost to another instance");
            self.claims.lost(&lost, None);
        }
        if let Some(e) = failed {
            return Err(e);
        }
        for (conversation, _) in idle {
            // A message accepted elsewhere while the claim was held here.
            if !self
                .claims
                .store
                .pending_of(&conversation)
                .await?
                .is_empty()
            {
                self.take(&conversation).await?;
            }
        }
        for conversation in self.claims.store.orphans(256).await? {
            self.take(&conversation).await?;
        }
        Ok(())
    }
}
