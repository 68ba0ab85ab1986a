//! PCAP and pcapng: packets to flows.
//!
//! Reads with `pcap-parser` (streamed, one buffer, any size of file) and
//! decodes with `etherparse` (Ethernet with VLAN tags, Linux cooked
//! captures v1 and v2, raw IP, BSD loopback; IPv4 and IPv6). A packet keeps
//! state only when one of its addresses is in the history at all
//! ([`Records::may_match`]): everything else costs a decode and two
//! lookups. TCP and UDP packets of the same 5-tuple make one [`Flow`],
//! which ends on FIN from both ends or RST (after a short linger for the
//! last ACKs), after `idle_timeout` without a packet, when the flow table
//! is full (the oldest go first) or at the end of the input.
//!
//! UDP packets to one of the NetFlow/IPFIX collector ports are handed to
//! [`super::netflow`], which reads the flows they export.

use std::collections::HashMap;
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use etherparse::{EtherType, LaxNetSlice, LaxSlicedPacket, TransportSlice};
use pcap_parser::pcapng::Block;
use pcap_parser::{Linktype, PcapBlockOwned, PcapError};

use super::netflow::Exports;
use super::{Flow, FlowEnd, Initiator, Position, Records};

/// How packets become flows.
#[derive(Debug, Clone)]
pub struct PacketSettings {
    /// A flow with no packet for this long has ended (nanoseconds).
    pub idle_timeout_ns: u64,
    /// Flows tracked at once (only flows with a possibly listed address
    /// are tracked).
    pub max_flows: usize,
    /// UDP destination ports whose packets are read as NetFlow v5/v9 or
    /// IPFIX exports.
    pub netflow_ports: Vec<u16>,
}

/// What the reader saw.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PacketStats {
    pub packets: u64,
    /// Packets that are not IPv4/IPv6 (ARP, LLDP...).
    pub not_ip: u64,
    /// IP packets other than TCP/UDP, and later fragments.
    pub not_tcp_udp: u64,
    /// Packets that could not be decoded (cut short, bad headers).
    pub undecodable: u64,
    /// Flows ended early because the flow table was full.
    pub evicted: u64,
    /// Export packets read as NetFlow/IPFIX.
    pub exports: u64,
}

/// Why a capture could not be read on (the records before it are kept).
#[derive(Debug, thiserror::Error)]
pub enum PacketError {
    #[error("offset {offset}: not a PCAP or pcapng file ({reason})")]
    Header { offset: u64, reason: String },
    #[error("offset {offset}: damaged capture ({reason}); the rest of the file is skipped")]
    Damaged { offset: u64, reason: String },
    #[error(
        "offset {offset}: link type {linktype} is not read (Ethernet, Linux cooked, raw IP and loopback are)"
    )]
    Linktype { offset: u64, linktype: i32 },
}

/// The canonical key of a 5-tuple (the lower end first).
type Key = (u8, SocketAddr, SocketAddr);

struct State {
    start_ns: u64,
    last_ns: u64,
    initiator: SocketAddr,
    responder: SocketAddr,
    protocol: u8,
    bytes: [u64; 2],
    packets: [u64; 2],
    by: Initiator,
    fin: [bool; 2],
    /// FIN from both ends or RST: since when, and how.
    closing: Option<(u64, FlowEnd)>,
    position: Position,
}

impl State {
    fn into_flow(self, end: FlowEnd) -> Flow {
        Flow {
            start_ns: self.start_ns,
            end_ns: self.last_ns,
            initiator: self.initiator,
            responder: self.responder,
            protocol: self.protocol,
            bytes: self.bytes,
            packets: self.packets,
            initiator_by: self.by,
            end,
            position: self.position,
        }
    }
}

/// After FIN from both ends (or RST), packets for this long still belong
/// to the flow (the last ACKs, retransmissions).
const LINGER_NS: u64 = 5_000_000_000;
/// How often (capture time) ended flows are looked for.
const SWEEP_NS: u64 = 1_000_000_000;

/// One decoded packet, as the flow table needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decoded<'a> {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub protocol: u8,
    pub src_port: u16,
    pub dst_port: u16,
    /// IP bytes (header included): IPv4 total length, IPv6 40 + payload
    /// length.
    pub ip_bytes: u64,
    pub syn: bool,
    pub ack: bool,
    pub fin: bool,
    pub rst: bool,
    /// UDP payload (for NetFlow exports).
    pub udp_payload: &'a [u8],
}

/// What a packet turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decode<'a> {
    Packet(Decoded<'a>),
    NotIp,
    NotTcpUdp,
    Undecodable,
}

