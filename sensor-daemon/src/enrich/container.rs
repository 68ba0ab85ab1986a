//! Container and Kubernetes pod attribution from cgroup v2 paths.
//!
//! Container runtimes name the cgroup of each container after its id, and the
//! kubelet names the pod's cgroup after the pod UID and its QoS class:
//!
//! | driver / runtime | cgroup path (v2) |
//! |---|---|
//! | systemd, containerd | `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_with_underscores>.slice/cri-containerd-<id>.scope` |
//! | systemd, CRI-O | `.../kubepods-pod<uid>.slice/crio-<id>.scope` (guaranteed pods have no QoS slice) |
//! | systemd, Docker / Podman | `/system.slice/docker-<id>.scope`, `/machine.slice/libpod-<id>.scope`, rootless `/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-<id>.scope` |
//! | cgroupfs | `/kubepods/besteffort/pod<uid>/<id>`, `/kubepods/pod<uid>/<id>`, `/docker/<id>` |
//!
//! `crio-conmon-<id>.scope` and `libpod-conmon-<id>.scope` hold the runtime's
//! monitor process, not the container: they are not attributed. Anything may
//! sit above these components (kind nodes use `/kubelet.slice/...`, a test
//! its own directory) or below the container's (a runtime's `container`
//! sub-cgroup, systemd's `init.scope` inside a container): the innermost
//! container component wins.
//!
//! The kernel reports each event's cgroup id, which is the inode number of the
//! cgroup's directory on a cgroup2 mount. [`ContainerCache::lookup`] reads
//! `/proc/<pid>/cgroup`, checks the path against that id, and falls back to
//! [`path_for_cgroup_id`] (a bounded walk of the cgroup2 mount) when the
//! process has exited or moved.
//!
//! Paths are as seen from the sensor's cgroup namespace: run the sensor in the
//! host's cgroup namespace (a DaemonSet with host PID does not imply it).

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The container runtime that named a cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    Containerd,
    #[serde(rename = "cri-o")]
    CriO,
    Docker,
    Podman,
}

impl Runtime {
    /// ECS `container.runtime` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Runtime::Containerd => "containerd",
            Runtime::CriO => "cri-o",
            Runtime::Docker => "docker",
            Runtime::Podman => "podman",
        }
    }
}

/// Kubernetes pod QoS class, from the pod's cgroup parent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Qos {
    Guaranteed,
    Burstable,
    BestEffort,
}

impl Qos {
    /// Lower-case name, as the kubelet writes it in cgroup names.
    pub fn as_str(self) -> &'static str {
        match self {
            Qos::Guaranteed => "guaranteed",
            Qos::Burstable => "burstable",
            Qos::BestEffort => "besteffort",
        }
    }
}

/// A container, as far as its cgroup path tells.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerInfo {
    /// Full 64-hex-digit container id, lower case.
    pub id: String,
    /// `None` when the path names the container but not the runtime (a bare
    /// id under the cgroupfs driver outside `/docker`).
    pub runtime: Option<Runtime>,
    /// Pod UID with dashes (the systemd driver writes underscores).
    pub pod_uid: Option<String>,
    /// Set whenever `pod_uid` is.
    pub qos: Option<Qos>,
    /// The cgroup path the answer came from (relative to the cgroup2 root).
    pub cgroup_path: String,
    /// Pod namespace and name, and the container's name, from the kubelet's
    /// log directories ([`super::kubelet`]); `None` off Kubernetes.
    pub pod_namespace: Option<String>,
    pub pod_name: Option<String>,
    pub name: Option<String>,
}

fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A pod UID: a UUID (36 characters with dashes) or, for static pods, a
/// 32-hex-digit hash.
fn is_pod_uid(s: &str) -> bool {
    let hex = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_hexdigit());
    match s.len() {
        32 => hex(s),
        36 => {
            let parts: Vec<&str> = s.split('-').collect();
            parts.len() == 5
                && parts.iter().map(|p| p.len()).eq([8, 4, 4, 4, 12])
                && parts.iter().all(|p| hex(p))
        }
        _ => false,
    }
}

