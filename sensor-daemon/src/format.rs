//! Other alert formats, rendered from the ECS document that [`crate::alert::ecs`]
//! builds, and pure additions to that document.
//!
//! - [`ocsf`]: OCSF Network Activity (class 4001), for Security Lake, Sentinel
//!   and other OCSF consumers.
//! - [`falco`]: Falco's JSON output, so falcosidekick (and what sits behind it)
//!   takes torsensor alerts as if Falco had raised them.
//! - [`add_container`], [`add_community_id`]: ECS `container.*`,
//!   `orchestrator.*` and `network.community_id`.
//!
//! Renderers copy what the ECS document has and derive only what follows from
//! it (a name from a path, a number from a string); an ECS field that is absent
//! leaves its counterparts out. The few values with no source are constants
//! of the format (class ids, `source: "torsensor"`) and are documented where
//! set.

use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value, json};

use crate::community_id;
use crate::container::ContainerInfo;

/// OCSF schema version the output follows.
pub const OCSF_VERSION: &str = "1.4.0";

/// An ECS document lacks what a format cannot do without.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FormatError {
    /// A field the format requires is absent or malformed in the ECS input.
    #[error("ECS document has no usable `{field}`: {reason}")]
    Field { field: &'static str, reason: String },
}

fn missing(field: &'static str, reason: impl Into<String>) -> FormatError {
    FormatError::Field {
        field,
        reason: reason.into(),
    }
}

/// The value at a dotted path (`"process.parent.pid"`); `None` when absent
/// or null. Keys with dots of their own (`@timestamp`) are single keys.
fn at<'a>(doc: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.')
        .try_fold(doc, |v, key| v.get(key))
        .filter(|v| !v.is_null())
}

fn str_at<'a>(doc: &'a Value, path: &str) -> Option<&'a str> {
    at(doc, path).and_then(Value::as_str)
}

fn u64_at(doc: &Value, path: &str) -> Option<u64> {
    at(doc, path).and_then(|v| {
        v.as_u64()
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
    })
}

/// Inserts `key: value` unless the value is absent.
/// Copies the string at `path` in `doc` (if any) to `key` in `map`.
fn copy_str(map: &mut Map<String, Value>, doc: &Value, key: &str, path: &str) {
    put(map, key, str_at(doc, path).map(|v| json!(v)));
}

/// Copies the number at `path` (a number or a numeric string) to `key`.
fn copy_u64(map: &mut Map<String, Value>, doc: &Value, key: &str, path: &str) {
    put(map, key, u64_at(doc, path).map(|v| json!(v)));
}

fn put(map: &mut Map<String, Value>, key: &str, value: Option<Value>) {
    if let Some(v) = value {
        map.insert(key.to_owned(), v);
    }
}

/// An object, or nothing when it would be empty.
fn non_empty(map: Map<String, Value>) -> Option<Value> {
    (!map.is_empty()).then_some(Value::Object(map))
}

fn timestamp(doc: &Value) -> Result<SystemTime, FormatError> {
    let text = str_at(doc, "@timestamp").ok_or_else(|| missing("@timestamp", "absent"))?;
    humantime::parse_rfc3339(text).map_err(|e| missing("@timestamp", format!("{text:?}: {e}")))
}

fn epoch_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn epoch_ns(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn is_egress(doc: &Value) -> Result<bool, FormatError> {
    match str_at(doc, "network.direction") {
        Some("egress") => Ok(true),
        Some("ingress") => Ok(false),
        other => Err(missing(
            "network.direction",
            format!("{other:?}, expected \"egress\" or \"ingress\""),
        )),
    }
}

fn has_type(doc: &Value, value: &str) -> bool {
    at(doc, "event.type")
        .and_then(Value::as_array)
        .is_some_and(|types| types.iter().any(|t| t == value))
}

/// `source`/`destination` as `(ip, port)`; both are required by both formats.
fn endpoint(doc: &Value, side: &'static str) -> Result<(String, u64), FormatError> {
    let ip = str_at(doc, &format!("{side}.ip")).ok_or_else(|| missing(side, "no ip"))?;
    let port = u64_at(doc, &format!("{side}.port")).ok_or_else(|| missing(side, "no port"))?;
    Ok((ip.to_owned(), port))
}

/// Falco-style priority, most to least severe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Priority {
    Emergency,
    Alert,
    Critical,
    Error,
    Warning,
    Notice,
    Informational,
    Debug,
}

