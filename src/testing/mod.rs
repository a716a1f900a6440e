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
//! use flowbot::testing::TestConversation;
//! use flowbot::handler::Registry;
//! let yaml = "states:\n  start:\n    say: Hi!\n    on:\n      - { text: bye, say: Bye!, goto: done }\n  done: { end: true }\n";
//! let mut chat = TestConversation::from_yaml(yaml, Registry::new()).unwrap();
//! chat.send("hello").await;
//! chat.send("bye").await;
//! assert_eq!(chat.state(), None);
//! let t = chat.transcript();
//! assert_eq!(t.0[1].bot[0].text, "Bye!");
//! # });
//! ```

pub mod suite;

use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;

use crate::engine::{Bot, BotError, Clock, ManualClock, Millis, Session, Step};
use crate::handler::Registry;
use crate::message::{Channel, Contact, Effect, Event, Incoming, MediaKind, Outgoing};

/// 2026-01-01T00:00:00Z: where test clocks start, so transcripts are stable.
pub const EPOCH: Millis = 1_767_225_600_000;

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
    /// Time passed (humantime form, like `31m`).
    Wait(String),
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
    session: Option<Session>,
    clock: ManualClock,
    channel: Channel,
    contact: Contact,
    transcript: Transcript,
    steps: Vec<Step>,
}

impl TestConversation {
    /// A conversation with a bot.
    pub fn new(bot: impl Into<Arc<Bot>>) -> Self {
        TestConversation {
            bot: bot.into(),
            id: "test".into(),
            session: None,
            clock: ManualClock::new(EPOCH),
            channel: Channel::WhatsApp,
            contact: Contact::default(),
            transcript: Transcript::default(),
            steps: Vec::new(),
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
        self.event(Event::AgentJoined, "agent_joined").await
    }

    /// The person leaves (the conversation is released).
    pub async fn agent_leaves(&mut self) -> &[Outgoing] {
        self.event(Event::AgentLeft, "agent_left").await
    }

    /// Moves the clock forward.
    pub fn wait(&mut self, d: Duration) {
        self.clock.advance(d);
        self.transcript.0.push(Exchange {
            customer: Customer::Wait(humantime::format_duration(d).to_string()),
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

    async fn event(&mut self, e: Event, name: &str) -> &[Outgoing] {
        self.event_inner(Customer::Event(name.into()), e).await
    }

    async fn event_inner(&mut self, customer: Customer, e: Event) -> &[Outgoing] {
        let turn = self
            .bot
            .turn(&self.id, self.session.take(), &e, self.clock.now())
            .await;
        self.session = turn.session;
        self.steps.extend(turn.trace);
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

    /// The current state's name (`None`: no session).
    pub fn state(&self) -> Option<&str> {
        let s = self.session.as_ref()?;
        Some(&self.bot.flow().state(s.state).name)
    }

    /// A variable of the session.
    pub fn var(&self, name: &str) -> Option<&minijinja::Value> {
        self.session.as_ref()?.var(name)
    }

    /// The session.
    pub fn session(&self) -> Option<&Session> {
        self.session.as_ref()
    }

    /// Whether a person has the conversation.
    pub fn in_handoff(&self) -> bool {
        self.session.as_ref().is_some_and(|s| s.handoff)
    }

    /// Everything so far.
    pub fn transcript(&self) -> &Transcript {
        &self.transcript
    }

    /// Every step the engine took (for coverage).
    pub fn steps(&self) -> &[Step] {
        &self.steps
    }

    /// The bot.
    pub fn bot(&self) -> &Arc<Bot> {
        &self.bot
    }
}
