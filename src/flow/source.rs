//! Flow sources and positions: which line and column a path in a document is at.
//!
//! serde_yaml (the loader's parser) gives positions only for its own errors. Checks
//! that run after deserialization (an unknown state, a title too long) need the
//! position of any node, so each source is also read once by yaml-rust2's event
//! parser, which reports a marker for every node, into an index from document path
//! (`states.start.on[0].goto`) to the key's and the value's position. It is built
//! once at load time; nothing here runs per turn.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

use super::diagnostic::{Diagnostic, Diagnostics, Severity};

/// A position in a source: 1-based line and column, and the byte offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Pos {
    pub(crate) line: usize,
    pub(crate) column: usize,
}

#[derive(Debug, Clone, Copy, Default)]
struct Node {
    key: Option<Pos>,
    value: Option<Pos>,
}

/// One loaded flow file: its path, its text and the position index.
#[derive(Debug)]
pub(crate) struct Source {
    pub(crate) path: PathBuf,
    pub(crate) text: String,
    nodes: HashMap<String, Node>,
}

impl Source {
    pub(crate) fn new(path: impl Into<PathBuf>, text: String) -> Source {
        let mut index = Indexer::default();
        // A syntax error stops the indexer early; serde_yaml reports it precisely.
        let _ = Parser::new_from_str(&text).load(&mut index, false);
        Source {
            path: path.into(),
            text,
            nodes: index.nodes,
        }
    }

    /// The position of the value at `path`, or of its key, or of the nearest parent.
    pub(crate) fn value_pos(&self, path: &str) -> Option<Pos> {
        self.lookup(path, |n| n.value.or(n.key))
    }

    /// The position of the key at `path` (for unknown keys), else of its value.
    pub(crate) fn key_pos(&self, path: &str) -> Option<Pos> {
        self.lookup(path, |n| n.key.or(n.value))
    }

    fn lookup(&self, path: &str, pick: impl Fn(&Node) -> Option<Pos>) -> Option<Pos> {
        let mut p = path;
        loop {
            if let Some(pos) = self.nodes.get(p).and_then(&pick) {
                return Some(pos);
            }
            if p.is_empty() {
                return None;
            }
            p = parent_path(p);
        }
    }

    fn line(&self, line: usize) -> Option<&str> {
        self.text.lines().nth(line.checked_sub(1)?)
    }

    /// Builds a diagnostic at a position, with the source line and an underline as
    /// wide as the token found there.
    pub(crate) fn diagnostic_at(
        &self,
        severity: Severity,
        pos: Option<Pos>,
        path: &str,
        message: String,
        hint: Option<String>,
    ) -> Diagnostic {
        let pos = pos.unwrap_or_default();
        let source_line = self.line(pos.line).map(str::to_owned);
        let width = source_line
            .as_deref()
            .map(|l| token_width(l, pos.column))
            .unwrap_or(1);
        Diagnostic {
            severity,
            message,
            file: self.path.clone(),
            line: pos.line,
            column: pos.column,
            path: path.to_owned(),
            hint,
            source_line,
            width,
        }
    }
}

/// Where diagnostics for one source go: a small helper so that checks read as
/// `r.error(path, message, hint)`.
pub(crate) struct Reporter<'a> {
    pub(crate) source: &'a Source,
    pub(crate) out: &'a mut Diagnostics,
}

impl Reporter<'_> {
    /// An error about the value at `path`.
    pub(crate) fn error(&mut self, path: &str, message: impl Into<String>, hint: Option<String>) {
        let pos = self.source.value_pos(path);
        self.push(Severity::Error, pos, path, message.into(), hint);
    }

    /// A warning about the value at `path`.
    pub(crate) fn warning(&mut self, path: &str, message: impl Into<String>, hint: Option<String>) {
        let pos = self.source.value_pos(path);
        self.push(Severity::Warning, pos, path, message.into(), hint);
    }

    /// An error pointing at the key of `path` rather than its value.
    pub(crate) fn key_error(
        &mut self,
        path: &str,
        message: impl Into<String>,
        hint: Option<String>,
    ) {
        let pos = self.source.key_pos(path);
        self.push(Severity::Error, pos, path, message.into(), hint);
    }

    fn push(
        &mut self,
        sev: Severity,
        pos: Option<Pos>,
        path: &str,
        msg: String,
        hint: Option<String>,
    ) {
        let d = self.source.diagnostic_at(sev, pos, path, msg, hint);
        self.out.0.push(d);
    }
}

