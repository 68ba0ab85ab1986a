//! Tor network-status consensus documents (dir-spec section 3.4.1,
//! `network-status-version 3`), in both flavours: the full consensus (`r`
//! lines with a descriptor digest, `p` exit-policy summaries) and the
//! microdesc consensus (`r` lines without the digest, `m` lines, no `p`).
//!
//! Roles, as the sensor uses them:
//! - every router's OR address and ORPort (`r`, and IPv6 from `a` lines),
//!   and every directory authority's (`dir-source`), is a **relay**;
//! - a router's IPv4 OR address is an **exit** when its `p` summary accepts
//!   any port (a relay whose policy accepts nothing is no exit, Exit flag or
//!   not; one that accepts a few ports without earning the flag still
//!   exits for them). Without `p` lines (the microdesc flavour) the `Exit`
//!   flag alone decides: [`ConsensusInfo::exits_from`] says which rule was
//!   used. A `BadExit` router stays an exit (clients avoid it; it can still
//!   reach you) and its flags travel with the alert.
//!
//! The version is `valid-after`; `valid-until` marks it stale. Signatures
//! are collected here and verified by [`super::super::verify`].
//!
//! Owns no I/O; untrusted bytes (fuzzed as `feed_consensus`).

use std::net::{IpAddr, SocketAddr};
use std::time::SystemTime;

use std::collections::HashMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use ipnet::IpNet;
use sha2::{Digest as _, Sha256};

use super::{Location, ParseError, ParsedFeed, Relay, keep, parse_or_address, parse_time};
use crate::net::canonical_ip;

/// The consensus flavour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    /// `network-status-version 3` (or `3 ns`): `p` lines, descriptor
    /// digests.
    Full,
    /// `network-status-version 3 microdesc`: `m` lines, no `p` lines.
    Microdesc,
}

/// How exits were told apart from other relays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitsFrom {
    /// The `p` exit-policy summaries (full flavour).
    Policy,
    /// The `Exit` flag alone (microdesc flavour: no policies in it).
    ExitFlag,
    /// The microdescriptors' `p` summaries (a tor DataDirectory's
    /// `cached-microdescs`): `known` of `total` routers had theirs, the
    /// others are judged by the `Exit` flag.
    Microdescs { known: usize, total: usize },
}

/// One `directory-signature` of the footer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirSignature {
    /// `sha1` (no algorithm given) or `sha256`.
    pub algorithm: String,
    /// The authority's identity fingerprint (40 upper-case hex digits).
    pub identity: String,
    /// The digest of its signing key (40 upper-case hex digits).
    pub signing_key_digest: String,
    pub signature: Vec<u8>,
}

/// What only a consensus has: its validity, its flavour and its signatures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsensusInfo {
    pub flavour: Flavour,
    pub exits_from: ExitsFrom,
    pub valid_after: SystemTime,
    pub fresh_until: Option<SystemTime>,
    pub valid_until: SystemTime,
    /// The authorities that took part (`dir-source`, not `-legacy`).
    pub authorities: Vec<String>,
    pub signatures: Vec<DirSignature>,
    /// The trusted authorities whose signatures verified (empty when not
    /// checked: `signatures = "off"`, or a copy from the cache, checked
    /// when it was fetched).
    pub signed_by: Vec<String>,
    /// Microdesc flavour: each router's relay index, `m` digest and IPv4 OR
    /// address, for [`apply_microdescs`].
    pub microdescs: Vec<(u32, String, IpAddr)>,
    /// The signed part of the body: from `network-status-version` through
    /// the space after the first `directory-signature` (empty if unsigned).
    pub signed: std::ops::Range<usize>,
}

