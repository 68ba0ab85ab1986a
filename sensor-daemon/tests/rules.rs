//! Rules a SOC tunes, with the real sensor and real connections (root): an
//! exception in the operator's rules directory keeps this process's
//! connections from alerting while another process's alert; every shipped
//! rule fires and is excepted; SIGHUP reloads the rules, and a bad file
//! keeps the running ones.

mod common;

use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use common::{Sensor, get, kernel_tests_allowed, listen, own_comm, serial, temp_path};
use serde_json::{Value, json};

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// An outbound connection from `bash` (another process than this one).
fn bash_connect(to: SocketAddr) {
    let status = Command::new("bash")
        .arg("-c")
        .arg(format!("exec 3<>/dev/tcp/{}/{}", to.ip(), to.port()))
        .status()
        .unwrap();
    assert!(status.success());
}

fn read_status(sensor: &Sensor) -> Value {
    let text = std::fs::read_to_string(sensor.state_dir.join("status.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn an_exception_excepts_this_process_and_sighup_reloads_the_rules() {
    if !kernel_tests_allowed("rules") {
        return;
    }
    let _serial = serial();
    let dir = temp_path("rules.d");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let comm = own_comm();
    let local = dir.join("10-local.toml");
    std::fs::write(
        &local,
        format!(
            "[[rule]]\nid = \"TORSENSOR-003\"\n[[rule.except]]\nreason = \"the test itself\"\nwhen = {{ process = [{comm:?}] }}\n"
        ),
    )
    .unwrap();
    let dir_arg = dir.to_str().unwrap();
    let sensor = Sensor::start(
        "rules",
        "127.66.70.1\n",
        &[
            "--rules-dir",
            dir_arg,
            "--aggregation-window",
            "0s",
            "--health-interval-secs",
            "1",
        ],
    );
    // The local file only adds an exception: every shipped rule is
    // enabled.
    let enabled = format!("rules: {} enabled", shipped_rules());
    sensor.wait_log(&enabled, 1, Duration::from_secs(1));
    let server = listen(addr("127.66.70.1:0"), false);
    let to = server.local_addr().unwrap();

    // This process: excepted. bash: alerted, under TORSENSOR-003.
    let own = TcpStream::connect(to).unwrap();
    let own_port = own.local_addr().unwrap().port();
    bash_connect(to);
    let alert = sensor.expect_alert("bash's connection", |a| get(a, "process.name") == "bash");
    assert_eq!(get(&alert, "rule.id"), "TORSENSOR-003");
    assert_eq!(get(&alert, "rule.ruleset"), "torsensor-builtin");
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !sensor
            .alerts()
            .iter()
            .any(|a| get(a, "source.port") == &json!(own_port)),
        "the excepted connection alerted"
    );
    // The exception is counted (status.json, written on the next health
    // tick once the counts changed).
    let at = format!("{}:3", local.display());
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let status = read_status(&sensor);
        let hits = &status["rules"]["rules"]["TORSENSOR-003"]["excepted"][&at];
        if hits.as_u64().is_some_and(|n| n >= 1) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{status:#}");
        std::thread::sleep(Duration::from_millis(200));
    }

    // A bad file: the running rules stay, and the log says so.
    std::fs::write(
        dir.join("20-bad.toml"),
        "[[rule]]\nid = \"TORSENSOR-003\"\nenabeld = false\n",
    )
    .unwrap();
    sensor.signal(libc::SIGHUP);
    sensor.wait_log(
        "SIGHUP: keeping the running rules: rules file",
        1,
        Duration::from_secs(5),
    );
    assert!(
        sensor
            .stderr()
            .contains("20-bad.toml:3:1: unknown field `enabeld`")
    );
    let again = TcpStream::connect(to).unwrap();
    let again_port = again.local_addr().unwrap().port();
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !sensor
            .alerts()
            .iter()
            .any(|a| get(a, "source.port") == &json!(again_port)),
        "the exception stopped applying after a rejected reload"
    );

    // Fixed, and the exception removed: this process alerts now, without
    // a restart.
    std::fs::remove_file(dir.join("20-bad.toml")).unwrap();
    std::fs::remove_file(&local).unwrap();
    sensor.signal(libc::SIGHUP);
    sensor.wait_log(&enabled, 2, Duration::from_secs(5));
    let now_alerted = TcpStream::connect(to).unwrap();
    let port = now_alerted.local_addr().unwrap().port();
    let alert = sensor.expect_alert("this process after the reload", |a| {
        get(a, "source.port") == &json!(port)
    });
    assert_eq!(get(&alert, "process.name"), &json!(comm));
    let (status, _, stderr) = sensor.stop();
    assert!(status.success(), "{stderr}");
}

