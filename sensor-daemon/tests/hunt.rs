//! `torsensor hunt` on real data made by real tools: a capture recorded by
//! `tcpdump` of connections made (by `curl`, to and from a real `nginx`)
//! between addresses of a loopback-only network namespace; the same flows
//! exported by `softflowd` as NetFlow v5, v9 and IPFIX (the export packets
//! captured, and collected by `nfcapd`, read back with `nfdump -o csv` and
//! `-o json`); nginx's own access logs (combined with X-Forwarded-For, and
//! JSON); and the capture rewritten by `tcprewrite`/`editcap` onto real
//! Tor addresses and dates of the fixtures, so that the same address is a
//! hit at one time and not at another. Byte counts are checked against
//! `tshark`'s and `nfdump`'s. Needs root (network namespaces).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::capture::{
    Killed, LoNs, run, signal, softflowd, tcpdump, tcpdump_on, text, tshark_ip_bytes, wait_until,
};
use common::{data, kernel_tests_allowed, temp_path, torsensor};
use serde_json::Value;

const BIG: usize = 2_621_440; // 2.5 MiB: above the 1 MiB threshold
const INSIDE: &str = "192.0.2.10";
const EXIT: &str = "198.51.100.7";
const EXIT_VIA_XFF: &str = "198.51.100.8";
const UNLISTED: &str = "203.0.113.5";
const INSIDE6: &str = "2001:db8::10";
const EXIT6: &str = "2001:db8::7";

/// The nginx of the test: an inside web server on :8080 (logging combined
/// plus X-Forwarded-For, and JSON) and the "outside" servers on :8443.
fn nginx_conf(dir: &Path) -> PathBuf {
    let d = dir.display();
    let conf = format!(
        r#"worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/nginx-error.log;
events {{ worker_connections 64; }}
http {{
  access_log off;
  client_body_temp_path {d}/tmp/body;
  proxy_temp_path {d}/tmp/proxy;
  fastcgi_temp_path {d}/tmp/fastcgi;
  uwsgi_temp_path {d}/tmp/uwsgi;
  scgi_temp_path {d}/tmp/scgi;
  log_format combined_xff '$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent "$http_referer" "$http_user_agent" "$http_x_forwarded_for"';
  log_format json escape=json '{{"remote_addr":"$remote_addr","time_iso8601":"$time_iso8601","request":"$request","status":"$status","body_bytes_sent":"$body_bytes_sent","http_user_agent":"$http_user_agent","http_x_forwarded_for":"$http_x_forwarded_for"}}';
  server {{
    listen {INSIDE}:8080;
    listen [{INSIDE6}]:8080;
    root {d}/www;
    access_log {d}/web.log combined_xff;
    access_log {d}/web.json json;
  }}
  server {{
    listen {EXIT}:8443;
    listen {UNLISTED}:8443;
    listen [{EXIT6}]:8443;
    root {d}/www;
  }}
}}
"#
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf).unwrap();
    path
}

/// An exit list (CollecTor's tordnsel format) that lists the test's
/// "Tor" addresses as tested 10 minutes ago.
fn exit_list_now(dir: &Path) -> PathBuf {
    let t = std::time::SystemTime::now() - Duration::from_secs(600);
    let t = humantime::format_rfc3339_seconds(t).to_string();
    let t = t.trim_end_matches('Z').replace('T', " ");
    let mut doc = format!("@type tordnsel 1.0\nDownloaded {t}\n");
    for (i, a) in [EXIT, EXIT_VIA_XFF, EXIT6].iter().enumerate() {
        doc.push_str(&format!(
            "ExitNode {i:040X}\nPublished {t}\nLastStatus {t}\nExitAddress {a} {t}\n"
        ));
    }
    let path = dir.join("exits-now");
    std::fs::write(&path, doc).unwrap();
    path
}