impl std::fmt::Display for ConsensusInfo {
    /// `consensus (microdesc flavour: exits from the Exit flag alone),
    /// valid until ..., signed by 5 trusted authorities`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let flavour = match self.flavour {
            Flavour::Full => "full",
            Flavour::Microdesc => "microdesc",
        };
        let exits = match self.exits_from {
            ExitsFrom::Policy => "exits from the p exit-policy summaries".to_owned(),
            ExitsFrom::ExitFlag => "exits from the Exit flag alone".to_owned(),
            ExitsFrom::Microdescs { known, total } => format!(
                "exits from the microdescriptors' exit policies ({known} of {total} routers; the rest by the Exit flag)"
            ),
        };
        write!(
            f,
            "consensus ({flavour} flavour: {exits}), valid until {}, ",
            crate::time::rfc3339_secs(self.valid_until)
        )?;
        match self.signed_by.len() {
            0 => f.write_str(
                "signatures not checked here (signatures = \"off\", or checked when cached)",
            ),
            n => write!(f, "signed by {n} trusted authorities"),
        }
    }
}

/// Whether `text` (trimmed at the start) is a consensus.
pub(super) fn looks_like(text: &str) -> bool {
    text.starts_with("network-status-version 3")
}

/// A router being read (from its `r` line to the next one).
struct Router {
    nickname: String,
    fingerprint: String,
    ip: IpAddr,
    or_port: u16,
    v6: Vec<SocketAddr>,
    flags: Vec<String>,
    /// `p`: does the summary accept any port?
    accepts: Option<bool>,
    /// `m`: the microdescriptor's digest (microdesc flavour).
    microdesc: Option<String>,
}

fn fatal(line: usize, reason: impl Into<String>) -> ParseError {
    ParseError::Consensus {
        line,
        reason: reason.into(),
    }
}

/// Parses a consensus. The body must be the whole document as served (the
/// signed length counts its bytes).
pub(super) fn parse_consensus(text: &str, allow_reserved: bool) -> Result<ParsedFeed, ParseError> {
    let mut feed = ParsedFeed::default();
    let mut flavour = None;
    let mut consensus = false;
    let (mut valid_after, mut fresh_until, mut valid_until) = (None, None, None);
    let mut authorities = Vec::new();
    let mut router: Option<Router> = None;
    let mut signatures = Vec::new();
    let mut signed_len = None;
    let mut microdescs = Vec::new();
    let mut offset = 0;
    let mut lines = text.split_inclusive('\n').enumerate().peekable();
    while let Some((index, raw)) = lines.next() {
        let start = offset;
        offset += raw.len();
        let n = index + 1;
        let line = raw.trim_end_matches(['\n', '\r']);
        let mut words = line.split(' ').filter(|w| !w.is_empty());
        let keyword = words.next().unwrap_or("");
        let rest: Vec<&str> = words.collect();
        // A router's lines end at the next router or the footer.
        if matches!(keyword, "r" | "directory-footer" | "directory-signature") {
            let r = router.take();
            finish(
                &mut feed,
                r,
                flavour,
                valid_after,
                allow_reserved,
                &mut microdescs,
            );
        }
        match keyword {
            "network-status-version" if n == 1 => {
                flavour = match rest.as_slice() {
                    ["3"] | ["3", "ns"] => Some(Flavour::Full),
                    ["3", "microdesc"] => Some(Flavour::Microdesc),
                    _ => return Err(fatal(n, format!("unsupported {line:?}"))),
                }
            }
            "vote-status" => {
                consensus = rest == ["consensus"];
                if !consensus {
                    return Err(fatal(n, format!("{line:?}: a vote, not a consensus")));
                }
            }
            "valid-after" => valid_after = Some(time_at(n, line, &rest)?),
            "fresh-until" => fresh_until = Some(time_at(n, line, &rest)?),
            "valid-until" => valid_until = Some(time_at(n, line, &rest)?),
            "dir-source" => {
                dir_source(&mut feed, n, line, &rest, allow_reserved, &mut authorities);
            }
            "r" => router = r_line(&mut feed, n, line, &rest, flavour),
            "a" | "s" | "m" | "p" => {
                if let Some(r) = router.as_mut() {
                    router_line(r, &mut feed, n, line, keyword, &rest);
                }
            }
            "directory-signature" => {
                // Signed: everything through "directory-signature ".
                signed_len.get_or_insert(start + "directory-signature ".len());
                signatures.push(dir_signature(n, line, &rest, &mut lines, &mut offset)?);
            }
            _ => {}
        }
    }
    let r = router.take();
    finish(
        &mut feed,
        r,
        flavour,
        valid_after,
        allow_reserved,
        &mut microdescs,
    );
    let flavour = flavour.ok_or_else(|| fatal(1, "no network-status-version 3 line first"))?;
    if !consensus {
        return Err(fatal(1, "no \"vote-status consensus\" line"));
    }
    let valid_after = valid_after.ok_or_else(|| fatal(1, "no valid-after line"))?;
    let valid_until = valid_until.ok_or_else(|| fatal(1, "no valid-until line"))?;
    feed.version = Some(valid_after);
    feed.consensus = Some(Box::new(ConsensusInfo {
        flavour,
        exits_from: match flavour {
            Flavour::Full => ExitsFrom::Policy,
            Flavour::Microdesc => ExitsFrom::ExitFlag,
        },
        valid_after,
        fresh_until,
        valid_until,
        authorities,
        signatures,
        signed_by: Vec::new(),
        microdescs,
        signed: 0..signed_len.unwrap_or(0),
    }));
    Ok(feed)
}

