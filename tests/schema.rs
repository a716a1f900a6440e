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

/// Every place that takes a visible text takes both forms the same way: a
/// template, and a map of languages to templates. The schema is walked for
/// every property whose type is a text, a message or a fallback; each
/// takes both forms in the schema and in the loader, and the visible texts
/// a bot author writes are all among them.
#[test]
fn every_text_position_takes_a_template_and_a_map_of_languages() {
    use flowbot::internals::flow::model::{Fallback, Say, SayItem, Text};
    const TEXTS: &[&str] = &["Text", "Say", "SayItem", "Fallback"];
    let schema = schema();
    let defs = schema["$defs"].as_object().unwrap();
    // `Def.property` for each text position (through `anyOf` and arrays).
    fn refs(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                if let Some(r) = m.get("$ref").and_then(|r| r.as_str()) {
                    out.push(r.trim_start_matches("#/$defs/").to_owned());
                }
                for v in m.values() {
                    refs(v, out);
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }
    let mut positions = Vec::new();
    for (def, body) in defs.iter().chain([(&"Flow".to_owned(), &schema)]) {
        let Some(props) = body["properties"].as_object() else {
            continue;
        };
        for (name, prop) in props {
            let mut found = Vec::new();
            refs(prop, &mut found);
            if found.iter().any(|r| TEXTS.contains(&r.as_str())) {
                positions.push((format!("{def}.{name}"), prop.clone()));
            }
        }
    }
    let mut schemas = boon::Schemas::new();
    let mut compiler = boon::Compiler::new();
    let template = serde_json::json!("Hello {{ name | default('you') }}!");
    let languages = serde_json::json!({"en": "Hello {{ name }}!", "tr": "Merhaba {{ name }}!"});
    for (at, prop) in &positions {
        let mut sub = prop.clone();
        sub["$defs"] = schema["$defs"].clone();
        let url = format!("urn:flowbot:position:{at}");
        compiler.add_resource(&url, sub).unwrap();
        let index = compiler.compile(&url, &mut schemas).unwrap();
        for form in [&template, &languages] {
            assert!(
                schemas.validate(form, index).is_ok(),
                "{at} does not take {form} in the schema"
            );
        }
    }
    let names: Vec<&str> = positions.iter().map(|(n, _)| n.as_str()).collect();
    for visible in [
        "State.say",
        "Ask.text",
        "Ask.invalid",
        "Ask.exhausted",
        "State.fallback",
        "After.say",
        "Rule.say",
        "Settings.fallback",
        "Settings.error_message",
        "Settings.restart_message",
        "Settings.release_message",
        "Settings.handoff_failed_message",
        "Settings.overflow_button",
        "ChoiceDoc.title",
        "ChoiceDoc.description",
        "ListDoc.header",
        "ListDoc.body",
        "ListDoc.footer",
        "ListDoc.button",
        "SectionDoc.title",
        "ButtonDoc.title",
        "MediaDoc.caption",
        "Rich.text",
    ] {
        assert!(
            names.contains(&visible),
            "{visible} is not a text position: {names:?}"
        );
    }
    // The loader takes both forms for each of the text types.
    let forms = [
        "Hello {{ name }}!",
        "{ en: \"Hello {{ name }}!\", tr: Merhaba }",
    ];
    for form in forms {
        let doc = |kind: &str| format!("# {kind}\n{form}\n");
        parse_yaml::<Text>("t.yaml", doc("text"), &[]).unwrap();
        parse_yaml::<SayItem>("t.yaml", doc("message"), &[]).unwrap();
        let say = parse_yaml::<Say>("t.yaml", doc("say"), &[]).unwrap();
        assert_eq!(say.0.len(), 1);
        let fallback = parse_yaml::<Fallback>("t.yaml", doc("fallback"), &[]).unwrap();
        assert!(fallback.say.is_some() && fallback.goto.is_none());
    }
}
