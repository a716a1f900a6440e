//! The flow explorer (`flowbot check --explore`): every branch a customer can
//! take, walked from the start through the real engine, with the flow's
//! actions mocked (they go on and set nothing: no side effects).
//!
//! In each waiting state it tries what the flow itself says can come: each
//! option offered (button, list row), each rule's and intent's button, list
//! id, text, keyword, regex (a sample the regex matches) and media, a valid
//! and an invalid answer to a question (the longest free-text answer first,
//! so that messages showing it are checked at their longest), an unmatched
//! message for the fallbacks, and the idle nudge; a turn that goes through a
//! `next:` of branches or a `split:` is run again for each other branch or
//! variant, and a turn that runs an action again for each state its `jumps:`
//! declares and for its failure, so every one is followed. Conversations are told
//! apart by state, retries and call stack, so the walk is linear in the
//! flow's size; `depth` bounds the turns of a path. It reports, each at the
//! state's file and line:
//!
//! - a turn that sends nothing (error);
//! - a message that breaks WhatsApp's limits as it was rendered (error);
//! - a text that misses one of the flow's languages (error);
//! - a state no path of at most `depth` turns reaches (warning);
//! - with `require_exit`, a waiting state from which no path of at most
//!   `depth` turns reaches a handoff or an end (error);
//! - an intent's example that its own flow's classifier understands as
//!   another intent, or is not sure of (a confusion; warning, at the
//!   example's line).
//!
//! Intent rules are probed with each intent's first example as text (the
//! real classifier) and as a "did you mean" pick; where a state can say it
//! is not sure, with a message the classifier is made not sure of (the
//! first examples of two intents together), so that the "did you mean"
//! question is walked too.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::Path;
use std::sync::Arc;

use rand::{RngExt, SeedableRng};
use tracing::instrument::WithSubscriber;

use crate::engine::{Bot, Stored};
use crate::flow::limits;
use crate::flow::{analyze, Check, CheckKind, Cond, Diagnostics, Flow, Severity, StateId};
use crate::handler::Registry;
use crate::message::{Channel, Effect, Event, Incoming, MediaKind, Outgoing};

/// What the walk makes a state do for one run of a turn, whatever its
/// conditions or its action would: each other branch of a `next:` the turn
/// went through, each state an action declares it may jump to (`jumps:`) and
/// its failure (the error path) are run too, so that every one is followed.
type Steer = Arc<std::sync::Mutex<Option<Force>>>;

#[derive(Debug, Clone, Copy)]
enum Force {
    /// State, branch.
    Branch(StateId, usize),
    /// State, what its action does: jump to its n-th declared state, or
    /// fail (n = the number of them).
    Call(StateId, usize),
    /// State whose `http:` request fails.
    Http(StateId),
}

/// The explorer's stand-in for the network: every request answers 200
/// with no body, unless the walk makes it fail ([`Force::Http`]).
struct SteeredHttp {
    steer: Steer,
    /// Each step's state, by the step's name.
    steps: HashMap<String, StateId>,
}

#[async_trait::async_trait]
impl crate::fetch::HttpClient for SteeredHttp {
    async fn send(
        &self,
        request: &crate::fetch::HttpRequest,
    ) -> Result<crate::fetch::HttpResponse, crate::fetch::HttpError> {
        let forced = *self.steer.lock().unwrap_or_else(|e| e.into_inner());
        match (forced, self.steps.get(&request.name)) {
            (Some(Force::Http(at)), Some(id)) if at == *id => {
                Err(crate::fetch::HttpError::Status { status: 503 })
            }
            _ => Ok(crate::fetch::HttpResponse::json(serde_json::Value::Null)),
        }
    }
}

/// One [`Steered`] registered under every action's name.
struct Shared(Arc<Steered>);

#[async_trait::async_trait]
impl crate::handler::Action for Shared {
    async fn run(
        &self,
        ctx: &mut crate::handler::ActionContext<'_>,
    ) -> Result<crate::handler::ActionOutcome, crate::handler::ActionError> {
        self.0.run(ctx).await
    }
}

/// The explorer's stand-in for every action: it sets nothing and goes on,
/// unless the walk makes it jump or fail ([`Force::Call`]).
struct Steered {
    steer: Steer,
    /// Each calling state's id and declared jumps, by the state's name.
    jumps: HashMap<String, (StateId, Vec<String>)>,
}

