//! Rendering compiled messages for one channel.
//!
//! The flow says what to offer; the channel decides how it can be shown. A channel
//! that shows fewer buttons or rows than a message has (or none, like e-mail) gets
//! the numbered text form (`1. My orders`), and the options are remembered as
//! numbered so that "1" counts as that choice. With `settings.overflow: adapt`, too
//! many quick replies become a list message where the channel has lists. A message
//! whose template fails to render (an error, or more work or output than the
//! flow's limits allow) is logged, counted as the turn's error and replaced by
//! `settings.error_message`: a template's source never reaches a customer.

use minijinja::Value;
use std::fmt::Write;

use super::session::{Offered, OptionKind};
use crate::flow::{normalize, ChoiceNode, Flow, LText, ListNode, MsgNode, TemplateNode, Tpl};
use crate::message::{
    Channel, Choice, InfoButton, ListMessage, ListSection, Media, Outgoing, TemplateMessage,
};

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
    /// Renders a visible text; a failed render gives the error message (its
    /// source is never shown to the customer).
    pub(crate) fn tpl(&mut self, t: &Tpl, scope: &Value) -> String {
        match self.value(t, scope) {
            Some(s) => s,
            None => self.error_message(),
        }
    }

    /// Renders a value (a `set:`, an action's argument); `None` if it failed,
    /// which is logged and recorded as the turn's error.
    pub(crate) fn value(&mut self, t: &Tpl, scope: &Value) -> Option<String> {
        match self.flow.templates.render(t, scope) {
            Ok(s) => Some(s.into_owned()),
            Err(e) => {
                let error = crate::text::shorten(&e.to_string(), 300);
                tracing::warn!(%error, "template failed; sending the error message instead");
                self.errors.push(error);
                None
            }
        }
    }

    /// `settings.error_message` (or the default one), for a message whose
    /// template failed.
    fn error_message(&mut self) -> String {
        self.flow
            .settings
            .error_message
            .as_ref()
            .map(|t| {
                t.pick(
                    self.language,
                    self.flow.settings.default_language.as_deref(),
                )
            })
            .and_then(|t| self.flow.templates.render(t, &Value::UNDEFINED).ok())
            .map_or_else(
                || super::DEFAULT_ERROR_MESSAGE.to_owned(),
                |s| s.into_owned(),
            )
    }

    /// Replaces a message any of whose templates failed by the error message,
    /// offering nothing.
    fn guarded(&mut self, render: impl FnOnce(&mut Self) -> Rendered) -> Rendered {
        let before = self.errors.len();
        let r = render(self);
        if self.errors.len() == before {
            return r;
        }
        Rendered {
            message: Outgoing::text(self.error_message()),
            offered: Vec::new(),
            numbered: false,
        }
    }

    pub(crate) fn text(&mut self, t: &LText, scope: &Value) -> String {
        let default = self.flow.settings.default_language.as_deref();
        let tpl = t.pick(self.language, default);
        self.tpl(tpl, scope)
    }

    /// Renders choices; each is also added to `offered` as `kind`, with its
    /// title normalized (when the flow loaded, for a plain title).
    fn choices(
        &mut self,
        cs: &[ChoiceNode],
        scope: &Value,
        kind: OptionKind,
        offered: &mut Vec<Offered>,
    ) -> Vec<Choice> {
        let default = self.flow.settings.default_language.as_deref();
        cs.iter()
            .map(|c| {
                let at = c.title.pick_index(self.language, default);
                let title = self.tpl(&c.title.0[at].1, scope);
                let normalized = match c.normalized.get(at) {
                    Some(Some(n)) => n.clone(),
                    _ => normalize(&title).into(),
                };
                offered.push(Offered {
                    kind,
                    id: c.id.clone(),
                    title: normalized,
                    save: c
                        .save
                        .as_ref()
                        .map(|v| (v.as_ref().into(), title.as_str().into())),
                });
                Choice {
                    id: c.id.to_string(),
                    title,
                    description: c.description.as_ref().map(|d| self.text(d, scope)),
                }
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
        self.guarded(|r| r.text_message_unguarded(text, quick_replies, buttons, scope))
    }

    fn text_message_unguarded(
        &mut self,
        text: &LText,
        quick_replies: &[ChoiceNode],
        buttons: &[crate::flow::ButtonNode],
        scope: &Value,
    ) -> Rendered {
        let caps = self.channel.capabilities();
        let settings = &self.flow.settings;
        let mut text = self.text(text, scope);
        let mut offered = Vec::new();
        let qr = self.choices(quick_replies, scope, OptionKind::Button, &mut offered);
        let mut out = Rendered {
            message: Outgoing::default(),
            offered,
            numbered: false,
        };
        if !qr.is_empty() && qr.len() > caps.max_quick_replies {
            if settings.overflow_adapt && caps.max_list_rows >= qr.len() {
                out.message.list = Some(ListMessage {
                    header: None,
                    body: text,
                    footer: None,
                    button: match &settings.overflow_button {
                        Some(b) => self.text(b, scope),
                        None => options_in(self.language).into(),
                    },
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
        let mut offered = Vec::new();
        let sections: Vec<ListSection> = l
            .sections
            .iter()
            .map(|(t, rows)| ListSection {
                title: t.as_ref().map(|t| self.text(t, scope)),
                rows: self.choices(rows, scope, OptionKind::Row, &mut offered),
            })
            .collect();
        if offered.len() <= caps.max_list_rows || !self.flow.settings.numbered_fallback {
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

    /// Renders a WhatsApp template message: its placeholders' values (one
    /// that fails to render is sent empty, and recorded as the turn's error).
    pub(crate) fn template(&mut self, t: &TemplateNode, scope: &Value) -> Outgoing {
        let params = t
            .params
            .iter()
            .map(|p| self.value(p, scope).unwrap_or_default())
            .collect();
        Outgoing {
            template: Some(TemplateMessage {
                name: t.name.to_string(),
                language: t.language.as_deref().unwrap_or("en").to_owned(),
                params,
            }),
            ..Default::default()
        }
    }

    /// Renders one message of a state; one whose templates fail becomes the
    /// error message.
    pub(crate) fn message(&mut self, m: &MsgNode, scope: &Value) -> Rendered {
        self.guarded(|r| r.message_unguarded(m, scope))
    }

    fn message_unguarded(&mut self, m: &MsgNode, scope: &Value) -> Rendered {
        match m {
            MsgNode::Text {
                text,
                quick_replies,
                buttons,
            } => self.text_message_unguarded(text, quick_replies, buttons, scope),
            MsgNode::List(l) => self.list(l, scope),
            MsgNode::Template(t) => Rendered {
                message: self.template(t, scope),
                offered: Vec::new(),
                numbered: false,
            },
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

/// "Options" in the common languages (by primary subtag), for the list
/// button `overflow: adapt` makes; `settings.overflow_button` sets another.
fn options_in(language: Option<&str>) -> &'static str {
    let primary = language
        .and_then(|l| l.split(['-', '_']).next())
        .unwrap_or("en")
        .to_ascii_lowercase();
    match primary.as_str() {
        "tr" => "Seçenekler",
        "de" => "Optionen",
        "es" => "Opciones",
        "pt" => "Opções",
        "it" => "Opzioni",
        "nl" => "Opties",
        "ru" => "Варианты",
        "ar" => "الخيارات",
        "az" => "Seçimlər",
        _ => "Options",
    }
}

fn numbered_lines(text: &mut String, options: &[Choice]) {
    text.push('\n');
    for (i, c) in options.iter().enumerate() {
        let _ = write!(text, "\n{}. {}", i + 1, c.title);
    }
}
