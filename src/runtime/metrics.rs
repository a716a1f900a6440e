//! Prometheus metrics of the runtime, served at `/metrics`.
//!
//! One [`MetricSet`] per process registers each family once; each bot holds
//! [`Metrics`], handles on the series of its `bot` label (none for the one
//! bot of a single-bot process).

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabel, EncodeLabelSet, EncodeMetric, LabelSetEncoder,
};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::qpien::QpienClient;

/// Which bot a series belongs to: no label at all for the one bot of a
/// single-bot process (so its series read as they always have), `bot="name"`
/// for each bot of a process that runs several.
#[derive(Debug, Clone, Default, Hash, PartialEq, Eq)]
pub(crate) struct BotLabel(Option<Arc<str>>);

impl BotLabel {
    /// The label of a named bot (`None`: the single bot).
    pub(crate) fn new(name: Option<&str>) -> BotLabel {
        BotLabel(name.map(Arc::from))
    }
}

impl EncodeLabelSet for BotLabel {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> Result<(), std::fmt::Error> {
        match &self.0 {
            Some(name) => ("bot", name.as_ref()).encode(encoder.encode_label()),
            None => Ok(()),
        }
    }
}

/// A label set with one `result` label.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ResultLabel {
    /// What happened.
    pub(crate) result: &'static str,
}

type ByResult = Family<(BotLabel, ResultLabel), Counter>;

/// A label set with one `kind` label (what the retention sweep removed).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct KindLabel {
    /// `sessions`, `dead_letters`, `events`, `captures`.
    pub(crate) kind: &'static str,
}

type ByKind = Family<(BotLabel, KindLabel), Counter>;

/// Rows and files removed by the retention sweep, for one bot.
#[derive(Debug, Clone)]
pub struct Removed {
    bot: BotLabel,
    family: ByKind,
}

impl Removed {
    /// Counts `n` of `kind` removed.
    pub(crate) fn add(&self, kind: &'static str, n: u64) {
        self.family
            .get_or_create(&(self.bot.clone(), KindLabel { kind }))
            .inc_by(n);
    }
}

/// A label set naming a split (its state) and the variant taken.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct SplitLabel {
    /// The state that splits.
    pub(crate) split: String,
    /// The variant's state.
    pub(crate) variant: String,
}

type BySplit = Family<(BotLabel, SplitLabel), Counter>;

/// A label set naming a classifier and what it answered.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ClassifyLabel {
    /// `builtin`, `llm`, or a registered classifier's name.
    pub(crate) classifier: String,
    /// `intent`, `not_sure`, `invalid`, `cached`, `timeout`, ...
    pub(crate) result: &'static str,
}

/// A label set naming a classifier.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ClassifierLabel {
    pub(crate) classifier: String,
}

type ByClassify = Family<(BotLabel, ClassifyLabel), Counter>;
type ClassifyLatency = Family<(BotLabel, ClassifierLabel), Histogram, fn() -> Histogram>;

/// Messages classified, for one bot.
#[derive(Debug, Clone)]
pub struct Classifications {
    bot: BotLabel,
    counts: ByClassify,
    seconds: ClassifyLatency,
    /// With `server.debug`, each conversation's last classified message,
    /// for `/debug/conversations/{id}` (the playground shows it).
    pub(crate) recent: Option<Arc<Recent>>,
}

/// The last classification of the most recent conversations (a bounded
/// record, oldest out first).
#[derive(Debug, Default)]
pub(crate) struct Recent(std::sync::Mutex<indexmap::IndexMap<String, crate::engine::Classified>>);

impl Recent {
    /// Conversations remembered.
    const MAX: usize = 1_000;

    pub(crate) fn note(&self, conversation: &str, c: &crate::engine::Classified) {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        m.shift_remove(conversation);
        if m.len() >= Self::MAX {
            m.shift_remove_index(0);
        }
        m.insert(conversation.to_owned(), c.clone());
    }

    pub(crate) fn get(&self, conversation: &str) -> Option<crate::engine::Classified> {
        let m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        m.get(conversation).cloned()
    }
}

impl Classifications {
    /// Forgets a conversation's last classification (it was erased).
    pub(crate) fn forget(&self, conversation: &str) {
        if let Some(r) = &self.recent {
            r.0.lock()
                .unwrap_or_else(|e| e.into_inner())
                .shift_remove(conversation);
        }
    }

    /// Counts one answer of `classifier`, which took `seconds` (when
    /// timed: the built-in classifier's microseconds are not).
    pub fn count(&self, classifier: &str, result: &'static str, seconds: Option<f64>) {
        self.counts
            .get_or_create(&(
                self.bot.clone(),
                ClassifyLabel {
                    classifier: classifier.to_owned(),
                    result,
                },
            ))
            .inc();
        if let Some(seconds) = seconds {
            self.seconds
                .get_or_create(&(
                    self.bot.clone(),
                    ClassifierLabel {
                        classifier: classifier.to_owned(),
                    },
                ))
                .observe(seconds);
        }
    }

