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
//!   (`sink/spool.rs` documents its layout, durability and size bound),
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

pub mod bench;
pub mod config;
mod spool;
mod transport;
pub mod wire;

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::alert::Schema;
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::sleep_until;

use crate::statedir::{Dir, SPOOL_DIR_MODE, STATE_DIR_MODE};
pub use config::{Destination, HttpKind, OutputConfig};
use spool::Spool;
#[cfg(feature = "fuzzing")]
pub use spool::replay_for_fuzzing as spool_replay_for_fuzzing;
use transport::{Batch, Transport};

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

/// SinkCounters of one sink, as reported to the metrics endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SinkStats {
    pub name: String,
    /// `stdout`, `file`, `syslog-udp`, `syslog-tcp`, `syslog-unix`, `http`, `hec`, `bulk`.
    pub kind: &'static str,
    pub format: Schema,
    /// Alerts the receiver acknowledged (local: written and flushed).
    pub delivered: u64,
    /// Failed delivery attempts (each retry counts).
    pub failed: u64,
    /// Alerts dropped because the memory queue was full.
    pub dropped_queue: u64,
    /// Alerts dropped from a full spool (oldest first).
    pub dropped_spool: u64,
    /// Alerts refused for good (HTTP 400/413/422, `_bulk` item errors,
    /// oversize datagrams) or lost to a local write error.
    pub dropped_undeliverable: u64,
    /// Alerts in the memory queue now.
    pub queued: u64,
    /// Alerts and bytes in the spool now.
    pub spooled_events: u64,
    pub spooled_bytes: u64,
}

#[derive(Default)]
struct RateLimit {
    last: Option<Instant>,
    suppressed: u64,
}

/// Shared counters of one sink (the task writes, `stats` reads).
#[derive(Default)]
pub(crate) struct SinkCounters {
    name: String,
    delivered: AtomicU64,
    failed: AtomicU64,
    dropped_queue: AtomicU64,
    dropped_spool: AtomicU64,
    dropped_undeliverable: AtomicU64,
    spooled_events: AtomicU64,
    spooled_bytes: AtomicU64,
    /// Rate limit of failure warnings (delivery, reading the spool, ...).
    fail_log: Mutex<RateLimit>,
    /// Rate limit of loss warnings: a separate one, so that a failure
    /// never hides a loss.
    loss_log: Mutex<RateLimit>,
}

/// At most one warning of each kind (failure, loss) per sink per this interval.
const LOG_EVERY: Duration = Duration::from_secs(10);

impl SinkCounters {
    fn warn_limited(&self, limit: &Mutex<RateLimit>, msg: &str) {
        let mut g = limit.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if g.last.is_none_or(|t| now.duration_since(t) >= LOG_EVERY) {
            tracing::warn!(sink = %self.name, suppressed = g.suppressed, "{msg}");
            g.last = Some(now);
            g.suppressed = 0;
        } else {
            g.suppressed += 1;
        }
    }
    /// Alerts were lost (they are counted by the caller).
    pub(crate) fn note_drop(&self, msg: &str) {
        self.warn_limited(&self.loss_log, msg);
    }
    /// Something failed without losing alerts (yet).
    fn warn_failure(&self, msg: &str) {
        self.warn_limited(&self.fail_log, msg);
    }
    fn note_failure(&self, msg: &str) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        self.warn_failure(&format!("delivery failed: {msg}"));
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
            match s.tx.try_send(Msg::Alert(entry)) {
                Ok(()) => {}
                Err(_) => {
                    s.counters.dropped_queue.fetch_add(1, Ordering::Relaxed);
                    s.counters
                        .note_drop("memory queue is full (or the sink stopped): alert dropped");
                }
            }
            if s.remote && s.tx.capacity() < s.tx.max_capacity() / 2 {
                s.wake.notify_one();
            }
        }
    }

    /// Reopens every `file:` output (SIGHUP after logrotate).
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

