//! Subflows: a state that calls another flow file (`call: { flow }`) keeps
//! the caller's variables in a frame of the session's stack, runs the
//! subflow with its own, and returns its outputs to the caller's state.

use minijinja::Value;
use std::sync::Arc;

use super::run::{typed, Run};
use super::*;

impl Run<'_> {
    /// Starts a subflow: the caller's variables are kept in a frame, the
    /// subflow runs with its own (its `vars:` and its inputs).
    pub(super) fn call_subflow(
        &mut self,
        caller: &Arc<str>,
        sub: &SubflowCall,
    ) -> Result<(), String> {
        if self.session.stack.len() >= MAX_DEPTH {
            return Err(format!(
                "subflows nested more than {MAX_DEPTH} deep (calling `{}`)",
                sub.name
            ));
        }
        let mut inputs = Vec::with_capacity(sub.inputs.len());
        for (name, kind, tpl) in &sub.inputs {
            let Some(tpl) = tpl else { continue };
            let scope = self.scope();
            let raw = self
                .renderer()
                .value(tpl, &scope)
                .ok_or_else(|| format!("the input `{name}` of subflow `{}` failed", sub.name))?;
            let v = typed(*kind, Value::from(raw))
                .map_err(|why| format!("the input `{name}` of subflow `{}` {why}", sub.name))?;
            inputs.push((name.clone(), v));
        }
        let caller_vars = std::mem::replace(&mut self.session.vars, sub.defaults.to_vec());
        self.session.stack.push(Frame {
            call: caller.clone(),
            vars: caller_vars,
        });
        for (name, v) in inputs {
            self.set(&name, v);
        }
        self.scope = None;
        // The subflow's entry is entered next: it is where the conversation is.
        self.session.state = sub.entry;
        Ok(())
    }

    /// Ends a subflow: its outputs are computed, the caller's variables
    /// restored with the outputs it keeps. The caller's state, or none for a
    /// subflow that runs on its own.
    pub(super) fn return_from(&mut self, ret: &ReturnNode) -> Result<Option<StateId>, String> {
        let flow = self.bot.flow.clone();
        let mut values = Vec::with_capacity(ret.outputs.len());
        for (name, kind, tpl) in &ret.outputs {
            let v = match tpl {
                Some(t) => {
                    let scope = self.scope();
                    let raw = self
                        .renderer()
                        .value(t, &scope)
                        .ok_or_else(|| format!("the output `{name}` failed"))?;
                    Value::from(raw)
                }
                None => match self.session.var(name) {
                    Some(v) => v.clone(),
                    None => continue,
                },
            };
            let v = typed(*kind, v).map_err(|why| format!("the output `{name}` {why}"))?;
            values.push((name.clone(), v));
        }
        let Some(frame) = self.session.stack.pop() else {
            return Ok(None);
        };
        self.session.vars = frame.vars;
        self.scope = None;
        let caller = flow.state_id(&frame.call).ok_or_else(|| {
            format!(
                "the state `{}` that called this subflow is gone",
                frame.call
            )
        })?;
        if let Some(sub) = &flow.state(caller).subflow {
            for (name, v) in values {
                if sub.returns.contains(&name) {
                    self.set(&name, v);
                }
            }
        }
        self.session.state = caller;
        Ok(Some(caller))
    }

    /// A jump out of a subflow (a global intent, an error path, a release):
    /// the frames it leaves are dropped and the caller's variables restored.
    pub(super) fn unwind_to(&mut self, unit: u32) {
        if self.session.stack.is_empty() {
            return;
        }
        let flow = self.bot.flow.clone();
        while !self.session.stack.is_empty()
            && (self.session.state as usize) < flow.states.len()
            && flow.state(self.session.state).unit != unit
        {
            let frame = self.session.stack.pop().expect("not empty");
            self.session.vars = frame.vars;
            self.scope = None;
            match flow.state_id(&frame.call) {
                Some(c) => self.session.state = c,
                None => {
                    self.session.stack.clear();
                    return;
                }
            }
        }
    }
}
