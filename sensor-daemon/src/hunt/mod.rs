//! The hunt (issue 16): which flows, packets and web requests of the past
//! involved an address that was a Tor relay or exit *at that time*.
//!
//! Every input becomes records of two kinds, each with where it was found:
//!
//! - a [`Flow`] (a TCP or UDP conversation with bytes and packets each
//!   way): assembled from packets ([`packets`]: PCAP and pcapng), read from
//!   NetFlow v5/v9 and IPFIX export packets found in a capture
//!   ([`netflow`]), or from flow logs ([`flows`]: Zeek `conn.log` in TSV
//!   and JSON, `nfdump -o csv` and `-o json`);
//! - a [`Request`] (one line of a web server's access log:
//!   [`access_log`]).
//!
//! [`Hunter`] matches each against the Tor history ([`crate::history`]) at
//! the record's time, groups the matches (a flow's unidirectional records,
//! a client's requests per window), judges them against the
//! "substantial" thresholds ([`HuntSettings`]), and hands them to the
//! caller as [`Finding`]s; [`report`] sums them per internal host and Tor
//! peer. The caller (the `torsensor hunt` command) turns findings into
//! alerts through the rules and the outputs.
//!
//! Input types are told by content ([`detect`]), never by file name. Bad
//! records are counted and reported with the file and byte offset; they
//! never stop the run.
//!
//! Layer 3: above [`crate::history`] and [`crate::net`]; nothing here
//! builds alerts (see [`crate::alert::hunt`]).

pub mod access_log;
pub mod collect;
pub mod flows;
pub mod hunter;
pub mod input;
pub mod lines;
pub mod merge;
pub mod netflow;
pub mod packets;
pub mod report;

use std::net::{IpAddr, SocketAddr};

pub use hunter::{Finding, FindingKind, HuntSettings, HuntStats, Hunter, Peer};

/// Where a record starts in its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Position {
    /// Byte offset (in the decompressed stream for a gzip input).
    pub offset: u64,
    /// The record's number: packet, line or flow record, from 1.
    pub record: u64,
}

/// How the initiator of a flow was known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Initiator {
    /// The capture has the SYN (without ACK).
    Syn,
    /// The flow record says (its source).
    Record,
    /// Guessed: the end with the lower port serves, the other initiates.
    Port,
}

impl Initiator {
    pub fn as_str(self) -> &'static str {
        match self {
            Initiator::Syn => "syn",
            Initiator::Record => "record",
            Initiator::Port => "port",
        }
    }
}

/// How a flow ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowEnd {
    /// FIN from both ends.
    Fin,
    Rst,
    /// Nothing for the idle timeout.
    Idle,
    /// Still going when the input ended.
    EndOfInput,
    /// A flow record (the exporter decided).
    Record,
}

impl FlowEnd {
    pub fn as_str(self) -> &'static str {
        match self {
            FlowEnd::Fin => "fin",
            FlowEnd::Rst => "rst",
            FlowEnd::Idle => "idle",
            FlowEnd::EndOfInput => "end-of-input",
            FlowEnd::Record => "record",
        }
    }
}

/// A conversation: `bytes[0]`/`packets[0]` from the initiator to the
/// responder, `[1]` back. Bytes are IP bytes (headers included), as
/// NetFlow counts them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flow {
    /// Nanoseconds since 1970.
    pub start_ns: u64,
    pub end_ns: u64,
    pub initiator: SocketAddr,
    pub responder: SocketAddr,
    /// IP protocol number (6 TCP, 17 UDP).
    pub protocol: u8,
    pub bytes: [u64; 2],
    pub packets: [u64; 2],
    pub initiator_by: Initiator,
    pub end: FlowEnd,
    pub position: Position,
}

/// One request of a web server's access log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub time_ns: u64,
    /// The address that connected to the server.
    pub client: IpAddr,
    /// `X-Forwarded-For`, as written (the client first, the nearest proxy
    /// last); empty unless asked for.
    pub forwarded_for: Vec<IpAddr>,
    pub method: Option<String>,
    /// The request target (path and query).
    pub target: Option<String>,
    pub status: Option<u16>,
    /// Response bytes.
    pub bytes: u64,
    pub user_agent: Option<String>,
    pub position: Position,
}

