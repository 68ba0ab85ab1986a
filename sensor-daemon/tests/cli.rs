//! The command line without the kernel: `check`, bad input, clear errors.

mod common;

use std::os::unix::process::CommandExt;
use std::process::{Command, Output};

use common::{BIN, temp_path};

fn torsensor(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("TORSENSOR_LOG", "warn")
        .output()
        .expect("run torsensor")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn check_answers_with_exit_codes() {
    let feed = temp_path("check.feed");
    std::fs::write(&feed, "# lab list\n185.220.101.0/24\n2a0b:f4c2::/40\n").unwrap();
    let f = feed.to_str().unwrap();

    let out = torsensor(&[
        "check",
        "--feed",
        f,
        "185.220.101.7",
        "::ffff:185.220.101.9",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "185.220.101.7\tlisted\n  exit  feed=check.feed version=none prefix=185.220.101.0/24\n::ffff:185.220.101.9\tlisted\n  exit  feed=check.feed version=none prefix=185.220.101.0/24\n"
    );

    let out = torsensor(&["check", "--feed", f, "2a0b:f4c2::1", "9.9.9.9"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stdout),
        "2a0b:f4c2::1\tlisted\n  exit  feed=check.feed version=none prefix=2a0b:f4c2::/40\n9.9.9.9\tnot-listed\n"
    );

    let out = torsensor(&["check", "--feed", f, "999.1.1.1"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("\"999.1.1.1\" is not IP, IP:PORT or [IPv6]:PORT"));
}

/// `torsensor check ... | head -1`: the reader goes away after one line;
/// the command ends by SIGPIPE, as Unix tools do, without a panic.
#[test]
fn a_closed_stdout_ends_a_command_quietly() {
    use std::io::{BufRead, BufReader};
    use std::os::unix::process::ExitStatusExt;
    // About 300 KB of answers: more than a pipe holds.
    let args: Vec<String> = (0..5000)
        .map(|i| format!("185.220.{}.{}:9001", 100 + i / 250, i % 250))
        .collect();
    let mut child = Command::new(BIN)
        .arg("check")
        .args(&args)
        .env("TORSENSOR_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.starts_with("185.220.100.0:9001\t"), "{first}");
    let out = child.wait_with_output().unwrap();
    let err = text(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGPIPE),
        "{:?} {err}",
        out.status
    );
}

#[test]
fn check_uses_the_embedded_snapshot_by_default_with_roles_fingerprints_and_versions() {
    // 185.220.101.1 is an exit (TorDNSEL, 4 fingerprints) and four relays'
    // OR address (Onionoo, ORPorts 9001-9004) on 2024-03-12.
    let out = torsensor(&["check", "185.220.101.1:9002"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], "185.220.101.1:9002\tlisted", "{stdout}");
    assert!(lines[1].starts_with("  exit  feed=embedded-tor-exits version=2024-03-12T14:28:38Z prefix=185.220.101.1/32 exit_last_seen=2024-03-12T14:24:47Z relays="), "{stdout}");
    assert_eq!(
        lines[1].matches(',').count(),
        3,
        "four fingerprints: {stdout}"
    );
    assert_eq!(
        lines[2],
        "  relay feed=embedded-tor-relays version=2024-03-12T11:00:00Z prefix=185.220.101.1/32 orport=9002 relays=FB4A0E4F470B36E7A89159A8569530A47C292BA5"
    );
    assert_eq!(lines.len(), 3, "{stdout}");
    // Without a port, every ORPort; on a non-ORPort only the exit role.
    let out = torsensor(&["check", "185.220.101.1"]);
    assert_eq!(text(&out.stdout).matches("  relay ").count(), 4);
    let out = torsensor(&[
        "check",
        "--json",
        "[2001:41d0:404:300::dd2]:9001",
        "5.196.8.113:80",
    ]);
    assert_eq!(out.status.code(), Some(0));
    let docs: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(docs[0]["matches"][0]["role"], "relay");
    assert_eq!(docs[0]["matches"][0]["confidence"], "high");
    assert_eq!(
        docs[0]["matches"][0]["relays"][0]["fingerprint"],
        "000C351F86033654A82D9FD6AC3B178F44E236BE"
    );
    assert_eq!(docs[1]["matches"].as_array().unwrap().len(), 1);
    assert_eq!(docs[1]["matches"][0]["role"], "exit");
    assert!(text(&out.stderr).is_empty(), "{}", text(&out.stderr));
}

#[test]
fn bad_lines_are_named_by_file_and_line_and_the_rest_loads() {
    let feed = temp_path("bad-lines.feed");
    std::fs::write(&feed, "1.2.3.4\nbogus entry\n\n5.6.7.8/40\n8.8.4.4\n").unwrap();
    let f = feed.to_str().unwrap();
    let out = torsensor(&["check", "--feed", f, "1.2.3.4", "8.8.4.4"]);
    assert_eq!(out.status.code(), Some(0));
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!("{f}:2: skipped \"bogus entry\"")),
        "{err}"
    );
    assert!(
        err.contains(&format!("{f}:4: skipped \"5.6.7.8/40\"")),
        "{err}"
    );
}

#[test]
fn reserved_entries_are_dropped_with_one_warning_unless_allowed() {
    let feed = temp_path("reserved.feed");
    std::fs::write(&feed, "127.0.0.1\n10.0.0.0/8\n1.2.3.4\n").unwrap();
    let f = feed.to_str().unwrap();
    let out = torsensor(&["check", "--feed", f, "127.0.0.1"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert_eq!(err.matches("reserved-range").count(), 1, "{err}");
    assert!(err.contains("dropped 2 reserved-range entries"), "{err}");
    let out = torsensor(&[
        "check",
        "--allow-reserved",
        "--feed",
        f,
        "127.0.0.1",
        "10.9.9.9",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

#[test]
fn unreadable_and_empty_feeds_are_errors_naming_the_file() {
    let out = torsensor(&["check", "--feed", "/nonexistent/tor.txt", "1.2.3.4"]);
    // 2, not 1: exit 1 means "not listed", and this is no answer at all.
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("feed tor.txt: cannot read /nonexistent/tor.txt"),
        "{err}"
    );

    let empty = temp_path("empty.feed");
    std::fs::write(&empty, "# nothing\nnot an ip\n").unwrap();
    let out = torsensor(&["run", "--feed", empty.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("not a recognised feed format; first line: \"not an ip\""),
        "{err}"
    );
    assert!(err.contains(empty.to_str().unwrap()), "{err}");
}

#[test]
fn config_file_errors_name_the_file_and_line() {
    let path = temp_path("bad.toml");
    std::fs::write(
        &path,
        "[[feed]]\nname = \"x\"\nlocation = \"/tmp/x\"\nrefresh = \"sometimes\"\n",
    )
    .unwrap();
    let p = path.to_str().unwrap();
    let out = torsensor(&["check", "--config", p, "1.2.3.4"]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(err.contains(&format!("config file {p}, line 4")), "{err}");
    std::fs::write(
        &path,
        "[[feed]]\nname = \"x\"\nlocation = \"http://mirror.example/x\"\n",
    )
    .unwrap();
    let out = torsensor(&["run", "--config", p]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("feed \"x\": location"), "{err}");
    assert!(err.contains("allow_http"), "{err}");
}

#[test]
fn feed_fetch_caches_and_feed_status_reports_what_is_loaded() {
    use common::http::{FeedServer, ONIONOO, TORDNSEL, fixture};
    let server = FeedServer::start();
    server.serve("/exit-addresses", &fixture(TORDNSEL));
    server.serve("/details", &fixture(ONIONOO));
    server.set("/broken", common::http::Behavior::Status(503));
    let state = temp_path("fetch-state");
    let _ = std::fs::remove_dir_all(&state);
    let config = temp_path("fetch.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = \"{}\"\n[[feed]]\nname = \"exits\"\nlocation = \"{}\"\n[[feed]]\nname = \"relays\"\nlocation = \"{}\"\nformat = \"onionoo\"\n",
            state.display(),
            server.url("/exit-addresses"),
            server.url("/details")
        ),
    )
    .unwrap();
    let c = config.to_str().unwrap();
    let out = torsensor(&["feed", "fetch", "--config", c]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("exits\taccepted\texit addresses 1174 IPv4 / 0 IPv6"),
        "{stdout}"
    );
    assert!(
        stdout.contains("format=tordnsel version=2024-03-12T14:28:38Z"),
        "{stdout}"
    );
    assert!(stdout.contains("relays\taccepted\texit addresses 0 IPv4 / 0 IPv6, relay OR addresses 5766 IPv4 / 2578 IPv6 (11239 ORPorts, 7607 relays)"), "{stdout}");
    assert!(state.join("feeds/exits.cache").exists());
    assert!(state.join("feeds/relays.cache").exists());

    // Again: conditional requests, nothing re-downloaded.
    let out = torsensor(&["feed", "fetch", "--config", c]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        text(&out.stdout)
            .matches("not-modified\t(cached copy kept)")
            .count(),
        2
    );
    assert_eq!(server.seen().iter().filter(|s| s.status == 304).count(), 2);

    // check answers from the cache, without the network.
    drop(server);
    let out = torsensor(&["check", "--config", c, "185.220.101.1:9001"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("relay feed=relays version=2024-03-12T11:00:00Z"));

    // A failing feed: exit 1, the reason printed, the cache untouched.
    let server = FeedServer::start();
    server.set("/exit-addresses", common::http::Behavior::Status(503));
    std::fs::write(
        &config,
        format!(
            "state_dir = \"{}\"\n[[feed]]\nname = \"exits\"\nlocation = \"{}\"\n",
            state.display(),
            server.url("/exit-addresses")
        ),
    )
    .unwrap();
    let out = torsensor(&["feed", "fetch", "--config", c]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("exits\trejected\t"), "{stdout}");
    assert!(stdout.contains("HTTP 503"), "{stdout}");
    // The cached copy was from the old URL: the feed now points elsewhere.
    assert!(
        text(&out.stderr).contains("ignoring the cached copy"),
        "{}",
        text(&out.stderr)
    );

    // No sensor has run with this state dir: status says so.
    let out = torsensor(&["feed", "status", "--config", c]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("no feed status at"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn without_privileges_run_says_what_is_missing() {
    let mut cmd = Command::new(BIN);
    cmd.args(["run"]).env("TORSENSOR_LOG", "warn");
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        // Run as nobody: no capabilities at all.
        cmd.uid(65534).gid(65534);
    }
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("torsensor needs CAP_BPF and CAP_PERFMON (or root)"),
        "{err}"
    );
    assert_eq!(
        err.lines().filter(|l| l.contains("error")).count(),
        1,
        "{err}"
    );
}

#[test]
fn the_systemd_unit_verifies() {
    let Ok(probe) = Command::new("systemd-analyze").arg("--version").output() else {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "CI needs systemd-analyze (cargo xtask setup installs systemd)"
        );
        eprintln!("skipped: systemd-analyze is not installed");
        return;
    };
    assert!(probe.status.success());
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/torsensor.service"
    ))
    .unwrap();
    // Point ExecStart at the binary under test so that verify can resolve it.
    let unit = unit.replace("/usr/bin/torsensor", BIN);
    let dir = temp_path("unit");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("torsensor.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert!(
        out.status.success(),
        "systemd-analyze verify failed:\n{err}"
    );
    let ours: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("torsensor.service"))
        .collect();
    assert!(
        ours.is_empty(),
        "warnings about the unit:\n{}",
        ours.join("\n")
    );
}

#[test]
fn check_refuses_to_answer_for_a_named_feed_it_has_no_copy_of() {
    // A URL feed that was never fetched: no cache in this state directory.
    // `check` must not fall back to the embedded snapshot and answer
    // "not-listed" as if the feed had been asked.
    let state = temp_path("check-nocopy-state");
    let _ = std::fs::remove_dir_all(&state);
    let s = state.to_str().unwrap();
    let url = "http://127.0.0.1:9/never-fetched";
    for json in [false, true] {
        let mut args = vec!["check", "--state-dir", s, "--feed", url];
        if json {
            args.push("--json");
        }
        args.push("9.9.9.9");
        let out = torsensor(&args);
        assert_eq!(out.status.code(), Some(2), "{}", text(&out.stdout));
        assert_eq!(text(&out.stdout), "", "no answer on stdout");
        let err = text(&out.stderr);
        assert!(
            err.contains(
                "feed never-fetched has no local copy: run `torsensor feed fetch` (state directory "
            ),
            "{err}"
        );
        assert!(!err.contains("not-listed"), "{err}");
    }
    // Also when another named feed has content: every feed asked must answer.
    let file = temp_path("check-nocopy.feed");
    std::fs::write(&file, "9.9.9.0/24\n").unwrap();
    let out = torsensor(&[
        "check",
        "--state-dir",
        s,
        "--feed",
        file.to_str().unwrap(),
        "--feed",
        url,
        "9.9.9.9",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stdout));
    assert!(text(&out.stderr).contains("feed never-fetched has no local copy"));
}

#[test]
fn feeds_that_would_alert_on_everything_are_refused() {
    // Prefixes wider than /8 (IPv4) or /16 (IPv6) are refused, even with
    // --allow-reserved, naming the feed and the line.
    for (tag, wide, line) in [
        ("v4-all", "0.0.0.0/0", 2),
        ("v6-all", "::/0", 2),
        ("v4-eighth", "32.0.0.0/3", 2),
        ("v6-wide", "2a00::/12", 2),
    ] {
        let feed = temp_path(&format!("wide-{tag}.feed"));
        std::fs::write(&feed, format!("185.220.101.7\n{wide}\n")).unwrap();
        let f = feed.to_str().unwrap();
        let out = torsensor(&["check", "--allow-reserved", "--feed", f, "33.1.1.1"]);
        assert_eq!(out.status.code(), Some(2), "{wide}: {}", text(&out.stdout));
        assert_eq!(text(&out.stdout), "", "{wide}");
        let err = text(&out.stderr);
        assert!(
            err.contains(&format!(
                "feed wide-{tag}.feed: {f}: line {line}: {wide} is wider than"
            )),
            "{wide}: {err}"
        );
        assert!(err.contains("allow_wide_prefixes"), "{err}");
    }
    // The per-feed option lets a wide prefix through; /8 is within the bound.
    let feed = temp_path("wide-allowed.feed");
    std::fs::write(&feed, "32.0.0.0/3\n11.0.0.0/8\n").unwrap();
    let config = temp_path("wide-allowed.toml");
    std::fs::write(
        &config,
        format!(
            "[[feed]]\nname = \"wide\"\nlocation = \"{}\"\nallow_wide_prefixes = true\n",
            feed.display()
        ),
    )
    .unwrap();
    let out = torsensor(&[
        "check",
        "--config",
        config.to_str().unwrap(),
        "33.1.1.1",
        "11.2.3.4",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));

    // A body that is mostly not a feed: 18 good lines, 5,000 bad ones.
    let feed = temp_path("mostly-bad.feed");
    let mut body = String::new();
    for i in 0..18 {
        body.push_str(&format!("185.220.101.{i}\n"));
    }
    for i in 0..5000 {
        body.push_str(&format!("garbage {i}\n"));
    }
    std::fs::write(&feed, body).unwrap();
    let f = feed.to_str().unwrap();
    let out = torsensor(&["check", "--feed", f, "185.220.101.1"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stdout));
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!(
            "feed mostly-bad.feed: {f}: 5000 bad records against 18 usable entries"
        )),
        "{err}"
    );
    assert!(err.contains("first at line 19: \"garbage 0\""), "{err}");
}

#[test]
fn secrets_given_by_mistake_are_never_echoed() {
    let config = temp_path("secret.toml");
    std::fs::write(
        &config,
        "[[output]]\nto = \"https://alice:hunter2pw@siem.example/ingest\"\n",
    )
    .unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "run",
                "--output",
                "hec+https://s.example:8088,token=SUPERSECRETTOKEN",
            ],
            "SUPERSECRETTOKEN",
        ),
        (
            vec!["run", "--output", "https://bob:pw1234secret@siem.example/x"],
            "pw1234secret",
        ),
        (
            vec![
                "check",
                "--feed",
                "https://carol:pw999secret@feeds.example/a",
                "1.2.3.4",
            ],
            "pw999secret",
        ),
        (
            vec!["run", "--config", config.to_str().unwrap()],
            "hunter2pw",
        ),
    ];
    for (args, secret) in cases {
        let out = torsensor(&args);
        assert_ne!(out.status.code(), Some(0), "{args:?}");
        let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
        assert!(!all.contains(secret), "{args:?} echoed the secret: {all}");
        // The error still says what is wrong.
        assert!(
            all.contains("token_file") || all.contains("credentials"),
            "{args:?}: {all}"
        );
    }
}

