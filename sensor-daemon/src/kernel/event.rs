//! Kernel events decoded into connections.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, SystemTime};

use sensor_common::{
    AF_INET, AF_INET6, COMM_LEN, ConnEvent, DIR_EGRESS, DIR_INGRESS, FLAG_AUDIT, FLAG_BLOCKED,
    FLAG_CONNECT_FAILED, FLAG_NO_PROCESS, FLAG_V4_MAPPED, MatchInfo,
};

use crate::net::{Direction, canonical_ip};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EventError {
    #[error("ring buffer record of {0} bytes, expected {size}", size = size_of::<ConnEvent>())]
    Size(usize),
    #[error("event with unknown address family {0}")]
    Family(u16),
    #[error("event with unknown direction {0}")]
    Direction(u8),
    #[error("gateway ring buffer record of {0} bytes, expected {size}", size = size_of::<sensor_common::GatewayEvent>())]
    GatewaySize(usize),
}

/// The process the kernel saw at connect/accept time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelProcess {
    pub tgid: u32,
    pub tid: u32,
    pub uid: u32,
    pub gid: u32,
    pub comm: String,
    pub cgroup_id: u64,
}

impl KernelProcess {
    /// The process fields of a connection or listener event.
    pub fn of(ev: &ConnEvent) -> Self {
        KernelProcess {
            tgid: ev.tgid,
            tid: ev.pid,
            uid: ev.uid,
            gid: ev.gid,
            comm: comm(&ev.comm),
            cgroup_id: ev.cgroup_id,
        }
    }
}

/// One reported connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connection {
    pub time: SystemTime,
    pub direction: Direction,
    /// Local end (IPv4-mapped IPv6 shown as IPv4).
    pub local: SocketAddr,
    /// Remote end (IPv4-mapped IPv6 shown as IPv4).
    pub remote: SocketAddr,
    /// The socket was IPv6 and the peer IPv4-mapped.
    pub v4_mapped: bool,
    /// Outbound attempt that failed (refused, timed out, reset).
    pub failed: bool,
    /// Reported by audit mode, not by a feed match.
    pub audit: bool,
    /// Still in progress when the sensor stopped (reported at shutdown).
    pub incomplete: bool,
    /// Refused by a blocking program (an outbound connect that failed in
    /// the caller, an inbound SYN dropped).
    pub blocked: bool,
    pub matched: MatchInfo,
    /// `None` when no process could be attributed.
    pub process: Option<KernelProcess>,
}

/// Converts the kernel's boot-time clock to wall-clock time.
#[derive(Debug, Clone, Copy)]
pub struct BootClock {
    wall_at_boot: SystemTime,
}

impl BootClock {
    pub fn now() -> Self {
        let since_boot = Duration::from_nanos(crate::sys::boot_time_ns());
        BootClock {
            wall_at_boot: SystemTime::now() - since_boot,
        }
    }

    /// A clock for which boot happened at `wall_at_boot` (replays, tests).
    pub fn at(wall_at_boot: SystemTime) -> Self {
        BootClock { wall_at_boot }
    }

    pub fn wall(&self, boot_ns: u64) -> SystemTime {
        self.wall_at_boot + Duration::from_nanos(boot_ns)
    }

    /// The inverse of [`BootClock::wall`]: nanoseconds since boot (0 for a
    /// time before boot).
    pub fn since_boot(&self, wall: SystemTime) -> u64 {
        wall.duration_since(self.wall_at_boot)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
    }
}

/// A ring-buffer record as the shared type `T`, if it has `T`'s size.
pub(crate) fn decode_pod<T: aya::Pod>(bytes: &[u8]) -> Option<T> {
    (bytes.len() == size_of::<T>())
        // SAFETY: length checked; `aya::Pod` types (sensor_common's shared
        // types) are plain old data, valid for any bits.
        .then(|| unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

/// Reads a ring-buffer record.
pub fn decode(bytes: &[u8]) -> Result<ConnEvent, EventError> {
    decode_pod(bytes).ok_or(EventError::Size(bytes.len()))
}

pub(crate) fn addr(family: u16, raw: &[u8; 16]) -> Result<IpAddr, EventError> {
    match family {
        AF_INET => Ok(IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))),
        AF_INET6 => Ok(canonical_ip(IpAddr::V6(Ipv6Addr::from(*raw)))),
        other => Err(EventError::Family(other)),
    }
}

