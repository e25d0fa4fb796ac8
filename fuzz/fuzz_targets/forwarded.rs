//! What hookgate reads from a request's head besides the body: the `X-Forwarded-For` walk
//! (behind a trusted proxy, and not), a funtek query's token and its stripping for the log,
//! an id written into a header, and a request path's wire form. Each is checked against
//! what it must keep true.
#![no_main]
use std::net::IpAddr;

use http::{HeaderMap, HeaderValue};
use hookgate::admit;
use hookgate::config::wire_form;
use hookgate::upstream::encode_id;
use hookgate::verify::{query_param, strip_query_param};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let text = String::from_utf8_lossy(rest);
    let mut lines = text.split('\n');
    let query = lines.next().unwrap_or("");

    // The token never survives stripping, and the last one is the one read.
    let stripped = strip_query_param(query, "token");
    assert_eq!(query_param(&stripped, "token"), None, "{query:?} → {stripped:?}");
    if query_param(query, "token").is_some() {
        assert_ne!(stripped, query, "a query with a token is logged without it");
    }

    // An id in a header: visible ASCII only, and it decodes back to the id.
    let encoded = encode_id(query);
    let bytes = encoded.as_bytes();
    assert!(bytes.iter().all(|b| (b'!'..=b'~').contains(b)), "{bytes:?}");
    let decoded: Vec<u8> = percent_encoding::percent_decode(bytes).collect();
    assert_eq!(decoded, query.as_bytes());

    // A request path in its wire form (a route miss): ASCII, stable, the same bytes.
    let wire = wire_form(query);
    assert!(wire.is_ascii(), "{wire:?}");
    assert_eq!(wire_form(&wire), wire);
    let same: Vec<u8> = percent_encoding::percent_decode(wire.as_bytes()).collect();
    assert_eq!(same, percent_encoding::percent_decode(query.as_bytes()).collect::<Vec<u8>>());

    // The rest: X-Forwarded-For lines (one header each) and, last, X-Forwarded-Proto.
    let mut headers = HeaderMap::new();
    for line in lines {
        // As bytes: a header value may hold bytes past ASCII (obs-text), and so may these.
        if let Ok(v) = HeaderValue::from_bytes(line.as_bytes()) {
            headers.append("x-forwarded-for", v.clone());
            headers.insert("x-forwarded-proto", v);
        }
    }
    let peer: IpAddr = if mode & 1 == 0 { "10.1.2.3".parse().unwrap() } else { "::ffff:10.1.2.3".parse().unwrap() };
    let trusted: Vec<ipnet::IpNet> = match mode >> 1 & 3 {
        0 => vec![],
        1 => vec!["10.0.0.0/8".parse().unwrap()],
        2 => vec!["10.0.0.0/8".parse().unwrap(), "192.168.0.0/16".parse().unwrap(), "::/0".parse().unwrap()],
        _ => vec!["0.0.0.0/0".parse().unwrap(), "::/0".parse().unwrap()],
    };
    let client = admit::client(peer, &headers, &trusted, "http");
    let forwarded = client.forwarded_for.as_bytes();
    // The peer's own address, in its IPv4 form, always ends the list.
    assert!(forwarded.ends_with(b"10.1.2.3"), "{forwarded:?}");
    if trusted.is_empty() {
        assert_eq!(forwarded, b"10.1.2.3");
        assert_eq!(client.addr, admit::canonical(peer));
        assert_eq!(client.forwarded_proto, "http");
    }
    // Only behind a trusted proxy can the sender name another client.
    assert!(client.addr == admit::canonical(peer) || !trusted.is_empty());
    assert!(!matches!(client.addr, IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some()), "{:?}", client.addr);
});
