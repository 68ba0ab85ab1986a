//! The history index: per address, sorted merged intervals per role, with
//! deduplicated details; built by a [`Builder`], frozen into an [`Index`]
//! (sorted arrays, binary search), stored in one versioned binary file.
//!
//! File format (version 1, all integers little-endian):
//!
//! | part | content |
//! |---|---|
//! | magic | `TSHIST\r\n` (8 bytes) |
//! | header | `u32` version, `u32` flags (0), then `u64` counts: IPv4 addresses, IPv6 addresses, intervals, details, strings, string bytes, digests, consensuses, exit lists |
//! | IPv4 | `u32` addresses, sorted; `u32` first interval of each, and the total |
//! | IPv6 | `u128` addresses, sorted; `u32` first interval of each, and the total |
//! | intervals | `u32` first seen, `u32` last seen (seconds since 1970, UTC), `u32` role (bit 31: exit) and details index, as three arrays |
//! | details | 20-byte fingerprint, `u32` nickname, ORPorts and flags string indexes (`u32::MAX`: none) |
//! | strings | `u32` lengths, then the UTF-8 bytes |
//! | digests | SHA-256 of every document imported, sorted |
//! | trailer | `u32` CRC-32 of everything before it |
//!
//! Loading checks the counts against the file's length before allocating
//! anything (so memory is bounded by the file's size), then every
//! invariant lookups rely on (sorted addresses, interval ranges, indexes in
//! bounds, UTF-8), then the CRC.

use std::collections::{HashMap, HashSet};
use std::io::{self, Read};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::feed::parse::ParsedFeed;
use crate::net::canonical_ip;

/// Exit-list test times of an address less than this far apart are one
/// interval (the exit list keeps an exit for up to 48 h, tests it about
/// daily; a day between two tests is "still an exit").
pub const EXIT_MERGE_GAP: u32 = 24 * 3600;
/// A consensus without `fresh-until` is taken as fresh for an hour (the
/// network's voting interval).
pub const DEFAULT_FRESHNESS: u32 = 3600;
/// Index files larger than this are refused (a year of the whole network
/// is a few tens of MB).
pub const MAX_INDEX_BYTES: u64 = 4 << 30;

const MAGIC: &[u8; 8] = b"TSHIST\r\n";
const VERSION: u32 = 1;
const HEADER_BYTES: u64 = 8 + 4 + 4 + 9 * 8;
const NONE: u32 = u32::MAX;
const EXIT_BIT: u32 = 1 << 31;

/// What an interval says the address was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Listed in a consensus (an OR address).
    Relay,
    /// Seen exiting by the exit scanner (an exit list's `ExitAddress`).
    Exit,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Relay => "relay",
            Role::Exit => "exit",
        }
    }
}

/// How far from an interval a query still matches, per role (ExoneraTor's
/// defaults: a consensus within a day either side; an exit-list test from
/// two days before to one day after).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub relay_before: Duration,
    pub relay_after: Duration,
    pub exit_before: Duration,
    pub exit_after: Duration,
}

impl Default for Window {
    fn default() -> Self {
        const DAY: Duration = Duration::from_secs(24 * 3600);
        Window {
            relay_before: DAY,
            relay_after: DAY,
            exit_before: 2 * DAY,
            exit_after: DAY,
        }
    }
}

/// A window in whole seconds, as lookups use it: an interval
/// [first, last] matches T when `first - after <= T <= last + before`
/// ("before": how long before T the interval may have ended).
#[derive(Debug, Clone, Copy)]
struct Secs {
    before: [i64; 2],
    after: [i64; 2],
}

impl From<&Window> for Secs {
    fn from(w: &Window) -> Self {
        let s = |d: Duration| d.as_secs().min(u32::MAX as u64) as i64;
        Secs {
            before: [s(w.relay_before), s(w.exit_before)],
            after: [s(w.relay_after), s(w.exit_after)],
        }
    }
}

/// Seconds since 1970 as the index keeps them (saturating at 0 and 2106).
pub fn secs(t: SystemTime) -> u32 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs().min(u32::MAX as u64) as u32)
}

/// The time of an index timestamp.
pub fn time(s: u32) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(s.into())
}

/// One interval's details, as stored: string indexes into the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct DetailsRec {
    fingerprint: [u8; 20],
    nickname: u32,
    or_ports: u32,
    flags: u32,
}

/// The details of a hit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Details<'a> {
    /// 40 upper-case hex digits.
    pub fingerprint: String,
    pub nickname: Option<&'a str>,
    /// The relay's ORPorts at this address (relay intervals).
    pub or_ports: Vec<u16>,
    /// Consensus flags (relay intervals).
    pub flags: Vec<&'a str>,
}

