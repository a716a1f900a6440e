//! From documents to a [`Flow`]: names resolved to indexes, regexes and templates
//! compiled, synonyms normalized, limits checked, every problem reported.
//!
//! Compilation never stops at the first problem: each part is compiled on its own
//! and a broken part is reported and skipped, so one run lists everything wrong.

mod http;
mod messages;
mod nlu;
mod rules;
mod states;
mod subflows;
mod timing;

use indexmap::IndexMap;
use regex::Regex;
use std::collections::HashMap;
use std::sync::Arc;

use super::compiled::*;
use super::diagnostic::{did_you_mean, Diagnostics};
use super::load::Loaded;
use super::model::{self, Text};
use super::normalize::{normalize, words};
use super::source::{join_index, join_key, Reporter};
use super::template::{Templates, Tpl};
use super::validate;
use super::{FlowLimits, HandlerNames, StateId, TemplateInfo};
use crate::message::{ButtonKind, MediaKind};

/// Compiles loaded documents (the main one first) into a flow.
pub(crate) fn compile(
    files: &[Loaded],
    names: &HandlerNames,
    limits: &FlowLimits,
    diags: &mut Diagnostics,
) -> Option<Flow> {
    let main = files.first()?;
    let mut index: HashMap<Box<str>, StateId> = HashMap::new();
    let mut order: Vec<(usize, &str, &model::State)> = Vec::new();
    let units = unit_names(files, diags);

    // Pass 1: every state gets an id, so that rules may point forward. A
    // subflow's states are named `NAME/state`.
    for (fi, f) in files.iter().enumerate() {
        let mut r = Reporter {
            source: &f.source,
            out: diags,
        };
        let unit_main = units[f.unit].1 == fi;
        if f.unit > 0 {
            for (key, set) in [
                ("intents", !f.doc.intents.is_empty()),
                ("settings", f.doc.settings.is_some()),
                ("on_error", f.doc.on_error.is_some()),
                ("release", f.doc.release.is_some()),
                ("migrate", !f.doc.migrate.is_empty()),
                ("calendars", !f.doc.calendars.is_empty()),
                ("schedules", !f.doc.schedules.is_empty()),
            ] {
                if set {
                    r.key_error(
                        key,
                        format!("a subflow has no `{key}` of its own: the calling flow's apply"),
                        Some(format!("move it to `{}`", main.source.path.display())),
                    );
                }
            }
        }
        if !unit_main {
            for (key, set) in [
                ("start", f.doc.start.is_some()),
                ("settings", f.doc.settings.is_some()),
                ("on_error", f.doc.on_error.is_some()),
                ("release", f.doc.release.is_some()),
                ("name", f.doc.name.is_some()),
            ] {
                if set {
                    r.key_error(
                        key,
                        format!("`{key}` may only be set in the main flow file"),
                        Some(format!("move it to `{}`", main.source.path.display())),
                    );
                }
            }
        }
        if let Some(v) = f.doc.version {
            if v != 1 {
                r.error(
                    "version",
                    format!("unknown flow language version {v}"),
                    Some("use `version: 1`".into()),
                );
            }
        }
        let prefix = &units[f.unit].0;
        for (name, st) in &f.doc.states {
            let full = format!("{prefix}{name}");
            if index.contains_key(full.as_str()) {
                r.key_error(
                    &join_key("states", name),
                    format!("state `{name}` is defined twice"),
                    Some("state names are shared by all included files".into()),
                );
                continue;
            }
            index.insert(full.into(), order.len() as StateId);
            order.push((fi, name.as_str(), st));
        }
    }
    if order.is_empty() {
        Reporter {
            source: &main.source,
            out: diags,
        }
        .error(
            "states",
            "the flow has no states",
            Some("add `states:` with at least a `start` state".into()),
        );
        return None;
    }

    let settings_doc = main.doc.settings.clone().unwrap_or_default();
    let mut c = Compiler {
        templates: Templates::new(limits),
        index: &index,
        names,
        actions: Vec::new(),
        matchers: Vec::new(),
        adapt: false,
        default_retries: settings_doc.retries.unwrap_or(1),
        region: None,
        default_language: settings_doc.default_language.as_deref().map(Into::into),
        used_templates: Vec::new(),
        private: Vec::new(),
        prefix: String::new(),
        calls: Vec::new(),
        units: Vec::new(),
        regex_bytes: 0,
        in_http: false,
        http_names: Vec::new(),
        http_allow: Arc::default(),
        intent_names: Vec::new(),
        endings: settings_doc.endings,
        typos: settings_doc.typos,
        askers: order
            .iter()
            .enumerate()
            .filter(|(_, (fi, _, _))| files[*fi].unit == 0)
            .filter_map(|(i, (_, _, st))| {
                let save = st.ask.as_ref()?.save.as_deref()?;
                Some((save.into(), i as StateId))
            })
            .fold(indexmap::IndexMap::new(), |mut m, (k, v)| {
                m.entry(k).or_insert(v);
                m
            }),
    };

    // Calendars first: templates may call them.
    let mut calendars: Vec<super::calendar::Calendar> = Vec::new();
    for f in files {
        let mut r = Reporter {
            source: &f.source,
            out: diags,
        };
        for (name, doc) in &f.doc.calendars {
            if calendars.iter().any(|c| &*c.name == name) {
                r.error(
                    &join_key("calendars", name),
                    format!("calendar `{name}` is defined twice"),
                    None,
                );
            } else if let Some(c) = super::calendar::compile(&mut r, name, doc) {
                calendars.push(c);
            }
        }
    }
    c.templates.set_calendars(calendars);

    let mut r = Reporter {
        source: &main.source,
        out: diags,
    };
    let start = match &main.doc.start {
        Some(s) => c.state_ref(&mut r, "start", s),
        None => Some(index.get("start").copied().unwrap_or(0)),
    };
    c.http_allow = c.http_settings(&mut r, settings_doc.http.as_ref());
    let mut settings = c.settings(&mut r, &settings_doc);
    settings.http_allow = c.http_allow.clone();
    settings.http_per_turn = limits.http_calls_per_turn;
    let nlu = c.nlu(&mut r, main.doc.nlu.as_ref());
    c.adapt = settings.overflow_adapt;
    let on_error = main
        .doc
        .on_error
        .as_ref()
        .and_then(|s| c.state_ref(&mut r, "on_error", s));
    let release = main
        .doc
        .release
        .as_ref()
        .and_then(|s| c.state_ref(&mut r, "release", s));
    let schedules: Vec<crate::flow::schedule::Schedule> = main
        .doc
        .schedules
        .iter()
        .enumerate()
        .filter_map(|(i, s)| c.schedule(&mut r, &join_index("schedules", i), s))
        .collect();
    for (i, s) in main.doc.schedules.iter().enumerate() {
        if main.doc.schedules[..i].iter().any(|o| o.name == s.name) {
            r.error(
                &join_key(&join_index("schedules", i), "name"),
                format!("schedule `{}` is named twice", s.name),
                Some("each schedule needs its own name: it keys each firing".into()),
            );
        }
    }
    let mut migrate = HashMap::new();
    for (old, new) in &main.doc.migrate {
        if let Some(id) = c.state_ref(&mut r, &join_key("migrate", old), new) {
            migrate.insert(Box::from(old.as_str()), id);
        }
    }

    let mut vars = Vec::new();
    let mut intents = Vec::new();
    // A subflow's variables are its own (given at each call).
    for f in files.iter().filter(|f| f.unit == 0) {
        let mut r = Reporter {
            source: &f.source,
            out: diags,
        };
        for (k, v) in &f.doc.vars {
            vars.push((Arc::from(k.as_str()), minijinja::Value::from_serialize(v)));
        }
        for (i, name) in f.doc.pii.iter().enumerate() {
            if !is_identifier(name) {
                r.error(
                    &join_index("pii", i),
                    format!("`{name}` is not a variable name"),
                    Some("use letters, digits and _".into()),
                );
            } else if !c.private.iter().any(|p| &**p == name) {
                c.private.push(name.as_str().into());
            }
        }
        for (i, rule) in f.doc.intents.iter().enumerate() {
            if let Some(rule) = c.rule(&mut r, &join_index("intents", i), rule) {
                intents.push(rule);
            }
        }
    }

    // Each subflow's entry, variables and contract, for its callers.
    for (u, (prefix, fi)) in units.iter().enumerate() {
        let f = &files[*fi];
        let mut r = Reporter {
            source: &f.source,
            out: diags,
        };
        c.prefix = prefix.clone();
        let entry = match &f.doc.start {
            Some(s) => c.state_ref(&mut r, "start", s),
            None => index
                .get(format!("{prefix}start").as_str())
                .copied()
                .or_else(|| {
                    order
                        .iter()
                        .position(|(o, _, _)| files[*o].unit == u)
                        .map(|i| i as StateId)
                }),
        };
        let mut vars = Vec::new();
        for g in files.iter().filter(|g| g.unit == u) {
            for (k, v) in &g.doc.vars {
                vars.push((Arc::from(k.as_str()), minijinja::Value::from_serialize(v)));
            }
        }
        let inputs = params(&mut r, "inputs", &f.doc.inputs);
        let outputs = params(&mut r, "outputs", &f.doc.outputs);
        c.units.push(Unit {
            name: prefix.trim_end_matches('/').into(),
            file: *fi,
            entry,
            vars,
            inputs,
            outputs,
        });
    }
    c.prefix.clear();

    let mut states = Vec::with_capacity(order.len());
    for (fi, name, st) in &order {
        let mut r = Reporter {
            source: &files[*fi].source,
            out: diags,
        };
        let f = &files[*fi];
        c.prefix.clone_from(&units[f.unit].0);
        c.calls.clone_from(&f.calls);
        let full = format!("{}{name}", c.prefix);
        let mut node = c.state(&mut r, *fi, name, st);
        node.name = full.as_str().into();
        node.unit = f.unit as u32;
        if let Some(call) = st.call.as_ref().filter(|x| x.flow.is_some()) {
            node.subflow = c.subflow(&mut r, files, name, call);
            if node.subflow.is_some() && st.next.is_none() {
                r.error(
                    &join_key(&join_key("states", name), "call"),
                    "a state that calls a subflow needs `next`: where the conversation goes when it returns",
                    Some("add `next: STATE` to this state".into()),
                );
            }
        }
        if let Some(ret) = &st.ret {
            node.ret = c.ret(&mut r, f.unit, name, ret, st);
        }
        states.push(node);
    }
    c.prefix.clear();
    let private = std::mem::take(&mut c.private);

    let flow = Flow {
        name: main.doc.name.clone().unwrap_or_else(|| {
            main.source
                .path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "flow".into())
        }),
        version: fingerprint(files),
        source_bytes: files.iter().map(|f| f.source.text.len()).sum(),
        regex_bytes: c.regex_bytes,
        files: files.iter().map(|f| f.source.path.clone()).collect(),
        start: start.unwrap_or(0),
        states,
        intents,
        settings,
        vars: Arc::new(vars),
        templates: c.templates,
        actions: c.actions,
        matchers: c.matchers,
        on_error,
        release,
        migrate,
        warnings: Diagnostics::default(),
        whatsapp_templates: c.used_templates,
        schedules,
        index,
        nlu,
        private,
    };

    // Graph checks, reported in the file of the state concerned.
    if let Some(cycle) = validate::next_loop(&flow) {
        let s = flow.state(cycle[0]);
        let names: Vec<&str> = cycle.iter().map(|&i| &*flow.state(i).name).collect();
        Reporter {
            source: &files[s.file].source,
            out: diags,
        }
        .error(
            &join_key(&join_key("states", &s.name), "next"),
            format!(
                "`next` loops without waiting: {} -> {}",
                names.join(" -> "),
                names[0]
            ),
            Some("let one of these states wait for the customer (`on`, `ask`) or end".into()),
        );
    }
    for id in validate::unreachable(&flow) {
        let s = flow.state(id);
        Reporter { source: &files[s.file].source, out: diags }.warning(
            &join_key("states", &s.name),
            format!("state `{}` is unreachable from `{}`", s.name, flow.state(flow.start).name),
            Some("point a rule's `goto` or a `next` at it, list it in the `jumps:` of an action that jumps here, or remove it".into()),
        );
    }
    for risk in validate::window_risks(&flow) {
        match risk {
            validate::WindowRisk::After {
                state,
                elapsed_ms,
                chain,
            } => {
                let s = flow.state(state);
                let through = if chain.len() > 1 {
                    let names: Vec<&str> = chain.iter().map(|&i| &*flow.state(i).name).collect();
                    format!(" (through the nudges of {})", names.join(" -> "))
                } else {
                    String::new()
                };
                Reporter { source: &files[s.file].source, out: diags }.warning(
                    &join_key(&join_key("states", &s.name), "after"),
                    format!(
                        "this nudge can come {} after the customer last wrote{through}: on WhatsApp, \
                         free-form messages are not sent after 24 hours",
                        hours(elapsed_ms)
                    ),
                    Some("add `template:` to this `after:` (an approved template, sent instead outside the window)".into()),
                );
            }
            validate::WindowRisk::Schedule { index, states } => {
                Reporter { source: &main.source, out: diags }.warning(
                    &join_index("schedules", index),
                    format!(
                        "this schedule starts conversations in `{}`, whose free-form messages are not \
                         sent on WhatsApp when the customer last wrote more than 24 hours before",
                        flow.state(states[0]).name
                    ),
                    Some(format!("give `{}` a `template:`", flow.state(states[0]).name)),
                );
            }
            validate::WindowRisk::Release { states } => {
                let (path, hint) = match states.first() {
                    Some(&first) => (
                        "release".to_owned(),
                        format!(
                            "give `{}` a `template:`, or set settings.handoff_timeout to 24h or less",
                            flow.state(first).name
                        ),
                    ),
                    None => (
                        "settings.release_message".to_owned(),
                        "add a `release:` state with a `template:`, or set settings.handoff_timeout to 24h or less".into(),
                    ),
                };
                Reporter {
                    source: &main.source,
                    out: diags,
                }
                .warning(
                    &path,
                    "a handoff can last more than 24 hours: on WhatsApp, the free-form messages \
                     of its release are not sent then",
                    Some(hint),
                );
            }
        }
    }
    Some(flow)
}

