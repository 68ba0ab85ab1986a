//! `torsensor rules check` and `torsensor rules test`: the rules in force,
//! validated and shown as the sensor will apply them, and recorded alerts
//! run through them with the reason for each decision.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::SystemTime;

use clap::{Args, Subcommand};
use sensor_daemon::alert::Alert;
use sensor_daemon::alert::rules::block::{self, Resolver};
use sensor_daemon::alert::rules::{Action, Decision, RawWhen, Rule, RuleError, Rules};
use sensor_daemon::config::ConfigFlags;
use sensor_daemon::daemon::status::RulesStatus;
use sensor_daemon::enrich::container;

#[derive(Subcommand)]
pub(crate) enum RulesCommand {
    /// Validate rule files and print every rule in the order it is tried,
    /// as the sensor will apply it (the shipped rules plus `rules_dir`, or
    /// plus the files and directories given). With a running sensor's
    /// status file, also the exceptions that have matched nothing since it
    /// started. Exit 0 valid, 2 not (file:line:column named).
    Check(RulesCheckArgs),
    /// Run recorded alerts (JSON lines, ECS, as the sensor writes them)
    /// through the rules: which rule decides, which exception holds, and
    /// each condition that held or not. Exit 0 when every alert is alerted
    /// by a rule, 1 when one is excepted or taken by no rule, 2 bad input.
    Test(RulesTestArgs),
}

#[derive(Args)]
pub(crate) struct RulesCheckArgs {
    #[command(flatten)]
    config: ConfigFlags,
    /// Rule files or directories read after the shipped rules, instead of
    /// `rules_dir`.
    paths: Vec<PathBuf>,
}

#[derive(Args)]
pub(crate) struct RulesTestArgs {
    #[command(flatten)]
    config: ConfigFlags,
    /// The recorded alerts: one JSON alert per line.
    #[arg(long, value_name = "FILE")]
    event: PathBuf,
    /// Rule files or directories, instead of `rules_dir`.
    paths: Vec<PathBuf>,
}

pub(crate) fn rules(command: RulesCommand) -> anyhow::Result<ExitCode> {
    match command {
        RulesCommand::Check(args) => check(args),
        RulesCommand::Test(args) => test(args),
    }
}

/// The shipped rules and either `paths` (files, or directories of
/// `*.toml`) or the configured `rules_dir`.
fn load(config: &ConfigFlags, paths: &[PathBuf]) -> Result<Rules, String> {
    if paths.is_empty() {
        let cfg = config.load().map_err(|e| e.to_string())?;
        return Rules::load(Some(&cfg.rules_dir)).map_err(|e| e.to_string());
    }
    let mut rules = Rules::builtin().map_err(|e| e.to_string())?;
    for path in paths {
        if path.is_dir() {
            let dir = Rules::load(Some(path)).map_err(|e| e.to_string())?;
            for file in dir.files.iter().skip(1) {
                add(&mut rules, Path::new(file))?;
            }
        } else {
            add(&mut rules, path)?;
        }
    }
    Ok(rules)
}

fn add(rules: &mut Rules, path: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        RuleError::Dir {
            dir: path.display().to_string(),
            message: e.to_string(),
        }
        .to_string()
    })?;
    rules
        .add_file(&path.display().to_string(), &text, false)
        .map_err(|e| e.to_string())
}

