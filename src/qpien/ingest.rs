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
    /// A message without `_id` or conversation.
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
    /// redelivery of the same event carries the same one, so events without an
    /// id of their own are deduplicated by it).
    pub fn delivery(&self, body: &[u8], signature: &str) -> Delivery {
        let sig = &signature[..signature.len().min(32)];
        match parse(body) {
            Err(e) => Delivery::Unusable(e.to_string()),
            Ok(WebhookEvent::NewMessage(msg)) => match self.message(&msg, None, None) {
                Ok(i) => Delivery::Event(Box::new(i)),
                Err(why) => Delivery::Ignored(why),
            },
            Ok(WebhookEvent::AgentJoined { conversation, .. }) => {
                Delivery::Event(Box::new(Ingested {
                    key: format!("join:{conversation}:{sig}"),
                    conversation,
                    event: Event::AgentJoined,
                }))
            }
            Ok(WebhookEvent::AgentLeft { conversation }) => Delivery::Event(Box::new(Ingested {
                key: format!("leave:{conversation}:{sig}"),
                conversation,
                event: Event::AgentLeft,
            })),
            Ok(WebhookEvent::Other(name)) => {
                Delivery::Unusable(format!("event `{name}` is not one flowbot knows"))
            }
        }
    }
}

/// The top-level keys of a JSON object (for logs: never the values, which may
/// hold a customer's words).
pub fn top_level_keys(body: &[u8]) -> Vec<String> {
    match serde_json::from_slice::<BTreeMap<String, serde::de::IgnoredAny>>(body) {
        Ok(map) => map.into_keys().take(32).collect(),
        Err(_) => Vec::new(),
    }
}
