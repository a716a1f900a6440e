//! Conversation tests: drive a bot like a customer would, snapshot what it said.
//!
//! From Rust, [`TestConversation`] sends text, taps buttons, picks list rows, lets
//! an agent join or leave and moves a manual clock; its [`Transcript`] is made for
//! `insta::assert_yaml_snapshot!`: each entry is what the customer did, what the
//! bot answered and the state it is in, in the same shape as `flowbot replay`.
//!
//! From YAML, [`suite`] runs `tests/conversations/*.yaml` files (a flow, a channel,
//! a language and steps) and compares their transcripts with insta snapshot files,
//! both from `flowbot test` and from `cargo test`.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! use flowbot::TestConversation;
//! use flowbot::Registry;
//! let yaml = "states:\n  start:\n    say: Hi!\n    on:\n      - { text: bye, say: Bye!, goto: done }\n  done: { end: true }\n";
//! let mut chat = TestConversation::from_yaml(yaml, Registry::new()).unwrap();
//! chat.send("hello").await;
//! chat.send("bye").await;
//! assert_eq!(chat.state(), None);
//! let t = chat.transcript();
//! assert_eq!(t.0[1].bot[0].text, "Bye!");
//! # });
//! ```

pub mod explore;
mod mock;
pub mod suite;

pub use mock::{Mock, MockCall, MockDoc};

use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;

use crate::engine::{Bot, BotError, Session, Step, Stored};
use crate::handler::Registry;
use crate::message::{Channel, Contact, Effect, Event, Incoming, MediaKind, Outgoing};
use crate::nlu::Verdict;
use crate::time::{Clock, ManualClock, Millis};

/// 2026-01-01T00:00:00Z: where test clocks start, so transcripts are stable.
pub const EPOCH: Millis = 1_767_225_600_000;

/// A wait as transcripts write it: humantime's form, but in days rather than
/// its 30.44-day months (`45days 8h`, not `1month 14days 22h 30m 36s`).
fn wait_text(d: Duration) -> String {
    let secs = d.as_secs();
    let (days, rest) = (secs / 86_400, secs % 86_400);
    if days < 28 {
        return humantime::format_duration(d).to_string();
    }
    let rest = Duration::from_secs(rest);
    if rest.is_zero() {
        format!("{days}days")
    } else {
        format!("{days}days {}", humantime::format_duration(rest))
    }
}

/// What the customer (or an agent, or time) did in one step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Customer {
    /// Sent text.
    Text(String),
    /// Tapped a quick-reply button.
    Button(String),
    /// Picked a list row.
    List(String),
    /// Sent media of a kind.
    Media(MediaKind),
    /// `agent_joined` or `agent_left`.
    Event(String),
    /// Time passed (humantime form, like `31m`); idle nudges that fell due
    /// meanwhile are what the bot says.
    Wait(String),
    /// The flow was reloaded from this file (a new version of the bot).
    Reload(String),
    /// The business started the conversation in a state.
    Start(crate::message::Start),
}

/// One step of a transcript.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Exchange {
    /// What came in.
    #[serde(flatten)]
    pub customer: Customer,
    /// What the bot sent.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub bot: Vec<Outgoing>,
    /// Handoff, end.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub effects: Vec<Effect>,
    /// The state afterwards (`~`: no session).
    pub state: Option<String>,
    /// How the message was classified, when a rule asked for its intent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub intent: Option<crate::engine::Classified>,
    /// Errors met in the turn (handler failures, templates).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

/// The whole conversation so far: each step, what the bot answered and the
/// state after it. Snapshot it with `insta::assert_yaml_snapshot!(chat.transcript())`
/// (or [`Transcript::to_yaml`]), the form `flowbot test` keeps.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// use flowbot::{Customer, Registry, TestConversation};
/// let yaml = "states:\n  start:\n    say: Hi!\n";
/// let mut chat = TestConversation::from_yaml(yaml, Registry::new()).unwrap();
/// chat.send("hello").await;
/// let t = chat.transcript();
/// assert_eq!(t.0[0].customer, Customer::Text("hello".into()));
/// assert_eq!(t.0[0].state.as_deref(), Some("start"));
/// assert_eq!(t.to_yaml(), "- text: hello\n  bot:\n  - text: Hi!\n  state: start\n");
/// # });
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Transcript(pub Vec<Exchange>);

impl Transcript {
    /// As YAML, the form snapshots store.
    pub fn to_yaml(&self) -> String {
        crate::flow::to_yaml(self)
    }
}

