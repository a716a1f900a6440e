//! The flow language as written: serde types that mirror the YAML one to one.
//!
//! These types only describe the document; they check nothing beyond its shape.
//! Meaning (states that exist, limits, regexes, templates) is checked by
//! `validate` and `compile`, which turn a document into a
//! [`Flow`](super::Flow). Fields accept the short forms people write: one string
//! or a list (`text: menu` / `text: [menu, start over]`), one message or a list in
//! `say`, a plain string or a map of languages for any visible text. Those forms are
//! written as small visitors instead of `#[serde(untagged)]`, so that an error in
//! them still reports the exact path and position, and unknown keys inside them are
//! still found.

use indexmap::IndexMap;
use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
use std::borrow::Cow;
use std::fmt;

/// Free-form value (variable defaults, action arguments): YAML scalars, lists, maps.
pub type Value = serde_json::Value;

/// One flow file.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields, title = "flowbot flow")]
pub struct FlowDoc {
    /// Language version; only 1 exists.
    pub version: Option<u32>,
    /// The flow's name.
    pub name: Option<String>,
    /// The first state.
    pub start: Option<String>,
    /// Other files whose states, intents and variables join this flow.
    #[serde(default)]
    pub include: Vec<String>,
    /// Flow-wide settings.
    #[serde(default)]
    pub settings: Option<Settings>,
    /// Variable defaults, visible in templates.
    #[serde(default)]
    pub vars: IndexMap<String, Value>,
    /// Variables that hold personal data (set by rules or actions; an
    /// `ask` marks its own with `pii: true`): never in the event log,
    /// reports or the debug view, masked in transcripts.
    #[serde(default)]
    pub pii: Vec<String>,
    /// Global rules, tried before each state's own.
    #[serde(default)]
    pub intents: Vec<Rule>,
    /// The states, by name.
    #[serde(default)]
    pub states: IndexMap<String, State>,
    /// Where a failed action leads when its state names no `on_error`.
    pub on_error: Option<String>,
    /// Where a conversation goes when a person hands it back (else it starts
    /// over at `start` with the customer's next message).
    pub release: Option<String>,
    /// After a change of the flow, where conversations in states that were
    /// renamed or removed go on: old state name -> state.
    #[serde(default)]
    pub migrate: IndexMap<String, String>,
    /// Business hours, by name: `when: "open('support')"`.
    #[serde(default)]
    pub calendars: IndexMap<String, CalendarDoc>,
    /// Free text understood: intents learned from examples, matched by
    /// rules with `intent:`.
    pub nlu: Option<NluDoc>,
    /// Starts the bot makes on its own: on a cron schedule, or at a time
    /// computed from a variable (two days after `delivery_date`).
    #[serde(default)]
    pub schedules: Vec<ScheduleDoc>,
    /// A subflow's inputs: the variables a caller gives it (`call: { flow,
    /// with }`), by name, with their type.
    #[serde(default)]
    pub inputs: IndexMap<String, ParamDoc>,
    /// A subflow's outputs: the variables it gives back (`return:`), by
    /// name, with their type.
    #[serde(default)]
    pub outputs: IndexMap<String, ParamDoc>,
}

/// One input or output of a subflow: its type (`string`, `number`,
/// `boolean`, `any`), or a map with `type`, `default` and `description`.
#[derive(Debug, Clone, Default)]
pub struct ParamDoc {
    /// `string`, `number`, `boolean` or `any` (default).
    pub kind: Option<String>,
    /// An input's value when the caller gives none (the input is then
    /// optional).
    pub default: Option<Value>,
    /// What it is.
    pub description: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ParamFields {
    #[serde(rename = "type")]
    kind: Option<String>,
    default: Option<Value>,
    description: Option<String>,
}

impl<'de> Deserialize<'de> for ParamDoc {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ParamDoc;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a type (string, number, boolean, any) or a map with type, default and description")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ParamDoc, E> {
                Ok(ParamDoc {
                    kind: Some(v.to_owned()),
                    ..ParamDoc::default()
                })
            }
            fn visit_unit<E: de::Error>(self) -> Result<ParamDoc, E> {
                Ok(ParamDoc::default())
            }
            fn visit_map<A: MapAccess<'de>>(self, m: A) -> Result<ParamDoc, A::Error> {
                let f = ParamFields::deserialize(de::value::MapAccessDeserializer::new(m))?;
                Ok(ParamDoc {
                    kind: f.kind,
                    default: f.default,
                    description: f.description,
                })
            }
        }
        d.deserialize_any(V)
    }
}

impl JsonSchema for ParamDoc {
    fn schema_name() -> Cow<'static, str> {
        "ParamDoc".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        let kind = json_schema!({ "enum": ["string", "number", "boolean", "any"] });
        json_schema!({
            "description": "A subflow's input or output: its type, or a map with type, default and description.",
            "anyOf": [
                kind,
                { "type": "null" },
                {
                    "type": "object",
                    "additionalProperties": false,
                    "properties": {
                        "type": kind,
                        "default": { "description": "An input's value when the caller gives none (the input is then optional)." },
                        "description": { "type": "string" }
                    }
                }
            ]
        })
    }
}

