//! Sinks against real receivers: rsyslogd, a unix datagram socket, an HTTP
//! server (HEC, `_bulk`, JSON lines) on loopback, files; outage, restart,
//! spool bound and a stalled receiver.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use sensor_daemon::alert::Schema;
use sensor_daemon::sink::{AlertMeta, OutputConfig, SinkStats, Sinks};
use serde_json::{Value, json};

/// A fresh directory, removed when the test passes (kept for a look when it fails).
struct TempDir(PathBuf);

impl std::ops::Deref for TempDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn tmpdir(name: &str) -> TempDir {
    let d = std::env::temp_dir().join(format!("torsensor-sinks-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    TempDir(d)
}

fn meta(severity: u8) -> AlertMeta {
    AlertMeta {
        time: SystemTime::now(),
        severity,
        rule_id: "torsensor.egress.tor_relay".into(),
        host: "sensor-host-1".into(),
    }
}

/// Sends alert number `n`: `{"n": n, "format": ..., "pad": ...}`.
fn send(sinks: &Sinks, n: u64) {
    sinks.send(
        &meta(73),
        &|f: Schema| json!({"n": n, "format": f.to_string(), "pad": "x".repeat(60)}),
    );
}

/// Sends alerts `0..n` to a sink whose receiver is down, yielding now and
/// then so that its task runs, and waits until all `n` are in its spool.
async fn spool_while_down(sinks: &Sinks, n: u64) {
    for i in 0..n {
        send(sinks, i);
        if i % 50 == 0 {
            tokio::task::yield_now().await;
        }
    }
    wait_for(&format!("{n} alerts spooled"), 10, || {
        sinks.stats()[0].spooled_events == n
    })
    .await;
}

fn cfg(spec: &str) -> OutputConfig {
    spec.parse().unwrap_or_else(|e| panic!("{spec}: {e}"))
}

async fn wait_for(what: &str, secs: u64, mut done: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(secs);
    while !done() {
        assert!(
            Instant::now() < end,
            "timed out after {secs} s waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn stat<'a>(stats: &'a [SinkStats], kind: &str) -> &'a SinkStats {
    stats
        .iter()
        .find(|s| s.kind == kind)
        .unwrap_or_else(|| panic!("no {kind} sink in {stats:?}"))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Asserts `got` is exactly `want` (reports the first difference, not both lists).
#[track_caller]
fn assert_seq(got: &[u64], want: std::ops::Range<u64>, what: &str) {
    let want: Vec<u64> = want.collect();
    if let Some(i) = (0..got.len().max(want.len())).find(|&i| got.get(i) != want.get(i)) {
        panic!(
            "{what}: {} received, {} expected; first difference at index {i}: got {:?}, expected {:?}",
            got.len(),
            want.len(),
            &got[i.min(got.len())..(i + 5).min(got.len())],
            want.get(i)
        );
    }
}

fn ns_of(docs: &[Value]) -> Vec<u64> {
    docs.iter().map(|d| d["n"].as_u64().expect("n")).collect()
}

// ------------------------------------------------------------ HTTP receiver

#[derive(Debug, Clone)]
struct Req {
    path: String,
    auth: Option<String>,
    content_type: Option<String>,
    content_encoding: Option<String>,
    /// Decompressed when the request was gzipped.
    body: Vec<u8>,
    /// The receiver answered this one with a failure.
    failed: bool,
    at: Instant,
}

#[derive(Clone, Default)]
struct Receiver {
    reqs: Arc<Mutex<Vec<Req>>>,
    /// `_bulk` requests still to answer with `"errors":true` (one item 429).
    bulk_failures: Arc<AtomicU32>,
    /// Answer 503 to everything.
    unavailable: Arc<std::sync::atomic::AtomicBool>,
    /// Requests still to answer 429 with `Retry-After: 1`.
    throttle: Arc<AtomicU32>,
}

impl Receiver {
    fn reqs(&self) -> Vec<Req> {
        self.reqs.lock().unwrap().clone()
    }

    /// Documents of accepted requests, in arrival order.
    fn docs(&self) -> Vec<Value> {
        let mut out = Vec::new();
        for r in self.reqs().iter().filter(|r| !r.failed) {
            if r.path.ends_with("/_bulk") {
                let text = String::from_utf8(r.body.clone()).unwrap();
                out.extend(
                    text.lines()
                        .skip(1)
                        .step_by(2)
                        .map(|l| serde_json::from_str::<Value>(l).unwrap()),
                );
            } else if r.path == "/services/collector/event" {
                let events = serde_json::Deserializer::from_slice(&r.body).into_iter::<Value>();
                out.extend(events.map(|e| e.unwrap()["event"].clone()));
            } else {
                let text = String::from_utf8(r.body.clone()).unwrap();
                out.extend(
                    text.lines()
                        .map(|l| serde_json::from_str::<Value>(l).unwrap()),
                );
            }
        }
        out
    }
}

async fn handle(
    State(r): State<Receiver>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, [(&'static str, &'static str); 1], String) {
    let h = |name: &str| headers.get(name).map(|v| v.to_str().unwrap().to_owned());
    let mut req = Req {
        path: uri.path().to_owned(),
        auth: h("authorization"),
        content_type: h("content-type"),
        content_encoding: h("content-encoding"),
        body: body.to_vec(),
        failed: false,
        at: Instant::now(),
    };
    if req.content_encoding.as_deref() == Some("gzip") {
        let mut plain = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&body[..]), &mut plain)
            .unwrap();
        req.body = plain;
    }
    let throttled = r
        .throttle
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    let answer = if throttled {
        req.failed = true;
        (StatusCode::TOO_MANY_REQUESTS, "slow down".to_owned())
    } else if r.unavailable.load(Ordering::SeqCst) {
        req.failed = true;
        (StatusCode::SERVICE_UNAVAILABLE, "try later".to_owned())
    } else if req.path == "/reject" {
        req.failed = true;
        (StatusCode::BAD_REQUEST, "malformed".to_owned())
    } else if req.path == "/services/collector/event" {
        (StatusCode::OK, r#"{"text":"Success","code":0}"#.to_owned())
    } else if req.path.ends_with("/_bulk") {
        let items = String::from_utf8_lossy(&body).lines().count() / 2;
        let fail = r
            .bulk_failures
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        req.failed = fail;
        let items: Vec<Value> = (0..items)
            .map(|i| {
                if fail && i == 1 {
                    json!({"create": {"status": 429, "error": {"type": "es_rejected_execution_exception"}}})
                } else {
                    json!({"create": {"status": 201, "result": "created"}})
                }
            })
            .collect();
        (
            StatusCode::OK,
            json!({"took": 1, "errors": fail, "items": items}).to_string(),
        )
    } else {
        (StatusCode::OK, String::new())
    };
    r.reqs.lock().unwrap().push(req);
    let retry_after = if throttled { "1" } else { "" };
    (answer.0, [("retry-after", retry_after)], answer.1)
}

/// Serves `r` on 127.0.0.1:`port` (0: any); returns the port and the task.
async fn serve(port: u16, r: Receiver) -> (u16, tokio::task::JoinHandle<()>) {
    let l = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let port = l.local_addr().unwrap().port();
    let app = Router::new().fallback(handle).with_state(r);
    (
        port,
        tokio::spawn(async move { axum::serve(l, app).await.unwrap() }),
    )
}

fn token_file(dir: &Path, token: &str) -> PathBuf {
    let p = dir.join("token");
    std::fs::write(&p, format!("{token}\n")).unwrap();
    p
}

// -------------------------------------------------------------------- HTTP

#[tokio::test]
async fn hec_wire_format_headers_and_batching() {
    let dir = tmpdir("hec");
    let tok = token_file(&dir, "11111111-2222-3333-4444-555555555555");
    let r = Receiver::default();
    let (port, _server) = serve(0, r.clone()).await;
    let out = cfg(&format!(
        "hec+http://127.0.0.1:{port},token_file={},batch_max_events=50,linger=100ms,hec_index=security",
        tok.display()
    ));
    let sinks = Sinks::start(&[out], &dir, "torsensor").unwrap();
    for n in 0..120 {
        send(&sinks, n);
    }
    wait_for("120 HEC events", 10, || r.docs().len() >= 120).await;
    let stats = sinks.shutdown(Duration::from_secs(2)).await;

    let reqs = r.reqs();
    assert!(
        reqs.len() < 120 && reqs.len() >= 3,
        "batched into {} requests (at most 50 per request)",
        reqs.len()
    );
    for req in &reqs {
        assert_eq!(req.path, "/services/collector/event");
        assert_eq!(
            req.auth.as_deref(),
            Some("Splunk 11111111-2222-3333-4444-555555555555")
        );
        assert_eq!(req.content_type.as_deref(), Some("application/json"));
        assert!(
            !req.body.starts_with(b"["),
            "objects back to back, not an array"
        );
        let events: Vec<Value> = serde_json::Deserializer::from_slice(&req.body)
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert!(events.len() <= 50);
        for e in &events {
            assert!(e["time"].as_f64().unwrap() > 1.7e9, "epoch seconds: {e}");
            assert_eq!(e["host"], "sensor-host-1");
            assert_eq!(e["source"], "torsensor");
            assert_eq!(e["sourcetype"], "_json");
            assert_eq!(e["index"], "security");
            assert_eq!(e["event"]["format"], "ecs");
        }
    }
    assert_seq(&ns_of(&r.docs()), 0..120, "HEC events");
    let s = stat(&stats, "hec");
    assert_eq!((s.delivered, s.failed, s.spooled_events), (120, 0, 0));
}

#[tokio::test]
async fn bulk_ndjson_and_item_errors_are_retried() {
    let dir = tmpdir("bulk");
    let tok = token_file(&dir, "c2VjcmV0OmtleQ==");
    let r = Receiver::default();
    r.bulk_failures.store(1, Ordering::SeqCst);
    let (port, _server) = serve(0, r.clone()).await;
    let out = cfg(&format!(
        "bulk+http://127.0.0.1:{port}/torsensor-alerts,token_file={},format=ocsf,gzip=true,retry_initial=50ms,retry_max=100ms,linger=100ms",
        tok.display()
    ));
    let sinks = Sinks::start(&[out], &dir, "torsensor").unwrap();
    for n in 0..10 {
        send(&sinks, n);
    }
    wait_for("10 documents accepted", 10, || r.docs().len() >= 10).await;
    let stats = sinks.shutdown(Duration::from_secs(2)).await;

    let reqs = r.reqs();
    assert!(reqs[0].failed, "first answer had \"errors\":true");
    assert!(reqs.len() >= 2, "the batch was sent again");
    let mut ids_per_req = Vec::new();
    for req in &reqs {
        assert_eq!(req.path, "/_bulk");
        assert_eq!(req.content_encoding.as_deref(), Some("gzip"));
        assert_eq!(req.content_type.as_deref(), Some("application/x-ndjson"));
        assert_eq!(req.auth.as_deref(), Some("ApiKey c2VjcmV0OmtleQ=="));
        let text = String::from_utf8(req.body.clone()).unwrap();
        assert!(text.ends_with('\n'));
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len() % 2, 0, "action + document pairs");
        let mut ids = Vec::new();
        for pair in lines.chunks(2) {
            assert_eq!(
                pair[0]["create"]["_index"], "torsensor-alerts",
                "{}",
                pair[0]
            );
            ids.push(pair[0]["create"]["_id"].as_str().unwrap().to_owned());
            assert_eq!(pair[1]["format"], "ocsf");
        }
        ids_per_req.push(ids);
    }
    // The retry repeats the failed batch with the same ids (idempotent create).
    assert_eq!(ids_per_req[1][..ids_per_req[0].len()], ids_per_req[0][..]);
    let all: Vec<&String> = ids_per_req[1..].iter().flatten().collect();
    let mut uniq = all.clone();
    uniq.sort();
    uniq.dedup();
    assert_eq!(uniq.len(), 10, "one id per alert");
    assert_seq(&ns_of(&r.docs()), 0..10, "bulk documents");
    let s = stat(&stats, "bulk");
    assert_eq!(s.delivered, 10);
    assert!(s.failed >= 1);
}

#[tokio::test]
async fn generic_json_lines() {
    let dir = tmpdir("lines");
    let r = Receiver::default();
    let (port, _server) = serve(0, r.clone()).await;
    let out = cfg(&format!(
        "http://127.0.0.1:{port}/ingest/alerts,format=falco,linger=50ms"
    ));
    let sinks = Sinks::start(&[out], &dir, "torsensor").unwrap();
    for n in 0..25 {
        send(&sinks, n);
    }
    wait_for("25 JSON lines", 10, || r.docs().len() >= 25).await;
    sinks.shutdown(Duration::from_secs(1)).await;
    for req in r.reqs() {
        assert_eq!(req.path, "/ingest/alerts");
        assert_eq!(req.content_encoding, None, "gzip is off by default");
        assert_eq!(req.content_type.as_deref(), Some("application/x-ndjson"));
        assert_eq!(req.auth, None);
        assert!(req.body.ends_with(b"\n"));
    }
    let docs = r.docs();
    assert_seq(&ns_of(&docs), 0..25, "JSON lines");
    assert!(docs.iter().all(|d| d["format"] == "falco"));
}

#[tokio::test]
async fn refused_payloads_are_dropped_and_counted_not_retried() {
    let dir = tmpdir("reject");
    let r = Receiver::default();
    let (port, _server) = serve(0, r.clone()).await;
    let out = cfg(&format!(
        "http://127.0.0.1:{port}/reject,linger=10ms,retry_initial=20ms"
    ));
    let sinks = Sinks::start(&[out], &dir, "torsensor").unwrap();
    for n in 0..4 {
        send(&sinks, n);
    }
    wait_for("4 alerts refused", 5, || {
        sinks.stats()[0].dropped_undeliverable == 4
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stats = sinks.shutdown(Duration::from_secs(1)).await;
    assert_eq!(
        (
            stats[0].delivered,
            stats[0].failed,
            stats[0].spooled_events,
            stats[0].dropped_undeliverable
        ),
        (0, 0, 0, 4),
        "{stats:?}"
    );
    let sent: usize = r
        .reqs()
        .iter()
        .map(|q| {
            q.body
                .split(|&b| b == b'\n')
                .filter(|l| !l.is_empty())
                .count()
        })
        .sum();
    assert_eq!(sent, 4, "each refused alert was sent once, not retried");
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let dir = tmpdir("retryafter");
    let r = Receiver::default();
    r.throttle.store(1, Ordering::SeqCst);
    let (port, _server) = serve(0, r.clone()).await;
    let out = cfg(&format!(
        "http://127.0.0.1:{port}/in,linger=10ms,retry_initial=20ms,retry_max=5000ms"
    ));
    let sinks = Sinks::start(&[out], &dir, "torsensor").unwrap();
    send(&sinks, 0);
    wait_for("the alert after a 429", 10, || r.docs().len() == 1).await;
    let stats = sinks.shutdown(Duration::from_secs(1)).await;
    let reqs = r.reqs();
    assert_eq!(reqs.len(), 2);
    let waited = reqs[1].at - reqs[0].at;
    assert!(
        waited >= Duration::from_millis(950),
        "waited {waited:?} for Retry-After: 1 (own back-off 20 ms)"
    );
    assert_eq!((stats[0].delivered, stats[0].failed), (1, 1));
}

// ---------------------------------------------- outage, restart, spool bound

#[tokio::test]
async fn receiver_errors_mid_stream_keep_order_without_loss() {
    let dir = tmpdir("flap");
    let tok = token_file(&dir, "tok");
    let r = Receiver::default();
    let (port, _server) = serve(0, r.clone()).await;
    let spec = format!(
        "hec+http://127.0.0.1:{port},token_file={},batch_max_events=15,linger=10ms,retry_initial=30ms,retry_max=100ms,durable=false",
        tok.display()
    );
    // Memory mode (durable outputs always deliver from the spool).
    let sinks = Sinks::start(&[cfg(&spec)], &dir, "torsensor").unwrap();
    for n in 0..100 {
        send(&sinks, n);
    }
    wait_for("100 delivered", 10, || sinks.stats()[0].delivered == 100).await;
    assert_eq!(
        sinks.stats()[0].spooled_events,
        0,
        "a healthy receiver needs no spool"
    );
    // 503 from now on: alerts go to the spool.
    r.unavailable.store(true, Ordering::SeqCst);
    for n in 100..200 {
        send(&sinks, n);
        tokio::task::yield_now().await;
    }
    wait_for("alerts spooled while the receiver fails", 10, || {
        let s = &sinks.stats()[0];
        s.failed >= 2 && s.spooled_events == 100
    })
    .await;
    // Back, while more alerts keep coming.
    r.unavailable.store(false, Ordering::SeqCst);
    for n in 200..300 {
        send(&sinks, n);
        if n % 10 == 0 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    wait_for("300 delivered", 10, || r.docs().len() >= 300).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stats = sinks.shutdown(Duration::from_secs(1)).await;
    assert_seq(
        &ns_of(&r.docs()),
        0..300,
        "across memory -> spool -> memory",
    );
    assert_eq!(
        (
            stats[0].delivered,
            stats[0].spooled_events,
            stats[0].dropped_queue
        ),
        (300, 0, 0),
        "{stats:?}"
    );
}

fn segments(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |d| {
        d.filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "seg")
        })
        .count()
    })
}

#[tokio::test]
async fn outage_and_restart_deliver_everything_once_in_order() {
    let dir = tmpdir("outage");
    let tok = token_file(&dir, "tok");
    let port = free_port();
    let spec = format!(
        "hec+http://127.0.0.1:{port},name=siem,token_file={},batch_max_events=40,linger=20ms,retry_initial=50ms,retry_max=200ms,spool_segment_bytes=4096,connect_timeout=500ms",
        tok.display()
    );
    let spool_dir = dir.join("spool").join("siem");

    // Receiver down (connection refused): 300 alerts go to the spool.
    let sinks = Sinks::start(&[cfg(&spec)], &dir, "torsensor").unwrap();
    spool_while_down(&sinks, 300).await;
    let stats = sinks.shutdown(Duration::from_millis(300)).await;
    assert_eq!(
        (
            stats[0].delivered,
            stats[0].spooled_events,
            stats[0].dropped_queue,
            stats[0].dropped_spool
        ),
        (0, 300, 0, 0),
        "{stats:?}"
    );
    assert!(stats[0].failed >= 1);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&spool_dir).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700, "the spool is for root only");
    assert!(
        segments(&spool_dir) >= 3,
        "small segments rotated: {} segments",
        segments(&spool_dir)
    );

