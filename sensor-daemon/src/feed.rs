//! Feeds: lists of addresses that mark a peer as part of the Tor network.
//!
//! This module owns parsing (plain lists: one IP or CIDR per line, `#`
//! comments, blank lines; the Tor bulk exit list is this format), the
//! reserved-range policy, and the merged [`FeedSet`] that the kernel maps and
//! `torsensor check` are built from.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use sensor_common::{MAX_FEEDS, MatchInfo, ROLE_EXIT};

/// The Tor bulk exit list snapshot compiled into the binary (see
/// `sensor-daemon/data/PROVENANCE.md`).
pub const EMBEDDED_BULK_EXIT_LIST: &str = include_str!("../data/torbulkexitlist_2024-03-12.txt");
/// Name of the embedded feed in alerts and `check` answers.
pub const EMBEDDED_FEED_NAME: &str = "tor-bulk-exit-list (embedded 2024-03-12)";

#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    #[error("cannot read feed file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "feed {name} has no usable entries ({rejected} bad lines, {reserved} reserved entries dropped)"
    )]
    Empty {
        name: String,
        rejected: usize,
        reserved: usize,
    },
    #[error("too many feeds: {count} given, at most {MAX_FEEDS} can be loaded at once")]
    TooMany { count: usize },
}

/// A line that could not be used, with where it was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadLine {
    pub line: usize,
    pub text: String,
    pub reason: String,
}

/// One parsed feed.
#[derive(Debug, Clone)]
pub struct Feed {
    /// Name used in alerts (`threat.feed.name`).
    pub name: String,
    /// Where it came from (a path, or `embedded`).
    pub source: String,
    /// Usable prefixes, normalised (host bits cleared, IPv4-mapped IPv6 as IPv4).
    pub entries: Vec<IpNet>,
    /// Lines that were not an address or a CIDR.
    pub bad_lines: Vec<BadLine>,
    /// Entries dropped because they touch a reserved range.
    pub reserved: Vec<IpNet>,
}

impl Feed {
    /// Parses a plain list. Bad lines are kept in `bad_lines` (the rest still
    /// loads); reserved entries are dropped unless `allow_reserved`.
    pub fn parse_plain(name: &str, source: &str, text: &str, allow_reserved: bool) -> Self {
        let mut feed = Feed {
            name: name.to_owned(),
            source: source.to_owned(),
            entries: Vec::new(),
            bad_lines: Vec::new(),
            reserved: Vec::new(),
        };
        for (index, raw) in text.lines().enumerate() {
            let content = raw.split('#').next().unwrap_or("").trim();
            if content.is_empty() {
                continue;
            }
            match parse_entry(content) {
                Ok(net) if !allow_reserved && is_reserved(&net) => feed.reserved.push(net),
                Ok(net) => feed.entries.push(net),
                Err(reason) => feed.bad_lines.push(BadLine {
                    line: index + 1,
                    text: content.chars().take(80).collect(),
                    reason,
                }),
            }
        }
        feed
    }

    /// Reads and parses a plain-list file; the feed is named after the file.
    pub fn load_file(path: &Path, allow_reserved: bool) -> Result<Self, FeedError> {
        let text = std::fs::read_to_string(path).map_err(|source| FeedError::Read {
            path: path.to_owned(),
            source,
        })?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.display().to_string());
        let feed = Self::parse_plain(&name, &path.display().to_string(), &text, allow_reserved);
        feed.ensure_usable()?;
        Ok(feed)
    }

    /// The embedded bulk exit list snapshot.
    pub fn embedded() -> Self {
        Self::parse_plain(
            EMBEDDED_FEED_NAME,
            "embedded",
            EMBEDDED_BULK_EXIT_LIST,
            false,
        )
    }

    fn ensure_usable(&self) -> Result<(), FeedError> {
        if self.entries.is_empty() {
            return Err(FeedError::Empty {
                name: self.source.clone(),
                rejected: self.bad_lines.len(),
                reserved: self.reserved.len(),
            });
        }
        Ok(())
    }

    /// Logs bad lines (each with file and line) and one summary line for
    /// dropped reserved entries.
    pub fn log_problems(&self) {
        for bad in self.bad_lines.iter().take(20) {
            tracing::warn!(
                "{}:{}: skipped {:?}: {}",
                self.source,
                bad.line,
                bad.text,
                bad.reason
            );
        }
        if self.bad_lines.len() > 20 {
            tracing::warn!(
                "{}: {} more bad lines skipped",
                self.source,
                self.bad_lines.len() - 20
            );
        }
        if let Some(first) = self.reserved.first() {
            tracing::warn!(
                "{}: dropped {} reserved-range entries (loopback, private, link-local, documentation...; first: {first}); use --allow-reserved to keep them",
                self.source,
                self.reserved.len()
            );
        }
    }
}

