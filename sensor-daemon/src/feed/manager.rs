//! Which feeds are loaded, from where and how old; what a refresh must pass
//! before it replaces the current content; when to fetch next.
//!
//! Start-up never waits for the network: local files and the last-known-good
//! cache are loaded first, and if no feed has any content the embedded
//! snapshot is used. A refresh that fails, parses to nothing or shrinks a
//! feed too much is rejected and the current content stays.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use super::config::{FeedConfig, FeedSettings, SignaturePolicy};
use super::parse::{self, ParseError, ParseOptions, ParsedFeed};
use super::set::{FeedSet, SetError};
use super::source::{Cache, CacheMeta, Fetched, Limits, Location, SourceError, Validators};
use super::verify;
use super::{Feed, FeedCounts, Origin};
use crate::time::rfc3339_secs as rfc3339;

/// Why a refresh was not used.
#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    #[error(transparent)]
    Fetch(#[from] SourceError),
    #[error("{location}: {source}")]
    Parse {
        location: String,
        #[source]
        source: ParseError,
    },
    #[error(
        "{location}: refresh has {after} addresses, {before} now: shrinks by more than max_shrink = {max_shrink}; keeping the current content"
    )]
    Shrink {
        location: String,
        before: usize,
        after: usize,
        max_shrink: f64,
    },
}

impl RefreshError {
    /// A short, stable name for the kind of failure (a metrics label).
    pub fn reason(&self) -> &'static str {
        match self {
            RefreshError::Fetch(e) => e.reason(),
            RefreshError::Parse {
                source: ParseError::Signatures(_),
                ..
            } => "signature",
            RefreshError::Parse { .. } => "parse",
            RefreshError::Shrink { .. } => "shrink",
        }
    }
}

/// A fetched body and what parsing it gave.
#[derive(Debug)]
pub struct Candidate {
    pub body: Vec<u8>,
    pub validators: Validators,
    pub fetched: SystemTime,
    pub parsed: Result<ParsedFeed, ParseError>,
}

impl Candidate {
    fn is_consensus(&self) -> bool {
        self.parsed.as_ref().is_ok_and(|f| f.consensus.is_some())
    }

    /// Signatures (`certs`: the certificates read or fetched, None when
    /// not required), then microdescriptor policies from a `tordir:`.
    pub fn finish_consensus(
        &mut self,
        cfg: &FeedConfig,
        certs: Option<Result<Vec<u8>, String>>,
        allow_reserved: bool,
    ) {
        if let Some(certs) = certs {
            self.check_signatures(cfg, certs);
        }
        let Ok(Location::TorDir(dir)) = cfg.location() else {
            return;
        };
        let Ok(feed) = &mut self.parsed else { return };
        if feed
            .consensus
            .as_ref()
            .is_none_or(|c| c.microdescs.is_empty())
        {
            return;
        }
        let mut policies = std::collections::HashMap::new();
        for name in ["cached-microdescs", "cached-microdescs.new"] {
            let read = super::source::fetch_file(&dir.join(name), cfg.max_bytes);
            if let Ok(body) = super::source::body_of(read) {
                policies.extend(parse::consensus::microdesc_policies(
                    &String::from_utf8_lossy(&body),
                ));
            }
        }
        parse::consensus::apply_microdescs(feed, &policies, allow_reserved);
    }

    /// A consensus whose signatures this feed requires checked.
    pub fn needs_certs(&self, cfg: &FeedConfig) -> bool {
        cfg.signatures == SignaturePolicy::Required
            && self.parsed.as_ref().is_ok_and(|f| f.consensus.is_some())
    }