impl Priority {
    pub const ALL: [Priority; 8] = [
        Priority::Emergency,
        Priority::Alert,
        Priority::Critical,
        Priority::Error,
        Priority::Warning,
        Priority::Notice,
        Priority::Informational,
        Priority::Debug,
    ];

    /// The name Falco writes (and falcosidekick accepts).
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Emergency => "Emergency",
            Priority::Alert => "Alert",
            Priority::Critical => "Critical",
            Priority::Error => "Error",
            Priority::Warning => "Warning",
            Priority::Notice => "Notice",
            Priority::Informational => "Informational",
            Priority::Debug => "Debug",
        }
    }

    /// Parses a rule's `priority` (case-insensitive; `Info` accepted as Falco
    /// rule files allow it).
    pub fn parse(text: &str) -> Option<Priority> {
        let lower = text.to_ascii_lowercase();
        if lower == "info" {
            return Some(Priority::Informational);
        }
        Priority::ALL
            .into_iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(&lower))
    }

    /// From ECS `event.severity` (0-100): 90+ Critical, 74+ Error, 50+
    /// Warning, 25+ Notice, below Informational (so the built-in rules, 73
    /// and 47, come out as their own `priority`, Warning and Notice).
    /// Emergency and Alert mean the system itself is unusable; a detection
    /// never claims them.
    pub fn from_severity(severity: u64) -> Priority {
        match severity {
            90.. => Priority::Critical,
            74..=89 => Priority::Error,
            50..=73 => Priority::Warning,
            25..=49 => Priority::Notice,
            _ => Priority::Informational,
        }
    }
}

