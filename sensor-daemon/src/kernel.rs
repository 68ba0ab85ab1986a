//! The kernel side, seen from userspace: pre-flight checks, loading the eBPF
//! object embedded in this binary, filling the LPM tries, attaching the
//! tracepoints, reading counters, and detaching (on drop).

use std::collections::BTreeMap;
use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf};
use aya::programs::TracePoint;
use aya::{Ebpf, EbpfLoader};
use ipnet::IpNet;
use sensor_common::{ConnEvent, KernelOffsets, MatchInfo, OrPortKey, counter};

use crate::feed::FeedSet;

/// The eBPF object built from `sensor-ebpf` by `build.rs`.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sensor-ebpf"));

pub const TRACEFS: &str = "/sys/kernel/tracing";
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Names of the two copies of the Tor maps (IPv4 trie, IPv6 trie, OR ports).
const SET_MAPS: [[&str; 3]; 2] = [
    ["TOR_V4_0", "TOR_V6_0", "OR_PORTS_0"],
    ["TOR_V4_1", "TOR_V6_1", "OR_PORTS_1"],
];

/// After a flip, programs that read the old index a moment earlier may still
/// be looking it up (each run takes well under a microsecond, inside an RCU
/// read section); the old copy is not rewritten before this much time.
const FLIP_GRACE: Duration = Duration::from_millis(20);

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error(
        "torsensor needs CAP_BPF and CAP_PERFMON (or root) to load its kernel programs; run it as root or grant those capabilities (see deploy/torsensor.service)"
    )]
    MissingCapabilities,
    #[error(
        "kernel BTF is missing at {VMLINUX_BTF}: this kernel was built without CONFIG_DEBUG_INFO_BTF, which torsensor needs to attribute accepted connections"
    )]
    NoBtf,
    #[error("cannot read kernel BTF at {VMLINUX_BTF}: {0}")]
    BadBtf(String),
    #[error(
        "tracefs is not mounted at {TRACEFS} and mounting it failed ({0}); mount it with `mount -t tracefs tracefs {TRACEFS}`"
    )]
    NoTracefs(std::io::Error),
    #[error("tracepoint {tracepoint} is not available on this kernel: {detail}")]
    Tracepoint { tracepoint: String, detail: String },
    #[error(
        "tracepoint sock:inet_sock_set_state has field {field} at offset {found}, torsensor expects {expected}; this kernel's layout is not supported"
    )]
    TracepointLayout {
        field: &'static str,
        expected: usize,
        found: String,
    },
    #[error("loading the eBPF programs failed: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("eBPF program {name}: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("eBPF map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("eBPF map {0} is missing from the embedded object (build problem)")]
    MissingMap(&'static str),
    #[error(
        "the feeds need {needed} entries in {map}, more than max_entries = {capacity}; raise max_entries"
    )]
    TooManyEntries {
        map: &'static str,
        needed: usize,
        capacity: u32,
    },
}

/// What to load and how.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Send every connection, not only hits.
    pub audit_all: bool,
    /// Ring buffer size in bytes (power of two, multiple of the page size).
    pub ring_buffer_bytes: u32,
    /// Forward kernel-side debug logs (aya-log) to the daemon's log.
    pub kernel_log: bool,
    /// Capacity of each Tor map copy.
    pub max_entries: u32,
}

/// Checks everything that can be checked before touching the kernel, so that
/// the user gets one clear sentence instead of a verifier dump.
pub fn preflight() -> Result<(), KernelError> {
    check_capabilities()?;
    ensure_tracefs()?;
    if !Path::new(VMLINUX_BTF).exists() {
        return Err(KernelError::NoBtf);
    }
    check_sock_state_format()?;
    Ok(())
}

fn check_capabilities() -> Result<(), KernelError> {
    const CAP_SYS_ADMIN: u32 = 21;
    const CAP_PERFMON: u32 = 38;
    const CAP_BPF: u32 = 39;
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    let has = |cap: u32| eff & (1u64 << cap) != 0;
    if has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON)) {
        Ok(())
    } else {
        Err(KernelError::MissingCapabilities)
    }
}

fn ensure_tracefs() -> Result<(), KernelError> {
    if Path::new(TRACEFS).join("events").is_dir() {
        return Ok(());
    }
    let target = std::ffi::CString::new(TRACEFS).expect("no NUL");
    let fstype = c"tracefs";
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(KernelError::NoTracefs(std::io::Error::last_os_error()));
    }
    tracing::info!("mounted tracefs at {TRACEFS}");
    Ok(())
}

