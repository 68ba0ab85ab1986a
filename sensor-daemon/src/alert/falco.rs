//! Falco output: the alert as Falco's JSON output, so falcosidekick (and what
//! sits behind it) takes torsensor alerts as if Falco had raised them.
//!
//! `rule` is `rule.name` (an audit event without rule uses `event.action`);
//! `source` is `"torsensor"`; `output_fields` use Falco's field names, with
//! `container.id` the 12-digit short id and `container.full_id` the full
//! one, as Falco writes them. A field the alert lacks is left out.

use std::net::IpAddr;

use serde_json::{Map, Value, json};

use super::model::{Alert, Endpoint, Signal};
use crate::time::{epoch_ns, rfc3339};

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

/// Renders the alert as Falco JSON output, with the priority derived from
/// `event.severity` ([`Priority::from_severity`]).
pub fn render(alert: &Alert) -> Value {
    let severity = alert.event.severity.map_or(0, u64::from);
    render_with_priority(alert, Priority::from_severity(severity))
}

/// What the Falco fields and sentence say about the process and container.
struct Actor<'a> {
    name: Option<&'a str>,
    pid: Option<u32>,
    exe: Option<&'a str>,
    /// Falco's `proc.cmdline`: the process name followed by the arguments
    /// after argv[0].
    cmdline: Option<String>,
    user_name: Option<&'a str>,
    uid: Option<u32>,
    container_short_id: Option<&'a str>,
    pod_uid: Option<&'a str>,
}

impl<'a> Actor<'a> {
    fn of(alert: &'a Alert) -> Self {
        let process = alert.process.as_ref();
        let cmdline = process.filter(|p| !p.args.is_empty()).map(|p| {
            let rest: Vec<&str> = p.args.iter().skip(1).map(String::as_str).collect();
            if rest.is_empty() {
                p.name.clone()
            } else {
                format!("{} {}", p.name, rest.join(" "))
            }
        });
        let pod = alert
            .orchestrator
            .as_ref()
            .filter(|o| o.resource.is_pod())
            .map(|o| &o.resource);
        Actor {
            name: process.map(|p| p.name.as_str()),
            pid: process.map(|p| p.pid),
            exe: process.and_then(|p| p.executable.as_deref()),
            cmdline,
            user_name: alert.user.as_ref().and_then(|u| u.name.as_deref()),
            uid: alert.user.as_ref().map(|u| u.id),
            container_short_id: alert.container.as_ref().map(|c| {
                let id = c.id.as_str();
                id.char_indices().nth(12).map_or(id, |(i, _)| &id[..i])
            }),
            pod_uid: pod.and_then(|r| r.id.as_deref()),
        }
    }
}

fn put(map: &mut Map<String, Value>, key: &str, value: Option<Value>) {
    if let Some(v) = value {
        map.insert(key.to_owned(), v);
    }
}

/// Renders the alert as Falco JSON output with the given priority (e.g.
/// the rule's own: `Priority::parse(&rule.priority)`).
pub fn render_with_priority(alert: &Alert, priority: Priority) -> Value {
    let rule = alert
        .rule
        .as_ref()
        .map(|r| r.name.as_str())
        .filter(|name| !name.is_empty())
        .unwrap_or(&alert.event.action);
    let actor = Actor::of(alert);
    let mut out = Map::new();
    out.insert("time".into(), json!(rfc3339(alert.timestamp.0)));
    out.insert("rule".into(), json!(rule));
    out.insert("priority".into(), json!(priority.as_str()));
    out.insert("output".into(), json!(output(alert, rule, &actor)));
    out.insert("output_fields".into(), output_fields(alert, &actor));
    out.insert("source".into(), json!("torsensor"));
    put(&mut out, "tags", alert.tags.as_ref().map(|t| json!(t)));
    out.insert("hostname".into(), json!(alert.host.name));
    Value::Object(out)
}

/// Falco's `fd.name`: `src->dst` for a connection, the address of a
/// listener.
fn fd_name(alert: &Alert) -> Option<String> {
    match (alert.source, alert.destination, alert.server) {
        (Some(src), Some(dst), _) => Some(format!("{}->{}", socket_text(&src), socket_text(&dst))),
        (_, _, Some(server)) => Some(socket_text(&server)),
        _ => None,
    }
}

