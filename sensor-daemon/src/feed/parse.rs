//! Feed formats: plain lists, TorDNSEL exit lists, Onionoo details
//! documents and Tor consensus documents ([`consensus`]), detected from the
//! content when not stated.
//!
//! A body that is not a feed (an HTML error page, a rate-limit sentence
//! served with 200, truncated JSON, nothing at all) is rejected with a reason
//! a person can act on; a feed with some bad records keeps the good ones and
//! reports where the bad ones were.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::SystemTime;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::net::{canonical_ip, is_reserved, parse_entry};

pub mod consensus;
pub use consensus::ConsensusInfo;

/// How a feed's body is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FeedFormat {
    /// One IP or CIDR per line, `#` comments (the Tor bulk exit list, and any
    /// other threat list). Entries are exit addresses.
    Plain,
    /// TorDNSEL exit list (`ExitNode` / `Published` / `LastStatus` /
    /// `ExitAddress` records), with or without the CollecTor header.
    Tordnsel,
    /// Onionoo details document (`relays[]` with `or_addresses`...).
    Onionoo,
    /// Tor network-status consensus, full or microdesc flavour
    /// (`network-status-version 3`).
    Consensus,
}

impl fmt::Display for FeedFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FeedFormat::Plain => "plain",
            FeedFormat::Tordnsel => "tordnsel",
            FeedFormat::Onionoo => "onionoo",
            FeedFormat::Consensus => "consensus",
        })
    }
}

/// Why a body was not accepted as a feed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("empty body")]
    Empty,
    #[error("an HTML page, not a feed (title: {title:?})")]
    Html { title: String },
    #[error("not text (byte {offset} is not valid UTF-8)")]
    NotText { offset: usize },
    #[error("not a recognised feed format; first line: {first_line:?}")]
    Unrecognised { first_line: String },
    #[error("consensus refused: {0}")]
    Signatures(String),
    #[error("consensus line {line}: {reason}")]
    Consensus { line: usize, reason: String },
    #[error("invalid Onionoo JSON at line {line} column {column}: {message}")]
    Json {
        line: usize,
        column: usize,
        message: String,
    },
    #[error(
        "no usable entries ({bad} bad records, {reserved} reserved entries dropped); first line: {first_line:?}"
    )]
    NoEntries {
        bad: usize,
        reserved: usize,
        first_line: String,
    },
    #[error(
        "line {line}: {prefix} is wider than /{MIN_PREFIX_V4} (IPv4) or /{MIN_PREFIX_V6} (IPv6) and would match a large part of the Internet; set allow_wide_prefixes = true for this feed if that is meant"
    )]
    TooWide { line: usize, prefix: IpNet },
    #[error(
        "{bad} bad records against {good} usable entries: more than {MOSTLY_BAD_RATIO} per entry, so this is not the feed it claims to be; first at {first_at}: {first_text:?}"
    )]
    MostlyBad {
        bad: usize,
        good: usize,
        first_at: String,
        first_text: String,
    },
}

/// Shortest accepted IPv4 prefix length without `allow_wide_prefixes`: a /8
/// is 16.7 M addresses, already far more than the whole Tor network.
pub const MIN_PREFIX_V4: u8 = 8;
/// Shortest accepted IPv6 prefix length without `allow_wide_prefixes`.
pub const MIN_PREFIX_V6: u8 = 16;
/// A body with at least [`MOSTLY_BAD_MIN`] bad records and more than this
/// many bad records per usable entry is refused as a whole.
pub const MOSTLY_BAD_RATIO: usize = 10;
/// See [`MOSTLY_BAD_RATIO`]: a small hand-written list with a few typos is
/// not refused for them.
pub const MOSTLY_BAD_MIN: usize = 100;

/// What a feed may contain beyond the defaults (per feed, from its config).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ParseOptions {
    /// Keep entries in reserved ranges (loopback, private, documentation...).
    pub allow_reserved: bool,
    /// Accept prefixes shorter than /8 (IPv4) or /16 (IPv6).
    pub allow_wide_prefixes: bool,
}

