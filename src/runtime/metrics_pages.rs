//! The `/metrics` pages of a process that runs many bots.
//!
//! Every series carries a `bot` label, so 10,000 bots times every family is
//! more series than Prometheus should scrape from one page. The root page
//! carries, for each series, its total over all bots (the same name and
//! labels without `bot`) and the series of the N busiest bots (by turns);
//! each bot's own series are on its own page. Both are cut from the text the
//! registry encodes, family by family, so every family keeps its `# HELP` and
//! `# TYPE` and the totals of a histogram stay a histogram (buckets, sum and
//! count add up across bots).

use std::collections::{BTreeMap, HashMap};

/// Families whose values mean nothing added up (a fingerprint).
const NOT_SUMMED: &[&str] = &["flowbot_flow_version"];

/// A sample line: its metric name, its labels without `bot`, its bot, its value.
struct Sample<'a> {
    name: &'a str,
    labels: String,
    bot: Option<&'a str>,
    value: f64,
}

fn sample(line: &str) -> Option<Sample<'_>> {
    let (series, value) = line.rsplit_once(' ')?;
    let value: f64 = value.parse().ok()?;
    let (name, labels) = match series.split_once('{') {
        Some((name, rest)) => (name, rest.strip_suffix('}')?),
        None => (series, ""),
    };
    let mut bot = None;
    let mut kept: Vec<&str> = Vec::new();
    // Label values here are bot names and fixed words: no `,` or `"` inside.
    for label in labels.split(',').filter(|l| !l.is_empty()) {
        match label
            .strip_prefix("bot=\"")
            .and_then(|v| v.strip_suffix('"'))
        {
            Some(b) => bot = Some(b),
            None => kept.push(label),
        }
    }
    Some(Sample {
        name,
        labels: kept.join(","),
        bot,
        value,
    })
}

fn series(name: &str, labels: &str) -> String {
    if labels.is_empty() {
        name.to_owned()
    } else {
        format!("{name}{{{labels}}}")
    }
}

fn number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// The text split into families: the comment lines and the sample lines of each.
fn families(text: &str) -> Vec<(Vec<&str>, Vec<&str>)> {
    let mut out: Vec<(Vec<&str>, Vec<&str>)> = Vec::new();
    for line in text.lines() {
        if line.starts_with("# HELP") || out.is_empty() {
            out.push((Vec::new(), Vec::new()));
        }
        let last = out.last_mut().expect("pushed");
        if line.starts_with('#') {
            last.0.push(line);
        } else if !line.is_empty() {
            last.1.push(line);
        }
    }
    out
}

/// The root page: totals over all bots and the series of the `top` busiest.
pub(crate) fn root(text: &str, top: usize) -> String {
    let mut turns: HashMap<&str, f64> = HashMap::new();
    for line in text
        .lines()
        .filter(|l| l.starts_with("flowbot_turns_total{"))
    {
        if let Some(Sample {
            bot: Some(b),
            value,
            ..
        }) = sample(line)
        {
            *turns.entry(b).or_default() += value;
        }
    }
    let mut busiest: Vec<(&str, f64)> = turns.into_iter().collect();
    busiest.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(b.0)));
    let shown: std::collections::HashSet<&str> =
        busiest.iter().take(top).map(|(b, _)| *b).collect();
    let mut out = String::with_capacity(text.len().min(1 << 20));
    for (comments, samples) in families(text) {
        let eof = comments.contains(&"# EOF");
        for c in comments.iter().filter(|c| **c != "# EOF") {
            out.push_str(c);
            out.push('\n');
        }
        let summed = !comments.iter().any(|c| {
            NOT_SUMMED
                .iter()
                .any(|f| c.starts_with(&format!("# TYPE {f} ")))
        });
        let mut totals: BTreeMap<String, (usize, f64)> = BTreeMap::new();
        for line in samples {
            let Some(s) = sample(line) else { continue };
            match s.bot {
                None => {
                    out.push_str(line);
                    out.push('\n');
                }
                Some(b) => {
                    if shown.contains(b) {
                        out.push_str(line);
                        out.push('\n');
                    }
                    if summed {
                        let n = totals.len();
                        totals
                            .entry(series(s.name, &s.labels))
                            .or_insert((n, 0.0))
                            .1 += s.value;
                    }
                }
            }
        }
        // In the order the series came (buckets in order of `le`).
        let mut totals: Vec<(String, (usize, f64))> = totals.into_iter().collect();
        totals.sort_by_key(|(_, (order, _))| *order);
        for (series, (_, value)) in totals {
            out.push_str(&series);
            out.push(' ');
            out.push_str(&number(value));
            out.push('\n');
        }
        if eof {
            out.push_str("# EOF\n");
        }
    }
    out
}

