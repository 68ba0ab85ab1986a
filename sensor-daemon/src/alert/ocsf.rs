//! OCSF output: the alert as OCSF Network Activity (class 4001), for
//! Security Lake, Sentinel and other OCSF consumers.
//!
//! The renderer copies what the alert has and derives only what follows from
//! it (a name from a path, milliseconds from a time); a field the alert
//! lacks leaves its counterparts out. The few values with no source are
//! constants of the format (class ids, `device.type_id`) and are documented
//! where set.

use serde::Serialize;
use serde_json::{Map, Value, json};

use super::model::{Alert, Endpoint, EventType, IpFamily, Outcome};
use crate::time::epoch_ms;

/// OCSF schema version the output follows.
pub const OCSF_VERSION: &str = "1.4.0";

fn put(map: &mut Map<String, Value>, key: &str, value: Option<Value>) {
    if let Some(v) = value {
        map.insert(key.to_owned(), v);
    }
}

/// An object, or nothing when it would be empty.
fn non_empty(map: Map<String, Value>) -> Option<Value> {
    (!map.is_empty()).then_some(Value::Object(map))
}

/// A part of the alert as JSON (the model's types cannot fail to serialize).
fn value<T: Serialize>(part: &T) -> Value {
    serde_json::to_value(part).expect("alert parts always serialize")
}

/// OCSF `severity_id` (and its caption) from ECS `event.severity`; an event
/// without severity (audit) is Informational.
pub fn severity(severity: Option<u8>) -> (u64, &'static str) {
    match severity {
        None => (1, "Informational"),
        Some(90..) => (5, "Critical"),
        Some(70..=89) => (4, "High"),
        Some(40..=69) => (3, "Medium"),
        Some(20..=39) => (2, "Low"),
        Some(_) => (1, "Informational"),
    }
}

fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

fn endpoint(e: &Endpoint) -> Value {
    json!({"ip": e.ip.to_string(), "port": e.port})
}

/// Renders the alert as OCSF Network Activity (class 4001).
///
/// Activity: Open (1), Fail (4) when `event.outcome` is failure, Refuse (5)
/// when `event.type` has `denied`; `type_uid` = 4001 * 100 + activity.
/// Disposition: Alert (19), or Blocked (2) when denied. torsensor's own
/// fields go to `unmapped.torsensor`.
pub fn render(alert: &Alert) -> Value {
    let denied = alert.event.types.contains(&EventType::Denied);
    let failed = alert.event.outcome == Outcome::Failure;
    let (activity_id, activity) = if denied {
        (5, "Refuse")
    } else if failed {
        (4, "Fail")
    } else {
        (1, "Open")
    };
    let is_alert = alert.is_alert();
    let (severity_id, severity_name) = severity(alert.event.severity);

    let mut out = Map::new();
    out.insert("activity_id".into(), json!(activity_id));
    out.insert("activity_name".into(), json!(activity));
    out.insert("category_uid".into(), json!(4));
    out.insert("category_name".into(), json!("Network Activity"));
    out.insert("class_uid".into(), json!(4001));
    out.insert("class_name".into(), json!("Network Activity"));
    out.insert("type_uid".into(), json!(400100 + activity_id));
    out.insert(
        "type_name".into(),
        json!(format!("Network Activity: {activity}")),
    );
    out.insert("time".into(), json!(epoch_ms(alert.timestamp.0)));
    out.insert("severity_id".into(), json!(severity_id));
    out.insert("severity".into(), json!(severity_name));
    out.insert("is_alert".into(), json!(is_alert));
    if is_alert {
        let (disposition_id, disposition) = if denied {
            (2, "Blocked")
        } else {
            (19, "Alert")
        };
        out.insert("disposition_id".into(), json!(disposition_id));
        out.insert("disposition".into(), json!(disposition));
    }
    let (action_id, action) = if denied {
        (2, "Denied")
    } else {
        (1, "Allowed")
    };
    out.insert("action_id".into(), json!(action_id));
    out.insert("action".into(), json!(action));
    let (status_id, status) = match alert.event.outcome {
        Outcome::Success => (1, "Success"),
        Outcome::Failure => (2, "Failure"),
        Outcome::Unknown => (0, "Unknown"),
    };
    out.insert("status_id".into(), json!(status_id));
    out.insert("status".into(), json!(status));
    let message = alert.rule.as_ref().map_or(&alert.event.action, |r| &r.name);
    out.insert("message".into(), json!(message));
    out.insert("connection_info".into(), connection_info(alert));
    out.insert("src_endpoint".into(), endpoint(&alert.source));
    out.insert("dst_endpoint".into(), endpoint(&alert.destination));
    let container = container(alert);
    put(&mut out, "actor", actor(alert, container.clone()));
    out.insert("device".into(), device(alert, container.clone()));
    out.insert("metadata".into(), metadata(alert, container.is_some()));
    threat_parts(alert, &mut out);
    out.insert("unmapped".into(), unmapped(alert));
    Value::Object(out)
}

