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

mod ranges;

pub use ranges::{Cidr, non_public};

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
mod tests;
