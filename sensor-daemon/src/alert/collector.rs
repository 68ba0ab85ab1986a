//! The alerts of the live flow collector (issue 17, `[[collector]]`): a
//! flow record a router or firewall exported, to or from a listed address.
//! Built as a connection alert without a process (the same `threat.*`,
//! `torsensor.tor`, `torsensor.matches`, community id), then made a
//! flow's: `network.direction` from the perimeter's view (`outbound`: the
//! unlisted end opened the flow; `inbound`: the Tor end did), `observer.*`
//! (the exporter's address, its ifIndexes as
//! `observer.ingress|egress.interface.id`), the flow's counts and times,
//! and `torsensor.collector` (listener, exporter, protocol, how it was
//! judged).

use super::gateway::add_counts;
use super::model::{
    Alert, CollectorDetails, EventCategory, EventType, InterfaceName, NetworkDirection, Observer,
    ObserverInterface, Signal,
};
use crate::hunt::collect::Collected;
use crate::hunt::hunter::time_of;
use crate::net::Direction;

fn interface(id: Option<u32>) -> Option<ObserverInterface> {
    id.map(|id| ObserverInterface {
        interface: InterfaceName {
            name: String::new(),
            id: Some(id.to_string()),
        },
        zone: String::new(),
    })
}

/// Makes a connection alert (built from the flow's ends, without a
/// process) the collector's alert for `c`, received on `listener`.
pub fn make_flow(alert: &mut Alert, c: &Collected, listener: &str) {
    alert.event.category = vec![EventCategory::Network, EventCategory::IntrusionDetection];
    alert.event.types = vec![EventType::Connection, EventType::End];
    alert.event.action = match c.direction {
        Direction::Egress => "tor-flow-outbound",
        Direction::Ingress => "tor-flow-inbound",
    }
    .into();
    if let Some(n) = alert.network.as_mut() {
        n.direction = Some(NetworkDirection::perimeter(c.direction));
    }
    let e = &c.export;
    alert.observer = Some(Observer {
        kind: "router".into(),
        hostname: String::new(),
        ip: vec![e.exporter.ip()],
        ingress: interface(e.input_if),
        egress: interface(e.output_if),
    });
    let f = &c.flow;
    add_counts(
        alert,
        (f.bytes[0], f.packets[0]),
        (f.bytes[1], f.packets[1]),
        time_of(f.start_ns),
        time_of(f.end_ns),
    );
    let ts = &mut alert.torsensor;
    ts.signal = Signal::Flow;
    ts.attribution = None;
    ts.process_unknown = false;
    ts.cgroup_id = None;
    ts.collector = Some(CollectorDetails {
        listener: listener.into(),
        exporter: e.exporter.to_string(),
        protocol: match e.version {
            5 => "netflow5",
            9 => "netflow9",
            _ => "ipfix",
        }
        .into(),
        observation_domain: e.domain,
        records: c.records,
        initiator_by: f.initiator_by.as_str().into(),
        substantial: c.substantial(),
        reasons: c.reasons.iter().map(|r| (*r).to_owned()).collect(),
        both_listed: c.both_listed,
    });
}
