//! The `flowbot` binary: the library's CLI, with the example support bot's
//! action registered so that `flowbot demo` runs `flows/support.yaml` out of
//! the box. Bots with their own Rust handlers call `flowbot::main` from
//! their own binary.

#[path = "../examples/support_bot.rs"]
#[allow(dead_code, unreachable_pub)]
mod support_bot;

/// mimalloc rather than the system allocator: several times less contention
/// between the runtime's threads (BENCHMARKS.md, end to end).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    flowbot::main(support_bot::registry().generic())
}
