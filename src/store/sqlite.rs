//! The SQLite store: one file, WAL mode, schema migrations, and group commit.
//!
//! One thread owns the connection. Requests queue up while it works; it takes
//! all that are waiting (up to `max_batch`), runs them in one transaction,
//! commits once (one fsync for the batch), and only then answers them. So
//! every caller still gets "durable when it returns", while a busy bot pays
//! one commit per batch rather than per message. A batch in which a request
//! failed runs again with each request in its own savepoint, so the failure
//! is that request's alone.
//!
//! Why a thread of its own, even where the process has one core: measured
//! against a writer that is a task on the tokio worker itself (the same
//! batches, gathered by yielding until no more requests come: about 66
//! requests a commit), the thread was 4% faster with `durability = "full"`
//! and 4% slower with `"normal"`, for the same CPU a turn (BENCHMARKS.md,
//! "The store's writes on the worker"). On the worker, each commit's `fsync`
//! stops every connection and turn of the process until the disk answers,
//! and so does any long write (an expiry, an erasure); the thread lets them
//! run meanwhile, and with a second core it runs beside them. So there is
//! one writer, the thread. What it costs on one core is the hand-over: the
//! first request wakes the writer, which preempts the worker and would
//! commit that request nearly alone. So once its queue looks empty the
//! writer yields once: the worker runs on until its turns all wait on the
//! store, and their requests join the batch (on one core, about 25 turns a
//! commit instead of 1.7, and a context switch every third turn instead of
//! four a turn; see BENCHMARKS.md). With a core to spare the yield returns
//! at once.

use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::types::Type;
use rusqlite::{params, Connection, OptionalExtension};
use rusqlite_migration::{Migrations, M};
use tokio::sync::oneshot;

use super::*;

/// Dedup keys of processed messages are kept this long.
const KEEP_KEYS_MS: i64 = 7 * 24 * 3600 * 1000;

fn migrations() -> Migrations<'static> {
    Migrations::new(vec![
        M::up(
            "CREATE TABLE inbox (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            key TEXT NOT NULL UNIQUE,
            conversation TEXT NOT NULL,
            payload BLOB NOT NULL,
            received_at INTEGER NOT NULL,
            done INTEGER NOT NULL DEFAULT 0
        );
        CREATE INDEX inbox_pending ON inbox(seq) WHERE done = 0;
        CREATE TABLE sessions (
            conversation TEXT PRIMARY KEY,
            data BLOB NOT NULL,
            due_at INTEGER
        ) WITHOUT ROWID;
        CREATE INDEX sessions_due ON sessions(due_at) WHERE due_at IS NOT NULL;
        CREATE TABLE outbox (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            conversation TEXT NOT NULL,
            payload BLOB NOT NULL
        );
        CREATE TABLE cursors (name TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;",
        ),
        M::up(
            "CREATE TABLE dead_letters (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            received_at INTEGER NOT NULL,
            reason TEXT NOT NULL,
            headers TEXT NOT NULL,
            body BLOB NOT NULL
        );",
        ),
        M::up("ALTER TABLE inbox ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;"),
        // Qpien's request budget, kept across restarts (see `take_budget`).
        M::up(
            "CREATE TABLE budget_calls (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            key TEXT NOT NULL,
            at INTEGER NOT NULL
        );
        CREATE INDEX budget_calls_key ON budget_calls(key, at);
        CREATE INDEX outbox_conversation ON outbox(conversation, id);",
        ),
        // One file for every bot of the process: each row keyed by its bot
        // (0, named '', is the one bot of a single-bot process, and holds
        // what the file held before).
        M::up(
            "CREATE TABLE bots (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
        INSERT INTO bots (id, name) VALUES (0, '');
        CREATE TABLE inbox_by_bot (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            bot INTEGER NOT NULL,
            key TEXT NOT NULL,
            conversation TEXT NOT NULL,
            payload BLOB NOT NULL,
            received_at INTEGER NOT NULL,
            done INTEGER NOT NULL DEFAULT 0,
            attempts INTEGER NOT NULL DEFAULT 0,
            UNIQUE (bot, key)
        );
        INSERT INTO inbox_by_bot (seq, bot, key, conversation, payload, received_at, done, attempts)
            SELECT seq, 0, key, conversation, payload, received_at, done, attempts FROM inbox;
        DROP TABLE inbox;
        ALTER TABLE inbox_by_bot RENAME TO inbox;
        CREATE INDEX inbox_pending ON inbox(bot, seq) WHERE done = 0;
        CREATE INDEX inbox_done ON inbox(received_at) WHERE done = 1;
        CREATE TABLE sessions_by_bot (
            bot INTEGER NOT NULL,
            conversation TEXT NOT NULL,
            data BLOB NOT NULL,
            due_at INTEGER,
            PRIMARY KEY (bot, conversation)
        ) WITHOUT ROWID;
        INSERT INTO sessions_by_bot (bot, conversation, data, due_at)
            SELECT 0, conversation, data, due_at FROM sessions;
        DROP TABLE sessions;
        ALTER TABLE sessions_by_bot RENAME TO sessions;
        CREATE INDEX sessions_due ON sessions(due_at) WHERE due_at IS NOT NULL;
        CREATE TABLE outbox_by_bot (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            bot INTEGER NOT NULL,
            conversation TEXT NOT NULL,
            payload BLOB NOT NULL
        );
        INSERT INTO outbox_by_bot (id, bot, conversation, payload)
            SELECT id, 0, conversation, payload FROM outbox;
        DROP TABLE outbox;
        ALTER TABLE outbox_by_bot RENAME TO outbox;
        CREATE INDEX outbox_bot ON outbox(bot, id);
        CREATE INDEX outbox_conversation ON outbox(bot, conversation, id);
        CREATE TABLE cursors_by_bot (
            bot INTEGER NOT NULL,
            name TEXT NOT NULL,
            value TEXT NOT NULL,
            PRIMARY KEY (bot, name)
        ) WITHOUT ROWID;
        INSERT INTO cursors_by_bot (bot, name, value) SELECT 0, name, value FROM cursors;
        DROP TABLE cursors;
        ALTER TABLE cursors_by_bot RENAME TO cursors;
        ALTER TABLE dead_letters ADD COLUMN bot INTEGER NOT NULL DEFAULT 0;
        CREATE INDEX dead_letters_bot ON dead_letters(bot, id);",
        ),
        // The bot registry (see `registry.rs`).
        M::up(
            "CREATE TABLE registry (
            name TEXT PRIMARY KEY,
            spec TEXT NOT NULL,
            state TEXT NOT NULL,
            source TEXT NOT NULL,
            version INTEGER NOT NULL,
            updated_at INTEGER NOT NULL
        ) WITHOUT ROWID;
        CREATE INDEX registry_version ON registry(version);",
        ),
        // The conversation event log (see `crate::insights`), read by the
        // runs' start.
        M::up(
            "CREATE TABLE events (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            bot INTEGER NOT NULL,
            at INTEGER NOT NULL,
            conversation TEXT NOT NULL,
            run INTEGER NOT NULL,
            flow_version TEXT NOT NULL,
            state TEXT NOT NULL,
            channel TEXT NOT NULL,
            kind TEXT NOT NULL,
            detail TEXT NOT NULL,
            value TEXT,
            test INTEGER NOT NULL
        );
        CREATE INDEX events_run ON events(bot, run, id);",
        ),
        // `[retention]`: when each session last changed (those from before
        // count from the upgrade), and the event log by time.
        M::up(
            "ALTER TABLE sessions ADD COLUMN updated_at INTEGER;
        UPDATE sessions SET updated_at = CAST(strftime('%s', 'now') AS INTEGER) * 1000;
        CREATE INDEX sessions_updated ON sessions(bot, updated_at);
        CREATE INDEX events_at ON events(bot, at);
        CREATE INDEX dead_letters_received ON dead_letters(bot, received_at);
        CREATE TABLE rollups (
            bot INTEGER NOT NULL,
            hour INTEGER NOT NULL,
            flow_version TEXT NOT NULL,
            channel TEXT NOT NULL,
            test INTEGER NOT NULL,
            kind TEXT NOT NULL,
            key TEXT NOT NULL,
            value TEXT NOT NULL,
            count INTEGER NOT NULL,
            PRIMARY KEY (bot, hour, flow_version, channel, test, kind, key, value)
        ) WITHOUT ROWID;",
        ),
        // The event log, a row per turn (and run) instead of a row per
        // event: what a turn's events share is written once, the rest as a
        // JSON array of `[state, kind, detail, value]` (see `EVENT_ID_BITS`).
        M::up(
            "ALTER TABLE events RENAME TO events_by_event;
        DROP INDEX events_run;
        DROP INDEX events_at;
        CREATE TABLE events (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            bot INTEGER NOT NULL,
            at INTEGER NOT NULL,
            conversation TEXT NOT NULL,
            run INTEGER NOT NULL,
            flow_version TEXT NOT NULL,
            channel TEXT NOT NULL,
            test INTEGER NOT NULL,
            n INTEGER NOT NULL,
            rows TEXT NOT NULL
        );
        INSERT INTO events (id, bot, at, conversation, run, flow_version, channel, test, n, rows)
            SELECT id, bot, at, conversation, run, flow_version, channel, test, 1,
            json_array(json_array(state, kind, detail, value)) FROM events_by_event;
        DROP TABLE events_by_event;
        CREATE INDEX events_run ON events(bot, run, id);
        CREATE INDEX events_at ON events(bot, at);",
        ),
        // The outbox by bot alone served no read of the runtime's (replies
        // are read back by conversation, `outbox_conversation`), and cost
        // every reply an entry written and deleted (BENCHMARKS.md, 2026-12-08).
        M::up("DROP INDEX IF EXISTS outbox_bot;"),
    ])
}

