//! Test harness: starts the real `torsensor` binary and collects its alerts.
#![allow(
    dead_code,
    reason = "each test file uses a different part of the harness"
)]

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::Value;

pub mod capture;
pub mod cgroups;
pub mod http;
pub mod metrics;

pub const BIN: &str = env!("CARGO_BIN_EXE_torsensor");

/// Kernel tests need root. Under `CI=true` they must run: not being root is a
/// failure there. Elsewhere they skip with the reason.
pub fn kernel_tests_allowed(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if root {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test}: kernel tests must run under CI=true, but this is not root");
    }
    eprintln!("skipped {test}: needs root to load eBPF programs (CI runs it as root)");
    false
}

/// One sensor at a time: each sees every connection on the machine, and the
/// shutdown test inspects the kernel for leftovers.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// The loaded eBPF programs (`bpftool -j prog show`) whose name `named`
/// accepts, held by `pid` or by no process (an orphan; also every one
/// when this bpftool cannot tell who holds what).
pub fn bpf_programs_of(pid: u32, named: impl Fn(&str) -> bool) -> Vec<Value> {
    let out = Command::new("bpftool")
        .args(["-j", "prog", "show"])
        .output()
        .expect("bpftool");
    assert!(out.status.success(), "{out:?}");
    let progs: Value = serde_json::from_slice(&out.stdout).unwrap();
    progs
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| named(p["name"].as_str().unwrap_or("")))
        .filter(|p| {
            p["pids"]
                .as_array()
                .is_none_or(|pids| pids.iter().any(|x| x["pid"] == serde_json::json!(pid)))
        })
        .cloned()
        .collect()
}

/// A file of the crate's `data/` directory (the project's fixtures).
pub fn data(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("data")
        .join(path)
}

/// Runs the binary with `args` to completion (warnings only on stderr,
/// no history directory from the environment).
pub fn torsensor(args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .env("TORSENSOR_LOG", "warn")
        .env_remove("TORSENSOR_HISTORY")
        .output()
        .expect("run torsensor")
}

