//! YAML conversation tests and their insta snapshots.
//!
//! A test file (`tests/conversations/NAME.yaml`):
//!
//! ```yaml
//! flow: ../../flows/support.yaml     # relative to this file
//! channel: whatsapp                  # optional: whatsapp, instagram, email, livechat
//! language: en                       # optional: the contact's language
//! steps:
//!   - text: hello                    # the customer writes
//!   - button: orders                 # taps a quick reply
//!   - list: track                    # picks a list row
//!   - media: image                   # sends a picture
//!   - event: agent_joined            # or agent_left
//!   - wait: 31m                      # time passes; idle nudges due meanwhile fire
//!   - reload: support_v2.yaml        # the flow is changed and hot-reloaded
//! ```
//!
//! `reload:` swaps in another flow file (relative to the test file) the way
//! `flowbot run` does when the flow changes, so `migrate:` and
//! `settings.restart_message` are tested like everything else. Coverage counts
//! the steps taken in the test's own `flow:` only.
//!
//! Its transcript is compared with `snapshots/NAME.snap` beside it, an insta
//! snapshot file: the same format `cargo insta review` reads. A missing or changed
//! snapshot fails the test and leaves `NAME.snap.new` for review, following
//! insta's `INSTA_UPDATE` (`no`: write nothing, `always`: accept at once; on CI,
//! nothing is written unless asked). The same runner serves `flowbot test` and
//! `cargo test`, so both always agree.

use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{Customer, TestConversation};
use crate::engine::{Bot, Step};
use crate::flow::{CheckKind, Diagnostics, Flow, StateId};
use crate::handler::Registry;
use crate::message::{Channel, Contact, Event, Incoming, MediaKind};

/// A conversation test file.
#[derive(Debug, Deserialize)]
pub struct ConversationFile {
    /// The flow, relative to the test file.
    pub flow: String,
    /// What the test is about.
    pub description: Option<String>,
    /// The channel.
    pub channel: Option<String>,
    /// The contact's language.
    pub language: Option<String>,
    /// The contact.
    pub contact: Option<Contact>,
    /// When the conversation starts (RFC 3339, `2026-12-25T10:00:00Z`;
    /// default 2026-01-01T00:00:00Z): business hours and dates read it.
    pub at: Option<String>,
    /// Variables the conversation starts with (over the flow's `vars:`).
    #[serde(default)]
    pub vars: indexmap::IndexMap<String, serde_json::Value>,
    /// Stand-ins for the flow's actions, by name: `{ set: {..} }`, `{ goto:
    /// state }`, `{ fail: why }`, or a list of them, one per call.
    #[serde(default)]
    pub mocks: indexmap::IndexMap<String, super::MockDoc>,
    /// What the customer does.
    pub steps: Vec<StepDoc>,
}

/// One step: exactly one key.
#[derive(Debug, Default, Deserialize)]
pub struct StepDoc {
    /// Customer text.
    pub text: Option<String>,
    /// A button tap.
    pub button: Option<String>,
    /// A list pick.
    pub list: Option<String>,
    /// Media of a kind.
    pub media: Option<String>,
    /// `agent_joined` / `agent_left`.
    pub event: Option<String>,
    /// Time passing (`31m`); idle nudges due meanwhile fire.
    pub wait: Option<String>,
    /// The business starts the conversation: `{ state, vars, mode }`.
    pub start: Option<crate::message::Start>,
    /// Another version of the flow, relative to the test file, swapped in as a
    /// hot reload would (tests `migrate:` and `restart_message`).
    pub reload: Option<String>,
    /// With `text:`, how the message is classified, whatever it says: an
    /// intent's name, or `{ intent, confidence }` (`intent: ~`: not sure).
    pub classify: Option<ClassifyDoc>,
    /// What must hold after the step (or, alone, at that point).
    pub expect: Option<ExpectDoc>,
}

