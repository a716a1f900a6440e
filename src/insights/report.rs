//! Reports read from the event log: the funnel, outcomes and answers of the
//! runs that started in a period, per flow version.
//!
//! The log is read a page at a time and folded into one small record per
//! run ([`Runs::add`]), so a report holds the runs of its period, never
//! their rows. Every figure is counted over the same cohort (the runs that
//! started in the period), each run with exactly one outcome: no rate is
//! below 0 or above 1, whatever branches, loops or versions the runs took.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use super::{outcome, Kind};
use crate::store::{LogEvent, Rollup, StateStore, StoreError};
use crate::time::Millis;

/// Which runs a report counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// Runs that started at or after this time...
    pub from: Millis,
    /// ... and before this one.
    pub to: Millis,
    /// Only this flow version (as the log writes it, or a prefix of it).
    pub flow_version: Option<String>,
    /// Only this channel.
    pub channel: Option<String>,
    /// Count test traffic too (the simulator, the playground).
    pub include_test: bool,
    /// The time of the report: a run without an outcome, quiet since
    /// `now - quiet`, was abandoned.
    pub now: Millis,
    /// How long a run may be quiet and still be open (the flow's
    /// `session_timeout`; a day without one).
    pub quiet: Millis,
}

impl Query {
    /// The last 7 days up to `now`, every version and channel, no tests.
    pub fn last_week(now: Millis) -> Query {
        Query {
            from: now.saturating_sub(7 * DAY),
            to: now.saturating_add(1),
            flow_version: None,
            channel: None,
            include_test: false,
            now,
            quiet: DAY,
        }
    }

    fn admits(&self, e: &LogEvent) -> bool {
        self.admits_parts(e.test, &e.flow_version, &e.channel)
    }

    fn admits_parts(&self, test: bool, version: &str, channel: &str) -> bool {
        (self.include_test || !test)
            && self
                .flow_version
                .as_deref()
                .is_none_or(|v| version.starts_with(v))
            && self.channel.as_deref().is_none_or(|c| channel == c)
    }
}

const DAY: Millis = 24 * 3600 * 1000;

/// The roll-ups' grain.
pub const HOUR: Millis = 3600 * 1000;

/// One run as the reports need it.
#[derive(Debug, Clone, Default)]
struct Run {
    version: String,
    channel: String,
    test: bool,
    started: bool,
    /// The states it entered, each once, in order.
    reached: Vec<String>,
    /// Where it was last.
    last_state: String,
    last_at: Millis,
    /// Its first outcome, and the state it came in.
    outcome: Option<(String, String)>,
    /// Its answers: the last value of each variable.
    answers: BTreeMap<String, String>,
}

