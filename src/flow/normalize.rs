//! Text normalization for matching: case- and accent-insensitive, spacing ignored.
//!
//! `text:` and `keyword:` rules compare normalized forms: lowercase, accents
//! removed (NFD, combining marks dropped, so `Menü` matches `menu` and `İptal`
//! matches `iptal`), runs of spaces folded, and surrounding punctuation dropped
//! (`Menu!` is `menu`). Flow synonyms are normalized once when the flow compiles;
//! a message is normalized once per turn. ASCII input, the common case, skips the
//! Unicode decomposition.

use unicode_normalization::char::is_combining_mark;
use unicode_normalization::UnicodeNormalization;

/// The normalized form used to compare whole messages.
///
/// ```
/// # use flowbot::internals::flow::normalize;
/// assert_eq!(normalize("  Start   OVER! "), "start over");
/// assert_eq!(normalize("Menü"), "menu");
/// ```
pub fn normalize(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut space = false;
    let mut push = |c: char, out: &mut String| {
        if c.is_whitespace() {
            space = !out.is_empty();
        } else {
            if space {
                out.push(' ');
                space = false;
            }
            if c.is_ascii() {
                out.push(c.to_ascii_lowercase());
            } else {
                out.extend(c.to_lowercase());
            }
        }
    };
    if s.is_ascii() {
        for b in s.bytes() {
            push(char::from(b), &mut out);
        }
    } else {
        for c in s.nfd().filter(|c| !is_combining_mark(*c)) {
            // Turkish dotless i folds to i as well.
            push(if c == 'ı' { 'i' } else { c }, &mut out);
        }
    }
    let trimmed = out.trim_matches(|c: char| c.is_ascii_punctuation() || c == '¡' || c == '¿');
    if trimmed.len() != out.len() {
        trimmed.trim().to_owned()
    } else {
        out
    }
}

/// The words of a normalized text, punctuation ignored.
pub fn words(normalized: &str) -> impl Iterator<Item = &str> {
    normalized
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
}

/// Whether `phrase` (normalized words) occurs as whole words in `message_words`.
pub(crate) fn contains_phrase(message_words: &[&str], phrase: &[Box<str>]) -> bool {
    if phrase.is_empty() || phrase.len() > message_words.len() {
        return false;
    }
    message_words
        .windows(phrase.len())
        .any(|w| w.iter().zip(phrase).all(|(a, b)| *a == &**b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folds_case_accents_space_and_punctuation() {
        assert_eq!(normalize("MENÜ"), "menu");
        assert_eq!(normalize("İptal"), "iptal");
        assert_eq!(normalize("ıptal"), "iptal");
        assert_eq!(normalize("  talk   to  us?! "), "talk to us");
        assert_eq!(normalize("¿Qué?"), "que");
        assert_eq!(normalize(""), "");
        assert_eq!(normalize("!!!"), "");
    }

    #[test]
    fn phrases_match_whole_words_only() {
        let msg = normalize("Where is my order, please?");
        let w: Vec<&str> = words(&msg).collect();
        assert!(contains_phrase(&w, &["order".into()]));
        assert!(contains_phrase(&w, &["my".into(), "order".into()]));
        assert!(!contains_phrase(&w, &["ord".into()]));
        assert!(!contains_phrase(&w, &["order".into(), "my".into()]));
    }
}
