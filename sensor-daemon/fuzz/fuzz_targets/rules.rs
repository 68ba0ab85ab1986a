//! Detection rule files (`rules/*.toml`, `rules.d/*.toml`), read over the
//! shipped rules as an operator file is.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sensor_daemon::alert::rules::Rules;
use sensor_daemon::feed::Role;
use sensor_daemon::net::Direction;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut rules = Rules::builtin().expect("the shipped rules load");
    match rules.add_file("fuzz.toml", text, false) {
        Ok(()) => {
            let ids = rules.ids();
            let mut unique = ids.clone();
            unique.sort_unstable();
            unique.dedup();
            assert_eq!(unique.len(), ids.len(), "every id once");
            for direction in [Direction::Egress, Direction::Ingress] {
                for roles in [
                    &[][..],
                    &[Role::Exit],
                    &[Role::Relay],
                    &[Role::Exit, Role::Relay],
                ] {
                    let _ = rules.for_match(direction, roles);
                }
            }
        }
        Err(e) => {
            let text = e.to_string();
            assert!(text.starts_with("rules file fuzz.toml:"), "{text}");
        }
    }
});
