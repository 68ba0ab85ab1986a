//! Feed refresh against a real HTTP server on loopback serving the real
//! fixture files, and misbehaving: every bad answer is rejected with a clear
//! reason and the feed keeps what it had.

mod common;

use std::time::Duration;

use common::http::{BULK, Behavior, FeedServer, ONIONOO, TORDNSEL, fixture};
use common::temp_path;
use sensor_daemon::config::SensorConfig;
use sensor_daemon::feed::config::FeedConfig;
use sensor_daemon::feed::manager::{FeedManager, RefreshError};
use sensor_daemon::feed::source::SourceError;
use sensor_daemon::feed::{Origin, ParseError};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn config(name: &str, feeds: Vec<FeedConfig>) -> SensorConfig {
    let state_dir = temp_path(&format!("state-{name}"));
    let _ = std::fs::remove_dir_all(&state_dir);
    SensorConfig {
        state_dir,
        feeds,
        ..Default::default()
    }
}

fn feed(name: &str, url: String) -> FeedConfig {
    FeedConfig {
        name: name.into(),
        location: url,
        timeout: Duration::from_secs(2),
        connect_timeout: Duration::from_secs(1),
        max_bytes: 4 << 20,
        ..Default::default()
    }
}

fn exits(m: &FeedManager) -> usize {
    m.states[0]
        .current
        .as_ref()
        .map(|f| f.counts().exit_v4)
        .unwrap_or(0)
}

/// What a misbehaving answer must be rejected as.
type Expect = Box<dyn Fn(&RefreshError) -> bool>;

#[test]
fn conditional_refresh_cache_and_every_misbehaviour() {
    let server = FeedServer::start();
    server.serve("/exit-addresses", &fixture(TORDNSEL));
    let cfg = config(
        "misbehave",
        vec![feed("exits", server.url("/exit-addresses"))],
    );
    cfg.validate().unwrap();
    let rt = runtime();
    let mut m = FeedManager::load_offline(cfg.feed_settings());
    assert!(m.needs_embedded(), "nothing cached yet");

    // First fetch: the real TorDNSEL list, cached.
    let acc = rt.block_on(m.refresh_once(0)).unwrap().unwrap();
    assert_eq!(acc.counts.exit_v4, 1174);
    assert_eq!(acc.counts.relays, 2372);
    assert_eq!(
        m.states[0].current.as_ref().unwrap().origin,
        Origin::Network
    );
    let first = &server.seen()[0];
    assert!(
        first.headers["user-agent"].starts_with("torsensor/"),
        "{first:?}"
    );
    assert!(first.headers["accept-encoding"].contains("gzip"));
    assert!(!first.headers.contains_key("if-none-match"));

    // Second fetch: conditional, 304, nothing changes.
    assert!(rt.block_on(m.refresh_once(0)).unwrap().is_none());
    let second = server.seen().last().unwrap().clone();
    assert_eq!(second.status, 304);
    assert!(second.headers["if-none-match"].starts_with('"'));
    assert_eq!(
        second.headers["if-modified-since"],
        "Tue, 12 Mar 2024 14:30:00 GMT"
    );
    assert_eq!(exits(&m), 1174);

    let half = fixture(TORDNSEL);
    let cases: Vec<(&str, Behavior, Expect)> = vec![
        (
            "HTTP 500",
            Behavior::Status(500),
            Box::new(|e| matches!(e, RefreshError::Fetch(SourceError::Status { status: 500, .. }))),
        ),
        (
            "slow body past the timeout",
            Behavior::Slow {
                body: half.clone(),
                bytes_per_step: 4096,
                step: Duration::from_millis(100),
            },
            Box::new(|e| matches!(e, RefreshError::Fetch(SourceError::Timeout { .. }))),
        ),
        (
            "truncated body",
            Behavior::Truncated { body: half.clone() },
            Box::new(|e| matches!(e, RefreshError::Fetch(SourceError::Transport { .. }))),
        ),
        (
            "HTML page",
            Behavior::Raw {
                body: b"<!DOCTYPE html><html><head><title>503 Service Unavailable</title></head></html>".to_vec(),
                content_type: "text/html",
            },
            Box::new(|e| matches!(e, RefreshError::Parse { source: ParseError::Html { .. }, .. })),
        ),
        (
            "empty 200",
            Behavior::Raw {
                body: Vec::new(),
                content_type: "text/plain",
            },
            Box::new(|e| matches!(e, RefreshError::Parse { source: ParseError::Empty, .. })),
        ),
        (
            "rate-limit sentence in a 200",
            Behavior::Raw {
                body: b"Umm... You can only fetch the data every 30 minutes - sorry.  It's pointless faster as I only update every 30 minutes anyway.\n".to_vec(),
                content_type: "text/plain",
            },
            Box::new(|e| {
                matches!(e, RefreshError::Parse { source: ParseError::Unrecognised { .. }, .. })
                    && e.to_string().contains("Umm... You can only fetch")
            }),
        ),
        (
            "oversized body",
            Behavior::Raw {
                body: vec![b'1'; 5 << 20],
                content_type: "text/plain",
            },
            Box::new(|e| matches!(e, RefreshError::Fetch(SourceError::TooLarge { .. }))),
        ),
        (
            "a list that shrank by 90 %",
            Behavior::Serve {
                body: String::from_utf8(fixture(TORDNSEL))
                    .unwrap()
                    .lines()
                    .take(400)
                    .collect::<Vec<_>>()
                    .join("\n")
                    .into_bytes(),
                etag: "\"small\"".into(),
            },
            Box::new(|e| matches!(e, RefreshError::Shrink { before: 1174, .. })),
        ),
    ];
    for (what, behavior, expected) in cases {
        server.set("/exit-addresses", behavior);
        let err = rt.block_on(m.refresh_once(0)).expect_err(what);
        let line = err.to_string();
        assert!(expected(&err), "{what}: unexpected error {err:?}");
        assert!(!line.contains('\n'), "{what}: not one line: {line}");
        assert!(line.contains("127.0.0.1"), "{what}: no location in {line}");
        assert_eq!(exits(&m), 1174, "{what}: the old set must stay");
        assert_eq!(m.states[0].last_error.as_deref(), Some(line.as_str()));
        eprintln!("{what}: rejected: {line}");
    }
    assert_eq!(m.states[0].failures, 8);
    // Back-off after failures, capped by the refresh interval.
    assert!(m.next_delay(0) <= Duration::from_secs(3600).mul_f64(1.25));

    // The cache kept the last good copy (not any rejected body): a new
    // manager starts from it without the network.
    drop(server);
    let m2 = FeedManager::load_offline(cfg.feed_settings());
    let cached = m2.states[0].current.as_ref().unwrap();
    assert_eq!(cached.origin, Origin::Cache);
    assert_eq!(cached.counts().exit_v4, 1174);
    assert!(!m2.needs_embedded());
}

