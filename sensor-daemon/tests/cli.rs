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
        "185.220.101.7\tlisted\t185.220.101.0/24\tcheck.feed\n::ffff:185.220.101.9\tlisted\t185.220.101.0/24\tcheck.feed\n"
    );

    let out = torsensor(&["check", "--feed", f, "2a0b:f4c2::1", "9.9.9.9"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stdout),
        "2a0b:f4c2::1\tlisted\t2a0b:f4c2::/40\tcheck.feed\n9.9.9.9\tnot-listed\n"
    );

    let out = torsensor(&["check", "--feed", f, "999.1.1.1"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("\"999.1.1.1\" is not an IP address"));
}

#[test]
fn check_uses_the_embedded_bulk_exit_list_by_default() {
    let first = sensor_daemon::feed::EMBEDDED_BULK_EXIT_LIST
        .lines()
        .next()
        .unwrap();
    let out = torsensor(&["check", first]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("tor-bulk-exit-list (embedded 2024-03-12)"));
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
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("cannot read feed file /nonexistent/tor.txt"));

    let empty = temp_path("empty.feed");
    std::fs::write(&empty, "# nothing\nnot an ip\n").unwrap();
    let out = torsensor(&["run", "--feed", empty.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("has no usable entries (1 bad lines"), "{err}");
    assert!(err.contains(empty.to_str().unwrap()), "{err}");
}

#[test]
fn invalid_options_are_rejected_before_the_kernel() {
    let out = torsensor(&["run", "--ring-buffer-bytes", "5000"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("ring-buffer-bytes = 5000: must be a power of two"));
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
    let unit = unit.replace("/usr/local/bin/torsensor", BIN);
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
