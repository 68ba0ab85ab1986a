//! Checking an output's configuration before anything touches the kernel:
//! [`OutputConfig::validate`] (every bound, and which options go with which
//! destinations), and reading what it names (the token, the CA bundle).
//!
//! May use the rest of `config`; reads files and the environment, nothing
//! else of the daemon.

use std::time::Duration;

use super::{Destination, HttpKind, OutputConfig, SinkError, facility_code};

impl OutputConfig {
    /// Checks everything that can be checked without sending: the
    /// destination, sizes, timeouts, the facility, and that a configured
    /// token is readable and non-empty. Called before anything touches the kernel.
    pub fn validate(&self) -> Result<(), SinkError> {
        let dest = self.destination()?;
        self.check_name()?;
        self.check_sizes()?;
        self.check_times()?;
        self.check_syslog()?;
        self.check_options_for(&dest)?;
        self.token()?;
        Ok(())
    }

    fn check_name(&self) -> Result<(), SinkError> {
        if let Some(name) = &self.name
            && (name.is_empty()
                || name.len() > 64
                || name.starts_with('.')
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)))
        {
            return Err(self.err(
                "name",
                "must be 1-64 characters of A-Z a-z 0-9 . _ - (it names the spool directory)",
            ));
        }
        Ok(())
    }

    fn check_sizes(&self) -> Result<(), SinkError> {
        if self.queue_size == 0 || self.queue_size > 10_000_000 {
            return Err(self.err("queue_size", "must be between 1 and 10,000,000 alerts"));
        }
        if self.batch_max_events == 0 {
            return Err(self.err("batch_max_events", "must be at least 1"));
        }
        if self.batch_max_bytes < 1024 {
            return Err(self.err("batch_max_bytes", "must be at least 1024"));
        }
        if self.spool_max_bytes < 4096 {
            return Err(self.err("spool_max_bytes", "must be at least 4096"));
        }
        if self.spool_segment_bytes < 1024 {
            return Err(self.err("spool_segment_bytes", "must be at least 1024"));
        }
        Ok(())
    }

    fn check_times(&self) -> Result<(), SinkError> {
        if self.connect_timeout < Duration::from_millis(10) {
            return Err(self.err("connect_timeout", "must be at least 10ms"));
        }
        if self.timeout < Duration::from_millis(10) {
            return Err(self.err("timeout", "must be at least 10ms"));
        }
        if self.retry_initial < Duration::from_millis(1) || self.retry_initial > self.retry_max {
            return Err(self.err(
                "retry_initial",
                "must be at least 1ms and at most retry_max",
            ));
        }
        if self.linger > Duration::from_secs(60) {
            return Err(self.err("linger", "must be at most 60s"));
        }
        Ok(())
    }

    fn check_syslog(&self) -> Result<(), SinkError> {
        if facility_code(&self.facility).is_none() {
            return Err(self.err("facility", format!("unknown syslog facility {:?}; use kern, user, mail, daemon, auth, syslog, lpr, news, uucp, cron, authpriv, ftp or local0..local7", self.facility)));
        }
        if self.datagram_max_bytes < 480 || self.datagram_max_bytes > 65_507 {
            return Err(self.err(
                "datagram_max_bytes",
                "must be between 480 (RFC 5426 minimum) and 65507",
            ));
        }
        Ok(())
    }

    /// Options that only some destinations take (tokens, TLS, gzip,
    /// `durable`), and the token HEC needs.
    fn check_options_for(&self, dest: &Destination) -> Result<(), SinkError> {
        if self.token_file.is_some() && self.token_env.is_some() {
            return Err(self.err("token_file", "give token_file or token_env, not both"));
        }
        let is_http = matches!(dest, Destination::Http { .. });
        if !is_http && (self.token_file.is_some() || self.token_env.is_some()) {
            return Err(self.err("token_file", "only HTTP outputs take a token"));
        }
        if matches!(
            dest,
            Destination::Http {
                kind: HttpKind::Hec,
                ..
            }
        ) && self.token_file.is_none()
            && self.token_env.is_none()
        {
            return Err(self.err(
                "token_file",
                "Splunk HEC needs a token: set token_file or token_env",
            ));
        }
        if self.durable == Some(true) && !dest.is_remote() {
            return Err(self.err(
                "durable",
                "only remote outputs (HTTP, syslog) have a spool to be durable in",
            ));
        }
        if self.gzip && !is_http {
            return Err(self.err("gzip", "only HTTP outputs compress"));
        }
        if let Some(ca) = &self.ca_file {
            if !is_http {
                return Err(self.err("ca_file", "only HTTP outputs use TLS"));
            }
            read_ca_file(ca).map_err(|reason| self.err("ca_file", reason))?;
        }
        Ok(())
    }

    /// Reads the token from `token_file` or `token_env` (None when neither is set).
    pub fn token(&self) -> Result<Option<String>, SinkError> {
        let token = if let Some(path) = &self.token_file {
            let text = std::fs::read_to_string(path).map_err(|e| {
                self.err("token_file", format!("cannot read {}: {e}", path.display()))
            })?;
            text.trim().to_owned()
        } else if let Some(var) = &self.token_env {
            let value = std::env::var(var).map_err(|_| {
                self.err(
                    "token_env",
                    format!("environment variable {var} is not set (or not UTF-8)"),
                )
            })?;
            value.trim().to_owned()
        } else {
            return Ok(None);
        };
        if token.is_empty() {
            return Err(self.err(
                if self.token_file.is_some() {
                    "token_file"
                } else {
                    "token_env"
                },
                "the token is empty",
            ));
        }
        if token.chars().any(|c| c.is_control()) {
            return Err(self.err(
                if self.token_file.is_some() {
                    "token_file"
                } else {
                    "token_env"
                },
                "the token contains control characters",
            ));
        }
        Ok(Some(token))
    }
}

/// The certificates of a `ca_file`: at least one, else a reason.
pub(crate) fn read_ca_file(ca: &std::path::Path) -> Result<Vec<reqwest::Certificate>, String> {
    let pem = std::fs::read(ca).map_err(|e| format!("cannot read {}: {e}", ca.display()))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|e| format!("{} is not a PEM certificate bundle: {e}", ca.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            ca.display()
        ));
    }
    Ok(certs)
}
