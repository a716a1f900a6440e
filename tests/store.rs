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
        ..SqliteOptions::default()
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
    if store.shared() {
        // A shared store gives the work of claimed conversations only.
        for c in ["c1", "c2", "c3"] {
            assert!(store
                .claim(c, std::time::Duration::from_secs(60))
                .await
                .unwrap()
                .is_some());
        }
    }
    // Accept once per key.
    let Accepted::New(a) = store.accept(inbound("m1", "c1")).await.unwrap() else {
        panic!("new")
    };
    assert_eq!(
        store.accept(inbound("m1", "c1")).await.unwrap(),
        Accepted::Duplicate
    );
    // A second message of the same conversation (a commit names its
    // message's own conversation).
    let Accepted::New(b) = store.accept(inbound("m2", "c1")).await.unwrap() else {
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
    assert_eq!(store.attempt(b.seq, "c1").await.unwrap(), 1);
    assert_eq!(store.attempt(b.seq, "c1").await.unwrap(), 2);
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
            fence: None,
            at: 0,
            events: Vec::new(),
        })
        .await
        .unwrap();
    assert_eq!(store.pending(10).await.unwrap(), vec![b.clone()]);
    // An item already done counts nothing.
    assert_eq!(store.attempt(a.seq, "c1").await.unwrap(), 0);
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
    // One conversation's replies, from a point; the conversations with any.
    assert_eq!(store.outbox_of("c1", 0, 10).await.unwrap(), out);
    assert_eq!(
        store.outbox_of("c1", out[0].id, 1).await.unwrap(),
        vec![out[1].clone()]
    );
    assert!(store.outbox_of("c2", 0, 10).await.unwrap().is_empty());
    assert_eq!(store.outbox_conversations("", 10).await.unwrap(), ["c1"]);
    assert!(store
        .outbox_conversations("c1", 10)
        .await
        .unwrap()
        .is_empty());
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
            fence: None,
            at: 0,
            events: Vec::new(),
        })
        .await
        .unwrap();
    assert_eq!(store.session("c1").await.unwrap(), None);
    assert!(store.pending(10).await.unwrap().is_empty());

    // Sessions are read a page at a time, in conversation order.
    for (key, conversation, data) in [("m3", "c3", b"s3"), ("m4", "c2", b"s2")] {
        let Accepted::New(item) = store.accept(inbound(key, conversation)).await.unwrap() else {
            panic!("new")
        };
        store
            .commit(TurnCommit {
                inbox_seq: item.seq,
                conversation: conversation.into(),
                session: Some(StoredSession {
                    data: data.to_vec(),
                    due_at: None,
                }),
                outbox: vec![],
                fence: None,
                at: 0,
                events: Vec::new(),
            })
            .await
            .unwrap();
    }
    let names = |page: Vec<(String, StoredSession)>| -> Vec<(String, Vec<u8>)> {
        page.into_iter().map(|(c, s)| (c, s.data)).collect()
    };
    assert_eq!(
        names(store.sessions("", 10).await.unwrap()),
        [
            ("c2".to_string(), b"s2".to_vec()),
            ("c3".to_string(), b"s3".to_vec())
        ]
    );
    assert_eq!(
        names(store.sessions("", 1).await.unwrap()),
        [("c2".to_string(), b"s2".to_vec())]
    );
    assert_eq!(
        names(store.sessions("c2", 10).await.unwrap()),
        [("c3".to_string(), b"s3".to_vec())]
    );
    assert!(store.sessions("c3", 10).await.unwrap().is_empty());

    // The event log: written with the turn, read by the runs' start, a page
    // at a time.
    let event = |run: i64, kind: &str| LogEvent {
        at: run + 5,
        conversation: "3f2a".into(),
        run,
        flow_version: "00000000deadbeef".into(),
        state: "start".into(),
        channel: "whatsapp".into(),
        kind: kind.into(),
        detail: "".into(),
        value: (kind == "answered").then(|| "yes".to_string()),
        test: kind == "outcome",
    };
    let Accepted::New(item) = store.accept(inbound("m5", "c5")).await.unwrap() else {
        panic!("new")
    };
    store
        .commit(TurnCommit {
            inbox_seq: item.seq,
            conversation: "c5".into(),
            session: None,
            outbox: vec![],
            fence: None,
            at: 0,
            events: vec![
                event(100, "started"),
                event(200, "started"),
                event(100, "answered"),
                event(100, "outcome"),
            ],
        })
        .await
        .unwrap();
    let of_first = store.events(100, 200, 0, 10).await.unwrap();
    assert_eq!(
        of_first.iter().map(|(_, e)| e.clone()).collect::<Vec<_>>(),
        [
            event(100, "started"),
            event(100, "answered"),
            event(100, "outcome")
        ]
    );
    assert!(of_first.windows(2).all(|w| w[0].0 < w[1].0), "ids increase");
    let page = store.events(0, 1_000, 0, 2).await.unwrap();
    assert_eq!(page.len(), 2);
    let rest = store.events(0, 1_000, page[1].0, 10).await.unwrap();
    assert_eq!(rest.len(), 2);
    assert_eq!(rest[1].1, event(100, "outcome"));
    // A page may end between two events of one turn.
    assert_eq!(
        store.events(0, 1_000, rest[0].0, 1).await.unwrap(),
        rest[1..]
    );
    assert!(store.events(300, 400, 0, 10).await.unwrap().is_empty());

    // Retention: what is older than a time goes, a batch at a time; a dry
    // run counts. c2 and c3 were last changed at 0; c6 changed later stays,
    // and so does c7, whose timer is still to come. (A shared store keeps
    // the session of a conversation held: c2's and c3's are given up.)
    if store.shared() {
        for c in ["c2", "c3"] {
            let ttl = std::time::Duration::from_secs(60);
            let token = store.claim(c, ttl).await.unwrap().unwrap();
            store.unclaim(c, token).await.unwrap();
        }
    }
    for (key, conversation, at, due_at) in [("m6", "c6", 5_000, None), ("m7", "c7", 0, Some(9_000))]
    {
        let Accepted::New(item) = store.accept(inbound(key, conversation)).await.unwrap() else {
            panic!("new")
        };
        store
            .commit(TurnCommit {
                inbox_seq: item.seq,
                conversation: conversation.into(),
                session: Some(StoredSession {
                    data: b"s".to_vec(),
                    due_at,
                }),
                outbox: vec![],
                fence: None,
                at,
                events: Vec::new(),
            })
            .await
            .unwrap();
    }
    assert_eq!(
        store
            .expire(Expiring::Sessions, 1_000, 10, true)
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        store.sessions("", 10).await.unwrap().len(),
        4,
        "a dry run removes nothing"
    );
    assert_eq!(
        store
            .expire(Expiring::Sessions, 1_000, 1, false)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        store
            .expire(Expiring::Sessions, 1_000, 1, false)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        store
            .expire(Expiring::Sessions, 1_000, 1, false)
            .await
            .unwrap(),
        0
    );
    let left: Vec<String> = store
        .sessions("", 10)
        .await
        .unwrap()
        .into_iter()
        .map(|(c, _)| c)
        .collect();
    assert_eq!(left, ["c6", "c7"]);
    // What a turn reads agrees (sessions kept in memory are forgotten too).
    for (c, kept) in [("c2", false), ("c3", false), ("c6", true), ("c7", true)] {
        assert_eq!(store.session(c).await.unwrap().is_some(), kept, "{c}");
    }
    for (at, reason) in [(50, "old"), (5_000, "new")] {
        store
            .add_dead_letter(DeadLetter {
                id: 0,
                received_at: at,
                reason: reason.into(),
                headers: "{}".into(),
                body: b"x".to_vec(),
            })
            .await
            .unwrap();
    }
    assert_eq!(
        store
            .expire(Expiring::DeadLetters, 100, 10, true)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        store
            .expire(Expiring::DeadLetters, 100, 10, false)
            .await
            .unwrap(),
        1
    );
    let letters = store.dead_letters(None, 10).await.unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].reason, "new");
    assert!(store.remove_dead_letter(letters[0].id).await.unwrap());
    assert_eq!(
        store.expire(Expiring::Events, 210, 10, true).await.unwrap(),
        4
    );
    assert_eq!(
        store
            .expire(Expiring::Events, 150, 10, false)
            .await
            .unwrap(),
        3
    );
    assert_eq!(
        store
            .expire(Expiring::Events, 210, 10, false)
            .await
            .unwrap(),
        1
    );
    assert!(store.events(0, 1_000, 0, 10).await.unwrap().is_empty());

    // Erasure: everything of one conversation in one go; its message keys
    // stay, so a redelivery is still a duplicate.
    if store.shared() {
        store.claim("c8", Duration::from_secs(60)).await.unwrap();
    }
    let Accepted::New(run) = store.accept(inbound("m8", "c8")).await.unwrap() else {
        panic!("new")
    };
    let Accepted::New(_waiting) = store.accept(inbound("m9", "c8")).await.unwrap() else {
        panic!("new")
    };
    store
        .commit(TurnCommit {
            inbox_seq: run.seq,
            conversation: "c8".into(),
            session: Some(StoredSession {
                data: b"c8's".to_vec(),
                due_at: Some(99),
            }),
            outbox: vec![b"to c8".to_vec()],
            fence: None,
            at: 7,
            events: vec![LogEvent {
                conversation: "h8".into(),
                ..event(300, "started")
            }],
        })
        .await
        .unwrap();
    store
        .add_dead_letter(DeadLetter {
            id: 0,
            received_at: 7,
            reason: "unusable".into(),
            headers: "{}".into(),
            body: br#"{"conversation":"c8"}"#.to_vec(),
        })
        .await
        .unwrap();
    let held = store.export("c8", "h8").await.unwrap();
    assert_eq!(held.session.as_deref(), Some(&b"c8's"[..]));
    assert_eq!(held.inbox.len(), 1);
    assert_eq!(held.outbox, [b"to c8".to_vec()]);
    assert_eq!(held.dead_letters.len(), 1);
    assert_eq!(held.events.len(), 1);
    let counts = Held {
        sessions: 1,
        inbox: 1,
        outbox: 1,
        dead_letters: 1,
        events: 1,
    };
    assert_eq!(store.erase("c8", "h8", true).await.unwrap(), counts);
    assert_eq!(
        store.export("c8", "h8").await.unwrap().events.len(),
        1,
        "a dry run"
    );
    assert!(store.session("c8").await.unwrap().is_some(), "a dry run");
    assert_eq!(store.erase("c8", "h8", false).await.unwrap(), counts);
    assert_eq!(store.export("c8", "h8").await.unwrap(), Export::default());
    assert_eq!(store.session("c8").await.unwrap(), None);
    assert_eq!(
        store.erase("c8", "h8", false).await.unwrap(),
        Held::default()
    );
    assert_eq!(
        store.accept(inbound("m8", "c8")).await.unwrap(),
        Accepted::Duplicate
    );
    assert!(store
        .due_timers(1_000, 10)
        .await
        .unwrap()
        .iter()
        .all(|(c, _)| c != "c8"));

    // Folding: a period's runs become hourly roll-ups, their rows go, in one
    // transaction; roll-ups of the same key add up.
    assert_eq!(store.oldest_run().await.unwrap(), None);
    let Accepted::New(item) = store.accept(inbound("m10", "c10")).await.unwrap() else {
        panic!("new")
    };
    store
        .commit(TurnCommit {
            inbox_seq: item.seq,
            conversation: "c10".into(),
            session: None,
            outbox: vec![],
            fence: None,
            at: 0,
            events: vec![event(500, "started"), event(7_200_000, "started")],
        })
        .await
        .unwrap();
    assert_eq!(store.oldest_run().await.unwrap(), Some(500));
    let rollup = Rollup {
        hour: 0,
        flow_version: "v".into(),
        channel: "whatsapp".into(),
        test: false,
        kind: "started".into(),
        key: String::new(),
        value: String::new(),
        count: 1,
    };
    assert_eq!(
        store
            .fold(0, 3_600_000, vec![rollup.clone()])
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        store
            .fold(0, 3_600_000, vec![rollup.clone()])
            .await
            .unwrap(),
        0
    );
    assert_eq!(store.oldest_run().await.unwrap(), Some(7_200_000));
    assert_eq!(
        store.rollups(0, 3_600_000).await.unwrap(),
        [Rollup {
            count: 2,
            ..rollup.clone()
        }]
    );
    assert!(store
        .rollups(3_600_000, 7_200_000)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        store.expire(Expiring::Rollups, 1, 10, false).await.unwrap(),
        1
    );
    assert!(store.rollups(0, 3_600_000).await.unwrap().is_empty());
    assert_eq!(store.fold(0, 10_000_000, vec![]).await.unwrap(), 1);

    // Cursors.
    assert_eq!(store.cursor("poll").await.unwrap(), None);
    store.set_cursor("poll", "abc").await.unwrap();
    store.set_cursor("poll", "def").await.unwrap();
    assert_eq!(store.cursor("poll").await.unwrap().as_deref(), Some("def"));

    // A message accepted with its turn's commit: written done, with the
    // session and the replies; its key again writes nothing.
    let turn = |data: &[u8], reply: &[u8]| TurnCommit {
        inbox_seq: 0,
        conversation: "c9".into(),
        session: Some(StoredSession {
            data: data.to_vec(),
            due_at: None,
        }),
        outbox: vec![reply.to_vec()],
        fence: None,
        at: 0,
        events: Vec::new(),
    };
    let pending_before = store.pending(100).await.unwrap();
    let (seq, ids) = store
        .accept_and_commit(inbound("k9", "c9"), turn(b"s9", b"r9"))
        .await
        .unwrap()
        .expect("a new key");
    assert!(seq > 0 && ids.len() == 1);
    assert_eq!(store.pending(100).await.unwrap(), pending_before);
    assert_eq!(store.session("c9").await.unwrap().unwrap().data, b"s9");
    let queued = store.outbox_of("c9", 0, 10).await.unwrap();
    assert_eq!((queued[0].id, &queued[0].payload[..]), (ids[0], &b"r9"[..]));
    assert_eq!(
        store
            .accept_and_commit(inbound("k9", "c9"), turn(b"again", b"again"))
            .await
            .unwrap(),
        None
    );
    assert_eq!(store.session("c9").await.unwrap().unwrap().data, b"s9");
    assert_eq!(store.outbox_of("c9", 0, 10).await.unwrap().len(), 1);
    assert_eq!(
        store.accept(inbound("k9", "c9")).await.unwrap(),
        Accepted::Duplicate
    );
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
                fence: None,
                at: 0,
                events: Vec::new(),
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

