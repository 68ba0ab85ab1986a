//! A real HTTP/1.1 feed server on loopback that misbehaves on demand.
//!
//! Written on raw sockets on purpose: the point is to break HTTP in ways a
//! well-behaved server library will not (a body cut short of its
//! Content-Length, a body dribbled out past the client's timeout).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the server does for a path.
#[derive(Clone, Debug)]
pub enum Behavior {
    /// 200 with the body, an ETag and a Last-Modified; 304 when the request
    /// carries the same ETag in If-None-Match. Gzip when asked for.
    Serve { body: Vec<u8>, etag: String },
    /// This status, empty body.
    Status(u16),
    /// Headers at once, then the body a few bytes at a time, slowly.
    Slow {
        body: Vec<u8>,
        bytes_per_step: usize,
        step: Duration,
    },
    /// Announces the whole body, sends half, closes.
    Truncated { body: Vec<u8> },
    /// 200 with this body and content type (HTML page, rate-limit text...).
    Raw {
        body: Vec<u8>,
        content_type: &'static str,
    },
    /// Each request gets the next body (round robin), each with its own
    /// ETag: a source that changes at every fetch.
    Cycle { bodies: Vec<Vec<u8>>, next: usize },
    /// This status (301, 302, 307...) with a `Location` header.
    Redirect { status: u16, location: String },
}

/// One request as the server saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub path: String,
    pub headers: HashMap<String, String>,
    pub status: u16,
}

#[derive(Default)]
struct State {
    routes: HashMap<String, Behavior>,
    seen: Vec<Seen>,
}

pub struct FeedServer {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
}

impl FeedServer {
    pub fn start() -> FeedServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let s = state.clone();
        accept_loop(listener, stop.clone(), move |conn| {
            let _ = serve(conn, &s);
        });
        FeedServer { addr, state, stop }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn set(&self, path: &str, behavior: Behavior) {
        self.state
            .lock()
            .unwrap()
            .routes
            .insert(path.to_owned(), behavior);
    }

    /// Serves `body` with an ETag derived from its content.
    pub fn serve(&self, path: &str, body: &[u8]) {
        let etag = format!("\"{:x}-{}\"", fnv(body), body.len());
        self.set(
            path,
            Behavior::Serve {
                body: body.to_vec(),
                etag,
            },
        );
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }
}

impl Drop for FeedServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop.
        let _ = TcpStream::connect(self.addr);
    }
}

/// Accepts connections until `stop`, each served on its own thread.
fn accept_loop(
    listener: TcpListener,
    stop: Arc<AtomicBool>,
    handle: impl Fn(TcpStream) + Send + Sync + 'static,
) {
    let handle = Arc::new(handle);
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            let Ok(conn) = conn else { continue };
            let handle = handle.clone();
            std::thread::spawn(move || handle(conn));
        }
    });
}

/// Reads a request line and headers: the path and the headers (lower-case
/// names), or `None` when the client closed the connection.
fn read_head(
    reader: &mut BufReader<TcpStream>,
) -> std::io::Result<Option<(String, HashMap<String, String>)>> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        reader.read_line(&mut h)?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
    }
    Ok(Some((path, headers)))
}

fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100000001b3)
    })
}

const LAST_MODIFIED: &str = "Tue, 12 Mar 2024 14:30:00 GMT";

