//! [`PostgresStore`]: the store for several instances sharing one database.
//!
//! The same contract as the other stores (accept once per key, durable on
//! return; one transaction per turn), kept by PostgreSQL itself: a unique key
//! for deduplication, a transaction for each commit. A turn's commit is one
//! statement (one round trip: the fencing check and every write, as
//! data-modifying `WITH` clauses), and delivered marks made at the same time
//! are deleted together (group commit): PostgreSQL's cost is per statement
//! and per transaction, not per row (BENCHMARKS.md). The tables live in their
//! own schema (`store.schema`, default `flowbot`), so several bots (or several
//! test runs) can share a database.
//!
//! Migrations are versioned (`flowbot_migrations`) and run at start under an
//! advisory lock, so instances started together do not race in them: the
//! first one migrates, the others wait and find the schema up to date.
//! Connections come from a deadpool pool and are re-established as needed; a
//! call that cannot reach the database fails (the runtime then answers 503 and
//! retries), it never waits for ever.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::NoTls;

use crate::qpien::limit::Grant;

use super::{
    Accepted, DeadLetter, DeadLetterSummary, Expiring, Export, Held, InboxItem, LogEvent, Millis,
    NewInbound, OutboxItem, Rollup, StateStore, StoreError, StoredSession, TurnCommit,
    MAX_DEAD_LETTERS,
};

/// Dedup keys of processed messages are kept this long.
const KEEP_KEYS_MS: i64 = 7 * 24 * 3600 * 1000;

/// The advisory lock key of migrations (any fixed number).
const MIGRATION_LOCK: i64 = 0x0066_6c6f_7762_6f74;

/// The schema, version by version. Never edit a released step: add one.
const MIGRATIONS: &[&str] = &[
    "CREATE TABLE inbox (
        seq BIGSERIAL PRIMARY KEY,
        key TEXT NOT NULL UNIQUE,
        conversation TEXT NOT NULL,
        payload BYTEA NOT NULL,
        received_at BIGINT NOT NULL,
        done BOOLEAN NOT NULL DEFAULT false,
        attempts INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX inbox_pending ON inbox (seq) WHERE NOT done;
    CREATE TABLE sessions (
        conversation TEXT PRIMARY KEY,
        data BYTEA NOT NULL,
        due_at BIGINT
    );
    CREATE INDEX sessions_due ON sessions (due_at) WHERE due_at IS NOT NULL;
    CREATE TABLE outbox (
        id BIGSERIAL PRIMARY KEY,
        conversation TEXT NOT NULL,
        payload BYTEA NOT NULL
    );
    CREATE TABLE cursors (name TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE dead_letters (
        id BIGSERIAL PRIMARY KEY,
        received_at BIGINT NOT NULL,
        reason TEXT NOT NULL,
        headers TEXT NOT NULL,
        body BYTEA NOT NULL
    );",
    "CREATE TABLE claims (
        conversation TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        token BIGINT NOT NULL,
        expires_at BIGINT NOT NULL
    );
    CREATE INDEX claims_owner ON claims (owner);
    CREATE SEQUENCE claim_tokens;
    CREATE TABLE budget_calls (key TEXT NOT NULL, at BIGINT NOT NULL);
    CREATE INDEX budget_calls_key ON budget_calls (key, at);
    CREATE INDEX inbox_pending_conversation ON inbox (conversation, seq) WHERE NOT done;
    CREATE INDEX outbox_conversation ON outbox (conversation, id);",
    // Budget calls counted from when they end: a call is a row of its own.
    "ALTER TABLE budget_calls ADD COLUMN id BIGSERIAL PRIMARY KEY;",
    // One schema for every bot of a process: each row keyed by its bot (0,
    // named '', is the one bot of a single-bot process, and holds what the
    // schema held before).
    "CREATE TABLE bots (id SERIAL PRIMARY KEY, name TEXT NOT NULL UNIQUE);
    INSERT INTO bots (id, name) VALUES (0, '');
    ALTER TABLE inbox ADD COLUMN bot INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE inbox DROP CONSTRAINT inbox_key_key;
    ALTER TABLE inbox ADD CONSTRAINT inbox_bot_key UNIQUE (bot, key);
    DROP INDEX inbox_pending;
    CREATE INDEX inbox_pending ON inbox (bot, seq) WHERE NOT done;
    DROP INDEX inbox_pending_conversation;
    CREATE INDEX inbox_pending_conversation ON inbox (bot, conversation, seq) WHERE NOT done;
    ALTER TABLE sessions ADD COLUMN bot INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE sessions DROP CONSTRAINT sessions_pkey;
    ALTER TABLE sessions ADD PRIMARY KEY (bot, conversation);
    ALTER TABLE outbox ADD COLUMN bot INTEGER NOT NULL DEFAULT 0;
    DROP INDEX outbox_conversation;
    CREATE INDEX outbox_conversation ON outbox (bot, conversation, id);
    CREATE INDEX outbox_bot ON outbox (bot, id);
    ALTER TABLE cursors ADD COLUMN bot INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE cursors DROP CONSTRAINT cursors_pkey;
    ALTER TABLE cursors ADD PRIMARY KEY (bot, name);
    ALTER TABLE dead_letters ADD COLUMN bot INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX dead_letters_bot ON dead_letters (bot, id);
    ALTER TABLE claims ADD COLUMN bot INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE claims DROP CONSTRAINT claims_pkey;
    ALTER TABLE claims ADD PRIMARY KEY (bot, conversation);",
    // The bot registry (see `registry.rs`).
    "CREATE SEQUENCE registry_versions;
    CREATE TABLE registry (
        name TEXT PRIMARY KEY,
        spec TEXT NOT NULL,
        state TEXT NOT NULL,
        source TEXT NOT NULL,
        version BIGINT NOT NULL,
        updated_at BIGINT NOT NULL
    );
    CREATE INDEX registry_version ON registry (version);",
    // The conversation event log (see `crate::insights`), read by the runs'
    // start.
    "CREATE TABLE events (
        id BIGSERIAL PRIMARY KEY,
        bot INTEGER NOT NULL,
        at BIGINT NOT NULL,
        conversation TEXT NOT NULL,
        run BIGINT NOT NULL,
        flow_version TEXT NOT NULL,
        state TEXT NOT NULL,
        channel TEXT NOT NULL,
        kind TEXT NOT NULL,
        detail TEXT NOT NULL,
        value TEXT,
        test BOOLEAN NOT NULL
    );
    CREATE INDEX events_run ON events (bot, run, id);",
    // `[retention]`: when each session last changed (those from before count
    // from the upgrade), and the event log by time.
    "ALTER TABLE sessions ADD COLUMN updated_at BIGINT;
    UPDATE sessions SET updated_at = (extract(epoch from now()) * 1000)::bigint;
    CREATE INDEX sessions_updated ON sessions (bot, updated_at);
    CREATE INDEX events_at ON events (bot, at);
    CREATE INDEX dead_letters_received ON dead_letters (bot, received_at);
    CREATE TABLE rollups (
        bot INTEGER NOT NULL,
        hour BIGINT NOT NULL,
        flow_version TEXT NOT NULL,
        channel TEXT NOT NULL,
        test BOOLEAN NOT NULL,
        kind TEXT NOT NULL,
        key TEXT NOT NULL,
        value TEXT NOT NULL,
        count BIGINT NOT NULL,
        PRIMARY KEY (bot, hour, flow_version, channel, test, kind, key, value)
    );",
    // The outbox by bot alone served no read of the runtime's (replies are
    // read back by conversation, `outbox_conversation`), and cost every reply
    // an entry written and deleted.
    "DROP INDEX IF EXISTS outbox_bot;",
];

/// The listener key of the registry's notifications (bots' ids are not
/// negative).
const REGISTRY: i32 = -1;

/// The database's clock in milliseconds: claims expire by one clock for all
/// instances, whatever theirs say.
const NOW_MS: &str = "(extract(epoch from clock_timestamp()) * 1000)::bigint";

