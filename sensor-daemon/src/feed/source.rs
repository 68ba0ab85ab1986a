//! Where feed bodies come from: HTTP(S) with conditional requests, local
//! files, and the last-known-good cache in the state directory.

use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::FeedFormat;

/// The User-Agent of every feed request: names the product and version so
/// that a source operator can tell who is fetching.
pub const USER_AGENT: &str = concat!(
    "torsensor/",
    env!("CARGO_PKG_VERSION"),
    " (Tor network sensor; feed refresh)"
);

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("feed location {location:?}: {reason}")]
    Location { location: String, reason: String },
    #[error("{url}: HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("{url}: no complete answer within {after:?} (timeout)")]
    Timeout { url: String, after: Duration },
    #[error("{url}: body larger than max_bytes = {max_bytes}")]
    TooLarge { url: String, max_bytes: u64 },
    #[error("{url}: {detail}")]
    Transport { url: String, detail: String },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cache file {path} is damaged: {reason}")]
    BadCache { path: PathBuf, reason: String },
    #[error(transparent)]
    StateDir(#[from] crate::statedir::StateDirError),
}

impl SourceError {
    /// A short, stable name for the kind of failure (a metrics label).
    pub fn reason(&self) -> &'static str {
        match self {
            SourceError::Location { .. } => "location",
            SourceError::Status { .. } => "http_status",
            SourceError::Timeout { .. } => "timeout",
            SourceError::TooLarge { .. } => "too_large",
            SourceError::Transport { .. } => "transport",
            SourceError::Read { .. } => "read",
            SourceError::Write { .. } => "cache_write",
            SourceError::BadCache { .. } => "cache_damaged",
            SourceError::StateDir(_) => "state_dir",
        }
    }
}

/// A feed's location, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Url(reqwest::Url),
    Path(PathBuf),
    /// `tordir:DIR`: a tor's DataDirectory; its consensus (see
    /// [`tordir_consensus`]) and `cached-certs`.
    TorDir(PathBuf),
}

impl Location {
    /// `https://...`; `http://...` only to a loopback host unless
    /// `allow_http`; `tordir:DIR`; anything without a scheme is a local path.
    pub fn parse(text: &str, allow_http: bool) -> Result<Self, SourceError> {
        let bad = |reason: &str| SourceError::Location {
            location: crate::redact::url(text),
            reason: reason.to_owned(),
        };
        if let Some(dir) = text.strip_prefix("tordir:") {
            if dir.is_empty() {
                return Err(bad("tordir: needs a directory, e.g. tordir:/var/lib/tor"));
            }
            return Ok(Location::TorDir(PathBuf::from(dir)));
        }
        if !text.contains("://") {
            if text.is_empty() {
                return Err(bad("empty"));
            }
            return Ok(Location::Path(PathBuf::from(text)));
        }
        let url = reqwest::Url::parse(text).map_err(|e| bad(&format!("not a URL ({e})")))?;
        url_rule(&url, allow_http).map_err(|reason| bad(&reason))?;
        Ok(Location::Url(url))
    }

    /// Read from this machine (a file or a tor DataDirectory): cheap to
    /// check for changes, and part of the configuration.
    pub fn is_local(&self) -> bool {
        !matches!(self, Location::Url(_))
    }

    /// Where a consensus feed's authority key certificates are by default:
    /// a tor's `cached-certs`, or `/tor/keys/all` on a directory mirror
    /// (the consensus URL's scheme, host and port). None for a plain file.
    pub fn default_certs(&self) -> Option<String> {
        match self {
            Location::TorDir(dir) => Some(dir.join("cached-certs").display().to_string()),
            Location::Url(url) => {
                let mut certs = url.clone();
                certs.set_path("/tor/keys/all");
                certs.set_query(None);
                certs.set_fragment(None);
                Some(certs.to_string())
            }
            Location::Path(_) => None,
        }
    }
}

