//! Every loaded feed merged: what the kernel maps hold, the same decision the
//! kernel makes, and the details that explain a match.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::SystemTime;

use ipnet::IpNet;
use sensor_common::{MAX_FEEDS, MatchInfo, OrPortKey};
use serde::Serialize;

use super::Feed;
use super::parse::{ExitInfo, Relay};
use crate::net::Direction;
use crate::net::canonical_ip;

/// The part a listed address plays in the Tor network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Traffic leaves Tor from this address (or a generic list names it).
    Exit,
    /// A relay's OR address and ORPort: a Tor client or relay talks to it.
    Relay,
    /// A local Tor SOCKS port: the process that connects to it sends its
    /// traffic through Tor (no list of the network needed).
    Socks,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Exit => "exit",
            Role::Relay => "relay",
            Role::Socks => "socks",
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SetError {
    #[error("too many feeds: {count} given, at most {MAX_FEEDS} can be loaded at once")]
    TooMany { count: usize },
}

/// Feeds merged, feed `i` owning bit `i` of the [`MatchInfo`] masks.
#[derive(Debug, Clone, Default)]
pub struct FeedSet {
    feeds: Vec<Arc<Feed>>,
    /// LPM-trie content. Each prefix's masks include those of every listed
    /// prefix containing it, because an LPM lookup only returns the longest.
    prefixes: BTreeMap<IpNet, MatchInfo>,
    /// Relay OR address + ORPort -> relay feed mask.
    or_ports: BTreeMap<OrPortKey, u32>,
    /// The prefix lengths `prefixes` holds, longest first (IPv4, IPv6): a
    /// userspace lookup tries only those.
    lengths: [Vec<u8>; 2],
}

/// One feed's part in a match.
#[derive(Debug, Clone)]
pub struct FeedMatch<'a> {
    pub feed: &'a Feed,
    pub role: Role,
    /// The listed prefix (exit) or the OR address (relay).
    pub prefix: IpNet,
    /// The ORPort that matched (relay).
    pub or_port: Option<u16>,
    /// Relays behind the address (one address can belong to many).
    pub relays: Vec<&'a Relay>,
    /// When the address was last seen as an exit.
    pub exit_last_seen: Option<SystemTime>,
}

/// The kernel key of an OR address.
pub fn or_port_key(sa: SocketAddr) -> OrPortKey {
    match canonical_ip(sa.ip()) {
        IpAddr::V4(a) => OrPortKey::v4(a.octets(), sa.port()),
        IpAddr::V6(a) => OrPortKey::v6(a.octets(), sa.port()),
    }
}

impl FeedSet {
    pub fn new(feeds: Vec<Arc<Feed>>) -> Result<Self, SetError> {
        if feeds.len() > MAX_FEEDS {
            return Err(SetError::TooMany { count: feeds.len() });
        }
        let mut prefixes: BTreeMap<IpNet, MatchInfo> = BTreeMap::new();
        let mut or_ports: BTreeMap<OrPortKey, u32> = BTreeMap::new();
        for (index, feed) in feeds.iter().enumerate() {
            let bit = 1u32 << index;
            for net in feed.data.exits.keys() {
                prefixes.entry(*net).or_default().exit_feeds |= bit;
            }
            for sa in feed.data.or_ports.keys() {
                prefixes
                    .entry(IpNet::from(sa.ip()))
                    .or_default()
                    .relay_feeds |= bit;
                *or_ports.entry(or_port_key(*sa)).or_default() |= bit;
            }
        }
        propagate_containing(&mut prefixes);
        let mut lengths = [Vec::new(), Vec::new()];
        for net in prefixes.keys() {
            let l = &mut lengths[usize::from(net.addr().is_ipv6())];
            if !l.contains(&net.prefix_len()) {
                l.push(net.prefix_len());
            }
        }
        for l in &mut lengths {
            l.sort_unstable_by(|a, b| b.cmp(a));
        }
        Ok(FeedSet {
            feeds,
            prefixes,
            or_ports,
            lengths,
        })
    }

    pub fn feeds(&self) -> &[Arc<Feed>] {
        &self.feeds
    }

    /// The LPM-trie content (prefix -> masks).
    pub fn prefixes(&self) -> &BTreeMap<IpNet, MatchInfo> {
        &self.prefixes
    }

    /// The OR-port hash content (address + port -> relay feed mask).
    pub fn or_ports(&self) -> &BTreeMap<OrPortKey, u32> {
        &self.or_ports
    }

