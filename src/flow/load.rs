//! Reading flow files: YAML to [`FlowDoc`]s, following `include:`.
//!
//! This is the only place that uses serde_yaml (it could be swapped here alone).
//! Each document is deserialized through two serde adapters: `serde_ignored`
//! collects every unknown key (all of them, not just the first) and
//! `serde_path_to_error` names the path of a value of the wrong shape. Positions
//! come from serde_yaml for its own errors and from [`Source`] for everything else.

use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::HashSet;
use std::path::{Path, PathBuf};

use super::bounds::FlowLimits;
use super::diagnostic::{did_you_mean, Diagnostics, Severity};
use super::model::{known_keys, FlowDoc};
use super::source::{self, join_index, join_key, Pos, Reporter, Source};

/// A parsed document and where it came from.
pub(crate) struct Loaded {
    pub(crate) source: Source,
    pub(crate) doc: FlowDoc,
    /// Which flow it belongs to: 0 the main one, else a subflow (`call: {
    /// flow }`), numbered in the order they are met; a unit's first file
    /// is its main file, the rest its includes.
    pub(crate) unit: usize,
    /// The subflows its states call: the path as written, and its unit.
    pub(crate) calls: Vec<(String, usize)>,
}

/// Reads `path` and every file it includes. Problems go to `diags`; a file that
/// cannot be read or parsed is left out of the result.
/// With `text`, the main file's content is that text rather than what is on disk.
///
/// Includes stay inside the main file's folder: an absolute path, a `..` that
/// leaves it, a link pointing out of it or anything but a regular file is
/// refused, and every file is read up to `limits.flow_file_bytes` at most.
pub(crate) fn load_files(
    path: &Path,
    text: Option<String>,
    limits: &FlowLimits,
    diags: &mut Diagnostics,
) -> Vec<Loaded> {
    load_files_over(path, text, &|_| None, limits, diags)
}

/// [`load_files`], where `open` gives the text of an included file when it
/// is not to be read from disk (an editor's unsaved changes).
pub(crate) fn load_files_over(
    path: &Path,
    text: Option<String>,
    open: &dyn Fn(&Path) -> Option<String>,
    limits: &FlowLimits,
    diags: &mut Diagnostics,
) -> Vec<Loaded> {
    let mut ctx = Ctx {
        units: Vec::new(),
        unit: 0,
        open,
        out: Vec::new(),
        seen: HashSet::new(),
        home: path
            .parent()
            .map(|p| {
                if p.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    p
                }
            })
            .and_then(|p| p.canonicalize().ok()),
        limits,
        diags,
    };
    ctx.units
        .push(path.canonicalize().unwrap_or_else(|_| path.to_path_buf()));
    ctx.load(path, text, None);
    ctx.out
}

struct Ctx<'a> {
    /// Each unit's main file (canonical), by unit.
    units: Vec<PathBuf>,
    /// The unit being read.
    unit: usize,
    /// The text of a file that is not to be read from disk.
    open: &'a dyn Fn(&Path) -> Option<String>,
    out: Vec<Loaded>,
    seen: HashSet<PathBuf>,
    /// The main file's folder, where includes must stay.
    home: Option<PathBuf>,
    limits: &'a FlowLimits,
    diags: &'a mut Diagnostics,
}

