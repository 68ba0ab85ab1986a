//! Replay: recorded kernel events through the [`Pipeline`], without a
//! kernel, root or a clock of its own.
//!
//! A recording is JSON lines, one [`Record`] per `ConnEvent`, with the
//! kernel struct's fields decoded (addresses as text, flags by name, the
//! boot time as a wall-clock time), for example:
//!
//! ```json
//! {"time":"2024-11-24T21:00:00.123456789Z","direction":"egress","local":"192.0.2.10:41874","remote":"198.51.100.7:9001","matched":{"exit_feeds":1,"relay_feeds":2},"tgid":4242,"pid":4243,"uid":107,"gid":107,"comm":"tor","cgroup_id":5521}
//! ```
//!
//! A program start (an `ExecEvent`, from the exec ring buffer) is an
//! [`ExecRecord`], told apart by its `exec` list of reasons:
//!
//! ```json
//! {"time":"2024-11-24T21:00:03Z","exec":["name"],"tgid":4242,"pid":4242,"uid":107,"gid":107,"ppid":1,"comm":"tor","cgroup_id":5521,"env_len":812}
//! ```
//!
//! [`run`] turns each record back into the exact `#[repr(C)]` event and
//! handles it as the daemon would: summaries whose window ended before the
//! record's time first, then the record, and at the end every pending
//! summary (as at shutdown).

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use sensor_common::{
    AF_INET, AF_INET6, COMM_LEN, ConnEvent, DIR_EGRESS, DIR_INGRESS, ExecEvent, FLAG_AUDIT,
    FLAG_BLOCKED, FLAG_CONNECT_FAILED, FLAG_LISTEN, FLAG_NO_PROCESS, FLAG_V4_MAPPED, MatchInfo,
    exec,
};

use super::{Now, Pipeline, ProcessSource};
use crate::alert::Alert;
use crate::kernel::event::{BootClock, EventError};
use crate::net::Direction;
use crate::time::Timestamp;

/// A record that is not JSON, not a possible event, or not decodable.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// A line is not a [`Record`].
    #[error("line {line} is not a replay record")]
    Parse {
        line: usize,
        #[source]
        source: serde_json::Error,
    },
    /// Record number `index` (from 1) cannot be a kernel event.
    #[error("record {index}: {reason}")]
    Record { index: usize, reason: RecordError },
    /// Record number `index` (from 1) is an event the daemon would drop.
    #[error("record {index} is an event the daemon would drop")]
    Event {
        index: usize,
        #[source]
        source: EventError,
    },
    /// Record number `index` (from 1) is a program start the daemon would
    /// drop.
    #[error("record {index} is a program start the daemon would drop")]
    Exec {
        index: usize,
        #[source]
        source: crate::kernel::local::ExecEventError,
    },
}

/// Why a record cannot be a kernel event.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecordError {
    #[error("local {local} and remote {remote} are of different address families")]
    Family {
        local: SocketAddr,
        remote: SocketAddr,
    },
    #[error("comm {comm:?} is longer than {} bytes", COMM_LEN - 1)]
    Comm { comm: String },
}

/// A `FLAG_*` bit by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Flag {
    V4Mapped,
    ConnectFailed,
    Audit,
    NoProcess,
    Blocked,
    /// A listener on a watched port (`local` is its address; `remote` is
    /// `0.0.0.0:0` or `[::]:0`).
    Listen,
}

const FLAGS: [(Flag, u8); 6] = [
    (Flag::V4Mapped, FLAG_V4_MAPPED),
    (Flag::ConnectFailed, FLAG_CONNECT_FAILED),
    (Flag::Audit, FLAG_AUDIT),
    (Flag::NoProcess, FLAG_NO_PROCESS),
    (Flag::Blocked, FLAG_BLOCKED),
    (Flag::Listen, FLAG_LISTEN),
];

/// One `ExecEvent`, decoded (a program start).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecRecord {
    pub time: Timestamp,
    /// Why the kernel sent it.
    pub exec: Vec<crate::alert::model::ExecReason>,
    #[serde(default)]
    pub tgid: u32,
    #[serde(default)]
    pub pid: u32,
    #[serde(default)]
    pub uid: u32,
    #[serde(default)]
    pub gid: u32,
    #[serde(default)]
    pub ppid: u32,
    #[serde(default)]
    pub comm: String,
    #[serde(default)]
    pub cgroup_id: u64,
    #[serde(default)]
    pub env_len: u32,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub env_partial: bool,
}

