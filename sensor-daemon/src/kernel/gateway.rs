//! Gateway mode, kernel side (issue 17): the TC programs `gateway_ingress`
//! and `gateway_egress` on a router's interfaces, their interface table
//! (`GW_IFACES`), the hit ring buffer (`GW_EVENTS`) and the flow table
//! (`GW_FLOWS`) the daemon sweeps for ended and idle flows.
//!
//! How they attach: as TCX links (Linux 6.6+: a `bpf_link` per interface
//! and hook, gone when this process exits however it exits, next to any
//! other TCX program), or as netlink TC filters on a `clsact` qdisc (older
//! kernels; the filters are removed at exit, and a filter a killed sensor
//! left behind is removed at the next start). `auto` takes TCX where the
//! kernel has it; the choice is logged and in `torsensor_gateway_info`.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use aya::maps::{HashMap as BpfHashMap, MapData, RingBuf};
use aya::programs::tc::{self, NlOptions, TcAttachOptions};
use aya::programs::{LinkOrder, SchedClassifier, TcAttachType};
use aya::util::KernelVersion;
use sensor_common::{
    DIR_EGRESS, DIR_INGRESS, FlowKey, FlowStats, GatewayEvent, GwIface, MatchInfo, gateway,
};

use super::event::{BootClock, EventError, addr};
use super::maps::array_mut;
use super::{KernelError, Probes, short_reason};
use crate::net::Direction;

/// The two programs and the hook each goes on.
const PROGRAMS: [(&str, TcAttachType); 2] = [
    ("gateway_ingress", TcAttachType::Ingress),
    ("gateway_egress", TcAttachType::Egress),
];

/// How the TC programs are attached (`[gateway] attach`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TcMode {
    /// TCX where the kernel has it (6.6+), else netlink.
    #[default]
    Auto,
    /// TCX links (Linux 6.6+).
    Tcx,
    /// Netlink TC filters on a `clsact` qdisc (any kernel).
    Netlink,
}

impl TcMode {
    pub fn as_str(self) -> &'static str {
        match self {
            TcMode::Auto => "auto",
            TcMode::Tcx => "tcx",
            TcMode::Netlink => "netlink",
        }
    }

    /// What `auto` means on this kernel.
    pub fn resolve(self) -> TcMode {
        match self {
            TcMode::Auto
                if KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0)) =>
            {
                TcMode::Tcx
            }
            TcMode::Auto => TcMode::Netlink,
            other => other,
        }
    }
}

impl fmt::Display for TcMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which side of the router an interface faces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Side {
    Inside,
    Outside,
}

impl Side {
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Inside => "inside",
            Side::Outside => "outside",
        }
    }

    fn kernel(self) -> u8 {
        match self {
            Side::Inside => gateway::ROLE_INSIDE,
            Side::Outside => gateway::ROLE_OUTSIDE,
        }
    }

    fn from_kernel(role: u8) -> Self {
        if role == gateway::ROLE_OUTSIDE {
            Side::Outside
        } else {
            Side::Inside
        }
    }
}

/// Where on an interface a packet was seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcHook {
    Ingress,
    Egress,
}

impl TcHook {
    pub fn as_str(self) -> &'static str {
        match self {
            TcHook::Ingress => "ingress",
            TcHook::Egress => "egress",
        }
    }

    fn from_kernel(hook: u8) -> Self {
        if hook == gateway::HOOK_EGRESS {
            TcHook::Egress
        } else {
            TcHook::Ingress
        }
    }
}

/// One interface to attach to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayInterface {
    pub name: String,
    pub side: Side,
}

/// An interface as the kernel knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    pub ifindex: u32,
    /// Bytes before the network header (14 on Ethernet, 0 on an L3 device).
    pub l3_offset: u8,
}