    /// Checks a consensus's signatures against the certificates `certs`
    /// (their text, or why there is none); a consensus that fails is no
    /// longer a usable body. CPU work (RSA): run it off the event loop.
    pub fn check_signatures(&mut self, cfg: &FeedConfig, certs: Result<Vec<u8>, String>) {
        let Ok(feed) = &self.parsed else { return };
        let Some(info) = &feed.consensus else { return };
        let result = certs
            .map_err(|e| format!("no authority certificates ({e})"))
            .and_then(|text| {
                let text = String::from_utf8_lossy(&text);
                let certs = verify::parse_certs(&text, SystemTime::now());
                for refused in &certs.refused {
                    tracing::debug!("feed {}: {refused}", cfg.name);
                }
                verify::verify_consensus(&self.body, info, &certs.certs, &cfg.trusted_authorities())
            });
        match result {
            Ok(verified) => {
                if let Ok(feed) = &mut self.parsed
                    && let Some(info) = feed.consensus.as_mut()
                {
                    info.signed_by = verified.signed_by;
                }
            }
            Err(e) => self.parsed = Err(ParseError::Signatures(e)),
        }
    }
}

/// Completes a consensus candidate: its signatures checked (certificates
/// fetched when needed) and, from a tor DataDirectory, its microdesc
/// routers judged by their microdescriptors' exit policies. CPU work runs
/// on a blocking thread. Anything else passes through.
pub async fn complete(outcome: Outcome, cfg: &FeedConfig, allow_reserved: bool) -> Outcome {
    let Outcome::Candidate(mut c) = outcome else {
        return outcome;
    };
    if !c.is_consensus() {
        return Outcome::Candidate(c);
    }
    let certs = if c.needs_certs(cfg) {
        Some(match cfg.certs_location() {
            Ok(location) => {
                let lim = limits(cfg);
                super::source::fetch_certs(location.as_ref(), &lim, cfg.allow_http).await
            }
            Err(e) => Err(e.to_string()),
        })
    } else {
        None
    };
    let cfg = cfg.clone();
    let checked = tokio::task::spawn_blocking(move || {
        c.finish_consensus(&cfg, certs, allow_reserved);
        c
    })
    .await;
    match checked {
        Ok(c) => Outcome::Candidate(c),
        Err(e) => Outcome::Failed(SourceError::Transport {
            url: String::new(),
            detail: format!("the consensus check failed to run: {e}"),
        }),
    }
}

/// What happened to one fetch.
#[derive(Debug)]
pub enum Outcome {
    NotModified,
    Candidate(Box<Candidate>),
    Failed(SourceError),
}

impl Outcome {
    /// Turns a fetch result into an outcome, parsing the body (CPU work:
    /// callers on an async runtime run this on a blocking thread).
    pub fn from_fetch(
        result: Result<Fetched, SourceError>,
        format: Option<super::FeedFormat>,
        options: &ParseOptions,
    ) -> Self {
        match result {
            Ok(Fetched::NotModified) => Outcome::NotModified,
            Ok(Fetched::Body {
                body,
                validators,
                fetched,
            }) => {
                let parsed = parse::parse_with(&body, format, options);
                Outcome::Candidate(Box::new(Candidate {
                    body,
                    validators,
                    fetched,
                    parsed,
                }))
            }
            Err(e) => Outcome::Failed(e),
        }
    }
}

/// The state of one configured feed.
#[derive(Debug, Clone)]
pub struct FeedState {
    pub config: FeedConfig,
    pub current: Option<Arc<Feed>>,
    pub validators: Validators,
    pub last_attempt: Option<SystemTime>,
    /// Last fetch that was accepted or answered "not modified".
    pub last_success: Option<SystemTime>,
    pub last_error: Option<String>,
    /// Last fetch that failed or was rejected.
    pub last_failure: Option<SystemTime>,
    /// Failures in a row (0 after a success).
    pub failures: u32,
    /// Every failure since start, by [`RefreshError::reason`] (metrics).
    pub failures_by_reason: BTreeMap<&'static str, u64>,
    /// Whether staleness has been reported (to log the change once).
    pub stale_reported: bool,
}

impl FeedState {
    /// Counts a failed or rejected refresh.
    pub fn record_failure(&mut self, reason: &'static str, message: String, at: SystemTime) {
        self.last_error = Some(message);
        self.last_failure = Some(at);
        self.failures += 1;
        *self.failures_by_reason.entry(reason).or_default() += 1;
    }
}

/// What was accepted.
#[derive(Debug, Clone)]
pub struct Accepted {
    pub name: String,
    pub counts: FeedCounts,
    pub before: Option<FeedCounts>,
}