/// A match of a query: the interval, and how far the queried time is from
/// it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hit {
    pub role: Role,
    /// Seconds since 1970 (see [`time`]).
    pub first_seen: u32,
    pub last_seen: u32,
    /// Seconds from the interval to the queried time: 0 inside it,
    /// negative when the time is before `first_seen`, positive after
    /// `last_seen`.
    pub distance: i64,
    details: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("not a torsensor history index (bad magic)")]
    Magic,
    #[error("index format version {0}, this torsensor reads version {VERSION}")]
    Version(u32),
    #[error("the index is {actual} bytes but its header says {expected}")]
    Length { expected: u64, actual: u64 },
    #[error("the index is larger than {MAX_INDEX_BYTES} bytes")]
    TooLarge,
    #[error("the index is damaged: {0}")]
    Damaged(&'static str),
    #[error("the index is damaged: checksum mismatch")]
    Checksum,
    #[error("cannot read the index: {0}")]
    Io(#[from] io::Error),
}

/// The frozen index: sorted arrays.
#[derive(Debug, Default)]
pub struct Index {
    v4: Vec<u32>,
    v4_start: Vec<u32>,
    v6: Vec<u128>,
    v6_start: Vec<u32>,
    first: Vec<u32>,
    last: Vec<u32>,
    meta: Vec<u32>,
    /// Where the IPv4 addresses of each /16 start in `v4` (65,537
    /// entries, derived at freeze and load time, not stored): the binary
    /// search runs within one /16.
    v4_buckets: Vec<u32>,
    /// Per interval: the largest `last` of the address's intervals up to
    /// and including this one (sorted by `first`), so a lookup's backward
    /// walk stops as soon as nothing earlier can reach the window.
    reach: Vec<u32>,
    details: Vec<DetailsRec>,
    strings: Vec<Box<str>>,
    digests: Vec<[u8; 32]>,
    consensuses: u64,
    exit_lists: u64,
}

/// What [`Index::summary`] reports.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Summary {
    pub documents: u64,
    pub consensuses: u64,
    pub exit_lists: u64,
    /// Distinct fingerprints.
    pub relays: usize,
    pub addresses: usize,
    pub ipv4: usize,
    pub ipv6: usize,
    pub intervals: usize,
    pub relay_intervals: usize,
    pub exit_intervals: usize,
    /// Earliest first seen and latest last seen (seconds since 1970).
    pub span: Option<(u32, u32)>,
    /// Bytes in memory (the arrays and the string table).
    pub memory_bytes: usize,
}

impl Index {
    pub fn is_empty(&self) -> bool {
        self.first.is_empty()
    }

    fn range(&self, ip: IpAddr) -> Option<(usize, usize)> {
        let (i, starts) = match canonical_ip(ip) {
            IpAddr::V4(v4) => {
                let a = u32::from(v4);
                let b = (a >> 16) as usize;
                let (lo, hi) = match self.v4_buckets.get(b..b + 2) {
                    Some(&[lo, hi]) => (lo as usize, hi as usize),
                    _ => (0, self.v4.len()),
                };
                (lo + self.v4[lo..hi].binary_search(&a).ok()?, &self.v4_start)
            }
            IpAddr::V6(v6) => (self.v6.binary_search(&u128::from(v6)).ok()?, &self.v6_start),
        };
        Some((starts[i] as usize, starts[i + 1] as usize))
    }