/// An event's id is its row's id shifted by this many bits, plus its place
/// in the row: a row holds at most `1 << EVENT_ID_BITS` events (a turn with
/// more is written as several rows), and ids still increase in commit order.
const EVENT_ID_BITS: u32 = 8;

/// What one event-log row holds of each of its events.
type EventCells<'a> = (&'a str, &'a str, &'a str, Option<&'a str>);

/// The migration that made `budget_calls`: a database older than it kept no
/// budget.
const BUDGET_MIGRATION: usize = 4;

enum Op {
    Accept(NewInbound),
    Pending(usize),
    Session(String),
    Sessions(String, usize),
    Commit(TurnCommit),
    /// A message accepted with its turn's commit (see
    /// `StateStore::accept_and_commit`).
    AcceptCommit(Box<(NewInbound, TurnCommit)>),
    Events(Millis, Millis, u64, usize),
    Expire(Expiring, Millis, usize, bool),
    Erase(String, String, bool),
    OldestRun,
    Fold(Millis, Millis, Vec<Rollup>),
    Rollups(Millis, Millis),
    Export(String, String),
    Outbox(u64, usize),
    OutboxOf(String, u64, usize),
    OutboxConversations(String, usize),
    Delivered(u64),
    DueTimers(Millis, usize),
    Cursor(String),
    SetCursor(String, String),
    Attempt(u64),
    Ping,
    AddDead(DeadLetter),
    DeadList(Option<u64>, usize),
    DeadGet(u64),
    DeadRemove(u64),
    TakeBudget {
        key: String,
        requests: u32,
        per: Millis,
        hold: Millis,
    },
    BudgetDone(i64),
    /// The id of a bot by its name, made if new.
    Bot(String),
    /// Due timers of every bot.
    DueTimersAll(Millis, usize),
    /// The registry's rows changed after a version.
    RegistrySince(u64),
    /// Registry rows written, in order.
    RegistryPut(Vec<NewBot>),
}

enum Reply {
    Accepted(Accepted),
    Inbox(Vec<InboxItem>),
    Session(Option<StoredSession>),
    Sessions(Vec<(String, StoredSession)>),
    Outbox(Vec<OutboxItem>),
    Events(Vec<(u64, LogEvent)>),
    Held(Held),
    Rollups(Vec<Rollup>),
    Oldest(Option<Millis>),
    Export(Box<Export>),
    Due(Vec<(String, Millis)>),
    DueAll(Vec<(String, String, Millis)>),
    Cursor(Option<String>),
    Names(Vec<String>),
    Ids(Vec<u64>),
    /// The accepted item's order number and its replies' ids; `None`: a
    /// duplicate.
    AcceptedCommit(Option<(u64, Vec<u64>)>),
    Dead(Vec<DeadLetter>),
    DeadSummaries(Vec<DeadLetterSummary>),
    Flag(bool),
    Count(u32),
    Grant(crate::qpien::limit::Grant),
    Registry(Vec<BotRecord>),
    Done,
}

/// An operation, for a bot, and where its answer goes.
type Job = (i64, Op, oneshot::Sender<Result<Reply, StoreError>>);

/// When a commit counts as done (SQLite's `synchronous` in WAL mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Each commit is on disk before it returns: survives a power cut (the default).
    #[default]
    Full,
    /// Each commit survives a crash or `kill -9` of the process; a power cut may
    /// lose the last commits. Faster: the disk is synced at checkpoints only.
    Normal,
}

/// How a SQLite store is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SqliteOptions {
    /// How long SQLite waits for a lock before failing.
    pub busy_timeout: Duration,
    /// Most requests run in one transaction.
    pub max_batch: usize,
    /// When a commit counts as done.
    pub durability: Durability,
    /// The most bytes the database may hold (SQLite's `max_page_count`).
    pub max_bytes: Option<u64>,
    /// The most bytes of sessions kept in memory, as last committed, so that
    /// a conversation's next turn reads no row (0: none; see `cache.rs`).
    pub session_cache_bytes: u64,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            busy_timeout: Duration::from_secs(5),
            max_batch: 256,
            durability: Durability::Full,
            max_bytes: None,
            session_cache_bytes: 32 << 20,
        }
    }
}

/// A SQLite database file holding sessions, inbox and outbox: of one bot,
/// seen through this handle; [`SqliteStore::bot`] gives another bot's handle
/// on the same file (one writer thread, commits batched across bots).
#[derive(Debug, Clone)]
pub struct SqliteStore {
    file: Arc<File>,
    /// The bot's id in the file (0: the one bot of a single-bot process).
    bot: i64,
}

/// The open file, shared by every bot's handle.
#[derive(Debug)]
struct File {
    jobs: mpsc::Sender<Job>,
    path: PathBuf,
    /// The last write that failed, and when, until a write succeeds: a full
    /// disk refuses a delivery (a large write) while a small probe may pass,
    /// so [`StateStore::ping`] reports it for [`RECENT_FAILURE`].
    failed_write: std::sync::Mutex<Option<(std::time::Instant, String)>>,
    /// Whether the database kept Qpien's budget before this process opened
    /// it (an older or new file did not).
    knew_budget: bool,
    /// Held while the store is open: one process per database file.
    _lock: std::fs::File,
    /// The sessions this process committed last (none: not kept).
    sessions: Option<super::cache::Sessions>,
}

/// Takes the lock that keeps a second process off the database: SQLite
/// serves one process here (one writer thread orders the turns and owns the
/// outbox), and two would each resend the shared outbox and order nothing
/// between them. The lock is the kernel's (`flock` on `<path>.lock`), so it
/// goes with the process however it ends, `kill -9` included; other tools
/// (the `sqlite3` shell) can still read the database.
fn lock_for_one_process(path: &Path) -> Result<std::fs::File, StoreError> {
    let mut lock_path = path.as_os_str().to_owned();
    lock_path.push(".lock");
    let lock_path = PathBuf::from(lock_path);
    crate::files::touch_private(&lock_path)
        .map_err(|e| StoreError(format!("{}: {e}", lock_path.display())))?;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&lock_path)
        .map_err(|e| StoreError(format!("{}: {e}", lock_path.display())))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(StoreError(format!(
            "{}: another flowbot process is using this database. SQLite serves one process; \
             to run several instances, use store.backend = \"postgres\"",
            path.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(StoreError(format!("{}: {e}", lock_path.display())))
        }
    }
}

/// How long a failed write keeps the store reported as unable to write (then
/// the probe alone decides, so a store that recovered is seen as ready again).
const RECENT_FAILURE: Duration = Duration::from_secs(30);

impl Op {
    /// Whether the operation writes (its failure says the store cannot write).
    fn writes(&self) -> bool {
        matches!(
            self,
            Op::Accept(_)
                | Op::Commit(_)
                | Op::AcceptCommit(_)
                | Op::Delivered(_)
                | Op::SetCursor(..)
                | Op::AddDead(_)
                | Op::DeadRemove(_)
                | Op::Expire(..)
                | Op::Erase(..)
                | Op::Fold(..)
                | Op::TakeBudget { .. }
                | Op::BudgetDone(_)
                | Op::RegistryPut(_)
        )
    }
}

fn err(path: &Path) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
    move |e| StoreError(format!("{}: {e}", path.display()))
}

