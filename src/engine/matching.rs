//! Evaluating rule conditions against an incoming message.
//!
//! Before any rule is tried, a typed answer is resolved against the options last
//! offered: the option's title (any channel) or its number (where the options were
//! shown numbered) counts as tapping it, and a list reply to a quick-reply menu
//! turned into a list (or the reverse) counts as the kind the flow wrote. The
//! message's normalized text and words are computed once per turn, lazily.

use minijinja::Value;
use std::cell::OnceCell;

use super::session::{Offered, OptionKind, Session};
use crate::flow::{contains_phrase, normalize, tolerant_match, words, Cond, Flow};
use crate::handler::{Matcher, Vars};
use crate::message::Incoming;
use std::sync::Arc;

/// The message as rules see it.
pub(crate) struct Probe<'a> {
    pub(crate) msg: &'a Incoming,
    pub(crate) button: Option<&'a str>,
    pub(crate) list: Option<&'a str>,
    /// The option offered that the message picked (tapped, typed, numbered).
    pub(crate) picked: Option<&'a Offered>,
    norm: OnceCell<String>,
}

impl<'a> Probe<'a> {
    /// Resolves typed answers against the offered options (see the module docs).
    pub(crate) fn new(msg: &'a Incoming, session: Option<&'a Session>) -> Probe<'a> {
        let mut p = Probe {
            msg,
            button: msg.button.as_deref(),
            list: msg.list.as_deref(),
            picked: None,
            norm: OnceCell::new(),
        };
        let Some(s) = session else { return p };
        if s.offered.is_empty() {
            return p;
        }
        let picked = if let Some(id) = p.button.or(p.list) {
            s.offered.iter().find(|o| &*o.id == id)
        } else if msg.text.is_empty() {
            None
        } else {
            let n = p.norm();
            let by_number = s
                .numbered
                .then(|| n.parse::<usize>().ok())
                .flatten()
                .and_then(|i| i.checked_sub(1))
                .and_then(|i| s.offered.get(i));
            by_number.or_else(|| s.offered.iter().find(|o| *o.title == *n))
        };
        p.picked = picked;
        if let Some(o) = picked {
            let id: &str = &o.id;
            match o.kind {
                OptionKind::Button => {
                    p.button = Some(id);
                    p.list = None;
                }
                OptionKind::Row => {
                    p.list = Some(id);
                    p.button = None;
                }
            }
        }
        p
    }

    pub(crate) fn norm(&self) -> &str {
        self.norm.get_or_init(|| normalize(&self.msg.text))
    }
}

/// What conditions need besides the message.
pub(crate) struct MatchEnv<'a> {
    pub(crate) flow: &'a Flow,
    pub(crate) matchers: &'a [Arc<dyn Matcher>],
    pub(crate) vars: Vars<'a>,
    pub(crate) scope: &'a Value,
    pub(crate) errors: &'a mut Vec<String>,
    /// The intent the message was classified as (when sure, or picked from
    /// a "did you mean"); none before classification.
    pub(crate) intent: Option<u32>,
}

/// Whether a condition reads the message's intent (such rules are tried
/// after every other, once the message is classified).
pub(crate) fn has_intent(cond: &Cond) -> bool {
    match cond {
        Cond::Intent(_) => true,
        Cond::Any(v) | Cond::All(v) => v.iter().any(has_intent),
        Cond::Not(c) => has_intent(c),
        _ => false,
    }
}

/// Whether `cond` holds; captured variables are appended to `caps`.
pub(crate) fn eval(
    cond: &Cond,
    p: &Probe<'_>,
    env: &mut MatchEnv<'_>,
    caps: &mut Vec<(String, Value)>,
) -> bool {
    match cond {
        Cond::Button(id) => p.button == Some(&**id),
        Cond::List(id) => p.list == Some(&**id),
        Cond::Text(syn) => {
            let n = p.norm();
            syn.iter().any(|s| **s == *n)
        }
        Cond::Keyword(phrases) => {
            let n = p.norm();
            let w: Vec<&str> = words(n).collect();
            phrases.iter().any(|ph| contains_phrase(&w, ph))
        }
        Cond::Regex(re) => match re.captures(&p.msg.text) {
            Some(c) => {
                for name in re.capture_names().flatten() {
                    if let Some(m) = c.name(name) {
                        caps.push((name.to_owned(), Value::from(m.as_str())));
                    }
                }
                true
            }
            None => false,
        },
        Cond::Media(kind) => match (kind, p.msg.media) {
            (_, None) => false,
            (None, Some(_)) => true,
            (Some(k), Some(m)) => *k == m,
        },
        Cond::When(t) => match env.flow.templates.truthy(t, env.scope) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "`when` failed; taken as false");
                env.errors.push(e.to_string());
                false
            }
        },
        Cond::Tolerant(t) => {
            let n = p.norm();
            let w: Vec<&str> = words(n).collect();
            tolerant_match(&w, &t.phrases, t.whole, t.endings, t.typos)
        }
        Cond::Intent(i) => env.intent == Some(*i),
        Cond::Any(cs) => cs.iter().any(|c| eval(c, p, env, caps)),
        Cond::All(cs) => {
            let mark = caps.len();
            let ok = cs.iter().all(|c| eval(c, p, env, caps));
            if !ok {
                caps.truncate(mark);
            }
            ok
        }
        Cond::Not(c) => {
            let mut scratch = Vec::new();
            !eval(c, p, env, &mut scratch)
        }
        Cond::Custom(i) => {
            let mut msg;
            // Custom matchers see the resolved button/list ids too.
            let m = if p.button != p.msg.button.as_deref() || p.list != p.msg.list.as_deref() {
                msg = p.msg.clone();
                msg.button = p.button.map(str::to_owned);
                msg.list = p.list.map(str::to_owned);
                &msg
            } else {
                p.msg
            };
            match env.matchers[*i as usize].matches(m, &env.vars) {
                Some(c) => {
                    caps.extend(c);
                    true
                }
                None => false,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::session::Offered;

    fn session(numbered: bool) -> Session {
        let mut s = Session::new(0, 0, 0);
        s.numbered = numbered;
        s.offered = vec![
            Offered {
                kind: OptionKind::Button,
                id: "orders".into(),
                title: "my orders".into(),
                save: None,
            },
            Offered {
                kind: OptionKind::Button,
                id: "agent".into(),
                title: "talk to us".into(),
                save: None,
            },
        ];
        s
    }

    #[test]
    fn typed_titles_count_as_taps() {
        let s = session(false);
        let m = Incoming::text("Talk to us!");
        let p = Probe::new(&m, Some(&s));
        assert_eq!(p.button, Some("agent"));
    }

    #[test]
    fn numbers_count_only_when_shown_numbered() {
        let m = Incoming::text("2");
        let s = session(false);
        assert_eq!(Probe::new(&m, Some(&s)).button, None);
        let s = session(true);
        assert_eq!(Probe::new(&m, Some(&s)).button, Some("agent"));
        let m = Incoming::text("3");
        assert_eq!(Probe::new(&m, Some(&s)).button, None);
    }

    #[test]
    fn a_list_reply_to_an_adapted_menu_counts_as_a_button() {
        let s = session(false);
        let m = Incoming::list("orders");
        let p = Probe::new(&m, Some(&s));
        assert_eq!((p.button, p.list), (Some("orders"), None));
    }
}