/// Two bots of one store: `b` keeps the whole contract while `a`'s rows sit
/// beside its own, with the same keys and conversation ids, and neither sees
/// the other's.
async fn two_bots(a: &dyn StateStore, b: &dyn StateStore) {
    if a.shared() {
        a.claim("c1", Duration::from_secs(60)).await.unwrap();
    }
    let Accepted::New(kept) = a.accept(inbound("m1", "c1")).await.unwrap() else {
        panic!("new")
    };
    let Accepted::New(first) = a.accept(inbound("m0", "c1")).await.unwrap() else {
        panic!("new")
    };
    let ids = a
        .commit(TurnCommit {
            inbox_seq: first.seq,
            conversation: "c1".into(),
            session: Some(StoredSession {
                data: b"acme's".to_vec(),
                due_at: Some(1),
            }),
            outbox: vec![b"to acme's customer".to_vec()],
            fence: None,
            at: 0,
            events: vec![LogEvent {
                at: 150,
                conversation: "acme".into(),
                run: 150,
                flow_version: "1".into(),
                state: "start".into(),
                channel: "livechat".into(),
                kind: "started".into(),
                detail: "".into(),
                value: None,
                test: false,
            }],
        })
        .await
        .unwrap();
    a.add_dead_letter(DeadLetter {
        id: 0,
        received_at: 1,
        reason: "acme's".into(),
        headers: "{}".into(),
        body: b"x".to_vec(),
    })
    .await
    .unwrap();
    a.set_cursor("poll", "acme's").await.unwrap();
    contract(b).await;
    // Nothing of b's reaches a, and a's ids are not b's to remove.
    b.delivered(ids[0]).await.unwrap();
    let outbox = a.outbox(0, 10).await.unwrap();
    assert_eq!(outbox.len(), 1);
    assert_eq!(outbox[0].payload, b"to acme's customer");
    let pending = a.pending(10).await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].seq, kept.seq);
    assert_eq!(a.session("c1").await.unwrap().unwrap().data, b"acme's");
    assert_eq!(a.due_timers(10, 10).await.unwrap(), [("c1".to_owned(), 1)]);
    assert_eq!(a.dead_letters(None, 10).await.unwrap().len(), 1);
    assert_eq!(a.cursor("poll").await.unwrap().as_deref(), Some("acme's"));
    let log = a.events(0, 1_000, 0, 10).await.unwrap();
    assert_eq!(
        log.len(),
        1,
        "b's retention left a's event log alone: {log:?}"
    );
    assert_eq!(log[0].1.conversation, "acme");
}

