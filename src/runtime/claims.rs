//! Several instances on one store: which instance runs which conversation.
//!
//! With a shared store (PostgreSQL), a conversation's turns and replies run
//! only in the instance that holds its claim, one at a time and in arrival
//! order, whichever instance received its messages. A claim is a row with an
//! owner, an expiry and a fencing token that changes whenever the claim
//! changes hands:
//! - the instance that accepts a message claims its conversation if nobody
//!   holds it and runs it; else it wakes the holder (`NOTIFY`), which reads
//!   the conversation's pending messages;
//! - the holder renews its claims while it has work for them and gives them up
//!   when idle (then looks once more, so that a message accepted meanwhile is
//!   not left behind);
//! - an instance that stops (even `kill -9`) stops renewing: after the claim's
//!   time to live the others find its conversations (work in the store, no
//!   live claim) and take them over, so a take-over takes at most the time to
//!   live plus one sweep (`runtime.claim_ttl`, 10 s by default);
//! - a commit carries the token its turn started under, and the store refuses
//!   it if the claim changed hands since: an instance that was paused past its
//!   claim can never write over the instance that took over;
//! - the turns still queued here for a conversation taken over are left to
//!   its new holder (woken to read them from the inbox), never run without
//!   a token, and so are its replies not yet sent: the new holder adopted
//!   them from the store, in order. A claim not renewed for two thirds of its
//!   time to live (a paused process, the database away) holds its replies
//!   until a renewal says whether it is still this instance's;
//! - because the token is what guards the writes, the claims' own rows are
//!   written without waiting for the database's log flush (a claim lost to a
//!   crash of the database is a commit refused, a giving up lost is a claim
//!   that expires), and a turn under an unchanged claim may read the session
//!   its conversation's last turn committed from memory.
//!
//! With a store of one process every claim is granted at once and nothing
//! here does any work.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::store::{StateStore, StoreError};

/// This instance's claims.
pub(crate) struct Claims {
    pub(super) store: Arc<dyn StateStore>,
    pub(super) ttl: Duration,
    /// The conversations held: their fencing token, and how many routings
    /// are under way for them (see [`Pinned`]).
    held: Mutex<HashMap<String, Held>>,
    /// Claims being given up, each closed once its row is gone.
    pub(super) retiring: Mutex<HashMap<String, Arc<tokio::sync::Semaphore>>>,
}

#[derive(Debug, Clone, Copy)]
struct Held {
    token: u64,
    pins: usize,
    /// When the claim was last known good: the moment its taking or its
    /// last renewal was asked for (the store's expiry counts from later).
    renewed: Instant,
    /// Taken over by another instance: kept (without a token) until its
    /// conversation is idle here, so that its replies still held here are
    /// left to the new holder rather than sent.
    lost: bool,
}

/// Whether this instance may still deliver a conversation's replies (see
/// [`Claims::lease`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lease {
    /// Held, renewed lately (or a store of one process).
    Held,
    /// Held, but not renewed for two thirds of the claim's time to live (the
    /// database slow or away, this process paused): wait for the renewal.
    Stale,
    /// Taken over by another instance.
    Lost,
}

/// A held conversation that is being routed: from the moment its claim is
/// found (or made) to when its work is in the lanes. The sweep gives up only
/// claims with no pin and no work in the lanes, so a message routed to a
/// held conversation never has its claim given up under it.
pub(crate) struct Pinned<'a> {
    claims: &'a Claims,
    conversation: &'a str,
}

impl Drop for Pinned<'_> {
    fn drop(&mut self) {
        if let Some(h) = self.claims.lock().get_mut(self.conversation) {
            h.pins = h.pins.saturating_sub(1);
        }
    }
}