#[test]
fn a_file_only_feed_needs_no_tls_roots() {
    // No CA bundle at all (a minimal container): a feed that is a local
    // file must load and `feed fetch` must not fail on building a TLS
    // client it does not need.
    let feed = temp_path("no-tls.feed");
    std::fs::write(&feed, "185.220.101.7\n").unwrap();
    let state = temp_path("no-tls-state");
    let _ = std::fs::remove_dir_all(&state);
    let out = Command::new(BIN)
        .args([
            "feed",
            "fetch",
            "--state-dir",
            state.to_str().unwrap(),
            "--feed",
            feed.to_str().unwrap(),
        ])
        .env("TORSENSOR_LOG", "info")
        .env("SSL_CERT_FILE", "/nonexistent/ca.pem")
        .env("SSL_CERT_DIR", "/nonexistent/certs")
        .output()
        .unwrap();
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(!all.contains("CA"), "{all}");
    assert!(
        text(&out.stdout).starts_with("no-tls.feed\tnot-modified"),
        "{all}"
    );
    assert!(text(&out.stdout).contains("origin=file"), "{all}");
}

#[test]
fn replay_prints_the_alerts_of_a_recording() {
    let feed = temp_path("replay.feed");
    std::fs::write(&feed, "198.51.100.0/24\n").unwrap();
    let recording = temp_path("replay.jsonl");
    let line = |secs: u32, sport: u16| {
        format!(
            r#"{{"time":"2024-11-24T21:00:{secs:02}Z","direction":"egress","local":"192.0.2.10:{sport}","remote":"198.51.100.7:443","matched":{{"exit_feeds":1}},"tgid":7,"pid":7,"comm":"curl"}}"#
        )
    };
    let text_in = [line(0, 40000), line(5, 40001), line(9, 40002)].join("\n");
    std::fs::write(&recording, text_in).unwrap();
    let state = temp_path("replay-state");
    let args = |format: &'static str| {
        vec![
            "replay".to_owned(),
            "--allow-reserved".into(),
            "--feed".into(),
            feed.to_str().unwrap().into(),
            "--state-dir".into(),
            state.to_str().unwrap().into(),
            "--aggregation-window".into(),
            "60s".into(),
            "--format".into(),
            format.into(),
            recording.to_str().unwrap().into(),
        ]
    };
    let run = |format| {
        let a = args(format);
        torsensor(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let out = run("ecs");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let alerts: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(alerts.len(), 2, "{alerts:#?}");
    assert_eq!(alerts[0]["torsensor"]["count"], 1);
    assert_eq!(alerts[0]["process"]["name"], "curl");
    assert_eq!(alerts[1]["torsensor"]["count"], 2);
    assert_eq!(alerts[1]["torsensor"]["summary"], true);
    assert_eq!(alerts[1]["source"]["port"], 40002);
    let out = run("falco");
    let first: serde_json::Value =
        serde_json::from_str(text(&out.stdout).lines().next().unwrap()).unwrap();
    assert_eq!(first["rule"], "Outbound connection to a Tor exit address");
    let out = run("yaml");
    assert_eq!(out.status.code(), Some(2));
}

/// A consensus file as a feed: refused unless its signatures verify or the
/// configuration says not to check them; then `check` names the relay, its
/// flags and the consensus's valid-after.
#[test]
fn a_consensus_feed_is_checked_for_signatures_then_shows_relay_flags() {
    let data = concat!(env!("CARGO_MANIFEST_DIR"), "/data/consensus/live-truncated");
    let config = temp_path("consensus.toml");
    let state = temp_path("consensus-state");
    let write = |extra: &str| {
        std::fs::write(
            &config,
            format!(
                "state_dir = {state:?}\n[[feed]]\nname = \"consensus\"\nlocation = \"{data}/consensus\"\n{extra}"
            ),
        )
        .unwrap();
    };
    let check = |target: &str| torsensor(&["check", "--config", config.to_str().unwrap(), target]);
    // A local consensus with no certificates to check it against.
    write("");
    let out = check("152.53.144.50:8443");
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("consensus refused: no authority certificates (authority_certs is not set"),
        "{stderr}"
    );
    // The real authorities' certificates, but the document was cut down
    // from the real one, so no signature verifies.
    write(&format!("authority_certs = \"{data}/authcert-all\"\n"));
    let out = check("152.53.144.50:8443");
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("consensus refused: signed by 0 of 9 trusted authorities, 5 needed"),
        "{stderr}"
    );
    // Unchecked, as configured: the relay with its consensus flags.
    write("signatures = \"off\"\n");
    let out = check("152.53.144.50:8443");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "152.53.144.50:8443\tlisted\n  relay feed=consensus version=2026-07-27T10:00:00Z prefix=152.53.144.50/32 orport=8443 relays=000004ACBB9D29BCBA17256BB35928DDBFC8ABA9(lisdex)[Fast Guard Running Stable V2Dir Valid]\n"
    );
    // A bad fingerprint in `authorities` names the field.
    write("authorities = [\"F533\"]\n");
    let out = check("152.53.144.50:8443");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains(
            "feed \"consensus\": authorities \"F533\" is not a 40-hex-digit v3 identity fingerprint"
        ),
        "{}",
        text(&out.stderr)
    );
}

