//! `flowbot test [DIR] [--coverage]`: YAML conversation tests against snapshots;
//! `flowbot test new --from-capture DIR`: a conversation test written from
//! captured webhook deliveries.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::handler::Registry;
use crate::message::{Event, Incoming};
use crate::testing::suite::{run_dir, Update};

/// `flowbot test new`.
#[derive(Debug, clap::Subcommand)]
pub enum TestCommand {
    /// Write a conversation test from captured deliveries (`server.capture_dir`).
    New {
        /// The folder of captured deliveries.
        #[arg(long)]
        from_capture: PathBuf,
        /// The flow the test runs.
        #[arg(long, default_value = "flows/support.yaml")]
        flow: PathBuf,
        /// The conversation to take (default: the first one captured).
        #[arg(long)]
        conversation: Option<String>,
        /// The test file to write (default: `tests/conversations/captured_<id>.yaml`).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

pub(super) async fn run(dir: &Path, coverage: bool, registry: &Registry) -> u8 {
    let report = match run_dir(dir, registry, Update::from_env()).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot read {}: {e}", dir.display());
            return 2;
        }
    };
    println!("{}", report.summary());
    if coverage {
        print!("\n{}", report.coverage());
    }
    if report.passed() {
        0
    } else {
        1
    }
}

#[derive(Serialize)]
struct TestFile {
    description: String,
    flow: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    channel: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    language: Option<String>,
    steps: Vec<BTreeMap<&'static str, String>>,
}

/// One step of a test file: one key (`text`, `button`, ...) and its value.
fn step(key: &'static str, value: impl Into<String>) -> BTreeMap<&'static str, String> {
    BTreeMap::from([(key, value.into())])
}

fn step_of(m: &Incoming) -> BTreeMap<&'static str, String> {
    if let Some(b) = &m.button {
        step("button", b.clone())
    } else if let Some(l) = &m.list {
        step("list", l.clone())
    } else if let Some(k) = m.media {
        step("media", k.as_str())
    } else {
        step("text", m.text.clone())
    }
}

/// A path from `base`'s folder to `target` (both as given, made absolute).
fn relative(target: &Path, base_dir: &Path) -> String {
    let abs = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let (t, b) = (abs(target), abs(base_dir));
    let tc: Vec<_> = t.components().collect();
    let bc: Vec<_> = b.components().collect();
    let common = tc.iter().zip(&bc).take_while(|(x, y)| x == y).count();
    let mut out = PathBuf::new();
    for _ in common..bc.len() {
        out.push("..");
    }
    for c in &tc[common..] {
        out.push(c);
    }
    out.display().to_string()
}

pub(super) fn new_from_capture(
    capture: &Path,
    flow: &Path,
    conversation: Option<&str>,
    out: Option<&Path>,
) -> u8 {
    let deliveries = match crate::runtime::capture::read_dir(capture) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    let intake = crate::qpien::Intake::with_defaults();
    let mut events = Vec::new();
    for d in &deliveries {
        if let crate::qpien::Delivery::Event(i) =
            intake.delivery(&d.body, &d.file.display().to_string())
        {
            events.push((d.received_at, *i));
        }
    }
    let Some(chosen) = conversation
        .map(str::to_owned)
        .or_else(|| events.first().map(|(_, i)| i.conversation.clone()))
    else {
        eprintln!(
            "error: {}: no captured delivery is a customer's message or an agent's move",
            capture.display()
        );
        return 1;
    };
    let mine: Vec<_> = events
        .into_iter()
        .filter(|(_, i)| i.conversation == chosen)
        .collect();
    if mine.is_empty() {
        eprintln!("error: no captured delivery of conversation `{chosen}`");
        return 1;
    }
    let first_message = mine.iter().find_map(|(_, i)| match &i.event {
        Event::Message(m) => Some(m.clone()),
        _ => None,
    });
    let mut steps = Vec::new();
    let mut last: Option<crate::time::Millis> = None;
    for (at, i) in &mine {
        if let Some(prev) = last {
            let gap = (*at - prev).max(0) as u64 / 1000;
            if gap >= 60 {
                let gap = std::time::Duration::from_secs(gap);
                steps.push(step("wait", humantime::format_duration(gap).to_string()));
            }
        }
        last = Some(*at);
        steps.push(match &i.event {
            Event::Message(m) => step_of(m),
            other => step("event", other.word()),
        });
    }
    let safe: String = chosen
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .take(40)
        .collect();
    let out = out
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(format!("tests/conversations/captured_{safe}.yaml")));
    if out.exists() {
        eprintln!("error: {} exists; choose another with --out", out.display());
        return 1;
    }
    let out_dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let file = TestFile {
        description: format!(
            "Conversation {chosen} as captured in {} ({} steps).",
            capture.display(),
            steps.len()
        ),
        flow: relative(flow, out_dir),
        channel: first_message
            .as_ref()
            .map(|m| m.channel.as_str().to_owned()),
        language: first_message.and_then(|m| m.contact.language),
        steps,
    };
    let text = crate::flow::to_yaml(&file);
    if let Err(e) = std::fs::create_dir_all(out_dir).and_then(|_| std::fs::write(&out, text)) {
        eprintln!("error: cannot write {}: {e}", out.display());
        return 2;
    }
    println!(
        "wrote {}: run `flowbot test {}` to make its snapshot",
        out.display(),
        out_dir.display()
    );
    0
}
