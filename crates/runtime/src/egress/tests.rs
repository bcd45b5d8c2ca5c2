use super::ranges::{V4_RANGES, mask_v4};
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

/// Every refused address and a word its range's label must contain: IPv4, IPv6, and IPv6
/// forms that embed an IPv4 address (judged by the embedded address).
const REFUSED: &[(&str, &str)] = &[
    // IPv4
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
    // IPv6
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
    // IPv4 embedded in IPv6
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
];

#[test]
fn non_public_addresses_are_refused_with_their_range() {
    for (address, range) in REFUSED {
        let label = non_public(ip(address)).unwrap_or_else(|| panic!("{address} refused"));
        assert!(label.contains(range), "{address}: {label}");
    }
}

#[test]
fn embedded_ipv4_forms_name_the_embedded_address() {
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
