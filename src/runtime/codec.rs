//! What the runtime writes into the store's opaque payloads, as JSON: inbound
//! events, sessions (with the state's *name*, so a reloaded flow can place
//! them), and outbox actions (the exact `createMessage` input, so a resend after
//! a restart is byte-for-byte the same request and keeps its `frontMsgId`).

use serde::{Deserialize, Serialize};

use crate::engine::Session;
use crate::message::{Channel, Event, Incoming};
use crate::qpien::OutboundMessage;

/// An accepted inbound event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Inbound {
    /// A customer's message.
    Message {
        /// The message.
        message: Incoming,
    },
    /// A person joined the conversation.
    AgentJoined,
    /// A person left; the bot takes over again.
    AgentLeft,
    /// The inactivity timer of the conversation's state fired.
    Idle {
        /// When it was due.
        due: i64,
    },
}

impl Inbound {
    /// The engine event, or for a timer `Err` with its due time.
    pub fn into_event(self) -> Result<Event, i64> {
        match self {
            Inbound::Message { message } => Ok(Event::Message(message)),
            Inbound::AgentJoined => Ok(Event::AgentJoined),
            Inbound::AgentLeft => Ok(Event::AgentLeft),
            Inbound::Idle { due } => Err(due),
        }
    }
}

/// A stored session: the engine's session, its state's name and the channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// The state's name when saved.
    pub state: String,
    /// The conversation's channel, for messages not prompted by the customer.
    pub channel: Channel,
    /// The session.
    pub session: Session,
}

/// Something to deliver to Qpien, in order with the conversation's messages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum OutboxAction {
    /// A message.
    Message {
        /// The mutation and its input.
        message: Box<OutboundMessage>,
    },
    /// Ask for a person.
    Handoff,
}

/// Encodes a payload.
pub(crate) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}

/// Decodes a payload.
pub(crate) fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, serde_json::Error> {
    serde_json::from_slice(bytes)
}
