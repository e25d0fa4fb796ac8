//! Any bytes as the start of a connection from a `proxy_protocol_from` peer: the PROXY
//! header reader (`server::proxy_header`) answers without a panic; a header it finds lies
//! within the bytes and the bound, and reads the same whatever follows it; and every cut
//! of those bytes short of the header's end asks for more rather than refusing or
//! misreading, so that a header arriving in pieces reads as one that came whole.
#![no_main]
use hookgate::server::proxy_header::{MAX_HEADER, Parsed, parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match parse(data) {
        Parsed::Header { len, client, tls } => {
            assert!(len <= data.len() && len <= MAX_HEADER, "{len}");
            assert_eq!(parse(&data[..len]), Parsed::Header { len, client, tls });
            let mut more = data[..len].to_vec();
            more.extend_from_slice(b"POST / HTTP/1.1\r\n");
            assert_eq!(parse(&more), Parsed::Header { len, client, tls });
            for cut in 0..len {
                assert_eq!(parse(&data[..cut]), Parsed::Partial, "cut at {cut}");
            }
        }
        Parsed::Partial => assert!(data.len() < MAX_HEADER),
        Parsed::Invalid(_) => {}
    }
});
