//! Alerts: a connection, its process and what matched, as one ECS document.
//!
//! Field names follow the Elastic Common Schema; what ECS does not define
//! lives under `torsensor.*`.

use std::time::SystemTime;

use sensor_common::{ROLE_EXIT, ROLE_RELAY};
use serde_json::{Map, Value, json};

use crate::enrich::ProcessInfo;
use crate::event::{Connection, Direction};
use crate::feed::{FeedSet, Listing};
use crate::rules::Rule;

/// The sensor's identity, stamped on every alert.
#[derive(Debug, Clone)]
pub struct SensorIdentity {
    pub host_name: String,
    pub version: &'static str,
}

impl SensorIdentity {
    pub fn local() -> Self {
        SensorIdentity {
            host_name: crate::enrich::hostname(),
            version: env!("CARGO_PKG_VERSION"),
        }
    }
}

/// RFC 3339 UTC with nanoseconds.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_nanos(t).to_string()
}

fn role_names(roles: u32) -> Vec<&'static str> {
    let mut names = Vec::new();
    if roles & ROLE_EXIT != 0 {
        names.push("exit");
    }
    if roles & ROLE_RELAY != 0 {
        names.push("relay");
    }
    names
}

/// Inserts `key: value` unless the value is absent.
fn put<T: Into<Value>>(map: &mut Map<String, Value>, key: &str, value: Option<T>) {
    if let Some(v) = value {
        map.insert(key.to_owned(), v.into());
    }
}

/// Everything needed to write one alert.
pub struct AlertInput<'a> {
    pub conn: &'a Connection,
    pub process: Option<&'a ProcessInfo>,
    pub rule: &'a Rule,
    pub listing: Option<&'a Listing>,
    pub feeds: &'a FeedSet,
    pub sensor: &'a SensorIdentity,
}

