//! How to reach Qpien: endpoint, API key, auth scheme, limits, retries, and the
//! choices where Qpien's documentation is silent.
//!
//! Every field has a default that matches the documented API, so a deployment
//! sets only the API key. Durations are written as `"60s"`, `"500ms"`, `"5m"`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A value that must never be printed: `Debug` and `Display` show `***`.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The value itself, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether no value was given.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() { "\"\"" } else { "***" })
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// How the access token is sent in the `Authorization` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthScheme {
    /// `Authorization: Bearer <token>`, as Qpien documents.
    #[default]
    Bearer,
    /// `Authorization: <token>`, as some integrations send it.
    Bare,
}

/// Which set of operations and answer shapes the account speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dialect {
    /// The operation names of Qpien's documentation (`getConversationList`,
    /// `createMessage`, ...), results bare, `Authorization: Bearer`.
    #[default]
    Documented,
    /// The names seen in public third-party code (`externalGetConversationList`,
    /// `externalCreateMessage`, ...), every result in a `{success, data, code,
    /// message}` envelope, the token sent bare.
    External,
}

impl Dialect {
    /// The auth scheme this dialect is seen with.
    pub fn auth_scheme(self) -> AuthScheme {
        match self {
            Dialect::Documented => AuthScheme::Bearer,
            Dialect::External => AuthScheme::Bare,
        }
    }

    /// The name in configuration (`documented`, `external`).
    pub fn as_str(self) -> &'static str {
        match self {
            Dialect::Documented => "documented",
            Dialect::External => "external",
        }
    }
}

impl std::str::FromStr for Dialect {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "documented" => Ok(Dialect::Documented),
            "external" => Ok(Dialect::External),
            other => Err(format!("unknown dialect `{other}` (documented, external)")),
        }
    }
}

/// Which mutation sends messages into WhatsApp conversations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WhatsappOperation {
    /// `createMessage`, like every other channel (the default: the only message
    /// mutation Qpien's Scopes page lists).
    #[default]
    CreateMessage,
    /// `createMessageByWhatsapp`.
    CreateMessageByWhatsapp,
}

/// Who sent a message, as flowbot treats it: only customers are answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SenderKind {
    /// The end customer: answered.
    Customer,
    /// A person of the account (agent, admin, owner).
    Agent,
    /// A bot (flowbot itself, or another).
    Bot,
    /// The platform (notices, automations).
    System,
    /// Not known: not answered.
    Unknown,
}

/// The shared request budget.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Requests allowed per `per` (Qpien: 100 a minute).
    pub requests: u32,
    /// The window.
    #[serde(with = "humantime_serde")]
    pub per: Duration,
    /// How long to wait after a 429 that says nothing of its reset.
    #[serde(with = "humantime_serde")]
    pub default_reset: Duration,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            requests: 100,
            per: Duration::from_secs(60),
            default_reset: Duration::from_secs(60),
        }
    }
}

/// Bounded exponential backoff with jitter.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryConfig {
    /// Attempts in all, the first one included (1: never retry).
    pub max_attempts: u32,
    /// The first delay.
    #[serde(with = "humantime_serde")]
    pub min_delay: Duration,
    /// The longest delay.
    #[serde(with = "humantime_serde")]
    pub max_delay: Duration,
}

impl RetryConfig {
    /// The policy, as [`crate::retry`] applies it.
    pub fn backoff(&self) -> crate::retry::Backoff {
        crate::retry::Backoff {
            min_delay: self.min_delay,
            max_delay: self.max_delay,
            max_attempts: Some(self.max_attempts.max(1)),
        }
    }
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_attempts: 6,
            min_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(10),
        }
    }
}

