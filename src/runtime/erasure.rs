//! Erasure and access requests: everything held of one contact, removed
//! (`DELETE /admin/contacts/{id}`, `flowbot erase`) or written out
//! (`GET /admin/contacts/{id}/export`, `flowbot export`).
//!
//! A contact is named by a conversation's id, or by a value the
//! conversations saved (a phone number, an e-mail address): each
//! conversation whose id is it, or one of whose variables holds it (a phone
//! compared by its digits, an e-mail whatever its case), is the contact's.
//! For each, in one store transaction: its session (with its timers and
//! schedules), the messages not yet run, the replies not yet sent, the dead
//! letters that name it, its event-log rows; then its captured deliveries.
//! The keys of its messages already run stay, under the keyed hash instead
//! of the id, so that a late redelivery is still recognised and dropped.
//! The event log's roll-ups hold nothing personal and stay.
//!
//! The process's own log lines name a conversation by the same keyed hash
//! (`log.conversations = "hashed"`, the default; [`crate::insights::Log`]),
//! and never write what a customer wrote: logs already shipped elsewhere
//! hold nothing an erasure would have to reach. An export gives each
//! conversation's hash (`log_id`), to find its lines.

use serde::Serialize;

use super::http::App;
use crate::engine::Stored;
use crate::store::{Held, StoreError};

/// What an erasure removed (or would remove).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub(crate) struct Erased {
    /// The contact's conversations found.
    pub(crate) conversations: u64,
    /// Per kind.
    pub(crate) removed: Removed,
}

/// Counts per kind.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub(crate) struct Removed {
    sessions: u64,
    inbox: u64,
    outbox: u64,
    dead_letters: u64,
    events: u64,
    captures: u64,
}

impl Removed {
    fn add(&mut self, h: &Held) {
        self.sessions += h.sessions;
        self.inbox += h.inbox;
        self.outbox += h.outbox;
        self.dead_letters += h.dead_letters;
        self.events += h.events;
    }
}

/// Whether a saved value is the contact named `who`.
fn same(value: &str, who: &str) -> bool {
    if value == who {
        return true;
    }
    let digits = |s: &str| s.chars().filter(char::is_ascii_digit).collect::<String>();
    let phone_like = |s: &str| {
        s.chars()
            .all(|c| c.is_ascii_digit() || " +-().".contains(c))
            && digits(s).len() >= 7
    };
    if phone_like(value) && phone_like(who) {
        let (a, b) = (digits(value), digits(who));
        // A number with and without its country code is one number.
        return a.ends_with(&b) || b.ends_with(&a);
    }
    value.contains('@') && value.eq_ignore_ascii_case(who)
}

/// The conversations of the contact `who`: the one of that id, and those
/// whose variables hold it.
pub(crate) async fn conversations(app: &App, who: &str) -> Result<Vec<String>, StoreError> {
    let mut out = Vec::new();
    if app.store.session(who).await?.is_some() {
        out.push(who.to_owned());
    }
    let mut after = String::new();
    loop {
        let page = app.store.sessions(&after, 500).await?;
        let Some((last, _)) = page.last() else { break };
        after = last.clone();
        for (conversation, s) in &page {
            let Ok(stored) = super::payload::decode::<Stored>(&s.data) else {
                continue;
            };
            let holds = stored.session.vars.iter().any(|(_, v)| {
                let text = v.as_str().map_or_else(|| v.to_string(), str::to_owned);
                same(&text, who)
            });
            if holds && !out.contains(conversation) {
                out.push(conversation.clone());
            }
        }
        if page.len() < 500 {
            break;
        }
    }
    // A conversation with nothing but rows left (dead letters, captures,
    // the event log) is still erased by its id.
    if out.is_empty() {
        out.push(who.to_owned());
    }
    Ok(out)
}

