//! `cargo xtask bench`: performance figures as ratios against a baseline
//! measured in the same run (these machines are noisy; compare, don't trust
//! absolute numbers).
//!
//! 1. Overhead: a loopback connect+accept storm with no listed peers, with no
//!    sensor, with the sensor, and with only an empty program on the
//!    sensor's hook (the floor any program there pays), interleaved round by
//!    round; medians of the per-round ratios.
//! 2. Worst case: the same storm with every peer listed; alerts delivered vs
//!    connections made, and the kernel's loss counters.
//! 3. Memory: daemon RSS after start with the embedded feed.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::Value;

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Connections per storm round.
    #[arg(long, default_value_t = 20_000)]
    connections: usize,
    /// Rounds with and without the sensor (interleaved).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Only the feed benchmark (section 4).
    #[arg(long)]
    feeds_only: bool,
}

const PROGRAMS: &[&str] = &["sock_state", "sock_send", "sock_recv"];
const RSS_TARGET_MIB: f64 = 32.0;
const OVERHEAD_TARGET: f64 = 0.02;

/// A sensor started for a measurement.
struct Running {
    child: Child,
}

impl Running {
    /// Starts `bin` with `args` (subcommand first) and waits until it says
    /// it is armed.
    fn start(bin: &Path, args: &[&str], stdout: Stdio) -> anyhow::Result<Running> {
        let mut child = Command::new(bin)
            .args(args)
            .env("TORSENSOR_LOG", "info")
            // Keep the bench's status.json and caches out of /var/lib.
            .env("TORSENSOR_STATE_DIR", "target/bench/state")
            .stdout(stdout)
            .stderr(Stdio::piped())
            .spawn()
            .context("starting torsensor")?;
        let stderr = child.stderr.take().expect("piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut log = String::new();
            let mut told = false;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if !told && line.contains("torsensor armed") {
                    told = true;
                    let _ = tx.send(Ok(()));
                }
                if line.contains("health:") || line.contains("WARN") || line.contains("ERROR") {
                    eprintln!("  sensor: {line}");
                }
                log.push_str(&line);
                log.push('\n');
            }
            if !told {
                let _ = tx.send(Err(log));
            }
        });
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(Ok(())) => Ok(Running { child }),
            Ok(Err(log)) => bail!("torsensor exited before arming:\n{log}"),
            Err(_) => bail!("torsensor did not arm within 60 s"),
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until the sensor has finished starting (its CPU time stops
    /// growing for 300 ms, at most 5 s), so that a measurement sees the
    /// steady state and not the tail of the start-up on the same cores.
    fn settle(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut last = cpu_seconds(self.pid());
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(300));
            let now = cpu_seconds(self.pid());
            if now == last {
                return;
            }
            last = now;
        }
    }

    fn stop(mut self) -> anyhow::Result<()> {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait()?;
        if !status.success() {
            bail!("torsensor exited with {status}");
        }
        Ok(())
    }
}

/// `n` loopback connections in lockstep (connect, accept, close with RST so
/// that no TIME_WAIT piles up), one thread, so that the accept queue never
/// overflows. Returns connections per second.
pub fn storm(n: usize) -> anyhow::Result<f64> {
    let _pinned = PinToLastCpu::new();
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let to: SocketAddr = listener.local_addr()?;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    let start = Instant::now();
    for _ in 0..n {
        let s = TcpStream::connect(to)?;
        let (accepted, _) = listener.accept()?;
        // SAFETY: valid socket and option.
        unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&raw const linger).cast(),
                size_of::<libc::linger>() as u32,
            )
        };
        drop(s);
        drop(accepted);
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// Runs the calling thread on the last CPU until dropped: a lockstep storm
/// (and the loopback softirq work it triggers) then always runs on the same
/// core, which removes most of the round-to-round noise of migrations.
struct PinToLastCpu {
    saved: Option<libc::cpu_set_t>,
}

impl PinToLastCpu {
    fn new() -> Self {
        // SAFETY: plain sched_{get,set}affinity calls on this thread with a
        // valid, zeroed cpu_set_t.
        unsafe {
            let mut saved: libc::cpu_set_t = std::mem::zeroed();
            if libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut saved) != 0 {
                return PinToLastCpu { saved: None };
            }
            let last = (0..libc::CPU_SETSIZE as usize)
                .rev()
                .find(|&c| libc::CPU_ISSET(c, &saved));
            let Some(last) = last else {
                return PinToLastCpu { saved: None };
            };
            let mut one: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(last, &mut one);
            libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &one);
            PinToLastCpu { saved: Some(saved) }
        }
    }
}

impl Drop for PinToLastCpu {
    fn drop(&mut self) {
        if let Some(saved) = &self.saved {
            // SAFETY: restores the mask read in `new`.
            unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), saved) };
        }
    }
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[s.len() / 2]
}