#[async_trait::async_trait]
impl crate::handler::Action for Steered {
    async fn run(
        &self,
        ctx: &mut crate::handler::ActionContext<'_>,
    ) -> Result<crate::handler::ActionOutcome, crate::handler::ActionError> {
        let forced = *self.steer.lock().unwrap_or_else(|e| e.into_inner());
        let Some((id, jumps)) = self.jumps.get(ctx.state) else {
            return Ok(crate::handler::ActionOutcome::Continue);
        };
        match forced {
            Some(Force::Call(at, n)) if at == *id => match jumps.get(n) {
                Some(to) => Ok(crate::handler::ActionOutcome::Goto(to.clone())),
                None => Err(crate::handler::ActionError::new(
                    "failed on purpose by the explorer",
                )),
            },
            _ => Ok(crate::handler::ActionOutcome::Continue),
        }
    }
}

/// The explorer's classifier: not sure of the texts made to walk the
/// "did you mean" path; every other message is left to the built-in one.
struct NotSureProbe(String);

#[async_trait::async_trait]
impl crate::nlu::Classifier for NotSureProbe {
    fn name(&self) -> &str {
        "explore"
    }

    async fn classify(
        &self,
        input: &crate::nlu::ClassifyInput<'_>,
    ) -> Result<crate::nlu::Verdict, crate::nlu::ClassifyError> {
        if input.text == self.0 {
            Ok(crate::nlu::Verdict::not_sure(0.0))
        } else {
            Err(crate::nlu::ClassifyError::Declined)
        }
    }
}

/// The text the explorer is not sure of: the first examples of the first
/// two intents rules read, together.
fn not_sure_text(flow: &Flow) -> Option<String> {
    let nlu = flow.nlu.as_ref()?;
    let mut read = Vec::new();
    let rules = flow
        .intents
        .iter()
        .chain(flow.states.iter().flat_map(|s| s.on.iter()));
    for r in rules {
        r.cond.intents(&mut read);
    }
    read.sort_unstable();
    read.dedup();
    let first = |i: u32| nlu.intents.get(i as usize)?.examples.first().cloned();
    match read[..] {
        [a, b, ..] => Some(format!("{} / {}", first(a)?, first(b)?)),
        _ => None,
    }
}

/// Each intent's examples through the flow's own classifier: one
/// understood as another intent, or not surely, is reported at its line.
fn confusions(files: &[crate::flow::Loaded], flow: &Flow, out: &mut Diagnostics) {
    let (Some(nlu), Some(main)) = (&flow.nlu, files.first()) else {
        return;
    };
    for (i, intent) in nlu.intents.iter().enumerate() {
        for (example, path) in intent.examples.iter().zip(&nlu.example_paths[i]) {
            let c = nlu.model.classify(example);
            let message = match c.intent {
                Some(got) if got as usize == i => continue,
                Some(got) => format!(
                    "the example {:?} of `{}` is understood as `{}` ({:.2})",
                    crate::text::shorten(example, 60),
                    intent.name,
                    nlu.names[got as usize],
                    c.confidence
                ),
                None => format!(
                    "the example {:?} of `{}` is not understood surely ({:.2}, best: `{}`)",
                    crate::text::shorten(example, 60),
                    intent.name,
                    c.confidence,
                    c.ranked
                        .first()
                        .map_or("none", |(b, _)| &nlu.names[*b as usize])
                ),
            };
            let pos = main.source.key_pos(path);
            out.0.push(main.source.diagnostic_at(
                Severity::Warning,
                pos,
                path,
                message,
                Some("make the two intents' examples more distinct, or move this one".into()),
            ));
        }
    }
}

/// How far and what to look for.
#[derive(Debug, Clone, Copy)]
pub struct ExploreOptions {
    /// The most turns of a path.
    pub depth: u32,
    /// Report waiting states from which no path reaches a handoff or an end.
    pub require_exit: bool,
}

impl Default for ExploreOptions {
    fn default() -> Self {
        ExploreOptions {
            depth: 20,
            require_exit: false,
        }
    }
}

/// The most conversations the walk keeps apart (it stops there).
const MAX_NODES: usize = 20_000;

/// One conversation the walk reached.
struct Node {
    stored: Option<Stored>,
    due: Option<i64>,
    now: i64,
    depth: u32,
    /// How it was reached, for the report.
    path: Vec<String>,
}

/// What one turn from a node did.
struct Edge {
    from: usize,
    to: Option<usize>,
    exits: bool,
}

