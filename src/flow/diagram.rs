//! The flow as a diagram: Mermaid (`flowbot graph`) or Graphviz DOT (`--dot`).
//!
//! Nodes are states (ends drawn round, handoffs as parallelograms); edges are rule
//! `goto`s labelled with their condition, `next`, fallbacks, `ask` outcomes,
//! subflow calls and error paths. Global intents hang off one "any state" node, since they apply
//! everywhere.

use std::fmt::Write;

use super::compiled::Flow;
use super::StateId;

struct Edge {
    from: Option<StateId>,
    to: StateId,
    label: String,
}

fn edges(flow: &Flow) -> Vec<Edge> {
    let mut out = Vec::new();
    for r in &flow.intents {
        if let Some(to) = r.goto {
            out.push(Edge {
                from: None,
                to,
                label: r.label.to_string(),
            });
        }
    }
    for (id, s) in flow.states.iter().enumerate() {
        let from = Some(id as StateId);
        for r in &s.on {
            if let Some(to) = r.goto {
                out.push(Edge {
                    from,
                    to,
                    label: r.label.to_string(),
                });
            }
        }
        if let Some(sub) = &s.subflow {
            out.push(Edge {
                from,
                to: sub.entry,
                label: format!("calls {}", sub.name),
            });
        }
        if let Some(to) = s.next {
            let label = if s.ask.is_some() {
                "valid answer"
            } else if s.subflow.is_some() {
                "after it returns"
            } else {
                "next"
            };
            out.push(Edge {
                from,
                to,
                label: label.into(),
            });
        }
        for to in s.call.iter().flat_map(|c| c.jumps.iter().copied()) {
            out.push(Edge {
                from,
                to,
                label: "the action jumps".into(),
            });
        }
        let total: u32 = s.split.iter().map(|(_, w)| w).sum();
        for (to, w) in &s.split {
            out.push(Edge {
                from,
                to: *to,
                label: format!("split {}%", u64::from(*w) * 100 / u64::from(total.max(1))),
            });
        }
        for b in &s.branches {
            out.push(Edge {
                from,
                to: b.goto,
                label: match &b.when {
                    Some(t) => format!("if {}", t.source()),
                    None => "otherwise".into(),
                },
            });
        }
        if let Some((to, idle)) = s.after.as_ref().and_then(|a| Some((a.goto?, a.idle_ms))) {
            out.push(Edge {
                from,
                to,
                label: format!(
                    "idle {}",
                    humantime::format_duration(std::time::Duration::from_millis(idle))
                ),
            });
        }
        if let Some(to) = s.fallback.as_ref().and_then(|f| f.goto) {
            out.push(Edge {
                from,
                to,
                label: "fallback".into(),
            });
        }
        if let Some(to) = s
            .ask
            .as_ref()
            .and_then(|a| a.exhausted.as_ref())
            .and_then(|e| e.goto)
        {
            out.push(Edge {
                from,
                to,
                label: "retries exhausted".into(),
            });
        }
        if let Some(h) = &s.http {
            if let Some(to) = h.on_error {
                out.push(Edge {
                    from,
                    to,
                    label: format!("request {} fails", h.name),
                });
            }
        }
        if let Some(to) = s.on_error {
            out.push(Edge {
                from,
                to,
                label: "error".into(),
            });
        }
    }
    out
}

fn escape(s: &str) -> String {
    s.replace('"', "'").replace('|', "/")
}

impl Flow {
    /// The states' names and the edges between them (from a state; global
    /// intents' edges left out), each once: what the console lays out.
    pub(crate) fn state_graph(&self) -> (Vec<&str>, Vec<(StateId, StateId)>) {
        let mut pairs: Vec<(StateId, StateId)> = edges(self)
            .into_iter()
            .filter_map(|e| Some((e.from?, e.to)))
            .filter(|(a, b)| a != b)
            .collect();
        pairs.sort_unstable();
        pairs.dedup();
        (self.states.iter().map(|s| &*s.name).collect(), pairs)
    }

    /// The flow as a Mermaid flowchart.
    pub fn to_mermaid(&self) -> String {
        self.mermaid(&edges(self), !self.intents.is_empty(), |_| true)
    }

    /// The part of the flow one step from `state`: the states its edges come
    /// from and go to (the "any state" node when a global intent leads to
    /// it), for a graph too big to read whole.
    pub fn to_mermaid_around(&self, state: StateId) -> String {
        let all = edges(self);
        let mut near = vec![false; self.states.len()];
        if let Some(n) = near.get_mut(state as usize) {
            *n = true;
        }
        for e in &all {
            if e.from == Some(state) {
                near[e.to as usize] = true;
            }
            if e.to == state {
                if let Some(f) = e.from {
                    near[f as usize] = true;
                }
            }
        }
        let edges: Vec<Edge> = all
            .into_iter()
            .filter(|e| {
                (e.from == Some(state) || e.to == state) && e.from.is_none_or(|f| near[f as usize])
            })
            .collect();
        let any = edges.iter().any(|e| e.from.is_none());
        self.mermaid(&edges, any, |id| near[id as usize])
    }

    /// States for which `show` holds, and `edges` between them (and the
    /// "any state" node if `any`).
    fn mermaid(&self, edges: &[Edge], any: bool, show: impl Fn(StateId) -> bool) -> String {
        let mut m = String::from("flowchart TD\n");
        for (id, s) in self.states.iter().enumerate() {
            if !show(id as StateId) {
                continue;
            }
            let name = escape(&s.name);
            let _ = match (s.end, s.handoff) {
                (true, _) => writeln!(m, "  s{id}((\"{name}\"))"),
                (_, true) => writeln!(m, "  s{id}[/\"{name}\"/]"),
                _ => writeln!(m, "  s{id}[\"{name}\"]"),
            };
        }
        if any {
            m.push_str("  any{{\"any state\"}}\n");
        }
        if show(self.start) {
            let _ = writeln!(m, "  start_([ ]) --> s{}", self.start);
        }
        for e in edges {
            let from = e
                .from
                .map_or_else(|| "any".to_string(), |f| format!("s{f}"));
            let _ = writeln!(m, "  {from} -->|\"{}\"| s{}", escape(&e.label), e.to);
        }
        m
    }

    /// The flow as Graphviz DOT.
    pub fn to_dot(&self) -> String {
        let mut d = format!("digraph \"{}\" {{\n  rankdir=TB;\n", escape(&self.name));
        for (id, s) in self.states.iter().enumerate() {
            let shape = match (s.end, s.handoff) {
                (true, _) => "doublecircle",
                (_, true) => "parallelogram",
                _ => "box",
            };
            let _ = writeln!(d, "  s{id} [label=\"{}\", shape={shape}];", escape(&s.name));
        }
        if !self.intents.is_empty() {
            d.push_str("  any [label=\"any state\", shape=hexagon];\n");
        }
        d.push_str("  start_ [shape=point];\n");
        let _ = writeln!(d, "  start_ -> s{};", self.start);
        for e in edges(self) {
            let from = e
                .from
                .map_or_else(|| "any".to_string(), |f| format!("s{f}"));
            let _ = writeln!(d, "  {from} -> s{} [label=\"{}\"];", e.to, escape(&e.label));
        }
        d.push_str("}\n");
        d
    }
}
