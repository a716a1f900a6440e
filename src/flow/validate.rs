//! Checks that do not build anything: platform limits, duplicate ids, and the
//! shape of the state graph (unreachable states, `next` loops).
//!
//! Limits are WhatsApp's (the strictest channel Qpien serves with buttons): a flow
//! that passes them renders on every channel, because the engine degrades lists and
//! buttons to numbered text where a channel shows less. With
//! `settings.overflow: adapt` the count limits become the engine's job at run time
//! (too many buttons become a list, too long a list becomes numbered text), so they
//! are not errors here; length limits still are, since no rendering can shorten a
//! title faithfully. Texts with template syntax are measured only at run time.

use std::collections::HashSet;

use super::compiled::{Flow, MsgNode};
use super::model::{ButtonDoc, ChoiceDoc, ListDoc, Text};
use super::source::{join_index, join_key, Reporter};
use super::StateId;

/// WhatsApp's limits (see the module docs).
pub mod limits {
    /// Reply buttons per message.
    pub const QUICK_REPLIES: usize = 3;
    /// Characters in a reply button title.
    pub const QUICK_REPLY_TITLE: usize = 20;
    /// Characters in a button id.
    pub const BUTTON_ID: usize = 256;
    /// Characters in a message body.
    pub const BODY: usize = 1024;
    /// Characters in a header or footer.
    pub const HEADER: usize = 60;
    /// Rows in a list, over all sections.
    pub const LIST_ROWS: usize = 10;
    /// Sections in a list.
    pub const LIST_SECTIONS: usize = 10;
    /// Characters in a row title.
    pub const ROW_TITLE: usize = 24;
    /// Characters in a row description.
    pub const ROW_DESCRIPTION: usize = 72;
    /// Characters in a row id.
    pub const ROW_ID: usize = 200;
    /// Characters in the list's button label.
    pub const LIST_BUTTON: usize = 20;
    /// Characters in a section title.
    pub const SECTION_TITLE: usize = 24;
    /// URL buttons per message.
    pub const URL_BUTTONS: usize = 2;
}

/// Reports each language variant of `text` longer than `max` characters.
pub(crate) fn check_len(r: &mut Reporter<'_>, path: &str, text: &Text, max: usize, what: &str) {
    let variants: Vec<(String, &str)> = match text {
        Text::One(s) => vec![(path.to_owned(), s.as_str())],
        Text::ByLanguage(m) => m
            .iter()
            .map(|(l, s)| (join_key(path, l), s.as_str()))
            .collect(),
    };
    for (p, s) in variants {
        if s.contains("{{") || s.contains("{%") {
            continue;
        }
        let n = s.chars().count();
        if n > max {
            r.error(
                &p,
                format!("{what} is {n} characters long; WhatsApp allows {max}"),
                Some("shorten it".into()),
            );
        }
    }
}

/// Reports empty, duplicate or over-long ids among one message's options.
fn check_ids<'a>(
    r: &mut Reporter<'_>,
    items: impl Iterator<Item = (String, &'a ChoiceDoc)>,
    max_id: usize,
) {
    let mut seen = HashSet::new();
    for (p, c) in items {
        let id_path = join_key(&p, "id");
        if c.id.trim().is_empty() {
            r.error(&id_path, "an option needs a non-empty id", None);
        } else if !seen.insert(c.id.as_str()) {
            r.error(
                &id_path,
                format!("duplicate id `{}` in one message", c.id),
                Some("ids must be unique within a message, or the answer is ambiguous".into()),
            );
        }
        if c.id.chars().count() > max_id {
            r.error(
                &id_path,
                format!("id is longer than {max_id} characters"),
                None,
            );
        }
    }
}

