//! The local Tor signals with Debian's real `tor` (`/usr/bin/tor`): its
//! start (TORSENSOR-005 by name), its SOCKS and control listeners
//! (TORSENSOR-006, the control port excepted by an operator rule), a
//! client of its SOCKS port (TORSENSOR-004), and a renamed copy started
//! with a pluggable transport's `TOR_PT_*` environment (TORSENSOR-005 by
//! environment).
//!
//! Every tor here runs inside a network namespace this test creates with
//! only `lo` up and no route, checked (`ip route get 192.0.2.1` fails)
//! before the first tor starts; the tors are killed and the namespace
//! deleted on every exit path (`Drop`). Needs root and `/usr/bin/tor`;
//! under CI=true it never skips.

mod common;

use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

const TOR: &str = "/usr/bin/tor";

/// A loopback-only namespace and the tors started in it.
struct TorNs {
    ns: String,
    tors: Vec<Child>,
}

fn ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl TorNs {
    fn new() -> TorNs {
        let ns = format!("tslocal{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        ok(Command::new("ip").args(["netns", "add", &ns]));
        let net = TorNs {
            ns,
            tors: Vec::new(),
        };
        ok(Command::new("ip").args(["-n", &net.ns, "link", "set", "lo", "up"]));
        let links = ok(Command::new("ip").args(["-n", &net.ns, "-o", "link", "show"]));
        assert_eq!(links.lines().count(), 1, "only lo: {links}");
        let default = ok(Command::new("ip").args(["-n", &net.ns, "route", "show", "default"]));
        assert!(default.trim().is_empty(), "{default}");
        let out = Command::new("ip")
            .args(["netns", "exec", &net.ns, "ip", "route", "get", "192.0.2.1"])
            .output()
            .unwrap();
        assert!(
            !out.status.success(),
            "the namespace must not route to 192.0.2.1: {out:?}"
        );
        net
    }

    /// Starts `program args` inside the namespace with only PATH and
    /// `env` in its environment (`ip netns exec` and `env` both exec, so
    /// the child's pid is the program's).
    fn start(&mut self, program: &str, args: &[&str], env: &[&str]) -> u32 {
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns, "env", "-i"])
            .arg("PATH=/usr/sbin:/usr/bin:/sbin:/bin")
            .args(env)
            .arg(program)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id();
        self.tors.push(child);
        pid
    }

    /// Runs `f` on a thread inside the namespace.
    fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = PathBuf::from("/var/run/netns").join(&self.ns);
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).unwrap();
            // SAFETY: a namespace fd; only this thread moves.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .unwrap()
    }
}

impl Drop for TorNs {
    fn drop(&mut self) {
        for child in &mut self.tors {
            let _ = child.kill();
        }
        for child in &mut self.tors {
            let _ = child.wait();
        }
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
    }
}

