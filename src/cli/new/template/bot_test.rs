//! A conversation written in Rust, its transcript snapshot-tested with insta
//! (in `tests/snapshots/`). A changed transcript fails with a diff:
//! `INSTA_UPDATE=always cargo test` accepts it, `cargo insta review` (after
//! `cargo install cargo-insta`) shows it first.

use flowbot::TestConversation;

#[tokio::test]
async fn callback_from_rust() {
    let flow = concat!(env!("CARGO_MANIFEST_DIR"), "/flows/bot.yaml");
    let mut chat = TestConversation::load(flow, __CRATE__::registry()).unwrap();
    chat.send("hello").await;
    chat.tap("hours").await;
    chat.tap("callback").await;
    chat.send("+44 20 7946 0018").await;
    insta::assert_snapshot!(chat.transcript().to_yaml());
}