/// Explores the flow at `path` with the registry's matchers and every action
/// mocked; its problems, with positions. Problems loading the flow come
/// back as they are.
pub async fn explore(path: &Path, registry: &Registry, options: ExploreOptions) -> Diagnostics {
    let names = registry.names();
    let analysis = analyze(path, &|_| None, &names);
    if analysis.diagnostics.has_errors() {
        return analysis.diagnostics;
    }
    let flow = match Flow::load(path, &names) {
        Ok(f) => f,
        Err(e) => return e.0,
    };
    let steer: Steer = Default::default();
    let steered = Arc::new(Steered {
        steer: steer.clone(),
        jumps: flow
            .states
            .iter()
            .enumerate()
            .filter_map(|(id, s)| {
                let c = s.call.as_ref()?;
                let names = c.jumps.iter().map(|j| flow.state(*j).name.to_string());
                Some((s.name.to_string(), (id as StateId, names.collect())))
            })
            .collect(),
    });
    let steps = flow
        .states
        .iter()
        .enumerate()
        .filter_map(|(id, s)| Some((s.http.as_ref()?.name.to_string(), id as StateId)))
        .collect();
    let mut mocked = registry.clone().http(SteeredHttp {
        steer: steer.clone(),
        steps,
    });
    // The flow's own examples only: a registered classifier (an LLM) is
    // never asked.
    mocked.classifier = None;
    if let Some(text) = not_sure_text(&flow) {
        mocked = mocked.classifier(NotSureProbe(text));
    }
    for action in flow.actions.iter() {
        mocked = mocked.action(action.to_string(), Shared(steered.clone()));
    }
    let choice = steer.clone();
    let bot = match Bot::new(flow, mocked) {
        Ok(b) => Arc::new(b.steered(move |id| {
            choice
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .and_then(|f| match f {
                    Force::Branch(at, i) if at == id => Some(i),
                    _ => None,
                })
        })),
        Err(e) => {
            let mut d = Diagnostics::default();
            d.0.push(analysis.files[0].source.diagnostic_at(
                Severity::Error,
                None,
                "",
                e.to_string(),
                None,
            ));
            return d;
        }
    };
    let mut out = Diagnostics::default();
    languages(&analysis.files, &mut out);
    confusions(&analysis.files, bot.flow(), &mut out);
    let mut seen = Seen::default();
    // Business hours: the walk runs by night and by day (a Thursday at 00:00
    // and a Wednesday at 11:00, UTC), so that both sides of `open()` are seen.
    for start in [super::EPOCH, super::EPOCH - 86_400_000 + 11 * 3_600_000] {
        // The turns' own logs (an action failed on purpose, a `when` that
        // fails) are not the walk's findings: those are its diagnostics.
        walk(
            &bot,
            &steer,
            &analysis.files,
            options,
            start,
            &mut seen,
            &mut out,
        )
        .with_subscriber(tracing::subscriber::NoSubscriber::default())
        .await;
    }
    let flow = bot.flow().clone();
    for s in &flow.states {
        if !seen.entered.contains(&*s.name) {
            report(
                &mut out,
                &analysis.files,
                &flow,
                &s.name,
                Severity::Warning,
                format!("no path of at most {} turns reaches `{}`", options.depth, s.name),
                Some("a condition that never holds, or an option never offered? (`--depth` explores further)".into()),
            );
        }
    }
    let mut dead: Vec<String> = seen.dead.take().unwrap_or_default().into_iter().collect();
    dead.sort();
    for state in dead {
        report(
            &mut out,
            &analysis.files,
            &flow,
            &state,
            Severity::Error,
            format!(
                "from `{state}`, no path of at most {} turns reaches a handoff or an end",
                options.depth
            ),
            Some("offer a way out: a button to a person, or an end".into()),
        );
    }
    out.finish();
    out
}

/// What the walks found so far (each problem is reported once).
#[derive(Default)]
struct Seen {
    entered: HashSet<String>,
    /// States with a silent turn already reported.
    silent: HashSet<String>,
    broken: HashSet<(String, String)>,
    /// The states dead in every walk so far.
    dead: Option<HashSet<String>>,
}

