//! `torsensor history import|status` and `torsensor check --at`, with the
//! real binary on real documents: the 2024-03-12 exit list in CollecTor's
//! wrapping, real consensuses of the public network (2026-01-29 and
//! 2026-07-27) and of tor's own test network, the latter streamed from a
//! `.tar.xz` made here by the system's `tar` and `xz`. No root needed.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::capture::text;
use common::{data, temp_path, torsensor};
use serde_json::Value;

/// A CollecTor-style monthly archive: members under
/// `consensuses-2026-07/27/`, each with the `@type` line CollecTor adds,
/// packed and compressed by the real tools.
fn consensus_archive(dir: &Path) -> PathBuf {
    let root = dir.join("src");
    let day = root.join("consensuses-2026-07/27");
    std::fs::create_dir_all(&day).unwrap();
    let members = [
        (
            "2026-07-27-10-00-00-consensus",
            "network-status-consensus-3 1.0",
            "consensus/live-truncated/consensus",
        ),
        (
            "2026-07-27-10-00-00-consensus-microdesc",
            "network-status-microdesc-consensus-3 1.0",
            "consensus/live-truncated/consensus-microdesc",
        ),
        (
            "2000-01-01-00-02-20-consensus",
            "network-status-consensus-3 1.0",
            "consensus/arti-testdata2/cached-consensus",
        ),
    ];
    for (name, kind, source) in members {
        let mut bytes = format!("@type {kind}\n").into_bytes();
        bytes.extend(std::fs::read(data(source)).unwrap());
        std::fs::write(day.join(name), bytes).unwrap();
    }
    let archive = dir.join("consensuses-2026-07.tar.xz");
    let status = Command::new("tar")
        .arg("-cJf")
        .arg(&archive)
        .arg("-C")
        .arg(&root)
        .arg("consensuses-2026-07")
        .status()
        .expect("run tar (with xz)");
    assert!(status.success());
    archive
}

fn check_at(history: &str, at: &str, address: &str) -> Output {
    torsensor(&["check", "--history", history, "--at", at, address])
}