/// One bot's page: its own series only (every family's header, and the
/// samples labelled with `bot`).
pub(crate) fn of_bot(text: &str, bot: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let keep = line.starts_with('#') || sample(line).is_some_and(|s| s.bot == Some(bot));
        if keep {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# HELP flowbot_turns Turns run, by result.
# TYPE flowbot_turns counter
flowbot_turns_total{bot=\"a\",result=\"ok\"} 5
flowbot_turns_total{bot=\"b\",result=\"ok\"} 50
flowbot_turns_total{bot=\"c\",result=\"ok\"} 1
flowbot_turns_total{bot=\"b\",result=\"error\"} 2
# HELP flowbot_turn_latency_seconds Seconds.
# TYPE flowbot_turn_latency_seconds histogram
flowbot_turn_latency_seconds_sum{bot=\"a\"} 0.5
flowbot_turn_latency_seconds_count{bot=\"a\"} 5
flowbot_turn_latency_seconds_bucket{le=\"0.1\",bot=\"a\"} 5
flowbot_turn_latency_seconds_bucket{le=\"+Inf\",bot=\"a\"} 5
flowbot_turn_latency_seconds_sum{bot=\"b\"} 0.25
flowbot_turn_latency_seconds_count{bot=\"b\"} 52
flowbot_turn_latency_seconds_bucket{le=\"0.1\",bot=\"b\"} 50
flowbot_turn_latency_seconds_bucket{le=\"+Inf\",bot=\"b\"} 52
# HELP flowbot_flow_version Fingerprint.
# TYPE flowbot_flow_version gauge
flowbot_flow_version{bot=\"a\"} 17
flowbot_flow_version{bot=\"b\"} 19
# EOF
";

    #[test]
    fn the_root_page_has_totals_and_the_busiest_bots_only() {
        let page = root(TEXT, 1);
        assert!(
            page.contains("flowbot_turns_total{result=\"ok\"} 56\n"),
            "{page}"
        );
        assert!(
            page.contains("flowbot_turns_total{result=\"error\"} 2\n"),
            "{page}"
        );
        assert!(page.contains("flowbot_turns_total{bot=\"b\",result=\"ok\"} 50\n"));
        assert!(
            !page.contains("bot=\"a\"") && !page.contains("bot=\"c\""),
            "{page}"
        );
        // A histogram's totals add up, in the order of its series.
        let buckets = page
            .find("flowbot_turn_latency_seconds_bucket{le=\"0.1\"} 55")
            .unwrap();
        assert!(
            buckets
                < page
                    .find("flowbot_turn_latency_seconds_bucket{le=\"+Inf\"} 57")
                    .unwrap()
        );
        assert!(
            page.contains("flowbot_turn_latency_seconds_sum 0.75\n"),
            "{page}"
        );
        // A fingerprint is not added up; every family keeps its header; one EOF.
        assert!(!page.contains("flowbot_flow_version 36"), "{page}");
        assert!(page.contains("# TYPE flowbot_flow_version gauge"));
        assert!(page.ends_with("# EOF\n") && page.matches("# EOF").count() == 1);
    }

    #[test]
    fn a_bots_page_has_its_series_only() {
        let page = of_bot(TEXT, "a");
        assert!(page.contains("flowbot_turns_total{bot=\"a\",result=\"ok\"} 5\n"));
        assert!(page.contains("flowbot_flow_version{bot=\"a\"} 17"));
        assert!(!page.contains("bot=\"b\""), "{page}");
        assert!(page.ends_with("# EOF\n"));
    }
}
