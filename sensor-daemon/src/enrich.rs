//! Enrichment from `/proc` and the host: what the kernel could not give.
//!
//! The kernel captures pid, tid, uid, gid, comm and cgroup id at event time;
//! the executable, command line and parent come from `/proc/<pid>` when the
//! alert is built. A process that has already exited keeps what the kernel
//! captured, and the rest is left out (never guessed).

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::event::KernelProcess;

/// A process as it appears in an alert.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcessInfo {
    pub pid: u32,
    pub tid: u32,
    /// Process name (`/proc/<pid>/comm` of the thread-group leader; the
    /// thread's name when the process is gone).
    pub name: String,
    /// Name of the thread that connected or accepted (kernel `comm`).
    pub thread_name: String,
    pub executable: Option<String>,
    pub command_line: Option<String>,
    pub args: Vec<String>,
    pub ppid: Option<u32>,
    pub uid: u32,
    pub gid: u32,
    pub user_name: Option<String>,
    pub cgroup_id: u64,
}

/// Bounded cache of `/proc` and user-name reads, so that a burst of hits from
/// one process costs one set of reads. Entries live `ttl` (short: a pid can
/// exec or be reused); the whole cache is dropped when it reaches `capacity`.
pub struct ProcessCache {
    proc_root: PathBuf,
    passwd: PathBuf,
    ttl: Duration,
    capacity: usize,
    processes: HashMap<u32, (Instant, ProcessInfo)>,
    users: HashMap<u32, (Instant, Option<String>)>,
}

impl ProcessCache {
    pub fn new(proc_root: &Path, passwd: &Path, ttl: Duration, capacity: usize) -> Self {
        ProcessCache {
            proc_root: proc_root.to_owned(),
            passwd: passwd.to_owned(),
            ttl,
            capacity,
            processes: HashMap::new(),
            users: HashMap::new(),
        }
    }

    /// The host's processes and users, 1 s process TTL, 4096 entries.
    pub fn host() -> Self {
        Self::new(
            Path::new("/proc"),
            Path::new("/etc/passwd"),
            Duration::from_secs(1),
            4096,
        )
    }

    pub fn lookup(&mut self, p: &KernelProcess) -> ProcessInfo {
        let now = Instant::now();
        let fresh = |t: &Instant| now.duration_since(*t) < self.ttl;
        if let Some((t, cached)) = self.processes.get(&p.tgid)
            && fresh(t)
            && cached.uid == p.uid
        {
            return ProcessInfo {
                tid: p.tid,
                thread_name: p.comm.clone(),
                gid: p.gid,
                cgroup_id: p.cgroup_id,
                ..cached.clone()
            };
        }
        let user_name = match self.users.get(&p.uid) {
            Some((t, name)) if now.duration_since(*t) < self.ttl * 60 => name.clone(),
            _ => {
                let name = user_name(p.uid, &self.passwd);
                bounded_insert(&mut self.users, self.capacity, p.uid, (now, name.clone()));
                name
            }
        };
        let mut info = read_process(p, &self.proc_root);
        info.user_name = user_name;
        if info.executable.is_some() {
            bounded_insert(
                &mut self.processes,
                self.capacity,
                p.tgid,
                (now, info.clone()),
            );
        }
        info
    }

    pub fn len(&self) -> usize {
        self.processes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.processes.is_empty()
    }
}

fn bounded_insert<V>(map: &mut HashMap<u32, V>, capacity: usize, key: u32, value: V) {
    if map.len() >= capacity {
        map.clear();
    }
    map.insert(key, value);
}

/// Reads what `/proc` still knows about `p` (the user name is the cache's job).
fn read_process(p: &KernelProcess, proc_root: &Path) -> ProcessInfo {
    let dir = proc_root.join(p.tgid.to_string());
    let executable = fs::read_link(dir.join("exe"))
        .ok()
        .map(|p| p.to_string_lossy().into_owned());
    let args: Vec<String> = fs::read(dir.join("cmdline"))
        .map(|raw| {
            raw.split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        })
        .unwrap_or_default();
    let ppid = fs::read_to_string(dir.join("status")).ok().and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("PPid:"))
            .and_then(|v| v.trim().parse().ok())
    });
    let name = fs::read_to_string(dir.join("comm"))
        .map(|c| c.trim_end_matches('\n').to_owned())
        .unwrap_or_else(|_| p.comm.clone());
    ProcessInfo {
        pid: p.tgid,
        tid: p.tid,
        name,
        thread_name: p.comm.clone(),
        executable,
        command_line: (!args.is_empty()).then(|| args.join(" ")),
        args,
        ppid,
        uid: p.uid,
        gid: p.gid,
        user_name: None,
        cgroup_id: p.cgroup_id,
    }
}