pub(crate) fn comm(raw: &[u8; COMM_LEN]) -> String {
    let end = raw.iter().position(|b| *b == 0).unwrap_or(COMM_LEN);
    String::from_utf8_lossy(&raw[..end]).into_owned()
}

impl Connection {
    pub fn from_event(ev: &ConnEvent, clock: &BootClock) -> Result<Self, EventError> {
        let direction = match ev.direction {
            DIR_EGRESS => Direction::Egress,
            DIR_INGRESS => Direction::Ingress,
            other => return Err(EventError::Direction(other)),
        };
        let no_process = ev.flags & FLAG_NO_PROCESS != 0 || ev.tgid == 0;
        Ok(Connection {
            time: clock.wall(ev.ts_boot_ns),
            direction,
            local: SocketAddr::new(addr(ev.family, &ev.local_addr)?, ev.local_port),
            remote: SocketAddr::new(addr(ev.family, &ev.remote_addr)?, ev.remote_port),
            v4_mapped: ev.flags & FLAG_V4_MAPPED != 0,
            failed: ev.flags & FLAG_CONNECT_FAILED != 0,
            audit: ev.flags & FLAG_AUDIT != 0,
            incomplete: false,
            blocked: ev.flags & FLAG_BLOCKED != 0,
            matched: ev.matched,
            process: (!no_process).then(|| KernelProcess::of(ev)),
        })
    }

    /// (source, destination) in ECS terms: the initiator is the source.
    pub fn source_destination(&self) -> (SocketAddr, SocketAddr) {
        match self.direction {
            Direction::Egress => (self.local, self.remote),
            Direction::Ingress => (self.remote, self.local),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ConnEvent {
        let mut ev = ConnEvent::ZERO;
        ev.ts_boot_ns = 5_000_000_000;
        ev.tgid = 42;
        ev.pid = 43;
        ev.uid = 1000;
        ev.family = AF_INET6;
        ev.direction = DIR_INGRESS;
        ev.flags = FLAG_V4_MAPPED;
        ev.local_addr = Ipv6Addr::LOCALHOST.octets();
        ev.remote_addr = "::ffff:127.66.0.9".parse::<Ipv6Addr>().unwrap().octets();
        ev.local_port = 8080;
        ev.remote_port = 40000;
        ev.comm[..4].copy_from_slice(b"ngin");
        ev.matched = MatchInfo {
            exit_feeds: 1,
            relay_feeds: 0,
        };
        ev
    }

    #[test]
    fn decodes_and_normalises_mapped_peers() {
        let ev = sample();
        // SAFETY: reading our own POD value as bytes.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (&ev as *const ConnEvent).cast::<u8>(),
                size_of::<ConnEvent>(),
            )
        };
        let back = decode(bytes).unwrap();
        assert_eq!(back, ev);
        let conn = Connection::from_event(&back, &BootClock::now()).unwrap();
        assert_eq!(conn.remote.to_string(), "127.66.0.9:40000");
        assert_eq!(conn.local.to_string(), "[::1]:8080");
        assert!(conn.v4_mapped);
        assert_eq!(conn.direction, Direction::Ingress);
        let (src, dst) = conn.source_destination();
        assert_eq!(src.port(), 40000);
        assert_eq!(dst.port(), 8080);
        assert_eq!(conn.process.unwrap().comm, "ngin");
    }

    #[test]
    fn rejects_wrong_sizes_and_garbage() {
        assert_eq!(decode(&[0u8; 10]), Err(EventError::Size(10)));
        let mut ev = sample();
        ev.family = 99;
        assert_eq!(
            Connection::from_event(&ev, &BootClock::now()),
            Err(EventError::Family(99))
        );
        let mut ev = sample();
        ev.direction = 7;
        assert_eq!(
            Connection::from_event(&ev, &BootClock::now()),
            Err(EventError::Direction(7))
        );
    }

    #[test]
    fn no_process_flag_drops_attribution() {
        let mut ev = sample();
        ev.flags |= FLAG_NO_PROCESS;
        let conn = Connection::from_event(&ev, &BootClock::now()).unwrap();
        assert!(conn.process.is_none());
    }
}
