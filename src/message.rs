//! Channel-neutral messages: what a customer sends ([`Incoming`], [`Event`]) and
//! what the bot answers ([`Outgoing`]).
//!
//! This module knows no platform: the Qpien adapter converts its wire types to and
//! from these, and the engine only ever sees these. The serde shape of [`Outgoing`]
//! is the one `flowbot replay` prints and transcripts snapshot, so it is kept small
//! and stable: empty fields are omitted.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

use crate::time::Millis;

/// The channel a conversation runs on. It decides what the customer can see:
/// buttons, lists, or only text (see [`Channel::capabilities`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    /// WhatsApp: up to 3 reply buttons, list messages of up to 10 rows.
    #[default]
    WhatsApp,
    /// Instagram direct messages: quick replies, no list messages.
    Instagram,
    /// E-mail: text only; options become numbered lines.
    Email,
    /// Qpien's web live chat: buttons and lists.
    LiveChat,
}

/// What a channel can display, used to render options faithfully or fall back to
/// numbered text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// Most quick-reply buttons one message may carry (0: none).
    pub max_quick_replies: usize,
    /// Most rows a list message may carry (0: no list messages).
    pub max_list_rows: usize,
    /// Whether informative (URL / phone) buttons are shown as buttons.
    pub informative_buttons: bool,
    /// Longest text one message may carry (WhatsApp: 1024, FACT; the others
    /// ASSUMED), which decides whether texts can be sent folded together.
    pub max_body: usize,
    /// How long after the customer's last message free-form messages may be
    /// sent (WhatsApp: 24 hours, FACT; after it only template messages are
    /// delivered), in milliseconds; `None`: no such window.
    pub reply_window_ms: Option<i64>,
}

impl Channel {
    /// Every channel, in a stable order.
    pub const ALL: [Channel; 4] = [
        Channel::WhatsApp,
        Channel::Instagram,
        Channel::Email,
        Channel::LiveChat,
    ];

    /// What this channel can display: the one table of per-channel facts.
    pub fn capabilities(self) -> Capabilities {
        match self {
            Channel::WhatsApp => Capabilities {
                max_quick_replies: 3,
                max_list_rows: 10,
                informative_buttons: true,
                max_body: 1024,
                reply_window_ms: Some(24 * 3600 * 1000),
            },
            Channel::Instagram => Capabilities {
                max_quick_replies: 13,
                max_list_rows: 0,
                informative_buttons: true,
                max_body: 1000,
                reply_window_ms: None,
            },
            Channel::Email => Capabilities {
                max_quick_replies: 0,
                max_list_rows: 0,
                informative_buttons: false,
                max_body: usize::MAX,
                reply_window_ms: None,
            },
            Channel::LiveChat => Capabilities {
                max_quick_replies: 10,
                max_list_rows: 10,
                informative_buttons: true,
                max_body: 4096,
                reply_window_ms: None,
            },
        }
    }

    /// The lowercase name used in flows, tests and the replay contract.
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::WhatsApp => "whatsapp",
            Channel::Instagram => "instagram",
            Channel::Email => "email",
            Channel::LiveChat => "livechat",
        }
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A channel name that flowbot does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown channel `{0}` (expected whatsapp, instagram, email or livechat)")]
pub struct UnknownChannel(pub String);

impl FromStr for Channel {
    type Err = UnknownChannel;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "whatsapp" => Ok(Channel::WhatsApp),
            "instagram" => Ok(Channel::Instagram),
            "email" | "e-mail" => Ok(Channel::Email),
            "livechat" | "live_chat" | "webchat" => Ok(Channel::LiveChat),
            _ => Err(UnknownChannel(s.to_owned())),
        }
    }
}

/// The kind of a media attachment, sent or received.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MediaKind {
    /// A picture.
    Image,
    /// A video clip.
    Video,
    /// A voice note or audio file.
    Audio,
    /// A document (PDF, ...).
    Document,
    /// A sticker.
    Sticker,
    /// A shared location.
    Location,
}

impl MediaKind {
    /// Every kind, in a stable order.
    pub const ALL: [MediaKind; 6] = [
        MediaKind::Image,
        MediaKind::Video,
        MediaKind::Audio,
        MediaKind::Document,
        MediaKind::Sticker,
        MediaKind::Location,
    ];

