//! The compiled flow: an indexed graph the engine walks without parsing anything.
//!
//! States are addressed by [`StateId`] (an index), rules carry compiled regexes and
//! pre-normalized synonyms, texts are [`Tpl`]s, and handlers are referred to by an
//! index into `Flow::actions` / `Flow::matchers`, so that the flow itself holds
//! no Rust code and a [`Bot`](crate::engine::Bot) binds the names to handlers once.

use regex::Regex;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use super::diagnostic::Diagnostics;
use super::template::{Templates, Tpl, VarList};
use crate::message::{ButtonKind, MediaKind};

use super::StateId;

/// A loaded, validated and compiled flow.
#[derive(Debug)]
pub struct Flow {
    /// The flow's name (`name:`, else the file stem).
    pub name: String,
    /// A fingerprint of the sources; sessions record it.
    pub version: u64,
    /// The files it was read from, the main one first.
    pub files: Vec<PathBuf>,
    /// The bytes of text it was compiled from.
    pub(crate) source_bytes: usize,
    /// What its regexes keep, in bytes.
    pub(crate) regex_bytes: usize,
    /// The first state.
    pub(crate) start: StateId,
    /// All states.
    pub(crate) states: Vec<StateNode>,
    /// Global rules.
    pub(crate) intents: Vec<RuleNode>,
    /// Settings with their defaults filled in.
    pub(crate) settings: FlowSettings,
    /// Variable defaults.
    pub(crate) vars: Arc<VarList>,
    /// The variables that hold personal data (`pii`).
    pub(crate) private: Vec<Arc<str>>,
    /// Compiled templates.
    pub(crate) templates: Templates,
    /// Names of the actions the flow calls (indexed by [`CallNode::action`]).
    pub(crate) actions: Vec<Box<str>>,
    /// Names of the custom matchers the flow uses (indexed by [`Cond::Custom`]).
    pub(crate) matchers: Vec<Box<str>>,
    /// The flow-wide error state.
    pub(crate) on_error: Option<StateId>,
    /// Where a released conversation goes (`release:`); none: it starts over.
    pub(crate) release: Option<StateId>,
    /// `migrate:`: where sessions saved in a state of that name go on.
    pub(crate) migrate: HashMap<Box<str>, StateId>,
    /// Warnings found while loading (errors prevent loading).
    pub warnings: Diagnostics,
    pub(crate) index: HashMap<Box<str>, StateId>,
    /// The WhatsApp templates the flow names, once each.
    pub whatsapp_templates: Vec<Box<str>>,
    /// `schedules:`.
    pub schedules: Vec<super::schedule::Schedule>,
    /// `nlu:`: free text understood.
    pub nlu: Option<NluNode>,
}

/// What one compiled template keeps (see [`Flow::weight`]).
const TEMPLATE_BYTES: usize = 9 * 1024;
/// What each byte of source text becomes (see [`Flow::weight`]).
const SOURCE_FACTOR: usize = 6;

impl Flow {
    /// Whether a variable holds personal data (marked `pii`).
    pub fn is_private(&self, name: &str) -> bool {
        self.private.iter().any(|p| &**p == name)
    }

    /// A state's id by name.
    pub fn state_id(&self, name: &str) -> Option<StateId> {
        self.index.get(name).copied()
    }

    /// The states' names, in the order they were written.
    pub fn state_names(&self) -> impl Iterator<Item = &str> {
        self.states.iter().map(|s| &*s.name)
    }

    /// How many global intents the flow has.
    pub fn intent_count(&self) -> usize {
        self.intents.len()
    }

    /// About how many bytes of memory the compiled flow keeps: each
    /// compiled template (minijinja keeps about 9 KiB of instructions for
    /// one), each regex (its automata, measured when compiled), each state
    /// and rule, and a multiple of the text it was compiled from (names,
    /// messages, patterns). An estimate, for bounding a cache
    /// of compiled flows; `benches/startup.rs` checks it against what a
    /// counting allocator finds.
    pub fn weight(&self) -> usize {
        use std::mem::size_of;
        let rules: usize =
            self.states.iter().map(|s| s.on.len()).sum::<usize>() + self.intents.len();
        self.templates.count() * TEMPLATE_BYTES
            + self.states.len() * size_of::<StateNode>()
            + rules * size_of::<RuleNode>()
            + self.source_bytes * SOURCE_FACTOR
            + self.regex_bytes
            + self.nlu.as_ref().map_or(0, NluNode::weight)
    }