/// A duration in hours and minutes (`30h`, `25h 30m`).
fn hours(ms: u64) -> String {
    let minutes = ms / 60_000;
    match (minutes / 60, minutes % 60) {
        (h, 0) => format!("{h}h"),
        (h, m) => format!("{h}h {m}m"),
    }
}

/// FNV-1a over the sources: stable across builds and platforms.
fn fingerprint(files: &[Loaded]) -> u64 {
    fingerprint_of(files.iter().map(|f| &*f.source.text))
}

/// The fingerprint of sources given as their texts, in order.
pub(crate) fn fingerprint_of<'a>(texts: impl IntoIterator<Item = &'a str>) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for text in texts {
        for b in text.bytes().chain([0xff]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x100000001b3);
        }
    }
    h
}

struct Compiler<'a> {
    templates: Templates,
    index: &'a HashMap<Box<str>, StateId>,
    names: &'a HandlerNames,
    actions: Vec<Box<str>>,
    matchers: Vec<Box<str>>,
    adapt: bool,
    default_retries: u32,
    /// `settings.default_region`, for `phone` answers.
    region: Option<phonenumber::country::Id>,
    /// `settings.default_language`, for templates without a `language`.
    default_language: Option<Box<str>>,
    /// The templates named, once each.
    used_templates: Vec<Box<str>>,
    /// The variables that hold personal data (`pii`).
    private: Vec<Arc<str>>,
    /// Each variable an `ask` saves, and the first state that asks it.
    askers: indexmap::IndexMap<Box<str>, StateId>,
    /// The unit being compiled: its state names' prefix (`NAME/`).
    prefix: String,
    /// The subflows the file being compiled calls (as written, unit).
    calls: Vec<(String, usize)>,
    /// Every unit, for its callers.
    units: Vec<Unit>,
    /// What the compiled regexes keep, in bytes (for [`Flow::weight`]).
    regex_bytes: usize,
    /// Compiling an `http:` step: `secret.NAME` may be read.
    in_http: bool,
    /// The names of the `http:` steps so far.
    http_names: Vec<Box<str>>,
    /// `settings.http.allow`, for the hosts of `http:` steps' URLs.
    http_allow: Arc<crate::fetch::AllowList>,
    /// The intents of `nlu:`, for rules' `intent:`.
    intent_names: Vec<Box<str>>,
    /// `settings.endings` and `settings.typos`.
    endings: Option<bool>,
    typos: Option<u32>,
}

