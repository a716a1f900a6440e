//! Flow sources and positions: which line and column a path in a document is at.
//!
//! serde_yaml (the loader's parser) gives positions only for its own errors. Checks
//! that run after deserialization (an unknown state, a title too long) need the
//! position of any node, so each source is also read once by yaml-rust2's event
//! parser, which reports a marker for every node, into a tree of positions: one
//! entry per node holding its key's and its value's position, children found by
//! (parent, key) or (parent, index). A document path (`states.start.on[0].goto`)
//! is resolved by walking that tree. Memory and time are linear in the document:
//! no node stores its path (a path string per node grows with depth, which made
//! nested documents quadratic).
//!
//! The same pass enforces the [`FlowLimits`] on shape (nesting depth, key length,
//! node count) before serde_yaml sees the text, so a hostile document is refused
//! after reading at most as many events as the limits allow. It is built once at
//! load time; nothing here runs per turn.

/// The index's maps hash small keys of a trusted document: a fast hash,
/// seeded per map.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
use std::io::Read;
use std::path::{Path, PathBuf};

use yaml_rust2::parser::{Event, Parser};
use yaml_rust2::scanner::Marker;

use super::bounds::FlowLimits;
use super::diagnostic::{Diagnostic, Diagnostics, Severity};
use crate::text::{shorten, visible};

/// A position in a source: 1-based line and column.
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

/// How a node is reached from its parent: a key (by its number in
/// [`Index::keys`]) or an index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Seg {
    Key(u32),
    Index(u32),
}

/// The position tree of one document (see the module docs). Node 0 is the root.
#[derive(Debug, Default)]
struct Index {
    nodes: Vec<Node>,
    children: HashMap<(u32, Seg), u32>,
    /// Each distinct key once, numbered: a lookup finds a key's number from
    /// a slice of the path without allocating, and a path segment that is
    /// no key at all is rejected before the tree is consulted.
    keys: HashMap<Box<str>, u32>,
}

impl Index {
    /// A key's number; a key is copied only the first time it is seen.
    fn key(&mut self, key: &str) -> Seg {
        if let Some(&k) = self.keys.get(key) {
            return Seg::Key(k);
        }
        let next = self.keys.len() as u32;
        self.keys.insert(key.into(), next);
        Seg::Key(next)
    }

    fn child(&self, parent: u32, seg: Seg) -> Option<u32> {
        self.children.get(&(parent, seg)).copied()
    }

    /// Follows `path` as far as it goes; returns the deepest node found for which
    /// `pick` gives a position.
    fn lookup(&self, path: &str, pick: impl Fn(&Node) -> Option<Pos>) -> Option<Pos> {
        let mut at = 0u32;
        let mut best = self.nodes.first().and_then(&pick);
        let mut rest = path;
        while !rest.is_empty() {
            let Some((next, remaining)) = self.step(at, rest) else {
                break;
            };
            at = next;
            rest = remaining;
            if let Some(p) = self.nodes.get(at as usize).and_then(&pick) {
                best = Some(p);
            }
        }
        best
    }

    /// One segment of `rest` from node `at`: `[3]`, or the longest key (keys may
    /// contain dots) up to a `.`, a `[` or the end.
    fn step<'p>(&self, at: u32, rest: &'p str) -> Option<(u32, &'p str)> {
        let rest = rest.strip_prefix('.').unwrap_or(rest);
        if let Some(r) = rest.strip_prefix('[') {
            let close = r.find(']')?;
            let i: u32 = r[..close].parse().ok()?;
            return Some((self.child(at, Seg::Index(i))?, &r[close + 1..]));
        }
        // The longest key first: keys may contain dots.
        let ends = rest
            .char_indices()
            .filter(|(_, c)| matches!(c, '.' | '['))
            .map(|(i, _)| i)
            .chain(std::iter::once(rest.len()));
        let mut found = None;
        for e in ends {
            if let Some(&k) = self.keys.get(&rest[..e]) {
                if let Some(child) = self.child(at, Seg::Key(k)) {
                    found = Some((child, &rest[e..]));
                }
            }
        }
        found
    }
}

/// A document that breaks one of the [`FlowLimits`]: what, where, and the limit.
#[derive(Debug)]
pub(crate) struct LimitExceeded {
    pub(crate) pos: Pos,
    pub(crate) message: String,
    pub(crate) hint: String,
}

