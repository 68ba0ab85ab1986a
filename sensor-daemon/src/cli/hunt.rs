//! `torsensor hunt`: past captures, flow logs and access logs checked
//! against the Tor history at their time (README, "Hunt").

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use clap::Args;
use sensor_daemon::alert::hunt::{HuntInput, build};
use sensor_daemon::alert::rules::{Action, Decision, Rules};
use sensor_daemon::alert::{Schema, SensorIdentity};
use sensor_daemon::config::ConfigFlags;
use sensor_daemon::config::flags::OutputParser;
use sensor_daemon::hunt::report::{Format, InputSummary, Tally};
use sensor_daemon::hunt::{Finding, FindingKind, FlowEnd, Hunter, InputKind, input};
use sensor_daemon::sink::{AlertMeta, OutputConfig, Sinks};

#[derive(Args)]
pub(crate) struct HuntArgs {
    #[command(flatten)]
    pub(crate) config: ConfigFlags,
    /// The history directory (`torsensor history import`). Default:
    /// history/ in the state directory (/var/lib/torsensor/history).
    #[arg(long, env = "TORSENSOR_HISTORY", value_name = "DIR")]
    pub(crate) history: Option<PathBuf>,
    /// Only records from this time on (RFC 3339).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub(crate) since: Option<SystemTime>,
    /// Only records before this time (RFC 3339).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub(crate) until: Option<SystemTime>,
    /// The summary's format.
    #[arg(long, value_enum, default_value = "table")]
    pub(crate) format: Format,
    /// Write the summary here instead of stdout (stderr when the alerts go
    /// to stdout).
    #[arg(long, value_name = "PATH")]
    pub(crate) summary: Option<PathBuf>,
    /// Where alerts go, repeatable, as `torsensor run --output` (README,
    /// "Outputs"). Default: the configuration's outputs, else stdout.
    #[arg(long = "output", value_name = "DEST[,key=value...]", value_parser = OutputParser)]
    pub(crate) outputs: Vec<OutputConfig>,
    /// Alert every match, not only the substantial ones.
    #[arg(long)]
    pub(crate) all: bool,
    /// Thresholds (default from `[hunt]`): bytes of a flow (or of a
    /// client's responses in a window).
    #[arg(long, value_name = "BYTES")]
    pub(crate) min_bytes: Option<u64>,
    #[arg(long, value_parser = sensor_daemon::time::parse_duration, value_name = "DURATION")]
    pub(crate) min_duration: Option<Duration>,
    #[arg(long, value_name = "N")]
    pub(crate) min_requests: Option<u64>,
    /// Read X-Forwarded-For in access logs (`[hunt] forwarded_for`).
    #[arg(long)]
    pub(crate) forwarded_for: bool,
    /// How long before an event a relay/exit interval may have ended and
    /// still match (default: 1 day relays, 2 days exits, as ExoneraTor).
    #[arg(long, value_parser = sensor_daemon::time::parse_duration, value_name = "DURATION")]
    pub(crate) window_before: Option<Duration>,
    /// How long after an event an interval may begin and still match
    /// (default: 1 day).
    #[arg(long, value_parser = sensor_daemon::time::parse_duration, value_name = "DURATION")]
    pub(crate) window_after: Option<Duration>,
    /// No progress bar (it is drawn on a terminal only).
    #[arg(long)]
    pub(crate) no_progress: bool,
    /// Captures (PCAP, pcapng, with NetFlow/IPFIX exports), Zeek conn.log,
    /// nfdump CSV/JSON, access logs; gzip is undone. Told by content.
    #[arg(required = true, value_name = "INPUT")]
    pub(crate) inputs: Vec<PathBuf>,
}

fn parse_time(text: &str) -> Result<SystemTime, String> {
    humantime::parse_rfc3339_weak(text)
        .map_err(|e| format!("{text:?} is not a time like 2025-03-01T12:00:00Z ({e})"))
}

/// At most this many bad records are printed per input (all are counted).
const BAD_SHOWN: u64 = 20;

