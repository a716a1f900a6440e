//! The state of one conversation between turns.
//!
//! A session is small on purpose (the target is under 1 KiB per idle conversation):
//! the state is an index, variables hold only what the conversation set (the flow's
//! defaults are read from the flow), and the options last offered keep just their id
//! and normalized title, so that a typed "2" or "my orders" can count as a tap.
//! "No session" (`Option::None`) is a state of its own: a new, ended, expired or
//! released conversation.

use serde::{Deserialize, Serialize};

use crate::flow::template::VarList;
use crate::flow::StateId;
use crate::time::Millis;

/// Whether an option was offered as a quick-reply button or a list row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptionKind {
    /// A quick-reply button (`button:` rules).
    Button,
    /// A list row (`list:` rules).
    Row,
}

/// One option the bot last offered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offered {
    /// Button or row, as the flow wrote it.
    pub kind: OptionKind,
    /// Its id.
    pub id: Box<str>,
    /// Its title, normalized for comparison.
    pub title: Box<str>,
    /// The variable a pick of it is saved in, and its title as shown (only
    /// for options whose message says `save:`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub save: Option<(Box<str>, Box<str>)>,
}

/// A conversation's state between turns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Session {
    /// The current state.
    pub state: StateId,
    /// The [`Flow::version`](crate::flow::Flow::version) this session runs on.
    pub flow_version: u64,
    /// Variables set during the conversation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vars: VarList,
    /// Invalid answers in a row to the current `ask`.
    #[serde(default)]
    pub retries: u32,
    /// The options last offered.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub offered: Vec<Offered>,
    /// Whether those options were shown as numbered lines (so "2" picks the second).
    #[serde(default)]
    pub numbered: bool,
    /// A person has the conversation: the bot is silent.
    #[serde(default)]
    pub handoff: bool,
    /// The conversation's language, once known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<Box<str>>,
    /// When the session started.
    pub started_at: Millis,
    /// The last message's time (for `session_timeout`).
    pub last_active: Millis,
    /// The current state's `after:` nudge has fired (it fires once per visit).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub idle_fired: bool,
    /// When a person took the conversation (0: no person has it).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub handoff_since: Millis,
    /// When the customer last wrote (0: not known), for WhatsApp's 24-hour
    /// customer-service window.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub customer_at: Millis,
    /// A start the business asked for with `mode: queue`, run when this
    /// conversation ends or expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queued: Option<Box<crate::message::Start>>,
    /// Where each of the flow's `schedules:` stands for this conversation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub schedules: Vec<crate::flow::schedule::Mark>,
    /// The conversation ended (or expired) but is kept, with its variables,
    /// for a schedule still to fire: its next message starts afresh with them.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub kept: bool,
    /// The subflows running, innermost last: where each returns to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stack: Vec<Frame>,
    /// Test traffic (a delivery of `flowbot sim`, `flowbot start --test`):
    /// its events are marked so.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub test: bool,
}

/// A subflow's call: the calling state and the caller's variables, kept
/// while the subflow runs with its own. By name, so that it survives a
/// changed flow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Frame {
    /// The state that called (its `next` follows the return).
    pub call: std::sync::Arc<str>,
    /// The caller's variables.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vars: VarList,
}

impl Session {
    /// Whether a schedule is still to fire for this conversation.
    pub fn schedule_pending(&self) -> bool {
        self.schedules.iter().any(|m| !m.fired)
    }
}

fn is_zero(v: &Millis) -> bool {
    *v == 0
}

impl Session {
    /// A fresh session at `state`.
    pub fn new(state: StateId, flow_version: u64, now: Millis) -> Session {
        Session {
            state,
            flow_version,
            vars: Vec::new(),
            retries: 0,
            offered: Vec::new(),
            numbered: false,
            handoff: false,
            language: None,
            started_at: now,
            last_active: now,
            idle_fired: false,
            handoff_since: 0,
            customer_at: 0,
            queued: None,
            schedules: Vec::new(),
            kept: false,
            stack: Vec::new(),
            test: false,
        }
    }

    /// A variable set in this session.
    pub fn var(&self, name: &str) -> Option<&minijinja::Value> {
        self.vars.iter().find(|(k, _)| &**k == name).map(|(_, v)| v)
    }

    /// Approximate heap and inline bytes held, for memory budgeting.
    pub fn approx_size(&self) -> usize {
        std::mem::size_of::<Session>()
            + self.vars.capacity() * std::mem::size_of::<(std::sync::Arc<str>, minijinja::Value)>()
            + self
                .vars
                .iter()
                .map(|(k, v)| k.len() + 16 + v.as_str().map_or(0, str::len))
                .sum::<usize>()
            + self.offered.capacity() * std::mem::size_of::<Offered>()
            + self
                .offered
                .iter()
                .map(|o| o.id.len() + o.title.len())
                .sum::<usize>()
            + self.language.as_ref().map_or(0, |l| l.len())
            + self
                .stack
                .iter()
                .map(|f| {
                    std::mem::size_of::<Frame>()
                        + f.call.len()
                        + f.vars
                            .iter()
                            .map(|(k, v)| k.len() + 16 + v.as_str().map_or(0, str::len))
                            .sum::<usize>()
                })
                .sum::<usize>()
    }
}
