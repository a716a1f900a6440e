//! The events a [`Bot`] handles: [`Bot::step`] takes a conversation's
//! stored form and one [`Event`] (a message, an idle timer, a schedule, a
//! start, an agent joining or leaving, a release) and makes it a [`Turn`]:
//! the session resumed or placed in a reloaded flow, expiry and WhatsApp's
//! window applied, hooks run before and after. A message's own turn is
//! `run.rs`'s.

use minijinja::Value;
use std::sync::Arc;

use super::run::Run;
use super::*;

impl Bot {
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
        // The variables of a conversation that ended and is not kept: the
        // event log's last answers.
        let mut ended_vars = Vec::new();
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
            } else {
                ended_vars = last.vars;
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
            intent: outcome.intent,
            ended_vars,
        }
    }

    /// Every step but a message's turn on a conversation the bot has (see
    /// [`Bot::step`]).
    pub(super) async fn other(
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
                tracing::info!("handoff timed out: the bot takes over");
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
    pub(super) fn outside_window(
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
                tracing::warn!("{error}");
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
            intent: None,
            ended_vars: Vec::new(),
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
    pub(super) fn resume(&self, state_name: &str, mut session: Session) -> Option<Session> {
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
    pub(super) async fn restart(&self, conversation: &str, event: &Event, now: Millis) -> Outcome {
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
    pub(super) fn idle_due(&self, s: &Session) -> Option<Millis> {
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
    pub(super) fn keeps(&self, s: &Session) -> bool {
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
    pub(super) fn plan(&self, s: &mut Session, now: Millis) {
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
    pub(super) async fn fire_schedule(
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
        tracing::info!(schedule = %name, "a schedule fires");
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
            test: false,
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
    pub(super) async fn start(
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
            tracing::warn!("{error}");
            let mut o = Outcome::quiet(session);
            o.errors.push(error);
            return o;
        };
        let live = session.filter(|s| self.is_live(s, now));
        if let Some(mut s) = live.clone() {
            match start.mode {
                StartMode::Skip => {
                    tracing::info!(state = %start.state, "a conversation is in progress: start skipped");
                    return Outcome::quiet(Some(s));
                }
                StartMode::Queue | StartMode::Interrupt
                    if s.handoff || start.mode == StartMode::Queue =>
                {
                    tracing::info!(state = %start.state, "a conversation is in progress: start queued");
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
        s.test |= start.test;
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
    pub(super) fn handoff_expired(&self, s: &Session, now: Millis) -> bool {
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
    pub(super) async fn release(
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
    pub(super) fn nudge_due(&self, s: &Session) -> Option<Millis> {
        if s.handoff || s.idle_fired || (s.state as usize) >= self.flow.states.len() {
            return None;
        }
        let after = self.flow.state(s.state).after.as_ref()?;
        Some(s.last_active.saturating_add(after.idle_ms as i64))
    }

    /// Fires the `after:` nudge of the session's state: its messages, then its
    /// `goto`. Nothing happens when it is not due at `now` (the customer spoke
    /// since, the state changed, a person took over, or it fired already).
    pub(super) async fn idle(
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
    pub(super) async fn turn(
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
    pub(super) fn prepare<'e>(
        &self,
        session: Option<Session>,
        event: &'e Event,
        now: Millis,
    ) -> Prepared<'e> {
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
        s.test |= msg.test;
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

/// What a turn starts from: a message to run on a session (and whether the
/// conversation was going on), or nothing to do but keep the session (another
/// event, or a conversation a person has).
pub(super) enum Prepared<'e> {
    Run(Session, &'e Incoming, bool),
    Quiet(Option<Session>),
}

/// What the engine's inner functions produce; [`Bot::step`] makes it a [`Turn`].
pub(super) struct Outcome {
    pub(super) session: Option<Session>,
    pub(super) messages: Vec<Outgoing>,
    pub(super) effects: Vec<Effect>,
    pub(super) trace: Vec<Step>,
    pub(super) errors: Vec<String>,
    pub(super) released: bool,
    /// Messages not sent for WhatsApp's window.
    pub(super) withheld: usize,
    /// The session of a conversation that ended in this outcome (kept if a
    /// schedule is still to fire for it).
    pub(super) last: Option<Session>,
    /// The schedule that fired.
    pub(super) schedule: Option<Box<str>>,
    /// How the message was classified, if its intent was asked for.
    pub(super) intent: Option<Classified>,
}

impl Outcome {
    /// Says and does nothing, leaving `session` as it is.
    pub(super) fn quiet(session: Option<Session>) -> Outcome {
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
            intent: None,
        }
    }

    /// This outcome followed by `next` (which started from its session).
    pub(super) fn then(mut self, next: Outcome) -> Outcome {
        self.session = next.session;
        self.last = next.last;
        self.intent = self.intent.take().or(next.intent);
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
