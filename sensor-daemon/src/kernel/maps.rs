//! The Tor maps in the kernel and how a new feed set reaches them without
//! a gap: two copies of (IPv4 trie, IPv6 trie, OR-port hash), the copy not
//! in use brought to the new content by writing only the difference, then
//! one write of `ACTIVE_SET` switching every program to it; and the
//! pre-filter bitmap in front of the tries.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use aya::Ebpf;
use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, HashMap as BpfHashMap, Map, MapData, MapError};
use ipnet::IpNet;
use sensor_common::{MatchInfo, OrPortKey, prefilter};

use super::{KernelError, Probes};
use crate::feed::FeedSet;

/// Names of the two copies of the Tor maps (IPv4 trie, IPv6 trie, OR ports).
pub(super) const SET_MAPS: [[&str; 3]; 2] = [
    ["TOR_V4_0", "TOR_V6_0", "OR_PORTS_0"],
    ["TOR_V4_1", "TOR_V6_1", "OR_PORTS_1"],
];

/// After a flip, programs that read the old index a moment earlier may still
/// be looking it up (each run takes well under a microsecond, inside an RCU
/// read section); the old copy is not rewritten before this much time.
const FLIP_GRACE: Duration = Duration::from_millis(20);
/// What one copy of the Tor maps holds (mirrored in userspace so that a
/// refresh writes only the difference).
#[derive(Debug, Clone, Default)]
pub(super) struct SetContents {
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

impl Probes {
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
        // The pre-filter must let through everything of the set in use and
        // of the one about to be: the union, written before the flip (and
        // narrowed to the then-current set at the next update).
        let mut bits = prefilter_bits(self.sets[self.active].prefixes.keys());
        for (w, n) in bits.iter_mut().zip(prefilter_bits(wanted.prefixes.keys())) {
            *w |= n;
        }
        self.write_prefilter(bits)?;
        let target = 1 - self.active;
        let (written, deleted) = self.write_copy(target, &wanted)?;
        array_mut::<u32>(&mut self.ebpf, "ACTIVE_SET")?
            .set(0, target as u32, 0)
            .map_err(|source| KernelError::Map {
                name: "ACTIVE_SET",
                source,
            })?;
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

    /// Writes the words of the pre-filter that differ from `bits`.
    fn write_prefilter(&mut self, bits: Vec<u64>) -> Result<(), KernelError> {
        let map_err = |source| KernelError::Map {
            name: "PREFILTER",
            source,
        };
        let mut array = array_mut::<u64>(&mut self.ebpf, "PREFILTER")?;
        for (i, (old, new)) in self.prefilter.iter_mut().zip(bits).enumerate() {
            if *old != new {
                array.set(i as u32, new, 0).map_err(map_err)?;
                *old = new;
            }
        }
        Ok(())
    }

    /// Brings copy `index` from what it holds to `wanted`: deletions
    /// first, then what is new or changed; returns (written, deleted).
    fn write_copy(
        &mut self,
        index: usize,
        wanted: &SetContents,
    ) -> Result<(usize, usize), KernelError> {
        let [v4_name, v6_name, or_name] = SET_MAPS[index];
        let held = &self.sets[index];
        let [v4, v6, or] = self.ebpf.maps_disjoint_mut([v4_name, v6_name, or_name]);
        let mut tries = Tries {
            v4: typed(v4, v4_name)?,
            v6: typed(v6, v6_name)?,
            names: [v4_name, v6_name],
        };
        let mut or: BpfHashMap<&mut MapData, OrPortKey, u32> = typed(or, or_name)?;
        let or_err = |source| KernelError::Map {
            name: or_name,
            source,
        };
        let (mut written, mut deleted) = (0, 0);
        for net in held.prefixes.keys() {
            if !wanted.prefixes.contains_key(net) {
                tries.remove(net)?;
                deleted += 1;
            }
        }
        for (net, info) in &wanted.prefixes {
            if held.prefixes.get(net) != Some(info) {
                tries.insert(net, info)?;
                written += 1;
            }
        }
        for key in held.or_ports.keys() {
            if !wanted.or_ports.contains_key(key) {
                or.remove(key).map_err(or_err)?;
                deleted += 1;
            }
        }
        for (key, feeds) in &wanted.or_ports {
            if held.or_ports.get(key) != Some(feeds) {
                or.insert(key, feeds, 0).map_err(or_err)?;
                written += 1;
            }
        }
        Ok((written, deleted))
    }
}

/// The two LPM tries of one copy.
struct Tries<'a> {
    v4: LpmTrie<&'a mut MapData, [u8; 4], MatchInfo>,
    v6: LpmTrie<&'a mut MapData, [u8; 16], MatchInfo>,
    names: [&'static str; 2],
}

impl Tries<'_> {
    fn err(&self, net: &IpNet) -> impl Fn(MapError) -> KernelError + use<> {
        let name = self.names[usize::from(matches!(net, IpNet::V6(_)))];
        move |source| KernelError::Map { name, source }
    }

