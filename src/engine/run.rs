//! The run of one message's turn: what the message decides (global
//! intents, the state's rules, an answer checked, a fallback), then the
//! states entered (`call`, `set`, `say`, the question, `next`), the error
//! path, and what is said, in the conversation's language. The rules are
//! `matching.rs`'s, the messages `render.rs`'s, subflows `subflow.rs`'s.

use minijinja::Value;
use std::collections::BTreeMap;
use std::sync::Arc;

use super::events::Outcome;
use super::*;

/// What the message decided, before anything changes.
pub(super) enum Decision {
    Intent(u32, Vec<(String, Value)>),
    Rule(u32, Vec<(String, Value)>),
    Valid(Value, Vec<(String, Value)>),
    Invalid,
    Fallback,
}

/// The working state of one turn.
pub(super) struct Run<'a> {
    pub(super) bot: &'a Bot,
    pub(super) conversation: &'a str,
    pub(super) session: Session,
    pub(super) msg: &'a Incoming,
    pub(super) out: Vec<Outgoing>,
    pub(super) effects: Vec<Effect>,
    pub(super) trace: Vec<Step>,
    pub(super) errors: Vec<String>,
    pub(super) hops: u32,
    pub(super) ended: bool,
    pub(super) in_error: bool,
    /// The template scope, built on first use and dropped when variables change.
    pub(super) scope: Option<Value>,
    /// The scope's built-ins, made once a turn (again if the language changes).
    pub(super) builtins: Option<Arc<[(&'static str, Value)]>>,
    /// The turn's time (`now` in templates; calendars read it).
    pub(super) now: Millis,
}

impl Run<'_> {
    pub(super) fn new<'a>(
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
    pub(super) fn finish(self) -> Outcome {
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

    pub(super) fn scope(&mut self) -> Value {
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

    pub(super) fn language(&self) -> Option<&str> {
        self.session
            .language
            .as_deref()
            .or(self.bot.flow.settings.default_language.as_deref())
    }

    /// Sets a variable; `language` also switches the conversation's language.
    pub(super) fn set(&mut self, name: &str, value: Value) {
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
    pub(super) async fn on_message(&mut self, had_session: bool) {
        if let Some(id) = self.react(had_session) {
            self.enter(id).await;
        }
    }

    /// What the message does before states are entered; returns the state
    /// to enter, if any.
    pub(super) fn react(&mut self, had_session: bool) -> Option<StateId> {
        self.save_pick(had_session);
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
                let next = self.next_of(here);
                if next.is_none() {
                    self.session.retries = 0;
                }
                next
            }
            Some(Decision::Invalid) => self.invalid(here),
            Some(Decision::Fallback) => self.fallback(here),
            // No session and no intent: start, without matching start's rules.
            None => Some(flow.start),
        }
    }

    /// Decides what the message means, changing nothing. `None`: a new
    /// conversation that no intent took.
    pub(super) fn decide(&mut self, had_session: bool) -> Option<Decision> {
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
    pub(super) fn fire(
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
    pub(super) fn resume(&mut self, pending: Option<StateId>) -> Option<StateId> {
        match pending {
            Some(here) if self.bot.flow.state(here).ask.is_some() => self.prompt(here),
            Some(here) => self.repeat(here),
            None => return Some(self.bot.flow.start),
        }
        None
    }

    /// Forgets a variable.
    pub(super) fn unset(&mut self, name: &str) {
        self.session.vars.retain(|(k, _)| &**k != name);
        self.scope = None;
    }

    /// An invalid answer; returns the state to enter, if any.
    pub(super) fn invalid(&mut self, here: StateId) -> Option<StateId> {
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
    pub(super) fn fallback(&mut self, here: StateId) -> Option<StateId> {
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
    pub(super) fn repeat(&mut self, id: StateId) {
        let flow = self.bot.flow.clone();
        self.send(&flow.state(id).say);
        self.prompt(id);
    }

    /// Sends a state's `ask` question, if it has one.
    pub(super) fn prompt(&mut self, id: StateId) {
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

    pub(super) fn renderer(&mut self) -> Renderer<'_> {
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

    pub(super) fn send(&mut self, msgs: &[MsgNode]) {
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

    pub(super) fn push(&mut self, r: Rendered) {
        if !r.offered.is_empty() {
            self.session.offered = r.offered;
            self.session.numbered = r.numbered;
        }
        self.out.push(r.message);
    }

    pub(super) fn apply_sets(&mut self, sets: &[(Arc<str>, crate::flow::Tpl)]) {
        for (k, t) in sets {
            let scope = self.scope();
            let v = self.renderer().value(t, &scope).unwrap_or_default();
            self.set(k, Value::from(v));
        }
    }

    /// Enters a state and follows `next` (see the module docs for the order).
    pub(super) async fn enter(&mut self, mut id: StateId) {
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
                    Ok(ActionOutcome::Goto(name)) => match flow
                        .state_id(&name)
                        .filter(|t| call.jumps.is_empty() || call.jumps.contains(t))
                    {
                        Some(t) => {
                            id = t;
                            continue;
                        }
                        None => match self.fail(id, self.bad_jump(call, &name)) {
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
                    Ok(Some(caller)) => match self.next_of(caller) {
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
            match self.next_of(id) {
                Some(n) => id = n,
                None => return,
            }
        }
    }

    /// A pick of an option whose message says `save: NAME` (tapped, typed
    /// or answered by number) sets `NAME` to its id and `NAME_title` to its
    /// title as shown, before any rule sees the message.
    fn save_pick(&mut self, had_session: bool) {
        if !had_session || self.session.offered.iter().all(|o| o.save.is_none()) {
            return;
        }
        let picked = Probe::new(self.msg, Some(&self.session))
            .picked
            .and_then(|o| Some((o.id.clone(), o.save.clone()?)));
        if let Some((id, (var, shown))) = picked {
            self.set(&format!("{var}_title"), Value::from(&*shown));
            self.set(&var, Value::from(&*id));
        }
    }

    /// The variant of state `id`'s split this conversation goes to: the
    /// one it went to before (its `<state>_variant`), else one chosen by
    /// weight from the conversation's id and the state's name (the same on
    /// every machine and in every test).
    fn split(&mut self, id: StateId) -> StateId {
        let flow = self.bot.flow.clone();
        let st = flow.state(id);
        let var = format!("{}_variant", st.name);
        let kept = self
            .session
            .vars
            .iter()
            .find(|(k, _)| **k == *var)
            .and_then(|(_, v)| v.as_str().map(str::to_owned))
            .and_then(|name| {
                st.split
                    .iter()
                    .position(|(s, _)| *flow.state(*s).name == *name)
            });
        let at = self
            .bot
            .forced_branch(id)
            .filter(|i| *i < st.split.len())
            .or(kept)
            .unwrap_or_else(|| {
                let total: u64 = st.split.iter().map(|(_, w)| u64::from(*w)).sum();
                let key = format!("{}\u{0}{}", self.conversation, st.name);
                let mut roll = crate::flow::fingerprint_of_text(&key) % total.max(1);
                st.split
                    .iter()
                    .position(|(_, w)| {
                        let w = u64::from(*w);
                        if roll < w {
                            return true;
                        }
                        roll -= w;
                        false
                    })
                    .unwrap_or(0)
            });
        let to = st.split[at].0;
        self.trace.push(Step::Split(id, at as u32));
        self.set(&var, Value::from(&*flow.state(to).name));
        to
    }

    /// Why an action's jump to `name` is refused: no such state, or one its
    /// `call:` does not declare.
    fn bad_jump(&self, call: &CallNode, name: &str) -> String {
        let flow = &self.bot.flow;
        let action = &flow.actions[call.action as usize];
        match flow.state_id(name) {
            None => format!("action `{action}` jumped to unknown state `{name}`"),
            Some(_) => {
                let declared: Vec<String> = call
                    .jumps
                    .iter()
                    .map(|j| format!("`{}`", flow.state(*j).name))
                    .collect();
                format!(
                    "action `{action}` jumped to `{name}`, which its `call:` does not declare (jumps: {})",
                    declared.join(", ")
                )
            }
        }
    }

    /// Where state `id` goes on at once: its `next`, or the first of its
    /// branches whose condition holds (a condition that fails to render is
    /// taken as false, and said). None: it waits for the customer.
    pub(super) fn next_of(&mut self, id: StateId) -> Option<StateId> {
        // The bot outlives the run: its flow is borrowed, not cloned, on
        // every state a turn passes through.
        let bot: &Bot = self.bot;
        let flow = &bot.flow;
        let st = flow.state(id);
        if !st.split.is_empty() {
            return Some(self.split(id));
        }
        if st.branches.is_empty() {
            return st.next;
        }
        if let Some(i) = bot.forced_branch(id) {
            let b = st.branches.get(i)?;
            self.trace.push(Step::Branch(id, i as u32));
            return Some(b.goto);
        }
        for (i, b) in st.branches.iter().enumerate() {
            let holds = match &b.when {
                None => true,
                Some(t) => {
                    let scope = self.scope();
                    match flow.templates.truthy(t, &scope) {
                        Ok(h) => h,
                        Err(e) => {
                            tracing::warn!(error = %e, "a branch's `when` failed; taken as false");
                            self.errors.push(e.to_string());
                            false
                        }
                    }
                }
            };
            if holds {
                self.trace.push(Step::Branch(id, i as u32));
                return Some(b.goto);
            }
        }
        None
    }
    pub(super) async fn call(
        &mut self,
        state: &str,
        call: &CallNode,
    ) -> Result<ActionOutcome, String> {
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
    pub(super) fn fail(&mut self, at: StateId, error: String) -> Option<StateId> {
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

pub(super) fn has_when(rules: &[RuleNode]) -> bool {
    pub(super) fn c(cond: &crate::flow::Cond) -> bool {
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
pub(super) fn needs_scope(m: &MsgNode) -> bool {
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
pub(super) fn typed(kind: crate::flow::ParamKind, v: Value) -> Result<Value, String> {
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
