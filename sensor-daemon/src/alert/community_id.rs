//! Community ID flow hashing, version 1 (the Corelight specification), so that
//! an alert can be joined with the same flow in Zeek, Suricata or a firewall
//! log (`network.community_id` in ECS, `connection_info.community_uid` in OCSF).
//!
//! `1:` + base64(SHA-1(seed (2 bytes, big endian) + source address +
//! destination address + protocol (1 byte) + padding (1 byte) + source port
//! (2 bytes, big endian) + destination port (2 bytes, big endian))), with the
//! endpoints ordered so that the smaller (address, port) comes first: both
//! directions of a flow hash to the same value.
//!
//! Ports are hashed as given. For ICMP the specification first maps
//! (type, code) to port-like values; that mapping is not implemented here
//! (the sensor only reports TCP), so callers hashing ICMP must pass the mapped
//! values themselves.

use std::net::{IpAddr, SocketAddr};

use base64::Engine;
use sha1::{Digest, Sha1};

/// IANA protocol number of TCP.
pub const TCP: u8 = 6;
/// IANA protocol number of UDP.
pub const UDP: u8 = 17;
/// IANA protocol number of SCTP.
pub const SCTP: u8 = 132;

/// Address bytes as hashed: IPv4 as 4 bytes, IPv6 as 16. When the two ends
/// are of different families (which a real flow never is), the IPv4 one is
/// widened to its IPv4-mapped IPv6 form so the ordering stays well defined.
fn address_bytes(ip: IpAddr, other: IpAddr) -> Vec<u8> {
    match (ip, other) {
        (IpAddr::V4(a), IpAddr::V4(_)) => a.octets().to_vec(),
        (IpAddr::V4(a), IpAddr::V6(_)) => a.to_ipv6_mapped().octets().to_vec(),
        (IpAddr::V6(a), _) => a.octets().to_vec(),
    }
}

/// Community ID v1 of a flow. `ports` is `None` for protocols without ports
/// (then no port bytes are hashed, as the specification says).
pub fn v1(seed: u16, src: IpAddr, dst: IpAddr, proto: u8, ports: Option<(u16, u16)>) -> String {
    let mut a = address_bytes(src, dst);
    let mut b = address_bytes(dst, src);
    let mut ports = ports;
    let ordered = match ports {
        Some((sp, dp)) => (&a, sp) <= (&b, dp),
        None => a <= b,
    };
    if !ordered {
        std::mem::swap(&mut a, &mut b);
        ports = ports.map(|(sp, dp)| (dp, sp));
    }
    let mut hasher = Sha1::new();
    hasher.update(seed.to_be_bytes());
    hasher.update(&a);
    hasher.update(&b);
    hasher.update([proto, 0]);
    if let Some((sp, dp)) = ports {
        hasher.update(sp.to_be_bytes());
        hasher.update(dp.to_be_bytes());
    }
    let digest = hasher.finalize();
    format!(
        "1:{}",
        base64::engine::general_purpose::STANDARD.encode(digest.as_slice())
    )
}

