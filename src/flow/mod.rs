//! The flow language: YAML documents loaded, validated and compiled into a [`Flow`].
//!
//! - [`model`]: serde types mirroring the YAML;
//! - `load`: files to documents (the only user of serde_yaml), following `include:`;
//! - `compile`: documents to the compiled form in `compiled` (an indexed graph),
//!   with [`template`]s and regexes compiled once; `diagram` draws that form
//!   for `flowbot graph`;
//! - `validate`: limits and graph checks;
//! - [`Diagnostic`]s for every problem, with file, line, column and document path.
//!
//! This module knows nothing of the engine: handlers are referred to by name, and
//! the names that exist are passed in as [`HandlerNames`].
//!
//! ```
//! use flowbot::{Flow, HandlerNames};
//! let flow = Flow::from_yaml(
//!     "hello.yaml",
//!     "states:\n  start:\n    say: Hi!\n    on:\n      - { text: bye, goto: done }\n  done: { say: Bye, end: true }\n",
//!     &HandlerNames::default(),
//! ).unwrap();
//! assert_eq!(flow.state_names().collect::<Vec<_>>(), ["start", "done"]);
//! ```

mod bounds;
pub mod calendar;
mod compile;
mod compiled;
mod diagnostic;
mod diagram;
mod load;
pub mod migration;
pub mod model;
mod normalize;
pub mod schedule;
mod source;
pub(crate) use load::Loaded;
pub(crate) use source::read as read_file;
pub(crate) use source::{join_index, join_key, Source};
pub mod template;
mod validate;

use std::path::Path;

/// A state's index in `Flow::states` (here, not in `compiled`, so that the
/// parts of a compiled flow, schedules among them, need not import it).
pub type StateId = u32;

pub use bounds::FlowLimits;
pub use compiled::*;
pub use diagnostic::{did_you_mean, Diagnostic, Diagnostics, Severity};
pub(crate) use normalize::{contains_phrase, tolerant_match};
pub use normalize::{normalize, words};
pub use template::Tpl;
pub use validate::limits;

/// The names of the Rust handlers a flow may use (`call: {action: ..}`,
/// `match: ..`); a name not listed is a load-time error.
#[derive(Debug, Clone, Default)]
pub struct HandlerNames {
    /// Registered actions.
    pub actions: Vec<String>,
    /// Registered matchers.
    pub matchers: Vec<String>,
    /// The account's approved WhatsApp templates, when known (read from
    /// Qpien at start, or given to `validate --templates`): a template the
    /// flow names that is not among them, or named with the wrong number of
    /// parameters, is a load-time error. `None`: not checked.
    pub templates: Option<Vec<TemplateInfo>>,
    /// The installed `flowbot`'s names (its examples' actions): a project's
    /// own actions are unknown to it, and its errors say so.
    #[doc(hidden)]
    pub generic: bool,
}

/// One approved WhatsApp template, as the flow language needs to know it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct TemplateInfo {
    /// Its name.
    pub name: String,
    /// Its language code.
    pub language: String,
    /// How many `{{n}}` placeholders it has.
    pub params: usize,
}

/// A stable hash of a text (FNV-1a: the same on every machine and build),
/// for choices that must be the same wherever they are made (a split's
/// variant).
pub(crate) fn fingerprint_of_text(text: &str) -> u64 {
    compile::fingerprint_of([text])
}

/// A flow's files as read, not compiled: what a bot keeps of its flow
/// while no turn needs it compiled (a few kilobytes, where the compiled
/// flow is many times that).
#[derive(Debug)]
pub(crate) struct FlowSources {
    /// The flow's name (`name:`, else the main file's stem), as the
    /// compiled flow will have it.
    pub(crate) name: String,
    /// The main file, as named.
    pub(crate) main: std::path::PathBuf,
    /// Each file read (the main one first) and its text.
    pub(crate) files: Vec<(std::path::PathBuf, Box<str>)>,
    /// The fingerprint of the texts: the compiled flow's [`Flow::version`].
    pub(crate) version: u64,
}

