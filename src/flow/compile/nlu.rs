//! `nlu:`: the intents' examples trained into the flow's classifier, their
//! titles, and the "not sure" question; tolerant `text:` and `keyword:`.

use super::*;

impl Compiler<'_> {
    /// `nlu:` of the main file.
    pub(super) fn nlu(
        &mut self,
        r: &mut Reporter<'_>,
        doc: Option<&model::NluDoc>,
    ) -> Option<NluNode> {
        let doc = doc?;
        let mut names = Vec::new();
        let mut titles = Vec::new();
        let mut examples = Vec::new();
        let mut example_paths = Vec::new();
        for (name, intent) in &doc.intents {
            let at = join_key("nlu.intents", name);
            if !is_identifier(name) {
                r.key_error(
                    &at,
                    format!("`{name}` is not an intent name"),
                    Some("use letters, digits and `_`".into()),
                );
            }
            let ex = join_key(&at, "examples");
            let (list, paths): (Vec<String>, Vec<Box<str>>) = match &intent.examples {
                model::Examples::All(l) => l
                    .iter()
                    .enumerate()
                    .map(|(i, e)| (e.clone(), format!("{ex}[{i}]").into()))
                    .unzip(),
                model::Examples::ByLanguage(m) => m
                    .iter()
                    .flat_map(|(lang, l)| {
                        let at = join_key(&ex, lang);
                        l.iter()
                            .enumerate()
                            .map(move |(i, e)| (e.clone(), format!("{at}[{i}]").into()))
                    })
                    .unzip(),
            };
            example_paths.push(paths);
            let useful = list
                .iter()
                .filter(|e| words(&normalize(e)).next().is_some())
                .count();
            if useful == 0 {
                r.error(
                    &join_key(&at, "examples"),
                    format!("intent `{name}` needs examples with words in them"),
                    Some("a few phrasings a customer would write: `[where is my order, siparişim nerede]`".into()),
                );
            }
            let title = match &intent.title {
                Some(t) => self.ltext(r, &join_key(&at, "title"), t),
                None => Some(LText(vec![(
                    "".into(),
                    Tpl::Static(name.replace('_', " ").into()),
                )])),
            };
            names.push(Box::<str>::from(name.as_str()));
            let title = title.unwrap_or_else(|| LText(Vec::new()));
            titles.push(ChoiceNode {
                id: format!("nlu:{name}").into(),
                normalized: title
                    .0
                    .iter()
                    .map(|(_, t)| match t {
                        Tpl::Static(s) => Some(normalize(s).into()),
                        _ => None,
                    })
                    .collect(),
                title,
                description: None,
                save: None,
            });
            examples.push(list);
        }
        if names.is_empty() {
            r.error("nlu.intents", "`nlu:` needs at least one intent", None);
            return None;
        }
        let unit = |r: &mut Reporter<'_>, key: &str, v: Option<f32>, default: f32| match v {
            Some(x) if !(0.0..=1.0).contains(&x) => {
                r.error(key, format!("{x} is not between 0 and 1"), None);
                default
            }
            Some(x) => x,
            None => default,
        };
        let threshold = unit(
            r,
            "nlu.threshold",
            doc.threshold,
            crate::nlu::DEFAULT_THRESHOLD,
        );
        let margin = unit(r, "nlu.margin", doc.margin, crate::nlu::DEFAULT_MARGIN);
        let not_sure = doc
            .not_sure
            .as_ref()
            .and_then(|n| self.not_sure(r, "nlu.not_sure", n));
        self.intent_names = names.clone();
        let intents = names
            .iter()
            .zip(&titles)
            .zip(&examples)
            .map(|((name, title), ex)| {
                let title = match title.title.0.first() {
                    Some((_, Tpl::Static(t))) => t.clone(),
                    _ => name.replace('_', " ").into(),
                };
                crate::nlu::IntentInfo::new(name, &title, ex)
            })
            .collect();
        Some(NluNode {
            model: crate::nlu::Model::train(&examples, threshold, margin),
            names,
            choices: titles,
            intents,
            example_paths,
            not_sure,
        })
    }

    pub(super) fn not_sure(
        &mut self,
        r: &mut Reporter<'_>,
        path: &str,
        n: &model::NotSureDoc,
    ) -> Option<NotSureNode> {
        let offer = n.offer.unwrap_or(2);
        if !(1..=3).contains(&offer) {
            r.error(
                &join_key(path, "offer"),
                format!("{offer}: offer 1 to 3 intents"),
                None,
            );
        }
        Some(NotSureNode {
            say: self.ltext(r, &join_key(path, "say"), &n.say)?,
            offer: offer.clamp(1, 3),
        })
    }

    /// `intent:` of a rule.
    pub(super) fn intent_ref(
        &mut self,
        r: &mut Reporter<'_>,
        path: &str,
        name: &str,
    ) -> Option<Cond> {
        if let Some(i) = self.intent_names.iter().position(|n| &**n == name) {
            return Some(Cond::Intent(i as u32));
        }
        let hint = match self.intent_names.is_empty() {
            true => "declare it under `nlu: { intents: { NAME: { examples: [...] } } }`".to_owned(),
            false => did_you_mean(name, self.intent_names.iter().map(|n| &**n))
                .map(|s| format!("did you mean `{s}`?"))
                .unwrap_or_else(|| {
                    let all: Vec<&str> = self.intent_names.iter().map(|n| &**n).collect();
                    format!("the flow's intents: {}", all.join(", "))
                }),
        };
        r.error(path, format!("unknown intent `{name}`"), Some(hint));
        None
    }

    /// How tolerant a rule's `text:` and `keyword:` are: its own keys over
    /// the flow's settings.
    pub(super) fn tolerance(
        &self,
        r: &mut Reporter<'_>,
        path: &str,
        rule: &model::Rule,
    ) -> (bool, u8) {
        let endings = rule.endings.or(self.endings).unwrap_or(false);
        let typos = rule.typos.or(self.typos).unwrap_or(0);
        if typos > 2 {
            r.error(
                &join_key(path, "typos"),
                format!("{typos} typos: at most 2"),
                None,
            );
        }
        if (rule.endings.is_some() || rule.typos.is_some())
            && rule.text.is_none()
            && rule.keyword.is_none()
        {
            r.error(
                path,
                "`endings` and `typos` tune a `text:` or `keyword:` condition",
                Some("add `keyword:` to this rule, or remove them".into()),
            );
        }
        (endings, typos.min(2) as u8)
    }
}
