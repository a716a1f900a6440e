//! `flowbot bots`: the bots of a process that runs several.

use std::path::PathBuf;

use clap::Subcommand;

use crate::config::{Config, StoreBackend};
use crate::store::SqliteStore;

/// What `flowbot bots` does.
#[derive(Debug, Subcommand)]
pub enum Action {
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
    match action {
        Action::ImportStore { config } => import_store(config).await,
    }
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
