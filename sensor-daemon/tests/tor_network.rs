//! A real Tor network, and the sensor watching it (issue 14).
//!
//! A private Tor network of Debian's `tor`: three v3 directory authorities,
//! two relays, an exit and a client (`TestingTorNetwork 1`, a 10 s voting
//! interval), each node its own uid with its own `127.10.0.N`. **Every tor
//! runs inside a network namespace that has only `lo` and no route to
//! anything else**, created here and checked before the first tor starts
//! (`ip route get 192.0.2.1` must fail in it): a tor that cannot reach its
//! authorities can never fall back to the public ones. The harness kills
//! exactly the processes it started and deletes the namespace, also when
//! an assertion fails (Drop).
//!
//! tor does not apply `OutboundBindAddress` to 127.x destinations, so in
//! the namespace one routing table per node uid makes the kernel pick the
//! node's own address as the source (`ip rule ... uidrange`), and a
//! connection's source names the node that made it.
//!
//! The sensor runs on the host (its programs see every namespace), fed the
//! network's own consensus two ways: the client's DataDirectory
//! (`tordir:`, microdesc flavour, its `cached-certs`) and, over HTTP from a
//! server on the host's loopback, the full consensus and `/tor/keys/all`
//! the test fetched from an authority's DirPort inside the namespace. Both
//! must pass signature verification against the three lab authorities.

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::http::FeedServer;
use common::{Sensor, get, kernel_tests_allowed, serial, temp_path};
use serde_json::{Value, json};

const UID_BASE: u32 = 64100;
const OR_PORT: u16 = 5000;
const DIR_PORT: u16 = 7000;
const SOCKS_PORT: u16 = 9050;
const WEB: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(127, 20, 0, 1), 8080);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Role {
    Authority,
    Relay,
    Exit,
    Client,
}

struct Node {
    name: String,
    idx: u32,
    role: Role,
    /// Relay identity fingerprint (not for the client).
    fingerprint: String,
    /// An authority's v3 identity.
    v3ident: String,
}

impl Node {
    fn uid(&self) -> u32 {
        UID_BASE + self.idx
    }
    fn addr(&self) -> Ipv4Addr {
        Ipv4Addr::new(127, 10, 0, self.idx as u8)
    }
}

