//! The address ranges the egress guard refuses, and CIDR networks for the allow list.

use std::borrow::Cow;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// An IP network: an address and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub(super) address: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// The network of `address` with `prefix` bits (host bits cleared; the prefix capped at the
    /// address's length).
    pub fn new(address: IpAddr, prefix: u8) -> Cidr {
        let (address, prefix) = match address {
            IpAddr::V4(v4) => {
                let prefix = prefix.min(32);
                let bits = u32::from(v4) & mask_v4(prefix);
                (IpAddr::V4(Ipv4Addr::from(bits)), prefix)
            }
            IpAddr::V6(v6) => {
                let prefix = prefix.min(128);
                let bits = u128::from(v6) & mask_v6(prefix);
                (IpAddr::V6(Ipv6Addr::from(bits)), prefix)
            }
        };
        Cidr { address, prefix }
    }

    /// One address.
    pub fn host(address: IpAddr) -> Cidr {
        Cidr::new(address, if address.is_ipv4() { 32 } else { 128 })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.address, ip) {
            (IpAddr::V4(network), IpAddr::V4(ip)) => {
                u32::from(ip) & mask_v4(self.prefix) == u32::from(network)
            }
            (IpAddr::V6(network), IpAddr::V6(ip)) => {
                u128::from(ip) & mask_v6(self.prefix) == u128::from(network)
            }
            _ => false,
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix)
    }
}

pub(super) fn mask_v4(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

fn mask_v6(prefix: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0)
}

fn in_v4(ip: Ipv4Addr, network: [u8; 4], prefix: u8) -> bool {
    u32::from(ip) & mask_v4(prefix) == u32::from(Ipv4Addr::from(network))
}

fn in_v6(ip: Ipv6Addr, network: [u16; 8], prefix: u8) -> bool {
    let network = Ipv6Addr::new(
        network[0], network[1], network[2], network[3], network[4], network[5], network[6],
        network[7],
    );
    u128::from(ip) & mask_v6(prefix) == u128::from(network)
}

/// IPv4 ranges that are not public, most specific first.
pub(super) const V4_RANGES: [([u8; 4], u8, &str); 16] = [
    ([0, 0, 0, 0], 32, "unspecified"),
    ([0, 0, 0, 0], 8, "\"this network\" (0.0.0.0/8)"),
    ([10, 0, 0, 0], 8, "private network (10.0.0.0/8)"),
    (
        [100, 64, 0, 0],
        10,
        "shared address space / CGNAT (100.64.0.0/10)",
    ),
    ([127, 0, 0, 0], 8, "loopback"),
    (
        [169, 254, 0, 0],
        16,
        "link-local (169.254.0.0/16, where cloud metadata endpoints live)",
    ),
    ([172, 16, 0, 0], 12, "private network (172.16.0.0/12)"),
    (
        [192, 0, 0, 0],
        24,
        "IETF protocol assignments (192.0.0.0/24)",
    ),
    ([192, 0, 2, 0], 24, "documentation (192.0.2.0/24)"),
    ([192, 88, 99, 0], 24, "6to4 relay anycast (192.88.99.0/24)"),
    ([192, 168, 0, 0], 16, "private network (192.168.0.0/16)"),
    ([198, 18, 0, 0], 15, "benchmarking (198.18.0.0/15)"),
    ([198, 51, 100, 0], 24, "documentation (198.51.100.0/24)"),
    ([203, 0, 113, 0], 24, "documentation (203.0.113.0/24)"),
    ([255, 255, 255, 255], 32, "broadcast"),
    ([224, 0, 0, 0], 3, "multicast or reserved (224.0.0.0/3)"),
];

fn non_public_v4(ip: Ipv4Addr) -> Option<&'static str> {
    V4_RANGES
        .iter()
        .find(|(network, prefix, _)| in_v4(ip, *network, *prefix))
        .map(|(_, _, label)| *label)
}