    /// What a state says when no intent is sure: its own `not_sure:`, else
    /// the flow's.
    pub(crate) fn not_sure_in(&self, id: StateId) -> Option<&NotSureNode> {
        self.state(id)
            .not_sure
            .as_ref()
            .or(self.nlu.as_ref().and_then(|n| n.not_sure.as_ref()))
    }

    /// A state by id.
    pub(crate) fn state(&self, id: StateId) -> &StateNode {
        &self.states[id as usize]
    }
}

/// Flow-wide settings, defaults applied.
#[derive(Debug)]
pub struct FlowSettings {
    /// Inactivity after which a conversation starts over, in milliseconds.
    pub session_timeout_ms: Option<u64>,
    /// Default re-asks for `ask`.
    pub retries: u32,
    /// Render options as numbered lines where the channel has no buttons.
    pub numbered_fallback: bool,
    /// Default answer when nothing matches.
    pub fallback: Option<FallbackNode>,
    /// Language when the contact's is unknown.
    pub default_language: Option<Box<str>>,
    /// Turn too many quick replies into a list, and too long lists into text.
    pub overflow_adapt: bool,
    /// Sent when an action fails and no `on_error` state is set.
    pub error_message: Option<LText>,
    /// Sent before starting over when a changed flow lost the conversation's state.
    pub restart_message: Option<LText>,
    /// Sent when a handoff ends.
    pub release_message: Option<LText>,
    /// Sent when Qpien refuses a handoff for good.
    pub handoff_failed_message: Option<LText>,
    /// Longest handoff, in milliseconds.
    pub handoff_timeout_ms: Option<u64>,
    /// The button of the list `overflow: adapt` makes.
    pub overflow_button: Option<LText>,
    /// What the `http:` steps may call (`settings.http.allow`).
    pub http_allow: Arc<crate::fetch::AllowList>,
    /// How many `http:` requests one turn may make (`limits.http_calls_per_turn`).
    pub http_per_turn: u32,
}

/// A state's inactivity nudge (`after:`).
#[derive(Debug)]
pub struct AfterNode {
    /// Silence before it fires, in milliseconds.
    pub idle_ms: u64,
    /// Sent when it fires.
    pub say: Vec<MsgNode>,
    /// Where the conversation goes then.
    pub goto: Option<StateId>,
    /// Sent instead of `say` outside WhatsApp's 24-hour window.
    pub template: Option<TemplateNode>,
}

/// A compiled WhatsApp template message.
#[derive(Debug)]
pub struct TemplateNode {
    /// The template's name.
    pub name: Box<str>,
    /// Its language (none: the conversation's, else `settings.default_language`).
    pub language: Option<Box<str>>,
    /// Its placeholders' values.
    pub params: Vec<Tpl>,
}

/// One compiled state.
#[derive(Debug)]
pub struct StateNode {
    /// Its name.
    pub name: Arc<str>,
    /// Messages on entry.
    pub say: Vec<MsgNode>,
    /// A question and its capture.
    pub ask: Option<AskNode>,
    /// Rules, in order.
    pub on: Vec<RuleNode>,
    /// When nothing matches.
    pub fallback: Option<FallbackNode>,
    /// The state that follows.
    pub next: Option<StateId>,
    /// Or branches: the first whose condition holds.
    pub branches: Vec<BranchNode>,
    /// Or an A/B split: each variant's state and weight.
    pub split: Vec<(StateId, u32)>,
    /// Variables set on entry.
    pub set: Vec<(Arc<str>, Tpl)>,
    /// The action run on entry.
    pub call: Option<CallNode>,
    /// The HTTP request made on entry, after the action.
    pub http: Option<Box<HttpNode>>,
    /// The conversation ends here.
    pub end: bool,
    /// The outcome of a run that ends here, when not `resolved`.
    pub outcome: Option<Box<str>>,
    /// A person takes over here.
    pub handoff: bool,
    /// Whether global intents apply.
    pub intents: bool,
    /// Where a failed action leads.
    pub on_error: Option<StateId>,
    /// When no intent is sure, here (over the flow's).
    pub not_sure: Option<NotSureNode>,
    /// The inactivity nudge.
    pub after: Option<AfterNode>,
    /// Sent instead of its messages outside WhatsApp's 24-hour window.
    pub template: Option<TemplateNode>,
    /// The file it was defined in (index into [`Flow::files`]).
    pub file: usize,
    /// The flow it belongs to: 0 the main one, else a subflow.
    pub unit: u32,
    /// `call: { flow }`: the subflow run on entry.
    pub subflow: Option<SubflowCall>,
    /// `return:`: the subflow ends here.
    pub ret: Option<ReturnNode>,
}