/// Checks a message's quick replies.
pub(crate) fn check_quick_replies(r: &mut Reporter<'_>, path: &str, qr: &[ChoiceDoc], adapt: bool) {
    if qr.is_empty() {
        r.error(
            path,
            "quick_replies is empty",
            Some("offer at least one, or remove the key".into()),
        );
        return;
    }
    if qr.len() > limits::QUICK_REPLIES && !adapt {
        r.error(
            path,
            format!(
                "{} quick replies; WhatsApp shows at most {}",
                qr.len(),
                limits::QUICK_REPLIES
            ),
            Some(
                "use a list message, or set `settings.overflow: adapt` to turn it into one".into(),
            ),
        );
    }
    check_ids(
        r,
        qr.iter().enumerate().map(|(i, c)| (join_index(path, i), c)),
        limits::BUTTON_ID,
    );
    for (i, c) in qr.iter().enumerate() {
        let p = join_key(&join_index(path, i), "title");
        check_len(r, &p, &c.title, limits::QUICK_REPLY_TITLE, "a button title");
        if c.description.is_some() {
            r.error(
                &join_key(&join_index(path, i), "description"),
                "quick-reply buttons have no description",
                Some("use a list message for rows with descriptions".into()),
            );
        }
    }
}

/// Checks a list message.
pub(crate) fn check_list(r: &mut Reporter<'_>, path: &str, list: &ListDoc, adapt: bool) {
    check_len(
        r,
        &join_key(path, "body"),
        &list.body,
        limits::BODY,
        "the body",
    );
    check_len(
        r,
        &join_key(path, "button"),
        &list.button,
        limits::LIST_BUTTON,
        "the list button",
    );
    if let Some(h) = &list.header {
        check_len(
            r,
            &join_key(path, "header"),
            h,
            limits::HEADER,
            "the header",
        );
    }
    if let Some(f) = &list.footer {
        check_len(
            r,
            &join_key(path, "footer"),
            f,
            limits::HEADER,
            "the footer",
        );
    }
    let sections = join_key(path, "sections");
    if list.sections.is_empty() {
        r.error(&sections, "a list needs at least one section", None);
        return;
    }
    if list.sections.len() > limits::LIST_SECTIONS {
        r.error(
            &sections,
            format!(
                "{} sections; WhatsApp allows {}",
                list.sections.len(),
                limits::LIST_SECTIONS
            ),
            None,
        );
    }
    let rows: usize = list.sections.iter().map(|s| s.rows.len()).sum();
    if rows > limits::LIST_ROWS && !adapt {
        r.error(
            &sections,
            format!(
                "{rows} rows in all; WhatsApp lists hold at most {}",
                limits::LIST_ROWS
            ),
            Some("split the choice in two steps, or set `settings.overflow: adapt`".into()),
        );
    }
    let mut all = Vec::new();
    for (si, s) in list.sections.iter().enumerate() {
        let sp = join_index(&sections, si);
        if let Some(t) = &s.title {
            check_len(
                r,
                &join_key(&sp, "title"),
                t,
                limits::SECTION_TITLE,
                "a section title",
            );
        }
        if s.rows.is_empty() {
            r.error(
                &join_key(&sp, "rows"),
                "a section needs at least one row",
                None,
            );
        }
        for (ri, row) in s.rows.iter().enumerate() {
            let rp = join_index(&join_key(&sp, "rows"), ri);
            check_len(
                r,
                &join_key(&rp, "title"),
                &row.title,
                limits::ROW_TITLE,
                "a row title",
            );
            if let Some(d) = &row.description {
                check_len(
                    r,
                    &join_key(&rp, "description"),
                    d,
                    limits::ROW_DESCRIPTION,
                    "a row description",
                );
            }
            all.push((rp, row));
        }
    }
    check_ids(r, all.into_iter(), limits::ROW_ID);
}

/// Checks informative buttons.
pub(crate) fn check_buttons(r: &mut Reporter<'_>, path: &str, buttons: &[ButtonDoc]) {
    if buttons.is_empty() {
        r.error(path, "buttons is empty", None);
    }
    let urls = buttons
        .iter()
        .filter(|b| b.kind.eq_ignore_ascii_case("url"))
        .count();
    if urls > limits::URL_BUTTONS {
        r.error(
            path,
            format!(
                "{urls} URL buttons; WhatsApp allows {}",
                limits::URL_BUTTONS
            ),
            None,
        );
    }
    for (i, b) in buttons.iter().enumerate() {
        let p = join_index(path, i);
        check_len(
            r,
            &join_key(&p, "title"),
            &b.title,
            limits::QUICK_REPLY_TITLE,
            "a button title",
        );
    }
}

