//! The pipeline without a kernel, root or `/proc`: recorded kernel events
//! (`tests/recordings/*.jsonl`, one decoded `ConnEvent` per line) go through
//! decoding, enrichment from recorded process and container answers, the
//! alert model, aggregation and the three renderers, and the results are
//! compared with the golden files and with the connection counts.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use sensor_daemon::alert::aggregate::Aggregator;
use sensor_daemon::alert::model::{Attribution, BlockResult};
use sensor_daemon::alert::rules::Rules;
use sensor_daemon::alert::rules::block::BlockMode;
use sensor_daemon::alert::{Alert, SensorIdentity, ecs, falco, ocsf};
use sensor_daemon::enrich::ProcessInfo;
use sensor_daemon::enrich::container::{ContainerInfo, Qos, Runtime};
use sensor_daemon::feed::parse::{ExitInfo, Relay};
use sensor_daemon::feed::{Feed, FeedSet, Origin, ParsedFeed};
use sensor_daemon::kernel::event::{BootClock, KernelProcess};
use sensor_daemon::net::Direction;
use sensor_daemon::pipeline::replay::{self, Flag, Line, Matched, Record};
use sensor_daemon::pipeline::{Pipeline, ProcessSource};
use sensor_daemon::time::Timestamp;

fn dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join(name)
}

fn time(text: &str) -> SystemTime {
    humantime::parse_rfc3339(text).unwrap()
}

fn relay(fingerprint: &str, nickname: Option<&str>) -> Relay {
    Relay {
        fingerprint: fingerprint.into(),
        nickname: nickname.map(Into::into),
        flags: Vec::new(),
        last_seen: None,
    }
}

/// The feeds the golden alerts were written against: `tor-exits` (fetched)
/// and `tor-relays` (from the cache).
fn feeds() -> FeedSet {
    let mut exits = ParsedFeed {
        version: Some(time("2026-11-24T09:40:00Z")),
        relays: vec![
            relay("0011BD2485AD45D984EC4159C88FC066E5E3300E", Some("labExit")),
            relay("B2B2B2B2B2B2B2B2B2B2B2B2B2B2B2B2B2B2B2B2", None),
        ],
        ..ParsedFeed::default()
    };
    for (net, index, seen) in [
        ("198.51.100.7/32", 0, "2026-11-24T09:31:07Z"),
        ("2001:db8:7::/48", 1, "2026-11-24T09:12:44Z"),
    ] {
        let info = ExitInfo {
            relays: vec![index],
            relay_seen: vec![Some(time(seen))],
            last_seen: Some(time(seen)),
        };
        exits.exits.insert(net.parse().unwrap(), info);
    }
    let relays = ParsedFeed {
        version: Some(time("2026-11-24T09:00:00Z")),
        relays: vec![relay(
            "A1A1A1A1A1A1A1A1A1A1A1A1A1A1A1A1A1A1A1A1",
            Some("labGuard"),
        )],
        or_ports: BTreeMap::from([("198.51.100.7:9001".parse().unwrap(), vec![0])]),
        ..ParsedFeed::default()
    };
    let feed = |name: &str, origin, data| {
        Arc::new(Feed {
            name: name.into(),
            location: format!("https://mirror.example/{name}"),
            origin,
            fetched: None,
            data,
        })
    };
    FeedSet::new(vec![
        feed("tor-exits", Origin::Network, exits),
        feed("tor-relays", Origin::Cache, relays),
        Arc::new(Feed::socks_ports(&["127.0.0.1:9050".parse().unwrap()])),
    ])
    .unwrap()
}

/// What `/proc` and the cgroups said about the recorded processes.
#[derive(Default)]
struct Recorded {
    processes: HashMap<u32, ProcessInfo>,
    containers: HashMap<u64, ContainerInfo>,
    /// `/proc/PID/environ`, whole.
    environments: HashMap<u32, Vec<String>>,
}

impl ProcessSource for Recorded {
    fn process(&mut self, p: &KernelProcess) -> ProcessInfo {
        match self.processes.get(&p.tgid) {
            Some(known) => ProcessInfo {
                tid: p.tid,
                thread_name: p.comm.clone(),
                gid: p.gid,
                cgroup_id: p.cgroup_id,
                ..known.clone()
            },
            None => ProcessInfo::from_kernel(p),
        }
    }

    fn container(&mut self, p: &KernelProcess) -> Option<ContainerInfo> {
        self.containers.get(&p.cgroup_id).cloned()
    }

