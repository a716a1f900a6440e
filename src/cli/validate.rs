//! `flowbot validate FILE...`: every problem of every file, then a summary.

use std::path::PathBuf;

use crate::flow::Flow;
use crate::handler::Registry;

pub(super) fn run(files: &[PathBuf], strict: bool, registry: &Registry) -> u8 {
    let names = registry.names();
    let (mut errors, mut warnings) = (0, 0);
    for f in files {
        let diags = match Flow::load(f, &names) {
            Ok(flow) => flow.warnings,
            Err(e) => e.0,
        };
        for d in &diags.0 {
            eprintln!("{d}");
        }
        let e = diags.errors().count();
        errors += e;
        warnings += diags.0.len() - e;
        if diags.0.is_empty() {
            println!("{}: ok", f.display());
        }
    }
    println!("{errors} error(s), {warnings} warning(s)");
    if errors > 0 {
        2
    } else if strict && warnings > 0 {
        1
    } else {
        0
    }
}
