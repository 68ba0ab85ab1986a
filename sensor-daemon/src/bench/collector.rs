//! `cargo xtask bench --collector-only`: the live flow collector's
//! throughput (flow records per second, one core) against its own baseline,
//! the export reader alone (`netflow_parser` through the hunt's reader,
//! nothing matched or kept), on the same datagrams in the same run: the
//! ratio is what matching against the live sets, joining directions and
//! judging cost on top of reading.
//!
//! The datagrams are NetFlow v5 (30 records each, the most a v5 export
//! holds): conversations between inside hosts and outside addresses, both
//! directions in the same export, `listed_percent` of them with an exit
//! address of the embedded snapshot (the live sets are the embedded
//! feeds, as at a first start).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::feed::{Feed, FeedSet};
use crate::hunt::collect::{Collector, CollectorConfig};
use crate::hunt::netflow::{Export, Exports};
use crate::hunt::{Flow, HuntSettings, Position, Records, Request};

/// One v5 record: source, destination, their ports, bytes.
pub type V5Record = (Ipv4Addr, Ipv4Addr, u16, u16, u32);

/// A NetFlow v5 export datagram (Cisco's layout: a 24-byte header, then
/// 48 bytes per record), exported at uptime 100 s = `unix_secs`; every
/// record ran from uptime 20 s to 95 s with 10 packets, entered by ifIndex
/// 3 and left by 4; engine id 7.
pub fn v5_datagram(unix_secs: u32, records: &[V5Record]) -> Vec<u8> {
    let mut out = Vec::with_capacity(24 + 48 * records.len());
    out.extend(5u16.to_be_bytes());
    out.extend((records.len() as u16).to_be_bytes());
    out.extend(100_000u32.to_be_bytes()); // sys uptime, ms
    out.extend(unix_secs.to_be_bytes());
    out.extend(0u32.to_be_bytes()); // nsecs
    out.extend(1u32.to_be_bytes()); // sequence
    out.extend([0u8, 7]); // engine type, id
    out.extend(0u16.to_be_bytes()); // sampling
    for (src, dst, sport, dport, bytes) in records {
        out.extend(src.octets());
        out.extend(dst.octets());
        out.extend([0u8; 4]); // next hop
        out.extend(3u16.to_be_bytes()); // input ifIndex
        out.extend(4u16.to_be_bytes()); // output ifIndex
        out.extend(10u32.to_be_bytes()); // packets
        out.extend(bytes.to_be_bytes());
        out.extend(20_000u32.to_be_bytes()); // first (uptime ms)
        out.extend(95_000u32.to_be_bytes()); // last
        out.extend(sport.to_be_bytes());
        out.extend(dport.to_be_bytes());
        out.extend([0u8, 0x1b, 6, 0]); // pad, TCP flags, TCP, ToS
        out.extend([0u8; 8]); // AS numbers, masks, pad
    }
    out
}

/// Counts what the reader hands over (the baseline).
#[derive(Default)]
struct Count(u64);

impl Records for Count {
    fn flow(&mut self, _: Flow) {
        self.0 += 1;
    }
    fn exported(&mut self, _: Flow, _: &Export) {
        self.0 += 1;
    }
    fn request(&mut self, _: Request) {}
    fn bad(&mut self, _: u64, _: &str) {}
    fn may_match(&self, _: IpAddr) -> bool {
        true
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Runs the benchmark: `datagrams` exports, `rounds` rounds of each.
pub fn run(datagrams: usize, rounds: usize, listed_percent: u32) -> Result<(), String> {
    let datagrams = datagrams.min(65_535);
    let feeds = FeedSet::new(Feed::embedded().into_iter().map(Arc::new).collect())
        .map_err(|e| e.to_string())?;
    let exits: Vec<Ipv4Addr> = feeds
        .prefixes()
        .iter()
        .filter_map(|(net, m)| match net.addr() {
            IpAddr::V4(a) if net.prefix_len() == 32 && m.exit_feeds != 0 => Some(a),
            _ => None,
        })
        .take(2000)
        .collect();
    if exits.is_empty() {
        return Err("the embedded feeds have no IPv4 address".into());
    }
    // 15 conversations (30 records) per datagram.
    let mut seed = 0x9e37_79b9u32;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        seed
    };
    let mut listed = 0usize;
    let exports: Vec<Vec<u8>> = (0..datagrams)
        .map(|d| {
            let mut records = Vec::with_capacity(30);
            for c in 0..15 {
                let r = next();
                // Unique per conversation (for fewer than 65,536 datagrams).
                let inside = Ipv4Addr::new(10, (d >> 8) as u8, d as u8, c as u8 + 1);
                let outside = if r % 100 < listed_percent {
                    listed += 1;
                    exits[(r as usize / 100) % exits.len()]
                } else {
                    // TEST-NET-3 and 100.64/10: never listed.
                    Ipv4Addr::new(100, 64 + (r % 60) as u8, (r >> 8) as u8, (r >> 16) as u8)
                };
                let port = 32_768 + (r % 28_000) as u16;
                let bytes = if r % 7 == 0 { 3_000_000 } else { 40_000 };
                records.push((inside, outside, port, 443, bytes / 20));
                records.push((outside, inside, 443, port, bytes));
            }
            v5_datagram(1_700_000_100, &records)
        })
        .collect();
    let records = (datagrams * 30) as f64;
    let bytes: usize = exports.iter().map(Vec::len).sum();
    println!(
        "   {datagrams} NetFlow v5 datagrams ({:.1} MB), {} records, {listed} conversations with a listed exit ({listed_percent}%); live sets: the embedded feeds ({} prefixes)",
        bytes as f64 / 1e6,
        datagrams * 30,
        feeds.len()
    );
    let exporter: SocketAddr = "192.0.2.1:40000".parse().expect("address");
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_200);
    let (mut base, mut coll) = (Vec::new(), Vec::new());
    let mut alerts = 0;
    for _ in 0..rounds {
        let start = Instant::now();
        let mut reader = Exports::new();
        let mut count = Count::default();
        for d in &exports {
            reader.packet(exporter, d, Position::default(), &mut count);
        }
        base.push(records / start.elapsed().as_secs_f64());
        assert_eq!(count.0 as f64, records, "every record read");

        let mut config = CollectorConfig::new("udp://127.0.0.1:2055");
        config.max_flows = 1 << 20;
        let start = Instant::now();
        let mut collector = Collector::new(&[config], &HuntSettings::default());
        let classify = |ip, port, d| feeds.classify(ip, port, d);
        let mut judged = 0;
        for d in &exports {
            judged += collector.datagram(0, exporter, d, now, &classify).len();
        }
        let done = collector.expire(now, true);
        judged += done.len();
        coll.push(records / start.elapsed().as_secs_f64());
        alerts = done.iter().filter(|c| c.substantial()).count();
        assert_eq!(judged, listed, "every listed conversation judged once");
    }
    let (b, c) = (median(base), median(coll));
    println!("   reading only (baseline):  {:>12.0} records/s", b);
    println!(
        "   collector (read, match, join, judge): {:>12.0} records/s  ({:.2}x the baseline; {alerts} substantial flows)",
        c,
        c / b
    );
    Ok(())
}
