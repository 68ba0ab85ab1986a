//! `cargo xtask bench`: performance figures as ratios against a baseline
//! measured in the same run (these machines are noisy; compare, don't trust
//! absolute numbers).
//!
//! 1. Overhead: a loopback connect+accept storm with no listed peers, with no
//!    sensor, with the sensor, and with only an empty program on the
//!    sensor's hook (the floor any program there pays), interleaved round by
//!    round; medians of the per-round ratios.
//!    Then the inbound attribution plans: a storm with a one-byte exchange
//!    per connection (so that read and write hooks fire), for every plan this
//!    kernel can run, against the hook floor and against the floor plus an
//!    empty program on the raw syscall-entry tracepoint (the last resort no
//!    plan uses), all in the same rounds.
//!    Then opt-in blocking: the same exchange storm with the sensor, with
//!    and without `[blocking] mode = "enforce"` (peers not listed, so what
//!    is measured is the programs' screening of every connect and packet).
//!    Then DNS lookups for Tor (`--dns-only`): the exchange storm with
//!    `[dns]` off and on (what the egress program costs every packet that
//!    is not DNS), and a loop of UDP queries to a responder on loopback
//!    port 53 with no sensor, `[dns]` off, and `[dns]` on for an unlisted
//!    and for a watched name.
//! 2. Worst case: the same storm with every peer listed; alerts delivered vs
//!    connections made, and the kernel's loss counters.
//! 3. Memory: daemon RSS after start with the embedded feed.
//! 5. Outputs: alerts/s and CPU per alert through an HTTP output, with and
//!    without `durable` (the daemon's hidden `bench-outputs`).
//! 6. History: a year of hourly consensuses (8,760 documents of 7,000
//!    relays with churn) indexed; import time, index size on disk and in
//!    memory, lookups/s against a BTreeMap + linear-scan baseline (the
//!    daemon's hidden `history bench`; no root, `--history-only`).
//! 7. Hunt: with that year loaded, a synthetic 1 GiB PCAP through `torsensor
//!    hunt`'s reader against `tcpdump -r` (BPF filter of the same 200
//!    addresses) and `tshark -r -Y`, and a 256 MiB access log against
//!    `grep -F -f` (the daemon's hidden `bench-hunt`; no root,
//!    `--hunt-only`).
//! 8. Gateway mode: TCP forwarding throughput (iperf3) through a router
//!    namespace (inside -- router -- outside, veth pairs), with no sensor,
//!    with the gateway programs on the router's inside interface and the
//!    peer unlisted (every packet parsed, every SYN screened), and with the
//!    peer listed (every packet also counted into its tracked flow),
//!    interleaved round by round; medians and ratios (`--gateway-only`).
//! 9. Flow collector: NetFlow v5 records/s through the live collector
//!    (read, matched against the embedded feeds, directions joined,
//!    judged) against reading the same exports alone, one core (the
//!    daemon's hidden `bench-collector`; no root, `--collector-only`).

use std::io::{BufRead, BufReader, Read as _, Write as _};
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
    /// Only the blocking benchmark (section 1c).
    #[arg(long)]
    blocking_only: bool,
    /// Only the history benchmark (section 6; needs no root).
    #[arg(long)]
    history_only: bool,
    /// Only the hunt benchmark (section 7; needs no root).
    #[arg(long)]
    hunt_only: bool,
    /// Only the DNS benchmark (section 1d).
    #[arg(long)]
    dns_only: bool,
    /// Only the gateway benchmark (section 8).
    #[arg(long)]
    gateway_only: bool,
    /// Only the flow collector benchmark (section 9; needs no root).
    #[arg(long)]
    collector_only: bool,
}

