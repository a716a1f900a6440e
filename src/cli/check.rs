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
    let mut tally = super::validate::Tally::default();
    for f in files {
        tally.add(f, &explore(f, registry, options).await, "explored, ok");
    }
    let (errors, warnings) = tally.finish();
    if errors > 0 || (strict && warnings > 0) {
        1
    } else {
        0
    }
}
