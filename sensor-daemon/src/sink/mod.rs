//! Sinks: where alerts go (stdout, files, syslog, HTTP), each with its own
//! task, bounded queue and, for remote sinks, an on-disk spool.
//!
//! # Flow
//! [`Sinks::send`] renders the alert once per format in use and `try_send`s
//! it into each sink's bounded channel (`queue_size`, default 10,000). It
//! never blocks and never awaits, so neither the ring-buffer reader nor the
//! other sinks wait for a slow sink.
//!
//! * **Local sinks** (`stdout`, `file:`) write whole batches of JSON lines
//!   from a blocking-pool thread and flush per batch. A full queue drops
//!   the alert and counts it (`dropped_queue`). `file:` creates its file with
//!   mode 0640, appends, and reopens it on [`Sinks::reopen_files`] (SIGHUP,
//!   for logrotate); the reopen travels through the queue, so alerts sent
//!   before the call land in the old file and later ones in the new file.
//! * **Durable remote sinks** (HTTP, syslog; `durable = true`, the
//!   default): the sink's task takes every alert from the queue as soon as
//!   it arrives and appends it to the spool, fsynced (group commit: one
//!   write and one fsync for all the alerts waiting, however many), and
//!   delivers from the spool only (batches as below, lingering `linger` for
//!   a fuller one). An alert is accepted once it is on disk: a crash,
//!   `kill -9` or power loss loses only the alerts still in the memory
//!   queue at that moment, which [`Sinks::send`] put there and the task has
//!   not taken yet (the window: normally the alerts of the last few
//!   milliseconds; at most `queue_size` when the disk cannot keep up).
//!   Cost: `cargo xtask bench`, section 5.
//! * **Memory remote sinks** (`durable = false`) deliver batches (`batch_max_events`,
//!   `batch_max_bytes`, `linger`) from memory while the receiver keeps up.
//!   When a delivery fails, or the queue passes half full during a slow
//!   delivery, the batch in flight and everything queued move to the spool
//!   (`sink/spool/mod.rs` documents its layout, durability and size bound),
//!   and from then on new alerts are appended there and delivered from
//!   there, oldest first, until it is empty again. Retries back off
//!   exponentially (`retry_initial` doubling to `retry_max`, +-50 %
//!   jitter). An alert leaves the spool only when the receiver acknowledged
//!   it: HTTP 2xx, plus `"code":0` for HEC and per-item statuses for `_bulk`;
//!   for syslog, a completed write (syslog has no application-level ack).
//!   Every disk operation runs on tokio's blocking pool. While a receiver
//!   is down, its sink moves the queue to the spool as fast as the disk
//!   allows, so the memory queue overflows (drop, counted) only when the
//!   disk cannot keep up. A crash loses the batch in delivery and the queue.
//! * **Shutdown** ([`Sinks::shutdown`]): local sinks write what is queued;
//!   remote sinks keep delivering until the deadline, then put what is left
//!   (in order) in the spool and fsync it. The next [`Sinks::start`] with the
//!   same state directory delivers the spool first.
//!
//! # Guarantees and limits
//! In order and at least once per remote sink; exactly once unless a
//! request reaches the receiver but its answer does not come back (timeout,
//! shutdown deadline in the middle of a request), in which case that batch
//! is sent again. `_bulk` items carry a unique `_id` with `create`, so
//! Elasticsearch itself drops such repeats (409 counts as delivered).
//! Payloads the receiver refuses for good (HTTP 400/413/422, `_bulk`
//! mapping errors, datagrams over `datagram_max_bytes`) are dropped and
//! counted (`dropped_undeliverable`) rather than retried forever.
//!
//! Failures and drops are counted in [`SinkStats`] and logged at most once
//! per sink per 10 s, with the number of messages suppressed since; losses
//! and failures have separate limits, so a failure never hides a loss.
//! Every loss (queue full, spool full, unwritable or damaged, refused) is
//! also a `health:` event within the daemon's `health_interval`, per
//! output, with its running total ([`LossReport`]).
//!
//! # Use from the daemon
//! ```ignore
//! // `--output` flags (repeatable; `OutputConfig: FromStr`) and/or
//! // `[[output]]` tables; none given: `vec![OutputConfig::new("stdout")]`.
//! for o in &outputs {
//!     o.validate()?; // before anything touches the kernel
//! }
//! // Inside the runtime. The state directory is the sensor's `state_dir`
//! // (default /var/lib/torsensor, beside status.json and feeds/); spools
//! // go to `<state_dir>/spool/<sink name>/`.
//! let sinks = Sinks::start(&outputs, &state_dir, "torsensor")?;
//! // Per alert, from the ring-buffer reader (never blocks):
//! sinks.send(&AlertMeta { time, severity: rule.severity, rule_id: rule.id.clone(), host },
//!            &|format| match format { Schema::Ecs => ecs_doc.clone(), Schema::Ocsf => .., Schema::Falco => .. });
//! sinks.reopen_files();            // on SIGHUP
//! let per_sink = sinks.stats();    // metrics endpoint
//! losses.tick(&per_sink);          // health tick (`LossReport`)
//! let last = sinks.shutdown(Duration::from_secs(5)).await; // on SIGTERM
//! ```
//!
//! # Files
//! Imports point down. `sink` may use `crate::alert` (the [`Schema`]),
//! `crate::statedir`, `crate::redact` and `crate::time`, and nothing above
//! it (`crate::config`, `crate::sensor`, the binary); inside it:
//!
//! * `mod.rs` (this file): [`Sinks`] (start, send, reopen, stats,
//!   shutdown), the queued [`Entry`], [`AlertMeta`] and [`SinkError`]. It
//!   starts each sink through `local` or `remote`.
//! * `local.rs`: the `stdout` and `file:` writers.
//! * `remote.rs`: the remote sink task and its state machine (memory and
//!   spool mode, batching, retries). It delivers through `transport.rs`
//!   (HTTP and syslog connections), which encodes with [`wire`] (RFC 5424,
//!   HEC, `_bulk` and their answers), and keeps alerts in `spool/` (the
//!   on-disk queue: `format.rs` its codec, `repair.rs` its checks at open).
//! * `stats.rs`: [`SinkStats`], the live counters every task writes and the
//!   rate limits of their warnings, and [`LossReport`].
//! * [`config`]: [`OutputConfig`], from `[[output]]` tables and `--output`
//!   flags, with its checks; used by all the above.
//! * [`bench`](mod@bench): `torsensor bench-outputs`, which uses [`Sinks`] only.