/// What a roll-up counts: hour, version, channel, test, kind, key, value.
type RollupKey = (Millis, String, String, bool, &'static str, String, String);

/// The runs of a period, folded from the log.
#[derive(Debug, Default)]
pub struct Runs {
    query: Option<Query>,
    runs: HashMap<(String, Millis), Run>,
    /// Runs of the period already folded into hourly roll-ups.
    folded: Vec<Rollup>,
}

impl Runs {
    /// No runs yet, for rows of `query`'s period.
    pub fn new(query: &Query) -> Runs {
        Runs {
            query: Some(query.clone()),
            runs: HashMap::new(),
            folded: Vec::new(),
        }
    }

    /// Reads the runs `query` asks for from `store`'s log.
    pub async fn read(store: &dyn StateStore, query: &Query) -> Result<Runs, StoreError> {
        const PAGE: usize = 5_000;
        let mut runs = Runs::new(query);
        for r in store.rollups(query.from, query.to).await? {
            runs.add_rollup(r);
        }
        let mut after = 0;
        loop {
            let page = store.events(query.from, query.to, after, PAGE).await?;
            let Some((last, _)) = page.last() else { break };
            after = *last;
            let n = page.len();
            for (_, e) in page {
                runs.add(e);
            }
            if n < PAGE {
                break;
            }
        }
        Ok(runs)
    }

    /// Folds one row in (rows in the order they were written).
    pub fn add(&mut self, e: LogEvent) {
        if let Some(q) = &self.query {
            if !q.admits(&e) || e.run < q.from || e.run >= q.to {
                return;
            }
        }
        let run = self.runs.entry((e.conversation, e.run)).or_default();
        if run.version.is_empty() {
            run.version = e.flow_version;
            run.channel = e.channel;
        }
        run.test |= e.test;
        run.last_at = run.last_at.max(e.at);
        if !e.state.is_empty() {
            run.last_state.clone_from(&e.state);
        }
        match Kind::parse(&e.kind) {
            Some(Kind::Started) => {
                run.started = true;
                if !e.state.is_empty() && !run.reached.contains(&e.state) {
                    run.reached.push(e.state);
                }
            }
            Some(Kind::Entered) if !run.reached.contains(&e.state) => run.reached.push(e.state),
            Some(Kind::Outcome) if run.outcome.is_none() => run.outcome = Some((e.detail, e.state)),
            Some(Kind::Answered) => {
                if let Some(v) = e.value {
                    run.answers.insert(e.detail, v);
                }
            }
            _ => {}
        }
    }

    /// Folds one roll-up in (if the query admits it).
    pub fn add_rollup(&mut self, r: Rollup) {
        if let Some(q) = &self.query {
            if !q.admits_parts(r.test, &r.flow_version, &r.channel)
                || r.hour < q.from
                || r.hour >= q.to
            {
                return;
            }
        }
        self.folded.push(r);
    }

    /// The runs read, as hourly roll-ups (by the hour each started): what
    /// the sweep keeps of them once their rows go.
    pub fn rollups(&self) -> Vec<Rollup> {
        let mut counts: BTreeMap<RollupKey, u64> = BTreeMap::new();
        for ((_, start), run) in &self.runs {
            if !run.started {
                continue;
            }
            let hour = start - start.rem_euclid(HOUR);
            let mut add = |kind: &'static str, key: &str, value: &str| {
                *counts
                    .entry((
                        hour,
                        run.version.clone(),
                        run.channel.clone(),
                        run.test,
                        kind,
                        key.to_owned(),
                        value.to_owned(),
                    ))
                    .or_default() += 1;
            };
            add("started", "", "");
            for state in &run.reached {
                add("reached", state, "");
            }
            let (name, at) = self.outcome_of(run);
            add("outcome", name, "");
            if name == outcome::ABANDONED {
                add("abandoned", at, "");
            }
            for (var, value) in &run.answers {
                add("answer", var, value);
            }
        }
        counts
            .into_iter()
            .map(
                |((hour, flow_version, channel, test, kind, key, value), count)| Rollup {
                    hour,
                    flow_version,
                    channel,
                    test,
                    kind: kind.to_owned(),
                    key,
                    value,
                    count,
                },
            )
            .collect()
    }

    /// A run's outcome and the state it came in, as of the query's `now`.
    fn outcome_of<'r>(&self, run: &'r Run) -> (&'r str, &'r str) {
        match &run.outcome {
            Some((name, state)) => (name, state),
            None => {
                let abandoned = self
                    .query
                    .as_ref()
                    .is_some_and(|q| q.now.saturating_sub(run.last_at) >= q.quiet);
                let name = match abandoned {
                    true => outcome::ABANDONED,
                    false => outcome::OPEN,
                };
                (name, &run.last_state)
            }
        }
    }

    /// The runs counted: those whose start is in the log (a run begun
    /// before the log was kept is left out rather than half counted).
    fn cohort(&self) -> impl Iterator<Item = &Run> {
        self.runs.values().filter(|r| r.started)
    }

    /// Per flow version and state: the runs that reached it, and those
    /// abandoned there.
    pub fn funnel(&self) -> Vec<FunnelRow> {
        let mut rows: BTreeMap<(String, String), FunnelRow> = BTreeMap::new();
        let mut started: HashMap<&str, u64> = HashMap::new();
        for run in self.cohort() {
            *started.entry(&run.version).or_default() += 1;
            let (name, at) = self.outcome_of(run);
            for state in &run.reached {
                let row = rows
                    .entry((run.version.clone(), state.clone()))
                    .or_insert_with(|| FunnelRow::new(&run.version, state));
                row.reached += 1;
                if name == outcome::ABANDONED && at == state {
                    row.abandoned += 1;
                }
            }
        }
        for r in &self.folded {
            match r.kind.as_str() {
                "started" => *started.entry(&r.flow_version).or_default() += r.count,
                "reached" | "abandoned" => {
                    let row = rows
                        .entry((r.flow_version.clone(), r.key.clone()))
                        .or_insert_with(|| FunnelRow::new(&r.flow_version, &r.key));
                    match r.kind.as_str() {
                        "reached" => row.reached += r.count,
                        _ => row.abandoned += r.count,
                    }
                }
                _ => {}
            }
        }
        let mut rows: Vec<FunnelRow> = rows.into_values().collect();
        for row in &mut rows {
            let of = started.get(row.flow_version.as_str()).copied().unwrap_or(0);
            row.share = ratio(row.reached, of);
            row.drop_off = ratio(row.abandoned, row.reached);
        }
        rows.sort_by(|a, b| {
            (&a.flow_version, std::cmp::Reverse(a.reached), &a.state).cmp(&(
                &b.flow_version,
                std::cmp::Reverse(b.reached),
                &b.state,
            ))
        });
        rows
    }

    /// Per flow version: the runs started, how many ended each way, and
    /// containment (the runs that ended in the bot, resolved or with an
    /// outcome of the flow's own, over started).
    pub fn outcomes(&self) -> Vec<OutcomeRow> {
        let mut rows: BTreeMap<String, OutcomeRow> = BTreeMap::new();
        for run in self.cohort() {
            let row = rows
                .entry(run.version.clone())
                .or_insert_with(|| OutcomeRow::new(&run.version));
            row.started += 1;
            let (name, _) = self.outcome_of(run);
            match name {
                outcome::RESOLVED => row.resolved += 1,
                outcome::HANDED_OFF => row.handed_off += 1,
                outcome::ABANDONED => row.abandoned += 1,
                outcome::FAILED => row.failed += 1,
                outcome::OPEN => row.open += 1,
                other => *row.named.entry(other.to_owned()).or_default() += 1,
            }
        }
        for r in &self.folded {
            let row = || OutcomeRow::new(&r.flow_version);
            match r.kind.as_str() {
                "started" => {
                    rows.entry(r.flow_version.clone())
                        .or_insert_with(row)
                        .started += r.count
                }
                "outcome" => {
                    let row = rows.entry(r.flow_version.clone()).or_insert_with(row);
                    match r.key.as_str() {
                        outcome::RESOLVED => row.resolved += r.count,
                        outcome::HANDED_OFF => row.handed_off += r.count,
                        outcome::ABANDONED => row.abandoned += r.count,
                        outcome::FAILED => row.failed += r.count,
                        outcome::OPEN => row.open += r.count,
                        other => *row.named.entry(other.to_owned()).or_default() += r.count,
                    }
                }
                _ => {}
            }
        }
        let mut rows: Vec<OutcomeRow> = rows.into_values().collect();
        for row in &mut rows {
            let ended_here = row.resolved + row.named.values().sum::<u64>();
            row.containment = ratio(ended_here, row.started);
        }
        rows
    }

    /// Per day (UTC) the runs started, and how each ended: the outcomes
    /// over time, oldest day first.
    pub fn outcomes_by_day(&self) -> Vec<DayRow> {
        let mut days: BTreeMap<Millis, DayRow> = BTreeMap::new();
        for (key, run) in &self.runs {
            if !run.started {
                continue;
            }
            let day = key.1 - key.1.rem_euclid(DAY);
            let row = days.entry(day).or_insert_with(|| DayRow {
                day: crate::time::format(day)[..10].to_owned(),
                ..DayRow::default()
            });
            row.started += 1;
            match self.outcome_of(run).0 {
                outcome::RESOLVED => row.resolved += 1,
                outcome::HANDED_OFF => row.handed_off += 1,
                outcome::ABANDONED => row.abandoned += 1,
                outcome::FAILED => row.failed += 1,
                outcome::OPEN => row.open += 1,
                _ => row.resolved += 1,
            }
        }
        for r in &self.folded {
            let day = r.hour - r.hour.rem_euclid(DAY);
            let row = days.entry(day).or_insert_with(|| DayRow {
                day: crate::time::format(day)[..10].to_owned(),
                ..DayRow::default()
            });
            match (r.kind.as_str(), r.key.as_str()) {
                ("started", _) => row.started += r.count,
                ("outcome", outcome::HANDED_OFF) => row.handed_off += r.count,
                ("outcome", outcome::ABANDONED) => row.abandoned += r.count,
                ("outcome", outcome::FAILED) => row.failed += r.count,
                ("outcome", outcome::OPEN) => row.open += r.count,
                ("outcome", _) => row.resolved += r.count,
                _ => {}
            }
        }
        days.into_values().collect()
    }

    /// Per flow version and variable: each value it took at the end of a
    /// run, with how many runs.
    pub fn answers(&self) -> Vec<AnswerRow> {
        let mut counts: BTreeMap<(String, String, String), u64> = BTreeMap::new();
        for run in self.cohort() {
            for (var, value) in &run.answers {
                *counts
                    .entry((run.version.clone(), var.clone(), value.clone()))
                    .or_default() += 1;
            }
        }
        for r in self.folded.iter().filter(|r| r.kind == "answer") {
            *counts
                .entry((r.flow_version.clone(), r.key.clone(), r.value.clone()))
                .or_default() += r.count;
        }
        let mut rows: Vec<AnswerRow> = counts
            .into_iter()
            .map(|((flow_version, variable, value), runs)| AnswerRow {
                flow_version,
                variable,
                value,
                runs,
            })
            .collect();
        rows.sort_by(|a, b| {
            (
                &a.flow_version,
                &a.variable,
                std::cmp::Reverse(a.runs),
                &a.value,
            )
                .cmp(&(
                    &b.flow_version,
                    &b.variable,
                    std::cmp::Reverse(b.runs),
                    &b.value,
                ))
        });
        rows
    }
}

