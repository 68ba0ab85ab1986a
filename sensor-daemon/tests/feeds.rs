//! Live feeds with the real kernel: relay ORPort matching, start-up from the
//! cache and from the embedded snapshot without network, and gapless
//! refreshes under a tight connect loop. Feeds come from a real HTTP server
//! on loopback; every connection goes to 127.66.0.0/16.

mod common;

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::http::{Behavior, FeedServer};
use common::{BIN, Sensor, connect_from, get, kernel_tests_allowed, listen, serial, temp_path};
use serde_json::{Value, json};

fn fp(n: usize) -> String {
    format!("{n:040X}")
}

/// A TorDNSEL exit list naming `addrs`, one exit each.
fn tordnsel(addrs: &[String]) -> String {
    addrs
        .iter()
        .enumerate()
        .map(|(i, a)| {
            format!(
                "ExitNode {}\nPublished 2026-11-24 09:00:00\nLastStatus 2026-11-24 10:00:00\nExitAddress {a} 2026-11-24 10:05:00\n",
                fp(i + 1)
            )
        })
        .collect()
}

/// A config file with one feed per `(name, url)`, refreshing without
/// jitter so that tests do not wait.
fn config(tag: &str, feeds: &[(&str, String)]) -> (PathBuf, PathBuf) {
    let state = temp_path(&format!("state-{tag}"));
    let _ = std::fs::remove_dir_all(&state);
    let mut text = String::from("allow_reserved = true\n");
    for (name, url) in feeds {
        text.push_str(&format!(
            "[[feed]]\nname = \"{name}\"\nlocation = \"{url}\"\njitter = \"0s\"\n"
        ));
    }
    let path = temp_path(&format!("{tag}.toml"));
    std::fs::write(&path, text).unwrap();
    (path, state)
}