/// A DataDirectory tor accepts (0700, ours).
fn data_dir(name: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let dir = temp_path(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    dir
}

fn wait_for_file(path: &std::path::Path, needle: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains(needle) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{needle:?} not in {}:\n{text}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn pid_is(doc: &Value, pid: u32) -> bool {
    get(doc, "process.pid") == pid
}

#[test]
fn real_tor_its_listeners_a_client_and_a_renamed_transport_are_seen() {
    if !kernel_tests_allowed("real_tor_its_listeners_a_client_and_a_renamed_transport_are_seen") {
        return;
    }
    assert!(
        std::path::Path::new(TOR).exists(),
        "{TOR} is missing: cargo xtask setup installs Debian's tor"
    );
    let _g = serial();
    let rules = temp_path("tor-local.d");
    let _ = std::fs::remove_dir_all(&rules);
    std::fs::create_dir_all(&rules).unwrap();
    std::fs::write(
        rules.join("10-local.toml"),
        "[[rule]]\nid = \"TORSENSOR-006\"\n[[rule.except]]\nreason = \"our tor's control port\"\nwhen = { process = [\"tor\"], local_port = [9051] }\n",
    )
    .unwrap();
    let sensor = Sensor::start(
        "tor-local",
        "192.0.2.250/32\n",
        &[
            "--tor-socks-port",
            "127.0.0.1:9050",
            "--rules-dir",
            rules.to_str().unwrap(),
        ],
    );
    let mut net = TorNs::new();

    // Debian's tor, as a client with a SOCKS and a control port. It cannot
    // reach anything: the namespace has no route.
    let data = data_dir("tor-local-data");
    let log = data.join("notice.log");
    let torrc = temp_path("tor-local.torrc");
    std::fs::write(
        &torrc,
        format!(
            "SocksPort 127.0.0.1:9050\nControlPort 127.0.0.1:9051\nDataDirectory {}\nLog notice file {}\nAvoidDiskWrites 1\n",
            data.display(),
            log.display()
        ),
    )
    .unwrap();
    let torrc = torrc.to_str().unwrap().to_owned();
    let tor = net.start(TOR, &["--defaults-torrc", "/dev/null", "-f", &torrc], &[]);
    let doc = sensor.expect_alert("tor's start", |a| {
        pid_is(a, tor) && get(a, "rule.id") == "TORSENSOR-005"
    });
    assert_eq!(
        get(&doc, "torsensor.exec.reasons"),
        &json!(["name"]),
        "{doc:#}"
    );
    assert_eq!(get(&doc, "torsensor.exec.program"), "tor");
    assert_eq!(get(&doc, "process.executable"), TOR);
    assert_eq!(get(&doc, "process.name"), "tor");
    assert_eq!(get(&doc, "event.type"), &json!(["start"]));
    assert!(doc.get("network").is_none(), "{doc:#}");

    let socks = sensor.expect_alert("tor's SOCKS listener", |a| {
        get(a, "rule.id") == "TORSENSOR-006" && pid_is(a, tor)
    });
    assert_eq!(
        get(&socks, "server"),
        &json!({"ip": "127.0.0.1", "port": 9050}),
        "{socks:#}"
    );
    assert_eq!(get(&socks, "torsensor.listen.port_use"), "tor SOCKS");
    assert_eq!(get(&socks, "process.executable"), TOR);
    wait_for_file(
        &log,
        "Opened Control listener connection (ready) on 127.0.0.1:9051",
        Duration::from_secs(30),
    );

    // A client of tor's SOCKS port (after both listeners: its alert
    // comes after theirs).
    net.run(|| {
        let s = TcpStream::connect("127.0.0.1:9050").unwrap();
        std::thread::sleep(Duration::from_millis(50));
        drop(s);
    });
    let me = std::process::id();
    let client = sensor.expect_alert("the SOCKS client", |a| {
        get(a, "rule.id") == "TORSENSOR-004" && pid_is(a, me)
    });
    assert_eq!(get(&client, "destination.port"), 9050);
    assert_eq!(get(&client, "network.direction"), "egress");
    // The control port's listener was excepted.
    let listens: Vec<u64> = sensor
        .alerts()
        .iter()
        .filter(|a| pid_is(a, tor) && get(a, "rule.id") == "TORSENSOR-006")
        .filter_map(|a| get(a, "server.port").as_u64())
        .collect();
    assert_eq!(listens, [9050], "{:#?}", sensor.alerts());

    // The same binary renamed, started as tor starts a pluggable
    // transport: not seen by name, seen by TOR_PT_*.
    let copy = temp_path("renamed/notor");
    std::fs::create_dir_all(copy.parent().unwrap()).unwrap();
    std::fs::copy(TOR, &copy).unwrap();
    let data2 = data_dir("tor-local-data2");
    let copy_text = copy.to_str().unwrap().to_owned();
    let data2_text = data2.to_str().unwrap().to_owned();
    let notor = net.start(
        &copy_text,
        &[
            "--defaults-torrc",
            "/dev/null",
            "-f",
            "/dev/null",
            "--SocksPort",
            "0",
            "--DataDirectory",
            &data2_text,
        ],
        &["TOR_PT_MANAGED_TRANSPORT_VER=1"],
    );
    let doc = sensor.expect_alert("the renamed copy's start", |a| pid_is(a, notor));
    assert_eq!(get(&doc, "rule.id"), "TORSENSOR-005", "{doc:#}");
    assert_eq!(get(&doc, "torsensor.exec.reasons"), &json!(["environment"]));
    assert_eq!(get(&doc, "torsensor.exec.comm"), "notor");
    assert!(get(&doc, "torsensor.exec.program").is_null());
    assert_eq!(get(&doc, "process.executable"), &json!(copy_text));
    assert_eq!(
        get(&doc, "process.env_vars"),
        &json!(["TOR_PT_MANAGED_TRANSPORT_VER=1"])
    );
    drop(net);
    sensor.stop();
}
