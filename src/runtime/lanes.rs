//! Per-conversation ordered queues, each drained by one worker task.
//!
//! Items of one key (a conversation) are handed to the [`Worker`] one at a time
//! in their order number (inbox sequence, outbox id), so a conversation's turns
//! and deliveries never overlap or reorder; different keys run in parallel. A
//! key's task is spawned when its first item is queued and ends when its queue
//! runs dry, so an idle conversation costs nothing. The dispatcher (turns) and
//! the sender (replies) are the two workers; both resume what the store still
//! holds at start through [`Lanes::resume`].

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::Notify;
use tracing::Instrument;

/// What runs a lane's items. `run`'s future is not boxed: it lives in the
/// lane task's own allocation, made once when the task is spawned.
pub(crate) trait Worker: Send + Sync + 'static {
    /// The work item.
    type Item: Send + 'static;
    /// The item's key (its conversation) and order number.
    fn key(item: &Self::Item) -> (&str, u64);
    /// Runs one item. `false`: shutting down, this lane stops here (what is
    /// left stays in the store for the next start).
    fn run(&self, key: &str, item: Self::Item) -> impl std::future::Future<Output = bool> + Send;
}

/// Each key's queued items, by order number.
type Queues<T> = HashMap<Arc<str>, Lane<T>>;

/// One key's queue, and the order number of the item it took last: that
/// item queued again once taken (two routings of one message) is not run
/// twice.
struct Lane<T> {
    items: BTreeMap<u64, T>,
    taken: Option<u64>,
}

/// How many items may run at once when several bots share the process: in
/// all (its workers) and for one bot. An item takes its bot's permit, then
/// one of all: a bot flooded with traffic holds at most its cap of the
/// process's workers, whatever its backlog, and the others' items wait only
/// behind those (the semaphores are first come, first served).
#[derive(Debug, Clone)]
pub(crate) struct Share {
    pub(crate) all: Arc<tokio::sync::Semaphore>,
    pub(crate) bot: Arc<tokio::sync::Semaphore>,
}

/// The process's workers when several bots share it: for turns, and as
/// many for sends.
#[derive(Debug)]
pub(crate) struct Workers {
    pub(crate) turns: Arc<tokio::sync::Semaphore>,
    pub(crate) sends: Arc<tokio::sync::Semaphore>,
}

impl Workers {
    pub(crate) fn new(n: usize) -> Workers {
        Workers {
            turns: Arc::new(tokio::sync::Semaphore::new(n.max(1))),
            sends: Arc::new(tokio::sync::Semaphore::new(n.max(1))),
        }
    }
}

impl Share {
    /// `bot`'s own cap, under the process's `all`.
    pub(crate) fn new(all: Arc<tokio::sync::Semaphore>, per_bot: usize) -> Share {
        Share {
            all,
            bot: Arc::new(tokio::sync::Semaphore::new(per_bot.max(1))),
        }
    }

    async fn take(
        &self,
    ) -> Option<(
        tokio::sync::SemaphorePermit<'_>,
        tokio::sync::SemaphorePermit<'_>,
    )> {
        let bot = self.bot.acquire().await.ok()?;
        let all = self.all.acquire().await.ok()?;
        Some((bot, all))
    }
}

/// Ordered queues per key, with their worker.
pub(crate) struct Lanes<W: Worker> {
    queues: Mutex<Queues<W::Item>>,
    /// Each key's task, to stop them all at shutdown's deadline.
    tasks: Mutex<HashMap<Arc<str>, tokio::task::JoinHandle<()>>>,
    /// Items queued and not yet finished (waiting or in progress).
    len: AtomicUsize,
    changed: Notify,
    worker: W,
    depth: Gauge,
    /// What items of several bots share (none: the process's one bot).
    share: Option<Share>,
}

impl<W: Worker> Lanes<W> {
    /// Lanes run by `worker`; `depth` shows how many items are pending.
    #[cfg(test)]
    pub(crate) fn new(worker: W, depth: Gauge) -> Arc<Self> {
        Lanes::shared(worker, depth, None)
    }