/// `classify:` of a step.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum ClassifyDoc {
    /// An intent, surely.
    Name(String),
    /// An intent (or none: not sure) and a confidence.
    Full {
        /// The intent; `~`: not sure.
        intent: Option<String>,
        /// How sure (default 1).
        #[serde(default = "one")]
        confidence: f32,
    },
}

fn one() -> f32 {
    1.0
}

/// `expect:` of a step.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectDoc {
    /// The state the conversation is in.
    pub state: Option<String>,
    /// `true`: no conversation is in progress (it ended, or was never started).
    pub ended: Option<bool>,
    /// Variables and their values (`~`: not set).
    #[serde(default)]
    pub vars: indexmap::IndexMap<String, serde_json::Value>,
}

const KEYS: &[&str] = &[
    "flow",
    "description",
    "channel",
    "language",
    "contact",
    "at",
    "steps",
    "text",
    "button",
    "list",
    "media",
    "event",
    "wait",
    "start",
    "state",
    "vars",
    "mode",
    "reload",
    "mocks",
    "set",
    "goto",
    "fail",
    "expect",
    "classify",
    "intent",
    "confidence",
    "ended",
    "first_name",
    "last_name",
    "id",
];

/// How one test ended.
#[derive(Debug)]
pub enum Outcome {
    /// The transcript matches its snapshot.
    Passed,
    /// The snapshot was written (`INSTA_UPDATE=always`).
    Accepted,
    /// No snapshot yet; the new one awaits review (path, if written).
    New(Option<PathBuf>),
    /// The transcript differs from the snapshot.
    Changed {
        /// A unified diff, old to new.
        diff: String,
        /// The pending `.snap.new`, if written.
        pending: Option<PathBuf>,
    },
    /// The test could not run (bad file, flow that does not load).
    Broken(String),
    /// Expectations (`expect:`) did not hold: one line each.
    Failed(Vec<String>),
}

impl Outcome {
    /// Whether the test passed.
    pub fn passed(&self) -> bool {
        matches!(self, Outcome::Passed | Outcome::Accepted)
    }
}

/// One test's result.
#[derive(Debug)]
pub struct CaseReport {
    /// The test file.
    pub file: PathBuf,
    /// How it ended.
    pub outcome: Outcome,
}

/// The results of a directory of tests.
#[derive(Debug, Default)]
pub struct SuiteReport {
    /// Each test, in file order.
    pub cases: Vec<CaseReport>,
    /// For each flow: the parts no test reached.
    pub uncovered: BTreeMap<PathBuf, Vec<String>>,
}

impl SuiteReport {
    /// Whether every test passed.
    pub fn passed(&self) -> bool {
        !self.cases.is_empty() && self.cases.iter().all(|c| c.outcome.passed())
    }

    /// A human summary: one line per test, diffs for failures.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        for c in &self.cases {
            let name = c.file.display();
            let _ = match &c.outcome {
                Outcome::Passed => writeln!(s, "ok      {name}"),
                Outcome::Accepted => writeln!(s, "saved   {name}"),
                Outcome::New(p) => writeln!(s, "NEW     {name}{}", pending_note(p)),
                Outcome::Changed { diff, pending } => {
                    writeln!(s, "CHANGED {name}{}\n{diff}", pending_note(pending))
                }
                Outcome::Broken(e) => writeln!(s, "BROKEN  {name}\n{e}"),
                Outcome::Failed(lines) => {
                    writeln!(s, "FAILED  {name}\n  {}", lines.join("\n  "))
                }
            };
        }
        let failed = self.cases.iter().filter(|c| !c.outcome.passed()).count();
        let _ = write!(s, "{} passed, {failed} failed", self.cases.len() - failed);
        if self.cases.is_empty() {
            s.push_str(" (no conversation tests found)");
        }
        s
    }

    /// The coverage report: what no test exercised.
    pub fn coverage(&self) -> String {
        let mut s = String::new();
        for (flow, items) in &self.uncovered {
            if items.is_empty() {
                let _ = writeln!(s, "{}: every state and rule is exercised", flow.display());
            } else {
                let _ = writeln!(s, "{}: {} not exercised", flow.display(), items.len());
                for i in items {
                    let _ = writeln!(s, "  - {i}");
                }
            }
        }
        s
    }
}