    /// Whether `ip` (IPv4-mapped IPv6 as IPv4) is in the index at all, at
    /// any time: the hunt's cheap first test of every packet.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.range(ip).is_some()
    }

    /// Calls `f` with every interval of `ip` (IPv4-mapped IPv6 as IPv4)
    /// that matches time `at` within `window`, latest first; returns how
    /// many. Allocates nothing.
    pub fn lookup_with(
        &self,
        ip: IpAddr,
        at: SystemTime,
        window: &Window,
        f: impl FnMut(Hit),
    ) -> usize {
        self.lookup_secs(ip, i64::from(secs(at)), &Secs::from(window), f)
    }

    fn lookup_secs(&self, ip: IpAddr, t: i64, w: &Secs, mut f: impl FnMut(Hit)) -> usize {
        let Some((lo, hi)) = self.range(ip) else {
            return 0;
        };
        let max_after = w.after[0].max(w.after[1]);
        let max_before = w.before[0].max(w.before[1]);
        // Intervals sorted by first: candidates start no later than
        // t + max_after.
        let end = lo + self.first[lo..hi].partition_point(|&f| i64::from(f) <= t + max_after);
        let mut n = 0;
        for i in (lo..end).rev() {
            if i64::from(self.reach[i]) < t - max_before {
                break;
            }
            let meta = self.meta[i];
            let role = usize::from(meta & EXIT_BIT != 0);
            let (first, last) = (i64::from(self.first[i]), i64::from(self.last[i]));
            if first - w.after[role] <= t && t <= last + w.before[role] {
                n += 1;
                f(Hit {
                    role: if role == 1 { Role::Exit } else { Role::Relay },
                    first_seen: self.first[i],
                    last_seen: self.last[i],
                    distance: if t < first {
                        t - first
                    } else if t > last {
                        t - last
                    } else {
                        0
                    },
                    details: meta & !EXIT_BIT,
                });
            }
        }
        n
    }

    /// Every match of `ip` at `at`, closest first (then relay before exit).
    pub fn lookup(&self, ip: IpAddr, at: SystemTime, window: &Window) -> Vec<Hit> {
        let mut hits = Vec::new();
        self.lookup_with(ip, at, window, |h| hits.push(h));
        hits.sort_by_key(|h| {
            (
                h.distance.unsigned_abs(),
                h.role,
                u64::MAX - h.last_seen as u64,
            )
        });
        hits
    }

    /// Every interval: address, role, first and last seen (the
    /// benchmark's baseline is built from them).
    pub fn for_each_interval(&self, mut f: impl FnMut(IpAddr, Role, u32, u32)) {
        let v4 = self.v4.iter().map(|&a| IpAddr::V4(a.into()));
        let v6 = self.v6.iter().map(|&a| IpAddr::V6(a.into()));
        let starts = self.v4_start.windows(2).chain(self.v6_start.windows(2));
        for (ip, w) in v4.chain(v6).zip(starts) {
            for i in w[0] as usize..w[1] as usize {
                let role = if self.meta[i] & EXIT_BIT != 0 {
                    Role::Exit
                } else {
                    Role::Relay
                };
                f(ip, role, self.first[i], self.last[i]);
            }
        }
    }

    /// The number of matches (the benchmark's lookup).
    pub fn count(&self, ip: IpAddr, at: u32, window: &Window) -> usize {
        self.lookup_secs(ip, i64::from(at), &Secs::from(window), |_| {})
    }

    fn string(&self, id: u32) -> Option<&str> {
        self.strings.get(id as usize).map(|s| &**s)
    }

    /// A hit's fingerprint, nickname, ORPorts and flags.
    pub fn details(&self, hit: &Hit) -> Details<'_> {
        let d = &self.details[hit.details as usize];
        Details {
            fingerprint: d.fingerprint.iter().map(|b| format!("{b:02X}")).collect(),
            nickname: self.string(d.nickname),
            or_ports: self
                .string(d.or_ports)
                .unwrap_or("")
                .split(',')
                .filter_map(|p| p.parse().ok())
                .collect(),
            flags: self
                .string(d.flags)
                .unwrap_or("")
                .split(' ')
                .filter(|f| !f.is_empty())
                .collect(),
        }
    }

    pub fn summary(&self) -> Summary {
        let fingerprints: HashSet<[u8; 20]> = self.details.iter().map(|d| d.fingerprint).collect();
        let exits = self.meta.iter().filter(|m| *m & EXIT_BIT != 0).count();
        let span = (!self.first.is_empty()).then(|| {
            (
                *self.first.iter().min().unwrap_or(&0),
                *self.last.iter().max().unwrap_or(&0),
            )
        });
        Summary {
            documents: self.digests.len() as u64,
            consensuses: self.consensuses,
            exit_lists: self.exit_lists,
            relays: fingerprints.len(),
            addresses: self.v4.len() + self.v6.len(),
            ipv4: self.v4.len(),
            ipv6: self.v6.len(),
            intervals: self.first.len(),
            relay_intervals: self.first.len() - exits,
            exit_intervals: exits,
            span,
            memory_bytes: self.memory_bytes(),
        }
    }

    /// Bytes held by the arrays and strings (capacity, not length).
    pub fn memory_bytes(&self) -> usize {
        fn bytes<T>(v: &Vec<T>) -> usize {
            v.capacity() * std::mem::size_of::<T>()
        }
        bytes(&self.v4)
            + bytes(&self.v4_start)
            + bytes(&self.v6)
            + bytes(&self.v6_start)
            + bytes(&self.first)
            + bytes(&self.last)
            + bytes(&self.meta)
            + bytes(&self.reach)
            + bytes(&self.v4_buckets)
            + bytes(&self.details)
            + bytes(&self.strings)
            + self.strings.iter().map(|s| s.len()).sum::<usize>()
            + bytes(&self.digests)
    }

    /// The file's bytes (see the module's documentation).
    pub fn to_bytes(&self) -> Vec<u8> {
        let string_bytes: usize = self.strings.iter().map(|s| s.len()).sum();
        let mut out = Vec::with_capacity(self.file_len() as usize);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        for n in [
            self.v4.len() as u64,
            self.v6.len() as u64,
            self.first.len() as u64,
            self.details.len() as u64,
            self.strings.len() as u64,
            string_bytes as u64,
            self.digests.len() as u64,
            self.consensuses,
            self.exit_lists,
        ] {
            out.extend_from_slice(&n.to_le_bytes());
        }
        let u32s = |out: &mut Vec<u8>, v: &[u32]| {
            for x in v {
                out.extend_from_slice(&x.to_le_bytes());
            }
        };
        u32s(&mut out, &self.v4);
        u32s(&mut out, &self.v4_start);
        for x in &self.v6 {
            out.extend_from_slice(&x.to_le_bytes());
        }
        u32s(&mut out, &self.v6_start);
        u32s(&mut out, &self.first);
        u32s(&mut out, &self.last);
        u32s(&mut out, &self.meta);
        for d in &self.details {
            out.extend_from_slice(&d.fingerprint);
            u32s(&mut out, &[d.nickname, d.or_ports, d.flags]);
        }
        for s in &self.strings {
            out.extend_from_slice(&(s.len() as u32).to_le_bytes());
        }
        for s in &self.strings {
            out.extend_from_slice(s.as_bytes());
        }
        for d in &self.digests {
            out.extend_from_slice(d);
        }
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    fn file_len(&self) -> u64 {
        let string_bytes: usize = self.strings.iter().map(|s| s.len()).sum();
        let counts = [
            self.v4.len() as u64,
            self.v6.len() as u64,
            self.first.len() as u64,
            self.details.len() as u64,
            self.strings.len() as u64,
            string_bytes as u64,
            self.digests.len() as u64,
        ];
        expected_len(&counts).unwrap_or(0)
    }

    /// Reads an index file of `len` bytes (its length from the file
    /// system, checked against the header before anything is allocated).
    pub fn read(reader: impl Read, len: u64) -> Result<Index, IndexError> {
        if len > MAX_INDEX_BYTES {
            return Err(IndexError::TooLarge);
        }
        let mut r = Crc {
            inner: io::BufReader::with_capacity(1 << 16, reader),
            hasher: crc32fast::Hasher::new(),
        };
        let mut magic = [0u8; 8];
        r.read_exact(&mut magic).map_err(short)?;
        if &magic != MAGIC {
            return Err(IndexError::Magic);
        }
        let version = r.u32()?;
        if version != VERSION {
            return Err(IndexError::Version(version));
        }
        let _flags = r.u32()?;
        let mut counts = [0u64; 9];
        for c in &mut counts {
            *c = r.u64()?;
        }
        let expected = expected_len(&counts[..7]).ok_or(IndexError::TooLarge)?;
        if expected != len {
            return Err(IndexError::Length {
                expected,
                actual: len,
            });
        }
        let [
            n4,
            n6,
            nint,
            ndet,
            nstr,
            _sbytes,
            ndig,
            consensuses,
            exit_lists,
        ] = counts.map(|c| c as usize);
        let mut index = Index {
            v4: r.u32s(n4)?,
            v4_start: r.u32s(n4 + 1)?,
            ..Default::default()
        };
        index.v6 = (0..n6)
            .map(|_| r.array::<16>().map(u128::from_le_bytes))
            .collect::<Result<_, _>>()?;
        index.v6_start = r.u32s(n6 + 1)?;
        index.first = r.u32s(nint)?;
        index.last = r.u32s(nint)?;
        index.meta = r.u32s(nint)?;
        index.details = (0..ndet)
            .map(|_| {
                Ok(DetailsRec {
                    fingerprint: r.array::<20>()?,
                    nickname: r.u32()?,
                    or_ports: r.u32()?,
                    flags: r.u32()?,
                })
            })
            .collect::<Result<_, IndexError>>()?;
        let lens = r.u32s(nstr)?;
        index.strings = lens
            .iter()
            .map(|&l| {
                let mut bytes = vec![0u8; l as usize];
                r.read_exact(&mut bytes).map_err(short)?;
                String::from_utf8(bytes)
                    .map(String::into_boxed_str)
                    .map_err(|_| IndexError::Damaged("a string is not UTF-8"))
            })
            .collect::<Result<_, _>>()?;
        index.digests = (0..ndig)
            .map(|_| r.array::<32>())
            .collect::<Result<_, _>>()?;
        let crc = r.hasher.clone().finalize();
        let mut trailer = [0u8; 4];
        r.inner.read_exact(&mut trailer).map_err(short)?;
        if u32::from_le_bytes(trailer) != crc {
            return Err(IndexError::Checksum);
        }
        index.consensuses = consensuses as u64;
        index.exit_lists = exit_lists as u64;
        index.check()?;
        index.reach = reach(&index.v4_start, &index.v6_start, &index.first, &index.last);
        index.v4_buckets = buckets(&index.v4);
        Ok(index)
    }

    /// The invariants lookups rely on.
    fn check(&self) -> Result<(), IndexError> {
        let nint = self.first.len();
        if !self.v4.windows(2).all(|w| w[0] < w[1]) || !self.v6.windows(2).all(|w| w[0] < w[1]) {
            return Err(IndexError::Damaged("addresses not sorted"));
        }
        for starts in [&self.v4_start, &self.v6_start] {
            if !starts.windows(2).all(|w| w[0] < w[1]) {
                return Err(IndexError::Damaged("an address without intervals"));
            }
        }
        if self.v4_start.first() != Some(&0)
            || self.v4_start.last() != self.v6_start.first()
            || self.v6_start.last().map(|&l| l as usize) != Some(nint)
        {
            return Err(IndexError::Damaged("interval ranges"));
        }
        let ndet = self.details.len() as u32;
        for i in 0..nint {
            if self.first[i] > self.last[i] || self.meta[i] & !EXIT_BIT >= ndet {
                return Err(IndexError::Damaged("an interval"));
            }
        }
        for starts in [&self.v4_start, &self.v6_start] {
            for w in starts.windows(2) {
                let f = &self.first[w[0] as usize..w[1] as usize];
                if !f.is_sorted() {
                    return Err(IndexError::Damaged("intervals not sorted"));
                }
            }
        }
        let nstr = self.strings.len() as u32;
        for d in &self.details {
            if [d.nickname, d.or_ports, d.flags]
                .iter()
                .any(|&s| s != NONE && s >= nstr)
            {
                return Err(IndexError::Damaged("a string index"));
            }
        }
        if !self.digests.windows(2).all(|w| w[0] < w[1]) {
            return Err(IndexError::Damaged("digests not sorted"));
        }
        Ok(())
    }
}

