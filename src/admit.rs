//! Who the client is, and whether it may come in (SPEC §4, §5).
//!
//! Takes the socket peer, the sender's `X-Forwarded-For`/`-Proto` and `trusted_proxies`;
//! gives the client address (for `allow_cidrs`, rate limits and logs) and the
//! `x-forwarded-*` values to send upstream. `X-Forwarded-For` is believed only when the
//! peer is a trusted proxy; otherwise anyone could claim any address.

use std::net::{IpAddr, SocketAddr};

use http::header::{HeaderMap, HeaderValue};
use ipnet::IpNet;

/// The client as hookgate sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    /// The address the limits and `allow_cidrs` apply to.
    pub addr: IpAddr,
    /// The `x-forwarded-for` to send upstream.
    pub forwarded_for: HeaderValue,
    /// The `x-forwarded-proto` to send upstream.
    pub forwarded_proto: HeaderValue,
}

/// An IPv4-mapped IPv6 address in its IPv4 form.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// A socket address with its IP in `canonical` form.
pub fn canonical_addr(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(canonical(addr.ip()), addr.port())
}

/// An `X-Forwarded-For` entry as an address: a port or brackets are dropped.
fn parse_entry(entry: &[u8]) -> Option<IpAddr> {
    let e = std::str::from_utf8(entry).ok()?.trim();
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

/// Whether `ip`, in its IPv4 form if IPv4-mapped, is in one of `nets` (`trusted_proxies`,
/// `allow_cidrs`, `proxy_protocol_from`).
pub fn listed(ip: IpAddr, nets: &[IpNet]) -> bool {
    let ip = canonical(ip);
    nets.iter().any(|n| n.contains(&ip))
}

/// An address as a header value. IPv4, the common case, is written by hand: `Display`
/// through `format!` was a measurable part of a request's own work.
fn address_header(ip: IpAddr) -> HeaderValue {
    match ip {
        IpAddr::V4(v4) => {
            let mut out = [0u8; 15];
            let mut len = 0;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out[len] = b'.';
                    len += 1;
                }
                let digits = [octet / 100, octet / 10 % 10, octet % 10];
                let skip = if octet >= 100 {
                    0
                } else if octet >= 10 {
                    1
                } else {
                    2
                };
                for d in &digits[skip..] {
                    out[len] = b'0' + d;
                    len += 1;
                }
            }
            HeaderValue::from_bytes(&out[..len]).unwrap_or_else(|_| HeaderValue::from_static(""))
        }
        IpAddr::V6(v6) => {
            HeaderValue::from_str(&v6.to_string()).unwrap_or_else(|_| HeaderValue::from_static(""))
        }
    }
}

/// Works out the client from the peer and the sender's headers. `own_scheme` is
/// hookgate's own (`http` or `https`).
pub fn client(
    peer: IpAddr,
    headers: &HeaderMap,
    trusted: &[IpNet],
    own_scheme: &'static str,
) -> Client {
    let peer = canonical(peer);
    let peer_header = address_header(peer);
    if !listed(peer, trusted) {
        return Client {
            addr: peer,
            forwarded_for: peer_header,
            forwarded_proto: HeaderValue::from_static(own_scheme),
        };
    }
    // Every X-Forwarded-For line, read as one comma-separated list, as sent. As bytes: a
    // line may hold bytes past ASCII (HTTP's obs-text), and skipping such a line would drop
    // the address a trusted proxy appended to it, the client's.
    let sent: Vec<&[u8]> = headers
        .get_all("x-forwarded-for")
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|e| !e.is_empty())
        .collect();
    let forwarded_for = if sent.is_empty() {
        peer_header
    } else {
        // The sender's entries were header values already, so the list is one too.
        let mut list = sent.join(&b", "[..]);
        list.extend_from_slice(b", ");
        list.extend_from_slice(peer_header.as_bytes());
        HeaderValue::from_bytes(&list).unwrap_or(peer_header)
    };
    // Walk from the right: the first hop that is not a trusted proxy is the client; an
    // entry that is not an address ends the walk, and the address to its right is the client.
    let mut addr = peer;
    for entry in sent.iter().rev() {
        match parse_entry(entry) {
            Some(ip) => {
                addr = ip;
                if !listed(ip, trusted) {
                    break;
                }
            }
            None => break,
        }
    }
    let forwarded_proto = headers
        .get("x-forwarded-proto")
        .map(|v| v.as_bytes().trim_ascii())
        .filter(|v| !v.is_empty())
        .and_then(|v| HeaderValue::from_bytes(v).ok())
        .unwrap_or_else(|| HeaderValue::from_static(own_scheme));
    Client {
        addr,
        forwarded_for,
        forwarded_proto,
    }
}

/// Whether `allow_cidrs` (absent: everyone) lets the client in.
pub fn allowed(addr: IpAddr, allow: Option<&[IpNet]>) -> bool {
    allow.is_none_or(|nets| listed(addr, nets))
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
        assert_eq!(c.addr, ip("10.0.0.1"));
        assert_eq!(c.forwarded_for, "10.0.0.1");
    }

    /// HTTP lets a header value hold bytes past ASCII (obs-text), and a sender can put some
    /// in the `X-Forwarded-For` it gives a trusted proxy, which appends the address it saw
    /// to that line. Before, such a line was skipped whole: the client was the proxy itself,
    /// in the limits, `allow_cidrs` and the log, and its address was not forwarded.
    #[test]
    fn a_line_with_bytes_past_ascii_still_names_the_client() {
        let t = nets(&["10.0.0.0/8"]);
        let mut h = HeaderMap::new();
        for line in [&b"caf\xc3\xa9, 198.51.100.7"[..], b"10.1.1.1", b"\xff"] {
            h.append(
                "x-forwarded-for",
                HeaderValue::from_bytes(line).expect("obs-text is a header value"),
            );
        }
        let c = client(ip("10.0.0.1"), &h, &t, "http");
        // `\xff` is no address: the walk ends there, and the peer is the client.
        assert_eq!(c.addr, ip("10.0.0.1"));
        assert_eq!(
            c.forwarded_for.as_bytes(),
            b"caf\xc3\xa9, 198.51.100.7, 10.1.1.1, \xff, 10.0.0.1"
        );
        h.remove("x-forwarded-for");
        h.append(
            "x-forwarded-for",
            HeaderValue::from_bytes(b"1.2.3.4\xff, 198.51.100.7").expect("value"),
        );
        h.append("x-forwarded-for", HeaderValue::from_static("10.1.1.1"));
        let c = client(ip("10.0.0.1"), &h, &t, "http");
        assert_eq!(c.addr, ip("198.51.100.7"));
        assert_eq!(
            c.forwarded_for.as_bytes(),
            b"1.2.3.4\xff, 198.51.100.7, 10.1.1.1, 10.0.0.1"
        );
    }

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        for text in [
            "0.0.0.0",
            "1.2.3.4",
            "10.100.9.255",
            "192.168.10.1",
            "2001:db8::1",
        ] {
            assert_eq!(address_header(ip(text)), text);
        }
        for n in 0..=255u8 {
            let v4 = std::net::Ipv4Addr::new(n, 0, n / 3, 99);
            assert_eq!(address_header(IpAddr::V4(v4)), v4.to_string().as_str());
        }
    }

    #[test]
    fn allow_cidrs() {
        let n = nets(&["203.0.113.0/24"]);
        assert!(allowed(ip("203.0.113.200"), Some(&n)));
        assert!(!allowed(ip("203.0.114.1"), Some(&n)));
        assert!(allowed(ip("203.0.114.1"), None));
    }
}
