//! Real-kernel tests of DNS lookups for Tor (issue 17): real resolvers
//! from Debian (`unbound` answering a local zone, `dnsmasq` as a local
//! stub forwarding to it) and real clients (`dig` over UDP and TCP,
//! `getent hosts` through glibc's resolver), over IPv4 and IPv6. Every
//! process runs in a network namespace of its own with only `lo` up (no
//! route out, checked): the cgroup programs see sockets of every network
//! namespace, and nothing here can clash with another test's port 53.
//! `ip netns exec` gives the clients the namespace's own
//! `/etc/netns/NAME/resolv.conf` as `/etc/resolv.conf`, which is how
//! glibc is pointed at the server. Root only; under CI=true nothing skips
//! (a missing tool is a failure), and the binary runs in the kernel matrix
//! (`cargo xtask vm-test`, Debian's 6.1 the oldest).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

/// A feed that lists nothing the tests touch.
const FEED: &str = "192.0.2.250/32\n";

/// The authoritative server (unbound) and the stub (dnsmasq).
const SERVER: &str = "127.53.0.1";
const STUB: &str = "127.53.0.2";

/// The zone unbound answers: two watched names, an onion name, and an
/// unlisted one that must never alert.
const ZONE: &str = r#"
  local-zone: "torproject.org." static
  local-data: "www.torproject.org. A 192.0.2.10"
  local-data: "www.torproject.org. AAAA 2001:db8::10"
  local-data: "bridges.torproject.org. A 192.0.2.12"
  local-data: "bridges.torproject.org. AAAA 2001:db8::12"
  local-zone: "onion." static
  local-data: "duckduckgogg42xjoc72x3sjasowoarfbgcmvfimaftt6twagswzczad.onion. A 192.0.2.13"
  local-zone: "example.com." static
  local-data: "www.example.com. A 192.0.2.11"
  local-data: "www.example.com. AAAA 2001:db8::11"
"#;

const ONION: &str = "duckduckgogg42xjoc72x3sjasowoarfbgcmvfimaftt6twagswzczad.onion";

/// A program from PATH (or sbin); a missing one skips the test, except
/// under CI=true, where it fails.
fn tool(name: &str) -> Option<PathBuf> {
    let found = ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file());
    if found.is_none() {
        let ci = std::env::var("CI").is_ok_and(|v| v == "true");
        assert!(
            !ci,
            "{name} is not installed (cargo xtask setup installs it); CI must not skip"
        );
        eprintln!("skipped: {name} is not installed");
    }
    found
}

fn tools_present() -> bool {
    ["unbound", "dnsmasq", "dig", "getent", "ip"]
        .iter()
        .all(|t| tool(t).is_some())
}

/// A network namespace with only `lo` up and no route out (checked), and
/// its own resolv.conf for `ip netns exec`.
struct DnsNs {
    name: String,
    dir: PathBuf,
}

impl DnsNs {
    fn new(tag: &str, nameserver: &str) -> DnsNs {
        let name = format!("tsdns{tag}{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        let ok = |cmd: &mut Command| {
            let out = cmd.output().unwrap();
            assert!(out.status.success(), "{cmd:?}: {out:?}");
        };
        ok(Command::new("ip").args(["netns", "add", &name]));
        let dir = PathBuf::from("/etc/netns").join(&name);
        let ns = DnsNs { name, dir };
        ok(Command::new("ip").args(["-n", &ns.name, "link", "set", "lo", "up"]));
        let out = Command::new("ip")
            .args(["-n", &ns.name, "route", "get", "192.0.2.1"])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{} routes out: {out:?}", ns.name);
        std::fs::create_dir_all(&ns.dir).unwrap();
        // `ip netns exec` binds this over /etc/resolv.conf, which must
        // exist (a VM's initramfs has none).
        if !Path::new("/etc/resolv.conf").exists() {
            std::fs::write("/etc/resolv.conf", "").unwrap();
        }
        std::fs::write(
            ns.dir.join("resolv.conf"),
            format!("nameserver {nameserver}\noptions timeout:2 attempts:1\n"),
        )
        .unwrap();
        ns
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    /// Runs `program args` in the namespace to the end; returns its pid
    /// (the process `ip netns exec` became) and output.
    fn run(&self, program: &str, args: &[&str]) -> (u32, Output) {
        let child = self
            .command(program)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id();
        (pid, child.wait_with_output().unwrap())
    }

    /// `dig` with `args` (the server and name among them); panics unless it
    /// got an answer.
    fn dig(&self, args: &[&str]) -> u32 {
        let mut all = vec!["+tries=1", "+time=3"];
        all.extend_from_slice(args);
        let (pid, out) = self.run("dig", &all);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("status: NOERROR"),
            "dig {args:?}: {out:?}"
        );
        pid
    }