/// Where a bad record was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// 1-based line number.
    Line(usize),
    /// A JSON path, e.g. `relays[12].or_addresses[1]`.
    Json(String),
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Line(n) => write!(f, "{n}"),
            Location::Json(p) => f.write_str(p),
        }
    }
}

/// A record that could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRecord {
    pub at: Location,
    pub text: String,
    pub reason: String,
}

/// At most this many bad records are kept (all are counted).
const KEEP_BAD: usize = 20;

/// What did not make it into a feed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParseReport {
    /// The first [`KEEP_BAD`] bad records.
    pub bad: Vec<BadRecord>,
    pub bad_count: usize,
    /// Entries dropped because they touch a reserved range.
    pub reserved_count: usize,
    pub first_reserved: Option<IpNet>,
    /// Lines of a TorDNSEL list that are no known record (tolerated).
    pub unknown_lines: usize,
}

impl ParseReport {
    fn bad(&mut self, at: Location, text: &str, reason: impl Into<String>) {
        self.bad_count += 1;
        if self.bad.len() < KEEP_BAD {
            self.bad.push(BadRecord {
                at,
                text: text.chars().take(80).collect(),
                reason: reason.into(),
            });
        }
    }

    fn reserved(&mut self, net: IpNet) {
        self.reserved_count += 1;
        self.first_reserved.get_or_insert(net);
    }
}

/// A Tor relay named by a feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relay {
    /// 40 upper-case hex digits.
    pub fingerprint: String,
    pub nickname: Option<String>,
    pub flags: Vec<String>,
    /// When the relay was last seen running (Onionoo `last_seen`; TorDNSEL
    /// `LastStatus`).
    pub last_seen: Option<SystemTime>,
}

/// An exit address and what is known of it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExitInfo {
    /// Indexes into [`ParsedFeed::relays`].
    pub relays: Vec<u32>,
    /// Per entry of `relays`: when that relay was seen exiting from this
    /// address (TorDNSEL: its own `ExitAddress` test time), which the
    /// history keeps per relay; `last_seen` is the newest of them.
    pub relay_seen: Vec<Option<SystemTime>>,
    /// When the address was last seen as an exit (TorDNSEL test time;
    /// Onionoo: the relay's `last_seen`).
    pub last_seen: Option<SystemTime>,
}

/// The content of one feed, whatever its format.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParsedFeed {
    pub format: Option<FeedFormat>,
    /// The feed's own publication time: Onionoo `relays_published`,
    /// TorDNSEL `Downloaded` (or its newest record). Plain lists have none.
    pub version: Option<SystemTime>,
    pub relays: Vec<Relay>,
    /// Exit addresses (prefixes for plain lists).
    pub exits: BTreeMap<IpNet, ExitInfo>,
    /// Relay OR address and ORPort -> indexes into `relays`.
    pub or_ports: BTreeMap<SocketAddr, Vec<u32>>,
    pub report: ParseReport,
    /// Validity, flavour and signatures of a consensus.
    pub consensus: Option<Box<ConsensusInfo>>,
    /// The `or_ports` are local Tor SOCKS ports, not relays (the built-in
    /// `tor-socks-ports` feed, from `tor_socks_ports`).
    pub socks_ports: bool,
}

impl ParsedFeed {
    /// Distinct addresses in any role (the size used by the shrink check).
    pub fn address_count(&self) -> usize {
        let mut relay_ips: Vec<IpAddr> = self.or_ports.keys().map(|s| s.ip()).collect();
        relay_ips.dedup();
        let only_relay = relay_ips
            .iter()
            .filter(|ip| !self.exits.contains_key(&IpNet::from(**ip)))
            .count();
        self.exits.len() + only_relay
    }

    fn add_exit(&mut self, net: IpNet, relay: Option<u32>, seen: Option<SystemTime>) {
        let info = self.exits.entry(net).or_default();
        if let Some(r) = relay {
            match info.relays.iter().position(|&x| x == r) {
                Some(i) => info.relay_seen[i] = info.relay_seen[i].max(seen),
                None => {
                    info.relays.push(r);
                    info.relay_seen.push(seen);
                }
            }
        }
        if seen > info.last_seen {
            info.last_seen = seen;
        }
    }
}

