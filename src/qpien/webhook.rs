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

/// The header `flowbot sim` adds to its deliveries (Qpien never sends it): a
/// signed delivery that carries it is test traffic, left out of reports.
pub const SIMULATOR_HEADER: &str = "X-Flowbot-Simulator";

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
        /// What tells this event from another like it, if the delivery says.
        identity: Option<String>,
    },
    /// `LEAVE_CONVERSATION` (ASSUMED: Qpien documents no such event; the
    /// simulator sends it): the person left and the bot takes over again.
    AgentLeft {
        /// The conversation.
        conversation: String,
        /// Who left, if said (an id).
        person: Option<String>,
        /// What tells this event from another like it, if the delivery says.
        identity: Option<String>,
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
/// The event names of a new message (compared without case).
const MESSAGE_EVENTS: [&str; 3] = ["NEW_INCOMING_MESSAGE", "NEW_MESSAGE", "MESSAGE_CREATED"];
/// Where the event's data sits (ASSUMED keys: `data`, `message`, `payload`).
const DATA_KEYS: [&str; 3] = ["data", "message", "payload"];

/// Reads a delivery's body (after [`verify`]). Only the fields flowbot uses
/// are read, leniently: any other field may be of any type, `null` or missing.
///
/// ASSUMED shape: `{"event": NAME, "data": {...}}` (`type`/`eventType` and
/// `message`/`payload` are read too), or a bare message (an object with `_id`
/// and no event name).
pub fn parse(body: &[u8]) -> Result<WebhookEvent, PayloadError> {
    usual(body).unwrap_or_else(|| general(body))
}

/// Any delivery, through a JSON tree.
fn general(body: &[u8]) -> Result<WebhookEvent, PayloadError> {
    let map = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => map,
        Ok(_) => return Err(PayloadError::Shape("not a JSON object".into())),
        Err(e) => return Err(PayloadError::Json(e.to_string())),
    };
    let mut map = map;
    let event = EVENT_KEYS
        .iter()
        .find_map(|k| map.get(*k).and_then(Value::as_str).map(str::to_owned));
    let identity = identity(&map);
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
        name if MESSAGE_EVENTS.contains(&name) => {
            if !data.is_object() {
                return Err(PayloadError::Shape(format!(
                    "{event} without a message object"
                )));
            }
            let msg: ExternalMessage = serde_json::from_value(data)
                .map_err(|e| PayloadError::Shape(format!("{event}: {e}")))?;
            new_message(&event, msg)
        }
        "LEAVE_CONVERSATION" | "CONVERSATION_RELEASED" => Ok(WebhookEvent::AgentLeft {
            conversation: usable_id(&event, "the conversation id", conversation_id(&data))?,
            person: person(&data),
            identity: identity.or_else(|| data_time(&data)),
        }),
        "JOIN_CONVERSATION" => Ok(WebhookEvent::AgentJoined {
            conversation: usable_id(&event, "the conversation id", conversation_id(&data))?,
            person: person(&data),
            identity: identity.or_else(|| data_time(&data)),
        }),
        _ => Ok(WebhookEvent::Other(crate::text::shorten(&event, 64))),
    }
}

/// A new message's event, its ids checked.
fn new_message(event: &str, msg: ExternalMessage) -> Result<WebhookEvent, PayloadError> {
    usable_id(event, "the message's `_id`", msg.id.as_deref())?;
    usable_id(
        event,
        "the message's `conversation`",
        msg.conversation.as_deref(),
    )?;
    Ok(WebhookEvent::NewMessage(Box::new(msg)))
}