    /// The lowercase name used in flows.
    pub fn as_str(self) -> &'static str {
        match self {
            MediaKind::Image => "image",
            MediaKind::Video => "video",
            MediaKind::Audio => "audio",
            MediaKind::Document => "document",
            MediaKind::Sticker => "sticker",
            MediaKind::Location => "location",
        }
    }

    /// Parses a kind name; `file` is accepted for `document`.
    pub fn parse(s: &str) -> Option<MediaKind> {
        match s.to_ascii_lowercase().as_str() {
            "image" | "photo" => Some(MediaKind::Image),
            "video" => Some(MediaKind::Video),
            "audio" | "voice" => Some(MediaKind::Audio),
            "document" | "file" => Some(MediaKind::Document),
            "sticker" => Some(MediaKind::Sticker),
            "location" => Some(MediaKind::Location),
            _ => None,
        }
    }
}

/// Who the customer is, as far as the platform tells.
///
/// ```
/// use flowbot::Contact;
/// let ada = Contact { first_name: Some("Ada".into()), language: Some("tr".into()), ..Contact::default() };
/// assert_eq!(ada.first_name.as_deref(), Some("Ada"));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contact {
    /// The platform's contact id, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Given name, visible in templates as `contact.first_name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_name: Option<String>,
    /// Family name, visible in templates as `contact.last_name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_name: Option<String>,
    /// Preferred language (`en`, `tr`, `pt-BR`...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
}

/// One customer message, already converted from the platform's format.
///
/// ```
/// use flowbot::Incoming;
/// let tap = Incoming::button("orders");
/// assert_eq!(tap.button.as_deref(), Some("orders"));
/// let text = Incoming::text("hello");
/// assert_eq!(text.text, "hello");
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Incoming {
    /// The platform's message id, used for deduplication and idempotency keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The message text (for a button tap, usually the button's title).
    #[serde(default)]
    pub text: String,
    /// The id of the quick-reply button the customer tapped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub button: Option<String>,
    /// The id of the list row the customer picked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub list: Option<String>,
    /// The kind of the attachment, if the message carries one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media: Option<MediaKind>,
    /// The channel the message came through.
    #[serde(default)]
    pub channel: Channel,
    /// The customer.
    #[serde(default)]
    pub contact: Contact,
    /// Test traffic (a delivery of `flowbot sim`): the conversation's runs
    /// are marked so in the event log, and reports leave them out.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub test: bool,
}

impl Incoming {
    /// A plain text message.
    pub fn text(text: impl Into<String>) -> Self {
        Incoming {
            text: text.into(),
            ..Default::default()
        }
    }

    /// A quick-reply button tap.
    pub fn button(id: impl Into<String>) -> Self {
        Incoming {
            button: Some(id.into()),
            ..Default::default()
        }
    }

    /// A list-row pick.
    pub fn list(id: impl Into<String>) -> Self {
        Incoming {
            list: Some(id.into()),
            ..Default::default()
        }
    }

    /// A media message with an optional caption.
    pub fn media(kind: MediaKind, caption: impl Into<String>) -> Self {
        Incoming {
            media: Some(kind),
            text: caption.into(),
            ..Default::default()
        }
    }

    /// Sets the channel.
    pub fn on(mut self, channel: Channel) -> Self {
        self.channel = channel;
        self
    }
}

/// Something that happens in a conversation: a customer message, an agent's
/// move, or time passing. Webhook, poller and timers are sources of one stream of
/// these; the engine takes each through [`Bot::step`](crate::Bot::step).
///
/// Its serde form is what the runtime stores in its inbox (`{"kind": "message",
/// "message": {...}}`, `{"kind": "agent_joined"}`, `{"kind": "idle", "due": ...}`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// The customer wrote, tapped or sent media.
    Message(Incoming),
    /// A person joined the conversation: the bot steps back.
    AgentJoined,
    /// The person left (the conversation is released): the next message starts over.
    AgentLeft,
    /// The inactivity timer of the conversation's state was due at `due`: its
    /// `after:` nudge fires if it still applies (or, in a handoff, the
    /// flow's `handoff_timeout` ends it).
    Idle {
        /// When it was due.
        due: Millis,
    },
    /// The conversation is given back to the bot: nobody has it any more in
    /// Qpien, or it was released by hand.
    Release,
    /// Qpien refused the handoff for good: the bot stays in service.
    HandoffFailed,
    /// The business starts (or restarts) the conversation in a state: an
    /// order update, a survey (`flowbot start`, `POST /api/start`).
    Start(Start),
}