/// All configured feeds.
#[derive(Debug, Clone)]
pub struct FeedManager {
    pub states: Vec<FeedState>,
    cache: Cache,
    allow_reserved: bool,
    /// Armed with every feed set as the built-in `tor-socks-ports` feed.
    socks_ports: Vec<std::net::SocketAddr>,
}

impl FeedManager {
    /// Loads every feed that can be had without the network: local files,
    /// then the last-known-good cache. Problems are logged, never fatal.
    pub fn load_offline(cfg: FeedSettings<'_>) -> Self {
        let cache = Cache::new(cfg.state_dir);
        let states = cfg
            .feeds
            .iter()
            .map(|fc| load_one(fc, &cache, cfg.allow_reserved))
            .collect();
        FeedManager {
            states,
            cache,
            allow_reserved: cfg.allow_reserved,
            socks_ports: cfg.socks_ports.to_vec(),
        }
    }

    /// The manager for a new configuration (SIGHUP): feeds whose name,
    /// location and format did not change keep their content and state
    /// (nothing is read or parsed again); the others are loaded as at start.
    pub fn reload(&self, cfg: FeedSettings<'_>) -> Self {
        let cache = Cache::new(cfg.state_dir);
        let states = cfg
            .feeds
            .iter()
            .map(|fc| {
                let kept = self.states.iter().find(|o| {
                    o.config.name == fc.name
                        && o.config.location == fc.location
                        && o.config.format == fc.format
                        && o.config.allow_wide_prefixes == fc.allow_wide_prefixes
                        && o.current.is_some()
                        && cfg.allow_reserved == self.allow_reserved
                });
                match kept {
                    Some(old) => FeedState {
                        config: fc.clone(),
                        ..old.clone()
                    },
                    None => load_one(fc, &cache, cfg.allow_reserved),
                }
            })
            .collect();
        FeedManager {
            states,
            cache,
            allow_reserved: cfg.allow_reserved,
            socks_ports: cfg.socks_ports.to_vec(),
        }
    }

    pub fn allow_reserved(&self) -> bool {
        self.allow_reserved
    }

    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// The first local-file feed that could not be loaded, with why. A
    /// file is configuration: the caller refuses to start (or to reload).
    pub fn file_error(&self) -> Option<(String, String)> {
        self.states
            .iter()
            .find(|s| {
                s.current.is_none()
                    && match s.config.location() {
                        Ok(Location::Path(_)) => true,
                        // A tor that has not written its consensus yet is
                        // waited for; a directory that is not there is an
                        // error in the configuration.
                        Ok(Location::TorDir(dir)) => !dir.is_dir(),
                        _ => false,
                    }
            })
            .map(|s| {
                (
                    s.config.name.clone(),
                    s.last_error.clone().unwrap_or_default(),
                )
            })
    }

    /// True when no configured feed has content, so the embedded snapshot
    /// is what gets armed.
    pub fn needs_embedded(&self) -> bool {
        self.states.iter().all(|s| s.current.is_none())
    }

    /// The feeds to arm: every feed with content, or the embedded snapshot;
    /// and the local Tor SOCKS ports.
    pub fn feed_set(&self) -> Result<FeedSet, SetError> {
        let mut feeds: Vec<Arc<Feed>> = if self.needs_embedded() {
            Feed::embedded().into_iter().map(Arc::new).collect()
        } else {
            self.states
                .iter()
                .filter_map(|s| s.current.clone())
                .collect()
        };
        if !self.socks_ports.is_empty() {
            feeds.push(Arc::new(Feed::socks_ports(&self.socks_ports)));
        }
        FeedSet::new(feeds)
    }