    fn environment(&mut self, pid: u32, prefix: &str) -> Option<Vec<String>> {
        let env = self.environments.get(&pid)?;
        Some(
            env.iter()
                .filter(|v| v.starts_with(prefix))
                .cloned()
                .collect(),
        )
    }
}

fn recorded() -> Recorded {
    let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let tor = ProcessInfo {
        pid: 4242,
        name: "tor".into(),
        executable: Some("/usr/bin/tor".into()),
        command_line: Some("/usr/bin/tor -f /etc/tor/torrc".into()),
        args: args(&["/usr/bin/tor", "-f", "/etc/tor/torrc"]),
        ppid: Some(1),
        uid: 107,
        user_name: Some("debian-tor".into()),
        start_time: Some(time("2024-11-24T20:55:01.370000000Z")),
        ..ProcessInfo::default()
    };
    let nginx = ProcessInfo {
        pid: 31337,
        name: "nginx".into(),
        executable: Some("/usr/sbin/nginx".into()),
        command_line: Some("nginx: worker process".into()),
        args: args(&["nginx: worker process"]),
        ppid: Some(1),
        uid: 101,
        user_name: Some("nginx".into()),
        ..ProcessInfo::default()
    };
    // A program using tor's SOCKS port (through torsocks), started from a
    // shell.
    let curl = ProcessInfo {
        pid: 5555,
        name: "curl".into(),
        executable: Some("/usr/bin/curl".into()),
        command_line: Some("curl --socks5-hostname 127.0.0.1:9050 https://example.onion/".into()),
        args: args(&[
            "curl",
            "--socks5-hostname",
            "127.0.0.1:9050",
            "https://example.onion/",
        ]),
        ppid: Some(5000),
        parent_name: Some("bash".into()),
        uid: 1000,
        user_name: Some("alice".into()),
        ..ProcessInfo::default()
    };
    let container = ContainerInfo {
        id: "3f4e5d6c7b8a99887766554433221100ffeeddccbbaa00112233445566778899".into(),
        runtime: Some(Runtime::Containerd),
        pod_uid: Some("7c1d2e3f-4a5b-4c6d-8e9f-0a1b2c3d4e5f".into()),
        qos: Some(Qos::Burstable),
        cgroup_path: "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod7c1d2e3f_4a5b_4c6d_8e9f_0a1b2c3d4e5f.slice/cri-containerd-3f4e5d6c7b8a99887766554433221100ffeeddccbbaa00112233445566778899.scope".into(),
        ..ContainerInfo::default()
    };
    // A pluggable transport tor started, renamed (an obfs4 client). Its
    // pid is its own: the blocking cases' unknown process is 6001.
    let transport = ProcessInfo {
        pid: 7007,
        name: "notor".into(),
        executable: Some("/opt/pt/notor".into()),
        command_line: Some("/opt/pt/notor".into()),
        args: args(&["/opt/pt/notor"]),
        ppid: Some(4242),
        parent_name: Some("tor".into()),
        uid: 107,
        user_name: Some("debian-tor".into()),
        ..ProcessInfo::default()
    };
    let environment = [
        "HOME=/var/lib/tor",
        "TOR_PT_MANAGED_TRANSPORT_VER=1",
        "TOR_PT_STATE_LOCATION=/var/lib/tor/pt_state/",
        "TOR_PT_EXIT_ON_STDIN_CLOSE=1",
        "TOR_PT_CLIENT_TRANSPORTS=obfs4",
    ];
    Recorded {
        processes: HashMap::from([(4242, tor), (31337, nginx), (5555, curl), (7007, transport)]),
        containers: HashMap::from([(88123, container)]),
        environments: HashMap::from([(7007, environment.map(String::from).to_vec())]),
    }
}

/// The built-in rules, with TORSENSOR-001's description as it read when
/// the golden files were written.
fn rules() -> Rules {
    let mut rules = Rules::builtin().unwrap();
    rules
        .list
        .iter_mut()
        .find(|r| r.id == "TORSENSOR-001")
        .unwrap()
        .description = "A local process connected to an address listed by a Tor feed: usually a Tor client or relay on this host (or malware tunnelling through Tor). Check the process and why it talks to Tor.".into();
    rules
}

fn pipeline(window: Duration) -> Pipeline<Recorded> {
    Pipeline::new(
        feeds(),
        rules(),
        SensorIdentity {
            host_name: "node-7.example.internal".into(),
            version: "0.1.0",
        },
        BootClock::at(UNIX_EPOCH),
        recorded(),
        Aggregator::new(window, 10_000),
    )
}

fn golden(name: &str) -> String {
    let path = dir("golden").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap() + "\n"
}

