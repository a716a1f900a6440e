//! The OpenAI-compatible client behind [`LlmClassifier`] (the `llm`
//! feature): see [`LlmClassifier`].

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::LlmConfig;
use crate::nlu::classifier::{caller, Classifier, ClassifyError, ClassifyInput, Verdict};

/// The most bots an LLM classifier keeps a budget and a breaker for (the
/// least recently seen go first).
const BOTS: usize = 20_000;

/// The most characters of a message sent to the endpoint.
const MAX_TEXT: usize = 1_000;

/// The largest answer read.
const MAX_ANSWER: usize = 64 * 1024;

/// One bot's budget and breaker.
#[derive(Debug)]
struct Guard {
    /// Calls left (a token bucket, refilled continuously).
    tokens: f64,
    refilled: Instant,
    /// Failures in a row.
    failures: u32,
    /// Open until then.
    open_until: Option<Instant>,
    /// A call is trying a half-open circuit.
    probing: bool,
    seen: u64,
}

/// What [`LlmClassifier`] shares between calls.
#[derive(Default)]
struct State {
    guards: HashMap<Arc<str>, Guard>,
    tick: u64,
    cache: HashMap<String, Verdict>,
    order: VecDeque<String>,
}

/// An OpenAI-compatible chat endpoint (`POST {base_url}/chat/completions`)
/// as a [`Classifier`], configured by [`LlmConfig`] (`[nlu.llm]` in
/// flowbot.toml; the key read from the environment variable it names).
///
/// It is shown the flow's intents (names, titles, a few examples) and may
/// only answer with one of them (anything else is "not sure"). Around each
/// call: a cache by normalized text and intent set, a budget of calls per
/// minute per bot, a timeout and at most one retry, and a circuit breaker;
/// whenever it gives no answer, the flow's built-in classifier answers.
/// Calls are counted in `flowbot_classify_total{classifier="llm",result}`.
///
/// ```no_run
/// use flowbot::{LlmClassifier, LlmConfig, Registry};
/// let llm = LlmClassifier::new(LlmConfig {
///     base_url: "http://127.0.0.1:11434/v1".into(), // a local server, say
///     model: "llama3.1".into(),
///     ..LlmConfig::default()
/// })
/// .expect("a valid configuration");
/// let registry = Registry::new().classifier(llm);
/// ```
pub struct LlmClassifier {
    config: LlmConfig,
    key: Option<String>,
    url: String,
    client: reqwest::Client,
    state: Mutex<State>,
}

impl std::fmt::Debug for LlmClassifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlmClassifier")
            .field("url", &self.url)
            .field("model", &self.config.model)
            .finish_non_exhaustive()
    }
}

/// Whether an attempt may be made again.
enum Attempt {
    Again(ClassifyError),
    Final(ClassifyError),
}

