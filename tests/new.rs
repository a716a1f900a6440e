//! `flowbot new`: a project that works as written (its own `cargo test` runs
//! in `.ci/run`, against this checkout).

use std::process::Command;

#[test]
fn new_writes_a_project_with_its_first_snapshot() {
    let dir = crate::runtime::temp_dir("new");
    let out = Command::new(env!("CARGO_BIN_EXE_flowbot"))
        .args([
            "new",
            "help-desk",
            "--flowbot-path",
            env!("CARGO_MANIFEST_DIR"),
        ])
        .current_dir(&dir)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("cd help-desk"), "{stdout}");
    let root = dir.join("help-desk");
    let read =
        |p: &str| std::fs::read_to_string(root.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
    let cargo = read("Cargo.toml");
    assert!(cargo.contains("name = \"help-desk\""), "{cargo}");
    assert!(
        cargo.contains("package = \"qpien-flowbot\", path = "),
        "{cargo}"
    );
    // The crate's name, not the package's, where Rust names it.
    assert!(read("src/main.rs").contains("help_desk::registry()"));
    assert!(read("tests/conversations.rs").contains("help_desk::registry()"));
    // Each YAML test its own test (libtest-mimic), and a Rust snapshot test
    // with insta, its first snapshot recorded.
    assert!(
        cargo.contains("harness = false") && cargo.contains("libtest-mimic"),
        "{cargo}"
    );
    assert!(cargo.contains("insta = "), "{cargo}");
    assert!(read("tests/bot.rs").contains("help_desk::registry()"));
    let snap = read("tests/snapshots/bot__callback_from_rust.snap");
    assert!(snap.starts_with("---\nsource: tests/bot.rs\n"), "{snap}");
    assert!(snap.contains("Call me back"), "{snap}");
    assert!(read("flows/bot.yaml").contains("name: help-desk"));
    assert!(read("README.md").starts_with("# help-desk\n"));
    assert!(read(".gitignore").contains("/target"));
    assert!(read("flowbot.toml").contains("flow = \"flows/bot.yaml\""));
    // The schema its flow names, as `flowbot schema` prints it.
    let schema: serde_json::Value = serde_json::from_str(&read("flows/flow.schema.json")).unwrap();
    assert_eq!(schema, flowbot::internals::flow::schema());
    // The first snapshot: recorded with the project's own action, named from
    // the project's folder.
    let snap = read("tests/conversations/snapshots/callback.snap");
    assert!(
        snap.starts_with("---\nsource: tests/conversations/callback.yaml\n"),
        "{snap}"
    );
    assert!(snap.contains("Ticket CB-0018"), "{snap}");
    assert!(!root
        .join("tests/conversations/snapshots/callback.snap.new")
        .exists());

    // The installed binary inside the project: it takes the flow of
    // flowbot.toml, and says that the project's actions are its own
    // binary's to check.
    for command in ["validate", "demo"] {
        let out = Command::new(env!("CARGO_BIN_EXE_flowbot"))
            .args(
                [command, "--listen", "127.0.0.1:0"]
                    .into_iter()
                    .take(match command {
                        "demo" => 3,
                        _ => 1,
                    }),
            )
            .current_dir(&root)
            .env("NO_COLOR", "1")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{command}: {stderr}");
        assert!(
            stderr.contains(&format!(
                "{command}: the flow of flowbot.toml: flows/bot.yaml"
            )),
            "{command}: {stderr}"
        );
        assert!(
            stderr.contains("action `create_ticket` is not registered")
                && stderr.contains("does not know a project's actions")
                && stderr.contains("`cargo run -- validate"),
            "{command}: {stderr}"
        );
    }

    // A second time: the folder is taken.
    let again = Command::new(env!("CARGO_BIN_EXE_flowbot"))
        .args(["new", "help-desk"])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_name_that_cannot_be_a_package_is_refused() {
    let dir = crate::runtime::temp_dir("new-bad");
    let out = Command::new(env!("CARGO_BIN_EXE_flowbot"))
        .args(["new", "My Bot"])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot name a bot"));
    assert!(
        std::fs::read_dir(&dir).unwrap().next().is_none(),
        "nothing written"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Names that would not compile (Rust's keywords, `std`, `core`, `test`,
/// flowbot's own library) are refused, and so is a folder that is a link.
#[test]
fn new_refuses_reserved_names_and_linked_folders() {
    let dir = crate::runtime::temp_dir("new-refused");
    let new = |name: &str| {
        Command::new(env!("CARGO_BIN_EXE_flowbot"))
            .args(["new", name])
            .current_dir(&dir)
            .output()
            .unwrap()
    };
    for name in ["self", "std", "core", "test", "flowbot", "async"] {
        let out = new(name);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains("Rust or flowbot uses it"),
            "{name}: {stderr}"
        );
        assert!(!dir.join(name).exists(), "{name}: nothing written");
    }
    let elsewhere = crate::runtime::temp_dir("new-elsewhere");
    std::os::unix::fs::symlink(&elsewhere, dir.join("linked")).unwrap();
    let out = new("linked");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("symbolic link"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read_dir(&elsewhere).unwrap().count(),
        0,
        "nothing written through it"
    );
}

/// In a project's folder, `validate`, `check`, `graph` and `chat` take the
/// flow `flowbot.toml` names when none is given, and say which; without a
/// flowbot.toml they say how to name one.
#[test]
fn commands_in_a_project_take_the_flow_of_flowbot_toml() {
    let dir = crate::runtime::temp_dir("project-flow");
    std::fs::create_dir_all(dir.join("flows")).unwrap();
    std::fs::write(
        dir.join("flows/shop.yaml"),
        "version: 1\nstates:\n  start: { say: Hi from the shop, next: done }\n  done: { end: true }\n",
    )
    .unwrap();
    std::fs::write(dir.join("flowbot.toml"), "flow = \"flows/shop.yaml\"\n").unwrap();
    let flowbot = |args: &[&str], dir: &std::path::Path| {
        let out = Command::new(env!("CARGO_BIN_EXE_flowbot"))
            .args(args)
            .current_dir(dir)
            .env("NO_COLOR", "1")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    for command in ["validate", "check"] {
        let (code, stdout, stderr) = flowbot(&[command, "--strict"], &dir);
        assert_eq!(code, Some(0), "{command}: {stdout}{stderr}");
        assert!(
            stderr.contains(&format!(
                "{command}: the flow of flowbot.toml: flows/shop.yaml"
            )),
            "{stderr}"
        );
        assert!(stdout.contains("flows/shop.yaml"), "{stdout}");
    }
    let (code, stdout, _) = flowbot(&["graph"], &dir);
    assert_eq!(code, Some(0));
    assert!(stdout.contains("flowchart"), "{stdout}");
    // Elsewhere: no flow, no flowbot.toml.
    let empty = crate::runtime::temp_dir("project-flow-none");
    let (code, _, stderr) = flowbot(&["validate"], &empty);
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("no flow given, and no flowbot.toml in this folder"),
        "{stderr}"
    );
}