/// Joins a path and a map key: `states` + `start` = `states.start`.
pub(crate) fn join_key(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

/// Joins a path and a sequence index: `on` + 1 = `on[1]`.
pub(crate) fn join_index(parent: &str, index: usize) -> String {
    format!("{parent}[{index}]")
}

fn parent_path(p: &str) -> &str {
    match p.rfind(['.', '[']) {
        Some(i) => &p[..i],
        None => "",
    }
}

/// The width of the token starting at 1-based `column`: a quoted string up to its
/// closing quote, else up to the next flow delimiter or comment.
fn token_width(line: &str, column: usize) -> usize {
    let rest: Vec<char> = line.chars().skip(column.saturating_sub(1)).collect();
    let Some(&first) = rest.first() else { return 1 };
    let n = if first == '"' || first == '\'' {
        rest.iter()
            .skip(1)
            .position(|&c| c == first)
            .map(|i| i + 2)
            .unwrap_or(rest.len())
    } else {
        let end = rest
            .iter()
            .position(|&c| matches!(c, ',' | '}' | ']' | '#'))
            .unwrap_or(rest.len());
        let token: String = rest[..end].iter().collect();
        let token = token.trim_end();
        let token = token.strip_suffix(':').unwrap_or(token);
        token.chars().count()
    };
    n.max(1)
}

enum Frame {
    Map {
        path: String,
        key: Option<(String, Pos)>,
    },
    Seq {
        path: String,
        index: usize,
    },
}

#[derive(Default)]
struct Indexer {
    stack: Vec<Frame>,
    nodes: HashMap<String, Node>,
}

fn pos_of(m: Marker) -> Pos {
    // yaml-rust2 counts lines from 1 and columns from 0.
    Pos {
        line: m.line(),
        column: m.col() + 1,
    }
}

impl Indexer {
    /// Called for every node that starts: returns its path if it is a value (not a
    /// mapping key), recording key and value positions.
    fn value_start(&mut self, pos: Pos, scalar: Option<&str>) -> Option<String> {
        match self.stack.last_mut() {
            None => {
                self.nodes.entry(String::new()).or_default().value = Some(pos);
                Some(String::new())
            }
            Some(Frame::Seq { path, index }) => {
                let p = join_index(path, *index);
                *index += 1;
                self.nodes.entry(p.clone()).or_default().value = Some(pos);
                Some(p)
            }
            Some(Frame::Map { path, key }) => match key.take() {
                None => {
                    // This node is a key. Complex keys (maps as keys) get no path.
                    let name = scalar.unwrap_or("?").to_owned();
                    *key = Some((name, pos));
                    None
                }
                Some((k, kpos)) => {
                    let p = join_key(path, &k);
                    let n = self.nodes.entry(p.clone()).or_default();
                    n.key = Some(kpos);
                    n.value = Some(pos);
                    Some(p)
                }
            },
        }
    }
}

impl MarkedEventReceiver for Indexer {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let pos = pos_of(mark);
        match ev {
            Event::Scalar(v, ..) => {
                self.value_start(pos, Some(&v));
            }
            Event::Alias(_) => {
                self.value_start(pos, None);
            }
            Event::MappingStart(..) => {
                let path = self.value_start(pos, None).unwrap_or_else(|| "?".into());
                self.stack.push(Frame::Map { path, key: None });
            }
            Event::SequenceStart(..) => {
                let path = self.value_start(pos, None).unwrap_or_else(|| "?".into());
                self.stack.push(Frame::Seq { path, index: 0 });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            _ => {}
        }
    }
}

/// Reads a flow file, naming the file in the error.
pub(crate) fn read(path: &Path) -> Result<String, std::io::Error> {
    std::fs::read_to_string(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_positions_of_nested_values() {
        let src = Source::new(
            "t.yaml",
            "states:\n  start:\n    on:\n      - { button: a, goto: nowhere }\n".into(),
        );
        let p = src.value_pos("states.start.on[0].goto").unwrap();
        assert_eq!((p.line, p.column), (4, 28));
        let k = src.key_pos("states.start.on[0].goto").unwrap();
        assert_eq!((k.line, k.column), (4, 22));
        // Unknown deeper paths fall back to the nearest parent.
        let q = src.value_pos("states.start.on[0].goto.x").unwrap();
        assert_eq!(q, p);
    }

    #[test]
    fn underline_covers_the_token() {
        assert_eq!(token_width("  goto: ask_ordr }", 9), 8);
        assert_eq!(token_width("  say: \"a, b\"", 8), 6);
    }
}
