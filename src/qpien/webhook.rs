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

use super::types::{id_of, ExternalMessage};

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
        /// Who joined, if said (an id).
        person: Option<String>,
    },
    /// `LEAVE_CONVERSATION` (ASSUMED: Qpien documents no such event; the
    /// simulator sends it): the person left and the bot takes over again.
    AgentLeft {
        /// The conversation.
        conversation: String,
    },
    /// An event flowbot does not know (kept as a dead letter, acknowledged).
    Other(String),
}

/// Why a correctly signed delivery cannot be used (it becomes a dead letter).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    /// Not JSON.
    #[error("the body is not JSON: {0}")]
    Json(String),
    /// JSON, but not a shape flowbot can read.
    #[error("{0}")]
    Shape(String),
}

/// The event name of a delivery (ASSUMED keys: `event`, `type`, `eventType`).
const EVENT_KEYS: [&str; 3] = ["event", "type", "eventType"];
/// Where the event's data sits (ASSUMED keys: `data`, `message`, `payload`).
const DATA_KEYS: [&str; 3] = ["data", "message", "payload"];

/// Reads a delivery's body (after [`verify`]). Only the fields flowbot uses
/// are read, leniently: any other field may be of any type, `null` or missing.
///
/// ASSUMED shape: `{"event": NAME, "data": {...}}` (`type`/`eventType` and
/// `message`/`payload` are read too), or a bare message (an object with `_id`
/// and no event name).
pub fn parse(body: &[u8]) -> Result<WebhookEvent, PayloadError> {
    let mut map = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => map,
        Ok(_) => return Err(PayloadError::Shape("not a JSON object".into())),
        Err(e) => return Err(PayloadError::Json(e.to_string())),
    };
    let event = EVENT_KEYS
        .iter()
        .find_map(|k| map.get(*k).and_then(Value::as_str).map(str::to_owned));
    let (event, data) = match event {
        Some(event) => {
            let data = DATA_KEYS
                .iter()
                .find_map(|k| map.remove(*k).filter(Value::is_object))
                .unwrap_or(Value::Null);
            (event, data)
        }
        None if map.contains_key("_id") => ("NEW_INCOMING_MESSAGE".to_owned(), Value::Object(map)),
        None => return Err(PayloadError::Shape("no event name and no message".into())),
    };
    match event.to_ascii_uppercase().as_str() {
        "NEW_INCOMING_MESSAGE" | "NEW_MESSAGE" | "MESSAGE_CREATED" => {
            if !data.is_object() {
                return Err(PayloadError::Shape(format!(
                    "{event} without a message object"
                )));
            }
            let msg: ExternalMessage = serde_json::from_value(data)
                .map_err(|e| PayloadError::Shape(format!("{event}: {e}")))?;
            if msg.id.is_none() {
                return Err(PayloadError::Shape(format!(
                    "{event}: the message has no `_id`"
                )));
            }
            if msg.conversation.is_none() {
                return Err(PayloadError::Shape(format!(
                    "{event}: the message has no `conversation`"
                )));
            }
            Ok(WebhookEvent::NewMessage(Box::new(msg)))
        }
        "LEAVE_CONVERSATION" | "CONVERSATION_RELEASED" => Ok(WebhookEvent::AgentLeft {
            conversation: conversation_id(&data)
                .ok_or_else(|| PayloadError::Shape(format!("{event}: no conversation id")))?,
        }),
        "JOIN_CONVERSATION" => {
            // ASSUMED: the conversation itself, or {conversationId, person}.
            let person = ["person", "joinedCPerson", "joinedPerson"]
                .iter()
                .find_map(|k| data.get(*k).and_then(id_of));
            Ok(WebhookEvent::AgentJoined {
                conversation: conversation_id(&data)
                    .ok_or_else(|| PayloadError::Shape(format!("{event}: no conversation id")))?,
                person,
            })
        }
        _ => Ok(WebhookEvent::Other(event)),
    }
}

/// The conversation an event is about: `conversationId`, `conversation` (an id
/// or an object), or the data's own `_id` (the data is the conversation).
fn conversation_id(data: &Value) -> Option<String> {
    ["conversationId", "conversation", "_id"]
        .iter()
        .find_map(|k| data.get(*k).and_then(id_of))
}