/// `rules check` shows the rules in force and names a bad file's line;
/// `rules test` runs a recorded alert through them and says why.
#[test]
fn rules_check_and_rules_test() {
    let dir = temp_path("cli-rules.d");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let local = dir.join("10-local.toml");
    std::fs::write(
        &local,
        "[[rule]]\nid = \"TORSENSOR-001\"\n[[rule.except]]\nreason = \"our relay\"\nexpires = \"2099-12-31\"\nwhen = { executable = [\"/usr/bin/tor\"], user = [\"debian-tor\"] }\n\n[[rule]]\nid = \"TORSENSOR-003\"\nenabled = false\n",
    )
    .unwrap();
    let state = temp_path("cli-rules-state");
    let _ = std::fs::remove_dir_all(&state);
    std::fs::create_dir_all(&state).unwrap();
    let rules_dir = dir.to_str().unwrap();
    let state_dir = state.to_str().unwrap();
    let args = |cmd: &[&str]| {
        let mut v = vec!["rules"];
        v.extend_from_slice(cmd);
        v.extend_from_slice(&["--rules-dir", rules_dir, "--state-dir", state_dir]);
        torsensor(&v)
    };
    let out = args(&["check"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    // However many rules ship (each issue adds its own).
    let shipped = include_str!("../../rules/tor.toml")
        .matches("\n[[rule]]\n")
        .count();
    assert!(shipped >= 8, "the shipped rules, TORSENSOR-001..-008");
    assert!(
        stdout.starts_with(&format!("{shipped} rules from rules/tor.toml, ")),
        "{stdout}"
    );
    assert!(stdout.contains("TORSENSOR-003  DISABLED"), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "except \"our relay\" (until 2099-12-31T23:59:59Z, {}:3): executable = [\"/usr/bin/tor\"], user = [\"debian-tor\"]",
            local.display()
        )),
        "{stdout}"
    );
    // A running sensor's counts: an exception that matched nothing.
    std::fs::write(
        state.join("status.json"),
        r#"{"pid":1,"written":"2026-12-01T00:00:00Z","embedded":false,"feeds":[],"rules":{"started":"2026-12-01T10:00:00Z","rules":{},"unmatched":0}}"#,
    )
    .unwrap();
    let stdout = text(&args(&["check"]).stdout);
    assert!(
        stdout.contains(
            "matched nothing since the sensor started (2026-12-01T10:00:00Z): still needed?"
        ),
        "{stdout}"
    );

    // The golden alert: tor, /usr/bin/tor, debian-tor, to a relay ORPort.
    let event = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/golden/egress_ipv4_host.ecs.json"
    );
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(event).unwrap()).unwrap();
    let line = temp_path("cli-rules-alert.jsonl");
    std::fs::write(&line, format!("{doc}\n")).unwrap();
    let line = line.to_str().unwrap();
    let out = args(&["test", "--event", line]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("  TORSENSOR-001: direction yes, role yes\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("    except \"our relay\" (")
            && stdout.contains("): executable yes, user yes\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("  => EXCEPTED: TORSENSOR-001 exception \"our relay\""),
        "{stdout}"
    );
    // Without the operator's files: alerted.
    let out = torsensor(&[
        "rules",
        "test",
        "--event",
        line,
        "--rules-dir",
        "/nonexistent",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout)
            .contains("  => ALERT by TORSENSOR-001 (Outbound connection to a Tor relay)"),
        "{}",
        text(&out.stdout)
    );

    // The local signals' alerts (a program start, a listener): the
    // connection rules say why they do not apply, the signal's rule takes
    // them, an exception by port excepts the listener.
    let mut lines = String::new();
    for case in ["exec_tor_by_name", "listen_socks_port"] {
        let path = format!(
            "{}/tests/golden/{case}.ecs.json",
            env!("CARGO_MANIFEST_DIR")
        );
        let doc: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        lines += &format!("{doc}\n");
    }
    let local_events = temp_path("cli-rules-local.jsonl");
    std::fs::write(&local_events, lines).unwrap();
    std::fs::write(
        dir.join("15-listen.toml"),
        "[[rule]]\nid = \"TORSENSOR-006\"\n[[rule.except]]\nreason = \"tor's own SOCKS port\"\nwhen = { local_port = [9050] }\n",
    )
    .unwrap();
    let out = args(&["test", "--event", local_events.to_str().unwrap()]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.contains(":1: exec /usr/bin/tor process tor\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("  TORSENSOR-001: event (connection unless given) no\n"),
        "{stdout}"
    );
    assert!(stdout.contains("  TORSENSOR-005: event yes\n"), "{stdout}");
    assert!(
        stdout
            .contains("  => ALERT by TORSENSOR-005 (Tor client or pluggable transport started)\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains(":2: listen 127.0.0.1:9050 process tor\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("  => EXCEPTED: TORSENSOR-006 exception \"tor's own SOCKS port\""),
        "{stdout}"
    );
    std::fs::remove_file(dir.join("15-listen.toml")).unwrap();

    // A bad file: named by file, line and column; exit 2.
    std::fs::write(
        dir.join("20-bad.toml"),
        "[[rule]]\nid = \"TORSENSOR-002\"\nwhen = { procss = [\"x\"] }\n",
    )
    .unwrap();
    let out = args(&["check"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "{}:3:10: unknown field `procss`",
            dir.join("20-bad.toml").display()
        )),
        "{stderr}"
    );
    let out = torsensor(&[
        "rules",
        "test",
        "--event",
        "/nonexistent.jsonl",
        "--rules-dir",
        "/nonexistent",
    ]);
    assert_eq!(out.status.code(), Some(2));
}

