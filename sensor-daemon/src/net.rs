//! Addresses and directions: the vocabulary every layer shares.
//!
//! Owns how an address or prefix is written in a feed ([`parse_entry`]),
//! how a peer is matched ([`canonical_ip`]: IPv4-mapped IPv6 is IPv4), which
//! ranges no Tor relay can have ([`is_reserved`]) and the direction of a
//! connection ([`Direction`]). Imports nothing from the crate.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// Which way a connection goes, seen from this host.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Deserialize, serde::Serialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Egress,
    Ingress,
}

impl Direction {
    /// ECS `network.direction` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Egress => "egress",
            Direction::Ingress => "ingress",
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Parses one entry: an address or a CIDR prefix.
pub fn parse_entry(text: &str) -> Result<IpNet, String> {
    let net = if text.contains('/') {
        text.parse::<IpNet>()
            .map_err(|_| "not an IP address or CIDR prefix".to_owned())?
    } else {
        let ip = text
            .parse::<IpAddr>()
            .map_err(|_| "not an IP address or CIDR prefix".to_owned())?;
        IpNet::from(ip)
    };
    Ok(normalize(net))
}

/// Clears host bits and turns an IPv4-mapped IPv6 prefix (`::ffff:a.b.c.d/n`,
/// n >= 96) into the IPv4 prefix it stands for, so that it matches dual-stack
/// peers the same way as plain IPv4 ones.
pub fn normalize(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
            Some(v4) => IpNet::V4(
                Ipv4Net::new(v4, v6.prefix_len() - 96)
                    .expect("prefix - 96 is at most 32")
                    .trunc(),
            ),
            None => IpNet::V6(v6.trunc()),
        },
        other => other.trunc(),
    }
}

/// The address a peer should be matched as: IPv4-mapped IPv6 becomes IPv4.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

const RESERVED_V4: &[(Ipv4Addr, u8)] = &[
    (Ipv4Addr::new(0, 0, 0, 0), 8),       // "this network"
    (Ipv4Addr::new(10, 0, 0, 0), 8),      // private
    (Ipv4Addr::new(100, 64, 0, 0), 10),   // shared address space (CGNAT)
    (Ipv4Addr::new(127, 0, 0, 0), 8),     // loopback
    (Ipv4Addr::new(169, 254, 0, 0), 16),  // link-local
    (Ipv4Addr::new(172, 16, 0, 0), 12),   // private
    (Ipv4Addr::new(192, 0, 0, 0), 24),    // IETF protocol assignments
    (Ipv4Addr::new(192, 0, 2, 0), 24),    // documentation (TEST-NET-1)
    (Ipv4Addr::new(192, 168, 0, 0), 16),  // private
    (Ipv4Addr::new(198, 18, 0, 0), 15),   // benchmarking
    (Ipv4Addr::new(198, 51, 100, 0), 24), // documentation (TEST-NET-2)
    (Ipv4Addr::new(203, 0, 113, 0), 24),  // documentation (TEST-NET-3)
    (Ipv4Addr::new(224, 0, 0, 0), 4),     // multicast
    (Ipv4Addr::new(240, 0, 0, 0), 4),     // reserved, broadcast
];

const RESERVED_V6: &[(Ipv6Addr, u8)] = &[
    (Ipv6Addr::UNSPECIFIED, 128),
    (Ipv6Addr::LOCALHOST, 128),
    (Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 0), 64), // discard-only
    (Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0), 32), // documentation
    (Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0), 7), // unique local
    (Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10), // link-local
    (Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), 8), // multicast
];

/// True if `net` overlaps a reserved range (loopback, private, link-local,
/// documentation, multicast...): inside one, or so wide that it covers one.
/// No public Tor relay can have such an address, so a feed entry like this is
/// a mistake (or a lab setup, hence `--allow-reserved`).
pub fn is_reserved(net: &IpNet) -> bool {
    fn overlaps(a: &IpNet, b: &IpNet) -> bool {
        a.contains(b) || b.contains(a)
    }
    match net {
        IpNet::V4(_) => RESERVED_V4.iter().any(|(addr, len)| {
            overlaps(
                net,
                &IpNet::V4(Ipv4Net::new(*addr, *len).expect("valid table")),
            )
        }),
        IpNet::V6(_) => RESERVED_V6.iter().any(|(addr, len)| {
            overlaps(
                net,
                &IpNet::V6(Ipv6Net::new(*addr, *len).expect("valid table")),
            )
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_bits_are_cleared_and_mapped_prefixes_become_ipv4() {
        assert_eq!(parse_entry("5.6.7.8/24").unwrap().to_string(), "5.6.7.0/24");
        assert_eq!(
            parse_entry("::ffff:1.2.3.4").unwrap().to_string(),
            "1.2.3.4/32"
        );
        assert_eq!(
            parse_entry("::ffff:1.2.3.0/120").unwrap().to_string(),
            "1.2.3.0/24"
        );
        assert_eq!(
            canonical_ip("::ffff:9.9.9.9".parse().unwrap()).to_string(),
            "9.9.9.9"
        );
        assert_eq!(
            canonical_ip("2001:db8::1".parse().unwrap()).to_string(),
            "2001:db8::1"
        );
    }

    #[test]
    fn reserved_ranges() {
        for reserved in [
            "127.0.0.1/32",
            "10.1.0.0/16",
            "192.168.1.1/32",
            "172.20.0.1/32",
            "169.254.1.1/32",
            "192.0.2.7/32",
            "198.51.100.0/24",
            "203.0.113.9/32",
            "100.64.0.1/32",
            "224.0.0.1/32",
            "0.0.0.0/0",
            "8.0.0.0/5", // wide enough to cover 10.0.0.0/8
            "::1/128",
            "fe80::1/128",
            "fd00::1/128",
            "2001:db8::1/128",
            "ff02::1/128",
        ] {
            assert!(is_reserved(&reserved.parse().unwrap()), "{reserved}");
        }
        for public in [
            "1.2.3.4/32",
            "185.220.101.0/24",
            "2a0b:f4c2::1/128",
            "11.0.0.0/8",
        ] {
            assert!(!is_reserved(&public.parse().unwrap()), "{public}");
        }
    }
}
