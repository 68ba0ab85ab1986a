//! Web server access logs: the combined and common log formats (nginx's
//! and Apache's defaults, with any number of extra quoted fields after
//! them), and JSON lines with configurable field names.
//!
//! With `forwarded_for`, the `X-Forwarded-For` chain is read too: in the
//! text formats from the first quoted field after the user agent (nginx's
//! `"$http_x_forwarded_for"` appended to `combined`), in JSON from its
//! field.

use std::io::BufRead;
use std::net::IpAddr;

use serde::Deserialize;
use serde_json::Value;

use super::lines::{parse_clf, parse_epoch, parse_iso, records_by_line};
use super::{Position, Records, Request};

/// The fields of a JSON access log (`[hunt.json_fields]`). Defaults are
/// nginx's variable names, as JSON `log_format`s usually use them.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JsonFields {
    pub client: String,
    /// RFC 3339, the common log format's time, or epoch seconds.
    pub time: String,
    pub method: String,
    pub target: String,
    /// The request line (`GET /x HTTP/1.1`), read when `method` and
    /// `target` are absent.
    pub request: String,
    pub status: String,
    pub bytes: String,
    pub user_agent: String,
    pub forwarded_for: String,
}

impl Default for JsonFields {
    fn default() -> Self {
        JsonFields {
            client: "remote_addr".into(),
            time: "time_iso8601".into(),
            method: "request_method".into(),
            target: "request_uri".into(),
            request: "request".into(),
            status: "status".into(),
            bytes: "body_bytes_sent".into(),
            user_agent: "http_user_agent".into(),
            forwarded_for: "http_x_forwarded_for".into(),
        }
    }
}

/// A quoted field, with `\"` and `\\` escapes; returns it and the rest.
fn quoted(s: &str) -> Option<(String, &str)> {
    let s = s.trim_start().strip_prefix('"')?;
    let mut out = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => {
                if let Some((_, n)) = chars.next() {
                    out.push(n);
                }
            }
            '"' => return Some((out, &s[i + 1..])),
            c => out.push(c),
        }
    }
    None
}

fn token(s: &str) -> Option<(&str, &str)> {
    let s = s.trim_start();
    if s.is_empty() {
        return None;
    }
    let end = s.find(' ').unwrap_or(s.len());
    Some((&s[..end], &s[end..]))
}

fn dash(s: String) -> Option<String> {
    (s != "-" && !s.is_empty()).then_some(s)
}

fn split_request(line: &str) -> (Option<String>, Option<String>) {
    let mut parts = line.splitn(3, ' ');
    let method = parts.next().filter(|m| !m.is_empty() && *m != "-");
    let target = parts.next();
    match (method, target) {
        (Some(m), Some(t)) => (Some(m.to_owned()), Some(t.to_owned())),
        // A malformed request line (a scanner's bytes): kept whole.
        (Some(m), None) => (None, Some(m.to_owned())),
        _ => (None, None),
    }
}

/// An `X-Forwarded-For` value: the addresses in it (ports and brackets
/// removed; names and `unknown` left out).
pub fn forwarded_addresses(value: &str) -> Vec<IpAddr> {
    value
        .split(',')
        .filter_map(|a| {
            let a = a.trim().trim_matches('"');
            if let Ok(ip) = a.parse::<IpAddr>() {
                return Some(ip);
            }
            if let Some(rest) = a.strip_prefix('[') {
                return rest.split(']').next()?.parse().ok();
            }
            a.rsplit_once(':').and_then(|(h, _)| h.parse().ok())
        })
        .collect()
}

/// The client and time of a combined/common line, and the rest.
fn client_and_time(line: &str) -> Result<(IpAddr, u64, &str), String> {
    let (client, rest) = token(line).ok_or("empty line")?;
    let client: IpAddr = client
        .parse()
        .map_err(|_| format!("client {client:?} is not an address"))?;
    let (_ident, rest) = token(rest).ok_or("no ident field")?;
    let open = rest.find('[').ok_or("no [time]")?;
    let close = rest[open..].find(']').ok_or("no [time]")? + open;
    let time_ns = parse_clf(&rest[open + 1..close])
        .ok_or("the time is not like 01/Mar/2025:12:00:00 +0000")?;
    Ok((client, time_ns, &rest[close + 1..]))
}

/// One line of the combined or common log format.
pub fn parse_line(line: &str, forwarded_for: bool) -> Result<Request, String> {
    let (client, time_ns, rest) = client_and_time(line)?;
    let (request, rest) = quoted(rest).ok_or("no quoted request line")?;
    let (status, rest) = token(rest).ok_or("no status")?;
    let status: u16 = status
        .parse()
        .map_err(|_| format!("status {status:?} is not a number"))?;
    let (bytes, rest) = token(rest).ok_or("no bytes field")?;
    let bytes: u64 = if bytes == "-" {
        0
    } else {
        bytes
            .parse()
            .map_err(|_| format!("bytes {bytes:?} is not a number"))?
    };
    let (method, target) = split_request(&request);
    // Combined: referer and user agent; then any extra quoted fields.
    let mut extra = Vec::new();
    let mut rest = rest;
    while let Some((field, r)) = quoted(rest) {
        extra.push(field);
        rest = r;
    }
    let user_agent = extra.get(1).cloned().and_then(dash);
    let forwarded = if forwarded_for {
        extra
            .get(2)
            .map(|x| forwarded_addresses(x))
            .unwrap_or_default()
    } else {
        Vec::new()
    };
    Ok(Request {
        time_ns,
        client,
        forwarded_for: forwarded,
        method,
        target,
        status: Some(status),
        bytes,
        user_agent,
        position: Position::default(),
    })
}