fn pending_note(p: &Option<PathBuf>) -> String {
    match p {
        Some(p) => format!(" (review {} with `cargo insta review`)", p.display()),
        None => " (INSTA_UPDATE=no: nothing written)".into(),
    }
}

/// Whether and how snapshots are written (insta's `INSTA_UPDATE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Update {
    /// Write nothing.
    No,
    /// Write `.snap.new` for review.
    New,
    /// Overwrite `.snap`.
    Always,
}

impl Update {
    /// From `INSTA_UPDATE` and `CI`, as insta decides.
    pub fn from_env() -> Update {
        match std::env::var("INSTA_UPDATE").as_deref() {
            Ok("no") => Update::No,
            Ok("always") | Ok("force") => Update::Always,
            Ok("new") | Ok("unseen") => Update::New,
            _ if std::env::var_os("CI").is_some() => Update::No,
            _ => Update::New,
        }
    }
}

/// The `*.yaml` conversation tests in a directory, sorted.
pub fn test_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    // One test file named on its own.
    if std::fs::metadata(dir)?.is_file() {
        return Ok(vec![dir.to_path_buf()]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    Ok(files)
}

/// Runs one YAML conversation test against its snapshot, blocking (on a
/// runtime of its own): `Err` says what failed. With
/// [`test_files`](crate::conversation_test_files), each file becomes a test
/// of its own in `cargo test` (a `harness = false` test target with
/// [libtest-mimic](https://docs.rs/libtest-mimic), as `flowbot new`
/// writes), runnable by name:
///
/// ```no_run
/// // tests/conversations.rs, with `[[test]] name = "conversations", harness = false`:
/// // its `fn main` is this.
/// let args = libtest_mimic::Arguments::from_args();
/// let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/conversations");
/// let registry = flowbot::Registry::new(); // your bot's handlers
/// let tests = flowbot::conversation_test_files(&dir)
///     .expect("tests/conversations can be read")
///     .into_iter()
///     .map(|file| {
///         let name = file.file_stem().unwrap().to_string_lossy().into_owned();
///         let registry = registry.clone();
///         libtest_mimic::Trial::test(name, move || {
///             flowbot::run_conversation_test(&file, &registry).map_err(Into::into)
///         })
///     })
///     .collect();
/// libtest_mimic::run(&args, tests).exit();
/// ```
pub fn run_one(file: &Path, registry: &Registry) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let report = rt
        .block_on(run_dir(file, registry, Update::from_env()))
        .map_err(|e| format!("{}: {e}", file.display()))?;
    if report.cases.is_empty() {
        return Err(format!("{}: no conversation test", file.display()));
    }
    if report.passed() {
        Ok(())
    } else {
        Err(report.summary())
    }
}

/// Runs every test in `dir` (or the one test file `dir` names) against its
/// snapshot.
pub async fn run_dir(
    dir: &Path,
    registry: &Registry,
    update: Update,
) -> std::io::Result<SuiteReport> {
    let mut report = SuiteReport::default();
    let mut bots: HashMap<PathBuf, Result<Arc<Bot>, String>> = HashMap::new();
    let mut steps: HashMap<PathBuf, BTreeSet<Step>> = HashMap::new();
    for file in test_files(dir)? {
        let outcome = match run_file(&file, registry, &mut bots).await {
            Ok((flow, conv, failed)) => {
                steps
                    .entry(flow)
                    .or_default()
                    .extend(conv.steps().iter().copied());
                if failed.is_empty() {
                    compare(&file, &conv.transcript().to_yaml(), update)
                } else {
                    Outcome::Failed(failed)
                }
            }
            Err(e) => Outcome::Broken(e),
        };
        report.cases.push(CaseReport { file, outcome });
    }
    // Coverage of each flow some test names as its `flow:` (a flow only
    // swapped in by `reload:` is not counted).
    for (path, seen) in steps {
        if let Some(Ok(bot)) = bots.get(&path) {
            let missing = uncovered(bot.flow(), &seen);
            report.uncovered.insert(path, missing);
        }
    }
    Ok(report)
}