    /// Distinct prefixes, all feeds and roles together.
    pub fn len(&self) -> usize {
        self.prefixes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.prefixes.is_empty()
    }

    /// Names of the feeds whose bits are set in `mask`.
    pub fn feed_names(&self, mask: u32) -> Vec<&str> {
        self.feeds
            .iter()
            .enumerate()
            .filter(|(i, _)| mask & (1 << i) != 0)
            .map(|(_, f)| f.name.as_str())
            .collect()
    }

    /// Longest listed prefix containing `ip` (IPv4-mapped IPv6 is IPv4).
    fn longest(&self, ip: IpAddr) -> Option<(IpNet, MatchInfo)> {
        let ip = canonical_ip(ip);
        self.lengths[usize::from(ip.is_ipv6())]
            .iter()
            .find_map(|&len| {
                let prefix = IpNet::new(ip, len).ok()?.trunc();
                self.prefixes.get(&prefix).map(|m| (prefix, *m))
            })
    }

    /// The kernel's decision for a connection: exits match in both
    /// directions on any port; a relay OR address only outbound on an ORPort.
    pub fn classify(&self, ip: IpAddr, port: u16, direction: Direction) -> Option<MatchInfo> {
        let (_, listed) = self.longest(ip)?;
        let mut hit = MatchInfo {
            exit_feeds: listed.exit_feeds,
            relay_feeds: 0,
        };
        if direction == Direction::Egress && listed.relay_feeds != 0 {
            let key = or_port_key(SocketAddr::new(ip, port));
            hit.relay_feeds = self.or_ports.get(&key).copied().unwrap_or(0);
        }
        (hit != MatchInfo::NONE).then_some(hit)
    }

    /// Details of a match: one entry per feed and role in `matched`.
    /// `port` is the peer's port (needed for relay matches).
    pub fn explain(&self, ip: IpAddr, port: u16, matched: MatchInfo) -> Vec<FeedMatch<'_>> {
        let mut out = Vec::new();
        for (index, feed) in self.feeds.iter().enumerate() {
            let bit = 1u32 << index;
            if matched.exit_feeds & bit != 0
                && let Some(m) = exit_match(feed, ip)
            {
                out.push(m);
            }
            if matched.relay_feeds & bit != 0 {
                out.extend(relay_matches(feed, ip, Some(port)));
            }
        }
        out
    }

    /// Everything the feeds say about an address, in any role: exits, and
    /// relays on `port` (or on any ORPort when no port is given).
    pub fn lookup(&self, ip: IpAddr, port: Option<u16>) -> Vec<FeedMatch<'_>> {
        let mut out = Vec::new();
        for feed in &self.feeds {
            // A local SOCKS port is a port, not an address of the network.
            if feed.data.socks_ports && port.is_none() {
                continue;
            }
            out.extend(exit_match(feed, ip));
            out.extend(relay_matches(feed, ip, port));
        }
        out
    }
}

/// The longest exit prefix of one feed containing `ip`.
fn exit_match(feed: &Feed, ip: IpAddr) -> Option<FeedMatch<'_>> {
    let (prefix, info): (IpNet, &ExitInfo) = longest_prefix(&feed.data.exits, ip)?;
    Some(FeedMatch {
        feed,
        role: Role::Exit,
        prefix,
        or_port: None,
        relays: relays_of(feed, &info.relays),
        exit_last_seen: info.last_seen,
    })
}

/// The longest prefix of `map` containing `ip` (IPv4-mapped IPv6 is IPv4),
/// as the kernel's LPM lookup finds it.
fn longest_prefix<V>(map: &BTreeMap<IpNet, V>, ip: IpAddr) -> Option<(IpNet, &V)> {
    let ip = canonical_ip(ip);
    let max = if ip.is_ipv4() { 32 } else { 128 };
    (0..=max).rev().find_map(|len| {
        let prefix = IpNet::new(ip, len).ok()?.trunc();
        map.get(&prefix).map(|v| (prefix, v))
    })
}

/// One feed's relay entries for `ip` on `port` (any port when `None`).
fn relay_matches(feed: &Feed, ip: IpAddr, port: Option<u16>) -> Vec<FeedMatch<'_>> {
    let ip = canonical_ip(ip);
    let range = match port {
        Some(p) => SocketAddr::new(ip, p)..=SocketAddr::new(ip, p),
        None => SocketAddr::new(ip, 0)..=SocketAddr::new(ip, u16::MAX),
    };
    feed.data
        .or_ports
        .range(range)
        .map(|(sa, relays)| FeedMatch {
            feed,
            role: if feed.data.socks_ports {
                Role::Socks
            } else {
                Role::Relay
            },
            prefix: IpNet::from(sa.ip()),
            or_port: Some(sa.port()),
            relays: relays_of(feed, relays),
            exit_last_seen: None,
        })
        .collect()
}