fn start(config: &Path, state: &Path, extra: &[&str]) -> Sensor {
    // Each connection is checked on its own here: no aggregation.
    let mut args = vec![
        "run",
        "--config",
        config.to_str().unwrap(),
        "--state-dir",
        state.to_str().unwrap(),
        "--aggregation-window",
        "0s",
    ];
    args.extend_from_slice(extra);
    Sensor::start_args(&args, config.to_owned())
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn has_alert_to(sensor: &Sensor, to: SocketAddr) -> bool {
    sensor.alerts().iter().any(|a| {
        get(a, "destination.ip") == &json!(to.ip().to_string())
            && get(a, "destination.port") == &json!(to.port())
    })
}

/// Connects and waits for the egress alert to `to`.
fn expect_egress(sensor: &Sensor, to: SocketAddr) -> Value {
    let _c = TcpStream::connect(to).unwrap();
    sensor.expect_alert(&format!("egress alert to {to}"), |a| {
        get(a, "destination.ip") == &json!(to.ip().to_string())
            && get(a, "destination.port") == &json!(to.port())
    })
}

fn status(state: &Path) -> String {
    let out = Command::new(BIN)
        .args(["feed", "status", "--state-dir", state.to_str().unwrap()])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn relay_orport_matches_only_outbound_on_the_orport() {
    if !kernel_tests_allowed("relay_orport") {
        return;
    }
    let _serial = serial();
    let orport = listen(addr("127.66.20.1:0"), false);
    let other = listen(addr("127.66.20.1:0"), false);
    let or_addr = orport.local_addr().unwrap();
    let other_addr = other.local_addr().unwrap();
    let server = FeedServer::start();
    server.serve(
        "/details",
        format!(
            r#"{{"version":"8.0","relays_published":"2026-11-24 10:00:00","relays":[
{{"nickname":"labGuard","fingerprint":"{}","or_addresses":["{or_addr}","[2001:db8::20]:443"],"flags":["Guard","Running","Valid"],"last_seen":"2026-11-24 10:00:00"}},
{{"nickname":"labMiddle","fingerprint":"{}","or_addresses":["{or_addr}"],"flags":["Running"]}}]}}"#,
            fp(0xA1),
            fp(0xB2)
        )
        .as_bytes(),
    );
    let (cfg, state) = config("relay", &[("lab-relays", server.url("/details"))]);
    let stats = temp_path("relay-stats.json");
    let sensor = start(&cfg, &state, &["--stats-file", stats.to_str().unwrap()]);
    sensor.wait_log("feed lab-relays: refreshed", 1, Duration::from_secs(10));

    let doc = expect_egress(&sensor, or_addr);
    assert_eq!(get(&doc, "rule.id"), "TORSENSOR-001");
    assert_eq!(get(&doc, "torsensor.tor.roles"), &json!(["relay"]));
    assert_eq!(get(&doc, "torsensor.tor.confidence"), "high");
    assert_eq!(get(&doc, "torsensor.tor.or_port"), &json!(or_addr.port()));
    assert_eq!(get(&doc, "torsensor.tor.relay_count"), 2);
    assert_eq!(
        get(&doc, "torsensor.tor.relays"),
        &json!([
            {"fingerprint": fp(0xA1), "nickname": "labGuard"},
            {"fingerprint": fp(0xB2), "nickname": "labMiddle"},
        ])
    );
    assert_eq!(get(&doc, "torsensor.matches.0.name"), "lab-relays");
    assert_eq!(
        get(&doc, "torsensor.matches.0.version"),
        "2026-11-24T10:00:00Z"
    );
    assert_eq!(get(&doc, "torsensor.matches.0.origin"), "network");
    assert_eq!(
        get(&doc, "threat.enrichments.0.indicator.port"),
        &json!(or_addr.port())
    );

    // Same address, another port: not the ORPort, no alert. Inbound from
    // the relay address: a relay is not an exit, no alert. The next alert
    // to the ORPort proves both events would have been read by then.
    drop(TcpStream::connect(other_addr).unwrap());
    let local = listen(addr("127.0.0.1:0"), false);
    let inbound = connect_from(addr("127.66.20.1:0"), local.local_addr().unwrap());
    let _accepted = local.accept().unwrap();
    let from = inbound.local_addr().unwrap();
    let second = TcpStream::connect(or_addr).unwrap();
    let second_port = second.local_addr().unwrap().port();
    sensor.expect_alert("second ORPort alert", |a| {
        get(a, "source.port") == &json!(second_port)
    });
    assert!(!has_alert_to(&sensor, other_addr), "{:#?}", sensor.alerts());
    assert!(
        !sensor
            .alerts()
            .iter()
            .any(|a| get(a, "source.port") == &json!(from.port())),
        "inbound from a relay-only address alerted"
    );
    let (status, _, _) = sensor.stop();
    assert!(status.success());
    let stats: Value = serde_json::from_slice(&std::fs::read(&stats).unwrap()).unwrap();
    assert!(
        stats["kernel"]["relay_other_port"].as_u64().unwrap() >= 1,
        "{stats}"
    );
}