/// A router's `a`, `s`, `m` or `p` line.
fn router_line(
    r: &mut Router,
    feed: &mut ParsedFeed,
    n: usize,
    line: &str,
    keyword: &str,
    rest: &[&str],
) {
    match keyword {
        "a" => match rest.first().and_then(|a| parse_or_address(a)) {
            Some(sa) => r.v6.push(sa),
            None => feed.report.bad(Location::Line(n), line, "not [IPv6]:PORT"),
        },
        "s" => r.flags = rest.iter().map(|f| (*f).to_owned()).collect(),
        "m" => r.microdesc = rest.first().map(|d| (*d).to_owned()),
        _ => match policy_accepts(rest) {
            Some(accepts) => r.accepts = Some(accepts),
            None => feed
                .report
                .bad(Location::Line(n), line, "not an exit-policy summary"),
        },
    }
}

/// `directory-signature [ALGORITHM] IDENTITY SIGNING-KEY-DIGEST` and the
/// signature block after it.
fn dir_signature<'a>(
    n: usize,
    line: &str,
    rest: &[&str],
    lines: &mut std::iter::Peekable<impl Iterator<Item = (usize, &'a str)>>,
    offset: &mut usize,
) -> Result<DirSignature, ParseError> {
    let (algorithm, ids) = match rest {
        [a, id, key] => ((*a).to_owned(), [*id, *key]),
        [id, key] => ("sha1".to_owned(), [*id, *key]),
        _ => return Err(fatal(n, format!("malformed {line:?}"))),
    };
    let signature = signature_block(lines, offset)
        .ok_or_else(|| fatal(n, "a directory-signature without its signature block"))?;
    Ok(DirSignature {
        algorithm,
        identity: ids[0].to_ascii_uppercase(),
        signing_key_digest: ids[1].to_ascii_uppercase(),
        signature,
    })
}

fn time_at(n: usize, line: &str, rest: &[&str]) -> Result<SystemTime, ParseError> {
    match rest {
        [date, time] => parse_time(&format!("{date} {time}")),
        _ => None,
    }
    .ok_or_else(|| fatal(n, format!("{line:?}: not a YYYY-MM-DD HH:MM:SS time")))
}

/// The base64 of a 20-byte identity (`r` lines) as 40 upper-case hex digits.
fn identity_hex(b64: &str) -> Option<String> {
    let engine = base64::engine::general_purpose::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    let bytes = engine.decode(b64).ok()?;
    (bytes.len() == 20).then(|| bytes.iter().map(|b| format!("{b:02X}")).collect())
}