    /// `getent hosts NAME` through glibc (the namespace's resolv.conf).
    fn getent(&self, name: &str) -> u32 {
        let (pid, out) = self.run("getent", &["hosts", name]);
        assert!(out.status.success(), "getent hosts {name}: {out:?}");
        pid
    }
}

impl Drop for DnsNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A resolver process, killed (by its pid) when dropped.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// unbound on `SERVER` and `::1`, port 53, answering `ZONE`.
fn start_unbound(ns: &DnsNs) -> Daemon {
    let dir = temp_path(&format!("unbound-{}", ns.name));
    std::fs::create_dir_all(&dir).unwrap();
    let conf = dir.join("unbound.conf");
    std::fs::write(
        &conf,
        format!(
            "server:\n  interface: {SERVER}\n  interface: ::1\n  port: 53\n  do-daemonize: no\n  username: \"\"\n  chroot: \"\"\n  directory: \"{}\"\n  pidfile: \"\"\n  use-syslog: no\n  logfile: \"\"\n  verbosity: 0\n  access-control: 127.0.0.0/8 allow\n  access-control: ::1 allow\n  module-config: \"iterator\"\n  do-not-query-localhost: no\n{ZONE}remote-control:\n  control-enable: no\n",
            dir.display()
        ),
    )
    .unwrap();
    let child = ns
        .command("unbound")
        .args(["-d", "-c", conf.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let daemon = Daemon(child);
    wait_answering(ns, SERVER);
    daemon
}

/// dnsmasq on `STUB`, port 53, no cache, forwarding everything to unbound.
fn start_dnsmasq(ns: &DnsNs) -> Daemon {
    let pid_file = temp_path(&format!("dnsmasq-{}.pid", ns.name));
    let child = ns
        .command("dnsmasq")
        .args([
            "--keep-in-foreground",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            &format!("--listen-address={STUB}"),
            "--port=53",
            &format!("--server={SERVER}"),
            "--cache-size=0",
            "--user=root",
            "--group=root",
            &format!("--pid-file={}", pid_file.display()),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let daemon = Daemon(child);
    wait_answering(ns, STUB);
    daemon
}

/// Waits until `server` answers (an unlisted name, which never alerts).
fn wait_answering(ns: &DnsNs, server: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, out) = ns.run(
            "dig",
            &[
                "+tries=1",
                "+time=1",
                &format!("@{server}"),
                "www.example.com",
            ],
        );
        if String::from_utf8_lossy(&out.stdout).contains("status: NOERROR") {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{server} does not answer: {out:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A sensor with `[dns] enabled`, started after the resolvers.
fn dns_sensor(name: &str, stats: &Path) -> Sensor {
    let config = temp_path(&format!("{name}.toml"));
    std::fs::write(&config, "[dns]\nenabled = true\n").unwrap();
    let sensor = Sensor::start(
        name,
        FEED,
        &[
            "--config",
            config.to_str().unwrap(),
            "--stats-file",
            stats.to_str().unwrap(),
        ],
    );
    sensor.wait_log("DNS hooks on cgroup", 1, Duration::from_secs(10));
    sensor
}

fn pid_of(doc: &Value) -> u64 {
    get(doc, "process.pid").as_u64().unwrap_or(0)
}

fn qname(doc: &Value) -> &str {
    get(doc, "dns.question.name").as_str().unwrap_or("")
}

/// What every DNS alert has.
fn assert_dns_shape(doc: &Value) {
    assert_eq!(get(doc, "event.kind"), "alert", "{doc:#}");
    assert_eq!(
        get(doc, "event.category"),
        &json!(["network", "intrusion_detection"])
    );
    assert_eq!(get(doc, "event.type"), &json!(["protocol"]));
    assert_eq!(get(doc, "event.action"), "tor-dns-query");
    assert_eq!(get(doc, "torsensor.signal"), "dns");
    assert_eq!(get(doc, "dns.type"), "query");
    assert_eq!(get(doc, "network.protocol"), "dns");
    assert_eq!(get(doc, "network.direction"), "egress");
    assert_eq!(get(doc, "destination.port"), 53);
    assert_eq!(get(doc, "torsensor.dns.local_server"), true);
    assert!(doc.get("source").is_none(), "{doc:#}");
}

#[test]
fn direct_queries_name_the_client_over_udp_tcp_ipv6_and_glibc() {
    if !kernel_tests_allowed("direct_queries_name_the_client_over_udp_tcp_ipv6_and_glibc")
        || !tools_present()
    {
        return;
    }
    let _g = serial();
    let ns = DnsNs::new("d", SERVER);
    let _unbound = start_unbound(&ns);
    let stats = temp_path("dns-direct.stats.json");
    let sensor = dns_sensor("dns-direct", &stats);
    let at = format!("@{SERVER}");

    // UDP, IPv4, mixed case: the name comes out lower case.
    let udp = ns.dig(&[&at, "WWW.TorProject.org", "A"]);
    let doc = sensor.expect_alert("dig's UDP query", |a| pid_of(a) == udp as u64);
    assert_dns_shape(&doc);
    assert_eq!(get(&doc, "rule.id"), "TORSENSOR-008");
    assert_eq!(qname(&doc), "www.torproject.org");
    assert_eq!(get(&doc, "dns.question.type"), "A");
    assert_eq!(get(&doc, "network.transport"), "udp");
    assert_eq!(get(&doc, "network.type"), "ipv4");
    assert_eq!(get(&doc, "destination.ip"), SERVER);
    assert_eq!(get(&doc, "process.name"), "dig");
    assert_eq!(get(&doc, "process.executable"), "/usr/bin/dig");
    assert_eq!(get(&doc, "torsensor.attribution"), "sender");
    assert_eq!(get(&doc, "torsensor.dns.category"), "tor-project");
    assert_eq!(get(&doc, "torsensor.dns.suffix"), "torproject.org");
    assert!(get(&doc, "torsensor.dns.via_resolver").is_null(), "{doc:#}");

    // TCP: an onion name, the leak rule.
    let tcp = ns.dig(&["+tcp", &at, ONION]);
    let doc = sensor.expect_alert("dig's TCP query", |a| pid_of(a) == tcp as u64);
    assert_dns_shape(&doc);
    assert_eq!(get(&doc, "rule.id"), "TORSENSOR-007");
    assert_eq!(get(&doc, "event.severity"), 73);
    assert_eq!(qname(&doc), ONION);
    assert_eq!(get(&doc, "network.transport"), "tcp");
    assert_eq!(get(&doc, "torsensor.dns.category"), "onion");

    // IPv6 to ::1: the most specific watched suffix decides.
    let v6 = ns.dig(&["@::1", "bridges.torproject.org", "AAAA"]);
    let doc = sensor.expect_alert("dig's IPv6 query", |a| pid_of(a) == v6 as u64);
    assert_dns_shape(&doc);
    assert_eq!(get(&doc, "network.type"), "ipv6");
    assert_eq!(get(&doc, "destination.ip"), "::1");
    assert_eq!(get(&doc, "dns.question.type"), "AAAA");
    assert_eq!(get(&doc, "torsensor.dns.category"), "bridges");

    // glibc, through getent and the namespace's resolv.conf.
    let glibc = ns.getent("www.torproject.org");
    let doc = sensor.expect_alert("getent's query", |a| pid_of(a) == glibc as u64);
    assert_dns_shape(&doc);
    assert_eq!(get(&doc, "process.name"), "getent");
    assert_eq!(qname(&doc), "www.torproject.org");

    // An unlisted name: answered, never alerted (its queries went before
    // a last watched one, whose alert shows the sensor kept up).
    let quiet = ns.dig(&[&at, "www.example.com"]);
    let quiet_glibc = ns.getent("www.example.com");
    let last = ns.dig(&[&at, "www.torproject.org"]);
    sensor.expect_alert("the last query", |a| pid_of(a) == last as u64);
    let (status, _, stderr, alerts) = sensor.stop_collect();
    assert!(status.success(), "{stderr}");
    for a in &alerts {
        assert_ne!(qname(a), "www.example.com", "{a:#}");
        assert!(pid_of(a) != quiet as u64 && pid_of(a) != quiet_glibc as u64);
    }
    // Only hits crossed: the kernel looked at every query, sent the
    // watched ones (dig: one each; getent: A and AAAA), parsed them all.
    let stats: Value = serde_json::from_slice(&std::fs::read(&stats).unwrap()).unwrap();
    let k = &stats["kernel"];
    // Each query is in an alert's count (getent's A and AAAA for one
    // name are one alert and a summary: aggregation groups per name).
    let sent = k["dns_sent"].as_u64().unwrap();
    let counted: u64 = alerts
        .iter()
        .map(|a| get(a, "torsensor.count").as_u64().unwrap_or(1))
        .sum();
    assert_eq!(sent, counted, "{k:#}");
    assert!(k["dns_seen"].as_u64().unwrap() >= sent + 2, "{k:#}");
    assert_eq!(k["dns_unparsed"], 0, "{k:#}");
    assert_eq!(k["dns_ringbuf_full"], 0, "{k:#}");
    assert_eq!(k["dns_no_process"], 0, "{k:#}");
    assert!(k["dns_sock_recorded"].as_u64().unwrap() >= 7, "{k:#}");
}

#[test]
fn through_a_local_stub_the_client_and_the_forwarding_resolver_are_named() {
    if !kernel_tests_allowed(
        "through_a_local_stub_the_client_and_the_forwarding_resolver_are_named",
    ) || !tools_present()
    {
        return;
    }
    let _g = serial();
    let ns = DnsNs::new("s", STUB);
    let _unbound = start_unbound(&ns);
    let dnsmasq = start_dnsmasq(&ns);
    let stats = temp_path("dns-stub.stats.json");
    let sensor = dns_sensor("dns-stub", &stats);

    // dig asks the stub; the stub asks unbound. Two queries on the wire,
    // two alerts: dig's to the stub, and the stub's upstream, which names
    // dnsmasq and says it forwards for someone else.
    let client = ns.dig(&[&format!("@{STUB}"), ONION]);
    let doc = sensor.expect_alert("dig's query to the stub", |a| pid_of(a) == client as u64);
    assert_dns_shape(&doc);
    assert_eq!(get(&doc, "destination.ip"), STUB);
    assert_eq!(get(&doc, "process.name"), "dig");
    assert!(get(&doc, "torsensor.dns.via_resolver").is_null(), "{doc:#}");
    let stub_pid = dnsmasq.0.id() as u64;
    let doc = sensor.expect_alert("the stub's query upstream", |a| {
        pid_of(a) == stub_pid && qname(a) == ONION
    });
    assert_dns_shape(&doc);
    assert_eq!(get(&doc, "rule.id"), "TORSENSOR-007");
    assert_eq!(get(&doc, "destination.ip"), SERVER);
    assert_eq!(get(&doc, "process.name"), "dnsmasq");
    assert_eq!(get(&doc, "torsensor.dns.via_resolver"), true);
    assert_eq!(get(&doc, "torsensor.dns.resolver"), "dnsmasq");

    // glibc through the stub (the namespace's resolv.conf points at it).
    let glibc = ns.getent("bridges.torproject.org");
    let doc = sensor.expect_alert("getent's query to the stub", |a| pid_of(a) == glibc as u64);
    assert_eq!(get(&doc, "process.name"), "getent");
    assert_eq!(get(&doc, "destination.ip"), STUB);
    assert_eq!(get(&doc, "torsensor.dns.category"), "bridges");
    sensor.expect_alert("the stub forwarding getent's query", |a| {
        pid_of(a) == stub_pid && qname(a) == "bridges.torproject.org"
    });

    let sensor_pid = sensor.pid();
    assert_eq!(dns_programs_of(sensor_pid), 5, "five DNS programs attached");
    let (status, _, stderr) = sensor.stop();
    assert!(status.success(), "{stderr}");
    // Detached at exit: the links belonged to the sensor.
    let deadline = Instant::now() + Duration::from_secs(2);
    while dns_programs_of(sensor_pid) != 0 {
        assert!(
            Instant::now() < deadline,
            "DNS programs left behind 2 s after exit"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The DNS programs held by `pid` or by no process (an orphan), as
/// `tests/local_signals.rs` counts the exec program.
fn dns_programs_of(pid: u32) -> usize {
    common::bpf_programs_of(pid, |n| {
        n.starts_with("dns_connect") || n.starts_with("dns_sendmsg") || n == "dns_egress"
    })
    .len()
}

/// The cgroup v2 hierarchy's mount point (where both features attach by
/// default).
fn cgroup2_root() -> PathBuf {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    mounts
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(f[1]))
        })
        .expect("a cgroup v2 hierarchy is mounted")
}

#[test]
fn dns_and_enforced_blocking_share_the_connect_hooks() {
    if !kernel_tests_allowed("dns_and_enforced_blocking_share_the_connect_hooks")
        || !tools_present()
    {
        return;
    }
    let _g = serial();
    let ns = DnsNs::new("b", SERVER);
    let _unbound = start_unbound(&ns);
    // Blocking refuses outbound connects to the listed 127.66.53.1; DNS
    // watches queries; both on the root's connect4/connect6 hooks.
    let rules = temp_path("dns-block-rules.d");
    std::fs::create_dir_all(&rules).unwrap();
    std::fs::write(
        rules.join("50-block.toml"),
        "[[rule]]\nid = \"TEST-BLOCK\"\nname = \"block\"\ndescription = \"test\"\nseverity = 73\npriority = \"Warning\"\ntags = []\naction = \"block\"\nwhen = { direction = \"egress\", role = \"exit\" }\n",
    )
    .unwrap();
    let cfg = temp_path("dns-block.toml");
    std::fs::write(
        &cfg,
        format!("rules_dir = {rules:?}\n[blocking]\nmode = \"enforce\"\n[dns]\nenabled = true\n"),
    )
    .unwrap();
    let sensor = Sensor::start(
        "dns-block",
        "127.66.53.1/32\n",
        &["--config", cfg.to_str().unwrap()],
    );
    sensor.wait_log(
        "blocking enforce: blocking hooks on cgroup",
        1,
        Duration::from_secs(5),
    );
    sensor.wait_log("DNS hooks on cgroup", 1, Duration::from_secs(5));

    // Both sets on the same hook, side by side.
    let out = Command::new("bpftool")
        .args(["-j", "cgroup", "show"])
        .arg(cgroup2_root())
        .output()
        .expect("bpftool");
    assert!(out.status.success(), "{out:?}");
    let attached: Value = serde_json::from_slice(&out.stdout).unwrap();
    // bpftool names the hooks `cgroup_inet4_connect`..., older ones
    // `connect4`...
    let on = |hook: &[&str]| -> Vec<String> {
        let mut names: Vec<String> = attached
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| hook.iter().any(|h| p["attach_type"] == *h))
            .filter_map(|p| p["name"].as_str().map(str::to_owned))
            .filter(|n| n.starts_with("dns_") || n.starts_with("block_"))
            .collect();
        names.sort();
        names
    };
    assert_eq!(
        on(&["cgroup_inet4_connect", "connect4"]),
        ["block_connect4", "dns_connect4"],
        "{attached:#}"
    );
    assert_eq!(
        on(&["cgroup_inet6_connect", "connect6"]),
        ["block_connect6", "dns_connect6"],
        "{attached:#}"
    );
    assert_eq!(
        on(&["cgroup_udp4_sendmsg", "sendmsg4"]),
        ["dns_sendmsg4"],
        "{attached:#}"
    );
    assert_eq!(
        on(&["cgroup_inet_egress", "egress"]),
        ["dns_egress"],
        "{attached:#}"
    );

    // Blocking still refuses...
    let fd = socket(libc::AF_INET);
    let (sa, len) = {
        let mut sin: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        sin.sin_family = libc::AF_INET as u16;
        sin.sin_port = 9u16.to_be();
        sin.sin_addr.s_addr = u32::from_ne_bytes([127, 66, 53, 1]);
        (sin, size_of::<libc::sockaddr_in>() as u32)
    };
    use std::os::fd::AsRawFd as _;
    // SAFETY: a valid socket and sockaddr_in of the given length.
    let rc = unsafe { libc::connect(fd.as_raw_fd(), (&raw const sa).cast(), len) };
    let err = std::io::Error::last_os_error();
    assert_eq!((rc, err.raw_os_error()), (-1, Some(libc::EPERM)), "{err}");
    // ... and DNS still watches.
    let pid = ns.dig(&[&format!("@{SERVER}"), "www.torproject.org"]);
    let doc = sensor.expect_alert("dig's query", |a| pid_of(a) == pid as u64);
    assert_eq!(get(&doc, "process.name"), "dig");
    assert_eq!(get(&doc, "rule.id"), "TORSENSOR-008");
    sensor.expect_alert("the refused connect", |a| {
        get(a, "torsensor.block.result") == "blocked"
    });
    let (status, _, stderr) = sensor.stop();
    assert!(status.success(), "{stderr}");
}
