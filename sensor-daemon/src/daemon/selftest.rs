//! The self-test: proof that the real path works on this host, now.
//!
//! A canary address is armed in the live kernel maps (as a feed of its own,
//! `torsensor-selftest`, switched in and out like any refresh), a thread of
//! the daemon connects to it and accepts from it, and the test passes once
//! both alerts (egress and ingress, each naming the daemon's own process)
//! have come back through the ring buffer and the pipeline and have been
//! handed to the outputs. Then the canary is removed. The alerts do reach
//! the outputs (`threat.feed.name: torsensor-selftest`), which proves that
//! part too; a SIEM can filter them by that feed name.
//!
//! The connection never leaves the host: the prober thread moves, while
//! the daemon still has its start-up capabilities, into a network namespace
//! of its own with the canary (from the documentation range 198.51.100.0/24)
//! on its `lo`. Where it cannot (no `CAP_SYS_ADMIN`, as in a DaemonSet with
//! capabilities only, whose pod has its own network namespace anyway), the
//! canary is a random 127.x address in the daemon's namespace. The kernel
//! programs see every namespace, so both are the real path.
//!
//! Triggered by `torsensor run --selftest` (once, after arming; the sensor
//! is not ready until it passed, and exits if it fails) and by SIGUSR1
//! (`torsensor selftest`). The result is logged, published on `/status`
//! and written to `status.json`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use aya::maps::{MapData, RingBuf};

use super::{Daemon, switch};
use crate::feed::parse::{ParseOptions, parse_with};
use crate::feed::{Feed, FeedFormat, FeedSet, Origin};

/// Name of the canary feed (in alerts: `threat.feed.name`).
pub const CANARY_FEED: &str = "torsensor-selftest";
/// How long the alerts may take to come back.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// The outcome of one self-test.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SelftestResult {
    /// 1 for the first self-test of this run, then 2, 3...
    pub seq: u64,
    pub passed: bool,
    /// When it ended (RFC 3339).
    pub at: String,
    pub canary: String,
    /// Where the connection ran: a private network namespace, or loopback.
    pub isolation: String,
    /// The inbound hook plan in use.
    pub plan: String,
    pub took_ms: u64,
    /// What was seen, or what was missing.
    pub detail: String,
}

/// One probe for the prober thread: connect to the canary and accept.
struct Probe;

/// The thread that makes the self-test's connections, in its own network
/// namespace when it could make one.
pub struct Prober {
    requests: mpsc::Sender<Probe>,
    done: mpsc::Receiver<Result<(SocketAddr, SocketAddr), String>>,
    pub canary: IpAddr,
    pub isolation: String,
}

impl Prober {
    /// Starts the thread; call while the daemon still has its start-up
    /// capabilities. The thread gives up its own capabilities once set up.
    pub fn start() -> std::io::Result<Prober> {
        let (requests, rx) = mpsc::channel::<Probe>();
        let (tx, done) = mpsc::channel();
        let (ready_tx, ready_rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("selftest".into())
            .spawn(move || {
                let canary = Ipv4Addr::new(198, 51, 100, fastrand::u8(1..=254));
                let setup = match crate::sys::enter_private_netns(canary) {
                    Ok(()) => (IpAddr::V4(canary), "a private network namespace".to_owned()),
                    Err(e) => {
                        let [b, c, d] = [fastrand::u8(..), fastrand::u8(..), fastrand::u8(1..=254)];
                        let lo = Ipv4Addr::new(127, b.max(1), c, d);
                        (
                            IpAddr::V4(lo),
                            format!("loopback (no private namespace: {e})"),
                        )
                    }
                };
                let _ = super::privileges::drop_unneeded();
                let canary = setup.0;
                let _ = ready_tx.send(setup);
                while rx.recv().is_ok() {
                    let _ = tx.send(probe(canary).map_err(|e| e.to_string()));
                }
            })?;
        let (canary, isolation) = ready_rx
            .recv()
            .map_err(|_| std::io::Error::other("the self-test thread did not start"))?;
        Ok(Prober {
            requests,
            done,
            canary,
            isolation,
        })
    }

    fn request(&self) -> Result<(), String> {
        self.requests
            .send(Probe)
            .map_err(|_| "the self-test thread is gone".to_owned())
    }

    fn finished(&self) -> Option<Result<(SocketAddr, SocketAddr), String>> {
        self.done.try_recv().ok()
    }
}

/// Connects from the canary to the canary (so both directions match),
/// accepts, sends a byte each way (so the accepting side names this
/// thread's process) and closes. Returns (client, server) addresses.
fn probe(canary: IpAddr) -> std::io::Result<(SocketAddr, SocketAddr)> {
    let listener = TcpListener::bind(SocketAddr::new(canary, 0))?;
    let server = listener.local_addr()?;
    let socket = crate::sys::connect_from(SocketAddr::new(canary, 0), server)?;
    let client = socket.local_addr()?;
    let (mut accepted, _) = listener.accept()?;
    use std::io::{Read, Write};
    accepted.write_all(b"t")?;
    let mut byte = [0u8; 1];
    (&socket).read_exact(&mut byte)?;
    (&socket).write_all(b"s")?;
    accepted.read_exact(&mut byte)?;
    Ok((client, server))
}

/// The canary as a one-entry feed (an exit address: it matches both ways).
pub fn canary_feed(canary: IpAddr) -> Result<Feed, String> {
    let options = ParseOptions {
        allow_reserved: true,
        allow_wide_prefixes: false,
    };
    let data = parse_with(
        format!("{canary}\n").as_bytes(),
        Some(FeedFormat::Plain),
        &options,
    )
    .map_err(|e| e.to_string())?;
    Ok(Feed {
        name: CANARY_FEED.into(),
        location: "selftest".into(),
        origin: Origin::Selftest,
        fetched: Some(SystemTime::now()),
        data,
    })
}

/// A self-test under way.
pub struct Run {
    pub started: Instant,
    pub canary: IpAddr,
    /// Egress and ingress alerts seen for the canary, and whether each
    /// named this process.
    pub egress: Option<bool>,
    pub ingress: Option<bool>,
    pub probe: Option<Result<(SocketAddr, SocketAddr), String>>,
}

impl Run {
    /// Arms nothing itself: the caller has switched the canary in.
    pub fn begin(prober: &Prober) -> Result<Run, String> {
        prober.request()?;
        Ok(Run {
            started: Instant::now(),
            canary: prober.canary,
            egress: None,
            ingress: None,
            probe: None,
        })
    }

