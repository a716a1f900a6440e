//! Where conversations live between turns: sessions, the inbox of accepted
//! messages and the outbox of replies not yet delivered.
//!
//! The runtime's guarantees rest on three operations of [`StateStore`]:
//! - [`accept`](StateStore::accept) records an inbound item, once per id, durably
//!   before it returns (so a webhook is acknowledged only for what is stored,
//!   and a redelivered message is recognised);
//! - [`commit`](StateStore::commit) is one atomic write per turn: the inbox item
//!   done, the session saved, the replies queued;
//! - the outbox is read back in order and marked delivered item by item.
//!
//! After a crash, [`pending`](StateStore::pending) and
//! [`outbox`](StateStore::outbox) give back exactly the unfinished work.
//! Payloads are opaque bytes (the runtime's JSON), so a store knows nothing of
//! flows or of Qpien. [`MemoryStore`] is the reference implementation;
//! [`SqliteStore`] (the default) adds durability and group commit, for one
//! process; `PostgresStore` (feature `postgres`) is for several instances
//! sharing one database.

mod cache;
mod memory;
#[cfg(feature = "postgres")]
mod postgres;
mod registry;
mod sqlite;

pub use memory::MemoryStore;
#[cfg(feature = "postgres")]
pub use postgres::{PostgresOptions, PostgresStore};
pub use registry::{BotRecord, BotRegistry, BotSource, BotState, MemoryRegistry, NewBot};
pub use sqlite::{read_sessions as read_sqlite_sessions, Durability, SqliteOptions, SqliteStore};

/// What an import of one bot's earlier store (a file or a schema of its own,
/// before one store held every bot) copied.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Imported {
    /// Messages and starts not yet run (and the keys of those that ran).
    pub inbox: usize,
    /// Conversations.
    pub sessions: usize,
    /// Replies not yet sent.
    pub outbox: usize,
    /// Dead letters.
    pub dead_letters: usize,
}

use std::time::Duration;

use async_trait::async_trait;

pub use crate::time::Millis;

/// An inbound item to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewInbound {
    /// The deduplication key (Qpien's message id, or a timer's key).
    pub key: String,
    /// The conversation.
    pub conversation: String,
    /// What happened, as the runtime encodes it.
    pub payload: Vec<u8>,
    /// When it was accepted.
    pub received_at: Millis,
}

impl NewInbound {
    /// The item as just accepted, numbered `seq`: never run, not resumed.
    pub(crate) fn accepted(self, seq: u64) -> InboxItem {
        InboxItem {
            seq,
            key: self.key,
            conversation: self.conversation,
            payload: self.payload,
            received_at: self.received_at,
            attempts: 0,
            resumed: false,
        }
    }
}

/// An accepted inbound item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxItem {
    /// Its position in arrival order.
    pub seq: u64,
    /// The deduplication key.
    pub key: String,
    /// The conversation.
    pub conversation: String,
    /// The payload.
    pub payload: Vec<u8>,
    /// When it was accepted.
    pub received_at: Millis,
    /// Runs begun after a restart ([`StateStore::attempt`]): 0 for an item
    /// never resumed.
    pub attempts: u32,
    /// Whether it was left unfinished by an earlier run ([`StateStore::pending`])
    /// rather than just accepted.
    pub resumed: bool,
}

/// What [`StateStore::accept`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Accepted {
    /// Recorded; to be processed.
    New(InboxItem),
    /// The key was seen before: nothing recorded.
    Duplicate,
}

/// A conversation's saved state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSession {
    /// The runtime's encoding of the session.
    pub data: Vec<u8>,
    /// When an inactivity timer fires, if one is set.
    pub due_at: Option<Millis>,
}

/// One reply (or platform action) to deliver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxItem {
    /// Its id, increasing in commit order.
    pub id: u64,
    /// The conversation.
    pub conversation: String,
    /// The runtime's encoding of what to send.
    pub payload: Vec<u8>,
}

/// Everything one turn changes, written at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TurnCommit {
    /// The inbox item this turn processed.
    pub inbox_seq: u64,
    /// The conversation.
    pub conversation: String,
    /// The new session; `None` deletes it (ended, expired, released).
    pub session: Option<StoredSession>,
    /// Payloads to queue in the outbox, in order.
    pub outbox: Vec<Vec<u8>>,
    /// In a shared store: the claim's fencing token the turn ran under. The
    /// commit is refused ([`StoreError::is_fenced`]) if the conversation was
    /// claimed anew since (another instance took it over).
    pub fence: Option<u64>,
    /// What the turn did, for the conversation event log (see the
    /// `insights` module): written with the rest, or not at all.
    pub events: Vec<LogEvent>,
    /// When the turn ran (the session's last change, for `[retention]`).
    pub at: Millis,
}

