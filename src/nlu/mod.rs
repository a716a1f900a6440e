//! Understanding free text: intents classified from a flow's own examples.
//!
//! A flow declares intents with examples (`nlu:`); a rule matches one
//! (`{ intent: track_order, goto: ask_order }`). The classifier is built when
//! the flow compiles, from the examples alone: no download, no model file,
//! the same answer for the same input everywhere (no randomness, a fixed
//! hash).
//!
//! **How.** A text is normalized as `text:` rules compare it (lower case,
//! accents and Turkish letters folded: `Siparişim`, `SIPARISIM` and
//! `siparisim` are one form), split into words, and described by its words and
//! the character 2- to 5-grams of each word with its boundaries (` sip`,
//! `ris`, `rim `...), weighted by TF-IDF over the examples (a word's ending or
//! a typo changes a few n-grams, not the whole word). An intent's score is
//! the cosine similarity of the message to its nearest example, blended with
//! the similarity to the intent's centroid (the mean of its examples), so a
//! paraphrase close to one example and one that shares words with several
//! both score. Features no example has still count in the message's length,
//! so text unlike every example (another topic, gibberish) scores low: "not
//! sure" comes from the score itself, not only from a ranking.
//!
//! The method was chosen by measurement against a TF-IDF + logistic
//! regression baseline (`scripts/nlu-baseline.sh`, figures in
//! BENCHMARKS.md): on the support flow's held-out phrasings it is as
//! accurate at its default threshold as the baseline at its best one. A
//! similarity needs no training loop (it loads in about a millisecond) and
//! says "unlike every example" by itself, where a linear model's
//! probabilities always sum to one over the known intents.
//!
//! **Not sure.** Below `threshold` (a score), or when the best two are
//! closer than `margin`, no intent matches; the flow's `not_sure:` can then
//! offer the likeliest as buttons.

mod classifier;
pub mod eval;
pub mod llm;

pub(crate) use classifier::Stub;
pub use classifier::{
    caller, for_caller, Caller, Classifier, ClassifyError, ClassifyInput, IntentInfo, Record,
    Verdict,
};

use std::collections::HashMap;

use crate::flow::{normalize, words};

/// The default score below which no intent matches.
pub const DEFAULT_THRESHOLD: f32 = 0.5;

/// The default least difference between the best two scores.
pub const DEFAULT_MARGIN: f32 = 0.02;

/// The share of the nearest example in an intent's score (the rest is the
/// centroid's), chosen on held-out phrasings (BENCHMARKS.md).
const NEAREST: f32 = 0.3;

/// Scores are similarities raised to this power, so that 0.5 falls where
/// a raw similarity of about 0.22 does: where, on held-out phrasings
/// (tests/nlu/support_eval.yaml), an intent is right far more often than
/// not, and other topics fall below (measured: BENCHMARKS.md).
const CALIBRATION: f32 = 0.46;

/// A sparse vector: feature index, weight; sorted by index.
type Sparse = Vec<(u32, f32)>;

/// What the classifier made of a text.
#[derive(Debug, Clone, PartialEq)]
pub struct Classification {
    /// The intent (its index among the flow's), when sure.
    pub intent: Option<u32>,
    /// The best intent's score, whether sure or not.
    pub confidence: f32,
    /// The intents by score, best first (at most [`RANKED`]).
    pub ranked: Vec<(u32, f32)>,
}

/// How many intents a classification ranks.
pub const RANKED: usize = 3;

/// Features are hashes already: they are their own hash.
#[derive(Default, Clone, Copy)]
struct Id(u64);