/// Parses one entry: an address or a CIDR prefix.
pub fn parse_entry(text: &str) -> Result<IpNet, String> {
    let net = if text.contains('/') {
        text.parse::<IpNet>()
            .map_err(|_| "not an IP address or CIDR prefix".to_owned())?
    } else {
        let ip = text
            .parse::<IpAddr>()
            .map_err(|_| "not an IP address or CIDR prefix".to_owned())?;
        IpNet::from(ip)
    };
    Ok(normalize(net))
}

/// Clears host bits and turns an IPv4-mapped IPv6 prefix (`::ffff:a.b.c.d/n`,
/// n >= 96) into the IPv4 prefix it stands for, so that it matches dual-stack
/// peers the same way as plain IPv4 ones.
pub fn normalize(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
            Some(v4) => IpNet::V4(
                Ipv4Net::new(v4, v6.prefix_len() - 96)
                    .expect("prefix - 96 is at most 32")
                    .trunc(),
            ),
            None => IpNet::V6(v6.trunc()),
        },
        other => other.trunc(),
    }
}

/// The address a peer should be matched as: IPv4-mapped IPv6 becomes IPv4.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

const RESERVED_V4: &[(Ipv4Addr, u8)] = &[
    (Ipv4Addr::new(0, 0, 0, 0), 8),       // "this network"
    (Ipv4Addr::new(10, 0, 0, 0), 8),      // private
    (Ipv4Addr::new(100, 64, 0, 0), 10),   // shared address space (CGNAT)
    (Ipv4Addr::new(127, 0, 0, 0), 8),     // loopback
    (Ipv4Addr::new(169, 254, 0, 0), 16),  // link-local
    (Ipv4Addr::new(172, 16, 0, 0), 12),   // private
    (Ipv4Addr::new(192, 0, 0, 0), 24),    // IETF protocol assignments
    (Ipv4Addr::new(192, 0, 2, 0), 24),    // documentation (TEST-NET-1)
    (Ipv4Addr::new(192, 168, 0, 0), 16),  // private
    (Ipv4Addr::new(198, 18, 0, 0), 15),   // benchmarking
    (Ipv4Addr::new(198, 51, 100, 0), 24), // documentation (TEST-NET-2)
    (Ipv4Addr::new(203, 0, 113, 0), 24),  // documentation (TEST-NET-3)
    (Ipv4Addr::new(224, 0, 0, 0), 4),     // multicast
    (Ipv4Addr::new(240, 0, 0, 0), 4),     // reserved, broadcast
];

const RESERVED_V6: &[(Ipv6Addr, u8)] = &[
    (Ipv6Addr::UNSPECIFIED, 128),
    (Ipv6Addr::LOCALHOST, 128),
    (Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 0), 64), // discard-only
    (Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0), 32), // documentation
    (Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0), 7), // unique local
    (Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10), // link-local
    (Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), 8), // multicast
];

/// True if `net` overlaps a reserved range (loopback, private, link-local,
/// documentation, multicast...): inside one, or so wide that it covers one.
/// No public Tor relay can have such an address, so a feed entry like this is
/// a mistake (or a lab setup, hence `--allow-reserved`).
pub fn is_reserved(net: &IpNet) -> bool {
    fn overlaps(a: &IpNet, b: &IpNet) -> bool {
        a.contains(b) || b.contains(a)
    }
    match net {
        IpNet::V4(_) => RESERVED_V4.iter().any(|(addr, len)| {
            overlaps(
                net,
                &IpNet::V4(Ipv4Net::new(*addr, *len).expect("valid table")),
            )
        }),
        IpNet::V6(_) => RESERVED_V6.iter().any(|(addr, len)| {
            overlaps(
                net,
                &IpNet::V6(Ipv6Net::new(*addr, *len).expect("valid table")),
            )
        }),
    }
}

