//! `cargo xtask systemd-test`: the Debian package under a real systemd.
//!
//! PID 1 here (and in CI) is not systemd, so this boots one: a minimal
//! Debian tree made by `debootstrap` (cached under `target/systemd-test/`,
//! keyed by suite, variant and package list), copied to a scratch
//! directory, booted with `systemd-nspawn --boot`. The package is installed
//! inside with `apt install ./torsensor_*.deb` as a user would, and the
//! unit is driven with `systemctl` through `nsenter` into the container
//! (there is no machined, so no `machinectl` or `systemd-run -M`).
//!
//! How nspawn is made to work on this host (hybrid cgroups, PID 1 not
//! systemd, /run not a tmpfs):
//! - nspawn refuses the host's hybrid layout (`Failed to read link
//!   /sys/fs/cgroup/perf_event`: it expects every v1 controller mounted).
//!   So nspawn runs in a mount namespace of its own in which the cgroup v2
//!   hierarchy is mounted at `/sys/fs/cgroup`: it sees a unified host and
//!   gives the container a cgroup v2 tree (its own cgroup namespace), from
//!   a cgroup this test creates and removes (`--keep-unit`, since there is
//!   no systemd on the host to ask for a scope; `--register=no`, since
//!   there is no machined). Teardown kills whatever is left in that cgroup.
//! - A tmpfs on `/run/systemd/nspawn` in that namespace: nspawn refuses to
//!   clean up its propagation directory on a disk file system.
//! - `--private-network`: the container has only its own `lo`, so nothing
//!   it does (the packaged configuration's live feeds, apt) can reach
//!   beyond loopback, and the test's feed server and "SIEM" port live on
//!   that loopback. The eBPF programs attach to the host kernel's
//!   tracepoints, which see every network namespace, so the sensor still
//!   sees the container's connections (and the host's).
//! - The sensor's needs: `CAP_BPF`, `CAP_PERFMON` added to nspawn's default
//!   set (which already has `CAP_SYS_PTRACE`, `CAP_DAC_READ_SEARCH`;
//!   `CAP_NET_ADMIN` comes with the private network), and `bpf` and
//!   `perf_event_open` added to nspawn's own seccomp allow list (without
//!   it every map creation fails with EPERM, even for root outside any
//!   unit sandbox). The container's sysfs has `/sys/kernel/btf/vmlinux`;
//!   no device is needed.
//!
//! What it shows, each with an assertion that can fail: (a) `systemctl
//! start` returns only once the sensor is armed; (b) `systemctl reload`
//! refreshes the feed; (c) a hung event loop (the daemon's test-only fault
//! switch, set by a drop-in) is killed by the watchdog and restarted; (d)
//! `systemctl stop` leaves no program or link of the sensor in the kernel;
//! (e) under the unit's sandbox, alerts land in the alert file, a feed
//! served over HTTP on loopback refreshes, a remote output to a closed port
//! spools to the state directory, and logrotate's SIGUSR2 reopens the file.
//!
//! Known limit of the harness (not of the unit): the container has its own
//! PID namespace while the kernel reports host PIDs, so `process.*` details
//! read from the container's /proc are not checked here (`process.thread.name`,
//! from the kernel, is).

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, bail, ensure};
use serde_json::Value;

const SUITE: &str = "bookworm";
const MIRROR: &str = "http://deb.debian.org/debian";
const VARIANT: &str = "minbase";
/// systemd as PID 1, dbus for systemctl, logrotate for the packaged
/// rotation rule; ca-certificates, which the package recommends (apt would
/// otherwise try to download it), and procps which it depends on (/bin/kill,
/// for ExecReload). The cache key.
const PACKAGES: &[&str] = &[
    "ca-certificates",
    "dbus",
    "logrotate",
    "procps",
    "systemd",
    "systemd-sysv",
];
const MACHINE: &str = "torsensor-test";
/// The cgroup (under the host's cgroup v2 mount) the container runs in.
const CGROUP: &str = "torsensor-systemd-test";
/// The lab feed's server, inside the container's network namespace.
const FEED_URL: &str = "http://127.0.0.1:8080/exit-addresses";
const V1: &str = "2026-11-24 20:00:00";
const V2: &str = "2026-11-24 21:00:00";

const TEST_CONFIG: &str = r#"# Written by cargo xtask systemd-test over the packaged file.
state_dir = "/var/lib/torsensor"
allow_reserved = true
aggregation_window = "0s"

[[feed]]
name = "lab"
location = "http://127.0.0.1:8080/exit-addresses"
format = "tordnsel"
# The first fetch without a cache waits up to min(jitter, 60 s).
jitter = "0s"

[[output]]
to = "file:/var/log/torsensor/alerts.jsonl"

# A SIEM that is down: nothing listens on this port in the container.
[[output]]
name = "siem"
to = "http://127.0.0.1:9/alerts"
"#;

/// The drop-in that turns the daemon's fault switch on, with a short
/// watchdog so that the test is quick.
const HANG_DROPIN: &str =
    "[Service]\nEnvironment=TORSENSOR_TEST_HANG_AFTER_SECS=3\nWatchdogSec=4s\n";

