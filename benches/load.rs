//! Loading flows, and the worst a template may cost: each shape of the hostile
//! input suite (`tests/hostile.rs`) and a realistic 1,000-state flow, so that
//! a return of quadratic loading shows here.
//!
//! Run: `cargo bench --bench load`.

#![allow(missing_docs)]

mod support;

use criterion::{criterion_group, criterion_main, Criterion};
use flowbot::internals::flow::{Flow, HandlerNames};
use flowbot::{Registry, TestConversation};

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
    let path = support::big_flow(&dir);
    Flow::load(&path, &names).expect("the 1,000-state flow loads");

    let mut g = c.benchmark_group("load");
    g.sample_size(10);
    g.bench_function("1000_states_with_includes", |b| {
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