/// One file holds several bots, each under its name, across a reopen too.
#[tokio::test]
async fn bots_sharing_a_sqlite_file_see_only_their_own_rows() {
    let path = temp_db("bots");
    let file = SqliteStore::open(&path, opts(5, 64)).unwrap();
    two_bots(
        &file.bot("acme").await.unwrap(),
        &file.bot("globex").await.unwrap(),
    )
    .await;
    // One query finds every bot's due timers, each with its bot.
    let due = file
        .due_timers_of_every_bot(10, 100)
        .await
        .unwrap()
        .unwrap();
    assert!(due.contains(&("acme".into(), "c1".into(), 1)), "{due:?}");
    assert!(due.iter().all(|(bot, ..)| bot == "acme" || bot == "globex"));
    assert_eq!(
        MemoryStore::new()
            .due_timers_of_every_bot(10, 100)
            .await
            .unwrap(),
        None
    );
    drop(file);
    let file = SqliteStore::open(&path, opts(5, 64)).unwrap();
    let a = file.bot("acme").await.unwrap();
    assert_eq!(a.session("c1").await.unwrap().unwrap().data, b"acme's");
    assert_eq!(
        file.session("c1").await.unwrap(),
        None,
        "the single bot's rows are its own"
    );
}

/// One schema and one pool hold every bot: each sees its own rows and its
/// own notifications, and a hundred bots at once stay within the pool.
#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bots_sharing_a_postgres_schema_see_only_their_own_rows_within_one_pool() {
    let Some(url) = postgres_url("bots_sharing_a_postgres_schema") else {
        return;
    };
    let (db, a, b) = postgres_two_bots(&url, "bots").await;
    two_bots(&a, &b).await;
    let due = db.due_timers_of_every_bot(10, 100).await.unwrap().unwrap();
    assert!(due.contains(&("acme".into(), "c1".into(), 1)), "{due:?}");
    let mut to_a = a.listen().await.unwrap().unwrap();
    let mut to_b = b.listen().await.unwrap().unwrap();
    // (The listening connection may need a moment before it hears.)
    async fn heard(rx: &mut tokio::sync::mpsc::UnboundedReceiver<String>) -> Option<String> {
        tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .ok()
            .flatten()
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    b.notify("c9").await.unwrap();
    assert_eq!(heard(&mut to_b).await.as_deref(), Some("c9"));
    a.notify("c8").await.unwrap();
    assert_eq!(
        heard(&mut to_a).await.as_deref(),
        Some("c8"),
        "and not b's c9"
    );
    let names: Vec<String> = (0..100).map(|i| format!("bot{i}")).collect();
    let many: Vec<PostgresStore> =
        futures_util::future::try_join_all(names.iter().map(|n| db.bot(n)))
            .await
            .unwrap();
    futures_util::future::try_join_all(many.iter().map(|s| s.ping()))
        .await
        .unwrap();
    let (open, max) = db.connections();
    assert!(open <= max && max == 16, "{open} of {max}");
}