fn short(e: io::Error) -> IndexError {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        IndexError::Damaged("truncated")
    } else {
        IndexError::Io(e)
    }
}

/// The file length the counts (IPv4, IPv6, intervals, details, strings,
/// string bytes, digests) make.
fn expected_len(c: &[u64]) -> Option<u64> {
    let [n4, n6, nint, ndet, nstr, sbytes, ndig] = *c else {
        return None;
    };
    let parts = [
        n4.checked_mul(4)?,
        n4.checked_add(1)?.checked_mul(4)?,
        n6.checked_mul(16)?,
        n6.checked_add(1)?.checked_mul(4)?,
        nint.checked_mul(12)?,
        ndet.checked_mul(32)?,
        nstr.checked_mul(4)?,
        sbytes,
        ndig.checked_mul(32)?,
        HEADER_BYTES + 4,
    ];
    parts.iter().try_fold(0u64, |a, &b| a.checked_add(b))
}

/// A reader that checksums what it reads.
struct Crc<R> {
    inner: R,
    hasher: crc32fast::Hasher,
}

impl<R: Read> Read for Crc<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

impl<R: Read> Crc<R> {
    fn array<const N: usize>(&mut self) -> Result<[u8; N], IndexError> {
        let mut b = [0u8; N];
        self.read_exact(&mut b).map_err(short)?;
        Ok(b)
    }
    fn u32(&mut self) -> Result<u32, IndexError> {
        self.array::<4>().map(u32::from_le_bytes)
    }
    fn u64(&mut self) -> Result<u64, IndexError> {
        self.array::<8>().map(u64::from_le_bytes)
    }
    fn u32s(&mut self, n: usize) -> Result<Vec<u32>, IndexError> {
        let mut bytes = vec![0u8; n * 4];
        self.read_exact(&mut bytes).map_err(short)?;
        Ok(bytes
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }
}

/// For each /16 (and one past the last), the index of its first address in
/// the sorted `v4`.
fn buckets(v4: &[u32]) -> Vec<u32> {
    (0..=1u32 << 16)
        .map(|b| v4.partition_point(|&a| (a >> 16) < b) as u32)
        .collect()
}

/// Per interval, the running maximum of `last` within its address.
fn reach(v4_start: &[u32], v6_start: &[u32], first: &[u32], last: &[u32]) -> Vec<u32> {
    let mut out = vec![0u32; first.len()];
    for starts in [v4_start, v6_start] {
        for w in starts.windows(2) {
            let mut max = 0;
            for i in w[0] as usize..w[1] as usize {
                max = max.max(last[i]);
                out[i] = max;
            }
        }
    }
    out
}

/// An interval while building.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Interval {
    first: u32,
    last: u32,
    meta: u32,
}

