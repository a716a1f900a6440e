//! `flowbot new NAME`: a ready bot project, built from the files in
//! `template/`. Its `src/lib.rs` is compiled into flowbot too (as
//! [`example`]), so `new` runs the project's conversation test with the very
//! action it writes and records the test's first snapshot: the project's
//! `cargo test` passes at once, and this crate's tests keep the template
//! working.

use std::path::{Path, PathBuf};

use crate::testing::suite::{run_dir, Update};

/// The template's handlers, as the generated project has them.
#[path = "template/lib.rs"]
#[allow(unreachable_pub)]
pub(crate) mod example;

/// Every file of a project: its path and its text, with `__NAME__`,
/// `__CRATE__` and `__DEPENDENCY__` to fill in.
const FILES: &[(&str, &str)] = &[
    ("Cargo.toml", include_str!("template/cargo.toml")),
    ("README.md", include_str!("template/README.md")),
    (".gitignore", include_str!("template/gitignore")),
    ("flowbot.toml", include_str!("template/flowbot.toml")),
    ("src/main.rs", include_str!("template/main.rs")),
    ("src/lib.rs", include_str!("template/lib.rs")),
    ("flows/bot.yaml", include_str!("template/bot.yaml")),
    (
        "tests/conversations.rs",
        include_str!("template/conversations.rs"),
    ),
    (
        "tests/conversations/callback.yaml",
        include_str!("template/callback.yaml"),
    ),
    ("tests/bot.rs", include_str!("template/bot_test.rs")),
];

/// What went wrong making a project.
#[derive(Debug, thiserror::Error)]
pub(crate) enum NewError {
    /// The name cannot be a package's.
    #[error("`{0}` cannot name a bot: use lowercase letters, digits, `-` and `_`, starting with a letter (like `support-bot`)")]
    Name(String),
    /// The name is valid but taken by Rust or by flowbot itself: the project
    /// would not compile.
    #[error("`{0}` cannot name a bot: Rust or flowbot uses it (a keyword, or a crate every project sees); choose another, like `{0}-bot`")]
    Reserved(String),
    /// The folder is a symbolic link: what is written would land elsewhere.
    #[error("{0} is a symbolic link: flowbot new writes only into a folder of its own")]
    Link(PathBuf),
    /// The folder is there and holds something.
    #[error("{0} already exists and is not empty: choose another name or remove it")]
    Exists(PathBuf),
    /// A file could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The first snapshot could not be recorded.
    #[error("the project's conversation test does not pass: {0}")]
    Test(String),
}

/// Whether `name` can name a Cargo package and its folder.
fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        && name.len() <= 64
}

/// Names a project cannot take although they are well formed: Rust's
/// keywords (the crate's name is an identifier in its code), the crates
/// every project sees, and flowbot's own library.
fn reserved(name: &str) -> bool {
    const TAKEN: &[&str] = &[
        "self",
        "super",
        "crate",
        "std",
        "core",
        "alloc",
        "test",
        "proc_macro",
        "flowbot",
        "as",
        "async",
        "await",
        "break",
        "const",
        "continue",
        "dyn",
        "else",
        "enum",
        "extern",
        "false",
        "fn",
        "for",
        "gen",
        "if",
        "impl",
        "in",
        "let",
        "loop",
        "match",
        "mod",
        "move",
        "mut",
        "pub",
        "ref",
        "return",
        "static",
        "struct",
        "trait",
        "true",
        "try",
        "type",
        "unsafe",
        "use",
        "where",
        "while",
        "abstract",
        "become",
        "box",
        "do",
        "final",
        "macro",
        "override",
        "priv",
        "typeof",
        "unsized",
        "virtual",
        "yield",
    ];
    TAKEN.contains(&name.replace('-', "_").as_str())
}

/// The checkout of flowbot this binary was built from, while it is there
/// (`cargo install --path .`), as opposed to a package from a registry.
fn built_from() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let from_registry = dir.join(".cargo_vcs_info.json").exists()
        || dir.components().any(|c| c.as_os_str() == "registry");
    let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).ok()?;
    (!from_registry && manifest.contains("name = \"qpien-flowbot\"")).then(|| dir.to_path_buf())
}

/// The dependency line of the project's `Cargo.toml`: the checkout given,
/// else the one this binary was built from, else this version from crates.io.
fn dependency(flowbot_path: Option<&Path>) -> String {
    match flowbot_path
        .map(Path::to_path_buf)
        .or_else(built_from)
        .as_deref()
    {
        Some(p) => {
            let p = p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
            // A TOML basic string: backslashes and quotes escaped.
            let p = p
                .display()
                .to_string()
                .replace('\\', "\\\\")
                .replace('"', "\\\"");
            format!("{{ package = \"qpien-flowbot\", path = \"{p}\" }}")
        }
        None => format!(
            "{{ package = \"qpien-flowbot\", version = \"{}\" }}",
            env!("CARGO_PKG_VERSION")
        ),
    }
}