fn r_line(
    feed: &mut ParsedFeed,
    n: usize,
    line: &str,
    rest: &[&str],
    flavour: Option<Flavour>,
) -> Option<Router> {
    // Full: nickname identity digest date time IP ORPort DirPort;
    // microdesc: the same without the digest.
    let fields = match (flavour, rest) {
        (Some(Flavour::Full), [nick, id, _digest, _d, _t, ip, or, _dir]) => (nick, id, ip, or),
        (Some(Flavour::Microdesc), [nick, id, _d, _t, ip, or, _dir]) => (nick, id, ip, or),
        _ => {
            let reason = "not an r line of this flavour (nickname, identity, [digest,] date, time, IP, ORPort, DirPort)";
            feed.report.bad(Location::Line(n), line, reason);
            return None;
        }
    };
    let (nickname, id, ip, or_port) = fields;
    let Some(fingerprint) = identity_hex(id) else {
        feed.report.bad(
            Location::Line(n),
            line,
            "the identity is not 20 bytes of base64",
        );
        return None;
    };
    let (Ok(ip), Ok(or_port)) = (ip.parse::<IpAddr>(), or_port.parse::<u16>()) else {
        feed.report
            .bad(Location::Line(n), line, "bad IP address or ORPort");
        return None;
    };
    Some(Router {
        nickname: (*nickname).to_owned(),
        fingerprint,
        ip: canonical_ip(ip),
        or_port,
        v6: Vec::new(),
        flags: Vec::new(),
        accepts: None,
        microdesc: None,
    })
}

/// `dir-source nickname identity address IP dirport orport`: an authority,
/// a relay at its ORPort. `-legacy` entries name an old key of the same
/// authority and are skipped.
fn dir_source(
    feed: &mut ParsedFeed,
    n: usize,
    line: &str,
    rest: &[&str],
    allow_reserved: bool,
    authorities: &mut Vec<String>,
) {
    let [nickname, identity, _address, ip, _dir, or] = rest else {
        feed.report
            .bad(Location::Line(n), line, "not a dir-source line");
        return;
    };
    if nickname.ends_with("-legacy") {
        return;
    }
    let (Ok(ip), Ok(or_port)) = (ip.parse::<IpAddr>(), or.parse::<u16>()) else {
        feed.report
            .bad(Location::Line(n), line, "bad IP address or ORPort");
        return;
    };
    let fingerprint = identity.to_ascii_uppercase();
    if fingerprint.len() != 40 || !fingerprint.bytes().all(|b| b.is_ascii_hexdigit()) {
        feed.report
            .bad(Location::Line(n), line, "not a 40-hex-digit identity");
        return;
    }
    authorities.push(fingerprint.clone());
    let index = feed.relays.len() as u32;
    feed.relays.push(Relay {
        fingerprint,
        nickname: Some((*nickname).to_owned()),
        flags: vec!["Authority".to_owned()],
        last_seen: None,
    });
    let sa = SocketAddr::new(canonical_ip(ip), or_port);
    if or_port != 0 && keep(IpNet::from(sa.ip()), allow_reserved, &mut feed.report).is_some() {
        feed.or_ports.entry(sa).or_default().push(index);
    }
}

