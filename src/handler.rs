//! Extension points: Rust code a flow calls by name.
//!
//! - [`Action`] (`call: { action: NAME, args: {..} }` in YAML): async code run on
//!   entering a state, with the variables, the message and the contact at hand; it
//!   may set variables, say messages, and continue, jump or fail.
//! - [`Matcher`] (`match: NAME` in a rule): a custom condition.
//! - [`Hook`]: called before and after every turn (logging, analytics).
//!
//! All three are registered by name in a [`Registry`], which a user's binary hands
//! to [`cli::main`](crate::cli::main). A plain closure serves as an action or a
//! matcher (blanket impls), so small handlers need no type of their own:
//!
//! ```
//! use flowbot::{ActionContext, ActionOutcome, Registry};
//! let registry = Registry::new()
//!     .action("lookup_order", |ctx: &mut ActionContext<'_>| {
//!         let even = ctx.arg_str("number").and_then(|n| n.parse::<u64>().ok()).is_some_and(|n| n % 2 == 0);
//!         ctx.set("status", if even { "shipped" } else { "processing" });
//!         Ok(ActionOutcome::Continue)
//!     });
//! assert!(registry.names().actions.contains(&"lookup_order".to_string()));
//! ```

use async_trait::async_trait;
use minijinja::Value;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use crate::flow::template::VarList;
use crate::flow::HandlerNames;
use crate::message::{Contact, Effect, Event, Incoming, Outgoing};

/// Rust code run when a state with `call:` is entered.
///
/// ```
/// use flowbot::{Action, ActionContext, ActionError, ActionOutcome};
/// struct CheckStock;
/// #[flowbot::async_trait]
/// impl Action for CheckStock {
///     async fn run(&self, ctx: &mut ActionContext<'_>) -> Result<ActionOutcome, ActionError> {
///         let sku = ctx.arg_str("sku").ok_or_else(|| ActionError::new("no sku"))?;
///         ctx.set("in_stock", !sku.is_empty());
///         Ok(ActionOutcome::Continue)
///     }
/// }
/// ```
#[async_trait]
pub trait Action: Send + Sync + 'static {
    /// Runs the action. An `Err` sends the conversation down the flow's error path
    /// (`on_error`); it never stops the bot.
    async fn run(&self, ctx: &mut ActionContext<'_>) -> Result<ActionOutcome, ActionError>;
}

#[async_trait]
impl<F> Action for F
where
    F: Fn(&mut ActionContext<'_>) -> Result<ActionOutcome, ActionError> + Send + Sync + 'static,
{
    async fn run(&self, ctx: &mut ActionContext<'_>) -> Result<ActionOutcome, ActionError> {
        self(ctx)
    }
}

/// What happens after an action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActionOutcome {
    /// Go on with the state (`set`, `say`, `next`).
    Continue,
    /// Jump to another state by name instead.
    Goto(String),
}

/// An action failed; the message is logged and the flow's error path runs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ActionError {
    /// What went wrong.
    pub message: String,
}

impl ActionError {
    /// An error with a message.
    pub fn new(message: impl Into<String>) -> Self {
        ActionError {
            message: message.into(),
        }
    }
}

impl From<String> for ActionError {
    fn from(message: String) -> Self {
        ActionError { message }
    }
}

impl From<&str> for ActionError {
    fn from(message: &str) -> Self {
        ActionError::new(message)
    }
}

/// A read-only view of a conversation's variables: the session's over the flow's
/// defaults.
#[derive(Clone, Copy)]
pub struct Vars<'a> {
    pub(crate) session: &'a VarList,
    pub(crate) defaults: &'a VarList,
}

impl<'a> Vars<'a> {
    /// A variable's value.
    pub fn get(&self, name: &str) -> Option<&'a Value> {
        self.session
            .iter()
            .rev()
            .find(|(k, _)| &**k == name)
            .or_else(|| self.defaults.iter().find(|(k, _)| &**k == name))
            .map(|(_, v)| v)
    }

    /// A variable as text, if it is a string.
    pub fn get_str(&self, name: &str) -> Option<&'a str> {
        self.get(name).and_then(Value::as_str)
    }
}

impl fmt::Debug for Vars<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut m = f.debug_map();
        for (k, v) in self.defaults.iter().chain(self.session.iter()) {
            m.entry(k, v);
        }
        m.finish()
    }
}

/// Everything an action can see and do.
pub struct ActionContext<'a> {
    pub(crate) conversation: &'a str,
    pub(crate) state: &'a str,
    pub(crate) args: BTreeMap<&'a str, Value>,
    pub(crate) vars: &'a mut VarList,
    pub(crate) defaults: &'a VarList,
    pub(crate) message: Option<&'a Incoming>,
    pub(crate) contact: &'a Contact,
    pub(crate) out: &'a mut Vec<Outgoing>,
}

impl<'a> ActionContext<'a> {
    /// The conversation's id.
    pub fn conversation(&self) -> &str {
        self.conversation
    }