/// (run_time_ns, run_cnt) per program of ours, from `bpftool` with
/// `kernel.bpf_stats_enabled` on.
fn program_stats() -> Vec<(String, u64, u64)> {
    let Ok(out) = Command::new("bpftool")
        .args(["-j", "prog", "show"])
        .output()
    else {
        return Vec::new();
    };
    let Ok(progs) = serde_json::from_slice::<Value>(&out.stdout) else {
        return Vec::new();
    };
    progs
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| {
            let name = p["name"].as_str()?;
            PROGRAMS.contains(&name).then(|| {
                (
                    name.to_owned(),
                    p["run_time_ns"].as_u64().unwrap_or(0),
                    p["run_cnt"].as_u64().unwrap_or(0),
                )
            })
        })
        .collect()
}

/// CPU seconds (user + system) a process has used.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(11) + ticks(12)) / hz
}

fn status_kib(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0)
}

pub fn run(root: &Path, args: &BenchArgs) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the benchmark loads eBPF programs: run it as root");
    }
    let bin = root.join("target/release/torsensor");
    let scratch = root.join("target/bench");
    std::fs::create_dir_all(&scratch)?;
    let n = args.connections;
    let rounds = args.rounds.max(1);
    if args.feeds_only {
        return feeds(&bin);
    }
    println!("== 1. overhead: loopback connect+accept storm, no listed peers");
    println!(
        "   {n} connections per round, {rounds} rounds of three (no sensor, sensor, hook floor; the order cycles through all six), storm pinned to one CPU"
    );
    storm(n / 4)?; // warm-up
    // Three conditions per round: no sensor, the sensor, and the hook floor
    // (an empty program on the same tracepoint, the sensor's maps created, empty): what any
    // program on that hook costs, so the sensor's own share is visible.
    // The order cycles through all six permutations.
    const ORDERS: [[usize; 3]; 6] = [
        [0, 1, 2],
        [2, 1, 0],
        [1, 0, 2],
        [2, 0, 1],
        [0, 2, 1],
        [1, 2, 0],
    ];
    let mut rates: [Vec<f64>; 3] = Default::default();
    let (mut ratios, mut floor_ratios, mut above_floor) = (Vec::new(), Vec::new(), Vec::new());
    let mut daemon_cpu = 0.0;
    for round in 0..rounds {
        let mut rate = [0.0; 3];
        for which in ORDERS[round % ORDERS.len()] {
            rate[which] = match which {
                0 => {
                    // The same pause as the sensor's settling, on all sides.
                    std::thread::sleep(Duration::from_millis(300));
                    storm(n)?
                }
                1 => {
                    let sensor = Running::start(&bin, &["run"], Stdio::null())?;
                    sensor.settle();
                    let cpu0 = cpu_seconds(sensor.pid());
                    let r = storm(n)?;
                    daemon_cpu += cpu_seconds(sensor.pid()) - cpu0;
                    sensor.stop()?;
                    r
                }
                _ => {
                    let floor = Running::start(&bin, &["bench-floor"], Stdio::null())?;
                    floor.settle();
                    let r = storm(n)?;
                    floor.stop()?;
                    r
                }
            };
        }
        let [w0, w1, wf] = rate;
        for (v, r) in rates.iter_mut().zip(rate) {
            v.push(r);
        }
        ratios.push(w1 / w0);
        floor_ratios.push(wf / w0);
        above_floor.push(w1 / wf);
        println!(
            "   round {}: without {w0:>7.0}  sensor {w1:>7.0}  hook floor {wf:>7.0} conn/s   ratio sensor {:.3}, floor {:.3}",
            round + 1,
            w1 / w0,
            wf / w0
        );
    }
    let (m0, m1, mf) = (median(&rates[0]), median(&rates[1]), median(&rates[2]));
    let ratio = median(&ratios);
    let slowdown = 1.0 - ratio;
    println!(
        "   median without sensor: {m0:.0} conn/s, with sensor: {m1:.0}, with the hook floor: {mf:.0}"
    );
    println!(
        "   RATIO with/without (median of the per-round ratios): {ratio:.3}  (slowdown {:.1} %, target <= {:.0} %: {}); ratio of the medians {:.3}",
        slowdown * 100.0,
        OVERHEAD_TARGET * 100.0,
        if slowdown <= OVERHEAD_TARGET {
            "met"
        } else {
            "NOT met"
        },
        m1 / m0
    );
    let floor = median(&floor_ratios);
    println!(
        "   RATIO hook floor/without: {floor:.3}  (an empty program on inet_sock_set_state: {:.1} % slower, for any program there)",
        (1.0 - floor) * 100.0
    );
    println!(
        "   RATIO sensor/hook floor: {:.3}  (the sensor's own work, above the hook's cost)",
        median(&above_floor)
    );
    println!(
        "   daemon CPU during the storms: {daemon_cpu:.2} s for {} connections (no hits, so nothing crosses to userspace)",
        n * rounds
    );

    // Per-program cost, in a round of its own: kernel.bpf_stats_enabled
    // itself slows every program run, so it stays off in the rounds above.
    let stats_flag = Path::new("/proc/sys/kernel/bpf_stats_enabled");
    let old_stats = std::fs::read_to_string(stats_flag).unwrap_or_else(|_| "0".into());
    let sensor = Running::start(&bin, &["run"], Stdio::null())?;
    let _ = std::fs::write(stats_flag, "1");
    let before = program_stats();
    let per_conn_ns = 1e9 / storm(n)?;
    let after = program_stats();
    let _ = std::fs::write(stats_flag, old_stats.trim());
    sensor.stop()?;
    let mut total_ns = 0.0;
    for (name, ns, cnt) in &after {
        let (ns0, cnt0) = before
            .iter()
            .find(|(n0, ..)| n0 == name)
            .map(|(_, a, b)| (*a, *b))
            .unwrap_or((0, 0));
        let (ns, cnt) = (ns - ns0, cnt - cnt0);
        if cnt > 0 {
            total_ns += ns as f64 / n as f64;
            println!(
                "   kernel cost {name}: {:.0} ns/run, {:.2} runs per connection",
                ns as f64 / cnt as f64,
                cnt as f64 / n as f64
            );
        }
    }
    println!(
        "   programs' own time per connection: {total_ns:.0} ns of {per_conn_ns:.0} ns ({:.1} %; measured with bpf_stats on)",
        100.0 * total_ns / per_conn_ns
    );

    println!("== 2. worst case: every peer listed (127.0.0.0/8)");
    let feed = scratch.join("all-loopback.feed");
    std::fs::write(&feed, "127.0.0.0/8\n")?;
    let stats_path = scratch.join("worst-case-stats.json");
    let alerts_path = scratch.join("worst-case-alerts.jsonl");
    let alerts = std::fs::File::create(&alerts_path)?;
    let sensor = Running::start(
        &bin,
        &[
            "run",
            "--allow-reserved",
            "--feed",
            feed.to_str().unwrap(),
            "--stats-file",
            stats_path.to_str().unwrap(),
            // One alert line per hit: this measures delivery, not the
            // aggregation that would fold the storm into a few lines.
            "--aggregation-window",
            "0s",
        ],
        Stdio::from(alerts),
    )?;
    let rate = storm(n)?;
    std::thread::sleep(Duration::from_millis(500));
    sensor.stop()?;
    let stats: Value = serde_json::from_slice(&std::fs::read(&stats_path)?)?;
    let lines = std::fs::read_to_string(&alerts_path)?.lines().count() as u64;
    let k = &stats["kernel"];
    let hits = k["connect_hit"].as_u64().unwrap_or(0) + k["inbound_hit"].as_u64().unwrap_or(0);
    let lost = k["ringbuf_full"].as_u64().unwrap_or(0) + k["pending_full"].as_u64().unwrap_or(0);
    let expected = 2 * n as u64; // one egress and one ingress hit per connection
    println!(
        "   {n} connections at {rate:.0} conn/s -> {expected} hits expected (egress + ingress each)"
    );
    let out = &stats["outputs"][0];
    let dropped = ["dropped_queue", "dropped_spool", "dropped_undeliverable"]
        .iter()
        .map(|f| out[f].as_u64().unwrap_or(0))
        .sum::<u64>();
    println!(
        "   kernel hits {hits}, alert lines written {lines}, stdout output delivered {} (dropped {dropped}), {} reported incomplete at shutdown",
        out["delivered"], stats["incomplete_reported"]
    );
    let lost = lost + dropped;
    println!(
        "   lost: ring buffer full {}, pending map full {}, output drops {dropped}  -> RATIO delivered/expected: {:.4} ({})",
        k["ringbuf_full"],
        k["pending_full"],
        lines as f64 / expected as f64,
        if lost == 0 && lines >= expected {
            "zero lost: met".to_owned()
        } else if lines + lost >= expected {
            format!("{lost} lost, all counted")
        } else {
            format!("{} MISSING and not counted", expected - lines - lost)
        }
    );

    println!("== 3. memory: daemon RSS after start with the embedded feed");
    let sensor = Running::start(&bin, &["run"], Stdio::null())?;
    std::thread::sleep(Duration::from_secs(1));
    let rss = status_kib(sensor.pid(), "VmRSS:") / 1024.0;
    let hwm = status_kib(sensor.pid(), "VmHWM:") / 1024.0;
    sensor.stop()?;
    println!(
        "   RSS {rss:.1} MiB (peak {hwm:.1} MiB); RATIO to the {RSS_TARGET_MIB:.0} MiB target: {:.2} ({})",
        rss / RSS_TARGET_MIB,
        if rss < RSS_TARGET_MIB {
            "met"
        } else {
            "NOT met"
        }
    );
    feeds(&bin)
}

/// Section 4: parse, merge, load and refresh the Tor relay set at the real
/// size and at 10x (the daemon's hidden `feed bench`).
fn feeds(bin: &Path) -> anyhow::Result<()> {
    println!("== 4. feeds: parse + merge + kernel load, and a 3% refresh by difference");
    let status = Command::new(bin)
        .args(["feed", "bench", "--rounds", "3"])
        .env("TORSENSOR_LOG", "warn")
        .status()?;
    if !status.success() {
        bail!("torsensor feed bench failed ({status})");
    }
    Ok(())
}
