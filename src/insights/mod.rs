//! How the bots do: the conversation event log, each run's outcome, and the
//! reports read from them.
//!
//! **The log.** Every turn's commit carries the rows of what the turn did
//! ([`Recorder::events`]): a run started, a state entered, a rule or an intent
//! matched, a fallback, an answer saved, a handoff, a release, an outcome.
//! They are written in the same transaction as the session and the replies
//! (no second write path: a turn is in the log exactly when it happened).
//! A row names the bot, the flow's version (a fingerprint of its files), the
//! state, the channel and the time; never what anybody wrote, and the
//! conversation only as a keyed hash (HMAC-SHA256 under a key kept in the
//! store, so the same conversation is one id in the log and no id leads back
//! to it without the key). Test traffic (`flowbot demo`, the playground) is
//! marked and left out of reports unless asked for. (SQLite keeps a turn's
//! rows as one: what they share once, each event's state, kind, detail and
//! value in a JSON array; a turn writes three B-tree entries, not three a
//! row. The stores read back the same rows.)
//!
//! **Runs and outcomes.** A run is a conversation from its start (the
//! session's `started_at`) to its end. Its outcome is the first of: handed
//! to a person (`handed_off`), ended (`resolved`; `failed` when the turn that
//! ended it met an error), replaced by a new run after it expired
//! (`abandoned`); a run with none is `abandoned` once it has been quiet
//! longer than the flow's `session_timeout` (a day without one), else
//! still `open`. One outcome per run, so every rate of a cohort (the runs
//! that started in a period) lies between 0 and 1.
//!
//! **Reports** ([`report`]): the funnel (per state, the runs that reached
//! it and those that were abandoned there), outcomes, and answers (the
//! values variables took, with counts), per flow version, as a table, CSV
//! or JSON: `flowbot report`, `/admin/reports/...` and the console.
//!
//! **Roll-ups.** Past `retention.events`, the retention sweep folds each
//! hour of runs into hourly roll-ups (per flow version, channel and test
//! flag: runs started, states reached, outcomes, where runs were abandoned,
//! answers; nothing personal) and removes their rows in the same
//! transaction. Reports read roll-ups and rows alike, so a period says the
//! same before and after (a test).

pub mod report;

use std::sync::Arc;

use hmac::{KeyInit, Mac};

use crate::engine::{Step, Stored, Turn};
use crate::flow::template::VarList;
use crate::flow::Flow;
use crate::message::Effect;
use crate::store::{LogEvent, StateStore, StoreError};
use crate::time::Millis;

/// What a row of the log says happened (its `kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// A run began (in the state of the row).
    Started,
    /// A state was entered.
    Entered,
    /// A rule or a global intent matched (`detail`: its label).
    Matched,
    /// Nothing matched: a fallback, or the state again.
    Fallback,
    /// No intent was sure: the likely ones were offered.
    NotSure,
    /// A variable took a value (`detail`: its name; `value`: the value).
    Answered,
    /// An answer to an `ask` was refused.
    Invalid,
    /// An action, a request or a template failed.
    Error,
    /// An `after:` nudge fired.
    Nudged,
    /// A person took the conversation.
    Handoff,
    /// The person gave it back.
    Released,
    /// The run's outcome (`detail`: its name).
    Outcome,
}

impl Kind {
    const ALL: [Kind; 12] = [
        Kind::Started,
        Kind::Entered,
        Kind::Matched,
        Kind::Fallback,
        Kind::NotSure,
        Kind::Answered,
        Kind::Invalid,
        Kind::Error,
        Kind::Nudged,
        Kind::Handoff,
        Kind::Released,
        Kind::Outcome,
    ];

    /// The kind a row's name is (none: a kind this version does not know).
    pub fn parse(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == name)
    }

    /// Its name in the log.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Started => "started",
            Kind::Entered => "entered",
            Kind::Matched => "matched",
            Kind::Fallback => "fallback",
            Kind::NotSure => "not_sure",
            Kind::Answered => "answered",
            Kind::Invalid => "invalid",
            Kind::Error => "error",
            Kind::Nudged => "nudged",
            Kind::Handoff => "handoff",
            Kind::Released => "released",
            Kind::Outcome => "outcome",
        }
    }
}

