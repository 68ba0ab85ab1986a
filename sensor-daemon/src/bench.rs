//! `torsensor feed bench` (hidden; run by `cargo xtask bench`): how long the
//! whole relay set takes to parse, merge and load into the kernel maps, and
//! to refresh by difference, at the real size and at 10 times that size.
//! Prints ratios against the 1x baseline measured in the same run.

pub mod collector;
pub mod history;
pub mod hunt;

use std::fmt::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::SensorConfig;
use crate::feed::parse::{FeedFormat, parse};
use crate::feed::{Feed, FeedSet, Origin};
use crate::kernel::{KernelError, LoadOptions, Probes};
use crate::net::is_reserved;

/// Shape of the real network (2024-03-12 fixtures): relays, share with an
/// IPv6 ORPort, exit entries and distinct exit IPs.
const RELAYS: usize = 7607;
const EXIT_ENTRIES: usize = 2372;
const EXIT_IPS: usize = 1174;

/// A synthetic network of `scale` times the real size; with `seed` > 0,
/// `churn` of the relays moved to new addresses, as a later version would.
fn network(scale: usize, churn: f64, seed: usize) -> (String, String) {
    let relays = RELAYS * scale;
    let changed = (relays as f64 * churn) as usize;
    let mut next_v4 = 0u32;
    let mut v4 = move || loop {
        next_v4 += 1;
        let a = Ipv4Addr::from(0x0500_0000 + next_v4 * 3);
        if !is_reserved(&ipnet::IpNet::from(std::net::IpAddr::V4(a))) {
            return a;
        }
    };
    let mut details = String::from(
        "{\"version\":\"8.0\",\"relays_published\":\"2026-11-24 10:00:00\",\"relays\":[\n",
    );
    let mut exits = String::new();
    for i in 0..relays {
        // The first `changed` relays move to fresh addresses in version `seed`.
        let base = v4();
        let ip = if i < changed && seed > 0 {
            Ipv4Addr::from(0x6000_0000 + ((seed * relays + i) as u32) * 5)
        } else {
            base
        };
        let mut or = format!("\"{ip}:9001\"");
        if i % 21 < 10 {
            let moved = if i < changed { seed as u16 } else { 0 };
            let v6 = Ipv6Addr::new(0x2a00, (i >> 16) as u16, i as u16, 0, 0, 0, moved, 1);
            let _ = write!(or, ",\"[{v6}]:443\"");
        }
        let _ = writeln!(
            details,
            "{}{{\"nickname\":\"r{i}\",\"fingerprint\":\"{:040X}\",\"or_addresses\":[{or}],\"flags\":[\"Running\"]}}",
            if i == 0 { "" } else { "," },
            i
        );
        if i < EXIT_ENTRIES * scale {
            let exit_ip = if i % EXIT_ENTRIES < EXIT_IPS {
                ip
            } else {
                Ipv4Addr::from(0x7000_0000 + i as u32)
            };
            let _ = writeln!(
                exits,
                "ExitNode {:040X}\nPublished 2026-11-24 09:00:00\nLastStatus 2026-11-24 10:00:00\nExitAddress {exit_ip} 2026-11-24 10:05:00",
                i
            );
        }
    }
    details.push_str("]}\n");
    (details, exits)
}

struct Sample {
    parse: Duration,
    merge: Duration,
    load: Duration,
    refresh: Duration,
    written: usize,
    entries: usize,
}

fn feed(name: &str, text: &str, format: FeedFormat) -> Arc<Feed> {
    Arc::new(Feed {
        name: name.into(),
        location: "bench".into(),
        origin: Origin::Network,
        fetched: None,
        data: parse(text.as_bytes(), Some(format), false).expect("synthetic feed parses"),
    })
}

