//! Wire formats: RFC 5424 messages, octet-counting frames, Splunk HEC and
//! Elasticsearch `_bulk` bodies, and the checks on their answers.
//!
//! Pure functions of the sink's [`Entry`] (no I/O), used by `transport`;
//! may use nothing else.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;

use super::Entry;

/// ECS severity (0-100) to syslog severity (RFC 5424, 0 = emergency).
///
/// Bands follow Elastic's detection-rule levels (low 21, medium 47, high 73,
/// critical 99). Emergency (0) and alert (1) are never used: rsyslog's stock
/// configuration broadcasts `*.emerg` to every terminal.
pub fn syslog_severity(ecs: u8) -> u8 {
    match ecs {
        90.. => 2,    // critical
        70..=89 => 3, // error
        45..=69 => 4, // warning
        20..=44 => 5, // notice
        _ => 6,       // informational
    }
}

/// Keeps printable US-ASCII (RFC 5424 PRINTUSASCII), at most `max` bytes; `-` when empty.
fn header_field(s: &str, max: usize) -> String {
    let mut out: String = s
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(max)
        .collect();
    if out.is_empty() {
        out.push('-');
    }
    out
}

/// One RFC 5424 message: `<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID - MSG`.
///
/// TIMESTAMP is UTC with microseconds (the most RFC 5424 allows), MSGID is
/// the rule id (at most 32 characters), SD is nil, MSG is the JSON body
/// without a BOM (MSG-ANY; receivers then do not prepend U+FEFF to the JSON).
pub fn rfc5424(entry: &Entry, facility: u8, app: &str, procid: u32) -> String {
    let pri = u16::from(facility) * 8 + u16::from(syslog_severity(entry.severity));
    format!(
        "<{pri}>1 {} {} {} {procid} {} - {}",
        humantime::format_rfc3339_micros(entry.time()),
        header_field(&entry.host, 255),
        header_field(app, 48),
        header_field(&entry.rule_id, 32),
        entry.body
    )
}

/// Octet counting (RFC 6587 3.4.1): `MSG-LEN SP SYSLOG-MSG`.
pub fn octet_frame(msg: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(msg.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(msg.as_bytes());
}

fn epoch_seconds(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| (d.as_millis() as f64) / 1000.0)
}

/// Splunk HEC fields besides the event.
pub struct HecFields<'a> {
    pub source: &'a str,
    pub sourcetype: &'a str,
    pub index: Option<&'a str>,
}

/// One HEC event object (batches are these objects back to back).
pub fn hec_event(entry: &Entry, f: &HecFields<'_>, out: &mut Vec<u8>) {
    let mut head = serde_json::Map::new();
    head.insert("time".into(), Value::from(epoch_seconds(entry.time())));
    head.insert("host".into(), Value::from(entry.host.as_str()));
    head.insert("source".into(), Value::from(f.source));
    head.insert("sourcetype".into(), Value::from(f.sourcetype));
    if let Some(i) = f.index {
        head.insert("index".into(), Value::from(i));
    }
    let head = Value::Object(head).to_string();
    // `{...head...,"event":BODY}`: the body is already JSON text.
    out.extend_from_slice(&head.as_bytes()[..head.len() - 1]);
    out.extend_from_slice(b",\"event\":");
    out.extend_from_slice(entry.body.as_bytes());
    out.push(b'}');
}

/// One `_bulk` pair: `{"create":{"_index":..,"_id":..}}\n` + document + `\n`.
///
/// `create` with the alert's unique id makes a retry idempotent: an item
/// indexed by an earlier attempt answers 409, which counts as delivered.
pub fn bulk_pair(entry: &Entry, index: &str, out: &mut Vec<u8>) {
    let action = serde_json::json!({"create": {"_index": index, "_id": entry.id}});
    out.extend_from_slice(action.to_string().as_bytes());
    out.push(b'\n');
    out.extend_from_slice(entry.body.as_bytes());
    out.push(b'\n');
}

/// What a 2xx answer body says about the batch.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Everything delivered, except `rejected` items refused for good.
    Ok { rejected: u64 },
    /// Retry the whole batch.
    Retry(String),
}

/// HEC answers `{"text":"Success","code":0}`; any other code is a failure.
pub fn hec_verdict(body: &[u8]) -> Verdict {
    match serde_json::from_slice::<Value>(body) {
        Ok(v) => match v.get("code").and_then(Value::as_i64) {
            Some(0) => Verdict::Ok { rejected: 0 },
            Some(code) => Verdict::Retry(format!(
                "HEC answered code {code}: {}",
                v.get("text").and_then(Value::as_str).unwrap_or("")
            )),
            None => Verdict::Retry("HEC answer has no \"code\"".into()),
        },
        Err(e) => Verdict::Retry(format!("HEC answer is not JSON: {e}")),
    }
}

