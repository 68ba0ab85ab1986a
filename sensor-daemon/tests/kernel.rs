//! Real-kernel tests: start the real sensor, make real connections, check the
//! exact alert fields. They need root; under CI=true they never skip.

mod common;

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// Checks the fields every alert must carry, for a connection with the given
/// initiator (source) and responder (destination).
fn assert_alert(doc: &Value, direction: &str, source: SocketAddr, destination: SocketAddr) {
    assert_eq!(get(doc, "event.kind"), "alert", "{doc:#}");
    assert_eq!(
        get(doc, "event.category"),
        &json!(["network", "intrusion_detection"])
    );
    assert_eq!(get(doc, "event.type"), &json!(["connection", "allowed"]));
    assert_eq!(get(doc, "network.direction"), direction);
    assert_eq!(get(doc, "network.transport"), "tcp");
    let family = if source.is_ipv4() { "ipv4" } else { "ipv6" };
    assert_eq!(get(doc, "network.type"), family);
    assert_eq!(get(doc, "source.ip"), &json!(source.ip().to_string()));
    assert_eq!(get(doc, "source.port"), &json!(source.port()));
    assert_eq!(
        get(doc, "destination.ip"),
        &json!(destination.ip().to_string())
    );
    assert_eq!(get(doc, "destination.port"), &json!(destination.port()));
    let peer = if direction == "egress" {
        destination
    } else {
        source
    };
    assert_eq!(
        get(doc, "threat.enrichments.0.indicator.ip"),
        &json!(peer.ip().to_string())
    );
    // Plain lists are exit lists: outbound matches are TORSENSOR-003
    // (relay ORPort matches, TORSENSOR-001, are tested in tests/feeds.rs).
    let rule = if direction == "egress" {
        "TORSENSOR-003"
    } else {
        "TORSENSOR-002"
    };
    assert_eq!(get(doc, "rule.id"), rule);
    assert!(
        get(doc, "rule.name")
            .as_str()
            .is_some_and(|n| !n.is_empty())
    );
    assert!(
        get(doc, "host.name")
            .as_str()
            .is_some_and(|n| !n.is_empty())
    );
    assert!(
        get(doc, "@timestamp")
            .as_str()
            .is_some_and(|t| t.ends_with('Z'))
    );
    assert_eq!(get(doc, "user.id"), "0");
}

/// The alert was raised by this test process, from thread `tid`.
fn assert_own_process(doc: &Value, tid: u32) {
    assert_eq!(
        get(doc, "process.pid"),
        &json!(std::process::id()),
        "{doc:#}"
    );
    assert_eq!(get(doc, "process.thread.id"), &json!(tid));
    assert_eq!(get(doc, "process.name"), &json!(own_comm()));
    let exe = std::env::current_exe().unwrap();
    assert_eq!(
        get(doc, "process.executable"),
        &json!(exe.to_str().unwrap())
    );
    let cmdline = get(doc, "process.command_line").as_str().unwrap();
    assert!(
        cmdline.starts_with(exe.to_str().unwrap()) || cmdline.contains("kernel-"),
        "{cmdline}"
    );
}

fn alert_for(sensor: &Sensor, direction: &str, peer_field: &str, peer: SocketAddr) -> Value {
    let (dir, field, ip, port) = (
        direction.to_owned(),
        peer_field.to_owned(),
        peer.ip().to_string(),
        peer.port(),
    );
    sensor.expect_alert(&format!("{direction} alert for {peer}"), move |a| {
        get(a, "network.direction") == dir.as_str()
            && get(a, &format!("{field}.ip")) == ip.as_str()
            && get(a, &format!("{field}.port")) == &json!(port)
    })
}

/// Connects from this thread to a server listening on `listen_on` and
/// returns the egress alert with the connection's (from, to).
fn outbound_case(sensor: &Sensor, listen_on: &str) -> (Value, SocketAddr, SocketAddr) {
    let server = listen(addr(listen_on), false);
    let to = server.local_addr().unwrap();
    let client = TcpStream::connect(to).unwrap();
    let from = client.local_addr().unwrap();
    let _accepted = server.accept().unwrap();
    (alert_for(sensor, "egress", "destination", to), from, to)
}

#[test]
fn outbound_ipv4_to_listed_address_names_the_process() {
    if !kernel_tests_allowed("outbound_ipv4") {
        return;
    }
    let _serial = serial();
    let sensor = Sensor::start("outbound4", "127.66.1.1\n", &[]);
    let (doc, from, to) = outbound_case(&sensor, "127.66.1.1:0");
    assert_alert(&doc, "egress", from, to);
    assert_own_process(&doc, gettid());
    assert_eq!(get(&doc, "event.action"), "tor-connection-outbound");
    assert_eq!(get(&doc, "event.outcome"), "success");
    assert_eq!(get(&doc, "threat.feed.name"), "outbound4.feed");
    assert_eq!(
        get(&doc, "threat.enrichments.0.matched.field"),
        "destination.ip"
    );
    assert_eq!(get(&doc, "torsensor.matches.0.prefix"), "127.66.1.1/32");
    assert_eq!(get(&doc, "torsensor.v4_mapped"), false);
}