    // Restart: more alerts while still down.
    let sinks = Sinks::start(&[cfg(&spec)], &dir, "torsensor").unwrap();
    for n in 300..450 {
        send(&sinks, n);
    }
    wait_for("450 alerts spooled after restart", 10, || {
        sinks.stats()[0].spooled_events == 450
    })
    .await;

    // Receiver back.
    let r = Receiver::default();
    let (_, _server) = serve(port, r.clone()).await;
    wait_for("450 alerts delivered", 15, || r.docs().len() >= 450).await;
    // Give a duplicate the chance to show up.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stats = sinks.shutdown(Duration::from_secs(1)).await;
    assert_seq(
        &ns_of(&r.docs()),
        0..450,
        "every alert exactly once, in order",
    );
    assert_eq!(
        (stats[0].delivered, stats[0].spooled_events),
        (450, 0),
        "{stats:?}"
    );
    assert_eq!(segments(&spool_dir), 0, "delivered segments are deleted");
}

#[tokio::test]
async fn full_spool_drops_oldest_and_counts_them() {
    let dir = tmpdir("spoolfull");
    let port = free_port();
    // One alert per batch, so at most one alert is ever "in delivery" (and
    // kept while the spool is trimmed).
    let spec = format!(
        "http://127.0.0.1:{port}/in,name=small,batch_max_events=1,linger=0ms,retry_initial=50ms,retry_max=100ms,spool_max_bytes=8192,spool_segment_bytes=1024,connect_timeout=500ms"
    );
    let sinks = Sinks::start(&[cfg(&spec)], &dir, "torsensor").unwrap();
    for n in 0..300 {
        send(&sinks, n);
        if n % 20 == 0 {
            tokio::task::yield_now().await;
        }
    }
    wait_for("every alert spooled or dropped", 10, || {
        let s = &sinks.stats()[0];
        s.spooled_events + s.dropped_spool == 300
    })
    .await;
    let s = sinks.stats()[0].clone();
    assert!(
        s.dropped_spool > 200,
        "an 8 KiB spool holds few of 300 alerts: {s:?}"
    );
    assert!(s.spooled_bytes <= 8192, "{s:?}");

    let r = Receiver::default();
    let (_, _server) = serve(port, r.clone()).await;
    let expect = 300 - s.dropped_spool as usize;
    wait_for("the spooled alerts", 10, || r.docs().len() >= expect).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stats = sinks.shutdown(Duration::from_secs(1)).await;
    let got = ns_of(&r.docs());
    assert_eq!(got.len(), expect, "received + dropped = produced");
    assert_eq!(stats[0].dropped_spool, s.dropped_spool);
    assert_eq!(*got.last().unwrap(), 299, "the newest are kept");
    // The oldest were dropped. The spool segment holding the alert in
    // delivery when the spool was trimmed is kept whole (the next-oldest
    // segment goes instead), so what arrives is: at most one short run of
    // old alerts (one 1 KiB segment), then a contiguous run ending with the newest.
    let gap = got.windows(2).position(|w| w[1] != w[0] + 1);
    let (head, tail) = match gap {
        Some(i) => got.split_at(i + 1),
        None => (&[][..], &got[..]),
    };
    assert!(
        head.len() <= 8,
        "one segment at most before the gap: {got:?}"
    );
    if let Some(&first) = head.first() {
        assert_seq(head, first..first + head.len() as u64, "the kept segment");
    }
    assert_seq(tail, 300 - tail.len() as u64..300, "the newest alerts");
    assert!(tail[0] > 0, "the oldest alerts were dropped");
}

