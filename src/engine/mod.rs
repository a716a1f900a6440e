//! The engine: one turn of a conversation as a function.
//!
//! [`Bot::step`] is the one entry point: it takes a conversation's stored form
//! ([`Stored`]: its state's name, channel and session, or none), one [`Event`] and
//! the time, and returns a [`Turn`]: the new stored form, when its idle nudge is
//! due, the messages to send, the effects (handoff, end) and a trace of the states
//! entered and rules fired. Every decision about a conversation is made here:
//! resuming a session, placing it in a reloaded flow (`migrate:`), starting over
//! when its state is gone (with `settings.restart_message`), expiry, idle nudges,
//! agents joining and leaving, and the turn itself; hooks see every one of them.
//! It does no I/O of its own: no network, no disk, no clock. Storage, delivery and
//! time belong to the adapters around it (the runtime, `flowbot replay`,
//! [`TestConversation`](crate::TestConversation)), which is what makes it fast,
//! deterministic and testable where conversations are tested.
//!
//! Where things are: the [`Bot`] and its constructors here; the events it
//! handles (`events.rs`); the run of a message's turn (`run.rs`), with its
//! rules (`matching.rs`), answers (`answer.rs`), messages (`render.rs`) and
//! subflows (`subflow.rs`); the session (`session.rs`).
//!
//! Semantics (the flow language reference says the same from the author's side):
//! - No session (new, ended, expired, released): global intents are tried; if none
//!   matches, `start` is entered and its messages sent; that first message is not
//!   matched against `start`'s own rules.
//! - Otherwise: global intents (unless the state says `intents: false`), then the
//!   state's `on` rules in order, first match wins; a rule's `say` goes before the
//!   target's messages. In an `ask` state, an answer no rule took is checked; a
//!   valid one is saved and the flow goes to `next`. No match: the state's
//!   `fallback`, else `settings.fallback`, else the state's messages again.
//! - Entering a state runs, in order: `call`, `http`, `set`, `say`, the `ask`
//!   question, then `handoff` or `end`, or follows `next` (at most 50 states a turn).
//! - An action error, a failed request, a jump to an unknown state or a `next` chain
//!   too long runs the error path: the `http:` step's `on_error`, the state's, else
//!   the flow's, else `settings.error_message` and a fresh start. It is logged and the
//!   bot goes on. An `http:` request goes through the bot's [`HttpClient`]
//!   (`crate::fetch`), as an action does: the engine renders it and reads the
//!   answer, it never opens a connection itself.
//! - Its log lines name no conversation: the caller's span does (in `flowbot
//!   run`, the turn's span names it as `log.conversations` says, by default its
//!   keyed hash), so the engine never writes a customer's id to a log.
//!
//! [`HttpClient`]: crate::fetch::HttpClient

mod answer;
mod events;
mod matching;
mod render;
mod run;
mod session;
mod subflow;

use minijinja::Value;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Arc;

pub use session::{Frame, Offered, OptionKind, Session};

use crate::flow::template::Scope;
use crate::flow::{
    Arg, Body, CallNode, Flow, FlowLimits, HttpNode, LoadError, MsgNode, ReturnNode, RuleNode,
    StateId, SubflowCall,
};
use crate::handler::{
    set_var, Action, ActionContext, ActionOutcome, Hook, Matcher, Registry, TurnRecord, Vars,
};
use crate::message::{Channel, Contact, Effect, Event, Incoming, Outgoing};
use crate::time::Millis;
use matching::{eval, MatchEnv, Probe};
use render::{Rendered, Renderer};

/// How many states one turn may enter before it is stopped as a loop.
pub(crate) const MAX_HOPS: u32 = 50;

/// How deep subflows may call each other.
pub(crate) const MAX_DEPTH: usize = 8;

const DEFAULT_ERROR_MESSAGE: &str = "Sorry, something went wrong. Please try again.";

