//! The PROXY protocol header (HAProxy's, version 1 text or version 2 binary) that a load
//! balancer in TCP mode writes at the start of each connection, naming the client it
//! came from (`[server] proxy_protocol_from`, README "Behind a proxy or load balancer").
//!
//! A TCP load balancer that passes TLS through to hookgate (the only way for
//! `client_ca` to see the sender's certificate) cannot add `X-Forwarded-For`: without this
//! every connection would come from the balancer's address, and `allow_cidrs`,
//! `client_rate_limit` and the logs would see that one address for every sender. The
//! header is parsed by the `ppp` crate; this module decides what the connection does with
//! it, and bounds how much of it is read.

use std::net::{IpAddr, SocketAddr};

use ppp::HeaderResult;
use ppp::v2;

/// The longest header read. Version 1 is at most 107 bytes; version 2 is 16 bytes, the
/// addresses (36 for IPv6) and TLVs, which balancers keep short (AWS's VPC endpoint id,
/// Azure's link id, GCP's connection id: tens of bytes). A header may say it is up to
/// 64 KiB long; a peer that says more than this is cut off rather than read.
pub const MAX_HEADER: usize = 4096;

/// What the first bytes of a connection from a `proxy_protocol_from` peer say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// A whole header of `len` bytes. `client` is the address the connection came from,
    /// or `None` where the balancer names none: version 1 `UNKNOWN`, version 2 `LOCAL`
    /// (its own health checks), or an address family other than IPv4 and IPv6. The
    /// connection is then the balancer's own, and is served as from the socket's peer.
    /// `tls`: the client reached the balancer over TLS, which the balancer ended (version
    /// 2's `PP2_TYPE_SSL` TLV with its `PP2_CLIENT_SSL` bit, as HAProxy's
    /// `send-proxy-v2-ssl` writes it): its scheme is then https.
    Header {
        len: usize,
        client: Option<SocketAddr>,
        tls: bool,
    },
    /// Every byte so far is a header's start: read more.
    Partial,
    /// Not a PROXY header, or a malformed one; the reason, for the log.
    Invalid(String),
}

/// Whether `buf` opens with a PROXY header's signature (of either version): from a peer
/// not in `proxy_protocol_from`, a balancer that sends one where none is expected.
pub fn looks_like_header(buf: &[u8]) -> bool {
    buf.starts_with(v2::PROTOCOL_PREFIX) || buf.starts_with(b"PROXY ")
}

/// The longest version 1 header, `\r\n` included (the protocol's own bound).
const MAX_V1: usize = 107;

/// Reads a PROXY header at the start of `buf`.
///
/// The header's extent is found here, and only a whole one is given to `ppp`: its own
/// partial-input answers depend on where the input was cut (`PROXY TC` is an unknown
/// protocol to it, not a partial one), and a header may come in more than one read.
pub fn parse(buf: &[u8]) -> Parsed {
    let len = if starts_like(buf, v2::PROTOCOL_PREFIX) {
        let Some(declared) = buf.get(14..16) else {
            return Parsed::Partial;
        };
        let len = 16 + usize::from(u16::from_be_bytes([declared[0], declared[1]]));
        if len > MAX_HEADER {
            return Parsed::Invalid(format!("PROXY header of {len} bytes, over {MAX_HEADER}"));
        }
        len
    } else if starts_like(buf, b"PROXY ") {
        match memchr::memchr(b'\n', &buf[..buf.len().min(MAX_V1)]) {
            Some(lf) if lf > 0 && buf[lf - 1] == b'\r' => lf + 1,
            Some(_) => return Parsed::Invalid("PROXY line not ended by CRLF".into()),
            None if buf.len() < MAX_V1 => return Parsed::Partial,
            None => return Parsed::Invalid(format!("no PROXY line end in {MAX_V1} bytes")),
        }
    } else {
        return Parsed::Invalid("not a PROXY header".into());
    };
    if buf.len() < len {
        return Parsed::Partial;
    }
    let (client, tls) = match HeaderResult::parse(&buf[..len]) {
        HeaderResult::V1(Ok(header)) => {
            let client = match header.addresses {
                ppp::v1::Addresses::Tcp4(a) => {
                    Some(SocketAddr::new(IpAddr::V4(a.source_address), a.source_port))
                }
                ppp::v1::Addresses::Tcp6(a) => {
                    Some(SocketAddr::new(IpAddr::V6(a.source_address), a.source_port))
                }
                ppp::v1::Addresses::Unknown => None,
            };
            (client, false)
        }
        HeaderResult::V2(Ok(header)) => {
            let client = match (header.command, header.addresses) {
                (v2::Command::Local, _) => None,
                (v2::Command::Proxy, v2::Addresses::IPv4(a)) => {
                    Some(SocketAddr::new(IpAddr::V4(a.source_address), a.source_port))
                }
                (v2::Command::Proxy, v2::Addresses::IPv6(a)) => {
                    Some(SocketAddr::new(IpAddr::V6(a.source_address), a.source_port))
                }
                (v2::Command::Proxy, v2::Addresses::Unspecified | v2::Addresses::Unix(_)) => None,
            };
            (client, client.is_some() && client_used_tls(&header))
        }
        HeaderResult::V1(Err(e)) => return Parsed::Invalid(format!("PROXY header v1: {e}")),
        HeaderResult::V2(Err(e)) => return Parsed::Invalid(format!("PROXY header v2: {e}")),
    };
    Parsed::Header { len, client, tls }
}