/// Why the runtime does not connect to `ip` for agents, or `None` when it is a public address.
///
/// IPv4: unspecified and `0.0.0.0/8`, private networks (RFC 1918), shared address space (CGNAT,
/// `100.64.0.0/10`), loopback, link-local (`169.254.0.0/16`, cloud metadata), IETF protocol
/// assignments (`192.0.0.0/24`), documentation (`192.0.2.0/24`, `198.51.100.0/24`,
/// `203.0.113.0/24`), the 6to4 relay anycast, benchmarking (`198.18.0.0/15`), multicast,
/// reserved (`240.0.0.0/4`) and broadcast.
///
/// IPv6: everything outside global unicast (`2000::/3`): unspecified, loopback, unique local
/// (`fc00::/7`), link-local, site-local, multicast, the discard prefix, local-use NAT64
/// (`64:ff9b:1::/48`), IPv4-compatible and other `::/8` forms; inside it, IETF protocol
/// assignments (`2001::/23`, with Teredo and benchmarking), documentation (`2001:db8::/32`,
/// `3fff::/20`) and segment routing (`5f00::/16`). IPv4-mapped (`::ffff:a.b.c.d`), NAT64
/// (`64:ff9b::a.b.c.d`) and 6to4 (`2002:aabb:ccdd::/48`) addresses are judged by the IPv4 address
/// they embed.
pub fn non_public(ip: IpAddr) -> Option<Cow<'static, str>> {
    match ip {
        IpAddr::V4(v4) => non_public_v4(v4).map(Cow::Borrowed),
        IpAddr::V6(v6) => non_public_v6(v6),
    }
}

fn embedded(kind: &str, v4: Ipv4Addr) -> Option<Cow<'static, str>> {
    non_public_v4(v4).map(|label| Cow::Owned(format!("{kind} form of {v4}, {label}")))
}

fn non_public_v6(ip: Ipv6Addr) -> Option<Cow<'static, str>> {
    let bits = u128::from(ip);
    let low_v4 = Ipv4Addr::from(u32::try_from(bits & 0xffff_ffff).unwrap_or(0));
    let label = |text: &'static str| Some(Cow::Borrowed(text));
    if ip.is_unspecified() {
        return label("unspecified");
    }
    if ip.is_loopback() {
        return label("loopback");
    }
    if in_v6(ip, [0, 0, 0, 0, 0, 0xffff, 0, 0], 96) {
        return embedded("IPv4-mapped", low_v4);
    }
    if in_v6(ip, [0x64, 0xff9b, 0, 0, 0, 0, 0, 0], 96) {
        return embedded("NAT64", low_v4);
    }
    if in_v6(ip, [0x64, 0xff9b, 1, 0, 0, 0, 0, 0], 48) {
        return label("local-use NAT64 (64:ff9b:1::/48)");
    }
    if in_v6(ip, [0; 8], 96) {
        return label("IPv4-compatible (deprecated, ::/96)");
    }
    if in_v6(ip, [0; 8], 8) {
        return label("reserved (::/8)");
    }
    if in_v6(ip, [0x100, 0, 0, 0, 0, 0, 0, 0], 64) {
        return label("discard-only (100::/64)");
    }
    if in_v6(ip, [0xfc00, 0, 0, 0, 0, 0, 0, 0], 7) {
        return label("unique local (fc00::/7)");
    }
    if in_v6(ip, [0xfe80, 0, 0, 0, 0, 0, 0, 0], 10) {
        return label("link-local (fe80::/10)");
    }
    if in_v6(ip, [0xfec0, 0, 0, 0, 0, 0, 0, 0], 10) {
        return label("site-local (deprecated, fec0::/10)");
    }
    if in_v6(ip, [0xff00, 0, 0, 0, 0, 0, 0, 0], 8) {
        return label("multicast");
    }
    if in_v6(ip, [0x5f00, 0, 0, 0, 0, 0, 0, 0], 16) {
        return label("segment routing (5f00::/16)");
    }
    if !in_v6(ip, [0x2000, 0, 0, 0, 0, 0, 0, 0], 3) {
        return label("not global unicast (outside 2000::/3)");
    }
    if in_v6(ip, [0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32) {
        return label("documentation (2001:db8::/32)");
    }
    if in_v6(ip, [0x2001, 0, 0, 0, 0, 0, 0, 0], 23) {
        return label("IETF protocol assignments (2001::/23: Teredo, benchmarking, ORCHID)");
    }
    if in_v6(ip, [0x2002, 0, 0, 0, 0, 0, 0, 0], 16) {
        let v4 = Ipv4Addr::from(u32::try_from((bits >> 80) & 0xffff_ffff).unwrap_or(0));
        return embedded("6to4", v4);
    }
    if in_v6(ip, [0x3fff, 0, 0, 0, 0, 0, 0, 0], 20) {
        return label("documentation (3fff::/20)");
    }
    None
}