/// Adds a finished router: relay at its OR addresses, exit per the rule of
/// the flavour. An authority listed as a router too is one relay, with the
/// router's flags.
fn finish(
    feed: &mut ParsedFeed,
    router: Option<Router>,
    flavour: Option<Flavour>,
    valid_after: Option<SystemTime>,
    allow_reserved: bool,
    microdescs: &mut Vec<(u32, String, IpAddr)>,
) {
    let Some(r) = router else { return };
    let running = r.flags.iter().any(|f| f == "Running");
    let exit_flag = r.flags.iter().any(|f| f == "Exit");
    let is_exit = match (flavour, r.accepts) {
        (Some(Flavour::Full), Some(accepts)) => accepts,
        // A full consensus without a `p` line for this router: tor treats
        // a missing summary as "reject 1-65535".
        (Some(Flavour::Full), None) => false,
        _ => exit_flag,
    };
    let index = match feed
        .relays
        .iter()
        .position(|x| x.fingerprint == r.fingerprint)
    {
        Some(i) => {
            let relay = &mut feed.relays[i];
            relay.nickname = Some(r.nickname.clone());
            for f in &r.flags {
                if !relay.flags.contains(f) {
                    relay.flags.push(f.clone());
                }
            }
            i as u32
        }
        None => {
            feed.relays.push(Relay {
                fingerprint: r.fingerprint.clone(),
                nickname: Some(r.nickname.clone()),
                flags: r.flags.clone(),
                last_seen: valid_after.filter(|_| running),
            });
            (feed.relays.len() - 1) as u32
        }
    };
    let addresses = std::iter::once(SocketAddr::new(r.ip, r.or_port)).chain(r.v6.iter().copied());
    for sa in addresses {
        if sa.port() == 0 || keep(IpNet::from(sa.ip()), allow_reserved, &mut feed.report).is_none()
        {
            continue;
        }
        let relays = feed.or_ports.entry(sa).or_default();
        if !relays.contains(&index) {
            relays.push(index);
        }
    }
    if is_exit && let Some(net) = keep(IpNet::from(r.ip), allow_reserved, &mut feed.report) {
        feed.add_exit(net, Some(index), valid_after);
    }
    if let Some(digest) = r.microdesc {
        microdescs.push((index, digest, r.ip));
    }
}

/// `accept PORTLIST` / `reject PORTLIST`: whether any port is accepted.
fn policy_accepts(rest: &[&str]) -> Option<bool> {
    let [verb, list] = rest else { return None };
    let mut ranges = Vec::new();
    for item in list.split(',') {
        let (lo, hi) = item.split_once('-').unwrap_or((item, item));
        let (lo, hi) = (lo.parse::<u16>().ok()?, hi.parse::<u16>().ok()?);
        if lo == 0 || lo > hi {
            return None;
        }
        ranges.push((lo, hi));
    }
    match *verb {
        "accept" => Some(!ranges.is_empty()),
        // Accepts something unless the rejected ranges cover 1-65535.
        "reject" => {
            ranges.sort_unstable();
            let mut next = 1u32;
            for (lo, hi) in ranges {
                if u32::from(lo) > next {
                    return Some(true);
                }
                next = next.max(u32::from(hi) + 1);
            }
            Some(next <= 65535)
        }
        _ => None,
    }
}

/// Exit policies of microdescriptors (a tor's `cached-microdescs` and
/// `cached-microdescs.new`, annotated with `@` lines): their `m` digest
/// (SHA-256, unpadded base64) -> whether their `p` summary accepts any
/// port (no `p` line: nothing).
pub fn microdesc_policies(text: &str) -> HashMap<String, bool> {
    let mut out = HashMap::new();
    // (start offset, accepts, has an ntor-onion-key line)
    let mut current: Option<(usize, bool, bool)> = None;
    let mut close = |current: &mut Option<(usize, bool, bool)>, end: usize| {
        if let Some((start, accepts, _)) = current.take() {
            let digest = Sha256::digest(&text.as_bytes()[start..end]);
            out.insert(STANDARD_NO_PAD.encode(digest), accepts);
        }
    };
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let start = offset;
        offset += line.len();
        let word = line.split([' ', '\n']).next().unwrap_or("");
        // A microdescriptor starts at onion-key (or at ntor-onion-key once
        // TAP keys are gone); annotations are outside every one.
        let opens = word == "onion-key"
            || (word == "ntor-onion-key" && current.is_none_or(|(_, _, ntor)| ntor));
        if word.starts_with('@') || opens {
            close(&mut current, start);
        }
        if opens {
            current = Some((start, false, false));
        }
        if let Some(c) = current.as_mut() {
            if word == "ntor-onion-key" {
                c.2 = true;
            }
            if word == "p" {
                let rest: Vec<&str> = line.trim_end().split(' ').skip(1).collect();
                c.1 = policy_accepts(&rest).unwrap_or(false);
            }
        }
    }
    close(&mut current, text.len());
    out
}

