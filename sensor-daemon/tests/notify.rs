//! The systemd notification protocol, spoken by the real daemon to a
//! datagram socket the test binds as `NOTIFY_SOCKET` (what systemd does for
//! a `Type=notify` unit): READY only once armed, WATCHDOG from the event
//! loop at half of `WATCHDOG_USEC`, STATUS, RELOADING + MONOTONIC_USEC then
//! READY around SIGHUP, STOPPING at shutdown; with `--selftest`, READY only
//! once the self-test passed; and the test-only hang switch blocks the loop
//! itself. `cargo xtask systemd-test` checks the same
//! under a real systemd. Needs root (the daemon loads its programs).

mod common;

use std::io::Read as _;
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

struct Notified {
    child: Child,
    socket: UnixDatagram,
    stderr: std::process::ChildStderr,
    /// Datagrams with the time they arrived.
    seen: Vec<(Instant, String)>,
    log: String,
}

impl Notified {
    /// Starts `torsensor run` on a lab feed with `NOTIFY_SOCKET` pointing at
    /// a socket of ours, the watchdog at `watchdog_usec`, plus `env`.
    fn start(tag: &str, watchdog_usec: u64, env: &[(&str, &str)]) -> Notified {
        let path = temp_path(&format!("{tag}.notify"));
        let _ = std::fs::remove_file(&path);
        let socket = UnixDatagram::bind(&path).unwrap();
        let feed = temp_path(&format!("{tag}.feed"));
        std::fs::write(&feed, "127.66.0.0/16\n").unwrap();
        let state = temp_path(&format!("{tag}-state"));
        let mut cmd = Command::new(BIN);
        cmd.args([
            "run",
            "--allow-reserved",
            "--aggregation-window",
            "0s",
            "--feed",
        ])
        .arg(&feed)
        .env("TORSENSOR_LOG", "info")
        .env("TORSENSOR_STATE_DIR", &state)
        .env("TORSENSOR_METRICS_LISTEN", "127.0.0.1:0")
        .env("NOTIFY_SOCKET", &path)
        .env("WATCHDOG_USEC", watchdog_usec.to_string())
        .env_remove("WATCHDOG_PID")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        // Non-blocking, so that what the daemon wrote before a datagram can
        // be read at the moment the datagram arrives.
        // SAFETY: fcntl on a descriptor we own.
        unsafe { libc::fcntl(stderr.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
        Notified {
            child,
            socket,
            stderr,
            seen: Vec::new(),
            log: String::new(),
        }
    }

    fn read_log(&mut self) {
        let mut buf = [0u8; 65536];
        while let Ok(n @ 1..) = self.stderr.read(&mut buf) {
            self.log.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    }

    /// Waits for a datagram containing `needle`; returns it.
    fn expect(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no {needle:?} within {timeout:?}; got {:#?}\nlog:\n{}",
                self.seen,
                self.log
            );
            self.socket.set_read_timeout(Some(left)).unwrap();
            let mut buf = [0u8; 4096];
            if let Ok(n) = self.socket.recv(&mut buf) {
                // What the daemon logged before it sent this is in the pipe.
                self.read_log();
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                self.seen.push((Instant::now(), msg.clone()));
                if msg.lines().any(|l| l == needle || l.starts_with(needle)) {
                    return msg;
                }
            }
        }
    }

    /// Datagrams arriving within `window`.
    fn collect(&mut self, window: Duration) -> Vec<(Instant, String)> {
        let end = Instant::now() + window;
        let mut got = Vec::new();
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            self.socket
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .unwrap();
            let mut buf = [0u8; 4096];
            if let Ok(n) = self.socket.recv(&mut buf) {
                got.push((
                    Instant::now(),
                    String::from_utf8_lossy(&buf[..n]).into_owned(),
                ));
            }
        }
        self.read_log();
        got
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }
}

impl Drop for Notified {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn pings(msgs: &[(Instant, String)]) -> Vec<Instant> {
    msgs.iter()
        .filter(|(_, m)| m.lines().any(|l| l == "WATCHDOG=1"))
        .map(|(t, _)| *t)
        .collect()
}

#[test]
fn ready_after_arming_watchdog_status_reload_and_stopping() {
    if !kernel_tests_allowed("notify") {
        return;
    }
    let _serial = serial();
    // Watchdog 1 s: a ping every 500 ms.
    let mut sensor = Notified::start("notify", 1_000_000, &[]);
    let ready = sensor.expect("READY=1", Duration::from_secs(30));
    assert!(
        sensor.log.contains("torsensor armed"),
        "READY=1 came before the arming line:\n{}",
        sensor.log
    );
    assert!(
        ready.contains("STATUS=armed; inbound hooks ")
            && ready.contains("1 prefixes")
            && ready.contains("0 alerts"),
        "{ready}"
    );
    assert!(
        sensor
            .log
            .contains("systemd watchdog: 1s, pinging every 500ms"),
        "{}",
        sensor.log
    );

    // An alert: the next STATUS counts it.
    drop(TcpStream::connect_timeout(
        &"127.66.0.9:9".parse().unwrap(),
        Duration::from_millis(200),
    ));
    // (At least one: other tests on this machine may connect to 127.66.x.)
    let status = sensor.expect("STATUS=armed", Duration::from_secs(3));
    let alerts: u64 = status
        .trim_end()
        .rsplit("; ")
        .next()
        .and_then(|t| t.strip_suffix(" alerts"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no alert count in {status:?}"));
    assert!(alerts >= 1, "{status}");

    let got = sensor.collect(Duration::from_millis(2600));
    let at = pings(&got);
    assert!(
        (4..=6).contains(&at.len()),
        "expected a WATCHDOG=1 every 500 ms over 2.6 s: {got:#?}"
    );
    for pair in at.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(
            gap > Duration::from_millis(300) && gap < Duration::from_millis(800),
            "ping gap {gap:?}: {got:#?}"
        );
    }

    sensor.signal(libc::SIGHUP);
    let reloading = sensor.expect("RELOADING=1", Duration::from_secs(3));
    let usec = reloading
        .lines()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .unwrap_or_else(|| panic!("RELOADING=1 without MONOTONIC_USEC: {reloading}"));
    assert!(usec.parse::<u64>().unwrap() > 0, "{reloading}");
    let ready = sensor.expect("READY=1", Duration::from_secs(5));
    assert!(ready.contains("STATUS=armed"), "{ready}");

    sensor.signal(libc::SIGTERM);
    sensor.expect("STOPPING=1", Duration::from_secs(3));
    let status = sensor.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

#[test]
fn with_selftest_ready_comes_only_after_it_passed() {
    if !kernel_tests_allowed("notify-selftest") {
        return;
    }
    let _serial = serial();
    let mut sensor = Notified::start("notify-selftest", 0, &[("TORSENSOR_SELFTEST", "true")]);
    let ready = sensor.expect("READY=1", Duration::from_secs(30));
    assert!(
        sensor.log.contains("self-test #1 passed"),
        "READY=1 came before the self-test passed:\n{}",
        sensor.log
    );
    assert!(ready.contains("STATUS=armed"), "{ready}");
    // No watchdog asked for (WATCHDOG_USEC=0): no pings.
    let got = sensor.collect(Duration::from_millis(1200));
    assert!(pings(&got).is_empty(), "pings without a watchdog: {got:#?}");
    sensor.signal(libc::SIGTERM);
    sensor.expect("STOPPING=1", Duration::from_secs(3));
    assert!(sensor.child.wait().unwrap().success());
}

#[test]
fn the_hang_switch_blocks_the_event_loop_itself() {
    if !kernel_tests_allowed("notify-hang") {
        return;
    }
    let _serial = serial();
    let mut sensor = Notified::start("hang", 400_000, &[("TORSENSOR_TEST_HANG_AFTER_SECS", "1")]);
    sensor.expect("READY=1", Duration::from_secs(30));
    assert!(
        sensor
            .log
            .contains("TORSENSOR_TEST_HANG_AFTER_SECS is set: TEST FAULT"),
        "{}",
        sensor.log
    );
    sensor.expect("WATCHDOG=1", Duration::from_secs(1));
    // Past the hang: no ping any more.
    std::thread::sleep(Duration::from_millis(1500));
    let _ = sensor.collect(Duration::from_millis(10));
    let after = sensor.collect(Duration::from_secs(1));
    assert!(pings(&after).is_empty(), "pings after the hang: {after:#?}");
    assert!(
        sensor.log.contains("TEST FAULT: the event loop hangs now"),
        "{}",
        sensor.log
    );
    // The loop itself is stuck, not just the pings: a listed connection is
    // never written, and SIGTERM (handled by the loop) is not acted on.
    drop(TcpStream::connect_timeout(
        &"127.66.0.10:9".parse().unwrap(),
        Duration::from_millis(200),
    ));
    sensor.signal(libc::SIGTERM);
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        sensor.child.try_wait().unwrap().is_none(),
        "a hung loop must not exit on SIGTERM"
    );
    sensor.child.kill().unwrap();
    sensor.child.wait().unwrap();
    let mut out = String::new();
    sensor
        .child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(!out.contains("127.66.0.10"), "the hung loop wrote: {out}");
}
