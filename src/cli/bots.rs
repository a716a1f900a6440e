//! `flowbot bots`: the bots of a process that runs several. `add`, `list`,
//! `show`, `update`, `pause`, `resume` and `remove` go through the running
//! process's registry API (`/admin/bots`, `server.admin_token`), so they take
//! effect at once on every instance; `import-store` and `keygen` work
//! offline.

use std::path::PathBuf;

use clap::Subcommand;
use serde_json::{json, Value};

use super::admin::{Admin, Target};
use crate::config::{Config, StoreBackend};
use crate::store::SqliteStore;

/// Where the running process is.
#[derive(Debug, clap::Args)]
pub struct Process {
    /// The configuration file of the running process.
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    /// The running process's address, if not `server.listen`.
    #[arg(long, global = true)]
    url: Option<String>,
}

/// A bot's settings, as `add` and `update` take them.
#[derive(Debug, clap::Args)]
pub struct Settings {
    /// The flow file it runs (a path on the server; a relative one is taken
    /// from here and sent as absolute).
    #[arg(long)]
    flow: Option<PathBuf>,
    /// The path Qpien posts its webhooks to (default `/bots/<name>/webhook`).
    #[arg(long)]
    webhook_path: Option<String>,
    /// Any key of the bot's specification, as `KEY=VALUE` (`qpien.endpoint=https://...`,
    /// `qpien.rate_limit.requests=50`); VALUE is read as JSON when it is JSON,
    /// else as text. Repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// A credential (`qpien.client_id`, `qpien.client_secret`,
    /// `webhook_secret`) from an environment variable here, as `KEY=VARIABLE`,
    /// so that it is in no shell history; the process stores it sealed.
    /// Repeatable.
    #[arg(long = "secret", value_name = "KEY=VARIABLE")]
    secret: Vec<String>,
    /// Keys to remove (back to the process's default). Repeatable.
    #[arg(long = "unset", value_name = "KEY")]
    unset: Vec<String>,
}

