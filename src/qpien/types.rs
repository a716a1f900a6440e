//! Qpien's wire types, as flowbot reads and writes them.
//!
//! Reading is lenient, as the API is only partly documented: unknown fields are
//! ignored, every field may be missing or `null`, an id may come as a string or
//! as an object with an `_id`. Writing omits what is empty. Field names follow
//! Qpien's documentation (FACT); the input types are ASSUMED (see `schema.graphql`).

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

/// `null` or missing reads as the default.
/// Any JSON value, read as `T` when it is one and as nothing otherwise: a
/// field of another type than expected never fails the whole document.
fn lenient<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: serde::de::DeserializeOwned,
{
    let v = Value::deserialize(d)?;
    Ok(serde_json::from_value(v).ok())
}

/// A text field: a string, or a number or boolean written out; else nothing.
fn loose_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::String(s) => Some(s),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    })
}

/// A flag: a boolean, or `"true"`/`"false"`, 1/0; else nothing.
fn loose_bool<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::Bool(b) => Some(b),
        Value::String(s) if s.eq_ignore_ascii_case("true") => Some(true),
        Value::String(s) if s.eq_ignore_ascii_case("false") => Some(false),
        Value::Number(n) => n.as_i64().map(|n| n != 0),
        _ => None,
    })
}

/// A list: each element that reads as `T`; anything else is an empty list.
fn lenient_list<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: serde::de::DeserializeOwned,
{
    Ok(match Value::deserialize(d)? {
        Value::Array(items) => items
            .into_iter()
            .filter_map(|v| serde_json::from_value(v).ok())
            .collect(),
        _ => Vec::new(),
    })
}

/// An id: a string or a number, or an object carrying `_id` (or `id`). The
/// docs type ids as `ID`; some payloads embed the whole object instead.
pub(crate) fn loose_id<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(id_of(&Value::deserialize(d)?))
}

/// The id in a JSON value (see [`loose_id`]).
pub(crate) fn id_of(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Object(map) => map.get("_id").or_else(|| map.get("id")).and_then(id_of),
        _ => None,
    }
}

/// Someone: a message's sender (FACT: senderData; fields ASSUMED).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Person {
    /// Their id.
    #[serde(rename = "_id", deserialize_with = "loose_id")]
    pub id: Option<String>,
    /// Display name.
    #[serde(deserialize_with = "loose_string")]
    pub name: Option<String>,
    /// Given name.
    #[serde(deserialize_with = "loose_string")]
    pub first_name: Option<String>,
    /// Family name.
    #[serde(deserialize_with = "loose_string")]
    pub last_name: Option<String>,
    /// Preferred language.
    #[serde(alias = "locale", deserialize_with = "loose_string")]
    pub language: Option<String>,
    /// For agents, their CustomerPerson type (JR_AGENT, PERSON, ADMIN, OWNER, ROBOT).
    #[serde(rename = "type", deserialize_with = "loose_string")]
    pub kind: Option<String>,
}

/// An attachment (fields ASSUMED).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, rename_all = "camelCase")]
pub struct MediaItem {
    /// Where it is.
    #[serde(deserialize_with = "loose_string")]
    pub url: Option<String>,
    /// Its kind (`image`, `document`...).
    #[serde(rename = "type", deserialize_with = "loose_string")]
    pub kind: Option<String>,
    /// A file name.
    #[serde(deserialize_with = "loose_string")]
    pub name: Option<String>,
    /// A caption.
    #[serde(deserialize_with = "loose_string")]
    pub caption: Option<String>,
}

/// The part of a list message flowbot reads back: the picked row (ASSUMED).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ListMessageWire {
    /// The row the customer picked.
    #[serde(deserialize_with = "loose_id")]
    pub selected_row_id: Option<String>,
}

/// A list reply as some channels report it (ASSUMED: not in Qpien's field list).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default)]
pub struct ListReply {
    /// The row's id.
    #[serde(deserialize_with = "loose_id")]
    pub id: Option<String>,
    /// The row's title.
    #[serde(deserialize_with = "loose_string")]
    pub title: Option<String>,
}