/// Runs `accept` in a thread of its own and returns the alert for the
/// connection a client makes from `from`, with the accepting thread's id.
fn inbound_case(
    sensor: &Sensor,
    listen_on: &str,
    from: &str,
    accept: fn(&std::net::TcpListener),
) -> (Value, SocketAddr, SocketAddr, u32) {
    let server = listen(addr(listen_on), false);
    let to = server.local_addr().unwrap();
    let (tx, rx) = mpsc::channel();
    let acceptor = std::thread::spawn(move || {
        tx.send(gettid()).unwrap();
        accept(&server);
    });
    let server_tid = rx.recv().unwrap();
    let client = connect_from(addr(from), to);
    let from = client.local_addr().unwrap();
    acceptor.join().unwrap();
    let doc = alert_for(sensor, "ingress", "source", from);
    (doc, from, to, server_tid)
}

#[test]
fn inbound_ipv4_accept_with_null_address_names_the_acceptor() {
    if !kernel_tests_allowed("inbound_ipv4_null") {
        return;
    }
    let _serial = serial();
    let sensor = Sensor::start("inbound4null", "127.66.2.0/24\n", &[]);
    let (doc, from, to, tid) = inbound_case(&sensor, "127.0.0.1:0", "127.66.2.7:0", |l| {
        drop(accept_null(l));
    });
    assert_alert(&doc, "ingress", from, to);
    assert_own_process(&doc, tid);
    assert_eq!(get(&doc, "event.action"), "tor-connection-inbound");
    assert_eq!(get(&doc, "threat.enrichments.0.matched.field"), "source.ip");
    assert_eq!(get(&doc, "torsensor.matches.0.prefix"), "127.66.2.0/24");
}

#[test]
fn inbound_ipv4_accept4_with_address_buffer_names_the_acceptor() {
    if !kernel_tests_allowed("inbound_ipv4_buffer") {
        return;
    }
    let _serial = serial();
    let sensor = Sensor::start("inbound4buf", "127.66.3.3\n", &[]);
    let (doc, from, to, tid) = inbound_case(&sensor, "127.0.0.1:0", "127.66.3.3:0", |l| {
        let (fd, port) = accept4_with_addr(l);
        assert_ne!(port, 0);
        drop(fd);
    });
    assert_alert(&doc, "ingress", from, to);
    assert_own_process(&doc, tid);
}