/// `PP2_TYPE_SSL`'s first byte, `client`, has `PP2_CLIENT_SSL` set: the client's
/// connection to the balancer was TLS (the PROXY protocol spec, section 2.2.5).
fn client_used_tls(header: &v2::Header<'_>) -> bool {
    const PP2_TYPE_SSL: u8 = 0x20;
    const PP2_CLIENT_SSL: u8 = 0x01;
    header.tlvs().flatten().any(|tlv| {
        tlv.kind == PP2_TYPE_SSL && tlv.value.first().is_some_and(|c| c & PP2_CLIENT_SSL != 0)
    })
}

/// Whether `buf` and `prefix` agree as far as both go.
fn starts_like(buf: &[u8], prefix: &[u8]) -> bool {
    let n = buf.len().min(prefix.len());
    buf[..n] == prefix[..n]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(command: u8, family: u8, addresses: &[u8], tlvs: &[u8]) -> Vec<u8> {
        let mut h = v2::PROTOCOL_PREFIX.to_vec();
        h.push(0x20 | command);
        h.push(family);
        let len = (addresses.len() + tlvs.len()) as u16;
        h.extend_from_slice(&len.to_be_bytes());
        h.extend_from_slice(addresses);
        h.extend_from_slice(tlvs);
        h
    }

    fn header(buf: &[u8]) -> (usize, Option<String>) {
        match parse(buf) {
            Parsed::Header { len, client, .. } => (len, client.map(|c| c.to_string())),
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(buf)),
        }
    }

    #[test]
    fn version_1_names_the_client_and_says_where_the_request_starts() {
        let line = "PROXY TCP4 203.0.113.7 10.0.0.5 51234 443\r\n";
        let buf = format!("{line}POST /hooks/p HTTP/1.1\r\n");
        assert_eq!(
            header(buf.as_bytes()),
            (line.len(), Some("203.0.113.7:51234".into()))
        );
        let line = "PROXY TCP6 2001:db8::7 2001:db8::1 51234 443\r\n";
        assert_eq!(
            header(line.as_bytes()),
            (line.len(), Some("[2001:db8::7]:51234".into()))
        );
        // The balancer's own connection: no client named.
        assert_eq!(header(b"PROXY UNKNOWN\r\nGET /healthz"), (15, None));
    }

    #[test]
    fn version_2_names_the_client_unless_it_is_the_balancers_own() {
        let ipv4 = [203, 0, 113, 7, 10, 0, 0, 5, 0xc8, 0x22, 0x01, 0xbb];
        // A TLV (AWS's VPC endpoint id, type 0xEA) after the addresses is skipped.
        let tlv = [0xea, 0x00, 0x04, 0x01, b'v', b'p', b'c'];
        let h = v2(0x1, 0x11, &ipv4, &tlv);
        let mut buf = h.clone();
        buf.extend_from_slice(b"\x16\x03\x01"); // a TLS ClientHello follows
        assert_eq!(header(&buf), (h.len(), Some("203.0.113.7:51234".into())));

        let mut ipv6 = [0u8; 36];
        ipv6[..16].copy_from_slice(
            &"2001:db8::7"
                .parse::<std::net::Ipv6Addr>()
                .expect("address")
                .octets(),
        );
        ipv6[32..34].copy_from_slice(&51234u16.to_be_bytes());
        let h = v2(0x1, 0x21, &ipv6, &[]);
        assert_eq!(header(&h), (h.len(), Some("[2001:db8::7]:51234".into())));

        // The client's TLS ended at the balancer (PP2_TYPE_SSL, client bit set, with a
        // version sub-TLV as HAProxy writes it): https. The bit clear: not.
        let ssl = |client: u8| {
            let mut t = vec![0x20, 0x00, 0x0c, client, 0, 0, 0, 0];
            t.extend_from_slice(&[0x21, 0x00, 0x04]);
            t.extend_from_slice(b"TLS3");
            t
        };
        for (bits, tls) in [(0x01, true), (0x05, true), (0x00, false)] {
            let h = v2(0x1, 0x11, &ipv4, &ssl(bits));
            assert!(
                matches!(parse(&h), Parsed::Header { tls: t, client: Some(_), .. } if t == tls),
                "{bits:#x}: {:?}",
                parse(&h)
            );
        }
        assert!(matches!(
            parse(&v2(0x1, 0x11, &ipv4, &tlv)),
            Parsed::Header { tls: false, .. }
        ));
        // LOCAL with the TLV still names no client, so nothing is https either.
        let h = v2(0x0, 0x11, &ipv4, &ssl(0x01));
        assert!(matches!(
            parse(&h),
            Parsed::Header {
                client: None,
                tls: false,
                ..
            }
        ));

        // LOCAL (a health check of the balancer's own), and UNSPEC: no client.
        let h = v2(0x0, 0x11, &ipv4, &[]);
        assert_eq!(header(&h), (h.len(), None));
        let h = v2(0x1, 0x00, &[], &[]);
        assert_eq!(header(&h), (16, None));
    }

    #[test]
    fn a_header_in_pieces_is_partial_until_whole() {
        let line = b"PROXY TCP4 203.0.113.7 10.0.0.5 51234 443\r\n";
        let h2 = v2(0x1, 0x11, &[203, 0, 113, 7, 10, 0, 0, 5, 0, 1, 0, 2], &[]);
        for whole in [&line[..], &h2[..]] {
            for cut in 1..whole.len() {
                let piece = &whole[..cut];
                // A piece either waits for more or is already known to be whole.
                assert_eq!(parse(piece), Parsed::Partial, "{piece:?}");
            }
            assert!(matches!(parse(whole), Parsed::Header { .. }));
        }
    }

    #[test]
    fn anything_else_is_invalid() {
        for bad in [
            &b"POST /hooks/p HTTP/1.1\r\n"[..],
            b"\x16\x03\x01\x02\x00",
            b"PROXY TCP4 203.0.113.300 10.0.0.5 1 2\r\n",
            b"PROXY TCP4 203.0.113.7 10.0.0.5 99999 2\r\n",
            b"PROXY TCP5 a b 1 2\r\n",
            b"PROXY TCP4 203.0.113.7 10.0.0.5 1 2\n",
        ] {
            assert!(
                matches!(parse(bad), Parsed::Invalid(_)),
                "{:?}: {:?}",
                String::from_utf8_lossy(bad),
                parse(bad)
            );
        }
        // A version 1 line that never ends, and a version 2 header longer than the bound.
        let mut endless = b"PROXY TCP4 ".to_vec();
        endless.resize(200, b'1');
        assert!(matches!(parse(&endless), Parsed::Invalid(_)));
        let long = v2(0x1, 0x11, &[0; 12], &vec![0; MAX_HEADER]);
        assert!(matches!(parse(&long[..MAX_HEADER]), Parsed::Invalid(_)));
        assert!(matches!(parse(&long), Parsed::Invalid(_)));
        // Version 2 with a version nibble other than 2.
        let mut v3 = v2(0x1, 0x11, &[0; 12], &[]);
        v3[12] = 0x31;
        assert!(matches!(parse(&v3), Parsed::Invalid(_)));
    }
}