    fn remove(&mut self, net: &IpNet) -> Result<(), KernelError> {
        let len = u32::from(net.prefix_len());
        let err = self.err(net);
        match net.network() {
            IpAddr::V4(a) => self.v4.remove(&Key::new(len, a.octets())).map_err(err),
            IpAddr::V6(a) => self.v6.remove(&Key::new(len, a.octets())).map_err(err),
        }
    }

    fn insert(&mut self, net: &IpNet, info: &MatchInfo) -> Result<(), KernelError> {
        let len = u32::from(net.prefix_len());
        let err = self.err(net);
        match net.network() {
            IpAddr::V4(a) => self
                .v4
                .insert(&Key::new(len, a.octets()), info, 0)
                .map_err(err),
            IpAddr::V6(a) => self
                .v6
                .insert(&Key::new(len, a.octets()), info, 0)
                .map_err(err),
        }
    }
}

/// A map of the object as the type its name promises.
fn typed<'a, M>(map: Option<&'a mut Map>, name: &'static str) -> Result<M, KernelError>
where
    M: TryFrom<&'a mut Map, Error = MapError>,
{
    map.ok_or(KernelError::MissingMap(name))?
        .try_into()
        .map_err(|source| KernelError::Map { name, source })
}

/// One of the programs' array maps, writable.
pub(super) fn array_mut<'a, T: aya::Pod>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<Array<&'a mut MapData, T>, KernelError> {
    let map = ebpf.map_mut(name).ok_or(KernelError::MissingMap(name))?;
    Array::try_from(map).map_err(|source| KernelError::Map { name, source })
}

/// The pre-filter bitmap for `prefixes` (see `sensor_common::prefilter`):
/// every /16 an IPv4 prefix touches, every folded /32 of an IPv6 prefix
/// (all of them for an IPv6 prefix shorter than /32).
pub fn prefilter_bits<'a>(prefixes: impl Iterator<Item = &'a IpNet>) -> Vec<u64> {
    let mut words = vec![0u64; prefilter::WORDS as usize];
    let mut set = |bit: usize| words[bit / 64] |= 1 << (bit % 64);
    let mut all_v6 = false;
    for net in prefixes {
        match net {
            IpNet::V4(n) => {
                let first = prefilter::v4(&n.network().octets());
                let count = 1usize << 16u8.saturating_sub(n.prefix_len());
                (first..first + count).for_each(&mut set);
            }
            IpNet::V6(n) if n.prefix_len() >= 32 => set(prefilter::v6(&n.network().octets())),
            IpNet::V6(_) => all_v6 = true,
        }
    }
    if all_v6 {
        words[prefilter::BITS / 64..].fill(u64::MAX);
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bit(words: &[u64], bit: usize) -> bool {
        words[bit / 64] & (1 << (bit % 64)) != 0
    }

    #[test]
    fn prefilter_covers_every_listed_address_and_little_else() {
        let nets: Vec<IpNet> = [
            "127.66.1.9/32",
            "10.0.0.0/8",
            "2001:db8:77::2/128",
            "192.0.2.0/24",
        ]
        .iter()
        .map(|n| n.parse().unwrap())
        .collect();
        let w = prefilter_bits(nets.iter());
        assert!(bit(&w, prefilter::v4(&[127, 66, 1, 9])));
        assert!(!bit(&w, prefilter::v4(&[127, 0, 0, 1])));
        // A /8 covers its 256 /16s and nothing beyond.
        assert!(bit(&w, prefilter::v4(&[10, 0, 0, 1])));
        assert!(bit(&w, prefilter::v4(&[10, 255, 3, 4])));
        assert!(!bit(&w, prefilter::v4(&[11, 0, 0, 1])));
        assert!(!bit(&w, prefilter::v4(&[9, 255, 0, 1])));
        assert!(bit(&w, prefilter::v4(&[192, 0, 2, 200])));
        let v6: std::net::Ipv6Addr = "2001:db8:77::2".parse().unwrap();
        assert!(bit(&w, prefilter::v6(&v6.octets())));
        let other: std::net::Ipv6Addr = "2a00:1450::1".parse().unwrap();
        assert!(!bit(&w, prefilter::v6(&other.octets())));
        let set: usize = w.iter().map(|x| x.count_ones() as usize).sum();
        assert_eq!(set, 1 + 256 + 1 + 1);
        // A short IPv6 prefix and 0.0.0.0/0 open their whole half.
        let wide: Vec<IpNet> = ["2000::/3", "0.0.0.0/0"]
            .iter()
            .map(|n| n.parse().unwrap())
            .collect();
        let w = prefilter_bits(wide.iter());
        assert!(w.iter().all(|x| *x == u64::MAX));
    }
}