/// Decodes one frame of link type `linktype`. Lax: a packet cut short by
/// the capture's snap length still gives its addresses, ports and IP
/// length (from the header).
pub fn decode(linktype: Linktype, data: &[u8]) -> Decode<'_> {
    let ether = |at: usize| -> Option<LaxSlicedPacket<'_>> {
        let h = data.get(at - 2..at)?;
        Some(LaxSlicedPacket::from_ether_type(
            EtherType(u16::from_be_bytes([h[0], h[1]])),
            &data[at..],
        ))
    };
    let sliced = match linktype {
        Linktype::ETHERNET => LaxSlicedPacket::from_ethernet(data).ok(),
        // Linux cooked v1: 16 bytes, the protocol in the last two.
        Linktype::LINUX_SLL => ether(16),
        // v2: 20 bytes, the protocol in the first two.
        Linktype::LINUX_SLL2 => data.get(..20).map(|h| {
            LaxSlicedPacket::from_ether_type(
                EtherType(u16::from_be_bytes([h[0], h[1]])),
                &data[20..],
            )
        }),
        Linktype::RAW | Linktype::IPV4 | Linktype::IPV6 => LaxSlicedPacket::from_ip(data).ok(),
        // BSD loopback: a 4-byte address family, then IP.
        Linktype::NULL | Linktype::LOOP => data
            .get(4..)
            .and_then(|ip| LaxSlicedPacket::from_ip(ip).ok()),
        _ => None,
    };
    let Some(p) = sliced else {
        return Decode::Undecodable;
    };
    let (src, dst, ip_bytes, fragment) = match &p.net {
        Some(LaxNetSlice::Ipv4(v4)) => {
            let h = v4.header();
            (
                IpAddr::V4(h.source_addr()),
                IpAddr::V4(h.destination_addr()),
                u64::from(h.total_len()),
                v4.is_payload_fragmented(),
            )
        }
        Some(LaxNetSlice::Ipv6(v6)) => {
            let h = v6.header();
            (
                IpAddr::V6(h.source_addr()),
                IpAddr::V6(h.destination_addr()),
                40 + u64::from(h.payload_length()),
                v6.is_payload_fragmented(),
            )
        }
        Some(LaxNetSlice::Arp(_)) | None => return Decode::NotIp,
    };
    let base = Decoded {
        src,
        dst,
        protocol: 0,
        src_port: 0,
        dst_port: 0,
        ip_bytes,
        syn: false,
        ack: false,
        fin: false,
        rst: false,
        udp_payload: &[],
    };
    match &p.transport {
        Some(TransportSlice::Tcp(t)) if !fragment => Decode::Packet(Decoded {
            protocol: 6,
            src_port: t.source_port(),
            dst_port: t.destination_port(),
            syn: t.syn(),
            ack: t.ack(),
            fin: t.fin(),
            rst: t.rst(),
            ..base
        }),
        Some(TransportSlice::Udp(u)) if !fragment => Decode::Packet(Decoded {
            protocol: 17,
            src_port: u.source_port(),
            dst_port: u.destination_port(),
            udp_payload: u.payload(),
            ..base
        }),
        _ => Decode::NotTcpUdp,
    }
}

/// The flow table.
pub struct Assembler<'s> {
    settings: &'s PacketSettings,
    flows: HashMap<Key, State>,
    next_sweep_ns: u64,
    pub stats: PacketStats,
}

impl<'s> Assembler<'s> {
    pub fn new(settings: &'s PacketSettings) -> Self {
        Assembler {
            settings,
            flows: HashMap::new(),
            next_sweep_ns: 0,
            stats: PacketStats::default(),
        }
    }

