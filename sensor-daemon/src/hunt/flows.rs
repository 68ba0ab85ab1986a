//! Flow logs: Zeek `conn.log` (TSV with its `#fields` header, and JSON
//! lines) and nfdump's `-o csv` and `-o json` output.
//!
//! A Zeek connection is a whole conversation (`id.orig_h` initiated it);
//! an nfdump record is one direction (its two directions are merged by the
//! hunter). Bytes are IP bytes where the log has them (Zeek's
//! `orig_ip_bytes`, nfdump's `ibyt`), else payload bytes.
//!
//! nfdump writes times in the local time zone of the machine that ran it:
//! they are read as UTC (run `TZ=UTC nfdump ...`).

use std::collections::HashMap;
use std::io::BufRead;
use std::net::{IpAddr, SocketAddr};

use serde_json::Value;

use super::lines::{parse_epoch, parse_iso, records_by_line};
use super::netflow::one_way_flow;
use super::{Flow, FlowEnd, Initiator, Position, Records};

fn protocol_number(text: &str) -> Option<u8> {
    match text.trim().to_ascii_lowercase().as_str() {
        "tcp" => Some(6),
        "udp" => Some(17),
        "icmp" => Some(1),
        "ipv6-icmp" | "icmp6" => Some(58),
        other => other.parse().ok(),
    }
}

/// A Zeek connection's fields, whatever the encoding.
struct ZeekConn {
    ts: u64,
    orig: SocketAddr,
    resp: SocketAddr,
    protocol: u8,
    duration_ns: u64,
    bytes: [u64; 2],
    packets: [u64; 2],
}

impl ZeekConn {
    fn into_flow(self, position: Position) -> Flow {
        Flow {
            start_ns: self.ts,
            end_ns: self.ts.saturating_add(self.duration_ns),
            initiator: self.orig,
            responder: self.resp,
            protocol: self.protocol,
            bytes: self.bytes,
            packets: self.packets,
            initiator_by: Initiator::Record,
            end: FlowEnd::Record,
            position,
        }
    }
}

fn duration_ns(text: &str) -> u64 {
    parse_epoch(text).unwrap_or(0)
}

/// Reads a Zeek `conn.log` in TSV.
pub fn zeek_tsv(
    reader: impl BufRead,
    out: &mut dyn Records,
    progress: &mut dyn FnMut(u64),
) -> std::io::Result<()> {
    let mut separator = '\t';
    let mut unset = "-".to_owned();
    let mut columns: HashMap<String, usize> = HashMap::new();
    records_by_line(reader, out, progress, |line, out| {
        let text = line.text;
        if let Some(rest) = text.strip_prefix("#separator ") {
            separator = match rest.trim() {
                "\\x09" => '\t',
                s if s.starts_with("\\x") => {
                    u8::from_str_radix(&s[2..], 16).map_or('\t', char::from)
                }
                s => s.chars().next().unwrap_or('\t'),
            };
            return Ok(());
        }
        if let Some(rest) = text.strip_prefix('#') {
            let mut fields = rest.split(separator);
            match fields.next() {
                Some("fields") => {
                    columns = fields.enumerate().map(|(i, f)| (f.to_owned(), i)).collect();
                }
                Some("unset_field") => unset = fields.next().unwrap_or("-").to_owned(),
                _ => {}
            }
            return Ok(());
        }
        if columns.is_empty() {
            return Err("a record before the #fields header".into());
        }
        let values: Vec<&str> = text.split(separator).collect();
        let get = |name: &str| -> Option<&str> {
            columns
                .get(name)
                .and_then(|&i| values.get(i).copied())
                .filter(|v| *v != unset && !v.is_empty())
        };
        let num = |name: &str| get(name).and_then(|v| v.parse::<u64>().ok());
        let field = |name: &str| get(name).ok_or_else(|| format!("no {name}"));
        let ip = |name: &str| -> Result<IpAddr, String> {
            field(name)?
                .parse()
                .map_err(|_| format!("{name} is not an address"))
        };
        let port = |name: &str| -> Result<u16, String> {
            field(name)?
                .parse()
                .map_err(|_| format!("{name} is not a port"))
        };
        let conn = ZeekConn {
            ts: parse_epoch(field("ts")?).ok_or("ts is not a time")?,
            orig: SocketAddr::new(ip("id.orig_h")?, port("id.orig_p")?),
            resp: SocketAddr::new(ip("id.resp_h")?, port("id.resp_p")?),
            protocol: protocol_number(field("proto")?).ok_or("proto is unknown")?,
            duration_ns: get("duration").map_or(0, duration_ns),
            bytes: [
                num("orig_ip_bytes")
                    .or_else(|| num("orig_bytes"))
                    .unwrap_or(0),
                num("resp_ip_bytes")
                    .or_else(|| num("resp_bytes"))
                    .unwrap_or(0),
            ],
            packets: [num("orig_pkts").unwrap_or(0), num("resp_pkts").unwrap_or(0)],
        };
        out.flow(conn.into_flow(position(line)));
        Ok(())
    })
}

