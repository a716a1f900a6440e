//! Rendering compiled messages for one channel.
//!
//! The flow says what to offer; the channel decides how it can be shown. A channel
//! that shows fewer buttons or rows than a message has (or none, like e-mail) gets
//! the numbered text form (`1. My orders`), and the options are remembered as
//! numbered so that "1" counts as that choice. With `settings.overflow: adapt`, too
//! many quick replies become a list message where the channel has lists. Templates
//! that fail to render are logged and rendered as their source text, so the
//! customer still gets an answer.

use minijinja::Value;
use std::fmt::Write;

use super::session::{Offered, OptionKind};
use crate::flow::{normalize, ChoiceNode, Flow, LText, ListNode, MsgNode, Tpl};
use crate::message::{Channel, Choice, InfoButton, ListMessage, ListSection, Media, Outgoing};

/// Everything rendering needs for one turn.
pub(crate) struct Renderer<'a> {
    pub(crate) flow: &'a Flow,
    pub(crate) channel: Channel,
    pub(crate) language: Option<&'a str>,
    pub(crate) errors: &'a mut Vec<String>,
}

/// A rendered message and the options it offered.
pub(crate) struct Rendered {
    pub(crate) message: Outgoing,
    pub(crate) offered: Vec<Offered>,
    pub(crate) numbered: bool,
}

impl Renderer<'_> {
    pub(crate) fn tpl(&mut self, t: &Tpl, scope: &Value) -> String {
        match self.flow.templates.render(t, scope) {
            Ok(s) => s.into_owned(),
            Err(e) => {
                tracing::warn!(error = %e, "template failed; sending its source");
                self.errors.push(e.to_string());
                t.source().to_owned()
            }
        }
    }

    pub(crate) fn text(&mut self, t: &LText, scope: &Value) -> String {
        let default = self.flow.settings.default_language.as_deref();
        let tpl = t.pick(self.language, default);
        self.tpl(tpl, scope)
    }

    fn choices(&mut self, cs: &[ChoiceNode], scope: &Value) -> Vec<Choice> {
        cs.iter()
            .map(|c| Choice {
                id: c.id.to_string(),
                title: self.text(&c.title, scope),
                description: c.description.as_ref().map(|d| self.text(d, scope)),
            })
            .collect()
    }

    /// Renders a text with quick replies (used by `say` and by `ask`).
    pub(crate) fn text_message(
        &mut self,
        text: &LText,
        quick_replies: &[ChoiceNode],
        buttons: &[crate::flow::ButtonNode],
        scope: &Value,
    ) -> Rendered {
        let caps = self.channel.capabilities();
        let settings = &self.flow.settings;
        let mut text = self.text(text, scope);
        let qr = self.choices(quick_replies, scope);
        let mut out = Rendered {
            message: Outgoing::default(),
            offered: offered(&qr, OptionKind::Button),
            numbered: false,
        };
        if !qr.is_empty() && qr.len() > caps.max_quick_replies {
            if settings.overflow_adapt && caps.max_list_rows >= qr.len() {
                out.message.list = Some(ListMessage {
                    header: None,
                    body: text,
                    footer: None,
                    button: "Options".into(),
                    sections: vec![ListSection {
                        title: None,
                        rows: qr,
                    }],
                });
                return out;
            }
            if settings.numbered_fallback {
                numbered_lines(&mut text, &qr);
                out.numbered = true;
            }
        } else {
            out.message.quick_replies = qr;
        }
        for b in buttons {
            let title = self.text(&b.title, scope);
            let value = self.tpl(&b.value, scope);
            if caps.informative_buttons {
                out.message.buttons.push(InfoButton {
                    kind: b.kind,
                    title,
                    value,
                });
            } else {
                let _ = write!(text, "\n{title}: {value}");
            }
        }
        out.message.text = text;
        out
    }

    pub(crate) fn list(&mut self, l: &ListNode, scope: &Value) -> Rendered {
        let caps = self.channel.capabilities();
        let header = l.header.as_ref().map(|h| self.text(h, scope));
        let body = self.text(&l.body, scope);
        let footer = l.footer.as_ref().map(|f| self.text(f, scope));
        let button = self.text(&l.button, scope);
        let sections: Vec<ListSection> = l
            .sections
            .iter()
            .map(|(t, rows)| ListSection {
                title: t.as_ref().map(|t| self.text(t, scope)),
                rows: self.choices(rows, scope),
            })
            .collect();
        let all: Vec<Choice> = sections
            .iter()
            .flat_map(|s| s.rows.iter().cloned())
            .collect();
        let offered = offered(&all, OptionKind::Row);
        if all.len() <= caps.max_list_rows || !self.flow.settings.numbered_fallback {
            return Rendered {
                message: Outgoing {
                    list: Some(ListMessage {
                        header,
                        body,
                        footer,
                        button,
                        sections,
                    }),
                    ..Default::default()
                },
                offered,
                numbered: false,
            };
        }
        // Numbered form: header, body, each section's title and its rows, footer.
        let mut text = String::new();
        if let Some(h) = header {
            text.push_str(&h);
            text.push('\n');
        }
        text.push_str(&body);
        text.push('\n');
        let mut n = 0;
        for s in &sections {
            if let Some(t) = &s.title {
                let _ = write!(text, "\n{t}");
            }
            for r in &s.rows {
                n += 1;
                let _ = write!(text, "\n{n}. {}", r.title);
                if let Some(d) = &r.description {
                    let _ = write!(text, " - {d}");
                }
            }
        }
        if let Some(f) = footer {
            let _ = write!(text, "\n\n{f}");
        }
        Rendered {
            message: Outgoing::text(text),
            offered,
            numbered: true,
        }
    }

    pub(crate) fn message(&mut self, m: &MsgNode, scope: &Value) -> Rendered {
        match m {
            MsgNode::Text {
                text,
                quick_replies,
                buttons,
            } => self.text_message(text, quick_replies, buttons, scope),
            MsgNode::List(l) => self.list(l, scope),
            MsgNode::Media { url, kind, caption } => {
                let url = self.tpl(url, scope);
                let caption = caption.as_ref().map(|c| self.text(c, scope));
                Rendered {
                    message: Outgoing {
                        media: Some(Media {
                            url,
                            kind: *kind,
                            caption,
                        }),
                        ..Default::default()
                    },
                    offered: Vec::new(),
                    numbered: false,
                }
            }
        }
    }
}

fn numbered_lines(text: &mut String, options: &[Choice]) {
    text.push('\n');
    for (i, c) in options.iter().enumerate() {
        let _ = write!(text, "\n{}. {}", i + 1, c.title);
    }
}

fn offered(cs: &[Choice], kind: OptionKind) -> Vec<Offered> {
    cs.iter()
        .map(|c| Offered {
            kind,
            id: c.id.as_str().into(),
            title: normalize(&c.title).into(),
        })
        .collect()
}
