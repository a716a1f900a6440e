//! # flowbot
//!
//! A framework for chatbots on the Qpien omnichannel messaging platform. A bot is a
//! YAML flow (states, prompts, rules, variables) plus optional Rust handlers; its
//! conversations are snapshot-tested.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! use flowbot::testing::TestConversation;
//! use flowbot::handler::Registry;
//!
//! let yaml = r#"
//! version: 1
//! states:
//!   start:
//!     say:
//!       - text: "Hi! How can we help?"
//!         quick_replies: [{ id: hours, title: Opening hours }]
//!     on:
//!       - { button: hours, say: "9 to 5, Monday to Friday.", goto: start }
//! "#;
//! let mut chat = TestConversation::from_yaml(yaml, Registry::new()).unwrap();
//! chat.send("hello").await;
//! let reply = chat.tap("hours").await;
//! assert_eq!(reply[0].text, "9 to 5, Monday to Friday.");
//! # });
//! ```
//!
//! The parts, from the inside out:
//! - [`flow`]: the YAML language: loading, validation with precise diagnostics,
//!   compilation into an indexed graph.
//! - [`engine`]: the pure turn function ([`engine::Bot::turn`]) and sessions.
//! - [`handler`]: Rust extension points ([`handler::Action`], [`handler::Matcher`],
//!   [`handler::Hook`]) and the [`handler::Registry`].
//! - [`message`]: channel-neutral incoming and outgoing messages.
//! - [`testing`]: conversation tests, from Rust and from YAML files.
//! - [`qpien`]: the Qpien adapter: schema and documents, the client (tokens, rate
//!   limit, retries, idempotent sends), wire types, conversion, webhook signatures.
//! - [`store`]: where sessions, the inbox and the outbox live (memory, SQLite).
//! - [`runtime`]: `flowbot run`: webhook server, poller, dispatcher, sender, timers.
//! - [`config`]: `flowbot.toml` and `FLOWBOT_...` variables.
//! - `sim` (feature `sim`, on by default): an embedded Qpien simulator and the web
//!   playground.
//! - [`cli`]: every `flowbot` subcommand; a user's binary calls [`cli::main`] with
//!   its own registry.

pub mod cli;
pub mod config;
pub mod engine;
pub mod flow;
pub mod handler;
pub mod message;
pub mod qpien;
pub mod runtime;
#[cfg(feature = "sim")]
pub mod sim;
pub mod store;
pub mod testing;

pub use async_trait::async_trait;
pub use engine::Bot;
pub use flow::Flow;
pub use handler::Registry;
pub use minijinja::Value;
