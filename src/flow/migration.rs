//! What a change of the flow does to the conversations saved in it: for each
//! state the old flow has and the new one does not (removed or renamed),
//! where `migrate:` sends its conversations, or that they start over. The
//! engine places each conversation so when it next runs; `flowbot
//! migrate-check OLD NEW` prints this plan before a reload (with the live
//! conversations of each state, read from a store), and `flowbot run` logs
//! it when it reloads.

use super::Flow;

/// Where the conversations of a state that is gone go on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Move {
    /// The old flow's state.
    pub state: String,
    /// The new flow's state `migrate:` sends them to; none: they start over.
    pub to: Option<String>,
}

/// The states of `old` that `new` does not have, in `old`'s order, and
/// where their conversations go.
pub fn migration(old: &Flow, new: &Flow) -> Vec<Move> {
    old.state_names()
        .filter(|name| new.state_id(name).is_none())
        .map(|name| Move {
            state: name.to_owned(),
            to: new
                .migrate
                .get(name)
                .map(|&id| new.state(id).name.to_string()),
        })
        .collect()
}

/// The plan as lines of text: one per state, with its live conversations
/// when they were counted.
pub fn describe(
    moves: &[Move],
    live: Option<&std::collections::BTreeMap<String, u64>>,
    new: &Flow,
) -> Vec<String> {
    moves
        .iter()
        .map(|m| {
            let count = match live {
                Some(l) => {
                    let n = l.get(&m.state).copied().unwrap_or(0);
                    format!(" ({n} live conversation{})", if n == 1 { "" } else { "s" })
                }
                None => String::new(),
            };
            let whither = match &m.to {
                Some(to) => format!("`migrate:` sends them to `{to}`"),
                None if new.settings.restart_message.is_some() => {
                    "`migrate:` does not place them: they start over, told by settings.restart_message".into()
                }
                None => "`migrate:` does not place them: they start over at their next message".into(),
            };
            format!("state `{}`{count} is gone: {whither}", m.state)
        })
        .collect()
}
