//! The configuration of `flowbot run`: one TOML file plus `FLOWBOT_...`
//! environment variables, layered with `figment`.
//!
//! Every key has a default; the file sets what differs; an environment variable
//! overrides the file, with `__` between the levels:
//! `FLOWBOT_QPIEN__CLIENT_ID`, `FLOWBOT_SERVER__LISTEN`, `FLOWBOT_STORE__PATH`.
//! Secrets (`qpien.client_id`, `qpien.client_secret`, `server.webhook_secret`)
//! are refused in the file: they come from the environment or from a file named
//! by `<key>_file` (a mounted secret). Errors name the key and where its value
//! came from.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Toml};
use figment::Figment;
use serde::Deserialize;

use crate::flow::FlowLimits;
use crate::qpien::{QpienConfig, Secret};

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The flow file the bot runs.
    pub flow: PathBuf,
    /// How to reach Qpien.
    pub qpien: QpienConfig,
    /// Where webhooks and probes are served.
    pub server: ServerConfig,
    /// Where conversations are kept.
    pub store: StoreConfig,
    /// Reading new messages by polling, for deployments without a public URL.
    pub polling: PollingConfig,
    /// Queues, shutdown, reload and timers.
    pub runtime: RuntimeConfig,
    /// How a handoff is watched.
    pub handoff: HandoffConfig,
    /// Logging.
    pub log: LogConfig,
    /// How large a flow's files and how costly its templates may be.
    pub limits: FlowLimits,
    /// What flows' `http:` steps may call, and where their secrets are.
    pub http: crate::fetch::HttpConfig,
    /// Understanding free text: `[nlu.llm]`, an LLM asked before each
    /// flow's built-in classifier.
    pub nlu: NluConfig,
    /// The conversation event log that reports read (`[insights]`).
    pub insights: InsightsConfig,
    /// How long each kind of data is kept (`[retention]`).
    pub retention: RetentionConfig,
    /// Several bots in this process (`[[bots]]`), each with its own flow,
    /// Qpien account, webhook and store namespace; empty: the one bot that
    /// `flow`, `qpien` and `server.webhook_*` describe.
    pub bots: Vec<BotConfig>,
    /// The clock turns, timers and WhatsApp's window are read by (the
    /// system's; a test gives a [`crate::ManualClock`] to cross hours at once).
    #[serde(skip)]
    #[doc(hidden)]
    pub clock: crate::time::ClockHandle,
    /// The top-level `[qpien]` as given (file and environment), which a
    /// registered bot's own `qpien` keys go over.
    #[serde(skip)]
    #[doc(hidden)]
    pub qpien_source: Option<serde_json::Value>,
}

/// `[nlu]`: how free text is understood beyond each flow's examples.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NluConfig {
    /// An OpenAI-compatible chat endpoint asked for intents first (the
    /// `llm` feature); the built-in classifier answers when it cannot.
    pub llm: Option<crate::nlu::llm::LlmConfig>,
}

/// `[insights]`: the conversation event log (see `flowbot report`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InsightsConfig {
    /// Write each turn's events (what happened, never what was written).
    pub log: bool,
    /// Every conversation of this process is test traffic (a bot pointed at
    /// `flowbot sim`): reports leave it out unless asked for. `flowbot demo`
    /// sets it.
    pub test_traffic: bool,
}

impl Default for InsightsConfig {
    fn default() -> Self {
        InsightsConfig {
            log: true,
            test_traffic: false,
        }
    }
}

/// `[retention]`: how long each kind of data is kept, then removed by a
/// sweep in bounded batches (`flowbot retention --dry-run` says what would
/// go). A message's text is not kept past its turn (the inbox keeps its key
/// for 7 days against redeliveries), and a reply leaves the outbox once
/// delivered.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionConfig {
    /// A conversation untouched this long is removed with its variables
    /// (one with a timer or schedule still to come stays until it is past).
    #[serde(with = "humantime_serde")]
    pub sessions: Duration,
    /// Deliveries set aside (they hold what customers wrote).
    #[serde(with = "humantime_serde")]
    pub dead_letters: Duration,
    /// The conversation event log (no text; the conversation as a keyed
    /// hash; answers that are not `pii`): runs that started this long ago
    /// are folded into hourly roll-ups, then their rows go.
    #[serde(with = "humantime_serde")]
    pub events: Duration,
    /// The hourly roll-ups (counts of runs per state, outcome and answer;
    /// nothing personal), which reports read once the rows are gone.
    #[serde(with = "humantime_serde")]
    pub rollups: Duration,
    /// Files of `server.capture_dir` (whole deliveries).
    #[serde(with = "humantime_serde")]
    pub captures: Duration,
    /// How often the sweep runs (`0s`: never; `flowbot retention` still works).
    #[serde(with = "humantime_serde")]
    pub every: Duration,
    /// The most rows one delete removes (the sweep repeats until none is
    /// left), so that a busy store is never locked for long.
    pub batch: usize,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        const DAY: u64 = 24 * 3600;
        RetentionConfig {
            sessions: Duration::from_secs(30 * DAY),
            dead_letters: Duration::from_secs(30 * DAY),
            events: Duration::from_secs(90 * DAY),
            rollups: Duration::from_secs(730 * DAY),
            captures: Duration::from_secs(7 * DAY),
            every: Duration::from_secs(600),
            batch: 1_000,
        }
    }
}

