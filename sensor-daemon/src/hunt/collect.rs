//! The live flow collector (issue 17; `[[collector]]`): NetFlow v5/v9 and
//! IPFIX export datagrams received from routers and firewalls, read by the
//! same reader as the hunt's captured exports ([`super::netflow`]:
//! templates per exporter and observation domain, forgotten when not
//! refreshed), each record matched at once against the live Tor sets (the
//! caller's `classify`, the kernel's rule: an exit in either direction on
//! any port, a relay's OR address when the inside host opened the flow to
//! one of its ORPorts). Only records that match are kept: the two
//! directions of a conversation are joined ([`super::merge`]) for
//! `merge_wait`, then judged against the hunt's "substantial" thresholds
//! (`[hunt] min_bytes`, `min_duration`).
//!
//! No I/O: the daemon receives the datagrams and sends the alerts.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime};

use ipnet::IpNet;
use sensor_common::MatchInfo;
use serde::{Deserialize, Serialize};

use super::merge::{HasFlow, OneWayTable};
use super::netflow::{Export, Exports};
use super::{Flow, HuntSettings, Position, Records, Request};
use crate::net::Direction;
use crate::time::epoch_ns;

/// What the collector alerts: the substantial flows only (the default), or
/// every matching flow.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertOn {
    #[default]
    Substantial,
    All,
}

/// One `[[collector]]` table (every default documented in
/// `deploy/torsensor.toml`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectorConfig {
    /// `udp://ADDRESS:PORT` to receive exports on (required).
    pub listen: String,
    /// The exporters accepted (addresses or prefixes); datagrams from
    /// others are refused and counted. Default: any.
    #[serde(default)]
    pub exporters: Vec<String>,
    /// `"substantial"` or `"all"`. Default: substantial.
    #[serde(default)]
    pub alert: AlertOn,
    /// How long a matching one-way record waits for its other direction
    /// before its flow is judged. Default: 30s (1s to 10m).
    #[serde(
        default = "default_merge_wait",
        deserialize_with = "crate::time::deserialize_duration"
    )]
    pub merge_wait: Duration,
    /// Matching flows waiting at once; when full, the oldest is judged at
    /// once. Default: 65536 (1 to 4194304).
    #[serde(default = "default_max_flows")]
    pub max_flows: usize,
    /// A v9/IPFIX template not refreshed for this long is forgotten.
    /// Default: 30m (1m to 1d).
    #[serde(
        default = "default_template_timeout",
        deserialize_with = "crate::time::deserialize_duration"
    )]
    pub template_timeout: Duration,
    /// Exporters (and observation domains) remembered at once, the least
    /// recently heard forgotten first. Default: 1024 (1 to 100000).
    #[serde(default = "default_max_exporters")]
    pub max_exporters: usize,
    /// Datagrams received but not yet read; when full, new ones are
    /// dropped and counted. Default: 4096 (16 to 1048576).
    #[serde(default = "default_queue")]
    pub queue: usize,
    /// The socket's receive buffer in the kernel, in bytes (what a burst
    /// can fill before the reader runs; what overflows it is dropped by
    /// the kernel, and counted). Default: 4194304 (65536 to 268435456).
    #[serde(default = "default_receive_buffer")]
    pub receive_buffer: usize,
}

fn default_merge_wait() -> Duration {
    Duration::from_secs(30)
}
fn default_max_flows() -> usize {
    65_536
}
fn default_template_timeout() -> Duration {
    Duration::from_secs(1800)
}
fn default_max_exporters() -> usize {
    1024
}
fn default_queue() -> usize {
    4096
}
fn default_receive_buffer() -> usize {
    4 << 20
}

impl CollectorConfig {
    /// A listener on `listen` with every default.
    pub fn new(listen: &str) -> Self {
        CollectorConfig {
            listen: listen.into(),
            exporters: Vec::new(),
            alert: AlertOn::default(),
            merge_wait: default_merge_wait(),
            max_flows: default_max_flows(),
            template_timeout: default_template_timeout(),
            max_exporters: default_max_exporters(),
            queue: default_queue(),
            receive_buffer: default_receive_buffer(),
        }
    }

    /// The address to bind, from `udp://ADDRESS:PORT`.
    pub fn address(&self) -> Result<SocketAddr, String> {
        let rest = self.listen.strip_prefix("udp://").ok_or_else(|| {
            format!(
                "collector listen = {:?}: write udp://ADDRESS:PORT (udp://0.0.0.0:2055)",
                self.listen
            )
        })?;
        rest.parse().map_err(|_| {
            format!(
                "collector listen = {:?}: {rest:?} is not ADDRESS:PORT ([::]:4739 for IPv6)",
                self.listen
            )
        })
    }