#[test]
fn inbound_is_attributed_at_the_first_write_while_the_connection_stays_open() {
    if !kernel_tests_allowed("inbound_first_write") {
        return;
    }
    let _serial = serial();
    let sensor = Sensor::start("inbound-write", "127.66.4.4\n", &[]);
    let server = listen(addr("127.0.0.1:0"), false);
    let to = server.local_addr().unwrap();
    // One thread accepts and hands the socket to another, which writes: the
    // writer is the process (and thread) that used the connection.
    let (fd_tx, fd_rx) = mpsc::channel::<std::os::fd::OwnedFd>();
    let (tid_tx, tid_rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let acceptor = std::thread::spawn(move || fd_tx.send(accept_null(&server)).unwrap());
    let writer = std::thread::spawn(move || {
        let fd = fd_rx.recv().unwrap();
        tid_tx.send(gettid()).unwrap();
        let mut stream = TcpStream::from(fd);
        std::io::Write::write_all(&mut stream, b"banner\n").unwrap();
        // Keep the connection open until the alert has been checked.
        done_rx.recv().unwrap();
    });
    let mut client = connect_from(addr("127.66.4.4:0"), to);
    let from = client.local_addr().unwrap();
    acceptor.join().unwrap();
    let writer_tid = tid_rx.recv().unwrap();
    let mut banner = [0u8; 7];
    client.read_exact(&mut banner).unwrap();
    let doc = alert_for(&sensor, "ingress", "source", from);
    assert_alert(&doc, "ingress", from, to);
    assert_own_process(&doc, writer_tid);
    assert_eq!(get(&doc, "torsensor.attribution"), "first-use");
    done_tx.send(()).unwrap();
    writer.join().unwrap();
}

#[test]
fn inbound_connection_nobody_accepts_is_reported_without_a_process_after_the_wait() {
    if !kernel_tests_allowed("inbound_never_accepted") {
        return;
    }
    let _serial = serial();
    let sensor = Sensor::start("inbound-wait", "127.66.4.5\n", &["--inbound-wait", "300ms"]);
    // A listener that never accepts: the connection completes in the
    // kernel's accept queue and no process ever touches it.
    let server = listen(addr("127.0.0.1:0"), false);
    let to = server.local_addr().unwrap();
    let client = connect_from(addr("127.66.4.5:0"), to);
    let from = client.local_addr().unwrap();
    let connected = Instant::now();
    let doc = alert_for(&sensor, "ingress", "source", from);
    // Sent after the wait, while the connection is still open.
    assert!(connected.elapsed() >= Duration::from_millis(250), "{doc:#}");
    assert_eq!(get(&doc, "source.ip"), &json!(from.ip().to_string()));
    assert_eq!(get(&doc, "destination.port"), &json!(to.port()));
    assert_eq!(get(&doc, "rule.id"), "TORSENSOR-002");
    assert_eq!(get(&doc, "torsensor.attribution"), "none");
    assert_eq!(get(&doc, "torsensor.process_unknown"), &json!(true));
    assert!(doc.get("process").is_none(), "{doc:#}");
    drop(client);
    drop(server);
    let (status, _, stderr) = sensor.stop();
    assert!(status.success(), "{stderr}");
}

#[test]
fn churn_while_the_sweep_takes_entries_loses_and_repeats_nothing() {
    if !kernel_tests_allowed("churn_with_sweep") {
        return;
    }
    let _serial = serial();
    // Both ends listed: every connection is one egress and one ingress hit.
    // With a 100 ms wait the daemon sweeps every 50 ms while the programs
    // insert and take entries of the same maps, and every 50th connection
    // is never accepted, so the sweep really removes entries as it goes.
    let sensor = Sensor::start(
        "churn",
        "127.66.13.0/24\n",
        &["--inbound-wait", "100ms", "--aggregation-window", "0s"],
    );
    let server = listen(addr("127.66.13.1:0"), false);
    let idle = listen(addr("127.66.13.1:0"), false);
    let (to, to_idle) = (server.local_addr().unwrap(), idle.local_addr().unwrap());
    let from = addr("127.66.13.2:0");
    let mut ports = std::collections::BTreeSet::new();
    let mut never_accepted = Vec::new();
    let start = Instant::now();
    let mut n = 0usize;
    // Bounded in time and count; at most 100 wait in the idle backlog.
    while start.elapsed() < Duration::from_millis(1500) && n < 5000 {
        n += 1;
        let idle_one = n.is_multiple_of(50);
        let c = if idle_one {
            connect_from(from, to_idle)
        } else {
            connect_from(from, to)
        };
        ports.insert(c.local_addr().unwrap().port());
        if idle_one {
            never_accepted.push(c);
        } else {
            let (a, _) = server.accept().unwrap();
            drop((c, a));
        }
    }
    assert_eq!(ports.len(), n, "client ports are unique within the run");
    sensor.expect_count(2 * n, Duration::from_secs(20));
    // Time for a wrongly repeated alert to show up too.
    std::thread::sleep(Duration::from_millis(300));
    drop(never_accepted);
    let (status, _, stderr, alerts) = sensor.stop_collect();
    assert!(status.success(), "{stderr}");
    let mut seen = std::collections::BTreeMap::new();
    for a in &alerts {
        let direction = get(a, "network.direction").as_str().unwrap().to_owned();
        let port = get(a, "source.port").as_u64().unwrap() as u16;
        *seen.entry((direction, port)).or_insert(0u32) += 1;
    }
    for port in &ports {
        for direction in ["egress", "ingress"] {
            let times = seen
                .get(&(direction.to_owned(), *port))
                .copied()
                .unwrap_or(0);
            assert_eq!(
                times, 1,
                "{direction} alert for client port {port}, of {n} connections"
            );
        }
    }
    assert_eq!(alerts.len(), 2 * n, "nothing but these alerts");
    let unattributed = alerts
        .iter()
        .filter(|a| get(a, "torsensor.attribution") == "none")
        .count();
    assert!(
        unattributed >= n / 50,
        "the never-accepted connections are reported without a process: {unattributed}"
    );
}

#[test]
fn ipv6_between_network_namespaces_both_directions() {
    if !kernel_tests_allowed("ipv6_netns") {
        return;
    }
    let _serial = serial();
    let ns = std::sync::Arc::new(NetNs::new("a", "2001:db8:77::1", "2001:db8:77::2"));
    let sensor = Sensor::start("ipv6", "2001:db8:77::2\n", &[]);

    // Outbound: this host connects to a server inside the namespace.
    let (tx, rx) = mpsc::channel();
    let ns2 = ns.clone();
    let server = std::thread::spawn(move || {
        ns2.enter();
        let l = listen(addr("[2001:db8:77::2]:0"), false);
        tx.send(l.local_addr().unwrap()).unwrap();
        drop(l.accept().unwrap());
    });
    let to = rx.recv().unwrap();
    let client = TcpStream::connect_timeout(&to, Duration::from_secs(5)).unwrap();
    let from = client.local_addr().unwrap();
    server.join().unwrap();
    let doc = alert_for(&sensor, "egress", "destination", to);
    assert_alert(&doc, "egress", from, to);
    assert_own_process(&doc, gettid());
    assert_eq!(get(&doc, "network.type"), "ipv6");
    assert_eq!(
        get(&doc, "threat.enrichments.0.indicator.type"),
        "ipv6-addr"
    );

    // Inbound: a client inside the namespace connects to a server here.
    let listener = listen(addr("[2001:db8:77::1]:0"), false);
    let to = listener.local_addr().unwrap();
    let ns3 = ns.clone();
    let client = std::thread::spawn(move || {
        ns3.enter();
        let s = connect_from(addr("[2001:db8:77::2]:0"), to);
        let from = s.local_addr().unwrap();
        let mut buf = [0u8; 1];
        let _ = (&s).read(&mut buf);
        from
    });
    let accepted = accept_null(&listener);
    let tid = gettid();
    drop(accepted);
    let from = client.join().unwrap();
    let doc = alert_for(&sensor, "ingress", "source", from);
    assert_alert(&doc, "ingress", from, to);
    assert_own_process(&doc, tid);
}

#[test]
fn ipv4_mapped_peers_on_dual_stack_sockets_match_the_ipv4_entry() {
    if !kernel_tests_allowed("dual_stack") {
        return;
    }
    let _serial = serial();
    let sensor = Sensor::start("mapped", "127.66.5.0/28\n", &[]);

    // Inbound: IPv4 client to an IPv6 dual-stack server.
    let server = listen(addr("[::]:0"), true);
    let port = server.local_addr().unwrap().port();
    let (tx, rx) = mpsc::channel();
    let acceptor = std::thread::spawn(move || {
        tx.send(gettid()).unwrap();
        drop(accept_null(&server));
    });
    let tid = rx.recv().unwrap();
    let client = connect_from(addr("127.66.5.5:0"), addr(&format!("127.0.0.1:{port}")));
    let from = client.local_addr().unwrap();
    acceptor.join().unwrap();
    let doc = alert_for(&sensor, "ingress", "source", from);
    assert_alert(&doc, "ingress", from, addr(&format!("127.0.0.1:{port}")));
    assert_own_process(&doc, tid);
    assert_eq!(get(&doc, "torsensor.v4_mapped"), true);

    // Outbound: an IPv6 socket connecting to ::ffff:127.66.5.6.
    let server = listen(addr("127.66.5.6:0"), false);
    let port = server.local_addr().unwrap().port();
    let client = connect_from(addr("[::]:0"), addr(&format!("[::ffff:127.66.5.6]:{port}")));
    let local = client.local_addr().unwrap();
    let _accepted = server.accept().unwrap();
    let to = addr(&format!("127.66.5.6:{port}"));
    let doc = alert_for(&sensor, "egress", "destination", to);
    let from = SocketAddr::new(
        match local.ip() {
            std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().unwrap().into(),
            v4 => v4,
        },
        local.port(),
    );
    assert_alert(&doc, "egress", from, to);
    assert_own_process(&doc, gettid());
    assert_eq!(get(&doc, "torsensor.v4_mapped"), true);
}

#[test]
fn cidr_entries_match_and_unlisted_addresses_do_not_alert() {
    if !kernel_tests_allowed("cidr_and_unlisted") {
        return;
    }
    let _serial = serial();
    let sensor = Sensor::start("cidr", "127.66.8.0/24\n", &[]);
    // First an unlisted peer, then a listed one: alerts come in order, so
    // once the listed one is in, an alert for the unlisted one would be too.
    let quiet = listen(addr("127.66.9.9:0"), false);
    let quiet_addr = quiet.local_addr().unwrap();
    let c1 = TcpStream::connect(quiet_addr).unwrap();
    let _a1 = quiet.accept().unwrap();
    let listed = listen(addr("127.66.8.77:0"), false);
    let to = listed.local_addr().unwrap();
    let c2 = TcpStream::connect(to).unwrap();
    let _a2 = listed.accept().unwrap();
    let doc = alert_for(&sensor, "egress", "destination", to);
    assert_alert(&doc, "egress", c2.local_addr().unwrap(), to);
    assert_eq!(get(&doc, "torsensor.matches.0.prefix"), "127.66.8.0/24");
    std::thread::sleep(Duration::from_millis(300));
    let noise: Vec<_> = sensor
        .alerts()
        .into_iter()
        .filter(|a| get(a, "destination.ip") == "127.66.9.9" || get(a, "source.ip") == "127.66.9.9")
        .collect();
    assert!(noise.is_empty(), "unlisted peer alerted: {noise:#?}");
    assert_eq!(sensor.alerts().len(), 1, "{:#?}", sensor.alerts());
    drop((c1, c2));
}

#[test]
fn short_lived_process_is_still_attributed() {
    if !kernel_tests_allowed("short_lived") {
        return;
    }
    let _serial = serial();
    let sensor = Sensor::start("shortlived", "127.66.10.1\n", &[]);
    let server = listen(addr("127.66.10.1:0"), false);
    let port = server.local_addr().unwrap().port();
    // bash opens the connection through /dev/tcp and exits at once.
    let mut child = Command::new("bash")
        .args(["-c", &format!("exec 3<>/dev/tcp/127.66.10.1/{port}")])
        .spawn()
        .unwrap();
    let pid = child.id();
    assert!(child.wait().unwrap().success());
    let _accepted = server.accept().unwrap();
    let doc = sensor.expect_alert("alert for the short-lived bash", |a| {
        get(a, "destination.port") == &json!(port)
    });
    assert_eq!(get(&doc, "process.pid"), &json!(pid), "{doc:#}");
    assert_eq!(get(&doc, "process.thread.name"), "bash");
    assert_eq!(get(&doc, "process.name"), "bash");
    assert_eq!(get(&doc, "process.thread.name"), "bash");
    assert_eq!(get(&doc, "destination.ip"), "127.66.10.1");
}

#[test]
fn sigterm_drains_and_detaches_within_two_seconds() {
    if !kernel_tests_allowed("shutdown") {
        return;
    }
    let _serial = serial();
    let stats = temp_path("shutdown-stats.json");
    let sensor = Sensor::start(
        "shutdown",
        "127.66.11.0/24\n",
        &["--stats-file", stats.to_str().unwrap()],
    );
    let sensor_pid = sensor.pid();
    let server = listen(addr("127.66.11.1:0"), false);
    let to = server.local_addr().unwrap();
    for _ in 0..20 {
        let _c = TcpStream::connect(to).unwrap();
        let _a = server.accept().unwrap();
    }
    let (status, took, stderr) = sensor.stop();
    assert!(status.success(), "exit status {status:?}\n{stderr}");
    assert!(took < Duration::from_secs(2), "took {took:?} to stop");
    let stats: Value = serde_json::from_slice(&std::fs::read(&stats).unwrap()).unwrap();
    // Aggregation (default window 60 s): the first connection at once, the
    // 19 repeats as one summary flushed at shutdown; the counts add up.
    assert_eq!(stats["alerts_written"], 2, "{stats:#}");
    assert_eq!(stats["summaries_written"], 1, "{stats:#}");
    assert_eq!(stats["connections_reported"], 20, "{stats:#}");
    assert_eq!(stats["kernel"]["connect_hit"], 20);
    assert_eq!(stats["kernel"]["ringbuf_full"], 0);
    // Nothing left in the kernel: no program of ours. The kernel frees a
    // detached tracing program after an RCU grace period, so it may linger
    // in the listing for a moment after the exit; it must go on its own.
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let ours = programs_of(sensor_pid);
        if ours.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "programs left behind 2 s after exit: {ours:#?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Programs named like ours that `pid` holds, or that no process holds.
fn programs_of(pid: u32) -> Vec<Value> {
    common::bpf_programs_of(pid, |name| {
        sensor_daemon::kernel::InboundHooks::all_programs().any(|ours| ours == name)
    })
}

#[test]
fn audit_all_reports_unlisted_connections_as_plain_events() {
    if !kernel_tests_allowed("audit_all") {
        return;
    }
    let _serial = serial();
    let sensor = Sensor::start("audit", "127.66.13.1\n", &["--audit-all"]);
    let (out, from, to) = outbound_case(&sensor, "127.66.14.1:0");
    assert_eq!(get(&out, "event.kind"), "event", "{out:#}");
    assert_eq!(get(&out, "torsensor.audit"), true);
    assert!(get(&out, "rule").is_null() && get(&out, "threat").is_null());
    assert_eq!(get(&out, "source.port"), &json!(from.port()));
    assert_own_process(&out, gettid());
    // The accepting side of the same connection is reported too.
    let inbound = alert_for(&sensor, "ingress", "source", from);
    assert_eq!(get(&inbound, "torsensor.audit"), true);
    assert_eq!(get(&inbound, "destination.port"), &json!(to.port()));
}

#[test]
fn a_process_in_a_pod_cgroup_running_as_nobody_is_attributed_to_its_container() {
    if !kernel_tests_allowed("pod_container") {
        return;
    }
    use std::io::Write as _;
    use std::os::unix::process::CommandExt as _;
    const ID: &str = "c0ffee0123456789abcdef0123456789abcdef0123456789abcdef0123456789";
    const POD: &str = "5e0c7a1b-2d3f-4e5a-8b9c-0d1e2f3a4b5c";
    let _serial = serial();
    // The kubelet's log directories for this pod and container, as a node
    // has them: they name the pod, its namespace and the container.
    let logs = common::temp_path("kubelet-logs");
    let pod_dir = logs.join(format!("pods/shop_web-7d9f8-abcde_{POD}/tor-proxy"));
    std::fs::create_dir_all(&pod_dir).unwrap();
    std::fs::write(pod_dir.join("0.log"), "").unwrap();
    std::fs::create_dir_all(logs.join("containers")).unwrap();
    let _ = std::fs::remove_file(logs.join(format!(
        "containers/web-7d9f8-abcde_shop_tor-proxy-{ID}.log"
    )));
    std::os::unix::fs::symlink(
        pod_dir.join("0.log"),
        logs.join(format!(
            "containers/web-7d9f8-abcde_shop_tor-proxy-{ID}.log"
        )),
    )
    .unwrap();
    let config = common::temp_path("pod.toml");
    std::fs::write(
        &config,
        format!(
            "[kubernetes]\npod_logs = \"{0}/pods\"\ncontainer_logs = \"{0}/containers\"\n",
            logs.display()
        ),
    )
    .unwrap();
    let sensor = Sensor::start(
        "pod",
        "127.66.50.1\n",
        &["--config", config.to_str().unwrap()],
    );
    let server = listen(addr("127.66.50.1:0"), false);
    let to = server.local_addr().unwrap();
    std::thread::spawn(move || {
        for c in server.incoming() {
            drop(c);
        }
    });
    let mut cg = common::cgroups::Cgroups::new("pod", false);
    let path = cg.create(&format!(
        "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{ID}.scope",
        POD.replace('-', "_")
    ));
    // The shell waits on stdin until it is inside the pod's cgroup, then
    // connects, as uid 65534, and lingers a moment.
    let mut cmd = std::process::Command::new("bash");
    cmd.args([
        "-c",
        &format!(
            "read go; exec 3<>/dev/tcp/127.66.50.1/{}; sleep 0.5; exit 0",
            to.port()
        ),
    ])
    .stdin(std::process::Stdio::piped())
    .uid(65534)
    .gid(65534);
    let pid = cg.spawn_cmd_in(&path, cmd);
    cg.child()
        .unwrap()
        .stdin
        .take()
        .unwrap()
        .write_all(b"go\n")
        .unwrap();
    let doc = sensor.expect_alert("alert from the pod's process", |a| {
        get(a, "process.pid") == &json!(pid)
    });
    assert_eq!(get(&doc, "container.id"), ID);
    assert_eq!(get(&doc, "container.runtime"), "containerd");
    assert_eq!(get(&doc, "orchestrator.type"), "kubernetes");
    assert_eq!(get(&doc, "orchestrator.resource.id"), POD);
    assert_eq!(get(&doc, "orchestrator.resource.name"), "web-7d9f8-abcde");
    assert_eq!(get(&doc, "orchestrator.namespace"), "shop");
    assert_eq!(get(&doc, "container.name"), "tor-proxy");
    assert_eq!(get(&doc, "torsensor.container.qos"), "burstable");
    assert_eq!(get(&doc, "user.id"), "65534");
    assert_eq!(get(&doc, "user.name"), "nobody");
    assert_eq!(get(&doc, "process.name"), "bash");
    assert_eq!(get(&doc, "process.thread.name"), "bash");
    assert!(
        get(&doc, "process.start")
            .as_str()
            .is_some_and(|s| s.ends_with('Z'))
    );
    // Community ID of the flow, computed independently here.
    let from: SocketAddr = format!(
        "{}:{}",
        get(&doc, "source.ip").as_str().unwrap(),
        get(&doc, "source.port")
    )
    .parse()
    .unwrap();
    assert_eq!(
        get(&doc, "network.community_id"),
        &json!(sensor_daemon::alert::community_id::v1_tcp(from, to))
    );
    assert!(
        get(&doc, "network.community_id")
            .as_str()
            .is_some_and(|c| c.starts_with("1:"))
    );
}

#[test]
fn repeats_are_aggregated_into_one_summary_whose_counts_add_up() {
    if !kernel_tests_allowed("aggregation") {
        return;
    }
    let _serial = serial();
    let sensor = Sensor::start(
        "aggregate",
        "127.66.12.1\n",
        &["--aggregation-window", "2s"],
    );
    let server = listen(addr("127.66.12.1:0"), false);
    let to = server.local_addr().unwrap();
    let mut ports = Vec::new();
    for _ in 0..8 {
        let c = TcpStream::connect(to).unwrap();
        ports.push(c.local_addr().unwrap().port());
        let _a = server.accept().unwrap();
    }
    let first = sensor.expect_alert("the first alert, at once", |a| {
        get(a, "source.port") == &json!(ports[0])
    });
    assert_eq!(get(&first, "torsensor.count"), 1);
    assert!(get(&first, "torsensor.summary").is_null());
    assert_eq!(
        get(&first, "torsensor.first_seen"),
        get(&first, "@timestamp")
    );
    let summary = sensor.expect_alert("the summary when the window ends", |a| {
        get(a, "torsensor.summary") == &json!(true)
    });
    assert_eq!(get(&summary, "torsensor.count"), 7);
    assert_eq!(
        get(&summary, "source.port"),
        &json!(ports[7]),
        "the latest repeat"
    );
    assert_eq!(get(&summary, "rule.id"), "TORSENSOR-003");
    let first_seen = get(&summary, "torsensor.first_seen").as_str().unwrap();
    let last_seen = get(&summary, "torsensor.last_seen").as_str().unwrap();
    assert!(first_seen <= last_seen && first_seen > get(&first, "@timestamp").as_str().unwrap());
    let alerts = sensor.alerts();
    let total: u64 = alerts
        .iter()
        .filter(|a| get(a, "destination.port") == &json!(to.port()))
        .map(|a| get(a, "torsensor.count").as_u64().unwrap())
        .sum();
    assert_eq!(total, 8, "{alerts:#?}");
    assert_eq!(alerts.len(), 2, "{alerts:#?}");
}

/// What a thread does first with an accepted socket.
#[derive(Clone, Copy, Debug)]
enum FirstUse {
    /// Reads what the client sent.
    Read,
    /// Writes a banner before reading anything.
    Write,
}

/// `torsensor hooks --json [--inbound-hooks PLAN]`: the plan, or the error
/// line if the kernel cannot run it.
fn hooks_json(plan: Option<&str>) -> Result<Value, String> {
    let mut cmd = Command::new(BIN);
    cmd.args(["hooks", "--json"]);
    if let Some(p) = plan {
        cmd.args(["--inbound-hooks", p]);
    }
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if out.status.success() {
        Ok(serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:?}")))
    } else {
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        Err(stderr)
    }
}

/// Every plan in the order `auto` tries them (see `InboundHooks`).
const PLANS: [&str; 5] = ["sock-length", "fentry", "kprobe", "rcv-space", "close-only"];

#[test]
fn auto_takes_the_first_plan_that_works_and_reports_it_once() {
    if !kernel_tests_allowed("hook_plan") {
        return;
    }
    let _serial = serial();
    // Each plan on its own: it works here, or fails with one sentence that
    // names it.
    let mut works = Vec::new();
    for plan in PLANS {
        match hooks_json(Some(plan)) {
            Ok(doc) => {
                assert_eq!(doc["inbound"], plan, "{doc}");
                works.push(plan);
            }
            Err(stderr) => {
                assert_eq!(stderr.lines().count(), 1, "{stderr}");
                assert!(
                    stderr.contains(&format!(
                        "inbound_hooks = {plan} cannot be used on this kernel"
                    )),
                    "{stderr}"
                );
            }
        }
    }
    assert!(works.contains(&"close-only"), "{works:?}");
    // The VM matrix also says which plans each kernel must offer, so that
    // the fallbacks this host cannot run (fentry, kprobe) are proven there.
    if let Ok(all) = std::env::var("TORSENSOR_EXPECT_PLANS")
        && !all.is_empty()
    {
        assert_eq!(works.join(","), all, "plans that work on this kernel");
    }
    // What a distribution kernel should get: the VM matrix says it per
    // kernel; on the host, the 6.4+ tracepoints exist or they do not.
    let expected = match std::env::var("TORSENSOR_EXPECT_PLAN") {
        Ok(plan) if !plan.is_empty() => plan,
        _ => {
            let btf = std::fs::read("/sys/kernel/btf/vmlinux").unwrap();
            let has = |name: &[u8]| btf.windows(name.len()).any(|w| w == name);
            assert_eq!(
                has(b"btf_trace_sock_send_length"),
                works[0] == "sock-length",
                "{works:?}"
            );
            works[0].to_owned()
        }
    };
    assert_eq!(works[0], expected, "plans that work here: {works:?}");

    let sensor = Sensor::start("plan", "127.66.60.1\n", &[]);
    let stderr = sensor.stderr();
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("hook plan:"))
        .collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].contains(&format!("inbound attribution: {expected} ")),
        "{}",
        lines[0]
    );
    let state_dir = temp_path(&format!("state-{}", std::process::id()));
    let status: Value =
        serde_json::from_slice(&std::fs::read(state_dir.join("status.json")).unwrap()).unwrap();
    let auto = hooks_json(None).unwrap();
    assert_eq!(
        status["hooks"], auto,
        "status.json and `torsensor hooks` agree"
    );
    assert_eq!(status["hooks"]["inbound"], expected);
    assert_eq!(status["hooks"]["connections"], "tp_btf:inet_sock_set_state");
    // Every better plan is listed as unavailable, with its reason.
    let skipped: Vec<&str> = PLANS
        .iter()
        .copied()
        .take_while(|p| *p != expected)
        .collect();
    let unavailable: Vec<&str> = status["hooks"]["unavailable"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| {
            assert!(!u["reason"].as_str().unwrap().is_empty(), "{u}");
            u["plan"].as_str().unwrap()
        })
        .collect();
    assert_eq!(unavailable, skipped);
    assert_eq!(
        status["hooks"]["degraded"].is_null(),
        works[0] != "rcv-space" && works[0] != "close-only"
    );
    drop(sensor);
}