/// Edges of the state graph: for each state, the states it can lead to.
pub(crate) fn edges(flow: &Flow, id: StateId) -> Vec<StateId> {
    let s = flow.state(id);
    let mut out: Vec<StateId> = Vec::new();
    out.extend(s.on.iter().filter_map(|r| r.goto));
    out.extend(s.follows());
    out.extend(s.call.iter().flat_map(|c| c.jumps.iter().copied()));
    out.extend(s.after.as_ref().and_then(|a| a.goto));
    out.extend(s.fallback.as_ref().and_then(|f| f.goto));
    out.extend(s.http.as_ref().and_then(|h| h.on_error));
    out.extend(
        s.on_error
            .or(flow.on_error)
            .filter(|_| s.call.is_some() || s.http.is_some()),
    );
    out.extend(s.subflow.as_ref().map(|c| c.entry));
    if let Some(a) = &s.ask {
        out.extend(a.exhausted.as_ref().and_then(|f| f.goto));
    }
    if s.intents {
        out.extend(flow.intents.iter().filter_map(|r| r.goto));
        out.extend(flow.settings.fallback.as_ref().and_then(|f| f.goto));
    }
    out
}

/// States no path from `start` (or from a global intent) reaches.
pub(crate) fn unreachable(flow: &Flow) -> Vec<StateId> {
    let mut seen = vec![false; flow.states.len()];
    let mut stack = vec![flow.start];
    // A conversation with no session tries the intents first: their targets are roots.
    stack.extend(flow.intents.iter().filter_map(|r| r.goto));
    // Schedules start conversations in their states.
    stack.extend(flow.schedules.iter().map(|s| s.state));
    // A released conversation goes to `release:`.
    stack.extend(flow.release);
    while let Some(id) = stack.pop() {
        if std::mem::replace(&mut seen[id as usize], true) {
            continue;
        }
        stack.extend(edges(flow, id));
    }
    (0..flow.states.len() as StateId)
        .filter(|&i| !seen[i as usize])
        .collect()
}

/// A cycle of states chained by `next` with nothing in between that waits for the
/// customer: the conversation would spin. Returns the states of the first one found.
pub(crate) fn next_loop(flow: &Flow) -> Option<Vec<StateId>> {
    // Each state has at most one `next` it passes through, so the states form
    // chains: walk each once (linear), marking states on the current walk; a walk
    // that meets its own mark has found a loop. The loop reported starts at its
    // lowest state, whichever walk found it.
    const NEW: u8 = 0;
    const ON_WALK: u8 = 1;
    const DONE: u8 = 2;
    let through = |id: StateId| {
        let s = flow.state(id);
        // After a subflow's call, `next` follows only once it returns.
        if s.ask.is_some() || s.end || s.handoff || s.subflow.is_some() {
            None
        } else {
            s.next
        }
    };
    let mut mark = vec![NEW; flow.states.len()];
    let mut best: Option<Vec<StateId>> = None;
    for start in 0..flow.states.len() as StateId {
        let mut walk = Vec::new();
        let mut cur = Some(start);
        while let Some(id) = cur {
            match mark[id as usize] {
                NEW => {
                    mark[id as usize] = ON_WALK;
                    walk.push(id);
                    cur = through(id);
                }
                ON_WALK => {
                    let at = walk.iter().position(|&w| w == id).unwrap_or(0);
                    let mut cycle = walk[at..].to_vec();
                    let low = (0..cycle.len()).min_by_key(|&i| cycle[i]).unwrap_or(0);
                    cycle.rotate_left(low);
                    if best.as_ref().is_none_or(|b| cycle[0] < b[0]) {
                        best = Some(cycle);
                    }
                    break;
                }
                _ => break,
            }
        }
        for w in walk {
            mark[w as usize] = DONE;
        }
    }
    best
}

/// WhatsApp's customer-service window (FACT): free-form messages are
/// delivered only within 24 hours of the customer's last message.
const WINDOW_MS: u64 = 24 * 3600 * 1000;

