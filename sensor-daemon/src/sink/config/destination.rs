//! Where an output writes: [`Destination`], parsed from `to` (the syntax
//! is in the `config` module docs), with its checks of addresses and URLs
//! (no credentials, no token in the query, no clear-text HTTP off loopback
//! unless allowed), and the sink name derived from it.
//!
//! Parsing only, no I/O; may use the rest of `config` and nothing else of
//! the daemon.

use std::net::IpAddr;
use std::path::PathBuf;

use super::{OutputConfig, SinkError};

/// Which HTTP protocol an HTTP sink speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpKind {
    /// Generic JSON lines (`application/x-ndjson`), `Authorization: Bearer`.
    Lines,
    /// Splunk HTTP Event Collector, `Authorization: Splunk`.
    Hec,
    /// Elasticsearch `_bulk`, `Authorization: ApiKey`.
    Bulk,
}

/// Where an output writes, parsed from `to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    Stdout,
    File(PathBuf),
    SyslogUdp(String),
    SyslogTcp(String),
    SyslogUnix(PathBuf),
    Http {
        kind: HttpKind,
        /// The URL requests go to (for `_bulk`: `<base>/_bulk`).
        url: reqwest::Url,
        /// `_bulk` only: the index from the URL path.
        index: Option<String>,
    },
}

impl Destination {
    /// Remote destinations get an on-disk spool; local ones drop when full.
    pub fn is_remote(&self) -> bool {
        !matches!(self, Destination::Stdout | Destination::File(_))
    }

    /// Short kind name for stats and logs.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Destination::Stdout => "stdout",
            Destination::File(_) => "file",
            Destination::SyslogUdp(_) => "syslog-udp",
            Destination::SyslogTcp(_) => "syslog-tcp",
            Destination::SyslogUnix(_) => "syslog-unix",
            Destination::Http { kind, .. } => match kind {
                HttpKind::Lines => "http",
                HttpKind::Hec => "hec",
                HttpKind::Bulk => "bulk",
            },
        }
    }
}

impl OutputConfig {
    /// Parses `to` (no I/O).
    pub fn destination(&self) -> Result<Destination, SinkError> {
        let to = self.to.trim();
        if to == "stdout" || to == "-" {
            return Ok(Destination::Stdout);
        }
        if let Some(path) = to.strip_prefix("file:") {
            return self.file(path);
        }
        let Some((scheme, rest)) = to.split_once("://") else {
            return Err(self.err(
                "to",
                "unknown destination; use stdout, file:PATH, syslog+udp://HOST:PORT, syslog+tcp://HOST:PORT, syslog:///dev/log, http(s)://..., hec+https://... or bulk+https://.../INDEX",
            ));
        };
        match scheme {
            "syslog" => {
                if !rest.starts_with('/') {
                    return Err(self.err("to", "syslog:// takes a unix socket path (syslog:///dev/log); use syslog+udp:// or syslog+tcp:// for the network"));
                }
                Ok(Destination::SyslogUnix(PathBuf::from(rest)))
            }
            "syslog+udp" | "syslog+tcp" => self.syslog_net(scheme, rest),
            "http" | "https" | "hec+http" | "hec+https" | "bulk+http" | "bulk+https" => {
                self.http(scheme, rest)
            }
            other => Err(self.err("to", format!("unknown scheme {other:?}; use syslog+udp, syslog+tcp, syslog, http, https, hec+https or bulk+https"))),
        }
    }

    /// `file:PATH` (`path`: after `file:`).
    fn file(&self, path: &str) -> Result<Destination, SinkError> {
        let path = path.strip_prefix("//").unwrap_or(path);
        if path.is_empty() || !path.starts_with('/') {
            return Err(self.err(
                "to",
                "file: needs an absolute path, e.g. file:/var/log/torsensor/alerts.json",
            ));
        }
        Ok(Destination::File(PathBuf::from(path)))
    }