/// Reads `/sys/class/net/NAME/{ifindex,type}`: the interface's index and
/// where its packets' network header starts. An error names the interface.
pub fn link_info(name: &str) -> Result<LinkInfo, String> {
    let dir = std::path::Path::new("/sys/class/net").join(name);
    let read = |file: &str| -> Result<u32, String> {
        let text = std::fs::read_to_string(dir.join(file)).map_err(|_| {
            format!("no network interface named {name:?} in this network namespace")
        })?;
        text.trim()
            .parse()
            .map_err(|_| format!("interface {name:?}: unreadable {file}"))
    };
    let ifindex = read("ifindex")?;
    // ARPHRD_ETHER (and loopback, which has an all-zero Ethernet header)
    // carry 14 bytes of link header; ARPHRD_NONE (tun, WireGuard) none.
    let l3_offset = match read("type")? {
        1 | 772 => 14,
        65534 => 0,
        other => {
            return Err(format!(
                "interface {name:?} has link type {other}: gateway mode supports Ethernet-like (1) and L3 (65534: tun, WireGuard) interfaces"
            ));
        }
    };
    Ok(LinkInfo { ifindex, l3_offset })
}

/// What attaching did, for the start-up log and the metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayAttach {
    /// TCX or netlink (never auto).
    pub mode: TcMode,
    /// `auto` resolved, or the configured mode.
    pub configured: TcMode,
    /// ifindex -> (name, side).
    pub interfaces: BTreeMap<u32, (String, Side)>,
}

impl fmt::Display for GatewayAttach {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list: Vec<String> = self
            .interfaces
            .values()
            .map(|(name, side)| format!("{name} ({})", side.as_str()))
            .collect();
        write!(
            f,
            "gateway programs on {} as {} (attach = {}), ingress and egress",
            list.join(", "),
            match self.mode {
                TcMode::Tcx => "TCX links",
                _ => "netlink TC filters (clsact)",
            },
            self.configured
        )
    }
}

/// A gateway hit, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayHit {
    pub time: SystemTime,
    /// The inside host's address and port (pre-NAT on an inside interface).
    pub inside: SocketAddr,
    pub outside: SocketAddr,
    /// `Egress`: the inside host opened the flow (to a relay or exit);
    /// `Ingress`: the outside host did (from an exit, to an inside server).
    pub direction: Direction,
    pub interface: String,
    pub side: Side,
    pub hook: TcHook,
    pub matched: MatchInfo,
    /// The flow is tracked (a summary will follow).
    pub tracked: bool,
}

/// Why a flow's summary was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FlowEnd {
    /// A FIN each way.
    Fin,
    /// A RST.
    Rst,
    /// No packet for `flow_idle_timeout`.
    Idle,
    /// Still open when the sensor stopped.
    Shutdown,
}

impl FlowEnd {
    pub fn as_str(self) -> &'static str {
        match self {
            FlowEnd::Fin => "fin",
            FlowEnd::Rst => "rst",
            FlowEnd::Idle => "idle",
            FlowEnd::Shutdown => "shutdown",
        }
    }
}

/// A tracked flow's summary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowSummary {
    pub hit: GatewayHit,
    pub last: SystemTime,
    pub bytes_out: u64,
    pub packets_out: u64,
    pub bytes_in: u64,
    pub packets_in: u64,
    pub end: FlowEnd,
}

/// Turns the kernel's records into hits and summaries.
#[derive(Debug, Clone, Default)]
pub struct GatewayDecoder {
    /// ifindex -> (name, side).
    pub interfaces: BTreeMap<u32, (String, Side)>,
}

impl GatewayDecoder {
    fn interface(&self, ifindex: u32) -> String {
        self.interfaces
            .get(&ifindex)
            .map(|(n, _)| n.clone())
            .unwrap_or_else(|| format!("ifindex {ifindex}"))
    }

    /// A `GW_EVENTS` record.
    pub fn hit(&self, bytes: &[u8], clock: &BootClock) -> Result<GatewayHit, EventError> {
        let ev: GatewayEvent =
            super::event::decode_pod(bytes).ok_or(EventError::GatewaySize(bytes.len()))?;
        Ok(GatewayHit {
            time: clock.wall(ev.ts_boot_ns),
            inside: SocketAddr::new(addr(ev.family, &ev.inside_addr)?, ev.inside_port),
            outside: SocketAddr::new(addr(ev.family, &ev.outside_addr)?, ev.outside_port),
            direction: direction(ev.direction)?,
            interface: self.interface(ev.ifindex),
            side: Side::from_kernel(ev.role),
            hook: TcHook::from_kernel(ev.hook),
            matched: ev.matched,
            tracked: ev.flags & gateway::FLAG_NOT_TRACKED == 0,
        })
    }

