//! The last-known-good feed cache file (`<state_dir>/feeds/<name>.cache`:
//! magic line, JSON metadata line, body), read back at start-up.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sensor_daemon::feed::source::Cache;

fuzz_target!(|data: &[u8]| {
    let state_dir = sensor_daemon_fuzz::scratch_dir("cache");
    let cache = Cache::new(&state_dir);
    std::fs::create_dir_all(state_dir.join("feeds")).expect("feeds directory");
    std::fs::write(cache.path("fuzz"), data).expect("cache file");
    let meta = cache.meta("fuzz");
    match cache.load("fuzz") {
        Ok(Some((loaded, body))) => {
            assert_eq!(
                body.len(),
                loaded.bytes,
                "the body has the size the header says"
            );
            assert_eq!(meta.ok().flatten().as_ref(), Some(&loaded));
            let _ = loaded.fetched_time();
        }
        Ok(None) => panic!("the cache file is there"),
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
