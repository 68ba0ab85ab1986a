//! `torsensor history bench` (hidden; section 6 of `cargo xtask bench`):
//! a year of hourly consensuses of a synthetic network of the real size
//! with churn, indexed; the index's size on disk and in memory; lookups/s
//! against a `BTreeMap<IpAddr, Vec<interval>>` with a linear scan of each
//! address's intervals, built from the same data in the same run, printed
//! as a ratio. Also the cost of real-format documents through the whole
//! import path (parser included), on a sample.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::history::index::{RelaySeen, Role, Window, time};
use crate::history::{self, Builder, HistoryError, Importer};

pub const HOUR: u32 = 3600;
/// 2025-01-01T00:00:00Z.
pub const T0: u32 = 1_735_689_600;
/// Flag sets relays move between (the most common ones on the network).
const FLAGS: &[&str] = &[
    "Fast Running Stable V2Dir Valid",
    "Fast Guard HSDir Running Stable V2Dir Valid",
    "Exit Fast Running Stable V2Dir Valid",
    "Exit Fast Guard HSDir Running Stable V2Dir Valid",
    "Running V2Dir Valid",
    "Fast Running V2Dir Valid",
    "Fast HSDir Running Stable V2Dir Valid",
    "BadExit Exit Fast Running V2Dir Valid",
];
/// Per hour: relays that leave for good (replaced by new ones), that
/// change address, that change flags, and that miss this consensus.
const LEAVE_PER_HOUR: usize = 2;
const MOVE_PER_HOUR: usize = 2;
const FLAGS_PER_HOUR: usize = 20;
const ABSENT_SHARE: f64 = 0.01;

struct Relay {
    fingerprint: [u8; 20],
    nickname: String,
    v4: u32,
    v6: Option<u128>,
    or_port: u16,
    flags: usize,
}

struct Network {
    rng: fastrand::Rng,
    relays: Vec<Relay>,
    serial: u32,
}

impl Network {
    fn new(n: u32) -> Self {
        let mut net = Network {
            rng: fastrand::Rng::with_seed(16),
            relays: Vec::new(),
            serial: 0,
        };
        for _ in 0..n {
            let r = net.relay();
            net.relays.push(r);
        }
        net
    }

    fn address(&mut self) -> u32 {
        // Public-looking unicast space, away from reserved ranges.
        0x0500_0000 + self.rng.u32(0..0xC000_0000)
    }

    fn relay(&mut self) -> Relay {
        self.serial += 1;
        let mut fingerprint = [0u8; 20];
        self.rng.fill(&mut fingerprint);
        let v6 = (self.rng.f64() < 0.48)
            .then(|| (0x2a00u128 << 112) | (u128::from(self.rng.u64(..)) << 16) | 1);
        Relay {
            fingerprint,
            nickname: format!("relay{}", self.serial),
            v4: self.address(),
            v6,
            or_port: [443, 9001, 9001, 8443, 9002][self.rng.usize(0..5)],
            flags: self.rng.usize(0..FLAGS.len()),
        }
    }

    /// One hour of churn.
    fn step(&mut self) {
        let n = self.relays.len();
        for _ in 0..LEAVE_PER_HOUR {
            let i = self.rng.usize(0..n);
            self.relays[i] = self.relay();
        }
        for _ in 0..MOVE_PER_HOUR {
            let i = self.rng.usize(0..n);
            self.relays[i].v4 = self.address();
        }
        for _ in 0..FLAGS_PER_HOUR {
            let i = self.rng.usize(0..n);
            self.relays[i].flags = self.rng.usize(0..FLAGS.len());
        }
    }

    /// Which relays are in this hour's consensus.
    fn present(&mut self) -> Vec<bool> {
        (0..self.relays.len())
            .map(|_| self.rng.f64() >= ABSENT_SHARE)
            .collect()
    }