/// `return:` of a subflow's state: `true` (the outputs, from the variables of
/// their names) or a map of outputs to templates.
#[derive(Debug, Clone)]
pub enum ReturnDoc {
    /// `true`: each output from the variable of its name.
    Vars(bool),
    /// Each output from a template.
    Values(IndexMap<String, String>),
}

impl<'de> Deserialize<'de> for ReturnDoc {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ReturnDoc;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("true, or a map of outputs to templates")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<ReturnDoc, E> {
                Ok(ReturnDoc::Vars(v))
            }
            fn visit_map<A: MapAccess<'de>>(self, m: A) -> Result<ReturnDoc, A::Error> {
                IndexMap::<String, String>::deserialize(de::value::MapAccessDeserializer::new(m))
                    .map(ReturnDoc::Values)
            }
        }
        d.deserialize_any(V)
    }
}

impl JsonSchema for ReturnDoc {
    fn schema_name() -> Cow<'static, str> {
        "ReturnDoc".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "The end of a subflow: `true` (each output from the variable of its name) or a map of outputs to templates.",
            "anyOf": [
                { "type": "boolean" },
                { "type": "object", "additionalProperties": { "type": "string" } }
            ]
        })
    }
}

/// One entry of `schedules:`.
#[derive(Debug, Default, Clone, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct ScheduleDoc {
    /// Its name (unique; it keys each firing, so each fires once).
    pub name: String,
    /// The state the conversation is started in.
    pub state: String,
    /// A cron expression (`0 10 * * MON`: minute, hour, day, month,
    /// weekday), in `timezone`.
    pub cron: Option<String>,
    /// A variable holding a date (`2026-03-01`) or a time (RFC 3339).
    pub from: Option<String>,
    /// How long after `from` (`2d`, `36h`).
    pub after: Option<String>,
    /// The time of day (`10:00`, in `timezone`) on the day `from` + `after`
    /// falls on.
    pub at: Option<String>,
    /// The IANA zone of `cron` and `at` (default UTC).
    pub timezone: Option<String>,
    /// Which conversations: an expression over their variables.
    pub when: Option<String>,
    /// `interrupt`, `skip` (default) or `queue`: what happens to a
    /// conversation in progress.
    pub mode: Option<String>,
}

/// One calendar of `calendars:`.
#[derive(Debug, Default, Clone, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct CalendarDoc {
    /// Its IANA time zone (`Europe/Istanbul`).
    pub timezone: String,
    /// Opening hours: weekdays (`mon-fri`, `sat`, `daily`) to ranges
    /// (`09:00-18:00`, a list of them, or `closed`).
    #[serde(default)]
    pub hours: IndexMap<String, OneOrMany>,
    /// Days closed all day (`2026-12-31`).
    #[serde(default)]
    pub holidays: Vec<String>,
    /// One-off closures, in local time.
    #[serde(default)]
    pub closed: Vec<ClosureDoc>,
}

/// A one-off closure of a calendar.
#[derive(Debug, Default, Clone, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct ClosureDoc {
    /// Its start (`2026-12-31T14:00`, local time).
    pub from: String,
    /// Its end.
    pub to: String,
}

/// `settings:`.
#[derive(Debug, Default, Clone, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Settings {
    /// Inactivity after which the next message starts over (`30m`, `2h`).
    pub session_timeout: Option<String>,
    /// Default number of re-asks for `ask`.
    pub retries: Option<u32>,
    /// Render options as numbered text where the channel has no buttons.
    pub numbered_fallback: Option<bool>,
    /// Default answer when no rule matches.
    pub fallback: Option<Fallback>,
    /// Language used when the contact's is unknown or not offered.
    pub default_language: Option<String>,
    /// The country whose numbering plan reads a phone number written without
    /// its country code (`TR`: "0532 123 45 67" is +905321234567).
    pub default_region: Option<String>,
    /// `error` (default) or `adapt`: what to do with more options than a channel shows.
    pub overflow: Option<String>,
    /// The button of the list `overflow: adapt` makes (default: "Options" in
    /// the conversation's language, for the common ones).
    pub overflow_button: Option<Text>,
    /// Sent when an action fails and no `on_error` state is set.
    pub error_message: Option<Text>,
    /// Sent when a changed flow no longer has a conversation's state (and
    /// `migrate:` does not place it): the conversation starts over after it.
    pub restart_message: Option<Text>,
    /// Sent when a handoff ends (the agent left, the conversation was closed,
    /// `handoff_timeout` passed, or it was released by hand).
    pub release_message: Option<Text>,
    /// Sent when Qpien refuses the handoff for good: the bot stays in service.
    pub handoff_failed_message: Option<Text>,
    /// Longest a conversation stays with a person before the bot takes it
    /// back, whatever Qpien says (`4h`).
    pub handoff_timeout: Option<String>,
    /// What the flow's `http:` steps may call.
    pub http: Option<HttpSettings>,
    /// Every `keyword:` and `text:` rule accepts words that go on after the
    /// written one (a rule's own `endings:` wins).
    pub endings: Option<bool>,
    /// Every `keyword:` and `text:` rule accepts this many typos per word
    /// of 4 letters or more (a rule's own `typos:` wins).
    pub typos: Option<u32>,
}