#[test]
fn starts_from_the_cache_without_network_and_from_the_embedded_snapshot_without_either() {
    if !kernel_tests_allowed("cache_start") {
        return;
    }
    let _serial = serial();
    let exit = listen(addr("127.66.30.1:0"), false);
    let exit_addr = exit.local_addr().unwrap();
    let server = FeedServer::start();
    server.serve(
        "/exit-addresses",
        tordnsel(&["127.66.30.1".into(), "127.66.30.2".into()]).as_bytes(),
    );
    let (cfg, state) = config("cache", &[("lab-exits", server.url("/exit-addresses"))]);
    let out = Command::new(BIN)
        .args(["feed", "fetch", "--config", cfg.to_str().unwrap()])
        .args(["--state-dir", state.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(state.join("feeds/lab-exits.cache").exists());
    // The network goes away: nothing listens on the feed's port any more.
    drop(server);

    let spawned = Instant::now();
    let sensor = start(&cfg, &state, &[]);
    let armed_after = spawned.elapsed();
    let log = sensor.stderr();
    let cached = log
        .find("feed lab-exits loaded from cache")
        .expect("loaded from the cache");
    assert!(cached < log.find("torsensor armed").unwrap(), "{log}");
    eprintln!("armed from the cache {armed_after:?} after spawn (no network)");
    let doc = expect_egress(&sensor, exit_addr);
    assert_eq!(get(&doc, "torsensor.matches.0.origin"), "cache");
    assert_eq!(
        get(&doc, "torsensor.tor.exit_last_seen"),
        "2026-11-24T10:05:00Z"
    );
    assert_eq!(get(&doc, "rule.id"), "TORSENSOR-003");
    // The cache is fresh, so no fetch is due for an hour; SIGHUP forces
    // one. It fails (connection refused) and the cached set stays armed.
    assert!(!sensor.stderr().contains("refresh rejected"));
    sensor.signal(libc::SIGHUP);
    sensor.wait_log(
        "feed lab-exits: refresh rejected, keeping the current content",
        1,
        Duration::from_secs(10),
    );
    let second = TcpStream::connect(exit_addr).unwrap();
    let port = second.local_addr().unwrap().port();
    sensor.expect_alert("alert after the failed refresh", |a| {
        get(a, "source.port") == &json!(port)
    });
    let st = status(&state);
    assert!(st.contains("lab-exits\tloaded"), "{st}");
    assert!(
        st.contains("origin=cache format=tordnsel version=2026-11-24T10:05:00Z"),
        "{st}"
    );
    assert!(st.contains("last error (1 failures in a row)"), "{st}");
    assert!(st.contains("(running)"), "{st}");
    let (status_code, _, _) = sensor.stop();
    assert!(status_code.success());

    // Neither cache nor network: the embedded snapshot.
    let _ = std::fs::remove_dir_all(&state);
    let sensor = start(&cfg, &state, &[]);
    let log = sensor.stderr();
    assert!(
        log.contains("using the embedded snapshot until a refresh succeeds"),
        "{log}"
    );
    assert!(
        log.contains("feed embedded-tor-exits loaded from the embedded snapshot"),
        "{log}"
    );
    assert!(
        log.contains("feed embedded-tor-relays loaded from the embedded snapshot"),
        "{log}"
    );
    let st = status(&state);
    assert!(st.contains("EMBEDDED SNAPSHOT in use"), "{st}");
    assert!(st.contains("lab-exits\tEMPTY"), "{st}");
    assert!(st.contains("embedded-tor-relays\tloaded\tembedded\torigin=embedded format=onionoo version=2024-03-12T11:00:00Z"), "{st}");
    // Nothing from the lab list is armed.
    drop(TcpStream::connect(exit_addr).unwrap());
    std::thread::sleep(Duration::from_millis(300));
    assert!(!has_alert_to(&sensor, exit_addr));
    sensor.stop();
}

#[test]
fn refreshes_are_gapless_under_a_tight_connect_loop() {
    if !kernel_tests_allowed("gapless") {
        return;
    }
    let _serial = serial();
    let target = listen(addr("127.66.40.1:0"), false);
    let target_addr = target.local_addr().unwrap();
    let only_a = listen(addr("127.66.41.1:0"), false);
    let only_b = listen(addr("127.66.42.1:0"), false);
    for l in [&target, &only_a, &only_b] {
        let l = l.try_clone().unwrap();
        std::thread::spawn(move || {
            for c in l.incoming() {
                drop(c);
            }
        });
    }
    // Two versions of similar size: the target in both, 200 others that
    // differ, so each refresh adds 200 entries and removes 200.
    let version = |net: u8| {
        let mut addrs = vec!["127.66.40.1".to_owned()];
        addrs.extend((1..=200).map(|i| format!("127.66.{net}.{i}")));
        tordnsel(&addrs).into_bytes()
    };
    let server = FeedServer::start();
    server.set(
        "/exit-addresses",
        Behavior::Cycle {
            bodies: vec![version(41), version(42)],
            next: 0,
        },
    );
    let (cfg, state) = config("gapless", &[("lab-exits", server.url("/exit-addresses"))]);
    let sensor = start(&cfg, &state, &[]);
    sensor.wait_log("feed lab-exits: refreshed", 1, Duration::from_secs(10));

    let stop = Arc::new(AtomicBool::new(false));
    let ports = Arc::new(Mutex::new(Vec::new()));
    // A pause between connections where the machine is too slow for a
    // tight loop to leave the daemon any time (the emulated VMs of
    // `cargo xtask vm-test` set it); the loop still runs through every
    // refresh.
    let pause = std::env::var("TORSENSOR_TEST_PACE_MS")
        .ok()
        .and_then(|ms| ms.parse().ok())
        .map(Duration::from_millis);
    let client = {
        let (stop, ports) = (stop.clone(), ports.clone());
        std::thread::spawn(move || {
            // Bounded in count and time.
            let started = Instant::now();
            while !stop.load(Ordering::SeqCst)
                && ports.lock().unwrap().len() < 20_000
                && started.elapsed() < Duration::from_secs(30)
            {
                let c = TcpStream::connect(target_addr).unwrap();
                ports.lock().unwrap().push(c.local_addr().unwrap().port());
                if let Some(pause) = pause {
                    std::thread::sleep(pause);
                }
            }
        })
    };
    const REFRESHES: usize = 6;
    for i in 0..REFRESHES {
        // Connections keep coming around every switch, however fast the
        // machine: at least 20 new ones before each SIGHUP.
        let before = ports.lock().unwrap().len();
        let deadline = Instant::now() + Duration::from_secs(10);
        while ports.lock().unwrap().len() < before + 20 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        sensor.signal(libc::SIGHUP);
        sensor.wait_log("feed lab-exits: refreshed", i + 2, Duration::from_secs(10));
    }
    stop.store(true, Ordering::SeqCst);
    client.join().unwrap();
    let ports = ports.lock().unwrap().clone();
    assert!(ports.len() > 100, "only {} connections", ports.len());
    let applied = sensor.stderr().matches("feed lab-exits: refreshed").count();
    eprintln!(
        "{} connections during {} applied refreshes",
        ports.len(),
        applied
    );

    // Every connection alerted: none fell into a gap.
    let deadline = Instant::now() + Duration::from_secs(30);
    let missing = loop {
        let seen: std::collections::HashSet<u64> = sensor
            .alerts()
            .iter()
            .filter(|a| get(a, "destination.port") == &json!(target_addr.port()))
            .filter_map(|a| get(a, "source.port").as_u64())
            .collect();
        let missing: Vec<u16> = ports
            .iter()
            .copied()
            .filter(|p| !seen.contains(&u64::from(*p)))
            .collect();
        if missing.is_empty() || Instant::now() > deadline {
            break missing;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        missing.is_empty(),
        "{} of {} connections not alerted (first: {:?})",
        missing.len(),
        ports.len(),
        &missing[..missing.len().min(10)]
    );

    // Additions and removals took effect: only the version served last
    // matches its own addresses.
    let served = server
        .seen()
        .iter()
        .filter(|s| s.path == "/exit-addresses" && s.status == 200)
        .count();
    let (listed, unlisted) = if served % 2 == 1 {
        (only_a.local_addr().unwrap(), only_b.local_addr().unwrap())
    } else {
        (only_b.local_addr().unwrap(), only_a.local_addr().unwrap())
    };
    drop(TcpStream::connect(unlisted).unwrap());
    expect_egress(&sensor, listed);
    assert!(!has_alert_to(&sensor, unlisted));
    let (status_code, _, stderr) = sensor.stop();
    assert!(status_code.success(), "{stderr}");
    assert!(stderr.contains("lost_ringbuf=0 lost_pending=0"), "{stderr}");
}