/// One bot of a process that runs several (`[[bots]]` in `flowbot.toml`).
///
/// Its `qpien` table is the top-level `[qpien]` with the bot's own keys over
/// it; its secrets come from `FLOWBOT_BOTS__<NAME>__QPIEN__CLIENT_ID`,
/// `..._CLIENT_SECRET` and `FLOWBOT_BOTS__<NAME>__WEBHOOK_SECRET` (the name in
/// capitals, `-` as `_`), or from `*_file` keys, never from the file itself.
/// Everything else (`server`, `store`, `runtime`, `polling`, `handoff`,
/// `limits`) is the process's, each bot with queues, claims and timers of its
/// own.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BotConfig {
    /// The bot's name: its `bot` label in metrics and logs, and its paths
    /// (`/bots/<name>/...`). Lowercase letters, digits, `-` and `_`.
    pub name: String,
    /// The flow file it runs.
    pub flow: PathBuf,
    /// How it reaches Qpien (over the top-level `[qpien]`).
    pub qpien: QpienConfig,
    /// The path Qpien posts its webhooks to (default `/bots/<name>/webhook`).
    pub webhook_path: Option<String>,
    /// Its webhook secret (default: `server.webhook_secret`).
    pub webhook_secret: Secret,
    /// A file holding its webhook secret.
    pub webhook_secret_file: Option<PathBuf>,
    /// Where its conversations are kept apart from the other bots' (default:
    /// its name, `-` as `_`): the SQLite file `<store.path stem>.<ns>.db`, the
    /// PostgreSQL schema `<store.schema>_<ns>`.
    pub store_namespace: Option<String>,
    /// The entry as written (no secrets: the file may not hold them), kept
    /// as its registry row's specification.
    #[serde(skip)]
    #[doc(hidden)]
    pub spec: Option<serde_json::Value>,
}

impl BotConfig {
    /// Reads the secrets its `*_file` keys name (`at` names it in errors).
    fn read_secret_files(&mut self, at: &str) -> Result<(), ConfigError> {
        for (key, path, secret) in [
            (
                "qpien.client_id",
                self.qpien.client_id_file.clone(),
                &mut self.qpien.client_id,
            ),
            (
                "qpien.client_secret",
                self.qpien.client_secret_file.clone(),
                &mut self.qpien.client_secret,
            ),
            (
                "webhook_secret",
                self.webhook_secret_file.clone(),
                &mut self.webhook_secret,
            ),
        ] {
            if let Some(path) = path {
                *secret = std::fs::read_to_string(&path)
                    .map(|s| Secret::new(s.trim()))
                    .map_err(|e| ConfigError::SecretFile {
                        key: format!("{at}.{key}"),
                        path: path.clone(),
                        message: e.to_string(),
                    })?;
            }
        }
        Ok(())
    }

    /// Its webhook path.
    pub fn webhook_path(&self) -> String {
        self.webhook_path
            .clone()
            .unwrap_or_else(|| format!("/bots/{}/webhook", self.name))
    }

    /// Its store namespace.
    pub fn store_namespace(&self) -> String {
        self.store_namespace
            .clone()
            .unwrap_or_else(|| self.name.replace('-', "_"))
    }
}

/// How flowbot learns that a handed-off conversation is back: Qpien documents
/// no event for an agent leaving, so the conversation is read (`joinedCPerson`,
/// `status`) when the customer writes during a handoff.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HandoffConfig {
    /// At most one check per conversation this often (each costs one request
    /// of the budget).
    #[serde(with = "humantime_serde")]
    pub check_interval: Duration,
}

