//! `torsensor`: the command-line edge. Errors become one line on stderr.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
mod cli;

use cli::check::{CheckArgs, check};
use cli::rules::{RulesCommand, rules};
use cli::running::{SelftestArgs, StatusArgs, feed_status, selftest, status};
use sensor_daemon::alert::Schema;
use sensor_daemon::config::{ConfigFlags, RunFlags};
use sensor_daemon::daemon::{self as sensor};
use sensor_daemon::feed::manager::FeedManager;
use sensor_daemon::kernel::InboundChoice;
use sensor_daemon::time::rfc3339_secs as rfc3339;

#[derive(Parser)]
#[command(
    name = "torsensor",
    version,
    about = "Reports connections between this host and the Tor network (eBPF)."
)]
struct Cli {
    /// Log filter for stderr (tracing EnvFilter syntax: info, debug, torsensor=debug...).
    #[arg(long, global = true, env = "TORSENSOR_LOG", default_value = "info")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load feeds into the kernel, attach probes, write one JSON alert per hit to stdout.
    Run(RunFlags),
    /// Say what the feeds know of addresses, without touching the kernel or
    /// the network (exit 0: all listed, 1: some not, 2: bad input, or a
    /// feed asked for has no local copy).
    Check(CheckArgs),
    /// How the running sensor is doing, from its endpoint (or its status
    /// file): one verdict line, then details. Exit 0 OK, 1 WARNING,
    /// 2 CRITICAL, 3 UNKNOWN (a Nagios-style check).
    Status(StatusArgs),
    /// Ask the running sensor to prove its path now: a canary address in
    /// the live maps, a connection to it, both alerts back through the ring
    /// buffer and the pipeline (root; exit 0 passed, 1 failed, 2 no answer).
    Selftest(SelftestArgs),
    /// Tor history: import CollecTor archives and documents into a
    /// time-aware index (`check --at TIME` queries it).
    #[command(subcommand)]
    History(cli::history::HistoryCommand),
    /// Check past captures (PCAP, pcapng, NetFlow/IPFIX in them), flow logs
    /// (Zeek conn.log, nfdump CSV/JSON) and web server access logs against
    /// the Tor history at their time: alerts for substantial transactions,
    /// then a summary per internal host and Tor peer. Exit 0 if something
    /// was alerted, 1 if not, 2 on an error.
    Hunt(Box<cli::hunt::HuntArgs>),
    /// Feed maintenance.
    #[command(subcommand)]
    Feed(FeedCommand),
    /// The detection rules: `check` validates and shows them, `test` runs
    /// recorded alerts through them.
    #[command(subcommand)]
    Rules(RulesCommand),
    /// Load the programs, choose the hooks as `run` would, print the plan
    /// (one line, or JSON) and exit without arming (needs root; exit 1 if
    /// this kernel offers no working plan).
    Hooks(HooksArgs),
    /// Benchmark: alerts/s through an HTTP output on loopback, with and
    /// without `durable` (run by `cargo xtask bench`).
    #[command(hide = true)]
    BenchOutputs {
        /// Where the spools go (`<DIR>/spool/`).
        #[arg(long)]
        state_dir: std::path::PathBuf,
        #[arg(long, default_value_t = 50_000)]
        alerts: u64,
        #[arg(long, default_value_t = 5)]
        rounds: usize,
    },
    /// Replay recorded kernel events (JSON lines, one decoded `ConnEvent`
    /// per line) through the alert pipeline with the configured feeds, no
    /// kernel and no /proc; print one alert per line.
    #[command(hide = true)]
    Replay(ReplayArgs),
    /// Benchmark: the live flow collector's records/s against reading the
    /// exports alone (run by `cargo xtask bench --collector-only`).
    #[command(hide = true)]
    BenchCollector {
        #[arg(long, default_value_t = 50_000)]
        datagrams: usize,
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        #[arg(long, default_value_t = 5)]
        listed_percent: u32,
    },
    /// Benchmark: the hunt with a year of history against tcpdump, tshark
    /// and grep on the same files (run by `cargo xtask bench --hunt-only`).
    #[command(hide = true)]
    BenchHunt {
        /// Where the year's index, the capture and the log go (kept).
        #[arg(long)]
        dir: std::path::PathBuf,
        #[arg(long, default_value_t = 1024)]
        pcap_mib: u64,
        #[arg(long, default_value_t = 256)]
        log_mib: u64,
    },
    /// Benchmark control: an empty program on the sensor's hook, nothing else.
    #[command(hide = true)]
    BenchFloor {
        /// Also an empty program on the raw syscall-entry tracepoint.
        #[arg(long)]
        syscalls: bool,
    },
}

