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
    /// No intent is sure: these are offered.
    NotSure(Vec<u32>),
    /// A rule reads the intent: the bot's classifier is to be asked first.
    Classify,
}

/// What the bot's own [`Classifier`](crate::nlu::Classifier) said of the
/// message.
#[derive(Debug, Clone, Copy)]
pub(super) enum Asked {
    /// Not asked (yet).
    No,
    /// Its answer: the intent (none: not sure) and how sure.
    Answered(Option<u32>, f32),
    /// It gave none: the built-in classifier answers.
    Failed,
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
    /// `http:` requests made so far this turn.
    pub(super) http_calls: u32,
    /// The message's classification, when its intent was asked for: the
    /// intent (none: not sure) and the best score.
    pub(super) classified: Option<(Option<u32>, f32)>,
    /// The bot's classifier's answer, once asked.
    pub(super) asked: Asked,
    /// Which classifier answered (none: the built-in one).
    pub(super) classified_by: Option<Box<str>>,
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
            http_calls: 0,
            classified: None,
            asked: Asked::No,
            classified_by: None,
        }
    }

    /// The turn's outcome: the session (unless the conversation ended) and what it said.
    pub(super) fn finish(self) -> Outcome {
        let (session, last) = if self.ended {
            (None, Some(self.session))
        } else {
            (Some(self.session), None)
        };
        let flow = &self.bot.flow;
        let intent = self.classified.map(|(i, confidence)| Classified {
            intent: i.and_then(|i| {
                flow.nlu
                    .as_ref()?
                    .names
                    .get(i as usize)
                    .map(|n| n.to_string())
            }),
            confidence: (f64::from(confidence) * 100.0).round() / 100.0,
            by: self.classified_by.map(String::from),
        });
        Outcome {
            intent,
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
        self.save_pick(had_session);
        let mut decision = self.decide(had_session);
        if matches!(decision, Some(Decision::Classify)) {
            // Deciding changes nothing but its own notes: it runs again
            // with the answer (its errors, already noted, are not repeated).
            let errors = self.errors.len();
            Box::pin(self.ask_classifier()).await;
            self.errors.truncate(errors);
            decision = self.decide(had_session);
        }
        if let Some(id) = self.react(decision, had_session) {
            self.enter(id).await;
        }
    }

    /// Asks the bot's classifier for the message's intent; on no answer,
    /// the built-in classifier gives it.
    async fn ask_classifier(&mut self) {
        let (Some(classifier), Some(nlu)) = (&self.bot.classifier, &self.bot.flow.nlu) else {
            self.asked = Asked::Failed;
            return;
        };
        let name = classifier.name().to_owned();
        let input = crate::nlu::ClassifyInput {
            text: &self.msg.text,
            language: self.session.language.as_deref(),
            intents: &nlu.intents,
            threshold: nlu.model.threshold(),
        };
        self.asked = match classifier.classify(&input).await {
            Ok(v) => {
                let known = v
                    .intent
                    .as_deref()
                    .and_then(|n| nlu.names.iter().position(|x| &**x == n));
                if v.intent.is_some() && known.is_none() {
                    self.errors.push(format!(
                        "classifier `{name}` answered an intent the flow does not declare: {:?}",
                        crate::text::shorten(v.intent.as_deref().unwrap_or(""), 60)
                    ));
                }
                let confidence = if v.confidence.is_finite() {
                    v.confidence.clamp(0.0, 1.0)
                } else {
                    0.0
                };
                self.classified_by = Some(name.into());
                Asked::Answered(known.map(|i| i as u32), confidence)
            }
            Err(e) => {
                tracing::debug!(classifier = %name, error = %e, "the built-in classifier answers");
                Asked::Failed
            }
        };
    }

    /// What the message does before states are entered; returns the state
    /// to enter, if any.
    pub(super) fn react(
        &mut self,
        decision: Option<Decision>,
        had_session: bool,
    ) -> Option<StateId> {
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
            Some(Decision::NotSure(offer)) => {
                self.not_sure(here, &offer);
                None
            }
            // Asked before the decision is acted on; never here.
            Some(Decision::Classify) => self.fallback(here),
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
            intent: None,
        };
        let mut caps = Vec::new();
        let globals = !had_session || st.intents;
        let rules = Rules {
            global: if globals { &flow.intents } else { &[] },
            state: if had_session { &st.on } else { &[] },
        };
        let mut deferred = false;
        // Everything but intents first, global rules before the state's.
        if let Some(d) = rules.first(false, &probe, &mut env, &mut caps, &mut deferred) {
            return Some(d);
        }
        if had_session {
            if let Some(ask) = &st.ask {
                // A tapped suggestion saves its id; anything else is checked as typed.
                let answer = probe
                    .button
                    .or(probe.list)
                    .filter(|id| ask.quick_replies.iter().any(|q| &*q.id == *id));
                if let Some(id) = answer {
                    return Some(Decision::Valid(Value::from(id), Vec::new()));
                }
                if let Some((v, caps)) = answer::check(&ask.check, &self.msg.text) {
                    return Some(Decision::Valid(v, caps));
                }
            }
        }
        // Then the rules that read the intent, the message classified once.
        let mut offer = Vec::new();
        if deferred {
            if let Some(nlu) = &flow.nlu {
                let picked = probe
                    .button
                    .and_then(|b| b.strip_prefix("nlu:"))
                    .and_then(|n| nlu.names.iter().position(|x| &**x == n));
                let (intent, confidence, ranked) = match (picked, self.asked) {
                    (Some(i), _) => (Some(i as u32), 1.0, Vec::new()),
                    (None, Asked::No) if self.bot.classifier.is_some() => {
                        return Some(Decision::Classify);
                    }
                    (None, Asked::Answered(intent, confidence)) => {
                        // Not sure: the built-in ranking says what to offer.
                        let ranked = match intent {
                            Some(_) => Vec::new(),
                            None => nlu.model.classify_normalized(probe.norm()).ranked,
                        };
                        (intent, confidence, ranked)
                    }
                    (None, _) => {
                        let c = nlu.model.classify_normalized(probe.norm());
                        (c.intent, c.confidence, c.ranked)
                    }
                };
                self.classified = Some((intent, confidence));
                env.intent = intent;
                if let Some(d) = rules.first(true, &probe, &mut env, &mut caps, &mut deferred) {
                    return Some(d);
                }
                // Not sure: the likely intents this state would act on.
                if intent.is_none() && had_session {
                    let mut here = Vec::new();
                    for r in rules.state.iter().chain(rules.global) {
                        r.cond.intents(&mut here);
                    }
                    // Likely: within a fifth of the threshold.
                    let floor = nlu.model.threshold() * 0.8;
                    offer = ranked
                        .iter()
                        .filter(|(i, s)| *s >= floor && here.contains(i))
                        .map(|(i, _)| *i)
                        .collect();
                }
            }
        }
        if !had_session {
            return None;
        }
        if st.ask.is_some() {
            return Some(Decision::Invalid);
        }
        if let (Some(n), false) = (flow.not_sure_in(self.session.state), offer.is_empty()) {
            offer.truncate(n.offer as usize);
            return Some(Decision::NotSure(offer));
        }
        Some(Decision::Fallback)
    }

    /// "Did you mean": the state's (or the flow's) question, the likely
    /// intents as buttons; the conversation stays where it is.
    fn not_sure(&mut self, here: StateId, offer: &[u32]) {
        let flow = self.bot.flow.clone();
        let (Some(nlu), Some(n)) = (flow.nlu.as_ref(), flow.not_sure_in(here)) else {
            return;
        };
        self.trace.push(Step::NotSure(here));
        let msg = MsgNode::Text {
            text: n.say.clone(),
            quick_replies: offer
                .iter()
                .filter_map(|i| nlu.choices.get(*i as usize).cloned())
                .collect(),
            buttons: Vec::new(),
        };
        self.session.offered.clear();
        self.send(std::slice::from_ref(&msg));
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
            if let Some(h) = &st.http {
                if let Err(e) = self.http(h).await {
                    match self.fail_via(id, h.on_error, e) {
                        Some(t) => {
                            id = t;
                            continue;
                        }
                        None => return,
                    }
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

    /// Makes the request of an `http:` step and saves what it says; the
    /// error, if it failed (its status saved all the same).
    pub(super) async fn http(&mut self, h: &HttpNode) -> Result<(), String> {
        let flow = self.bot.flow.clone();
        self.http_calls += 1;
        if self.http_calls > flow.settings.http_per_turn {
            return Err(format!(
                "http `{}`: more than {} requests in one turn (limits.http_calls_per_turn)",
                h.name, flow.settings.http_per_turn
            ));
        }
        let scope = crate::flow::template::with_secrets(self.scope());
        let render = |t: &crate::flow::Tpl| {
            flow.templates
                .render(t, &scope)
                .map(|s| s.into_owned())
                .map_err(|e| format!("http `{}`: {e}", h.name))
        };
        let pairs = |list: &[(Box<str>, crate::flow::Tpl)]| {
            list.iter()
                .map(|(k, t)| Ok((k.to_string(), render(t)?)))
                .collect::<Result<Vec<_>, String>>()
        };
        let request = crate::fetch::HttpRequest {
            name: h.name.to_string(),
            method: h.method.to_string(),
            url: render(&h.url)?,
            query: pairs(&h.query)?,
            headers: pairs(&h.headers)?,
            body: match &h.body {
                Some(b) => {
                    Some(body(b, &flow, &scope).map_err(|e| format!("http `{}`: {e}", h.name))?)
                }
                None => None,
            },
            timeout: std::time::Duration::from_millis(u64::from(h.timeout_ms)),
            retries: h.retries,
            allow: flow.settings.http_allow.clone(),
        };
        drop(scope);
        let answer = self.bot.http.send(&request).await;
        let status = match &answer {
            Ok(r) => r.status,
            Err(e) => e.status().unwrap_or(0),
        };
        if let Some(var) = &h.status {
            self.set(var, Value::from(status));
        }
        match answer {
            Ok(r) => {
                for (var, pointer) in &h.save {
                    let v = r
                        .json
                        .pointer(pointer)
                        .map(Value::from_serialize)
                        .unwrap_or(Value::from(()));
                    self.set(var, v);
                }
                Ok(())
            }
            Err(e) => Err(format!("http `{}` ({request}) failed: {e}", h.name)),
        }
    }

    /// Runs the error path; returns the state to go on with, if any.
    pub(super) fn fail(&mut self, at: StateId, error: String) -> Option<StateId> {
        self.fail_via(at, None, error)
    }

    /// Runs the error path, to `first` if given, else the state's
    /// `on_error`, the flow's, or the error message.
    pub(super) fn fail_via(
        &mut self,
        at: StateId,
        first: Option<StateId>,
        error: String,
    ) -> Option<StateId> {
        let flow = self.bot.flow.clone();
        let st = flow.state(at);
        tracing::warn!(state = &*st.name, %error, "turn error");
        self.errors.push(error);
        self.trace.push(Step::Error(at));
        let target = first.or(st.on_error).or(flow.on_error);
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

/// An `http:` step's JSON body, rendered: a string that is one
/// `{{ variable }}` keeps the variable's type.
fn body(b: &Body, flow: &Flow, scope: &Value) -> Result<serde_json::Value, String> {
    use crate::flow::template::Part;
    use crate::flow::Tpl;
    Ok(match b {
        Body::Text(Tpl::Interp { parts, .. }) if matches!(&**parts, [Part::Var(_)]) => {
            let [Part::Var(name)] = &**parts else {
                unreachable!("matched above")
            };
            let v = scope.get_attr(name).unwrap_or_default();
            match v.is_undefined() || v.is_none() {
                true => serde_json::Value::Null,
                false => serde_json::to_value(&v).map_err(|e| e.to_string())?,
            }
        }
        Body::Text(t) => serde_json::Value::String(
            flow.templates
                .render(t, scope)
                .map_err(|e| e.to_string())?
                .into_owned(),
        ),
        Body::List(items) => serde_json::Value::Array(
            items
                .iter()
                .map(|x| body(x, flow, scope))
                .collect::<Result<_, _>>()?,
        ),
        Body::Map(m) => serde_json::Value::Object(
            m.iter()
                .map(|(k, x)| Ok((k.to_string(), body(x, flow, scope)?)))
                .collect::<Result<_, String>>()?,
        ),
        Body::Value(v) => v.clone(),
    })
}

/// The first of `rules` that holds: in the first pass, those that do not
/// read the intent (noting in `deferred` that some do); in the second, those
/// that do.
/// The rules a message meets, in order: the flow's global ones (where
/// they apply), then the state's (when there is a conversation).
struct Rules<'r> {
    global: &'r [RuleNode],
    state: &'r [RuleNode],
}

impl Rules<'_> {
    /// The first rule that holds, among those that read the intent
    /// (`intents`) or among the others.
    fn first(
        &self,
        intents: bool,
        probe: &Probe<'_>,
        env: &mut MatchEnv<'_>,
        caps: &mut Vec<(String, Value)>,
        deferred: &mut bool,
    ) -> Option<Decision> {
        if let Some(i) = first(self.global, intents, probe, env, caps, deferred) {
            return Some(Decision::Intent(i, std::mem::take(caps)));
        }
        first(self.state, intents, probe, env, caps, deferred)
            .map(|i| Decision::Rule(i, std::mem::take(caps)))
    }
}

fn first(
    rules: &[RuleNode],
    intents: bool,
    probe: &Probe<'_>,
    env: &mut MatchEnv<'_>,
    caps: &mut Vec<(String, Value)>,
    deferred: &mut bool,
) -> Option<u32> {
    for (i, r) in rules.iter().enumerate() {
        if matching::has_intent(&r.cond) != intents {
            *deferred |= !intents;
            continue;
        }
        if eval(&r.cond, probe, env, caps) {
            return Some(i as u32);
        }
        caps.clear();
    }
    None
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