/// The usual delivery, `{"event": <a new message's event>, "data": {...}}`,
/// read straight into its types, without a JSON tree first (most of a
/// delivery's parsing cost). `None` for anything else (another event, no
/// `data` object, a field of a type this does not take, a key twice), which
/// the general reading ([`general`]) takes: where both read a body, they read
/// it the same (`event` and `data` are the keys the general reading looks at
/// first, and the message is the same type read from the same JSON).
fn usual(body: &[u8]) -> Option<Result<WebhookEvent, PayloadError>> {
    #[derive(serde::Deserialize)]
    struct Usual<'a> {
        #[serde(borrow)]
        event: std::borrow::Cow<'a, str>,
        data: Object,
    }
    /// A message read from a JSON object only (a struct would also take an
    /// array, which the general reading refuses).
    struct Object(ExternalMessage);
    impl<'de> serde::Deserialize<'de> for Object {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct Visit;
            impl<'de> serde::de::Visitor<'de> for Visit {
                type Value = Object;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("a message object")
                }
                fn visit_map<A: serde::de::MapAccess<'de>>(
                    self,
                    map: A,
                ) -> Result<Object, A::Error> {
                    use serde::Deserialize;
                    let d = serde::de::value::MapAccessDeserializer::new(map);
                    ExternalMessage::deserialize(d).map(Object)
                }
            }
            d.deserialize_map(Visit)
        }
    }
    let Usual {
        event,
        data: Object(data),
    } = serde_json::from_slice::<Usual<'_>>(body).ok()?;
    let known = MESSAGE_EVENTS.iter().any(|k| event.eq_ignore_ascii_case(k));
    known.then(|| new_message(&event, data))
}

/// The longest id flowbot accepts (Qpien's are 24-character Mongo ids).
pub const MAX_ID_CHARS: usize = 256;

/// An id that can key a conversation or a message: present, not empty, not
/// longer than [`MAX_ID_CHARS`]. An empty id would make every other empty-id
/// message look like a repeat; a huge one would be stored and logged whole.
fn usable_id<T: AsRef<str>>(event: &str, what: &str, id: Option<T>) -> Result<T, PayloadError> {
    let event = || crate::text::shorten(event, 64);
    let Some(id) = id else {
        let event = event();
        return Err(PayloadError::Shape(format!("{event}: {what} is missing")));
    };
    if id.as_ref().trim().is_empty() {
        let event = event();
        return Err(PayloadError::Shape(format!("{event}: {what} is empty")));
    }
    if id.as_ref().chars().count() > MAX_ID_CHARS {
        let event = event();
        return Err(PayloadError::Shape(format!(
            "{event}: {what} is longer than {MAX_ID_CHARS} characters"
        )));
    }
    Ok(id)
}

/// Who joined or left (ASSUMED: the conversation itself, or {conversationId,
/// person}).
fn person(data: &Value) -> Option<String> {
    ["person", "joinedCPerson", "joinedPerson", "leftPerson"]
        .iter()
        .find_map(|k| data.get(*k).and_then(id_of))
}

/// A delivery's own id (ASSUMED keys: Qpien publishes none), or its time.
fn identity(map: &serde_json::Map<String, Value>) -> Option<String> {
    ["deliveryId", "eventId", "id"]
        .iter()
        .find_map(|k| map.get(*k).and_then(id_of))
        .map(|id| format!("id:{id}"))
        .or_else(|| time_of(map, &["timestamp", "time", "createdAt", "sentAt"]))
}

/// When the event happened, as its data says (ASSUMED keys; a conversation's
/// `updatedAt` changes when a person joins or leaves, its `createdAt` does not).
fn data_time(data: &Value) -> Option<String> {
    time_of(
        data,
        &["joinedAt", "leftAt", "timestamp", "time", "updatedAt"],
    )
}

/// The first of `keys` that holds a time, as text.
fn time_of(obj: &impl Lookup, keys: &[&str]) -> Option<String> {
    keys.iter()
        .find_map(|k| {
            obj.field(k).and_then(|v| match v {
                Value::String(s) if !s.is_empty() => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            })
        })
        .map(|t| format!("at:{t}"))
}

