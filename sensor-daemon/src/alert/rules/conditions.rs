//! What a rule or an exception requires of a hit (`when = { ... }`), and
//! how it is checked against the typed [`Alert`]: every key given must
//! hold; a list holds when any of its entries does.
//!
//! `event` selects the signal (`connection`, `exec`, `listen`). A rule
//! that does not give it applies to connections only (every rule written
//! before the other signals existed keeps its meaning); an exception
//! without it applies to whatever its rule does. Conditions about a peer
//! (`peer`, `peer_port`, `direction`, `role`, `confidence`, `feed`) do not
//! hold for an alert without one (a program start, a listener);
//! `local_port` is a listener's port. A DNS query's peer is its server
//! (direction egress); `dns_category` and `dns_name` hold only for DNS
//! queries.

use std::net::IpAddr;

use globset::{Glob, GlobMatcher};
use ipnet::IpNet;
use regex::Regex;
use serde::Deserialize;

use crate::alert::model::{Alert, Confidence, Signal};
use crate::feed::Role;
use crate::net::{Direction, canonical_ip};

/// The role a rule asks for.
#[derive(Debug, Clone, Copy, Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RuleRole {
    Exit,
    Relay,
    Socks,
}

/// `when = { ... }` as written.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RawWhen {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event: Option<Signal>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub direction: Option<Direction>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<RuleRole>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub confidence: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub feed: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local_port: Option<Vec<u16>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_port: Option<Vec<u16>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub executable: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command_line: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command_line_regex: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_id: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_namespace: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<Vec<String>>,
    /// A DNS query's category in the names file (`onion`, `tor-project`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns_category: Option<Vec<String>>,
    /// A DNS query's name (globs: `*.torproject.org`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns_name: Option<Vec<String>>,
}

/// Compiled conditions (globs, prefixes and the regex built once).
#[derive(Debug, Clone, Default)]
pub struct When {
    pub raw: RawWhen,
    /// A rule's `when` without `event`: connections only.
    connections_only: bool,
    confidence: Option<Confidence>,
    peer: Vec<IpNet>,
    process: Vec<GlobMatcher>,
    executable: Vec<GlobMatcher>,
    command_line_regex: Option<Regex>,
    parent: Vec<GlobMatcher>,
    pod_namespace: Vec<GlobMatcher>,
    pod_name: Vec<GlobMatcher>,
    dns_name: Vec<GlobMatcher>,
}

fn globs(key: &str, list: &Option<Vec<String>>) -> Result<Vec<GlobMatcher>, String> {
    list.iter()
        .flatten()
        .map(|p| {
            Glob::new(p)
                .map(|g| g.compile_matcher())
                .map_err(|e| format!("{key}: {p:?} is not a glob ({e})"))
        })
        .collect()
}

