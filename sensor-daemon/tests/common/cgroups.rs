//! Real cgroup v2 directories for tests: the host's hierarchy (or one the
//! test mounts), a tree of the test's own, removed on drop.

use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::Duration;

use sensor_daemon::enrich::container;

/// A cgroup2 hierarchy for the test: the host's, or one mounted for it.
/// Everything the test created under it goes away on drop, on failure too.
pub struct Cgroups {
    pub root: PathBuf,
    own_mount: Option<PathBuf>,
    /// Top directory of this test's cgroups, relative to `root`.
    top: String,
    child: Option<Child>,
}

impl Cgroups {
    /// `own_mount`: mount a cgroup2 instance for the test even if the host
    /// has one (it shows the same hierarchy).
    pub fn new(tag: &str, own_mount: bool) -> Cgroups {
        let host = container::host_cgroup2_mount().filter(|_| !own_mount);
        let (root, own_mount) = match host {
            Some(root) => (root, None),
            None => {
                let dir = std::env::temp_dir().join(format!("ts-cg2-{}-{tag}", std::process::id()));
                fs::create_dir_all(&dir).unwrap();
                let st = Command::new("mount")
                    .args(["-t", "cgroup2", "none"])
                    .arg(&dir)
                    .status()
                    .expect("run mount");
                assert!(st.success(), "mount -t cgroup2 none {}", dir.display());
                (dir.clone(), Some(dir))
            }
        };
        Cgroups {
            root,
            own_mount,
            top: format!("torsensor-test-{}-{tag}", std::process::id()),
            child: None,
        }
    }

    /// Creates `top/rel` and returns its path relative to the hierarchy root.
    pub fn create(&self, rel: &str) -> String {
        let path = format!("/{}/{rel}", self.top);
        fs::create_dir_all(self.root.join(&path[1..]))
            .unwrap_or_else(|e| panic!("mkdir {path} under {}: {e}", self.root.display()));
        path
    }

    /// Starts `sleep 30` and moves it into the cgroup `path`.
    pub fn spawn_in(&mut self, path: &str) -> u32 {
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        self.spawn_cmd_in(path, cmd)
    }

    /// Starts `cmd` and moves it into the cgroup `path` (what it does
    /// before the move happens outside the cgroup: make it wait, e.g. on
    /// its stdin).
    pub fn spawn_cmd_in(&mut self, path: &str, mut cmd: Command) -> u32 {
        let child = cmd.spawn().expect("spawn");
        let pid = child.id();
        self.child = Some(child);
        self.move_to(path, pid);
        pid
    }

    pub fn move_to(&self, path: &str, pid: u32) {
        let procs = self.root.join(&path[1..]).join("cgroup.procs");
        fs::write(&procs, pid.to_string())
            .unwrap_or_else(|e| panic!("write {pid} to {}: {e}", procs.display()));
    }

    pub fn child(&mut self) -> Option<&mut Child> {
        self.child.as_mut()
    }

    pub fn stop_child(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Cgroups {
    fn drop(&mut self) {
        self.stop_child();
        // Remove the tree deepest first; a cgroup can be busy for a moment
        // after its last process is reaped.
        let top = self.root.join(&self.top);
        let mut dirs = Vec::new();
        let mut stack = vec![top.clone()];
        while let Some(d) = stack.pop() {
            if let Ok(entries) = fs::read_dir(&d) {
                for e in entries.flatten() {
                    if e.file_type().is_ok_and(|t| t.is_dir()) {
                        stack.push(e.path());
                    }
                }
            }
            dirs.push(d);
        }
        dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        for d in dirs {
            for _ in 0..50 {
                if fs::remove_dir(&d).is_ok() || !d.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        if let Some(dir) = &self.own_mount {
            let _ = Command::new("umount").arg(dir).status();
            let _ = fs::remove_dir(dir);
        }
    }
}
