//! SPEC §4: "The checks run in the order of this table, top to bottom; a request that fails
//! one is not counted by the later ones". Each row has its own test elsewhere; here
//! combinations of the table's faults are sent to every platform, over HTTP/1.1 with a
//! `content-length` (with and without `expect: 100-continue`), HTTP/1.1 chunked and HTTP/2
//! (a connection each, and all at once over one).
//! Each answer must be its first fault's row; only deliveries with no fault before the
//! upstream's reach the app; and the client rate limit must have counted the request exactly
//! when no row above it refused it.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::HeaderMap;
use http_body_util::Full;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use hookgate::limit::LimitClock;

const MAX_BODY: usize = 2048;
const TOKEN: &str = "order-test-token";
const PLATFORMS: [&str; 4] = ["protocol", "spika", "funtek", "barertc"];
/// The client whose one request of `client_rate_limit` is used up before the cases.
const LIMITED_CLIENT: &str = "10.255.255.254";

/// The faults in the table's order, each with the status and error code it gives when it
/// comes first (`duplicate`: 200 with `x-hookgate-duplicate`).
const FAULTS: [(&str, u16, &str); 11] = [
    ("path", 404, "not_found"),
    ("method", 405, "method_not_allowed"),
    ("client", 403, "forbidden"),
    ("client_limited", 429, "rate_limited"),
    ("size", 413, "payload_too_large"),
    ("coding", 415, "unsupported_media_type"),
    ("proof", 401, "unauthorized"),
    ("json", 400, "bad_request"),
    ("source_limited", 429, "rate_limited"),
    ("duplicate", 200, ""),
    ("upstream", 502, "bad_gateway"),
];

type Faults = u16;

fn has(faults: Faults, name: &str) -> bool {
    let i = FAULTS
        .iter()
        .position(|(n, ..)| *n == name)
        .expect("a fault");
    faults & (1 << i) != 0
}

fn first_fault(faults: Faults) -> Option<(&'static str, u16, &'static str)> {
    (0..FAULTS.len())
        .find(|i| faults & (1 << i) != 0)
        .map(|i| FAULTS[i])
}

/// The combinations sent: every subset of the seven faults that need no state, and every
/// subset of at most three of all eleven: 296, each on 4 platforms over 5 wires (5,920
/// requests), 2,720 of them followed by their client's next request.
fn combinations() -> Vec<Faults> {
    (0..(1 as Faults) << FAULTS.len())
        .filter(|f| *f < 1 << 7 || f.count_ones() <= 3)
        .collect()
}

