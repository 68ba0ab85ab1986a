//! `torsensor check`: what the feeds know of addresses, from local files
//! and the cache only (no kernel, no network).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use clap::Args;
use sensor_daemon::config::ConfigFlags;
use sensor_daemon::daemon as sensor;
use sensor_daemon::feed::{FeedMatch, Role};
use sensor_daemon::time::rfc3339_secs as rfc3339;

#[derive(Args)]
pub(crate) struct CheckArgs {
    #[command(flatten)]
    pub(crate) config: ConfigFlags,
    /// Print JSON lines instead of text.
    #[arg(long)]
    pub(crate) json: bool,
    /// Look the addresses up in the history index at this time (RFC 3339,
    /// e.g. 2025-03-01T12:00:00Z) instead of in the current feeds.
    #[arg(long, value_name = "TIME", value_parser = parse_at)]
    pub(crate) at: Option<SystemTime>,
    /// The history directory for --at. Default: history/ in the state
    /// directory (/var/lib/torsensor/history).
    #[arg(long, env = "TORSENSOR_HISTORY", value_name = "DIR")]
    pub(crate) history: Option<PathBuf>,
    /// With --at: how long before the time an interval may have ended and
    /// still match (default: 1 day for relays, 2 days for exits, as
    /// ExoneraTor).
    #[arg(long, value_parser = sensor_daemon::time::parse_duration, value_name = "DURATION")]
    pub(crate) window_before: Option<Duration>,
    /// With --at: how long after the time an interval may begin and still
    /// match (default: 1 day for both roles).
    #[arg(long, value_parser = sensor_daemon::time::parse_duration, value_name = "DURATION")]
    pub(crate) window_after: Option<Duration>,
    /// Addresses to look up: IP, IP:PORT or [IPv6]:PORT (the port decides
    /// relay ORPort matches; without it every ORPort is shown).
    #[arg(required = true, value_name = "IP[:PORT]")]
    pub(crate) addresses: Vec<String>,
}

fn parse_at(text: &str) -> Result<SystemTime, String> {
    humantime::parse_rfc3339_weak(text)
        .map_err(|e| format!("{text:?} is not a time like 2025-03-01T12:00:00Z ({e})"))
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

pub(crate) fn check(args: CheckArgs) -> anyhow::Result<ExitCode> {
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
    if let Some(at) = args.at {
        let dir = super::history::dir_for_check(args.history.clone(), &cfg.state_dir);
        let index = match super::history::load_for_check(&dir) {
            Ok(i) => i,
            Err(e) => {
                eprintln!("torsensor: error: {e:#}");
                return Ok(ExitCode::from(2));
            }
        };
        let window = super::history::window(args.window_before, args.window_after);
        let targets: Vec<(&str, IpAddr, Option<u16>)> =
            targets.iter().map(|(t, (ip, p))| (*t, *ip, *p)).collect();
        return Ok(super::history::check_at(
            &index, at, &window, &targets, args.json,
        ));
    }
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
        .map(|r| {
            let mut text = match &r.nickname {
                Some(n) => format!("{}({n})", r.fingerprint),
                None => r.fingerprint.clone(),
            };
            if !r.flags.is_empty() {
                text.push_str(&format!("[{}]", r.flags.join(" ")));
            }
            text
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
            "flags": r.flags,
        })).collect::<Vec<_>>(),
        "confidence": if m.role == Role::Exit { "medium" } else { "high" },
    })
}