#[test]
fn recorded_events_give_the_golden_alerts() {
    let text = std::fs::read_to_string(dir("recordings").join("golden_cases.jsonl")).unwrap();
    let records = replay::parse_lines(&text).unwrap();
    let cases = [
        ("egress_ipv4_host", Some(Attribution::Connect)),
        ("ingress_ipv6_container", Some(Attribution::FirstUse)),
        ("egress_audit_failed_no_process", Some(Attribution::None)),
        ("egress_socks_local", Some(Attribution::Connect)),
        ("egress_blocked", Some(Attribution::Connect)),
        ("ingress_blocked_no_process", Some(Attribution::None)),
        ("exec_tor_by_name", None),
        ("exec_transport_by_environment", None),
        ("listen_socks_port", Some(Attribution::Listen)),
    ];
    assert_eq!(records.len(), cases.len());
    let update = std::env::var("UPDATE_GOLDEN").is_ok_and(|v| v == "1");
    let mut pipeline = pipeline(Duration::ZERO);
    let created = time("2024-11-24T21:00:00.131072000Z");
    for (line, (case, attribution)) in records.iter().zip(cases) {
        let mut alert = match line {
            Line::Conn(record) => {
                let ev = record.to_event(&pipeline.clock()).unwrap();
                pipeline.alert(&ev, false, created).unwrap()
            }
            Line::Exec(record) => {
                let ev = record.to_event(&pipeline.clock()).unwrap();
                pipeline.exec_alert(&ev, created).unwrap().unwrap()
            }
        };
        // The golden files predate `torsensor.attribution`.
        assert_eq!(alert.torsensor.attribution, attribution, "{case}");
        alert.torsensor.attribution = None;
        // A new case: its input for tests/format.rs (the alert as the model
        // serializes it, before enrichment adds the Community ID).
        let input = dir("golden").join(format!("{case}.ecs.json"));
        if update && !input.exists() {
            std::fs::write(&input, pretty(&serde_json::to_value(&alert).unwrap())).unwrap();
        }
        for (suffix, rendered) in [
            ("enriched", ecs::render(&alert)),
            ("ocsf", ocsf::render(&alert)),
            ("falco", falco::render(&alert)),
        ] {
            let name = format!("{case}.{suffix}.json");
            let got = pretty(&rendered);
            if update {
                std::fs::write(dir("golden").join(&name), &got).unwrap();
            }
            assert!(
                got == golden(&name),
                "{name} differs from the replayed alert:\n{got}"
            );
        }
    }
}

/// A record of `tor` (pid 4242) connecting to 198.51.100.7:`port` at
/// `secs` seconds past 21:00, from local port `sport`.
fn tor_connect(secs: u64, port: u16, sport: u16) -> Record {
    let matched = if port == 9001 {
        Matched {
            exit_feeds: 1,
            relay_feeds: 2,
        }
    } else {
        Matched {
            exit_feeds: 1,
            relay_feeds: 0,
        }
    };
    Record {
        time: Timestamp(time("2024-11-24T21:00:00Z") + Duration::from_secs(secs)),
        direction: Direction::Egress,
        local: format!("192.0.2.10:{sport}").parse().unwrap(),
        remote: format!("198.51.100.7:{port}").parse().unwrap(),
        flags: Vec::new(),
        matched,
        tgid: 4242,
        pid: 4243,
        uid: 107,
        gid: 107,
        comm: "tor".into(),
        cgroup_id: 5521,
        incomplete: false,
    }
}