/// Every shipped rule fires on a real connection, and an exception
/// excepts each.
#[test]
fn every_shipped_rule_fires_and_is_excepted() {
    if !kernel_tests_allowed("rules-shipped") {
        return;
    }
    let _serial = serial();
    let dir = temp_path("rules-shipped.d");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // A lab relay list (OR address and ORPort) and an exit address.
    let relays = temp_path("rules-relays.json");
    std::fs::write(
        &relays,
        r#"{"relays_published":"2026-11-24 20:00:00","relays":[{"nickname":"lab","fingerprint":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA","or_addresses":["127.66.71.1:9001"]}]}"#,
    )
    .unwrap();
    let relay_listener = listen(addr("127.66.71.1:9001"), false);
    let socks_listener = listen(addr("127.0.0.1:9150"), false);
    let exit_listener = listen(addr("127.66.71.2:0"), false);
    let exit_to = exit_listener.local_addr().unwrap();
    // Inbound: a server on a local address, a client bound to the exit
    // address.
    let server = listen(addr("127.0.0.1:0"), false);
    let inbound_to = server.local_addr().unwrap();
    let run = |excepted: bool| {
        let text = if excepted {
            ["TORSENSOR-001", "TORSENSOR-002", "TORSENSOR-003", "TORSENSOR-004"]
                .iter()
                .map(|id| {
                    format!(
                        "[[rule]]\nid = \"{id}\"\n[[rule.except]]\nreason = \"test\"\nwhen = {{ process = [\"bash\", {:?}] }}\n",
                        own_comm()
                    )
                })
                .collect::<String>()
        } else {
            String::new()
        };
        std::fs::write(dir.join("10.toml"), text).unwrap();
        let relays_arg = relays.to_str().unwrap();
        let sensor = Sensor::start(
            "rules-shipped",
            "127.66.71.2\n",
            &[
                "--feed",
                relays_arg,
                "--tor-socks-port",
                "127.0.0.1:9150",
                "--rules-dir",
                dir.to_str().unwrap(),
                "--aggregation-window",
                "0s",
            ],
        );
        bash_connect(addr("127.66.71.1:9001"));
        bash_connect(exit_to);
        // Tor Browser's SOCKS port (--tor-socks-port).
        bash_connect(addr("127.0.0.1:9150"));
        let client = common::connect_from(addr("127.66.71.2:0"), inbound_to);
        let (accepted, _) = server.accept().unwrap();
        drop((client, accepted));
        std::thread::sleep(Duration::from_millis(800));
        let (status, _, stderr, alerts) = sensor.stop_collect();
        assert!(status.success(), "{stderr}");
        let mut ids: Vec<String> = alerts
            .iter()
            .filter_map(|a| get(a, "rule.id").as_str().map(str::to_owned))
            .collect();
        ids.sort();
        ids.dedup();
        ids
    };
    assert_eq!(
        run(false),
        [
            "TORSENSOR-001",
            "TORSENSOR-002",
            "TORSENSOR-003",
            "TORSENSOR-004"
        ]
    );
    assert!(run(true).is_empty(), "every shipped rule excepted");
    drop((relay_listener, socks_listener));
}

/// The rules `rules/tor.toml` ships (each issue adds its own).
fn shipped_rules() -> usize {
    include_str!("../../rules/tor.toml")
        .matches("\n[[rule]]\n")
        .count()
}