/// The network: its namespace, directory, nodes and the tors it started.
struct TorNet {
    ns: String,
    dir: PathBuf,
    nodes: Vec<Node>,
    tors: Vec<(String, Child)>,
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl TorNet {
    /// The namespace (checked), keys and configuration; nothing runs yet.
    fn new() -> TorNet {
        let ns = format!("tstor{}", std::process::id());
        let dir = temp_path("tornet");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // Every node's uid walks down to its own DataDirectory.
        let mut p = dir.as_path();
        while let Some(parent) = p.parent() {
            if p.starts_with(std::env::temp_dir()) && p != std::env::temp_dir() {
                chmod(p, 0o755);
            }
            p = parent;
        }
        let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        run(Command::new("ip").args(["netns", "add", &ns]));
        let mut net = TorNet {
            ns,
            dir,
            nodes: Vec::new(),
            tors: Vec::new(),
        };
        net.isolate();
        for (name, idx, role) in [
            ("auth1", 1, Role::Authority),
            ("auth2", 2, Role::Authority),
            ("auth3", 3, Role::Authority),
            ("relay4", 4, Role::Relay),
            ("relay5", 5, Role::Relay),
            ("exit6", 6, Role::Exit),
            ("relay7", 7, Role::Relay),
            ("client10", 10, Role::Client),
        ] {
            net.nodes.push(Node {
                name: name.into(),
                idx,
                role,
                fingerprint: String::new(),
                v3ident: String::new(),
            });
        }
        net.make_keys();
        net
    }

    fn ip_ns(&self, args: &[&str]) -> String {
        run(Command::new("ip").args(["-n", &self.ns]).args(args))
    }

    /// Only `lo`, no route out, and one source address per node uid;
    /// checked before any tor runs.
    fn isolate(&self) {
        self.ip_ns(&["link", "set", "lo", "up"]);
        self.ip_ns(&["rule", "add", "pref", "1000", "lookup", "local"]);
        self.ip_ns(&["rule", "del", "pref", "0"]);
        for idx in [1, 2, 3, 4, 5, 6, 7, 10] {
            let (table, uid) = ((100 + idx).to_string(), (UID_BASE + idx).to_string());
            let src = format!("127.10.0.{idx}");
            self.ip_ns(&[
                "route",
                "add",
                "local",
                "127.0.0.0/8",
                "dev",
                "lo",
                "src",
                &src,
                "table",
                &table,
            ]);
            self.ip_ns(&[
                "rule",
                "add",
                "pref",
                &table,
                "uidrange",
                &format!("{uid}-{uid}"),
                "lookup",
                &table,
            ]);
            let route = self.ip_ns(&["route", "get", "127.20.0.1", "uid", &uid]);
            assert!(route.contains(&format!("src {src}")), "uid {uid}: {route}");
        }
        let links = self.ip_ns(&["-o", "link", "show"]);
        assert_eq!(links.lines().count(), 1, "only lo: {links}");
        assert!(links.contains(": lo:"), "{links}");
        assert!(self.ip_ns(&["route", "show", "default"]).trim().is_empty());
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns, "ip", "route", "get", "192.0.2.1"])
            .output()
            .unwrap();
        assert!(
            !out.status.success(),
            "the namespace must not route to 192.0.2.1: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }

    /// A command inside the namespace as `uid`, with an empty environment.
    fn as_uid(&self, uid: u32, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns, "setpriv"])
            .arg(format!("--reuid={uid}"))
            .arg(format!("--regid={uid}"))
            .args(["--clear-groups", "--", "env", "-i"])
            .arg("PATH=/usr/sbin:/usr/bin:/sbin:/bin")
            .arg("HOME=/nonexistent")
            .arg(program);
        cmd
    }

    fn node_dir(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn make_keys(&mut self) {
        std::fs::write(self.dir.join("empty"), "").unwrap();
        std::fs::write(self.dir.join("resolv.conf"), "nameserver 127.20.0.53\n").unwrap();
        let mut jobs = Vec::new();
        for node in &self.nodes {
            let d = self.node_dir(&node.name);
            std::fs::create_dir_all(d.join("keys")).unwrap();
            chown_tree(&d, node.uid());
            chmod(&d, 0o700);
            if node.role == Role::Authority {
                let mut cmd = self.as_uid(node.uid(), "/usr/bin/tor-gencert");
                cmd.current_dir(d.join("keys"))
                    .args(["--create-identity-key", "--passphrase-fd", "0", "-m", "12"])
                    .arg("-a")
                    .arg(format!("{}:{DIR_PORT}", node.addr()))
                    .args([
                        "-i",
                        "authority_identity_key",
                        "-s",
                        "authority_signing_key",
                    ])
                    .args(["-c", "authority_certificate"])
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped());
                let mut child = cmd.spawn().unwrap();
                child.stdin.take().unwrap().write_all(b"lab\n").unwrap();
                jobs.push(child);
            }
            if node.role != Role::Client {
                let mut cmd = self.as_uid(node.uid(), "/usr/bin/tor");
                cmd.args([
                    "--list-fingerprint",
                    "-f",
                    "/dev/null",
                    "--ignore-missing-torrc",
                ])
                .arg("--DataDirectory")
                .arg(&d)
                .arg("--ORPort")
                .arg(format!("{}:{OR_PORT}", node.addr()))
                .args(["--Nickname", &node.name, "--DisableNetwork", "1"])
                .arg("--GeoIPFile")
                .arg(self.dir.join("empty"))
                .arg("--GeoIPv6File")
                .arg(self.dir.join("empty"))
                .args(["--Log", "err stderr"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
                jobs.push(cmd.spawn().unwrap());
            }
        }
        for job in jobs {
            let out = job.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "key generation: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        for i in 0..self.nodes.len() {
            let d = self.node_dir(&self.nodes[i].name);
            if self.nodes[i].role != Role::Client {
                let text = std::fs::read_to_string(d.join("fingerprint")).unwrap();
                self.nodes[i].fingerprint = text.split_whitespace().nth(1).unwrap().to_owned();
            }
            if self.nodes[i].role == Role::Authority {
                let cert = std::fs::read_to_string(d.join("keys/authority_certificate")).unwrap();
                let fp = cert
                    .lines()
                    .find_map(|l| l.strip_prefix("fingerprint "))
                    .unwrap();
                self.nodes[i].v3ident = fp.trim().to_owned();
            }
        }
    }

    fn node(&self, name: &str) -> &Node {
        self.nodes.iter().find(|n| n.name == name).unwrap()
    }

    fn v3idents(&self) -> Vec<String> {
        let auths = self.nodes.iter().filter(|n| n.role == Role::Authority);
        auths.map(|n| n.v3ident.clone()).collect()
    }

    fn torrc(&self, node: &Node) -> String {
        let d = self.node_dir(&node.name);
        let mut t = format!(
            "TestingTorNetwork 1\nDataDirectory {d}\nNickname {name}\nLog notice file {d}/notice.log\n\
             RunAsDaemon 0\nShutdownWaitLength 0\nClientUseIPv6 0\nSafeLogging 0\n\
             GeoIPFile {empty}\nGeoIPv6File {empty}\nAssumeReachable 1\nPathsNeededToBuildCircuits 0.67\n",
            d = d.display(),
            name = node.name,
            empty = self.dir.join("empty").display(),
        );
        for auth in self.nodes.iter().filter(|n| n.role == Role::Authority) {
            t += &format!(
                "DirAuthority {} orport={OR_PORT} no-v2 v3ident={} {}:{DIR_PORT} {}\n",
                auth.name,
                auth.v3ident,
                auth.addr(),
                auth.fingerprint
            );
        }
        if node.role == Role::Client {
            t += &format!("SocksPort {}:{SOCKS_PORT}\n", node.addr());
            return t;
        }
        t += &format!(
            "SocksPort 0\nAddress {a}\nORPort {a}:{OR_PORT}\nOutboundBindAddress {a}\n\
             TestingDirAuthVoteGuard *\nTestingDirAuthVoteHSDir *\nTestingMinExitFlagThreshold 0\n\
             V3AuthNIntervalsValid 2\nServerDNSResolvConfFile {r}\nServerDNSDetectHijacking 0\n\
             ServerDNSTestAddresses\nContactInfo {n}@lab.invalid\n",
            a = node.addr(),
            r = self.dir.join("resolv.conf").display(),
            n = node.name
        );
        t += match node.role {
            Role::Authority => {
                "AuthoritativeDirectory 1\nV3AuthoritativeDirectory 1\nTestingV3AuthInitialVotingInterval 5\n\
                 TestingV3AuthInitialVoteDelay 2\nTestingV3AuthInitialDistDelay 2\nV3AuthVotingInterval 10\n\
                 V3AuthVoteDelay 2\nV3AuthDistDelay 2\nTestingV3AuthVotingStartOffset 0\nExitRelay 0\nExitPolicy reject *:*\n"
            }
            Role::Relay => "DirCache 0\nExitRelay 0\nExitPolicy reject *:*\n",
            // Inside a loopback-only namespace a wide exit policy is
            // harmless; one limited to 127/8 summarises as "reject 1-65535".
            Role::Exit => {
                "DirCache 0\nExitRelay 1\nExitPolicyRejectPrivate 0\nExitPolicyRejectLocalInterfaces 0\n\
                 ExitPolicy accept *:*\nRefuseUnknownExits 0\n"
            }
            Role::Client => unreachable!(),
        };
        if node.role == Role::Authority {
            t += &format!("DirPort {}:{DIR_PORT}\n", node.addr());
        }
        t
    }

    fn start(&mut self, name: &str) {
        let node = self.node(name);
        let torrc = self.dir.join(format!("{name}.torrc"));
        std::fs::write(&torrc, self.torrc(node)).unwrap();
        let mut cmd = self.as_uid(node.uid(), "/usr/bin/tor");
        cmd.arg("-f")
            .arg(&torrc)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = cmd.spawn().unwrap();
        self.tors.push((name.to_owned(), child));
    }

    /// The pid of node `name`'s tor (`ip netns exec`, `setpriv` and `env`
    /// all exec, so it is the child's own).
    fn pid(&self, name: &str) -> u32 {
        self.tors.iter().find(|(n, _)| n == name).unwrap().1.id()
    }

    /// GET from an authority's DirPort, from inside the namespace.
    fn dir_get(&self, path: &str) -> Option<Vec<u8>> {
        let path = path.to_owned();
        let to = SocketAddr::new(self.node("auth1").addr().into(), DIR_PORT);
        self.in_ns(move || {
            let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(2)).ok()?;
            s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
            write!(s, "GET {path} HTTP/1.0\r\nHost: lab\r\n\r\n").ok()?;
            let mut body = Vec::new();
            s.read_to_end(&mut body).ok()?;
            let at = body.windows(4).position(|w| w == b"\r\n\r\n")?;
            body.starts_with(b"HTTP/1.0 200")
                .then(|| body[at + 4..].to_vec())
        })
    }

    /// Runs `f` on a thread inside the namespace.
    fn in_ns<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
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

    /// Waits until the full consensus lists every relay in `names` (and an
    /// exit); returns it.
    fn wait_consensus(&self, names: &[&str], timeout: Duration) -> Vec<u8> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(doc) = self.dir_get("/tor/status-vote/current/consensus") {
                let text = String::from_utf8_lossy(&doc);
                let listed = names
                    .iter()
                    .all(|n| text.lines().any(|l| l.starts_with(&format!("r {n} "))));
                let exit = text
                    .lines()
                    .any(|l| l.starts_with("s ") && l.split(' ').any(|f| f == "Exit"));
                if listed && exit {
                    return doc;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no consensus listing {names:?} within {timeout:?}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    fn wait_log(&self, name: &str, needle: &str, timeout: Duration) {
        let path = self.node_dir(name).join("notice.log");
        let deadline = Instant::now() + timeout;
        while !std::fs::read_to_string(&path).is_ok_and(|t| t.contains(needle)) {
            assert!(
                Instant::now() < deadline,
                "{name}: no {needle:?} within {timeout:?}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The tail of every node's log, for a failure message.
    fn logs(&self) -> String {
        let mut out = String::new();
        for node in &self.nodes {
            let text = std::fs::read_to_string(self.node_dir(&node.name).join("notice.log"))
                .unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(12).collect();
            out += &format!("--- {} ---\n", node.name);
            for l in tail.iter().rev() {
                out += &format!("{l}\n");
            }
        }
        out
    }
}

impl Drop for TorNet {
    fn drop(&mut self) {
        for (_, child) in &mut self.tors {
            let _ = child.kill();
        }
        for (_, child) in &mut self.tors {
            let _ = child.wait();
        }
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
    }
}

fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn chown_tree(path: &Path, uid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(uid)).unwrap();
    if path.is_dir() {
        for entry in std::fs::read_dir(path).unwrap() {
            chown_tree(&entry.unwrap().path(), uid);
        }
    }
}

/// A web server in the namespace, on this test's own thread: its accepted
/// connections belong to this process.
fn web_server(net: &TorNet) -> std::thread::JoinHandle<()> {
    let path = PathBuf::from("/var/run/netns").join(&net.ns);
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap();
        // SAFETY: a namespace fd; only this thread moves.
        assert_eq!(
            unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) },
            0
        );
        let listener = TcpListener::bind(WEB).unwrap();
        tx.send(()).unwrap();
        listener.set_nonblocking(false).unwrap();
        for stream in listener.incoming().take(4) {
            let Ok(mut s) = stream else { continue };
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf);
            let _ = s.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhello");
        }
    });
    rx.recv().unwrap();
    handle
}