    /// Applies the outcome of a fetch of feed `index`: a usable body replaces
    /// the current content (and the cache), anything else keeps it.
    pub fn offer(
        &mut self,
        index: usize,
        outcome: Outcome,
    ) -> Result<Option<Accepted>, RefreshError> {
        let now = SystemTime::now();
        let state = &mut self.states[index];
        state.last_attempt = Some(now);
        let result = match outcome {
            Outcome::NotModified => Ok(None),
            Outcome::Failed(e) => Err(RefreshError::Fetch(e)),
            Outcome::Candidate(c) => {
                let origin = match state.config.location() {
                    Ok(l) if l.is_local() => Origin::File,
                    _ => Origin::Network,
                };
                accept_into(state, *c, origin, Some(&self.cache)).map(Some)
            }
        };
        match &result {
            Ok(_) => {
                state.last_success = Some(now);
                state.last_error = None;
                state.failures = 0;
            }
            Err(e) => state.record_failure(e.reason(), e.to_string(), now),
        }
        result
    }

    /// Fetches feed `index` now (conditionally) and offers the result: what
    /// `torsensor feed fetch` does for each feed. The running sensor uses
    /// [`super::refresh`] instead, so that parsing never blocks its loop.
    pub async fn refresh_once(&mut self, index: usize) -> Result<Option<Accepted>, RefreshError> {
        let cfg = self.states[index].config.clone();
        let location = Location::parse(&cfg.location, cfg.allow_http)?;
        let lim = limits(&cfg);
        let client = super::source::client_for(&location, &lim, cfg.allow_http)?;
        let validators = &self.states[index].validators;
        let result = super::source::fetch(client.as_ref(), &location, validators, &lim).await;
        let outcome =
            Outcome::from_fetch(result, cfg.format, &cfg.parse_options(self.allow_reserved));
        let outcome = complete(outcome, &cfg, self.allow_reserved).await;
        self.offer(index, outcome)
    }

    /// Delay before the first fetch of feed `index`: what is left of the
    /// refresh interval of a fresh cache, else soon (a little jitter, so a
    /// fleet restarting together does not arrive at once).
    pub fn first_delay(&self, index: usize, now: SystemTime) -> Duration {
        let state = &self.states[index];
        let cfg = &state.config;
        if cfg.location().is_ok_and(|l| l.is_local()) {
            return cfg.watch;
        }
        let fetched_age = state
            .current
            .as_ref()
            .and_then(|f| f.fetched)
            .map(|t| now.duration_since(t).unwrap_or_default());
        match fetched_age {
            Some(age) if age < cfg.refresh => cfg.refresh - age + random_upto(cfg.jitter),
            _ => random_upto(cfg.jitter.min(Duration::from_secs(60))),
        }
    }

    /// Delay before the next fetch of feed `index` after an attempt: for a
    /// local file or tor DataDirectory its `watch` interval; else the
    /// refresh interval plus jitter after a success; after failures an
    /// exponential back-off from 30 s, capped at the refresh interval,
    /// +-25 % jitter.
    pub fn next_delay(&self, index: usize) -> Duration {
        let state = &self.states[index];
        let cfg = &state.config;
        // Local files and tor DataDirectories: a stat every `watch`.
        if cfg.location().is_ok_and(|l| l.is_local()) {
            return cfg.watch;
        }
        if state.failures == 0 {
            return cfg.refresh + random_upto(cfg.jitter);
        }
        let exp = state.failures.saturating_sub(1).min(16);
        let backoff = (Duration::from_secs(30) * 2u32.pow(exp)).min(cfg.refresh);
        backoff.mul_f64(0.75 + fastrand::f64() * 0.5)
    }

    /// Feeds whose age passed `stale_after` or whose consensus expired (or
    /// came back), each once per
    /// change: `(name, age, stale_now)`.
    pub fn stale_changes(&mut self, now: SystemTime) -> Vec<(String, Duration, bool)> {
        let mut changes = Vec::new();
        for state in &mut self.states {
            let Some(feed) = state.current.as_ref() else {
                continue;
            };
            let Some(age) = feed.age(now) else { continue };
            let stale = feed.is_stale(now, state.config.stale_after);
            if stale != state.stale_reported {
                state.stale_reported = stale;
                changes.push((state.config.name.clone(), age, stale));
            }
        }
        changes
    }

