//! The alert for one connection the kernel reported: the connection, its
//! process and container, what matched, and the rule, as an [`Alert`].

use std::time::SystemTime;

use super::model::{
    Agent, Alert, Attribution, BlockDetails, BlockResult, Confidence, Ecs, Endpoint, Enrichment,
    Event, EventCategory, EventKind, EventType, FeedName, Group, Host, IdsNames, Indicator,
    IndicatorType, IpFamily, MatchDetails, Matched, Network, Outcome, Parent, Process, RelayRef,
    Signal, Technique, Thread, Threat, TorDetails, Torsensor, Transport, User,
};
use crate::alert::rules::Rule;
use crate::alert::rules::block::BlockMode;
use crate::enrich::ProcessInfo;
use crate::enrich::container::ContainerInfo;
use crate::feed::{FeedMatch, Role};
use crate::kernel::event::Connection;
use crate::net::Direction;
use crate::time::{Timestamp, TimestampSecs};

/// ECS version the documents follow.
pub const ECS_VERSION: &str = "8.11.0";

/// The sensor's identity, stamped on every alert.
#[derive(Debug, Clone)]
pub struct SensorIdentity {
    pub host_name: String,
    pub version: &'static str,
}

impl SensorIdentity {
    pub fn local() -> Self {
        SensorIdentity {
            host_name: crate::sys::hostname(),
            version: env!("CARGO_PKG_VERSION"),
        }
    }
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

/// Everything needed to build one alert.
pub struct AlertInput<'a> {
    pub conn: &'a Connection,
    pub process: Option<&'a ProcessInfo>,
    pub container: Option<&'a ContainerInfo>,
    pub rule: &'a Rule,
    /// What matched, per feed and role (empty for an audit-only event).
    pub matches: &'a [FeedMatch<'a>],
    pub sensor: &'a SensorIdentity,
    /// When the alert is built (`event.created`).
    pub created: SystemTime,
}

/// Builds the alert for one connection, with `network.community_id` and,
/// when given, the container.
pub fn build(input: &AlertInput<'_>) -> Alert {
    let AlertInput {
        conn,
        process,
        container,
        rule,
        matches,
        sensor,
        created,
    } = input;
    let (source, destination) = conn.source_destination();
    let is_alert = !conn.audit;
    let mut feed_names: Vec<String> = matches.iter().map(|m| m.feed.name.clone()).collect();
    feed_names.dedup();
    let mut alert = Alert {
        timestamp: Timestamp(conn.time),
        ecs: Ecs {
            version: ECS_VERSION.into(),
        },
        event: event(conn, rule, *created),
        network: Some(Network {
            direction: Some(conn.direction.into()),
            transport: Transport::Tcp,
            iana_number: Transport::Tcp.iana_number(),
            family: if conn.remote.is_ipv4() {
                IpFamily::Ipv4
            } else {
                IpFamily::Ipv6
            },
            community_id: None,
            protocol: None,
            bytes: None,
            packets: None,
        }),
        source: Some(Endpoint::new(source)),
        destination: Some(Endpoint::new(destination)),
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
        rule: is_alert.then(|| rule.reference()),
        tags: is_alert.then(|| rule.tags.clone()),
        threat: is_alert.then(|| threat(conn, matches, feed_names.first())),
        dns: None,
        related: None,
        log: None,
        http: None,
        url: None,
        user_agent: None,
        torsensor: torsensor(conn, *process, matches, feed_names),
    };
    alert.add_community_id();
    if let Some(c) = container {
        alert.add_container(c);
    }
    alert
}

/// ECS `host.*`.
pub fn host(sensor: &SensorIdentity) -> Host {
    Host {
        name: sensor.host_name.clone(),
    }
}

/// ECS `agent.*`.
pub fn agent(sensor: &SensorIdentity) -> Agent {
    Agent {
        kind: "torsensor".into(),
        name: "torsensor".into(),
        version: sensor.version.into(),
    }
}

