//! Where Qpien's messages become flowbot [`Event`]s: one place for the webhook
//! and the poller alike (two sources of one stream, like teloxide's update
//! listeners).
//!
//! [`from_delivery`] reads a verified webhook body; [`from_message`] reads one
//! message (a delivery's, or one the poller found). Each gives an [`Ingested`]
//! event with its deduplication key and conversation, or the reason it gets no
//! turn ([`Ignored`]): who sent it, or an event flowbot does not act on.

use crate::message::Event;

use super::convert::{sender_kind, to_incoming, SenderKind};
use super::types::ExternalMessage;
use super::webhook::{parse, PayloadError, WebhookEvent};

/// An event to run, with what the inbox needs to keep it once.
#[derive(Debug, Clone, PartialEq)]
pub struct Ingested {
    /// The deduplication key: the message id, or an event's own key.
    pub key: String,
    /// The conversation.
    pub conversation: String,
    /// The event.
    pub event: Event,
}

/// Why a delivery or a message gets no turn (it is acknowledged all the same).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Ignored {
    /// Not the customer's: the bot never answers a bot, an agent, the system or
    /// itself.
    #[error("sent by {0:?}, not the customer")]
    NotCustomer(SenderKind),
    /// An event flowbot does not act on.
    #[error("event `{0}` is not acted on")]
    Event(String),
    /// A message without `_id` or conversation.
    #[error("the message has no {0}")]
    Missing(&'static str),
}

/// Reads a customer's message into an event. `conversation` is used when the
/// message does not name its own (a polled page of one conversation).
pub fn from_message(
    msg: &ExternalMessage,
    conversation: Option<&str>,
    own_prefix: &str,
) -> Result<Ingested, Ignored> {
    let kind = sender_kind(msg, own_prefix);
    if kind != SenderKind::Customer {
        return Err(Ignored::NotCustomer(kind));
    }
    let key = msg.id.clone().ok_or(Ignored::Missing("`_id`"))?;
    let conversation = msg
        .conversation
        .clone()
        .or_else(|| conversation.map(str::to_owned))
        .ok_or(Ignored::Missing("`conversation`"))?;
    Ok(Ingested {
        key,
        conversation,
        event: Event::Message(to_incoming(msg)),
    })
}

/// Reads a verified webhook delivery. `signature` is the delivery's (a
/// redelivery of the same event carries the same one, so events without an id
/// of their own are deduplicated by it). `Err` is a body that cannot be read
/// at all; `Ok(Err(..))` is a readable delivery that gets no turn.
pub fn from_delivery(
    body: &[u8],
    signature: &str,
    own_prefix: &str,
) -> Result<Result<Ingested, Ignored>, PayloadError> {
    let sig = &signature[..signature.len().min(32)];
    Ok(match parse(body)? {
        WebhookEvent::NewMessage(msg) => from_message(&msg, None, own_prefix),
        WebhookEvent::AgentJoined { conversation, .. } => Ok(Ingested {
            key: format!("join:{conversation}:{sig}"),
            conversation,
            event: Event::AgentJoined,
        }),
        WebhookEvent::AgentLeft { conversation } => Ok(Ingested {
            key: format!("leave:{conversation}:{sig}"),
            conversation,
            event: Event::AgentLeft,
        }),
        WebhookEvent::Other(name) => Err(Ignored::Event(name)),
    })
}
