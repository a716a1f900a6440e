//! `flowbot graph FLOW [--dot]`.

use std::path::Path;

use crate::handler::Registry;

pub(super) fn run(path: &Path, dot: bool, registry: &Registry) -> u8 {
    match super::load(path, registry) {
        Ok(flow) => {
            print!(
                "{}",
                if dot {
                    flow.to_dot()
                } else {
                    flow.to_mermaid()
                }
            );
            0
        }
        Err(code) => code,
    }
}