/// Runs a hunt; returns the exit code, the alerts and the JSON summary.
fn hunt(dir: &Path, history: &Path, extra: &[&str], inputs: &[&Path]) -> (i32, Vec<Value>, Value) {
    let alerts = dir.join("alerts.json");
    let summary = dir.join("summary.json");
    let _ = std::fs::remove_file(&alerts);
    let state = dir.join("state");
    let mut args: Vec<String> = vec![
        "hunt".into(),
        "--history".into(),
        history.display().to_string(),
        "--state-dir".into(),
        state.display().to_string(),
        "--rules-dir".into(),
        dir.join("no-rules").display().to_string(),
        "--output".into(),
        format!("file:{}", alerts.display()),
        "--format".into(),
        "json".into(),
        "--summary".into(),
        summary.display().to_string(),
    ];
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    args.extend(inputs.iter().map(|p| p.display().to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = torsensor(&refs);
    let code = out.status.code().unwrap_or(-1);
    assert!(
        code == 0 || code == 1,
        "hunt {refs:?}: {code}\n{}",
        text(&out.stderr)
    );
    let alerts: Vec<Value> = std::fs::read_to_string(&alerts)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let summary: Value = serde_json::from_str(&std::fs::read_to_string(&summary).unwrap()).unwrap();
    (code, alerts, summary)
}

fn row<'a>(summary: &'a Value, internal: &str, tor: &str) -> Option<&'a Value> {
    summary["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["internal"] == internal && r["tor"] == tor)
}

/// softflowd reads the capture and exports it as NetFlow `version` to an
/// nfcapd on the namespace's loopback; the export packets are captured
/// too. Returns (export capture, nfcapd directory).
fn export(ns: &LoNs, dir: &Path, capture: &Path, version: &str, port: u16) -> (PathBuf, PathBuf) {
    let nf = dir.join(format!("nfcapd-v{version}"));
    std::fs::create_dir_all(&nf).unwrap();
    let pcap = dir.join(format!("exports-v{version}.pcap"));
    let nfcapd = Killed(
        ns.cmd("nfcapd")
            .args(["-b", "127.0.0.1", "-p", &port.to_string(), "-w"])
            .arg(&nf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nfcapd"),
    );
    let dump = tcpdump(ns, &pcap, &format!("udp port {port}"));
    softflowd(ns.cmd("softflowd"), dir, capture, version, port);
    dump.stop();
    // nfcapd writes its file when it stops.
    signal(&nfcapd.0, libc::SIGTERM);
    let mut nfcapd = nfcapd;
    let _ = nfcapd.0.wait();
    (pcap, nf)
}

fn nfdump(nf: &Path, format: &str, out: &Path) {
    let o = run(Command::new("nfdump")
        .env("TZ", "UTC")
        .arg("-R")
        .arg(nf)
        .args(["-o", format]));
    std::fs::write(out, &o.stdout).unwrap();
}

/// nfdump's bytes for the records from `src` to `dst` where the server
/// end has port 8443 (CSV).
fn nfdump_bytes(csv: &Path, src: &str, dst: &str) -> u64 {
    let t = std::fs::read_to_string(csv).unwrap();
    let mut lines = t.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let col = |n: &str| header.iter().position(|h| *h == n).unwrap();
    let (sa, da, sp, dp, ibyt) = (col("sa"), col("da"), col("sp"), col("dp"), col("ibyt"));
    lines
        .map(|l| l.split(',').collect::<Vec<_>>())
        .filter(|v| {
            v.len() > ibyt && v[sa] == src && v[da] == dst && (v[sp] == "8443" || v[dp] == "8443")
        })
        .map(|v| v[ibyt].parse::<u64>().unwrap())
        .sum()
}

fn substantial_egress<'a>(alerts: &'a [Value], dst: &str) -> Vec<&'a Value> {
    alerts
        .iter()
        .filter(|a| a["destination"]["ip"] == dst && a["network"]["direction"] == "egress")
        .collect()
}

