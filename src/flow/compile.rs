//! From documents to a [`Flow`]: names resolved to indexes, regexes and templates
//! compiled, synonyms normalized, limits checked, every problem reported.
//!
//! Compilation never stops at the first problem: each part is compiled on its own
//! and a broken part is reported and skipped, so one run lists everything wrong.

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
use super::{FlowLimits, HandlerNames, TemplateInfo};
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
        prefix: String::new(),
        calls: Vec::new(),
        units: Vec::new(),
        regex_bytes: 0,
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
    let settings = c.settings(&mut r, &settings_doc);
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
    let schedules: Vec<super::schedule::Schedule> = main
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
            Some("point a rule's `goto` or a `next` at it, or remove it (ignore this if an action jumps here)".into()),
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

impl Compiler<'_> {
    fn after(&mut self, r: &mut Reporter<'_>, path: &str, a: &model::After) -> Option<AfterNode> {
        let idle_ms = match a.idle.as_deref() {
            None => {
                r.error(
                    path,
                    "`after` needs `idle`: how long the customer is silent first",
                    Some("add `idle: 10m`".into()),
                );
                None
            }
            Some(t) => match humantime::parse_duration(t) {
                Ok(d) if !d.is_zero() => Some(d.as_millis() as u64),
                Ok(_) => {
                    r.error(
                        &join_key(path, "idle"),
                        "`idle` must be longer than 0s",
                        None,
                    );
                    None
                }
                Err(e) => {
                    r.error(
                        &join_key(path, "idle"),
                        format!("`{t}` is not a duration: {e}"),
                        Some("write it like `10m`, `1h` or `90s`".into()),
                    );
                    None
                }
            },
        };
        let say = a
            .say
            .as_ref()
            .map(|x| self.say(r, &join_key(path, "say"), x))
            .unwrap_or_default();
        let goto = match &a.goto {
            Some(g) => Some(self.state_ref(r, &join_key(path, "goto"), g)?),
            None => None,
        };
        if a.say.is_none() && a.goto.is_none() {
            r.error(
                path,
                "`after` needs `say`, `goto`, or both",
                Some("add `say:` with a nudge, or `goto: STATE`".into()),
            );
            return None;
        }
        let template = a
            .template
            .as_ref()
            .and_then(|t| self.template_node(r, &join_key(path, "template"), t));
        Some(AfterNode {
            idle_ms: idle_ms?,
            say,
            goto,
            template,
        })
    }

    /// One entry of `schedules:`.
    fn schedule(
        &mut self,
        r: &mut Reporter<'_>,
        path: &str,
        d: &model::ScheduleDoc,
    ) -> Option<super::schedule::Schedule> {
        use super::schedule::{Kind, Schedule};
        let p = |k: &str| join_key(path, k);
        if d.name.trim().is_empty() {
            r.error(&p("name"), "a schedule needs a `name`", None);
            return None;
        }
        let state = self.state_ref(r, &p("state"), &d.state);
        let zone = match d.timezone.as_deref() {
            None => Some(jiff::tz::TimeZone::UTC),
            Some(z) => match jiff::tz::TimeZone::get(z) {
                Ok(z) => Some(z),
                Err(_) => {
                    r.error(
                        &p("timezone"),
                        format!("`{z}` is not a time zone"),
                        Some("write an IANA zone, like `Europe/Istanbul`".into()),
                    );
                    None
                }
            },
        };
        let mode = match d.mode.as_deref() {
            None => Some(crate::message::StartMode::Skip),
            Some(m) => match m.parse() {
                Ok(m) => Some(m),
                Err(e) => {
                    r.error(&p("mode"), e, None);
                    None
                }
            },
        };
        let when = match &d.when {
            None => None,
            Some(w) => match self.templates.expression(w) {
                Ok(t) => Some(t),
                Err(e) => {
                    r.error(&p("when"), format!("invalid expression: {e}"), None);
                    return None;
                }
            },
        };
        let kind = match (&d.cron, &d.from) {
            (Some(expr), None) => {
                if d.after.is_some() || d.at.is_some() {
                    r.error(
                        path,
                        "`after` and `at` go with `from`, not with `cron`",
                        None,
                    );
                }
                match super::schedule::cron(expr) {
                    Ok(cron) => {
                        if let Some(warning) = super::schedule::outgrows_budget(&cron) {
                            r.warning(
                                &p("cron"),
                                warning,
                                Some("fire less often, or narrow it with `when:`".into()),
                            );
                        }
                        zone.clone().map(|zone| Kind::Cron {
                            cron: Box::new(cron),
                            zone,
                        })
                    }
                    Err(e) => {
                        r.error(
                            &p("cron"),
                            format!("`{expr}` is not a cron expression: {e}"),
                            Some(
                                "write minute, hour, day, month and weekday, like `0 10 * * MON`"
                                    .into(),
                            ),
                        );
                        None
                    }
                }
            }
            (None, Some(var)) => {
                let after_ms = match d.after.as_deref().map(humantime::parse_duration) {
                    None => Some(0),
                    Some(Ok(d)) => Some(d.as_millis() as i64),
                    Some(Err(e)) => {
                        r.error(
                            &p("after"),
                            format!("not a duration: {e}"),
                            Some("write it like `2d` or `36h`".into()),
                        );
                        None
                    }
                };
                let at = match d.at.as_deref() {
                    None => Some(None),
                    Some(t) => match t.parse::<jiff::civil::Time>() {
                        Ok(t) => Some(Some(t)),
                        Err(_) => {
                            r.error(
                                &p("at"),
                                format!("`{t}` is not a time of day"),
                                Some("write it like `10:00`".into()),
                            );
                            None
                        }
                    },
                };
                match (after_ms, at, zone.clone()) {
                    (Some(after_ms), Some(at), Some(zone)) => Some(Kind::Offset {
                        var: var.as_str().into(),
                        after_ms,
                        at,
                        zone,
                    }),
                    _ => None,
                }
            }
            _ => {
                r.error(
                    path,
                    "a schedule has either `cron` or `from` (a variable holding a date)",
                    Some(
                        "`cron: \"0 10 * * MON\"`, or `from: delivery_date` with `after: 2d`"
                            .into(),
                    ),
                );
                None
            }
        };
        Some(Schedule {
            name: d.name.as_str().into(),
            state: state?,
            when,
            mode: mode?,
            kind: kind?,
        })
    }

    /// A WhatsApp template message, checked against the account's approved
    /// templates when they are known.
    fn template_node(
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

    /// A state named in the unit being compiled (a subflow's states see
    /// only each other).
    fn state_ref(&self, r: &mut Reporter<'_>, path: &str, name: &str) -> Option<StateId> {
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

    fn settings(&mut self, r: &mut Reporter<'_>, s: &model::Settings) -> FlowSettings {
        let duration = |r: &mut Reporter<'_>, key: &str, t: &Option<String>| {
            t.as_ref().and_then(|t| match humantime::parse_duration(t) {
                Ok(d) => Some(d.as_millis() as u64),
                Err(e) => {
                    r.error(
                        key,
                        format!("`{t}` is not a duration: {e}"),
                        Some("write it like `30m`, `2h` or `1h 30m`".into()),
                    );
                    None
                }
            })
        };
        let session_timeout_ms = duration(r, "settings.session_timeout", &s.session_timeout);
        let handoff_timeout_ms = duration(r, "settings.handoff_timeout", &s.handoff_timeout);
        let overflow_adapt = match s.overflow.as_deref() {
            None | Some("error") => false,
            Some("adapt") => true,
            Some(other) => {
                r.error(
                    "settings.overflow",
                    format!("unknown overflow mode `{other}`"),
                    Some("use `error` (the default) or `adapt`".into()),
                );
                false
            }
        };
        self.adapt = overflow_adapt;
        self.region = s.default_region.as_deref().and_then(|code| {
            match code
                .to_ascii_uppercase()
                .parse::<phonenumber::country::Id>()
            {
                Ok(id) => Some(id),
                Err(_) => {
                    r.error(
                        "settings.default_region",
                        format!("`{code}` is not a region"),
                        Some("write a two-letter country code, like `TR`, `DE` or `US`".into()),
                    );
                    None
                }
            }
        });
        FlowSettings {
            session_timeout_ms,
            retries: s.retries.unwrap_or(1),
            numbered_fallback: s.numbered_fallback.unwrap_or(true),
            fallback: s
                .fallback
                .as_ref()
                .map(|f| self.fallback(r, "settings.fallback", f)),
            default_language: s.default_language.as_deref().map(Into::into),
            overflow_adapt,
            error_message: s
                .error_message
                .as_ref()
                .and_then(|t| self.ltext(r, "settings.error_message", t)),
            restart_message: s
                .restart_message
                .as_ref()
                .and_then(|t| self.ltext(r, "settings.restart_message", t)),
            release_message: s
                .release_message
                .as_ref()
                .and_then(|t| self.ltext(r, "settings.release_message", t)),
            handoff_failed_message: s
                .handoff_failed_message
                .as_ref()
                .and_then(|t| self.ltext(r, "settings.handoff_failed_message", t)),
            handoff_timeout_ms,
            overflow_button: s.overflow_button.as_ref().and_then(|t| {
                validate::check_len(
                    r,
                    "settings.overflow_button",
                    t,
                    validate::limits::LIST_BUTTON,
                    "the list button",
                );
                self.ltext(r, "settings.overflow_button", t)
            }),
        }
    }

    fn state(
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
        let next = s
            .next
            .as_ref()
            .and_then(|n| self.state_ref(r, &p("next"), n));
        let set = self.sets(r, &p("set"), &s.set);
        let call = s.call.as_ref().and_then(|c| self.call(r, &p("call"), c));
        let on_error = s
            .on_error
            .as_ref()
            .and_then(|n| self.state_ref(r, &p("on_error"), n));
        let after = s.after.as_ref().and_then(|a| self.after(r, &p("after"), a));
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
            name: name.into(),
            say,
            ask,
            on,
            fallback,
            next,
            set,
            call,
            end: s.end,
            handoff: s.handoff,
            intents: s.intents.unwrap_or(true),
            after,
            template,
            on_error,
            file,
            unit: 0,
            subflow: None,
            ret: None,
        }
    }

    /// `call: { flow, with, returns }`, checked against the subflow's
    /// contract: every problem is reported at the call, naming where the
    /// subflow declares what it takes and gives.
    fn subflow(
        &mut self,
        r: &mut Reporter<'_>,
        files: &[Loaded],
        state: &str,
        c: &model::Call,
    ) -> Option<SubflowCall> {
        let path = join_key(&join_key("states", state), "call");
        let written = c.flow.as_deref()?;
        // A file that could not be read or called is reported already.
        let &(_, u) = self.calls.iter().find(|(w, _)| w == written)?;
        let unit = self.units.get(u)?.clone();
        let child = &files[unit.file];
        let at = |key: &str| {
            let pos = child.source.key_pos(key);
            format!(
                "{}:{}",
                child.source.path.display(),
                pos.map_or(1, |p| p.line)
            )
        };
        let mut ok = true;
        for key in c.with.keys() {
            if !unit.inputs.iter().any(|(n, _, _)| n == key) {
                let known: Vec<&str> = unit.inputs.iter().map(|(n, _, _)| n.as_str()).collect();
                let hint = did_you_mean(key, known.iter().copied())
                    .map(|k| format!("did you mean `{k}`?"))
                    .unwrap_or_else(|| {
                        format!(
                            "its inputs: {}",
                            if known.is_empty() {
                                "none".into()
                            } else {
                                known.join(", ")
                            }
                        )
                    });
                r.key_error(
                    &join_key(&join_key(&path, "with"), key),
                    format!(
                        "subflow `{}` has no input `{key}` (its inputs are declared at {})",
                        unit.name,
                        at("inputs")
                    ),
                    Some(hint),
                );
                ok = false;
            }
        }
        for (name, _, default) in &unit.inputs {
            if default.is_none() && !c.with.contains_key(name) {
                r.error(
                    &path,
                    format!(
                        "subflow `{}` needs the input `{name}` (declared at {})",
                        unit.name,
                        at(&join_key("inputs", name))
                    ),
                    Some(format!(
                        "add `with: {{ {name}: ... }}`, or give the input a `default:`"
                    )),
                );
                ok = false;
            }
        }
        for (i, name) in c.returns.iter().enumerate() {
            if !unit.outputs.iter().any(|(n, _, _)| n == name) {
                let known: Vec<&str> = unit.outputs.iter().map(|(n, _, _)| n.as_str()).collect();
                let hint = did_you_mean(name, known.iter().copied())
                    .map(|k| format!("did you mean `{k}`?"))
                    .unwrap_or_else(|| {
                        format!(
                            "its outputs: {}",
                            if known.is_empty() {
                                "none".into()
                            } else {
                                known.join(", ")
                            }
                        )
                    });
                r.error(
                    &join_index(&join_key(&path, "returns"), i),
                    format!(
                        "subflow `{}` has no output `{name}`: renamed or removed? (its outputs are declared at {})",
                        unit.name,
                        at("outputs")
                    ),
                    Some(hint),
                );
                ok = false;
            }
        }
        let mut defaults = unit.vars.clone();
        let mut inputs = Vec::new();
        for (name, kind, default) in &unit.inputs {
            match c.with.get(name) {
                Some(t) => {
                    let tpl = self.template(r, &join_key(&join_key(&path, "with"), name), t);
                    ok &= tpl.is_some();
                    inputs.push((Arc::from(name.as_str()), *kind, tpl));
                }
                None => {
                    if let Some(d) = default {
                        defaults.push((
                            Arc::from(name.as_str()),
                            minijinja::Value::from_serialize(d),
                        ));
                    }
                }
            }
        }
        let entry = unit.entry?;
        ok.then(|| SubflowCall {
            unit: u as u32,
            name: unit.name.as_ref().into(),
            entry,
            defaults: Arc::new(defaults),
            inputs,
            returns: c.returns.iter().map(|n| Arc::from(n.as_str())).collect(),
        })
    }

    /// `return:`, checked against the unit's declared outputs.
    fn ret(
        &mut self,
        r: &mut Reporter<'_>,
        unit: usize,
        state: &str,
        ret: &model::ReturnDoc,
        st: &model::State,
    ) -> Option<ReturnNode> {
        let path = join_key(&join_key("states", state), "return");
        for (key, set) in [
            ("next", st.next.is_some()),
            ("ask", st.ask.is_some()),
            ("end", st.end),
            ("handoff", st.handoff),
        ] {
            if set {
                r.key_error(
                    &join_key(&join_key("states", state), key),
                    format!("a state that returns cannot also have `{key}`: the caller's `next` follows"),
                    None,
                );
            }
        }
        let outputs = self
            .units
            .get(unit)
            .map(|u| u.outputs.clone())
            .unwrap_or_default();
        match ret {
            model::ReturnDoc::Vars(false) => None,
            model::ReturnDoc::Vars(true) => Some(ReturnNode {
                outputs: outputs
                    .iter()
                    .map(|(n, k, _)| (Arc::from(n.as_str()), *k, None))
                    .collect(),
            }),
            model::ReturnDoc::Values(values) => {
                let mut out = Vec::new();
                for (name, kind, _) in &outputs {
                    match values.get(name) {
                        Some(t) => {
                            let tpl = self.template(r, &join_key(&path, name), t);
                            out.push((Arc::from(name.as_str()), *kind, tpl));
                        }
                        None => r.error(
                            &path,
                            format!("the output `{name}` is not returned"),
                            Some(format!("add `{name}: \"{{{{ ... }}}}\"` to `return:`, or remove it from `outputs:`")),
                        ),
                    }
                }
                for key in values.keys() {
                    if !outputs.iter().any(|(n, _, _)| n == key) {
                        r.key_error(
                            &join_key(&path, key),
                            format!("`{key}` is not a declared output"),
                            Some("declare it under `outputs:` first".into()),
                        );
                    }
                }
                Some(ReturnNode { outputs: out })
            }
        }
    }

    fn sets(
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

    fn call(&mut self, r: &mut Reporter<'_>, path: &str, c: &model::Call) -> Option<CallNode> {
        let name = match (&c.action, &c.flow) {
            (Some(a), None) => a,
            (None, Some(_)) => {
                for (key, set) in [("args", !c.args.is_empty())] {
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
            let hint = did_you_mean(name, self.names.actions.iter().map(String::as_str))
                .map(|s| format!("did you mean `{s}`?"))
                .unwrap_or_else(|| "register it with `Registry::action` in your binary".into());
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
        Some(CallNode { action, args })
    }

    fn ask(&mut self, r: &mut Reporter<'_>, path: &str, a: &model::Ask) -> Option<AskNode> {
        let p = |k: &str| join_key(path, k);
        let text = a.text.as_ref().and_then(|t| self.ltext(r, &p("text"), t));
        if a.text.is_none() {
            r.error(path, "`ask` needs a `text`: the question", None);
        }
        if !a.quick_replies.is_empty() {
            validate::check_quick_replies(r, &p("quick_replies"), &a.quick_replies, self.adapt);
        }
        let quick_replies = self.choices(r, &p("quick_replies"), &a.quick_replies);
        let save = match &a.save {
            Some(s) if is_identifier(s) => Arc::from(s.as_str()),
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

    fn check(&mut self, r: &mut Reporter<'_>, path: &str, v: &model::Validate) -> Option<Check> {
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

    fn regex(&mut self, r: &mut Reporter<'_>, path: &str, src: &str) -> Option<Regex> {
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

    fn fallback(&mut self, r: &mut Reporter<'_>, path: &str, f: &model::Fallback) -> FallbackNode {
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

    fn rule(&mut self, r: &mut Reporter<'_>, path: &str, rule: &model::Rule) -> Option<RuleNode> {
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
    fn cond(
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
        if let Some(t) = &rule.text {
            let syn: Vec<Box<str>> = t.0.iter().map(|s| normalize(s).into()).collect();
            if syn.iter().any(|s| s.is_empty()) {
                r.error(&p("text"), "an empty synonym never matches", None);
            }
            conds.push(Cond::Text(syn));
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
            conds.push(Cond::Keyword(phrases));
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
                    Some("use button, list, text, keyword, regex, media, when, any, all, not or match (for \"anything else\", use `fallback`)".into()),
                );
                None
            }
            1 => conds.pop(),
            _ => Some(Cond::All(conds)),
        }
    }

    fn template(&mut self, r: &mut Reporter<'_>, path: &str, src: &str) -> Option<Tpl> {
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

    fn ltext(&mut self, r: &mut Reporter<'_>, path: &str, t: &Text) -> Option<LText> {
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

    fn choices(
        &mut self,
        r: &mut Reporter<'_>,
        path: &str,
        cs: &[model::ChoiceDoc],
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
                })
            })
            .collect()
    }

    fn say(&mut self, r: &mut Reporter<'_>, path: &str, say: &model::Say) -> Vec<MsgNode> {
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

    fn message(
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
        if let Some(list) = &rich.list {
            validate::check_list(r, &p("list"), list, self.adapt);
            let lp = p("list");
            let l = |k: &str| join_key(&lp, k);
            let mut sections = Vec::new();
            for (si, s) in list.sections.iter().enumerate() {
                let sp = join_index(&l("sections"), si);
                let title = match &s.title {
                    Some(t) => Some(self.ltext(r, &join_key(&sp, "title"), t)?),
                    None => None,
                };
                sections.push((title, self.choices(r, &join_key(&sp, "rows"), &s.rows)));
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
        let quick_replies = match &rich.quick_replies {
            Some(q) => {
                validate::check_quick_replies(r, &p("quick_replies"), q, self.adapt);
                self.choices(r, &p("quick_replies"), q)
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