    /// What is loaded now, for `status.json` and `torsensor feed status`.
    pub fn status(&self, set: &FeedSet, now: SystemTime) -> Status {
        let embedded = self.needs_embedded();
        let mut feeds: Vec<FeedStatus> = Vec::new();
        if embedded {
            for feed in set.feeds() {
                feeds.push(FeedStatus::of(feed, None, now));
            }
        }
        for state in &self.states {
            match &state.current {
                Some(feed) => feeds.push(FeedStatus::of(feed, Some(state), now)),
                None => feeds.push(FeedStatus {
                    name: state.config.name.clone(),
                    location: crate::redact::url(&state.config.location),
                    loaded: false,
                    origin: None,
                    format: None,
                    version: None,
                    fetched: None,
                    age_seconds: None,
                    stale: false,
                    counts: FeedCounts::default(),
                    last_attempt: state.last_attempt.map(rfc3339),
                    last_success: state.last_success.map(rfc3339),
                    last_error: state.last_error.clone(),
                    failures: state.failures,
                }),
            }
        }
        Status {
            pid: std::process::id(),
            written: rfc3339(now),
            embedded_fallback: embedded,
            prefixes: set.prefixes().len(),
            or_ports: set.or_ports().len(),
            feeds,
        }
    }
}

/// `status.json`: what a running sensor has loaded.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Status {
    pub pid: u32,
    pub written: String,
    /// No configured feed had content: the embedded snapshot is armed.
    pub embedded_fallback: bool,
    /// Entries in the kernel maps.
    pub prefixes: usize,
    pub or_ports: usize,
    pub feeds: Vec<FeedStatus>,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct FeedStatus {
    pub name: String,
    pub location: String,
    pub loaded: bool,
    pub origin: Option<String>,
    pub format: Option<String>,
    /// The feed's own publication time.
    pub version: Option<String>,
    pub fetched: Option<String>,
    /// Age (from version, else fetch time) when the status was written.
    pub age_seconds: Option<u64>,
    pub stale: bool,
    pub counts: FeedCounts,
    pub last_attempt: Option<String>,
    pub last_success: Option<String>,
    pub last_error: Option<String>,
    pub failures: u32,
}

impl FeedStatus {
    fn of(feed: &Feed, state: Option<&FeedState>, now: SystemTime) -> Self {
        let age = feed.age(now);
        FeedStatus {
            name: feed.name.clone(),
            location: feed.location.clone(),
            loaded: true,
            origin: Some(feed.origin.to_string()),
            format: feed.data.format.map(|f| f.to_string()),
            version: feed.data.version.map(rfc3339),
            fetched: feed.fetched.map(rfc3339),
            age_seconds: age.map(|a| a.as_secs()),
            stale: match state {
                Some(s) => feed.is_stale(now, s.config.stale_after),
                // The embedded snapshot is always old.
                None => true,
            },
            counts: feed.counts(),
            last_attempt: state.and_then(|s| s.last_attempt).map(rfc3339),
            last_success: state.and_then(|s| s.last_success).map(rfc3339),
            last_error: state.and_then(|s| s.last_error.clone()),
            failures: state.map(|s| s.failures).unwrap_or(0),
        }
    }
}

fn random_upto(max: Duration) -> Duration {
    max.mul_f64(fastrand::f64())
}

/// One feed as it can be had without the network: a local file, or the
/// cached copy of a URL.
fn load_one(fc: &FeedConfig, cache: &Cache, allow_reserved: bool) -> FeedState {
    let mut state = FeedState {
        config: fc.clone(),
        current: None,
        validators: Validators::default(),
        last_attempt: None,
        last_success: None,
        last_error: None,
        last_failure: None,
        failures: 0,
        failures_by_reason: BTreeMap::new(),
        stale_reported: false,
    };
    match fc.location() {
        Ok(location @ (Location::Path(_) | Location::TorDir(_))) => {
            let result = match &location {
                Location::TorDir(dir) => super::source::tordir_consensus(dir)
                    .and_then(|path| super::source::fetch_file(&path, fc.max_bytes)),
                _ => super::source::fetch_file(Path::new(&fc.location), fc.max_bytes),
            };
            let mut outcome =
                Outcome::from_fetch(result, fc.format, &fc.parse_options(allow_reserved));
            if let Outcome::Candidate(c) = &mut outcome
                && c.is_consensus()
            {
                let certs = c.needs_certs(fc).then(|| {
                    fc.certs_location()
                        .map_err(|e| e.to_string())
                        .and_then(|l| super::source::read_certs(l.as_ref(), fc.max_bytes))
                });
                c.finish_consensus(fc, certs, allow_reserved);
            }
            match outcome {
                Outcome::Candidate(c) => {
                    if let Err(e) = accept_into(&mut state, *c, Origin::File, None) {
                        state.last_error = Some(e.to_string());
                    }
                }
                Outcome::Failed(e) => state.last_error = Some(e.to_string()),
                Outcome::NotModified => {}
            }
        }
        Ok(Location::Url(_)) => load_cached(&mut state, cache, allow_reserved),
        Err(e) => state.last_error = Some(e.to_string()),
    }
    state
}