#[derive(Clone, Debug)]
enum Wire {
    ContentLength,
    /// With `expect: 100-continue`: the body goes only after a `100 Continue`.
    Expect,
    Chunked,
    /// A new HTTP/2 connection.
    Http2,
    /// Streams of one HTTP/2 connection, many at once.
    SharedHttp2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

/// The request a case sends.
struct Case {
    method: &'static str,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

/// The source a case goes to: each platform has one with a used-up `rate_limit`.
fn source_path(platform: &str, limited: bool) -> String {
    if limited {
        format!("/hooks/{platform}/limited")
    } else {
        format!("/hooks/{platform}")
    }
}

/// The name of the source at `source_path(platform, limited)`.
fn source_name(platform: &str, limited: bool) -> String {
    if limited {
        format!("{platform}-limited")
    } else {
        platform.to_owned()
    }
}

/// The id a source's first delivery (made before the cases) forwarded, for duplicates.
fn primed_id(platform: &str, limited: bool) -> String {
    format!("primed-{platform}-{limited}")
}

/// The proof a case carries: the source's secret, or (`proof` fault) another.
fn proof(faults: Faults) -> &'static str {
    if has(faults, "proof") {
        "not-the-key"
    } else {
        TOKEN
    }
}

/// The body of `platform` with event `id` (barertc: its profile's username): the platform's
/// own JSON, or (`json` fault) a JSON object that is not, padded past `MAX_BODY` (`size`
/// fault); barertc's proof is inside it.
fn body(platform: &str, id: &str, faults: Faults) -> Vec<u8> {
    let pad = if has(faults, "size") {
        "x".repeat(MAX_BODY + 100)
    } else {
        String::new()
    };
    let own = !has(faults, "json");
    let key = proof(faults);
    let value = match (platform, own) {
        ("protocol", true) => {
            json!({"id": id, "type": "message.created", "payload": {"id": "m", "pad": pad}})
        }
        ("protocol", false) => json!({"id": id, "kind": "message", "pad": pad}),
        ("spika", true) => json!({"message": {"id": id, "roomId": 1}, "pad": pad}),
        ("spika", false) => json!({"message": id, "pad": pad}),
        ("funtek", true) => {
            json!({"event": "MESSAGE", "roomID": "r", "data": {"id": id}, "pad": pad})
        }
        ("funtek", false) => json!({"event": 5, "data": {"id": id}, "pad": pad}),
        ("barertc", true) => {
            json!({"Action": "profile", "APIKey": key, "Username": id, "pad": pad})
        }
        ("barertc", false) => json!({"Action": 5, "APIKey": key, "Username": id, "pad": pad}),
        _ => unreachable!("a platform of the config"),
    };
    serde_json::to_vec(&value).expect("json")
}

/// Whether a funtek delivery carries its token in the URL's query (every other one) rather
/// than in `x-webhook-token`.
fn in_query(id: &str) -> bool {
    id.bytes().map(usize::from).sum::<usize>() % 2 == 0
}

/// A case's request for delivery `id` from `client`.
fn case(platform: &str, id: &str, client: &str, faults: Faults) -> Case {
    let limited = has(faults, "source_limited");
    let id = if has(faults, "duplicate") {
        primed_id(platform, limited)
    } else {
        id.to_owned()
    };
    let body = body(platform, &id, faults);
    let client = if has(faults, "client") {
        "198.51.100.7"
    } else if has(faults, "client_limited") {
        LIMITED_CLIENT
    } else {
        client
    };
    let agent = if has(faults, "upstream") {
        "fail"
    } else {
        "order-test"
    };
    let mut headers = vec![
        ("content-type".to_owned(), "application/json".to_owned()),
        ("x-forwarded-for".to_owned(), client.to_owned()),
        ("user-agent".to_owned(), agent.to_owned()),
    ];
    if has(faults, "coding") {
        headers.push(("content-encoding".to_owned(), "gzip".to_owned()));
    }
    let key = proof(faults);
    match platform {
        "protocol" => headers.push(("x-protocol-signature".to_owned(), hmac_hex(key, &body))),
        "spika" => headers.push(("verification-signature".to_owned(), key.to_owned())),
        "funtek" if !in_query(&id) => headers.push(("x-webhook-token".to_owned(), key.to_owned())),
        _ => {} // barertc: in the body
    }
    let mut path = if has(faults, "path") {
        format!("/elsewhere/{platform}")
    } else {
        source_path(platform, limited)
    };
    if platform == "funtek" && in_query(&id) {
        path.push_str(&format!("?token={key}"));
    }
    let method = if has(faults, "method") { "PUT" } else { "POST" };
    Case {
        method,
        path,
        headers,
        body,
    }
}

/// The answer to `case` sent as `wire` on a new connection.
async fn exchange(addr: SocketAddr, case: &Case, wire: Wire) -> Answer {
    match wire {
        Wire::Http2 => return h2_exchange(h2_connect(addr).await.0, addr, case).await,
        Wire::SharedHttp2(sender) => return h2_exchange(sender, addr, case).await,
        _ => {}
    }
    let mut head = format!(
        "{} {} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n",
        case.method, case.path
    );
    for (k, v) in &case.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    let mut bytes = head.into_bytes();
    match wire {
        Wire::Chunked => {
            bytes.extend_from_slice(b"transfer-encoding: chunked\r\n\r\n");
            // Two chunks, so a streamed body's size is only known from the second.
            let (a, b) = case.body.split_at(case.body.len() / 2);
            for chunk in [a, b] {
                bytes.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                bytes.extend_from_slice(chunk);
                bytes.extend_from_slice(b"\r\n");
            }
            bytes.extend_from_slice(b"0\r\n\r\n");
        }
        _ => {
            if let Wire::Expect = wire {
                bytes.extend_from_slice(b"expect: 100-continue\r\n");
            }
            bytes.extend_from_slice(
                format!("content-length: {}\r\n\r\n", case.body.len()).as_bytes(),
            );
        }
    }
    let mut stream = connect_and_write(addr, &bytes).await;
    let mut out = Vec::new();
    match wire {
        Wire::ContentLength => stream.write_all(&case.body).await.expect("write body"),
        // The body only after `100 Continue`; a final answer instead ends the exchange.
        Wire::Expect
            if read_head(&mut stream, &mut out).await && out.starts_with(b"HTTP/1.1 100 ") =>
        {
            out.clear();
            stream.write_all(&case.body).await.expect("write body");
        }
        _ => {}
    }
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out))
        .await
        .expect("the gateway answered and closed within 5 s")
        .expect("read");
    parse_answer(&out)
}

