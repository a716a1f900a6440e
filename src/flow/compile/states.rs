//! States: what a state does on entry (`call`, `set`, `say`, the question and
//! its check, `next`, `handoff`, `end`) and when nothing matches (`fallback`).

use super::*;

impl Compiler<'_> {
    pub(super) fn state(
        &mut self,
        r: &mut Reporter<'_>,
        file: usize,
        name: &str,
        s: &model::State,
    ) -> StateNode {
        let base = join_key("states", name);
        let p = |k: &str| join_key(&base, k);
        let say = s
            .say
            .as_ref()
            .map(|x| self.say(r, &p("say"), x))
            .unwrap_or_default();
        let ask = s.ask.as_ref().and_then(|a| self.ask(r, &p("ask"), a));
        let on =
            s.on.iter()
                .enumerate()
                .filter_map(|(i, rule)| self.rule(r, &join_index(&p("on"), i), rule))
                .collect();
        let fallback = s
            .fallback
            .as_ref()
            .map(|f| self.fallback(r, &p("fallback"), f));
        let split = s
            .split
            .as_ref()
            .map(|v| self.split(r, &p("split"), v, s))
            .unwrap_or_default();
        let (next, branches) = match &s.next {
            None => (None, Vec::new()),
            Some(model::Next::To(n)) => (self.state_ref(r, &p("next"), n), Vec::new()),
            Some(model::Next::Branches(list)) => (None, self.branches(r, &p("next"), list)),
        };
        let set = self.sets(r, &p("set"), &s.set);
        let call = s.call.as_ref().and_then(|c| self.call(r, &p("call"), c));
        let full = format!("{}{name}", self.prefix);
        let http = s
            .http
            .as_ref()
            .and_then(|h| self.http(r, &p("http"), &full, h));
        let on_error = s
            .on_error
            .as_ref()
            .and_then(|n| self.state_ref(r, &p("on_error"), n));
        let after = s.after.as_ref().and_then(|a| self.after(r, &p("after"), a));
        let not_sure = s
            .not_sure
            .as_ref()
            .and_then(|n| self.not_sure(r, &p("not_sure"), n));
        let template = s
            .template
            .as_ref()
            .and_then(|t| self.template_node(r, &p("template"), t));
        if s.end && s.handoff {
            r.error(&p("handoff"), "a state cannot both end and hand off", None);
        }
        if (s.end || s.handoff) && s.next.is_some() {
            r.error(
                &p("next"),
                "`next` after `end` or `handoff` is never followed",
                Some("remove `next`".into()),
            );
        }
        if s.ask.is_some() && s.next.is_none() {
            r.error(
                &p("ask"),
                "an `ask` state needs `next`: where a valid answer leads",
                Some("add `next: STATE` to this state".into()),
            );
        }
        StateNode {
            branches,
            split,
            name: name.into(),
            say,
            ask,
            on,
            fallback,
            next,
            set,
            call,
            http,
            end: s.end,
            outcome: self.outcome(r, &p("outcome"), s),
            handoff: s.handoff,
            intents: s.intents.unwrap_or(true),
            after,
            template,
            on_error,
            not_sure,
            file,
            unit: 0,
            subflow: None,
            ret: None,
        }
    }

    /// A state named in the unit being compiled (a subflow's states see
    /// only each other).
    pub(super) fn state_ref(
        &self,
        r: &mut Reporter<'_>,
        path: &str,
        name: &str,
    ) -> Option<StateId> {
        let full = format!("{}{name}", self.prefix);
        if let Some(&id) = self.index.get(full.as_str()) {
            return Some(id);
        }
        let local = |k: &&str| {
            if self.prefix.is_empty() {
                !k.contains('/')
            } else {
                k.starts_with(self.prefix.as_str())
            }
        };
        let names = || {
            self.index
                .keys()
                .map(|k| &**k)
                .filter(local)
                .map(|k| &k[self.prefix.len()..])
        };
        let hint = did_you_mean(name, names())
            .map(|s| format!("did you mean `{s}`?"))
            .unwrap_or_else(|| {
                let mut all: Vec<&str> = names().collect();
                all.sort_unstable();
                format!("known states: {}", all.join(", "))
            });
        r.error(path, format!("unknown state `{name}`"), Some(hint));
        None
    }

    /// `next:` as branches: each condition compiled as a rule's `when:`;
    /// only the last may go without one (a branch after one that always
    /// holds is never taken), and a last branch with one may leave the
    /// conversation waiting (warned).
    pub(super) fn branches(
        &mut self,
        r: &mut Reporter<'_>,
        path: &str,
        list: &[model::Branch],
    ) -> Vec<BranchNode> {
        if list.is_empty() {
            r.error(
                path,
                "`next` as a list needs at least one branch",
                Some(
                    "write `next: STATE`, or branches `[{ when: ..., goto: ... }, { goto: ... }]`"
                        .into(),
                ),
            );
        }
        let mut out = Vec::with_capacity(list.len());
        for (i, b) in list.iter().enumerate() {
            let at = join_index(path, i);
            let goto = self.state_ref(r, &join_key(&at, "goto"), &b.goto);
            let when = match &b.when {
                None => {
                    if i + 1 < list.len() {
                        r.error(
                            &at,
                            "a branch without `when` always holds: the branches after it are never taken",
                            Some("give it a `when`, or make it the last branch".into()),
                        );
                    }
                    None
                }
                Some(w) => match self.templates.expression(w) {
                    Ok(t) => Some(t),
                    Err(e) => {
                        r.error(
                            &join_key(&at, "when"),
                            format!("invalid expression: {e}"),
                            Some("expressions use minijinja (Jinja2) syntax".into()),
                        );
                        None
                    }
                },
            };
            if i + 1 == list.len() && b.when.is_some() {
                r.warning(
                    &join_key(&at, "when"),
                    "when no branch holds, the conversation stays here and waits for the customer",
                    Some(
                        "add a last branch without `when` (`{ goto: STATE }`) for the other cases"
                            .into(),
                    ),
                );
            }
            if let Some(goto) = goto {
                out.push(BranchNode { when, goto });
            }
        }
        out
    }

    /// `split:`: each variant a state and a weight; at least two, a total
    /// above zero, and nothing else that decides where the state goes on.
    pub(super) fn split(
        &mut self,
        r: &mut Reporter<'_>,
        path: &str,
        variants: &IndexMap<String, u32>,
        s: &model::State,
    ) -> Vec<(StateId, u32)> {
        if variants.len() < 2 {
            r.error(
                path,
                "a split needs at least two variants",
                Some("`split: { a: 50, b: 50 }`: each state and its weight".into()),
            );
        }
        if variants.values().all(|w| *w == 0) {
            r.error(path, "a split's weights add up to zero", None);
        }
        for (key, set) in [
            ("next", s.next.is_some()),
            ("ask", s.ask.is_some()),
            ("end", s.end),
            ("handoff", s.handoff),
        ] {
            if set {
                r.error(
                    path,
                    format!("a split decides where the state goes on: not with `{key}`"),
                    Some("put the split in a state of its own".into()),
                );
            }
        }
        variants
            .iter()
            .filter_map(|(name, w)| Some((self.state_ref(r, &join_key(path, name), name)?, *w)))
            .collect()
    }

    pub(super) fn sets(
        &mut self,
        r: &mut Reporter<'_>,
        path: &str,
        set: &IndexMap<String, String>,
    ) -> Vec<(Arc<str>, Tpl)> {
        set.iter()
            .filter_map(|(k, v)| {
                let t = self.template(r, &join_key(path, k), v)?;
                Some((Arc::from(k.as_str()), t))
            })
            .collect()
    }

    pub(super) fn call(
        &mut self,
        r: &mut Reporter<'_>,
        path: &str,
        c: &model::Call,
    ) -> Option<CallNode> {
        let name = match (&c.action, &c.flow) {
            (Some(a), None) => a,
            (None, Some(_)) => {
                for (key, set) in [("args", !c.args.is_empty()), ("jumps", !c.jumps.is_empty())] {
                    if set {
                        r.key_error(
                            &join_key(path, key),
                            format!("`{key}` is for actions; a subflow takes `with`"),
                            None,
                        );
                    }
                }
                return None;
            }
            (Some(_), Some(_)) => {
                r.error(
                    path,
                    "`call` runs an action or a subflow, not both",
                    Some("split it into two states".into()),
                );
                return None;
            }
            (None, None) => {
                r.error(
                    path,
                    "`call` needs `action` (a Rust action) or `flow` (a subflow)",
                    None,
                );
                return None;
            }
        };
        for (key, set) in [
            ("with", !c.with.is_empty()),
            ("returns", !c.returns.is_empty()),
        ] {
            if set {
                r.key_error(
                    &join_key(path, key),
                    format!("`{key}` is for subflows; an action takes `args`"),
                    None,
                );
            }
        }
        if !self.names.actions.iter().any(|a| a == name) {
            let hint = match self.names.actions.is_empty() || self.names.generic {
                // The installed `flowbot` knows no project's actions.
                true => "this program does not know a project's actions: they are known to \
                         its own binary, so check the flow with it (`cargo run -- validate \
                         FLOW` in the project)"
                    .into(),
                false => did_you_mean(name, self.names.actions.iter().map(String::as_str))
                    .map(|s| format!("did you mean `{s}`?"))
                    .unwrap_or_else(|| "register it with `Registry::action` in your binary".into()),
            };
            r.error(
                &join_key(path, "action"),
                format!("action `{name}` is not registered"),
                Some(hint),
            );
            return None;
        }
        let action = intern(&mut self.actions, name);
        let mut args = Vec::new();
        for (k, v) in &c.args {
            let arg = match v {
                serde_json::Value::String(s) => {
                    Arg::Template(self.template(r, &join_key(&join_key(path, "args"), k), s)?)
                }
                other => Arg::Value(minijinja::Value::from_serialize(other)),
            };
            args.push((k.as_str().into(), arg));
        }
        let jumps = c
            .jumps
            .iter()
            .enumerate()
            .filter_map(|(i, j)| self.state_ref(r, &join_index(&join_key(path, "jumps"), i), j))
            .collect();
        Some(CallNode {
            action,
            args,
            jumps,
        })
    }

    /// `outcome:`: a name, on a state that ends.
    fn outcome(&self, r: &mut Reporter<'_>, path: &str, s: &model::State) -> Option<Box<str>> {
        let name = s.outcome.as_deref()?;
        if !s.end {
            r.error(
                path,
                "`outcome` names how a run that ends here ended: it needs `end: true`",
                Some("add `end: true`, or remove `outcome`".into()),
            );
            return None;
        }
        if !is_identifier(name) || name == crate::insights::outcome::OPEN {
            r.error(
                path,
                format!("`{name}` is not an outcome name"),
                Some("use letters, digits and _ (resolved, failed, or a name of your own such as order_placed)".into()),
            );
            return None;
        }
        (name != crate::insights::outcome::RESOLVED).then(|| name.into())
    }

    pub(super) fn ask(
        &mut self,
        r: &mut Reporter<'_>,
        path: &str,
        a: &model::Ask,
    ) -> Option<AskNode> {
        let p = |k: &str| join_key(path, k);
        let text = a.text.as_ref().and_then(|t| self.ltext(r, &p("text"), t));
        if a.text.is_none() {
            r.error(path, "`ask` needs a `text`: the question", None);
        }
        if !a.quick_replies.is_empty() {
            validate::check_quick_replies(r, &p("quick_replies"), &a.quick_replies, self.adapt);
        }
        // The answer is saved by the question's own `save`.
        let quick_replies = self.choices(r, &p("quick_replies"), &a.quick_replies, None);
        let save = match &a.save {
            Some(s) if is_identifier(s) => Arc::<str>::from(s.as_str()),
            Some(s) => {
                r.error(
                    &p("save"),
                    format!("`{s}` is not a variable name"),
                    Some("use letters, digits and _".into()),
                );
                return None;
            }
            None => {
                r.error(
                    path,
                    "`ask` needs `save`: the variable that gets the answer",
                    None,
                );
                return None;
            }
        };
        let check = match &a.validate {
            None => Check {
                kind: CheckKind::Text,
                regex: None,
                min: None,
                max: None,
                region: None,
            },
            Some(v) => self.check(r, &p("validate"), v)?,
        };
        let invalid = a
            .invalid
            .as_ref()
            .map(|s| self.say(r, &p("invalid"), s))
            .unwrap_or_default();
        let exhausted = a
            .exhausted
            .as_ref()
            .map(|f| self.fallback(r, &p("exhausted"), f));
        if a.pii {
            self.private.push(save.clone());
        } else if matches!(check.kind, CheckKind::Phone | CheckKind::Email) {
            let what = match check.kind {
                CheckKind::Phone => "a phone number",
                _ => "an e-mail address",
            };
            r.warning(
                &p("save"),
                format!("`{save}` keeps {what}, personal data, and is not marked `pii: true`"),
                Some(
                    "add `pii: true` to this `ask`: the value then stays out of the event log, \
                     reports and the debug view, and is masked in transcripts"
                        .into(),
                ),
            );
        }
        Some(AskNode {
            text,
            quick_replies,
            save,
            check,
            invalid,
            retries: a.retries.unwrap_or(self.default_retries),
            exhausted,
        })
    }

    pub(super) fn check(
        &mut self,
        r: &mut Reporter<'_>,
        path: &str,
        v: &model::Validate,
    ) -> Option<Check> {
        let kind = match v.kind.as_deref() {
            None | Some("text") => CheckKind::Text,
            Some("number") => CheckKind::Number,
            Some("email") => CheckKind::Email,
            Some("phone") => CheckKind::Phone,
            Some("date") => CheckKind::Date,
            Some(other) => {
                let at = if v.regex.is_some() || v.min.is_some() {
                    join_key(path, "kind")
                } else {
                    path.to_owned()
                };
                let hint = did_you_mean(other, ["text", "number", "email", "phone", "date"])
                    .map(|s| format!("did you mean `{s}`?"))
                    .unwrap_or_else(|| {
                        "use text, number, email, phone or date, or `regex:`".into()
                    });
                r.error(&at, format!("unknown answer kind `{other}`"), Some(hint));
                return None;
            }
        };
        if (v.min.is_some() || v.max.is_some()) && kind != CheckKind::Number {
            r.error(path, "`min` and `max` apply to `kind: number` only", None);
        }
        let regex = match &v.regex {
            Some(src) => Some(self.regex(r, &join_key(path, "regex"), src)?),
            None => None,
        };
        Some(Check {
            kind,
            regex,
            min: v.min,
            max: v.max,
            region: self.region,
        })
    }

    pub(super) fn regex(&mut self, r: &mut Reporter<'_>, path: &str, src: &str) -> Option<Regex> {
        match Regex::new(src) {
            Ok(re) => {
                // A regex keeps from a few to a few hundred kilobytes (its
                // automata; Unicode classes are large): measured on the
                // same engine `regex` runs, once, at load.
                self.regex_bytes += regex_automata::meta::Regex::new(src)
                    .map_or(0, |m| m.memory_usage() + 6 * 1024);
                Some(re)
            }
            Err(e) => {
                let detail = e.to_string();
                let last = detail.lines().last().unwrap_or("").trim().to_owned();
                r.error(
                    path,
                    format!("invalid regex: {last}"),
                    Some(
                        "check the pattern; in YAML, single quotes keep backslashes as they are"
                            .into(),
                    ),
                );
                None
            }
        }
    }

    pub(super) fn fallback(
        &mut self,
        r: &mut Reporter<'_>,
        path: &str,
        f: &model::Fallback,
    ) -> FallbackNode {
        let say = f
            .say
            .as_ref()
            .map(|s| self.say(r, &join_key(path, "say"), s))
            .unwrap_or_default();
        let goto = f
            .goto
            .as_ref()
            .and_then(|g| self.state_ref(r, &join_key(path, "goto"), g));
        if f.repeat && f.goto.is_some() {
            r.error(
                path,
                "`repeat` and `goto` cannot both be set",
                Some("`repeat` re-sends this state; `goto` leaves it".into()),
            );
        }
        FallbackNode {
            say,
            repeat: f.repeat,
            goto,
        }
    }
}