/// What `flowbot bots` does.
#[derive(Debug, Subcommand)]
pub enum Action {
    /// Add a bot to the running process (and every instance sharing its
    /// store): it answers its webhook within a second, no restart.
    Add {
        /// Its name: lowercase letters, digits, `-` and `_`.
        name: String,
        #[command(flatten)]
        settings: Settings,
        /// Add it paused (deliveries are kept, and answered when resumed).
        #[arg(long)]
        paused: bool,
        #[command(flatten)]
        process: Process,
    },
    /// List the bots: state, where defined, last event, turns, errors, 429s.
    List {
        /// Removed bots too.
        #[arg(long)]
        all: bool,
        /// As JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        process: Process,
    },
    /// Show one bot: its settings (credentials only as `(sealed)`) and figures.
    Show {
        /// Its name.
        name: String,
        #[command(flatten)]
        process: Process,
    },
    /// Change a bot added with `add` (one of `[[bots]]` changes in the file).
    Update {
        /// Its name.
        name: String,
        #[command(flatten)]
        settings: Settings,
        #[command(flatten)]
        process: Process,
    },
    /// Pause a bot: its webhook still acknowledges and keeps deliveries;
    /// they are answered when it is resumed.
    Pause {
        /// Its name.
        name: String,
        #[command(flatten)]
        process: Process,
    },
    /// Resume a paused bot: what it kept meanwhile is answered, in order.
    Resume {
        /// Its name.
        name: String,
        #[command(flatten)]
        process: Process,
    },
    /// Remove a bot added with `add`: its webhook answers 404; its
    /// conversations stay in the store.
    Remove {
        /// Its name.
        name: String,
        #[command(flatten)]
        process: Process,
    },
    /// Print a new secret key for `FLOWBOT_SECRET_KEY` (or
    /// `server.secret_key_file`): 64 hex digits.
    Keygen,
    /// Move each bot's conversations from the file flowbot kept per bot
    /// (`flowbot.<bot>.db`, before one file held every bot) into the store's
    /// one file, once; each file moved is kept as `<file>.imported`. Run it
    /// with the process stopped.
    ImportStore {
        /// The configuration file that names the bots.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

pub(super) async fn run(action: Action) -> u8 {
    use reqwest::Method;
    let call = |process: Process, method: Method, path: String, body: Option<Value>| async move {
        let target = Target::process(process.config, process.url);
        let admin = Admin::root(&target)?;
        admin.send(method, &path, body.as_ref()).await.map_err(|e| {
            if e.contains("not found (is the bot running") {
                format!(
                    "{e}\nthe registry API is served by a process that runs several bots \
                     ([[bots]] or runtime.registry = true) with server.admin_token set"
                )
            } else {
                e
            }
        })
    };
    let result = match action {
        Action::ImportStore { config } => return import_store(config).await,
        Action::Keygen => {
            println!("{}", crate::sealed::SecretKey::generate());
            return 0;
        }
        Action::Add {
            name,
            settings,
            paused,
            process,
        } => match settings.body(Some(&name), paused) {
            Ok(body) => call(process, Method::POST, "/admin/bots".into(), Some(body))
                .await
                .map(|v| {
                    println!("bot `{name}` added ({})", v["state"].as_str().unwrap_or("?"));
                    if let Some(p) = v["webhook_path"].as_str() {
                        println!("its webhook: {p}");
                    }
                }),
            Err(e) => Err(e),
        },
        Action::List { all, json, process } => {
            let path = if all { "/admin/bots?all=true" } else { "/admin/bots" };
            call(process, Method::GET, path.into(), None)
                .await
                .map(|v| match json {
                    true => println!("{:#}", v),
                    false => print!("{}", table(&v)),
                })
        }
        Action::Show { name, process } => call(process, Method::GET, format!("/admin/bots/{name}"), None)
            .await
            .map(|v| println!("{v:#}")),
        Action::Update {
            name,
            settings,
            process,
        } => match settings.body(None, false) {
            Ok(body) => call(process, Method::PATCH, format!("/admin/bots/{name}"), Some(body))
                .await
                .map(|_| println!("bot `{name}` changed")),
            Err(e) => Err(e),
        },
        Action::Pause { name, process } => call(process, Method::POST, format!("/admin/bots/{name}/pause"), None)
            .await
            .map(|_| println!("bot `{name}` paused: its deliveries are kept until it is resumed")),
        Action::Resume { name, process } => call(process, Method::POST, format!("/admin/bots/{name}/resume"), None)
            .await
            .map(|_| println!("bot `{name}` resumed")),
        Action::Remove { name, process } => call(process, Method::DELETE, format!("/admin/bots/{name}"), None)
            .await
            .map(|_| println!("bot `{name}` removed: its webhook answers 404; its conversations stay in the store")),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

impl Settings {
    /// The JSON the API takes: `name` (for `add`), the settings as nested
    /// keys, `null` for each key to unset.
    fn body(self, name: Option<&str>, paused: bool) -> Result<Value, String> {
        let mut body = json!({});
        if let Some(n) = name {
            body["name"] = Value::from(n);
        }
        if paused {
            body["state"] = Value::from("paused");
        }
        if let Some(flow) = self.flow {
            let flow = std::path::absolute(&flow).unwrap_or(flow);
            body["flow"] = Value::from(flow.display().to_string());
        }
        if let Some(p) = self.webhook_path {
            body["webhook_path"] = Value::from(p);
        }
        for kv in &self.set {
            let Some((key, value)) = kv.split_once('=') else {
                return Err(format!("--set {kv}: KEY=VALUE"));
            };
            let value = serde_json::from_str(value).unwrap_or_else(|_| Value::from(value));
            put(&mut body, key, value)?;
        }
        for kv in &self.secret {
            let Some((key, var)) = kv.split_once('=') else {
                return Err(format!(
                    "--secret {kv}: KEY=VARIABLE (an environment variable here)"
                ));
            };
            let value = std::env::var(var).map_err(|_| {
                format!("--secret {key}: the environment variable {var} is not set")
            })?;
            put(&mut body, key, Value::from(value))?;
        }
        for key in &self.unset {
            put(&mut body, key, Value::Null)?;
        }
        Ok(body)
    }
}

/// Sets `key` (dotted: `qpien.rate_limit.requests`) in `body`.
fn put(body: &mut Value, key: &str, value: Value) -> Result<(), String> {
    let mut at = body;
    let parts: Vec<&str> = key.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(format!("`{key}`: a key is names joined by `.`"));
    }
    for p in &parts[..parts.len() - 1] {
        if !at[*p].is_object() {
            at[*p] = json!({});
        }
        at = &mut at[*p];
    }
    at[parts[parts.len() - 1]] = value;
    Ok(())
}

/// `bots list` as a table.
fn table(v: &Value) -> String {
    let mut rows = vec![[
        "NAME".to_owned(),
        "STATE".to_owned(),
        "FROM".to_owned(),
        "LAST EVENT".to_owned(),
        "TURNS".to_owned(),
        "ERRORS".to_owned(),
        "429S".to_owned(),
        "FLOW".to_owned(),
    ]];
    for b in v["bots"].as_array().into_iter().flatten() {
        let n = |k: &str| b[k].as_u64().map_or("-".to_owned(), |n| n.to_string());
        let last = b["last_event"]
            .as_i64()
            .and_then(|ms| jiff::Timestamp::from_millisecond(ms).ok())
            .map_or("-".to_owned(), |t| {
                t.strftime("%Y-%m-%d %H:%M:%S").to_string()
            });
        rows.push([
            b["name"].as_str().unwrap_or("").to_owned(),
            b["state"].as_str().unwrap_or("").to_owned(),
            b["source"].as_str().unwrap_or("").to_owned(),
            last,
            n("turns"),
            n("errors"),
            n("rate_limited"),
            b["flow"].as_str().unwrap_or("").to_owned(),
        ]);
    }
    let widths: Vec<usize> = (0..8)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in &rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

async fn import_store(config: Option<PathBuf>) -> u8 {
    let config = match Config::load(config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    if config.bots.is_empty() {
        eprintln!(
            "error: the configuration names no `[[bots]]`: a single bot's file is used as it is"
        );
        return 2;
    }
    match config.store.backend {
        StoreBackend::Sqlite => {}
        #[cfg(feature = "postgres")]
        StoreBackend::Postgres => return import_schemas(&config).await,
        _ => {
            println!("the store keeps nothing to import");
            return 0;
        }
    }
    let store = match SqliteStore::open(&config.store.path, config.store.sqlite_options()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    let mut moved = Vec::new();
    for bot in &config.bots {
        let key = bot.store_namespace();
        let from = crate::runtime::per_bot_file(&config.store.path, &key);
        if !from.is_file() {
            continue;
        }
        let n = match store.import(&key, &from).await {
            Ok(n) => n,
            Err(e) => return failed(&moved, &bot.name, e),
        };
        let mut kept = from.as_os_str().to_owned();
        kept.push(".imported");
        if let Err(e) = std::fs::rename(&from, &kept) {
            eprintln!(
                "error: {}: imported, but cannot be renamed ({e}): move it away before the next start",
                from.display()
            );
            return 1;
        }
        let mut lock = from.as_os_str().to_owned();
        lock.push(".lock");
        let _ = std::fs::remove_file(PathBuf::from(lock));
        moved.push(Moved {
            bot: bot.name.clone(),
            n,
            from: from.display().to_string(),
            kept: PathBuf::from(kept).display().to_string(),
        });
    }
    report(&moved, &config.store.path.display().to_string())
}

/// PostgreSQL: each bot's schema of before (`<store.schema>_<bot>`) moved
/// into the one schema.
#[cfg(feature = "postgres")]
async fn import_schemas(config: &Config) -> u8 {
    let db = match crate::runtime::postgres_store(&config.store).await {
        Ok(db) => db,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    let mut moved = Vec::new();
    for bot in &config.bots {
        let key = bot.store_namespace();
        let from = format!("{}_{key}", config.store.schema);
        match db.import_schema(&key, &from).await {
            Ok(None) => {}
            Ok(Some(n)) => moved.push(Moved {
                bot: bot.name.clone(),
                n,
                kept: format!("{from}_imported"),
                from: format!("schema {from}"),
            }),
            Err(e) => return failed(&moved, &bot.name, e),
        }
    }
    report(&moved, &format!("schema {}", config.store.schema))
}

/// One bot's rows moved: from where, and where the old store is kept.
struct Moved {
    bot: String,
    n: crate::store::Imported,
    from: String,
    kept: String,
}

/// Says what was moved, bot by bot.
fn report(moved: &[Moved], into: &str) -> u8 {
    for m in moved {
        println!(
            "{}: {} conversations, {} inbox rows, {} replies to send and {} dead letters moved from {} (kept as {})",
            m.bot, m.n.sessions, m.n.inbox, m.n.outbox, m.n.dead_letters, m.from, m.kept
        );
    }
    println!("{} bot(s) imported into {into}", moved.len());
    0
}

/// Says what was moved before `bot` failed, and why it did.
fn failed(moved: &[Moved], bot: &str, e: crate::store::StoreError) -> u8 {
    report(moved, "the store");
    eprintln!("error: bots[{bot}]: {e}");
    1
}
