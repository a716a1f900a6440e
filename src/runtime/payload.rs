//! What the runtime writes into the store's opaque payloads, as JSON: inbound
//! [`Event`](crate::Event)s and [`Stored`](crate::engine::Stored) conversations
//! in their own serde forms, and outbox actions (the exact `createMessage`
//! input, so a resend after a restart is byte-for-byte the same request and
//! keeps its `frontMsgId`).

use serde::{Deserialize, Serialize};

use crate::qpien::OutboundMessage;

/// Something to deliver to Qpien, in order with the conversation's messages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", try_from = "RawAction")]
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

/// An [`OutboxAction`] as stored, read in one pass: serde reads an
/// internally tagged enum by first copying the whole object into a buffer
/// of its own, which was a visible part of sending each reply.
#[derive(Deserialize)]
struct RawAction {
    kind: RawKind,
    #[serde(default)]
    message: Option<Box<OutboundMessage>>,
    #[serde(default)]
    window_until: Option<crate::time::Millis>,
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum RawKind {
    Message,
    Handoff,
    Release,
}

impl TryFrom<RawAction> for OutboxAction {
    type Error = &'static str;

    fn try_from(raw: RawAction) -> Result<Self, Self::Error> {
        Ok(match raw.kind {
            RawKind::Message => OutboxAction::Message {
                message: raw.message.ok_or("missing field `message`")?,
                window_until: raw.window_until,
            },
            RawKind::Handoff => OutboxAction::Handoff,
            RawKind::Release => OutboxAction::Release,
        })
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outbox_actions_read_back_as_written() {
        let message: OutboundMessage = serde_json::from_value(serde_json::json!({
            "operation": "createMessage",
            "input": {"conversationId": "c1", "content": "Hi", "messageType": "TEXT", "frontMsgId": "flowbot:m1:0"}
        }))
        .unwrap();
        for action in [
            OutboxAction::Message {
                message: Box::new(message.clone()),
                window_until: Some(1_700_000_000_000),
            },
            OutboxAction::Message {
                message: Box::new(message),
                window_until: None,
            },
            OutboxAction::Handoff,
            OutboxAction::Release,
        ] {
            let bytes = encode(&action);
            assert_eq!(decode::<OutboxAction>(&bytes).unwrap(), action);
        }
        // The stored form is the tagged object it always was.
        assert_eq!(encode(&OutboxAction::Handoff), br#"{"kind":"handoff"}"#);
        assert!(decode::<OutboxAction>(br#"{"kind":"message"}"#).is_err());
        assert!(decode::<OutboxAction>(br#"{"kind":"other"}"#).is_err());
    }
}
