//! The request budget shared by every call to Qpien, and in-order sending per
//! conversation.
//!
//! [`RateLimiter`] keeps a sliding window of the requests it let go, each
//! counted from when it *ended*: a request leaves at once while fewer than
//! `requests` are under way or ended in the last `per`, and waits otherwise.
//! Counting from the end, not the start, is what makes the window exact
//! whatever the network does: a request reaches Qpien after it left and
//! before its answer came back, so two requests `requests` apart in the
//! window reach Qpien at least `per` apart, however long either took, and
//! Qpien's window (fixed or sliding, of `per` or less) never sees more than
//! `requests`. No margin is needed; under overload the budget is used but for
//! one round trip per window. So replies go out immediately while the budget
//! is ample, and under overload the whole budget is used, never more. It also obeys what the
//! server says, which counts other clients of the same key too: after a
//! response with `X-RateLimit-Remaining: n`, at most `n` more requests leave
//! before its reset, and a 429 stops every request until the reset.
//! A limiter starts *cold*: it does not know what was spent in the server's
//! window before it existed (a restarted process, another client of the same
//! key), so until the first answer from the server (whose `X-RateLimit-*`
//! headers say where its window stands) one request at a time leaves. A
//! budget kept in the store across restarts ([`SharedBudget::knows_window`])
//! starts it warm.
//! `X-RateLimit-Reset` is read as seconds to wait (as Qpien documents), or as
//! a Unix time in seconds or milliseconds (as common middleware sends it);
//! whatever it says, no pause lasts longer than two windows. Waiters pass
//! through one FIFO gate, so permits go out in arrival order. Together with one
//! send at a time per conversation ([`ConversationLocks`]), that makes the
//! budget fair: a burst in one conversation queues one request at a time,
//! behind the others' requests.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use tokio::sync::{Mutex, OwnedMutexGuard};
use tokio::time::Instant;

use super::config::RateLimitConfig;
use super::error::QpienError;

#[derive(Debug)]
struct State {
    /// Requests under way (each holds a [`Permit`]).
    in_flight: usize,
    /// When the requests of the current window ended, oldest first.
    sent: VecDeque<Instant>,
    /// No request before this (a 429, or none remaining).
    paused_until: Option<Instant>,
    /// What the server last said: requests left until its window resets.
    server: Option<(u64, Instant)>,
    /// Nothing is known of the window yet (no answer from the server, no
    /// budget kept from before): one request at a time.
    cold: bool,
}

/// The shared request budget. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct RateLimiter {
    requests: usize,
    window: Duration,
    default_reset: Duration,
    gate: Mutex<()>,
    state: StdMutex<State>,
    /// The budget shared with other instances, if any.
    shared: StdMutex<Option<std::sync::Arc<dyn SharedBudget>>>,
    /// A request ended (a cold limiter waits for it).
    ended: tokio::sync::Notify,
}

/// A request budget several instances draw from (Qpien's 100 calls a minute
/// belong to the API key, not to a process). [`RateLimiter::acquire`] takes
/// its own slot first, then one from here; like the local window, the shared
/// one counts a call from when it ended ([`SharedBudget::done`]).
#[async_trait::async_trait]
pub trait SharedBudget: Send + Sync + std::fmt::Debug + 'static {
    /// Takes one call from a budget of `requests` per `per`.
    async fn take(&self, requests: u32, per: Duration) -> Result<Grant, String>;
    /// Whether it knows what was spent before this process started (then
    /// the limiter starts warm).
    fn knows_window(&self) -> bool {
        true
    }
    /// The call granted as `id` has ended (or will never be made).
    async fn done(&self, id: i64);
}

/// What a [`SharedBudget`] answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    /// Granted; the call is `id` until it ends.
    Granted(i64),
    /// Full: ask again after this long.
    Wait(Duration),
}

/// Leave to send one request: held while it is under way, its end is counted
/// in the window when it is dropped.
#[derive(Debug)]
#[must_use = "the request is counted as under way until the permit is dropped"]
pub struct Permit<'a> {
    limiter: &'a RateLimiter,
    shared: Option<(std::sync::Arc<dyn SharedBudget>, i64)>,
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        {
            let mut st = self.limiter.state();
            st.in_flight = st.in_flight.saturating_sub(1);
            st.sent.push_back(Instant::now());
        }
        self.limiter.ended.notify_one();
        if let Some((budget, id)) = self.shared.take() {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move { budget.done(id).await });
            }
        }
    }
}