/// The type of a subflow's input or output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamKind {
    /// Any value.
    Any,
    /// A string.
    String,
    /// A number.
    Number,
    /// `true` or `false`.
    Boolean,
}

/// A call of a subflow.
#[derive(Debug)]
pub struct SubflowCall {
    /// Its unit.
    pub unit: u32,
    /// Its name (states are named `NAME/state`).
    pub name: Arc<str>,
    /// Its first state.
    pub entry: StateId,
    /// Its variables' defaults (`vars:`), then each input: the caller's
    /// template, else the input's default.
    pub defaults: Arc<crate::flow::template::VarList>,
    /// Each input: its name, type, and the caller's template (none: its
    /// default, already in `defaults`).
    pub inputs: Vec<(Arc<str>, ParamKind, Option<Tpl>)>,
    /// The outputs the caller keeps.
    pub returns: Vec<Arc<str>>,
}

/// `return:` of a subflow's state.
#[derive(Debug)]
pub struct ReturnNode {
    /// Each output: its name, type, and its template (none: the variable of
    /// its name).
    pub outputs: Vec<(Arc<str>, ParamKind, Option<Tpl>)>,
}

/// One branch of a state's `next:`.
#[derive(Debug)]
pub struct BranchNode {
    /// Its condition (none: it always holds).
    pub when: Option<Tpl>,
    /// Where it goes.
    pub goto: StateId,
}

impl StateNode {
    /// Whether the conversation waits here for the customer (rather than going on).
    pub fn waits(&self) -> bool {
        self.ask.is_some() || (!self.goes_on() && !self.end && !self.handoff && self.ret.is_none())
    }

    /// Whether `next` always leads on: one state, or branches whose last
    /// one always holds.
    pub fn goes_on(&self) -> bool {
        self.next.is_some()
            || self.branches.last().is_some_and(|b| b.when.is_none())
            || !self.split.is_empty()
    }

    /// The states `next` may lead to: its state, every branch's, every
    /// variant's of a split.
    pub fn follows(&self) -> impl Iterator<Item = StateId> + '_ {
        self.next
            .into_iter()
            .chain(self.branches.iter().map(|b| b.goto))
            .chain(self.split.iter().map(|(s, _)| *s))
    }
}

/// A rule: a condition and what follows.
#[derive(Debug)]
pub struct RuleNode {
    /// When it fires.
    pub cond: Cond,
    /// Sent when it fires.
    pub say: Vec<MsgNode>,
    /// Where it leads (none: stay).
    pub goto: Option<StateId>,
    /// Variables set when it fires.
    pub set: Vec<(Arc<str>, Tpl)>,
    /// A digression: the pending question is asked again afterwards.
    pub resume: bool,
    /// `correct:`: the variable corrected, and the state whose question
    /// checks it.
    pub correct: Option<(Arc<str>, StateId)>,
    /// `cancel:`: the variables forgotten.
    pub cancel: Vec<Arc<str>>,
    /// A short description (`button: orders`) for graphs and coverage.
    pub label: Box<str>,
}

/// A compiled condition.
#[derive(Debug)]
pub enum Cond {
    /// The button with this id was tapped.
    Button(Box<str>),
    /// The list row with this id was picked.
    List(Box<str>),
    /// The whole message is one of these (normalized).
    Text(Vec<Box<str>>),
    /// The message contains one of these phrases (normalized words).
    Keyword(Vec<Vec<Box<str>>>),
    /// The message text matches; named groups become variables.
    Regex(Regex),
    /// The message carries media (of this kind, or any).
    Media(Option<MediaKind>),
    /// An expression is true.
    When(Tpl),
    /// Any sub-condition holds.
    Any(Vec<Cond>),
    /// All sub-conditions hold.
    All(Vec<Cond>),
    /// The sub-condition does not hold.
    Not(Box<Cond>),
    /// A custom matcher (index into `Flow::matchers`).
    Custom(u32),
    /// The message is classified as this intent of `nlu:` (its index).
    Intent(u32),
    /// `text:` or `keyword:` with word endings or typos allowed.
    Tolerant(Tolerant),
}