impl Default for HandoffConfig {
    fn default() -> Self {
        HandoffConfig {
            check_interval: Duration::from_secs(30),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            flow: PathBuf::from("flows/support.yaml"),
            qpien: QpienConfig::default(),
            server: ServerConfig::default(),
            store: StoreConfig::default(),
            polling: PollingConfig::default(),
            runtime: RuntimeConfig::default(),
            handoff: HandoffConfig::default(),
            log: LogConfig::default(),
            limits: FlowLimits::default(),
            http: Default::default(),
            nlu: Default::default(),
            insights: Default::default(),
            retention: Default::default(),
            bots: Vec::new(),
            clock: Default::default(),
            qpien_source: None,
        }
    }
}

/// The HTTP server: webhook, probes, metrics.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address and port to listen on.
    pub listen: SocketAddr,
    /// The path Qpien posts webhooks to.
    pub webhook_path: String,
    /// The webhook's HMAC secret (from the environment or `webhook_secret_file`).
    pub webhook_secret: Secret,
    /// A file holding the webhook secret.
    pub webhook_secret_file: Option<PathBuf>,
    /// Largest webhook body accepted (bytes); larger is refused with 413.
    pub max_body_bytes: usize,
    /// Whether the webhook endpoint is served at all.
    pub webhook: bool,
    /// Serve `/debug/flow` and `/debug/conversations/{id}` (the playground's
    /// side panel: states and variables, so never in production).
    pub debug: bool,
    /// The token of the admin endpoints (`POST /admin/conversations/{id}/release`,
    /// used by `flowbot release`), sent as `Authorization: Bearer <token>`;
    /// from the environment or `admin_token_file`. Unset: no admin endpoints.
    pub admin_token: Secret,
    /// A file holding the admin token.
    pub admin_token_file: Option<PathBuf>,
    /// A file holding the key that seals the credentials given through the
    /// admin API (`flowbot bots add`): 64 hex digits. `FLOWBOT_SECRET_KEY`
    /// takes precedence. Without either, the API accepts only references to
    /// credentials (`*_file`, the bot's environment variables).
    pub secret_key_file: Option<PathBuf>,
    /// The token of `POST /api/start` (the business starting conversations,
    /// used by `flowbot start`), sent as `Authorization: Bearer <token>`;
    /// from the environment or `api_token_file`. Unset: no such endpoint.
    pub api_token: Secret,
    /// A file holding the API token.
    pub api_token_file: Option<PathBuf>,
    /// Keep each verified delivery (body and headers, signature removed) in
    /// this folder, to learn the real shapes (`flowbot replay --capture`).
    pub capture_dir: Option<PathBuf>,
    /// Most bytes the capture folder holds: the oldest files go beyond it.
    pub capture_max_bytes: u64,
    /// Most connections open at once (kept below the open-file limit); more
    /// wait in the kernel's queue until one closes.
    pub max_connections: usize,
    /// How long a client may take to send a request's headers, and how long a
    /// kept-alive connection may stay idle between requests.
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    /// How long a client may take to send a request's body (then 408).
    #[serde(with = "humantime_serde")]
    pub body_timeout: Duration,
    /// How long a whole request may take, headers to answer (then 408).
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Most conversations `POST /api/start` starts for one customer (one
    /// conversation) in an hour; more are answered 429. 0: no limit.
    pub start_limit: u32,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            webhook_path: "/webhook".into(),
            webhook_secret: Secret::default(),
            webhook_secret_file: None,
            max_body_bytes: 256 * 1024,
            webhook: true,
            debug: false,
            admin_token: Secret::default(),
            admin_token_file: None,
            secret_key_file: None,
            api_token: Secret::default(),
            api_token_file: None,
            capture_dir: None,
            capture_max_bytes: 64 * 1024 * 1024,
            max_connections: 10_000,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            start_limit: 20,
        }
    }
}

/// Which store keeps sessions, the inbox and the outbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreBackend {
    /// SQLite in one file: durable, nothing to install (the default).
    #[default]
    Sqlite,
    /// In memory: lost on exit; for trials and tests.
    Memory,
    /// PostgreSQL (`store.url`): for several instances sharing one database
    /// (cargo feature `postgres`).
    Postgres,
}

