//! One worker's upstream pool through every pair of app behaviours in turn: each delivery
//! must get its own answer (the app echoes the event id) or its own failure, whatever the
//! exchange before it on the same pool did: closed, cut, timed out, answered early, or sent
//! bytes past its answer, at once or while the connection sat idle.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SECRET: &str = "turns-secret";
/// The gateway's `timeout_ms`; a `slow` answer comes later than that.
const TIMEOUT_MS: u64 = 200;

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
                tokio::time::sleep(Duration::from_millis(TIMEOUT_MS + 100)).await;
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
        let got = post_signed_status_and_body(gw.addr, SECRET, &body).await;
        let want = (status, echoed.then(|| echo(&id)));
        let got = (got.0, echoed.then_some(got.1));
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

/// One signed delivery to /hooks/p: its status and body.
async fn post_signed_status_and_body(
    addr: std::net::SocketAddr,
    key: &str,
    body: &str,
) -> (u16, String) {
    let a = send(
        addr,
        "POST",
        "/hooks/p",
        &[("x-protocol-signature", &hmac_hex(key, body.as_bytes()))],
        body.to_owned(),
    )
    .await;
    (a.status, String::from_utf8_lossy(&a.body).into_owned())
}