/// Where a state is written: its file's source and its document path.
fn state_at<'a>(
    files: &'a [crate::flow::Loaded],
    flow: &Flow,
    name: &str,
) -> Option<(&'a crate::flow::Source, String)> {
    let id = flow.state_id(name)?;
    let node = flow.state(id);
    let local = if node.unit > 0 {
        name.split_once('/').map_or(name, |(_, rest)| rest)
    } else {
        name
    };
    let source = &files.get(node.file)?.source;
    Some((source, crate::flow::join_key("states", local)))
}

fn report(
    out: &mut Diagnostics,
    files: &[crate::flow::Loaded],
    flow: &Flow,
    state: &str,
    severity: Severity,
    message: String,
    hint: Option<String>,
) {
    let Some((source, path)) = state_at(files, flow, state) else {
        return;
    };
    let pos = source.key_pos(&path);
    out.0
        .push(source.diagnostic_at(severity, pos, &path, message, hint));
}

async fn walk(
    bot: &Arc<Bot>,
    steer: &Steer,
    files: &[crate::flow::Loaded],
    options: ExploreOptions,
    start: i64,
    seen: &mut Seen,
    out: &mut Diagnostics,
) {
    let flow = bot.flow().clone();
    let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
    let not_sure = not_sure_text(&flow);
    let mut nodes: Vec<Node> = vec![Node {
        stored: None,
        due: None,
        now: start,
        depth: 0,
        path: Vec::new(),
    }];
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut edges: Vec<Edge> = Vec::new();
    let Seen {
        entered,
        silent,
        broken,
        dead,
    } = seen;
    let mut queue = VecDeque::from([0usize]);
    while let Some(at) = queue.pop_front() {
        if nodes[at].depth >= options.depth {
            continue;
        }
        let probes = probes(&flow, &nodes[at], not_sure.as_deref(), &mut rng);
        let mut runs = Vec::new();
        for (label, event, now) in probes {
            let stored = nodes[at].stored.clone();
            let turn = bot.step("explore", stored.clone(), &event, now).await;
            // Every other branch of each `next:` the turn went through, and
            // each declared jump and the failure of each action it ran.
            let mut forks = Vec::new();
            for step in &turn.trace {
                match *step {
                    crate::engine::Step::Split(id, taken) => {
                        for other in 0..flow.state(id).split.len() {
                            if other != taken as usize {
                                forks.push(Force::Branch(id, other));
                            }
                        }
                    }
                    crate::engine::Step::Branch(id, taken) => {
                        for other in 0..flow.state(id).branches.len() {
                            if other != taken as usize {
                                forks.push(Force::Branch(id, other));
                            }
                        }
                    }
                    crate::engine::Step::Enter(id) => {
                        if let Some(call) = &flow.state(id).call {
                            forks.extend((0..=call.jumps.len()).map(|n| Force::Call(id, n)));
                        }
                        if flow.state(id).http.is_some() {
                            forks.push(Force::Http(id));
                        }
                    }
                    _ => {}
                }
            }
            for force in forks {
                *steer.lock().unwrap_or_else(|e| e.into_inner()) = Some(force);
                let forked = bot.step("explore", stored.clone(), &event, now).await;
                *steer.lock().unwrap_or_else(|e| e.into_inner()) = None;
                let why = match force {
                    Force::Branch(id, n) => match flow.state(id).split.get(n) {
                        Some((to, _)) => format!(
                            "`{}` split to `{}`",
                            flow.state(id).name,
                            flow.state(*to).name
                        ),
                        None => format!("`{}` branch {n}", flow.state(id).name),
                    },
                    Force::Call(id, n) => {
                        let st = flow.state(id);
                        let call = st.call.as_ref();
                        let action = &flow.actions[call.map_or(0, |c| c.action) as usize];
                        match call.and_then(|c| c.jumps.get(n)) {
                            Some(to) => format!("`{action}` jumps to `{}`", flow.state(*to).name),
                            None => format!("`{action}` fails"),
                        }
                    }
                    Force::Http(id) => {
                        let name = flow.state(id).http.as_ref().map_or("", |h| &*h.name);
                        format!("request `{name}` fails")
                    }
                };
                runs.push((format!("{label} ({why})"), event.clone(), now, forked));
            }
            runs.push((label, event, now, turn));
        }
        for (label, event, now, turn) in runs {
            let node = &nodes[at];
            let here = node.stored.as_ref().map(|s| s.state.to_string());
            for step in &turn.trace {
                if let crate::engine::Step::Enter(id) = step {
                    entered.insert(flow.state(*id).name.to_string());
                }
            }
            let after = turn.stored.as_ref().map(|s| s.state.to_string());
            let where_ = after.clone().or_else(|| here.clone());
            let in_handoff = node.stored.as_ref().is_some_and(|s| s.session.handoff);
            if matches!(event, Event::Message(_))
                && turn.messages.is_empty()
                && turn.effects.is_empty()
                && !in_handoff
            {
                let state = where_
                    .clone()
                    .unwrap_or_else(|| flow.state(flow.start).name.to_string());
                if silent.insert(state.clone()) {
                    let mut path = node.path.clone();
                    path.push(label.clone());
                    report(
                        out,
                        files,
                        &flow,
                        &state,
                        Severity::Error,
                        format!("a turn sends nothing: {} (the conversation is then in `{}`)", path.join(" → "), after.as_deref().unwrap_or("no state")),
                        Some("give this state a `say`, a fallback, or an `ask` so the customer hears back".into()),
                    );
                }
            }
            for m in &turn.messages {
                if let Some(why) = breaks_limits(m) {
                    let state = where_.clone().unwrap_or_default();
                    if broken.insert((state.clone(), why.clone())) {
                        report(
                            out,
                            files,
                            &flow,
                            &state,
                            Severity::Error,
                            format!("a message breaks WhatsApp's limits once rendered: {why}"),
                            Some("shorten the text, or the values shown in it".into()),
                        );
                    }
                }
            }
            let exits = turn
                .effects
                .iter()
                .any(|e| matches!(e, Effect::End | Effect::Handoff))
                || (turn.stored.is_none() && node.stored.is_some());
            let to = match &turn.stored {
                None => None,
                Some(s) => {
                    let key = format!(
                        "{}|{}|{}|{}",
                        s.state,
                        s.session.retries,
                        s.session.handoff,
                        s.session
                            .stack
                            .iter()
                            .map(|f| &*f.call)
                            .collect::<Vec<_>>()
                            .join(",")
                    );
                    match index.get(&key) {
                        Some(&i) => Some(i),
                        None if nodes.len() < MAX_NODES => {
                            let mut path = nodes[at].path.clone();
                            path.push(label.clone());
                            nodes.push(Node {
                                stored: turn.stored.clone(),
                                due: turn.due,
                                now,
                                depth: nodes[at].depth + 1,
                                path,
                            });
                            let i = nodes.len() - 1;
                            index.insert(key, i);
                            queue.push_back(i);
                            Some(i)
                        }
                        None => None,
                    }
                }
            };
            edges.push(Edge {
                from: at,
                to,
                exits,
            });
        }
    }
    if options.require_exit {
        let here = dead_ends(&nodes, &edges, options.depth);
        // Dead in every walk (by night and by day) to count.
        *dead = match dead.take() {
            None => Some(here),
            Some(before) => Some(before.intersection(&here).cloned().collect()),
        };
    }
}