// -------------------------------------------------------------- file sinks

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path).map_or_else(
        |_| Vec::new(),
        |t| {
            t.lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect()
        },
    )
}

#[tokio::test]
async fn file_sink_reopens_after_rotation() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tmpdir("file");
    let path = dir.join("alerts.json");
    let sinks = Sinks::start(
        &[cfg(&format!("file:{}", path.display()))],
        &dir,
        "torsensor",
    )
    .unwrap();
    for n in 0..5 {
        send(&sinks, n);
    }
    wait_for("5 lines", 5, || lines(&path).len() == 5).await;
    let rotated = dir.join("alerts.json.1");
    std::fs::rename(&path, &rotated).unwrap();
    sinks.reopen_files();
    for n in 5..12 {
        send(&sinks, n);
    }
    wait_for("7 lines in the new file", 5, || lines(&path).len() == 7).await;
    // Shutdown writes what is still queued.
    for n in 12..40 {
        send(&sinks, n);
    }
    let stats = sinks.shutdown(Duration::from_secs(1)).await;
    assert_seq(&ns_of(&lines(&rotated)), 0..5, "the rotated file");
    assert_seq(&ns_of(&lines(&path)), 5..40, "the new file");
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o640
    );
    assert_eq!(stat(&stats, "file").delivered, 40);
}