/// The store.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// `sqlite`, `postgres` or `memory`.
    pub backend: StoreBackend,
    /// The PostgreSQL URL (`postgres://user@host/db`); a password in it is
    /// better given by the environment (`FLOWBOT_STORE__URL`) or `url_file`.
    pub url: Secret,
    /// A file holding the PostgreSQL URL.
    pub url_file: Option<PathBuf>,
    /// The PostgreSQL schema that holds flowbot's tables.
    pub schema: String,
    /// The SQLite database file.
    pub path: PathBuf,
    /// How long SQLite waits for a lock before failing.
    #[serde(with = "humantime_serde")]
    pub busy_timeout: Duration,
    /// Most turns committed in one transaction (group commit).
    pub max_batch: usize,
    /// `full` (a commit survives a power cut) or `normal` (it survives a crash
    /// of the process; faster).
    pub durability: crate::store::Durability,
    /// The most bytes the database may hold (none: as much as the disk has).
    /// At the limit writes fail as on a full disk: webhooks answer 503 (Qpien
    /// delivers again later) and `/readyz` says the store cannot write.
    pub max_bytes: Option<u64>,
    /// PostgreSQL: the most connections the process opens, whatever the
    /// number of bots (they share one pool; one more listens).
    pub max_connections: usize,
    /// The most bytes of sessions kept in memory in front of the store, so
    /// that a conversation's next turn reads no row (0: none). PostgreSQL
    /// keeps each with the claim it was committed under, and gives it back
    /// only to a turn under the same claim.
    pub session_cache_bytes: u64,
}

impl StoreConfig {
    /// How its SQLite file is opened.
    pub fn sqlite_options(&self) -> crate::store::SqliteOptions {
        crate::store::SqliteOptions {
            busy_timeout: self.busy_timeout,
            max_batch: self.max_batch,
            durability: self.durability,
            max_bytes: self.max_bytes,
            session_cache_bytes: self.session_cache_bytes,
        }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            backend: StoreBackend::Sqlite,
            url: Secret::default(),
            url_file: None,
            schema: "flowbot".into(),
            path: PathBuf::from("flowbot.db"),
            busy_timeout: Duration::from_secs(5),
            max_batch: 256,
            durability: crate::store::Durability::Full,
            max_bytes: None,
            max_connections: 16,
            session_cache_bytes: 32 << 20,
        }
    }
}

/// Polling Qpien for new messages.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PollingConfig {
    /// Whether to poll (it can run beside the webhook).
    pub enabled: bool,
    /// The pause between polls while messages keep coming.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// The longest pause when nothing comes (the pause doubles while idle).
    #[serde(with = "humantime_serde")]
    pub max_interval: Duration,
    /// Conversations read per poll.
    pub conversations: u32,
    /// Messages read per conversation per poll.
    pub page_size: u32,
    /// Only conversations of this status (ASSUMED values), or all.
    pub status: Option<String>,
}

impl Default for PollingConfig {
    fn default() -> Self {
        PollingConfig {
            enabled: false,
            interval: Duration::from_secs(2),
            max_interval: Duration::from_secs(30),
            conversations: 20,
            page_size: 20,
            status: None,
        }
    }
}

