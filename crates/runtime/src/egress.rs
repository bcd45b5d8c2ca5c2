//! The egress guard: which destinations the runtime connects to for agents.
//!
//! The runtime makes HTTP requests on an agent's behalf (`POST /v1/sessions/{id}/fetch` and the
//! forward proxy), from inside the operator's network. Without a guard, an agent (or a prompt
//! injected into one) could make it fetch the runtime's own operator API, a database console on
//! a private network or a cloud metadata endpoint. So, by default, the runtime connects only to
//! public addresses. Refused (see [`non_public`] for the full list):
//!
//! - loopback (`127.0.0.0/8`, `::1`), unspecified (`0.0.0.0/8`, `::`), broadcast;
//! - private networks (RFC 1918: `10/8`, `172.16/12`, `192.168/16`; unique local `fc00::/7`),
//!   shared address space (CGNAT, `100.64/10`);
//! - link-local (`169.254/16`, which holds cloud metadata at `169.254.169.254`; `fe80::/10`),
//!   site-local `fec0::/10`;
//! - multicast, documentation, benchmarking and reserved ranges, IETF protocol assignments;
//! - IPv6 forms that embed one of those IPv4 addresses: IPv4-mapped (`::ffff:127.0.0.1`),
//!   IPv4-compatible, NAT64 (`64:ff9b::/96`), 6to4 (`2002::/16`); Teredo and anything outside
//!   global unicast (`2000::/3`).
//!
//! The check is made on the addresses actually connected to: host names are resolved by the
//! runtime's own resolver, which drops every refused address (a name that resolves to a refused
//! address first and a public one later, or the other way round, cannot slip through); host
//! names given as IP literals, which bypass resolution, are checked before anything is sent.
//! The runtime never follows redirects (a 3xx goes back to the agent, whose next request is
//! checked again) and never uses an ambient `HTTP_PROXY`/`HTTPS_PROXY`.
//!
//! A refused destination is answered with `403` and the code `egress_refused` (in the API and
//! through the proxy), with the address and the setting that would allow it. Nothing is sent
//! to it, reserved, signed or paid.
//!
//! **Allowing destinations** ([`EgressPolicy`]; `bursar runtime --egress-allow ENTRY`,
//! repeatable): an entry is
//! - a network in CIDR notation (`10.0.0.0/8`, `fd00::/8`) or one address (`10.1.2.3`, `::1`):
//!   allowed on every port, whatever name leads to it;
//! - an address with a port (`10.1.2.3:8443`, `[::1]:8080`): allowed on that port, for URLs that
//!   name the address itself;
//! - a host name, optionally with a port (`api.internal`, `api.internal:8443`,
//!   `*.corp.example`): URLs naming that host (on that port) are allowed whatever it resolves to.
//!   To reach a private service by name, list its name (not its address with a port).
//!
//! `--egress-allow-any` ([`EgressPolicy::allow_any`]) turns the guard off (logged as a warning
//! at startup). `bursar dev` allows loopback, where it runs its demo sellers.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::error::RuntimeError;

/// How long a host name's resolved addresses are reused (by the check before a request and by
/// the connection that follows).
pub const RESOLVE_CACHE_TTL: Duration = Duration::from_secs(5);
/// Most host names kept resolved.
const RESOLVE_CACHE_ENTRIES_MAX: usize = 1_024;

/// Which destinations the runtime connects to for agents. The default refuses every non-public
/// address; see the module docs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EgressPolicy {
    /// Destinations allowed although not public.
    pub allow: Vec<EgressAllow>,
    /// No check at all: any address, including loopback, private networks and metadata
    /// endpoints.
    pub allow_any: bool,
}

impl EgressPolicy {
    /// The default: public addresses only.
    pub fn public_only() -> Self {
        EgressPolicy::default()
    }

    /// No guard at all.
    pub fn allow_any() -> Self {
        EgressPolicy {
            allow: Vec::new(),
            allow_any: true,
        }
    }

