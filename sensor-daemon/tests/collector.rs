//! The live flow collector (`[[collector]]`) on real exports: connections
//! made by `iperf3` between addresses of a loopback-only network namespace
//! (to a listed address and from it, big and small, and to an unlisted
//! one), recorded by `tcpdump`, and exported by `softflowd` as NetFlow v5,
//! v9 and IPFIX to a running sensor on loopback. The alerts must be the
//! capture's flows: each listed one once (both directions joined), with
//! the bytes `tshark` counts, and nothing for the unlisted one or (by
//! default) for the small ones. Needs root (namespaces, eBPF).

mod common;

use std::net::UdpSocket;
use std::time::Duration;

use common::capture::{Killed, LoNs, softflowd, tcpdump, tshark_ip_bytes};
use common::metrics::{endpoint, http_get, sample};
use common::{Sensor, kernel_tests_allowed, serial, temp_path};
use serde_json::Value;

const INSIDE: &str = "192.0.2.20";
const EXIT: &str = "198.51.100.27";
const UNLISTED: &str = "203.0.113.25";
const INSIDE6: &str = "2001:db8::20";
const EXIT6: &str = "2001:db8::27";
const FEED: &str = "198.51.100.27\n2001:db8::27\n";
/// Far above the 1 MiB threshold (iperf3 may reset its data connection
/// before the last of what it wrote left: what went over the wire is what
/// the capture has), and below it.
const BIG: &str = "8M";
const SMALL: &str = "20K";

