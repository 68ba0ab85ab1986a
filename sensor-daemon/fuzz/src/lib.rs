//! What the fuzz targets share: the checks run on a parsed feed, and a
//! scratch directory for the parsers that read files.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use sensor_daemon::feed::parse::{self, FeedFormat};
use sensor_daemon::feed::{Feed, FeedSet, Origin, ParseOptions};
use sensor_daemon::net::Direction;
use sensor_daemon::net::normalize;

/// Parses `data` as `format` (reserved entries and wide prefixes kept) and
/// as whatever it is detected to be (both refused), then does what the
/// daemon does with an accepted body: merges it into a feed set and looks
/// up the first address. Panics only on a broken invariant.
pub fn feed(data: &[u8], format: FeedFormat) {
    for (format, allow) in [(Some(format), true), (None, false)] {
        let options = ParseOptions {
            allow_reserved: allow,
            allow_wide_prefixes: allow,
        };
        let parsed = match parse::parse_with(data, format, &options) {
            Ok(parsed) => parsed,
            Err(e) => {
                let _ = e.to_string();
                continue;
            }
        };
        assert!(
            !parsed.exits.is_empty() || !parsed.or_ports.is_empty(),
            "an accepted body has entries"
        );
        assert!(parsed.report.bad.len() <= parsed.report.bad_count);
        for net in parsed.exits.keys() {
            assert_eq!(normalize(*net), *net, "exit prefixes are normalised");
        }
        for info in parsed.exits.values() {
            assert!(
                info.relays
                    .iter()
                    .all(|&r| (r as usize) < parsed.relays.len())
            );
        }
        for relays in parsed.or_ports.values() {
            assert!(relays.iter().all(|&r| (r as usize) < parsed.relays.len()));
        }
        let first = parsed
            .exits
            .keys()
            .next()
            .map(|n| n.addr())
            .or_else(|| parsed.or_ports.keys().next().map(|sa| sa.ip()));
        let feed = Feed {
            name: "fuzz".into(),
            location: "fuzz".into(),
            origin: Origin::Network,
            fetched: None,
            data: parsed,
        };
        let _ = feed.counts();
        let set = FeedSet::new(vec![Arc::new(feed)]).expect("one feed fits");
        if let Some(ip) = first {
            assert!(
                !set.lookup(ip, None).is_empty(),
                "the first entry of a feed matches"
            );
            let _ = set.classify(ip, 9001, Direction::Egress);
        }
    }
}

/// A directory of this process for the targets that read files: in
/// `/dev/shm` when there is one (no disk writes), else the temp directory.
/// Emptied on every call.
pub fn scratch_dir(name: &str) -> PathBuf {
    let base = Path::new("/dev/shm");
    let base = if base.is_dir() {
        base.to_owned()
    } else {
        std::env::temp_dir()
    };
    let dir = base.join(format!("torsensor-fuzz-{name}-{}", std::process::id()));
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => panic!("cannot empty {}: {e}", dir.display()),
    }
    std::fs::create_dir_all(&dir).expect("scratch directory");
    dir
}

/// A file name nothing can exist at: file names in a fuzzed configuration
/// (`token_file`, `ca_file`) are pointed here before validation, so that the
/// fuzzer never makes the target read a device or a FIFO.
pub const NO_FILE: &str = "/nonexistent/torsensor-fuzz";

/// Authority key certificates: every accepted certificate has a 40-digit
/// identity and signing-key digest; refused ones say why.
pub fn certs(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let certs = sensor_daemon::feed::verify::parse_certs(text, std::time::SystemTime::UNIX_EPOCH);
    for cert in &certs.certs {
        assert_eq!(cert.identity.len(), 40);
        assert_eq!(cert.signing_key_digest.len(), 40);
    }
    assert!(certs.refused.iter().all(|r| r.starts_with("certificate ")));
}

/// Microdescriptors (`cached-microdescs`): every digest is 43 characters of
/// unpadded base64; applying them to a consensus keeps the feed consistent.
pub fn microdescs(data: &[u8]) {
    use sensor_daemon::feed::parse::consensus::{apply_microdescs, microdesc_policies};
    let text = String::from_utf8_lossy(data);
    let policies = microdesc_policies(&text);
    assert!(policies.keys().all(|d| d.len() == 43));
    let consensus = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../data/consensus/lab/cached-microdesc-consensus"
    );
    static LAB: std::sync::OnceLock<Option<sensor_daemon::feed::ParsedFeed>> =
        std::sync::OnceLock::new();
    let lab = LAB.get_or_init(|| {
        let body = std::fs::read(consensus).ok()?;
        Some(parse::parse(&body, None, true).expect("the lab consensus parses"))
    });
    let Some(mut feed) = lab.clone() else {
        return;
    };
    apply_microdescs(&mut feed, &policies, true);
    for info in feed.exits.values() {
        assert!(!info.relays.is_empty(), "no exit entry without a relay");
        assert!(
            info.relays
                .iter()
                .all(|&r| (r as usize) < feed.relays.len())
        );
    }
}
