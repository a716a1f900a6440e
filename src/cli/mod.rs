//! The `flowbot` command line: every subcommand, for any registry of handlers.
//!
//! A bot with custom Rust handlers gets the whole CLI by calling [`main`] from its
//! own binary with its [`Registry`]; the `flowbot` binary itself is just that call
//! with an empty registry:
//!
//! ```no_run
//! use flowbot::{ActionContext, ActionOutcome, Registry};
//! fn main() -> std::process::ExitCode {
//!     let registry = Registry::new().action("greet", |ctx: &mut ActionContext<'_>| {
//!         ctx.say("Hello from Rust");
//!         Ok(ActionOutcome::Continue)
//!     });
//!     flowbot::main(registry)
//! }
//! ```
//!
//! Exit codes: 0 success, 1 failure (tests failed, `--strict` warnings), 2 a flow
//! that does not load or a usage error.

mod admin;
mod bots;
mod chat;
mod check;
mod doctor;
mod graph;
mod lsp;
mod lsp_io;
mod migrate;
mod new;
mod nlu;
mod replay;
mod run;
#[cfg(feature = "sim")]
mod sim;
#[cfg(feature = "sim")]
pub use sim::{Demo, SimArgs};

pub use replay::{replay, replay_capture};
mod test;
mod validate;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

use crate::handler::Registry;

