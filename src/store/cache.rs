//! The sessions a process holds, kept in front of its store.
//!
//! A turn reads its conversation's session and then commits the next one;
//! the next turn of the conversation reads back what the last commit wrote.
//! Kept here, that read costs no trip to the store. The cache is filled
//! **only by commits** (never by a read, which could race a commit and keep
//! the older session): a conversation's first turn after a start reads the
//! store, and every later turn finds what its previous one committed. So it
//! is exact after a restart (it starts empty) and holds the truth while the
//! process runs, because every other change of a session (an erasure, the
//! retention sweep, an import) goes through [`Sessions::invalidate`] or
//! [`Sessions::clear`]:
//!
//! - A commit notes the [`Sessions::epoch`] before it is sent and keeps its
//!   session only if no invalidation happened meanwhile ([`Sessions::keep`]),
//!   checked and kept under one lock, so a session erased after (or while)
//!   it was committed is never kept.
//! - A commit that failed forgets the conversation (the store may or may
//!   not hold it).
//!
//! Each session is kept with a **tag**, and is given back only to a read
//! with the same tag. SQLite (one process per file) tags them all 0. A
//! shared store (PostgreSQL) tags each with the fencing token of the claim
//! its commit ran under, and a turn reads under its own claim's token: a
//! session kept here is the store's as long as that claim is unchanged,
//! because another instance writes the conversation only under a claim of
//! its own (a new token), and a turn that read a session kept under a token
//! no longer current has its commit refused by the same token.
//!
//! Bounded in bytes (`store.session_cache_bytes`), least recently used out
//! first (quick_cache's S3-FIFO, which also keeps a scan of one-off
//! conversations from pushing out the busy ones).

use quick_cache::sync::Cache;
use quick_cache::{Equivalent, Weighter};

use super::StoredSession;

/// What one entry costs beyond its bytes (key, value and table overhead).
const ENTRY_OVERHEAD: u64 = 96;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    bot: i64,
    conversation: Box<str>,
}

/// A key to look up without allocating (hashes as [`Key`] does).
#[derive(Hash)]
struct Lookup<'a> {
    bot: i64,
    conversation: &'a str,
}

impl Equivalent<Key> for Lookup<'_> {
    fn equivalent(&self, key: &Key) -> bool {
        self.bot == key.bot && self.conversation == &*key.conversation
    }
}

#[derive(Debug, Clone, Copy)]
struct Bytes;

/// A session kept (`None`: the conversation has none), with its tag.
type Kept = (u64, Option<StoredSession>);

impl Weighter<Key, Kept> for Bytes {
    fn weight(&self, key: &Key, value: &Kept) -> u64 {
        let data = value.1.as_ref().map_or(0, |s| s.data.len());
        (key.conversation.len() + data) as u64 + ENTRY_OVERHEAD
    }
}

/// The sessions last committed by this process, per bot and conversation,
/// each with its tag.
pub(crate) struct Sessions {
    cache: Cache<Key, Kept, Bytes>,
    /// Counts the invalidations; held while a commit's session is kept.
    epoch: std::sync::Mutex<u64>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions")
            .field("entries", &self.cache.len())
            .field("bytes", &self.cache.weight())
            .finish()
    }
}

impl Sessions {
    /// A cache of at most `bytes` (none for 0).
    pub(crate) fn new(bytes: u64) -> Option<Sessions> {
        (bytes > 0).then(|| Sessions {
            // Estimated at a session of about 1 KiB.
            cache: Cache::with_weighter(
                usize::try_from(bytes / 1024).unwrap_or(usize::MAX).max(16),
                bytes,
                Bytes,
            ),
            epoch: std::sync::Mutex::new(0),
        })
    }

    fn epoch_lock(&self) -> std::sync::MutexGuard<'_, u64> {
        self.epoch.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What this process last committed for the conversation under `tag`
    /// (outer `None`: not known here under that tag, ask the store).
    pub(crate) fn get(
        &self,
        bot: i64,
        conversation: &str,
        tag: u64,
    ) -> Option<Option<StoredSession>> {
        self.cache
            .get(&Lookup { bot, conversation })
            .and_then(|(kept, session)| (kept == tag).then_some(session))
    }

    /// The epoch to give [`Sessions::keep`] for a commit about to be sent.
    pub(crate) fn epoch(&self) -> u64 {
        *self.epoch_lock()
    }

    /// A commit (sent at `epoch`, under `tag`) succeeded with `session`:
    /// kept, unless an invalidation came since (then forgotten, to be read
    /// again).
    pub(crate) fn keep(
        &self,
        epoch: u64,
        bot: i64,
        conversation: &str,
        tag: u64,
        session: Option<StoredSession>,
    ) {
        let now = self.epoch_lock();
        if *now == epoch {
            let key = Key {
                bot,
                conversation: conversation.into(),
            };
            self.cache.insert(key, (tag, session));
        } else {
            self.forget(bot, conversation);
        }
        drop(now);
    }

    /// Forgets one conversation (its commit failed).
    pub(crate) fn forget(&self, bot: i64, conversation: &str) {
        self.cache.remove(&Lookup { bot, conversation });
    }

    /// The conversation is being changed other than by a turn (an erasure):
    /// forgotten, and commits in flight are not kept. Called before and
    /// after the change.
    pub(crate) fn invalidate(&self, bot: i64, conversation: &str) {
        let mut epoch = self.epoch_lock();
        self.forget(bot, conversation);
        *epoch += 1;
    }

