//! Real-kernel tests of gateway mode (issue 17): a router built from
//! network namespaces (inside host -- router -- outside host, veth pairs,
//! IPv4 and IPv6, forwarding on, a case with masquerade), the sensor run in
//! the router's namespace with its TC programs on the router's interfaces,
//! and real TCP connections across it both ways, to and from listed
//! (documentation-range) addresses and unlisted ones. Checked: the hits
//! (addresses, direction, interface and side, no process), the flow
//! summaries (bytes each way within the headers' overhead of what was
//! sent, packets, duration, how the flow ended), nothing for unlisted
//! peers, what each attach position sees behind a masquerade, both attach
//! modes (TCX, netlink), and that no program is left on the interfaces
//! after the sensor exits. Root only; under CI=true they never skip. They
//! need `ip`, `tc`, `bpftool` and (the masquerade case) `iptables`, and run
//! in the kernel matrix too (`cargo xtask vm-test`), where the masquerade
//! case is left out (no nf_tables in the VM image).

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::Value;

/// Listed: one outside address per family (the "Tor relay / exit").
const LISTED_V4: &str = "198.51.100.9";
const LISTED_V6: &str = "2001:db8:2::9";
/// Unlisted: the outside host's own addresses.
const UNLISTED_V4: &str = "198.51.100.2";
const UNLISTED_V6: &str = "2001:db8:2::2";
const INSIDE_V4: &str = "192.0.2.2";
const INSIDE_V6: &str = "2001:db8:1::2";
/// The router's outside address (what a masquerade rewrites to).
const ROUTER_OUT_V4: &str = "198.51.100.1";
const FEED: &str = "198.51.100.9\n2001:db8:2::9\n";

/// Bytes the client sends and the server answers.
const UPLOAD: usize = 300_000;
const REPLY: usize = 20_000;

fn run(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", args.join(" ")));
    assert!(
        out.status.success(),
        "{}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// inside ns -- router ns -- outside ns, torn down on drop.
struct Router {
    inside: String,
    router: String,
    outside: String,
    /// The router's inside and outside interfaces.
    in_if: String,
    out_if: String,
}

impl Router {
    fn new(tag: &str, masquerade: bool) -> Router {
        let id = std::process::id() % 100_000;
        let r = Router {
            inside: format!("tsg{id}{tag}i"),
            router: format!("tsg{id}{tag}r"),
            outside: format!("tsg{id}{tag}o"),
            in_if: format!("tgi{id}{tag}"),
            out_if: format!("tgo{id}{tag}"),
        };
        for ns in [&r.inside, &r.router, &r.outside] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
            run(&["ip", "netns", "add", ns]);
            run(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        let (ia, oa) = (format!("{}h", r.in_if), format!("{}h", r.out_if));
        // inside host's end -- router's inside interface
        run(&[
            "ip", "link", "add", &ia, "netns", &r.inside, "type", "veth", "peer", "name", &r.in_if,
            "netns", &r.router,
        ]);
        run(&[
            "ip", "link", "add", &oa, "netns", &r.outside, "type", "veth", "peer", "name",
            &r.out_if, "netns", &r.router,
        ]);
        let addr = |ns: &str, dev: &str, a: &str| {
            let v6 = a.contains(':');
            let mut args = vec!["ip", "-n", ns];
            if v6 {
                args.push("-6");
            }
            args.extend(["addr", "add", a, "dev", dev]);
            if v6 {
                args.push("nodad");
            }
            run(&args);
        };
        addr(&r.inside, &ia, "192.0.2.2/24");
        addr(&r.inside, &ia, "2001:db8:1::2/64");
        addr(&r.router, &r.in_if, "192.0.2.1/24");
        addr(&r.router, &r.in_if, "2001:db8:1::1/64");
        addr(&r.router, &r.out_if, "198.51.100.1/24");
        addr(&r.router, &r.out_if, "2001:db8:2::1/64");
        addr(&r.outside, &oa, "198.51.100.2/24");
        addr(&r.outside, &oa, "2001:db8:2::2/64");
        addr(&r.outside, &oa, "198.51.100.9/24");
        addr(&r.outside, &oa, "2001:db8:2::9/64");
        for (ns, dev) in [
            (&r.inside, &ia),
            (&r.router, &r.in_if),
            (&r.router, &r.out_if),
            (&r.outside, &oa),
        ] {
            run(&["ip", "-n", ns, "link", "set", dev, "up"]);
        }
        run(&[
            "ip",
            "-n",
            &r.inside,
            "route",
            "add",
            "default",
            "via",
            "192.0.2.1",
        ]);
        run(&[
            "ip",
            "-n",
            &r.inside,
            "-6",
            "route",
            "add",
            "default",
            "via",
            "2001:db8:1::1",
        ]);
        run(&[
            "ip",
            "-n",
            &r.outside,
            "route",
            "add",
            "192.0.2.0/24",
            "via",
            "198.51.100.1",
        ]);
        run(&[
            "ip",
            "-n",
            &r.outside,
            "-6",
            "route",
            "add",
            "2001:db8:1::/64",
            "via",
            "2001:db8:2::1",
        ]);
        // Forwarding on in the router's namespace only (/proc/sys/net is
        // the opening thread's namespace's).
        in_ns(&r.router, || {
            for knob in ["ipv4/ip_forward", "ipv6/conf/all/forwarding"] {
                std::fs::write(format!("/proc/sys/net/{knob}"), "1").unwrap();
            }
        });
        if masquerade {
            run(&[
                "ip",
                "netns",
                "exec",
                &r.router,
                "iptables",
                "-t",
                "nat",
                "-A",
                "POSTROUTING",
                "-o",
                &r.out_if,
                "-j",
                "MASQUERADE",
            ]);
        }
        r
    }

    fn wrapper(&self) -> [&str; 4] {
        ["ip", "netns", "exec", &self.router]
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        // The veths go with their namespaces.
        for ns in [&self.inside, &self.router, &self.outside] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// Runs `f` on a thread inside namespace `ns`.
fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = Path::new("/var/run/netns").join(ns);
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap();
        // SAFETY: a valid namespace fd; only this thread moves.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {}", path.display());
        f()
    })
    .join()
    .expect("thread in namespace")
}

/// A server in `ns` on `at` that reads to the end, answers `REPLY` bytes
/// and closes; returns what it read.
fn serve_once(ns: &str, at: SocketAddr) -> std::thread::JoinHandle<usize> {
    let listener = in_ns(ns, move || {
        TcpListener::bind(at).expect("bind in namespace")
    });
    std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut got = 0;
        let mut buf = [0u8; 65536];
        loop {
            let n = s.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            got += n;
        }
        s.write_all(&vec![7u8; REPLY]).unwrap();
        got
    })
}