pub fn temp_path(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("torsensor-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

#[derive(Default)]
struct Shared {
    alerts: Vec<Value>,
    stderr: String,
    armed: bool,
    closed: bool,
    stdout_closed: bool,
}

/// A running sensor.
pub struct Sensor {
    child: Option<Child>,
    shared: Arc<(Mutex<Shared>, Condvar)>,
    pub feed: PathBuf,
    /// `TORSENSOR_STATE_DIR` (a `--state-dir` argument overrides it).
    pub state_dir: PathBuf,
}

impl Sensor {
    /// Starts `torsensor run` on a feed made of `feed_text` (reserved ranges
    /// allowed, as labs need) and waits until it is armed.
    pub fn start(name: &str, feed_text: &str, extra: &[&str]) -> Sensor {
        let feed = temp_path(&format!("{name}.feed"));
        std::fs::write(&feed, feed_text).unwrap();
        let feed_arg = feed.to_str().unwrap().to_owned();
        let mut args = vec!["run", "--allow-reserved", "--feed", &feed_arg];
        args.extend_from_slice(extra);
        Self::start_args(&args, feed.clone())
    }

    pub fn start_args(args: &[&str], feed: PathBuf) -> Sensor {
        Self::start_wrapped(&[], args, feed)
    }

    /// `start`, with the sensor run by `wrapper` (e.g. `ip netns exec NS`,
    /// which execs it: the child's pid is the sensor's).
    pub fn start_in(wrapper: &[&str], name: &str, feed_text: &str, extra: &[&str]) -> Sensor {
        let feed = temp_path(&format!("{name}.feed"));
        std::fs::write(&feed, feed_text).unwrap();
        let feed_arg = feed.to_str().unwrap().to_owned();
        let mut args = vec!["run", "--allow-reserved", "--feed", &feed_arg];
        args.extend_from_slice(extra);
        Self::start_wrapped(wrapper, &args, feed.clone())
    }

    fn start_wrapped(wrapper: &[&str], args: &[&str], feed: PathBuf) -> Sensor {
        // A state directory of its own unless the test names one.
        let state_dir = temp_path(&format!("state-{}", std::process::id()));
        let mut command = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(BIN);
                c
            }
            None => Command::new(BIN),
        };
        let mut child = command
            .args(args)
            .env("TORSENSOR_LOG", "info")
            .env("TORSENSOR_STATE_DIR", &state_dir)
            // Tests run sensors side by side: each takes a free port.
            .env("TORSENSOR_METRICS_LISTEN", "127.0.0.1:0")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn torsensor");
        let shared = Arc::new((Mutex::new(Shared::default()), Condvar::new()));
        let stdout = child.stdout.take().unwrap();
        let s = shared.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let doc: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("stdout line is not JSON ({e}): {line}"));
                s.0.lock().unwrap().alerts.push(doc);
                s.1.notify_all();
            }
            s.0.lock().unwrap().stdout_closed = true;
            s.1.notify_all();
        });
        let stderr = child.stderr.take().unwrap();
        let s = shared.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let mut g = s.0.lock().unwrap();
                if line.contains("torsensor armed") {
                    g.armed = true;
                }
                g.stderr.push_str(&line);
                g.stderr.push('\n');
                drop(g);
                s.1.notify_all();
            }
            s.0.lock().unwrap().closed = true;
            s.1.notify_all();
        });
        let sensor = Sensor {
            child: Some(child),
            shared,
            feed,
            state_dir,
        };
        sensor.wait_until(Duration::from_secs(30), "the sensor to arm", |s| {
            assert!(!s.closed, "torsensor exited before arming:\n{}", s.stderr);
            s.armed
        });
        sensor
    }

    fn wait_until(&self, timeout: Duration, what: &str, done: impl FnMut(&Shared) -> bool) {
        self.wait_or_fail(timeout, done, |s| {
            format!(
                "timed out waiting for {what}; stderr:\n{}\nalerts:\n{:#?}",
                s.stderr, s.alerts
            )
        });
    }

    /// Waits until `done`, or panics with `failure` after `timeout`.
    fn wait_or_fail(
        &self,
        timeout: Duration,
        mut done: impl FnMut(&Shared) -> bool,
        failure: impl Fn(&Shared) -> String,
    ) {
        let deadline = Instant::now() + timeout;
        let (lock, cv) = &*self.shared;
        let mut g = lock.lock().unwrap();
        while !done(&g) {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "{}", failure(&g));
            g = cv.wait_timeout(g, left).unwrap().0;
        }
    }

    /// Waits for the first alert matching `pred` (10 s at most).
    pub fn expect_alert(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let mut found = None;
        self.wait_until(Duration::from_secs(10), what, |s| {
            found = s.alerts.iter().find(|a| pred(a)).cloned();
            found.is_some()
        });
        found.unwrap()
    }

    /// Waits until at least `n` alerts have arrived (`timeout` at most).
    /// On a timeout, says how many came (not all of them: there may be
    /// thousands).
    pub fn expect_count(&self, n: usize, timeout: Duration) {
        self.wait_or_fail(
            timeout,
            |s| s.alerts.len() >= n,
            |s| {
                format!(
                    "timed out waiting for {n} alerts: {} came; stderr:\n{}",
                    s.alerts.len(),
                    s.stderr
                )
            },
        );
    }

    pub fn alerts(&self) -> Vec<Value> {
        self.shared.0.lock().unwrap().alerts.clone()
    }

    pub fn stderr(&self) -> String {
        self.shared.0.lock().unwrap().stderr.clone()
    }

    /// Waits until stderr contains `needle` at least `count` times.
    pub fn wait_log(&self, needle: &str, count: usize, timeout: Duration) {
        self.wait_until(timeout, &format!("{count} x {needle:?} in the log"), |s| {
            s.stderr.matches(needle).count() >= count
        });
    }

    /// Sends a signal (SIGHUP...) to the sensor.
    pub fn signal(&self, sig: i32) {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.pid() as i32, sig) };
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Sends SIGTERM and waits for the exit; returns the status and how long
    /// it took.
    pub fn stop(self) -> (ExitStatus, Duration, String) {
        let (status, took, stderr, _) = self.stop_collect();
        (status, took, stderr)
    }

    /// `stop`, and every alert the sensor wrote, up to its last line.
    pub fn stop_collect(mut self) -> (ExitStatus, Duration, String, Vec<Value>) {
        let mut child = self.child.take().unwrap();
        let start = Instant::now();
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let status = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "torsensor ignored SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        let took = start.elapsed();
        self.wait_until(Duration::from_secs(5), "stderr and stdout to close", |s| {
            s.closed && s.stdout_closed
        });
        (status, took, self.stderr(), self.alerts())
    }
}