/// Parses a body. `format: None` detects it from the content. Wide
/// prefixes are refused (see [`parse_with`]).
pub fn parse(
    body: &[u8],
    format: Option<FeedFormat>,
    allow_reserved: bool,
) -> Result<ParsedFeed, ParseError> {
    parse_with(
        body,
        format,
        &ParseOptions {
            allow_reserved,
            allow_wide_prefixes: false,
        },
    )
}

/// Parses a body with a feed's options. Refused as a whole: a prefix wider
/// than [`MIN_PREFIX_V4`] / [`MIN_PREFIX_V6`] unless `allow_wide_prefixes`,
/// and a body whose bad records outnumber its usable entries more than
/// [`MOSTLY_BAD_RATIO`] to one (at least [`MOSTLY_BAD_MIN`] of them).
pub fn parse_with(
    body: &[u8],
    format: Option<FeedFormat>,
    options: &ParseOptions,
) -> Result<ParsedFeed, ParseError> {
    let allow_reserved = options.allow_reserved;
    let text = std::str::from_utf8(body).map_err(|e| ParseError::NotText {
        offset: e.valid_up_to(),
    })?;
    let trimmed = text.trim_start_matches('\u{feff}').trim_start();
    if trimmed.is_empty() {
        return Err(ParseError::Empty);
    }
    if looks_like_html(trimmed) {
        return Err(ParseError::Html {
            title: html_title(trimmed),
        });
    }
    let format = match format {
        Some(f) => f,
        None => detect(trimmed)?,
    };
    let mut feed = match format {
        FeedFormat::Plain => parse_plain(text, options)?,
        FeedFormat::Tordnsel => parse_tordnsel(text, allow_reserved),
        FeedFormat::Onionoo => parse_onionoo(text, allow_reserved)?,
        FeedFormat::Consensus => {
            let mut feed = consensus::parse_consensus(trimmed, allow_reserved)?;
            // Offsets into the body, which may start with white space.
            let start = text.len() - trimmed.len();
            if let Some(info) = feed.consensus.as_mut() {
                info.signed = info.signed.start + start..info.signed.end + start;
            }
            feed
        }
    };
    feed.format = Some(format);
    if feed.exits.is_empty() && feed.or_ports.is_empty() {
        return Err(ParseError::NoEntries {
            bad: feed.report.bad_count,
            reserved: feed.report.reserved_count,
            first_line: first_line(trimmed),
        });
    }
    let (bad, good) = (feed.report.bad_count, feed.address_count());
    if bad >= MOSTLY_BAD_MIN && bad > good.saturating_mul(MOSTLY_BAD_RATIO) {
        let first = &feed.report.bad[0];
        return Err(ParseError::MostlyBad {
            bad,
            good,
            first_at: match &first.at {
                Location::Line(n) => format!("line {n}"),
                Location::Json(path) => path.clone(),
            },
            first_text: first.text.clone(),
        });
    }
    Ok(feed)
}

fn first_line(text: &str) -> String {
    text.lines()
        .next()
        .unwrap_or("")
        .trim()
        .chars()
        .take(100)
        .collect()
}

fn looks_like_html(text: &str) -> bool {
    let head: String = text.chars().take(256).collect::<String>().to_lowercase();
    head.starts_with("<!doctype html") || head.starts_with("<html") || head.contains("<head")
}

fn html_title(text: &str) -> String {
    // ASCII case folding only: it keeps every byte offset of `text` valid
    // (full Unicode lowercasing changes lengths, e.g. `İ` grows a byte).
    let lower = text.to_ascii_lowercase();
    lower
        .find("<title>")
        .and_then(|start| {
            let rest = &text[start + 7..];
            rest.find("</").map(|end| rest[..end].trim().to_owned())
        })
        .unwrap_or_default()
}

