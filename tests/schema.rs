//! The flow schema (`flowbot schema`, `flows/flow.schema.json`): generated from
//! the serde model, it accepts every example flow and refuses bad ones, checked
//! with an independent JSON Schema validator.

use flowbot::internals::flow::{parse_yaml, schema};
use std::path::{Path, PathBuf};

const COMMITTED: &str = "flows/flow.schema.json";

fn validator() -> (boon::Schemas, boon::SchemaIndex) {
    let mut schemas = boon::Schemas::new();
    let mut compiler = boon::Compiler::new();
    compiler
        .add_resource("urn:flowbot:flow", schema())
        .expect("the schema is added");
    let index = compiler
        .compile("urn:flowbot:flow", &mut schemas)
        .unwrap_or_else(|e| panic!("the generated schema compiles: {e:#}"));
    (schemas, index)
}

fn yaml(name: &str, text: &str) -> serde_json::Value {
    parse_yaml(name, text.to_owned(), &[]).unwrap_or_else(|d| panic!("{name} parses: {d}"))
}

fn flows_in(dir: &str) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let mut out: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    out.sort();
    out
}

#[test]
fn the_committed_schema_is_the_generated_one() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(COMMITTED);
    let committed: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert!(
        committed == schema(),
        "{COMMITTED} is out of date: run `cargo run -- schema > {COMMITTED}`"
    );
}

#[test]
fn every_example_flow_conforms_and_names_the_schema() {
    let (schemas, index) = validator();
    let mut seen = 0;
    for dir in [
        "flows",
        "flows/parts",
        "tests/conversations/flows",
        // The flow `flowbot new` writes.
        "src/cli/new/template",
    ] {
        for path in flows_in(dir) {
            if dir.ends_with("template") && !path.ends_with("bot.yaml") {
                continue; // the template's conversation test
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let doc = yaml(&path.display().to_string(), &text);
            if let Err(e) = schemas.validate(&doc, index) {
                panic!("{} does not conform to the schema:\n{e}", path.display());
            }
            if dir != "tests/conversations/flows" {
                // The first line names the schema, by a path that leads to it.
                let first = text.lines().next().unwrap_or("");
                let schema = first
                    .strip_prefix("# yaml-language-server: $schema=")
                    .unwrap_or_else(|| {
                        panic!("{} names its schema on its first line", path.display())
                    });
                let target = if dir.ends_with("template") {
                    Path::new(env!("CARGO_MANIFEST_DIR")).join(COMMITTED)
                } else {
                    path.parent().unwrap().join(schema)
                };
                assert!(
                    target.is_file(),
                    "{}: {schema} is not there",
                    path.display()
                );
            }
            seen += 1;
        }
    }
    assert!(seen >= 5, "only {seen} flows checked");
}

#[test]
fn bad_flows_fail_the_schema() {
    let (schemas, index) = validator();
    let bad = [
        // An unknown key in a state.
        ("states:\n  start:\n    sya: Hi\n", "sya"),
        // An unknown key at the top.
        ("stats:\n  start: { say: Hi }\n", "stats"),
        // A number where a count is expected.
        (
            "settings: { retries: many }\nstates:\n  start: { say: Hi }\n",
            "retries",
        ),
        // A list of states instead of a map.
        ("states:\n  - start\n", "states"),
        // A rule that is not a map.
        ("states:\n  start:\n    on: [menu]\n", "on"),
        // A validation kind that does not exist.
        (
            "states:\n  start:\n    ask: { text: Age?, save: age, validate: numbr }\n",
            "validate",
        ),
        // A quick reply without its id.
        (
            "states:\n  start:\n    say: { text: Hi, quick_replies: [{ title: Yes }] }\n",
            "quick_replies",
        ),
        // A template with a key of its own.
        (
            "states:\n  start:\n    template: { name: t, lang: en }\n",
            "template",
        ),
    ];
    for (text, what) in bad {
        let doc = yaml("bad.yaml", text);
        assert!(
            schemas.validate(&doc, index).is_err(),
            "the schema accepts a flow with a bad `{what}`:\n{text}"
        );
    }
    // And the smallest good flow passes.
    let good = yaml("good.yaml", "states:\n  start: { say: Hi, end: true }\n");
    assert!(schemas.validate(&good, index).is_ok());
}