#[tokio::test]
async fn renders_once_per_format_in_use() {
    let dir = tmpdir("formats");
    let (a, b, c) = (dir.join("a.json"), dir.join("b.json"), dir.join("c.json"));
    let outputs = [
        cfg(&format!("file:{}", a.display())),
        cfg(&format!("file:{},format=ecs", b.display())),
        cfg(&format!("file:{},format=falco", c.display())),
    ];
    let sinks = Sinks::start(&outputs, &dir, "torsensor").unwrap();
    let calls = std::cell::RefCell::new(Vec::new());
    for n in 0..3 {
        sinks.send(&meta(50), &|f| {
            calls.borrow_mut().push(f);
            json!({"n": n, "format": f.to_string()})
        });
    }
    sinks.shutdown(Duration::from_secs(1)).await;
    let calls = calls.into_inner();
    assert_eq!(
        calls.len(),
        6,
        "two formats in use, three alerts: {calls:?}"
    );
    assert_eq!(calls.iter().filter(|f| **f == Schema::Ecs).count(), 3);
    for (path, format) in [(&a, "ecs"), (&b, "ecs"), (&c, "falco")] {
        let docs = lines(path);
        assert_seq(&ns_of(&docs), 0..3, "each file");
        assert!(docs.iter().all(|d| d["format"] == format), "{docs:?}");
    }
}