impl Ctx<'_> {
    /// Reports a problem at the include that named a file, or at the top of the
    /// main file.
    fn report(
        &mut self,
        path: &Path,
        from: Option<(usize, &str)>,
        message: String,
        hint: Option<String>,
    ) {
        match from {
            Some((src, at)) => Reporter {
                source: &self.out[src].source,
                out: self.diags,
            }
            .error(at, message, hint),
            None => self
                .diags
                .0
                .push(Source::new(path, String::new()).diagnostic_at(
                    Severity::Error,
                    None,
                    "",
                    message,
                    hint,
                )),
        }
    }

    /// Why an included path may not be read, if it may not.
    fn outside_home(&self, written: &Path, path: &Path) -> Option<String> {
        if written.is_absolute() {
            return Some(
                "an include is a path relative to the flow's folder, not an absolute path".into(),
            );
        }
        let home = self.home.as_ref()?;
        match path.canonicalize() {
            Ok(real) if real.starts_with(home) => None,
            Ok(_) => Some(format!(
                "it is outside the flow's folder `{}`",
                home.display()
            )),
            // A missing file is reported by the read that follows.
            Err(_) => None,
        }
    }

    /// `from`: the including file (its index in `out`) and the include's path.
    fn load(&mut self, path: &Path, text: Option<String>, from: Option<(usize, &str)>) {
        let key = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
        if !self.seen.insert(key) {
            if let Some((src, at)) = from {
                Reporter {
                    source: &self.out[src].source,
                    out: self.diags,
                }
                .warning(
                    at,
                    format!("`{}` is included more than once", path.display()),
                    Some("each file is read once; remove the repeated include".into()),
                );
            }
            return;
        }
        let text = match text {
            Some(t) if t.len() as u64 > self.limits.flow_file_bytes => {
                Err(source::ReadError::TooLarge(self.limits.flow_file_bytes))
            }
            Some(t) => Ok(t),
            None => source::read(path, self.limits.flow_file_bytes),
        };
        let text = match text {
            Ok(t) => t,
            Err(e) => {
                let message = format!("cannot read `{}`: {e}", path.display());
                self.report(path, from, message, None);
                return;
            }
        };
        let Some(mut loaded) = parse(path, text, self.limits, self.diags) else {
            return;
        };
        loaded.unit = self.unit;
        let includes = loaded.doc.include.clone();
        let called: Vec<(String, String)> = loaded
            .doc
            .states
            .iter()
            .filter_map(|(name, st)| {
                let flow = st.call.as_ref()?.flow.clone()?;
                Some((
                    join_key(&join_key(&join_key("states", name), "call"), "flow"),
                    flow,
                ))
            })
            .collect();
        let base = path.parent().unwrap_or(Path::new("")).to_path_buf();
        self.out.push(loaded);
        let idx = self.out.len() - 1;
        for (i, inc) in includes.iter().enumerate() {
            let at = join_index("include", i);
            let target = base.join(inc);
            if let Some(why) = self.outside_home(Path::new(inc), &target) {
                let message = format!("cannot include `{}`: {why}", crate::text::shorten(inc, 200));
                self.report(
                    &target,
                    Some((idx, &at)),
                    message,
                    Some("keep included files in the flow's folder or below it".into()),
                );
                continue;
            }
            let text = (self.open)(&target);
            self.load(&target, text, Some((idx, &at)));
        }
        // Subflows: each file is one unit, read once however many call it.
        for (at, flow) in called {
            let target = base.join(&flow);
            if let Some(why) = self.outside_home(Path::new(&flow), &target) {
                let message = format!("cannot call `{}`: {why}", crate::text::shorten(&flow, 200));
                self.report(
                    &target,
                    Some((idx, &at)),
                    message,
                    Some("keep subflows in the flow's folder or below it".into()),
                );
                continue;
            }
            let key = target.canonicalize().unwrap_or_else(|_| target.clone());
            let unit = match self.units.iter().position(|u| *u == key) {
                Some(u) => u,
                None if self.seen.contains(&key) => {
                    self.report(
                        &target,
                        Some((idx, &at)),
                        format!("`{flow}` is included, so it cannot be called as a subflow"),
                        Some("a file is either included (its states join this flow) or called (it runs as a subroutine)".into()),
                    );
                    continue;
                }
                None => {
                    let unit = self.units.len();
                    self.units.push(key);
                    let outer = std::mem::replace(&mut self.unit, unit);
                    let text = (self.open)(&target);
                    self.load(&target, text, Some((idx, &at)));
                    self.unit = outer;
                    unit
                }
            };
            self.out[idx].calls.push((flow, unit));
        }
    }
}

