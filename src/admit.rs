//! Who the client is, and whether it may come in (SPEC §4, §5).
//!
//! Takes the socket peer, the sender's `X-Forwarded-For`/`-Proto` and `trusted_proxies`;
//! gives the client address (for `allow_cidrs`, rate limits and logs) and the
//! `x-forwarded-*` values to send upstream. `X-Forwarded-For` is believed only when the
//! peer is a trusted proxy; otherwise anyone could claim any address.

use std::net::{IpAddr, SocketAddr};

use http::header::HeaderMap;
use ipnet::IpNet;

/// The client as hookgate sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    /// The address the limits and `allow_cidrs` apply to.
    pub addr: IpAddr,
    /// The `x-forwarded-for` to send upstream.
    pub forwarded_for: String,
    /// The `x-forwarded-proto` to send upstream.
    pub forwarded_proto: String,
}

/// An IPv4-mapped IPv6 address in its IPv4 form.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// An `X-Forwarded-For` entry as an address: a port or brackets are dropped.
fn parse_entry(entry: &str) -> Option<IpAddr> {
    let e = entry.trim();
    if let Ok(ip) = e.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    if let Ok(sa) = e.parse::<SocketAddr>() {
        return Some(canonical(sa.ip()));
    }
    e.strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .and_then(|r| r.parse::<IpAddr>().ok())
        .map(canonical)
}

fn is_trusted(ip: IpAddr, trusted: &[IpNet]) -> bool {
    trusted.iter().any(|n| n.contains(&ip))
}

/// Works out the client from the peer and the sender's headers.
pub fn client(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet], own_scheme: &str) -> Client {
    let peer = canonical(peer);
    let peer_text = peer.to_string();
    if !is_trusted(peer, trusted) {
        return Client {
            addr: peer,
            forwarded_for: peer_text,
            forwarded_proto: own_scheme.to_string(),
        };
    }
    // Every X-Forwarded-For line, read as one comma-separated list, as sent.
    let sent: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .collect();
    let forwarded_for = if sent.is_empty() {
        peer_text
    } else {
        format!("{}, {peer_text}", sent.join(", "))
    };
    // Walk from the right: the first hop that is not a trusted proxy is the client; an
    // entry that is not an address ends the walk, and the address to its right is the client.
    let mut addr = peer;
    for entry in sent.iter().rev() {
        match parse_entry(entry) {
            Some(ip) => {
                addr = ip;
                if !is_trusted(ip, trusted) {
                    break;
                }
            }
            None => break,
        }
    }
    let forwarded_proto = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .unwrap_or(own_scheme)
        .to_string();
    Client {
        addr,
        forwarded_for,
        forwarded_proto,
    }
}

/// Whether `allow_cidrs` (absent: everyone) lets the client in.
pub fn allowed(addr: IpAddr, allow: Option<&[IpNet]>) -> bool {
    allow.is_none_or(|nets| nets.iter().any(|n| n.contains(&addr)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| s.parse().expect("net")).collect()
    }

    fn headers(xff: &[&str], proto: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in xff {
            h.append("x-forwarded-for", HeaderValue::from_str(v).expect("v"));
        }
        if let Some(p) = proto {
            h.insert("x-forwarded-proto", HeaderValue::from_str(p).expect("v"));
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn untrusted_peer_ignores_forwarded_headers() {
        let c = client(
            ip("203.0.113.9"),
            &headers(&["1.2.3.4"], Some("https")),
            &nets(&["10.0.0.0/8"]),
            "http",
        );
        assert_eq!(c.addr, ip("203.0.113.9"));
        assert_eq!(c.forwarded_for, "203.0.113.9");
        assert_eq!(c.forwarded_proto, "http");
    }

    #[test]
    fn trusted_peer_walks_from_the_right() {
        let t = nets(&["10.0.0.0/8"]);
        let h = headers(&["198.51.100.1, 10.1.1.1", "10.2.2.2"], Some("https"));
        let c = client(ip("10.0.0.1"), &h, &t, "http");
        assert_eq!(c.addr, ip("198.51.100.1"));
        assert_eq!(
            c.forwarded_for,
            "198.51.100.1, 10.1.1.1, 10.2.2.2, 10.0.0.1"
        );
        assert_eq!(c.forwarded_proto, "https");
        // Every hop trusted: the left-most one is the client.
        let c = client(ip("10.0.0.1"), &headers(&["10.9.9.9"], None), &t, "http");
        assert_eq!(c.addr, ip("10.9.9.9"));
        assert_eq!(c.forwarded_proto, "http");
        // A garbage entry ends the walk: the address to its right is the client.
        let c = client(
            ip("10.0.0.1"),
            &headers(&["1.1.1.1, junk, 10.3.3.3"], None),
            &t,
            "http",
        );
        assert_eq!(c.addr, ip("10.3.3.3"));
        // Ports and brackets are dropped; mapped IPv6 compares as IPv4.
        let c = client(
            ip("::ffff:10.0.0.1"),
            &headers(&["[2001:db8::1]:443, 192.0.2.7:80"], None),
            &t,
            "http",
        );
        assert_eq!(c.addr, ip("192.0.2.7"));
        assert_eq!(c.forwarded_for, "[2001:db8::1]:443, 192.0.2.7:80, 10.0.0.1");
        // No header: the peer alone.
        let c = client(ip("10.0.0.1"), &HeaderMap::new(), &t, "https");
        assert_eq!(
            (c.addr, c.forwarded_for.as_str()),
            (ip("10.0.0.1"), "10.0.0.1")
        );
    }

    #[test]
    fn allow_cidrs() {
        let n = nets(&["203.0.113.0/24"]);
        assert!(allowed(ip("203.0.113.200"), Some(&n)));
        assert!(!allowed(ip("203.0.114.1"), Some(&n)));
        assert!(allowed(ip("203.0.114.1"), None));
    }
}