    /// Public addresses and loopback (`127.0.0.0/8`, `::1`), where `bursar dev` and tests run
    /// their sellers.
    pub fn loopback() -> Self {
        EgressPolicy::public_only().allowing(EgressAllow::loopback())
    }

    /// This policy with `entries` allowed as well.
    pub fn allowing(mut self, entries: impl IntoIterator<Item = EgressAllow>) -> Self {
        self.allow.extend(entries);
        self
    }

    /// A one-line description for logs and banners.
    pub fn describe(&self) -> String {
        if self.allow_any {
            return "any destination (guard off)".into();
        }
        if self.allow.is_empty() {
            return "public addresses only".into();
        }
        let entries: Vec<String> = self.allow.iter().map(ToString::to_string).collect();
        format!("public addresses and {}", entries.join(", "))
    }
}

/// A destination allowed although it is not public; parsed from the forms in the module docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EgressAllow {
    /// Addresses in a network; with a port, only that port and only for URLs naming the address.
    Network { network: Cidr, port: Option<u16> },
    /// A host name as URLs name it (lowercase, without a trailing dot); `*.example` matches
    /// every name under `example`.
    Host { name: String, port: Option<u16> },
}

impl EgressAllow {
    /// Loopback: `127.0.0.0/8` and `::1`.
    pub fn loopback() -> [EgressAllow; 2] {
        [
            EgressAllow::Network {
                network: Cidr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 0)), 8),
                port: None,
            },
            EgressAllow::Network {
                network: Cidr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 128),
                port: None,
            },
        ]
    }

    fn matches_host(&self, host: &str, port: Option<u16>) -> bool {
        let EgressAllow::Host {
            name,
            port: allowed,
        } = self
        else {
            return false;
        };
        let name_matches = match name.strip_prefix("*.") {
            Some(suffix) => host
                .strip_suffix(suffix)
                .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
            None => host == name,
        };
        name_matches && (allowed.is_none() || port.is_none() || *allowed == port)
    }

    /// Whether the entry allows `ip` on any port (entries with a port do not).
    fn allows_any_port(&self, ip: IpAddr) -> bool {
        matches!(self, EgressAllow::Network { network, port: None } if network.contains(ip))
    }

    fn allows(&self, ip: IpAddr, port: u16) -> bool {
        matches!(self, EgressAllow::Network { network, port: allowed }
            if network.contains(ip) && allowed.is_none_or(|allowed| allowed == port))
    }
}

impl fmt::Display for EgressAllow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EgressAllow::Network {
                network,
                port: None,
            } => write!(f, "{network}"),
            EgressAllow::Network {
                network,
                port: Some(port),
            } => write!(f, "{}", SocketAddr::new(network.address, *port)),
            EgressAllow::Host { name, port: None } => write!(f, "{name}"),
            EgressAllow::Host {
                name,
                port: Some(port),
            } => write!(f, "{name}:{port}"),
        }
    }
}

