//! Remote sinks (HTTP, syslog): the task of one output and its state
//! machine, as the module docs of `sink` describe it.
//!
//! * **Spool mode** (always for `durable` sinks, and for memory sinks
//!   while anything is spooled): every alert taken from the queue is
//!   appended to the spool, and batches are read from the spool, delivered,
//!   and acknowledged in it. A memory sink whose spool runs empty goes back
//!   to memory mode.
//! * **Memory mode** (`durable = false`): batches are collected from the
//!   queue (`batch_max_events`, `batch_max_bytes`, `linger`) and delivered
//!   from memory. A failed delivery, or the queue passing half full during
//!   a slow one, moves the batch and the queue to the spool: spool mode.
//! * **Retries** back off exponentially (`retry_initial` doubling to
//!   `retry_max`, +-50 % jitter, a receiver's `Retry-After` winning up to
//!   `retry_max`), moving new alerts to the spool while they wait.
//! * **Shutdown**: at the deadline the batch in memory and the queue go to
//!   the spool, which is fsynced.
//!
//! Owns the task and its [`Inbox`] (the queue's receiving end and the
//! spool behind it). It may call `transport` (one delivery), `spool` (the
//! on-disk queue; every operation on tokio's blocking pool), `stats` (the
//! counters), `config` and `crate::statedir` (to open the spool directory).

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::sleep_until;

use super::config::{Destination, OutputConfig};
use super::spool::Spool;
use super::stats::SinkCounters;
use super::transport::{Batch, Done, Failure, Transport};
use super::{Entry, Msg, SinkError, TaskEnds};
use crate::statedir::{Dir, SPOOL_DIR_MODE, STATE_DIR_MODE};

type Records = Vec<(u64, Arc<Entry>)>;

/// Opens the sink's spool (`<state_dir>/spool/<name>/`) and transport and
/// spawns its task on the current runtime.
pub(super) fn spawn(
    cfg: &OutputConfig,
    dest: &Destination,
    name: &str,
    state_dir: &Path,
    app: &str,
    ends: TaskEnds,
) -> Result<JoinHandle<()>, SinkError> {
    let spool = open_spool(cfg, name, state_dir, &ends.counters)?;
    if !spool.is_empty() {
        tracing::info!(
            sink = %name,
            alerts = spool.live_events(),
            bytes = spool.live_bytes(),
            "alerts spooled by an earlier run are delivered first"
        );
    }
    let transport = Transport::new(cfg, dest, name, app)?;
    let durable = cfg.is_durable(dest);
    let TaskEnds {
        rx,
        counters,
        wake,
        stop,
        ..
    } = ends;
    let remote = Remote {
        transport,
        // Durable: always from the spool.
        spool_mode: durable || !spool.is_empty(),
        inbox: Inbox {
            rx,
            closed: false,
            spool: Arc::new(Mutex::new(spool)),
            counters: counters.clone(),
            durable,
        },
        counters,
        wake,
        shutdown: Shutdown {
            rx: stop,
            deadline: None,
            gone: false,
        },
        max_events: cfg.batch_max_events,
        max_bytes: cfg.batch_max_bytes,
        linger: cfg.linger,
        retry_initial: cfg.retry_initial,
        retry_max: cfg.retry_max,
        rng: RandomState::new().build_hasher().finish() | 1,
        failures: 0,
    };
    Ok(tokio::spawn(remote.run()))
}

/// Every directory on the way is checked (owner, mode, no link) and
/// created with an exact mode: see `statedir`.
fn open_spool(
    cfg: &OutputConfig,
    name: &str,
    state_dir: &Path,
    counters: &Arc<SinkCounters>,
) -> Result<Spool, SinkError> {
    let dir = state_dir.join("spool").join(name);
    let spool_dir = Dir::open(state_dir, STATE_DIR_MODE)
        .and_then(|state| state.subdir("spool", SPOOL_DIR_MODE))
        .and_then(|spool| spool.subdir(name, SPOOL_DIR_MODE))
        .map_err(|error| SinkError::StateDir {
            name: name.to_owned(),
            error,
        })?;
    Spool::open_in(
        spool_dir,
        cfg.spool_max_bytes,
        cfg.spool_segment_bytes,
        counters.clone(),
    )
    .map_err(|source| SinkError::Spool {
        name: name.to_owned(),
        dir,
        source,
    })
}

/// The shutdown signal as the task sees it.
struct Shutdown {
    rx: watch::Receiver<Option<Instant>>,
    deadline: Option<tokio::time::Instant>,
    /// The sender is gone.
    gone: bool,
}