#[test]
fn a_replayed_burst_is_aggregated_and_the_counts_add_up() {
    let mut records: Vec<Record> = (0..6)
        .map(|i| tor_connect(i * 5, 9001, 40000 + i as u16))
        .collect();
    records.push(tor_connect(7, 443, 41000));
    let mut audit = tor_connect(8, 80, 42000);
    audit.flags = vec![Flag::Audit];
    audit.matched = Matched::default();
    records.push(audit);
    // 70 s later: the first window (60 s) has ended before this one.
    records.push(tor_connect(70, 9001, 43000));
    records.sort_by_key(|r| r.time);

    let alerts = replay::run(&mut pipeline(Duration::from_secs(60)), &records, None).unwrap();
    let summary = |a: &Alert| a.torsensor.summary;
    let line: Vec<(u16, Option<u64>, bool)> = alerts
        .iter()
        .map(|a| (a.destination.unwrap().port, a.torsensor.count, summary(a)))
        .collect();
    assert_eq!(
        line,
        [
            (9001, Some(1), false), // first of the burst, at once
            (443, Some(1), false),  // another service port, another group
            (80, None, false),      // audit events are not aggregated
            (9001, Some(5), true),  // the burst's repeats, when the window ended
            (9001, Some(1), false), // a new window
        ]
    );
    let repeats = &alerts[3];
    assert_eq!(
        repeats.source.unwrap().port,
        40005,
        "the summary is the latest repeat"
    );
    assert_eq!(
        repeats.torsensor.first_seen.unwrap().to_string(),
        "2024-11-24T21:00:05.000000000Z"
    );
    assert_eq!(Some(repeats.timestamp), repeats.torsensor.last_seen);
    let connections: u64 = alerts
        .iter()
        .filter(|a| !a.torsensor.audit)
        .map(|a| a.torsensor.count.unwrap())
        .sum();
    assert_eq!(connections, records.len() as u64 - 1);
    // Every alert renders in every format, with the counts in each.
    for a in &alerts {
        let count = a.torsensor.count.map(Value::from);
        assert_eq!(ecs::render(a)["torsensor"].get("count").cloned(), count);
        let unmapped = &ocsf::render(a)["unmapped"]["torsensor"];
        assert_eq!(unmapped.get("count").cloned(), count);
        assert_eq!(falco::render(a)["output_fields"]["fd.rip"], "198.51.100.7");
    }
}

#[test]
fn an_unknown_process_is_named_by_the_kernel() {
    let mut record = tor_connect(0, 443, 41000);
    record.tgid = 999;
    record.comm = "short-lived".into();
    let alerts = replay::run(&mut pipeline(Duration::ZERO), &[record], None).unwrap();
    let process = alerts[0].process.as_ref().unwrap();
    assert_eq!((process.pid, process.name.as_str()), (999, "short-lived"));
    assert_eq!(process.thread.name, "short-lived");
    assert_eq!(process.executable, None);
}

/// What a block rule makes of a hit in each mode, and a connection the
/// kernel refused that no block rule holds for any more (rules changed):
/// still reported.
#[test]
fn a_block_rule_decides_by_mode_and_a_refused_connection_is_always_reported() {
    let block_rule = "[[rule]]\nid = \"LOCAL-BLOCK\"\nname = \"block\"\ndescription = \"d\"\nseverity = 73\npriority = \"Warning\"\naction = \"block\"\nwhen = { direction = \"egress\", user = [\"107\"] }\n";
    let with_block = |mode: BlockMode| {
        let mut p = pipeline(Duration::ZERO);
        let mut rules = rules();
        rules.add_file("b.toml", block_rule, false).unwrap();
        p.set_rules(rules);
        p.set_block_mode(mode);
        p
    };
    let hit = tor_connect(0, 9001, 40000);
    let outcome = |mode| {
        let a = replay::run(&mut with_block(mode), std::slice::from_ref(&hit), None).unwrap();
        let a = &a[0];
        (
            a.rule.as_ref().unwrap().id.clone(),
            a.event.action.clone(),
            a.torsensor.block.map(|b| b.result),
        )
    };
    let id = || "LOCAL-BLOCK".to_owned();
    assert_eq!(
        outcome(BlockMode::Off),
        (id(), "tor-connection-outbound".into(), None)
    );
    assert_eq!(
        outcome(BlockMode::DryRun),
        (
            id(),
            "tor-connection-outbound-would-block".into(),
            Some(BlockResult::WouldBlock)
        )
    );
    assert_eq!(
        outcome(BlockMode::Enforce),
        (
            id(),
            "tor-connection-outbound".into(),
            Some(BlockResult::NotBlocked)
        )
    );
    let mut p = with_block(BlockMode::Enforce);
    let mut refused = tor_connect(1, 9001, 0);
    refused.flags = vec![Flag::Blocked];
    let a = replay::run(&mut p, &[refused.clone()], None).unwrap();
    assert_eq!(a[0].event.action, "tor-connection-outbound-blocked");
    assert_eq!(p.rule_counts().rules["LOCAL-BLOCK"].blocked, 1);
    // Another process and user: no block rule holds, the shipped rule
    // reports it.
    (refused.tgid, refused.pid, refused.uid) = (999, 999, 1000);
    let a = replay::run(&mut p, &[refused], None).unwrap();
    assert_eq!(a.len(), 1, "a refused connection is never dropped");
    assert_eq!(a[0].rule.as_ref().unwrap().id, "TORSENSOR-001");
    assert_eq!(
        a[0].torsensor.block.map(|b| b.result),
        Some(BlockResult::Blocked)
    );
}