/// flowbot: chatbots for Qpien, written as YAML flows with Rust handlers.
#[derive(Debug, Parser)]
#[command(name = "flowbot", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check flow files and print every problem with its position.
    Validate {
        /// Flow files (none: the flows `flowbot.toml` in this folder names).
        files: Vec<PathBuf>,
        /// Fail (exit 1) on warnings too.
        #[arg(long)]
        strict: bool,
        /// Check the WhatsApp templates the flows name against this list (a
        /// JSON array of `{name, language, params}`, as `flowbot doctor
        /// --templates FILE` writes it).
        #[arg(long)]
        templates: Option<PathBuf>,
    },
    /// Check flows like `validate`; with `--explore`, also walk every branch
    /// a customer can take (actions mocked) and report turns that send
    /// nothing, states no path reaches, texts missing a language and
    /// messages over WhatsApp's limits.
    Check {
        /// Flow files (none: the flows `flowbot.toml` in this folder names).
        files: Vec<PathBuf>,
        /// Walk the flow's branches through the engine.
        #[arg(long)]
        explore: bool,
        /// The most turns of an explored path.
        #[arg(long, default_value_t = 20)]
        depth: u32,
        /// Also report waiting states from which no path of at most `--depth`
        /// turns reaches a handoff or an end.
        #[arg(long)]
        require_exit: bool,
        /// Fail (exit 1) on warnings too.
        #[arg(long)]
        strict: bool,
    },
    /// Run a flow on JSON lines from stdin, print replies as JSON lines.
    Replay {
        /// The flow file.
        flow: PathBuf,
        /// Read captured webhook deliveries from this folder (see
        /// `server.capture_dir`) instead of JSON lines from stdin.
        #[arg(long)]
        capture: Option<PathBuf>,
        /// Let the flow's `http:` steps call the network (within the allow
        /// lists; `[http]` of ./flowbot.toml adds to them). Without it, they
        /// fail as unreachable.
        #[arg(long)]
        live_http: bool,
        /// Ask `[nlu.llm]` of ./flowbot.toml for intents (without it, only
        /// the flow's built-in classifier runs).
        #[arg(long)]
        live_llm: bool,
    },
    /// Talk to a flow in the terminal.
    Chat {
        /// The flow file (none: the flow `flowbot.toml` in this folder names).
        flow: Option<PathBuf>,
        /// The channel to simulate.
        #[arg(long, default_value = "whatsapp")]
        channel: String,
        /// The customer's language.
        #[arg(long)]
        language: Option<String>,
        /// Let the flow's `http:` steps call the network (within the allow
        /// lists; `[http]` of ./flowbot.toml adds to them).
        #[arg(long)]
        live_http: bool,
        /// Ask `[nlu.llm]` of ./flowbot.toml for intents (without it, only
        /// the flow's built-in classifier runs).
        #[arg(long)]
        live_llm: bool,
        /// Run on a clock fixed at this time (like 2026-12-24T10:00:00Z),
        /// moved only by `/wait`; without it, the real clock.
        #[arg(long)]
        at: Option<String>,
    },
    /// Print the flow as a Mermaid diagram (or DOT).
    Graph {
        /// The flow file (none: the flow `flowbot.toml` in this folder names).
        flow: Option<PathBuf>,
        /// Graphviz DOT instead of Mermaid.
        #[arg(long)]
        dot: bool,
    },
    /// Run the bot for Qpien: webhook server, poller, store, sender.
    Run {
        /// The configuration file (every key has a default; `FLOWBOT_...`
        /// environment variables override it).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Check the configuration and the flow, then exit.
        #[arg(long)]
        check: bool,
    },
    /// The bots of a process that runs several (`[[bots]]`, the registry).
    Bots {
        /// What to do.
        #[command(subcommand)]
        action: bots::Action,
    },
    /// Try a flow in the browser: the Qpien simulator, the bot wired to it by
    /// webhook, and the web playground.
    #[cfg(feature = "sim")]
    Demo {
        /// The flow to run (default: the flow `flowbot.toml` in this folder
        /// names; without one, the support example, built in).
        #[arg(long)]
        flow: Option<PathBuf>,
        /// Where the playground listens.
        #[arg(long, default_value = "127.0.0.1:8090")]
        listen: std::net::SocketAddr,
    },
    /// Run the Qpien simulator alone (GraphQL API, webhooks, playground).
    #[cfg(feature = "sim")]
    Sim(SimArgs),
    /// Check a live Qpien account against what flowbot assumes (token, auth
    /// scheme, schema, documents, scopes, envelope, rate-limit headers) and
    /// print the configuration to set. Exit 0 when the bot can run.
    Doctor {
        /// The configuration file (`flowbot run`'s).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Also write the suitable dialect's documents into this folder, to
        /// edit and use as `qpien.documents_dir`.
        #[arg(long)]
        write_documents: Option<PathBuf>,
        /// Also write the account's approved WhatsApp templates to this JSON
        /// file, for `flowbot validate --templates FILE`.
        #[arg(long)]
        templates: Option<PathBuf>,
    },
    /// Start a conversation in a state, as the business (an order update, a
    /// survey), through the running bot's `POST /api/start` (needs
    /// `server.api_token`).
    Start {
        /// What to start.
        #[command(flatten)]
        what: admin::StartArgs,
        /// Which running bot.
        #[command(flatten)]
        target: admin::Target,
    },
    /// Give a handed-off conversation back to the bot (through the running
    /// bot's admin endpoint; needs `server.admin_token`).
    Release {
        /// The conversation id.
        conversation: String,
        /// Which running bot.
        #[command(flatten)]
        target: admin::Target,
    },
    /// Webhook deliveries the bot could not use: list, show, retry.
    DeadLetters {
        /// What to do.
        #[command(subcommand)]
        what: admin::DeadLetters,
        /// Which running bot.
        #[command(flatten)]
        target: admin::Target,
    },
    /// Erase everything the running bot holds of one contact: its
    /// conversations (sessions, timers, messages not yet run, replies not yet
    /// sent), the dead letters, event-log rows and captures that name them.
    Erase {
        /// The contact: a conversation's id, or a phone number or e-mail
        /// address its conversations saved.
        #[arg(long)]
        contact: String,
        /// Only say how much of each would go.
        #[arg(long)]
        dry_run: bool,
        /// Which running bot.
        #[command(flatten)]
        target: admin::Target,
    },
    /// Everything the running bot holds of one contact, as JSON (an access
    /// request).
    Export {
        /// The contact: a conversation's id, or a phone number or e-mail
        /// address its conversations saved.
        #[arg(long)]
        contact: String,
        /// Which running bot.
        #[command(flatten)]
        target: admin::Target,
    },
    /// Apply `[retention]` in the running bot now: remove the conversations,
    /// dead letters, event-log rows and captures older than it says.
    Retention {
        /// Only say how many of each would go.
        #[arg(long)]
        dry_run: bool,
        /// Which running bot.
        #[command(flatten)]
        target: admin::Target,
    },
    /// How a running bot does, from its conversation event log: the funnel
    /// (per state), outcomes (resolved, handed off, abandoned, failed) or
    /// answers (the values variables took), per flow version.
    Report {
        /// Which report.
        #[arg(value_enum)]
        kind: admin::ReportKind,
        /// What it counts, and how it is printed.
        #[command(flatten)]
        filter: admin::ReportFilter,
        /// Which running bot.
        #[command(flatten)]
        target: admin::Target,
    },
    /// What changing the flow from OLD to NEW does to the conversations in
    /// progress: per state removed or renamed, where `migrate:` sends its
    /// conversations (or that they start over), and with `--store` how many
    /// live conversations sit there.
    MigrateCheck {
        /// The flow as it runs now.
        old: PathBuf,
        /// The flow about to replace it.
        new: PathBuf,
        /// The bot's store: a SQLite file (read without disturbing a running
        /// bot) or a PostgreSQL URL.
        #[arg(long, value_name = "URL")]
        store: Option<String>,
        /// The PostgreSQL schema of the store.
        #[arg(long, default_value = "flowbot")]
        schema: String,
        /// Which bot's conversations, in a store that holds several (the
        /// names of `[[bots]]`; none: the one bot of a single-bot process).
        #[arg(long, value_name = "NAME", default_value = "")]
        bot: String,
    },
    /// Start a bot project: a flow, a Rust action, a conversation test with
    /// its snapshot, a configuration and a README, in a new folder NAME.
    New {
        /// The bot's name (its folder and its Cargo package).
        name: String,
        /// Depend on this local checkout of flowbot rather than on the
        /// published crate.
        #[arg(long, value_name = "DIR")]
        flowbot_path: Option<PathBuf>,
    },
    /// A language server for flow files over stdio (diagnostics, completion,
    /// go to definition, hover): see docs/editor.md.
    Lsp,
    /// Print the JSON Schema of flow files (for editors: see docs/editor.md).
    Schema,
    /// Classify free text with a flow's intents: JSON lines `{"text": ...}`
    /// on stdin, one classification per line on stdout.
    Classify {
        /// The flow file (none: the flow `flowbot.toml` in this folder names).
        flow: Option<PathBuf>,
    },
    /// Understanding free text: `nlu eval FLOW DATA` scores the flow's
    /// classifier on held-out phrasings.
    Nlu {
        #[command(subcommand)]
        /// What to do.
        command: nlu::NluCommand,
    },
    /// Run YAML conversation tests against their snapshots (`test new`: write
    /// one from captured deliveries).
    #[command(args_conflicts_with_subcommands = true)]
    Test {
        /// Write a new test.
        #[command(subcommand)]
        new: Option<test::TestCommand>,
        /// The directory of tests, or one test file.
        #[arg(default_value = "tests/conversations")]
        dir: PathBuf,
        /// List the states and rules no test exercised.
        #[arg(long)]
        coverage: bool,
        /// Let `http:` steps without a mock call the network (within the
        /// allow lists; `[http]` of ./flowbot.toml adds to them).
        #[arg(long)]
        live_http: bool,
    },
}