pub(crate) fn hunt(args: HuntArgs) -> anyhow::Result<ExitCode> {
    let cfg = match args.config.load() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("torsensor: error: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    let mut settings = cfg.hunt.clone();
    if let Some(b) = args.min_bytes {
        settings.min_bytes = b;
    }
    if let Some(d) = args.min_duration {
        settings.min_duration = d;
    }
    if let Some(n) = args.min_requests {
        settings.min_requests = n;
    }
    settings.forwarded_for |= args.forwarded_for;
    if let Err(e) = settings.validate() {
        eprintln!("torsensor: error: {e}");
        return Ok(ExitCode::from(2));
    }
    let window = super::history::window(args.window_before, args.window_after);
    for path in &args.inputs {
        if let Err(e) = std::fs::metadata(path) {
            eprintln!("torsensor: error: {}: {e}", path.display());
            return Ok(ExitCode::from(2));
        }
    }
    let dir = super::history::dir_for_check(args.history.clone(), &cfg.state_dir);
    let index = match super::history::load_for_check(&dir) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("torsensor: error: {e:#}");
            return Ok(ExitCode::from(2));
        }
    };
    let rules = match Rules::load(Some(&cfg.rules_dir)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("torsensor: error: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    let outputs = if args.outputs.is_empty() {
        cfg.outputs_or_stdout()
    } else {
        args.outputs.clone()
    };
    let alerts_on_stdout = outputs.iter().any(|o| o.to == "stdout");
    // Sinks run on their own thread; the hunt reads on this one and waits
    // for room in their queues (nothing is dropped for speed).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the output runtime")?;
    let handle = runtime.handle().clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let driver = std::thread::Builder::new()
        .name("outputs".into())
        .spawn(move || {
            runtime.block_on(async {
                let _ = stopped.await;
            })
        })
        .context("starting the output thread")?;
    let sinks = {
        let _guard = handle.enter();
        match Sinks::start(&outputs, &cfg.state_dir, "torsensor") {
            Ok(s) => s,
            Err(e) => {
                eprintln!("torsensor: error: {e}");
                return Ok(ExitCode::from(2));
            }
        }
    };
    let sensor = SensorIdentity {
        host_name: cfg
            .host_name
            .clone()
            .unwrap_or_else(sensor_daemon::sys::hostname),
        version: env!("CARGO_PKG_VERSION"),
    };
    let paths: Vec<String> = args
        .inputs
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    let kinds: std::cell::RefCell<Vec<Option<InputKind>>> =
        std::cell::RefCell::new(vec![None; paths.len()]);
    let mut tally = Tally::default();
    let mut alerts: u64 = 0;
    let mut excepted: u64 = 0;
    let bad_counts: std::cell::RefCell<Vec<u64>> = std::cell::RefCell::new(vec![0; paths.len()]);
    let mut emit = |f: Finding| {
        let kind = kinds.borrow()[f.input];
        let input_kind = match (kind, &f.kind) {
            (Some(InputKind::Pcap | InputKind::PcapNg), FindingKind::Flow(flow))
                if flow.end == FlowEnd::Record =>
            {
                "netflow"
            }
            (Some(k), _) => k.as_str(),
            (None, _) => "unknown",
        };
        let path = &paths[f.input];
        let mut alerted = false;
        if !f.tor.roles.is_empty() && (f.substantial || args.all) {
            let created = SystemTime::now();
            let rule = rules.for_match(f.direction, &f.tor.roles);
            let mut alert = build(&HuntInput {
                finding: &f,
                index: &index,
                input_kind,
                path,
                rule,
                sensor: &sensor,
                created,
            });
            match rules.decide(&alert, created) {
                Decision::Rule(rule) => {
                    alert.rule = Some(rule.reference());
                    alert.tags = Some(rule.tags.clone());
                    alert.event.severity = Some(rule.severity);
                    // A block rule alerts (nothing can be blocked in the
                    // past); a log rule writes a log line only.
                    if rule.action == Action::Log {
                        tracing::info!(rule = %rule.id, tor = %f.tor.ip, "hunt match (log rule)");
                    } else {
                        let meta = AlertMeta {
                            time: alert.timestamp.0,
                            severity: rule.severity,
                            rule_id: rule.id.clone(),
                            host: sensor.host_name.clone(),
                        };
                        sinks.send_wait(&meta, &|schema: Schema| schema.render(&alert));
                        alerts += 1;
                        alerted = true;
                    }
                }
                Decision::Excepted(..) => excepted += 1,
                Decision::Unmatched => {}
            }
        }
        let web = std::path::Path::new(path)
            .file_name()
            .map_or_else(|| path.clone(), |n| n.to_string_lossy().into_owned());
        tally.add(&f, alerted, &web);
    };
    let mut bad = |input: usize, offset: u64, why: &str| {
        let mut counts = bad_counts.borrow_mut();
        counts[input] += 1;
        if counts[input] <= BAD_SHOWN {
            eprintln!("torsensor: warning: {}:{offset}: {why}", paths[input]);
        }
    };
    let mut hunter = Hunter::new(
        &index, window, &settings, args.since, args.until, &mut emit, &mut bad,
    );
    let mut summaries = Vec::new();
    let progress = indicatif::ProgressBar::with_draw_target(
        Some(0),
        if args.no_progress {
            indicatif::ProgressDrawTarget::hidden()
        } else {
            indicatif::ProgressDrawTarget::stderr()
        },
    );
    progress.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} {msg} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {binary_bytes_per_sec} ({eta})",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut failed = false;
    for (i, path) in args.inputs.iter().enumerate() {
        hunter.set_input(i);
        let shown = &paths[i];
        let opened = match input::open(path) {
            Ok(o) => o,
            Err(e) => {
                eprintln!("torsensor: error: {shown}: {e}");
                failed = true;
                summaries.push(InputSummary {
                    path: shown.clone(),
                    kind: "unknown".into(),
                    bytes: 0,
                    bad_records: 0,
                    error: Some(e.to_string()),
                });
                continue;
            }
        };
        kinds.borrow_mut()[i] = Some(opened.kind);
        let (kind, size, gzip) = (opened.kind, opened.size, opened.gzip);
        progress.set_length(size);
        progress.set_position(0);
        progress.set_message(shown.clone());
        let mut read_bytes = 0u64;
        let mut on_progress = |n: u64| {
            read_bytes = read_bytes.max(n);
            // Compressed inputs: the decompressed bytes overtake the size.
            if !gzip {
                progress.set_position(n.min(size));
            } else {
                progress.set_length(size.max(n));
                progress.set_position(n);
            }
        };
        let result = opened.read(&settings, &mut hunter, &mut on_progress);
        hunter.finish_input();
        let error = result.err().map(|e| e.to_string());
        if let Some(e) = &error {
            eprintln!("torsensor: warning: {shown}: {e}");
        }
        let bad_records = bad_counts.borrow()[i];
        if bad_records > BAD_SHOWN {
            eprintln!(
                "torsensor: warning: {shown}: {bad_records} bad records in all ({} more not shown)",
                bad_records - BAD_SHOWN
            );
        }
        summaries.push(InputSummary {
            path: shown.clone(),
            kind: kind.as_str().into(),
            bytes: read_bytes.max(size),
            bad_records,
            error,
        });
    }
    progress.finish_and_clear();
    let stats = hunter.stats.clone();
    drop(hunter);
    let summary = tally.finish(stats, summaries);
    let rendered = summary.render(args.format);
    let sink_stats = handle.block_on(sinks.shutdown(cfg.shutdown_deadline));
    let _ = stop.send(());
    let _ = driver.join();
    let dropped: u64 = sink_stats
        .iter()
        .map(|s| s.dropped_queue + s.dropped_spool + s.dropped_undeliverable)
        .sum();
    match &args.summary {
        Some(path) => {
            std::fs::write(path, rendered)
                .with_context(|| format!("writing {}", path.display()))?;
        }
        None if alerts_on_stdout => {
            std::io::stderr().write_all(rendered.as_bytes())?;
        }
        None => {
            std::io::stdout().write_all(rendered.as_bytes())?;
        }
    }
    eprintln!(
        "torsensor: hunt: {alerts} alerts, {excepted} matches excepted by rules, {} bad records{}",
        summary.stats.bad_records,
        if dropped > 0 {
            format!(", {dropped} alerts could not be delivered (see the sink errors above)")
        } else {
            String::new()
        }
    );
    Ok(if failed {
        ExitCode::from(2)
    } else if alerts > 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