impl LlmClassifier {
    /// A classifier for `config`, its key read from the environment now.
    pub fn new(config: LlmConfig) -> Result<LlmClassifier, String> {
        config.check()?;
        let key = std::env::var(&config.key_env)
            .ok()
            .filter(|k| !k.is_empty());
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("nlu.llm: {e}"))?;
        Ok(LlmClassifier {
            url: format!("{}/chat/completions", config.base_url.trim_end_matches('/')),
            key,
            config,
            client,
            state: Mutex::new(State::default()),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a call from `bot`'s budget and checks its breaker.
    fn admit(&self, bot: &Arc<str>) -> Result<(), ClassifyError> {
        let now = Instant::now();
        let per_minute = f64::from(self.config.calls_per_minute);
        let mut st = self.state();
        st.tick += 1;
        let tick = st.tick;
        if !st.guards.contains_key(bot) && st.guards.len() >= BOTS {
            let oldest = st
                .guards
                .iter()
                .min_by_key(|(_, g)| g.seen)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                st.guards.remove(&k);
            }
        }
        let g = st.guards.entry(bot.clone()).or_insert(Guard {
            tokens: per_minute,
            refilled: now,
            failures: 0,
            open_until: None,
            probing: false,
            seen: tick,
        });
        g.seen = tick;
        if let Some(until) = g.open_until {
            if now < until || g.probing {
                return Err(ClassifyError::CircuitOpen);
            }
            // Half open: this call tries it.
            g.probing = true;
        }
        let elapsed = now.duration_since(g.refilled).as_secs_f64();
        g.tokens = (g.tokens + elapsed * per_minute / 60.0).min(per_minute);
        g.refilled = now;
        if g.tokens < 1.0 {
            g.probing = false;
            return Err(ClassifyError::OverBudget);
        }
        g.tokens -= 1.0;
        Ok(())
    }

    /// Notes how a call went for `bot`'s breaker.
    fn settle(&self, bot: &Arc<str>, ok: bool) {
        let mut st = self.state();
        let Some(g) = st.guards.get_mut(bot) else {
            return;
        };
        g.probing = false;
        if ok {
            g.failures = 0;
            g.open_until = None;
        } else {
            g.failures += 1;
            if g.failures >= self.config.failures_to_open || g.open_until.is_some() {
                g.open_until = Some(Instant::now() + self.config.open_for);
            }
        }
    }

    fn cached(&self, key: &str) -> Option<Verdict> {
        self.state().cache.get(key).cloned()
    }

    fn keep(&self, key: String, v: &Verdict) {
        if self.config.cache_entries == 0 {
            return;
        }
        let mut st = self.state();
        if st.cache.insert(key.clone(), v.clone()).is_none() {
            st.order.push_back(key);
            while st.order.len() > self.config.cache_entries {
                if let Some(old) = st.order.pop_front() {
                    st.cache.remove(&old);
                }
            }
        }
    }

    /// The request's messages: the intents, then the customer's text.
    fn prompt(&self, input: &ClassifyInput<'_>) -> String {
        let mut p = String::from(
            "You classify a customer's message to a business by its intent. \
             The intents, each with its name, its title and examples:\n",
        );
        for i in input.intents {
            p.push_str(&format!("- {}: {}", i.name, i.title));
            let ex: Vec<&str> = i
                .examples
                .iter()
                .take(self.config.examples_per_intent)
                .map(|e| &**e)
                .collect();
            if !ex.is_empty() {
                p.push_str(&format!(" (for example: {})", ex.join(" | ")));
            }
            p.push('\n');
        }
        p.push_str(
            "Answer with JSON only: {\"intent\": NAME, \"confidence\": a number from 0 to 1}, \
             NAME being one of the names above, or {\"intent\": null, \"confidence\": 0} \
             when none fits. The message may be in any language (Turkish, English...).",
        );
        if let Some(l) = input.language {
            p.push_str(&format!(" The conversation's language: {l}."));
        }
        p
    }

    /// One call.
    async fn call(
        &self,
        input: &ClassifyInput<'_>,
        text: &str,
    ) -> Result<(Verdict, &'static str), Attempt> {
        let body = Request {
            model: &self.config.model,
            temperature: 0.0,
            max_tokens: 60,
            messages: [
                Message {
                    role: "system",
                    content: &self.prompt(input),
                },
                Message {
                    role: "user",
                    content: text,
                },
            ],
        };
        let body = serde_json::to_vec(&body)
            .map_err(|e| Attempt::Final(ClassifyError::Failed(e.to_string())))?;
        let mut req = self
            .client
            .post(&self.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        if let Some(k) = &self.key {
            req = req.bearer_auth(k);
        }
        let resp = req.send().await.map_err(|e| {
            if e.is_timeout() {
                Attempt::Again(ClassifyError::Timeout)
            } else {
                Attempt::Again(ClassifyError::Failed(format!(
                    "cannot reach the endpoint: {}",
                    e.without_url()
                )))
            }
        })?;
        let status = resp.status();
        let bytes = read_capped(resp).await.map_err(|e| {
            if e.is_timeout() {
                Attempt::Again(ClassifyError::Timeout)
            } else {
                Attempt::Again(ClassifyError::Failed(e.without_url().to_string()))
            }
        })?;
        if !status.is_success() {
            let again = status.is_server_error() || status.as_u16() == 429;
            let e = ClassifyError::Failed(format!("the endpoint answered {status}"));
            return Err(if again {
                Attempt::Again(e)
            } else {
                Attempt::Final(e)
            });
        }
        let answer: Answer = serde_json::from_slice(&bytes).map_err(|e| {
            Attempt::Final(ClassifyError::Failed(format!("not a chat completion: {e}")))
        })?;
        let content = answer
            .choices
            .first()
            .map(|c| c.message.content.as_str())
            .unwrap_or("");
        Ok(parse(content, input))
    }
}

/// Reads a body of at most [`MAX_ANSWER`] bytes (the rest is ignored: an
/// answer that long is not one).
async fn read_capped(mut resp: reqwest::Response) -> Result<Vec<u8>, reqwest::Error> {
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        out.extend_from_slice(&chunk);
        if out.len() > MAX_ANSWER {
            break;
        }
    }
    Ok(out)
}

/// The model's answer: JSON `{"intent", "confidence"}` (in a code block or
/// not), or a bare intent name. A name not declared is "not sure".
/// With the verdict, its `result` label: `intent`, `not_sure`, or
/// `invalid` (an answer that names no declared intent).
fn parse(content: &str, input: &ClassifyInput<'_>) -> (Verdict, &'static str) {
    let t = content.trim();
    let t = t
        .strip_prefix("```json")
        .or_else(|| t.strip_prefix("```"))
        .map_or(t, |r| r.trim_end().trim_end_matches("```"))
        .trim();
    #[derive(Deserialize)]
    struct Said {
        intent: Option<String>,
        confidence: Option<f32>,
    }
    let (name, confidence) = match serde_json::from_str::<Said>(t) {
        Ok(s) => (s.intent, s.confidence.unwrap_or(1.0)),
        Err(_) => (Some(t.trim_matches(['"', '.', ' ']).to_owned()), 1.0),
    };
    let name = name.filter(|n| !n.eq_ignore_ascii_case("none") && !n.is_empty());
    let known = name
        .as_deref()
        .and_then(|n| input.intents.iter().find(|i| &*i.name == n.trim()));
    let confidence = if confidence.is_finite() {
        confidence.clamp(0.0, 1.0)
    } else {
        0.0
    };
    match (known, &name) {
        (Some(i), _) if confidence >= input.threshold => {
            (Verdict::intent(&*i.name, confidence), "intent")
        }
        (Some(_), _) => (Verdict::not_sure(confidence), "not_sure"),
        (None, None) => (Verdict::not_sure(0.0), "not_sure"),
        (None, Some(_)) => (Verdict::not_sure(0.0), "invalid"),
    }
}

#[derive(Serialize)]
struct Request<'a> {
    model: &'a str,
    temperature: f32,
    max_tokens: u32,
    messages: [Message<'a>; 2],
}

#[derive(Serialize)]
struct Message<'a> {
    role: &'a str,
    content: &'a str,
}