/// A flow as its callers see it.
#[derive(Clone)]
struct Unit {
    /// Its name (the prefix of its states).
    name: Box<str>,
    /// Its main file.
    file: usize,
    /// Its first state.
    entry: Option<StateId>,
    /// Its `vars:`.
    vars: crate::flow::template::VarList,
    /// Its inputs: name, type, default.
    inputs: Vec<(String, ParamKind, Option<serde_json::Value>)>,
    /// Its outputs: name, type.
    outputs: Vec<(String, ParamKind, Option<serde_json::Value>)>,
}

/// Each unit's state prefix (`""` for the main flow, `NAME/` for a
/// subflow) and main file. Two subflows of one name are an error.
fn unit_names(files: &[Loaded], diags: &mut Diagnostics) -> Vec<(String, usize)> {
    let mut out: Vec<(String, usize)> = Vec::new();
    for (fi, f) in files.iter().enumerate() {
        if f.unit < out.len() {
            continue;
        }
        if f.unit == 0 {
            out.push((String::new(), fi));
            continue;
        }
        let name = f.doc.name.clone().unwrap_or_else(|| {
            f.source
                .path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "subflow".into())
        });
        if out.iter().any(|(p, _)| p.trim_end_matches('/') == name) {
            Reporter {
                source: &f.source,
                out: diags,
            }
            .error(
                "name",
                format!("two subflows are named `{name}`"),
                Some("give this one its own `name:` (its states are named after it)".into()),
            );
        }
        out.push((format!("{name}/"), fi));
    }
    out
}