/// Waiting states from which no explored path of at most `depth` turns
/// ends or hands off: the shortest way out of each conversation, counted
/// backwards from the turns that end or hand off. A conversation whose
/// future the walk cut short (at `depth`) is not judged.
fn dead_ends(nodes: &[Node], edges: &[Edge], depth: u32) -> HashSet<String> {
    let n = nodes.len();
    let expanded = |i: usize| nodes[i].depth < depth;
    let mut back: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut dist = vec![u32::MAX; n];
    let mut queue = VecDeque::new();
    for e in edges {
        if let Some(t) = e.to {
            back[t].push(e.from);
        }
        if e.exits && dist[e.from] > 1 {
            dist[e.from] = 1;
            queue.push_back(e.from);
        }
    }
    while let Some(i) = queue.pop_front() {
        for &p in &back[i] {
            if dist[p] == u32::MAX {
                dist[p] = dist[i] + 1;
                queue.push_back(p);
            }
        }
    }
    // Conversations that lead to one the walk did not expand: unknown.
    let mut open = vec![false; n];
    let mut queue: VecDeque<usize> = (0..n).filter(|&i| !expanded(i)).collect();
    for &i in &queue {
        open[i] = true;
    }
    while let Some(i) = queue.pop_front() {
        for &p in &back[i] {
            if !open[p] {
                open[p] = true;
                queue.push_back(p);
            }
        }
    }
    (0..n)
        .filter(|&i| expanded(i) && !open[i] && dist[i] > depth)
        .filter_map(|i| {
            let stored = nodes[i].stored.as_ref()?;
            (!stored.session.handoff).then(|| stored.state.to_string())
        })
        .collect()
}