/// The container named by one path component, if it names one.
fn container_component(component: &str, parent: Option<&str>) -> Option<(String, Option<Runtime>)> {
    let name = component.strip_suffix(".scope").unwrap_or(component);
    const PREFIXES: &[(&str, Runtime)] = &[
        ("cri-containerd-", Runtime::Containerd),
        ("nerdctl-", Runtime::Containerd),
        ("crio-", Runtime::CriO),
        ("docker-", Runtime::Docker),
        ("libpod-", Runtime::Podman),
    ];
    for (prefix, runtime) in PREFIXES {
        if let Some(id) = name.strip_prefix(prefix) {
            // `crio-conmon-<id>` / `libpod-conmon-<id>` fail here: the
            // monitor is not the container.
            return is_container_id(id).then(|| (id.to_ascii_lowercase(), Some(*runtime)));
        }
    }
    if is_container_id(name) && name.len() == component.len() {
        let runtime = match parent {
            Some("docker") => Some(Runtime::Docker),
            _ => None,
        };
        return Some((name.to_ascii_lowercase(), runtime));
    }
    None
}

/// Pod UID and QoS from one path component, if it is a pod's cgroup.
fn pod_component(component: &str, parent: Option<&str>) -> Option<(String, Qos)> {
    if let Some(slice) = component.strip_suffix(".slice") {
        // systemd driver: `[prefix-]kubepods[-<qos>]-pod<uid_underscored>`.
        let words: Vec<&str> = slice.split('-').collect();
        let k = words.iter().position(|w| *w == "kubepods")?;
        let (qos, pod) = match &words[k + 1..] {
            [pod] => (Qos::Guaranteed, *pod),
            ["burstable", pod] => (Qos::Burstable, *pod),
            ["besteffort", pod] => (Qos::BestEffort, *pod),
            _ => return None,
        };
        let uid = pod.strip_prefix("pod")?.replace('_', "-");
        return is_pod_uid(&uid).then_some((uid, qos));
    }
    // cgroupfs driver: `/kubepods/[<qos>/]pod<uid>`.
    let uid = component.strip_prefix("pod")?;
    let qos = match parent? {
        "kubepods" => Qos::Guaranteed,
        "burstable" => Qos::Burstable,
        "besteffort" => Qos::BestEffort,
        _ => return None,
    };
    is_pod_uid(uid).then(|| (uid.to_owned(), qos))
}

/// Parses a cgroup path (e.g. the part after `0::` in `/proc/<pid>/cgroup`).
/// `None` when no component names a container.
pub fn parse_cgroup_path(path: &str) -> Option<ContainerInfo> {
    let components: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    let parent = |i: usize| i.checked_sub(1).map(|p| components[p]);
    let (index, (id, runtime)) = components
        .iter()
        .enumerate()
        .rev()
        .find_map(|(i, c)| container_component(c, parent(i)).map(|found| (i, found)))?;
    // The pod is an ancestor of the container (the nearest one that is a pod).
    let pod = components[..index]
        .iter()
        .enumerate()
        .rev()
        .find_map(|(i, c)| pod_component(c, parent(i)));
    Some(ContainerInfo {
        id,
        runtime,
        pod_uid: pod.as_ref().map(|(uid, _)| uid.clone()),
        qos: pod.map(|(_, qos)| qos),
        cgroup_path: path.to_owned(),
        pod_namespace: None,
        pod_name: None,
        name: None,
    })
}

/// The cgroup v2 path in the text of `/proc/<pid>/cgroup` (the `0::` line).
pub fn unified_path(proc_cgroup: &str) -> Option<&str> {
    proc_cgroup.lines().find_map(|l| l.strip_prefix("0::"))
}

/// The container of the process whose `/proc/<pid>/cgroup` reads
/// `proc_cgroup`: from the cgroup v2 line, else (hybrid hosts whose runtime
/// only uses cgroup v1, e.g. Docker with the cgroupfs driver) from the first
/// v1 line that names a container.
pub fn from_proc_cgroup(proc_cgroup: &str) -> Option<ContainerInfo> {
    unified_path(proc_cgroup)
        .and_then(parse_cgroup_path)
        .or_else(|| from_v1_lines(proc_cgroup))
}

