//! The container image (`deploy/Containerfile`) and its end-to-end test.
//!
//! `cargo xtask container-build` stages the image's whole file tree under
//! `target/container/context/rootfs` (the release `torsensor`, the shared
//! libraries `ldd` names for it, Debian's CA bundle, a two-line passwd) and
//! builds `FROM scratch` with podman: nothing is pulled from a registry.
//!
//! `cargo xtask container-test` (CI) builds the image under a throw-away tag
//! and runs it the way the DaemonSet does: every podman flag that shapes
//! the container is translated from `deploy/kubernetes/daemonset.yaml`
//! (host PID namespace, own network namespace, capabilities, no privilege
//! escalation, read-only root, the runtime's default seccomp filter, the
//! hostPath mounts, env with the downward API's node name, resource limits,
//! the grace period). A process on the host (outside the container) with a
//! distinctive name then connects to a listed loopback address; the alert
//! on the container's stdout must name that process. `podman stop` must end
//! it with exit 0 and leave none of its programs in the kernel. Containers
//! and images are removed on every exit path.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use crate::k8s::{BASE, Venv};
use crate::{in_ci, run, show};

/// The image's name; the tag is the workspace version.
pub const IMAGE: &str = "localhost/torsensor";
/// podman's stock seccomp profile (Debian's golang-github-containers-common).
const PODMAN_SECCOMP: &str = "/usr/share/containers/seccomp.json";
/// The listed range of the lab feed, and the address the probe connects to.
const LAB_RANGE: &str = "127.66.0.0/16";
const LAB_PEER: Ipv4Addr = Ipv4Addr::new(127, 66, 0, 1);
/// The host process's name (a copy of curl): what the alert must name.
const PROBE_NAME: &str = "tsprobe-curl";
/// `spec.nodeName` as the downward API would give it.
const NODE_NAME: &str = "ci-node-1";
const ARM_TIMEOUT: Duration = Duration::from_secs(30);

/// Writes the image's file tree; returns the build context.
pub fn stage(root: &Path) -> anyhow::Result<PathBuf> {
    let context = root.join("target/container/context");
    let rootfs = context.join("rootfs");
    let _ = fs::remove_dir_all(&context);
    let binary = root.join("target/release/torsensor");
    let put = |from: &Path, to: &str, mode: u32| -> anyhow::Result<()> {
        let dest = rootfs.join(to.trim_start_matches('/'));
        fs::create_dir_all(dest.parent().expect("absolute path"))?;
        // fs::copy follows links: the image gets the file, not the link.
        fs::copy(from, &dest)
            .with_context(|| format!("copying {} into the image", from.display()))?;
        fs::set_permissions(&dest, fs::Permissions::from_mode(mode))?;
        Ok(())
    };
    put(&binary, "/usr/local/bin/torsensor", 0o755)?;
    // Every library the dynamic loader will ask for, at the path it asks
    // for it (the loader itself included), as on the build host: the image
    // runs the binary against the glibc it was linked with.
    let ldd = Command::new("ldd")
        .arg(&binary)
        .output()
        .context("running ldd")?;
    if !ldd.status.success() {
        bail!("ldd {} failed", binary.display());
    }
    let mut libs = Vec::new();
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or
        // "/lib64/ld-linux-x86-64.so.2 (0x...)"; the vDSO has no file.
        let path = match line.split_once("=>") {
            Some((_, right)) => right.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        match path {
            Some(p) if p.starts_with('/') => libs.push(p.to_owned()),
            _ if line.contains("vdso") => {}
            _ => bail!("ldd: cannot place {line:?} in the image (a missing library?)"),
        }
    }
    for lib in &libs {
        put(Path::new(lib), lib, 0o755)?;
    }
    put(
        Path::new("/etc/ssl/certs/ca-certificates.crt"),
        "/etc/ssl/certs/ca-certificates.crt",
        0o644,
    )?;
    let etc = rootfs.join("etc");
    fs::write(
        etc.join("passwd"),
        "root:x:0:0:root:/root:/usr/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
    )?;
    fs::write(etc.join("group"), "root:x:0:\nnogroup:x:65534:\n")?;
    for (dir, mode) in [("etc/torsensor", 0o755), ("var/lib/torsensor", 0o750)] {
        fs::create_dir_all(rootfs.join(dir))?;
        fs::set_permissions(rootfs.join(dir), fs::Permissions::from_mode(mode))?;
    }
    eprintln!(
        "xtask: image tree: torsensor, {}, CA bundle, passwd",
        libs.join(", ")
    );
    Ok(context)
}

