//! Real-kernel tests of the local Tor signals (issue 15): a program start
//! by a watched name or with `TOR_PT_*` in its environment (TORSENSOR-005),
//! a listener on a Tor SOCKS or control port (TORSENSOR-006), and
//! exceptions under both. Real processes (copies of bash under other
//! names), real listeners in a loopback-only network namespace. They need
//! root and only bash and `ip`, so they also run in the kernel matrix
//! (`cargo xtask vm-test`, Debian's 6.1 included); the real `tor` binary is
//! in `tests/tor_local.rs`. Under CI=true they never skip.

mod common;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use common::*;
use serde_json::{Value, json};

/// A feed that lists nothing the tests touch.
const FEED: &str = "192.0.2.250/32\n";

/// bash, from PATH.
fn bash() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("bash"))
        .find(|p| p.exists())
        .expect("bash in PATH")
}

/// A copy of bash called `name` in a directory of its own.
fn program_named(name: &str) -> PathBuf {
    let dir = temp_path(&format!("prog-{name}"));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::copy(bash(), &path).unwrap();
    path
}

/// Starts `program -c script` with exactly the environment `env`.
fn start(program: &Path, script: &str, env: &[(&str, String)]) -> Child {
    let mut cmd = Command::new(program);
    cmd.arg("-c")
        .arg(script)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().unwrap()
}

fn pid_of(doc: &Value) -> u64 {
    get(doc, "process.pid").as_u64().unwrap_or(0)
}

fn alerts_of(sensor: &Sensor, pid: u32) -> Vec<Value> {
    sensor
        .alerts()
        .into_iter()
        .filter(|a| pid_of(a) == pid as u64)
        .collect()
}

/// What every program-start alert has, and what it must not have.
fn assert_exec_shape(doc: &Value) {
    assert_eq!(get(doc, "event.kind"), "alert", "{doc:#}");
    assert_eq!(
        get(doc, "event.category"),
        &json!(["process", "intrusion_detection"])
    );
    assert_eq!(get(doc, "event.type"), &json!(["start"]));
    assert_eq!(get(doc, "event.action"), "tor-program-start");
    assert_eq!(get(doc, "rule.id"), "TORSENSOR-005");
    assert_eq!(get(doc, "torsensor.signal"), "exec");
    assert_eq!(
        get(doc, "threat.technique.subtechnique.id"),
        &json!(["T1090.003"])
    );
    for absent in ["network", "source", "destination", "server"] {
        assert!(doc.get(absent).is_none(), "{absent} in {doc:#}");
    }
    assert_eq!(
        get(doc, "process.parent.pid"),
        &json!(std::process::id()),
        "{doc:#}"
    );
}

/// A network namespace with only `lo` up and no route out (checked).
struct LoopNs {
    name: String,
}

impl LoopNs {
    fn new(tag: &str) -> LoopNs {
        let name = format!("tssig{tag}{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        let ok = |cmd: &mut Command| {
            let out = cmd.output().unwrap();
            assert!(out.status.success(), "{cmd:?}: {out:?}");
        };
        ok(Command::new("ip").args(["netns", "add", &name]));
        let ns = LoopNs { name };
        ok(Command::new("ip").args(["-n", &ns.name, "link", "set", "lo", "up"]));
        let out = Command::new("ip")
            .args(["-n", &ns.name, "route", "get", "192.0.2.1"])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{} routes out: {out:?}", ns.name);
        ns
    }

    /// Runs `f` on a thread inside the namespace; returns its result and
    /// the thread's id.
    fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> (T, u32) {
        let path = PathBuf::from("/var/run/netns").join(&self.name);
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).unwrap();
            // SAFETY: a namespace fd; only this thread moves.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            (f(), gettid())
        })
        .join()
        .unwrap()
    }
}

impl Drop for LoopNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// A rules directory with `text` as its one file.
fn rules_dir(name: &str, text: &str) -> String {
    let dir = temp_path(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("10-local.toml"), text).unwrap();
    dir.to_str().unwrap().to_owned()
}