/// Runs one test file and returns the flow's path, the finished
/// conversation and the expectations that did not hold.
pub async fn run_file(
    file: &Path,
    registry: &Registry,
    bots: &mut HashMap<PathBuf, Result<Arc<Bot>, String>>,
) -> Result<(PathBuf, TestConversation, Vec<String>), String> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let doc: ConversationFile =
        crate::flow::parse_yaml(file, text, KEYS).map_err(|d: Diagnostics| d.to_string())?;
    let flow_path = clean(&file.parent().unwrap_or(Path::new("")).join(&doc.flow));
    let bot = if doc.vars.is_empty() && doc.mocks.is_empty() {
        load_bot(bots, &flow_path, registry)?
    } else {
        let bot = mocked_bot(file, &flow_path, &doc, registry)?;
        // Coverage reads the flow from here when no test runs it unmocked.
        bots.entry(flow_path.clone())
            .or_insert_with(|| Ok(bot.clone()));
        bot
    };
    let mut conv = TestConversation::new(bot);
    let mut failed = Vec::new();
    if let Some(c) = &doc.channel {
        conv = conv.channel(
            c.parse::<Channel>()
                .map_err(|e| format!("{}: channel: {e}", file.display()))?,
        );
    }
    if let Some(c) = doc.contact.clone() {
        conv = conv.contact(c);
    }
    if let Some(l) = &doc.language {
        conv = conv.language(l.clone());
    }
    if let Some(at) = &doc.at {
        let t = crate::time::parse_time(at).ok_or_else(|| {
            format!(
                "{}: at: `{at}` is not a time like 2026-12-25T10:00:00Z",
                file.display()
            )
        })?;
        conv = conv.at(t);
    }
    // An `expect:` naming a state the flow does not have is the test's
    // error, found before anything runs (after a `reload:`, when it comes).
    let mut flow = conv.bot().flow().clone();
    for (i, s) in doc.steps.iter().enumerate() {
        if s.reload.is_some() {
            break;
        }
        unknown_state(file, i, s, &flow)?;
    }
    for (i, s) in doc.steps.iter().enumerate() {
        let at = || format!("{}: steps[{i}]", file.display());
        if !Arc::ptr_eq(&flow, conv.bot().flow()) {
            flow = conv.bot().flow().clone();
            unknown_state(file, i, s, &flow)?;
        }
        let keys = [
            &s.text, &s.button, &s.list, &s.media, &s.event, &s.wait, &s.reload,
        ]
        .iter()
        .filter(|k| k.is_some())
        .count()
            + usize::from(s.start.is_some());
        if keys > 1 || (keys == 0 && s.expect.is_none()) {
            return Err(format!(
                "{}: a step has exactly one of text, button, list, media, event, wait, start, reload (and may have an expect)",
                at()
            ));
        }
        if let Some(c) = &s.classify {
            if s.text.is_none() {
                return Err(format!("{}: classify: goes with a `text:` step", at()));
            }
            let verdict = match c {
                ClassifyDoc::Name(n) => crate::nlu::Verdict::intent(n.clone(), 1.0),
                ClassifyDoc::Full { intent, confidence } => crate::nlu::Verdict {
                    intent: intent.clone(),
                    confidence: *confidence,
                },
            };
            if !(0.0..=1.0).contains(&verdict.confidence) {
                return Err(format!(
                    "{}: classify: confidence {} is not between 0 and 1",
                    at(),
                    verdict.confidence
                ));
            }
            let names = conv.bot().flow().nlu.as_ref().map(|n| &n.names[..]);
            match (&verdict.intent, names) {
                (_, None) => {
                    return Err(format!(
                        "{}: classify: the flow has no `nlu:` intents",
                        at()
                    ))
                }
                (Some(n), Some(names)) if !names.iter().any(|x| **x == **n) => {
                    let known: Vec<&str> = names.iter().map(|x| &**x).collect();
                    return Err(format!(
                        "{}: classify: `{n}` is not an intent of the flow (it has {})",
                        at(),
                        known.join(", ")
                    ));
                }
                _ => {}
            }
            conv.classify_as(verdict);
        }
        if let Some(t) = &s.text {
            conv.send(t).await;
        } else if let Some(b) = &s.button {
            conv.tap(b).await;
        } else if let Some(l) = &s.list {
            conv.pick(l).await;
        } else if let Some(m) = &s.media {
            let kind =
                MediaKind::parse(m).ok_or_else(|| format!("{}: unknown media kind `{m}`", at()))?;
            conv.message(Customer::Media(kind), Incoming::media(kind, ""))
                .await;
        } else if let Some(e) = &s.event {
            let event = Event::from_word(e).ok_or_else(|| {
                format!(
                    "{}: unknown event `{e}` ({})",
                    at(),
                    Event::WORDS.join(", ")
                )
            })?;
            conv.event(event).await;
        } else if let Some(start) = &s.start {
            conv.start(start.clone()).await;
        } else if let Some(w) = &s.wait {
            let d = humantime::parse_duration(w).map_err(|e| format!("{}: wait: {e}", at()))?;
            conv.wait(d).await;
        } else if let Some(r) = &s.reload {
            let path = clean(&file.parent().unwrap_or(Path::new("")).join(r));
            let bot =
                load_bot(bots, &path, registry).map_err(|e| format!("{}: reload: {e}", at()))?;
            conv.reload(bot, r);
        }
        if let Some(e) = &s.expect {
            failed.extend(
                unmet(&conv, e)
                    .into_iter()
                    .map(|m| format!("steps[{i}]: {m}")),
            );
        }
    }
    Ok((flow_path, conv, failed))
}