/// Reads every session of the bot named `bot` (`""`: the one bot of a
/// single-bot process) in the database at `path` without opening it as a
/// store (no lock, no schema change: a running bot may hold it), calling `f`
/// with each one's data.
pub fn read_sessions(path: &Path, bot: &str, f: &mut dyn FnMut(&[u8])) -> Result<(), StoreError> {
    let conn = Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(err(path))?;
    conn.busy_timeout(Duration::from_secs(5))
        .map_err(err(path))?;
    // A file from before one file held every bot's rows holds one bot's.
    let by_bot: bool = conn
        .query_row(
            "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'bots'",
            [],
            |r| r.get(0),
        )
        .map_err(err(path))?;
    let (sql, args) = if by_bot {
        (
            "SELECT data FROM sessions WHERE bot = (SELECT id FROM bots WHERE name = ?1)",
            vec![bot],
        )
    } else if bot.is_empty() {
        ("SELECT data FROM sessions", vec![])
    } else {
        return Ok(());
    };
    let mut stmt = conn.prepare(sql).map_err(err(path))?;
    let mut rows = stmt
        .query(rusqlite::params_from_iter(args))
        .map_err(err(path))?;
    while let Some(row) = rows.next().map_err(err(path))? {
        let data: Vec<u8> = row.get(0).map_err(err(path))?;
        f(&data);
    }
    Ok(())
}

impl SqliteStore {
    /// Opens (or creates) the database at `path`, brings its schema up to date,
    /// and starts the writer thread.
    pub fn open(path: impl AsRef<Path>, options: SqliteOptions) -> Result<SqliteStore, StoreError> {
        let SqliteOptions {
            busy_timeout,
            max_batch,
            max_bytes,
            durability,
            session_cache_bytes,
        } = options;
        let path = path.as_ref().to_path_buf();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.exists() {
                // A folder made for the store is private: it holds customers' words.
                crate::files::private_dir(dir)
                    .map_err(|e| StoreError(format!("{}: {e}", dir.display())))?;
            }
        }
        let lock = lock_for_one_process(&path)?;
        // A new database is private (0600); SQLite gives its journal files
        // the same mode.
        crate::files::touch_private(&path)
            .map_err(|e| StoreError(format!("{}: {e}", path.display())))?;
        let mut conn = Connection::open(&path).map_err(err(&path))?;
        conn.busy_timeout(busy_timeout).map_err(err(&path))?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(err(&path))?;
        let synchronous = match durability {
            Durability::Full => "FULL",
            Durability::Normal => "NORMAL",
        };
        conn.pragma_update(None, "synchronous", synchronous)
            .map_err(err(&path))?;
        let migrated = |e: rusqlite_migration::Error| {
            StoreError(format!("{}: migration failed: {e}", path.display()))
        };
        let knew_budget = match migrations().current_version(&conn).map_err(migrated)? {
            rusqlite_migration::SchemaVersion::Inside(v) => v.get() >= BUDGET_MIGRATION,
            _ => false,
        };
        migrations().to_latest(&mut conn).map_err(migrated)?;
        if let Some(max) = max_bytes {
            let page: i64 = conn
                .pragma_query_value(None, "page_size", |r| r.get(0))
                .map_err(err(&path))?;
            let pages = i64::try_from(max / page.max(1) as u64).unwrap_or(i64::MAX);
            conn.pragma_update(None, "max_page_count", pages.max(1))
                .map_err(err(&path))?;
        }
        let now = crate::time::now();
        conn.execute(
            "DELETE FROM inbox WHERE done = 1 AND received_at < ?1",
            params![now - KEEP_KEYS_MS],
        )
        .map_err(err(&path))?;
        let (jobs, rx) = mpsc::channel::<Job>();
        let thread_path = path.clone();
        std::thread::Builder::new()
            .name("flowbot-sqlite".into())
            .spawn(move || writer(conn, rx, max_batch.max(1), thread_path))
            .map_err(|e| StoreError(format!("cannot start the store thread: {e}")))?;
        Ok(SqliteStore {
            file: Arc::new(File {
                jobs,
                path,
                failed_write: std::sync::Mutex::new(None),
                knew_budget,
                _lock: lock,
                sessions: super::cache::Sessions::new(session_cache_bytes),
            }),
            bot: 0,
        })
    }

    /// The handle of the bot named `name` on the same file (made the first
    /// time; `""` is the one bot of a single-bot process).
    pub async fn bot(&self, name: &str) -> Result<SqliteStore, StoreError> {
        match self.run(Op::Bot(name.to_owned())).await? {
            Reply::Ids(ids) => Ok(SqliteStore {
                file: self.file.clone(),
                bot: ids.first().map_or(0, |id| *id as i64),
            }),
            _ => Err(unexpected()),
        }
    }

    /// Moves the rows of a file that held one bot (`from`, as flowbot kept a
    /// file per bot before one file held them all) into this file, as the
    /// rows of the bot named `bot`: its waiting messages, sessions, replies
    /// not yet sent, cursors, dead letters and budget. A message already
    /// here (by its key) is not copied twice. `from` is left as it was:
    /// the caller renames it once this returns. Neither file may be in use
    /// by a running process.
    pub async fn import(&self, bot: &str, from: &Path) -> Result<super::Imported, StoreError> {
        // Brought up to date first (its rows become its bot 0's), which also
        // says whether another process holds it.
        drop(SqliteStore::open(from, SqliteOptions::default())?);
        let into = self.bot(bot).await?;
        let (path, from) = (self.path().to_path_buf(), from.to_path_buf());
        self.clear_sessions();
        let imported = tokio::task::spawn_blocking(move || import_rows(&path, into.bot, &from))
            .await
            .map_err(|e| StoreError(format!("the import stopped: {e}")))?;
        self.clear_sessions();
        imported
    }

    fn clear_sessions(&self) {
        if let Some(s) = &self.file.sessions {
            s.clear();
        }
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.file.path
    }

    async fn run(&self, op: Op) -> Result<Reply, StoreError> {
        let writes = op.writes();
        let (tx, rx) = oneshot::channel();
        self.file
            .jobs
            .send((self.bot, op, tx))
            .map_err(|_| StoreError("the store thread has stopped".into()))?;
        let result = rx
            .await
            .map_err(|_| StoreError("the store thread has stopped".into()))?;
        if writes {
            let mut failed = self
                .file
                .failed_write
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            match &result {
                Ok(_) if failed.is_some() => *failed = None,
                Ok(_) => {}
                Err(e) => *failed = Some((std::time::Instant::now(), e.0.clone())),
            }
        }
        result
    }
}

fn import_rows(path: &Path, bot: i64, from: &Path) -> Result<super::Imported, StoreError> {
    let mut conn = Connection::open(path).map_err(err(path))?;
    conn.busy_timeout(Duration::from_secs(30))
        .map_err(err(path))?;
    conn.execute("ATTACH DATABASE ?1 AS old", params![from.to_string_lossy()])
        .map_err(err(from))?;
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(err(path))?;
    let copy = |sql: &str| tx.execute(sql, params![bot]).map_err(err(path));
    let imported = super::Imported {
        inbox: copy(
            "INSERT INTO main.inbox (bot, key, conversation, payload, received_at, done, attempts)
             SELECT ?1, key, conversation, payload, received_at, done, attempts FROM old.inbox
             WHERE bot = 0 ORDER BY seq ON CONFLICT(bot, key) DO NOTHING",
        )?,
        sessions: copy(
            "INSERT INTO main.sessions (bot, conversation, data, due_at, updated_at)
             SELECT ?1, conversation, data, due_at, CAST(strftime('%s', 'now') AS INTEGER) * 1000
             FROM old.sessions WHERE bot = 0 ON CONFLICT(bot, conversation) DO NOTHING",
        )?,
        outbox: copy(
            "INSERT INTO main.outbox (bot, conversation, payload)
             SELECT ?1, conversation, payload FROM old.outbox WHERE bot = 0 ORDER BY id",
        )?,
        dead_letters: copy(
            "INSERT INTO main.dead_letters (bot, received_at, reason, headers, body)
             SELECT ?1, received_at, reason, headers, body FROM old.dead_letters
             WHERE bot = 0 ORDER BY id",
        )?,
    };
    copy(
        "INSERT INTO main.cursors (bot, name, value)
         SELECT ?1, name, value FROM old.cursors WHERE bot = 0 AND name <> 'store:ping'
         ON CONFLICT(bot, name) DO NOTHING",
    )?;
    tx.execute(
        "INSERT INTO main.budget_calls (key, at) SELECT key, at FROM old.budget_calls",
        [],
    )
    .map_err(err(path))?;
    tx.commit().map_err(err(path))?;
    conn.execute("DETACH DATABASE old", []).map_err(err(path))?;
    Ok(imported)
}

