//! Qpien's wire types, as flowbot reads and writes them.
//!
//! Reading is lenient, as the API is only partly documented: unknown fields are
//! ignored, every field may be missing or `null`, an id may come as a string or
//! as an object with an `_id`. Writing omits what is empty. Field names follow
//! Qpien's documentation (FACT); the input types are ASSUMED (see `schema.graphql`).

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

/// `null` or missing reads as the default.
fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// An id given as `"abc"`, as a number, or as `{"_id": "abc"}`.
fn loose_id<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match Option::<Value>::deserialize(d)? {
        Some(Value::String(s)) => Some(s),
        Some(Value::Number(n)) => Some(n.to_string()),
        Some(Value::Object(map)) => match map.get("_id").or_else(|| map.get("id")) {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            _ => None,
        },
        _ => None,
    })
}

/// Who sent a message (`senderData`), or a conversation's customer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Person {
    /// The id.
    #[serde(rename = "_id", deserialize_with = "loose_id")]
    pub id: Option<String>,
    /// Full name.
    pub name: Option<String>,
    /// Given name.
    pub first_name: Option<String>,
    /// Family name.
    pub last_name: Option<String>,
    /// Preferred language (ASSUMED field; `locale` is read too).
    #[serde(alias = "locale")]
    pub language: Option<String>,
    /// For agents: JR_AGENT, PERSON, ADMIN, OWNER or ROBOT.
    #[serde(rename = "type")]
    pub kind: Option<String>,
}

/// An attachment of a message.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, rename_all = "camelCase")]
pub struct MediaItem {
    /// Where it is.
    pub url: Option<String>,
    /// image, video, audio, document, file, sticker, location...
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// File name.
    pub name: Option<String>,
    /// Caption.
    pub caption: Option<String>,
}

/// The list part of a message: the rows offered, or the row picked.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ListMessageWire {
    /// The picked row, on a customer's reply (ASSUMED).
    pub selected_row_id: Option<String>,
}

/// A list reply as some channels report it (ASSUMED).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default)]
pub struct ListReply {
    /// The picked row id.
    #[serde(deserialize_with = "loose_id")]
    pub id: Option<String>,
    /// Its title.
    pub title: Option<String>,
}

/// A message of a conversation (`ExternalMessage`), the fields flowbot reads.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ExternalMessage {
    /// The message id: the deduplication key.
    #[serde(rename = "_id", deserialize_with = "loose_id")]
    pub id: Option<String>,
    /// The conversation it belongs to.
    #[serde(deserialize_with = "loose_id", alias = "conversationId")]
    pub conversation: Option<String>,
    /// text, image, email...
    pub message_type: Option<String>,
    /// WhatsApp, Instagram, Email, LiveChat...
    pub channel_type: Option<String>,
    /// user (the customer), system, bot, or an agent's type.
    pub sender_type: Option<String>,
    /// Who sent it.
    pub sender: Option<Person>,
    /// The text.
    pub content: Option<String>,
    /// The text as HTML (e-mail).
    pub content_html: Option<String>,
    /// E-mail subject.
    pub subject: Option<String>,
    /// Attachments.
    #[serde(deserialize_with = "null_default")]
    pub media: Vec<MediaItem>,
    /// The quick-reply button the customer tapped.
    #[serde(deserialize_with = "loose_id")]
    pub flow_bot_quick_reply_response_id: Option<String>,
    /// The list part.
    pub list_message: Option<ListMessageWire>,
    /// A list reply (ASSUMED alternative).
    pub list_reply: Option<ListReply>,
    /// Client-side id of a message created through the API.
    pub front_msg_id: Option<String>,
    /// When it was created (a date string or epoch milliseconds).
    pub created_at: Option<Value>,
}

/// A conversation (`ExternalConversation`), the fields flowbot reads.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ExternalConversation {
    /// The conversation id.
    #[serde(rename = "_id", deserialize_with = "loose_id")]
    pub id: Option<String>,
    /// The customer.
    pub customer: Option<Person>,
    /// The agent who joined, if any.
    pub joined_person: Option<Person>,
    /// Status (values ASSUMED: OPEN, PENDING, CLOSED...).
    pub status: Option<String>,
    /// Whether it is a group or channel conversation.
    pub is_group_or_channel: Option<bool>,
    /// The channel of the last message received.
    pub last_received_message_channel: Option<String>,
    /// The channels it runs on.
    #[serde(deserialize_with = "null_default")]
    pub channels: Vec<String>,
    /// The last message.
    pub last_message: Option<Box<ExternalMessage>>,
}

