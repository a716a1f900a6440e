//! Text from outside (a customer's message, a file, a server's answer) as it
//! is kept, logged or shown: cut short, control characters made visible, and
//! an error with the chain of its causes.

/// At most `max` characters of `s`, with `…` where it was cut, control
/// characters shown as `\u{fffd}`.
pub(crate) fn shorten(s: &str, max: usize) -> String {
    let mut out: String = s.chars().take(max).map(visible).collect();
    if s.chars().nth(max).is_some() {
        out.push('…');
    }
    out
}

/// `c`, or `\u{fffd}` for a control character other than a tab.
pub(crate) fn visible(c: char) -> char {
    if c.is_control() && c != '\t' {
        '\u{fffd}'
    } else {
        c
    }
}

/// An error and its causes, `: `-separated (the HTTP and database clients say
/// the useful part, "connection refused", only in a cause).
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_text_is_cut_and_control_characters_shown() {
        assert_eq!(shorten("abc", 5), "abc");
        assert_eq!(shorten("abcdef", 3), "abc…");
        assert_eq!(shorten("a\u{1}b", 5), "a\u{fffd}b");
    }
}