fn writer(mut conn: Connection, rx: mpsc::Receiver<Job>, max_batch: usize, path: PathBuf) {
    let mut batch: Vec<Job> = Vec::with_capacity(max_batch);
    while let Ok(first) = rx.recv() {
        batch.push(first);
        // Once the queue looks empty, the thread yields once before it
        // commits. Where the process has one core, the request that woke it
        // preempted the turns that were about to send theirs: yielding lets
        // them run until they wait on the store, and their requests join
        // this batch. Measured on one core (BENCHMARKS.md, "group commit"):
        // an fsync per 25 turns instead of per 1.7, twice the turns a
        // second. With a core to spare the yield returns at once.
        let mut yielded = false;
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) if !yielded => {
                    yielded = true;
                    std::thread::yield_now();
                }
                Err(_) => break,
            }
        }
        // All at once first (what nearly every batch is); only a batch in
        // which a request failed runs again with each request in its own
        // savepoint, so that the failure is that request's alone. A
        // savepoint per request costs SQLite a copy of each page it changes.
        let outcome = match run_batch(&mut conn, &batch, false) {
            Err(_) if batch.len() > 1 => run_batch(&mut conn, &batch, true),
            outcome => outcome,
        };
        match outcome {
            Ok(results) => {
                for ((_, op, reply), result) in batch.drain(..).zip(results) {
                    let _ = reply.send(result.map(|r| completed(op, r)).map_err(err(&path)));
                }
            }
            Err(e) => {
                let e = err(&path)(e);
                for (_, _, reply) in batch.drain(..) {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
}

/// A request's answer with what it gives back of the request itself.
fn completed(op: Op, reply: Reply) -> Reply {
    match (op, reply) {
        (Op::Accept(item), Reply::Accepted(Accepted::New(new))) => {
            Reply::Accepted(Accepted::New(InboxItem {
                key: item.key,
                conversation: item.conversation,
                payload: item.payload,
                ..new
            }))
        }
        (_, reply) => reply,
    }
}

/// Runs a batch in one transaction. Without `alone`, the first request that
/// fails fails the batch (rolled back whole); with it, each runs in its own
/// savepoint and a failure rolls back that request only, unless SQLite
/// rolled back the transaction (a full disk, an I/O error).
fn run_batch(
    conn: &mut Connection,
    batch: &[Job],
    alone: bool,
) -> Result<Vec<Result<Reply, rusqlite::Error>>, rusqlite::Error> {
    let mut results = Vec::with_capacity(batch.len());
    let mut tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    for (bot, op, _) in batch {
        if !alone {
            results.push(Ok(apply(&tx, *bot, op)?));
            continue;
        }
        let sp = tx.savepoint()?;
        match apply(&sp, *bot, op) {
            Ok(reply) => {
                sp.commit()?;
                results.push(Ok(reply));
            }
            Err(e) => {
                // Dropped uncommitted, a savepoint rolls back.
                drop(sp);
                if tx.is_autocommit() {
                    // SQLite rolled the whole transaction back: the batch
                    // fails, with this reason rather than the commit's.
                    return Err(e);
                }
                results.push(Err(e));
            }
        }
    }
    tx.commit()?;
    Ok(results)
}

fn apply(tx: &Connection, bot: i64, op: &Op) -> Result<Reply, rusqlite::Error> {
    Ok(match op {
        Op::Accept(item) => {
            let inserted = tx
                .prepare_cached(
                    "INSERT INTO inbox (bot, key, conversation, payload, received_at)
                     VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT(bot, key) DO NOTHING",
                )?
                .execute(params![
                    bot,
                    item.key,
                    item.conversation,
                    item.payload,
                    item.received_at
                ])?;
            if inserted == 0 {
                Reply::Accepted(Accepted::Duplicate)
            } else {
                // Its key, conversation and payload are moved in from the
                // request once the batch is committed (`completed`).
                Reply::Accepted(Accepted::New(InboxItem {
                    seq: tx.last_insert_rowid() as u64,
                    key: String::new(),
                    conversation: String::new(),
                    payload: Vec::new(),
                    received_at: item.received_at,
                    attempts: 0,
                    resumed: false,
                }))
            }
        }
        Op::Pending(limit) => {
            let mut stmt = tx.prepare_cached(
                "SELECT seq, key, conversation, payload, received_at, attempts FROM inbox
                 WHERE bot = ?1 AND done = 0 ORDER BY seq LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![bot, *limit as i64], |r| {
                Ok(InboxItem {
                    seq: r.get::<_, i64>(0)? as u64,
                    key: r.get(1)?,
                    conversation: r.get(2)?,
                    payload: r.get(3)?,
                    received_at: r.get(4)?,
                    attempts: r.get(5)?,
                    resumed: true,
                })
            })?;
            Reply::Inbox(rows.collect::<Result<_, _>>()?)
        }
        Op::Session(conversation) => Reply::Session(
            tx.prepare_cached(
                "SELECT data, due_at FROM sessions WHERE bot = ?1 AND conversation = ?2",
            )?
            .query_row(params![bot, conversation], |r| {
                    Ok(StoredSession {
                        data: r.get(0)?,
                        due_at: r.get(1)?,
                    })
                })
                .optional()?,
        ),
        Op::Sessions(after, limit) => Reply::Sessions(
            tx.prepare_cached(
                "SELECT conversation, data, due_at FROM sessions WHERE bot = ?1 AND conversation > ?2
                 ORDER BY conversation LIMIT ?3",
            )?
            .query_map(params![bot, after, *limit as i64], |r| {
                Ok((
                    r.get(0)?,
                    StoredSession {
                        data: r.get(1)?,
                        due_at: r.get(2)?,
                    },
                ))
            })?
            .collect::<Result<_, _>>()?,
        ),
        Op::Commit(c) => {
            tx.prepare_cached(
                "UPDATE inbox SET done = 1, payload = x'' WHERE seq = ?1 AND bot = ?2",
            )?
            .execute(params![c.inbox_seq as i64, bot])?;
            Reply::Ids(commit_rows(tx, bot, c)?)
        }
        Op::AcceptCommit(both) => {
            let (item, c) = &**both;
            // The message's row is written once, done (its payload is not
            // kept: the turn is committed with it).
            let inserted = tx
                .prepare_cached(
                    "INSERT INTO inbox (bot, key, conversation, payload, received_at, done)
                     VALUES (?1, ?2, ?3, x'', ?4, 1) ON CONFLICT(bot, key) DO NOTHING",
                )?
                .execute(params![bot, item.key, item.conversation, item.received_at])?;
            if inserted == 0 {
                Reply::AcceptedCommit(None)
            } else {
                let seq = tx.last_insert_rowid() as u64;
                Reply::AcceptedCommit(Some((seq, commit_rows(tx, bot, c)?)))
            }
        }
        Op::Erase(conversation, hash, dry_run) => {
            // Each kind's rows of the conversation (?2): by its id, and in
            // the event log by its hash.
            let (c, h) = (conversation.as_str(), hash.as_str());
            // (An event-log row holds `n` events.)
            let rows = [
                ("count(*)", "sessions WHERE bot = ?1 AND conversation = ?2", c),
                (
                    "count(*)",
                    "inbox WHERE bot = ?1 AND conversation = ?2 AND done = 0",
                    c,
                ),
                ("count(*)", "outbox WHERE bot = ?1 AND conversation = ?2", c),
                (
                    "count(*)",
                    "dead_letters WHERE bot = ?1
                     AND (instr(body, CAST(?2 AS BLOB)) > 0 OR instr(headers, ?2) > 0)",
                    c,
                ),
                (
                    "coalesce(sum(n), 0)",
                    "events WHERE bot = ?1 AND conversation = ?2",
                    h,
                ),
            ];
            let mut n = [0u64; 5];
            for (count, (what, which, key)) in n.iter_mut().zip(&rows) {
                *count = tx
                    .prepare_cached(&format!("SELECT {what} FROM {which}"))?
                    .query_row(params![bot, key], |r| r.get::<_, i64>(0))?
                    as u64;
            }
            if !dry_run {
                for (_, which, key) in &rows {
                    tx.prepare_cached(&format!("DELETE FROM {which}"))?
                        .execute(params![bot, key])?;
                }
                // The keys of messages run stay (a redelivery is dropped),
                // under the keyed hash.
                tx.prepare_cached("UPDATE inbox SET conversation = ?3 WHERE bot = ?1 AND conversation = ?2")?
                    .execute(params![bot, c, h])?;
            }
            let [sessions, inbox, outbox, dead_letters, events] = n;
            Reply::Held(Held {
                sessions,
                inbox,
                outbox,
                dead_letters,
                events,
            })
        }
        Op::Export(conversation, hash) => {
            let payloads = |sql: &str| -> Result<Vec<Vec<u8>>, rusqlite::Error> {
                tx.prepare_cached(sql)?
                    .query_map(params![bot, conversation], |r| r.get(0))?
                    .collect()
            };
            let session = payloads(
                "SELECT data FROM sessions WHERE bot = ?1 AND conversation = ?2",
            )?
            .into_iter()
            .next();
            let inbox = payloads(
                "SELECT payload FROM inbox WHERE bot = ?1 AND conversation = ?2 AND done = 0
                 ORDER BY seq",
            )?;
            let outbox = payloads(
                "SELECT payload FROM outbox WHERE bot = ?1 AND conversation = ?2 ORDER BY id",
            )?;
            let mut stmt = tx.prepare_cached(
                "SELECT id, received_at, reason, headers, body FROM dead_letters WHERE bot = ?1
                 AND (instr(body, CAST(?2 AS BLOB)) > 0 OR instr(headers, ?2) > 0) ORDER BY id",
            )?;
            let dead_letters = stmt
                .query_map(params![bot, conversation], |r| {
                    Ok(DeadLetter {
                        id: r.get::<_, i64>(0)? as u64,
                        received_at: r.get(1)?,
                        reason: r.get(2)?,
                        headers: r.get(3)?,
                        body: r.get(4)?,
                    })
                })?
                .collect::<Result<_, _>>()?;
            let mut stmt = tx.prepare_cached(&format!(
                "SELECT {EVENT_COLUMNS} FROM events WHERE bot = ?1 AND conversation = ?2 ORDER BY id"
            ))?;
            let mut events = Vec::new();
            let mut rows = stmt.query(params![bot, hash])?;
            while let Some(r) = rows.next()? {
                events.extend(event_row(r)?.1);
            }
            Reply::Export(Box::new(Export {
                session,
                inbox,
                outbox,
                dead_letters,
                events,
            }))
        }
        Op::Expire(kind, before, limit, dry_run) => {
            let (count, delete) = match kind {
                Expiring::Sessions => (
                    "SELECT count(*) FROM (SELECT 1 FROM sessions WHERE bot = ?1
                     AND updated_at < ?2 AND (due_at IS NULL OR due_at < ?2) LIMIT ?3)",
                    "DELETE FROM sessions WHERE bot = ?1 AND conversation IN (
                     SELECT conversation FROM sessions WHERE bot = ?1
                     AND updated_at < ?2 AND (due_at IS NULL OR due_at < ?2) LIMIT ?3)",
                ),
                Expiring::DeadLetters => (
                    "SELECT count(*) FROM (SELECT 1 FROM dead_letters WHERE bot = ?1
                     AND received_at < ?2 LIMIT ?3)",
                    "DELETE FROM dead_letters WHERE id IN (SELECT id FROM dead_letters
                     WHERE bot = ?1 AND received_at < ?2 LIMIT ?3)",
                ),
                // Rows of `n` events, in the order of their index both
                // times (the events counted are those deleted).
                Expiring::Events => (
                    "SELECT coalesce(sum(n), 0) FROM (SELECT n FROM events WHERE bot = ?1
                     AND at < ?2 ORDER BY at, id LIMIT ?3)",
                    "DELETE FROM events WHERE id IN (SELECT id FROM events
                     WHERE bot = ?1 AND at < ?2 ORDER BY at, id LIMIT ?3)",
                ),
                // Whole hours at a time.
                Expiring::Rollups => (
                    "SELECT count(*) FROM (SELECT 1 FROM rollups WHERE bot = ?1 AND hour < ?2 LIMIT ?3)",
                    "DELETE FROM rollups WHERE bot = ?1 AND hour IN (SELECT DISTINCT hour
                     FROM rollups WHERE bot = ?1 AND hour < ?2 LIMIT ?3)",
                ),
            };
            let args = params![bot, before, *limit as i64];
            // The event log's rows hold several events each: counted first.
            let counted = *dry_run || matches!(kind, Expiring::Events);
            let mut n = if counted {
                tx.prepare_cached(count)?
                    .query_row(args, |r| r.get::<_, i64>(0))? as u64
            } else {
                0
            };
            if !*dry_run {
                let deleted = tx.prepare_cached(delete)?.execute(args)? as u64;
                if !counted {
                    n = deleted;
                }
            }
            Reply::Ids(vec![n])
        }
        Op::OldestRun => Reply::Oldest(
            tx.prepare_cached("SELECT min(run) FROM events WHERE bot = ?1")?
                .query_row(params![bot], |r| r.get(0))?,
        ),
        Op::Fold(from, to, rollups) => {
            let mut add = tx.prepare_cached(
                "INSERT INTO rollups (bot, hour, flow_version, channel, test, kind, key, value, count)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                 ON CONFLICT (bot, hour, flow_version, channel, test, kind, key, value)
                 DO UPDATE SET count = count + excluded.count",
            )?;
            for r in rollups {
                add.execute(params![
                    bot,
                    r.hour,
                    r.flow_version,
                    r.channel,
                    r.test,
                    r.kind,
                    r.key,
                    r.value,
                    r.count as i64
                ])?;
            }
            let n: i64 = tx
                .prepare_cached(
                    "SELECT coalesce(sum(n), 0) FROM events WHERE bot = ?1 AND run >= ?2 AND run < ?3",
                )?
                .query_row(params![bot, from, to], |r| r.get(0))?;
            tx.prepare_cached("DELETE FROM events WHERE bot = ?1 AND run >= ?2 AND run < ?3")?
                .execute(params![bot, from, to])?;
            Reply::Ids(vec![n as u64])
        }
        Op::Rollups(from, to) => {
            let mut stmt = tx.prepare_cached(
                "SELECT hour, flow_version, channel, test, kind, key, value, count FROM rollups
                 WHERE bot = ?1 AND hour >= ?2 AND hour < ?3",
            )?;
            let rows = stmt.query_map(params![bot, from, to], |r| {
                Ok(Rollup {
                    hour: r.get(0)?,
                    flow_version: r.get(1)?,
                    channel: r.get(2)?,
                    test: r.get(3)?,
                    kind: r.get(4)?,
                    key: r.get(5)?,
                    value: r.get(6)?,
                    count: r.get::<_, i64>(7)? as u64,
                })
            })?;
            Reply::Rollups(rows.collect::<Result<_, _>>()?)
        }
        Op::Events(from, to, after, limit) => {
            // From the row of the event `after` (each row after it holds
            // at least one event: `limit + 1` rows are enough).
            let mut stmt = tx.prepare_cached(&format!(
                "SELECT {EVENT_COLUMNS} FROM events
                 WHERE bot = ?1 AND run >= ?2 AND run < ?3 AND id >= ?4 ORDER BY id LIMIT ?5"
            ))?;
            let first = i64::try_from(*after >> EVENT_ID_BITS).unwrap_or(i64::MAX);
            let rows_wanted = i64::try_from(*limit).unwrap_or(i64::MAX).saturating_add(1);
            let mut out = Vec::with_capacity((*limit).min(4096));
            let mut rows = stmt.query(params![bot, from, to, first, rows_wanted])?;
            while out.len() < *limit {
                let Some(r) = rows.next()? else { break };
                let (row, events) = event_row(r)?;
                for (i, e) in events.into_iter().enumerate() {
                    let id = (row << EVENT_ID_BITS) | i as u64;
                    if id > *after && out.len() < *limit {
                        out.push((id, e));
                    }
                }
            }
            Reply::Events(out)
        }
        Op::Outbox(after, limit) => {
            let mut stmt = tx.prepare_cached(
                "SELECT id, conversation, payload FROM outbox WHERE bot = ?1 AND id > ?2
                 ORDER BY id LIMIT ?3",
            )?;
            let after = i64::try_from(*after).unwrap_or(i64::MAX);
            let rows = stmt.query_map(params![bot, after, *limit as i64], outbox_row)?;
            Reply::Outbox(rows.collect::<Result<_, _>>()?)
        }
        Op::OutboxOf(conversation, after, limit) => {
            let mut stmt = tx.prepare_cached(
                "SELECT id, conversation, payload FROM outbox
                 WHERE bot = ?1 AND conversation = ?2 AND id > ?3 ORDER BY id LIMIT ?4",
            )?;
            let after = i64::try_from(*after).unwrap_or(i64::MAX);
            let rows =
                stmt.query_map(params![bot, conversation, after, *limit as i64], outbox_row)?;
            Reply::Outbox(rows.collect::<Result<_, _>>()?)
        }
        Op::OutboxConversations(after, limit) => {
            let mut stmt = tx.prepare_cached(
                "SELECT DISTINCT conversation FROM outbox WHERE bot = ?1 AND conversation > ?2
                 ORDER BY conversation LIMIT ?3",
            )?;
            let rows = stmt.query_map(params![bot, after, *limit as i64], |r| r.get(0))?;
            Reply::Names(rows.collect::<Result<_, _>>()?)
        }
        Op::Delivered(id) => {
            tx.prepare_cached("DELETE FROM outbox WHERE id = ?1 AND bot = ?2")?
                .execute(params![*id as i64, bot])?;
            Reply::Done
        }
        Op::DueTimers(now, limit) => {
            let mut stmt = tx.prepare_cached(
                "SELECT conversation, due_at FROM sessions
                 WHERE bot = ?1 AND due_at IS NOT NULL AND due_at <= ?2 ORDER BY due_at LIMIT ?3",
            )?;
            let rows = stmt.query_map(params![bot, now, *limit as i64], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?;
            Reply::Due(rows.collect::<Result<_, _>>()?)
        }
        Op::DueTimersAll(now, limit) => {
            let mut stmt = tx.prepare_cached(
                "SELECT b.name, s.conversation, s.due_at FROM sessions s JOIN bots b ON b.id = s.bot
                 WHERE s.due_at IS NOT NULL AND s.due_at <= ?1 ORDER BY s.due_at LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![now, *limit as i64], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })?;
            Reply::DueAll(rows.collect::<Result<_, _>>()?)
        }
        Op::Cursor(name) => Reply::Cursor(
            tx.prepare_cached("SELECT value FROM cursors WHERE bot = ?1 AND name = ?2")?
                .query_row(params![bot, name], |r| r.get(0))
                .optional()?,
        ),
        Op::SetCursor(name, value) => {
            tx.prepare_cached(
                "INSERT INTO cursors (bot, name, value) VALUES (?1, ?2, ?3)
                 ON CONFLICT(bot, name) DO UPDATE SET value = ?3",
            )?
            .execute(params![bot, name, value])?;
            Reply::Done
        }
        Op::Attempt(seq) => {
            let n: u32 = tx
                .prepare_cached(
                    "UPDATE inbox SET attempts = attempts + 1 WHERE seq = ?1 AND bot = ?2 AND done = 0
                     RETURNING attempts",
                )?
                .query_row(params![*seq as i64, bot], |r| r.get(0))
                .optional()?
                .unwrap_or(0);
            Reply::Count(n)
        }
        Op::Ping => {
            // A write, so that a full disk (or `max_bytes`) shows here.
            tx.prepare_cached(
                "INSERT INTO cursors (bot, name, value) VALUES (?1, 'store:ping', ?2)
                 ON CONFLICT(bot, name) DO UPDATE SET value = excluded.value",
            )?
            .execute(params![bot, crate::time::now().to_string()])?;
            Reply::Done
        }
        Op::AddDead(d) => {
            tx.prepare_cached(
                "INSERT INTO dead_letters (bot, received_at, reason, headers, body)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![bot, d.received_at, d.reason, d.headers, d.body])?;
            let id = tx.last_insert_rowid();
            // Each bot keeps its newest `MAX_DEAD_LETTERS`.
            tx.prepare_cached(
                "DELETE FROM dead_letters WHERE bot = ?1 AND id <= (
                    SELECT id FROM dead_letters WHERE bot = ?1 ORDER BY id DESC LIMIT 1 OFFSET ?2)",
            )?
            .execute(params![bot, MAX_DEAD_LETTERS as i64])?;
            Reply::Ids(vec![id as u64])
        }
        Op::DeadList(before, limit) => {
            let before = before.map_or(i64::MAX, |b| i64::try_from(b).unwrap_or(i64::MAX));
            let mut stmt = tx.prepare_cached(
                "SELECT id, received_at, reason, length(body) FROM dead_letters
                 WHERE bot = ?1 AND id < ?2 ORDER BY id DESC LIMIT ?3",
            )?;
            let rows = stmt.query_map(params![bot, before, *limit as i64], |r| {
                Ok(DeadLetterSummary {
                    id: r.get::<_, i64>(0)? as u64,
                    received_at: r.get(1)?,
                    reason: r.get(2)?,
                    bytes: r.get::<_, i64>(3)? as u64,
                })
            })?;
            Reply::DeadSummaries(rows.collect::<Result<_, _>>()?)
        }
        Op::DeadGet(id) => Reply::Dead(read_dead(
            tx,
            "SELECT id, received_at, reason, headers, body FROM dead_letters
             WHERE id = ?1 AND bot = ?2",
            *id as i64,
            bot,
        )?),
        Op::DeadRemove(id) => Reply::Flag(
            tx.prepare_cached("DELETE FROM dead_letters WHERE id = ?1 AND bot = ?2")?
                .execute(params![*id as i64, bot])?
                > 0,
        ),
        Op::TakeBudget {
            key,
            requests,
            per,
            hold,
        } => {
            // As PostgreSQL's: a sliding window of calls, each counted from
            // when it ended (until then, or for `hold` if the process dies
            // first, it stands in the future and counts in full). The
            // process's clock is the only one: one process per file.
            let now = crate::time::now();
            tx.prepare_cached("DELETE FROM budget_calls WHERE key = ?1 AND at <= ?2")?
                .execute(params![key, now - per])?;
            let (used, oldest): (i64, Option<i64>) = tx
                .prepare_cached("SELECT count(*), min(at) FROM budget_calls WHERE key = ?1")?
                .query_row(params![key], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Reply::Grant(if used < i64::from(*requests) {
                tx.prepare_cached("INSERT INTO budget_calls (key, at) VALUES (?1, ?2)")?
                    .execute(params![key, now + hold])?;
                crate::qpien::limit::Grant::Granted(tx.last_insert_rowid())
            } else {
                let free_at = oldest.unwrap_or(now).min(now) + per + 1;
                crate::qpien::limit::Grant::Wait(Duration::from_millis(
                    (free_at - now).max(1) as u64
                ))
            })
        }
        Op::Bot(name) => {
            tx.prepare_cached("INSERT INTO bots (name) VALUES (?1) ON CONFLICT(name) DO NOTHING")?
                .execute(params![name])?;
            let id: i64 = tx
                .prepare_cached("SELECT id FROM bots WHERE name = ?1")?
                .query_row(params![name], |r| r.get(0))?;
            Reply::Ids(vec![id as u64])
        }
        Op::RegistrySince(after) => {
            let mut stmt = tx.prepare_cached(
                "SELECT name, spec, state, source, version, updated_at FROM registry
                 WHERE version > ?1 ORDER BY version",
            )?;
            let rows = stmt
                .query_map(params![*after as i64], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, i64>(4)?,
                        r.get::<_, i64>(5)?,
                    ))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            let mut out = Vec::with_capacity(rows.len());
            for (name, spec, state, source, version, at) in rows {
                match super::registry::record(name, spec, &state, &source, version, at) {
                    Ok(r) => out.push(r),
                    Err(e) => tracing::warn!(error = %e, "a registry row is skipped"),
                }
            }
            Reply::Registry(out)
        }
        Op::RegistryPut(rows) => {
            let mut version: i64 = tx
                .prepare_cached("SELECT coalesce(max(version), 0) FROM registry")?
                .query_row([], |r| r.get(0))?;
            let mut stmt = tx.prepare_cached(
                "INSERT INTO registry (name, spec, state, source, version, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT(name) DO UPDATE SET spec = ?2, state = ?3, source = ?4,
                     version = ?5, updated_at = ?6",
            )?;
            let now = crate::time::now();
            for r in rows {
                version += 1;
                stmt.execute(params![
                    r.name,
                    r.spec,
                    r.state.as_str(),
                    r.source.as_str(),
                    version,
                    now
                ])?;
            }
            Reply::Ids(vec![version as u64])
        }
        Op::BudgetDone(id) => {
            tx.prepare_cached("UPDATE budget_calls SET at = min(at, ?2) WHERE id = ?1")?
                .execute(params![id, crate::time::now()])?;
            Reply::Done
        }
    })
}