/// The bot of a test with `vars:` or `mocks:`: the registry's handlers, the
/// mocks over them, the variables over the flow's.
fn mocked_bot(
    file: &Path,
    flow_path: &Path,
    doc: &ConversationFile,
    registry: &Registry,
) -> Result<Arc<Bot>, String> {
    let mut registry = registry.clone();
    let mut http = crate::fetch::HttpMocks::new();
    for (name, mock) in &doc.mocks {
        match mock {
            super::MockDoc::Action(calls) => {
                registry = registry.action(name.clone(), super::Mock::from_calls(calls.clone()));
            }
            super::MockDoc::Http(answers) => {
                http = http.on(
                    name.clone(),
                    crate::fetch::HttpMock::from_calls(answers.clone()),
                );
            }
        }
    }
    if let Some(rest) = registry.http.take() {
        http = http.otherwise(rest);
    }
    registry = registry.http(http);
    let flow = Flow::load(flow_path, &registry.names()).map_err(|e| e.0.to_string())?;
    let steps: Vec<&str> = flow
        .states
        .iter()
        .filter_map(|s| s.http.as_ref().map(|h| &*h.name))
        .collect();
    for (name, mock) in &doc.mocks {
        let calls = match mock {
            super::MockDoc::Http(_) => {
                if !steps.contains(&name.as_str()) {
                    let hint = crate::flow::did_you_mean(name, steps.iter().copied())
                        .map(|a| format!(" (did you mean `{a}`?)"))
                        .unwrap_or_default();
                    return Err(format!(
                        "{}: mocks.{name}: the flow has no `http:` step named `{name}`{hint}",
                        file.display()
                    ));
                }
                continue;
            }
            super::MockDoc::Action(calls) => calls,
        };
        if !flow.actions.iter().any(|a| &**a == name) {
            let hint = crate::flow::did_you_mean(
                name,
                flow.actions
                    .iter()
                    .map(|a| &**a)
                    .chain(steps.iter().copied()),
            )
            .map(|a| format!(" (did you mean `{a}`?)"))
            .unwrap_or_default();
            return Err(format!(
                "{}: mocks.{name}: the flow calls no action `{name}`{hint}",
                file.display()
            ));
        }
        for target in calls.iter().filter_map(|c| c.goto.as_deref()) {
            if flow.state_id(target).is_none() {
                return Err(format!(
                    "{}: mocks.{name}: goto `{target}`: the flow has no such state",
                    file.display()
                ));
            }
        }
    }
    let bot = Bot::new(flow, registry).map_err(|e| e.to_string())?;
    let vars = doc
        .vars
        .iter()
        .map(|(k, v)| (k, minijinja::Value::from_serialize(v)));
    Ok(Arc::new(bot.with_vars(vars)))
}