/// Every loaded feed merged: each prefix with the feeds that list it.
#[derive(Debug, Clone, Default)]
pub struct FeedSet {
    feeds: Vec<FeedInfo>,
    prefixes: BTreeMap<IpNet, MatchInfo>,
}

/// What is kept of a feed once merged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedInfo {
    pub name: String,
    pub source: String,
    pub entries: usize,
}

/// The answer to "is this address listed?".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    /// The longest listed prefix containing the address.
    pub prefix: IpNet,
    pub matched: MatchInfo,
}

impl FeedSet {
    /// Merges feeds; feed `i` gets bit `i` of [`MatchInfo::feeds`].
    pub fn new(feeds: Vec<Feed>) -> Result<Self, FeedError> {
        if feeds.len() > MAX_FEEDS {
            return Err(FeedError::TooMany { count: feeds.len() });
        }
        let mut set = FeedSet::default();
        for (index, feed) in feeds.into_iter().enumerate() {
            for net in &feed.entries {
                let info = set.prefixes.entry(*net).or_default();
                info.feeds |= 1 << index;
                // Plain lists are exit lists (the bulk exit list is the
                // reference format); relay roles come with richer sources.
                info.roles |= ROLE_EXIT;
            }
            set.feeds.push(FeedInfo {
                name: feed.name,
                source: feed.source,
                entries: feed.entries.len(),
            });
        }
        Ok(set)
    }

    pub fn feeds(&self) -> &[FeedInfo] {
        &self.feeds
    }

    /// Distinct prefixes, all feeds together.
    pub fn len(&self) -> usize {
        self.prefixes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.prefixes.is_empty()
    }

    pub fn prefixes(&self) -> impl Iterator<Item = (&IpNet, &MatchInfo)> {
        self.prefixes.iter()
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

    /// Longest-prefix match, as the kernel does it (IPv4-mapped IPv6 is IPv4).
    pub fn lookup(&self, ip: IpAddr) -> Option<Listing> {
        let ip = canonical_ip(ip);
        let max = match ip {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        };
        (0..=max).rev().find_map(|len| {
            let prefix = IpNet::new(ip, len).ok()?.trunc();
            self.prefixes.get(&prefix).map(|matched| Listing {
                prefix,
                matched: *matched,
            })
        })
    }
}

impl fmt::Display for FeedInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({} entries from {})",
            self.name, self.entries, self.source
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_list_with_comments_blanks_cidrs_and_bad_lines() {
        let text = "# header\n\n1.2.3.4\n 5.6.7.0/24  # trailing comment\nnot-an-ip\n2a00:1::1\n10.0.0.1\n1.2.3.4/33\n";
        let feed = Feed::parse_plain("t", "t.txt", text, false);
        assert_eq!(
            feed.entries,
            vec![
                "1.2.3.4/32".parse::<IpNet>().unwrap(),
                "5.6.7.0/24".parse().unwrap(),
                "2a00:1::1/128".parse().unwrap(),
            ]
        );
        assert_eq!(feed.bad_lines.len(), 2);
        assert_eq!(feed.bad_lines[0].line, 5);
        assert_eq!(feed.bad_lines[0].text, "not-an-ip");
        assert_eq!(feed.bad_lines[1].line, 8);
        assert_eq!(feed.reserved, vec!["10.0.0.1/32".parse::<IpNet>().unwrap()]);
    }

