//! Between flowbot's channel-neutral messages and Qpien's wire types.
//!
//! Outgoing: [`plan_replies`] turns one turn's [`Outgoing`] messages into the
//! fewest `createMessage` inputs the channel allows (text that precedes an
//! interactive message is folded into it; an e-mail turn is one e-mail), each
//! with a deterministic `frontMsgId`. Incoming: [`to_incoming`] reads an
//! [`ExternalMessage`] as an [`Incoming`] message and [`super::senders`] says who
//! sent it ([`super::ingest`] answers only customers: a bot, an agent or the
//! system is never answered).

use serde::{Deserialize, Serialize};

use super::config::{QpienConfig, WhatsappOperation};
use super::documents::Operation;
use super::types::*;
use crate::message::{ButtonKind, Channel, Contact, Incoming, MediaKind, Outgoing};

/// One message ready for Qpien: the mutation and its input. This is what the
/// outbox stores, so a restart resends exactly the same thing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboundMessage {
    /// `createMessage` or `createMessageByWhatsapp`.
    pub operation: Operation,
    /// The input, `frontMsgId` included.
    pub input: CreateMessageInput,
}

/// The idempotency key of the `index`-th message sent because of `cause` (the
/// inbound message id, or a timer's key): the same cause and position always
/// give the same key, so a resend after a retry or a restart is recognised.
///
/// ```
/// assert_eq!(flowbot::internals::qpien::front_msg_id("flowbot", "m-41", 2), "flowbot:m-41:2");
/// ```
pub fn front_msg_id(prefix: &str, cause: &str, index: usize) -> String {
    format!("{prefix}:{cause}:{index}")
}

const FOLD_SEPARATOR: &str = "\n\n";

fn is_plain_text(m: &Outgoing) -> bool {
    m.quick_replies.is_empty()
        && m.buttons.is_empty()
        && m.list.is_none()
        && m.media.is_none()
        && m.template.is_none()
}

/// The `createMessage` inputs for one turn's replies in `conversation`, in order.
///
/// `cause` identifies what the replies answer (the inbound message id); with the
/// position it makes each `frontMsgId`.
pub fn plan_replies(
    config: &QpienConfig,
    conversation: &str,
    channel: Channel,
    cause: &str,
    messages: &[Outgoing],
) -> Vec<OutboundMessage> {
    let operation = match (channel, config.whatsapp_operation) {
        (Channel::WhatsApp, WhatsappOperation::CreateMessageByWhatsapp) => {
            Operation::CreateMessageByWhatsapp
        }
        _ => Operation::CreateMessage,
    };
    let limit = channel.capabilities().max_body;
    let mut planner = Planner {
        config,
        conversation,
        cause,
        operation,
        out: Vec::with_capacity(messages.len()),
    };
    let mut pending: Vec<&str> = Vec::new();
    for m in messages {
        if let Some(t) = &m.template {
            planner.flush(&mut pending, channel);
            let mut input = planner.input("template", None);
            input.template = Some(TemplateMessageInput {
                name: t.name.clone(),
                language: t.language.clone(),
                params: t.params.clone(),
            });
            planner.out.push(OutboundMessage {
                operation: Operation::SendWhatsappTemplateMessage,
                input,
            });
            continue;
        }
        if is_plain_text(m) {
            if !m.text.is_empty() {
                pending.push(&m.text);
            }
            continue;
        }
        if m.media.is_some() {
            planner.flush(&mut pending, channel);
            planner.push(m, None);
            continue;
        }
        let own = m.list.as_ref().map_or(m.text.as_str(), |l| l.body.as_str());
        let folded_len = pending
            .iter()
            .map(|t| t.chars().count() + FOLD_SEPARATOR.len())
            .sum::<usize>()
            + own.chars().count();
        if !pending.is_empty() && folded_len <= limit {
            pending.push(own);
            let folded = pending.join(FOLD_SEPARATOR);
            pending.clear();
            planner.push(m, Some(folded));
        } else {
            planner.flush(&mut pending, channel);
            planner.push(m, None);
        }
    }
    planner.flush(&mut pending, channel);
    planner.out
}

struct Planner<'a> {
    config: &'a QpienConfig,
    conversation: &'a str,
    cause: &'a str,
    operation: Operation,
    out: Vec<OutboundMessage>,
}