impl Cond {
    /// The intents it asks for (those a `not` turns away are not), added
    /// to `out`: what a "did you mean" may offer where it is a rule.
    pub(crate) fn intents(&self, out: &mut Vec<u32>) {
        match self {
            Cond::Intent(i) => out.push(*i),
            Cond::Any(v) | Cond::All(v) => v.iter().for_each(|c| c.intents(out)),
            _ => {}
        }
    }
}

/// A `text:` or `keyword:` condition that accepts word endings or typos.
#[derive(Debug)]
pub struct Tolerant {
    /// The phrases, as normalized words.
    pub phrases: Vec<Vec<Box<str>>>,
    /// The whole message must be the phrase (`text:`), not contain it.
    pub whole: bool,
    /// A message word may go on after the phrase's (`şikayet` in `şikayetim`).
    pub endings: bool,
    /// Edits allowed per word of 4 letters or more.
    pub typos: u8,
}

/// `nlu:` compiled: the classifier and its intents.
#[derive(Debug)]
pub struct NluNode {
    /// The classifier, trained on the examples.
    pub model: crate::nlu::Model,
    /// The intents' names, by index.
    pub names: Vec<Box<str>>,
    /// Each intent as a "did you mean" button (id `nlu:NAME`).
    pub choices: Vec<ChoiceNode>,
    /// Each intent with its title and examples, for a registered classifier.
    pub intents: Vec<crate::nlu::IntentInfo>,
    /// Where each intent's examples are written (document paths, by
    /// intent then example), for diagnostics.
    pub example_paths: Vec<Vec<Box<str>>>,
    /// What to say when no intent is sure.
    pub not_sure: Option<NotSureNode>,
}

impl NluNode {
    /// About what it keeps: the model, and each example and its path.
    fn weight(&self) -> usize {
        let strings: usize = self
            .intents
            .iter()
            .flat_map(|i| i.examples.iter())
            .chain(self.example_paths.iter().flatten())
            .map(|s| s.len() + std::mem::size_of::<Box<str>>())
            .sum();
        self.model.weight() + strings
    }
}

/// `not_sure:`.
#[derive(Debug)]
pub struct NotSureNode {
    /// The question sent with the likeliest intents as buttons.
    pub say: LText,
    /// How many to offer.
    pub offer: u32,
}

/// `fallback:` / `exhausted:`.
#[derive(Debug)]
pub struct FallbackNode {
    /// What to say.
    pub say: Vec<MsgNode>,
    /// Send the state's messages again.
    pub repeat: bool,
    /// Go elsewhere instead.
    pub goto: Option<StateId>,
}

/// `ask:`.
#[derive(Debug)]
pub struct AskNode {
    /// The question.
    pub text: Option<LText>,
    /// Suggested answers.
    pub quick_replies: Vec<ChoiceNode>,
    /// Where a valid answer goes.
    pub save: Arc<str>,
    /// How it is checked.
    pub check: Check,
    /// Sent after an invalid answer.
    pub invalid: Vec<MsgNode>,
    /// Re-asks before `exhausted`.
    pub retries: u32,
    /// After too many invalid answers.
    pub exhausted: Option<FallbackNode>,
}

/// How an answer is checked.
#[derive(Debug)]
pub struct Check {
    /// A built-in kind.
    pub kind: CheckKind,
    /// A regex the answer must match too.
    pub regex: Option<Regex>,
    /// Bounds for numbers.
    pub min: Option<f64>,
    /// Bounds for numbers.
    pub max: Option<f64>,
    /// How phone numbers without a country code are read
    /// (`settings.default_region`).
    pub region: Option<phonenumber::country::Id>,
}

/// Built-in answer kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckKind {
    /// Any non-empty text.
    Text,
    /// A number (saved as a number).
    Number,
    /// An e-mail address.
    Email,
    /// A phone number (saved as `+` and digits).
    Phone,
    /// A calendar date (saved as `YYYY-MM-DD`).
    Date,
}

/// `call:`.
#[derive(Debug)]
pub struct CallNode {
    /// Index into `Flow::actions`.
    pub action: u32,
    /// Arguments.
    pub args: Vec<(Box<str>, Arg)>,
    /// The states it may jump to (`jumps:`); empty: any.
    pub jumps: Vec<StateId>,
}