/// How far back [`Builder::add`] looks for an interval to extend before
/// appending (the rest is merged by [`Builder::finish`]).
const MERGE_LOOKBACK: usize = 32;

/// What one document added.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Added {
    /// (address, relay) pairs or (address, fingerprint) exit records.
    pub records: usize,
}

/// A relay as [`Builder::add_relay`] takes it.
#[doc(hidden)]
pub struct RelaySeen<'a> {
    pub fingerprint: &'a [u8; 20],
    pub nickname: &'a str,
    /// Comma-separated.
    pub or_ports: &'a str,
    /// Space-separated.
    pub flags: &'a str,
}

/// An index being built (or extended: [`Builder::from_index`]).
#[derive(Debug, Default)]
pub struct Builder {
    addrs: HashMap<IpAddr, Vec<Interval>>,
    details: Vec<DetailsRec>,
    details_ids: HashMap<DetailsRec, u32>,
    strings: Vec<Box<str>>,
    string_ids: HashMap<Box<str>, u32>,
    digests: HashSet<[u8; 32]>,
    consensuses: u64,
    exit_lists: u64,
}

fn fingerprint_bytes(hex: &str) -> [u8; 20] {
    let mut out = [0u8; 20];
    for (i, b) in out.iter_mut().enumerate() {
        *b = hex
            .get(2 * i..2 * i + 2)
            .and_then(|h| u8::from_str_radix(h, 16).ok())
            .unwrap_or(0);
    }
    out
}

impl Builder {
    pub fn new() -> Builder {
        Builder::default()
    }

    /// A builder holding everything `index` holds, to add documents to.
    pub fn from_index(index: Index) -> Builder {
        let mut b = Builder {
            details: index.details,
            digests: index.digests.into_iter().collect(),
            consensuses: index.consensuses,
            exit_lists: index.exit_lists,
            ..Default::default()
        };
        b.details_ids = b
            .details
            .iter()
            .enumerate()
            .map(|(i, d)| (*d, i as u32))
            .collect();
        b.strings = index.strings;
        b.string_ids = b
            .strings
            .iter()
            .enumerate()
            .map(|(i, s)| (s.clone(), i as u32))
            .collect();
        let mut add = |ip: IpAddr, from: u32, to: u32| {
            let v = (from as usize..to as usize)
                .map(|i| Interval {
                    first: index.first[i],
                    last: index.last[i],
                    meta: index.meta[i],
                })
                .collect();
            b.addrs.insert(ip, v);
        };
        for (i, a) in index.v4.iter().enumerate() {
            add(
                IpAddr::V4(Ipv4Addr::from(*a)),
                index.v4_start[i],
                index.v4_start[i + 1],
            );
        }
        for (i, a) in index.v6.iter().enumerate() {
            add(
                IpAddr::V6(Ipv6Addr::from(*a)),
                index.v6_start[i],
                index.v6_start[i + 1],
            );
        }
        b
    }

    /// Whether a document with this SHA-256 was imported already.
    pub fn seen(&self, digest: &[u8; 32]) -> bool {
        self.digests.contains(digest)
    }

    fn string(&mut self, s: &str) -> u32 {
        if s.is_empty() {
            return NONE;
        }
        if let Some(&id) = self.string_ids.get(s) {
            return id;
        }
        let id = self.strings.len() as u32;
        self.strings.push(s.into());
        self.string_ids.insert(s.into(), id);
        id
    }