/// An hourly roll-up of the event log: how many runs that started in an
/// hour did one thing, counted when their rows were folded away (see
/// the `insights` module). Nothing personal: no conversation, no time finer
/// than the hour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rollup {
    /// The hour the runs started (its first millisecond).
    pub hour: Millis,
    /// The flow's version.
    pub flow_version: String,
    /// The channel.
    pub channel: String,
    /// Test traffic.
    pub test: bool,
    /// `started`, `reached` (a state), `abandoned` (in a state), `outcome`
    /// (its name) or `answer` (a variable and a value).
    pub kind: String,
    /// The state, outcome or variable.
    pub key: String,
    /// An answer's value.
    pub value: String,
    /// How many runs.
    pub count: u64,
}

/// What a store holds of one conversation (an erasure's count, or an
/// export's content).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Held {
    /// Its session (0 or 1).
    pub sessions: u64,
    /// Messages accepted and not yet run.
    pub inbox: u64,
    /// Replies not yet sent.
    pub outbox: u64,
    /// Dead letters that name it.
    pub dead_letters: u64,
    /// Rows of the event log.
    pub events: u64,
}

/// Everything a store holds of one conversation, for an access request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Export {
    /// Its session's data (the runtime's encoding).
    pub session: Option<Vec<u8>>,
    /// Messages accepted and not yet run (their payloads).
    pub inbox: Vec<Vec<u8>>,
    /// Replies not yet sent (their payloads).
    pub outbox: Vec<Vec<u8>>,
    /// Dead letters that name it.
    pub dead_letters: Vec<DeadLetter>,
    /// Its rows of the event log.
    pub events: Vec<LogEvent>,
}

/// What the retention sweep removes (`[retention]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Expiring {
    /// Conversations untouched since (with no timer due after).
    Sessions,
    /// Deliveries set aside.
    DeadLetters,
    /// Rows of the conversation event log (folded into hourly roll-ups
    /// first, by the sweep).
    Events,
    /// Hourly roll-ups.
    Rollups,
}

impl Expiring {
    /// Every kind, in the order the sweep takes them.
    pub const ALL: [Expiring; 4] = [
        Expiring::Sessions,
        Expiring::DeadLetters,
        Expiring::Events,
        Expiring::Rollups,
    ];

    /// Its name (`[retention]`'s key, the metric's label).
    pub fn as_str(self) -> &'static str {
        match self {
            Expiring::Sessions => "sessions",
            Expiring::DeadLetters => "dead_letters",
            Expiring::Events => "events",
            Expiring::Rollups => "rollups",
        }
    }
}

/// One row of the conversation event log (see the `insights` module): what a
/// conversation did, never what anybody wrote; the conversation only as a
/// keyed hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEvent {
    /// When.
    pub at: Millis,
    /// The conversation, as a keyed hash (hex).
    pub conversation: String,
    /// Which of its runs (from a start to an outcome): when it started.
    pub run: Millis,
    /// The flow's version (a fingerprint of its files, hex).
    pub flow_version: String,
    /// The state it happened in.
    pub state: String,
    /// The channel (`whatsapp`, `livechat`...).
    pub channel: String,
    /// What happened (see the log's kinds: `started`, `entered`, `outcome`...).
    pub kind: String,
    /// Which rule, intent, variable or outcome.
    pub detail: String,
    /// An answer's value (`answered`), never a `pii: true` variable's.
    pub value: Option<String>,
    /// Test traffic (the simulator, the playground, `start --test`).
    pub test: bool,
}

/// A webhook delivery flowbot could not use, kept for a person to look at
/// (`flowbot dead-letters`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Its number.
    pub id: u64,
    /// When it came.
    pub received_at: Millis,
    /// Why it could not be used.
    pub reason: String,
    /// Its headers, as JSON (signature removed).
    pub headers: String,
    /// Its body, as received.
    pub body: Vec<u8>,
}

/// A dead letter as listed: what it is, not what it holds (its body is
/// read by id only, so a listing's size does not grow with the bodies).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterSummary {
    /// Its number.
    pub id: u64,
    /// When it came.
    pub received_at: Millis,
    /// Why it could not be used.
    pub reason: String,
    /// The size of its body.
    pub bytes: u64,
}