/// What the customer (or time) can do in a node, as the flow says.
/// What to try in a node; `not_sure`: the text the explorer's classifier
/// is not sure of, tried where a rule reads the intent.
fn probes(
    flow: &Flow,
    node: &Node,
    not_sure: Option<&str>,
    rng: &mut rand::rngs::SmallRng,
) -> Vec<(String, Event, i64)> {
    let mut inputs: Vec<(String, Incoming)> = Vec::new();
    let mut add = |label: String, m: Incoming| {
        if !inputs.iter().any(|(l, _)| *l == label) {
            inputs.push((label, m));
        }
    };
    let mut conds: Vec<&Cond> = flow.intents.iter().map(|r| &r.cond).collect();
    match &node.stored {
        None => add("text \"hello\"".into(), Incoming::text("hello")),
        // A person has it: what comes next is its release.
        Some(s) if s.session.handoff => {
            return vec![(
                "a person hands it back".into(),
                Event::Release,
                node.now + 1_000,
            )];
        }
        Some(s) => {
            let st = flow.state(s.session.state);
            for o in &s.session.offered {
                match o.kind {
                    crate::engine::OptionKind::Row => {
                        add(format!("list {}", o.id), Incoming::list(o.id.to_string()))
                    }
                    _ => add(
                        format!("button {}", o.id),
                        Incoming::button(o.id.to_string()),
                    ),
                }
            }
            if !st.intents {
                conds.clear();
            }
            conds.extend(st.on.iter().map(|r| &r.cond));
            if let Some(ask) = &st.ask {
                for q in &ask.quick_replies {
                    add(
                        format!("button {}", q.id),
                        Incoming::button(q.id.to_string()),
                    );
                }
                for sample in answers(&ask.check, rng) {
                    add(format!("text {sample:?}"), Incoming::text(sample));
                }
            }
            add("text \"zzz\"".into(), Incoming::text("zzz"));
        }
    }
    let mut read = Vec::new();
    for c in conds {
        cond_probes(flow, c, rng, &mut add);
        c.intents(&mut read);
    }
    if let (Some(t), false) = (not_sure, read.is_empty()) {
        add(
            format!("text {t:?} (not sure)"),
            Incoming::text(t.to_owned()),
        );
    }
    let mut out: Vec<(String, Event, i64)> = inputs
        .into_iter()
        .map(|(l, m)| (l, Event::Message(m.on(Channel::WhatsApp)), node.now + 1_000))
        .collect();
    if let Some(due) = node.due {
        out.push(("silence".into(), Event::Idle { due }, due.max(node.now)));
    }
    out
}

fn cond_probes(
    flow: &Flow,
    c: &Cond,
    rng: &mut rand::rngs::SmallRng,
    add: &mut impl FnMut(String, Incoming),
) {
    match c {
        // An intent is probed as the pick of a "did you mean" button, which
        // counts as that intent whatever the text.
        Cond::Intent(i) => {
            if let Some(name) = flow.nlu.as_ref().and_then(|n| n.names.get(*i as usize)) {
                add(
                    format!("intent {name}"),
                    Incoming::button(format!("nlu:{name}")),
                );
            }
            let example = flow
                .nlu
                .as_ref()
                .and_then(|n| n.intents.get(*i as usize)?.examples.first());
            if let Some(t) = example {
                add(format!("text {t:?}"), Incoming::text(t.to_string()));
            }
        }
        Cond::Tolerant(t) => {
            if let Some(p) = t.phrases.first() {
                let t = p.join(" ");
                add(format!("text {t:?}"), Incoming::text(t));
            }
        }
        Cond::Button(id) => add(format!("button {id}"), Incoming::button(id.to_string())),
        Cond::List(id) => add(format!("list {id}"), Incoming::list(id.to_string())),
        Cond::Text(syn) => {
            if let Some(t) = syn.first() {
                add(format!("text {t:?}"), Incoming::text(t.to_string()));
            }
        }
        Cond::Keyword(phrases) => {
            if let Some(p) = phrases.first() {
                let t = p.join(" ");
                add(format!("text {t:?}"), Incoming::text(t));
            }
        }
        Cond::Regex(re) => {
            if let Some(t) = sample(re.as_str(), rng) {
                add(format!("text {t:?}"), Incoming::text(t));
            }
        }
        Cond::Media(kind) => {
            let kind = kind.unwrap_or(MediaKind::Image);
            add(
                format!("media {}", kind.as_str()),
                Incoming::media(kind, ""),
            );
        }
        Cond::Any(list) => list.iter().for_each(|c| cond_probes(flow, c, rng, add)),
        Cond::All(list) => {
            if let Some(c) = list.first() {
                cond_probes(flow, c, rng, add);
            }
        }
        Cond::When(_) | Cond::Not(_) | Cond::Custom(_) => {}
    }
}