    /// Who a turn runs for, as a registered classifier sees it: this bot,
    /// its calls counted here.
    pub(crate) fn caller(&self) -> crate::nlu::Caller {
        let me = self.clone();
        crate::nlu::Caller {
            bot: self.bot.0.clone().unwrap_or_else(|| Arc::from("")),
            record: Arc::new(move |classifier, result, seconds| {
                me.count(classifier, result, Some(seconds))
            }),
        }
    }
}

/// A/B splits taken, for one bot.
#[derive(Debug, Clone)]
pub struct Splits {
    bot: BotLabel,
    family: BySplit,
}

impl Splits {
    /// Counts a conversation sent to `variant` by the split in `split`.
    pub fn count(&self, split: &str, variant: &str) {
        self.family
            .get_or_create(&(
                self.bot.clone(),
                SplitLabel {
                    split: split.to_owned(),
                    variant: variant.to_owned(),
                },
            ))
            .inc();
    }
}

/// A counter by result, for one bot.
#[derive(Debug, Clone)]
pub struct Results {
    bot: BotLabel,
    family: ByResult,
}

impl Results {
    /// How many of `result` were counted.
    pub fn get(&self, result: &'static str) -> u64 {
        self.family
            .get_or_create(&(self.bot.clone(), ResultLabel { result }))
            .get()
    }

    /// Counts one `result`.
    pub fn count(&self, result: &'static str) {
        self.family
            .get_or_create(&(self.bot.clone(), ResultLabel { result }))
            .inc();
    }
}

/// The metrics of one bot: handles on the process's series that carry its
/// label (one registry per process describes each family once).
#[derive(Debug, Clone)]
pub struct Metrics {
    /// Turns run, by result (`ok`, `error`).
    pub turns: Results,
    /// Seconds from acceptance to the committed turn.
    pub turn_latency: Histogram,
    /// Seconds to acknowledge a webhook.
    pub ack_latency: Histogram,
    /// Webhook deliveries by result.
    pub webhooks: Results,
    /// Messages written by how (`with_turn`: run at once, written with their
    /// turn's commit; `alone`: written before their turn).
    pub acceptances: Results,
    /// Messages seen again (webhook redeliveries, polling overlaps).
    pub dedup_hits: Counter,
    /// Accepted items waiting for their turn.
    pub queue_depth: Gauge,
    /// Outbox items waiting for delivery.
    pub outbox_depth: Gauge,
    /// Outbox items delivered, by result (`sent`, `dropped`, `reconciled`,
    /// `outside_window`, `left`: to the instance that took its conversation over).
    pub deliveries: Results,
    /// Flow reloads by result (`ok`, `rejected`).
    pub reloads: Results,
    /// Signed webhook deliveries flowbot could not use (kept as dead letters).
    pub dead_letters: Counter,
    /// Handoffs Qpien refused for good (the bot stayed in service).
    pub handoff_failures: Counter,
    /// Free-form messages not sent because WhatsApp's 24-hour window was
    /// closed (and no template took their place).
    pub withheld: Counter,
    /// Messages set aside because their conversation had
    /// `runtime.max_pending_per_conversation` turns and replies waiting.
    pub overflow: Counter,
    /// Schedule firings that sent nothing because the conversation's
    /// messages of the one before were still queued.
    pub schedule_coalesced: Counter,
    /// A/B splits taken, by split and variant.
    pub splits: Splits,
    /// Conversations given back to the bot, by what ended the handoff
    /// (`agent_left`, `checked`, `timeout`, `manual`).
    pub releases: Results,
    /// Messages classified, by classifier and result.
    pub classify: Classifications,
    /// What the retention sweep removed, by kind.
    pub retention_deleted: Removed,
}

/// What the process-wide collectors read of each bot at a scrape.
#[derive(Debug, Clone)]
pub(crate) struct Watched {
    /// The bot's label.
    pub(crate) bot: BotLabel,
    /// Its Qpien client (calls, 429s, retries, tokens).
    pub(crate) client: QpienClient,
    /// Its flow's version.
    pub(crate) flow_version: Arc<AtomicI64>,
}

