//! The kernel side, seen from userspace: pre-flight checks, loading the eBPF
//! object embedded in this binary, filling the LPM tries, choosing and
//! attaching the hooks ([`plan`]), reading counters, sweeping inbound hits
//! no process has used yet, and detaching (on drop).

mod block;
pub mod dns;
pub mod event;
pub mod gateway;
pub mod local;
mod maps;
pub mod plan;

use std::path::Path;
use std::time::{Duration, Instant};

use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf};
use aya::programs::{BtfTracePoint, FEntry, KProbe, Program, ProgramError};
use aya::{Btf, Ebpf, EbpfLoader};
use sensor_common::{ConnEvent, FLAG_NO_PROCESS, KernelOffsets, counter, pending, prefilter};

use crate::feed::FeedSet;
pub use block::{BlockAttach, Neighbours};
pub use maps::{ApplyStats, prefilter_bits};
use maps::{SetContents, array_mut};
pub use plan::{Hook, HookPlan, InboundChoice, InboundHooks, STATE_PROGRAM, Unavailable};

/// The eBPF object built from `sensor-ebpf` by `build.rs`.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sensor-ebpf"));

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// How long an outbound attempt may wait for its answer (and its local
/// port) before the sweep reports it as incomplete. Far beyond the kernel's
/// default SYN retries (about 2 minutes); only a stuck entry gets here.
pub const OUTBOUND_STALE: Duration = Duration::from_secs(600);

/// What `Probes::sweep` took out of the pending maps.
#[derive(Debug, Default)]
pub struct Swept {
    /// Inbound hits reported without a process.
    pub inbound: Vec<ConnEvent>,
    /// Outbound attempts reported as incomplete.
    pub outbound_stale: Vec<ConnEvent>,
}

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error(
        "torsensor needs CAP_BPF and CAP_PERFMON (or root) to load its kernel programs; run it as root or grant those capabilities (see deploy/torsensor.service)"
    )]
    MissingCapabilities,
    #[error(
        "kernel BTF is missing at {VMLINUX_BTF}: this kernel was built without CONFIG_DEBUG_INFO_BTF, which torsensor's BTF tracepoints need (Linux 5.5 or later with BTF)"
    )]
    NoBtf,
    #[error("cannot read kernel BTF at {VMLINUX_BTF}: {0}")]
    BadBtf(String),
    #[error("{hook} is not available on this kernel: {detail}")]
    Hook { hook: Hook, detail: String },
    #[error(
        "inbound_hooks = {plan} cannot be used on this kernel ({reason}); use auto, or see `torsensor hooks`"
    )]
    InboundPlan { plan: InboundHooks, reason: String },
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
    #[error("blocking: {detail}")]
    Blocking { detail: String },
    #[error("gateway: {detail}")]
    Gateway { detail: String },
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
    /// Force one inbound attribution plan; `None` picks the best that works.
    pub inbound: Option<InboundHooks>,
    /// What the local-signal programs watch (program names, environment
    /// prefix, listening ports).
    pub local: crate::local::LocalWatch,
    /// Capacity of the gateway flow table (`GW_FLOWS`); 1 when gateway
    /// mode is off.
    pub gateway_max_flows: u32,
}

/// Checks everything that can be checked before touching the kernel, so that
/// the user gets one clear sentence instead of a verifier dump.
pub fn preflight() -> Result<(), KernelError> {
    check_capabilities()?;
    if !Path::new(VMLINUX_BTF).exists() {
        return Err(KernelError::NoBtf);
    }
    Ok(())
}

fn check_capabilities() -> Result<(), KernelError> {
    use caps::Capability::{CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN};
    // The same read of the effective set as `privileges` (capget).
    let eff = caps::read(None, caps::CapSet::Effective).unwrap_or_default();
    if eff.contains(&CAP_SYS_ADMIN) || (eff.contains(&CAP_BPF) && eff.contains(&CAP_PERFMON)) {
        Ok(())
    } else {
        Err(KernelError::MissingCapabilities)
    }
}