/// `part / whole`, 0 for an empty whole, to four decimals.
fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        return 0.0;
    }
    ((part as f64 / whole as f64) * 10_000.0).round() / 10_000.0
}

/// One state of the funnel.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FunnelRow {
    /// The flow version.
    pub flow_version: String,
    /// The state.
    pub state: String,
    /// Runs that reached it.
    pub reached: u64,
    /// `reached` over the version's runs.
    pub share: f64,
    /// Runs abandoned in it.
    pub abandoned: u64,
    /// `abandoned` over `reached`.
    pub drop_off: f64,
}

impl FunnelRow {
    fn new(version: &str, state: &str) -> FunnelRow {
        FunnelRow {
            flow_version: version.to_owned(),
            state: state.to_owned(),
            reached: 0,
            share: 0.0,
            abandoned: 0,
            drop_off: 0.0,
        }
    }
}

/// The outcomes of one flow version's runs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OutcomeRow {
    /// The flow version.
    pub flow_version: String,
    /// Runs started.
    pub started: u64,
    /// Ended.
    pub resolved: u64,
    /// Taken by a person.
    pub handed_off: u64,
    /// The customer went quiet.
    pub abandoned: u64,
    /// Ended on an error.
    pub failed: u64,
    /// Still going.
    pub open: u64,
    /// Outcomes the flow names (`outcome:` on a state that ends).
    pub named: BTreeMap<String, u64>,
    /// The runs the bot saw through (`resolved` and the flow's own
    /// outcomes) over `started`.
    pub containment: f64,
}