/// The outcomes flowbot gives runs (a flow may name others).
pub mod outcome {
    /// The run ended.
    pub const RESOLVED: &str = "resolved";
    /// A person took it.
    pub const HANDED_OFF: &str = "handed_off";
    /// It ended on an error.
    pub const FAILED: &str = "failed";
    /// The customer went quiet (the session expired).
    pub const ABANDONED: &str = "abandoned";
    /// No outcome yet, and not quiet for long.
    pub const OPEN: &str = "open";
}

/// A saved answer longer than this is cut (the log is for counting).
const MAX_VALUE_CHARS: usize = 200;

/// The store's cursor that holds the key of conversation hashes.
const KEY_CURSOR: &str = "insights.key";

/// Writes a bot's turns into the log.
#[derive(Clone)]
pub struct Recorder {
    /// The HMAC keyed once (its key's two blocks hashed), cloned for each
    /// conversation's hash.
    keyed: Arc<hmac::Hmac<sha2::Sha256>>,
    test: bool,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("test", &self.test)
            .finish()
    }
}

/// What a conversation was before a turn, as the log needs it.
#[derive(Debug, Clone)]
pub struct Before {
    test: bool,
    run: Millis,
    state: Arc<str>,
    channel: &'static str,
    vars: VarList,
    over: bool,
}

impl Before {
    /// From the session a turn starts from.
    pub fn of(stored: &Stored) -> Before {
        Before {
            test: stored.session.test,
            run: stored.session.started_at,
            state: stored.state.clone(),
            channel: stored.channel.as_str(),
            vars: stored.session.vars.clone(),
            // Ended and kept for a schedule: its outcome is written.
            over: stored.session.kept,
        }
    }
}