impl FlowSources {
    /// Whether the texts are the same as `other`'s (the same flow, wherever
    /// its files are).
    pub(crate) fn same_texts(&self, other: &FlowSources) -> bool {
        self.version == other.version
            && self.files.len() == other.files.len()
            && self.files.iter().zip(&other.files).all(|(a, b)| a.1 == b.1)
    }
}

/// A flow that could not be loaded, with every problem found.
#[derive(Debug, thiserror::Error)]
#[error("the flow has errors:\n{0}")]
pub struct LoadError(pub Diagnostics);

impl Flow {
    /// Loads a flow file (and the files it includes), validates and compiles it.
    /// Warnings are kept in [`Flow::warnings`].
    pub fn load(path: impl AsRef<Path>, names: &HandlerNames) -> Result<Flow, LoadError> {
        Flow::load_with(path, names, &FlowLimits::default())
    }

    /// Loads a flow file within `limits` (file size, nesting, template work).
    pub fn load_with(
        path: impl AsRef<Path>,
        names: &HandlerNames,
        limits: &FlowLimits,
    ) -> Result<Flow, LoadError> {
        let mut diags = Diagnostics::default();
        let files = load::load_files(path.as_ref(), None, limits, &mut diags);
        finish(compile::compile(&files, names, limits, &mut diags), diags)
    }

    /// Reads the flow at `path` and every file it includes or calls, without
    /// compiling it: a file that cannot be read or parsed is an error here,
    /// the rest is found by [`Flow::compile_sources`].
    pub(crate) fn read_sources(path: &Path, limits: &FlowLimits) -> Result<FlowSources, LoadError> {
        let mut diags = Diagnostics::default();
        let files = load::load_files(path, None, limits, &mut diags);
        diags.finish();
        if diags.has_errors() || files.is_empty() {
            return Err(LoadError(diags));
        }
        let version = compile::fingerprint_of(files.iter().map(|f| &*f.source.text));
        let name = files[0].doc.name.clone().unwrap_or_else(|| {
            path.file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "flow".into())
        });
        Ok(FlowSources {
            name,
            main: path.to_path_buf(),
            files: files
                .into_iter()
                .map(|f| (f.source.path, f.source.text.into_boxed_str()))
                .collect(),
            version,
        })
    }

    /// Compiles a flow from sources read before, without reading the disk:
    /// the same flow [`Flow::load_with`] makes of those files.
    pub(crate) fn compile_sources(
        sources: &FlowSources,
        names: &HandlerNames,
        limits: &FlowLimits,
    ) -> Result<Flow, LoadError> {
        let mut diags = Diagnostics::default();
        let text = |p: &Path| {
            sources
                .files
                .iter()
                .find(|(path, _)| path == p)
                .map(|(_, t)| t.to_string())
        };
        let files = load::load_files_over(
            &sources.main,
            text(&sources.main),
            &text,
            limits,
            &mut diags,
        );
        finish(compile::compile(&files, names, limits, &mut diags), diags)
    }

    /// Loads a flow from text, as if read from `name` (includes are resolved
    /// relative to `name`).
    pub fn from_yaml(
        name: impl AsRef<Path>,
        yaml: &str,
        names: &HandlerNames,
    ) -> Result<Flow, LoadError> {
        let mut diags = Diagnostics::default();
        let limits = FlowLimits::default();
        let files = load::load_files(name.as_ref(), Some(yaml.to_owned()), &limits, &mut diags);
        finish(compile::compile(&files, names, &limits, &mut diags), diags)
    }
}

/// A flow as an editor sees it: every problem, and each file that parsed
/// (its document and positions), whether or not the flow compiles.
pub(crate) struct Analysis {
    /// Errors and warnings, as `validate` finds them.
    pub(crate) diagnostics: Diagnostics,
    /// The files read, the main one first.
    pub(crate) files: Vec<load::Loaded>,
}

/// Loads, validates and compiles the flow at `path` for an editor: `open`
/// gives the text of the files open in it (unsaved changes), the others are
/// read from disk.
pub(crate) fn analyze(
    path: &Path,
    open: &dyn Fn(&Path) -> Option<String>,
    names: &HandlerNames,
) -> Analysis {
    let mut diagnostics = Diagnostics::default();
    let limits = FlowLimits::default();
    let files = load::load_files_over(path, open(path), open, &limits, &mut diagnostics);
    let _ = compile::compile(&files, names, &limits, &mut diagnostics);
    diagnostics.finish();
    Analysis { diagnostics, files }
}