/// A flow bound to its handlers: ready to run turns.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// use flowbot::{Bot, Event, Incoming, Registry};
/// let yaml = "states:\n  start:\n    say: Hello!\n    on:\n      - { text: bye, say: Bye!, goto: done }\n  done: { end: true }\n";
/// let bot = Bot::from_yaml("hello.yaml", yaml, Registry::new()).unwrap();
/// let t = bot.step("c1", None, &Event::Message(Incoming::text("hi")), 0).await;
/// assert_eq!(t.messages[0].text, "Hello!");
/// assert_eq!(t.state(), Some("start"));
/// let t = bot.step("c1", t.stored, &Event::Message(Incoming::text("Bye")), 0).await;
/// assert_eq!(t.messages[0].text, "Bye!");
/// assert!(t.stored.is_none());
/// # });
/// ```
pub struct Bot {
    flow: Arc<Flow>,
    /// The variables every conversation starts with: the flow's `vars:`, and
    /// over them those given to [`Bot::with_vars`].
    vars: Arc<crate::flow::template::VarList>,
    actions: Vec<Arc<dyn Action>>,
    matchers: Vec<Arc<dyn Matcher>>,
    hooks: Vec<Arc<dyn Hook>>,
    /// What sends the flow's `http:` requests.
    http: Arc<dyn crate::fetch::HttpClient>,
    /// Asked for a message's intent before the built-in classifier.
    pub(crate) classifier: Option<Arc<dyn crate::nlu::Classifier>>,
    /// The explorer's choices: which branch a state takes, whatever its
    /// conditions say (`check --explore` follows each one).
    steer: Option<Arc<dyn Fn(StateId) -> Option<usize> + Send + Sync>>,
}

impl std::fmt::Debug for Bot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bot")
            .field("flow", &self.flow.name)
            .finish_non_exhaustive()
    }
}

/// A bot could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BotError {
    /// The flow did not load.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The flow names a handler the registry does not have.
    #[error("the flow uses {kind} `{name}`, which is not registered")]
    Unbound {
        /// `action` or `matcher`.
        kind: &'static str,
        /// Its name.
        name: String,
    },
}

/// A conversation as it is stored between turns: the state's *name* (so that a
/// reloaded flow can place it), the channel it runs on (for messages the
/// customer did not prompt) and the session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stored {
    /// The state's name when saved.
    pub state: Arc<str>,
    /// The conversation's channel.
    pub channel: Channel,
    /// The session.
    pub session: Session,
}

/// What one step of a conversation did.
#[derive(Debug, Clone)]
pub struct Turn {
    /// The conversation's stored form after the turn (`None`: ended or released).
    pub stored: Option<Stored>,
    /// When the `after:` nudge of the state it is in falls due, if it has one.
    pub due: Option<Millis>,
    /// Messages to send, in order.
    pub messages: Vec<Outgoing>,
    /// Effects, after the messages.
    pub effects: Vec<Effect>,
    /// States entered and rules fired, in order.
    pub trace: Vec<Step>,
    /// Handler and template errors (each already logged).
    pub errors: Vec<String>,
    /// On a channel with a reply window (WhatsApp), when it closes: after it
    /// no free-form message of this turn may be sent (a reply delayed that
    /// long is dropped). `MIN`: it is closed (the customer never wrote).
    pub window_closes: Option<Millis>,
    /// Free-form messages this turn did not send because the window was
    /// closed and no `template:` took their place.
    pub withheld: usize,
    /// The step ended a handoff: the bot has the conversation again.
    pub released: bool,
    /// The schedule that fired in this step, if one did.
    pub schedule: Option<Box<str>>,
    /// How the message was classified, when a rule asked for its intent.
    pub intent: Option<Classified>,
    /// The variables of a conversation that ended in this step (its session
    /// is gone): the event log's last answers.
    pub ended_vars: crate::flow::template::VarList,
}