fn position(line: &super::lines::Line<'_>) -> Position {
    Position {
        offset: line.offset,
        record: line.number,
    }
}

fn json_u64(v: &Value, key: &str) -> Option<u64> {
    match v.get(key)? {
        Value::Number(n) => n.as_u64().or_else(|| n.as_f64().map(|f| f as u64)),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

fn json_str<'v>(v: &'v Value, key: &str) -> Option<&'v str> {
    v.get(key)?.as_str()
}

fn json_time(v: &Value, key: &str) -> Option<u64> {
    match v.get(key)? {
        Value::Number(n) => parse_epoch(&n.to_string()),
        Value::String(s) => parse_iso(s).or_else(|| parse_epoch(s)),
        _ => None,
    }
}

fn zeek_json_conn(v: &Value) -> Result<ZeekConn, String> {
    let ip = |k: &str| -> Result<IpAddr, String> {
        json_str(v, k)
            .ok_or_else(|| format!("no {k}"))?
            .parse()
            .map_err(|_| format!("{k} is not an address"))
    };
    let port = |k: &str| -> Result<u16, String> {
        json_u64(v, k)
            .and_then(|p| u16::try_from(p).ok())
            .ok_or_else(|| format!("no {k}"))
    };
    let duration = match v.get("duration") {
        Some(Value::Number(n)) => parse_epoch(&n.to_string()).unwrap_or(0),
        _ => 0,
    };
    Ok(ZeekConn {
        ts: json_time(v, "ts").ok_or("ts is not a time")?,
        orig: SocketAddr::new(ip("id.orig_h")?, port("id.orig_p")?),
        resp: SocketAddr::new(ip("id.resp_h")?, port("id.resp_p")?),
        protocol: json_str(v, "proto")
            .and_then(protocol_number)
            .ok_or("proto is unknown")?,
        duration_ns: duration,
        bytes: [
            json_u64(v, "orig_ip_bytes")
                .or_else(|| json_u64(v, "orig_bytes"))
                .unwrap_or(0),
            json_u64(v, "resp_ip_bytes")
                .or_else(|| json_u64(v, "resp_bytes"))
                .unwrap_or(0),
        ],
        packets: [
            json_u64(v, "orig_pkts").unwrap_or(0),
            json_u64(v, "resp_pkts").unwrap_or(0),
        ],
    })
}

/// Reads a Zeek `conn.log` written as JSON lines.
pub fn zeek_json(
    reader: impl BufRead,
    out: &mut dyn Records,
    progress: &mut dyn FnMut(u64),
) -> std::io::Result<()> {
    records_by_line(reader, out, progress, |line, out| {
        let v = serde_json::from_str::<Value>(line.text).map_err(|e| format!("not JSON ({e})"))?;
        out.flow(zeek_json_conn(&v)?.into_flow(position(line)));
        Ok(())
    })
}

