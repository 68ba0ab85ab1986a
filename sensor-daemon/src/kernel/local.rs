//! The kernel side of the local Tor signals (see [`crate::local`]): the
//! exec program (`tp_btf:sched_process_exec`) and its ring buffer of
//! [`ExecEvent`]s, the watched names and ports in the kernel's maps, the
//! `task_struct` / `mm_struct` offsets it needs, and decoding its events.
//! The listen signal itself rides on `sock_state` (CLOSE -> LISTEN) and
//! the connection ring buffer, as a `ConnEvent` with `FLAG_LISTEN`.

use std::net::SocketAddr;
use std::path::Path;
use std::time::SystemTime;

use aya::maps::{HashMap as BpfHashMap, MapData, RingBuf};
use aya::{Btf, Ebpf};
use sensor_common::{COMM_LEN, ConnEvent, ExecEvent, ExecOffsets, exec};

use super::event::{BootClock, EventError, KernelProcess, addr, comm};
use super::{Hook, KernelError, Probes, member_offset, short_reason};
use crate::local::LocalWatch;

/// The exec program and its hook.
pub const EXEC_PROGRAM: (&str, Hook) = ("process_exec", Hook::Tracepoint("sched_process_exec"));

/// The verifier's last words (which limit or access it refused), for a
/// one-line error; the whole log is in `--log debug`.
pub(crate) fn verifier_tail(e: &aya::programs::ProgramError) -> String {
    match e {
        aya::programs::ProgramError::LoadError { verifier_log, .. } => {
            let text = verifier_log.to_string();
            let lines: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
            let from = lines.len().saturating_sub(3);
            format!("; verifier: {}", lines[from..].join(" / "))
        }
        _ => String::new(),
    }
}

/// Reads the offsets the exec program needs from the kernel's BTF.
pub fn exec_offsets(btf_path: &Path) -> Result<ExecOffsets, KernelError> {
    let btf = btf_rs::Btf::from_file(btf_path).map_err(|e| KernelError::BadBtf(e.to_string()))?;
    let off = |st: &str, member: &str| -> Result<u32, KernelError> {
        member_offset(&btf, st, member)
            .ok_or_else(|| KernelError::BadBtf(format!("no member {st}.{member}")))
    };
    Ok(ExecOffsets {
        task_mm: off("task_struct", "mm")?,
        task_real_parent: off("task_struct", "real_parent")?,
        task_tgid: off("task_struct", "tgid")?,
        mm_env_start: off("mm_struct", "env_start")?,
        mm_env_end: off("mm_struct", "env_end")?,
        _pad: 0,
    })
}

/// A program start the kernel reported, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecStart {
    pub time: SystemTime,
    pub process: KernelProcess,
    /// The parent's process id (0 if unknown).
    pub ppid: u32,
    /// The command name matched a watched one.
    pub by_name: bool,
    /// The environment has a variable with the watched prefix.
    pub by_env: bool,
    /// Bytes of environment.
    pub env_len: u32,
    /// The environment was larger than the kernel scans.
    pub env_partial: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ExecEventError {
    #[error("exec ring buffer record of {0} bytes, expected {size}", size = size_of::<ExecEvent>())]
    Size(usize),
    #[error("exec event without a reason")]
    NoReason,
}

/// Reads an `EXEC_EVENTS` record.
pub fn decode_exec(bytes: &[u8]) -> Result<ExecEvent, ExecEventError> {
    super::event::decode_pod(bytes).ok_or(ExecEventError::Size(bytes.len()))
}

/// A socket that started to listen on a watched port (a `ConnEvent`
/// with `FLAG_LISTEN`), decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listen {
    pub time: SystemTime,
    /// The listening address and port.
    pub local: SocketAddr,
    /// The caller of `listen()`.
    pub process: Option<KernelProcess>,
}

impl Listen {
    /// The listener in `ev` (which must have `FLAG_LISTEN`).
    pub fn from_event(ev: &ConnEvent, clock: &BootClock) -> Result<Self, EventError> {
        Ok(Listen {
            time: clock.wall(ev.ts_boot_ns),
            local: SocketAddr::new(addr(ev.family, &ev.local_addr)?, ev.local_port),
            process: (ev.tgid != 0).then(|| KernelProcess::of(ev)),
        })
    }
}