/// Writes the project `name` into `parent/name` and records its first
/// snapshot. Returns the project's folder.
pub(crate) async fn create(
    parent: &Path,
    name: &str,
    flowbot_path: Option<&Path>,
) -> Result<PathBuf, NewError> {
    if !valid_name(name) {
        return Err(NewError::Name(name.to_owned()));
    }
    let root = if parent == Path::new(".") {
        PathBuf::from(name)
    } else {
        parent.join(name)
    };
    if reserved(name) {
        return Err(NewError::Reserved(name.to_owned()));
    }
    if std::fs::symlink_metadata(&root).is_ok_and(|m| m.file_type().is_symlink()) {
        return Err(NewError::Link(root));
    }
    if std::fs::read_dir(&root).is_ok_and(|mut d| d.next().is_some()) {
        return Err(NewError::Exists(root));
    }
    let krate = name.replace('-', "_");
    let dep = dependency(flowbot_path);
    let schema = format!("{:#}\n", crate::flow::schema());
    let files = FILES
        .iter()
        .map(|(path, text)| {
            let text = text
                .replace("__NAME__", name)
                .replace("__CRATE__", &krate)
                .replace("__DEPENDENCY__", &dep);
            (*path, text)
        })
        .chain([("flows/flow.schema.json", schema)]);
    for (path, text) in files {
        let path = root.join(path);
        let write = || {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            std::fs::write(&path, text)
        };
        write().map_err(|source| NewError::Write {
            path: path.clone(),
            source,
        })?;
    }
    let tests = root.join("tests/conversations");
    let report = run_dir(&tests, &example::registry(), Update::Always)
        .await
        .map_err(|e| NewError::Test(e.to_string()))?;
    if report.cases.is_empty() || !report.passed() {
        return Err(NewError::Test(report.summary()));
    }
    // The snapshots name their test as the project's `cargo test` does:
    // from the project's folder.
    for case in &report.cases {
        let (Some(dir), Some(stem)) = (case.file.parent(), case.file.file_stem()) else {
            continue;
        };
        let snap = dir.join("snapshots").join(stem).with_extension("snap");
        let named = case.file.strip_prefix(&root).unwrap_or(&case.file);
        let fix = std::fs::read_to_string(&snap).map(|text| {
            let mut lines: Vec<&str> = text.split_inclusive('\n').collect();
            let line = format!("source: {}\n", named.display());
            if let Some(l) = lines.iter_mut().find(|l| l.starts_with("source: ")) {
                *l = &line;
            }
            lines.concat()
        });
        fix.and_then(|text| std::fs::write(&snap, text))
            .map_err(|source| NewError::Write { path: snap, source })?;
    }
    rust_snapshot(&root).await?;
    Ok(root)
}

/// The first snapshot of `tests/bot.rs`, as its insta assertion would
/// write it: the same conversation, run with the template's action.
async fn rust_snapshot(root: &Path) -> Result<(), NewError> {
    let flow = root.join("flows/bot.yaml");
    let mut chat = crate::testing::TestConversation::load(&flow, example::registry())
        .map_err(|e| NewError::Test(e.to_string()))?;
    chat.send("hello").await;
    chat.tap("hours").await;
    chat.tap("callback").await;
    chat.send("+44 20 7946 0018").await;
    let contents = insta::internals::TextSnapshotContents::new(
        chat.transcript().to_yaml(),
        insta::TextSnapshotKind::File,
    );
    let path = root.join("tests/snapshots/bot__callback_from_rust.snap");
    let text = format!(
        "---\nsource: tests/bot.rs\nexpression: chat.transcript().to_yaml()\n---\n{contents}\n"
    );
    let write = || {
        std::fs::create_dir_all(root.join("tests/snapshots"))?;
        std::fs::write(&path, text)
    };
    write().map_err(|source| NewError::Write { path, source })
}

/// `flowbot new`: prints what to do next; the exit code.
pub(crate) async fn run(name: &str, flowbot_path: Option<&Path>) -> u8 {
    match create(Path::new("."), name, flowbot_path).await {
        Ok(root) => {
            let dep = dependency(flowbot_path);
            println!(
                "Created {}: a flow, a Rust action, a conversation test and its snapshot.\nIt depends on flowbot as {dep}.\n\n  cd {}\n  cargo run -- demo --flow flows/bot.yaml   # then open http://127.0.0.1:8090/\n  cargo test\n",
                root.display(),
                root.display()
            );
            0
        }
        Err(e) => {
            eprintln!("error: {e}");
            if matches!(e, NewError::Name(_) | NewError::Exists(_)) {
                2
            } else {
                1
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["mybot", "support-bot", "bot_2"] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in ["", "MyBot", "2bot", "my bot", "../x", "bot/x", "-bot"] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn a_path_dependency_is_a_toml_string() {
        let d = dependency(Some(Path::new("/some/where \"odd\"")));
        assert_eq!(
            d,
            r#"{ package = "qpien-flowbot", path = "/some/where \"odd\"" }"#
        );
    }
}
