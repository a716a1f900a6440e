//! Who sent a message: only customers are answered, never a bot (flowbot
//! included), an agent or the system.
//!
//! FACT: `senderType` is "user, system, or bot" (given as hints, values not
//! published), and the account's people (CustomerPersons) have a `type`
//! (JR_AGENT, PERSON, ADMIN, OWNER, ROBOT). In order:
//! 1. a `frontMsgId` with our own prefix is flowbot's own message;
//! 2. the sender's own `type`, when it is a CustomerPerson type, wins;
//! 3. `senderType`, any case, through the table below, which
//!    `qpien.sender_types` extends or overrides; the key `""` decides a
//!    message without `senderType` (by default: a customer, since Qpien sends
//!    customers' messages as incoming).
//!
//! A value the table does not know is not answered; it is logged once per value
//! and counted, so that the account's real values show up in the logs and in
//! `flowbot_qpien_unknown_sender_types`.
//!
//! | `senderType` | treated as |
//! |---|---|
//! | user, customer, contact, client, visitor, `""` (missing) | customer |
//! | agent, person, jr_agent, admin, owner, operator | agent |
//! | bot, robot, flowbot, chatbot | bot |
//! | system, auto, automation | system |

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use super::config::SenderKind;
use super::types::ExternalMessage;

/// The default table (see the module docs).
pub const DEFAULTS: [(&str, SenderKind); 20] = [
    ("user", SenderKind::Customer),
    ("customer", SenderKind::Customer),
    ("contact", SenderKind::Customer),
    ("client", SenderKind::Customer),
    ("visitor", SenderKind::Customer),
    ("", SenderKind::Customer),
    ("agent", SenderKind::Agent),
    ("person", SenderKind::Agent),
    ("jr_agent", SenderKind::Agent),
    ("admin", SenderKind::Agent),
    ("owner", SenderKind::Agent),
    ("operator", SenderKind::Agent),
    ("bot", SenderKind::Bot),
    ("robot", SenderKind::Bot),
    ("flowbot", SenderKind::Bot),
    ("chatbot", SenderKind::Bot),
    ("system", SenderKind::System),
    ("auto", SenderKind::System),
    ("automation", SenderKind::System),
    ("notification", SenderKind::System),
];

/// The sender table in force.
#[derive(Debug)]
pub struct SenderTypes {
    table: HashMap<String, SenderKind>,
    prefix: String,
    seen_unknown: Mutex<HashSet<String>>,
    unknown: AtomicU64,
}

impl SenderTypes {
    /// The defaults with `overrides` on top; `own_prefix` marks flowbot's own
    /// messages by their `frontMsgId`.
    pub fn new(overrides: &BTreeMap<String, SenderKind>, own_prefix: &str) -> SenderTypes {
        let mut table: HashMap<String, SenderKind> =
            DEFAULTS.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        for (k, v) in overrides {
            table.insert(k.trim().to_lowercase(), *v);
        }
        SenderTypes {
            table,
            prefix: own_prefix.to_owned(),
            seen_unknown: Mutex::new(HashSet::new()),
            unknown: AtomicU64::new(0),
        }
    }

    /// Who sent `msg`.
    pub fn kind(&self, msg: &ExternalMessage) -> SenderKind {
        if let Some(front) = &msg.front_msg_id {
            let p = &self.prefix;
            if front.len() > p.len()
                && front.starts_with(p.as_str())
                && front.as_bytes()[p.len()] == b':'
            {
                return SenderKind::Bot;
            }
        }
        if let Some(kind) = msg.sender.as_ref().and_then(|s| s.kind.as_deref()) {
            match kind.to_ascii_uppercase().as_str() {
                "ROBOT" | "BOT" => return SenderKind::Bot,
                "JR_AGENT" | "PERSON" | "ADMIN" | "OWNER" | "AGENT" => return SenderKind::Agent,
                _ => {}
            }
        }
        let value = crate::text::shorten(msg.sender_type.as_deref().unwrap_or("").trim(), 64)
            .to_lowercase();
        match self.table.get(&value) {
            Some(k) => *k,
            None => {
                self.unknown.fetch_add(1, Ordering::Relaxed);
                let mut seen = self.seen_unknown.lock().unwrap_or_else(|e| e.into_inner());
                if seen.len() < 1000 && seen.insert(value.clone()) {
                    tracing::warn!(
                        sender_type = %value,
                        "a senderType flowbot does not know: its messages are not answered \
                         (map it in qpien.sender_types)"
                    );
                }
                SenderKind::Unknown
            }
        }
    }

    /// Messages seen with a `senderType` the table does not know.
    pub fn unknown_count(&self) -> u64 {
        self.unknown.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(v: serde_json::Value) -> ExternalMessage {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn the_table_decides_in_any_case_and_can_be_changed() {
        let t = SenderTypes::new(&BTreeMap::new(), "flowbot");
        let k = |v| t.kind(&msg(v));
        assert_eq!(
            k(serde_json::json!({"senderType": "USER"})),
            SenderKind::Customer
        );
        assert_eq!(k(serde_json::json!({})), SenderKind::Customer);
        assert_eq!(k(serde_json::json!({"senderType": "Bot"})), SenderKind::Bot);
        assert_eq!(
            k(serde_json::json!({"senderType": "user", "frontMsgId": "flowbot:m1:0"})),
            SenderKind::Bot
        );
        assert_eq!(
            k(serde_json::json!({"senderType": "user", "sender": {"type": "PERSON"}})),
            SenderKind::Agent
        );
        assert_eq!(
            k(serde_json::json!({"senderType": "WIDGET"})),
            SenderKind::Unknown
        );
        assert_eq!(
            k(serde_json::json!({"senderType": "widget"})),
            SenderKind::Unknown
        );
        assert_eq!(t.unknown_count(), 2);
        let t = SenderTypes::new(
            &BTreeMap::from([
                ("Widget".to_string(), SenderKind::Customer),
                (String::new(), SenderKind::Unknown),
            ]),
            "flowbot",
        );
        assert_eq!(
            t.kind(&msg(serde_json::json!({"senderType": "widget"}))),
            SenderKind::Customer
        );
        assert_eq!(t.kind(&msg(serde_json::json!({}))), SenderKind::Unknown);
    }
}