pub mod bench;
pub mod config;
mod local;
mod remote;
mod spool;
mod stats;
mod transport;
pub mod wire;

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::alert::Schema;
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;

pub use config::{Destination, HttpKind, OutputConfig};
#[cfg(feature = "fuzzing")]
pub use spool::replay_for_fuzzing as spool_replay_for_fuzzing;
use stats::SinkCounters;
use stats::snapshot;
pub use stats::{LossReport, SinkStats};

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("output {output:?}: {field}: {reason}")]
    Config {
        output: String,
        field: &'static str,
        reason: String,
    },
    #[error("--output {value:?}: {reason}")]
    Flag { value: String, reason: String },
    #[error("two outputs are named {name:?}; set a different name = on one of them")]
    DuplicateName { name: String },
    #[error("output {name}: cannot open spool directory {dir}: {source}")]
    Spool {
        name: String,
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("output {name}: {error}")]
    StateDir {
        name: String,
        error: crate::statedir::StateDirError,
    },
    #[error("output {name}: cannot open {path}: {source}")]
    Open {
        name: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("output {name}: cannot set up the HTTP client: {reason}")]
    Http { name: String, reason: String },
    #[error("sinks must be started inside a tokio runtime")]
    NoRuntime,
}

/// What every sink needs besides the JSON body.
#[derive(Debug, Clone)]
pub struct AlertMeta {
    pub time: SystemTime,
    /// ECS `event.severity`, 0-100.
    pub severity: u8,
    pub rule_id: String,
    pub host: String,
}

/// One rendered alert as queued and spooled (shared by the sinks using the
/// same format).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Entry {
    /// Unique id (128 random bits, hex): the `_bulk` `_id`.
    pub id: String,
    /// Nanoseconds since the Unix epoch.
    pub time_ns: u64,
    pub severity: u8,
    pub rule_id: String,
    pub host: String,
    /// The rendered document, compact JSON.
    pub body: String,
}

impl Entry {
    pub fn time(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_nanos(self.time_ns)
    }
}

enum Msg {
    Alert(Arc<Entry>),
    /// Reopen the output file (logrotate).
    Reopen,
}

struct Handle {
    name: String,
    kind: &'static str,
    format: Schema,
    remote: bool,
    tx: mpsc::Sender<Msg>,
    counters: Arc<SinkCounters>,
    /// Set when a reopen could not be queued; checked before each write.
    reopen: Arc<AtomicBool>,
    /// Wakes a remote sink to spill its queue to the spool.
    wake: Arc<Notify>,
    stop: watch::Sender<Option<Instant>>,
    task: JoinHandle<()>,
}