impl RateLimiter {
    /// A limiter for `config` (100 requests a minute by default).
    pub fn new(config: &RateLimitConfig) -> Result<Self, QpienError> {
        if config.requests == 0 {
            return Err(QpienError::Config(
                "rate_limit.requests must be at least 1".into(),
            ));
        }
        if config.per.is_zero() {
            return Err(QpienError::Config(
                "rate_limit.per must be more than 0s".into(),
            ));
        }
        Ok(RateLimiter {
            requests: config.requests as usize,
            window: config.per,
            default_reset: config.default_reset,
            gate: Mutex::new(()),
            state: StdMutex::new(State {
                in_flight: 0,
                sent: VecDeque::new(),
                paused_until: None,
                server: None,
                cold: true,
            }),
            shared: StdMutex::new(None),
            ended: tokio::sync::Notify::new(),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The longest any pause may last: two windows.
    fn longest_pause(&self) -> Duration {
        self.window * 2
    }

    /// Waits for a permit to send one request. Permits are given in the order
    /// they were asked for; hold it until the request has its answer (or
    /// failed).
    pub async fn acquire(&self) -> Permit<'_> {
        let _turn = self.gate.lock().await;
        self.acquire_local().await;
        let mut permit = Permit {
            limiter: self,
            shared: None,
        };
        let shared = self
            .shared
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(shared) = shared {
            loop {
                match shared.take(self.requests as u32, self.window).await {
                    Ok(Grant::Granted(id)) => {
                        permit.shared = Some((shared, id));
                        break;
                    }
                    Ok(Grant::Wait(wait)) => tokio::time::sleep(wait.min(self.window)).await,
                    Err(e) => {
                        // The budget cannot be read: go on alone, on this
                        // instance's own window, rather than stop replying.
                        tracing::warn!(error = %e, "the shared request budget cannot be read");
                        break;
                    }
                }
            }
        }
        permit
    }

    /// Shares the budget with other instances through `budget`.
    pub fn share(&self, budget: std::sync::Arc<dyn SharedBudget>) {
        if budget.knows_window() {
            self.state().cold = false;
        }
        *self.shared.lock().unwrap_or_else(|e| e.into_inner()) = Some(budget);
    }

    /// Whether nothing is known of the server's window yet (see the module
    /// docs).
    pub fn is_cold(&self) -> bool {
        self.state().cold
    }

    async fn acquire_local(&self) {
        loop {
            let wait = {
                let now = Instant::now();
                let mut st = self.state();
                while st.sent.front().is_some_and(|t| *t + self.window <= now) {
                    st.sent.pop_front();
                }
                if st.server.is_some_and(|(_, until)| until <= now) {
                    st.server = None;
                }
                let paused = st.paused_until.filter(|t| *t > now);
                let server = st
                    .server
                    .filter(|(left, _)| *left == 0)
                    .map(|(_, until)| until);
                // Full: the oldest ended request frees its slot a window
                // after it ended; with every slot under way, none frees
                // before a window from now.
                let full = (st.sent.len() + st.in_flight >= self.requests).then(|| {
                    st.sent
                        .front()
                        .map_or(now + self.window, |t| *t + self.window)
                });
                match [paused, server, full].into_iter().flatten().max() {
                    Some(t) => Some(t),
                    // Cold, with a request under way: wait for its answer.
                    None if st.cold && st.in_flight > 0 => None,
                    None => {
                        st.in_flight += 1;
                        if let Some((left, _)) = &mut st.server {
                            *left = left.saturating_sub(1);
                        }
                        return;
                    }
                }
            };
            match wait {
                Some(t) => tokio::time::sleep_until(t).await,
                // A permit's drop notifies (and a notification given before
                // this wait begins is kept for it).
                None => self.ended.notified().await,
            }
        }
    }

    /// Reads `X-RateLimit-Reset`: seconds to wait, or a Unix time in seconds or
    /// milliseconds; never more than two windows. A moment in milliseconds
    /// is kept with a margin of [`RESET_MARGIN_MS`] (the two clocks, and a
    /// server that rounds it down).
    pub fn reset_after(&self, value: f64, now_unix_ms: i64) -> Duration {
        let now = now_unix_ms as f64;
        let secs = if value >= 1e12 {
            (value + RESET_MARGIN_MS - now) / 1000.0
        } else if value >= 1e9 {
            // Whole seconds: the moment may be rounded down by up to one.
            value + 1.0 - now / 1000.0
        } else {
            value
        };
        Duration::from_secs_f64(secs.clamp(0.0, self.longest_pause().as_secs_f64()))
    }

    /// Takes in an answer of the server: its `X-RateLimit-Remaining` and the
    /// time until its window resets, if it said them. Any answer warms a cold
    /// limiter: a server that says nothing of its window has nothing more to
    /// tell.
    pub fn observe(&self, remaining: Option<u64>, reset: Option<Duration>) {
        let mut st = self.state();
        st.cold = false;
        let (Some(remaining), Some(reset)) = (remaining, reset) else {
            return;
        };
        let reset = reset.min(self.longest_pause());
        let until = Instant::now() + reset;
        st.server = Some((remaining, until));
    }

    /// A 429: no request until the reset (or `default_reset` if none was given),
    /// two windows at most. Returns how long that is.
    pub fn pause(&self, reset: Option<Duration>) -> Duration {
        let reset = reset
            .unwrap_or(self.default_reset)
            .min(self.longest_pause());
        let until = Instant::now() + reset;
        let mut st = self.state();
        st.paused_until = Some(st.paused_until.map_or(until, |t| t.max(until)));
        reset
    }
}

/// What is added to a reset moment given in milliseconds.
pub const RESET_MARGIN_MS: f64 = 25.0;

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
            ..RateLimitConfig::default()
        };
        assert!(RateLimiter::new(&one).is_ok());
    }

    #[test]
    fn a_reset_in_any_form_is_read_and_bounded() {
        let l = RateLimiter::new(&RateLimitConfig::default()).unwrap();
        let now = 1_767_225_600_000;
        let secs = |d: Duration| d.as_secs_f64().round() as u64;
        assert_eq!(secs(l.reset_after(30.0, now)), 30);
        assert_eq!(secs(l.reset_after((now / 1000 + 45) as f64, now)), 46);
        assert_eq!(secs(l.reset_after((now + 20_000) as f64, now)), 20);
        // A time far ahead (or a stray counter) never pauses past two windows.
        assert_eq!(
            secs(l.reset_after((now / 1000 + 86_400 * 90) as f64, now)),
            120
        );
        assert_eq!(secs(l.reset_after(1e7, now)), 120);
        assert_eq!(l.reset_after((now / 1000 - 5) as f64, now), Duration::ZERO);
        assert_eq!(l.reset_after((now - 50) as f64, now), Duration::ZERO);
        // A moment in milliseconds just past: the margin still waits.
        assert_eq!(
            l.reset_after((now - 5) as f64, now),
            Duration::from_millis(20)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn requests_leave_at_once_while_the_window_has_room() {
        let l = RateLimiter::new(&RateLimitConfig {
            requests: 10,
            per: Duration::from_secs(1),
            default_reset: Duration::from_secs(1),
        })
        .unwrap();
        let start = Instant::now();
        for _ in 0..10 {
            drop(l.acquire().await);
        }
        assert_eq!(start.elapsed(), Duration::ZERO, "ten at once");
        drop(l.acquire().await);
        assert!(
            start.elapsed() >= Duration::from_secs(1),
            "the eleventh waits"
        );
        // The server's word: two left until it resets, then a pause.
        l.observe(Some(2), Some(Duration::from_millis(1500)));
        let t = Instant::now();
        drop(l.acquire().await);
        drop(l.acquire().await);
        assert!(t.elapsed() < Duration::from_secs(1));
        drop(l.acquire().await);
        assert!(t.elapsed() >= Duration::from_millis(1500));
    }

    #[tokio::test(start_paused = true)]
    async fn a_cold_limiter_sends_one_request_until_the_server_answers() {
        let l = RateLimiter::new(&RateLimitConfig {
            requests: 10,
            per: Duration::from_secs(60),
            default_reset: Duration::from_secs(1),
        })
        .unwrap();
        assert!(l.is_cold());
        let first = l.acquire().await;
        let second = tokio::time::timeout(Duration::from_secs(5), l.acquire()).await;
        assert!(second.is_err(), "one at a time while nothing is known");
        // The answer: the window is nearly spent (by a process before).
        l.observe(Some(2), Some(Duration::from_secs(30)));
        drop(first);
        assert!(!l.is_cold());
        let t = Instant::now();
        let a = l.acquire().await;
        let b = l.acquire().await;
        assert_eq!(t.elapsed(), Duration::ZERO, "the two left go at once");
        drop((a, b));
        drop(l.acquire().await);
        assert!(t.elapsed() >= Duration::from_secs(30), "then the reset");
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_counts_from_when_it_ended() {
        let l = RateLimiter::new(&RateLimitConfig {
            requests: 1,
            per: Duration::from_secs(1),
            default_reset: Duration::from_secs(1),
        })
        .unwrap();
        let start = Instant::now();
        let slow = l.acquire().await;
        // Under way for two seconds: the window is full all that time...
        tokio::time::sleep(Duration::from_secs(2)).await;
        drop(slow);
        // ...and for a whole window after it ended, however long it took:
        // Qpien may have received it at its very end.
        drop(l.acquire().await);
        assert_eq!(start.elapsed(), Duration::from_secs(3));
    }
}
