//! Container attribution against real cgroups: a real process is moved into
//! cgroup v2 directories named the way Kubernetes runtimes name them, and the
//! sensor's lookup must find the container, runtime, pod and QoS, both from
//! `/proc/<pid>/cgroup` and from the kernel's cgroup id alone.

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use common::cgroups::Cgroups;
use sensor_daemon::enrich::container::{self, ContainerCache, Qos, Runtime};

const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const UID: &str = "9b2f61c4-3d5e-4a7b-8c9d-0e1f2a3b4c5d";

/// The kernel's own id for a cgroup directory: its file handle, as
/// `name_to_handle_at(2)` gives it (a u64 on kernfs). Independent of stat.
fn kernel_cgroup_id(dir: &Path) -> u64 {
    #[repr(C)]
    struct Handle {
        handle_bytes: u32,
        handle_type: i32,
        f_handle: [u8; 8],
    }
    let mut h = Handle {
        handle_bytes: 8,
        handle_type: 0,
        f_handle: [0; 8],
    };
    let mut mount_id: libc::c_int = 0;
    let path = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: valid path, handle buffer with room for 8 bytes, and mount id.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_name_to_handle_at,
            libc::AT_FDCWD,
            path.as_ptr(),
            &raw mut h,
            &raw mut mount_id,
            0,
        )
    };
    assert_eq!(
        rc,
        0,
        "name_to_handle_at {}: {}",
        dir.display(),
        std::io::Error::last_os_error()
    );
    assert_eq!(h.handle_bytes, 8);
    u64::from_ne_bytes(h.f_handle)
}

fn proc_unified_path(pid: u32) -> String {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    container::unified_path(&text).unwrap().to_owned()
}

/// Checks one container cgroup: from /proc, from the id alone, after exit.
fn check_container(
    tag: &str,
    own_mount: bool,
    rel: &str,
    runtime: Option<Runtime>,
    pod: Option<(&str, Qos)>,
) {
    let mut cg = Cgroups::new(tag, own_mount);
    let path = cg.create(rel);
    let pid = cg.spawn_in(&path);
    let dir = cg.root.join(&path[1..]);

    // The process really is there, as the kernel sees it.
    let seen = proc_unified_path(pid);
    assert!(
        seen.ends_with(&path),
        "/proc/{pid}/cgroup says {seen}, expected {path}"
    );
    // The id the kernel reports for the cgroup is the directory's inode.
    let id = fs::metadata(&dir).unwrap().ino();
    assert_eq!(kernel_cgroup_id(&dir), id, "file handle vs st_ino");
    assert_eq!(container::cgroup_id_of(&cg.root, &seen).unwrap(), id);

    let mut cache = ContainerCache::new(Path::new("/proc"), Some(&cg.root), 64, 100_000);
    let got = cache
        .lookup(pid, id)
        .unwrap_or_else(|| panic!("no container for pid {pid} in {seen}"));
    assert_eq!(got.id, ID);
    assert_eq!(got.runtime, runtime);
    assert_eq!(got.pod_uid.as_deref(), pod.map(|p| p.0));
    assert_eq!(got.qos, pod.map(|p| p.1));
    assert_eq!(got.cgroup_path, seen);

    // From the id alone: the walk finds the same path.
    assert_eq!(
        container::path_for_cgroup_id(&cg.root, id, 100_000).as_deref(),
        Some(seen.as_str())
    );

    // The process exits: a fresh cache still resolves the kernel's id (a
    // recycled pid would be in another cgroup, and the id decides).
    cg.stop_child();
    let mut fresh = ContainerCache::new(Path::new("/proc"), Some(&cg.root), 64, 100_000);
    let after = fresh.lookup(pid, id).expect("resolved from the cgroup id");
    assert_eq!(after, got);
    drop(cg);
    assert!(!dir.exists(), "{} left behind", dir.display());
}

#[test]
fn systemd_driver_pod_cgroup_of_a_real_process() {
    if !common::kernel_tests_allowed("systemd_driver_pod_cgroup_of_a_real_process") {
        return;
    }
    let uid_ = UID.replace('-', "_");
    check_container(
        "systemd",
        false,
        &format!(
            "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/cri-containerd-{ID}.scope"
        ),
        Some(Runtime::Containerd),
        Some((UID, Qos::Burstable)),
    );
}

#[test]
fn cgroupfs_driver_pod_cgroup_of_a_real_process() {
    if !common::kernel_tests_allowed("cgroupfs_driver_pod_cgroup_of_a_real_process") {
        return;
    }
    check_container(
        "cgroupfs",
        false,
        &format!("kubepods/besteffort/pod{UID}/{ID}"),
        None,
        Some((UID, Qos::BestEffort)),
    );
}

#[test]
fn docker_scope_of_a_real_process() {
    if !common::kernel_tests_allowed("docker_scope_of_a_real_process") {
        return;
    }
    check_container(
        "docker",
        false,
        &format!("system.slice/docker-{ID}.scope"),
        Some(Runtime::Docker),
        None,
    );
}

#[test]
fn a_conmon_scope_is_no_container() {
    if !common::kernel_tests_allowed("a_conmon_scope_is_no_container") {
        return;
    }
    let mut cg = Cgroups::new("conmon", false);
    let path = cg.create(&format!("machine.slice/libpod-conmon-{ID}.scope"));
    let pid = cg.spawn_in(&path);
    let id = fs::metadata(cg.root.join(&path[1..])).unwrap().ino();
    let mut cache = ContainerCache::new(Path::new("/proc"), Some(&cg.root), 64, 100_000);
    assert_eq!(cache.lookup(pid, id), None);
    assert_eq!(cache.len(), 1, "the negative answer is cached by id");
}

#[test]
fn on_a_cgroup2_hierarchy_mounted_by_the_test() {
    if !common::kernel_tests_allowed("on_a_cgroup2_hierarchy_mounted_by_the_test") {
        return;
    }
    check_container(
        "ownmount",
        true,
        &format!(
            "kubepods.slice/kubepods-pod{}.slice/crio-{ID}.scope",
            UID.replace('-', "_")
        ),
        Some(Runtime::CriO),
        Some((UID, Qos::Guaranteed)),
    );
}