/// `nlu:`: intents learned from examples when the flow loads.
#[derive(Debug, Default, Clone, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct NluDoc {
    /// The intents, by name.
    #[serde(default)]
    pub intents: IndexMap<String, IntentDoc>,
    /// The score (0 to 1) below which no intent matches (default 0.5).
    pub threshold: Option<f32>,
    /// The least lead of the best intent over the next (default 0.02):
    /// closer than that, no intent matches.
    pub margin: Option<f32>,
    /// What to say when no intent is sure but some are likely (for every
    /// state that does not say otherwise).
    pub not_sure: Option<NotSureDoc>,
}

/// One intent of `nlu:`.
#[derive(Debug, Default, Clone, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct IntentDoc {
    /// Phrases that mean it: a list, or lists by language (`{ en: [..], tr:
    /// [..] }`); every one is learned from, whatever the conversation's
    /// language.
    pub examples: Examples,
    /// How a "did you mean" button names it (default: its name, spaced).
    pub title: Option<Text>,
}

/// An intent's examples: one list, or lists by language.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Examples {
    /// Shared by every language.
    All(Vec<String>),
    /// By language.
    ByLanguage(IndexMap<String, Vec<String>>),
}

impl Default for Examples {
    fn default() -> Self {
        Examples::All(Vec::new())
    }
}

/// `not_sure:`: offered when no intent is sure but some are likely.
#[derive(Debug, Default, Clone, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct NotSureDoc {
    /// The question (`Did you mean:`), sent with the likeliest intents as
    /// buttons; a tap counts as that intent.
    pub say: Text,
    /// How many intents to offer (default 2).
    pub offer: Option<u32>,
}

/// `settings.http`.
#[derive(Debug, Default, Clone, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct HttpSettings {
    /// The hosts the flow's `http:` steps may call: a name
    /// (`api.example.com`), a wildcard for its subdomains (`*.example.com`),
    /// or an address or network (`203.0.113.7`, `10.0.0.0/8`). Loopback,
    /// private, link-local and metadata addresses are refused unless listed
    /// as addresses, whatever a name resolves to.
    #[serde(default)]
    pub allow: Vec<String>,
}

/// `http:` of a state: a request made on entry (after `call`, before
/// `set`). Its strings are templates; `{{ secret.NAME }}` may be used in the
/// URL, query, headers and body only.
#[derive(Debug, Default, Clone, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct HttpDoc {
    /// Its name, for tests' `mocks:` and logs (default: the state's name).
    pub name: Option<String>,
    /// `GET` (the default, `POST` with `json`), `POST`, `PUT`, `PATCH`,
    /// `DELETE` or `HEAD`.
    pub method: Option<String>,
    /// The URL (`https://api.example.com/orders/{{ order_id }}`); its host
    /// must be in `settings.http.allow` or the process's `http.allow`.
    pub url: String,
    /// Query parameters, encoded and added to the URL.
    #[serde(default)]
    pub query: IndexMap<String, String>,
    /// Headers (`Authorization: "Bearer {{ secret.SHOP_TOKEN }}"`).
    #[serde(default)]
    pub headers: IndexMap<String, String>,
    /// A JSON body; its strings are templates, and a string that is one
    /// `{{ variable }}` keeps the variable's type (a number stays a number).
    pub json: Option<Value>,
    /// How long to wait for the answer (default `5s`, at most `30s`).
    pub timeout: Option<String>,
    /// How many times a `GET`, `HEAD`, `PUT` or `DELETE` is tried again
    /// after a timeout, a connection error or a 429/502/503/504 (default 1,
    /// at most 3); other methods are never repeated.
    pub retries: Option<u32>,
    /// Variables set from the JSON answer, by JSON pointer: `{ eta:
    /// /delivery/eta }`; `""` is the whole answer. A pointer to nothing
    /// sets the variable to none.
    #[serde(default)]
    pub save: IndexMap<String, String>,
    /// A variable set to the answer's status (0 when none came), whether it
    /// succeeded or not.
    pub status: Option<String>,
    /// Where the conversation goes when the request fails (a status that is
    /// not 2xx, a timeout, an answer that is not JSON or too large, a host
    /// refused); default: the state's `on_error`, then the flow's.
    pub on_error: Option<String>,
}