    /// The accepted exporters, parsed.
    pub fn exporter_nets(&self) -> Result<Vec<IpNet>, String> {
        self.exporters
            .iter()
            .map(|e| {
                e.parse::<IpNet>()
                    .or_else(|_| e.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| {
                        format!(
                            "collector {}: exporters entry {e:?} is not an address or prefix",
                            self.listen
                        )
                    })
            })
            .collect()
    }

    /// Checks every value (once, before anything runs).
    pub fn validate(&self) -> Result<(), String> {
        let addr = self.address()?;
        if addr.port() == 0 {
            return Err(format!("collector listen = {:?}: port 0", self.listen));
        }
        self.exporter_nets()?;
        let l = &self.listen;
        let range = |what: &str, ok: bool, range: &str| {
            if ok {
                Ok(())
            } else {
                Err(format!("collector {l}: {what} must be between {range}"))
            }
        };
        range(
            "merge_wait",
            (Duration::from_secs(1)..=Duration::from_secs(600)).contains(&self.merge_wait),
            "1s and 10m",
        )?;
        range(
            "max_flows",
            (1..=(4 << 20)).contains(&self.max_flows),
            "1 and 4194304",
        )?;
        range(
            "template_timeout",
            (Duration::from_secs(60)..=Duration::from_secs(86_400))
                .contains(&self.template_timeout),
            "1m and 1d",
        )?;
        range(
            "max_exporters",
            (1..=100_000).contains(&self.max_exporters),
            "1 and 100000",
        )?;
        range(
            "queue",
            (16..=(1 << 20)).contains(&self.queue),
            "16 and 1048576",
        )
    }
}

/// Checks a list of listeners: each valid, no address twice.
pub fn validate_all(list: &[CollectorConfig]) -> Result<(), String> {
    let mut seen = std::collections::BTreeSet::new();
    for c in list {
        c.validate()?;
        if !seen.insert(c.address()?) {
            return Err(format!("collector listen = {:?} is given twice", c.listen));
        }
    }
    Ok(())
}

/// A flow the collector matched, joined and judged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Collected {
    /// The listener (index into the configured list).
    pub listener: usize,
    /// The conversation, oriented by the ports (the lower port serves).
    pub flow: Flow,
    /// The first record's exporter and export details.
    pub export: Export,
    /// Egress: the end that is not listed opened the flow to the Tor end;
    /// ingress: the Tor end opened it.
    pub direction: Direction,
    /// The Tor end's match (feed bits), as `classify` answered.
    pub matched: MatchInfo,
    /// Both ends are listed.
    pub both_listed: bool,
    /// One-way records joined.
    pub records: u32,
    /// The thresholds met (`bytes`, `duration`); none: not substantial.
    pub reasons: Vec<&'static str>,
    /// When its first record arrived.
    pub received: SystemTime,
}

impl Collected {
    pub fn substantial(&self) -> bool {
        !self.reasons.is_empty()
    }

    /// The end that is not the Tor one, and the Tor end.
    pub fn ends(&self) -> (SocketAddr, SocketAddr) {
        match self.direction {
            Direction::Egress => (self.flow.initiator, self.flow.responder),
            Direction::Ingress => (self.flow.responder, self.flow.initiator),
        }
    }
}

impl HasFlow for Collected {
    fn flow_mut(&mut self) -> Option<&mut Flow> {
        Some(&mut self.flow)
    }
}

/// One listener's counters (metrics and `status`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListenerStats {
    /// Datagrams read.
    pub datagrams: u64,
    /// Export packets with an error (what came before it was read).
    pub malformed: u64,
    /// Data sets without a known template (not read).
    pub unknown_templates: u64,
    /// Flow records read.
    pub records: u64,
    /// Records of other protocols than TCP and UDP (not matched).
    pub other_protocol: u64,
    /// TCP and UDP records with no listed end.
    pub unmatched: u64,
    /// Records with a listed end.
    pub matched: u64,
    /// Matching flows judged: substantial or not.
    pub substantial: u64,
    pub below_threshold: u64,
    /// Flows judged early because `max_flows` were waiting.
    pub evicted: u64,
}

/// Key of a waiting record: listener, exporter (address and port),
/// observation domain, protocol, initiator, responder.
type Key = (usize, SocketAddr, u32, u8, SocketAddr, SocketAddr);

/// Every listener's templates and the matching flows waiting.
pub struct Collector {
    listeners: Vec<Listener>,
    waiting: OneWayTable<Key, Collected>,
    thresholds: HuntSettings,
    /// Each listener's `merge_wait`.
    merge_wait: Vec<Duration>,
}

