//! The commands that ask a running sensor: `status` (its endpoint, else
//! its status file), `selftest` (SIGUSR1, the answer from `status.json`)
//! and `feed status` (the status file).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use clap::Args;
use sensor_daemon::config::ConfigFlags;
use sensor_daemon::daemon::StatusFile;

use crate::runtime;

#[derive(Args)]
pub(crate) struct StatusArgs {
    #[command(flatten)]
    pub(crate) config: ConfigFlags,
    /// Print the running sensor's whole snapshot as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Args)]
pub(crate) struct SelftestArgs {
    #[command(flatten)]
    pub(crate) config: ConfigFlags,
    /// How long to wait for the result.
    #[arg(long, default_value = "20s", value_parser = sensor_daemon::time::parse_duration)]
    pub(crate) timeout: Duration,
}

/// `torsensor selftest`: SIGUSR1 to the running sensor, then its answer
/// from `status.json`.
pub(crate) fn selftest(args: SelftestArgs) -> anyhow::Result<ExitCode> {
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
pub(crate) fn status(args: StatusArgs) -> ExitCode {
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
        snapshot.kernel.ringbuf_full
            + snapshot.kernel.pending_full
            + snapshot.kernel.exec_ringbuf_full
            + snapshot.kernel.dns_ringbuf_full
            + snapshot.kernel.gw_ringbuf_full,
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
    println!(
        "local signals: {} programs started, {} sent (name {}, TOR_PT_* {}), {} environments scanned in part, {} lost; {} listens, {} on watched ports",
        k.exec_seen,
        k.exec_sent,
        k.exec_name_hit,
        k.exec_env_hit,
        k.exec_env_partial,
        k.exec_ringbuf_full,
        k.listen_seen,
        k.listen_hit
    );
    println!(
        "DNS: {} packets to DNS ports looked at, {} watched names sent, {} unparsed, {} without a process, {} lost",
        k.dns_seen, k.dns_sent, k.dns_unparsed, k.dns_no_process, k.dns_ringbuf_full
    );
    for c in &s.collectors {
        let n = &c.stats;
        println!(
            "collector {}\t{} datagrams ({} refused, {} lost: queue {}, kernel {}), {} exporters, {} records ({} matched), {} substantial flows, {} below the thresholds, {} malformed, {} without a template",
            c.listener,
            n.datagrams,
            c.refused,
            c.dropped + c.kernel_dropped,
            c.dropped,
            c.kernel_dropped,
            c.exporters,
            n.records,
            n.matched,
            n.substantial,
            n.below_threshold,
            n.malformed,
            n.unknown_templates
        );
    }
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

pub(crate) fn feed_status(args: ConfigFlags) -> anyhow::Result<ExitCode> {
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
