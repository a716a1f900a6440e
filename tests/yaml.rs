//! Each YAML conversation test in `tests/conversations/` as a test of its
//! own, compared with its insta snapshot in `tests/conversations/snapshots/`
//! (review changes with `cargo insta review`): `cargo test --test
//! conversations -- support_script` runs one by name.

use std::path::Path;

#[path = "../examples/support_bot.rs"]
#[allow(dead_code, unreachable_pub)]
mod support_bot;

fn main() {
    let args = libtest_mimic::Arguments::from_args();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/conversations");
    let registry = support_bot::registry();
    let files = flowbot::conversation_test_files(&dir).expect("tests/conversations can be read");
    assert!(files.len() >= 8, "the conversation tests are missing");
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