struct Listener {
    exports: Exports,
    stats: ListenerStats,
    template_timeout: Duration,
}

impl Collector {
    /// For `listeners`, judging flows against `thresholds` (`[hunt]`).
    pub fn new(listeners: &[CollectorConfig], thresholds: &HuntSettings) -> Self {
        Collector {
            listeners: listeners
                .iter()
                .map(|c| Listener {
                    exports: Exports::bounded(c.template_timeout, c.max_exporters),
                    stats: ListenerStats::default(),
                    template_timeout: c.template_timeout,
                })
                .collect(),
            waiting: OneWayTable::new(listeners.iter().map(|c| c.max_flows).sum()),
            thresholds: thresholds.clone(),
            merge_wait: listeners.iter().map(|c| c.merge_wait).collect(),
        }
    }

    /// One datagram from `exporter` on listener `listener`, received at
    /// `now`. `classify(ip, port, direction)` is the live sets' answer for
    /// the far end of a flow in `direction`. Flows judged early (the table
    /// was full) are returned.
    pub fn datagram(
        &mut self,
        listener: usize,
        exporter: SocketAddr,
        payload: &[u8],
        now: SystemTime,
        classify: &dyn Fn(IpAddr, u16, Direction) -> Option<MatchInfo>,
    ) -> Vec<Collected> {
        let Some(l) = self.listeners.get_mut(listener) else {
            return Vec::new();
        };
        l.stats.datagrams += 1;
        let (malformed, unknown) = (l.exports.malformed, l.exports.unknown_templates);
        let position = Position {
            offset: 0,
            record: l.stats.datagrams,
        };
        let mut records = Reader {
            listener,
            now,
            classify,
            stats: &mut l.stats,
            waiting: &mut self.waiting,
            thresholds: &self.thresholds,
            judged: Vec::new(),
        };
        l.exports.packet(exporter, payload, position, &mut records);
        let judged = records.judged;
        l.stats.malformed += l.exports.malformed - malformed;
        l.stats.unknown_templates += l.exports.unknown_templates - unknown;
        judged
    }

    /// The flows whose wait is over at `now` (`all`: every one, at
    /// shutdown), judged; and exporters quiet for longer than their
    /// templates live are forgotten.
    pub fn expire(&mut self, now: SystemTime, all: bool) -> Vec<Collected> {
        let mut out = if all {
            self.waiting.drain()
        } else {
            let waits = &self.merge_wait;
            let out = self.waiting.expire_with(epoch_ns(now), |c| {
                waits.get(c.listener).map_or(0, |w| w.as_nanos() as u64)
            });
            for l in &mut self.listeners {
                l.exports.forget_idle(l.template_timeout);
            }
            out
        };
        out.sort_by_key(|c| (c.received, c.flow.start_ns));
        for c in &mut out {
            judge(c, &self.thresholds, &mut self.listeners[c.listener].stats);
        }
        out
    }

    /// Every listener's counters.
    pub fn stats(&self) -> Vec<ListenerStats> {
        self.listeners.iter().map(|l| l.stats.clone()).collect()
    }

    /// Exporters with templates remembered, per listener.
    pub fn exporters(&self) -> Vec<usize> {
        self.listeners
            .iter()
            .map(|l| l.exports.exporters())
            .collect()
    }

    /// Matching flows waiting for their other direction.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }
}

fn judge(c: &mut Collected, thresholds: &HuntSettings, stats: &mut ListenerStats) {
    c.reasons = thresholds.flow_reasons(&c.flow);
    if c.substantial() {
        stats.substantial += 1;
    } else {
        stats.below_threshold += 1;
    }
}

/// The records of one datagram.
struct Reader<'a> {
    listener: usize,
    now: SystemTime,
    classify: &'a dyn Fn(IpAddr, u16, Direction) -> Option<MatchInfo>,
    stats: &'a mut ListenerStats,
    waiting: &'a mut OneWayTable<Key, Collected>,
    thresholds: &'a HuntSettings,
    judged: Vec<Collected>,
}

