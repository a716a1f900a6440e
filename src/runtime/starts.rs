//! How many conversations the business may start for one customer
//! (`server.start_limit` an hour): `POST /api/start` answers 429 past it, so a
//! script that loops cannot queue thousands of replies to one person.
//!
//! A window opens at a conversation's first start and lasts an hour; the
//! windows are kept in memory (this process's own count), and the ones that
//! ended are swept when many have piled up, so the table stays bounded by the
//! conversations started within the hour.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use crate::time::Millis;

const HOUR: Millis = 3_600_000;

/// Windows kept before the ended ones are swept.
const SWEEP_AT: usize = 65_536;

/// Starts per conversation in the last hour.
#[derive(Debug)]
pub(crate) struct StartLimit {
    per_hour: u32,
    windows: Mutex<HashMap<String, (Millis, u32)>>,
}

impl StartLimit {
    /// `per_hour` starts per conversation (0: no limit).
    pub(crate) fn new(per_hour: u32) -> StartLimit {
        StartLimit {
            per_hour,
            windows: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, (Millis, u32)>> {
        self.windows.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a start for `conversation` at `now`, or says in how many
    /// milliseconds its window ends.
    pub(crate) fn take(&self, conversation: &str, now: Millis) -> Result<(), Millis> {
        if self.per_hour == 0 {
            return Ok(());
        }
        let mut windows = self.lock();
        if windows.len() >= SWEEP_AT {
            windows.retain(|_, (from, _)| now - *from < HOUR);
        }
        let w = windows.entry(conversation.to_owned()).or_insert((now, 0));
        if now - w.0 >= HOUR {
            *w = (now, 0);
        }
        if w.1 >= self.per_hour {
            return Err(w.0 + HOUR - now);
        }
        w.1 += 1;
        Ok(())
    }

    /// Gives back a start taken for a request that queued nothing (a
    /// duplicate, or a store that failed).
    pub(crate) fn give_back(&self, conversation: &str) {
        if let Some(w) = self.lock().get_mut(conversation) {
            w.1 = w.1.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_conversation_gets_its_starts_an_hour_and_the_table_stays_bounded() {
        let l = StartLimit::new(2);
        assert_eq!(l.take("a", 0), Ok(()));
        assert_eq!(l.take("a", 10), Ok(()));
        assert_eq!(l.take("a", 1_000), Err(HOUR - 1_000));
        assert_eq!(l.take("b", 1_000), Ok(()), "each conversation its own");
        l.give_back("a");
        assert_eq!(l.take("a", 2_000), Ok(()), "a duplicate does not count");
        assert_eq!(l.take("a", HOUR), Ok(()), "a new window");
        for i in 0..SWEEP_AT + 10 {
            l.take(&i.to_string(), 2 * HOUR + i as Millis).unwrap();
        }
        l.take("last", 4 * HOUR).unwrap();
        assert!(l.lock().len() < SWEEP_AT, "ended windows swept");
        assert_eq!(StartLimit::new(0).take("a", 0), Ok(()));
    }
}