fn relays_of<'a>(feed: &'a Feed, indexes: &[u32]) -> Vec<&'a Relay> {
    indexes
        .iter()
        .filter_map(|i| feed.data.relays.get(*i as usize))
        .collect()
}

/// ORs into each prefix the masks of every shorter listed prefix that
/// contains it. Only the prefix lengths actually present are probed.
fn propagate_containing(prefixes: &mut BTreeMap<IpNet, MatchInfo>) {
    let lengths: BTreeSet<(bool, u8)> = prefixes
        .keys()
        .map(|n| (matches!(n, IpNet::V4(_)), n.prefix_len()))
        .collect();
    let host_only = lengths
        .iter()
        .all(|(v4, len)| *len == if *v4 { 32 } else { 128 });
    if host_only {
        return;
    }
    let updates: Vec<(IpNet, MatchInfo)> = prefixes
        .iter()
        .filter_map(|(net, own)| {
            let v4 = matches!(net, IpNet::V4(_));
            let mut merged = *own;
            for (_, len) in lengths
                .iter()
                .filter(|(f, len)| *f == v4 && *len < net.prefix_len())
            {
                let outer = IpNet::new(net.addr(), *len)
                    .expect("shorter length")
                    .trunc();
                if let Some(m) = prefixes.get(&outer) {
                    merged.exit_feeds |= m.exit_feeds;
                    merged.relay_feeds |= m.relay_feeds;
                }
            }
            (merged != *own).then_some((*net, merged))
        })
        .collect();
    for (net, merged) in updates {
        prefixes.insert(net, merged);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feed::{FeedFormat, Origin, parse::parse};

    fn feed(name: &str, text: &str) -> Arc<Feed> {
        Arc::new(Feed {
            name: name.into(),
            location: format!("{name}.txt"),
            origin: Origin::File,
            fetched: None,
            data: parse(text.as_bytes(), None, true).unwrap(),
        })
    }

    const RELAYS: &str = r#"{"relays_published":"2026-09-04 10:00:00","relays":[
        {"nickname":"g1","fingerprint":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA","or_addresses":["185.220.101.1:9001","[2a0b:f4c2::1]:443"]},
        {"nickname":"g2","fingerprint":"BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB","or_addresses":["185.220.101.1:9002"]}]}"#;

    #[test]
    fn a_consensus_and_an_exit_list_merge_side_by_side() {
        let consensus = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/data/consensus/live-truncated/consensus"
        ))
        .unwrap();
        // d2d4 (185.129.61.129, ORPort 443) exits by its p line; the exit
        // list names the same address and one the consensus does not have.
        let exits = "ExitNode 5048DE03CA39D393BD54CEEB3A65E6DD0FDDB9AA\n\
                     ExitAddress 185.129.61.129 2026-07-27 09:00:00\n\
                     ExitNode CCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCC\n\
                     ExitAddress 198.51.100.9 2026-07-27 09:00:00\n";
        let set = FeedSet::new(vec![feed("consensus", &consensus), feed("exits", exits)]).unwrap();
        let ip: IpAddr = "185.129.61.129".parse().unwrap();
        let matches = set.lookup(ip, Some(443));
        let seen: Vec<(&str, Role)> = matches
            .iter()
            .map(|m| (m.feed.name.as_str(), m.role))
            .collect();
        assert_eq!(
            seen,
            [
                ("consensus", Role::Exit),
                ("consensus", Role::Relay),
                ("exits", Role::Exit)
            ]
        );
        let relay = &matches[1].relays[0];
        assert_eq!(relay.nickname.as_deref(), Some("d2d4"));
        assert!(relay.flags.iter().any(|f| f == "Exit"));
        assert_eq!(
            set.classify(ip, 443, Direction::Egress),
            Some(MatchInfo {
                exit_feeds: 0b11,
                relay_feeds: 0b01
            })
        );
        let only_list: IpAddr = "198.51.100.9".parse().unwrap();
        assert_eq!(set.lookup(only_list, None).len(), 1);
    }

    #[test]
    fn relay_matches_only_outbound_on_an_orport() {
        let set = FeedSet::new(vec![feed("relays", RELAYS)]).unwrap();
        let ip: IpAddr = "185.220.101.1".parse().unwrap();
        let hit = set.classify(ip, 9001, Direction::Egress).unwrap();
        assert_eq!(
            hit,
            MatchInfo {
                exit_feeds: 0,
                relay_feeds: 1
            }
        );
        assert_eq!(set.classify(ip, 443, Direction::Egress), None);
        assert_eq!(set.classify(ip, 9001, Direction::Ingress), None);
        let v6: IpAddr = "2a0b:f4c2::1".parse().unwrap();
        assert!(set.classify(v6, 443, Direction::Egress).is_some());
        let mapped: IpAddr = "::ffff:185.220.101.1".parse().unwrap();
        assert!(set.classify(mapped, 9002, Direction::Egress).is_some());
        let why = set.explain(ip, 9002, hit_on(&set, ip, 9002));
        assert_eq!(why.len(), 1);
        assert_eq!(why[0].role, Role::Relay);
        assert_eq!(why[0].relays[0].nickname.as_deref(), Some("g2"));
        // Without a port, check lists every ORPort of the address.
        assert_eq!(set.lookup(ip, None).len(), 2);
    }

    fn hit_on(set: &FeedSet, ip: IpAddr, port: u16) -> MatchInfo {
        set.classify(ip, port, Direction::Egress).unwrap()
    }

    #[test]
    fn exits_match_both_ways_on_any_port_with_every_fingerprint() {
        let exits = feed(
            "exits",
            "ExitNode AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\nExitAddress 185.220.101.1 2024-03-12 14:10:09\nExitNode CCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCC\nExitAddress 185.220.101.1 2024-03-12 14:20:00\n",
        );
        let set = FeedSet::new(vec![feed("relays", RELAYS), exits]).unwrap();
        let ip: IpAddr = "185.220.101.1".parse().unwrap();
        assert_eq!(
            set.classify(ip, 80, Direction::Egress),
            Some(MatchInfo {
                exit_feeds: 2,
                relay_feeds: 0
            })
        );
        assert_eq!(
            set.classify(ip, 9001, Direction::Egress),
            Some(MatchInfo {
                exit_feeds: 2,
                relay_feeds: 1
            })
        );
        let inbound = set.classify(ip, 50000, Direction::Ingress).unwrap();
        assert_eq!(
            inbound,
            MatchInfo {
                exit_feeds: 2,
                relay_feeds: 0
            }
        );
        let why = set.explain(ip, 50000, inbound);
        assert_eq!(why.len(), 1);
        assert_eq!(why[0].feed.name, "exits");
        assert_eq!(why[0].relays.len(), 2);
        assert_eq!(
            humantime::format_rfc3339(why[0].exit_last_seen.unwrap()).to_string(),
            "2024-03-12T14:20:00Z"
        );
        assert_eq!(why[0].feed.data.format, Some(FeedFormat::Tordnsel));
    }

    #[test]
    fn a_host_entry_inside_a_listed_cidr_keeps_the_cidr_feed() {
        // The kernel's LPM lookup returns only the /32; its value must carry
        // the /24's feed too.
        let wide = feed("wide", "185.220.101.0/24\n");
        let set = FeedSet::new(vec![wide, feed("relays", RELAYS)]).unwrap();
        let host = set.prefixes()[&"185.220.101.1/32".parse::<IpNet>().unwrap()];
        assert_eq!(
            host,
            MatchInfo {
                exit_feeds: 1,
                relay_feeds: 2
            }
        );
        let ip: IpAddr = "185.220.101.1".parse().unwrap();
        assert_eq!(
            set.classify(ip, 443, Direction::Ingress),
            Some(MatchInfo {
                exit_feeds: 1,
                relay_feeds: 0
            })
        );
        assert_eq!(set.feed_names(0b11), vec!["wide", "relays"]);
        // Another address of the /24 (no /32 of its own): found by the
        // /24, the only other length tried.
        let other: IpAddr = "185.220.101.200".parse().unwrap();
        assert_eq!(set.lengths[0].first(), Some(&32));
        assert!(set.lengths[0].contains(&24));
        assert_eq!(
            set.classify(other, 80, Direction::Ingress)
                .map(|m| m.exit_feeds),
            Some(1)
        );
        assert_eq!(
            set.classify("185.220.102.1".parse().unwrap(), 80, Direction::Ingress),
            None
        );
    }

    #[test]
    fn too_many_feeds_is_an_error() {
        let one = feed("x", "1.2.3.4\n");
        let feeds = (0..33).map(|_| one.clone()).collect();
        assert_eq!(
            FeedSet::new(feeds).unwrap_err(),
            SetError::TooMany { count: 33 }
        );
    }
}
