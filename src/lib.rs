//! # flowbot
//!
//! A framework for chatbots on the Qpien omnichannel messaging platform. A bot is a
//! YAML flow (states, prompts, rules, variables) plus optional Rust handlers; its
//! conversations are snapshot-tested.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! use flowbot::prelude::*;
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
//! ## What a bot author uses
//! - **A binary with every subcommand**: [`main`] with a [`Registry`] of your
//!   handlers (`validate`, `replay`, `chat`, `graph`, `test`, `run`, `sim`, `demo`).
//! - **Handlers** for what YAML cannot say: [`Action`] (`call:` in a flow, with its
//!   [`ActionContext`]), [`Matcher`] (`match:`), [`Hook`] (around every turn, with a
//!   [`TurnRecord`]). A plain closure is an action or a matcher too;
//!   [`macro@async_trait`] is re-exported.
//! - **Tests**: [`TestConversation`] from Rust (its [`Transcript`] is made for
//!   `insta::assert_yaml_snapshot!`), and the YAML conversation tests with their
//!   snapshots through [`run_conversation_tests`].
//! - **HTTP calls** of a flow's `http:` steps: an [`HttpClient`] sends them
//!   ([`LiveHttp`] in `flowbot run`, within [`AllowList`]s; [`Offline`]
//!   elsewhere); a test answers them by name with [`HttpMocks`].
//! - **Messages**: [`Incoming`], [`Outgoing`], [`Event`], [`Channel`] and the rich
//!   message parts ([`Choice`], [`ListMessage`], [`InfoButton`], [`Media`]).
//! - **The engine**, for embedding: [`Bot::step`] is the one entry point of a
//!   turn; it takes and returns a conversation's [`Stored`] form.
//! - **The production runtime**, for embedding: [`start`] with a [`Config`].
//! - **Time**: [`Millis`], [`Clock`], [`ManualClock`], [`ShiftedClock`].
//!
//! `use flowbot::prelude::*;` brings the handler traits, the registry, the
//! messages and the test conversation.
//!
//! ## How it is built
//! The flow language (`src/flow/`) is loaded, validated with precise diagnostics
//! and compiled into an indexed graph; the engine (`src/engine/`) runs turns on it
//! without I/O; the runtime (`src/runtime/`) receives Qpien's webhooks and polls,
//! keeps sessions, inbox and outbox in a store (`src/store/`) and answers through
//! the Qpien adapter (`src/qpien/`, the one place that knows Qpien); `src/sim/` is
//! an embedded Qpien simulator. Those modules are private: what is public is
//! listed above. `internals` (hidden from the docs) exists for this crate's own
//! tests and benchmarks and is not part of the API.

// The project template's code (`flowbot new`) names this crate `flowbot`,
// as a bot's own code does.
extern crate self as flowbot;

mod cli;
mod config;
mod engine;
mod fetch;
mod files;
mod flow;
mod handler;
mod insights;
mod message;
mod nlu;
mod qpien;
mod retry;
mod runtime;
mod sealed;
#[cfg(feature = "sim")]
mod sim;
mod store;
mod testing;
mod text;
mod time;

pub use async_trait::async_trait;
pub use minijinja::Value;

pub use cli::main;
pub use config::{Config, ConfigError};
pub use engine::{Bot, BotError, Frame, Offered, OptionKind, Session, Step, Stored, Turn};
pub use fetch::{
    AllowList, HttpClient, HttpConfig, HttpError, HttpMock, HttpMocks, HttpRequest, HttpResponse,
    LiveHttp, Offline,
};
pub use flow::{Diagnostic, Diagnostics, Flow, FlowLimits, HandlerNames, LoadError, Severity};
pub use handler::{
    Action, ActionContext, ActionError, ActionOutcome, Captures, Hook, Matcher, Registry,
    TurnRecord, Vars,
};
pub use message::{
    ButtonKind, Capabilities, Channel, Choice, Contact, Effect, Event, Incoming, InfoButton,
    ListMessage, ListSection, Media, MediaKind, Outgoing, Start, StartMode, TemplateMessage,
};
#[cfg(feature = "llm")]
pub use nlu::llm::LlmClassifier;
pub use nlu::llm::LlmConfig;
pub use nlu::{Classifier, ClassifyError, ClassifyInput, IntentInfo, Verdict};
pub use runtime::{check, shutdown_signal, start, Drained, Running, RuntimeError};
pub use testing::suite::{
    run_dir as run_conversation_tests, run_one as run_conversation_test,
    test_files as conversation_test_files, CaseReport, SuiteReport, Update,
};
pub use testing::{Customer, Exchange, Mock, MockCall, TestConversation, Transcript};
pub use time::{Clock, ManualClock, Millis, ShiftedClock, SystemClock};

/// What most bots need: `use flowbot::prelude::*;`.
pub mod prelude {
    pub use crate::{
        async_trait, Action, ActionContext, ActionError, ActionOutcome, Bot, Channel, Classifier,
        ClassifyError, ClassifyInput, Event, Hook, HttpMock, HttpMocks, Incoming, Matcher, Mock,
        Outgoing, Registry, TestConversation, Value, Verdict,
    };
}

/// The crate's insides, for its own tests and benchmarks. Not part of the API:
/// anything here may change in any release.
#[doc(hidden)]
pub mod internals {
    /// The CLI's pieces.
    pub mod cli {
        pub use crate::cli::*;
    }
    /// `flowbot.toml`.
    pub mod config {
        pub use crate::config::*;
    }
    /// The flow language's compiled form.
    pub mod fetch {
        pub use crate::fetch::*;
    }
    pub mod nlu {
        pub use crate::nlu::*;
    }
    pub mod flow {
        pub use crate::flow::*;
    }
    /// The Qpien adapter.
    pub mod qpien {
        pub use crate::qpien::*;
    }
    /// The runtime's payloads and metrics.
    pub mod runtime {
        pub use crate::runtime::*;
    }
    /// The simulator.
    #[cfg(feature = "sim")]
    pub mod sim {
        pub use crate::sim::*;
    }
    /// The conversation event log and its reports.
    pub mod insights {
        pub use crate::insights::*;
    }
    /// The retry policy.
    pub mod retry {
        pub use crate::retry::*;
    }
    /// Secrets at rest.
    pub mod sealed {
        pub use crate::sealed::*;
    }
    /// Stores.
    pub mod store {
        pub use crate::store::*;
    }
    /// Time helpers.
    pub mod time {
        pub use crate::time::*;
    }
    /// Testing helpers beyond the root's.
    pub mod testing {
        pub use crate::testing::*;
    }
}
