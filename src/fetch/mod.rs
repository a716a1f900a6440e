//! A flow's HTTP requests: the `http:` step.
//!
//! A state with `http:` calls an endpoint when it is entered (after `call:`,
//! before `set:`), saves the status and values of the JSON answer into
//! variables, and takes the error path when the call fails. The engine stays
//! pure: it renders the request ([`HttpRequest`]) from the flow's templates and
//! hands it to the bot's [`HttpClient`], as it hands a `call:` to an action.
//! Which client that is depends on where the bot runs:
//!
//! - `flowbot run`: [`LiveHttp`], which calls the network within the flow's
//!   `settings.http.allow` and the process's `http.allow` (see [`AllowList`]),
//!   refuses loopback, private, link-local and metadata addresses unless they
//!   are listed (after DNS resolution, and on every redirect), reads at most
//!   `limits.http_body_bytes` of an answer and retries idempotent requests
//!   through the one retry policy.
//! - `replay`, `chat`, `test` and [`TestConversation`](crate::TestConversation):
//!   [`Offline`], unless `--live-http` is given; a test answers a request by
//!   its name with [`HttpMocks`] (`mocks:` in a YAML test).
//!
//! **Secrets** (`{{ secret.NAME }}`, allowed only in an `http:` step's URL,
//! query, headers and body) never enter the engine: a request carries a
//! marker in their place, and only [`LiveHttp`] puts the value in, from
//! `FLOWBOT_SECRET_NAME` or the file `NAME` of `http.secrets_dir`, at the
//! moment it sends. Sessions, transcripts, snapshots, captures, traces and
//! logs see the marker, shown as `{{ secret.NAME }}`, never the value.

mod allow;
mod live;
mod mock;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

pub use allow::AllowList;
pub use live::{HttpConfig, LiveHttp, Secrets};
pub use mock::HttpMockCall;
pub use mock::{HttpMock, HttpMocks};

/// The longest a request may wait for its answer.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(30);

/// A request's wait when the step names none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// What a secret's value is replaced with in a rendered request: its name
/// between two private-use characters, which no text a customer can send
/// puts there by accident and which is displayed as `{{ secret.NAME }}`.
const OPEN: char = '\u{E000}';
const CLOSE: char = '\u{E001}';

/// The marker that stands for secret `name` in a rendered request.
pub(crate) fn marker(name: &str) -> String {
    format!("{OPEN}{name}{CLOSE}")
}

/// Replaces each secret marker of `text` with what `value` gives for its
/// name (or the error it gives).
pub(crate) fn fill<E>(
    text: &str,
    mut value: impl FnMut(&str) -> Result<String, E>,
) -> Result<String, E> {
    if !text.contains(OPEN) {
        return Ok(text.to_owned());
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find(OPEN) {
        out.push_str(&rest[..start]);
        let after = &rest[start + OPEN.len_utf8()..];
        match after.find(CLOSE) {
            Some(end) => {
                out.push_str(&value(&after[..end])?);
                rest = &after[end + CLOSE.len_utf8()..];
            }
            None => {
                out.push_str(&rest[start..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// `text` as it may be shown: each secret as `{{ secret.NAME }}`.
pub fn shown(text: &str) -> String {
    fill(text, |name| {
        Ok::<_, std::convert::Infallible>(format!("{{{{ secret.{name} }}}}"))
    })
    .unwrap_or_else(|e| match e {})
}

/// One request of an `http:` step, rendered from the flow's templates.
/// Secrets are markers in it (see the module docs); [`fmt::Display`] shows
/// them as `{{ secret.NAME }}`.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpRequest {
    /// The step's name (`http.name`, else its state's name): what a test's
    /// mocks answer by.
    pub name: String,
    /// `GET`, `POST`, `PUT`, `PATCH`, `DELETE` or `HEAD`.
    pub method: String,
    /// The URL, before `query` is added.
    pub url: String,
    /// Query parameters, added to the URL (encoded).
    pub query: Vec<(String, String)>,
    /// Headers.
    pub headers: Vec<(String, String)>,
    /// The JSON body, if any.
    pub body: Option<serde_json::Value>,
    /// How long one attempt may wait for the answer.
    pub timeout: Duration,
    /// How many times an idempotent request is tried again after a timeout,
    /// a connection error or a 429/502/503/504.
    pub retries: u32,
    /// The flow's `settings.http.allow`.
    pub allow: Arc<AllowList>,
}

impl HttpRequest {
    /// Whether trying it again cannot do a thing twice.
    pub fn idempotent(&self) -> bool {
        matches!(
            self.method.as_str(),
            "GET" | "HEAD" | "PUT" | "DELETE" | "OPTIONS"
        )
    }
}

impl fmt::Display for HttpRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.method, shown(&self.url))
    }
}

/// The answer to a request that succeeded (a 2xx status).
#[derive(Debug, Clone, PartialEq)]
pub struct HttpResponse {
    /// Its status.
    pub status: u16,
    /// Its body as JSON (`null` when empty).
    pub json: serde_json::Value,
}

impl HttpResponse {
    /// A 200 answer with this JSON.
    pub fn json(json: serde_json::Value) -> HttpResponse {
        HttpResponse { status: 200, json }
    }
}

/// Why a request failed; the flow's error path runs.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum HttpError {
    /// The answer's status was not 2xx.
    #[error("answered {status}")]
    Status {
        /// The status.
        status: u16,
    },
    /// No answer within the timeout.
    #[error("no answer within {}", humantime::format_duration(*.0))]
    Timeout(Duration),
    /// The answer was not JSON.
    #[error("the answer is not JSON: {0}")]
    BadJson(String),
    /// The answer was larger than `limits.http_body_bytes`.
    #[error("the answer is larger than {0} bytes (limits.http_body_bytes)")]
    TooLarge(u64),
    /// The request was not made: a host or an address not allowed, a
    /// redirect refused, a secret not set, a URL that does not parse.
    #[error("refused: {0}")]
    Refused(String),
    /// The connection failed.
    #[error("{0}")]
    Network(String),
    /// This client makes no network calls (tests, `replay`, `chat`).
    #[error(
        "no network here: give the request `{0}` a mock (`mocks:` in a YAML test), or pass --live-http"
    )]
    Offline(String),
}