/// A turn that may send free-form messages outside WhatsApp's window, with
/// no `template:` to send instead.
#[derive(Debug)]
pub(crate) enum WindowRisk {
    /// The `after:` of this state fires this long after the customer last
    /// wrote (at least), through the chain of nudges named.
    After {
        state: StateId,
        elapsed_ms: u64,
        chain: Vec<StateId>,
    },
    /// A handoff may last more than 24 hours (no `handoff_timeout`, or a
    /// longer one), and the release sends free-form messages.
    Release { states: Vec<StateId> },
    /// A schedule starts conversations (the customer may not have written for
    /// days) in a state that sends free-form messages.
    Schedule { index: usize, states: Vec<StateId> },
}

/// The states a turn entering `id` passes through (following `next` until a
/// state that waits, ends or hands off).
fn chain(flow: &Flow, mut id: StateId) -> Vec<StateId> {
    let mut out = Vec::new();
    while !out.contains(&id) {
        out.push(id);
        let st = flow.state(id);
        match st.next {
            Some(n) if st.ask.is_none() && !st.end && !st.handoff => id = n,
            _ => break,
        }
    }
    out
}

fn free_form(msgs: &[MsgNode]) -> bool {
    msgs.iter().any(|m| !matches!(m, MsgNode::Template(_)))
}

/// Whether entering these states sends free-form messages, and whether one
/// of them has a `template:` to send instead.
fn turn_of(flow: &Flow, states: &[StateId]) -> (bool, bool) {
    let sends = states.iter().any(|&s| {
        let st = flow.state(s);
        free_form(&st.say) || st.ask.as_ref().is_some_and(|a| a.text.is_some())
    });
    let covered = states.iter().any(|&s| flow.state(s).template.is_some());
    (sends, covered)
}

/// Every turn that may send a free-form message more than 24 hours after the
/// customer last wrote without a `template:` alternative: `after:` nudges
/// (alone or chained through their `goto`s, each counted from the last), and
/// the release after a handoff that may last longer than the window. A state
/// is walked again only when reached later than before, and times are capped
/// just past the window, so the walk ends (nudges form chains: one `goto`
/// each).
pub(crate) fn window_risks(flow: &Flow) -> Vec<WindowRisk> {
    let mut risks = Vec::new();
    // The latest time (capped) each state was walked at.
    let mut walked: Vec<Option<u64>> = vec![None; flow.states.len()];
    let mut stack: Vec<(StateId, u64, Vec<StateId>)> = (0..flow.states.len() as StateId)
        .filter(|&s| flow.state(s).after.is_some())
        .map(|s| (s, 0, Vec::new()))
        .collect();
    while let Some((s, base, path)) = stack.pop() {
        let capped = base.min(WINDOW_MS + 1);
        if walked[s as usize].is_some_and(|w| w >= capped) {
            continue;
        }
        walked[s as usize] = Some(capped);
        let Some(after) = &flow.state(s).after else {
            continue;
        };
        let elapsed = base.saturating_add(after.idle_ms);
        let mut path = path;
        path.push(s);
        let entered = after.goto.map(|g| chain(flow, g)).unwrap_or_default();
        let (sends, covered) = turn_of(flow, &entered);
        if elapsed > WINDOW_MS
            && (free_form(&after.say) || sends)
            && after.template.is_none()
            && !covered
            && !risks
                .iter()
                .any(|r| matches!(r, WindowRisk::After { state, .. } if *state == s))
        {
            risks.push(WindowRisk::After {
                state: s,
                elapsed_ms: elapsed,
                chain: path.clone(),
            });
        }
        if let Some(&last) = entered.last() {
            stack.push((last, elapsed, path));
        }
    }
    for (index, sched) in flow.schedules.iter().enumerate() {
        let states = chain(flow, sched.state);
        let (sends, covered) = turn_of(flow, &states);
        if sends && !covered {
            risks.push(WindowRisk::Schedule { index, states });
        }
    }
    let hands_off = flow.states.iter().any(|s| s.handoff);
    let long = flow
        .settings
        .handoff_timeout_ms
        .is_none_or(|t| t > WINDOW_MS);
    if hands_off && long {
        let states = flow.release.map(|r| chain(flow, r)).unwrap_or_default();
        let (sends, covered) = turn_of(flow, &states);
        if (sends || flow.settings.release_message.is_some()) && !covered {
            risks.push(WindowRisk::Release { states });
        }
    }
    risks
}