/// The stdout sink, checked from outside: this test runs itself again as a
/// child process whose standard output is read back.
#[tokio::test]
async fn stdout_sink_writes_json_lines() {
    if std::env::var_os("TORSENSOR_STDOUT_SINK_CHILD").is_some() {
        let dir = tmpdir("stdout-child");
        let sinks = Sinks::start(&[cfg("stdout,format=ocsf")], &dir, "torsensor").unwrap();
        for n in 0..30 {
            send(&sinks, n);
        }
        let stats = sinks.shutdown(Duration::from_secs(2)).await;
        assert_eq!(stats[0].delivered, 30);
        return;
    }
    let child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "stdout_sink_writes_json_lines",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("TORSENSOR_STDOUT_SINK_CHILD", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Its output is a few kilobytes: it fits the pipes while we wait.
    let out = tokio::task::spawn_blocking(move || child.wait_with_output());
    let out = tokio::time::timeout(Duration::from_secs(20), out)
        .await
        .expect("child within 20 s")
        .unwrap()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "child failed: {text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // libtest's own lines are not JSON; the sink's are, one per line (the
    // first one may follow libtest's "test ... " prefix on the same line).
    let docs: Vec<Value> = text
        .lines()
        .filter_map(|l| l.find('{').map(|i| &l[i..]))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_seq(&ns_of(&docs), 0..30, "stdout");
    assert!(docs.iter().all(|d| d["format"] == "ocsf"));
}

#[tokio::test]
async fn stalled_http_receiver_delays_neither_send_nor_the_file_sink() {
    let dir = tmpdir("slow");
    // Accepts connections and never answers.
    let stall = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = stall.local_addr().unwrap().port();
    let held = Arc::new(Mutex::new(Vec::new()));
    let h = held.clone();
    tokio::spawn(async move {
        while let Ok((sock, _)) = stall.accept().await {
            h.lock().unwrap().push(sock);
        }
    });
    let path = dir.join("alerts.json");
    let outputs = [
        cfg(&format!(
            "http://127.0.0.1:{port}/stall,timeout=30000ms,queue_size=100,batch_max_events=10"
        )),
        cfg(&format!("file:{}", path.display())),
    ];
    let sinks = Sinks::start(&outputs, &dir, "torsensor").unwrap();
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    for n in 0..1000 {
        let t = Instant::now();
        send(&sinks, n);
        slowest = slowest.max(t.elapsed());
        if n % 20 == 19 {
            // The daemon waits for the ring buffer between bursts.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    assert!(
        slowest < Duration::from_millis(50),
        "send() took {slowest:?}"
    );
    wait_for("1000 alerts in the file", 3, || lines(&path).len() == 1000).await;
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_seq(&ns_of(&lines(&path)), 0..1000, "the file sink");
    assert!(
        !held.lock().unwrap().is_empty(),
        "the HTTP sink did connect"
    );

    let t = Instant::now();
    let stats = sinks.shutdown(Duration::from_millis(300)).await;
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "shutdown took {:?}",
        t.elapsed()
    );
    let http = stat(&stats, "http");
    assert_eq!(http.delivered, 0);
    // Its 100-alert memory queue overflowed into the spool: nothing lost.
    assert_eq!(
        (http.spooled_events, http.dropped_queue),
        (1000, 0),
        "{http:?}"
    );
    assert_eq!(stat(&stats, "file").delivered, 1000);
}

// ------------------------------------------------------------------ syslog

#[tokio::test]
async fn unix_datagram_syslog_and_late_receiver() {
    let dir = tmpdir("devlog");
    let sock_path = dir.join("log.sock");
    let spec = format!(
        "syslog://{},facility=local0,retry_initial=50ms,retry_max=100ms",
        sock_path.display()
    );
    let sinks = Sinks::start(&[cfg(&spec)], &dir, "torsensor").unwrap();
    // Nobody listens yet: the alerts wait in the spool.
    send(&sinks, 0);
    send(&sinks, 1);
    wait_for("2 alerts spooled", 5, || {
        sinks.stats()[0].spooled_events == 2
    })
    .await;
    let rx = tokio::net::UnixDatagram::bind(&sock_path).unwrap();
    send(&sinks, 2);
    let mut got = Vec::new();
    let mut buf = vec![0u8; 65536];
    while got.len() < 3 {
        let n = tokio::time::timeout(Duration::from_secs(5), rx.recv(&mut buf))
            .await
            .expect("datagram within 5 s")
            .unwrap();
        got.push(String::from_utf8(buf[..n].to_vec()).unwrap());
    }
    let stats = sinks.shutdown(Duration::from_secs(1)).await;
    let pid = std::process::id().to_string();
    for (i, msg) in got.iter().enumerate() {
        // <PRI>1 TIMESTAMP HOST APP PROCID MSGID - MSG
        let f: Vec<&str> = msg.splitn(8, ' ').collect();
        assert_eq!(f[0], "<131>1", "local0 (16) * 8 + error (3): {msg}");
        assert!(humantime::parse_rfc3339(f[1]).is_ok(), "{msg}");
        assert_eq!(
            &f[2..7],
            [
                "sensor-host-1",
                "torsensor",
                pid.as_str(),
                "torsensor.egress.tor_relay",
                "-"
            ]
        );
        let body: Value = serde_json::from_str(f[7]).unwrap();
        assert_eq!(body["n"], i as u64);
    }
    assert_eq!(stats[0].delivered, 3);
}

#[tokio::test]
async fn udp_datagrams_over_the_limit_are_skipped_and_counted() {
    let dir = tmpdir("udp");
    let rx = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let port = rx.local_addr().unwrap().port();
    let out = cfg(&format!(
        "syslog+udp://127.0.0.1:{port},datagram_max_bytes=1024,linger=10ms"
    ));
    let sinks = Sinks::start(&[out], &dir, "torsensor").unwrap();
    send(&sinks, 0);
    sinks.send(&meta(50), &|_| json!({"n": 1, "pad": "y".repeat(2000)}));
    send(&sinks, 2);
    let mut got = Vec::new();
    let mut buf = vec![0u8; 65536];
    while got.len() < 2 {
        let n = tokio::time::timeout(Duration::from_secs(5), rx.recv(&mut buf))
            .await
            .expect("datagram within 5 s")
            .unwrap();
        assert!(n <= 1024, "{n}-byte datagram over the limit");
        let msg = String::from_utf8(buf[..n].to_vec()).unwrap();
        let body: Value = serde_json::from_str(msg.splitn(8, ' ').nth(7).unwrap()).unwrap();
        got.push(body["n"].as_u64().unwrap());
    }
    let stats = sinks.shutdown(Duration::from_secs(1)).await;
    assert_eq!(got, [0, 2]);
    assert_eq!(
        (stats[0].delivered, stats[0].dropped_undeliverable),
        (2, 1),
        "{stats:?}"
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(100), rx.recv(&mut buf))
            .await
            .is_err(),
        "the oversize alert was not sent"
    );
}

struct Rsyslogd(Child);

