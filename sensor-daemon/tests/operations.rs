//! Operating a running sensor (issue 13): the metrics and health endpoint
//! and `torsensor status`, against real sensors on this kernel, real
//! connections and real HTTP on loopback.

mod common;

use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::time::Duration;

use common::metrics::{endpoint, http_get, sample, wait_sample};
use common::{BIN, Sensor, get, kernel_tests_allowed, serial, temp_path};
use serde_json::Value;

fn status(state_dir: &std::path::Path) -> (Option<i32>, String) {
    let out = Command::new(BIN)
        .args(["status", "--state-dir", state_dir.to_str().unwrap()])
        .env("TORSENSOR_LOG", "warn")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    (out.status.code(), text)
}

#[test]
fn the_endpoint_counts_a_real_alert_and_status_says_ok() {
    if !kernel_tests_allowed("endpoint") {
        return;
    }
    let _serial = serial();
    let sensor = Sensor::start("endpoint", "127.66.9.0/24\n", &[]);
    let addr = endpoint(&sensor);
    assert!(addr.ip().is_loopback(), "{addr}");
    assert_eq!(http_get(addr, "/healthz"), (200, "ok\n".into()));
    assert_eq!(http_get(addr, "/readyz"), (200, "ok\n".into()));

    let server = TcpListener::bind("127.66.9.7:0").unwrap();
    let to = server.local_addr().unwrap();
    let _client = TcpStream::connect(to).unwrap();
    let _accepted = server.accept().unwrap();
    let doc = sensor.expect_alert("the outbound alert", |d| {
        get(d, "destination.port") == &Value::from(to.port())
    });
    let rule = get(&doc, "rule.id").as_str().unwrap().to_owned();

    let series = format!("torsensor_alerts_total{{direction=\"egress\",rule=\"{rule}\"}}");
    let text = wait_sample(addr, &series, 1.0);
    assert_eq!(sample(&text, &series), Some(1.0), "{text}");
    assert!(sample(&text, "torsensor_hits_total{direction=\"egress\"}").unwrap() >= 1.0);
    assert!(
        sample(
            &text,
            "torsensor_connections_seen_total{direction=\"egress\"}"
        )
        .unwrap()
            >= 1.0
    );
    let entries = "torsensor_feed_entries{feed=\"endpoint.feed\",role=\"exit\",family=\"ipv4\"}";
    assert_eq!(sample(&text, entries), Some(1.0), "{text}");
    assert_eq!(
        sample(&text, "torsensor_output_delivered_total{output=\"stdout\"}"),
        Some(1.0)
    );
    assert_eq!(sample(&text, "torsensor_ready"), Some(1.0));
    assert_eq!(
        sample(
            &text,
            "torsensor_events_lost_total{reason=\"ringbuf_full\"}"
        ),
        Some(0.0)
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("torsensor_hook_plan_info{") && l.ends_with(" 1")),
        "{text}"
    );
    assert!(text.ends_with("# EOF\n"), "{text}");

    let (code, json) = http_get(addr, "/status");
    assert_eq!(code, 200);
    let snapshot: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(snapshot["pid"], sensor.pid());
    assert_eq!(snapshot["armed"], true);

    let (code, text) = status(&sensor.state_dir);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.starts_with("TORSENSOR OK - "), "{text}");
    assert!(text.contains("feed endpoint.feed\tloaded"), "{text}");
    assert!(
        text.contains("output stdout (stdout, ecs)\tdelivered=1"),
        "{text}"
    );

    let state_dir = sensor.state_dir.clone();
    let pid = sensor.pid();
    let (exit, _, _) = sensor.stop();
    assert!(exit.success());
    // The status file stays behind; the process is gone.
    let (code, text) = status(&state_dir);
    assert_eq!(code, Some(2), "{text}");
    assert_eq!(
        text.trim_end(),
        format!("TORSENSOR CRITICAL - sensor pid {pid} is not running")
    );
    let (code, text) = status(&temp_path("endpoint-never-ran"));
    assert_eq!(code, Some(3), "{text}");
    assert!(
        text.starts_with("TORSENSOR UNKNOWN - no sensor status at "),
        "{text}"
    );
}

