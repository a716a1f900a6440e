//! Dates and times in the conversation's language: the `datetime` filter
//! (`{{ now | datetime('long') }}`, `{{ delivery | datetime('date',
//! 'Europe/Istanbul') }}`) and `next_open('support')`, formatted with ICU4X
//! (`icu_datetime`, CLDR's patterns, month and day names for each locale,
//! compiled in): no name or pattern is written here.
//!
//! The language is the conversation's (the scope's `language`: the
//! customer's, or `settings.default_language`), English when it has none;
//! a language CLDR does not know falls back as CLDR says (to its root
//! patterns). The zone is the filter's second argument (an IANA name), UTC
//! when none; a calendar's times are in its own zone.

use icu_datetime::fieldsets;
use icu_datetime::input::{Date, DateTime, Time};
use icu_datetime::options::TimePrecision;
use icu_datetime::DateTimeFormatter;
use minijinja::value::{Value, ValueKind};
use minijinja::{Error, ErrorKind, State};

/// How much of a moment is written, and how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Style {
    /// Weekday, date and time in full: "Thursday, December 3, 2026 at 9:30 AM".
    Long,
    /// Date abbreviated and time: "Dec 3, 2026, 9:30 AM".
    Medium,
    /// Date in numbers: "12/3/26".
    Short,
    /// Weekday and date in full: "Thursday, December 3, 2026".
    Date,
    /// The time: "9:30 AM".
    Time,
    /// Weekday and time, for the coming days: "Thursday 9:30 AM".
    Weekday,
}

/// The styles' names, as the filter takes them.
pub(crate) const STYLES: &[&str] = &["long", "medium", "short", "date", "time", "weekday"];

impl Style {
    pub(crate) fn parse(name: &str) -> Option<Style> {
        Some(match name {
            "long" => Style::Long,
            "medium" => Style::Medium,
            "short" => Style::Short,
            "date" => Style::Date,
            "time" => Style::Time,
            "weekday" => Style::Weekday,
            _ => return None,
        })
    }
}

/// The locale of a language code (`tr`, `pt-BR`, `pt_BR`); English when
/// none or unreadable.
fn locale(lang: Option<&str>) -> icu_locale_core::Locale {
    lang.filter(|l| !l.is_empty())
        .and_then(|l| l.replace('_', "-").parse().ok())
        .unwrap_or(icu_locale_core::locale!("en"))
}

/// `at` written in `lang` as `style` says.
pub(crate) fn format(at: &jiff::Zoned, lang: Option<&str>, style: Style) -> String {
    let dt = at.datetime();
    let (Ok(date), Ok(time)) = (
        Date::try_new_iso(dt.year().into(), dt.month() as u8, dt.day() as u8),
        Time::try_new(dt.hour() as u8, dt.minute() as u8, dt.second() as u8, 0),
    ) else {
        return at.to_string();
    };
    let input = DateTime { date, time };
    let prefs = locale(lang).into();
    let minute = TimePrecision::Minute;
    let formatted = match style {
        Style::Long => {
            DateTimeFormatter::try_new(prefs, fieldsets::YMDET::long().with_time_precision(minute))
                .map(|f| f.format(&input).to_string())
        }
        Style::Medium => {
            DateTimeFormatter::try_new(prefs, fieldsets::YMDT::medium().with_time_precision(minute))
                .map(|f| f.format(&input).to_string())
        }
        Style::Short => DateTimeFormatter::try_new(prefs, fieldsets::YMD::short())
            .map(|f| f.format(&input).to_string()),
        Style::Date => DateTimeFormatter::try_new(prefs, fieldsets::YMDE::long())
            .map(|f| f.format(&input).to_string()),
        Style::Time => {
            DateTimeFormatter::try_new(prefs, fieldsets::T::short().with_time_precision(minute))
                .map(|f| f.format(&input).to_string())
        }
        // The weekday and the time apart: CLDR's long weekday-and-time
        // pattern writes the minutes with one digit ("9:0") in ICU4X 2.4.
        Style::Weekday => DateTimeFormatter::try_new(prefs, fieldsets::E::long()).and_then(|e| {
            let t = DateTimeFormatter::try_new(
                prefs,
                fieldsets::T::short().with_time_precision(minute),
            )?;
            Ok(format!("{} {}", e.format(&input), t.format(&input)))
        }),
    };
    // CLDR puts a narrow no-break space before AM/PM, which some phones'
    // fonts draw as a box: a plain space reads the same everywhere.
    formatted
        .map(|s| s.replace('\u{202f}', " "))
        .unwrap_or_else(|_| jiff::fmt::strtime::format("%Y-%m-%d %H:%M", at).unwrap_or_default())
}