/// Our programs, as `bpftool` names them.
const PROGRAMS: &[&str] = &[
    "sock_state",
    "sock_send",
    "sock_recv",
    "send_fentry",
    "recv_fentry",
    "send_kprobe",
    "recv_kprobe",
    "rcv_space",
    "block_connect4",
    "block_connect6",
    "block_ingress",
    "dns_connect4",
    "dns_connect6",
    "dns_sendmsg4",
    "dns_sendmsg6",
    "dns_egress",
];
/// The inbound attribution plans, in the order `auto` tries them.
const PLANS: &[&str] = &["sock-length", "fentry", "kprobe", "rcv-space", "close-only"];
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
                // The hook plan's warning (a degraded plan forced on
                // purpose) is printed once by section 1b itself.
                let relevant =
                    line.contains("health:") || line.contains("WARN") || line.contains("ERROR");
                if relevant && !line.contains("hook plan:") {
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
    storm_with(n, false)
}

/// `storm`, and with `exchange` the client writes one byte that the server
/// reads, and the server answers one byte that the client reads.
fn storm_with(n: usize, exchange: bool) -> anyhow::Result<f64> {
    let _pinned = PinToLastCpu::new();
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let to: SocketAddr = listener.local_addr()?;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    let start = Instant::now();
    for _ in 0..n {
        let mut s = TcpStream::connect(to)?;
        let (mut accepted, _) = listener.accept()?;
        if exchange {
            let mut byte = [0u8; 1];
            s.write_all(b"q")?;
            accepted.read_exact(&mut byte)?;
            accepted.write_all(b"a")?;
            s.read_exact(&mut byte)?;
        }
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

/// Starts the sensor with `args`, turns `kernel.bpf_stats_enabled` on for
/// one storm, and prints each of our programs' time per run and runs per
/// connection, and their total per connection.
fn program_costs(bin: &Path, args: &[&str], n: usize, exchange: bool) -> anyhow::Result<()> {
    let stats_flag = Path::new("/proc/sys/kernel/bpf_stats_enabled");
    let old_stats = std::fs::read_to_string(stats_flag).unwrap_or_else(|_| "0".into());
    let sensor = Running::start(bin, args, Stdio::null())?;
    let _ = std::fs::write(stats_flag, "1");
    let before = program_stats();
    let per_conn_ns = 1e9 / storm_with(n, exchange)?;
    let after = program_stats();
    let _ = std::fs::write(stats_flag, old_stats.trim());
    sensor.stop()?;
    let mut total_ns = 0.0;
    let mut each = Vec::new();
    for (name, ns, cnt) in &after {
        let (ns0, cnt0) = before
            .iter()
            .find(|(n0, ..)| n0 == name)
            .map(|(_, a, b)| (*a, *b))
            .unwrap_or((0, 0));
        let (ns, cnt) = (ns - ns0, cnt - cnt0);
        if cnt > 0 {
            total_ns += ns as f64 / n as f64;
            each.push(format!(
                "{name} {:.0} ns/run x {:.2}/conn",
                ns as f64 / cnt as f64,
                cnt as f64 / n as f64
            ));
        }
    }
    println!(
        "   kernel cost ({}): {total_ns:.0} ns per connection of {per_conn_ns:.0} ns ({:.1} %; bpf_stats on): {}",
        args.join(" "),
        100.0 * total_ns / per_conn_ns,
        each.join(", ")
    );
    Ok(())
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
    if args.history_only {
        return history(
            &root.join("target/release/torsensor"),
            &root.join("target/bench"),
        );
    }
    if args.hunt_only {
        return hunt(
            &root.join("target/release/torsensor"),
            &root.join("target/bench"),
        );
    }
    if args.collector_only {
        return collector(&root.join("target/release/torsensor"), args.rounds.max(1));
    }
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
    if args.blocking_only {
        return blocking(&bin, &scratch, n, rounds);
    }
    if args.dns_only {
        return dns(&bin, &scratch, n, rounds);
    }
    if args.gateway_only {
        return gateway(&bin, &scratch, rounds);
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
    program_costs(&bin, &["run"], n, false)?;
    plans(&bin, n, rounds)?;
    blocking(&bin, &scratch, n, rounds)?;

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
    feeds(&bin)?;
    outputs(&bin, &scratch)?;
    history(&bin, &scratch)?;
    hunt(&bin, &scratch)?;
    gateway(&bin, &scratch, rounds)?;
    collector(&bin, rounds)
}

/// Section 9: the live flow collector's records/s against reading the
/// exports alone (the daemon's hidden `bench-collector`).
fn collector(bin: &Path, rounds: usize) -> anyhow::Result<()> {
    println!(
        "== 9. flow collector: NetFlow v5 records/s, one core, median of {rounds} rounds, against reading the same exports alone"
    );
    let status = Command::new(bin)
        .args(["bench-collector", "--rounds", &rounds.to_string()])
        .env("TORSENSOR_LOG", "warn")
        .status()?;
    if !status.success() {
        bail!("torsensor bench-collector failed ({status})");
    }
    Ok(())
}

/// Section 1b: the cost of each inbound attribution plan this kernel can
/// run, on a storm where every connection exchanges a byte each way.
fn plans(bin: &Path, n: usize, rounds: usize) -> anyhow::Result<()> {
    let hooks = |plan: &str| {
        Command::new(bin)
            .args(["hooks", "--inbound-hooks", plan])
            .env("TORSENSOR_LOG", "error")
            .output()
    };
    let chosen = hooks("auto")?;
    println!(
        "== 1b. inbound attribution plans: storm with a 1-byte exchange per connection\n   chosen here: {}",
        String::from_utf8_lossy(&chosen.stdout).trim()
    );
    let mut conditions: Vec<(String, Vec<String>)> = vec![
        ("no sensor".into(), vec![]),
        ("hook floor".into(), vec!["bench-floor".into()]),
        (
            "floor + empty syscall tracepoint".into(),
            vec!["bench-floor".into(), "--syscalls".into()],
        ),
    ];
    for plan in PLANS {
        let out = hooks(plan)?;
        if out.status.success() {
            conditions.push((
                format!("sensor, {plan}"),
                vec!["run".into(), "--inbound-hooks".into(), (*plan).into()],
            ));
        } else {
            println!(
                "   {plan}: not measurable here ({})",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    compare(bin, &conditions, n / 2, rounds) // each connection does more work here
}

/// Runs `measure(i)` under each condition (`args[i]`: the sensor's
/// arguments, running; none: no sensor), `rounds` times, the order
/// rotated each round so that no condition always runs first; each
/// condition's results in round order.
fn rotated(
    bin: &Path,
    args: &[Option<&[String]>],
    rounds: usize,
    mut measure: impl FnMut(usize) -> anyhow::Result<f64>,
) -> anyhow::Result<Vec<Vec<f64>>> {
    let mut rates = vec![Vec::new(); args.len()];
    for round in 0..rounds {
        for k in 0..args.len() {
            let i = (k + round) % args.len();
            let rate = match args[i] {
                None => {
                    std::thread::sleep(Duration::from_millis(300));
                    measure(i)?
                }
                Some(args) => {
                    let args: Vec<&str> = args.iter().map(String::as_str).collect();
                    let running = Running::start(bin, &args, Stdio::null())?;
                    running.settle();
                    let r = measure(i)?;
                    running.stop()?;
                    r
                }
            };
            rates[i].push(rate);
        }
    }
    Ok(rates)
}

/// The median of condition `i`'s round-by-round ratios to `base`'s.
fn median_ratio(rates: &[Vec<f64>], i: usize, base: usize) -> f64 {
    let r: Vec<f64> = rates[i]
        .iter()
        .zip(&rates[base])
        .map(|(a, b)| a / b)
        .collect();
    median(&r)
}

/// Storms with a 1-byte exchange under each condition (no arguments: no
/// sensor; the first two are the baselines the ratios are printed
/// against), rounds rotated, then the kernel cost of each `run` condition.
fn compare(
    bin: &Path,
    conditions: &[(String, Vec<String>)],
    n: usize,
    rounds: usize,
) -> anyhow::Result<()> {
    storm_with(n / 4, true)?; // warm-up
    let args: Vec<Option<&[String]>> = conditions
        .iter()
        .map(|(_, a)| (!a.is_empty()).then_some(a.as_slice()))
        .collect();
    let rates = rotated(bin, &args, rounds, |_| storm_with(n, true))?;
    // Per-round ratios against the two baselines, medians.
    let ratio = |i: usize, base: usize| median_ratio(&rates, i, base);
    for (i, (name, _)) in conditions.iter().enumerate() {
        println!(
            "   {name:<34} {:>7.0} conn/s   RATIO to {} {:.3}, to {} {:.3}",
            median(&rates[i]),
            conditions[0].0,
            ratio(i, 0),
            conditions[1].0,
            ratio(i, 1)
        );
    }
    // The programs' own time per condition: steadier than throughput.
    for (_, args) in conditions
        .iter()
        .filter(|(_, a)| a.first().is_some_and(|a| a == "run"))
    {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        program_costs(bin, &args, n, true)?;
    }
    Ok(())
}

/// Section 1c: what opt-in blocking adds on a storm whose peers are not
/// listed (the normal case): the connect programs on every connect, the
/// ingress program on every packet delivered to a socket.
fn blocking(bin: &Path, scratch: &Path, n: usize, rounds: usize) -> anyhow::Result<()> {
    println!(
        "== 1c. opt-in blocking: storm with a 1-byte exchange, no listed peers, blocking off vs enforce (a block rule each way)"
    );
    let rules = scratch.join("blocking-rules.d");
    std::fs::create_dir_all(&rules)?;
    std::fs::write(
        rules.join("50-block.toml"),
        "[[rule]]\nid = \"BENCH-BLOCK\"\nname = \"bench\"\ndescription = \"bench\"\nseverity = 73\npriority = \"Warning\"\naction = \"block\"\nwhen = { role = \"exit\" }\n",
    )?;
    let cfg = scratch.join("blocking.toml");
    std::fs::write(
        &cfg,
        format!(
            "rules_dir = {:?}\n[blocking]\nmode = \"enforce\"\n",
            rules.display().to_string()
        ),
    )?;
    let run = |extra: &[&str]| {
        std::iter::once("run")
            .chain(extra.iter().copied())
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let conditions = vec![
        ("no sensor".to_owned(), vec![]),
        ("sensor, blocking off".to_owned(), run(&[])),
        (
            "sensor, blocking enforce".to_owned(),
            run(&["--config", cfg.to_str().unwrap()]),
        ),
    ];
    compare(bin, &conditions, n / 2, rounds)
}

/// Where the DNS benchmark's responder listens: loopback, port 53 (what
/// the DNS programs watch), an address of its own.
const DNS_BENCH_SERVER: &str = "127.53.99.1:53";

/// A DNS query for `name` (type A, id `id`), in wire format.
fn dns_query(id: u16, name: &str) -> Vec<u8> {
    let mut q = Vec::with_capacity(64);
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

/// A responder on `DNS_BENCH_SERVER` that answers each query with itself,
/// QR set (an empty answer): what the client waits for. Runs until the
/// process exits.
fn dns_responder() -> anyhow::Result<()> {
    let socket = std::net::UdpSocket::bind(DNS_BENCH_SERVER)
        .with_context(|| format!("binding the DNS responder on {DNS_BENCH_SERVER}"))?;
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok((len, from)) = socket.recv_from(&mut buf) {
            if len > 2 {
                buf[2] |= 0x80;
            }
            let _ = socket.send_to(&buf[..len], from);
        }
    });
    Ok(())
}

/// `n` UDP queries for `name` in lockstep (send, wait for the answer) from
/// one connected socket, pinned to one CPU; queries per second.
fn dns_loop(n: usize, name: &str) -> anyhow::Result<f64> {
    let _pinned = PinToLastCpu::new();
    let socket = std::net::UdpSocket::bind("127.0.0.1:0")?;
    socket.connect(DNS_BENCH_SERVER)?;
    socket.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut buf = [0u8; 512];
    let start = Instant::now();
    for i in 0..n {
        socket.send(&dns_query(i as u16, name))?;
        socket
            .recv(&mut buf)
            .context("no answer from the responder")?;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// Section 1d: DNS lookups for Tor. The connection storm with `[dns]` off
/// and on (the egress program on every packet that is not DNS), then a
/// query loop: no sensor, `[dns]` off, `[dns]` on for an unlisted name
/// (the walk and the lookups, nothing sent) and for a watched one (each
/// query also crosses to the daemon), interleaved per round.
fn dns(bin: &Path, scratch: &Path, n: usize, rounds: usize) -> anyhow::Result<()> {
    let cfg = scratch.join("dns.toml");
    std::fs::write(&cfg, "[dns]\nenabled = true\n")?;
    let run = |extra: &[&str]| {
        std::iter::once("run")
            .chain(extra.iter().copied())
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let on = run(&["--config", cfg.to_str().unwrap()]);
    println!("== 1d. DNS lookups for Tor: storm with a 1-byte exchange (no DNS), [dns] off vs on");
    let conditions = vec![
        ("no sensor".to_owned(), vec![]),
        ("sensor, [dns] off".to_owned(), run(&[])),
        ("sensor, [dns] on".to_owned(), on.clone()),
    ];
    compare(bin, &conditions, n / 2, rounds)?;

    let q = n;
    println!(
        "   UDP queries to {DNS_BENCH_SERVER} in lockstep, {q} per round, {rounds} rounds (order cycles)"
    );
    dns_responder()?;
    dns_loop(q / 4, "www.example.com")?; // warm-up
    let cases: [(&str, Option<&[String]>, &str); 4] = [
        ("no sensor", None, "www.example.com"),
        ("[dns] off", Some(&conditions[1].1), "www.example.com"),
        ("[dns] on, unlisted name", Some(&on), "www.example.com"),
        ("[dns] on, watched name", Some(&on), "www.torproject.org"),
    ];
    let args: Vec<Option<&[String]>> = cases.iter().map(|(_, a, _)| *a).collect();
    let rates = rotated(bin, &args, rounds, |i| dns_loop(q, cases[i].2))?;
    let ratio = |i: usize, base: usize| median_ratio(&rates, i, base);
    for (i, (label, ..)) in cases.iter().enumerate() {
        println!(
            "   {label:<34} {:>7.0} queries/s   RATIO to no sensor {:.3}, to [dns] off {:.3}",
            median(&rates[i]),
            ratio(i, 0),
            ratio(i, 1)
        );
    }
    // The egress program's own time per query (bpf_stats).
    for name in ["www.example.com", "www.torproject.org"] {
        let stats_flag = Path::new("/proc/sys/kernel/bpf_stats_enabled");
        let old = std::fs::read_to_string(stats_flag).unwrap_or_else(|_| "0".into());
        let args: Vec<&str> = on.iter().map(String::as_str).collect();
        let sensor = Running::start(bin, &args, Stdio::null())?;
        let _ = std::fs::write(stats_flag, "1");
        let before = program_stats();
        dns_loop(q, name)?;
        let after = program_stats();
        let _ = std::fs::write(stats_flag, old.trim());
        sensor.stop()?;
        let each: Vec<String> = after
            .iter()
            .filter(|(p, ..)| p.starts_with("dns_"))
            .filter_map(|(p, ns, cnt)| {
                let (ns0, cnt0) = before
                    .iter()
                    .find(|(b, ..)| b == p)
                    .map_or((0, 0), |(_, a, b)| (*a, *b));
                let runs = cnt - cnt0;
                (runs > 0).then(|| {
                    format!(
                        "{p} {:.0} ns/run x {:.2}/query",
                        (ns - ns0) as f64 / runs as f64,
                        runs as f64 / q as f64
                    )
                })
            })
            .collect();
        println!("   kernel cost, {name}: {}", each.join(", "));
    }
    Ok(())
}

/// `ip` with `args`, which must succeed.
fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// The bench's router: inside -- router -- outside namespaces, deleted on
/// drop.
struct BenchRouter {
    names: [String; 3],
}

impl BenchRouter {
    fn new() -> anyhow::Result<BenchRouter> {
        let id = std::process::id() % 100_000;
        let names = ["i", "r", "o"].map(|t| format!("tsb{id}{t}"));
        let r = BenchRouter { names };
        let [inside, router, outside] = &r.names;
        for ns in &r.names {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
            ip(&["netns", "add", ns])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        ip(&[
            "link", "add", "tsbih", "netns", inside, "type", "veth", "peer", "name", "tsbin",
            "netns", router,
        ])?;
        ip(&[
            "link", "add", "tsboh", "netns", outside, "type", "veth", "peer", "name", "tsbout",
            "netns", router,
        ])?;
        for (ns, dev, addr) in [
            (inside, "tsbih", "192.0.2.2/24"),
            (router, "tsbin", "192.0.2.1/24"),
            (router, "tsbout", "198.51.100.1/24"),
            (outside, "tsboh", "198.51.100.2/24"),
            (outside, "tsboh", "198.51.100.9/24"),
        ] {
            ip(&["-n", ns, "addr", "add", addr, "dev", dev])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
        }
        ip(&["-n", inside, "route", "add", "default", "via", "192.0.2.1"])?;
        ip(&[
            "-n",
            outside,
            "route",
            "add",
            "192.0.2.0/24",
            "via",
            "198.51.100.1",
        ])?;
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                router,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
            ])
            .status()?;
        if !out.success() {
            bail!("turning forwarding on in {router}");
        }
        Ok(r)
    }
}

impl Drop for BenchRouter {
    fn drop(&mut self) {
        for ns in &self.names {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// One iperf3 run from the inside host to `to` (the server runs in the
/// outside namespace): received bits per second.
fn iperf(r: &BenchRouter, to: &str, secs: u32) -> anyhow::Result<f64> {
    let [inside, _, outside] = &r.names;
    let mut server = Command::new("ip")
        .args(["netns", "exec", outside, "iperf3", "-s", "-1", "-B", to])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting iperf3 -s")?;
    std::thread::sleep(Duration::from_millis(300));
    let out = Command::new("ip")
        .args(["netns", "exec", inside, "iperf3", "-c", to, "-J", "-t"])
        .arg(secs.to_string())
        .output()
        .context("running iperf3 -c")?;
    let _ = server.wait();
    let doc: Value = serde_json::from_slice(&out.stdout).context("iperf3 -J output")?;
    doc["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .with_context(|| format!("iperf3 gave no rate: {doc}"))
}

/// Section 8: forwarding throughput through a router namespace, without
/// the gateway programs and with them (peer unlisted, peer listed).
fn gateway(bin: &Path, scratch: &Path, rounds: usize) -> anyhow::Result<()> {
    println!(
        "== 8. gateway mode: iperf3 TCP throughput through a router namespace, 3 s per run, {rounds} rounds of three (no sensor, gateway programs with the peer unlisted, with the peer listed: its flow tracked)"
    );
    let r = BenchRouter::new()?;
    let feed = scratch.join("gateway.feed");
    // Listed: 198.51.100.9 (the "listed" runs go there); 198.51.100.2 is not.
    std::fs::write(&feed, "198.51.100.9\n")?;
    let feed = feed.to_str().expect("utf-8 path").to_owned();
    let router = r.names[1].clone();
    let bin = bin.to_str().expect("utf-8 path").to_owned();
    let sensor_args: Vec<&str> = vec![
        "netns",
        "exec",
        &router,
        &bin,
        "run",
        "--allow-reserved",
        "--feed",
        &feed,
        "--gateway-interface",
        "tsbin",
        "--metrics-listen",
        "off",
    ];
    iperf(&r, "198.51.100.2", 1)?; // warm-up
    let names = [
        "no sensor",
        "gateway, peer unlisted",
        "gateway, peer listed",
    ];
    let mut rates: [Vec<f64>; 3] = Default::default();
    for round in 0..rounds {
        for k in 0..3 {
            // Rotate the order, so that no condition is always first.
            let c = (k + round) % 3;
            let to = if c == 2 {
                "198.51.100.9"
            } else {
                "198.51.100.2"
            };
            let sensor = if c == 0 {
                None
            } else {
                let s = Running::start(Path::new("ip"), &sensor_args, Stdio::null())?;
                s.settle();
                Some(s)
            };
            let bps = iperf(&r, to, 3)?;
            if let Some(s) = sensor {
                s.stop()?;
            }
            rates[c].push(bps);
        }
    }
    let base = median(&rates[0]);
    for (name, v) in names.iter().zip(&rates) {
        let m = median(v);
        println!(
            "   {name:<24} {:>8.2} Gbit/s (median of {}; runs {})  ratio {:.3}",
            m / 1e9,
            v.len(),
            v.iter()
                .map(|x| format!("{:.2}", x / 1e9))
                .collect::<Vec<_>>()
                .join(" "),
            m / base
        );
    }
    Ok(())
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

/// Section 5: the cost of `durable` outputs (spooled and fsynced before
/// delivery) against delivery from memory, in the same run.
fn outputs(bin: &Path, scratch: &Path) -> anyhow::Result<()> {
    println!("== 5. outputs: HTTP output on loopback, durable vs memory");
    let status = Command::new(bin)
        .args([
            "bench-outputs",
            "--alerts",
            "50000",
            "--rounds",
            "5",
            "--state-dir",
        ])
        .arg(scratch.join("outputs"))
        .env("TORSENSOR_LOG", "warn")
        .status()?;
    if !status.success() {
        bail!("torsensor bench-outputs failed ({status})");
    }
    Ok(())
}

/// Section 6: a year of consensuses in the history index: import time,
/// size, lookups/s against a baseline (the daemon's hidden `history bench`).
fn history(bin: &Path, scratch: &Path) -> anyhow::Result<()> {
    println!("== 6. history: a year of hourly consensuses indexed, lookups at a time");
    let dir = scratch.join("history");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(scratch)?;
    let status = Command::new(bin)
        .args([
            "history",
            "bench",
            "--documents",
            "8760",
            "--relays",
            "7000",
            "--dir",
        ])
        .arg(&dir)
        .env("TORSENSOR_LOG", "warn")
        .status()?;
    if !status.success() {
        bail!("torsensor history bench failed ({status})");
    }
    Ok(())
}

/// Section 7: the hunt's throughput against tcpdump, tshark and grep on the
/// same files, with a year of history loaded (the daemon's hidden
/// `bench-hunt`).
fn hunt(bin: &Path, scratch: &Path) -> anyhow::Result<()> {
    println!(
        "== 7. hunt: captures and access logs, a year of history loaded, against tcpdump, tshark and grep"
    );
    let status = Command::new(bin)
        .args(["bench-hunt", "--dir"])
        .arg(scratch.join("hunt"))
        .env("TORSENSOR_LOG", "warn")
        .status()?;
    if !status.success() {
        bail!("torsensor bench-hunt failed ({status})");
    }
    Ok(())
}