/// One state.
#[derive(Debug, Default, Clone, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct State {
    /// Messages sent on entry.
    pub say: Option<Say>,
    /// A question whose answer is captured.
    pub ask: Option<Ask>,
    /// Rules for the next message, in order.
    #[serde(default)]
    pub on: Vec<Rule>,
    /// What to do when no rule matches.
    pub fallback: Option<Fallback>,
    /// The state that follows at once (or after a valid answer to `ask`),
    /// or branches: `[{ when: "open('support')", goto: person }, { goto:
    /// closed }]`, the first whose `when:` holds (one without `when:`
    /// always does).
    pub next: Option<Next>,
    /// Variables set on entry, from templates.
    #[serde(default)]
    pub set: IndexMap<String, String>,
    /// A Rust action run on entry.
    pub call: Option<Call>,
    /// An HTTP request made on entry, after `call`.
    pub http: Option<HttpDoc>,
    /// Whether the conversation ends here.
    #[serde(default)]
    pub end: bool,
    /// With `end: true`: the outcome reports give a run that ends here
    /// (`resolved` by default; `failed`, or a name of the flow's own such as
    /// `order_placed`).
    pub outcome: Option<String>,
    /// Whether a person takes over here.
    #[serde(default)]
    pub handoff: bool,
    /// `false`: global intents are not tried in this state.
    pub intents: Option<bool>,
    /// Where a failed action of this state leads.
    pub on_error: Option<String>,
    /// When no intent is sure but some are likely, in this state (over
    /// `nlu.not_sure`).
    pub not_sure: Option<NotSureDoc>,
    /// An A/B split: `{ short_intro: 70, long_intro: 30 }`, the state each
    /// conversation goes on to, by weight, the same one every time for a
    /// conversation (chosen from its id), kept in the variable
    /// `<state>_variant`.
    pub split: Option<IndexMap<String, u32>>,
    /// A nudge when the customer stays silent in this state.
    pub after: Option<After>,
    /// On WhatsApp, what is sent instead of this state's messages when the
    /// customer last wrote more than 24 hours ago (free-form messages are
    /// refused then).
    pub template: Option<TemplateDoc>,
    /// In a subflow: it ends here and gives its outputs back to the caller.
    #[serde(rename = "return")]
    pub ret: Option<ReturnDoc>,
}

/// A WhatsApp template message: an approved template, by name.
#[derive(Debug, Default, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TemplateDoc {
    /// The template's name, as approved in the WhatsApp Business account.
    pub name: String,
    /// Its language code as approved (`en`, `tr`, `pt_BR`); default:
    /// `settings.default_language`.
    pub language: Option<String>,
    /// The values of `{{1}}`, `{{2}}`..., each a template over the variables.
    #[serde(default)]
    pub params: Vec<String>,
}

/// `after:` of a state: what happens when the customer is silent for a while.
#[derive(Debug, Default, Clone, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct After {
    /// How long the silence lasts first (`10m`, `1h`).
    pub idle: Option<String>,
    /// Sent when it fires.
    pub say: Option<Say>,
    /// Where the conversation goes then (else it stays).
    pub goto: Option<String>,
    /// On WhatsApp, sent instead of `say` when the customer last wrote more
    /// than 24 hours before the nudge.
    pub template: Option<TemplateDoc>,
}

/// A rule: conditions, and what follows when they hold.
///
/// Several condition keys in one rule must all hold.
#[derive(Debug, Default, Clone, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Rule {
    /// The quick-reply button id tapped.
    pub button: Option<String>,
    /// The list row id picked.
    pub list: Option<String>,
    /// The whole message is one of these (case- and accent-insensitive).
    pub text: Option<OneOrMany>,
    /// The message contains one of these words or phrases.
    pub keyword: Option<OneOrMany>,
    /// The message matches this regex; named captures become variables.
    pub regex: Option<String>,
    /// The message carries media of this kind (`any` for any kind).
    pub media: Option<String>,
    /// An expression over variables.
    pub when: Option<String>,
    /// Any of these sub-rules holds.
    pub any: Option<Vec<Rule>>,
    /// All of these sub-rules hold.
    pub all: Option<Vec<Rule>>,
    /// This sub-rule does not hold.
    pub not: Option<Box<Rule>>,
    /// A Rust matcher by name.
    #[serde(rename = "match")]
    pub matcher: Option<String>,
    /// An intent of `nlu:`, as the message is classified.
    pub intent: Option<String>,
    /// `keyword:` and `text:` accept words that go on after the written
    /// one (`şikayet` matches `şikayetim`).
    pub endings: Option<bool>,
    /// `keyword:` and `text:` accept this many typos per word (words of 4
    /// letters or more; 0 to 2).
    pub typos: Option<u32>,
    /// Sent when the rule fires, before the target state's messages.
    pub say: Option<Say>,
    /// The state to go to.
    pub goto: Option<String>,
    /// Variables set when the rule fires.
    #[serde(default)]
    pub set: IndexMap<String, String>,
    /// A digression: after `say`, the pending question is asked again (its
    /// retry count kept) instead of going anywhere.
    pub resume: Option<bool>,
    /// A correction of an earlier answer ("no, my number is ..."): the
    /// variable, taken from the capture of that name (else the whole
    /// message), is checked as the question that saves it checks it, saved,
    /// and the pending question asked again.
    pub correct: Option<String>,
    /// Forget answers: `true` for every variable a question saves, or a
    /// list of names.
    pub cancel: Option<Cancel>,
}

/// `cancel:` of a rule: `true` (every answer) or the variables to forget.
#[derive(Debug, Clone)]
pub enum Cancel {
    /// `true`: every variable an `ask` saves; `false`: none.
    All(bool),
    /// These variables.
    Only(Vec<String>),
}

impl<'de> Deserialize<'de> for Cancel {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Cancel;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("true (every answer) or a list of variable names")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Cancel, E> {
                Ok(Cancel::All(v))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, s: A) -> Result<Cancel, A::Error> {
                Vec::<String>::deserialize(de::value::SeqAccessDeserializer::new(s))
                    .map(Cancel::Only)
            }
        }
        d.deserialize_any(V)
    }
}

