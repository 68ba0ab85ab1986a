//! Opt-in blocking with the real sensor, real cgroups and real connections
//! (root): a blocked outbound connect fails in the caller with the
//! configured errno while an unlisted one from the same process succeeds;
//! a process outside the rule's cgroup and an excepted process are not
//! blocked; blocking holds across a feed refresh; an inbound connection
//! from a listed address in a network namespace never reaches `accept`;
//! a dry run lets both directions through and alerts "would block"; the hooks
//! are gone when the sensor exits (bpftool).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::cgroups::Cgroups;
use common::metrics::{endpoint, wait_sample};
use common::{NetNs, Sensor, bind, get, kernel_tests_allowed, serial, socket, temp_path};
use serde_json::{Value, json};

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// A block rule on outbound connections from the cgroup `scope`, with an
/// exception for processes named `tsexempt`, and one on inbound
/// connections (role exit).
fn rules(scope: &str) -> String {
    format!(
        r#"
[[rule]]
id = "TEST-BLOCK-OUT"
name = "Block outbound to Tor from the test cgroup"
description = "test"
severity = 73
priority = "Warning"
tags = ["tor", "T1090.003"]
action = "block"
when = {{ direction = "egress", cgroup = ["{scope}"] }}
[[rule.except]]
reason = "the exempt tool"
when = {{ process = ["tsexempt"] }}

[[rule]]
id = "TEST-BLOCK-IN"
name = "Block inbound from Tor exits"
description = "test"
severity = 47
priority = "Notice"
tags = ["tor", "T1090.003"]
action = "block"
when = {{ direction = "ingress", role = "exit" }}
"#
    )
}

/// The sensor on `feed`, blocking in `mode` with `errno`, attached at the
/// cgroup root `root`, with [`rules`] for `scope`.
fn start(name: &str, feed: &str, mode: &str, errno: &str, root: &Path, scope: &str) -> Sensor {
    let dir = temp_path(&format!("{name}-rules.d"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("50-block.toml"), rules(scope)).unwrap();
    let cfg = temp_path(&format!("{name}.toml"));
    std::fs::write(
        &cfg,
        format!(
            "rules_dir = {dir:?}\naggregation_window = \"0s\"\n[blocking]\nmode = \"{mode}\"\nerrno = \"{errno}\"\ncgroup = {root:?}\n"
        ),
    )
    .unwrap();
    let sensor = Sensor::start(name, feed, &["--config", cfg.to_str().unwrap()]);
    sensor.wait_log(
        &format!("blocking {mode}: blocking hooks on cgroup"),
        1,
        Duration::from_secs(5),
    );
    sensor
}

/// Runs `bash` (or a copy of it) in the cgroup `path`: once it is there,
/// it connects to each target in turn and says `ok` or why not.
fn connects_from(
    cgroups: &mut Cgroups,
    path: &str,
    shell: &Path,
    targets: &[SocketAddr],
) -> Vec<String> {
    let script = r#"read -r _
for t in "$@"; do
  if err=$( { : 3<>"/dev/tcp/${t%:*}/${t##*:}"; } 2>&1 ); then echo "$t ok"; else echo "$t fail: ${err##*: }"; fi
done"#;
    let mut cmd = Command::new(shell);
    cmd.arg("-c")
        .arg(script)
        .arg("connector")
        .args(targets.iter().map(|t| t.to_string()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    cgroups.spawn_cmd_in(path, cmd);
    let child = cgroups.child().unwrap();
    child.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let out = BufReader::new(child.stdout.take().unwrap());
    let lines: Vec<String> = out.lines().map(Result::unwrap).collect();
    cgroups.stop_child();
    lines
}

/// Where `bash` is (`PATH`): the VMs of the kernel matrix put it
/// elsewhere than a Debian host.
fn bash() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("bash"))
        .find(|p| p.is_file())
        .expect("bash on PATH")
}

/// A copy of bash named `tsexempt` (its command name, which the
/// exception names).
fn exempt_shell() -> PathBuf {
    let path = temp_path("tsexempt");
    if !path.exists() {
        std::fs::copy(bash(), &path).unwrap();
    }
    path
}

/// The listeners connections go to: they accept in the background.
fn listener(at: &str) -> SocketAddr {
    let l = TcpListener::bind(at).unwrap();
    let a = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            drop(s);
        }
    });
    a
}

