//! `flowbot replay FLOW`: the JSON-lines contract other tools rely on.
//!
//! In, one event per line: `{"conversation":"c1","text":"hi"}`, `"button"`,
//! `"list"`, `"media"`, or `"event":"agent_joined"|"agent_left"`; optional
//! `"channel"`, `"at"` (RFC 3339; time never goes back) and `"language"`.
//! Out, one line per message (`{"conversation":"c1","text":..,"quick_replies":..}`,
//! `"list"`, `"buttons"`, `"media"` where they apply), then one per effect
//! (`{"conversation":"c1","handoff":true}`, `{"conversation":"c1","end":true}`).
//! Deterministic: memory sessions, a clock fixed at 2026-01-01T00:00:00Z unless
//! `at` moves it. A bad line is reported on stderr with its number and skipped; a
//! flow that does not load exits 2.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::path::Path;

use crate::engine::{Bot, Stored};
use crate::handler::Registry;
use crate::message::{Channel, Contact, Effect, Event, Incoming, MediaKind, Outgoing};
use crate::testing::EPOCH;
use crate::time::parse_time;

#[derive(Debug, Deserialize)]
struct Line {
    conversation: String,
    text: Option<String>,
    button: Option<String>,
    list: Option<String>,
    media: Option<String>,
    event: Option<String>,
    channel: Option<String>,
    at: Option<String>,
    language: Option<String>,
}

#[derive(Serialize)]
struct Out<'a> {
    conversation: &'a str,
    #[serde(flatten)]
    message: &'a Outgoing,
}

#[derive(Serialize)]
struct EffectOut<'a> {
    conversation: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    handoff: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    end: Option<bool>,
}

fn event(l: &Line) -> Result<Event, String> {
    if let Some(e) = &l.event {
        return Event::from_word(e)
            .ok_or_else(|| format!("unknown event `{e}` ({})", Event::WORDS.join(", ")));
    }
    let channel = match &l.channel {
        Some(c) => c.parse::<Channel>().map_err(|e| e.to_string())?,
        None => Channel::default(),
    };
    let mut m = Incoming {
        text: l.text.clone().unwrap_or_default(),
        button: l.button.clone(),
        list: l.list.clone(),
        channel,
        contact: Contact {
            language: l.language.clone(),
            ..Default::default()
        },
        ..Default::default()
    };
    if let Some(k) = &l.media {
        m.media = Some(MediaKind::parse(k).ok_or_else(|| format!("unknown media kind `{k}`"))?);
    }
    if l.text.is_none() && m.button.is_none() && m.list.is_none() && m.media.is_none() {
        return Err("a line needs one of text, button, list, media or event".into());
    }
    Ok(Event::Message(m))
}

pub(super) async fn run(path: &Path, capture: Option<&Path>, registry: Registry) -> u8 {
    let bot = match super::load_bot(path, registry) {
        Ok(b) => b,
        Err(code) => return code,
    };
    let stdin = std::io::stdin();
    let stdout = std::io::stdout();
    let done = match capture {
        Some(dir) => replay_capture(&bot, dir, stdout.lock(), std::io::stderr()).await,
        None => replay(&bot, stdin.lock(), stdout.lock(), std::io::stderr()).await,
    };
    match done {
        Ok(()) => 0,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => 0,
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

/// Runs the replay contract (see the module docs) from `input` to `output`, with
/// problems of single lines reported on `errors`.
pub async fn replay(
    bot: &Bot,
    input: impl BufRead,
    output: impl Write,
    mut errors: impl Write,
) -> std::io::Result<()> {
    let mut out = std::io::BufWriter::new(output);
    let mut sessions: HashMap<String, Stored> = HashMap::new();
    let mut now = EPOCH;
    for (i, line) in input.lines().enumerate() {
        let n = i + 1;
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let parsed: Line = match serde_json::from_str(&line) {
            Ok(l) => l,
            Err(e) => {
                writeln!(errors, "line {n}: {e}")?;
                continue;
            }
        };
        if let Some(at) = &parsed.at {
            match parse_time(at) {
                Some(t) => now = now.max(t),
                None => {
                    writeln!(
                        errors,
                        "line {n}: `at` is not an RFC 3339 time like 2026-01-01T10:00:00Z"
                    )?;
                    continue;
                }
            }
        }
        let ev = match event(&parsed) {
            Ok(e) => e,
            Err(e) => {
                writeln!(errors, "line {n}: {e}")?;
                continue;
            }
        };
        let conv = parsed.conversation.as_str();
        let turn = bot.step(conv, sessions.remove(conv), &ev, now).await;
        if let Some(s) = turn.stored.clone() {
            sessions.insert(parsed.conversation.clone(), s);
        }
        write_turn(&mut out, conv, &turn)?;
        out.flush()?;
    }
    Ok(())
}

/// Writes one turn's output lines: its messages, then its effects.
fn write_turn(mut out: impl Write, conv: &str, turn: &crate::engine::Turn) -> std::io::Result<()> {
    for m in &turn.messages {
        serde_json::to_writer(
            &mut out,
            &Out {
                conversation: conv,
                message: m,
            },
        )?;
        out.write_all(b"\n")?;
    }
    for e in &turn.effects {
        let line = match e {
            Effect::Handoff => EffectOut {
                conversation: conv,
                handoff: Some(true),
                end: None,
            },
            Effect::End => EffectOut {
                conversation: conv,
                handoff: None,
                end: Some(true),
            },
        };
        serde_json::to_writer(&mut out, &line)?;
        out.write_all(b"\n")?;
    }
    Ok(())
}

/// `flowbot replay --capture DIR FLOW`: runs the flow over captured deliveries
/// (see `server.capture_dir`), read as `flowbot run` reads webhooks, each at
/// the time it came; writes the same output lines as `replay`. Deliveries that
/// are not for the bot, or that it cannot use, are said on `errors`.
pub async fn replay_capture(
    bot: &Bot,
    dir: &Path,
    output: impl Write,
    mut errors: impl Write,
) -> std::io::Result<()> {
    let deliveries = match crate::runtime::capture::read_dir(dir) {
        Ok(d) => d,
        Err(e) => {
            writeln!(errors, "error: {e}")?;
            return Ok(());
        }
    };
    let intake = crate::qpien::Intake::with_defaults();
    let mut out = std::io::BufWriter::new(output);
    let mut sessions: HashMap<String, Stored> = HashMap::new();
    let mut now = EPOCH;
    for d in deliveries {
        now = now.max(d.received_at);
        let name = d.file.display().to_string();
        let ingested = match intake.delivery(&d.body, &name) {
            crate::qpien::Delivery::Event(i) => *i,
            crate::qpien::Delivery::Ignored(why) => {
                writeln!(errors, "{name}: ignored: {why}")?;
                continue;
            }
            crate::qpien::Delivery::Unusable(why) => {
                writeln!(errors, "{name}: unusable: {why}")?;
                continue;
            }
        };
        let conv = ingested.conversation.as_str();
        let turn = bot
            .step(conv, sessions.remove(conv), &ingested.event, now)
            .await;
        if let Some(s) = turn.stored.clone() {
            sessions.insert(conv.to_owned(), s);
        }
        write_turn(&mut out, conv, &turn)?;
    }
    out.flush()
}