impl ExecStart {
    pub fn from_event(ev: &ExecEvent, clock: &BootClock) -> Result<Self, ExecEventError> {
        if ev.reasons & (exec::BY_NAME | exec::BY_ENV) == 0 {
            return Err(ExecEventError::NoReason);
        }
        Ok(ExecStart {
            time: clock.wall(ev.ts_boot_ns),
            process: KernelProcess {
                tgid: ev.tgid,
                tid: ev.pid,
                uid: ev.uid,
                gid: ev.gid,
                comm: comm(&ev.comm),
                cgroup_id: ev.cgroup_id,
            },
            ppid: ev.ppid,
            by_name: ev.reasons & exec::BY_NAME != 0,
            by_env: ev.reasons & exec::BY_ENV != 0,
            env_len: ev.env_len,
            env_partial: ev.flags & exec::ENV_PARTIAL != 0,
        })
    }
}

impl Probes {
    /// Fills `EXEC_NAMES` and `LISTEN_PORTS` from the watch list.
    pub(super) fn fill_local(&mut self, watch: &LocalWatch) -> Result<(), KernelError> {
        fill_names(&mut self.ebpf, watch)?;
        let name = "LISTEN_PORTS";
        let map = self
            .ebpf
            .map_mut(name)
            .ok_or(KernelError::MissingMap(name))?;
        let mut ports: BpfHashMap<&mut MapData, u16, u8> =
            BpfHashMap::try_from(map).map_err(|source| KernelError::Map { name, source })?;
        for port in watch.ports.keys() {
            ports
                .insert(port, 1, 0)
                .map_err(|source| KernelError::Map { name, source })?;
        }
        Ok(())
    }

    /// Attaches the exec program. Optional: a kernel that refuses it keeps
    /// every other signal; the reason is returned (and logged by the
    /// caller), and `torsensor_exec_hook` says so.
    pub(super) fn attach_exec(&mut self, btf: &Btf) -> Result<(), String> {
        let (name, hook) = EXEC_PROGRAM;
        self.attach(name, hook, btf)
            .map_err(|e| format!("{hook}: {}{}", short_reason(&e), verifier_tail(&e)))
    }

    /// Takes the exec ring buffer (once).
    pub fn take_exec_events(&mut self) -> Result<RingBuf<MapData>, KernelError> {
        self.take_ring("EXEC_EVENTS")
    }

    /// Whether the exec program is attached, or why not.
    pub fn exec_hook(&self) -> Result<(), &str> {
        match &self.exec_hook {
            Some(Ok(())) => Ok(()),
            Some(Err(reason)) => Err(reason),
            None => Err("not loaded"),
        }
    }
}

fn fill_names(ebpf: &mut Ebpf, watch: &LocalWatch) -> Result<(), KernelError> {
    let name = "EXEC_NAMES";
    let map = ebpf.map_mut(name).ok_or(KernelError::MissingMap(name))?;
    let mut names: BpfHashMap<&mut MapData, [u8; COMM_LEN], u8> =
        BpfHashMap::try_from(map).map_err(|source| KernelError::Map { name, source })?;
    for key in watch.comm_keys() {
        names
            .insert(key, 1, 0)
            .map_err(|source| KernelError::Map { name, source })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn exec_events_decode() {
        let mut ev = ExecEvent::ZERO;
        ev.ts_boot_ns = 2_000_000_000;
        ev.tgid = 7;
        ev.pid = 7;
        ev.ppid = 1;
        ev.reasons = exec::BY_ENV;
        ev.flags = exec::ENV_PARTIAL;
        ev.env_len = 5000;
        ev.comm[..5].copy_from_slice(b"notor");
        // SAFETY: reading our own POD value as bytes.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (&ev as *const ExecEvent).cast::<u8>(),
                size_of::<ExecEvent>(),
            )
        };
        let back = decode_exec(bytes).unwrap();
        let start = ExecStart::from_event(&back, &BootClock::at(UNIX_EPOCH)).unwrap();
        assert_eq!(start.time, UNIX_EPOCH + Duration::from_secs(2));
        assert_eq!(start.process.comm, "notor");
        assert!(start.by_env && !start.by_name && start.env_partial);
        assert_eq!(decode_exec(&bytes[1..]), Err(ExecEventError::Size(63)));
        ev.reasons = 0;
        assert_eq!(
            ExecStart::from_event(&ev, &BootClock::at(UNIX_EPOCH)),
            Err(ExecEventError::NoReason)
        );
    }

    #[test]
    fn exec_offsets_from_btf_when_available() {
        let path = Path::new(super::super::VMLINUX_BTF);
        if !path.exists() {
            assert!(std::env::var_os("CI").is_none(), "CI must have BTF");
            return;
        }
        let o = exec_offsets(path).unwrap();
        assert!(o.mm_env_end == o.mm_env_start + 8, "{o:?}");
        assert!(o.task_mm > 0 && o.task_real_parent > 0 && o.task_tgid > 0);
    }
}
