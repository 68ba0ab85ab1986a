//! The alerts of the local Tor signals (see [`crate::local`]): a program
//! start (ECS `event.category: [process, intrusion_detection]`, `event.type:
//! [start]`, no network fields) and a listening socket (`event.category:
//! [network, intrusion_detection]`, `event.type: [start]`, the address in
//! `server.*`, `network.transport`/`type` without a direction). Neither
//! has a peer or a feed: `threat.*` names ATT&CK T1090.003 without
//! enrichments, `torsensor.exec` / `torsensor.listen` say what was seen.

use std::net::SocketAddr;
use std::time::SystemTime;

use super::connection::{SensorIdentity, agent, host, multi_hop_proxy, process_fields};
use super::model::{
    Alert, Attribution, Ecs, Endpoint, Event, EventCategory, EventKind, EventType, ExecDetails,
    ExecReason, Group, IpFamily, ListenDetails, Network, Outcome, Signal, Torsensor, Transport,
    User,
};
use crate::alert::rules::Rule;
use crate::enrich::ProcessInfo;
use crate::enrich::container::ContainerInfo;
use crate::time::Timestamp;

/// Everything a program-start alert is built from.
pub struct ExecInput<'a> {
    pub time: SystemTime,
    /// The kernel's command name.
    pub comm: &'a str,
    /// `/proc`'s answers (or the kernel's fields alone, if it was gone).
    pub process: &'a ProcessInfo,
    pub container: Option<&'a ContainerInfo>,
    pub by_name: bool,
    pub by_env: bool,
    /// The watched program it is (a name hit, confirmed).
    pub program: Option<&'a str>,
    /// Its watched environment bindings (`TOR_PT_*`), if readable.
    pub env_vars: Vec<String>,
    pub env_bytes: u32,
    pub env_partial: bool,
    pub rule: &'a Rule,
    pub sensor: &'a SensorIdentity,
    pub created: SystemTime,
}

/// Everything a listener alert is built from.
pub struct ListenInput<'a> {
    pub time: SystemTime,
    pub local: SocketAddr,
    pub process: Option<&'a ProcessInfo>,
    pub container: Option<&'a ContainerInfo>,
    /// What the port is (`tor SOCKS`...).
    pub port_use: &'a str,
    pub rule: &'a Rule,
    pub sensor: &'a SensorIdentity,
    pub created: SystemTime,
}

fn event(signal: Signal, rule: &Rule, created: SystemTime) -> Event {
    let (category, action, kind) = match signal {
        Signal::Exec => (
            EventCategory::Process,
            "tor-program-start",
            EventType::Start,
        ),
        Signal::Dns => (EventCategory::Network, "tor-dns-query", EventType::Protocol),
        _ => (EventCategory::Network, "tor-port-listen", EventType::Start),
    };
    Event {
        kind: EventKind::Alert,
        category: vec![category, EventCategory::IntrusionDetection],
        types: vec![kind],
        action: action.into(),
        outcome: Outcome::Success,
        module: "torsensor".into(),
        dataset: "torsensor.alert".into(),
        created: Timestamp(created),
        severity: Some(rule.severity),
        start: None,
        end: None,
        duration: None,
    }
}

/// An alert with what every local signal has: no peer, no feed (a DNS
/// alert starts from it too).
pub(super) fn base(
    signal: Signal,
    time: SystemTime,
    process: Option<&ProcessInfo>,
    rule: &Rule,
    sensor: &SensorIdentity,
    created: SystemTime,
) -> Alert {
    Alert {
        timestamp: Timestamp(time),
        ecs: Ecs {
            version: super::connection::ECS_VERSION.into(),
        },
        event: event(signal, rule, created),
        network: None,
        source: None,
        destination: None,
        server: None,
        observer: None,
        host: host(sensor),
        agent: agent(sensor),
        process: process.map(process_fields),
        user: process.map(|p| User {
            id: p.uid,
            name: p.user_name.clone(),
        }),
        group: process.map(|p| Group { id: p.gid }),
        container: None,
        orchestrator: None,
        rule: Some(rule.reference()),
        tags: Some(rule.tags.clone()),
        threat: Some(multi_hop_proxy()),
        dns: None,
        related: None,
        log: None,
        http: None,
        url: None,
        user_agent: None,
        torsensor: Torsensor {
            signal,
            exec: None,
            listen: None,
            dns: None,
            gateway: None,
            collector: None,
            feeds: Vec::new(),
            tor: None,
            matches: Vec::new(),
            v4_mapped: false,
            audit: false,
            incomplete: false,
            attribution: None,
            cgroup_id: process.map(|p| p.cgroup_id),
            cgroup_path: None,
            process_unknown: process.is_none(),
            container: None,
            count: None,
            first_seen: None,
            last_seen: None,
            summary: false,
            block: None,
            hunt: None,
        },
    }
}

/// The alert for a program start.
pub fn build_exec(input: ExecInput<'_>) -> Alert {
    let mut alert = base(
        Signal::Exec,
        input.time,
        Some(input.process),
        input.rule,
        input.sensor,
        input.created,
    );
    if let Some(p) = alert.process.as_mut() {
        p.env_vars = input.env_vars;
    }
    let mut reasons = Vec::new();
    if input.by_name {
        reasons.push(ExecReason::Name);
    }
    if input.by_env {
        reasons.push(ExecReason::Environment);
    }
    alert.torsensor.exec = Some(ExecDetails {
        reasons,
        program: input.program.map(str::to_owned),
        comm: input.comm.to_owned(),
        env_bytes: input.env_bytes,
        env_partial: input.env_partial,
    });
    if let Some(c) = input.container {
        alert.add_container(c);
    }
    alert
}

/// The alert for a socket listening on a watched port.
pub fn build_listen(input: ListenInput<'_>) -> Alert {
    let mut alert = base(
        Signal::Listen,
        input.time,
        input.process,
        input.rule,
        input.sensor,
        input.created,
    );
    alert.network = Some(Network {
        direction: None,
        transport: Transport::Tcp,
        iana_number: Transport::Tcp.iana_number(),
        family: if input.local.is_ipv4() {
            IpFamily::Ipv4
        } else {
            IpFamily::Ipv6
        },
        community_id: None,
        protocol: None,
        bytes: None,
        packets: None,
    });
    alert.server = Some(Endpoint::new(input.local));
    alert.torsensor.listen = Some(ListenDetails {
        port_use: input.port_use.to_owned(),
    });
    alert.torsensor.attribution = Some(if input.process.is_some() {
        Attribution::Listen
    } else {
        Attribution::None
    });
    if let Some(c) = input.container {
        alert.add_container(c);
    }
    alert
}
