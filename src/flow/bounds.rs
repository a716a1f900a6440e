//! How large and how costly a flow may be: limits on the files it is read from
//! and on the work its templates may do per render.
//!
//! A flow is trusted code, but a hot reload reads whatever is saved, and
//! templates read what customers typed. These bounds keep any file or any
//! template from exhausting the memory or the time of the process. Defaults are
//! generous for real flows (the largest example is a few hundred nodes) and can
//! be changed in the `[limits]` section of `flowbot.toml`.

use serde::Deserialize;

/// Limits on a flow's files and templates (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FlowLimits {
    /// Bytes in one flow file (the main one or an include).
    pub flow_file_bytes: u64,
    /// Nesting depth of collections in one document.
    pub flow_depth: usize,
    /// Characters in one mapping key.
    pub flow_key_chars: usize,
    /// Nodes (scalars and collections) in one document.
    pub flow_nodes: usize,
    /// Steps a template may take in one render (minijinja's fuel): a loop that
    /// would run longer fails the render.
    pub template_fuel: u64,
    /// Characters a template may produce in one render.
    pub template_output_chars: usize,
    /// Bytes of an `http:` step's answer read at most (a larger one fails).
    pub http_body_bytes: u64,
    /// `http:` requests one turn may make (a loop through an `http:` state
    /// fails past it).
    pub http_calls_per_turn: u32,
}

impl Default for FlowLimits {
    fn default() -> Self {
        FlowLimits {
            flow_file_bytes: 8 * 1024 * 1024,
            flow_depth: 64,
            flow_key_chars: 1024,
            flow_nodes: 200_000,
            template_fuel: 100_000,
            template_output_chars: 64 * 1024,
            http_body_bytes: 256 * 1024,
            http_calls_per_turn: 5,
        }
    }
}
