//! Per-key ordered queues, one worker per busy key.
//!
//! Items of one key (a conversation) are handed out one at a time in their
//! order number (inbox sequence, outbox id), so a conversation's turns and
//! deliveries never overlap or reorder; different keys run in parallel. An
//! idle key costs nothing: its lane is removed when it runs dry.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

#[derive(Debug)]
pub(crate) struct Lanes<T> {
    lanes: Mutex<HashMap<Arc<str>, BTreeMap<u64, T>>>,
    /// Items pushed and not yet finished (queued or in progress).
    len: AtomicUsize,
    changed: Notify,
}

impl<T> Default for Lanes<T> {
    fn default() -> Self {
        Lanes {
            lanes: Mutex::new(HashMap::new()),
            len: AtomicUsize::new(0),
            changed: Notify::new(),
        }
    }
}

impl<T> Lanes<T> {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, BTreeMap<u64, T>>> {
        self.lanes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `item`; returns `Some(key)` when the key had no lane, so the
    /// caller starts a worker for it. An order number already queued is ignored.
    pub(crate) fn push(&self, key: &str, order: u64, item: T) -> Option<Arc<str>> {
        let mut lanes = self.lock();
        if let Some(lane) = lanes.get_mut(key) {
            if let std::collections::btree_map::Entry::Vacant(e) = lane.entry(order) {
                e.insert(item);
                self.len.fetch_add(1, Ordering::SeqCst);
            }
            return None;
        }
        let key: Arc<str> = Arc::from(key);
        lanes.insert(key.clone(), BTreeMap::from([(order, item)]));
        self.len.fetch_add(1, Ordering::SeqCst);
        Some(key)
    }

    /// The key's next item, or `None` (and the lane is gone) when it is empty.
    pub(crate) fn next(&self, key: &str) -> Option<T> {
        let mut lanes = self.lock();
        let lane = lanes.get_mut(key)?;
        match lane.pop_first() {
            Some((_, item)) => Some(item),
            None => {
                lanes.remove(key);
                None
            }
        }
    }

    /// Marks one item finished.
    pub(crate) fn done(&self) {
        self.len.fetch_sub(1, Ordering::SeqCst);
        self.changed.notify_waiters();
    }

    /// Items queued or in progress.
    pub(crate) fn len(&self) -> usize {
        self.len.load(Ordering::SeqCst)
    }

    /// Waits until every item pushed so far is finished.
    pub(crate) async fn drained(&self) {
        loop {
            let notified = self.changed.notified();
            if self.len() == 0 {
                return;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_come_out_in_order_and_idle_lanes_vanish() {
        let lanes = Lanes::default();
        assert!(lanes.push("a", 2, "second").is_some());
        assert!(lanes.push("a", 1, "first").is_none());
        assert!(lanes.push("a", 1, "again").is_none());
        assert_eq!(lanes.len(), 2);
        assert_eq!(lanes.next("a"), Some("first"));
        lanes.done();
        assert_eq!(lanes.next("a"), Some("second"));
        lanes.done();
        assert_eq!(lanes.next("a"), None);
        assert!(
            lanes.push("a", 3, "new").is_some(),
            "a fresh lane needs a worker"
        );
    }
}