    fn details_id(&mut self, d: DetailsRec) -> u32 {
        if let Some(&id) = self.details_ids.get(&d) {
            return id;
        }
        let id = self.details.len() as u32;
        self.details.push(d);
        self.details_ids.insert(d, id);
        id
    }

    /// Adds [first, last] for `ip`, extending an interval of the same role
    /// and details it touches (or comes within `gap` of).
    fn add(&mut self, ip: IpAddr, first: u32, last: u32, meta: u32, gap: u32) {
        let v = self.addrs.entry(ip).or_default();
        for iv in v.iter_mut().rev().take(MERGE_LOOKBACK) {
            if iv.meta == meta
                && first <= iv.last.saturating_add(gap)
                && last.saturating_add(gap) >= iv.first
            {
                iv.first = iv.first.min(first);
                iv.last = iv.last.max(last);
                return;
            }
        }
        v.push(Interval { first, last, meta });
        // Documents out of order (an archive's members come in the order
        // tar put them, not necessarily by time) leave intervals the
        // lookback cannot merge yet: merge them whenever an address's
        // list doubles, so memory follows the merged size, not the number
        // of documents.
        if v.len() >= 2 * MERGE_LOOKBACK && v.len().is_power_of_two() {
            normalize(v);
        }
    }

    /// Adds a parsed consensus: every OR address of every router (and
    /// authority) is a relay for `valid-after`..`fresh-until`, with its
    /// ORPorts at that address, fingerprint, nickname and flags.
    pub fn add_consensus(&mut self, feed: &ParsedFeed, digest: [u8; 32]) -> Added {
        let Some(info) = feed.consensus.as_ref() else {
            return Added::default();
        };
        let first = secs(info.valid_after);
        let last = info
            .fresh_until
            .map(secs)
            .filter(|&l| l >= first)
            .unwrap_or(first.saturating_add(DEFAULT_FRESHNESS));
        // (address, relay) -> ORPorts; or_ports is sorted by address, port.
        let mut pairs: Vec<(IpAddr, u32, u16)> = feed
            .or_ports
            .iter()
            .flat_map(|(sa, relays)| relays.iter().map(move |&r| (sa.ip(), r, sa.port())))
            .collect();
        pairs.sort_unstable();
        let mut added = 0;
        let mut i = 0;
        let mut ports = String::new();
        while i < pairs.len() {
            let (ip, r) = (pairs[i].0, pairs[i].1);
            ports.clear();
            while i < pairs.len() && pairs[i].0 == ip && pairs[i].1 == r {
                if !ports.is_empty() {
                    ports.push(',');
                }
                ports.push_str(&pairs[i].2.to_string());
                i += 1;
            }
            let Some(relay) = feed.relays.get(r as usize) else {
                continue;
            };
            let rec = DetailsRec {
                fingerprint: fingerprint_bytes(&relay.fingerprint),
                nickname: self.string(relay.nickname.as_deref().unwrap_or("")),
                or_ports: self.string(&ports),
                flags: self.string(&relay.flags.join(" ")),
            };
            let id = self.details_id(rec);
            self.add(ip, first, last, id, 0);
            added += 1;
        }
        self.digests.insert(digest);
        self.consensuses += 1;
        Added { records: added }
    }

    /// Adds a parsed exit list: every exit address was seen exiting at its
    /// test time, for each fingerprint that names it. (The feed parser
    /// keeps one test time per address, its newest in the document.)
    pub fn add_exit_list(&mut self, feed: &ParsedFeed, digest: [u8; 32]) -> Added {
        let mut added = 0;
        for (net, info) in &feed.exits {
            for (i, &r) in info.relays.iter().enumerate() {
                // Each relay's own test time at this address (an address
                // shared by several exits has one per exit).
                let seen = info.relay_seen.get(i).copied().flatten().or(info.last_seen);
                let Some(seen) = seen.map(secs) else {
                    continue;
                };
                let Some(relay) = feed.relays.get(r as usize) else {
                    continue;
                };
                let rec = DetailsRec {
                    fingerprint: fingerprint_bytes(&relay.fingerprint),
                    nickname: NONE,
                    or_ports: NONE,
                    flags: NONE,
                };
                let id = self.details_id(rec);
                self.add(net.addr(), seen, seen, id | EXIT_BIT, EXIT_MERGE_GAP);
                added += 1;
            }
        }
        self.digests.insert(digest);
        self.exit_lists += 1;
        Added { records: added }
    }

    /// Adds one relay interval directly (the benchmark's synthetic
    /// network; tests).
    #[doc(hidden)]
    pub fn add_relay(&mut self, ip: IpAddr, first: u32, last: u32, relay: &RelaySeen<'_>) {
        let rec = DetailsRec {
            fingerprint: *relay.fingerprint,
            nickname: self.string(relay.nickname),
            or_ports: self.string(relay.or_ports),
            flags: self.string(relay.flags),
        };
        let id = self.details_id(rec);
        self.add(canonical_ip(ip), first, last, id, 0);
    }

    /// Counts a document added through [`Builder::add_relay`].
    #[doc(hidden)]
    pub fn count_consensus(&mut self, digest: [u8; 32]) {
        self.digests.insert(digest);
        self.consensuses += 1;
    }