#[test]
fn not_ready_on_the_embedded_snapshot_when_configured_so() {
    if !kernel_tests_allowed("not_ready") {
        return;
    }
    let _serial = serial();
    // A URL feed with no cached copy: only the embedded snapshot is armed
    // until a refresh succeeds (port 9 on loopback refuses at once).
    let config = temp_path("not-ready.toml");
    std::fs::write(
        &config,
        "[[feed]]\nname = \"mirror\"\nlocation = \"http://127.0.0.1:9/exits\"\njitter = \"0s\"\n\n[metrics]\nready_on_embedded = false\n",
    )
    .unwrap();
    let feed = temp_path("unused.feed");
    let sensor = Sensor::start_args(&["run", "--config", config.to_str().unwrap()], feed);
    let addr = endpoint(&sensor);
    assert_eq!(http_get(addr, "/healthz"), (200, "ok\n".into()));
    let (code, why) = http_get(addr, "/readyz");
    assert_eq!(code, 503, "{why}");
    assert!(why.contains("only the embedded snapshot is armed"), "{why}");
    let text = wait_sample(
        addr,
        "torsensor_feed_refresh_failures_total{feed=\"mirror\",reason=\"transport\"}",
        1.0,
    );
    assert_eq!(sample(&text, "torsensor_ready"), Some(0.0), "{text}");
    assert_eq!(sample(&text, "torsensor_feed_embedded_only"), Some(1.0));
    assert!(
        sample(
            &text,
            "torsensor_feed_last_failure_timestamp_seconds{feed=\"mirror\"}"
        )
        .unwrap()
            > 1.7e9
    );
    let (code, text) = status(&sensor.state_dir);
    assert_eq!(code, Some(2), "{text}");
    assert!(
        text.starts_with("TORSENSOR CRITICAL - only the embedded snapshot is armed"),
        "{text}"
    );
    let (exit, _, _) = sensor.stop();
    assert!(exit.success());
}

#[test]
fn an_endpoint_address_in_use_stops_the_start_with_one_line() {
    if !kernel_tests_allowed("endpoint_in_use") {
        return;
    }
    let _serial = serial();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let feed = temp_path("in-use.feed");
    std::fs::write(&feed, "127.66.9.0/24\n").unwrap();
    let out = Command::new(BIN)
        .args(["run", "--allow-reserved", "--feed", feed.to_str().unwrap()])
        .args(["--state-dir", temp_path("in-use-state").to_str().unwrap()])
        .args(["--metrics-listen", &addr])
        .env("TORSENSOR_LOG", "warn")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.lines().last().unwrap_or("");
    assert!(
        last.starts_with(&format!("torsensor: error: metrics endpoint {addr}: ")),
        "{stderr}"
    );
    assert!(last.contains("Address already in use"), "{stderr}");
    // Nothing was loaded: the error came before the kernel was touched.
    assert!(!stderr.contains("hook plan"), "{stderr}");
}

#[test]
fn the_selftest_proves_the_real_path_at_start_and_on_demand() {
    if !kernel_tests_allowed("selftest") {
        return;
    }
    let _serial = serial();
    let sensor = Sensor::start("selftest", "127.66.9.0/24\n", &["--selftest"]);
    sensor.wait_log("self-test #1 passed", 1, Duration::from_secs(15));
    let addr = endpoint(&sensor);
    assert_eq!(http_get(addr, "/readyz"), (200, "ok\n".into()));
    // Both alerts, naming the sensor's own process, from the canary feed;
    // the connection ran in a namespace of its own, on a documentation
    // address that never left it.
    let ours = |d: &Value| get(d, "threat.feed.name") == "torsensor-selftest";
    sensor.expect_alert("the canary's egress alert", |d| {
        ours(d) && get(d, "network.direction") == "egress"
    });
    let ingress = sensor.expect_alert("the canary's ingress alert", |d| {
        ours(d) && get(d, "network.direction") == "ingress"
    });
    assert_eq!(get(&ingress, "process.pid"), &Value::from(sensor.pid()));
    let canary = get(&ingress, "source.ip").as_str().unwrap().to_owned();
    assert!(canary.starts_with("198.51.100."), "{canary}");
    // The canary is gone from the kernel maps again: one prefix, the feed's.
    let text = wait_sample(addr, "torsensor_ready", 1.0);
    assert_eq!(
        sample(&text, "torsensor_kernel_map_entries{map=\"prefixes\"}"),
        Some(1.0),
        "{text}"
    );

    // On demand, from a shell: SIGUSR1 and the answer from status.json.
    let out = Command::new(BIN)
        .args([
            "selftest",
            "--state-dir",
            sensor.state_dir.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.starts_with("selftest PASSED: egress and ingress alerts for "),
        "{text}"
    );
    assert!(
        text.contains("in a private network namespace; inbound plan "),
        "{text}"
    );
    let status: Value =
        serde_json::from_slice(&std::fs::read(sensor.state_dir.join("status.json")).unwrap())
            .unwrap();
    assert_eq!(status["selftest"]["seq"], 2);
    assert_eq!(status["selftest"]["passed"], true);
    let (exit, _, stderr) = sensor.stop();
    assert!(exit.success(), "{stderr}");
    assert!(!stderr.contains("FAILED"), "{stderr}");
}