impl Drop for Sensor {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Field access by dotted path, e.g. `get(&doc, "process.pid")`.
pub fn get<'a>(doc: &'a Value, path: &str) -> &'a Value {
    path.split('.')
        .fold(doc, |v, key| match key.parse::<usize>() {
            Ok(i) => &v[i],
            Err(_) => &v[key],
        })
}

/// Kernel thread id of the caller.
pub fn gettid() -> u32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() as u32 }
}

/// The process name the kernel gives this test binary.
pub fn own_comm() -> String {
    std::fs::read_to_string("/proc/self/comm")
        .unwrap()
        .trim_end()
        .to_owned()
}

/// A TCP connection from `from` (bound first, port chosen by the kernel) to
/// `to`. Returns the connected socket.
pub fn connect_from(from: SocketAddr, to: SocketAddr) -> std::net::TcpStream {
    let domain = if to.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    let fd = socket(domain);
    bind(&fd, from);
    let (sa, len) = sockaddr(to);
    // SAFETY: valid fd and sockaddr of the given length.
    let rc = unsafe { libc::connect(fd.as_raw_fd(), (&raw const sa).cast(), len) };
    assert_eq!(
        rc,
        0,
        "connect {from} -> {to}: {}",
        std::io::Error::last_os_error()
    );
    std::net::TcpStream::from(fd)
}

/// A connect to `to` that the peer refuses (nothing listens there); returns
/// what `getsockname` tells after the failure: the port the attempt used
/// (the address is reset to 0.0.0.0 by then).
pub fn refused_connect(to: SocketAddr) -> SocketAddr {
    let fd = socket(if to.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    });
    let (sa, len) = sockaddr(to);
    // SAFETY: valid fd and sockaddr of the given length.
    let rc = unsafe { libc::connect(fd.as_raw_fd(), (&raw const sa).cast(), len) };
    let err = std::io::Error::last_os_error();
    assert_eq!(rc, -1, "connect to {to} succeeded");
    assert_eq!(err.raw_os_error(), Some(libc::ECONNREFUSED), "{err}");
    // SAFETY: zeroed sockaddr_storage is valid.
    let mut local: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: valid fd, buffer and length.
    let rc = unsafe { libc::getsockname(fd.as_raw_fd(), (&raw mut local).cast(), &mut len) };
    assert_eq!(rc, 0, "getsockname: {}", std::io::Error::last_os_error());
    // SAFETY: the kernel filled a sockaddr_in (IPv4 only here).
    let sin = unsafe { *(&raw const local).cast::<libc::sockaddr_in>() };
    assert_eq!(sin.sin_family, libc::AF_INET as u16, "IPv4 only");
    SocketAddr::from((
        sin.sin_addr.s_addr.to_ne_bytes(),
        u16::from_be(sin.sin_port),
    ))
}

pub fn socket(domain: i32) -> OwnedFd {
    // SAFETY: plain socket(2).
    let fd = unsafe { libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
    // SAFETY: fd is a fresh, owned descriptor.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

pub fn bind(fd: &OwnedFd, addr: SocketAddr) {
    let (sa, len) = sockaddr(addr);
    // SAFETY: valid fd and sockaddr.
    let rc = unsafe { libc::bind(fd.as_raw_fd(), (&raw const sa).cast(), len) };
    assert_eq!(rc, 0, "bind {addr}: {}", std::io::Error::last_os_error());
}

/// A listening socket; `dual_stack` clears IPV6_V6ONLY on an IPv6 one.
pub fn listen(addr: SocketAddr, dual_stack: bool) -> TcpListener {
    let fd = socket(if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    });
    if addr.is_ipv6() {
        let v6only: libc::c_int = (!dual_stack).into();
        // SAFETY: valid fd, option pointer and length.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::IPPROTO_IPV6,
                libc::IPV6_V6ONLY,
                (&raw const v6only).cast(),
                size_of::<libc::c_int>() as u32,
            )
        };
        assert_eq!(rc, 0);
    }
    bind(&fd, addr);
    // SAFETY: valid fd.
    assert_eq!(unsafe { libc::listen(fd.as_raw_fd(), 128) }, 0);
    TcpListener::from(fd)
}