impl Planner<'_> {
    fn input(&self, message_type: &str, content: Option<String>) -> CreateMessageInput {
        CreateMessageInput {
            conversation_id: self.conversation.to_owned(),
            content,
            message_type: message_type.to_owned(),
            front_msg_id: front_msg_id(
                &self.config.front_msg_id_prefix,
                self.cause,
                self.out.len(),
            ),
            media: None,
            flow_bot_quick_reply: None,
            flow_bot_quick_reply_buttons_required: None,
            list_message: None,
            informative_buttons: None,
            template: None,
        }
    }

    /// Sends texts waiting to be folded: one message each, or all in one on
    /// e-mail (one e-mail per turn).
    fn flush(&mut self, pending: &mut Vec<&str>, channel: Channel) {
        if pending.is_empty() {
            return;
        }
        if channel == Channel::Email {
            let text = pending.join(FOLD_SEPARATOR);
            let input = self.input("text", Some(text));
            self.out.push(OutboundMessage {
                operation: self.operation,
                input,
            });
        } else {
            for text in pending.iter() {
                let input = self.input("text", Some((*text).to_owned()));
                self.out.push(OutboundMessage {
                    operation: self.operation,
                    input,
                });
            }
        }
        pending.clear();
    }

    /// One rich message; `text` replaces its own text when texts were folded in.
    fn push(&mut self, m: &Outgoing, text: Option<String>) {
        let mut input = if let Some(media) = &m.media {
            let caption = media.caption.clone().or_else(|| nonempty(&m.text));
            let mut input = self.input(media.kind.as_str(), caption.clone());
            input.media = Some(vec![MediaInput {
                url: media.url.clone(),
                kind: media.kind.as_str().to_owned(),
                caption,
            }]);
            input
        } else if let Some(list) = &m.list {
            let body = text.unwrap_or_else(|| list.body.clone());
            let mut input = self.input("text", Some(body.clone()));
            input.list_message = Some(ListMessageInput {
                header: list.header.clone(),
                body,
                footer: list.footer.clone(),
                button_text: list.button.clone(),
                sections: list
                    .sections
                    .iter()
                    .map(|s| ListSectionInput {
                        title: s.title.clone(),
                        rows: s
                            .rows
                            .iter()
                            .map(|r| ListRowInput {
                                id: r.id.clone(),
                                title: r.title.clone(),
                                description: r.description.clone(),
                            })
                            .collect(),
                    })
                    .collect(),
            });
            input
        } else {
            self.input("text", text.or_else(|| nonempty(&m.text)))
        };
        if !m.quick_replies.is_empty() {
            input.flow_bot_quick_reply = Some(
                m.quick_replies
                    .iter()
                    .map(|c| QuickReplyInput {
                        id: c.id.clone(),
                        title: c.title.clone(),
                    })
                    .collect(),
            );
            input.flow_bot_quick_reply_buttons_required = Some(true);
        }
        if !m.buttons.is_empty() {
            input.informative_buttons = Some(InformativeButtonsInput {
                buttons: m
                    .buttons
                    .iter()
                    .map(|b| InformativeButtonInput {
                        kind: match b.kind {
                            ButtonKind::Url => "URL",
                            ButtonKind::Phone => "PHONE",
                        }
                        .to_owned(),
                        title: b.title.clone(),
                        value: b.value.clone(),
                    })
                    .collect(),
            });
        }
        self.out.push(OutboundMessage {
            operation: self.operation,
            input,
        });
    }
}

fn nonempty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_owned())
}

/// The flowbot channel of a Qpien `channelType`. Channels flowbot does not know
/// are read as e-mail-like (text only), whose numbered options work anywhere.
pub fn channel_of(channel_type: Option<&str>) -> Channel {
    let Some(name) = channel_type else {
        return Channel::WhatsApp;
    };
    let lower = name.to_ascii_lowercase();
    match lower.as_str() {
        s if s.starts_with("whatsapp") => Channel::WhatsApp,
        "instagram" | "facebook" | "messenger" => Channel::Instagram,
        "livechat" | "live_chat" | "webchat" | "web" | "chat" => Channel::LiveChat,
        _ => Channel::Email,
    }
}

/// Plain text from HTML: tags dropped, common entities decoded.
fn html_to_text(html: &str) -> String {
    let mut out = String::with_capacity(html.len());
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => in_tag = false,
            _ if !in_tag => out.push(c),
            _ => {}
        }
    }
    out.replace("&nbsp;", " ")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&amp;", "&")
        .trim()
        .to_owned()
}