impl ExecRecord {
    /// The kernel event this record stands for.
    pub fn to_event(&self, clock: &BootClock) -> Result<ExecEvent, RecordError> {
        if self.comm.len() >= COMM_LEN {
            return Err(RecordError::Comm {
                comm: self.comm.clone(),
            });
        }
        let mut ev = ExecEvent::ZERO;
        ev.comm[..self.comm.len()].copy_from_slice(self.comm.as_bytes());
        ev.ts_boot_ns = clock.since_boot(self.time.0);
        ev.cgroup_id = self.cgroup_id;
        (ev.tgid, ev.pid, ev.uid, ev.gid, ev.ppid) =
            (self.tgid, self.pid, self.uid, self.gid, self.ppid);
        ev.env_len = self.env_len;
        for r in &self.exec {
            ev.reasons |= match r {
                crate::alert::model::ExecReason::Name => exec::BY_NAME,
                crate::alert::model::ExecReason::Environment => exec::BY_ENV,
            };
        }
        if self.env_partial {
            ev.flags |= exec::ENV_PARTIAL;
        }
        Ok(ev)
    }
}

/// One line of a recording: a connection (or listener), or a program start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Line {
    Conn(Record),
    Exec(ExecRecord),
}

impl Line {
    pub fn time(&self) -> Timestamp {
        match self {
            Line::Conn(r) => r.time,
            Line::Exec(r) => r.time,
        }
    }
}

/// `MatchInfo`: the feed bitmasks per role.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Matched {
    #[serde(default)]
    pub exit_feeds: u32,
    #[serde(default)]
    pub relay_feeds: u32,
}

/// One `ConnEvent`, decoded. Fields keep the kernel struct's names (`pid`
/// is the thread id, `tgid` the process id); absent numbers are 0.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// `ts_boot_ns` as a wall-clock time.
    pub time: Timestamp,
    pub direction: Direction,
    /// An IPv4 address for an `AF_INET` socket; IPv6 (a mapped peer as
    /// `::ffff:a.b.c.d`) for `AF_INET6`.
    pub local: SocketAddr,
    pub remote: SocketAddr,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub flags: Vec<Flag>,
    #[serde(default)]
    pub matched: Matched,
    #[serde(default)]
    pub tgid: u32,
    #[serde(default)]
    pub pid: u32,
    #[serde(default)]
    pub uid: u32,
    #[serde(default)]
    pub gid: u32,
    #[serde(default)]
    pub comm: String,
    #[serde(default)]
    pub cgroup_id: u64,
    /// Not a kernel field: the daemon handled the event as incomplete
    /// (pending at shutdown, or unanswered for long).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub incomplete: bool,
}

fn octets(sa: &SocketAddr) -> [u8; 16] {
    let mut raw = [0u8; 16];
    match sa {
        SocketAddr::V4(a) => raw[..4].copy_from_slice(&a.ip().octets()),
        SocketAddr::V6(a) => raw = a.ip().octets(),
    }
    raw
}

fn socket(family: u16, raw: &[u8; 16], port: u16) -> SocketAddr {
    if family == AF_INET {
        SocketAddr::from(([raw[0], raw[1], raw[2], raw[3]], port))
    } else {
        SocketAddr::from((*raw, port))
    }
}

