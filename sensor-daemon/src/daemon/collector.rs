//! The live flow collector in the run loop (`[[collector]]`): a UDP socket
//! per listener, bound at start (before the capabilities are dropped, so a
//! port below 1024 works), read by a task of its own that refuses
//! datagrams from exporters not allowed and queues the rest, bounded
//! (`queue`: what does not fit is dropped and counted); the loop reads
//! each datagram ([`Collector`]), and once a second judges the flows whose
//! wait is over and sends their alerts.

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use ipnet::IpNet;
use tokio::sync::mpsc;

use super::SensorError;
use super::delivery::Delivery;
use crate::config::Config;
use crate::hunt::collect::{AlertOn, Collected, Collector, CollectorConfig, ListenerStats};
use crate::pipeline::Now;

/// Largest UDP payload.
const MAX_DATAGRAM: usize = 65_535;

/// One received datagram.
pub(super) struct Datagram {
    listener: usize,
    from: SocketAddr,
    payload: Vec<u8>,
    at: SystemTime,
}

/// Counted by the receiving tasks.
#[derive(Default)]
struct Received {
    refused: AtomicU64,
    dropped: AtomicU64,
}

/// One listener's numbers for metrics and `status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ListenerSnapshot {
    pub listener: String,
    /// Datagrams from exporters not in `exporters`.
    pub refused: u64,
    /// Datagrams dropped because the queue was full.
    pub dropped: u64,
    /// Datagrams the kernel dropped: the socket's receive buffer was full
    /// (`/proc/net/udp` drops).
    pub kernel_dropped: u64,
    /// Exporters (and observation domains) with templates remembered.
    pub exporters: usize,
    /// What the collector counted.
    #[serde(flatten)]
    pub stats: ListenerStats,
}

/// The collector as armed.
pub(crate) struct CollectorRun {
    configs: Vec<CollectorConfig>,
    collector: Collector,
    received: Vec<Arc<Received>>,
    /// Each socket's inode and family, to find its kernel drop count.
    sockets: Vec<(u64, bool)>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// The numbers at the last health tick (losses are logged as they
    /// grow).
    reported: Vec<ListenerSnapshot>,
}

impl CollectorRun {
    /// Binds every listener and starts its reader; none configured: none.
    /// A socket that cannot be bound stops the start.
    pub fn arm(cfg: &Config) -> Result<Option<(Self, mpsc::Receiver<Datagram>)>, SensorError> {
        if cfg.collectors.is_empty() {
            return Ok(None);
        }
        let queue: usize = cfg.collectors.iter().map(|c| c.queue).sum();
        let (tx, rx) = mpsc::channel(queue);
        let mut run = CollectorRun {
            configs: cfg.collectors.clone(),
            collector: Collector::new(&cfg.collectors, &cfg.hunt),
            received: Vec::new(),
            sockets: Vec::new(),
            tasks: Vec::new(),
            reported: Vec::new(),
        };
        for (index, c) in cfg.collectors.iter().enumerate() {
            let addr = c.address().map_err(collector_error)?;
            let allowed = c.exporter_nets().map_err(collector_error)?;
            let bind_error = |source: std::io::Error| SensorError::Io {
                what: "binding a [[collector]] listen address",
                source: std::io::Error::new(source.kind(), format!("{}: {source}", c.listen)),
            };
            let socket = UdpSocket::bind(addr).map_err(bind_error)?;
            let buffer = crate::sys::set_receive_buffer(socket.as_fd(), c.receive_buffer)
                .map_err(bind_error)?;
            let inode = crate::sys::fstat(socket.as_fd()).map_or(0, |st| st.ino);
            run.sockets.push((inode, addr.is_ipv6()));
            let socket = socket
                .set_nonblocking(true)
                .and_then(|()| tokio::net::UdpSocket::from_std(socket))
                .map_err(bind_error)?;
            let bound = socket.local_addr().unwrap_or(addr);
            let received = Arc::new(Received::default());
            run.received.push(Arc::clone(&received));
            run.tasks.push(tokio::spawn(receive(
                index,
                socket,
                allowed,
                tx.clone(),
                received,
            )));
            tracing::info!(
                "collector {}: receiving NetFlow v5/v9 and IPFIX on udp {bound} from {}; alerts {} flows, joins directions for {:?}; receive buffer {} KiB",
                c.listen,
                if c.exporters.is_empty() {
                    "any exporter".to_owned()
                } else {
                    c.exporters.join(", ")
                },
                match c.alert {
                    AlertOn::Substantial => "substantial",
                    AlertOn::All => "all matching",
                },
                c.merge_wait,
                buffer / 1024
            );
        }
        Ok(Some((run, rx)))
    }

    /// Every listener's numbers.
    pub fn snapshot(&self) -> Vec<ListenerSnapshot> {
        let exporters = self.collector.exporters();
        // Only the tables of the families listened on.
        let tables = [false, true].map(|v6| {
            if !self.sockets.iter().any(|(_, family)| *family == v6) {
                return String::new();
            }
            std::fs::read_to_string(if v6 {
                "/proc/self/net/udp6"
            } else {
                "/proc/self/net/udp"
            })
            .unwrap_or_default()
        });
        self.collector
            .stats()
            .into_iter()
            .enumerate()
            .map(|(i, stats)| ListenerSnapshot {
                listener: self.configs[i].listen.clone(),
                refused: self.received[i].refused.load(Ordering::Relaxed),
                dropped: self.received[i].dropped.load(Ordering::Relaxed),
                kernel_dropped: {
                    let (inode, v6) = self.sockets[i];
                    udp_drops(&tables[usize::from(v6)], inode).unwrap_or(0)
                },
                exporters: exporters[i],
                stats,
            })
            .collect()
    }

