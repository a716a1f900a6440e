//! The YAML conversation tests in `tests/conversations/`, each compared with
//! its snapshot in `tests/conversations/snapshots/`. A changed transcript
//! fails and leaves a `.snap.new` beside it: `cargo insta review` (or
//! `INSTA_UPDATE=always cargo test`) accepts it.

use std::path::Path;

#[tokio::test]
async fn conversations() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/conversations");
    let report = flowbot::run_conversation_tests(
        &dir,
        &__CRATE__::registry(),
        flowbot::Update::from_env(),
    )
    .await
    .expect("tests/conversations can be read");
    assert!(!report.cases.is_empty(), "no conversation test in {}", dir.display());
    assert!(report.passed(), "{}", report.summary());
}