/// Reads the `struct sock` offsets the programs need from the kernel's BTF.
pub fn kernel_offsets(btf_path: &Path) -> Result<KernelOffsets, KernelError> {
    let btf = btf_rs::Btf::from_file(btf_path).map_err(|e| KernelError::BadBtf(e.to_string()))?;
    let off = |st: &str, member: &str| -> Result<u32, KernelError> {
        member_offset(&btf, st, member)
            .ok_or_else(|| KernelError::BadBtf(format!("no member {st}.{member}")))
    };
    // `struct sock` begins with its `struct sock_common`.
    if off("sock", "__sk_common")? != 0 {
        return Err(KernelError::BadBtf(
            "sock.__sk_common is not at offset 0".into(),
        ));
    }
    Ok(KernelOffsets {
        skc_daddr: off("sock_common", "skc_daddr")?,
        skc_rcv_saddr: off("sock_common", "skc_rcv_saddr")?,
        skc_dport: off("sock_common", "skc_dport")?,
        skc_num: off("sock_common", "skc_num")?,
        skc_family: off("sock_common", "skc_family")?,
        skc_v6_daddr: off("sock_common", "skc_v6_daddr")?,
        skc_v6_rcv_saddr: off("sock_common", "skc_v6_rcv_saddr")?,
        sk_protocol: off("sock", "sk_protocol")?,
        inet_sport: off("inet_sock", "inet_sport")?,
    })
}