/// A message's intent as the classifier saw it (recorded in transcripts).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Classified {
    /// The intent, when sure (none: not sure).
    pub intent: Option<String>,
    /// The best intent's score (0 to 1), to two decimals; 1 for a pick
    /// from a "did you mean".
    pub confidence: f64,
    /// The classifier that answered, when not the built-in one (a
    /// registered [`Classifier`](crate::Classifier), or a test's `classify:`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
}

// Confidences are rounded finite numbers, never NaN.
impl Eq for Classified {}

/// One step of a turn, for coverage and debugging.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// A state was entered.
    Enter(StateId),
    /// Global intent number N fired.
    Intent(u32),
    /// Rule N of a state's `on` fired.
    Rule(StateId, u32),
    /// A state's own fallback ran.
    Fallback(StateId),
    /// `settings.fallback` ran in a state.
    GlobalFallback(StateId),
    /// No fallback: the state's messages were sent again.
    Repeat(StateId),
    /// A valid answer to a state's `ask`.
    Valid(StateId),
    /// An invalid answer to a state's `ask`.
    Invalid(StateId),
    /// A state's `ask` ran out of retries.
    Exhausted(StateId),
    /// A state's action or chain failed.
    Error(StateId),
    /// A state's `after:` nudge fired.
    Idle(StateId),
    /// Branch N of a state's `next` was taken.
    Branch(StateId, u32),
    /// Variant N of a state's `split` was taken.
    Split(StateId, u32),
    /// No intent was sure in a state: the likely ones were offered.
    NotSure(StateId),
}

impl Bot {
    /// Binds a flow to the handlers it names.
    pub fn new(flow: Flow, registry: Registry) -> Result<Bot, BotError> {
        Bot::bind(Arc::new(flow), registry)
    }

    /// Binds a compiled flow, perhaps another bot's too, to the handlers it
    /// names.
    pub(crate) fn bind(flow: Arc<Flow>, registry: Registry) -> Result<Bot, BotError> {
        let actions = flow
            .actions
            .iter()
            .map(|n| {
                registry
                    .actions
                    .get(&**n)
                    .cloned()
                    .ok_or_else(|| BotError::Unbound {
                        kind: "action",
                        name: n.to_string(),
                    })
            })
            .collect::<Result<_, _>>()?;
        let matchers = flow
            .matchers
            .iter()
            .map(|n| {
                registry
                    .matchers
                    .get(&**n)
                    .cloned()
                    .ok_or_else(|| BotError::Unbound {
                        kind: "matcher",
                        name: n.to_string(),
                    })
            })
            .collect::<Result<_, _>>()?;
        Ok(Bot {
            vars: flow.vars.clone(),
            flow,
            actions,
            matchers,
            hooks: registry.hooks,
            http: registry
                .http
                .unwrap_or_else(|| Arc::new(crate::fetch::Offline)),
            classifier: registry.classifier,
            steer: None,
        })
    }

    /// The same bot asking `classifier` for intents.
    pub(crate) fn with_classifier(&self, classifier: Arc<dyn crate::nlu::Classifier>) -> Bot {
        Bot {
            flow: self.flow.clone(),
            vars: self.vars.clone(),
            actions: self.actions.clone(),
            matchers: self.matchers.clone(),
            hooks: self.hooks.clone(),
            http: self.http.clone(),
            classifier: Some(classifier),
            steer: self.steer.clone(),
        }
    }

    /// This bot with `steer` choosing the branch a state takes (by index;
    /// `None`: as its conditions say), for the explorer.
    pub(crate) fn steered(
        mut self,
        steer: impl Fn(StateId) -> Option<usize> + Send + Sync + 'static,
    ) -> Bot {
        self.steer = Some(Arc::new(steer));
        self
    }

    /// The branch the explorer chose for state `id`, if it chose one.
    pub(crate) fn forced_branch(&self, id: StateId) -> Option<usize> {
        self.steer.as_ref().and_then(|s| s(id))
    }

