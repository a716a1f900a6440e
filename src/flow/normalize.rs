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

/// Whether a message word is a rule's word, allowing what the rule
/// allows: going on after it (`endings`, for words of 3 letters or more)
/// and `typos` edits (for words of 4 letters or more).
pub(crate) fn word_like(said: &str, word: &str, endings: bool, typos: u8) -> bool {
    if said == word {
        return true;
    }
    let len = word.chars().count();
    if endings && len >= 3 && said.starts_with(word) {
        return true;
    }
    if typos == 0 || len < 4 {
        return false;
    }
    let typos = usize::from(typos);
    if strsim::damerau_levenshtein(said, word) <= typos {
        return true;
    }
    // An ending after a typo: the message word's start against the word.
    endings && {
        let head: String = said.chars().take(len).collect();
        strsim::damerau_levenshtein(&head, word) <= typos
    }
}

/// Whether the message's words are (`whole`) or contain one of the
/// phrases, word by word as [`word_like`] allows.
pub(crate) fn tolerant_match(
    message_words: &[&str],
    phrases: &[Vec<Box<str>>],
    whole: bool,
    endings: bool,
    typos: u8,
) -> bool {
    phrases.iter().any(|ph| {
        if ph.is_empty()
            || ph.len() > message_words.len()
            || (whole && ph.len() != message_words.len())
        {
            return false;
        }
        message_words.windows(ph.len()).any(|w| {
            w.iter()
                .zip(ph)
                .all(|(a, b)| word_like(a, b, endings, typos))
        })
    })
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

    #[test]
    fn tolerant_words_take_endings_and_typos_as_told() {
        let w = |m: &str, k: &str, e: bool, t: u8| word_like(&normalize(m), &normalize(k), e, t);
        assert!(w("şikayetim", "şikayet", true, 0));
        assert!(w("şikayetçiyim", "şikayet", true, 0));
        assert!(!w("şikayetim", "şikayet", false, 0));
        assert!(w("sikayet", "şikayet", false, 0));
        assert!(w("sikayte", "şikayet", false, 1));
        assert!(!w("sikayte", "şikayet", false, 0));
        assert!(w("sikyaetim", "şikayet", true, 1));
        // Short words need to be exact.
        assert!(!w("ac", "ab", true, 1));
        assert!(!w("abd", "abc", false, 1));
        let words = ["bir", "sikayetim", "var"];
        let phrase = vec![vec![Box::from("sikayet")]];
        assert!(tolerant_match(&words, &phrase, false, true, 0));
        assert!(!tolerant_match(&words, &phrase, true, true, 0));
        assert!(tolerant_match(&["sikayetim"], &phrase, true, true, 0));
    }
}
