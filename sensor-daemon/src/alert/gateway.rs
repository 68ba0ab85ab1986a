//! The alerts of gateway mode (issue 17): a forwarded flow to or from a
//! listed address (its SYN), and the flow's summary when it ends. Built as
//! a connection alert without a process (the same `threat.*`,
//! `torsensor.tor`, `torsensor.matches`, community id), then made a
//! gateway's: `network.direction` from the perimeter's view (`outbound`:
//! an inside host opened the flow; `inbound`: an outside host did),
//! `observer.*` (the router, the interface and its side, ECS
//! `observer.ingress|egress.interface.name` and `.zone`), no `process.*`,
//! and for a summary `source|destination.bytes|packets`, `network.bytes|
//! packets`, `event.start|end|duration`.

use super::model::{
    Alert, EventCategory, EventType, GatewayDetails, InterfaceName, NetworkDirection, Observer,
    ObserverInterface, Signal,
};
use crate::kernel::gateway::{FlowSummary, GatewayHit, TcHook};
use crate::net::Direction;
use crate::time::Timestamp;
use std::time::SystemTime;

/// Makes a connection alert (built from the hit, without a process) the
/// gateway alert for `hit`; with `summary`, the flow's end.
pub fn make_gateway(alert: &mut Alert, hit: &GatewayHit, summary: Option<&FlowSummary>) {
    let phase = if summary.is_some() { "end" } else { "hit" };
    alert.event.category = vec![EventCategory::Network, EventCategory::IntrusionDetection];
    alert.event.types = vec![
        EventType::Connection,
        if summary.is_some() {
            EventType::End
        } else {
            EventType::Start
        },
    ];
    alert.event.action = match (summary.is_some(), hit.direction) {
        (false, Direction::Egress) => "tor-gateway-outbound",
        (false, Direction::Ingress) => "tor-gateway-inbound",
        (true, _) => "tor-gateway-flow-end",
    }
    .into();
    if let Some(n) = alert.network.as_mut() {
        n.direction = Some(NetworkDirection::perimeter(hit.direction));
    }
    let seen = ObserverInterface {
        interface: InterfaceName {
            name: hit.interface.clone(),
            id: None,
        },
        zone: hit.side.as_str().into(),
    };
    let (ingress, egress) = match hit.hook {
        TcHook::Ingress => (Some(seen), None),
        TcHook::Egress => (None, Some(seen)),
    };
    alert.observer = Some(Observer {
        kind: "router".into(),
        hostname: alert.host.name.clone(),
        ip: Vec::new(),
        ingress,
        egress,
    });
    let ts = &mut alert.torsensor;
    ts.signal = Signal::Gateway;
    ts.attribution = None;
    ts.process_unknown = false;
    ts.cgroup_id = None;
    ts.gateway = Some(GatewayDetails {
        interface: hit.interface.clone(),
        side: hit.side.as_str().into(),
        hook: hit.hook.as_str().into(),
        phase: phase.into(),
        tracked: hit.tracked,
        end: summary.map(|s| s.end),
    });
    if let Some(s) = summary {
        add_summary(alert, s);
    }
}

/// The counts of a summary: the source (the initiator) sent what the
/// inside host sent for an outbound flow, what the outside one sent for
/// an inbound flow.
fn add_summary(alert: &mut Alert, s: &FlowSummary) {
    let (src, dst) = match s.hit.direction {
        Direction::Egress => ((s.bytes_out, s.packets_out), (s.bytes_in, s.packets_in)),
        Direction::Ingress => ((s.bytes_in, s.packets_in), (s.bytes_out, s.packets_out)),
    };
    add_counts(alert, src, dst, s.hit.time, s.last);
}

/// A flow's (bytes, packets) from its source (the initiator) and from its
/// destination, and its times: `source|destination.bytes|packets`,
/// `network.bytes|packets`, `event.start|end|duration`; the alert's time
/// is the flow's end.
pub fn add_counts(
    alert: &mut Alert,
    src: (u64, u64),
    dst: (u64, u64),
    start: SystemTime,
    end: SystemTime,
) {
    if let Some(e) = alert.source.as_mut() {
        e.bytes = Some(src.0);
        e.packets = Some(src.1);
    }
    if let Some(e) = alert.destination.as_mut() {
        e.bytes = Some(dst.0);
        e.packets = Some(dst.1);
    }
    if let Some(n) = alert.network.as_mut() {
        n.bytes = Some(src.0 + dst.0);
        n.packets = Some(src.1 + dst.1);
    }
    alert.timestamp = Timestamp(end);
    alert.event.start = Some(Timestamp(start));
    alert.event.end = Some(Timestamp(end));
    let duration = end.duration_since(start).unwrap_or_default().as_nanos();
    alert.event.duration = Some(u64::try_from(duration).unwrap_or(u64::MAX));
}