impl OutcomeRow {
    fn new(version: &str) -> OutcomeRow {
        OutcomeRow {
            flow_version: version.to_owned(),
            started: 0,
            resolved: 0,
            handed_off: 0,
            abandoned: 0,
            failed: 0,
            open: 0,
            named: BTreeMap::new(),
            containment: 0.0,
        }
    }
}

/// The runs that started on one day, by outcome (a flow's own outcomes
/// counted as resolved).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DayRow {
    /// The day, `YYYY-MM-DD` (UTC).
    pub day: String,
    /// Runs started.
    pub started: u64,
    /// Ended in the bot.
    pub resolved: u64,
    /// Taken by a person.
    pub handed_off: u64,
    /// The customer went quiet.
    pub abandoned: u64,
    /// Ended on an error.
    pub failed: u64,
    /// Still going.
    pub open: u64,
}

/// A value a variable took, and in how many runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AnswerRow {
    /// The flow version.
    pub flow_version: String,
    /// The variable.
    pub variable: String,
    /// Its value.
    pub value: String,
    /// Runs that ended with it.
    pub runs: u64,
}

/// How a report is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Format {
    /// Columns for a terminal.
    #[default]
    Table,
    /// Comma-separated values with a header line.
    Csv,
    /// A JSON array of objects.
    Json,
}

