//! The alerts of a retrospective hunt (`torsensor hunt`): a flow or a
//! client's web requests that involved a Tor relay or exit at the time.
//!
//! Shaped like a live connection alert (the same rules select them:
//! `direction`, `role`, `peer`, `peer_port`, `local_port`...), with
//! `event.dataset: torsensor.hunt`, the flow's times (`event.start`,
//! `event.end`, `event.duration`), bytes and packets each way
//! (`source.bytes`...), where it was found (`log.file.path`, `log.offset`,
//! `torsensor.hunt.record`), the history interval that matched
//! (`torsensor.tor.history`), and for web requests `http.*`, `url.*` and
//! `user_agent.*`. No process: a capture or a log does not say.

use std::net::SocketAddr;
use std::time::SystemTime;

use super::connection::{ECS_VERSION, SensorIdentity, agent, host, multi_hop_proxy};
use super::model::{
    Alert, Confidence, Ecs, Endpoint, Enrichment, Event, EventCategory, EventKind, EventType,
    FeedName, HistoryMatch, Http, HttpBody, HttpRequest, HttpResponse, HuntDetails, Indicator,
    IndicatorType, IpFamily, Log, LogFile, Matched, Network, Outcome, RelayRef, RequestCounts,
    Signal, TorDetails, Torsensor, Transport, Url, UserAgent,
};
use crate::alert::rules::Rule;
use crate::feed::Role;
use crate::history::{Index, Role as HistoryRole, index};
use crate::hunt::{Finding, FindingKind, Flow, Initiator};
use crate::net::Direction;
use crate::time::{Timestamp, TimestampSecs};

/// The feed name hunt alerts cite (`torsensor.feeds`, `threat.feed.name`).
pub const HISTORY_FEED: &str = "tor-history";

/// Everything a hunt alert is built from.
pub struct HuntInput<'a> {
    pub finding: &'a Finding,
    pub index: &'a Index,
    /// `pcap`, `pcapng`, `netflow`, `zeek`, `nfdump`, `access-log`.
    pub input_kind: &'a str,
    pub path: &'a str,
    pub rule: &'a Rule,
    pub sensor: &'a SensorIdentity,
    pub created: SystemTime,
}

fn ts(ns: u64) -> Timestamp {
    Timestamp(crate::hunt::hunter::time_of(ns))
}

fn transport(protocol: u8) -> Transport {
    if protocol == 17 {
        Transport::Udp
    } else {
        Transport::Tcp
    }
}

fn endpoint(addr: SocketAddr, bytes: u64, packets: u64) -> Endpoint {
    Endpoint {
        bytes: Some(bytes),
        packets: Some(packets),
        ..Endpoint::new(addr)
    }
}

/// `torsensor.tor` from the history's hits.
fn tor_details(input: &HuntInput<'_>) -> TorDetails {
    let peer = &input.finding.tor;
    let mut relays: Vec<RelayRef> = Vec::new();
    let mut flags: Vec<String> = Vec::new();
    for h in &peer.hits {
        let d = input.index.details(h);
        relays.push(RelayRef {
            fingerprint: d.fingerprint.clone(),
            nickname: d.nickname.map(str::to_owned),
        });
        flags.extend(d.flags.iter().map(|f| (*f).to_owned()));
    }
    relays.sort();
    relays.dedup();
    flags.sort();
    flags.dedup();
    let relay_count = relays.len();
    relays.truncate(16);
    let closest = peer.hits.first();
    TorDetails {
        roles: peer.roles.clone(),
        confidence: if peer.roles.contains(&Role::Relay) {
            Confidence::High
        } else {
            Confidence::Medium
        },
        or_port: peer.roles.contains(&Role::Relay).then_some(peer.port),
        exit_last_seen: peer
            .hits
            .iter()
            .filter(|h| h.role == HistoryRole::Exit)
            .map(|h| h.last_seen)
            .max()
            .map(|s| TimestampSecs(index::time(s))),
        flags,
        relay_count,
        relays,
        history: closest.map(|h| HistoryMatch {
            first_seen: TimestampSecs(index::time(h.first_seen)),
            last_seen: TimestampSecs(index::time(h.last_seen)),
            distance: h.distance,
        }),
    }
}

fn enrichment(input: &HuntInput<'_>, field: &str) -> Enrichment {
    let peer = &input.finding.tor;
    let exit = peer.roles.contains(&Role::Exit);
    Enrichment {
        indicator: Indicator {
            ip: peer.ip,
            port: peer.roles.contains(&Role::Relay).then_some(peer.port),
            kind: if peer.ip.is_ipv4() {
                IndicatorType::Ipv4Addr
            } else {
                IndicatorType::Ipv6Addr
            },
            provider: HISTORY_FEED.into(),
            description: if exit {
                "a Tor exit at the time (CollecTor exit lists)".into()
            } else {
                "a Tor relay's OR address at the time (CollecTor consensuses)".into()
            },
            last_seen: peer
                .hits
                .first()
                .map(|h| TimestampSecs(index::time(h.last_seen))),
            modified_at: None,
        },
        matched: Matched {
            atomic: peer.ip.to_string(),
            field: field.into(),
            kind: "indicator_match_rule".into(),
        },
        feed: FeedName {
            name: HISTORY_FEED.into(),
        },
    }
}

fn flow_outcome(f: &Flow) -> Outcome {
    match (f.protocol, f.initiator_by, f.packets[1]) {
        (6, Initiator::Syn, 0) => Outcome::Failure,
        (6, Initiator::Syn, _) => Outcome::Success,
        _ => Outcome::Unknown,
    }
}