/// The dispatcher, shutdown, reload and timers.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Most accepted messages waiting for their turn, in all; beyond it the
    /// webhook answers 503 with `Retry-After`.
    pub queue_capacity: usize,
    /// How long shutdown may take to finish turns and flush the outbox.
    #[serde(with = "humantime_serde")]
    pub shutdown_deadline: Duration,
    /// Whether flow file changes are picked up while running.
    pub reload: bool,
    /// How often the flow file is checked for changes.
    #[serde(with = "humantime_serde")]
    pub reload_interval: Duration,
    /// How often inactivity timers are checked.
    #[serde(with = "humantime_serde")]
    pub timer_interval: Duration,
    /// Runs a message's turn may take when it panics or aborts the process;
    /// beyond, the message is set aside as a dead letter and the conversation
    /// goes on.
    pub max_turn_attempts: u32,
    /// Undelivered replies held in memory, in all; more wait in the store
    /// (during a Qpien outage, say) and are read back as these are delivered.
    pub outbox_in_memory: usize,
    /// Undelivered replies held in memory for one conversation.
    pub outbox_in_memory_per_conversation: usize,
    /// Most turns and replies one conversation may have waiting; a message
    /// beyond is acknowledged and set aside as a dead letter (counted in
    /// `flowbot_conversation_overflow_total`), so that one customer's flood
    /// grows nothing without bound.
    pub max_pending_per_conversation: usize,
    /// How long a webhook's acknowledgement may wait for the turn of a
    /// message whose conversation has nothing else under way, so that the
    /// message and its turn are written together (one write instead of two;
    /// SQLite). A turn that takes longer has its message written alone at
    /// this deadline, as every message is with `"0s"`.
    #[serde(with = "humantime_serde")]
    pub at_once_wait: Duration,
    /// With a shared store (PostgreSQL): how long an instance's claim on a
    /// conversation lasts without renewal, so how soon the others take over
    /// the conversations of an instance that stopped.
    #[serde(with = "humantime_serde")]
    pub claim_ttl: Duration,
    /// With several bots: how many of the busiest (by turns) the root
    /// `/metrics` shows one by one, beside the totals of all; every bot's own
    /// series are at `/bots/<name>/metrics`.
    pub metrics_top_bots: usize,
    /// Run the bots of the store's registry (added, changed, paused and
    /// removed with `flowbot bots ...` while the process runs) beside those
    /// of `[[bots]]`. On whenever `[[bots]]` is given; set it to run a
    /// process whose bots all come from the registry.
    pub registry: bool,
    /// With several bots: how many turns run at once in all (and as many
    /// replies are sent at once).
    pub workers: usize,
    /// With several bots: how many of the process's workers one bot may
    /// take at once, so that a bot flooded with traffic cannot delay the
    /// others (its backlog waits in its own queue).
    pub max_per_bot: usize,
    /// How often the registry is read for changes made by other instances
    /// (PostgreSQL also tells them at once, with `NOTIFY`).
    #[serde(with = "humantime_serde")]
    pub registry_interval: Duration,
    /// Most bytes of compiled flows kept, in all (an estimate: see
    /// `Flow::weight`). A flow is compiled when its bot first needs it and
    /// shared by every bot whose flow is the same; past this, the least
    /// recently used are dropped (never one a turn is using) and compiled
    /// again when next needed. A bot's flow texts stay in memory either way.
    pub flow_cache_bytes: u64,
    /// A Qpien token unused this long is dropped (fetched again when next
    /// needed), so that idle bots hold no credentials in memory.
    #[serde(with = "humantime_serde")]
    pub token_idle: Duration,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            queue_capacity: 10_000,
            shutdown_deadline: Duration::from_secs(10),
            reload: true,
            reload_interval: Duration::from_secs(1),
            timer_interval: Duration::from_secs(1),
            max_turn_attempts: 3,
            outbox_in_memory: 1_000,
            outbox_in_memory_per_conversation: 100,
            max_pending_per_conversation: 200,
            at_once_wait: Duration::from_millis(20),
            claim_ttl: Duration::from_secs(10),
            metrics_top_bots: 20,
            registry: false,
            workers: 512,
            max_per_bot: 32,
            registry_interval: Duration::from_secs(1),
            flow_cache_bytes: 256 << 20,
            token_idle: Duration::from_secs(15 * 60),
        }
    }
}

/// Log output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// How log lines name a conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogNames {
    /// By its keyed hash, the id the conversation event log gives it: the
    /// logs hold nothing that leads back to a customer, so an erasure leaves
    /// nothing of them there (`flowbot export` tells a contact's hash).
    #[default]
    Hashed,
    /// By Qpien's conversation id, for teams whose logs are kept no longer
    /// than the conversations themselves.
    Plain,
}

/// Logging.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `text` or `json`.
    pub format: LogFormat,
    /// A `tracing` filter (`info`, `flowbot=debug`...); `RUST_LOG` wins if set.
    pub level: String,
    /// `hashed` (the default) or `plain`: how a line names a conversation.
    pub conversations: LogNames,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: "info".into(),
            conversations: LogNames::Hashed,
        }
    }
}

/// A configuration that cannot be used, with the key and where it came from.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file named with `--config` is not there.
    #[error("config file {0} not found")]
    Missing(PathBuf),
    /// A key is unknown, of the wrong type, or has a bad value.
    #[error("{0}")]
    Invalid(String),
    /// A secret was written in the file.
    #[error("{key}: secrets are not read from {file}; set {env} or {key}_file")]
    SecretInFile {
        /// The key.
        key: String,
        /// The file.
        file: String,
        /// The environment variable to use instead.
        env: String,
    },
    /// A `*_file` secret could not be read.
    #[error("{key}_file: cannot read {path}: {message}")]
    SecretFile {
        /// The key.
        key: String,
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
}

/// The sections the `FLOWBOT_...` environment may set (a bot's own
/// variables, `FLOWBOT_BOTS__<NAME>__...`, are read for that bot).
const SECTIONS: [&str; 10] = [
    "flow", "qpien", "server", "store", "polling", "runtime", "handoff", "log", "limits", "http",
];