/// A turn's rows besides its inbox item's: the session, the event log, the
/// replies (their ids, in order).
fn commit_rows(tx: &Connection, bot: i64, c: &TurnCommit) -> Result<Vec<u64>, rusqlite::Error> {
    match &c.session {
        Some(s) => {
            tx.prepare_cached(
                "INSERT INTO sessions (bot, conversation, data, due_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT(bot, conversation) DO UPDATE SET data = ?3, due_at = ?4,
                 updated_at = ?5",
            )?
            .execute(params![bot, c.conversation, s.data, s.due_at, c.at])?;
        }
        None => {
            tx.prepare_cached("DELETE FROM sessions WHERE bot = ?1 AND conversation = ?2")?
                .execute(params![bot, c.conversation])?;
        }
    }
    if !c.events.is_empty() {
        let mut log = tx.prepare_cached(
            "INSERT INTO events (bot, at, conversation, run, flow_version, channel, test, n,
             rows) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )?;
        // Consecutive events that share a row's columns, as one row.
        let same = |a: &LogEvent, b: &LogEvent| {
            (
                a.at,
                &a.conversation,
                a.run,
                &a.flow_version,
                &a.channel,
                a.test,
            ) == (
                b.at,
                &b.conversation,
                b.run,
                &b.flow_version,
                &b.channel,
                b.test,
            )
        };
        for group in c.events.chunk_by(same) {
            for part in group.chunks(1 << EVENT_ID_BITS) {
                let cells: Vec<EventCells<'_>> = part
                    .iter()
                    .map(|e| (&*e.state, &*e.kind, &*e.detail, e.value.as_deref()))
                    .collect();
                let rows = serde_json::to_string(&cells)
                    .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
                let e = &part[0];
                log.execute(params![
                    bot,
                    e.at,
                    e.conversation,
                    e.run,
                    e.flow_version,
                    e.channel,
                    e.test,
                    part.len() as i64,
                    rows
                ])?;
            }
        }
    }
    let mut insert =
        tx.prepare_cached("INSERT INTO outbox (bot, conversation, payload) VALUES (?1, ?2, ?3)")?;
    let mut ids = Vec::with_capacity(c.outbox.len());
    for payload in &c.outbox {
        insert.execute(params![bot, c.conversation, payload])?;
        ids.push(tx.last_insert_rowid() as u64);
    }
    Ok(ids)
}