pub fn run(root: &Path) -> anyhow::Result<()> {
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        ensure!(
            !ci,
            "systemd-test must run under CI=true, but this is not root"
        );
        eprintln!("xtask: systemd-test skipped: it needs root (CI runs it as root)");
        return Ok(());
    }
    let total = Instant::now();
    let mut times: Vec<(&str, Duration)> = Vec::new();
    let t = Instant::now();
    let deb = crate::deb::build(root)?;
    times.push(("build + package", t.elapsed()));

    let t = Instant::now();
    let (tree, cold) = rootfs(root)?;
    times.push((
        if cold {
            "debootstrap (cold)"
        } else {
            "Debian tree from the cache (warm)"
        },
        t.elapsed(),
    ));

    let work = root.join("target/systemd-test");
    let t = Instant::now();
    let mut machine = Machine::boot(&work, &tree)?;
    times.push(("copy + boot to running", t.elapsed()));

    let t = Instant::now();
    let result = scenario(&mut machine, &deb, &mut times);
    if result.is_err() {
        times.push(("scenario (failed)", t.elapsed()));
    }
    machine.save_artifacts();
    let t = Instant::now();
    let down = machine.shutdown();
    times.push(("shutdown + teardown", t.elapsed()));
    times.push(("total", total.elapsed()));
    eprintln!("xtask: systemd-test timings:");
    for (what, took) in &times {
        eprintln!("  {what:<36} {:>6.1} s", took.as_secs_f64());
    }
    result.context(format!(
        "systemd-test failed (container journal: {}, console: {})",
        work.join("journal.log").display(),
        work.join("console.log").display()
    ))?;
    down?;
    eprintln!("xtask: systemd-test: all checks passed");
    Ok(())
}

/// The cached Debian tree (built on a miss); true when it was built now.
fn rootfs(root: &Path) -> anyhow::Result<(PathBuf, bool)> {
    let key = format!("{SUITE}-{VARIANT}-{}", PACKAGES.join("+"));
    let cache = root.join("target/systemd-test/rootfs");
    let tree = cache.join(&key);
    if tree.join(".complete").exists() {
        eprintln!("xtask: Debian tree from the cache: {}", tree.display());
        return Ok((tree, false));
    }
    // Trees of other package lists are stale: one tree at a time.
    let _ = fs::remove_dir_all(&cache);
    fs::create_dir_all(&cache)?;
    let partial = cache.join(format!("{key}.partial"));
    eprintln!(
        "xtask: debootstrap {SUITE} ({VARIANT} + {}) from {MIRROR}",
        PACKAGES.join(" ")
    );
    crate::run(
        Command::new("debootstrap")
            .arg(format!("--variant={VARIANT}"))
            .arg(format!("--include={}", PACKAGES.join(",")))
            .arg(SUITE)
            .arg(&partial)
            .arg(MIRROR),
    )?;
    // apt's downloaded archives are not needed to boot.
    let _ = Command::new("chroot")
        .arg(&partial)
        .args(["apt-get", "clean"])
        .status();
    fs::write(partial.join(".complete"), &key)?;
    fs::rename(&partial, &tree)?;
    Ok((tree, true))
}

/// A booted container; `Drop` tears everything down.
struct Machine {
    work: PathBuf,
    /// The scratch copy of the tree (the container's /).
    root: PathBuf,
    cgroup: PathBuf,
    nspawn: Option<Child>,
    leader: u32,
    httpd: Option<Child>,
}

/// The host's cgroup v2 mount point (`/sys/fs/cgroup` or, on a hybrid
/// host like this one, `/sys/fs/cgroup/unified`).
fn cgroup2_mount() -> anyhow::Result<PathBuf> {
    let mounts = fs::read_to_string("/proc/mounts")?;
    mounts
        .lines()
        .find_map(|l| {
            let mut f = l.split_whitespace();
            let (_, dir, kind) = (f.next()?, f.next()?, f.next()?);
            (kind == "cgroup2").then(|| PathBuf::from(dir))
        })
        .context("no cgroup2 file system is mounted (systemd-test needs cgroup v2)")
}

/// Kills every process in `dir` (and below), then removes the cgroups.
fn remove_cgroup(dir: &Path) {
    if !dir.exists() {
        return;
    }
    let _ = fs::write(dir.join("cgroup.kill"), "1");
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let populated = fs::read_to_string(dir.join("cgroup.events"))
            .map(|e| e.contains("populated 1"))
            .unwrap_or(false);
        if !populated {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    fn rmdir_tree(dir: &Path) {
        if let Ok(entries) = fs::read_dir(dir) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    rmdir_tree(&e.path());
                }
            }
        }
        let _ = fs::remove_dir(dir);
    }
    rmdir_tree(dir);
    if dir.exists() {
        eprintln!("xtask: WARNING: could not remove cgroup {}", dir.display());
    }
}

