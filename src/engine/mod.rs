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
//! Semantics (the flow language reference says the same from the author's side):
//! - No session (new, ended, expired, released): global intents are tried; if none
//!   matches, `start` is entered and its messages sent; that first message is not
//!   matched against `start`'s own rules.
//! - Otherwise: global intents (unless the state says `intents: false`), then the
//!   state's `on` rules in order, first match wins; a rule's `say` goes before the
//!   target's messages. In an `ask` state, an answer no rule took is checked; a
//!   valid one is saved and the flow goes to `next`. No match: the state's
//!   `fallback`, else `settings.fallback`, else the state's messages again.
//! - Entering a state runs, in order: `call`, `set`, `say`, the `ask` question,
//!   then `handoff` or `end`, or follows `next` (at most 50 states a turn).
//! - An action error, a jump to an unknown state or a `next` chain too long runs the
//!   error path: the state's `on_error`, else the flow's, else
//!   `settings.error_message` and a fresh start. It is logged and the bot goes on.

mod answer;
mod matching;
mod render;
mod session;

use minijinja::Value;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

pub use session::{Frame, Offered, OptionKind, Session};

use crate::flow::template::Scope;
use crate::flow::{
    Arg, CallNode, Flow, FlowLimits, LoadError, MsgNode, ReturnNode, RuleNode, StateId, SubflowCall,
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
}

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
        })
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

    /// Runs one step of a conversation: the one entry point (see the module docs).
    ///
    /// `stored` is what the last step returned (or none); `event` is what
    /// happened; `now` is the time. Hooks run before and after, whatever the
    /// event. The returned [`Turn`] carries the new stored form and when the
    /// next idle nudge is due, for the caller to keep.
    pub async fn step(
        &self,
        conversation: &str,
        stored: Option<Stored>,
        event: &Event,
        now: Millis,
    ) -> Turn {
        for h in &self.hooks {
            h.before_turn(conversation, event).await;
        }
        let mut channel = stored.as_ref().map_or(Channel::default(), |s| s.channel);
        match event {
            Event::Message(m) => channel = m.channel,
            Event::Start(start) if stored.is_none() => {
                channel = start.channel.unwrap_or(Channel::WhatsApp);
            }
            _ => {}
        }
        let (session, restart) = match stored {
            None => (None, false),
            Some(s) => match self.resume(&s.state, s.session) {
                Some(session) => (Some(session), false),
                None => {
                    tracing::info!(
                        conversation,
                        state = &*s.state,
                        "the flow no longer has this state: restarting"
                    );
                    (None, true)
                }
            },
        };
        let from = session.as_ref().map(|s| s.state);
        let queued = session.as_ref().and_then(|s| s.queued.clone());
        // When the customer last wrote, for WhatsApp's window. Only a
        // customer's message opens it (as WhatsApp counts it): a conversation
        // the business started, where the customer never wrote, has it
        // closed, however recent its session.
        let customer_at = match event {
            Event::Message(_) => Some(now),
            _ => session.as_ref().map(|s| s.customer_at).filter(|&at| at > 0),
        };
        // A message's turn, the common case, runs in this future; every
        // other event in a boxed one (a future is moved whole, at its largest
        // variant's size, on every turn).
        let common = matches!(event, Event::Message(_))
            && !restart
            && !session
                .as_ref()
                .is_some_and(|s| self.handoff_expired(s, now));
        let mut outcome = if common {
            self.turn(conversation, session, event, now).await
        } else {
            Box::pin(self.other(conversation, session, event, channel, now, restart)).await
        };
        // The conversation ended with a start queued: it runs now.
        if outcome.session.is_none() && !matches!(event, Event::Start(_)) {
            if let Some(start) = queued {
                let next = Box::pin(self.start(conversation, None, &start, channel, now)).await;
                outcome = outcome.then(next);
            }
        }
        // Schedules: brought up to date; a conversation that ended is kept
        // while one is still to fire for it.
        if let Some(s) = &mut outcome.session {
            self.plan(s, now);
            if s.kept && !self.keeps(s) {
                outcome.session = None;
            }
        } else if let Some(mut last) = outcome.last.take() {
            self.plan(&mut last, now);
            if self.keeps(&last) {
                last.kept = true;
                last.handoff = false;
                last.queued = None;
                outcome.session = Some(last);
            }
        }
        if let Some(s) = &mut outcome.session {
            if !s.handoff {
                s.handoff_since = 0;
            } else if s.handoff_since == 0 {
                s.handoff_since = now;
            }
        }
        let window_closes = channel
            .capabilities()
            .reply_window_ms
            .map(|window| customer_at.map_or(Millis::MIN, |at| at.saturating_add(window)));
        if window_closes.is_some_and(|closes| now >= closes) {
            self.outside_window(conversation, &mut outcome, channel, now);
        }
        let name = |id: StateId| -> &Arc<str> { &self.flow.state(id).name };
        if !self.hooks.is_empty() {
            let record = TurnRecord {
                conversation,
                event,
                from: from.map(|id| &**name(id)),
                to: outcome.session.as_ref().map(|s| &**name(s.state)),
                messages: &outcome.messages,
                effects: &outcome.effects,
                errors: &outcome.errors,
            };
            for h in &self.hooks {
                h.after_turn(&record).await;
            }
        }
        let due = outcome.session.as_ref().and_then(|s| self.idle_due(s));
        let released = outcome.released;
        Turn {
            released,
            stored: outcome.session.map(|session| Stored {
                state: name(session.state).clone(),
                channel,
                session,
            }),
            due,
            messages: outcome.messages,
            effects: outcome.effects,
            trace: outcome.trace,
            errors: outcome.errors,
            window_closes,
            withheld: outcome.withheld,
            schedule: outcome.schedule,
        }
    }

    /// Every step but a message's turn on a conversation the bot has (see
    /// [`Bot::step`]).
    async fn other(
        &self,
        conversation: &str,
        session: Option<Session>,
        event: &Event,
        channel: Channel,
        now: Millis,
        restart: bool,
    ) -> Outcome {
        match (event, session) {
            // A handoff past `settings.handoff_timeout` ends, whatever comes.
            (_, Some(s)) if self.handoff_expired(&s, now) => {
                tracing::info!(conversation, "handoff timed out: the bot takes over");
                let mut released = self.release(conversation, s, channel, now, false).await;
                if let Event::Message(_) = event {
                    let session = released.session.take();
                    let next = self.turn(conversation, session, event, now).await;
                    released = released.then(next);
                }
                released
            }
            (Event::AgentLeft | Event::Release | Event::HandoffFailed, Some(s)) => {
                let failed = matches!(event, Event::HandoffFailed);
                self.release(conversation, s, channel, now, failed).await
            }
            (Event::Start(start), session) => {
                self.start(conversation, session, start, channel, now).await
            }
            (Event::Idle { .. }, Some(s))
                if s.schedules.iter().any(|m| !m.fired && m.due <= now) =>
            {
                self.fire_schedule(conversation, s, channel, now).await
            }
            // A conversation that expired with a start queued: the start runs.
            (Event::Idle { .. }, Some(s)) if s.queued.is_some() && !self.is_live(&s, now) => {
                let start = s.queued.clone().expect("queued");
                self.start(conversation, None, &start, channel, now).await
            }
            (Event::Idle { .. }, Some(s)) => self.idle(conversation, s, channel, now).await,
            (Event::Idle { .. }, None) => Outcome::quiet(None),
            (_, _) if restart => self.restart(conversation, event, now).await,
            (_, session) => self.turn(conversation, session, event, now).await,
        }
    }

    /// A turn's messages when WhatsApp's 24-hour window is closed: free-form
    /// messages are never sent; the `template:` of the last state entered
    /// (or of the `after:` that fired) that has one is sent instead, once.
    /// Without one, the messages are dropped and the turn records why.
    fn outside_window(
        &self,
        conversation: &str,
        outcome: &mut Outcome,
        channel: Channel,
        now: Millis,
    ) {
        if !outcome.messages.iter().any(Outgoing::is_free_form) {
            return;
        }
        let flow = &*self.flow;
        let alternative = outcome.trace.iter().rev().find_map(|step| match *step {
            Step::Enter(id) => flow.state(id).template.as_ref().map(|t| (id, t)),
            Step::Idle(id) => flow
                .state(id)
                .after
                .as_ref()
                .and_then(|a| a.template.as_ref())
                .map(|t| (id, t)),
            _ => None,
        });
        let dropped = outcome.messages.iter().filter(|m| m.is_free_form()).count();
        outcome.messages.retain(|m| !m.is_free_form());
        match alternative {
            Some((_, template)) => {
                let session = outcome
                    .session
                    .clone()
                    .unwrap_or_else(|| Session::new(flow.start, flow.version, 0));
                let msg = Incoming {
                    channel,
                    ..Incoming::default()
                };
                let mut run = Run::new(self, conversation, session, &msg, now);
                let scope = run.scope();
                let message = run.renderer().template(template, &scope);
                outcome.errors.extend(run.errors);
                outcome.messages.push(message);
            }
            None => {
                let error = format!(
                    "{dropped} message{} not sent: the customer last wrote more than 24 hours \
                     ago (WhatsApp's window), and no state of this turn has a `template:`",
                    if dropped == 1 { "" } else { "s" }
                );
                tracing::warn!(conversation, "{error}");
                outcome.errors.push(error);
                outcome.withheld += dropped;
            }
        }
    }

    /// A turn that changes nothing: `stored` is kept as it is (for an event
    /// that cannot be read).
    pub(crate) fn unchanged(&self, stored: Option<Stored>) -> Turn {
        let due = stored
            .as_ref()
            .filter(|s| s.session.flow_version == self.flow.version)
            .and_then(|s| self.idle_due(&s.session));
        Turn {
            stored,
            due,
            released: false,
            messages: Vec::new(),
            effects: Vec::new(),
            trace: Vec::new(),
            errors: Vec::new(),
            window_closes: None,
            withheld: 0,
            schedule: None,
        }
    }

    /// Whether a stored session is still alive at `now` (not expired).
    /// Whether a saved session is still a conversation in progress at `now`
    /// (not ended and kept for a schedule, not expired).
    pub(crate) fn is_live(&self, s: &Session, now: Millis) -> bool {
        !s.kept
            && (s.handoff
                || self
                    .flow
                    .settings
                    .session_timeout_ms
                    .is_none_or(|t| now.saturating_sub(s.last_active) < t as i64))
    }

    /// A session saved in the state named `state_name`, made current for this
    /// flow. A session of the same flow version comes back as it was; one from
    /// another version (the flow was changed and reloaded) goes on in the state
    /// the flow's `migrate:` map names for it, else in the state of the same
    /// name. `None`: neither exists, and the conversation starts over (see
    /// [`Bot::restart`]).
    fn resume(&self, state_name: &str, mut session: Session) -> Option<Session> {
        let flow = &*self.flow;
        if session.flow_version == flow.version && (session.state as usize) < flow.states.len() {
            return Some(session);
        }
        let id = match flow.migrate.get(state_name) {
            Some(&id) => id,
            None => flow.state_id(state_name)?,
        };
        if flow.state(id).name.as_ref() != state_name {
            // Another state: the options offered there mean nothing here.
            session.offered.clear();
            session.numbered = false;
        }
        session.state = id;
        session.flow_version = flow.version;
        session.retries = 0;
        Some(session)
    }

    /// A turn for a conversation whose saved state this flow no longer has
    /// (see [`Bot::resume`]): it starts over, after the flow's
    /// `settings.restart_message` if it has one.
    async fn restart(&self, conversation: &str, event: &Event, now: Millis) -> Outcome {
        let mut turn = self.turn(conversation, None, event, now).await;
        if let Some(text) = &self.flow.settings.restart_message {
            let (channel, contact_language) = match event {
                Event::Message(m) => (m.channel, m.contact.language.as_deref()),
                _ => (Channel::default(), None),
            };
            let language = turn
                .session
                .as_ref()
                .and_then(|s| s.language.as_deref())
                .or(contact_language);
            let scope = Value::from_object(crate::flow::template::Scope {
                vars: Vec::new(),
                defaults: self.vars.clone(),
                builtins: Arc::new([("now", Value::from(now))]),
            });
            let mut errors = Vec::new();
            let message = render::Renderer {
                flow: &self.flow,
                channel,
                language,
                errors: &mut errors,
            }
            .text(text, &scope);
            turn.messages.insert(0, Outgoing::text(message));
            turn.errors.extend(errors);
        }
        turn
    }

    /// When the session needs a timer: in a handoff, when
    /// `settings.handoff_timeout` ends it; else its state's `after:` nudge;
    /// and, with a start queued, when the session expires (the start runs
    /// then).
    fn idle_due(&self, s: &Session) -> Option<Millis> {
        let scheduled = s.schedules.iter().filter(|m| !m.fired).map(|m| m.due).min();
        if s.kept {
            return scheduled;
        }
        let expiry = s
            .queued
            .as_ref()
            .and(self.flow.settings.session_timeout_ms)
            .map(|t| s.last_active.saturating_add(t as i64));
        let own = if s.handoff {
            self.flow
                .settings
                .handoff_timeout_ms
                .map(|t| s.handoff_since.saturating_add(t as i64))
        } else {
            self.nudge_due(s)
        };
        [own, expiry, scheduled].into_iter().flatten().min()
    }

    /// Whether a conversation that ended is kept: while a schedule computed
    /// from its variables is still to fire (cron schedules keep none: they
    /// apply to the conversations the bot holds).
    fn keeps(&self, s: &Session) -> bool {
        use crate::flow::schedule::Kind;
        s.schedules.iter().any(|m| {
            !m.fired
                && self
                    .flow
                    .schedules
                    .iter()
                    .any(|x| x.name == m.name && matches!(x.kind, Kind::Offset { .. }))
        })
    }

    /// Brings a session's schedule marks up to date: an offset schedule's
    /// time follows its variable (a new time fires again); a cron schedule
    /// that fired moves to its next time.
    fn plan(&self, s: &mut Session, now: Millis) {
        use crate::flow::schedule::{Kind, Mark};
        let flow = &*self.flow;
        if flow.schedules.is_empty() {
            s.schedules.clear();
            return;
        }
        s.schedules
            .retain(|m| flow.schedules.iter().any(|x| x.name == m.name));
        for sched in &flow.schedules {
            let i = s.schedules.iter().position(|m| m.name == sched.name);
            let due = match (&sched.kind, i) {
                (Kind::Offset { .. }, _) => sched.due(|n| s.var(n).cloned(), now),
                (Kind::Cron { .. }, None) => sched.due(|_| None, now),
                (Kind::Cron { .. }, Some(i)) if s.schedules[i].fired => {
                    sched.due(|_| None, s.schedules[i].due.max(now))
                }
                (Kind::Cron { .. }, Some(_)) => None,
            };
            match (i, due) {
                (None, Some(due)) => s.schedules.push(Mark {
                    name: sched.name.clone(),
                    due,
                    fired: false,
                }),
                (Some(i), Some(due)) if s.schedules[i].due != due => {
                    s.schedules[i].due = due;
                    s.schedules[i].fired = false;
                }
                _ => {}
            }
        }
    }

    /// Fires the earliest schedule due for this conversation: marked fired
    /// (once per time, whatever follows), then, if the conversation matches
    /// its `when`, a start in its state with its `mode` (a conversation
    /// that ended or expired starts afresh with its variables).
    async fn fire_schedule(
        &self,
        conversation: &str,
        mut session: Session,
        channel: Channel,
        now: Millis,
    ) -> Outcome {
        let flow = self.flow.clone();
        let Some(i) = session
            .schedules
            .iter()
            .enumerate()
            .filter(|(_, m)| !m.fired && m.due <= now)
            .min_by_key(|(_, m)| m.due)
            .map(|(i, _)| i)
        else {
            return Outcome::quiet(Some(session));
        };
        session.schedules[i].fired = true;
        let name = session.schedules[i].name.clone();
        let Some(sched) = flow.schedules.iter().find(|x| x.name == name) else {
            return Outcome::quiet(Some(session));
        };
        if let Some(when) = &sched.when {
            let msg = Incoming {
                channel,
                ..Incoming::default()
            };
            let mut run = Run::new(self, conversation, session.clone(), &msg, now);
            let scope = run.scope();
            let holds = match flow.templates.truthy(when, &scope) {
                Ok(b) => b,
                Err(e) => {
                    run.errors.push(e.to_string());
                    false
                }
            };
            if !holds {
                let mut o = Outcome::quiet(Some(session));
                o.errors.extend(run.errors);
                return o;
            }
        }
        tracing::info!(conversation, schedule = %name, "a schedule fires");
        let live = self.is_live(&session, now);
        let marks = session.schedules.clone();
        let vars = if live {
            Default::default()
        } else {
            session
                .vars
                .iter()
                .map(|(k, v)| (k.to_string(), serde_json::to_value(v).unwrap_or_default()))
                .collect()
        };
        let start = crate::message::Start {
            state: flow.state(sched.state).name.to_string(),
            vars,
            mode: sched.mode,
            channel: None,
        };
        let mut outcome = self
            .start(conversation, Some(session), &start, channel, now)
            .await;
        if let Some(s) = &mut outcome.session {
            if s.schedules.is_empty() {
                s.schedules = marks;
            }
        }
        outcome.schedule = Some(name);
        outcome
    }

    /// A start the business asked for (see [`crate::message::Start`]): a
    /// conversation in progress is left (`skip`), has the start queued until
    /// it ends (`queue`, and `interrupt` while a person has it: a person is
    /// never interrupted), or leaves its state (`interrupt`, its variables
    /// kept). Then the start's variables are set and its state entered.
    async fn start(
        &self,
        conversation: &str,
        session: Option<Session>,
        start: &crate::message::Start,
        channel: Channel,
        now: Millis,
    ) -> Outcome {
        use crate::message::StartMode;
        let flow = self.flow.clone();
        let Some(id) = flow.state_id(&start.state) else {
            let error = format!("no state `{}` to start the conversation in", start.state);
            tracing::warn!(conversation, "{error}");
            let mut o = Outcome::quiet(session);
            o.errors.push(error);
            return o;
        };
        let live = session.filter(|s| self.is_live(s, now));
        if let Some(mut s) = live.clone() {
            match start.mode {
                StartMode::Skip => {
                    tracing::info!(conversation, state = %start.state, "a conversation is in progress: start skipped");
                    return Outcome::quiet(Some(s));
                }
                StartMode::Queue | StartMode::Interrupt
                    if s.handoff || start.mode == StartMode::Queue =>
                {
                    tracing::info!(conversation, state = %start.state, "a conversation is in progress: start queued");
                    s.queued = Some(Box::new(start.clone()));
                    return Outcome::quiet(Some(s));
                }
                _ => {}
            }
        }
        let mut s = live.unwrap_or_else(|| Session::new(flow.start, flow.version, now));
        s.last_active = now;
        s.idle_fired = false;
        s.queued = None;
        let msg = Incoming {
            channel,
            ..Incoming::default()
        };
        let mut run = Run::new(self, conversation, s, &msg, now);
        for (k, v) in &start.vars {
            run.set(k, Value::from_serialize(v));
        }
        run.enter(id).await;
        run.finish()
    }

    /// Whether a handoff has lasted longer than `settings.handoff_timeout`.
    fn handoff_expired(&self, s: &Session, now: Millis) -> bool {
        s.handoff
            && s.handoff_since > 0
            && self
                .flow
                .settings
                .handoff_timeout_ms
                .is_some_and(|t| now >= s.handoff_since.saturating_add(t as i64))
    }

    /// Gives a conversation in handoff back to the bot: `release_message` (or
    /// `handoff_failed_message`, when Qpien refused the handoff), then the
    /// flow's `release:` state, else the conversation starts over with the
    /// customer's next message. A conversation not in handoff is left as it is.
    async fn release(
        &self,
        conversation: &str,
        mut session: Session,
        channel: Channel,
        now: Millis,
        failed: bool,
    ) -> Outcome {
        if !session.handoff {
            return Outcome::quiet(Some(session));
        }
        session.handoff = false;
        session.handoff_since = 0;
        session.last_active = now;
        session.idle_fired = false;
        let flow = self.flow.clone();
        let msg = Incoming {
            channel,
            ..Incoming::default()
        };
        let mut run = Run::new(self, conversation, session, &msg, now);
        let text = if failed {
            &flow.settings.handoff_failed_message
        } else {
            &flow.settings.release_message
        };
        if let Some(text) = text {
            let scope = run.scope();
            let message = run.renderer().text(text, &scope);
            run.out.push(Outgoing::text(message));
        }
        match flow.release {
            Some(id) => run.enter(id).await,
            None => run.ended = true,
        }
        let mut outcome = run.finish();
        outcome.released = true;
        outcome
    }

    /// When the `after:` nudge of the session's state is due, if it has one that
    /// has not fired (and no person has the conversation).
    fn nudge_due(&self, s: &Session) -> Option<Millis> {
        if s.handoff || s.idle_fired || (s.state as usize) >= self.flow.states.len() {
            return None;
        }
        let after = self.flow.state(s.state).after.as_ref()?;
        Some(s.last_active.saturating_add(after.idle_ms as i64))
    }

    /// Fires the `after:` nudge of the session's state: its messages, then its
    /// `goto`. Nothing happens when it is not due at `now` (the customer spoke
    /// since, the state changed, a person took over, or it fired already).
    async fn idle(
        &self,
        conversation: &str,
        session: Session,
        channel: Channel,
        now: Millis,
    ) -> Outcome {
        let due = self.nudge_due(&session);
        if due.is_none_or(|d| d > now) || !self.is_live(&session, now) {
            return Outcome::quiet(Some(session));
        }
        let flow = self.flow.clone();
        let Some(after) = flow.state(session.state).after.as_ref() else {
            return Outcome::quiet(Some(session));
        };
        let msg = Incoming {
            channel,
            ..Incoming::default()
        };
        let mut run = Run::new(self, conversation, session, &msg, now);
        run.session.idle_fired = true;
        run.trace.push(Step::Idle(run.session.state));
        run.send(&after.say);
        if let Some(to) = after.goto {
            run.session.last_active = now;
            run.enter(to).await;
        }
        run.finish()
    }

    /// Runs one turn for an event that is not a timer, on a session already
    /// made current (see [`Bot::resume`]).
    async fn turn(
        &self,
        conversation: &str,
        session: Option<Session>,
        event: &Event,
        now: Millis,
    ) -> Outcome {
        // Only the run itself is held across the await (see `on_message`).
        let (s, msg, had_session) = match self.prepare(session, event, now) {
            Prepared::Run(s, msg, had_session) => (s, msg, had_session),
            Prepared::Quiet(session) => return Outcome::quiet(session),
        };
        let mut run = Run::new(self, conversation, s, msg, now);
        run.on_message(had_session).await;
        run.finish()
    }

    /// The session a message's turn runs on (see [`Prepared`]).
    fn prepare<'e>(&self, session: Option<Session>, event: &'e Event, now: Millis) -> Prepared<'e> {
        let flow = &*self.flow;
        // A session that ended or expired counts as none; one kept for a
        // schedule gives the new one its variables and schedules.
        let (session, carried) = match session {
            Some(s) if !self.is_live(&s, now) => (None, Some(s)),
            s => (s, None),
        };
        let fresh = || {
            let mut s = Session::new(flow.start, flow.version, now);
            if let Some(c) = carried.as_ref().filter(|c| c.schedule_pending()) {
                s.vars = c.vars.clone();
                s.schedules = c.schedules.clone();
            }
            s
        };
        let msg = match event {
            Event::Message(m) => m,
            Event::AgentJoined => {
                let mut s = session.unwrap_or_else(fresh);
                s.handoff = true;
                s.last_active = now;
                return Prepared::Quiet(Some(s));
            }
            // Sessions in handoff are released by `step`; without one there is
            // nothing to give back.
            Event::AgentLeft | Event::Release | Event::HandoffFailed => {
                return Prepared::Quiet(session)
            }
            Event::Idle { .. } | Event::Start(_) => return Prepared::Quiet(session),
        };
        let had_session = session.is_some();
        let mut s = session.unwrap_or_else(fresh);
        s.last_active = now;
        s.customer_at = now;
        s.idle_fired = false;
        if s.handoff {
            return Prepared::Quiet(Some(s));
        }
        // The contact's language applies until the conversation picks one itself.
        if s.language.is_none() {
            s.language = msg.contact.language.as_deref().map(Into::into);
        }
        Prepared::Run(s, msg, had_session)
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