/// The kernel programs read `sock:inet_sock_set_state` at fixed offsets (it is
/// a stable ABI); verify them against the live format file anyway.
fn check_sock_state_format() -> Result<(), KernelError> {
    let path = PathBuf::from(TRACEFS).join("events/sock/inet_sock_set_state/format");
    let format = fs::read_to_string(&path).map_err(|e| KernelError::Tracepoint {
        tracepoint: "sock:inet_sock_set_state".into(),
        detail: format!("{}: {e}", path.display()),
    })?;
    for (field, expected) in [
        ("skaddr", 8),
        ("oldstate", 16),
        ("newstate", 20),
        ("sport", 24),
        ("dport", 26),
        ("family", 28),
        ("protocol", 30),
        ("saddr", 32),
        ("daddr", 36),
        ("saddr_v6", 40),
        ("daddr_v6", 56),
    ] {
        let found = tracepoint_field_offset(&format, field);
        if found != Some(expected) {
            return Err(KernelError::TracepointLayout {
                field,
                expected,
                found: found.map_or_else(|| "none (field missing)".into(), |o| o.to_string()),
            });
        }
    }
    Ok(())
}

/// Offset of `field` in a tracefs `format` description.
pub fn tracepoint_field_offset(format: &str, field: &str) -> Option<usize> {
    format.lines().find_map(|line| {
        let decl = line.trim().strip_prefix("field:")?;
        let (decl, rest) = decl.split_once(';')?;
        let name = decl.split_whitespace().last()?;
        let name = name.split('[').next()?;
        if name != field {
            return None;
        }
        rest.trim()
            .strip_prefix("offset:")?
            .split(';')
            .next()?
            .parse()
            .ok()
    })
}

/// Reads the struct offsets the accept probe needs from the kernel's BTF.
pub fn kernel_offsets(btf_path: &Path) -> Result<KernelOffsets, KernelError> {
    let btf = btf_rs::Btf::from_file(btf_path).map_err(|e| KernelError::BadBtf(e.to_string()))?;
    let off = |st: &str, member: &str| -> Result<u32, KernelError> {
        member_offset(&btf, st, member)
            .ok_or_else(|| KernelError::BadBtf(format!("no member {st}.{member}")))
    };
    Ok(KernelOffsets {
        task_files: off("task_struct", "files")?,
        files_fdt: off("files_struct", "fdt")?,
        fdt_fd: off("fdtable", "fd")?,
        fdt_max_fds: off("fdtable", "max_fds")?,
        file_private_data: off("file", "private_data")?,
        socket_sk: off("socket", "sk")?,
    })
}

/// Byte offset of `member` in `struct name`, looking inside anonymous
/// structs and unions as C does.
fn member_offset(btf: &btf_rs::Btf, name: &str, member: &str) -> Option<u32> {
    let types = btf.resolve_types_by_name(name).ok()?;
    types.iter().find_map(|t| match t {
        btf_rs::Type::Struct(s) => find_member(btf, &s.members, member, 0),
        _ => None,
    })
}

fn find_member(
    btf: &btf_rs::Btf,
    members: &[btf_rs::Member],
    wanted: &str,
    base_bits: u32,
) -> Option<u32> {
    for m in members {
        let bits = base_bits + m.bit_offset();
        let name = btf.resolve_name(m).unwrap_or_default();
        if name == wanted {
            return Some(bits / 8);
        }
        if name.is_empty() {
            let inner = match btf.resolve_chained_type(m).ok()? {
                btf_rs::Type::Struct(s) | btf_rs::Type::Union(s) => {
                    find_member(btf, &s.members, wanted, bits)
                }
                _ => None,
            };
            if inner.is_some() {
                return inner;
            }
        }
    }
    None
}

/// Totals of the per-CPU counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counters {
    pub connect_seen: u64,
    pub inbound_seen: u64,
    pub connect_hit: u64,
    pub inbound_hit: u64,
    pub events_sent: u64,
    pub ringbuf_full: u64,
    pub pending_full: u64,
    pub accept_seen: u64,
    pub relay_other_port: u64,
}

/// What one copy of the Tor maps holds (mirrored in userspace so that a
/// refresh writes only the difference).
#[derive(Debug, Clone, Default)]
struct SetContents {
    prefixes: BTreeMap<IpNet, MatchInfo>,
    or_ports: BTreeMap<OrPortKey, u32>,
}

