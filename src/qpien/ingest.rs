//! Where Qpien's messages become flowbot [`Event`]s: one place for the webhook
//! and the poller alike (two sources of one stream, like teloxide's update
//! listeners).
//!
//! [`Intake::delivery`] reads a verified webhook body; [`Intake::message`]
//! reads one message (a delivery's, or one the poller found). Each gives an
//! [`Ingested`] event with its deduplication key and conversation, the reason
//! it gets no turn ([`Ignored`]: who sent it, a group, a comment), or, for a
//! delivery flowbot cannot use at all, why ([`Delivery::Unusable`]: the runtime
//! keeps it as a dead letter and acknowledges it, since Qpien would otherwise
//! retry it for ever).

use std::collections::BTreeMap;

use crate::message::Event;

use super::config::{QpienConfig, SenderKind};
use super::convert::to_incoming;
use super::senders::SenderTypes;
use super::types::ExternalMessage;
use super::webhook::{parse, WebhookEvent};

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

/// Why a message gets no turn (it is acknowledged all the same).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Ignored {
    /// Not the customer's: the bot never answers a bot, an agent or the
    /// system, nor a sender type it does not know.
    #[error("sent by {0:?}, not the customer")]
    NotCustomer(SenderKind),
    /// A group or channel conversation (`qpien.answer_groups` is off).
    #[error("a group or channel conversation")]
    Group,
    /// A comment (`qpien.answer_comments` is off).
    #[error("a comment")]
    Comment,
    /// A message without a usable `_id` or conversation (missing, empty or
    /// too long).
    #[error("the message has no {0}")]
    Missing(&'static str),
}

/// What a verified delivery is.
#[derive(Debug, Clone, PartialEq)]
pub enum Delivery {
    /// An event to run.
    Event(Box<Ingested>),
    /// Readable, but not for the bot.
    Ignored(Ignored),
    /// Not usable (an unknown shape or event): a dead letter, with the reason.
    Unusable(String),
}

/// The rules for reading Qpien's messages: who is a customer, and whether
/// groups and comments are answered.
#[derive(Debug)]
pub struct Intake {
    senders: SenderTypes,
    answer_groups: bool,
    answer_comments: bool,
}

impl Intake {
    /// The rules of a configuration.
    pub fn new(config: &QpienConfig) -> Intake {
        Intake {
            senders: SenderTypes::new(&config.sender_types, &config.front_msg_id_prefix),
            answer_groups: config.answer_groups,
            answer_comments: config.answer_comments,
        }
    }

    /// The defaults.
    pub fn with_defaults() -> Intake {
        Intake::new(&QpienConfig::default())
    }

    /// Who sent `msg`.
    pub fn sender(&self, msg: &ExternalMessage) -> SenderKind {
        self.senders.kind(msg)
    }

    /// Messages seen with a `senderType` the table does not know.
    pub fn unknown_senders(&self) -> u64 {
        self.senders.unknown_count()
    }

    /// Reads a message into an event. `conversation` is used when the message
    /// does not name its own (a polled page of one conversation); `group` is
    /// what the conversation says of itself, when known.
    pub fn message(
        &self,
        msg: &ExternalMessage,
        conversation: Option<&str>,
        group: Option<bool>,
    ) -> Result<Ingested, Ignored> {
        let kind = self.sender(msg);
        if kind != SenderKind::Customer {
            return Err(Ignored::NotCustomer(kind));
        }
        if !self.answer_groups && (msg.is_group_or_channel == Some(true) || group == Some(true)) {
            return Err(Ignored::Group);
        }
        if !self.answer_comments && msg.comment_data.as_ref().is_some_and(|c| !c.is_null()) {
            return Err(Ignored::Comment);
        }
        let key = msg
            .id
            .clone()
            .filter(|id| usable(id))
            .ok_or(Ignored::Missing("usable `_id`"))?;
        let conversation = msg
            .conversation
            .clone()
            .or_else(|| conversation.map(str::to_owned))
            .filter(|id| usable(id))
            .ok_or(Ignored::Missing("usable `conversation`"))?;
        Ok(Ingested {
            key,
            conversation,
            event: Event::Message(to_incoming(msg)),
        })
    }

    /// Reads a verified webhook delivery.
    ///
    /// A message is deduplicated by its `_id`. An agent's join or leave is
    /// identified by what the delivery says of it (its id or its time, with the
    /// conversation and the person): a redelivery is one event, while the same
    /// person joining again later is another. When the delivery says neither,
    /// `arrival` (unique to this delivery) makes it an event of its own: joins
    /// and leaves change nothing when repeated, so running a redelivery again
    /// is harmless, while dropping a real second join (by its bytes, which are
    /// the same) would let the bot talk over the agent.
    pub fn delivery(&self, body: &[u8], arrival: &str) -> Delivery {
        let key = |kind: &str, conversation: &str, person: &Option<String>, id: &Option<String>| {
            let person = person.as_deref().unwrap_or("-");
            match id {
                Some(id) => format!("{kind}:{conversation}:{person}:{id}"),
                None => format!("{kind}:{conversation}:{person}:arrival:{arrival}"),
            }
        };
        match parse(body) {
            Err(e) => Delivery::Unusable(e.to_string()),
            Ok(WebhookEvent::NewMessage(msg)) => match self.message(&msg, None, None) {
                Ok(i) => Delivery::Event(Box::new(i)),
                Err(why) => Delivery::Ignored(why),
            },
            Ok(WebhookEvent::AgentJoined {
                conversation,
                person,
                identity,
            }) => Delivery::Event(Box::new(Ingested {
                key: key("join", &conversation, &person, &identity),
                conversation,
                event: Event::AgentJoined,
            })),
            Ok(WebhookEvent::AgentLeft {
                conversation,
                person,
                identity,
            }) => Delivery::Event(Box::new(Ingested {
                key: key("leave", &conversation, &person, &identity),
                conversation,
                event: Event::AgentLeft,
            })),
            Ok(WebhookEvent::Other(name)) => {
                Delivery::Unusable(format!("event `{name}` is not one flowbot knows"))
            }
        }
    }
}

/// Whether an id can key a message or a conversation (see
/// [`super::webhook::MAX_ID_CHARS`]).
pub(crate) fn usable(id: &str) -> bool {
    !id.trim().is_empty()
        && id.chars().count() <= super::webhook::MAX_ID_CHARS
        && !id.chars().any(char::is_control)
}

/// What [`usable`] asks of an id, for error messages.
pub(crate) const ID_RULE: &str =
    "an id of 1 to 256 characters, not blank, without control characters";

/// The top-level keys of a JSON object (for logs: never the values, which may
/// hold a customer's words).
pub fn top_level_keys(body: &[u8]) -> Vec<String> {
    match serde_json::from_slice::<BTreeMap<String, serde::de::IgnoredAny>>(body) {
        Ok(map) => map
            .into_keys()
            .take(32)
            .map(|k| crate::text::shorten(&k, 64))
            .collect(),
        Err(_) => Vec::new(),
    }
}