/// A file made before one file held every bot (schema version 4): its rows
/// become the single bot's, nothing is lost, and named bots start empty.
#[tokio::test]
async fn a_file_of_one_bot_from_before_is_the_single_bots_after_the_upgrade() {
    let path = temp_db("upgrade");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE inbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL UNIQUE,
                conversation TEXT NOT NULL, payload BLOB NOT NULL, received_at INTEGER NOT NULL,
                done INTEGER NOT NULL DEFAULT 0, attempts INTEGER NOT NULL DEFAULT 0);
             CREATE INDEX inbox_pending ON inbox(seq) WHERE done = 0;
             CREATE TABLE sessions (conversation TEXT PRIMARY KEY, data BLOB NOT NULL, due_at INTEGER) WITHOUT ROWID;
             CREATE INDEX sessions_due ON sessions(due_at) WHERE due_at IS NOT NULL;
             CREATE TABLE outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, conversation TEXT NOT NULL, payload BLOB NOT NULL);
             CREATE TABLE cursors (name TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
             CREATE TABLE dead_letters (id INTEGER PRIMARY KEY AUTOINCREMENT, received_at INTEGER NOT NULL,
                reason TEXT NOT NULL, headers TEXT NOT NULL, body BLOB NOT NULL);
             CREATE TABLE budget_calls (id INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL, at INTEGER NOT NULL);
             CREATE INDEX budget_calls_key ON budget_calls(key, at);
             CREATE INDEX outbox_conversation ON outbox(conversation, id);
             INSERT INTO inbox (key, conversation, payload, received_at) VALUES ('m1', 'c1', x'01', 1);
             INSERT INTO sessions VALUES ('c1', x'02', 5);
             INSERT INTO outbox (conversation, payload) VALUES ('c1', x'03');
             INSERT INTO cursors VALUES ('poll', 'here');
             INSERT INTO dead_letters (received_at, reason, headers, body) VALUES (1, 'old', '{}', x'04');
             PRAGMA user_version = 4;",
        )
        .unwrap();
    }
    let file = SqliteStore::open(&path, opts(5, 64)).unwrap();
    assert_eq!(file.pending(10).await.unwrap()[0].key, "m1");
    assert_eq!(file.session("c1").await.unwrap().unwrap().data, [2]);
    assert_eq!(file.outbox(0, 10).await.unwrap()[0].payload, [3]);
    assert_eq!(file.cursor("poll").await.unwrap().as_deref(), Some("here"));
    assert_eq!(file.dead_letters(None, 10).await.unwrap()[0].reason, "old");
    assert_eq!(
        file.due_timers(10, 10).await.unwrap(),
        [("c1".to_owned(), 5)]
    );
    assert_eq!(
        file.accept(inbound("m1", "c1")).await.unwrap(),
        Accepted::Duplicate
    );
    // New rows number after the old ones.
    let Accepted::New(next) = file.accept(inbound("m2", "c1")).await.unwrap() else {
        panic!("new")
    };
    assert!(next.seq > 1);
    let other = file.bot("acme").await.unwrap();
    assert!(other.pending(10).await.unwrap().is_empty());
    assert!(other.session("c1").await.unwrap().is_none());
}