impl std::hash::Hasher for Id {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }
    fn write_u32(&mut self, n: u32) {
        // Spread over the high bits too (hashbrown reads them).
        self.0 = u64::from(n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

type IdMap<V> = HashMap<u32, V, std::hash::BuildHasherDefault<Id>>;

/// One feature the examples have: its weight and where its postings are.
#[derive(Debug, Clone, Copy)]
struct Feature {
    idf: f32,
    /// Its entries in `example_postings`.
    examples: (u32, u32),
    /// Its entries in `centroid_postings`.
    centroids: (u32, u32),
}

/// A classifier trained on a flow's examples.
///
/// Stored as an inverted index: each feature lists the examples and the
/// centroids that have it, so a message costs what its own features'
/// lists hold, not a pass over every example.
#[derive(Debug, Clone)]
pub struct Model {
    /// Each feature the examples have.
    features: IdMap<Feature>,
    /// The weight of a feature no example has.
    unseen: f32,
    /// (example, weight) by feature.
    example_postings: Vec<(u32, f32)>,
    /// (intent, weight) by feature.
    centroid_postings: Vec<(u32, f32)>,
    /// Each example's intent.
    example_intents: Vec<u32>,
    intents: usize,
    threshold: f32,
    margin: f32,
}

/// A raw similarity as a score (see [`CALIBRATION`]).
fn calibrated(raw: f32) -> f32 {
    raw.powf(CALIBRATION)
}

/// A stable 32-bit hash (FNV-1a) of a feature: the same on every machine.
fn hash(kind: u8, s: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in std::iter::once(kind).chain(s.iter().copied()) {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// The features of a text with their counts, sorted by feature: each
/// normalized word, and the character 2- to 5-grams of each word with its
/// boundaries.
fn features(text: &str) -> Vec<(u32, f32)> {
    let mut out = Vec::new();
    features_into(&normalize(text), &mut Scratch::default(), &mut out);
    out
}

/// Buffers a classification reuses (one set per thread): a message costs
/// no allocation once they have grown.
#[derive(Default)]
struct Scratch {
    bytes: Vec<u8>,
    starts: Vec<usize>,
    features: Vec<(u32, f32)>,
    known: Vec<(f32, Feature)>,
    per_example: Vec<f32>,
    centroid: Vec<f32>,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
}

/// [`features`] of an already normalized text, into `out`.
fn features_into(norm: &str, scratch: &mut Scratch, out: &mut Vec<(u32, f32)>) {
    out.clear();
    let (bytes, starts) = (&mut scratch.bytes, &mut scratch.starts);
    for w in words(norm) {
        out.push((hash(b'w', w.as_bytes()), 1.0));
        bytes.clear();
        starts.clear();
        bytes.push(b' ');
        starts.push(0);
        for (i, _) in w.char_indices() {
            starts.push(1 + i);
        }
        bytes.extend_from_slice(w.as_bytes());
        starts.push(bytes.len());
        bytes.push(b' ');
        starts.push(bytes.len());
        let chars = starts.len() - 1;
        for n in 2..=5usize {
            if chars < n {
                break;
            }
            for i in 0..=chars - n {
                let gram = &bytes[starts[i]..starts[i + n]];
                out.push((hash(b'0' + n as u8, gram), 1.0));
            }
        }
    }
    out.sort_unstable_by_key(|(k, _)| *k);
    out.dedup_by(|later, first| {
        if later.0 == first.0 {
            first.1 += later.1;
            true
        } else {
            false
        }
    });
}

fn normalized(mut v: Sparse) -> Sparse {
    let n = v.iter().map(|(_, x)| x * x).sum::<f32>().sqrt();
    if n > 0.0 {
        for (_, x) in &mut v {
            *x /= n;
        }
    }
    v
}

impl Model {
    /// Trains on each intent's examples (indexed as given).
    pub fn train(intents: &[Vec<String>], threshold: f32, margin: f32) -> Model {
        let docs: Vec<(u32, Vec<(u32, f32)>)> = intents
            .iter()
            .enumerate()
            .flat_map(|(i, ex)| ex.iter().map(move |e| (i as u32, features(e))))
            .collect();
        let mut df: IdMap<u32> = IdMap::default();
        for (_, f) in &docs {
            for (k, _) in f {
                *df.entry(*k).or_default() += 1;
            }
        }
        let n = docs.len() as f32;
        let idf: IdMap<f32> = df
            .into_iter()
            .map(|(k, d)| (k, ((1.0 + n) / (1.0 + d as f32)).ln() + 1.0))
            .collect();
        let unseen = (1.0 + n).ln() + 1.0;
        let weigh = |f: Vec<(u32, f32)>| -> Sparse {
            normalized(
                f.into_iter()
                    .map(|(k, tf)| (k, (1.0 + tf.ln()) * idf.get(&k).copied().unwrap_or(unseen)))
                    .collect(),
            )
        };
        let mut sums: Vec<IdMap<f32>> = vec![IdMap::default(); intents.len()];
        let mut examples: Vec<(u32, Sparse)> = Vec::with_capacity(docs.len());
        for (i, f) in docs {
            let v = weigh(f);
            for (k, x) in &v {
                *sums[i as usize].entry(*k).or_default() += x;
            }
            examples.push((i, v));
        }
        let centroids: Vec<Sparse> = sums
            .into_iter()
            .map(|m| {
                let mut v: Sparse = m.into_iter().collect();
                v.sort_unstable_by_key(|(k, _)| *k);
                normalized(v)
            })
            .collect();
        // The inverted index, feature by feature.
        let mut by_feature: IdMap<(Sparse, Sparse)> = IdMap::default();
        for (e, (_, v)) in examples.iter().enumerate() {
            for (k, x) in v {
                by_feature.entry(*k).or_default().0.push((e as u32, *x));
            }
        }
        for (i, v) in centroids.iter().enumerate() {
            for (k, x) in v {
                by_feature.entry(*k).or_default().1.push((i as u32, *x));
            }
        }
        let mut keys: Vec<u32> = by_feature.keys().copied().collect();
        keys.sort_unstable();
        let mut model = Model {
            features: IdMap::default(),
            unseen,
            example_postings: Vec::new(),
            centroid_postings: Vec::new(),
            example_intents: examples.iter().map(|(i, _)| *i).collect(),
            intents: intents.len(),
            threshold,
            margin,
        };
        model.features.reserve(keys.len());
        for k in keys {
            let (ex, cen) = by_feature.remove(&k).unwrap_or_default();
            let e0 = model.example_postings.len() as u32;
            model.example_postings.extend(ex);
            let c0 = model.centroid_postings.len() as u32;
            model.centroid_postings.extend(cen);
            model.features.insert(
                k,
                Feature {
                    idf: idf.get(&k).copied().unwrap_or(unseen),
                    examples: (e0, model.example_postings.len() as u32),
                    centroids: (c0, model.centroid_postings.len() as u32),
                },
            );
        }
        model
    }

    /// Each intent's score for a text, by index.
    pub fn scores(&self, text: &str) -> Vec<f32> {
        let mut raw = self.raw(text);
        for r in &mut raw {
            *r = calibrated(*r);
        }
        raw
    }

    /// Each intent's similarity to a text, before calibration (which keeps
    /// the order: only the ranked few are calibrated).
    fn raw(&self, text: &str) -> Vec<f32> {
        self.raw_normalized(&normalize(text))
    }

    fn raw_normalized(&self, norm: &str) -> Vec<f32> {
        SCRATCH.with(|s| match s.try_borrow_mut() {
            Ok(mut s) => self.raw_in(norm, &mut s),
            Err(_) => self.raw_in(norm, &mut Scratch::default()),
        })
    }

    fn raw_in(&self, norm: &str, s: &mut Scratch) -> Vec<f32> {
        let mut f = std::mem::take(&mut s.features);
        features_into(norm, s, &mut f);
        let mut best = vec![0f32; self.intents];
        // The text's TF-IDF weights (features no example has count in its
        // length only), then its dot products through the index.
        s.known.clear();
        let mut norm2 = 0f32;
        for (k, tf) in &f {
            let feature = self.features.get(k).copied();
            let tf = if *tf == 1.0 { 1.0 } else { 1.0 + tf.ln() };
            let w = tf * feature.map_or(self.unseen, |x| x.idf);
            norm2 += w * w;
            if let Some(feature) = feature {
                s.known.push((w, feature));
            }
        }
        s.features = f;
        let len = norm2.sqrt();
        if len == 0.0 || s.known.is_empty() {
            return best;
        }
        s.per_example.clear();
        s.per_example.resize(self.example_intents.len(), 0.0);
        s.centroid.clear();
        s.centroid.resize(self.intents, 0.0);
        for (w, feature) in &s.known {
            let w = w / len;
            let (a, b) = feature.examples;
            for (e, x) in &self.example_postings[a as usize..b as usize] {
                s.per_example[*e as usize] += w * x;
            }
            let (a, b) = feature.centroids;
            for (i, x) in &self.centroid_postings[a as usize..b as usize] {
                s.centroid[*i as usize] += w * x;
            }
        }
        for (e, x) in s.per_example.iter().enumerate() {
            let b = &mut best[self.example_intents[e] as usize];
            if *x > *b {
                *b = *x;
            }
        }
        for (b, c) in best.iter_mut().zip(&s.centroid) {
            *b = (NEAREST * *b + (1.0 - NEAREST) * c).max(0.0);
        }
        best
    }

    /// Classifies a text: the best intent if its score reaches the
    /// threshold and leads the next by the margin.
    pub fn classify(&self, text: &str) -> Classification {
        self.classify_normalized(&normalize(text))
    }

    /// [`Model::classify`] of a text already normalized (as `text:` rules
    /// compare it: [`crate::flow::normalize`]).
    pub fn classify_normalized(&self, norm: &str) -> Classification {
        let raw = self.raw_normalized(norm);
        let mut ranked: Vec<(u32, f32)> = Vec::with_capacity(RANKED + 1);
        for (i, s) in raw.iter().enumerate() {
            let at = ranked
                .iter()
                .position(|(j, t)| *s > *t || (*s == *t && (i as u32) < *j))
                .unwrap_or(ranked.len());
            if at < RANKED {
                ranked.insert(at, (i as u32, *s));
                ranked.truncate(RANKED);
            }
        }
        for (_, s) in &mut ranked {
            *s = calibrated(*s);
        }
        let (top, confidence) = ranked.first().copied().unwrap_or((0, 0.0));
        let second = ranked.get(1).map_or(0.0, |r| r.1);
        let sure = confidence >= self.threshold && confidence - second >= self.margin;
        Classification {
            intent: sure.then_some(top),
            confidence,
            ranked,
        }
    }

    /// Bytes it keeps, about.
    pub fn weight(&self) -> usize {
        (self.example_postings.len() + self.centroid_postings.len()) * 8
            + self.features.capacity() * (std::mem::size_of::<(u32, Feature)>() + 1)
            + self.example_intents.len() * 4
            + std::mem::size_of::<Model>()
    }

    /// The threshold.
    pub fn threshold(&self) -> f32 {
        self.threshold
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> Model {
        Model::train(
            &[
                vec!["where is my order".into(), "siparişim nerede".into()],
                vec!["i want to complain".into(), "şikayetim var".into()],
            ],
            DEFAULT_THRESHOLD,
            DEFAULT_MARGIN,
        )
    }

    #[test]
    fn endings_missing_letters_and_typos_do_not_defeat_it() {
        let m = model();
        for (text, want) in [
            ("SIPARISIM NEREDE", 0),
            ("siparisim nerde", 0),
            ("wheres my ordr", 0),
            ("şikayetim", 1),
            ("sikayetci olmak istiyorum", 1),
        ] {
            let c = m.classify(text);
            assert_eq!(c.ranked[0].0, want, "{text}: {c:?}");
        }
    }

    #[test]
    fn the_same_everywhere_and_unsure_about_other_things() {
        let m = model();
        assert_eq!(
            m.classify("where is my order"),
            model().classify("where is my order")
        );
        assert_eq!(m.classify("where is my order").intent, Some(0));
        assert_eq!(m.classify("qwerty zxcv").intent, None);
        assert_eq!(m.classify("").intent, None);
    }
}