/// Erases the contact `who` (with `dry_run`, counts what would go).
pub(crate) async fn erase(app: &App, who: &str, dry_run: bool) -> Result<Erased, StoreError> {
    let recorder = crate::insights::Recorder::open(&*app.store, false).await?;
    let conversations = conversations(app, who).await?;
    let mut erased = Erased::default();
    let mut needles = vec![who.to_owned()];
    for c in &conversations {
        let held = app
            .store
            .erase(c, &recorder.conversation(c), dry_run)
            .await?;
        if held != Held::default() {
            erased.conversations += 1;
        }
        erased.removed.add(&held);
        needles.push(c.clone());
        if !dry_run {
            app.metrics.classify.forget(c);
        }
    }
    if let Some(capture) = &app.capture {
        let files = capture.holding(&needles);
        erased.removed.captures = files.len() as u64;
        if !dry_run {
            for (path, _) in files {
                let _ = std::fs::remove_file(path);
            }
        }
    }
    if !dry_run {
        tracing::info!(
            conversations = erased.conversations,
            "a contact's data erased"
        );
    }
    Ok(erased)
}

/// Everything held of the contact `who`, as JSON: per conversation, its
/// session (state, variables), messages not yet run, replies not yet sent,
/// dead letters, event-log rows and captured deliveries.
pub(crate) async fn export(app: &App, who: &str) -> Result<serde_json::Value, StoreError> {
    let recorder = crate::insights::Recorder::open(&*app.store, false).await?;
    let mut out = Vec::new();
    let mut needles = vec![who.to_owned()];
    for c in conversations(app, who).await? {
        let hash = recorder.conversation(&c);
        let held = app.store.export(&c, &hash).await?;
        let json = |bytes: &[u8]| {
            serde_json::from_slice::<serde_json::Value>(bytes)
                .unwrap_or_else(|_| String::from_utf8_lossy(bytes).into_owned().into())
        };
        let session = held.session.as_deref().map(|data| {
            match super::payload::decode::<Stored>(data) {
                Ok(s) => serde_json::json!({
                    "state": &*s.state,
                    "channel": s.channel.as_str(),
                    "language": s.session.language.as_deref(),
                    "started_at": crate::time::format(s.session.started_at),
                    "last_active": crate::time::format(s.session.last_active),
                    "vars": s.session.vars.iter()
                        .map(|(k, v)| (k.to_string(), serde_json::to_value(v).unwrap_or_default()))
                        .collect::<serde_json::Map<_, _>>(),
                }),
                Err(_) => json(data),
            }
        });
        out.push(serde_json::json!({
            "conversation": c,
            // How the event log and (by default) the logs name it.
            "log_id": hash,
            "session": session,
            "inbox": held.inbox.iter().map(|p| json(p)).collect::<Vec<_>>(),
            "outbox": held.outbox.iter().map(|p| json(p)).collect::<Vec<_>>(),
            "dead_letters": held.dead_letters.iter().map(|d| serde_json::json!({
                "id": d.id,
                "received_at": crate::time::format(d.received_at),
                "reason": d.reason,
                "body": String::from_utf8_lossy(&d.body),
            })).collect::<Vec<_>>(),
            "events": held.events.iter().map(|e| serde_json::json!({
                "at": crate::time::format(e.at),
                "flow_version": e.flow_version,
                "state": e.state,
                "channel": e.channel,
                "kind": e.kind,
                "detail": e.detail,
                "value": e.value,
            })).collect::<Vec<_>>(),
        }));
        needles.push(c);
    }
    let captures: Vec<serde_json::Value> = match &app.capture {
        Some(capture) => capture
            .holding(&needles)
            .into_iter()
            .map(|(_, text)| {
                serde_json::from_str(&text).unwrap_or_else(|_| serde_json::Value::from(text))
            })
            .collect(),
        None => Vec::new(),
    };
    Ok(serde_json::json!({
        "contact": who,
        "conversations": out,
        "captures": captures,
    }))
}
