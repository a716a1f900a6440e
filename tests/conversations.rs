//! The YAML conversation tests as a suite: coverage, one file alone,
//! expectations and mocks. Each test file against its snapshot is a test of
//! its own in the `conversations` target (`tests/yaml.rs`).

use flowbot::{run_conversation_tests as run_dir, Update};
use std::path::Path;

#[test]
fn coverage_lists_what_no_test_reached() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/conversations");
    let report =
        crate::block_on(run_dir(&dir, &crate::support_bot::registry(), Update::No)).unwrap();
    let text = report.coverage();
    // Every flow in flows/ is exercised by some test.
    for flow in ["support.yaml", "order_form.yaml", "multilang.yaml"] {
        assert!(text.contains(flow), "{text}");
    }
    let support = report
        .uncovered
        .iter()
        .find(|(p, _)| p.ends_with("flows/support.yaml"))
        .map(|(_, v)| v.clone())
        .unwrap();
    assert!(
        support.is_empty(),
        "support flow not fully covered: {support:?}"
    );
}

/// `flowbot test FILE.yaml` runs that one test.
#[test]
fn one_test_file_runs_alone() {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/conversations/order_form.yaml");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_flowbot"))
        .arg("test")
        .arg(&file)
        .env("INSTA_UPDATE", "no")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("1 passed"), "{stdout}");
}

/// `mocks:`, `vars:` and `expect:`: a failed expectation fails the test with
/// what and where; a mock for an action the flow does not call, or jumping
/// to a state it does not have, is refused.
#[test]
fn expectations_and_mocks_are_checked() {
    let dir = crate::runtime::temp_dir("expect");
    std::fs::write(
        dir.join("flow.yaml"),
        "states:\n  start:\n    call: { action: vip_check }\n    say: \"Hello {{ tier }}\"\n    next: menu\n  menu:\n    say: Menu\n    on:\n      - { text: bye, goto: done }\n  gold: { say: Gold lane, end: true }\n  done: { end: true }\n",
    )
    .unwrap();
    let case = |name: &str, text: &str| std::fs::write(dir.join(name), text).unwrap();
    case(
        "a_wrong.yaml",
        "flow: flow.yaml\nvars: { tier: silver }\nmocks:\n  vip_check: { set: { tier: gold } }\nsteps:\n  - text: hi\n    expect: { state: gold, vars: { tier: silver, other: 1 } }\n  - text: bye\n    expect: { ended: false }\n",
    );
    case(
        "b_typo.yaml",
        "flow: flow.yaml\nmocks:\n  vip_check: {}\n  vip_chek: {}\nsteps:\n  - text: hi\n",
    );
    case(
        "c_goto.yaml",
        "flow: flow.yaml\nmocks:\n  vip_check: { goto: platinum }\nsteps:\n  - text: hi\n",
    );
    case(
        "d_jump.yaml",
        "flow: flow.yaml\nmocks:\n  vip_check: [{ goto: gold }, { fail: down }]\nsteps:\n  - text: hi\n    expect: { ended: true }\n  - text: hi\n    expect: { ended: true }\n",
    );
    // The flow's action left without a mock (nor a handler) is named.
    case(
        "e_unbound.yaml",
        "flow: flow.yaml\nmocks:\n  vip_chek: {}\nsteps:\n  - text: hi\n",
    );
    // An `expect:` naming a state the flow does not have: refused before
    // anything runs, with a suggestion.
    case(
        "f_unknown_state.yaml",
        "flow: flow.yaml\nmocks:\n  vip_check: {}\nsteps:\n  - text: hi\n  - text: bye\n    expect: { state: dne }\n  - text: hi\n    expect: { state: gols }\n",
    );
    let report = crate::block_on(run_dir(&dir, &flowbot::Registry::new(), Update::No)).unwrap();
    let outcome = |name: &str| {
        let c = report
            .cases
            .iter()
            .find(|c| c.file.ends_with(name))
            .unwrap();
        format!("{:?}", c.outcome)
    };
    let a = outcome("a_wrong.yaml");
    assert!(
        a.contains("steps[0]: the state is `menu`, expected `gold`"),
        "{a}"
    );
    assert!(
        a.contains("steps[0]: `tier` is `\\\"gold\\\"`, expected `\\\"silver\\\"`"),
        "{a}"
    );
    assert!(
        a.contains("steps[0]: `other` is not set, expected `1`"),
        "{a}"
    );
    assert!(
        a.contains("steps[1]: no conversation is in progress, expected one"),
        "{a}"
    );
    let b = outcome("b_typo.yaml");
    assert!(
        b.contains(
            "mocks.vip_chek: the flow calls no action `vip_chek` (did you mean `vip_check`?)"
        ),
        "{b}"
    );
    let f = outcome("f_unknown_state.yaml");
    assert!(
        f.contains("steps[1].expect.state: the flow has no state `dne` (did you mean `done`?)"),
        "{f}"
    );
    assert!(f.starts_with("Broken"), "nothing ran: {f}");
    let e = outcome("e_unbound.yaml");
    assert!(e.contains("action `vip_check` is not registered"), "{e}");
    let c = outcome("c_goto.yaml");
    assert!(
        c.contains("goto `platinum`: the flow has no such state"),
        "{c}"
    );
    // The first call jumps (the conversation ends in `gold`), the second
    // fails: the error path starts over, and the flow runs on.
    let d = outcome("d_jump.yaml");
    assert!(d.starts_with("New"), "{d}");
    assert!(!report.passed());
    let summary = report.summary();
    assert!(summary.contains("FAILED  "), "{summary}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Coverage counts a subflow's states, by their `NAME/state` names.
#[test]
fn coverage_counts_subflow_states() {
    let dir = crate::runtime::temp_dir("subcoverage");
    let flow = Path::new(env!("CARGO_MANIFEST_DIR")).join("flows/moving.yaml");
    std::fs::write(
        dir.join("partial.yaml"),
        format!(
            "flow: {}\nsteps:\n  - text: hi\n  - text: Kordon 3\n",
            flow.display()
        ),
    )
    .unwrap();
    let report = crate::block_on(run_dir(&dir, &flowbot::Registry::new(), Update::Always)).unwrap();
    let missing = report.uncovered.values().next().unwrap();
    assert!(
        missing.iter().any(|m| m == "state `address/check`"),
        "{missing:?}"
    );
    assert!(
        missing.iter().any(|m| m == "state `address/done`"),
        "{missing:?}"
    );
    assert!(
        !missing.iter().any(|m| m == "state `address/ask_street`"),
        "{missing:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