#[test]
fn a_program_started_as_tor_is_reported_by_name() {
    if !kernel_tests_allowed("a_program_started_as_tor_is_reported_by_name") {
        return;
    }
    let _g = serial();
    let sensor = Sensor::start("exec-name", FEED, &[]);
    let tor = program_named("tor");
    // Two commands: bash runs the first as a child (a single one it would
    // exec in place, and /proc would show that program instead).
    let mut child = start(&tor, "sleep 1; exit 0", &[]);
    let pid = child.id();
    let doc = sensor.expect_alert("tor's start", |a| {
        pid_of(a) == pid as u64 && get(a, "rule.id") == "TORSENSOR-005"
    });
    child.wait().unwrap();
    assert_exec_shape(&doc);
    assert_eq!(get(&doc, "torsensor.exec.reasons"), &json!(["name"]));
    assert_eq!(get(&doc, "torsensor.exec.program"), "tor");
    assert_eq!(get(&doc, "torsensor.exec.comm"), "tor");
    assert_eq!(get(&doc, "process.name"), "tor");
    assert_eq!(
        get(&doc, "process.executable"),
        &json!(tor.to_str().unwrap())
    );
    assert_eq!(
        get(&doc, "process.args"),
        &json!([tor.to_str().unwrap(), "-c", "sleep 1; exit 0"])
    );
    assert!(get(&doc, "process.env_vars").is_null(), "{doc:#}");
    // One alert per start, not aggregated away, and no connection rule.
    assert_eq!(alerts_of(&sensor, pid).len(), 1);
    // A name that only begins like a watched one is not one.
    let other = program_named("tor-not-really");
    let mut child = start(&other, "exit 0", &[]);
    let other_pid = child.id();
    child.wait().unwrap();
    let mut control = start(&tor, "exit 0", &[]);
    let control_pid = control.id();
    sensor.expect_alert("the second start of tor", |a| {
        pid_of(a) == control_pid as u64
    });
    control.wait().unwrap();
    assert!(alerts_of(&sensor, other_pid).is_empty());
    let sensor_pid = sensor.pid();
    assert_eq!(exec_programs_of(sensor_pid), 1, "process_exec attached");
    let (status, _, stderr) = sensor.stop();
    assert!(status.success(), "{stderr}");
    // Detached at exit like the other programs: none left behind (the
    // kernel frees them shortly after the last reference goes).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while exec_programs_of(sensor_pid) != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "process_exec left behind 2 s after exit"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// `process_exec` programs held by `pid`, or by no process (an orphan;
/// also every one when this bpftool cannot tell who holds what), as
/// `tests/kernel.rs` counts the connection programs.
fn exec_programs_of(pid: u32) -> usize {
    common::bpf_programs_of(pid, |n| n == "process_exec").len()
}

#[test]
fn a_renamed_program_with_tor_pt_environment_is_reported() {
    if !kernel_tests_allowed("a_renamed_program_with_tor_pt_environment_is_reported") {
        return;
    }
    let _g = serial();
    let stats = temp_path("exec-env.stats.json");
    let sensor = Sensor::start("exec-env", FEED, &["--stats-file", stats.to_str().unwrap()]);
    let notor = program_named("notor");
    let pt = |v: &str| ("TOR_PT_MANAGED_TRANSPORT_VER", v.to_owned());

    // A transport as tor starts it, under a name nobody watches.
    let mut child = start(
        &notor,
        "sleep 1; exit 0",
        &[pt("1"), ("TOR_PT_CLIENT_TRANSPORTS", "obfs4".into())],
    );
    let pid = child.id();
    let doc = sensor.expect_alert("notor's start", |a| pid_of(a) == pid as u64);
    child.wait().unwrap();
    assert_exec_shape(&doc);
    assert_eq!(get(&doc, "torsensor.exec.reasons"), &json!(["environment"]));
    assert!(get(&doc, "torsensor.exec.program").is_null(), "{doc:#}");
    assert_eq!(get(&doc, "torsensor.exec.comm"), "notor");
    // Only the TOR_PT_* bindings, never the rest (PATH here).
    let mut vars: Vec<&str> = get(&doc, "process.env_vars")
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    vars.sort();
    assert_eq!(
        vars,
        [
            "TOR_PT_CLIENT_TRANSPORTS=obfs4",
            "TOR_PT_MANAGED_TRANSPORT_VER=1"
        ]
    );

    // Gone before the daemon reads /proc: the kernel's finding stands.
    let mut child = start(&notor, "exit 0", &[pt("1")]);
    let quick = child.id();
    child.wait().unwrap();
    let doc = sensor.expect_alert("a short-lived start", |a| pid_of(a) == quick as u64);
    assert_eq!(get(&doc, "torsensor.exec.reasons"), &json!(["environment"]));

    // A large environment (about 5 KiB): the variable at its end is
    // found (the last window), and the alert says the middle was not
    // scanned. The variables go in the order given.
    let filler: Vec<(String, String)> = (0..10)
        .map(|i| (format!("A_FILL_{i:02}"), "x".repeat(500)))
        .collect();
    let mut env: Vec<(&str, String)> = filler
        .iter()
        .map(|(k, v)| (k.as_str(), v.clone()))
        .collect();
    env.push(pt("1"));
    let mut child = start(&notor, "sleep 1; exit 0", &env);
    let big = child.id();
    let doc = sensor.expect_alert("a start with a large environment", |a| {
        pid_of(a) == big as u64
    });
    child.wait().unwrap();
    assert_eq!(get(&doc, "torsensor.exec.env_partial"), true, "{doc:#}");
    assert!(get(&doc, "torsensor.exec.env_bytes").as_u64().unwrap() > 5000);

    // The limit: in the middle of a large environment the kernel does not
    // look (counted), and a name nobody watches is then not seen.
    let mut env: Vec<(String, String)> = (0..6)
        .map(|i| (format!("A_FILL_{i:02}"), "x".repeat(500)))
        .collect();
    env.extend((0..6).map(|i| (format!("Z_FILL_{i:02}"), "x".repeat(500))));
    env.push(("TOR_PT_MANAGED_TRANSPORT_VER".into(), "1".into()));
    let env: Vec<(&str, String)> = env.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    let mut child = start(&notor, "exit 0", &env);
    let hidden = child.id();
    child.wait().unwrap();
    let mut control = start(&notor, "exit 0", &[pt("1")]);
    let control_pid = control.id();
    control.wait().unwrap();
    sensor.expect_alert("the control start", |a| pid_of(a) == control_pid as u64);
    assert!(alerts_of(&sensor, hidden).is_empty());
    let (status, _, stderr) = sensor.stop();
    assert!(status.success(), "{stderr}");
    let stats: Value = serde_json::from_slice(&std::fs::read(&stats).unwrap()).unwrap();
    let kernel = &stats["kernel"];
    assert!(
        kernel["exec_env_partial"].as_u64().unwrap() >= 1,
        "{kernel}"
    );
    assert!(kernel["exec_env_hit"].as_u64().unwrap() >= 4, "{kernel}");
    assert!(
        kernel["exec_seen"].as_u64().unwrap() > kernel["exec_sent"].as_u64().unwrap(),
        "not every start crosses: {kernel}"
    );
    assert_eq!(kernel["exec_ringbuf_full"], 0);
}

#[test]
fn an_exception_excepts_a_program_start() {
    if !kernel_tests_allowed("an_exception_excepts_a_program_start") {
        return;
    }
    let _g = serial();
    let dir = rules_dir(
        "exec-except.d",
        "[[rule]]\nid = \"TORSENSOR-005\"\n[[rule.except]]\nreason = \"the lab's transport test\"\nwhen = { command_line = [\"lab-transport-test\"] }\n",
    );
    let sensor = Sensor::start("exec-except", FEED, &["--rules-dir", &dir]);
    let notor = program_named("notor");
    let env = [("TOR_PT_MANAGED_TRANSPORT_VER", "1".to_owned())];
    let mut excepted = start(&notor, "sleep 0.5; exit 0 # lab-transport-test", &env);
    let excepted_pid = excepted.id();
    excepted.wait().unwrap();
    let mut tor = start(
        &program_named("tor"),
        "sleep 0.5; exit 0 # lab-transport-test",
        &[],
    );
    let tor_pid = tor.id();
    tor.wait().unwrap();
    // Started after both: once its alert is out, theirs would have been.
    let mut control = start(&notor, "exit 0", &env);
    let control_pid = control.id();
    control.wait().unwrap();
    let doc = sensor.expect_alert("the control start", |a| pid_of(a) == control_pid as u64);
    assert_eq!(get(&doc, "rule.id"), "TORSENSOR-005");
    assert!(alerts_of(&sensor, excepted_pid).is_empty());
    assert!(alerts_of(&sensor, tor_pid).is_empty());
    sensor.stop();
}

#[test]
fn a_listener_on_a_tor_port_and_its_client_are_reported() {
    if !kernel_tests_allowed("a_listener_on_a_tor_port_and_its_client_are_reported") {
        return;
    }
    let _g = serial();
    let sensor = Sensor::start("listen", FEED, &["--tor-socks-port", "127.0.0.1:9050"]);
    let ns = LoopNs::new("l");
    // tor's SOCKS port on loopback, and a client of it.
    let ((), tid) = ns.run(|| {
        let listener = TcpListener::bind("127.0.0.1:9050").unwrap();
        let client = TcpStream::connect("127.0.0.1:9050").unwrap();
        let (_server_side, _) = listener.accept().unwrap();
        drop(client);
    });
    let me = std::process::id() as u64;
    let doc = sensor.expect_alert("the listener on 9050", |a| {
        get(a, "rule.id") == "TORSENSOR-006" && get(a, "server.port") == 9050
    });
    assert_eq!(get(&doc, "event.kind"), "alert", "{doc:#}");
    assert_eq!(
        get(&doc, "event.category"),
        &json!(["network", "intrusion_detection"])
    );
    assert_eq!(get(&doc, "event.type"), &json!(["start"]));
    assert_eq!(get(&doc, "event.action"), "tor-port-listen");
    assert_eq!(
        get(&doc, "server"),
        &json!({"ip": "127.0.0.1", "port": 9050})
    );
    assert_eq!(
        get(&doc, "network"),
        &json!({"transport": "tcp", "type": "ipv4", "iana_number": "6"})
    );
    for absent in ["source", "destination", "threat.enrichments.0"] {
        assert!(get(&doc, absent).is_null(), "{absent} in {doc:#}");
    }
    assert_eq!(get(&doc, "process.pid"), me);
    assert_eq!(get(&doc, "process.thread.id"), tid);
    assert_eq!(get(&doc, "torsensor.signal"), "listen");
    assert_eq!(get(&doc, "torsensor.listen.port_use"), "tor SOCKS");
    assert_eq!(get(&doc, "torsensor.attribution"), "listen");
    // The client: TORSENSOR-004, a connection as before.
    let client = sensor.expect_alert("the SOCKS client", |a| get(a, "rule.id") == "TORSENSOR-004");
    assert_eq!(get(&client, "network.direction"), "egress");
    assert_eq!(get(&client, "destination.port"), 9050);
    assert_eq!(get(&client, "process.pid"), me);

    // Tor Browser's SOCKS port on every IPv6 address.
    ns.run(|| {
        let _l = TcpListener::bind("[::]:9150").unwrap();
    });
    let doc = sensor.expect_alert("the listener on [::]:9150", |a| {
        get(a, "server.port") == 9150
    });
    assert_eq!(get(&doc, "server.ip"), "::");
    assert_eq!(get(&doc, "network.type"), "ipv6");
    assert_eq!(get(&doc, "torsensor.listen.port_use"), "Tor Browser SOCKS");
    let listens = sensor
        .alerts()
        .iter()
        .filter(|a| get(a, "rule.id") == "TORSENSOR-006")
        .count();
    assert_eq!(listens, 2, "{:#?}", sensor.alerts());
    drop(ns);
    sensor.stop();
}

#[test]
fn an_exception_excepts_a_listener_and_configured_ports_are_watched() {
    if !kernel_tests_allowed("an_exception_excepts_a_listener_and_configured_ports_are_watched") {
        return;
    }
    let _g = serial();
    let dir = rules_dir(
        "listen-except.d",
        "[[rule]]\nid = \"TORSENSOR-006\"\n[[rule.except]]\nreason = \"the control port of our own tor\"\nwhen = { local_port = [9151] }\n",
    );
    let config = temp_path("listen-except.toml");
    std::fs::write(&config, "tor_listen_ports = [19999]\n").unwrap();
    let sensor = Sensor::start(
        "listen-except",
        FEED,
        &["--rules-dir", &dir, "--config", config.to_str().unwrap()],
    );
    let ns = LoopNs::new("e");
    let bind = |addr: &'static str| {
        ns.run(move || {
            let addr: SocketAddr = addr.parse().unwrap();
            drop(TcpListener::bind(addr).unwrap());
        });
    };
    bind("127.0.0.1:9151"); // excepted
    bind("127.0.0.1:9052"); // not a watched port
    bind("0.0.0.0:19999"); // watched through the configuration, last
    let doc = sensor.expect_alert("the configured port", |a| get(a, "server.port") == 19999);
    assert_eq!(get(&doc, "rule.id"), "TORSENSOR-006");
    assert_eq!(get(&doc, "torsensor.listen.port_use"), "configured");
    assert_eq!(get(&doc, "server.ip"), "0.0.0.0");
    let ports: Vec<u64> = sensor
        .alerts()
        .iter()
        .filter_map(|a| get(a, "server.port").as_u64())
        .collect();
    assert_eq!(ports, [19999], "{:#?}", sensor.alerts());
    drop(ns);
    sensor.stop();
}