impl FromStr for EgressAllow {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let invalid = |why: &str| {
            format!(
                "{text:?} is not an egress entry ({why}); use a network (10.0.0.0/8, fd00::/8), \
                 an address (10.1.2.3, ::1), an address and port (10.1.2.3:8443, [::1]:8443) or \
                 a host name with an optional port (api.internal, api.internal:8443, \
                 *.corp.example)"
            )
        };
        if text.is_empty() {
            return Err(invalid("empty"));
        }
        if let Some((address, prefix)) = text.split_once('/') {
            let address = address
                .strip_prefix('[')
                .and_then(|rest| rest.strip_suffix(']'))
                .unwrap_or(address);
            let address: IpAddr = address
                .parse()
                .map_err(|_| invalid("the part before / is not an IP address"))?;
            let prefix: u8 = prefix
                .parse()
                .map_err(|_| invalid("the prefix length is not a number"))?;
            let max = if address.is_ipv4() { 32 } else { 128 };
            if prefix > max {
                return Err(invalid(&format!("the prefix length is over {max}")));
            }
            return Ok(EgressAllow::Network {
                network: Cidr::new(address, prefix),
                port: None,
            });
        }
        if let Ok(address) = text.parse::<IpAddr>() {
            return Ok(EgressAllow::Network {
                network: Cidr::host(address),
                port: None,
            });
        }
        if let Ok(socket) = text.parse::<SocketAddr>() {
            if socket.port() == 0 {
                return Err(invalid("port 0"));
            }
            return Ok(EgressAllow::Network {
                network: Cidr::host(socket.ip()),
                port: Some(socket.port()),
            });
        }
        if text.starts_with('[') {
            let address = text
                .strip_prefix('[')
                .and_then(|rest| rest.strip_suffix(']'))
                .and_then(|inner| inner.parse::<Ipv6Addr>().ok())
                .ok_or_else(|| invalid("not a bracketed IPv6 address"))?;
            return Ok(EgressAllow::Network {
                network: Cidr::host(IpAddr::V6(address)),
                port: None,
            });
        }
        let (name, port) = match text.rsplit_once(':') {
            Some((name, port)) => {
                let port: u16 = port
                    .parse()
                    .ok()
                    .filter(|port| *port != 0)
                    .ok_or_else(|| invalid("the port is not a number from 1 to 65535"))?;
                (name, Some(port))
            }
            None => (text, None),
        };
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        let labels = name.strip_prefix("*.").unwrap_or(&name);
        let valid = !labels.is_empty()
            && labels.len() <= 253
            && labels.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            });
        if !valid {
            return Err(invalid("not a host name"));
        }
        // URLs read a name ending in a number as an IPv4 address (or reject it).
        if labels
            .rsplit('.')
            .next()
            .is_some_and(|last| last.bytes().all(|b| b.is_ascii_digit()))
        {
            return Err(invalid("not an IPv4 address"));
        }
        Ok(EgressAllow::Host { name, port })
    }
}

/// An IP network: an address and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    address: IpAddr,
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