impl Recorder {
    /// A recorder with the key of `store` (made and kept there the first
    /// time); `test`: every turn is test traffic.
    pub async fn open(store: &dyn StateStore, test: bool) -> Result<Recorder, StoreError> {
        let key = match store.cursor(KEY_CURSOR).await? {
            Some(hex) if hex.len() == 64 => hex,
            _ => {
                let mut key = [0u8; 32];
                ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut key)
                    .map_err(|_| StoreError("no randomness for the event log's key".into()))?;
                let hex = hex::encode(key);
                store.set_cursor(KEY_CURSOR, &hex).await?;
                hex
            }
        };
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(&key, &mut bytes)
            .map_err(|_| StoreError("the event log's key is not hex".into()))?;
        Ok(Recorder::with_key(bytes, test))
    }

    /// A recorder with a given key (tests).
    pub fn with_key(key: [u8; 32], test: bool) -> Recorder {
        let keyed = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key)
            .expect("HMAC takes a key of any length");
        Recorder {
            keyed: Arc::new(keyed),
            test,
        }
    }

    /// A conversation's id in the log: the first 16 bytes of its HMAC, hex.
    pub fn conversation(&self, id: &str) -> String {
        let mut mac = (*self.keyed).clone();
        mac.update(id.as_bytes());
        hex::encode(&mac.finalize().into_bytes()[..16])
    }

    /// The rows of what `turn` did to `conversation` (from `before`), at `now`.
    pub fn events(
        &self,
        flow: &Flow,
        conversation: &str,
        before: Option<&Before>,
        turn: &Turn,
        now: Millis,
    ) -> Vec<LogEvent> {
        let after = turn.stored.as_ref();
        let channel = after
            .map(|s| s.channel.as_str())
            .or(before.map(|b| b.channel))
            .unwrap_or_default()
            .to_owned();
        // The run the turn belongs to: the session's after it, else (it
        // ended) the one before, else one that began and ended at once.
        let live_before = before.filter(|b| !b.over);
        let run = after
            .map(|s| s.session.started_at)
            .or(live_before.map(|b| b.run))
            .unwrap_or(now);
        let version = format!("{:016x}", flow.version);
        // Test traffic: the process's, or the conversation's own.
        let test =
            self.test || after.is_some_and(|s| s.session.test) || before.is_some_and(|b| b.test);
        let hash = self.conversation(conversation);
        let mut out = Vec::new();
        let mut row =
            |run: Millis, state: &str, kind: Kind, detail: &str, value: Option<String>| {
                out.push(LogEvent {
                    at: now,
                    conversation: hash.clone(),
                    run,
                    flow_version: version.clone(),
                    state: state.to_owned(),
                    channel: channel.clone(),
                    kind: kind.as_str().to_owned(),
                    detail: detail.to_owned(),
                    value,
                    test,
                });
            };
        // A run that expired and was replaced by a new one was abandoned.
        if let Some(b) = live_before {
            if b.run != run {
                row(b.run, &b.state, Kind::Outcome, outcome::ABANDONED, None);
            }
        }
        let mut state: Arc<str> = live_before
            .filter(|b| b.run == run)
            .map_or_else(|| Arc::from(""), |b| b.state.clone());
        if live_before.is_none_or(|b| b.run != run) {
            let first = turn
                .trace
                .iter()
                .find_map(|s| match s {
                    Step::Enter(id) => Some(flow.state(*id).name.clone()),
                    _ => None,
                })
                .or_else(|| after.map(|s| s.state.clone()))
                .unwrap_or_default();
            row(run, &first, Kind::Started, "", None);
        }
        let name = |id: crate::flow::StateId| flow.state(id).name.clone();
        for step in &turn.trace {
            match *step {
                Step::Enter(id) => {
                    state = name(id);
                    row(run, &state, Kind::Entered, "", None);
                }
                Step::Intent(n) => {
                    let label = flow.intents.get(n as usize).map_or("", |r| &*r.label);
                    row(run, &state, Kind::Matched, label, None);
                }
                Step::Rule(id, n) => {
                    let label = flow.state(id).on.get(n as usize).map_or("", |r| &*r.label);
                    row(run, &name(id), Kind::Matched, label, None);
                }
                Step::Fallback(id) | Step::GlobalFallback(id) | Step::Repeat(id) => {
                    row(run, &name(id), Kind::Fallback, "", None)
                }
                Step::NotSure(id) => row(run, &name(id), Kind::NotSure, "", None),
                Step::Invalid(id) => row(run, &name(id), Kind::Invalid, "", None),
                Step::Exhausted(id) => row(run, &name(id), Kind::Invalid, "exhausted", None),
                Step::Error(id) => row(run, &name(id), Kind::Error, "", None),
                Step::Idle(id) => row(run, &name(id), Kind::Nudged, "", None),
                Step::Valid(_) | Step::Branch(..) | Step::Split(..) => {}
            }
        }
        // The variables that took a new value: the answers (those of a
        // conversation that ended in this turn too).
        let (vars, at) = match after {
            Some(s) => (&s.session.vars, s.state.clone()),
            None => (&turn.ended_vars, state.clone()),
        };
        let old = live_before.filter(|b| b.run == run).map(|b| &b.vars);
        for (k, v) in vars {
            let was = old.and_then(|vars| vars.iter().rev().find(|(n, _)| n == k));
            // Personal data (`pii`) never enters the log.
            if was.is_some_and(|(_, w)| w == v) || flow.is_private(k) {
                continue;
            }
            let text = match v.as_str() {
                Some(s) => s.to_owned(),
                None => v.to_string(),
            };
            let value: String = text.chars().take(MAX_VALUE_CHARS).collect();
            row(run, &at, Kind::Answered, k, Some(value));
        }
        if turn.released {
            row(run, &state, Kind::Released, "", None);
        }
        let last = after.map_or(state.clone(), |s| s.state.clone());
        if turn.effects.contains(&Effect::Handoff) {
            row(run, &last, Kind::Handoff, "", None);
            row(run, &last, Kind::Outcome, outcome::HANDED_OFF, None);
        }
        if turn.effects.contains(&Effect::End) {
            // The ending state's `outcome:`, else resolved (failed when the
            // turn that ended it met an error).
            let named = flow
                .state_id(&state)
                .and_then(|id| flow.state(id).outcome.as_deref());
            let name = match (named, turn.errors.is_empty()) {
                (Some(n), _) => n,
                (None, true) => outcome::RESOLVED,
                (None, false) => outcome::FAILED,
            };
            row(run, &state, Kind::Outcome, name, None);
        }
        out
    }
}