/// What of `expect` does not hold now, one sentence each.
/// An error if step `i` expects a state `flow` does not have.
fn unknown_state(
    file: &Path,
    i: usize,
    step: &StepDoc,
    flow: &crate::flow::Flow,
) -> Result<(), String> {
    let Some(want) = step.expect.as_ref().and_then(|e| e.state.as_deref()) else {
        return Ok(());
    };
    if flow.state_id(want).is_some() {
        return Ok(());
    }
    let hint = crate::flow::did_you_mean(want, flow.state_names())
        .map(|s| format!(" (did you mean `{s}`?)"))
        .unwrap_or_default();
    Err(format!(
        "{}: steps[{i}].expect.state: the flow has no state `{want}`{hint}",
        file.display()
    ))
}

fn unmet(conv: &TestConversation, expect: &ExpectDoc) -> Vec<String> {
    let mut out = Vec::new();
    let now = conv.state();
    if let Some(want) = &expect.state {
        match now {
            Some(s) if s == want => {}
            Some(s) => out.push(format!("the state is `{s}`, expected `{want}`")),
            None => out.push(format!(
                "no conversation is in progress, expected the state `{want}`"
            )),
        }
    }
    match (expect.ended, now) {
        (Some(true), Some(s)) => {
            out.push(format!("the conversation is in `{s}`, expected it ended"))
        }
        (Some(false), None) => out.push("no conversation is in progress, expected one".into()),
        _ => {}
    }
    for (name, want) in &expect.vars {
        let got = conv
            .var(name)
            .map(|v| serde_json::to_value(v).unwrap_or_default())
            .unwrap_or(serde_json::Value::Null);
        if &got != want {
            let got = match got {
                serde_json::Value::Null => "not set".to_owned(),
                v => format!("`{v}`"),
            };
            out.push(format!("`{name}` is {got}, expected `{want}`"));
        }
    }
    out
}

/// The bot of a flow file, loaded once per run.
fn load_bot(
    bots: &mut HashMap<PathBuf, Result<Arc<Bot>, String>>,
    path: &Path,
    registry: &Registry,
) -> Result<Arc<Bot>, String> {
    bots.entry(path.to_owned())
        .or_insert_with(|| match Flow::load(path, &registry.names()) {
            Ok(f) => Bot::new(f, registry.clone())
                .map(Arc::new)
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.0.to_string()),
        })
        .clone()
}