impl Record {
    /// The kernel event this record stands for, its time read with `clock`.
    pub fn to_event(&self, clock: &BootClock) -> Result<ConnEvent, RecordError> {
        let family = match (self.local, self.remote) {
            (SocketAddr::V4(_), SocketAddr::V4(_)) => AF_INET,
            (SocketAddr::V6(_), SocketAddr::V6(_)) => AF_INET6,
            (local, remote) => return Err(RecordError::Family { local, remote }),
        };
        if self.comm.len() >= COMM_LEN {
            return Err(RecordError::Comm {
                comm: self.comm.clone(),
            });
        }
        let mut comm = [0u8; COMM_LEN];
        comm[..self.comm.len()].copy_from_slice(self.comm.as_bytes());
        let flags = FLAGS
            .iter()
            .filter(|(f, _)| self.flags.contains(f))
            .fold(0, |acc, (_, bit)| acc | bit);
        Ok(ConnEvent {
            ts_boot_ns: clock.since_boot(self.time.0),
            cgroup_id: self.cgroup_id,
            tgid: self.tgid,
            pid: self.pid,
            uid: self.uid,
            gid: self.gid,
            local_addr: octets(&self.local),
            remote_addr: octets(&self.remote),
            local_port: self.local.port(),
            remote_port: self.remote.port(),
            family,
            direction: match self.direction {
                Direction::Egress => DIR_EGRESS,
                Direction::Ingress => DIR_INGRESS,
            },
            flags,
            matched: MatchInfo {
                exit_feeds: self.matched.exit_feeds,
                relay_feeds: self.matched.relay_feeds,
            },
            comm,
        })
    }

    /// Records a kernel event (its time read with `clock`).
    pub fn from_event(ev: &ConnEvent, clock: &BootClock) -> Result<Self, EventError> {
        let direction = match ev.direction {
            DIR_EGRESS => Direction::Egress,
            DIR_INGRESS => Direction::Ingress,
            other => return Err(EventError::Direction(other)),
        };
        if ev.family != AF_INET && ev.family != AF_INET6 {
            return Err(EventError::Family(ev.family));
        }
        let end = ev.comm.iter().position(|b| *b == 0).unwrap_or(COMM_LEN);
        Ok(Record {
            time: Timestamp(clock.wall(ev.ts_boot_ns)),
            direction,
            local: socket(ev.family, &ev.local_addr, ev.local_port),
            remote: socket(ev.family, &ev.remote_addr, ev.remote_port),
            flags: FLAGS
                .iter()
                .filter(|(_, bit)| ev.flags & bit != 0)
                .map(|(f, _)| *f)
                .collect(),
            matched: Matched {
                exit_feeds: ev.matched.exit_feeds,
                relay_feeds: ev.matched.relay_feeds,
            },
            tgid: ev.tgid,
            pid: ev.pid,
            uid: ev.uid,
            gid: ev.gid,
            comm: String::from_utf8_lossy(&ev.comm[..end]).into_owned(),
            cgroup_id: ev.cgroup_id,
            incomplete: false,
        })
    }
}

/// Reads a recording of connections and program starts: one JSON
/// [`Line`] per line (blank lines skipped).
pub fn parse_lines(text: &str) -> Result<Vec<Line>, ReplayError> {
    json_lines(text)
}

/// One JSON value per non-blank line; an error names the line.
fn json_lines<T: serde::de::DeserializeOwned>(text: &str) -> Result<Vec<T>, ReplayError> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|source| ReplayError::Parse {
                line: i + 1,
                source,
            })
        })
        .collect()
}

/// [`run`] for a recording with program starts too.
pub fn run_lines<S: ProcessSource>(
    pipeline: &mut Pipeline<S>,
    lines: &[Line],
    created: Option<SystemTime>,
) -> Result<Vec<Alert>, ReplayError> {
    let clock = pipeline.clock();
    let start = Instant::now();
    let first = lines.first().map(|r| r.time().0);
    let mono = |t: SystemTime| {
        start + first.map_or(Duration::ZERO, |f| t.duration_since(f).unwrap_or_default())
    };
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let index = i + 1;
        let time = line.time().0;
        let now = Now {
            wall: created.unwrap_or(time),
            mono: mono(time),
        };
        out.extend(pipeline.due(now.mono));
        match line {
            Line::Conn(record) => {
                let ev = record
                    .to_event(&clock)
                    .map_err(|reason| ReplayError::Record { index, reason })?;
                let alerts = pipeline
                    .handle(&ev, record.incomplete, now)
                    .map_err(|source| ReplayError::Event { index, source })?;
                out.extend(alerts);
            }
            Line::Exec(record) => {
                let ev = record
                    .to_event(&clock)
                    .map_err(|reason| ReplayError::Record { index, reason })?;
                let alerts = pipeline
                    .handle_exec(&ev, now)
                    .map_err(|source| ReplayError::Exec { index, source })?;
                out.extend(alerts);
            }
        }
    }
    out.extend(pipeline.flush());
    Ok(out)
}