/// A connected channel (`getAllConnectedPlatformList`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ConnectedPlatform {
    /// The platform id.
    #[serde(rename = "_id", deserialize_with = "loose_id")]
    pub id: Option<String>,
    /// Its name.
    pub name: Option<String>,
    /// WhatsApp, Instagram...
    pub channel_type: Option<String>,
    /// Its status.
    pub status: Option<String>,
}

/// One page of a list: `{docs, hasNextPage, totalDocs}`, or a bare list read
/// as a single last page.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Page<T> {
    /// The items.
    pub docs: Vec<T>,
    /// Whether another page follows.
    pub has_next_page: bool,
    /// The total, when told.
    pub total_docs: Option<u64>,
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Page<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Shape<T> {
            List(Vec<T>),
            Paged {
                #[serde(default = "Vec::new", alias = "items", alias = "data")]
                docs: Vec<T>,
                #[serde(default, rename = "hasNextPage")]
                has_next_page: Option<bool>,
                #[serde(default, rename = "totalDocs")]
                total_docs: Option<u64>,
            },
        }
        Ok(match Option::<Shape<T>>::deserialize(d)? {
            None => Page {
                docs: Vec::new(),
                has_next_page: false,
                total_docs: Some(0),
            },
            Some(Shape::List(docs)) => Page {
                total_docs: Some(docs.len() as u64),
                docs,
                has_next_page: false,
            },
            Some(Shape::Paged {
                docs,
                has_next_page,
                total_docs,
            }) => Page {
                docs,
                has_next_page: has_next_page.unwrap_or(false),
                total_docs,
            },
        })
    }
}

/// What Qpien answers to a created message.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, rename_all = "camelCase")]
pub struct CreatedMessage {
    /// The new message's id.
    #[serde(rename = "_id", deserialize_with = "loose_id")]
    pub id: Option<String>,
    /// The `frontMsgId` it was created with.
    pub front_msg_id: Option<String>,
}

/// A quick-reply button (`FlowBotQuickReplyInput`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuickReplyInput {
    /// Comes back as `flowBotQuickReplyResponseId`.
    pub id: String,
    /// What the customer sees.
    pub title: String,
}

/// A row of a list message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListRowInput {
    /// Comes back when picked.
    pub id: String,
    /// What the customer sees.
    pub title: String,
    /// The second line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// A section of a list message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListSectionInput {
    /// Heading.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// Rows.
    pub rows: Vec<ListRowInput>,
}

/// A list message (`ListMessageInput`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListMessageInput {
    /// Header line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// The text.
    pub body: String,
    /// Footer line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub footer: Option<String>,
    /// The label of the button that opens the list.
    pub button_text: String,
    /// Sections.
    pub sections: Vec<ListSectionInput>,
}

/// An informative button (`InformativeButtonInput`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InformativeButtonInput {
    /// `URL` or `PHONE`.
    #[serde(rename = "type")]
    pub kind: String,
    /// What the customer sees.
    pub title: String,
    /// The address or number.
    pub value: String,
}

/// Informative buttons (`InformativeButtonsInput`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InformativeButtonsInput {
    /// The buttons.
    pub buttons: Vec<InformativeButtonInput>,
}

/// An attachment sent by URL (`MediaInput`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediaInput {
    /// Where Qpien fetches it.
    pub url: String,
    /// image, video, audio, document, sticker, location.
    #[serde(rename = "type")]
    pub kind: String,
    /// Caption.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caption: Option<String>,
}

/// The input of `createMessage` / `createMessageByWhatsapp`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateMessageInput {
    /// The conversation.
    pub conversation_id: String,
    /// The text (empty for a list message: its body carries the text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// `text`, `interactive`, or the media kind.
    pub message_type: String,
    /// The idempotency key.
    pub front_msg_id: String,
    /// Attachments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media: Option<Vec<MediaInput>>,
    /// Quick-reply buttons.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow_bot_quick_reply: Option<Vec<QuickReplyInput>>,
    /// Whether the customer is expected to answer with a button.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow_bot_quick_reply_buttons_required: Option<bool>,
    /// A list message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub list_message: Option<ListMessageInput>,
    /// Informative buttons.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub informative_buttons: Option<InformativeButtonsInput>,
}

/// The input of `updateConversation` (ASSUMED fields).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UpdateConversationInput {
    /// The conversation.
    pub conversation_id: String,
    /// The new status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// The person it is assigned to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub joined_person: Option<String>,
}
