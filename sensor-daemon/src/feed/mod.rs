//! Feeds: what marks a peer as part of the Tor network.
//!
//! - [`parse`]: the formats (plain lists, TorDNSEL, Onionoo, Tor consensus
//!   documents) and how a bad body is rejected.
//! - [`verify`]: a consensus's signatures against the directory
//!   authorities' key certificates.
//! - [`set`]: every loaded feed merged into what the kernel maps hold, and
//!   the lookups that explain a match (role, relays, feed, version).
//! - [`source`]: fetching (HTTP with conditional requests, local files, a
//!   tor's DataDirectory) and
//!   the last-known-good cache in the state directory.
//! - [`manager`]: which feeds are loaded, from where, how old; validation of
//!   refreshes and the schedule of the next fetch.
//!
//! This file holds what they share: addresses, reserved ranges, [`Feed`].

pub mod config;
pub mod manager;
pub mod parse;
pub mod refresh;
pub mod set;
pub mod source;
pub mod verify;

use std::fmt;
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use ipnet::IpNet;
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
/// Name of the built-in feed of local Tor SOCKS ports.
pub const SOCKS_FEED_NAME: &str = "tor-socks-ports";

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
    /// The canary address of a self-test (`torsensor selftest`), armed for
    /// a few seconds.
    Selftest,
    /// Made from the configuration (`tor_socks_ports`).
    Builtin,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Origin::Embedded => "embedded",
            Origin::File => "file",
            Origin::Cache => "cache",
            Origin::Network => "network",
            Origin::Selftest => "selftest",
            Origin::Builtin => "builtin",
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

    /// The built-in feed of local Tor SOCKS ports (`tor_socks_ports`): a
    /// connection to one of them is Tor use no list of the network shows.
    pub fn socks_ports(ports: &[std::net::SocketAddr]) -> Feed {
        let mut data = ParsedFeed {
            socks_ports: true,
            ..Default::default()
        };
        for sa in ports {
            let sa = std::net::SocketAddr::new(crate::net::canonical_ip(sa.ip()), sa.port());
            data.or_ports.entry(sa).or_default();
        }
        Feed {
            name: SOCKS_FEED_NAME.to_owned(),
            location: "tor_socks_ports".to_owned(),
            origin: Origin::Builtin,
            fetched: None,
            data,
        }
    }

    /// The feed's version (publication time) if it has one, else when it was
    /// fetched: what its age is measured from.
    pub fn as_of(&self) -> Option<SystemTime> {
        self.data.version.or(self.fetched)
    }

    /// Older than `stale_after`, or a consensus past its `valid-until`.
    pub fn is_stale(&self, now: SystemTime, stale_after: Duration) -> bool {
        let expired = (self.data.consensus.as_ref()).is_some_and(|c| now > c.valid_until);
        expired || self.age(now).is_some_and(|a| a > stale_after)
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

#[cfg(test)]
mod tests {
    use super::*;

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