fn measure(scale: usize) -> Result<Sample, KernelError> {
    let (details, exits) = network(scale, 0.0, 0);
    let (details2, exits2) = network(scale, 0.03, 1);
    let t = Instant::now();
    let relays = feed("relays", &details, FeedFormat::Onionoo);
    let exit = feed("exits", &exits, FeedFormat::Tordnsel);
    let parse = t.elapsed();
    let t = Instant::now();
    let set = FeedSet::new(vec![relays, exit]).expect("two feeds");
    let merge = t.elapsed();
    let set2 = FeedSet::new(vec![
        feed("relays", &details2, FeedFormat::Onionoo),
        feed("exits", &exits2, FeedFormat::Tordnsel),
    ])
    .expect("two feeds");
    let mut probes = Probes::open(&LoadOptions {
        max_entries: 1 << 20,
        ..SensorConfig::default().load_options()
    })?;
    let t = Instant::now();
    probes.apply_feeds(&set)?;
    let load = t.elapsed();
    // Fill the other copy too, so that the next refresh writes a diff as it
    // does in steady state (against the version before the current one).
    probes.apply_feeds(&set)?;
    // Past the flip grace period, as a real refresh (an hour later) is.
    std::thread::sleep(Duration::from_millis(50));
    let t = Instant::now();
    let stats = probes.apply_feeds(&set2)?;
    let refresh = t.elapsed();
    Ok(Sample {
        parse,
        merge,
        load,
        refresh,
        written: stats.written + stats.deleted,
        entries: set.prefixes().len() + set.or_ports().len(),
    })
}

/// Runs the feed benchmark and prints the table.
pub fn run(rounds: usize) -> Result<(), KernelError> {
    let rounds = rounds.max(1);
    let median = |mut v: Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let mut rows = Vec::new();
    for scale in [1, 10] {
        let samples: Vec<Sample> = (0..rounds)
            .map(|_| measure(scale))
            .collect::<Result<_, _>>()?;
        let pick = |f: fn(&Sample) -> Duration| median(samples.iter().map(f).collect());
        rows.push((
            scale,
            pick(|s| s.parse),
            pick(|s| s.merge),
            pick(|s| s.load),
            pick(|s| s.refresh),
            samples[0].written,
            samples[0].entries,
        ));
    }
    println!(
        "   scale  kernel entries  parse      merge      full load  3% refresh (entries written)"
    );
    for (scale, parse, merge, load, refresh, written, entries) in &rows {
        println!(
            "   {scale:>4}x  {entries:>14}  {:>8.1}ms {:>8.1}ms {:>8.1}ms {:>8.1}ms ({written})",
            ms(*parse),
            ms(*merge),
            ms(*load),
            ms(*refresh)
        );
    }
    let (one, ten) = (&rows[0], &rows[1]);
    println!(
        "   RATIO 10x/1x: parse {:.1}, merge {:.1}, full load {:.1}, refresh {:.1} (10.0 = linear)",
        ms(ten.1) / ms(one.1),
        ms(ten.2) / ms(one.2),
        ms(ten.3) / ms(one.3),
        ms(ten.4) / ms(one.4)
    );
    println!(
        "   RATIO refresh/full load: {:.2} at 1x, {:.2} at 10x",
        ms(one.4) / ms(one.3),
        ms(ten.4) / ms(ten.3)
    );
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// `torsensor bench-floor` (hidden; run by `cargo xtask bench`): attaches
/// only an empty program where the sensor's state program goes, with the
/// sensor's maps created (empty), says "torsensor armed" on stderr, and waits for
/// SIGTERM or SIGINT. The throughput under it is the floor no program on
/// that hook can go below.
pub fn hook_floor(syscalls: bool) -> Result<(), KernelError> {
    // Blocked before anything else, so that sigwait takes them.
    // SAFETY: plain signal-mask calls on a zeroed sigset_t.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    };
    let probes = Probes::load_hook_floor(&SensorConfig::default().load_options(), syscalls)?;
    tracing::info!("torsensor armed (hook floor: an empty program on inet_sock_set_state)");
    let mut sig = 0;
    // SAFETY: waits on the blocked set built above.
    unsafe { libc::sigwait(&set, &mut sig) };
    drop(probes);
    Ok(())
}
