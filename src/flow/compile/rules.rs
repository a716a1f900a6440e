//! Rules: `on:` and the flow's `intents:`, each a condition (ids, text,
//! keywords, regexes, `when:`, custom matchers, combined with `any`/`all`/`not`)
//! and what firing does.

use super::*;

impl Compiler<'_> {
    pub(super) fn rule(
        &mut self,
        r: &mut Reporter<'_>,
        path: &str,
        rule: &model::Rule,
    ) -> Option<RuleNode> {
        // Everything is compiled before giving up, so that all problems are reported.
        let cond = self.cond(r, path, rule, true);
        let say = rule
            .say
            .as_ref()
            .map(|s| self.say(r, &join_key(path, "say"), s))
            .unwrap_or_default();
        let goto = rule
            .goto
            .as_ref()
            .map(|g| self.state_ref(r, &join_key(path, "goto"), g));
        let (Some(cond), Some(goto)) = (cond, goto.map_or(Some(None), |g| g.map(Some))) else {
            return None;
        };
        if rule.goto.is_none() && rule.say.is_none() && rule.correct.is_none() {
            r.error(
                path,
                "a rule needs `goto`, `say`, or both",
                Some("add `goto: STATE` where this answer leads".into()),
            );
            return None;
        }
        let set = self.sets(r, &join_key(path, "set"), &rule.set);
        let resume = rule.resume.unwrap_or(false);
        if resume && rule.goto.is_some() {
            r.key_error(
                &join_key(path, "resume"),
                "a rule that resumes stays where the conversation is: it cannot also `goto`",
                Some("remove `goto` (the pending question is asked again), or `resume`".into()),
            );
        }
        let correct = match &rule.correct {
            None => None,
            Some(var) => match self.askers.get(var.as_str()) {
                Some(&asker) => Some((Arc::from(var.as_str()), asker)),
                None => {
                    let hint = did_you_mean(var, self.askers.keys().map(|k| &**k))
                        .map(|v| format!("did you mean `{v}`?"))
                        .or_else(|| Some("`correct` names the `save:` of an `ask`".into()));
                    r.error(
                        &join_key(path, "correct"),
                        format!("no question saves `{var}`, so it cannot be corrected"),
                        hint,
                    );
                    None
                }
            },
        };
        let cancel = match &rule.cancel {
            None | Some(model::Cancel::All(false)) => Vec::new(),
            Some(model::Cancel::All(true)) => self.askers.keys().map(|k| Arc::from(&**k)).collect(),
            Some(model::Cancel::Only(names)) => {
                names.iter().map(|n| Arc::from(n.as_str())).collect()
            }
        };
        let label = label(rule);
        Some(RuleNode {
            cond,
            say,
            goto,
            set,
            resume,
            correct,
            cancel,
            label: label.into(),
        })
    }

    /// Compiles a rule's conditions; several keys must all hold.
    pub(super) fn cond(
        &mut self,
        r: &mut Reporter<'_>,
        path: &str,
        rule: &model::Rule,
        top: bool,
    ) -> Option<Cond> {
        let p = |k: &str| join_key(path, k);
        if !top {
            for (k, set) in [
                ("say", rule.say.is_some()),
                ("goto", rule.goto.is_some()),
                ("set", !rule.set.is_empty()),
                ("resume", rule.resume.is_some()),
                ("correct", rule.correct.is_some()),
                ("cancel", rule.cancel.is_some()),
            ] {
                if set {
                    r.key_error(
                        &p(k),
                        format!("`{k}` belongs to the outer rule, not inside any/all/not"),
                        None,
                    );
                }
            }
        }
        let mut conds = Vec::new();
        let mut ok = true;
        if let Some(b) = &rule.button {
            conds.push(Cond::Button(b.as_str().into()));
        }
        if let Some(l) = &rule.list {
            conds.push(Cond::List(l.as_str().into()));
        }
        let (endings, typos) = self.tolerance(r, path, rule);
        let tolerant = endings || typos > 0;
        if let Some(t) = &rule.text {
            let syn: Vec<Box<str>> = t.0.iter().map(|s| normalize(s).into()).collect();
            if syn.iter().any(|s| s.is_empty()) {
                r.error(&p("text"), "an empty synonym never matches", None);
            }
            conds.push(match tolerant {
                false => Cond::Text(syn),
                true => Cond::Tolerant(Tolerant {
                    phrases: syn
                        .iter()
                        .map(|s| words(s).map(Into::into).collect())
                        .collect(),
                    whole: true,
                    endings,
                    typos,
                }),
            });
        }
        if let Some(k) = &rule.keyword {
            let phrases: Vec<Vec<Box<str>>> =
                k.0.iter()
                    .map(|s| words(&normalize(s)).map(Into::into).collect())
                    .collect();
            if phrases.iter().any(Vec::is_empty) {
                r.error(
                    &p("keyword"),
                    "a keyword needs at least one letter or digit",
                    None,
                );
            }
            conds.push(match tolerant {
                false => Cond::Keyword(phrases),
                true => Cond::Tolerant(Tolerant {
                    phrases,
                    whole: false,
                    endings,
                    typos,
                }),
            });
        }
        if let Some(i) = &rule.intent {
            match self.intent_ref(r, &p("intent"), i) {
                Some(c) => conds.push(c),
                None => ok = false,
            }
        }
        if let Some(re) = &rule.regex {
            match self.regex(r, &p("regex"), re) {
                Some(re) => conds.push(Cond::Regex(re)),
                None => ok = false,
            }
        }
        if let Some(m) = &rule.media {
            if m == "any" {
                conds.push(Cond::Media(None));
            } else if let Some(k) = MediaKind::parse(m) {
                conds.push(Cond::Media(Some(k)));
            } else {
                let all = MediaKind::ALL.map(MediaKind::as_str);
                let hint = did_you_mean(m, all)
                    .map(|s| format!("did you mean `{s}`?"))
                    .unwrap_or_else(|| format!("use any, {}", all.join(", ")));
                r.error(&p("media"), format!("unknown media kind `{m}`"), Some(hint));
                ok = false;
            }
        }
        if let Some(w) = &rule.when {
            match self.templates.expression(w) {
                Ok(t) => conds.push(Cond::When(t)),
                Err(e) => {
                    r.error(
                        &p("when"),
                        format!("invalid expression: {e}"),
                        Some("expressions use minijinja (Jinja2) syntax".into()),
                    );
                    ok = false;
                }
            }
        }
        for (key, list, is_any) in [("any", &rule.any, true), ("all", &rule.all, false)] {
            if let Some(list) = list {
                if list.is_empty() {
                    r.error(&p(key), format!("`{key}` needs at least one rule"), None);
                    ok = false;
                    continue;
                }
                let subs: Vec<Option<Cond>> = list
                    .iter()
                    .enumerate()
                    .map(|(i, sub)| self.cond(r, &join_index(&p(key), i), sub, false))
                    .collect();
                if subs.iter().any(Option::is_none) {
                    ok = false;
                } else {
                    let subs = subs.into_iter().flatten().collect();
                    conds.push(if is_any {
                        Cond::Any(subs)
                    } else {
                        Cond::All(subs)
                    });
                }
            }
        }
        if let Some(n) = &rule.not {
            match self.cond(r, &p("not"), n, false) {
                Some(c) => conds.push(Cond::Not(Box::new(c))),
                None => ok = false,
            }
        }
        if let Some(m) = &rule.matcher {
            if self.names.matchers.iter().any(|x| x == m) {
                conds.push(Cond::Custom(intern(&mut self.matchers, m)));
            } else {
                let hint = did_you_mean(m, self.names.matchers.iter().map(String::as_str))
                    .map(|s| format!("did you mean `{s}`?"))
                    .unwrap_or_else(|| {
                        "register it with `Registry::matcher` in your binary".into()
                    });
                r.error(
                    &p("match"),
                    format!("matcher `{m}` is not registered"),
                    Some(hint),
                );
                ok = false;
            }
        }
        if !ok {
            return None;
        }
        match conds.len() {
            0 => {
                r.error(
                    path,
                    "a rule needs a condition",
                    Some("use button, list, text, keyword, regex, media, when, intent, any, all, not or match (for \"anything else\", use `fallback`)".into()),
                );
                None
            }
            1 => conds.pop(),
            _ => Some(Cond::All(conds)),
        }
    }
}