#[derive(Subcommand)]
enum FeedCommand {
    /// Fetch, validate and cache every configured feed now; print a summary
    /// (exit 1 if any feed failed).
    Fetch(ConfigFlags),
    /// What the running sensor has loaded, from where, and how old.
    Status(ConfigFlags),
    /// Benchmark: parse, merge, load and refresh the relay set at 1x and
    /// 10x (needs root; run by `cargo xtask bench`).
    #[command(hide = true)]
    Bench {
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
}

#[derive(Args)]
struct ReplayArgs {
    #[command(flatten)]
    config: ConfigFlags,
    /// Alert format: ecs, ocsf or falco.
    #[arg(long, default_value = "ecs", value_parser = parse_format)]
    format: Schema,
    /// Aggregation window (0s turns aggregation off). Default: the configuration's.
    #[arg(long, value_parser = sensor_daemon::time::parse_duration)]
    aggregation_window: Option<Duration>,
    /// The recording.
    #[arg(value_name = "FILE")]
    file: PathBuf,
}

fn parse_format(text: &str) -> Result<Schema, String> {
    match text {
        "ecs" => Ok(Schema::Ecs),
        "ocsf" => Ok(Schema::Ocsf),
        "falco" => Ok(Schema::Falco),
        other => Err(format!("{other:?} is not ecs, ocsf or falco")),
    }
}

#[derive(Args)]
struct HooksArgs {
    /// Print the plan as JSON (the `hooks` object of status.json).
    #[arg(long)]
    json: bool,
    /// Try only this inbound plan (as `run --inbound-hooks`).
    #[arg(long, env = "TORSENSOR_INBOUND_HOOKS", value_name = "PLAN")]
    inbound_hooks: Option<InboundChoice>,
}

fn init_logging(filter: &str) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .with_context(|| format!("--log {filter:?} is not a valid log filter"))?;
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = init_logging(&cli.log) {
        eprintln!("torsensor: {e:#}");
        return ExitCode::from(2);
    }
    if !matches!(cli.command, Command::Run(_)) {
        sensor_daemon::sys::default_sigpipe();
    }
    let result = match cli.command {
        Command::Run(args) => run(args).map(|()| ExitCode::SUCCESS),
        Command::Check(args) => check(args),
        Command::Rules(command) => rules(command),
        Command::History(command) => cli::history::history(command),
        Command::Hunt(args) => cli::hunt::hunt(*args),
        Command::Hooks(args) => hooks(args),
        Command::Status(args) => Ok(status(args)),
        Command::Selftest(args) => selftest(args),
        Command::Replay(args) => replay(args).map(|()| ExitCode::SUCCESS),
        Command::Feed(FeedCommand::Fetch(args)) => feed_fetch(args),
        Command::Feed(FeedCommand::Status(args)) => feed_status(args),
        Command::BenchFloor { syscalls } => sensor_daemon::bench::hook_floor(syscalls)
            .map(|()| ExitCode::SUCCESS)
            .map_err(Into::into),
        Command::BenchOutputs {
            state_dir,
            alerts,
            rounds,
        } => sensor_daemon::sink::bench::run(&state_dir, alerts, rounds)
            .map(|()| ExitCode::SUCCESS)
            .map_err(Into::into),
        Command::BenchCollector {
            datagrams,
            rounds,
            listed_percent,
        } => sensor_daemon::bench::collector::run(datagrams, rounds.max(1), listed_percent)
            .map(|()| ExitCode::SUCCESS)
            .map_err(|e| anyhow::anyhow!("{e}")),
        Command::BenchHunt {
            dir,
            pcap_mib,
            log_mib,
        } => sensor_daemon::bench::hunt::run(&dir, pcap_mib, log_mib)
            .map(|()| ExitCode::SUCCESS)
            .map_err(|e| anyhow::anyhow!("{e}")),
        Command::Feed(FeedCommand::Bench { rounds }) => sensor_daemon::bench::run(rounds)
            .map(|()| ExitCode::SUCCESS)
            .map_err(Into::into),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("torsensor: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn run(args: RunFlags) -> anyhow::Result<()> {
    let cfg = args.load()?;
    let reload = Box::new(move || args.load());
    runtime()?.block_on(sensor::run(cfg, reload))?;
    Ok(())
}

fn replay(args: ReplayArgs) -> anyhow::Result<()> {
    use sensor_daemon::alert::SensorIdentity;
    use sensor_daemon::alert::aggregate::Aggregator;
    use sensor_daemon::pipeline::{KernelOnly, Pipeline, replay};
    let cfg = args.config.load()?;
    let (_, feeds) = sensor::load_offline(&cfg)?;
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("reading {}", args.file.display()))?;
    let records = replay::parse_lines(&text)?;
    let window = args.aggregation_window.unwrap_or(cfg.aggregation_window);
    let mut pipeline = Pipeline::new(
        feeds,
        sensor_daemon::alert::rules::Rules::builtin()?,
        SensorIdentity::local(),
        sensor_daemon::kernel::event::BootClock::at(std::time::UNIX_EPOCH),
        KernelOnly,
        Aggregator::new(window, cfg.aggregation_max_groups),
    );
    for alert in replay::run_lines(&mut pipeline, &records, None)? {
        println!("{}", args.format.render(&alert));
    }
    Ok(())
}

fn hooks(args: HooksArgs) -> anyhow::Result<ExitCode> {
    let plan = sensor::hook_plan(args.inbound_hooks.unwrap_or_default())?;
    if args.json {
        println!("{}", serde_json::to_string(&plan)?);
    } else {
        println!("hook plan: {plan}");
    }
    Ok(ExitCode::SUCCESS)
}

fn feed_fetch(args: ConfigFlags) -> anyhow::Result<ExitCode> {
    let cfg = args.load()?;
    if cfg.feeds.is_empty() {
        anyhow::bail!("no feeds configured: give --config with [[feed]] tables or --feed LOCATION");
    }
    // The cache is written there: refuse a directory another user controls.
    sensor::check_state_dir(&cfg.state_dir)?;
    let mut manager = FeedManager::load_offline(cfg.feed_settings());
    let runtime = runtime()?;
    let mut failed = 0;
    let now = SystemTime::now();
    for index in 0..manager.states.len() {
        let fc = manager.states[index].config.clone();
        let had = manager.states[index].current.is_some();
        match runtime.block_on(manager.refresh_once(index)) {
            Ok(Some(acc)) => println!("{}\taccepted\t{}", fc.name, acc.counts),
            Ok(None) if had => println!("{}\tnot-modified\t(cached copy kept)", fc.name),
            Ok(None) => println!("{}\tnot-modified\t(no cached copy!)", fc.name),
            Err(e) => {
                failed += 1;
                println!("{}\trejected\t{e}", fc.name);
            }
        }
        if let Some(feed) = &manager.states[index].current {
            let age = feed
                .age(now)
                .map(sensor_daemon::feed::format_age)
                .unwrap_or_else(|| "unknown".into());
            println!(
                "\tformat={} version={} age={age} origin={} location={}",
                feed.data.format.map(|f| f.to_string()).unwrap_or_default(),
                feed.data
                    .version
                    .map(rfc3339)
                    .unwrap_or_else(|| "none".into()),
                feed.origin,
                feed.location
            );
            let r = &feed.data.report;
            if r.bad_count + r.reserved_count + r.unknown_lines > 0 {
                println!(
                    "\tskipped: {} bad records, {} reserved entries, {} unknown lines",
                    r.bad_count, r.reserved_count, r.unknown_lines
                );
            }
        }
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
