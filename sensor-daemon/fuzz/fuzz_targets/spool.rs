//! A remote output's spool directory (`<state_dir>/spool/<name>/`: segment
//! files of `SEQ<TAB>JSON` lines and a `cursor` file), read back after a
//! restart and delivered.
//!
//! Input: sections separated by 0xFF bytes (never in UTF-8 text): the
//! first is the `cursor` file (none when empty), each further one a segment
//! file, named in order.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sensor_daemon::sink::spool_replay_for_fuzzing;

fuzz_target!(|data: &[u8]| {
    let dir = sensor_daemon_fuzz::scratch_dir("spool");
    let mut sections = data.split(|&b| b == 0xFF);
    let cursor = sections.next().unwrap_or_default();
    if !cursor.is_empty() {
        std::fs::write(dir.join("cursor"), cursor).expect("cursor file");
    }
    for (i, segment) in sections.take(8).enumerate() {
        std::fs::write(dir.join(format!("{:020}.seg", i * 1000)), segment).expect("segment file");
    }
    let batch_events = data.len() % 7 + 1;
    let Ok(first) = spool_replay_for_fuzzing(&dir, batch_events, 64) else {
        return;
    };
    // A restart after that: the alert spooled last is still there, and
    // nothing the first run had acknowledged comes back.
    if let Ok(second) = spool_replay_for_fuzzing(&dir, 64, 64) {
        assert!(
            second.read.iter().all(|&seq| seq > first.cursor),
            "acknowledged alerts are not read again: {first:?} then {second:?}"
        );
        assert!(
            !first.drained || second.read.contains(&first.appended),
            "the alert spooled last survives a restart: {first:?} then {second:?}"
        );
    }
});