/// `iperf3` in the namespace: a one-off server on `server:port`, and a
/// client from `client` sending `bytes`.
fn iperf(ns: &LoNs, client: &str, server: &str, port: u16, bytes: &str) {
    let six = if server.contains(':') { "-6" } else { "-4" };
    let _server = Killed(
        ns.cmd("iperf3")
            .args(["-s", "-1", six, "-B", server, "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("iperf3 -s"),
    );
    // The server is up when the client gets in.
    for attempt in 0.. {
        let out = ns
            .cmd("iperf3")
            .args([six, "-c", server, "-p", &port.to_string(), "-B", client])
            .args(["-n", bytes, "--connect-timeout", "1000"])
            .output()
            .unwrap();
        if out.status.success() {
            return;
        }
        assert!(
            attempt < 30,
            "iperf3 {client} -> {server}:{port}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// (direction, source ip, destination ip, destination port) of a flow
/// alert.
fn shape(a: &Value) -> (String, String, String, u64) {
    (
        a["network"]["direction"].as_str().unwrap().to_owned(),
        a["source"]["ip"].as_str().unwrap().to_owned(),
        a["destination"]["ip"].as_str().unwrap().to_owned(),
        a["destination"]["port"].as_u64().unwrap(),
    )
}

fn flow_alerts<'a>(alerts: &'a [Value], listener: &str, protocol: &str) -> Vec<&'a Value> {
    alerts
        .iter()
        .filter(|a| {
            a["torsensor"]["signal"] == "flow"
                && a["torsensor"]["collector"]["listener"] == listener
                && a["torsensor"]["collector"]["protocol"] == protocol
        })
        .collect()
}

fn expect(list: &[(&str, &str, &str, u64)]) -> Vec<(String, String, String, u64)> {
    let mut v: Vec<_> = list
        .iter()
        .map(|(d, s, t, p)| ((*d).to_owned(), (*s).to_owned(), (*t).to_owned(), *p))
        .collect();
    v.sort();
    v
}

#[test]
fn exported_flows_to_and_from_listed_addresses_alert_once_each() {
    if !kernel_tests_allowed("exported_flows_to_and_from_listed_addresses_alert_once_each") {
        return;
    }
    let _g = serial();
    let dir = temp_path("collector");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();

    // 1. Real connections, recorded.
    let ns = LoNs::new("tscoll", &[INSIDE, EXIT, UNLISTED], &[INSIDE6, EXIT6]);
    let capture = dir.join("traffic.pcap");
    let dump = tcpdump(&ns, &capture, "tcp");
    iperf(&ns, INSIDE, EXIT, 9001, BIG); // outbound, substantial
    iperf(&ns, EXIT, INSIDE, 8443, BIG); // inbound from the exit
    iperf(&ns, INSIDE, EXIT, 443, SMALL); // outbound, below the threshold
    iperf(&ns, INSIDE, UNLISTED, 9001, BIG); // not listed
    iperf(&ns, INSIDE6, EXIT6, 9001, BIG); // outbound over IPv6
    dump.stop();

    // 2. The sensor with three listeners: the default (substantial flows),
    // every match, and one that accepts another exporter only.
    let (main, all, other) = (free_udp_port(), free_udp_port(), free_udp_port());
    let (l_main, l_all, l_other) = (
        format!("udp://127.0.0.1:{main}"),
        format!("udp://127.0.0.1:{all}"),
        format!("udp://127.0.0.1:{other}"),
    );
    let config = dir.join("collector.toml");
    std::fs::write(
        &config,
        format!(
            "health_interval = \"1s\"\n\n[[collector]]\nlisten = \"{l_main}\"\nmerge_wait = \"2s\"\n\n\
             [[collector]]\nlisten = \"{l_all}\"\nalert = \"all\"\nmerge_wait = \"2s\"\nexporters = [\"127.0.0.0/8\"]\n\n\
             [[collector]]\nlisten = \"{l_other}\"\nexporters = [\"192.0.2.99\"]\n"
        ),
    )
    .unwrap();
    let sensor = Sensor::start("collector", FEED, &["--config", config.to_str().unwrap()]);
    let log = sensor.stderr();
    assert!(
        log.contains(&format!(
            "collector {l_main}: receiving NetFlow v5/v9 and IPFIX on udp 127.0.0.1:{main} from any exporter; alerts substantial flows"
        )),
        "{log}"
    );

    // 3. softflowd exports the capture: v5, v9 and IPFIX to the default
    // listener, IPFIX to the "all" one, v9 to the one that refuses us.
    let host = || std::process::Command::new("softflowd");
    for version in ["5", "9", "10"] {
        softflowd(host(), &dir, &capture, version, main);
    }
    softflowd(host(), &dir, &capture, "10", all);
    softflowd(host(), &dir, &capture, "9", other);
    // Joined flows are judged after merge_wait (2 s), swept every second.
    std::thread::sleep(Duration::from_secs(4));
    let metrics = http_get(endpoint(&sensor), "/metrics").1;
    // `torsensor status` names each listener with its counts.
    let status = std::process::Command::new(common::BIN)
        .args(["status", "--state-dir", sensor.state_dir.to_str().unwrap()])
        .env("TORSENSOR_LOG", "warn")
        .output()
        .unwrap();
    let status = String::from_utf8_lossy(&status.stdout).into_owned();
    let line = |l: &str| {
        status
            .lines()
            .find(|x| x.starts_with(&format!("collector {l}\t")))
            .unwrap_or_else(|| panic!("no line for {l}: {status}"))
            .to_owned()
    };
    assert!(line(&l_main).contains("(0 refused, 0 lost:"), "{status}");
    assert!(line(&l_main).contains(" 8 substantial flows"), "{status}");
    assert!(
        line(&l_other).starts_with(&format!("collector {l_other}\t0 datagrams (")),
        "{status}"
    );
    assert!(!line(&l_other).contains("(0 refused"), "{status}");
    let (status, _, stderr, alerts) = sensor.stop_collect();
    assert!(status.success(), "{stderr}");

    // 4. The default listener: each substantial listed flow once per
    // export version, both directions joined, bytes as tshark counts.
    for (version, protocol) in [("5", "netflow5"), ("9", "netflow9"), ("10", "ipfix")] {
        let got = flow_alerts(&alerts, &l_main, protocol);
        let mut shapes: Vec<_> = got.iter().map(|a| shape(a)).collect();
        shapes.sort();
        let mut want = vec![
            ("outbound", INSIDE, EXIT, 9001),
            ("inbound", EXIT, INSIDE, 8443),
        ];
        // NetFlow v5 carries IPv4 only.
        if version != "5" {
            want.push(("outbound", INSIDE6, EXIT6, 9001));
        }
        assert_eq!(shapes, expect(&want), "{protocol}: {got:#?}\n{stderr}");
        for a in &got {
            let c = &a["torsensor"]["collector"];
            assert_eq!(c["records"], 2, "both directions joined: {a:#}");
            assert_eq!(c["substantial"], true);
            assert_eq!(c["reasons"][0], "bytes");
            assert_eq!(a["observer"]["ip"][0], "127.0.0.1");
            assert_eq!(a["observer"]["type"], "router");
            assert_eq!(a["event"]["kind"], "alert");
            assert_eq!(a["torsensor"]["feeds"].as_array().unwrap().len(), 1);
            assert!(a.get("process").is_none());
            // What tshark counts for this connection (IPv4: ip.len).
            let source = a["source"]["ip"].as_str().unwrap();
            let source_port = a["source"]["port"].as_u64().unwrap() as u16;
            let (dest, port) = (
                a["destination"]["ip"].as_str().unwrap(),
                a["destination"]["port"].as_u64().unwrap() as u16,
            );
            let (rule, bytes) = match shape(a).0.as_str() {
                "outbound" if dest == EXIT => (
                    "TORSENSOR-011",
                    Some(tshark_ip_bytes(
                        &capture,
                        (source, Some(source_port)),
                        dest,
                        port,
                    )),
                ),
                "outbound" => ("TORSENSOR-011", None),
                _ => (
                    "TORSENSOR-012",
                    Some(tshark_ip_bytes(
                        &capture,
                        (source, Some(source_port)),
                        dest,
                        port,
                    )),
                ),
            };
            assert_eq!(a["rule"]["id"], rule, "{a:#}");
            if let Some((sent, answered)) = bytes {
                assert!(
                    sent > 1 << 20,
                    "{protocol}: tshark counts {sent} bytes from {source}:{source_port} to {dest}:{port} and {answered} back: {a:#}"
                );
                assert_eq!(a["source"]["bytes"], sent, "{protocol}: {a:#}");
                assert_eq!(a["destination"]["bytes"], answered, "{protocol}: {a:#}");
                assert_eq!(a["network"]["bytes"], sent + answered);
            }
            assert!(a["event"]["duration"].as_u64().is_some());
        }
    }

    // 5. "all": the small connections to the exit too (iperf3's control
    // and data connections, and a refused early attempt if any), each
    // once; still nothing for the unlisted address.
    let got = flow_alerts(&alerts, &l_all, "ipfix");
    let small: Vec<_> = got
        .iter()
        .filter(|a| a["destination"]["port"] == 443)
        .collect();
    assert!(small.len() >= 2, "{got:#?}");
    let mut ports: Vec<_> = small.iter().map(|a| a["source"]["port"].as_u64()).collect();
    ports.sort();
    ports.dedup();
    assert_eq!(ports.len(), small.len(), "each connection once: {small:#?}");
    for a in &small {
        assert_eq!(a["torsensor"]["collector"]["substantial"], false, "{a:#}");
        assert_eq!(a["rule"]["id"], "TORSENSOR-011");
    }
    assert_eq!(
        got.iter()
            .filter(|a| a["torsensor"]["collector"]["substantial"] == true)
            .count(),
        3,
        "{got:#?}"
    );
    let unlisted = |a: &&Value| a["destination"]["ip"] == UNLISTED || a["source"]["ip"] == UNLISTED;
    assert!(!alerts.iter().any(|a| unlisted(&a)), "{alerts:#?}");
    // The refusing listener sent nothing.
    assert!(flow_alerts(&alerts, &l_other, "netflow9").is_empty());

    // 6. The counters, and the refused datagrams in the log while running.
    assert!(
        stderr.contains(&format!("collector {l_other}: "))
            && stderr.contains("datagrams from exporters not allowed"),
        "{stderr}"
    );
    let m =
        |series: &str| sample(&metrics, series).unwrap_or_else(|| panic!("{series}\n{metrics}"));
    assert!(
        m(&format!(
            "torsensor_collector_datagrams_total{{listener=\"{l_other}\",result=\"refused\"}}"
        )) > 0.0
    );
    assert_eq!(
        m(&format!(
            "torsensor_collector_datagrams_total{{listener=\"{l_other}\",result=\"accepted\"}}"
        )),
        0.0
    );
    assert!(
        m(&format!(
            "torsensor_collector_records_total{{listener=\"{l_main}\",result=\"unmatched\"}}"
        )) > 0.0
    );
    assert!(
        m(&format!(
            "torsensor_collector_flows_total{{listener=\"{l_main}\",result=\"below_threshold\"}}"
        )) > 0.0
    );
    assert_eq!(
        m(&format!(
            "torsensor_collector_flows_total{{listener=\"{l_main}\",result=\"substantial\"}}"
        )),
        8.0
    );
    assert_eq!(
        m(&format!(
            "torsensor_collector_errors_total{{listener=\"{l_main}\",reason=\"malformed\"}}"
        )),
        0.0
    );
    assert_eq!(
        m(&format!(
            "torsensor_collector_datagrams_total{{listener=\"{l_main}\",result=\"dropped\"}}"
        )),
        0.0
    );
    assert_eq!(
        m(&format!(
            "torsensor_collector_datagrams_total{{listener=\"{l_main}\",result=\"kernel_dropped\"}}"
        )),
        0.0
    );
    assert!(
        log.contains("receive buffer 8192 KiB"),
        "4 MiB, doubled by the kernel: {log}"
    );
}

/// A bad `[[collector]]` stops the start with one line naming it.
#[test]
fn a_bad_collector_table_is_one_line_naming_it() {
    let dir = temp_path("collector-bad");
    std::fs::create_dir_all(&dir).unwrap();
    for (table, want) in [
        (
            "listen = \"tcp://0.0.0.0:2055\"",
            "collector listen = \"tcp://0.0.0.0:2055\": write udp://ADDRESS:PORT",
        ),
        (
            "listen = \"udp://127.0.0.1:2055\"\nexporters = [\"router\"]",
            "exporters entry \"router\" is not an address or prefix",
        ),
        (
            "listen = \"udp://127.0.0.1:2055\"\nmerge_wait = \"1h\"",
            "merge_wait must be between 1s and 10m",
        ),
    ] {
        let config = dir.join("c.toml");
        std::fs::write(&config, format!("[[collector]]\n{table}\n")).unwrap();
        let out = std::process::Command::new(common::BIN)
            .args(["check", "--config", config.to_str().unwrap(), "192.0.2.1"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{table}: {err}");
        assert!(err.contains(want), "{table}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
}