/// Detects the format from the content: JSON -> Onionoo, TorDNSEL keywords ->
/// TorDNSEL, an address or CIDR on the first record line -> plain.
pub fn detect(text: &str) -> Result<FeedFormat, ParseError> {
    if text.starts_with('{') || text.starts_with('[') {
        return Ok(FeedFormat::Onionoo);
    }
    if consensus::looks_like(text) {
        return Ok(FeedFormat::Consensus);
    }
    let first = text
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .find(|l| !l.is_empty())
        .unwrap_or("");
    let keyword = first.split_whitespace().next().unwrap_or("");
    if matches!(
        keyword,
        "@type" | "Downloaded" | "ExitNode" | "Published" | "LastStatus" | "ExitAddress"
    ) {
        return Ok(FeedFormat::Tordnsel);
    }
    if parse_entry(first).is_ok() {
        return Ok(FeedFormat::Plain);
    }
    Err(ParseError::Unrecognised {
        first_line: first_line(first),
    })
}

fn keep(net: IpNet, allow_reserved: bool, report: &mut ParseReport) -> Option<IpNet> {
    if !allow_reserved && is_reserved(&net) {
        report.reserved(net);
        None
    } else {
        Some(net)
    }
}

fn parse_plain(text: &str, options: &ParseOptions) -> Result<ParsedFeed, ParseError> {
    let mut feed = ParsedFeed::default();
    for (index, raw) in text.lines().enumerate() {
        let content = raw.split('#').next().unwrap_or("").trim();
        if content.is_empty() {
            continue;
        }
        match parse_entry(content) {
            Ok(net) => {
                let min = match net {
                    IpNet::V4(_) => MIN_PREFIX_V4,
                    IpNet::V6(_) => MIN_PREFIX_V6,
                };
                if net.prefix_len() < min && !options.allow_wide_prefixes {
                    return Err(ParseError::TooWide {
                        line: index + 1,
                        prefix: net,
                    });
                }
                if let Some(net) = keep(net, options.allow_reserved, &mut feed.report) {
                    feed.add_exit(net, None, None);
                }
            }
            Err(reason) => feed.report.bad(Location::Line(index + 1), content, reason),
        }
    }
    Ok(feed)
}

/// `YYYY-MM-DD HH:MM:SS` (UTC), as TorDNSEL and Onionoo write times.
pub fn parse_time(text: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339_weak(text.trim()).ok()
}