/// A report's columns, in the order they are printed (a flow's own
/// outcomes follow, by name).
pub fn columns(kind: &str) -> &'static [&'static str] {
    match kind {
        "funnel" => &[
            "flow_version",
            "state",
            "reached",
            "share",
            "abandoned",
            "drop_off",
        ],
        "outcomes" => &[
            "flow_version",
            "started",
            "resolved",
            "handed_off",
            "abandoned",
            "failed",
            "open",
            "containment",
        ],
        "answers" => &["flow_version", "variable", "value", "runs"],
        _ => &[],
    }
}

/// Rows as `format`: each row a JSON object, its keys the columns, `first`
/// first.
pub fn render<T: Serialize>(rows: &[T], first: &[&str], format: Format) -> String {
    let values: Vec<serde_json::Map<String, serde_json::Value>> = rows
        .iter()
        .filter_map(|r| match serde_json::to_value(r) {
            Ok(serde_json::Value::Object(m)) => Some(flatten(m)),
            _ => None,
        })
        .collect();
    match format {
        Format::Json => serde_json::to_string_pretty(&values).unwrap_or_default() + "\n",
        Format::Csv | Format::Table => {
            let mut columns: Vec<String> = first.iter().map(|c| c.to_string()).collect();
            let mut more: Vec<String> = Vec::new();
            for m in &values {
                for k in m.keys() {
                    if !columns.contains(k) && !more.contains(k) {
                        more.push(k.clone());
                    }
                }
            }
            more.sort();
            // The containment rate last, after a flow's own outcomes.
            let rate = columns.iter().position(|c| c == "containment");
            let rate = rate.map(|i| columns.remove(i));
            columns.extend(more);
            columns.extend(rate);
            let cells: Vec<Vec<String>> = values
                .iter()
                .map(|m| {
                    columns
                        .iter()
                        .map(|c| match m.get(c) {
                            Some(serde_json::Value::String(s)) => s.clone(),
                            Some(serde_json::Value::Null) | None => String::new(),
                            Some(v) => v.to_string(),
                        })
                        .collect()
                })
                .collect();
            match format {
                Format::Csv => csv(&columns, &cells),
                _ => table(&columns, &cells),
            }
        }
    }
}

/// Nested maps (an outcome row's `named`) as columns of their own.
fn flatten(
    m: serde_json::Map<String, serde_json::Value>,
) -> serde_json::Map<String, serde_json::Value> {
    let mut out = serde_json::Map::new();
    for (k, v) in m {
        match v {
            serde_json::Value::Object(inner) => {
                for (ik, iv) in inner {
                    out.insert(ik, iv);
                }
            }
            v => {
                out.insert(k, v);
            }
        }
    }
    out
}

fn csv(columns: &[String], rows: &[Vec<String>]) -> String {
    let field = |s: &str| {
        if s.contains([',', '"', '\n', '\r']) {
            format!("\"{}\"", s.replace('"', "\"\""))
        } else {
            s.to_owned()
        }
    };
    let mut out = String::new();
    let line = |cells: &mut dyn Iterator<Item = &str>, out: &mut String| {
        let l: Vec<String> = cells.map(field).collect();
        out.push_str(&l.join(","));
        out.push('\n');
    };
    line(&mut columns.iter().map(String::as_str), &mut out);
    for r in rows {
        line(&mut r.iter().map(String::as_str), &mut out);
    }
    out
}

fn table(columns: &[String], rows: &[Vec<String>]) -> String {
    if rows.is_empty() {
        return "(no runs in this period)\n".into();
    }
    let mut widths: Vec<usize> = columns.iter().map(|c| c.chars().count()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[String]| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(padded.join("  ").trim_end());
        out.push('\n');
    };
    line(columns);
    for r in rows {
        line(r);
    }
    out
}