fn mask_v4(prefix: u8) -> u32 {
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
const V4_RANGES: [([u8; 4], u8, &str); 16] = [
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

/// A refused destination: what the agent asked for, the address it leads to and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressRefusal {
    /// The URL's host.
    pub host: String,
    pub port: u16,
    /// The (first) refused address.
    pub address: IpAddr,
    /// Which range it is in.
    pub range: String,
}

impl EgressRefusal {
    /// The narrowest `--egress-allow` entry that would allow the destination.
    pub fn allow_entry(&self) -> String {
        if self.host.parse::<IpAddr>().is_ok() || self.host.starts_with('[') {
            SocketAddr::new(self.address, self.port).to_string()
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    pub fn message(&self) -> String {
        let what = if self.host.parse::<IpAddr>().is_ok() || self.host.starts_with('[') {
            format!("{} is {}", self.address, self.range)
        } else {
            format!(
                "{} resolves to {} ({})",
                self.host, self.address, self.range
            )
        };
        format!(
            "egress refused: {what}. The runtime connects only to public addresses for agents \
             (not loopback, private networks, link-local or metadata endpoints); nothing was \
             sent or paid. If this destination is meant to be reachable, start the runtime with \
             --egress-allow {} (or a network in CIDR form)",
            self.allow_entry()
        )
    }
}

impl From<EgressRefusal> for RuntimeError {
    fn from(refusal: EgressRefusal) -> Self {
        RuntimeError::EgressRefused {
            message: refusal.message(),
            host: refusal.host,
            address: refusal.address.to_string(),
        }
    }
}

/// A host name's addresses and when they were looked up.
type Resolved = (Instant, Arc<[IpAddr]>);

/// The guard: the policy, applied by the check before each request ([`EgressGuard::check`])
/// and by the resolver of the runtime's HTTP client ([`EgressGuard::resolver`]).
#[derive(Debug)]
pub(crate) struct EgressGuard {
    policy: EgressPolicy,
    resolved: Mutex<HashMap<String, Resolved>>,
}

impl EgressGuard {
    pub(crate) fn new(policy: EgressPolicy) -> Arc<EgressGuard> {
        Arc::new(EgressGuard {
            policy,
            resolved: Mutex::default(),
        })
    }

    pub(crate) fn policy(&self) -> &EgressPolicy {
        &self.policy
    }

    /// The resolver for the runtime's HTTP client: host names resolve to their permitted
    /// addresses only.
    pub(crate) fn resolver(self: &Arc<Self>) -> Arc<GuardedResolver> {
        Arc::new(GuardedResolver {
            guard: self.clone(),
        })
    }

    fn permitted_any_port(&self, ip: IpAddr) -> bool {
        non_public(ip).is_none() || self.policy.allow.iter().any(|e| e.allows_any_port(ip))
    }

    fn host_listed(&self, host: &str, port: Option<u16>) -> bool {
        self.policy
            .allow
            .iter()
            .any(|entry| entry.matches_host(host, port))
    }

    /// Checks the destination of `url` before anything is sent: `Err` with a refusal when the
    /// runtime may not connect to it (an IP literal that is refused, or a host name none of
    /// whose addresses is permitted).
    pub(crate) async fn check(&self, url: &url::Url) -> Result<(), RuntimeError> {
        if self.policy.allow_any {
            return Ok(());
        }
        let port = url.port_or_known_default().unwrap_or(0);
        let refuse = |host: String, address: IpAddr| -> Result<(), RuntimeError> {
            let range = non_public(address)
                .map(Cow::into_owned)
                .unwrap_or_else(|| "not allowed on this port".into());
            Err(EgressRefusal {
                host,
                port,
                address,
                range,
            }
            .into())
        };
        let literal = match url.host() {
            Some(url::Host::Ipv4(v4)) => IpAddr::V4(v4),
            Some(url::Host::Ipv6(v6)) => IpAddr::V6(v6),
            Some(url::Host::Domain(domain)) => {
                let host = normalize(domain);
                if self.host_listed(&host, Some(port)) {
                    return Ok(());
                }
                let addresses =
                    self.resolve(&host)
                        .await
                        .map_err(|error| RuntimeError::Upstream {
                            message: format!("cannot resolve {host}: {error}"),
                            transfer_id: None,
                        })?;
                if addresses.iter().any(|ip| self.permitted_any_port(*ip)) {
                    return Ok(());
                }
                return match addresses.first() {
                    Some(first) => refuse(host, *first),
                    None => Err(RuntimeError::Upstream {
                        message: format!("{host} has no address"),
                        transfer_id: None,
                    }),
                };
            }
            None => {
                return Err(RuntimeError::Invalid("the URL has no host".into()));
            }
        };
        if non_public(literal).is_none()
            || self
                .policy
                .allow
                .iter()
                .any(|entry| entry.allows(literal, port))
        {
            return Ok(());
        }
        refuse(url.host_str().unwrap_or_default().to_string(), literal)
    }

    /// The addresses of `host`, reused for [`RESOLVE_CACHE_TTL`].
    async fn resolve(&self, host: &str) -> std::io::Result<Arc<[IpAddr]>> {
        let now = Instant::now();
        if let Some((at, addresses)) = self.resolved.lock().expect("resolve cache").get(host)
            && now.duration_since(*at) < RESOLVE_CACHE_TTL
        {
            return Ok(addresses.clone());
        }
        let mut addresses: Vec<IpAddr> = Vec::new();
        for socket in tokio::net::lookup_host((host, 0)).await? {
            if !addresses.contains(&socket.ip()) {
                addresses.push(socket.ip());
            }
        }
        let addresses: Arc<[IpAddr]> = addresses.into();
        let mut cache = self.resolved.lock().expect("resolve cache");
        if cache.len() >= RESOLVE_CACHE_ENTRIES_MAX {
            cache.retain(|_, (at, _)| now.duration_since(*at) < RESOLVE_CACHE_TTL);
            if cache.len() >= RESOLVE_CACHE_ENTRIES_MAX {
                cache.clear();
            }
        }
        cache.insert(host.to_string(), (now, addresses.clone()));
        Ok(addresses)
    }

    /// The addresses a connection to `host` may use: all of them for a listed host name, else
    /// the permitted ones; an error when none is.
    async fn connectable(
        &self,
        host: &str,
    ) -> Result<Vec<IpAddr>, Box<dyn std::error::Error + Send + Sync>> {
        let host = normalize(host);
        let addresses = self.resolve(&host).await?;
        if self.policy.allow_any || self.host_listed(&host, None) {
            return Ok(addresses.to_vec());
        }
        let permitted: Vec<IpAddr> = addresses
            .iter()
            .copied()
            .filter(|ip| self.permitted_any_port(*ip))
            .collect();
        if permitted.is_empty() {
            let address = addresses
                .first()
                .copied()
                .ok_or_else(|| format!("{host} has no address"))?;
            let range = non_public(address).unwrap_or_default();
            tracing::warn!(%host, %address, %range, "egress refused at connect");
            return Err(format!(
                "egress refused: {host} resolves to {address} ({range}); the runtime connects \
                 only to public addresses for agents (see --egress-allow)"
            )
            .into());
        }
        if permitted.len() < addresses.len() {
            tracing::debug!(%host, kept = permitted.len(), of = addresses.len(), "egress: refused addresses dropped");
        }
        Ok(permitted)
    }
}

/// A URL host as the allowlist compares it: lowercase, without a trailing dot.
fn normalize(host: &str) -> String {
    host.trim_end_matches('.').to_ascii_lowercase()
}

/// The runtime HTTP client's resolver: see [`EgressGuard::resolver`].
#[derive(Debug)]
pub(crate) struct GuardedResolver {
    guard: Arc<EgressGuard>,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let guard = self.guard.clone();
        Box::pin(async move {
            let addresses = guard.connectable(name.as_str()).await?;
            let addresses: reqwest::dns::Addrs =
                Box::new(addresses.into_iter().map(|ip| SocketAddr::new(ip, 0)));
            Ok(addresses)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse()
            .unwrap_or_else(|_| panic!("{text} is an address"))
    }

    fn refused(text: &str) -> bool {
        non_public(ip(text)).is_some()
    }

    #[test]
    fn public_addresses_pass() {
        for public in [
            "8.8.8.8",
            "1.1.1.1",
            "93.184.216.34",
            "9.255.255.255",
            "11.0.0.0",
            "100.63.255.255",
            "100.128.0.0",
            "126.255.255.255",
            "128.0.0.0",
            "169.253.255.255",
            "169.255.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "192.0.1.0",
            "192.0.3.0",
            "192.88.98.255",
            "192.167.255.255",
            "192.169.0.0",
            "198.17.255.255",
            "198.20.0.0",
            "198.51.99.255",
            "203.0.112.255",
            "223.255.255.255",
            "2606:4700:4700::1111",
            "2001:4860:4860::8888",
            "2a00:1450:4001:81b::200e",
            "2001:200::1",
            "3ffe::1",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
        ] {
            assert_eq!(non_public(ip(public)), None, "{public} is public");
        }
    }

    #[test]
    fn non_public_ipv4_is_refused() {
        for (address, range) in [
            ("0.0.0.0", "unspecified"),
            ("0.1.2.3", "this network"),
            ("10.0.0.1", "private"),
            ("10.255.255.255", "private"),
            ("100.64.0.1", "CGNAT"),
            ("100.127.255.255", "CGNAT"),
            ("127.0.0.1", "loopback"),
            ("127.255.255.254", "loopback"),
            ("169.254.169.254", "metadata"),
            ("169.254.0.1", "link-local"),
            ("172.16.0.1", "private"),
            ("172.31.255.255", "private"),
            ("192.0.0.9", "IETF"),
            ("192.0.2.1", "documentation"),
            ("192.88.99.1", "6to4 relay"),
            ("192.168.1.1", "private"),
            ("198.18.0.1", "benchmarking"),
            ("198.19.255.255", "benchmarking"),
            ("198.51.100.7", "documentation"),
            ("203.0.113.9", "documentation"),
            ("224.0.0.1", "multicast"),
            ("239.255.255.250", "multicast"),
            ("240.0.0.1", "reserved"),
            ("255.255.255.254", "reserved"),
            ("255.255.255.255", "broadcast"),
        ] {
            let label = non_public(ip(address)).unwrap_or_else(|| panic!("{address} refused"));
            assert!(label.contains(range), "{address}: {label}");
        }
    }

    #[test]
    fn non_public_ipv6_is_refused() {
        for (address, range) in [
            ("::", "unspecified"),
            ("::1", "loopback"),
            ("fc00::1", "unique local"),
            ("fd12:3456::1", "unique local"),
            ("fe80::1", "link-local"),
            ("febf::1", "link-local"),
            ("fec0::1", "site-local"),
            ("ff02::1", "multicast"),
            ("ff0e::1", "multicast"),
            ("100::1", "discard"),
            ("2001:db8::1", "documentation"),
            ("3fff::1", "documentation"),
            ("2001::1", "Teredo"),
            ("2001:2::1", "IETF"),
            ("5f00::1", "segment routing"),
            ("64:ff9b:1::1", "local-use NAT64"),
            ("4000::1", "not global unicast"),
            ("::2", "IPv4-compatible"),
            ("::ffff:0:7f00:1", "reserved"),
            ("1::1", "reserved"),
        ] {
            let label = non_public(ip(address)).unwrap_or_else(|| panic!("{address} refused"));
            assert!(label.contains(range), "{address}: {label}");
        }
    }

    #[test]
    fn embedded_ipv4_forms_are_judged_by_the_embedded_address() {
        for (address, range) in [
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:7f00:1", "loopback"),
            ("::ffff:10.1.2.3", "private"),
            ("::ffff:169.254.169.254", "link-local"),
            ("::ffff:0.0.0.0", "unspecified"),
            ("::ffff:100.64.0.1", "CGNAT"),
            ("::127.0.0.1", "IPv4-compatible"),
            ("::10.0.0.1", "IPv4-compatible"),
            ("64:ff9b::127.0.0.1", "loopback"),
            ("64:ff9b::a9fe:a9fe", "link-local"),
            ("64:ff9b::192.168.0.1", "private"),
            ("2002:7f00:1::1", "loopback"),
            ("2002:a9fe:a9fe::", "link-local"),
            ("2002:c0a8:101::1", "private"),
        ] {
            let label = non_public(ip(address)).unwrap_or_else(|| panic!("{address} refused"));
            assert!(label.contains(range), "{address}: {label}");
        }
        assert!(
            non_public(ip("::ffff:127.0.0.1"))
                .unwrap()
                .contains("IPv4-mapped form of 127.0.0.1")
        );
        assert!(
            non_public(ip("64:ff9b::7f00:1"))
                .unwrap()
                .contains("NAT64 form of 127.0.0.1")
        );
    }

    #[test]
    fn every_v4_range_boundary_is_exact() {
        for (network, prefix, label) in V4_RANGES {
            let base = u32::from(Ipv4Addr::from(network));
            let last = base | !mask_v4(prefix);
            assert!(refused(&Ipv4Addr::from(base).to_string()), "{label}");
            assert!(refused(&Ipv4Addr::from(last).to_string()), "{label}");
        }
        assert!(!refused("223.255.255.255"));
        assert!(refused("224.0.0.0"));
    }

    fn entry(text: &str) -> EgressAllow {
        text.parse()
            .unwrap_or_else(|error| panic!("{text}: {error}"))
    }

    #[test]
    fn allow_entries_parse_and_print() {
        for (text, printed) in [
            ("10.0.0.0/8", "10.0.0.0/8"),
            ("10.1.2.3/8", "10.0.0.0/8"),
            ("fd00::/8", "fd00::/8"),
            ("[fd00::]/8", "fd00::/8"),
            ("127.0.0.1", "127.0.0.1/32"),
            ("::1", "::1/128"),
            ("[::1]", "::1/128"),
            ("127.0.0.1:4021", "127.0.0.1:4021"),
            ("[::1]:8443", "[::1]:8443"),
            ("api.internal", "api.internal"),
            ("API.Internal.:8443", "api.internal:8443"),
            ("*.corp.example", "*.corp.example"),
            ("localhost:4021", "localhost:4021"),
            (" 192.168.0.0/16 ", "192.168.0.0/16"),
        ] {
            assert_eq!(entry(text).to_string(), printed, "{text}");
        }
        for bad in [
            "",
            "10.0.0.0/33",
            "::/129",
            "10.0.0.0/x",
            "nonsense/8",
            "host:0",
            "host:65536",
            "host:port",
            "127.0.0.1:0",
            "[::1",
            "bad host",
            "a..b",
            "*.",
            "under/score",
            "300.1.1.1",
            "-",
        ] {
            let error = bad.parse::<EgressAllow>().expect_err(bad);
            assert!(
                error.contains("--egress-allow") || error.contains("egress entry"),
                "{error}"
            );
        }
    }

    fn guard(entries: &[&str]) -> Arc<EgressGuard> {
        EgressGuard::new(EgressPolicy::public_only().allowing(entries.iter().map(|e| entry(e))))
    }

    async fn check(guard: &EgressGuard, url: &str) -> Result<(), RuntimeError> {
        guard.check(&url::Url::parse(url).unwrap()).await
    }

    #[tokio::test]
    async fn ip_literals_follow_the_allowlist_and_its_ports() {
        let strict = guard(&[]);
        for url in [
            "http://127.0.0.1:4021/paid",
            "http://[::1]/",
            "http://[::ffff:127.0.0.1]/",
            "http://[::ffff:a9fe:a9fe]/latest/meta-data/",
            "http://169.254.169.254/latest/meta-data/",
            "http://2130706433/",
            "http://0x7f.1/",
            "http://0/",
            "https://10.0.0.1/",
            "http://[fe80::1]/",
            "http://[64:ff9b::7f00:1]/",
        ] {
            let error = check(&strict, url).await.expect_err(url);
            assert_eq!(error.code(), "egress_refused", "{url}");
            assert_eq!(error.status(), 403);
            assert!(error.to_string().contains("--egress-allow"), "{error}");
        }
        let RuntimeError::EgressRefused {
            host,
            address,
            message,
        } = check(&strict, "http://127.0.0.1:4021/paid")
            .await
            .unwrap_err()
        else {
            panic!("an egress refusal")
        };
        assert_eq!(
            (host.as_str(), address.as_str()),
            ("127.0.0.1", "127.0.0.1")
        );
        assert!(message.contains("loopback") && message.contains("--egress-allow 127.0.0.1:4021"));
        check(&strict, "http://8.8.8.8/").await.unwrap();
        check(&strict, "http://[2606:4700:4700::1111]:8080/")
            .await
            .unwrap();

        let loopback = EgressGuard::new(EgressPolicy::loopback());
        check(&loopback, "http://127.0.0.1:4021/").await.unwrap();
        check(&loopback, "http://127.9.9.9/").await.unwrap();
        check(&loopback, "http://[::1]:9/").await.unwrap();
        // Loopback allowed is not private networks allowed, nor mapped forms.
        assert!(check(&loopback, "http://10.0.0.1/").await.is_err());
        assert!(
            check(&loopback, "http://[::ffff:127.0.0.1]/")
                .await
                .is_err()
        );

        let port = guard(&["127.0.0.1:4021", "10.0.0.0/8"]);
        check(&port, "http://127.0.0.1:4021/").await.unwrap();
        assert!(check(&port, "http://127.0.0.1:4022/").await.is_err());
        assert!(check(&port, "http://127.0.0.2:4021/").await.is_err());
        check(&port, "https://10.20.30.40/").await.unwrap();
        assert!(check(&port, "http://172.16.0.1/").await.is_err());

        check(
            &EgressGuard::new(EgressPolicy::allow_any()),
            "http://169.254.169.254/",
        )
        .await
        .unwrap();
    }

    #[tokio::test]
    async fn host_names_are_judged_by_what_they_resolve_to() {
        let strict = guard(&[]);
        let error = check(&strict, "http://localhost:4021/paid")
            .await
            .unwrap_err();
        assert_eq!(error.code(), "egress_refused");
        assert!(
            error.to_string().contains("localhost resolves to"),
            "{error}"
        );
        assert!(
            error.to_string().contains("--egress-allow localhost:4021"),
            "{error}"
        );
        assert!(check(&strict, "http://LOCALHOST./").await.is_err());
        // Allowed by name, on its port only.
        let named = guard(&["localhost:4021"]);
        check(&named, "http://localhost:4021/").await.unwrap();
        check(&named, "http://LocalHost.:4021/").await.unwrap();
        assert!(check(&named, "http://localhost:4022/").await.is_err());
        // An address with a port applies to URLs naming the address, not to names.
        let address_port = guard(&["127.0.0.1:4021", "::1"]);
        assert!(check(&address_port, "http://127.0.0.1:4021/").await.is_ok());
        // Allowed by network.
        check(
            &EgressGuard::new(EgressPolicy::loopback()),
            "http://localhost:4021/",
        )
        .await
        .unwrap();
        // The resolver drops refused addresses and fails when none is left.
        let refused = strict.connectable("localhost").await.unwrap_err();
        assert!(refused.to_string().contains("egress refused"), "{refused}");
        let loopback = EgressGuard::new(EgressPolicy::loopback());
        let addresses = loopback.connectable("localhost").await.unwrap();
        assert!(!addresses.is_empty() && addresses.iter().all(|ip| ip.is_loopback()));
        assert!(named.connectable("localhost").await.is_ok());
    }

    #[test]
    fn wildcard_hosts_match_subdomains_only() {
        let wildcard = entry("*.corp.example");
        assert!(wildcard.matches_host("a.corp.example", Some(80)));
        assert!(wildcard.matches_host("a.b.corp.example", None));
        assert!(!wildcard.matches_host("corp.example", Some(80)));
        assert!(!wildcard.matches_host("evilcorp.example", Some(80)));
        assert!(!wildcard.matches_host("corp.example.evil", Some(80)));
        let exact = entry("api.internal:8443");
        assert!(exact.matches_host("api.internal", Some(8443)));
        assert!(!exact.matches_host("api.internal", Some(443)));
        assert!(!exact.matches_host("x.api.internal", Some(8443)));
    }

    #[test]
    fn policies_describe_themselves() {
        assert_eq!(EgressPolicy::default().describe(), "public addresses only");
        assert_eq!(
            EgressPolicy::loopback().describe(),
            "public addresses and 127.0.0.0/8, ::1/128"
        );
        assert!(EgressPolicy::allow_any().describe().contains("guard off"));
    }
}
