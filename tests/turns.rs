//! Connections that carry one exchange after another, through every ordered pair of what
//! can happen on them (a de Bruijn walk):
//! - one worker's upstream pool, through what apps do: each delivery must get its own
//!   answer (the app echoes the event id) or its own failure, whatever the exchange before
//!   it on the same pool did: closed, cut, timed out, answered early, or sent bytes past its
//!   answer, at once or while the connection sat idle;
//! - a sender's kept-alive HTTP/1.1 connection, through deliveries and refusals: each gets
//!   its own status, and the connection stays open exactly when the answer does not say
//!   `connection: close` (a refused request's body is read and dropped, so that the next can
//!   follow; one whose body will never be read ends the connection).

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SECRET: &str = "turns-secret";
/// The gateway's `timeout_ms`; a `slow` answer comes a second later than that. Both with
/// room for a loaded CI machine: a healthy exchange takes a few milliseconds.
const TIMEOUT_MS: u64 = 400;

/// What the app does with a delivery, named by the first part of its event id, and what
/// the sender must get: the status, and whether the body is the app's echo of the id.
const KINDS: [(&str, u16, bool); 12] = [
    ("ok", 200, true),
    ("close", 200, true),   // `connection: close`, then closes
    ("eof", 200, true),     // no length: the body runs to the connection's end
    ("chunked", 200, true), // in two chunks, with a trailer
    ("interim", 200, true), // `100 Continue` and `103 Early Hints` first
    ("early", 413, true),   // answers from the head, the body unread, and closes
    ("drop", 502, false),   // reads the request, closes without a word
    ("garbage", 502, false),
    ("cut", 502, false),   // half an answer, then a reset
    ("slow", 504, false),  // answers on the same connection after `timeout_ms`
    ("extra", 200, true),  // bytes past the answer, in the same write
    ("chatty", 200, true), // an answer of its own on the idle connection, 20 ms later
];

/// How many `chatty` answers of its own the app has sent.
static CHATTED: AtomicUsize = AtomicUsize::new(0);

fn echo(id: &str) -> String {
    format!("{{\"for\":\"{id}\"}}")
}

fn with_length(status: &str, extra: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\n{extra}content-length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// Serves one connection as each delivery's kind says, until the connection or the kind
/// ends it.
async fn serve(mut s: TcpStream) {
    let mut buf = Vec::new();
    loop {
        if !read_head_into(&mut s, &mut buf).await {
            return;
        }
        let end = buf
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map_or(0, |p| p + 4);
        let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
        let field = |name: &str| {
            head.lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_owned())
                .unwrap_or_default()
        };
        let length: usize = field("content-length:").parse().unwrap_or(0);
        let id = field("x-hookgate-event-id:");
        let kind = id.split('-').next().unwrap_or("").to_owned();
        let body = echo(&id);
        if kind == "early" {
            let answer = with_length("413 Payload Too Large", "connection: close\r\n", &body);
            let _ = s.write_all(answer.as_bytes()).await;
            return;
        }
        buf.drain(..end);
        while buf.len() < length {
            let mut piece = [0u8; 4096];
            match s.read(&mut piece).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&piece[..n]),
            }
        }
        buf.drain(..length);
        let answer = match kind.as_str() {
            "close" => with_length("200 OK", "connection: close\r\n", &body),
            "eof" => format!("HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n{body}"),
            "chunked" => {
                let (a, b) = body.split_at(3);
                format!(
                    "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
                     {:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\nx-trailer: 1\r\n\r\n",
                    a.len(),
                    b.len()
                )
            }
            "interim" => format!(
                "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </x>\r\n\r\n{}",
                with_length("200 OK", "", &body)
            ),
            "drop" => return,
            "garbage" => "HTTP/1.1 2000 Nope\r\n\r\n".to_owned(),
            "cut" => {
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{\"part")
                    .await;
                let _ = s.set_zero_linger();
                return;
            }
            "slow" => {
                tokio::time::sleep(Duration::from_millis(TIMEOUT_MS + 1000)).await;
                with_length("200 OK", "", &body)
            }
            "extra" => {
                with_length("200 OK", "", &body) + &with_length("200 OK", "", &echo("stale"))
            }
            "chatty" => {
                let _ = s
                    .write_all(with_length("200 OK", "", &body).as_bytes())
                    .await;
                tokio::time::sleep(Duration::from_millis(20)).await;
                let stale = with_length("200 OK", "", &echo("stale"));
                let _ = s.write_all(stale.as_bytes()).await;
                CHATTED.fetch_add(1, Ordering::SeqCst);
                continue;
            }
            _ => with_length("200 OK", "", &body),
        };
        if s.write_all(answer.as_bytes()).await.is_err() {
            return;
        }
        if matches!(kind.as_str(), "close" | "eof" | "garbage") {
            return;
        }
    }
}