/// What a feed update did to the kernel maps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ApplyStats {
    /// The copy now in use.
    pub active: usize,
    /// Entries written (new or changed) and deleted in that copy.
    pub written: usize,
    pub deleted: usize,
    /// Entries in the copy.
    pub prefixes: usize,
    pub or_ports: usize,
}

/// Loaded and attached programs. Dropping it detaches everything.
pub struct Probes {
    ebpf: Ebpf,
    /// Whether inbound connections are attributed at `accept()`.
    pub accept_probe: bool,
    logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
    sets: [SetContents; 2],
    active: usize,
    last_flip: Option<Instant>,
    max_entries: u32,
}

impl Probes {
    /// Loads the programs, fills the tries from `feeds`, attaches.
    pub fn load(opts: &LoadOptions, feeds: &FeedSet) -> Result<Self, KernelError> {
        let mut probes = Self::open(opts)?;
        probes.apply_feeds(feeds)?;
        release_heap();
        probes.attach("sock_state", "sock", "inet_sock_set_state")?;
        if probes.accept_probe {
            probes.attach("exit_accept", "syscalls", "sys_exit_accept")?;
            probes.attach("exit_accept4", "syscalls", "sys_exit_accept4")?;
        }
        Ok(probes)
    }

    /// Creates the maps (programs neither loaded nor attached): what `load`
    /// starts with, and what the feed benchmark measures map updates on.
    pub fn open(opts: &LoadOptions) -> Result<Self, KernelError> {
        raise_memlock_limit();
        let offsets = match kernel_offsets(Path::new(VMLINUX_BTF)) {
            Ok(o) => Some(o),
            Err(e) => {
                tracing::warn!("inbound connections will not be attributed to a process: {e}");
                None
            }
        };
        let audit: u32 = opts.audit_all.into();
        let accept: u32 = offsets.is_some().into();
        let offsets = offsets.unwrap_or_default();
        let log_level: u8 = if opts.kernel_log {
            aya_log::Level::Trace as u8
        } else {
            0
        };
        let mut ebpf = EbpfLoader::new()
            .override_global("AUDIT_ALL", &audit, true)
            .override_global("ACCEPT_PROBE", &accept, true)
            .override_global("KOFFSETS", &offsets, true)
            .override_global(aya_log::LEVEL, &log_level, true)
            .map_max_entries("TOR_V4_0", opts.max_entries)
            .map_max_entries("TOR_V6_0", opts.max_entries)
            .map_max_entries("OR_PORTS_0", opts.max_entries)
            .map_max_entries("TOR_V4_1", opts.max_entries)
            .map_max_entries("TOR_V6_1", opts.max_entries)
            .map_max_entries("OR_PORTS_1", opts.max_entries)
            .map_max_entries("EVENTS", opts.ring_buffer_bytes)
            .load(EBPF_OBJECT)?;
        let logger = if opts.kernel_log {
            match aya_log::EbpfLogger::init(&mut ebpf) {
                Ok(l) => Some(l),
                Err(e) => {
                    tracing::warn!("kernel-side logging unavailable: {e}");
                    None
                }
            }
        } else {
            None
        };
        Ok(Probes {
            ebpf,
            accept_probe: accept == 1,
            logger,
            sets: Default::default(),
            active: 0,
            last_flip: None,
            max_entries: opts.max_entries,
        })
    }

    fn attach(
        &mut self,
        name: &'static str,
        category: &str,
        tracepoint: &str,
    ) -> Result<(), KernelError> {
        let program: &mut TracePoint = self
            .ebpf
            .program_mut(name)
            .ok_or(KernelError::Program {
                name,
                source: aya::programs::ProgramError::UnexpectedProgramType,
            })?
            .try_into()
            .map_err(|source| KernelError::Program { name, source })?;
        program
            .load()
            .map_err(|source| KernelError::Program { name, source })?;
        program
            .attach(category, tracepoint)
            .map_err(|e| KernelError::Tracepoint {
                tracepoint: format!("{category}:{tracepoint}"),
                detail: e.to_string(),
            })?;
        Ok(())
    }