/// Qpien's budget is kept in the file: a process that opens it again knows
/// what the one before spent (calls counted from their end, or for their hold
/// when they never ended), and a new file says it knows nothing.
#[tokio::test]
async fn sqlite_keeps_the_request_budget_across_a_reopen() {
    use flowbot::internals::qpien::limit::Grant;
    let path = temp_db("budget");
    let minute = Duration::from_secs(60);
    {
        let store = SqliteStore::open(&path, opts(5, 64)).unwrap();
        assert_eq!(store.keeps_budget(), Some(false), "a new file knew nothing");
        for _ in 0..2 {
            let grant = store.take_budget("k", 3, minute, minute).await.unwrap();
            let Some(Grant::Granted(id)) = grant else {
                panic!("{grant:?}")
            };
            store.budget_done(id).await.unwrap();
        }
        // Under way when the process dies: it counts for its hold.
        let third = store.take_budget("k", 3, minute, minute).await.unwrap();
        assert!(matches!(third, Some(Grant::Granted(_))), "{third:?}");
    }
    let store = SqliteStore::open(&path, opts(5, 64)).unwrap();
    assert_eq!(store.keeps_budget(), Some(true));
    match store.take_budget("k", 3, minute, minute).await.unwrap() {
        Some(Grant::Wait(wait)) => assert!(wait > Duration::from_secs(50), "{wait:?}"),
        other => panic!("the window was spent before the reopen: {other:?}"),
    }
    assert!(
        matches!(
            store.take_budget("other", 3, minute, minute).await.unwrap(),
            Some(Grant::Granted(_))
        ),
        "another key's budget is its own"
    );
}

/// A new database and its journal are this user's only (0600): they hold
/// customers' words.
#[tokio::test]
async fn a_new_sqlite_database_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let path = temp_db("private");
    let store = SqliteStore::open(&path, opts(5, 64)).unwrap();
    store.accept(inbound("m1", "c1")).await.unwrap();
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    for file in [path.clone(), std::path::PathBuf::from(wal)] {
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", file.display());
    }
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

/// A request that fails fails alone, whatever batch it shares: the others
/// in it are committed and answered (a trigger refuses one message key).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_failing_request_fails_alone_in_its_batch() {
    let path = temp_db("batch-failure");
    let store = Arc::new(SqliteStore::open(&path, opts(5, 64)).unwrap());
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute_batch(
            "CREATE TRIGGER poison BEFORE INSERT ON inbox WHEN NEW.key LIKE '%-20'
             BEGIN SELECT RAISE(ABORT, 'poisoned'); END;",
        )
        .unwrap();
    for round in 0..5 {
        let tasks: Vec<_> = (0..40)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    let item = inbound(&format!("k{round}-{i}"), "c");
                    (i, store.accept(item).await)
                })
            })
            .collect();
        for t in tasks {
            let (i, result) = t.await.unwrap();
            match result {
                Err(e) => assert!(i == 20 && e.to_string().contains("poisoned"), "{i}: {e}"),
                Ok(Accepted::New(item)) => {
                    assert_ne!(i, 20);
                    assert_eq!(item.key, format!("k{round}-{i}"));
                    assert_eq!(
                        item.payload,
                        format!("payload of k{round}-{i}").into_bytes()
                    );
                }
                Ok(other) => panic!("{other:?}"),
            }
        }
    }
    assert_eq!(store.pending(1000).await.unwrap().len(), 5 * 39);
}

#[test]
fn a_bad_path_is_a_clear_error() {
    let err = SqliteStore::open("/proc/flowbot/x.db", opts(1, 8)).unwrap_err();
    assert!(err.to_string().contains("/proc/flowbot"), "{err}");
}

/// SQLite serves one process: a second store on the same file is refused,
/// naming the backend that serves several; once the first is gone, it opens.
#[test]
fn a_second_process_on_one_sqlite_file_is_refused() {
    let path = temp_db("one-process");
    let first = SqliteStore::open(&path, opts(1, 16)).unwrap();
    let second = SqliteStore::open(&path, opts(1, 16)).unwrap_err();
    assert!(second.0.contains("another flowbot process"), "{second}");
    assert!(
        second.0.contains("store.backend = \"postgres\""),
        "{second}"
    );
    drop(first);
    SqliteStore::open(&path, opts(1, 16)).unwrap();
}

/// The PostgreSQL database of the tests, from `FLOWBOT_TEST_POSTGRES_URL`
/// (`.ci/run` sets it); `None`, with a note on how to run them, when unset.
pub(crate) fn postgres_url(test: &str) -> Option<String> {
    match std::env::var("FLOWBOT_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            // Straight to stderr, past the test harness's capture, so that
            // a plain `cargo test` shows what it did not run.
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "skipped {test}: set FLOWBOT_TEST_POSTGRES_URL \
                 (e.g. postgres://postgres@127.0.0.1:5432/postgres) to run the PostgreSQL tests"
            );
            None
        }
    }
}

/// A fresh schema of its own for each test.
#[cfg(feature = "postgres")]
pub(crate) async fn postgres_store(url: &str, name: &str) -> PostgresStore {
    let schema = format!("test_{}_{name}", std::process::id());
    let client = postgres_admin(url).await;
    client
        .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .await
        .unwrap();
    PostgresStore::open(PostgresOptions {
        url: url.into(),
        schema,
        ..PostgresOptions::default()
    })
    .await
    .unwrap()
}

/// A fresh schema (see [`postgres_store`]) and two bots on it, `acme` and
/// `globex`.
#[cfg(feature = "postgres")]
async fn postgres_two_bots(url: &str, name: &str) -> (PostgresStore, PostgresStore, PostgresStore) {
    let db = postgres_store(url, name).await;
    let (a, b) = (
        db.bot("acme").await.unwrap(),
        db.bot("globex").await.unwrap(),
    );
    (db, a, b)
}

