//! Inactivity timers (`after: { idle: ... }`): due times are stored with the
//! conversations, so they survive restarts; each due timer becomes an
//! [`Event::Idle`](crate::Event::Idle) in the inbox, and the engine decides
//! whether its nudge still applies.

use std::sync::Arc;
use std::time::Duration;

use super::dispatch::Inbox;
use super::Stop;
use crate::store::StateStore;

/// Fires due timers every `every` until shutdown.
pub(crate) async fn run(
    store: Arc<dyn StateStore>,
    inbox: Arc<Inbox>,
    every: Duration,
    clock: crate::time::ClockHandle,
    stop: Stop,
) {
    while stop.pause(every).await {
        match store.due_timers(clock.now(), 500).await {
            Ok(due) => {
                for (conversation, at) in due {
                    inbox.fire_timer(conversation, at).await;
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot read due timers"),
        }
    }
}