/// GET / through the client's SocksPort (SOCKS5, from inside the
/// namespace); the body.
fn fetch_through_tor(net: &TorNet) -> Option<String> {
    let socks = SocketAddr::new(net.node("client10").addr().into(), SOCKS_PORT);
    net.in_ns(move || {
        let mut s = TcpStream::connect_timeout(&socks, Duration::from_secs(2)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(20))).ok()?;
        s.write_all(&[5, 1, 0]).ok()?;
        let mut hello = [0u8; 2];
        s.read_exact(&mut hello).ok()?;
        let ip = WEB.ip().octets();
        let port = WEB.port().to_be_bytes();
        s.write_all(&[5, 1, 0, 1, ip[0], ip[1], ip[2], ip[3], port[0], port[1]])
            .ok()?;
        let mut reply = [0u8; 10];
        s.read_exact(&mut reply).ok()?;
        if reply[1] != 0 {
            return None;
        }
        s.write_all(b"GET / HTTP/1.0\r\n\r\n").ok()?;
        let mut body = String::new();
        s.read_to_string(&mut body).ok()?;
        Some(body)
    })
}

/// One line per alert: direction, source -> destination, pid, name, uid.
fn summary(sensor: &Sensor) -> String {
    let mut out = String::new();
    for a in sensor.alerts() {
        out += &format!(
            "{} {}:{} -> {}:{} pid={} name={} uid={} rule={}\n",
            get(&a, "network.direction"),
            get(&a, "source.ip"),
            get(&a, "source.port"),
            get(&a, "destination.ip"),
            get(&a, "destination.port"),
            get(&a, "process.pid"),
            get(&a, "process.name"),
            get(&a, "user.id"),
            get(&a, "rule.id"),
        );
    }
    out
}