    /// A `GW_FLOWS` entry.
    pub fn flow(
        &self,
        key: &FlowKey,
        f: &FlowStats,
        end: FlowEnd,
        clock: &BootClock,
    ) -> Result<FlowSummary, EventError> {
        Ok(FlowSummary {
            hit: GatewayHit {
                time: clock.wall(f.first_ns),
                inside: SocketAddr::new(addr(key.family, &key.inside_addr)?, key.inside_port),
                outside: SocketAddr::new(addr(key.family, &key.outside_addr)?, key.outside_port),
                direction: direction(f.direction)?,
                interface: self.interface(f.ifindex),
                side: Side::from_kernel(f.role),
                hook: TcHook::from_kernel(f.hook),
                matched: f.matched,
                tracked: true,
            },
            last: clock.wall(f.last_ns),
            bytes_out: f.bytes_out,
            packets_out: f.packets_out,
            bytes_in: f.bytes_in,
            packets_in: f.packets_in,
            end,
        })
    }
}

fn direction(d: u8) -> Result<Direction, EventError> {
    match d {
        DIR_EGRESS => Ok(Direction::Egress),
        DIR_INGRESS => Ok(Direction::Ingress),
        other => Err(EventError::Direction(other)),
    }
}

/// Whether a flow is over: a RST, or a FIN each way and `linger` since the
/// last packet (the last ACK); or idle for `idle`.
pub fn flow_end(f: &FlowStats, now_ns: u64, linger: Duration, idle: Duration) -> Option<FlowEnd> {
    let quiet = now_ns.saturating_sub(f.last_ns);
    if quiet < linger.as_nanos() as u64 {
        return None;
    }
    if f.rst != 0 {
        Some(FlowEnd::Rst)
    } else if f.fin_inside != 0 && f.fin_outside != 0 {
        Some(FlowEnd::Fin)
    } else if quiet >= idle.as_nanos() as u64 {
        Some(FlowEnd::Idle)
    } else {
        None
    }
}

impl Probes {
    /// Loads the gateway programs and attaches them to both hooks of each
    /// interface. Any failure is the caller's error (a gateway sensor that
    /// does not watch is worse than one that is down); what was attached
    /// is detached with the other programs.
    pub fn attach_gateway(
        &mut self,
        interfaces: &[GatewayInterface],
        configured: TcMode,
    ) -> Result<GatewayAttach, KernelError> {
        let mode = configured.resolve();
        let fail = |detail: String| KernelError::Gateway { detail };
        let mut table = BTreeMap::new();
        {
            let name = "GW_IFACES";
            let map = self
                .ebpf
                .map_mut(name)
                .ok_or(KernelError::MissingMap(name))?;
            let mut ifaces: BpfHashMap<&mut MapData, u32, GwIface> =
                BpfHashMap::try_from(map).map_err(|source| KernelError::Map { name, source })?;
            for i in interfaces {
                let info = link_info(&i.name).map_err(fail)?;
                let entry = GwIface {
                    role: i.side.kernel(),
                    l3_offset: info.l3_offset,
                    _pad: [0; 2],
                };
                ifaces
                    .insert(info.ifindex, entry, 0)
                    .map_err(|source| KernelError::Map { name, source })?;
                table.insert(info.ifindex, (i.name.clone(), i.side));
            }
        }
        for (program, _) in PROGRAMS {
            let p = self.classifier(program)?;
            p.load().map_err(|e| {
                fail(format!(
                    "{program}: {}{}",
                    short_reason(&e),
                    super::local::verifier_tail(&e)
                ))
            })?;
        }
        for i in interfaces {
            if mode == TcMode::Netlink {
                // EEXIST: the interface has its clsact already (ours from a
                // run that was killed, or someone else's): fine.
                if let Err(e) = tc::qdisc_add_clsact(&i.name)
                    && !e.to_string().contains("exists")
                {
                    tracing::debug!("clsact on {}: {e}", i.name);
                }
            }
            for (program, hook) in PROGRAMS {
                if mode == TcMode::Netlink {
                    // A filter a killed sensor left behind (netlink filters
                    // outlive their process, TCX links do not).
                    if tc::qdisc_detach_program(&i.name, hook, program).is_ok() {
                        tracing::warn!(
                            "gateway: removed a stale {program} filter from {} (a previous run did not stop cleanly)",
                            i.name
                        );
                    }
                }
                let options = match mode {
                    TcMode::Tcx => TcAttachOptions::TcxOrder(LinkOrder::default()),
                    _ => TcAttachOptions::Netlink(NlOptions::default()),
                };
                let p = self.classifier(program)?;
                p.attach_with_options(&i.name, hook, options).map_err(|e| {
                    fail(format!(
                        "{program} on {} ({mode}): {}",
                        i.name,
                        short_reason(&e)
                    ))
                })?;
            }
        }
        Ok(GatewayAttach {
            mode,
            configured,
            interfaces: table,
        })
    }

