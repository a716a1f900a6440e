//! `flowbot release`, `flowbot dead-letters` and `flowbot start`: talk to a
//! running `flowbot run` through its admin endpoints (`server.admin_token`)
//! or its API (`server.api_token`), with the same configuration it runs with. Going through the running process (rather than
//! its database) works with every store and runs a released conversation or a
//! retried delivery at once.

use std::path::PathBuf;

use crate::config::Config;

/// What to do with dead letters.
#[derive(Debug, clap::Subcommand)]
pub enum DeadLetters {
    /// List them, newest first: number, time, reason, size, top-level keys.
    List,
    /// Show one, with its headers and body.
    Show {
        /// Its number.
        id: u64,
    },
    /// Read it again with the rules in force now; if usable, run it and remove it.
    Retry {
        /// Its number.
        id: u64,
    },
}

/// Where the running bot is and how to authenticate.
pub(super) struct Admin {
    base: String,
    token: String,
    http: reqwest::Client,
}

/// Which running bot: its configuration, its address, and with `[[bots]]`
/// its name.
#[derive(Debug, clap::Args)]
pub struct Target {
    /// The configuration file of the running bot.
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    /// The running bot's address, if not `server.listen`.
    #[arg(long, global = true)]
    url: Option<String>,
    /// The bot, when the configuration runs several (`[[bots]]`).
    #[arg(long, global = true)]
    bot: Option<String>,
}

impl Target {
    /// The process of `config`, at `url` if given.
    pub(super) fn process(config: Option<PathBuf>, url: Option<String>) -> Target {
        Target {
            config,
            url,
            bot: None,
        }
    }
}

/// Which of the running bot's tokens a command uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    /// `server.admin_token`: releases, dead letters.
    Admin,
    /// `server.api_token`: starting conversations.
    Api,
}

impl Admin {
    fn new(target: &Target) -> Result<Admin, String> {
        Admin::with(target, Token::Admin)
    }

    /// The process itself (its root, not one of its bots): the registry.
    pub(super) fn root(target: &Target) -> Result<Admin, String> {
        Admin::at(target, Token::Admin, true)
    }

    fn with(target: &Target, which: Token) -> Result<Admin, String> {
        Admin::at(target, which, false)
    }

    fn at(target: &Target, which: Token, root: bool) -> Result<Admin, String> {
        let config = Config::load(target.config.as_deref()).map_err(|e| e.to_string())?;
        let url = target.url.as_deref();
        let (token, key, env) = match which {
            Token::Admin => (&config.server.admin_token, "admin_token", "ADMIN_TOKEN"),
            Token::Api => (&config.server.api_token, "api_token", "API_TOKEN"),
        };
        if token.is_empty() {
            return Err(format!(
                "no {} token: set FLOWBOT_SERVER__{env} (or server.{key}_file) here and in the running bot",
                key.trim_end_matches("_token")
            ));
        }
        let token = token.expose().to_owned();
        let base = match url {
            Some(u) => u.trim_end_matches('/').to_owned(),
            None => {
                let mut addr = config.server.listen;
                if addr.ip().is_unspecified() {
                    addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
                }
                format!("http://{addr}")
            }
        };
        let names = || {
            config
                .bots
                .iter()
                .map(|b| b.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let many = !config.bots.is_empty() || config.runtime.registry;
        let base = match (&target.bot, !many) {
            _ if root => base,
            (None, true) => base,
            // The registry's bots are the running process's to know.
            (Some(bot), false)
                if config.runtime.registry || config.bots.iter().any(|b| &b.name == bot) =>
            {
                format!("{base}/bots/{bot}")
            }
            (None, false) => {
                return Err(format!(
                    "this configuration runs several bots: name one with --bot ({})",
                    names()
                ))
            }
            (Some(bot), false) => {
                return Err(format!(
                    "no bot `{bot}` in this configuration ({})",
                    names()
                ))
            }
            (Some(_), true) => {
                return Err("--bot: this configuration runs one bot (no [[bots]])".into())
            }
        };
        Ok(Admin {
            base,
            token,
            http: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(10))
                .build()
                .map_err(|e| e.to_string())?,
        })
    }

    async fn call(&self, post: bool, path: &str) -> Result<serde_json::Value, String> {
        self.request(post, path, None).await
    }

    async fn request(
        &self,
        post: bool,
        path: &str,
        json: Option<&serde_json::Value>,
    ) -> Result<serde_json::Value, String> {
        let method = match post {
            true => reqwest::Method::POST,
            false => reqwest::Method::GET,
        };
        self.send(method, path, json).await
    }

    /// Calls `path` with `method` (and a JSON body): the JSON answer, or
    /// what went wrong.
    pub(super) async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        json: Option<&serde_json::Value>,
    ) -> Result<serde_json::Value, String> {
        let url = format!("{}{path}", self.base);
        let mut req = self.http.request(method, &url);
        if let Some(json) = json {
            req = req
                .header("content-type", "application/json")
                .body(json.to_string());
        }
        let response = req
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|e| format!("cannot reach the bot at {}: {e}", self.base))?;
        let status = response.status();
        let bytes = response.bytes().await.unwrap_or_default();
        let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        if status.as_u16() == 404 && body.is_null() {
            return Err(format!(
                "{url}: not found (is the bot running with this token set?)"
            ));
        }
        if !status.is_success() {
            let why = body["error"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| body.to_string());
            return Err(format!("{status}: {why}"));
        }
        Ok(body)
    }
}

