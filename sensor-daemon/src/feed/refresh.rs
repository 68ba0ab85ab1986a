//! Periodic refresh: one task per feed fetches on its schedule, parses on a
//! blocking thread, and hands the outcome to the sensor loop, which owns the
//! [`FeedManager`](super::manager::FeedManager) and the kernel maps and
//! answers with the delay until the next fetch.

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::config::FeedConfig;
use super::manager::{FeedManager, Outcome, complete, limits};
use super::source::{self, Fetched, Location, Validators};

/// One finished fetch, waiting for the sensor loop's verdict.
pub struct FetchDone {
    /// Which [`Refresher::restart`] started the task (older ones are stale).
    pub generation: u64,
    pub index: usize,
    pub outcome: Outcome,
    /// The loop answers with the next delay and whether the body was accepted.
    pub reply: oneshot::Sender<Verdict>,
}

#[derive(Debug, Clone, Copy)]
pub struct Verdict {
    pub next: Duration,
    pub accepted: bool,
}

/// The refresh tasks.
pub struct Refresher {
    tx: mpsc::Sender<FetchDone>,
    pub rx: mpsc::Receiver<FetchDone>,
    tasks: Vec<JoinHandle<()>>,
    generation: u64,
}

impl Default for Refresher {
    fn default() -> Self {
        Self::new()
    }
}

impl Refresher {
    pub fn new() -> Self {
        let (tx, rx) = mpsc::channel(8);
        Refresher {
            tx,
            rx,
            tasks: Vec::new(),
            generation: 0,
        }
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Stops the running tasks and starts one per feed: the first fetch on
    /// the feed's schedule, or at once when `now`.
    pub fn restart(&mut self, manager: &FeedManager, now: bool) {
        self.stop();
        self.generation += 1;
        let start = std::time::SystemTime::now();
        for (index, state) in manager.states.iter().enumerate() {
            let Ok(location) = state.config.location() else {
                continue;
            };
            let first = if now {
                Duration::ZERO
            } else {
                manager.first_delay(index, start)
            };
            tracing::debug!("feed {}: next fetch in {first:?}", state.config.name);
            self.tasks.push(tokio::spawn(task(
                self.generation,
                index,
                state.config.clone(),
                location,
                state.validators.clone(),
                first,
                manager.allow_reserved(),
                self.tx.clone(),
            )));
        }
    }

    pub fn stop(&mut self) {
        for task in self.tasks.drain(..) {
            task.abort();
        }
    }
}

impl Drop for Refresher {
    fn drop(&mut self) {
        self.stop();
    }
}

#[allow(clippy::too_many_arguments)]
async fn task(
    generation: u64,
    index: usize,
    cfg: FeedConfig,
    location: Location,
    mut validators: Validators,
    first: Duration,
    allow_reserved: bool,
    tx: mpsc::Sender<FetchDone>,
) {
    let limits = limits(&cfg);
    let client = match source::client_for(&location, &limits, cfg.allow_http) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("feed {}: cannot refresh: {e}", cfg.name);
            return;
        }
    };
    let mut delay = first;
    loop {
        tokio::time::sleep(delay).await;
        let result = source::fetch(client.as_ref(), &location, &validators, &limits).await;
        let new_validators = match &result {
            Ok(Fetched::Body { validators, .. }) => Some(validators.clone()),
            _ => None,
        };
        let format = cfg.format;
        let options = cfg.parse_options(allow_reserved);
        let outcome = match tokio::task::spawn_blocking(move || {
            Outcome::from_fetch(result, format, &options)
        })
        .await
        {
            Ok(o) => complete(o, &cfg, allow_reserved).await,
            Err(e) => {
                tracing::error!("feed {}: parsing failed: {e}", cfg.name);
                return;
            }
        };
        let (reply, verdict) = oneshot::channel();
        let done = FetchDone {
            generation,
            index,
            outcome,
            reply,
        };
        if tx.send(done).await.is_err() {
            return;
        }
        let Ok(verdict) = verdict.await else {
            return;
        };
        if verdict.accepted
            && let Some(v) = new_validators
        {
            validators = v;
        }
        delay = verdict.next;
    }
}
