//! Abuse resistance on real sockets: both rate limits with governor's time on a fake clock,
//! Retry-After, the X-Forwarded-For rule, dedupe (2xx only, expiry), hostile slow clients,
//! and a bounded client table under a flood of addresses.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use hookgate::limit::LimitClock;

const SECRET: &str = "abuse-secret";

fn body(id: &str) -> String {
    format!(r#"{{"id":"{id}","type":"message.created","payload":{{}}}}"#)
}

/// `b` as a signed delivery to the gateway's `/hooks/p`, for hyper's HTTP/2 client.
fn signed_h2_request(gw: &Gateway, b: String) -> http::Request<http_body_util::Full<Bytes>> {
    http::Request::post(format!("http://{}/hooks/p", gw.addr))
        .header("x-protocol-signature", hmac_hex(SECRET, b.as_bytes()))
        .body(http_body_util::Full::new(Bytes::from(b)))
        .expect("request")
}

async fn deliver(gw: &Gateway, id: &str, extra: &[(&str, &str)]) -> Answer {
    let b = body(id);
    let sig = hmac_hex(SECRET, b.as_bytes());
    let mut headers = vec![("x-protocol-signature", sig.as_str())];
    headers.extend_from_slice(extra);
    send(gw.addr, "POST", "/hooks/p", &headers, Bytes::from(b)).await
}

async fn forged(gw: &Gateway, extra: &[(&str, &str)]) -> Answer {
    let mut headers = vec![("x-protocol-signature", "00")];
    headers.extend_from_slice(extra);
    send(
        gw.addr,
        "POST",
        "/hooks/p",
        &headers,
        Bytes::from(body("f")),
    )
    .await
}

async fn gateway(upstream: &Upstream, source: &str, server: &str, clock: &LimitClock) -> Gateway {
    let config = protocol_source(&upstream.url("/"), SECRET, source, server);
    let dir = temp_dir("abuse");
    spawn_gateway_with(&config, &dir, clock.clone())
        .await
        .keeping(dir)
}

#[tokio::test]
async fn client_rate_limit_counts_every_request_before_the_proof() {
    let clock = LimitClock::fake();
    let upstream = spawn_upstream(Reply::json(200, "{}")).await;
    let gw = gateway(
        &upstream,
        "rate_limit = { per_second = 1, burst = 1 }\ndedupe_window_s = 0",
        "client_rate_limit = { per_second = 1, burst = 2 }",
        &clock,
    )
    .await;
    assert_eq!(forged(&gw, &[]).await.status, 401);
    assert_eq!(forged(&gw, &[]).await.status, 401);
    let a = forged(&gw, &[]).await;
    assert_eq!((a.status, a.header("retry-after")), (429, Some("1")));
    assert_eq!(a.json(), serde_json::json!({"error":"rate_limited"}));
    // Even a genuine delivery from this client waits now.
    assert_eq!(deliver(&gw, "a", &[]).await.status, 429);
    assert!(upstream.requests().is_empty());
    clock.advance(Duration::from_secs(1));
    // The forged traffic did not use up the source's own budget.
    assert_eq!(deliver(&gw, "a", &[]).await.status, 200);
    assert_eq!(upstream.requests().len(), 1);
}

#[tokio::test]
async fn source_rate_limit_counts_verified_deliveries_only() {
    let clock = LimitClock::fake();
    let upstream = spawn_upstream(Reply::json(200, "{}")).await;
    let gw = gateway(
        &upstream,
        "rate_limit = { per_second = 1, burst = 2 }\ndedupe_window_s = 0",
        "",
        &clock,
    )
    .await;
    for _ in 0..5 {
        assert_eq!(forged(&gw, &[]).await.status, 401);
    }
    assert_eq!(deliver(&gw, "1", &[]).await.status, 200);
    assert_eq!(deliver(&gw, "2", &[]).await.status, 200);
    let a = deliver(&gw, "3", &[]).await;
    assert_eq!((a.status, a.header("retry-after")), (429, Some("1")));
    assert_eq!(upstream.requests().len(), 2);
    clock.advance(Duration::from_millis(999));
    assert_eq!(deliver(&gw, "3", &[]).await.status, 429);
    clock.advance(Duration::from_millis(1));
    assert_eq!(deliver(&gw, "3", &[]).await.status, 200);
}

#[tokio::test]
async fn retry_after_is_the_partial_wait_rounded_up_to_one_second() {
    let clock = LimitClock::fake();
    let upstream = spawn_upstream(Reply::json(200, "{}")).await;
    // 1 per second, burst 5: after the burst, the next cell is 1 s away.
    let gw = gateway(
        &upstream,
        "dedupe_window_s = 0",
        "client_rate_limit = { per_second = 1, burst = 5 }",
        &clock,
    )
    .await;
    for _ in 0..5 {
        assert_eq!(forged(&gw, &[]).await.status, 401);
    }
    clock.advance(Duration::from_millis(300));
    let a = forged(&gw, &[]).await;
    // 0.7 s left: sent as 1 (the rounding itself is unit-tested in `limit`).
    assert_eq!((a.status, a.header("retry-after")), (429, Some("1")));
}

#[tokio::test]
async fn client_limit_keys_on_the_forwarded_client_behind_a_trusted_proxy() {
    let clock = LimitClock::fake();
    let upstream = spawn_upstream(Reply::json(200, "{}")).await;
    let trusted = gateway(
        &upstream,
        "dedupe_window_s = 0",
        "client_rate_limit = { per_second = 1, burst = 1 }\ntrusted_proxies = [\"127.0.0.0/8\"]",
        &clock,
    )
    .await;
    let a = [("x-forwarded-for", "203.0.113.1")];
    let b = [("x-forwarded-for", "203.0.113.2")];
    assert_eq!(forged(&trusted, &a).await.status, 401);
    assert_eq!(forged(&trusted, &a).await.status, 429);
    assert_eq!(
        forged(&trusted, &b).await.status,
        401,
        "another client has its own bucket"
    );
    // Without trust, the header is ignored: everyone is the loopback peer.
    let untrusted = gateway(
        &upstream,
        "dedupe_window_s = 0",
        "client_rate_limit = { per_second = 1, burst = 1 }",
        &clock,
    )
    .await;
    assert_eq!(forged(&untrusted, &a).await.status, 401);
    assert_eq!(forged(&untrusted, &b).await.status, 429);
}

#[tokio::test]
async fn dedupe_answers_duplicates_and_lets_retries_after_failures_through() {
    let clock = LimitClock::fake();
    let upstream = spawn_upstream(Reply::json(500, r#"{"down":true}"#)).await;
    let gw = gateway(&upstream, "", "", &clock).await; // protocol: dedupe 300 s by default
    // Not 2xx: not remembered, so the sender's retry gets through.
    assert_eq!(deliver(&gw, "e1", &[]).await.status, 500);
    assert_eq!(deliver(&gw, "e1", &[]).await.status, 500);
    assert_eq!(upstream.requests().len(), 2);
    upstream.set_reply(Reply::json(200, r#"{"ok":1}"#));
    assert_eq!(deliver(&gw, "e1", &[]).await.status, 200);
    assert_eq!(upstream.requests().len(), 3);
    // Now a duplicate: 200 {} and a header, not forwarded.
    let a = deliver(&gw, "e1", &[]).await;
    assert_eq!(
        (a.status, &a.body[..], a.header("x-hookgate-duplicate")),
        (200, &b"{}"[..], Some("true"))
    );
    assert_eq!(upstream.requests().len(), 3);
    // Another id is not a duplicate.
    assert_eq!(
        deliver(&gw, "e2", &[]).await.header("x-hookgate-duplicate"),
        None
    );
    // The window does not grow with duplicates, and ends.
    clock.advance(Duration::from_secs(299));
    assert_eq!(
        deliver(&gw, "e1", &[]).await.header("x-hookgate-duplicate"),
        Some("true")
    );
    clock.advance(Duration::from_secs(1));
    let a = deliver(&gw, "e1", &[]).await;
    assert_eq!((a.status, a.header("x-hookgate-duplicate")), (200, None));
    assert_eq!(upstream.requests().len(), 5);
}

#[tokio::test]
async fn a_full_dedupe_table_forgets_the_oldest_ids_and_counts_them() {
    let upstream = spawn_upstream(Reply::json(200, "{}")).await;
    let config = protocol_source(&upstream.url("/"), SECRET, "dedupe_capacity = 2", "");
    let (gw, metrics) = spawn_gateway_with_metrics(&config, "dedupe-full", None).await;
    for id in ["a", "b", "c"] {
        assert_eq!(deliver(&gw, id, &[]).await.status, 200);
    }
    // "a" went out of the two-id table when "c" came: its retry is forwarded again, and
    // pushes "b" out in turn; "a" and "c" are held.
    let again = deliver(&gw, "a", &[]).await;
    assert_eq!(
        (again.status, again.header("x-hookgate-duplicate")),
        (200, None)
    );
    for id in ["c", "a"] {
        let a = deliver(&gw, id, &[]).await;
        assert_eq!(a.header("x-hookgate-duplicate"), Some("true"), "{id}");
    }
    assert_eq!(upstream.event_ids(), ["a", "b", "c", "a"]);
    let m = scrape(&metrics.encode());
    let source = [("source", "protocol")];
    assert_eq!(
        get(&m, "hookgate_dedupe_forgotten_early_total", &source),
        Some(2.0)
    );
    assert_eq!(get(&m, "hookgate_duplicates_total", &source), Some(2.0));
}

#[tokio::test]
async fn dedupe_off_by_default_for_senders_that_read_the_answer() {
    let upstream = spawn_upstream(Reply::json(200, "{}")).await;
    let gw = spawn_gateway(&one_source(&upstream.url("/"), "funtek", "/f", &["t"], "")).await;
    let b = r#"{"event":"MESSAGE","data":{"id":"same"}}"#;
    for _ in 0..3 {
        let a = send(
            gw.addr,
            "POST",
            "/f?token=t",
            &[],
            Bytes::from_static(b.as_bytes()),
        )
        .await;
        assert_eq!((a.status, a.header("x-hookgate-duplicate")), (200, None));
    }
    assert_eq!(upstream.requests().len(), 3);
}

#[tokio::test]
async fn two_copies_in_flight_are_both_forwarded() {
    let upstream = spawn_upstream(Reply::json(200, "{}").after(Duration::from_millis(300))).await;
    let gw = gateway(&upstream, "", "", &LimitClock::fake()).await;
    let (a, b) = tokio::join!(deliver(&gw, "twin", &[]), deliver(&gw, "twin", &[]));
    assert_eq!((a.status, b.status), (200, 200));
    assert_eq!(
        upstream.requests().len(),
        2,
        "at least once: neither copy held back"
    );
    assert_eq!(
        deliver(&gw, "twin", &[])
            .await
            .header("x-hookgate-duplicate"),
        Some("true")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_trickling_connections_do_not_block_a_genuine_delivery() {
    use tokio::io::AsyncWriteExt;
    let upstream = spawn_upstream(Reply::json(200, "{}")).await;
    let gw = gateway(
        &upstream,
        "",
        "header_timeout_s = 10\nbody_timeout_s = 10",
        &LimitClock::default(),
    )
    .await;
    // 500 slowloris heads and 500 slow POST bodies, each dribbling a byte every 200 ms.
    let mut trickles = Vec::new();
    for i in 0..1000 {
        let mut s = tokio::net::TcpStream::connect(gw.addr)
            .await
            .expect("connect");
        let head: &[u8] = if i % 2 == 0 {
            b"POST /hooks/p HTTP/1.1\r\nhost: x\r\n"
        } else {
            b"POST /hooks/p HTTP/1.1\r\nhost: x\r\ncontent-length: 100000\r\n\r\n{"
        };
        s.write_all(head).await.expect("write");
        trickles.push(tokio::spawn(async move {
            for _ in 0..50 {
                tokio::time::sleep(Duration::from_millis(200)).await;
                if s.write_all(b"x").await.is_err() {
                    return;
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let a = deliver(&gw, "genuine", &[]).await;
    let took = started.elapsed();
    assert_eq!(a.status, 200);
    assert!(
        took < Duration::from_secs(2),
        "a genuine delivery took {took:?}"
    );
    assert_eq!(upstream.requests().len(), 1);
    for t in trickles {
        t.abort();
    }
}

/// The process's resident set (VmRSS) in KiB.
#[cfg(target_os = "linux")]
fn resident_kib(pid: u32) -> u64 {
    proc_field(pid, "status", "VmRSS:", 0) as u64
}

/// glibc keeps freed blocks resident between ones in use: without a trim, a process that
/// held 2,000 connections' buffers (~40 MiB) stayed at that size after they had all gone.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_of_a_burst_of_connections_goes_back_to_the_system() {
    use tokio::io::AsyncWriteExt;
    let upstream = spawn_upstream(Reply::json(200, "{}")).await;
    let dir = temp_dir("burst-memory");
    let config = protocol_source(&upstream.url("/"), SECRET, "", "header_timeout_s = 60");
    let gw = spawn_process(&dir, &config, &[]);
    let pid = gw.child.id();
    let idle = resident_kib(pid);
    // Half a head each: hyper holds a read and a write buffer for every one.
    let mut held = Vec::new();
    for _ in 0..2000 {
        held.push(connect_and_write(gw.addr, b"POST /hooks/p HTTP/1.1\r\nhost: x\r\n").await);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while resident_kib(pid) < idle + 30 * 1024 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let peak = resident_kib(pid);
    assert!(
        peak >= idle + 30 * 1024,
        "2,000 connections took only {idle} -> {peak} KiB"
    );
    for mut s in held {
        let _ = s.shutdown().await;
    }
    // Housekeeping runs every 10 s.
    let deadline = Instant::now() + Duration::from_secs(25);
    let mut now = peak;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        now = resident_kib(pid);
        if now < idle + (peak - idle) / 4 {
            break;
        }
    }
    assert!(
        now < idle + (peak - idle) / 4,
        "RSS {idle} KiB idle, {peak} with the connections, still {now} 25 s after they closed"
    );
    // The trimmed heaps serve on.
    let b = body("after-the-trim");
    let a = signed_delivery(gw.addr, "/hooks/p", SECRET, b).await;
    assert_eq!(a.status, 200);
    assert_eq!(upstream.event_ids(), ["after-the-trim"]);
}

/// A gateway with `header_timeout_s = 1` in front of an upstream that answers `{}`.
async fn one_second_head_deadline() -> (Upstream, Gateway) {
    let upstream = spawn_upstream(Reply::json(200, "{}")).await;
    let gw = gateway(
        &upstream,
        "",
        "header_timeout_s = 1",
        &LimitClock::default(),
    )
    .await;
    (upstream, gw)
}

/// Starts a request head on `s` and keeps adding header lines to it (the deadline is for
/// the whole head, not per byte); whether the gateway closed the connection within `within`.
/// An answer to a head that never ended fails the test.
async fn dribble_head(s: &mut tokio::net::TcpStream, within: Duration) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let started = Instant::now();
    if s.write_all(b"POST /hooks/p HTTP/1.1\r\n").await.is_err() {
        return true;
    }
    let mut buf = [0u8; 256];
    while started.elapsed() < within {
        if s.write_all(b"x-a: b\r\n").await.is_err() {
            return true;
        }
        match tokio::time::timeout(Duration::from_millis(100), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(n)) => panic!(
                "answered a head that never ended: {}",
                String::from_utf8_lossy(&buf[..n])
            ),
            Err(_) => {}
        }
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_connections_are_cut_at_the_head_deadline() {
    let (_upstream, gw) = one_second_head_deadline().await;
    let mut s = tokio::net::TcpStream::connect(gw.addr)
        .await
        .expect("connect");
    let started = Instant::now();
    assert!(
        dribble_head(&mut s, Duration::from_secs(4)).await,
        "the slow head was not cut off"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

/// A new connection with one signed delivery of `body(id)` written on it, as raw HTTP/1.1.
async fn send_signed_raw(gw: &Gateway, id: &str) -> tokio::net::TcpStream {
    send_signed_raw_body(gw, &body(id)).await
}

/// Reads one answer (head and a `content-length` body) off a kept-alive connection.
async fn read_answer(s: &mut tokio::net::TcpStream) -> String {
    let answer = read_message(s, &mut Vec::new())
        .await
        .expect("closed before a whole answer");
    String::from_utf8_lossy(&answer).into_owned()
}

/// On a kept-alive connection the next head's deadline counts from the end of the previous
/// answer, however steadily its bytes trickle in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_second_head_on_a_kept_alive_connection_is_cut_off() {
    let (upstream, gw) = one_second_head_deadline().await;
    let mut s = send_signed_raw(&gw, "keepalive-1").await;
    let answer = tokio::time::timeout(Duration::from_secs(5), read_answer(&mut s))
        .await
        .expect("an answer in time");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let answered = Instant::now();
    assert!(
        dribble_head(&mut s, Duration::from_secs(4)).await,
        "the slow second head was not cut off"
    );
    let after = answered.elapsed();
    assert!(
        after >= Duration::from_millis(800) && after < Duration::from_secs(3),
        "{after:?}"
    );
    assert_eq!(upstream.requests().len(), 1);
}

/// `keepalive_timeout_s` (not in the contract): a kept-alive connection waits that long for
/// its next request, so a proxy in front whose idle connections live longer than
/// `header_timeout_s` does not meet the idle close, while a new connection must still send
/// its first head within `header_timeout_s`. Over HTTP/2 a connection with no stream open
/// is kept as long.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_timeout_keeps_idle_connections_past_the_head_deadline() {
    use tokio::io::AsyncWriteExt;
    let upstream = spawn_upstream(Reply::json(200, "{}")).await;
    let gw = gateway(
        &upstream,
        "",
        "header_timeout_s = 1\nkeepalive_timeout_s = 3",
        &LimitClock::default(),
    )
    .await;
    // A new connection that sends nothing: cut at the head deadline.
    let started = Instant::now();
    let mut silent = tokio::net::TcpStream::connect(gw.addr)
        .await
        .expect("connect");
    let mut nothing = Vec::new();
    assert!(read_message(&mut silent, &mut nothing).await.is_none());
    let cut = started.elapsed();
    assert!(cut < Duration::from_millis(2500), "{cut:?}");

    // A kept-alive connection idle for 2 s (past header_timeout_s) carries the next delivery.
    let mut s = send_signed_raw(&gw, "kept-1").await;
    assert!(read_answer(&mut s).await.starts_with("HTTP/1.1 200"));
    tokio::time::sleep(Duration::from_secs(2)).await;
    s.write_all(signed_post("/hooks/p", SECRET, &body("kept-2")).as_bytes())
        .await
        .expect("write");
    assert!(read_answer(&mut s).await.starts_with("HTTP/1.1 200"));
    // Idle past keepalive_timeout_s: closed.
    let answered = Instant::now();
    assert!(read_message(&mut s, &mut Vec::new()).await.is_none());
    let idle = answered.elapsed();
    assert!(
        idle >= Duration::from_millis(2800) && idle < Duration::from_millis(4500),
        "{idle:?}"
    );

    // HTTP/2: a connection idle for 2 s still takes a stream.
    let (mut sender, connection) = h2_connect(gw.addr).await;
    let request = |id: &str| signed_h2_request(&gw, body(id));
    let first = sender.send_request(request("h2-1")).await.expect("answer");
    assert_eq!(first.status(), 200);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let second = sender.send_request(request("h2-2")).await.expect("answer");
    assert_eq!(second.status(), 200);
    drop(sender);
    connection.abort();
    assert_eq!(upstream.requests().len(), 4);
}

/// A client still reading a long answer when the next head's deadline passes gets the
/// answer whole, however long it takes, as long as it keeps reading (no pause as long as
/// `body_timeout_s`); the connection is closed after it, not in the middle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_gets_the_whole_answer_before_the_idle_close() {
    use tokio::io::AsyncReadExt;
    // 16 MiB: more than loopback's socket buffers hold, so the gateway is still writing
    // when header_timeout_s passes, and for longer than body_timeout_s after it.
    let answer_body = format!("\"{}\"", "x".repeat(16 << 20));
    let upstream = spawn_upstream(Reply::json(200, &answer_body)).await;
    let gw = gateway(
        &upstream,
        "",
        "header_timeout_s = 1\nbody_timeout_s = 1\nmax_body_bytes = 33554432",
        &LimitClock::default(),
    )
    .await;
    let mut s = send_signed_raw(&gw, "slow-reader").await;
    let started = Instant::now();
    tokio::time::sleep(Duration::from_millis(500)).await;
    // 1 MiB every 200 ms: ~3.5 s in all.
    let mut got = Vec::new();
    let mut piece = vec![0u8; 1 << 20];
    loop {
        let mut filled = 0;
        while filled < piece.len() {
            match tokio::time::timeout(Duration::from_secs(5), s.read(&mut piece[filled..])).await {
                Ok(Ok(0)) => break,
                Ok(Ok(n)) => filled += n,
                Ok(Err(e)) => panic!("read: {e}"),
                Err(_) => panic!("the connection stayed open after the answer"),
            }
        }
        got.extend_from_slice(&piece[..filled]);
        if filled < piece.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        started.elapsed() > Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let split = got
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an answer head")
        + 4;
    let head = String::from_utf8_lossy(&got[..split]).to_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(
        head.contains(&format!("content-length: {}", answer_body.len())),
        "{head}"
    );
    assert_eq!(got.len() - split, answer_body.len(), "the answer was cut");
    assert!(got[split..] == *answer_body.as_bytes());
}

#[tokio::test]
async fn http2_connection_without_streams_is_closed_after_the_head_deadline() {
    let (_upstream, gw) = one_second_head_deadline().await;
    let (mut sender, conn_task) = h2_connect(gw.addr).await;
    // One request, then idle: the connection is closed (GOAWAY) after header_timeout_s.
    let b = body("h2");
    let sig = hmac_hex(SECRET, b.as_bytes());
    let req = http::Request::post(format!("http://{}/hooks/p", gw.addr))
        .version(http::Version::HTTP_2)
        .header("x-protocol-signature", sig)
        .body(http_body_util::Full::new(Bytes::from(b)))
        .expect("req");
    assert_eq!(
        collect(sender.send_request(req).await.expect("resp"))
            .await
            .status,
        200
    );
    let started = Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(5), conn_task).await;
    assert!(ended.is_ok(), "the idle HTTP/2 connection stayed open");
    assert!(
        started.elapsed() >= Duration::from_millis(800),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_from_100k_addresses_keeps_the_client_table_bounded() {
    let upstream = spawn_upstream(Reply::json(200, "{}")).await;
    let config = protocol_source(
        &upstream.url("/"),
        SECRET,
        "dedupe_window_s = 0",
        "client_rate_limit = { per_second = 1, burst = 1 }\ntrusted_proxies = [\"127.0.0.0/8\"]",
    );
    // The fake clock stands still, so housekeeping forgets no full bucket meanwhile: the
    // table shrinks only by evictions.
    let context = hookgate::pipeline::Context {
        clock: LimitClock::fake(),
        ..Default::default()
    };
    let metrics = std::sync::Arc::clone(&context.metrics);
    let dir = temp_dir("client-flood");
    let gw = spawn_gateway_in_context(&config, &dir, context).await;
    // 100 000 distinct client addresses over 64 kept-alive connections.
    use hyper_util::rt::TokioIo;
    let mut tasks = Vec::new();
    for c in 0..64u32 {
        let addr = gw.addr;
        tasks.push(tokio::spawn(async move {
            let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .expect("hs");
            tokio::spawn(conn);
            let mut i = c;
            while i < 100_000 {
                let ip = std::net::Ipv4Addr::from(0x0b00_0000 + i).to_string();
                let req = http::Request::post("/hooks/p")
                    .header("host", "x")
                    .header("x-forwarded-for", ip)
                    .header("x-protocol-signature", "00")
                    .body(http_body_util::Full::new(Bytes::from_static(b"{}")))
                    .expect("req");
                let status = sender.send_request(req).await.expect("resp").status();
                assert_eq!(status, 401);
                i += 64;
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let len = gw.server.gateway().client_table_len();
    assert!(
        len <= hookgate::limit::CLIENT_TABLE_CAPACITY,
        "client table grew to {len}"
    );
    assert!(
        len > 60_000,
        "the table should be near its capacity, not empty: {len}"
    );
    // Every address the table had no room for pushed one out, and each was counted.
    assert_eq!(
        get(
            &scrape(&metrics.encode()),
            "hookgate_client_table_evictions_total",
            &[]
        ),
        Some((100_000 - len) as f64)
    );
    eprintln!(
        "client table after 100 000 addresses: {len} entries (capacity {})",
        hookgate::limit::CLIENT_TABLE_CAPACITY
    );
}

/// SIGHUP re-reads the timeouts: a new connection after the reload has the new head deadline.
#[tokio::test]
async fn a_reload_applies_header_timeout_to_new_connections() {
    use tokio::io::AsyncReadExt;
    let upstream = spawn_upstream(Reply::json(200, "{}")).await;
    let config = |timeout: u64| {
        protocol_source(
            &upstream.url("/"),
            SECRET,
            "",
            &format!("header_timeout_s = {timeout}"),
        )
    };
    let dir = temp_dir("reload-header-timeout");
    let gw = spawn_gateway_with(&config(30), &dir, LimitClock::default()).await;
    // How long a connection that sends nothing stays open (capped at 5 s).
    let silent_for = || async {
        let mut s = tokio::net::TcpStream::connect(gw.addr)
            .await
            .expect("connect");
        let started = Instant::now();
        let mut buf = [0u8; 64];
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await;
        started.elapsed()
    };
    assert!(silent_for().await >= Duration::from_secs(5));
    std::fs::write(dir.join("hookgate.toml"), config(1)).expect("write");
    let reloaded = gw.server.reload().expect("reload");
    assert!(reloaded.later.is_empty(), "{reloaded:?}");
    let cut = silent_for().await;
    assert!(
        cut >= Duration::from_millis(800) && cut < Duration::from_secs(3),
        "{cut:?}"
    );
}

#[tokio::test]
async fn a_reload_keeps_dedupe_and_unchanged_rate_limit_state() {
    let clock = LimitClock::fake();
    let upstream = spawn_upstream(Reply::json(200, "{}")).await;
    let config =
        |extra: &str| one_source(&upstream.url("/"), "protocol", "/hooks/p", &[SECRET], extra);
    let dir = temp_dir("reload-state");
    let gw = spawn_gateway_with(
        &config("rate_limit = { per_second = 1, burst = 1 }"),
        &dir,
        clock.clone(),
    )
    .await;
    assert_eq!(deliver(&gw, "r1", &[]).await.status, 200);
    assert_eq!(deliver(&gw, "r2", &[]).await.status, 429);
    // Same name and rate_limit, another dedupe window: both kinds of state stay.
    std::fs::write(
        dir.join("hookgate.toml"),
        config("rate_limit = { per_second = 1, burst = 1 }\ndedupe_window_s = 600"),
    )
    .expect("write");
    gw.server.reload().expect("reload");
    assert_eq!(
        deliver(&gw, "r2", &[]).await.status,
        429,
        "the bucket was kept"
    );
    clock.advance(Duration::from_secs(1));
    let a = deliver(&gw, "r1", &[]).await;
    assert_eq!(
        a.header("x-hookgate-duplicate"),
        Some("true"),
        "the id was kept"
    );
    // A changed rate_limit starts a fresh bucket.
    std::fs::write(
        dir.join("hookgate.toml"),
        config("rate_limit = { per_second = 5, burst = 5 }\ndedupe_window_s = 600"),
    )
    .expect("write");
    gw.server.reload().expect("reload");
    assert_eq!(deliver(&gw, "r3", &[]).await.status, 200);
    assert_eq!(deliver(&gw, "r4", &[]).await.status, 200);
    assert_eq!(upstream.requests().len(), 3);
    // A smaller dedupe_capacity applies to the ids kept: the next one pushes the rest out.
    std::fs::write(
        dir.join("hookgate.toml"),
        config("dedupe_window_s = 600\ndedupe_capacity = 1"),
    )
    .expect("write");
    gw.server.reload().expect("reload");
    let a = deliver(&gw, "r4", &[]).await;
    assert_eq!(a.header("x-hookgate-duplicate"), Some("true"), "still kept");
    assert_eq!(deliver(&gw, "r5", &[]).await.status, 200);
    let a = deliver(&gw, "r4", &[]).await;
    assert_eq!((a.status, a.header("x-hookgate-duplicate")), (200, None));
    assert_eq!(upstream.event_ids(), ["r1", "r3", "r4", "r5", "r4"]);
}

/// SPEC §3 `max_connections`: past it a new connection waits, unserved, while the served
/// ones go on undisturbed; it is served once one of them closes. (Every worker accepts for
/// itself: the limit holds across them.)
#[tokio::test]
async fn past_max_connections_a_new_connection_waits_and_served_ones_go_on() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let upstream = spawn_upstream(Reply::json(200, "{}")).await;
    // The admin listener: its own limit, so a liveness probe there is answered meanwhile.
    let source = "[admin]\nlisten = \"127.0.0.1:0\"";
    let gw = gateway(
        &upstream,
        source,
        "max_connections = 2",
        &LimitClock::default(),
    )
    .await;
    let mut held = Vec::new();
    for id in ["a", "b"] {
        let mut s = send_signed_raw(&gw, id).await;
        assert!(read_answer(&mut s).await.starts_with("HTTP/1.1 200"));
        held.push(s);
    }
    let mut third = send_signed_raw(&gw, "c").await;
    let mut byte = [0u8; 1];
    assert!(
        tokio::time::timeout(Duration::from_millis(500), third.read(&mut byte))
            .await
            .is_err(),
        "a third connection was served past max_connections = 2"
    );
    let admin = gw.server.admin_addr.expect("admin");
    let health = tokio::time::timeout(
        Duration::from_secs(1),
        send(admin, "GET", "/healthz", &[], Bytes::new()),
    )
    .await
    .expect("the admin listener answers while the main one is full");
    assert_eq!(health.status, 200);
    for (s, id) in held.iter_mut().zip(["a2", "b2"]) {
        let post = signed_post("/hooks/p", SECRET, &body(id));
        s.write_all(post.as_bytes()).await.expect("write");
        assert!(read_answer(s).await.starts_with("HTTP/1.1 200"));
    }
    drop(held.pop());
    let answer = tokio::time::timeout(Duration::from_secs(5), read_answer(&mut third))
        .await
        .expect("the waiting connection is served once a place is free");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let ids = upstream.event_ids();
    assert_eq!(ids, ["a", "b", "a2", "b2", "c"]);
}

/// Past `max_connections` new connections wait in the kernel's accept queue, which is as
/// long as the kernel allows (`somaxconn`), not std's 128: a connection past the 128th
/// still completes its handshake at once instead of waiting for a SYN retransmit (1 s),
/// and so does one in a burst of hundreds while the workers catch up.
#[tokio::test]
async fn the_accept_queue_holds_more_than_128_waiting_connections() {
    let upstream = spawn_upstream(Reply::json(200, "{}")).await;
    let gw = gateway(&upstream, "", "max_connections = 1", &LimitClock::default()).await;
    let mut held = send_signed_raw(&gw, "a").await;
    assert!(read_answer(&mut held).await.starts_with("HTTP/1.1 200"));
    let somaxconn: usize = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(128);
    let waiting = somaxconn.saturating_sub(16).min(300);
    assert!(waiting > 128, "somaxconn {somaxconn}: nothing to show here");
    let mut queued = Vec::new();
    for i in 0..waiting {
        // Unaccepted, a connect completes from the queue at once, or waits a SYN
        // retransmit (1 s) when the queue is full.
        let s = tokio::time::timeout(
            Duration::from_millis(900),
            tokio::net::TcpStream::connect(gw.addr),
        )
        .await
        .unwrap_or_else(|_| panic!("connection {i} waited for a SYN retransmit"))
        .expect("connect");
        queued.push(s);
    }
    // Once the served one closes, the waiting ones are served in turn.
    drop(held);
    drop(queued.split_off(1));
    let mut first = queued.pop().expect("one");
    let post = signed_post("/hooks/p", SECRET, &body("b"));
    tokio::io::AsyncWriteExt::write_all(&mut first, post.as_bytes())
        .await
        .expect("write");
    let answer = tokio::time::timeout(Duration::from_secs(5), read_answer(&mut first))
        .await
        .expect("served once a place is free");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

/// Deliveries in flight are bounded by `max_connections` too: over HTTP/2 one connection
/// carries many, and each holds an upstream connection. Past the bound a delivery waits
/// for another's exchange to end (counted), its `timeout_ms` running (then 504).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_connections_in_flight_a_delivery_waits_for_an_upstream_exchange() {
    let upstream = spawn_upstream(Reply::json(200, "{}").after(Duration::from_millis(400))).await;
    let config = one_source(
        &upstream.url("/"),
        "protocol",
        "/hooks/p",
        &[SECRET],
        "timeout_ms = 1000",
    )
    .replace("[server]\n", "[server]\nmax_connections = 2\n");
    // One worker, so its share is the whole of max_connections.
    let (gw, metrics) = spawn_gateway_with_metrics(&config, "exchange-slots", Some(1)).await;

    let (sender, _connection) = h2_connect(gw.addr).await;
    let started = Instant::now();
    // One signed delivery as a stream of its own: its status, and when it was answered.
    let stream = |id: String| {
        let mut sender = sender.clone();
        let b = body(&id);
        let request = signed_h2_request(&gw, b);
        tokio::spawn(async move {
            let response = sender.send_request(request).await.expect("response");
            (collect(response).await.status, started.elapsed())
        })
    };
    let streams: Vec<_> = (0..5).map(|i| stream(format!("s{i}"))).collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(upstream.requests().len(), 2, "two exchanges at a time");
    let mut answers = Vec::new();
    for s in streams {
        answers.push(s.await.expect("stream"));
    }
    answers.sort_by_key(|(_, at)| *at);
    let statuses: Vec<u16> = answers.iter().map(|(s, _)| *s).collect();
    // Two answered after 0.4 s, two after 0.8 s; the fifth waited until 0.8 s and its
    // exchange would end at 1.2 s, past its timeout_ms of 1 s.
    assert_eq!(statuses, [200, 200, 200, 200, 504], "{answers:?}");
    assert!(answers[2].1 >= Duration::from_millis(750), "{answers:?}");
    assert_eq!(metrics.upstream.waits.get(), 3);

    // Every slot came back, the timed-out delivery's too: two at a time again, no wait.
    upstream.set_reply(Reply::json(200, "{}"));
    for round in 0..3 {
        let pair: Vec<_> = (0..2).map(|i| stream(format!("r{round}-{i}"))).collect();
        for p in pair {
            assert_eq!(p.await.expect("stream").0, 200);
        }
    }
    assert_eq!(metrics.upstream.waits.get(), 3, "no slot was lost");
}

/// A protocol source behind one worker (so every connection shares one body budget of
/// `budget` bytes), with the metrics to read the waits from.
async fn one_worker_budget(
    max_body: usize,
    budget: usize,
) -> (
    Upstream,
    Gateway,
    std::sync::Arc<hookgate::metrics::Metrics>,
) {
    let upstream = spawn_upstream(Reply::json(200, "{}")).await;
    let config = one_source(&upstream.url("/"), "protocol", "/hooks/p", &[SECRET], "").replace(
        "[server]\n",
        &format!(
            "[server]\nmax_body_bytes = {max_body}\nmax_buffered_bytes = {budget}\nbody_timeout_s = 20\n"
        ),
    );
    let (gw, metrics) = spawn_gateway_with_metrics(&config, "budget", Some(1)).await;
    (upstream, gw, metrics)
}

/// A webhook of `len` bytes with id `id`, padded.
fn padded(id: &str, len: usize) -> String {
    let short = body(id).replace("{}", r#"{"pad":""}"#);
    short.replace(
        r#""pad":"""#,
        &format!(r#""pad":"{}""#, "p".repeat(len - short.len())),
    )
}

/// `max_buffered_bytes`: a body still arriving is not read past the worker's budget until
/// others give their bytes back, and a webhook that arrives whole is never held up by it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_past_the_memory_budget_wait_and_whole_ones_go_through() {
    use tokio::io::AsyncWriteExt;
    let (upstream, gw, metrics) = one_worker_budget(200_000, 200_000).await;

    // A: 150,000 of its 151,000 bytes, then it stalls, holding them.
    let a = signed_post("/hooks/p", SECRET, &padded("a", 151_000));
    let (a_most, a_rest) = a.as_bytes().split_at(a.len() - 1_000);
    let mut a_conn = connect_and_write(gw.addr, a_most).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(metrics.body_budget_waits.get(), 0, "A alone fits");
    // B: all of its 150,000 bytes are sent, but past the 50,000 left it is not read on.
    let mut b_conn = send_signed_raw_body(&gw, &padded("b", 150_000)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(metrics.body_budget_waits.get() >= 1, "B waited");
    // C arrives whole: not held up, though the budget is spent.
    let started = Instant::now();
    let c = deliver(&gw, "c", &[]).await;
    assert_eq!(c.status, 200);
    assert!(started.elapsed() < Duration::from_secs(2));
    let ids = || upstream.event_ids();
    assert_eq!(ids(), ["c"], "B was read past the budget");

    // A's last bytes: A is forwarded and answered, gives its bytes back, and B goes on.
    a_conn.write_all(a_rest).await.expect("write");
    assert!(read_answer(&mut a_conn).await.starts_with("HTTP/1.1 200"));
    let b_answer = tokio::time::timeout(Duration::from_secs(5), read_answer(&mut b_conn))
        .await
        .expect("B is read once A's bytes are given back");
    assert!(b_answer.starts_with("HTTP/1.1 200"), "{b_answer}");
    assert_eq!(ids(), ["c", "a", "b"]);
}

/// An HTTP/2 stream reset while its body waits for the budget is dropped at once: only a
/// delivery read whole goes on once its sender is gone. Otherwise every reset stream
/// (HTTP/2 lets a client reset and reopen them as fast as it can write) would wait on as a
/// task of its own until `body_timeout_s`, its place in the budget's queue before the
/// senders that stayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_stream_reset_while_its_body_waits_for_the_budget_is_dropped() {
    use tokio::io::AsyncWriteExt;
    let (upstream, gw, metrics) = one_worker_budget(100_000, 100_000).await;
    // A holds the budget: 90,000 bytes declared, all but the last 1,000 sent.
    let a = signed_post("/hooks/p", SECRET, &padded("a", 90_000));
    let (a_most, a_rest) = a.as_bytes().split_at(a.len() - 1_000);
    let mut a_conn = connect_and_write(gw.addr, a_most).await;
    // B waits for it, then its sender gives up.
    let (mut sender, _connection) = h2_connect(gw.addr).await;
    let b = padded("b", 90_000);
    let request = signed_h2_request(&gw, b);
    let gave_up =
        tokio::time::timeout(Duration::from_millis(300), sender.send_request(request)).await;
    assert!(gave_up.is_err(), "B was answered");
    assert!(metrics.body_budget_waits.get() >= 1, "B waited");
    let deadline = Instant::now() + Duration::from_secs(2);
    while metrics.in_flight.get() != 1 {
        assert!(
            Instant::now() < deadline,
            "B still in flight: {}",
            metrics.in_flight.get()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    a_conn.write_all(a_rest).await.expect("write");
    assert!(read_answer(&mut a_conn).await.starts_with("HTTP/1.1 200"));
    let ids = upstream.event_ids();
    assert_eq!(ids, ["a"]);
}

/// A chunked body, whose length nobody declared, takes `max_body_bytes` from the budget
/// once it is past its first piece, as a declared one takes its length: a second chunked
/// body that does not fit beside it waits, unread, until the first is answered. (Counted
/// by the piece it would not wait, and bodies could grow past the budget.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_body_takes_the_most_it_may_be_from_the_budget() {
    use tokio::io::AsyncWriteExt;
    let (upstream, gw, metrics) = one_worker_budget(100_000, 150_000).await;
    let chunked_head = |body: &str| {
        format!(
            "POST /hooks/p HTTP/1.1\r\nhost: x\r\nx-protocol-signature: {}\r\n\
             transfer-encoding: chunked\r\n\r\n",
            hmac_hex(SECRET, body.as_bytes())
        )
    };
    let chunk = |part: &str| format!("{:x}\r\n{part}\r\n", part.len());
    let (a, b) = (padded("a", 60_000), padded("b", 60_000));
    // Each sends its first 10,000 bytes and stalls.
    let mut a_conn = connect_and_write(
        gw.addr,
        format!("{}{}", chunked_head(&a), chunk(&a[..10_000])).as_bytes(),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(metrics.body_budget_waits.get(), 0, "A alone fits");
    let mut b_conn = connect_and_write(
        gw.addr,
        format!("{}{}", chunked_head(&b), chunk(&b[..10_000])).as_bytes(),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        metrics.body_budget_waits.get(),
        1,
        "B waited for A's 100,000 bytes"
    );
    // B's rest arrives first, but B is not read on until A is answered.
    b_conn
        .write_all(format!("{}0\r\n\r\n", chunk(&b[10_000..])).as_bytes())
        .await
        .expect("write");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(upstream.requests().is_empty(), "B was read past the budget");
    a_conn
        .write_all(format!("{}0\r\n\r\n", chunk(&a[10_000..])).as_bytes())
        .await
        .expect("write");
    assert!(read_answer(&mut a_conn).await.starts_with("HTTP/1.1 200"));
    assert!(read_answer(&mut b_conn).await.starts_with("HTTP/1.1 200"));
    let ids = upstream.event_ids();
    assert_eq!(ids, ["a", "b"]);
}

/// Bodies that together need twice the budget, all arriving at once, each sent in two
/// parts: none is left waiting for good. Each takes its whole length from the budget before
/// it is read past its first piece, so those that fit are read whole, forwarded and give
/// their bytes back, and the next go on. Before, each took its pieces as they came: the four
/// first parts filled the budget, no second part fitted, and all four waited for
/// `body_timeout_s` and got 408 (100 senders of 1 MiB webhooks froze a 32 MiB budget so).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_that_need_more_than_the_budget_together_are_read_in_turn() {
    use tokio::io::AsyncWriteExt;
    let (upstream, gw, metrics) = one_worker_budget(1_000_000, 2_000_000).await;
    let mut conns = Vec::new();
    let mut rests = Vec::new();
    for id in ["a", "b", "c", "d"] {
        let request = signed_post("/hooks/p", SECRET, &padded(id, 900_000));
        let (half, rest) = request.split_at(request.len() - 380_000);
        conns.push(connect_and_write(gw.addr, half.as_bytes()).await);
        rests.push(rest.to_owned());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(metrics.body_budget_waits.get() >= 1, "one waited");
    let started = Instant::now();
    for (conn, rest) in conns.iter_mut().zip(&rests) {
        conn.write_all(rest.as_bytes()).await.expect("write");
    }
    for conn in &mut conns {
        let answer = tokio::time::timeout(Duration::from_secs(5), read_answer(conn))
            .await
            .expect("an answer");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(upstream.requests().len(), 4);
}

async fn send_signed_raw_body(gw: &Gateway, body: &str) -> tokio::net::TcpStream {
    connect_and_write(gw.addr, signed_post("/hooks/p", SECRET, body).as_bytes()).await
}

/// The admin listener (`/metrics`, probes) holds no connection longer than the main one
/// would: a silent client, a head that never ends and a kept-alive idle connection are cut at
/// `header_timeout_s`, and past 256 admin connections a new one is closed at once, so a
/// flood there cannot take the file descriptors the main listener serves with.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_cuts_idle_and_slow_clients_and_caps_its_connections() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let upstream = spawn_upstream(Reply::json(200, "{}")).await;
    let config = one_source(&upstream.url("/"), "protocol", "/hooks/p", &[SECRET], "")
        .replace("[server]\n", "[server]\nheader_timeout_s = 2\n")
        .replace(
            "[upstream]\n",
            "[admin]\nlisten = \"127.0.0.1:0\"\n\n[upstream]\n",
        );
    let gw = spawn_gateway(&config).await;
    let admin = gw.server.admin_addr.expect("admin");
    let connect = || async move {
        tokio::net::TcpStream::connect(admin)
            .await
            .expect("connect")
    };
    /// How long until the gateway closes `s` (None: still open after `within`).
    async fn closed_after(s: &mut tokio::net::TcpStream, within: Duration) -> Option<Duration> {
        let started = Instant::now();
        let mut buf = [0u8; 512];
        loop {
            let left = within.checked_sub(started.elapsed())?;
            match tokio::time::timeout(left, s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
                Ok(Ok(_)) => {}
                Err(_) => return None,
            }
        }
    }

    let started = Instant::now();
    let mut silent = connect().await;
    let mut partial = connect().await;
    partial
        .write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\n")
        .await
        .expect("write");
    let mut idle = connect().await;
    idle.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .expect("write");
    let answer = read_answer(&mut idle).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    for (name, s) in [
        ("silent", &mut silent),
        ("partial", &mut partial),
        ("idle", &mut idle),
    ] {
        let at = closed_after(s, Duration::from_secs(6)).await;
        assert!(at.is_some(), "the {name} admin connection was not cut");
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1800) && took < Duration::from_secs(5),
        "{took:?}"
    );

    // 256 held connections; the next one is closed at once, long before the head deadline.
    let mut held = Vec::new();
    for _ in 0..256 {
        held.push(connect().await);
    }
    let mut over = connect().await;
    let at = closed_after(&mut over, Duration::from_secs(1)).await;
    assert!(at.is_some(), "a 257th admin connection was served");
    // The main listener serves all the while.
    let a = send(gw.addr, "GET", "/healthz", &[], Bytes::new()).await;
    assert_eq!(a.status, 200);
    drop(held);
    // Once they are gone, the admin listener serves again.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut s = connect().await;
        s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .expect("write");
        if let Ok(Some(answer)) = tokio::time::timeout(
            Duration::from_millis(500),
            read_message(&mut s, &mut Vec::new()),
        )
        .await
        {
            assert!(answer.starts_with(b"HTTP/1.1 200"));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the admin listener did not recover"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A client that stops reading its answer is let go after `body_timeout_s` without any of
/// it being read (past the idle close), so it cannot hold its connection and the answer's
/// memory for good; one that reads, however slowly, gets it whole (the test above).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_its_answer_is_let_go() {
    let answer_body = format!("\"{}\"", "x".repeat(16 << 20));
    let upstream = spawn_upstream(Reply::json(200, &answer_body)).await;
    let config = one_source(&upstream.url("/"), "protocol", "/hooks/p", &[SECRET], "").replace(
        "[server]\n",
        "[server]\nheader_timeout_s = 1\nbody_timeout_s = 1\nmax_body_bytes = 33554432\n",
    );
    let (gw, metrics) = spawn_gateway_with_metrics(&config, "never-reads", None).await;
    // Forwarded (the `n`th delivery), then let go at the idle close plus 1 s unread.
    let let_go = |protocol: &'static str, n: usize| {
        let (upstream, metrics) = (&upstream, &metrics);
        async move {
            let started = Instant::now();
            upstream.wait_for_requests(n).await;
            assert_eq!(metrics.open_connections.get(), 1);
            while metrics.open_connections.get() != 0 {
                assert!(
                    started.elapsed() < Duration::from_secs(8),
                    "{protocol}: a client that reads nothing still holds its connection"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let took = started.elapsed();
            assert!(took >= Duration::from_millis(1800), "{protocol}: {took:?}");
        }
    };
    let held = send_signed_raw(&gw, "never-read").await;
    let_go("HTTP/1.1", 1).await;
    drop(held);

    // HTTP/2: the answer's head is taken, its body never (so no window is given back).
    let (mut sender, _connection) = h2_connect(gw.addr).await;
    let b = body("never-read-h2");
    let request = signed_h2_request(&gw, b);
    let answer = sender.send_request(request).await.expect("answer head");
    assert_eq!(answer.status(), 200);
    let_go("HTTP/2", 2).await;
    drop(answer);
}

/// A protocol source at `/hooks/p` on the defaults, before an upstream that answers `{}`.
async fn protocol_gateway() -> (Upstream, Gateway) {
    let upstream = spawn_upstream(Reply::json(200, "{}")).await;
    let config = one_source(&upstream.url("/"), "protocol", "/hooks/p", &[SECRET], "");
    let gw = spawn_gateway(&config).await;
    (upstream, gw)
}

/// What one HTTP/2 connection can make hookgate hold is bounded by what it advertises: 16
/// streams at once, each with at most 16 KiB of headers (431 past it) and a 32 KiB window,
/// about 1 MiB with the connection's window. With 256 streams of 64 KiB heads, as before,
/// five connections that sent full heads and no body took 92 MiB of RSS.
#[tokio::test]
async fn an_http2_connection_is_held_to_16_streams_of_16_kib_heads() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (upstream, gw) = protocol_gateway().await;
    let mut s = tokio::net::TcpStream::connect(gw.addr)
        .await
        .expect("connect");
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .expect("preface");
    let mut head = [0u8; 9];
    s.read_exact(&mut head).await.expect("a frame");
    assert_eq!(head[3], 0x04, "the server's first frame is its SETTINGS");
    let mut payload = vec![0u8; usize::from(head[1]) << 8 | usize::from(head[2])];
    s.read_exact(&mut payload).await.expect("settings");
    let setting = |id: u16| {
        payload.chunks(6).find_map(|e| {
            (u16::from_be_bytes([e[0], e[1]]) == id)
                .then(|| u32::from_be_bytes([e[2], e[3], e[4], e[5]]))
        })
    };
    assert_eq!(setting(0x3), Some(16), "SETTINGS_MAX_CONCURRENT_STREAMS");
    assert_eq!(
        setting(0x4),
        Some(32 * 1024),
        "SETTINGS_INITIAL_WINDOW_SIZE"
    );
    assert_eq!(
        setting(0x6),
        Some(16 * 1024),
        "SETTINGS_MAX_HEADER_LIST_SIZE"
    );

    let b = body("h2-head");
    let sig = hmac_hex(SECRET, b.as_bytes());
    for (pad, status) in [(15_000, 200), (17_000, 431)] {
        let padding = "p".repeat(pad);
        let headers = [("x-protocol-signature", sig.as_str()), ("x-pad", &padding)];
        let a = send_h2(gw.addr, "/hooks/p", &headers, b.clone()).await;
        assert_eq!(a.status, status, "{pad} bytes of x-pad");
    }
    assert_eq!(upstream.requests().len(), 1);
}

/// A client may open more streams than the 16 hookgate allows before it has read the
/// SETTINGS that say so (RFC 9113 §5.1.2: until then it may assume no limit; Go's client
/// assumes 100). The streams past the limit are refused (`REFUSED_STREAM`, which a client
/// retries: nothing of them was processed) and the others served. Before, h2 counted each
/// refusal as a local reset and, past 64 of them, ended the connection with
/// `ENHANCE_YOUR_CALM`, cutting off the deliveries in flight on it as well.
#[tokio::test]
async fn a_burst_of_streams_before_the_settings_is_refused_past_16_not_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const STREAMS: u32 = 100;
    let (upstream, gw) = protocol_gateway().await;
    let frame = |kind: u8, flags: u8, stream: u32, payload: &[u8]| {
        let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        f.extend_from_slice(&[kind, flags]);
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    };
    // HPACK without Huffman or the dynamic table: a literal of `len` bytes after its prefix.
    let literal = |out: &mut Vec<u8>, text: &str| {
        out.push(u8::try_from(text.len()).expect("short"));
        out.extend_from_slice(text.as_bytes());
    };
    let mut burst = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    burst.extend(frame(0x4, 0, 0, &[]));
    for i in 0..STREAMS {
        let stream = 2 * i + 1;
        let b = body(&format!("burst-{i}"));
        // :method POST, :scheme http (static table), :path and :authority (indexed names).
        let mut block = vec![0x83, 0x86, 0x04];
        literal(&mut block, "/hooks/p");
        block.push(0x01);
        literal(&mut block, "a");
        block.push(0x00);
        literal(&mut block, "x-protocol-signature");
        literal(&mut block, &hmac_hex(SECRET, b.as_bytes()));
        // content-length: static index 28, past the 4-bit prefix.
        block.extend_from_slice(&[0x0f, 28 - 15]);
        literal(&mut block, &b.len().to_string());
        burst.extend(frame(0x1, 0x4, stream, &block));
        burst.extend(frame(0x0, 0x1, stream, b.as_bytes()));
    }
    let mut s = tokio::net::TcpStream::connect(gw.addr)
        .await
        .expect("connect");
    s.write_all(&burst).await.expect("burst");

    // The server's frames, until every stream is answered or refused (or the end).
    let (mut answered, mut refused, mut go_away) = (Vec::new(), Vec::new(), None);
    let read = async {
        let mut head = [0u8; 9];
        while answered.len() + refused.len() < STREAMS as usize {
            if s.read_exact(&mut head).await.is_err() {
                break;
            }
            let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
            let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]);
            let mut payload = vec![0u8; len];
            if s.read_exact(&mut payload).await.is_err() {
                break;
            }
            let code = |at: usize| {
                payload
                    .get(at..at + 4)
                    .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
            };
            match (head[3], code(0)) {
                // A response head: its first byte, the :status (0x88 is 200, static table).
                (0x1, _) => answered.push(payload.first().copied()),
                // REFUSED_STREAM; then STREAM_CLOSED for the refused stream's DATA.
                (0x3, Some(0x7)) => refused.push(stream),
                (0x3, Some(0x5)) => assert!(refused.contains(&stream), "{stream} closed"),
                (0x3, other) => panic!("stream {stream} reset with {other:?}"),
                (0x7, _) => {
                    go_away = code(4);
                    break;
                }
                (0x4, _) if head[4] & 0x1 == 0 => {
                    s.write_all(&frame(0x4, 0x1, 0, &[]))
                        .await
                        .expect("settings ack");
                }
                _ => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("every stream answered or refused within 10 s");
    assert_eq!(go_away, None, "GOAWAY (0xb: ENHANCE_YOUR_CALM)");
    assert!(
        answered.len() >= 16,
        "{} answered, {} refused",
        answered.len(),
        refused.len()
    );
    assert!(
        answered.iter().all(|&status| status == Some(0x88)),
        "{answered:?}"
    );
    assert_eq!(answered.len() + refused.len(), STREAMS as usize);
    assert_eq!(upstream.requests().len(), answered.len());
}

/// The deliveries an HTTP/2 connection's resets leave running (each one read whole, so it is
/// forwarded to the end) still count against its 16 streams: a new stream waits for one of
/// them to end. Before, a connection that reset every stream once its body was read had as
/// many deliveries in flight as it sent streams (3,000 in 6 s, each with an upstream
/// connection of its own, against an app slow to answer), however few streams it had open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_an_http2_connection_reset_still_count_against_its_streams() {
    let upstream = spawn_upstream(Reply::json(200, "{}").after(Duration::from_secs(4))).await;
    let config = one_source(&upstream.url("/"), "protocol", "/hooks/p", &[SECRET], "");
    let (gw, metrics) = spawn_gateway_with_metrics(&config, "h2-resets", None).await;
    let (mut sender, _connection) = h2_connect(gw.addr).await;
    let request = |id: &str| signed_h2_request(&gw, body(id));
    // Sixteen streams, each reset once the upstream holds its delivery.
    for i in 0..16 {
        tokio::select! {
            _ = sender.send_request(request(&format!("held-{i}"))) => panic!("answered"),
            _ = upstream.wait_for_requests(i + 1) => {}
        }
    }
    // Four more, each reset after 250 ms (well within the sixteen's 4 s): none of them
    // begins while those sixteen run.
    for i in 0..4 {
        let gave_up = tokio::time::timeout(
            Duration::from_millis(250),
            sender.send_request(request(&format!("more-{i}"))),
        )
        .await;
        assert!(gave_up.is_err(), "answered");
    }
    assert_eq!(upstream.requests().len(), 16);
    assert_eq!(metrics.in_flight.get(), 16);
    // The sixteen are forwarded whole and answered; then the connection serves again.
    upstream.set_reply(Reply::json(200, "{}"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while metrics.in_flight.get() != 0 {
        assert!(Instant::now() < deadline, "deliveries still in flight");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let answer = collect(sender.send_request(request("after")).await.expect("answer")).await;
    assert_eq!(answer.status, 200);
    let ids = upstream.event_ids();
    assert_eq!(ids.len(), 17);
    assert!(ids.iter().all(|id| !id.starts_with("more-")), "{ids:?}");
    assert_eq!(ids.last().map(String::as_str), Some("after"));
}

/// Over one HTTP/2 connection, bodies that together need several times the budget all go
/// through in turn: the streams waiting for the budget cannot take up the connection's
/// flow-control window that those holding it need for the rest of their bodies (16 streams
/// of 32 KiB windows in a connection window of 640 KiB). Before (256 KiB for both), the
/// waiting streams' first bytes filled it, no stream could finish, and all got 408 at
/// `body_timeout_s` (seen with h2load: 32 streams of 1 MiB, 32 × 408).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_streams_that_need_more_than_the_budget_together_finish_in_turn() {
    let (upstream, gw, metrics) = one_worker_budget(1_000_000, 2_000_000).await;
    let (sender, _connection) = h2_connect(gw.addr).await;
    let streams = (0..16).map(|i| {
        let mut sender = sender.clone();
        let b = padded(&format!("h2-{i}"), 900_000);
        let request = signed_h2_request(&gw, b);
        tokio::spawn(async move {
            let answer = sender.send_request(request).await.expect("answer");
            answer.status().as_u16()
        })
    });
    let tasks: Vec<_> = streams.collect();
    let all = async {
        let mut statuses = Vec::new();
        for task in tasks {
            statuses.push(task.await.expect("task"));
        }
        statuses
    };
    let statuses = tokio::time::timeout(Duration::from_secs(10), all)
        .await
        .expect("every stream answered within 10 s");
    assert_eq!(statuses, [200; 16]);
    assert_eq!(upstream.requests().len(), 16);
    assert!(metrics.body_budget_waits.get() >= 1, "some waited");
}

/// A connection reset before its first byte is let go at once, not held until
/// `header_timeout_s`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_reset_before_its_first_byte_is_let_go_at_once() {
    let upstream = spawn_upstream(Reply::json(200, "{}")).await;
    let config = one_source(&upstream.url("/"), "protocol", "/hooks/p", &[SECRET], "")
        .replace("[server]\n", "[server]\nheader_timeout_s = 60\n");
    let (gw, metrics) = spawn_gateway_with_metrics(&config, "reset-first", None).await;
    let wait_for_open = |want: i64| {
        let metrics = &metrics;
        async move {
            let deadline = Instant::now() + Duration::from_secs(10);
            while metrics.open_connections.get() != want {
                assert!(Instant::now() < deadline, "open connections not {want}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let s = tokio::net::TcpStream::connect(gw.addr)
        .await
        .expect("connect");
    wait_for_open(1).await;
    s.set_zero_linger().expect("linger");
    drop(s);
    wait_for_open(0).await;
}

/// A declared length is the sender's word (and the app's): with a `max_body_bytes` in the
/// petabytes, a request or an answer that declares 512 TiB must not have hookgate reserve
/// that at once. It did: the allocation failed and the process aborted, for an unsigned
/// request from anyone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_length_of_terabytes_declared_is_not_reserved_whole() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const DECLARED: u64 = 1 << 49;
    // The app declares as much, as a length and then as a chunk's size, and closes after
    // two bytes.
    let answers = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let app = raw_app(move |mut s| {
        let answers = answers.clone();
        async move {
            if read_head_into(&mut s, &mut Vec::new()).await {
                let framing = match answers.fetch_add(1, std::sync::atomic::Ordering::SeqCst) {
                    0 => format!("content-length: {DECLARED}\r\n\r\n"),
                    _ => format!("transfer-encoding: chunked\r\n\r\n{DECLARED:x}\r\n"),
                };
                let answer = format!("HTTP/1.1 200 OK\r\n{framing}{{}}");
                let _ = s.write_all(answer.as_bytes()).await;
            }
        }
    })
    .await;
    let dir = temp_dir("terabytes");
    let config = protocol_source(
        &format!("http://{app}/"),
        SECRET,
        "",
        "max_body_bytes = 1125899906842624\nbody_timeout_s = 1",
    );
    let mut gw = spawn_process(&dir, &config, &[]);

    // A request declaring it, sent in two pieces (the second one makes the buffer).
    let head = format!("POST /hooks/p HTTP/1.1\r\nhost: x\r\ncontent-length: {DECLARED}\r\n\r\n");
    let mut s = connect_and_write(gw.addr, head.as_bytes()).await;
    for _ in 0..2 {
        s.write_all(&[b' '; 70_000]).await.expect("write");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 408 "),
        "{answer:?}\n{}",
        gw.log()
    );

    // Deliveries whose answers declare it: the app's short answers are 502s.
    for id in ["length", "chunk"] {
        let a = signed_delivery(gw.addr, "/hooks/p", SECRET, body(id)).await;
        assert_eq!(a.status, 502, "{id}: {}", gw.log());
    }

    assert_eq!(gw.wait_status(Duration::from_millis(100)), None);
    let health = send(gw.addr, "GET", "/healthz", &[], Bytes::new()).await;
    assert_eq!(health.status, 200);
}