/// A message (FACT: the field names of the Messages module). Only the fields
/// flowbot uses are read; each may be missing, `null` or of another type.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ExternalMessage {
    /// The message id.
    #[serde(rename = "_id", deserialize_with = "loose_id")]
    pub id: Option<String>,
    /// The conversation (FACT: an ID; an embedded object is read too).
    #[serde(deserialize_with = "loose_id", alias = "conversationId")]
    pub conversation: Option<String>,
    /// `text`, `image`, `email`...
    #[serde(deserialize_with = "loose_string")]
    pub message_type: Option<String>,
    /// `WhatsApp`, `Email`...
    #[serde(deserialize_with = "loose_string")]
    pub channel_type: Option<String>,
    /// Who sent it (mapped by `qpien.sender_types`).
    #[serde(deserialize_with = "loose_string")]
    pub sender_type: Option<String>,
    /// The sender.
    #[serde(deserialize_with = "lenient")]
    pub sender: Option<Person>,
    /// The text.
    #[serde(deserialize_with = "loose_string")]
    pub content: Option<String>,
    /// The text as HTML (e-mail).
    #[serde(deserialize_with = "loose_string")]
    pub content_html: Option<String>,
    /// An e-mail's subject.
    #[serde(deserialize_with = "loose_string")]
    pub subject: Option<String>,
    /// Attachments.
    #[serde(deserialize_with = "lenient_list")]
    pub media: Vec<MediaItem>,
    /// The quick-reply button tapped.
    #[serde(deserialize_with = "loose_id")]
    pub flow_bot_quick_reply_response_id: Option<String>,
    /// A list message (on a reply: the row picked).
    #[serde(deserialize_with = "lenient")]
    pub list_message: Option<ListMessageWire>,
    /// A list reply (ASSUMED).
    #[serde(deserialize_with = "lenient")]
    pub list_reply: Option<ListReply>,
    /// The client-side id of a created message.
    #[serde(deserialize_with = "loose_string")]
    pub front_msg_id: Option<String>,
    /// When it was created.
    pub created_at: Option<Value>,
    /// Set on comments (posts, ads) rather than direct messages.
    pub comment_data: Option<Value>,
    /// Whether the conversation is a group or channel, when a payload says so
    /// beside the message (ASSUMED).
    #[serde(deserialize_with = "loose_bool")]
    pub is_group_or_channel: Option<bool>,
}

/// A tag of a conversation (FACT: Tag objects; fields ASSUMED).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default)]
pub struct TagRef {
    /// Its id.
    #[serde(rename = "_id", deserialize_with = "loose_id")]
    pub id: Option<String>,
    /// Its name.
    #[serde(deserialize_with = "loose_string")]
    pub name: Option<String>,
}

/// A channel of a conversation (FACT: ChannelTypeOutput objects; fields ASSUMED).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default)]
pub struct ChannelRef {
    /// Its id.
    #[serde(rename = "_id", deserialize_with = "loose_id")]
    pub id: Option<String>,
    /// Its name.
    #[serde(deserialize_with = "loose_string")]
    pub name: Option<String>,
    /// Its type (`WhatsApp`, ...).
    #[serde(rename = "type", deserialize_with = "loose_string")]
    pub kind: Option<String>,
}

/// A conversation (FACT: the field names and types of the Conversations module;
/// read leniently, a field of another shape counts as missing).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ExternalConversation {
    /// The conversation id.
    #[serde(rename = "_id", deserialize_with = "loose_id")]
    pub id: Option<String>,
    /// The Qpien account it belongs to (FACT: an ID).
    #[serde(deserialize_with = "loose_id")]
    pub customer: Option<String>,
    /// The person who joined (FACT: an ID).
    #[serde(deserialize_with = "loose_id")]
    pub joined_person: Option<String>,
    /// The agent currently joined (FACT: an ID, "currently joined").
    #[serde(rename = "joinedCPerson", deserialize_with = "loose_id")]
    pub joined_c_person: Option<String>,
    /// Its status (values not published).
    #[serde(deserialize_with = "loose_string")]
    pub status: Option<String>,
    /// A group or channel conversation.
    #[serde(deserialize_with = "loose_bool")]
    pub is_group_or_channel: Option<bool>,
    /// The channel of the last message received (FACT: an ID).
    #[serde(deserialize_with = "loose_id")]
    pub last_received_message_channel: Option<String>,
    /// Its channels.
    #[serde(deserialize_with = "lenient_list")]
    pub channels: Vec<ChannelRef>,
    /// Its tags.
    #[serde(deserialize_with = "lenient_list")]
    pub tags: Vec<TagRef>,
    /// Its last message (FACT: LastMessageType, fields ASSUMED).
    #[serde(deserialize_with = "lenient")]
    pub last_message: Option<Box<ExternalMessage>>,
}

impl ExternalConversation {
    /// Whether a person is on the conversation now, as far as it says
    /// (`joinedCPerson`, else `joinedPerson`).
    pub fn has_agent(&self) -> bool {
        self.joined_c_person.is_some() || self.joined_person.is_some()
    }
}

/// A connected channel (ASSUMED fields).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ConnectedPlatform {
    /// Its id.
    #[serde(rename = "_id", deserialize_with = "loose_id")]
    pub id: Option<String>,
    /// Its name.
    #[serde(deserialize_with = "loose_string")]
    pub name: Option<String>,
    /// Its channel type.
    #[serde(deserialize_with = "loose_string")]
    pub channel_type: Option<String>,
    /// `ACTIVE`...
    #[serde(deserialize_with = "loose_string")]
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
    #[serde(deserialize_with = "loose_string")]
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
    /// A WhatsApp template message (ASSUMED field, sent with
    /// `sendWhatsappTemplateMessage`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<TemplateMessageInput>,
}

/// A template message's input (ASSUMED shape).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateMessageInput {
    /// The approved template's name.
    pub name: String,
    /// Its language code.
    pub language: String,
    /// The placeholders' values.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub params: Vec<String>,
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