/// Judges a microdesc consensus's routers by their microdescriptors' exit
/// policies where known (`policies` from [`microdesc_policies`]), instead
/// of the Exit flag: an exit whose policy accepts nothing is dropped, a
/// router without the flag whose policy accepts some port is added.
pub fn apply_microdescs(
    feed: &mut ParsedFeed,
    policies: &HashMap<String, bool>,
    allow_reserved: bool,
) {
    let Some(info) = feed.consensus.as_ref() else {
        return;
    };
    let version = info.valid_after;
    let routers = info.microdescs.clone();
    let mut known = 0;
    for (index, digest, ip) in &routers {
        let Some(&accepts) = policies.get(digest) else {
            continue;
        };
        known += 1;
        let net = IpNet::from(*ip);
        let listed = feed
            .exits
            .get(&net)
            .is_some_and(|e| e.relays.contains(index));
        if accepts && !listed {
            if let Some(net) = keep(net, allow_reserved, &mut feed.report) {
                feed.add_exit(net, Some(*index), Some(version));
            }
        } else if !accepts
            && listed
            && let Some(entry) = feed.exits.get_mut(&net)
        {
            entry.relays.retain(|r| r != index);
            if entry.relays.is_empty() {
                feed.exits.remove(&net);
            }
        }
    }
    if let Some(info) = feed.consensus.as_mut() {
        info.exits_from = ExitsFrom::Microdescs {
            known,
            total: routers.len(),
        };
    }
}