fn snapshot(
    name: &str,
    kind: &'static str,
    format: Schema,
    c: &SinkCounters,
    queued: u64,
) -> SinkStats {
    SinkStats {
        name: name.to_owned(),
        kind,
        format,
        delivered: c.delivered.load(Ordering::Relaxed),
        failed: c.failed.load(Ordering::Relaxed),
        dropped_queue: c.dropped_queue.load(Ordering::Relaxed),
        dropped_spool: c.dropped_spool.load(Ordering::Relaxed),
        dropped_undeliverable: c.dropped_undeliverable.load(Ordering::Relaxed),
        queued,
        spooled_events: c.spooled_events.load(Ordering::Relaxed),
        spooled_bytes: c.spooled_bytes.load(Ordering::Relaxed),
    }
}

fn stats_of(s: &Handle) -> SinkStats {
    let queued = (s.tx.max_capacity() - s.tx.capacity()) as u64;
    snapshot(&s.name, s.kind, s.format, &s.counters, queued)
}

/// Health events for lost alerts. The daemon's health tick (every
/// `health_interval`) calls [`LossReport::tick`] with [`Sinks::stats`]:
/// every output whose losses grew since the last tick gets one `health:`
/// warning with what grew, by cause, and its running total. Never rate
/// limited (one line per output per tick at most).
#[derive(Debug, Default)]
pub struct LossReport {
    last: Vec<SinkStats>,
}

impl LossReport {
    pub fn tick(&mut self, now: &[SinkStats]) {
        for s in now {
            let prev = self.last.iter().find(|p| p.name == s.name);
            let grew = |f: fn(&SinkStats) -> u64| f(s).saturating_sub(prev.map_or(0, f));
            let queue = grew(|x| x.dropped_queue);
            let spool = grew(|x| x.dropped_spool);
            let refused = grew(|x| x.dropped_undeliverable);
            let lost = queue + spool + refused;
            if lost > 0 {
                let total = s.dropped_queue + s.dropped_spool + s.dropped_undeliverable;
                tracing::warn!(
                    output = %s.name,
                    lost,
                    total_lost = total,
                    dropped_queue = queue,
                    dropped_spool = spool,
                    dropped_undeliverable = refused,
                    "health: output {} lost {lost} alerts since the last report (memory queue full: {queue}; spool full, unwritable or damaged: {spool}; refused by the receiver or unwritable: {refused}); {total} lost in total",
                    s.name
                );
            }
        }
        self.last = now.to_vec();
    }
}

