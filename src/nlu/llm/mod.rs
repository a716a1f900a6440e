//! The built-in LLM classifier: any OpenAI-compatible chat endpoint
//! (`POST {base_url}/chat/completions`), configured by `[nlu.llm]` in
//! flowbot.toml, the key read from the environment.
//!
//! It is asked to name one of the flow's intents (their names, titles and a
//! few examples are in the prompt) or `none`, as JSON
//! `{"intent": "...", "confidence": 0.9}`; an answer naming anything else
//! is "not sure". Around each call:
//! - a **cache** keyed by the normalized text and the set of intents
//!   (bounded; the oldest entries go first), so a repeated phrase costs
//!   nothing;
//! - a **budget** of calls per minute per bot (a token bucket): past it,
//!   the built-in classifier answers;
//! - a **timeout** (default 5 s) and at most one retry;
//! - a **circuit breaker**: after `failures_to_open` failures in a row the
//!   endpoint rests for `open_for`, the built-in classifier answering, then
//!   one call tries it again.
//!
//! Each call is counted as `flowbot_classify_total{classifier="llm",result}`
//! (`intent`, `not_sure`, `invalid`, `cached`, `timeout`, `over_budget`,
//! `circuit_open`, `error`) with its latency in `flowbot_classify_seconds`.
//! The webhook is acknowledged before the turn runs, so a slow endpoint
//! delays replies, never acknowledgements.

use std::time::Duration;

use serde::{Deserialize, Serialize};

#[cfg(feature = "llm")]
mod openai;
#[cfg(feature = "llm")]
pub use openai::LlmClassifier;

/// `[nlu.llm]`: the endpoint and its limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LlmConfig {
    /// The API's base, up to `/chat/completions` (for OpenAI
    /// `https://api.openai.com/v1`).
    pub base_url: String,
    /// The model to ask.
    pub model: String,
    /// The environment variable holding the API key (sent as a Bearer
    /// token; unset: no `Authorization` header, as a local server wants).
    pub key_env: String,
    /// How long one call may take.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Calls again after a failure: 0 or 1.
    pub retries: u32,
    /// Calls per minute for each bot; past them the built-in classifier
    /// answers.
    pub calls_per_minute: u32,
    /// Failures in a row that open the circuit.
    pub failures_to_open: u32,
    /// How long an open circuit rests.
    #[serde(with = "humantime_serde")]
    pub open_for: Duration,
    /// Answers kept (0: none).
    pub cache_entries: usize,
    /// Examples per intent in the prompt.
    pub examples_per_intent: usize,
}

impl Default for LlmConfig {
    fn default() -> Self {
        LlmConfig {
            base_url: "https://api.openai.com/v1".into(),
            model: "gpt-4o-mini".into(),
            key_env: "OPENAI_API_KEY".into(),
            timeout: Duration::from_secs(5),
            retries: 1,
            calls_per_minute: 60,
            failures_to_open: 5,
            open_for: Duration::from_secs(30),
            cache_entries: 10_000,
            examples_per_intent: 5,
        }
    }
}

impl LlmConfig {
    /// What is wrong with it, if anything.
    pub fn check(&self) -> Result<(), String> {
        let url = reqwest::Url::parse(&self.base_url)
            .map_err(|e| format!("nlu.llm.base_url: `{}`: {e}", self.base_url))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!(
                "nlu.llm.base_url: `{}` is not an http(s) address",
                self.base_url
            ));
        }
        if self.model.trim().is_empty() {
            return Err("nlu.llm.model: name the model to ask".into());
        }
        if self.retries > 1 {
            return Err(format!(
                "nlu.llm.retries: {} (at most 1: a customer is waiting)",
                self.retries
            ));
        }
        if self.timeout.is_zero() || self.timeout > Duration::from_secs(30) {
            return Err(format!(
                "nlu.llm.timeout: {} (more than 0, at most 30s)",
                humantime::format_duration(self.timeout)
            ));
        }
        if self.calls_per_minute == 0 {
            return Err("nlu.llm.calls_per_minute: at least 1".into());
        }
        if self.failures_to_open == 0 {
            return Err("nlu.llm.failures_to_open: at least 1".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_configuration_says_what_is_wrong() {
        let bad = |f: fn(&mut LlmConfig)| {
            let mut c = LlmConfig::default();
            f(&mut c);
            c.check().unwrap_err()
        };
        assert!(bad(|c| c.base_url = "ftp://x".into()).contains("base_url"));
        assert!(bad(|c| c.retries = 2).contains("retries"));
        assert!(bad(|c| c.timeout = Duration::ZERO).contains("timeout"));
        assert!(bad(|c| c.calls_per_minute = 0).contains("calls_per_minute"));
        assert!(LlmConfig::default().check().is_ok());
    }
}