    /// Logs what was lost or refused since the last health tick (the
    /// counters are in the metrics all along).
    pub fn report_losses(&mut self) {
        let now = self.snapshot();
        for (i, n) in now.iter().enumerate() {
            let before = self.reported.get(i).cloned().unwrap_or_default();
            let grew = |a: u64, b: u64| a.saturating_sub(b);
            let refused = grew(n.refused, before.refused);
            let (now, then) = (&n.stats, &before.stats);
            let malformed = grew(now.malformed, then.malformed);
            let unknown = grew(now.unknown_templates, then.unknown_templates);
            let losses = [
                (
                    grew(n.kernel_dropped, before.kernel_dropped),
                    "datagrams dropped by the kernel (receive buffer full: raise receive_buffer)",
                ),
                (
                    grew(n.dropped, before.dropped),
                    "datagrams dropped (queue full: raise queue, or the exporters send more than the sensor reads)",
                ),
                (
                    grew(now.evicted, then.evicted),
                    "flows judged before their other direction came (max_flows waiting)",
                ),
            ];
            for (count, what) in losses {
                if count > 0 {
                    tracing::warn!("collector {}: {count} {what}", n.listener);
                }
            }
            if refused + malformed + unknown > 0 {
                tracing::warn!(
                    "collector {}: {refused} datagrams from exporters not allowed, {malformed} malformed export packets, {unknown} data sets without a template",
                    n.listener
                );
            }
        }
        self.reported = now;
    }

    /// Flows waiting for their other direction.
    pub fn waiting(&self) -> usize {
        self.collector.waiting()
    }

    /// Reads one datagram; flows judged early are sent.
    pub fn datagram(&mut self, d: Datagram, delivery: &mut Delivery) {
        let pipeline = &delivery.pipeline;
        let judged = self.collector.datagram(
            d.listener,
            d.from,
            &d.payload,
            d.at,
            &|ip, port, direction| pipeline.classify(ip, port, direction),
        );
        self.send(judged, delivery);
    }

    /// Judges the flows whose wait is over (`all`: every one, at
    /// shutdown) and sends their alerts.
    pub fn sweep(&mut self, all: bool, delivery: &mut Delivery) {
        let judged = self.collector.expire(SystemTime::now(), all);
        self.send(judged, delivery);
    }

    fn send(&self, judged: Vec<Collected>, delivery: &mut Delivery) {
        for c in judged {
            let config = &self.configs[c.listener];
            if config.alert == AlertOn::Substantial && !c.substantial() {
                continue;
            }
            delivery.handle_collected(&c, &config.listen);
        }
    }

    /// Stops the readers (the sockets close).
    pub fn stop(&mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }
}

/// The `drops` of the socket with `inode` in a `/proc/net/udp` (or
/// `udp6`) table.
fn udp_drops(table: &str, inode: u64) -> Option<u64> {
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        (fields.get(9)?.parse::<u64>().ok()? == inode)
            .then(|| fields.get(12)?.parse().ok())
            .flatten()
    })
}

fn collector_error(message: String) -> SensorError {
    SensorError::Config(crate::config::ConfigError::Collector(message))
}

/// Reads datagrams until the task is aborted.
async fn receive(
    listener: usize,
    socket: tokio::net::UdpSocket,
    allowed: Vec<IpNet>,
    tx: mpsc::Sender<Datagram>,
    received: Arc<Received>,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let (len, from) = match socket.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!("collector: receiving: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let ip = crate::net::canonical_ip(from.ip());
        if !allowed.is_empty() && !allowed.iter().any(|n| n.contains(&ip)) {
            received.refused.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let d = Datagram {
            listener,
            from,
            payload: buf[..len].to_vec(),
            at: SystemTime::now(),
        };
        if tx.try_send(d).is_err() {
            received.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Delivery {
    /// A judged flow of the collector, through the rules to the outputs.
    pub(super) fn handle_collected(&mut self, c: &Collected, listener: &str) {
        for alert in self.pipeline.handle_collected(c, listener, Now::current()) {
            self.write(&alert);
        }
    }
}

impl super::Daemon {
    /// One datagram a listener received.
    pub(super) fn on_datagram(&mut self, d: Datagram) {
        if let Some(c) = self.collector.as_mut() {
            c.datagram(d, &mut self.delivery);
        }
    }

    /// The collector's flows whose wait is over.
    pub(super) fn on_collector_sweep(&mut self, all: bool) {
        if let Some(c) = self.collector.as_mut() {
            c.sweep(all, &mut self.delivery);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn kernel_drops_are_read_by_inode() {
        let table = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n\
 1234: 0100007F:0807 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 40411 2 0000000000000000 0\n\
 1235: 00000000:1283 00000000:0000 07 00000000:00034000 00:00000000 00000000     0        0 40977 2 0000000000000000 17\n";
        assert_eq!(super::udp_drops(table, 40977), Some(17));
        assert_eq!(super::udp_drops(table, 40411), Some(0));
        assert_eq!(super::udp_drops(table, 1), None);
    }
}