/// The container named by a cgroup v1 line of `/proc/<pid>/cgroup` text.
fn from_v1_lines(proc_cgroup: &str) -> Option<ContainerInfo> {
    proc_cgroup
        .lines()
        .filter(|l| !l.starts_with("0::"))
        .filter_map(|l| l.splitn(3, ':').nth(2))
        .find_map(parse_cgroup_path)
}

/// Whether `/proc/mounts` text shows a cgroup v1 hierarchy (a hybrid or
/// legacy host).
pub fn has_cgroup_v1(proc_mounts: &str) -> bool {
    proc_mounts
        .lines()
        .any(|l| l.split_whitespace().nth(2) == Some("cgroup"))
}

/// Where cgroup2 is mounted, from the text of `/proc/mounts` (first match;
/// every cgroup2 mount shows the same hierarchy).
pub fn cgroup2_mount(proc_mounts: &str) -> Option<PathBuf> {
    proc_mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let _source = fields.next()?;
        let dir = fields.next()?;
        (fields.next()? == "cgroup2").then(|| PathBuf::from(unescape_mount_path(dir)))
    })
}

/// `/proc/mounts` writes space, tab, newline and backslash as octal escapes
/// (`\040`); anything else, `\777` (not a byte) included, stays as it is.
fn unescape_mount_path(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'\\')
            .then(|| bytes.get(i + 1..i + 4))
            .flatten()
            .filter(|digits| digits.iter().all(|b| (b'0'..=b'7').contains(b)))
            .and_then(|digits| {
                let v = digits.iter().fold(0u32, |v, d| v * 8 + u32::from(d - b'0'));
                u8::try_from(v).ok()
            });
        if let Some(v) = escaped {
            out.push(v);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The host's cgroup2 mount point, from `/proc/self/mounts`.
pub fn host_cgroup2_mount() -> Option<PathBuf> {
    cgroup2_mount(&fs::read_to_string("/proc/self/mounts").ok()?)
}

/// The cgroup id the kernel reports for the cgroup at `path` (relative to the
/// cgroup2 mount `root`): the directory's inode number.
pub fn cgroup_id_of(root: &Path, path: &str) -> io::Result<u64> {
    Ok(fs::metadata(root.join(path.trim_start_matches('/')))?.ino())
}

/// The cgroup path (`/a/b`, relative to the cgroup2 mount `root`) whose id is
/// `id`, found by a breadth-first walk of at most `max_dirs` directories.
/// `None` when not found within the bound (the cgroup may be gone).
pub fn path_for_cgroup_id(root: &Path, id: u64, max_dirs: usize) -> Option<String> {
    let mut found = None;
    walk_cgroups(root, max_dirs, |path, ino| {
        if ino == id {
            found = Some(path.to_owned());
        }
        found.is_none()
    });
    found
}

/// The cgroups (paths relative to `root`) of the running containers whose
/// id starts with `id_prefix`, found by a walk of at most `max_dirs`
/// directories: what a block rule's `container_id` scopes to.
pub fn container_cgroups(root: &Path, id_prefix: &str, max_dirs: usize) -> Vec<String> {
    let mut out = Vec::new();
    walk_cgroups(root, max_dirs, |path, _| {
        if parse_cgroup_path(path).is_some_and(|c| c.id.starts_with(id_prefix))
            // The container's own cgroup, not the ones it nests.
            && !out.iter().any(|p: &String| path.starts_with(&format!("{p}/")))
        {
            out.push(path.to_owned());
        }
        true
    });
    out
}

/// Visits the cgroup tree under `root` breadth first (`/`, then `/a`,
/// `/b`, `/a/c`...), at most `max_dirs` directories, handing each path and
/// its inode (the cgroup id) to `visit` until it returns false. Links are
/// not followed.
fn walk_cgroups(root: &Path, max_dirs: usize, mut visit: impl FnMut(&str, u64) -> bool) {
    let mut queue = std::collections::VecDeque::from([String::new()]);
    let mut visited = 0;
    while let Some(rel) = queue.pop_front() {
        visited += 1;
        if visited > max_dirs {
            return;
        }
        let dir = root.join(&rel);
        let Ok(meta) = fs::symlink_metadata(&dir) else {
            continue;
        };
        let path = if rel.is_empty() {
            "/".to_owned()
        } else {
            format!("/{rel}")
        };
        if !visit(&path, meta.ino()) {
            return;
        }
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                let name = entry.file_name().to_string_lossy().into_owned();
                queue.push_back(if rel.is_empty() {
                    name
                } else {
                    format!("{rel}/{name}")
                });
            }
        }
    }
}