impl Claims {
    /// The conversations claimed here now.
    pub(super) fn held_conversations(&self) -> Vec<String> {
        self.lock()
            .iter()
            .filter(|(_, h)| !h.lost)
            .map(|(c, _)| c.clone())
            .collect()
    }
    pub(crate) fn new(store: Arc<dyn StateStore>, ttl: Duration) -> Arc<Claims> {
        Arc::new(Claims {
            store,
            ttl,
            held: Mutex::new(HashMap::new()),
            retiring: Mutex::new(HashMap::new()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Held>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the store is shared (else every claim is implicit).
    pub(crate) fn shared(&self) -> bool {
        self.store.shared()
    }

    /// The fencing token of a held conversation (`None` with a store of one
    /// process).
    pub(crate) fn fence(&self, conversation: &str) -> Option<u64> {
        if !self.shared() {
            return None;
        }
        self.lock()
            .get(conversation)
            .filter(|h| !h.lost)
            .map(|h| h.token)
    }

    /// Whether this instance may deliver `conversation`'s replies now. A
    /// reply committed here is sent here only while the claim holds: once
    /// another instance took the conversation over, that instance sends what
    /// is left in the store (it adopted it, in order), and a reply sent here
    /// too would reach the customer twice or out of order. A claim not
    /// renewed for two thirds of its time to live may have expired in the
    /// store unseen (this process paused, the database away): its replies
    /// wait until a renewal says which it is.
    pub(crate) fn lease(&self, conversation: &str) -> Lease {
        if !self.shared() {
            return Lease::Held;
        }
        match self.lock().get(conversation) {
            Some(h) if h.lost => Lease::Lost,
            Some(h) if h.renewed.elapsed() > self.ttl * 2 / 3 => Lease::Stale,
            // Held, or replies of a claim this process did not take (read
            // from the store at start): the store decides, as before.
            _ => Lease::Held,
        }
    }

    /// The claims of `conversations` were renewed, asked for at `asked`.
    pub(super) fn renewed(&self, conversations: &[String], asked: Instant) {
        let mut held = self.lock();
        for c in conversations {
            if let Some(h) = held.get_mut(c).filter(|h| !h.lost) {
                h.renewed = h.renewed.max(asked);
            }
        }
    }

    /// Forgets a conversation taken over by another instance: its claim of
    /// `token` if given (a commit fenced under a claim taken back here
    /// since says nothing of the new one), else whichever is held.
    pub(crate) fn lost(&self, conversation: &str, token: Option<u64>) {
        if let Some(h) = self.lock().get_mut(conversation) {
            if token.is_none_or(|t| t == h.token) {
                h.lost = true;
            }
        }
    }

    /// Claims `conversation` unless held already, and pins it. `Some(true)`:
    /// newly claimed (its work left in the store must be read);
    /// `Some(false)`: held already; `None`: another instance holds it.
    pub(super) async fn acquire<'a>(
        &'a self,
        conversation: &'a str,
    ) -> Result<Option<(bool, Pinned<'a>)>, StoreError> {
        let pinned = || Pinned {
            claims: self,
            conversation,
        };
        if let Some(h) = self.lock().get_mut(conversation).filter(|h| !h.lost) {
            h.pins += 1;
            return Ok(Some((false, pinned())));
        }
        // A claim being given up is claimed again only once it is gone from
        // the store (else the giving up would delete the new claim's row).
        let giving_up = self
            .retiring
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(conversation)
            .cloned();
        if let Some(done) = giving_up {
            let _ = done.acquire().await;
        }
        let asked = Instant::now();
        match self.store.claim(conversation, self.ttl).await? {
            Some(token) => {
                let mut held = self.lock();
                let h = held.entry(conversation.to_owned()).or_insert(Held {
                    token,
                    pins: 0,
                    renewed: asked,
                    lost: false,
                });
                let retaken = h.lost;
                if retaken {
                    // Taken back after it was lost: a claim of its own,
                    // whose work another instance may have left.
                    *h = Held {
                        token,
                        pins: h.pins,
                        renewed: asked,
                        lost: false,
                    };
                }
                let fresh = retaken || (h.pins == 0 && h.token == token);
                h.renewed = h.renewed.max(asked);
                h.pins += 1;
                drop(held);
                Ok(Some((fresh, pinned())))
            }
            None => Ok(None),
        }
    }

    /// Takes out of the held claims those `idle` says are idle and no
    /// routing has pinned: what to give up, with their tokens. Each stays
    /// "being given up" until [`Claims::given_up`].
    pub(super) fn retire(&self, idle: impl Fn(&str) -> bool) -> Vec<(String, u64)> {
        let mut held = self.lock();
        // A claim lost is forgotten once idle here: it is not ours to give up.
        held.retain(|c, h| !(h.lost && h.pins == 0 && idle(c)));
        let gone: Vec<(String, u64)> = held
            .iter()
            .filter(|(c, h)| !h.lost && h.pins == 0 && idle(c))
            .map(|(c, h)| (c.clone(), h.token))
            .collect();
        let mut retiring = self.retiring.lock().unwrap_or_else(|e| e.into_inner());
        for (c, _) in &gone {
            held.remove(c);
            retiring.insert(c.clone(), Arc::new(tokio::sync::Semaphore::new(0)));
        }
        gone
    }

    /// A claim retired is gone from the store: a routing waiting for it
    /// claims again.
    pub(super) fn given_up(&self, conversation: &str) {
        if let Some(done) = self
            .retiring
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(conversation)
        {
            done.close();
        }
    }
}

/// Qpien's request budget, kept in the store: shared by every instance that
/// uses the same API key (it is the key's, not a process's), and across
/// restarts.
use crate::qpien::limit::{Grant, SharedBudget};

/// Qpien's budget, drawn by every instance (and every run) from the store.
pub(crate) struct StoreBudget {
    pub(crate) store: Arc<dyn StateStore>,
    /// The API key's budget name (a digest of the client id: no secret is
    /// written to the database).
    pub(crate) key: String,
    /// How long a call may be under way (the client's request timeout, and
    /// some): a call whose instance died counts that long.
    pub(crate) hold: Duration,
    /// Whether the store kept the budget before this process started.
    pub(crate) knew: bool,
}

impl std::fmt::Debug for StoreBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreBudget")
            .field("key", &self.key)
            .finish()
    }
}

impl StoreBudget {
    pub(crate) fn key_for(client_id: &str) -> String {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(client_id.as_bytes());
        format!("qpien:{}", &hex::encode(digest)[..16])
    }
}

#[async_trait::async_trait]
impl SharedBudget for StoreBudget {
    async fn take(&self, requests: u32, per: Duration) -> Result<Grant, String> {
        match self
            .store
            .take_budget(&self.key, requests, per, self.hold)
            .await
        {
            Ok(grant) => Ok(grant.unwrap_or(Grant::Granted(0))),
            Err(e) => Err(e.to_string()),
        }
    }

    fn knows_window(&self) -> bool {
        self.knew
    }

    async fn done(&self, id: i64) {
        if let Err(e) = self.store.budget_done(id).await {
            // The call then counts until its hold runs out: safe, only slower.
            tracing::warn!(error = %e, "cannot record the end of a Qpien call");
        }
    }
}