    /// One decoded TCP/UDP packet at `ts_ns`.
    pub fn packet(&mut self, p: &Decoded<'_>, ts_ns: u64, pos: Position, out: &mut dyn Records) {
        if ts_ns >= self.next_sweep_ns {
            self.sweep(ts_ns, out);
            self.next_sweep_ns = ts_ns.saturating_add(SWEEP_NS);
        }
        if !(out.may_match(p.src) || out.may_match(p.dst)) {
            return;
        }
        let a = SocketAddr::new(p.src, p.src_port);
        let b = SocketAddr::new(p.dst, p.dst_port);
        let key = if a <= b {
            (p.protocol, a, b)
        } else {
            (p.protocol, b, a)
        };
        if let Some(s) = self.flows.get(&key) {
            // A new connection on the same 5-tuple after the old one closed.
            if s.closing.is_some() && p.syn && !p.ack {
                let s = self.flows.remove(&key).expect("present");
                let end = s.closing.map_or(FlowEnd::Fin, |c| c.1);
                out.flow(s.into_flow(end));
            }
        }
        if !self.flows.contains_key(&key) && self.flows.len() >= self.settings.max_flows {
            self.evict(out);
        }
        let s = self.flows.entry(key).or_insert_with(|| {
            let (initiator, responder, by) = if p.protocol == 6 && p.syn {
                if p.ack {
                    (b, a, Initiator::Syn)
                } else {
                    (a, b, Initiator::Syn)
                }
            } else if p.src_port < p.dst_port {
                (b, a, Initiator::Port)
            } else {
                (a, b, Initiator::Port)
            };
            State {
                start_ns: ts_ns,
                last_ns: ts_ns,
                initiator,
                responder,
                protocol: p.protocol,
                bytes: [0; 2],
                packets: [0; 2],
                by,
                fin: [false; 2],
                closing: None,
                position: pos,
            }
        });
        let dir = usize::from(a != s.initiator);
        s.bytes[dir] += p.ip_bytes;
        s.packets[dir] += 1;
        s.last_ns = s.last_ns.max(ts_ns);
        if p.protocol == 6 && s.closing.is_none() {
            if p.rst {
                s.closing = Some((ts_ns, FlowEnd::Rst));
            } else if p.fin {
                s.fin[dir] = true;
                if s.fin[0] && s.fin[1] {
                    s.closing = Some((ts_ns, FlowEnd::Fin));
                }
            }
        }
    }

    /// Ends flows that closed a while ago or have been idle.
    fn sweep(&mut self, now_ns: u64, out: &mut dyn Records) {
        let idle = self.settings.idle_timeout_ns;
        let ended: Vec<Key> = self
            .flows
            .iter()
            .filter(|(_, s)| match s.closing {
                Some((t, _)) => now_ns.saturating_sub(t) >= LINGER_NS,
                None => now_ns.saturating_sub(s.last_ns) >= idle,
            })
            .map(|(k, _)| *k)
            .collect();
        for k in ended {
            let s = self.flows.remove(&k).expect("present");
            let end = s.closing.map_or(FlowEnd::Idle, |c| c.1);
            out.flow(s.into_flow(end));
        }
    }

    /// The table is full: the eighth least recently seen flows end.
    fn evict(&mut self, out: &mut dyn Records) {
        let mut by_age: Vec<(u64, Key)> = self.flows.iter().map(|(k, s)| (s.last_ns, *k)).collect();
        by_age.sort_unstable();
        let n = (by_age.len() / 8).max(1);
        for (_, k) in by_age.into_iter().take(n) {
            let s = self.flows.remove(&k).expect("present");
            self.stats.evicted += 1;
            let end = s.closing.map_or(FlowEnd::Idle, |c| c.1);
            out.flow(s.into_flow(end));
        }
    }

    /// The input ended: every flow still open ends.
    pub fn finish(&mut self, out: &mut dyn Records) {
        let mut rest: Vec<State> = self.flows.drain().map(|(_, s)| s).collect();
        rest.sort_by_key(|s| (s.start_ns, s.position.record));
        for s in rest {
            let end = s.closing.map_or(FlowEnd::EndOfInput, |c| c.1);
            out.flow(s.into_flow(end));
        }
    }
}

/// Per pcapng interface: link type and time resolution.
#[derive(Clone, Copy)]
struct Interface {
    linktype: Linktype,
    resolution: u64,
    offset: i64,
}

fn nanos(secs: u64, frac: u64, units_per_sec: u64) -> u64 {
    let frac_ns = if units_per_sec == 1_000_000_000 {
        frac
    } else {
        (u128::from(frac) * 1_000_000_000 / u128::from(units_per_sec.max(1))) as u64
    };
    secs.saturating_mul(1_000_000_000).saturating_add(frac_ns)
}