impl DeadLetterSummary {
    /// The summary of `letter`.
    pub fn of(letter: &DeadLetter) -> DeadLetterSummary {
        DeadLetterSummary {
            id: letter.id,
            received_at: letter.received_at,
            reason: letter.reason.clone(),
            bytes: letter.body.len() as u64,
        }
    }
}

/// How many dead letters are kept: the oldest go beyond it.
pub const MAX_DEAD_LETTERS: usize = 10_000;

/// A store that failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("store: {0}")]
pub struct StoreError(pub String);

/// How a refused commit's message starts (see [`StoreError::is_fenced`]).
const FENCED: &str = "fenced: ";

impl StoreError {
    /// A commit refused because the conversation's claim changed hands.
    pub fn fenced(conversation: &str) -> StoreError {
        StoreError(format!(
            "{FENCED}conversation `{conversation}` was taken over by another instance"
        ))
    }

    /// A commit refused because its message was committed already (by the
    /// instance that held the conversation before): not worth retrying.
    pub fn already_committed(conversation: &str, seq: u64) -> StoreError {
        StoreError(format!(
            "{FENCED}message {seq} of conversation `{conversation}` was committed already"
        ))
    }

    /// Whether this is a commit refused by its fencing token (or because its
    /// message was committed already): not worth retrying, the turn belongs
    /// to the instance that holds the claim now.
    pub fn is_fenced(&self) -> bool {
        self.0.starts_with(FENCED)
    }
}

