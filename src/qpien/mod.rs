//! The Qpien adapter: everything flowbot knows or assumes about Qpien's API.
//!
//! Qpien documents its operations, field names, error codes, rate limit and
//! webhook signature (FACT) but not its GraphQL input and response blocks. What
//! flowbot had to guess (ASSUMED) lives here and nowhere else, named as such, so
//! that matching the real schema is a change to this module only:
//! - `schema.graphql` and `documents/*.graphql`: the operations and their shapes
//!   (validated against each other by the tests; replaceable at run time through
//!   [`QpienConfig::documents_dir`]);
//! - [`types`]: the wire types, read leniently;
//! - the `response` module reads: bare results and `{success, data, code, message}`
//!   envelopes, errors in GraphQL `errors` or in the envelope;
//! - [`convert`]: outgoing messages to `createMessage` inputs and back;
//! - [`webhook`]: the signature and the payload;
//! - [`ingest`]: deliveries and polled messages become events (or are ignored, with why);
//! - [`templates`]: the account's WhatsApp templates, and how one is sent;
//! - the `batch` module: replies of several conversations in one request
//!   (ASSUMED: Qpien runs a mutation of several root fields).
//!
//! [`QpienClient`] is the production client: token cache with single-flight
//! renewal, a fair shared rate limit, retries with backoff, idempotent creates.

mod batch;
pub mod client;
pub mod config;
pub mod convert;
pub mod dialect;
pub mod doctor;
pub mod documents;
pub mod error;
pub mod ingest;
pub mod limit;
mod response;
pub mod senders;
pub mod templates;
pub mod types;
pub mod webhook;

pub use batch::BatchConfig;
pub use client::{ClientStats, QpienClient, Sent};
pub use config::{
    AuthScheme, Dialect, QpienConfig, RateLimitConfig, RetryConfig, Secret, SenderKind,
    WhatsappOperation,
};
pub use convert::{front_msg_id, plan_replies, to_incoming, OutboundMessage};
pub use documents::{Documents, Operation};
pub use error::QpienError;
pub use ingest::{Delivery, Ignored, Ingested, Intake};
pub use senders::SenderTypes;

/// The schema the embedded documents are written against.
pub const SCHEMA: &str = include_str!("schema.graphql");