/// Everything the Qpien client needs.
///
/// ```
/// use flowbot::internals::qpien::{QpienConfig, Secret};
/// let config = QpienConfig {
///     client_id: Secret::new("my-id"),
///     client_secret: Secret::new("my-secret"),
///     ..QpienConfig::default()
/// };
/// assert_eq!(config.endpoint, "https://api.qpien.com/api/v1");
/// assert!(!format!("{config:?}").contains("my-secret"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QpienConfig {
    /// The GraphQL endpoint.
    pub endpoint: String,
    /// The API key's client id.
    pub client_id: Secret,
    /// The API key's client secret.
    pub client_secret: Secret,
    /// A file holding the client id (read by [`crate::config::Config::load`]).
    pub client_id_file: Option<PathBuf>,
    /// A file holding the client secret (read by [`crate::config::Config::load`]).
    pub client_secret_file: Option<PathBuf>,
    /// The operation set: `documented` (default) or `external`.
    pub dialect: Dialect,
    /// `bearer` or `bare`; unset: the dialect's ([`Dialect::auth_scheme`]).
    pub auth_scheme: Option<AuthScheme>,
    /// A folder of `<operation>.graphql` files replacing the embedded documents.
    pub documents_dir: Option<PathBuf>,
    /// How long one HTTP request may take.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// The largest answer read from Qpien; a larger one is an error, read no
    /// further (no server can make the bot hold more than this per call).
    pub max_response_bytes: usize,
    /// A token is renewed this long before it expires.
    #[serde(with = "humantime_serde")]
    pub token_refresh_margin: Duration,
    /// Token lifetime assumed when Qpien does not say (FACT: one hour).
    #[serde(with = "humantime_serde")]
    pub token_lifetime: Duration,
    /// The request budget.
    pub rate_limit: RateLimitConfig,
    /// Retries of transient failures.
    pub retry: RetryConfig,
    /// How replies of several conversations share a request.
    pub batch: super::batch::BatchConfig,
    /// The mutation used for WhatsApp conversations.
    pub whatsapp_operation: WhatsappOperation,
    /// The status a handoff sets (ASSUMED value).
    pub handoff_status: String,
    /// The status a release sets (ASSUMED value).
    pub release_status: String,
    /// The person a handed-off conversation is assigned to, if any.
    pub handoff_assign_to: Option<String>,
    /// Prefix of every `frontMsgId` flowbot creates.
    pub front_msg_id_prefix: String,
    /// `senderType` values (any case) and who they mean, on top of the defaults
    /// (see [`super::senders`]); the key `""` decides messages without one.
    pub sender_types: BTreeMap<String, SenderKind>,
    /// Answer messages in group or channel conversations (`isGroupOrChannel`).
    pub answer_groups: bool,
    /// Answer comments (messages carrying `commentData`).
    pub answer_comments: bool,
    /// Conversation statuses (any case) that mean nobody has it any more: a
    /// handed-off conversation found in one is released (values ASSUMED:
    /// Qpien does not publish them).
    pub released_statuses: Vec<String>,
}

impl QpienConfig {
    /// The auth scheme in force: the configured one, else the dialect's.
    pub fn auth(&self) -> AuthScheme {
        self.auth_scheme.unwrap_or(self.dialect.auth_scheme())
    }
}

impl Default for QpienConfig {
    fn default() -> Self {
        QpienConfig {
            endpoint: "https://api.qpien.com/api/v1".into(),
            client_id: Secret::default(),
            client_secret: Secret::default(),
            client_id_file: None,
            client_secret_file: None,
            dialect: Dialect::Documented,
            auth_scheme: None,
            documents_dir: None,
            request_timeout: Duration::from_secs(15),
            max_response_bytes: 4 << 20,
            token_refresh_margin: Duration::from_secs(300),
            token_lifetime: Duration::from_secs(3600),
            rate_limit: RateLimitConfig::default(),
            retry: RetryConfig::default(),
            batch: super::batch::BatchConfig::default(),
            whatsapp_operation: WhatsappOperation::default(),
            handoff_status: "PENDING".into(),
            release_status: "OPEN".into(),
            handoff_assign_to: None,
            front_msg_id_prefix: "flowbot".into(),
            sender_types: BTreeMap::new(),
            answer_groups: false,
            answer_comments: false,
            released_statuses: ["CLOSED", "RESOLVED", "ARCHIVED", "SOLVED"]
                .map(String::from)
                .to_vec(),
        }
    }
}
