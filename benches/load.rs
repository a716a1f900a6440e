//! Loading flows, and the worst a template may cost: each shape of the hostile
//! input suite (`tests/hostile.rs`) and a realistic 1,000-state flow, so that
//! a return of quadratic loading shows here.
//!
//! Run: `cargo bench --bench load`.

#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, Criterion};
use flowbot::internals::flow::{Flow, HandlerNames};
use flowbot::{Registry, TestConversation};

/// A 1,000-state flow: asks with validation, buttons, templates, an intent
/// per ten states, split over an included file.
fn big_flow() -> (String, String) {
    let mut main = String::from(
        "version: 1\ninclude: [more.yaml]\nsettings: { error_message: \"Sorry.\" }\nintents:\n",
    );
    for i in (0..1_000).step_by(10) {
        main.push_str(&format!("  - {{ text: \"topic {i}\", goto: s{i} }}\n"));
    }
    main.push_str(
        "states:\n  start: { say: \"Hi {{ contact.first_name | default('there') }}\", next: s0 }\n",
    );
    let mut more = String::from("states:\n");
    for i in 0..1_000 {
        let next = if i + 1 < 1_000 {
            format!("s{}", i + 1)
        } else {
            "start".into()
        };
        let state = format!(
            "  s{i}:\n    ask:\n      text: \"Question {i} for {{{{ name | default('you') }}}}?\"\n      save: a{i}\n      validate: {{ kind: number, min: 1, max: 20 }}\n      invalid: \"A number from 1 to 20, please.\"\n      quick_replies: [{{ id: y{i}, title: \"Yes\" }}, {{ id: n{i}, title: \"No\" }}]\n    on:\n      - {{ button: y{i}, goto: {next} }}\n      - {{ when: \"a{i} | int > 10\", say: \"Big\", goto: {next} }}\n    next: {next}\n"
        );
        if i < 500 {
            main.push_str(&state);
        } else {
            more.push_str(&state);
        }
    }
    (main, more)
}

fn next_chain(n: usize) -> String {
    let mut s = String::from("version: 1\nstates:\n");
    for i in 0..n {
        if i + 1 < n {
            s.push_str(&format!("  s{i}: {{ say: \"{i}\", next: s{} }}\n", i + 1));
        } else {
            s.push_str(&format!("  s{i}: {{ say: \"{i}\", end: true }}\n"));
        }
    }
    s
}

fn bench(c: &mut Criterion) {
    let names = HandlerNames::default();
    let dir = std::env::temp_dir().join(format!("flowbot-bench-load-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (main, more) = big_flow();
    std::fs::write(dir.join("main.yaml"), &main).unwrap();
    std::fs::write(dir.join("more.yaml"), &more).unwrap();
    let path = dir.join("main.yaml");
    Flow::load(&path, &names).expect("the 1,000-state flow loads");

    let mut g = c.benchmark_group("load");
    g.sample_size(10);
    g.bench_function("1000_states_with_include", |b| {
        b.iter(|| Flow::load(&path, &names).unwrap())
    });
    let chain = next_chain(10_000);
    g.bench_function("next_chain_10000_states", |b| {
        b.iter(|| Flow::from_yaml("chain.yaml", &chain, &names).unwrap())
    });
    let nested = "- ".repeat(20_000);
    g.bench_function("nested_sequences_20000_refused", |b| {
        b.iter(|| Flow::from_yaml("nested.yaml", &nested, &names).unwrap_err())
    });
    let brackets = "[".repeat(100_000);
    g.bench_function("nested_brackets_100000_refused", |b| {
        b.iter(|| Flow::from_yaml("brackets.yaml", &brackets, &names).unwrap_err())
    });
    let mut wide = format!("version: 1\nvars:\n  {}:\n", "k".repeat(200_000));
    for i in 0..10_000 {
        wide.push_str(&format!("    - {i}\n"));
    }
    g.bench_function("key_200kb_10000_children_refused", |b| {
        b.iter(|| Flow::from_yaml("wide.yaml", &wide, &names).unwrap_err())
    });
    g.finish();

    // The most a template may cost in one render: a loop that runs out of fuel.
    let spin = "version: 1\nintents:\n  - { regex: '.*', goto: spin }\nstates:\n  start: {}\n  spin:\n    say: \"{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}\"\n    next: start\n";
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut t = c.benchmark_group("template");
    t.sample_size(20);
    t.bench_function("turn_with_a_template_out_of_fuel", |b| {
        let mut conv = TestConversation::from_yaml(spin, Registry::new()).unwrap();
        b.iter(|| rt.block_on(conv.send("go")).len())
    });
    t.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