/// True, and the statement's transaction commits without waiting for its
/// log to reach the disk (`synchronous_commit = off` for that transaction
/// only). For the claims' rows: a claim, its renewal or its giving up lost
/// to a crash of the database is safe, because a claim is checked where it
/// matters, by the fencing token in the commit of a turn (a claim lost is
/// a commit refused and the turn run by whoever holds the conversation
/// then; a giving up lost is a claim that expires). A new conversation's
/// acknowledgement then waits for one flush of the log (its acceptance)
/// instead of two.
const NO_FLUSH_WAIT: &str = "set_config('synchronous_commit', 'off', true) IS NOT NULL";

/// How to reach PostgreSQL.
#[derive(Debug, Clone)]
pub struct PostgresOptions {
    /// The connection URL, e.g. `postgres://flowbot@db/flowbot`.
    pub url: String,
    /// The schema that holds the tables (created if missing).
    pub schema: String,
    /// Most connections open at once.
    pub max_connections: usize,
    /// How long a call may wait for a connection (or to make one).
    pub connect_timeout: Duration,
    /// This instance's name in claims (unique among the instances).
    pub owner: String,
    /// The most bytes of sessions kept in memory, each with the claim it was
    /// committed under, so that a conversation's next turn under the same
    /// claim reads no row (0: none; see `cache.rs`).
    pub session_cache_bytes: u64,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        PostgresOptions {
            url: String::new(),
            schema: "flowbot".into(),
            max_connections: 16,
            connect_timeout: Duration::from_secs(5),
            owner: format!("{}-{:08x}", std::process::id(), fastrand::u32(..)),
            session_cache_bytes: 32 << 20,
        }
    }
}

/// The PostgreSQL store (see the module docs): one bot's rows, seen through
/// this handle; [`PostgresStore::bot`] gives another bot's handle on the same
/// schema and pool.
#[derive(Clone)]
pub struct PostgresStore {
    db: Arc<Db>,
    /// The bot's id in the schema (0: the one bot of a single-bot process).
    bot: i32,
}

/// The schema and its pool, shared by every bot's handle.
struct Db {
    pool: Pool,
    schema: String,
    owner: String,
    /// For the connection that listens (`LISTEN` holds one of its own).
    config: tokio_postgres::Config,
    /// The connection that holds the advisory locks of the work this process
    /// leads (a lock lasts as long as its connection), and their keys.
    leads: tokio::sync::Mutex<(Option<deadpool_postgres::Object>, HashSet<String>)>,
    /// Where each bot's notifications go, and whether the one listening
    /// connection runs.
    listeners: std::sync::Mutex<(HashMap<i32, UnboundedSender<String>>, bool)>,
    /// Delivered marks waiting to go out together (see `delivered`).
    marks: std::sync::Mutex<Marks>,
    /// The sessions this process committed, each tagged with the fencing
    /// token of the claim it was committed under (see `cache.rs`).
    sessions: Option<super::cache::Sessions>,
}

/// Replies marked delivered, waiting for the next statement that deletes
/// them, and who waits for it.
#[derive(Default)]
struct Marks {
    waiting: Vec<Mark>,
    /// Whether a task is deleting marks now (it takes the waiting ones next).
    flushing: bool,
}

/// A reply marked delivered: its bot, its id, and who waits for the
/// statement that deletes it.
type Mark = (
    i32,
    i64,
    tokio::sync::oneshot::Sender<Result<(), StoreError>>,
);

/// The most delivered marks one statement deletes.
const MARKS_AT_ONCE: usize = 1000;

impl Db {
    /// Deletes the waiting delivered marks, a statement per bot and round,
    /// until none is left; tells each waiter how its round went.
    async fn flush_marks(self: Arc<Self>) {
        loop {
            let round: Vec<_> = {
                let mut marks = self.marks.lock().unwrap_or_else(|e| e.into_inner());
                if marks.waiting.is_empty() {
                    marks.flushing = false;
                    return;
                }
                let n = marks.waiting.len().min(MARKS_AT_ONCE);
                marks.waiting.drain(..n).collect()
            };
            let mut bots: Vec<i32> = round.iter().map(|(bot, _, _)| *bot).collect();
            bots.sort_unstable();
            bots.dedup();
            let result = async {
                let client = self.pool.get().await.map_err(pool_error)?;
                let statement = client
                    .prepare_cached("DELETE FROM outbox WHERE bot = $1 AND id = ANY($2)")
                    .await
                    .map_err(pg)?;
                for bot in bots {
                    let ids: Vec<i64> = round
                        .iter()
                        .filter(|(b, _, _)| *b == bot)
                        .map(|(_, id, _)| *id)
                        .collect();
                    client
                        .execute(&statement, &[&bot, &ids])
                        .await
                        .map_err(pg)?;
                }
                Ok(())
            }
            .await;
            for (_, _, told) in round {
                let _ = told.send(result.clone());
            }
        }
    }
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("schema", &self.db.schema)
            .field("bot", &self.bot)
            .finish()
    }
}

// Tokens come from one sequence: a claim given up and made again never gets
// a token it had before, so a turn begun under an old claim is always told.

/// A PostgreSQL error as a store error: the server's message when it gave one.
fn pg(e: tokio_postgres::Error) -> StoreError {
    match e.as_db_error() {
        Some(db) => StoreError(format!("postgres: {}", db.message())),
        None => StoreError(format!("postgres: {}", crate::text::error_chain(&e))),
    }
}

fn pool_error(e: deadpool_postgres::PoolError) -> StoreError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => pg(e),
        e => StoreError(format!("postgres: {e}")),
    }
}