    /// Collects the prober's answer; `Some(verdict)` once the run is over
    /// (both alerts seen, or the deadline passed, or the probe failed).
    pub fn poll(&mut self, prober: &Prober) -> Option<Result<String, String>> {
        if self.probe.is_none() {
            self.probe = prober.finished();
        }
        if let Some(Err(e)) = &self.probe {
            return Some(Err(format!("the canary connection failed: {e}")));
        }
        let own = |seen: Option<bool>, what: &str| match seen {
            Some(true) => Ok(()),
            Some(false) => Err(format!("the {what} alert did not name this process")),
            None => Err(format!("no {what} alert")),
        };
        let verdict = own(self.egress, "egress").and_then(|()| own(self.ingress, "ingress"));
        match verdict {
            Ok(()) if self.probe.is_some() => Some(Ok(format!(
                "egress and ingress alerts for {} came back through the ring buffer and the pipeline, both naming this process",
                self.canary
            ))),
            Err(e) if self.started.elapsed() > DEADLINE => {
                Some(Err(format!("{e} within {} s", DEADLINE.as_secs())))
            }
            _ => None,
        }
    }
}

impl Daemon {
    /// Arms the canary and asks the prober to connect (SIGUSR1, or
    /// `--selftest` after arming). A failure to start is a failed test.
    pub(super) async fn start_selftest(&mut self, ring: &mut RingBuf<MapData>) {
        if self.delivery.selftest.is_some() {
            tracing::warn!("self-test: one is already running");
            return;
        }
        let prober = match &self.prober {
            Ok(p) => p,
            Err(e) => {
                let why = format!("no self-test thread: {e}");
                return self.finish_selftest(Err(why), None);
            }
        };
        tracing::info!(
            "self-test: arming canary {} (connection in {})",
            prober.canary,
            prober.isolation
        );
        let set = canary_feed(prober.canary).and_then(|canary| {
            let mut feeds = self.delivery.pipeline.feeds().feeds().to_vec();
            feeds.push(Arc::new(canary));
            FeedSet::new(feeds).map_err(|e| e.to_string())
        });
        let armed = match set {
            Ok(set) => {
                let d = &mut self.delivery;
                switch::switch_feeds(set, &mut self.probes, d, ring).await
            }
            Err(e) => Err(e),
        };
        match armed.and_then(|_| Run::begin(prober)) {
            Ok(run) => self.delivery.selftest = Some(run),
            Err(e) => {
                self.finish_selftest(Err(e), None);
                self.remove_canary(ring).await;
            }
        }
    }

    /// Checks the self-test under way; `Some(passed)` once it ended.
    pub(super) async fn poll_selftest(&mut self, ring: &mut RingBuf<MapData>) -> Option<bool> {
        let (Some(run), Ok(prober)) = (&mut self.delivery.selftest, &self.prober) else {
            return None;
        };
        let verdict = run.poll(prober)?;
        let run = self.delivery.selftest.take().expect("checked above");
        self.remove_canary(ring).await;
        let passed = verdict.is_ok();
        self.finish_selftest(verdict, Some(&run));
        Some(passed)
    }

    async fn remove_canary(&mut self, ring: &mut RingBuf<MapData>) {
        let restored = match self.manager.feed_set() {
            Ok(set) => {
                let d = &mut self.delivery;
                switch::switch_feeds(set, &mut self.probes, d, ring).await
            }
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = restored {
            tracing::error!("self-test: cannot remove the canary from the kernel maps: {e}");
        }
    }

    fn finish_selftest(&mut self, verdict: Result<String, String>, run: Option<&Run>) {
        let plan = self
            .probes
            .plan()
            .map_or_else(|| "unknown".to_owned(), |p| p.inbound.to_string());
        let result = SelftestResult {
            seq: self.last_selftest.as_ref().map_or(1, |t| t.seq + 1),
            passed: verdict.is_ok(),
            at: crate::time::rfc3339_secs(SystemTime::now()),
            canary: self
                .prober
                .as_ref()
                .map_or_else(|_| "-".to_owned(), |p| p.canary.to_string()),
            isolation: self
                .prober
                .as_ref()
                .map_or_else(|_| "-".to_owned(), |p| p.isolation.clone()),
            plan,
            took_ms: run.map_or(0, |r| r.started.elapsed().as_millis() as u64),
            detail: match &verdict {
                Ok(d) | Err(d) => d.clone(),
            },
        };
        if result.passed {
            tracing::info!(
                "self-test #{} passed in {} ms (inbound plan {}): {}",
                result.seq,
                result.took_ms,
                result.plan,
                result.detail
            );
        } else {
            tracing::error!(
                "self-test #{} FAILED (inbound plan {}): {}",
                result.seq,
                result.plan,
                result.detail
            );
        }
        self.last_selftest = Some(result);
        self.write_status();
        self.publish();
    }
}