/// The consensus a tor keeps in its DataDirectory: `cached-consensus` (the
/// full flavour, which has exit policies: relays and authorities keep it)
/// unless `cached-microdesc-consensus` (what clients keep) is newer.
pub fn tordir_consensus(dir: &Path) -> Result<PathBuf, SourceError> {
    let newest = ["cached-consensus", "cached-microdesc-consensus"]
        .into_iter()
        .map(|name| dir.join(name))
        .filter_map(|p| fs::metadata(&p).ok().map(|m| (m.modified().ok(), p)))
        .max_by_key(|(modified, _)| *modified);
    match newest {
        Some((_, path)) => Ok(path),
        None => Err(SourceError::Read {
            path: dir.join("cached-consensus"),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no cached-consensus or cached-microdesc-consensus in this tor DataDirectory (yet)",
            ),
        }),
    }
}

/// The rule every URL a feed is fetched from must pass: the configured
/// location and every hop of a redirect. `https`; `http` only to a loopback
/// host unless `allow_http`; no credentials; no other scheme.
fn url_rule(url: &reqwest::Url, allow_http: bool) -> Result<(), String> {
    if !url.username().is_empty() || url.password().is_some() {
        return Err(
            "credentials in a URL end up in logs and process listings; feeds need none".into(),
        );
    }
    match url.scheme() {
        "https" => Ok(()),
        "http" if allow_http || is_loopback_host(url) => Ok(()),
        "http" => Err(
            "plain http is only allowed to loopback; use https, or set allow_http = true for this feed"
                .into(),
        ),
        other => Err(format!(
            "scheme {other:?} is not supported (https, http, or a path)"
        )),
    }
}

fn is_loopback_host(url: &reqwest::Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// HTTP validators for a conditional request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Validators {
    pub etag: Option<String>,
    pub last_modified: Option<String>,
}

/// Limits of one fetch.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub connect_timeout: Duration,
    pub timeout: Duration,
    pub max_bytes: u64,
}

/// The result of a fetch that did not fail.
#[derive(Debug)]
pub enum Fetched {
    /// 304, or an unchanged local file.
    NotModified,
    Body {
        body: Vec<u8>,
        validators: Validators,
        fetched: SystemTime,
    },
}

/// An HTTP client for feeds: rustls, gzip, the product's User-Agent, at
/// most 5 redirects, never from https down to http, and every hop held to
/// the rules of the configured location ([`Location::parse`]): a plain-http
/// hop elsewhere than loopback is refused (unless `allow_http`) before any
/// connection is made to it, and the error names the hop.
pub fn client(limits: &Limits, allow_http: bool) -> Result<reqwest::Client, SourceError> {
    let policy = reqwest::redirect::Policy::custom(move |attempt| {
        let downgrade = attempt.url().scheme() == "http"
            && attempt.previous().iter().any(|u| u.scheme() == "https");
        if attempt.previous().len() >= 5 {
            attempt.error("more than 5 redirects")
        } else if downgrade {
            let hop = attempt.url().to_string();
            attempt.error(format!(
                "redirect to {hop} refused: redirect from https to http"
            ))
        } else if let Err(reason) = url_rule(attempt.url(), allow_http) {
            let hop = attempt.url().to_string();
            attempt.error(format!("redirect to {hop} refused: {reason}"))
        } else {
            attempt.follow()
        }
    });
    reqwest::Client::builder()
        .user_agent(USER_AGENT)
        .connect_timeout(limits.connect_timeout)
        .redirect(policy)
        .build()
        .map_err(|e| SourceError::Transport {
            url: "(client)".into(),
            detail: chain(&e),
        })
}

/// An error and its causes on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}

/// The HTTP client a location needs: one for a URL, none for a path, so
/// that a file-only feed never sets up TLS (and never needs CA certificates,
/// which a minimal container may not have).
pub fn client_for(
    location: &Location,
    limits: &Limits,
    allow_http: bool,
) -> Result<Option<reqwest::Client>, SourceError> {
    match location {
        Location::Url(_) => client(limits, allow_http).map(Some),
        Location::Path(_) | Location::TorDir(_) => Ok(None),
    }
}

