//! Inactivity timers (`after: { idle: ... }`): due times are stored with the
//! conversations, so they survive restarts; each due timer becomes an
//! [`Event::Idle`](crate::Event::Idle) in the inbox, and the engine decides
//! whether its nudge still applies.
//!
//! A store that holds several bots is read by one task for all of them
//! ([`run_for_every_bot`]): one query an interval, whatever the number of
//! bots, each due timer handed to its bot's inbox.

use std::sync::Arc;
use std::time::Duration;

use super::inbox::Inbox;
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

/// Fires the due timers of every bot of `store` every `every` until
/// shutdown; `inboxes` has each bot's inbox by its key in the store.
pub(crate) async fn run_for_every_bot(
    store: Arc<dyn StateStore>,
    bots: Arc<super::host::Directory>,
    every: Duration,
    clock: crate::time::ClockHandle,
    stop: Stop,
) {
    while stop.pause(every).await {
        match store.due_timers_of_every_bot(clock.now(), 500).await {
            Ok(Some(due)) => {
                for (bot, conversation, at) in due {
                    // A bot of the store that this process does not run
                    // (removed) keeps its timers.
                    if let Some(inbox) = bots.inbox_of_key(&bot) {
                        inbox.fire_timer(conversation, at).await;
                    }
                }
            }
            Ok(None) => return,
            Err(e) => tracing::error!(error = %e, "cannot read due timers"),
        }
    }
}