/// Writes one line to standard output. A reader that went away (`flowbot
/// dead-letters list | head`) ends the program quietly, as command-line
/// tools do.
pub(super) fn out(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = writeln!(stdout, "{line}") {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
    }
}

/// Any other print to a closed pipe (`println!` panics there) ends the
/// program quietly too, with success, instead of a panic's message.
fn quiet_on_closed_pipe() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(0);
        }
        previous(info);
    }));
}

/// Parses the command line and runs it with the given handlers.
pub fn main(registry: Registry) -> ExitCode {
    quiet_on_closed_pipe();
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Run { .. }) {
        init_tracing();
    }
    run(cli, registry)
}

/// Runs a parsed command line.
pub fn run(cli: Cli, registry: Registry) -> ExitCode {
    let rt = if !matches!(
        cli.command,
        Command::Validate { .. }
            | Command::Check { .. }
            | Command::Replay { .. }
            | Command::Chat { .. }
            | Command::Graph { .. }
            | Command::Test { .. }
            | Command::Schema
            | Command::Classify { .. }
            | Command::Nlu { .. }
            | Command::New { .. }
            | Command::Lsp
    ) {
        // Serving: the multi-threaded scheduler, with one worker too where
        // the process has one core. Measured there, the single-threaded one
        // spent about a tenth more CPU a turn; with it, half as many replies
        // shared a request to Qpien (5 against 10), so it made twice the
        // requests (BENCHMARKS.md, "The store's writes on the worker").
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    };
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let code = rt.block_on(async move {
        match cli.command {
            Command::Validate {
                files,
                strict,
                templates,
            } => match project_flows("validate", files) {
                Ok(files) => validate::run(&files, strict, templates.as_deref(), &registry),
                Err(code) => code,
            },
            Command::Check {
                files,
                explore,
                depth,
                require_exit,
                strict,
            } => {
                let options = crate::testing::explore::ExploreOptions {
                    depth,
                    require_exit,
                };
                match project_flows("check", files) {
                    Ok(files) => check::run(&files, explore, options, strict, &registry).await,
                    Err(code) => code,
                }
            }
            Command::Replay {
                flow,
                capture,
                live_http,
                live_llm,
            } => match live(registry, live_http, live_llm) {
                Ok(registry) => replay::run(&flow, capture.as_deref(), registry).await,
                Err(code) => code,
            },
            Command::Chat {
                flow,
                channel,
                language,
                live_http,
                live_llm,
                at,
            } => match (
                project_flow("chat", flow),
                live(registry, live_http, live_llm),
            ) {
                (Ok(flow), Ok(registry)) => {
                    chat::run(&flow, &channel, language, at.as_deref(), registry).await
                }
                (Err(code), _) | (_, Err(code)) => code,
            },
            Command::Graph { flow, dot } => match project_flow("graph", flow) {
                Ok(flow) => graph::run(&flow, dot, &registry),
                Err(code) => code,
            },
            Command::Test {
                new:
                    Some(test::TestCommand::New {
                        from_capture,
                        flow,
                        conversation,
                        out,
                    }),
                ..
            } => test::new_from_capture(
                &from_capture,
                &flow,
                conversation.as_deref(),
                out.as_deref(),
            ),
            Command::Test {
                dir,
                coverage,
                live_http,
                ..
            } => match live(registry, live_http, false) {
                Ok(registry) => test::run(&dir, coverage, &registry).await,
                Err(code) => code,
            },
            Command::MigrateCheck {
                old,
                new,
                store,
                schema,
                bot,
            } => migrate::run(&old, &new, store.as_deref(), &schema, &bot, registry).await,
            Command::New { name, flowbot_path } => new::run(&name, flowbot_path.as_deref()).await,
            Command::Lsp => {
                let names = registry.names();
                tokio::task::spawn_blocking(move || lsp::run(names))
                    .await
                    .unwrap_or(1)
            }
            Command::Schema => {
                use std::io::Write;
                // A closed pipe (`flowbot schema | head`) is no error.
                let _ = writeln!(std::io::stdout(), "{:#}", crate::flow::schema());
                0
            }
            Command::Classify { flow } => match project_flow("classify", flow) {
                Ok(flow) => nlu::classify(&flow, &registry),
                Err(code) => code,
            },
            Command::Nlu {
                command: nlu::NluCommand::Eval { flow, data },
            } => nlu::eval(&flow, &data, &registry),
            Command::Run { config, check } => run::run(config.as_deref(), check, registry).await,
            Command::Bots { action } => bots::run(action).await,
            Command::Doctor {
                config,
                write_documents,
                templates,
            } => {
                doctor::run(
                    config.as_deref(),
                    write_documents.as_deref(),
                    templates.as_deref(),
                )
                .await
            }
            Command::Release {
                conversation,
                target,
            } => admin::release(&target, &conversation).await,
            Command::Start { what, target } => admin::start(&target, &what).await,
            Command::DeadLetters { what, target } => admin::dead_letters(&target, &what).await,
            Command::Report {
                kind,
                filter,
                target,
            } => admin::report(&target, kind, &filter).await,
            Command::Retention { dry_run, target } => admin::retention(&target, dry_run).await,
            Command::Erase {
                contact,
                dry_run,
                target,
            } => admin::erase(&target, &contact, dry_run).await,
            Command::Export { contact, target } => admin::export(&target, &contact).await,
            #[cfg(feature = "sim")]
            Command::Demo { flow, listen } => {
                // In a project: its flow. Elsewhere: the built-in example.
                let flow = match flow {
                    None if std::path::Path::new("flowbot.toml").is_file() => {
                        match project_flow("demo", None) {
                            Ok(f) => Some(f),
                            Err(code) => return code,
                        }
                    }
                    given => given,
                };
                sim::run_demo(flow.as_deref(), listen, registry).await
            }
            #[cfg(feature = "sim")]
            Command::Sim(args) => sim::run_sim(&args).await,
        }
    });
    ExitCode::from(code)
}