fn start_one(
    cfg: &OutputConfig,
    name: String,
    state_dir: &Path,
    app: &str,
) -> Result<Handle, SinkError> {
    let dest = cfg.destination()?;
    let counters = Arc::new(SinkCounters {
        name: name.clone(),
        ..SinkCounters::default()
    });
    let (tx, rx) = mpsc::channel(cfg.queue_size);
    let (stop, stop_rx) = watch::channel(None);
    let reopen = Arc::new(AtomicBool::new(false));
    let wake = Arc::new(Notify::new());
    let kind = dest.kind_name();
    let task = match &dest {
        Destination::Stdout | Destination::File(_) => {
            let out = match &dest {
                Destination::File(path) => Local::File {
                    file: open_append(path).map_err(|source| SinkError::Open {
                        name: name.clone(),
                        path: path.clone(),
                        source,
                    })?,
                    path: path.clone(),
                },
                _ => Local::Stdout,
            };
            tokio::spawn(run_local(
                rx,
                out,
                counters.clone(),
                reopen.clone(),
                cfg.batch_max_events,
            ))
        }
        _ => {
            // Every directory on the way is checked (owner, mode, no
            // link) and created with an exact mode: see `statedir`.
            let dir = state_dir.join("spool").join(&name);
            let spool_dir = Dir::open(state_dir, STATE_DIR_MODE)
                .and_then(|state| state.subdir("spool", SPOOL_DIR_MODE))
                .and_then(|spool| spool.subdir(&name, SPOOL_DIR_MODE))
                .map_err(|error| SinkError::StateDir {
                    name: name.clone(),
                    error,
                })?;
            let spool = Spool::open_in(
                spool_dir,
                cfg.spool_max_bytes,
                cfg.spool_segment_bytes,
                counters.clone(),
            )
            .map_err(|source| SinkError::Spool {
                name: name.clone(),
                dir: dir.clone(),
                source,
            })?;
            if !spool.is_empty() {
                tracing::info!(
                    sink = %name,
                    alerts = spool.live_events(),
                    bytes = spool.live_bytes(),
                    "alerts spooled by an earlier run are delivered first"
                );
            }
            let transport = Transport::new(cfg, &dest, &name, app)?;
            let remote = Remote {
                transport,
                spool: Arc::new(Mutex::new(spool)),
                counters: counters.clone(),
                rx,
                wake: wake.clone(),
                stop: stop_rx,
                closed: false,
                deadline: None,
                stop_gone: false,
                max_events: cfg.batch_max_events,
                max_bytes: cfg.batch_max_bytes,
                linger: cfg.linger,
                retry_initial: cfg.retry_initial,
                retry_max: cfg.retry_max,
                rng: RandomState::new().build_hasher().finish() | 1,
                durable: cfg.is_durable(&dest),
            };
            tokio::spawn(remote.run())
        }
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

fn open_append(path: &Path) -> io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
}

// ---------------------------------------------------------------- local sinks

enum Local {
    Stdout,
    File { path: PathBuf, file: std::fs::File },
}

enum Part {
    Lines(Vec<u8>, u64),
    Reopen,
}

impl Local {
    /// Writes the parts in order; returns alerts written and alerts lost.
    fn write(&mut self, parts: &[Part], counters: &SinkCounters) -> (u64, u64) {
        let (mut ok, mut lost) = (0, 0);
        for part in parts {
            match part {
                Part::Reopen => {
                    if let Local::File { path, file } = self {
                        match open_append(path) {
                            Ok(f) => {
                                *file = f;
                                tracing::info!(sink = %counters.name, path = %path.display(), "output file reopened");
                            }
                            Err(e) => counters.warn_failure(&format!(
                                "cannot reopen {}: {e}; still writing to the old file",
                                path.display()
                            )),
                        }
                    }
                }
                Part::Lines(buf, n) => {
                    let res = match self {
                        Local::Stdout => {
                            let mut out = io::stdout().lock();
                            out.write_all(buf).and_then(|()| out.flush())
                        }
                        Local::File { file, .. } => file.write_all(buf),
                    };
                    match res {
                        Ok(()) => ok += n,
                        Err(e) => {
                            lost += n;
                            counters.note_failure(&format!("write: {e}"));
                        }
                    }
                }
            }
        }
        (ok, lost)
    }
}

async fn run_local(
    mut rx: mpsc::Receiver<Msg>,
    out: Local,
    counters: Arc<SinkCounters>,
    reopen: Arc<AtomicBool>,
    batch: usize,
) {
    let mut out = Some(out);
    let mut msgs = Vec::with_capacity(batch);
    while rx.recv_many(&mut msgs, batch.max(1)).await > 0 {
        let mut parts = Vec::new();
        if reopen.swap(false, Ordering::Relaxed) {
            parts.push(Part::Reopen);
        }
        let mut buf = Vec::new();
        let mut n = 0;
        for m in msgs.drain(..) {
            match m {
                Msg::Alert(e) => {
                    buf.extend_from_slice(e.body.as_bytes());
                    buf.push(b'\n');
                    n += 1;
                }
                Msg::Reopen => {
                    if n > 0 {
                        parts.push(Part::Lines(std::mem::take(&mut buf), n));
                        n = 0;
                    }
                    parts.push(Part::Reopen);
                }
            }
        }
        if n > 0 {
            parts.push(Part::Lines(buf, n));
        }
        let mut o = out.take().expect("output");
        let c = counters.clone();
        let res = tokio::task::spawn_blocking(move || {
            let r = o.write(&parts, &c);
            (o, r)
        })
        .await;
        match res {
            Ok((o, (ok, lost))) => {
                out = Some(o);
                counters.delivered.fetch_add(ok, Ordering::Relaxed);
                counters
                    .dropped_undeliverable
                    .fetch_add(lost, Ordering::Relaxed);
            }
            Err(e) => {
                tracing::error!(sink = %counters.name, "output writer failed: {e}");
                return;
            }
        }
    }
    if let Some(Local::File { file, .. }) = out {
        let _ = tokio::task::spawn_blocking(move || file.sync_data()).await;
    }
}

// --------------------------------------------------------------- remote sinks

type Records = Vec<(u64, Arc<Entry>)>;

struct Remote {
    transport: Transport,
    spool: Arc<Mutex<Spool>>,
    counters: Arc<SinkCounters>,
    rx: mpsc::Receiver<Msg>,
    wake: Arc<Notify>,
    stop: watch::Receiver<Option<Instant>>,
    /// The queue is closed and empty (shutdown).
    closed: bool,
    deadline: Option<tokio::time::Instant>,
    stop_gone: bool,
    max_events: usize,
    max_bytes: usize,
    linger: Duration,
    retry_initial: Duration,
    retry_max: Duration,
    rng: u64,
    /// `durable`: every alert is appended and fsynced before delivery.
    durable: bool,
}

/// Takes everything waiting in the queue (without waiting), numbering it.
fn take_queued(
    rx: &mut mpsc::Receiver<Msg>,
    spool: &Arc<Mutex<Spool>>,
    closed: &mut bool,
) -> Records {
    let mut out = Vec::new();
    let mut s = spool.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        match rx.try_recv() {
            Ok(Msg::Alert(e)) => out.push((s.next_seq(), e)),
            Ok(Msg::Reopen) => {}
            Err(mpsc::error::TryRecvError::Empty) => break,
            Err(mpsc::error::TryRecvError::Disconnected) => {
                *closed = true;
                break;
            }
        }
    }
    out
}