/// Reads into `buf` until it holds a whole head (`true`), or the connection ends.
async fn read_head(stream: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> bool {
    tokio::time::timeout(Duration::from_secs(5), read_head_into(stream, buf))
        .await
        .expect("an interim or final answer within 5 s")
}

async fn h2_exchange(
    mut sender: hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    addr: SocketAddr,
    case: &Case,
) -> Answer {
    let mut req = http::Request::builder()
        .method(case.method)
        .version(http::Version::HTTP_2)
        .uri(format!("http://{addr}{}", case.path));
    for (k, v) in &case.headers {
        req = req.header(k, v);
    }
    let req = req
        .body(Full::new(Bytes::from(case.body.clone())))
        .expect("request");
    collect(sender.send_request(req).await.expect("h2 answer")).await
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

fn contains_secret(bytes: &[u8]) -> bool {
    bytes.windows(TOKEN.len()).any(|w| w == TOKEN.as_bytes())
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

/// The app (the tests' recording upstream): it answers `{"ok":true}`, or, to a sender
/// whose user-agent is `fail`, an answer hookgate cannot relay (gzip-coded: 502).
async fn spawn_app() -> Upstream {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    spawn_upstream_answering(listener, |received| {
        let mut reply = Reply::json(200, r#"{"ok":true}"#);
        if received.header("user-agent") == Some("fail") {
            reply
                .headers
                .push(("content-encoding".into(), "gzip".into()));
        }
        reply
    })
}

/// The id of the event the app received (barertc's profile request: its username), marked
/// `LEAKED:` if the secret reached the app anywhere: a header, the URL or the event.
fn received_id(r: &Recorded) -> String {
    let event: Value = serde_json::from_slice(&r.body).unwrap_or_default();
    let id = match event["platform"].as_str() {
        Some("barertc") => &event["subject"]["id"],
        _ => &event["id"],
    };
    let id = id.as_str().unwrap_or("?");
    let leaked = contains_secret(&r.body)
        || contains_secret(r.uri.to_string().as_bytes())
        || r.headers.values().any(|v| contains_secret(v.as_bytes()));
    if leaked {
        format!("LEAKED:{id}")
    } else {
        id.to_owned()
    }
}

fn config(app: SocketAddr) -> String {
    let mut config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nmax_body_bytes = {MAX_BODY}\n\
         trusted_proxies = [\"127.0.0.0/8\"]\nclient_rate_limit = {{ per_second = 1, burst = 1 }}\n\n\
         [upstream]\nurl = \"http://{app}/app\"\nconnect_retry_ms = 0\n"
    );
    for p in PLATFORMS {
        for limited in [false, true] {
            let name = source_name(p, limited);
            let limit = if limited {
                "rate_limit = { per_second = 1, burst = 1 }\n"
            } else {
                ""
            };
            config.push_str(&format!(
                "\n[[source]]\nname = \"{name}\"\nplatform = \"{p}\"\npath = {:?}\n\
                 secrets = [\"{TOKEN}\"]\nallow_cidrs = [\"10.0.0.0/8\"]\ndedupe_window_s = 300\n{limit}",
                source_path(p, limited)
            ));
        }
    }
    config
}

/// A new client address of 10.0.0.0/8 for each `n`.
fn client(n: usize) -> String {
    format!("10.{}.{}.{}", (n >> 16) & 0xff, (n >> 8) & 0xff, n & 0xff)
}

/// Sends case `n` and checks its answer, then checks whether the client rate limit counted
/// it; says the status and the ids of the deliveries that reached the app.
async fn run_case(
    addr: SocketAddr,
    wire: Wire,
    platform: &'static str,
    faults: Faults,
    n: usize,
) -> Tally {
    let what = format!("{wire:?} {platform} faults {faults:011b}");
    let id = format!("e{n}");
    let fresh = client(n);
    let a = exchange(addr, &case(platform, &id, &fresh, faults), wire).await;
    let mut tally = Tally::default();
    let first = first_fault(faults);
    if first.is_none_or(|(name, ..)| name == "upstream") {
        tally.forwarded.push(id);
    }
    let source = if has(faults, "path") {
        String::new()
    } else {
        source_name(platform, has(faults, "source_limited"))
    };
    tally.answered(&source, a.status, first.map_or("", |(name, ..)| name));
    match first {
        None => {
            assert_eq!(a.status, 200, "{what}: {:?}", a.body);
            assert_eq!(&a.body[..], br#"{"ok":true}"#, "{what}");
        }
        Some(("duplicate", ..)) => {
            assert_eq!(a.status, 200, "{what}: {:?}", a.body);
            assert_eq!(a.header("x-hookgate-duplicate"), Some("true"), "{what}");
            assert_eq!(&a.body[..], b"{}", "{what}");
        }
        Some((name, status, code)) => {
            assert_eq!(
                a.status, status,
                "{what}: the {name} fault comes first: {:?}",
                a.body
            );
            let source = (name != "path").then_some(platform);
            assert_eq!(a.json(), error_body(source, status, code), "{what}");
            assert_eq!(a.header("content-type"), Some("application/json"), "{what}");
            if status == 405 {
                assert_eq!(a.header("allow"), Some("POST"), "{what}");
            }
            if status == 429 {
                assert_eq!(a.header("retry-after"), Some("1"), "{what}");
            }
        }
    }
    assert!(a.header("x-request-id").is_some(), "{what}");
    assert!(
        !contains_secret(&a.body) && !a.headers.values().any(|v| contains_secret(v.as_bytes())),
        "{what}: the answer holds the secret"
    );

    // The client's one request: used up by this case unless a row above the client limit
    // refused it (or the case came from another address).
    if has(faults, "client") || has(faults, "client_limited") {
        return tally;
    }
    let counted = !matches!(first, Some(("path" | "method", ..)));
    let next = format!("f{n}");
    let again = exchange(addr, &case(platform, &next, &fresh, 0), Wire::ContentLength).await;
    let want = if counted { 429 } else { 200 };
    assert_eq!(
        again.status, want,
        "{what}: the next request from its client"
    );
    if counted {
        tally.answered(platform, 429, "client_limited");
    } else {
        tally.answered(platform, 200, "");
        tally.forwarded.push(next);
    }
    tally
}

/// What cases add up to: the ids that reached the app, the answers by status, and the
/// metrics' samples.
#[derive(Default)]
struct Tally {
    forwarded: Vec<String>,
    answers: HashMap<u16, usize>,
    metrics: Samples,
}

impl Tally {
    /// Counts an answer of `status` on `source` ("": no source), refused by `fault` ("":
    /// none), as the metrics must.
    fn answered(&mut self, source: &str, status: u16, fault: &str) {
        *self.answers.entry(status).or_default() += 1;
        let status = status.to_string();
        self.count(
            "hookgate_requests_total",
            &[("source", source), ("status", &status)],
        );
        match fault {
            "proof" => self.count(
                "hookgate_verification_failures_total",
                &[("source", source)],
            ),
            "client_limited" => self.count(
                "hookgate_rate_limited_total",
                &[("source", source), ("scope", "client")],
            ),
            "source_limited" => self.count(
                "hookgate_rate_limited_total",
                &[("source", source), ("scope", "source")],
            ),
            "duplicate" => self.count("hookgate_duplicates_total", &[("source", source)]),
            "upstream" => self.count(
                "hookgate_upstream_errors_total",
                &[("source", source), ("kind", "content_encoding")],
            ),
            _ => {}
        }
    }

    fn count(&mut self, name: &str, labels: &[(&str, &str)]) {
        *self.metrics.entry(sample(name, labels)).or_default() += 1.0;
    }

    fn add(&mut self, other: Tally) {
        self.forwarded.extend(other.forwarded);
        for (status, n) in other.answers {
            *self.answers.entry(status).or_default() += n;
        }
        for (key, v) in other.metrics {
            *self.metrics.entry(key).or_default() += v;
        }
    }
}

/// The scrape's non-zero samples of the families `expected` has.
fn counted(text: &str, expected: &Samples) -> Samples {
    scrape(text)
        .into_iter()
        .filter(|((name, _), v)| *v != 0.0 && expected.keys().any(|(n, _)| n == name))
        .collect()
}

#[tokio::test]
async fn every_combination_of_faults_gets_the_first_rows_answer() {
    let app = spawn_app().await;
    let dir = temp_dir("order");
    // The limits' clock stands still: a used-up budget stays used up.
    let context = hookgate::pipeline::Context {
        clock: LimitClock::fake(),
        ..Default::default()
    };
    let metrics = Arc::clone(&context.metrics);
    let gw = spawn_gateway_in_context(&config(app.addr), &dir, context).await;
    let mut n = 0;
    let mut tally = Tally::default();

    // Before the cases: each source forwards one delivery (whose id the duplicates reuse,
    // and which uses up the limited sources' budget), and LIMITED_CLIENT uses up its own.
    for platform in PLATFORMS {
        for limited in [false, true] {
            n += 1;
            let id = primed_id(platform, limited);
            let faults = if limited { 1 << 8 } else { 0 }; // source_limited: its path
            let a = exchange(
                gw.addr,
                &case(platform, &id, &client(n), faults),
                Wire::ContentLength,
            )
            .await;
            assert_eq!(a.status, 200, "priming {platform} {limited}: {:?}", a.body);
            tally.answered(&source_name(platform, limited), 200, "");
            tally.forwarded.push(id);
        }
    }
    let a = exchange(
        gw.addr,
        &case("protocol", "primed-client", LIMITED_CLIENT, 0),
        Wire::ContentLength,
    )
    .await;
    assert_eq!(a.status, 200);
    tally.answered("protocol", 200, "");
    tally.forwarded.push("primed-client".to_owned());

    for wire in [
        Wire::ContentLength,
        Wire::Expect,
        Wire::Chunked,
        Wire::Http2,
    ] {
        for platform in PLATFORMS {
            for faults in combinations() {
                n += 1;
                tally.add(run_case(gw.addr, wire.clone(), platform, faults, n).await);
            }
        }
    }
    // All at once over one HTTP/2 connection: each stream answered as it would be alone.
    let (sender, _connection) = h2_connect(gw.addr).await;
    let mut streams = tokio::task::JoinSet::new();
    for platform in PLATFORMS {
        for faults in combinations() {
            n += 1;
            let sender = sender.clone();
            let addr = gw.addr;
            streams.spawn(async move {
                run_case(addr, Wire::SharedHttp2(sender), platform, faults, n).await
            });
        }
    }
    while let Some(done) = streams.join_next().await {
        tally.add(done.expect("a case on the shared connection"));
    }
    // Exactly the deliveries with no fault before the upstream's reached the app, each once.
    let mut seen: Vec<String> = app.requests().iter().map(received_id).collect();
    seen.sort();
    tally.forwarded.sort();
    assert_eq!(seen, tally.forwarded);
    // Each answer counted under its source and status, each refusal under its metric.
    let counted = counted(&metrics.encode(), &tally.metrics);
    let mut keys: Vec<_> = tally.metrics.keys().chain(counted.keys()).collect();
    keys.sort();
    keys.dedup();
    let differ: Vec<_> = keys
        .into_iter()
        .filter(|k| tally.metrics.get(*k) != counted.get(*k))
        .map(|k| (k, tally.metrics.get(k), counted.get(k)))
        .collect();
    assert!(differ.is_empty(), "(sample, want, got): {differ:#?}");
    let answers = &tally.answers;
    // Every row was reached.
    for (_, status, _) in FAULTS {
        assert!(answers.contains_key(&status), "no {status}: {answers:?}");
    }
}