/// ECS `event.*`.
fn event(conn: &Connection, rule: &Rule, created: SystemTime) -> Event {
    let is_alert = !conn.audit;
    Event {
        kind: if is_alert {
            EventKind::Alert
        } else {
            EventKind::Event
        },
        category: if is_alert {
            vec![EventCategory::Network, EventCategory::IntrusionDetection]
        } else {
            vec![EventCategory::Network]
        },
        types: vec![
            EventType::Connection,
            if conn.blocked {
                EventType::Denied
            } else {
                EventType::Allowed
            },
        ],
        action: format!(
            "tor-connection-{}{}",
            match conn.direction {
                Direction::Egress => "outbound",
                Direction::Ingress => "inbound",
            },
            if conn.blocked { "-blocked" } else { "" }
        ),
        outcome: if conn.failed || conn.blocked {
            Outcome::Failure
        } else {
            Outcome::Success
        },
        module: "torsensor".into(),
        dataset: "torsensor.alert".into(),
        created: Timestamp(created),
        severity: is_alert.then_some(rule.severity),
        start: None,
        end: None,
        duration: None,
    }
}

/// ECS `process.*`. The name is `/proc`'s, else (the process is gone, or
/// `/proc` said nothing) the kernel's command name.
pub fn process_fields(p: &ProcessInfo) -> Process {
    let name = if p.name.is_empty() {
        p.thread_name.clone()
    } else {
        p.name.clone()
    };
    Process {
        pid: p.pid,
        name,
        thread: Thread {
            id: p.tid,
            name: p.thread_name.clone(),
        },
        executable: p.executable.clone(),
        command_line: p.command_line.clone(),
        args: p.args.clone(),
        parent: p.ppid.map(|pid| Parent {
            pid,
            name: p.parent_name.clone(),
        }),
        start: p.start_time.map(Timestamp),
        env_vars: Vec::new(),
    }
}