/// Appends records to the spool on the blocking pool (first marking the
/// batch in delivery with `protect`, when given); with `durable`, fsyncs
/// them (one fsync for all of them). What cannot be written is lost,
/// counted and logged with its number.
async fn spool_append(
    spool: &Arc<Mutex<Spool>>,
    counters: &SinkCounters,
    records: Records,
    durable: bool,
    protect: Option<Option<u64>>,
) {
    if records.is_empty() {
        return;
    }
    let n = records.len() as u64;
    let res = on_spool(spool, move |s| {
        if let Some(p) = protect {
            s.protect(p);
        }
        s.append(&records)?;
        Ok(if durable { s.commit().err() } else { None })
    })
    .await;
    match res {
        Ok(None) => {}
        Ok(Some(e)) => counters.warn_failure(&format!(
            "cannot fsync the spool ({e}): alerts are written but may not survive a power loss"
        )),
        Err(e) => {
            counters.dropped_spool.fetch_add(n, Ordering::Relaxed);
            counters.note_drop(&format!("cannot write the spool ({e}): {n} alerts lost"));
        }
    }
}

/// Runs a spool operation on the blocking pool.
async fn on_spool<T: Send + 'static>(
    spool: &Arc<Mutex<Spool>>,
    f: impl FnOnce(&mut Spool) -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    let s = spool.clone();
    tokio::task::spawn_blocking(move || f(&mut s.lock().unwrap_or_else(|e| e.into_inner())))
        .await
        .map_err(io::Error::other)?
}

impl Remote {
    fn seq(&self) -> u64 {
        self.spool
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .next_seq()
    }

    fn deadline_passed(&self) -> bool {
        self.deadline
            .is_some_and(|d| tokio::time::Instant::now() >= d)
    }