/// What a turn starts from: a message to run on a session (and whether the
/// conversation was going on), or nothing to do but keep the session (another
/// event, or a conversation a person has).
enum Prepared<'e> {
    Run(Session, &'e Incoming, bool),
    Quiet(Option<Session>),
}

/// What the engine's inner functions produce; [`Bot::step`] makes it a [`Turn`].
struct Outcome {
    session: Option<Session>,
    messages: Vec<Outgoing>,
    effects: Vec<Effect>,
    trace: Vec<Step>,
    errors: Vec<String>,
    released: bool,
    /// Messages not sent for WhatsApp's window.
    withheld: usize,
    /// The session of a conversation that ended in this outcome (kept if a
    /// schedule is still to fire for it).
    last: Option<Session>,
    /// The schedule that fired.
    schedule: Option<Box<str>>,
}

impl Outcome {
    /// Says and does nothing, leaving `session` as it is.
    fn quiet(session: Option<Session>) -> Outcome {
        Outcome {
            session,
            messages: Vec::new(),
            effects: Vec::new(),
            trace: Vec::new(),
            errors: Vec::new(),
            released: false,
            withheld: 0,
            last: None,
            schedule: None,
        }
    }

    /// This outcome followed by `next` (which started from its session).
    fn then(mut self, next: Outcome) -> Outcome {
        self.session = next.session;
        self.last = next.last;
        self.messages.extend(next.messages);
        self.effects.extend(next.effects);
        self.trace.extend(next.trace);
        self.errors.extend(next.errors);
        self.released |= next.released;
        self.withheld += next.withheld;
        self.schedule = self.schedule.take().or(next.schedule);
        self
    }
}

