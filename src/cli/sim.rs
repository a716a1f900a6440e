//! `flowbot sim` and `flowbot demo`: the embedded Qpien simulator, alone or
//! wired to a bot, with the web playground.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use crate::config::Config;
use crate::handler::Registry;
use crate::qpien::{AuthScheme, Dialect, Secret};
use crate::sim::{self, Faults, ResetFormat, SimConfig};

/// Options of `flowbot sim`.
#[derive(Debug, clap::Args)]
pub struct SimArgs {
    /// Where the simulator listens.
    #[arg(long, default_value = "127.0.0.1:8090")]
    pub listen: SocketAddr,
    /// Where webhooks are delivered (a bot's `/webhook`).
    #[arg(long)]
    pub webhook_url: Option<String>,
    /// The webhook's HMAC secret.
    #[arg(
        long,
        env = "FLOWBOT_SIM_WEBHOOK_SECRET",
        default_value = "demo-webhook-secret"
    )]
    pub webhook_secret: String,
    /// The API key's client id.
    #[arg(long, default_value = "demo-client")]
    pub client_id: String,
    /// The API key's client secret.
    #[arg(long, env = "FLOWBOT_SIM_CLIENT_SECRET", default_value = "demo-secret")]
    pub client_secret: String,
    /// The token lifetime announced (`1h`).
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub token_lifetime: Duration,
    /// How long tokens really work, if shorter (early expiry).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub token_real_lifetime: Option<Duration>,
    /// Requests per minute (0: no limit).
    #[arg(long, default_value_t = 100)]
    pub rate_limit: u32,
    /// Share of API requests answered 500 (0 to 1).
    #[arg(long, default_value_t = 0.0)]
    pub fail_rate: f64,
    /// Share of API requests answered late.
    #[arg(long, default_value_t = 0.0)]
    pub slow_rate: f64,
    /// How late (`500ms`).
    #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
    pub slow_delay: Duration,
    /// Share of webhooks delivered twice.
    #[arg(long, default_value_t = 0.0)]
    pub duplicate_rate: f64,
    /// Seed of the fault injection.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// The operation set served: `documented` or `external`.
    #[arg(long, default_value = "documented")]
    pub dialect: Dialect,
    /// The `Authorization` form accepted: `bearer`, `bare` (default: both).
    #[arg(long, value_parser = parse_auth)]
    pub auth: Option<AuthScheme>,
    /// How `X-RateLimit-Reset` is sent: `seconds`, `unix-seconds`,
    /// `unix-millis` or `none`.
    #[arg(long, default_value = "seconds")]
    pub reset_format: ResetFormat,
    /// Create a second message for a repeated `frontMsgId`.
    #[arg(long)]
    pub no_dedup: bool,
    /// Send the (ASSUMED) `LEAVE_CONVERSATION` webhook when an agent leaves.
    #[arg(long)]
    pub leave_events: bool,
    /// Refuse schema introspection.
    #[arg(long)]
    pub no_introspection: bool,
}

fn parse_auth(s: &str) -> Result<AuthScheme, String> {
    match s {
        "bearer" => Ok(AuthScheme::Bearer),
        "bare" => Ok(AuthScheme::Bare),
        other => Err(format!("unknown auth `{other}` (bearer, bare)")),
    }
}

impl SimArgs {
    fn config(&self) -> SimConfig {
        SimConfig {
            listen: self.listen,
            client_id: self.client_id.clone(),
            client_secret: self.client_secret.clone(),
            token_lifetime: self.token_lifetime,
            token_real_lifetime: self.token_real_lifetime,
            rate_limit: (self.rate_limit > 0).then(|| (self.rate_limit, Duration::from_secs(60))),
            webhook_url: self.webhook_url.clone(),
            webhook_secret: self.webhook_secret.clone(),
            dialect: self.dialect,
            auth: self.auth,
            reset_format: self.reset_format,
            dedup_creates: !self.no_dedup,
            leave_events: self.leave_events,
            introspection: !self.no_introspection,
            faults: Faults {
                server_errors: self.fail_rate,
                slow: self.slow_rate,
                slow_delay: self.slow_delay,
                duplicate_webhooks: self.duplicate_rate,
                seed: self.seed,
            },
            ..SimConfig::default()
        }
    }
}

/// Runs the simulator alone until Ctrl-C.
pub(super) async fn run_sim(args: &SimArgs) -> u8 {
    let sim = match sim::start(args.config()).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    let stop = crate::runtime::shutdown_signal();
    println!(
        "Qpien simulator: GraphQL at {} (as Qpien's path; also {})",
        sim.api_url(),
        sim.graphql_url()
    );
    println!("playground: {}", sim.url());
    stop.await;
    sim.shutdown().await;
    0
}