/// `_bulk` answers 200 even when items failed (`"errors":true`). Items with
/// 2xx or 409 (already created by an earlier attempt) are delivered; 429 and
/// 5xx make the whole batch retry; other statuses (mapping errors) are
/// rejected for good and counted.
pub fn bulk_verdict(body: &[u8], expected: usize) -> Verdict {
    let v: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => return Verdict::Retry(format!("_bulk answer is not JSON: {e}")),
    };
    if v.get("errors").and_then(Value::as_bool) == Some(false) {
        return Verdict::Ok { rejected: 0 };
    }
    let Some(items) = v.get("items").and_then(Value::as_array) else {
        return Verdict::Retry("_bulk answer has errors but no items".into());
    };
    if items.len() != expected {
        return Verdict::Retry(format!(
            "_bulk answered {} items for {expected}",
            items.len()
        ));
    }
    let mut rejected = 0;
    let mut retry = None;
    for item in items {
        let op = item.as_object().and_then(|o| o.values().next());
        let status = op
            .and_then(|o| o.get("status"))
            .and_then(Value::as_u64)
            .unwrap_or(0);
        match status {
            200..=299 | 409 => {}
            429 | 500.. | 0 => {
                retry.get_or_insert_with(|| {
                    let reason = op
                        .and_then(|o| o.get("error"))
                        .map(|e| e.to_string())
                        .unwrap_or_default();
                    format!("_bulk item status {status} {reason}")
                });
            }
            _ => rejected += 1,
        }
    }
    match retry {
        Some(r) => Verdict::Retry(r),
        None => Verdict::Ok { rejected },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn entry(body: &str) -> Entry {
        Entry {
            id: "id-1".into(),
            time_ns: Duration::from_millis(1_700_000_000_123).as_nanos() as u64,
            severity: 73,
            rule_id: "torsensor.egress.relay".into(),
            host: "web 1".into(),
            body: body.into(),
        }
    }

    #[test]
    fn rfc5424_header() {
        let m = rfc5424(&entry(r#"{"a":1}"#), 10, "torsensor", 42);
        assert_eq!(
            m,
            r#"<83>1 2023-11-14T22:13:20.123000Z web1 torsensor 42 torsensor.egress.relay - {"a":1}"#
        );
        // authpriv (10) * 8 + error (3)
        assert!(m.starts_with("<83>"));
        let mut e = entry("{}");
        e.rule_id = String::new();
        e.severity = 10;
        assert!(
            rfc5424(&e, 16, "torsensor", 1).starts_with("<134>1 ")
                && rfc5424(&e, 16, "t", 1).contains(" 1 - - {}")
        );
    }

    #[test]
    fn severity_bands() {
        assert_eq!(
            [0, 21, 47, 73, 99, 100].map(syslog_severity),
            [6, 5, 4, 3, 2, 2]
        );
    }

    #[test]
    fn octet_counting() {
        let mut out = Vec::new();
        octet_frame("<13>1 - - - - - - hé", &mut out);
        octet_frame("x", &mut out);
        assert_eq!(out, "21 <13>1 - - - - - - hé1 x".as_bytes());
    }

    #[test]
    fn hec_objects_back_to_back() {
        let f = HecFields {
            source: "torsensor",
            sourcetype: "_json",
            index: Some("sec"),
        };
        let mut out = Vec::new();
        hec_event(&entry(r#"{"x":1}"#), &f, &mut out);
        hec_event(&entry(r#"{"x":2}"#), &f, &mut out);
        let docs: Vec<Value> = serde_json::Deserializer::from_slice(&out)
            .into_iter()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0]["time"], 1_700_000_000.123);
        assert_eq!(docs[0]["host"], "web 1");
        assert_eq!(docs[0]["source"], "torsensor");
        assert_eq!(docs[0]["index"], "sec");
        assert_eq!(docs[1]["event"]["x"], 2);
        assert!(!out.starts_with(b"["));
    }

    #[test]
    fn bulk_pairs() {
        let mut out = Vec::new();
        bulk_pair(&entry(r#"{"x":1}"#), "alerts", &mut out);
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        let action: Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(
            action,
            serde_json::json!({"create": {"_index": "alerts", "_id": "id-1"}})
        );
        assert_eq!(lines[1], r#"{"x":1}"#);
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn answers() {
        assert_eq!(
            hec_verdict(br#"{"text":"Success","code":0}"#),
            Verdict::Ok { rejected: 0 }
        );
        assert!(matches!(
            hec_verdict(br#"{"text":"Invalid token","code":4}"#),
            Verdict::Retry(_)
        ));
        assert_eq!(
            bulk_verdict(br#"{"errors":false,"items":[]}"#, 2),
            Verdict::Ok { rejected: 0 }
        );
        let mixed = br#"{"errors":true,"items":[{"create":{"status":201}},{"create":{"status":409}},{"create":{"status":400,"error":{"type":"mapper_parsing_exception"}}}]}"#;
        assert_eq!(bulk_verdict(mixed, 3), Verdict::Ok { rejected: 1 });
        let busy = br#"{"errors":true,"items":[{"create":{"status":201}},{"create":{"status":429,"error":{"type":"es_rejected_execution_exception"}}}]}"#;
        assert!(matches!(bulk_verdict(busy, 2), Verdict::Retry(r) if r.contains("429")));
        assert!(matches!(bulk_verdict(b"<html>", 1), Verdict::Retry(_)));
    }
}
