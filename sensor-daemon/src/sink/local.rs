//! Local sinks: `stdout` and `file:` writers. Each runs one task that takes
//! whole batches of alerts from its queue and writes them as JSON lines from
//! a blocking-pool thread, flushing per batch; a `file:` output is created
//! with mode 0640, appended to, and reopened on request (logrotate).
//!
//! Owns the writer task and the output file; it may call the sink's shared
//! pieces in `sink/mod.rs` (the queue's [`Msg`]) and `sink/stats.rs` (the
//! counters), and nothing of the daemon above `sink`.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::config::Destination;
use super::stats::SinkCounters;
use super::{Msg, SinkError, TaskEnds};

/// Opens the output (`dest` is `stdout` or `file:`) and spawns its writer
/// task on the current runtime.
pub(super) fn spawn(
    dest: &Destination,
    name: &str,
    batch: usize,
    ends: TaskEnds,
) -> Result<JoinHandle<()>, SinkError> {
    let out = match dest {
        Destination::File(path) => Local::File {
            file: open_append(path).map_err(|source| SinkError::Open {
                name: name.to_owned(),
                path: path.clone(),
                source,
            })?,
            path: path.clone(),
        },
        _ => Local::Stdout,
    };
    let TaskEnds {
        rx,
        counters,
        reopen,
        ..
    } = ends;
    Ok(tokio::spawn(run_local(rx, out, counters, reopen, batch)))
}

fn open_append(path: &Path) -> io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
}

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