/// A string the regex matches, if one can be made: generated from the
/// pattern without its anchors and word boundaries (ASCII classes where the
/// pattern allows them, as customers type), then checked against it.
fn sample(pattern: &str, rng: &mut rand::rngs::SmallRng) -> Option<String> {
    use regex_syntax::hir::{Hir, HirKind};
    fn plain(h: Hir) -> Hir {
        match h.into_kind() {
            HirKind::Look(_) => Hir::empty(),
            HirKind::Capture(mut c) => {
                c.sub = Box::new(plain(*c.sub));
                Hir::capture(c)
            }
            HirKind::Repetition(mut r) => {
                r.sub = Box::new(plain(*r.sub));
                Hir::repetition(r)
            }
            HirKind::Concat(v) => Hir::concat(v.into_iter().map(plain).collect()),
            HirKind::Alternation(v) => Hir::alternation(v.into_iter().map(plain).collect()),
            other => other_kind(other),
        }
    }
    fn other_kind(k: HirKind) -> Hir {
        match k {
            HirKind::Empty => Hir::empty(),
            HirKind::Literal(l) => Hir::literal(l.0),
            HirKind::Class(c) => Hir::class(c),
            _ => Hir::empty(),
        }
    }
    let re = regex::Regex::new(pattern).ok()?;
    let parsed = regex_syntax::ParserBuilder::new()
        .unicode(false)
        .utf8(true)
        .build()
        .parse(pattern)
        .ok()
        .or_else(|| regex_syntax::Parser::new().parse(pattern).ok())?;
    let generator = rand_regex::Regex::with_hir(plain(parsed), 3).ok()?;
    (0..8)
        .map(|_| rng.sample::<String, _>(&generator))
        .find(|s| s.chars().count() <= 200 && re.is_match(s))
}

/// A valid answer (the longest first) and an invalid one.
fn answers(check: &Check, rng: &mut rand::rngs::SmallRng) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(re) = &check.regex {
        out.extend(sample(re.as_str(), rng).filter(|s| re.is_match(s)));
    } else {
        match check.kind {
            CheckKind::Text => out.push(
                "A long answer, as a customer may write it, to check that every message showing it stays within the channel's limits"
                    .into(),
            ),
            CheckKind::Number => {
                let n = check.min.or(check.max).unwrap_or(1.0);
                out.push(if n.fract() == 0.0 { format!("{}", n as i64) } else { n.to_string() });
            }
            CheckKind::Email => out.push("ada@example.com".into()),
            CheckKind::Phone => out.push("+44 20 7946 0018".into()),
            CheckKind::Date => out.push("14.02.2026".into()),
        }
    }
    out.push("?".into());
    out
}

/// Why a message breaks WhatsApp's limits, if it does.
fn breaks_limits(m: &Outgoing) -> Option<String> {
    let len = |s: &str| s.chars().count();
    let short = |s: &str| crate::text::shorten(s, 40);
    let interactive = !m.quick_replies.is_empty() || m.list.is_some() || !m.buttons.is_empty();
    if interactive && len(&m.text) > limits::BODY {
        return Some(format!(
            "a body of {} characters (at most {}): \"{}\"",
            len(&m.text),
            limits::BODY,
            short(&m.text)
        ));
    }
    if len(&m.text) > 4096 {
        return Some(format!(
            "a text of {} characters (at most 4096): \"{}\"",
            len(&m.text),
            short(&m.text)
        ));
    }
    for q in &m.quick_replies {
        if len(&q.title) > limits::QUICK_REPLY_TITLE {
            return Some(format!(
                "the button title \"{}\" has {} characters (at most {})",
                short(&q.title),
                len(&q.title),
                limits::QUICK_REPLY_TITLE
            ));
        }
    }
    if let Some(l) = &m.list {
        if len(&l.body) > limits::BODY {
            return Some(format!(
                "a list body of {} characters (at most {})",
                len(&l.body),
                limits::BODY
            ));
        }
        for row in l.sections.iter().flat_map(|s| &s.rows) {
            if len(&row.title) > limits::ROW_TITLE {
                return Some(format!(
                    "the row title \"{}\" has {} characters (at most {})",
                    short(&row.title),
                    len(&row.title),
                    limits::ROW_TITLE
                ));
            }
            if row
                .description
                .as_deref()
                .is_some_and(|d| len(d) > limits::ROW_DESCRIPTION)
            {
                return Some(format!(
                    "a row description longer than {} characters",
                    limits::ROW_DESCRIPTION
                ));
            }
        }
    }
    None
}