/// What a reader hands over, record by record.
pub trait Records {
    fn flow(&mut self, flow: Flow);
    /// A flow record read from a NetFlow/IPFIX export, with where it came
    /// from (the hunt needs only the flow).
    fn exported(&mut self, flow: Flow, _export: &netflow::Export) {
        self.flow(flow);
    }
    fn request(&mut self, request: Request);
    /// A record that could not be read: where, and why (one line).
    fn bad(&mut self, offset: u64, why: &str);
    /// Whether `ip` is in the history at all (any time): lets the packet
    /// reader keep state only for packets that may match.
    fn may_match(&self, ip: IpAddr) -> bool;
}

/// An input's type, told by its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputKind {
    Pcap,
    PcapNg,
    /// Zeek `conn.log`, TSV with its `#fields` header.
    ZeekTsv,
    /// Zeek `conn.log` as JSON lines.
    ZeekJson,
    /// `nfdump -o csv`.
    NfdumpCsv,
    /// `nfdump -o json`.
    NfdumpJson,
    /// nginx/Apache combined or common log format.
    AccessLog,
    /// JSON lines access log (field names from `[hunt] json_fields`).
    AccessLogJson,
}

impl InputKind {
    pub fn as_str(self) -> &'static str {
        match self {
            InputKind::Pcap => "pcap",
            InputKind::PcapNg => "pcapng",
            InputKind::ZeekTsv | InputKind::ZeekJson => "zeek",
            InputKind::NfdumpCsv | InputKind::NfdumpJson => "nfdump",
            InputKind::AccessLog | InputKind::AccessLogJson => "access-log",
        }
    }
}

/// The type of an input from its first bytes (at least the first line;
/// 64 KiB is plenty), or `None`.
pub fn detect(head: &[u8]) -> Option<InputKind> {
    if head.len() >= 4 {
        let magic = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
        match magic {
            0xa1b2_c3d4 | 0xd4c3_b2a1 | 0xa1b2_3c4d | 0x4d3c_b2a1 => return Some(InputKind::Pcap),
            0x0a0d_0d0a => return Some(InputKind::PcapNg),
            _ => {}
        }
    }
    let text = head.strip_prefix(b"\xef\xbb\xbf").unwrap_or(head);
    let first_line = text.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(first_line);
    let line = line.trim();
    if line.starts_with("#separator") {
        return Some(InputKind::ZeekTsv);
    }
    if line.starts_with("ts,te,td,sa,da,") || line.starts_with("firstseen,") {
        return Some(InputKind::NfdumpCsv);
    }
    if line == "[" || (line.starts_with('[') && line.contains("\"type\"")) {
        return Some(InputKind::NfdumpJson);
    }
    if line.starts_with('{') {
        return Some(if line.contains("\"id.orig_h\"") {
            InputKind::ZeekJson
        } else {
            InputKind::AccessLogJson
        });
    }
    if access_log::parse_line(line, false).is_ok() {
        return Some(InputKind::AccessLog);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_are_told_by_content() {
        assert_eq!(
            detect(&[0xd4, 0xc3, 0xb2, 0xa1, 2, 0]),
            Some(InputKind::Pcap)
        );
        assert_eq!(detect(&[0x4d, 0x3c, 0xb2, 0xa1]), Some(InputKind::Pcap));
        assert_eq!(detect(&[0x0a, 0x0d, 0x0d, 0x0a]), Some(InputKind::PcapNg));
        assert_eq!(
            detect(b"#separator \\x09\n#set_separator\t,\n"),
            Some(InputKind::ZeekTsv)
        );
        assert_eq!(
            detect(b"{\"ts\":1.5,\"uid\":\"C1\",\"id.orig_h\":\"10.0.0.1\"}\n"),
            Some(InputKind::ZeekJson)
        );
        assert_eq!(
            detect(b"ts,te,td,sa,da,sp,dp,pr\n"),
            Some(InputKind::NfdumpCsv)
        );
        assert_eq!(detect(b"[\n{\n"), Some(InputKind::NfdumpJson));
        assert_eq!(
            detect(b"{\"remote_addr\":\"192.0.2.1\",\"time\":\"x\"}\n"),
            Some(InputKind::AccessLogJson)
        );
        assert_eq!(
            detect(b"192.0.2.1 - - [01/Mar/2025:12:00:00 +0000] \"GET / HTTP/1.1\" 200 612 \"-\" \"curl/8\"\n"),
            Some(InputKind::AccessLog)
        );
        assert_eq!(detect(b"hello world\n"), None);
        assert_eq!(detect(b""), None);
    }
}
