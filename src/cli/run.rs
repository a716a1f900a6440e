//! `flowbot run`: the production process (see [`crate::runtime`]).

use std::path::Path;

use crate::config::{Config, LogFormat};
use crate::handler::Registry;

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&config.log.level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(super::colour());
    let _ = match config.log.format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// Loads the configuration, then runs until Ctrl-C or SIGTERM (or, with
/// `check`, only checks the configuration and the flow).
pub(super) async fn run(config_path: Option<&Path>, check: bool, registry: Registry) -> u8 {
    let config = match Config::load(config_path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    init_logging(&config);
    if check {
        return match crate::runtime::check(&config, &registry) {
            Ok(_) if config.bots.is_empty() && !config.runtime.registry => {
                println!("configuration and flow {} are valid", config.flow.display());
                0
            }
            Ok(_) => {
                for bot in &config.bots {
                    println!("{}: flow {} is valid", bot.name, bot.flow.display());
                }
                println!(
                    "configuration of {} bots is valid{}",
                    config.bots.len(),
                    match config.runtime.registry {
                        true => " (the registry's bots were checked when added)",
                        false => "",
                    }
                );
                0
            }
            Err(e) => {
                eprintln!("{e}");
                2
            }
        };
    }
    match crate::runtime::start(config, registry).await {
        Ok(running) => {
            let stop = crate::runtime::shutdown_signal();
            println!("flowbot listening on http://{}", running.addr());
            let drained = running.until(stop).await;
            if drained.turns_left + drained.replies_left > 0 {
                eprintln!(
                    "stopped with {} turns and {} replies left in the store (they resume at the next start)",
                    drained.turns_left, drained.replies_left
                );
            }
            0
        }
        Err(e) => {
            eprintln!("error: {e}");
            2
        }
    }
}
