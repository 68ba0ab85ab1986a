//! `torsensor history import|status` and the history side of
//! `torsensor check --at`.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use clap::{Args, Subcommand};
use sensor_daemon::feed::source::{Limits, Location, body_of, client_for, fetch};
use sensor_daemon::history::index::{Summary, time};
use sensor_daemon::history::{self, Builder, DEFAULT_HISTORY_DIR, Importer, Index, Window};
use sensor_daemon::time::rfc3339_secs as rfc3339;

#[derive(Subcommand)]
pub(crate) enum HistoryCommand {
    /// Import CollecTor data into the history index: monthly archives
    /// (exit-list-YYYY-MM.tar.xz, consensuses-YYYY-MM.tar.xz, streamed),
    /// single documents (exit lists, consensuses of either flavour, with or
    /// without CollecTor's @type line), directories of them, or URLs of
    /// today's documents. Importing again adds only what is new. Exit 0,
    /// or 1 if some input was bad (the rest is imported).
    Import(ImportArgs),
    /// What the history index holds: documents, relays, addresses, span.
    Status(StatusArgs),
    /// Benchmark: a year of synthetic hourly consensuses indexed, lookups/s
    /// against a BTreeMap baseline (run by `cargo xtask bench`).
    #[command(hide = true)]
    Bench {
        #[arg(long, default_value_t = 8760)]
        documents: u32,
        #[arg(long, default_value_t = 7000)]
        relays: u32,
        #[arg(long, default_value_t = 2_000_000)]
        lookups: usize,
        /// Where the index file is written (to measure its size).
        #[arg(long)]
        dir: PathBuf,
    },
}

#[derive(Args)]
pub(crate) struct HistoryDir {
    /// The history directory (index.tshist in it).
    #[arg(long = "history", env = "TORSENSOR_HISTORY", default_value = DEFAULT_HISTORY_DIR, value_name = "DIR")]
    pub(crate) dir: PathBuf,
}

#[derive(Args)]
pub(crate) struct ImportArgs {
    #[command(flatten)]
    dir: HistoryDir,
    /// Allow plain-http URLs to other hosts than loopback.
    #[arg(long)]
    allow_http: bool,
    /// Files, directories, archives or http(s) URLs.
    #[arg(required = true, value_name = "PATH|URL")]
    sources: Vec<String>,
}