/// One loaded flow file: its path, its text and the position index.
#[derive(Debug)]
pub(crate) struct Source {
    pub(crate) path: PathBuf,
    pub(crate) text: String,
    index: Index,
    /// Byte offset of the start of each line.
    lines: Vec<usize>,
}

impl Source {
    /// Indexes a document with the default limits (for documents that are not
    /// flows, such as conversation tests).
    pub(crate) fn new(path: impl Into<PathBuf>, text: String) -> Source {
        Source::checked(path, text, &FlowLimits::default()).0
    }

    /// Indexes a document; the second half says which limit it breaks, if it
    /// does (the index then stops there). A syntax error stops the indexer early;
    /// serde_yaml reports it precisely.
    pub(crate) fn checked(
        path: impl Into<PathBuf>,
        text: String,
        limits: &FlowLimits,
    ) -> (Source, Option<LimitExceeded>) {
        let (index, exceeded) = build_index(&text, limits);
        let lines = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        let source = Source {
            path: path.into(),
            text,
            index,
            lines,
        };
        (source, exceeded)
    }

    /// The position of the value at `path`, or of its key, or of the nearest parent.
    pub(crate) fn value_pos(&self, path: &str) -> Option<Pos> {
        self.index.lookup(path, |n| n.value.or(n.key))
    }

    /// The position of the key at `path` (for unknown keys), else of its value.
    pub(crate) fn key_pos(&self, path: &str) -> Option<Pos> {
        self.index.lookup(path, |n| n.key.or(n.value))
    }

    fn line(&self, line: usize) -> Option<&str> {
        let start = *self.lines.get(line.checked_sub(1)?)?;
        let end = self.lines.get(line).map_or(self.text.len(), |e| e - 1);
        let l = self.text.get(start..end)?;
        Some(l.strip_suffix('\r').unwrap_or(l))
    }

    /// Builds a diagnostic at a position, with (an excerpt of) the source line
    /// and an underline as wide as the token found there.
    pub(crate) fn diagnostic_at(
        &self,
        severity: Severity,
        pos: Option<Pos>,
        path: &str,
        message: String,
        hint: Option<String>,
    ) -> Diagnostic {
        let pos = pos.unwrap_or_default();
        let excerpt = self.line(pos.line).map(|l| excerpt(l, pos.column));
        let (source_line, column_in_excerpt) = match excerpt {
            Some((l, c)) => (Some(l), c),
            None => (None, pos.column),
        };
        let width = source_line
            .as_deref()
            .map(|l| token_width(l, column_in_excerpt))
            .unwrap_or(1);
        Diagnostic {
            severity,
            message: shorten(&message, MAX_MESSAGE),
            file: self.path.clone(),
            line: pos.line,
            column: pos.column,
            path: shorten(path, MAX_MESSAGE),
            hint,
            source_line,
            width,
            excerpt_column: column_in_excerpt,
        }
    }
}

/// Problems reported for one load at most.
const MAX_DIAGNOSTICS: usize = 1000;
/// Characters of a message or path kept in a diagnostic.
const MAX_MESSAGE: usize = 300;
/// Characters of a source line shown in a diagnostic.
const EXCERPT: usize = 120;

/// A short, escaped excerpt of `line` around 1-based `column`, and the column
/// in the excerpt: another file's content is never quoted at length.
fn excerpt(line: &str, column: usize) -> (String, usize) {
    let n = line.chars().count();
    if n <= EXCERPT {
        return (line.chars().map(visible).collect(), column);
    }
    let start = column.saturating_sub(1).saturating_sub(EXCERPT / 3);
    let start = start.min(n.saturating_sub(EXCERPT));
    let mut out = String::new();
    if start > 0 {
        out.push('…');
    }
    out.extend(line.chars().skip(start).take(EXCERPT).map(visible));
    if start + EXCERPT < n {
        out.push('…');
    }
    let shift = usize::from(start > 0);
    (out, column.saturating_sub(start) + shift)
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
        // A document with thousands of problems is reported by its first ones:
        // the list stays bounded, and is an error whatever it holds.
        match self.out.0.len() {
            n if n < MAX_DIAGNOSTICS => {
                let d = self.source.diagnostic_at(sev, pos, path, msg, hint);
                self.out.0.push(d);
            }
            MAX_DIAGNOSTICS => {
                let d = self.source.diagnostic_at(
                    Severity::Error,
                    pos,
                    path,
                    format!("more than {MAX_DIAGNOSTICS} problems; the rest are not reported"),
                    Some("fix these and validate again".into()),
                );
                self.out.0.push(d);
            }
            _ => {}
        }
    }
}

