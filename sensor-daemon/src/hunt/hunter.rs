//! Matching records against the Tor history at their time, grouping and
//! thresholds.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::access_log::JsonFields;
use super::merge::{HasFlow, OneWayTable};
use super::{Flow, FlowEnd, Initiator, Records, Request};
use crate::feed::Role;
use crate::history::{Hit, Index, Role as HistoryRole, Window};
use crate::net::Direction;

/// The hunt's settings (`[hunt]` in the configuration; every default is
/// documented in `deploy/torsensor.toml`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HuntSettings {
    /// A flow with at least this many bytes (both ways) is substantial.
    pub min_bytes: u64,
    /// A flow lasting at least this long is substantial.
    #[serde(deserialize_with = "crate::time::deserialize_duration")]
    pub min_duration: Duration,
    /// A client with at least this many requests in one `request_window`
    /// is substantial (or whose responses reach `min_bytes`).
    pub min_requests: u64,
    #[serde(deserialize_with = "crate::time::deserialize_duration")]
    pub request_window: Duration,
    /// A flow with no packet (or, for flow records, no record) for this
    /// long has ended.
    #[serde(deserialize_with = "crate::time::deserialize_duration")]
    pub flow_idle_timeout: Duration,
    /// Flows tracked at once (only those with a possibly listed address).
    pub max_flows: usize,
    /// UDP destination ports whose packets in a capture are NetFlow v5/v9
    /// or IPFIX exports.
    pub netflow_ports: Vec<u16>,
    /// Read `X-Forwarded-For` from access logs and match its addresses.
    pub forwarded_for: bool,
    pub json_fields: JsonFields,
}

impl Default for HuntSettings {
    fn default() -> Self {
        HuntSettings {
            min_bytes: 1 << 20,
            min_duration: Duration::from_secs(60),
            min_requests: 10,
            request_window: Duration::from_secs(3600),
            flow_idle_timeout: Duration::from_secs(120),
            max_flows: 1_000_000,
            netflow_ports: vec![2055, 4739, 9995, 9996],
            forwarded_for: false,
            json_fields: JsonFields::default(),
        }
    }
}

impl HuntSettings {
    /// Checks the values (once, before anything runs).
    pub fn validate(&self) -> Result<(), String> {
        if self.request_window.is_zero() {
            return Err("hunt.request_window must be more than 0".into());
        }
        if self.flow_idle_timeout.is_zero() {
            return Err("hunt.flow_idle_timeout must be more than 0".into());
        }
        if self.max_flows == 0 {
            return Err("hunt.max_flows must be at least 1".into());
        }
        if self.min_requests == 0 {
            return Err("hunt.min_requests must be at least 1".into());
        }
        Ok(())
    }

    /// The thresholds a flow meets (`bytes`, `duration`); none: it is
    /// not substantial.
    pub fn flow_reasons(&self, f: &Flow) -> Vec<&'static str> {
        let mut reasons = Vec::new();
        if f.bytes[0] + f.bytes[1] >= self.min_bytes {
            reasons.push("bytes");
        }
        if f.end_ns.saturating_sub(f.start_ns) >= self.min_duration.as_nanos() as u64 {
            reasons.push("duration");
        }
        reasons
    }
}

/// The Tor side of a finding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub ip: IpAddr,
    /// 0 for a web client (its port is not logged).
    pub port: u16,
    /// The history's matches at the record's time, closest first.
    pub hits: Vec<Hit>,
    /// What the alert says it was: `Exit` if seen exiting, `Relay` if a
    /// relay's OR address on one of its ORPorts; empty when only a relay
    /// address matched on another port (counted, never alerted).
    pub roles: Vec<Role>,
}

/// What was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FindingKind {
    Flow(Flow),
    /// One client's requests in one window: the first request (with its
    /// details), and the counts of all.
    Requests {
        first: Request,
        last_ns: u64,
        count: u64,
        bytes: u64,
        status: BTreeMap<String, u64>,
    },
}