    /// `syslog+udp://HOST:PORT` and `syslog+tcp://HOST:PORT`.
    fn syslog_net(&self, scheme: &str, rest: &str) -> Result<Destination, SinkError> {
        let hostport = rest.trim_end_matches('/');
        if hostport.contains('@') {
            return Err(self.err("to", "credentials are not accepted in the address"));
        }
        let Some((host, port)) = hostport.rsplit_once(':') else {
            return Err(self.err(
                "to",
                "syslog address needs HOST:PORT, e.g. syslog+tcp://127.0.0.1:601",
            ));
        };
        if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
            return Err(self.err(
                "to",
                format!("bad syslog address {hostport:?}: needs HOST:PORT"),
            ));
        }
        if scheme == "syslog+udp" {
            Ok(Destination::SyslogUdp(hostport.to_owned()))
        } else {
            Ok(Destination::SyslogTcp(hostport.to_owned()))
        }
    }

    /// `http(s)://`, `hec+http(s)://` and `bulk+http(s)://`.
    fn http(&self, scheme: &str, rest: &str) -> Result<Destination, SinkError> {
        let (kind, http_scheme) = match scheme.split_once('+') {
            Some(("hec", s)) => (HttpKind::Hec, s),
            Some(("bulk", s)) => (HttpKind::Bulk, s),
            _ => (HttpKind::Lines, scheme),
        };
        let mut url = reqwest::Url::parse(&format!("{http_scheme}://{rest}"))
            .map_err(|e| self.err("to", format!("bad URL: {e}")))?;
        if !url.username().is_empty() || url.password().is_some() {
            return Err(self.err(
                "to",
                "credentials in the URL are not accepted; use token_file or token_env",
            ));
        }
        if url.query_pairs().any(|(k, _)| {
            let k = k.to_ascii_lowercase();
            k.contains("token") || k.contains("key") || k.contains("password") || k.contains("auth")
        }) {
            return Err(self.err(
                "to",
                "a token in the URL query is not accepted; use token_file or token_env",
            ));
        }
        let Some(host) = url.host_str().map(str::to_owned) else {
            return Err(self.err("to", "URL has no host"));
        };
        if http_scheme == "http" && !self.allow_insecure_http && !is_loopback_host(&host) {
            return Err(self.err("to", format!("http:// to {host} sends alerts and credentials in clear text; use https:// or set allow_insecure_http = true")));
        }
        let mut index = None;
        match kind {
            HttpKind::Lines => {}
            HttpKind::Hec => {
                if url.path() == "/" || url.path().is_empty() {
                    url.set_path("/services/collector/event");
                }
            }
            HttpKind::Bulk => index = Some(self.bulk_index(&mut url)?),
        }
        Ok(Destination::Http { kind, url, index })
    }

    /// The index of a `_bulk` URL (its last path segment); the URL is
    /// changed to the `_bulk` endpoint beside it.
    fn bulk_index(&self, url: &mut reqwest::Url) -> Result<String, SinkError> {
        let path = url.path().trim_matches('/').to_owned();
        let (base, idx) = match path.rsplit_once('/') {
            Some((b, i)) => (format!("/{b}"), i.to_owned()),
            None => (String::new(), path),
        };
        if idx.is_empty() || idx == "_bulk" {
            return Err(self.err("to", "bulk+https:// needs the index as the last path segment, e.g. bulk+https://es:9200/torsensor-alerts"));
        }
        if idx.starts_with(['_', '-', '+'])
            || idx
                .chars()
                .any(|c| c.is_ascii_uppercase() || "\\/*?\"<>| ,#:".contains(c))
        {
            return Err(self.err("to", format!("{idx:?} is not a valid Elasticsearch index name (lowercase, no leading _ - +, none of \\/*?\"<>| ,#:)")));
        }
        url.set_path(&format!("{base}/_bulk"));
        Ok(idx)
    }

    /// The sink's name: `name`, or one derived from `to`.
    pub fn sink_name(&self) -> String {
        if let Some(n) = &self.name {
            return n.clone();
        }
        let derived = match self.destination() {
            Ok(Destination::Stdout) => "stdout".to_owned(),
            Ok(Destination::File(p)) => format!("file-{}", p.display()),
            Ok(Destination::SyslogUnix(p)) => format!("syslog-unix-{}", p.display()),
            Ok(d @ (Destination::SyslogUdp(_) | Destination::SyslogTcp(_))) => {
                let (Destination::SyslogUdp(a) | Destination::SyslogTcp(a)) = &d else {
                    unreachable!()
                };
                format!("{}-{a}", d.kind_name())
            }
            Ok(d @ Destination::Http { .. }) => {
                let Destination::Http { url, index, .. } = &d else {
                    unreachable!()
                };
                let mut s = format!(
                    "{}-{}-{}",
                    d.kind_name(),
                    url.host_str().unwrap_or(""),
                    url.port_or_known_default().unwrap_or(0)
                );
                if let Some(i) = index {
                    s.push('-');
                    s.push_str(i);
                }
                s
            }
            Err(_) => self.to.clone(),
        };
        let mut out: String = derived
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "._-".contains(c) {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        while out.contains("--") {
            out = out.replace("--", "-");
        }
        out = out.trim_matches(['-', '.']).to_owned();
        out.truncate(64);
        if out.is_empty() {
            "output".to_owned()
        } else {
            out
        }
    }
}

fn is_loopback_host(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h.eq_ignore_ascii_case("localhost") || h.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}
