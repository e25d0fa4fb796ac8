//! SPEC §4: "The checks run in the order of this table, top to bottom". Each row has its own
//! test elsewhere; here every combination of the table's stateless faults (path, method,
//! client address, size, content coding, proof, platform JSON) is sent to every platform,
//! over HTTP/1.1 with a `content-length` (with and without `expect: 100-continue`), HTTP/1.1
//! chunked and HTTP/2, and the answer must be
//! the first fault's row, with nothing forwarded unless there was no fault at all.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::HeaderMap;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MAX_BODY: usize = 2048;
const TOKEN: &str = "order-test-token";

/// The faults, in the table's order, each with the status it must give when it comes first.
const FAULTS: [(&str, u16, &str); 7] = [
    ("path", 404, "not_found"),
    ("method", 405, "method_not_allowed"),
    ("client", 403, "forbidden"),
    ("size", 413, "payload_too_large"),
    ("coding", 415, "unsupported_media_type"),
    ("proof", 401, "unauthorized"),
    ("json", 400, "bad_request"),
];

#[derive(Clone, Copy, Debug)]
enum Wire {
    ContentLength,
    /// With `expect: 100-continue`: the body goes only after a `100 Continue`.
    Expect,
    Chunked,
    Http2,
}

fn has(faults: u8, name: &str) -> bool {
    let i = FAULTS
        .iter()
        .position(|(n, ..)| *n == name)
        .expect("a fault");
    faults & (1 << i) != 0
}

/// The request a case sends: method, path, headers and body.
struct Case {
    method: &'static str,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

/// The body of `platform` for delivery `n`: its own JSON, or (`json` fault) a JSON object
/// that is not, padded past `MAX_BODY` (`size` fault); barertc's proof is inside it.
fn body(platform: &str, n: usize, faults: u8) -> Vec<u8> {
    let pad = if has(faults, "size") {
        "x".repeat(MAX_BODY + 100)
    } else {
        String::new()
    };
    let own = !has(faults, "json");
    let key = if has(faults, "proof") {
        "not-the-key"
    } else {
        TOKEN
    };
    let value = match (platform, own) {
        ("protocol", true) => {
            json!({"id": format!("e{n}"), "type": "message.created", "payload": {"id": "m", "pad": pad}})
        }
        ("protocol", false) => json!({"id": format!("e{n}"), "kind": "message", "pad": pad}),
        ("spika", true) => json!({"message": {"id": format!("e{n}"), "roomId": 1}, "pad": pad}),
        ("spika", false) => json!({"message": format!("e{n}"), "pad": pad}),
        ("funtek", true) => {
            json!({"event": "MESSAGE", "roomID": "r", "data": {"id": format!("e{n}")}, "pad": pad})
        }
        ("funtek", false) => json!({"event": 5, "data": {"id": format!("e{n}")}, "pad": pad}),
        ("barertc", true) => {
            json!({"Action": "profile", "APIKey": key, "Username": format!("e{n}"), "pad": pad})
        }
        ("barertc", false) => json!({"Action": 5, "APIKey": key, "pad": pad}),
        _ => unreachable!("a platform of the config"),
    };
    serde_json::to_vec(&value).expect("json")
}

fn case(platform: &str, n: usize, faults: u8) -> Case {
    let body = body(platform, n, faults);
    let mut headers = vec![("content-type".to_owned(), "application/json".to_owned())];
    let client = if has(faults, "client") {
        "198.51.100.7"
    } else {
        "203.0.113.9"
    };
    headers.push(("x-forwarded-for".to_owned(), client.to_owned()));
    if has(faults, "coding") {
        headers.push(("content-encoding".to_owned(), "gzip".to_owned()));
    }
    let key = if has(faults, "proof") {
        "not-the-key"
    } else {
        TOKEN
    };
    match platform {
        "protocol" => headers.push(("x-protocol-signature".to_owned(), hmac_hex(key, &body))),
        "spika" => headers.push(("verification-signature".to_owned(), key.to_owned())),
        "funtek" => headers.push(("x-webhook-token".to_owned(), key.to_owned())),
        _ => {} // barertc: in the body
    }
    let path = if has(faults, "path") {
        format!("/elsewhere/{platform}")
    } else {
        format!("/hooks/{platform}")
    };
    let method = if has(faults, "method") { "PUT" } else { "POST" };
    Case {
        method,
        path,
        headers,
        body,
    }
}

/// The answer's status, headers and body, sent as `wire` on a new connection.
async fn exchange(gw: &Gateway, case: &Case, wire: Wire) -> Answer {
    match wire {
        Wire::Http2 => {
            let (mut sender, _connection) = h2_connect(gw.addr).await;
            let mut req = http::Request::builder()
                .method(case.method)
                .version(http::Version::HTTP_2)
                .uri(gw.url(&case.path));
            for (k, v) in &case.headers {
                req = req.header(k, v);
            }
            let req = req
                .body(http_body_util::Full::new(Bytes::from(case.body.clone())))
                .expect("request");
            collect(sender.send_request(req).await.expect("h2 answer")).await
        }
        Wire::ContentLength | Wire::Expect | Wire::Chunked => {
            let mut head = format!(
                "{} {} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n",
                case.method, case.path
            );
            for (k, v) in &case.headers {
                head.push_str(&format!("{k}: {v}\r\n"));
            }
            let mut bytes = head.into_bytes();
            if let Wire::Chunked = wire {
                bytes.extend_from_slice(b"transfer-encoding: chunked\r\n\r\n");
                // Two chunks, so a streamed body's size is only known from the second.
                let (a, b) = case.body.split_at(case.body.len() / 2);
                for chunk in [a, b] {
                    bytes.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                    bytes.extend_from_slice(chunk);
                    bytes.extend_from_slice(b"\r\n");
                }
                bytes.extend_from_slice(b"0\r\n\r\n");
            } else {
                if let Wire::Expect = wire {
                    bytes.extend_from_slice(b"expect: 100-continue\r\n");
                }
                bytes.extend_from_slice(
                    format!("content-length: {}\r\n\r\n", case.body.len()).as_bytes(),
                );
            }
            let mut out = Vec::new();
            let mut stream = connect_and_write(gw.addr, &bytes).await;
            if let Wire::Expect = wire {
                // The body only after `100 Continue`; a final answer instead ends the exchange.
                let mut buf = Vec::new();
                let continued = loop {
                    if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        if buf.starts_with(b"HTTP/1.1 100 ") {
                            buf.drain(..end + 4);
                            break true;
                        }
                        break false;
                    }
                    let mut chunk = [0u8; 4096];
                    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut chunk))
                        .await
                        .expect("an interim or final answer within 5 s")
                        .expect("read");
                    if n == 0 {
                        break false;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                };
                out = buf;
                if continued {
                    stream.write_all(&case.body).await.expect("write body");
                }
            } else if let Wire::ContentLength = wire {
                stream.write_all(&case.body).await.expect("write body");
            }
            tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out))
                .await
                .expect("the gateway answered and closed within 5 s")
                .expect("read");
            parse_answer(&out)
        }
    }
}