/// The flows a command works on: those given, else those `flowbot.toml`
/// in the current folder names (its `flow`, or each of its `[[bots]]`'),
/// said on stderr so that nobody wonders which was checked. No file given
/// and none there: exit code 2, with the way to name one.
fn project_flows(command: &str, given: Vec<PathBuf>) -> Result<Vec<PathBuf>, u8> {
    if !given.is_empty() {
        return Ok(given);
    }
    let file = std::path::Path::new("flowbot.toml");
    if !file.is_file() {
        eprintln!(
            "error: no flow given, and no flowbot.toml in this folder to take one from: \
             `flowbot {command} FLOW.yaml`"
        );
        return Err(2);
    }
    let config = match crate::config::Config::load(Some(file)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: flowbot.toml: {e}");
            return Err(2);
        }
    };
    let mut flows: Vec<PathBuf> = Vec::new();
    let named = match config.bots.is_empty() {
        true => vec![config.flow.clone()],
        false => config.bots.iter().map(|b| b.flow.clone()).collect(),
    };
    for f in named {
        if !flows.contains(&f) {
            flows.push(f);
        }
    }
    let list: Vec<String> = flows.iter().map(|f| f.display().to_string()).collect();
    eprintln!("{command}: the flow of flowbot.toml: {}", list.join(", "));
    Ok(flows)
}

