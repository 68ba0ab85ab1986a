//! OCSF output: the alert as OCSF Network Activity (class 4001; a
//! listening socket as its activity Listen) or, for a program start,
//! Process Activity (class 1007, activity Launch), for Security Lake,
//! Sentinel and other OCSF consumers.
//!
//! The renderer copies what the alert has and derives only what follows from
//! it (a name from a path, milliseconds from a time); a field the alert
//! lacks leaves its counterparts out. The few values with no source are
//! constants of the format (class ids, `device.type_id`) and are documented
//! where set.

use serde::Serialize;
use serde_json::{Map, Value, json};

use super::model::{Alert, Endpoint, EventType, IpFamily, Outcome, Signal};
use crate::net::Direction;
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
    // Port 0: not known (a web log's client).
    if e.port == 0 {
        json!({"ip": e.ip.to_string()})
    } else {
        json!({"ip": e.ip.to_string(), "port": e.port})
    }
}

/// OCSF `traffic` (a hunt's flow: bytes and packets each way, out being
/// from the source).
fn traffic(alert: &Alert) -> Option<Value> {
    let (src, dst) = (alert.source.as_ref()?, alert.destination.as_ref()?);
    let mut t = Map::new();
    for (key, value) in [
        ("bytes_out", src.bytes),
        ("packets_out", src.packets),
        ("bytes_in", dst.bytes),
        ("packets_in", dst.packets),
    ] {
        if let Some(v) = value {
            t.insert(key.into(), json!(v));
        }
    }
    if t.is_empty() {
        return None;
    }
    let bytes = src.bytes.unwrap_or(0) + dst.bytes.unwrap_or(0);
    let packets = src.packets.unwrap_or(0) + dst.packets.unwrap_or(0);
    t.insert("bytes".into(), json!(bytes));
    t.insert("packets".into(), json!(packets));
    Some(Value::Object(t))
}

/// Renders the alert as OCSF Network Activity (class 4001), or Process
/// Activity (class 1007) for a program start.
///
/// Network Activity: Open (1), Fail (4) when `event.outcome` is failure,
/// Refuse (5) when `event.type` has `denied`, Listen (7) for a listening
/// socket; `type_uid` = 4001 * 100 + activity. Process Activity: Launch
/// (1), `type_uid` 100701, the started program in `process`, its parent in
/// `actor.process`. Disposition: Alert (19), or Blocked (2) when denied.
/// torsensor's own fields go to `unmapped.torsensor`.
pub fn render(alert: &Alert) -> Value {
    let denied = alert.event.types.contains(&EventType::Denied);
    let failed = alert.event.outcome == Outcome::Failure;
    let signal = alert.signal();
    let (activity_id, activity) = match signal {
        Signal::Exec => (1, "Launch"),
        Signal::Listen => (7, "Listen"),
        Signal::Dns => (1, "Query"),
        Signal::Connection if denied => (5, "Refuse"),
        Signal::Connection if failed => (4, "Fail"),
        Signal::Connection => (1, "Open"),
        // A gateway flow's summary closes what its hit opened.
        Signal::Gateway if alert.event.types.contains(&EventType::End) => (2, "Close"),
        Signal::Gateway => (1, "Open"),
        // An exported record reports traffic that has been.
        Signal::Flow => (6, "Traffic"),
    };
    let (activity_id, activity) = match &alert.http {
        Some(h) => http_activity(h.request.method.as_deref()),
        None => (activity_id, activity),
    };
    let (category_uid, category, class_uid, class) = match signal {
        // A web server's requests (a hunt's access log): HTTP Activity.
        _ if alert.http.is_some() => (4, "Network Activity", 4002, "HTTP Activity"),
        Signal::Exec => (1, "System Activity", 1007, "Process Activity"),
        Signal::Dns => (4, "Network Activity", 4003, "DNS Activity"),
        Signal::Connection | Signal::Listen | Signal::Gateway | Signal::Flow => {
            (4, "Network Activity", 4001, "Network Activity")
        }
    };
    let is_alert = alert.is_alert();
    let (severity_id, severity_name) = severity(alert.event.severity);

    let mut out = Map::new();
    out.insert("activity_id".into(), json!(activity_id));
    out.insert("activity_name".into(), json!(activity));
    out.insert("category_uid".into(), json!(category_uid));
    out.insert("category_name".into(), json!(category));
    out.insert("class_uid".into(), json!(class_uid));
    out.insert("class_name".into(), json!(class));
    out.insert("type_uid".into(), json!(class_uid * 100 + activity_id));
    out.insert("type_name".into(), json!(format!("{class}: {activity}")));
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
    put(&mut out, "connection_info", connection_info(alert));
    put(&mut out, "traffic", traffic(alert));
    if let (Some(start), Some(end)) = (&alert.event.start, &alert.event.end) {
        out.insert("start_time".into(), json!(epoch_ms(start.0)));
        out.insert("end_time".into(), json!(epoch_ms(end.0)));
        if let Some(ns) = alert.event.duration {
            out.insert("duration".into(), json!(ns / 1_000_000));
        }
    }
    let mut src = alert.source.as_ref().map(endpoint);
    // A listener is where connections will go.
    let mut dst = alert
        .destination
        .as_ref()
        .or(alert.server.as_ref())
        .map(endpoint);
    if signal == Signal::Gateway {
        gateway_parts(alert, src.as_mut(), dst.as_mut());
    }
    put(&mut out, "src_endpoint", src);
    put(&mut out, "dst_endpoint", dst);
    if let Some(h) = &alert.http {
        http_parts(alert, h, &mut out);
    }
    if let Some(d) = &alert.dns {
        // DNS Activity's `query` (OCSF 1.x DNS Query object).
        let mut query = Map::new();
        query.insert("hostname".into(), json!(d.question.name));
        query.insert("type".into(), json!(d.question.kind));
        query.insert("class".into(), json!("IN"));
        out.insert("query".into(), Value::Object(query));
    }
    let container = container(alert);
    if signal == Signal::Exec {
        // The started program is the process; who started it, the actor.
        put(
            &mut out,
            "process",
            non_empty(process_object(alert, container.clone())),
        );
        out.insert("actor".into(), launcher(alert));
    } else {
        put(&mut out, "actor", actor(alert, container.clone()));
    }
    out.insert("device".into(), device(alert, container.clone()));
    out.insert("metadata".into(), metadata(alert, container.is_some()));
    threat_parts(alert, &mut out);
    out.insert("unmapped".into(), unmapped(alert));
    Value::Object(out)
}