/// A conversation the business starts: in which state, with which
/// variables, and what happens to one already in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Start {
    /// The state to enter.
    pub state: String,
    /// Variables set first (`order_id`, `delivery_date`).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub vars: std::collections::BTreeMap<String, serde_json::Value>,
    /// What happens to a conversation already in progress.
    #[serde(default)]
    pub mode: StartMode,
    /// The conversation's channel, when the bot has not seen it yet
    /// (default: WhatsApp).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<Channel>,
    /// Test traffic (`flowbot start --test`): the run is marked so in the
    /// event log, and reports leave it out.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub test: bool,
}

/// What a [`Start`] does to a conversation already in progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StartMode {
    /// Go now: the conversation leaves its state (its variables are kept).
    #[default]
    Interrupt,
    /// Leave it: nothing happens.
    Skip,
    /// After it ends (or expires): the start waits in the session.
    Queue,
}

impl std::str::FromStr for StartMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "interrupt" => Ok(StartMode::Interrupt),
            "skip" => Ok(StartMode::Skip),
            "queue" => Ok(StartMode::Queue),
            other => Err(format!("unknown mode `{other}` (interrupt, skip, queue)")),
        }
    }
}

impl Event {
    /// The events that have a word of their own, as tests and `flowbot replay`
    /// write them.
    pub const WORDS: [&'static str; 4] =
        ["agent_joined", "agent_left", "released", "handoff_failed"];

    /// The event a word names (see [`Event::WORDS`]).
    pub fn from_word(word: &str) -> Option<Event> {
        match word {
            "agent_joined" => Some(Event::AgentJoined),
            "agent_left" => Some(Event::AgentLeft),
            "released" => Some(Event::Release),
            "handoff_failed" => Some(Event::HandoffFailed),
            _ => None,
        }
    }

    /// The event's word (`message`, `agent_joined`, `agent_left`, `idle`).
    pub fn word(&self) -> &'static str {
        match self {
            Event::Message(_) => "message",
            Event::AgentJoined => "agent_joined",
            Event::AgentLeft => "agent_left",
            Event::Idle { .. } => "idle",
            Event::Release => "released",
            Event::HandoffFailed => "handoff_failed",
            Event::Start(_) => "start",
        }
    }
}

/// The stored form of an [`Event`], borrowed for writing.
#[derive(Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum EventOut<'a> {
    Message { message: &'a Incoming },
    AgentJoined,
    AgentLeft,
    Idle { due: Millis },
    Released,
    HandoffFailed,
    Start { start: &'a Start },
}

/// The stored form of an [`Event`], owned for reading.
#[derive(Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum EventIn {
    Message { message: Incoming },
    AgentJoined,
    AgentLeft,
    Idle { due: Millis },
    Released,
    HandoffFailed,
    Start { start: Start },
}

impl Serialize for Event {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Event::Message(message) => EventOut::Message { message },
            Event::AgentJoined => EventOut::AgentJoined,
            Event::AgentLeft => EventOut::AgentLeft,
            Event::Idle { due } => EventOut::Idle { due: *due },
            Event::Release => EventOut::Released,
            Event::HandoffFailed => EventOut::HandoffFailed,
            Event::Start(start) => EventOut::Start { start },
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Event {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(match EventIn::deserialize(d)? {
            EventIn::Message { message } => Event::Message(message),
            EventIn::AgentJoined => Event::AgentJoined,
            EventIn::AgentLeft => Event::AgentLeft,
            EventIn::Idle { due } => Event::Idle { due },
            EventIn::Released => Event::Release,
            EventIn::HandoffFailed => Event::HandoffFailed,
            EventIn::Start { start } => Event::Start(start),
        })
    }
}

/// A quick-reply button, or one row of a list message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Choice {
    /// The id that comes back when the customer taps it.
    pub id: String,
    /// What the customer sees.
    pub title: String,
    /// A second line under a list row.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// A section of a list message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListSection {
    /// Section heading.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// The rows the customer can pick.
    pub rows: Vec<Choice>,
}

