//! The one retry policy: exponential backoff with jitter, between a least and a
//! greatest delay, for a bounded number of attempts or until shutdown.
//!
//! The Qpien client retries a call with it (`qpien.retry`, bounded), the outbox
//! sender retries a delivery with [`Backoff::DELIVERY`] and the runtime retries
//! the store with [`Backoff::STORE`] (both unbounded: the store and the outbox
//! are the source of truth, so a turn or a reply is never skipped, only left
//! for the next start when shutdown comes first, see [`until_ok`]).

use std::future::Future;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

/// How to space retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The first delay.
    pub min_delay: Duration,
    /// The longest delay.
    pub max_delay: Duration,
    /// Attempts in all, the first included (`None`: no end).
    pub max_attempts: Option<u32>,
}

impl Backoff {
    /// For the store: quick at first, every 5 s at most, until it works.
    pub const STORE: Backoff = Backoff {
        min_delay: Duration::from_millis(50),
        max_delay: Duration::from_secs(5),
        max_attempts: None,
    };

    /// For a reply Qpien did not take yet: from 1 s to a minute, until it does.
    pub const DELIVERY: Backoff = Backoff {
        min_delay: Duration::from_secs(1),
        max_delay: Duration::from_secs(60),
        max_attempts: None,
    };

    /// The delays before each retry, in order (jittered); it ends when the
    /// attempts are used up.
    pub fn delays(&self) -> impl Iterator<Item = Duration> + Send + Sync + Unpin {
        let b = ExponentialBuilder::default()
            .with_min_delay(self.min_delay)
            .with_max_delay(self.max_delay)
            .with_jitter();
        match self.max_attempts {
            Some(n) => b.with_max_times(n.saturating_sub(1) as usize),
            None => b.without_max_times(),
        }
        .build()
    }
}

/// Runs `f` until it succeeds, pausing between attempts as `policy` says and
/// logging each failure with `what`. `pause` sleeps and says whether to go on
/// (`false`: shutting down); then, or when the attempts are used up, `None`.
pub(crate) async fn until_ok<T, E, F, Fut, P, PFut>(
    policy: Backoff,
    what: &str,
    mut pause: P,
    mut f: F,
) -> Option<T>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    P: FnMut(Duration) -> PFut,
    PFut: Future<Output = bool>,
{
    let mut delays = policy.delays();
    loop {
        match f().await {
            Ok(v) => return Some(v),
            Err(e) => {
                let delay = delays.next()?;
                tracing::error!(error = %e, ?delay, "failed to {what}; retrying");
                if !pause(delay).await {
                    return None;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_to_the_cap_and_bounded_policies_end() {
        let p = Backoff {
            min_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(40),
            max_attempts: Some(4),
        };
        let d: Vec<Duration> = p.delays().collect();
        assert_eq!(d.len(), 3, "4 attempts: 3 retries");
        assert!(d.iter().all(|d| *d <= Duration::from_millis(80)));
        assert!(Backoff::STORE.delays().take(100).count() == 100);
    }

    #[tokio::test]
    async fn until_ok_stops_at_shutdown() {
        let mut calls = 0;
        let r: Option<()> = until_ok(
            Backoff::STORE,
            "test",
            |_| async { false },
            || {
                calls += 1;
                async { Err::<(), _>("down") }
            },
        )
        .await;
        assert_eq!((r, calls), (None, 1));
    }
}