    /// Merges what is left to merge and freezes the index.
    pub fn finish(self) -> Index {
        let mut addrs: Vec<(IpAddr, Vec<Interval>)> = self.addrs.into_iter().collect();
        addrs.sort_unstable_by_key(|(ip, _)| *ip);
        let mut index = Index {
            details: self.details,
            strings: self.strings,
            consensuses: self.consensuses,
            exit_lists: self.exit_lists,
            ..Default::default()
        };
        index.digests = self.digests.into_iter().collect();
        index.digests.sort_unstable();
        let total: usize = addrs.iter().map(|(_, v)| v.len()).sum();
        index.first.reserve_exact(total);
        index.last.reserve_exact(total);
        index.meta.reserve_exact(total);
        index.v4_start.push(0);
        for (ip, mut v) in addrs {
            normalize(&mut v);
            if v.is_empty() {
                continue;
            }
            for iv in &v {
                index.first.push(iv.first);
                index.last.push(iv.last);
                index.meta.push(iv.meta);
            }
            let end = index.first.len() as u32;
            match ip {
                IpAddr::V4(a) => {
                    index.v4.push(a.into());
                    index.v4_start.push(end);
                }
                IpAddr::V6(a) => {
                    if index.v6_start.is_empty() {
                        index.v6_start.push(*index.v4_start.last().unwrap_or(&0));
                    }
                    index.v6.push(a.into());
                    index.v6_start.push(end);
                }
            }
        }
        if index.v6_start.is_empty() {
            index.v6_start.push(*index.v4_start.last().unwrap_or(&0));
        }
        index.first.shrink_to_fit();
        index.last.shrink_to_fit();
        index.meta.shrink_to_fit();
        index.details.shrink_to_fit();
        index.strings.shrink_to_fit();
        index.v4.shrink_to_fit();
        index.v6.shrink_to_fit();
        index.v4_start.shrink_to_fit();
        index.v6_start.shrink_to_fit();
        index.reach = reach(&index.v4_start, &index.v6_start, &index.first, &index.last);
        index.v4_buckets = buckets(&index.v4);
        index
    }
}