/// What a sink's task holds of the pieces its [`Handle`] shares.
struct TaskEnds {
    rx: mpsc::Receiver<Msg>,
    counters: Arc<SinkCounters>,
    /// Local sinks: a reopen that could not be queued.
    reopen: Arc<AtomicBool>,
    /// Remote sinks: woken to spill the queue to the spool.
    wake: Arc<Notify>,
    /// Remote sinks: the shutdown deadline.
    stop: watch::Receiver<Option<Instant>>,
}

/// Every configured sink, each on its own task.
pub struct Sinks {
    sinks: Vec<Handle>,
    formats: Vec<Schema>,
    ids: RandomState,
    id_counter: AtomicU64,
}

impl Sinks {
    /// Validates every output, opens files and spools (under
    /// `<state_dir>/spool/<sink-name>/`), and spawns one task per sink on
    /// the current tokio runtime. Reads existing spools' indexes (bounded by
    /// `spool_max_bytes`).
    pub fn start(
        outputs: &[OutputConfig],
        state_dir: &Path,
        app: &str,
    ) -> Result<Sinks, SinkError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(SinkError::NoRuntime);
        }
        let mut names: Vec<String> = Vec::new();
        for o in outputs {
            o.validate()?;
            let n = o.sink_name();
            if names.contains(&n) {
                return Err(SinkError::DuplicateName { name: n });
            }
            names.push(n);
        }
        let mut sinks = Vec::new();
        let mut formats = Vec::new();
        for (cfg, name) in outputs.iter().zip(names) {
            if !formats.contains(&cfg.format) {
                formats.push(cfg.format);
            }
            sinks.push(start_one(cfg, name, state_dir, app)?);
        }
        Ok(Sinks {
            sinks,
            formats,
            ids: RandomState::new(),
            id_counter: AtomicU64::new(0),
        })
    }

    fn new_id(&self) -> String {
        let n = self.id_counter.fetch_add(1, Ordering::Relaxed);
        let mut a = self.ids.build_hasher();
        a.write_u64(n);
        let mut b = self.ids.build_hasher();
        b.write_u64(!n);
        b.write_u64(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64),
        );
        format!("{:016x}{:016x}", a.finish(), b.finish())
    }

    /// Never blocks and never awaits: renders once per format in use and
    /// enqueues to every sink (a durable sink's task then puts it on disk:
    /// module docs). A remote sink whose queue passes half full is
    /// woken to move it to its spool; an alert that finds a queue full is
    /// dropped for that sink and counted (`dropped_queue`).
    pub fn send(&self, meta: &AlertMeta, render: &dyn Fn(Schema) -> serde_json::Value) {
        self.deliver(meta, render, false);
    }

    /// As [`Sinks::send`], but waits for room in a full queue instead of
    /// dropping: for a producer that may wait (the hunt, reading files as
    /// fast as it can). Must be called outside the runtime's tasks (it
    /// blocks the thread).
    pub fn send_wait(&self, meta: &AlertMeta, render: &dyn Fn(Schema) -> serde_json::Value) {
        self.deliver(meta, render, true);
    }

    fn deliver(&self, meta: &AlertMeta, render: &dyn Fn(Schema) -> serde_json::Value, wait: bool) {
        if self.sinks.is_empty() {
            return;
        }
        let id = self.new_id();
        let time_ns = meta
            .time
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let rendered: Vec<(Schema, Arc<Entry>)> = self
            .formats
            .iter()
            .map(|&f| {
                let entry = Entry {
                    id: id.clone(),
                    time_ns,
                    severity: meta.severity,
                    rule_id: meta.rule_id.clone(),
                    host: meta.host.clone(),
                    body: render(f).to_string(),
                };
                (f, Arc::new(entry))
            })
            .collect();
        for s in &self.sinks {
            let entry = rendered
                .iter()
                .find(|(f, _)| *f == s.format)
                .map(|(_, e)| e.clone())
                .expect("rendered");
            if s.remote && s.tx.capacity() < s.tx.max_capacity() / 2 {
                s.wake.notify_one();
            }
            let queued = if wait {
                s.tx.blocking_send(Msg::Alert(entry)).is_ok()
            } else {
                s.tx.try_send(Msg::Alert(entry)).is_ok()
            };
            if !queued {
                s.counters.dropped_queue.fetch_add(1, Ordering::Relaxed);
                s.counters
                    .note_drop("memory queue is full (or the sink stopped): alert dropped");
            }
            if s.remote && s.tx.capacity() < s.tx.max_capacity() / 2 {
                s.wake.notify_one();
            }
        }
    }

    /// Reopens every `file:` output (SIGUSR2 from logrotate, and SIGHUP).
    pub fn reopen_files(&self) {
        for s in self.sinks.iter().filter(|s| s.kind == "file") {
            if s.tx.try_send(Msg::Reopen).is_err() {
                s.reopen.store(true, Ordering::Relaxed);
            }
        }
    }

    /// Per-sink counters.
    pub fn stats(&self) -> Vec<SinkStats> {
        self.sinks.iter().map(stats_of).collect()
    }

    /// Flushes with a deadline: local sinks write what is queued, remote
    /// sinks try to deliver, and whatever is left goes to the spool (fsynced)
    /// to be delivered after the next start.
    pub async fn shutdown(self, deadline: Duration) -> Vec<SinkStats> {
        let end = Instant::now() + deadline;
        let mut waiting = Vec::new();
        for s in self.sinks {
            let _ = s.stop.send(Some(end));
            let Handle {
                name,
                kind,
                format,
                tx,
                counters,
                task,
                ..
            } = s;
            drop(tx);
            waiting.push((name, kind, format, counters, task));
        }
        // Spooling what is left and fsyncing takes a moment after the deadline.
        let hard_end = tokio::time::Instant::from_std(end) + Duration::from_secs(5);
        let mut out = Vec::new();
        for (name, kind, format, counters, mut task) in waiting {
            if tokio::time::timeout_at(hard_end, &mut task).await.is_err() {
                tracing::error!(sink = %name, "sink did not stop in time; alerts still queued for it are lost");
                task.abort();
            }
            out.push(snapshot(&name, kind, format, &counters, 0));
        }
        out
    }
}

