//! The playground in headless Chromium, driven over WebDriver: open the page,
//! start a conversation, tap a quick reply, pick a list row, see the bot's
//! answers and its state, and take a screenshot (`docs/playground.png`).
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

/// Types into the composer (once it is enabled) and presses send.
async fn type_and_send(c: &fantoccini::Client, text: &str) {
    c.wait()
        .for_element(Locator::Css("[data-testid=composer-input]:enabled"))
        .await
        .unwrap()
        .send_keys(text)
        .await
        .unwrap();
    c.find(Locator::Css("[data-testid=send]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs chromium and chromedriver; .ci/run runs it"]
async fn browser_playground_in_headless_chromium() {
    let chromedriver = std::env::var("CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into());
    let port = free_port();
    let _driver = Driver(
        Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {chromedriver}: {e}")),
    );
    let demo = flowbot::internals::cli::Demo::start(
        std::path::Path::new("flows/support.yaml"),
        "127.0.0.1:0".parse().unwrap(),
        crate::support_bot::registry(),
    )
    .await
    .unwrap();

    let mut caps = serde_json::Map::new();
    let mut chrome = serde_json::json!({"args": [
        "--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
        "--window-size=1400,900"
    ]});
    if let Ok(bin) = std::env::var("CHROMIUM") {
        chrome["binary"] = serde_json::json!(bin);
    }
    caps.insert("goog:chromeOptions".into(), chrome);
    let mut client = None;
    for _ in 0..50 {
        match ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps.clone())
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
        {
            Ok(c) => {
                client = Some(c);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    let c = client.expect("chromedriver did not answer");

    c.goto(&demo.sim.url()).await.unwrap();
    c.find(Locator::Css("[data-testid=new-conversation]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    type_and_send(&c, "hello").await;
    wait_for_text(&c, "[data-testid=messages]", "Hi! How can we help?")
        .await
        .unwrap();
    // Tap a quick reply, as on WhatsApp.
    c.wait()
        .for_element(Locator::Css("[data-testid=quick-reply-orders]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
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
    c.wait()
        .for_element(Locator::Css("[data-testid=list-open]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    // The graph is drawn with the current state highlighted, before the pick.
    let graph = c.find(Locator::Css("[data-testid=graph] svg")).await;
    assert!(graph.is_ok(), "the flow graph is rendered");
    let shot = c.screenshot().await.unwrap();
    c.find(Locator::Css("[data-testid=list-row-track]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
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