/// `key = value, ...` of the conditions given.
fn when_text(raw: &RawWhen) -> String {
    let value = serde_json::to_value(raw).unwrap_or_default();
    let Some(map) = value.as_object() else {
        return String::new();
    };
    map.iter()
        .map(|(k, v)| format!("{k} = {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn check(args: RulesCheckArgs) -> anyhow::Result<ExitCode> {
    let rules = match load(&args.config, &args.paths) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("torsensor: error: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    // What a running sensor has counted, if its status file is there.
    let counted = args
        .config
        .load()
        .ok()
        .and_then(|cfg| std::fs::read_to_string(cfg.state_dir.join("status.json")).ok())
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|mut v| serde_json::from_value::<RulesStatus>(v["rules"].take()).ok());
    let now = SystemTime::now();
    println!("{} rules from {}", rules.list.len(), rules.files.join(", "));
    // Block rules: the names the kernel's table needs must resolve here.
    if rules
        .list
        .iter()
        .any(|r| r.enabled && r.action == Action::Block)
    {
        let hierarchy = container::host_cgroup2_mount().unwrap_or_else(|| "/sys/fs/cgroup".into());
        let resolver = Resolver {
            passwd: Path::new("/etc/passwd"),
            cgroup_root: &hierarchy,
        };
        match block::compile(&rules, None, &resolver, now) {
            Ok(table) => println!(
                "block rules: {} kernel entries of {} (users and cgroups resolved on this host; they act when [blocking] mode is dry-run or enforce)",
                table.len(),
                sensor_common::block::MAX_RULES
            ),
            Err(e) => {
                eprintln!("torsensor: error: {e}");
                return Ok(ExitCode::from(2));
            }
        }
    }
    for rule in &rules.list {
        print_rule(rule);
        for e in &rule.except {
            let until = e.expires.map_or_else(
                || "no expiry".to_owned(),
                |t| format!("until {}", sensor_daemon::time::rfc3339_secs(t)),
            );
            let expired = if e.expires.is_some_and(|t| t <= now) {
                " EXPIRED: no longer applied"
            } else {
                ""
            };
            println!(
                "    except {:?} ({until}, {}){expired}: {}",
                e.reason,
                e.at,
                when_text(&e.when.raw)
            );
            if let Some(status) = &counted {
                let hits = status
                    .counts
                    .rules
                    .get(&rule.id)
                    .and_then(|c| c.excepted.get(&e.at))
                    .copied()
                    .unwrap_or(0);
                if hits == 0 {
                    println!(
                        "      matched nothing since the sensor started ({}): still needed?",
                        status.started
                    );
                } else {
                    println!("      {hits} hits excepted since {}", status.started);
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_rule(rule: &Rule) {
    println!(
        "{}  {}  action={}  severity={} priority={}  ({})",
        rule.id,
        if rule.enabled { "enabled" } else { "DISABLED" },
        format!("{:?}", rule.action).to_lowercase(),
        rule.severity,
        rule.priority,
        rule.origin
    );
    println!("    {}", rule.name);
    println!("    when: {}", when_text(&rule.when.raw));
    if !rule.tags.is_empty() {
        println!("    tags: {}", rule.tags.join(", "));
    }
}

fn test(args: RulesTestArgs) -> anyhow::Result<ExitCode> {
    let rules = match load(&args.config, &args.paths) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("torsensor: error: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    let text = match std::fs::read_to_string(&args.event) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("torsensor: error: {}: {e}", args.event.display());
            return Ok(ExitCode::from(2));
        }
    };
    let mut all_alerted = true;
    for (n, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let alert: Alert = match serde_json::from_str(line) {
            Ok(a) => a,
            Err(e) => {
                eprintln!(
                    "torsensor: error: {}:{}: not an alert as the sensor writes them ({e})",
                    args.event.display(),
                    n + 1
                );
                return Ok(ExitCode::from(2));
            }
        };
        println!("{}:{}: {}", args.event.display(), n + 1, alert.summary());
        let (verdict, alerted) = explain(&rules, &alert);
        all_alerted &= alerted;
        println!("  => {verdict}");
    }
    Ok(if all_alerted {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Prints every rule tried for `alert` (each condition yes/no, and the
/// deciding rule's exceptions); the decision, and whether it alerts.
fn explain(rules: &Rules, alert: &Alert) -> (String, bool) {
    // Every rule tried, until the one that decides.
    for rule in &rules.list {
        let checks = rule.when.checks(alert);
        let held = checks.iter().all(|(_, h)| *h);
        let shown: Vec<String> = checks
            .iter()
            .map(|(k, h)| format!("{k} {}", if *h { "yes" } else { "no" }))
            .collect();
        let state = if !rule.enabled { " (disabled)" } else { "" };
        println!("  {}{state}: {}", rule.id, shown.join(", "));
        if held && rule.enabled {
            for e in &rule.except {
                let checks: Vec<String> = e
                    .when
                    .checks(alert)
                    .iter()
                    .map(|(k, h)| format!("{k} {}", if *h { "yes" } else { "no" }))
                    .collect();
                println!(
                    "    except {:?} ({}): {}",
                    e.reason,
                    e.at,
                    checks.join(", ")
                );
            }
            break;
        }
    }
    let verdict = match rules.decide(alert, SystemTime::now()) {
        Decision::Rule(rule) => format!(
            "{} by {} ({})",
            format!("{:?}", rule.action).to_uppercase(),
            rule.id,
            rule.name
        ),
        Decision::Excepted(rule, i) => {
            let e = &rule.except[i];
            format!(
                "EXCEPTED: {} exception {:?} at {} ({})",
                rule.id,
                e.reason,
                e.at,
                when_text(&e.when.raw)
            )
        }
        Decision::Unmatched => "NOT ALERTED: no enabled rule holds".to_owned(),
    };
    let alerted = verdict.starts_with("ALERT");
    (verdict, alerted)
}