/// Parses one flow document. Returns `None` (with diagnostics) if its YAML or its
/// shape is broken, or it breaks a limit; unknown keys are reported but do not
/// stop the parse.
fn parse(
    path: &Path,
    text: String,
    limits: &FlowLimits,
    diags: &mut Diagnostics,
) -> Option<Loaded> {
    let source = match Source::checked(path, text, limits) {
        (s, None) => s,
        (s, Some(e)) => {
            diags.0.push(s.diagnostic_at(
                Severity::Error,
                Some(e.pos),
                "",
                e.message,
                Some(e.hint),
            ));
            return None;
        }
    };
    let doc = parse_doc::<FlowDoc>(&source, &known_keys(), diags)?;
    Some(Loaded {
        source,
        doc,
        unit: 0,
        calls: Vec::new(),
    })
}

/// Deserializes any YAML document of the project (flows, conversation tests),
/// reporting unknown keys (with a suggestion among `keys`) and shape errors with
/// their position and path.
pub(crate) fn parse_doc<T: DeserializeOwned>(
    source: &Source,
    keys: &[&str],
    diags: &mut Diagnostics,
) -> Option<T> {
    let mut unknown: Vec<String> = Vec::new();
    // The path to an error is tracked only when there is one: tracking it
    // copies every key of the document, so a document that parses is read
    // once without it, and one that fails is read again with it (up to the
    // same error, so the unknown keys found the first time stand).
    let first = {
        let de = serde_yaml::Deserializer::from_str(&source.text);
        let mut track = |p: serde_ignored::Path<'_>| unknown.push(ignored_path(&p));
        T::deserialize(serde_ignored::Deserializer::new(de, &mut track))
    };
    let result = first.or_else(|_| {
        serde_path_to_error::deserialize::<_, T>(serde_yaml::Deserializer::from_str(&source.text))
    });
    let mut r = Reporter { source, out: diags };
    for p in &unknown {
        let name = p.rsplit('.').next().unwrap_or(p);
        // A key of the language used in the wrong place is no typo.
        let hint = did_you_mean(name, keys.iter().copied().filter(|k| *k != name))
            .filter(|_| !keys.contains(&name))
            .map(|k| format!("did you mean `{k}`?"))
            .or_else(|| Some("remove it, or check the reference for the keys allowed here".into()));
        r.key_error(p, format!("unknown key `{name}`"), hint);
    }
    match result {
        Ok(doc) => Some(doc),
        Err(e) => {
            let path_str = error_path(e.path());
            let inner = e.into_inner();
            let mut pos = inner.location().map(|l| Pos {
                line: l.line(),
                column: l.column(),
            });
            let raw = inner.to_string();
            let mut message = clean_yaml_message(&raw);
            // Where the problem starts (an unclosed quote: its opening), as
            // the parser's context says, and where it was noticed.
            if let Some((context, start, noticed)) = yaml_context(&raw) {
                message = format!(
                    "{message}, {context} that starts here (noticed at line {}, column {})",
                    noticed.line, noticed.column
                );
                pos = Some(start);
            }
            let hint = yaml_hint(&message);
            let pos = pos.or_else(|| source.value_pos(&path_str));
            let d = source.diagnostic_at(Severity::Error, pos, &path_str, message, hint);
            diags.0.push(d);
            None
        }
    }
}

/// Writes a value as YAML (for transcripts and snapshots).
pub(crate) fn to_yaml<T: Serialize>(value: &T) -> String {
    serde_yaml::to_string(value).unwrap_or_else(|e| format!("# cannot serialize: {e}\n"))
}

/// serde_yaml appends " at line L column C" to its messages; we show that apart.
fn clean_yaml_message(m: &str) -> String {
    let m = match m.find(" at line ") {
        Some(i) => &m[..i],
        None => m,
    };
    let m = m
        .strip_prefix("invalid type: ")
        .map_or_else(|| m.to_string(), |rest| format!("wrong type: {rest}"));
    m.replace("unknown field", "unknown key")
}