/// Community ID v1 (seed 0) of a TCP flow from `src` to `dst`.
pub fn v1_tcp(src: SocketAddr, dst: SocketAddr) -> String {
    v1(0, src.ip(), dst.ip(), TCP, Some((src.port(), dst.port())))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (proto, saddr, daddr, sport, dport, seed 0, seed 1): the published
    /// baseline of the specification repository (`baseline/baseline_deflt.json`
    /// and `baseline/baseline_seed1.json`), ICMP rows with their ports already
    /// mapped as listed there.
    #[allow(clippy::type_complexity, reason = "a literal test table")]
    #[rustfmt::skip]
    const BASELINE: &[(u8, &str, &str, Option<(u16, u16)>, &str, &str)] = &[
        (58, "fe80::200:86ff:fe05:80da", "fe80::260:97ff:fe07:69ea", Some((135, 136)), "1:dGHyGvjMfljg6Bppwm3bg0LO8TY=", "1:kHa1FhMYIT6Ym2Vm2AOtoOARDzY="),
        (58, "fe80::260:97ff:fe07:69ea", "fe80::200:86ff:fe05:80da", Some((136, 135)), "1:dGHyGvjMfljg6Bppwm3bg0LO8TY=", "1:kHa1FhMYIT6Ym2Vm2AOtoOARDzY="),
        (58, "fe80::260:97ff:fe07:69ea", "fe80::200:86ff:fe05:80da", Some((135, 136)), "1:zavyT/cezQr1fmImYCwYnMXbgck=", "1:2hSqmsDZ2kdcY9kbiUzOEBic0iM="),
        (58, "fe80::200:86ff:fe05:80da", "fe80::260:97ff:fe07:69ea", Some((136, 135)), "1:zavyT/cezQr1fmImYCwYnMXbgck=", "1:2hSqmsDZ2kdcY9kbiUzOEBic0iM="),
        (58, "3ffe:501:1800:2345::2", "3ffe:507:0:1:200:86ff:fe05:80da", Some((3, 0)), "1:2ObVBgIn28oZvibYZhZMBgh7WdQ=", "1:lVEtCZpYu84Xqaa++3lXFyuu2n4="),
        (58, "3ffe:501:410:0:2c0:dfff:fe47:33e", "3ffe:507:0:1:200:86ff:fe05:80da", Some((1, 4)), "1:hLZd0XGWojozrvxqE0dWB1iM6R0=", "1:W8MHwXpWzpoSTD+cGcaJr4u0ys8="),
        (58, "3ffe:507:0:1:200:86ff:fe05:80da", "3ffe:501:0:1001::2", Some((128, 129)), "1:+TW+HtLHvV1xnGhV1lv7XoJrqQg=", "1:GfZxjAkDk2MkegpBYHV6tadtFXQ="),
        (58, "3ffe:501:0:1001::2", "3ffe:507:0:1:200:86ff:fe05:80da", Some((129, 128)), "1:+TW+HtLHvV1xnGhV1lv7XoJrqQg=", "1:GfZxjAkDk2MkegpBYHV6tadtFXQ="),
        (58, "fe80::200:86ff:fe05:80da", "ff02::2", Some((133, 134)), "1:hO+sN4H+MG5MY/8hIrXPqc4ZQz0=", "1:L7Ka0ZMYu+J3bL4ulW2PrqyXNo8="),
        (58, "fe80::260:97ff:fe07:69ea", "ff02::1", Some((134, 133)), "1:pkvHqCL88/tg1k4cPigmZXUtL00=", "1:K/ee5UCqAMAQXDorP5nSa2CGLjc="),
        (1, "192.168.0.89", "192.168.0.1", Some((8, 0)), "1:X0snYXpgwiv9TZtqg64sgzUn6Dk=", "1:03g6IloqVBdcZlPyX8r0hgoE7kA="),
        (1, "192.168.0.1", "192.168.0.89", Some((0, 8)), "1:X0snYXpgwiv9TZtqg64sgzUn6Dk=", "1:03g6IloqVBdcZlPyX8r0hgoE7kA="),
        (1, "10.0.0.1", "10.0.0.2", Some((11, 0)), "1:YHxtAirCG//0OzkcVAukqKQN9xM=", "1:XjUibYHaafLQ3pxQeiMI8g25q20="),
        (6, "2001:470:e5bf:dead:4957:2174:e82c:4887", "2607:f8b0:400c:c03::1a", Some((63943, 25)), "1:/qFaeAR+gFe1KYjMzVDsMv+wgU4=", "1:eJYTW6AOzFLlSUoESovMjnu7rMw="),
        (6, "2607:f8b0:400c:c03::1a", "2001:470:e5bf:dead:4957:2174:e82c:4887", Some((25, 63943)), "1:/qFaeAR+gFe1KYjMzVDsMv+wgU4=", "1:eJYTW6AOzFLlSUoESovMjnu7rMw="),
        (132, "192.168.170.8", "192.168.170.56", Some((7, 7)), "1:MP2EtRCAUIZvTw6MxJHLV7N7JDs=", "1:5w3ZRjeKBzqT3zsaEECDGjUbYeg="),
        (132, "192.168.170.56", "192.168.170.8", Some((7, 7)), "1:MP2EtRCAUIZvTw6MxJHLV7N7JDs=", "1:5w3ZRjeKBzqT3zsaEECDGjUbYeg="),
        (6, "128.232.110.120", "66.35.250.204", Some((34855, 80)), "1:LQU9qZlK+B5F3KDmev6m5PMibrg=", "1:3V71V58M3Ksw/yuFALMcW0LAHvc="),
        (6, "66.35.250.204", "128.232.110.120", Some((80, 34855)), "1:LQU9qZlK+B5F3KDmev6m5PMibrg=", "1:3V71V58M3Ksw/yuFALMcW0LAHvc="),
        (17, "192.168.1.52", "8.8.8.8", Some((54585, 53)), "1:d/FP5EW3wiY1vCndhwleRRKHowQ=", "1:Q9We8WO3piVF8yEQBNJF4uiSVrI="),
        (17, "8.8.8.8", "192.168.1.52", Some((53, 54585)), "1:d/FP5EW3wiY1vCndhwleRRKHowQ=", "1:Q9We8WO3piVF8yEQBNJF4uiSVrI="),
        (46, "10.1.12.1", "10.1.12.2", None, "1:KHlLkgoJW7ifUTyTSgyVfkFHzKw=", "1:rYir8gphR31noO9iDRQmF/BteEI="),
        (46, "10.1.12.2", "10.1.12.1", None, "1:KHlLkgoJW7ifUTyTSgyVfkFHzKw=", "1:rYir8gphR31noO9iDRQmF/BteEI="),
    ];

    #[test]
    fn matches_the_specification_baseline_with_seed_0_and_1() {
        for (proto, s, d, ports, deflt, seed1) in BASELINE {
            let (s, d) = (s.parse().unwrap(), d.parse().unwrap());
            assert_eq!(
                v1(0, s, d, *proto, *ports),
                *deflt,
                "{proto} {s} {d} {ports:?}"
            );
            assert_eq!(
                v1(1, s, d, *proto, *ports),
                *seed1,
                "seed 1: {proto} {s} {d} {ports:?}"
            );
        }
    }

    #[test]
    fn tcp_shorthand_is_direction_independent() {
        let a: SocketAddr = "128.232.110.120:34855".parse().unwrap();
        let b: SocketAddr = "66.35.250.204:80".parse().unwrap();
        assert_eq!(v1_tcp(a, b), "1:LQU9qZlK+B5F3KDmev6m5PMibrg=");
        assert_eq!(v1_tcp(b, a), v1_tcp(a, b));
    }

    #[test]
    fn same_address_orders_by_port() {
        let a: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:80".parse().unwrap();
        assert_eq!(v1_tcp(a, b), v1_tcp(b, a));
        assert_ne!(v1_tcp(a, b), v1_tcp(a, "127.0.0.1:81".parse().unwrap()));
    }
}