/// With inbound plan `plan`, a connection accepted by one thread and used
/// first (`first`) by another names that other thread: at the first use
/// when the plan sees it, else at shutdown. Returns false if the plan does
/// not work on this kernel.
fn inbound_plan_case(plan: &str, first: FirstUse, peer: &str) -> bool {
    if hooks_json(Some(plan)).is_err() {
        return false;
    }
    let sensor = Sensor::start(
        &format!("plan-{plan}"),
        &format!("{peer}\n"),
        &["--inbound-hooks", plan],
    );
    let server = listen(addr("127.0.0.1:0"), false);
    let to = server.local_addr().unwrap();
    let (fd_tx, fd_rx) = mpsc::channel::<std::os::fd::OwnedFd>();
    let (tid_tx, tid_rx) = mpsc::channel();
    let (close_tx, close_rx) = mpsc::channel::<()>();
    let acceptor = std::thread::spawn(move || fd_tx.send(accept_null(&server)).unwrap());
    let user = std::thread::spawn(move || {
        let mut stream = TcpStream::from(fd_rx.recv().unwrap());
        tid_tx.send(gettid()).unwrap();
        match first {
            FirstUse::Read => {
                let mut buf = [0u8; 5];
                stream.read_exact(&mut buf).unwrap();
            }
            FirstUse::Write => std::io::Write::write_all(&mut stream, b"hello").unwrap(),
        }
        close_rx.recv().unwrap();
        stream.shutdown(std::net::Shutdown::Write).unwrap();
        close_rx.recv().unwrap();
    });
    let mut client = connect_from(addr(&format!("{peer}:0")), to);
    let from = client.local_addr().unwrap();
    acceptor.join().unwrap();
    let user_tid = tid_rx.recv().unwrap();
    let mut buf = [0u8; 5];
    match first {
        FirstUse::Read => std::io::Write::write_all(&mut client, b"hello").unwrap(),
        FirstUse::Write => client.read_exact(&mut buf).unwrap(),
    }
    let sees_first_use = !matches!(
        (plan, first),
        ("close-only", _) | ("rcv-space", FirstUse::Write)
    );
    if !sees_first_use {
        // Nothing names the thread before it shuts the connection down.
        std::thread::sleep(Duration::from_millis(300));
        assert!(sensor.alerts().is_empty(), "{plan}: {:#?}", sensor.alerts());
        close_tx.send(()).unwrap();
    }
    let doc = alert_for(&sensor, "ingress", "source", from);
    assert_alert(&doc, "ingress", from, to);
    assert_own_process(&doc, user_tid);
    assert_eq!(get(&doc, "torsensor.attribution"), "first-use");
    if sees_first_use {
        close_tx.send(()).unwrap();
    }
    close_tx.send(()).unwrap();
    user.join().unwrap();
    true
}