/// Builds the ECS document for one connection.
pub fn ecs(input: &AlertInput<'_>) -> Value {
    let AlertInput {
        conn,
        process,
        rule,
        listing,
        feeds,
        sensor,
    } = input;
    let (source, destination) = conn.source_destination();
    let is_v4 = conn.remote.is_ipv4();
    let remote_ip = conn.remote.ip().to_string();
    let matched_field = match conn.direction {
        Direction::Egress => "destination.ip",
        Direction::Ingress => "source.ip",
    };
    let feed_names = feeds.feed_names(conn.matched.feeds);
    let is_alert = !conn.audit;

    let mut event = json!({
        "kind": if is_alert { "alert" } else { "event" },
        "category": if is_alert { json!(["network", "intrusion_detection"]) } else { json!(["network"]) },
        "type": ["connection", "allowed"],
        "action": match conn.direction {
            Direction::Egress => "tor-connection-outbound",
            Direction::Ingress => "tor-connection-inbound",
        },
        "outcome": if conn.failed { "failure" } else { "success" },
        "module": "torsensor",
        "dataset": "torsensor.alert",
        "created": rfc3339(SystemTime::now()),
    });
    if is_alert {
        event["severity"] = json!(rule.severity);
    }

    let mut doc = json!({
        "@timestamp": rfc3339(conn.time),
        "ecs": {"version": "8.11.0"},
        "event": event,
        "network": {
            "direction": conn.direction.as_str(),
            "transport": "tcp",
            "iana_number": "6",
            "type": if is_v4 { "ipv4" } else { "ipv6" },
        },
        "source": {"ip": source.ip().to_string(), "port": source.port()},
        "destination": {"ip": destination.ip().to_string(), "port": destination.port()},
        "host": {"name": sensor.host_name},
        "agent": {"type": "torsensor", "name": "torsensor", "version": sensor.version},
    });

    if let Some(p) = process {
        let mut proc = Map::new();
        proc.insert("pid".into(), json!(p.pid));
        proc.insert("name".into(), json!(p.name));
        proc.insert("thread".into(), json!({"id": p.tid, "name": p.thread_name}));
        put(&mut proc, "executable", p.executable.clone());
        put(&mut proc, "command_line", p.command_line.clone());
        if !p.args.is_empty() {
            proc.insert("args".into(), json!(p.args));
        }
        put(&mut proc, "parent", p.ppid.map(|pp| json!({"pid": pp})));
        doc["process"] = Value::Object(proc);
        let mut user = Map::new();
        user.insert("id".into(), json!(p.uid.to_string()));
        put(&mut user, "name", p.user_name.clone());
        doc["user"] = Value::Object(user);
        doc["group"] = json!({"id": p.gid.to_string()});
    }

    if is_alert {
        doc["rule"] = json!({
            "id": rule.id,
            "name": rule.name,
            "description": rule.description,
            "ruleset": "torsensor-builtin",
        });
        doc["tags"] = json!(rule.tags);
        let enrichments: Vec<Value> = feed_names
            .iter()
            .map(|feed| {
                json!({
                    "indicator": {
                        "ip": remote_ip,
                        "type": if is_v4 { "ipv4-addr" } else { "ipv6-addr" },
                        "provider": feed,
                    },
                    "matched": {
                        "atomic": remote_ip,
                        "field": matched_field,
                        "type": "indicator_match_rule",
                    },
                    "feed": {"name": feed},
                })
            })
            .collect();
        doc["threat"] = json!({
            "framework": "MITRE ATT&CK",
            "tactic": {"id": ["TA0011"], "name": ["Command and Control"]},
            "technique": {
                "id": ["T1090"],
                "name": ["Proxy"],
                "subtechnique": {"id": ["T1090.003"], "name": ["Multi-hop Proxy"]},
            },
            "feed": {"name": feed_names.first().copied().unwrap_or_default()},
            "enrichments": enrichments,
        });
    }

    let mut ts = Map::new();
    ts.insert("feeds".into(), json!(feed_names));
    ts.insert("roles".into(), json!(role_names(conn.matched.roles)));
    put(&mut ts, "prefix", listing.map(|l| l.prefix.to_string()));
    ts.insert("v4_mapped".into(), json!(conn.v4_mapped));
    ts.insert("audit".into(), json!(conn.audit));
    if conn.incomplete {
        ts.insert("incomplete".into(), json!(true));
    }
    if let Some(p) = process {
        ts.insert("cgroup_id".into(), json!(p.cgroup_id));
    } else {
        ts.insert("process_unknown".into(), json!(true));
    }
    doc["torsensor"] = Value::Object(ts);
    doc
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::KernelProcess;
    use crate::feed::Feed;
    use crate::rules::Rules;
    use sensor_common::MatchInfo;
    use std::time::{Duration, UNIX_EPOCH};

    fn fixture(direction: Direction) -> (Connection, ProcessInfo, FeedSet) {
        let feeds = FeedSet::new(vec![Feed::parse_plain(
            "lab-list",
            "lab.txt",
            "198.51.100.7\n",
            true,
        )])
        .unwrap();
        let (local, remote) = ("10.0.0.5:41000", "198.51.100.7:443");
        let conn = Connection {
            time: UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789),
            direction,
            local: local.parse().unwrap(),
            remote: remote.parse().unwrap(),
            v4_mapped: false,
            failed: false,
            audit: false,
            incomplete: false,
            matched: MatchInfo {
                feeds: 1,
                roles: ROLE_EXIT,
            },
            process: Some(KernelProcess {
                tgid: 100,
                tid: 101,
                uid: 1000,
                gid: 1000,
                comm: "curl".into(),
                cgroup_id: 9,
            }),
        };
        let process = ProcessInfo {
            pid: 100,
            tid: 101,
            name: "curl".into(),
            thread_name: "curl".into(),
            executable: Some("/usr/bin/curl".into()),
            command_line: Some("curl https://x".into()),
            args: vec!["curl".into(), "https://x".into()],
            ppid: Some(1),
            uid: 1000,
            gid: 1000,
            user_name: Some("alice".into()),
            cgroup_id: 9,
        };
        (conn, process, feeds)
    }

    fn render(direction: Direction) -> Value {
        let (conn, process, feeds) = fixture(direction);
        let rules = Rules::builtin().unwrap();
        let listing = feeds.lookup(conn.remote.ip());
        let sensor = SensorIdentity {
            host_name: "h1".into(),
            version: "0.1.0",
        };
        ecs(&AlertInput {
            conn: &conn,
            process: Some(&process),
            rule: rules.for_direction(direction),
            listing: listing.as_ref(),
            feeds: &feeds,
            sensor: &sensor,
        })
    }

    #[test]
    fn egress_alert_has_the_ecs_fields() {
        let doc = render(Direction::Egress);
        assert_eq!(doc["@timestamp"], "2023-11-14T22:13:20.123456789Z");
        assert_eq!(doc["event"]["kind"], "alert");
        assert_eq!(
            doc["event"]["category"],
            json!(["network", "intrusion_detection"])
        );
        assert_eq!(doc["event"]["type"], json!(["connection", "allowed"]));
        assert_eq!(doc["event"]["action"], "tor-connection-outbound");
        assert_eq!(doc["network"]["direction"], "egress");
        assert_eq!(doc["network"]["transport"], "tcp");
        assert_eq!(doc["network"]["type"], "ipv4");
        assert_eq!(doc["source"], json!({"ip": "10.0.0.5", "port": 41000}));
        assert_eq!(
            doc["destination"],
            json!({"ip": "198.51.100.7", "port": 443})
        );
        assert_eq!(doc["process"]["pid"], 100);
        assert_eq!(doc["process"]["name"], "curl");
        assert_eq!(doc["process"]["executable"], "/usr/bin/curl");
        assert_eq!(doc["process"]["command_line"], "curl https://x");
        assert_eq!(doc["process"]["parent"]["pid"], 1);
        assert_eq!(doc["user"]["id"], "1000");
        assert_eq!(doc["user"]["name"], "alice");
        assert_eq!(doc["host"]["name"], "h1");
        assert_eq!(
            doc["threat"]["enrichments"][0]["indicator"]["ip"],
            "198.51.100.7"
        );
        assert_eq!(
            doc["threat"]["enrichments"][0]["matched"]["field"],
            "destination.ip"
        );
        assert_eq!(doc["threat"]["feed"]["name"], "lab-list");
        assert_eq!(doc["rule"]["id"], "TORSENSOR-001");
        assert_eq!(doc["rule"]["name"], "Outbound connection to a Tor address");
        assert_eq!(doc["torsensor"]["prefix"], "198.51.100.7/32");
        assert_eq!(doc["torsensor"]["roles"], json!(["exit"]));
    }

    #[test]
    fn ingress_alert_puts_the_peer_in_source() {
        let doc = render(Direction::Ingress);
        assert_eq!(doc["network"]["direction"], "ingress");
        assert_eq!(doc["source"]["ip"], "198.51.100.7");
        assert_eq!(doc["destination"]["port"], 41000);
        assert_eq!(
            doc["threat"]["enrichments"][0]["matched"]["field"],
            "source.ip"
        );
        assert_eq!(doc["rule"]["id"], "TORSENSOR-002");
        assert_eq!(doc["event"]["action"], "tor-connection-inbound");
    }

    #[test]
    fn an_alert_is_one_json_line() {
        let line = serde_json::to_string(&render(Direction::Egress)).unwrap();
        assert!(!line.contains('\n'));
        let back: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(back["event"]["kind"], "alert");
    }
}
