//! Diagnostics: what is wrong in a flow file, where, and what to do about it.
//!
//! Every problem found while loading a flow becomes a [`Diagnostic`] carrying the
//! file, the 1-based line and column, the path inside the document
//! (`states.ask_order.on[1].goto`), the offending source line, one sentence of why
//! and, where we can tell, a hint. Loading collects all of them before failing, so a
//! user fixes a file in one pass, not one error per run.

use serde::Serialize;
use std::fmt;
use std::path::PathBuf;

/// How bad a problem is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The flow still loads; `flowbot validate --strict` fails on it.
    Warning,
    /// The flow cannot load.
    Error,
}

/// One problem in a flow, located in its file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// One sentence: what is wrong.
    pub message: String,
    /// The file it is in.
    pub file: PathBuf,
    /// 1-based line (0 when the position is unknown).
    pub line: usize,
    /// 1-based column (0 when the position is unknown).
    pub column: usize,
    /// The path inside the document, e.g. `states.start.on[0].goto`.
    pub path: String,
    /// What to do about it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    /// The source line, for display.
    #[serde(skip)]
    pub source_line: Option<String>,
    /// How many characters to underline from `column`.
    #[serde(skip)]
    pub width: usize,
    /// Where `column` falls in `source_line`, which is an excerpt when the line
    /// is long.
    #[serde(skip)]
    pub(crate) excerpt_column: usize,
}

impl Diagnostic {
    /// Whether this is an error (as opposed to a warning).
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Diagnostic {
    /// Renders in the style of rustc:
    ///
    /// ```text
    /// error: unknown state `ask_ordr`
    ///   --> flows/support.yaml:12:32 (states.start.on[0].goto)
    ///    |
    /// 12 |       - { button: orders, goto: ask_ordr }
    ///    |                                 ^^^^^^^^
    ///    = hint: did you mean `ask_order`?
    /// ```
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let level = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        writeln!(f, "{level}: {}", self.message)?;
        let path = if self.path.is_empty() {
            String::new()
        } else {
            format!(" ({})", self.path)
        };
        if self.line > 0 {
            writeln!(
                f,
                "  --> {}:{}:{}{path}",
                self.file.display(),
                self.line,
                self.column
            )?;
        } else {
            writeln!(f, "  --> {}{path}", self.file.display())?;
        }
        if let (Some(src), true) = (&self.source_line, self.line > 0) {
            let num = self.line.to_string();
            let pad = " ".repeat(num.len());
            writeln!(f, "{pad} |")?;
            writeln!(f, "{num} | {src}")?;
            // Columns count characters; tabs are kept so the caret lines up.
            let lead: String = src
                .chars()
                .take(self.excerpt_column.saturating_sub(1))
                .map(|c| if c == '\t' { '\t' } else { ' ' })
                .collect();
            writeln!(f, "{pad} | {lead}{}", "^".repeat(self.width.max(1)))?;
            if let Some(hint) = &self.hint {
                writeln!(f, "{pad} = hint: {hint}")?;
            }
        } else if let Some(hint) = &self.hint {
            writeln!(f, "   = hint: {hint}")?;
        }
        Ok(())
    }
}

/// All the problems of one load, errors and warnings, in file order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    /// Whether any of them is an error.
    pub fn has_errors(&self) -> bool {
        self.0.iter().any(Diagnostic::is_error)
    }

    /// The errors only.
    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter().filter(|d| d.is_error())
    }

    /// The warnings only.
    pub fn warnings(&self) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter().filter(|d| !d.is_error())
    }

    /// Sorts by file, line and column and drops exact repeats.
    pub(crate) fn finish(&mut self) {
        self.0.sort_by(|a, b| {
            (&a.file, a.line, a.column, &a.message).cmp(&(&b.file, b.line, b.column, &b.message))
        });
        self.0.dedup();
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for d in &self.0 {
            writeln!(f, "{d}")?;
        }
        let errors = self.errors().count();
        let warnings = self.0.len() - errors;
        write!(
            f,
            "{errors} error{}, {warnings} warning{}",
            if errors == 1 { "" } else { "s" },
            if warnings == 1 { "" } else { "s" }
        )
    }
}

/// Suggests the closest candidate to a misspelt name, if one is close enough.
///
/// ```
/// # use flowbot::internals::flow::did_you_mean;
/// assert_eq!(did_you_mean("ask_ordr", ["start", "ask_order"]), Some("ask_order".to_string()));
/// assert_eq!(did_you_mean("zzz", ["start"]), None);
/// ```
pub fn did_you_mean<'a>(
    name: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<String> {
    // Edit distance with transpositions ("sya" -> "say" is one edit), allowing
    // about one edit per three characters; ties go to the more similar prefix.
    let limit = (name.chars().count() / 3).max(1);
    let mut best: Option<(usize, f64, &str)> = None;
    for c in candidates {
        let d = strsim::osa_distance(name, c);
        if d > limit || d >= c.chars().count().max(name.chars().count()) {
            continue;
        }
        let jw = strsim::jaro_winkler(name, c);
        if best.is_none_or(|(bd, bj, _)| d < bd || (d == bd && jw > bj)) {
            best = Some((d, jw, c));
        }
    }
    best.map(|(_, _, c)| c.to_string())
}