    /// The state whose `call:` runs this action.
    pub fn state(&self) -> &str {
        self.state
    }

    /// An argument (`args:` in YAML; strings are rendered templates).
    pub fn arg(&self, name: &str) -> Option<&Value> {
        self.args.get(name)
    }

    /// An argument as text.
    pub fn arg_str(&self, name: &str) -> Option<&str> {
        self.arg(name).and_then(Value::as_str)
    }

    /// A variable.
    pub fn var(&self, name: &str) -> Option<&Value> {
        Vars {
            session: self.vars,
            defaults: self.defaults,
        }
        .get(name)
    }

    /// Sets a variable for the rest of the conversation.
    pub fn set(&mut self, name: &str, value: impl Into<Value>) {
        set_var(self.vars, name, value.into());
    }

    /// The message that led here, if a message did (not a timer).
    pub fn message(&self) -> Option<&Incoming> {
        self.message
    }

    /// The customer.
    pub fn contact(&self) -> &Contact {
        self.contact
    }

    /// Sends a text message (before the state's own `say`).
    pub fn say(&mut self, text: impl Into<String>) {
        self.out.push(Outgoing::text(text));
    }

    /// Sends any message.
    pub fn send(&mut self, message: Outgoing) {
        self.out.push(message);
    }
}

/// Sets or replaces a variable in a list.
pub(crate) fn set_var(vars: &mut VarList, name: &str, value: Value) {
    match vars.iter_mut().find(|(k, _)| &**k == name) {
        Some((_, v)) => *v = value,
        None => vars.push((Arc::from(name), value)),
    }
}

/// Variables a matcher captured (like a regex's named groups).
pub type Captures = Vec<(String, Value)>;

/// A custom condition (`match: NAME` in a rule).
///
/// ```
/// use flowbot::{Registry, Vars};
/// use flowbot::Incoming;
/// let r = Registry::new().matcher("shouting", |m: &Incoming, _: &Vars<'_>| {
///     (m.text.len() > 3 && m.text == m.text.to_uppercase()).then(Vec::new)
/// });
/// assert_eq!(r.names().matchers, vec!["shouting".to_string()]);
/// ```
pub trait Matcher: Send + Sync + 'static {
    /// `Some` (with variables to set, maybe none) if the message matches.
    fn matches(&self, message: &Incoming, vars: &Vars<'_>) -> Option<Captures>;
}

impl<F> Matcher for F
where
    F: Fn(&Incoming, &Vars<'_>) -> Option<Captures> + Send + Sync + 'static,
{
    fn matches(&self, message: &Incoming, vars: &Vars<'_>) -> Option<Captures> {
        self(message, vars)
    }
}

/// What a turn did, for hooks.
#[derive(Debug)]
pub struct TurnRecord<'a> {
    /// The conversation.
    pub conversation: &'a str,
    /// What came in.
    pub event: &'a Event,
    /// The state before the turn (none: no session).
    pub from: Option<&'a str>,
    /// The state after the turn (none: the session ended or was released).
    pub to: Option<&'a str>,
    /// What the bot sent.
    pub messages: &'a [Outgoing],
    /// Handoff, end.
    pub effects: &'a [Effect],
    /// Handler and template errors met on the way (each already logged).
    pub errors: &'a [String],
}

/// Called around every turn: logging, analytics, auditing.
#[async_trait]
pub trait Hook: Send + Sync + 'static {
    /// Before the engine runs the turn.
    async fn before_turn(&self, _conversation: &str, _event: &Event) {}
    /// After the turn, with what it did.
    async fn after_turn(&self, _turn: &TurnRecord<'_>) {}
}

/// Named handlers a flow may use, and the hooks to run.
#[derive(Clone, Default)]
pub struct Registry {
    pub(crate) actions: BTreeMap<String, Arc<dyn Action>>,
    pub(crate) matchers: BTreeMap<String, Arc<dyn Matcher>>,
    pub(crate) hooks: Vec<Arc<dyn Hook>>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("actions", &self.actions.keys().collect::<Vec<_>>())
            .field("matchers", &self.matchers.keys().collect::<Vec<_>>())
            .field("hooks", &self.hooks.len())
            .finish()
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers an action under a name (replacing one of the same name).
    pub fn action(mut self, name: impl Into<String>, action: impl Action) -> Self {
        self.actions.insert(name.into(), Arc::new(action));
        self
    }

    /// Registers a matcher under a name.
    pub fn matcher(mut self, name: impl Into<String>, matcher: impl Matcher) -> Self {
        self.matchers.insert(name.into(), Arc::new(matcher));
        self
    }

    /// Adds a hook.
    pub fn hook(mut self, hook: impl Hook) -> Self {
        self.hooks.push(Arc::new(hook));
        self
    }

    /// The names registered, for loading flows.
    pub fn names(&self) -> HandlerNames {
        HandlerNames {
            actions: self.actions.keys().cloned().collect(),
            matchers: self.matchers.keys().cloned().collect(),
            templates: None,
        }
    }
}