    fn on_stop_change(&mut self, changed: Result<(), watch::error::RecvError>) {
        match changed {
            Ok(()) => {
                self.deadline = (*self.stop.borrow_and_update()).map(tokio::time::Instant::from_std)
            }
            Err(_) => {
                // The Sinks handle is gone without a shutdown: stop now.
                self.stop_gone = true;
                self.deadline.get_or_insert_with(tokio::time::Instant::now);
            }
        }
    }

    fn take_queued(&mut self) -> Records {
        take_queued(&mut self.rx, &self.spool, &mut self.closed)
    }

    async fn append(&self, records: Records) {
        spool_append(&self.spool, &self.counters, records, self.durable, None).await;
    }

    /// Moves the in-memory batch (when not already spooled) and the queue
    /// to the spool, in order.
    async fn spill(&mut self, batch: Option<&Batch>) {
        let mut records: Records = batch.map(<[_]>::to_vec).unwrap_or_default();
        records.extend(self.take_queued());
        self.append(records).await;
    }

    async fn set_protect(&self, through: Option<u64>) {
        let _ = on_spool(&self.spool, move |s| {
            s.protect(through);
            Ok(())
        })
        .await;
    }

    async fn read_spool(&self) -> io::Result<Records> {
        let (me, mb) = (self.max_events, self.max_bytes);
        on_spool(&self.spool, move |s| s.read_batch(me, mb)).await
    }

    async fn ack(&self, seq: u64) {
        if let Err(e) = on_spool(&self.spool, move |s| s.ack_through(seq)).await {
            self.counters.warn_failure(&format!("cannot record delivery in the spool ({e}); alerts may be sent again after a restart"));
        }
    }

    /// Waits for the first alert, then lingers for more (memory mode).
    async fn collect(&mut self) -> Records {
        let mut batch: Records = Vec::new();
        let mut bytes = 0;
        let mut linger_until: Option<tokio::time::Instant> = None;
        loop {
            if self.deadline.is_some() && !batch.is_empty() {
                // Shutting down: no lingering.
                linger_until = Some(tokio::time::Instant::now());
            }
            tokio::select! {
                m = self.rx.recv() => match m {
                    Some(Msg::Alert(e)) => {
                        bytes += e.body.len();
                        batch.push((self.seq(), e));
                        if batch.len() >= self.max_events || bytes >= self.max_bytes {
                            return batch;
                        }
                        linger_until.get_or_insert_with(|| tokio::time::Instant::now() + self.linger);
                    }
                    Some(Msg::Reopen) => {}
                    None => {
                        self.closed = true;
                        return batch;
                    }
                },
                _ = sleep_until(linger_until.unwrap_or_else(tokio::time::Instant::now)), if linger_until.is_some() => return batch,
                c = self.stop.changed(), if !self.stop_gone => self.on_stop_change(c),
            }
        }
    }

    /// Durable mode, nothing spooled: waits for alerts and appends them as
    /// they come (each append fsynced: group commit), lingering like
    /// `collect` for a fuller batch.
    async fn collect_durable(&mut self) {
        let mut linger_until: Option<tokio::time::Instant> = None;
        loop {
            if self.closed || (linger_until.is_some() && self.deadline.is_some()) {
                return;
            }
            tokio::select! {
                m = self.rx.recv() => match m {
                    Some(Msg::Alert(e)) => {
                        let mut records = vec![(self.seq(), e)];
                        records.extend(self.take_queued());
                        self.append(records).await;
                        let c = &self.counters;
                        if c.spooled_events.load(Ordering::Relaxed) >= self.max_events as u64
                            || c.spooled_bytes.load(Ordering::Relaxed) >= self.max_bytes as u64
                        {
                            return;
                        }
                        linger_until.get_or_insert_with(|| tokio::time::Instant::now() + self.linger);
                    }
                    Some(Msg::Reopen) => {}
                    None => self.closed = true,
                },
                _ = sleep_until(linger_until.unwrap_or_else(tokio::time::Instant::now)), if linger_until.is_some() => return,
                c = self.stop.changed(), if !self.stop_gone => {
                    self.on_stop_change(c);
                    if self.deadline.is_some() {
                        return;
                    }
                }
            }
        }
    }