/// A JSON object or value whose fields can be read by name.
trait Lookup {
    fn field(&self, key: &str) -> Option<&Value>;
}

impl Lookup for Value {
    fn field(&self, key: &str) -> Option<&Value> {
        self.get(key)
    }
}

impl Lookup for serde_json::Map<String, Value> {
    fn field(&self, key: &str) -> Option<&Value> {
        self.get(key)
    }
}

/// The conversation an event is about: `conversationId`, `conversation` (an id
/// or an object), or the data's own `_id` (the data is the conversation).
fn conversation_id(data: &Value) -> Option<String> {
    ["conversationId", "conversation", "_id"]
        .iter()
        .find_map(|k| data.get(*k).and_then(id_of))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_usual_delivery_is_read_without_a_tree_and_as_the_general_reading_reads_it() {
        let usual_body = br#"{"event":"NEW_INCOMING_MESSAGE","data":{"_id":"m1","conversation":"c1","content":"hi","senderType":"user","extra":[1,{"a":null}]}}"#;
        let read = usual(usual_body).expect("the usual shape takes the short way");
        assert_eq!(read, general(usual_body));
        assert!(
            matches!(read, Ok(WebhookEvent::NewMessage(ref m)) if m.content.as_deref() == Some("hi"))
        );
        // What the short way leaves to the general reading.
        for body in [
            br#"{"event":"NEW_INCOMING_MESSAGE","data":[]}"#.as_slice(),
            br#"{"event":"NEW_INCOMING_MESSAGE","data":null,"message":{"_id":"m","conversation":"c"}}"#,
            br#"{"event":"JOIN_CONVERSATION","data":{"conversation":"c"}}"#,
            br#"{"event":"NEW_MESSAGE","event":"X","data":{"_id":"m","conversation":"c"}}"#,
            br#"{"type":"NEW_MESSAGE","data":{"_id":"m","conversation":"c"}}"#,
            br#"{"_id":"m","conversation":"c"}"#,
            br#"[1]"#,
        ] {
            assert!(usual(body).is_none(), "{}", String::from_utf8_lossy(body));
        }
    }

    fn key() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec![
            "event",
            "type",
            "data",
            "message",
            "_id",
            "conversation",
            "content",
        ])
    }

    fn value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            Just(Value::from("NEW_INCOMING_MESSAGE")),
            Just(Value::from("message_created")),
            Just(Value::from("JOIN_CONVERSATION")),
            Just(Value::from("")),
            Just(Value::from("c1")),
            Just(Value::from(7)),
            Just(Value::from("a\"b\u{e9}")),
        ];
        leaf.prop_recursive(3, 24, 4, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..3).prop_map(Value::from),
                prop::collection::vec((key(), inner), 0..5).prop_map(|kv| {
                    Value::Object(kv.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
                }),
            ]
        })
    }

    proptest! {
        /// Wherever the short way reads a body, the general reading reads
        /// the same.
        #[test]
        fn the_short_way_never_reads_a_body_otherwise(
            fields in prop::collection::vec((key(), value()), 0..5),
            message in prop::collection::vec((key(), value()), 0..5),
            usual_like in any::<bool>(),
            twice in any::<bool>(),
        ) {
            let mut text = String::from("{");
            let mut fields = fields;
            if usual_like {
                // Most cases the short way reads, the rest beside them.
                let data = message.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
                fields.insert(0, ("data", Value::Object(data)));
                fields.insert(0, ("event", Value::from("New_Message")));
            }
            if twice && !fields.is_empty() {
                fields.push(fields[0].clone());
            }
            for (i, (k, v)) in fields.iter().enumerate() {
                if i > 0 {
                    text.push(',');
                }
                text.push_str(&format!("{}:{v}", Value::from(*k)));
            }
            text.push('}');
            if let Some(read) = usual(text.as_bytes()) {
                prop_assert_eq!(read, general(text.as_bytes()), "{}", text);
            }
        }
    }
}