/// Whether `s` can name a PostgreSQL schema without quoting (what
/// `store.schema`, with a bot's namespace, must be).
pub(crate) fn is_schema_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// A place for sessions, inbox and outbox. See the module docs for the contract.
#[async_trait]
pub trait StateStore: Send + Sync + 'static {
    /// Records `item` unless its key was recorded before; durable on return.
    async fn accept(&self, item: NewInbound) -> Result<Accepted, StoreError>;

    /// Whether [`accept_and_commit`](Self::accept_and_commit) writes a message
    /// and its turn in one write. Where it does, a message whose conversation
    /// has nothing else under way here is run before it is acknowledged, and
    /// acknowledged once its turn is committed: one write instead of two.
    fn commits_acceptance(&self) -> bool {
        false
    }

    /// Records `item` together with the commit of its turn (its
    /// `inbox_seq` is the item's, whatever `commit` says), durable on return:
    /// the item's order number and the replies' ids. `Ok(None)`: the key was
    /// recorded before, and nothing is written. The default records the item,
    /// then commits.
    async fn accept_and_commit(
        &self,
        item: NewInbound,
        mut commit: TurnCommit,
    ) -> Result<Option<(u64, Vec<u64>)>, StoreError> {
        match self.accept(item).await? {
            Accepted::Duplicate => Ok(None),
            Accepted::New(new) => {
                commit.inbox_seq = new.seq;
                Ok(Some((new.seq, self.commit(commit).await?)))
            }
        }
    }
    /// Inbox items not yet committed, in arrival order.
    async fn pending(&self, limit: usize) -> Result<Vec<InboxItem>, StoreError>;
    /// A conversation's session.
    async fn session(&self, conversation: &str) -> Result<Option<StoredSession>, StoreError>;
    /// A conversation's session, read by a turn that runs under the claim
    /// `fence` (a shared store; `None` otherwise). A shared store may answer
    /// from what this process last committed under the same claim: another
    /// instance writes the conversation only under a claim of its own, and
    /// a commit under a claim that changed hands is refused.
    async fn session_for_turn(
        &self,
        conversation: &str,
        fence: Option<u64>,
    ) -> Result<Option<StoredSession>, StoreError> {
        let _ = fence;
        self.session(conversation).await
    }
    /// Sessions in conversation order, after the conversation `after` (`""`:
    /// from the first), at most `limit`: a page of a scan over all of them
    /// (what a change of the flow does to live conversations).
    async fn sessions(
        &self,
        after: &str,
        limit: usize,
    ) -> Result<Vec<(String, StoredSession)>, StoreError>;
    /// Writes a turn: inbox item done, session saved, outbox appended. Atomic.
    /// Returns the new outbox items' ids, in order.
    async fn commit(&self, commit: TurnCommit) -> Result<Vec<u64>, StoreError>;
    /// Removes at most `limit` rows of `kind` from before `before` (a session
    /// last changed then, with no timer due after it); with `dry_run`,
    /// counts them (at most `limit`) and removes nothing. How many.
    async fn expire(
        &self,
        kind: Expiring,
        before: Millis,
        limit: usize,
        dry_run: bool,
    ) -> Result<u64, StoreError>;
    /// Removes everything of `conversation` in one transaction (with
    /// `dry_run`, counts it): its session (timers and schedules with it), the
    /// messages not yet run, the replies not yet sent, the dead letters that
    /// name it, its event-log rows (keyed by `hash`). The keys of messages
    /// already run stay, under `hash` instead of its id, so that a late
    /// redelivery is still recognised and dropped.
    async fn erase(
        &self,
        conversation: &str,
        hash: &str,
        dry_run: bool,
    ) -> Result<Held, StoreError>;
    /// Everything held of `conversation` (its event-log rows keyed by `hash`).
    async fn export(&self, conversation: &str, hash: &str) -> Result<Export, StoreError>;
    /// When the oldest run still in the event log started.
    async fn oldest_run(&self) -> Result<Option<Millis>, StoreError>;
    /// In one transaction: adds `rollups` to the hourly roll-ups (counts of
    /// the same hour, version, channel, test, kind, key and value add up)
    /// and removes the event-log rows of the runs that started in
    /// `[from, to)`. How many rows went.
    async fn fold(&self, from: Millis, to: Millis, rollups: Vec<Rollup>)
        -> Result<u64, StoreError>;
    /// The roll-ups of the hours in `[from, to)`.
    async fn rollups(&self, from: Millis, to: Millis) -> Result<Vec<Rollup>, StoreError>;
    /// Event-log rows of the runs that started in `[from, to)`, with an id
    /// above `after` (a page: ids increase in commit order), at most `limit`.
    async fn events(
        &self,
        from: Millis,
        to: Millis,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, LogEvent)>, StoreError>;
    /// Undelivered outbox items with an id above `after`, oldest first, at
    /// most `limit` (the runtime holds only a bounded part of the outbox in
    /// memory and reads the rest as it drains).
    async fn outbox(&self, after: u64, limit: usize) -> Result<Vec<OutboxItem>, StoreError>;
    /// A conversation's undelivered outbox items with an id above `after`,
    /// oldest first, at most `limit` (the runtime reads each conversation's
    /// replies back on its own, so that one conversation's backlog delays no
    /// other).
    async fn outbox_of(
        &self,
        conversation: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<OutboxItem>, StoreError>;
    /// The conversations with undelivered outbox items (in a shared store,
    /// the claimed ones), in conversation order after `after` (`""`: from the
    /// first), at most `limit`.
    async fn outbox_conversations(
        &self,
        after: &str,
        limit: usize,
    ) -> Result<Vec<String>, StoreError>;
    /// Marks an outbox item delivered (or given up on).
    async fn delivered(&self, id: u64) -> Result<(), StoreError>;
    /// Conversations whose inactivity timer is due at `now`, with the due time.
    async fn due_timers(
        &self,
        now: Millis,
        limit: usize,
    ) -> Result<Vec<(String, Millis)>, StoreError>;
    /// The due timers of every bot of the store (the bot's key, the
    /// conversation, the due time), oldest first: one query for all bots
    /// where the store holds several (`None`: it holds one, ask
    /// [`StateStore::due_timers`]).
    async fn due_timers_of_every_bot(
        &self,
        _now: Millis,
        _limit: usize,
    ) -> Result<Option<Vec<(String, String, Millis)>>, StoreError> {
        Ok(None)
    }
    /// A saved cursor (polling position), by name.
    async fn cursor(&self, name: &str) -> Result<Option<String>, StoreError>;
    /// Saves a cursor.
    async fn set_cursor(&self, name: &str, value: &str) -> Result<(), StoreError>;
    /// Counts one more run of an inbox item, durably, before it runs; returns
    /// the count. A message whose turn aborts the process is resumed at every
    /// start: the count is how such a poison message is found and set aside.
    /// `conversation` is the item's (a store may use it to find the row).
    async fn attempt(&self, seq: u64, conversation: &str) -> Result<u32, StoreError>;
    /// Whether the store answers and can write (a full disk shows here).
    async fn ping(&self) -> Result<(), StoreError>;
    /// Keeps a delivery that could not be used (its `id` is ignored); the
    /// oldest beyond [`MAX_DEAD_LETTERS`] are dropped. Returns its number.
    async fn add_dead_letter(&self, letter: DeadLetter) -> Result<u64, StoreError>;
    /// Dead letters numbered below `before` (`None`: from the newest),
    /// newest first, at most `limit`: a page of summaries.
    async fn dead_letters(
        &self,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<DeadLetterSummary>, StoreError>;
    /// One dead letter.
    async fn dead_letter(&self, id: u64) -> Result<Option<DeadLetter>, StoreError>;
    /// Removes a dead letter; `false` if there was none.
    async fn remove_dead_letter(&self, id: u64) -> Result<bool, StoreError>;

    // Several instances on one store. A store used by one process keeps the
    // defaults: everything is this process's, nothing is claimed.

    /// Whether several processes share this store: then a conversation's
    /// work runs only where it is claimed, and [`pending`](Self::pending)
    /// and [`outbox`](Self::outbox) give only the claimed conversations'.
    fn shared(&self) -> bool {
        false
    }
    /// Claims `conversation` for this process for `ttl`: granted when it is
    /// free, expired or already this process's. Returns the fencing token
    /// (it changes whenever the claim changes hands), or `None` when another
    /// process holds it.
    async fn claim(&self, _conversation: &str, _ttl: Duration) -> Result<Option<u64>, StoreError> {
        Ok(Some(0))
    }
    /// Extends this process's claims on `conversations`; returns those it no
    /// longer holds.
    async fn renew(
        &self,
        _conversations: &[String],
        _ttl: Duration,
    ) -> Result<Vec<String>, StoreError> {
        Ok(Vec::new())
    }
    /// Gives up a claim, if it is still the one of `token` (a claim made
    /// again since, with a new token, stays).
    async fn unclaim(&self, _conversation: &str, _token: u64) -> Result<(), StoreError> {
        Ok(())
    }
    /// Conversations with unfinished work (inbox or outbox) that no live
    /// claim covers: their process stopped. At most `limit`.
    async fn orphans(&self, _limit: usize) -> Result<Vec<String>, StoreError> {
        Ok(Vec::new())
    }
    /// A conversation's inbox items not yet committed, in arrival order.
    async fn pending_of(&self, _conversation: &str) -> Result<Vec<InboxItem>, StoreError> {
        Ok(Vec::new())
    }
    /// [`accept`](Self::accept), and for a new item the order numbers of
    /// its conversation's older items not yet committed, when the store can
    /// tell in the same request (`None`: it cannot; ask
    /// [`pending_of`](Self::pending_of)). A shared store's instance that
    /// already runs the conversation reads those items only when one of them
    /// is not among its own.
    async fn accept_seeing_older(
        &self,
        item: NewInbound,
    ) -> Result<(Accepted, Option<Vec<u64>>), StoreError> {
        Ok((self.accept(item).await?, None))
    }

    /// Wakes the process that holds `conversation`: it has new work.
    async fn notify(&self, _conversation: &str) -> Result<(), StoreError> {
        Ok(())
    }
    /// Whether this store keeps Qpien's request budget
    /// ([`take_budget`](Self::take_budget)), so that a restarted process knows
    /// what the one before spent: `None`, it keeps none (memory);
    /// `Some(true)`, it kept it before this process opened it;
    /// `Some(false)`, from now on only (a database just made, or older than
    /// the budget).
    fn keeps_budget(&self) -> Option<bool> {
        self.shared().then_some(true)
    }
    /// Takes one call from the request budget `key` shared by every process
    /// (`requests` per `per`, a sliding window counting each call from when
    /// it ended): granted (the call counts as under way until
    /// [`StateStore::budget_done`], or for `hold` if its process never says),
    /// else how long to wait. `None`: this store shares no budget.
    async fn take_budget(
        &self,
        _key: &str,
        _requests: u32,
        _per: Duration,
        _hold: Duration,
    ) -> Result<Option<crate::qpien::limit::Grant>, StoreError> {
        Ok(None)
    }
    /// The call granted as `id` ended now.
    async fn budget_done(&self, _id: i64) -> Result<(), StoreError> {
        Ok(())
    }
    /// Whether this process leads `work` (work only one process sharing the
    /// store may do at a time, such as polling Qpien): takes the lead when
    /// nobody holds it, and says whether it still holds it. A store of one
    /// process always leads.
    async fn lead(&self, _work: &str) -> Result<bool, StoreError> {
        Ok(true)
    }
    /// The conversations other processes wake this one for (`None`: a
    /// store of one process, nobody does).
    async fn listen(
        &self,
    ) -> Result<Option<tokio::sync::mpsc::UnboundedReceiver<String>>, StoreError> {
        Ok(None)
    }
}