fn stats_of(s: &Handle) -> SinkStats {
    let queued = (s.tx.max_capacity() - s.tx.capacity()) as u64;
    snapshot(&s.name, s.kind, s.format, &s.counters, queued)
}

fn start_one(
    cfg: &OutputConfig,
    name: String,
    state_dir: &Path,
    app: &str,
) -> Result<Handle, SinkError> {
    let dest = cfg.destination()?;
    let counters = Arc::new(SinkCounters::named(name.clone()));
    let (tx, rx) = mpsc::channel(cfg.queue_size);
    let (stop, stop_rx) = watch::channel(None);
    let reopen = Arc::new(AtomicBool::new(false));
    let wake = Arc::new(Notify::new());
    let kind = dest.kind_name();
    let ends = TaskEnds {
        rx,
        counters: counters.clone(),
        reopen: reopen.clone(),
        wake: wake.clone(),
        stop: stop_rx,
    };
    let task = match &dest {
        Destination::Stdout | Destination::File(_) => {
            local::spawn(&dest, &name, cfg.batch_max_events, ends)?
        }
        _ => remote::spawn(cfg, &dest, &name, state_dir, app, ends)?,
    };
    tracing::info!(sink = %name, kind, format = %cfg.format, durable = cfg.is_durable(&dest), "output ready");
    Ok(Handle {
        name,
        kind,
        format: cfg.format,
        remote: dest.is_remote(),
        tx,
        counters,
        reopen,
        wake,
        stop,
        task,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unusable_paths_are_named() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let file = OutputConfig::new("file:/nonexistent-dir/alerts.json");
            let e = Sinks::start(&[file], Path::new("/tmp"), "t")
                .err()
                .unwrap()
                .to_string();
            assert!(e.contains("/nonexistent-dir/alerts.json"), "{e}");
            let remote = OutputConfig::new("syslog+udp://127.0.0.1:514");
            let e = Sinks::start(&[remote], Path::new("/proc/torsensor-state"), "t")
                .err()
                .unwrap()
                .to_string();
            // The directory that could not be made is named.
            assert!(
                e.starts_with(
                    "output syslog-udp-127.0.0.1-514: cannot create /proc/torsensor-state"
                ),
                "{e}"
            );
        });
    }

    #[test]
    fn format_names() {
        let f: Vec<Schema> = ["ecs", "ocsf", "falco"]
            .iter()
            .map(|s| serde_json::from_value(serde_json::json!(s)).unwrap())
            .collect();
        assert_eq!(f, [Schema::Ecs, Schema::Ocsf, Schema::Falco]);
        assert_eq!(Schema::default(), Schema::Ecs);
        assert_eq!(Schema::Ocsf.to_string(), "ocsf");
    }

    #[test]
    fn start_needs_a_runtime_and_unique_names() {
        let dir = std::env::temp_dir();
        let out = OutputConfig::new("stdout");
        assert!(matches!(
            Sinks::start(std::slice::from_ref(&out), &dir, "t"),
            Err(SinkError::NoRuntime)
        ));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let e = Sinks::start(&[out.clone(), out], &dir, "t").err().unwrap();
            assert!(e.to_string().contains("\"stdout\""), "{e}");
        });
    }
}