/// Fetches a location, conditionally when `validators` has something. A URL
/// needs the client from [`client_for`].
pub async fn fetch(
    client: Option<&reqwest::Client>,
    location: &Location,
    validators: &Validators,
    limits: &Limits,
) -> Result<Fetched, SourceError> {
    match (location, client) {
        (Location::Url(url), Some(client)) => fetch_url(client, url, validators, limits).await,
        (Location::Url(url), None) => Err(SourceError::Transport {
            url: crate::redact::url(url.as_str()),
            detail: "no HTTP client was set up for this URL".into(),
        }),
        (Location::Path(path), _) => read_file(path, validators, limits.max_bytes),
        (Location::TorDir(dir), _) => read_tordir(dir, validators, limits.max_bytes),
    }
}

async fn fetch_url(
    client: &reqwest::Client,
    url: &reqwest::Url,
    validators: &Validators,
    limits: &Limits,
) -> Result<Fetched, SourceError> {
    // Shown in errors and logs: without any secret in the URL, and
    // reqwest's own messages without the URL (it is named once, here).
    let name = crate::redact::url(url.as_str());
    let transport = |e: reqwest::Error| {
        let e = e.without_url();
        if e.is_timeout() {
            SourceError::Timeout {
                url: name.clone(),
                after: limits.timeout,
            }
        } else {
            SourceError::Transport {
                url: name.clone(),
                detail: chain(&e),
            }
        }
    };
    let mut request = client.get(url.clone()).timeout(limits.timeout);
    if let Some(etag) = &validators.etag {
        request = request.header(reqwest::header::IF_NONE_MATCH, etag);
    }
    if let Some(lm) = &validators.last_modified {
        request = request.header(reqwest::header::IF_MODIFIED_SINCE, lm);
    }
    let mut response = request.send().await.map_err(transport)?;
    let status = response.status();
    if status == reqwest::StatusCode::NOT_MODIFIED {
        return Ok(Fetched::NotModified);
    }
    if !status.is_success() {
        return Err(SourceError::Status {
            url: name,
            status: status.as_u16(),
        });
    }
    let too_large = || SourceError::TooLarge {
        url: name.clone(),
        max_bytes: limits.max_bytes,
    };
    if response
        .content_length()
        .is_some_and(|n| n > limits.max_bytes)
    {
        return Err(too_large());
    }
    let header = |h| {
        response
            .headers()
            .get(h)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let validators = Validators {
        etag: header(reqwest::header::ETAG),
        last_modified: header(reqwest::header::LAST_MODIFIED),
    };
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(transport)? {
        if body.len() as u64 + chunk.len() as u64 > limits.max_bytes {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    // Tor's directory protocol: `<path>.z` is the document zlib-compressed
    // (tor's own mirrors serve the consensus this way).
    if url.path().ends_with(".z") {
        body = inflate(&body, limits.max_bytes).map_err(|detail| SourceError::Transport {
            url: name.clone(),
            detail,
        })?;
    }
    Ok(Fetched::Body {
        body,
        validators,
        fetched: SystemTime::now(),
    })
}

/// zlib-decompresses `body`, refusing more than `max_bytes` of output.
fn inflate(body: &[u8], max_bytes: u64) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    flate2::read::ZlibDecoder::new(body)
        .take(max_bytes + 1)
        .read_to_end(&mut out)
        .map_err(|e| format!("a .z document that is not zlib data ({e})"))?;
    if out.len() as u64 > max_bytes {
        return Err(format!("decompresses to more than max_bytes = {max_bytes}"));
    }
    Ok(out)
}

/// The authority certificates of a consensus feed (see
/// [`FeedConfig::certs_location`](super::config::FeedConfig::certs_location)):
/// read, or fetched with a client of their own (they are small, and only
/// asked for when a new consensus arrived).
pub async fn fetch_certs(
    location: Option<&Location>,
    limits: &Limits,
    allow_http: bool,
) -> Result<Vec<u8>, String> {
    let location = location.ok_or(NO_CERTS)?;
    let client = client_for(location, limits, allow_http).map_err(|e| e.to_string())?;
    body_of(fetch(client.as_ref(), location, &Validators::default(), limits).await)
}

/// The bytes of an unconditional fetch or read (one without validators
/// is never answered "not modified").
pub fn body_of(fetched: Result<Fetched, SourceError>) -> Result<Vec<u8>, String> {
    match fetched {
        Ok(Fetched::Body { body, .. }) => Ok(body),
        Ok(Fetched::NotModified) => Err("not modified, without having been fetched".into()),
        Err(e) => Err(e.to_string()),
    }
}

const NO_CERTS: &str = "authority_certs is not set, and this location has none by default (a tordir: or a mirror URL has)";

/// The authority certificates of a consensus read at start: a local file
/// only (start-up never waits for the network).
pub fn read_certs(location: Option<&Location>, max_bytes: u64) -> Result<Vec<u8>, String> {
    match location.ok_or(NO_CERTS)? {
        Location::Path(path) => body_of(fetch_file(path, max_bytes)),
        _ => Err(
            "certificates over the network are not fetched at start; set authority_certs to a file"
                .into(),
        ),
    }
}

/// Reads a local feed file unconditionally.
pub fn fetch_file(path: &Path, max_bytes: u64) -> Result<Fetched, SourceError> {
    read_file(path, &Validators::default(), max_bytes)
}

/// Size and modification time of a file: what stands in for an HTTP
/// validator locally (`-` for a file that is not there).
fn stamp_of(path: &Path) -> String {
    match fs::metadata(path) {
        Ok(meta) => format!(
            "{}:{}",
            meta.len(),
            meta.modified()
                .ok()
                .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ),
        Err(_) => "-".into(),
    }
}

/// A tor DataDirectory's consensus, read again when it or the
/// microdescriptors (whose exit policies a microdesc consensus needs, and
/// which tor fetches after it) changed.
fn read_tordir(
    dir: &Path,
    validators: &Validators,
    max_bytes: u64,
) -> Result<Fetched, SourceError> {
    let consensus = tordir_consensus(dir)?;
    let stamp = [
        consensus.clone(),
        dir.join("cached-microdescs"),
        dir.join("cached-microdescs.new"),
    ]
    .iter()
    .map(|p| stamp_of(p))
    .collect::<Vec<_>>()
    .join(",");
    if validators.last_modified.as_deref() == Some(stamp.as_str()) {
        return Ok(Fetched::NotModified);
    }
    match read_file(&consensus, &Validators::default(), max_bytes)? {
        Fetched::Body { body, fetched, .. } => Ok(Fetched::Body {
            body,
            validators: Validators {
                etag: None,
                last_modified: Some(stamp),
            },
            fetched,
        }),
        Fetched::NotModified => Ok(Fetched::NotModified),
    }
}

/// Reads a local feed file; its modification time and size stand in for an
/// HTTP validator, so an unchanged file is not parsed again.
fn read_file(path: &Path, validators: &Validators, max_bytes: u64) -> Result<Fetched, SourceError> {
    let read_err = |source| SourceError::Read {
        path: path.to_owned(),
        source,
    };
    let meta = fs::metadata(path).map_err(read_err)?;
    let stamp = stamp_of(path);
    if validators.last_modified.as_deref() == Some(stamp.as_str()) {
        return Ok(Fetched::NotModified);
    }
    if meta.len() > max_bytes {
        return Err(SourceError::TooLarge {
            url: path.display().to_string(),
            max_bytes,
        });
    }
    let mut body = Vec::new();
    fs::File::open(path)
        .and_then(|f| f.take(max_bytes + 1).read_to_end(&mut body))
        .map_err(read_err)?;
    Ok(Fetched::Body {
        body,
        validators: Validators {
            etag: None,
            last_modified: Some(stamp),
        },
        fetched: SystemTime::now(),
    })
}

/// What the cache keeps beside a body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheMeta {
    pub name: String,
    pub location: String,
    pub format: FeedFormat,
    pub validators: Validators,
    /// When the body was fetched (RFC 3339).
    pub fetched: String,
    pub bytes: usize,
}

impl CacheMeta {
    pub fn fetched_time(&self) -> Option<SystemTime> {
        humantime::parse_rfc3339(&self.fetched).ok()
    }
}

const CACHE_MAGIC: &str = "torsensor-feed-cache 1";

/// The last-known-good feeds: `<state_dir>/feeds/<name>.cache`, one file per
/// feed (a magic line, a JSON metadata line, then the body as fetched),
/// replaced atomically so that a crash leaves the old or the new copy. The
/// state directory and `feeds/` are checked before every write
/// ([`crate::statedir`]); links are never followed, reading or writing.
#[derive(Debug, Clone)]
pub struct Cache {
    state_dir: PathBuf,
    dir: PathBuf,
}

/// Opens a cache file for reading without following a link.
fn open_nofollow(path: &Path) -> std::io::Result<fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

impl Cache {
    pub fn new(state_dir: &Path) -> Self {
        Cache {
            state_dir: state_dir.to_owned(),
            dir: state_dir.join("feeds"),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.cache"))
    }

    /// Reads a cached feed; `Ok(None)` when there is none.
    pub fn load(&self, name: &str) -> Result<Option<(CacheMeta, Vec<u8>)>, SourceError> {
        let path = self.path(name);
        let file = match open_nofollow(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(SourceError::Read { path, source }),
        };
        let mut reader = BufReader::new(file);
        let meta = read_header(&mut reader, &path)?;
        // Not `with_capacity(meta.bytes)`: the header is checked against
        // the body below, not trusted before.
        let mut body = Vec::new();
        reader
            .read_to_end(&mut body)
            .map_err(|source| SourceError::Read {
                path: path.clone(),
                source,
            })?;
        if body.len() != meta.bytes {
            return Err(SourceError::BadCache {
                path,
                reason: format!("{} body bytes, header says {}", body.len(), meta.bytes),
            });
        }
        Ok(Some((meta, body)))
    }

    /// Only the metadata of a cached feed.
    pub fn meta(&self, name: &str) -> Result<Option<CacheMeta>, SourceError> {
        let path = self.path(name);
        match open_nofollow(&path) {
            Ok(f) => read_header(&mut BufReader::new(f), &path).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(SourceError::Read { path, source }),
        }
    }

    /// Writes a feed's last-known-good copy (mode 0640), after checking the
    /// state directory and `feeds/` (created 0750 when missing).
    pub fn store(&self, meta: &CacheMeta, body: &[u8]) -> Result<(), SourceError> {
        use crate::statedir::{Dir, STATE_DIR_MODE};
        let mut bytes = Vec::with_capacity(body.len() + 512);
        bytes.extend_from_slice(CACHE_MAGIC.as_bytes());
        bytes.push(b'\n');
        serde_json::to_writer(&mut bytes, meta).expect("meta serializes");
        bytes.push(b'\n');
        bytes.extend_from_slice(body);
        let feeds = Dir::open(&self.state_dir, STATE_DIR_MODE)?.subdir("feeds", STATE_DIR_MODE)?;
        feeds.write_atomic(&format!("{}.cache", meta.name), &bytes, 0o640, true)?;
        Ok(())
    }
}

fn read_header(reader: &mut impl BufRead, path: &Path) -> Result<CacheMeta, SourceError> {
    let bad = |reason: String| SourceError::BadCache {
        path: path.to_owned(),
        reason,
    };
    let mut magic = String::new();
    let mut meta = String::new();
    reader
        .read_line(&mut magic)
        .and_then(|_| reader.read_line(&mut meta))
        .map_err(|source| SourceError::Read {
            path: path.to_owned(),
            source,
        })?;
    if magic.trim_end() != CACHE_MAGIC {
        return Err(bad(format!("first line is not {CACHE_MAGIC:?}")));
    }
    serde_json::from_str(&meta).map_err(|e| bad(format!("metadata line: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations() {
        assert!(matches!(
            Location::parse("https://check.torproject.org/exit-addresses", false),
            Ok(Location::Url(_))
        ));
        assert!(matches!(
            Location::parse("http://127.0.0.1:8080/x", false),
            Ok(Location::Url(_))
        ));
        assert!(matches!(
            Location::parse("http://[::1]:8080/x", false),
            Ok(Location::Url(_))
        ));
        assert!(matches!(
            Location::parse("http://localhost/x", false),
            Ok(Location::Url(_))
        ));
        let err = Location::parse("http://mirror.example/x", false).unwrap_err();
        assert!(err.to_string().contains("allow_http"), "{err}");
        assert!(Location::parse("http://mirror.example/x", true).is_ok());
        assert!(Location::parse("ftp://x/y", false).is_err());
        let err = Location::parse("https://user:secret@mirror.example/x", false).unwrap_err();
        assert!(err.to_string().contains("credentials"), "{err}");
        assert_eq!(
            Location::parse("/var/lib/x.txt", false).unwrap(),
            Location::Path("/var/lib/x.txt".into())
        );
    }

    #[test]
    fn cache_round_trip_and_damage() {
        let dir = std::env::temp_dir().join(format!("torsensor-cache-{}", std::process::id()));
        let cache = Cache::new(&dir);
        assert!(cache.load("x").unwrap().is_none());
        let meta = CacheMeta {
            name: "x".into(),
            location: "https://a/b".into(),
            format: FeedFormat::Plain,
            validators: Validators {
                etag: Some("\"v1\"".into()),
                last_modified: None,
            },
            fetched: "2026-11-24T10:00:00Z".into(),
            bytes: 8,
        };
        cache.store(&meta, b"1.2.3.4\n").unwrap();
        let (back, body) = cache.load("x").unwrap().unwrap();
        assert_eq!(back, meta);
        assert_eq!(body, b"1.2.3.4\n");
        assert_eq!(cache.meta("x").unwrap().unwrap(), meta);
        // A truncated file is reported, not half-loaded.
        let bytes = fs::read(cache.path("x")).unwrap();
        fs::write(cache.path("x"), &bytes[..bytes.len() - 3]).unwrap();
        let err = cache.load("x").unwrap_err();
        assert!(err.to_string().contains("damaged"), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }

    /// Seen while writing the `feed_cache` fuzz target, confirmed through
    /// it: a damaged header's `bytes` was the capacity of the body buffer
    /// (usize::MAX panicked with "capacity overflow", 10^12 aborted the
    /// process on allocation).
    #[test]
    fn a_huge_size_in_the_header_is_damage_not_an_allocation() {
        let dir = std::env::temp_dir().join(format!("ts-cache-size-{}", std::process::id()));
        let cache = Cache::new(&dir);
        std::fs::create_dir_all(dir.join("feeds")).unwrap();
        for bytes in ["18446744073709551615", "1000000000000"] {
            let file = format!(
                "{CACHE_MAGIC}\n{{\"name\":\"x\",\"location\":\"/x\",\"format\":\"plain\",\"validators\":{{}},\"fetched\":\"2024-03-12T14:30:00Z\",\"bytes\":{bytes}}}\n1.2.3.4\n"
            );
            std::fs::write(cache.path("x"), file).unwrap();
            let err = cache.load("x").unwrap_err().to_string();
            assert!(
                err.contains(&format!("8 body bytes, header says {bytes}")),
                "{err}"
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unchanged_local_file_is_not_modified() {
        let path = std::env::temp_dir().join(format!("torsensor-file-{}", std::process::id()));
        fs::write(&path, "1.2.3.4\n").unwrap();
        let Fetched::Body { validators, .. } =
            read_file(&path, &Validators::default(), 100).unwrap()
        else {
            panic!("first read has a body")
        };
        assert!(matches!(
            read_file(&path, &validators, 100).unwrap(),
            Fetched::NotModified
        ));
        assert!(matches!(
            read_file(&path, &Validators::default(), 4),
            Err(SourceError::TooLarge { .. })
        ));
        fs::remove_file(&path).unwrap();
    }

    #[test]
    fn z_documents_are_inflated_within_max_bytes() {
        use std::io::Write as _;
        let text = "network-status-version 3 microdesc\n".repeat(1000);
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(text.as_bytes()).unwrap();
        let z = z.finish().unwrap();
        assert_eq!(inflate(&z, 1 << 20).unwrap(), text.as_bytes());
        let e = inflate(&z, 1000).unwrap_err();
        assert_eq!(e, "decompresses to more than max_bytes = 1000");
        let e = inflate(b"network-status-version 3", 1 << 20).unwrap_err();
        assert!(e.starts_with("a .z document that is not zlib data"), "{e}");
    }
}
