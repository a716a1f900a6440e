//! `flowbot validate FILE...`: every problem of every file, then a summary.
//! With `--templates FILE`, the WhatsApp templates the flows name are checked
//! against the account's (as `flowbot doctor --templates FILE` wrote them).

use std::path::{Path, PathBuf};

use crate::flow::{Flow, TemplateInfo};
use crate::handler::Registry;

/// Reads a template list: `{name, language, params}` objects, or templates as
/// Qpien lists them (read as [`crate::qpien::templates`] reads them).
fn read_templates(path: &Path) -> Result<Vec<TemplateInfo>, String> {
    let text = crate::flow::read_file(path, 8 * 1024 * 1024)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let items: Vec<serde_json::Value> = serde_json::from_str(&text).map_err(|e| {
        format!(
            "{}:{}:{}: not a JSON array of templates: {e}",
            path.display(),
            e.line(),
            e.column()
        )
    })?;
    items
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            serde_json::from_value::<TemplateInfo>(v.clone())
                .ok()
                .or_else(|| {
                    serde_json::from_value::<crate::qpien::templates::WhatsappTemplate>(v)
                        .ok()?
                        .info()
                })
                .ok_or_else(|| {
                    format!(
                        "{}: item [{i}] is not a template (it needs `name`, `language` and `params`)",
                        path.display()
                    )
                })
        })
        .collect()
}

pub(super) fn run(
    files: &[PathBuf],
    strict: bool,
    templates: Option<&Path>,
    registry: &Registry,
) -> u8 {
    let mut names = registry.names();
    if let Some(path) = templates {
        match read_templates(path) {
            Ok(list) => names.templates = Some(list),
            Err(e) => {
                eprintln!("error: {e}");
                return 2;
            }
        }
    }
    let mut tally = Tally::default();
    for f in files {
        let diags = match Flow::load(f, &names) {
            Ok(flow) => flow.warnings,
            Err(e) => e.0,
        };
        tally.add(f, &diags, "ok");
    }
    let (errors, warnings) = tally.finish();
    if errors > 0 {
        2
    } else if strict && warnings > 0 {
        1
    } else {
        0
    }
}

/// The problems of several files, printed as they come, then counted.
#[derive(Default)]
pub(super) struct Tally {
    errors: usize,
    warnings: usize,
}

impl Tally {
    /// Prints a file's problems (or `FILE: clean`) and counts them.
    pub(super) fn add(&mut self, file: &Path, diags: &crate::flow::Diagnostics, clean: &str) {
        for d in &diags.0 {
            eprintln!("{d}");
        }
        let e = diags.errors().count();
        self.errors += e;
        self.warnings += diags.0.len() - e;
        if diags.0.is_empty() {
            println!("{}: {clean}", file.display());
        }
    }

    /// Prints the summary line; the errors and warnings.
    pub(super) fn finish(self) -> (usize, usize) {
        println!("{} error(s), {} warning(s)", self.errors, self.warnings);
        (self.errors, self.warnings)
    }
}
