//! Enrichment from `/proc` and the host: what the kernel could not give.
//!
//! The kernel captures pid, tid, uid, gid, comm and cgroup id at event time;
//! the executable, command line and parent come from `/proc/<pid>` when the
//! alert is built. A process that has already exited keeps what the kernel
//! captured, and the rest is left out (never guessed).

use std::fs;
use std::path::Path;

use crate::event::KernelProcess;

/// A process as it appears in an alert.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcessInfo {
    pub pid: u32,
    pub tid: u32,
    pub name: String,
    pub executable: Option<String>,
    pub command_line: Option<String>,
    pub args: Vec<String>,
    pub ppid: Option<u32>,
    pub uid: u32,
    pub gid: u32,
    pub user_name: Option<String>,
    pub cgroup_id: u64,
}

/// Reads what `/proc` still knows about `p`.
pub fn process_info(p: &KernelProcess, proc_root: &Path) -> ProcessInfo {
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
    ProcessInfo {
        pid: p.tgid,
        tid: p.tid,
        name: p.comm.clone(),
        executable,
        command_line: (!args.is_empty()).then(|| args.join(" ")),
        args,
        ppid,
        uid: p.uid,
        gid: p.gid,
        user_name: user_name(p.uid, Path::new("/etc/passwd")),
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
        let info = process_info(&me, Path::new("/proc"));
        let exe = std::env::current_exe().unwrap();
        assert_eq!(info.executable.as_deref(), Some(exe.to_str().unwrap()));
        assert_eq!(info.args[0], std::env::args().next().unwrap());
        // SAFETY: getppid has no preconditions.
        assert_eq!(info.ppid, Some(unsafe { libc::getppid() } as u32));
        assert_eq!(info.name, "tester");
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
        let info = process_info(&gone, Path::new("/proc"));
        assert_eq!(info.pid, u32::MAX - 1);
        assert_eq!(info.name, "ghost");
        assert_eq!(info.executable, None);
        assert_eq!(info.command_line, None);
        assert_eq!(info.ppid, None);
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