/// A conversation with a bot, in memory, on a manual clock (from
/// [`EPOCH`], 2026-01-01 00:00 UTC, unless [`TestConversation::at`] says
/// otherwise): the customer writes, taps and picks, an agent joins and
/// leaves, time passes; each step returns what the bot said, and
/// [`TestConversation::transcript`] keeps them all for a snapshot.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// use std::time::Duration;
/// use flowbot::{Channel, Registry, TestConversation};
/// let yaml = r#"
/// settings: { default_language: en }
/// intents:
///   - { text: agent, goto: person }
/// states:
///   start:
///     say:
///       - text: { en: "Hi! Pick one.", tr: "Merhaba! Birini seçin." }
///         quick_replies: [{ id: orders, title: Orders }]
///       - list:
///           body: Or from the list
///           button: Options
///           sections: [{ rows: [{ id: hours, title: Opening hours }] }]
///     on:
///       - { button: orders, say: "Your order number?", goto: orders }
///       - { list: hours, say: "9 to 5." }
///     after: { idle: 10m, say: "Still there?" }
///   orders:
///     ask: { text: "Your order number?", save: number }
///     next: start
///   person:
///     say: "A person will answer."
///     handoff: true
/// "#;
/// let mut chat = TestConversation::from_yaml(yaml, Registry::new())
///     .unwrap()
///     .channel(Channel::WhatsApp)
///     .language("tr");
/// assert_eq!(chat.send("merhaba").await[0].text, "Merhaba! Birini seçin.");
/// assert_eq!(chat.pick("hours").await[0].text, "9 to 5.");
/// assert_eq!(chat.wait(Duration::from_secs(600)).await[0].text, "Still there?");
/// chat.tap("orders").await;
/// assert_eq!(chat.state(), Some("orders"));
/// chat.send("agent").await;
/// assert!(chat.in_handoff());
/// assert!(chat.send("hello?").await.is_empty(), "silent while a person has it");
/// chat.agent_leaves().await;
/// assert!(!chat.in_handoff());
/// assert_eq!(chat.transcript().0.len(), 7);
/// # });
/// ```
pub struct TestConversation {
    bot: Arc<Bot>,
    id: String,
    stored: Option<Stored>,
    /// When the idle nudge of the current state falls due.
    due: Option<Millis>,
    clock: ManualClock,
    channel: Channel,
    contact: Contact,
    transcript: Transcript,
    steps: Vec<Step>,
    /// Another bot was swapped in: its steps are not the first flow's.
    reloaded: bool,
    /// Classifications set ahead by [`TestConversation::classify_as`].
    stub: Option<Arc<crate::nlu::Stub>>,
}

impl TestConversation {
    /// A conversation with a bot.
    pub fn new(bot: impl Into<Arc<Bot>>) -> Self {
        TestConversation {
            bot: bot.into(),
            id: "test".into(),
            stored: None,
            due: None,
            clock: ManualClock::new(EPOCH),
            channel: Channel::WhatsApp,
            contact: Contact::default(),
            transcript: Transcript::default(),
            steps: Vec::new(),
            reloaded: false,
            stub: None,
        }
    }

    /// The next message is classified as `verdict`, whatever its text says
    /// (the flow's classifiers are not asked): a test of what a flow does
    /// with an intent, or with "not sure", that does not depend on the
    /// examples. The transcript records it with `by: stub`.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// use flowbot::{Bot, Registry, TestConversation, Verdict};
    /// let yaml = r#"
    /// nlu:
    ///   intents:
    ///     track_order: { examples: ["where is my order"] }
    ///     cancel_order: { examples: ["cancel my order"] }
    /// states:
    ///   start:
    ///     say: Hi!
    ///     on:
    ///       - { intent: track_order, say: "On its way." }
    ///       - { intent: cancel_order, say: "Cancelled." }
    /// "#;
    /// let mut chat = TestConversation::new(Bot::from_yaml("t.yaml", yaml, Registry::new()).unwrap());
    /// chat.send("hi").await;
    /// chat.classify_as(Verdict::intent("cancel_order", 0.71));
    /// assert_eq!(chat.send("whatever it says").await[0].text, "Cancelled.");
    /// let intent = chat.transcript().0.last().unwrap().intent.clone().unwrap();
    /// assert_eq!((intent.intent.as_deref(), intent.confidence), (Some("cancel_order"), 0.71));
    /// # });
    /// ```
    pub fn classify_as(&mut self, verdict: Verdict) -> &mut Self {
        let stub = match &self.stub {
            Some(s) => s.clone(),
            None => {
                let stub = Arc::new(crate::nlu::Stub {
                    next: Default::default(),
                    inner: self.bot.classifier.clone(),
                });
                self.bot = Arc::new(self.bot.with_classifier(stub.clone()));
                self.stub = Some(stub.clone());
                stub
            }
        };
        stub.next
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back(verdict);
        self
    }

    /// A conversation with a flow given as YAML text.
    pub fn from_yaml(yaml: &str, registry: Registry) -> Result<Self, BotError> {
        Ok(Self::new(Bot::from_yaml("test.yaml", yaml, registry)?))
    }

