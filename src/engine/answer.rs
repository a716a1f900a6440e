//! Checking an answer to `ask:` and turning it into the value saved.
//!
//! Built-in kinds normalize what they accept so that later templates and actions
//! see one form: numbers become numbers; phone numbers E.164 (`+905321234567`),
//! checked against the numbering plan of their country (libphonenumber's, via
//! `phonenumber`; a number without a country code is read in
//! `settings.default_region`); e-mail addresses are checked by `email_address`
//! (RFC 5322), with a dotted domain, the domain lowercased; dates `YYYY-MM-DD`
//! (written as `2026-03-01`, `01.03.2026` or `01/03/2026`, day first),
//! checked by `jiff`'s calendar.

use minijinja::Value;

use crate::flow::{Check, CheckKind};

/// The value to save and the regex's named captures, or `None` if invalid.
pub(crate) fn check(c: &Check, answer: &str) -> Option<(Value, Vec<(String, Value)>)> {
    let answer = answer.trim();
    if answer.is_empty() {
        return None;
    }
    let mut captures = Vec::new();
    if let Some(re) = &c.regex {
        let caps = re.captures(answer)?;
        for name in re.capture_names().flatten() {
            if let Some(m) = caps.name(name) {
                captures.push((name.to_owned(), Value::from(m.as_str())));
            }
        }
    }
    let value = match c.kind {
        CheckKind::Text => Value::from(answer),
        CheckKind::Number => {
            let n = parse_number(answer)?;
            if c.min.is_some_and(|m| n < m) || c.max.is_some_and(|m| n > m) {
                return None;
            }
            if n.fract() == 0.0 && n.abs() < 9.0e15 {
                Value::from(n as i64)
            } else {
                Value::from(n)
            }
        }
        CheckKind::Email => Value::from(email(answer)?),
        CheckKind::Phone => Value::from(phone(answer, c.region)?),
        CheckKind::Date => Value::from(date(answer)?),
    };
    Some((value, captures))
}

fn parse_number(s: &str) -> Option<f64> {
    let s = s.replace([' ', '_'], "");
    // Accept a decimal comma when there is no dot ("3,5").
    let s = if !s.contains('.') && s.matches(',').count() == 1 {
        s.replace(',', ".")
    } else {
        s.replace(',', "")
    };
    let n: f64 = s.parse().ok()?;
    n.is_finite().then_some(n)
}

fn email(s: &str) -> Option<String> {
    let parsed: email_address::EmailAddress = s.parse().ok()?;
    let (local, domain) = (parsed.local_part(), parsed.domain());
    // A bare host ("a@localhost") is an address, but not one a customer has.
    let dotted = domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains("..");
    dotted.then(|| format!("{local}@{}", domain.to_lowercase()))
}

fn phone(s: &str, region: Option<phonenumber::country::Id>) -> Option<String> {
    if !s
        .chars()
        .all(|c| c.is_ascii_digit() || " +-().".contains(c))
    {
        return None;
    }
    // "00" is the international prefix almost everywhere.
    let s = match s.trim_start().strip_prefix("00") {
        Some(rest) => format!("+{rest}"),
        None => s.to_owned(),
    };
    let number = phonenumber::parse(region, &s).ok()?;
    phonenumber::is_valid(&number).then(|| number.format().to_string())
}

fn date(s: &str) -> Option<String> {
    const FORMATS: [&str; 6] = [
        "%Y-%m-%d", "%Y/%m/%d", "%Y.%m.%d", "%d.%m.%Y", "%d/%m/%Y", "%d-%m-%Y",
    ];
    let date = FORMATS
        .iter()
        .find_map(|f| jiff::civil::Date::strptime(f, s).ok())?;
    (date.year() >= 1).then(|| date.strftime("%Y-%m-%d").to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use regex::Regex;

    fn kind(k: CheckKind) -> Check {
        Check {
            kind: k,
            regex: None,
            min: None,
            max: None,
            region: None,
        }
    }

    #[test]
    fn numbers() {
        let c = Check {
            min: Some(1.0),
            max: Some(10.0),
            ..kind(CheckKind::Number)
        };
        assert_eq!(check(&c, " 3 ").unwrap().0, Value::from(3));
        assert_eq!(check(&c, "2,5").unwrap().0, Value::from(2.5));
        assert!(check(&c, "11").is_none());
        assert!(check(&c, "three").is_none());
        assert!(check(&c, "NaN").is_none());
    }

    #[test]
    fn emails() {
        let c = kind(CheckKind::Email);
        assert_eq!(
            check(&c, "Ada@Example.COM").unwrap().0,
            Value::from("Ada@example.com")
        );
        for bad in [
            "ada",
            "ada@",
            "@x.com",
            "a b@x.com",
            "a@x",
            "a@.x.com",
            "a@x..com",
        ] {
            assert!(check(&c, bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn phones() {
        let c = kind(CheckKind::Phone);
        assert_eq!(
            check(&c, "+90 555 111 22 33").unwrap().0,
            Value::from("+905551112233")
        );
        assert_eq!(
            check(&c, "0090 555 111 22 33").unwrap().0,
            Value::from("+905551112233")
        );
        assert!(check(&c, "12345").is_none());
        assert!(check(&c, "call me").is_none());
        // Without a country code: read in the flow's region, else refused.
        assert!(check(&c, "0532 123 45 67").is_none());
        let tr = Check {
            region: Some(phonenumber::country::Id::TR),
            ..kind(CheckKind::Phone)
        };
        assert_eq!(
            check(&tr, "0532 123 45 67").unwrap().0,
            Value::from("+905321234567")
        );
        // Impossible numbers: too short for Turkey, an unassigned prefix.
        assert!(check(&tr, "0532 123 45").is_none());
        assert!(check(&tr, "+90 000 123 45 67").is_none());
        // A number with its country code is read as such anywhere.
        assert_eq!(
            check(&tr, "+49 30 901820").unwrap().0,
            Value::from("+4930901820")
        );
    }

    #[test]
    fn dates() {
        let c = kind(CheckKind::Date);
        assert_eq!(
            check(&c, "2024-02-29").unwrap().0,
            Value::from("2024-02-29")
        );
        assert_eq!(
            check(&c, "01.03.2026").unwrap().0,
            Value::from("2026-03-01")
        );
        assert_eq!(check(&c, "1/3/2026").unwrap().0, Value::from("2026-03-01"));
        for bad in [
            "2023-02-29",
            "2026-13-01",
            "32.01.2026",
            "tomorrow",
            "2026-1",
        ] {
            assert!(check(&c, bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn regex_with_captures() {
        let c = Check {
            regex: Some(Regex::new(r"^(?P<area>\d{3})-\d{4}$").unwrap()),
            ..kind(CheckKind::Text)
        };
        let (v, caps) = check(&c, "555-1234").unwrap();
        assert_eq!(v, Value::from("555-1234"));
        assert_eq!(caps, vec![("area".to_string(), Value::from("555"))]);
        assert!(check(&c, "5551234").is_none());
    }
}