impl When {
    /// Checks and compiles; the error names the key and the bad value.
    pub fn compile(raw: RawWhen) -> Result<When, String> {
        let lists: [(&str, Option<usize>); 15] = [
            ("feed", raw.feed.as_ref().map(Vec::len)),
            ("peer", raw.peer.as_ref().map(Vec::len)),
            ("local_port", raw.local_port.as_ref().map(Vec::len)),
            ("peer_port", raw.peer_port.as_ref().map(Vec::len)),
            ("process", raw.process.as_ref().map(Vec::len)),
            ("executable", raw.executable.as_ref().map(Vec::len)),
            ("command_line", raw.command_line.as_ref().map(Vec::len)),
            ("parent", raw.parent.as_ref().map(Vec::len)),
            ("user", raw.user.as_ref().map(Vec::len)),
            ("container_id", raw.container_id.as_ref().map(Vec::len)),
            ("pod_namespace", raw.pod_namespace.as_ref().map(Vec::len)),
            ("pod_name", raw.pod_name.as_ref().map(Vec::len)),
            ("cgroup", raw.cgroup.as_ref().map(Vec::len)),
            ("dns_category", raw.dns_category.as_ref().map(Vec::len)),
            ("dns_name", raw.dns_name.as_ref().map(Vec::len)),
        ];
        if let Some((key, _)) = lists.iter().find(|(_, n)| *n == Some(0)) {
            return Err(format!(
                "{key}: an empty list matches nothing; leave the key out"
            ));
        }
        let confidence = match raw.confidence.as_deref() {
            None => None,
            Some("high") => Some(Confidence::High),
            Some("medium") => Some(Confidence::Medium),
            Some(other) => {
                return Err(format!("confidence: {other:?} is not high or medium"));
            }
        };
        let peer = raw
            .peer
            .iter()
            .flatten()
            .map(|p| {
                crate::net::parse_entry(p)
                    .map_err(|e| format!("peer: {p:?} is not an address or prefix ({e})"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(id) = raw
            .container_id
            .iter()
            .flatten()
            .find(|id| id.len() < 12 || !id.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Err(format!(
                "container_id: {id:?} is not a container id (at least its first 12 hex digits)"
            ));
        }
        let command_line_regex = raw
            .command_line_regex
            .as_deref()
            .map(|r| Regex::new(r).map_err(|e| format!("command_line_regex: {e}")))
            .transpose()?;
        Ok(When {
            connections_only: false,
            confidence,
            peer,
            process: globs("process", &raw.process)?,
            executable: globs("executable", &raw.executable)?,
            command_line_regex,
            parent: globs("parent", &raw.parent)?,
            pod_namespace: globs("pod_namespace", &raw.pod_namespace)?,
            pod_name: globs("pod_name", &raw.pod_name)?,
            dns_name: globs("dns_name", &raw.dns_name)?,
            raw,
        })
    }

    /// A rule's conditions: without `event`, the rule is about
    /// connections (see the module documentation).
    pub fn compile_rule(raw: RawWhen) -> Result<When, String> {
        let mut when = Self::compile(raw)?;
        when.connections_only = when.raw.event.is_none();
        Ok(when)
    }

    /// The signal these conditions select, if they select one.
    pub fn event(&self) -> Option<Signal> {
        match self.raw.event {
            Some(e) => Some(e),
            None if self.connections_only => Some(Signal::Connection),
            None => None,
        }
    }

    /// No condition at all (matches every hit).
    pub fn is_empty(&self) -> bool {
        self.raw == RawWhen::default()
    }

    /// Whether the alert satisfies every condition given. Stops at the
    /// first that does not hold (this runs for every rule on every hit).
    pub fn matches(&self, a: &Alert) -> bool {
        let mut all = true;
        self.visit(a, &mut |_, held| {
            all &= held;
            held
        });
        all
    }

    /// Each condition given, and whether it holds for the alert (what
    /// `torsensor rules test` prints).
    pub fn checks(&self, a: &Alert) -> Vec<(&'static str, bool)> {
        let mut out = Vec::new();
        self.visit(a, &mut |key, held| {
            out.push((key, held));
            true
        });
        out
    }

    /// Evaluates the conditions given, in order, and hands each result to
    /// `seen`, until it returns false; the rest are not evaluated.
    fn visit(&self, a: &Alert, seen: &mut dyn FnMut(&'static str, bool) -> bool) {
        let r = &self.raw;
        let signal = a.signal();
        if self.connections_only && signal != Signal::Connection {
            // Shown by `rules test` only when it decides.
            seen("event (connection unless given)", false);
            return;
        }
        let direction = a.direction();
        let (local, peer) = (a.local(), a.peer());
        let tor = a.torsensor.tor.as_ref();
        let process = a.process.as_ref();
        let any_glob = |globs: &[GlobMatcher], value: Option<&str>| {
            value.is_some_and(|v| globs.iter().any(|g| g.is_match(v)))
        };
        let peer_ip: Option<IpAddr> = peer.map(|p| canonical_ip(p.ip));
        let command_line = process.and_then(|p| p.command_line.as_deref());
        let mut go = true;
        let mut check = |key: &'static str, given: bool, held: &dyn Fn() -> bool| {
            if go && given {
                go = seen(key, held());
            }
        };
        check("event", r.event.is_some(), &|| r.event == Some(signal));
        check("direction", r.direction.is_some(), &|| {
            direction.is_some() && r.direction == direction
        });
        check("role", r.role.is_some(), &|| {
            let want = match r.role {
                Some(RuleRole::Exit) => Role::Exit,
                Some(RuleRole::Socks) => Role::Socks,
                _ => Role::Relay,
            };
            tor.is_some_and(|t| t.roles.contains(&want))
        });
        check("confidence", self.confidence.is_some(), &|| {
            tor.is_some_and(|t| Some(t.confidence) == self.confidence)
        });
        check("feed", r.feed.is_some(), &|| {
            let feeds = r.feed.as_deref().unwrap_or_default();
            a.torsensor.matches.iter().any(|m| feeds.contains(&m.name))
        });
        check("peer", !self.peer.is_empty(), &|| {
            peer_ip.is_some_and(|ip| self.peer.iter().any(|n| n.contains(&ip)))
        });
        check("local_port", r.local_port.is_some(), &|| {
            let ports = r.local_port.as_deref().unwrap_or_default();
            local.is_some_and(|l| ports.contains(&l.port))
        });
        check("peer_port", r.peer_port.is_some(), &|| {
            let ports = r.peer_port.as_deref().unwrap_or_default();
            peer.is_some_and(|p| ports.contains(&p.port))
        });
        check("process", !self.process.is_empty(), &|| {
            any_glob(&self.process, process.map(|p| p.name.as_str()))
        });
        check("executable", !self.executable.is_empty(), &|| {
            any_glob(
                &self.executable,
                process.and_then(|p| p.executable.as_deref()),
            )
        });
        check("command_line", r.command_line.is_some(), &|| {
            let subs = r.command_line.as_deref().unwrap_or_default();
            command_line.is_some_and(|l| subs.iter().any(|s| l.contains(s.as_str())))
        });
        check(
            "command_line_regex",
            self.command_line_regex.is_some(),
            &|| {
                let re = self.command_line_regex.as_ref();
                command_line.is_some_and(|l| re.is_some_and(|re| re.is_match(l)))
            },
        );
        check("parent", !self.parent.is_empty(), &|| {
            let name = process
                .and_then(|p| p.parent.as_ref())
                .and_then(|pp| pp.name.as_deref());
            any_glob(&self.parent, name)
        });
        check("user", r.user.is_some(), &|| {
            let users = r.user.as_deref().unwrap_or_default();
            a.user.as_ref().is_some_and(|u| {
                users.iter().any(|want| {
                    *want == u.id.to_string() || u.name.as_deref() == Some(want.as_str())
                })
            })
        });
        check("container_id", r.container_id.is_some(), &|| {
            let ids = r.container_id.as_deref().unwrap_or_default();
            a.container
                .as_ref()
                .is_some_and(|c| ids.iter().any(|id| c.id.starts_with(id.as_str())))
        });
        check("pod_namespace", !self.pod_namespace.is_empty(), &|| {
            let ns = a.orchestrator.as_ref().and_then(|o| o.namespace.as_deref());
            any_glob(&self.pod_namespace, ns)
        });
        check("pod_name", !self.pod_name.is_empty(), &|| {
            let name = a
                .orchestrator
                .as_ref()
                .and_then(|o| o.resource.name.as_deref());
            any_glob(&self.pod_name, name)
        });
        check("cgroup", r.cgroup.is_some(), &|| {
            let prefixes = r.cgroup.as_deref().unwrap_or_default();
            let path = a
                .torsensor
                .container
                .as_ref()
                .map(|c| c.cgroup_path.as_str())
                .or(a.torsensor.cgroup_path.as_deref());
            path.is_some_and(|p| prefixes.iter().any(|pre| p.starts_with(pre.as_str())))
        });
        let dns = a.torsensor.dns.as_ref();
        check("dns_category", r.dns_category.is_some(), &|| {
            let cats = r.dns_category.as_deref().unwrap_or_default();
            dns.is_some_and(|d| cats.contains(&d.category))
        });
        check("dns_name", !self.dns_name.is_empty(), &|| {
            let name = a.dns.as_ref().map(|d| d.question.name.as_str());
            any_glob(&self.dns_name, name)
        });
    }
}