#[test]
fn gzip_onionoo_and_a_bulk_list_side_by_side() {
    let server = FeedServer::start();
    server.serve("/details", &fixture(ONIONOO));
    server.serve("/torbulkexitlist", &fixture(BULK));
    let cfg = config(
        "two",
        vec![
            feed("relays", server.url("/details")),
            feed("bulk", server.url("/torbulkexitlist")),
        ],
    );
    let rt = runtime();
    let mut m = FeedManager::load_offline(cfg.feed_settings());
    let relays = rt.block_on(m.refresh_once(0)).unwrap().unwrap();
    assert_eq!(relays.counts.relay_v4 + relays.counts.relay_v6, 8344);
    assert_eq!(relays.counts.relays, 7607);
    let bulk = rt.block_on(m.refresh_once(1)).unwrap().unwrap();
    assert_eq!(bulk.counts.exit_v4, 1174);
    // The server compressed what it sent.
    let seen = server.seen();
    assert!(
        seen.iter()
            .all(|s| s.headers["accept-encoding"].contains("gzip"))
    );
    let set = m.feed_set().unwrap();
    assert_eq!(set.feeds().len(), 2);
    assert_eq!(set.or_ports().len(), 11239);
}

#[test]
fn plain_http_elsewhere_than_loopback_is_refused_before_any_request() {
    let cfg = config(
        "http",
        vec![feed("mirror", "http://mirror.example.invalid/list".into())],
    );
    let err = cfg.validate().unwrap_err().to_string();
    assert!(err.contains("allow_http"), "{err}");
}

#[test]
fn every_redirect_hop_must_pass_the_location_rules() {
    // A loopback http feed may be fetched; a redirect from it to plain http
    // elsewhere must be refused before any connection is made there (the
    // target is a documentation address, never contacted), after a first
    // hop that is itself fine (loopback to loopback).
    let server = FeedServer::start();
    server.set(
        "/list",
        Behavior::Redirect {
            status: 302,
            location: server.url("/moved"),
        },
    );
    server.set(
        "/moved",
        Behavior::Redirect {
            status: 302,
            location: "http://192.0.2.1/x".into(),
        },
    );
    let cfg = config("redirect", vec![feed("hop", server.url("/list"))]);
    cfg.validate().unwrap();
    let rt = runtime();
    let mut m = FeedManager::load_offline(cfg.feed_settings());
    let started = std::time::Instant::now();
    let err = rt.block_on(m.refresh_once(0)).unwrap_err();
    let line = err.to_string();
    assert!(
        matches!(err, RefreshError::Fetch(SourceError::Transport { .. })),
        "{err:?}"
    );
    assert!(
        line.contains("redirect to http://192.0.2.1/x refused"),
        "the refused hop is named: {line}"
    );
    assert!(line.contains("allow_http"), "{line}");
    eprintln!("refused: {line}");
    assert!(!line.contains('\n'), "{line}");
    // Refused at once, not after a connect timeout to the target.
    assert!(started.elapsed() < Duration::from_millis(900), "{line}");
    let paths: Vec<String> = server.seen().into_iter().map(|s| s.path).collect();
    assert_eq!(paths, ["/list", "/moved"]);
    assert!(m.states[0].current.is_none());

    // A redirect to a scheme that is not http(s) is refused the same way.
    server.set(
        "/moved",
        Behavior::Redirect {
            status: 307,
            location: "ftp://127.0.0.1/x".into(),
        },
    );
    let line = rt.block_on(m.refresh_once(0)).unwrap_err().to_string();
    assert!(
        line.contains("redirect to ftp://127.0.0.1/x refused"),
        "{line}"
    );
}
