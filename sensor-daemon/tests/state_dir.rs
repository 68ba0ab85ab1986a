//! The state directory cannot be turned against the host: planted links are
//! never followed, directories of another user (or writable by others) are
//! refused, and modes do not depend on the umask. Needs root for the
//! "another user" cases (chown); they are skipped, with a message, without.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::http::FeedServer;
use common::{BIN, temp_path};
use sensor_daemon::feed::FeedFormat;
use sensor_daemon::feed::source::{Cache, CacheMeta, Validators};
use sensor_daemon::sink::{OutputConfig, Sinks};

const NOBODY: u32 = 65534;

fn fresh(name: &str) -> PathBuf {
    let dir = temp_path(name);
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn meta(name: &str, body: &[u8]) -> CacheMeta {
    CacheMeta {
        name: name.into(),
        location: "https://feeds.example/list".into(),
        format: FeedFormat::Plain,
        validators: Validators::default(),
        fetched: "2026-11-24T10:00:00Z".into(),
        bytes: body.len(),
    }
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!("skipped: needs root to chown a directory to another user");
    }
    root
}

fn chown(p: &Path, uid: u32) {
    std::os::unix::fs::lchown(p, Some(uid), Some(uid)).unwrap();
}

#[test]
fn a_link_planted_at_the_temporary_name_is_never_followed() {
    // The old temporary names were `.<name>.cache.tmp<PID>` and
    // `.status.json.tmp<PID>` (the PID is in the world-readable status).
    let state = fresh("planted-state");
    let feeds = state.join("feeds");
    std::fs::create_dir_all(&feeds).unwrap();
    let victim = temp_path("planted-victim");
    std::fs::write(&victim, "precious\n").unwrap();
    let pid = std::process::id();
    symlink(&victim, feeds.join(format!(".x.cache.tmp{pid}"))).unwrap();
    symlink(&victim, feeds.join("x.cache.tmp")).unwrap();

    let body = b"1.2.3.4\n";
    Cache::new(&state).store(&meta("x", body), body).unwrap();
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
    let cache = feeds.join("x.cache");
    let m = std::fs::symlink_metadata(&cache).unwrap();
    assert!(m.file_type().is_file(), "a regular file, not a link");
    assert_eq!(m.mode() & 0o7777, 0o640);
    // The planted links are left alone (and still point at the victim).
    assert!(
        std::fs::symlink_metadata(feeds.join(format!(".x.cache.tmp{pid}")))
            .unwrap()
            .file_type()
            .is_symlink()
    );

    // A link planted at the final name is replaced, not written through.
    symlink(&victim, feeds.join("y.cache")).unwrap();
    Cache::new(&state).store(&meta("y", body), body).unwrap();
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
    assert!(
        std::fs::symlink_metadata(feeds.join("y.cache"))
            .unwrap()
            .is_file()
    );
    // And a cached copy that is a link is not read through.
    std::fs::remove_file(feeds.join("y.cache")).unwrap();
    symlink(&cache, feeds.join("y.cache")).unwrap();
    assert!(Cache::new(&state).load("y").is_err());
}

#[test]
fn a_state_directory_of_another_user_or_writable_by_others_is_refused() {
    if !is_root() {
        return;
    }
    let body = b"1.2.3.4\n";
    // Owned by nobody: refused, with the path and the owner named.
    let state = fresh("foreign-state");
    std::fs::create_dir_all(&state).unwrap();
    chown(&state, NOBODY);
    let err = Cache::new(&state)
        .store(&meta("x", body), body)
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with(&format!(
            "{} belongs to uid {NOBODY}, not to the sensor's user (uid 0): refusing to use it",
            state.display()
        )),
        "{err}"
    );
    assert!(!state.join("feeds").exists(), "nothing created in it");

    // Ours, but feeds/ below it belongs to nobody.
    let state = fresh("foreign-feeds");
    std::fs::create_dir_all(state.join("feeds")).unwrap();
    chown(&state.join("feeds"), NOBODY);
    let err = Cache::new(&state)
        .store(&meta("x", body), body)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!(
            "{}/feeds belongs to uid {NOBODY}",
            state.display()
        )),
        "{err}"
    );

    // Ours, but writable by others.
    let state = fresh("loose-state");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o777)).unwrap();
    let err = Cache::new(&state)
        .store(&meta("x", body), body)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("is writable by group or others (mode 0777)"),
        "{err}"
    );

    // The state directory itself a link: refused.
    let real = fresh("linked-real");
    std::fs::create_dir_all(&real).unwrap();
    let link = fresh("linked-state");
    symlink(&real, &link).unwrap();
    let err = Cache::new(&link)
        .store(&meta("x", body), body)
        .unwrap_err()
        .to_string();
    assert!(err.contains("is a symbolic link"), "{err}");
}

#[test]
fn a_spool_directory_planted_by_another_user_is_refused() {
    if !is_root() {
        return;
    }
    // `nobody` made the spool directory of an output and put a segment in
    // it that links to a root-owned file: the sensor appended alerts to it.
    let state = fresh("planted-spool");
    let output = OutputConfig::new("syslog+tcp://127.0.0.1:9");
    let spool = state.join("spool").join(output.sink_name());
    std::fs::create_dir_all(&spool).unwrap();
    let victim = temp_path("spool-victim");
    std::fs::write(&victim, "root only\n").unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();
    symlink(&victim, spool.join("00000000000000000001.seg")).unwrap();
    chown(&spool.join("00000000000000000001.seg"), NOBODY);
    chown(&spool, NOBODY);

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let result = rt.block_on(async { Sinks::start(std::slice::from_ref(&output), &state, "t") });
    let err = match result {
        Ok(sinks) => {
            rt.block_on(sinks.shutdown(std::time::Duration::from_millis(100)));
            panic!("a spool directory owned by nobody was used");
        }
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains(&format!(
            "{} belongs to uid {NOBODY}, not to the sensor's user",
            spool.display()
        )),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "root only\n");
}

#[test]
fn directories_and_files_get_their_modes_whatever_the_umask() {
    // `feed fetch` under umask 000 creates the state directory, feeds/ and
    // the cache; before, the directories came out 0777.
    let server = FeedServer::start();
    server.serve("/list", b"185.220.101.7\n");
    let state = fresh("umask-state");
    let mut cmd = Command::new(BIN);
    cmd.args([
        "feed",
        "fetch",
        "--state-dir",
        state.to_str().unwrap(),
        "--feed",
        &server.url("/list"),
    ])
    .env("TORSENSOR_LOG", "warn");
    // SAFETY: the closure runs in the child between fork and exec and only
    // calls umask, which is async-signal-safe and cannot fail.
    unsafe {
        cmd.pre_exec(|| {
            libc::umask(0);
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(mode(&state), 0o750);
    assert_eq!(mode(&state.join("feeds")), 0o750);
    assert_eq!(mode(&state.join("feeds/list.cache")), 0o640);
}