    #[test]
    fn host_bits_are_cleared_and_mapped_prefixes_become_ipv4() {
        assert_eq!(parse_entry("5.6.7.8/24").unwrap().to_string(), "5.6.7.0/24");
        assert_eq!(
            parse_entry("::ffff:1.2.3.4").unwrap().to_string(),
            "1.2.3.4/32"
        );
        assert_eq!(
            parse_entry("::ffff:1.2.3.0/120").unwrap().to_string(),
            "1.2.3.0/24"
        );
        assert_eq!(
            canonical_ip("::ffff:9.9.9.9".parse().unwrap()).to_string(),
            "9.9.9.9"
        );
        assert_eq!(
            canonical_ip("2001:db8::1".parse().unwrap()).to_string(),
            "2001:db8::1"
        );
    }

    #[test]
    fn reserved_ranges() {
        for reserved in [
            "127.0.0.1/32",
            "10.1.0.0/16",
            "192.168.1.1/32",
            "172.20.0.1/32",
            "169.254.1.1/32",
            "192.0.2.7/32",
            "198.51.100.0/24",
            "203.0.113.9/32",
            "100.64.0.1/32",
            "224.0.0.1/32",
            "0.0.0.0/0",
            "8.0.0.0/5", // wide enough to cover 10.0.0.0/8
            "::1/128",
            "fe80::1/128",
            "fd00::1/128",
            "2001:db8::1/128",
            "ff02::1/128",
        ] {
            assert!(is_reserved(&reserved.parse().unwrap()), "{reserved}");
        }
        for public in [
            "1.2.3.4/32",
            "185.220.101.0/24",
            "2a0b:f4c2::1/128",
            "11.0.0.0/8",
        ] {
            assert!(!is_reserved(&public.parse().unwrap()), "{public}");
        }
    }

    #[test]
    fn allow_reserved_keeps_lab_addresses() {
        let feed = Feed::parse_plain("lab", "lab", "127.66.0.0/16\n2001:db8::2\n", true);
        assert_eq!(feed.entries.len(), 2);
        assert!(feed.reserved.is_empty());
    }

    #[test]
    fn embedded_snapshot_is_the_real_bulk_exit_list() {
        let feed = Feed::embedded();
        assert_eq!(feed.entries.len(), 1174);
        assert!(feed.bad_lines.is_empty());
        assert!(feed.reserved.is_empty());
        assert!(
            feed.entries
                .iter()
                .all(|e| matches!(e, IpNet::V4(n) if n.prefix_len() == 32))
        );
    }

    #[test]
    fn feed_set_longest_prefix_and_feed_bits() {
        let a = Feed::parse_plain("a", "a", "1.2.3.0/24\n", false);
        let b = Feed::parse_plain("b", "b", "1.2.3.4\n2a00::/16\n", false);
        let set = FeedSet::new(vec![a, b]).unwrap();
        let hit = set.lookup("1.2.3.4".parse().unwrap()).unwrap();
        assert_eq!(hit.prefix.to_string(), "1.2.3.4/32");
        assert_eq!(set.feed_names(hit.matched.feeds), vec!["b"]);
        let wide = set.lookup("1.2.3.5".parse().unwrap()).unwrap();
        assert_eq!(set.feed_names(wide.matched.feeds), vec!["a"]);
        assert!(set.lookup("::ffff:1.2.3.9".parse().unwrap()).is_some());
        assert!(set.lookup("2a00:5::1".parse().unwrap()).is_some());
        assert!(set.lookup("1.2.4.1".parse().unwrap()).is_none());
        assert_eq!(set.len(), 3);
    }

    #[test]
    fn an_entry_in_two_feeds_carries_both_bits() {
        let a = Feed::parse_plain("a", "a", "1.2.3.4\n", false);
        let b = Feed::parse_plain("b", "b", "1.2.3.4\n", false);
        let set = FeedSet::new(vec![a, b]).unwrap();
        let hit = set.lookup("1.2.3.4".parse().unwrap()).unwrap();
        assert_eq!(hit.matched.feeds, 0b11);
        assert_eq!(set.feed_names(hit.matched.feeds), vec!["a", "b"]);
    }

    #[test]
    fn too_many_feeds_is_an_error() {
        let feeds = (0..33)
            .map(|i| Feed::parse_plain(&i.to_string(), "x", "1.2.3.4", false))
            .collect();
        assert!(matches!(
            FeedSet::new(feeds),
            Err(FeedError::TooMany { count: 33 })
        ));
    }
}