impl Machine {
    fn boot(work: &Path, tree: &Path) -> anyhow::Result<Machine> {
        let cgroup = cgroup2_mount()?.join(CGROUP);
        // Leftovers of a run that was killed before its teardown.
        remove_cgroup(&cgroup);
        let scratch = work.join("run");
        let _ = fs::remove_dir_all(&scratch);
        fs::create_dir_all(&scratch)?;
        let root = scratch.join("root");
        crate::run(
            Command::new("cp")
                .args(["-a", "--reflink=auto"])
                .arg(tree)
                .arg(&root),
        )?;
        let _ = fs::remove_file(root.join(".complete"));
        // The only name server is the container's own loopback, where
        // nothing answers: the packaged configuration's live feeds fail
        // at once and no query leaves the container.
        let _ = fs::remove_file(root.join("etc/resolv.conf"));
        fs::write(root.join("etc/resolv.conf"), "nameserver 127.0.0.1\n")?;
        fs::write(root.join("etc/hostname"), format!("{MACHINE}\n"))?;
        fs::create_dir_all(&cgroup).with_context(|| format!("creating {}", cgroup.display()))?;
        fs::create_dir_all("/run/systemd/nspawn")?;

        let console = fs::File::create(work.join("console.log"))?;
        let mut cmd = Command::new("systemd-nspawn");
        cmd.arg("--directory")
            .arg(&root)
            .args([
                "--boot",
                "--machine",
                MACHINE,
                "--private-network",
                "--register=no",
                "--keep-unit",
                "--console=read-only",
                "--resolv-conf=off",
                "--link-journal=no",
                "--capability=CAP_BPF,CAP_PERFMON",
                "--system-call-filter=bpf perf_event_open",
            ])
            .stdin(Stdio::null())
            .stdout(console.try_clone()?)
            .stderr(console);
        let procs = CString::new(cgroup.join("cgroup.procs").as_os_str().as_bytes())?;
        let slash = CString::new("/")?;
        let cg_dir = CString::new("/sys/fs/cgroup")?;
        let cg_type = CString::new("cgroup2")?;
        let run_dir = CString::new("/run/systemd/nspawn")?;
        let tmpfs = CString::new("tmpfs")?;
        // SAFETY: only async-signal-safe system calls between fork and exec,
        // on strings allocated before the fork.
        unsafe {
            cmd.pre_exec(move || {
                let err = std::io::Error::last_os_error;
                // Into the test's cgroup (writing 0 moves the writer).
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 || libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(err());
                }
                libc::close(fd);
                // A mount namespace of its own, where cgroup v2 is at
                // /sys/fs/cgroup and /run/systemd/nspawn is a tmpfs.
                if libc::unshare(libc::CLONE_NEWNS) != 0 {
                    return Err(err());
                }
                let none = std::ptr::null();
                if libc::mount(
                    none,
                    slash.as_ptr(),
                    none,
                    libc::MS_REC | libc::MS_PRIVATE,
                    none.cast(),
                ) != 0
                    || libc::mount(
                        cg_type.as_ptr(),
                        cg_dir.as_ptr(),
                        cg_type.as_ptr(),
                        0,
                        none.cast(),
                    ) != 0
                    || libc::mount(
                        tmpfs.as_ptr(),
                        run_dir.as_ptr(),
                        tmpfs.as_ptr(),
                        0,
                        none.cast(),
                    ) != 0
                {
                    return Err(err());
                }
                Ok(())
            });
        }
        eprintln!("xtask: $ {}", crate::show(&cmd));
        let nspawn = cmd.spawn().context("starting systemd-nspawn")?;
        let pid = nspawn.id();
        let mut machine = Machine {
            work: work.to_owned(),
            root,
            cgroup,
            nspawn: Some(nspawn),
            leader: 0,
            httpd: None,
        };
        machine.leader = machine.find_leader(pid)?;
        // Wait for the boot to finish (systemctl cannot connect at all until
        // PID 1 has set up its socket).
        let deadline = Instant::now() + Duration::from_secs(90);
        let state = loop {
            let out = machine.sh("systemctl is-system-running --wait")?;
            let state = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            if !state.is_empty() && state != "starting" && state != "initializing" {
                break state;
            }
            ensure!(
                Instant::now() < deadline,
                "the container did not finish booting within 90 s: {state:?} {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(200));
        };
        if state != "running" {
            let failed = machine.sh("systemctl --failed --no-legend").ok();
            bail!(
                "the container's systemd is {state:?}, not running; failed units: {}",
                failed
                    .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                    .unwrap_or_default()
            );
        }
        eprintln!(
            "xtask: container {MACHINE} is up (leader pid {})",
            machine.leader
        );
        Ok(machine)
    }

