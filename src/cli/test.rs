//! `flowbot test [DIR] [--coverage]`: YAML conversation tests against snapshots.

use std::path::Path;

use crate::handler::Registry;
use crate::testing::suite::{run_dir, Update};

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
