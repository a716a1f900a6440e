//! A message run at once: one write for its acceptance and its turn.
//!
//! A message is acknowledged once it is durable. Usually that is a write of
//! its own (the acceptance), and its turn's commit is a second. Where the
//! store can write both together ([`StateStore::commits_acceptance`]: SQLite)
//! and the message's conversation has nothing else under way here, the
//! inbox does not write the acceptance: it queues the turn with the
//! acceptance [`Pending`] and waits for the turn's commit, which writes the
//! message's row (done) with the session, the event log and the replies.
//! The webhook's answer then waits for the turn, so a turn that takes longer
//! than `runtime.at_once_wait` (20 ms by default; an action calling out, a
//! store that is slow) has its acceptance written alone, as before, and the
//! turn commits after it.
//!
//! Whoever needs the acceptance first writes it ([`Pending::write`]): the
//! turn's commit, the deadline, a turn that cannot commit (it counts an
//! attempt of the message), or the next message of the same conversation,
//! which is written after it so that the store's order stays the order of
//! arrival. Until then the message is nowhere but in memory, and nothing was
//! acknowledged: a crash loses it only as a delivery Qpien sends again.
//!
//! A duplicate (its key recorded before, as a redelivery whose first
//! delivery is under way) writes nothing: its turn is dropped, session
//! included, and the delivery is answered as a duplicate.
//!
//! PostgreSQL does not take this path: measured there (BENCHMARKS.md), one
//! flush a turn instead of two was slower, since the acknowledgement then
//! waits for the turn's round trip and a conversation's next message no
//! longer overlaps its last turn's commit. In SQLite the turn and its commit
//! are in the process, and the write saved is what counts.

use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use super::metrics::Metrics;
use crate::store::{Accepted, NewInbound, StateStore, StoreError};

/// What became of an acceptance: the message's order number, or `None` for
/// a duplicate.
pub(crate) type Written = Result<Option<u64>, StoreError>;

/// An acceptance not written yet.
pub(crate) struct Pending {
    /// The message, until someone takes it to write it.
    item: Mutex<Option<NewInbound>>,
    /// What the write gave, once done.
    done: watch::Sender<Option<Written>>,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("written", &self.done.borrow().is_some())
            .finish()
    }
}

impl Pending {
    pub(crate) fn new(item: NewInbound) -> Arc<Pending> {
        Arc::new(Pending {
            item: Mutex::new(Some(item)),
            done: watch::channel(None).0,
        })
    }

    /// Takes the message to write it: `None` if another took it. Whoever
    /// takes it must say what the write gave ([`Taken::written`]); dropped
    /// without, it says the write failed.
    pub(crate) fn take(self: &Arc<Self>) -> Option<Taken> {
        let item = self.item.lock().unwrap_or_else(|e| e.into_inner()).take()?;
        Some(Taken {
            pending: self.clone(),
            item,
            said: false,
        })
    }

    /// Waits for what the write gave.
    pub(crate) async fn written(&self) -> Written {
        let mut rx = self.done.subscribe();
        let written = match rx.wait_for(Option::is_some).await {
            Ok(done) => done.clone().unwrap_or_else(|| Err(stopped())),
            Err(_) => Err(stopped()),
        };
        written
    }

    /// Writes the acceptance alone, unless another took it (then waits for
    /// what its write gave).
    pub(crate) async fn write(
        self: &Arc<Self>,
        store: &dyn StateStore,
        metrics: &Metrics,
    ) -> Written {
        match self.take() {
            Some(mut taken) => {
                let written = store.accept(taken.item()).await.map(|a| match a {
                    Accepted::New(new) => {
                        metrics.acceptances.count("alone");
                        Some(new.seq)
                    }
                    Accepted::Duplicate => None,
                });
                taken.written(written.clone());
                written
            }
            None => self.written().await,
        }
    }
}

fn stopped() -> StoreError {
    StoreError("the turn stopped before its message was written".into())
}

/// A pending acceptance taken to be written.
pub(crate) struct Taken {
    pending: Arc<Pending>,
    /// The message to write.
    item: NewInbound,
    said: bool,
}

impl Taken {
    /// The message, moved out to be written (once: a second call gives an
    /// empty one).
    pub(crate) fn item(&mut self) -> NewInbound {
        let received_at = self.item.received_at;
        std::mem::replace(
            &mut self.item,
            NewInbound {
                key: String::new(),
                conversation: String::new(),
                payload: Vec::new(),
                received_at,
            },
        )
    }

    /// Says what the write gave, to everyone waiting.
    pub(crate) fn written(&mut self, written: Written) {
        self.said = true;
        self.pending.done.send_replace(Some(written));
    }
}

impl Drop for Taken {
    fn drop(&mut self) {
        if !self.said {
            self.pending.done.send_replace(Some(Err(stopped())));
        }
    }
}