/// Stages and builds the image with podman under `tag`.
pub fn build(root: &Path, tag: &str) -> anyhow::Result<()> {
    let context = stage(root)?;
    run(Command::new("podman")
        // --layers=false: one image, no intermediate ones left behind.
        .args(["build", "--quiet", "--layers=false", "--file"])
        .arg(root.join("deploy/Containerfile"))
        .args([
            "--build-arg",
            &format!("VERSION={}", env!("CARGO_PKG_VERSION")),
        ])
        .args(["--tag", tag])
        .arg(&context))
}

/// The seccomp profile that stands for Kubernetes' RuntimeDefault (see
/// [`containerd_like_seccomp`]); `container-build` writes it too, for the
/// README's podman command.
fn seccomp_path(root: &Path) -> PathBuf {
    root.join("target/container/seccomp.json")
}

/// `cargo xtask container-build`.
pub fn build_release_image(root: &Path) -> anyhow::Result<()> {
    crate::build_release()?;
    let tag = format!("{IMAGE}:{}", env!("CARGO_PKG_VERSION"));
    build(root, &tag)?;
    containerd_like_seccomp(&seccomp_path(root))?;
    println!(
        "container-build: {tag}; seccomp profile like containerd's RuntimeDefault: {}",
        seccomp_path(root).display()
    );
    Ok(())
}

/// The test's own paths, substituted for the DaemonSet's volumes.
struct Lab {
    /// Replaces the ConfigMap: a config with a file feed of `LAB_RANGE`.
    config: PathBuf,
    /// Replaces the rules ConfigMap: the base's own rules.d files.
    rules: PathBuf,
    /// Replaces the state hostPath (the host's own /var/lib/torsensor stays untouched).
    state: PathBuf,
    /// Stands in for a hostPath this machine lacks (it is not a Kubernetes node).
    empty: PathBuf,
    seccomp: PathBuf,
}