/// `msg` as flowbot's [`Incoming`], whoever sent it.
pub fn to_incoming(msg: &ExternalMessage) -> Incoming {
    let nonempty = |s: &Option<String>| s.as_ref().filter(|s| !s.is_empty()).cloned();
    let mut text = nonempty(&msg.content)
        .or_else(|| msg.content_html.as_deref().map(html_to_text))
        .unwrap_or_default();
    let list = msg
        .list_message
        .as_ref()
        .and_then(|l| nonempty(&l.selected_row_id))
        .or_else(|| msg.list_reply.as_ref().and_then(|r| nonempty(&r.id)));
    if text.is_empty() {
        if let Some(title) = msg.list_reply.as_ref().and_then(|r| nonempty(&r.title)) {
            text = title;
        }
    }
    let media = msg
        .media
        .first()
        .map(|m| {
            m.kind
                .as_deref()
                .or(msg.message_type.as_deref())
                .and_then(MediaKind::parse)
                .unwrap_or(MediaKind::Document)
        })
        .or_else(|| msg.message_type.as_deref().and_then(MediaKind::parse));
    let sender = msg.sender.clone().unwrap_or_default();
    let (first_name, last_name) = match (sender.first_name, sender.last_name, sender.name) {
        (None, None, Some(name)) => match name.split_once(' ') {
            Some((first, last)) => (Some(first.to_owned()), Some(last.to_owned())),
            None => (Some(name), None),
        },
        (first, last, _) => (first, last),
    };
    Incoming {
        id: msg.id.clone(),
        text,
        button: nonempty(&msg.flow_bot_quick_reply_response_id),
        list,
        media,
        channel: channel_of(msg.channel_type.as_deref()),
        contact: Contact {
            id: sender.id,
            first_name,
            last_name,
            language: sender.language,
        },
        test: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Choice, Media};

    fn buttons(text: &str) -> Outgoing {
        Outgoing {
            text: text.into(),
            quick_replies: vec![Choice {
                id: "a".into(),
                title: "A".into(),
                description: None,
            }],
            ..Outgoing::default()
        }
    }

    fn contents(plan: &[OutboundMessage]) -> Vec<&str> {
        plan.iter()
            .map(|m| m.input.content.as_deref().unwrap_or(""))
            .collect()
    }

    #[test]
    fn texts_fold_into_the_next_interactive_message_only() {
        let config = QpienConfig::default();
        let turn = [
            Outgoing::text("one"),
            Outgoing::text("two"),
            buttons("pick"),
            Outgoing::text("after"),
        ];
        let plan = plan_replies(&config, "c", Channel::WhatsApp, "m", &turn);
        assert_eq!(contents(&plan), ["one\n\ntwo\n\npick", "after"]);
        let ids: Vec<&str> = plan.iter().map(|m| m.input.front_msg_id.as_str()).collect();
        assert_eq!(ids, ["flowbot:m:0", "flowbot:m:1"]);
        // The default is `createMessage`, the one message mutation the Scopes page lists.
        assert!(plan.iter().all(|m| m.operation == Operation::CreateMessage));
        let config = QpienConfig {
            whatsapp_operation: WhatsappOperation::CreateMessageByWhatsapp,
            ..config
        };
        let plan = plan_replies(&config, "c", Channel::WhatsApp, "m", &turn);
        assert!(plan
            .iter()
            .all(|m| m.operation == Operation::CreateMessageByWhatsapp));
    }

    #[test]
    fn text_too_long_to_fold_goes_alone() {
        let long = "x".repeat(1020);
        let turn = [Outgoing::text(long.clone()), buttons("pick")];
        let plan = plan_replies(&QpienConfig::default(), "c", Channel::WhatsApp, "m", &turn);
        assert_eq!(contents(&plan), [long.as_str(), "pick"]);
        // Live chat takes longer texts.
        let plan = plan_replies(&QpienConfig::default(), "c", Channel::LiveChat, "m", &turn);
        assert_eq!(plan.len(), 1);
    }

    #[test]
    fn media_is_never_folded_and_keeps_the_order() {
        let photo = Outgoing {
            media: Some(Media {
                url: "https://x/p.jpg".into(),
                kind: MediaKind::Image,
                caption: None,
            }),
            ..Outgoing::default()
        };
        let turn = [Outgoing::text("look"), photo, buttons("ok?")];
        let plan = plan_replies(&QpienConfig::default(), "c", Channel::LiveChat, "m", &turn);
        assert_eq!(contents(&plan), ["look", "", "ok?"]);
        assert_eq!(plan[1].input.message_type, "image");
        assert_eq!(plan[0].operation, Operation::CreateMessage);
    }

    #[test]
    fn the_whatsapp_mutation_is_configurable() {
        let config = QpienConfig {
            whatsapp_operation: WhatsappOperation::CreateMessage,
            ..QpienConfig::default()
        };
        let plan = plan_replies(&config, "c", Channel::WhatsApp, "m", &[Outgoing::text("x")]);
        assert_eq!(plan[0].operation, Operation::CreateMessage);
    }

    #[test]
    fn unknown_channels_are_read_as_text_only() {
        assert_eq!(channel_of(Some("WhatsAppBusiness")), Channel::WhatsApp);
        assert_eq!(channel_of(Some("Facebook")), Channel::Instagram);
        assert_eq!(channel_of(Some("Telegram")), Channel::Email);
        assert_eq!(channel_of(Some("LiveChat")), Channel::LiveChat);
    }
}