/// An HTTP/1.1 answer read to the connection's end (its body is the rest).
fn parse_answer(raw: &[u8]) -> Answer {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no whole head in {:?}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8_lossy(&raw[..end]);
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let mut headers = HeaderMap::new();
    for line in lines {
        let (k, v) = line.split_once(':').expect("a header line");
        headers.append(
            http::HeaderName::from_bytes(k.trim().as_bytes()).expect("name"),
            http::HeaderValue::from_str(v.trim()).expect("value"),
        );
    }
    Answer {
        status,
        headers,
        body: Bytes::copy_from_slice(&raw[end + 4..]),
    }
}

/// The error body hookgate writes for `code` with `status` on `platform`'s path (SPEC §4:
/// on a barertc source's path also what BareRTC's profile parser reads).
fn error_body(platform: Option<&str>, status: u16, code: &str) -> Value {
    match platform {
        Some("barertc") => {
            json!({"error": code, "StatusCode": status, "Data": {"OK": false, "Error": code}})
        }
        _ => json!({"error": code}),
    }
}

#[tokio::test]
async fn every_combination_of_faults_gets_the_first_rows_answer() {
    let upstream = spawn_upstream(Reply::json(200, r#"{"ok":true}"#)).await;
    let platforms = ["protocol", "spika", "funtek", "barertc"];
    let mut config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nmax_body_bytes = {MAX_BODY}\n\
         trusted_proxies = [\"127.0.0.0/8\"]\n\n[upstream]\nurl = {:?}\n",
        upstream.url("/app")
    );
    for p in platforms {
        config.push_str(&format!(
            "\n[[source]]\nname = \"{p}\"\nplatform = \"{p}\"\npath = \"/hooks/{p}\"\n\
             secrets = [\"{TOKEN}\"]\nallow_cidrs = [\"203.0.113.0/24\"]\ndedupe_window_s = 0\n"
        ));
    }
    let gw = spawn_gateway(&config).await;

    let mut n = 0;
    let mut forwarded = Vec::new();
    for wire in [
        Wire::ContentLength,
        Wire::Expect,
        Wire::Chunked,
        Wire::Http2,
    ] {
        for platform in platforms {
            for faults in 0..(1u8 << FAULTS.len()) {
                n += 1;
                let what = format!("{wire:?} {platform} faults {faults:07b}");
                let a = exchange(&gw, &case(platform, n, faults), wire).await;
                let first = (0..FAULTS.len()).find(|i| faults & (1 << i) != 0);
                let Some(first) = first else {
                    assert_eq!(a.status, 200, "{what}: {:?}", a.body);
                    assert_eq!(&a.body[..], br#"{"ok":true}"#, "{what}");
                    forwarded.push(format!("e{n}"));
                    continue;
                };
                let (name, status, code) = FAULTS[first];
                assert_eq!(
                    a.status, status,
                    "{what}: the {name} fault comes first: {:?}",
                    a.body
                );
                let source = (name != "path").then_some(platform);
                assert_eq!(a.json(), error_body(source, status, code), "{what}");
                assert_eq!(a.header("content-type"), Some("application/json"), "{what}");
                assert!(a.header("x-request-id").is_some(), "{what}");
                if status == 405 {
                    assert_eq!(a.header("allow"), Some("POST"), "{what}");
                }
            }
        }
    }
    // Only the deliveries with no fault reached the app, each once.
    upstream.wait_for_requests(forwarded.len()).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut seen: Vec<String> = upstream
        .requests()
        .iter()
        .map(|r| {
            let event = r.json();
            // barertc's profile request has no own id: its subject is the username we set.
            match event["platform"].as_str() {
                Some("barertc") => event["subject"]["id"].as_str().unwrap_or("").to_owned(),
                _ => event["id"].as_str().unwrap_or("").to_owned(),
            }
        })
        .collect();
    seen.sort();
    forwarded.sort();
    assert_eq!(seen, forwarded);
    assert_eq!(forwarded.len(), 16, "4 platforms × 4 wires");
}
