//! The conversation event log and its reports, end to end: `flowbot run`
//! writes each turn's events with its commit; `/admin/reports/...` and
//! `flowbot report` count the runs of a period.

use std::time::Duration;

use flowbot::internals::insights::report::{self, Format, Query, Runs};
use flowbot::internals::insights::{Before, Recorder};
use flowbot::internals::qpien::Secret;
use flowbot::internals::store::LogEvent;
use flowbot::{ManualClock, Millis, Registry};
use serde_json::Value;

use crate::runtime::{message, wait_until, Harness};

pub(crate) const FLOW: &str = r#"
version: 1
settings:
  session_timeout: 30m
intents:
  - { text: agent, goto: person }
states:
  start:
    say: "Hi! Write order, or agent."
    on:
      - { text: order, goto: ask_number }
  ask_number:
    ask: { text: "Your order number?", save: number, validate: { regex: "^[0-9]{5}$" } }
    next: thanks
  thanks:
    say: "Thanks, {{ number }} is on its way."
    end: true
  person:
    say: "A person will answer."
    handoff: true
"#;

const ADMIN: &str = "reports-admin-token";

/// 2026-12-01 10:00 UTC.
const T0: Millis = 1_796_119_200_000;

async fn report(h: &Harness, kind: &str, query: &str) -> (u16, Value) {
    let r = h
        .http
        .get(h.url(&format!("/admin/reports/{kind}?{query}")))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let body = serde_json::from_str(&r.text().await.unwrap()).unwrap_or_default();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_are_counted_by_outcome_state_and_answer() {
    let clock = ManualClock::new(T0);
    let h = Harness::start("insights", FLOW, |c| {
        c.server.admin_token = Secret::new(ADMIN);
        c.clock = flowbot::internals::time::ClockHandle::new(clock.clone());
    })
    .await;
    let mut n = 0;
    let mut say = async |conv: &str, text: &str| {
        n += 1;
        assert_eq!(h.post(&message(&format!("m{n}"), conv, text)).await, 200);
    };
    // Resolved: an order number given, the end.
    say("c1", "hi").await;
    say("c1", "order").await;
    say("c1", "12345").await;
    // Handed off.
    say("c2", "hello").await;
    say("c2", "agent").await;
    // Quiet at the question: abandoned once the session times out.
    say("c3", "hi").await;
    say("c3", "order").await;
    say("c3", "not a number").await;
    wait_until("every reply", Duration::from_secs(10), || {
        h.replies("c1").len() == 3 && h.replies("c2").len() == 2 && h.replies("c3").len() == 3
    })
    .await;
    clock.advance(Duration::from_secs(31 * 60));
    // Still going: it started after the clock moved.
    say("c4", "hi").await;
    wait_until("c4's greeting", Duration::from_secs(10), || {
        h.replies("c4").len() == 1
    })
    .await;

    let (status, outcomes) = report(&h, "outcomes", "from=2026-12-01&to=2026-12-01").await;
    assert_eq!(status, 200, "{outcomes}");
    let rows = outcomes.as_array().unwrap();
    assert_eq!(rows.len(), 1, "one flow version: {outcomes}");
    let o = &rows[0];
    assert_eq!(
        [
            &o["started"],
            &o["resolved"],
            &o["handed_off"],
            &o["abandoned"],
            &o["open"],
            &o["failed"]
        ],
        [4, 1, 1, 1, 1, 0].map(Value::from).each_ref(),
        "{o}"
    );
    assert_eq!(o["containment"], 0.25);

    let (_, funnel) = report(&h, "funnel", "from=2026-12-01&to=2026-12-01").await;
    let row = |state: &str| {
        funnel
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["state"] == state)
            .cloned()
            .unwrap_or_else(|| panic!("no {state} in {funnel}"))
    };
    assert_eq!(row("start")["reached"], 4);
    assert_eq!(row("ask_number")["reached"], 2);
    assert_eq!(row("ask_number")["abandoned"], 1);
    assert_eq!(row("ask_number")["drop_off"], 0.5);
    assert_eq!(row("thanks")["reached"], 1);
    assert_eq!(row("person")["reached"], 1);

    let (_, answers) = report(&h, "answers", "from=2026-12-01&to=2026-12-01").await;
    let answers = answers.as_array().unwrap();
    assert_eq!(answers.len(), 1, "{answers:?}");
    assert_eq!(answers[0]["variable"], "number");
    assert_eq!(answers[0]["value"], "12345");
    assert_eq!(answers[0]["runs"], 1);

    // Another day, another channel: nothing.
    let (_, none) = report(&h, "outcomes", "from=2026-12-02&to=2026-12-03").await;
    assert_eq!(none, Value::Array(vec![]));
    let (_, none) = report(&h, "outcomes", "from=2026-12-01&channel=whatsapp").await;
    assert_eq!(none, Value::Array(vec![]));

    // Bad queries say what is wrong; no token, no report.
    let (status, body) = report(&h, "outcomes", "from=yesterday").await;
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("`from`"), "{body}");
    let (status, body) = report(&h, "outcomes", "color=red").await;
    assert_eq!(status, 400);
    assert!(
        body["error"].as_str().unwrap().contains("`color`"),
        "{body}"
    );
    let (status, _) = report(&h, "dropouts", "").await;
    assert_eq!(status, 404);
    let anonymous = h
        .http
        .get(h.url("/admin/reports/outcomes"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status().as_u16(), 401);

    // The log holds no message text and no conversation id.
    let conn = rusqlite::Connection::open(h.dir.join("flowbot.db")).unwrap();
    let mut stmt = conn
        .prepare(
            "SELECT e.conversation, j.value ->> 0, j.value ->> 2, coalesce(j.value ->> 3, '')
             FROM events e, json_each(e.rows) j",
        )
        .unwrap();
    let rows: Vec<String> = stmt
        .query_map([], |r| {
            Ok(format!(
                "{} {} {} {}",
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?
            ))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert!(rows.len() > 10, "{rows:?}");
    for row in &rows {
        for secret in ["c1", "c2", "c3", "c4", "not a number", "hello"] {
            assert!(!row.split(' ').any(|w| w == secret), "{secret} in {row}");
        }
    }

    // The console shows the same numbers; without the token, 401 and a form.
    let page = |auth: bool| {
        let mut req = h.http.get(h.url("/console?from=2026-12-01&to=2026-12-01"));
        if auth {
            req = req.bearer_auth(ADMIN);
        }
        async move {
            let r = req.send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let (status, form) = page(false).await;
    assert_eq!(status, 401);
    assert!(form.contains(r#"name="token""#), "{form}");
    let (status, html) = page(true).await;
    assert_eq!(status, 200, "{html}");
    let version = o["flow_version"].as_str().unwrap();
    let row = html
        .split(&format!(r#"data-testid="outcome-{version}""#))
        .nth(1)
        .and_then(|r| r.split("</tr>").next())
        .unwrap_or_else(|| panic!("no outcome row in {html}"));
    for (id, n) in [
        ("started", 4),
        ("resolved", 1),
        ("handed_off", 1),
        ("abandoned", 1),
        ("open", 1),
    ] {
        assert!(
            row.contains(&format!(r#"data-testid="{id}">{n}<"#)),
            "{id} {n} in {row}"
        );
    }
    assert!(row.contains(">25.0%<"), "{row}");
    assert!(html.contains(r#"data-testid="funnel-ask_number""#));
    let node = html
        .split(r#"data-testid="node-ask_number""#)
        .nth(1)
        .and_then(|n| n.split("</g>").next())
        .unwrap_or_else(|| panic!("no ask_number on the diagram: {html}"));
    assert!(node.contains("2 reached · 50% stopped"), "{node}");
    assert!(html.contains("<svg"), "charts drawn on the server");
    assert!(!html.contains("<script"), "no JavaScript");

    // `flowbot report`, through the running bot, as CSV.
    let ran = admin_cli(
        &h,
        &[
            "report",
            "outcomes",
            "--from",
            "2026-12-01",
            "--format",
            "csv",
        ],
    )
    .await;
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    let mut lines = ran.stdout.lines();
    let header = lines.next().unwrap();
    assert!(
        header.starts_with("flow_version,started,resolved,handed_off,abandoned,failed,open"),
        "{header}"
    );
    let line = lines.next().unwrap();
    assert!(line.contains(",4,1,1,1,0,1,"), "{line}");
    assert!(line.ends_with(",0.25"), "{line}");
}

/// `flowbot ARGS` asking the running bot `h` with the admin token, as an
/// operator would.
async fn admin_cli(h: &Harness, args: &[&str]) -> crate::replay::Ran {
    let url = h.url("");
    let mut all = args.to_vec();
    all.extend(["--url", url.as_str()]);
    crate::replay::run_flowbot(&h.dir, &all, &[("FLOWBOT_SERVER__ADMIN_TOKEN", ADMIN)], b"").await
}

fn event(conv: &str, run: Millis, at: Millis, kind: &str, state: &str, detail: &str) -> LogEvent {
    LogEvent {
        at,
        conversation: conv.into(),
        run,
        flow_version: "v1".into(),
        state: state.into(),
        channel: "whatsapp".into(),
        kind: kind.into(),
        detail: detail.into(),
        value: None,
        test: false,
    }
}

/// What a period's runs fold into (hourly roll-ups) reports the same as the
/// runs themselves, and adds up with runs still in the log.
#[test]
fn rollups_report_what_the_runs_did() {
    let query = Query {
        from: 0,
        to: 100 * 3_600_000,
        ..Query::last_week(200 * 3_600_000)
    };
    let events = [
        event("a", 1_000, 1_000, "started", "start", ""),
        event("a", 1_000, 1_001, "entered", "menu", ""),
        LogEvent {
            value: Some("large".into()),
            ..event("a", 1_000, 1_002, "answered", "menu", "size")
        },
        event("a", 1_000, 1_003, "outcome", "menu", "order_placed"),
        event("b", 7_200_000, 7_200_000, "started", "start", ""),
        event("b", 7_200_000, 7_200_001, "entered", "menu", ""),
        event("c", 7_300_000, 7_300_000, "started", "start", ""),
        event("c", 7_300_000, 7_300_009, "outcome", "start", "handed_off"),
    ];
    let mut runs = Runs::new(&query);
    for e in events.clone() {
        runs.add(e);
    }
    let mut folded = Runs::new(&query);
    for r in runs.rollups() {
        folded.add_rollup(r);
    }
    assert_eq!(folded.outcomes(), runs.outcomes());
    assert_eq!(folded.funnel(), runs.funnel());
    assert_eq!(folded.answers(), runs.answers());
    assert_eq!(folded.outcomes_by_day(), runs.outcomes_by_day());
    // Half folded, half still rows: the same again.
    let mut first = Runs::new(&query);
    for e in events.iter().filter(|e| e.conversation == "a").cloned() {
        first.add(e);
    }
    let mut mixed = Runs::new(&query);
    for r in first.rollups() {
        mixed.add_rollup(r);
    }
    for e in events.iter().filter(|e| e.conversation != "a").cloned() {
        mixed.add(e);
    }
    assert_eq!(mixed.outcomes(), runs.outcomes());
    assert_eq!(mixed.funnel(), runs.funnel());
    assert_eq!(mixed.answers(), runs.answers());
    let o = &runs.outcomes()[0];
    assert_eq!((o.started, o.handed_off, o.abandoned), (3, 1, 1), "{o:?}");
}

/// Loops, revisits, a second outcome after a release, a run begun before
/// the period: every rate of a cohort stays within 0 and 1.
#[test]
fn no_rate_is_below_zero_or_above_one() {
    let query = Query {
        from: 1_000,
        to: 100_000,
        ..Query::last_week(200_000)
    };
    let mut runs = Runs::new(&query);
    for e in [
        // Goes round a loop three times, then is handed off, released and
        // ends: one run, reached each state once, handed off.
        event("a", 1_000, 1_000, "started", "start", ""),
        event("a", 1_000, 1_001, "entered", "menu", ""),
        event("a", 1_000, 1_002, "entered", "start", ""),
        event("a", 1_000, 1_003, "entered", "menu", ""),
        event("a", 1_000, 1_004, "entered", "start", ""),
        event("a", 1_000, 1_005, "outcome", "start", "handed_off"),
        event("a", 1_000, 1_006, "released", "start", ""),
        event("a", 1_000, 1_007, "outcome", "start", "resolved"),
        // Two runs of one conversation: abandoned, then resolved.
        event("b", 2_000, 2_000, "started", "start", ""),
        event("b", 2_000, 9_000, "outcome", "start", "abandoned"),
        event("b", 9_000, 9_000, "started", "start", ""),
        event("b", 9_000, 9_001, "entered", "menu", ""),
        event("b", 9_000, 9_002, "outcome", "menu", "resolved"),
        // Its start is before the period: not counted.
        event("c", 500, 3_000, "entered", "menu", ""),
        // A test: not counted unless asked for.
        LogEvent {
            test: true,
            ..event("d", 4_000, 4_000, "started", "start", "")
        },
    ] {
        runs.add(e);
    }
    let o = &runs.outcomes()[0];
    assert_eq!(
        (o.started, o.resolved, o.handed_off, o.abandoned, o.open),
        (3, 1, 1, 1, 0)
    );
    assert!((0.0..=1.0).contains(&o.containment));
    for f in runs.funnel() {
        assert!(f.reached <= o.started, "{f:?}");
        assert!((0.0..=1.0).contains(&f.share), "{f:?}");
        assert!((0.0..=1.0).contains(&f.drop_off), "{f:?}");
    }
    let start = runs
        .funnel()
        .into_iter()
        .find(|f| f.state == "start")
        .unwrap();
    assert_eq!((start.reached, start.abandoned), (3, 1));

    let with_tests = Query {
        include_test: true,
        ..query
    };
    let mut runs = Runs::new(&with_tests);
    runs.add(LogEvent {
        test: true,
        ..event("d", 4_000, 4_000, "started", "start", "")
    });
    assert_eq!(runs.outcomes()[0].started, 1);
}

/// What one conversation's turns write, from the engine's own steps.
#[tokio::test]
async fn a_turn_writes_what_it_did_and_nothing_anyone_wrote() {
    let bot = flowbot::Bot::from_yaml("flow.yaml", FLOW, Registry::new()).unwrap();
    let recorder = Recorder::with_key([7; 32], false);
    let mut log: Vec<LogEvent> = Vec::new();
    let mut stored = None;
    for text in ["hi", "order", "nope", "54321"] {
        let before = stored.as_ref().map(Before::of);
        let event = flowbot::Event::Message(flowbot::Incoming::text(text));
        let turn = bot.step("conv-1", stored.take(), &event, 5).await;
        log.extend(recorder.events(bot.flow(), "conv-1", before.as_ref(), &turn, 5));
        stored = turn.stored;
    }
    let kinds: Vec<String> = log
        .iter()
        .map(|e| format!("{} {} {}", e.kind, e.state, e.detail))
        .collect();
    assert_eq!(
        kinds,
        [
            "started start ",
            "entered start ",
            "matched start text: order",
            "entered ask_number ",
            "invalid ask_number ",
            "entered thanks ",
            "answered thanks number",
            "outcome thanks resolved",
        ],
        "{kinds:#?}"
    );
    let hash = recorder.conversation("conv-1");
    assert!(log
        .iter()
        .all(|e| e.conversation == hash && hash.len() == 32));
    assert_ne!(
        hash,
        Recorder::with_key([8; 32], false).conversation("conv-1")
    );
    assert_eq!(
        report::render::<Value>(&[], report::columns("funnel"), Format::Table),
        "(no runs in this period)\n"
    );
}

/// A run that ends in a state with `outcome:` has that outcome, counted as
/// contained; a `pii` answer never enters the log.
#[tokio::test]
async fn named_outcomes_count_and_personal_answers_stay_out() {
    let flow = r#"
pii: [note]
states:
  start:
    ask: { text: "Your phone?", save: phone, validate: phone, pii: true }
    next: pick
  pick:
    say: "Size?"
    on:
      - { text: large, set: { size: large, note: "{{ phone }}" }, goto: placed }
  placed:
    say: "Placed."
    end: true
    outcome: order_placed
"#;
    let bot = flowbot::Bot::from_yaml("flow.yaml", flow, Registry::new()).unwrap();
    let recorder = Recorder::with_key([1; 32], false);
    let mut runs = Runs::new(&Query::last_week(10));
    let mut stored = None;
    let mut log = Vec::new();
    for text in ["hi", "+90 555 111 22 33", "large"] {
        let before = stored.as_ref().map(Before::of);
        let event = flowbot::Event::Message(flowbot::Incoming::text(text));
        let turn = bot.step("c", stored.take(), &event, 5).await;
        log.extend(recorder.events(bot.flow(), "c", before.as_ref(), &turn, 5));
        stored = turn.stored;
    }
    let answered: Vec<&str> = log
        .iter()
        .filter(|e| e.kind == "answered")
        .map(|e| e.detail.as_str())
        .collect();
    assert_eq!(answered, ["size"], "{log:#?}");
    assert!(log
        .iter()
        .all(|e| e.value.as_deref() != Some("+905551112233")));
    for e in log {
        runs.add(e);
    }
    let o = &runs.outcomes()[0];
    assert_eq!(o.named.get("order_placed"), Some(&1), "{o:?}");
    assert_eq!((o.started, o.resolved, o.containment), (1, 0, 1.0));
}

/// `[retention]` in a running bot: what is older than its limit goes (a dry
/// run first says how much), counted in the metrics; a second sweep finds
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_data_goes_when_its_time_is_up() {
    let clock = ManualClock::new(T0);
    let capture = crate::runtime::temp_dir("retention-capture");
    let h = Harness::start("retention", FLOW, |c| {
        c.server.admin_token = Secret::new(ADMIN);
        c.server.capture_dir = Some(capture.clone());
        c.clock = flowbot::internals::time::ClockHandle::new(clock.clone());
        c.retention.events = Duration::from_secs(10 * 86_400);
    })
    .await;
    assert_eq!(h.post(&message("m1", "c1", "hi")).await, 200);
    assert_eq!(h.post(&message("m2", "c1", "order")).await, 200);
    // A delivery flowbot cannot use: a dead letter.
    let odd = serde_json::json!({"event": "SOMETHING_ELSE", "data": {}});
    assert_eq!(h.post(&odd).await, 200);
    wait_until("the replies", Duration::from_secs(10), || {
        h.replies("c1").len() == 2
    })
    .await;
    let sweep = |post: bool, query: &'static str| {
        let req = match post {
            true => h.http.post(h.url(&format!("/admin/retention{query}"))),
            false => h.http.get(h.url(&format!("/admin/retention{query}"))),
        };
        async move {
            let r = req.bearer_auth(ADMIN).send().await.unwrap();
            assert_eq!(r.status().as_u16(), 200);
            serde_json::from_str::<Value>(&r.text().await.unwrap()).unwrap()
        }
    };
    // Nothing is old yet.
    let now = sweep(false, "").await;
    assert_eq!(now["removed"]["sessions"], 0, "{now}");
    assert_eq!(now["removed"]["dead_letters"], 0, "{now}");

    clock.advance(Duration::from_secs(31 * 86_400));
    let dry = sweep(true, "?dry_run=true").await;
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["removed"]["sessions"], 1, "{dry}");
    assert_eq!(dry["removed"]["dead_letters"], 1, "{dry}");
    assert!(dry["removed"]["events"].as_u64().unwrap() >= 4, "{dry}");
    assert!(dry["removed"]["captures"].as_u64().unwrap() >= 3, "{dry}");
    // The dry run removed nothing: the CLI counts the same.
    let ran = admin_cli(&h, &["retention", "--dry-run"]).await;
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    assert!(
        ran.stdout.contains("sessions      would remove 1"),
        "{}",
        ran.stdout
    );
    assert!(
        ran.stdout.contains("dead_letters  would remove 1"),
        "{}",
        ran.stdout
    );

    let reports = async || {
        let mut all = Vec::new();
        for kind in ["outcomes", "funnel", "answers"] {
            all.push(report(&h, kind, "from=2026-12-01&to=2026-12-02").await.1);
        }
        all
    };
    let before = reports().await;
    assert_eq!(before[0][0]["abandoned"], 1, "{:?}", before[0]);
    let done = sweep(true, "").await;
    assert_eq!(done["dry_run"], false);
    // The rows are gone, folded into hourly roll-ups: the reports are the same.
    assert_eq!(reports().await, before);
    assert_eq!(done["removed"], dry["removed"], "{done}");
    let conn = rusqlite::Connection::open(h.dir.join("flowbot.db")).unwrap();
    for table in ["sessions", "dead_letters", "events"] {
        let n: i64 = conn
            .query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 0, "{table}");
    }
    let files = std::fs::read_dir(&capture).unwrap().count();
    assert_eq!(files, 0, "the captures are gone too");
    let metrics = h.metrics().await;
    assert!(
        metrics.contains("flowbot_retention_deleted_total{kind=\"sessions\"} 1"),
        "{metrics}"
    );
    let again = sweep(true, "").await;
    assert!(
        ["sessions", "dead_letters", "events", "captures"]
            .iter()
            .all(|k| again["removed"][k] == 0),
        "{again}"
    );
}

/// The sweep runs on its own every `retention.every`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweep_runs_on_its_own() {
    let clock = ManualClock::new(T0);
    let h = Harness::start("retention-every", FLOW, |c| {
        c.clock = flowbot::internals::time::ClockHandle::new(clock.clone());
        c.retention.every = Duration::from_millis(100);
    })
    .await;
    assert_eq!(h.post(&message("m1", "c1", "hi")).await, 200);
    wait_until("the greeting", Duration::from_secs(10), || {
        h.replies("c1").len() == 1
    })
    .await;
    let sessions = || {
        rusqlite::Connection::open(h.dir.join("flowbot.db"))
            .unwrap()
            .query_row("SELECT count(*) FROM sessions", [], |r| r.get::<_, i64>(0))
            .unwrap()
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sessions(), 1, "not old yet");
    clock.advance(Duration::from_secs(31 * 86_400));
    wait_until("the sweep", Duration::from_secs(10), || sessions() == 0).await;
}

const CONTACT_FLOW: &str = r#"
version: 1
states:
  start:
    say: "Hi! Your phone?"
    next: ask_phone
  ask_phone:
    ask: { text: "Your phone, please.", save: phone, validate: phone, pii: true }
    next: ask_note
  ask_note:
    ask: { text: "Anything else?", save: note }
    next: thanks
  thanks:
    say: "Thanks, we will call {{ phone }}."
"#;

/// An erasure removes every trace of a contact from the store and the
/// capture folder (an export first shows them), leaves other conversations
/// alone, and a late redelivery of its message does nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_contact_is_erased_everywhere() {
    let capture = crate::runtime::temp_dir("erase-capture");
    let h = Harness::start("erase", CONTACT_FLOW, |c| {
        c.server.admin_token = Secret::new(ADMIN);
        c.server.capture_dir = Some(capture.clone());
    })
    .await;
    let conv = "conv-of-ada-4711";
    for (id, text) in [
        ("m1", "hello"),
        ("m2", "+90 555 111 22 33"),
        ("m3", "my secret words"),
    ] {
        assert_eq!(h.post(&message(id, conv, text)).await, 200);
    }
    assert_eq!(h.post(&message("o1", "someone-else", "hello")).await, 200);
    // A delivery naming the conversation that flowbot cannot use.
    let odd = serde_json::json!({"event": "NEW_INCOMING_MESSAGE",
        "data": {"conversation": conv, "senderType": "user", "content": "my secret words", "_id": ""}});
    assert_eq!(h.post(&odd).await, 200);
    wait_until("the replies", Duration::from_secs(10), || {
        h.replies(conv).len() == 4 && h.replies("someone-else").len() == 2
    })
    .await;
    let admin = |method: reqwest::Method, path: String| {
        let req = h.http.request(method, h.url(&path)).bearer_auth(ADMIN);
        async move {
            let r = req.send().await.unwrap();
            assert_eq!(r.status().as_u16(), 200, "{path}");
            serde_json::from_str::<Value>(&r.text().await.unwrap()).unwrap()
        }
    };
    let who = "%2B90%20555%20111%2022%2033";

    // The access request: everything held, by the phone number.
    let held = admin(
        reqwest::Method::GET,
        format!("/admin/contacts/{who}/export"),
    )
    .await;
    let text = held.to_string();
    assert_eq!(
        held["conversations"].as_array().unwrap().len(),
        1,
        "{held:#}"
    );
    assert_eq!(held["conversations"][0]["conversation"], conv);
    assert_eq!(
        held["conversations"][0]["session"]["vars"]["phone"],
        "+905551112233"
    );
    assert!(
        text.contains("my secret words"),
        "the dead letter: {held:#}"
    );
    assert!(!held["conversations"][0]["events"]
        .as_array()
        .unwrap()
        .is_empty());
    assert!(held["captures"].as_array().unwrap().len() >= 3, "{held:#}");
    assert!(!text.contains("someone-else"));

    let dry = admin(
        reqwest::Method::DELETE,
        format!("/admin/contacts/{who}?dry_run=true"),
    )
    .await;
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["conversations"], 1, "{dry}");
    assert_eq!(dry["removed"]["sessions"], 1, "{dry}");
    assert_eq!(dry["removed"]["dead_letters"], 1, "{dry}");
    let done = admin(reqwest::Method::DELETE, format!("/admin/contacts/{who}")).await;
    assert_eq!(done["removed"], dry["removed"], "{done}");

    // Nothing of it anywhere: every table, every column; the capture folder.
    let traces = [
        "conv-of-ada-4711",
        "905551112233",
        "555 111 22 33",
        "my secret words",
    ];
    let conn = rusqlite::Connection::open(h.dir.join("flowbot.db")).unwrap();
    let tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let mut other = false;
    for table in &tables {
        let mut stmt = conn.prepare(&format!("SELECT * FROM \"{table}\"")).unwrap();
        let n = stmt.column_count();
        let mut rows = stmt.query([]).unwrap();
        while let Some(row) = rows.next().unwrap() {
            for i in 0..n {
                let cell = match row.get_ref(i).unwrap() {
                    rusqlite::types::ValueRef::Text(t) | rusqlite::types::ValueRef::Blob(t) => {
                        String::from_utf8_lossy(t).into_owned()
                    }
                    _ => continue,
                };
                other |= cell.contains("someone-else");
                for t in traces {
                    assert!(!cell.contains(t), "`{t}` left in {table}: {cell}");
                }
            }
        }
    }
    assert!(other, "the other conversation is untouched");
    for f in std::fs::read_dir(&capture).unwrap() {
        let text = std::fs::read_to_string(f.unwrap().path()).unwrap();
        for t in traces {
            assert!(!text.contains(t), "`{t}` left in a capture");
        }
    }
    // A late redelivery of its message: acknowledged, and nothing happens.
    let sent = h.qpien.state().created().len();
    assert_eq!(h.post(&message("m3", conv, "my secret words")).await, 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(h.qpien.state().created().len(), sent);
    let again = admin(reqwest::Method::DELETE, format!("/admin/contacts/{who}")).await;
    assert_eq!(again["conversations"], 0, "{again}");

    // `flowbot erase` and `flowbot export` through the running bot.
    let ran = admin_cli(&h, &["erase", "--contact", "someone-else", "--dry-run"]).await;
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    assert!(
        ran.stdout.contains("someone-else: 1 conversation(s)"),
        "{}",
        ran.stdout
    );
    assert!(
        ran.stdout.contains("sessions      would remove 1"),
        "{}",
        ran.stdout
    );
    let ran = admin_cli(&h, &["export", "--contact", "someone-else"]).await;
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    let exported: Value = serde_json::from_str(&ran.stdout).unwrap();
    assert_eq!(exported["conversations"][0]["conversation"], "someone-else");
}

/// Deliveries of `flowbot sim` and `start --test` are test traffic: marked
/// in the log, left out of reports unless asked for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_traffic_is_marked_and_left_out() {
    let h = Harness::start("insights-test-traffic", FLOW, |c| {
        c.server.admin_token = Secret::new(ADMIN);
        c.server.api_token = Secret::new("api-token-of-the-test");
    })
    .await;
    let hook = h.url("/webhook");
    h.qpien.state().configure(|s| {
        s.webhook_url = Some(hook);
        s.webhook_secret = crate::runtime::SECRET.into();
    });
    let simulated = h.qpien.state().create_conversation("livechat", None, "Sim");
    h.qpien.state().customer_message(
        &simulated,
        &flowbot::internals::sim::CustomerInput {
            text: "hi".into(),
            ..Default::default()
        },
    );
    assert_eq!(h.post(&message("r1", "real", "hi")).await, 200);
    let started = h
        .http
        .post(h.url("/api/start"))
        .bearer_auth("api-token-of-the-test")
        .body(
            r#"{"conversation": "started", "state": "start", "channel": "livechat", "test": true}"#,
        )
        .send()
        .await
        .unwrap();
    assert!(started.status().is_success(), "{:?}", started.text().await);
    wait_until("three greetings", Duration::from_secs(10), || {
        h.replies(&simulated).len() == 1
            && h.replies("real").len() == 1
            && h.replies("started").len() == 1
    })
    .await;
    let (_, real_only) = report(&h, "outcomes", "").await;
    assert_eq!(real_only[0]["started"], 1, "{real_only}");
    let (_, all) = report(&h, "outcomes", "include_test=true").await;
    assert_eq!(all[0]["started"], 3, "{all}");
}

/// A real `flowbot run` logging at `debug`: its lines name a conversation
/// only by the keyed hash an export gives (`log_id`), so after an erasure
/// nothing in the logs leads back to the contact; `log.conversations =
/// "plain"` names it by its id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_logs_hold_nothing_of_a_contact() {
    let qpien = crate::qpien::start_sim(|c| c.auto_create_conversations = true).await;
    let http = reqwest::Client::new();
    let bot_in = |name: &str, env: &[(&str, &str)]| {
        let dir = crate::runtime::temp_dir(name);
        std::fs::write(dir.join("flow.yaml"), CONTACT_FLOW).unwrap();
        std::fs::write(
            dir.join("flowbot.toml"),
            "flow = \"flow.yaml\"\n[server]\nlisten = \"127.0.0.1:0\"\n\
             [store]\npath = \"flowbot.db\"\n[qpien]\nwhatsapp_operation = \"create_message\"\n",
        )
        .unwrap();
        let mut env = env.to_vec();
        env.extend([
            ("RUST_LOG", "debug"),
            ("FLOWBOT_SERVER__ADMIN_TOKEN", ADMIN),
        ]);
        let bot = crate::crash::spawn_with(&dir, &qpien, &env);
        (dir, bot)
    };
    let conv = "conv-of-grace-5150";
    let (dir, bot) = bot_in("logs-hashed", &[]);
    for (id, text) in [
        ("g1", "hello"),
        ("g2", "+90 532 444 55 66"),
        ("g3", "my private words"),
    ] {
        assert!(crate::crash::post(&http, &bot.url, &message(id, conv, text)).await);
    }
    wait_until("the last reply", Duration::from_secs(15), || {
        crate::runtime::replies(&qpien, conv)
            .iter()
            .any(|r| r.starts_with("Thanks, we will call"))
    })
    .await;
    let admin = |method: reqwest::Method, path: &str| {
        let req = http
            .request(method, format!("{}{path}", bot.url))
            .bearer_auth(ADMIN);
        async move {
            let r = req.send().await.unwrap();
            assert_eq!(r.status().as_u16(), 200);
            serde_json::from_str::<Value>(&r.text().await.unwrap()).unwrap()
        }
    };
    let held = admin(
        reqwest::Method::GET,
        &format!("/admin/contacts/{conv}/export"),
    )
    .await;
    let log_id = held["conversations"][0]["log_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let erased = admin(reqwest::Method::DELETE, &format!("/admin/contacts/{conv}")).await;
    assert_eq!(erased["conversations"], 1, "{erased}");
    drop(bot);
    let logs = std::fs::read_to_string(dir.join("stderr.log")).unwrap();
    assert!(
        logs.contains(&format!("conversation={log_id}")),
        "the turns' lines name the conversation by its hash:\n{logs}"
    );
    for t in [conv, "905324445566", "532 444 55 66", "my private words"] {
        assert!(!logs.contains(t), "`{t}` in the logs:\n{logs}");
    }

    let (dir, bot) = bot_in("logs-plain", &[("FLOWBOT_LOG__CONVERSATIONS", "plain")]);
    let other = "conv-of-plain-logs";
    assert!(crate::crash::post(&http, &bot.url, &message("p1", other, "hello")).await);
    wait_until("a reply", Duration::from_secs(15), || {
        !crate::runtime::replies(&qpien, other).is_empty()
    })
    .await;
    drop(bot);
    let logs = std::fs::read_to_string(dir.join("stderr.log")).unwrap();
    assert!(
        logs.contains(&format!("conversation={other}")),
        "plain: named by its id:\n{logs}"
    );
}