/// ECS `threat.*`: ATT&CK T1090.003 and one enrichment per match.
fn threat(conn: &Connection, matches: &[FeedMatch<'_>], first_feed: Option<&String>) -> Threat {
    let remote_ip = conn.remote.ip();
    let matched_field = match conn.direction {
        Direction::Egress => "destination.ip",
        Direction::Ingress => "source.ip",
    };
    let enrichments = matches
        .iter()
        .map(|m| Enrichment {
            indicator: Indicator {
                ip: remote_ip,
                port: m.or_port,
                kind: if remote_ip.is_ipv4() {
                    IndicatorType::Ipv4Addr
                } else {
                    IndicatorType::Ipv6Addr
                },
                provider: m.feed.name.clone(),
                description: match m.role {
                    Role::Relay => "Tor relay OR address and ORPort",
                    Role::Exit => "Tor exit address",
                    Role::Socks => "local Tor SOCKS port",
                }
                .into(),
                last_seen: m.exit_last_seen.map(TimestampSecs),
                modified_at: m.feed.data.version.map(TimestampSecs),
            },
            matched: Matched {
                atomic: remote_ip.to_string(),
                field: matched_field.into(),
                kind: "indicator_match_rule".into(),
            },
            feed: FeedName {
                name: m.feed.name.clone(),
            },
        })
        .collect();
    Threat {
        feed: Some(FeedName {
            name: first_feed.cloned().unwrap_or_default(),
        }),
        enrichments,
        ..multi_hop_proxy()
    }
}

/// ECS `threat.*` for ATT&CK T1090.003 (Proxy: Multi-hop Proxy, tactic
/// Command and Control), without a feed or enrichments.
pub fn multi_hop_proxy() -> Threat {
    let one = |s: &str| vec![s.to_owned()];
    Threat {
        framework: "MITRE ATT&CK".into(),
        tactic: IdsNames {
            id: one("TA0011"),
            name: one("Command and Control"),
        },
        technique: Technique {
            id: one("T1090"),
            name: one("Proxy"),
            subtechnique: IdsNames {
                id: one("T1090.003"),
                name: one("Multi-hop Proxy"),
            },
        },
        feed: None,
        enrichments: Vec::new(),
    }
}

/// `torsensor.*`.
fn torsensor(
    conn: &Connection,
    process: Option<&ProcessInfo>,
    matches: &[FeedMatch<'_>],
    feeds: Vec<String>,
) -> Torsensor {
    let matches_out = matches
        .iter()
        .map(|m| MatchDetails {
            name: m.feed.name.clone(),
            role: m.role,
            prefix: m.prefix.to_string(),
            version: m.feed.data.version.map(TimestampSecs),
            origin: m.feed.origin,
        })
        .collect();
    // How the process was found: the caller of connect(); for an accepted
    // connection, the first process that read, wrote, shut down or closed
    // it; or none (an inbound connection that ended, or that nobody used
    // within `inbound_wait`).
    let attribution = match (process.is_some(), conn.direction) {
        (false, _) => Attribution::None,
        (true, Direction::Egress) => Attribution::Connect,
        (true, Direction::Ingress) => Attribution::FirstUse,
    };
    Torsensor {
        signal: Signal::Connection,
        exec: None,
        listen: None,
        dns: None,
        gateway: None,
        collector: None,
        feeds,
        tor: (!matches.is_empty()).then(|| tor_details(matches)),
        matches: matches_out,
        v4_mapped: conn.v4_mapped,
        audit: conn.audit,
        incomplete: conn.incomplete,
        attribution: Some(attribution),
        cgroup_id: process.map(|p| p.cgroup_id),
        cgroup_path: None,
        process_unknown: process.is_none(),
        container: None,
        count: None,
        first_seen: None,
        last_seen: None,
        summary: false,
        block: conn.blocked.then_some(BlockDetails {
            mode: BlockMode::Enforce,
            result: BlockResult::Blocked,
        }),
        hunt: None,
    }
}

/// `torsensor.tor`: roles, confidence, the relays behind the address.
fn tor_details(matches: &[FeedMatch<'_>]) -> TorDetails {
    let roles = roles_of(matches);
    let mut relays: Vec<RelayRef> = matches
        .iter()
        .flat_map(|m| m.relays.iter())
        .map(|r| RelayRef {
            fingerprint: r.fingerprint.clone(),
            nickname: r.nickname.clone(),
        })
        .collect();
    relays.sort();
    relays.dedup();
    let mut flags: Vec<String> = matches
        .iter()
        .flat_map(|m| m.relays.iter())
        .flat_map(|r| r.flags.iter().cloned())
        .collect();
    flags.sort();
    flags.dedup();
    let relay_count = relays.len();
    relays.truncate(MAX_RELAYS_LISTED);
    TorDetails {
        confidence: if roles.contains(&Role::Relay) || roles.contains(&Role::Socks) {
            Confidence::High
        } else {
            Confidence::Medium
        },
        roles,
        or_port: matches.iter().find_map(|m| m.or_port),
        exit_last_seen: matches
            .iter()
            .filter_map(|m| m.exit_last_seen)
            .max()
            .map(TimestampSecs),
        flags,
        relay_count,
        relays,
        history: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::rules::Rules;
    use crate::feed::{Feed, FeedSet, Origin, parse::parse};
    use crate::kernel::event::KernelProcess;
    use sensor_common::MatchInfo;
    use serde_json::{Value, json};
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
            blocked: false,
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
            parent_name: None,
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
        crate::alert::ecs::render(&build(&AlertInput {
            conn: &conn,
            process: Some(&process),
            container: None,
            rule: rules.for_match(direction, &roles_of(&matches)),
            matches: &matches,
            sensor: &sensor,
            created: SystemTime::now(),
        }))
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

    #[test]
    fn process_name_falls_back_to_the_kernels_command_name() {
        // A short-lived process: gone from /proc when the alert is built,
        // only the kernel's fields are known.
        let (mut conn, _, _) = fixture(Direction::Egress);
        let kernel = KernelProcess {
            comm: "bash".into(),
            ..conn.process.clone().unwrap()
        };
        conn.process = Some(kernel.clone());
        let rules = Rules::builtin().unwrap();
        let sensor = SensorIdentity {
            host_name: "h1".into(),
            version: "0.1.0",
        };
        for info in [
            ProcessInfo::from_kernel(&kernel),
            ProcessInfo {
                name: String::new(),
                ..ProcessInfo::from_kernel(&kernel)
            },
        ] {
            let alert = build(&AlertInput {
                conn: &conn,
                process: Some(&info),
                container: None,
                rule: rules.get("TORSENSOR-003").unwrap(),
                matches: &[],
                sensor: &sensor,
                created: SystemTime::now(),
            });
            let process = alert.process.as_ref().unwrap();
            assert_eq!(process.name, "bash");
            assert_eq!(process.thread.name, "bash");
            assert_eq!(process.pid, 100);
            assert_eq!(process.executable, None);
            let doc = crate::alert::ecs::render(&alert);
            assert_eq!(doc["process"]["name"], "bash");
        }
    }
}