fn load_cached(state: &mut FeedState, cache: &Cache, allow_reserved: bool) {
    let name = &state.config.name;
    let (meta, body) = match cache.load(name) {
        Ok(Some(x)) => x,
        Ok(None) => return,
        Err(e) => {
            tracing::warn!("feed {name}: ignoring the cached copy: {e}");
            return;
        }
    };
    if meta.location != state.config.location {
        tracing::warn!(
            "feed {name}: ignoring the cached copy from {} (the feed now points to {})",
            crate::redact::url(&meta.location),
            crate::redact::url(&state.config.location)
        );
        return;
    }
    let options = state.config.parse_options(allow_reserved);
    match parse::parse_with(&body, Some(meta.format), &options) {
        Ok(data) => {
            let feed = Feed {
                name: name.clone(),
                location: crate::redact::url(&state.config.location),
                origin: Origin::Cache,
                fetched: meta.fetched_time(),
                data,
            };
            state.validators = meta.validators;
            state.last_success = feed.fetched;
            state.current = Some(Arc::new(feed));
        }
        Err(e) => tracing::warn!(
            "feed {name}: ignoring the cached copy {}: {e}",
            cache.path(name).display()
        ),
    }
}

/// Validates a candidate against the feed's current content and, if it
/// passes, makes it current and (with a cache) writes it as last-known-good.
fn accept_into(
    state: &mut FeedState,
    c: Candidate,
    origin: Origin,
    cache: Option<&Cache>,
) -> Result<Accepted, RefreshError> {
    let cfg = &state.config;
    let shown = crate::redact::url(&cfg.location);
    let data = c.parsed.map_err(|source| RefreshError::Parse {
        location: shown.clone(),
        source,
    })?;
    let after = data.address_count();
    if let Some(current) = &state.current {
        let before = current.data.address_count();
        if (after as f64) < (before as f64) * (1.0 - cfg.max_shrink) {
            return Err(RefreshError::Shrink {
                location: shown.clone(),
                before,
                after,
                max_shrink: cfg.max_shrink,
            });
        }
    }
    let feed = Feed {
        name: cfg.name.clone(),
        location: shown,
        origin,
        fetched: Some(c.fetched),
        data,
    };
    feed.log_problems();
    if let (Some(cache), Origin::Network) = (cache, origin) {
        let meta = CacheMeta {
            name: cfg.name.clone(),
            location: cfg.location.clone(),
            format: feed.data.format.unwrap_or(super::FeedFormat::Plain),
            validators: c.validators.clone(),
            fetched: rfc3339(c.fetched),
            bytes: c.body.len(),
        };
        if let Err(e) = cache.store(&meta, &c.body) {
            tracing::warn!(
                "feed {}: accepted but not cached (the next start cannot use it offline): {e}",
                cfg.name
            );
        }
    }
    let accepted = Accepted {
        name: cfg.name.clone(),
        counts: feed.counts(),
        before: state.current.as_ref().map(|f| f.counts()),
    };
    state.validators = c.validators;
    state.current = Some(Arc::new(feed));
    Ok(accepted)
}

/// Fetch limits of a feed.
pub fn limits(cfg: &FeedConfig) -> Limits {
    Limits {
        connect_timeout: cfg.connect_timeout,
        timeout: cfg.timeout,
        max_bytes: cfg.max_bytes,
    }
}