/// HTTP Activity's activity, from the request's method.
fn http_activity(method: Option<&str>) -> (u64, &'static str) {
    match method.map(str::to_ascii_uppercase).as_deref() {
        None => (0, "Unknown"),
        Some("CONNECT") => (1, "Connect"),
        Some("DELETE") => (2, "Delete"),
        Some("GET") => (3, "Get"),
        Some("HEAD") => (4, "Head"),
        Some("OPTIONS") => (5, "Options"),
        Some("POST") => (6, "Post"),
        Some("PUT") => (7, "Put"),
        Some("TRACE") => (8, "Trace"),
        Some(_) => (99, "Other"),
    }
}

/// HTTP Activity's `http_request` (method, URL path, user agent) and
/// `http_response` (status code, body length).
fn http_parts(alert: &Alert, h: &crate::alert::model::Http, out: &mut Map<String, Value>) {
    let mut request = Map::new();
    put(
        &mut request,
        "http_method",
        h.request.method.as_ref().map(|m| json!(m)),
    );
    if let Some(u) = &alert.url {
        let (path, query) = match u.original.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (u.original.as_str(), None),
        };
        let mut url = Map::new();
        url.insert("url_string".into(), json!(u.original));
        url.insert("path".into(), json!(path));
        put(&mut url, "query_string", query.map(|q| json!(q)));
        request.insert("url".into(), Value::Object(url));
    }
    put(
        &mut request,
        "user_agent",
        alert.user_agent.as_ref().map(|a| json!(a.original)),
    );
    out.insert("http_request".into(), Value::Object(request));
    let mut response = Map::new();
    put(
        &mut response,
        "code",
        h.response.status_code.map(|c| json!(c)),
    );
    put(
        &mut response,
        "length",
        h.response.body.as_ref().map(|b| json!(b.bytes)),
    );
    if !response.is_empty() {
        out.insert("http_response".into(), Value::Object(response));
    }
}

/// Gateway mode: the interface on the endpoint whose side it faces (the
/// inside host's for an inside interface), and a summary's `traffic`
/// (`bytes_out`: source to destination) and `start_time` / `end_time`.
/// A gateway alert's interface, on the endpoint on its side (its bytes,
/// packets and times are every flow's: `traffic`, `start_time`...).
fn gateway_parts(alert: &Alert, src: Option<&mut Value>, dst: Option<&mut Value>) {
    if let Some(g) = &alert.torsensor.gateway {
        // The inside host is the source of an outbound flow.
        let inside_is_source = alert.is_egress();
        let on_source = (g.side == "inside") == inside_is_source;
        if let Some(Value::Object(e)) = if on_source { src } else { dst } {
            e.insert("interface_name".into(), json!(g.interface));
        }
    }
}

