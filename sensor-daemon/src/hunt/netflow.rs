//! NetFlow v5/v9 and IPFIX export packets found in a capture (UDP to a
//! collector port): the flows they carry, read with `netflow_parser`
//! (templates kept per exporter address and observation domain, as a
//! collector must).
//!
//! Each exported record is one direction of a conversation; it becomes a
//! [`Flow`] whose initiator is guessed from the ports (the lower port
//! serves) and whose bytes count for that direction. The hunter merges the
//! two directions of a conversation.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use netflow_parser::variable_versions::field_value::{DataNumber, DurationValue, FieldValue};
use netflow_parser::variable_versions::ipfix::FlowSetBody as IpfixBody;
use netflow_parser::variable_versions::ipfix::lookup::{IANAIPFixField, IPFixField};
use netflow_parser::variable_versions::v9::FlowSetBody as V9Body;
use netflow_parser::variable_versions::v9::lookup::V9Field;
use netflow_parser::{AutoScopedParser, NetflowPacket, NetflowParser, TtlConfig};

use super::{Flow, FlowEnd, Initiator, Position, Records};

/// The exports of one capture, or of one live collector.
pub struct Exports {
    parser: AutoScopedParser,
    /// Export packets read.
    pub packets: u64,
    /// Data sets whose template the exporter has not sent (yet): their
    /// records are not read.
    pub unknown_templates: u64,
    /// Export packets with an error (what was read before it is kept).
    pub malformed: u64,
}

/// Where an exported record came from: the exporter and what its export
/// says about the record beyond the flow (ECS `observer.*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Export {
    pub exporter: SocketAddr,
    /// 5, 9 or 10 (IPFIX).
    pub version: u16,
    /// The IPFIX observation domain, the v9 source id, the v5 engine id.
    pub domain: u32,
    /// The ifIndex the flow entered and left the exporter by, when
    /// exported (0 is "not known" in NetFlow: none).
    pub input_if: Option<u32>,
    pub output_if: Option<u32>,
}

impl Default for Exports {
    fn default() -> Self {
        Self::new()
    }
}

/// One direction of a conversation, as an exporter saw it.
#[derive(Debug, Default, Clone, Copy)]
struct OneWay {
    src: Option<IpAddr>,
    dst: Option<IpAddr>,
    src_port: u16,
    dst_port: u16,
    protocol: u8,
    bytes: u64,
    packets: u64,
    /// Milliseconds since 1970.
    start_ms: Option<u64>,
    end_ms: Option<u64>,
    /// Uptime milliseconds (v9 FIRST/LAST_SWITCHED, IPFIX flowStart/End
    /// SysUpTime).
    start_uptime: Option<u64>,
    end_uptime: Option<u64>,
    input_if: Option<u32>,
    output_if: Option<u32>,
}

fn number(v: &FieldValue) -> Option<u64> {
    match v {
        FieldValue::DataNumber(n) => match n {
            DataNumber::U8(x) => Some(u64::from(*x)),
            DataNumber::U16(x) => Some(u64::from(*x)),
            DataNumber::U24(x) | DataNumber::U32(x) => Some(u64::from(*x)),
            DataNumber::U64(x) => Some(*x),
            DataNumber::U128(x) => u64::try_from(*x).ok(),
            _ => None,
        },
        FieldValue::Duration(d) => Some(match d {
            DurationValue::Seconds { value, .. } => value.saturating_mul(1000),
            DurationValue::Millis { value, .. } => *value,
            DurationValue::MicrosNtp { seconds, fraction }
            | DurationValue::NanosNtp { seconds, fraction } => {
                // NTP era 0 (1900) to Unix milliseconds.
                (u64::from(*seconds).saturating_sub(2_208_988_800)) * 1000
                    + ((u64::from(*fraction) * 1000) >> 32)
            }
        }),
        FieldValue::ProtocolType(p) => Some(u64::from(u8::from(*p))),
        _ => None,
    }
}

fn address(v: &FieldValue) -> Option<IpAddr> {
    match v {
        FieldValue::Ip4Addr(a) => Some(IpAddr::V4(*a)),
        FieldValue::Ip6Addr(a) => Some(IpAddr::V6(*a)),
        _ => None,
    }
}

/// An ifIndex; 0 means not known.
fn interface(v: &FieldValue) -> Option<u32> {
    number(v)
        .and_then(|n| u32::try_from(n).ok())
        .filter(|n| *n != 0)
}