impl Records for Reader<'_> {
    fn flow(&mut self, _flow: Flow) {
        // Only exported records reach a collector (see `exported`).
    }

    fn exported(&mut self, flow: Flow, export: &Export) {
        self.stats.records += 1;
        if flow.protocol != 6 && flow.protocol != 17 {
            self.stats.other_protocol += 1;
            return;
        }
        let now = epoch_ns(self.now);
        let key = (
            self.listener,
            export.exporter,
            export.domain,
            flow.protocol,
            flow.initiator,
            flow.responder,
        );
        // The other direction of a waiting flow: joined.
        if self.waiting.merge(&key, &flow, now) {
            self.stats.matched += 1;
            if let Some(c) = self.waiting.get_mut(&key) {
                c.records += 1;
            }
            return;
        }
        let to_responder = (self.classify)(
            flow.responder.ip(),
            flow.responder.port(),
            Direction::Egress,
        );
        let from_initiator = (self.classify)(
            flow.initiator.ip(),
            flow.initiator.port(),
            Direction::Ingress,
        );
        let (direction, matched) = match (to_responder, from_initiator) {
            (Some(m), _) => (Direction::Egress, m),
            (None, Some(m)) => (Direction::Ingress, m),
            (None, None) => {
                self.stats.unmatched += 1;
                return;
            }
        };
        self.stats.matched += 1;
        let collected = Collected {
            listener: self.listener,
            flow,
            export: *export,
            direction,
            matched,
            both_listed: to_responder.is_some() && from_initiator.is_some(),
            records: 1,
            reasons: Vec::new(),
            received: self.now,
        };
        if let Some(mut oldest) = self.waiting.insert(key, collected, now) {
            self.stats.evicted += 1;
            judge(&mut oldest, self.thresholds, self.stats);
            self.judged.push(oldest);
        }
    }

    fn request(&mut self, _request: Request) {}

    fn bad(&mut self, _offset: u64, why: &str) {
        tracing::debug!("collector: {why}");
    }

    fn may_match(&self, _ip: IpAddr) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;

    /// A NetFlow v5 export of (src, dst, sport, dport, bytes) records.
    fn v5(records: &[(&str, &str, u16, u16, u32)]) -> Vec<u8> {
        let records: Vec<_> = records
            .iter()
            .map(|(s, d, sp, dp, b)| (s.parse().unwrap(), d.parse().unwrap(), *sp, *dp, *b))
            .collect();
        crate::bench::collector::v5_datagram(1_700_000_100, &records)
    }

    const EXIT: &str = "198.51.100.7";

    fn classify(ip: IpAddr, _port: u16, _d: Direction) -> Option<MatchInfo> {
        (ip == EXIT.parse::<IpAddr>().unwrap()).then_some(MatchInfo {
            exit_feeds: 1,
            relay_feeds: 0,
        })
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    fn collector(alert: AlertOn, max_flows: usize) -> Collector {
        let mut c = CollectorConfig::new("udp://127.0.0.1:2055");
        c.alert = alert;
        c.max_flows = max_flows;
        c.merge_wait = Duration::from_secs(5);
        Collector::new(&[c], &HuntSettings::default())
    }

    #[test]
    fn both_directions_are_joined_and_judged_after_the_wait() {
        let mut c = collector(AlertOn::Substantial, 100);
        let exporter: SocketAddr = "192.0.2.254:40000".parse().unwrap();
        let d = v5(&[
            ("192.0.2.10", EXIT, 50_000, 9001, 2_000_000),
            ("192.0.2.10", "203.0.113.5", 50_001, 443, 5_000_000),
        ]);
        assert!(c.datagram(0, exporter, &d, at(1), &classify).is_empty());
        // The answer, in a later datagram.
        let d = v5(&[(EXIT, "192.0.2.10", 9001, 50_000, 40_000)]);
        assert!(c.datagram(0, exporter, &d, at(2), &classify).is_empty());
        assert_eq!(c.waiting(), 1);
        assert!(
            c.expire(at(6), false).is_empty(),
            "waits 5 s after the last record"
        );
        let out = c.expire(at(7), false);
        assert_eq!(out.len(), 1);
        let f = &out[0];
        assert_eq!(f.direction, Direction::Egress);
        assert_eq!(f.records, 2);
        assert_eq!(f.flow.bytes, [2_000_000, 40_000]);
        assert_eq!(f.flow.packets, [10, 10]);
        assert_eq!(f.reasons, ["bytes", "duration"]);
        assert_eq!(f.ends().1, format!("{EXIT}:9001").parse().unwrap());
        // Times from the uptime fields: the export was sent at uptime
        // 100 s, the flow ran from 20 s to 95 s.
        assert_eq!(f.flow.start_ns, 1_700_000_020 * 1_000_000_000);
        assert_eq!(f.flow.end_ns, 1_700_000_095 * 1_000_000_000);
        assert_eq!(
            (
                f.export.version,
                f.export.domain,
                f.export.input_if,
                f.export.output_if
            ),
            (5, 7, Some(3), Some(4))
        );
        let s = &c.stats()[0];
        assert_eq!(
            (
                s.datagrams,
                s.records,
                s.matched,
                s.unmatched,
                s.substantial
            ),
            (2, 3, 2, 1, 1)
        );
    }

    #[test]
    fn an_exit_opening_a_flow_is_inbound_and_small_flows_are_below_threshold() {
        let mut c = collector(AlertOn::All, 100);
        let exporter: SocketAddr = "192.0.2.254:40000".parse().unwrap();
        let d = v5(&[(EXIT, "192.0.2.10", 61_000, 443, 900)]);
        c.datagram(0, exporter, &d, at(1), &classify);
        let out = c.expire(at(1), true);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].direction, Direction::Ingress);
        assert_eq!(out[0].ends().0, "192.0.2.10:443".parse().unwrap());
        // 75 s long: substantial by duration only.
        assert_eq!(out[0].reasons, ["duration"]);
    }

    #[test]
    fn the_table_is_bounded_and_garbage_is_counted() {
        let mut c = collector(AlertOn::Substantial, 1);
        let exporter: SocketAddr = "192.0.2.254:40000".parse().unwrap();
        let d = v5(&[
            ("192.0.2.10", EXIT, 50_000, 9001, 10),
            ("192.0.2.11", EXIT, 50_000, 9001, 10),
        ]);
        let early = c.datagram(0, exporter, &d, at(1), &classify);
        assert_eq!(early.len(), 1, "the first was judged to make room");
        assert_eq!(c.stats()[0].evicted, 1);
        c.datagram(0, exporter, b"\x00\x05\x00\x01garbage", at(2), &classify);
        c.datagram(0, exporter, &[0xff; 3], at(2), &classify);
        let s = &c.stats()[0];
        assert_eq!(s.malformed, 2);
        assert_eq!(s.datagrams, 3);
    }

    /// softflowd's real exports (the fuzz seeds, see their README): the
    /// first datagram carries the templates and data, the second only
    /// data of template 2048.
    const V9: [&[u8]; 2] = [
        include_bytes!("../../fuzz/seeds/hunt_packets/datagram-v9-1.bin"),
        include_bytes!("../../fuzz/seeds/hunt_packets/datagram-v9-2.bin"),
    ];
    const IPFIX: [&[u8]; 2] = [
        include_bytes!("../../fuzz/seeds/hunt_packets/datagram-ipfix-1.bin"),
        include_bytes!("../../fuzz/seeds/hunt_packets/datagram-ipfix-2.bin"),
    ];

    #[test]
    fn data_before_its_template_is_counted_then_read_once_the_template_came() {
        for (name, export) in [("v9", V9), ("ipfix", IPFIX)] {
            let mut c = collector(AlertOn::All, 100);
            let exporter: SocketAddr = "192.0.2.254:40000".parse().unwrap();
            let none = |_: IpAddr, _: u16, _: Direction| None;
            c.datagram(0, exporter, export[1], at(1), &none);
            let s = c.stats()[0].clone();
            assert_eq!((s.unknown_templates, s.records), (1, 0), "{name}");
            c.datagram(0, exporter, export[0], at(2), &none);
            let after_templates = c.stats()[0].records;
            assert!(after_templates > 0, "{name}");
            c.datagram(0, exporter, export[1], at(3), &none);
            let s = c.stats()[0].clone();
            assert!(s.records > after_templates, "{name}");
            assert_eq!((s.unknown_templates, s.malformed), (1, 0), "{name}");
            // Another exporter (port) has its own templates.
            let other: SocketAddr = "192.0.2.254:40001".parse().unwrap();
            c.datagram(0, other, export[1], at(4), &none);
            assert_eq!(c.stats()[0].unknown_templates, 2, "{name}");
            assert_eq!(c.exporters()[0], 2, "{name}");
        }
    }

    #[test]
    fn listeners_are_checked_once() {
        let ok = CollectorConfig::new("udp://[::]:4739");
        assert!(ok.validate().is_ok());
        let mut bad = ok.clone();
        bad.listen = "udp://0.0.0.0:0".into();
        assert!(bad.validate().unwrap_err().contains("port 0"));
        let mut bad = ok.clone();
        bad.queue = 1;
        assert_eq!(
            bad.validate().unwrap_err(),
            "collector udp://[::]:4739: queue must be between 16 and 1048576"
        );
        let twice = [ok.clone(), ok];
        assert!(validate_all(&twice).unwrap_err().contains("given twice"));
        let mut list = CollectorConfig::new("udp://127.0.0.1:2055");
        list.exporters = vec!["10.0.0.1".into(), "10.9.0.0/24".into()];
        assert_eq!(list.exporter_nets().unwrap().len(), 2);
    }
}