    /// Gateway program `name`, as the TC program it is.
    fn classifier(&mut self, name: &'static str) -> Result<&mut SchedClassifier, KernelError> {
        self.ebpf
            .program_mut(name)
            .ok_or(KernelError::MissingMap(name))?
            .try_into()
            .map_err(|source| KernelError::Program { name, source })
    }

    /// Takes the gateway hit ring buffer (once).
    pub fn take_gateway_events(&mut self) -> Result<RingBuf<MapData>, KernelError> {
        self.take_ring("GW_EVENTS")
    }

    /// Takes out of `GW_FLOWS` the flows `ended` says are over (or all of
    /// them, at shutdown: `ended` returning `Some` for each) and returns
    /// them; each removal is added to the sync slot of `GW_FLOW_COUNT`, so
    /// that the programs' fast path stays exact.
    pub fn sweep_flows(
        &mut self,
        mut ended: impl FnMut(&FlowStats) -> Option<FlowEnd>,
    ) -> Vec<(FlowKey, FlowStats, FlowEnd)> {
        let mut out = Vec::new();
        if let Some(m) = self.ebpf.map_mut("GW_FLOWS")
            && let Ok(mut hash) = BpfHashMap::<&mut MapData, FlowKey, FlowStats>::try_from(m)
        {
            let over: Vec<(FlowKey, FlowStats, FlowEnd)> = hash
                .iter()
                .filter_map(Result::ok)
                .filter_map(|(k, f)| ended(&f).map(|e| (k, f, e)))
                .collect();
            for (k, _, e) in over {
                // Read again just before the removal: the counts of the
                // packets since the iteration are in.
                let f = hash.get(&k, 0);
                if let Ok(f) = f
                    && hash.remove(&k).is_ok()
                {
                    out.push((k, f, e));
                }
            }
        }
        if !out.is_empty() {
            match array_mut::<u64>(&mut self.ebpf, "GW_FLOW_COUNT") {
                Ok(mut counts) => {
                    let slot = gateway::COUNT_SYNC;
                    let synced = counts.get(&slot, 0).unwrap_or(0);
                    if let Err(e) = counts.set(slot, synced.wrapping_add(out.len() as u64), 0) {
                        tracing::warn!("GW_FLOW_COUNT: {e}; the programs stay on the slow path");
                    }
                }
                Err(e) => tracing::warn!("{e}; the programs stay on the slow path"),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flow_ends_on_rst_fin_both_ways_or_idle() {
        let s = Duration::from_secs;
        let mut f = FlowStats {
            last_ns: s(10).as_nanos() as u64,
            ..FlowStats::default()
        };
        let at = |secs: u64| s(secs).as_nanos() as u64;
        assert_eq!(flow_end(&f, at(12), s(1), s(60)), None);
        f.fin_inside = 1;
        assert_eq!(flow_end(&f, at(12), s(1), s(60)), None, "one FIN only");
        f.fin_outside = 1;
        assert_eq!(flow_end(&f, at(10), s(1), s(60)), None, "lingers");
        assert_eq!(flow_end(&f, at(12), s(1), s(60)), Some(FlowEnd::Fin));
        f.rst = 1;
        assert_eq!(flow_end(&f, at(12), s(1), s(60)), Some(FlowEnd::Rst));
        let idle = FlowStats {
            last_ns: at(10),
            ..FlowStats::default()
        };
        assert_eq!(flow_end(&idle, at(69), s(1), s(60)), None);
        assert_eq!(flow_end(&idle, at(70), s(1), s(60)), Some(FlowEnd::Idle));
    }

    #[test]
    fn link_info_names_a_missing_interface() {
        let e = link_info("tsnope0").unwrap_err();
        assert!(e.contains("\"tsnope0\""), "{e}");
        let lo = link_info("lo").expect("lo exists");
        assert_eq!(lo.l3_offset, 14);
        assert_eq!(lo.ifindex, 1);
    }
}