#[test]
fn every_inbound_plan_this_kernel_offers_names_the_thread_that_uses_the_socket() {
    if !kernel_tests_allowed("inbound_plans") {
        return;
    }
    let _serial = serial();
    let mut ran = Vec::new();
    for (i, plan) in PLANS.iter().enumerate() {
        for (j, first) in [FirstUse::Read, FirstUse::Write].into_iter().enumerate() {
            if inbound_plan_case(plan, first, &format!("127.66.61.{}", 10 * i + j + 1)) {
                ran.push(format!("{plan}/{first:?}"));
            }
        }
    }
    eprintln!("inbound plans exercised: {ran:?}");
    // At least the tracepoint plans that every kernel with BTF has.
    for needed in ["rcv-space/Read", "close-only/Read", "close-only/Write"] {
        assert!(ran.iter().any(|r| r == needed), "{ran:?}");
    }
}

#[test]
fn a_refused_outbound_attempt_reports_its_real_source_port() {
    if !kernel_tests_allowed("refused_port") {
        return;
    }
    let _serial = serial();
    let sensor = Sensor::start("refused", "127.66.70.1\n", &[]);
    // A port nothing listens on: bound, then closed.
    let to = listen(addr("127.66.70.1:0"), false).local_addr().unwrap();
    let from = refused_connect(to);
    assert_ne!(from.port(), 0);
    let doc = sensor.expect_alert("alert for the refused attempt", |a| {
        get(a, "destination.port") == &json!(to.port())
    });
    assert_eq!(get(&doc, "event.outcome"), "failure", "{doc:#}");
    assert_eq!(get(&doc, "source.port"), &json!(from.port()), "{doc:#}");
    // The kernel resets the socket's address after the failure (getsockname
    // says 0.0.0.0), but the attempt went out from loopback's source.
    assert_eq!(get(&doc, "source.ip"), "127.0.0.1");
    let from = addr(&format!("127.0.0.1:{}", from.port()));
    assert_own_process(&doc, gettid());
    // The Community ID is computed from the real 5-tuple.
    let community = get(&doc, "network.community_id")
        .as_str()
        .unwrap()
        .to_owned();
    let real = sensor_daemon::alert::community_id::v1_tcp(from, to);
    assert_eq!(community, real);
    assert_ne!(
        community,
        sensor_daemon::alert::community_id::v1_tcp(SocketAddr::new(from.ip(), 0), to)
    );
}

