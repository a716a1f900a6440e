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

/// Everything an action can see and do: its arguments, the conversation's
/// variables, the message and the customer; it sets variables and sends
/// messages of its own (before the state's `say:`).
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// use flowbot::{ActionContext, ActionError, ActionOutcome, Choice, Outgoing};
/// use flowbot::{Registry, TestConversation};
///
/// let yaml = r#"
/// states:
///   start:
///     say: Your order number?
///     on:
///       - { match: any_text, goto: lookup }
///   lookup:
///     call: { action: lookup_order, args: { number: "{{ answer }}", tries: 2 } }
///     say: "Order {{ number }} is {{ status }}."
/// "#;
/// fn lookup(ctx: &mut ActionContext<'_>) -> Result<ActionOutcome, ActionError> {
///     assert_eq!(ctx.state(), "lookup");
///     assert_eq!(ctx.conversation(), "test"); // TestConversation's id
///     assert_eq!(ctx.arg("tries").and_then(|v| v.as_usize()), Some(2));
///     let number = ctx.arg_str("number").ok_or("no number")?.to_owned();
///     // The message that led here, and who wrote it.
///     assert_eq!(ctx.message().map(|m| m.text.as_str()), Some("123"));
///     let name = ctx.contact().first_name.clone().unwrap_or_default();
///     if number.len() != 3 {
///         return Ok(ActionOutcome::Goto("start".into()));
///     }
///     ctx.set("number", number.as_str());
///     ctx.set("status", "shipped");
///     assert_eq!(ctx.var("status").and_then(|v| v.as_str()), Some("shipped"));
///     ctx.say(format!("Looking it up, {name}..."));
///     ctx.send(Outgoing {
///         text: "Track it?".into(),
///         quick_replies: vec![Choice { id: "track".into(), title: "Track".into(), description: None }],
///         ..Outgoing::default()
///     });
///     Ok(ActionOutcome::Continue)
/// }
/// let registry = Registry::new()
///     .action("lookup_order", lookup)
///     .matcher("any_text", |m: &flowbot::Incoming, _: &flowbot::Vars<'_>| {
///         Some(vec![("answer".to_string(), m.text.clone().into())])
///     });
/// let mut chat = TestConversation::from_yaml(yaml, registry).unwrap().contact(flowbot::Contact {
///     first_name: Some("Ada".into()),
///     ..Default::default()
/// });
/// chat.send("hi").await;
/// let said: Vec<String> = chat.send("123").await.iter().map(|m| m.text.clone()).collect();
/// assert_eq!(said, ["Looking it up, Ada...", "Track it?", "Order 123 is shipped."]);
/// # });
/// ```
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
///
/// ```
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// use flowbot::{Hook, Registry, TurnRecord};
/// #[derive(Default)]
/// struct CountTurns(AtomicUsize);
/// #[flowbot::async_trait]
/// impl Hook for CountTurns {
///     async fn after_turn(&self, turn: &TurnRecord<'_>) {
///         self.0.fetch_add(1, Ordering::Relaxed);
///         tracing::info!(from = ?turn.from, to = ?turn.to, sent = turn.messages.len(), "turn");
///     }
/// }
/// let registry = Registry::new().hook(CountTurns::default());
/// # let _ = registry;
/// ```
#[async_trait]
pub trait Hook: Send + Sync + 'static {
    /// Before the engine runs the turn.
    async fn before_turn(&self, _conversation: &str, _event: &Event) {}
    /// After the turn, with what it did.
    async fn after_turn(&self, _turn: &TurnRecord<'_>) {}
}