/// Every series of the process, each family registered once, with one
/// series per bot: Prometheus refuses a family described twice, which is what
/// one sub-registry per bot would write.
#[derive(Debug)]
pub(crate) struct MetricSet {
    registry: Registry,
    turns: ByResult,
    webhooks: ByResult,
    acceptances: ByResult,
    deliveries: ByResult,
    reloads: ByResult,
    releases: ByResult,
    retention: ByKind,
    turn_latency: Family<BotLabel, Histogram, fn() -> Histogram>,
    ack_latency: Family<BotLabel, Histogram, fn() -> Histogram>,
    dedup_hits: Family<BotLabel, Counter>,
    queue_depth: Family<BotLabel, Gauge>,
    outbox_depth: Family<BotLabel, Gauge>,
    dead_letters: Family<BotLabel, Counter>,
    handoff_failures: Family<BotLabel, Counter>,
    withheld: Family<BotLabel, Counter>,
    overflow: Family<BotLabel, Counter>,
    schedule_coalesced: Family<BotLabel, Counter>,
    splits: BySplit,
    classify: ByClassify,
    classify_seconds: ClassifyLatency,
    /// The bots whose clients and flows are read at each scrape.
    watched: Arc<std::sync::RwLock<indexmap::IndexMap<BotLabel, Watched>>>,
}

fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

#[derive(Debug)]
struct BotsCollector(Arc<std::sync::RwLock<indexmap::IndexMap<BotLabel, Watched>>>);

impl Collector for BotsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let watched: Vec<Watched> = self
            .0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        let stats: Vec<_> = watched.iter().map(|w| (w, w.client.stats())).collect();
        {
            let mut family = encoder.encode_descriptor(
                "flowbot_qpien_calls",
                "Calls to the Qpien API, by result",
                None,
                prometheus_client::metrics::MetricType::Counter,
            )?;
            for (w, s) in &stats {
                for (result, value) in [
                    ("ok", s.ok),
                    ("failed", s.failed),
                    ("duplicate", s.duplicates),
                ] {
                    ConstCounter::new(value)
                        .encode(family.encode_family(&(w.bot.clone(), ResultLabel { result }))?)?;
                }
            }
        }
        type Read = fn(&Watched, &crate::qpien::ClientStats) -> u64;
        let counters: [(&str, &str, Read); 5] = [
            (
                "flowbot_qpien_rate_limited",
                "HTTP 429 answers from Qpien",
                |_, s| s.rate_limited,
            ),
            ("flowbot_qpien_retries", "Qpien requests retried", |_, s| {
                s.retries
            }),
            (
                "flowbot_qpien_batched_replies",
                "Replies sent to Qpien in one request with others",
                |_, s| s.batched,
            ),
            (
                "flowbot_qpien_unknown_sender_types",
                "Messages whose senderType is not in qpien.sender_types",
                |w, _| w.client.intake().unknown_senders(),
            ),
            (
                "flowbot_qpien_token_refreshes",
                "Qpien tokens obtained",
                |_, s| s.token_refreshes,
            ),
        ];
        for (name, help, read) in counters {
            let mut family = encoder.encode_descriptor(
                name,
                help,
                None,
                prometheus_client::metrics::MetricType::Counter,
            )?;
            for (w, s) in &stats {
                ConstCounter::new(read(w, s)).encode(family.encode_family(&w.bot)?)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "flowbot_flow_version",
            "Fingerprint (low 52 bits) of the flow being run",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for w in &watched {
            ConstGauge::new(w.flow_version.load(Ordering::Relaxed))
                .encode(family.encode_family(&w.bot)?)?;
        }
        Ok(())
    }
}

/// The process's compiled flows (`flows.rs`), read at each scrape.
#[derive(Debug)]
struct FlowsCollector(Arc<super::flows::Flows>);

impl Collector for FlowsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        use prometheus_client::metrics::MetricType;
        let s = self.0.stats();
        for (name, help, value) in [
            (
                "flowbot_flow_cache_flows",
                "Compiled flows held by the process",
                s.flows as i64,
            ),
            (
                "flowbot_flow_cache_bytes",
                "Estimated bytes of the compiled flows held (runtime.flow_cache_bytes bounds it)",
                s.bytes as i64,
            ),
        ] {
            ConstGauge::new(value).encode(encoder.encode_descriptor(
                name,
                help,
                None,
                MetricType::Gauge,
            )?)?;
        }
        for (name, help, value) in [
            (
                "flowbot_flows_compiled",
                "Flows compiled (first use, a reload, or again after the cache dropped them)",
                s.compiled,
            ),
            (
                "flowbot_flows_evicted",
                "Compiled flows dropped to keep to runtime.flow_cache_bytes",
                s.evicted,
            ),
        ] {
            ConstCounter::new(value).encode(encoder.encode_descriptor(
                name,
                help,
                None,
                MetricType::Counter,
            )?)?;
        }
        Ok(())
    }
}