    /// Lanes whose items run within `share` (see [`Share`]).
    pub(crate) fn shared(worker: W, depth: Gauge, share: Option<Share>) -> Arc<Self> {
        Arc::new(Lanes {
            queues: Mutex::new(HashMap::new()),
            tasks: Mutex::new(HashMap::new()),
            len: AtomicUsize::new(0),
            changed: Notify::new(),
            worker,
            depth,
            share,
        })
    }

    /// The worker.
    pub(crate) fn worker(&self) -> &W {
        &self.worker
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queues<W::Item>> {
        self.queues.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn task_handles(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, tokio::task::JoinHandle<()>>> {
        self.tasks.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stops every lane's task where it is and waits until they are gone (at
    /// shutdown, past the deadline: what they held is still in the store for
    /// the next start).
    pub(crate) async fn abort_all(&self) {
        let tasks: Vec<_> = self.task_handles().drain().map(|(_, t)| t).collect();
        for task in &tasks {
            task.abort();
        }
        for task in tasks {
            let _ = task.await;
        }
    }

    /// Queues `item`, starting its key's worker task if it has none. An order
    /// number already queued is ignored.
    pub(crate) fn queue(self: &Arc<Self>, item: W::Item) {
        self.queue_as(item, false)
    }

    /// Queues `item` in place of what its order number holds, and even if
    /// the item of that number is in progress (it is queued to run again
    /// after it): read anew for a new claim of the key, whose copy is the
    /// one to run.
    pub(crate) fn requeue(self: &Arc<Self>, item: W::Item) {
        self.queue_as(item, true)
    }

    fn queue_as(self: &Arc<Self>, item: W::Item, anew: bool) {
        let (key, order) = W::key(&item);
        let mut queues = self.lock();
        if let Some(lane) = queues.get_mut(key) {
            // The one just taken, queued again by a second routing. (An
            // older one is still queued: one accepted elsewhere, found late,
            // runs; one already run was routed as resumed and is checked.)
            if lane.taken == Some(order) && !anew {
                return;
            }
            match lane.items.entry(order) {
                std::collections::btree_map::Entry::Vacant(e) => {
                    e.insert(item);
                    self.len.fetch_add(1, Ordering::SeqCst);
                }
                std::collections::btree_map::Entry::Occupied(mut e) if anew => {
                    e.insert(item);
                }
                std::collections::btree_map::Entry::Occupied(_) => {}
            }
        } else {
            let key: Arc<str> = Arc::from(key);
            queues.insert(
                key.clone(),
                Lane {
                    items: BTreeMap::from([(order, item)]),
                    taken: None,
                },
            );
            self.len.fetch_add(1, Ordering::SeqCst);
            // Registered under the queues' lock: the task removes itself under
            // it too, so it cannot be gone before it is registered.
            let task = tokio::spawn(self.clone().work(key.clone()).in_current_span());
            self.task_handles().insert(key, task);
        }
        drop(queues);
        self.depth.set(self.len() as i64);
    }

    /// Queues what the store still holds from the last run.
    pub(crate) fn resume(self: &Arc<Self>, items: Vec<W::Item>, what: &str) {
        if !items.is_empty() {
            tracing::info!(count = items.len(), "resuming {what}");
        }
        for item in items {
            self.queue(item);
        }
    }

    async fn work(self: Arc<Self>, key: Arc<str>) {
        while let Some(item) = self.next(&key) {
            let _permits = match &self.share {
                Some(share) => share.take().await,
                None => None,
            };
            let go_on = self.worker.run(&key, item).await;
            self.len.fetch_sub(1, Ordering::SeqCst);
            self.depth.set(self.len() as i64);
            self.changed.notify_waiters();
            if !go_on {
                return;
            }
        }
    }

    /// The key's next item, or `None` (and the lane is gone) when it is empty.
    fn next(&self, key: &str) -> Option<W::Item> {
        let mut queues = self.lock();
        let lane = queues.get_mut(key)?;
        match lane.items.pop_first() {
            Some((order, item)) => {
                lane.taken = Some(order);
                Some(item)
            }
            None => {
                queues.remove(key);
                self.task_handles().remove(key);
                None
            }
        }
    }

    /// Whether the item of `key` numbered `order` is queued here or was the
    /// last taken from its lane (in progress, or run while the lane held
    /// more).
    pub(crate) fn knows(&self, key: &str, order: u64) -> bool {
        self.lock()
            .get(key)
            .is_some_and(|l| l.taken == Some(order) || l.items.contains_key(&order))
    }

    /// Whether `key` has items queued or in progress.
    pub(crate) fn has(&self, key: &str) -> bool {
        self.lock().contains_key(key)
    }

    /// How many items `key` has waiting (the one in progress not counted).
    pub(crate) fn queued(&self, key: &str) -> usize {
        self.lock().get(key).map_or(0, |l| l.items.len())
    }

    /// Items queued or in progress.
    pub(crate) fn len(&self) -> usize {
        self.len.load(Ordering::SeqCst)
    }

    /// Waits until every item queued so far is finished.
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

    struct Log(Mutex<Vec<(String, u64)>>);

    impl Worker for Log {
        type Item = (String, u64);
        fn key(item: &Self::Item) -> (&str, u64) {
            (&item.0, item.1)
        }
        async fn run(&self, _key: &str, item: Self::Item) -> bool {
            tokio::task::yield_now().await;
            self.0.lock().unwrap().push(item);
            true
        }
    }

    #[tokio::test]
    async fn items_run_in_order_once_and_idle_lanes_vanish() {
        let lanes = Lanes::new(Log(Mutex::new(Vec::new())), Gauge::default());
        lanes.queue(("a".into(), 2));
        lanes.queue(("a".into(), 1));
        lanes.queue(("a".into(), 2));
        lanes.queue(("b".into(), 7));
        lanes.drained().await;
        let log = lanes.worker().0.lock().unwrap().clone();
        let a: Vec<u64> = log.iter().filter(|i| i.0 == "a").map(|i| i.1).collect();
        assert_eq!(a, [1, 2], "queued before the worker ran: in order");
        assert_eq!(log.len(), 3, "{log:?}");
        assert!(lanes.lock().is_empty(), "idle lanes are removed");
    }

    #[tokio::test]
    async fn an_item_queued_again_while_it_runs_runs_once() {
        let lanes = Lanes::new(Log(Mutex::new(Vec::new())), Gauge::default());
        lanes.queue(("a".into(), 1));
        lanes.queue(("a".into(), 2));
        // Let the worker take 1 (it yields inside), then route 1 again.
        tokio::task::yield_now().await;
        lanes.queue(("a".into(), 1));
        lanes.drained().await;
        let log = lanes.worker().0.lock().unwrap().clone();
        assert_eq!(log, [("a".into(), 1), ("a".into(), 2)]);
    }

    #[tokio::test]
    async fn a_lane_knows_its_queued_and_running_items_only() {
        let lanes = Lanes::new(Log(Mutex::new(Vec::new())), Gauge::default());
        lanes.queue(("a".into(), 1));
        lanes.queue(("a".into(), 2));
        assert!(lanes.knows("a", 1) && lanes.knows("a", 2));
        assert!(!lanes.knows("a", 3) && !lanes.knows("b", 1));
        // The worker takes 1 and yields inside: running, still known.
        tokio::task::yield_now().await;
        assert!(lanes.knows("a", 1), "the running item");
        lanes.drained().await;
        assert!(
            !lanes.knows("a", 1) && !lanes.knows("a", 2),
            "a lane run dry"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_bot_runs_no_more_items_at_once_than_its_share() {
        use std::sync::atomic::AtomicUsize;
        struct Slow(AtomicUsize, AtomicUsize);
        impl Worker for Slow {
            type Item = (String, u64);
            fn key(item: &Self::Item) -> (&str, u64) {
                (&item.0, item.1)
            }
            async fn run(&self, _key: &str, _item: Self::Item) -> bool {
                let now = self.0.fetch_add(1, Ordering::SeqCst) + 1;
                self.1.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                self.0.fetch_sub(1, Ordering::SeqCst);
                true
            }
        }
        let all = Arc::new(tokio::sync::Semaphore::new(8));
        let lanes = Lanes::shared(
            Slow(AtomicUsize::new(0), AtomicUsize::new(0)),
            Gauge::default(),
            Some(Share::new(all, 3)),
        );
        for k in 0..20 {
            lanes.queue((format!("c{k}"), 1));
        }
        lanes.drained().await;
        assert_eq!(lanes.worker().1.load(Ordering::SeqCst), 3);
    }
}