/// Byte offset of `member` in `struct name`, looking inside anonymous
/// structs and unions as C does.
pub(crate) fn member_offset(btf: &btf_rs::Btf, name: &str, member: &str) -> Option<u32> {
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
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KernelCounters {
    pub connect_seen: u64,
    pub inbound_seen: u64,
    pub connect_hit: u64,
    pub inbound_hit: u64,
    pub events_sent: u64,
    pub ringbuf_full: u64,
    pub pending_full: u64,
    pub inbound_attributed: u64,
    pub relay_other_port: u64,
    pub inbound_unattributed: u64,
    pub connect_blocked: u64,
    pub inbound_blocked: u64,
    pub would_block: u64,
    pub block_excepted: u64,
    /// Local signals (see `sensor_common::counter`, 14 and up); default 0
    /// when read from a stats file written before they existed.
    #[serde(default)]
    pub exec_seen: u64,
    #[serde(default)]
    pub exec_name_hit: u64,
    #[serde(default)]
    pub exec_env_hit: u64,
    #[serde(default)]
    pub exec_env_partial: u64,
    #[serde(default)]
    pub exec_env_unreadable: u64,
    #[serde(default)]
    pub exec_sent: u64,
    #[serde(default)]
    pub exec_ringbuf_full: u64,
    #[serde(default)]
    pub listen_seen: u64,
    #[serde(default)]
    pub listen_hit: u64,
    /// DNS lookups for Tor (`sensor_common::counter::DNS_*`); default 0
    /// in a stats file written before they existed.
    #[serde(default)]
    pub dns_seen: u64,
    #[serde(default)]
    pub dns_hit: u64,
    #[serde(default)]
    pub dns_sent: u64,
    #[serde(default)]
    pub dns_ringbuf_full: u64,
    #[serde(default)]
    pub dns_unparsed: u64,
    #[serde(default)]
    pub dns_no_process: u64,
    #[serde(default)]
    pub dns_sock_recorded: u64,
    /// Gateway mode (`sensor_common::counter::GW_*`).
    #[serde(default)]
    pub gw_packets: u64,
    #[serde(default)]
    pub gw_syn_seen: u64,
    #[serde(default)]
    pub gw_hit: u64,
    #[serde(default)]
    pub gw_events_sent: u64,
    #[serde(default)]
    pub gw_ringbuf_full: u64,
    #[serde(default)]
    pub gw_flows_full: u64,
    #[serde(default)]
    pub gw_unparsed: u64,
    #[serde(default)]
    pub gw_flow_packets: u64,
}

/// Loaded and attached programs. Dropping it detaches everything.
pub struct Probes {
    ebpf: Ebpf,
    logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
    sets: [SetContents; 2],
    /// What the kernel's `PREFILTER` bitmap holds.
    prefilter: Vec<u64>,
    active: usize,
    last_flip: Option<Instant>,
    max_entries: u32,
    plan: Option<HookPlan>,
    /// The exec program: attached, or why not (`None` before `load`).
    exec_hook: Option<Result<(), String>>,
}

impl Probes {
    /// Loads the programs, fills the tries from `feeds`, attaches the state
    /// program and the best inbound plan that works here (or the one
    /// `opts.inbound` forces).
    pub fn load(opts: &LoadOptions, feeds: &FeedSet) -> Result<Self, KernelError> {
        let mut probes = Self::open(opts)?;
        probes.apply_feeds(feeds)?;
        probes.with_btf(|probes, btf| {
            probes.attach_required(&[STATE_PROGRAM], btf)?;
            probes.plan = Some(probes.choose_inbound(opts.inbound, btf)?);
            probes.exec_hook = Some(probes.attach_exec(btf));
            Ok(())
        })?;
        probes.fill_local(&opts.local)?;
        if let Some(Err(reason)) = &probes.exec_hook {
            tracing::warn!(
                "program starts are not watched (rule TORSENSOR-005 cannot fire): {reason}"
            );
        }
        Ok(probes)
    }

    /// Loads the maps like `load`, but attaches only `hook_floor`, an empty
    /// program, where `sock_state` goes: the benchmark's measure of what the
    /// hook costs by itself. With `syscalls`, also an empty program on the
    /// raw syscall-entry tracepoint (what a syscall-based plan would pay
    /// before doing anything).
    pub fn load_hook_floor(opts: &LoadOptions, syscalls: bool) -> Result<Self, KernelError> {
        let mut probes = Self::open(opts)?;
        probes.with_btf(|probes, btf| {
            probes.attach_required(&[("hook_floor", STATE_PROGRAM.1)], btf)?;
            if syscalls {
                probes.attach_required(&[("syscall_floor", Hook::Tracepoint("sys_enter"))], btf)?;
            }
            Ok(())
        })?;
        Ok(probes)
    }

    /// Runs `attach` with the kernel's BTF (which loading programs needs),
    /// then gives the BTF's parse memory (several MiB) back.
    fn with_btf(
        &mut self,
        attach: impl FnOnce(&mut Self, &Btf) -> Result<(), KernelError>,
    ) -> Result<(), KernelError> {
        let btf = Btf::from_sys_fs().map_err(|e| KernelError::BadBtf(e.to_string()))?;
        let result = attach(self, &btf);
        drop(btf);
        crate::sys::release_free_heap();
        result
    }

    /// The hooks in use (after `load`).
    pub fn plan(&self) -> Option<&HookPlan> {
        self.plan.as_ref()
    }

    /// Attaches each (program, hook); any failure is the caller's error.
    fn attach_required(
        &mut self,
        programs: &[(&'static str, Hook)],
        btf: &Btf,
    ) -> Result<(), KernelError> {
        for &(name, hook) in programs {
            self.attach(name, hook, btf)
                .map_err(|source| KernelError::Hook {
                    hook,
                    detail: format!("program {name}: {}", short_reason(&source)),
                })?;
        }
        Ok(())
    }

    /// Attaches the first inbound plan whose programs all load and attach
    /// (only `forced`, if given), undoing a plan that half worked.
    fn choose_inbound(
        &mut self,
        forced: Option<InboundHooks>,
        btf: &Btf,
    ) -> Result<HookPlan, KernelError> {
        let candidates = match forced {
            Some(plan) => vec![plan],
            None => InboundHooks::BEST_FIRST.to_vec(),
        };
        let mut unavailable = Vec::new();
        for plan in candidates {
            match self.attach_plan(plan, btf) {
                Ok(()) => return Ok(HookPlan::new(plan, unavailable)),
                Err(reason) if forced.is_some() => {
                    return Err(KernelError::InboundPlan { plan, reason });
                }
                Err(reason) => unavailable.push(Unavailable { plan, reason }),
            }
        }
        unreachable!("close-only attaches nothing, so it cannot fail")
    }

    /// All of `plan`'s programs, or none of them and the first reason.
    fn attach_plan(&mut self, plan: InboundHooks, btf: &Btf) -> Result<(), String> {
        for (i, &(name, hook)) in plan.programs().iter().enumerate() {
            if let Err(e) = self.attach(name, hook, btf) {
                for &(done, _) in &plan.programs()[..=i] {
                    self.unload(done);
                }
                return Err(format!("{hook}: {}", short_reason(&e)));
            }
        }
        Ok(())
    }

    /// Creates the maps (programs neither loaded nor attached): what `load`
    /// starts with, and what the feed benchmark measures map updates on.
    pub fn open(opts: &LoadOptions) -> Result<Self, KernelError> {
        if !crate::sys::raise_memlock_limit() {
            tracing::debug!("could not raise RLIMIT_MEMLOCK (fine on kernels >= 5.11)");
        }
        let offsets = kernel_offsets(Path::new(VMLINUX_BTF))?;
        let exec_offsets = local::exec_offsets(Path::new(VMLINUX_BTF))?;
        let env_pattern = opts.local.env_pattern();
        let audit: u32 = opts.audit_all.into();
        let log_level: u8 = if opts.kernel_log {
            aya_log::Level::Trace as u8
        } else {
            0
        };
        let mut ebpf = EbpfLoader::new()
            .override_global("AUDIT_ALL", &audit, true)
            .override_global("KOFFSETS", &offsets, true)
            .override_global("EXEC_OFFSETS", &exec_offsets, true)
            .override_global("ENV_PATTERN", &env_pattern, true)
            .override_global(aya_log::LEVEL, &log_level, true)
            .map_max_entries("TOR_V4_0", opts.max_entries)
            .map_max_entries("TOR_V6_0", opts.max_entries)
            .map_max_entries("OR_PORTS_0", opts.max_entries)
            .map_max_entries("TOR_V4_1", opts.max_entries)
            .map_max_entries("TOR_V6_1", opts.max_entries)
            .map_max_entries("OR_PORTS_1", opts.max_entries)
            .map_max_entries("EVENTS", opts.ring_buffer_bytes)
            .map_max_entries("GW_FLOWS", opts.gateway_max_flows.max(1))
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
            logger,
            sets: Default::default(),
            prefilter: vec![0; prefilter::WORDS as usize],
            active: 0,
            last_flip: None,
            max_entries: opts.max_entries,
            plan: None,
            exec_hook: None,
        })
    }

    /// Loads program `name` and attaches it at `hook`.
    fn attach(&mut self, name: &'static str, hook: Hook, btf: &Btf) -> Result<(), ProgramError> {
        let program = self
            .ebpf
            .program_mut(name)
            .ok_or(ProgramError::UnexpectedProgramType)?;
        match hook {
            Hook::Tracepoint(tracepoint) => {
                let p: &mut BtfTracePoint = program.try_into()?;
                p.load(tracepoint, btf)?;
                p.attach().map(drop)
            }
            Hook::FEntry(function) => {
                let p: &mut FEntry = program.try_into()?;
                p.load(function, btf)?;
                p.attach().map(drop)
            }
            Hook::KProbe(function) => {
                let p: &mut KProbe = program.try_into()?;
                p.load()?;
                p.attach(function, 0).map(drop)
            }
        }
    }

    /// Detaches and unloads program `name` if it is loaded.
    fn unload(&mut self, name: &str) {
        if let Some(program) = self.ebpf.program_mut(name) {
            unload_program(name, program);
        }
    }

    /// Detaches and unloads every program; the maps stay readable.
    pub fn detach(&mut self) {
        for (name, program) in self.ebpf.programs_mut() {
            unload_program(name, program);
        }
    }

    /// Takes ring buffer `name` (once).
    fn take_ring(&mut self, name: &'static str) -> Result<RingBuf<MapData>, KernelError> {
        let map = self
            .ebpf
            .take_map(name)
            .ok_or(KernelError::MissingMap(name))?;
        RingBuf::try_from(map).map_err(|source| KernelError::Map { name, source })
    }

    /// Takes the event ring buffer (once).
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>, KernelError> {
        self.take_ring("EVENTS")
    }

    /// Takes the kernel log reader, if kernel logging is on.
    pub fn take_logger(&mut self) -> Option<aya_log::EbpfLogger<&'static dyn log::Log>> {
        self.logger.take()
    }

    /// Sums the per-CPU counters.
    pub fn counters(&self) -> Result<KernelCounters, KernelError> {
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
        Ok(KernelCounters {
            connect_seen: get(counter::CONNECT_SEEN),
            inbound_seen: get(counter::INBOUND_SEEN),
            connect_hit: get(counter::CONNECT_HIT),
            inbound_hit: get(counter::INBOUND_HIT),
            events_sent: get(counter::EVENTS_SENT),
            ringbuf_full: get(counter::RINGBUF_FULL),
            pending_full: get(counter::PENDING_FULL),
            inbound_attributed: get(counter::INBOUND_ATTRIBUTED),
            relay_other_port: get(counter::RELAY_OTHER_PORT),
            inbound_unattributed: get(counter::INBOUND_UNATTRIBUTED),
            connect_blocked: get(counter::CONNECT_BLOCKED),
            inbound_blocked: get(counter::INBOUND_BLOCKED),
            would_block: get(counter::WOULD_BLOCK),
            block_excepted: get(counter::BLOCK_EXCEPTED),
            exec_seen: get(counter::EXEC_SEEN),
            exec_name_hit: get(counter::EXEC_NAME_HIT),
            exec_env_hit: get(counter::EXEC_ENV_HIT),
            exec_env_partial: get(counter::EXEC_ENV_PARTIAL),
            exec_env_unreadable: get(counter::EXEC_ENV_UNREADABLE),
            exec_sent: get(counter::EXEC_SENT),
            exec_ringbuf_full: get(counter::EXEC_RINGBUF_FULL),
            listen_seen: get(counter::LISTEN_SEEN),
            listen_hit: get(counter::LISTEN_HIT),
            dns_seen: get(counter::DNS_SEEN),
            dns_hit: get(counter::DNS_HIT),
            dns_sent: get(counter::DNS_SENT),
            dns_ringbuf_full: get(counter::DNS_RINGBUF_FULL),
            dns_unparsed: get(counter::DNS_UNPARSED),
            dns_no_process: get(counter::DNS_NO_PROCESS),
            dns_sock_recorded: get(counter::DNS_SOCK_RECORDED),
            gw_packets: get(counter::GW_PACKETS),
            gw_syn_seen: get(counter::GW_SYN_SEEN),
            gw_hit: get(counter::GW_HIT),
            gw_events_sent: get(counter::GW_EVENTS_SENT),
            gw_ringbuf_full: get(counter::GW_RINGBUF_FULL),
            gw_flows_full: get(counter::GW_FLOWS_FULL),
            gw_unparsed: get(counter::GW_UNPARSED),
            gw_flow_packets: get(counter::GW_FLOW_PACKETS),
        })
    }

    /// Hits that have waited too long in the kernel's pending maps, taken
    /// out and returned so that they are not held back any longer:
    /// - inbound hits no process has used within `inbound_wait` (never
    ///   accepted, or accepted and left idle), with `FLAG_NO_PROCESS`;
    /// - outbound attempts still unanswered after `OUTBOUND_STALE` (no
    ///   local port yet), which the caller reports as incomplete.
    ///
    /// Each removal is added to the map's sync slot, which keeps the
    /// programs' fast path exact (see `sensor_common::pending`).
    pub fn sweep(&mut self, inbound_wait: Duration) -> Swept {
        let mut inbound = self.sweep_map("PENDING_IN", pending::IN_SYNC, inbound_wait);
        for ev in &mut inbound {
            ev.flags |= FLAG_NO_PROCESS;
        }
        let outbound_stale = self.sweep_map("PENDING_OUT", pending::OUT_SYNC, OUTBOUND_STALE);
        Swept {
            inbound,
            outbound_stale,
        }
    }

    /// Removes and returns the entries of `map` older than `age`, and adds
    /// their number to the sync slot `sync`.
    fn sweep_map(&mut self, map: &'static str, sync: u32, age: Duration) -> Vec<ConnEvent> {
        let now = crate::sys::boot_time_ns();
        let age = age.as_nanos() as u64;
        let mut out = Vec::new();
        if let Some(m) = self.ebpf.map_mut(map)
            && let Ok(mut hash) = BpfHashMap::<&mut MapData, u64, ConnEvent>::try_from(m)
        {
            let old: Vec<(u64, ConnEvent)> = hash
                .iter()
                .filter_map(Result::ok)
                .filter(|(_, ev)| now.saturating_sub(ev.ts_boot_ns) >= age)
                .collect();
            for (sk, ev) in old {
                // A program may have taken it meanwhile: whoever removes
                // the entry sends it.
                if hash.remove(&sk).is_ok() {
                    out.push(ev);
                }
            }
        }
        if !out.is_empty() {
            // Only the daemon writes this slot, so read-add-write is safe.
            match array_mut::<u64>(&mut self.ebpf, "PENDING_COUNT") {
                Ok(mut counts) => {
                    let synced = counts.get(&sync, 0).unwrap_or(0);
                    if let Err(e) = counts.set(sync, synced.wrapping_add(out.len() as u64), 0) {
                        tracing::warn!("PENDING_COUNT: {e}; the programs stay on the slow path");
                    }
                }
                Err(e) => tracing::warn!("{e}; the programs stay on the slow path"),
            }
        }
        out
    }

    /// Hits still waiting in the kernel (an outbound attempt not yet answered,
    /// an inbound connection no process has used yet). Read at shutdown so that they
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

/// Detaches and unloads `program` if it is loaded (of the kinds the plans
/// use).
fn unload_program(name: &str, program: &mut Program) {
    let result = match program {
        Program::BtfTracePoint(p) if p.fd().is_ok() => p.unload(),
        Program::FEntry(p) if p.fd().is_ok() => p.unload(),
        Program::KProbe(p) if p.fd().is_ok() => p.unload(),
        Program::CgroupSockAddr(p) if p.fd().is_ok() => p.unload(),
        Program::CgroupSkb(p) if p.fd().is_ok() => p.unload(),
        Program::SchedClassifier(p) if p.fd().is_ok() => p.unload(),
        _ => Ok(()),
    };
    if let Err(e) = result {
        tracing::warn!("detaching {name}: {e}");
    }
}

/// Why a program could not be loaded or attached, in one line: the
/// verifier's log (which can run to thousands of lines) goes to the debug
/// log, not into the reason.
pub(crate) fn short_reason(e: &ProgramError) -> String {
    match e {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            tracing::debug!("verifier log:\n{verifier_log}");
            format!(
                "the kernel refused to load it: {io_error} (the verifier's log is in --log debug)"
            )
        }
        ProgramError::SyscallError(e) => format!("{}: {}", e.call, e.io_error),
        other => {
            let mut text = other.to_string();
            let mut source = std::error::Error::source(other);
            while let Some(s) = source {
                text.push_str(": ");
                text.push_str(&s.to_string());
                source = s.source();
            }
            text
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        // sock_common opens with the address pair, then the hash, then the
        // port pair (dport, num), then the family: stable since Linux 4.x.
        assert_eq!(o.skc_daddr, 0);
        assert_eq!(o.skc_rcv_saddr, 4);
        assert_eq!(o.skc_dport, 12);
        assert_eq!(o.skc_num, 14);
        assert_eq!(o.skc_family, 16);
        assert!(o.skc_v6_daddr > 16 && o.skc_v6_rcv_saddr > o.skc_v6_daddr);
        assert!(o.sk_protocol > o.skc_v6_rcv_saddr);
        // `struct inet_sock` starts with the whole `struct sock`.
        assert!(o.inet_sport > o.sk_protocol);
    }
}
