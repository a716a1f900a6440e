//! The built-in classifier's cost: training at load for 50 intents x 20
//! examples (words drawn from a fixed vocabulary, the same on every run),
//! and classifying one message with the support flow's model (its held-out
//! phrasings, `tests/nlu/support_eval.yaml`), one core.
//!
//! Run: `cargo bench --bench nlu`. `cargo bench --bench nlu -- --quick`
//! prints the medians of a few runs instead, for CI.

#![allow(missing_docs)]

use criterion::{criterion_group, Criterion};
use flowbot::internals::nlu::Model;

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// 50 intents x 20 examples of 4 to 8 words: each intent has its own
/// topic words, mixed with words every intent uses, in English and Turkish.
fn examples() -> Vec<Vec<String>> {
    const SHARED: &[&str] = &[
        "i",
        "want",
        "to",
        "my",
        "the",
        "please",
        "can",
        "you",
        "bir",
        "istiyorum",
        "lütfen",
        "benim",
        "how",
        "do",
        "nasıl",
        "ne",
        "zaman",
        "is",
        "a",
        "for",
    ];
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move |n: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % n as u64) as usize
    };
    (0..50)
        .map(|i| {
            let topic: Vec<String> = (0..4)
                .map(|k| {
                    format!(
                        "{}{}",
                        ["sipariş", "order", "kargo", "refund", "fatura"][k % 5],
                        i * 7 + k
                    )
                })
                .collect();
            (0..20)
                .map(|_| {
                    let len = 4 + next(5);
                    (0..len)
                        .map(|w| {
                            if w % 2 == 0 {
                                topic[next(topic.len())].clone()
                            } else {
                                SHARED[next(SHARED.len())].to_owned()
                            }
                        })
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .collect()
        })
        .collect()
}

/// The support flow's model and its held-out lines.
fn support() -> (Model, Vec<String>) {
    let root = env!("CARGO_MANIFEST_DIR");
    let bot = flowbot::Bot::load(
        format!("{root}/flows/support.yaml"),
        support_bot::registry(),
    )
    .unwrap();
    let model = bot.flow().nlu.as_ref().unwrap().model.clone();
    (model, lines(root))
}

fn lines(root: &str) -> Vec<String> {
    let text = std::fs::read_to_string(format!("{root}/tests/nlu/support_eval.yaml")).unwrap();
    text.lines()
        .filter_map(|l| {
            l.split_once("text: \"")?
                .1
                .split_once('"')
                .map(|(t, _)| t.to_owned())
        })
        .collect()
}

#[path = "../examples/support_bot.rs"]
#[allow(dead_code, unreachable_pub)]
mod support_bot;

fn nlu(c: &mut Criterion) {
    let ex = examples();
    assert_eq!(ex.iter().map(Vec::len).sum::<usize>(), 1000);
    let mut g = c.benchmark_group("nlu");
    g.sample_size(20);
    g.bench_function("train_50_intents_x_20_examples", |b| {
        b.iter(|| Model::train(&ex, 0.5, 0.02))
    });
    let (model, lines) = support();
    assert!(lines.len() > 50, "the held-out lines");
    let mut i = 0;
    g.bench_function("classify_one_message", |b| {
        b.iter(|| {
            i = (i + 1) % lines.len();
            model.classify(&lines[i])
        })
    });
    let big = Model::train(&ex, 0.5, 0.02);
    g.bench_function("classify_one_message_50_intents", |b| {
        b.iter(|| {
            i = (i + 1) % lines.len();
            big.classify(&lines[i])
        })
    });
    g.finish();
}

/// The medians of a few timed runs, without criterion (CI).
fn quick() {
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let ex = examples();
    let train = median(
        (0..5)
            .map(|_| {
                let t = std::time::Instant::now();
                std::hint::black_box(Model::train(&ex, 0.5, 0.02));
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect(),
    );
    let (model, lines) = support();
    let big = Model::train(&ex, 0.5, 0.02);
    let per = |m: &Model| {
        median(
            (0..5)
                .map(|_| {
                    let t = std::time::Instant::now();
                    for l in &lines {
                        std::hint::black_box(m.classify(l));
                    }
                    t.elapsed().as_secs_f64() * 1e6 / lines.len() as f64
                })
                .collect(),
        )
    };
    println!("train, 50 intents x 20 examples: {train:.1} ms (median of 5)");
    println!(
        "classify one message, the support flow (8 intents): {:.1} µs",
        per(&model)
    );
    println!(
        "classify one message, 50 intents x 20 examples: {:.1} µs",
        per(&big)
    );
}

criterion_group!(benches, nlu);

fn main() {
    if std::env::args().any(|a| a == "--quick") {
        return quick();
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