/// From `ns`, a connection from `from` (port chosen by the kernel) to
/// `to`: sends `UPLOAD` bytes, reads the answer to the end. Returns the
/// local port and the bytes read.
fn client(ns: &str, from: IpAddr, to: SocketAddr) -> (u16, usize) {
    in_ns(ns, move || {
        let s = connect_from(SocketAddr::new(from, 0), to);
        let port = s.local_addr().unwrap().port();
        let mut s = s;
        s.write_all(&vec![1u8; UPLOAD]).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let mut answer = Vec::new();
        s.read_to_end(&mut answer).unwrap();
        (port, answer.len())
    })
}

/// One exchange: a server on `server`, a client from `from` in `client_ns`.
fn exchange(r: &Router, client_ns: &str, from: &str, server: SocketAddr) -> u16 {
    let server_ns = if client_ns == r.inside {
        &r.outside
    } else {
        &r.inside
    };
    let srv = serve_once(server_ns, server);
    let (port, answered) = client(client_ns, from.parse().unwrap(), server);
    assert_eq!(srv.join().unwrap(), UPLOAD, "the server read the upload");
    assert_eq!(answered, REPLY, "the client read the answer");
    port
}

fn gateway_alerts(alerts: &[Value]) -> Vec<&Value> {
    alerts
        .iter()
        .filter(|a| get(a, "torsensor.signal") == "gateway")
        .collect()
}

fn is_flow(a: &Value, phase: &str, src: &str, dst: &str, dport: u16) -> bool {
    get(a, "torsensor.signal") == "gateway"
        && get(a, "torsensor.gateway.phase") == phase
        && get(a, "source.ip") == src
        && get(a, "destination.ip") == dst
        && get(a, "destination.port") == dport
}

/// Whether the running kernel is at least `major.minor`.
fn kernel_at_least(major: u32, minor: u32) -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut parts = release
        .trim()
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let (ma, mi) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (ma, mi) >= (major, minor)
}