/// The columns [`event_row`] reads.
const EVENT_COLUMNS: &str = "id, at, conversation, run, flow_version, channel, test, rows";

/// An event-log row ([`EVENT_COLUMNS`]): its id and its events.
fn event_row(r: &rusqlite::Row<'_>) -> Result<(u64, Vec<LogEvent>), rusqlite::Error> {
    let rows: String = r.get(7)?;
    let cells: Vec<(String, String, String, Option<String>)> = serde_json::from_str(&rows)
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(7, Type::Text, Box::new(e)))?;
    let (at, conversation, run, flow_version, channel, test): (
        Millis,
        String,
        Millis,
        String,
        String,
        bool,
    ) = (
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
    );
    let events = cells
        .into_iter()
        .map(|(state, kind, detail, value)| LogEvent {
            at,
            conversation: conversation.clone(),
            run,
            flow_version: flow_version.clone(),
            state,
            channel: channel.clone(),
            kind,
            detail,
            value,
            test,
        })
        .collect();
    Ok((r.get::<_, i64>(0)? as u64, events))
}

/// An outbox row (`id, conversation, payload`).
fn outbox_row(r: &rusqlite::Row<'_>) -> Result<OutboxItem, rusqlite::Error> {
    Ok(OutboxItem {
        id: r.get::<_, i64>(0)? as u64,
        conversation: r.get(1)?,
        payload: r.get(2)?,
    })
}