/// OCSF `severity_id` (and its caption) from ECS `event.severity`; an event
/// without severity (audit) is Informational.
fn ocsf_severity(severity: Option<u64>) -> (u64, &'static str) {
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

/// Renders the ECS alert as OCSF Network Activity (class 4001).
///
/// Activity: Open (1), Fail (4) when `event.outcome` is failure, Refuse (5)
/// when `event.type` has `denied`; `type_uid` = 4001 * 100 + activity.
/// Disposition: Alert (19), or Blocked (2) when denied. torsensor's own
/// fields go to `unmapped.torsensor`.
pub fn ocsf(doc: &Value) -> Result<Value, FormatError> {
    let time = timestamp(doc)?;
    let egress = is_egress(doc)?;
    let (src_ip, src_port) = endpoint(doc, "source")?;
    let (dst_ip, dst_port) = endpoint(doc, "destination")?;
    let denied = has_type(doc, "denied");
    let failed = str_at(doc, "event.outcome") == Some("failure");
    let (activity_id, activity) = if denied {
        (5, "Refuse")
    } else if failed {
        (4, "Fail")
    } else {
        (1, "Open")
    };
    let is_alert = str_at(doc, "event.kind") == Some("alert");
    let severity = u64_at(doc, "event.severity");
    let (severity_id, severity_name) = ocsf_severity(severity);

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
    out.insert("time".into(), json!(epoch_ms(time)));
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
    if let Some(outcome) = str_at(doc, "event.outcome") {
        let (status_id, status) = match outcome {
            "success" => (1, "Success"),
            "failure" => (2, "Failure"),
            _ => (0, "Unknown"),
        };
        out.insert("status_id".into(), json!(status_id));
        out.insert("status".into(), json!(status));
    }
    put(
        &mut out,
        "message",
        str_at(doc, "rule.name")
            .or_else(|| str_at(doc, "event.action"))
            .map(|m| json!(m)),
    );

    // connection_info
    let mut conn = Map::new();
    conn.insert("direction_id".into(), json!(if egress { 2 } else { 1 }));
    conn.insert(
        "direction".into(),
        json!(if egress { "Outbound" } else { "Inbound" }),
    );
    copy_str(&mut conn, doc, "protocol_name", "network.transport");
    copy_u64(&mut conn, doc, "protocol_num", "network.iana_number");
    put(
        &mut conn,
        "protocol_ver_id",
        match str_at(doc, "network.type") {
            Some("ipv4") => Some(json!(4)),
            Some("ipv6") => Some(json!(6)),
            _ => None,
        },
    );
    copy_str(&mut conn, doc, "community_uid", "network.community_id");
    out.insert("connection_info".into(), Value::Object(conn));
    out.insert(
        "src_endpoint".into(),
        json!({"ip": src_ip, "port": src_port}),
    );
    out.insert(
        "dst_endpoint".into(),
        json!({"ip": dst_ip, "port": dst_port}),
    );

    // actor
    let mut user = Map::new();
    copy_str(&mut user, doc, "uid", "user.id");
    copy_str(&mut user, doc, "name", "user.name");
    let user = non_empty(user);
    let mut process = Map::new();
    copy_u64(&mut process, doc, "pid", "process.pid");
    copy_u64(&mut process, doc, "tid", "process.thread.id");
    copy_str(&mut process, doc, "name", "process.name");
    put(
        &mut process,
        "file",
        str_at(doc, "process.executable").map(|path| {
            json!({"path": path, "name": file_name(path), "type_id": 1, "type": "Regular File"})
        }),
    );
    copy_str(&mut process, doc, "cmd_line", "process.command_line");
    put(
        &mut process,
        "created_time",
        str_at(doc, "process.start")
            .and_then(|s| humantime::parse_rfc3339(s).ok())
            .map(|t| json!(epoch_ms(t))),
    );
    put(
        &mut process,
        "parent_process",
        u64_at(doc, "process.parent.pid").map(|p| json!({"pid": p})),
    );
    put(&mut process, "user", user.clone());
    let mut container = Map::new();
    copy_str(&mut container, doc, "uid", "container.id");
    copy_str(&mut container, doc, "runtime", "container.runtime");
    if str_at(doc, "orchestrator.resource.type") == Some("pod") {
        copy_str(&mut container, doc, "pod_uuid", "orchestrator.resource.id");
    }
    let container = non_empty(container);
    put(&mut process, "container", container.clone());
    let mut actor = Map::new();
    put(&mut actor, "process", non_empty(process));
    put(&mut actor, "user", user);
    put(&mut out, "actor", non_empty(actor));

    let mut device = Map::new();
    copy_str(&mut device, doc, "hostname", "host.name");
    // `type_id` is required by the device object; the sensor cannot tell a
    // server from a desktop, so it says Unknown (0).
    device.insert("type_id".into(), json!(0));
    device.insert("type".into(), json!("Unknown"));
    put(&mut device, "container", container.clone());
    out.insert("device".into(), Value::Object(device));

    // metadata
    let mut product = Map::new();
    let product_name = str_at(doc, "agent.name").unwrap_or("torsensor");
    product.insert("name".into(), json!(product_name));
    product.insert("vendor_name".into(), json!(product_name));
    copy_str(&mut product, doc, "version", "agent.version");
    let mut profiles = vec!["host", "security_control"];
    if container.is_some() {
        profiles.push("container");
    }
    let mut metadata = Map::new();
    metadata.insert("version".into(), json!(OCSF_VERSION));
    metadata.insert("product".into(), Value::Object(product));
    metadata.insert("profiles".into(), json!(profiles));
    put(
        &mut metadata,
        "logged_time",
        str_at(doc, "event.created")
            .and_then(|s| humantime::parse_rfc3339(s).ok())
            .map(|t| json!(epoch_ms(t))),
    );
    put(&mut metadata, "labels", at(doc, "tags").cloned());
    out.insert("metadata".into(), Value::Object(metadata));

    // The peer is the observable; its reputation comes from the feed match.
    let (peer_field, peer_ip) = if egress {
        ("dst_endpoint.ip", &dst_ip)
    } else {
        ("src_endpoint.ip", &src_ip)
    };
    let enrichments: Vec<&Value> = at(doc, "threat.enrichments")
        .and_then(Value::as_array)
        .map(|e| e.iter().collect())
        .unwrap_or_default();
    let mut observable = Map::new();
    observable.insert("name".into(), json!(peer_field));
    observable.insert("type_id".into(), json!(2));
    observable.insert("type".into(), json!("IP Address"));
    observable.insert("value".into(), json!(peer_ip));
    if is_alert && let Some(first) = enrichments.first() {
        // A listed Tor address is "Suspicious/Risky" (7), not proven
        // malicious; the score is the rule's severity.
        let mut reputation = Map::new();
        reputation.insert("score_id".into(), json!(7));
        reputation.insert("score".into(), json!("Suspicious/Risky"));
        put(
            &mut reputation,
            "base_score",
            severity.map(|s| json!(s as f64)),
        );
        put(
            &mut reputation,
            "provider",
            str_at(first, "indicator.provider").map(|p| json!(p)),
        );
        observable.insert("reputation".into(), Value::Object(reputation));
    }
    out.insert("observables".into(), json!([observable]));

    let ocsf_enrichments: Vec<Value> = enrichments
        .iter()
        .map(|e| {
            let mut data = Map::new();
            put(&mut data, "indicator", at(e, "indicator").cloned());
            put(&mut data, "matched", at(e, "matched").cloned());
            put(
                &mut data,
                "description",
                at(e, "indicator.description").cloned(),
            );
            put(&mut data, "tor", at(doc, "torsensor.tor").cloned());
            let mut item = Map::new();
            item.insert("name".into(), json!(peer_field));
            item.insert("value".into(), json!(peer_ip));
            item.insert("type".into(), json!("threat_feed"));
            put(
                &mut item,
                "provider",
                str_at(e, "indicator.provider")
                    .or_else(|| str_at(e, "feed.name"))
                    .map(|p| json!(p)),
            );
            item.insert("data".into(), Value::Object(data));
            Value::Object(item)
        })
        .collect();
    if !ocsf_enrichments.is_empty() {
        out.insert("enrichments".into(), json!(ocsf_enrichments));
    }

    if let Some(attack) = ocsf_attack(doc) {
        out.insert("attacks".into(), json!([attack]));
    }

    let mut unmapped = Map::new();
    put(&mut unmapped, "torsensor", at(doc, "torsensor").cloned());
    put(&mut unmapped, "rule", at(doc, "rule").cloned());
    put(
        &mut unmapped,
        "event.action",
        at(doc, "event.action").cloned(),
    );
    put(&mut out, "unmapped", non_empty(unmapped));
    Ok(Value::Object(out))
}

/// First element of an ECS list field (`threat.tactic.id` is a list).
fn first_str<'a>(doc: &'a Value, path: &str) -> Option<&'a str> {
    match at(doc, path)? {
        Value::Array(items) => items.first().and_then(Value::as_str),
        Value::String(s) => Some(s),
        _ => None,
    }
}

