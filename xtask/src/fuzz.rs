//! `cargo xtask fuzz`: the cargo-fuzz targets of `sensor-daemon/fuzz`, each
//! run for a bounded time, with a summary per target (executions, coverage,
//! findings); and the short smoke run of every target that CI does.
//!
//! Targets are built once with the pinned nightly (`cargo fuzz build`), with
//! debug assertions and overflow checks on and no sanitizer (the parsers are
//! safe Rust: a bug shows as a panic, which libFuzzer reports as a crash, and
//! the runs are about twice as fast as under ASan). Each target then runs
//! from its seed corpus (`sensor-daemon/fuzz/seeds/<target>/`, in the repo)
//! plus the corpus grown by earlier runs (`target/fuzz/corpus/<target>/`).
//! Findings go to `target/fuzz/artifacts/<target>/`, full logs to
//! `target/fuzz/logs/<target>.log`.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::{run, show, stdout_of};

/// The fuzz crate (its own workspace, not a member of ours).
const FUZZ_DIR: &str = "sensor-daemon/fuzz";
/// Everything a run makes: builds, grown corpora, findings, logs.
const FUZZ_TARGET_DIR: &str = "target/fuzz";
/// Seconds per target of the smoke run in `cargo xtask test`.
pub const SMOKE_SECONDS: u64 = 3;

#[derive(clap::Args)]
pub struct FuzzArgs {
    /// Seconds per target.
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
    /// Start from the seed corpus only (forget what earlier runs found).
    #[arg(long)]
    pub fresh: bool,
    /// Targets to run (default: every target of sensor-daemon/fuzz).
    pub targets: Vec<String>,
}

/// The outcome of one target's run.
struct Outcome {
    target: String,
    wall: Duration,
    executions: Option<u64>,
    exec_per_sec: Option<u64>,
    cov: Option<u64>,
    ft: Option<u64>,
    corpus: Option<u64>,
    /// `crash`, `timeout`, `oom`... and the input libFuzzer saved.
    finding: Option<(String, String)>,
    /// The panic message, when there was one.
    panic: Option<String>,
}

/// `cargo xtask fuzz`: builds the targets and runs the chosen ones.
pub fn run_targets(toolchain: &str, args: &FuzzArgs) -> anyhow::Result<()> {
    prerequisites()?;
    let known = list(toolchain)?;
    let targets = if args.targets.is_empty() {
        known
    } else {
        if let Some(unknown) = args.targets.iter().find(|t| !known.contains(t)) {
            bail!(
                "no fuzz target {unknown:?}; the targets are: {}",
                known.join(", ")
            );
        }
        args.targets.clone()
    };
    build(toolchain)?;
    let mut outcomes = Vec::new();
    for target in &targets {
        let outcome = run_one(target, args.seconds, args.fresh)?;
        print_row(&outcome, outcomes.is_empty());
        outcomes.push(outcome);
    }
    let found: Vec<&Outcome> = outcomes.iter().filter(|o| o.finding.is_some()).collect();
    if !found.is_empty() {
        eprintln!();
        for o in &found {
            let (kind, input) = o.finding.as_ref().expect("filtered");
            eprintln!(
                "xtask: {}: {kind}: input saved as {input}\n       {}\n       log: {}",
                o.target,
                o.panic
                    .as_deref()
                    .unwrap_or("(no panic message; see the log)"),
                log_path(&o.target).display()
            );
        }
        bail!(
            "{} of {} fuzz targets found a failing input; make each a unit test in the crate that owns the parser, then fix it",
            found.len(),
            outcomes.len()
        );
    }
    Ok(())
}