    /// The container's PID 1 (systemd), a child of nspawn.
    fn find_leader(&mut self, nspawn: u32) -> anyhow::Result<u32> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let children = fs::read_to_string(format!("/proc/{nspawn}/task/{nspawn}/children"))
                .unwrap_or_default();
            for child in children.split_whitespace() {
                let comm = fs::read_to_string(format!("/proc/{child}/comm")).unwrap_or_default();
                if comm.trim() == "systemd" {
                    return Ok(child.parse()?);
                }
            }
            if let Some(status) = self
                .nspawn
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!(
                    "systemd-nspawn exited ({status}) before the container booted:\n{}",
                    fs::read_to_string(self.work.join("console.log")).unwrap_or_default()
                );
            }
            ensure!(
                Instant::now() < deadline,
                "the container's systemd did not start within 30 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs a shell script inside the container (all its namespaces, a
    /// clean environment), at most two minutes.
    fn sh(&self, script: &str) -> anyhow::Result<std::process::Output> {
        eprintln!("xtask: [{MACHINE}] $ {script}");
        self.sh_quiet(script)
    }

    /// `sh` without echoing the command (for polling).
    fn sh_quiet(&self, script: &str) -> anyhow::Result<std::process::Output> {
        Command::new("timeout")
            .args(["120", "nsenter", "-t", &self.leader.to_string(), "-a", "--"])
            .args([
                "/usr/bin/env",
                "-i",
                "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
                "LANG=C.UTF-8",
                "SYSTEMD_COLORS=0",
                "SYSTEMD_PAGER=",
                "DEBIAN_FRONTEND=noninteractive",
                "HOME=/root",
                "/bin/sh",
                "-c",
            ])
            .arg(format!("cd /root && {script}"))
            .stdin(Stdio::null())
            .output()
            .context("nsenter")
    }

    /// `sh` that must succeed; its stdout.
    fn ok(&self, script: &str) -> anyhow::Result<String> {
        eprintln!("xtask: [{MACHINE}] $ {script}");
        self.ok_quiet(script)
    }

    fn ok_quiet(&self, script: &str) -> anyhow::Result<String> {
        let out = self.sh_quiet(script)?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        ensure!(
            out.status.success(),
            "`{script}` failed in the container ({}):\n{stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(stdout)
    }

    /// `systemctl show` properties of the unit.
    fn unit(&self, props: &str) -> anyhow::Result<BTreeMap<String, String>> {
        let text = self.ok_quiet(&format!("systemctl show torsensor.service -p {props}"))?;
        Ok(text
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect())
    }

    /// The journal's position now.
    fn cursor(&self) -> anyhow::Result<String> {
        let text = self.ok_quiet("journalctl -q -n 1 -o json")?;
        let doc: Value = serde_json::from_str(text.trim()).context("journalctl -o json")?;
        Ok(doc["__CURSOR"].as_str().context("no __CURSOR")?.to_owned())
    }

    /// The unit's journal entries (PID 1's about it and its own output)
    /// after `cursor`: (source, message), in journal order.
    fn journal_since(&self, cursor: &str) -> anyhow::Result<Vec<(String, String)>> {
        let text = self.ok_quiet(&format!(
            "journalctl -q -u torsensor.service -o json --after-cursor='{cursor}'"
        ))?;
        let mut out = Vec::new();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let doc: Value = serde_json::from_str(line)?;
            let message = match &doc["MESSAGE"] {
                Value::String(s) => s.clone(),
                // Non-UTF-8 messages come as byte arrays.
                Value::Array(bytes) => String::from_utf8_lossy(
                    &bytes
                        .iter()
                        .filter_map(|b| b.as_u64().map(|b| b as u8))
                        .collect::<Vec<_>>(),
                )
                .into_owned(),
                _ => String::new(),
            };
            let source = if doc["_PID"] == "1" {
                "systemd".to_owned()
            } else {
                doc["SYSLOG_IDENTIFIER"].as_str().unwrap_or("?").to_owned()
            };
            out.push((source, message));
        }
        Ok(out)
    }

    /// Waits (at most `timeout`) for a journal line of the unit after
    /// `cursor` containing `needle`.
    fn wait_journal(&self, cursor: &str, needle: &str, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let lines = self.journal_since(cursor)?;
            if lines.iter().any(|(_, m)| m.contains(needle)) {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "no {needle:?} in the unit's journal within {timeout:?}; it has:\n{}",
                lines
                    .iter()
                    .map(|(s, m)| format!("  {s}: {m}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// A path inside the container, from the host.
    fn path(&self, inside: &str) -> PathBuf {
        self.root.join(inside.trim_start_matches('/'))
    }

    /// Starts busybox httpd inside the container's network namespace
    /// (the process stays in the host's mount namespace and serves `dir`),
    /// in a leaf of the test's cgroup so that teardown kills it even after
    /// a run that died.
    fn start_feed_server(&mut self, dir: &Path) -> anyhow::Result<()> {
        let helpers = self.cgroup.join("helpers");
        fs::create_dir_all(&helpers)?;
        let procs = CString::new(helpers.join("cgroup.procs").as_os_str().as_bytes())?;
        let mut cmd = Command::new("nsenter");
        // SAFETY: open/write/close only, on a string allocated before the fork.
        unsafe {
            cmd.pre_exec(move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 || libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::close(fd);
                Ok(())
            });
        }
        let child = cmd
            .args([
                "-t",
                &self.leader.to_string(),
                "-n",
                "--",
                "busybox",
                "httpd",
                "-f",
                "-p",
                "127.0.0.1:8080",
                "-h",
            ])
            .arg(dir)
            .stdin(Stdio::null())
            .spawn()
            .context("starting busybox httpd (Debian package busybox-static)")?;
        self.httpd = Some(child);
        // Up once it answers, from inside the same namespace.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let got = Command::new("nsenter")
                .args([
                    "-t",
                    &self.leader.to_string(),
                    "-n",
                    "--",
                    "busybox",
                    "wget",
                    "-q",
                    "-O",
                    "/dev/null",
                    FEED_URL,
                ])
                .stderr(Stdio::null())
                .status()?;
            if got.success() {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "the feed server did not answer on {FEED_URL}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The host PID of a process the container knows as `pid`.
    fn host_pid(&self, pid: u32) -> anyhow::Result<u32> {
        let ns = fs::read_link(format!("/proc/{}/ns/pid", self.leader))?;
        for entry in fs::read_dir("/proc")?.flatten() {
            let Some(host) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            if fs::read_link(format!("/proc/{host}/ns/pid")).ok().as_ref() != Some(&ns) {
                continue;
            }
            let status = fs::read_to_string(format!("/proc/{host}/status")).unwrap_or_default();
            let inner = status
                .lines()
                .find_map(|l| l.strip_prefix("NSpid:"))
                .and_then(|l| l.split_whitespace().last())
                .and_then(|p| p.parse::<u32>().ok());
            if inner == Some(pid) {
                return Ok(host);
            }
        }
        bail!("no host process is pid {pid} in the container")
    }

    /// Keeps the unit's journal and the alert files under `target/`
    /// (the scratch tree is deleted).
    fn save_artifacts(&self) {
        if let Ok(out) = self.sh("journalctl -q --no-pager -o short-monotonic -u torsensor.service")
        {
            let _ = fs::write(self.work.join("journal.log"), &out.stdout);
        }
        for name in ["alerts.jsonl", "alerts.jsonl.1"] {
            let _ = fs::copy(
                self.path(&format!("/var/log/torsensor/{name}")),
                self.work.join(name),
            );
        }
    }

    /// Powers the container off (SIGTERM to nspawn halts it), then the
    /// teardown that `Drop` also does on any other path.
    fn shutdown(mut self) -> anyhow::Result<()> {
        self.stop_httpd();
        let Some(mut nspawn) = self.nspawn.take() else {
            return Ok(());
        };
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(nspawn.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        let clean = loop {
            if let Some(status) = nspawn.try_wait()? {
                break status.success();
            }
            if Instant::now() > deadline {
                let _ = nspawn.kill();
                let _ = nspawn.wait();
                break false;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        self.teardown();
        ensure!(clean, "the container did not power off cleanly within 30 s");
        Ok(())
    }

    fn stop_httpd(&mut self) {
        if let Some(mut child) = self.httpd.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn teardown(&mut self) {
        self.stop_httpd();
        if let Some(mut nspawn) = self.nspawn.take() {
            let _ = nspawn.kill();
            let _ = nspawn.wait();
        }
        remove_cgroup(&self.cgroup);
        let _ = fs::remove_dir_all(self.work.join("run"));
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// A TorDNSEL exit list (the format of check.torproject.org's list) that
/// names `exits` and has `downloaded` as its version.
fn tordnsel(downloaded: &str, exits: &[&str]) -> String {
    let mut s = format!("@type tordnsel 1.0\nDownloaded {downloaded}\n");
    for (i, ip) in exits.iter().enumerate() {
        s.push_str(&format!(
            "ExitNode {}{i:02X}\nPublished {downloaded}\nLastStatus {downloaded}\nExitAddress {ip} {downloaded}\n",
            "AB".repeat(19)
        ));
    }
    s
}

/// Writes the feed file with an mtime in the future of any earlier one,
/// so that a conditional request cannot get a 304 for new content.
fn write_feed(dir: &Path, text: &str, generation: u64) -> anyhow::Result<()> {
    let path = dir.join("exit-addresses");
    fs::write(&path, text)?;
    let when = SystemTime::now() + Duration::from_secs(60 * generation);
    fs::File::options()
        .write(true)
        .open(&path)?
        .set_modified(when)?;
    Ok(())
}

/// Alerts in the alert file (inside the container).
fn alerts(m: &Machine, file: &str) -> Vec<Value> {
    fs::read_to_string(m.path(file))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Connects from inside the container to `ip:port` (refused: nothing
/// listens) and waits for the alert in `file`.
fn expect_alert(m: &Machine, file: &str, ip: &str, port: u16) -> anyhow::Result<Value> {
    m.sh(&format!(
        "bash -c 'exec 3<>/dev/tcp/{ip}/{port}' 2>/dev/null; true"
    ))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(a) = alerts(m, file)
            .into_iter()
            .find(|a| a["destination"]["ip"] == ip && a["destination"]["port"] == port)
        {
            return Ok(a);
        }
        ensure!(
            Instant::now() < deadline,
            "no alert for {ip}:{port} in {file} within 10 s; it has {} alerts",
            alerts(m, file).len()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// BPF objects a process holds open, by kind (`prog`, `link`, `map`):
/// the ids in `/proc/PID/fdinfo` of its `anon_inode:bpf-*` descriptors.
/// (Debian's bpftool 7.1 is built without the skeleton that would list
/// holders' pids.)
fn bpf_objects_of(host_pid: u32) -> anyhow::Result<BTreeMap<&'static str, BTreeSet<u64>>> {
    let mut held: BTreeMap<&'static str, BTreeSet<u64>> = BTreeMap::new();
    for entry in fs::read_dir(format!("/proc/{host_pid}/fd"))?.flatten() {
        let target = fs::read_link(entry.path()).unwrap_or_default();
        let (kind, field) = match target.to_string_lossy().as_ref() {
            "anon_inode:bpf-prog" => ("prog", "prog_id:"),
            "anon_inode:bpf_link" => ("link", "link_id:"),
            "anon_inode:bpf-map" => ("map", "map_id:"),
            _ => continue,
        };
        let info = fs::read_to_string(format!(
            "/proc/{host_pid}/fdinfo/{}",
            entry.file_name().to_string_lossy()
        ))
        .unwrap_or_default();
        if let Some(id) = info
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().parse().ok())
        {
            held.entry(kind).or_default().insert(id);
        }
    }
    Ok(held)
}

/// Ids among `ids` that the host's `bpftool KIND show` still lists.
fn still_listed(kind: &str, ids: &BTreeSet<u64>) -> anyhow::Result<Vec<u64>> {
    let out = Command::new("bpftool")
        .args(["-j", kind, "show"])
        .output()?;
    ensure!(out.status.success(), "bpftool {kind} show failed");
    let list: Value = serde_json::from_slice(&out.stdout)?;
    Ok(list
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| o["id"].as_u64())
        .filter(|id| ids.contains(id))
        .collect())
}

/// Waits (3 s at most: a detached program is freed after an RCU grace
/// period) until the host's bpftool lists none of `held`.
fn wait_gone(held: &BTreeMap<&'static str, BTreeSet<u64>>, when: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let mut left = BTreeMap::new();
        for (kind, ids) in held {
            let listed = still_listed(kind, ids)?;
            if !listed.is_empty() {
                left.insert(*kind, listed);
            }
        }
        if left.is_empty() {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "{when}: 3 s later the host's bpftool still lists the sensor's {left:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn check(what: &str) {
    eprintln!("xtask: systemd-test: ok: {what}");
}

fn scenario(
    m: &mut Machine,
    deb: &Path,
    times: &mut Vec<(&'static str, Duration)>,
) -> anyhow::Result<()> {
    let t = Instant::now();
    // Install as a user would: one command.
    let name = deb
        .file_name()
        .context("deb name")?
        .to_string_lossy()
        .into_owned();
    fs::copy(deb, m.path(&format!("/root/{name}")))?;
    let out = m.ok(&format!("apt install -y ./{name} 2>&1"))?;
    eprintln!("{out}");
    times.push(("apt install", t.elapsed()));
    let t = Instant::now();

    // The package enabled and started it (live feeds configured, but no
    // network: armed on the embedded snapshot).
    let enabled = m.ok("systemctl is-enabled torsensor.service")?;
    ensure!(
        enabled.trim() == "enabled",
        "after apt install the unit is {enabled:?}, not enabled"
    );
    let state = m.unit("ActiveState,SubState")?;
    ensure!(
        state["ActiveState"] == "active" && state["SubState"] == "running",
        "after apt install the unit is {state:?}"
    );
    check("apt install enabled and started torsensor.service");
    // The packaged rules file (all comments) is read with the shipped rules.
    let rules = m.ok("torsensor rules check")?;
    // However many rules ship, the packaged operator file is read after them.
    ensure!(
        rules
            .split_once(" rules from ")
            .is_some_and(|(n, files)| n.parse::<usize>().is_ok()
                && files.starts_with("rules/tor.toml, /etc/torsensor/rules.d/10-local.toml")),
        "`torsensor rules check` after install:\n{rules}"
    );
    check("`torsensor rules check` reads the packaged /etc/torsensor/rules.d/10-local.toml");
    ensure!(
        m.path("/usr/share/torsensor/rules/tor.toml").exists()
            && m.path("/usr/share/doc/torsensor/copyright").exists(),
        "rules or copyright file missing from the installation"
    );

    // The administrator's configuration: a lab feed served over HTTP on
    // the container's loopback, the alert file, and a SIEM that is down.
    let feed_dir = m.work.join("run/feed");
    fs::create_dir_all(&feed_dir)?;
    write_feed(&feed_dir, &tordnsel(V1, &["127.66.0.1"]), 0)?;
    m.start_feed_server(&feed_dir)?;
    // The by-hand way off (and, at the end, on again).
    m.ok("systemctl disable --now torsensor.service")?;
    let state = m.unit("ActiveState,UnitFileState")?;
    ensure!(
        state["ActiveState"] == "inactive" && state["UnitFileState"] == "disabled",
        "after disable --now: {state:?}"
    );
    fs::write(m.path("/etc/torsensor/torsensor.toml"), TEST_CONFIG)?;
    let _ = fs::remove_file(m.path("/var/log/torsensor/alerts.jsonl"));

    // (a) start returns once armed.
    let cursor = m.cursor()?;
    m.ok("systemctl start torsensor.service")?;
    let state = m.unit("ActiveState,SubState,MainPID,StatusText")?;
    ensure!(
        state["ActiveState"] == "active" && state["SubState"] == "running",
        "(a) right after `systemctl start` returned the unit is {state:?}"
    );
    ensure!(
        state["StatusText"].starts_with("armed; inbound hooks "),
        "(a) the READY=1 status is not the armed one: {state:?}"
    );
    let main_pid: u32 = state["MainPID"].parse()?;
    let status: Value =
        serde_json::from_slice(&fs::read(m.path("/var/lib/torsensor/status.json"))?)?;
    ensure!(
        status["pid"] == main_pid,
        "(a) status.json (written just before arming) is not from pid {main_pid}: {}",
        status["pid"]
    );
    let journal = m.journal_since(&cursor)?;
    let armed = journal
        .iter()
        .position(|(_, l)| l.contains("torsensor armed"));
    let started = journal
        .iter()
        .position(|(s, l)| s == "systemd" && l.starts_with("Started torsensor.service"));
    ensure!(
        matches!((armed, started), (Some(a), Some(s)) if a < s),
        "(a) the journal does not show the arming line before systemd's `Started`:\n{journal:#?}"
    );
    check(
        "(a) `systemctl start` returned with the unit active/running, after the arming line, with STATUS=armed",
    );

    // The lab feed arrives over HTTP (the start armed from the embedded
    // snapshot first: start-up never waits for the network).
    m.wait_journal(&cursor, "feed lab: refreshed", Duration::from_secs(20))?;
    let host_pid = m.host_pid(main_pid)?;
    let held = bpf_objects_of(host_pid)?;
    ensure!(
        ["prog", "link", "map"].iter().all(|k| held.contains_key(k)),
        "(d) the sensor (host pid {host_pid}) holds no program, link or map: {held:?}"
    );
    for (kind, ids) in &held {
        let listed = still_listed(kind, ids)?;
        ensure!(
            listed.len() == ids.len(),
            "(d) bpftool {kind} show lists {listed:?} of the sensor's {ids:?}"
        );
    }

    // (e) an alert lands in the alert file, and in the SIEM's spool.
    let file = "/var/log/torsensor/alerts.jsonl";
    let alert = expect_alert(m, file, "127.66.0.1", 9001)?;
    ensure!(
        alert["rule"]["id"] == "TORSENSOR-003"
            && alert["process"]["thread"]["name"] == "bash"
            && alert["torsensor"]["matches"][0]["version"] == "2026-11-24T20:00:00Z",
        "(e) unexpected alert: {alert:#}"
    );
    check(
        "(e) the connection to a listed address was alerted in /var/log/torsensor/alerts.jsonl (feed version 1, over HTTP)",
    );
    let spool = m.path("/var/lib/torsensor/spool/siem");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let spooled = fs::read_dir(&spool)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
            .any(|e| fs::read(e.path()).is_ok_and(|b| b.windows(10).any(|w| w == b"127.66.0.1")));
        if spooled {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "(e) the alert is not in the spool {}",
            spool.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    check(
        "(e) the remote output to a closed port spooled the alert to /var/lib/torsensor/spool/siem/",
    );

    // (b) reload: a new feed version.
    write_feed(&feed_dir, &tordnsel(V2, &["127.66.0.1", "127.66.0.2"]), 1)?;
    let cursor = m.cursor()?;
    m.ok("systemctl reload torsensor.service")?;
    m.wait_journal(&cursor, "feed lab: refreshed", Duration::from_secs(15))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let state = loop {
        let state = m.unit("ActiveState,SubState,MainPID,StatusText")?;
        if state["StatusText"].contains("lab 2026-11-24T21:00:00Z") || Instant::now() > deadline {
            break state;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    ensure!(
        state["ActiveState"] == "active"
            && state["MainPID"] == main_pid.to_string()
            && state["StatusText"].contains("lab 2026-11-24T21:00:00Z"),
        "(b) after reload: {state:?}"
    );
    let alert = expect_alert(m, file, "127.66.0.2", 9001)?;
    ensure!(
        alert["torsensor"]["matches"][0]["version"] == "2026-11-24T21:00:00Z",
        "(b) the new address did not match the new version: {alert:#}"
    );
    check(
        "(b) `systemctl reload` refreshed the feed (version 2 in STATUS, its new address alerts), same main pid",
    );

    // logrotate's rule: rotate, SIGUSR2, the next alert goes to a new file.
    let cursor = m.cursor()?;
    m.ok("logrotate -f /etc/logrotate.d/torsensor")?;
    m.wait_journal(
        &cursor,
        "SIGUSR2: reopening the output files",
        Duration::from_secs(5),
    )?;
    ensure!(
        m.path("/var/log/torsensor/alerts.jsonl.1").exists(),
        "logrotate did not rotate the alert file"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    for port in 9100u16.. {
        // The reopen is asynchronous: a connection made before the file is
        // reopened goes to the rotated one; try again until one lands.
        m.sh(&format!(
            "bash -c 'exec 3<>/dev/tcp/127.66.0.1/{port}' 2>/dev/null; true"
        ))?;
        std::thread::sleep(Duration::from_millis(300));
        if alerts(m, file)
            .iter()
            .any(|a| a["destination"]["port"] == port)
        {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "no alert in the new alert file after logrotate"
        );
    }
    let journal = m.journal_since(&cursor)?;
    ensure!(
        !journal.iter().any(|(_, line)| line.contains("SIGHUP")),
        "logrotate's signal reloaded the configuration: {journal:?}"
    );
    check("(e) logrotate rotated alerts.jsonl and SIGUSR2 reopened it (no reload, no refresh)");

    // (d) stop: nothing of the sensor left in the kernel.
    let cursor = m.cursor()?;
    m.ok("systemctl stop torsensor.service")?;
    let state = m.unit("ActiveState,Result,ExecMainStatus")?;
    ensure!(
        state["ActiveState"] == "inactive"
            && state["Result"] == "success"
            && state["ExecMainStatus"] == "0",
        "(d) after stop: {state:?}"
    );
    m.wait_journal(&cursor, "stopped", Duration::from_secs(1))?;
    wait_gone(&held, "(d) after `systemctl stop`")?;
    check(&format!(
        "(d) `systemctl stop`: exit 0; the sensor's {} programs, {} links and {} maps are gone from the host's bpftool listing",
        held["prog"].len(),
        held["link"].len(),
        held["map"].len()
    ));

    // (c) the watchdog: the fault switch hangs the loop after 3 s.
    let dropin = m.path("/etc/systemd/system/torsensor.service.d/50-test-hang.conf");
    fs::create_dir_all(dropin.parent().expect("has a parent"))?;
    fs::write(&dropin, HANG_DROPIN)?;
    m.ok("systemctl daemon-reload")?;
    let before: u64 = m.unit("NRestarts")?["NRestarts"].parse()?;
    let cursor = m.cursor()?;
    m.ok("systemctl start torsensor.service")?;
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut saw_watchdog = false;
    let restarts = loop {
        let state = m.unit("Result,NRestarts,ActiveState,SubState")?;
        saw_watchdog |= state["Result"] == "watchdog";
        let n: u64 = state["NRestarts"].parse()?;
        if n > before && saw_watchdog {
            break n;
        }
        ensure!(
            Instant::now() < deadline,
            "(c) no watchdog restart within 40 s: {state:?}, Result=watchdog seen: {saw_watchdog}"
        );
        std::thread::sleep(Duration::from_millis(150));
    };
    m.wait_journal(
        &cursor,
        "TEST FAULT: the event loop hangs now",
        Duration::from_secs(1),
    )?;
    m.wait_journal(&cursor, "Watchdog timeout", Duration::from_secs(1))?;
    fs::remove_file(&dropin)?;
    m.ok("systemctl daemon-reload")?;
    // The instance that restarted hangs too: kill it rather than wait for
    // the stop timeout; reset the start counter (StartLimitBurst=5), unless
    // the stopped unit was already unloaded, which resets it too.
    m.ok("systemctl kill --signal=SIGKILL torsensor.service; systemctl stop torsensor.service")?;
    m.ok("systemctl reset-failed torsensor.service 2>/dev/null || true")?;
    let state = m.unit("ActiveState")?;
    ensure!(
        state["ActiveState"] != "active",
        "(c) the hung sensor is still running: {state:?}"
    );
    check(&format!(
        "(c) the hung loop was killed by the watchdog (Result=watchdog) and restarted (NRestarts {before} -> {restarts})"
    ));

    // The README's commands for a unit that is not running yet.
    m.ok("systemctl enable --now torsensor.service")?;
    let state = m.unit("ActiveState,SubState,UnitFileState,StatusText")?;
    ensure!(
        state["ActiveState"] == "active"
            && state["UnitFileState"] == "enabled"
            && state["StatusText"].starts_with("armed; "),
        "after enable --now: {state:?}"
    );
    let status = m.ok("systemctl status --no-pager --lines=0 torsensor.service")?;
    ensure!(
        status.contains("Status: \"armed; "),
        "`systemctl status` shows no armed status:\n{status}"
    );
    check("`systemctl enable --now` started it again; `systemctl status` shows the STATUS= line");

    // Removal: prerm stops it, purge removes the state and the logs.
    let host_pid = m.host_pid(m.unit("MainPID")?["MainPID"].parse()?)?;
    let held = bpf_objects_of(host_pid)?;
    m.save_artifacts();
    m.ok("apt purge -y torsensor 2>&1")?;
    let state = m.unit("ActiveState,LoadState")?;
    ensure!(
        state["ActiveState"] == "inactive" && state["LoadState"] == "not-found",
        "after apt purge: {state:?}"
    );
    ensure!(
        !m.path("/var/lib/torsensor").exists() && !m.path("/var/log/torsensor").exists(),
        "apt purge left /var/lib/torsensor or /var/log/torsensor"
    );
    wait_gone(&held, "after `apt purge`")?;
    check(
        "`apt purge` stopped the sensor (nothing left in the kernel) and removed its unit, state and logs",
    );
    times.push(("scenario", t.elapsed()));
    Ok(())
}
