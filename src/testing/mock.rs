//! [`Mock`]: an action stand-in, so that a flow with actions is tested
//! without their real work (a shop's API, a payment): it sets variables and
//! goes on, jumps to a state, or fails, and each call can answer differently.
//! YAML conversation tests write the same under `mocks:`.

use indexmap::IndexMap;
use serde::de;
use serde::{Deserialize, Deserializer};
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::handler::{Action, ActionContext, ActionError, ActionOutcome};

/// What one call of a mocked action does.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MockCall {
    /// Variables it sets.
    #[serde(default)]
    pub set: IndexMap<String, serde_json::Value>,
    /// The state it jumps to (else the state goes on).
    pub goto: Option<String>,
    /// It fails with this message (the flow's error path runs).
    pub fail: Option<String>,
}

/// An action that does what it is told, call after call (the last answer
/// repeats): register it under the name of the action it stands for.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// use flowbot::{Mock, Registry, TestConversation};
/// let yaml = r#"
/// states:
///   start:
///     call: { action: lookup_order }
///     say: "Your order is {{ status }}."
///     on_error: sorry
///   sorry: { say: "We cannot look it up now." }
/// "#;
/// let registry = Registry::new().action(
///     "lookup_order",
///     Mock::new().set("status", "shipped").then(Mock::fail("timeout")),
/// );
/// let mut chat = TestConversation::from_yaml(yaml, registry).unwrap();
/// assert_eq!(chat.send("hi").await[0].text, "Your order is shipped.");
/// assert_eq!(chat.var("status").unwrap().as_str(), Some("shipped"));
/// # });
/// ```
#[derive(Debug)]
pub struct Mock {
    calls: Vec<MockCall>,
    count: AtomicUsize,
}

impl Default for Mock {
    fn default() -> Self {
        Mock::new()
    }
}

impl Clone for Mock {
    fn clone(&self) -> Self {
        Mock {
            calls: self.calls.clone(),
            count: AtomicUsize::new(self.count.load(Ordering::Relaxed)),
        }
    }
}

impl Mock {
    /// An action that sets nothing and goes on.
    pub fn new() -> Mock {
        Mock::from_calls(vec![MockCall::default()])
    }

    /// An action that fails with `message`.
    pub fn fail(message: impl Into<String>) -> Mock {
        Mock::from_calls(vec![MockCall {
            fail: Some(message.into()),
            ..MockCall::default()
        }])
    }

    /// An action that answers each call in turn (the last one repeats).
    /// No calls: as [`Mock::new`].
    pub fn from_calls(calls: Vec<MockCall>) -> Mock {
        let calls = if calls.is_empty() {
            vec![MockCall::default()]
        } else {
            calls
        };
        Mock {
            calls,
            count: AtomicUsize::new(0),
        }
    }

    fn last(&mut self) -> &mut MockCall {
        self.calls.last_mut().expect("a mock has at least one call")
    }

    /// The (last) call also sets a variable.
    pub fn set(mut self, name: impl Into<String>, value: impl serde::Serialize) -> Mock {
        let value = serde_json::to_value(value).unwrap_or_default();
        self.last().set.insert(name.into(), value);
        self
    }

    /// The (last) call jumps to a state.
    pub fn goto(mut self, state: impl Into<String>) -> Mock {
        self.last().goto = Some(state.into());
        self
    }

    /// After this mock's calls, `next`'s.
    pub fn then(mut self, next: Mock) -> Mock {
        self.calls.extend(next.calls);
        self
    }

    /// How many times it was called.
    pub fn calls(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// The states its calls jump to (for checking them against a flow).
    pub fn targets(&self) -> impl Iterator<Item = &str> {
        self.calls.iter().filter_map(|c| c.goto.as_deref())
    }
}

#[async_trait::async_trait]
impl Action for Mock {
    async fn run(&self, ctx: &mut ActionContext<'_>) -> Result<ActionOutcome, ActionError> {
        let n = self.count.fetch_add(1, Ordering::Relaxed);
        let call = &self.calls[n.min(self.calls.len() - 1)];
        if let Some(message) = &call.fail {
            return Err(ActionError::new(message.clone()));
        }
        for (name, value) in &call.set {
            ctx.set(name, minijinja::Value::from_serialize(value));
        }
        Ok(match &call.goto {
            Some(state) => ActionOutcome::Goto(state.clone()),
            None => ActionOutcome::Continue,
        })
    }
}

/// A mock as YAML writes it: for an action, one call (`{ set: {..} }`,
/// `{ goto: x }`, `{ fail: why }`) or a list of them, one per call; for an
/// `http:` step (by its name), one answer (`{ status: 200, json: {..} }`,
/// `{ timeout: true }`) or a list of them, one per request.
#[derive(Debug, Clone)]
pub enum MockDoc {
    /// An action's calls.
    Action(Vec<MockCall>),
    /// An `http:` step's answers.
    Http(Vec<crate::fetch::HttpMockCall>),
}

impl Default for MockDoc {
    fn default() -> Self {
        MockDoc::Action(Vec::new())
    }
}

const ACTION_KEYS: &[&str] = &["set", "goto", "fail"];
const HTTP_KEYS: &[&str] = &["status", "json", "timeout"];

impl<'de> Deserialize<'de> for MockDoc {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let calls = match serde_json::Value::deserialize(d)? {
            serde_json::Value::Array(list) => list,
            one @ serde_json::Value::Object(_) => vec![one],
            _ => {
                return Err(de::Error::custom(
                    "a mock is a map (set, goto or fail for an action; status, json or timeout for an http step), or a list of them (one per call)",
                ))
            }
        };
        let is_http = calls.iter().any(|c| {
            c.as_object()
                .is_some_and(|m| m.keys().any(|k| HTTP_KEYS.contains(&k.as_str())))
        });
        let is_action = calls.iter().any(|c| {
            c.as_object()
                .is_some_and(|m| m.keys().any(|k| ACTION_KEYS.contains(&k.as_str())))
        });
        if is_http && is_action {
            return Err(de::Error::custom(
                "a mock answers an action (set, goto, fail) or an http step (status, json, timeout), not both",
            ));
        }
        let parse = |e: serde_json::Error| de::Error::custom(e.to_string());
        match is_http {
            true => calls
                .into_iter()
                .map(serde_json::from_value)
                .collect::<Result<_, _>>()
                .map(MockDoc::Http)
                .map_err(parse),
            false => calls
                .into_iter()
                .map(serde_json::from_value)
                .collect::<Result<_, _>>()
                .map(MockDoc::Action)
                .map_err(parse),
        }
    }
}