fn connection_info(alert: &Alert) -> Value {
    let network = &alert.network;
    let mut conn = Map::new();
    let egress = alert.is_egress();
    conn.insert("direction_id".into(), json!(if egress { 2 } else { 1 }));
    conn.insert(
        "direction".into(),
        json!(if egress { "Outbound" } else { "Inbound" }),
    );
    conn.insert("protocol_name".into(), json!(network.transport.as_str()));
    conn.insert("protocol_num".into(), json!(network.iana_number));
    let version = match network.family {
        IpFamily::Ipv4 => 4,
        IpFamily::Ipv6 => 6,
    };
    conn.insert("protocol_ver_id".into(), json!(version));
    put(
        &mut conn,
        "community_uid",
        network.community_id.as_ref().map(|c| json!(c)),
    );
    Value::Object(conn)
}

/// The OCSF container object, for a containerised process.
fn container(alert: &Alert) -> Option<Value> {
    let mut container = Map::new();
    if let Some(c) = &alert.container {
        container.insert("uid".into(), json!(c.id));
        put(
            &mut container,
            "runtime",
            c.runtime.map(|r| json!(r.as_str())),
        );
    }
    if let Some(o) = &alert.orchestrator
        && o.resource.is_pod()
    {
        put(
            &mut container,
            "pod_uuid",
            o.resource.id.as_ref().map(|id| json!(id)),
        );
    }
    non_empty(container)
}

/// `actor.process` and `actor.user`.
fn actor(alert: &Alert, container: Option<Value>) -> Option<Value> {
    let user = alert.user.as_ref().and_then(|u| {
        let mut user = Map::new();
        user.insert("uid".into(), json!(u.id.to_string()));
        put(&mut user, "name", u.name.as_ref().map(|n| json!(n)));
        non_empty(user)
    });
    let mut process = Map::new();
    if let Some(p) = &alert.process {
        process.insert("pid".into(), json!(p.pid));
        process.insert("tid".into(), json!(p.thread.id));
        process.insert("name".into(), json!(p.name));
        put(
            &mut process,
            "file",
            p.executable.as_ref().map(|path| {
                json!({"path": path, "name": file_name(path), "type_id": 1, "type": "Regular File"})
            }),
        );
        put(
            &mut process,
            "cmd_line",
            p.command_line.as_ref().map(|c| json!(c)),
        );
        put(
            &mut process,
            "created_time",
            p.start.map(|t| json!(epoch_ms(t.0))),
        );
        put(
            &mut process,
            "parent_process",
            p.parent.as_ref().map(|pp| match &pp.name {
                Some(name) => json!({"pid": pp.pid, "name": name}),
                None => json!({"pid": pp.pid}),
            }),
        );
    }
    put(&mut process, "user", user.clone());
    put(&mut process, "container", container);
    let mut actor = Map::new();
    put(&mut actor, "process", non_empty(process));
    put(&mut actor, "user", user);
    non_empty(actor)
}

fn device(alert: &Alert, container: Option<Value>) -> Value {
    let mut device = Map::new();
    device.insert("hostname".into(), json!(alert.host.name));
    // `type_id` is required by the device object; the sensor cannot tell a
    // server from a desktop, so it says Unknown (0).
    device.insert("type_id".into(), json!(0));
    device.insert("type".into(), json!("Unknown"));
    put(&mut device, "container", container);
    Value::Object(device)
}

