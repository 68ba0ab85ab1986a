//! Cgroup paths and the text of `/proc/<pid>/cgroup` and `/proc/mounts`,
//! which name containers and pods.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sensor_daemon::enrich::container::{
    cgroup2_mount, from_proc_cgroup, has_cgroup_v1, parse_cgroup_path, unified_path,
};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    for info in [parse_cgroup_path(&text), from_proc_cgroup(&text)]
        .into_iter()
        .flatten()
    {
        assert!(
            info.id.len() == 64
                && info
                    .id
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
            "a container id is 64 lower-case hex digits: {:?}",
            info.id
        );
        assert_eq!(info.pod_uid.is_some(), info.qos.is_some());
    }
    let _ = unified_path(&text);
    let _ = cgroup2_mount(&text);
    let _ = has_cgroup_v1(&text);
});