impl OneWay {
    fn v9(record: &[(V9Field, FieldValue)]) -> OneWay {
        let mut w = OneWay::default();
        for (field, value) in record {
            match field {
                V9Field::Ipv4SrcAddr | V9Field::Ipv6SrcAddr => w.src = address(value),
                V9Field::Ipv4DstAddr | V9Field::Ipv6DstAddr => w.dst = address(value),
                V9Field::L4SrcPort => w.src_port = number(value).unwrap_or(0) as u16,
                V9Field::L4DstPort => w.dst_port = number(value).unwrap_or(0) as u16,
                V9Field::Protocol => w.protocol = number(value).unwrap_or(0) as u8,
                V9Field::InBytes => w.bytes = number(value).unwrap_or(0),
                V9Field::InPkts => w.packets = number(value).unwrap_or(0),
                V9Field::FirstSwitched => w.start_uptime = number(value),
                V9Field::LastSwitched => w.end_uptime = number(value),
                V9Field::InputSnmp => w.input_if = interface(value),
                V9Field::OutputSnmp => w.output_if = interface(value),
                _ => {}
            }
        }
        w
    }

    fn ipfix(record: &[(IPFixField, FieldValue)]) -> OneWay {
        let mut w = OneWay::default();
        for (field, value) in record {
            let IPFixField::IANA(f) = field else { continue };
            match f {
                IANAIPFixField::SourceIpv4address | IANAIPFixField::SourceIpv6address => {
                    w.src = address(value)
                }
                IANAIPFixField::DestinationIpv4address | IANAIPFixField::DestinationIpv6address => {
                    w.dst = address(value)
                }
                IANAIPFixField::SourceTransportPort => {
                    w.src_port = number(value).unwrap_or(0) as u16
                }
                IANAIPFixField::DestinationTransportPort => {
                    w.dst_port = number(value).unwrap_or(0) as u16
                }
                IANAIPFixField::ProtocolIdentifier => w.protocol = number(value).unwrap_or(0) as u8,
                IANAIPFixField::OctetDeltaCount | IANAIPFixField::OctetTotalCount => {
                    w.bytes = number(value).unwrap_or(0)
                }
                IANAIPFixField::PacketDeltaCount | IANAIPFixField::PacketTotalCount => {
                    w.packets = number(value).unwrap_or(0)
                }
                IANAIPFixField::FlowStartSeconds
                | IANAIPFixField::FlowStartMilliseconds
                | IANAIPFixField::FlowStartMicroseconds
                | IANAIPFixField::FlowStartNanoseconds => w.start_ms = number(value),
                IANAIPFixField::FlowEndSeconds
                | IANAIPFixField::FlowEndMilliseconds
                | IANAIPFixField::FlowEndMicroseconds
                | IANAIPFixField::FlowEndNanoseconds => w.end_ms = number(value),
                IANAIPFixField::FlowStartSysUpTime => w.start_uptime = number(value),
                IANAIPFixField::FlowEndSysUpTime => w.end_uptime = number(value),
                IANAIPFixField::IngressInterface => w.input_if = interface(value),
                IANAIPFixField::EgressInterface => w.output_if = interface(value),
                _ => {}
            }
        }
        w
    }
}

/// One direction, as a [`Flow`] oriented by the ports.
pub fn one_way_flow(
    src: SocketAddr,
    dst: SocketAddr,
    protocol: u8,
    (bytes, packets): (u64, u64),
    (start_ns, end_ns): (u64, u64),
    position: Position,
) -> Flow {
    // The lower port serves; equal ports: the record's source initiates.
    let forward = src.port() >= dst.port();
    let (initiator, responder, dir) = if forward {
        (src, dst, 0)
    } else {
        (dst, src, 1)
    };
    let mut f = Flow {
        start_ns,
        end_ns: end_ns.max(start_ns),
        initiator,
        responder,
        protocol,
        bytes: [0; 2],
        packets: [0; 2],
        initiator_by: Initiator::Port,
        end: FlowEnd::Record,
        position,
    };
    f.bytes[dir] = bytes;
    f.packets[dir] = packets;
    f
}

impl Exports {
    pub fn new() -> Self {
        Exports {
            parser: AutoScopedParser::new(),
            packets: 0,
            unknown_templates: 0,
            malformed: 0,
        }
    }

    /// A live collector's: templates forgotten when not refreshed for
    /// `template_ttl`, at most `max_exporters` exporters (and observation
    /// domains) remembered, the least recently heard forgotten first.
    pub fn bounded(template_ttl: Duration, max_exporters: usize) -> Self {
        let builder = NetflowParser::builder().with_ttl(TtlConfig::new(template_ttl));
        let parser = AutoScopedParser::try_with_builder(builder)
            .and_then(|p| p.with_max_sources(max_exporters.max(1)))
            .unwrap_or_default();
        Exports {
            parser,
            ..Exports::new()
        }
    }

