//! `cargo xtask bench --hunt-only`: the hunt's throughput with a year of
//! history loaded, against `tcpdump -r` and `tshark -r` filtering the same
//! addresses on the same capture, and against `grep -F -f` of the same
//! addresses on the same access log, all in the same run.
//!
//! The capture is synthetic (written here, as a PCAP of Ethernet/IPv4/TCP
//! frames): 20-packet flows between inside hosts and outside addresses, 5%
//! of them to relays of the year, packet sizes as bulk transfers have them
//! (full frames, ACKs, a few mid-sized). The log is combined format with
//! the same mix of clients.

use std::io::{BufWriter, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::history::{HOUR, T0, year_builder};
use crate::history::{self, HistoryError, Index, Window};
use crate::hunt::{Finding, HuntSettings, Hunter, input};

/// Tor addresses the traffic uses (and the filters name).
const PEERS: usize = 200;

/// Builds (or reuses) the year's index in `dir`.
fn year_index(dir: &Path) -> Result<Index, HistoryError> {
    let d = history::open_dir(dir)?;
    if let Some(index) = history::load(&d)? {
        println!(
            "   a year of history: reused {}",
            dir.join(history::INDEX_FILE).display()
        );
        return Ok(index);
    }
    let start = Instant::now();
    let (builder, _) = year_builder(8760, 7000);
    let index = builder.finish();
    history::save(&d, &index)?;
    println!(
        "   a year of history: built in {:.0} s",
        start.elapsed().as_secs_f64()
    );
    Ok(index)
}

fn frame(
    out: &mut Vec<u8>,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    flags: u8,
    payload: usize,
) {
    out.extend_from_slice(&[0, 0x16, 0x3e, 1, 2, 3, 0, 0x16, 0x3e, 4, 5, 6, 0x08, 0x00]);
    let total = (20 + 20 + payload) as u16;
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip[8] = 64;
    ip[9] = 6;
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    out.extend_from_slice(&ip);
    let mut tcp = [0u8; 20];
    tcp[0..2].copy_from_slice(&sport.to_be_bytes());
    tcp[2..4].copy_from_slice(&dport.to_be_bytes());
    tcp[12] = 0x50;
    tcp[13] = flags;
    out.extend_from_slice(&tcp);
    out.resize(out.len() + payload, 0x5a);
}

/// Writes the capture (about `mib` MiB); returns its packets.
fn write_capture(path: &Path, mib: u64, peers: &[Ipv4Addr]) -> std::io::Result<u64> {
    let mut w = BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    w.write_all(&[
        0xd4, 0xc3, 0xb2, 0xa1, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 1, 0, 0, 0,
    ])?;
    let mut rng = fastrand::Rng::with_seed(3);
    let mut written: u64 = 24;
    let mut packets: u64 = 0;
    let mut t_us: u64 = u64::from(T0 + 180 * 24 * HOUR) * 1_000_000;
    let mut frame_buf = Vec::with_capacity(2048);
    let mut flow = 0u32;
    while written < mib << 20 {
        flow += 1;
        let inside = Ipv4Addr::new(10, 1, (flow >> 8) as u8, flow as u8);
        let outside = if flow.is_multiple_of(20) {
            peers[rng.usize(0..peers.len())]
        } else {
            Ipv4Addr::from(0xC633_6400 + rng.u32(0..256)) // 198.51.100.0/24
        };
        let sport = 32768 + (flow % 28000) as u16;
        for k in 0..20u32 {
            let (src, dst, sp, dp, flags, payload) = match k {
                0 => (inside, outside, sport, 443, 0x02, 0),
                1 => (outside, inside, 443, sport, 0x12, 0),
                19 => (inside, outside, sport, 443, 0x11, 0),
                k if k.is_multiple_of(3) => (inside, outside, sport, 443, 0x10, 0),
                k if k.is_multiple_of(7) => (outside, inside, 443, sport, 0x18, 529),
                _ => (outside, inside, 443, sport, 0x10, 1460),
            };
            frame_buf.clear();
            frame(&mut frame_buf, src, dst, sp, dp, flags, payload);
            let len = frame_buf.len() as u32;
            let (s, us) = ((t_us / 1_000_000) as u32, (t_us % 1_000_000) as u32);
            w.write_all(&s.to_le_bytes())?;
            w.write_all(&us.to_le_bytes())?;
            w.write_all(&len.to_le_bytes())?;
            w.write_all(&len.to_le_bytes())?;
            w.write_all(&frame_buf)?;
            written += 16 + u64::from(len);
            packets += 1;
            t_us += 7;
        }
    }
    w.flush()?;
    Ok(packets)
}

/// Writes an access log (about `mib` MiB), 5% of requests from `peers`.
fn write_log(path: &Path, mib: u64, peers: &[Ipv4Addr]) -> std::io::Result<u64> {
    let mut w = BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    let mut rng = fastrand::Rng::with_seed(5);
    let (mut written, mut lines) = (0u64, 0u64);
    let t0 = u64::from(T0 + 180 * 24 * HOUR);
    while written < mib << 20 {
        lines += 1;
        let client = if lines.is_multiple_of(20) {
            peers[rng.usize(0..peers.len())]
        } else {
            Ipv4Addr::from(0xC633_6400 + rng.u32(0..256))
        };
        let t = t0 + lines / 50;
        let (d, h, m, s) = (t / 86_400, (t / 3600) % 24, (t / 60) % 60, t % 60);
        // Days after 2025-01-01, within the first half of the year: a
        // readable date is enough for a bench (the hunt parses it).
        let (mon, day) = month_day(d - u64::from(T0) / 86_400);
        let line = format!(
            "{client} - - [{day:02}/{mon}/2025:{h:02}:{m:02}:{s:02} +0000] \"GET /articles/{} HTTP/1.1\" 200 {} \"https://www.example.org/\" \"Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\"\n",
            rng.u32(0..100_000),
            rng.u32(200..90_000)
        );
        w.write_all(line.as_bytes())?;
        written += line.len() as u64;
    }
    w.flush()?;
    Ok(lines)
}

fn month_day(day_of_year: u64) -> (&'static str, u64) {
    const M: [(&str, u64); 12] = [
        ("Jan", 31),
        ("Feb", 28),
        ("Mar", 31),
        ("Apr", 30),
        ("May", 31),
        ("Jun", 30),
        ("Jul", 31),
        ("Aug", 31),
        ("Sep", 30),
        ("Oct", 31),
        ("Nov", 30),
        ("Dec", 31),
    ];
    let mut d = day_of_year;
    for (name, len) in M {
        if d < len {
            return (name, d + 1);
        }
        d -= len;
    }
    ("Dec", 31)
}

/// Best wall time of `rounds` runs of an external command; None if it
/// cannot run. Its output is read through a pipe (GNU grep stops at the
/// first match when its output is /dev/null).
fn time_command(rounds: usize, mut make: impl FnMut() -> Command) -> Option<Duration> {
    let mut best = Duration::MAX;
    for _ in 0..rounds {
        let start = Instant::now();
        let out = make()
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .output()
            .ok()?;
        if !out.status.success() && out.status.code() != Some(1) {
            return None;
        }
        best = best.min(start.elapsed());
    }
    Some(best)
}

/// Best wall time of the hunt over `path`, and what it found.
fn time_hunt(index: &Index, path: &Path, rounds: usize) -> (Duration, usize, u64) {
    let settings = HuntSettings::default();
    let mut best = Duration::MAX;
    let (mut found, mut records) = (0, 0);
    for _ in 0..rounds {
        let mut findings = 0usize;
        let mut emit = |_: Finding| findings += 1;
        let mut bad = |_: usize, _: u64, _: &str| {};
        let start = Instant::now();
        let mut hunter = Hunter::new(
            index,
            Window::default(),
            &settings,
            None,
            None,
            &mut emit,
            &mut bad,
        );
        let opened = input::open(path).expect("bench input");
        let _ = opened.read(&settings, &mut hunter, &mut |_| {});
        hunter.finish_input();
        records = hunter.stats.flows + hunter.stats.requests;
        drop(hunter);
        best = best.min(start.elapsed());
        found = findings;
    }
    (best, found, records)
}

fn rate(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / 1e6
}

/// Runs the section; files go to `dir` (kept for the next run).
pub fn run(dir: &Path, pcap_mib: u64, log_mib: u64) -> Result<(), Box<dyn std::error::Error>> {
    std::fs::create_dir_all(dir)?;
    let index = year_index(&dir.join("history"))?;
    let s = index.summary();
    println!(
        "   history: {} addresses, {} intervals, {:.1} MiB in memory",
        s.addresses,
        s.intervals,
        s.memory_bytes as f64 / (1 << 20) as f64
    );
    // Relays present at the capture's time (mid-year).
    let at = history::index::time(T0 + 180 * 24 * HOUR);
    let mut peers: Vec<Ipv4Addr> = Vec::new();
    index.for_each_interval(|ip, _, first, last| {
        if let IpAddr::V4(v4) = ip
            && peers.len() < PEERS
            && first <= T0 + 180 * 24 * HOUR
            && last >= T0 + 180 * 24 * HOUR
            && !peers.contains(&v4)
        {
            peers.push(v4);
        }
    });
    assert!(
        peers.iter().all(|p| !index
            .lookup(IpAddr::V4(*p), at, &Window::default())
            .is_empty()),
        "the peers are listed at the capture's time"
    );
    let pcap = dir.join(format!("hunt-{pcap_mib}mib.pcap"));
    let log = dir.join(format!("hunt-{log_mib}mib.log"));
    let addrs = dir.join("peers.txt");
    std::fs::write(
        &addrs,
        peers.iter().map(|p| format!("{p}\n")).collect::<String>(),
    )?;
    let packets = write_capture(&pcap, pcap_mib, &peers)?;
    let lines = write_log(&log, log_mib, &peers)?;
    let pcap_bytes = std::fs::metadata(&pcap)?.len();
    let log_bytes = std::fs::metadata(&log)?.len();
    println!(
        "   capture: {:.0} MB, {packets} packets (5% of flows to {PEERS} relays); log: {:.0} MB, {lines} lines",
        pcap_bytes as f64 / 1e6,
        log_bytes as f64 / 1e6
    );
    // Warm the page cache for everyone.
    let _ = std::fs::read(&pcap).map(|b| b.len());
    let (ours, found, flows) = time_hunt(&index, &pcap, 3);
    let host_filter = peers
        .iter()
        .map(|p| format!("host {p}"))
        .collect::<Vec<_>>()
        .join(" or ");
    let tcpdump = time_command(3, || {
        let mut c = Command::new("tcpdump");
        c.arg("-r")
            .arg(&pcap)
            .args(["-n", "-w", "/dev/null"])
            .arg(&host_filter);
        c
    });
    let set = peers
        .iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let tshark = time_command(1, || {
        let mut c = Command::new("tshark");
        c.arg("-r").arg(&pcap).args([
            "-n",
            "-Y",
            &format!("ip.addr in {{{set}}}"),
            "-T",
            "fields",
            "-e",
            "frame.number",
        ]);
        c
    });
    println!(
        "   hunt (PCAP -> flows, {flows} flows kept, {found} findings): {:.0} MB/s, {:.2} M packets/s on one core",
        rate(pcap_bytes, ours),
        packets as f64 / ours.as_secs_f64() / 1e6
    );
    for (name, t) in [
        (
            "tcpdump -r with a BPF filter of the same addresses",
            tcpdump,
        ),
        ("tshark -r -Y 'ip.addr in {...}'", tshark),
    ] {
        match t {
            Some(t) => println!(
                "   {name}: {:.0} MB/s; hunt is {:.2}x its speed",
                rate(pcap_bytes, t),
                t.as_secs_f64() / ours.as_secs_f64()
            ),
            None => println!("   {name}: could not run"),
        }
    }
    let _ = std::fs::read(&log).map(|b| b.len());
    let (ours_log, found_log, requests) = time_hunt(&index, &log, 3);
    let grep = time_command(3, || {
        let mut c = Command::new("grep");
        c.args(["-c", "-F", "-f"]).arg(&addrs).arg(&log);
        c
    });
    println!(
        "   hunt (access log, {requests} requests parsed, {found_log} findings): {:.0} MB/s",
        rate(log_bytes, ours_log)
    );
    match grep {
        Some(t) => println!(
            "   grep -F -f (the same addresses, no parsing, substring matches): {:.0} MB/s; hunt is {:.2}x its speed",
            rate(log_bytes, t),
            t.as_secs_f64() / ours_log.as_secs_f64()
        ),
        None => println!("   grep: could not run"),
    }
    let goal = rate(pcap_bytes, ours) >= 1000.0;
    println!(
        "   goal (>= 1 GB/s of PCAP per core with a year loaded, faster than tcpdump and tshark): {}",
        if goal {
            "met"
        } else {
            "not met (see the figures)"
        }
    );
    let _: PathBuf = pcap;
    Ok(())
}
