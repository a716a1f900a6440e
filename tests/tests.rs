//! Integration tests: one binary, one module per area. New tests go in the module
//! of their area; a new area gets a module here.
//!
//! - `browser`: the playground in headless Chromium (ignored unless asked for; `.ci/run` runs it).
//! - `classify`: the LLM classifier against a local stand-in: `flowbot run`, budget, breaker, cache.
//! - `config`: configuration errors of `flowbot run`, through the real binary.
//! - `conversations`: the YAML conversation tests in `tests/conversations/`.
//! - `engine`: turn semantics and every match kind, through `TestConversation`.
//! - `fetch`: `http:` steps end to end against a local stand-in, and the secret kept out of every file.
//! - `diagnostics`: bad flows and the problems reported.
//! - `doctor`: `flowbot doctor` against the simulator in several dialects.
//! - `replay`: the `flowbot replay` JSON-lines contract and the CLI's exit codes.
//! - `fuzz`: random YAML and random messages never panic.
//! - `handoff`: every way a handoff ends (or fails), through the simulator.
//! - `hostile`: the attack suite: hostile flows, templates, deliveries and connections.
//! - `insights`: the conversation event log and its reports, end to end and by the numbers.
//! - `lsp`: `flowbot lsp` over stdio, as an editor drives it.
//! - `new`: `flowbot new` writes a working project.
//! - `qpien`: the Qpien client against the simulator; schemas and documents.
//! - `store`: the `StateStore` contract for each store.
//! - `runtime`: `flowbot run` end to end over HTTP (webhooks, store, sender).
//! - `crash`: a real `flowbot run` killed with SIGKILL mid-burst, then restarted.
//! - `schema`: the flow schema against the example flows and bad ones.
//! - `scale`: PostgreSQL as the store, end to end, and the database going away.
//! - `sim`: the Qpien simulator: schema drift, the client against it, the bot end to end through it.
//! - `window`: WhatsApp's 24-hour window end to end, with moved clocks.
//! - `bots`: many bots in one process, each kept from holding up another.
//! - `registry`: bots added, changed, paused and removed while the process runs, on every instance.

#[path = "../examples/support_bot.rs"]
#[allow(dead_code, unreachable_pub)]
mod support_bot;

mod bots;
mod browser;
mod classify;
mod config;
mod conversations;
mod crash;
mod diagnostics;
mod doctor;
mod engine;
mod fetch;
mod fuzz;
mod handoff;
mod hostile;
mod insights;
mod lsp;
mod new;
mod qpien;
mod registry;
mod replay;
mod runtime;
mod scale;
mod schema;
mod sim;
mod store;
mod window;

/// Runs a future on a fresh current-thread runtime.
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}