    /// Sessions are about to change other than by a turn, which ones not
    /// known yet (a sweep): commits in flight are not kept.
    pub(crate) fn bump(&self) {
        *self.epoch_lock() += 1;
    }

    /// A bot's sessions were changed by a sweep: all forgotten (and
    /// commits in flight not kept).
    pub(crate) fn clear_bot(&self, bot: i64) {
        let mut epoch = self.epoch_lock();
        self.cache.retain(|k, _| k.bot != bot);
        *epoch += 1;
    }

    /// Sessions were changed by an import: everything forgotten. Called
    /// before and after the change.
    pub(crate) fn clear(&self) {
        let mut epoch = self.epoch_lock();
        self.cache.clear();
        *epoch += 1;
    }

    /// Entries and bytes held.
    #[cfg(test)]
    fn held(&self) -> (usize, u64) {
        (self.cache.len(), self.cache.weight())
    }
}

/// Runs a turn's commit and keeps the session it writes under `tag` (`None`:
/// a commit under no claim in a shared store, forgotten instead). The one
/// way a store's commit goes through its cache.
pub(crate) async fn committing<T, E>(
    sessions: Option<&Sessions>,
    bot: i64,
    conversation: &str,
    tag: Option<u64>,
    session: Option<StoredSession>,
    commit: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, E> {
    let Some(sessions) = sessions else {
        return commit.await;
    };
    let epoch = sessions.epoch();
    let result = commit.await;
    match (&result, tag) {
        (Ok(_), Some(tag)) => sessions.keep(epoch, bot, conversation, tag, session),
        _ => sessions.forget(bot, conversation),
    }
    result
}

/// Runs a change of one conversation other than a turn (an erasure; none
/// when `dry_run`): forgotten before and after it.
pub(crate) async fn changing<T>(
    sessions: Option<&Sessions>,
    bot: i64,
    conversation: &str,
    dry_run: bool,
    change: impl std::future::Future<Output = T>,
) -> T {
    let sessions = sessions.filter(|_| !dry_run);
    if let Some(s) = sessions {
        s.invalidate(bot, conversation);
    }
    let result = change.await;
    if let Some(s) = sessions {
        s.invalidate(bot, conversation);
    }
    result
}

/// Runs a sweep of a bot's sessions that says how many it removed (none
/// when `dry_run`). Which ones go is known only after: commits in flight
/// are not kept, and the bot's are all forgotten if any went.
pub(crate) async fn sweeping<E>(
    sessions: Option<&Sessions>,
    bot: i64,
    dry_run: bool,
    sweep: impl std::future::Future<Output = Result<u64, E>>,
) -> Result<u64, E> {
    let sessions = sessions.filter(|_| !dry_run);
    if let Some(s) = sessions {
        s.bump();
    }
    let removed = sweep.await;
    if let Some(s) = sessions.filter(|_| !matches!(removed, Ok(0))) {
        s.clear_bot(bot);
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(n: u8) -> Option<StoredSession> {
        Some(StoredSession {
            data: vec![n; 100],
            due_at: None,
        })
    }

    #[test]
    fn a_commit_is_kept_unless_something_else_changed_the_conversation_meanwhile() {
        let s = Sessions::new(1 << 20).unwrap();
        assert_eq!(s.get(1, "c", 0), None);
        let e = s.epoch();
        s.keep(e, 1, "c", 0, session(1));
        assert_eq!(s.get(1, "c", 0), Some(session(1)));
        assert_eq!(s.get(2, "c", 0), None, "per bot");
        // Ended: known to have none.
        s.keep(s.epoch(), 1, "c", 0, None);
        assert_eq!(s.get(1, "c", 0), Some(None));
        // Under another tag (a claim's token that changed): not known.
        s.keep(s.epoch(), 1, "c", 7, session(1));
        assert_eq!(s.get(1, "c", 7), Some(session(1)));
        assert_eq!(s.get(1, "c", 8), None);
        assert_eq!(s.get(1, "c", 0), None);

        // An erasure between a commit's start and its end: not kept.
        let e = s.epoch();
        s.invalidate(1, "c");
        s.keep(e, 1, "c", 0, session(2));
        assert_eq!(s.get(1, "c", 0), None);
        // Nor after a sweep, which forgets its bot's only.
        let e = s.epoch();
        s.keep(e, 1, "d", 0, session(3));
        s.keep(e, 2, "d", 0, session(4));
        s.bump();
        s.keep(e, 1, "e", 0, session(5));
        assert_eq!(s.get(1, "e", 0), None, "a commit in flight at the sweep");
        s.clear_bot(1);
        assert_eq!(s.get(1, "d", 0), None);
        assert_eq!(s.get(2, "d", 0), Some(session(4)));
        s.keep(e, 1, "d", 0, session(3));
        assert_eq!(s.get(1, "d", 0), None);
        s.clear();
        assert_eq!(s.get(2, "d", 0), None);
    }

    #[test]
    fn it_keeps_to_its_bytes() {
        assert!(Sessions::new(0).is_none());
        let s = Sessions::new(64 * 1024).unwrap();
        for i in 0..10_000 {
            s.keep(s.epoch(), 1, &format!("conversation-{i}"), 0, session(1));
        }
        let (entries, bytes) = s.held();
        assert!(bytes <= 64 * 1024, "{bytes}");
        assert!(entries > 100, "{entries}");
    }
}