/// A record (or group) that involved a Tor address at its time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub kind: FindingKind,
    /// Egress: an inside host reached the Tor address; ingress: the Tor
    /// address reached an inside server.
    pub direction: Direction,
    /// The other end (none for a web log: the server itself).
    pub internal: Option<SocketAddr>,
    pub tor: Peer,
    pub both_listed: bool,
    pub substantial: bool,
    pub reasons: Vec<&'static str>,
    /// The input it came from (index into the caller's list).
    pub input: usize,
}

impl Finding {
    pub fn start_ns(&self) -> u64 {
        match &self.kind {
            FindingKind::Flow(f) => f.start_ns,
            FindingKind::Requests { first, .. } => first.time_ns,
        }
    }

    pub fn end_ns(&self) -> u64 {
        match &self.kind {
            FindingKind::Flow(f) => f.end_ns,
            FindingKind::Requests { last_ns, .. } => *last_ns,
        }
    }

    /// Bytes to the Tor address and from it.
    pub fn bytes_to_from_tor(&self) -> (u64, u64) {
        match &self.kind {
            FindingKind::Flow(f) => match self.direction {
                Direction::Egress => (f.bytes[0], f.bytes[1]),
                Direction::Ingress => (f.bytes[1], f.bytes[0]),
            },
            FindingKind::Requests { bytes, .. } => (0, *bytes),
        }
    }
}

impl HasFlow for Finding {
    fn flow_mut(&mut self) -> Option<&mut Flow> {
        match &mut self.kind {
            FindingKind::Flow(f) => Some(f),
            FindingKind::Requests { .. } => None,
        }
    }
}

/// Counts over the whole run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct HuntStats {
    pub flows: u64,
    pub requests: u64,
    /// Flow records of other protocols than TCP and UDP (not matched).
    pub other_protocol: u64,
    pub matched_flows: u64,
    pub matched_requests: u64,
    /// Records outside `--since`/`--until`.
    pub outside_time: u64,
    pub bad_records: u64,
}

struct Pending {
    finding: Finding,
    last_seen_ns: u64,
}

/// Matches records, groups and judges them; hands [`Finding`]s to `emit`.
pub struct Hunter<'a> {
    index: &'a Index,
    window: Window,
    settings: &'a HuntSettings,
    since_ns: u64,
    until_ns: u64,
    input: usize,
    /// One-way flow records waiting for their other direction.
    flows: OneWayTable<(u8, SocketAddr, SocketAddr), Finding>,
    /// Requests per (Tor address, window number).
    requests: HashMap<(IpAddr, u64), Pending>,
    latest_ns: u64,
    next_sweep_ns: u64,
    emit: &'a mut dyn FnMut(Finding),
    bad: &'a mut dyn FnMut(usize, u64, &str),
    pub stats: HuntStats,
}