fn serve(conn: TcpStream, state: &Mutex<State>) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut conn = conn;
    loop {
        let Some((path, headers)) = read_head(&mut reader)? else {
            return Ok(());
        };
        let behavior = {
            let mut st = state.lock().unwrap();
            match st.routes.get_mut(&path) {
                Some(Behavior::Cycle { bodies, next }) => {
                    let body = bodies[*next % bodies.len()].clone();
                    let etag = format!("\"cycle-{next}\"");
                    *next += 1;
                    Some(Behavior::Serve { body, etag })
                }
                other => other.cloned(),
            }
        };
        let record = |status: u16| {
            state.lock().unwrap().seen.push(Seen {
                path: path.clone(),
                headers: headers.clone(),
                status,
            })
        };
        match behavior {
            None => {
                record(404);
                write_response(&mut conn, 404, &[], b"not found")?;
            }
            Some(Behavior::Serve { body, etag }) => {
                if headers.get("if-none-match") == Some(&etag) {
                    record(304);
                    write!(conn, "HTTP/1.1 304 Not Modified\r\nETag: {etag}\r\n\r\n")?;
                    continue;
                }
                record(200);
                let gzip = headers
                    .get("accept-encoding")
                    .is_some_and(|v| v.contains("gzip"));
                let etag_h = format!("ETag: {etag}");
                let lm = format!("Last-Modified: {LAST_MODIFIED}");
                if gzip {
                    let mut enc =
                        flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                    enc.write_all(&body)?;
                    let zipped = enc.finish()?;
                    write_response(
                        &mut conn,
                        200,
                        &[&etag_h, &lm, "Content-Encoding: gzip"],
                        &zipped,
                    )?;
                } else {
                    write_response(&mut conn, 200, &[&etag_h, &lm], &body)?;
                }
            }
            Some(Behavior::Status(code)) => {
                record(code);
                write_response(&mut conn, code, &[], b"")?;
            }
            Some(Behavior::Raw { body, content_type }) => {
                record(200);
                let ct = format!("Content-Type: {content_type}");
                write_response(&mut conn, 200, &[&ct], &body)?;
            }
            Some(Behavior::Truncated { body }) => {
                record(200);
                write_head(&mut conn, body.len())?;
                conn.write_all(&body[..body.len() / 2])?;
                conn.flush()?;
                return conn.shutdown(std::net::Shutdown::Both);
            }
            Some(Behavior::Redirect { status, location }) => {
                record(status);
                let loc = format!("Location: {location}");
                write_response(&mut conn, status, &[&loc], b"")?;
            }
            Some(Behavior::Cycle { .. }) => unreachable!("resolved above"),
            Some(Behavior::Slow {
                body,
                bytes_per_step,
                step,
            }) => {
                record(200);
                write_head(&mut conn, body.len())?;
                for chunk in body.chunks(bytes_per_step) {
                    conn.write_all(chunk)?;
                    conn.flush()?;
                    std::thread::sleep(step);
                }
            }
        }
        // Drain a request body if any (feeds are GETs, so none).
        let _ = reader.get_mut().read(&mut []);
    }
}

/// A 200 status line and headers announcing `len` body bytes.
fn write_head(conn: &mut TcpStream, len: usize) -> std::io::Result<()> {
    write!(conn, "HTTP/1.1 200 OK\r\nContent-Length: {len}\r\n\r\n")
}

fn write_response(
    conn: &mut TcpStream,
    status: u16,
    extra: &[&str],
    body: &[u8],
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        301 => "Moved Permanently",
        302 => "Found",
        307 => "Temporary Redirect",
        304 => "Not Modified",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    };
    let mut head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Length: {}\r\n",
        body.len()
    );
    for h in extra {
        head.push_str(h);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    conn.write_all(head.as_bytes())?;
    conn.write_all(body)?;
    conn.flush()
}

/// The real fixture files shipped in `sensor-daemon/data/`.
pub fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/data/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

pub const TORDNSEL: &str = "exit-addresses_check.torproject.org_2024-03-12.txt";
pub const ONIONOO: &str = "onionoo_details_running-relays_fp-or-country_2024-03-12.json";
pub const BULK: &str = "torbulkexitlist_2024-03-12.txt";

/// One POST as a receiver saw it.
#[derive(Clone, Debug)]
pub struct Post {
    pub path: String,
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

/// A real HTTP/1.1 receiver on loopback (a SIEM stand-in): records every
/// POST and answers 200 with `answer`.
pub struct Receiver {
    pub addr: SocketAddr,
    posts: Arc<Mutex<Vec<Post>>>,
    stop: Arc<AtomicBool>,
}

impl Receiver {
    /// Listens on `addr` (port 0 for any).
    pub fn start(addr: SocketAddr, answer: &'static str) -> Receiver {
        let listener = TcpListener::bind(addr).unwrap();
        let addr = listener.local_addr().unwrap();
        let posts = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let p = posts.clone();
        accept_loop(listener, stop.clone(), move |conn| {
            let _ = receive(conn, &p, answer);
        });
        Receiver { addr, posts, stop }
    }

    pub fn posts(&self) -> Vec<Post> {
        self.posts.lock().unwrap().clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
    }
}

fn receive(conn: TcpStream, posts: &Mutex<Vec<Post>>, answer: &str) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut conn = conn;
    loop {
        let Some((path, headers)) = read_head(&mut reader)? else {
            return Ok(());
        };
        let len: usize = headers
            .get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; len];
        reader.read_exact(&mut body)?;
        if headers
            .get("content-encoding")
            .is_some_and(|v| v.contains("gzip"))
        {
            let mut plain = Vec::new();
            flate2::read::GzDecoder::new(&body[..]).read_to_end(&mut plain)?;
            body = plain;
        }
        posts.lock().unwrap().push(Post {
            path,
            headers,
            body,
        });
        write_response(
            &mut conn,
            200,
            &["Content-Type: application/json"],
            answer.as_bytes(),
        )?;
    }
}
