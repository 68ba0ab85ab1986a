//! One feed's settings (`[[feed]]` tables and `--feed`), their defaults
//! and their validation. The daemon's configuration holds a list of these;
//! nothing here knows about the rest of it.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use super::parse::{FeedFormat, ParseOptions};
use super::source::Location;
use crate::time::deserialize_duration;

/// A `[[feed]]` value that cannot be used: names the feed and the field.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("feed {feed:?}: {field} {reason}")]
pub struct FeedConfigError {
    pub feed: String,
    pub field: &'static str,
    pub reason: String,
}

/// One feed (`[[feed]]`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FeedConfig {
    /// Name in alerts and the cache file name (letters, digits, `.`, `_`,
    /// `-`). Required in a file; derived from the location for `--feed`.
    pub name: String,
    /// `https://` URL, `http://` URL (loopback, or with `allow_http`), a
    /// local path, or `tordir:DIR` (a tor's DataDirectory: its cached
    /// consensus). Required.
    pub location: String,
    /// `plain`, `tordnsel`, `onionoo`, `consensus`, or `auto` (detect from
    /// the content). Default: auto.
    #[serde(deserialize_with = "format_choice")]
    pub format: Option<FeedFormat>,
    /// Time between refreshes of a URL. Default: 1 h (sources update
    /// hourly).
    #[serde(deserialize_with = "deserialize_duration")]
    pub refresh: Duration,
    /// How often a local file or a `tordir:` is checked for a change (its
    /// size and modification time: a stat, no read); a change is loaded at
    /// once. Default: 10 s.
    #[serde(deserialize_with = "deserialize_duration")]
    pub watch: Duration,
    /// Random extra delay, 0 to this, added to every wait, so that a fleet
    /// spreads its requests. Default: 10 min.
    #[serde(deserialize_with = "deserialize_duration")]
    pub jitter: Duration,
    /// A refresh that shrinks the feed by more than this fraction is
    /// rejected and the current content stays. Default: 0.5.
    pub max_shrink: f64,
    /// A feed older than this (by its published time, or fetch time) is
    /// reported as stale. Default: 6 h.
    #[serde(deserialize_with = "deserialize_duration")]
    pub stale_after: Duration,
    /// Largest accepted body, after decompression. Default: 64 MiB (the
    /// full Onionoo details document is about 20 MB).
    pub max_bytes: u64,
    /// Default: 10 s.
    #[serde(deserialize_with = "deserialize_duration")]
    pub connect_timeout: Duration,
    /// Whole request, body included. Default: 120 s.
    #[serde(deserialize_with = "deserialize_duration")]
    pub timeout: Duration,
    /// Allow `http://` to a non-loopback host (an internal mirror without
    /// TLS), as the location and as any redirect hop. Default: false.
    pub allow_http: bool,
    /// A consensus is accepted only if more than half of `authorities`
    /// signed it (`required`), or without checking (`off`). Default:
    /// required. See `feed/verify.rs`.
    pub signatures: SignaturePolicy,
    /// Where the directory authorities' key certificates come from (a path
    /// or URL). Default: the `cached-certs` of a `tordir:`, else
    /// `/tor/keys/all` on the consensus URL's host; a local consensus file
    /// needs it set.
    pub authority_certs: Option<String>,
    /// The v3 identity fingerprints of the authorities trusted to sign (a
    /// private or test network's). Default: the Tor network's nine.
    pub authorities: Vec<String>,
    /// Accept prefixes shorter than /8 (IPv4) or /16 (IPv6) in a plain
    /// list. Without it such a line refuses the whole body (it would alert
    /// on a large part of the Internet), even with `allow_reserved`.
    /// Default: false.
    pub allow_wide_prefixes: bool,
}

impl Default for FeedConfig {
    fn default() -> Self {
        FeedConfig {
            name: String::new(),
            location: String::new(),
            format: None,
            refresh: Duration::from_secs(3600),
            watch: Duration::from_secs(10),
            jitter: Duration::from_secs(600),
            max_shrink: 0.5,
            stale_after: Duration::from_secs(6 * 3600),
            max_bytes: 64 << 20,
            connect_timeout: Duration::from_secs(10),
            timeout: Duration::from_secs(120),
            allow_http: false,
            signatures: SignaturePolicy::Required,
            authority_certs: None,
            authorities: Vec::new(),
            allow_wide_prefixes: false,
        }
    }
}

/// Whether a consensus must be signed (see [`FeedConfig::signatures`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SignaturePolicy {
    Required,
    Off,
}

/// Shortest refresh interval accepted: sources must not be hammered.
pub const MIN_REFRESH: Duration = Duration::from_secs(60);

