//! DNS lookups for Tor, kernel side (see [`crate::dns`] and the programs'
//! notes in `sensor-ebpf`): attaching `dns_connect4/6`, `dns_sendmsg4/6`
//! (cgroup sock_addr) and `dns_egress` (cgroup_skb) to a cgroup v2
//! directory with bpf_link, next to whatever else is there (opt-in
//! blocking's `block_connect4/6` included: a cgroup link always runs with
//! the others); filling `DNS_SUFFIXES` and `DNS_PORTS`; decoding
//! `DNS_EVENTS`.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::SystemTime;

use aya::maps::{Array, HashMap as BpfHashMap, MapData, RingBuf};
use aya::programs::{CgroupSkbAttachType, ProgramError};
use sensor_common::{DnsEvent, dns};

use super::event::{BootClock, KernelProcess, addr, comm};
use super::{KernelError, Probes, short_reason};
use crate::dns::{DnsWatch, QnameError, decode_qname};

/// The DNS programs, in the order they are attached.
pub const DNS_PROGRAMS: [&str; 5] = [
    "dns_connect4",
    "dns_connect6",
    "dns_sendmsg4",
    "dns_sendmsg6",
    "dns_egress",
];

/// A query the kernel sent, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsQuery {
    pub time: SystemTime,
    /// Lower case, no trailing dot.
    pub name: String,
    pub qtype: u16,
    pub server: SocketAddr,
    pub local_port: u16,
    pub tcp: bool,
    /// The caller of `connect()` / `sendmsg()`; `None` when the socket
    /// was not recorded (then `uid` and `cgroup_id` are the socket's).
    pub process: Option<KernelProcess>,
    pub uid: u32,
    pub cgroup_id: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DnsEventError {
    #[error("DNS ring buffer record of {0} bytes, expected {size}", size = size_of::<DnsEvent>())]
    Size(usize),
    #[error("DNS event: address family {0}")]
    Family(u16),
    #[error("DNS event: {0}")]
    Qname(#[from] QnameError),
}

/// Reads a `DNS_EVENTS` record.
pub fn decode_dns(bytes: &[u8]) -> Result<DnsEvent, DnsEventError> {
    super::event::decode_pod(bytes).ok_or(DnsEventError::Size(bytes.len()))
}

impl DnsQuery {
    pub fn from_event(ev: &DnsEvent, clock: &BootClock) -> Result<Self, DnsEventError> {
        let ip: IpAddr =
            addr(ev.family, &ev.server_addr).map_err(|_| DnsEventError::Family(ev.family))?;
        let used = (ev.qname_len as usize).min(dns::NAME_BUF);
        let name = decode_qname(&ev.qname[..used])?;
        let process =
            (ev.flags & dns::FLAG_NO_PROCESS == 0 && ev.tgid != 0).then(|| KernelProcess {
                tgid: ev.tgid,
                tid: ev.pid,
                uid: ev.uid,
                gid: ev.gid,
                comm: comm(&ev.comm),
                cgroup_id: ev.cgroup_id,
            });
        Ok(DnsQuery {
            time: clock.wall(ev.ts_boot_ns),
            name,
            qtype: ev.qtype,
            server: SocketAddr::new(ip, ev.server_port),
            local_port: ev.local_port,
            tcp: ev.transport == 6,
            process,
            uid: ev.uid,
            cgroup_id: ev.cgroup_id,
        })
    }
}

impl Probes {
    /// Fills the DNS maps and attaches the DNS programs to the cgroup v2
    /// directory `cgroup`. All or nothing: a program that fails detaches
    /// the ones before it, and the reason comes back in one line.
    pub fn attach_dns(
        &mut self,
        cgroup: &Path,
        watch: &DnsWatch,
        ports: &[u16],
    ) -> Result<(), String> {
        self.fill_dns(watch, ports).map_err(|e| e.to_string())?;
        let dir = std::fs::File::open(cgroup)
            .map_err(|e| format!("cannot open cgroup {}: {e}", cgroup.display()))?;
        for (i, name) in DNS_PROGRAMS.iter().enumerate() {
            if let Err(e) = self.attach_dns_program(name, &dir) {
                for done in &DNS_PROGRAMS[..=i] {
                    self.unload(done);
                }
                return Err(format!(
                    "{name} on cgroup {}: {}",
                    cgroup.display(),
                    short_reason(&e)
                ));
            }
        }
        Ok(())
    }

    fn attach_dns_program(&mut self, name: &str, dir: &std::fs::File) -> Result<(), ProgramError> {
        let skb = (name == "dns_egress").then_some(CgroupSkbAttachType::Egress);
        self.attach_cgroup_program(name, dir, skb)
    }

    fn fill_dns(&mut self, watch: &DnsWatch, ports: &[u16]) -> Result<(), KernelError> {
        let name = "DNS_SUFFIXES";
        let map = self
            .ebpf
            .map_mut(name)
            .ok_or(KernelError::MissingMap(name))?;
        let mut suffixes: BpfHashMap<&mut MapData, u64, u8> =
            BpfHashMap::try_from(map).map_err(|source| KernelError::Map { name, source })?;
        for key in watch.kernel_keys() {
            suffixes
                .insert(key, 1, 0)
                .map_err(|source| KernelError::Map { name, source })?;
        }
        let name = "DNS_PORTS";
        let map = self
            .ebpf
            .map_mut(name)
            .ok_or(KernelError::MissingMap(name))?;
        let mut bits: Array<&mut MapData, u64> =
            Array::try_from(map).map_err(|source| KernelError::Map { name, source })?;
        let mut words = vec![0u64; dns::PORT_WORDS as usize];
        for p in ports {
            words[*p as usize / 64] |= 1 << (p % 64);
        }
        for (i, w) in words.iter().enumerate().filter(|(_, w)| **w != 0) {
            bits.set(i as u32, *w, 0)
                .map_err(|source| KernelError::Map { name, source })?;
        }
        Ok(())
    }

    /// Takes the DNS ring buffer (once).
    pub fn take_dns_events(&mut self) -> Result<RingBuf<MapData>, KernelError> {
        self.take_ring("DNS_EVENTS")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn dns_events_decode() {
        let mut ev = DnsEvent::ZERO;
        ev.ts_boot_ns = 3_000_000_000;
        ev.family = sensor_common::AF_INET6;
        ev.server_addr = std::net::Ipv6Addr::LOCALHOST.octets();
        ev.server_port = 53;
        ev.transport = 6;
        ev.tgid = 42;
        ev.pid = 43;
        ev.comm[..3].copy_from_slice(b"dig");
        let name = b"\x03www\x0aTorProject\x03org\x00";
        ev.qname[..name.len()].copy_from_slice(name);
        ev.qname_len = name.len() as u16;
        ev.qtype = 28;
        // SAFETY: reading our own POD value as bytes.
        let bytes = unsafe {
            std::slice::from_raw_parts((&ev as *const DnsEvent).cast::<u8>(), size_of::<DnsEvent>())
        };
        let back = decode_dns(bytes).unwrap();
        let q = DnsQuery::from_event(&back, &BootClock::at(UNIX_EPOCH)).unwrap();
        assert_eq!(q.time, UNIX_EPOCH + Duration::from_secs(3));
        assert_eq!(q.name, "www.torproject.org");
        assert_eq!(q.server, "[::1]:53".parse().unwrap());
        assert!(q.tcp);
        assert_eq!(q.process.as_ref().unwrap().comm, "dig");
        assert_eq!(
            decode_dns(&bytes[1..]),
            Err(DnsEventError::Size(size_of::<DnsEvent>() - 1))
        );
        ev.flags = dns::FLAG_NO_PROCESS;
        let q = DnsQuery::from_event(&ev, &BootClock::at(UNIX_EPOCH)).unwrap();
        assert!(q.process.is_none());
        ev.qname_len = 4;
        assert!(DnsQuery::from_event(&ev, &BootClock::at(UNIX_EPOCH)).is_err());
    }
}