#[cfg(feature = "postgres")]
async fn postgres_admin(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
}

/// Delivered marks made at once go out together (a statement for many), and
/// each takes out its own bot's reply only.
#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_delivered_marks_made_at_once_each_take_out_their_own_reply() {
    let Some(url) = postgres_url("postgres_delivered_marks") else {
        return;
    };
    let (_db, a, b) = postgres_two_bots(&url, "marks").await;
    let mut queued = Vec::new();
    for (store, key) in [(&a, "ma"), (&b, "mb")] {
        // (A shared store gives the work of claimed conversations only.)
        assert!(store
            .claim("c1", Duration::from_secs(60))
            .await
            .unwrap()
            .is_some());
        let Accepted::New(item) = store.accept(inbound(key, "c1")).await.unwrap() else {
            panic!("new")
        };
        let ids = store
            .commit(TurnCommit {
                inbox_seq: item.seq,
                conversation: "c1".into(),
                session: None,
                outbox: (0..60).map(|i| format!("r{i}").into_bytes()).collect(),
                fence: None,
                at: 0,
                events: Vec::new(),
            })
            .await
            .unwrap();
        queued.push(ids);
    }
    // A mark made with the wrong bot's handle takes nothing out.
    a.delivered(queued[1][0]).await.unwrap();
    assert_eq!(b.outbox(0, 100).await.unwrap().len(), 60);
    // All but the last reply of each bot, at once.
    let marks = queued[0][..59]
        .iter()
        .map(|id| (&a, *id))
        .chain(queued[1][..59].iter().map(|id| (&b, *id)));
    futures_util::future::try_join_all(marks.map(|(store, id)| store.delivered(id)))
        .await
        .unwrap();
    for (store, ids) in [(&a, &queued[0]), (&b, &queued[1])] {
        let left: Vec<u64> = store
            .outbox(0, 100)
            .await
            .unwrap()
            .iter()
            .map(|o| o.id)
            .collect();
        assert_eq!(left, [ids[59]]);
    }
}

#[cfg(feature = "postgres")]
#[tokio::test]
async fn postgres_store_keeps_the_contract() {
    let Some(url) = postgres_url("postgres_store_keeps_the_contract") else {
        return;
    };
    contract(&postgres_store(&url, "contract").await).await;
}

/// PostgreSQL's acceptance says, in the same request, which older messages of
/// the conversation are still pending (an instance that runs them all skips
/// reading them); a duplicate says nothing.
#[cfg(feature = "postgres")]
#[tokio::test]
async fn postgres_acceptance_names_the_older_pending_messages() {
    let Some(url) = postgres_url("postgres_acceptance_names_the_older_pending_messages") else {
        return;
    };
    let store = postgres_store(&url, "older").await;
    let first = |r: (Accepted, Option<Vec<u64>>)| match r {
        (Accepted::New(item), older) => (item, older.expect("postgres tells")),
        other => panic!("new: {other:?}"),
    };
    let (a, older) = first(
        store
            .accept_seeing_older(inbound("m1", "c1"))
            .await
            .unwrap(),
    );
    assert_eq!(older, Vec::<u64>::new());
    let (b, older) = first(
        store
            .accept_seeing_older(inbound("m2", "c1"))
            .await
            .unwrap(),
    );
    assert_eq!(older, vec![a.seq]);
    // Another conversation's are not named.
    let (_, older) = first(
        store
            .accept_seeing_older(inbound("m3", "c2"))
            .await
            .unwrap(),
    );
    assert_eq!(older, Vec::<u64>::new());
    store
        .commit(TurnCommit {
            inbox_seq: a.seq,
            conversation: "c1".into(),
            session: None,
            outbox: Vec::new(),
            fence: None,
            at: 0,
            events: Vec::new(),
        })
        .await
        .unwrap();
    let (_, older) = first(
        store
            .accept_seeing_older(inbound("m4", "c1"))
            .await
            .unwrap(),
    );
    assert_eq!(older, vec![b.seq], "a committed message is not pending");
    let duplicate = store
        .accept_seeing_older(inbound("m2", "c1"))
        .await
        .unwrap();
    assert_eq!(duplicate, (Accepted::Duplicate, None));
}

/// Instances started together on a fresh database migrate it once, without
/// racing ("table inbox already exists").
#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_migrations_are_safe_under_a_simultaneous_start() {
    let Some(url) = postgres_url("postgres_migrations_are_safe_under_a_simultaneous_start") else {
        return;
    };
    let schema = format!("test_{}_together", std::process::id());
    postgres_admin(&url)
        .await
        .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .await
        .unwrap();
    let open = || {
        PostgresStore::open(PostgresOptions {
            url: url.clone(),
            schema: schema.clone(),
            ..PostgresOptions::default()
        })
    };
    let (a, b, c) = tokio::join!(open(), open(), open());
    let (a, _b, _c) = (a.unwrap(), b.unwrap(), c.unwrap());
    contract(&a).await;
}

#[cfg(feature = "postgres")]
#[tokio::test]
async fn postgres_unreachable_is_a_clear_error() {
    let e = PostgresStore::open(PostgresOptions {
        url: "postgres://postgres@127.0.0.1:9/none".into(),
        connect_timeout: std::time::Duration::from_secs(1),
        ..PostgresOptions::default()
    })
    .await
    .unwrap_err();
    assert!(e.0.contains("postgres"), "{e}");
    assert!(
        e.0.to_lowercase().contains("connection refused") || e.0.contains("error connecting"),
        "{e}"
    );
}