    fn backoff(&mut self, failures: u32) -> Duration {
        let base = self
            .retry_initial
            .saturating_mul(1u32 << failures.min(20))
            .min(self.retry_max);
        // xorshift64: jitter only, no need for a real generator.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let factor = 0.5 + (self.rng % 1000) as f64 / 1000.0;
        base.mul_f64(factor)
    }

    async fn run(mut self) {
        // Durable: always from the spool.
        let mut spool_mode = self.durable
            || !self
                .spool
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_empty();
        let mut failures: u32 = 0;
        'outer: loop {
            let (mut batch, mut backed) = if spool_mode {
                let queued = self.take_queued();
                self.append(queued).await;
                let b = match self.read_spool().await {
                    Ok(b) => b,
                    Err(e) => {
                        // Keep the order: no alert overtakes the spool.
                        self.counters
                            .warn_failure(&format!("cannot read the spool: {e}"));
                        if self.deadline_passed() {
                            break;
                        }
                        let wait = self.backoff(failures);
                        failures = failures.saturating_add(1);
                        self.wait_spooling(wait).await;
                        continue;
                    }
                };
                if b.is_empty() {
                    if self.durable {
                        if self.closed || self.deadline_passed() {
                            break;
                        }
                        self.collect_durable().await;
                    } else {
                        spool_mode = false;
                    }
                    continue;
                }
                (b, true)
            } else {
                if self.closed {
                    break;
                }
                if self.deadline_passed() {
                    break;
                }
                let b = self.collect().await;
                if b.is_empty() {
                    continue;
                }
                (b, false)
            };
            if self.deadline_passed() {
                if !backed {
                    self.spill(Some(&batch)).await;
                }
                break 'outer;
            }
            if backed {
                self.set_protect(batch.last().map(|r| r.0)).await;
            }
            let res = {
                let fut = self.transport.deliver(&batch);
                tokio::pin!(fut);
                loop {
                    tokio::select! {
                        r = &mut fut => break r,
                        _ = self.wake.notified(), if !spool_mode => {
                            // The queue is filling while this delivery is slow.
                            let mut records: Records = batch.clone();
                            records.extend(take_queued(&mut self.rx, &self.spool, &mut self.closed));
                            let last = batch.last().map(|r| r.0);
                            spool_append(&self.spool, &self.counters, records, self.durable, Some(last)).await;
                            spool_mode = true;
                            backed = true;
                        }
                        m = self.rx.recv(), if spool_mode && !self.closed => match m {
                            Some(Msg::Alert(e)) => {
                                let mut records = vec![(self.spool.lock().unwrap_or_else(|e| e.into_inner()).next_seq(), e)];
                                records.extend(take_queued(&mut self.rx, &self.spool, &mut self.closed));
                                spool_append(&self.spool, &self.counters, records, self.durable, None).await;
                            }
                            Some(Msg::Reopen) => {}
                            None => self.closed = true,
                        },
                        _ = sleep_until(self.deadline.unwrap_or_else(tokio::time::Instant::now)), if self.deadline.is_some() => {
                            break Err(transport::Failure::new("shutdown deadline reached during delivery"));
                        }
                        c = self.stop.changed(), if !self.stop_gone => {
                            match c {
                                Ok(()) => self.deadline = (*self.stop.borrow_and_update()).map(tokio::time::Instant::from_std),
                                Err(_) => {
                                    self.stop_gone = true;
                                    self.deadline.get_or_insert_with(tokio::time::Instant::now);
                                }
                            }
                        }
                    }
                }
            };
            if backed {
                self.set_protect(None).await;
            }
            match res {
                Ok(done) => {
                    // Acknowledged in the spool first, so that the counters
                    // never show an alert as delivered and spooled at once.
                    if backed {
                        self.ack(batch.last().expect("non-empty batch").0).await;
                    }
                    let n = batch.len() as u64;
                    self.counters
                        .delivered
                        .fetch_add(n - done.rejected, Ordering::Relaxed);
                    self.counters
                        .dropped_undeliverable
                        .fetch_add(done.rejected, Ordering::Relaxed);
                    if failures > 0 {
                        tracing::info!(sink = %self.counters.name, failed_attempts = failures, "delivering again");
                    }
                    failures = 0;
                    continue 'outer;
                }
                Err(f) => {
                    // Cut short by the shutdown deadline: not the receiver's failure.
                    if !self.deadline_passed() {
                        self.counters.note_failure(&f.reason);
                    }
                    if f.done > 0 {
                        if backed {
                            self.ack(batch[f.done - 1].0).await;
                        }
                        self.counters
                            .delivered
                            .fetch_add(f.done as u64 - f.rejected, Ordering::Relaxed);
                        self.counters
                            .dropped_undeliverable
                            .fetch_add(f.rejected, Ordering::Relaxed);
                        batch.drain(..f.done);
                    }
                    if !spool_mode {
                        // The receiver is down: keep what we hold on disk.
                        let b = if backed { None } else { Some(&batch[..]) };
                        let mut records: Records = b.map(<[_]>::to_vec).unwrap_or_default();
                        records.extend(self.take_queued());
                        self.append(records).await;
                        spool_mode = true;
                    }
                    if self.deadline_passed() {
                        break 'outer;
                    }
                    // A receiver's Retry-After wins over our back-off, up to retry_max.
                    let wait = match f.retry_after {
                        Some(ra) => ra.min(self.retry_max).max(self.backoff(failures)),
                        None => self.backoff(failures),
                    };
                    failures = failures.saturating_add(1);
                    self.wait_spooling(wait).await;
                    if self.deadline_passed() {
                        break 'outer;
                    }
                    continue 'outer;
                }
            }
        }
        // Whatever is still queued goes to the spool, then everything is synced.
        let queued = self.take_queued();
        self.append(queued).await;
        if let Err(e) = on_spool(&self.spool, |s| s.sync()).await {
            tracing::error!(sink = %self.counters.name, "cannot sync the spool: {e}");
        }
    }

    /// Back-off: waits `wait` (or until the deadline) while moving new
    /// alerts to the spool.
    async fn wait_spooling(&mut self, wait: Duration) {
        let until = tokio::time::Instant::now() + wait;
        loop {
            let end = match self.deadline {
                Some(d) if d < until => d,
                _ => until,
            };
            tokio::select! {
                _ = sleep_until(end) => return,
                m = self.rx.recv(), if !self.closed => match m {
                    Some(Msg::Alert(e)) => {
                        let mut records = vec![(self.seq(), e)];
                        records.extend(self.take_queued());
                        self.append(records).await;
                    }
                    Some(Msg::Reopen) => {}
                    None => self.closed = true,
                },
                c = self.stop.changed(), if !self.stop_gone => self.on_stop_change(c),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_logs_are_rate_limited_but_all_counted() {
        let c = SinkCounters {
            name: "t".into(),
            ..SinkCounters::default()
        };
        for _ in 0..5 {
            c.note_failure("connection refused");
        }
        assert_eq!(c.failed.load(Ordering::Relaxed), 5);
        let g = c.fail_log.lock().unwrap();
        assert!(g.last.is_some());
        assert_eq!(g.suppressed, 4, "one warning, four suppressed");
        drop(g);
        // A loss right after is not hidden by the failures' limit.
        c.note_drop("cannot write the spool: 3 alerts lost");
        let g = c.loss_log.lock().unwrap();
        assert!(g.last.is_some());
        assert_eq!(g.suppressed, 0, "the loss was logged");
    }

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