/// CI's part (`cargo xtask test`): fmt and clippy on the fuzz crate, then
/// every target for [`SMOKE_SECONDS`].
pub fn ci(toolchain: &str) -> anyhow::Result<()> {
    let manifest = format!("{FUZZ_DIR}/Cargo.toml");
    run(Command::new("cargo").args(["fmt", "--manifest-path", &manifest, "--check"]))?;
    prerequisites()?;
    // The workspace's target directory: most dependencies are already
    // checked there by the workspace's clippy run.
    run(Command::new("cargo").args([
        "clippy",
        "--manifest-path",
        &manifest,
        "--all-targets",
        "--target-dir",
        "target",
        "--",
        "-D",
        "warnings",
    ]))?;
    let started = Instant::now();
    run_targets(
        toolchain,
        &FuzzArgs {
            seconds: SMOKE_SECONDS,
            fresh: false,
            targets: Vec::new(),
        },
    )?;
    eprintln!(
        "xtask: fuzz smoke run (build included) took {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// A C++ compiler (libfuzzer-sys builds libFuzzer) and cargo-fuzz.
fn prerequisites() -> anyhow::Result<()> {
    if Command::new("c++").arg("--version").output().is_err() {
        eprintln!("xtask: installing g++ (libfuzzer-sys compiles libFuzzer)");
        run(Command::new("apt-get").arg("update").arg("-qq"))?;
        run(Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends", "g++"])
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }
    let have_cargo_fuzz = Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !have_cargo_fuzz {
        eprintln!("xtask: installing cargo-fuzz (about two minutes)");
        run(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))?;
    }
    Ok(())
}

fn cargo_fuzz(toolchain: &str, subcommand: &str) -> Command {
    let mut cmd = Command::new("cargo");
    cmd.arg(format!("+{toolchain}"))
        .args(["fuzz", subcommand, "--fuzz-dir", FUZZ_DIR]);
    cmd
}

fn list(toolchain: &str) -> anyhow::Result<Vec<String>> {
    let targets: Vec<String> = stdout_of(&mut cargo_fuzz(toolchain, "list"))
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    if targets.is_empty() {
        bail!("`cargo fuzz list --fuzz-dir {FUZZ_DIR}` names no target");
    }
    Ok(targets)
}

fn build(toolchain: &str) -> anyhow::Result<()> {
    run(cargo_fuzz(toolchain, "build").args([
        "--release",
        "--debug-assertions",
        "--sanitizer",
        "none",
        "--target-dir",
        FUZZ_TARGET_DIR,
    ]))
}

fn log_path(target: &str) -> PathBuf {
    Path::new(FUZZ_TARGET_DIR)
        .join("logs")
        .join(format!("{target}.log"))
}

fn run_one(target: &str, seconds: u64, fresh: bool) -> anyhow::Result<Outcome> {
    let dir = Path::new(FUZZ_TARGET_DIR);
    let binary = dir
        .join(format!("{}-unknown-linux-gnu", std::env::consts::ARCH))
        .join("release")
        .join(target);
    let corpus = dir.join("corpus").join(target);
    let artifacts = dir.join("artifacts").join(target);
    let seeds = Path::new(FUZZ_DIR).join("seeds").join(target);
    if fresh && corpus.exists() {
        std::fs::remove_dir_all(&corpus)
            .with_context(|| format!("cannot empty {}", corpus.display()))?;
    }
    for d in [&corpus, &artifacts, &dir.join("logs")] {
        std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
    }
    let log = log_path(target);
    let out = File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
    let mut cmd = Command::new(&binary);
    // The grown corpus first: libFuzzer adds new inputs to the first directory.
    cmd.arg(&corpus)
        .arg(&seeds)
        .arg(format!("-max_total_time={seconds}"))
        .arg("-print_final_stats=1")
        // An input that takes this long is a finding (a hang).
        .arg("-timeout=10")
        .arg("-rss_limit_mb=2048")
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .stdout(out.try_clone()?)
        .stderr(out);
    eprintln!("xtask: $ {}  (log: {})", show(&cmd), log.display());
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start {}", binary.display()))?;
    // libFuzzer stops itself; this only guards against a run that does not.
    let limit = Duration::from_secs(seconds + 120);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if started.elapsed() > limit {
            child.kill()?;
            child.wait()?;
            bail!(
                "fuzz target {target} still running after {} s; see {}",
                limit.as_secs(),
                log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let text = String::from_utf8_lossy(&std::fs::read(&log).unwrap_or_default()).into_owned();
    let mut outcome = parse_log(target, &text);
    outcome.wall = started.elapsed();
    if !status.success() && outcome.finding.is_none() {
        bail!(
            "fuzz target {target} failed ({status}) without saving an input; see {}",
            log.display()
        );
    }
    Ok(outcome)
}

/// The number after `key` in `line` (`cov: 812`, `corp: 1282/311Kb`).
fn number_after(line: &str, key: &str) -> Option<u64> {
    let rest = &line[line.find(key)? + key.len()..];
    let digits: String = rest
        .trim_start()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// Reads libFuzzer's output: the last status line (`#N DONE cov: .. ft: ..
/// corp: ..`), the final stats, and a saved input.
fn parse_log(target: &str, text: &str) -> Outcome {
    let status = text
        .lines()
        .rfind(|l| l.starts_with('#') && l.contains(" cov: "));
    let stat = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().parse().ok())
    };
    let finding = text.lines().find_map(|l| {
        let path = l.split("Test unit written to ").nth(1)?.trim().to_owned();
        let file = Path::new(&path).file_name()?.to_string_lossy().into_owned();
        let kind = file.split('-').next().unwrap_or("finding").to_owned();
        Some((kind, path))
    });
    let panic = text
        .lines()
        .position(|l| l.contains("panicked at"))
        .map(|i| {
            text.lines()
                .skip(i)
                .take(2)
                .map(str::trim)
                .collect::<Vec<_>>()
                .join(" ")
        });
    Outcome {
        target: target.to_owned(),
        wall: Duration::ZERO,
        executions: stat("stat::number_of_executed_units:")
            .or_else(|| status.and_then(|l| number_after(l, "#"))),
        exec_per_sec: stat("stat::average_exec_per_sec:"),
        cov: status.and_then(|l| number_after(l, "cov:")),
        ft: status.and_then(|l| number_after(l, "ft:")),
        corpus: status.and_then(|l| number_after(l, "corp:")),
        finding,
        panic,
    }
}

fn print_row(o: &Outcome, header: bool) {
    let n = |v: Option<u64>| v.map_or("?".to_owned(), |v| v.to_string());
    if header {
        println!(
            "{:<14} {:>6} {:>12} {:>9} {:>7} {:>8} {:>7}  findings",
            "target", "secs", "executions", "exec/s", "cov", "ft", "corpus"
        );
    }
    println!(
        "{:<14} {:>6.0} {:>12} {:>9} {:>7} {:>8} {:>7}  {}",
        o.target,
        o.wall.as_secs_f64(),
        n(o.executions),
        n(o.exec_per_sec),
        n(o.cov),
        n(o.ft),
        n(o.corpus),
        match &o.finding {
            None => "none".to_owned(),
            Some((kind, input)) => format!("1 {kind}: {input}"),
        }
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_libfuzzer_stats_and_findings() {
        let done = "INFO: Seed: 1\n#184150\tREDUCE cov: 1611 ft: 6000 corp: 1281/310Kb lim: 1168 exec/s: 61383 rss: 32Mb\n#184230\tDONE   cov: 1612 ft: 6006 corp: 1282/311Kb lim: 1168 exec/s: 46057 rss: 32Mb\nstat::number_of_executed_units: 184230\nstat::average_exec_per_sec:     46057\n";
        let o = parse_log("t", done);
        assert_eq!(
            (o.executions, o.exec_per_sec, o.cov, o.ft, o.corpus),
            (
                Some(184230),
                Some(46057),
                Some(1612),
                Some(6006),
                Some(1282)
            )
        );
        assert!(o.finding.is_none() && o.panic.is_none());

        let crash = "#52\tNEW    cov: 90 ft: 120 corp: 7/1Kb lim: 4 exec/s: 0 rss: 30Mb L: 3/4 MS: 1 ChangeBit-\n\nthread '<unnamed>' panicked at src/feed/parse.rs:250:25:\nbyte index 9 is not a char boundary\n==1== ERROR: libFuzzer: deadly signal\nMS: 1 ChangeBit-; base unit: 0\nartifact_prefix='target/fuzz/artifacts/t/'; Test unit written to target/fuzz/artifacts/t/crash-abc123\n";
        let o = parse_log("t", crash);
        assert_eq!(
            o.finding,
            Some((
                "crash".to_owned(),
                "target/fuzz/artifacts/t/crash-abc123".to_owned()
            ))
        );
        assert_eq!(
            o.panic.as_deref(),
            Some(
                "thread '<unnamed>' panicked at src/feed/parse.rs:250:25: byte index 9 is not a char boundary"
            )
        );
        assert_eq!((o.executions, o.cov), (Some(52), Some(90)));
    }
}