impl Rsyslogd {
    /// SIGTERM (rsyslogd flushes its files) and wait.
    fn stop(&mut self) {
        // SAFETY: kill has no memory preconditions; the pid is our child's.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

impl Drop for Rsyslogd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const RSYSLOGD: &str = "/usr/sbin/rsyslogd";

#[tokio::test]
async fn rsyslog_receives_tcp_and_udp_and_a_restart() {
    if !Path::new(RSYSLOGD).exists() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{RSYSLOGD} is missing under CI=true: `cargo xtask setup` installs rsyslog"
        );
        eprintln!(
            "skipped rsyslog_receives_tcp_and_udp_and_a_restart: {RSYSLOGD} is not installed (apt-get install rsyslog)"
        );
        return;
    }
    let dir = tmpdir("rsyslog");
    std::fs::create_dir_all(dir.join("work")).unwrap();
    let tcp_port = free_port();
    let udp_port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = dir.join("received.log");
    let conf = dir.join("rsyslog.conf");
    std::fs::write(
        &conf,
        format!(
            r#"global(workDirectory="{work}" maxMessageSize="64k")
module(load="imudp")
module(load="imtcp")
template(name="fields" type="string" string="%inputname%\t%pri%\t%hostname%\t%app-name%\t%procid%\t%msgid%\t%timereported:::date-rfc3339%\t%msg%\n")
ruleset(name="alerts") {{
    action(type="omfile" file="{out}" template="fields")
}}
input(type="imudp" address="127.0.0.1" port="{udp_port}" ruleset="alerts")
input(type="imtcp" address="127.0.0.1" port="{tcp_port}" ruleset="alerts")
"#,
            work = dir.join("work").display(),
            out = out.display(),
        ),
    )
    .unwrap();
    let tcp_addr: SocketAddr = format!("127.0.0.1:{tcp_port}").parse().unwrap();
    let mut rsyslogd = start_rsyslogd(&conf, &dir, tcp_addr);

    let read = || -> Vec<Vec<String>> {
        std::fs::read_to_string(&out).map_or_else(
            |_| Vec::new(),
            |t| {
                t.lines()
                    .map(|l| l.split('\t').map(str::to_owned).collect())
                    .collect()
            },
        )
    };
    let tcp_out = cfg(&format!(
        "syslog+tcp://127.0.0.1:{tcp_port},facility=local3,linger=20ms,retry_initial=50ms,retry_max=200ms"
    ));
    let udp_out = cfg(&format!("syslog+udp://127.0.0.1:{udp_port},linger=20ms"));
    // TCP first: once those lines are written, rsyslogd's UDP input is up too.
    let tcp = Sinks::start(&[tcp_out], &dir.join("s1"), "torsensor").unwrap();
    for n in 0..20 {
        send(&tcp, n);
    }
    wait_for("20 TCP messages in rsyslog's file", 10, || {
        read().len() >= 20
    })
    .await;
    let udp = Sinks::start(&[udp_out], &dir.join("s2"), "torsensor").unwrap();
    for n in 20..40 {
        send(&udp, n);
    }
    wait_for("20 UDP messages in rsyslog's file", 10, || {
        read().len() >= 40
    })
    .await;
    let stats = udp.shutdown(Duration::from_secs(1)).await;
    assert_eq!(stats[0].delivered, 20);

    // rsyslogd stops: the TCP sink notices the closed connection, fails to
    // reconnect and spools; when rsyslogd is back it reconnects and delivers.
    rsyslogd.stop();
    for n in 40..50 {
        send(&tcp, n);
    }
    wait_for("10 alerts spooled while rsyslogd is down", 10, || {
        let s = &tcp.stats()[0];
        s.failed >= 1 && s.spooled_events == 10
    })
    .await;
    let rsyslogd = start_rsyslogd(&conf, &dir, tcp_addr);
    wait_for("the spooled alerts after the restart", 10, || {
        read().len() >= 50
    })
    .await;
    let stats = tcp.shutdown(Duration::from_secs(1)).await;
    assert_eq!(
        (stats[0].delivered, stats[0].spooled_events),
        (30, 0),
        "{stats:?}"
    );
    drop(rsyslogd);

    let rows = read();
    assert_eq!(rows.len(), 50, "{rows:?}");
    let pid = std::process::id().to_string();
    for (i, row) in rows.iter().enumerate() {
        let [input, pri, host, app, procid, msgid, ts, msg] = &row[..] else {
            panic!("row {row:?}")
        };
        let (want_input, want_pri) = if (20..40).contains(&i) {
            ("imudp", "83")
        } else {
            ("imtcp", "155")
        };
        assert_eq!(input, want_input, "{row:?}");
        // local3 (19) * 8 + error (3) over TCP; authpriv (10) * 8 + 3 over UDP.
        assert_eq!(pri, want_pri, "{row:?}");
        assert_eq!(host, "sensor-host-1");
        assert_eq!(app, "torsensor");
        assert_eq!(procid, &pid);
        assert_eq!(msgid, "torsensor.egress.tor_relay");
        assert!(humantime::parse_rfc3339(ts).is_ok(), "{ts}");
        let body: Value =
            serde_json::from_str(msg.trim_start()).unwrap_or_else(|e| panic!("{e}: {msg}"));
        assert_eq!(body["n"], i as u64, "in order, once each");
        assert_eq!(body["format"], "ecs");
    }
}