/// A demo: the simulator and a bot for `flow` wired by webhook.
pub struct Demo {
    /// The simulator.
    pub sim: sim::RunningSim,
    /// The bot.
    pub bot: crate::runtime::Running,
    dir: tempfile::TempDir,
}

impl Demo {
    /// Starts both: the simulator on `listen`, the bot on a free port with a
    /// SQLite store in a temporary folder, its debug endpoints on and a clock
    /// the playground can move forward.
    pub async fn start(
        flow: &Path,
        listen: SocketAddr,
        registry: Registry,
    ) -> Result<Demo, String> {
        let secret = format!("{:032x}", fastrand::u128(..));
        let sim = sim::start(SimConfig {
            listen,
            webhook_secret: secret.clone(),
            ..SimConfig::default()
        })
        .await
        .map_err(|e| e.to_string())?;
        // A private folder (0700, a random name): never a guessable path
        // another user could plant a link at.
        let dir = crate::files::private_temp_dir("flowbot-demo-")
            .map_err(|e| format!("cannot make a private temporary folder: {e}"))?;
        let mut config = Config {
            flow: flow.to_path_buf(),
            ..Config::default()
        };
        let defaults = SimConfig::default();
        config.qpien.endpoint = sim.graphql_url();
        config.qpien.client_id = Secret::new(defaults.client_id);
        config.qpien.client_secret = Secret::new(defaults.client_secret);
        config.server.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        config.server.webhook_secret = Secret::new(secret);
        config.server.debug = true;
        // What the playground does is test traffic: reports leave it out.
        config.insights.test_traffic = true;
        // The playground moves time forward (`/debug/clock`): the system's
        // clock, shifted on request.
        config.clock = crate::time::ClockHandle::new(crate::time::ShiftedClock::default());
        config.store.path = dir.path().join("flowbot.db");
        config.runtime.timer_interval = Duration::from_millis(500);
        // The playground's agent leaves without a webhook (as in Qpien): the
        // bot notices at the customer's next message.
        config.handoff.check_interval = Duration::from_secs(1);
        let bot = crate::runtime::start(config, registry)
            .await
            .map_err(|e| e.to_string())?;
        let bot_url = format!("http://{}", bot.addr());
        sim.state().configure(|c| {
            c.webhook_url = Some(format!("{bot_url}/webhook"));
            c.bot_url = Some(bot_url.clone());
        });
        Ok(Demo { sim, bot, dir })
    }

    /// Stops both and removes the temporary store.
    pub async fn shutdown(self) {
        self.bot.shutdown().await;
        self.sim.shutdown().await;
        drop(self.dir);
    }
}

/// `flowbot demo`: runs until Ctrl-C.
/// The support example, built into the binary: `flowbot demo` runs it from
/// any folder (its action, `lookup_order`, is registered by the `flowbot`
/// binary).
const SUPPORT_FLOW: &str = include_str!("../../flows/support.yaml");

pub(super) async fn run_demo(flow: Option<&Path>, listen: SocketAddr, registry: Registry) -> u8 {
    // Without --flow: the built-in support example, written where the demo
    // can read it (and removed after).
    let built_in = match flow {
        Some(_) => None,
        None => match crate::files::private_temp_dir("flowbot-demo-")
            .map_err(|e| format!("cannot make a private temporary folder: {e}"))
            .and_then(|dir| {
                let path = dir.path().join("support.yaml");
                std::fs::write(&path, SUPPORT_FLOW)
                    .map(|()| (dir, path))
                    .map_err(|e| format!("cannot write the demo's flow: {e}"))
            }) {
            Ok(written) => Some(written),
            Err(e) => {
                eprintln!("error: {e}");
                return 2;
            }
        },
    };
    let Some(flow) = flow.or(built_in.as_ref().map(|(_, path)| path.as_path())) else {
        return 2;
    };
    let name = match &built_in {
        Some(_) => "the support example (built in)".to_owned(),
        None => flow.display().to_string(),
    };
    let demo = match Demo::start(flow, listen, registry).await {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    let stop = crate::runtime::shutdown_signal();
    println!("flowbot demo: {name} answered by {}", demo.bot.addr());
    println!("open the playground: {}", demo.sim.url());
    println!("(Ctrl-C to stop)");
    stop.await;
    demo.shutdown().await;
    // The built-in flow's folder goes with it.
    drop(built_in);
    0
}
