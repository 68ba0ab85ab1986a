//! The alert of a DNS query for a watched name (issue 17): ECS
//! `event.category: [network, intrusion_detection]`, `event.type:
//! [protocol]`, `dns.type: query`, `dns.question.name/type`, the server in
//! `destination.*`, `network.protocol: dns`, the sender in `process.*`;
//! `torsensor.dns` says which watched name matched and whether the sender
//! is a local resolver (then the process that asked is behind it) or the
//! server is one on this host.

use std::net::SocketAddr;
use std::time::SystemTime;

use super::connection::SensorIdentity;
use super::local::base;
use super::model::{
    Alert, Attribution, Dns, DnsDetails, DnsQuestion, Endpoint, IpFamily, Network, Signal,
    Transport, User,
};
use crate::alert::rules::Rule;
use crate::dns::WatchedName;
use crate::enrich::ProcessInfo;
use crate::enrich::container::ContainerInfo;
use crate::net::Direction;

/// Everything a DNS alert is built from.
pub struct DnsInput<'a> {
    pub time: SystemTime,
    /// Lower case, no trailing dot.
    pub name: &'a str,
    /// `A`, `AAAA`...
    pub qtype: String,
    pub server: SocketAddr,
    pub tcp: bool,
    pub watched: &'a WatchedName,
    pub names_file: &'a str,
    /// The sender, if the kernel knew it.
    pub process: Option<&'a ProcessInfo>,
    /// Without a process: the socket's uid.
    pub uid: u32,
    pub cgroup_id: u64,
    pub container: Option<&'a ContainerInfo>,
    /// The sender is a local resolver (its name).
    pub resolver: Option<&'a str>,
    pub rule: &'a Rule,
    pub sensor: &'a SensorIdentity,
    pub created: SystemTime,
}

/// The alert for a query.
pub fn build_dns(input: DnsInput<'_>) -> Alert {
    let mut alert = base(
        Signal::Dns,
        input.time,
        input.process,
        input.rule,
        input.sensor,
        input.created,
    );
    let transport = if input.tcp {
        Transport::Tcp
    } else {
        Transport::Udp
    };
    alert.network = Some(Network {
        direction: Some(Direction::Egress.into()),
        transport,
        iana_number: transport.iana_number(),
        family: if input.server.is_ipv4() {
            IpFamily::Ipv4
        } else {
            IpFamily::Ipv6
        },
        community_id: None,
        protocol: Some("dns".into()),
        bytes: None,
        packets: None,
    });
    alert.destination = Some(Endpoint::new(input.server));
    alert.dns = Some(Dns {
        kind: "query".into(),
        question: DnsQuestion {
            name: input.name.to_owned(),
            kind: input.qtype,
            class: None,
        },
    });
    if input.process.is_none() {
        alert.user = Some(User {
            id: input.uid,
            name: None,
        });
        alert.torsensor.cgroup_id = Some(input.cgroup_id);
    }
    alert.torsensor.attribution = Some(if input.process.is_some() {
        Attribution::Sender
    } else {
        Attribution::None
    });
    alert.torsensor.dns = Some(DnsDetails {
        suffix: input.watched.suffix.clone(),
        category: input.watched.category.clone(),
        what: input.watched.what.clone(),
        via_resolver: input.resolver.is_some(),
        resolver: input.resolver.map(str::to_owned),
        local_server: input.server.ip().is_loopback(),
        names_file: input.names_file.to_owned(),
    });
    if let Some(c) = input.container {
        alert.add_container(c);
    }
    alert
}