fn metadata(alert: &Alert, in_container: bool) -> Value {
    let mut product = Map::new();
    product.insert("name".into(), json!(alert.agent.name));
    product.insert("vendor_name".into(), json!(alert.agent.name));
    product.insert("version".into(), json!(alert.agent.version));
    let mut profiles = vec!["host", "security_control"];
    if in_container {
        profiles.push("container");
    }
    let mut metadata = Map::new();
    metadata.insert("version".into(), json!(OCSF_VERSION));
    metadata.insert("product".into(), Value::Object(product));
    metadata.insert("profiles".into(), json!(profiles));
    metadata.insert("logged_time".into(), json!(epoch_ms(alert.event.created.0)));
    put(&mut metadata, "labels", alert.tags.as_ref().map(value));
    Value::Object(metadata)
}

/// `observables` (the peer, with its reputation), `enrichments` (one per
/// feed match) and `attacks` (ATT&CK).
fn threat_parts(alert: &Alert, out: &mut Map<String, Value>) {
    // The peer is the observable; its reputation comes from the feed match.
    let peer_field = if alert.is_egress() {
        "dst_endpoint.ip"
    } else {
        "src_endpoint.ip"
    };
    let peer_ip = alert.peer().ip.to_string();
    let enrichments = alert
        .threat
        .as_ref()
        .map_or(&[][..], |t| &t.enrichments[..]);
    let mut observable = Map::new();
    observable.insert("name".into(), json!(peer_field));
    observable.insert("type_id".into(), json!(2));
    observable.insert("type".into(), json!("IP Address"));
    observable.insert("value".into(), json!(peer_ip));
    if alert.is_alert()
        && let Some(first) = enrichments.first()
    {
        // A listed Tor address is "Suspicious/Risky" (7), not proven
        // malicious; the score is the rule's severity.
        let mut reputation = Map::new();
        reputation.insert("score_id".into(), json!(7));
        reputation.insert("score".into(), json!("Suspicious/Risky"));
        put(
            &mut reputation,
            "base_score",
            alert.event.severity.map(|s| json!(f64::from(s))),
        );
        reputation.insert("provider".into(), json!(first.indicator.provider));
        observable.insert("reputation".into(), Value::Object(reputation));
    }
    out.insert("observables".into(), json!([observable]));

    let items: Vec<Value> = enrichments
        .iter()
        .map(|e| {
            let mut data = Map::new();
            data.insert("indicator".into(), value(&e.indicator));
            data.insert("matched".into(), value(&e.matched));
            data.insert("description".into(), json!(e.indicator.description));
            put(&mut data, "tor", alert.torsensor.tor.as_ref().map(value));
            json!({
                "name": peer_field,
                "value": peer_ip,
                "type": "threat_feed",
                "provider": e.indicator.provider,
                "data": data,
            })
        })
        .collect();
    if !items.is_empty() {
        out.insert("enrichments".into(), json!(items));
    }
    if let Some(attack) = attack(alert) {
        out.insert("attacks".into(), json!([attack]));
    }
}

/// The first ATT&CK id and name of a list pair, as `{uid, name}`.
fn id_name(ids: &[String], names: &[String]) -> Option<Value> {
    let mut m = Map::new();
    put(&mut m, "uid", ids.first().map(|v| json!(v)));
    put(&mut m, "name", names.first().map(|v| json!(v)));
    non_empty(m)
}

fn attack(alert: &Alert) -> Option<Value> {
    let threat = alert.threat.as_ref()?;
    let (tactic, technique) = (&threat.tactic, &threat.technique);
    let sub = &technique.subtechnique;
    let mut attack = Map::new();
    put(&mut attack, "tactic", id_name(&tactic.id, &tactic.name));
    put(
        &mut attack,
        "technique",
        id_name(&technique.id, &technique.name),
    );
    put(&mut attack, "sub_technique", id_name(&sub.id, &sub.name));
    non_empty(attack)
}

fn unmapped(alert: &Alert) -> Value {
    let mut unmapped = Map::new();
    unmapped.insert("torsensor".into(), value(&alert.torsensor));
    put(&mut unmapped, "rule", alert.rule.as_ref().map(value));
    unmapped.insert("event.action".into(), json!(alert.event.action));
    Value::Object(unmapped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn severity_ids() {
        assert_eq!(severity(None).0, 1);
        assert_eq!(severity(Some(10)).0, 1);
        assert_eq!(severity(Some(47)).0, 3);
        assert_eq!(severity(Some(73)).0, 4);
        assert_eq!(severity(Some(95)).0, 5);
    }
}