/// Reads `nfdump -o csv` output (the header names the columns).
pub fn nfdump_csv(
    reader: impl BufRead,
    out: &mut dyn Records,
    progress: &mut dyn FnMut(u64),
) -> std::io::Result<()> {
    let mut columns: HashMap<String, usize> = HashMap::new();
    let mut in_summary = false;
    records_by_line(reader, out, progress, |line, out| {
        let text = line.text.trim();
        // nfdump before 1.7 ends its CSV with a summary block.
        if in_summary || text.starts_with("Summary") {
            in_summary = true;
            return Ok(());
        }
        if columns.is_empty() {
            columns = text
                .split(',')
                .enumerate()
                .map(|(i, c)| (c.trim().to_owned(), i))
                .collect();
            return Ok(());
        }
        let values: Vec<&str> = text.split(',').map(str::trim).collect();
        let get = |name: &str| columns.get(name).and_then(|&i| values.get(i).copied());
        let field = |name: &str| get(name).ok_or_else(|| format!("no {name}"));
        let ip = |name: &str| -> Result<IpAddr, String> {
            field(name)?
                .parse()
                .map_err(|_| format!("{name} is not an address"))
        };
        let num = |name: &str| get(name).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        let start = parse_iso(field("ts")?).ok_or("ts is not a time")?;
        let end = get("te").and_then(parse_iso).unwrap_or(start);
        let sport: u16 = field("sp")?.parse().map_err(|_| "sp is not a port")?;
        let dport: u16 = field("dp")?.parse().map_err(|_| "dp is not a port")?;
        let protocol = protocol_number(field("pr")?).ok_or("pr is unknown")?;
        let src = SocketAddr::new(ip("sa")?, sport);
        let mut f = one_way_flow(
            src,
            SocketAddr::new(ip("da")?, dport),
            protocol,
            (num("ibyt"), num("ipkt")),
            (start, end),
            position(line),
        );
        // Bidirectional records (NSEL, IPFIX biflows): the other way.
        add_other_way(&mut f, src, num("obyt"), num("opkt"));
        out.flow(f);
        Ok(())
    })
}

/// Adds a bidirectional record's counts from its destination back to
/// `src`.
fn add_other_way(f: &mut Flow, src: SocketAddr, bytes: u64, packets: u64) {
    if bytes > 0 || packets > 0 {
        let back = usize::from(f.initiator == src);
        f.bytes[back] += bytes;
        f.packets[back] += packets;
    }
}

fn nfdump_json_flow(v: &Value, position: Position) -> Result<Flow, String> {
    let ip = |a: &str, b: &str| -> Result<IpAddr, String> {
        json_str(v, a)
            .or_else(|| json_str(v, b))
            .ok_or_else(|| format!("no {a} or {b}"))?
            .parse()
            .map_err(|_| format!("{a} is not an address"))
    };
    let port = |k: &str| {
        json_u64(v, k)
            .and_then(|p| u16::try_from(p).ok())
            .unwrap_or(0)
    };
    let start = json_time(v, "first").ok_or("first is not a time")?;
    let end = json_time(v, "last").unwrap_or(start);
    let protocol = match v.get("proto") {
        Some(Value::Number(n)) => n.as_u64().and_then(|p| u8::try_from(p).ok()),
        Some(Value::String(s)) => protocol_number(s),
        _ => None,
    }
    .ok_or("proto is unknown")?;
    let src = SocketAddr::new(ip("src4_addr", "src6_addr")?, port("src_port"));
    let mut f = one_way_flow(
        src,
        SocketAddr::new(ip("dst4_addr", "dst6_addr")?, port("dst_port")),
        protocol,
        (
            json_u64(v, "in_bytes").unwrap_or(0),
            json_u64(v, "in_packets").unwrap_or(0),
        ),
        (start, end),
        position,
    );
    add_other_way(
        &mut f,
        src,
        json_u64(v, "out_bytes").unwrap_or(0),
        json_u64(v, "out_packets").unwrap_or(0),
    );
    Ok(f)
}