/// The alert with `event.action` `action`, checked to cite `rule` with
/// `event.type` `[connection, kind]`.
fn block_alert(sensor: &Sensor, action: &str, rule: &str, kind: &str) -> Value {
    let alert = sensor.expect_alert(action, |a| get(a, "event.action") == action);
    assert_eq!(get(&alert, "rule.id"), rule);
    assert_eq!(get(&alert, "event.type"), &json!(["connection", kind]));
    alert
}

/// Waits until the kernel's blocking counter for `labels` reaches `n`.
fn wait_block_counter(sensor: &Sensor, labels: &str, n: f64) {
    let series = format!("torsensor_kernel_block_total{{{labels}}}");
    wait_sample(endpoint(sensor), &series, n);
}

/// This test's cgroups, its `scope` cgroup (the rules' `cgroup`), and the
/// hierarchy's root (where the programs attach).
fn scoped(tag: &str) -> (Cgroups, String, PathBuf) {
    let cgroups = Cgroups::new(tag, false);
    let scope = cgroups.create("scope");
    let root = cgroups.root.clone();
    (cgroups, scope, root)
}

fn bpftool_cgroup(root: &Path) -> String {
    let out = Command::new("bpftool")
        .args(["cgroup", "show"])
        .arg(root)
        .output()
        .expect("run bpftool");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn outbound_blocking_refuses_listed_peers_in_scope_only_and_survives_a_refresh() {
    if !kernel_tests_allowed("blocking") {
        return;
    }
    let _serial = serial();
    let (mut cgroups, scope, root) = scoped("block");
    let listed = listener("127.66.30.1:0");
    let later = listener("127.67.30.1:0");
    let unlisted = listener("127.0.0.1:0");
    let sensor = start(
        "block-out",
        "127.66.30.0/24\n",
        "enforce",
        "EPERM",
        &root,
        &scope,
    );
    let hooks = bpftool_cgroup(&root);
    for program in ["block_connect4", "block_connect6", "block_ingress"] {
        assert!(hooks.contains(program), "{program} not attached:\n{hooks}");
    }

    // In scope: the listed peer is refused in the caller, the unlisted one
    // in the same process goes through.
    let bash = bash();
    let got = connects_from(&mut cgroups, &scope, &bash, &[listed, unlisted]);
    assert_eq!(
        got,
        [
            format!("{listed} fail: Operation not permitted"),
            format!("{unlisted} ok")
        ]
    );
    let alert = block_alert(
        &sensor,
        "tor-connection-outbound-blocked",
        "TEST-BLOCK-OUT",
        "denied",
    );
    assert_eq!(get(&alert, "event.outcome"), "failure");
    assert_eq!(get(&alert, "destination.ip"), "127.66.30.1");
    assert_eq!(get(&alert, "destination.port"), listed.port());
    assert_eq!(get(&alert, "process.name"), "bash");
    assert_eq!(get(&alert, "torsensor.block.result"), "blocked");

    // Outside the rule's cgroup (this process), and the excepted process
    // inside it: not blocked.
    std::net::TcpStream::connect(listed).expect("outside the scope, not blocked");
    let got = connects_from(&mut cgroups, &scope, &exempt_shell(), &[listed]);
    assert_eq!(got, [format!("{listed} ok")]);
    wait_block_counter(&sensor, "direction=\"any\",result=\"excepted\"", 1.0);

    // A refresh that adds a range: the old one stays blocked, the new one
    // is blocked from the switch on.
    std::fs::write(&sensor.feed, "127.66.30.0/24\n127.67.30.0/24\n").unwrap();
    sensor.signal(libc::SIGHUP);
    sensor.wait_log("exit addresses 2 IPv4", 1, Duration::from_secs(10));
    let got = connects_from(&mut cgroups, &scope, &bash, &[listed, later, unlisted]);
    assert_eq!(
        got,
        [
            format!("{listed} fail: Operation not permitted"),
            format!("{later} fail: Operation not permitted"),
            format!("{unlisted} ok")
        ]
    );
    let (status, _, stderr) = sensor.stop();
    assert!(status.success(), "{stderr}");
    let hooks = bpftool_cgroup(&root);
    assert!(!hooks.contains("block_"), "hooks left after exit:\n{hooks}");
}

#[test]
fn econnrefused_when_configured_and_a_dry_run_lets_the_connect_through() {
    if !kernel_tests_allowed("blocking") {
        return;
    }
    let _serial = serial();
    let (mut cgroups, scope, root) = scoped("block-errno");
    // Something listens there: only the block can refuse it.
    let listed = listener("127.66.31.1:0");
    let sensor = start(
        "block-errno",
        "127.66.31.0/24\n",
        "enforce",
        "ECONNREFUSED",
        &root,
        &scope,
    );
    let got = connects_from(&mut cgroups, &scope, &bash(), &[listed]);
    assert_eq!(got, [format!("{listed} fail: Connection refused")]);
    block_alert(
        &sensor,
        "tor-connection-outbound-blocked",
        "TEST-BLOCK-OUT",
        "denied",
    );
    let (status, _, stderr) = sensor.stop();
    assert!(status.success(), "{stderr}");

    // Dry run: the same connect goes through, alerted as "would block".
    let sensor = start(
        "block-errno-dry",
        "127.66.31.0/24\n",
        "dry-run",
        "ECONNREFUSED",
        &root,
        &scope,
    );
    let got = connects_from(&mut cgroups, &scope, &bash(), &[listed]);
    assert_eq!(got, [format!("{listed} ok")]);
    let alert = block_alert(
        &sensor,
        "tor-connection-outbound-would-block",
        "TEST-BLOCK-OUT",
        "allowed",
    );
    assert_eq!(get(&alert, "process.name"), "bash");
    assert_eq!(get(&alert, "torsensor.block.result"), "would-block");
    wait_block_counter(&sensor, "direction=\"any\",result=\"would_block\"", 1.0);
    let (status, _, stderr) = sensor.stop();
    assert!(status.success(), "{stderr}");
}

/// Connects from `from` to `to` within `wait`: the stream, or the error.
fn try_connect_from(
    from: SocketAddr,
    to: SocketAddr,
    wait: Duration,
) -> std::io::Result<std::net::TcpStream> {
    let fd = socket(libc::AF_INET6);
    bind(&fd, from);
    let tv = libc::timeval {
        tv_sec: wait.as_secs() as libc::time_t,
        tv_usec: 0,
    };
    // SAFETY: valid fd and option of the right size; connect() honours
    // SO_SNDTIMEO on Linux.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDTIMEO,
            (&raw const tv).cast(),
            size_of::<libc::timeval>() as libc::socklen_t,
        );
    }
    let stream = std::net::TcpStream::from(fd);
    let SocketAddr::V6(v6) = to else {
        panic!("IPv6 only")
    };
    let sa = libc::sockaddr_in6 {
        sin6_family: libc::AF_INET6 as libc::sa_family_t,
        sin6_port: v6.port().to_be(),
        sin6_flowinfo: 0,
        sin6_addr: libc::in6_addr {
            s6_addr: v6.ip().octets(),
        },
        sin6_scope_id: 0,
    };
    // SAFETY: valid fd and sockaddr_in6.
    let rc = unsafe {
        libc::connect(
            stream.as_raw_fd(),
            (&raw const sa).cast(),
            size_of::<libc::sockaddr_in6>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(stream)
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// From the namespace `ns`: a connection from `from` to `to` that writes
/// `hello` if it gets through.
fn client_in(ns: &std::sync::Arc<NetNs>, from: &str, to: SocketAddr) -> std::io::Result<()> {
    let ns = ns.clone();
    let from = addr(&format!("[{from}]:0"));
    std::thread::spawn(move || {
        ns.enter();
        let mut s = try_connect_from(from, to, Duration::from_secs(3))?;
        s.write_all(b"hello")
    })
    .join()
    .unwrap()
}

/// Accepts whatever arrived on `l` (non-blocking): the peers and what they
/// sent.
fn accepted(l: &TcpListener) -> Vec<(SocketAddr, String)> {
    l.set_nonblocking(true).unwrap();
    let mut out = Vec::new();
    while let Ok((mut s, peer)) = l.accept() {
        s.set_nonblocking(false).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut text = String::new();
        let _ = s.read_to_string(&mut text);
        out.push((peer, text));
    }
    out
}

#[test]
fn inbound_from_a_listed_exit_never_reaches_accept_and_a_dry_run_lets_it_in() {
    if !kernel_tests_allowed("blocking") {
        return;
    }
    let _serial = serial();
    let ns = std::sync::Arc::new(NetNs::new("k", "2001:db8:79::1", "2001:db8:79::2"));
    ns.add_addr("2001:db8:79::3");
    let (cgroups, scope, root) = scoped("block-in");
    let l = TcpListener::bind("[2001:db8:79::1]:0").unwrap();
    let to = l.local_addr().unwrap();
    let feed = "2001:db8:79::2/128\n";

    let sensor = start("block-in", feed, "enforce", "EPERM", &root, &scope);
    let refused = client_in(&ns, "2001:db8:79::2", to);
    assert!(refused.is_err(), "the listed client got through");
    client_in(&ns, "2001:db8:79::3", to).expect("the unlisted client gets through");
    let got = accepted(&l);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].0.ip(), addr("[2001:db8:79::3]:0").ip());
    assert_eq!(got[0].1, "hello");
    let alert = block_alert(
        &sensor,
        "tor-connection-inbound-blocked",
        "TEST-BLOCK-IN",
        "denied",
    );
    assert_eq!(get(&alert, "source.ip"), "2001:db8:79::2");
    assert_eq!(get(&alert, "destination.port"), to.port());
    // The client's SYN retransmissions are counted, reported once.
    wait_block_counter(&sensor, "direction=\"ingress\",result=\"blocked\"", 2.0);
    let (status, _, stderr, alerts) = sensor.stop_collect();
    assert!(status.success(), "{stderr}");
    let reports = alerts
        .iter()
        .filter(|a| get(a, "event.action") == "tor-connection-inbound-blocked")
        .count();
    assert_eq!(reports, 1, "one report per refused connection");

    // Dry run: both get in; the listed one is alerted as "would block".
    let sensor = start("block-in-dry", feed, "dry-run", "EPERM", &root, &scope);
    client_in(&ns, "2001:db8:79::2", to).expect("a dry run lets it in");
    client_in(&ns, "2001:db8:79::3", to).expect("the unlisted client gets through");
    assert_eq!(accepted(&l).len(), 2);
    let alert = block_alert(
        &sensor,
        "tor-connection-inbound-would-block",
        "TEST-BLOCK-IN",
        "allowed",
    );
    assert_eq!(get(&alert, "torsensor.block.result"), "would-block");
    assert_eq!(get(&alert, "torsensor.block.mode"), "dry-run");
    wait_block_counter(&sensor, "direction=\"any\",result=\"would_block\"", 1.0);
    let (status, _, stderr) = sensor.stop();
    assert!(status.success(), "{stderr}");
    drop(cgroups);
}