/// What every gateway alert has, and what it must not have.
fn assert_gateway_shape(a: &Value, direction: &str, rule: &str) {
    assert_eq!(get(a, "event.kind"), "alert", "{a:#}");
    assert_eq!(get(a, "rule.id"), rule, "{a:#}");
    assert_eq!(get(a, "network.direction"), direction);
    assert_eq!(get(a, "network.transport"), "tcp");
    assert_eq!(get(a, "observer.type"), "router");
    assert!(a.get("process").is_none(), "no process on a gateway: {a:#}");
    assert!(a.get("user").is_none());
    assert!(get(a, "torsensor.attribution").is_null());
    assert_eq!(get(a, "threat.technique.subtechnique.id.0"), "T1090.003");
    assert!(get(a, "network.community_id").is_string());
}

/// A summary's counts: the sender's bytes are what it sent plus at most
/// `MAX_HEADER` bytes of IP and TCP headers per packet (a pure ACK is all
/// headers); the receiver's are at least one header per packet.
fn assert_counts(a: &Value, src_sent: usize, dst_sent: usize) {
    const MAX_HEADER: u64 = 100;
    let n = |path: &str| {
        get(a, path)
            .as_u64()
            .unwrap_or_else(|| panic!("{path}: {a:#}"))
    };
    for (side, sent) in [("source", src_sent), ("destination", dst_sent)] {
        let (bytes, packets) = (n(&format!("{side}.bytes")), n(&format!("{side}.packets")));
        assert!(packets >= 2, "{side}: {packets} packets: {a:#}");
        assert!(
            bytes >= sent as u64 + 20 * packets,
            "{side}: {bytes} bytes for {sent} sent in {packets} packets: {a:#}"
        );
        assert!(
            bytes <= sent as u64 + MAX_HEADER * packets,
            "{side}: {bytes} bytes for {sent} sent in {packets} packets: {a:#}"
        );
    }
    assert_eq!(
        n("network.bytes"),
        n("source.bytes") + n("destination.bytes")
    );
    assert!(n("event.duration") > 0);
    assert!(get(a, "event.start").is_string() && get(a, "event.end").is_string());
    assert_eq!(get(a, "torsensor.gateway.end"), "fin", "{a:#}");
    assert_eq!(get(a, "event.action"), "tor-gateway-flow-end");
}

