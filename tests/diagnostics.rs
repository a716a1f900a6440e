//! Bad flows: every problem is found at load time, with its position and path.

use flowbot::internals::flow::{Diagnostic, Flow, HandlerNames, Severity};

fn problems(yaml: &str) -> Vec<Diagnostic> {
    let names = HandlerNames {
        actions: vec!["lookup".into()],
        matchers: vec!["vip".into()],
        ..HandlerNames::default()
    };
    match Flow::from_yaml("bad.yaml", yaml, &names) {
        Ok(f) => f.warnings.0,
        Err(e) => e.0 .0,
    }
}

/// Asserts one problem with this message fragment at this path and line.
fn has(ds: &[Diagnostic], fragment: &str, path: &str, line: usize) {
    assert!(
        ds.iter()
            .any(|d| d.message.contains(fragment) && d.path == path && d.line == line),
        "no `{fragment}` at {path}:{line} in:\n{}",
        ds.iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn unknown_states_with_suggestions() {
    let ds = problems("states:\n  start:\n    on:\n      - { button: x, goto: ask_ordr }\n  ask_order: { say: hi }\n");
    has(
        &ds,
        "unknown state `ask_ordr`",
        "states.start.on[0].goto",
        4,
    );
    let d = ds.iter().find(|d| d.message.contains("ask_ordr")).unwrap();
    assert_eq!(d.column, 28);
    assert_eq!(d.hint.as_deref(), Some("did you mean `ask_order`?"));
}

#[test]
fn branches_are_checked_where_they_are_written() {
    let ds = problems(
        "states:\n  start:\n    next:\n      - { goto: a }\n      - { when: \"x >\", goto: b }\n      - { when: \"x > 1\", goto: closd }\n  a: { say: a }\n  b: { say: b }\n  closed: { say: c }\n  empty: { next: [] }\n",
    );
    has(
        &ds,
        "a branch without `when` always holds: the branches after it are never taken",
        "states.start.next[0]",
        4,
    );
    has(&ds, "invalid expression", "states.start.next[1].when", 5);
    has(&ds, "unknown state `closd`", "states.start.next[2].goto", 6);
    has(
        &ds,
        "when no branch holds, the conversation stays here",
        "states.start.next[2].when",
        6,
    );
    has(&ds, "needs at least one branch", "states.empty.next", 10);
    // Every branch's target is reachable; the last without `when` is fine.
    let ds = problems(
        "states:\n  start:\n    next:\n      - { when: \"x | int > 1\", goto: a }\n      - { goto: b }\n  a: { say: a }\n  b: { say: b }\n",
    );
    assert!(ds.is_empty(), "{ds:?}");
}

#[test]
fn saved_picks_need_options_and_a_name() {
    let ds = problems(
        "states:\n  start:\n    say:\n      - { text: hi, save: reason }\n      - { text: hi, save: 2x, quick_replies: [{ id: a, title: A }] }\n      - { list: { body: b, button: c, sections: [{ rows: [{ id: a, title: A }] }] }, save: x }\n",
    );
    has(&ds, "this message has none", "states.start.say[0].save", 4);
    has(
        &ds,
        "cannot be a variable's name",
        "states.start.say[1].save",
        5,
    );
    has(
        &ds,
        "a list keeps its pick with its own `save`",
        "states.start.say[2].save",
        6,
    );
}

#[test]
fn splits_are_checked_where_they_are_written() {
    let ds = problems(
        "states:\n  start: { split: { a: 1 } }\n  b: { split: { a: 0, c: 0 }, next: a }\n  a: { say: a, split: { a: 1, nowhere: 1 } }\n",
    );
    has(&ds, "at least two variants", "states.start.split", 2);
    has(&ds, "add up to zero", "states.b.split", 3);
    has(&ds, "not with `next`", "states.b.split", 3);
    has(&ds, "unknown state `nowhere`", "states.a.split.nowhere", 4);
}

/// The installed `flowbot` has no actions: checking a project's flow with
/// it says so, and which binary knows them.
#[test]
fn a_program_without_actions_points_at_the_projects_own_binary() {
    let ds = match Flow::from_yaml(
        "bot.yaml",
        "states:\n  start: { call: { action: create_ticket }, say: ok }\n",
        &HandlerNames::default(),
    ) {
        Ok(_) => panic!("an unknown action loads"),
        Err(e) => e.0 .0,
    };
    has(
        &ds,
        "action `create_ticket` is not registered",
        "states.start.call.action",
        2,
    );
    let hint = ds[0].hint.as_deref().unwrap_or_default();
    assert!(hint.contains("cargo run -- validate"), "{hint}");
}

#[test]
fn unreachable_states_are_warnings() {
    let ds = problems("states:\n  start: { say: hi }\n  lonely: { say: nobody comes }\n");
    has(&ds, "unreachable", "states.lonely", 3);
    assert!(ds.iter().all(|d| d.severity == Severity::Warning));
}

#[test]
fn duplicate_ids_in_one_message() {
    let ds = problems("states:\n  start:\n    say:\n      - text: Pick\n        quick_replies: [{ id: a, title: A }, { id: a, title: B }]\n");
    has(
        &ds,
        "duplicate id `a`",
        "states.start.say[0].quick_replies[1].id",
        5,
    );
}

#[test]
fn whatsapp_limits() {
    let yaml = r#"states:
  start:
    say:
      - text: Pick
        quick_replies: [{ id: a, title: A }, { id: b, title: B }, { id: c, title: C }, { id: d, title: D }]
      - text: Long
        quick_replies: [{ id: a, title: "This title is far too long" }]
      - list:
          body: Rows
          button: Open the list of options now
          sections:
            - title: S
              rows:
                - { id: "1", title: "A row title that is too long to show", description: "ok" }
                - { id: "2", title: B, description: "a description that goes on and on and on and on and on and on and on and on" }
"#;
    let ds = problems(yaml);
    has(
        &ds,
        "4 quick replies",
        "states.start.say[0].quick_replies",
        5,
    );
    has(
        &ds,
        "button title is 26 characters",
        "states.start.say[1].quick_replies[0].title",
        7,
    );
    has(
        &ds,
        "list button is 28 characters",
        "states.start.say[2].list.button",
        10,
    );
    has(
        &ds,
        "row title is 36",
        "states.start.say[2].list.sections[0].rows[0].title",
        14,
    );
    has(
        &ds,
        "row description is 75",
        "states.start.say[2].list.sections[0].rows[1].description",
        15,
    );
}

#[test]
fn too_many_rows() {
    let rows: String = (0..11)
        .map(|i| format!("{{ id: r{i}, title: R{i} }}, "))
        .collect();
    let yaml = format!("states:\n  start:\n    say:\n      - list: {{ body: B, button: Go, sections: [{{ rows: [{rows}] }}] }}\n");
    has(
        &problems(&yaml),
        "11 rows",
        "states.start.say[0].list.sections",
        4,
    );
    let adapted = format!("settings: {{ overflow: adapt }}\n{yaml}");
    assert!(problems(&adapted).is_empty());
}

#[test]
fn bad_regexes_templates_and_expressions() {
    let yaml = r#"states:
  start:
    say: "Hi {{ name"
    on:
      - { regex: '(unclosed', goto: start }
      - { when: "a ==", goto: start }
"#;
    let ds = problems(yaml);
    has(&ds, "invalid template", "states.start.say", 3);
    has(&ds, "invalid regex", "states.start.on[0].regex", 5);
    has(&ds, "invalid expression", "states.start.on[1].when", 6);
}

#[test]
fn unregistered_handlers() {
    let yaml =
        "states:\n  start:\n    call: { action: lookpu }\n    on: [{ match: vpi, goto: start }]\n";
    let ds = problems(yaml);
    has(
        &ds,
        "action `lookpu` is not registered",
        "states.start.call.action",
        3,
    );
    has(
        &ds,
        "matcher `vpi` is not registered",
        "states.start.on[0].match",
        4,
    );
    assert_eq!(ds[0].hint.as_deref(), Some("did you mean `lookup`?"));
}

#[test]
fn unknown_keys_with_did_you_mean() {
    let ds =
        problems("states:\n  start:\n    sya: hi\n    on:\n      - { buton: x, goto: start }\n");
    has(&ds, "unknown key `sya`", "states.start.sya", 3);
    has(&ds, "unknown key `buton`", "states.start.on[0].buton", 5);
    assert!(ds
        .iter()
        .any(|d| d.hint.as_deref() == Some("did you mean `button`?")));
    // A key of the language in the wrong place is not offered as its own fix.
    let ds = problems("states:\n  start:\n    say: hi\n    goto: start\n");
    has(&ds, "unknown key `goto`", "states.start.goto", 4);
    assert!(
        ds.iter()
            .all(|d| d.hint.as_deref() != Some("did you mean `goto`?")),
        "{ds:?}"
    );
}

#[test]
fn an_unknown_region_is_named() {
    let ds = problems("settings:\n  default_region: Turkey\nstates:\n  start: { say: hi }\n");
    has(
        &ds,
        "`Turkey` is not a region",
        "settings.default_region",
        2,
    );
}

#[test]
fn yaml_syntax_errors_have_line_and_column() {
    // An unclosed quote: where it opens, and where the end was noticed.
    let ds = problems("states:\n  start:\n    say: \"unterminated\n    next: b\n  b: {}\n");
    assert_eq!(ds.len(), 1);
    assert_eq!((ds[0].line, ds[0].column), (3, 10), "{}", ds[0]);
    assert!(
        ds[0]
            .message
            .contains("quoted scalar that starts here (noticed at line 6"),
        "{}",
        ds[0]
    );
    assert!(ds[0]
        .hint
        .as_deref()
        .unwrap_or("")
        .contains("close the quote"));
    let ds = problems("states:\n  start:\n\tsay: tab\n");
    assert!(ds[0].line == 3, "{}", ds[0]);
}

#[test]
fn structural_errors() {
    let yaml = r#"states:
  start:
    ask: { text: "Q?", save: "not a name" }
    on:
      - { goto: start }
      - { button: x }
  loop_a: { next: loop_b }
  loop_b: { next: loop_a, say: hi }
"#;
    let ds = problems(yaml);
    has(&ds, "not a variable name", "states.start.ask.save", 3);
    has(&ds, "needs `next`", "states.start.ask", 3);
    has(&ds, "needs a condition", "states.start.on[0]", 5);
    has(&ds, "needs `goto`, `say`", "states.start.on[1]", 6);
    has(&ds, "`next` loops", "states.loop_a.next", 7);
}

#[test]
fn all_problems_at_once_rendered() {
    let yaml = "version: 2\nstart: begin\nstates:\n  start:\n    say: hi\n    on: [{ media: picture, goto: nowhere }]\n";
    let ds = problems(yaml);
    let rendered: Vec<String> = ds.iter().map(|d| d.to_string()).collect();
    insta::assert_snapshot!("all_problems", rendered.join("\n"));
}

#[test]
fn included_files_report_in_their_own_file() {
    let dir = std::env::temp_dir().join(format!("flowbot-include-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("main.yaml"),
        "include: [more.yaml]\nstates:\n  start: { say: hi, on: [{ text: more, goto: more }] }\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("more.yaml"),
        "intents: [{ text: top, goto: start }]\nstates:\n  more: { say: More, next: nowhere }\n",
    )
    .unwrap();
    let err = Flow::load(dir.join("main.yaml"), &HandlerNames::default()).unwrap_err();
    let d = &err.0 .0[0];
    assert!(
        d.file.ends_with("more.yaml") && d.line == 3 && d.path == "states.more.next",
        "{d}"
    );
    std::fs::write(
        dir.join("more.yaml"),
        "intents: [{ text: top, goto: start }]\nstates:\n  more: { say: More, next: start }\n",
    )
    .unwrap();
    let flow = Flow::load(dir.join("main.yaml"), &HandlerNames::default()).unwrap();
    assert_eq!(flow.state_names().count(), 2);
    assert_eq!(flow.intent_count(), 1);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn templates_are_checked_against_the_approved_ones_when_known() {
    use flowbot::internals::flow::TemplateInfo;
    let yaml = r#"states:
  start:
    say: hi
    template: { name: order_updte, language: en, params: ["{{ x }}"] }
    on: [{ text: a, goto: a }, { text: b, goto: b }, { text: c, goto: c }]
  a:
    say: { template: { name: order_update, language: en, params: [] } }
  b:
    say: { template: { name: order_update, language: tr, params: ["1", "2"] } }
  c:
    say: { template: { name: order_update, params: ["1", "2"] } }
"#;
    let names = HandlerNames {
        templates: Some(vec![
            TemplateInfo {
                name: "order_update".into(),
                language: "en".into(),
                params: 2,
            },
            TemplateInfo {
                name: "order_update".into(),
                language: "de".into(),
                params: 2,
            },
        ]),
        ..HandlerNames::default()
    };
    let ds = match Flow::from_yaml("t.yaml", yaml, &names) {
        Ok(f) => f.warnings.0,
        Err(e) => e.0 .0,
    };
    has(
        &ds,
        "no approved template is called `order_updte`",
        "states.start.template.name",
        4,
    );
    assert!(ds
        .iter()
        .any(|d| d.hint.as_deref() == Some("did you mean `order_update`?")));
    has(
        &ds,
        "has 2 parameters; 0 given",
        "states.a.say.template.params",
        7,
    );
    has(
        &ds,
        "not approved in `tr`",
        "states.b.say.template.language",
        9,
    );
    assert!(ds
        .iter()
        .any(|d| d.hint.as_deref() == Some("it is in: en, de")));
    has(&ds, "needs a `language`", "states.c.say.template", 11);
    // Unknown templates are not checked; the language is still needed.
    let ds = problems(yaml);
    assert!(!ds.iter().any(|d| d.message.contains("approved")), "{ds:?}");
}

#[test]
fn messages_that_can_come_after_whatsapps_window_are_warned_of() {
    let yaml = r#"settings: { default_language: en }
release: back
states:
  start:
    say: hi
    on: [{ text: a, goto: a }, { text: late, goto: late }, { text: ok, goto: covered }, { text: h, goto: h }]
    after: { idle: 2h, say: "Still there?" }
  late:
    say: "Noted."
    after: { idle: 30h, say: "Anything else?" }
  covered:
    say: "Noted."
    after: { idle: 30h, say: "Anything else?", template: { name: followup } }
  a:
    say: "A."
    after: { idle: 20h, goto: b }
  b:
    say: "Reminder."
    after: { idle: 5h, say: "Last reminder." }
  h: { say: "A person comes.", handoff: true }
  back: { say: "You are back." }
"#;
    let ds = problems(yaml);
    has(
        &ds,
        "this nudge can come 30h after",
        "states.late.after",
        10,
    );
    has(
        &ds,
        "can come 25h after the customer last wrote (through the nudges of a -> b)",
        "states.b.after",
        19,
    );
    has(&ds, "a handoff can last more than 24 hours", "release", 2);
    assert!(
        ds.iter()
            .all(|d| !d.path.starts_with("states.covered") && !d.path.starts_with("states.start")),
        "{ds:?}"
    );
    assert!(ds.iter().all(|d| d.severity == Severity::Warning), "{ds:?}");
    // A handoff that cannot outlast the window: no warning for the release.
    let bounded = yaml.replace("settings: {", "settings: { handoff_timeout: 8h,");
    assert!(!problems(&bounded).iter().any(|d| d.path == "release"));
}

#[test]
fn calendars_are_checked_where_they_are_written() {
    let yaml = r#"calendars:
  support:
    timezone: Europe/Istambul
    hours: { mon-fri: "09:00-18:00", weekend: "10:00-14:00", sat: "14:00-10:00" }
    holidays: ["2026-13-01"]
states:
  start:
    say: "{{ next_open('sales') }}"
    on: [{ text: a, when: "open('suport')", goto: start }]
"#;
    let ds = problems(yaml);
    has(
        &ds,
        "`Europe/Istambul` is not a time zone",
        "calendars.support.timezone",
        3,
    );
    has(
        &ds,
        "`weekend` names no weekdays",
        "calendars.support.hours.weekend",
        4,
    );
    has(
        &ds,
        "`14:00-10:00` is not a range of hours",
        "calendars.support.hours.sat",
        4,
    );
    has(
        &ds,
        "`2026-13-01` is not a date",
        "calendars.support.holidays[0]",
        5,
    );
    has(&ds, "no calendar `sales`", "states.start.say", 8);
    has(&ds, "no calendar `suport`", "states.start.on[0].when", 9);
}

#[test]
fn schedules_are_checked_where_they_are_written() {
    let yaml = r#"schedules:
  - { name: a, state: survey, cron: "0 25 * * MON" }
  - { name: b, state: survey, from: d, after: soon }
  - { name: c, state: nowhere, cron: "0 9 * * *", timezone: Mars/Olympus }
  - { name: a, state: survey, from: d, mode: later }
  - { name: e, state: survey }
states:
  start: { say: hi }
  survey: { say: "How did we do?" }
"#;
    let ds = problems(yaml);
    has(&ds, "is not a cron expression", "schedules[0].cron", 2);
    has(&ds, "not a duration", "schedules[1].after", 3);
    has(&ds, "unknown state `nowhere`", "schedules[2].state", 4);
    has(
        &ds,
        "`Mars/Olympus` is not a time zone",
        "schedules[2].timezone",
        4,
    );
    has(&ds, "unknown mode `later`", "schedules[3].mode", 5);
    has(&ds, "schedule `a` is named twice", "schedules[3].name", 5);
    has(&ds, "either `cron` or `from`", "schedules[4]", 6);
    // A schedule's state without a template: a warning (WhatsApp's window).
    let ds = problems(
        "schedules:\n  - { name: s, state: survey, cron: \"0 9 * * MON\" }\nstates:\n  start: { say: hi }\n  survey: { say: \"How did we do?\" }\n",
    );
    has(&ds, "starts conversations in `survey`", "schedules[0]", 2);
    // A schedule that fires faster than the budget sends: a warning saying
    // how many conversations one firing reaches; a weekly one is fine.
    let ds = problems(
        "schedules:\n  - { name: s, state: survey, cron: \"*/5 9-17 * * *\" }\n  - { name: w, state: survey, cron: \"0 9 * * MON\" }\nstates:\n  start: { say: hi }\n  survey: { say: \"How did we do?\", template: { name: survey } }\n",
    );
    has(
        &ds,
        "can fire every 5m: at Qpien's 100 calls a minute, one firing reaches about 500 conversations",
        "schedules[0].cron",
        2,
    );
    assert!(!ds.iter().any(|d| d.path == "schedules[1].cron"), "{ds:?}");
}

#[test]
fn digression_helpers_are_checked() {
    let ds = problems(
        "intents:\n  - { keyword: hours, say: x, goto: start, resume: true }\n  - { regex: 'is (?P<agee>.+)', correct: agee, say: ok }\n  - { any: [{ text: a, cancel: true }], say: x }\nstates:\n  start:\n    ask: { text: Age?, save: age }\n",
    );
    has(&ds, "cannot also `goto`", "intents[0].resume", 2);
    has(&ds, "no question saves `agee`", "intents[1].correct", 3);
    let d = ds.iter().find(|d| d.message.contains("agee")).unwrap();
    assert_eq!(d.hint.as_deref(), Some("did you mean `age`?"));
    has(
        &ds,
        "`cancel` belongs to the outer rule",
        "intents[2].any[0].cancel",
        4,
    );
}

/// A subflow's contract is checked in every caller, naming both ends.
#[test]
fn subflow_contracts_are_checked_in_every_caller() {
    let dir = crate::runtime::temp_dir("contracts");
    std::fs::write(
        dir.join("child.yaml"),
        "inputs:\n  who: string\n  lang: { type: string, default: en }\noutputs:\n  city: string\n  zip: number\nstates:\n  ask:\n    ask: { text: \"City, {{ who }}?\", save: city }\n    next: done\n  done:\n    return: { city: \"{{ city }}\" }\n",
    )
    .unwrap();
    let main = "states:\n  start:\n    call: { flow: child.yaml, with: { who: Ada }, returns: [city, street] }\n    next: second\n  second:\n    call: { flow: child.yaml, with: { whom: Bob }, returns: [town] }\n    next: third\n  third:\n    call: { flow: child.yaml, with: { who: Cy } }\n  end: { end: true }\n";
    let ds = match Flow::from_yaml(dir.join("main.yaml"), main, &HandlerNames::default()) {
        Ok(f) => f.warnings.0,
        Err(e) => e.0 .0,
    };
    let child = dir.join("child.yaml").display().to_string();
    // Removed or renamed outputs, in each caller, with where outputs are declared.
    has(&ds, &format!("subflow `child` has no output `street`: renamed or removed? (its outputs are declared at {child}:4)"), "states.start.call.returns[1]", 3);
    has(
        &ds,
        "subflow `child` has no output `town`",
        "states.second.call.returns[0]",
        6,
    );
    // An input it does not have, one it needs and is not given.
    has(
        &ds,
        &format!("subflow `child` has no input `whom` (its inputs are declared at {child}:1)"),
        "states.second.call.with.whom",
        6,
    );
    let d = ds
        .iter()
        .find(|d| d.message.contains("no input `whom`"))
        .unwrap();
    assert_eq!(d.hint.as_deref(), Some("did you mean `who`?"));
    has(
        &ds,
        &format!("subflow `child` needs the input `who` (declared at {child}:2)"),
        "states.second.call",
        6,
    );
    // A call without `next`.
    has(
        &ds,
        "a state that calls a subflow needs `next`",
        "states.third.call",
        9,
    );
    // The child's own side: a declared output it does not return.
    has(
        &ds,
        "the output `zip` is not returned",
        "states.done.return",
        12,
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `flowbot check --explore` finds what only running the flow shows: a
/// silent turn, a state no path reaches, a text missing a language, a
/// message over WhatsApp's limits once rendered, and (asked for) states
/// with no way out; behind every branch of a `next:`.
#[test]
fn the_explorer_finds_planted_problems() {
    let flow = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/explore/planted.yaml");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_flowbot"))
        .args(["check", "--explore", "--require-exit"])
        .arg(&flow)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    let at = |line: usize| format!("planted.yaml:{line}:");
    let has = |fragment: &str, line: usize| {
        assert!(
            stderr
                .split("\n\n")
                .any(|d| d.contains(fragment) && d.contains(&at(line))),
            "no `{fragment}` at line {line} in:\n{stderr}"
        );
    };
    has("error: a turn sends nothing: text \"hello\" → button quiet (the conversation is then in `quiet`)", 15);
    has("warning: no path of at most 20 turns reaches `secret`", 27);
    has(
        "error: this text has no tr version (the flow speaks en, tr)",
        19,
    );
    has(
        "error: a message breaks WhatsApp's limits once rendered: a body of",
        21,
    );
    has(
        "error: from `quiet`, no path of at most 20 turns reaches a handoff or an end",
        15,
    );
    // A branch whose condition never holds on the walk is followed all the
    // same: what lies behind it is checked, and it counts as reached.
    has(
        "error: a turn sends nothing: button vip (`gate` branch 0) (the conversation is then in `lounge`)",
        36,
    );
    assert!(!stderr.contains("reaches `lounge`"), "{stderr}");
    // Validation alone passes: these are found by running the flow.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_flowbot"))
        .args(["check"])
        .arg(&flow)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An action's declared jumps (`jumps:`) make their states reachable for
/// `validate`, and `check --explore` follows each jump and the action's
/// failure into the error path, finding what hides behind them.
#[test]
fn the_explorer_follows_declared_jumps_and_error_paths() {
    use flowbot::internals::testing::explore::{explore, ExploreOptions};
    let flow = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/explore/jumps.yaml");
    let names = HandlerNames {
        actions: vec!["lookup".into()],
        ..HandlerNames::default()
    };
    let loaded = Flow::load(&flow, &names).unwrap();
    assert!(loaded.warnings.0.is_empty(), "{:?}", loaded.warnings.0);
    let registry = flowbot::Registry::new().action("lookup", flowbot::Mock::new());
    let ds = crate::block_on(explore(&flow, &registry, ExploreOptions::default())).0;
    let text: Vec<String> = ds.iter().map(|d| d.to_string()).collect();
    let text = text.join("\n");
    has(
        &ds,
        "a turn sends nothing: text \"hello\" → text \"1\" (`lookup` jumps to `found`) (the conversation is then in `found`)",
        "states.found",
        18,
    );
    has(
        &ds,
        "a turn sends nothing: text \"hello\" → text \"1\" (`lookup` fails) (the conversation is then in `sorry`)",
        "states.sorry",
        23,
    );
    has(
        &ds,
        "a turn sends nothing: text \"hello\" → text \"track\" (request `track` fails) (the conversation is then in `untracked`)",
        "states.untracked",
        30,
    );
    assert!(!text.contains("reaches `missing`"), "{text}");
    // Undeclared, the same states are unreachable for `validate`.
    let yaml = std::fs::read_to_string(&flow)
        .unwrap()
        .replace(", jumps: [found, missing]", "");
    let ds = problems(&yaml);
    has(&ds, "unreachable", "states.found", 19);
    // A declared state that does not exist is an error where it is named.
    let ds = problems(&yaml.replace("action: lookup }", "action: lookup, jumps: [fund] }"));
    has(
        &ds,
        "unknown state `fund`",
        "states.lookup.call.jumps[0]",
        14,
    );
}

/// `http:` steps are checked where they are written: method and body,
/// URL and host, headers, pointers, timeout, retries, names, secrets
/// outside a request, the allow list's entries.
#[test]
fn http_steps_are_checked_where_they_are_written() {
    let ds = problems(concat!(
        "settings: { http: { allow: [api.example.com, 'https://bad'] } }\n",
        "states:\n",
        "  start:\n",
        "    http: { url: 'https://api.example.com/a', method: FETCH, save: { x: status, 2y: /a }, timeout: 40s }\n",
        "    say: '{{ secret.TOKEN }}'\n",
        "  b:\n",
        "    http: { name: start, url: 'ftp://api.example.com/a', json: { a: 1 }, method: get, retries: 9 }\n",
        "  c:\n",
        "    http: { url: 'https://other.example.com/{{ id }}', headers: { 'Bad Header': x, Auth: '{{ secret[\"X\"] }}' }, on_error: nowhere }\n",
        "  d:\n",
        "    http: { url: '{{ base }}/x', status: 'no good' }\n",
        "    set: { t: '{{ secret.T }}' }\n",
    ));
    has(&ds, "is not a host name", "settings.http.allow[1]", 1);
    has(
        &ds,
        "`FETCH` is not a method",
        "states.start.http.method",
        4,
    );
    has(&ds, "is not a JSON pointer", "states.start.http.save.x", 4);
    has(
        &ds,
        "`2y` is not a variable name",
        "states.start.http.save.2y",
        4,
    );
    has(&ds, "at most 30s", "states.start.http.timeout", 4);
    has(
        &ds,
        "a secret can only be used in an `http:` step",
        "states.start.say",
        5,
    );
    has(
        &ds,
        "two `http:` steps are named `start`",
        "states.b.http.name",
        7,
    );
    has(&ds, "scheme `ftp`", "states.b.http.url", 7);
    has(&ds, "a GET request has no body", "states.b.http.json", 7);
    has(&ds, "at most 3", "states.b.http.retries", 7);
    has(
        &ds,
        "host `other.example.com` is not in settings.http.allow",
        "states.c.http.url",
        9,
    );
    has(
        &ds,
        "`Bad Header` is not a header name",
        "states.c.http.headers.Bad Header",
        9,
    );
    has(
        &ds,
        "a secret is read as `secret.NAME`",
        "states.c.http.headers.Auth",
        9,
    );
    has(&ds, "unknown state `nowhere`", "states.c.http.on_error", 9);
    has(
        &ds,
        "`no good` is not a variable name",
        "states.d.http.status",
        11,
    );
    has(&ds, "a secret can only be used", "states.d.set.t", 12);
    // A host only the process lists is a warning, not an error.
    let w = ds
        .iter()
        .find(|d| d.message.contains("other.example.com"))
        .unwrap();
    assert_eq!(w.severity, Severity::Warning);
    // A well-formed step has nothing to say.
    let ds = problems(concat!(
        "settings: { http: { allow: ['*.example.com'] } }\n",
        "states:\n",
        "  start:\n",
        "    http: { url: 'https://api.example.com/o/{{ id }}', headers: { Authorization: 'Bearer {{ secret.TOKEN }}' }, json: { n: '{{ n }}' }, save: { all: '', s: /a~1b/0 }, timeout: 2s, on_error: sorry }\n",
        "    say: ok\n",
        "  sorry: { say: sorry }\n",
    ));
    assert!(ds.is_empty(), "{ds:?}");
}

/// `check --explore` runs each intent's examples through the flow's own
/// classifier (a confusion is reported at the example's line) and walks
/// the "did you mean" question, which alone shows an intent's title.
#[test]
fn the_explorer_reports_confused_examples_and_walks_the_not_sure_path() {
    use flowbot::internals::testing::explore::{explore, ExploreOptions};
    let flow = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/explore/intents.yaml");
    let registry = flowbot::Registry::new();
    let ds = crate::block_on(explore(&flow, &registry, ExploreOptions::default())).0;
    has(
        &ds,
        "the example \"where is my order\" of `cancel_order` is understood as `track_order`",
        "nlu.intents.cancel_order.examples[3]",
        9,
    );
    has(
        &ds,
        "the button title \"Track my order and tell me",
        "states.start",
        15,
    );
    assert_eq!(ds.len(), 2, "{ds:?}");
    // Without the confusing example and with a shorter title: nothing.
    let fixed = std::fs::read_to_string(&flow)
        .unwrap()
        .replace(",\n        \"where is my order\"]", "]")
        .replace(
            "Track my order and tell me where it is now",
            "Track my order",
        );
    let dir = crate::runtime::temp_dir("explore-intents");
    std::fs::write(dir.join("intents.yaml"), fixed).unwrap();
    let ds = crate::block_on(explore(
        &dir.join("intents.yaml"),
        &registry,
        ExploreOptions::default(),
    ))
    .0;
    assert!(ds.is_empty(), "{ds:?}");
}

#[test]
fn personal_data_and_outcomes_are_checked_where_they_are_written() {
    let ds = problems(
        r#"pii: [address, "not a name"]
states:
  start:
    ask: { text: "Phone?", save: phone, validate: phone }
    next: mail
  mail:
    ask: { text: "E-mail?", save: email, validate: email, pii: true }
    next: done
  done:
    say: Bye.
    end: true
    outcome: order_placed
  sorry:
    say: Sorry.
    outcome: failed
  odd:
    end: true
    outcome: "open"
"#,
    );
    has(
        &ds,
        "`phone` keeps a phone number, personal data, and is not marked `pii: true`",
        "states.start.ask.save",
        4,
    );
    assert!(
        !ds.iter().any(|d| d.path.starts_with("states.mail")),
        "{ds:?}"
    );
    has(&ds, "`not a name` is not a variable name", "pii[1]", 1);
    has(&ds, "it needs `end: true`", "states.sorry.outcome", 15);
    has(
        &ds,
        "`open` is not an outcome name",
        "states.odd.outcome",
        18,
    );
    assert!(
        !ds.iter().any(|d| d.path == "states.done.outcome"),
        "{ds:?}"
    );
}