    /// Exporters (and observation domains) with templates remembered.
    pub fn exporters(&self) -> usize {
        self.parser.source_count()
    }

    /// Forgets the exporters not heard from for `idle`.
    pub fn forget_idle(&mut self, idle: Duration) -> usize {
        self.parser.prune_idle_sources(idle)
    }

    /// One export datagram from `exporter`.
    pub fn packet(
        &mut self,
        exporter: SocketAddr,
        payload: &[u8],
        pos: Position,
        out: &mut dyn Records,
    ) {
        self.packets += 1;
        let result = self.parser.parse_from_source(exporter, payload);
        for packet in &result.packets {
            let (version, domain, unix_ms, uptime_ms, ways): (
                u16,
                u32,
                u64,
                Option<u64>,
                Vec<OneWay>,
            ) = match packet {
                NetflowPacket::V5(v5) => {
                    let h = &v5.header;
                    let now_ms =
                        u64::from(h.unix_secs) * 1000 + u64::from(h.unix_nsecs) / 1_000_000;
                    let ways = v5
                        .flowsets
                        .iter()
                        .map(|f| OneWay {
                            src: Some(IpAddr::V4(f.src_addr)),
                            dst: Some(IpAddr::V4(f.dst_addr)),
                            src_port: f.src_port,
                            dst_port: f.dst_port,
                            protocol: f.protocol_number,
                            bytes: u64::from(f.d_octets),
                            packets: u64::from(f.d_pkts),
                            start_uptime: Some(u64::from(f.first)),
                            end_uptime: Some(u64::from(f.last)),
                            input_if: Some(u32::from(f.input)).filter(|i| *i != 0),
                            output_if: Some(u32::from(f.output)).filter(|i| *i != 0),
                            ..OneWay::default()
                        })
                        .collect();
                    (
                        5,
                        u32::from(h.engine_id),
                        now_ms,
                        Some(u64::from(h.sys_up_time)),
                        ways,
                    )
                }
                NetflowPacket::V9(v9) => {
                    let h = &v9.header;
                    let mut ways = Vec::new();
                    for fs in &v9.flowsets {
                        match &fs.body {
                            V9Body::Data(d) => ways.extend(d.fields.iter().map(|r| OneWay::v9(r))),
                            V9Body::NoTemplate(_) => self.unknown_templates += 1,
                            _ => {}
                        }
                    }
                    (
                        9,
                        h.source_id,
                        u64::from(h.unix_secs) * 1000,
                        Some(u64::from(h.sys_up_time)),
                        ways,
                    )
                }
                NetflowPacket::IPFix(ipfix) => {
                    let mut ways = Vec::new();
                    for fs in &ipfix.flowsets {
                        match &fs.body {
                            IpfixBody::Data(d) => {
                                ways.extend(d.fields.iter().map(|r| OneWay::ipfix(r)))
                            }
                            IpfixBody::V9Data(d) => {
                                ways.extend(d.fields.iter().map(|r| OneWay::v9(r)))
                            }
                            IpfixBody::NoTemplate(_) => self.unknown_templates += 1,
                            _ => {}
                        }
                    }
                    (
                        10,
                        ipfix.header.observation_domain_id,
                        u64::from(ipfix.header.export_time) * 1000,
                        None,
                        ways,
                    )
                }
                _ => continue,
            };
            for w in ways {
                let (Some(src), Some(dst)) = (w.src, w.dst) else {
                    continue;
                };
                // Uptime-relative times: the export header pairs an uptime
                // with a wall-clock time.
                let at = |abs: Option<u64>, up: Option<u64>| -> u64 {
                    match (abs, up, uptime_ms) {
                        (Some(ms), _, _) => ms,
                        (None, Some(up), Some(now_up)) => {
                            unix_ms.saturating_sub(now_up.saturating_sub(up))
                        }
                        _ => unix_ms,
                    }
                };
                let start = at(w.start_ms, w.start_uptime);
                let end = at(w.end_ms, w.end_uptime);
                let flow = one_way_flow(
                    SocketAddr::new(src, w.src_port),
                    SocketAddr::new(dst, w.dst_port),
                    w.protocol,
                    (w.bytes, w.packets),
                    (start * 1_000_000, end * 1_000_000),
                    pos,
                );
                out.exported(
                    flow,
                    &Export {
                        exporter,
                        version,
                        domain,
                        input_if: w.input_if,
                        output_if: w.output_if,
                    },
                );
            }
        }
        if let Some(e) = &result.error {
            self.malformed += 1;
            out.bad(
                pos.offset,
                &format!("NetFlow/IPFIX export from {exporter}: {e}"),
            );
        }
    }
}