fn json_lines(out: &Output) -> Vec<Value> {
    text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn import_real_documents_and_archives_then_ask_at_times() {
    let dir = temp_path("history-real");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let history = dir.join("history");
    let h = history.to_str().unwrap();

    // Single documents: an exit list (CollecTor wrapping) and a consensus
    // as tor serves it (no @type line).
    let exit_list = data("history/2024-03-12-14-30-00");
    let ns = data("consensus/live-truncated/consensus-ns");
    let out = torsensor(&[
        "history",
        "import",
        "--history",
        h,
        exit_list.to_str().unwrap(),
        ns.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.starts_with("imported 2 documents (1 consensuses, 1 exit lists"),
        "{stdout}"
    );

    // The archive, streamed: three members.
    let archive = consensus_archive(&dir);
    let a = archive.to_str().unwrap();
    let out = torsensor(&["history", "import", "--history", h, a]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("imported 3 documents (3 consensuses, 0 exit lists"),
        "{}",
        text(&out.stdout)
    );
    let index = std::fs::read(history.join("index.tshist")).unwrap();

    // Idempotent: again, nothing changes.
    let out = torsensor(&["history", "import", "--history", h, a]);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        text(&out.stdout).starts_with("imported 0 documents"),
        "{}",
        text(&out.stdout)
    );
    assert!(text(&out.stdout).contains("3 already in the index"));
    assert_eq!(std::fs::read(history.join("index.tshist")).unwrap(), index);

    let out = torsensor(&["history", "status", "--history", h, "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["documents"], 5);
    assert_eq!(status["consensuses"], 4);
    assert_eq!(status["exit_lists"], 1);
    assert_eq!(status["span"][0], "2000-01-01T00:02:20Z");
    assert_eq!(status["span"][1], "2026-07-27T11:00:00Z");

    // lisdex (152.53.144.50:8443) is a relay on 2026-01-29 15:00 and on
    // 2026-07-27 10:00, not in between.
    let lisdex = "152.53.144.50";
    let out = check_at(h, "2026-07-27T10:30:00Z", lisdex);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.starts_with("152.53.144.50\tlisted\tat 2026-07-27T10:30:00Z\n  relay first_seen=2026-07-27T10:00:00Z last_seen=2026-07-27T11:00:00Z distance=0s fingerprint=000004ACBB9D29BCBA17256BB35928DDBFC8ABA9 nickname=lisdex orports=8443"),
        "{stdout}"
    );
    let out = check_at(h, "2026-03-15T00:00:00Z", lisdex);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stdout),
        "152.53.144.50\tnot-listed\tat 2026-03-15T00:00:00Z\n"
    );
    let out = check_at(h, "2026-01-29T15:30:00Z", lisdex);
    assert_eq!(out.status.code(), Some(0));
    // The ORPort decides when given.
    let out = check_at(h, "2026-07-27T10:30:00Z", "152.53.144.50:8443");
    assert_eq!(out.status.code(), Some(0));
    let out = check_at(h, "2026-07-27T10:30:00Z", "152.53.144.50:443");
    assert_eq!(out.status.code(), Some(1));

    // Ukko only in July's document (ukko, an authority, is in every
    // one); an hour after its interval, the distance says so; with a zero
    // window it is no match. Its IPv6 ORPort too.
    let ukko = "95.216.33.30";
    assert_eq!(
        check_at(h, "2026-01-29T15:30:00Z", ukko).status.code(),
        Some(1)
    );
    let out = torsensor(&[
        "check",
        "--history",
        h,
        "--at",
        "2026-07-27T12:00:00Z",
        "--json",
        ukko,
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let doc = &json_lines(&out)[0];
    assert_eq!(doc["listed"], true);
    let m = &doc["matches"][0];
    assert_eq!(m["role"], "relay");
    assert_eq!(m["nickname"], "Ukko");
    assert_eq!(m["or_ports"], serde_json::json!([443]));
    assert_eq!(
        m["flags"],
        serde_json::json!([
            "Fast", "Guard", "HSDir", "Running", "Stable", "V2Dir", "Valid"
        ])
    );
    let out = check_at(h, "2026-07-27T10:00:00Z", "[2a01:4f9:2a:2145::1]:443");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    assert_eq!(
        m["torsensor.tor.history.first_seen"],
        "2026-07-27T10:00:00Z"
    );
    assert_eq!(m["torsensor.tor.history.last_seen"], "2026-07-27T11:00:00Z");
    assert_eq!(m["torsensor.tor.history.distance"], 3600);
    let out = torsensor(&[
        "check",
        "--history",
        h,
        "--at",
        "2026-07-27T12:00:00Z",
        "--window-before",
        "0s",
        ukko,
    ]);
    assert_eq!(out.status.code(), Some(1));

    // An exit of 2024-03-12 shared by 12 relays: seen exiting then (the
    // test times are 2024-03-10..12), not a month later.
    let out = torsensor(&[
        "check",
        "--history",
        h,
        "--at",
        "2024-03-12T12:00:00Z",
        "--json",
        "::ffff:23.137.251.61",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let doc = &json_lines(&out)[0];
    let matches = doc["matches"].as_array().unwrap();
    assert_eq!(matches.len(), 12);
    assert!(matches.iter().all(|m| m["role"] == "exit"));
    assert_eq!(
        check_at(h, "2024-04-12T12:00:00Z", "23.137.251.61")
            .status
            .code(),
        Some(1)
    );
}

#[test]
fn bad_input_is_one_line_per_file_and_the_rest_is_kept() {
    let dir = temp_path("history-bad");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let history = dir.join("history");
    let h = history.to_str().unwrap();
    let junk = dir.join("junk.txt");
    std::fs::write(&junk, "<html><title>502</title></html>").unwrap();
    // An archive cut in the middle: its first member may come through,
    // the rest is one error naming the archive.
    let archive = consensus_archive(&dir);
    let whole = std::fs::read(&archive).unwrap();
    let cut = dir.join("cut.tar.xz");
    std::fs::write(&cut, &whole[..whole.len() / 2]).unwrap();
    let exit_list = data("history/2024-03-12-14-30-00");
    let out = torsensor(&[
        "history",
        "import",
        "--history",
        h,
        junk.to_str().unwrap(),
        cut.to_str().unwrap(),
        dir.join("missing").to_str().unwrap(),
        exit_list.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let errors: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("  error: "))
        .collect();
    assert_eq!(errors.len(), 3, "{stdout}");
    assert!(errors[0].contains("junk.txt: an HTML page"), "{stdout}");
    assert!(errors[1].contains("cut.tar.xz"), "{stdout}");
    assert!(errors[2].contains("missing: No such file"), "{stdout}");
    assert!(stdout.contains("1 exit lists"), "{stdout}");

    // A damaged index is never overwritten.
    let path = history.join("index.tshist");
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    let out = torsensor(&[
        "history",
        "import",
        "--history",
        h,
        exit_list.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("checksum mismatch; move it away"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(std::fs::read(&path).unwrap(), bytes);

    // No index: check --at says what to do.
    let out = check_at(
        dir.join("none").to_str().unwrap(),
        "2024-03-12T12:00:00Z",
        "1.2.3.4",
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("run `torsensor history import` first"),
        "{}",
        text(&out.stderr)
    );
}

/// Today's documents by URL: the exit list and a consensus served by a
/// server on loopback, as check.torproject.org and a directory mirror
/// serve them (no `@type` line), and the archive as a download.
#[test]
fn import_todays_documents_by_url() {
    let dir = temp_path("history-url");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let history = dir.join("history");
    let h = history.to_str().unwrap();
    let server = common::http::FeedServer::start();
    server.serve(
        "/exit-addresses",
        &std::fs::read(data("exit-addresses_check.torproject.org_2024-03-12.txt")).unwrap(),
    );
    server.serve(
        "/tor/status-vote/current/consensus",
        &std::fs::read(data("consensus/live-truncated/consensus")).unwrap(),
    );
    let archive = consensus_archive(&dir);
    server.serve("/archive.tar.xz", &std::fs::read(&archive).unwrap());
    let out = torsensor(&[
        "history",
        "import",
        "--history",
        h,
        &server.url("/exit-addresses"),
        &server.url("/tor/status-vote/current/consensus"),
        &server.url("/archive.tar.xz"),
        &server.url("/missing"),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    // The archive's copy of the consensus has CollecTor's @type line: a
    // different document, the same intervals.
    assert!(
        stdout.starts_with("imported 5 documents (4 consensuses, 1 exit lists"),
        "{stdout}"
    );
    assert!(stdout.contains("/missing: "), "{stdout}");
    let out = check_at(h, "2026-07-27T10:59:59Z", "95.216.33.30");
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        text(&out.stdout).lines().count(),
        2,
        "{}",
        text(&out.stdout)
    );
}