/// Reads a `-----BEGIN SIGNATURE-----` block that follows a
/// `directory-signature` line; its bytes.
fn signature_block<'a>(
    lines: &mut std::iter::Peekable<impl Iterator<Item = (usize, &'a str)>>,
    offset: &mut usize,
) -> Option<Vec<u8>> {
    let (_, first) = lines.next()?;
    *offset += first.len();
    if first.trim_end() != "-----BEGIN SIGNATURE-----" {
        return None;
    }
    let mut b64 = String::new();
    for (_, raw) in lines.by_ref() {
        *offset += raw.len();
        let line = raw.trim_end();
        if line == "-----END SIGNATURE-----" {
            return base64::engine::general_purpose::STANDARD.decode(&b64).ok();
        }
        b64.push_str(line);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feed::parse::{FeedFormat, detect, parse};
    use std::collections::BTreeSet;

    pub(crate) fn data(path: &str) -> String {
        let p = concat!(env!("CARGO_MANIFEST_DIR"), "/data/consensus/");
        std::fs::read_to_string(format!("{p}{path}")).unwrap()
    }

    #[test]
    fn policy_summaries() {
        assert_eq!(policy_accepts(&["accept", "80,443"]), Some(true));
        assert_eq!(policy_accepts(&["reject", "1-65535"]), Some(false));
        assert_eq!(policy_accepts(&["reject", "1-24,26-65535"]), Some(true));
        assert_eq!(policy_accepts(&["reject", "1-100,50-65535"]), Some(false));
        assert_eq!(policy_accepts(&["reject", "2-65535"]), Some(true));
        assert_eq!(policy_accepts(&["reject", "1-65534"]), Some(true));
        assert_eq!(policy_accepts(&["accept", "0"]), None);
        assert_eq!(policy_accepts(&["allow", "80"]), None);
        assert_eq!(policy_accepts(&["accept"]), None);
    }

    #[test]
    fn identities_are_base64_of_20_bytes() {
        assert_eq!(
            identity_hex("AAoQ1DAR6kkoo19hBAX5K0QztNw").as_deref(),
            Some("000A10D43011EA4928A35F610405F92B4433B4DC")
        );
        assert_eq!(identity_hex("AAoQ"), None);
    }

    /// Counts of `r` lines and of those whose `p` summary accepts a port,
    /// read independently of the parser.
    fn routers_and_accepting(text: &str) -> (usize, usize) {
        let routers = text.lines().filter(|l| l.starts_with("r ")).count();
        let accepting = text
            .lines()
            .filter(|l| l.starts_with("p "))
            .filter(|l| *l != "p reject 1-65535")
            .count();
        (routers, accepting)
    }

    #[test]
    fn full_flavour_relays_exits_from_policies_and_validity() {
        let text = data("arti-testdata2/cached-consensus");
        assert_eq!(detect(&text), Ok(FeedFormat::Consensus));
        let feed = parse(text.as_bytes(), None, true).unwrap();
        let info = feed.consensus.as_ref().unwrap();
        assert_eq!(info.flavour, Flavour::Full);
        assert_eq!(info.exits_from, ExitsFrom::Policy);
        assert_eq!(info.valid_after, parse_time("2000-01-01 00:02:20").unwrap());
        assert_eq!(info.valid_until, parse_time("2000-01-01 00:03:00").unwrap());
        assert_eq!(feed.version, Some(info.valid_after));
        assert_eq!(info.authorities.len(), 4);
        assert_eq!(info.signatures.len(), 4);
        assert!(text[info.signed.clone()].ends_with("\ndirectory-signature "));
        let (routers, accepting) = routers_and_accepting(&text);
        assert_eq!(routers, 7);
        // Every router (all on 127.0.0.1, each its own ORPort) and every
        // authority's ORPort is a relay address.
        assert!(feed.or_ports.len() >= routers, "{:?}", feed.or_ports);
        let exits = feed.exits.values().next().map_or(0, |e| e.relays.len());
        assert_eq!(
            exits, accepting,
            "exits are the routers whose policy accepts a port"
        );
        let relay = feed
            .relays
            .iter()
            .find(|r| r.flags.iter().any(|f| f == "Guard"))
            .expect("a guard");
        assert!(relay.nickname.is_some() && relay.fingerprint.len() == 40);
        assert!(relay.flags.iter().any(|f| f == "Running"));
    }

    #[test]
    fn microdesc_flavour_exits_from_the_exit_flag() {
        let text = data("arti-testdata2/cached-microdesc-consensus");
        let feed = parse(text.as_bytes(), Some(FeedFormat::Consensus), true).unwrap();
        let info = feed.consensus.as_ref().unwrap();
        assert_eq!(info.flavour, Flavour::Microdesc);
        assert_eq!(info.exits_from, ExitsFrom::ExitFlag);
        let flagged = feed
            .relays
            .iter()
            .filter(|r| r.flags.iter().any(|f| f == "Exit"))
            .count();
        let exits = feed.exits.values().next().map_or(0, |e| e.relays.len());
        assert_eq!(exits, flagged);
        assert!(info.signatures.iter().all(|s| s.algorithm == "sha256"));
    }

    #[test]
    fn real_network_shape_ipv6_and_port_policies() {
        // Real Tor network data (cut to a few relays, so unsigned now).
        let text = data("live-truncated/consensus");
        let feed = parse(text.as_bytes(), None, false).unwrap();
        let info = feed.consensus.as_ref().unwrap();
        assert_eq!(info.authorities.len(), 9);
        let v6 = text.lines().filter(|l| l.starts_with("a [")).count();
        assert!(v6 > 0);
        assert_eq!(
            feed.or_ports.keys().filter(|a| a.is_ipv6()).count(),
            v6,
            "every a line is a relay address"
        );
        let (_, accepting) = routers_and_accepting(&text);
        let exit_relays: BTreeSet<u32> =
            feed.exits.values().flat_map(|e| e.relays.clone()).collect();
        assert_eq!(exit_relays.len(), accepting);
        // The authorities (dir-source) are relays at their ORPorts.
        let moria = "F533C81CEF0BC0267857C99B2F471ADF249FA232";
        let i = feed
            .relays
            .iter()
            .position(|r| r.fingerprint == moria)
            .unwrap() as u32;
        assert!(feed.or_ports.values().any(|r| r.contains(&i)));
    }

    #[test]
    fn bad_documents_name_the_line() {
        let vote = "network-status-version 3\nvote-status vote\n";
        let e = parse(vote.as_bytes(), None, true).unwrap_err();
        assert_eq!(
            e.to_string(),
            "consensus line 2: \"vote-status vote\": a vote, not a consensus"
        );
        let no_time = "network-status-version 3\nvote-status consensus\nvalid-after yesterday\n";
        let e = parse(no_time.as_bytes(), None, true).unwrap_err();
        assert!(e.to_string().starts_with("consensus line 3:"), "{e}");
        let text = data("arti-testdata2/cached-consensus");
        let broken = text.replacen("\nr ", "\nr x\nr ", 1);
        let feed = parse(broken.as_bytes(), None, true).unwrap();
        assert_eq!(feed.report.bad_count, 1);
        assert!(feed.report.bad[0].reason.starts_with("not an r line"));
        let unsigned = text.split("directory-signature").next().unwrap().to_owned()
            + "directory-signature AAAA BBBB\n";
        let e = parse(unsigned.as_bytes(), None, true).unwrap_err();
        assert!(e.to_string().contains("without its signature block"), "{e}");
    }

    #[test]
    fn microdescriptors_decide_exits_where_known() {
        let consensus = data("lab/cached-microdesc-consensus");
        let microdescs = data("lab/cached-microdescs.new");
        let policies = microdesc_policies(&microdescs);
        // tor's own digests: every m line of the consensus is found.
        let m_lines: Vec<&str> = consensus
            .lines()
            .filter_map(|l| l.strip_prefix("m "))
            .collect();
        assert_eq!(m_lines.len(), 6);
        assert!(
            m_lines.iter().all(|m| policies.contains_key(*m)),
            "{policies:?}"
        );
        let mut feed = parse(consensus.as_bytes(), None, true).unwrap();
        apply_microdescs(&mut feed, &policies, true);
        let info = feed.consensus.as_ref().unwrap();
        assert_eq!(
            info.exits_from,
            ExitsFrom::Microdescs { known: 6, total: 6 }
        );
        assert!(
            info.to_string()
                .contains("(6 of 6 routers; the rest by the Exit flag)")
        );
        let exit_names = |feed: &ParsedFeed| -> Vec<String> {
            let mut names: Vec<String> = feed
                .exits
                .values()
                .flat_map(|e| e.relays.iter())
                .map(|&i| feed.relays[i as usize].nickname.clone().unwrap())
                .collect();
            names.sort();
            names
        };
        assert_eq!(exit_names(&feed), ["exit6"]);

        // The exit's microdescriptor without its policy (accepts nothing),
        // and relay4 (no Exit flag) with one that accepts a port.
        let digest = |text: &str| STANDARD_NO_PAD.encode(Sha256::digest(text.as_bytes()));
        let closed = "onion-key\nntor-onion-key AAAA\nid ed25519 BBBB\n";
        let open = "onion-key\nntor-onion-key CCCC\np accept 443\nid ed25519 DDDD\n";
        let mut lines: Vec<String> = consensus.lines().map(str::to_owned).collect();
        let mut router = String::new();
        for line in &mut lines {
            if let Some(rest) = line.strip_prefix("r ") {
                router = rest.split(' ').next().unwrap().to_owned();
            }
            if line.starts_with("m ") && router == "exit6" {
                *line = format!("m {}", digest(closed));
            }
            if line.starts_with("m ") && router == "relay4" {
                *line = format!("m {}", digest(open));
            }
        }
        let edited = lines.join("\n") + "\n";
        let mut feed = parse(edited.as_bytes(), None, true).unwrap();
        assert_eq!(exit_names(&feed), ["exit6"], "by the Exit flag before");
        let policies = microdesc_policies(&format!(
            "@last-listed 2026-12-01 18:36:32\n{closed}@last-listed 2026-12-01 18:36:32\n{open}"
        ));
        apply_microdescs(&mut feed, &policies, true);
        assert_eq!(exit_names(&feed), ["relay4"]);
        let info = feed.consensus.as_ref().unwrap();
        assert_eq!(
            info.exits_from,
            ExitsFrom::Microdescs { known: 2, total: 6 }
        );
    }
}