/// Reads a recording: one JSON [`Record`] per line (blank lines skipped).
pub fn parse(text: &str) -> Result<Vec<Record>, ReplayError> {
    json_lines(text)
}

/// Runs `records` through `pipeline` as the daemon would have handled them
/// (see the module documentation) and returns the alerts in the order they
/// would have been sent. `created` is `event.created` for every alert;
/// `None`: each record's own time, so that a replay is reproducible.
pub fn run<S: ProcessSource>(
    pipeline: &mut Pipeline<S>,
    records: &[Record],
    created: Option<SystemTime>,
) -> Result<Vec<Alert>, ReplayError> {
    let lines: Vec<Line> = records.iter().cloned().map(Line::Conn).collect();
    run_lines(pipeline, &lines, created)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::SensorIdentity;
    use crate::alert::aggregate::Aggregator;
    use crate::alert::rules::Rules;
    use crate::feed::FeedSet;
    use crate::pipeline::KernelOnly;
    use std::time::UNIX_EPOCH;

    fn clock() -> BootClock {
        BootClock::at(UNIX_EPOCH + Duration::from_secs(1_700_000_000))
    }

    const LINE: &str = r#"{"time":"2023-11-14T22:13:25.000000001Z","direction":"ingress","local":"[::1]:8080","remote":"[::ffff:127.66.0.9]:40000","flags":["v4_mapped"],"matched":{"exit_feeds":1},"tgid":42,"pid":43,"uid":1000,"comm":"ngin","cgroup_id":7}"#;

    #[test]
    fn a_record_is_the_exact_kernel_event_and_back() {
        let record: Record = serde_json::from_str(LINE).unwrap();
        let ev = record.to_event(&clock()).unwrap();
        assert_eq!(ev.ts_boot_ns, 5_000_000_001);
        assert_eq!(ev.family, AF_INET6);
        assert_eq!(ev.direction, DIR_INGRESS);
        assert_eq!(ev.flags, FLAG_V4_MAPPED);
        assert_eq!(&ev.comm[..5], b"ngin\0");
        assert_eq!(ev.remote_port, 40000);
        assert_eq!(Record::from_event(&ev, &clock()).unwrap(), record);
        let written = serde_json::to_string(&record).unwrap();
        assert!(
            written.contains(r#""gid":0"#),
            "absent numbers are 0: {written}"
        );
        assert_eq!(serde_json::from_str::<Record>(&written).unwrap(), record);

        let v4: Record = serde_json::from_str(
            r#"{"time":"2023-11-14T22:13:20Z","direction":"egress","local":"10.0.0.5:1","remote":"198.51.100.7:443","flags":["audit","no_process"]}"#,
        )
        .unwrap();
        let ev = v4.to_event(&clock()).unwrap();
        assert_eq!(
            (ev.family, ev.flags),
            (AF_INET, FLAG_AUDIT | FLAG_NO_PROCESS)
        );
        assert_eq!(&ev.remote_addr[..5], &[198, 51, 100, 7, 0]);
        assert_eq!(Record::from_event(&ev, &clock()).unwrap(), v4);
    }

    #[test]
    fn impossible_records_are_refused_with_their_number() {
        let mut record: Record = serde_json::from_str(LINE).unwrap();
        record.local = "10.0.0.1:1".parse().unwrap();
        assert!(matches!(
            record.to_event(&clock()),
            Err(RecordError::Family { .. })
        ));
        record.local = "[::1]:1".parse().unwrap();
        record.comm = "a-name-of-16-bytes".into();
        assert!(matches!(
            record.to_event(&clock()),
            Err(RecordError::Comm { .. })
        ));
        let err = parse(&format!("{LINE}\n\nnot json\n")).unwrap_err();
        assert!(matches!(err, ReplayError::Parse { line: 3, .. }), "{err}");
        let mut pipeline = Pipeline::new(
            FeedSet::default(),
            Rules::builtin().unwrap(),
            SensorIdentity::local(),
            clock(),
            KernelOnly,
            Aggregator::new(Duration::ZERO, 1),
        );
        let good: Record = serde_json::from_str(LINE).unwrap();
        let err = run(&mut pipeline, &[good, record], None).unwrap_err();
        assert!(matches!(err, ReplayError::Record { index: 2, .. }), "{err}");
    }
}
