//! Business hours: `calendars:` (a time zone, weekly hours, holidays and
//! one-off closures), read in rules as `when: "open('support')"` and in texts
//! as `{{ next_open('support') }}` ("Monday 9:00 AM", "Pazartesi 09:00": the
//! calendar's zone, the conversation's language).
//!
//! Time zones come from jiff's bundled IANA database, so a flow means the same
//! on every machine. The engine stays pure: `open()` reads the turn's time
//! (`now`, which the runtime or the test's clock gives), never a clock.

use jiff::civil::{Date, Time, Weekday};
use jiff::tz::TimeZone;
use jiff::Timestamp;

use super::model::CalendarDoc;
use super::source::{join_index, join_key, Reporter};
use crate::time::Millis;

/// A compiled calendar.
#[derive(Debug, Clone)]
pub struct Calendar {
    /// Its name in `calendars:`.
    pub name: Box<str>,
    /// Its zone.
    pub zone: TimeZone,
    /// Opening hours per weekday (Monday first), as minutes of the day
    /// `[from, to)`.
    pub week: [Vec<(u16, u16)>; 7],
    /// Days closed all day.
    pub holidays: Vec<Date>,
    /// One-off closures, `[from, to)` in ms since the epoch.
    pub closures: Vec<(Millis, Millis)>,
}

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

fn day_index(s: &str) -> Option<usize> {
    let s = s.trim().to_ascii_lowercase();
    DAYS.iter().position(|d| s.starts_with(d))
}

/// `mon`, `mon-fri`, `sat,sun`, `daily`: the weekdays named.
fn days(spec: &str) -> Option<Vec<usize>> {
    if spec.trim().eq_ignore_ascii_case("daily") {
        return Some((0..7).collect());
    }
    let mut out = Vec::new();
    for part in spec.split(',') {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (day_index(a)?, day_index(b)?);
                let mut d = a;
                loop {
                    out.push(d);
                    if d == b {
                        break;
                    }
                    d = (d + 1) % 7;
                }
            }
            None => out.push(day_index(part)?),
        }
    }
    Some(out)
}

/// `09:00` as minutes (`24:00` allowed as the end of the day).
fn minutes(s: &str) -> Option<u16> {
    let (h, m) = s.trim().split_once(':')?;
    let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
    (m < 60 && (h < 24 || (h == 24 && m == 0))).then_some(h * 60 + m)
}

/// Compiles `calendars:` entries, reporting what is wrong where.
pub(crate) fn compile(r: &mut Reporter<'_>, name: &str, doc: &CalendarDoc) -> Option<Calendar> {
    let path = join_key("calendars", name);
    let p = |k: &str| join_key(&path, k);
    let mut ok = true;
    let zone = match TimeZone::get(&doc.timezone) {
        Ok(z) => Some(z),
        Err(_) => {
            r.error(
                &p("timezone"),
                format!("`{}` is not a time zone", doc.timezone),
                Some("write an IANA zone, like `Europe/Istanbul` or `America/New_York`".into()),
            );
            None
        }
    };
    let mut week: [Vec<(u16, u16)>; 7] = Default::default();
    for (spec, ranges) in &doc.hours {
        let at = join_key(&p("hours"), spec);
        let Some(ds) = days(spec) else {
            r.error(
                &at,
                format!("`{spec}` names no weekdays"),
                Some("write `mon`, `mon-fri`, `sat,sun` or `daily`".into()),
            );
            ok = false;
            continue;
        };
        for range in &ranges.0 {
            if range.trim().eq_ignore_ascii_case("closed") {
                for &d in &ds {
                    week[d].clear();
                }
                continue;
            }
            let parsed = range
                .split_once('-')
                .and_then(|(a, b)| Some((minutes(a)?, minutes(b)?)))
                .filter(|(a, b)| a < b);
            match parsed {
                Some(hours) => {
                    for &d in &ds {
                        week[d].push(hours);
                    }
                }
                None => {
                    r.error(
                        &at,
                        format!("`{range}` is not a range of hours"),
                        Some("write `09:00-18:00` (a list for several), or `closed`".into()),
                    );
                    ok = false;
                }
            }
        }
    }
    let mut holidays = Vec::new();
    for (i, h) in doc.holidays.iter().enumerate() {
        match h.parse::<Date>() {
            Ok(d) => holidays.push(d),
            Err(_) => {
                r.error(
                    &join_index(&p("holidays"), i),
                    format!("`{h}` is not a date"),
                    Some("write it as `2026-12-31`".into()),
                );
                ok = false;
            }
        }
    }
    let mut closures = Vec::new();
    for (i, c) in doc.closed.iter().enumerate() {
        let at = join_index(&p("closed"), i);
        let local = |s: &str| -> Option<Millis> {
            let dt: jiff::civil::DateTime = s.parse().ok()?;
            Some(
                dt.to_zoned(zone.clone()?)
                    .ok()?
                    .timestamp()
                    .as_millisecond(),
            )
        };
        match (local(&c.from), local(&c.to)) {
            (Some(a), Some(b)) if a < b => closures.push((a, b)),
            _ if zone.is_none() => {}
            _ => {
                r.error(
                    &at,
                    format!("`{}` to `{}` is not a period", c.from, c.to),
                    Some("write local times in order, like `from: 2026-12-31T14:00, to: 2027-01-02T09:00`".into()),
                );
                ok = false;
            }
        }
    }
    let zone = zone?;
    ok.then(|| Calendar {
        name: name.into(),
        zone,
        week,
        holidays,
        closures,
    })
}