fn output_fields(alert: &Alert, actor: &Actor<'_>) -> Value {
    let (local, remote) = (alert.local(), alert.peer());
    let mut f = Map::new();
    f.insert("evt.time".into(), json!(epoch_ns(alert.timestamp.0)));
    let evt_type = match alert.signal() {
        Signal::Exec => "execve",
        Signal::Listen => "listen",
        // The query leaves in a sendto/sendmsg/write; Falco's name for
        // the family.
        Signal::Dns => "sendto",
        Signal::Connection if alert.is_egress() => "connect",
        Signal::Connection => "accept",
        // No system call on a router: the name says what saw it.
        Signal::Gateway => "gateway",
        Signal::Flow => "flow",
    };
    f.insert("evt.type".into(), json!(evt_type));
    put(
        &mut f,
        "fd.l4proto",
        alert.network.as_ref().map(|n| json!(n.transport.as_str())),
    );
    put(&mut f, "fd.lip", local.map(|l| json!(l.ip.to_string())));
    // Port 0: not known (a web log's client).
    put(
        &mut f,
        "fd.lport",
        local.filter(|l| l.port != 0).map(|l| json!(l.port)),
    );
    put(&mut f, "fd.rip", remote.map(|r| json!(r.ip.to_string())));
    put(
        &mut f,
        "fd.rport",
        remote.filter(|r| r.port != 0).map(|r| json!(r.port)),
    );
    put(&mut f, "fd.name", fd_name(alert).map(|n| json!(n)));
    if let Some(d) = &alert.dns {
        // Not Falco fields (Falco has no DNS ones): torsensor's, named as
        // ECS names them.
        f.insert("dns.question.name".into(), json!(d.question.name));
        f.insert("dns.question.type".into(), json!(d.question.kind));
    }
    if let Some(d) = &alert.torsensor.dns
        && let Some(r) = &d.resolver
    {
        f.insert("torsensor.dns.resolver".into(), json!(r));
    }
    let env = alert.process.as_ref().map(|p| &p.env_vars);
    put(
        &mut f,
        "proc.env",
        env.filter(|e| !e.is_empty()).map(|e| json!(e.join(" "))),
    );
    put(&mut f, "proc.name", actor.name.map(|v| json!(v)));
    put(&mut f, "proc.pid", actor.pid.map(|v| json!(v)));
    let process = alert.process.as_ref();
    put(&mut f, "thread.tid", process.map(|p| json!(p.thread.id)));
    put(
        &mut f,
        "proc.ppid",
        process
            .and_then(|p| p.parent.as_ref())
            .map(|pp| json!(pp.pid)),
    );
    put(
        &mut f,
        "proc.pname",
        process
            .and_then(|p| p.parent.as_ref())
            .and_then(|pp| pp.name.as_ref())
            .map(|n| json!(n)),
    );
    put(&mut f, "proc.exepath", actor.exe.map(|v| json!(v)));
    put(
        &mut f,
        "proc.cmdline",
        actor.cmdline.as_ref().map(|v| json!(v)),
    );
    put(&mut f, "user.name", actor.user_name.map(|v| json!(v)));
    put(&mut f, "user.uid", actor.uid.map(|v| json!(v)));
    if let Some(c) = &alert.container {
        f.insert("container.id".into(), json!(actor.container_short_id));
        f.insert("container.full_id".into(), json!(c.id));
        put(
            &mut f,
            "container.type",
            c.runtime.map(|r| json!(r.as_str())),
        );
    }
    if let Some(o) = &alert.orchestrator {
        put(
            &mut f,
            "k8s.ns.name",
            o.namespace.as_ref().map(|v| json!(v)),
        );
        if o.resource.is_pod() {
            let r = &o.resource;
            put(&mut f, "k8s.pod.name", r.name.as_ref().map(|v| json!(v)));
            put(&mut f, "k8s.pod.uid", r.id.as_ref().map(|v| json!(v)));
        }
    }
    Value::Object(f)
}

fn ip_port_text(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V6(_) => format!("[{ip}]:{port}"),
        IpAddr::V4(_) => format!("{ip}:{port}"),
    }
}

