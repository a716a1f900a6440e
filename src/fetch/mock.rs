//! [`HttpMocks`]: answers to a flow's `http:` requests by the step's name,
//! for tests (`mocks:` in a YAML conversation test writes the same).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;

use super::{HttpClient, HttpError, HttpRequest, HttpResponse, Offline};

/// What one request of a mocked step gets.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpMockCall {
    /// The status (default 200); not 2xx: the step fails.
    #[serde(default = "ok")]
    pub status: u16,
    /// The JSON answer.
    #[serde(default)]
    pub json: serde_json::Value,
    /// No answer comes: the step fails as on a timeout.
    #[serde(default)]
    pub timeout: bool,
}

fn ok() -> u16 {
    200
}

impl Default for HttpMockCall {
    fn default() -> Self {
        HttpMockCall {
            status: 200,
            json: serde_json::Value::Null,
            timeout: false,
        }
    }
}

/// The answers of one mocked step, request after request (the last one
/// repeats).
///
/// ```
/// use flowbot::HttpMock;
/// let m = HttpMock::json(serde_json::json!({ "status": "shipped" }))
///     .then(HttpMock::status(503))
///     .then(HttpMock::timeout());
/// # let _ = m;
/// ```
#[derive(Debug, Clone)]
pub struct HttpMock {
    calls: Vec<HttpMockCall>,
}

impl HttpMock {
    /// A 200 answer with this JSON.
    pub fn json(json: serde_json::Value) -> HttpMock {
        HttpMock::from_calls(vec![HttpMockCall {
            json,
            ..HttpMockCall::default()
        }])
    }

    /// An answer with this status and no body.
    pub fn status(status: u16) -> HttpMock {
        HttpMock::from_calls(vec![HttpMockCall {
            status,
            ..HttpMockCall::default()
        }])
    }

    /// No answer: the step fails as on a timeout.
    pub fn timeout() -> HttpMock {
        HttpMock::from_calls(vec![HttpMockCall {
            timeout: true,
            ..HttpMockCall::default()
        }])
    }

    /// Answers in turn (the last repeats); none: a 200 with no body.
    pub fn from_calls(calls: Vec<HttpMockCall>) -> HttpMock {
        let calls = match calls.is_empty() {
            true => vec![HttpMockCall::default()],
            false => calls,
        };
        HttpMock { calls }
    }

    /// After this mock's answers, `next`'s.
    pub fn then(mut self, next: HttpMock) -> HttpMock {
        self.calls.extend(next.calls);
        self
    }
}

/// An [`HttpClient`] that answers each step by its name from its
/// [`HttpMock`], and sends the requests of steps it has no mock for to
/// another client ([`Offline`] unless told otherwise). It keeps every
/// request it was given, for a test to look at.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// use flowbot::{HttpMock, HttpMocks, Registry, TestConversation};
/// let yaml = r#"
/// settings: { http: { allow: [shop.example.com] } }
/// states:
///   start:
///     http:
///       url: "https://shop.example.com/orders/42"
///       save: { status: /status }
///     say: "Your order is {{ status }}."
/// "#;
/// let mocks = HttpMocks::new().on("start", HttpMock::json(serde_json::json!({ "status": "shipped" })));
/// let mut chat = TestConversation::from_yaml(yaml, Registry::new().http(mocks.clone())).unwrap();
/// assert_eq!(chat.send("hi").await[0].text, "Your order is shipped.");
/// assert_eq!(mocks.requests()[0].url, "https://shop.example.com/orders/42");
/// # });
/// ```
#[derive(Clone)]
pub struct HttpMocks {
    mocks: Arc<BTreeMap<String, Arc<(HttpMock, AtomicUsize)>>>,
    rest: Arc<dyn HttpClient>,
    seen: Arc<Mutex<Vec<HttpRequest>>>,
}

impl std::fmt::Debug for HttpMocks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpMocks")
            .field("mocks", &self.mocks.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Default for HttpMocks {
    fn default() -> Self {
        HttpMocks::new()
    }
}

impl HttpMocks {
    /// No mocks; the rest goes to [`Offline`].
    pub fn new() -> HttpMocks {
        HttpMocks {
            mocks: Arc::default(),
            rest: Arc::new(Offline),
            seen: Arc::default(),
        }
    }

    /// Step `name`'s requests get `mock`'s answers.
    pub fn on(mut self, name: impl Into<String>, mock: HttpMock) -> HttpMocks {
        Arc::make_mut(&mut self.mocks).insert(name.into(), Arc::new((mock, AtomicUsize::new(0))));
        self
    }

    /// Requests of steps without a mock go to `client` (the network, with
    /// `--live-http`).
    pub fn otherwise(mut self, client: Arc<dyn HttpClient>) -> HttpMocks {
        self.rest = client;
        self
    }

    /// The names mocked.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.mocks.keys().map(String::as_str)
    }

    /// Every request given so far, in order (secrets as markers, shown as
    /// `{{ secret.NAME }}` by their `Display`).
    pub fn requests(&self) -> Vec<HttpRequest> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

#[async_trait::async_trait]
impl HttpClient for HttpMocks {
    async fn send(&self, request: &HttpRequest) -> Result<HttpResponse, HttpError> {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(request.clone());
        let Some((mock, count)) = self.mocks.get(&request.name).map(|m| &**m) else {
            return self.rest.send(request).await;
        };
        let n = count.fetch_add(1, Ordering::Relaxed);
        let call = &mock.calls[n.min(mock.calls.len() - 1)];
        if call.timeout {
            return Err(HttpError::Timeout(
                request.timeout.min(Duration::from_secs(30)),
            ));
        }
        if !(200..300).contains(&call.status) {
            return Err(HttpError::Status {
                status: call.status,
            });
        }
        Ok(HttpResponse {
            status: call.status,
            json: call.json.clone(),
        })
    }
}
