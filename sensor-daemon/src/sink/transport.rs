//! Remote transports: HTTP (JSON lines, Splunk HEC, `_bulk`) and syslog
//! (TCP with octet counting, UDP, unix datagram). One `deliver` call sends
//! one batch and says what the receiver acknowledged.
//!
//! Owns the connections (HTTP client, sockets); called by `remote` only.
//! May use `wire` (message and body encoding, answer checks) and `config`,
//! nothing else of the daemon.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpStream, UdpSocket, UnixDatagram};

use super::config::{Destination, HttpKind, OutputConfig};
use super::wire::{self, HecFields, Verdict};
use super::{Entry, SinkError};

/// The receiver acknowledged the batch; `rejected` items were refused for good.
#[derive(Debug)]
pub(crate) struct Done {
    pub rejected: u64,
}

/// The batch was not (fully) delivered: the first `done` items were (of
/// which `rejected` refused for good), the rest must be retried.
#[derive(Debug)]
pub(crate) struct Failure {
    pub reason: String,
    pub done: usize,
    pub rejected: u64,
    /// The receiver asked to wait this long (`Retry-After` on 429/503).
    pub retry_after: Option<Duration>,
}

impl Failure {
    pub(crate) fn new(reason: impl Into<String>) -> Failure {
        Failure {
            reason: reason.into(),
            done: 0,
            rejected: 0,
            retry_after: None,
        }
    }
}

pub(crate) type Batch = [(u64, Arc<Entry>)];

/// Largest HTTP answer body read.
const MAX_ANSWER_BYTES: usize = 16 << 20;

/// Display of an error with its sources (reqwest hides the cause otherwise).
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

struct Syslog {
    facility: u8,
    app: String,
    procid: u32,
}

impl Syslog {
    fn message(&self, e: &Entry) -> String {
        wire::rfc5424(e, self.facility, &self.app, self.procid)
    }
}

pub(crate) struct Http {
    client: reqwest::Client,
    kind: HttpKind,
    url: reqwest::Url,
    index: Option<String>,
    auth: Option<HeaderValue>,
    source: String,
    sourcetype: String,
    hec_index: Option<String>,
    gzip: bool,
}

pub(crate) struct Tcp {
    addr: String,
    conn: Option<TcpStream>,
    connect_timeout: Duration,
    timeout: Duration,
    syslog: Syslog,
}

pub(crate) struct Udp {
    addr: String,
    sock: Option<UdpSocket>,
    max: usize,
    syslog: Syslog,
}

pub(crate) struct Unix {
    path: PathBuf,
    sock: Option<UnixDatagram>,
    max: usize,
    timeout: Duration,
    syslog: Syslog,
}

pub(crate) enum Transport {
    Http(Box<Http>),
    Tcp(Tcp),
    Udp(Udp),
    Unix(Unix),
}

impl Transport {
    pub(crate) fn new(
        cfg: &OutputConfig,
        dest: &Destination,
        name: &str,
        app: &str,
    ) -> Result<Transport, SinkError> {
        let syslog = || Syslog {
            facility: cfg.facility_code(),
            app: app.to_owned(),
            procid: std::process::id(),
        };
        Ok(match dest {
            Destination::Stdout | Destination::File(_) => {
                unreachable!("local destinations have no transport")
            }
            Destination::SyslogTcp(addr) => Transport::Tcp(Tcp {
                addr: addr.clone(),
                conn: None,
                connect_timeout: cfg.connect_timeout,
                timeout: cfg.timeout,
                syslog: syslog(),
            }),
            Destination::SyslogUdp(addr) => Transport::Udp(Udp {
                addr: addr.clone(),
                sock: None,
                max: cfg.datagram_max_bytes,
                syslog: syslog(),
            }),
            Destination::SyslogUnix(path) => Transport::Unix(Unix {
                path: path.clone(),
                sock: None,
                max: cfg.datagram_max_bytes,
                timeout: cfg.timeout,
                syslog: syslog(),
            }),
            Destination::Http { kind, url, index } => {
                Transport::Http(Box::new(Http::new(cfg, *kind, url, index, name, app)?))
            }
        })
    }

    pub(crate) async fn deliver(&mut self, batch: &Batch) -> Result<Done, Failure> {
        match self {
            Transport::Http(h) => h.deliver(batch).await,
            Transport::Tcp(t) => t.deliver(batch).await,
            Transport::Udp(u) => u.deliver(batch).await,
            Transport::Unix(u) => u.deliver(batch).await,
        }
    }
}