/// Secrets: the key, its environment variable, and whether a file form exists.
const SECRETS: [(&str, &str); 5] = [
    ("qpien.client_id", "FLOWBOT_QPIEN__CLIENT_ID"),
    ("qpien.client_secret", "FLOWBOT_QPIEN__CLIENT_SECRET"),
    ("server.webhook_secret", "FLOWBOT_SERVER__WEBHOOK_SECRET"),
    ("server.admin_token", "FLOWBOT_SERVER__ADMIN_TOKEN"),
    ("server.api_token", "FLOWBOT_SERVER__API_TOKEN"),
];

impl Config {
    /// Reads `file` (if given; it must exist) and the `FLOWBOT_...` environment.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        Config::load_from(file, Env::prefixed("FLOWBOT_"))
    }

    fn load_from(file: Option<&Path>, env: Env) -> Result<Config, ConfigError> {
        let mut figment = Figment::new();
        if let Some(file) = file {
            if !file.is_file() {
                return Err(ConfigError::Missing(file.to_path_buf()));
            }
            figment = figment.merge(Toml::file_exact(file));
        }
        let env = env.split("__").filter(|key| {
            let first = key.as_str().split(['.', '_']).next().unwrap_or("");
            SECTIONS.iter().any(|s| s.eq_ignore_ascii_case(first))
        });
        figment = figment.merge(env);
        for (key, env) in SECRETS {
            if let Some(meta) = figment.find_metadata(key) {
                if let Some(figment::Source::File(path)) = &meta.source {
                    return Err(ConfigError::SecretInFile {
                        key: key.into(),
                        file: path.display().to_string(),
                        env: env.into(),
                    });
                }
            }
        }
        let mut config: Config = figment.extract().map_err(|e| {
            ConfigError::Invalid(
                e.into_iter()
                    .map(|e| e.to_string().replace("key \"default.", "key \""))
                    .collect::<Vec<_>>()
                    .join("; "),
            )
        })?;
        let read = |key: &str, path: &Path| -> Result<Secret, ConfigError> {
            std::fs::read_to_string(path)
                .map(|s| Secret::new(s.trim()))
                .map_err(|e| ConfigError::SecretFile {
                    key: key.into(),
                    path: path.to_path_buf(),
                    message: e.to_string(),
                })
        };
        if let Some(path) = config.qpien.client_id_file.clone() {
            config.qpien.client_id = read("qpien.client_id", &path)?;
        }
        if let Some(path) = config.qpien.client_secret_file.clone() {
            config.qpien.client_secret = read("qpien.client_secret", &path)?;
        }
        if let Some(path) = config.server.webhook_secret_file.clone() {
            config.server.webhook_secret = read("server.webhook_secret", &path)?;
        }
        if let Some(path) = config.server.admin_token_file.clone() {
            config.server.admin_token = read("server.admin_token", &path)?;
        }
        if let Some(path) = config.server.api_token_file.clone() {
            config.server.api_token = read("server.api_token", &path)?;
        }
        if let Some(path) = config.store.url_file.clone() {
            config.store.url = read("store.url", &path)?;
        }
        if let Some(problem) = webhook_path_problem(&config.server.webhook_path, None) {
            return Err(ConfigError::Invalid(format!(
                "server.webhook_path: `{}` {problem}",
                crate::text::shorten(&config.server.webhook_path, 100)
            )));
        }
        config.qpien_source = figment
            .find_value("qpien")
            .ok()
            .and_then(|v| serde_json::to_value(v).ok());
        config.bots = Config::bots(&figment, &config, file.is_some())?;
        for bot in &mut config.bots {
            bot.read_secret_files(&format!("bots[{}]", bot.name))?;
        }
        // Relative paths in the file are relative to the file.
        if let Some(dir) = file.and_then(Path::parent) {
            for bot in &mut config.bots {
                if bot.flow.is_relative() && !dir.as_os_str().is_empty() {
                    bot.flow = dir.join(&bot.flow);
                }
                if let Some(d) = bot.qpien.documents_dir.as_mut() {
                    if d.is_relative() && !dir.as_os_str().is_empty() {
                        *d = dir.join(&*d);
                    }
                }
            }
            for p in [&mut config.flow, &mut config.store.path] {
                if p.is_relative() && !dir.as_os_str().is_empty() {
                    *p = dir.join(&*p);
                }
            }
            if let Some(d) = config.server.capture_dir.as_mut() {
                if d.is_relative() && !dir.as_os_str().is_empty() {
                    *d = dir.join(&*d);
                }
            }
            if let Some(d) = config.qpien.documents_dir.as_mut() {
                if d.is_relative() && !dir.as_os_str().is_empty() {
                    *d = dir.join(&*d);
                }
            }
        }
        Ok(config)
    }

    /// Each `[[bots]]` entry over the top-level `[qpien]`, with its own
    /// environment variables over both; checked: names, paths and
    /// namespaces unique, no secret in the file.
    fn bots(
        figment: &Figment,
        config: &Config,
        from_file: bool,
    ) -> Result<Vec<BotConfig>, ConfigError> {
        let Ok(figment::value::Value::Array(_, items)) = figment.find_value("bots") else {
            return Ok(Vec::new());
        };
        if figment.find_metadata("flow").is_some() && figment.find_value("flow").is_ok() {
            return Err(ConfigError::Invalid(
                "flow: with [[bots]], each bot names its flow (bots[].flow); remove the top-level `flow`"
                    .into(),
            ));
        }
        let top_qpien = figment.find_value("qpien").ok();
        let mut bots = Vec::with_capacity(items.len());
        let mut taken: std::collections::HashMap<(&str, String), usize> =
            std::collections::HashMap::with_capacity(items.len() * 3);
        for (i, (item, parsed)) in items.iter().zip(&config.bots).enumerate() {
            let name = parsed.name.clone();
            let at = format!(
                "bots[{}]",
                if name.is_empty() {
                    i.to_string()
                } else {
                    name.clone()
                }
            );
            if !is_bot_name(&name) {
                return Err(ConfigError::Invalid(format!(
                    "{at}.name: `{name}` must be 1 to 40 lowercase letters, digits, `-` or `_`, \
                     starting with a letter or digit"
                )));
            }
            let env_prefix = bot_env_prefix(&parsed.name);
            for (key, env) in [
                ("qpien.client_id", "QPIEN__CLIENT_ID"),
                ("qpien.client_secret", "QPIEN__CLIENT_SECRET"),
                ("webhook_secret", "WEBHOOK_SECRET"),
            ] {
                if from_file && item.find_ref(key).is_some() {
                    return Err(ConfigError::SecretInFile {
                        key: format!("{at}.{key}"),
                        file: "the configuration file".into(),
                        env: format!("{env_prefix}{env}"),
                    });
                }
            }
            let mut f = Figment::new();
            if let Some(q) = &top_qpien {
                f = f.merge(figment::providers::Serialized::default("qpien", q));
            }
            f = f
                .merge(figment::providers::Serialized::defaults(item))
                .merge(Env::prefixed(&env_prefix).split("__"));
            let bot: BotConfig = f.extract().map_err(|e| {
                ConfigError::Invalid(
                    e.into_iter()
                        .map(|e| {
                            format!(
                                "{at}: {}",
                                e.to_string().replace("key \"default.", "key \"")
                            )
                        })
                        .collect::<Vec<_>>()
                        .join("; "),
                )
            })?;
            check_bot(&bot, &at)?;
            let path = bot.webhook_path();
            let ns = bot.store_namespace();
            // Each taken name (as its variables read it), path and namespace,
            // by the index of the bot that took it: linear in the bots.
            let prefix = bot_env_prefix(&bot.name);
            let clash = [
                ("name", taken.get(&("name", prefix.clone()))),
                ("webhook_path", taken.get(&("webhook_path", path.clone()))),
                (
                    "store_namespace",
                    taken.get(&("store_namespace", ns.clone())),
                ),
            ]
            .into_iter()
            .find_map(|(key, i)| i.map(|i| (key, &bots[*i])));
            if let Some((key, other)) = clash {
                let other: &BotConfig = other;
                let why = if key == "name" && other.name != bot.name {
                    format!(" (both read {prefix}*: `-` and `_` are the same in a variable's name)")
                } else {
                    String::new()
                };
                return Err(ConfigError::Invalid(format!(
                    "{at}.{key}: the same as bots[{}]'s{why}; each bot needs its own",
                    other.name
                )));
            }
            let i = bots.len();
            taken.insert(("name", prefix), i);
            taken.insert(("webhook_path", path), i);
            taken.insert(("store_namespace", ns), i);
            let mut bot = bot;
            bot.spec = serde_json::to_value(item).ok();
            bots.push(bot);
        }
        Ok(bots)
    }

    /// The bot a registry row describes: `spec` (its JSON, secrets opened)
    /// over the top-level `[qpien]`, with the bot's own environment variables
    /// (`FLOWBOT_BOTS__<NAME>__...`) and `*_file` keys over both; checked as
    /// a `[[bots]]` entry is.
    pub fn registered_bot(
        &self,
        name: &str,
        spec: &serde_json::Value,
    ) -> Result<BotConfig, ConfigError> {
        let at = format!("bots[{name}]");
        if !is_bot_name(name) {
            return Err(ConfigError::Invalid(format!(
                "{at}.name: `{name}` must be 1 to 40 lowercase letters, digits, `-` or `_`, \
                 starting with a letter or digit"
            )));
        }
        let Some(fields) = spec.as_object() else {
            return Err(ConfigError::Invalid(format!(
                "{at}: a bot is a JSON object (flow, qpien, webhook_path, ...)"
            )));
        };
        let mut fields = fields.clone();
        fields.insert("name".into(), serde_json::Value::from(name));
        let mut f = Figment::new();
        if let Some(q) = &self.qpien_source {
            f = f.merge(figment::providers::Serialized::default("qpien", q));
        }
        f = f
            .merge(figment::providers::Serialized::defaults(fields))
            .merge(Env::prefixed(&bot_env_prefix(name)).split("__"));
        let mut bot: BotConfig = f.extract().map_err(|e| {
            ConfigError::Invalid(
                e.into_iter()
                    .map(|e| match e.path.is_empty() {
                        true => format!("{at}: {}", e.kind),
                        false => format!("{at}.{}: {}", e.path.join("."), e.kind),
                    })
                    .collect::<Vec<_>>()
                    .join("; "),
            )
        })?;
        bot.read_secret_files(&at)?;
        check_bot(&bot, &at)?;
        bot.spec = Some(spec.clone());
        Ok(bot)
    }
}