/// A subflow's `inputs:` or `outputs:`, checked.
fn params(
    r: &mut Reporter<'_>,
    key: &str,
    doc: &IndexMap<String, model::ParamDoc>,
) -> Vec<(String, ParamKind, Option<serde_json::Value>)> {
    let mut out = Vec::new();
    for (name, p) in doc {
        let path = join_key(key, name);
        if !is_identifier(name) {
            r.key_error(
                &path,
                format!("`{name}` is not a variable name"),
                Some("use letters, digits and _".into()),
            );
        }
        let kind = match p.kind.as_deref() {
            None | Some("any") => ParamKind::Any,
            Some("string") => ParamKind::String,
            Some("number") => ParamKind::Number,
            Some("boolean") => ParamKind::Boolean,
            Some(other) => {
                let hint = did_you_mean(other, ["string", "number", "boolean", "any"])
                    .map(|k| format!("did you mean `{k}`?"));
                r.error(
                    &path,
                    format!("unknown type `{other}`"),
                    hint.or_else(|| Some("use string, number, boolean or any".into())),
                );
                ParamKind::Any
            }
        };
        if key == "outputs" && p.default.is_some() {
            r.error(
                &join_key(&path, "default"),
                "an output has no default: `return:` gives it",
                None,
            );
        }
        out.push((name.clone(), kind, p.default.clone()));
    }
    out
}