impl HttpError {
    /// The status, if the server answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            HttpError::Status { status } => Some(*status),
            _ => None,
        }
    }
}

/// Sends a flow's `http:` requests. Register one with
/// [`Registry::http`](crate::Registry::http); [`LiveHttp`] in `flowbot run`,
/// [`Offline`] elsewhere, [`HttpMocks`] in tests.
#[async_trait::async_trait]
pub trait HttpClient: Send + Sync + 'static {
    /// Sends the request; a non-2xx status is an error.
    async fn send(&self, request: &HttpRequest) -> Result<HttpResponse, HttpError>;
}

/// A client that calls nothing: every request fails with
/// [`HttpError::Offline`], which names the request to mock.
#[derive(Debug, Clone, Copy, Default)]
pub struct Offline;

#[async_trait::async_trait]
impl HttpClient for Offline {
    async fn send(&self, request: &HttpRequest) -> Result<HttpResponse, HttpError> {
        Err(HttpError::Offline(request.name.clone()))
    }
}

/// Where a JSON pointer (RFC 6901) is malformed, if it is.
pub(crate) fn pointer_error(pointer: &str) -> Option<String> {
    if pointer.is_empty() {
        return None;
    }
    if !pointer.starts_with('/') {
        return Some(format!(
            "`{pointer}` is not a JSON pointer: it starts with `/` (`/{pointer}`), or is empty for the whole answer"
        ));
    }
    let mut chars = pointer.chars();
    while let Some(c) = chars.next() {
        if c == '~' && !matches!(chars.next(), Some('0' | '1')) {
            return Some(format!(
                "`{pointer}`: `~` is written `~0` and `/` inside a key `~1` in a JSON pointer"
            ));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_markers_shown_by_name_and_filled_only_when_asked() {
        let url = format!("https://x.test/a?k={}&b={}", marker("KEY"), marker("B"));
        assert_eq!(
            shown(&url),
            "https://x.test/a?k={{ secret.KEY }}&b={{ secret.B }}"
        );
        let filled = fill(&url, |n| Ok::<_, ()>(n.to_lowercase())).unwrap();
        assert_eq!(filled, "https://x.test/a?k=key&b=b");
        assert_eq!(fill(&url, |_| Err::<String, _>("unset")), Err("unset"));
        assert_eq!(shown("plain"), "plain");
        // An unclosed marker is kept as it is.
        assert_eq!(shown("a\u{E000}b"), "a\u{E000}b");
    }

    #[test]
    fn pointers_are_checked() {
        assert_eq!(pointer_error(""), None);
        assert_eq!(pointer_error("/a/0/b~1c~0"), None);
        assert!(pointer_error("status").unwrap().contains("`/status`"));
        assert!(pointer_error("/a~2").unwrap().contains("~0"));
    }
}