impl JsonSchema for Cancel {
    fn schema_name() -> Cow<'static, str> {
        "Cancel".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "Forget answers: `true` for every variable a question saves, or a list of names.",
            "anyOf": [
                { "type": "boolean" },
                { "type": "array", "items": { "type": "string" } }
            ]
        })
    }
}

/// `fallback:` / `exhausted:` (a string is `{ say: .. }`).
#[derive(Debug, Default, Clone)]
pub struct Fallback {
    /// What to say.
    pub say: Option<Say>,
    /// Send the state's messages again after `say`.
    pub repeat: bool,
    /// Go to another state instead.
    pub goto: Option<String>,
}

#[derive(Deserialize)]
struct FallbackFields {
    say: Option<Say>,
    #[serde(default)]
    repeat: bool,
    goto: Option<String>,
}

impl<'de> Deserialize<'de> for Fallback {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Fallback;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a message, or a map with say, repeat and goto")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Fallback, E> {
                Ok(Fallback {
                    say: Some(Say(vec![SayItem::Plain(Text::One(v.to_owned()))])),
                    ..Default::default()
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, m: A) -> Result<Fallback, A::Error> {
                match own_or_languages::<A, FallbackFields>(m, &["say", "repeat", "goto"])? {
                    Ok(f) => Ok(Fallback {
                        say: f.say,
                        repeat: f.repeat,
                        goto: f.goto,
                    }),
                    Err(text) => Ok(Fallback {
                        say: Some(Say(vec![SayItem::Plain(text)])),
                        ..Default::default()
                    }),
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// `next:`: one state, or branches tried in order.
#[derive(Debug, Clone)]
pub enum Next {
    /// The state that follows.
    To(String),
    /// The first branch whose condition holds.
    Branches(Vec<Branch>),
}

impl Next {
    /// The states it may go to, each with the path of its name in the
    /// document (relative to `next`).
    pub fn targets(&self) -> Vec<(String, &str)> {
        match self {
            Next::To(s) => vec![(String::new(), s.as_str())],
            Next::Branches(b) => b
                .iter()
                .enumerate()
                .map(|(i, b)| (format!("[{i}].goto"), b.goto.as_str()))
                .collect(),
        }
    }
}

/// One branch of `next:`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Branch {
    /// A condition, as in a rule's `when:` (`"open('support')"`, `"total |
    /// int > 100"`); none: the branch always holds.
    pub when: Option<String>,
    /// The state it goes to.
    pub goto: String,
}

impl<'de> Deserialize<'de> for Next {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Next;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a state's name, or a list of branches ({ when, goto })")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Next, E> {
                Ok(Next::To(v.to_owned()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, s: A) -> Result<Next, A::Error> {
                Vec::<Branch>::deserialize(de::value::SeqAccessDeserializer::new(s))
                    .map(Next::Branches)
            }
        }
        d.deserialize_any(V)
    }
}

impl JsonSchema for Next {
    fn schema_name() -> Cow<'static, str> {
        "Next".into()
    }
    fn json_schema(g: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "The state that follows at once (or after a valid answer), or branches tried in order: the first whose `when:` holds (one without `when:` always does).",
            "anyOf": [
                { "type": "string" },
                { "type": "array", "items": g.subschema_for::<Branch>() }
            ]
        })
    }
}

/// `ask:`: a question, where the answer goes, and how it is checked.
#[derive(Debug, Default, Clone, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Ask {
    /// The question.
    pub text: Option<Text>,
    /// Suggested answers shown as quick replies.
    #[serde(default)]
    pub quick_replies: Vec<ChoiceDoc>,
    /// The variable that receives a valid answer.
    pub save: Option<String>,
    /// How the answer is checked.
    pub validate: Option<Validate>,
    /// Sent after an invalid answer (the question itself is not repeated).
    pub invalid: Option<Say>,
    /// Re-asks before `exhausted` (default: `settings.retries`, else 1).
    pub retries: Option<u32>,
    /// What happens after one invalid answer too many.
    pub exhausted: Option<Fallback>,
    /// The answer is personal data (a phone number, an e-mail address):
    /// never in the event log, reports or the debug view, masked in
    /// transcripts.
    #[serde(default)]
    pub pii: bool,
}

/// `validate:`: a kind name (`number`, `email`, `phone`, `date`) or a map.
#[derive(Debug, Default, Clone)]
pub struct Validate {
    /// A regex the whole answer must match.
    pub regex: Option<String>,
    /// A built-in kind.
    pub kind: Option<String>,
    /// Smallest number accepted (kind `number`).
    pub min: Option<f64>,
    /// Largest number accepted (kind `number`).
    pub max: Option<f64>,
}

#[derive(Deserialize)]
struct ValidateFields {
    regex: Option<String>,
    kind: Option<String>,
    min: Option<f64>,
    max: Option<f64>,
}

