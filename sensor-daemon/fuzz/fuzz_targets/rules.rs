//! Detection rule files (`rules/*.toml`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sensor_daemon::alert::rules::Rules;
use sensor_daemon::feed::Role;
use sensor_daemon::net::Direction;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Rules::parse("fuzz.toml", text) {
        Ok(rules) => {
            for direction in [Direction::Egress, Direction::Ingress] {
                for roles in [
                    &[][..],
                    &[Role::Exit],
                    &[Role::Relay],
                    &[Role::Exit, Role::Relay],
                ] {
                    assert_eq!(rules.for_match(direction, roles).direction, direction);
                }
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