/// What the message decided, before anything changes.
enum Decision {
    Intent(u32, Vec<(String, Value)>),
    Rule(u32, Vec<(String, Value)>),
    Valid(Value, Vec<(String, Value)>),
    Invalid,
    Fallback,
}

/// The working state of one turn.
struct Run<'a> {
    bot: &'a Bot,
    conversation: &'a str,
    session: Session,
    msg: &'a Incoming,
    out: Vec<Outgoing>,
    effects: Vec<Effect>,
    trace: Vec<Step>,
    errors: Vec<String>,
    hops: u32,
    ended: bool,
    in_error: bool,
    /// The template scope, built on first use and dropped when variables change.
    scope: Option<Value>,
    /// The scope's built-ins, made once a turn (again if the language changes).
    builtins: Option<Arc<[(&'static str, Value)]>>,
    /// The turn's time (`now` in templates; calendars read it).
    now: Millis,
}

impl Run<'_> {
    fn new<'a>(
        bot: &'a Bot,
        conversation: &'a str,
        session: Session,
        msg: &'a Incoming,
        now: Millis,
    ) -> Run<'a> {
        Run {
            bot,
            conversation,
            session,
            msg,
            now,
            out: Vec::new(),
            effects: Vec::new(),
            trace: Vec::new(),
            errors: Vec::new(),
            hops: 0,
            ended: false,
            in_error: false,
            scope: None,
            builtins: None,
        }
    }

    /// The turn's outcome: the session (unless the conversation ended) and what it said.
    fn finish(self) -> Outcome {
        let (session, last) = if self.ended {
            (None, Some(self.session))
        } else {
            (Some(self.session), None)
        };
        Outcome {
            released: false,
            withheld: 0,
            last,
            schedule: None,
            session,
            messages: self.out,
            effects: self.effects,
            trace: self.trace,
            errors: self.errors,
        }
    }

    fn scope(&mut self) -> Value {
        if let Some(s) = &self.scope {
            return s.clone();
        }
        let builtins = match &self.builtins {
            Some(b) => b.clone(),
            None => {
                let lang = self.language().map(str::to_owned);
                let contact: &Contact = &self.msg.contact;
                let b: Arc<[(&'static str, Value)]> = Arc::new([
                    ("contact", Value::from_serialize(contact)),
                    ("channel", Value::from(self.msg.channel.as_str())),
                    ("language", lang.map(Value::from).unwrap_or_default()),
                    ("message", Value::from(self.msg.text.as_str())),
                    ("conversation", Value::from(self.conversation)),
                    ("now", Value::from(self.now)),
                ]);
                self.builtins = Some(b.clone());
                b
            }
        };
        let scope = Value::from_object(Scope {
            vars: self.session.vars.clone(),
            defaults: self.bot.vars.clone(),
            builtins,
        });
        self.scope = Some(scope.clone());
        scope
    }

    fn language(&self) -> Option<&str> {
        self.session
            .language
            .as_deref()
            .or(self.bot.flow.settings.default_language.as_deref())
    }

    /// Sets a variable; `language` also switches the conversation's language.
    fn set(&mut self, name: &str, value: Value) {
        if name == "language" {
            if let Some(l) = value.as_str().filter(|l| !l.is_empty()) {
                self.session.language = Some(l.into());
                self.builtins = None;
            }
        }
        set_var(&mut self.session.vars, name, value);
        self.scope = None;
    }

    /// Handles the turn's message. The decision and everything that follows
    /// it up to the state to enter is synchronous; only entering states
    /// (which may call actions) awaits, once, so that the turn's future
    /// stays small (it is moved as a whole on every turn).
    async fn on_message(&mut self, had_session: bool) {
        if let Some(id) = self.react(had_session) {
            self.enter(id).await;
        }
    }

    /// What the message does before states are entered; returns the state
    /// to enter, if any.
    fn react(&mut self, had_session: bool) -> Option<StateId> {
        let decision = self.decide(had_session);
        let flow = self.bot.flow.clone();
        let here = self.session.state;
        match decision {
            Some(Decision::Intent(i, caps)) => {
                self.trace.push(Step::Intent(i));
                let pending = had_session.then_some(here);
                self.fire(&flow.intents[i as usize], caps, pending)
            }
            Some(Decision::Rule(i, caps)) => {
                self.trace.push(Step::Rule(here, i));
                self.fire(&flow.state(here).on[i as usize], caps, Some(here))
            }
            Some(Decision::Valid(v, caps)) => {
                self.trace.push(Step::Valid(here));
                let st = flow.state(here);
                let ask = st.ask.as_ref().expect("valid answers come from ask states");
                for (k, v) in caps {
                    self.set(&k, v);
                }
                self.set(&ask.save.clone(), v);
                if st.next.is_none() {
                    self.session.retries = 0;
                }
                st.next
            }
            Some(Decision::Invalid) => self.invalid(here),
            Some(Decision::Fallback) => self.fallback(here),
            // No session and no intent: start, without matching start's rules.
            None => Some(flow.start),
        }
    }

    /// Decides what the message means, changing nothing. `None`: a new
    /// conversation that no intent took.
    fn decide(&mut self, had_session: bool) -> Option<Decision> {
        let flow = self.bot.flow.clone();
        let st = flow.state(self.session.state);
        let needs_scope = has_when(&flow.intents) || (had_session && has_when(&st.on));
        let scope = if needs_scope {
            self.scope()
        } else {
            Value::UNDEFINED
        };
        let probe = Probe::new(self.msg, had_session.then_some(&self.session));
        let mut env = MatchEnv {
            flow: &flow,
            matchers: &self.bot.matchers,
            vars: Vars {
                session: &self.session.vars,
                defaults: &self.bot.vars,
            },
            scope: &scope,
            errors: &mut self.errors,
        };
        let mut caps = Vec::new();
        if !had_session || st.intents {
            for (i, r) in flow.intents.iter().enumerate() {
                if eval(&r.cond, &probe, &mut env, &mut caps) {
                    return Some(Decision::Intent(i as u32, caps));
                }
                caps.clear();
            }
        }
        if !had_session {
            return None;
        }
        for (i, r) in st.on.iter().enumerate() {
            if eval(&r.cond, &probe, &mut env, &mut caps) {
                return Some(Decision::Rule(i as u32, caps));
            }
            caps.clear();
        }
        if let Some(ask) = &st.ask {
            // A tapped suggestion saves its id; anything else is checked as typed.
            let answer = probe
                .button
                .or(probe.list)
                .filter(|id| ask.quick_replies.iter().any(|q| &*q.id == *id));
            if let Some(id) = answer {
                return Some(Decision::Valid(Value::from(id), Vec::new()));
            }
            return Some(match answer::check(&ask.check, &self.msg.text) {
                Some((v, caps)) => Decision::Valid(v, caps),
                None => Decision::Invalid,
            });
        }
        Some(Decision::Fallback)
    }

    /// Fires a rule. `pending`: the state the conversation waits in (none
    /// for a new conversation). Returns the state to enter, if any.
    fn fire(
        &mut self,
        rule: &RuleNode,
        caps: Vec<(String, Value)>,
        pending: Option<StateId>,
    ) -> Option<StateId> {
        let mut corrected = None;
        for (k, v) in caps {
            match &rule.correct {
                // The corrected value is checked before it is kept.
                Some((var, _)) if **var == *k => corrected = Some(v),
                _ => self.set(&k, v),
            }
        }
        if let Some((var, asker)) = &rule.correct {
            let flow = self.bot.flow.clone();
            let ask = flow
                .state(*asker)
                .ask
                .as_ref()
                .expect("correct names an ask's variable");
            let raw = corrected
                .as_ref()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_else(|| self.msg.text.clone());
            match answer::check(&ask.check, &raw) {
                Some((v, more)) => {
                    for (k, v) in more {
                        self.set(&k, v);
                    }
                    self.set(var, v);
                }
                None => {
                    // Not valid: said as the question that asks it says it,
                    // and nothing is changed.
                    if !ask.invalid.is_empty() {
                        self.send(&ask.invalid);
                    }
                    return self.resume(pending);
                }
            }
        }
        for var in &rule.cancel {
            self.unset(var);
        }
        self.apply_sets(&rule.set);
        self.send(&rule.say);
        if let Some(g) = rule.goto {
            Some(g)
        } else if rule.resume || rule.correct.is_some() {
            self.resume(pending)
        } else {
            None
        }
    }

    /// Back to what the conversation was waiting for after a digression: the
    /// pending question asked again (its retry count kept), or a waiting
    /// state's messages; a new conversation starts (the state returned).
    fn resume(&mut self, pending: Option<StateId>) -> Option<StateId> {
        match pending {
            Some(here) if self.bot.flow.state(here).ask.is_some() => self.prompt(here),
            Some(here) => self.repeat(here),
            None => return Some(self.bot.flow.start),
        }
        None
    }

    /// Forgets a variable.
    fn unset(&mut self, name: &str) {
        self.session.vars.retain(|(k, _)| &**k != name);
        self.scope = None;
    }

    /// An invalid answer; returns the state to enter, if any.
    fn invalid(&mut self, here: StateId) -> Option<StateId> {
        let flow = self.bot.flow.clone();
        let ask = flow
            .state(here)
            .ask
            .as_ref()
            .expect("invalid answers come from ask states");
        if self.session.retries < ask.retries || ask.exhausted.is_none() {
            self.trace.push(Step::Invalid(here));
            self.session.retries = self.session.retries.saturating_add(1);
            if ask.invalid.is_empty() {
                self.prompt(here);
            } else {
                self.send(&ask.invalid);
            }
            return None;
        }
        self.trace.push(Step::Exhausted(here));
        self.session.retries = 0;
        let ex = ask.exhausted.as_ref().expect("checked above");
        self.send(&ex.say);
        if ex.goto.is_none() {
            self.prompt(here);
        }
        ex.goto
    }

    /// A message nothing took; returns the state to enter, if any.
    fn fallback(&mut self, here: StateId) -> Option<StateId> {
        let flow = self.bot.flow.clone();
        let st = flow.state(here);
        let (fb, step) = match (&st.fallback, &flow.settings.fallback) {
            (Some(f), _) => (f, Step::Fallback(here)),
            (None, Some(f)) if st.intents => (f, Step::GlobalFallback(here)),
            _ => {
                self.trace.push(Step::Repeat(here));
                self.repeat(here);
                return None;
            }
        };
        self.trace.push(step);
        self.send(&fb.say);
        if fb.goto.is_none() && fb.repeat {
            self.repeat(here);
        }
        fb.goto
    }

    /// Sends a state's messages again (not its action or variables).
    fn repeat(&mut self, id: StateId) {
        let flow = self.bot.flow.clone();
        self.send(&flow.state(id).say);
        self.prompt(id);
    }

    /// Sends a state's `ask` question, if it has one.
    fn prompt(&mut self, id: StateId) {
        let flow = self.bot.flow.clone();
        if let Some(ask) = &flow.state(id).ask {
            if let Some(text) = &ask.text {
                let scope = self.scope();
                let r = self
                    .renderer()
                    .text_message(text, &ask.quick_replies, &[], &scope);
                self.push(r);
            }
        }
    }

    fn renderer(&mut self) -> Renderer<'_> {
        let language =
            self.session
                .language
                .as_deref()
                .or(self.bot.flow.settings.default_language.as_deref());
        Renderer {
            flow: &self.bot.flow,
            channel: self.msg.channel,
            language,
            errors: &mut self.errors,
        }
    }

    fn send(&mut self, msgs: &[MsgNode]) {
        for m in msgs {
            let scope = if needs_scope(m) {
                self.scope()
            } else {
                Value::UNDEFINED
            };
            let r = self.renderer().message(m, &scope);
            self.push(r);
        }
    }

    fn push(&mut self, r: Rendered) {
        if !r.offered.is_empty() {
            self.session.offered = r.offered;
            self.session.numbered = r.numbered;
        }
        self.out.push(r.message);
    }

    fn apply_sets(&mut self, sets: &[(Arc<str>, crate::flow::Tpl)]) {
        for (k, t) in sets {
            let scope = self.scope();
            let v = self.renderer().value(t, &scope).unwrap_or_default();
            self.set(k, Value::from(v));
        }
    }

    /// Enters a state and follows `next` (see the module docs for the order).
    async fn enter(&mut self, mut id: StateId) {
        let flow = self.bot.flow.clone();
        loop {
            self.hops += 1;
            if self.hops > MAX_HOPS {
                let msg = format!(
                    "more than {MAX_HOPS} states entered in one turn (a loop through `{}`?)",
                    flow.state(id).name
                );
                match self.fail(id, msg) {
                    Some(t) => {
                        self.hops = 0;
                        id = t;
                        continue;
                    }
                    None => return,
                }
            }
            self.unwind_to(flow.state(id).unit);
            self.session.state = id;
            self.session.idle_fired = false;
            self.session.retries = 0;
            self.session.offered.clear();
            self.session.numbered = false;
            self.trace.push(Step::Enter(id));
            let st = flow.state(id);
            if let Some(call) = &st.call {
                match self.call(st.name.as_ref(), call).await {
                    Ok(ActionOutcome::Continue) => {}
                    Ok(ActionOutcome::Goto(name)) => match flow.state_id(&name) {
                        Some(t) => {
                            id = t;
                            continue;
                        }
                        None => match self
                            .fail(id, format!("action jumped to unknown state `{name}`"))
                        {
                            Some(t) => {
                                id = t;
                                continue;
                            }
                            None => return,
                        },
                    },
                    Err(e) => match self.fail(id, e) {
                        Some(t) => {
                            id = t;
                            continue;
                        }
                        None => return,
                    },
                }
            }
            self.apply_sets(&st.set);
            self.send(&st.say);
            if let Some(sub) = &st.subflow {
                match self.call_subflow(&st.name, sub) {
                    Ok(()) => {
                        id = sub.entry;
                        continue;
                    }
                    Err(e) => match self.fail(id, e) {
                        Some(t) => {
                            id = t;
                            continue;
                        }
                        None => return,
                    },
                }
            }
            if let Some(ret) = &st.ret {
                match self.return_from(ret) {
                    Ok(Some(caller)) => match flow.state(caller).next {
                        Some(n) => {
                            id = n;
                            continue;
                        }
                        None => return,
                    },
                    // Run on its own, a subflow ends where it returns.
                    Ok(None) => {
                        self.effects.push(Effect::End);
                        self.ended = true;
                        return;
                    }
                    Err(e) => match self.fail(id, e) {
                        Some(t) => {
                            id = t;
                            continue;
                        }
                        None => return,
                    },
                }
            }
            if st.ask.is_some() {
                self.prompt(id);
                return;
            }
            if st.handoff {
                self.effects.push(Effect::Handoff);
                self.session.handoff = true;
                return;
            }
            if st.end {
                self.effects.push(Effect::End);
                self.ended = true;
                return;
            }
            match st.next {
                Some(n) => id = n,
                None => return,
            }
        }
    }

    /// Starts a subflow: the caller's variables are kept in a frame, the
    /// subflow runs with its own (its `vars:` and its inputs).
    fn call_subflow(&mut self, caller: &Arc<str>, sub: &SubflowCall) -> Result<(), String> {
        if self.session.stack.len() >= MAX_DEPTH {
            return Err(format!(
                "subflows nested more than {MAX_DEPTH} deep (calling `{}`)",
                sub.name
            ));
        }
        let mut inputs = Vec::with_capacity(sub.inputs.len());
        for (name, kind, tpl) in &sub.inputs {
            let Some(tpl) = tpl else { continue };
            let scope = self.scope();
            let raw = self
                .renderer()
                .value(tpl, &scope)
                .ok_or_else(|| format!("the input `{name}` of subflow `{}` failed", sub.name))?;
            let v = typed(*kind, Value::from(raw))
                .map_err(|why| format!("the input `{name}` of subflow `{}` {why}", sub.name))?;
            inputs.push((name.clone(), v));
        }
        let caller_vars = std::mem::replace(&mut self.session.vars, sub.defaults.to_vec());
        self.session.stack.push(Frame {
            call: caller.clone(),
            vars: caller_vars,
        });
        for (name, v) in inputs {
            self.set(&name, v);
        }
        self.scope = None;
        // The subflow's entry is entered next: it is where the conversation is.
        self.session.state = sub.entry;
        Ok(())
    }

    /// Ends a subflow: its outputs are computed, the caller's variables
    /// restored with the outputs it keeps. The caller's state, or none for a
    /// subflow that runs on its own.
    fn return_from(&mut self, ret: &ReturnNode) -> Result<Option<StateId>, String> {
        let flow = self.bot.flow.clone();
        let mut values = Vec::with_capacity(ret.outputs.len());
        for (name, kind, tpl) in &ret.outputs {
            let v = match tpl {
                Some(t) => {
                    let scope = self.scope();
                    let raw = self
                        .renderer()
                        .value(t, &scope)
                        .ok_or_else(|| format!("the output `{name}` failed"))?;
                    Value::from(raw)
                }
                None => match self.session.var(name) {
                    Some(v) => v.clone(),
                    None => continue,
                },
            };
            let v = typed(*kind, v).map_err(|why| format!("the output `{name}` {why}"))?;
            values.push((name.clone(), v));
        }
        let Some(frame) = self.session.stack.pop() else {
            return Ok(None);
        };
        self.session.vars = frame.vars;
        self.scope = None;
        let caller = flow.state_id(&frame.call).ok_or_else(|| {
            format!(
                "the state `{}` that called this subflow is gone",
                frame.call
            )
        })?;
        if let Some(sub) = &flow.state(caller).subflow {
            for (name, v) in values {
                if sub.returns.contains(&name) {
                    self.set(&name, v);
                }
            }
        }
        self.session.state = caller;
        Ok(Some(caller))
    }

    /// A jump out of a subflow (a global intent, an error path, a release):
    /// the frames it leaves are dropped and the caller's variables restored.
    fn unwind_to(&mut self, unit: u32) {
        if self.session.stack.is_empty() {
            return;
        }
        let flow = self.bot.flow.clone();
        while !self.session.stack.is_empty()
            && (self.session.state as usize) < flow.states.len()
            && flow.state(self.session.state).unit != unit
        {
            let frame = self.session.stack.pop().expect("not empty");
            self.session.vars = frame.vars;
            self.scope = None;
            match flow.state_id(&frame.call) {
                Some(c) => self.session.state = c,
                None => {
                    self.session.stack.clear();
                    return;
                }
            }
        }
    }

    async fn call(&mut self, state: &str, call: &CallNode) -> Result<ActionOutcome, String> {
        let action = self.bot.actions[call.action as usize].clone();
        let mut args = BTreeMap::new();
        for (k, a) in &call.args {
            let v = match a {
                Arg::Template(t) => {
                    let scope = self.scope();
                    Value::from(self.renderer().value(t, &scope).unwrap_or_default())
                }
                Arg::Value(v) => v.clone(),
            };
            args.insert(&**k, v);
        }
        let flow = self.bot.flow.clone();
        let mut ctx = ActionContext {
            conversation: self.conversation,
            state,
            args,
            vars: &mut self.session.vars,
            defaults: &self.bot.vars,
            message: Some(self.msg),
            contact: &self.msg.contact,
            out: &mut self.out,
        };
        let r = action.run(&mut ctx).await;
        self.scope = None;
        r.map_err(|e| {
            format!(
                "action `{}` failed: {e}",
                flow.actions[call.action as usize]
            )
        })
    }

    /// Runs the error path; returns the state to go on with, if any.
    fn fail(&mut self, at: StateId, error: String) -> Option<StateId> {
        let flow = self.bot.flow.clone();
        let st = flow.state(at);
        tracing::warn!(conversation = self.conversation, state = &*st.name, %error, "turn error");
        self.errors.push(error);
        self.trace.push(Step::Error(at));
        let target = st.on_error.or(flow.on_error);
        if let (Some(t), false) = (target, self.in_error) {
            self.in_error = true;
            return Some(t);
        }
        let text = match &flow.settings.error_message {
            Some(t) => {
                let scope = self.scope();
                self.renderer().text(t, &scope)
            }
            None => DEFAULT_ERROR_MESSAGE.to_owned(),
        };
        self.out.push(Outgoing::text(text));
        self.ended = true;
        None
    }
}

