//! Real traffic for the tests: a loopback-only network namespace holding
//! the test addresses, `tcpdump` recording it, `tshark` reading it back,
//! `softflowd` exporting a capture as NetFlow/IPFIX.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

pub fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        out.status,
        text(&out.stderr)
    );
    out
}

/// A network namespace with only `lo`, holding every test address.
pub struct LoNs {
    pub name: String,
}

impl LoNs {
    /// `tag` and this process's id name it; `v4` and `v6` are put on its
    /// `lo`.
    pub fn new(tag: &str, v4: &[&str], v6: &[&str]) -> LoNs {
        let name = format!("{tag}{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        run(Command::new("ip").args(["netns", "add", &name]));
        let ns = LoNs { name };
        // Ethernet-sized packets, as on a real network.
        run(Command::new("ip").args(["-n", &ns.name, "link", "set", "lo", "mtu", "1500", "up"]));
        for a in v4 {
            run(Command::new("ip").args([
                "-n",
                &ns.name,
                "addr",
                "add",
                &format!("{a}/32"),
                "dev",
                "lo",
            ]));
        }
        for a in v6 {
            run(Command::new("ip").args([
                "-n",
                &ns.name,
                "-6",
                "addr",
                "add",
                &format!("{a}/128"),
                "dev",
                "lo",
                "nodad",
            ]));
        }
        ns
    }

    pub fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }
}

impl Drop for LoNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn signal(child: &Child, sig: i32) {
    // SAFETY: kill with a pid we started.
    unsafe { libc::kill(child.id() as i32, sig) };
}

pub fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(20);
    while !ok() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// tcpdump in the namespace, writing `file`: returns once it captures.
pub fn tcpdump(ns: &LoNs, file: &Path, filter: &str) -> Capture {
    tcpdump_on(ns, "lo", file, filter)
}

/// tcpdump on `interface` of the namespace (`any`: Linux cooked capture).
pub fn tcpdump_on(ns: &LoNs, interface: &str, file: &Path, filter: &str) -> Capture {
    use std::io::{BufRead, BufReader};
    let mut child = ns
        .cmd("tcpdump")
        .args(["-i", interface, "-U", "-n", "-B", "65536", "-w"])
        .arg(file)
        .arg(filter)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tcpdump");
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    while !line.contains("listening on") {
        line.clear();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "tcpdump exited");
    }
    // On lo the filter sees each packet twice (leaving and arriving) and
    // libpcap keeps one; elsewhere (an `inbound` filter on `any`) once.
    let seen_per_packet = if interface == "lo" { 2 } else { 1 };
    Capture(Killed(child), stderr, file.to_owned(), seen_per_packet)
}

pub struct Capture(
    Killed,
    std::io::BufReader<std::process::ChildStderr>,
    PathBuf,
    u64,
);

impl Capture {
    /// Stops it once the file has stopped growing (tcpdump drops what it
    /// has not written when interrupted); asserts nothing was lost.
    pub fn stop(mut self) {
        use std::io::Read;
        let size = || std::fs::metadata(&self.2).map_or(0, |m| m.len());
        let mut last = size();
        loop {
            std::thread::sleep(Duration::from_millis(1000));
            let now = size();
            if now == last {
                break;
            }
            last = now;
        }
        signal(&self.0.0, libc::SIGINT);
        let mut rest = String::new();
        let _ = self.1.read_to_string(&mut rest);
        let _ = self.0.0.wait();
        let count = |what: &str| -> u64 {
            rest.lines()
                .find(|l| l.ends_with(what))
                .and_then(|l| l.split_whitespace().next()?.parse().ok())
                .unwrap_or_else(|| panic!("tcpdump: no {what:?} in {rest}"))
        };
        assert_eq!(count("packets dropped by kernel"), 0, "tcpdump: {rest}");
        assert_eq!(
            self.3 * count("packets captured"),
            count("packets received by filter"),
            "tcpdump: {rest}"
        );
    }
}

/// IP bytes each way between `inside` (from any port, or from
/// `inside_port`) and `server:port` (TCP), as tshark decodes them: the sum
/// of `ip.len` of the matching packets.
pub fn tshark_ip_bytes(
    capture: &Path,
    (inside, inside_port): (&str, Option<u16>),
    server: &str,
    port: u16,
) -> (u64, u64) {
    let sum = |filter: String| -> u64 {
        let out = run(Command::new("tshark")
            .arg("-r")
            .arg(capture)
            .args(["-Y", &filter, "-T", "fields", "-e", "ip.len"]));
        text(&out.stdout)
            .lines()
            .filter_map(|l| l.trim().parse::<u64>().ok())
            .sum()
    };
    let (to, from) = match inside_port {
        Some(p) => (
            format!(" && tcp.srcport=={p}"),
            format!(" && tcp.dstport=={p}"),
        ),
        None => (String::new(), String::new()),
    };
    (
        sum(format!(
            "ip.src=={inside} && ip.dst=={server} && tcp.dstport=={port}{to}"
        )),
        sum(format!(
            "ip.src=={server} && ip.dst=={inside} && tcp.srcport=={port}{from}"
        )),
    )
}

/// `softflowd` (the `program` command: in a namespace or not) reads
/// `capture` and exports every flow in it as NetFlow `version` (5, 9 or
/// 10: IPFIX) to `127.0.0.1:port`, then stops.
pub fn softflowd(mut program: Command, dir: &Path, capture: &Path, version: &str, port: u16) {
    let ctl = dir.join(format!("softflowd-v{version}-{port}.ctl"));
    let softflowd = Killed(
        program
            .args(["-r"])
            .arg(capture)
            .args([
                "-a",
                "-6",
                "-D",
                "-v",
                version,
                "-n",
                &format!("127.0.0.1:{port}"),
                "-c",
            ])
            .arg(&ctl)
            .arg("-p")
            .arg(dir.join(format!("softflowd-v{version}-{port}.pid")))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("softflowd"),
    );
    wait_until("softflowd's control socket", || ctl.exists());
    std::thread::sleep(Duration::from_millis(500));
    run(Command::new("softflowctl")
        .arg("-c")
        .arg(&ctl)
        .arg("expire-all"));
    std::thread::sleep(Duration::from_millis(500));
    let _ = Command::new("softflowctl")
        .arg("-c")
        .arg(&ctl)
        .arg("shutdown")
        .output();
    std::thread::sleep(Duration::from_millis(1000));
    drop(softflowd);
}
