//! `flowbot check --explore FILE...`: every branch a customer can take,
//! walked through the engine with actions mocked (see
//! [`crate::testing::explore`]); the problems found, with their positions.

use std::path::PathBuf;

use crate::handler::Registry;
use crate::testing::explore::{explore, ExploreOptions};

pub(super) async fn run(
    files: &[PathBuf],
    explore_flows: bool,
    options: ExploreOptions,
    strict: bool,
    registry: &Registry,
) -> u8 {
    if !explore_flows {
        return super::validate::run(files, strict, None, registry);
    }
    let (mut errors, mut warnings) = (0, 0);
    for f in files {
        let diags = explore(f, registry, options).await;
        for d in &diags.0 {
            eprintln!("{d}");
        }
        let e = diags.errors().count();
        errors += e;
        warnings += diags.0.len() - e;
        if diags.0.is_empty() {
            println!("{}: explored, ok", f.display());
        }
    }
    println!("{errors} error(s), {warnings} warning(s)");
    if errors > 0 || (strict && warnings > 0) {
        1
    } else {
        0
    }
}