/// Reads a whole capture: flows (and NetFlow exports) to `out`; `progress`
/// is called with the bytes read so far now and then.
pub fn read(
    reader: impl Read + Send,
    settings: &PacketSettings,
    out: &mut dyn Records,
    progress: &mut dyn FnMut(u64),
) -> Result<PacketStats, (PacketStats, PacketError)> {
    let mut asm = Assembler::new(settings);
    let mut exports = Exports::new();
    // pcapng: every block's length checked on the way (see PcapngGuard).
    // The first 64 KiB are read ahead: the parser must find a whole file
    // header in its first read.
    let mut reader = reader;
    let mut prefix = Vec::with_capacity(64 << 10);
    if let Err(e) = (&mut reader).take(64 << 10).read_to_end(&mut prefix) {
        return Err((
            asm.stats,
            PacketError::Header {
                offset: 0,
                reason: e.to_string(),
            },
        ));
    }
    let magic = prefix.get(..4).map(|m| [m[0], m[1], m[2], m[3]]);
    let head = std::io::Cursor::new(prefix).chain(reader);
    let result = if magic == Some([0x0a, 0x0d, 0x0d, 0x0a]) {
        read_blocks(
            PcapngGuard::new(head),
            settings,
            &mut asm,
            &mut exports,
            out,
            progress,
        )
    } else {
        read_blocks(head, settings, &mut asm, &mut exports, out, progress)
    };
    asm.finish(out);
    asm.stats.exports = exports.packets;
    match result {
        Ok(()) => Ok(asm.stats),
        Err(e) => Err((asm.stats, e)),
    }
}

fn read_blocks(
    reader: impl Read + Send,
    settings: &PacketSettings,
    asm: &mut Assembler<'_>,
    exports: &mut Exports,
    out: &mut dyn Records,
    progress: &mut dyn FnMut(u64),
) -> Result<(), PacketError> {
    let mut r = pcap_parser::create_reader(1 << 20, reader).map_err(|e| PacketError::Header {
        offset: 0,
        reason: format!("{e:?}"),
    })?;
    let mut consumed: u64 = 0;
    let mut record: u64 = 0;
    // Legacy PCAP: one link type and resolution; pcapng: per interface.
    let mut legacy = Interface {
        linktype: Linktype::ETHERNET,
        resolution: 1_000_000,
        offset: 0,
    };
    let mut interfaces: Vec<Interface> = Vec::new();
    let mut since_progress: u64 = 0;
    loop {
        match r.next() {
            Ok((len, block)) => {
                let pos = Position {
                    offset: consumed,
                    record: record + 1,
                };
                let frame: Option<(Interface, u64, u64, &[u8])> = match block {
                    PcapBlockOwned::LegacyHeader(h) => {
                        legacy.linktype = h.network;
                        legacy.resolution = if h.is_nanosecond_precision() {
                            1_000_000_000
                        } else {
                            1_000_000
                        };
                        None
                    }
                    PcapBlockOwned::Legacy(b) => {
                        Some((legacy, u64::from(b.ts_sec), u64::from(b.ts_usec), b.data))
                    }
                    PcapBlockOwned::NG(Block::SectionHeader(_)) => {
                        interfaces.clear();
                        None
                    }
                    PcapBlockOwned::NG(Block::InterfaceDescription(idb)) => {
                        interfaces.push(Interface {
                            linktype: idb.linktype,
                            resolution: idb.ts_resolution().unwrap_or(1_000_000),
                            offset: idb.ts_offset(),
                        });
                        None
                    }
                    PcapBlockOwned::NG(Block::EnhancedPacket(epb)) => {
                        match interfaces.get(epb.if_id as usize) {
                            Some(i) => {
                                let (s, f) = epb.decode_ts(i.offset.max(0) as u64, i.resolution);
                                Some((*i, u64::from(s), u64::from(f), epb.data))
                            }
                            None => {
                                out.bad(
                                    consumed,
                                    &format!("packet of undeclared interface {}", epb.if_id),
                                );
                                None
                            }
                        }
                    }
                    PcapBlockOwned::NG(Block::SimplePacket(spb)) => {
                        // No timestamp: the flow times come from the
                        // neighbours (0 here).
                        interfaces.first().map(|i| (*i, 0, 0, spb.data))
                    }
                    PcapBlockOwned::NG(_) => None,
                };
                if let Some((iface, secs, frac, data)) = frame {
                    record += 1;
                    asm.stats.packets += 1;
                    let ts = nanos(secs, frac, iface.resolution);
                    match decode(iface.linktype, data) {
                        Decode::Packet(p) => {
                            if p.protocol == 17 && settings.netflow_ports.contains(&p.dst_port) {
                                exports.packet(
                                    SocketAddr::new(p.src, p.src_port),
                                    p.udp_payload,
                                    pos,
                                    out,
                                );
                            } else {
                                asm.packet(&p, ts, pos, out);
                            }
                        }
                        Decode::NotIp => asm.stats.not_ip += 1,
                        Decode::NotTcpUdp => asm.stats.not_tcp_udp += 1,
                        Decode::Undecodable => {
                            if !matches!(
                                iface.linktype,
                                Linktype::ETHERNET
                                    | Linktype::LINUX_SLL
                                    | Linktype::LINUX_SLL2
                                    | Linktype::RAW
                                    | Linktype::IPV4
                                    | Linktype::IPV6
                                    | Linktype::NULL
                                    | Linktype::LOOP
                            ) {
                                return Err(PacketError::Linktype {
                                    offset: consumed,
                                    linktype: iface.linktype.0,
                                });
                            }
                            asm.stats.undecodable += 1;
                            out.bad(consumed, "undecodable packet");
                        }
                    }
                }
                consumed += len as u64;
                since_progress += len as u64;
                if since_progress >= 4 << 20 {
                    progress(consumed);
                    since_progress = 0;
                }
                r.consume(len);
            }
            Err(PcapError::Eof) => break,
            Err(PcapError::Incomplete(_)) => {
                if r.reader_exhausted() {
                    return Err(PacketError::Damaged {
                        offset: consumed,
                        reason: "the last record is cut short".into(),
                    });
                }
                r.refill().map_err(|e| PacketError::Damaged {
                    offset: consumed,
                    reason: format!("{e:?}"),
                })?;
            }
            Err(e) => {
                return Err(PacketError::Damaged {
                    offset: consumed,
                    reason: match e {
                        PcapError::NomError(_, kind) | PcapError::OwnedNomError(_, kind) => {
                            format!("bad record ({kind:?})")
                        }
                        other => format!("{other:?}"),
                    },
                });
            }
        }
    }
    progress(consumed);
    Ok(())
}

