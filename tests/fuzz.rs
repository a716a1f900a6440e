//! Random YAML and random messages: the loader and the engine never panic.

use flowbot::internals::flow::{Flow, HandlerNames};
use flowbot::Bot;
use flowbot::{Event, Incoming, MediaKind};
use proptest::prelude::*;

const SUPPORT: &str = include_str!("../flows/support.yaml");

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_text_never_panics_the_loader(s in "\\PC{0,200}") {
        let _ = Flow::from_yaml("fuzz.yaml", &s, &HandlerNames::default());
    }

    #[test]
    fn mutated_flows_never_panic_the_loader(cut in 0usize..SUPPORT.len(), junk in "[ -~\n]{0,12}") {
        let mut s = SUPPORT.to_owned();
        let at = (0..=cut).rev().find(|i| s.is_char_boundary(*i)).unwrap_or(0);
        s.insert_str(at, &junk);
        let names = HandlerNames { actions: vec!["lookup_order".into()], ..HandlerNames::default() };
        if let Err(e) = Flow::from_yaml("fuzz.yaml", &s, &names) {
            // Every problem names a position or at least the file.
            for d in &e.0.0 {
                prop_assert!(d.file.ends_with("fuzz.yaml"));
            }
        }
    }

    #[test]
    fn random_messages_never_panic_the_engine(msgs in proptest::collection::vec((0u8..7, "\\PC{0,20}"), 1..30)) {
        let bot = Bot::from_yaml("support.yaml", SUPPORT, crate::support_bot::registry()).unwrap();
        crate::block_on(async {
            let mut stored = None;
            for (kind, text) in msgs {
                let ev = match kind {
                    0 => Event::Message(Incoming::text(text)),
                    1 => Event::Message(Incoming::button(text)),
                    2 => Event::Message(Incoming::list(text)),
                    3 => Event::Message(Incoming::media(MediaKind::Image, text)),
                    4 => Event::AgentJoined,
                    5 => Event::AgentLeft,
                    _ => Event::Idle { due: text.len() as i64 },
                };
                let t = bot.step("c", stored.take(), &ev, 0).await;
                assert!(t.messages.len() <= 60);
                stored = t.stored;
            }
        });
    }
}