/// The podman flags that give a container what the DaemonSet's pod spec
/// gives it, plus what this test substitutes; and the stop grace period.
fn flags_from_daemonset(ds: &Value, lab: &Lab) -> anyhow::Result<(Vec<String>, u64)> {
    let pod = &ds["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    let sc = &c["securityContext"];
    let mut f: Vec<String> = Vec::new();
    let mut push = |s: String| f.push(s);

    push(
        if pod["hostPID"] == true {
            "--pid=host"
        } else {
            "--pid=private"
        }
        .into(),
    );
    // Not hostNetwork: a network namespace of its own. No bridge is needed
    // for the test (its feed is a file), so none is set up.
    push(
        if pod["hostNetwork"] == true {
            "--network=host"
        } else {
            "--network=none"
        }
        .into(),
    );
    if sc["privileged"] == true {
        bail!("the DaemonSet's container is privileged: it must not be");
    }
    let drop: Vec<&str> = sc["capabilities"]["drop"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    if drop != ["ALL"] {
        bail!("the DaemonSet must drop ALL capabilities, drops {drop:?}");
    }
    push("--cap-drop=all".into());
    for cap in sc["capabilities"]["add"].as_array().into_iter().flatten() {
        push(format!(
            "--cap-add=CAP_{}",
            cap.as_str().context("capability name")?
        ));
    }
    if sc["allowPrivilegeEscalation"] == false {
        push("--security-opt=no-new-privileges".into());
    }
    if sc["readOnlyRootFilesystem"] == true {
        push("--read-only".into());
    }
    if let Some(uid) = sc["runAsUser"].as_u64() {
        push(format!(
            "--user={uid}:{}",
            sc["runAsGroup"].as_u64().unwrap_or(uid)
        ));
    }
    match sc["seccompProfile"]["type"].as_str() {
        Some("RuntimeDefault") => push(format!("--security-opt=seccomp={}", lab.seccomp.display())),
        Some("Unconfined") => push("--security-opt=seccomp=unconfined".into()),
        other => bail!("seccompProfile {other:?}: not translated"),
    }

    // Volumes: hostPaths at their own path (read-only as mounted), the
    // ConfigMap and the state directory replaced by the lab's.
    let volumes: BTreeMap<&str, &Value> = pod["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| Some((v["name"].as_str()?, v)))
        .collect();
    for m in c["volumeMounts"].as_array().into_iter().flatten() {
        let name = m["name"].as_str().context("volumeMount name")?;
        let target = m["mountPath"].as_str().context("mountPath")?;
        let vol = volumes
            .get(name)
            .with_context(|| format!("volume {name}"))?;
        let source = if vol["configMap"]["name"] == "torsensor-rules" {
            lab.rules.clone()
        } else if vol["configMap"].is_object() {
            lab.config.clone()
        } else if let Some(path) = vol["hostPath"]["path"].as_str() {
            if path == "/var/lib/torsensor" {
                lab.state.clone()
            } else if Path::new(path).exists() {
                PathBuf::from(path)
            } else {
                eprintln!(
                    "xtask: NOTE: hostPath {path} does not exist here (not a Kubernetes node): an empty directory stands in"
                );
                lab.empty.clone()
            }
        } else {
            bail!("volume {name}: only configMap and hostPath volumes are translated");
        };
        let ro = if m["readOnly"] == true { ":ro" } else { "" };
        push(format!("--volume={}:{target}{ro}", source.display()));
    }

    // Environment, with $(VAR) references to earlier entries expanded as
    // the kubelet does, and the node name the downward API would give.
    let mut env: Vec<(String, String)> = Vec::new();
    for e in c["env"].as_array().into_iter().flatten() {
        let name = e["name"].as_str().context("env name")?.to_owned();
        let value = if let Some(v) = e["value"].as_str() {
            env.iter().fold(v.to_owned(), |acc, (k, val)| {
                acc.replace(&format!("$({k})"), val)
            })
        } else if e["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName" {
            NODE_NAME.to_owned()
        } else {
            bail!("env {name}: only values and spec.nodeName are translated");
        };
        env.push((name, value));
    }
    for (k, v) in &env {
        push(format!("--env={k}={v}"));
    }

    let limits = &c["resources"]["limits"];
    if let Some(mem) = limits["memory"].as_str() {
        let bytes: u64 = match mem {
            m if m.ends_with("Mi") => m.trim_end_matches("Mi").parse::<u64>()? << 20,
            m if m.ends_with("Gi") => m.trim_end_matches("Gi").parse::<u64>()? << 30,
            m => bail!("memory limit {m:?}: not translated"),
        };
        push(format!("--memory={bytes}"));
    }
    if let Some(cpu) = limits["cpu"].as_str() {
        let cpus = match cpu.strip_suffix('m') {
            Some(milli) => milli.parse::<f64>()? / 1000.0,
            None => cpu.parse::<f64>()?,
        };
        push(format!("--cpus={cpus}"));
    }
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap_or(30);
    Ok((f, grace))
}

/// The filter containerd's RuntimeDefault applies (bpf(2) allowed with
/// CAP_BPF, perf_event_open(2) with CAP_PERFMON, both also with
/// CAP_SYS_ADMIN), made from podman's stock profile, whose older rules
/// allow them only with CAP_SYS_ADMIN (and answer EPERM otherwise).
/// Returns whether the stock profile needed the change.
fn containerd_like_seccomp(out: &Path) -> anyhow::Result<bool> {
    let mut profile: Value = serde_json::from_str(
        &fs::read_to_string(PODMAN_SECCOMP).with_context(|| format!("reading {PODMAN_SECCOMP}"))?,
    )?;
    let gated = ["bpf", "perf_event_open"];
    let rules = profile["syscalls"]
        .as_array_mut()
        .context("no syscalls in the seccomp profile")?;
    let mut changed = false;
    for rule in rules.iter_mut() {
        if rule["action"] != "SCMP_ACT_ALLOW"
            && let Some(names) = rule["names"].as_array_mut()
        {
            let before = names.len();
            names.retain(|n| !gated.iter().any(|g| n == g));
            changed |= names.len() != before;
        }
    }
    rules.retain(|r| r["names"].as_array().is_none_or(|n| !n.is_empty()));
    let has = |rules: &[Value], name: &str, cap: &str| {
        rules.iter().any(|r| {
            r["action"] == "SCMP_ACT_ALLOW"
                && r["names"]
                    .as_array()
                    .is_some_and(|n| n.iter().any(|x| x == name))
                && r["includes"]["caps"]
                    .as_array()
                    .is_some_and(|c| c.iter().any(|x| x == cap))
        })
    };
    for (name, cap) in [("bpf", "CAP_BPF"), ("perf_event_open", "CAP_PERFMON")] {
        if !has(rules, name, cap) {
            changed = true;
            rules.push(json!({"names": [name], "action": "SCMP_ACT_ALLOW", "args": [], "includes": {"caps": [cap]}, "excludes": {}}));
        }
    }
    fs::create_dir_all(out.parent().expect("a file in a directory"))?;
    fs::write(out, serde_json::to_string_pretty(&profile)?)?;
    Ok(changed)
}

/// podman's defaults raise the container's open-file and process limits
/// above what a root without CAP_SYS_RESOURCE (this sandbox's) may set, and
/// the runtime then refuses to start; the current hard limits always work.
fn ulimit_flags() -> Vec<String> {
    let hard = |res| {
        let mut r = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into the struct we own.
        unsafe { libc::getrlimit(res, &mut r) };
        r.rlim_max
    };
    let pid_max: u64 = fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(32768);
    let nofile = hard(libc::RLIMIT_NOFILE).min(1 << 20);
    let nproc = hard(libc::RLIMIT_NPROC).min(pid_max);
    vec![
        format!("--ulimit=nofile={nofile}:{nofile}"),
        format!("--ulimit=nproc={nproc}:{nproc}"),
    ]
}

/// Removes what the test made, whichever way it ends.
struct Cleanup {
    names: Vec<String>,
    image: String,
    children: Vec<Child>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for name in &self.names {
            let _ = Command::new("podman")
                .args(["rm", "--force", "--ignore", "--time", "0", name])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = Command::new("podman")
            .args(["rmi", "--force", &self.image])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn have(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Waits for `child` up to `limit`; `None` if it still runs.
fn wait_for(
    child: &mut Child,
    limit: Duration,
) -> anyhow::Result<Option<std::process::ExitStatus>> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Ids of the programs whose file descriptors process `pid` holds (from
/// `/proc/<pid>/fdinfo`: Debian's bpftool is built without skeletons, so
/// `bpftool prog show` cannot name the holding process), with their names.
fn programs_of(pid: u32) -> anyhow::Result<BTreeMap<u64, String>> {
    let mut ids: BTreeSet<u64> = BTreeSet::new();
    for entry in fs::read_dir(format!("/proc/{pid}/fdinfo"))? {
        let text = fs::read_to_string(entry?.path()).unwrap_or_default();
        // Program fds have "prog_id:"; link fds name their program the same way.
        if let Some(id) = text
            .lines()
            .find_map(|l| l.strip_prefix("prog_id:"))
            .and_then(|v| v.trim().parse().ok())
        {
            ids.insert(id);
        }
    }
    let out = Command::new("bpftool")
        .args(["-j", "prog", "show"])
        .output()
        .context("bpftool")?;
    let progs: Value = serde_json::from_slice(&out.stdout).context("bpftool -j prog show")?;
    Ok(progs
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| {
            Some((
                p["id"].as_u64()?,
                p["name"].as_str().unwrap_or("").to_owned(),
            ))
        })
        .filter(|(id, _)| ids.contains(id))
        .collect())
}

/// Of `ids`, the programs still loaded and the links still attached to them.
fn left_over(ids: &BTreeSet<u64>) -> anyhow::Result<(Vec<u64>, Vec<u64>)> {
    let ids_in = |args: &[&str], key: &str| -> anyhow::Result<Vec<u64>> {
        let out = Command::new("bpftool")
            .args(args)
            .output()
            .context("bpftool")?;
        let v: Value = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("bpftool {}", args.join(" ")))?;
        Ok(v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|x| x[key].as_u64())
            .filter(|id| ids.contains(id))
            .collect())
    };
    Ok((
        ids_in(&["-j", "prog", "show"], "id")?,
        ids_in(&["-j", "link", "show"], "prog_id")?,
    ))
}

/// Serves one HTTP answer on `listener`, a little late, so that the probe is
/// still alive (and readable in /proc) while the sensor builds the alert.
fn serve_once(listener: TcpListener) {
    std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(20);
        let _ = listener.set_nonblocking(true);
        while Instant::now() < deadline {
            match listener.accept() {
                Ok((mut s, _)) => {
                    let _ = s.set_nonblocking(false);
                    let mut buf = [0u8; 1024];
                    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                    let _ = s.read(&mut buf);
                    std::thread::sleep(Duration::from_millis(500));
                    let _ = s.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nok\n");
                    return;
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    });
}

fn get<'a>(v: &'a Value, path: &str) -> &'a Value {
    path.split('.').fold(v, |v, k| &v[k])
}

/// `cargo xtask container-test`.
pub fn test(root: &Path) -> anyhow::Result<()> {
    let start = Instant::now();
    let skip = |why: &str| -> anyhow::Result<()> {
        if in_ci() {
            bail!("container-test cannot run: {why} (under CI=true this is a failure, not a skip)");
        }
        eprintln!("xtask: SKIP container-test: {why}");
        Ok(())
    };
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return skip("it needs root (eBPF, podman)");
    }
    for tool in ["podman", "runc", "bpftool", "curl"] {
        if !have(tool) {
            return skip(&format!(
                "{tool} is not installed (cargo xtask setup installs it)"
            ));
        }
    }
    crate::build_release()?;
    let venv = Venv::ensure(root)?;
    let ds_text = fs::read_to_string(root.join(BASE).join("daemonset.yaml"))?;
    let ds = venv
        .yaml_to_json(&ds_text)?
        .into_iter()
        .find(|d| d["kind"] == "DaemonSet")
        .context("no DaemonSet in daemonset.yaml")?;

    let id = std::process::id();
    let work = root.join(format!("target/container-test/{id}"));
    let _ = fs::remove_dir_all(&work);
    let lab = Lab {
        config: work.join("config"),
        rules: root.join(BASE).join("rules.d"),
        state: work.join("state"),
        empty: work.join("empty"),
        seccomp: seccomp_path(root),
    };
    for dir in [&lab.config, &lab.state, &lab.empty] {
        fs::create_dir_all(dir)?;
    }
    // The state directory must be the sensor's user's and not group/other-writable.
    fs::set_permissions(&lab.state, fs::Permissions::from_mode(0o750))?;
    fs::write(lab.config.join("lab.txt"), format!("{LAB_RANGE}\n"))?;
    fs::write(
        lab.config.join("torsensor.toml"),
        "# container-test's stand-in for the ConfigMap: a file feed of a loopback range.\n\
         state_dir = \"/var/lib/torsensor\"\n\
         allow_reserved = true\n\n\
         [[feed]]\n\
         name = \"lab\"\n\
         location = \"/etc/torsensor/lab.txt\"\n\
         format = \"plain\"\n",
    )?;
    let stock_blocks_bpf = containerd_like_seccomp(&lab.seccomp)?;
    let (pod_flags, grace) = flags_from_daemonset(&ds, &lab)?;

    let image = format!("{IMAGE}:ctest-{id}");
    let name = format!("torsensor-ctest-{id}");
    let negative = format!("torsensor-ctest-{id}-stock-seccomp");
    let mut cleanup = Cleanup {
        names: vec![name.clone(), negative.clone()],
        image: image.clone(),
        children: Vec::new(),
    };
    let t_build = Instant::now();
    build(root, &image)?;
    let build_secs = t_build.elapsed().as_secs_f64();

    // `seccomp`: a profile in place of the pod's.
    let podman_run = |name: &str, seccomp: Option<&str>| {
        let mut cmd = Command::new("podman");
        // crun 1.8 (Debian 12) refuses hosts with a hybrid cgroup layout
        // like this one; runc runs there and everywhere else.
        cmd.args(["--runtime", "runc", "run", "--rm", "--name", name]);
        cmd.args(ulimit_flags());
        for flag in &pod_flags {
            match seccomp {
                Some(profile) if flag.starts_with("--security-opt=seccomp=") => {
                    cmd.arg(format!("--security-opt=seccomp={profile}"))
                }
                _ => cmd.arg(flag),
            };
        }
        cmd.arg(&image);
        cmd.args(
            ds["spec"]["template"]["spec"]["containers"][0]["args"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str),
        );
        cmd
    };

    // The filter matters: with podman's stock profile (bpf(2) only with
    // CAP_SYS_ADMIN, as in CRI-O's) the start must fail with the sentence
    // the DaemonSet's comment tells the operator to look for.
    if stock_blocks_bpf {
        let mut cmd = podman_run(&negative, Some(PODMAN_SECCOMP));
        eprintln!("xtask: $ {} (must fail)", show(&cmd));
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("podman run")?;
        let mut stderr = child.stderr.take().expect("piped");
        cleanup.children.push(child);
        let status = wait_for(cleanup.children.last_mut().expect("pushed"), ARM_TIMEOUT)?;
        let mut text = String::new();
        if status.is_some() {
            stderr.read_to_string(&mut text)?;
        }
        match status {
            Some(s)
                if !s.success()
                    && text.contains("failed to create map")
                    && text.contains("Operation not permitted") =>
            {
                eprintln!(
                    "xtask: stock seccomp profile (bpf needs SYS_ADMIN): start refused as documented: ok"
                );
            }
            other => bail!(
                "with podman's stock seccomp profile the sensor should fail to create its maps; got {other:?}:\n{text}"
            ),
        }
    } else {
        eprintln!(
            "xtask: NOTE: podman's stock seccomp profile already allows bpf(2) with CAP_BPF: no negative run"
        );
    }

    // The real run: stdout (alerts) and stderr (logs) to files.
    let out_path = work.join("stdout.jsonl");
    let err_path = work.join("stderr.log");
    let mut cmd = podman_run(&name, None);
    eprintln!("xtask: $ {}", show(&cmd));
    let child = cmd
        .stdin(Stdio::null())
        .stdout(File::create(&out_path)?)
        .stderr(File::create(&err_path)?)
        .spawn()
        .context("podman run")?;
    cleanup.children.push(child);
    let t_arm = Instant::now();
    let logs = || fs::read_to_string(&err_path).unwrap_or_default();
    loop {
        if logs().contains("torsensor armed") {
            break;
        }
        if let Some(status) = cleanup.children.last_mut().expect("pushed").try_wait()? {
            bail!("the container exited ({status}) before arming:\n{}", logs());
        }
        if t_arm.elapsed() > ARM_TIMEOUT {
            bail!("not armed within {ARM_TIMEOUT:?}:\n{}", logs());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let arm_secs = t_arm.elapsed().as_secs_f64();
    // The DaemonSet runs the start-up self-test (TORSENSOR_SELFTEST): it
    // must pass with the pod's capabilities only (no SYS_ADMIN, so its
    // canary is a loopback address of the pod's own network namespace).
    let t_selftest = Instant::now();
    loop {
        let text = logs();
        if let Some(line) = text.lines().find(|l| l.contains("self-test #1 passed")) {
            eprintln!("xtask: {}: ok", line.split("INFO ").last().unwrap_or(line));
            break;
        }
        if text.contains("self-test #1 FAILED") || t_selftest.elapsed() > ARM_TIMEOUT {
            bail!("the start-up self-test did not pass:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // The rules ConfigMap is read (TORSENSOR_RULES_DIR).
    let rules = logs()
        .lines()
        .find(|l| l.contains("rules: "))
        .map(str::to_owned)
        .unwrap_or_default();
    if !rules.contains("from rules/tor.toml, /etc/torsensor-rules/10-local.toml") {
        bail!("the rules ConfigMap was not read: {rules:?}");
    }
    eprintln!(
        "xtask: {}: ok",
        rules.split("INFO ").last().unwrap_or(&rules)
    );
    let kept = logs()
        .lines()
        .find(|l| l.contains("privileges: kept"))
        .map(str::to_owned)
        .unwrap_or_default();
    if !kept.contains("kept CAP_BPF, CAP_DAC_READ_SEARCH, CAP_SYS_PTRACE (") {
        bail!(
            "after arming the sensor should keep exactly BPF, DAC_READ_SEARCH, SYS_PTRACE: {kept:?}"
        );
    }
    let pid: u32 = crate::stdout_of(Command::new("podman").args([
        "inspect",
        "--format",
        "{{.State.Pid}}",
        &name,
    ]))
    .trim()
    .parse()
    .context("podman inspect: the container's pid")?;
    let ours = programs_of(pid)?;
    if ours.is_empty() {
        bail!(
            "bpftool shows no program held by the container's torsensor (host pid {pid}): the clean-up check below would prove nothing"
        );
    }
    let ids: BTreeSet<u64> = ours.keys().copied().collect();
    // The kubelet's probes, from inside the pod's network namespace (the
    // endpoint listens on 0.0.0.0:9477 there, as the DaemonSet's config says).
    for (path, want) in [("/healthz", "ok"), ("/readyz", "ok")] {
        let answer = crate::stdout_of(Command::new("nsenter").args([
            "-t",
            &pid.to_string(),
            "-n",
            "curl",
            "-s",
            "-w",
            " %{http_code}",
            &format!("http://127.0.0.1:9477{path}"),
        ]));
        if answer.split_whitespace().collect::<Vec<_>>() != [want, "200"] {
            bail!("GET {path} in the pod's network namespace answered {answer:?}, not 200 {want}");
        }
        eprintln!("xtask: GET {path} in the pod's network namespace: 200 {want}: ok");
    }

    // A host process with a distinctive name connects to a listed address.
    let listener =
        TcpListener::bind(SocketAddr::from((LAB_PEER, 0))).context("listening on 127.66.0.1")?;
    let port = listener.local_addr()?.port();
    serve_once(listener);
    let probe = work.join(PROBE_NAME);
    fs::copy("/usr/bin/curl", &probe)?;
    let mut curl = Command::new(&probe)
        .args([
            "-s",
            "-m",
            "5",
            "-o",
            "/dev/null",
            &format!("http://{LAB_PEER}:{port}/"),
        ])
        .spawn()
        .context("starting the probe")?;
    let probe_pid = curl.id();
    let deadline = Instant::now() + Duration::from_secs(10);
    let alert = loop {
        let text = fs::read_to_string(&out_path).unwrap_or_default();
        let found = text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|a| get(a, "destination.port") == port);
        if let Some(a) = found {
            break a;
        }
        if Instant::now() > deadline {
            let _ = curl.kill();
            bail!(
                "no alert for {LAB_PEER}:{port} within 10 s; stdout:\n{text}\nstderr:\n{}",
                logs()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = curl.wait();
    let probe_path = probe.canonicalize()?;
    let expect = [
        ("event.kind", json!("alert")),
        ("rule.id", json!("TORSENSOR-003")),
        ("network.direction", json!("egress")),
        ("destination.ip", json!(LAB_PEER.to_string())),
        ("process.pid", json!(probe_pid)),
        ("process.name", json!(PROBE_NAME)),
        ("process.executable", json!(probe_path.to_string_lossy())),
        ("user.name", json!("root")),
        ("host.name", json!(NODE_NAME)),
    ];
    for (field, want) in &expect {
        if get(&alert, field) != want {
            bail!(
                "alert field {field} is {}, expected {want}:\n{alert:#}",
                get(&alert, field)
            );
        }
    }
    eprintln!(
        "xtask: alert names the host process {PROBE_NAME} (pid {probe_pid}) and host.name {NODE_NAME}: ok"
    );

    // Stop as the kubelet does (SIGTERM, then the grace period).
    let t_stop = Instant::now();
    run(Command::new("podman")
        .args(["stop", "--time", &grace.to_string(), &name])
        .stdout(Stdio::null()))?;
    let status = wait_for(
        cleanup.children.last_mut().expect("pushed"),
        Duration::from_secs(grace + 10),
    )?;
    let stop_secs = t_stop.elapsed().as_secs_f64();
    match status {
        Some(s) if s.success() => {}
        other => bail!(
            "the container did not exit 0 after podman stop: {other:?}\n{}",
            logs()
        ),
    }
    if !logs().contains("stopping: detaching probes") {
        bail!("no clean shutdown in the log:\n{}", logs());
    }
    // Every stdout line is an alert: logs never mix with them.
    let stdout = fs::read_to_string(&out_path)?;
    if let Some(bad) = stdout
        .lines()
        .find(|l| serde_json::from_str::<Value>(l).is_err())
    {
        bail!("stdout has a line that is not a JSON alert: {bad:?}");
    }
    // The kernel frees detached tracing programs after an RCU grace period.
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let (progs, links) = left_over(&ids)?;
        if progs.is_empty() && links.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "3 s after exit, programs {progs:?} and links to {links:?} of the sensor are still in the kernel"
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "xtask: exit 0 {stop_secs:.1} s after podman stop; none of its {} programs ({}) left: ok",
        ids.len(),
        ours.values().cloned().collect::<Vec<_>>().join(", ")
    );
    drop(cleanup);
    let _ = fs::remove_dir_all(&work);
    println!(
        "container-test: passed in {:.1} s (image build {build_secs:.1} s, armed {arm_secs:.1} s after podman run, stopped in {stop_secs:.1} s)",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