fn read_dead(
    tx: &Connection,
    sql: &str,
    arg: i64,
    bot: i64,
) -> Result<Vec<DeadLetter>, rusqlite::Error> {
    let mut stmt = tx.prepare_cached(sql)?;
    let rows = stmt.query_map(params![arg, bot], |r| {
        Ok(DeadLetter {
            id: r.get::<_, i64>(0)? as u64,
            received_at: r.get(1)?,
            reason: r.get(2)?,
            headers: r.get(3)?,
            body: r.get(4)?,
        })
    })?;
    rows.collect()
}

fn unexpected() -> StoreError {
    StoreError("internal: mismatched store reply".into())
}

#[async_trait]
impl BotRegistry for SqliteStore {
    async fn bots_since(&self, version: u64) -> Result<Vec<BotRecord>, StoreError> {
        match self.run(Op::RegistrySince(version)).await? {
            Reply::Registry(rows) => Ok(rows),
            _ => Err(unexpected()),
        }
    }

    async fn put_bots(&self, rows: &[NewBot]) -> Result<u64, StoreError> {
        match self.run(Op::RegistryPut(rows.to_vec())).await? {
            Reply::Ids(ids) => Ok(ids.first().copied().unwrap_or(0)),
            _ => Err(unexpected()),
        }
    }
}

#[async_trait]
impl StateStore for SqliteStore {
    async fn accept(&self, item: NewInbound) -> Result<Accepted, StoreError> {
        match self.run(Op::Accept(item)).await? {
            Reply::Accepted(a) => Ok(a),
            _ => Err(unexpected()),
        }
    }

    async fn pending(&self, limit: usize) -> Result<Vec<InboxItem>, StoreError> {
        match self.run(Op::Pending(limit)).await? {
            Reply::Inbox(v) => Ok(v),
            _ => Err(unexpected()),
        }
    }

    async fn session(&self, conversation: &str) -> Result<Option<StoredSession>, StoreError> {
        if let Some(known) = self
            .file
            .sessions
            .as_ref()
            .and_then(|s| s.get(self.bot, conversation, 0))
        {
            return Ok(known);
        }
        match self.run(Op::Session(conversation.to_owned())).await? {
            Reply::Session(s) => Ok(s),
            _ => Err(unexpected()),
        }
    }

    async fn sessions(
        &self,
        after: &str,
        limit: usize,
    ) -> Result<Vec<(String, StoredSession)>, StoreError> {
        match self.run(Op::Sessions(after.to_owned(), limit)).await? {
            Reply::Sessions(v) => Ok(v),
            _ => Err(unexpected()),
        }
    }

    async fn commit(&self, commit: TurnCommit) -> Result<Vec<u64>, StoreError> {
        let sessions = self.file.sessions.as_ref();
        // The session is moved with the commit to the writer: kept from a
        // copy, only when there is a cache.
        let (conversation, session) = match sessions {
            Some(_) => (commit.conversation.clone(), commit.session.clone()),
            None => (String::new(), None),
        };
        let run = async {
            match self.run(Op::Commit(commit)).await? {
                Reply::Ids(ids) => Ok(ids),
                _ => Err(unexpected()),
            }
        };
        super::cache::committing(sessions, self.bot, &conversation, Some(0), session, run).await
    }

    fn commits_acceptance(&self) -> bool {
        true
    }

    async fn accept_and_commit(
        &self,
        item: NewInbound,
        commit: TurnCommit,
    ) -> Result<Option<(u64, Vec<u64>)>, StoreError> {
        let sessions = self.file.sessions.as_ref();
        let (conversation, session) = match sessions {
            Some(_) => (commit.conversation.clone(), commit.session.clone()),
            None => (String::new(), None),
        };
        // A duplicate writes nothing: its session is not kept (`Err` here).
        let run = async {
            match self.run(Op::AcceptCommit(Box::new((item, commit)))).await {
                Ok(Reply::AcceptedCommit(Some(done))) => Ok(done),
                Ok(Reply::AcceptedCommit(None)) => Err(None),
                Ok(_) => Err(Some(unexpected())),
                Err(e) => Err(Some(e)),
            }
        };
        match super::cache::committing(sessions, self.bot, &conversation, Some(0), session, run)
            .await
        {
            Ok(done) => Ok(Some(done)),
            Err(None) => Ok(None),
            Err(Some(e)) => Err(e),
        }
    }

    async fn erase(
        &self,
        conversation: &str,
        hash: &str,
        dry_run: bool,
    ) -> Result<Held, StoreError> {
        let erase = self.run(Op::Erase(conversation.to_owned(), hash.to_owned(), dry_run));
        let sessions = self.file.sessions.as_ref();
        match super::cache::changing(sessions, self.bot, conversation, dry_run, erase).await? {
            Reply::Held(h) => Ok(h),
            _ => Err(unexpected()),
        }
    }

    async fn export(&self, conversation: &str, hash: &str) -> Result<Export, StoreError> {
        match self
            .run(Op::Export(conversation.to_owned(), hash.to_owned()))
            .await?
        {
            Reply::Export(e) => Ok(*e),
            _ => Err(unexpected()),
        }
    }

    async fn expire(
        &self,
        kind: Expiring,
        before: Millis,
        limit: usize,
        dry_run: bool,
    ) -> Result<u64, StoreError> {
        let sweep = async {
            match self.run(Op::Expire(kind, before, limit, dry_run)).await? {
                Reply::Ids(n) => Ok(n.first().copied().unwrap_or(0)),
                _ => Err(unexpected()),
            }
        };
        let sessions = self
            .file
            .sessions
            .as_ref()
            .filter(|_| kind == Expiring::Sessions);
        super::cache::sweeping(sessions, self.bot, dry_run, sweep).await
    }

    async fn oldest_run(&self) -> Result<Option<Millis>, StoreError> {
        match self.run(Op::OldestRun).await? {
            Reply::Oldest(t) => Ok(t),
            _ => Err(unexpected()),
        }
    }

    async fn fold(
        &self,
        from: Millis,
        to: Millis,
        rollups: Vec<Rollup>,
    ) -> Result<u64, StoreError> {
        match self.run(Op::Fold(from, to, rollups)).await? {
            Reply::Ids(n) => Ok(n.first().copied().unwrap_or(0)),
            _ => Err(unexpected()),
        }
    }

