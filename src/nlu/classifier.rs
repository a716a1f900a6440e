//! Classifiers other than the built-in one: see [`Classifier`].

use std::sync::Arc;

use async_trait::async_trait;

/// What a classifier is asked.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct ClassifyInput<'a> {
    /// The customer's message, as written.
    pub text: &'a str,
    /// The conversation's language, when known.
    pub language: Option<&'a str>,
    /// The flow's intents: the only answers that count.
    pub intents: &'a [IntentInfo],
    /// The score below which an intent is not sure (`nlu.threshold`).
    pub threshold: f32,
}

impl<'a> ClassifyInput<'a> {
    /// What to ask a classifier (the engine makes these; a test may too).
    pub fn new(
        text: &'a str,
        language: Option<&'a str>,
        intents: &'a [IntentInfo],
        threshold: f32,
    ) -> ClassifyInput<'a> {
        ClassifyInput {
            text,
            language,
            intents,
            threshold,
        }
    }
}

/// One intent of a flow, as a classifier sees it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct IntentInfo {
    /// Its name (what a rule's `intent:` says).
    pub name: Box<str>,
    /// Its title in the flow's first language (the "did you mean" button).
    pub title: Box<str>,
    /// Its examples, every language together.
    pub examples: Vec<Box<str>>,
}

impl IntentInfo {
    pub(crate) fn new(name: &str, title: &str, examples: &[String]) -> IntentInfo {
        IntentInfo {
            name: name.into(),
            title: title.into(),
            examples: examples.iter().map(|e| e.as_str().into()).collect(),
        }
    }
}

/// A classifier's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// The intent's name; `None`: not sure.
    pub intent: Option<String>,
    /// How sure, from 0 to 1.
    pub confidence: f32,
}

impl Verdict {
    /// The message means `intent`, this surely.
    pub fn intent(intent: impl Into<String>, confidence: f32) -> Verdict {
        Verdict {
            intent: Some(intent.into()),
            confidence,
        }
    }

    /// No intent is sure.
    pub fn not_sure(confidence: f32) -> Verdict {
        Verdict {
            intent: None,
            confidence,
        }
    }
}

/// Why a classifier gave no answer; the built-in classifier answers then.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ClassifyError {
    /// It leaves this message to the built-in classifier.
    #[error("declined")]
    Declined,
    /// No answer in time.
    #[error("timed out")]
    Timeout,
    /// The bot's calls per minute are spent.
    #[error("over its budget of calls per minute")]
    OverBudget,
    /// Recent calls failed; it rests before the next.
    #[error("resting after failures (circuit open)")]
    CircuitOpen,
    /// Anything else.
    #[error("{0}")]
    Failed(String),
}

impl ClassifyError {
    /// The `result` label this is counted under.
    pub fn label(&self) -> &'static str {
        match self {
            ClassifyError::Declined => "declined",
            ClassifyError::Timeout => "timeout",
            ClassifyError::OverBudget => "over_budget",
            ClassifyError::CircuitOpen => "circuit_open",
            ClassifyError::Failed(_) => "error",
        }
    }
}

/// Classifies a message among a flow's intents: a classifier registered with
/// [`Registry::classifier`](crate::Registry::classifier) (an LLM, a service
/// of your own) is asked for a message's intent before the flow's rules
/// read it; when it fails, declines or is unavailable, the built-in
/// classifier answers instead, so a turn never waits on it twice and never
/// goes without an intent.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// use flowbot::{async_trait, Bot, ClassifyError, ClassifyInput, Classifier, Registry, TestConversation, Verdict};
///
/// /// Anything that mentions a parcel is about an order.
/// struct Parcels;
///
/// #[async_trait]
/// impl Classifier for Parcels {
///     fn name(&self) -> &str {
///         "parcels"
///     }
///     async fn classify(&self, input: &ClassifyInput<'_>) -> Result<Verdict, ClassifyError> {
///         if input.text.contains("parcel") {
///             Ok(Verdict::intent("track_order", 0.9))
///         } else {
///             Err(ClassifyError::Declined)
///         }
///     }
/// }
///
/// let yaml = r#"
/// nlu:
///   intents:
///     track_order: { examples: ["where is my order", "track my order"] }
///     human: { examples: ["talk to a person", "a human please"] }
/// states:
///   start:
///     say: Hi!
///     on:
///       - { intent: track_order, say: "Your order is on its way." }
///       - { intent: human, say: "A person will answer." }
/// "#;
/// let bot = Bot::from_yaml("shop.yaml", yaml, Registry::new().classifier(Parcels)).unwrap();
/// let mut chat = TestConversation::new(bot);
/// chat.send("hello").await;
/// assert_eq!(chat.send("my parcel?").await[0].text, "Your order is on its way.");
/// // Declined: the built-in classifier answers.
/// assert_eq!(chat.send("I want to talk to a person").await[0].text, "A person will answer.");
/// # });
/// ```
#[async_trait]
pub trait Classifier: Send + Sync + 'static {
    /// A short name: the `classifier` label of its metrics, and what
    /// transcripts say classified a message.
    fn name(&self) -> &str;

    /// The message's intent among `input.intents`. An answer naming
    /// another intent counts as not sure.
    async fn classify(&self, input: &ClassifyInput<'_>) -> Result<Verdict, ClassifyError>;
}

/// Counts one call of a classifier: its name, the result, seconds.
pub type Record = Arc<dyn Fn(&str, &'static str, f64) + Send + Sync>;

/// Who a turn runs for, and where its classifications are counted: set by
/// the runtime around each turn, read by classifiers that keep something
/// per bot (a budget).
#[derive(Clone)]
pub struct Caller {
    /// The bot's name (empty: the one bot of a process).
    pub bot: Arc<str>,
    /// Counts one call: classifier, result, seconds.
    pub record: Record,
}

impl std::fmt::Debug for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Caller").field("bot", &self.bot).finish()
    }
}

tokio::task_local! {
    static CALLER: Option<Caller>;
}

/// Runs `fut` (a turn) for `caller`. (A plain function returning the scope's
/// future, not an `async fn`: one of those would keep `fut` twice in its
/// state, as its argument and inside the scope.)
pub fn for_caller<F: std::future::Future>(
    caller: Option<Caller>,
    fut: F,
) -> impl std::future::Future<Output = F::Output> {
    CALLER.scope(caller, fut)
}

/// The turn's caller, if the runtime set one.
pub fn caller() -> Option<Caller> {
    CALLER.try_with(Option::clone).ok().flatten()
}

/// Answers set ahead, one per message (a test's stubbed classification);
/// with none set, what `inner` (or the built-in classifier) says.
pub(crate) struct Stub {
    pub(crate) next: std::sync::Mutex<std::collections::VecDeque<Verdict>>,
    pub(crate) inner: Option<Arc<dyn Classifier>>,
}

#[async_trait]
impl Classifier for Stub {
    fn name(&self) -> &str {
        match self.next.lock().map(|n| n.is_empty()) {
            Ok(false) | Err(_) => "stub",
            Ok(true) => self.inner.as_ref().map_or("stub", |c| c.name()),
        }
    }

    async fn classify(&self, input: &ClassifyInput<'_>) -> Result<Verdict, ClassifyError> {
        let next = self.next.lock().ok().and_then(|mut n| n.pop_front());
        match (next, &self.inner) {
            (Some(v), _) => Ok(v),
            (None, Some(inner)) => inner.classify(input).await,
            (None, None) => Err(ClassifyError::Declined),
        }
    }
}