impl Shutdown {
    fn passed(&self) -> bool {
        self.deadline
            .is_some_and(|d| tokio::time::Instant::now() >= d)
    }

    fn on_change(&mut self, changed: Result<(), watch::error::RecvError>) {
        match changed {
            Ok(()) => {
                self.deadline = (*self.rx.borrow_and_update()).map(tokio::time::Instant::from_std)
            }
            Err(_) => {
                // The Sinks handle is gone without a shutdown: stop now.
                self.gone = true;
                self.deadline.get_or_insert_with(tokio::time::Instant::now);
            }
        }
    }
}

/// The task's end of its memory queue, and the spool alerts move to.
struct Inbox {
    rx: mpsc::Receiver<Msg>,
    /// The queue is closed and empty (shutdown).
    closed: bool,
    spool: Arc<Mutex<Spool>>,
    counters: Arc<SinkCounters>,
    /// `durable`: every alert is appended and fsynced before delivery.
    durable: bool,
}

impl Inbox {
    fn seq(&self) -> u64 {
        self.spool
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .next_seq()
    }

    /// Takes everything waiting in the queue (without waiting), numbering it.
    fn take(&mut self) -> Records {
        let mut out = Vec::new();
        let mut s = self.spool.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            match self.rx.try_recv() {
                Ok(Msg::Alert(e)) => out.push((s.next_seq(), e)),
                Ok(Msg::Reopen) => {}
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    self.closed = true;
                    break;
                }
            }
        }
        out
    }

    /// Runs a spool operation on the blocking pool.
    async fn on_spool<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Spool) -> io::Result<T> + Send + 'static,
    ) -> io::Result<T> {
        let s = self.spool.clone();
        tokio::task::spawn_blocking(move || f(&mut s.lock().unwrap_or_else(|e| e.into_inner())))
            .await
            .map_err(io::Error::other)?
    }

    /// Appends records to the spool on the blocking pool (first marking the
    /// batch in delivery with `protect`, when given); with `durable`, fsyncs
    /// them (one fsync for all of them). What cannot be written is lost,
    /// counted and logged with its number.
    async fn append(&self, records: Records, protect: Option<Option<u64>>) {
        if records.is_empty() {
            return;
        }
        let n = records.len() as u64;
        let durable = self.durable;
        let res = self
            .on_spool(move |s| {
                if let Some(p) = protect {
                    s.protect(p);
                }
                s.append(&records)?;
                Ok(if durable { s.commit().err() } else { None })
            })
            .await;
        let counters = &self.counters;
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

    /// Moves the in-memory batch (when given: not already spooled) and the
    /// queue to the spool, in order (`protect`: as in [`Inbox::append`]).
    async fn spill(&mut self, batch: Option<&Batch>, protect: Option<Option<u64>>) {
        let mut records: Records = batch.map(<[_]>::to_vec).unwrap_or_default();
        records.extend(self.take());
        self.append(records, protect).await;
    }

    /// What the queue gave, in spool mode: an alert goes to the spool with
    /// everything queued behind it; the end of the queue closes it.
    async fn spool_received(&mut self, m: Option<Msg>) {
        match m {
            Some(Msg::Alert(e)) => {
                let mut records = vec![(self.seq(), e)];
                records.extend(self.take());
                self.append(records, None).await;
            }
            Some(Msg::Reopen) => {}
            None => self.closed = true,
        }
    }

    async fn protect(&self, through: Option<u64>) {
        let _ = self
            .on_spool(move |s| {
                s.protect(through);
                Ok(())
            })
            .await;
    }

    async fn read(&self, max_events: usize, max_bytes: usize) -> io::Result<Records> {
        self.on_spool(move |s| s.read_batch(max_events, max_bytes))
            .await
    }

    async fn ack(&self, seq: u64) {
        if let Err(e) = self.on_spool(move |s| s.ack_through(seq)).await {
            self.counters.warn_failure(&format!("cannot record delivery in the spool ({e}); alerts may be sent again after a restart"));
        }
    }
}

struct Remote {
    transport: Transport,
    inbox: Inbox,
    counters: Arc<SinkCounters>,
    /// Woken by `Sinks::send` when the queue passes half full.
    wake: Arc<Notify>,
    shutdown: Shutdown,
    max_events: usize,
    max_bytes: usize,
    linger: Duration,
    retry_initial: Duration,
    retry_max: Duration,
    rng: u64,
    /// Delivering from the spool (module docs).
    spool_mode: bool,
    /// Failed attempts since the last delivery (the back-off's exponent).
    failures: u32,
}

