//! `torsensor bench-outputs` (hidden; run by `cargo xtask bench`): alerts/s
//! through one HTTP output to a receiver on loopback that answers at once,
//! with `durable = false` (delivered from memory) and `durable = true`
//! (appended and fsynced to the spool first, delivered from there),
//! interleaved round by round in the same run. Prints the rates and the
//! ratio durable/memory; no absolute figure is judged.
//!
//! Uses the sink from outside, as the daemon does ([`Sinks`] and
//! [`OutputConfig`]), and nothing else of the daemon.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use super::{AlertMeta, OutputConfig, SinkError, Sinks};

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error("output benchmark: {0}")]
    Io(#[from] std::io::Error),
    #[error("output benchmark: {0}")]
    Failed(String),
}

/// A receiver that answers every request 200 at once (HTTP/1.1 keep-alive).
async fn receiver() -> std::io::Result<u16> {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = l.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (r, mut w) = s.into_split();
                let mut r = BufReader::new(r);
                let mut body = Vec::new();
                loop {
                    let mut len = 0usize;
                    let mut line = String::new();
                    loop {
                        line.clear();
                        if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        let l = line.trim_end();
                        if l.is_empty() {
                            break;
                        }
                        if let Some((k, v)) = l.split_once(':')
                            && k.eq_ignore_ascii_case("content-length")
                        {
                            len = v.trim().parse().unwrap_or(0);
                        }
                    }
                    body.resize(len, 0);
                    if r.read_exact(&mut body).await.is_err()
                        || w.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                            .await
                            .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    Ok(port)
}

/// CPU time of the whole process (every thread), in seconds.
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let t = |v: libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 / 1e6;
    t(u.ru_utime) + t(u.ru_stime)
}

/// Sends `n` alerts as fast as the output's queue takes them (never
/// dropping); returns alerts/s until the receiver acknowledged all, and
/// the process's CPU time per alert (receiver included) in microseconds.
async fn one_round(spec: &str, state_dir: &Path, n: u64) -> Result<(f64, f64), BenchError> {
    let cfg: OutputConfig = spec.parse()?;
    let queue = cfg.queue_size as u64;
    let sinks = Sinks::start(std::slice::from_ref(&cfg), state_dir, "torsensor")?;
    let meta = AlertMeta {
        time: SystemTime::now(),
        severity: 73,
        rule_id: "torsensor.egress.tor_relay".into(),
        host: "bench-host".into(),
    };
    let start = Instant::now();
    let cpu0 = cpu_seconds();
    let deadline = start + Duration::from_secs(120);
    for i in 0..n {
        while sinks.stats()[0].queued >= queue * 3 / 4 {
            tokio::task::yield_now().await;
        }
        // About the size of a real ECS alert.
        sinks.send(
            &meta,
            &|_| serde_json::json!({"n": i, "event": {"kind": "alert"}, "pad": "x".repeat(900)}),
        );
        if i % 64 == 0 {
            tokio::task::yield_now().await;
        }
    }
    loop {
        let s = &sinks.stats()[0];
        if s.delivered >= n {
            break;
        }
        if s.dropped_queue + s.dropped_spool + s.dropped_undeliverable > 0 {
            return Err(BenchError::Failed(format!("alerts were lost: {s:?}")));
        }
        if Instant::now() > deadline {
            return Err(BenchError::Failed(format!(
                "not delivered within 120 s: {s:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    let cpu = (cpu_seconds() - cpu0) / n as f64 * 1e6;
    sinks.shutdown(Duration::from_secs(1)).await;
    Ok((rate, cpu))
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Runs `rounds` interleaved rounds of `n` alerts each way; spools go to
/// `<state_dir>/spool/` (put it on the disk the daemon uses).
pub fn run(state_dir: &Path, n: u64, rounds: usize) -> Result<(), BenchError> {
    std::fs::create_dir_all(state_dir)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let port = receiver().await?;
        let (mut memory, mut durable, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        let mut cpu_ratios = Vec::new();
        for round in 0..rounds.max(1) {
            let mut rate = [0.0; 2];
            let mut cpu = [0.0; 2];
            // Alternate which goes first.
            for k in [round % 2, 1 - round % 2] {
                let spec = format!(
                    "http://127.0.0.1:{port}/in,name=bench-{k},durable={}",
                    k == 1
                );
                (rate[k], cpu[k]) = one_round(&spec, state_dir, n).await?;
            }
            println!(
                "   round {}: memory {:>8.0}  durable {:>8.0} alerts/s   ratio durable/memory {:.3};  CPU per alert {:.1} / {:.1} us",
                round + 1,
                rate[0],
                rate[1],
                rate[1] / rate[0],
                cpu[0],
                cpu[1],
            );
            cpu_ratios.push(cpu[1] / cpu[0]);
            memory.push(rate[0]);
            durable.push(rate[1]);
            ratios.push(rate[1] / rate[0]);
        }
        println!(
            "   median memory {:.0} alerts/s, durable {:.0} alerts/s; RATIO durable/memory (median of the per-round ratios): {:.3}",
            median(&mut memory),
            median(&mut durable),
            median(&mut ratios)
        );
        println!(
            "   RATIO CPU per alert durable/memory (median): {:.2}",
            median(&mut cpu_ratios)
        );
        Ok(())
    })
}
