//! Time, in one type: [`Millis`], milliseconds since the Unix epoch.
//!
//! The engine takes `now` as an argument and never reads a clock. Adapters get it
//! from a [`Clock`]: the system's in production ([`now`]), a [`ManualClock`] in
//! tests, so that session timeouts and idle nudges are tested without sleeping.
//! Sessions, store rows, timers and the Qpien wire's dates all use [`Millis`].

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

/// Milliseconds since the Unix epoch.
pub type Millis = i64;

/// A source of the current time.
pub trait Clock: Send + Sync {
    /// Milliseconds since the Unix epoch.
    fn now(&self) -> Millis;

    /// Moves the clock forward by `by`, if it can be moved (the system's
    /// cannot): whether it moved.
    fn advance(&self, by: std::time::Duration) -> bool {
        let _ = by;
        false
    }
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Millis {
        now()
    }
}

/// The system's time now.
pub fn now() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as Millis)
}

/// A clock that moves only when told to; clones share the time.
///
/// ```
/// use flowbot::{Clock, ManualClock};
/// let c = ManualClock::new(1_000);
/// c.advance(std::time::Duration::from_secs(2));
/// assert_eq!(c.now(), 3_000);
/// ```
#[derive(Debug, Clone, Default)]
pub struct ManualClock(Arc<AtomicI64>);

impl ManualClock {
    /// A clock at `start` milliseconds.
    pub fn new(start: Millis) -> Self {
        ManualClock(Arc::new(AtomicI64::new(start)))
    }

    /// Moves time forward.
    pub fn advance(&self, by: std::time::Duration) {
        self.0.fetch_add(by.as_millis() as Millis, Ordering::SeqCst);
    }

    /// Sets the time.
    pub fn set(&self, at: Millis) {
        self.0.store(at, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Millis {
        self.0.load(Ordering::SeqCst)
    }

    fn advance(&self, by: std::time::Duration) -> bool {
        ManualClock::advance(self, by);
        true
    }
}

/// The system's clock, moved forward on request: time goes on as usual from
/// wherever it was moved to. `flowbot demo` runs on one, so that the
/// playground can skip an hour or a day (nudges, WhatsApp's window and
/// schedules then fire as they would).
///
/// ```
/// use flowbot::{Clock, ShiftedClock};
/// let c = ShiftedClock::default();
/// let before = c.now();
/// Clock::advance(&c, std::time::Duration::from_secs(3600));
/// assert!(c.now() - before >= 3_600_000);
/// assert!(c.shift() == 3_600_000);
/// ```
#[derive(Debug, Clone, Default)]
pub struct ShiftedClock(Arc<AtomicI64>);

impl ShiftedClock {
    /// How far ahead of the system's clock this one is, in milliseconds.
    pub fn shift(&self) -> Millis {
        self.0.load(Ordering::SeqCst)
    }
}

impl Clock for ShiftedClock {
    fn now(&self) -> Millis {
        now().saturating_add(self.shift())
    }

    fn advance(&self, by: std::time::Duration) -> bool {
        let by = Millis::try_from(by.as_millis()).unwrap_or(Millis::MAX);
        let _ = self
            .0
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |s| {
                Some(s.saturating_add(by))
            });
        true
    }
}

/// The clock a component reads: the system's unless a test gives another.
/// Cheap to clone.
#[derive(Clone)]
pub struct ClockHandle(Arc<dyn Clock>);

impl ClockHandle {
    /// A handle on `clock`.
    pub fn new(clock: impl Clock + 'static) -> Self {
        ClockHandle(Arc::new(clock))
    }

    /// The time now.
    pub fn now(&self) -> Millis {
        self.0.now()
    }

    /// Moves the clock forward, if it can be moved: whether it moved.
    pub fn advance(&self, by: std::time::Duration) -> bool {
        self.0.advance(by)
    }
}

impl Default for ClockHandle {
    fn default() -> Self {
        ClockHandle::new(SystemClock)
    }
}

impl std::fmt::Debug for ClockHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClockHandle")
    }
}

/// Parses an RFC 3339 UTC time (`2026-01-01T10:00:00Z`, fractions allowed) to
/// milliseconds.
pub fn parse_time(s: &str) -> Option<Millis> {
    let t = humantime::parse_rfc3339_weak(s.trim_end_matches('Z')).ok()?;
    t.duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_millis() as Millis)
}

/// A time as RFC 3339 (UTC, seconds).
pub fn format(at: Millis) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(at.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Reads a date as a platform sends it: milliseconds as a number or a numeric
/// string, or an RFC 3339 string.
pub(crate) fn parse_json_time(v: &serde_json::Value) -> Option<Millis> {
    match v {
        serde_json::Value::Number(n) => n.as_i64(),
        serde_json::Value::String(s) => s.parse::<Millis>().ok().or_else(|| parse_time(s)),
        _ => None,
    }
}