/// The parser's context in a serde_yaml message: "PROBLEM at line L column
/// C, while scanning a quoted scalar at line L2 column C2" gives the context,
/// where it starts, and where the problem was noticed.
fn yaml_context(m: &str) -> Option<(String, Pos, Pos)> {
    static RE: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(
            r"^.*? at line (\d+) column (\d+), (while .*?) at line (\d+) column (\d+)$",
        )
        .expect("valid")
    });
    let c = RE.captures(m)?;
    let n = |i: usize| c.get(i)?.as_str().parse::<usize>().ok();
    Some((
        c[3].to_owned(),
        Pos {
            line: n(4)?,
            column: n(5)?,
        },
        Pos {
            line: n(1)?,
            column: n(2)?,
        },
    ))
}

fn yaml_hint(message: &str) -> Option<String> {
    if message.contains("while scanning a quoted scalar") {
        Some("close the quote (a quote inside the text is doubled: 'it''s')".into())
    } else if message.contains("mapping values are not allowed") {
        Some("a value with `: ` inside must be quoted".into())
    } else if message.contains("did not find expected") {
        Some("check the indentation and the brackets on this line and the one before".into())
    } else if message.contains("found character that cannot start any token") {
        Some("tabs cannot indent YAML; use spaces".into())
    } else {
        None
    }
}

fn error_path(p: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut s = String::new();
    for seg in p.iter() {
        match seg {
            Segment::Seq { index } => s = join_index(&s, *index),
            Segment::Map { key } => s = join_key(&s, key),
            Segment::Enum { variant } => s = join_key(&s, variant),
            Segment::Unknown => {}
        }
    }
    s
}

fn ignored_path(p: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path as P;
    match p {
        P::Root => String::new(),
        P::Seq { parent, index } => join_index(&ignored_path(parent), *index),
        P::Map { parent, key } => join_key(&ignored_path(parent), key),
        P::Some { parent } | P::NewtypeStruct { parent } | P::NewtypeVariant { parent } => {
            ignored_path(parent)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(src: &str) -> (Option<Loaded>, Diagnostics) {
        let mut d = Diagnostics::default();
        let l = parse(
            Path::new("t.yaml"),
            src.to_owned(),
            &FlowLimits::default(),
            &mut d,
        );
        (l, d)
    }

    #[test]
    fn unknown_keys_are_all_reported_with_suggestions() {
        let (l, d) = parse_str(
            "start: a\nstates:\n  a:\n    sya: hi\n    on:\n      - { buton: x, goto: a }\n",
        );
        assert!(l.is_some());
        let msgs: Vec<_> =
            d.0.iter()
                .map(|d| (d.path.as_str(), d.hint.clone(), d.line))
                .collect();
        assert_eq!(msgs.len(), 2, "{msgs:?}");
        assert_eq!(msgs[0].0, "states.a.sya");
        assert_eq!(msgs[0].1.as_deref(), Some("did you mean `say`?"));
        assert_eq!(msgs[0].2, 4);
        assert_eq!(msgs[1].0, "states.a.on[0].buton");
        assert_eq!(msgs[1].1.as_deref(), Some("did you mean `button`?"));
    }

    #[test]
    fn syntax_errors_have_line_and_column() {
        let (l, d) = parse_str("states:\n  a:\n    say: [unclosed\n");
        assert!(l.is_none());
        assert_eq!(d.0.len(), 1);
        assert!(d.0[0].line >= 3, "{:?}", d.0[0]);
    }

    #[test]
    fn wrong_types_name_the_path() {
        let (l, d) = parse_str("states:\n  a:\n    end: sometimes\n");
        assert!(l.is_none());
        assert_eq!(d.0[0].path, "states.a.end");
        assert_eq!(d.0[0].line, 3);
    }
}