fn connection_info(alert: &Alert) -> Option<Value> {
    let network = alert.network.as_ref()?;
    let mut conn = Map::new();
    let (direction_id, direction) = match alert.direction() {
        Some(Direction::Egress) => (2, "Outbound"),
        Some(Direction::Ingress) => (1, "Inbound"),
        // A listener: no connection yet.
        None => (0, "Unknown"),
    };
    conn.insert("direction_id".into(), json!(direction_id));
    conn.insert("direction".into(), json!(direction));
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
    Some(Value::Object(conn))
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

/// The OCSF user of the alert's process.
fn user(alert: &Alert) -> Option<Value> {
    alert.user.as_ref().and_then(|u| {
        let mut user = Map::new();
        user.insert("uid".into(), json!(u.id.to_string()));
        put(&mut user, "name", u.name.as_ref().map(|n| json!(n)));
        non_empty(user)
    })
}

/// `actor.process` and `actor.user`.
fn actor(alert: &Alert, container: Option<Value>) -> Option<Value> {
    let user = user(alert);
    let process = process_object(alert, container);
    let mut actor = Map::new();
    put(&mut actor, "process", non_empty(process));
    put(&mut actor, "user", user);
    non_empty(actor)
}

/// Process Activity's `actor`: the parent that started the program (the
/// actor object is required; an unknown parent leaves it empty).
fn launcher(alert: &Alert) -> Value {
    let mut actor = Map::new();
    let parent = alert.process.as_ref().and_then(|p| p.parent.as_ref());
    put(
        &mut actor,
        "process",
        parent.map(|pp| match &pp.name {
            Some(name) => json!({"pid": pp.pid, "name": name}),
            None => json!({"pid": pp.pid}),
        }),
    );
    put(&mut actor, "user", user(alert));
    Value::Object(actor)
}

/// The OCSF process object of the alert's process, with its user and
/// container.
fn process_object(alert: &Alert, container: Option<Value>) -> Map<String, Value> {
    let user = user(alert);
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
    put(&mut process, "user", user);
    put(&mut process, "container", container);
    process
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

/// The observable of an alert: (name, type_id, type, value). The peer of
/// a connection, the port of a listener, the name of a started program.
fn observable_of(alert: &Alert) -> Option<(&'static str, u64, &'static str, Value)> {
    match alert.signal() {
        Signal::Connection | Signal::Gateway | Signal::Flow => {
            let field = if alert.is_egress() {
                "dst_endpoint.ip"
            } else {
                "src_endpoint.ip"
            };
            let ip = alert.peer()?.ip.to_string();
            Some((field, 2, "IP Address", json!(ip)))
        }
        Signal::Listen => {
            let port = alert.server?.port;
            Some(("dst_endpoint.port", 11, "Port", json!(port)))
        }
        Signal::Exec => {
            let name = alert.process.as_ref()?.name.clone();
            Some(("process.name", 9, "Process Name", json!(name)))
        }
        Signal::Dns => {
            let name = alert.dns.as_ref()?.question.name.clone();
            Some(("query.hostname", 1, "Hostname", json!(name)))
        }
    }
}

/// `observables` (the peer, with its reputation), `enrichments` (one per
/// feed match) and `attacks` (ATT&CK).
fn threat_parts(alert: &Alert, out: &mut Map<String, Value>) {
    if let Some(attack) = attack(alert) {
        out.insert("attacks".into(), json!([attack]));
    }
    // The peer is the observable; its reputation comes from the feed match.
    let Some((peer_field, type_id, type_name, peer_value)) = observable_of(alert) else {
        return;
    };
    let enrichments = alert
        .threat
        .as_ref()
        .map_or(&[][..], |t| &t.enrichments[..]);
    let mut observable = Map::new();
    observable.insert("name".into(), json!(peer_field));
    observable.insert("type_id".into(), json!(type_id));
    observable.insert("type".into(), json!(type_name));
    observable.insert("value".into(), peer_value.clone());
    let provider = match (enrichments.first(), alert.signal()) {
        (Some(first), _) => Some(first.indicator.provider.clone()),
        // No feed: the rule is the judge.
        (None, Signal::Exec | Signal::Listen | Signal::Dns) => Some("torsensor".to_owned()),
        (None, Signal::Connection | Signal::Gateway | Signal::Flow) => None,
    };
    if alert.is_alert()
        && let Some(provider) = provider
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
        reputation.insert("provider".into(), json!(provider));
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
                "value": peer_value,
                "type": "threat_feed",
                "provider": e.indicator.provider,
                "data": data,
            })
        })
        .collect();
    if !items.is_empty() {
        out.insert("enrichments".into(), json!(items));
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
