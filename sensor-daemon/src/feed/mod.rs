//! Feeds: what marks a peer as part of the Tor network.
//!
//! - [`parse`]: the formats (plain lists, TorDNSEL, Onionoo) and how a bad
//!   body is rejected.
//! - [`set`]: every loaded feed merged into what the kernel maps hold, and
//!   the lookups that explain a match (role, relays, feed, version).
//! - [`source`]: fetching (HTTP with conditional requests, local files) and
//!   the last-known-good cache in the state directory.
//! - [`manager`]: which feeds are loaded, from where, how old; validation of
//!   refreshes and the schedule of the next fetch.
//!
//! This file holds what they share: addresses, reserved ranges, [`Feed`].

pub mod manager;
pub mod parse;
pub mod refresh;
pub mod set;
pub mod source;

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, SystemTime};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::Serialize;

pub use parse::{FeedFormat, ParseError, ParseOptions, ParsedFeed};
pub use set::{FeedMatch, FeedSet, Role};

/// The embedded default snapshot (see `sensor-daemon/data/PROVENANCE.md`):
/// the TorDNSEL exit list and the Onionoo relay list of 2024-03-12.
pub const EMBEDDED_EXIT_LIST: &str =
    include_str!("../../data/exit-addresses_check.torproject.org_2024-03-12.txt");
pub const EMBEDDED_RELAY_LIST: &str =
    include_str!("../../data/onionoo_details_running-relays_fp-or-country_2024-03-12.json");
/// Names of the embedded feeds in alerts and answers.
pub const EMBEDDED_EXIT_NAME: &str = "embedded-tor-exits";
pub const EMBEDDED_RELAY_NAME: &str = "embedded-tor-relays";

/// A feed age for people: `3d 4h`, `5h 12m`, `7m 30s`.
pub fn format_age(d: Duration) -> String {
    let s = d.as_secs();
    let (days, hours, minutes) = (s / 86_400, s % 86_400 / 3600, s % 3600 / 60);
    if days > 0 {
        format!("{days}d {hours}h")
    } else if hours > 0 {
        format!("{hours}h {minutes}m")
    } else {
        format!("{minutes}m {}s", s % 60)
    }
}

/// Where the feed now in use came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// Compiled into the binary (the last resort).
    Embedded,
    /// A local file named in the configuration.
    File,
    /// The last-known-good copy in the state directory.
    Cache,
    /// Fetched by this process.
    Network,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Origin::Embedded => "embedded",
            Origin::File => "file",
            Origin::Cache => "cache",
            Origin::Network => "network",
        })
    }
}

/// One loaded feed: its content and where and when it came from.
#[derive(Debug, Clone)]
pub struct Feed {
    /// Name used in alerts (`threat.feed.name`) and as the cache file name.
    pub name: String,
    /// URL or path.
    pub location: String,
    pub origin: Origin,
    /// When the body was fetched (or read).
    pub fetched: Option<SystemTime>,
    pub data: ParsedFeed,
}

/// Entry counts of a feed, per role and family.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct FeedCounts {
    pub exit_v4: usize,
    pub exit_v6: usize,
    /// Distinct relay OR addresses.
    pub relay_v4: usize,
    pub relay_v6: usize,
    /// OR address + ORPort pairs.
    pub or_ports: usize,
    pub relays: usize,
}

impl Feed {
    /// The embedded snapshot: exits (TorDNSEL) and relays (Onionoo).
    pub fn embedded() -> Vec<Feed> {
        [
            (EMBEDDED_EXIT_NAME, EMBEDDED_EXIT_LIST, FeedFormat::Tordnsel),
            (
                EMBEDDED_RELAY_NAME,
                EMBEDDED_RELAY_LIST,
                FeedFormat::Onionoo,
            ),
        ]
        .into_iter()
        .map(|(name, text, format)| Feed {
            name: name.to_owned(),
            location: "embedded".to_owned(),
            origin: Origin::Embedded,
            fetched: None,
            data: parse::parse(text.as_bytes(), Some(format), false)
                .expect("the embedded snapshot parses (tested)"),
        })
        .collect()
    }

    /// The feed's version (publication time) if it has one, else when it was
    /// fetched: what its age is measured from.
    pub fn as_of(&self) -> Option<SystemTime> {
        self.data.version.or(self.fetched)
    }

    pub fn age(&self, now: SystemTime) -> Option<Duration> {
        self.as_of()
            .map(|t| now.duration_since(t).unwrap_or_default())
    }

    pub fn counts(&self) -> FeedCounts {
        let d = &self.data;
        let mut relay_ips: Vec<IpAddr> = d.or_ports.keys().map(|s| s.ip()).collect();
        relay_ips.dedup();
        FeedCounts {
            exit_v4: d.exits.keys().filter(|n| matches!(n, IpNet::V4(_))).count(),
            exit_v6: d.exits.keys().filter(|n| matches!(n, IpNet::V6(_))).count(),
            relay_v4: relay_ips.iter().filter(|ip| ip.is_ipv4()).count(),
            relay_v6: relay_ips.iter().filter(|ip| ip.is_ipv6()).count(),
            or_ports: d.or_ports.len(),
            relays: d.relays.len(),
        }
    }

    /// Logs bad records (each with file and line, or JSON path) and one
    /// summary line for dropped reserved entries.
    pub fn log_problems(&self) {
        let r = &self.data.report;
        for bad in &r.bad {
            tracing::warn!(
                "{}:{}: skipped {:?}: {}",
                self.location,
                bad.at,
                bad.text,
                bad.reason
            );
        }
        if r.bad_count > r.bad.len() {
            tracing::warn!(
                "{}: {} more bad records skipped",
                self.location,
                r.bad_count - r.bad.len()
            );
        }
        if let Some(first) = r.first_reserved {
            tracing::warn!(
                "{}: dropped {} reserved-range entries (loopback, private, link-local, documentation...; first: {first}); set allow_reserved to keep them",
                self.location,
                r.reserved_count
            );
        }
    }
}

impl fmt::Display for FeedCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "exit addresses {} IPv4 / {} IPv6, relay OR addresses {} IPv4 / {} IPv6 ({} ORPorts, {} relays)",
            self.exit_v4, self.exit_v6, self.relay_v4, self.relay_v6, self.or_ports, self.relays
        )
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn embedded_snapshot_is_the_real_2024_03_12_lists() {
        let feeds = Feed::embedded();
        let counts: Vec<FeedCounts> = feeds.iter().map(Feed::counts).collect();
        assert_eq!(counts[0].exit_v4, 1174);
        assert_eq!(counts[0].relays, 2372);
        assert_eq!(counts[1].relay_v4 + counts[1].relay_v6, 8344);
        assert_eq!(counts[1].relays, 7607);
        assert!(feeds.iter().all(|f| f.data.report.bad_count == 0));
    }
}
