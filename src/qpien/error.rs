//! What can go wrong talking to Qpien, and whether trying again can help.

use std::time::Duration;

/// An error from the Qpien client.
///
/// [`QpienError::is_retryable`] tells the sender whether a later attempt may
/// succeed; the client itself has already retried what it could.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum QpienError {
    /// The API key was refused (`INVALID_CLIENT`): check the client id and secret.
    #[error("Qpien refused the API key (INVALID_CLIENT): check the client id and secret{}", detail(.0))]
    InvalidClient(String),
    /// The API key lacks a scope (`INSUFFICIENT_SCOPES`).
    #[error("the Qpien API key lacks the scope `{required}` needed by {operation}: add it to the key in the Qpien app")]
    InsufficientScopes {
        /// The operation that was refused.
        operation: &'static str,
        /// The scope Qpien asked for (`extensions.requiredScope`), or `unknown`.
        required: String,
    },
    /// The token was refused again right after a refresh (`UNAUTHORIZED` /
    /// `TOKEN_EXPIRED` twice in a row).
    #[error("Qpien refused a fresh token for {operation} ({code}){}", detail(.message))]
    Unauthorized {
        /// The operation.
        operation: &'static str,
        /// `UNAUTHORIZED` or `TOKEN_EXPIRED`.
        code: String,
        /// Qpien's message.
        message: String,
    },
    /// An error reported by the API (GraphQL `errors`, or an envelope with
    /// `success: false`).
    #[error("Qpien {operation} failed: {code}{}", detail(.message))]
    Api {
        /// The operation.
        operation: &'static str,
        /// The error code (`extensions.code` or the envelope's `code`; `UNKNOWN` when absent).
        code: String,
        /// Qpien's message.
        message: String,
        /// Whether the code is one that a later attempt may clear.
        retryable: bool,
    },
    /// Over the rate limit, and still so after the retries.
    #[error("Qpien rate limit hit on {operation} (HTTP 429); reset in {reset:?}")]
    RateLimited {
        /// The operation.
        operation: &'static str,
        /// When the limit resets, as Qpien said.
        reset: Duration,
    },
    /// An HTTP status other than 200 or 429.
    #[error("Qpien answered HTTP {status} to {operation}")]
    Http {
        /// The operation.
        operation: &'static str,
        /// The status code.
        status: u16,
    },
    /// No answer: connection refused or reset, DNS, TLS...
    #[error("could not reach Qpien for {operation}: {message}")]
    Transport {
        /// The operation.
        operation: &'static str,
        /// What the HTTP client said.
        message: String,
    },
    /// No answer in time.
    #[error("Qpien did not answer {operation} within {timeout:?}")]
    Timeout {
        /// The operation.
        operation: &'static str,
        /// The configured request timeout.
        timeout: Duration,
    },
    /// The answer could not be read.
    #[error("unexpected answer from Qpien to {operation}: {message}")]
    Decode {
        /// The operation.
        operation: &'static str,
        /// What did not fit, with its path in the answer.
        message: String,
    },
    /// The answer was larger than `qpien.max_response_bytes`: not read.
    #[error("Qpien's answer to {operation} is larger than {limit} bytes (qpien.max_response_bytes); not read")]
    TooLarge {
        /// The operation.
        operation: &'static str,
        /// The limit.
        limit: usize,
    },
    /// The client's configuration or a document file is wrong.
    #[error("Qpien client configuration: {0}")]
    Config(String),
}

fn detail(message: &str) -> String {
    if message.is_empty() {
        String::new()
    } else {
        format!(": {message}")
    }
}

impl QpienError {
    /// Whether a later attempt may succeed (transport trouble, 5xx, 429, or a
    /// GraphQL code known to be transient).
    pub fn is_retryable(&self) -> bool {
        match self {
            QpienError::Api { retryable, .. } => *retryable,
            QpienError::RateLimited { .. }
            | QpienError::Transport { .. }
            | QpienError::Timeout { .. } => true,
            QpienError::Http { status, .. } => *status >= 500 || *status == 408,
            _ => false,
        }
    }

    /// The API error code, when the error came from one.
    pub fn code(&self) -> Option<&str> {
        match self {
            QpienError::InvalidClient(_) => Some("INVALID_CLIENT"),
            QpienError::InsufficientScopes { .. } => Some("INSUFFICIENT_SCOPES"),
            QpienError::Unauthorized { code, .. } | QpienError::Api { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// GraphQL error codes a later attempt may clear (ASSUMED: Qpien documents only
/// the auth codes; these are the common server-side ones).
pub(crate) const RETRYABLE_CODES: &[&str] = &[
    "INTERNAL_SERVER_ERROR",
    "INTERNAL_ERROR",
    "SERVICE_UNAVAILABLE",
    "TIMEOUT",
    "RATE_LIMITED",
    "TOO_MANY_REQUESTS",
];

/// Codes that mean "this message already exists": a createMessage retried after
/// a lost answer. They count as success (ASSUMED names).
pub(crate) const DUPLICATE_CODES: &[&str] = &["DUPLICATE_MESSAGE", "DUPLICATE_FRONT_MSG_ID"];