    /// Makes `feeds` the set the programs match against, gaplessly: the
    /// copy not in use is brought to the new content (only the difference is
    /// written), then one write of `ACTIVE_SET` switches every program to it.
    /// An address listed before and after is never missing, and additions
    /// and removals take effect at the same instant.
    pub fn apply_feeds(&mut self, feeds: &FeedSet) -> Result<ApplyStats, KernelError> {
        let wanted = SetContents {
            prefixes: feeds.prefixes().clone(),
            or_ports: feeds.or_ports().clone(),
        };
        let v4 = wanted
            .prefixes
            .keys()
            .filter(|n| matches!(n, IpNet::V4(_)))
            .count();
        for (map, needed) in [
            ("TOR_V4", v4),
            ("TOR_V6", wanted.prefixes.len() - v4),
            ("OR_PORTS", wanted.or_ports.len()),
        ] {
            if needed > self.max_entries as usize {
                return Err(KernelError::TooManyEntries {
                    map,
                    needed,
                    capacity: self.max_entries,
                });
            }
        }
        if let Some(flip) = self.last_flip
            && flip.elapsed() < FLIP_GRACE
        {
            std::thread::sleep(FLIP_GRACE - flip.elapsed());
        }
        let target = 1 - self.active;
        let (written, deleted) = self.write_copy(target, &wanted)?;
        let map = self
            .ebpf
            .map_mut("ACTIVE_SET")
            .ok_or(KernelError::MissingMap("ACTIVE_SET"))?;
        let map_err = |source| KernelError::Map {
            name: "ACTIVE_SET",
            source,
        };
        let mut active: Array<&mut MapData, u32> = Array::try_from(map).map_err(map_err)?;
        active.set(0, target as u32, 0).map_err(map_err)?;
        self.active = target;
        self.last_flip = Some(Instant::now());
        let stats = ApplyStats {
            active: target,
            written,
            deleted,
            prefixes: wanted.prefixes.len(),
            or_ports: wanted.or_ports.len(),
        };
        self.sets[target] = wanted;
        Ok(stats)
    }

    /// Brings copy `index` from what it holds to `wanted`.
    fn write_copy(
        &mut self,
        index: usize,
        wanted: &SetContents,
    ) -> Result<(usize, usize), KernelError> {
        let [v4_name, v6_name, or_name] = SET_MAPS[index];
        let held = &self.sets[index];
        let [v4, v6, or] = self.ebpf.maps_disjoint_mut([v4_name, v6_name, or_name]);
        let mut v4: LpmTrie<&mut MapData, [u8; 4], MatchInfo> = v4
            .ok_or(KernelError::MissingMap(v4_name))?
            .try_into()
            .map_err(|source| KernelError::Map {
                name: v4_name,
                source,
            })?;
        let mut v6: LpmTrie<&mut MapData, [u8; 16], MatchInfo> = v6
            .ok_or(KernelError::MissingMap(v6_name))?
            .try_into()
            .map_err(|source| KernelError::Map {
                name: v6_name,
                source,
            })?;
        let mut or: BpfHashMap<&mut MapData, OrPortKey, u32> = or
            .ok_or(KernelError::MissingMap(or_name))?
            .try_into()
            .map_err(|source| KernelError::Map {
                name: or_name,
                source,
            })?;
        let (mut written, mut deleted) = (0, 0);
        for net in held
            .prefixes
            .keys()
            .filter(|n| !wanted.prefixes.contains_key(n))
        {
            let len = u32::from(net.prefix_len());
            let result = match net.network() {
                IpAddr::V4(a) => {
                    v4.remove(&Key::new(len, a.octets()))
                        .map_err(|source| KernelError::Map {
                            name: v4_name,
                            source,
                        })
                }
                IpAddr::V6(a) => {
                    v6.remove(&Key::new(len, a.octets()))
                        .map_err(|source| KernelError::Map {
                            name: v6_name,
                            source,
                        })
                }
            };
            result?;
            deleted += 1;
        }
        for (net, info) in &wanted.prefixes {
            if held.prefixes.get(net) == Some(info) {
                continue;
            }
            let len = u32::from(net.prefix_len());
            let result = match net.network() {
                IpAddr::V4(a) => v4
                    .insert(&Key::new(len, a.octets()), info, 0)
                    .map_err(|source| KernelError::Map {
                        name: v4_name,
                        source,
                    }),
                IpAddr::V6(a) => v6
                    .insert(&Key::new(len, a.octets()), info, 0)
                    .map_err(|source| KernelError::Map {
                        name: v6_name,
                        source,
                    }),
            };
            result?;
            written += 1;
        }
        for key in held
            .or_ports
            .keys()
            .filter(|k| !wanted.or_ports.contains_key(k))
        {
            or.remove(key).map_err(|source| KernelError::Map {
                name: or_name,
                source,
            })?;
            deleted += 1;
        }
        for (key, feeds) in &wanted.or_ports {
            if held.or_ports.get(key) == Some(feeds) {
                continue;
            }
            or.insert(key, feeds, 0)
                .map_err(|source| KernelError::Map {
                    name: or_name,
                    source,
                })?;
            written += 1;
        }
        Ok((written, deleted))
    }

