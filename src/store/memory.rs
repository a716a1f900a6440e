//! The in-memory store: the reference semantics of [`StateStore`], lost on exit.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;

use async_trait::async_trait;

use super::*;

/// Sessions, inbox and outbox in memory.
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    seen: HashSet<String>,
    next_seq: u64,
    inbox: BTreeMap<u64, InboxItem>,
    sessions: HashMap<String, StoredSession>,
    next_out: u64,
    outbox: BTreeMap<u64, OutboxItem>,
    cursors: HashMap<String, String>,
    next_dead: u64,
    dead: BTreeMap<u64, DeadLetter>,
    next_event: u64,
    events: Vec<(u64, LogEvent)>,
    /// When each session last changed.
    touched: HashMap<String, Millis>,
    rollups: Vec<Rollup>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        MemoryStore::default()
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl StateStore for MemoryStore {
    async fn accept(&self, item: NewInbound) -> Result<Accepted, StoreError> {
        let mut s = self.inner();
        if !s.seen.insert(item.key.clone()) {
            return Ok(Accepted::Duplicate);
        }
        s.next_seq += 1;
        let stored = item.accepted(s.next_seq);
        s.inbox.insert(stored.seq, stored.clone());
        Ok(Accepted::New(stored))
    }

    async fn pending(&self, limit: usize) -> Result<Vec<InboxItem>, StoreError> {
        Ok(self
            .inner()
            .inbox
            .values()
            .take(limit)
            .map(|i| InboxItem {
                resumed: true,
                ..i.clone()
            })
            .collect())
    }

    async fn attempt(&self, seq: u64, _conversation: &str) -> Result<u32, StoreError> {
        let mut s = self.inner();
        Ok(s.inbox.get_mut(&seq).map_or(0, |i| {
            i.attempts += 1;
            i.attempts
        }))
    }

    async fn session(&self, conversation: &str) -> Result<Option<StoredSession>, StoreError> {
        Ok(self.inner().sessions.get(conversation).cloned())
    }

    async fn sessions(
        &self,
        after: &str,
        limit: usize,
    ) -> Result<Vec<(String, StoredSession)>, StoreError> {
        let s = self.inner();
        let mut page: Vec<(String, StoredSession)> = s
            .sessions
            .iter()
            .filter(|(c, _)| c.as_str() > after)
            .map(|(c, v)| (c.clone(), v.clone()))
            .collect();
        page.sort_by(|a, b| a.0.cmp(&b.0));
        page.truncate(limit);
        Ok(page)
    }

    async fn commit(&self, commit: TurnCommit) -> Result<Vec<u64>, StoreError> {
        let mut s = self.inner();
        let mut ids = Vec::with_capacity(commit.outbox.len());
        s.inbox.remove(&commit.inbox_seq);
        match commit.session {
            Some(session) => {
                s.sessions.insert(commit.conversation.clone(), session);
                s.touched.insert(commit.conversation.clone(), commit.at);
            }
            None => {
                s.sessions.remove(&commit.conversation);
                s.touched.remove(&commit.conversation);
            }
        }
        for event in commit.events {
            s.next_event += 1;
            let id = s.next_event;
            s.events.push((id, event));
        }
        for payload in commit.outbox {
            s.next_out += 1;
            let id = s.next_out;
            ids.push(id);
            s.outbox.insert(
                id,
                OutboxItem {
                    id,
                    conversation: commit.conversation.clone(),
                    payload,
                },
            );
        }
        Ok(ids)
    }

    async fn erase(
        &self,
        conversation: &str,
        hash: &str,
        dry_run: bool,
    ) -> Result<Held, StoreError> {
        let mut s = self.inner();
        let names = |d: &DeadLetter| {
            d.headers.contains(conversation)
                || String::from_utf8_lossy(&d.body).contains(conversation)
        };
        let held = Held {
            sessions: u64::from(s.sessions.contains_key(conversation)),
            inbox: s
                .inbox
                .values()
                .filter(|i| i.conversation == conversation)
                .count() as u64,
            outbox: s
                .outbox
                .values()
                .filter(|o| o.conversation == conversation)
                .count() as u64,
            dead_letters: s.dead.values().filter(|d| names(d)).count() as u64,
            events: s
                .events
                .iter()
                .filter(|(_, e)| e.conversation == hash)
                .count() as u64,
        };
        if !dry_run {
            s.sessions.remove(conversation);
            s.touched.remove(conversation);
            s.inbox.retain(|_, i| i.conversation != conversation);
            s.outbox.retain(|_, o| o.conversation != conversation);
            s.dead.retain(|_, d| !names(d));
            s.events.retain(|(_, e)| e.conversation != hash);
        }
        Ok(held)
    }

    async fn export(&self, conversation: &str, hash: &str) -> Result<Export, StoreError> {
        let s = self.inner();
        Ok(Export {
            session: s.sessions.get(conversation).map(|x| x.data.clone()),
            inbox: s
                .inbox
                .values()
                .filter(|i| i.conversation == conversation)
                .map(|i| i.payload.clone())
                .collect(),
            outbox: s
                .outbox
                .values()
                .filter(|o| o.conversation == conversation)
                .map(|o| o.payload.clone())
                .collect(),
            dead_letters: s
                .dead
                .values()
                .filter(|d| {
                    d.headers.contains(conversation)
                        || String::from_utf8_lossy(&d.body).contains(conversation)
                })
                .cloned()
                .collect(),
            events: s
                .events
                .iter()
                .filter(|(_, e)| e.conversation == hash)
                .map(|(_, e)| e.clone())
                .collect(),
        })
    }

    async fn expire(
        &self,
        kind: Expiring,
        before: Millis,
        limit: usize,
        dry_run: bool,
    ) -> Result<u64, StoreError> {
        let mut s = self.inner();
        let s = &mut *s;
        // Each old item counted, up to `limit`; kept unless it is removed.
        let mut n = 0;
        let mut keep = |old: bool| {
            let gone = old && n < limit;
            n += usize::from(gone);
            !gone || dry_run
        };
        match kind {
            Expiring::Sessions => {
                let touched = &mut s.touched;
                s.sessions.retain(|c, session| {
                    let old = touched.get(c).is_some_and(|&at| at < before)
                        && session.due_at.is_none_or(|d| d < before);
                    let kept = keep(old);
                    if !kept {
                        touched.remove(c);
                    }
                    kept
                });
            }
            Expiring::DeadLetters => s.dead.retain(|_, d| keep(d.received_at < before)),
            Expiring::Events => s.events.retain(|(_, e)| keep(e.at < before)),
            Expiring::Rollups => s.rollups.retain(|r| keep(r.hour < before)),
        }
        Ok(n as u64)
    }

    async fn oldest_run(&self) -> Result<Option<Millis>, StoreError> {
        Ok(self.inner().events.iter().map(|(_, e)| e.run).min())
    }

    async fn fold(
        &self,
        from: Millis,
        to: Millis,
        rollups: Vec<Rollup>,
    ) -> Result<u64, StoreError> {
        let mut s = self.inner();
        for r in rollups {
            let same = s.rollups.iter_mut().find(|x| {
                (
                    x.hour,
                    &x.flow_version,
                    &x.channel,
                    x.test,
                    &x.kind,
                    &x.key,
                    &x.value,
                ) == (
                    r.hour,
                    &r.flow_version,
                    &r.channel,
                    r.test,
                    &r.kind,
                    &r.key,
                    &r.value,
                )
            });
            match same {
                Some(x) => x.count += r.count,
                None => s.rollups.push(r),
            }
        }
        let before = s.events.len();
        s.events.retain(|(_, e)| e.run < from || e.run >= to);
        Ok((before - s.events.len()) as u64)
    }

    async fn rollups(&self, from: Millis, to: Millis) -> Result<Vec<Rollup>, StoreError> {
        Ok(self
            .inner()
            .rollups
            .iter()
            .filter(|r| r.hour >= from && r.hour < to)
            .cloned()
            .collect())
    }

    async fn events(
        &self,
        from: Millis,
        to: Millis,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, LogEvent)>, StoreError> {
        Ok(self
            .inner()
            .events
            .iter()
            .filter(|(id, e)| *id > after && e.run >= from && e.run < to)
            .take(limit)
            .cloned()
            .collect())
    }

    async fn outbox(&self, after: u64, limit: usize) -> Result<Vec<OutboxItem>, StoreError> {
        Ok(self
            .inner()
            .outbox
            .range(after.saturating_add(1)..)
            .take(limit)
            .map(|(_, i)| i.clone())
            .collect())
    }

    async fn outbox_of(
        &self,
        conversation: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<OutboxItem>, StoreError> {
        Ok(self
            .inner()
            .outbox
            .range(after.saturating_add(1)..)
            .filter(|(_, i)| i.conversation == conversation)
            .take(limit)
            .map(|(_, i)| i.clone())
            .collect())
    }

    async fn outbox_conversations(
        &self,
        after: &str,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        let inner = self.inner();
        let all: std::collections::BTreeSet<&str> = inner
            .outbox
            .values()
            .map(|i| i.conversation.as_str())
            .filter(|c| *c > after)
            .collect();
        Ok(all.into_iter().take(limit).map(str::to_owned).collect())
    }

    async fn delivered(&self, id: u64) -> Result<(), StoreError> {
        self.inner().outbox.remove(&id);
        Ok(())
    }

    async fn due_timers(
        &self,
        now: Millis,
        limit: usize,
    ) -> Result<Vec<(String, Millis)>, StoreError> {
        let s = self.inner();
        let mut due: Vec<(String, Millis)> = s
            .sessions
            .iter()
            .filter_map(|(c, st)| st.due_at.filter(|d| *d <= now).map(|d| (c.clone(), d)))
            .collect();
        due.sort_by_key(|(_, d)| *d);
        due.truncate(limit);
        Ok(due)
    }

    async fn cursor(&self, name: &str) -> Result<Option<String>, StoreError> {
        Ok(self.inner().cursors.get(name).cloned())
    }

    async fn set_cursor(&self, name: &str, value: &str) -> Result<(), StoreError> {
        self.inner()
            .cursors
            .insert(name.to_owned(), value.to_owned());
        Ok(())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn add_dead_letter(&self, mut letter: DeadLetter) -> Result<u64, StoreError> {
        let mut s = self.inner();
        s.next_dead += 1;
        letter.id = s.next_dead;
        s.dead.insert(letter.id, letter);
        while s.dead.len() > MAX_DEAD_LETTERS {
            s.dead.pop_first();
        }
        Ok(s.next_dead)
    }

    async fn dead_letters(
        &self,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<DeadLetterSummary>, StoreError> {
        Ok(self
            .inner()
            .dead
            .range(..before.unwrap_or(u64::MAX))
            .rev()
            .take(limit)
            .map(|(_, d)| DeadLetterSummary::of(d))
            .collect())
    }

    async fn dead_letter(&self, id: u64) -> Result<Option<DeadLetter>, StoreError> {
        Ok(self.inner().dead.get(&id).cloned())
    }

    async fn remove_dead_letter(&self, id: u64) -> Result<bool, StoreError> {
        Ok(self.inner().dead.remove(&id).is_some())
    }
}
