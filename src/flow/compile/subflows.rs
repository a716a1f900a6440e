//! Subflows: a `call: { flow }` state's inputs and outputs checked against the
//! subflow's `params:`, and `return:`.

use super::*;

impl Compiler<'_> {
    /// `call: { flow, with, returns }`, checked against the subflow's
    /// contract: every problem is reported at the call, naming where the
    /// subflow declares what it takes and gives.
    pub(super) fn subflow(
        &mut self,
        r: &mut Reporter<'_>,
        files: &[Loaded],
        state: &str,
        c: &model::Call,
    ) -> Option<SubflowCall> {
        let path = join_key(&join_key("states", state), "call");
        let written = c.flow.as_deref()?;
        // A file that could not be read or called is reported already.
        let &(_, u) = self.calls.iter().find(|(w, _)| w == written)?;
        let unit = self.units.get(u)?.clone();
        let child = &files[unit.file];
        let at = |key: &str| {
            let pos = child.source.key_pos(key);
            format!(
                "{}:{}",
                child.source.path.display(),
                pos.map_or(1, |p| p.line)
            )
        };
        let mut ok = true;
        for key in c.with.keys() {
            if !unit.inputs.iter().any(|(n, _, _)| n == key) {
                let known: Vec<&str> = unit.inputs.iter().map(|(n, _, _)| n.as_str()).collect();
                let hint = did_you_mean(key, known.iter().copied())
                    .map(|k| format!("did you mean `{k}`?"))
                    .unwrap_or_else(|| {
                        format!(
                            "its inputs: {}",
                            if known.is_empty() {
                                "none".into()
                            } else {
                                known.join(", ")
                            }
                        )
                    });
                r.key_error(
                    &join_key(&join_key(&path, "with"), key),
                    format!(
                        "subflow `{}` has no input `{key}` (its inputs are declared at {})",
                        unit.name,
                        at("inputs")
                    ),
                    Some(hint),
                );
                ok = false;
            }
        }
        for (name, _, default) in &unit.inputs {
            if default.is_none() && !c.with.contains_key(name) {
                r.error(
                    &path,
                    format!(
                        "subflow `{}` needs the input `{name}` (declared at {})",
                        unit.name,
                        at(&join_key("inputs", name))
                    ),
                    Some(format!(
                        "add `with: {{ {name}: ... }}`, or give the input a `default:`"
                    )),
                );
                ok = false;
            }
        }
        for (i, name) in c.returns.iter().enumerate() {
            if !unit.outputs.iter().any(|(n, _, _)| n == name) {
                let known: Vec<&str> = unit.outputs.iter().map(|(n, _, _)| n.as_str()).collect();
                let hint = did_you_mean(name, known.iter().copied())
                    .map(|k| format!("did you mean `{k}`?"))
                    .unwrap_or_else(|| {
                        format!(
                            "its outputs: {}",
                            if known.is_empty() {
                                "none".into()
                            } else {
                                known.join(", ")
                            }
                        )
                    });
                r.error(
                    &join_index(&join_key(&path, "returns"), i),
                    format!(
                        "subflow `{}` has no output `{name}`: renamed or removed? (its outputs are declared at {})",
                        unit.name,
                        at("outputs")
                    ),
                    Some(hint),
                );
                ok = false;
            }
        }
        let mut defaults = unit.vars.clone();
        let mut inputs = Vec::new();
        for (name, kind, default) in &unit.inputs {
            match c.with.get(name) {
                Some(t) => {
                    let tpl = self.template(r, &join_key(&join_key(&path, "with"), name), t);
                    ok &= tpl.is_some();
                    inputs.push((Arc::from(name.as_str()), *kind, tpl));
                }
                None => {
                    if let Some(d) = default {
                        defaults.push((
                            Arc::from(name.as_str()),
                            minijinja::Value::from_serialize(d),
                        ));
                    }
                }
            }
        }
        let entry = unit.entry?;
        ok.then(|| SubflowCall {
            unit: u as u32,
            name: unit.name.as_ref().into(),
            entry,
            defaults: Arc::new(defaults),
            inputs,
            returns: c.returns.iter().map(|n| Arc::from(n.as_str())).collect(),
        })
    }

    /// `return:`, checked against the unit's declared outputs.
    pub(super) fn ret(
        &mut self,
        r: &mut Reporter<'_>,
        unit: usize,
        state: &str,
        ret: &model::ReturnDoc,
        st: &model::State,
    ) -> Option<ReturnNode> {
        let path = join_key(&join_key("states", state), "return");
        for (key, set) in [
            ("next", st.next.is_some()),
            ("ask", st.ask.is_some()),
            ("end", st.end),
            ("handoff", st.handoff),
        ] {
            if set {
                r.key_error(
                    &join_key(&join_key("states", state), key),
                    format!("a state that returns cannot also have `{key}`: the caller's `next` follows"),
                    None,
                );
            }
        }
        let outputs = self
            .units
            .get(unit)
            .map(|u| u.outputs.clone())
            .unwrap_or_default();
        match ret {
            model::ReturnDoc::Vars(false) => None,
            model::ReturnDoc::Vars(true) => Some(ReturnNode {
                outputs: outputs
                    .iter()
                    .map(|(n, k, _)| (Arc::from(n.as_str()), *k, None))
                    .collect(),
            }),
            model::ReturnDoc::Values(values) => {
                let mut out = Vec::new();
                for (name, kind, _) in &outputs {
                    match values.get(name) {
                        Some(t) => {
                            let tpl = self.template(r, &join_key(&path, name), t);
                            out.push((Arc::from(name.as_str()), *kind, tpl));
                        }
                        None => r.error(
                            &path,
                            format!("the output `{name}` is not returned"),
                            Some(format!("add `{name}: \"{{{{ ... }}}}\"` to `return:`, or remove it from `outputs:`")),
                        ),
                    }
                }
                for key in values.keys() {
                    if !outputs.iter().any(|(n, _, _)| n == key) {
                        r.key_error(
                            &join_key(&path, key),
                            format!("`{key}` is not a declared output"),
                            Some("declare it under `outputs:` first".into()),
                        );
                    }
                }
                Some(ReturnNode { outputs: out })
            }
        }
    }
}