/// A bot's event log as its turns write it, and the names its log lines give
/// conversations: the recorder is made (its key read or made in the store)
/// at the first turn, so that a process of many bots reads no key for a bot
/// that gets no message.
///
/// **Log lines.** With `log.conversations = "hashed"` (the default) every
/// line of the runtime names a conversation by its keyed hash, the same id
/// its rows in the event log carry ([`Log::name`]): an operator follows one
/// conversation through the logs and the log, and nothing in either leads
/// back to the customer without the store's key, so an erasure leaves
/// nothing of them behind in logs already shipped elsewhere. Message keys
/// that embed the conversation's id are logged with the hash in its place
/// ([`Log::key`]).
pub(crate) struct Log {
    store: Arc<dyn StateStore>,
    config: crate::config::InsightsConfig,
    hashed: bool,
    recorder: tokio::sync::OnceCell<Recorder>,
}

impl Log {
    pub(crate) fn new(
        store: Arc<dyn StateStore>,
        config: &crate::config::InsightsConfig,
        names: crate::config::LogNames,
    ) -> Log {
        Log {
            store,
            config: config.clone(),
            hashed: names == crate::config::LogNames::Hashed,
            recorder: tokio::sync::OnceCell::new(),
        }
    }

    /// The recorder, unless the log is off (`insights.log = false`); `Err`:
    /// the store could not give its key (the turn waits, as for a commit).
    pub(crate) async fn recorder(&self) -> Result<Option<&Recorder>, StoreError> {
        if !self.config.log {
            return Ok(None);
        }
        self.keyed().await.map(Some)
    }

    async fn keyed(&self) -> Result<&Recorder, StoreError> {
        self.recorder
            .get_or_try_init(|| Recorder::open(&*self.store, self.config.test_traffic))
            .await
    }

    /// How a log line names `conversation`: its keyed hash (the event log's
    /// id for it), or its id with `log.conversations = "plain"`. A store
    /// that cannot give the key yet gives `unnamed` (never the id).
    pub(crate) async fn name(&self, conversation: &str) -> String {
        if !self.hashed {
            return conversation.to_owned();
        }
        match self.keyed().await {
            Ok(r) => r.conversation(conversation),
            Err(_) => "unnamed".to_owned(),
        }
    }

    /// How a log line shows a message's `key` of `conversation` (named
    /// `name`): with the id in it replaced by the name.
    pub(crate) fn key(&self, key: &str, conversation: &str, name: &str) -> String {
        if self.hashed && !conversation.is_empty() {
            key.replace(conversation, name)
        } else {
            key.to_owned()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{InsightsConfig, LogNames};
    use crate::store::MemoryStore;

    #[tokio::test]
    async fn log_lines_name_a_conversation_by_the_event_logs_hash() {
        let store: Arc<dyn StateStore> = Arc::new(MemoryStore::new());
        // The event log off: the lines are hashed all the same.
        let config = InsightsConfig {
            log: false,
            ..InsightsConfig::default()
        };
        let hashed = Log::new(store.clone(), &config, LogNames::Hashed);
        let name = hashed.name("conv-42").await;
        let recorder = Recorder::open(&*store, false).await.unwrap();
        assert_eq!(name, recorder.conversation("conv-42"));
        assert_eq!(name.len(), 32);
        assert_eq!(
            hashed.key("idle:conv-42:1700", "conv-42", &name),
            format!("idle:{name}:1700")
        );
        assert!(hashed.recorder().await.unwrap().is_none());

        let plain = Log::new(store, &config, LogNames::Plain);
        assert_eq!(plain.name("conv-42").await, "conv-42");
        assert_eq!(
            plain.key("idle:conv-42:1700", "conv-42", "conv-42"),
            "idle:conv-42:1700"
        );
    }
}
