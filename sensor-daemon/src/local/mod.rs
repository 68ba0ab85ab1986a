//! Local signs of Tor (issue 15): Tor use that no list of the network
//! shows. A Tor client or pluggable transport starting (rule
//! TORSENSOR-005), a process listening on a Tor SOCKS or control port
//! (TORSENSOR-006).
//!
//! What is watched is data, `rules/tor-local.toml` (compiled in), plus
//! the configuration's `tor_listen_ports`: [`LocalWatch`]. The kernel gets
//! the command names (15 bytes, as `comm` holds them), the environment
//! prefix and the ports; the daemon confirms a name hit against the whole
//! name ([`LocalWatch::program`]) and reads the `TOR_PT_*` bindings from
//! `/proc/PID/environ` ([`environ`]).
//!
//! Depends on nothing else of the daemon; the kernel loader, the pipeline
//! and the alert builders use it.

pub mod environ;

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

/// The shipped watch list.
pub const SHIPPED: &str = include_str!("../../../rules/tor-local.toml");
/// The longest command name the kernel keeps (`TASK_COMM_LEN - 1`).
pub const COMM_MAX: usize = sensor_common::COMM_LEN - 1;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LocalError {
    #[error("rules/tor-local.toml: {0}")]
    Parse(String),
    #[error("rules/tor-local.toml: environment_prefix {0:?} must be 1 to 7 bytes without NUL")]
    Prefix(String),
    #[error("rules/tor-local.toml: program name {0:?} must be a file name (no '/', not empty)")]
    Name(String),
}

/// A watched program.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Program {
    pub name: String,
    /// Only when the executable lies in a directory of this name.
    #[serde(default)]
    pub directory: Option<String>,
    pub what: String,
}

/// A watched listening port.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Port {
    pub port: u16,
    pub what: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    environment_prefix: Option<String>,
    #[serde(default)]
    program: Vec<Program>,
    #[serde(default)]
    port: Vec<Port>,
}

/// What the local-signal programs watch.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LocalWatch {
    pub programs: Vec<Program>,
    /// `None`: no environment scan.
    pub environment_prefix: Option<String>,
    /// Port -> what it is.
    pub ports: BTreeMap<u16, String>,
}

impl LocalWatch {
    /// Parses a watch list (the shipped file's format).
    pub fn parse(text: &str) -> Result<Self, LocalError> {
        let file: File = toml::from_str(text).map_err(|e| LocalError::Parse(e.to_string()))?;
        if let Some(p) = &file.environment_prefix
            && sensor_common::exec::env_pattern(p.as_bytes()).is_none()
        {
            return Err(LocalError::Prefix(p.clone()));
        }
        if let Some(p) = file
            .program
            .iter()
            .find(|p| p.name.is_empty() || p.name.contains('/') || p.name.contains('\0'))
        {
            return Err(LocalError::Name(p.name.clone()));
        }
        Ok(LocalWatch {
            programs: file.program,
            environment_prefix: file.environment_prefix,
            ports: file.port.into_iter().map(|p| (p.port, p.what)).collect(),
        })
    }

    /// `rules/tor-local.toml` as compiled in (tested to parse).
    pub fn shipped() -> Self {
        Self::parse(SHIPPED).expect("the shipped rules/tor-local.toml parses (tested)")
    }

    /// Adds configured ports (`tor_listen_ports`).
    pub fn with_listen_ports(mut self, ports: &[u16]) -> Self {
        for p in ports {
            self.ports.entry(*p).or_insert_with(|| "configured".into());
        }
        self
    }

    /// Turns the environment scan off (`exec_environment_scan = false`).
    pub fn with_environment_scan(mut self, on: bool) -> Self {
        if !on {
            self.environment_prefix = None;
        }
        self
    }

    /// The command names for the kernel's `EXEC_NAMES`: each name's first
    /// 15 bytes, NUL-padded, without repeats.
    pub fn comm_keys(&self) -> Vec<[u8; sensor_common::COMM_LEN]> {
        let mut keys: Vec<[u8; sensor_common::COMM_LEN]> = self
            .programs
            .iter()
            .map(|p| {
                let mut key = [0u8; sensor_common::COMM_LEN];
                let bytes = p.name.as_bytes();
                let n = bytes.len().min(COMM_MAX);
                key[..n].copy_from_slice(&bytes[..n]);
                key
            })
            .collect();
        keys.sort();
        keys.dedup();
        keys
    }

    /// The kernel's `ENV_PATTERN` (pattern, mask); (0, 0) turns the scan off.
    pub fn env_pattern(&self) -> [u64; 2] {
        self.environment_prefix
            .as_deref()
            .and_then(|p| sensor_common::exec::env_pattern(p.as_bytes()))
            .map_or([0, 0], |(p, m)| [p, m])
    }