/// Two instances on one database: a conversation is claimed by one at a
/// time; the token changes when it changes hands; a commit under an old token
/// is refused; an expired claim's work is an orphan; `NOTIFY` reaches the
/// other instance.
#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_claims_fence_and_wake() {
    use std::time::Duration;
    let Some(url) = postgres_url("postgres_claims_fence_and_wake") else {
        return;
    };
    let schema = format!("test_{}_claims", std::process::id());
    postgres_admin(&url)
        .await
        .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .await
        .unwrap();
    let open = |owner: &str| {
        PostgresStore::open(PostgresOptions {
            url: url.clone(),
            schema: schema.clone(),
            owner: owner.into(),
            ..PostgresOptions::default()
        })
    };
    let a = open("a").await.unwrap();
    let b = open("b").await.unwrap();
    let mut woken = b.listen().await.unwrap().unwrap();
    let short = Duration::from_millis(300);

    let t1 = a.claim("c1", short).await.unwrap().unwrap();
    assert_eq!(b.claim("c1", short).await.unwrap(), None, "held by a");
    assert_eq!(
        a.claim("c1", short).await.unwrap(),
        Some(t1),
        "a keeps its token"
    );
    let Accepted::New(item) = b.accept(inbound("m1", "c1")).await.unwrap() else {
        panic!("new")
    };
    // b wakes a (here: a wakes b, who listens).
    tokio::time::sleep(Duration::from_millis(200)).await;
    a.notify("c1").await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), woken.recv())
        .await
        .unwrap();
    assert_eq!(got.as_deref(), Some("c1"));
    // Only the holder sees the work.
    assert_eq!(a.pending(10).await.unwrap().len(), 1);
    assert!(b.pending(10).await.unwrap().is_empty());
    assert_eq!(b.pending_of("c1").await.unwrap().len(), 1);
    assert!(a.orphans(10).await.unwrap().is_empty());

    // a stops renewing: its claim expires, the work is an orphan, b takes it.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(b.orphans(10).await.unwrap(), ["c1"]);
    let t2 = b
        .claim("c1", Duration::from_secs(60))
        .await
        .unwrap()
        .unwrap();
    assert_ne!(t1, t2);
    assert_eq!(
        a.renew(&["c1".into()], short).await.unwrap(),
        ["c1"],
        "lost"
    );
    // a's turn, computed under the old token, cannot be committed.
    let commit = |fence| TurnCommit {
        inbox_seq: item.seq,
        conversation: "c1".into(),
        session: None,
        outbox: vec![b"r".to_vec()],
        fence: Some(fence),
        at: 0,
        events: Vec::new(),
    };
    let refused = a.commit(commit(t1)).await.unwrap_err();
    assert!(refused.is_fenced(), "{refused}");
    assert_eq!(b.commit(commit(t2)).await.unwrap().len(), 1);
    assert_eq!(b.outbox(0, 10).await.unwrap().len(), 1);
    assert!(a.outbox(0, 10).await.unwrap().is_empty());
    b.unclaim("c1", t2).await.unwrap();
    assert_eq!(a.orphans(10).await.unwrap(), ["c1"], "its outbox is left");
}