impl<'de> Deserialize<'de> for Validate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Validate;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a kind (number, email, phone, date) or a map with regex, kind, min, max",
                )
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Validate, E> {
                Ok(Validate {
                    kind: Some(v.to_owned()),
                    ..Default::default()
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, m: A) -> Result<Validate, A::Error> {
                let f = ValidateFields::deserialize(de::value::MapAccessDeserializer::new(m))?;
                Ok(Validate {
                    regex: f.regex,
                    kind: f.kind,
                    min: f.min,
                    max: f.max,
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// `call:`: a registered Rust action and its arguments (strings are
/// templates), or another flow run as a subroutine.
#[derive(Debug, Default, Clone, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Call {
    /// The action's registered name.
    pub action: Option<String>,
    /// Arguments; string values are rendered as templates first.
    #[serde(default)]
    pub args: IndexMap<String, Value>,
    /// A subflow's file, relative to this one: it runs, and the state's
    /// `next` follows when it returns.
    pub flow: Option<String>,
    /// The subflow's inputs, as templates over this flow's variables.
    #[serde(default)]
    pub with: IndexMap<String, String>,
    /// The subflow's outputs this flow keeps, as variables of the same names.
    #[serde(default)]
    pub returns: Vec<String>,
    /// The states the action may jump to (`ActionOutcome::Goto`): they count
    /// as reached for `validate`, `check --explore` follows each, and a jump
    /// to any other state is an error naming the action. None declared: it
    /// may jump anywhere, unchecked.
    #[serde(default)]
    pub jumps: Vec<String>,
}

/// `say:`: one message or a list of messages.
#[derive(Debug, Default, Clone)]
pub struct Say(pub Vec<SayItem>);

/// The keys of a message map (`Rich`).
const RICH_KEYS: &[&str] = &[
    "text",
    "quick_replies",
    "buttons",
    "list",
    "media",
    "template",
    "save",
];

/// Whether a map's key reads as a language code (`en`, `tr`, `pt-BR`,
/// `zh_Hant`) rather than a misspelt key of the map's other form.
fn is_language(key: &str, keys: &[&str]) -> bool {
    let (lang, region) = match key.split_once(['-', '_']) {
        Some((l, r)) => (l, Some(r)),
        None => (key, None),
    };
    (2..=3).contains(&lang.len())
        && lang.bytes().all(|b| b.is_ascii_lowercase())
        && region.is_none_or(|r| {
            (2..=8).contains(&r.len()) && r.bytes().all(|b| b.is_ascii_alphanumeric())
        })
        && keys.iter().all(|k| strsim::levenshtein(key, k) > 1)
}

/// A map whose first key was read already: it is handed back first.
struct Rewind<A> {
    first: Option<String>,
    rest: A,
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for Rewind<A> {
    type Error = A::Error;
    fn next_key_seed<K: de::DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        match self.first.take() {
            Some(k) => seed
                .deserialize(de::value::StringDeserializer::<A::Error>::new(k))
                .map(Some),
            None => self.rest.next_key_seed(seed),
        }
    }
    fn next_value_seed<V: de::DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, A::Error> {
        self.rest.next_value_seed(seed)
    }
}

/// A map in a place that takes a text in several languages as well as a
/// map of its own (a message, a fallback), told apart by its first key:
/// one of `keys` (or a misspelling of one), the map of its own; a language
/// code, a text by language.
fn own_or_languages<'de, A: MapAccess<'de>, T: Deserialize<'de>>(
    mut m: A,
    keys: &[&str],
) -> Result<Result<T, Text>, A::Error> {
    let first = match m.next_key::<String>()? {
        Some(k) if is_language(&k, keys) => k,
        first => {
            let rest = Rewind { first, rest: m };
            return T::deserialize(de::value::MapAccessDeserializer::new(rest)).map(Ok);
        }
    };
    let mut texts = IndexMap::new();
    texts.insert(first.clone(), m.next_value::<String>()?);
    while let Some(k) = m.next_key::<String>()? {
        if !is_language(&k, keys) {
            return Err(de::Error::custom(format!(
                "`{k}` is not a language code, and `{first}` is not a key of this map: a map of \
                 languages has only language codes (`{{ en: Hi, tr: Merhaba }}`)"
            )));
        }
        let v = m.next_value::<String>()?;
        texts.insert(k, v);
    }
    Ok(Err(Text::ByLanguage(texts)))
}

impl<'de> Deserialize<'de> for Say {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Say;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a message or a list of messages")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Say, E> {
                Ok(Say(vec![SayItem::Plain(Text::One(v.to_owned()))]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, s: A) -> Result<Say, A::Error> {
                Vec::<SayItem>::deserialize(de::value::SeqAccessDeserializer::new(s)).map(Say)
            }
            fn visit_map<A: MapAccess<'de>>(self, m: A) -> Result<Say, A::Error> {
                Ok(Say(vec![
                    match own_or_languages::<A, Rich>(m, RICH_KEYS)? {
                        Ok(rich) => SayItem::Rich(Box::new(rich)),
                        Err(text) => SayItem::Plain(text),
                    },
                ]))
            }
        }
        d.deserialize_any(V)
    }
}

/// One message in `say`.
#[derive(Debug, Clone)]
pub enum SayItem {
    /// A plain text message.
    Plain(Text),
    /// A message with options, a list, buttons or media.
    Rich(Box<Rich>),
}

impl<'de> Deserialize<'de> for SayItem {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = SayItem;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a text, or a map with text, quick_replies, buttons, list or media")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<SayItem, E> {
                Ok(SayItem::Plain(Text::One(v.to_owned())))
            }
            fn visit_map<A: MapAccess<'de>>(self, m: A) -> Result<SayItem, A::Error> {
                Ok(match own_or_languages::<A, Rich>(m, RICH_KEYS)? {
                    Ok(rich) => SayItem::Rich(Box::new(rich)),
                    Err(text) => SayItem::Plain(text),
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// A message with more than text.
#[derive(Debug, Default, Clone, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Rich {
    /// The text.
    pub text: Option<Text>,
    /// Quick-reply buttons.
    pub quick_replies: Option<Vec<ChoiceDoc>>,
    /// Informative buttons (URL, phone).
    pub buttons: Option<Vec<ButtonDoc>>,
    /// A list message.
    pub list: Option<ListDoc>,
    /// An attachment.
    pub media: Option<MediaDoc>,
    /// A WhatsApp template message.
    pub template: Option<TemplateDoc>,
    /// With quick replies: the variable the picked one's id is saved in
    /// (and its title, in the conversation's language, in `NAME_title`),
    /// whether tapped, typed or answered by number.
    pub save: Option<String>,
}

/// A quick-reply button or a list row.
#[derive(Debug, Default, Clone, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct ChoiceDoc {
    /// The id that comes back.
    pub id: String,
    /// What the customer sees.
    pub title: Text,
    /// A list row's second line.
    pub description: Option<Text>,
}

/// A list message.
#[derive(Debug, Default, Clone, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct ListDoc {
    /// Header line.
    pub header: Option<Text>,
    /// Body text.
    pub body: Text,
    /// Footer line.
    pub footer: Option<Text>,
    /// The button label that opens the list.
    pub button: Text,
    /// Sections of rows.
    pub sections: Vec<SectionDoc>,
    /// The variable the picked row's id is saved in (and its title, in the
    /// conversation's language, in `NAME_title`).
    pub save: Option<String>,
}

