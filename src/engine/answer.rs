//! Checking an answer to `ask:` and turning it into the value saved.
//!
//! Built-in kinds normalize what they accept so that later templates and actions
//! see one form: numbers become numbers, phone numbers `+` and digits, dates
//! `YYYY-MM-DD` (written as `2026-03-01`, `01.03.2026` or `01/03/2026`, day first).

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
        CheckKind::Phone => Value::from(phone(answer)?),
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
    let (local, domain) = s.split_once('@')?;
    let ok = !local.is_empty()
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && domain.contains('.')
        && !s.chars().any(char::is_whitespace)
        && !domain.contains('@')
        && !domain.contains("..");
    ok.then(|| format!("{local}@{}", domain.to_lowercase()))
}

fn phone(s: &str) -> Option<String> {
    if !s
        .chars()
        .all(|c| c.is_ascii_digit() || " +-().".contains(c))
    {
        return None;
    }
    let plus = s.trim_start().starts_with('+') || s.trim_start().starts_with("00");
    let digits: String = s.chars().filter(char::is_ascii_digit).collect();
    let digits = if s.trim_start().starts_with("00") {
        digits[2..].to_string()
    } else {
        digits
    };
    if !(7..=15).contains(&digits.len()) {
        return None;
    }
    Some(if plus { format!("+{digits}") } else { digits })
}

fn date(s: &str) -> Option<String> {
    let parts: Vec<&str> = s.split(['-', '.', '/']).collect();
    let [a, b, c] = parts.as_slice() else {
        return None;
    };
    let num = |x: &str| -> Option<u32> {
        (!x.is_empty() && x.len() <= 4 && x.bytes().all(|b| b.is_ascii_digit()))
            .then(|| x.parse().ok())
            .flatten()
    };
    let (y, m, d) = if a.len() == 4 {
        (num(a)?, num(b)?, num(c)?)
    } else if c.len() == 4 {
        (num(c)?, num(b)?, num(a)?)
    } else {
        return None;
    };
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let days = match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return None,
    };
    (d >= 1 && d <= days && y >= 1).then(|| format!("{y:04}-{m:02}-{d:02}"))
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