fn is_fingerprint(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn parse_tordnsel(text: &str, allow_reserved: bool) -> ParsedFeed {
    let mut feed = ParsedFeed::default();
    let mut downloaded = None;
    let mut newest: Option<SystemTime> = None;
    let mut current: Option<u32> = None;
    for (index, raw) in text.lines().enumerate() {
        let line = raw.trim();
        let at = Location::Line(index + 1);
        let (keyword, rest) = line.split_once(' ').unwrap_or((line, ""));
        match keyword {
            "" => {}
            "@type" => {}
            "Downloaded" => downloaded = parse_time(rest),
            "ExitNode" => {
                let fp = rest.trim();
                if is_fingerprint(fp) {
                    feed.relays.push(Relay {
                        fingerprint: fp.to_ascii_uppercase(),
                        nickname: None,
                        // An exit list says nothing of consensus flags.
                        flags: Vec::new(),
                        last_seen: None,
                    });
                    current = Some((feed.relays.len() - 1) as u32);
                } else {
                    current = None;
                    feed.report.bad(at, line, "not a 40-hex-digit fingerprint");
                }
            }
            "Published" | "LastStatus" => match parse_time(rest) {
                Some(t) => {
                    newest = newest.max(Some(t));
                    if keyword == "LastStatus"
                        && let Some(r) = current
                    {
                        feed.relays[r as usize].last_seen = Some(t);
                    }
                }
                None => feed.report.bad(at, line, "not a YYYY-MM-DD HH:MM:SS time"),
            },
            "ExitAddress" => {
                let (ip, when) = rest.split_once(' ').unwrap_or((rest, ""));
                let Ok(ip) = ip.parse::<IpAddr>() else {
                    feed.report.bad(at, line, "not an IP address");
                    continue;
                };
                if current.is_none() {
                    feed.report
                        .bad(at, line, "ExitAddress outside an ExitNode record");
                    continue;
                }
                let seen = parse_time(when);
                newest = newest.max(seen);
                if let Some(net) = keep(
                    IpNet::from(canonical_ip(ip)),
                    allow_reserved,
                    &mut feed.report,
                ) {
                    feed.add_exit(net, current, seen);
                }
            }
            _ => feed.report.unknown_lines += 1,
        }
    }
    feed.version = downloaded.or(newest);
    feed
}

#[derive(Deserialize)]
struct OnionooDoc {
    relays_published: String,
    #[serde(default)]
    relays: Vec<OnionooRelay>,
}

#[derive(Deserialize)]
struct OnionooRelay {
    fingerprint: String,
    #[serde(default)]
    nickname: Option<String>,
    #[serde(default)]
    or_addresses: Vec<String>,
    #[serde(default)]
    exit_addresses: Option<Vec<String>>,
    #[serde(default)]
    flags: Vec<String>,
    #[serde(default)]
    last_seen: Option<String>,
}

/// `"1.2.3.4:9001"` or `"[2001:db8::1]:9001"`.
fn parse_or_address(text: &str) -> Option<SocketAddr> {
    let sa: SocketAddr = text.parse().ok()?;
    (sa.port() != 0).then(|| SocketAddr::new(canonical_ip(sa.ip()), sa.port()))
}

/// Adds relay `index`'s (`relays[i]`) OR addresses to the OR-port map and
/// returns the IPs kept.
fn add_or_addresses(
    feed: &mut ParsedFeed,
    i: usize,
    index: u32,
    addresses: &[String],
    allow_reserved: bool,
) -> Vec<IpAddr> {
    let mut kept = Vec::new();
    for (j, addr) in addresses.iter().enumerate() {
        let Some(sa) = parse_or_address(addr) else {
            feed.report.bad(
                Location::Json(format!("relays[{i}].or_addresses[{j}]")),
                addr,
                "not IP:PORT or [IPv6]:PORT",
            );
            continue;
        };
        if keep(IpNet::from(sa.ip()), allow_reserved, &mut feed.report).is_none() {
            continue;
        }
        let relays = feed.or_ports.entry(sa).or_default();
        if !relays.contains(&index) {
            relays.push(index);
        }
        kept.push(sa.ip());
    }
    kept
}

fn parse_onionoo(text: &str, allow_reserved: bool) -> Result<ParsedFeed, ParseError> {
    let doc: OnionooDoc = serde_json::from_str(text).map_err(|e| ParseError::Json {
        line: e.line(),
        column: e.column(),
        message: e.to_string(),
    })?;
    let mut feed = ParsedFeed {
        version: parse_time(&doc.relays_published),
        ..Default::default()
    };
    if feed.version.is_none() {
        feed.report.bad(
            Location::Json("relays_published".into()),
            &doc.relays_published,
            "not a YYYY-MM-DD HH:MM:SS time",
        );
    }
    for (i, relay) in doc.relays.into_iter().enumerate() {
        if !is_fingerprint(&relay.fingerprint) {
            feed.report.bad(
                Location::Json(format!("relays[{i}].fingerprint")),
                &relay.fingerprint,
                "not a 40-hex-digit fingerprint",
            );
            continue;
        }
        let last_seen = relay.last_seen.as_deref().and_then(parse_time);
        let index = feed.relays.len() as u32;
        let is_exit = relay.flags.iter().any(|f| f == "Exit");
        let or_ips = add_or_addresses(&mut feed, i, index, &relay.or_addresses, allow_reserved);
        match &relay.exit_addresses {
            Some(exits) => {
                for (j, addr) in exits.iter().enumerate() {
                    let Ok(ip) = addr.parse::<IpAddr>() else {
                        feed.report.bad(
                            Location::Json(format!("relays[{i}].exit_addresses[{j}]")),
                            addr,
                            "not an IP address",
                        );
                        continue;
                    };
                    if let Some(net) = keep(
                        IpNet::from(canonical_ip(ip)),
                        allow_reserved,
                        &mut feed.report,
                    ) {
                        feed.add_exit(net, Some(index), last_seen);
                    }
                }
            }
            // An Exit-flagged relay that has not been seen exiting yet
            // (no `exit_addresses`) exits from its OR address.
            None if is_exit => {
                for ip in or_ips {
                    feed.add_exit(IpNet::from(ip), Some(index), last_seen);
                }
            }
            None => {}
        }
        feed.relays.push(Relay {
            fingerprint: relay.fingerprint.to_ascii_uppercase(),
            nickname: relay.nickname,
            flags: relay.flags,
            last_seen,
        });
    }
    Ok(feed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    const BULK: &str = include_str!("../../data/torbulkexitlist_2024-03-12.txt");
    const TORDNSEL: &str =
        include_str!("../../data/exit-addresses_check.torproject.org_2024-03-12.txt");
    const ONIONOO: &str =
        include_str!("../../data/onionoo_details_running-relays_fp-or-country_2024-03-12.json");

    #[test]
    fn real_bulk_exit_list_counts() {
        let feed = parse(BULK.as_bytes(), None, false).unwrap();
        assert_eq!(feed.format, Some(FeedFormat::Plain));
        assert_eq!(feed.exits.len(), 1174);
        assert!(feed.or_ports.is_empty());
        assert_eq!(feed.report, ParseReport::default());
        assert_eq!(feed.version, None);
    }

    #[test]
    fn real_tordnsel_list_counts() {
        let feed = parse(TORDNSEL.as_bytes(), None, false).unwrap();
        assert_eq!(feed.format, Some(FeedFormat::Tordnsel));
        assert_eq!(feed.relays.len(), 2372);
        let addresses: usize = TORDNSEL
            .lines()
            .filter(|l| l.starts_with("ExitAddress "))
            .count();
        assert_eq!(addresses, 2378);
        assert_eq!(feed.exits.len(), 1174);
        assert_eq!(feed.report, ParseReport::default());
        // The same addresses as the bulk list derived from it.
        let bulk = parse(BULK.as_bytes(), None, false).unwrap();
        assert_eq!(
            feed.exits.keys().collect::<Vec<_>>(),
            bulk.exits.keys().collect::<Vec<_>>()
        );
        // Newest test time is the version.
        assert_eq!(
            humantime::format_rfc3339(feed.version.unwrap()).to_string(),
            "2024-03-12T14:28:38Z"
        );
        // A shared exit IP keeps every fingerprint.
        let shared = &feed.exits[&"23.137.251.61/32".parse::<IpNet>().unwrap()];
        assert_eq!(shared.relays.len(), 12);
        // A dynamic-IP exit with 4 addresses over 3 days.
        let dynamic = feed
            .relays
            .iter()
            .position(|r| r.fingerprint == "E614A111E0464B9E36A8710DA48D6626119220B7")
            .unwrap() as u32;
        assert_eq!(
            feed.exits
                .values()
                .filter(|e| e.relays.contains(&dynamic))
                .count(),
            4
        );
    }

    #[test]
    fn real_onionoo_snapshot_counts() {
        let feed = parse(ONIONOO.as_bytes(), None, false).unwrap();
        assert_eq!(feed.format, Some(FeedFormat::Onionoo));
        assert_eq!(feed.relays.len(), 7607);
        let ips: BTreeSet<IpAddr> = feed.or_ports.keys().map(|s| s.ip()).collect();
        assert_eq!(ips.len(), 8344);
        assert_eq!(ips.iter().filter(|ip| ip.is_ipv4()).count(), 5766);
        assert_eq!(ips.iter().filter(|ip| ip.is_ipv6()).count(), 2578);
        let with_v6: BTreeSet<u32> = feed
            .or_ports
            .iter()
            .filter(|(sa, _)| sa.is_ipv6())
            .flat_map(|(_, r)| r.iter().copied())
            .collect();
        assert_eq!(with_v6.len(), 3632);
        // This field subset has no exit_addresses and no flags.
        assert!(feed.exits.is_empty());
        assert_eq!(
            humantime::format_rfc3339(feed.version.unwrap()).to_string(),
            "2024-03-12T11:00:00Z"
        );
        assert_eq!(feed.report, ParseReport::default());
        assert_eq!(feed.address_count(), 8344);
    }

    #[test]
    fn tordnsel_with_collector_header_and_unknown_lines() {
        let text = "@type tordnsel 1.0\nDownloaded 2024-03-12 15:02:01\nExitNode 0011BD2485AD45D984EC4159C88FC066E5E3300E\nPublished 2024-03-12 07:01:20\nLastStatus 2024-03-12 14:00:00\nSomethingNew 42\nExitAddress 162.247.74.201 2024-03-12 14:10:09\nExitAddress not-an-ip 2024-03-12 14:10:09\n";
        let feed = parse(text.as_bytes(), None, false).unwrap();
        assert_eq!(feed.format, Some(FeedFormat::Tordnsel));
        assert_eq!(feed.exits.len(), 1);
        assert_eq!(feed.report.unknown_lines, 1);
        assert_eq!(feed.report.bad_count, 1);
        assert_eq!(feed.report.bad[0].at, Location::Line(8));
        assert_eq!(
            humantime::format_rfc3339(feed.version.unwrap()).to_string(),
            "2024-03-12T15:02:01Z"
        );
        let exit = feed.exits.values().next().unwrap();
        assert_eq!(
            humantime::format_rfc3339(exit.last_seen.unwrap()).to_string(),
            "2024-03-12T14:10:09Z"
        );
        assert_eq!(feed.relays[0].last_seen, parse_time("2024-03-12 14:00:00"));
    }

    #[test]
    fn onionoo_full_relay_object() {
        let text = r#"{"version":"8.0","relays_published":"2026-09-04 10:00:00","relays":[
            {"nickname":"exitA","fingerprint":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA","or_addresses":["185.220.101.1:9001","[2a0b:f4c2::1]:443"],"exit_addresses":["185.220.101.99"],"flags":["Exit","Fast","Running","Valid"],"last_seen":"2026-09-04 10:00:00","running":true},
            {"nickname":"newExit","fingerprint":"BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB","or_addresses":["185.220.101.2:443"],"flags":["Exit","Running"],"last_seen":"2026-09-04 10:00:00"},
            {"nickname":"guard","fingerprint":"CCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCC","or_addresses":["185.220.101.1:9002","bad:addr"],"flags":["Guard","Running"]}
        ]}"#;
        let feed = parse(text.as_bytes(), None, false).unwrap();
        assert_eq!(feed.relays.len(), 3);
        assert_eq!(feed.relays[0].nickname.as_deref(), Some("exitA"));
        assert_eq!(feed.or_ports.len(), 4);
        let exits: Vec<String> = feed.exits.keys().map(|n| n.to_string()).collect();
        // exit_addresses for A (not its OR address), the OR address for the
        // Exit-flagged relay without exit_addresses, nothing for the guard.
        assert_eq!(exits, vec!["185.220.101.2/32", "185.220.101.99/32"]);
        assert_eq!(feed.report.bad_count, 1);
        assert_eq!(
            feed.report.bad[0].at,
            Location::Json("relays[2].or_addresses[1]".into())
        );
        assert_eq!(feed.address_count(), 4);
    }

    #[test]
    fn garbage_bodies_are_rejected_with_a_reason() {
        let html = "<!DOCTYPE html>\n<html><head><title>502 Bad Gateway</title></head><body></body></html>";
        assert_eq!(
            parse(html.as_bytes(), None, false).unwrap_err(),
            ParseError::Html {
                title: "502 Bad Gateway".into()
            }
        );
        assert_eq!(parse(b"", None, false).unwrap_err(), ParseError::Empty);
        assert_eq!(parse(b" \n\n", None, false).unwrap_err(), ParseError::Empty);
        let limited = "Umm... You can only fetch the data every 30 minutes - sorry.  It's pointless faster as I only update every 30 minutes anyway.\n";
        let err = parse(limited.as_bytes(), None, false).unwrap_err();
        assert!(matches!(err, ParseError::Unrecognised { .. }), "{err}");
        assert!(err.to_string().contains("Umm... You can only fetch"));
        // Stated as plain, the same sentence is a list with no entries.
        let err = parse(limited.as_bytes(), Some(FeedFormat::Plain), false).unwrap_err();
        assert!(matches!(err, ParseError::NoEntries { bad: 1, .. }), "{err}");
        let truncated = &ONIONOO[..ONIONOO.len() / 2];
        let err = parse(truncated.as_bytes(), None, false).unwrap_err();
        assert!(matches!(err, ParseError::Json { .. }), "{err}");
        assert!(err.to_string().contains("line"), "{err}");
        assert!(matches!(
            parse(&[0x31, 0xff, 0xfe], None, false).unwrap_err(),
            ParseError::NotText { offset: 1 }
        ));
    }

    /// Seen while writing the `feed_plain` fuzz target, confirmed through
    /// it: a character whose lowercase has another length before `<title>`
    /// (`Ⱥ`, 2 bytes, lowercases to 3) made the title slice start inside
    /// `é` and panic.
    #[test]
    fn html_title_after_a_character_that_lowercases_longer() {
        let page = "<html>\u{23a}<title>\u{e9}t\u{e9}</title></html>";
        assert_eq!(
            parse(page.as_bytes(), None, false).unwrap_err(),
            ParseError::Html {
                title: "\u{e9}t\u{e9}".into()
            }
        );
        let turkish = "<HTML><!-- \u{130}SS --><TITLE>Eri\u{15f}im Engellendi</TITLE>";
        assert_eq!(
            parse(turkish.as_bytes(), None, false).unwrap_err(),
            ParseError::Html {
                title: "Eri\u{15f}im Engellendi".into()
            }
        );
    }

    #[test]
    fn wide_prefixes_need_the_feed_option() {
        for (text, line) in [
            ("1.2.3.4\n0.0.0.0/0\n", 2),
            ("::/0\n", 1),
            ("# c\n32.0.0.0/3\n", 2),
            ("2a00::/15\n", 1),
        ] {
            for allow_reserved in [false, true] {
                let err = parse(text.as_bytes(), None, allow_reserved).unwrap_err();
                assert!(
                    matches!(err, ParseError::TooWide { line: l, .. } if l == line),
                    "{text:?}: {err}"
                );
            }
            let wide = ParseOptions {
                allow_reserved: true,
                allow_wide_prefixes: true,
            };
            assert!(parse_with(text.as_bytes(), None, &wide).is_ok(), "{text:?}");
        }
        // The bounds themselves are accepted.
        let feed = parse(b"11.0.0.0/8\n2a00::/16\n", None, false).unwrap();
        assert_eq!(feed.exits.len(), 2);
    }

    #[test]
    fn a_body_of_mostly_bad_records_is_refused() {
        let mut text = String::from("1.2.3.4\n5.6.7.8\n");
        for i in 0..99 {
            text.push_str(&format!("junk{i}\n"));
        }
        // 99 bad records: under the minimum, kept as a feed with problems.
        assert_eq!(
            parse(text.as_bytes(), None, false)
                .unwrap()
                .report
                .bad_count,
            99
        );
        text.push_str("junk99\n");
        let err = parse(text.as_bytes(), None, false).unwrap_err();
        assert_eq!(
            err,
            ParseError::MostlyBad {
                bad: 100,
                good: 2,
                first_at: "line 3".into(),
                first_text: "junk0".into(),
            }
        );
        // Ten bad records per good entry is still accepted.
        let mut text = String::new();
        for i in 0..10 {
            text.push_str(&format!("1.2.3.{i}\n"));
        }
        for i in 0..100 {
            text.push_str(&format!("junk{i}\n"));
        }
        assert!(parse(text.as_bytes(), None, false).is_ok());
    }

    #[test]
    fn reserved_entries_are_dropped_and_counted() {
        let text = "ExitNode AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\nExitAddress 10.1.2.3 2024-03-12 14:10:09\nExitAddress 1.2.3.4 2024-03-12 14:10:09\n";
        let feed = parse(text.as_bytes(), None, false).unwrap();
        assert_eq!(feed.exits.len(), 1);
        assert_eq!(feed.report.reserved_count, 1);
        let feed = parse(text.as_bytes(), None, true).unwrap();
        assert_eq!(feed.exits.len(), 2);
    }
}