/// What [`Remote::next_batch`] found.
enum Next {
    /// A batch to deliver; `backed`: read from the spool.
    Batch(Records, bool),
    /// Nothing yet: look again.
    Again,
    /// Shutting down.
    Stop,
}

impl Remote {
    async fn run(mut self) {
        loop {
            let (mut batch, mut backed) = match self.next_batch().await {
                Next::Batch(b, backed) => (b, backed),
                Next::Again => continue,
                Next::Stop => break,
            };
            if self.shutdown.passed() {
                if !backed {
                    self.inbox.spill(Some(&batch), None).await;
                }
                break;
            }
            if backed {
                self.inbox.protect(batch.last().map(|r| r.0)).await;
            }
            let res = self.deliver(&batch, &mut backed).await;
            if backed {
                self.inbox.protect(None).await;
            }
            match res {
                Ok(done) => self.delivered(&batch, backed, done).await,
                Err(f) => {
                    if !self.failed(&mut batch, backed, f).await {
                        break;
                    }
                }
            }
        }
        // Whatever is still queued goes to the spool, then everything is synced.
        self.inbox.spill(None, None).await;
        if let Err(e) = self.inbox.on_spool(|s| s.sync()).await {
            tracing::error!(sink = %self.counters.name, "cannot sync the spool: {e}");
        }
    }

    /// In spool mode, moves the queue to the spool and reads a batch from
    /// it; in memory mode, collects one from the queue.
    async fn next_batch(&mut self) -> Next {
        if !self.spool_mode {
            if self.inbox.closed || self.shutdown.passed() {
                return Next::Stop;
            }
            let b = self.collect().await;
            return if b.is_empty() {
                Next::Again
            } else {
                Next::Batch(b, false)
            };
        }
        self.inbox.spill(None, None).await;
        let b = match self.inbox.read(self.max_events, self.max_bytes).await {
            Ok(b) => b,
            Err(e) => {
                // Keep the order: no alert overtakes the spool.
                self.counters
                    .warn_failure(&format!("cannot read the spool: {e}"));
                if self.shutdown.passed() {
                    return Next::Stop;
                }
                let wait = self.retry_wait(None);
                self.wait_spooling(wait).await;
                return Next::Again;
            }
        };
        if !b.is_empty() {
            return Next::Batch(b, true);
        }
        if self.inbox.durable {
            if self.inbox.closed || self.shutdown.passed() {
                return Next::Stop;
            }
            self.collect_durable().await;
        } else {
            self.spool_mode = false;
        }
        Next::Again
    }

    /// Delivers `batch` while watching the queue: in memory mode, a queue
    /// passing half full moves the batch (now `backed`) and the queue to
    /// the spool; in spool mode, new alerts go there as they come. The
    /// shutdown deadline cuts the delivery short.
    async fn deliver(&mut self, batch: &Batch, backed: &mut bool) -> Result<Done, Failure> {
        let fut = self.transport.deliver(batch);
        tokio::pin!(fut);
        loop {
            tokio::select! {
                r = &mut fut => break r,
                _ = self.wake.notified(), if !self.spool_mode => {
                    // The queue is filling while this delivery is slow.
                    let last = batch.last().map(|r| r.0);
                    self.inbox.spill(Some(batch), Some(last)).await;
                    self.spool_mode = true;
                    *backed = true;
                }
                m = self.inbox.rx.recv(), if self.spool_mode && !self.inbox.closed => {
                    self.inbox.spool_received(m).await;
                }
                _ = sleep_until(self.shutdown.deadline.unwrap_or_else(tokio::time::Instant::now)), if self.shutdown.deadline.is_some() => {
                    break Err(Failure::new("shutdown deadline reached during delivery"));
                }
                c = self.shutdown.rx.changed(), if !self.shutdown.gone => self.shutdown.on_change(c),
            }
        }
    }

    fn count_delivered(&self, n: u64, rejected: u64) {
        self.counters
            .delivered
            .fetch_add(n - rejected, Ordering::Relaxed);
        self.counters
            .dropped_undeliverable
            .fetch_add(rejected, Ordering::Relaxed);
    }

    /// The receiver acknowledged the whole batch.
    async fn delivered(&mut self, batch: &Batch, backed: bool, done: Done) {
        // Acknowledged in the spool first, so that the counters
        // never show an alert as delivered and spooled at once.
        if backed {
            self.inbox
                .ack(batch.last().expect("non-empty batch").0)
                .await;
        }
        self.count_delivered(batch.len() as u64, done.rejected);
        if self.failures > 0 {
            tracing::info!(sink = %self.counters.name, failed_attempts = self.failures, "delivering again");
        }
        self.failures = 0;
    }

