//! The YAML conversation tests in `tests/conversations/`, each a test of its
//! own (`cargo test --test conversations -- callback` runs one by name),
//! compared with its snapshot in `tests/conversations/snapshots/`. A changed
//! transcript fails and leaves a `.snap.new` beside it: `cargo insta review`
//! (or `INSTA_UPDATE=always cargo test`) accepts it.

use std::path::Path;

fn main() {
    let args = libtest_mimic::Arguments::from_args();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/conversations");
    let registry = __CRATE__::registry();
    let files = flowbot::conversation_test_files(&dir).expect("tests/conversations can be read");
    assert!(!files.is_empty(), "no conversation test in {}", dir.display());
    let tests = files
        .into_iter()
        .map(|file| {
            let name = file
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            let registry = registry.clone();
            libtest_mimic::Trial::test(name, move || {
                flowbot::run_conversation_test(&file, &registry).map_err(Into::into)
            })
        })
        .collect();
    libtest_mimic::run(&args, tests).exit();
}
