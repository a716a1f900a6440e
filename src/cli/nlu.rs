//! `flowbot classify FLOW` (JSON lines in, one classification out for each)
//! and `flowbot nlu eval FLOW DATA.yaml` (a classifier scored on held-out
//! phrasings).

use std::io::BufRead;
use std::path::Path;

use serde::Deserialize;

use crate::handler::Registry;

/// `flowbot nlu ...`.
#[derive(Debug, clap::Subcommand)]
pub enum NluCommand {
    /// Score the flow's classifier on held-out phrasings: a YAML list of
    /// `{ text, intent }` (`intent: ~` for a line no intent covers).
    Eval {
        /// The flow file.
        flow: std::path::PathBuf,
        /// The phrasings.
        data: std::path::PathBuf,
    },
}

fn flow_nlu(path: &Path, registry: &Registry) -> Result<crate::flow::Flow, u8> {
    let flow = super::load(path, registry)?;
    if flow.nlu.is_none() {
        eprintln!(
            "error: {} has no `nlu:` intents to classify with",
            path.display()
        );
        return Err(2);
    }
    Ok(flow)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    text: String,
    #[serde(default)]
    #[allow(dead_code)]
    language: Option<String>,
}

/// One line of `classify`'s output, its keys in this order.
#[derive(serde::Serialize)]
struct Output {
    text: String,
    intent: Option<String>,
    confidence: f64,
    alternatives: Vec<Alternative>,
}

#[derive(serde::Serialize)]
struct Alternative {
    intent: String,
    confidence: f64,
}

/// Reads `{"text": ..., "language": ...}` lines from stdin; writes one
/// classification for each. A bad line is reported on stderr with its
/// number and skipped.
pub(super) fn classify(path: &Path, registry: &Registry) -> u8 {
    let flow = match flow_nlu(path, registry) {
        Ok(f) => f,
        Err(code) => return code,
    };
    let nlu = flow.nlu.as_ref().expect("checked");
    let name = |i: u32| nlu.names[i as usize].to_string();
    let mut failed = false;
    for (n, line) in std::io::stdin().lock().lines().enumerate() {
        let Ok(line) = line else { break };
        if line.trim().is_empty() {
            continue;
        }
        let input: Line = match serde_json::from_str(&line) {
            Ok(l) => l,
            Err(e) => {
                eprintln!(
                    "line {}: {e} (a line is {{\"text\": \"...\", \"language\": \"tr\"}})",
                    n + 1
                );
                failed = true;
                continue;
            }
        };
        let c = nlu.model.classify(&input.text);
        let round = |x: f32| (f64::from(x) * 1000.0).round() / 1000.0;
        let alternatives = c
            .ranked
            .iter()
            .filter(|(i, _)| Some(*i) != c.intent)
            .map(|(i, s)| Alternative {
                intent: name(*i),
                confidence: round(*s),
            })
            .collect();
        let out = Output {
            text: input.text,
            intent: c.intent.map(name),
            confidence: round(c.confidence),
            alternatives,
        };
        let line = serde_json::to_string(&out).unwrap_or_default();
        super::out(format_args!("{line}"));
    }
    u8::from(failed)
}

/// Prints accuracy, precision and recall per intent, the confusions and
/// the accuracy at other thresholds.
pub(super) fn eval(path: &Path, data: &Path, registry: &Registry) -> u8 {
    let flow = match flow_nlu(path, registry) {
        Ok(f) => f,
        Err(code) => return code,
    };
    let text = match std::fs::read_to_string(data) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: cannot read {}: {e}", data.display());
            return 2;
        }
    };
    let cases: Vec<crate::nlu::eval::Case> =
        match crate::flow::parse_yaml(data, text, &["text", "intent", "language"]) {
            Ok(c) => c,
            Err(d) => {
                eprintln!("{d}");
                return 2;
            }
        };
    let nlu = flow.nlu.as_ref().expect("checked");
    for c in &cases {
        if let Some(i) = &c.intent {
            if !nlu.names.iter().any(|n| **n == **i) {
                eprintln!(
                    "error: {}: `{}` wants intent `{i}`, which the flow does not declare",
                    data.display(),
                    c.text
                );
                return 2;
            }
        }
    }
    let r = crate::nlu::eval::evaluate(&nlu.model, &nlu.names, &cases);
    super::out(format_args!(
        "accuracy: {:.1}% ({} of {}) at threshold {}",
        r.accuracy() * 100.0,
        r.correct,
        r.total,
        nlu.model.threshold()
    ));
    super::out(format_args!(
        "\n{:<20} {:>9} {:>7} {:>7}",
        "intent", "precision", "recall", "cases"
    ));
    for (name, tp, fp, fn_) in &r.per_intent {
        let p = if tp + fp == 0 {
            1.0
        } else {
            *tp as f64 / (tp + fp) as f64
        };
        let rc = if tp + fn_ == 0 {
            1.0
        } else {
            *tp as f64 / (tp + fn_) as f64
        };
        super::out(format_args!(
            "{name:<20} {:>8.0}% {:>6.0}% {:>7}",
            p * 100.0,
            rc * 100.0,
            tp + fn_
        ));
    }
    if !r.confusions.is_empty() {
        super::out(format_args!(
            "\nconfusions (text, expected, classified, score):"
        ));
        for (text, want, got, score) in &r.confusions {
            super::out(format_args!("  {text:?}: {want} -> {got} ({score:.2})"));
        }
    }
    let (best_t, best) = r
        .sweep
        .iter()
        .copied()
        .fold((0.0, 0.0), |b, x| if x.1 > b.1 { x } else { b });
    super::out(format_args!(
        "\nat other thresholds: best {:.1}% at {best_t:.2} ({})",
        best * 100.0,
        r.sweep
            .iter()
            .map(|(t, a)| format!("{t:.2}: {:.0}%", a * 100.0))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    0
}