/// A capability mask from /proc/PID/status (`CapEff:` etc.).
fn cap_mask(status: &str, field: &str) -> u64 {
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .unwrap_or_else(|| panic!("no {field} in {status}"));
    u64::from_str_radix(hex.trim(), 16).unwrap()
}

#[test]
fn once_armed_only_the_documented_capabilities_are_left_and_refreshes_still_work() {
    if !kernel_tests_allowed("capabilities") {
        return;
    }
    let _serial = serial();
    let sensor = Sensor::start("caps", "127.66.71.1\n", &[]);
    sensor.wait_log("privileges: kept", 1, Duration::from_secs(5));
    let status = std::fs::read_to_string(format!("/proc/{}/status", sensor.pid())).unwrap();
    // CAP_DAC_READ_SEARCH (2), CAP_SYS_PTRACE (19), CAP_BPF (39).
    let kept: u64 = (1 << 2) | (1 << 19) | (1 << 39);
    for field in ["CapEff:", "CapPrm:", "CapBnd:"] {
        assert_eq!(cap_mask(&status, field), kept, "{field}\n{status}");
    }
    assert_eq!(cap_mask(&status, "CapInh:"), 0, "{status}");
    assert_eq!(cap_mask(&status, "CapAmb:"), 0, "{status}");
    assert!(status.contains("NoNewPrivs:\t1"), "{status}");
    // What the running daemon does still works without the rest: a reload
    // that changes the kernel maps, and alerts with the process named.
    std::fs::write(&sensor.feed, "127.66.71.1\n127.66.71.2\n").unwrap();
    sensor.signal(libc::SIGHUP);
    sensor.wait_log("SIGHUP", 1, Duration::from_secs(5));
    let deadline = Instant::now() + Duration::from_secs(10);
    let (doc, from, to) = loop {
        let server = listen(addr("127.66.71.2:0"), false);
        let to = server.local_addr().unwrap();
        let client = TcpStream::connect(to).unwrap();
        let from = client.local_addr().unwrap();
        drop(server.accept().unwrap());
        std::thread::sleep(Duration::from_millis(200));
        if let Some(doc) = sensor
            .alerts()
            .into_iter()
            .find(|a| get(a, "destination.port") == &json!(to.port()))
        {
            break (doc, from, to);
        }
        assert!(Instant::now() < deadline, "{}", sensor.stderr());
    };
    assert_alert(&doc, "egress", from, to);
    assert_own_process(&doc, gettid());
    let (status, _, stderr) = sensor.stop();
    assert!(status.success(), "{stderr}");
    assert!(!stderr.contains("ERROR"), "{stderr}");
}

