//! Opt-in blocking, kernel side: attaching the three blocking programs to
//! a cgroup v2 directory and filling `BLOCK_MODE` / `BLOCK_RULES`.
//!
//! The programs attach through `bpf_link` in "multi" mode, so programs
//! others put on the same cgroup and hook (systemd's `IPAddressDeny=`,
//! Cilium) keep running next to them, and every program's verdict counts
//! (any refusal refuses). A cgroup whose hook holds an *exclusive* program
//! (attached without `BPF_F_ALLOW_MULTI`) cannot take another: that is
//! found before attaching and reported with the program ids. The links
//! belong to this process: they are gone when it exits, however it exits.

use std::fmt;
use std::os::fd::AsRawFd;
use std::path::Path;

use aya::programs::{
    CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSockAddr, ProgramError,
};
use sensor_common::{BlockRule, block};

use super::maps::array_mut;
use super::{KernelError, Probes, short_reason};

/// The programs and the hook each goes on (`bpf_attach_type` numbers for
/// the query).
const PROGRAMS: [(&str, u32); 3] = [
    ("block_connect4", BPF_CGROUP_INET4_CONNECT),
    ("block_connect6", BPF_CGROUP_INET6_CONNECT),
    ("block_ingress", BPF_CGROUP_INET_INGRESS),
];

/// aya makes a `bpf_link` on Linux 5.7+ (every kernel torsensor runs
/// on), whose flags must be 0: a cgroup link always runs next to the
/// others ("multi" without asking). `Single` is aya's name for flags 0.
const LINK: CgroupAttachMode = CgroupAttachMode::Single;

const BPF_CGROUP_INET_INGRESS: u32 = 0;
const BPF_CGROUP_INET4_CONNECT: u32 = 10;
const BPF_CGROUP_INET6_CONNECT: u32 = 11;
const BPF_PROG_QUERY: libc::c_long = 16;
const BPF_F_ALLOW_MULTI: u32 = 2;

/// Programs already on one hook of the cgroup (its own, not inherited).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Neighbours {
    pub program: &'static str,
    pub ids: Vec<u32>,
    /// They allow others next to them (`BPF_F_ALLOW_MULTI`).
    pub multi: bool,
}

/// What attaching found, for the start-up log and `status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockAttach {
    pub cgroup: String,
    pub neighbours: Vec<Neighbours>,
}

impl fmt::Display for BlockAttach {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "blocking hooks on cgroup {}: connect4, connect6, ingress",
            self.cgroup
        )?;
        for n in &self.neighbours {
            write!(
                f,
                "; {} shares its hook with program(s) {:?}",
                n.program, n.ids
            )?;
        }
        Ok(())
    }
}

/// `bpf(BPF_PROG_QUERY)` of `attach_type` on the cgroup `fd`: the ids of
/// the programs attached there and the attach flags.
fn query(fd: i32, attach_type: u32) -> std::io::Result<(Vec<u32>, u32)> {
    #[repr(C)]
    #[derive(Default)]
    struct Query {
        target_fd: u32,
        attach_type: u32,
        query_flags: u32,
        attach_flags: u32,
        prog_ids: u64,
        prog_cnt: u32,
        _pad: u32,
        prog_attach_flags: u64,
        _rest: [u64; 4],
    }
    let mut ids = [0u32; 64];
    let mut q = Query {
        target_fd: fd as u32,
        attach_type,
        prog_ids: ids.as_mut_ptr() as u64,
        prog_cnt: ids.len() as u32,
        ..Default::default()
    };
    // SAFETY: a valid `bpf_attr` for BPF_PROG_QUERY, its size passed; the
    // kernel writes at most `prog_cnt` ids into `ids`.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_QUERY,
            &mut q as *mut Query,
            size_of::<Query>() as u32,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let n = (q.prog_cnt as usize).min(ids.len());
    Ok((ids[..n].to_vec(), q.attach_flags))
}