/// Container lookups cached by cgroup id (negative answers included: a
/// cgroup's path does not change, and on 64-bit kernels its id is never
/// reused). Bounded: the cache is cleared when it reaches `capacity`.
pub struct ContainerCache {
    proc_root: PathBuf,
    cgroup_root: Option<PathBuf>,
    capacity: usize,
    max_walk: usize,
    v1_fallback: bool,
    by_cgroup: HashMap<u64, Option<ContainerInfo>>,
    /// The cgroup v2 path of each id in `by_cgroup`, container or not.
    paths: HashMap<u64, String>,
}

impl ContainerCache {
    /// `cgroup_root` is the cgroup2 mount (`None`: trust `/proc` alone and
    /// cache nothing, since a path cannot be checked against an id).
    pub fn new(
        proc_root: &Path,
        cgroup_root: Option<&Path>,
        capacity: usize,
        max_walk: usize,
    ) -> Self {
        ContainerCache {
            proc_root: proc_root.to_owned(),
            cgroup_root: cgroup_root.map(Path::to_owned),
            capacity,
            max_walk,
            v1_fallback: false,
            by_cgroup: HashMap::new(),
            paths: HashMap::new(),
        }
    }

    /// Also look at the cgroup v1 lines of `/proc/<pid>/cgroup` when the v2
    /// cgroup names no container. Needed on hybrid hosts whose runtime only
    /// uses v1 (e.g. Docker with the cgroupfs driver): there many containers
    /// share one v2 cgroup, so a v1 answer is per process and never cached,
    /// and a cached "no container" costs one `/proc` read per lookup.
    pub fn with_v1_fallback(mut self, on: bool) -> Self {
        self.v1_fallback = on;
        self
    }

    fn v1_only(&self, pid: u32) -> Option<ContainerInfo> {
        if !self.v1_fallback {
            return None;
        }
        let text = fs::read_to_string(self.proc_root.join(pid.to_string()).join("cgroup")).ok()?;
        from_v1_lines(&text)
    }

    /// `/proc`, the cgroup2 mount found in `/proc/self/mounts`, 4096 entries,
    /// walks of at most 20,000 directories, and the v1 fallback when cgroup v1
    /// hierarchies are mounted.
    pub fn host() -> Self {
        let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        Self::new(
            Path::new("/proc"),
            cgroup2_mount(&mounts).as_deref(),
            4096,
            20_000,
        )
        .with_v1_fallback(has_cgroup_v1(&mounts))
    }

    pub fn cgroup_root(&self) -> Option<&Path> {
        self.cgroup_root.as_deref()
    }

    /// The container of process `pid`, whose event the kernel stamped with
    /// `cgroup_id` (0 when unknown).
    pub fn lookup(&mut self, pid: u32, cgroup_id: u64) -> Option<ContainerInfo> {
        if cgroup_id != 0
            && let Some(cached) = self.by_cgroup.get(&cgroup_id)
        {
            return cached.clone().or_else(|| self.v1_only(pid));
        }
        let proc_cgroup =
            fs::read_to_string(self.proc_root.join(pid.to_string()).join("cgroup")).ok();
        let root = match &self.cgroup_root {
            Some(root) if cgroup_id != 0 => root.clone(),
            // Nothing to check the path against: trust /proc, cache nothing.
            _ => return proc_cgroup.as_deref().and_then(from_proc_cgroup),
        };
        // Trust /proc only if the process is still in the event's cgroup.
        let from_proc = proc_cgroup
            .as_deref()
            .and_then(unified_path)
            .filter(|path| cgroup_id_of(&root, path).is_ok_and(|ino| ino == cgroup_id))
            .map(str::to_owned);
        let path = from_proc.or_else(|| path_for_cgroup_id(&root, cgroup_id, self.max_walk));
        let v1 = || {
            proc_cgroup
                .as_deref()
                .filter(|_| self.v1_fallback)
                .and_then(from_v1_lines)
        };
        let Some(path) = path else {
            // Gone or beyond the walk bound: cache nothing.
            return v1();
        };
        let info = parse_cgroup_path(&path);
        if self.by_cgroup.len() >= self.capacity {
            self.by_cgroup.clear();
            self.paths.clear();
        }
        self.by_cgroup.insert(cgroup_id, info.clone());
        self.paths.insert(cgroup_id, path);
        info.or_else(v1)
    }