/// Builds the alert for one finding.
pub fn build(input: &HuntInput<'_>) -> Alert {
    let f = input.finding;
    let rule = input.rule;
    let (start, end) = (f.start_ns(), f.end_ns());
    let is_requests = matches!(f.kind, FindingKind::Requests { .. });
    let action = match (is_requests, f.direction) {
        (true, _) => "tor-web-requests",
        (false, Direction::Egress) => "tor-connection-outbound",
        (false, Direction::Ingress) => "tor-connection-inbound",
    };
    let mut alert = Alert {
        timestamp: ts(start),
        ecs: Ecs {
            version: ECS_VERSION.into(),
        },
        event: Event {
            kind: EventKind::Alert,
            category: vec![EventCategory::Network, EventCategory::IntrusionDetection],
            types: vec![EventType::Connection, EventType::Allowed],
            action: action.into(),
            outcome: match &f.kind {
                FindingKind::Flow(flow) => flow_outcome(flow),
                FindingKind::Requests { .. } => Outcome::Success,
            },
            module: "torsensor".into(),
            dataset: "torsensor.hunt".into(),
            created: Timestamp(input.created),
            severity: Some(rule.severity),
            start: Some(ts(start)),
            end: Some(ts(end)),
            duration: Some(end.saturating_sub(start)),
        },
        network: None,
        source: None,
        destination: None,
        server: None,
        host: host(input.sensor),
        agent: agent(input.sensor),
        process: None,
        user: None,
        group: None,
        container: None,
        orchestrator: None,
        observer: None,
        dns: None,
        rule: Some(rule.reference()),
        tags: Some(rule.tags.clone()),
        threat: None,
        related: None,
        log: None,
        http: None,
        url: None,
        user_agent: None,
        torsensor: Torsensor {
            signal: Signal::Connection,
            exec: None,
            listen: None,
            dns: None,
            gateway: None,
            collector: None,
            feeds: vec![HISTORY_FEED.into()],
            tor: Some(tor_details(input)),
            matches: Vec::new(),
            v4_mapped: false,
            audit: false,
            incomplete: false,
            attribution: None,
            cgroup_id: None,
            cgroup_path: None,
            process_unknown: false,
            container: None,
            count: None,
            first_seen: None,
            last_seen: None,
            summary: false,
            block: None,
            hunt: None,
        },
    };
    let family = if f.tor.ip.is_ipv4() {
        IpFamily::Ipv4
    } else {
        IpFamily::Ipv6
    };
    let mut details = HuntDetails {
        input: input.input_kind.into(),
        record: 0,
        substantial: f.substantial,
        reasons: f.reasons.iter().map(|r| (*r).to_owned()).collect(),
        initiator: None,
        ended: None,
        both_listed: f.both_listed,
        requests: None,
        forwarded_for: Vec::new(),
    };
    let position;
    match &f.kind {
        FindingKind::Flow(flow) => {
            let t = transport(flow.protocol);
            alert.network = Some(Network {
                direction: Some(f.direction.into()),
                transport: t,
                iana_number: t.iana_number(),
                family,
                community_id: None,
                protocol: None,
                bytes: None,
                packets: None,
            });
            alert.source = Some(endpoint(flow.initiator, flow.bytes[0], flow.packets[0]));
            alert.destination = Some(endpoint(flow.responder, flow.bytes[1], flow.packets[1]));
            alert.add_community_id();
            details.initiator = Some(flow.initiator_by.as_str().into());
            details.ended = Some(flow.end.as_str().into());
            position = flow.position;
        }
        FindingKind::Requests {
            first,
            last_ns,
            count,
            bytes,
            status,
        } => {
            alert.network = Some(Network {
                direction: Some(Direction::Ingress.into()),
                transport: Transport::Tcp,
                iana_number: Transport::Tcp.iana_number(),
                family,
                community_id: None,
                protocol: None,
                bytes: None,
                packets: None,
            });
            alert.source = Some(Endpoint::new(SocketAddr::new(f.tor.ip, 0)));
            alert.http = Some(Http {
                request: HttpRequest {
                    method: first.method.clone(),
                },
                response: HttpResponse {
                    status_code: first.status,
                    body: Some(HttpBody { bytes: first.bytes }),
                },
            });
            alert.url = first.target.clone().map(|original| Url { original });
            alert.user_agent = first
                .user_agent
                .clone()
                .map(|original| UserAgent { original });
            alert.torsensor.count = Some(*count);
            alert.torsensor.first_seen = Some(ts(first.time_ns));
            alert.torsensor.last_seen = Some(ts(*last_ns));
            alert.torsensor.summary = *count > 1;
            details.requests = Some(RequestCounts {
                count: *count,
                bytes: *bytes,
                status: status.clone(),
            });
            details.forwarded_for = first.forwarded_for.clone();
            position = first.position;
        }
    }
    details.record = position.record;
    alert.log = Some(Log {
        file: LogFile {
            path: input.path.into(),
        },
        offset: position.offset,
    });
    let field = match f.direction {
        Direction::Egress => "destination.ip",
        Direction::Ingress => "source.ip",
    };
    let mut threat = multi_hop_proxy();
    threat.feed = Some(FeedName {
        name: HISTORY_FEED.into(),
    });
    threat.enrichments = vec![enrichment(input, field)];
    alert.threat = Some(threat);
    alert.torsensor.hunt = Some(details);
    alert
}
