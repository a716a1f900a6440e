//! Webhook delivery, as Qpien does it: POST with `X-Qpien-Signature` (hex
//! HMAC-SHA256 of the body under the webhook secret); anything but 200 is
//! retried with exponential backoff. Deliveries go out one at a time, in the
//! order the events happened, so a failing delivery holds back later ones
//! rather than letting them overtake it.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::mpsc::UnboundedReceiver;
use tokio::sync::watch;

use super::state::SimState;
use crate::qpien::webhook::{sign, SIGNATURE_HEADER, SIMULATOR_HEADER};

pub(crate) async fn run(
    sim: Arc<SimState>,
    mut queue: UnboundedReceiver<Vec<u8>>,
    mut stopping: watch::Receiver<bool>,
) {
    let http = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(10))
        .build()
        .unwrap_or_default();
    loop {
        let body = tokio::select! {
            b = queue.recv() => match b { Some(b) => b, None => return },
            _ = stopping.wait_for(|s| *s) => return,
        };
        let config = sim.config();
        let Some(url) = config.webhook_url.clone() else {
            continue;
        };
        let signature = sign(config.webhook_secret.as_bytes(), &body);
        let twice = sim.roll(config.faults.duplicate_webhooks);
        let mut delay = config.webhook_retry_delay;
        let mut attempt = 0;
        let deliver = || {
            http.post(&url)
                .header("content-type", "application/json")
                .header(SIGNATURE_HEADER, &signature)
                .header(SIMULATOR_HEADER, "1")
                .body(body.clone())
                .send()
        };
        loop {
            attempt += 1;
            let sent = deliver().await;
            match sent {
                Ok(r) if r.status().as_u16() == 200 => {
                    sim.counters
                        .webhooks_delivered
                        .fetch_add(1, Ordering::Relaxed);
                    if twice {
                        // The injected duplicate: its answer does not matter.
                        let _ = deliver().await;
                    }
                    break;
                }
                other => {
                    sim.counters
                        .webhook_failures
                        .fetch_add(1, Ordering::Relaxed);
                    let why = match other {
                        Ok(r) => format!("HTTP {}", r.status()),
                        Err(e) => e.to_string(),
                    };
                    if attempt >= config.webhook_attempts {
                        tracing::warn!(%why, attempt, "webhook given up");
                        break;
                    }
                    tracing::debug!(%why, attempt, ?delay, "webhook failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = stopping.wait_for(|s| *s) => return,
                    }
                    delay *= 2;
                }
            }
        }
    }
}
