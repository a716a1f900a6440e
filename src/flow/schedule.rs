//! `schedules:`: starts the bot makes on its own, for the conversations it
//! holds: on a cron schedule in a time zone (`0 10 * * MON`), or at a time
//! computed from a variable (two days after `delivery_date`, at 10:00).
//!
//! The engine keeps, in each session, when each schedule next falls due and
//! whether it fired ([`Mark`]s); the session's timer includes the earliest, so
//! the runtime's timers bring it back at that time, through the inbox like any
//! timer: each firing happens once, across restarts and instances. Cron
//! expressions are read by `jiff-cron`; time zones come from jiff's database.

use jiff::civil::Time;
use jiff::tz::TimeZone;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::template::Tpl;
use super::StateId;
use crate::message::StartMode;
use crate::time::Millis;

/// A compiled schedule.
#[derive(Debug)]
pub struct Schedule {
    /// Its name.
    pub name: Box<str>,
    /// The state it starts.
    pub state: StateId,
    /// Which conversations (an expression), if not all.
    pub when: Option<Tpl>,
    /// What happens to a conversation in progress.
    pub mode: StartMode,
    /// When it falls due.
    pub kind: Kind,
}

/// When a schedule falls due.
#[derive(Debug)]
pub enum Kind {
    /// On a cron schedule, in a zone.
    Cron {
        /// The expression, read.
        cron: Box<jiff_cron::Schedule>,
        /// Its zone.
        zone: TimeZone,
    },
    /// At a time computed from a variable.
    Offset {
        /// The variable holding a date or a time.
        var: Box<str>,
        /// How long after it.
        after_ms: i64,
        /// The time of day, in the zone, on the day it falls on.
        at: Option<Time>,
        /// The zone of dates and `at`.
        zone: TimeZone,
    },
}

/// Where a schedule stands for one conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mark {
    /// The schedule's name.
    pub name: Box<str>,
    /// When it falls due.
    pub due: Millis,
    /// Whether it fired for that time.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fired: bool,
}

/// Reads a cron expression: five fields (minute, hour, day, month, weekday)
/// as people write them, or jiff-cron's own six or seven (seconds first).
pub(crate) fn cron(expr: &str) -> Result<jiff_cron::Schedule, String> {
    let fields = expr.split_whitespace().count();
    let full = if fields == 5 {
        format!("0 {expr}")
    } else {
        expr.to_owned()
    };
    full.parse::<jiff_cron::Schedule>()
        .map_err(|e| e.to_string())
}

/// Qpien's calls a minute for one API key, the budget a schedule's firings
/// share with everything else the bot sends.
const CALLS_PER_MINUTE: i64 = 100;

/// Below this many conversations reached per firing, a cron schedule is
/// worth a warning: its firings may come faster than the budget sends them.
const WARN_BELOW: i64 = 10_000;

/// Whether a cron schedule can fire faster than the budget sends to the
/// conversations it reaches: a warning saying how many one firing reaches
/// before the next, or `None`. The shortest gap among its next firings (from a
/// fixed time, so the answer is the same on every machine) is what counts.
pub(crate) fn outgrows_budget(cron: &jiff_cron::Schedule) -> Option<String> {
    let from = Timestamp::from_second(1_767_571_200)
        .ok()?
        .to_zoned(TimeZone::UTC);
    let times: Vec<i64> = cron
        .after(from)
        .take(200)
        .map(|z| z.timestamp().as_second())
        .collect();
    let gap = times.windows(2).map(|w| w[1] - w[0]).min()?;
    let reach = gap * CALLS_PER_MINUTE / 60;
    (reach < WARN_BELOW).then(|| {
        let every = humantime::format_duration(std::time::Duration::from_secs(gap as u64));
        format!(
            "this schedule can fire every {every}: at Qpien's {CALLS_PER_MINUTE} calls a minute, one firing \
             reaches about {reach} conversations before the next; where a firing's messages are still \
             queued when the next comes, the next sends nothing (counted in \
             `flowbot_schedule_coalesced_total`)"
        )
    })
}

/// A variable's value as a time: a date (`2026-03-01`, midnight in `zone`),
/// an RFC 3339 time, or milliseconds (a number, or its text: `{{ now }}`).
fn base(value: &minijinja::Value, zone: &TimeZone) -> Option<Millis> {
    if let Ok(ms) = i64::try_from(value.clone()) {
        return Some(ms);
    }
    let s = value.as_str()?.trim();
    if let Ok(ms) = s.parse::<i64>() {
        return Some(ms);
    }
    if let Ok(date) = s.parse::<jiff::civil::Date>() {
        return Some(
            date.to_zoned(zone.clone())
                .ok()?
                .timestamp()
                .as_millisecond(),
        );
    }
    s.parse::<Timestamp>().ok().map(|t| t.as_millisecond())
}

impl Schedule {
    /// When it next falls due for a conversation: a cron schedule after
    /// `after`; an offset from the variable's value (`None` without one).
    pub fn due(
        &self,
        var: impl Fn(&str) -> Option<minijinja::Value>,
        after: Millis,
    ) -> Option<Millis> {
        match &self.kind {
            Kind::Cron { cron, zone } => {
                let from = Timestamp::from_millisecond(after)
                    .ok()?
                    .to_zoned(zone.clone());
                cron.after(from)
                    .next()
                    .map(|z| z.timestamp().as_millisecond())
            }
            Kind::Offset {
                var: name,
                after_ms,
                at,
                zone,
            } => {
                let due = base(&var(name)?, zone)?.checked_add(*after_ms)?;
                match at {
                    None => Some(due),
                    Some(t) => {
                        let day = Timestamp::from_millisecond(due)
                            .ok()?
                            .to_zoned(zone.clone())
                            .date();
                        Some(
                            day.to_datetime(*t)
                                .to_zoned(zone.clone())
                                .ok()?
                                .timestamp()
                                .as_millisecond(),
                        )
                    }
                }
            }
        }
    }
}