impl PostgresStore {
    /// Connects, creates the schema if needed and brings it up to date.
    pub async fn open(options: PostgresOptions) -> Result<PostgresStore, StoreError> {
        if !super::is_schema_name(&options.schema) {
            return Err(StoreError(format!(
                "store.schema `{}`: use lowercase letters, digits and `_` (at most 63)",
                options.schema
            )));
        }
        let mut config = tokio_postgres::Config::from_str(&options.url)
            .map_err(|e| StoreError(format!("store.url: {e}")))?;
        config.connect_timeout(options.connect_timeout);
        config.options(format!("-c search_path={}", options.schema));
        config.application_name("flowbot");
        let manager = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(options.max_connections.max(3))
            .wait_timeout(Some(options.connect_timeout))
            .create_timeout(Some(options.connect_timeout))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| StoreError(format!("postgres: {e}")))?;
        let store = PostgresStore {
            db: Arc::new(Db {
                pool,
                schema: options.schema,
                owner: options.owner,
                config,
                leads: Default::default(),
                listeners: Default::default(),
                marks: Default::default(),
                sessions: super::cache::Sessions::new(options.session_cache_bytes),
            }),
            bot: 0,
        };
        store.migrate().await?;
        let client = store.client().await?;
        client
            .execute(
                &client
                    .prepare_cached("DELETE FROM inbox WHERE done AND received_at < $1")
                    .await
                    .map_err(pg)?,
                &[&(crate::time::now() - KEEP_KEYS_MS)],
            )
            .await
            .map_err(pg)?;
        Ok(store)
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.db.pool.get().await.map_err(pool_error)
    }

    /// The handle of the bot named `name` on the same schema and pool (made
    /// the first time; `""` is the one bot of a single-bot process).
    pub async fn bot(&self, name: &str) -> Result<PostgresStore, StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO bots (name) VALUES ($1) ON CONFLICT (name) DO NOTHING",
                &[&name],
            )
            .await
            .map_err(pg)?;
        let id: i32 = client
            .query_one("SELECT id FROM bots WHERE name = $1", &[&name])
            .await
            .map_err(pg)?
            .get(0);
        Ok(PostgresStore {
            db: self.db.clone(),
            bot: id,
        })
    }

    /// Moves the rows of the schema `from`, which held one bot's (as
    /// flowbot kept a schema per bot before one schema held them all), into
    /// this schema as the rows of the bot named `bot`, in one transaction,
    /// then renames `from` to `<from>_imported`. `None`: there is no such
    /// schema (nothing to move, or moved already). A message already here (by
    /// its key) is not copied twice.
    pub async fn import_schema(
        &self,
        bot: &str,
        from: &str,
    ) -> Result<Option<super::Imported>, StoreError> {
        if !super::is_schema_name(from) {
            return Err(StoreError(format!("`{from}` is not a schema name")));
        }
        let into = self.bot(bot).await?;
        let mut client = self.client().await?;
        let exists = client
            .query_opt(
                "SELECT 1 FROM information_schema.tables WHERE table_schema = $1 AND table_name = 'sessions'",
                &[&from],
            )
            .await
            .map_err(pg)?
            .is_some();
        if !exists {
            return Ok(None);
        }
        let tx = client.transaction().await.map_err(pg)?;
        let to = &self.db.schema;
        let copy = |sql: String| {
            let tx = &tx;
            async move { tx.execute(&sql, &[&into.bot]).await.map_err(pg) }
        };
        let imported = super::Imported {
            inbox: copy(format!(
                "INSERT INTO {to}.inbox (bot, key, conversation, payload, received_at, done, attempts)
                 SELECT $1, key, conversation, payload, received_at, done, attempts FROM {from}.inbox
                 ORDER BY seq ON CONFLICT (bot, key) DO NOTHING"
            ))
            .await? as usize,
            sessions: copy(format!(
                "INSERT INTO {to}.sessions (bot, conversation, data, due_at, updated_at)
                 SELECT $1, conversation, data, due_at, (extract(epoch from now()) * 1000)::bigint
                 FROM {from}.sessions ON CONFLICT (bot, conversation) DO NOTHING"
            ))
            .await? as usize,
            outbox: copy(format!(
                "INSERT INTO {to}.outbox (bot, conversation, payload)
                 SELECT $1, conversation, payload FROM {from}.outbox ORDER BY id"
            ))
            .await? as usize,
            dead_letters: copy(format!(
                "INSERT INTO {to}.dead_letters (bot, received_at, reason, headers, body)
                 SELECT $1, received_at, reason, headers, body FROM {from}.dead_letters ORDER BY id"
            ))
            .await? as usize,
        };
        copy(format!(
            "INSERT INTO {to}.cursors (bot, name, value)
             SELECT $1, name, value FROM {from}.cursors WHERE name <> 'store:ping'
             ON CONFLICT (bot, name) DO NOTHING"
        ))
        .await?;
        tx.batch_execute(&format!(
            "INSERT INTO {to}.budget_calls (key, at) SELECT key, at FROM {from}.budget_calls;
             ALTER SCHEMA {from} RENAME TO {from}_imported;"
        ))
        .await
        .map_err(pg)?;
        tx.commit().await.map_err(pg)?;
        if let Some(s) = &self.db.sessions {
            s.clear();
        }
        Ok(Some(imported))
    }

    /// The pool's connections: open, and the most it opens.
    pub fn connections(&self) -> (usize, usize) {
        let status = self.db.pool.status();
        (status.size, status.max_size)
    }

    /// Runs the migrations not yet applied, one transaction each, under an
    /// advisory lock held for the whole run.
    async fn migrate(&self) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        // The lock comes first: even `CREATE SCHEMA IF NOT EXISTS` races.
        client
            .execute(
                &client
                    .prepare_cached("SELECT pg_advisory_lock($1)")
                    .await
                    .map_err(pg)?,
                &[&MIGRATION_LOCK],
            )
            .await
            .map_err(pg)?;
        let result = async {
            client
                .batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {}", self.db.schema))
                .await
                .map_err(pg)?;
            client
                .batch_execute(
                    "CREATE TABLE IF NOT EXISTS flowbot_migrations (
                        version INTEGER PRIMARY KEY,
                        applied_at BIGINT NOT NULL
                    )",
                )
                .await
                .map_err(pg)?;
            let done: i32 = client
                .query_one(
                    &client
                        .prepare_cached("SELECT COALESCE(MAX(version), 0) FROM flowbot_migrations")
                        .await
                        .map_err(pg)?,
                    &[],
                )
                .await
                .map_err(pg)?
                .get(0);
            for (i, step) in MIGRATIONS.iter().enumerate() {
                let version = i as i32 + 1;
                if version <= done {
                    continue;
                }
                let tx = client.transaction().await.map_err(pg)?;
                tx.batch_execute(step).await.map_err(|e| {
                    StoreError(format!("postgres: migration {version} failed: {}", pg(e).0))
                })?;
                tx.execute(
                    &tx.prepare_cached(
                        "INSERT INTO flowbot_migrations (version, applied_at) VALUES ($1, $2)",
                    )
                    .await
                    .map_err(pg)?,
                    &[&version, &crate::time::now()],
                )
                .await
                .map_err(pg)?;
                tx.commit().await.map_err(pg)?;
                tracing::info!(version, schema = %self.db.schema, "database migrated");
            }
            Ok::<(), StoreError>(())
        }
        .await;
        let unlock = client
            .execute(
                &client
                    .prepare_cached("SELECT pg_advisory_unlock($1)")
                    .await
                    .map_err(pg)?,
                &[&MIGRATION_LOCK],
            )
            .await
            .map_err(pg);
        result.and(unlock.map(drop))
    }
}

fn inbox_item(r: &tokio_postgres::Row, resumed: bool) -> InboxItem {
    InboxItem {
        seq: r.get::<_, i64>(0) as u64,
        key: r.get(1),
        conversation: r.get(2),
        payload: r.get(3),
        received_at: r.get(4),
        attempts: r.get::<_, i32>(5).max(0) as u32,
        resumed,
    }
}

fn outbox_item(r: &tokio_postgres::Row) -> OutboxItem {
    OutboxItem {
        id: r.get::<_, i64>(0) as u64,
        conversation: r.get(1),
        payload: r.get(2),
    }
}

fn dead_letter(r: &tokio_postgres::Row) -> DeadLetter {
    DeadLetter {
        id: r.get::<_, i64>(0) as u64,
        received_at: r.get(1),
        reason: r.get(2),
        headers: r.get(3),
        body: r.get(4),
    }
}

fn id(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn limit(v: usize) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

#[async_trait]
impl super::BotRegistry for PostgresStore {
    async fn bots_since(&self, version: u64) -> Result<Vec<super::BotRecord>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                &client
                    .prepare_cached(
                        "SELECT name, spec, state, source, version, updated_at FROM registry
                         WHERE version > $1 ORDER BY version",
                    )
                    .await
                    .map_err(pg)?,
                &[&(version.min(i64::MAX as u64) as i64)],
            )
            .await
            .map_err(pg)?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            match super::registry::record(
                r.get(0),
                r.get(1),
                r.get::<_, &str>(2),
                r.get::<_, &str>(3),
                r.get(4),
                r.get(5),
            ) {
                Ok(r) => out.push(r),
                Err(e) => tracing::warn!(error = %e, "a registry row is skipped"),
            }
        }
        Ok(out)
    }

    async fn put_bots(&self, rows: &[super::NewBot]) -> Result<u64, StoreError> {
        self.put_rows(rows).await
    }

    async fn registry_changes(&self) -> Result<Option<UnboundedReceiver<String>>, StoreError> {
        PostgresStore {
            db: self.db.clone(),
            bot: REGISTRY,
        }
        .listen()
        .await
    }
}

#[async_trait]
impl StateStore for PostgresStore {
    async fn accept(&self, item: NewInbound) -> Result<Accepted, StoreError> {
        self.accept_seeing_older(item).await.map(|(a, _)| a)
    }