fn ocsf_attack(doc: &Value) -> Option<Value> {
    let mut attack = Map::new();
    let id_name = |id: &str, name: &str| {
        let mut m = Map::new();
        put(&mut m, "uid", first_str(doc, id).map(|v| json!(v)));
        put(&mut m, "name", first_str(doc, name).map(|v| json!(v)));
        non_empty(m)
    };
    put(
        &mut attack,
        "tactic",
        id_name("threat.tactic.id", "threat.tactic.name"),
    );
    put(
        &mut attack,
        "technique",
        id_name("threat.technique.id", "threat.technique.name"),
    );
    put(
        &mut attack,
        "sub_technique",
        id_name(
            "threat.technique.subtechnique.id",
            "threat.technique.subtechnique.name",
        ),
    );
    non_empty(attack)
}

/// Renders the ECS alert as Falco JSON output, with the priority derived from
/// `event.severity` ([`Priority::from_severity`]).
pub fn falco(doc: &Value) -> Result<Value, FormatError> {
    let priority = Priority::from_severity(u64_at(doc, "event.severity").unwrap_or(0));
    falco_with_priority(doc, priority)
}

/// Renders the ECS alert as Falco JSON output with the given priority (e.g.
/// the rule's own: `Priority::parse(&rule.priority)`).
///
/// `rule` is `rule.name` (an audit event without rule uses `event.action`);
/// `source` is `"torsensor"`; `output_fields` use Falco's field names, with
/// `container.id` the 12-digit short id and `container.full_id` the full
/// one, as Falco writes them.
pub fn falco_with_priority(doc: &Value, priority: Priority) -> Result<Value, FormatError> {
    let time = timestamp(doc)?;
    let time_text = str_at(doc, "@timestamp").unwrap_or_default();
    let egress = is_egress(doc)?;
    let (src_ip, src_port) = endpoint(doc, "source")?;
    let (dst_ip, dst_port) = endpoint(doc, "destination")?;
    let rule = str_at(doc, "rule.name")
        .or_else(|| str_at(doc, "event.action"))
        .filter(|r| !r.is_empty())
        .ok_or_else(|| missing("rule.name", "absent, and no event.action either"))?;
    let ((lip, lport), (rip, rport)) = if egress {
        ((&src_ip, src_port), (&dst_ip, dst_port))
    } else {
        ((&dst_ip, dst_port), (&src_ip, src_port))
    };

    let mut f = Map::new();
    f.insert("evt.time".into(), json!(epoch_ns(time)));
    f.insert(
        "evt.type".into(),
        json!(if egress { "connect" } else { "accept" }),
    );
    f.insert(
        "fd.l4proto".into(),
        json!(str_at(doc, "network.transport").unwrap_or("tcp")),
    );
    f.insert("fd.lip".into(), json!(lip));
    f.insert("fd.lport".into(), json!(lport));
    f.insert("fd.rip".into(), json!(rip));
    f.insert("fd.rport".into(), json!(rport));
    f.insert(
        "fd.name".into(),
        json!(format!(
            "{}->{}",
            socket_text(&src_ip, src_port),
            socket_text(&dst_ip, dst_port)
        )),
    );
    let name = str_at(doc, "process.name");
    put(&mut f, "proc.name", name.map(|n| json!(n)));
    copy_u64(&mut f, doc, "proc.pid", "process.pid");
    copy_u64(&mut f, doc, "thread.tid", "process.thread.id");
    copy_u64(&mut f, doc, "proc.ppid", "process.parent.pid");
    copy_str(&mut f, doc, "proc.exepath", "process.executable");
    // Falco's proc.cmdline is the process name followed by the arguments
    // after argv[0].
    let cmdline = match (name, at(doc, "process.args").and_then(Value::as_array)) {
        (Some(name), Some(args)) if !args.is_empty() => {
            let rest: Vec<&str> = args.iter().skip(1).filter_map(Value::as_str).collect();
            Some(if rest.is_empty() {
                name.to_owned()
            } else {
                format!("{name} {}", rest.join(" "))
            })
        }
        _ => None,
    };
    put(&mut f, "proc.cmdline", cmdline.map(|c| json!(c)));
    copy_str(&mut f, doc, "user.name", "user.name");
    copy_u64(&mut f, doc, "user.uid", "user.id");
    if let Some(id) = str_at(doc, "container.id") {
        let short = id.char_indices().nth(12).map_or(id, |(i, _)| &id[..i]);
        f.insert("container.id".into(), json!(short));
        f.insert("container.full_id".into(), json!(id));
    }
    copy_str(&mut f, doc, "container.type", "container.runtime");
    copy_str(&mut f, doc, "k8s.ns.name", "orchestrator.namespace");
    if str_at(doc, "orchestrator.resource.type") == Some("pod") {
        copy_str(&mut f, doc, "k8s.pod.name", "orchestrator.resource.name");
        copy_str(&mut f, doc, "k8s.pod.uid", "orchestrator.resource.id");
    }

    let output = falco_output(doc, rule, egress, &f);
    let mut out = Map::new();
    out.insert("time".into(), json!(time_text));
    out.insert("rule".into(), json!(rule));
    out.insert("priority".into(), json!(priority.as_str()));
    out.insert("output".into(), json!(output));
    out.insert("output_fields".into(), Value::Object(f));
    out.insert("source".into(), json!("torsensor"));
    put(&mut out, "tags", at(doc, "tags").cloned());
    copy_str(&mut out, doc, "hostname", "host.name");
    Ok(Value::Object(out))
}

