//! The playground in headless Chromium, driven over WebDriver: open the page,
//! start a conversation, tap a quick reply, pick a list row, see the bot's
//! answers and its state, and take a screenshot (`docs/playground.png`); at a
//! phone's width in Turkish with the bot's clock moved; and the operator
//! console (`docs/console.png`).
//!
//! It needs Chromium and ChromeDriver (Debian: `chromium`, `chromium-driver`),
//! so it is `#[ignore]`d in a plain `cargo test`; `.ci/run` installs them and
//! runs it with `cargo test -- --ignored browser`.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{ClientBuilder, Locator};

struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn wait_for_text(
    c: &fantoccini::Client,
    css: &str,
    text: &str,
) -> Result<(), fantoccini::error::CmdError> {
    let end = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let found = c.find(Locator::Css(css)).await;
        if let Ok(el) = found {
            if el.text().await.unwrap_or_default().contains(text) {
                return Ok(());
            }
        }
        if tokio::time::Instant::now() > end {
            let page = c.source().await.unwrap_or_default();
            panic!("`{text}` never appeared in `{css}`; page:\n{page}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Clicks the element `css` names, once it is there.
async fn click(c: &fantoccini::Client, css: &str) {
    c.wait()
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .click()
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"));
}

/// The text of the element `css` names.
async fn text(c: &fantoccini::Client, css: &str) -> String {
    c.find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .text()
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
}

/// Types into the composer (once it is enabled) and presses send.
async fn type_and_send(c: &fantoccini::Client, text: &str) {
    c.wait()
        .for_element(Locator::Css("[data-testid=composer-input]:enabled"))
        .await
        .unwrap()
        .send_keys(text)
        .await
        .unwrap();
    click(c, "[data-testid=send]").await;
}

/// Chromium under ChromeDriver, at `width` x `height`; the driver stops with
/// the returned guard.
async fn chromium(width: u32, height: u32) -> (Driver, fantoccini::Client) {
    let chromedriver = std::env::var("CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into());
    let port = free_port();
    let driver = Driver(
        Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {chromedriver}: {e}")),
    );
    let mut caps = serde_json::Map::new();
    let mut chrome = serde_json::json!({"args": [
        "--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
        format!("--window-size={width},{height}")
    ]});
    if let Ok(bin) = std::env::var("CHROMIUM") {
        chrome["binary"] = serde_json::json!(bin);
    }
    caps.insert("goog:chromeOptions".into(), chrome);
    for _ in 0..50 {
        match ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps.clone())
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
        {
            Ok(c) => return (driver, c),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    panic!("chromedriver did not answer");
}

/// A script's answer in the page.
async fn js(c: &fantoccini::Client, script: &str) -> serde_json::Value {
    c.execute(script, vec![])
        .await
        .unwrap_or_else(|e| panic!("{script}: {e}"))
}

/// Waits until `script` answers true.
async fn wait_js(c: &fantoccini::Client, what: &str, script: &str) {
    let end = tokio::time::Instant::now() + Duration::from_secs(15);
    while js(c, script).await != serde_json::json!(true) {
        if tokio::time::Instant::now() > end {
            panic!("{what}: `{script}` never held");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs chromium and chromedriver; .ci/run runs it"]
async fn browser_playground_in_headless_chromium() {
    let (_driver, c) = chromium(1400, 900).await;
    let demo = flowbot::internals::cli::Demo::start(
        std::path::Path::new("flows/support.yaml"),
        "127.0.0.1:0".parse().unwrap(),
        crate::support_bot::registry(),
    )
    .await
    .unwrap();

    c.goto(&demo.sim.url()).await.unwrap();
    click(&c, "[data-testid=new-conversation]").await;
    type_and_send(&c, "hello").await;
    wait_for_text(&c, "[data-testid=messages]", "Hi! How can we help?")
        .await
        .unwrap();
    // How the free text was understood (the support flow's `nlu:`).
    wait_for_text(&c, "[data-testid=bot-intent]", "greeting (")
        .await
        .unwrap();
    // Tap a quick reply, as on WhatsApp.
    click(&c, "[data-testid=quick-reply-orders]").await;
    wait_for_text(&c, "[data-testid=messages]", "Your order number?")
        .await
        .unwrap();
    type_and_send(&c, "123456").await;
    wait_for_text(&c, "[data-testid=messages]", "Order 123456 is shipped.")
        .await
        .unwrap();
    wait_for_text(&c, "[data-testid=bot-state]", "status")
        .await
        .unwrap();
    wait_for_text(&c, "[data-testid=vars]", "123456")
        .await
        .unwrap();
    // The conversation's WhatsApp window, as the bot sees it.
    wait_for_text(&c, "[data-testid=bot-window]", "open until")
        .await
        .unwrap();
    // Open the list and pick a row.
    click(&c, "[data-testid=list-open]").await;
    // The graph is drawn with the current state highlighted, before the pick.
    let graph = c.find(Locator::Css("[data-testid=graph] svg")).await;
    assert!(graph.is_ok(), "the flow graph is rendered");
    // At 1400 px: three columns side by side.
    assert_eq!(
        js(
            &c,
            "const a = document.querySelector('.conversations').getBoundingClientRect(), \
                 p = document.querySelector('.phone').getBoundingClientRect(), \
                 s = document.querySelector('.side').getBoundingClientRect(); \
                 return a.right <= p.left && p.right <= s.left && a.top === p.top;"
        )
        .await,
        serde_json::json!(true),
        "three columns at 1400 px"
    );
    let shot = c.screenshot().await.unwrap();
    click(&c, "[data-testid=list-row-track]").await;
    wait_for_text(
        &c,
        "[data-testid=messages]",
        "Tracking link: https://t.example/123456",
    )
    .await
    .unwrap();
    assert!(shot.starts_with(&[0x89, b'P', b'N', b'G']));
    std::fs::create_dir_all("docs").unwrap();
    std::fs::write("docs/playground.png", &shot).unwrap();
    let _ = c.close().await;
    demo.shutdown().await;
}

/// A Turkish conversation at a phone's width, on a flow with a Turkish list
/// and a nudge after an hour.
const TURKISH: &str = r#"
version: 1
name: pazar
states:
  start:
    say:
      - text: "Merhaba! Ne yapmak istersiniz?"
      - list:
          body: Seçiniz
          button: Seçenekler
          sections:
            - title: Sipariş işlemleri
              rows:
                - { id: takip, title: Siparişimi takip et }
                - { id: iptal, title: İptal }
    on:
      - { list: takip, goto: takip }
      - { list: iptal, goto: takip }
    after:
      idle: 1h
      say: "Hâlâ orada mısınız?"
  takip:
    say: "Sipariş numaranız?"
    on:
      - { text: geri, goto: start }
  bitti:
    say: "Görüşmek üzere."
    end: true
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs chromium and chromedriver; .ci/run runs it"]
async fn browser_playground_at_a_phones_width_in_turkish_with_time_moved() {
    let dir = tempfile::tempdir().unwrap();
    let flow = dir.path().join("pazar.yaml");
    std::fs::write(&flow, TURKISH).unwrap();
    let demo = flowbot::internals::cli::Demo::start(
        &flow,
        "127.0.0.1:0".parse().unwrap(),
        flowbot::Registry::new(),
    )
    .await
    .unwrap();
    let (_driver, c) = chromium(390, 844).await;
    c.goto(&demo.sim.url()).await.unwrap();
    click(&c, "[data-testid=language] option[value=tr]").await;
    click(&c, "[data-testid=channel] option[value=whatsapp]").await;
    click(&c, "[data-testid=new-conversation]").await;
    type_and_send(&c, "merhaba").await;
    wait_for_text(&c, "[data-testid=messages]", "Ne yapmak istersiniz?")
        .await
        .unwrap();

    // Nothing scrolls sideways at 390 px, and the chat comes first.
    wait_js(
        &c,
        "no sideways scrolling at 390 px",
        "return document.documentElement.scrollWidth <= window.innerWidth;",
    )
    .await;
    assert_eq!(
        js(
            &c,
            "return document.querySelector('.phone').getBoundingClientRect().top < \
                 document.querySelector('.conversations').getBoundingClientRect().top;"
        )
        .await,
        serde_json::json!(true),
        "the chat first on a phone"
    );

    // The page and each message speak the conversation's language.
    assert_eq!(js(&c, "return document.documentElement.lang;").await, "tr");
    assert_eq!(
        js(&c, "return [...document.querySelectorAll('[data-testid=messages] .row')].every(r => r.lang === 'tr');").await,
        serde_json::json!(true),
        "every message is lang=tr"
    );
    // A list section's title upper-cased the Turkish way (İ, not I).
    click(&c, "[data-testid=list-open]").await;
    let title = text(&c, ".section-title").await;
    assert_eq!(title, "SİPARİŞ İŞLEMLERİ");
    click(&c, "[data-testid=list-row-takip]").await;
    wait_for_text(&c, "[data-testid=messages]", "Sipariş numaranız?")
        .await
        .unwrap();
    type_and_send(&c, "geri").await;
    wait_for_text(&c, "[data-testid=bot-state]", "start")
        .await
        .unwrap();

    // Dates in Turkish (day.month.year), the window open.
    wait_for_text(&c, "[data-testid=bot-window]", "open until")
        .await
        .unwrap();
    let window = text(&c, "[data-testid=bot-window]").await;
    let turkish_date = regex::Regex::new(r"\d{1,2}\.\d{2}\.\d{4} \d{2}:\d{2}").unwrap();
    assert!(turkish_date.is_match(&window), "a Turkish date: {window}");

    // An hour later (the bot's clock, moved): the nudge goes out.
    let before = js(
        &c,
        "return document.querySelector('[data-testid=bot-time]').textContent;",
    )
    .await;
    click(&c, "[data-testid=clock-hour]:enabled").await;
    wait_for_text(&c, "[data-testid=messages]", "Hâlâ orada mısınız?")
        .await
        .unwrap();
    let after = js(
        &c,
        "return document.querySelector('[data-testid=bot-time]').textContent;",
    )
    .await;
    assert_ne!(before, after, "the bot's time moved");
    // A day later: WhatsApp's window is closed.
    click(&c, "[data-testid=clock-day]").await;
    wait_for_text(&c, "[data-testid=bot-window]", "closed since")
        .await
        .unwrap();

    // The graph: zoomed in, then only around the current state.
    let nodes = "return document.querySelectorAll('[data-testid=graph] g.node').length;";
    wait_js(
        &c,
        "the whole graph",
        "return document.querySelectorAll('[data-testid=graph] g.node').length >= 3;",
    )
    .await;
    let whole = js(&c, nodes).await.as_u64().unwrap();
    let width =
        "return document.querySelector('[data-testid=graph] svg').getBoundingClientRect().width;";
    let w0 = js(&c, width).await.as_f64().unwrap();
    click(&c, "[data-testid=graph-zoom-in]").await;
    let w1 = js(&c, width).await.as_f64().unwrap();
    assert!(w1 > w0 * 1.2, "zoomed in: {w0} -> {w1}");
    click(&c, "[data-testid=graph-around]").await;
    // `bitti` is not next to `start`.
    let fewer = format!(
        "return document.querySelectorAll('[data-testid=graph] g.node').length === {};",
        whole - 1
    );
    wait_js(&c, "only the neighbourhood", &fewer).await;
    let _ = c.close().await;
    demo.shutdown().await;
}

/// The operator console in Chromium: the sign-in form, then the page at a
/// phone's width with the numbers the report gives for the same data; a
/// screenshot for docs/console.png.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs chromium and chromedriver; .ci/run runs it"]
async fn browser_console_in_headless_chromium() {
    use crate::runtime::{message, wait_until, Harness};
    const TOKEN: &str = "console-admin-token";
    let h = Harness::start("console", crate::insights::FLOW, |c| {
        c.server.admin_token = flowbot::internals::qpien::Secret::new(TOKEN);
    })
    .await;
    let mut n = 0;
    for (conv, texts) in [
        ("a", &["hi", "order", "12345"][..]),
        ("b", &["hi", "agent"][..]),
        ("c", &["hi", "order"][..]),
        ("d", &["hi", "order", "54321"][..]),
    ] {
        for t in texts {
            n += 1;
            assert_eq!(h.post(&message(&format!("m{n}"), conv, t)).await, 200);
        }
    }
    wait_until("every reply", Duration::from_secs(10), || {
        h.replies("d").len() == 3 && h.replies("b").len() == 2 && h.replies("c").len() == 2
    })
    .await;
    let report: serde_json::Value = serde_json::from_str(
        &h.http
            .get(h.url("/admin/reports/outcomes"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    )
    .unwrap();
    let o = &report[0];

    let (_driver, c) = chromium(390, 844).await;
    c.goto(&h.url("/console")).await.unwrap();
    // No token: the sign-in form (the answer is 401).
    c.wait()
        .for_element(Locator::Css("[data-testid=token]"))
        .await
        .unwrap()
        .send_keys(TOKEN)
        .await
        .unwrap();
    click(&c, "[data-testid=sign-in]").await;
    let row = format!(
        "[data-testid=outcome-{}]",
        o["flow_version"].as_str().unwrap()
    );
    c.wait().for_element(Locator::Css(&row)).await.unwrap();
    for key in ["started", "resolved", "handed_off", "abandoned", "open"] {
        let shown = text(&c, &format!("{row} [data-testid={key}]")).await;
        assert_eq!(shown, o[key].to_string(), "{key}");
    }
    let containment = text(&c, &format!("{row} [data-testid=containment]")).await;
    let want = o["containment"].as_f64().unwrap() * 100.0;
    assert_eq!(containment, format!("{want:.1}%"));
    let reached = text(&c, "[data-testid=funnel-ask_number] [data-testid=reached]").await;
    assert_eq!(reached, "3");
    // The same on the flow's diagram.
    let node = text(
        &c,
        "[data-testid=funnel-diagram] [data-testid=node-ask_number]",
    )
    .await;
    assert!(node.contains("3 reached"), "{node}");
    // A phone's width: the page itself does not scroll sideways.
    wait_js(
        &c,
        "no sideways scrolling at 390 px",
        "return document.documentElement.scrollWidth <= window.innerWidth;",
    )
    .await;
    c.set_window_size(1200, 1000).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let shot = c.screenshot().await.unwrap();
    assert!(shot.starts_with(&[0x89, b'P', b'N', b'G']));
    std::fs::create_dir_all("docs").unwrap();
    std::fs::write("docs/console.png", &shot).unwrap();
    let _ = c.close().await;
}