fn has_when(rules: &[RuleNode]) -> bool {
    fn c(cond: &crate::flow::Cond) -> bool {
        use crate::flow::Cond::*;
        match cond {
            When(_) => true,
            Any(v) | All(v) => v.iter().any(c),
            Not(x) => c(x),
            _ => false,
        }
    }
    rules.iter().any(|r| c(&r.cond))
}

/// Whether rendering a message may read variables (any template in it).
fn needs_scope(m: &MsgNode) -> bool {
    use crate::flow::{LText, Tpl};
    let t = |x: &LText| x.0.iter().any(|(_, t)| t.reads_scope());
    let o = |x: &Option<LText>| x.as_ref().is_some_and(t);
    match m {
        MsgNode::Text {
            text,
            quick_replies,
            buttons,
        } => {
            t(text)
                || quick_replies
                    .iter()
                    .any(|q| t(&q.title) || o(&q.description))
                || buttons.iter().any(|b| t(&b.title) || b.value.reads_scope())
        }
        MsgNode::Template(t) => t.params.iter().any(Tpl::reads_scope),
        MsgNode::List(l) => {
            o(&l.header)
                || t(&l.body)
                || o(&l.footer)
                || t(&l.button)
                || l.sections.iter().any(|(st, rows)| {
                    o(st) || rows.iter().any(|q| t(&q.title) || o(&q.description))
                })
        }
        MsgNode::Media { url, caption, .. } => url.reads_scope() || o(caption),
    }
}

/// A subflow's input or output as its type says (a number from its text, a
/// boolean from `true`/`false`), or why it is not one.
fn typed(kind: crate::flow::ParamKind, v: Value) -> Result<Value, String> {
    use crate::flow::ParamKind;
    let text = v.as_str().map(str::trim);
    match kind {
        ParamKind::Any => Ok(v),
        ParamKind::String => Ok(match text {
            Some(_) => v,
            None => Value::from(v.to_string()),
        }),
        ParamKind::Number => match text {
            None if v.is_number() => Ok(v),
            Some(t) => t
                .parse::<i64>()
                .map(Value::from)
                .or_else(|_| t.parse::<f64>().map(Value::from))
                .map_err(|_| format!("is `{}`, not a number", crate::text::shorten(t, 40))),
            None => Err(format!("is `{v}`, not a number")),
        },
        ParamKind::Boolean => match text.map(str::to_ascii_lowercase).as_deref() {
            None if v.kind() == minijinja::value::ValueKind::Bool => Ok(v),
            Some("true") => Ok(Value::from(true)),
            Some("false") => Ok(Value::from(false)),
            _ => Err(format!("is `{v}`, not true or false")),
        },
    }
}