    /// The same hour as a real-format microdesc consensus (unsigned).
    fn consensus_text(&self, hour: u32, present: &[bool]) -> String {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD_NO_PAD;
        let t = |s: u32| {
            crate::time::rfc3339_secs(time(s))
                .replace('T', " ")
                .replace('Z', "")
        };
        let va = T0 + hour * HOUR;
        let mut text = format!(
            "network-status-version 3 microdesc\nvote-status consensus\nconsensus-method 34\nvalid-after {}\nfresh-until {}\nvalid-until {}\nvoting-delay 300 300\n",
            t(va),
            t(va + HOUR),
            t(va + 3 * HOUR)
        );
        for (r, _) in self.relays.iter().zip(present).filter(|(_, p)| **p) {
            let _ = writeln!(
                text,
                "r {} {} {} {} {} 0",
                r.nickname,
                b64.encode(r.fingerprint),
                t(va - 7200),
                Ipv4Addr::from(r.v4),
                r.or_port
            );
            if let Some(v6) = r.v6 {
                let _ = writeln!(text, "a [{}]:{}", Ipv6Addr::from(v6), r.or_port);
            }
            let _ = writeln!(text, "s {}", FLAGS[r.flags]);
            let _ = writeln!(text, "v Tor 0.4.8.16");
            let _ = writeln!(
                text,
                "pr Conflux=1 Cons=2 Desc=2 DirCache=2 FlowCtrl=1-2 HSDir=2 HSIntro=4-5 HSRend=1-2 Link=1-5 LinkAuth=3 Microdesc=2-3 Padding=2 Relay=1-4"
            );
            let _ = writeln!(text, "w Bandwidth=1000");
            let _ = writeln!(text, "m {}", b64.encode(&r.fingerprint.repeat(2)[..32]));
        }
        text.push_str("directory-footer\n");
        text
    }
}