/// Work for one instance at a time (the poller): one leads, the others do
/// not, and when the leader's connections go (it stopped or died), another
/// takes the lead.
#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_one_instance_leads_the_polling() {
    use std::time::Duration;
    let Some(url) = postgres_url("postgres_one_instance_leads_the_polling") else {
        return;
    };
    let schema = format!("test_{}_lead", std::process::id());
    postgres_admin(&url)
        .await
        .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .await
        .unwrap();
    let open = || {
        PostgresStore::open(PostgresOptions {
            url: url.clone(),
            schema: schema.clone(),
            ..PostgresOptions::default()
        })
    };
    let a = open().await.unwrap();
    let b = open().await.unwrap();
    assert!(a.lead("poll").await.unwrap(), "the first to ask leads");
    assert!(!b.lead("poll").await.unwrap(), "one leader at a time");
    assert!(a.lead("poll").await.unwrap(), "the leader keeps the lead");
    assert!(
        b.lead("other work").await.unwrap(),
        "each work has its own lead"
    );
    drop(a);
    let end = tokio::time::Instant::now() + Duration::from_secs(10);
    while !b.lead("poll").await.unwrap() {
        assert!(
            tokio::time::Instant::now() < end,
            "the lead was not taken over"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A memory or SQLite store is one process: it always leads.
    assert!(MemoryStore::new().lead("poll").await.unwrap());
}

/// A bot's schema from when each bot had one (`<schema>_<bot>`, before the
/// bot column): `import_schema` moves its rows into the one schema, under
/// that bot, and renames it, once.
#[cfg(feature = "postgres")]
#[tokio::test]
async fn a_bots_postgres_schema_from_before_moves_into_the_one_schema() {
    let Some(url) = postgres_url("a_bots_postgres_schema_from_before") else {
        return;
    };
    let db = postgres_store(&url, "import").await;
    let old = format!("test_{}_import_acme", std::process::id());
    let admin = postgres_admin(&url).await;
    admin
        .batch_execute(&format!(
            "DROP SCHEMA IF EXISTS {old} CASCADE; DROP SCHEMA IF EXISTS {old}_imported CASCADE;
             CREATE SCHEMA {old};
             CREATE TABLE {old}.inbox (seq BIGSERIAL PRIMARY KEY, key TEXT NOT NULL UNIQUE,
                conversation TEXT NOT NULL, payload BYTEA NOT NULL, received_at BIGINT NOT NULL,
                done BOOLEAN NOT NULL DEFAULT false, attempts INTEGER NOT NULL DEFAULT 0);
             CREATE TABLE {old}.sessions (conversation TEXT PRIMARY KEY, data BYTEA NOT NULL, due_at BIGINT);
             CREATE TABLE {old}.outbox (id BIGSERIAL PRIMARY KEY, conversation TEXT NOT NULL, payload BYTEA NOT NULL);
             CREATE TABLE {old}.cursors (name TEXT PRIMARY KEY, value TEXT NOT NULL);
             CREATE TABLE {old}.dead_letters (id BIGSERIAL PRIMARY KEY, received_at BIGINT NOT NULL,
                reason TEXT NOT NULL, headers TEXT NOT NULL, body BYTEA NOT NULL);
             CREATE TABLE {old}.budget_calls (key TEXT NOT NULL, at BIGINT NOT NULL, id BIGSERIAL PRIMARY KEY);
             INSERT INTO {old}.inbox (key, conversation, payload, received_at) VALUES ('m1', 'c1', '\\x01', 1);
             INSERT INTO {old}.inbox (key, conversation, payload, received_at, done) VALUES ('m0', 'c1', '', 1, true);
             INSERT INTO {old}.sessions VALUES ('c1', '\\x02', 5);
             INSERT INTO {old}.outbox (conversation, payload) VALUES ('c1', '\\x03');
             INSERT INTO {old}.cursors VALUES ('poll', 'here');"
        ))
        .await
        .unwrap();
    let n = db.import_schema("acme", &old).await.unwrap().unwrap();
    assert_eq!(
        (n.inbox, n.sessions, n.outbox, n.dead_letters),
        (2, 1, 1, 0)
    );
    let acme = db.bot("acme").await.unwrap();
    assert_eq!(acme.session("c1").await.unwrap().unwrap().data, [2]);
    assert_eq!(acme.outbox_of("c1", 0, 10).await.unwrap()[0].payload, [3]);
    assert_eq!(acme.pending_of("c1").await.unwrap()[0].key, "m1");
    assert_eq!(acme.cursor("poll").await.unwrap().as_deref(), Some("here"));
    assert_eq!(
        acme.accept(inbound("m0", "c1")).await.unwrap(),
        Accepted::Duplicate,
        "the keys of messages run came too"
    );
    assert!(
        db.session("c1").await.unwrap().is_none(),
        "the single bot's rows are its own"
    );
    // Once: the schema was renamed.
    assert_eq!(db.import_schema("acme", &old).await.unwrap(), None);
    admin
        .batch_execute(&format!("DROP SCHEMA {old}_imported CASCADE"))
        .await
        .unwrap();
}

/// PostgreSQL keeps the session a turn committed under a claim, and gives it
/// back to the conversation's next turn under the same claim without reading
/// its row; a turn under another claim, an erasure, a refused commit and the
/// retention sweep each go back to the row (and the sweep leaves a session
/// whose conversation is held).
#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_turn_under_the_same_claim_reads_what_the_last_one_committed() {
    let Some(url) = postgres_url("postgres_session_kept") else {
        return;
    };
    let store = postgres_store(&url, "kept").await;
    let schema = format!("test_{}_kept", std::process::id());
    let admin = postgres_admin(&url).await;
    // A change no instance makes: shows whether an answer came from the row.
    let overwrite = |data: &'static str| {
        let (admin, schema) = (&admin, &schema);
        async move {
            admin
                .execute(
                    &format!("UPDATE {schema}.sessions SET data = $1"),
                    &[&data.as_bytes()],
                )
                .await
                .unwrap()
        }
    };
    let data = |s: Option<StoredSession>| s.map(|s| String::from_utf8(s.data).unwrap());
    let commit = |store: &PostgresStore, key: &'static str, fence: u64, session: &'static str| {
        let store = store.clone();
        async move {
            let Accepted::New(item) = store.accept(inbound(key, "c1")).await.unwrap() else {
                panic!("new")
            };
            store
                .commit(TurnCommit {
                    inbox_seq: item.seq,
                    conversation: "c1".into(),
                    session: Some(StoredSession {
                        data: session.as_bytes().to_vec(),
                        due_at: None,
                    }),
                    outbox: Vec::new(),
                    fence: Some(fence),
                    at: 1,
                    events: Vec::new(),
                })
                .await
        }
    };
    let ttl = Duration::from_secs(60);
    let t1 = store.claim("c1", ttl).await.unwrap().unwrap();
    commit(&store, "m1", t1, "one").await.unwrap();
    assert_eq!(overwrite("row").await, 1);
    let read = |fence| store.session_for_turn("c1", fence);
    assert_eq!(data(read(Some(t1)).await.unwrap()).as_deref(), Some("one"));
    assert_eq!(
        data(read(Some(t1 + 1)).await.unwrap()).as_deref(),
        Some("row"),
        "another claim"
    );
    assert_eq!(data(read(None).await.unwrap()).as_deref(), Some("row"));
    assert_eq!(
        data(store.session("c1").await.unwrap()).as_deref(),
        Some("row")
    );

    // An erasure: nothing left, in memory either.
    store.erase("c1", "hash", false).await.unwrap();
    assert_eq!(read(Some(t1)).await.unwrap(), None);

    // A commit refused (its claim changed hands): the row is read again.
    let t2 = store.claim("c1", ttl).await.unwrap().unwrap();
    commit(&store, "m2", t2, "two").await.unwrap();
    assert_eq!(data(read(Some(t2)).await.unwrap()).as_deref(), Some("two"));
    let refused = commit(&store, "m3", t2 + 100, "three").await.unwrap_err();
    assert!(refused.is_fenced(), "{refused}");
    overwrite("row").await;
    assert_eq!(data(read(Some(t2)).await.unwrap()).as_deref(), Some("row"));

    // The retention sweep leaves a held conversation's session; once the
    // claim is given up, the session goes, in memory too.
    commit(&store, "m4", t2, "four").await.unwrap();
    let far = i64::MAX / 2;
    assert_eq!(
        store
            .expire(Expiring::Sessions, far, 10, false)
            .await
            .unwrap(),
        0
    );
    assert_eq!(data(read(Some(t2)).await.unwrap()).as_deref(), Some("four"));
    store.unclaim("c1", t2).await.unwrap();
    assert_eq!(
        store
            .expire(Expiring::Sessions, far, 10, false)
            .await
            .unwrap(),
        1
    );
    assert_eq!(read(Some(t2)).await.unwrap(), None);
}