    /// A conversation with a flow file.
    pub fn load(path: impl AsRef<std::path::Path>, registry: Registry) -> Result<Self, BotError> {
        Ok(Self::new(Bot::load(path, registry)?))
    }

    /// Sets the time the conversation starts at (default: [`EPOCH`]).
    pub fn at(self, time: Millis) -> Self {
        self.clock.set(time);
        self
    }

    /// Sets the channel (default: WhatsApp).
    pub fn channel(mut self, channel: Channel) -> Self {
        self.channel = channel;
        self
    }

    /// Sets the contact's language.
    pub fn language(mut self, lang: impl Into<String>) -> Self {
        self.contact.language = Some(lang.into());
        self
    }

    /// Sets the contact.
    pub fn contact(mut self, contact: Contact) -> Self {
        self.contact = contact;
        self
    }

    /// Sends text; returns the bot's answer.
    pub async fn send(&mut self, text: &str) -> &[Outgoing] {
        let m = Incoming::text(text);
        self.message(Customer::Text(text.into()), m).await
    }

    /// Taps a quick-reply button by id.
    pub async fn tap(&mut self, id: &str) -> &[Outgoing] {
        let m = Incoming::button(id);
        self.message(Customer::Button(id.into()), m).await
    }

    /// Picks a list row by id.
    pub async fn pick(&mut self, id: &str) -> &[Outgoing] {
        let m = Incoming::list(id);
        self.message(Customer::List(id.into()), m).await
    }

    /// Sends media.
    pub async fn media(&mut self, kind: MediaKind) -> &[Outgoing] {
        let m = Incoming::media(kind, "");
        self.message(Customer::Media(kind), m).await
    }

    /// A person joins the conversation.
    pub async fn agent_joins(&mut self) -> &[Outgoing] {
        self.event(Event::AgentJoined).await
    }

    /// The person leaves (the conversation is released).
    pub async fn agent_leaves(&mut self) -> &[Outgoing] {
        self.event(Event::AgentLeft).await
    }

    /// Lets time pass. Idle nudges (`after:`) that fall due meanwhile fire, in
    /// order and at their due time, as the runtime's timers would fire them;
    /// returns what they said.
    pub async fn wait(&mut self, d: Duration) -> &[Outgoing] {
        let until = self.clock.now().saturating_add(d.as_millis() as Millis);
        let mut exchange = Exchange {
            customer: Customer::Wait(wait_text(d)),
            bot: Vec::new(),
            effects: Vec::new(),
            state: None,
            errors: Vec::new(),
            intent: None,
        };
        // A nudge may lead to a state with a nudge of its own; each fires once.
        while let Some(due) = self.due.filter(|&t| t <= until) {
            self.clock.set(due.max(self.clock.now()));
            let turn = self
                .bot
                .step(
                    &self.id,
                    self.stored.take(),
                    &Event::Idle { due },
                    self.clock.now(),
                )
                .await;
            let stuck = turn.due == Some(due);
            self.stored = turn.stored;
            self.due = turn.due;
            self.record(turn.trace);
            exchange.bot.extend(turn.messages);
            exchange.effects.extend(turn.effects);
            exchange.errors.extend(turn.errors);
            self.mask(&mut exchange, &turn.ended_vars, false);
            if stuck {
                break;
            }
        }
        self.clock.set(until.max(self.clock.now()));
        exchange.state = self.state().map(str::to_owned);
        self.transcript.0.push(exchange);
        &self.transcript.0.last().expect("just pushed").bot
    }

    /// Whether a step's trace took a valid answer to an `ask` whose variable
    /// is personal data (`pii`): the customer's words are then masked whole.
    fn answers_private(&self, trace: &[Step]) -> bool {
        let flow = self.bot.flow();
        trace.iter().any(|s| match s {
            Step::Valid(id) => flow
                .state(*id)
                .ask
                .as_ref()
                .is_some_and(|a| flow.is_private(&a.save)),
            _ => false,
        })
    }

    /// Masks personal data (`pii` variables) in what a step recorded: each
    /// value where the bot's messages repeat it, as `[pii:NAME]`, and the
    /// customer's answer to a `pii` question whole.
    fn mask(&self, exchange: &mut Exchange, ended: &crate::flow::template::VarList, answer: bool) {
        let flow = self.bot.flow();
        if flow.private.is_empty() {
            return;
        }
        let vars = match &self.stored {
            Some(s) => &s.session.vars,
            None => ended,
        };
        let values: Vec<(String, String)> = vars
            .iter()
            .filter(|(k, _)| flow.is_private(k))
            .filter_map(|(k, v)| {
                let text = v.as_str().map_or_else(|| v.to_string(), str::to_owned);
                (!text.is_empty() && text != "none").then(|| (text, format!("[pii:{k}]")))
            })
            .collect();
        let hide = |text: &mut String| {
            for (value, mask) in &values {
                if text.contains(value.as_str()) {
                    *text = text.replace(value.as_str(), mask);
                }
            }
        };
        for m in &mut exchange.bot {
            hide(&mut m.text);
            if let Some(list) = &mut m.list {
                hide(&mut list.body);
            }
        }
        if let Customer::Text(t) = &mut exchange.customer {
            if answer {
                *t = "[pii]".into();
            } else {
                hide(t);
            }
        }
    }