/// No gateway program is attached anywhere once the sensor is gone: no
/// TC filter on the router's interfaces, no program of that name loaded
/// (a TCX link holds its program; with it gone the program is freed).
fn assert_programs_gone(r: &Router) {
    for dev in [&r.in_if, &r.out_if] {
        for hook in ["ingress", "egress"] {
            let filters = run(&[
                "ip", "netns", "exec", &r.router, "tc", "filter", "show", "dev", dev, hook,
            ]);
            assert!(
                !filters.contains("gateway"),
                "a filter left on {dev} {hook}: {filters}"
            );
        }
    }
    // The kernel frees a program a moment after its last link closes.
    for _ in 0..50 {
        let progs = run(&["bpftool", "prog", "show"]);
        if !progs.contains("gateway_ingress") && !progs.contains("gateway_egress") {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "gateway programs still loaded after exit:\n{}",
        run(&["bpftool", "prog", "show"])
    );
}

/// Outbound from an inside host to a listed address, IPv4 and IPv6; inbound
/// from a listed address to an inside server; the same to unlisted
/// addresses alert nothing. TCX where the kernel has it (auto).
#[test]
fn forwarded_flows_to_and_from_listed_addresses() {
    if !kernel_tests_allowed("forwarded_flows_to_and_from_listed_addresses") {
        return;
    }
    let _g = serial();
    let r = Router::new("a", false);
    let wrapper = r.wrapper();
    let sensor = Sensor::start_in(
        &wrapper,
        "gateway-a",
        FEED,
        &["--gateway-interface", &r.in_if],
    );
    let log = sensor.stderr();
    let attached = if kernel_at_least(6, 6) {
        "as TCX links (attach = auto)"
    } else {
        "as netlink TC filters (clsact) (attach = auto)"
    };
    assert!(
        log.contains(&format!(
            "gateway programs on {} (inside) {attached}",
            r.in_if
        )),
        "{log}"
    );

    // Outbound, IPv4 and IPv6, to the listed address's "ORPort".
    let mut outbound = Vec::new();
    for (from, to) in [(INSIDE_V4, LISTED_V4), (INSIDE_V6, LISTED_V6)] {
        let server = SocketAddr::new(to.parse().unwrap(), 9001);
        let port = exchange(&r, &r.inside, from, server);
        outbound.push((from, to, port));
    }
    // Inbound: the listed address opens a flow to an inside server.
    let server = SocketAddr::new(INSIDE_V4.parse().unwrap(), 8080);
    exchange(&r, &r.outside, LISTED_V4, server);
    // Unlisted, both families, both ways.
    for (from, to) in [(INSIDE_V4, UNLISTED_V4), (INSIDE_V6, UNLISTED_V6)] {
        exchange(
            &r,
            &r.inside,
            from,
            SocketAddr::new(to.parse().unwrap(), 9001),
        );
    }
    exchange(
        &r,
        &r.outside,
        UNLISTED_V4,
        SocketAddr::new(INSIDE_V4.parse().unwrap(), 8081),
    );

    for &(from, to, port) in &outbound {
        let hit = sensor.expect_alert(&format!("the hit {from} -> {to}"), |a| {
            is_flow(a, "hit", from, to, 9001)
        });
        assert_gateway_shape(&hit, "outbound", "TORSENSOR-009");
        assert_eq!(get(&hit, "source.port"), port);
        assert_eq!(get(&hit, "event.action"), "tor-gateway-outbound");
        assert_eq!(
            get(&hit, "observer.ingress.interface.name"),
            r.in_if.as_str()
        );
        assert_eq!(get(&hit, "observer.ingress.zone"), "inside");
        assert_eq!(get(&hit, "torsensor.gateway.hook"), "ingress");
        assert!(get(&hit, "source.bytes").is_null(), "a hit has no counts");
        assert_eq!(get(&hit, "threat.enrichments.0.indicator.ip"), to);
        assert_eq!(
            get(&hit, "threat.enrichments.0.matched.field"),
            "destination.ip"
        );
        let end = sensor.expect_alert(&format!("the summary {from} -> {to}"), |a| {
            is_flow(a, "end", from, to, 9001)
        });
        assert_gateway_shape(&end, "outbound", "TORSENSOR-009");
        assert_counts(&end, UPLOAD, REPLY);
        assert_eq!(get(&end, "source.port"), port);
        assert_eq!(
            get(&end, "network.community_id"),
            get(&hit, "network.community_id")
        );
    }

    let hit = sensor.expect_alert("the inbound hit", |a| {
        is_flow(a, "hit", LISTED_V4, INSIDE_V4, 8080)
    });
    assert_gateway_shape(&hit, "inbound", "TORSENSOR-010");
    assert_eq!(get(&hit, "event.action"), "tor-gateway-inbound");
    // The SYN leaves the router through the inside interface.
    assert_eq!(
        get(&hit, "observer.egress.interface.name"),
        r.in_if.as_str()
    );
    assert_eq!(get(&hit, "observer.egress.zone"), "inside");
    assert_eq!(get(&hit, "threat.enrichments.0.matched.field"), "source.ip");
    let end = sensor.expect_alert("the inbound summary", |a| {
        is_flow(a, "end", LISTED_V4, INSIDE_V4, 8080)
    });
    assert_gateway_shape(&end, "inbound", "TORSENSOR-010");
    // The source (the outside host) sent the upload.
    assert_counts(&end, UPLOAD, REPLY);

    // The metrics (the endpoint listens in the router's namespace): the
    // attach mode `auto` chose for this kernel, the hits, nothing lost.
    let addr = common::metrics::endpoint(&sensor);
    let text = in_ns(&r.router, move || {
        common::metrics::wait_sample(addr, "torsensor_gateway_packets_total{kind=\"hit\"}", 3.0)
    });
    let mode = if kernel_at_least(6, 6) {
        "tcx"
    } else {
        "netlink"
    };
    let info = format!("torsensor_gateway_info{{attach=\"{mode}\"}}");
    assert_eq!(common::metrics::sample(&text, &info), Some(1.0), "{text}");
    let lost = "torsensor_gateway_lost_total{reason=\"flows_full\"}";
    assert_eq!(common::metrics::sample(&text, lost), Some(0.0), "{text}");

    let (status, _, stderr, alerts) = sensor.stop_collect();
    assert!(status.success(), "{stderr}");
    let gw = gateway_alerts(&alerts);
    for a in &gw {
        for ip in [UNLISTED_V4, UNLISTED_V6] {
            assert!(
                get(a, "source.ip") != ip && get(a, "destination.ip") != ip,
                "an unlisted flow alerted: {a:#}"
            );
        }
    }
    // Three listed flows: a hit and a summary each, nothing twice.
    assert_eq!(gw.len(), 6, "{gw:#?}");
    assert_programs_gone(&r);
}

/// Behind a masquerade, with programs on both interfaces (netlink TC
/// filters, as on a kernel before 6.6): the inside interface sees the
/// inside host's real address, the outside interface's egress the
/// router's (post-NAT) one. The filters are there while the sensor runs
/// and gone after it exits.
#[test]
fn masquerade_seen_from_both_interfaces_with_netlink_filters() {
    if !kernel_tests_allowed("masquerade_seen_from_both_interfaces_with_netlink_filters") {
        return;
    }
    let _g = serial();
    let r = Router::new("m", true);
    let config = temp_path("gateway-m.toml");
    std::fs::write(
        &config,
        format!(
            "[gateway]\nenabled = true\ninterfaces = [\"{}\"]\noutside_interfaces = [\"{}\"]\nattach = \"netlink\"\nflow_idle_timeout = \"30s\"\nmax_flows = 4096\n",
            r.in_if, r.out_if
        ),
    )
    .unwrap();
    let wrapper = r.wrapper();
    let sensor = Sensor::start_in(
        &wrapper,
        "gateway-m",
        FEED,
        &["--config", config.to_str().unwrap()],
    );
    assert!(
        sensor.stderr().contains("as netlink TC filters (clsact)"),
        "{}",
        sensor.stderr()
    );
    for (dev, hook) in [(&r.in_if, "ingress"), (&r.out_if, "egress")] {
        let filters = run(&[
            "ip", "netns", "exec", &r.router, "tc", "filter", "show", "dev", dev, hook,
        ]);
        assert!(
            filters.contains(&format!("gateway_{hook}")),
            "no filter on {dev} {hook}: {filters}"
        );
    }

    let server = SocketAddr::new(LISTED_V4.parse().unwrap(), 443);
    let port = exchange(&r, &r.inside, INSIDE_V4, server);
    // Unlisted, through the same masquerade.
    exchange(
        &r,
        &r.inside,
        INSIDE_V4,
        SocketAddr::new(UNLISTED_V4.parse().unwrap(), 443),
    );

    let inside = sensor.expect_alert("the hit on the inside interface", |a| {
        is_flow(a, "hit", INSIDE_V4, LISTED_V4, 443)
    });
    assert_gateway_shape(&inside, "outbound", "TORSENSOR-009");
    assert_eq!(get(&inside, "source.port"), port);
    assert_eq!(
        get(&inside, "observer.ingress.interface.name"),
        r.in_if.as_str()
    );
    let outside = sensor.expect_alert("the hit on the outside interface", |a| {
        is_flow(a, "hit", ROUTER_OUT_V4, LISTED_V4, 443)
    });
    assert_gateway_shape(&outside, "outbound", "TORSENSOR-009");
    assert_eq!(
        get(&outside, "observer.egress.interface.name"),
        r.out_if.as_str()
    );
    assert_eq!(get(&outside, "observer.egress.zone"), "outside");
    for src in [INSIDE_V4, ROUTER_OUT_V4] {
        let end = sensor.expect_alert(&format!("the summary seen as from {src}"), |a| {
            is_flow(a, "end", src, LISTED_V4, 443)
        });
        assert_counts(&end, UPLOAD, REPLY);
    }

    let (status, _, stderr, alerts) = sensor.stop_collect();
    assert!(status.success(), "{stderr}");
    let gw = gateway_alerts(&alerts);
    assert!(
        gw.iter().all(|a| get(a, "destination.ip") == LISTED_V4),
        "{gw:#?}"
    );
    // One flow seen on two interfaces: two hits, two summaries.
    assert_eq!(gw.len(), 4, "{gw:#?}");
    assert_programs_gone(&r);
}

/// An interface that does not exist stops the start with one line that
/// names it, before anything is loaded.
#[test]
fn an_unknown_interface_is_named() {
    if !kernel_tests_allowed("an_unknown_interface_is_named") {
        return;
    }
    let out = Command::new(BIN)
        .args(["run", "--gateway-interface", "tsnosuch0"])
        .env("TORSENSOR_STATE_DIR", temp_path("state-unknown-if"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stderr
        .lines()
        .find(|l| l.contains("tsnosuch0"))
        .unwrap_or_else(|| panic!("{stderr}"));
    assert!(
        line.contains("[gateway] no network interface named \"tsnosuch0\""),
        "{stderr}"
    );
}