/// A de Bruijn sequence over `n` symbols of order 2: every ordered pair (a symbol after
/// itself too) appears once as neighbours, in n² + 1 steps once the first is repeated.
fn every_pair(n: usize) -> Vec<usize> {
    fn db(t: usize, p: usize, n: usize, a: &mut [usize; 3], out: &mut Vec<usize>) {
        if t > 2 {
            if 2 % p == 0 {
                out.extend_from_slice(&a[1..=p]);
            }
        } else {
            a[t] = a[t - p];
            db(t + 1, p, n, a, out);
            for j in a[t - p] + 1..n {
                a[t] = j;
                db(t + 1, t, n, a, out);
            }
        }
    }
    let mut out = Vec::new();
    db(1, 1, n, &mut [0; 3], &mut out);
    out.push(out[0]);
    out
}

#[test]
fn the_walk_holds_every_pair_once() {
    let walk = every_pair(KINDS.len());
    assert_eq!(walk.len(), KINDS.len() * KINDS.len() + 1);
    let mut pairs: Vec<(usize, usize)> = walk.windows(2).map(|w| (w[0], w[1])).collect();
    pairs.sort();
    pairs.dedup();
    assert_eq!(pairs.len(), KINDS.len() * KINDS.len());
}

#[tokio::test]
async fn each_delivery_gets_its_own_answer_whatever_the_one_before_did() {
    let app = raw_app(serve).await;
    let config = one_source(
        &format!("http://{app}/"),
        "protocol",
        "/hooks/p",
        &[SECRET],
        "dedupe_window_s = 0",
    )
    .replace(
        "timeout_ms = 5000",
        &format!("timeout_ms = {TIMEOUT_MS}\nconnect_retry_ms = 0"),
    );
    // One worker: one pool, so each delivery takes the connection the one before left.
    let (gw, _metrics) = spawn_gateway_with_metrics(&config, "turns", Some(1)).await;

    let mut wrong = Vec::new();
    let mut chatted = 0;
    for (n, k) in every_pair(KINDS.len()).into_iter().enumerate() {
        let (kind, status, echoed) = KINDS[k];
        let id = format!("{kind}-{n}");
        let body = format!(r#"{{"id":"{id}","type":"message.created","payload":{{}}}}"#);
        let a = signed_delivery(gw.addr, "/hooks/p", SECRET, body).await;
        let want = (status, echoed.then(|| echo(&id)));
        let got = (
            a.status,
            echoed.then(|| String::from_utf8_lossy(&a.body).into_owned()),
        );
        if got != want {
            wrong.push(format!("{id}: got {got:?}, want {want:?}"));
        }
        if kind == "chatty" {
            // Its extra answer arrives while the connection is idle in the pool (and the
            // gateway's worker, idle too, has taken in that the socket is readable).
            chatted += 1;
            let deadline = Instant::now() + Duration::from_secs(5);
            while CHATTED.load(Ordering::SeqCst) < chatted {
                assert!(Instant::now() < deadline, "the app sent no extra answer");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

/// What a sender does on a kept-alive HTTP/1.1 connection, what it must get, and whether
/// the answer ends the connection (`connection: close`).
const SENDS: [(&str, u16, bool); 12] = [
    ("ok", 200, false),
    ("chunked", 200, false),
    ("expect", 200, false), // `expect: 100-continue`, the body after `100 Continue`
    ("unknown_path", 404, false), // its body read and dropped
    ("put", 405, false),    // likewise
    ("put_chunked", 405, false), // likewise, chunked
    ("outside", 403, false), // a client outside allow_cidrs (a trusted proxy says so)
    ("gzip", 415, false),   // its body read and dropped
    ("forged", 401, false),
    ("not_json", 400, false),
    ("expect_refused", 404, true), // waits for `100 Continue`: its body never comes
    ("too_large", 413, true),      // a declared length over max_body_bytes: never read
];

/// The bytes of send `kind`, number `n` (its event id `t{n}`).
fn request(kind: &str, n: usize) -> Vec<u8> {
    let body = format!(r#"{{"id":"t{n}","type":"message.created","payload":{{}}}}"#);
    let sig = hmac_hex(SECRET, body.as_bytes());
    let head = |method: &str, path: &str, extra: &str| {
        format!("{method} {path} HTTP/1.1\r\nhost: x\r\nx-protocol-signature: {sig}\r\n{extra}")
    };
    let sized = |method: &str, path: &str, extra: &str, body: &str| {
        format!(
            "{}content-length: {}\r\n\r\n{body}",
            head(method, path, extra),
            body.len()
        )
    };
    let chunked = |method: &str| {
        let (a, b) = body.split_at(10);
        format!(
            "{}transfer-encoding: chunked\r\n\r\n{:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n",
            head(method, "/hooks/p", ""),
            a.len(),
            b.len()
        )
    };
    let text = match kind {
        "ok" => sized("POST", "/hooks/p", "", &body),
        "chunked" => chunked("POST"),
        "expect" | "expect_refused" => {
            let path = if kind == "expect" {
                "/hooks/p"
            } else {
                "/nope"
            };
            format!(
                "{}expect: 100-continue\r\ncontent-length: {}\r\n\r\n",
                head("POST", path, ""),
                body.len()
            )
        }
        "unknown_path" => sized("POST", "/nope", "", &body),
        "put" => sized("PUT", "/hooks/p", "", &body),
        "put_chunked" => chunked("PUT"),
        "outside" => sized(
            "POST",
            "/hooks/p",
            "x-forwarded-for: 198.51.100.1\r\n",
            &body,
        ),
        "gzip" => sized("POST", "/hooks/p", "content-encoding: gzip\r\n", &body),
        "forged" => sized("POST", "/hooks/p", "", &body.replace("t", "T")),
        "not_json" => {
            let sig = hmac_hex(SECRET, b"not json");
            format!(
                "POST /hooks/p HTTP/1.1\r\nhost: x\r\nx-protocol-signature: {sig}\r\n\
                 content-length: 8\r\n\r\nnot json"
            )
        }
        "too_large" => format!(
            "{}content-length: 5000\r\n\r\n",
            head("POST", "/hooks/p", "")
        ),
        _ => unreachable!("a kind of SENDS"),
    };
    text.into_bytes()
}

/// Reads one answer off `s` (its head and its `content-length` body): the status and
/// whether it says `connection: close`; `None` if the connection ends first.
async fn answer(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<(u16, bool)> {
    let message = tokio::time::timeout(Duration::from_secs(5), read_message(s, buf))
        .await
        .expect("an answer within 5 s")?;
    let head = String::from_utf8_lossy(&message).to_lowercase();
    let status = head.get(9..12)?.parse().ok()?;
    Some((status, head.contains("\r\nconnection: close\r\n")))
}

#[tokio::test]
async fn a_kept_alive_connection_carries_every_pair_of_requests_and_refusals() {
    let upstream = spawn_upstream(Reply::json(200, r#"{"ok":true}"#)).await;
    let config = protocol_source(
        &upstream.url("/"),
        SECRET,
        "dedupe_window_s = 0\nallow_cidrs = [\"127.0.0.0/8\"]",
        "max_body_bytes = 1000\ntrusted_proxies = [\"127.0.0.1\"]",
    );
    let gw = spawn_gateway(&config).await;

    let mut s = TcpStream::connect(gw.addr).await.expect("connect");
    let mut buf = Vec::new();
    let mut forwarded = Vec::new();
    let mut wrong = Vec::new();
    for (n, k) in every_pair(SENDS.len()).into_iter().enumerate() {
        let (kind, status, closes) = SENDS[k];
        s.write_all(&request(kind, n)).await.expect("write");
        let mut got = answer(&mut s, &mut buf).await;
        if kind == "expect" && got == Some((100, false)) {
            let body = format!(r#"{{"id":"t{n}","type":"message.created","payload":{{}}}}"#);
            s.write_all(body.as_bytes()).await.expect("write body");
            got = answer(&mut s, &mut buf).await;
        }
        if got != Some((status, closes)) {
            wrong.push(format!(
                "{n} {kind}: got {got:?}, want {:?}",
                (status, closes)
            ));
        }
        if status == 200 {
            forwarded.push(format!("t{n}"));
        }
        if closes || got.is_none() {
            // The connection ends here: the next request goes on a new one.
            let mut rest = Vec::new();
            let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest));
            assert!(
                read.await.is_ok(),
                "{n} {kind}: the connection was left open"
            );
            s = TcpStream::connect(gw.addr).await.expect("connect");
            buf.clear();
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    assert_eq!(upstream.event_ids(), forwarded);
}