/// Joins a path and a map key: `states` + `start` = `states.start`.
///
/// Paths are built for every node a flow compiles (for its diagnostics), so
/// these two write the string directly rather than through `format!`.
pub(crate) fn join_key(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        return key.to_owned();
    }
    let mut p = String::with_capacity(parent.len() + 1 + key.len());
    p.push_str(parent);
    p.push('.');
    p.push_str(key);
    p
}

/// Joins a path and a sequence index: `on` + 1 = `on[1]`.
pub(crate) fn join_index(parent: &str, index: usize) -> String {
    use std::fmt::Write;
    let mut p = String::with_capacity(parent.len() + 8);
    p.push_str(parent);
    let _ = write!(p, "[{index}]");
    p
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

/// An open collection while indexing: its node, and the pending key (maps) or
/// the next index (sequences).
enum Frame {
    Map { node: u32, key: Option<(Seg, Pos)> },
    Seq { node: u32, index: u32 },
}

fn pos_of(m: Marker) -> Pos {
    // yaml-rust2 counts lines from 1 and columns from 0.
    Pos {
        line: m.line(),
        column: m.col() + 1,
    }
}

/// Reads the document's events into an [`Index`], stopping at the first
/// limit broken.
fn build_index(text: &str, limits: &FlowLimits) -> (Index, Option<LimitExceeded>) {
    let mut ix = Index::default();
    let mut stack: Vec<Frame> = Vec::new();
    let mut parser = Parser::new_from_str(text);
    loop {
        let (ev, mark) = match parser.next_token() {
            Ok(t) => t,
            // yaml-rust2 stops flow collections nested past its own limit;
            // that is the depth limit too (other syntax errors are left to
            // serde_yaml, whose messages are the ones users see).
            Err(e) if e.info().contains("recursion limit") => {
                return (
                    ix,
                    Some(LimitExceeded {
                        pos: pos_of(*e.marker()),
                        message: "the document nests too deep".into(),
                        hint: "flatten it (the limit is `limits.flow_depth`)".into(),
                    }),
                )
            }
            Err(_) => return (ix, None),
        };
        let pos = pos_of(mark);
        let (scalar, opens) = match &ev {
            Event::StreamEnd => return (ix, None),
            Event::Scalar(v, ..) => (Some(v.as_str()), None),
            Event::Alias(_) => (None, None),
            Event::MappingStart(..) => (None, Some(true)),
            Event::SequenceStart(..) => (None, Some(false)),
            Event::MappingEnd | Event::SequenceEnd => {
                stack.pop();
                continue;
            }
            _ => continue,
        };
        // A mapping key: remember it for the value that follows.
        if let Some(Frame::Map {
            key: key @ None, ..
        }) = stack.last_mut()
        {
            if let Some(k) = scalar {
                if k.chars().count() > limits.flow_key_chars {
                    return (
                        ix,
                        Some(LimitExceeded {
                            pos,
                            message: format!(
                                "a key is longer than {} characters",
                                limits.flow_key_chars
                            ),
                            hint:
                                "keys are names; shorten it (the limit is `limits.flow_key_chars`)"
                                    .into(),
                        }),
                    );
                }
            }
            // Complex keys (collections as keys) are named `?`.
            *key = Some((ix.key(scalar.unwrap_or("?")), pos));
            if let Some(is_map) = opens {
                // A collection used as a key: index its insides under no path.
                stack.push(if is_map {
                    Frame::Map {
                        node: u32::MAX,
                        key: None,
                    }
                } else {
                    Frame::Seq {
                        node: u32::MAX,
                        index: 0,
                    }
                });
            }
            continue;
        }
        if ix.nodes.len() >= limits.flow_nodes {
            return (
                ix,
                Some(LimitExceeded {
                    pos,
                    message: format!("the document has more than {} nodes", limits.flow_nodes),
                    hint: "split the flow or raise `limits.flow_nodes`".into(),
                }),
            );
        }
        let id = ix.nodes.len() as u32;
        let (parent, seg, key_pos) = match stack.last_mut() {
            None => (None, None, None),
            Some(Frame::Seq { node, index }) => {
                let s = Seg::Index(*index);
                *index += 1;
                (Some(*node), Some(s), None)
            }
            Some(Frame::Map { node, key }) => {
                let (k, kp) = match key.take() {
                    Some(k) => k,
                    None => (ix.key("?"), pos),
                };
                (Some(*node), Some(k), Some(kp))
            }
        };
        ix.nodes.push(Node {
            key: key_pos,
            value: Some(pos),
        });
        if let (Some(p), Some(s)) = (parent, seg) {
            if p != u32::MAX {
                ix.children.insert((p, s), id);
            }
        }
        if let Some(is_map) = opens {
            if stack.len() >= limits.flow_depth {
                return (
                    ix,
                    Some(LimitExceeded {
                        pos,
                        message: format!(
                            "the document nests deeper than {} levels",
                            limits.flow_depth
                        ),
                        hint: "flatten it (the limit is `limits.flow_depth`)".into(),
                    }),
                );
            }
            stack.push(if is_map {
                Frame::Map {
                    node: id,
                    key: None,
                }
            } else {
                Frame::Seq { node: id, index: 0 }
            });
        }
    }
}

/// Why a flow file was not read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReadError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("it is not a regular file")]
    NotAFile,
    #[error("it is larger than {0} bytes (the limit is `limits.flow_file_bytes`)")]
    TooLarge(u64),
    #[error("it is not UTF-8 text")]
    NotText,
}

