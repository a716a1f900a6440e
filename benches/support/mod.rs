//! What the benches share: command-line options, percentiles, the support
//! script as signed deliveries, the bot's configuration and a stand-in Qpien.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use flowbot::internals::qpien::webhook::sign;
use flowbot::internals::qpien::{RateLimitConfig, Secret};
use flowbot::Config;

use axum::body::Bytes;
use axum::http;
use axum::routing;
use axum::Router;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
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

/// Requests of replies the stand-ins answered (the replies are counted by
/// each stand-in's `created`).
pub(crate) static REPLY_REQUESTS: AtomicUsize = AtomicUsize::new(0);

/// A stand-in Qpien: tokens, and `createMessage` answered and counted.
pub(crate) async fn stand_in(created: Arc<AtomicUsize>) -> String {
    stand_in_watching(created, Arc::default()).await
}

/// Who waits for the reply to a conversation (`probe-...`): told when it
/// reaches the stand-in.
pub(crate) type Probes =
    std::sync::Mutex<std::collections::HashMap<String, tokio::sync::oneshot::Sender<()>>>;

/// [`stand_in`], telling `probes` of a reply to a conversation whose id
/// starts with `probe-`.
pub(crate) async fn stand_in_watching(created: Arc<AtomicUsize>, probes: Arc<Probes>) -> String {
    let app = Router::new().route(
        "/graphql",
        routing::post(move |body: Bytes| {
            let (created, probes) = (created.clone(), probes.clone());
            async move {
                let text = String::from_utf8_lossy(&body);
                if text.contains("generateOAuthToken") {
                    return r#"{"data":{"generateOAuthToken":{"accessToken":"t","expiresIn":3600}}}"#.to_owned();
                }
                // Replies sent together: one aliased field each (`m0: ...`).
                let n = text.matches("createMessage(").count().max(1);
                created.fetch_add(n, Ordering::Relaxed);
                REPLY_REQUESTS.fetch_add(1, Ordering::Relaxed);
                let mut rest = &text[..];
                while let Some(at) = rest.find("probe-") {
                    let id: String = rest[at..]
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                        .collect();
                    if let Some(waiter) = probes.lock().unwrap().remove(&id) {
                        let _ = waiter.send(());
                    }
                    rest = &rest[at + id.len()..];
                }
                if n == 1 {
                    return r#"{"data":{"createMessage":{"_id":"m"}}}"#.to_owned();
                }
                let fields: Vec<String> = (0..n).map(|i| format!(r#""m{i}":{{"_id":"m"}}"#)).collect();
                format!(r#"{{"data":{{{}}}}}"#, fields.join(","))
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

/// The webhook secret every bench's bot is configured with.
pub(crate) const SECRET: &str = "bench-webhook-secret";

/// The bot the end-to-end benches run: the support flow, its store under
/// `dir`, replies to `qpien` (the stand-in, unlimited: the bot's own budget
/// is opened as wide), listening on a free port; `normal` for `durability =
/// normal`.
pub(crate) fn bot_config(qpien: String, dir: &Path, normal: bool) -> Config {
    let mut config = Config {
        flow: concat!(env!("CARGO_MANIFEST_DIR"), "/flows/support.yaml").into(),
        ..Config::default()
    };
    config.qpien.endpoint = qpien;
    config.qpien.client_id = Secret::new("id");
    config.qpien.client_secret = Secret::new("secret");
    config.qpien.whatsapp_operation = flowbot::internals::qpien::WhatsappOperation::CreateMessage;
    config.qpien.rate_limit = RateLimitConfig {
        requests: 10_000_000,
        per: Duration::from_secs(1),
        default_reset: Duration::from_secs(1),
    };
    // `--batch 1`: each reply in a request of its own (as before replies
    // shared requests); `--in-flight K`: requests of replies under way.
    config.qpien.batch.max = arg("--batch", config.qpien.batch.max);
    config.qpien.batch.in_flight = arg("--in-flight", config.qpien.batch.in_flight);
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    config.server.webhook_secret = Secret::new(SECRET);
    config.store.path = dir.join("flowbot.db");
    config.runtime.reload = false;
    config.runtime.queue_capacity = 1_000_000;
    if normal {
        config.store.durability = flowbot::internals::store::Durability::Normal;
    }
    config
}

/// The load generator's HTTP/1.1 client: kept-alive connections, each
/// carrying one request at a time, taken from and returned to a pool by
/// address. It is hyper's own client connection with nothing above it, so
/// that on a machine the generator shares with the bot it takes as little of
/// the cores as a load tool should (reqwest's pooled client, used before,
/// cost about half as much again a request: its layers and pool were a
/// third of the generator's profile).
#[derive(Clone, Default)]
pub(crate) struct Loader {
    idle: Arc<Mutex<HashMap<String, Vec<Connection>>>>,
}

/// One kept-alive connection of the [`Loader`].
type Connection = SendRequest<Full<Bytes>>;

impl Loader {
    /// A connection to `authority` (`host:port`): an idle one, else a new one.
    async fn connection(&self, authority: &str) -> Connection {
        loop {
            let idle = self
                .idle
                .lock()
                .unwrap()
                .get_mut(authority)
                .and_then(Vec::pop);
            match idle {
                Some(mut c) => {
                    if c.ready().await.is_ok() {
                        return c;
                    }
                }
                None => break,
            }
        }
        let stream = tokio::net::TcpStream::connect(authority).await.unwrap();
        stream.set_nodelay(true).unwrap();
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(connection);
        sender
    }

    /// Sends `request` to `url` (`http://host:port/path`); its status, once
    /// its body is read.
    async fn send(&self, url: &str, request: http::request::Builder, body: Vec<u8>) -> u16 {
        let rest = url.strip_prefix("http://").expect("an http:// address");
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let path = if path.is_empty() { "/" } else { path };
        let request = request
            .uri(path)
            .header(http::header::HOST, authority)
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let mut c = self.connection(authority).await;
        let response = c.send_request(request).await.unwrap();
        let status = response.status().as_u16();
        response.into_body().collect().await.unwrap();
        self.idle
            .lock()
            .unwrap()
            .entry(authority.to_owned())
            .or_default()
            .push(c);
        status
    }
}

/// Posts one signed delivery; the time until it was acknowledged (200).
pub(crate) async fn post(http: &Loader, url: &str, payload: &Value) -> Duration {
    let body = serde_json::to_vec(payload).unwrap();
    let sig = sign(SECRET.as_bytes(), &body);
    let started = Instant::now();
    let request = http::Request::post("/")
        .header(http::header::CONTENT_TYPE, "application/json")
        .header("X-Qpien-Signature", sig);
    let status = http.send(url, request, body).await;
    assert_eq!(status, 200);
    started.elapsed()
}

/// Acknowledgement latencies of deliveries posted at a fixed `rate` a second
/// for `seconds` (open loop: each leaves at its time whatever the others
/// do), the support script's turns of conversations tagged `tag`; sorted.
pub(crate) async fn open_loop(
    http: &Loader,
    url: &str,
    rate: usize,
    seconds: usize,
    tag: &str,
) -> Vec<Duration> {
    let total = rate * seconds;
    let per_conv = 11;
    let scripts: Vec<Vec<Value>> = (0..total.div_ceil(per_conv))
        .map(|c| script(&format!("{tag}{c}"), 2))
        .collect();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let started = Instant::now();
    // Turn k of every conversation goes out before turn k+1 of any, so each
    // conversation's messages stay in order and far apart.
    let mut sent = 0;
    'outer: for k in 0..per_conv {
        for s in &scripts {
            if sent == total {
                break 'outer;
            }
            let due = started + interval * sent as u32;
            tokio::time::sleep_until(due.into()).await;
            let (http, url, m, tx) = (http.clone(), url.to_owned(), s[k].clone(), tx.clone());
            tokio::spawn(async move {
                let _ = tx.send(post(&http, &url, &m).await);
            });
            sent += 1;
        }
    }
    drop(tx);
    let mut lat = Vec::with_capacity(total);
    while let Some(d) = rx.recv().await {
        lat.push(d);
    }
    lat.sort();
    lat
}

/// `p50 a ms, p99 b ms, max c ms` of sorted durations.
pub(crate) fn summary(sorted: &[Duration]) -> String {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    format!(
        "p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        ms(percentile(sorted, 0.5)),
        ms(percentile(sorted, 0.99)),
        ms(sorted.last().copied().unwrap_or_default())
    )
}

/// Writes a 1,000-state flow under `dir`: asks with validation, buttons,
/// templates, `when:` rules, an intent per ten states; `main.yaml` holds the
/// start, the intents and 200 states, and includes four files of 200 more.
/// Returns the main file's path.
pub(crate) fn big_flow(dir: &Path) -> std::path::PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let parts: Vec<String> = (1..=4).map(|k| format!("part{k}.yaml")).collect();
    let mut files = vec![format!(
        "version: 1\ninclude: [{}]\nsettings: {{ error_message: \"Sorry.\" }}\nintents:\n",
        parts.join(", ")
    )];
    for i in (0..1_000).step_by(10) {
        files[0].push_str(&format!("  - {{ text: \"topic {i}\", goto: s{i} }}\n"));
    }
    files[0].push_str(
        "states:\n  start: { say: \"Hi {{ contact.first_name | default('there') }}\", next: s0 }\n",
    );
    files.extend((0..4).map(|_| String::from("states:\n")));
    for i in 0..1_000 {
        let next = if i + 1 < 1_000 {
            format!("s{}", i + 1)
        } else {
            "start".into()
        };
        let state = format!(
            "  s{i}:\n    ask:\n      text: \"Question {i} for {{{{ name | default('you') }}}}?\"\n      save: a{i}\n      validate: {{ kind: number, min: 1, max: 20 }}\n      invalid: \"A number from 1 to 20, please.\"\n      quick_replies: [{{ id: y{i}, title: \"Yes\" }}, {{ id: n{i}, title: \"No\" }}]\n    on:\n      - {{ button: y{i}, goto: {next} }}\n      - {{ when: \"a{i} | int > 10\", say: \"Big\", goto: {next} }}\n    next: {next}\n"
        );
        files[i / 200].push_str(&state);
    }
    std::fs::write(dir.join("main.yaml"), &files[0]).unwrap();
    for (name, text) in parts.iter().zip(&files[1..]) {
        std::fs::write(dir.join(name), text).unwrap();
    }
    dir.join("main.yaml")
}