/// Named handlers a flow may use, and the hooks to run: what a bot's binary
/// hands to [`crate::main`] (the whole CLI) or [`crate::start`].
///
/// ```no_run
/// use flowbot::{ActionContext, ActionError, ActionOutcome, Incoming, Registry, Vars};
///
/// fn create_ticket(ctx: &mut ActionContext<'_>) -> Result<ActionOutcome, ActionError> {
///     let phone = ctx.arg_str("phone").ok_or("no phone")?;
///     ctx.set("ticket", format!("CB-{}", &phone[phone.len().saturating_sub(4)..]));
///     Ok(ActionOutcome::Continue)
/// }
///
/// fn main() -> std::process::ExitCode {
///     let registry = Registry::new()
///         // `call: { action: create_ticket, args: { phone: "{{ phone }}" } }`
///         .action("create_ticket", create_ticket)
///         // `on: [{ match: order_number, goto: lookup }]`
///         .matcher("order_number", |m: &Incoming, _: &Vars<'_>| {
///             let digits: String = m.text.chars().filter(char::is_ascii_digit).collect();
///             (digits.len() == 6).then(|| vec![("number".to_string(), digits.into())])
///         });
///     // `cargo run -- demo`, `-- test`, `-- run`...: every command, with these.
///     flowbot::main(registry)
/// }
/// ```
#[derive(Clone, Default)]
pub struct Registry {
    pub(crate) actions: BTreeMap<String, Arc<dyn Action>>,
    pub(crate) matchers: BTreeMap<String, Arc<dyn Matcher>>,
    pub(crate) hooks: Vec<Arc<dyn Hook>>,
    /// What sends the flow's `http:` requests (none: the place the bot runs
    /// chooses, see [`crate::fetch`]).
    pub(crate) http: Option<Arc<dyn crate::fetch::HttpClient>>,
    /// Asked for a message's intent before the built-in classifier.
    pub(crate) classifier: Option<Arc<dyn crate::nlu::Classifier>>,
    /// The installed `flowbot`'s registry (see [`Registry::generic`]).
    pub(crate) generic: bool,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("actions", &self.actions.keys().collect::<Vec<_>>())
            .field("matchers", &self.matchers.keys().collect::<Vec<_>>())
            .field("hooks", &self.hooks.len())
            .field("http", &self.http.is_some())
            .field(
                "classifier",
                &self.classifier.as_ref().map(|c| c.name().to_owned()),
            )
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

    /// Sends the flow's `http:` requests with `client` (for example
    /// [`HttpMocks`](crate::HttpMocks) in a test). Without one, `flowbot
    /// run` calls the network within the allow lists and everything else
    /// (tests, `replay`, `chat`) calls nothing unless given `--live-http`.
    pub fn http(mut self, client: impl crate::fetch::HttpClient) -> Self {
        self.http = Some(Arc::new(client));
        self
    }

    /// Asks `classifier` for a message's intent (an LLM, a service of your
    /// own) before the flow's built-in classifier, which answers whenever
    /// it does not: see [`Classifier`](crate::Classifier).
    pub fn classifier(mut self, classifier: impl crate::nlu::Classifier) -> Self {
        self.classifier = Some(Arc::new(classifier));
        self
    }

    /// As [`Registry::classifier`], unless one is registered already.
    pub(crate) fn classifier_or(mut self, classifier: Arc<dyn crate::nlu::Classifier>) -> Self {
        self.classifier.get_or_insert(classifier);
        self
    }

    /// As [`Registry::http`], unless a client is registered already.
    pub(crate) fn http_or(mut self, client: Arc<dyn crate::fetch::HttpClient>) -> Self {
        self.http.get_or_insert(client);
        self
    }

    /// The names registered, for loading flows.
    pub fn names(&self) -> HandlerNames {
        HandlerNames {
            actions: self.actions.keys().cloned().collect(),
            matchers: self.matchers.keys().cloned().collect(),
            templates: None,
            generic: self.generic,
        }
    }

    /// Marks the registry of the installed `flowbot` binary: it knows its
    /// examples' actions, never a project's, and an unknown action's error
    /// says to check a project with the project's own binary.
    #[doc(hidden)]
    pub fn generic(mut self) -> Self {
        self.generic = true;
        self
    }
}