/// Whether the node at `path` is a sequence (so its items have `[i]` paths).
fn is_seq(r: &Reporter<'_>, path: &str) -> bool {
    r.source
        .value_pos(&join_index(path, 0))
        .is_some_and(|p| Some(p) != r.source.value_pos(path))
}

fn intern(list: &mut Vec<Box<str>>, name: &str) -> u32 {
    if let Some(i) = list.iter().position(|n| &**n == name) {
        return i as u32;
    }
    list.push(name.into());
    (list.len() - 1) as u32
}

fn is_identifier(s: &str) -> bool {
    let mut c = s.chars();
    c.next().is_some_and(|f| f.is_alphabetic() || f == '_')
        && c.all(|x| x.is_alphanumeric() || x == '_')
}

/// A short human description of a rule's condition.
fn label(rule: &model::Rule) -> String {
    let mut parts = Vec::new();
    if let Some(b) = &rule.button {
        parts.push(format!("button: {b}"));
    }
    if let Some(l) = &rule.list {
        parts.push(format!("list: {l}"));
    }
    if let Some(t) = &rule.text {
        parts.push(format!("text: {}", t.0.join(" | ")));
    }
    if let Some(k) = &rule.keyword {
        parts.push(format!("keyword: {}", k.0.join(" | ")));
    }
    if let Some(re) = &rule.regex {
        parts.push(format!("regex: {re}"));
    }
    if let Some(m) = &rule.media {
        parts.push(format!("media: {m}"));
    }
    if let Some(n) = &rule.intent {
        parts.push(format!("intent: {n}"));
    }
    if let Some(w) = &rule.when {
        parts.push(format!("when: {w}"));
    }
    for (k, l) in [("any", &rule.any), ("all", &rule.all)] {
        if let Some(l) = l {
            let inner: Vec<String> = l.iter().map(label).collect();
            parts.push(format!("{k}({})", inner.join(", ")));
        }
    }
    if let Some(n) = &rule.not {
        parts.push(format!("not({})", label(n)));
    }
    if let Some(m) = &rule.matcher {
        parts.push(format!("match: {m}"));
    }
    parts.join(" + ")
}
