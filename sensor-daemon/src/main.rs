//! `torsensor`: the command-line edge. Errors become one line on stderr.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use sensor_daemon::config::{DEFAULT_RING_BUFFER_BYTES, SensorConfig};
use sensor_daemon::sensor;

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
    Run(RunArgs),
    /// Say whether addresses are listed, without touching the kernel
    /// (exit 0: all listed, 1: some not, 2: bad input).
    Check(CheckArgs),
}

#[derive(Args)]
struct FeedArgs {
    /// Plain-list feed file (one IP or CIDR per line, # comments); repeatable.
    /// Default: the embedded Tor bulk exit list snapshot.
    #[arg(long = "feed", value_name = "PATH")]
    feeds: Vec<PathBuf>,
    /// Keep loopback/private/documentation entries (labs and tests).
    #[arg(long, env = "TORSENSOR_ALLOW_RESERVED")]
    allow_reserved: bool,
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    feed: FeedArgs,
    /// Report every TCP connection, not only feed matches (debugging, benchmarks).
    #[arg(long, env = "TORSENSOR_AUDIT_ALL")]
    audit_all: bool,
    /// Kernel-to-daemon ring buffer size in bytes (power of two).
    #[arg(long, env = "TORSENSOR_RING_BUFFER_BYTES", default_value_t = DEFAULT_RING_BUFFER_BYTES)]
    ring_buffer_bytes: u32,
    /// Forward kernel-side debug logs to stderr.
    #[arg(long, env = "TORSENSOR_KERNEL_LOG")]
    kernel_log: bool,
    /// Write final counters (JSON) to this file at exit.
    #[arg(long, value_name = "PATH")]
    stats_file: Option<PathBuf>,
    /// Seconds between checks of the kernel loss counters.
    #[arg(long, default_value_t = 5)]
    health_interval_secs: u64,
}

#[derive(Args)]
struct CheckArgs {
    #[command(flatten)]
    feed: FeedArgs,
    /// Addresses to look up.
    #[arg(required = true, value_name = "IP")]
    addresses: Vec<String>,
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
    let result = match cli.command {
        Command::Run(args) => run(args),
        Command::Check(args) => return check(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("torsensor: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    let cfg = SensorConfig {
        feeds: args.feed.feeds,
        allow_reserved: args.feed.allow_reserved,
        audit_all: args.audit_all,
        ring_buffer_bytes: args.ring_buffer_bytes,
        kernel_log: args.kernel_log,
        stats_file: args.stats_file,
        health_interval: Duration::from_secs(args.health_interval_secs),
    };
    // sensor::run validates the configuration before anything else.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(sensor::run(cfg))?;
    Ok(())
}

fn check(args: CheckArgs) -> ExitCode {
    let mut addresses = Vec::new();
    for text in &args.addresses {
        match text.parse::<IpAddr>() {
            Ok(ip) => addresses.push(ip),
            Err(_) => {
                eprintln!("torsensor: error: {text:?} is not an IP address");
                return ExitCode::from(2);
            }
        }
    }
    let feeds = match sensor::load_feeds(&args.feed.feeds, args.feed.allow_reserved) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("torsensor: error: {e}");
            return ExitCode::from(2);
        }
    };
    let mut all_listed = true;
    for ip in addresses {
        match feeds.lookup(ip) {
            Some(hit) => println!(
                "{ip}\tlisted\t{}\t{}",
                hit.prefix,
                feeds.feed_names(hit.matched.feeds).join(",")
            ),
            None => {
                all_listed = false;
                println!("{ip}\tnot-listed");
            }
        }
    }
    if all_listed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
