//! The sensor's metrics endpoint, read over real HTTP on loopback.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::Sensor;

/// `GET path` over plain HTTP/1.1: (status code, body).
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let code = answer
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer:?}"));
    let body = answer.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (code, body.to_owned())
}

/// Where the sensor's endpoint listens, from its `status.json`.
pub fn endpoint(sensor: &Sensor) -> SocketAddr {
    let text = std::fs::read_to_string(sensor.state_dir.join("status.json")).unwrap();
    let doc: Value = serde_json::from_str(&text).unwrap();
    doc["metrics"]
        .as_str()
        .unwrap_or_else(|| panic!("no metrics address in status.json: {doc}"))
        .parse()
        .unwrap()
}

/// The value of one sample line (`name{labels}`) in the metrics text.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.parse().unwrap())
}

/// Polls `/metrics` until `series` reaches `at_least` (the loop publishes
/// every second).
pub fn wait_sample(addr: SocketAddr, series: &str, at_least: f64) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (code, text) = http_get(addr, "/metrics");
        assert_eq!(code, 200, "{text}");
        if sample(&text, series).is_some_and(|v| v >= at_least) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{series} never reached {at_least}:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