/// One section of a list.
#[derive(Debug, Default, Clone, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct SectionDoc {
    /// Heading.
    pub title: Option<Text>,
    /// Rows.
    pub rows: Vec<ChoiceDoc>,
}

/// An informative button.
#[derive(Debug, Default, Clone, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct ButtonDoc {
    /// `url` or `phone`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Label.
    pub title: Text,
    /// The address or number.
    pub value: String,
}

/// An attachment by URL.
#[derive(Debug, Default, Clone, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct MediaDoc {
    /// Where it is.
    pub url: String,
    /// `image`, `document`, `video`, `audio`.
    pub kind: String,
    /// Caption.
    pub caption: Option<Text>,
}

/// A visible text: one string, or one per language (`{ en: Hi, tr: Merhaba }`).
#[derive(Debug, Clone)]
pub enum Text {
    /// The same in every language.
    One(String),
    /// By language code, in the order written.
    ByLanguage(IndexMap<String, String>),
}

impl Default for Text {
    fn default() -> Self {
        Text::One(String::new())
    }
}

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Text;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a text, or a map of language codes to texts")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Text, E> {
                Ok(Text::One(v.to_owned()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Text, E> {
                Ok(Text::One(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Text, E> {
                Ok(Text::One(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Text, E> {
                Ok(Text::One(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Text, E> {
                Ok(Text::One(v.to_string()))
            }
            fn visit_map<A: MapAccess<'de>>(self, m: A) -> Result<Text, A::Error> {
                IndexMap::<String, String>::deserialize(de::value::MapAccessDeserializer::new(m))
                    .map(Text::ByLanguage)
            }
        }
        d.deserialize_any(V)
    }
}

/// One string or a list of strings.
#[derive(Debug, Default, Clone)]
pub struct OneOrMany(pub Vec<String>);

impl<'de> Deserialize<'de> for OneOrMany {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = OneOrMany;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or a list of strings")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<OneOrMany, E> {
                Ok(OneOrMany(vec![v.to_owned()]))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<OneOrMany, E> {
                Ok(OneOrMany(vec![v.to_string()]))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<OneOrMany, E> {
                Ok(OneOrMany(vec![v.to_string()]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, s: A) -> Result<OneOrMany, A::Error> {
                Vec::<String>::deserialize(de::value::SeqAccessDeserializer::new(s)).map(OneOrMany)
            }
        }
        d.deserialize_any(V)
    }
}

/// The names of every key the language knows, for "did you mean" on unknown keys.
pub(crate) fn known_keys() -> Vec<&'static str> {
    let mut keys = Vec::new();
    keys.extend(fields_of::<FlowDoc>());
    keys.extend(fields_of::<Settings>());
    keys.extend(fields_of::<State>());
    keys.extend(fields_of::<Rule>());
    keys.extend(fields_of::<FallbackFields>());
    keys.extend(fields_of::<Ask>());
    keys.extend(fields_of::<ValidateFields>());
    keys.extend(fields_of::<ParamFields>());
    keys.extend(fields_of::<Call>());
    keys.extend(fields_of::<HttpDoc>());
    keys.extend(fields_of::<NluDoc>());
    keys.extend(fields_of::<IntentDoc>());
    keys.extend(fields_of::<NotSureDoc>());
    keys.extend(fields_of::<HttpSettings>());
    keys.extend(fields_of::<Rich>());
    keys.extend(fields_of::<ChoiceDoc>());
    keys.extend(fields_of::<ListDoc>());
    keys.extend(fields_of::<SectionDoc>());
    keys.extend(fields_of::<ButtonDoc>());
    keys.extend(fields_of::<MediaDoc>());
    keys.extend(fields_of::<TemplateDoc>());
    keys.extend(fields_of::<CalendarDoc>());
    keys.extend(fields_of::<ScheduleDoc>());
    keys.extend(fields_of::<ClosureDoc>());
    keys.extend(fields_of::<After>());
    keys.sort_unstable();
    keys.dedup();
    keys
}

/// The field names serde expects for a struct, read by asking it to deserialize
/// from a deserializer that only records them (so the list never drifts from the
/// struct definitions).
fn fields_of<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
    struct Probe(Option<&'static [&'static str]>);
    #[derive(Debug)]
    struct Stop;
    impl fmt::Display for Stop {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("probe")
        }
    }
    impl std::error::Error for Stop {}
    impl de::Error for Stop {
        fn custom<M: fmt::Display>(_: M) -> Self {
            Stop
        }
    }
    impl<'de> Deserializer<'de> for &mut Probe {
        type Error = Stop;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
            Err(Stop)
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Stop> {
            self.0 = Some(fields);
            Err(Stop)
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
            bytes byte_buf option unit unit_struct newtype_struct seq tuple
            tuple_struct map enum identifier ignored_any
        }
    }
    let mut p = Probe(None);
    let _ = T::deserialize(&mut p);
    p.0.unwrap_or(&[])
}

// The JSON Schema of the short forms, written next to their visitors: each
// accepts exactly what its `Deserialize` does.

impl JsonSchema for Text {
    fn schema_name() -> Cow<'static, str> {
        "Text".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A visible text: one string, or one per language (`{ en: Hi, tr: Merhaba }`).",
            "anyOf": [
                { "type": ["string", "number", "boolean"] },
                { "type": "object", "additionalProperties": { "type": "string" } }
            ]
        })
    }
}

impl JsonSchema for OneOrMany {
    fn schema_name() -> Cow<'static, str> {
        "OneOrMany".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "One string or a list of strings.",
            "anyOf": [
                { "type": ["string", "integer"] },
                { "type": "array", "items": { "type": "string" } }
            ]
        })
    }
}

