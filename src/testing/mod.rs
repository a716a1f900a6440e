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
    /// Errors met in the turn (handler failures, templates).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

/// The whole conversation so far.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Transcript(pub Vec<Exchange>);

impl Transcript {
    /// As YAML, the form snapshots store.
    pub fn to_yaml(&self) -> String {
        crate::flow::to_yaml(self)
    }
}

/// A conversation with a bot, in memory, on a manual clock.
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
        }
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
            if stuck {
                break;
            }
        }
        self.clock.set(until.max(self.clock.now()));
        exchange.state = self.state().map(str::to_owned);
        self.transcript.0.push(exchange);
        &self.transcript.0.last().expect("just pushed").bot
    }

    /// Swaps in another version of the bot, as `flowbot run` does when the flow
    /// file changes: the next step places the conversation in the new flow (by
    /// state name and `migrate:`), or starts it over with
    /// `settings.restart_message` when its state is gone.
    pub fn reload(&mut self, bot: impl Into<Arc<Bot>>, label: &str) {
        self.bot = bot.into();
        self.reloaded = true;
        self.transcript.0.push(Exchange {
            customer: Customer::Reload(label.into()),
            bot: Vec::new(),
            effects: Vec::new(),
            state: self.state().map(str::to_owned),
            errors: Vec::new(),
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
        self.stored = turn.stored;
        self.due = turn.due;
        self.record(turn.trace);
        self.transcript.0.push(Exchange {
            customer,
            bot: turn.messages,
            effects: turn.effects,
            state: None,
            errors: turn.errors,
        });
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