fn ns(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// The time of nanoseconds since 1970.
pub fn time_of(ns: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(ns)
}

impl<'a> Hunter<'a> {
    pub fn new(
        index: &'a Index,
        window: Window,
        settings: &'a HuntSettings,
        since: Option<SystemTime>,
        until: Option<SystemTime>,
        emit: &'a mut dyn FnMut(Finding),
        bad: &'a mut dyn FnMut(usize, u64, &str),
    ) -> Self {
        Hunter {
            index,
            window,
            settings,
            since_ns: since.map_or(0, ns),
            until_ns: until.map_or(u64::MAX, ns),
            input: 0,
            flows: OneWayTable::new(settings.max_flows),
            requests: HashMap::new(),
            latest_ns: 0,
            next_sweep_ns: 0,
            emit,
            bad,
            stats: HuntStats::default(),
        }
    }

    /// The records that follow come from input number `input`.
    pub fn set_input(&mut self, input: usize) {
        self.input = input;
    }

    fn lookup(&self, ip: IpAddr, at_ns: u64) -> Vec<Hit> {
        self.index.lookup(ip, time_of(at_ns), &self.window)
    }

    fn in_range(&mut self, t: u64) -> bool {
        let inside = t >= self.since_ns && t < self.until_ns;
        if !inside {
            self.stats.outside_time += 1;
        }
        inside
    }

    fn sweep(&mut self, now_ns: u64) {
        let idle = self.settings.flow_idle_timeout.as_nanos() as u64;
        let window = self.settings.request_window.as_nanos() as u64;
        for finding in self.flows.expire(now_ns, idle) {
            self.finish_flow(finding);
        }
        // A window ends a window after its last second (late lines).
        let done: Vec<_> = self
            .requests
            .keys()
            .filter(|(_, w)| now_ns / window > w + 1)
            .copied()
            .collect();
        for k in done {
            let p = self.requests.remove(&k).expect("present");
            self.finish_requests(p.finding);
        }
    }

    fn finish_flow(&mut self, mut finding: Finding) {
        if let FindingKind::Flow(f) = &finding.kind {
            finding.reasons = self.settings.flow_reasons(f);
            finding.substantial = !finding.reasons.is_empty();
        }
        (self.emit)(finding);
    }

    fn finish_requests(&mut self, mut finding: Finding) {
        if let FindingKind::Requests { count, bytes, .. } = &finding.kind {
            let mut reasons = Vec::new();
            if *count >= self.settings.min_requests {
                reasons.push("requests");
            }
            if *bytes >= self.settings.min_bytes {
                reasons.push("bytes");
            }
            finding.reasons = reasons;
            finding.substantial = !finding.reasons.is_empty();
        }
        (self.emit)(finding);
    }

    fn advance(&mut self, t: u64) {
        self.latest_ns = self.latest_ns.max(t);
        if self.latest_ns >= self.next_sweep_ns {
            self.sweep(self.latest_ns);
            self.next_sweep_ns = self.latest_ns.saturating_add(1_000_000_000);
        }
    }

    /// The end of an input: every group still open is judged (groups do
    /// not span inputs).
    pub fn finish_input(&mut self) {
        let mut flows = self.flows.drain();
        flows.sort_by_key(Finding::start_ns);
        for finding in flows {
            self.finish_flow(finding);
        }
        let mut requests: Vec<Pending> = self.requests.drain().map(|(_, p)| p).collect();
        requests.sort_by_key(|p| p.finding.start_ns());
        for p in requests {
            self.finish_requests(p.finding);
        }
        self.latest_ns = 0;
        self.next_sweep_ns = 0;
    }
}

/// The roles an alert claims for the Tor side: an exit seen exiting; a
/// relay when the Tor side served on one of the relay's ORPorts.
fn roles(index: &Index, hits: &[Hit], port: u16, serving: bool) -> Vec<Role> {
    let mut roles = Vec::new();
    let relay = hits.iter().any(|h| {
        h.role == HistoryRole::Relay && serving && index.details(h).or_ports.contains(&port)
    });
    if relay {
        roles.push(Role::Relay);
    }
    if hits.iter().any(|h| h.role == HistoryRole::Exit) {
        roles.push(Role::Exit);
    }
    roles
}

impl Records for Hunter<'_> {
    fn flow(&mut self, flow: Flow) {
        self.stats.flows += 1;
        if flow.protocol != 6 && flow.protocol != 17 {
            self.stats.other_protocol += 1;
            return;
        }
        if !self.in_range(flow.start_ns) {
            return;
        }
        self.advance(flow.end_ns);
        let one_way = flow.end == FlowEnd::Record && flow.initiator_by == Initiator::Port;
        let key = (flow.protocol, flow.initiator, flow.responder);
        // The other direction of a pending one-way record: merged.
        if one_way && self.flows.merge(&key, &flow, flow.end_ns) {
            return;
        }
        let resp_hits = self.lookup(flow.responder.ip(), flow.start_ns);
        let init_hits = self.lookup(flow.initiator.ip(), flow.start_ns);
        if resp_hits.is_empty() && init_hits.is_empty() {
            return;
        }
        self.stats.matched_flows += 1;
        let both_listed = !resp_hits.is_empty() && !init_hits.is_empty();
        let (direction, internal, tor, hits, serving) = if !resp_hits.is_empty() {
            (
                Direction::Egress,
                flow.initiator,
                flow.responder,
                resp_hits,
                true,
            )
        } else {
            (
                Direction::Ingress,
                flow.responder,
                flow.initiator,
                init_hits,
                false,
            )
        };
        let finding = Finding {
            direction,
            internal: Some(internal),
            tor: Peer {
                ip: tor.ip(),
                port: tor.port(),
                roles: roles(self.index, &hits, tor.port(), serving),
                hits,
            },
            both_listed,
            substantial: false,
            reasons: Vec::new(),
            input: self.input,
            kind: FindingKind::Flow(flow),
        };
        if one_way {
            // Full: the oldest pending record is judged as it is.
            let last_seen_ns = finding.end_ns();
            if let Some(oldest) = self.flows.insert(key, finding, last_seen_ns) {
                self.finish_flow(oldest);
            }
        } else {
            self.finish_flow(finding);
        }
    }

    fn request(&mut self, r: Request) {
        self.stats.requests += 1;
        if !self.in_range(r.time_ns) {
            return;
        }
        self.advance(r.time_ns);
        // The connecting address first, then the forwarded chain from the
        // nearest proxy back to the client.
        let candidates = std::iter::once(r.client).chain(r.forwarded_for.iter().rev().copied());
        let mut found = None;
        for ip in candidates {
            let hits = self.lookup(ip, r.time_ns);
            if !hits.is_empty() {
                found = Some((ip, hits));
                break;
            }
        }
        let Some((ip, hits)) = found else {
            return;
        };
        self.stats.matched_requests += 1;
        let window = r.time_ns / self.settings.request_window.as_nanos() as u64;
        let status_key = r.status.map_or_else(|| "-".to_owned(), |s| s.to_string());
        if let Some(p) = self.requests.get_mut(&(ip, window)) {
            if let FindingKind::Requests {
                last_ns,
                count,
                bytes,
                status,
                ..
            } = &mut p.finding.kind
            {
                *last_ns = (*last_ns).max(r.time_ns);
                *count += 1;
                *bytes += r.bytes;
                *status.entry(status_key).or_default() += 1;
            }
            p.last_seen_ns = p.last_seen_ns.max(r.time_ns);
            return;
        }
        if self.requests.len() >= self.settings.max_flows
            && let Some(k) = self
                .requests
                .iter()
                .min_by_key(|(_, p)| p.last_seen_ns)
                .map(|(k, _)| *k)
        {
            let p = self.requests.remove(&k).expect("present");
            self.finish_requests(p.finding);
        }
        let finding = Finding {
            direction: Direction::Ingress,
            internal: None,
            tor: Peer {
                ip,
                port: 0,
                roles: roles(self.index, &hits, 0, false),
                hits,
            },
            both_listed: false,
            substantial: false,
            reasons: Vec::new(),
            input: self.input,
            kind: FindingKind::Requests {
                last_ns: r.time_ns,
                count: 1,
                bytes: r.bytes,
                status: BTreeMap::from([(status_key, 1)]),
                first: r,
            },
        };
        let last_seen_ns = finding.start_ns();
        self.requests.insert(
            (ip, window),
            Pending {
                finding,
                last_seen_ns,
            },
        );
    }

    fn bad(&mut self, offset: u64, why: &str) {
        self.stats.bad_records += 1;
        (self.bad)(self.input, offset, why);
    }

    fn may_match(&self, ip: IpAddr) -> bool {
        self.index.contains(ip)
    }
}