impl Http {
    fn new(
        cfg: &OutputConfig,
        kind: HttpKind,
        url: &reqwest::Url,
        index: &Option<String>,
        name: &str,
        app: &str,
    ) -> Result<Http, SinkError> {
        let herr = |reason: String| SinkError::Http {
            name: name.to_owned(),
            reason,
        };
        let mut b = reqwest::Client::builder()
            .connect_timeout(cfg.connect_timeout)
            .timeout(cfg.timeout)
            .user_agent(format!("{app}/{}", env!("CARGO_PKG_VERSION")))
            .pool_idle_timeout(Duration::from_secs(50));
        if url.scheme() == "https" {
            b = b.https_only(true);
        }
        if let Some(ca) = &cfg.ca_file {
            let certs = super::config::read_ca_file(ca)
                .map_err(|reason| herr(format!("ca_file: {reason}")))?;
            b = b.tls_certs_merge(certs);
        }
        let client = b.build().map_err(|e| herr(chain(&e)))?;
        let auth = match cfg.token()? {
            Some(t) => {
                let scheme = match kind {
                    HttpKind::Hec => "Splunk",
                    HttpKind::Bulk => "ApiKey",
                    HttpKind::Lines => "Bearer",
                };
                let mut v = HeaderValue::from_str(&format!("{scheme} {t}"))
                    .map_err(|_| herr("the token is not a valid header value".into()))?;
                v.set_sensitive(true);
                Some(v)
            }
            None => None,
        };
        Ok(Http {
            client,
            kind,
            url: url.clone(),
            index: index.clone(),
            auth,
            source: cfg.hec_source.clone().unwrap_or_else(|| app.to_owned()),
            sourcetype: cfg.hec_sourcetype.clone(),
            hec_index: cfg.hec_index.clone(),
            gzip: cfg.gzip,
        })
    }

    /// The request body for `batch`, and its content type.
    fn body(&self, batch: &Batch) -> (Vec<u8>, &'static str) {
        let mut body = Vec::new();
        let content_type = match self.kind {
            HttpKind::Lines => {
                for (_, e) in batch {
                    body.extend_from_slice(e.body.as_bytes());
                    body.push(b'\n');
                }
                "application/x-ndjson"
            }
            HttpKind::Hec => {
                let f = HecFields {
                    source: &self.source,
                    sourcetype: &self.sourcetype,
                    index: self.hec_index.as_deref(),
                };
                for (_, e) in batch {
                    wire::hec_event(e, &f, &mut body);
                }
                "application/json"
            }
            HttpKind::Bulk => {
                let index = self.index.as_deref().unwrap_or("torsensor");
                for (_, e) in batch {
                    wire::bulk_pair(e, index, &mut body);
                }
                "application/x-ndjson"
            }
        };
        (body, content_type)
    }

    async fn deliver(&mut self, batch: &Batch) -> Result<Done, Failure> {
        let (mut body, content_type) = self.body(batch);
        let mut req = self
            .client
            .post(self.url.clone())
            .header(CONTENT_TYPE, content_type);
        if self.gzip {
            body = gzip(body).await?;
            req = req.header(CONTENT_ENCODING, "gzip");
        }
        let mut req = req.body(body);
        if let Some(a) = &self.auth {
            req = req.header(AUTHORIZATION, a.clone());
        }
        let mut resp = req.send().await.map_err(|e| Failure::new(chain(&e)))?;
        let status = resp.status();
        // Only the delay-seconds form; an HTTP date is rare for these APIs.
        let retry_after = resp
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let text = read_answer(&mut resp, status).await?;
        self.verdict(batch, status, retry_after, &text)
    }

    /// What the answer `status` and body `text` say of `batch`.
    fn verdict(
        &self,
        batch: &Batch,
        status: reqwest::StatusCode,
        retry_after: Option<Duration>,
        text: &[u8],
    ) -> Result<Done, Failure> {
        let snippet = || String::from_utf8_lossy(&text[..text.len().min(200)]).into_owned();
        if status.is_success() {
            let verdict = match self.kind {
                HttpKind::Lines => Verdict::Ok { rejected: 0 },
                HttpKind::Hec => wire::hec_verdict(text),
                HttpKind::Bulk => wire::bulk_verdict(text, batch.len()),
            };
            return match verdict {
                Verdict::Ok { rejected } => {
                    if rejected > 0 {
                        tracing::warn!(url = %self.url, rejected, "receiver refused some alerts for good: {}", snippet());
                    }
                    Ok(Done { rejected })
                }
                Verdict::Retry(reason) => Err(Failure::new(reason)),
            };
        }
        match status.as_u16() {
            // The payload itself is refused: retrying would refuse it again
            // and hold up everything behind it.
            400 | 413 | 422 => {
                tracing::error!(url = %self.url, %status, alerts = batch.len(), "receiver refused the batch for good: {}", snippet());
                Ok(Done {
                    rejected: batch.len() as u64,
                })
            }
            // 401/403/404 are configuration problems an operator can fix:
            // keep the alerts (spool) and retry.
            _ => Err(Failure {
                retry_after,
                ..Failure::new(format!("HTTP {status}: {}", snippet()))
            }),
        }
    }
}

/// Compression is CPU work: keep it off the runtime thread.
async fn gzip(body: Vec<u8>) -> Result<Vec<u8>, Failure> {
    tokio::task::spawn_blocking(move || {
        let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        z.write_all(&body)?;
        z.finish()
    })
    .await
    .map_err(|e| Failure::new(format!("gzip: {e}")))?
    .map_err(|e| Failure::new(format!("gzip: {e}")))
}