fn socket_text(ip: &str, port: u64) -> String {
    if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    }
}

/// One human sentence, in Falco's `text (key=value ...)` style, naming only
/// what is known.
fn falco_output(doc: &Value, rule: &str, egress: bool, f: &Map<String, Value>) -> String {
    let text = |key: &str| {
        f.get(key).map(|v| match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
    };
    let mut parts = Vec::new();
    let (lip, lport, rip, rport) = (
        text("fd.lip").unwrap_or_default(),
        text("fd.lport").unwrap_or_default(),
        text("fd.rip").unwrap_or_default(),
        text("fd.rport").unwrap_or_default(),
    );
    let local = socket_text(&lip, lport.parse().unwrap_or(0));
    let remote = socket_text(&rip, rport.parse().unwrap_or(0));
    parts.push(if egress {
        format!("connection={local}->{remote}")
    } else {
        format!("connection={remote}->{local}")
    });
    for (label, key) in [
        ("process", "proc.name"),
        ("pid", "proc.pid"),
        ("exe", "proc.exepath"),
        ("command", "proc.cmdline"),
        ("user", "user.name"),
        ("uid", "user.uid"),
        ("container", "container.id"),
        ("pod_uid", "k8s.pod.uid"),
    ] {
        if let Some(v) = text(key) {
            parts.push(format!("{label}={v}"));
        }
    }
    if let Some(feeds) = at(doc, "torsensor.feeds").and_then(Value::as_array) {
        let names: Vec<&str> = feeds.iter().filter_map(Value::as_str).collect();
        if !names.is_empty() {
            parts.push(format!("feeds={}", names.join(",")));
        }
    }
    if let Some(roles) = at(doc, "torsensor.tor.roles").and_then(Value::as_array) {
        let names: Vec<&str> = roles.iter().filter_map(Value::as_str).collect();
        if !names.is_empty() {
            parts.push(format!("tor_roles={}", names.join(",")));
        }
    }
    let peer = if egress { "to" } else { "from" };
    format!("{rule} ({peer} {rip}) ({})", parts.join(" "))
}

/// Adds ECS `container.id`/`container.runtime` and, for a pod,
/// `orchestrator.type: kubernetes`, `orchestrator.resource.{type: pod, id}`.
/// The QoS class and cgroup path, which ECS has no field for, go to
/// `torsensor.container`. Pod name and namespace need the Kubernetes API and
/// are not set here.
pub fn add_container(doc: &mut Value, info: &ContainerInfo) {
    let Some(obj) = doc.as_object_mut() else {
        return;
    };
    let mut container = Map::new();
    container.insert("id".into(), json!(info.id));
    put(
        &mut container,
        "runtime",
        info.runtime.map(|r| json!(r.as_str())),
    );
    obj.insert("container".into(), Value::Object(container));
    if let Some(uid) = &info.pod_uid {
        obj.insert(
            "orchestrator".into(),
            json!({"type": "kubernetes", "resource": {"type": "pod", "id": uid}}),
        );
    }
    let mut extra = Map::new();
    extra.insert("cgroup_path".into(), json!(info.cgroup_path));
    put(&mut extra, "qos", info.qos.map(|q| json!(q.as_str())));
    let ts = obj
        .entry("torsensor")
        .or_insert_with(|| Value::Object(Map::new()));
    if let Some(ts) = ts.as_object_mut() {
        ts.insert("container".into(), Value::Object(extra));
    }
}

/// Adds `network.community_id` (seed 0) from `source`, `destination` and
/// `network.iana_number`; leaves the document alone when any is missing or
/// malformed.
pub fn add_community_id(doc: &mut Value) {
    let parse_ip = |side: &str| str_at(doc, &format!("{side}.ip"))?.parse::<IpAddr>().ok();
    let port =
        |side: &str| u64_at(doc, &format!("{side}.port")).and_then(|p| u16::try_from(p).ok());
    let (Some(src), Some(dst), Some(sport), Some(dport), Some(proto)) = (
        parse_ip("source"),
        parse_ip("destination"),
        port("source"),
        port("destination"),
        u64_at(doc, "network.iana_number").and_then(|p| u8::try_from(p).ok()),
    ) else {
        return;
    };
    let id = community_id::v1(0, src, dst, proto, Some((sport, dport)));
    if let Some(network) = doc.get_mut("network").and_then(Value::as_object_mut) {
        network.insert("community_id".into(), json!(id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priorities_parse_and_map_from_severity() {
        for p in Priority::ALL {
            assert_eq!(Priority::parse(p.as_str()), Some(p));
            assert_eq!(Priority::parse(&p.as_str().to_uppercase()), Some(p));
        }
        assert_eq!(Priority::parse("info"), Some(Priority::Informational));
        assert_eq!(Priority::parse("loud"), None);
        // The built-in rules' severities give their own priorities.
        let rules = crate::rules::Rules::builtin().unwrap();
        for rule in [&rules.egress_relay, &rules.egress_exit, &rules.ingress] {
            assert_eq!(
                Some(Priority::from_severity(rule.severity.into())),
                Priority::parse(&rule.priority),
                "{}",
                rule.id
            );
        }
        assert_eq!(Priority::from_severity(100), Priority::Critical);
        assert_eq!(Priority::from_severity(0), Priority::Informational);
    }

    #[test]
    fn ocsf_severity_ids() {
        assert_eq!(ocsf_severity(None).0, 1);
        assert_eq!(ocsf_severity(Some(10)).0, 1);
        assert_eq!(ocsf_severity(Some(47)).0, 3);
        assert_eq!(ocsf_severity(Some(73)).0, 4);
        assert_eq!(ocsf_severity(Some(95)).0, 5);
    }

    #[test]
    fn malformed_documents_are_refused_with_the_field() {
        let doc = json!({"network": {"direction": "egress"}});
        assert_eq!(
            ocsf(&doc).unwrap_err(),
            FormatError::Field {
                field: "@timestamp",
                reason: "absent".into()
            }
        );
        let doc = json!({"@timestamp": "yesterday"});
        assert!(matches!(
            falco(&doc),
            Err(FormatError::Field {
                field: "@timestamp",
                ..
            })
        ));
        let doc = json!({"@timestamp": "2023-11-14T22:13:20Z", "network": {"direction": "up"}});
        assert!(matches!(
            ocsf(&doc),
            Err(FormatError::Field {
                field: "network.direction",
                ..
            })
        ));
    }

    #[test]
    fn community_id_is_added_only_when_derivable() {
        let mut doc = json!({
            "network": {"iana_number": "6"},
            "source": {"ip": "128.232.110.120", "port": 34855},
            "destination": {"ip": "66.35.250.204", "port": 80},
        });
        add_community_id(&mut doc);
        assert_eq!(
            doc["network"]["community_id"],
            "1:LQU9qZlK+B5F3KDmev6m5PMibrg="
        );
        let mut partial = json!({"network": {"iana_number": "6"}, "source": {"ip": "1.2.3.4"}});
        add_community_id(&mut partial);
        assert!(partial["network"].get("community_id").is_none());
    }
}