#[test]
fn a_sensor_asked_to_block_where_it_cannot_does_not_start() {
    if !kernel_tests_allowed("blocking") {
        return;
    }
    let _serial = serial();
    let cfg = temp_path("block-bad-cgroup.toml");
    std::fs::write(
        &cfg,
        "[blocking]\nmode = \"enforce\"\ncgroup = \"/nonexistent/cgroup\"\n",
    )
    .unwrap();
    let out = Command::new(common::BIN)
        .args(["run", "--config", cfg.to_str().unwrap(), "--state-dir"])
        .arg(temp_path("block-bad-state"))
        .env("TORSENSOR_METRICS_LISTEN", "off")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("blocking: cannot open cgroup /nonexistent/cgroup"),
        "{stderr}"
    );
}

/// A do-nothing `cgroup/connect4` program (`r0 = 1; exit`: allow),
/// loaded straight through bpf(2), and attached to `cgroup` with
/// `flags` (0: exclusive, 2: `BPF_F_ALLOW_MULTI`). Returns the program's
/// fd: the attachment lasts while the cgroup does, the fd keeps the
/// program loaded.
fn foreign_program(cgroup: &Path, flags: u32) -> std::os::fd::OwnedFd {
    use std::os::fd::FromRawFd;
    const BPF_PROG_LOAD: libc::c_long = 5;
    const BPF_PROG_ATTACH: libc::c_long = 8;
    const BPF_PROG_TYPE_CGROUP_SOCK_ADDR: u32 = 18;
    const BPF_CGROUP_INET4_CONNECT: u32 = 10;
    // mov64 r0, 1; exit
    let insns: [u64; 2] = [0x0000_0001_0000_00b7, 0x0000_0000_0000_0095];
    let license = b"GPL\0";
    let mut load = [0u8; 128];
    let put32 =
        |buf: &mut [u8], at: usize, v: u32| buf[at..at + 4].copy_from_slice(&v.to_ne_bytes());
    let put64 =
        |buf: &mut [u8], at: usize, v: u64| buf[at..at + 8].copy_from_slice(&v.to_ne_bytes());
    put32(&mut load, 0, BPF_PROG_TYPE_CGROUP_SOCK_ADDR); // prog_type
    put32(&mut load, 4, insns.len() as u32); // insn_cnt
    put64(&mut load, 8, insns.as_ptr() as u64); // insns
    put64(&mut load, 16, license.as_ptr() as u64); // license
    put32(&mut load, 68, BPF_CGROUP_INET4_CONNECT); // expected_attach_type
    // SAFETY: a bpf_attr for BPF_PROG_LOAD whose pointers outlive the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            load.as_ptr(),
            load.len() as u32,
        )
    };
    assert!(
        fd >= 0,
        "BPF_PROG_LOAD: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: a new fd of our own.
    let prog = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) };
    let dir = std::fs::File::open(cgroup).unwrap();
    let mut attach = [0u8; 32];
    put32(&mut attach, 0, dir.as_raw_fd() as u32); // target_fd
    put32(&mut attach, 4, prog.as_raw_fd() as u32); // attach_bpf_fd
    put32(&mut attach, 8, BPF_CGROUP_INET4_CONNECT); // attach_type
    put32(&mut attach, 12, flags); // attach_flags
    // SAFETY: a bpf_attr for BPF_PROG_ATTACH.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_ATTACH,
            attach.as_ptr(),
            attach.len() as u32,
        )
    };
    assert_eq!(
        rc,
        0,
        "BPF_PROG_ATTACH: {}",
        std::io::Error::last_os_error()
    );
    prog
}