/// Reads the answer, within bounds: a `_bulk` answer is about 200 bytes per
/// item, far below [`MAX_ANSWER_BYTES`].
async fn read_answer(
    resp: &mut reqwest::Response,
    status: reqwest::StatusCode,
) -> Result<Vec<u8>, Failure> {
    let mut text = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| Failure::new(format!("reading the answer: {}", chain(&e))))?
    {
        if text.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err(Failure::new(format!(
                "HTTP {status}: answer larger than {MAX_ANSWER_BYTES} bytes"
            )));
        }
        text.extend_from_slice(&chunk);
    }
    Ok(text)
}

impl Tcp {
    async fn deliver(&mut self, batch: &Batch) -> Result<Done, Failure> {
        // A receiver that closed the connection is noticed before writing,
        // not one batch later.
        if let Some(c) = &self.conn {
            let mut b = [0u8; 1];
            match c.try_read(&mut b) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Ok(n) if n > 0 => {}
                _ => self.conn = None,
            }
        }
        if self.conn.is_none() {
            let c = tokio::time::timeout(self.connect_timeout, TcpStream::connect(&self.addr))
                .await
                .map_err(|_| Failure::new(format!("connect to {} timed out", self.addr)))?
                .map_err(|e| Failure::new(format!("connect to {}: {e}", self.addr)))?;
            let _ = c.set_nodelay(true);
            self.conn = Some(c);
        }
        let mut buf = Vec::new();
        for (_, e) in batch {
            wire::octet_frame(&self.syslog.message(e), &mut buf);
        }
        let conn = self.conn.as_mut().expect("connected");
        let res = tokio::time::timeout(self.timeout, async {
            conn.write_all(&buf).await?;
            conn.flush().await
        })
        .await;
        match res {
            Ok(Ok(())) => Ok(Done { rejected: 0 }),
            Ok(Err(e)) => {
                self.conn = None;
                Err(Failure::new(format!("write to {}: {e}", self.addr)))
            }
            Err(_) => {
                self.conn = None;
                Err(Failure::new(format!("write to {} timed out", self.addr)))
            }
        }
    }
}

impl Udp {
    async fn deliver(&mut self, batch: &Batch) -> Result<Done, Failure> {
        if self.sock.is_none() {
            let addr = tokio::net::lookup_host(&self.addr)
                .await
                .map_err(|e| Failure::new(format!("resolve {}: {e}", self.addr)))?
                .next()
                .ok_or_else(|| Failure::new(format!("{} resolves to nothing", self.addr)))?;
            let bind = if addr.is_ipv4() {
                "0.0.0.0:0"
            } else {
                "[::]:0"
            };
            let s = UdpSocket::bind(bind)
                .await
                .map_err(|e| Failure::new(format!("bind {bind}: {e}")))?;
            s.connect(addr)
                .await
                .map_err(|e| Failure::new(format!("connect {addr}: {e}")))?;
            self.sock = Some(s);
        }
        let sock = self.sock.as_ref().expect("socket");
        let mut rejected = 0;
        for (i, (_, e)) in batch.iter().enumerate() {
            let msg = self.syslog.message(e);
            if msg.len() > self.max {
                rejected += 1;
                continue;
            }
            if let Err(err) = sock.send(msg.as_bytes()).await {
                // ECONNREFUSED here is the ICMP answer to an earlier datagram.
                self.sock = None;
                return Err(Failure {
                    done: i,
                    rejected,
                    ..Failure::new(format!("send to {}: {err}", self.addr))
                });
            }
        }
        if rejected > 0 {
            tracing::warn!(addr = %self.addr, rejected, max = self.max, "alerts larger than datagram_max_bytes skipped");
        }
        Ok(Done { rejected })
    }
}

impl Unix {
    async fn deliver(&mut self, batch: &Batch) -> Result<Done, Failure> {
        if self.sock.is_none() {
            let s =
                UnixDatagram::unbound().map_err(|e| Failure::new(format!("unix socket: {e}")))?;
            s.connect(&self.path)
                .map_err(|e| Failure::new(format!("connect {}: {e}", self.path.display())))?;
            self.sock = Some(s);
        }
        let sock = self.sock.as_ref().expect("socket");
        let mut rejected = 0;
        for (i, (_, e)) in batch.iter().enumerate() {
            let msg = self.syslog.message(e);
            if msg.len() > self.max {
                rejected += 1;
                continue;
            }
            let res = tokio::time::timeout(self.timeout, sock.send(msg.as_bytes())).await;
            let err = match res {
                Ok(Ok(_)) => continue,
                Ok(Err(e)) => e.to_string(),
                Err(_) => "timed out (receiver not reading)".to_owned(),
            };
            self.sock = None;
            return Err(Failure {
                done: i,
                rejected,
                ..Failure::new(format!("send to {}: {err}", self.path.display()))
            });
        }
        if rejected > 0 {
            tracing::warn!(path = %self.path.display(), rejected, max = self.max, "alerts larger than datagram_max_bytes skipped");
        }
        Ok(Done { rejected })
    }
}