    /// The batch was not (fully) delivered: counts what was, keeps the rest
    /// on disk and backs off. Returns whether to go on (the deadline has
    /// not passed).
    async fn failed(&mut self, batch: &mut Records, backed: bool, f: Failure) -> bool {
        // Cut short by the shutdown deadline: not the receiver's failure.
        if !self.shutdown.passed() {
            self.counters.note_failure(&f.reason);
        }
        if f.done > 0 {
            if backed {
                self.inbox.ack(batch[f.done - 1].0).await;
            }
            self.count_delivered(f.done as u64, f.rejected);
            batch.drain(..f.done);
        }
        if !self.spool_mode {
            // The receiver is down: keep what we hold on disk.
            let b = if backed { None } else { Some(&batch[..]) };
            self.inbox.spill(b, None).await;
            self.spool_mode = true;
        }
        if self.shutdown.passed() {
            return false;
        }
        let wait = self.retry_wait(f.retry_after);
        self.wait_spooling(wait).await;
        !self.shutdown.passed()
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

    /// The wait before the next attempt, counting this failure. A
    /// receiver's Retry-After wins over our back-off, up to retry_max.
    fn retry_wait(&mut self, retry_after: Option<Duration>) -> Duration {
        let backoff = self.backoff(self.failures);
        self.failures = self.failures.saturating_add(1);
        match retry_after {
            Some(ra) => ra.min(self.retry_max).max(backoff),
            None => backoff,
        }
    }

    /// Waits for the first alert, then lingers for more (memory mode).
    async fn collect(&mut self) -> Records {
        let mut batch: Records = Vec::new();
        let mut bytes = 0;
        let mut linger_until: Option<tokio::time::Instant> = None;
        loop {
            if self.shutdown.deadline.is_some() && !batch.is_empty() {
                // Shutting down: no lingering.
                linger_until = Some(tokio::time::Instant::now());
            }
            tokio::select! {
                m = self.inbox.rx.recv() => match m {
                    Some(Msg::Alert(e)) => {
                        bytes += e.body.len();
                        batch.push((self.inbox.seq(), e));
                        if batch.len() >= self.max_events || bytes >= self.max_bytes {
                            return batch;
                        }
                        linger_until.get_or_insert_with(|| tokio::time::Instant::now() + self.linger);
                    }
                    Some(Msg::Reopen) => {}
                    None => {
                        self.inbox.closed = true;
                        return batch;
                    }
                },
                _ = sleep_until(linger_until.unwrap_or_else(tokio::time::Instant::now)), if linger_until.is_some() => return batch,
                c = self.shutdown.rx.changed(), if !self.shutdown.gone => self.shutdown.on_change(c),
            }
        }
    }

    /// Durable mode, nothing spooled: waits for alerts and appends them as
    /// they come (each append fsynced: group commit), lingering like
    /// `collect` for a fuller batch.
    async fn collect_durable(&mut self) {
        let mut linger_until: Option<tokio::time::Instant> = None;
        loop {
            if self.inbox.closed || (linger_until.is_some() && self.shutdown.deadline.is_some()) {
                return;
            }
            tokio::select! {
                m = self.inbox.rx.recv() => {
                    let alert = matches!(m, Some(Msg::Alert(_)));
                    self.inbox.spool_received(m).await;
                    if alert {
                        let c = &self.counters;
                        if c.spooled_events.load(Ordering::Relaxed) >= self.max_events as u64
                            || c.spooled_bytes.load(Ordering::Relaxed) >= self.max_bytes as u64
                        {
                            return;
                        }
                        linger_until.get_or_insert_with(|| tokio::time::Instant::now() + self.linger);
                    }
                }
                _ = sleep_until(linger_until.unwrap_or_else(tokio::time::Instant::now)), if linger_until.is_some() => return,
                c = self.shutdown.rx.changed(), if !self.shutdown.gone => {
                    self.shutdown.on_change(c);
                    if self.shutdown.deadline.is_some() {
                        return;
                    }
                }
            }
        }
    }

    /// Back-off: waits `wait` (or until the deadline) while moving new
    /// alerts to the spool.
    async fn wait_spooling(&mut self, wait: Duration) {
        let until = tokio::time::Instant::now() + wait;
        loop {
            let end = match self.shutdown.deadline {
                Some(d) if d < until => d,
                _ => until,
            };
            tokio::select! {
                _ = sleep_until(end) => return,
                m = self.inbox.rx.recv(), if !self.inbox.closed => self.inbox.spool_received(m).await,
                c = self.shutdown.rx.changed(), if !self.shutdown.gone => self.shutdown.on_change(c),
            }
        }
    }
}
