//! Qpien's webhook deliveries: the signature and the payload.
//!
//! FACT: every delivery carries `X-Qpien-Signature`, the hex HMAC-SHA256 of the
//! JSON payload under the webhook's secret. [`verify`] checks it over the raw
//! body, in constant time, before anything is parsed. ASSUMED: the payload is
//! `{"event": ..., "data": <ExternalMessage>}`; `message` in place of `data`, and
//! a bare ExternalMessage, are read too.

use hmac::{Hmac, KeyInit, Mac};
use serde_json::Value;
use sha2::Sha256;

use super::types::{ExternalConversation, ExternalMessage, Person};

/// The header that carries the signature.
pub const SIGNATURE_HEADER: &str = "X-Qpien-Signature";

type HmacSha256 = Hmac<Sha256>;

/// The signature Qpien puts on `body`: lowercase hex HMAC-SHA256 under `secret`.
///
/// ```
/// let sig = flowbot::internals::qpien::webhook::sign(b"secret", br#"{"event":"X"}"#);
/// assert!(flowbot::internals::qpien::webhook::verify(b"secret", br#"{"event":"X"}"#, &sig));
/// ```
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// Whether `signature` (hex, either case, an optional `sha256=` prefix) is
/// `body`'s signature under `secret`. The comparison takes constant time.
pub fn verify(secret: &[u8], body: &[u8], signature: &str) -> bool {
    let hex_part = signature.trim();
    let hex_part = hex_part.strip_prefix("sha256=").unwrap_or(hex_part);
    let Ok(given) = hex::decode(hex_part) else {
        return false;
    };
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(body);
    mac.verify_slice(&given).is_ok()
}

/// What a delivery announces.
#[derive(Debug, Clone, PartialEq)]
pub enum WebhookEvent {
    /// `NEW_INCOMING_MESSAGE`: a message arrived in a conversation.
    NewMessage(Box<ExternalMessage>),
    /// `JOIN_CONVERSATION`: a person joined; the bot steps back.
    AgentJoined {
        /// The conversation.
        conversation: String,
        /// Who joined, if said.
        person: Option<Person>,
    },
    /// `LEAVE_CONVERSATION` (ASSUMED: Qpien documents no such event; the
    /// simulator sends it): the person left and the bot takes over again.
    AgentLeft {
        /// The conversation.
        conversation: String,
    },
    /// An event flowbot does not act on (acknowledged and ignored).
    Other(String),
}

/// Why a payload could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    /// Not JSON.
    #[error("webhook body is not JSON: {0}")]
    Json(String),
    /// JSON, but not an event flowbot can read.
    #[error("webhook payload: {0}")]
    Shape(String),
}

struct Envelope {
    event: Option<String>,
    data: Option<Value>,
}

fn shape(e: serde_path_to_error::Error<serde_json::Error>) -> PayloadError {
    PayloadError::Shape(format!("at `{}`: {}", e.path(), e.inner()))
}

/// Reads a delivery's body (after [`verify`]).
pub fn parse(body: &[u8]) -> Result<WebhookEvent, PayloadError> {
    // One pass for the usual `{event, data}`; a bare message is read again.
    let envelope: Envelope = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => {
            let mut map = map;
            let event = ["event", "type", "eventType"]
                .iter()
                .find_map(|k| map.remove(*k))
                .and_then(|v| v.as_str().map(str::to_owned));
            match event {
                Some(event) => Envelope {
                    event: Some(event),
                    data: ["data", "message", "payload"]
                        .iter()
                        .find_map(|k| map.remove(*k)),
                },
                None if map.contains_key("_id") => Envelope {
                    event: Some("NEW_INCOMING_MESSAGE".to_owned()),
                    data: Some(Value::Object(map)),
                },
                None => return Err(PayloadError::Shape("no `event` field".into())),
            }
        }
        Ok(_) => return Err(PayloadError::Shape("expected a JSON object".into())),
        Err(e) => return Err(PayloadError::Json(e.to_string())),
    };
    let event = envelope.event.unwrap_or_default();
    let data = envelope.data.unwrap_or(Value::Null);
    match event.to_ascii_uppercase().as_str() {
        "NEW_INCOMING_MESSAGE" | "NEW_MESSAGE" | "MESSAGE_CREATED" => {
            let msg: ExternalMessage = serde_path_to_error::deserialize(data).map_err(shape)?;
            if msg.id.is_none() {
                return Err(PayloadError::Shape("the message has no `_id`".into()));
            }
            if msg.conversation.is_none() {
                return Err(PayloadError::Shape(
                    "the message has no `conversation`".into(),
                ));
            }
            Ok(WebhookEvent::NewMessage(Box::new(msg)))
        }
        "LEAVE_CONVERSATION" | "CONVERSATION_RELEASED" => {
            let conversation = data
                .get("conversationId")
                .and_then(Value::as_str)
                .or_else(|| data.get("_id").and_then(Value::as_str))
                .ok_or_else(|| PayloadError::Shape("no conversation id".into()))?;
            Ok(WebhookEvent::AgentLeft {
                conversation: conversation.to_owned(),
            })
        }
        "JOIN_CONVERSATION" => {
            // ASSUMED: the conversation, or {conversationId, person}.
            let conversation_id = data
                .get("conversationId")
                .or_else(|| data.get("conversation"))
                .and_then(|v| match v {
                    Value::String(s) => Some(s.clone()),
                    Value::Object(o) => o.get("_id").and_then(Value::as_str).map(str::to_owned),
                    _ => None,
                });
            let conv: ExternalConversation =
                serde_path_to_error::deserialize(data.clone()).map_err(shape)?;
            let person = match data.get("person").or_else(|| data.get("joinedPerson")) {
                Some(p) => serde_path_to_error::deserialize(p.clone()).map_err(shape)?,
                None => conv.joined_person.clone(),
            };
            let conversation = conversation_id
                .or(conv.id)
                .ok_or_else(|| PayloadError::Shape("no conversation id".into()))?;
            Ok(WebhookEvent::AgentJoined {
                conversation,
                person,
            })
        }
        other => Ok(WebhookEvent::Other(other.to_owned())),
    }
}