impl Calendar {
    /// Whether it is open at `now`.
    pub fn is_open(&self, now: Millis) -> bool {
        let Ok(ts) = Timestamp::from_millisecond(now) else {
            return false;
        };
        if self.closures.iter().any(|&(a, b)| now >= a && now < b) {
            return false;
        }
        let local = ts.to_zoned(self.zone.clone());
        if self.holidays.contains(&local.date()) {
            return false;
        }
        let minute = local.hour() as u16 * 60 + local.minute() as u16;
        self.week[weekday(local.weekday())]
            .iter()
            .any(|&(a, b)| minute >= a && minute < b)
    }

    /// When it next opens at or after `now` (within a year), in its zone.
    pub fn next_open(&self, now: Millis) -> Option<jiff::Zoned> {
        let ts = Timestamp::from_millisecond(now).ok()?;
        if self.is_open(now) {
            return Some(ts.to_zoned(self.zone.clone()));
        }
        let today = ts.to_zoned(self.zone.clone()).date();
        // Candidates: each opening of the next 370 days, and each closure's end.
        let mut candidates: Vec<Millis> = self
            .closures
            .iter()
            .map(|&(_, b)| b)
            .filter(|&b| b > now)
            .collect();
        let mut day = today;
        for _ in 0..370 {
            for &(from, _) in &self.week[weekday(day.weekday())] {
                let t = Time::new((from / 60) as i8, (from % 60) as i8, 0, 0).ok()?;
                if let Ok(z) = day.to_datetime(t).to_zoned(self.zone.clone()) {
                    let at = z.timestamp().as_millisecond();
                    if at > now {
                        candidates.push(at);
                    }
                }
            }
            day = day.tomorrow().ok()?;
        }
        candidates.sort_unstable();
        let at = candidates.into_iter().find(|&t| self.is_open(t))?;
        Some(
            Timestamp::from_millisecond(at)
                .ok()?
                .to_zoned(self.zone.clone()),
        )
    }
}

fn weekday(w: Weekday) -> usize {
    w.to_monday_zero_offset() as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Millis {
        let dt: jiff::civil::DateTime = s.parse().unwrap();
        dt.to_zoned(TimeZone::get("Europe/Istanbul").unwrap())
            .unwrap()
            .timestamp()
            .as_millisecond()
    }

    fn support() -> Calendar {
        let mut week: [Vec<(u16, u16)>; 7] = Default::default();
        for day in week.iter_mut().take(5) {
            *day = vec![(9 * 60, 18 * 60)];
        }
        week[5] = vec![(10 * 60, 14 * 60)];
        Calendar {
            name: "support".into(),
            zone: TimeZone::get("Europe/Istanbul").unwrap(),
            week,
            holidays: vec!["2026-10-29".parse().unwrap()],
            closures: vec![(at("2026-12-31T14:00"), at("2027-01-02T00:00"))],
        }
    }

    #[test]
    fn open_by_the_week_in_the_calendars_zone() {
        let c = support();
        assert!(c.is_open(at("2026-11-26T09:00")), "Thursday morning");
        assert!(!c.is_open(at("2026-11-26T08:59")));
        assert!(!c.is_open(at("2026-11-26T18:00")), "the end is not open");
        assert!(c.is_open(at("2026-11-28T13:59")), "Saturday");
        assert!(!c.is_open(at("2026-11-29T12:00")), "Sunday");
        assert!(!c.is_open(at("2026-10-29T12:00")), "a holiday");
        assert!(!c.is_open(at("2026-12-31T15:00")), "a closure");
        assert!(c.is_open(at("2026-12-31T13:00")), "before it");
    }

    #[test]
    fn next_open_skips_nights_weekends_holidays_and_closures() {
        let c = support();
        let next = |s: &str| {
            c.next_open(at(s))
                .unwrap()
                .strftime("%A %Y-%m-%d %H:%M")
                .to_string()
        };
        assert_eq!(next("2026-11-26T20:00"), "Friday 2026-11-27 09:00");
        assert_eq!(next("2026-11-28T15:00"), "Monday 2026-11-30 09:00");
        assert_eq!(next("2026-10-28T19:00"), "Friday 2026-10-30 09:00");
        assert_eq!(next("2026-12-31T15:00"), "Saturday 2027-01-02 10:00");
        assert_eq!(
            next("2026-11-26T10:00"),
            "Thursday 2026-11-26 10:00",
            "open: now"
        );
    }
}
