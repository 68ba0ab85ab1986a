//! Alerts for unit tests.

use std::time::SystemTime;

use super::connection::{AlertInput, SensorIdentity, build};
use super::model::Alert;
use crate::alert::rules::Rules;
use crate::enrich::ProcessInfo;
use crate::kernel::event::{Connection, KernelProcess};
use crate::net::Direction;
use sensor_common::MatchInfo;

/// An outbound alert (built-in exit rule, no feed match) from process `pid`
/// between `local` and `remote` at `at`, on host `h1`.
pub fn connection_alert(
    pid: u32,
    local: (&str, u16),
    remote: (&str, u16),
    at: SystemTime,
) -> Alert {
    let kernel = KernelProcess {
        tgid: pid,
        tid: pid,
        uid: 1000,
        gid: 1000,
        comm: "curl".into(),
        cgroup_id: 1,
    };
    let conn = Connection {
        time: at,
        direction: Direction::Egress,
        local: (local.0.parse::<std::net::IpAddr>().unwrap(), local.1).into(),
        remote: (remote.0.parse::<std::net::IpAddr>().unwrap(), remote.1).into(),
        v4_mapped: false,
        failed: false,
        audit: false,
        incomplete: false,
        blocked: false,
        matched: MatchInfo::NONE,
        process: Some(kernel.clone()),
    };
    let rules = Rules::builtin().unwrap();
    build(&AlertInput {
        conn: &conn,
        process: Some(&ProcessInfo::from_kernel(&kernel)),
        container: None,
        rule: rules.get("TORSENSOR-003").unwrap(),
        matches: &[],
        sensor: &SensorIdentity {
            host_name: "h1".into(),
            version: "0.1.0",
        },
        created: at,
    })
}
