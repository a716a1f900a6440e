//! Engine throughput on the support scenario (`flows/support.yaml`), one core, in
//! process: N conversations interleaved turn by turn, each running the 11-turn
//! script of the benchmark scenario, sessions kept in memory.
//!
//! Run: `cargo bench --bench engine`. Also prints the resident memory per idle
//! conversation (100,000 sessions parked in the ask state).
//!
//! `FLOWBOT_BENCH_QUICK=N cargo bench --bench engine` prints one JSON line
//! instead (N conversations, the median of 5 samples after a warm-up, as
//! criterion measures), for
//! `scripts/peer.sh`, which sets it beside the peer's.

#![allow(missing_docs)]

use criterion::{criterion_group, Criterion, Throughput};
use flowbot::{Bot, Session, Stored};
use flowbot::{Event, Incoming};
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

/// The allocator the `flowbot` binary runs with (see BENCHMARKS.md, end to end).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[path = "../examples/support_bot.rs"]
#[allow(dead_code, unreachable_pub)]
mod support_bot;

/// Polls a future that never waits (the engine with synchronous actions).
fn now<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
    }
}

fn script() -> Vec<Event> {
    let t = |s: &str| Event::Message(Incoming::text(s));
    let b = |s: &str| Event::Message(Incoming::button(s));
    let l = |s: &str| Event::Message(Incoming::list(s));
    vec![
        t("hello"),
        b("orders"),
        t("12"),
        t("123456"),
        l("track"),
        t("hi again"),
        b("orders"),
        t("222222"),
        l("return"),
        t("too big"),
        b("yes"),
    ]
}

fn bot() -> Bot {
    Bot::load(
        concat!(env!("CARGO_MANIFEST_DIR"), "/flows/support.yaml"),
        support_bot::registry(),
    )
    .unwrap()
}

/// Runs the script on `n` conversations, interleaved; returns messages sent.
fn run(bot: &Bot, ids: &[String], sessions: &mut [Option<Stored>], script: &[Event]) -> usize {
    let mut sent = 0;
    for ev in script {
        for (id, s) in ids.iter().zip(sessions.iter_mut()) {
            let turn = now(bot.step(id, s.take(), ev, 0));
            sent += turn.messages.len();
            *s = turn.stored;
        }
    }
    sent
}

fn rss_kib() -> usize {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<usize>().ok())
        })
        .map_or(0, |pages| pages * 4)
}

fn engine(c: &mut Criterion) {
    let bot = bot();
    let script = script();
    // The scenario's check: 13 outbound messages per conversation.
    let ids = vec!["c0".to_string()];
    let mut one = vec![None];
    assert_eq!(run(&bot, &ids, &mut one, &script), 13);

    let mut g = c.benchmark_group("support_scenario");
    for n in [1_000usize, 10_000] {
        let ids: Vec<String> = (0..n).map(|i| format!("c{i}")).collect();
        let mut sessions: Vec<Option<Stored>> = vec![None; n];
        g.throughput(Throughput::Elements((n * script.len()) as u64));
        g.sample_size(10);
        g.bench_function(format!("{n}_conversations"), |b| {
            b.iter(|| run(&bot, &ids, &mut sessions, &script))
        });
    }
    g.finish();

    // Memory per idle conversation: 100,000 sessions waiting for an order number.
    let n = 100_000;
    let before = rss_kib();
    let mut parked: Vec<(String, Stored)> = Vec::with_capacity(n);
    for i in 0..n {
        let id = format!("c{i}");
        let t = now(bot.step(&id, None, &script[0], 0));
        let t = now(bot.step(&id, t.stored, &script[1], 0));
        parked.push((id, t.stored.unwrap()));
    }
    let after = rss_kib();
    let per = (after.saturating_sub(before)) as f64 * 1024.0 / n as f64;
    let approx: usize = parked
        .iter()
        .map(|(_, s)| {
            s.session.approx_size() + std::mem::size_of::<Stored>() - std::mem::size_of::<Session>()
        })
        .sum::<usize>()
        / n;
    println!("memory: {per:.0} bytes resident per idle conversation (session estimate {approx} bytes), {n} conversations");
}

/// One JSON line: the median turns/s of 5 samples of `n` conversations, as
/// criterion measures (after a second of warm-up, each sample at least
/// 0.3 s of whole passes over the script).
fn quick(n: usize) {
    let bot = bot();
    let script = script();
    let ids: Vec<String> = (0..n).map(|i| format!("c{i}")).collect();
    let mut sessions: Vec<Option<Stored>> = vec![None; n];
    let pass = |sessions: &mut Vec<Option<Stored>>| {
        let sent = run(&bot, &ids, sessions, &script);
        assert_eq!(sent, 13 * n, "the scenario's 13 replies per conversation");
    };
    let warm = std::time::Instant::now();
    while warm.elapsed() < std::time::Duration::from_secs(1) {
        pass(&mut sessions);
    }
    let mut rates: Vec<f64> = (0..5)
        .map(|_| {
            let t0 = std::time::Instant::now();
            let mut passes = 0;
            while passes == 0 || t0.elapsed() < std::time::Duration::from_millis(300) {
                pass(&mut sessions);
                passes += 1;
            }
            (passes * n * script.len()) as f64 / t0.elapsed().as_secs_f64()
        })
        .collect();
    rates.sort_by(f64::total_cmp);
    println!(
        "{{\"engine\":\"flowbot\",\"conversations\":{n},\"turns\":{},\"turns_per_sec\":{:.0}}}",
        n * script.len(),
        rates[2]
    );
}

criterion_group!(benches, engine);

fn main() {
    if let Some(n) = std::env::var("FLOWBOT_BENCH_QUICK")
        .ok()
        .and_then(|n| n.parse::<usize>().ok())
    {
        return quick(n);
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
