//! The summary at the end of a hunt: per internal host and Tor peer, what
//! went each way, how many flows and requests (substantial or not), when,
//! and in which roles. As a table for people, JSON or CSV for tools.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::IpAddr;

use serde::Serialize;

use super::hunter::{Finding, FindingKind, HuntStats, time_of};
use crate::time::rfc3339_secs;

/// `--format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
    Csv,
}

/// One row: an internal host (or web log) and a Tor address.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Row {
    /// The inside address, or `web:<log file>` for access logs.
    pub internal: String,
    pub tor: IpAddr,
    /// `exit`, `relay` (OR address on an ORPort), `relay-address` (a
    /// relay's address on another port: never alerted).
    pub roles: BTreeSet<String>,
    pub direction: BTreeSet<String>,
    pub bytes_to_tor: u64,
    pub bytes_from_tor: u64,
    pub flows: u64,
    pub requests: u64,
    /// Flows or request groups above the thresholds.
    pub substantial: u64,
    pub alerts: u64,
    pub first: String,
    pub last: String,
    #[serde(skip)]
    first_ns: u64,
    #[serde(skip)]
    last_ns: u64,
}

/// The whole summary.
#[derive(Debug, Default, Serialize)]
pub struct Summary {
    pub rows: Vec<Row>,
    pub stats: HuntStats,
    /// Records per input: `(path, kind, records, bad)`.
    pub inputs: Vec<InputSummary>,
}

#[derive(Debug, Clone, Serialize)]
pub struct InputSummary {
    pub path: String,
    pub kind: String,
    pub bytes: u64,
    pub bad_records: u64,
    /// Why the rest of the input was skipped, if it was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Sums findings into rows.
#[derive(Default)]
pub struct Tally {
    rows: BTreeMap<(String, IpAddr), Row>,
}

impl Tally {
    /// Adds a finding; `alerted` if an alert was raised for it; `web` is
    /// the name of the log for access-log findings.
    pub fn add(&mut self, f: &Finding, alerted: bool, web: &str) {
        let internal = match f.internal {
            Some(a) => a.ip().to_string(),
            None => format!("web:{web}"),
        };
        let row = self
            .rows
            .entry((internal.clone(), f.tor.ip))
            .or_insert_with(|| Row {
                internal,
                tor: f.tor.ip,
                roles: BTreeSet::new(),
                direction: BTreeSet::new(),
                bytes_to_tor: 0,
                bytes_from_tor: 0,
                flows: 0,
                requests: 0,
                substantial: 0,
                alerts: 0,
                first: String::new(),
                last: String::new(),
                first_ns: u64::MAX,
                last_ns: 0,
            });
        if f.tor.roles.is_empty() {
            row.roles.insert("relay-address".into());
        }
        for r in &f.tor.roles {
            row.roles.insert(r.as_str().into());
        }
        row.direction.insert(f.direction.as_str().into());
        let (to, from) = f.bytes_to_from_tor();
        row.bytes_to_tor += to;
        row.bytes_from_tor += from;
        match &f.kind {
            FindingKind::Flow(_) => row.flows += 1,
            FindingKind::Requests { count, .. } => row.requests += count,
        }
        row.substantial += u64::from(f.substantial);
        row.alerts += u64::from(alerted);
        row.first_ns = row.first_ns.min(f.start_ns());
        row.last_ns = row.last_ns.max(f.end_ns());
    }

    pub fn finish(self, stats: HuntStats, inputs: Vec<InputSummary>) -> Summary {
        let mut rows: Vec<Row> = self
            .rows
            .into_values()
            .map(|mut r| {
                r.first = rfc3339_secs(time_of(r.first_ns));
                r.last = rfc3339_secs(time_of(r.last_ns));
                r
            })
            .collect();
        rows.sort_by(|a, b| {
            (b.bytes_to_tor + b.bytes_from_tor, b.requests)
                .cmp(&(a.bytes_to_tor + a.bytes_from_tor, a.requests))
                .then_with(|| (&a.internal, a.tor).cmp(&(&b.internal, b.tor)))
        });
        Summary {
            rows,
            stats,
            inputs,
        }
    }
}

fn join(set: &BTreeSet<String>) -> String {
    set.iter().cloned().collect::<Vec<_>>().join("+")
}

fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

impl Summary {
    pub fn render(&self, format: Format) -> String {
        match format {
            Format::Json => serde_json::to_string_pretty(self).expect("serializable") + "\n",
            Format::Csv => {
                let mut out = String::from(
                    "internal,tor,roles,direction,bytes_to_tor,bytes_from_tor,flows,requests,substantial,alerts,first,last\n",
                );
                for r in &self.rows {
                    let _ = writeln!(
                        out,
                        "{},{},{},{},{},{},{},{},{},{},{},{}",
                        csv_field(&r.internal),
                        r.tor,
                        join(&r.roles),
                        join(&r.direction),
                        r.bytes_to_tor,
                        r.bytes_from_tor,
                        r.flows,
                        r.requests,
                        r.substantial,
                        r.alerts,
                        r.first,
                        r.last
                    );
                }
                out
            }
            Format::Table => {
                let header = [
                    "INTERNAL", "TOR PEER", "ROLES", "DIR", "TO TOR", "FROM TOR", "FLOWS", "REQS",
                    "SUBST", "ALERTS", "FIRST", "LAST",
                ];
                let mut cells: Vec<[String; 12]> = vec![header.map(str::to_owned)];
                for r in &self.rows {
                    cells.push([
                        r.internal.clone(),
                        r.tor.to_string(),
                        join(&r.roles),
                        join(&r.direction),
                        human_bytes(r.bytes_to_tor),
                        human_bytes(r.bytes_from_tor),
                        r.flows.to_string(),
                        r.requests.to_string(),
                        r.substantial.to_string(),
                        r.alerts.to_string(),
                        r.first.clone(),
                        r.last.clone(),
                    ]);
                }
                let mut widths = [0usize; 12];
                for row in &cells {
                    for (w, c) in widths.iter_mut().zip(row) {
                        *w = (*w).max(c.chars().count());
                    }
                }
                let mut out = String::new();
                for row in &cells {
                    let line: Vec<String> = row
                        .iter()
                        .zip(widths)
                        .map(|(c, w)| format!("{c:<w$}"))
                        .collect();
                    let _ = writeln!(out, "{}", line.join("  ").trim_end());
                }
                let s = &self.stats;
                let _ = writeln!(
                    out,
                    "\n{} flows ({} with a Tor address at the time), {} requests ({} from one), {} outside the time range, {} bad records",
                    s.flows,
                    s.matched_flows,
                    s.requests,
                    s.matched_requests,
                    s.outside_time,
                    s.bad_records
                );
                out
            }
        }
    }
}