/// Starts rsyslogd in the foreground and waits until it listens on `tcp`.
fn start_rsyslogd(conf: &Path, dir: &Path, tcp: SocketAddr) -> Rsyslogd {
    let child = Command::new(RSYSLOGD)
        .args(["-n", "-f"])
        .arg(conf)
        .arg("-i")
        .arg(dir.join("rsyslogd.pid"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start rsyslogd");
    let mut rsyslogd = Rsyslogd(child);
    let end = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(tcp).is_err() {
        if let Ok(Some(status)) = rsyslogd.0.try_wait() {
            let mut err = String::new();
            std::io::Read::read_to_string(rsyslogd.0.stderr.as_mut().unwrap(), &mut err).unwrap();
            panic!("rsyslogd exited ({status}): {err}");
        }
        assert!(
            Instant::now() < end,
            "rsyslogd did not listen on {tcp} within 10 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    rsyslogd
}

// --------------------------------------------------------------------- TLS

/// Accepts TCP connections and completes a TLS handshake on each.
struct TlsListener {
    tcp: tokio::net::TcpListener,
    tls: tokio_rustls::TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((sock, addr)) = self.tcp.accept().await else {
                continue;
            };
            // A client that refuses our certificate fails here; keep serving.
            if let Ok(s) = self.tls.accept(sock).await {
                return (s, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }
}

#[tokio::test]
async fn https_with_ca_file_and_certificate_checks() {
    use tokio_rustls::rustls;
    let dir = tmpdir("tls");
    let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, ck.cert.pem()).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![ck.cert.der().clone()], key)
        .unwrap();
    let listener = TlsListener {
        tcp: tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        tls: tokio_rustls::TlsAcceptor::from(Arc::new(server)),
    };
    let port = listener.tcp.local_addr().unwrap().port();
    let r = Receiver::default();
    let app = Router::new().fallback(handle).with_state(r.clone());
    let _server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    // Trusted through ca_file: delivered over TLS.
    let trusted = cfg(&format!(
        "https://127.0.0.1:{port}/tls,ca_file={},linger=10ms",
        ca.display()
    ));
    let sinks = Sinks::start(&[trusted], &dir.join("a"), "torsensor").unwrap();
    for n in 0..5 {
        send(&sinks, n);
    }
    wait_for("5 alerts over TLS", 10, || r.docs().len() >= 5).await;
    let stats = sinks.shutdown(Duration::from_secs(1)).await;
    assert_eq!(stats[0].delivered, 5);
    assert_seq(&ns_of(&r.docs()), 0..5, "TLS alerts");

    // Without ca_file the self-signed certificate is refused: nothing is
    // sent, the alerts wait in the spool.
    let untrusted = cfg(&format!(
        "https://127.0.0.1:{port}/tls,linger=10ms,retry_initial=50ms,retry_max=100ms"
    ));
    let sinks = Sinks::start(&[untrusted], &dir.join("b"), "torsensor").unwrap();
    send(&sinks, 5);
    wait_for("a certificate failure", 10, || sinks.stats()[0].failed >= 1).await;
    let stats = sinks.shutdown(Duration::from_millis(200)).await;
    assert_eq!(
        (stats[0].delivered, stats[0].spooled_events),
        (0, 1),
        "{stats:?}"
    );
    assert_eq!(r.docs().len(), 5, "no request got through without trust");
}

// ------------------------------------------- damage, losses and crashes

/// Log lines emitted on this thread while the guard lives (the sinks run on
/// the test's current-thread runtime, so their task logs here too).
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn capture() -> (Logs, tracing::subscriber::DefaultGuard) {
        let logs = Logs::default();
        let w = logs.clone();
        let sub = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || w.clone())
            .finish();
        (logs.clone(), tracing::subscriber::set_default(sub))
    }
    fn lines(&self) -> Vec<String> {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

/// The spool segments of `dir`, oldest first.
fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    v.sort();
    v
}

/// The records of a segment file: (byte offset of the line, the line with
/// its newline, the alert's `n`). Any format: the JSON starts at the first
/// `{`; lines that are not records (`#` headers) are left out.
fn records_of(path: &Path) -> Vec<(usize, Vec<u8>, u64)> {
    let data = std::fs::read(path).unwrap();
    let mut out = Vec::new();
    let mut off = 0;
    for line in data.split_inclusive(|&b| b == b'\n') {
        if !line.starts_with(b"#") {
            let brace = line.iter().position(|&b| b == b'{').unwrap();
            let entry: Value = serde_json::from_slice(&line[brace..]).unwrap();
            let body: Value = serde_json::from_str(entry["body"].as_str().unwrap()).unwrap();
            out.push((off, line.to_vec(), body["n"].as_u64().unwrap()));
        }
        off += line.len();
    }
    out
}

/// Issue 11, item 5: four segments damaged by hand (a byte flipped, a
/// sequence number overwritten, two lines joined, truncated mid-record).
/// Every intact record is delivered once and in order; what cannot be is
/// counted in `dropped_spool` and named (file, offset, count) in the log.
#[tokio::test]
async fn damaged_spool_segments_lose_only_damaged_records_and_count_them() {
    let dir = tmpdir("damaged");
    let port = free_port();
    let spec = format!(
        "http://127.0.0.1:{port}/in,name=dmg,batch_max_events=40,linger=10ms,retry_initial=50ms,retry_max=200ms,spool_segment_bytes=4096,connect_timeout=500ms"
    );
    let spool_dir = dir.join("spool").join("dmg");
    let sinks = Sinks::start(&[cfg(&spec)], &dir, "torsensor").unwrap();
    spool_while_down(&sinks, 300).await;
    sinks.shutdown(Duration::from_millis(300)).await;
    let segs = segment_files(&spool_dir);
    assert!(segs.len() >= 6, "{} segments", segs.len());

    let mut lost: Vec<u64> = Vec::new();
    // 1. A byte flipped inside one record's body (the pad: still valid JSON).
    let recs = records_of(&segs[0]);
    let (off, line, n) = &recs[recs.len() / 2];
    let pad = line.windows(4).position(|w| w == b"xxxx").unwrap() + 2;
    let mut data = std::fs::read(&segs[0]).unwrap();
    data[off + pad] ^= 0x01;
    std::fs::write(&segs[0], &data).unwrap();
    lost.push(*n);
    // 2. A sequence number overwritten (a duplicate of the first record's).
    let recs = records_of(&segs[1]);
    let first_seq = &recs[0].1[..recs[0].1.iter().position(|&b| b == b'\t').unwrap()];
    let (off, line, _) = &recs[recs.len() / 2];
    assert_eq!(
        line.iter().position(|&b| b == b'\t').unwrap(),
        first_seq.len()
    );
    let mut data = std::fs::read(&segs[1]).unwrap();
    data[*off..off + first_seq.len()].copy_from_slice(first_seq);
    std::fs::write(&segs[1], &data).unwrap();
    // 3. Two lines joined (the newline between them removed).
    let recs = records_of(&segs[2]);
    let (off, line, _) = &recs[recs.len() / 2];
    let mut data = std::fs::read(&segs[2]).unwrap();
    data.remove(off + line.len() - 1);
    std::fs::write(&segs[2], &data).unwrap();
    // 4. Truncated in the middle of a record (not the newest segment).
    let recs = records_of(&segs[3]);
    let cut = recs.len() / 2;
    let at = recs[cut].0 + recs[cut].1.len() / 2;
    let data = std::fs::read(&segs[3]).unwrap();
    std::fs::write(&segs[3], &data[..at]).unwrap();
    lost.extend(recs[cut..].iter().map(|r| r.2));

    let (logs, _guard) = Logs::capture();
    let r = Receiver::default();
    let (_, _server) = serve(port, r.clone()).await;
    let sinks = Sinks::start(&[cfg(&spec)], &dir, "torsensor").unwrap();
    let expect = 300 - lost.len();
    wait_for("the intact alerts", 15, || r.docs().len() >= expect).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stats = sinks.shutdown(Duration::from_secs(1)).await;
    let docs = r.docs();
    for d in &docs {
        assert_eq!(
            d["pad"],
            "x".repeat(60),
            "a damaged alert was delivered: {d}"
        );
    }
    let want: Vec<u64> = (0..300).filter(|n| !lost.contains(n)).collect();
    assert_eq!(
        ns_of(&docs),
        want,
        "every intact alert exactly once, in order; lost: {lost:?}"
    );
    assert_eq!(
        stats[0].dropped_spool,
        lost.len() as u64,
        "every lost record counted once: {stats:?}"
    );
    let logs = logs.lines();
    for (seg, count) in [(&segs[0], 1), (&segs[3], recs.len() - cut)] {
        let name = seg.file_name().unwrap().to_str().unwrap();
        assert!(
            logs.iter().any(|l| l.contains(name)
                && l.contains("offset")
                && l.contains(&format!("{count} alerts lost"))),
            "no log line names {name} with {count} alerts lost:\n{}",
            logs.join("\n")
        );
    }
}

/// Unmounts on drop (every exit path of the test, panics included).
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Issue 11, item 6: the spool on a really full file system and a receiver
/// that is down. The losses show up while the sinks run: a warning that is
/// not swallowed by the "delivery failed" rate limit, and a `health:` event
/// per output with the running total, from the health tick.
#[tokio::test]
async fn losses_on_a_full_file_system_are_health_events_while_running() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    }
    let dir = tmpdir("fullfs");
    let state = dir.join("state");
    std::fs::create_dir(&state).unwrap();
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs"])
        .arg(&state)
        .status()
        .unwrap();
    assert!(ok.success(), "mount tmpfs");
    let _mount = Mount(state.clone());
    let (logs, _guard) = Logs::capture();
    let port = free_port();
    let spec = format!(
        "http://127.0.0.1:{port}/in,name=fullfs,linger=0ms,retry_initial=20ms,retry_max=50ms,connect_timeout=500ms,queue_size=500"
    );
    let sinks = Sinks::start(&[cfg(&spec)], &state, "torsensor").unwrap();
    let mut health = sensor_daemon::sink::LossReport::default();
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    for n in 0..2000 {
        send(&sinks, n);
        if n % 20 == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    // Nothing is delivered: each alert is spooled or lost.
    let mut total = 0;
    let end = Instant::now() + Duration::from_secs(15);
    let reported = loop {
        tick.tick().await;
        health.tick(&sinks.stats());
        let s = sinks.stats()[0].clone();
        assert_eq!(s.delivered, 0);
        let lost = s.dropped_queue + s.dropped_spool + s.dropped_undeliverable;
        if s.spooled_events + lost == 2000 && lost == total {
            let want = format!("{total} lost in total");
            if let Some(l) = logs
                .lines()
                .into_iter()
                .find(|l| l.contains("health:") && l.contains("fullfs") && l.contains(&want))
            {
                break l;
            }
        }
        total = lost;
        assert!(
            Instant::now() < end,
            "no health event with the total while running: {s:?}\n{}",
            logs.lines().join("\n")
        );
    };
    assert!(
        total > 1000,
        "a 64 KiB spool holds few of 2,000 alerts: {total}"
    );
    let lines = logs.lines();
    assert!(
        lines.iter().any(|l| l.contains("delivery failed")),
        "{}",
        lines.join("\n")
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("cannot write the spool") && l.contains("alerts lost")),
        "the spool write loss is logged although a delivery failure came first:\n{}",
        lines.join("\n")
    );
    eprintln!("{reported}");
    let stats = sinks.shutdown(Duration::from_millis(200)).await;
    assert_eq!(stats[0].delivered, 0);
}

