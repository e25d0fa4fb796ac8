//! Any bytes as the start of a connection to the TLS listener that is plain HTTP: the 400
//! written back in plain HTTP (`pipeline::plain_http_on_tls`) is one well-formed answer
//! whatever the sender's head holds: four header lines, the JSON error as its whole body,
//! and the sender's `x-request-id` only as one header value (a new id when it sent none),
//! so that no sender can shape the answer beyond that value.
#![no_main]
use std::sync::LazyLock;

use hookgate::metrics::Metrics;
use hookgate::pipeline::{Conn, plain_http_on_tls};
use libfuzzer_sys::fuzz_target;

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::default);

fuzz_target!(|data: &[u8]| {
    let conn = Conn { peer: ([127, 0, 0, 1], 1).into(), tls: true, worker: 0 };
    let answer = plain_http_on_tls(&METRICS, conn, data, "plain HTTP on the TLS listener");
    let mut headers = [httparse::EMPTY_HEADER; 8];
    let mut response = httparse::Response::new(&mut headers);
    let Ok(httparse::Status::Complete(len)) = response.parse(&answer) else {
        panic!("not an HTTP answer: {answer:?}");
    };
    assert_eq!(response.code, Some(400));
    let names: Vec<&str> = response.headers.iter().map(|h| h.name).collect();
    assert_eq!(names, ["content-type", "content-length", "connection", "x-request-id"]);
    assert_eq!(&answer[len..], br#"{"error":"bad_request"}"#);
    assert_eq!(response.headers[1].value, b"23");
    assert!(!response.headers[3].value.is_empty());
});