/// [`project_flows`] for a command that takes one flow (with several
/// bots, the first's).
fn project_flow(command: &str, given: Option<PathBuf>) -> Result<PathBuf, u8> {
    let flows = project_flows(command, given.into_iter().collect())?;
    Ok(flows.into_iter().next().expect("at least one flow"))
}

/// The registry, with `--live-http` the network as its `http:` client:
/// within the flows' allow lists and `[http]` of ./flowbot.toml (and
/// `FLOWBOT_HTTP__...`), reading at most its `limits.http_body_bytes`; with
/// `--live-llm`, `[nlu.llm]` as its classifier.
fn live(registry: Registry, http: bool, llm: bool) -> Result<Registry, u8> {
    if !http && !llm {
        return Ok(registry);
    }
    let flag = if http { "--live-http" } else { "--live-llm" };
    let file = std::path::Path::new("flowbot.toml");
    let config = match crate::config::Config::load(file.is_file().then_some(file)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {flag}: {e}");
            return Err(2);
        }
    };
    let mut registry = registry;
    if http {
        match crate::fetch::LiveHttp::new(&config.http, config.limits.http_body_bytes) {
            Ok(client) => registry = registry.http_or(std::sync::Arc::new(client)),
            Err(e) => {
                eprintln!("error: --live-http: {e}");
                return Err(2);
            }
        }
    }
    if llm {
        if config.nlu.llm.is_none() {
            eprintln!("error: --live-llm: ./flowbot.toml has no `[nlu.llm]` (base_url, model)");
            return Err(2);
        }
        match crate::runtime::with_llm(&config, registry) {
            Ok(r) => registry = r,
            Err(e) => {
                eprintln!("error: --live-llm: {e}");
                return Err(2);
            }
        }
    }
    Ok(registry)
}

/// Logs to stderr, filtered by `RUST_LOG` (default: warnings).
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour())
        .try_init();
}

/// Whether log lines may carry colour: only on a terminal, and not when
/// `NO_COLOR` is set (<https://no-color.org>), so a log written to a file
/// or read by a collector has no escape codes.
pub(super) fn colour() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Loads a flow for a subcommand, printing diagnostics (warnings too) on stderr.
/// Loads a flow and binds its handlers, printing warnings and errors as the CLI
/// does; `Err` is the exit code (2: the flow does not load or names an unknown
/// handler).
fn load_bot(path: &std::path::Path, registry: Registry) -> Result<crate::engine::Bot, u8> {
    let flow = load(path, &registry)?;
    crate::engine::Bot::new(flow, registry).map_err(|e| {
        eprintln!("error: {e}");
        2
    })
}

fn load(path: &std::path::Path, registry: &Registry) -> Result<crate::flow::Flow, u8> {
    match crate::flow::Flow::load(path, &registry.names()) {
        Ok(f) => {
            for w in &f.warnings.0 {
                eprintln!("{w}");
            }
            Ok(f)
        }
        Err(e) => {
            eprintln!("{}", e.0);
            Err(2)
        }
    }
}