/// `flowbot release CONVERSATION`.
pub(super) async fn release(target: &Target, conversation: &str) -> u8 {
    let admin = match Admin::new(target) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    if !crate::qpien::ingest::usable(conversation) {
        eprintln!(
            "error: the conversation must be {}",
            crate::qpien::ingest::ID_RULE
        );
        return 2;
    }
    // Any character may be in an id: it is one path segment, encoded.
    let segment =
        percent_encoding::utf8_percent_encode(conversation, percent_encoding::NON_ALPHANUMERIC);
    match admin
        .call(true, &format!("/admin/conversations/{segment}/release"))
        .await
    {
        Ok(_) => {
            println!("{conversation}: released (the bot answers its next message)");
            0
        }
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

/// Lists every dead letter, a page at a time (newest first).
async fn list_letters(admin: &Admin) -> Result<(), String> {
    let mut before: Option<u64> = None;
    let mut any = false;
    loop {
        let path = match before {
            Some(b) => format!("/admin/dead-letters?limit=500&before={b}"),
            None => "/admin/dead-letters?limit=500".to_owned(),
        };
        let page = admin.call(false, &path).await?;
        let items = page.as_array().cloned().unwrap_or_default();
        for d in &items {
            any = true;
            super::out(format_args!(
                "{:>6}  {}  {} bytes  {}",
                d["id"],
                crate::time::format(d["received_at"].as_i64().unwrap_or(0)),
                d["bytes"],
                d["reason"].as_str().unwrap_or("")
            ));
        }
        match items.last().and_then(|d| d["id"].as_u64()) {
            Some(last) if items.len() == 500 => before = Some(last),
            _ => break,
        }
    }
    if !any {
        super::out(format_args!("no dead letters"));
    }
    Ok(())
}

/// `flowbot dead-letters ...`.
pub(super) async fn dead_letters(target: &Target, what: &DeadLetters) -> u8 {
    let admin = match Admin::new(target) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    let result = match what {
        DeadLetters::List => list_letters(&admin).await,
        DeadLetters::Show { id } => admin
            .call(false, &format!("/admin/dead-letters/{id}"))
            .await
            .map(|d| println!("{}", serde_json::to_string_pretty(&d).unwrap_or_default())),
        DeadLetters::Retry { id } => admin
            .call(true, &format!("/admin/dead-letters/{id}/retry"))
            .await
            .map(|d| println!("{id}: {}", d["status"].as_str().unwrap_or("done"))),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

/// `flowbot start`: what to start.
#[derive(Debug, clap::Args)]
pub struct StartArgs {
    /// The conversation (Qpien's id).
    #[arg(long)]
    conversation: String,
    /// The state to start in.
    #[arg(long)]
    state: String,
    /// Variables, as `name=value` (a value that reads as JSON is taken as
    /// such: `count=3`, `vip=true`); repeat for several, or separate with commas.
    #[arg(long, value_delimiter = ',')]
    vars: Vec<String>,
    /// What happens to a conversation in progress: interrupt, skip or queue.
    #[arg(long, default_value = "interrupt")]
    mode: crate::message::StartMode,
    /// The channel of a conversation the bot has not seen yet.
    #[arg(long)]
    channel: Option<crate::message::Channel>,
    /// Test traffic: the run is left out of reports.
    #[arg(long)]
    test: bool,
    /// An idempotency key: the same key is started once.
    #[arg(long)]
    key: Option<String>,
}

/// `flowbot start`: through the running bot's `POST /api/start`.
pub(super) async fn start(target: &Target, args: &StartArgs) -> u8 {
    let admin = match Admin::with(target, Token::Api) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    let mut vars = serde_json::Map::new();
    for pair in &args.vars {
        let Some((k, v)) = pair.split_once('=') else {
            eprintln!("error: --vars {pair}: write name=value");
            return 2;
        };
        let value = serde_json::from_str(v).unwrap_or_else(|_| serde_json::Value::from(v));
        vars.insert(k.trim().to_owned(), value);
    }
    let mut body = serde_json::json!({
        "conversation": args.conversation,
        "state": args.state,
        "vars": vars,
        "mode": args.mode,
    });
    if let Some(c) = args.channel {
        body["channel"] = serde_json::json!(c);
    }
    if let Some(k) = &args.key {
        body["key"] = serde_json::json!(k);
    }
    if args.test {
        body["test"] = serde_json::json!(true);
    }
    match admin.request(true, "/api/start", Some(&body)).await {
        Ok(answer) => {
            let status = answer["status"].as_str().unwrap_or("accepted");
            println!("{}: {status}", args.conversation);
            0
        }
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

/// Which report (`flowbot report KIND`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReportKind {
    /// Per state: the runs that reached it, and those abandoned there.
    Funnel,
    /// Per flow version: runs started, resolved, handed off, abandoned,
    /// failed, open, and containment.
    Outcomes,
    /// Per variable: the values runs ended with, and how many.
    Answers,
}

impl ReportKind {
    fn path(self) -> &'static str {
        match self {
            ReportKind::Funnel => "funnel",
            ReportKind::Outcomes => "outcomes",
            ReportKind::Answers => "answers",
        }
    }
}

/// What a report counts (`flowbot report`'s filters).
#[derive(Debug, clap::Args)]
pub struct ReportFilter {
    /// Runs that started from this day or time (`2026-12-01`, RFC 3339);
    /// default: 7 days ago.
    #[arg(long)]
    from: Option<String>,
    /// ... until this day (inclusive) or time; default: now.
    #[arg(long)]
    to: Option<String>,
    /// One flow version (as reports show it, or its first characters).
    #[arg(long)]
    flow_version: Option<String>,
    /// One channel (`whatsapp`, `instagram`, `email`, `livechat`).
    #[arg(long)]
    channel: Option<String>,
    /// Count test traffic too (`flowbot demo`, the playground).
    #[arg(long)]
    include_test: bool,
    /// How it is printed.
    #[arg(long, value_enum, default_value = "table")]
    format: crate::insights::report::Format,
}

/// `flowbot report KIND`: asks the running bot (`/admin/reports/KIND`) and
/// prints its answer as a table, CSV or JSON.
pub(super) async fn report(target: &Target, kind: ReportKind, filter: &ReportFilter) -> u8 {
    let admin = match Admin::new(target) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    for (key, value) in [
        ("from", &filter.from),
        ("to", &filter.to),
        ("flow_version", &filter.flow_version),
        ("channel", &filter.channel),
    ] {
        if let Some(v) = value {
            query.append_pair(key, v);
        }
    }
    if filter.include_test {
        query.append_pair("include_test", "true");
    }
    let path = format!("/admin/reports/{}?{}", kind.path(), query.finish());
    match admin.call(false, &path).await {
        Ok(rows) => {
            let rows = rows.as_array().cloned().unwrap_or_default();
            print!(
                "{}",
                crate::insights::report::render(
                    &rows,
                    crate::insights::report::columns(kind.path()),
                    filter.format
                )
            );
            0
        }
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

/// `flowbot retention [--dry-run]`: the running bot applies `[retention]`
/// now, or says what it would remove.
pub(super) async fn retention(target: &Target, dry_run: bool) -> u8 {
    let admin = match Admin::new(target) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    let path = match dry_run {
        true => "/admin/retention?dry_run=true",
        false => "/admin/retention",
    };
    match admin.call(!dry_run, path).await {
        Ok(answer) => {
            let verb = if dry_run { "would remove" } else { "removed" };
            for kind in ["sessions", "dead_letters", "events", "rollups", "captures"] {
                super::out(format_args!(
                    "{kind:<13} {verb} {}",
                    answer["removed"][kind].as_u64().unwrap_or(0)
                ));
            }
            0
        }
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

/// The path segment of a contact (any character, encoded).
fn contact_path(who: &str) -> String {
    let segment = percent_encoding::utf8_percent_encode(who, percent_encoding::NON_ALPHANUMERIC);
    format!("/admin/contacts/{segment}")
}

/// `flowbot erase --contact WHO [--dry-run]`: the running bot erases
/// everything it holds of a contact (or says what it would).
pub(super) async fn erase(target: &Target, who: &str, dry_run: bool) -> u8 {
    let admin = match Admin::new(target) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    let mut path = contact_path(who);
    if dry_run {
        path.push_str("?dry_run=true");
    }
    match admin.send(reqwest::Method::DELETE, &path, None).await {
        Ok(answer) => {
            let verb = if dry_run { "would remove" } else { "removed" };
            super::out(format_args!(
                "{who}: {} conversation(s)",
                answer["conversations"].as_u64().unwrap_or(0)
            ));
            for kind in [
                "sessions",
                "inbox",
                "outbox",
                "dead_letters",
                "events",
                "captures",
            ] {
                super::out(format_args!(
                    "{kind:<13} {verb} {}",
                    answer["removed"][kind].as_u64().unwrap_or(0)
                ));
            }
            0
        }
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

/// `flowbot export --contact WHO`: everything the running bot holds of a
/// contact, as JSON on stdout.
pub(super) async fn export(target: &Target, who: &str) -> u8 {
    let admin = match Admin::new(target) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    match admin
        .call(false, &format!("{}/export", contact_path(who)))
        .await
    {
        Ok(held) => {
            super::out(format_args!(
                "{}",
                serde_json::to_string_pretty(&held).unwrap_or_default()
            ));
            0
        }
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}