/// `rules check` resolves what a block rule's kernel table needs (users,
/// cgroups) on this host: a name that does not resolve fails the check as
/// it would fail the start.
#[test]
fn rules_check_resolves_block_rules() {
    let file = temp_path("cli-block.toml");
    let rule = |when: &str| {
        format!(
            "[[rule]]\nid = \"LOCAL-BLOCK\"\nname = \"b\"\ndescription = \"d\"\nseverity = 73\npriority = \"Warning\"\naction = \"block\"\nwhen = {{ {when} }}\n[[rule.except]]\nreason = \"r\"\nwhen = {{ user = [\"root\"] }}\n"
        )
    };
    std::fs::write(&file, rule("direction = \"egress\", cgroup = [\"/\"]")).unwrap();
    let out = torsensor(&["rules", "check", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("block rules: 1 kernel entries of 16"),
        "{}",
        text(&out.stdout)
    );
    assert!(text(&out.stdout).contains("LOCAL-BLOCK  enabled  action=block"));
    std::fs::write(&file, rule("cgroup = [\"/no/such/cgroup\"]")).unwrap();
    let out = torsensor(&["rules", "check", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.starts_with(
            "torsensor: error: rule LOCAL-BLOCK (action block): cgroup \"/no/such/cgroup\": "
        ),
        "{stderr}"
    );
}
