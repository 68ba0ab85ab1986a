//! Outputs end to end, with the real sensor and real connections: one alert
//! in three formats to three files, SIGUSR2 reopening a rotated alert file
//! without a feed refresh, and a SIEM (Splunk HEC) that is down
//! while alerts are produced, across a sensor restart: every alert arrives
//! once, in order, when it comes back.

mod common;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use common::http::Receiver;
use common::{Sensor, get, kernel_tests_allowed, listen, serial, temp_path};
use serde_json::{Value, json};

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn lines(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn one_alert_in_ecs_ocsf_and_falco_to_three_files() {
    if !kernel_tests_allowed("formats") {
        return;
    }
    let _serial = serial();
    let (ecs, ocsf, falco) = (
        temp_path("alerts.ecs.jsonl"),
        temp_path("alerts.ocsf.jsonl"),
        temp_path("alerts.falco.jsonl"),
    );
    for p in [&ecs, &ocsf, &falco] {
        let _ = std::fs::remove_file(p);
    }
    let outputs = [
        "stdout".to_owned(),
        format!("file:{}", ecs.display()),
        format!("file:{},format=ocsf", ocsf.display()),
        format!("file:{},format=falco", falco.display()),
    ];
    let mut extra = Vec::new();
    for o in &outputs {
        extra.extend(["--output", o.as_str()]);
    }
    let sensor = Sensor::start("formats", "127.66.60.1\n", &extra);
    let server = listen(addr("127.66.60.1:0"), false);
    let to = server.local_addr().unwrap();
    let client = TcpStream::connect(to).unwrap();
    let _a = server.accept().unwrap();
    let port = client.local_addr().unwrap().port();
    sensor.expect_alert("the stdout copy", |a| get(a, "source.port") == &json!(port));
    let (status, _, stderr) = sensor.stop();
    assert!(status.success(), "{stderr}");

    let ecs = lines(&ecs);
    assert_eq!(ecs.len(), 1, "{ecs:#?}");
    assert_eq!(get(&ecs[0], "source.port"), &json!(port));
    let ocsf = lines(&ocsf);
    assert_eq!(ocsf.len(), 1);
    let o = &ocsf[0];
    assert_eq!(o["class_uid"], 4001);
    assert_eq!(o["category_uid"], 4);
    assert_eq!(o["activity_id"], 1);
    assert_eq!(o["type_uid"], 400101);
    assert_eq!(o["src_endpoint"]["port"], json!(port));
    assert_eq!(o["dst_endpoint"]["ip"], "127.66.60.1");
    assert_eq!(o["connection_info"]["direction_id"], 2);
    assert_eq!(
        o["connection_info"]["community_uid"],
        get(&ecs[0], "network.community_id").clone()
    );
    assert_eq!(
        o["actor"]["process"]["pid"],
        get(&ecs[0], "process.pid").clone()
    );
    assert!(o["observables"].as_array().is_some_and(|v| !v.is_empty()));
    assert!(o["attacks"].as_array().is_some_and(|v| !v.is_empty()));
    let falco = lines(&falco);
    assert_eq!(falco.len(), 1);
    let f = &falco[0];
    assert_eq!(f["rule"], "Outbound connection to a Tor exit address");
    assert_eq!(f["priority"], "Notice");
    assert_eq!(f["source"], "torsensor");
    assert_eq!(f["output_fields"]["fd.rport"], json!(to.port()));
    assert_eq!(f["output_fields"]["fd.lport"], json!(port));
    assert!(f["time"].as_str().is_some_and(|t| t.ends_with('Z')));
}

#[test]
fn sigusr2_reopens_a_rotated_alert_file_and_refreshes_nothing() {
    if !kernel_tests_allowed("sigusr2") {
        return;
    }
    let _serial = serial();
    let file = temp_path("alerts.rotate.jsonl");
    let rotated = temp_path("alerts.rotate.jsonl.1");
    for p in [&file, &rotated] {
        let _ = std::fs::remove_file(p);
    }
    let output = format!("file:{}", file.display());
    let outputs = [
        "--output",
        "stdout",
        "--output",
        &output,
        "--aggregation-window",
        "0s",
    ];
    let sensor = Sensor::start("sigusr2", "127.66.61.1\n", &outputs);
    let server = listen(addr("127.66.61.1:0"), false);
    let to = server.local_addr().unwrap();
    let connect = |n: usize| {
        let client = TcpStream::connect(to).unwrap();
        let _a = server.accept().unwrap();
        let port = client.local_addr().unwrap().port();
        sensor.expect_alert(&format!("alert {n}"), |a| {
            get(a, "source.port") == &json!(port)
        });
        port
    };
    let first = connect(1);
    // logrotate: the file is renamed, then the sensor is told.
    std::fs::rename(&file, &rotated).unwrap();
    sensor.signal(libc::SIGUSR2);
    sensor.wait_log(
        "SIGUSR2: reopening the output files",
        1,
        Duration::from_secs(5),
    );
    let second = connect(2);
    let (status, _, stderr) = sensor.stop();
    assert!(status.success(), "{stderr}");
    let old: Vec<_> = lines(&rotated)
        .iter()
        .map(|a| get(a, "source.port").clone())
        .collect();
    let new: Vec<_> = lines(&file)
        .iter()
        .map(|a| get(a, "source.port").clone())
        .collect();
    assert_eq!(old, [json!(first)], "the rotated file");
    assert_eq!(new, [json!(second)], "the reopened file");
    // Only the file: no reload, no feed refresh.
    assert!(!stderr.contains("SIGHUP"), "{stderr}");
    assert!(!stderr.contains("refresh"), "{stderr}");
}

#[test]
fn hec_down_across_a_restart_then_back_every_alert_once_in_order() {
    if !kernel_tests_allowed("hec_outage") {
        return;
    }
    let _serial = serial();
    // A port nothing listens on yet: the SIEM is down.
    let hec_addr = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let token = temp_path("hec.token");
    std::fs::write(&token, "0f0e0d0c-lab-token\n").unwrap();
    let state = temp_path("state-hec");
    let _ = std::fs::remove_dir_all(&state);
    let output = format!(
        "hec+http://{hec_addr},token_file={},retry_initial=100ms,retry_max=500ms",
        token.display()
    );
    let args = [
        "--output",
        "stdout",
        "--output",
        output.as_str(),
        "--aggregation-window",
        "0s",
        "--state-dir",
        state.to_str().unwrap(),
    ];
    let server = listen(addr("127.66.61.1:0"), false);
    let to = server.local_addr().unwrap();
    let mut ports = Vec::new();
    for round in 0..2 {
        let sensor = Sensor::start(&format!("hec{round}"), "127.66.61.1\n", &args);
        for _ in 0..5 {
            let c = TcpStream::connect(to).unwrap();
            let _a = server.accept().unwrap();
            let port = c.local_addr().unwrap().port();
            ports.push(port);
            sensor.expect_alert("stdout copy", |a| get(a, "source.port") == &json!(port));
        }
        let (status, _, stderr) = sensor.stop();
        assert!(status.success(), "{stderr}");
    }
    // Both runs spooled what they could not deliver.
    assert!(state.join("spool").exists());

    // The SIEM comes back; a third run delivers the spool, in order.
    let receiver = Receiver::start(hec_addr, r#"{"text":"Success","code":0}"#);
    let sensor = Sensor::start("hec2", "127.66.61.1\n", &args);
    let deadline = Instant::now() + Duration::from_secs(20);
    let events = loop {
        let events: Vec<Value> = receiver
            .posts()
            .iter()
            .flat_map(|p| {
                serde_json::Deserializer::from_slice(&p.body)
                    .into_iter::<Value>()
                    .map(Result::unwrap)
                    .collect::<Vec<_>>()
            })
            .collect();
        if events.len() >= ports.len() || Instant::now() > deadline {
            break events;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let got: Vec<u64> = events
        .iter()
        .map(|e| get(e, "event.source.port").as_u64().unwrap())
        .collect();
    let want: Vec<u64> = ports.iter().map(|p| u64::from(*p)).collect();
    assert_eq!(got, want, "exactly once, in production order");
    let post = &receiver.posts()[0];
    assert_eq!(post.path, "/services/collector/event");
    assert_eq!(post.headers["authorization"], "Splunk 0f0e0d0c-lab-token");
    assert!(
        events
            .iter()
            .all(|e| e["sourcetype"].is_string() && e["time"].is_number())
    );
    let (status, _, stderr) = sensor.stop();
    assert!(status.success(), "{stderr}");
    // Nothing delivered twice after the stop either.
    let total: usize = receiver
        .posts()
        .iter()
        .map(|p| {
            serde_json::Deserializer::from_slice(&p.body)
                .into_iter::<Value>()
                .count()
        })
        .sum();
    assert_eq!(total, ports.len());
}
