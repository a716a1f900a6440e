//! The request budget shared by every call to Qpien, and in-order sending per
//! conversation.
//!
//! [`RateLimiter`] paces requests with a GCRA (the `governor` crate), sized so
//! that the burst plus the steady pace never exceed the configured requests in
//! any window; it also obeys what the server says: `X-RateLimit-Remaining` /
//! `X-RateLimit-Reset` spread the remaining requests over the time left, and a
//! 429 stops every request until the reset. Waiters pass through one FIFO gate,
//! so permits go out in arrival order. Together with one send at a time per
//! conversation ([`ConversationLocks`]), that makes the budget fair: a burst in
//! one conversation queues one request at a time, behind the others' requests.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota};
use tokio::sync::{Mutex, OwnedMutexGuard};
use tokio::time::Instant;

use super::config::RateLimitConfig;
use super::error::QpienError;

#[derive(Debug, Default)]
struct Hints {
    /// No request before this (a 429, or none remaining).
    paused_until: Option<Instant>,
    /// While the server's window lasts, at least this much between requests.
    spacing: Option<(Duration, Instant)>,
    /// When the last permit was given.
    last: Option<Instant>,
}

impl Hints {
    fn not_before(&self, now: Instant) -> Option<Instant> {
        let mut t = self.paused_until.filter(|t| *t > now);
        if let (Some((gap, until)), Some(last)) = (self.spacing, self.last) {
            if until > now {
                let next = last + gap;
                if next > now {
                    t = Some(t.map_or(next, |t| t.max(next)));
                }
            }
        }
        t
    }
}

/// The shared request budget. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct RateLimiter {
    pace: DefaultDirectRateLimiter,
    gate: Mutex<()>,
    hints: StdMutex<Hints>,
    default_reset: Duration,
}

impl RateLimiter {
    /// A limiter for `config` (100 requests a minute, bursts of 5, by default).
    pub fn new(config: &RateLimitConfig) -> Result<Self, QpienError> {
        let requests = NonZeroU32::new(config.requests)
            .ok_or_else(|| QpienError::Config("rate_limit.requests must be at least 1".into()))?;
        if config.per.is_zero() {
            return Err(QpienError::Config(
                "rate_limit.per must be more than 0s".into(),
            ));
        }
        // Burst b plus one request per period T fit the window W when
        // b + W/T <= requests; a 1% margin keeps the window's edge safe.
        let burst = config
            .burst
            .clamp(1, requests.get().saturating_sub(1).max(1));
        let steady = (requests.get() - burst).max(1);
        let period = config.per.mul_f64(1.01) / steady;
        let quota = Quota::with_period(period)
            .ok_or_else(|| QpienError::Config("rate_limit: the pace is too fast".into()))?
            .allow_burst(NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN));
        Ok(RateLimiter {
            pace: governor::RateLimiter::direct(quota),
            gate: Mutex::new(()),
            hints: StdMutex::new(Hints::default()),
            default_reset: config.default_reset,
        })
    }

    fn hints(&self) -> std::sync::MutexGuard<'_, Hints> {
        self.hints.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits for a permit to send one request. Permits are given in the order
    /// they were asked for.
    pub async fn acquire(&self) {
        let _turn = self.gate.lock().await;
        loop {
            let now = Instant::now();
            let wait = self.hints().not_before(now);
            if let Some(t) = wait {
                tokio::time::sleep_until(t).await;
                continue;
            }
            match self.pace.check() {
                Ok(()) => break,
                Err(not_until) => {
                    let clock = DefaultClock::default();
                    tokio::time::sleep(not_until.wait_time_from(clock.now())).await;
                }
            }
        }
        self.hints().last = Some(Instant::now());
    }

    /// Takes in the server's `X-RateLimit-Remaining` and `X-RateLimit-Reset`
    /// (seconds until the window resets).
    pub fn observe(&self, remaining: Option<u64>, reset: Option<Duration>) {
        let (Some(remaining), Some(reset)) = (remaining, reset) else {
            return;
        };
        let now = Instant::now();
        let mut hints = self.hints();
        if remaining == 0 {
            let until = now + reset;
            hints.paused_until = Some(hints.paused_until.map_or(until, |t| t.max(until)));
        } else {
            hints.spacing = Some((reset / remaining.min(u32::MAX as u64) as u32, now + reset));
        }
    }

    /// A 429: no request until the reset (or `default_reset` if none was given).
    /// Returns how long that is.
    pub fn pause(&self, reset: Option<Duration>) -> Duration {
        let reset = reset.unwrap_or(self.default_reset);
        let until = Instant::now() + reset;
        let mut hints = self.hints();
        hints.paused_until = Some(hints.paused_until.map_or(until, |t| t.max(until)));
        reset
    }
}

/// One sender at a time per conversation, in the order they asked.
#[derive(Debug, Default)]
pub struct ConversationLocks {
    locks: StdMutex<HashMap<Arc<str>, Arc<Mutex<()>>>>,
}

/// Held while sending to one conversation; dropping it lets the next sender in.
#[derive(Debug)]
pub struct ConversationGuard<'a> {
    owner: &'a ConversationLocks,
    key: Arc<str>,
    guard: Option<OwnedMutexGuard<()>>,
}

impl ConversationLocks {
    /// Waits until no one else sends to `conversation`.
    pub async fn lock(&self, conversation: &str) -> ConversationGuard<'_> {
        let (key, lock) = {
            let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
            match locks.get_key_value(conversation) {
                Some((k, l)) => (k.clone(), l.clone()),
                None => {
                    let key: Arc<str> = Arc::from(conversation);
                    let lock = Arc::new(Mutex::new(()));
                    locks.insert(key.clone(), lock.clone());
                    (key, lock)
                }
            }
        };
        let guard = lock.lock_owned().await;
        ConversationGuard {
            owner: self,
            key,
            guard: Some(guard),
        }
    }

    /// How many conversations have a sender or a waiter now.
    pub fn active(&self) -> usize {
        self.locks.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

impl Drop for ConversationGuard<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut locks = self.owner.locks.lock().unwrap_or_else(|e| e.into_inner());
        // Only the map holds it: no one waits, so forget the conversation.
        if locks
            .get(&self.key)
            .is_some_and(|l| Arc::strong_count(l) == 1)
        {
            locks.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn conversation_locks_are_forgotten_when_free() {
        let locks = ConversationLocks::default();
        {
            let _a = locks.lock("a").await;
            assert_eq!(locks.active(), 1);
        }
        assert_eq!(locks.active(), 0);
    }

    #[test]
    fn bad_budgets_are_refused() {
        let zero = RateLimitConfig {
            requests: 0,
            ..RateLimitConfig::default()
        };
        assert!(RateLimiter::new(&zero).is_err());
        let one = RateLimitConfig {
            requests: 1,
            burst: 10,
            ..RateLimitConfig::default()
        };
        assert!(RateLimiter::new(&one).is_ok());
    }
}
