//! What the runtime writes into the store's opaque payloads, as JSON: inbound
//! [`Event`](crate::Event)s and [`Stored`](crate::engine::Stored) conversations
//! in their own serde forms, and outbox actions (the exact `createMessage`
//! input, so a resend after a restart is byte-for-byte the same request and
//! keeps its `frontMsgId`).

use serde::{Deserialize, Serialize};

use crate::qpien::OutboundMessage;

/// Something to deliver to Qpien, in order with the conversation's messages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum OutboxAction {
    /// A message.
    Message {
        /// The mutation and its input.
        message: Box<OutboundMessage>,
        /// For a free-form message on a channel with a reply window
        /// (WhatsApp): when the window closes; a reply still waiting then
        /// (Qpien was down, say) is dropped rather than refused by WhatsApp.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        window_until: Option<crate::time::Millis>,
    },
    /// Ask for a person.
    Handoff,
    /// Tell Qpien the bot has the conversation again (a release by hand or
    /// by `handoff_timeout`).
    Release,
}

/// Encodes a payload.
pub(crate) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}

/// Decodes a payload.
pub(crate) fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, serde_json::Error> {
    serde_json::from_slice(bytes)
}

/// A dead letter for an event the runtime set aside (not a webhook's body):
/// its headers say what kind, for which conversation and key; its body is
/// the event as the inbox encodes it.
pub(crate) fn event_letter(
    kind: &str,
    conversation: &str,
    key: &str,
    reason: String,
    event: Vec<u8>,
    received_at: crate::time::Millis,
) -> crate::store::DeadLetter {
    crate::store::DeadLetter {
        id: 0,
        received_at,
        reason,
        headers: serde_json::json!({"kind": kind, "conversation": conversation, "key": key})
            .to_string(),
        body: event,
    }
}
