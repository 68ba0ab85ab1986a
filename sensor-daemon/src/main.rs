//! `torsensor`: the command-line edge. Errors become one line on stderr.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use sensor_daemon::alert::Schema;
use sensor_daemon::config::{ConfigFlags, RunFlags};
use sensor_daemon::daemon::{self as sensor, StatusFile};
use sensor_daemon::feed::manager::FeedManager;
use sensor_daemon::feed::{FeedMatch, Role};
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
    /// Feed maintenance.
    #[command(subcommand)]
    Feed(FeedCommand),
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
struct StatusArgs {
    #[command(flatten)]
    config: ConfigFlags,
    /// Print the running sensor's whole snapshot as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct SelftestArgs {
    #[command(flatten)]
    config: ConfigFlags,
    /// How long to wait for the result.
    #[arg(long, default_value = "20s", value_parser = sensor_daemon::time::parse_duration)]
    timeout: Duration,
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

#[derive(Args)]
struct CheckArgs {
    #[command(flatten)]
    config: ConfigFlags,
    /// Print JSON lines instead of text.
    #[arg(long)]
    json: bool,
    /// Addresses to look up: IP, IP:PORT or [IPv6]:PORT (the port decides
    /// relay ORPort matches; without it every ORPort is shown).
    #[arg(required = true, value_name = "IP[:PORT]")]
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
        Command::Run(args) => run(args).map(|()| ExitCode::SUCCESS),
        Command::Check(args) => check(args),
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

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
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
    let records = replay::parse(&text)?;
    let window = args.aggregation_window.unwrap_or(cfg.aggregation_window);
    let mut pipeline = Pipeline::new(
        feeds,
        sensor_daemon::alert::rules::Rules::builtin()?,
        SensorIdentity::local(),
        sensor_daemon::kernel::event::BootClock::at(std::time::UNIX_EPOCH),
        KernelOnly,
        Aggregator::new(window, cfg.aggregation_max_groups),
    );
    for alert in replay::run(&mut pipeline, &records, None)? {
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

/// `IP`, `IP:PORT` or `[IPv6]:PORT`.
fn parse_target(text: &str) -> Option<(IpAddr, Option<u16>)> {
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some((ip, None));
    }
    text.parse::<SocketAddr>()
        .ok()
        .map(|sa| (sa.ip(), Some(sa.port())))
}

fn check(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let mut targets = Vec::new();
    for text in &args.addresses {
        match parse_target(text) {
            Some(t) => targets.push((text.as_str(), t)),
            None => {
                eprintln!("torsensor: error: {text:?} is not IP, IP:PORT or [IPv6]:PORT");
                return Ok(ExitCode::from(2));
            }
        }
    }
    let cfg = match args.config.load() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("torsensor: error: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    let (manager, set) = match sensor::load_offline(&cfg) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("torsensor: error: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    // Every feed the user named must answer from its own content: a URL
    // feed without a local copy would otherwise leave the embedded snapshot
    // (or the other feeds) to answer, and "not-listed" would be a false no.
    if let Some(missing) = manager.states.iter().find(|s| s.current.is_none()) {
        eprintln!(
            "torsensor: error: feed {} has no local copy: run `torsensor feed fetch` (state directory {})",
            missing.config.name,
            cfg.state_dir.display()
        );
        return Ok(ExitCode::from(2));
    }
    let mut all_listed = true;
    for (text, (ip, port)) in targets {
        let matches = set.lookup(ip, port);
        all_listed &= !matches.is_empty();
        if args.json {
            let doc = serde_json::json!({
                "address": text,
                "listed": !matches.is_empty(),
                "matches": matches.iter().map(match_json).collect::<Vec<_>>(),
            });
            println!("{doc}");
        } else if matches.is_empty() {
            println!("{text}\tnot-listed");
        } else {
            println!("{text}\tlisted");
            for m in &matches {
                println!("  {}", describe(m));
            }
        }
    }
    Ok(if all_listed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn relays_text(m: &FeedMatch<'_>) -> String {
    let shown: Vec<String> = m
        .relays
        .iter()
        .take(8)
        .map(|r| match &r.nickname {
            Some(n) => format!("{}({n})", r.fingerprint),
            None => r.fingerprint.clone(),
        })
        .collect();
    let more = m.relays.len().saturating_sub(shown.len());
    if more > 0 {
        format!("{} +{more} more", shown.join(","))
    } else {
        shown.join(",")
    }
}

fn describe(m: &FeedMatch<'_>) -> String {
    let mut text = format!(
        "{:<5} feed={} version={} prefix={}",
        m.role.as_str(),
        m.feed.name,
        m.feed
            .data
            .version
            .map(rfc3339)
            .unwrap_or_else(|| "none".into()),
        m.prefix
    );
    if let Some(p) = m.or_port {
        text.push_str(&format!(" orport={p}"));
    }
    if let Some(t) = m.exit_last_seen {
        text.push_str(&format!(" exit_last_seen={}", rfc3339(t)));
    }
    if !m.relays.is_empty() {
        text.push_str(&format!(" relays={}", relays_text(m)));
    }
    text
}

fn match_json(m: &FeedMatch<'_>) -> serde_json::Value {
    serde_json::json!({
        "role": m.role,
        "feed": m.feed.name,
        "origin": m.feed.origin,
        "version": m.feed.data.version.map(rfc3339),
        "prefix": m.prefix.to_string(),
        "or_port": m.or_port,
        "exit_last_seen": m.exit_last_seen.map(rfc3339),
        "relays": m.relays.iter().map(|r| serde_json::json!({
            "fingerprint": r.fingerprint,
            "nickname": r.nickname,
        })).collect::<Vec<_>>(),
        "confidence": if m.role == Role::Relay { "high" } else { "medium" },
    })
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

/// `torsensor selftest`: SIGUSR1 to the running sensor, then its answer
/// from `status.json`.
fn selftest(args: SelftestArgs) -> anyhow::Result<ExitCode> {
    let cfg = args.config.load()?;
    let path = cfg.state_dir.join("status.json");
    let read = || -> anyhow::Result<StatusFile> {
        let bytes = std::fs::read(&path)
            .with_context(|| format!("no sensor status at {}", path.display()))?;
        serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is not a torsensor status file", path.display()))
    };
    let before = read()?;
    let pid = before.feeds.pid;
    let seq = before.selftest.as_ref().map_or(0, |t| t.seq);
    sensor_daemon::sys::send_signal(pid, libc::SIGUSR1)
        .with_context(|| format!("cannot signal the sensor (pid {pid})"))?;
    let deadline = std::time::Instant::now() + args.timeout;
    loop {
        std::thread::sleep(Duration::from_millis(200));
        if let Some(t) = read().ok().and_then(|f| f.selftest).filter(|t| t.seq > seq) {
            println!(
                "selftest {}: {} (canary {} in {}; inbound plan {}; {} ms)",
                if t.passed { "PASSED" } else { "FAILED" },
                t.detail,
                t.canary,
                t.isolation,
                t.plan,
                t.took_ms
            );
            if let Some(plan) = read().ok().and_then(|f| f.hooks) {
                println!("hook plan: {plan}");
            }
            return Ok(ExitCode::from(if t.passed { 0 } else { 1 }));
        }
        if std::time::Instant::now() > deadline {
            println!(
                "selftest: no answer from the sensor (pid {pid}) within {}",
                humantime::format_duration(args.timeout)
            );
            return Ok(ExitCode::from(2));
        }
    }
}

/// `torsensor status`: what the endpoint says, else what the status file
/// says; never an error, always a verdict and an exit code.
fn status(args: StatusArgs) -> ExitCode {
    use sensor_daemon::daemon::telemetry::{Level, Snapshot};
    let unknown = |why: String| {
        println!("TORSENSOR UNKNOWN - {why}");
        ExitCode::from(3)
    };
    let cfg = match args.config.load() {
        Ok(c) => c,
        Err(e) => return unknown(e.to_string()),
    };
    let path = cfg.state_dir.join("status.json");
    let file: StatusFile = match std::fs::read(&path)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
    {
        Ok(f) => f,
        Err(e) => return unknown(format!("no sensor status at {} ({e})", path.display())),
    };
    let pid = file.feeds.pid;
    if !sensor_daemon::sys::process_exists(pid) {
        println!("TORSENSOR CRITICAL - sensor pid {pid} is not running");
        return ExitCode::from(2);
    }
    let Some(addr) = file.metrics else {
        println!(
            "TORSENSOR OK - sensor pid {pid} running (metrics endpoint off: no health details)"
        );
        print_feeds(&file);
        return ExitCode::SUCCESS;
    };
    let snapshot: Snapshot = match fetch_status(addr) {
        Ok(s) => s,
        Err(e) => {
            println!("TORSENSOR CRITICAL - sensor pid {pid} does not answer on {addr}: {e}");
            return ExitCode::from(2);
        }
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&snapshot).expect("serializes")
        );
    }
    let (level, reasons) = snapshot.verdict();
    let alerts: u64 = snapshot.alerts.iter().map(|a| a.count).sum();
    println!(
        "TORSENSOR {level} - {} | alerts={alerts} prefixes={} lost={}",
        if reasons.is_empty() {
            format!("pid {pid} armed and ready")
        } else {
            reasons.join("; ")
        },
        snapshot.prefixes,
        snapshot.kernel.ringbuf_full + snapshot.kernel.pending_full,
    );
    if !args.json {
        print_snapshot(&snapshot);
    }
    ExitCode::from(match level {
        Level::Ok => 0,
        Level::Warning => 1,
        Level::Critical => 2,
    })
}

/// `GET /status` of the endpoint (an unspecified listen address is asked
/// on loopback).
fn fetch_status(
    mut addr: SocketAddr,
) -> anyhow::Result<sensor_daemon::daemon::telemetry::Snapshot> {
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    runtime()?.block_on(async {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .no_proxy()
            .build()?;
        let answer = client.get(format!("http://{addr}/status")).send().await?;
        let body = answer.error_for_status()?.bytes().await?;
        Ok(serde_json::from_slice(&body)?)
    })
}

fn print_snapshot(s: &sensor_daemon::daemon::telemetry::Snapshot) {
    if let Some(plan) = &s.hooks {
        println!("hook plan: {plan}");
    }
    for f in &s.feeds {
        let age = f
            .age_seconds
            .map(|a| sensor_daemon::feed::format_age(Duration::from_secs_f64(a)))
            .unwrap_or_else(|| "-".into());
        println!(
            "feed {}	{}	origin={} age={age}{}	{}",
            f.name,
            if f.loaded { "loaded" } else { "EMPTY" },
            f.origin.as_deref().unwrap_or("-"),
            if f.stale { " STALE" } else { "" },
            f.counts
        );
        if let Some(e) = &f.last_error {
            println!("	last error: {e}");
        }
    }
    for o in &s.outputs {
        println!(
            "output {} ({}, {})	delivered={} failed={} dropped={} queued={} spooled={}",
            o.name,
            o.kind,
            o.schema,
            o.delivered,
            o.failed,
            o.dropped_queue + o.dropped_spool + o.dropped_undeliverable,
            o.queued,
            o.spooled_events
        );
    }
    let k = &s.kernel;
    println!(
        "kernel: {} connections seen, {} hits, {} events lost (ring buffer {}, pending map {})",
        k.connect_seen + k.inbound_seen,
        k.connect_hit + k.inbound_hit,
        k.ringbuf_full + k.pending_full,
        k.ringbuf_full,
        k.pending_full
    );
}

fn print_feeds(file: &StatusFile) {
    if let Some(plan) = &file.hooks {
        println!("hook plan: {plan}");
    }
    for f in &file.feeds.feeds {
        println!(
            "feed {}	{}	version={}{}",
            f.name,
            if f.loaded { "loaded" } else { "EMPTY" },
            f.version.as_deref().unwrap_or("-"),
            if f.stale { " STALE" } else { "" }
        );
    }
}

fn feed_status(args: ConfigFlags) -> anyhow::Result<ExitCode> {
    let cfg = args.load()?;
    let path = cfg.state_dir.join("status.json");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!(
                "torsensor: no feed status at {} ({e}): is a sensor running with state_dir {}?",
                path.display(),
                cfg.state_dir.display()
            );
            return Ok(ExitCode::from(1));
        }
    };
    let file: StatusFile = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a torsensor status file", path.display()))?;
    let status = &file.feeds;
    let alive = sensor_daemon::sys::process_exists(status.pid);
    let written = humantime::parse_rfc3339(&status.written).ok();
    let since = written
        .and_then(|w| SystemTime::now().duration_since(w).ok())
        .unwrap_or_default();
    println!(
        "sensor pid {} ({}), status written {} ({} ago); kernel maps: {} prefixes, {} OR ports{}",
        status.pid,
        if alive { "running" } else { "NOT running" },
        status.written,
        sensor_daemon::feed::format_age(since),
        status.prefixes,
        status.or_ports,
        if status.embedded_fallback {
            "; EMBEDDED SNAPSHOT in use (no configured feed has content)"
        } else {
            ""
        }
    );
    if let Some(plan) = &file.hooks {
        println!("hook plan: {plan}");
    }
    for f in &status.feeds {
        let age = f
            .age_seconds
            .map(|s| sensor_daemon::feed::format_age(Duration::from_secs(s) + since))
            .unwrap_or_else(|| "-".into());
        println!(
            "{}\t{}\t{}\torigin={} format={} version={} age={age}{}",
            f.name,
            if f.loaded { "loaded" } else { "EMPTY" },
            f.location,
            f.origin.as_deref().unwrap_or("-"),
            f.format.as_deref().unwrap_or("-"),
            f.version.as_deref().unwrap_or("-"),
            if f.stale { " STALE" } else { "" },
        );
        if f.loaded {
            println!("\t{}", f.counts);
        }
        if let Some(e) = &f.last_error {
            println!("\tlast error ({} failures in a row): {e}", f.failures);
        }
        if let Some(t) = &f.last_success {
            println!("\tlast success: {t}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
