//! The `StateStore` contract, run against every implementation.

use std::sync::Arc;
use std::time::Duration;

use flowbot::internals::store::*;

fn opts(busy_secs: u64, max_batch: usize) -> SqliteOptions {
    SqliteOptions {
        busy_timeout: Duration::from_secs(busy_secs),
        max_batch,
        durability: Durability::Full,
        max_bytes: None,
    }
}

fn inbound(key: &str, conversation: &str) -> NewInbound {
    NewInbound {
        key: key.into(),
        conversation: conversation.into(),
        payload: format!("payload of {key}").into_bytes(),
        received_at: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64,
    }
}

fn temp_db(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("flowbot-store-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir.join("flowbot.db")
}

async fn contract(store: &dyn StateStore) {
    store.ping().await.unwrap();
    // Accept once per key.
    let Accepted::New(a) = store.accept(inbound("m1", "c1")).await.unwrap() else {
        panic!("new")
    };
    assert_eq!(
        store.accept(inbound("m1", "c1")).await.unwrap(),
        Accepted::Duplicate
    );
    let Accepted::New(b) = store.accept(inbound("m2", "c2")).await.unwrap() else {
        panic!("new")
    };
    assert!(b.seq > a.seq);
    assert!(!a.resumed && a.attempts == 0);
    // What is pending is marked as resumed; attempts are counted durably.
    let resumed = |i: &InboxItem, attempts: u32| InboxItem {
        resumed: true,
        attempts,
        ..i.clone()
    };
    assert_eq!(
        store.pending(10).await.unwrap(),
        vec![resumed(&a, 0), resumed(&b, 0)]
    );
    assert_eq!(store.attempt(b.seq).await.unwrap(), 1);
    assert_eq!(store.attempt(b.seq).await.unwrap(), 2);
    let b = resumed(&b, 2);

    // A turn commits everything at once.
    let ids = store
        .commit(TurnCommit {
            inbox_seq: a.seq,
            conversation: "c1".into(),
            session: Some(StoredSession {
                data: b"s1".to_vec(),
                due_at: Some(5_000),
            }),
            outbox: vec![b"r1".to_vec(), b"r2".to_vec()],
        })
        .await
        .unwrap();
    assert_eq!(store.pending(10).await.unwrap(), vec![b.clone()]);
    // An item already done counts nothing.
    assert_eq!(store.attempt(a.seq).await.unwrap(), 0);
    assert_eq!(
        store.session("c1").await.unwrap(),
        Some(StoredSession {
            data: b"s1".to_vec(),
            due_at: Some(5_000)
        })
    );
    let out = store.outbox(0, 10).await.unwrap();
    let payloads: Vec<&[u8]> = out.iter().map(|o| o.payload.as_slice()).collect();
    assert_eq!(payloads, [b"r1".as_slice(), b"r2"]);
    assert!(out.iter().all(|o| o.conversation == "c1"));
    assert_eq!(ids, out.iter().map(|o| o.id).collect::<Vec<_>>());
    // Read from a point, and at most so many.
    assert_eq!(
        store.outbox(out[0].id, 10).await.unwrap(),
        vec![out[1].clone()]
    );
    assert_eq!(store.outbox(0, 1).await.unwrap(), vec![out[0].clone()]);
    // A processed key is still recognised.
    assert_eq!(
        store.accept(inbound("m1", "c1")).await.unwrap(),
        Accepted::Duplicate
    );

    // Timers.
    assert!(store.due_timers(4_999, 10).await.unwrap().is_empty());
    assert_eq!(
        store.due_timers(5_000, 10).await.unwrap(),
        vec![("c1".to_string(), 5_000)]
    );

    // Delivery.
    store.delivered(out[0].id).await.unwrap();
    assert_eq!(store.outbox(0, 10).await.unwrap(), vec![out[1].clone()]);

    // Ending a conversation deletes its session.
    store
        .commit(TurnCommit {
            inbox_seq: b.seq,
            conversation: "c1".into(),
            session: None,
            outbox: vec![],
        })
        .await
        .unwrap();
    assert_eq!(store.session("c1").await.unwrap(), None);
    assert!(store.pending(10).await.unwrap().is_empty());

    // Cursors.
    assert_eq!(store.cursor("poll").await.unwrap(), None);
    store.set_cursor("poll", "abc").await.unwrap();
    store.set_cursor("poll", "def").await.unwrap();
    assert_eq!(store.cursor("poll").await.unwrap().as_deref(), Some("def"));
}

#[tokio::test]
async fn memory_store_keeps_the_contract() {
    contract(&MemoryStore::new()).await;
}

#[tokio::test]
async fn sqlite_store_keeps_the_contract() {
    let path = temp_db("contract");
    contract(&SqliteStore::open(&path, opts(5, 64)).unwrap()).await;
}

#[tokio::test]
async fn sqlite_keeps_everything_across_a_reopen() {
    let path = temp_db("reopen");
    {
        let store = SqliteStore::open(&path, opts(5, 64)).unwrap();
        store.accept(inbound("m1", "c1")).await.unwrap();
        store.accept(inbound("m2", "c1")).await.unwrap();
        let first = store.pending(1).await.unwrap().remove(0);
        store
            .commit(TurnCommit {
                inbox_seq: first.seq,
                conversation: "c1".into(),
                session: Some(StoredSession {
                    data: b"s".to_vec(),
                    due_at: None,
                }),
                outbox: vec![b"hello".to_vec()],
            })
            .await
            .unwrap();
    }
    let store = SqliteStore::open(&path, opts(5, 64)).unwrap();
    let pending = store.pending(10).await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].key, "m2");
    assert_eq!(store.outbox(0, 10).await.unwrap()[0].payload, b"hello");
    assert_eq!(
        store.accept(inbound("m1", "c1")).await.unwrap(),
        Accepted::Duplicate
    );
    assert!(store.session("c1").await.unwrap().is_some());
}

/// Many concurrent writers: each sees its own result, every key is taken once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_group_commit_answers_each_caller() {
    let path = temp_db("group");
    let store = Arc::new(SqliteStore::open(&path, opts(5, 32)).unwrap());
    let tasks: Vec<_> = (0..400)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move { store.accept(inbound(&format!("k{}", i % 200), "c")).await })
        })
        .collect();
    let mut new = 0;
    for t in tasks {
        if let Accepted::New(_) = t.await.unwrap().unwrap() {
            new += 1;
        }
    }
    assert_eq!(new, 200);
    assert_eq!(store.pending(1000).await.unwrap().len(), 200);
}

#[test]
fn a_bad_path_is_a_clear_error() {
    let err = SqliteStore::open("/proc/flowbot/x.db", opts(1, 8)).unwrap_err();
    assert!(err.to_string().contains("/proc/flowbot"), "{err}");
}