fn text_of(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// One JSON access-log line.
pub fn parse_json(line: &str, fields: &JsonFields, forwarded_for: bool) -> Result<Request, String> {
    let v: Value = serde_json::from_str(line).map_err(|e| format!("not JSON ({e})"))?;
    let get = |name: &str| v.get(name).and_then(text_of).and_then(dash);
    let client_text = get(&fields.client).ok_or_else(|| format!("no {}", fields.client))?;
    let client: IpAddr = client_text
        .parse()
        .map_err(|_| format!("{} {client_text:?} is not an address", fields.client))?;
    let time_text = get(&fields.time).ok_or_else(|| format!("no {}", fields.time))?;
    let time_ns = parse_iso(&time_text)
        .or_else(|| parse_clf(&time_text))
        .or_else(|| parse_epoch(&time_text))
        .ok_or_else(|| format!("{} {time_text:?} is not a time", fields.time))?;
    let (mut method, mut target) = (get(&fields.method), get(&fields.target));
    if method.is_none()
        && target.is_none()
        && let Some(r) = get(&fields.request)
    {
        (method, target) = split_request(&r);
    }
    Ok(Request {
        time_ns,
        client,
        forwarded_for: if forwarded_for {
            get(&fields.forwarded_for)
                .map(|x| forwarded_addresses(&x))
                .unwrap_or_default()
        } else {
            Vec::new()
        },
        method,
        target,
        status: get(&fields.status).and_then(|s| s.parse().ok()),
        bytes: get(&fields.bytes).and_then(|s| s.parse().ok()).unwrap_or(0),
        user_agent: get(&fields.user_agent),
        position: Position::default(),
    })
}

/// Reads an access log (`json`: JSON lines with `fields`).
pub fn read(
    reader: impl BufRead,
    json: Option<&JsonFields>,
    forwarded_for: bool,
    out: &mut dyn Records,
    progress: &mut dyn FnMut(u64),
) -> std::io::Result<()> {
    records_by_line(reader, out, progress, |line, out| {
        let p = match json {
            Some(fields) => parse_json(line.text, fields, forwarded_for)?,
            // The fast path: a client the history never held (and no
            // forwarded chain to read) needs only its time; the rest of
            // the line is not parsed.
            None if !forwarded_for => match client_and_time(line.text) {
                Ok((client, time_ns, _)) if !out.may_match(client) => Request {
                    time_ns,
                    client,
                    forwarded_for: Vec::new(),
                    method: None,
                    target: None,
                    status: None,
                    bytes: 0,
                    user_agent: None,
                    position: Position::default(),
                },
                _ => parse_line(line.text, false)?,
            },
            None => parse_line(line.text, true)?,
        };
        out.request(Request {
            position: Position {
                offset: line.offset,
                record: line.number,
            },
            ..p
        });
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn combined_common_and_forwarded() {
        let p = parse_line(
            r#"203.0.113.9 - alice [01/Mar/2025:12:00:00 +0000] "GET /a?b=\"c\" HTTP/1.1" 200 612 "-" "curl/8.5" "198.51.100.7, 192.0.2.1""#,
            true,
        )
        .unwrap();
        assert_eq!(p.client, "203.0.113.9".parse::<IpAddr>().unwrap());
        assert_eq!(p.method.as_deref(), Some("GET"));
        assert_eq!(p.target.as_deref(), Some("/a?b=\"c\""));
        assert_eq!(p.status, Some(200));
        assert_eq!(p.bytes, 612);
        assert_eq!(p.user_agent.as_deref(), Some("curl/8.5"));
        assert_eq!(p.forwarded_for.len(), 2);
        let common = parse_line(
            r#"::1 - - [01/Mar/2025:12:00:00 +0000] "POST /x HTTP/1.0" 404 -"#,
            true,
        )
        .unwrap();
        assert_eq!(common.bytes, 0);
        assert_eq!(common.user_agent, None);
        assert!(common.forwarded_for.is_empty());
        assert!(
            parse_line(
                "host.example - - [01/Mar/2025:12:00:00 +0000] \"GET / HTTP/1.1\" 200 1",
                false
            )
            .unwrap_err()
            .contains("not an address")
        );
        assert!(parse_line("192.0.2.1 - - [yesterday] \"GET / HTTP/1.1\" 200 1", false).is_err());
        assert_eq!(
            forwarded_addresses("[2001:db8::1]:443, 192.0.2.1:8080, unknown, 198.51.100.1"),
            vec![
                "2001:db8::1".parse::<IpAddr>().unwrap(),
                "192.0.2.1".parse().unwrap(),
                "198.51.100.1".parse().unwrap()
            ]
        );
    }

    #[test]
    fn json_with_configured_names() {
        let fields = JsonFields {
            client: "ip".into(),
            time: "ts".into(),
            ..JsonFields::default()
        };
        let p = parse_json(
            r#"{"ip":"192.0.2.7","ts":1740830400,"request":"GET /y HTTP/2.0","status":"301","body_bytes_sent":"10","http_x_forwarded_for":"198.51.100.2"}"#,
            &fields,
            true,
        )
        .unwrap();
        assert_eq!(p.time_ns, 1_740_830_400 * 1_000_000_000);
        assert_eq!(p.target.as_deref(), Some("/y"));
        assert_eq!(p.status, Some(301));
        assert_eq!(
            p.forwarded_for,
            vec!["198.51.100.2".parse::<IpAddr>().unwrap()]
        );
        assert!(parse_json(r#"{"remote_addr":"x"}"#, &JsonFields::default(), false).is_err());
    }
}