    async fn rollups(&self, from: Millis, to: Millis) -> Result<Vec<Rollup>, StoreError> {
        match self.run(Op::Rollups(from, to)).await? {
            Reply::Rollups(v) => Ok(v),
            _ => Err(unexpected()),
        }
    }

    async fn events(
        &self,
        from: Millis,
        to: Millis,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, LogEvent)>, StoreError> {
        match self.run(Op::Events(from, to, after, limit)).await? {
            Reply::Events(v) => Ok(v),
            _ => Err(unexpected()),
        }
    }

    async fn outbox(&self, after: u64, limit: usize) -> Result<Vec<OutboxItem>, StoreError> {
        match self.run(Op::Outbox(after, limit)).await? {
            Reply::Outbox(v) => Ok(v),
            _ => Err(unexpected()),
        }
    }

    async fn outbox_of(
        &self,
        conversation: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<OutboxItem>, StoreError> {
        match self
            .run(Op::OutboxOf(conversation.to_owned(), after, limit))
            .await?
        {
            Reply::Outbox(v) => Ok(v),
            _ => Err(unexpected()),
        }
    }

    async fn outbox_conversations(
        &self,
        after: &str,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        match self
            .run(Op::OutboxConversations(after.to_owned(), limit))
            .await?
        {
            Reply::Names(v) => Ok(v),
            _ => Err(unexpected()),
        }
    }

    async fn delivered(&self, id: u64) -> Result<(), StoreError> {
        self.run(Op::Delivered(id)).await.map(drop)
    }

    async fn due_timers(
        &self,
        now: Millis,
        limit: usize,
    ) -> Result<Vec<(String, Millis)>, StoreError> {
        match self.run(Op::DueTimers(now, limit)).await? {
            Reply::Due(v) => Ok(v),
            _ => Err(unexpected()),
        }
    }

    async fn due_timers_of_every_bot(
        &self,
        now: Millis,
        limit: usize,
    ) -> Result<Option<Vec<(String, String, Millis)>>, StoreError> {
        match self.run(Op::DueTimersAll(now, limit)).await? {
            Reply::DueAll(v) => Ok(Some(v)),
            _ => Err(unexpected()),
        }
    }

    async fn cursor(&self, name: &str) -> Result<Option<String>, StoreError> {
        match self.run(Op::Cursor(name.to_owned())).await? {
            Reply::Cursor(c) => Ok(c),
            _ => Err(unexpected()),
        }
    }

    async fn set_cursor(&self, name: &str, value: &str) -> Result<(), StoreError> {
        self.run(Op::SetCursor(name.to_owned(), value.to_owned()))
            .await
            .map(drop)
    }

    async fn attempt(&self, seq: u64, _conversation: &str) -> Result<u32, StoreError> {
        match self.run(Op::Attempt(seq)).await? {
            Reply::Count(n) => Ok(n),
            _ => Err(unexpected()),
        }
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let recent = self
            .file
            .failed_write
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .filter(|(at, _)| at.elapsed() < RECENT_FAILURE)
            .map(|(_, e)| e.clone());
        if let Some(e) = recent {
            return Err(StoreError(format!("the last write failed: {e}")));
        }
        self.run(Op::Ping).await.map(drop)
    }

    async fn add_dead_letter(&self, letter: DeadLetter) -> Result<u64, StoreError> {
        match self.run(Op::AddDead(letter)).await? {
            Reply::Ids(ids) => ids.first().copied().ok_or_else(unexpected),
            _ => Err(unexpected()),
        }
    }

    async fn dead_letters(
        &self,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<DeadLetterSummary>, StoreError> {
        match self.run(Op::DeadList(before, limit)).await? {
            Reply::DeadSummaries(v) => Ok(v),
            _ => Err(unexpected()),
        }
    }

    async fn dead_letter(&self, id: u64) -> Result<Option<DeadLetter>, StoreError> {
        match self.run(Op::DeadGet(id)).await? {
            Reply::Dead(v) => Ok(v.into_iter().next()),
            _ => Err(unexpected()),
        }
    }

    async fn remove_dead_letter(&self, id: u64) -> Result<bool, StoreError> {
        match self.run(Op::DeadRemove(id)).await? {
            Reply::Flag(f) => Ok(f),
            _ => Err(unexpected()),
        }
    }

    fn keeps_budget(&self) -> Option<bool> {
        Some(self.file.knew_budget)
    }

    async fn take_budget(
        &self,
        key: &str,
        requests: u32,
        per: Duration,
        hold: Duration,
    ) -> Result<Option<crate::qpien::limit::Grant>, StoreError> {
        let op = Op::TakeBudget {
            key: key.to_owned(),
            requests,
            per: per.as_millis() as Millis,
            hold: hold.as_millis() as Millis,
        };
        match self.run(op).await? {
            Reply::Grant(g) => Ok(Some(g)),
            _ => Err(unexpected()),
        }
    }

    async fn budget_done(&self, id: i64) -> Result<(), StoreError> {
        self.run(Op::BudgetDone(id)).await.map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file whose event log had a row per event reads the same after the
    /// upgrade to a row per turn, and pages of it split a row where asked.
    #[tokio::test]
    async fn the_event_log_of_a_row_per_event_reads_the_same_after_the_upgrade() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flowbot.db");
        {
            let mut conn = Connection::open(&path).unwrap();
            let all = migrations();
            // Up to the migration before the event log's rows per turn.
            all.to_version(&mut conn, 8).unwrap();
            conn.execute_batch(
                "INSERT INTO events (bot, at, conversation, run, flow_version, state, channel,
                 kind, detail, value, test) VALUES
                 (0, 10, 'h1', 5, 'v', 'start', 'whatsapp', 'started', '', NULL, 0),
                 (0, 11, 'h1', 5, 'v', 'ask', 'whatsapp', 'answered', 'name', 'Ada', 0),
                 (0, 12, 'h2', 7, 'v', 'start', 'livechat', 'started', '', NULL, 1);",
            )
            .unwrap();
        }
        let store = SqliteStore::open(&path, SqliteOptions::default()).unwrap();
        let event = |at, conversation: &str, run, state: &str, kind: &str| LogEvent {
            at,
            conversation: conversation.into(),
            run,
            flow_version: "v".into(),
            state: state.into(),
            channel: if run == 5 { "whatsapp" } else { "livechat" }.into(),
            kind: kind.into(),
            detail: String::new(),
            value: None,
            test: run == 7,
        };
        let answered = LogEvent {
            detail: "name".into(),
            value: Some("Ada".into()),
            ..event(11, "h1", 5, "ask", "answered")
        };
        let read = store.events(0, 100, 0, 10).await.unwrap();
        assert_eq!(
            read.iter().map(|(_, e)| e.clone()).collect::<Vec<_>>(),
            [
                event(10, "h1", 5, "start", "started"),
                answered.clone(),
                event(12, "h2", 7, "start", "started")
            ]
        );
        // A turn's events after the upgrade: one row, paged one at a time.
        let Accepted::New(item) = store
            .accept(NewInbound {
                key: "m1".into(),
                conversation: "c3".into(),
                payload: b"{}".to_vec(),
                received_at: 20,
            })
            .await
            .unwrap()
        else {
            panic!("new")
        };
        let turn = [
            event(20, "h3", 5, "start", "started"),
            event(20, "h3", 5, "ask", "entered"),
            event(20, "h3", 5, "end", "entered"),
        ];
        store
            .commit(TurnCommit {
                inbox_seq: item.seq,
                conversation: "c3".into(),
                session: None,
                outbox: vec![],
                fence: None,
                at: 20,
                events: turn.to_vec(),
            })
            .await
            .unwrap();
        let conn = Connection::open(&path).unwrap();
        let rows: i64 = conn
            .query_row(
                "SELECT count(*) FROM events WHERE conversation = 'h3'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(rows, 1, "a turn's events are one row");
        let mut after = read[2].0;
        let mut paged = Vec::new();
        loop {
            let page = store.events(0, 100, after, 1).await.unwrap();
            let Some((id, e)) = page.into_iter().next() else {
                break;
            };
            assert!(id > after, "ids increase");
            after = id;
            paged.push(e);
        }
        assert_eq!(paged, turn);
        // Counted by event, deleted by row.
        assert_eq!(store.erase("c3", "h3", true).await.unwrap().events, 3);
        assert_eq!(store.export("c3", "h3").await.unwrap().events, turn);
        assert_eq!(
            store.expire(Expiring::Events, 12, 10, false).await.unwrap(),
            2
        );
        assert_eq!(store.fold(0, 100, vec![]).await.unwrap(), 4);
        assert!(store.events(0, 100, 0, 10).await.unwrap().is_empty());
    }
}
