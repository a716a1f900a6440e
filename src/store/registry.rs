//! The bot registry: a bot of a process that runs several is a row of the
//! store (its name, its specification as JSON, whether it runs), so bots are
//! added, changed, paused and removed while the process runs, and every
//! instance sharing the store sees the change.
//!
//! Each change gives the row the next number of one sequence
//! ([`BotRecord::version`]): an instance asks for the rows changed since the
//! highest number it has seen ([`BotRegistry::bots_since`]). Writers are
//! serialized (SQLite's one writer; a table lock in PostgreSQL), so a number
//! is never seen before a smaller one is committed. A removed bot stays a row
//! (its state says so), so that the removal reaches every instance, and its
//! conversations stay in the store until they are erased.
//!
//! A row's specification is kept as the registry was given it, with its
//! secrets sealed (see [`crate::sealed`]): the store never holds a credential
//! in clear.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::{Millis, StoreError};

/// Whether a registered bot runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BotState {
    /// It answers.
    Active,
    /// Its deliveries are acknowledged and kept; they are answered when it is
    /// resumed.
    Paused,
    /// Gone: its webhook answers 404. Its conversations stay in the store.
    Removed,
}

impl BotState {
    /// As stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            BotState::Active => "active",
            BotState::Paused => "paused",
            BotState::Removed => "removed",
        }
    }

    /// From its stored form.
    pub fn parse(s: &str) -> Option<BotState> {
        match s {
            "active" => Some(BotState::Active),
            "paused" => Some(BotState::Paused),
            "removed" => Some(BotState::Removed),
            _ => None,
        }
    }
}

/// Where a registered bot was defined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BotSource {
    /// A `[[bots]]` entry of `flowbot.toml`: the file wins at each start, and
    /// the API may pause and resume it but not change it.
    File,
    /// Added through the admin API (`flowbot bots add`).
    Api,
}

impl BotSource {
    /// As stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            BotSource::File => "file",
            BotSource::Api => "api",
        }
    }

    /// From its stored form.
    pub fn parse(s: &str) -> Option<BotSource> {
        match s {
            "file" => Some(BotSource::File),
            "api" => Some(BotSource::Api),
            _ => None,
        }
    }
}

/// A registered bot, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BotRecord {
    /// Its name.
    pub name: String,
    /// Its specification (JSON), secrets sealed.
    pub spec: String,
    /// Whether it runs.
    pub state: BotState,
    /// Where it was defined.
    pub source: BotSource,
    /// The number of its last change (one sequence for the whole registry).
    pub version: u64,
    /// When it last changed.
    pub updated_at: Millis,
}

/// A row to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewBot {
    /// Its name.
    pub name: String,
    /// Its specification (JSON), secrets sealed.
    pub spec: String,
    /// Whether it runs.
    pub state: BotState,
    /// Where it was defined.
    pub source: BotSource,
}

/// The registry's operations (implemented by the SQLite, PostgreSQL and
/// in-memory stores, on the store as a whole rather than one bot's handle).
#[async_trait]
pub trait BotRegistry: Send + Sync {
    /// The rows changed after `version` (all of them for 0), removed ones
    /// included, in the order of their changes.
    async fn bots_since(&self, version: u64) -> Result<Vec<BotRecord>, StoreError>;

    /// Writes rows (each made or replaced) in one commit, each with the next
    /// version, in order; every instance listening is told. The last
    /// version given.
    async fn put_bots(&self, rows: &[NewBot]) -> Result<u64, StoreError>;

    /// Writes one row: its version.
    async fn put_bot(
        &self,
        name: &str,
        spec: &str,
        state: BotState,
        source: BotSource,
    ) -> Result<u64, StoreError> {
        let row = NewBot {
            name: name.to_owned(),
            spec: spec.to_owned(),
            state,
            source,
        };
        self.put_bots(std::slice::from_ref(&row)).await
    }

    /// Told the name of each bot another instance changes (PostgreSQL's
    /// `NOTIFY`); `None`: the store has no other instances to hear from.
    async fn registry_changes(
        &self,
    ) -> Result<Option<tokio::sync::mpsc::UnboundedReceiver<String>>, StoreError> {
        Ok(None)
    }
}

/// A record from its stored columns, or why not.
pub(crate) fn record(
    name: String,
    spec: String,
    state: &str,
    source: &str,
    version: i64,
    updated_at: i64,
) -> Result<BotRecord, StoreError> {
    Ok(BotRecord {
        state: BotState::parse(state)
            .ok_or_else(|| StoreError(format!("registry: bot `{name}` has state `{state}`")))?,
        source: BotSource::parse(source)
            .ok_or_else(|| StoreError(format!("registry: bot `{name}` has source `{source}`")))?,
        name,
        spec,
        version: version.max(0) as u64,
        updated_at,
    })
}

/// The registry of a process whose store is in memory (lost at exit, like
/// the rest of it).
#[derive(Debug, Default)]
pub struct MemoryRegistry(std::sync::Mutex<(u64, Vec<BotRecord>)>);

#[async_trait]
impl BotRegistry for MemoryRegistry {
    async fn bots_since(&self, version: u64) -> Result<Vec<BotRecord>, StoreError> {
        let rows = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<BotRecord> = rows
            .1
            .iter()
            .filter(|r| r.version > version)
            .cloned()
            .collect();
        out.sort_by_key(|r| r.version);
        Ok(out)
    }

    async fn put_bots(&self, new: &[NewBot]) -> Result<u64, StoreError> {
        let mut rows = self.0.lock().unwrap_or_else(|e| e.into_inner());
        for r in new {
            rows.0 += 1;
            let row = BotRecord {
                name: r.name.clone(),
                spec: r.spec.clone(),
                state: r.state,
                source: r.source,
                version: rows.0,
                updated_at: crate::time::now(),
            };
            match rows.1.iter_mut().find(|x| x.name == r.name) {
                Some(x) => *x = row,
                None => rows.1.push(row),
            }
        }
        Ok(rows.0)
    }
}