fn finish(flow: Option<Flow>, mut diags: Diagnostics) -> Result<Flow, LoadError> {
    diags.finish();
    match flow {
        Some(mut f) if !diags.has_errors() => {
            f.warnings = diags;
            Ok(f)
        }
        _ => Err(LoadError(diags)),
    }
}

/// Parses another YAML document of the project (a conversation test) with the
/// same diagnostics as flows; `keys` are the names offered as "did you mean".
pub fn parse_yaml<T: serde::de::DeserializeOwned>(
    path: impl AsRef<Path>,
    text: String,
    keys: &[&str],
) -> Result<T, Diagnostics> {
    let mut diags = Diagnostics::default();
    let source = source::Source::new(path.as_ref(), text);
    let doc = load::parse_doc::<T>(&source, keys, &mut diags);
    diags.finish();
    match doc {
        Some(d) if !diags.has_errors() => Ok(d),
        _ => Err(diags),
    }
}

/// Writes a value as YAML, the way transcripts and snapshots are written.
pub fn to_yaml<T: serde::Serialize>(value: &T) -> String {
    load::to_yaml(value)
}

/// The JSON Schema (draft 2020-12) of a flow file, generated from the
/// [`model`] types and their doc comments, so it says what the loader
/// accepts: editors with a YAML language server complete and check flows
/// with it (`# yaml-language-server: $schema=flow.schema.json` on a flow's
/// first line; `flowbot schema` prints it). It describes the shape only:
/// state names, handlers and templates are checked by `flowbot validate`
/// and `flowbot lsp`.
pub fn schema() -> serde_json::Value {
    let schema = schemars::generate::SchemaSettings::draft2020_12()
        .into_generator()
        .into_root_schema_for::<model::FlowDoc>();
    schema.to_value()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flow_compiled_from_its_sources_read_before_is_the_flow_its_files_make() {
        let dir = crate::files::private_temp_dir("flowbot-flow-sources-").unwrap();
        let main = dir.path().join("main.yaml");
        let part = dir.path().join("part.yaml");
        let sub = dir.path().join("sub.yaml");
        std::fs::write(
            &main,
            "version: 1\ninclude: [part.yaml]\nstates:\n  start: { say: hi, next: other }\n  \
             phone: { call: { flow: sub.yaml }, next: start }\n",
        )
        .unwrap();
        std::fs::write(&part, "states:\n  other: { say: there, next: phone }\n").unwrap();
        std::fs::write(
            &sub,
            "version: 1\nstates:\n  ask: { say: number?, end: true }\n",
        )
        .unwrap();
        let limits = FlowLimits::default();
        let names = HandlerNames::default();
        let sources = Flow::read_sources(&main, &limits).unwrap();
        assert_eq!(
            sources.files.len(),
            3,
            "the include and the subflow are read too"
        );
        let loaded = Flow::load(&main, &names).unwrap();
        assert_eq!(sources.version, loaded.version);
        assert_eq!(sources.name, loaded.name);
        // The disk is not read again: the files may change or go.
        for f in [&main, &part, &sub] {
            std::fs::remove_file(f).unwrap();
        }
        let compiled = Flow::compile_sources(&sources, &names, &limits).unwrap();
        assert_eq!(compiled.version, loaded.version);
        assert_eq!(
            compiled.state_names().collect::<Vec<_>>(),
            loaded.state_names().collect::<Vec<_>>()
        );
        assert_eq!(compiled.to_mermaid(), loaded.to_mermaid());
        // A file that does not parse is an error when read, with its place.
        std::fs::write(&main, "version: 1\nstates: [").unwrap();
        let e = Flow::read_sources(&main, &limits).unwrap_err().to_string();
        assert!(e.contains("main.yaml:"), "{e}");
        std::fs::remove_file(&main).unwrap();
        assert!(Flow::read_sources(&main, &limits).is_err());
    }
}