/// The synthetic year as a [`Builder`] (every relay's addresses per hour
/// it is present), and the records added; shared with the hunt's bench.
pub fn year_builder(documents: u32, relays: u32) -> (Builder, u64) {
    let mut net = Network::new(relays);
    let mut builder = Builder::new();
    let mut records = 0u64;
    for h in 0..documents {
        let present = net.present();
        let (first, last) = (T0 + h * HOUR, T0 + (h + 1) * HOUR);
        for (r, _) in net.relays.iter().zip(&present).filter(|(_, p)| **p) {
            let port = r.or_port.to_string();
            let seen = RelaySeen {
                fingerprint: &r.fingerprint,
                nickname: &r.nickname,
                or_ports: &port,
                flags: FLAGS[r.flags],
            };
            builder.add_relay(IpAddr::V4(r.v4.into()), first, last, &seen);
            records += 1;
            if let Some(v6) = r.v6 {
                builder.add_relay(IpAddr::V6(v6.into()), first, last, &seen);
                records += 1;
            }
        }
        let mut digest = [0u8; 32];
        digest[..4].copy_from_slice(&h.to_le_bytes());
        builder.count_consensus(digest);
        net.step();
    }
    (builder, records)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Runs the benchmark; the index file is written in `dir`.
pub fn run(documents: u32, relays: u32, lookups: usize, dir: &Path) -> Result<(), HistoryError> {
    println!(
        "   {documents} hourly consensuses, {relays} relays (48% with IPv6), churn per hour: {LEAVE_PER_HOUR} replaced, {MOVE_PER_HOUR} moved, {FLAGS_PER_HOUR} new flags, {:.0}% absent",
        ABSENT_SHARE * 100.0
    );
    // 1. Real-format documents through the whole import path, on a sample.
    let sample = documents.min(24);
    let mut net = Network::new(relays);
    let texts: Vec<String> = (0..sample)
        .map(|h| {
            let present = net.present();
            let text = net.consensus_text(h, &present);
            net.step();
            text
        })
        .collect();
    let bytes: usize = texts.iter().map(String::len).sum();
    // Interleaved rounds, the best of each (the machine is shared): the
    // whole import path, and the feed parser alone.
    let (mut whole, mut parser) = (Duration::MAX, Duration::MAX);
    for _round in 0..3 {
        let mut builder = Builder::new();
        let start = Instant::now();
        let mut importer = Importer::new(&mut builder, None);
        for (i, text) in texts.iter().enumerate() {
            importer.document(&format!("sample {i}"), text.as_bytes());
        }
        whole = whole.min(start.elapsed());
        assert_eq!(
            importer.report.consensuses, sample as usize,
            "{:?}",
            importer.report.errors
        );
        let start = Instant::now();
        for text in &texts {
            let feed = crate::feed::parse::parse(text.as_bytes(), None, true);
            std::hint::black_box(feed.is_ok());
        }
        parser = parser.min(start.elapsed());
    }
    let per_doc = whole / sample.max(1);
    println!(
        "   parse + index, real-format microdesc consensuses ({sample}, best of 3): {:.1} ms/document ({:.1} MB each), {:.1} documents/s; a year of {documents} would take {:.0} s",
        per_doc.as_secs_f64() * 1e3,
        bytes as f64 / f64::from(sample.max(1)) / 1e6,
        1.0 / per_doc.as_secs_f64(),
        per_doc.as_secs_f64() * f64::from(documents)
    );
    println!(
        "   of which the feed parser (feed::parse, shared with the daemon): {:.1} ms/document",
        (parser / sample.max(1)).as_secs_f64() * 1e3
    );
    drop(texts);

    // 2. The year, indexed from the documents' content (no text).
    let start = Instant::now();
    let (builder, records) = year_builder(documents, relays);
    let build = start.elapsed();
    let start = Instant::now();
    let index = builder.finish();
    let freeze = start.elapsed();
    let s = index.summary();
    println!(
        "   index build: {records} (address, relay) records in {:.1} s ({:.1} M records/s), freeze {:.2} s",
        build.as_secs_f64(),
        records as f64 / build.as_secs_f64() / 1e6,
        freeze.as_secs_f64()
    );
    println!(
        "   index: {} addresses ({} IPv4, {} IPv6), {} relays, {} intervals",
        s.addresses, s.ipv4, s.ipv6, s.relays, s.intervals
    );
    let d = history::open_dir(dir)?;
    let start = Instant::now();
    let size = history::save(&d, &index)?;
    let write = start.elapsed();
    let start = Instant::now();
    let loaded = history::load(&d)?.expect("just written");
    let load = start.elapsed();
    let in_memory = loaded.summary().memory_bytes;
    assert_eq!(
        loaded.summary(),
        history::index::Summary {
            memory_bytes: in_memory,
            ..s.clone()
        }
    );
    println!(
        "   size: {:.1} MiB on disk (written in {:.2} s, loaded and checked in {:.2} s), {:.1} MiB in memory",
        mib(size),
        write.as_secs_f64(),
        load.as_secs_f64(),
        mib(in_memory as u64)
    );

    // 3. Lookups: half known addresses, half unknown; times over the year.
    let mut baseline: BTreeMap<IpAddr, Vec<(u32, u32, bool)>> = BTreeMap::new();
    index.for_each_interval(|ip, role, first, last| {
        baseline
            .entry(ip)
            .or_default()
            .push((first, last, role == Role::Exit));
    });
    let known: Vec<IpAddr> = baseline.keys().copied().collect();
    let mut rng = fastrand::Rng::with_seed(7);
    let queries: Vec<(IpAddr, u32)> = (0..lookups)
        .map(|i| {
            let ip = if i % 2 == 0 {
                known[rng.usize(0..known.len())]
            } else {
                IpAddr::V4(Ipv4Addr::from(0x0500_0000 + rng.u32(0..0xC000_0000)))
            };
            (ip, T0 + rng.u32(0..documents * HOUR))
        })
        .collect();
    let window = Window::default();
    let w = |role_exit: bool| -> (i64, i64) {
        let (b, a) = if role_exit {
            (window.exit_before, window.exit_after)
        } else {
            (window.relay_before, window.relay_after)
        };
        (b.as_secs() as i64, a.as_secs() as i64)
    };
    let (rb, ra) = w(false);
    let (eb, ea) = w(true);
    let base_lookup = |ip: &IpAddr, t: u32| -> usize {
        let t = i64::from(t);
        baseline.get(ip).map_or(0, |v| {
            v.iter()
                .filter(|(f, l, exit)| {
                    let (b, a) = if *exit { (eb, ea) } else { (rb, ra) };
                    i64::from(*f) - a <= t && t <= i64::from(*l) + b
                })
                .count()
        })
    };
    let mut best = [Duration::MAX; 2];
    let mut hits = [0usize; 2];
    for _round in 0..3 {
        for (k, slot) in best.iter_mut().enumerate() {
            let start = Instant::now();
            let mut n = 0;
            for (ip, t) in &queries {
                n += if k == 0 {
                    index.count(*ip, *t, &window)
                } else {
                    base_lookup(ip, *t)
                };
            }
            *slot = (*slot).min(start.elapsed());
            hits[k] = std::hint::black_box(n);
        }
    }
    assert_eq!(hits[0], hits[1], "index and baseline disagree");
    let rate = |d: Duration| lookups as f64 / d.as_secs_f64();
    println!(
        "   lookups ({lookups}, half known, best of 3): index {:.2} M/s, BTreeMap + linear scan {:.2} M/s: ratio {:.2}x ({} matches each; target > 1 M/s)",
        rate(best[0]) / 1e6,
        rate(best[1]) / 1e6,
        rate(best[0]) / rate(best[1]),
        hits[0]
    );
    Ok(())
}
