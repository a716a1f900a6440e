//! Messages: texts in every language, templates, quick replies, lists,
//! buttons, media and WhatsApp templates, compiled once.

use super::*;

impl Compiler<'_> {
    pub(super) fn template(&mut self, r: &mut Reporter<'_>, path: &str, src: &str) -> Option<Tpl> {
        if !self.in_http && http::secrets_in(src).iter().any(Result::is_ok) {
            r.error(
                path,
                "a secret can only be used in an `http:` step's url, query, headers and json",
                Some("a secret is never shown to a customer nor kept in a variable".into()),
            );
            return None;
        }
        match self.templates.text(src) {
            Ok(t) => Some(t),
            Err(e) => {
                r.error(
                    path,
                    format!("invalid template: {e}"),
                    Some("templates use minijinja (Jinja2) syntax: {{ name }}".into()),
                );
                None
            }
        }
    }

    pub(super) fn ltext(&mut self, r: &mut Reporter<'_>, path: &str, t: &Text) -> Option<LText> {
        match t {
            Text::One(s) => Some(LText(vec![("".into(), self.template(r, path, s)?)])),
            Text::ByLanguage(m) => {
                if m.is_empty() {
                    r.error(path, "a text needs at least one language", None);
                    return None;
                }
                let mut out = Vec::new();
                for (lang, s) in m {
                    out.push((
                        lang.as_str().into(),
                        self.template(r, &join_key(path, lang), s)?,
                    ));
                }
                Some(LText(out))
            }
        }
    }

    pub(super) fn choices(
        &mut self,
        r: &mut Reporter<'_>,
        path: &str,
        cs: &[model::ChoiceDoc],
        save: Option<&Arc<str>>,
    ) -> Vec<ChoiceNode> {
        cs.iter()
            .enumerate()
            .filter_map(|(i, c)| {
                let p = join_index(path, i);
                let title = self.ltext(r, &join_key(&p, "title"), &c.title)?;
                Some(ChoiceNode {
                    id: c.id.as_str().into(),
                    normalized: title
                        .0
                        .iter()
                        .map(|(_, t)| match t {
                            Tpl::Static(s) => Some(super::normalize(s).into()),
                            _ => None,
                        })
                        .collect(),
                    title,
                    description: match &c.description {
                        Some(d) => Some(self.ltext(r, &join_key(&p, "description"), d)?),
                        None => None,
                    },
                    save: save.cloned(),
                })
            })
            .collect()
    }

    /// A `save:` of picks: a variable's name.
    fn pick_var(
        &mut self,
        r: &mut Reporter<'_>,
        path: &str,
        save: Option<&String>,
    ) -> Option<Arc<str>> {
        let name = save?;
        if !super::is_identifier(name) || name == "language" {
            r.error(
                path,
                format!(
                    "`{}` cannot be a variable's name",
                    crate::text::shorten(name, 60)
                ),
                Some("use letters, digits and `_`, starting with a letter (`reason`)".into()),
            );
            return None;
        }
        Some(name.as_str().into())
    }

    pub(super) fn say(
        &mut self,
        r: &mut Reporter<'_>,
        path: &str,
        say: &model::Say,
    ) -> Vec<MsgNode> {
        let single = say.0.len() == 1;
        let mut out = Vec::new();
        for (i, item) in say.0.iter().enumerate() {
            // `say: "text"` and `say: {text: ..}` have no index in their path.
            let p = if single && !is_seq(r, path) {
                path.to_owned()
            } else {
                join_index(path, i)
            };
            if let Some(m) = self.message(r, &p, item) {
                out.push(m);
            }
        }
        out
    }

    pub(super) fn message(
        &mut self,
        r: &mut Reporter<'_>,
        path: &str,
        item: &model::SayItem,
    ) -> Option<MsgNode> {
        let rich = match item {
            model::SayItem::Plain(t) => {
                return Some(MsgNode::Text {
                    text: self.ltext(r, path, t)?,
                    quick_replies: vec![],
                    buttons: vec![],
                })
            }
            model::SayItem::Rich(rich) => rich,
        };
        let p = |k: &str| join_key(path, k);
        let kinds = [
            rich.text.is_some() || rich.quick_replies.is_some() || rich.buttons.is_some(),
            rich.list.is_some(),
            rich.media.is_some(),
            rich.template.is_some(),
        ];
        match kinds.iter().filter(|k| **k).count() {
            0 => {
                r.error(
                    path,
                    "a message needs `text`, `list`, `media` or `template`",
                    None,
                );
                return None;
            }
            1 => {}
            _ => {
                r.error(
                    path,
                    "a message has one of `text`, `list`, `media` or `template`",
                    Some("split it into two messages".into()),
                );
                return None;
            }
        }
        if let Some(t) = &rich.template {
            return self
                .template_node(r, &p("template"), t)
                .map(MsgNode::Template);
        }
        if let (Some(_), Some(_)) = (&rich.save, &rich.list) {
            r.error(
                &p("save"),
                "a list keeps its pick with its own `save`",
                Some("move `save` into `list:`".into()),
            );
        }
        if let Some(list) = &rich.list {
            validate::check_list(r, &p("list"), list, self.adapt);
            let lp = p("list");
            let l = |k: &str| join_key(&lp, k);
            let save = self.pick_var(r, &l("save"), list.save.as_ref());
            let mut sections = Vec::new();
            for (si, s) in list.sections.iter().enumerate() {
                let sp = join_index(&l("sections"), si);
                let title = match &s.title {
                    Some(t) => Some(self.ltext(r, &join_key(&sp, "title"), t)?),
                    None => None,
                };
                sections.push((
                    title,
                    self.choices(r, &join_key(&sp, "rows"), &s.rows, save.as_ref()),
                ));
            }
            return Some(MsgNode::List(ListNode {
                header: match &list.header {
                    Some(h) => Some(self.ltext(r, &l("header"), h)?),
                    None => None,
                },
                body: self.ltext(r, &l("body"), &list.body)?,
                footer: match &list.footer {
                    Some(h) => Some(self.ltext(r, &l("footer"), h)?),
                    None => None,
                },
                button: self.ltext(r, &l("button"), &list.button)?,
                sections,
            }));
        }
        if let Some(m) = &rich.media {
            let mp = p("media");
            let Some(kind) = MediaKind::parse(&m.kind) else {
                r.error(
                    &join_key(&mp, "kind"),
                    format!("unknown media kind `{}`", m.kind),
                    Some("use image, video, audio or document".into()),
                );
                return None;
            };
            return Some(MsgNode::Media {
                url: self.template(r, &join_key(&mp, "url"), &m.url)?,
                kind,
                caption: match &m.caption {
                    Some(c) => Some(self.ltext(r, &join_key(&mp, "caption"), c)?),
                    None => None,
                },
            });
        }
        let Some(text) = &rich.text else {
            r.error(path, "quick replies and buttons need a `text`", None);
            return None;
        };
        validate::check_len(r, &p("text"), text, validate::limits::BODY, "the text");
        let text = self.ltext(r, &p("text"), text)?;
        let save = self.pick_var(r, &p("save"), rich.save.as_ref());
        if rich.save.is_some() && rich.quick_replies.is_none() {
            r.error(
                &p("save"),
                "`save` keeps which quick reply was picked: this message has none",
                Some("add `quick_replies`, or put `save` on the list".into()),
            );
        }
        let quick_replies = match &rich.quick_replies {
            Some(q) => {
                validate::check_quick_replies(r, &p("quick_replies"), q, self.adapt);
                self.choices(r, &p("quick_replies"), q, save.as_ref())
            }
            None => vec![],
        };
        let mut buttons = Vec::new();
        if let Some(bs) = &rich.buttons {
            validate::check_buttons(r, &p("buttons"), bs);
            if rich.quick_replies.is_some() {
                r.error(
                    &p("buttons"),
                    "a message has quick replies or informative buttons, not both",
                    Some("split it into two messages".into()),
                );
            }
            for (i, b) in bs.iter().enumerate() {
                let bp = join_index(&p("buttons"), i);
                let kind = match b.kind.to_ascii_lowercase().as_str() {
                    "url" => ButtonKind::Url,
                    "phone" => ButtonKind::Phone,
                    other => {
                        r.error(
                            &join_key(&bp, "type"),
                            format!("unknown button type `{other}`"),
                            Some("use `url` or `phone`".into()),
                        );
                        continue;
                    }
                };
                let (Some(title), Some(value)) = (
                    self.ltext(r, &join_key(&bp, "title"), &b.title),
                    self.template(r, &join_key(&bp, "value"), &b.value),
                ) else {
                    continue;
                };
                buttons.push(ButtonNode { kind, title, value });
            }
        }
        Some(MsgNode::Text {
            text,
            quick_replies,
            buttons,
        })
    }

    /// A WhatsApp template message, checked against the account's approved
    /// templates when they are known.
    pub(super) fn template_node(
        &mut self,
        r: &mut Reporter<'_>,
        path: &str,
        t: &model::TemplateDoc,
    ) -> Option<TemplateNode> {
        let p = |k: &str| join_key(path, k);
        if t.name.trim().is_empty() {
            r.error(&p("name"), "a template needs its approved `name`", None);
            return None;
        }
        let language: Option<Box<str>> = t
            .language
            .as_deref()
            .map(Into::into)
            .or_else(|| self.default_language.clone());
        let language = language.as_deref();
        if language.is_none() {
            r.error(
                path,
                format!("template `{}` needs a `language`", t.name),
                Some("add `language: en` (as approved), or set settings.default_language".into()),
            );
        }
        let params: Vec<Tpl> = t
            .params
            .iter()
            .enumerate()
            .filter_map(|(i, src)| self.template(r, &join_index(&p("params"), i), src))
            .collect();
        if let (Some(known), Some(language)) = (self.names.templates.as_deref(), language) {
            let named: Vec<&TemplateInfo> = known.iter().filter(|k| k.name == t.name).collect();
            if named.is_empty() {
                let hint = did_you_mean(&t.name, known.iter().map(|k| k.name.as_str()))
                    .map(|s| format!("did you mean `{s}`?"))
                    .or_else(|| {
                        Some("the account's approved templates: `flowbot doctor` lists them".into())
                    });
                r.error(
                    &p("name"),
                    format!("no approved template is called `{}`", t.name),
                    hint,
                );
            } else if let Some(info) = named.iter().find(|k| k.language == language) {
                if info.params != t.params.len() {
                    r.error(
                        &p("params"),
                        format!(
                            "template `{}` ({language}) has {} parameter{}; {} given",
                            t.name,
                            info.params,
                            if info.params == 1 { "" } else { "s" },
                            t.params.len()
                        ),
                        None,
                    );
                }
            } else {
                let langs: Vec<&str> = named.iter().map(|k| k.language.as_str()).collect();
                r.error(
                    &p("language"),
                    format!("template `{}` is not approved in `{language}`", t.name),
                    Some(format!("it is in: {}", langs.join(", "))),
                );
            }
        }
        if !self.used_templates.iter().any(|u| **u == *t.name) {
            self.used_templates.push(t.name.as_str().into());
        }
        Some(TemplateNode {
            name: t.name.as_str().into(),
            language: language.map(Into::into),
            params,
        })
    }
}
