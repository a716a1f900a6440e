//! The YAML conversation tests, compared with their insta snapshots in
//! `tests/conversations/snapshots/` (review changes with `cargo insta review`).

use flowbot::{run_conversation_tests as run_dir, Update};
use std::path::Path;

#[test]
fn conversation_snapshots() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/conversations");
    let report = crate::block_on(run_dir(
        &dir,
        &crate::support_bot::registry(),
        Update::from_env(),
    ))
    .unwrap();
    assert!(report.cases.len() >= 8, "{}", report.summary());
    assert!(report.passed(), "{}", report.summary());
}

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