/// The name of `uid` in a passwd file.
pub fn user_name(uid: u32, passwd: &Path) -> Option<String> {
    let text = fs::read_to_string(passwd).ok()?;
    text.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let _password = fields.next()?;
        let id: u32 = fields.next()?.parse().ok()?;
        (id == uid).then(|| name.to_owned())
    })
}

/// This host's name.
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: buffer and length are valid.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "unknown".into();
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process_from_proc() {
        let me = KernelProcess {
            tgid: std::process::id(),
            tid: std::process::id(),
            uid: 0,
            gid: 0,
            comm: "tester".into(),
            cgroup_id: 7,
        };
        let info = ProcessCache::host().lookup(&me);
        let exe = std::env::current_exe().unwrap();
        assert_eq!(info.executable.as_deref(), Some(exe.to_str().unwrap()));
        assert_eq!(info.args[0], std::env::args().next().unwrap());
        // SAFETY: getppid has no preconditions.
        assert_eq!(info.ppid, Some(unsafe { libc::getppid() } as u32));
        let comm = fs::read_to_string("/proc/self/comm").unwrap();
        assert_eq!(info.name, comm.trim_end());
        assert_eq!(info.thread_name, "tester");
        assert_eq!(info.cgroup_id, 7);
    }

    #[test]
    fn a_gone_process_keeps_kernel_fields_only() {
        let gone = KernelProcess {
            tgid: u32::MAX - 1,
            tid: u32::MAX - 1,
            uid: 1234,
            gid: 5,
            comm: "ghost".into(),
            cgroup_id: 0,
        };
        let info = ProcessCache::host().lookup(&gone);
        assert_eq!(info.pid, u32::MAX - 1);
        assert_eq!(info.name, "ghost");
        assert_eq!(info.thread_name, "ghost");
        assert_eq!(info.executable, None);
        assert_eq!(info.command_line, None);
        assert_eq!(info.ppid, None);
    }

    #[test]
    fn the_cache_is_bounded_and_refreshes_thread_fields() {
        let passwd = std::env::temp_dir().join(format!("ts-passwd-c-{}", std::process::id()));
        fs::write(&passwd, "root:x:0:0::/root:/bin/sh\n").unwrap();
        let mut cache = ProcessCache::new(Path::new("/proc"), &passwd, Duration::from_secs(60), 2);
        let mut me = KernelProcess {
            tgid: std::process::id(),
            tid: 1,
            uid: 0,
            gid: 0,
            comm: "a".into(),
            cgroup_id: 1,
        };
        let first = cache.lookup(&me);
        assert_eq!(first.user_name.as_deref(), Some("root"));
        me.tid = 2;
        me.comm = "b".into();
        let second = cache.lookup(&me);
        assert_eq!((second.tid, second.thread_name.as_str()), (2, "b"));
        assert_eq!(second.executable, first.executable);
        assert_eq!(cache.len(), 1);
        // Processes that are gone are not cached; the size stays bounded.
        for pid in [u32::MAX - 3, u32::MAX - 4, u32::MAX - 5] {
            let gone = KernelProcess {
                tgid: pid,
                ..me.clone()
            };
            assert_eq!(cache.lookup(&gone).executable, None);
        }
        assert!(cache.len() <= 2);
        fs::remove_file(passwd).unwrap();
    }

    #[test]
    fn user_names_from_a_passwd_file() {
        let dir = std::env::temp_dir().join(format!("ts-passwd-{}", std::process::id()));
        fs::write(
            &dir,
            "root:x:0:0::/root:/bin/sh\n# junk\nalice:x:1000:1000::/home/a:/bin/sh\n",
        )
        .unwrap();
        assert_eq!(user_name(1000, &dir).as_deref(), Some("alice"));
        assert_eq!(user_name(0, &dir).as_deref(), Some("root"));
        assert_eq!(user_name(4242, &dir), None);
        fs::remove_file(dir).unwrap();
    }
}