/// Reads a flow file: a regular file of at most `max` bytes (never more is read,
/// whatever the file claims to be).
pub(crate) fn read(path: &Path, max: u64) -> Result<String, ReadError> {
    // Asked before opening: opening a FIFO would wait for a writer.
    if !std::fs::metadata(path)?.is_file() {
        return Err(ReadError::NotAFile);
    }
    let file = std::fs::File::open(path)?;
    let mut buf = Vec::new();
    file.take(max.saturating_add(1)).read_to_end(&mut buf)?;
    if buf.len() as u64 > max {
        return Err(ReadError::TooLarge(max));
    }
    String::from_utf8(buf).map_err(|_| ReadError::NotText)
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
    fn keys_with_dots_are_found() {
        let src = Source::new("t.yaml", "vars:\n  a.b: 1\n  a: 2\n".into());
        assert_eq!(src.value_pos("vars.a.b").unwrap().line, 2);
        assert_eq!(src.value_pos("vars.a").unwrap().line, 3);
    }

    #[test]
    fn underline_covers_the_token() {
        assert_eq!(token_width("  goto: ask_ordr }", 9), 8);
        assert_eq!(token_width("  say: \"a, b\"", 8), 6);
    }

    #[test]
    fn long_lines_are_quoted_as_a_short_excerpt() {
        let line = format!("{}SECRET\u{1}{}", "x".repeat(500), "y".repeat(500));
        let (e, col) = excerpt(&line, 501);
        assert!(e.chars().count() <= EXCERPT + 2, "{e}");
        assert_eq!(e.chars().nth(col - 1), Some('S'));
        assert!(e.contains('\u{fffd}'));
    }

    #[test]
    fn limits_stop_the_index_early() {
        let limits = FlowLimits {
            flow_depth: 10,
            ..FlowLimits::default()
        };
        let deep = "[".repeat(100);
        let e = Source::checked("t.yaml", deep, &limits).1.unwrap();
        assert!(e.message.contains("deeper than 10"), "{}", e.message);
        let deeper = "[".repeat(100_000);
        let e = Source::checked("t.yaml", deeper, &FlowLimits::default())
            .1
            .unwrap();
        assert!(e.message.contains("too deep"), "{}", e.message);
        let limits = FlowLimits {
            flow_key_chars: 8,
            ..FlowLimits::default()
        };
        let e = Source::checked("t.yaml", "a: 1\nverylongkey: 2\n".into(), &limits)
            .1
            .unwrap();
        assert_eq!(e.pos.line, 2);
    }
}
