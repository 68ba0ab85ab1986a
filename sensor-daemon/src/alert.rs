//! Alerts: a connection, its process and what matched, as one ECS document.
//!
//! Field names follow the Elastic Common Schema; what ECS does not define
//! lives under `torsensor.*`.

use std::time::SystemTime;

use serde_json::{Map, Value, json};

use crate::enrich::ProcessInfo;
use crate::event::{Connection, Direction};
use crate::feed::{FeedMatch, Role};
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

/// RFC 3339 UTC with nanoseconds (event times).
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_nanos(t).to_string()
}

/// RFC 3339 UTC in whole seconds (feed versions, fetch times).
pub fn rfc3339_secs(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// At most this many relays are listed in one alert (an address can be
/// shared by dozens); `torsensor.tor.relay_count` has the full number.
const MAX_RELAYS_LISTED: usize = 16;

/// The roles in a match, strongest first, without repeats.
pub fn roles_of(matches: &[FeedMatch<'_>]) -> Vec<Role> {
    let mut roles: Vec<Role> = matches.iter().map(|m| m.role).collect();
    roles.sort_by_key(|r| std::cmp::Reverse(*r));
    roles.dedup();
    roles
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
    /// What matched, per feed and role (empty for an audit-only event).
    pub matches: &'a [FeedMatch<'a>],
    pub sensor: &'a SensorIdentity,
}

/// Builds the ECS document for one connection.
pub fn ecs(input: &AlertInput<'_>) -> Value {
    let AlertInput {
        conn,
        process,
        rule,
        matches,
        sensor,
    } = input;
    let (source, destination) = conn.source_destination();
    let is_v4 = conn.remote.is_ipv4();
    let remote_ip = conn.remote.ip().to_string();
    let matched_field = match conn.direction {
        Direction::Egress => "destination.ip",
        Direction::Ingress => "source.ip",
    };
    let mut feed_names: Vec<&str> = matches.iter().map(|m| m.feed.name.as_str()).collect();
    feed_names.dedup();
    let roles = roles_of(matches);
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
        put(&mut proc, "start", p.start_time.map(rfc3339));
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
        let enrichments: Vec<Value> = matches
            .iter()
            .map(|m| {
                let mut indicator = Map::new();
                indicator.insert("ip".into(), json!(remote_ip));
                put(&mut indicator, "port", m.or_port);
                indicator.insert(
                    "type".into(),
                    json!(if is_v4 { "ipv4-addr" } else { "ipv6-addr" }),
                );
                indicator.insert("provider".into(), json!(m.feed.name));
                indicator.insert(
                    "description".into(),
                    json!(match m.role {
                        Role::Relay => "Tor relay OR address and ORPort",
                        Role::Exit => "Tor exit address",
                    }),
                );
                put(
                    &mut indicator,
                    "last_seen",
                    m.exit_last_seen.map(rfc3339_secs),
                );
                put(
                    &mut indicator,
                    "modified_at",
                    m.feed.data.version.map(rfc3339_secs),
                );
                json!({
                    "indicator": indicator,
                    "matched": {
                        "atomic": remote_ip,
                        "field": matched_field,
                        "type": "indicator_match_rule",
                    },
                    "feed": {"name": m.feed.name},
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
    if !matches.is_empty() {
        ts.insert("tor".into(), tor_details(matches, &roles));
        let feeds: Vec<Value> = matches
            .iter()
            .map(|m| {
                let mut f = Map::new();
                f.insert("name".into(), json!(m.feed.name));
                f.insert("role".into(), json!(m.role.as_str()));
                f.insert("prefix".into(), json!(m.prefix.to_string()));
                put(&mut f, "version", m.feed.data.version.map(rfc3339_secs));
                f.insert("origin".into(), json!(m.feed.origin.to_string()));
                Value::Object(f)
            })
            .collect();
        ts.insert("matches".into(), json!(feeds));
    }
    ts.insert("v4_mapped".into(), json!(conn.v4_mapped));
    ts.insert("audit".into(), json!(conn.audit));
    if conn.incomplete {
        ts.insert("incomplete".into(), json!(true));
    }
    // How the process was found: the caller of connect(); for an accepted
    // connection, the first process that read, wrote, shut down or closed
    // it; or none (an inbound connection that ended, or that nobody used
    // within `inbound_wait`).
    let attribution = match (process.is_some(), conn.direction) {
        (false, _) => "none",
        (true, crate::event::Direction::Egress) => "connect",
        (true, crate::event::Direction::Ingress) => "first-use",
    };
    ts.insert("attribution".into(), json!(attribution));
    if let Some(p) = process {
        ts.insert("cgroup_id".into(), json!(p.cgroup_id));
    } else {
        ts.insert("process_unknown".into(), json!(true));
    }
    doc["torsensor"] = Value::Object(ts);
    doc
}

/// `torsensor.tor`: roles, confidence, the relays behind the address.
fn tor_details(matches: &[FeedMatch<'_>], roles: &[Role]) -> Value {
    let mut relays: Vec<(&str, Option<&str>)> = matches
        .iter()
        .flat_map(|m| m.relays.iter())
        .map(|r| (r.fingerprint.as_str(), r.nickname.as_deref()))
        .collect();
    relays.sort();
    relays.dedup();
    let listed: Vec<Value> = relays
        .iter()
        .take(MAX_RELAYS_LISTED)
        .map(|(fp, nick)| {
            let mut r = Map::new();
            r.insert("fingerprint".into(), json!(fp));
            put(&mut r, "nickname", *nick);
            Value::Object(r)
        })
        .collect();
    let mut tor = Map::new();
    tor.insert(
        "roles".into(),
        json!(roles.iter().map(|r| r.as_str()).collect::<Vec<_>>()),
    );
    tor.insert(
        "confidence".into(),
        json!(if roles.contains(&Role::Relay) {
            "high"
        } else {
            "medium"
        }),
    );
    put(&mut tor, "or_port", matches.iter().find_map(|m| m.or_port));
    put(
        &mut tor,
        "exit_last_seen",
        matches
            .iter()
            .filter_map(|m| m.exit_last_seen)
            .max()
            .map(rfc3339_secs),
    );
    tor.insert("relay_count".into(), json!(relays.len()));
    if !listed.is_empty() {
        tor.insert("relays".into(), json!(listed));
    }
    Value::Object(tor)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::KernelProcess;
    use crate::feed::{Feed, FeedSet, Origin, parse::parse};
    use crate::rules::Rules;
    use sensor_common::MatchInfo;
    use std::sync::Arc;
    use std::time::{Duration, UNIX_EPOCH};

    fn lab_feeds() -> FeedSet {
        let exits = "ExitNode AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\nPublished 2023-11-14 20:00:00\nLastStatus 2023-11-14 21:00:00\nExitAddress 198.51.100.7 2023-11-14 21:05:00\n";
        let relays = r#"{"relays_published":"2023-11-14 21:00:00","relays":[
            {"nickname":"labGuard","fingerprint":"BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB","or_addresses":["198.51.100.7:443"]},
            {"nickname":"labGuard2","fingerprint":"CCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCC","or_addresses":["198.51.100.7:443"]}]}"#;
        let feed = |name: &str, text: &str| {
            Arc::new(Feed {
                name: name.into(),
                location: format!("https://mirror.example/{name}"),
                origin: Origin::Network,
                fetched: None,
                data: parse(text.as_bytes(), None, true).unwrap(),
            })
        };
        FeedSet::new(vec![feed("lab-exits", exits), feed("lab-relays", relays)]).unwrap()
    }

    fn fixture(direction: Direction) -> (Connection, ProcessInfo, FeedSet) {
        let feeds = lab_feeds();
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
            matched: MatchInfo::NONE,
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
            start_time: Some(UNIX_EPOCH + Duration::from_secs(1_699_990_000)),
        };
        (conn, process, feeds)
    }

    fn render(direction: Direction) -> Value {
        let (conn, process, feeds) = fixture(direction);
        let rules = Rules::builtin().unwrap();
        let matched = feeds
            .classify(conn.remote.ip(), conn.remote.port(), direction)
            .unwrap();
        let matches = feeds.explain(conn.remote.ip(), conn.remote.port(), matched);
        let sensor = SensorIdentity {
            host_name: "h1".into(),
            version: "0.1.0",
        };
        ecs(&AlertInput {
            conn: &conn,
            process: Some(&process),
            rule: rules.for_match(direction, &roles_of(&matches)),
            matches: &matches,
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
        assert_eq!(doc["process"]["start"], "2023-11-14T19:26:40.000000000Z");
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
        assert_eq!(doc["threat"]["feed"]["name"], "lab-exits");
        assert_eq!(doc["rule"]["id"], "TORSENSOR-001");
        assert_eq!(doc["rule"]["name"], "Outbound connection to a Tor relay");
        // Port 443 is the relays' ORPort and the address is also an exit.
        let tor = &doc["torsensor"]["tor"];
        assert_eq!(tor["roles"], json!(["relay", "exit"]));
        assert_eq!(tor["confidence"], "high");
        assert_eq!(tor["or_port"], 443);
        assert_eq!(tor["exit_last_seen"], "2023-11-14T21:05:00Z");
        assert_eq!(tor["relay_count"], 3);
        assert_eq!(
            tor["relays"][1],
            json!({"fingerprint": "BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB", "nickname": "labGuard"})
        );
        assert_eq!(
            doc["torsensor"]["feeds"],
            json!(["lab-exits", "lab-relays"])
        );
        let m = &doc["torsensor"]["matches"];
        assert_eq!(m[0]["role"], "exit");
        assert_eq!(m[0]["version"], "2023-11-14T21:05:00Z");
        assert_eq!(m[0]["prefix"], "198.51.100.7/32");
        assert_eq!(m[1]["role"], "relay");
        assert_eq!(m[1]["version"], "2023-11-14T21:00:00Z");
        assert_eq!(doc["threat"]["enrichments"][1]["indicator"]["port"], 443);
        assert_eq!(
            doc["threat"]["enrichments"][0]["indicator"]["last_seen"],
            "2023-11-14T21:05:00Z"
        );
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
        // Inbound, only the exit role counts.
        assert_eq!(doc["torsensor"]["tor"]["roles"], json!(["exit"]));
        assert_eq!(doc["torsensor"]["tor"]["confidence"], "medium");
        assert_eq!(doc["threat"]["enrichments"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn an_alert_is_one_json_line() {
        let line = serde_json::to_string(&render(Direction::Egress)).unwrap();
        assert!(!line.contains('\n'));
        let back: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(back["event"]["kind"], "alert");
    }
}