    /// Swaps in another version of the bot, as `flowbot run` does when the flow
    /// file changes: the next step places the conversation in the new flow (by
    /// state name and `migrate:`), or starts it over with
    /// `settings.restart_message` when its state is gone.
    pub fn reload(&mut self, bot: impl Into<Arc<Bot>>, label: &str) {
        self.bot = bot.into();
        if let Some(stub) = &self.stub {
            self.bot = Arc::new(self.bot.with_classifier(stub.clone()));
        }
        self.reloaded = true;
        self.transcript.0.push(Exchange {
            customer: Customer::Reload(label.into()),
            bot: Vec::new(),
            effects: Vec::new(),
            state: self.state().map(str::to_owned),
            errors: Vec::new(),
            intent: None,
        });
    }

    /// Runs any incoming message (with its channel and contact set from this
    /// conversation unless already set).
    pub async fn message(&mut self, customer: Customer, mut m: Incoming) -> &[Outgoing] {
        m.channel = self.channel;
        if m.contact == Contact::default() {
            m.contact = self.contact.clone();
        }
        self.event_inner(customer, Event::Message(m)).await
    }

    /// The business starts the conversation in a state (as `flowbot start`
    /// or `POST /api/start` would).
    pub async fn start(&mut self, start: crate::message::Start) -> &[Outgoing] {
        let mut event = start.clone();
        event.channel = event.channel.or(Some(self.channel));
        self.event_inner(Customer::Start(start), Event::Start(event))
            .await
    }

    /// Runs an event other than a message (`agent_joined`, `agent_left`, ...).
    pub async fn event(&mut self, e: Event) -> &[Outgoing] {
        self.event_inner(Customer::Event(e.word().into()), e).await
    }

    async fn event_inner(&mut self, customer: Customer, e: Event) -> &[Outgoing] {
        let turn = self
            .bot
            .step(&self.id, self.stored.take(), &e, self.clock.now())
            .await;
        // A classification set ahead is for this message only.
        if let Some(stub) = &self.stub {
            stub.next.lock().unwrap_or_else(|e| e.into_inner()).clear();
        }
        let answered_private = self.answers_private(&turn.trace);
        let mut exchange = Exchange {
            customer,
            bot: turn.messages,
            effects: turn.effects,
            state: None,
            errors: turn.errors,
            intent: turn.intent,
        };
        self.stored = turn.stored;
        self.due = turn.due;
        self.record(turn.trace);
        self.mask(&mut exchange, &turn.ended_vars, answered_private);
        self.transcript.0.push(exchange);
        let state = self.state().map(str::to_owned);
        let last = self.transcript.0.last_mut().expect("just pushed");
        last.state = state;
        &last.bot
    }

    /// The current state's name (`None`: no conversation in progress; one
    /// that ended and is kept only for a schedule counts as none).
    pub fn state(&self) -> Option<&str> {
        let stored = self.stored.as_ref().filter(|s| !s.session.kept)?;
        Some(&stored.state)
    }

    /// A variable as the conversation sees it: set in the session, else the
    /// bot's default (the flow's `vars:`, [`Bot::with_vars`]).
    pub fn var(&self, name: &str) -> Option<&minijinja::Value> {
        self.session()
            .and_then(|s| s.var(name))
            .or_else(|| self.bot.default_var(name))
    }

    /// The session.
    pub fn session(&self) -> Option<&Session> {
        self.stored.as_ref().map(|s| &s.session)
    }

    /// When the current state's idle nudge falls due, if it has one.
    pub fn idle_due(&self) -> Option<Millis> {
        self.due
    }

    /// Whether a person has the conversation.
    pub fn in_handoff(&self) -> bool {
        self.session().is_some_and(|s| s.handoff)
    }

    /// Everything so far.
    pub fn transcript(&self) -> &Transcript {
        &self.transcript
    }

    fn record(&mut self, trace: Vec<Step>) {
        if !self.reloaded {
            self.steps.extend(trace);
        }
    }

    /// Every step the engine took in the first flow (for coverage).
    pub fn steps(&self) -> &[Step] {
        &self.steps
    }

    /// The bot.
    pub fn bot(&self) -> &Arc<Bot> {
        &self.bot
    }
}