#[derive(Args)]
pub(crate) struct StatusArgs {
    #[command(flatten)]
    dir: HistoryDir,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

pub(crate) fn history(command: HistoryCommand) -> anyhow::Result<ExitCode> {
    match command {
        HistoryCommand::Import(args) => import(args),
        HistoryCommand::Status(args) => status(args),
        HistoryCommand::Bench {
            documents,
            relays,
            lookups,
            dir,
        } => {
            sensor_daemon::bench::history::run(documents, relays, lookups, &dir)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn is_url(text: &str) -> bool {
    text.starts_with("http://") || text.starts_with("https://")
}

/// Largest download accepted (an archive is streamed from memory).
const MAX_DOWNLOAD_BYTES: u64 = 1 << 30;

fn import(args: ImportArgs) -> anyhow::Result<ExitCode> {
    let dir = history::open_dir(&args.dir.dir)?;
    let mut builder = match history::load(&dir)? {
        Some(index) => Builder::from_index(index),
        None => Builder::new(),
    };
    let paths: Vec<PathBuf> = args
        .sources
        .iter()
        .filter(|s| !is_url(s))
        .map(PathBuf::from)
        .collect();
    let progress = indicatif::ProgressBar::with_draw_target(
        Some(history::import::total_bytes(&paths)),
        indicatif::ProgressDrawTarget::stderr(),
    );
    progress.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} ({eta})",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut importer = Importer::new(&mut builder, Some(progress.clone()));
    let mut runtime = None;
    for source in &args.sources {
        if is_url(source) {
            let rt = match runtime.as_mut() {
                Some(rt) => rt,
                None => runtime.insert(crate::runtime()?),
            };
            match download(rt, source, args.allow_http) {
                Ok(body) => {
                    let len = body.len() as u64;
                    importer.reader(source, std::io::Cursor::new(body), len);
                }
                Err(e) => {
                    tracing::warn!("{source}: {e}");
                    importer.report.error_count += 1;
                    importer.report.errors.push(format!("{source}: {e}"));
                }
            }
        } else {
            importer.path(Path::new(source));
        }
    }
    progress.finish_and_clear();
    let report = importer.report;
    let changed = report.documents() > 0;
    let index = builder.finish();
    let size = if changed {
        history::save(&dir, &index)?
    } else {
        std::fs::metadata(dir.path().join(history::INDEX_FILE)).map_or(0, |m| m.len())
    };
    println!(
        "imported {} documents ({} consensuses, {} exit lists, {} records), {} already in the index, {} of other types skipped, {} with bad records skipped in part, {} errors",
        report.documents(),
        report.consensuses,
        report.exit_lists,
        report.records,
        report.duplicates,
        report.skipped,
        report.with_bad_records,
        report.error_count
    );
    for e in &report.errors {
        println!("  error: {e}");
    }
    if report.error_count > report.errors.len() {
        println!(
            "  ... and {} more errors",
            report.error_count - report.errors.len()
        );
    }
    print_summary(
        &index.summary(),
        size,
        &dir.path().join(history::INDEX_FILE),
    );
    Ok(if report.error_count == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn download(
    runtime: &tokio::runtime::Runtime,
    url: &str,
    allow_http: bool,
) -> anyhow::Result<Vec<u8>> {
    let location = Location::parse(url, allow_http)?;
    let limits = Limits {
        connect_timeout: Duration::from_secs(10),
        timeout: Duration::from_secs(600),
        max_bytes: MAX_DOWNLOAD_BYTES,
    };
    let client = client_for(&location, &limits, allow_http)?;
    runtime
        .block_on(async {
            body_of(fetch(client.as_ref(), &location, &Default::default(), &limits).await)
        })
        .map_err(anyhow::Error::msg)
}

fn span_text(span: Option<(u32, u32)>) -> String {
    match span {
        Some((a, b)) => format!("{} .. {}", rfc3339(time(a)), rfc3339(time(b))),
        None => "none".into(),
    }
}

fn print_summary(s: &Summary, size: u64, path: &Path) {
    println!(
        "index {}: {} documents ({} consensuses, {} exit lists), {} relays, {} addresses ({} IPv4, {} IPv6), {} intervals ({} relay, {} exit), span {}, {} bytes on disk, {} bytes in memory",
        path.display(),
        s.documents,
        s.consensuses,
        s.exit_lists,
        s.relays,
        s.addresses,
        s.ipv4,
        s.ipv6,
        s.intervals,
        s.relay_intervals,
        s.exit_intervals,
        span_text(s.span),
        size,
        s.memory_bytes
    );
}

fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let index = history::load_existing(&args.dir.dir)?;
    let path = args.dir.dir.join(history::INDEX_FILE);
    let size = std::fs::metadata(&path).map_or(0, |m| m.len());
    let s = index.summary();
    if args.json {
        let mut doc = serde_json::to_value(&s)?;
        doc["span"] = match s.span {
            Some((a, b)) => serde_json::json!([rfc3339(time(a)), rfc3339(time(b))]),
            None => serde_json::Value::Null,
        };
        doc["file_bytes"] = size.into();
        doc["path"] = path.display().to_string().into();
        println!("{doc}");
    } else {
        print_summary(&s, size, &path);
    }
    Ok(ExitCode::SUCCESS)
}

/// `check --at`: the addresses against the history index at a time.
/// Exit 0 all matched, 1 some did not.
pub(crate) fn check_at(
    index: &Index,
    at: SystemTime,
    window: &Window,
    targets: &[(&str, IpAddr, Option<u16>)],
    json: bool,
) -> ExitCode {
    let mut all = true;
    for &(text, ip, port) in targets {
        let hits: Vec<_> = index
            .lookup(ip, at, window)
            .into_iter()
            .filter(|h| {
                // With a port, a relay interval must have that ORPort.
                port.is_none_or(|p| {
                    h.role == history::Role::Exit || index.details(h).or_ports.contains(&p)
                })
            })
            .collect();
        all &= !hits.is_empty();
        if json {
            let matches: Vec<serde_json::Value> = hits
                .iter()
                .map(|h| {
                    let d = index.details(h);
                    serde_json::json!({
                        "role": h.role,
                        "torsensor.tor.history.first_seen": rfc3339(time(h.first_seen)),
                        "torsensor.tor.history.last_seen": rfc3339(time(h.last_seen)),
                        "torsensor.tor.history.distance": h.distance,
                        "fingerprint": d.fingerprint,
                        "nickname": d.nickname,
                        "or_ports": d.or_ports,
                        "flags": d.flags,
                    })
                })
                .collect();
            let doc = serde_json::json!({
                "address": text,
                "at": rfc3339(at),
                "listed": !hits.is_empty(),
                "matches": matches,
            });
            println!("{doc}");
        } else if hits.is_empty() {
            println!("{text}\tnot-listed\tat {}", rfc3339(at));
        } else {
            println!("{text}\tlisted\tat {}", rfc3339(at));
            for h in &hits {
                let d = index.details(h);
                let mut line = format!(
                    "  {:<5} first_seen={} last_seen={} distance={} fingerprint={}",
                    h.role.as_str(),
                    rfc3339(time(h.first_seen)),
                    rfc3339(time(h.last_seen)),
                    distance_text(h.distance),
                    d.fingerprint
                );
                if let Some(n) = d.nickname {
                    line.push_str(&format!(" nickname={n}"));
                }
                if !d.or_ports.is_empty() {
                    let ports: Vec<String> = d.or_ports.iter().map(u16::to_string).collect();
                    line.push_str(&format!(" orports={}", ports.join(",")));
                }
                if !d.flags.is_empty() {
                    line.push_str(&format!(" flags={}", d.flags.join(",")));
                }
                println!("{line}");
            }
        }
    }
    if all {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// `0s`, `+1h 30m` (after the interval), `-2days` (before it).
fn distance_text(d: i64) -> String {
    let sign = match d.signum() {
        1 => "+",
        -1 => "-",
        _ => "",
    };
    format!(
        "{sign}{}",
        humantime::format_duration(Duration::from_secs(d.unsigned_abs()))
    )
}

/// The history directory `check --at` reads: `--history`, else `history/`
/// in the state directory.
/// ExoneraTor's windows, or both roles' replaced by `--window-before` /
/// `--window-after` (`check --at`, `hunt`).
pub(crate) fn window(
    before: Option<std::time::Duration>,
    after: Option<std::time::Duration>,
) -> Window {
    let mut window = Window::default();
    if let Some(b) = before {
        (window.relay_before, window.exit_before) = (b, b);
    }
    if let Some(a) = after {
        (window.relay_after, window.exit_after) = (a, a);
    }
    window
}

pub(crate) fn dir_for_check(given: Option<PathBuf>, state_dir: &Path) -> PathBuf {
    given.unwrap_or_else(|| state_dir.join("history"))
}

pub(crate) fn load_for_check(dir: &Path) -> anyhow::Result<Index> {
    history::load_existing(dir).with_context(|| "reading the history index".to_string())
}