/// `http:` of a state.
#[derive(Debug)]
pub struct HttpNode {
    /// Its name (mocks answer by it).
    pub name: Box<str>,
    /// The method, upper-case.
    pub method: Box<str>,
    /// The URL.
    pub url: Tpl,
    /// Query parameters.
    pub query: Vec<(Box<str>, Tpl)>,
    /// Headers.
    pub headers: Vec<(Box<str>, Tpl)>,
    /// The JSON body, its strings compiled.
    pub body: Option<Body>,
    /// How long one attempt waits, in milliseconds.
    pub timeout_ms: u32,
    /// Tries again of an idempotent request.
    pub retries: u32,
    /// Variables from the answer: name, JSON pointer.
    pub save: Vec<(Arc<str>, Box<str>)>,
    /// The variable for the status.
    pub status: Option<Arc<str>>,
    /// Where a failure leads (else the state's `on_error`, the flow's).
    pub on_error: Option<StateId>,
}

/// A JSON body with its strings as templates.
#[derive(Debug)]
pub enum Body {
    /// A string, rendered.
    Text(Tpl),
    /// A list.
    List(Vec<Body>),
    /// An object.
    Map(Vec<(Box<str>, Body)>),
    /// A number, boolean or null, as written.
    Value(serde_json::Value),
}

/// An action argument.
#[derive(Debug)]
pub enum Arg {
    /// A string, rendered as a template.
    Template(Tpl),
    /// Any other YAML value, passed as is.
    Value(minijinja::Value),
}

/// A text in one or more languages.
#[derive(Debug, Clone)]
pub struct LText(pub Vec<(Box<str>, Tpl)>);

impl LText {
    /// The variant for a language: exact, then the primary subtag (`pt` for
    /// `pt-BR`), then the default language, then the first written.
    pub fn pick(&self, lang: Option<&str>, default: Option<&str>) -> &Tpl {
        &self.0[self.pick_index(lang, default)].1
    }

    /// Which variant [`LText::pick`] picks.
    pub fn pick_index(&self, lang: Option<&str>, default: Option<&str>) -> usize {
        if self.0.len() == 1 {
            return 0;
        }
        let find = |l: &str| self.0.iter().position(|(k, _)| k.eq_ignore_ascii_case(l));
        lang.and_then(|l| find(l).or_else(|| l.split(['-', '_']).next().and_then(find)))
            .or_else(|| default.and_then(find))
            .unwrap_or(0)
    }
}

/// A compiled outgoing message.
#[derive(Debug)]
pub enum MsgNode {
    /// Text, with optional quick replies and informative buttons.
    Text {
        /// The text.
        text: LText,
        /// Quick replies.
        quick_replies: Vec<ChoiceNode>,
        /// Informative buttons.
        buttons: Vec<ButtonNode>,
    },
    /// A list message.
    List(ListNode),
    /// An attachment.
    Media {
        /// Where it is.
        url: Tpl,
        /// Its kind.
        kind: MediaKind,
        /// Caption.
        caption: Option<LText>,
    },
    /// A WhatsApp template message.
    Template(TemplateNode),
}

/// A quick reply or a list row.
#[derive(Debug, Clone)]
pub struct ChoiceNode {
    /// Its id.
    pub id: Box<str>,
    /// Its title.
    pub title: LText,
    /// Each variant of the title normalized (as a typed answer is compared
    /// with it) where it is plain text, done when the flow loads.
    pub normalized: Box<[Option<Box<str>>]>,
    /// A row's description.
    pub description: Option<LText>,
    /// The variable a pick of it is saved in (`save:` on its message or list).
    pub save: Option<Arc<str>>,
}

/// A list message.
#[derive(Debug)]
pub struct ListNode {
    /// Header.
    pub header: Option<LText>,
    /// Body.
    pub body: LText,
    /// Footer.
    pub footer: Option<LText>,
    /// Button label.
    pub button: LText,
    /// Sections: title and rows.
    pub sections: Vec<(Option<LText>, Vec<ChoiceNode>)>,
}

/// An informative button.
#[derive(Debug)]
pub struct ButtonNode {
    /// URL or phone.
    pub kind: ButtonKind,
    /// Label.
    pub title: LText,
    /// Address or number.
    pub value: Tpl,
}