/// A list message: a body and a button that opens a menu of rows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListMessage {
    /// Optional header line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// The message text.
    pub body: String,
    /// Optional footer line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub footer: Option<String>,
    /// The label of the button that opens the list.
    pub button: String,
    /// The sections with their rows.
    pub sections: Vec<ListSection>,
}

/// What an informative button does when tapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ButtonKind {
    /// Opens a web address.
    Url,
    /// Calls a phone number.
    Phone,
}

/// An informative (call-to-action) button: no reply comes back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InfoButton {
    /// URL or phone.
    #[serde(rename = "type")]
    pub kind: ButtonKind,
    /// What the customer sees.
    pub title: String,
    /// The address or the number.
    pub value: String,
}

/// An attachment sent by URL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Media {
    /// Where the platform fetches it.
    pub url: String,
    /// Image, document...
    pub kind: MediaKind,
    /// Optional caption.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caption: Option<String>,
}

/// One message the bot sends. Exactly one of `text`, `list` or `media` carries the
/// content; `quick_replies` and `buttons` go with `text`.
///
/// ```
/// use flowbot::{ButtonKind, Choice, InfoButton, ListMessage, ListSection, Outgoing};
/// let text = Outgoing::text("Hello!");
/// assert!(text.is_free_form());
/// let buttons = Outgoing {
///     text: "Anything else?".into(),
///     quick_replies: vec![Choice { id: "yes".into(), title: "Yes".into(), description: None }],
///     buttons: vec![InfoButton {
///         kind: ButtonKind::Url,
///         title: "Our site".into(),
///         value: "https://example.com".into(),
///     }],
///     ..Outgoing::default()
/// };
/// let list = Outgoing {
///     list: Some(ListMessage {
///         header: None,
///         body: "Pick a topic".into(),
///         footer: None,
///         button: "Topics".into(),
///         sections: vec![ListSection {
///             title: Some("Orders".into()),
///             rows: vec![Choice {
///                 id: "track".into(),
///                 title: "Track".into(),
///                 description: Some("Where is it now?".into()),
///             }],
///         }],
///     }),
///     ..Outgoing::default()
/// };
/// assert_eq!(list.list.as_ref().unwrap().sections[0].rows[0].id, "track");
/// # let _ = buttons;
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outgoing {
    /// The text (empty for list and media messages).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub text: String,
    /// Quick-reply buttons offered with the text.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub quick_replies: Vec<Choice>,
    /// A list message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub list: Option<ListMessage>,
    /// Informative buttons offered with the text.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub buttons: Vec<InfoButton>,
    /// An attachment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media: Option<Media>,
    /// A WhatsApp template message (the only kind WhatsApp delivers outside
    /// the 24-hour customer-service window).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<TemplateMessage>,
}

/// A WhatsApp template message: an approved template, its language, and the
/// values of its `{{1}}`, `{{2}}`... placeholders.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateMessage {
    /// The template's name, as approved.
    pub name: String,
    /// Its language code, as approved (`en`, `tr`, `pt_BR`).
    pub language: String,
    /// The placeholders' values, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub params: Vec<String>,
}

impl Outgoing {
    /// Whether this is a free-form message (anything but a template): on
    /// WhatsApp, sent only within 24 hours of the customer's last message.
    pub fn is_free_form(&self) -> bool {
        self.template.is_none()
    }

    /// A plain text message.
    pub fn text(text: impl Into<String>) -> Self {
        Outgoing {
            text: text.into(),
            ..Default::default()
        }
    }
}

/// Something the bot asks of the platform besides sending messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Effect {
    /// Hand the conversation to a person; the bot stays silent until released.
    Handoff,
    /// The conversation is over; the next message starts afresh.
    End,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_names_round_trip() {
        for c in Channel::ALL {
            assert_eq!(c.as_str().parse::<Channel>().unwrap(), c);
        }
        assert!("fax".parse::<Channel>().is_err());
    }

    #[test]
    fn outgoing_omits_empty_fields() {
        let json = serde_json::to_string(&Outgoing::text("hi")).unwrap();
        assert_eq!(json, r#"{"text":"hi"}"#);
    }
}
