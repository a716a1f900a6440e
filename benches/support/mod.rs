//! What the benches share: command-line options and percentiles.

#![allow(dead_code)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::routing;
use axum::Router;
use serde_json::{json, Value};

/// The value after `name` on the command line (`--rate 1000`), or `default`.
pub(crate) fn arg<T: std::str::FromStr>(name: &str, default: T) -> T {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The `p` percentile (0 to 1) of sorted durations.
pub(crate) fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// A stand-in Qpien: tokens, and `createMessage` answered and counted.
pub(crate) async fn stand_in(created: Arc<AtomicUsize>) -> String {
    let app = Router::new().route(
        "/graphql",
        routing::post(move |body: Bytes| {
            let created = created.clone();
            async move {
                let text = String::from_utf8_lossy(&body);
                if text.contains("generateOAuthToken") {
                    return r#"{"data":{"generateOAuthToken":{"accessToken":"t","expiresIn":3600}}}"#;
                }
                created.fetch_add(1, Ordering::Relaxed);
                r#"{"data":{"createMessage":{"_id":"m"}}}"#
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/graphql", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

/// The support script (11 turns) as webhook deliveries of `conversation`,
/// its `n`-th run (message ids differ between runs).
pub(crate) fn script(conversation: &str, n: usize) -> Vec<Value> {
    let data = |i: usize, extra: Value| {
        let mut d = json!({"_id": format!("{conversation}-{n}-{i}"), "conversation": conversation,
            "senderType": "user", "channelType": "WhatsApp"});
        d.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        json!({"event": "NEW_INCOMING_MESSAGE", "data": d})
    };
    let t = |s: &str| json!({"content": s});
    let b = |s: &str| json!({"content": s, "flowBotQuickReplyResponseId": s});
    let l = |s: &str| json!({"content": s, "listMessage": {"selectedRowId": s}});
    [
        t("hello"),
        b("orders"),
        t("12"),
        t("123456"),
        l("track"),
        t("hi again"),
        b("orders"),
        t("222222"),
        l("return"),
        t("too big"),
        b("yes"),
    ]
    .into_iter()
    .enumerate()
    .map(|(i, e)| data(i, e))
    .collect()
}