/// `accept(fd, NULL, NULL)`: the server does not ask for the peer address.
pub fn accept_null(listener: &TcpListener) -> OwnedFd {
    // SAFETY: valid listening fd; NULL address pointers are allowed.
    let fd = unsafe {
        libc::accept(
            listener.as_raw_fd(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        )
    };
    assert!(fd >= 0, "accept: {}", std::io::Error::last_os_error());
    // SAFETY: fresh descriptor.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// `accept4(fd, &addr, &len, SOCK_CLOEXEC)`: the server asks for the peer.
pub fn accept4_with_addr(listener: &TcpListener) -> (OwnedFd, u16) {
    // SAFETY: zeroed sockaddr_storage is valid.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: valid fd, buffer and length.
    let fd = unsafe {
        libc::accept4(
            listener.as_raw_fd(),
            (&raw mut storage).cast(),
            &mut len,
            libc::SOCK_CLOEXEC,
        )
    };
    assert!(fd >= 0, "accept4: {}", std::io::Error::last_os_error());
    // SAFETY: the kernel filled a sockaddr_in or sockaddr_in6; the port is at
    // the same offset in both.
    let port =
        u16::from_be(unsafe { (*(&raw const storage).cast::<libc::sockaddr_in>()).sin_port });
    // SAFETY: fresh descriptor.
    (unsafe { OwnedFd::from_raw_fd(fd) }, port)
}

fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: zeroed sockaddr_storage is valid.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as u16,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than sockaddr_in.
            unsafe { std::ptr::write((&raw mut storage).cast(), sin) };
            (storage, size_of::<libc::sockaddr_in>() as u32)
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as u16,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: 0,
            };
            // SAFETY: sockaddr_storage is larger than sockaddr_in6.
            unsafe { std::ptr::write((&raw mut storage).cast(), sin6) };
            (storage, size_of::<libc::sockaddr_in6>() as u32)
        }
    }
}

/// A network namespace with a veth pair to this one, torn down on drop.
/// Host side gets `host_addr`, namespace side `ns_addr` (both /64, IPv6).
pub struct NetNs {
    pub name: String,
    host_if: String,
    ns_if: String,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("run ip (iproute2)");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl NetNs {
    pub fn new(tag: &str, host_addr: &str, ns_addr: &str) -> NetNs {
        let name = format!("ts{}{tag}", std::process::id());
        let host_if = format!("tsh{}{tag}", std::process::id() % 100_000);
        let ns_if = format!("tsn{}{tag}", std::process::id() % 100_000);
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        ip(&["netns", "add", &name]);
        let ns = NetNs {
            name: name.clone(),
            host_if: host_if.clone(),
            ns_if: ns_if.clone(),
        };
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if,
        ]);
        ip(&["link", "set", &ns_if, "netns", &name]);
        ip(&[
            "-6",
            "addr",
            "add",
            &format!("{host_addr}/64"),
            "dev",
            &host_if,
            "nodad",
        ]);
        ip(&["link", "set", &host_if, "up"]);
        ip(&[
            "-n",
            &name,
            "-6",
            "addr",
            "add",
            &format!("{ns_addr}/64"),
            "dev",
            &ns_if,
            "nodad",
        ]);
        ip(&["-n", &name, "link", "set", &ns_if, "up"]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        ns
    }

    /// One more IPv6 address (/64) on the namespace's side.
    pub fn add_addr(&self, addr: &str) {
        ip(&[
            "-n",
            &self.name,
            "-6",
            "addr",
            "add",
            &format!("{addr}/64"),
            "dev",
            &self.ns_if,
            "nodad",
        ]);
    }

    /// Moves the calling thread into the namespace (threads only: call it in
    /// a thread spawned for the purpose).
    pub fn enter(&self) {
        let path = Path::new("/var/run/netns").join(&self.name);
        let file = std::fs::File::open(&path).unwrap();
        // SAFETY: valid namespace fd.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(
            rc,
            0,
            "setns {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}