    /// The cgroup v2 path (`/system.slice/x.service`) of a cgroup id an
    /// earlier [`ContainerCache::lookup`] resolved.
    pub fn path_of(&self, cgroup_id: u64) -> Option<&str> {
        self.paths.get(&cgroup_id).map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.by_cgroup.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_cgroup.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4c8d2a1f0b9e7d6c5b4a39281706f5e4d3c2b1a0998877665544332211aabbcc";
    const UID: &str = "0d5b2f3e-7a1c-4e8b-9f60-1a2b3c4d5e6f";
    const UID_: &str = "0d5b2f3e_7a1c_4e8b_9f60_1a2b3c4d5e6f";

    fn parse(path: &str) -> ContainerInfo {
        parse_cgroup_path(path).unwrap_or_else(|| panic!("no container in {path}"))
    }

    fn check(path: &str, runtime: Option<Runtime>, pod: Option<(&str, Qos)>) {
        let got = parse(path);
        assert_eq!(got.id, ID, "{path}");
        assert_eq!(got.runtime, runtime, "{path}");
        assert_eq!(got.pod_uid.as_deref(), pod.map(|p| p.0), "{path}");
        assert_eq!(got.qos, pod.map(|p| p.1), "{path}");
        assert_eq!(got.cgroup_path, path);
    }

    #[test]
    fn systemd_driver_kubernetes_paths() {
        use Qos::*;
        use Runtime::*;
        let cases = [
            (
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{ID}.scope"
                ),
                Containerd,
                Burstable,
            ),
            (
                format!(
                    "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/crio-{ID}.scope"
                ),
                CriO,
                BestEffort,
            ),
            (
                format!("/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{ID}.scope"),
                Containerd,
                Guaranteed,
            ),
            (
                format!("/kubepods.slice/kubepods-pod{UID_}.slice/crio-{ID}.scope"),
                CriO,
                Guaranteed,
            ),
            // cri-dockerd (Docker as the Kubernetes runtime).
            (
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/docker-{ID}.scope"
                ),
                Docker,
                Burstable,
            ),
            // kind / kubelet with a cgroup root of /kubelet.
            (
                format!(
                    "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{UID_}.slice/cri-containerd-{ID}.scope"
                ),
                Containerd,
                BestEffort,
            ),
            // A sub-cgroup below the container's (crun's `container`, systemd in a container).
            (
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/crio-{ID}.scope/container"
                ),
                CriO,
                Burstable,
            ),
            (
                format!(
                    "/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{ID}.scope/init.scope"
                ),
                Containerd,
                Guaranteed,
            ),
        ];
        for (path, runtime, qos) in &cases {
            check(path, Some(*runtime), Some((UID, *qos)));
        }
    }

    #[test]
    fn cgroupfs_driver_paths() {
        check(
            &format!("/kubepods/besteffort/pod{UID}/{ID}"),
            None,
            Some((UID, Qos::BestEffort)),
        );
        check(
            &format!("/kubepods/burstable/pod{UID}/{ID}"),
            None,
            Some((UID, Qos::Burstable)),
        );
        check(
            &format!("/kubepods/pod{UID}/{ID}"),
            None,
            Some((UID, Qos::Guaranteed)),
        );
        // CRI-O keeps its prefix under cgroupfs.
        check(
            &format!("/kubepods/burstable/pod{UID}/crio-{ID}"),
            Some(Runtime::CriO),
            Some((UID, Qos::Burstable)),
        );
        check(&format!("/docker/{ID}"), Some(Runtime::Docker), None);
        check(
            &format!("/libpod_parent/libpod-{ID}"),
            Some(Runtime::Podman),
            None,
        );
        // nerdctl under cgroupfs: the containerd namespace, then the id.
        check(&format!("/default/{ID}"), None, None);
    }

    #[test]
    fn docker_and_podman_outside_kubernetes() {
        check(
            &format!("/system.slice/docker-{ID}.scope"),
            Some(Runtime::Docker),
            None,
        );
        check(
            &format!("/machine.slice/libpod-{ID}.scope"),
            Some(Runtime::Podman),
            None,
        );
        check(
            &format!("/machine.slice/libpod-{ID}.scope/container"),
            Some(Runtime::Podman),
            None,
        );
        check(
            &format!("/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope"),
            Some(Runtime::Podman),
            None,
        );
        check(
            &format!("/user.slice/user-1000.slice/user@1000.service/app.slice/docker-{ID}.scope"),
            Some(Runtime::Docker),
            None,
        );
        check(
            &format!("/system.slice/nerdctl-{ID}.scope"),
            Some(Runtime::Containerd),
            None,
        );
    }

    #[test]
    fn upper_case_ids_are_normalised() {
        let got = parse(&format!(
            "/system.slice/docker-{}.scope",
            ID.to_ascii_uppercase()
        ));
        assert_eq!(got.id, ID);
    }

    #[test]
    fn static_pod_uids_are_32_hex_digits() {
        let hash = "6f1b0b4e0c7b1f2b3a4c5d6e7f809112";
        let got = parse(&format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{hash}.slice/cri-containerd-{ID}.scope"
        ));
        assert_eq!(got.pod_uid.as_deref(), Some(hash));
        let got = parse(&format!("/kubepods/burstable/pod{hash}/{ID}"));
        assert_eq!(got.pod_uid.as_deref(), Some(hash));
    }

    #[test]
    fn no_container() {
        let none = [
            "/".to_owned(),
            "".to_owned(),
            "/init.scope".to_owned(),
            "/system.slice/sshd.service".to_owned(),
            "/system.slice/docker.service".to_owned(),
            "/system.slice/containerd.service".to_owned(),
            "/user.slice/user-1000.slice/session-3.scope".to_owned(),
            "/user.slice/user-1000.slice/user@1000.service/app.slice/app-gnome-firefox-1234.scope"
                .to_owned(),
            // The runtime monitors, not the containers.
            format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/crio-conmon-{ID}.scope"
            ),
            format!("/machine.slice/libpod-conmon-{ID}.scope"),
            // A pod slice alone (e.g. the kubelet's own bookkeeping).
            format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice"),
            "/kubepods.slice/kubepods-burstable.slice".to_owned(),
            // Ids of the wrong length or with non-hex digits.
            format!("/system.slice/docker-{}.scope", &ID[..63]),
            format!("/system.slice/docker-{}0.scope", ID),
            format!("/system.slice/docker-{}g.scope", &ID[..63]),
            format!("/docker/{}", &ID[..12]),
            format!("/system.slice/{ID}.service"),
        ];
        for path in &none {
            assert_eq!(parse_cgroup_path(path), None, "{path}");
        }
    }

    #[test]
    fn malformed_pod_components_give_no_pod() {
        let got = parse(&format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-podnotauid.slice/cri-containerd-{ID}.scope"
        ));
        assert_eq!((got.pod_uid, got.qos), (None, None));
        let got = parse(&format!("/kubepods/weird/pod{UID}/{ID}"));
        assert_eq!((got.pod_uid, got.qos), (None, None));
        let got = parse(&format!(
            "/kubepods.slice/kubepods-odd-pod{UID_}.slice/crio-{ID}.scope"
        ));
        assert_eq!((got.pod_uid, got.qos), (None, None));
    }

    #[test]
    fn proc_cgroup_text() {
        let hybrid = format!(
            "12:memory:/\n1:name=systemd:/system.slice/docker-{ID}.scope\n0::/system.slice/docker-{ID}.scope\n"
        );
        let got = from_proc_cgroup(&hybrid).unwrap();
        assert_eq!(got.runtime, Some(Runtime::Docker));
        assert_eq!(
            unified_path(&hybrid),
            Some(format!("/system.slice/docker-{ID}.scope").as_str())
        );
        // Docker (cgroupfs) on a hybrid host: containers only in v1.
        let v1_only = format!("4:memory:/docker/{ID}\n1:name=systemd:/docker/{ID}\n0::/\n");
        assert_eq!(
            from_proc_cgroup(&v1_only).unwrap().cgroup_path,
            format!("/docker/{ID}")
        );
        assert_eq!(from_proc_cgroup("0::/init.scope\n"), None);
        assert_eq!(from_proc_cgroup(""), None);
    }

    #[test]
    fn finds_cgroup2_in_mounts() {
        let hybrid = "tmpfs /sys/fs/cgroup tmpfs rw 0 0\ncgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\ncgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n";
        assert_eq!(
            cgroup2_mount(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let modern = "cgroup2 /sys/fs/cgroup cgroup2 rw,nsdelegate 0 0\n";
        assert_eq!(cgroup2_mount(modern), Some(PathBuf::from("/sys/fs/cgroup")));
        let escaped = "none /tmp/my\\040cg cgroup2 rw 0 0\n";
        assert_eq!(cgroup2_mount(escaped), Some(PathBuf::from("/tmp/my cg")));
        assert_eq!(cgroup2_mount("proc /proc proc rw 0 0\n"), None);
    }

    /// Found by the `cgroup` fuzz target: `\777` overflowed a u8 (a panic
    /// with overflow checks on, a wrong byte without).
    #[test]
    fn octal_escapes_past_a_byte_stay_as_written() {
        let mounts = "none /tmp/a\\777b\\400\\040c\\12 cgroup2 rw 0 0\n";
        assert_eq!(
            cgroup2_mount(mounts),
            Some(PathBuf::from("/tmp/a\\777b\\400 c\\12"))
        );
        assert_eq!(unescape_mount_path("\\377\\000x\\"), "\u{fffd}\0x\\");
    }

    #[test]
    fn walks_a_directory_tree_for_an_inode() {
        // Any directory tree works the same as a cgroup2 mount here.
        let root = std::env::temp_dir().join(format!("ts-cgwalk-{}", std::process::id()));
        let deep = root.join("a.slice/b.slice/c.scope");
        fs::create_dir_all(&deep).unwrap();
        fs::create_dir_all(root.join("x/y")).unwrap();
        let ino = fs::metadata(&deep).unwrap().ino();
        assert_eq!(
            cgroup_id_of(&root, "/a.slice/b.slice/c.scope").unwrap(),
            ino
        );
        assert_eq!(
            path_for_cgroup_id(&root, ino, 100).as_deref(),
            Some("/a.slice/b.slice/c.scope")
        );
        let root_ino = fs::metadata(&root).unwrap().ino();
        assert_eq!(
            path_for_cgroup_id(&root, root_ino, 100).as_deref(),
            Some("/")
        );
        // Bounded: too few directories allowed to reach it.
        assert_eq!(path_for_cgroup_id(&root, ino, 3), None);
        assert_eq!(path_for_cgroup_id(&root, u64::MAX, 100), None);
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn cache_answers_from_proc_and_bounds_itself() {
        // A fake /proc whose pid 7 sits in a container cgroup of a fake
        // cgroup2 tree; ids are the fake tree's inode numbers.
        let base = std::env::temp_dir().join(format!("ts-cgcache-{}", std::process::id()));
        let proc_root = base.join("proc");
        let cg_root = base.join("cg");
        let rel = format!("system.slice/docker-{ID}.scope");
        fs::create_dir_all(cg_root.join(&rel)).unwrap();
        fs::create_dir_all(proc_root.join("7")).unwrap();
        fs::write(proc_root.join("7/cgroup"), format!("0::/{rel}\n")).unwrap();
        let id = cgroup_id_of(&cg_root, &rel).unwrap();

        let mut cache = ContainerCache::new(&proc_root, Some(&cg_root), 2, 1000);
        let got = cache.lookup(7, id).unwrap();
        assert_eq!((got.id.as_str(), got.runtime), (ID, Some(Runtime::Docker)));
        assert_eq!(cache.len(), 1);
        // The process is gone: the cached answer for its cgroup id remains.
        fs::remove_file(proc_root.join("7/cgroup")).unwrap();
        assert_eq!(cache.lookup(7, id).unwrap().id, ID);
        // Gone and not cached: found by walking the tree.
        let mut fresh = ContainerCache::new(&proc_root, Some(&cg_root), 2, 1000);
        assert_eq!(fresh.lookup(7, id).unwrap().cgroup_path, format!("/{rel}"));
        // A cgroup that is no container is cached as such; the cache stays bounded.
        for dir in [
            "system.slice/a.service",
            "system.slice/b.service",
            "system.slice/c.service",
        ] {
            fs::create_dir_all(cg_root.join(dir)).unwrap();
            let id = cgroup_id_of(&cg_root, dir).unwrap();
            assert_eq!(cache.lookup(999_999, id), None);
            assert!(cache.len() <= 2);
        }
        // Unknown id, nothing in /proc: no answer, nothing cached.
        let before = cache.len();
        assert_eq!(cache.lookup(999_999, u64::MAX), None);
        assert_eq!(cache.len(), before);
        // Without a cgroup id (or mount) /proc is read each time.
        fs::write(proc_root.join("7/cgroup"), format!("0::/{rel}\n")).unwrap();
        assert_eq!(cache.lookup(7, 0).unwrap().id, ID);
        let mut no_mount = ContainerCache::new(&proc_root, None, 2, 1000);
        assert_eq!(no_mount.lookup(7, id).unwrap().id, ID);
        assert!(no_mount.is_empty());
        fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn v1_only_containers_on_a_hybrid_host() {
        // Docker with the cgroupfs driver on a hybrid host: the container is
        // only in the v1 hierarchies; its v2 cgroup is shared with others.
        let base = std::env::temp_dir().join(format!("ts-cgv1-{}", std::process::id()));
        let proc_root = base.join("proc");
        let cg_root = base.join("cg");
        fs::create_dir_all(cg_root.join("system.slice/docker.service")).unwrap();
        for (pid, v1) in [(7, format!("/docker/{ID}")), (8, "/".to_owned())] {
            fs::create_dir_all(proc_root.join(pid.to_string())).unwrap();
            fs::write(
                proc_root.join(format!("{pid}/cgroup")),
                format!("4:memory:{v1}\n1:name=systemd:{v1}\n0::/system.slice/docker.service\n"),
            )
            .unwrap();
        }
        let shared = cgroup_id_of(&cg_root, "system.slice/docker.service").unwrap();
        let mut cache =
            ContainerCache::new(&proc_root, Some(&cg_root), 8, 100).with_v1_fallback(true);
        assert_eq!(cache.lookup(8, shared), None);
        // The shared v2 cgroup is cached as "no container", yet pid 7 is one.
        let got = cache.lookup(7, shared).unwrap();
        assert_eq!((got.id.as_str(), got.runtime), (ID, Some(Runtime::Docker)));
        assert_eq!(cache.lookup(8, shared), None);
        // Without the fallback the v1 lines are ignored.
        let mut v2_only = ContainerCache::new(&proc_root, Some(&cg_root), 8, 100);
        assert_eq!(v2_only.lookup(7, shared), None);
        assert!(has_cgroup_v1(
            "cgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\n"
        ));
        assert!(!has_cgroup_v1("cgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n"));
        fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn as_str_values() {
        assert_eq!(Runtime::CriO.as_str(), "cri-o");
        assert_eq!(Runtime::Containerd.as_str(), "containerd");
        assert_eq!(Qos::BestEffort.as_str(), "besteffort");
        assert_eq!(Qos::Guaranteed.as_str(), "guaranteed");
    }
}