#[test]
fn hunt_over_a_real_capture_its_flow_exports_and_nginx_logs() {
    if !kernel_tests_allowed("hunt_over_a_real_capture_its_flow_exports_and_nginx_logs") {
        return;
    }
    let dir = temp_path("hunt-real");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("www")).unwrap();
    std::fs::create_dir_all(dir.join("tmp")).unwrap();
    let mut perms_dirs = vec![dir.clone()];
    if let Some(p) = dir.parent() {
        perms_dirs.push(p.to_owned());
    }
    for d in perms_dirs.iter().chain([&dir.join("www")]) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let big: Vec<u8> = (0..BIG).map(|i| (i * 7919 % 251) as u8).collect();
    std::fs::write(dir.join("www/big.bin"), &big).unwrap();
    std::fs::write(dir.join("www/small.txt"), "hello from the inside\n").unwrap();
    let ns = LoNs::new(
        "tshunt",
        &[INSIDE, EXIT, EXIT_VIA_XFF, UNLISTED],
        &[INSIDE6, EXIT6],
    );

    // The capture, recorded while the connections are made.
    let capture = dir.join("capture.pcap");
    let dump = tcpdump(&ns, &capture, "tcp");
    // The same, as Linux cooked capture (v2) on `any`: on lo each packet
    // passes twice (leaving, arriving); `inbound` keeps it once.
    let cooked = dir.join("capture-any.pcap");
    let dump_any = tcpdump_on(&ns, "any", &cooked, "inbound and tcp");
    let conf = nginx_conf(&dir);
    let nginx = Killed(
        ns.cmd("nginx")
            .arg("-c")
            .arg(&conf)
            .args(["-g", "daemon off;"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx"),
    );
    let curl = |args: &[&str]| -> Output {
        ns.cmd("curl")
            .args(["-s", "-S", "--max-time", "10"])
            .args(args)
            .output()
            .unwrap()
    };
    wait_until("nginx", || {
        curl(&[
            "-o",
            "/dev/null",
            &format!("http://{INSIDE}:8080/small.txt"),
        ])
        .status
        .success()
    });
    std::thread::sleep(Duration::from_millis(300));
    // Outbound: a 2.5 MiB download from a listed exit (substantial), the
    // same from an unlisted address, a small one over IPv6 (listed, below
    // the thresholds).
    let get = |from: &str, url: &str, extra: &[&str]| {
        let mut args = vec!["-o", "/dev/null", "--interface", from];
        args.extend_from_slice(extra);
        args.push(url);
        let out = curl(&args);
        assert!(out.status.success(), "curl {args:?}: {}", text(&out.stderr));
    };
    get(INSIDE, &format!("http://{EXIT}:8443/big.bin"), &[]);
    get(INSIDE, &format!("http://{UNLISTED}:8443/big.bin"), &[]);
    get(INSIDE6, &format!("http://[{EXIT6}]:8443/small.txt"), &[]);
    // Inbound: 12 requests from a listed exit (substantial by count), 12
    // from an unlisted proxy forwarding for a listed exit, 2 from a listed
    // IPv6 exit (counted, below the thresholds).
    for _ in 0..12 {
        get(
            EXIT,
            &format!("http://{INSIDE}:8080/small.txt"),
            &["-H", "X-Forwarded-For: 203.0.113.99"],
        );
        get(
            UNLISTED,
            &format!("http://{INSIDE}:8080/small.txt"),
            &["-H", &format!("X-Forwarded-For: {EXIT_VIA_XFF}")],
        );
    }
    for _ in 0..2 {
        get(EXIT6, &format!("http://[{INSIDE6}]:8080/small.txt"), &[]);
    }
    dump.stop();
    dump_any.stop();
    drop(nginx);

    let history = dir.join("history");
    let h = history.display().to_string();
    let now_list = exit_list_now(&dir);
    let out = torsensor(&[
        "history",
        "import",
        "--history",
        &h,
        &now_list.display().to_string(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));

    // 1. The capture.
    let (code, alerts, summary) = hunt(&dir, &history, &[], &[&capture]);
    assert_eq!(code, 0, "{summary}");
    let egress = substantial_egress(&alerts, EXIT);
    assert_eq!(
        egress.len(),
        1,
        "one substantial download from the listed exit: {alerts:#?}"
    );
    let a = egress[0];
    assert_eq!(a["event"]["dataset"], "torsensor.hunt");
    assert_eq!(a["source"]["ip"], INSIDE);
    assert_eq!(a["destination"]["port"], 8443);
    assert_eq!(
        a["rule"]["id"], "TORSENSOR-003",
        "exit address, not an ORPort"
    );
    assert_eq!(a["torsensor"]["hunt"]["input"], "pcap");
    assert_eq!(a["torsensor"]["hunt"]["initiator"], "syn");
    assert_eq!(a["torsensor"]["hunt"]["ended"], "fin");
    assert_eq!(
        a["torsensor"]["hunt"]["reasons"],
        serde_json::json!(["bytes"])
    );
    assert_eq!(a["torsensor"]["tor"]["roles"], serde_json::json!(["exit"]));
    assert!(
        a["torsensor"]["tor"]["history"]["distance"]
            .as_i64()
            .unwrap()
            > 0
    );
    assert_eq!(a["log"]["file"]["path"], capture.display().to_string());
    let (to, from) = tshark_ip_bytes(&capture, (INSIDE, None), EXIT, 8443);
    assert_eq!(
        a["source"]["bytes"], to,
        "bytes to the exit, as tshark counts them"
    );
    assert_eq!(
        a["destination"]["bytes"], from,
        "bytes from the exit, as tshark counts them"
    );
    assert!(from > BIG as u64 && from < BIG as u64 * 11 / 10);
    assert!(
        alerts
            .iter()
            .all(|a| a["destination"]["ip"] != UNLISTED && a["source"]["ip"] != UNLISTED)
    );
    // Every alert is substantial; the small flows are only counted.
    assert!(
        alerts
            .iter()
            .all(|a| a["torsensor"]["hunt"]["substantial"] == true)
    );
    let r = row(&summary, INSIDE, EXIT).expect("a row for the inside host and the exit");
    assert_eq!(r["flows"], 13, "1 download and 12 inbound requests: {r}");
    assert_eq!(r["substantial"], 1);
    assert_eq!(r["alerts"], 1);
    assert_eq!(r["direction"], serde_json::json!(["egress", "ingress"]));
    let r6 = row(&summary, INSIDE6, EXIT6).expect("an IPv6 row");
    assert_eq!(r6["flows"], 3);
    assert_eq!(r6["substantial"], 0);
    assert!(row(&summary, INSIDE, UNLISTED).is_none());
    assert_eq!(summary["stats"]["bad_records"], 0);

    // The same capture as pcapng (editcap), and --since after it: nothing.
    let ng = dir.join("capture.pcapng");
    run(Command::new("editcap")
        .args(["-F", "pcapng"])
        .arg(&capture)
        .arg(&ng));
    let (_, alerts_ng, summary_ng) = hunt(&dir, &history, &[], &[&ng]);
    assert_eq!(substantial_egress(&alerts_ng, EXIT).len(), 1);
    assert_eq!(alerts_ng[0]["destination"]["bytes"], from);
    assert_eq!(alerts_ng[0]["torsensor"]["hunt"]["input"], "pcapng");
    assert_eq!(summary_ng["rows"], summary["rows"]);
    let later =
        humantime::format_rfc3339_seconds(std::time::SystemTime::now() + Duration::from_secs(60))
            .to_string();
    let (code, none, _) = hunt(&dir, &history, &["--since", &later], &[&capture]);
    assert_eq!((code, none.len()), (1, 0));

    // Other link layers, made by real tools from the same traffic: the
    // cooked capture tcpdump recorded on `any`, and the capture with an
    // 802.1Q tag on every frame (tcprewrite). The same download, with the
    // same bytes each way.
    let tagged = dir.join("capture-vlan.pcap");
    run(Command::new("tcprewrite")
        .args([
            "--enet-vlan=add",
            "--enet-vlan-tag=10",
            "--enet-vlan-pri=0",
            "--enet-vlan-cfi=0",
        ])
        .arg(format!("--infile={}", capture.display()))
        .arg(format!("--outfile={}", tagged.display())));
    for (file, layer) in [(&cooked, "sll2"), (&tagged, "vlan")] {
        let protocols = text(
            &run(Command::new("tshark").arg("-r").arg(file).args([
                "-c",
                "1",
                "-T",
                "fields",
                "-e",
                "frame.protocols",
            ]))
            .stdout,
        );
        assert!(
            protocols.starts_with(if layer == "sll2" {
                "sll:"
            } else {
                "eth:ethertype:vlan:"
            }),
            "{layer}: {protocols}"
        );
        let (_, alerts_l, summary_l) = hunt(&dir, &history, &[], &[file]);
        let e = substantial_egress(&alerts_l, EXIT);
        assert_eq!(e.len(), 1, "{layer}: {alerts_l:#?}");
        assert_eq!(e[0]["destination"]["bytes"], from, "{layer}");
        assert_eq!(e[0]["source"]["bytes"], to, "{layer}");
        assert_eq!(summary_l["rows"], summary["rows"], "{layer}");
        assert_eq!(summary_l["stats"]["bad_records"], 0, "{layer}");
    }

    // 2. nginx's logs: text (combined + X-Forwarded-For) and JSON.
    let web = dir.join("web.log");
    let web_json = dir.join("web.json");
    for log in [&web, &web_json] {
        let (code, alerts, summary) = hunt(&dir, &history, &[], &[log]);
        assert_eq!(code, 0, "{summary}");
        let name = format!("web:{}", log.file_name().unwrap().to_string_lossy());
        assert_eq!(alerts.len(), 1, "{alerts:#?}");
        let a = &alerts[0];
        assert_eq!(a["source"]["ip"], EXIT);
        assert_eq!(a["event"]["action"], "tor-web-requests");
        assert_eq!(a["rule"]["id"], "TORSENSOR-002");
        assert_eq!(a["http"]["request"]["method"], "GET");
        assert_eq!(a["http"]["response"]["status_code"], 200);
        assert_eq!(a["url"]["original"], "/small.txt");
        assert!(
            a["user_agent"]["original"]
                .as_str()
                .unwrap()
                .starts_with("curl/")
        );
        assert_eq!(a["torsensor"]["hunt"]["requests"]["count"], 12);
        assert_eq!(a["torsensor"]["hunt"]["requests"]["status"]["200"], 12);
        assert_eq!(
            a["torsensor"]["hunt"]["reasons"],
            serde_json::json!(["requests"])
        );
        assert_eq!(row(&summary, &name, EXIT).unwrap()["requests"], 12);
        let r6 = row(&summary, &name, EXIT6).expect("the IPv6 client is counted");
        assert_eq!(
            (r6["requests"].as_u64(), r6["alerts"].as_u64()),
            (Some(2), Some(0))
        );
        assert!(
            row(&summary, &name, EXIT_VIA_XFF).is_none(),
            "X-Forwarded-For is read only when asked"
        );
        // With --forwarded-for, the listed address behind the proxy too.
        let (_, alerts, summary) = hunt(&dir, &history, &["--forwarded-for"], &[log]);
        let via = alerts
            .iter()
            .find(|a| a["source"]["ip"] == EXIT_VIA_XFF)
            .expect("the forwarded exit");
        assert_eq!(
            via["torsensor"]["hunt"]["forwarded_for"],
            serde_json::json!([EXIT_VIA_XFF])
        );
        assert_eq!(row(&summary, &name, EXIT_VIA_XFF).unwrap()["requests"], 12);
    }

    // 3. The flows exported by softflowd: the export packets in a capture,
    // and nfcapd's files read with nfdump.
    for (version, port) in [("5", 2055u16), ("9", 9995), ("10", 4739)] {
        let (exports, nf) = export(&ns, &dir, &capture, version, port);
        let csv = dir.join(format!("flows-v{version}.csv"));
        let json = dir.join(format!("flows-v{version}.json"));
        nfdump(&nf, "csv", &csv);
        nfdump(&nf, "json", &json);
        let from_exit = nfdump_bytes(&csv, EXIT, INSIDE);
        let to_exit = nfdump_bytes(&csv, INSIDE, EXIT);
        assert!(
            from_exit > BIG as u64,
            "v{version}: nfdump has the download: {from_exit}"
        );
        for (input, kind) in [(&exports, "netflow"), (&csv, "nfdump"), (&json, "nfdump")] {
            let (code, alerts, summary) = hunt(&dir, &history, &[], &[input]);
            assert_eq!(code, 0, "v{version} {kind}: {summary}");
            let egress = substantial_egress(&alerts, EXIT);
            assert_eq!(egress.len(), 1, "v{version} {kind}: {alerts:#?}");
            let a = egress[0];
            assert_eq!(a["torsensor"]["hunt"]["input"], kind);
            assert_eq!(a["destination"]["bytes"], from_exit, "v{version} {kind}");
            assert_eq!(a["source"]["bytes"], to_exit, "v{version} {kind}");
            assert_eq!(a["destination"]["port"], 8443);
            assert!(alerts.iter().all(|a| a["destination"]["ip"] != UNLISTED));
            if version != "5" {
                assert!(
                    row(&summary, INSIDE6, EXIT6).is_some(),
                    "v{version} {kind}: IPv6 flows"
                );
            }
        }
    }

    // 4. The capture moved onto real Tor addresses and dates: the exit of
    // the 2024-03-12 exit list, the relay (ORPort 8443) of the 2026-01-29
    // consensus. A hit at their time, nothing a year away.
    let out = torsensor(&[
        "history",
        "import",
        "--history",
        &h,
        &data("history/2024-03-12-14-30-00").display().to_string(),
        &data("consensus/live-truncated/consensus-ns")
            .display()
            .to_string(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let first_ts: f64 = text(
        &run(Command::new("tcpdump")
            .args(["-r"])
            .arg(&capture)
            .args(["-tt", "-n", "-c", "1"]))
        .stdout,
    )
    .split_whitespace()
    .next()
    .unwrap()
    .parse()
    .unwrap();
    let moved = |name: &str, map: &str, at: &str| -> PathBuf {
        let rewritten = dir.join(format!("{name}-addr.pcap"));
        run(Command::new("tcprewrite")
            .arg(format!("--pnat={map}"))
            .arg("--fixcsum")
            .arg(format!("--infile={}", capture.display()))
            .arg(format!("--outfile={}", rewritten.display())));
        let target = humantime::parse_rfc3339(at)
            .unwrap()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let out = dir.join(format!("{name}.pcap"));
        run(Command::new("editcap")
            .args(["-t", &format!("{:.6}", target - first_ts)])
            .arg(&rewritten)
            .arg(&out));
        out
    };
    let real_exit = "185.241.208.232"; // in the 2024-03-12 exit list
    let exit_hit = moved(
        "exit-2024",
        &format!("{EXIT}/32:{real_exit}/32"),
        "2024-03-12T09:00:00Z",
    );
    let exit_miss = moved(
        "exit-2023",
        &format!("{EXIT}/32:{real_exit}/32"),
        "2023-03-12T09:00:00Z",
    );
    let (_, alerts, _) = hunt(&dir, &history, &[], &[&exit_hit]);
    let a = substantial_egress(&alerts, real_exit);
    assert_eq!(a.len(), 1, "{alerts:#?}");
    // The closest of the address's tests: relay FE39...'s at 08:10:51,
    // 49 min 9 s before the download (each exit sharing the address keeps
    // its own test time).
    let matched = &a[0]["torsensor"]["tor"]["history"];
    assert_eq!(matched["first_seen"], "2024-03-12T08:10:51Z");
    assert_eq!(matched["distance"], 49 * 60 + 9);
    assert_eq!(
        a[0]["destination"]["bytes"], from,
        "the rewrite kept every byte"
    );
    let (code, alerts, _) = hunt(&dir, &history, &[], &[&exit_miss]);
    assert!(
        substantial_egress(&alerts, real_exit).is_empty(),
        "a year earlier it was not an exit: {alerts:#?}"
    );
    assert_eq!(code, 1);
    let relay = "152.53.144.50"; // ORPort 8443 in the consensus valid 2026-01-29 15:00-16:00
    let relay_hit = moved(
        "relay-2026",
        &format!("{UNLISTED}/32:{relay}/32"),
        "2026-01-29T15:30:00Z",
    );
    let relay_miss = moved(
        "relay-2025",
        &format!("{UNLISTED}/32:{relay}/32"),
        "2025-01-29T15:30:00Z",
    );
    let (_, alerts, _) = hunt(&dir, &history, &[], &[&relay_hit]);
    let a = substantial_egress(&alerts, relay);
    assert_eq!(a.len(), 1, "{alerts:#?}");
    assert_eq!(a[0]["rule"]["id"], "TORSENSOR-001");
    assert_eq!(a[0]["torsensor"]["tor"]["confidence"], "high");
    assert_eq!(a[0]["torsensor"]["tor"]["or_port"], 8443);
    assert_eq!(a[0]["torsensor"]["tor"]["relays"][0]["nickname"], "lisdex");
    let (_, alerts, _) = hunt(&dir, &history, &[], &[&relay_miss]);
    assert!(substantial_egress(&alerts, relay).is_empty());
}

#[test]
fn bad_records_are_reported_with_file_and_offset_and_never_stop_the_run() {
    let dir = temp_path("hunt-bad");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let history = dir.join("history");
    let now_list = exit_list_now(&dir);
    let out = torsensor(&[
        "history",
        "import",
        "--history",
        &history.display().to_string(),
        &now_list.display().to_string(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let t = chrono_clf(std::time::SystemTime::now() - Duration::from_secs(300));
    let good = format!("{EXIT} - - [{t}] \"GET / HTTP/1.1\" 200 10 \"-\" \"x\"\n");
    let mut log = String::new();
    for i in 0..12 {
        log.push_str(&good);
        if i == 3 {
            log.push_str("not a log line at all\n");
        }
        if i == 7 {
            log.push_str(&format!(
                "{EXIT} - - [32/Foo/2025:99:00:00 +0000] \"GET / HTTP/1.1\" 200 1\n"
            ));
        }
    }
    let path = dir.join("access.log");
    std::fs::write(&path, &log).unwrap();
    // A truncated capture: its records before the cut still count.
    let cut = dir.join("cut.pcap");
    let mut pcap = vec![
        0xd4, 0xc3, 0xb2, 0xa1, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 1, 0, 0, 0,
    ];
    pcap.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0, 60, 0, 0, 0, 60, 0, 0, 0]);
    pcap.extend_from_slice(&[0u8; 20]);
    std::fs::write(&cut, &pcap).unwrap();
    let out = torsensor(&[
        "hunt",
        "--history",
        &history.display().to_string(),
        "--state-dir",
        &dir.join("state").display().to_string(),
        "--format",
        "csv",
        "--output",
        &format!("file:{}", dir.join("alerts.json").display()),
        &path.display().to_string(),
        &cut.display().to_string(),
    ]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let at = |needle: &str| log.find(needle).unwrap();
    assert!(
        stderr.contains(&format!(
            "{}:{}: line 5: client \"not\" is not an address",
            path.display(),
            at("not a log")
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "{}:{}: line 10: the time is not",
            path.display(),
            at(&format!("{EXIT} - - [32/Foo"))
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("{}: offset 24: damaged capture", cut.display())),
        "{stderr}"
    );
    let csv = text(&out.stdout);
    assert!(csv.starts_with("internal,tor,roles,direction,"), "{csv}");
    assert!(
        csv.contains(&format!(
            "web:access.log,{EXIT},exit,ingress,0,120,0,12,1,1,"
        )),
        "{csv}"
    );
}

/// A time in the common log format (UTC).
fn chrono_clf(t: std::time::SystemTime) -> String {
    let iso = humantime::format_rfc3339_seconds(t).to_string();
    // 2026-12-02T01:00:00Z -> 02/Dec/2026:01:00:00 +0000
    const M: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let (y, mo, d) = (&iso[0..4], &iso[5..7], &iso[8..10]);
    let m = M[mo.parse::<usize>().unwrap() - 1];
    format!("{d}/{m}/{y}:{} +0000", &iso[11..19])
}

#[test]
fn unknown_inputs_and_a_missing_history_are_one_line_errors() {
    let dir = temp_path("hunt-errors");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let junk = dir.join("junk.bin");
    std::fs::write(&junk, b"\x00\x01 neither a capture nor a log\n").unwrap();
    let out = torsensor(&[
        "hunt",
        "--history",
        &dir.join("none").display().to_string(),
        &junk.display().to_string(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let e = text(&out.stderr);
    assert!(
        e.contains("no history index") && e.contains("history import"),
        "{e}"
    );
    let history = dir.join("history");
    let now_list = exit_list_now(&dir);
    torsensor(&[
        "history",
        "import",
        "--history",
        &history.display().to_string(),
        &now_list.display().to_string(),
    ]);
    let out = torsensor(&[
        "hunt",
        "--history",
        &history.display().to_string(),
        "--state-dir",
        &dir.join("state").display().to_string(),
        &junk.display().to_string(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let e = text(&out.stderr);
    assert!(
        e.contains(&format!("{}: not a PCAP/pcapng capture", junk.display())),
        "{e}"
    );
}