impl JsonSchema for SayItem {
    fn schema_name() -> Cow<'static, str> {
        "SayItem".into()
    }
    fn json_schema(g: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "One message: a text (a template, or a map of languages to texts), or a map with text, quick_replies, buttons, list, media or template.",
            "anyOf": [ g.subschema_for::<Text>(), g.subschema_for::<Rich>() ]
        })
    }
}

impl JsonSchema for Say {
    fn schema_name() -> Cow<'static, str> {
        "Say".into()
    }
    fn json_schema(g: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "One message or a list of messages; a text may be a map of languages to texts.",
            "anyOf": [
                g.subschema_for::<Text>(),
                g.subschema_for::<Rich>(),
                { "type": "array", "items": g.subschema_for::<SayItem>() }
            ]
        })
    }
}

impl JsonSchema for Fallback {
    fn schema_name() -> Cow<'static, str> {
        "Fallback".into()
    }
    fn json_schema(g: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A message (a text, or a map of languages to texts), or what to say, whether to repeat the state's messages, and where to go.",
            "anyOf": [
                g.subschema_for::<Text>(),
                {
                    "type": "object",
                    "additionalProperties": false,
                    "properties": {
                        "say": g.subschema_for::<Say>(),
                        "repeat": { "type": "boolean", "description": "Send the state's messages again after `say`." },
                        "goto": { "type": "string", "description": "Go to another state instead." }
                    }
                }
            ]
        })
    }
}

impl JsonSchema for Validate {
    fn schema_name() -> Cow<'static, str> {
        "Validate".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        let kind = json_schema!({
            "description": "A built-in kind.",
            "enum": ["text", "number", "email", "phone", "date"]
        });
        json_schema!({
            "description": "How an answer is checked: a kind, or a map with regex, kind, min and max.",
            "anyOf": [
                kind,
                {
                    "type": "object",
                    "additionalProperties": false,
                    "properties": {
                        "regex": { "type": "string", "description": "A regex the whole answer must match." },
                        "kind": kind,
                        "min": { "type": "number", "description": "Smallest number accepted (kind `number`)." },
                        "max": { "type": "number", "description": "Largest number accepted (kind `number`)." }
                    }
                }
            ]
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_keys_come_from_the_structs() {
        let keys = known_keys();
        for k in [
            "say",
            "quick_replies",
            "goto",
            "session_timeout",
            "sections",
            "match",
        ] {
            assert!(keys.contains(&k), "{k} missing");
        }
    }
}