/// Reads `nfdump -o json` output: one JSON array, read element by element
/// (never whole into memory).
pub fn nfdump_json(
    reader: impl std::io::Read,
    out: &mut dyn Records,
    progress: &mut dyn FnMut(u64),
) -> Result<(), String> {
    use serde::de::{Deserializer, SeqAccess, Visitor};

    struct Elements<'o> {
        out: &'o mut dyn Records,
        progress: &'o mut dyn FnMut(u64),
    }

    impl<'de> Visitor<'de> for Elements<'_> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a JSON array of nfdump records")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            let mut record = 0u64;
            while let Some(v) = seq.next_element::<Value>()? {
                record += 1;
                if v.get("type")
                    .and_then(Value::as_str)
                    .is_some_and(|t| t != "FLOW")
                {
                    continue;
                }
                let position = Position { offset: 0, record };
                match nfdump_json_flow(&v, position) {
                    Ok(f) => self.out.flow(f),
                    Err(why) => self.out.bad(0, &format!("record {record}: {why}")),
                }
                if record.is_multiple_of(4096) {
                    (self.progress)(0);
                }
            }
            Ok(())
        }
    }

    let mut de = serde_json::Deserializer::from_reader(reader);
    de.deserialize_seq(Elements { out, progress })
        .map_err(|e| format!("not an nfdump JSON array: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Collect {
        flows: Vec<Flow>,
        bad: Vec<(u64, String)>,
    }

    impl Records for Collect {
        fn flow(&mut self, flow: Flow) {
            self.flows.push(flow);
        }
        fn request(&mut self, _: super::super::Request) {}
        fn bad(&mut self, offset: u64, why: &str) {
            self.bad.push((offset, why.to_owned()));
        }
        fn may_match(&self, _: IpAddr) -> bool {
            true
        }
    }

    fn expected(position: Position) -> Flow {
        Flow {
            start_ns: 1_632_928_690_500_620_000,
            end_ns: 1_632_928_690_500_620_000 + 27_648_000,
            initiator: "192.168.1.99:62978".parse().unwrap(),
            responder: "192.168.1.1:53".parse().unwrap(),
            protocol: 17,
            bytes: [83, 162],
            packets: [1, 1],
            initiator_by: Initiator::Record,
            end: FlowEnd::Record,
            position,
        }
    }

    /// A conn.log Zeek wrote (data/hunt/SOURCES.md).
    #[test]
    fn a_real_zeek_conn_log() {
        let text = include_str!("../../data/hunt/zeek-conn.log");
        assert_eq!(
            super::super::detect(text.as_bytes()),
            Some(super::super::InputKind::ZeekTsv)
        );
        let mut c = Collect::default();
        zeek_tsv(text.as_bytes(), &mut c, &mut |_| {}).unwrap();
        assert!(c.bad.is_empty(), "{:?}", c.bad);
        let offset = text.find("1632928690").unwrap() as u64;
        assert_eq!(c.flows, vec![expected(Position { offset, record: 9 })]);
    }

    /// The same connection as Zeek writes it with `LogAscii::use_json`.
    #[test]
    fn zeek_json_lines_and_bad_ones() {
        let line = r#"{"ts":1632928690.50062,"uid":"CvVbVi3kNVC4LPU90f","id.orig_h":"192.168.1.99","id.orig_p":62978,"id.resp_h":"192.168.1.1","id.resp_p":53,"proto":"udp","service":"dns","duration":0.027648,"orig_bytes":55,"resp_bytes":134,"conn_state":"SF","missed_bytes":0,"history":"Dd","orig_pkts":1,"orig_ip_bytes":83,"resp_pkts":1,"resp_ip_bytes":162}"#;
        let text = format!("{line}\n{{\"ts\":1,\"id.orig_h\":\"nope\"}}\n");
        let mut c = Collect::default();
        zeek_json(text.as_bytes(), &mut c, &mut |_| {}).unwrap();
        assert_eq!(
            c.flows,
            vec![expected(Position {
                offset: 0,
                record: 1
            })]
        );
        assert_eq!(c.bad.len(), 1);
        assert_eq!(c.bad[0].0, line.len() as u64 + 1);
        assert!(
            c.bad[0]
                .1
                .starts_with("line 2: id.orig_h is not an address"),
            "{:?}",
            c.bad
        );
    }
}