/// Issue 11, item 7, the child: a real process with a remote output whose
/// receiver never answers; sends a burst and reports how many alerts the
/// sinks accepted (on disk) until it is killed. Run by the test below.
#[tokio::test]
#[ignore = "run as a child process by durable_outputs_survive_kill_9"]
async fn crash_child() {
    let dir = PathBuf::from(std::env::var("TORSENSOR_CRASH_DIR").expect("run by the parent"));
    let port: u16 = std::env::var("TORSENSOR_CRASH_PORT")
        .unwrap()
        .parse()
        .unwrap();
    let n: u64 = std::env::var("TORSENSOR_CRASH_N").unwrap().parse().unwrap();
    let spec = format!("http://127.0.0.1:{port}/in,name=crash,timeout=60s");
    let sinks = Sinks::start(&[cfg(&spec)], &dir, "torsensor").unwrap();
    for i in 0..n {
        send(&sinks, i);
    }
    // A line of its own (libtest printed "test crash_child ... " before).
    println!("\nsent {n}");
    let mut last = u64::MAX;
    loop {
        let s = &sinks.stats()[0];
        let accepted = s.spooled_events + s.delivered;
        if accepted != last {
            println!("accepted {accepted}");
            last = accepted;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Issue 11, item 7: `kill -9` right after a burst to a receiver that
/// accepts connections but never answers. A restart delivers every alert
/// the killed process had accepted, and it had accepted all of them.
#[tokio::test]
async fn durable_outputs_survive_kill_9() {
    use std::io::BufRead as _;
    const N: u64 = 1000;
    let dir = tmpdir("crash");
    // The slow receiver: accepts, reads, never answers.
    let slow = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let slow_port = slow.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in slow.incoming() {
            held.push(c);
        }
    });
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "crash_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("TORSENSOR_CRASH_DIR", &*dir)
        .env("TORSENSOR_CRASH_PORT", slow_port.to_string())
        .env("TORSENSOR_CRASH_N", N.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let out = std::io::BufReader::new(child.stdout.take().unwrap());
    std::thread::spawn(move || {
        for l in out.lines() {
            let Ok(l) = l else { break };
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    // Wait for the burst, then kill as soon as every alert is accepted, or
    // 2 s after the burst at the latest.
    let mut accepted = 0;
    let mut sent_at = None;
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let deadline = sent_at.map_or(end, |t: Instant| t + Duration::from_secs(2));
        let wait = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(wait) {
            Ok(l) if l.starts_with("sent ") => sent_at = Some(Instant::now()),
            Ok(l) => {
                if let Some(k) = l.strip_prefix("accepted ") {
                    accepted = k.parse().unwrap();
                    if accepted == N && sent_at.is_some() {
                        break;
                    }
                }
            }
            Err(_) => {
                assert!(sent_at.is_some(), "the child did not send");
                break;
            }
        }
    }
    let took = sent_at.unwrap().elapsed();
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    eprintln!("killed {took:?} after the burst, {accepted} of {N} accepted");

    // Restart against a working receiver: the same output name, so the
    // same spool.
    let r = Receiver::default();
    let (port, _server) = serve(0, r.clone()).await;
    let spec = format!("http://127.0.0.1:{port}/in,name=crash,linger=10ms");
    let sinks = Sinks::start(&[cfg(&spec)], &dir, "torsensor").unwrap();
    wait_for("the accepted alerts", 15, || {
        r.docs().len() as u64 >= accepted
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    sinks.shutdown(Duration::from_secs(1)).await;
    let got = ns_of(&r.docs());
    assert_seq(
        &got,
        0..N,
        "after kill -9 and a restart: every alert, once, in order",
    );
    assert_eq!(
        accepted, N,
        "every alert of the burst was accepted (on disk) before the kill"
    );
}