    async fn accept_seeing_older(
        &self,
        item: NewInbound,
    ) -> Result<(Accepted, Option<Vec<u64>>), StoreError> {
        let client = self.client().await?;
        // The subquery reads the statement's snapshot, from before the
        // insert: the conversation's older items still pending.
        let row = client
            .query_opt(
                &client
                    .prepare_cached(
                        "WITH new AS (
                     INSERT INTO inbox (bot, key, conversation, payload, received_at)
                     VALUES ($5, $1, $2, $3, $4) ON CONFLICT (bot, key) DO NOTHING RETURNING seq)
                 SELECT new.seq, ARRAY(SELECT seq FROM inbox
                     WHERE bot = $5 AND NOT done AND conversation = $2 ORDER BY seq)
                 FROM new",
                    )
                    .await
                    .map_err(pg)?,
                &[
                    &item.key,
                    &item.conversation,
                    &item.payload,
                    &item.received_at,
                    &self.bot,
                ],
            )
            .await
            .map_err(pg)?;
        Ok(match row {
            None => (Accepted::Duplicate, None),
            Some(r) => {
                let older: Vec<i64> = r.get(1);
                let item = item.accepted(r.get::<_, i64>(0) as u64);
                let older = older.into_iter().map(|s| s as u64).collect();
                (Accepted::New(item), Some(older))
            }
        })
    }

    async fn pending(&self, max: usize) -> Result<Vec<InboxItem>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                &client
                    .prepare_cached(
                        "SELECT seq, key, conversation, payload, received_at, attempts FROM inbox
                 WHERE bot = $3 AND NOT done
                   AND conversation IN (SELECT conversation FROM claims WHERE bot = $3 AND owner = $2)
                 ORDER BY seq LIMIT $1",
                    )
                    .await
                    .map_err(pg)?,
                &[&limit(max), &self.db.owner, &self.bot],
            )
            .await
            .map_err(pg)?;
        Ok(rows.iter().map(|r| inbox_item(r, true)).collect())
    }

    async fn session(&self, conversation: &str) -> Result<Option<StoredSession>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                &client
                    .prepare_cached(
                        "SELECT data, due_at FROM sessions WHERE bot = $2 AND conversation = $1",
                    )
                    .await
                    .map_err(pg)?,
                &[&conversation, &self.bot],
            )
            .await
            .map_err(pg)?;
        Ok(row.map(|r| StoredSession {
            data: r.get(0),
            due_at: r.get(1),
        }))
    }

    async fn session_for_turn(
        &self,
        conversation: &str,
        fence: Option<u64>,
    ) -> Result<Option<StoredSession>, StoreError> {
        let kept = fence.and_then(|token| {
            let sessions = self.db.sessions.as_ref()?;
            sessions.get(i64::from(self.bot), conversation, token)
        });
        match kept {
            Some(session) => Ok(session),
            None => self.session(conversation).await,
        }
    }

    async fn sessions(
        &self,
        after: &str,
        limit: usize,
    ) -> Result<Vec<(String, StoredSession)>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                &client
                    .prepare_cached(
                        "SELECT conversation, data, due_at FROM sessions
                         WHERE bot = $3 AND conversation > $1 ORDER BY conversation LIMIT $2",
                    )
                    .await
                    .map_err(pg)?,
                &[&after, &(limit as i64), &self.bot],
            )
            .await
            .map_err(pg)?;
        Ok(rows
            .iter()
            .map(|r| {
                (
                    r.get(0),
                    StoredSession {
                        data: r.get(1),
                        due_at: r.get(2),
                    },
                )
            })
            .collect())
    }

    async fn commit(&self, c: TurnCommit) -> Result<Vec<u64>, StoreError> {
        // Kept under the token of the claim it was committed under (the tag
        // a turn under the same claim reads with); forgotten otherwise.
        let sessions = self.db.sessions.as_ref();
        let session = sessions.and(c.session.clone());
        let run = self.commit_statement(&c);
        super::cache::committing(
            sessions,
            self.bot.into(),
            &c.conversation,
            c.fence,
            session,
            run,
        )
        .await
    }

    async fn erase(
        &self,
        conversation: &str,
        hash: &str,
        dry_run: bool,
    ) -> Result<Held, StoreError> {
        let erase = self.erase_rows(conversation, hash, dry_run);
        let sessions = self.db.sessions.as_ref();
        super::cache::changing(sessions, self.bot.into(), conversation, dry_run, erase).await
    }

    async fn export(&self, conversation: &str, hash: &str) -> Result<Export, StoreError> {
        let client = self.client().await?;
        let rows = async |sql: &str, key: &str| {
            let stmt = client.prepare(sql).await.map_err(pg)?;
            client.query(&stmt, &[&self.bot, &key]).await.map_err(pg)
        };
        let payloads = |rows: Vec<tokio_postgres::Row>| -> Vec<Vec<u8>> {
            rows.iter().map(|r| r.get::<_, Vec<u8>>(0)).collect()
        };
        let session = payloads(
            rows(
                "SELECT data FROM sessions WHERE bot = $1 AND conversation = $2",
                conversation,
            )
            .await?,
        )
        .into_iter()
        .next();
        let inbox = payloads(
            rows("SELECT payload FROM inbox WHERE bot = $1 AND conversation = $2 AND NOT done ORDER BY seq", conversation).await?,
        );
        let outbox = payloads(
            rows(
                "SELECT payload FROM outbox WHERE bot = $1 AND conversation = $2 ORDER BY id",
                conversation,
            )
            .await?,
        );
        let dead_letters = rows(
            "SELECT id, received_at, reason, headers, body FROM dead_letters WHERE bot = $1
             AND (position(convert_to($2, 'UTF8') in body) > 0 OR strpos(headers, $2) > 0) ORDER BY id",
            conversation,
        )
        .await?
        .iter()
        .map(|r| DeadLetter {
            id: r.get::<_, i64>(0) as u64,
            received_at: r.get(1),
            reason: r.get(2),
            headers: r.get(3),
            body: r.get(4),
        })
        .collect();
        let events = rows(
            "SELECT at, conversation, run, flow_version, state, channel, kind, detail, value, test
             FROM events WHERE bot = $1 AND conversation = $2 ORDER BY id",
            hash,
        )
        .await?
        .iter()
        .map(|r| LogEvent {
            at: r.get(0),
            conversation: r.get(1),
            run: r.get(2),
            flow_version: r.get(3),
            state: r.get(4),
            channel: r.get(5),
            kind: r.get(6),
            detail: r.get(7),
            value: r.get(8),
            test: r.get(9),
        })
        .collect();
        Ok(Export {
            session,
            inbox,
            outbox,
            dead_letters,
            events,
        })
    }

    async fn expire(
        &self,
        kind: Expiring,
        before: Millis,
        max: usize,
        dry_run: bool,
    ) -> Result<u64, StoreError> {
        let (count, delete) = match kind {
            // Not one whose conversation an instance holds now: it is being
            // served (and the holder may keep it in memory, see `cache.rs`).
            Expiring::Sessions => (
                "SELECT count(*) FROM (SELECT 1 FROM sessions s WHERE bot = $1
                 AND updated_at < $2 AND (due_at IS NULL OR due_at < $2)
                 AND NOT EXISTS (SELECT 1 FROM claims c WHERE c.bot = $1
                     AND c.conversation = s.conversation AND c.expires_at > (extract(epoch from clock_timestamp()) * 1000)::bigint) LIMIT $3) s",
                "DELETE FROM sessions WHERE bot = $1 AND conversation IN (
                 SELECT conversation FROM sessions s WHERE bot = $1
                 AND updated_at < $2 AND (due_at IS NULL OR due_at < $2)
                 AND NOT EXISTS (SELECT 1 FROM claims c WHERE c.bot = $1
                     AND c.conversation = s.conversation AND c.expires_at > (extract(epoch from clock_timestamp()) * 1000)::bigint) LIMIT $3)",
            ),
            Expiring::DeadLetters => (
                "SELECT count(*) FROM (SELECT 1 FROM dead_letters WHERE bot = $1
                 AND received_at < $2 LIMIT $3) d",
                "DELETE FROM dead_letters WHERE id IN (SELECT id FROM dead_letters
                 WHERE bot = $1 AND received_at < $2 LIMIT $3)",
            ),
            Expiring::Events => (
                "SELECT count(*) FROM (SELECT 1 FROM events WHERE bot = $1 AND at < $2 LIMIT $3) e",
                "DELETE FROM events WHERE id IN (SELECT id FROM events
                 WHERE bot = $1 AND at < $2 LIMIT $3)",
            ),
            // Whole hours at a time.
            Expiring::Rollups => (
                "SELECT count(*) FROM (SELECT 1 FROM rollups WHERE bot = $1 AND hour < $2 LIMIT $3) r",
                "DELETE FROM rollups WHERE bot = $1 AND hour IN (SELECT DISTINCT hour
                 FROM rollups WHERE bot = $1 AND hour < $2 LIMIT $3)",
            ),
        };
        let client = self.client().await?;
        let args: [&(dyn tokio_postgres::types::ToSql + Sync); 3] =
            [&self.bot, &before, &limit(max)];
        if dry_run {
            let row = client
                .query_one(&client.prepare_cached(count).await.map_err(pg)?, &args)
                .await
                .map_err(pg)?;
            return Ok(row.get::<_, i64>(0) as u64);
        }
        let statement = client.prepare_cached(delete).await.map_err(pg)?;
        let sweep = async { client.execute(&statement, &args).await.map_err(pg) };
        let sessions = self
            .db
            .sessions
            .as_ref()
            .filter(|_| kind == Expiring::Sessions);
        super::cache::sweeping(sessions, self.bot.into(), false, sweep).await
    }

    async fn oldest_run(&self) -> Result<Option<Millis>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_one(
                &client
                    .prepare_cached("SELECT min(run) FROM events WHERE bot = $1")
                    .await
                    .map_err(pg)?,
                &[&self.bot],
            )
            .await
            .map_err(pg)?;
        Ok(row.get(0))
    }

    async fn fold(
        &self,
        from: Millis,
        to: Millis,
        rollups: Vec<Rollup>,
    ) -> Result<u64, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg)?;
        let add = tx
            .prepare_cached(
                "INSERT INTO rollups (bot, hour, flow_version, channel, test, kind, key, value, count)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                 ON CONFLICT (bot, hour, flow_version, channel, test, kind, key, value)
                 DO UPDATE SET count = rollups.count + excluded.count",
            )
            .await
            .map_err(pg)?;
        for r in &rollups {
            let count = r.count as i64;
            tx.execute(
                &add,
                &[
                    &self.bot,
                    &r.hour,
                    &r.flow_version,
                    &r.channel,
                    &r.test,
                    &r.kind,
                    &r.key,
                    &r.value,
                    &count,
                ],
            )
            .await
            .map_err(pg)?;
        }
        let n = tx
            .execute(
                &tx.prepare_cached("DELETE FROM events WHERE bot = $1 AND run >= $2 AND run < $3")
                    .await
                    .map_err(pg)?,
                &[&self.bot, &from, &to],
            )
            .await
            .map_err(pg)?;
        tx.commit().await.map_err(pg)?;
        Ok(n)
    }

    async fn rollups(&self, from: Millis, to: Millis) -> Result<Vec<Rollup>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                &client
                    .prepare_cached(
                        "SELECT hour, flow_version, channel, test, kind, key, value, count
                         FROM rollups WHERE bot = $1 AND hour >= $2 AND hour < $3",
                    )
                    .await
                    .map_err(pg)?,
                &[&self.bot, &from, &to],
            )
            .await
            .map_err(pg)?;
        Ok(rows
            .iter()
            .map(|r| Rollup {
                hour: r.get(0),
                flow_version: r.get(1),
                channel: r.get(2),
                test: r.get(3),
                kind: r.get(4),
                key: r.get(5),
                value: r.get(6),
                count: r.get::<_, i64>(7) as u64,
            })
            .collect())
    }

    async fn events(
        &self,
        from: Millis,
        to: Millis,
        after: u64,
        max: usize,
    ) -> Result<Vec<(u64, LogEvent)>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                &client
                    .prepare_cached(
                        "SELECT id, at, conversation, run, flow_version, state, channel, kind,
                         detail, value, test FROM events
                         WHERE bot = $1 AND run >= $2 AND run < $3 AND id > $4 ORDER BY id LIMIT $5",
                    )
                    .await
                    .map_err(pg)?,
                &[&self.bot, &from, &to, &id(after), &limit(max)],
            )
            .await
            .map_err(pg)?;
        Ok(rows
            .iter()
            .map(|r| {
                (
                    r.get::<_, i64>(0) as u64,
                    LogEvent {
                        at: r.get(1),
                        conversation: r.get(2),
                        run: r.get(3),
                        flow_version: r.get(4),
                        state: r.get(5),
                        channel: r.get(6),
                        kind: r.get(7),
                        detail: r.get(8),
                        value: r.get(9),
                        test: r.get(10),
                    },
                )
            })
            .collect())
    }

    async fn outbox(&self, after: u64, max: usize) -> Result<Vec<OutboxItem>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                &client.prepare_cached("SELECT id, conversation, payload FROM outbox
                 WHERE bot = $4 AND id > $1
                   AND conversation IN (SELECT conversation FROM claims WHERE bot = $4 AND owner = $3)
                 ORDER BY id LIMIT $2").await.map_err(pg)?,
                &[&id(after), &limit(max), &self.db.owner, &self.bot],
            )
            .await
            .map_err(pg)?;
        Ok(rows.iter().map(outbox_item).collect())
    }

    /// Group commit for delivered marks: a mark joins those waiting, and
    /// one task deletes all that wait in one statement (each a transaction
    /// and a flush of the server's log), then those that came meanwhile.
    /// Under load a turn's reply no longer costs a transaction of its own;
    /// alone, a mark goes out at once. It returns once its own statement
    /// is committed, as before.
    async fn delivered(&self, outbox_id: u64) -> Result<(), StoreError> {
        let (told, result) = tokio::sync::oneshot::channel();
        let lead = {
            let mut marks = self.db.marks.lock().unwrap_or_else(|e| e.into_inner());
            marks.waiting.push((self.bot, id(outbox_id), told));
            !std::mem::replace(&mut marks.flushing, true)
        };
        if lead {
            tokio::spawn(self.db.clone().flush_marks());
        }
        result.await.map_err(|_| {
            StoreError("the store stopped before the reply was marked delivered".into())
        })?
    }

    async fn due_timers(
        &self,
        now: Millis,
        max: usize,
    ) -> Result<Vec<(String, Millis)>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                &client
                    .prepare_cached(
                        "SELECT conversation, due_at FROM sessions
                 WHERE bot = $3 AND due_at IS NOT NULL AND due_at <= $1 ORDER BY due_at LIMIT $2",
                    )
                    .await
                    .map_err(pg)?,
                &[&now, &limit(max), &self.bot],
            )
            .await
            .map_err(pg)?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    async fn due_timers_of_every_bot(
        &self,
        now: Millis,
        max: usize,
    ) -> Result<Option<Vec<(String, String, Millis)>>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                &client
                    .prepare_cached(
                        "SELECT b.name, s.conversation, s.due_at FROM sessions s
                         JOIN bots b ON b.id = s.bot
                         WHERE s.due_at IS NOT NULL AND s.due_at <= $1 ORDER BY s.due_at LIMIT $2",
                    )
                    .await
                    .map_err(pg)?,
                &[&now, &limit(max)],
            )
            .await
            .map_err(pg)?;
        Ok(Some(
            rows.iter()
                .map(|r| (r.get(0), r.get(1), r.get(2)))
                .collect(),
        ))
    }

    async fn cursor(&self, name: &str) -> Result<Option<String>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                &client
                    .prepare_cached("SELECT value FROM cursors WHERE bot = $2 AND name = $1")
                    .await
                    .map_err(pg)?,
                &[&name, &self.bot],
            )
            .await
            .map_err(pg)?;
        Ok(row.map(|r| r.get(0)))
    }

    async fn set_cursor(&self, name: &str, value: &str) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                &client
                    .prepare_cached(
                        "INSERT INTO cursors (bot, name, value) VALUES ($3, $1, $2)
                 ON CONFLICT (bot, name) DO UPDATE SET value = $2",
                    )
                    .await
                    .map_err(pg)?,
                &[&name, &value, &self.bot],
            )
            .await
            .map_err(pg)?;
        Ok(())
    }

    async fn attempt(&self, seq: u64, conversation: &str) -> Result<u32, StoreError> {
        let client = self.client().await?;
        // The conversation is named for the plan's sake (see `commit`).
        let row = client
            .query_opt(
                &client
                    .prepare_cached(
                        "UPDATE inbox SET attempts = attempts + 1
                         WHERE seq = $1 AND bot = $2 AND conversation = $3 AND NOT done
                         RETURNING attempts",
                    )
                    .await
                    .map_err(pg)?,
                &[&id(seq), &self.bot, &conversation],
            )
            .await
            .map_err(pg)?;
        Ok(row.map_or(0, |r| r.get::<_, i32>(0).max(0) as u32))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        // A write: a database that cannot take one (read-only, disk full) shows here.
        let client = self.client().await?;
        client
            .execute(
                &client
                    .prepare_cached(
                        "INSERT INTO cursors (bot, name, value) VALUES ($2, 'store:ping', $1)
                 ON CONFLICT (bot, name) DO UPDATE SET value = $1",
                    )
                    .await
                    .map_err(pg)?,
                &[&crate::time::now().to_string(), &self.bot],
            )
            .await
            .map_err(pg)?;
        Ok(())
    }

    async fn add_dead_letter(&self, letter: DeadLetter) -> Result<u64, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg)?;
        let new_id: i64 = tx
            .query_one(
                &tx.prepare_cached(
                    "INSERT INTO dead_letters (bot, received_at, reason, headers, body)
                 VALUES ($5, $1, $2, $3, $4) RETURNING id",
                )
                .await
                .map_err(pg)?,
                &[
                    &letter.received_at,
                    &letter.reason,
                    &letter.headers,
                    &letter.body,
                    &self.bot,
                ],
            )
            .await
            .map_err(pg)?
            .get(0);
        tx.execute(
            // Each bot keeps its newest `MAX_DEAD_LETTERS`.
            &tx.prepare_cached(
                "DELETE FROM dead_letters WHERE bot = $1 AND id <= (
                    SELECT id FROM dead_letters WHERE bot = $1 ORDER BY id DESC OFFSET $2 LIMIT 1)",
            )
            .await
            .map_err(pg)?,
            &[&self.bot, &(MAX_DEAD_LETTERS as i64)],
        )
        .await
        .map_err(pg)?;
        tx.commit().await.map_err(pg)?;
        Ok(new_id as u64)
    }

    async fn dead_letters(
        &self,
        before: Option<u64>,
        max: usize,
    ) -> Result<Vec<DeadLetterSummary>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                &client
                    .prepare_cached(
                        "SELECT id, received_at, reason, octet_length(body) FROM dead_letters
                 WHERE bot = $3 AND id < $1 ORDER BY id DESC LIMIT $2",
                    )
                    .await
                    .map_err(pg)?,
                &[
                    &id(before.unwrap_or(i64::MAX as u64)),
                    &limit(max),
                    &self.bot,
                ],
            )
            .await
            .map_err(pg)?;
        Ok(rows
            .iter()
            .map(|r| DeadLetterSummary {
                id: r.get::<_, i64>(0) as u64,
                received_at: r.get(1),
                reason: r.get(2),
                bytes: r.get::<_, i32>(3) as u64,
            })
            .collect())
    }

    async fn dead_letter(&self, letter: u64) -> Result<Option<DeadLetter>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                &client.prepare_cached("SELECT id, received_at, reason, headers, body FROM dead_letters WHERE id = $1 AND bot = $2").await.map_err(pg)?,
                &[&id(letter), &self.bot],
            )
            .await
            .map_err(pg)?;
        Ok(row.as_ref().map(dead_letter))
    }

    async fn remove_dead_letter(&self, letter: u64) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let n = client
            .execute(
                &client
                    .prepare_cached("DELETE FROM dead_letters WHERE id = $1 AND bot = $2")
                    .await
                    .map_err(pg)?,
                &[&id(letter), &self.bot],
            )
            .await
            .map_err(pg)?;
        Ok(n > 0)
    }

    fn shared(&self) -> bool {
        true
    }

    async fn claim(&self, conversation: &str, ttl: Duration) -> Result<Option<u64>, StoreError> {
        let client = self.client().await?;
        let ttl = ttl.as_millis() as i64;
        let statement = client
            .prepare_cached(&format!(
                "INSERT INTO claims AS c (bot, conversation, owner, token, expires_at)
                 SELECT $4, $1, $2, nextval('claim_tokens'), {NOW_MS} + $3
                 WHERE {NO_FLUSH_WAIT}
                 ON CONFLICT (bot, conversation) DO UPDATE SET
                     owner = excluded.owner,
                     token = CASE WHEN c.owner = excluded.owner THEN c.token ELSE excluded.token END,
                     expires_at = excluded.expires_at
                 WHERE c.owner = excluded.owner OR c.expires_at < {NOW_MS}
                 RETURNING token"
            ))
            .await
            .map_err(pg)?;
        let row = client
            .query_opt(
                &statement,
                &[&conversation, &self.db.owner, &ttl, &self.bot],
            )
            .await
            .map_err(pg)?;
        Ok(row.map(|r| r.get::<_, i64>(0) as u64))
    }

    async fn renew(
        &self,
        conversations: &[String],
        ttl: Duration,
    ) -> Result<Vec<String>, StoreError> {
        if conversations.is_empty() {
            return Ok(Vec::new());
        }
        let client = self.client().await?;
        let ttl = ttl.as_millis() as i64;
        let statement = client
            .prepare_cached(&format!(
                "UPDATE claims SET expires_at = {NOW_MS} + $3
                 WHERE bot = $4 AND owner = $1 AND conversation = ANY($2) AND {NO_FLUSH_WAIT}
                 RETURNING conversation"
            ))
            .await
            .map_err(pg)?;
        let rows = client
            .query(
                &statement,
                &[&self.db.owner, &conversations, &ttl, &self.bot],
            )
            .await
            .map_err(pg)?;
        let kept: std::collections::HashSet<String> = rows.iter().map(|r| r.get(0)).collect();
        Ok(conversations
            .iter()
            .filter(|c| !kept.contains(*c))
            .cloned()
            .collect())
    }

    async fn unclaim(&self, conversation: &str, token: u64) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                &client
                    .prepare_cached(&format!(
                        "DELETE FROM claims
                         WHERE bot = $3 AND conversation = $1 AND owner = $2 AND token = $4
                           AND {NO_FLUSH_WAIT}"
                    ))
                    .await
                    .map_err(pg)?,
                &[&conversation, &self.db.owner, &self.bot, &(token as i64)],
            )
            .await
            .map_err(pg)?;
        Ok(())
    }

    async fn orphans(&self, max: usize) -> Result<Vec<String>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                &format!(
                    "SELECT w.conversation FROM (
                         SELECT DISTINCT conversation FROM inbox WHERE bot = $2 AND NOT done
                         UNION SELECT DISTINCT conversation FROM outbox WHERE bot = $2
                     ) w
                     LEFT JOIN claims c ON c.bot = $2 AND c.conversation = w.conversation
                     WHERE c.conversation IS NULL OR c.expires_at < {NOW_MS}
                     LIMIT $1",
                    NOW_MS = NOW_MS
                ),
                &[&limit(max), &self.bot],
            )
            .await
            .map_err(pg)?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    async fn pending_of(&self, conversation: &str) -> Result<Vec<InboxItem>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                &client
                    .prepare_cached(
                        "SELECT seq, key, conversation, payload, received_at, attempts FROM inbox
                 WHERE bot = $2 AND NOT done AND conversation = $1 ORDER BY seq",
                    )
                    .await
                    .map_err(pg)?,
                &[&conversation, &self.bot],
            )
            .await
            .map_err(pg)?;
        // Whether they were left unfinished is the caller's to say.
        Ok(rows.iter().map(|r| inbox_item(r, false)).collect())
    }

    async fn take_budget(
        &self,
        key: &str,
        requests: u32,
        per: Duration,
        hold: Duration,
    ) -> Result<Option<Grant>, StoreError> {
        // A sliding window of the calls made by every instance, one key at a
        // time (an advisory lock for the transaction), each counted from
        // when it ended: until then (or until `hold`, if its instance dies
        // first) it stands in the future and counts in full.
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg)?;
        let per = per.as_millis() as i64;
        tx.execute(
            &tx.prepare_cached("SELECT pg_advisory_xact_lock(hashtext($1))")
                .await
                .map_err(pg)?,
            &[&key],
        )
        .await
        .map_err(pg)?;
        let now: i64 = tx
            .query_one(&format!("SELECT {NOW_MS}"), &[])
            .await
            .map_err(pg)?
            .get(0);
        tx.execute(
            &tx.prepare_cached("DELETE FROM budget_calls WHERE key = $1 AND at <= $2")
                .await
                .map_err(pg)?,
            &[&key, &(now - per)],
        )
        .await
        .map_err(pg)?;
        let row = tx
            .query_one(
                &tx.prepare_cached("SELECT count(*), min(at) FROM budget_calls WHERE key = $1")
                    .await
                    .map_err(pg)?,
                &[&key],
            )
            .await
            .map_err(pg)?;
        let used: i64 = row.get(0);
        let oldest: Option<i64> = row.get(1);
        let grant = if used < i64::from(requests) {
            let id: i64 = tx
                .query_one(
                    &tx.prepare_cached(
                        "INSERT INTO budget_calls (key, at) VALUES ($1, $2) RETURNING id",
                    )
                    .await
                    .map_err(pg)?,
                    &[&key, &(now + hold.as_millis() as i64)],
                )
                .await
                .map_err(pg)?
                .get(0);
            Grant::Granted(id)
        } else {
            // The oldest frees its slot a window after it ended (if under
            // way, not before a window from now).
            let free_at = oldest.unwrap_or(now).min(now) + per + 1;
            Grant::Wait(Duration::from_millis((free_at - now).max(1) as u64))
        };
        tx.commit().await.map_err(pg)?;
        Ok(Some(grant))
    }

    async fn lead(&self, work: &str) -> Result<bool, StoreError> {
        // A session's advisory lock, on the one connection kept for the
        // process's leads: held while the connection lives, released by the
        // server when it dies (this process stopped, or the network failed),
        // so another takes over.
        let key = format!("{}:{}:{work}", self.db.schema, self.bot);
        let mut leads = self.db.leads.lock().await;
        let (conn, held) = &mut *leads;
        if let Some(c) = conn.as_ref() {
            if let Err(e) = c.simple_query("SELECT 1").await {
                tracing::warn!(error = %crate::text::error_chain(&e), "lost the leads");
                // Dropped, not recycled: the pool makes a new one.
                if let Some(c) = conn.take() {
                    drop(deadpool_postgres::Object::take(c));
                }
                held.clear();
            }
        }
        if held.contains(&key) {
            return Ok(true);
        }
        let c = match conn {
            Some(c) => c,
            None => conn.insert(self.client().await?),
        };
        let led: bool = c
            .query_one("SELECT pg_try_advisory_lock(hashtext($1))", &[&key])
            .await
            .map_err(pg)?
            .get(0);
        if led {
            tracing::info!(%work, "leading");
            held.insert(key);
        }
        Ok(led)
    }

    async fn budget_done(&self, id: i64) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                &client
                    .prepare_cached(&format!(
                        "UPDATE budget_calls SET at = LEAST(at, {NOW_MS}) WHERE id = $1"
                    ))
                    .await
                    .map_err(pg)?,
                &[&id],
            )
            .await
            .map_err(pg)?;
        Ok(())
    }

    async fn outbox_of(
        &self,
        conversation: &str,
        after: u64,
        max: usize,
    ) -> Result<Vec<OutboxItem>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                &client
                    .prepare_cached(
                        "SELECT id, conversation, payload FROM outbox
                         WHERE bot = $4 AND conversation = $1 AND id > $2 ORDER BY id LIMIT $3",
                    )
                    .await
                    .map_err(pg)?,
                &[&conversation, &id(after), &limit(max), &self.bot],
            )
            .await
            .map_err(pg)?;
        Ok(rows.iter().map(outbox_item).collect())
    }

    async fn outbox_conversations(
        &self,
        after: &str,
        max: usize,
    ) -> Result<Vec<String>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                &client
                    .prepare_cached(
                        "SELECT DISTINCT o.conversation FROM outbox o
                         JOIN claims c ON c.bot = $4 AND c.conversation = o.conversation AND c.owner = $3
                         WHERE o.bot = $4 AND o.conversation > $1 ORDER BY o.conversation LIMIT $2",
                    )
                    .await
                    .map_err(pg)?,
                &[&after, &limit(max), &self.db.owner, &self.bot],
            )
            .await
            .map_err(pg)?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    async fn notify(&self, conversation: &str) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                &client
                    .prepare_cached("SELECT pg_notify($1, $2)")
                    .await
                    .map_err(pg)?,
                &[&self.channel(), &format!("{}:{conversation}", self.bot)],
            )
            .await
            .map_err(pg)?;
        Ok(())
    }

    async fn listen(&self) -> Result<Option<UnboundedReceiver<String>>, StoreError> {
        // One connection listens for every bot of the schema; each
        // notification (`<bot>:<conversation>`) goes to its bot's receiver.
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let start = {
            let mut listeners = self.db.listeners.lock().unwrap_or_else(|e| e.into_inner());
            listeners.0.insert(self.bot, tx);
            !std::mem::replace(&mut listeners.1, true)
        };
        if start {
            let db = Arc::downgrade(&self.db);
            let config = self.db.config.clone();
            let channel = self.channel();
            tokio::spawn(async move {
                let mut delay = Duration::from_millis(100);
                while db.strong_count() > 0 {
                    let route = |payload: String| {
                        let Some(db) = db.upgrade() else { return false };
                        let Some((bot, conversation)) = payload.split_once(':') else {
                            return true;
                        };
                        let Ok(bot) = bot.parse::<i32>() else {
                            return true;
                        };
                        let mut listeners = db.listeners.lock().unwrap_or_else(|e| e.into_inner());
                        if let Some(tx) = listeners.0.get(&bot) {
                            if tx.send(conversation.to_owned()).is_err() {
                                listeners.0.remove(&bot);
                            }
                        }
                        true
                    };
                    match listen_once(&config, &channel, route).await {
                        Ok(()) => delay = Duration::from_millis(100),
                        Err(e) => {
                            tracing::warn!(error = %e, "the PostgreSQL listener stopped; reconnecting");
                        }
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            });
        }
        Ok(Some(rx))
    }
}

impl PostgresStore {
    /// A turn's commit (see `StateStore::commit`), as one statement.
    async fn commit_statement(&self, c: &TurnCommit) -> Result<Vec<u64>, StoreError> {
        // One statement, one round trip and one transaction: the fencing
        // check, the message done, the session, the event log's rows and the
        // replies queued (before, a transaction of nine round trips: the
        // server's work per statement was what bounded the turns a second).
        // Nothing is written unless the claim the turn ran under is still
        // this instance's, unchanged (locked until the statement ends, so it
        // cannot move meanwhile), and, under a claim, unless this turn is
        // the one that marks the message done.
        //
        // The message is found by its conversation as well as its number: a
        // connection's plan is made once, maybe while the table was empty,
        // and may go through `inbox_pending_conversation`; with the
        // conversation it is a point lookup whichever index it takes.
        // (Measured: without it the plan walked every entry of the bot's
        // pending index, dead ones included, on each commit.)
        let client = self.client().await?;
        let statement = client
            .prepare_cached(
                "WITH claim AS (
                     SELECT token FROM claims
                     WHERE bot = $1 AND conversation = $2 AND owner = $3 FOR UPDATE),
                 fenced AS (
                     SELECT $4::bigint IS NOT NULL
                        AND $4::bigint IS DISTINCT FROM (SELECT token FROM claim) AS yes),
                 marked AS (
                     UPDATE inbox SET done = true, payload = ''::bytea
                     WHERE seq = $5 AND bot = $1 AND conversation = $2 AND NOT done
                       AND NOT (SELECT yes FROM fenced)
                     RETURNING seq),
                 go AS (
                     SELECT NOT (SELECT yes FROM fenced)
                        AND ($4::bigint IS NULL OR EXISTS (SELECT 1 FROM marked)) AS yes),
                 kept AS (
                     INSERT INTO sessions (bot, conversation, data, due_at, updated_at)
                     SELECT $1, $2, $6::bytea, $7::bigint, $8::bigint
                     WHERE $6::bytea IS NOT NULL AND (SELECT yes FROM go)
                     ON CONFLICT (bot, conversation) DO UPDATE SET data = EXCLUDED.data,
                         due_at = EXCLUDED.due_at, updated_at = EXCLUDED.updated_at),
                 ended AS (
                     DELETE FROM sessions WHERE bot = $1 AND conversation = $2
                       AND $6::bytea IS NULL AND (SELECT yes FROM go)),
                 logged AS (
                     INSERT INTO events (bot, at, conversation, run, flow_version, state,
                         channel, kind, detail, value, test)
                     SELECT $1, e.* FROM unnest($9::bigint[], $10::text[], $11::bigint[],
                         $12::text[], $13::text[], $14::text[], $15::text[], $16::text[],
                         $17::text[], $18::bool[]) AS e
                     WHERE (SELECT yes FROM go)),
                 queued AS (
                     INSERT INTO outbox (bot, conversation, payload)
                     SELECT $1, $2, u.payload
                     FROM unnest($19::bytea[]) WITH ORDINALITY AS u(payload, n)
                     WHERE (SELECT yes FROM go) ORDER BY u.n
                     RETURNING id)
                 SELECT (SELECT yes FROM fenced), EXISTS (SELECT 1 FROM marked),
                     ARRAY(SELECT id FROM queued ORDER BY id)",
            )
            .await
            .map_err(pg)?;
        let column = |f: fn(&LogEvent) -> &str| c.events.iter().map(f).collect::<Vec<_>>();
        let (data, due_at) = match &c.session {
            Some(s) => (Some(&s.data), s.due_at),
            None => (None, None),
        };
        let row = client
            .query_one(
                &statement,
                &[
                    &self.bot,
                    &c.conversation,
                    &self.db.owner,
                    &c.fence.map(id),
                    &id(c.inbox_seq),
                    &data,
                    &due_at,
                    &c.at,
                    &c.events.iter().map(|e| e.at).collect::<Vec<_>>(),
                    &column(|e| &e.conversation),
                    &c.events.iter().map(|e| e.run).collect::<Vec<_>>(),
                    &column(|e| &e.flow_version),
                    &column(|e| &e.state),
                    &column(|e| &e.channel),
                    &column(|e| &e.kind),
                    &column(|e| &e.detail),
                    &c.events
                        .iter()
                        .map(|e| e.value.as_deref())
                        .collect::<Vec<_>>(),
                    &c.events.iter().map(|e| e.test).collect::<Vec<_>>(),
                    &c.outbox,
                ],
            )
            .await
            .map_err(pg)?;
        if row.get::<_, bool>(0) {
            return Err(StoreError::fenced(&c.conversation));
        }
        if !row.get::<_, bool>(1) && c.fence.is_some() {
            // Another instance ran this message and committed it first.
            return Err(StoreError::already_committed(&c.conversation, c.inbox_seq));
        }
        let ids: Vec<i64> = row.get(2);
        Ok(ids.into_iter().map(|i| i as u64).collect())
    }

    /// Erases a conversation's rows (see `StateStore::erase`).
    async fn erase_rows(
        &self,
        conversation: &str,
        hash: &str,
        dry_run: bool,
    ) -> Result<Held, StoreError> {
        // Each kind's rows of the conversation ($2): by its id, and in the
        // event log by its hash.
        let rows = [
            (
                "sessions WHERE bot = $1 AND conversation = $2",
                conversation,
            ),
            (
                "inbox WHERE bot = $1 AND conversation = $2 AND NOT done",
                conversation,
            ),
            ("outbox WHERE bot = $1 AND conversation = $2", conversation),
            (
                "dead_letters WHERE bot = $1
                 AND (position(convert_to($2, 'UTF8') in body) > 0 OR strpos(headers, $2) > 0)",
                conversation,
            ),
            ("events WHERE bot = $1 AND conversation = $2", hash),
        ];
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg)?;
        let mut n = [0u64; 5];
        for (count, (which, key)) in n.iter_mut().zip(&rows) {
            let stmt = tx
                .prepare_cached(&format!("SELECT count(*) FROM {which}"))
                .await
                .map_err(pg)?;
            *count = tx
                .query_one(&stmt, &[&self.bot, key])
                .await
                .map_err(pg)?
                .get::<_, i64>(0) as u64;
        }
        if !dry_run {
            let claims = ("claims WHERE bot = $1 AND conversation = $2", conversation);
            for (which, key) in rows.iter().chain([&claims]) {
                let stmt = tx
                    .prepare_cached(&format!("DELETE FROM {which}"))
                    .await
                    .map_err(pg)?;
                tx.execute(&stmt, &[&self.bot, key]).await.map_err(pg)?;
            }
            // The keys of messages run stay (a redelivery is dropped), under
            // the keyed hash.
            let stmt = tx
                .prepare_cached(
                    "UPDATE inbox SET conversation = $3 WHERE bot = $1 AND conversation = $2",
                )
                .await
                .map_err(pg)?;
            tx.execute(&stmt, &[&self.bot, &conversation, &hash])
                .await
                .map_err(pg)?;
        }
        tx.commit().await.map_err(pg)?;
        let [sessions, inbox, outbox, dead_letters, events] = n;
        Ok(Held {
            sessions,
            inbox,
            outbox,
            dead_letters,
            events,
        })
    }

    /// Writes registry rows in one transaction, each told to every instance
    /// listening: the last version given.
    async fn put_rows(&self, rows: &[super::NewBot]) -> Result<u64, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg)?;
        // One writer at a time: versions commit in their order, so a reader
        // that saw one has seen every smaller one.
        tx.batch_execute("LOCK TABLE registry IN EXCLUSIVE MODE")
            .await
            .map_err(pg)?;
        let put = tx
            .prepare(
                "INSERT INTO registry (name, spec, state, source, version, updated_at)
                 VALUES ($1, $2, $3, $4, nextval('registry_versions'), $5)
                 ON CONFLICT (name) DO UPDATE SET spec = $2, state = $3, source = $4,
                     version = nextval('registry_versions'), updated_at = $5
                 RETURNING version",
            )
            .await
            .map_err(pg)?;
        let now = crate::time::now();
        let mut version = 0i64;
        for r in rows {
            version = tx
                .query_one(
                    &put,
                    &[
                        &r.name,
                        &r.spec,
                        &r.state.as_str(),
                        &r.source.as_str(),
                        &now,
                    ],
                )
                .await
                .map_err(pg)?
                .get(0);
        }
        // Delivered when the transaction commits: one notice says "read the
        // registry" to each instance, whatever the number of rows.
        let name = match rows {
            [one] => one.name.as_str(),
            _ => "",
        };
        tx.execute(
            "SELECT pg_notify($1, $2)",
            &[&self.channel(), &format!("{REGISTRY}:{name}")],
        )
        .await
        .map_err(pg)?;
        tx.commit().await.map_err(pg)?;
        Ok(version as u64)
    }

    /// The `NOTIFY` channel of this schema.
    fn channel(&self) -> String {
        format!("flowbot_{}", self.db.schema)
    }
}

/// Listens on `channel` until the connection ends (or `route` says to stop),
/// handing each payload to `route`.
async fn listen_once(
    config: &tokio_postgres::Config,
    channel: &str,
    route: impl Fn(String) -> bool,
) -> Result<(), StoreError> {
    let (client, mut connection) = config.connect(NoTls).await.map_err(pg)?;
    let (messages_tx, mut messages) = tokio::sync::mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        let mut stream = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = futures_util::StreamExt::next(&mut stream).await {
            match message {
                Ok(tokio_postgres::AsyncMessage::Notification(n)) => {
                    if messages_tx.send(n.payload().to_owned()).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    client
        .batch_execute(&format!("LISTEN {channel}"))
        .await
        .map_err(pg)?;
    while let Some(payload) = messages.recv().await {
        if !route(payload) {
            break;
        }
    }
    driver.abort();
    Ok(())
}