    /// The same bot, its conversations starting with these variables (over
    /// the flow's `vars:` defaults of the same names): a customer's data known
    /// before the first message, or a test's preset (`vars:` in a YAML
    /// conversation test).
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// use flowbot::{Bot, Registry, TestConversation};
    /// let yaml = "vars: { tier: basic }\nstates:\n  start: { say: \"Your plan: {{ tier }}\" }\n";
    /// let bot = Bot::from_yaml("plan.yaml", yaml, Registry::new()).unwrap();
    /// let mut chat = TestConversation::new(bot.with_vars([("tier", "gold")]));
    /// assert_eq!(chat.send("hi").await[0].text, "Your plan: gold");
    /// # });
    /// ```
    pub fn with_vars<K, V>(mut self, vars: impl IntoIterator<Item = (K, V)>) -> Bot
    where
        K: AsRef<str>,
        V: Into<Value>,
    {
        let list = Arc::make_mut(&mut self.vars);
        for (k, v) in vars {
            let v = v.into();
            match list.iter_mut().find(|(name, _)| &**name == k.as_ref()) {
                Some(slot) => slot.1 = v,
                None => list.push((k.as_ref().into(), v)),
            }
        }
        self
    }

    /// The value a conversation starts with for a variable.
    pub(crate) fn default_var(&self, name: &str) -> Option<&Value> {
        self.vars.iter().find(|(k, _)| &**k == name).map(|(_, v)| v)
    }

    /// Loads a flow file and binds it.
    pub fn load(path: impl AsRef<Path>, registry: Registry) -> Result<Bot, BotError> {
        Bot::load_with(path, registry, &FlowLimits::default())
    }

    /// Loads a flow file within `limits` and binds it.
    pub fn load_with(
        path: impl AsRef<Path>,
        registry: Registry,
        limits: &FlowLimits,
    ) -> Result<Bot, BotError> {
        let flow = Flow::load_with(path, &registry.names(), limits)?;
        Bot::new(flow, registry)
    }

    /// Loads a flow file and binds it, checking the WhatsApp templates it
    /// names against the account's approved `templates` (when known).
    pub fn load_with_templates(
        path: impl AsRef<Path>,
        registry: Registry,
        limits: &FlowLimits,
        templates: Option<&[crate::flow::TemplateInfo]>,
    ) -> Result<Bot, BotError> {
        let mut names = registry.names();
        names.templates = templates.map(<[_]>::to_vec);
        let flow = Flow::load_with(path, &names, limits)?;
        Bot::new(flow, registry)
    }

    /// Loads a flow from text and binds it.
    pub fn from_yaml(
        name: impl AsRef<Path>,
        yaml: &str,
        registry: Registry,
    ) -> Result<Bot, BotError> {
        let flow = Flow::from_yaml(name, yaml, &registry.names())?;
        Bot::new(flow, registry)
    }

    /// The flow.
    pub fn flow(&self) -> &Arc<Flow> {
        &self.flow
    }
}

impl Turn {
    /// This turn followed by `next`, which started from this one's stored form
    /// (two steps committed as one).
    pub fn then(mut self, next: Turn) -> Turn {
        self.stored = next.stored;
        self.due = next.due;
        self.messages.extend(next.messages);
        self.effects.extend(next.effects);
        self.trace.extend(next.trace);
        self.errors.extend(next.errors);
        self.released |= next.released;
        self.withheld += next.withheld;
        self.schedule = self.schedule.or(next.schedule);
        self.intent = self.intent.or(next.intent);
        self.window_closes = match (self.window_closes, next.window_closes) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        self
    }

    /// The session after the turn.
    pub fn session(&self) -> Option<&Session> {
        self.stored.as_ref().map(|s| &s.session)
    }

    /// The name of the state the conversation is in after the turn.
    pub fn state(&self) -> Option<&str> {
        self.stored.as_ref().map(|s| &*s.state)
    }
}
