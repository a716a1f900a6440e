//! `flowbot migrate-check OLD NEW [--store URL]`: what changing the flow from
//! OLD to NEW does to the conversations in progress, before a reload: per
//! state removed or renamed, how many live conversations sit there and where
//! `migrate:` sends them (or that they start over).

use std::collections::BTreeMap;
use std::path::Path;

use crate::flow::migration::{describe, migration};
use crate::handler::Registry;

/// Runs the check; the exit code (0 done, 1 the store cannot be read, 2 a
/// flow does not load).
pub(super) async fn run(
    old: &Path,
    new: &Path,
    store: Option<&str>,
    schema: &str,
    bot: &str,
    registry: Registry,
) -> u8 {
    let Ok(old_bot) = super::load_bot(old, registry.clone()) else {
        return 2;
    };
    let Ok(new_bot) = super::load_bot(new, registry) else {
        return 2;
    };
    let moves = migration(old_bot.flow(), new_bot.flow());
    let live = match store {
        None => None,
        Some(url) => match count(url, schema, bot, &old_bot).await {
            Ok(l) => Some(l),
            Err(e) => {
                eprintln!("error: cannot read the conversations in {url}: {e}");
                return 1;
            }
        },
    };
    println!("{} -> {}", old.display(), new.display());
    if moves.is_empty() {
        println!(
            "every state of the old flow is in the new one: conversations go on where they are"
        );
        return 0;
    }
    for line in describe(&moves, live.as_ref(), new_bot.flow()) {
        println!("  {line}");
    }
    let over: Vec<&str> = moves
        .iter()
        .filter(|m| m.to.is_none())
        .map(|m| m.state.as_str())
        .collect();
    match &live {
        Some(l) => {
            let moved: u64 = moves.iter().map(|m| l.get(&m.state).copied().unwrap_or(0)).sum();
            let restart: u64 = over.iter().map(|s| l.get(*s).copied().unwrap_or(0)).sum();
            println!(
                "{} state(s) gone; {moved} live conversation(s) in them, {restart} of which start over",
                moves.len()
            );
        }
        None => println!(
            "{} state(s) gone, {} not placed by `migrate:` (give --store to count the live conversations)",
            moves.len(),
            over.len()
        ),
    }
    0
}

/// The live conversations per state in the store at `url`: a PostgreSQL URL,
/// else a SQLite file (read without taking it from a running bot).
async fn count(
    url: &str,
    schema: &str,
    bot: &str,
    old: &crate::engine::Bot,
) -> Result<BTreeMap<String, u64>, String> {
    let now = crate::time::now();
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        #[cfg(feature = "postgres")]
        {
            let store = crate::store::PostgresStore::open(crate::store::PostgresOptions {
                url: url.to_owned(),
                schema: schema.to_owned(),
                ..Default::default()
            })
            .await
            .map_err(|e| e.to_string())?;
            let store = store.bot(bot).await.map_err(|e| e.to_string())?;
            return crate::runtime::count_live(&store, old, now)
                .await
                .map_err(|e| e.to_string());
        }
        #[cfg(not(feature = "postgres"))]
        return Err("reading PostgreSQL needs flowbot built with the `postgres` feature".into());
    }
    let _ = schema;
    let path = Path::new(url.strip_prefix("sqlite://").unwrap_or(url));
    if !path.is_file() {
        return Err("no such SQLite database".into());
    }
    let mut out = BTreeMap::new();
    crate::store::read_sqlite_sessions(path, bot, &mut |data| {
        if let Some(state) = crate::runtime::live_state(data, old, now) {
            *out.entry(state).or_insert(0) += 1;
        }
    })
    .map_err(|e| e.to_string())?;
    Ok(out)
}