impl Probes {
    /// Loads the blocking programs and attaches them to the cgroup v2
    /// directory `cgroup`, after checking its hooks for programs that
    /// would refuse company.
    pub fn attach_blocking(&mut self, cgroup: &Path) -> Result<BlockAttach, KernelError> {
        let dir = std::fs::File::open(cgroup).map_err(|e| KernelError::Blocking {
            detail: format!("cannot open cgroup {}: {e}", cgroup.display()),
        })?;
        let mut neighbours = Vec::new();
        for (program, attach_type) in PROGRAMS {
            let (ids, flags) =
                query(dir.as_raw_fd(), attach_type).map_err(|e| KernelError::Blocking {
                    detail: format!(
                        "cannot list the programs on cgroup {} ({program}'s hook): {e}",
                        cgroup.display()
                    ),
                })?;
            if ids.is_empty() {
                continue;
            }
            let multi = flags & BPF_F_ALLOW_MULTI != 0;
            if !multi {
                return Err(KernelError::Blocking {
                    detail: format!(
                        "cgroup {} holds an exclusive program (id {:?}) on {program}'s hook, which allows no other; detach it, make it BPF_F_ALLOW_MULTI, or set [blocking] cgroup to a cgroup below it",
                        cgroup.display(),
                        ids
                    ),
                });
            }
            neighbours.push(Neighbours {
                program,
                ids,
                multi,
            });
        }
        for (program, _) in PROGRAMS {
            self.attach_cgroup(program, &dir)
                .map_err(|e| KernelError::Blocking {
                    detail: format!(
                        "{program} on cgroup {}: {}",
                        cgroup.display(),
                        short_reason(&e)
                    ),
                })?;
        }
        Ok(BlockAttach {
            cgroup: cgroup.display().to_string(),
            neighbours,
        })
    }

    fn attach_cgroup(
        &mut self,
        name: &'static str,
        dir: &std::fs::File,
    ) -> Result<(), ProgramError> {
        let skb = (name == "block_ingress").then_some(CgroupSkbAttachType::Ingress);
        self.attach_cgroup_program(name, dir, skb)
    }

    /// Loads program `name` and links it to the cgroup `dir`: a
    /// `cgroup_skb` program at `skb`, else a `cgroup/sock_addr` one (the
    /// blocking and the DNS programs).
    pub(super) fn attach_cgroup_program(
        &mut self,
        name: &str,
        dir: &std::fs::File,
        skb: Option<CgroupSkbAttachType>,
    ) -> Result<(), ProgramError> {
        let program = self
            .ebpf
            .program_mut(name)
            .ok_or(ProgramError::UnexpectedProgramType)?;
        match skb {
            Some(at) => {
                let p: &mut CgroupSkb = program.try_into()?;
                p.load()?;
                p.attach(dir, at, LINK).map(drop)
            }
            None => {
                let p: &mut CgroupSockAddr = program.try_into()?;
                p.load()?;
                p.attach(dir, LINK).map(drop)
            }
        }
    }

    /// Writes the rules, then the errno and the mode. A connection that
    /// races with a rewrite (a reload) may be judged by a mix of the old
    /// and the new entries; the mode is written last, so turning blocking
    /// on never applies it to a half-written table.
    pub fn set_blocking(
        &mut self,
        mode: u32,
        errno: u32,
        rules: &[BlockRule],
    ) -> Result<(), KernelError> {
        if rules.len() > block::MAX_RULES as usize {
            return Err(KernelError::Blocking {
                detail: format!(
                    "{} block entries, more than {}",
                    rules.len(),
                    block::MAX_RULES
                ),
            });
        }
        let mut table = array_mut::<BlockRule>(&mut self.ebpf, "BLOCK_RULES")?;
        let map_err = |source| KernelError::Map {
            name: "BLOCK_RULES",
            source,
        };
        // The first entry last: while the table grows from empty, the
        // programs still see an empty table until it is complete.
        for (i, r) in rules.iter().enumerate().skip(1) {
            table.set(i as u32, *r, 0).map_err(map_err)?;
        }
        if rules.len() < block::MAX_RULES as usize {
            table
                .set(rules.len() as u32, BlockRule::NONE, 0)
                .map_err(map_err)?;
        }
        let first = rules.first().copied().unwrap_or(BlockRule::NONE);
        table.set(0, first, 0).map_err(map_err)?;
        let mut modes = array_mut::<u32>(&mut self.ebpf, "BLOCK_MODE")?;
        let map_err = |source| KernelError::Map {
            name: "BLOCK_MODE",
            source,
        };
        modes.set(block::ERRNO, errno, 0).map_err(map_err)?;
        modes.set(block::MODE, mode, 0).map_err(map_err)?;
        Ok(())
    }
}