/// The conversation's language, as the scope has it.
pub(crate) fn language(state: &State) -> Option<String> {
    state
        .lookup("language")
        .and_then(|v| v.as_str().map(str::to_owned))
}

fn error(message: String) -> Error {
    Error::new(ErrorKind::InvalidOperation, message)
}

/// The moment a value stands for, in `zone`: milliseconds since the epoch
/// (`now`), an RFC 3339 time (`2026-03-01T10:00:00Z`), a local date and
/// time (`2026-03-01T10:00`) or a date (`2026-03-01`, at midnight).
fn moment(value: &Value, zone: &jiff::tz::TimeZone) -> Result<Option<jiff::Zoned>, Error> {
    let bad = |what: &dyn std::fmt::Display| {
        error(format!(
            "datetime: `{what}` is not a time (milliseconds since 1970, `2026-03-01T10:00:00Z`, `2026-03-01T10:00` or `2026-03-01`)"
        ))
    };
    match value.kind() {
        ValueKind::Undefined | ValueKind::None => Ok(None),
        ValueKind::Number => {
            let ms = i64::try_from(value.clone()).map_err(|_| bad(value))?;
            let ts = jiff::Timestamp::from_millisecond(ms).map_err(|_| bad(value))?;
            Ok(Some(ts.to_zoned(zone.clone())))
        }
        ValueKind::String => {
            let s = value.as_str().unwrap_or_default().trim();
            if s.is_empty() {
                return Ok(None);
            }
            if let Ok(ts) = s.parse::<jiff::Timestamp>() {
                return Ok(Some(ts.to_zoned(zone.clone())));
            }
            if let Ok(dt) = s.parse::<jiff::civil::DateTime>() {
                return dt.to_zoned(zone.clone()).map(Some).map_err(|_| bad(&s));
            }
            match s.parse::<jiff::civil::Date>() {
                Ok(d) => d.to_zoned(zone.clone()).map(Some).map_err(|_| bad(&s)),
                Err(_) => Err(bad(&s)),
            }
        }
        _ => Err(bad(value)),
    }
}

/// The `datetime` filter: `value | datetime(style='medium', zone='UTC')`;
/// empty for an empty or missing value.
pub(crate) fn filter(
    state: &State,
    value: Value,
    style: Option<String>,
    zone: Option<String>,
) -> Result<String, Error> {
    let style_name = style.as_deref().unwrap_or("medium");
    let style = Style::parse(style_name).ok_or_else(|| {
        error(format!(
            "datetime: no style `{style_name}`; use {}",
            STYLES.join(", ")
        ))
    })?;
    let zone = match zone.as_deref() {
        None | Some("UTC") => jiff::tz::TimeZone::UTC,
        Some(name) => jiff::tz::TimeZone::get(name).map_err(|_| {
            error(format!(
                "datetime: no time zone `{name}` (an IANA name, like Europe/Istanbul)"
            ))
        })?,
    };
    let lang = language(state);
    Ok(match moment(&value, &zone)? {
        Some(at) => format(&at, lang.as_deref(), style),
        None => String::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str, zone: &str) -> jiff::Zoned {
        s.parse::<jiff::civil::DateTime>()
            .unwrap()
            .in_tz(zone)
            .unwrap()
    }

    #[test]
    fn each_style_in_turkish_and_english_from_the_locales_data() {
        let t = at("2026-12-03T09:30", "Europe/Istanbul");
        let cases = [
            (
                Style::Long,
                "Thursday, December 3, 2026 at 9:30 AM",
                "3 Aralık 2026 Perşembe 09:30",
            ),
            (Style::Medium, "Dec 3, 2026, 9:30 AM", "3 Ara 2026 09:30"),
            (Style::Short, "12/3/26", "3.12.2026"),
            (
                Style::Date,
                "Thursday, December 3, 2026",
                "3 Aralık 2026 Perşembe",
            ),
            (Style::Time, "9:30 AM", "09:30"),
            (Style::Weekday, "Thursday 9:30 AM", "Perşembe 09:30"),
        ];
        for (style, en, tr) in cases {
            assert_eq!(format(&t, Some("en"), style), en, "{style:?}");
            assert_eq!(format(&t, Some("tr"), style), tr, "{style:?}");
            assert_eq!(format(&t, Some("tr-TR"), style), tr, "{style:?}");
        }
        // No language: English. On the hour, the minutes are written.
        assert_eq!(format(&t, None, Style::Time), "9:30 AM");
        let nine = at("2026-12-07T09:00", "Europe/Istanbul");
        assert_eq!(format(&nine, Some("en"), Style::Weekday), "Monday 9:00 AM");
        assert_eq!(format(&nine, Some("tr"), Style::Weekday), "Pazartesi 09:00");
    }
}