    /// Detaches and unloads every program; the maps stay readable.
    pub fn detach(&mut self) {
        for (name, program) in self.ebpf.programs_mut() {
            if let aya::programs::Program::TracePoint(tp) = program
                && tp.fd().is_ok()
                && let Err(e) = tp.unload()
            {
                tracing::warn!("detaching {name}: {e}");
            }
        }
    }

    /// Takes the event ring buffer (once).
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>, KernelError> {
        let map = self
            .ebpf
            .take_map("EVENTS")
            .ok_or(KernelError::MissingMap("EVENTS"))?;
        RingBuf::try_from(map).map_err(|source| KernelError::Map {
            name: "EVENTS",
            source,
        })
    }

    /// Takes the kernel log reader, if kernel logging is on.
    pub fn take_logger(&mut self) -> Option<aya_log::EbpfLogger<&'static dyn log::Log>> {
        self.logger.take()
    }

    /// Sums the per-CPU counters.
    pub fn counters(&self) -> Result<Counters, KernelError> {
        let map = self
            .ebpf
            .map("COUNTERS")
            .ok_or(KernelError::MissingMap("COUNTERS"))?;
        let array: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(map).map_err(|source| KernelError::Map {
                name: "COUNTERS",
                source,
            })?;
        let get = |i: u32| -> u64 {
            array
                .get(&i, 0)
                .map(|values| values.iter().sum())
                .unwrap_or(0)
        };
        Ok(Counters {
            connect_seen: get(counter::CONNECT_SEEN),
            inbound_seen: get(counter::INBOUND_SEEN),
            connect_hit: get(counter::CONNECT_HIT),
            inbound_hit: get(counter::INBOUND_HIT),
            events_sent: get(counter::EVENTS_SENT),
            ringbuf_full: get(counter::RINGBUF_FULL),
            pending_full: get(counter::PENDING_FULL),
            accept_seen: get(counter::ACCEPT_SEEN),
            relay_other_port: get(counter::RELAY_OTHER_PORT),
        })
    }

    /// Hits still waiting in the kernel (an outbound attempt not yet answered,
    /// an inbound connection not yet accepted). Read at shutdown so that they
    /// are reported instead of vanishing with the maps.
    pub fn pending(&self) -> Vec<ConnEvent> {
        let mut out = Vec::new();
        for name in ["PENDING_OUT", "PENDING_IN"] {
            let Some(map) = self.ebpf.map(name) else {
                continue;
            };
            let Ok(hash) = BpfHashMap::<&MapData, u64, ConnEvent>::try_from(map) else {
                continue;
            };
            out.extend(hash.iter().filter_map(Result::ok).map(|(_, ev)| ev));
        }
        out
    }
}

/// Loading parses the kernel's BTF (several MiB, twice: aya and the offset
/// lookup); give that memory back to the system once it is freed.
fn release_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free heap pages.
    unsafe {
        libc::malloc_trim(0);
    }
}

fn raise_memlock_limit() {
    // Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK.
    let rlim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain syscall with a valid pointer.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) } != 0 {
        tracing::debug!("could not raise RLIMIT_MEMLOCK (fine on kernels >= 5.11)");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FORMAT: &str = "name: inet_sock_set_state\nformat:\n\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;\n\tfield:__u8 saddr_v6[16];\toffset:40;\tsize:16;\tsigned:0;\n";

    #[test]
    fn tracepoint_format_offsets_are_parsed() {
        assert_eq!(tracepoint_field_offset(FORMAT, "skaddr"), Some(8));
        assert_eq!(tracepoint_field_offset(FORMAT, "saddr_v6"), Some(40));
        assert_eq!(tracepoint_field_offset(FORMAT, "saddr"), None);
        assert_eq!(tracepoint_field_offset(FORMAT, "common_type"), Some(0));
    }

    #[test]
    fn kernel_btf_offsets_when_available() {
        let path = Path::new(VMLINUX_BTF);
        if !path.exists() {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must run on a kernel with BTF ({VMLINUX_BTF})"
            );
            eprintln!("skipped: no {VMLINUX_BTF} on this machine");
            return;
        }
        let o = kernel_offsets(path).expect("offsets from BTF");
        // fdtable starts with max_fds (unsigned int) then the fd array pointer.
        assert_eq!(o.fdt_max_fds, 0);
        assert_eq!(o.fdt_fd, 8);
        assert!(o.task_files > 0 && o.file_private_data > 0 && o.socket_sk > 0);
    }
}
