//! Prometheus metrics of the runtime, served at `/metrics`.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::qpien::QpienClient;

/// A label set with one `result` label.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// What happened.
    pub result: &'static str,
}

/// Every metric the runtime keeps.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Turns run, by result (`ok`, `error`).
    pub turns: Family<ResultLabel, Counter>,
    /// Seconds from acceptance to the committed turn.
    pub turn_latency: Histogram,
    /// Seconds to acknowledge a webhook.
    pub ack_latency: Histogram,
    /// Webhook deliveries by result.
    pub webhooks: Family<ResultLabel, Counter>,
    /// Messages seen again (webhook redeliveries, polling overlaps).
    pub dedup_hits: Counter,
    /// Accepted items waiting for their turn.
    pub queue_depth: Gauge,
    /// Outbox items waiting for delivery.
    pub outbox_depth: Gauge,
    /// Outbox items delivered, by result (`sent`, `dropped`).
    pub deliveries: Family<ResultLabel, Counter>,
    /// Flow reloads by result (`ok`, `rejected`).
    pub reloads: Family<ResultLabel, Counter>,
    /// Signed webhook deliveries flowbot could not use (kept as dead letters).
    pub dead_letters: Counter,
    /// Handoffs Qpien refused for good (the bot stayed in service).
    pub handoff_failures: Counter,
    /// Conversations given back to the bot, by what ended the handoff
    /// (`agent_left`, `checked`, `timeout`, `manual`).
    pub releases: Family<ResultLabel, Counter>,
}

#[derive(Debug)]
struct ClientCollector(QpienClient);

impl Collector for ClientCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let s = self.0.stats();
        for (result, value) in [
            ("ok", s.ok),
            ("failed", s.failed),
            ("duplicate", s.duplicates),
        ] {
            let counter = ConstCounter::new(value);
            let mut family = encoder.encode_descriptor(
                "flowbot_qpien_calls",
                "Calls to the Qpien API, by result",
                None,
                counter.metric_type(),
            )?;
            counter.encode(family.encode_family(&ResultLabel { result })?)?;
        }
        for (name, help, value) in [
            (
                "flowbot_qpien_rate_limited",
                "HTTP 429 answers from Qpien",
                s.rate_limited,
            ),
            ("flowbot_qpien_retries", "Qpien requests retried", s.retries),
            (
                "flowbot_qpien_unknown_sender_types",
                "Messages whose senderType is not in qpien.sender_types",
                self.0.intake().unknown_senders(),
            ),
            (
                "flowbot_qpien_token_refreshes",
                "Qpien tokens obtained",
                s.token_refreshes,
            ),
        ] {
            let counter = ConstCounter::new(value);
            counter.encode(encoder.encode_descriptor(
                name,
                help,
                None,
                counter.metric_type(),
            )?)?;
        }
        Ok(())
    }
}

#[derive(Debug)]
struct UpCollector(Arc<AtomicI64>);

impl Collector for UpCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let gauge = ConstGauge::new(self.0.load(Ordering::Relaxed));
        gauge.encode(encoder.encode_descriptor(
            "flowbot_flow_version",
            "Fingerprint (low 52 bits) of the flow being run",
            None,
            gauge.metric_type(),
        )?)
    }
}

impl Metrics {
    /// Registers everything, with the client's counters read at each scrape.
    pub fn new(client: QpienClient, flow_version: Arc<AtomicI64>) -> Metrics {
        let mut registry = Registry::default();
        let latency = || Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        let m = Metrics {
            turns: Family::default(),
            turn_latency: latency(),
            ack_latency: latency(),
            webhooks: Family::default(),
            dedup_hits: Counter::default(),
            queue_depth: Gauge::default(),
            outbox_depth: Gauge::default(),
            deliveries: Family::default(),
            reloads: Family::default(),
            dead_letters: Counter::default(),
            handoff_failures: Counter::default(),
            releases: Family::default(),
            registry: Registry::default(),
        };
        registry.register("flowbot_turns", "Turns run, by result", m.turns.clone());
        registry.register(
            "flowbot_turn_latency_seconds",
            "Seconds from acceptance to the committed turn",
            m.turn_latency.clone(),
        );
        registry.register(
            "flowbot_webhook_ack_seconds",
            "Seconds to acknowledge a webhook delivery",
            m.ack_latency.clone(),
        );
        registry.register(
            "flowbot_webhooks",
            "Webhook deliveries, by result",
            m.webhooks.clone(),
        );
        registry.register(
            "flowbot_dedup_hits",
            "Messages seen again and not processed twice",
            m.dedup_hits.clone(),
        );
        registry.register(
            "flowbot_queue_depth",
            "Accepted messages waiting for their turn",
            m.queue_depth.clone(),
        );
        registry.register(
            "flowbot_outbox_depth",
            "Replies waiting for delivery",
            m.outbox_depth.clone(),
        );
        registry.register(
            "flowbot_deliveries",
            "Outbox items delivered, by result",
            m.deliveries.clone(),
        );
        registry.register(
            "flowbot_reloads",
            "Flow reloads, by result",
            m.reloads.clone(),
        );
        registry.register(
            "flowbot_dead_letters",
            "Signed webhook deliveries that could not be used, kept as dead letters",
            m.dead_letters.clone(),
        );
        registry.register(
            "flowbot_handoff_failures",
            "Handoffs Qpien refused for good",
            m.handoff_failures.clone(),
        );
        registry.register(
            "flowbot_releases",
            "Handoffs ended, by what ended them",
            m.releases.clone(),
        );
        registry.register_collector(Box::new(ClientCollector(client)));
        registry.register_collector(Box::new(UpCollector(flow_version)));
        Metrics { registry, ..m }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Counts one result in a family.
    pub fn count(family: &Family<ResultLabel, Counter>, result: &'static str) {
        family.get_or_create(&ResultLabel { result }).inc();
    }
}