fn format_choice<'de, D: Deserializer<'de>>(d: D) -> Result<Option<FeedFormat>, D::Error> {
    let text = String::deserialize(d)?;
    match text.as_str() {
        "auto" => Ok(None),
        "plain" => Ok(Some(FeedFormat::Plain)),
        "tordnsel" => Ok(Some(FeedFormat::Tordnsel)),
        "onionoo" => Ok(Some(FeedFormat::Onionoo)),
        "consensus" => Ok(Some(FeedFormat::Consensus)),
        other => Err(serde::de::Error::custom(format!(
            "format {other:?}: expected auto, plain, tordnsel, onionoo or consensus"
        ))),
    }
}

impl FeedConfig {
    /// A feed from a `--feed` value, named after its file or URL path.
    pub fn from_location(location: &str) -> Self {
        let base = location
            .split(['?', '#'])
            .next()
            .unwrap_or(location)
            .trim_end_matches('/');
        let last = base.rsplit('/').next().unwrap_or(base);
        let name: String = last
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        FeedConfig {
            name: if name.is_empty() { "feed".into() } else { name },
            location: location.to_owned(),
            ..Default::default()
        }
    }

    /// How this feed's bodies are parsed.
    pub fn parse_options(&self, allow_reserved: bool) -> ParseOptions {
        ParseOptions {
            allow_reserved,
            allow_wide_prefixes: self.allow_wide_prefixes,
        }
    }

    pub fn location(&self) -> Result<Location, FeedConfigError> {
        Location::parse(&self.location, self.allow_http).map_err(|e| FeedConfigError {
            feed: self.name.clone(),
            field: "location",
            reason: e.to_string(),
        })
    }

    /// Where this feed's authority certificates are, if anywhere.
    pub fn certs_location(&self) -> Result<Option<Location>, FeedConfigError> {
        let text = match &self.authority_certs {
            Some(text) => Some(text.clone()),
            None => self.location()?.default_certs(),
        };
        text.map(|t| {
            Location::parse(&t, self.allow_http).map_err(|e| FeedConfigError {
                feed: self.name.clone(),
                field: "authority_certs",
                reason: e.to_string(),
            })
        })
        .transpose()
    }

    /// The identities trusted to sign a consensus: `authorities`, else the
    /// Tor network's.
    pub fn trusted_authorities(&self) -> Vec<String> {
        if self.authorities.is_empty() {
            super::verify::TOR_AUTHORITIES
                .iter()
                .map(|s| (*s).to_owned())
                .collect()
        } else {
            self.authorities
                .iter()
                .map(|s| s.to_ascii_uppercase())
                .collect()
        }
    }

    /// Checks every field; the error names the feed and the field.
    pub fn validate(&self) -> Result<(), FeedConfigError> {
        let bad = |field, reason: &str| FeedConfigError {
            feed: self.name.clone(),
            field,
            reason: reason.to_owned(),
        };
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
            || self.name.starts_with('.')
        {
            return Err(bad(
                "name",
                "must be letters, digits, '.', '_' or '-' (it names the cache file)",
            ));
        }
        self.location()?;
        if self.refresh < MIN_REFRESH {
            return Err(bad(
                "refresh",
                "must be at least 60s (do not hammer the source)",
            ));
        }
        if let Some(fp) = self
            .authorities
            .iter()
            .find(|fp| fp.len() != 40 || !fp.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Err(bad(
                "authorities",
                &format!("{fp:?} is not a 40-hex-digit v3 identity fingerprint"),
            ));
        }
        self.certs_location()?;
        if self.watch < Duration::from_secs(1) {
            return Err(bad("watch", "must be at least 1s"));
        }
        if self.jitter > self.refresh {
            return Err(bad("jitter", "must not exceed refresh"));
        }
        if !(0.0..=1.0).contains(&self.max_shrink) {
            return Err(bad("max_shrink", "must be between 0.0 and 1.0"));
        }
        if !(1024..=(1 << 30)).contains(&self.max_bytes) {
            return Err(bad("max_bytes", "must be between 1024 and 1073741824"));
        }
        if self.connect_timeout < Duration::from_millis(100) || self.timeout < self.connect_timeout
        {
            return Err(bad(
                "timeout",
                "connect_timeout must be at least 100ms and timeout at least connect_timeout",
            ));
        }
        Ok(())
    }
}

/// What the feed layer needs from the daemon's configuration: the feeds,
/// where their last-known-good copies live, and whether reserved ranges
/// are kept.
#[derive(Debug, Clone, Copy)]
pub struct FeedSettings<'a> {
    pub feeds: &'a [FeedConfig],
    pub state_dir: &'a Path,
    pub allow_reserved: bool,
    /// Local Tor SOCKS ports, armed as the built-in `tor-socks-ports` feed.
    pub socks_ports: &'a [std::net::SocketAddr],
}