    /// The watched program a start is, judged by its whole name: the file
    /// name of its executable, of its argv[0], or (when neither is known)
    /// its command name, which must then be a watched name or the first
    /// 15 bytes of one. A program with a `directory` must also have its
    /// executable in a directory of that name.
    pub fn program(
        &self,
        comm: &str,
        executable: Option<&str>,
        argv0: Option<&str>,
    ) -> Option<&Program> {
        let file_name = |p: &str| Path::new(p).file_name()?.to_str().map(str::to_owned);
        let exe_name = executable.and_then(file_name);
        let arg_name = argv0.and_then(file_name);
        self.programs.iter().find(|prog| {
            let by_name = if exe_name.is_none() && arg_name.is_none() {
                comm == prog.name || (comm.len() == COMM_MAX && prog.name.starts_with(comm))
            } else {
                exe_name.as_deref() == Some(prog.name.as_str())
                    || arg_name.as_deref() == Some(prog.name.as_str())
            };
            by_name
                && prog.directory.as_deref().is_none_or(|dir| {
                    executable.is_some_and(|exe| {
                        Path::new(exe)
                            .parent()
                            .and_then(Path::file_name)
                            .is_some_and(|d| d == dir)
                    })
                })
        })
    }

    /// What a watched port is (`tor SOCKS`...).
    pub fn port_use(&self, port: u16) -> Option<&str> {
        self.ports.get(&port).map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_list_parses_and_truncates_like_the_kernel() {
        let w = LocalWatch::shipped();
        assert_eq!(w.environment_prefix.as_deref(), Some("TOR_PT_"));
        assert_eq!(
            w.ports.keys().copied().collect::<Vec<_>>(),
            [9050, 9051, 9150, 9151]
        );
        let keys = w.comm_keys();
        let text: Vec<String> = keys
            .iter()
            .map(|k| String::from_utf8_lossy(k).trim_end_matches('\0').to_owned())
            .collect();
        assert!(text.contains(&"snowflake-clien".to_owned()), "{text:?}");
        assert!(text.contains(&"webtunnel-clien".to_owned()), "{text:?}");
        assert!(text.contains(&"tor".to_owned()));
        assert_eq!(keys.len(), 8);
        let (p, m) = sensor_common::exec::env_pattern(b"TOR_PT_").unwrap();
        assert_eq!(w.env_pattern(), [p, m]);
        assert_eq!(w.clone().with_environment_scan(false).env_pattern(), [0, 0]);
        let more = w.with_listen_ports(&[9999, 9050]);
        assert_eq!(more.port_use(9999), Some("configured"));
        assert_eq!(more.port_use(9050), Some("tor SOCKS"));
    }

    #[test]
    fn a_name_hit_is_confirmed_by_the_whole_name_and_the_directory() {
        let w = LocalWatch::shipped();
        let name = |comm, exe, argv0| w.program(comm, exe, argv0).map(|p| p.name.as_str());
        assert_eq!(name("tor", Some("/usr/bin/tor"), Some("tor")), Some("tor"));
        // A symlink: argv[0] is the watched name, the target another.
        assert_eq!(
            name("obfs4proxy", Some("/usr/bin/lyrebird"), Some("obfs4proxy")),
            Some("lyrebird")
        );
        assert_eq!(
            name(
                "snowflake-clien",
                Some("/opt/snowflake-client"),
                Some("/opt/snowflake-client")
            ),
            Some("snowflake-client")
        );
        // Same first 15 bytes, another program.
        assert_eq!(
            name(
                "snowflake-clien",
                Some("/opt/snowflake-client-old"),
                Some("snowflake-client-old")
            ),
            None
        );
        // Gone from /proc: the command name alone.
        assert_eq!(
            name("snowflake-clien", None, None),
            Some("snowflake-client")
        );
        assert_eq!(name("torx", None, None), None);
        // Tor Browser's firefox.real only in a Browser directory.
        assert_eq!(
            name(
                "firefox.real",
                Some("/home/a/tor-browser/Browser/firefox.real"),
                None
            ),
            Some("firefox.real")
        );
        assert_eq!(
            name("firefox.real", Some("/usr/lib/firefox/firefox.real"), None),
            None
        );
    }

    #[test]
    fn bad_lists_are_refused() {
        assert!(matches!(
            LocalWatch::parse("environment_prefix = \"TOR_PT_X\""),
            Err(LocalError::Prefix(_))
        ));
        assert!(matches!(
            LocalWatch::parse("[[program]]\nname = \"a/b\"\nwhat = \"x\""),
            Err(LocalError::Name(_))
        ));
        assert!(matches!(
            LocalWatch::parse("[[program]]\nnme = \"a\""),
            Err(LocalError::Parse(_))
        ));
    }
}