#[test]
fn another_program_on_the_hook_is_reported_and_an_exclusive_one_refused() {
    if !kernel_tests_allowed("blocking") {
        return;
    }
    let _serial = serial();
    let cgroups = Cgroups::new("block-neighbours", false);
    let root = cgroups.root.clone();
    let run = |name: &str, at: &str| {
        let dir = root.join(&at[1..]);
        let cfg = temp_path(&format!("{name}.toml"));
        std::fs::write(
            &cfg,
            format!("[blocking]\nmode = \"enforce\"\ncgroup = {dir:?}\n"),
        )
        .unwrap();
        (dir, cfg)
    };

    // A program that allows company: the sensor attaches next to it and
    // names it.
    let shared = cgroups.create("shared");
    let (dir, cfg) = run("block-shared", &shared);
    let _multi = foreign_program(&dir, 2);
    let sensor = Sensor::start(
        "block-shared",
        "127.66.32.0/24\n",
        &["--config", cfg.to_str().unwrap()],
    );
    sensor.wait_log(
        "connect4 shares its hook with program(s) [",
        1,
        Duration::from_secs(5),
    );
    let (status, _, stderr) = sensor.stop();
    assert!(status.success(), "{stderr}");

    // An exclusive program: the start fails, naming it; nothing of ours
    // is left on the cgroup.
    let exclusive = cgroups.create("exclusive");
    let (dir, cfg) = run("block-exclusive", &exclusive);
    let _single = foreign_program(&dir, 0);
    let out = Command::new(common::BIN)
        .args(["run", "--allow-reserved", "--feed"])
        .arg(temp_path("block-shared.feed"))
        .args(["--config", cfg.to_str().unwrap(), "--state-dir"])
        .arg(temp_path("block-exclusive-state"))
        .env("TORSENSOR_METRICS_LISTEN", "off")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("holds an exclusive program (id [")
            && stderr.contains("on block_connect4's hook"),
        "{stderr}"
    );
    let hooks = bpftool_cgroup(&dir);
    assert!(!hooks.contains("block_"), "{hooks}");
}