/// An unspecified address (for tests and defaults).
pub const UNSPECIFIED_V4: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
/// An unspecified IPv6 address.
pub const UNSPECIFIED_V6: IpAddr = IpAddr::V6(Ipv6Addr::UNSPECIFIED);

/// Checks pcapng block lengths as the bytes stream through, before
/// `pcap-parser` sees them: a block shorter than its own 12-byte frame
/// makes that parser compute a negative length (found by the fuzzer; it
/// overflows). Such a file is refused at that block.
pub struct PcapngGuard<R> {
    inner: R,
    /// Bytes of the current block still to pass through.
    remaining: u64,
    header: [u8; 12],
    have: usize,
    big_endian: bool,
    /// Bytes passed so far, and where the current block began.
    offset: u64,
    block_start: u64,
}

impl<R: Read> PcapngGuard<R> {
    pub fn new(inner: R) -> Self {
        PcapngGuard {
            inner,
            remaining: 0,
            header: [0; 12],
            have: 0,
            big_endian: false,
            offset: 0,
            block_start: 0,
        }
    }

    fn bad(&self, what: &str) -> std::io::Error {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("offset {}: {what}", self.block_start),
        )
    }

    /// Takes one header byte; returns the rest of the block's length once
    /// the header is complete.
    fn header_byte(&mut self, b: u8) -> std::io::Result<Option<u64>> {
        self.header[self.have] = b;
        self.have += 1;
        let h = self.header;
        let is_shb = h[..4] == [0x0a, 0x0d, 0x0d, 0x0a];
        if self.have < 4 || self.have < if is_shb { 12 } else { 8 } {
            return Ok(None);
        }
        if is_shb {
            self.big_endian = match [h[8], h[9], h[10], h[11]] {
                [0x1a, 0x2b, 0x3c, 0x4d] => true,
                [0x4d, 0x3c, 0x2b, 0x1a] => false,
                _ => return Err(self.bad("bad pcapng byte-order magic")),
            };
        }
        let len_bytes = [h[4], h[5], h[6], h[7]];
        let len = if self.big_endian {
            u32::from_be_bytes(len_bytes)
        } else {
            u32::from_le_bytes(len_bytes)
        };
        if len < 12 || len % 4 != 0 {
            return Err(self.bad(&format!(
                "pcapng block of length {len} (at least 12, a multiple of 4)"
            )));
        }
        let rest = u64::from(len) - self.have as u64;
        self.have = 0;
        Ok(Some(rest))
    }
}

impl<R: Read> Read for PcapngGuard<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        let mut i = 0;
        while i < n {
            if self.remaining > 0 {
                let step = self.remaining.min((n - i) as u64) as usize;
                self.remaining -= step as u64;
                i += step;
                continue;
            }
            if self.have == 0 {
                self.block_start = self.offset + i as u64;
            }
            if let Some(rest) = self.header_byte(buf[i])? {
                self.remaining = rest;
            }
            i += 1;
        }
        self.offset += n as u64;
        Ok(n)
    }
}