impl MetricSet {
    /// Registers every family, with the bots' clients and flow versions and
    /// the process's compiled flows read at each scrape.
    pub(crate) fn new(flows: Arc<super::flows::Flows>) -> MetricSet {
        let mut registry = Registry::default();
        let watched: Arc<std::sync::RwLock<indexmap::IndexMap<BotLabel, Watched>>> =
            Default::default();
        let m = MetricSet {
            registry: Registry::default(),
            turns: Family::default(),
            webhooks: Family::default(),
            acceptances: Family::default(),
            deliveries: Family::default(),
            reloads: Family::default(),
            releases: Family::default(),
            retention: Family::default(),
            turn_latency: Family::new_with_constructor(latency),
            ack_latency: Family::new_with_constructor(latency),
            dedup_hits: Family::default(),
            queue_depth: Family::default(),
            outbox_depth: Family::default(),
            dead_letters: Family::default(),
            handoff_failures: Family::default(),
            withheld: Family::default(),
            overflow: Family::default(),
            schedule_coalesced: Family::default(),
            splits: Family::default(),
            classify: Family::default(),
            classify_seconds: Family::new_with_constructor(latency),
            watched: watched.clone(),
        };
        registry.register("flowbot_turns", "Turns run, by result", m.turns.clone());
        registry.register(
            "flowbot_retention_deleted",
            "Rows and files removed by the retention sweep, by kind",
            m.retention.clone(),
        );
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
            "flowbot_acceptances",
            "Messages written, by how: with their turn's commit (run at once) or alone",
            m.acceptances.clone(),
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
            "flowbot_window_withheld",
            "Free-form WhatsApp messages not sent: the 24-hour window was closed",
            m.withheld.clone(),
        );
        registry.register(
            "flowbot_conversation_overflow",
            "Messages set aside as dead letters: their conversation had too many turns and replies waiting",
            m.overflow.clone(),
        );
        registry.register(
            "flowbot_split",
            "Conversations sent to a variant by an A/B split (`split:`), by split and variant",
            m.splits.clone(),
        );
        registry.register(
            "flowbot_schedule_coalesced",
            "Schedule firings that sent nothing: the conversation's messages of the firing before were still queued",
            m.schedule_coalesced.clone(),
        );
        registry.register(
            "flowbot_releases",
            "Handoffs ended, by what ended them",
            m.releases.clone(),
        );
        registry.register(
            "flowbot_classify",
            "Messages classified, by classifier (`builtin`, `llm`, ...) and result",
            m.classify.clone(),
        );
        registry.register(
            "flowbot_classify_seconds",
            "Seconds a classifier took to answer",
            m.classify_seconds.clone(),
        );
        registry.register_collector(Box::new(BotsCollector(watched.clone())));
        registry.register_collector(Box::new(FlowsCollector(flows)));
        MetricSet { registry, ..m }
    }

    /// Reads `bot`'s client and flow at each scrape from now on.
    pub(crate) fn watch(&self, bot: Watched) {
        self.watched
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(bot.bot.clone(), bot);
    }

    /// Forgets a bot taken out of the process: its series go.
    pub(crate) fn unwatch(&self, bot: &BotLabel) {
        self.watched
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .shift_remove(bot);
    }

    /// The handles of one bot.
    pub(crate) fn bot(&self, bot: &BotLabel) -> Metrics {
        let results = |family: &ByResult| Results {
            bot: bot.clone(),
            family: family.clone(),
        };
        Metrics {
            turns: results(&self.turns),
            webhooks: results(&self.webhooks),
            acceptances: results(&self.acceptances),
            deliveries: results(&self.deliveries),
            reloads: results(&self.reloads),
            releases: results(&self.releases),
            retention_deleted: Removed {
                bot: bot.clone(),
                family: self.retention.clone(),
            },
            turn_latency: self.turn_latency.get_or_create(bot).clone(),
            ack_latency: self.ack_latency.get_or_create(bot).clone(),
            dedup_hits: self.dedup_hits.get_or_create(bot).clone(),
            queue_depth: self.queue_depth.get_or_create(bot).clone(),
            outbox_depth: self.outbox_depth.get_or_create(bot).clone(),
            dead_letters: self.dead_letters.get_or_create(bot).clone(),
            handoff_failures: self.handoff_failures.get_or_create(bot).clone(),
            withheld: self.withheld.get_or_create(bot).clone(),
            overflow: self.overflow.get_or_create(bot).clone(),
            schedule_coalesced: self.schedule_coalesced.get_or_create(bot).clone(),
            splits: Splits {
                bot: bot.clone(),
                family: self.splits.clone(),
            },
            classify: Classifications {
                bot: bot.clone(),
                counts: self.classify.clone(),
                seconds: self.classify_seconds.clone(),
                recent: None,
            },
        }
    }

    /// The text exposition format.
    pub(crate) fn render(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