#[test]
fn a_reload_says_which_keys_need_a_restart_and_a_rejected_one_changes_nothing() {
    if !kernel_tests_allowed("reload_keys") {
        return;
    }
    let _serial = serial();
    let feed = temp_path("reload.feed");
    std::fs::write(&feed, "127.66.72.1\n").unwrap();
    let config = temp_path("reload.toml");
    let write_config = |extra: &str| {
        std::fs::write(
            &config,
            format!(
                "allow_reserved = true\n{extra}\n[[feed]]\nname = \"reload\"\nlocation = \"{}\"\n",
                feed.display()
            ),
        )
        .unwrap();
    };
    write_config("aggregation_window = \"60s\"");
    let sensor = Sensor::start_args(&["run", "--config", config.to_str().unwrap()], feed.clone());
    let state_dir = temp_path(&format!("state-{}", std::process::id()));
    // Two keys the running loop cannot take over.
    write_config("aggregation_window = \"5s\"\ninbound_wait = \"2s\"");
    sensor.signal(libc::SIGHUP);
    sensor.wait_log(
        "SIGHUP: inbound_wait, aggregation_window changed, which takes effect only after a restart",
        1,
        Duration::from_secs(5),
    );
    // A reload that fails (its feed file is gone) after naming another
    // state directory: nothing switches, not even the state directory.
    let elsewhere = temp_path("reload-elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::fs::write(
        &config,
        format!(
            "allow_reserved = true\nstate_dir = \"{}\"\n[[feed]]\nname = \"reload\"\nlocation = \"{}\"\n",
            elsewhere.display(),
            temp_path("no-such.feed").display()
        ),
    )
    .unwrap();
    let before = std::fs::metadata(state_dir.join("status.json"))
        .unwrap()
        .modified()
        .unwrap();
    sensor.signal(libc::SIGHUP);
    sensor.wait_log("SIGHUP: keeping the running", 1, Duration::from_secs(5));
    sensor.wait_log("SIGHUP", 3, Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !sensor.stderr().contains("state_dir is now"),
        "{}",
        sensor.stderr()
    );
    assert!(!elsewhere.join("status.json").exists());
    let after = std::fs::metadata(state_dir.join("status.json"))
        .unwrap()
        .modified()
        .unwrap();
    assert!(after >= before);
    // The running feed still matches.
    let (doc, from, to) = outbound_case(&sensor, "127.66.72.1:0");
    assert_alert(&doc, "egress", from, to);
}