fn socket_text(e: &Endpoint) -> String {
    ip_port_text(e.ip, e.port)
}

/// A flow's bytes each way (a gateway summary, an exported record).
fn bytes_out_in(alert: &Alert) -> Option<String> {
    let (s, d) = (alert.source?, alert.destination?);
    Some(format!("bytes_out={} bytes_in={}", s.bytes?, d.bytes?))
}

/// One human sentence, in Falco's `text (key=value ...)` style, naming only
/// what is known.
fn output(alert: &Alert, rule: &str, actor: &Actor<'_>) -> String {
    let mut parts = Vec::new();
    match alert.signal() {
        Signal::Connection => parts.extend(fd_name(alert).map(|n| format!("connection={n}"))),
        Signal::Listen => parts.extend(fd_name(alert).map(|n| format!("listen={n}"))),
        Signal::Gateway => {
            parts.extend(fd_name(alert).map(|n| format!("flow={n}")));
            if let Some(g) = &alert.torsensor.gateway {
                parts.push(format!("interface={} ({})", g.interface, g.side));
                parts.extend(g.end.map(|e| format!("end={}", e.as_str())));
            }
            parts.extend(bytes_out_in(alert));
        }
        Signal::Flow => {
            parts.extend(fd_name(alert).map(|n| format!("flow={n}")));
            if let Some(c) = &alert.torsensor.collector {
                parts.push(format!("exporter={} ({})", c.exporter, c.protocol));
            }
            parts.extend(bytes_out_in(alert));
        }
        Signal::Exec => {}
        Signal::Dns => {
            if let (Some(d), Some(server)) = (&alert.dns, alert.destination) {
                parts.push(format!(
                    "query={} type={} server={}",
                    d.question.name,
                    d.question.kind,
                    socket_text(&server)
                ));
            }
            if let Some(r) = alert
                .torsensor
                .dns
                .as_ref()
                .and_then(|d| d.resolver.as_ref())
            {
                parts.push(format!("via_resolver={r}"));
            }
        }
    }
    let known: [(&str, Option<String>); 8] = [
        ("process", actor.name.map(str::to_owned)),
        ("pid", actor.pid.map(|p| p.to_string())),
        ("exe", actor.exe.map(str::to_owned)),
        ("command", actor.cmdline.clone()),
        ("user", actor.user_name.map(str::to_owned)),
        ("uid", actor.uid.map(|u| u.to_string())),
        ("container", actor.container_short_id.map(str::to_owned)),
        ("pod_uid", actor.pod_uid.map(str::to_owned)),
    ];
    for (label, value) in known {
        if let Some(v) = value {
            parts.push(format!("{label}={v}"));
        }
    }
    let feeds = &alert.torsensor.feeds;
    if !feeds.is_empty() {
        parts.push(format!("feeds={}", feeds.join(",")));
    }
    if let Some(tor) = &alert.torsensor.tor
        && !tor.roles.is_empty()
    {
        let roles: Vec<&str> = tor.roles.iter().map(|r| r.as_str()).collect();
        parts.push(format!("tor_roles={}", roles.join(",")));
    }
    if let Some(b) = &alert.torsensor.block {
        let result = serde_json::to_value(b.result).unwrap_or_default();
        parts.push(format!("block={}", result.as_str().unwrap_or("unknown")));
    }
    if let Some(exec) = &alert.torsensor.exec {
        let reasons: Vec<String> = exec
            .reasons
            .iter()
            .map(|r| format!("{r:?}").to_lowercase())
            .collect();
        parts.push(format!("reasons={}", reasons.join(",")));
    }
    let what = match (alert.peer(), alert.server) {
        (Some(peer), _) if alert.is_egress() => format!("to {}", peer.ip),
        (Some(peer), _) => format!("from {}", peer.ip),
        (None, Some(server)) => format!("on {}", socket_text(&server)),
        (None, None) => format!("program {}", actor.exe.or(actor.name).unwrap_or("unknown")),
    };
    format!("{rule} ({what}) ({})", parts.join(" "))
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
        let rules = crate::alert::rules::Rules::builtin().unwrap();
        for rule in &rules.list {
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
}
