//! Scoring the classifier on held-out phrasings (`flowbot nlu eval`):
//! accuracy, each intent's precision and recall, the confusions, and the
//! accuracy at other thresholds (to see how far the default is from the
//! best).

use serde::Deserialize;

use super::Model;

/// One held-out phrasing and the intent it means (none: no intent).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    /// What a customer wrote.
    pub text: String,
    /// The intent it means; `~` for none.
    pub intent: Option<String>,
    /// Its language (for the record; every example is used).
    #[serde(default)]
    pub language: Option<String>,
}

/// How the classifier did.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// Cases in all.
    pub total: usize,
    /// Cases classified right (an intent-less one right when not sure).
    pub correct: usize,
    /// Each intent (and "none" last): name, true positives, false
    /// positives, false negatives.
    pub per_intent: Vec<(String, usize, usize, usize)>,
    /// The wrong ones: text, wanted, got, score.
    pub confusions: Vec<(String, String, String, f32)>,
    /// Accuracy at thresholds from 0.05 to 0.95.
    pub sweep: Vec<(f32, f64)>,
}

impl Report {
    /// Accuracy, 0 to 1.
    pub fn accuracy(&self) -> f64 {
        if self.total == 0 {
            return 0.0;
        }
        self.correct as f64 / self.total as f64
    }
}

const NONE: &str = "(none)";

/// Scores `model` (whose intents are `names`) on `cases`.
pub fn evaluate(model: &Model, names: &[Box<str>], cases: &[Case]) -> Report {
    let name = |i: Option<u32>| i.map_or(NONE.to_owned(), |i| names[i as usize].to_string());
    let mut counts: Vec<(String, usize, usize, usize)> = names
        .iter()
        .map(|n| (n.to_string(), 0, 0, 0))
        .chain(std::iter::once((NONE.to_owned(), 0, 0, 0)))
        .collect();
    let slot = |n: &str| names.iter().position(|x| &**x == n).unwrap_or(names.len());
    let mut correct = 0;
    let mut confusions = Vec::new();
    let mut classified = Vec::new();
    for c in cases {
        let got = model.classify(&c.text);
        let want = c.intent.clone().unwrap_or_else(|| NONE.to_owned());
        let got_name = name(got.intent);
        if got_name == want {
            correct += 1;
            counts[slot(&want)].1 += 1;
        } else {
            counts[slot(&got_name)].2 += 1;
            counts[slot(&want)].3 += 1;
            confusions.push((c.text.clone(), want.clone(), got_name, got.confidence));
        }
        classified.push((want, got));
    }
    let sweep = (1..20)
        .map(|k| {
            let t = k as f32 * 0.05;
            let right = classified
                .iter()
                .filter(|(want, got)| {
                    let (top, score) = got.ranked.first().copied().unwrap_or((0, 0.0));
                    let second = got.ranked.get(1).map_or(0.0, |r| r.1);
                    let sure = score >= t && score - second >= model.margin;
                    name(sure.then_some(top)) == *want
                })
                .count();
            (t, right as f64 / classified.len().max(1) as f64)
        })
        .collect();
    Report {
        total: cases.len(),
        correct,
        per_intent: counts,
        confusions,
        sweep,
    }
}