/// Removes `.` and `dir/..` from a path without touching the disk, so that a flow
/// reached from several tests is one flow in reports.
fn clean(p: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir
                if matches!(out.components().next_back(), Some(Component::Normal(_))) =>
            {
                out.pop();
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// The snapshot path of a test file: `snapshots/NAME.snap` beside it.
pub fn snapshot_path(file: &Path) -> PathBuf {
    let stem = file
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    file.parent()
        .unwrap_or(Path::new(""))
        .join("snapshots")
        .join(format!("{stem}.snap"))
}

fn compare(file: &Path, new: &str, update: Update) -> Outcome {
    use insta::internals::SnapshotContents;
    use insta::{Snapshot, TextSnapshotKind};
    let path = snapshot_path(file);
    let new_contents =
        insta::internals::TextSnapshotContents::new(new.to_owned(), TextSnapshotKind::File);
    let old = path.exists().then(|| Snapshot::from_file(&path));
    let old_text = match &old {
        Some(Ok(s)) => match s.contents() {
            SnapshotContents::Text(t) => Some(t.clone()),
            SnapshotContents::Binary(_) => None,
        },
        _ => None,
    };
    let pending_path = path.with_extension("snap.new");
    if let Some(old) = &old_text {
        if old.matches_latest(&new_contents) {
            // A review left over from an earlier failure is stale now.
            let _ = std::fs::remove_file(&pending_path);
            return Outcome::Passed;
        }
    }
    // Like insta, name the source relative to where tests run, so snapshots do not
    // depend on the machine.
    let cwd = std::env::current_dir().unwrap_or_default();
    let source = file.strip_prefix(&cwd).unwrap_or(file);
    let serialized = format!(
        "---\nsource: {}\nexpression: transcript\n---\n{}\n",
        source.display(),
        new_contents
    );
    let write = |p: &Path| -> Option<PathBuf> {
        std::fs::create_dir_all(p.parent()?).ok()?;
        std::fs::write(p, &serialized).ok()?;
        Some(p.to_path_buf())
    };
    if update == Update::Always {
        let _ = std::fs::remove_file(&pending_path);
        return match write(&path) {
            Some(_) => Outcome::Accepted,
            None => Outcome::Broken(format!("cannot write {}", path.display())),
        };
    }
    let pending = (update == Update::New)
        .then(|| write(&path.with_extension("snap.new")))
        .flatten();
    match old_text {
        None => Outcome::New(pending),
        Some(old) => {
            let old_s = old.to_string();
            let new_s = new_contents.to_string();
            let diff = similar::TextDiff::from_lines(&old_s, &new_s)
                .unified_diff()
                .context_radius(3)
                .header("snapshot", "transcript")
                .to_string();
            Outcome::Changed { diff, pending }
        }
    }
}

/// What no test reached: states never entered, rules never fired, fallbacks,
/// `ask` outcomes and `next` branches never taken.
pub fn uncovered(flow: &Flow, seen: &BTreeSet<Step>) -> Vec<String> {
    let mut out = Vec::new();
    for (i, r) in flow.intents.iter().enumerate() {
        if !seen.contains(&Step::Intent(i as u32)) {
            out.push(format!("intents[{i}] ({})", r.label));
        }
    }
    for (id, s) in flow.states.iter().enumerate() {
        let id = id as StateId;
        if !seen.contains(&Step::Enter(id)) {
            out.push(format!("state `{}`", s.name));
            continue;
        }
        for (i, r) in s.on.iter().enumerate() {
            if !seen.contains(&Step::Rule(id, i as u32)) {
                out.push(format!("states.{}.on[{i}] ({})", s.name, r.label));
            }
        }
        if s.fallback.is_some() && !seen.contains(&Step::Fallback(id)) {
            out.push(format!("states.{}.fallback", s.name));
        }
        for i in 0..s.branches.len() {
            if !seen.contains(&Step::Branch(id, i as u32)) {
                out.push(format!("states.{}.next[{i}]", s.name));
            }
        }
        for (i, (to, _)) in s.split.iter().enumerate() {
            if !seen.contains(&Step::Split(id, i as u32)) {
                out.push(format!("states.{}.split.{}", s.name, flow.state(*to).name));
            }
        }
        if let Some(a) = &s.ask {
            if !seen.contains(&Step::Valid(id)) {
                out.push(format!("states.{}.ask: a valid answer", s.name));
            }
            // A free-text question with no check can only get valid answers.
            let can_fail = a.check.kind != CheckKind::Text || a.check.regex.is_some();
            if can_fail && !seen.contains(&Step::Invalid(id)) {
                out.push(format!("states.{}.ask: an invalid answer", s.name));
            }
            if a.exhausted.is_some() && !seen.contains(&Step::Exhausted(id)) {
                out.push(format!("states.{}.ask.exhausted", s.name));
            }
        }
    }
    out
}