/// The first alert matching `pred` within `timeout`; on a timeout, every
/// alert in one line each and the nodes' logs.
fn expect(
    sensor: &Sensor,
    net: &TorNet,
    what: &str,
    timeout: Duration,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(a) = sensor.alerts().into_iter().find(|a| pred(a)) {
            return a;
        }
        assert!(
            Instant::now() < deadline,
            "no alert for {what} within {timeout:?}; tor pids {:?}; alerts:\n{}\nsensor:\n{}\n{}",
            net.tors
                .iter()
                .map(|(n, c)| (n.clone(), c.id()))
                .collect::<Vec<_>>(),
            summary(sensor),
            sensor.stderr(),
            net.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn alerts_where(sensor: &Sensor, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
    sensor.alerts().into_iter().filter(|a| pred(a)).collect()
}

fn relays_of(alert: &Value) -> Vec<(String, String)> {
    get(alert, "torsensor.tor.relays")
        .as_array()
        .map(|a| {
            a.iter()
                .map(|r| {
                    (
                        r["fingerprint"].as_str().unwrap_or("").to_owned(),
                        r["nickname"].as_str().unwrap_or("").to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_private_tor_network_is_seen_attributed_and_explained() {
    if !kernel_tests_allowed("tor_network") {
        return;
    }
    let _serial = serial();
    let started = Instant::now();
    let mut net = TorNet::new();
    for name in ["auth1", "auth2", "auth3", "relay4", "relay5", "exit6"] {
        net.start(name);
    }
    let full = net.wait_consensus(
        &["auth1", "auth2", "auth3", "relay4", "relay5", "exit6"],
        Duration::from_secs(90),
    );
    let bootstrapped = started.elapsed();
    let certs = net
        .dir_get("/tor/keys/all")
        .expect("the authorities' certificates");

    // The mirror: the full consensus and the certificates, on host loopback.
    let server = FeedServer::start();
    server.serve("/tor/status-vote/current/consensus", &full);
    server.serve("/tor/keys/all", &certs);
    let client_dir = net.node_dir("client10");
    let authorities: Vec<String> = net.v3idents().iter().map(|v| format!("{v:?}")).collect();
    let config = temp_path("tornet.toml");
    std::fs::write(
        &config,
        format!(
            "allow_reserved = true\naggregation_window = \"0s\"\ntor_socks_ports = [\"127.10.0.10:9050\"]\n\n\
             [[feed]]\nname = \"lab-client\"\nlocation = \"tordir:{}\"\nwatch = \"1s\"\nauthorities = [{a}]\n\n\
             [[feed]]\nname = \"lab-mirror\"\nlocation = \"{}\"\nauthorities = [{a}]\njitter = \"0s\"\n",
            client_dir.display(),
            server.url("/tor/status-vote/current/consensus"),
            a = authorities.join(", ")
        ),
    )
    .unwrap();
    let cfg = config.to_str().unwrap();
    let sensor = Sensor::start_args(&["run", "--config", cfg], config.clone());
    sensor.wait_log(
        "feed lab-mirror: consensus (full flavour",
        1,
        Duration::from_secs(20),
    );
    sensor.wait_log("signed by 3 trusted authorities", 1, Duration::from_secs(1));

    // The client: its guards are relays the mirror's consensus lists.
    net.start("client10");
    net.wait_log("client10", "Bootstrapped 100%", Duration::from_secs(60));
    let client = net.node("client10");
    let by_client = |a: &Value| {
        get(a, "process.pid") == &json!(net.pid("client10"))
            && get(a, "network.direction") == "egress"
    };
    let alert = expect(
        &sensor,
        &net,
        "the client's OR connection",
        Duration::from_secs(20),
        by_client,
    );
    assert_eq!(get(&alert, "rule.id"), "TORSENSOR-001", "{alert:#}");
    assert_eq!(get(&alert, "torsensor.tor.confidence"), "high");
    assert_eq!(get(&alert, "process.name"), "tor");
    assert_eq!(get(&alert, "user.id"), &json!(client.uid().to_string()));
    assert_eq!(get(&alert, "source.ip"), &json!(client.addr().to_string()));
    assert_eq!(get(&alert, "destination.port"), &json!(OR_PORT));
    let guard_ip = get(&alert, "destination.ip").as_str().unwrap().to_owned();
    let guard = net
        .nodes
        .iter()
        .find(|n| n.addr().to_string() == guard_ip)
        .expect("the client connected to a lab relay");
    assert!(
        relays_of(&alert).contains(&(guard.fingerprint.clone(), guard.name.clone())),
        "the guard's fingerprint and nickname: {alert:#}"
    );
    let flags = get(&alert, "torsensor.tor.flags");
    assert!(
        flags
            .as_array()
            .is_some_and(|f| f.contains(&json!("Running"))),
        "{alert:#}"
    );

    // The client's own DataDirectory: its microdesc consensus, verified.
    sensor.wait_log(
        "feed lab-client: consensus (microdesc flavour: exits from the microdescriptors' exit policies (6 of 6 routers",
        1,
        Duration::from_secs(30),
    );

    // Through Tor to a web server in the namespace: inbound from the exit,
    // naming the server (this process) and the exit.
    let _web = web_server(&net);
    let mut body = None;
    for _ in 0..5 {
        body = fetch_through_tor(&net);
        if body.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    assert!(
        body.is_some_and(|b| b.ends_with("hello")),
        "no page through Tor\n{}",
        net.logs()
    );
    let exit = net.node("exit6");
    let inbound = |a: &Value| {
        get(a, "network.direction") == "ingress" && get(a, "destination.port") == &json!(WEB.port())
    };
    // Who used the SocksPort: this process, whatever relay it reached.
    let socks = |a: &Value| get(a, "rule.id") == "TORSENSOR-004";
    let alert = expect(
        &sensor,
        &net,
        "the SOCKS client",
        Duration::from_secs(5),
        socks,
    );
    assert_eq!(get(&alert, "destination.ip"), "127.10.0.10");
    assert_eq!(get(&alert, "destination.port"), &json!(SOCKS_PORT));
    assert_eq!(get(&alert, "process.pid"), &json!(std::process::id()));
    assert_eq!(get(&alert, "torsensor.tor.roles"), &json!(["socks"]));

    let alert = expect(
        &sensor,
        &net,
        "the exit's connection to the web server",
        Duration::from_secs(10),
        inbound,
    );
    assert_eq!(get(&alert, "rule.id"), "TORSENSOR-002", "{alert:#}");
    assert_eq!(get(&alert, "source.ip"), &json!(exit.addr().to_string()));
    assert_eq!(get(&alert, "process.pid"), &json!(std::process::id()));
    assert!(
        relays_of(&alert)
            .iter()
            .any(|(fp, _)| *fp == exit.fingerprint),
        "the exit's fingerprint: {alert:#}"
    );

    // A relay started now: once a consensus lists it and the client's
    // DataDirectory has that consensus, connections to it alert, without
    // a restart of the sensor.
    let relay7 = SocketAddr::new(net.node("relay7").addr().into(), OR_PORT);
    let probe = |net: &TorNet| {
        net.in_ns(move || {
            drop(TcpStream::connect_timeout(&relay7, Duration::from_secs(1)));
        })
    };
    let to_relay7 = |a: &Value| {
        get(a, "destination.ip") == &json!(relay7.ip().to_string())
            && get(a, "process.pid") == &json!(std::process::id())
    };
    net.start("relay7");
    std::thread::sleep(Duration::from_secs(1));
    probe(&net);

    // Not listed yet: connecting to it alerts nothing.
    assert!(
        alerts_where(&sensor, to_relay7).is_empty(),
        "relay7 alerted before any consensus listed it"
    );
    let listed = net.wait_consensus(&["relay7"], Duration::from_secs(60));
    assert!(!listed.is_empty());
    let deadline = Instant::now() + Duration::from_secs(60);
    while alerts_where(&sensor, to_relay7).is_empty() {
        assert!(
            Instant::now() < deadline,
            "no alert for relay7 within 60 s of a consensus listing it\n{}",
            sensor.stderr()
        );
        probe(&net);
        std::thread::sleep(Duration::from_secs(1));
    }
    let alert = alerts_where(&sensor, to_relay7).remove(0);
    assert!(
        relays_of(&alert).contains(&(net.node("relay7").fingerprint.clone(), "relay7".into())),
        "{alert:#}"
    );
    assert!(sensor.stderr().contains("feed lab-client: refreshed"));

    // Relay to relay (circuits, reachability tests, directory fetches over
    // ORPorts): attributed to the connecting relay's own tor.
    let relays = [
        "auth1", "auth2", "auth3", "relay4", "relay5", "exit6", "relay7",
    ];
    let relay_pids: Vec<u32> = relays.iter().map(|n| net.pid(n)).collect();
    let relay_to_relay = |a: &Value| {
        let pid = get(a, "process.pid").as_u64().unwrap_or(0) as u32;
        get(a, "network.direction") == "egress" && relay_pids.contains(&pid)
    };
    let alert = expect(
        &sensor,
        &net,
        "a relay-to-relay connection",
        Duration::from_secs(60),
        relay_to_relay,
    );
    let pid = get(&alert, "process.pid").as_u64().unwrap() as u32;
    let from = net.node(relays[relay_pids.iter().position(|p| *p == pid).unwrap()]);
    assert_eq!(get(&alert, "rule.id"), "TORSENSOR-001", "{alert:#}");
    assert_eq!(
        get(&alert, "source.ip"),
        &json!(from.addr().to_string()),
        "{alert:#}"
    );
    assert_eq!(get(&alert, "user.id"), &json!(from.uid().to_string()));
    assert_eq!(get(&alert, "process.name"), "tor");
    let peer_ip = get(&alert, "destination.ip").as_str().unwrap().to_owned();
    let peer = net
        .nodes
        .iter()
        .find(|n| n.addr().to_string() == peer_ip)
        .unwrap();
    assert_ne!(peer.role, Role::Client, "{alert:#}");
    assert!(
        relays_of(&alert).contains(&(peer.fingerprint.clone(), peer.name.clone())),
        "{alert:#}"
    );
    let (status, _, stderr) = sensor.stop();
    assert!(status.success(), "{stderr}");
    eprintln!(
        "tor network: consensus with 6 relays after {:.1} s; whole test {:.1} s",
        bootstrapped.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}