#[derive(Deserialize)]
struct Answer {
    #[serde(default)]
    choices: Vec<Choice>,
}

#[derive(Deserialize)]
struct Choice {
    message: Content,
}

#[derive(Deserialize)]
struct Content {
    #[serde(default)]
    content: String,
}

#[async_trait]
impl Classifier for LlmClassifier {
    fn name(&self) -> &str {
        "llm"
    }

    async fn classify(&self, input: &ClassifyInput<'_>) -> Result<Verdict, ClassifyError> {
        let started = Instant::now();
        let who = caller();
        let bot: Arc<str> = who
            .as_ref()
            .map_or_else(|| Arc::from(""), |c| c.bot.clone());
        let record = |result: &'static str| {
            if let Some(c) = &who {
                (c.record)("llm", result, started.elapsed().as_secs_f64());
            }
        };
        let text: String = input.text.chars().take(MAX_TEXT).collect();
        let mut names: Vec<&str> = input.intents.iter().map(|i| &*i.name).collect();
        names.sort_unstable();
        let key = format!(
            "{}\u{0}{}\u{0}{}",
            names.join(","),
            input.language.unwrap_or(""),
            crate::flow::normalize(&text)
        );
        if let Some(v) = self.cached(&key) {
            record("cached");
            return Ok(v);
        }
        if let Err(e) = self.admit(&bot) {
            record(e.label());
            return Err(e);
        }
        let mut left = self.config.retries;
        let result = loop {
            match self.call(input, &text).await {
                Ok(v) => break Ok(v),
                Err(Attempt::Again(e)) if left > 0 => {
                    left -= 1;
                    tracing::debug!(error = %e, "the LLM classifier tries again");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(Attempt::Again(e) | Attempt::Final(e)) => break Err(e),
            }
        };
        self.settle(&bot, result.is_ok());
        match result {
            Ok((v, label)) => {
                record(label);
                self.keep(key, &v);
                Ok(v)
            }
            Err(e) => {
                tracing::warn!(error = %e, "the LLM classifier failed; the built-in one answers");
                record(e.label());
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nlu::IntentInfo;

    fn intents() -> Vec<IntentInfo> {
        vec![
            IntentInfo::new(
                "track_order",
                "Track my order",
                &["where is my order".into()],
            ),
            IntentInfo::new("human", "A person", &["talk to a person".into()]),
        ]
    }

    #[test]
    fn answers_are_read_strictly() {
        let i = intents();
        let input = ClassifyInput {
            text: "x",
            language: None,
            intents: &i,
            threshold: 0.5,
        };
        let p = |s: &str| parse(s, &input).0;
        assert_eq!(
            p(r#"{"intent": "human", "confidence": 0.8}"#),
            Verdict::intent("human", 0.8)
        );
        assert_eq!(
            p("```json\n{\"intent\": \"track_order\"}\n```"),
            Verdict::intent("track_order", 1.0)
        );
        assert_eq!(p("human"), Verdict::intent("human", 1.0));
        // Not declared, none, too unsure, or nonsense: not sure.
        assert_eq!(p(r#"{"intent": "refund", "confidence": 0.9}"#).intent, None);
        assert_eq!(p(r#"{"intent": null, "confidence": 0}"#).intent, None);
        assert_eq!(p(r#"{"intent": "human", "confidence": 0.2}"#).intent, None);
        assert_eq!(p("I think it is about an order").intent, None);
        assert_eq!(parse("refund", &input).1, "invalid");
        assert_eq!(parse("none", &input).1, "not_sure");
    }
}