/// Texts written per language that leave out one of the flow's languages
/// (those any text of the flow is written in, and the default one).
fn languages(files: &[crate::flow::Loaded], out: &mut Diagnostics) {
    const TEXT_KEYS: &[&str] = &[
        "say",
        "text",
        "title",
        "description",
        "header",
        "body",
        "footer",
        "button",
        "caption",
        "invalid",
        "error_message",
        "restart_message",
        "overflow_button",
        "release_message",
        "handoff_failed_message",
        "fallback",
        "exhausted",
    ];
    let mut found: Vec<(usize, String, Vec<String>)> = Vec::new();
    fn is_lang(k: &str) -> bool {
        let (base, region) = k.split_once(['_', '-']).unwrap_or((k, ""));
        (2..=3).contains(&base.len())
            && base.chars().all(|c| c.is_ascii_lowercase())
            && region.chars().all(|c| c.is_ascii_alphanumeric())
    }
    fn visit(
        v: &serde_json::Value,
        path: &str,
        in_text: bool,
        file: usize,
        found: &mut Vec<(usize, String, Vec<String>)>,
    ) {
        match v {
            serde_json::Value::Object(m) => {
                if in_text && !m.is_empty() && m.iter().all(|(k, v)| is_lang(k) && v.is_string()) {
                    found.push((file, path.to_owned(), m.keys().cloned().collect()));
                    return;
                }
                for (k, v) in m {
                    let text = TEXT_KEYS.contains(&k.as_str());
                    visit(v, &crate::flow::join_key(path, k), text, file, found);
                }
            }
            serde_json::Value::Array(items) => {
                for (i, v) in items.iter().enumerate() {
                    visit(v, &crate::flow::join_index(path, i), in_text, file, found);
                }
            }
            _ => {}
        }
    }
    let mut declared: Vec<String> = Vec::new();
    for (i, f) in files.iter().enumerate() {
        let Ok(doc) = crate::flow::parse_yaml::<serde_json::Value>(
            &f.source.path,
            f.source.text.clone(),
            &[],
        ) else {
            continue;
        };
        if let Some(l) = doc
            .pointer("/settings/default_language")
            .and_then(|l| l.as_str())
        {
            declared.push(l.to_owned());
        }
        visit(&doc, "", false, i, &mut found);
    }
    for (_, _, langs) in &found {
        declared.extend(langs.iter().cloned());
    }
    declared.sort();
    declared.dedup();
    for (file, path, langs) in &found {
        let missing: Vec<&str> = declared
            .iter()
            .filter(|l| !langs.contains(l))
            .map(String::as_str)
            .collect();
        if missing.is_empty() {
            continue;
        }
        let source = &files[*file].source;
        let pos = source.value_pos(path);
        out.0.push(source.diagnostic_at(
            Severity::Error,
            pos,
            path,
            format!("this text has no {} version (the flow speaks {})", missing.join(", "), declared.join(", ")),
            Some("add the missing languages, or the conversation falls back to the default language".into()),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regex_samples_match_and_stay_ascii_where_they_can() {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(1);
        let six = sample(r"^\d{6}$", &mut rng).unwrap();
        assert!(
            six.len() == 6 && six.chars().all(|c| c.is_ascii_digit()),
            "{six}"
        );
        let order = sample("(?i)order", &mut rng).unwrap();
        assert_eq!(order.to_lowercase(), "order");
        let named = sample(r"^#(?P<ticket>\d+)$", &mut rng).unwrap();
        assert!(
            regex::Regex::new(r"^#\d+$").unwrap().is_match(&named),
            "{named}"
        );
        assert!(sample("(unclosed", &mut rng).is_none());
    }
}