/// Merges an address's intervals of the same role and details that touch
/// (exits: within [`EXIT_MERGE_GAP`]), then sorts them by first seen.
fn normalize(v: &mut Vec<Interval>) {
    v.sort_unstable_by_key(|iv| (iv.meta, iv.first, iv.last));
    let mut out: Vec<Interval> = Vec::with_capacity(v.len());
    for iv in v.drain(..) {
        let gap = if iv.meta & EXIT_BIT != 0 {
            EXIT_MERGE_GAP
        } else {
            0
        };
        match out.last_mut() {
            Some(prev) if prev.meta == iv.meta && iv.first <= prev.last.saturating_add(gap) => {
                prev.last = prev.last.max(iv.last);
            }
            _ => out.push(iv),
        }
    }
    out.sort_unstable_by_key(|iv| (iv.first, iv.last, iv.meta));
    *v = out;
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: u32 = 3600;
    const T0: u32 = 1_740_787_200; // 2025-03-01T00:00:00Z

    fn fp(n: u8) -> [u8; 20] {
        [n; 20]
    }

    fn rs<'a>(
        fingerprint: &'a [u8; 20],
        nickname: &'a str,
        or_ports: &'a str,
        flags: &'a str,
    ) -> RelaySeen<'a> {
        RelaySeen {
            fingerprint,
            nickname,
            or_ports,
            flags,
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn consecutive_consensuses_merge_and_a_gap_splits() {
        let mut b = Builder::new();
        for h in 0..10 {
            b.add_relay(
                ip("192.0.2.1"),
                T0 + h * H,
                T0 + (h + 1) * H,
                &rs(&fp(1), "a", "9001", "Fast Running"),
            );
        }
        for h in 30..32 {
            b.add_relay(
                ip("192.0.2.1"),
                T0 + h * H,
                T0 + (h + 1) * H,
                &rs(&fp(1), "a", "9001", "Fast Running"),
            );
        }
        let index = b.finish();
        assert_eq!(index.first, [T0, T0 + 30 * H]);
        assert_eq!(index.last, [T0 + 10 * H, T0 + 32 * H]);
        let w = Window::default();
        let at = |s: u32| time(s);
        // Inside the first interval.
        let hits = index.lookup(ip("192.0.2.1"), at(T0 + 5 * H), &w);
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].distance, 0);
        let d = index.details(&hits[0]);
        assert_eq!(d.nickname, Some("a"));
        assert_eq!(d.or_ports, [9001]);
        assert_eq!(d.flags, ["Fast", "Running"]);
        assert_eq!(d.fingerprint, "01".repeat(20));
        // 20 h after its end: both within a day (the second 10 h ahead).
        let hits = index.lookup(ip("192.0.2.1"), at(T0 + 30 * H - 10 * H + 30 * 60), &w);
        assert_eq!(hits.len(), 2);
        // A week later: nothing; IPv4-mapped IPv6 is the same address.
        assert!(
            index
                .lookup(ip("192.0.2.1"), at(T0 + 200 * H), &w)
                .is_empty()
        );
        let hits = index.lookup(ip("::ffff:192.0.2.1"), at(T0 + 35 * H), &w);
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].distance, 3 * i64::from(H));
        // Before the first: negative distance.
        let hits = index.lookup(ip("192.0.2.1"), at(T0 - 2 * H), &w);
        assert_eq!(hits[0].distance, -(2 * i64::from(H)));
        assert!(index.lookup(ip("192.0.2.2"), at(T0), &w).is_empty());
    }

    #[test]
    fn addresses_at_the_edges_of_their_16_are_found() {
        let mut b = Builder::new();
        let all = [
            "0.0.0.0",
            "0.0.255.255",
            "10.1.0.0",
            "10.1.255.255",
            "10.2.0.0",
            "255.255.255.255",
        ];
        for a in all {
            b.add_relay(ip(a), T0, T0 + H, &rs(&fp(3), "c", "9001", "Running"));
        }
        // Read back: the buckets are rebuilt at load time.
        let bytes = b.finish().to_bytes();
        let index = Index::read(&bytes[..], bytes.len() as u64).unwrap();
        for a in all {
            assert_eq!(
                index.lookup(ip(a), time(T0), &Window::default()).len(),
                1,
                "{a}"
            );
        }
        for a in [
            "0.0.0.1",
            "10.1.128.0",
            "10.0.255.255",
            "255.255.255.254",
            "::",
        ] {
            assert!(
                index.lookup(ip(a), time(T0), &Window::default()).is_empty(),
                "{a}"
            );
        }
    }

    #[test]
    fn documents_out_of_order_merge_as_they_come() {
        let mut b = Builder::new();
        let mut rng = fastrand::Rng::with_seed(3);
        let mut hours: Vec<u32> = (0..1000).collect();
        rng.shuffle(&mut hours);
        let a = ip("192.0.2.9");
        let f = fp(9);
        let r = rs(&f, "d", "443", "Running");
        for h in hours {
            b.add_relay(a, T0 + h * H, T0 + (h + 1) * H, &r);
            // Never more than twice what the merged list needs, plus the
            // lookback.
            assert!(b.addrs[&a].len() <= 4 * MERGE_LOOKBACK + 2 * 1000 / 4);
        }
        let index = b.finish();
        assert_eq!(index.first, [T0]);
        assert_eq!(index.last, [T0 + 1000 * H]);
    }

    #[test]
    fn a_narrow_window_is_a_setting() {
        let mut b = Builder::new();
        b.add_relay(
            ip("2001:db8::1"),
            T0,
            T0 + H,
            &rs(&fp(2), "b", "443", "Guard"),
        );
        let index = b.finish();
        let exact = Window {
            relay_before: Duration::ZERO,
            relay_after: Duration::ZERO,
            exit_before: Duration::ZERO,
            exit_after: Duration::ZERO,
        };
        assert_eq!(
            index.lookup(ip("2001:db8::1"), time(T0 + H), &exact).len(),
            1
        );
        assert!(
            index
                .lookup(ip("2001:db8::1"), time(T0 + H + 1), &exact)
                .is_empty()
        );
        assert_eq!(
            index.lookup(ip("2001:db8::1"), time(T0 + H + 1), &Window::default())[0].distance,
            1
        );
    }

    #[test]
    fn the_file_round_trips_and_damage_is_refused() {
        let mut b = Builder::new();
        b.add_relay(
            ip("192.0.2.1"),
            T0,
            T0 + H,
            &rs(&fp(1), "a", "9001", "Running"),
        );
        b.add_relay(
            ip("2001:db8::1"),
            T0,
            T0 + H,
            &rs(&fp(1), "a", "443", "Running"),
        );
        b.count_consensus([7; 32]);
        let index = b.finish();
        let bytes = index.to_bytes();
        assert_eq!(bytes.len() as u64, index.file_len());
        let back = Index::read(&bytes[..], bytes.len() as u64).unwrap();
        let no_memory = |i: &Index| Summary {
            memory_bytes: 0,
            ..i.summary()
        };
        assert_eq!(no_memory(&back), no_memory(&index));
        assert_eq!(back.summary().addresses, 2);
        assert_eq!(back.summary().relays, 1);
        // Every single-byte change is caught (header, check or CRC), and
        // nothing panics.
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x55;
            assert!(Index::read(&bad[..], bad.len() as u64).is_err(), "byte {i}");
        }
        for cut in [0, 7, 20, bytes.len() - 1] {
            assert!(Index::read(&bytes[..cut], bytes.len() as u64).is_err());
        }
        // A header claiming huge counts is refused before allocating.
        let mut huge = bytes.clone();
        huge[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(
            Index::read(&huge[..], huge.len() as u64),
            Err(IndexError::TooLarge | IndexError::Length { .. })
        ));
    }

    #[test]
    fn extending_an_index_merges_with_what_it_holds() {
        let mut b = Builder::new();
        b.add_relay(
            ip("192.0.2.1"),
            T0,
            T0 + H,
            &rs(&fp(1), "a", "9001", "Running"),
        );
        let index = b.finish();
        let mut b =
            Builder::from_index(Index::read(&index.to_bytes()[..], index.file_len()).unwrap());
        b.add_relay(
            ip("192.0.2.1"),
            T0 + H,
            T0 + 2 * H,
            &rs(&fp(1), "a", "9001", "Running"),
        );
        // Out of order, and a changed flag: its own interval.
        b.add_relay(
            ip("192.0.2.1"),
            T0 - H,
            T0,
            &rs(&fp(1), "a", "9001", "Running"),
        );
        b.add_relay(
            ip("192.0.2.1"),
            T0 + 2 * H,
            T0 + 3 * H,
            &rs(&fp(1), "a", "9001", "Running Stable"),
        );
        let index = b.finish();
        assert_eq!(index.first, [T0 - H, T0 + 2 * H]);
        assert_eq!(index.last, [T0 + 2 * H, T0 + 3 * H]);
    }
}