/// What each bot must be, however it was given: a flow, a webhook path clear
/// of the server's own, a usable store namespace.
fn check_bot(bot: &BotConfig, at: &str) -> Result<(), ConfigError> {
    if bot.flow.as_os_str().is_empty() {
        return Err(ConfigError::Invalid(format!(
            "{at}.flow: each bot names its flow file"
        )));
    }
    let path = bot.webhook_path();
    if let Some(problem) = webhook_path_problem(&path, Some(&bot.name)) {
        return Err(ConfigError::Invalid(format!(
            "{at}.webhook_path: `{path}` {problem}"
        )));
    }
    let ns = bot.store_namespace();
    if !is_namespace(&ns) {
        return Err(ConfigError::Invalid(format!(
            "{at}.store_namespace: `{ns}` must be 1 to 40 lowercase letters, digits or `_`"
        )));
    }
    Ok(())
}

/// The first path segments the server's own endpoints use.
const RESERVED_SEGMENTS: &[&str] = &[
    "healthz", "readyz", "metrics", "api", "admin", "debug", "bots",
];

/// What is wrong with a webhook path, if anything: it must be a plain path
/// (`/` then segments of letters, digits, `-`, `.`, `_`, `~`; no route
/// syntax, no empty or dot segments), at most 256 characters, and clear of
/// the server's own endpoints. A bot (`own`) may take its default,
/// `/bots/<name>/webhook`.
pub(crate) fn webhook_path_problem(path: &str, own: Option<&str>) -> Option<String> {
    if !path.starts_with('/') || path.len() < 2 {
        return Some("must start with `/` and name a path (such as `/webhook`)".into());
    }
    if path.len() > 256 {
        return Some("is longer than 256 characters".into());
    }
    if let Some(c) = path
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "-._~/".contains(*c)))
    {
        return Some(format!(
            "has `{}`: a webhook path is letters, digits, `-`, `.`, `_`, `~` and `/` (no route \
             syntax such as `{{id}}` or `*`)",
            c.escape_default()
        ));
    }
    let segments: Vec<&str> = path[1..].split('/').collect();
    if segments
        .iter()
        .any(|s| s.is_empty() || *s == "." || *s == "..")
    {
        return Some("has an empty, `.` or `..` segment".into());
    }
    let default = own.map(|name| format!("/bots/{name}/webhook"));
    if RESERVED_SEGMENTS.contains(&segments[0]) && default.as_deref() != Some(path) {
        return Some(format!(
            "is under `/{}`, which the server's own endpoints use",
            segments[0]
        ));
    }
    None
}

/// The prefix of a bot's own environment variables: `FLOWBOT_BOTS__SHOP_2__`
/// for `shop-2` (the name in capitals, `-` as `_`).
pub(crate) fn bot_env_prefix(name: &str) -> String {
    format!(
        "FLOWBOT_BOTS__{}__",
        name.to_ascii_uppercase().replace('-', "_")
    )
}

fn is_bot_name(s: &str) -> bool {
    (1..=40).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
}

fn is_namespace(s: &str) -> bool {
    (1..=40).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}
