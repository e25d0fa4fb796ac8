//! SPEC §4 and §5 on real sockets: each row of the wire table, the forwarded request's
//! headers, raw mode, HTTP/2, keep-alive and malformed HTTP.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;

const SECRET: &str = "protocol-secret-for-tests";
const BODY: &str = r#"{"id":"evt-1","type":"message.created","payload":{"id":"m1","conversation_id":"c1","message":"hi"}}"#;

/// The valid signature of `BODY`.
fn signature() -> String {
    hmac_hex(SECRET, BODY.as_bytes())
}

async fn post(gw: &Gateway, path: &str, headers: &[(&str, &str)], body: &str) -> Answer {
    send(
        gw.addr,
        "POST",
        path,
        headers,
        Bytes::copy_from_slice(body.as_bytes()),
    )
    .await
}

async fn protocol_gateway(extra_source: &str, extra_server: &str) -> (Upstream, Gateway) {
    let upstream = spawn_upstream(Reply::json(200, r#"{"ok":true}"#)).await;
    let config = protocol_source(&upstream.url("/app"), SECRET, extra_source, extra_server);
    let gw = spawn_gateway(&config).await;
    (upstream, gw)
}

/// A protocol source at /hooks/p in front of an upstream answering `reply`.
async fn behind(reply: Reply, extra_source: &str) -> (Upstream, Gateway) {
    let upstream = spawn_upstream(reply).await;
    let gw = spawn_gateway(&one_source(
        &upstream.url("/"),
        "protocol",
        "/hooks/p",
        &[SECRET],
        extra_source,
    ))
    .await;
    (upstream, gw)
}

async fn deliver(gw: &Gateway) -> Answer {
    deliver_with(gw, &[]).await
}

/// A signed delivery of `BODY` with `extra` request headers.
async fn deliver_with(gw: &Gateway, extra: &[(&str, &str)]) -> Answer {
    let sig = signature();
    let mut headers = vec![("x-protocol-signature", sig.as_str())];
    headers.extend_from_slice(extra);
    post(gw, "/hooks/p", &headers, BODY).await
}

/// `body` to /hooks/p, signed with `SECRET`.
async fn post_signed(gw: &Gateway, body: &str) -> Answer {
    post(
        gw,
        "/hooks/p",
        &sig_header(&hmac_hex(SECRET, body.as_bytes())),
        body,
    )
    .await
}

fn sig_header(sig: &str) -> [(&str, &str); 1] {
    [("x-protocol-signature", sig)]
}

#[tokio::test]
async fn signed_delivery_is_forwarded_with_the_spec_headers() {
    let (upstream, gw) = protocol_gateway("", "").await;
    let sig = &signature();
    let a = post(
        &gw,
        "/hooks/p?token=abc&x=1",
        &[
            ("x-protocol-signature", sig),
            ("user-agent", "Protocol-Webhooks/1.0"),
            ("x-request-id", "req-from-sender"),
            ("authorization", "Bearer sender-token"),
            ("cookie", "a=b"),
            ("x-custom", "1"),
            ("accept-encoding", "gzip"),
        ],
        BODY,
    )
    .await;
    assert_eq!(a.status, 200);
    assert_eq!(&a.body[..], br#"{"ok":true}"#);
    assert_eq!(a.header("x-request-id"), Some("req-from-sender"));
    let r = &upstream.requests()[0];
    assert_eq!(r.method, http::Method::POST);
    assert_eq!(r.uri.path(), "/app");
    assert_eq!(r.uri.query(), None);
    assert_eq!(r.header("x-hookgate-source"), Some("protocol"));
    assert_eq!(r.header("x-hookgate-platform"), Some("protocol"));
    assert_eq!(r.header("x-hookgate-event-id"), Some("evt-1"));
    assert_eq!(r.header("x-hookgate-event-type"), Some("message.created"));
    assert_eq!(r.header("x-request-id"), Some("req-from-sender"));
    assert_eq!(r.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(r.header("x-forwarded-proto"), Some("http"));
    assert_eq!(r.header("user-agent"), Some("Protocol-Webhooks/1.0"));
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("accept-encoding"), Some("identity"));
    for absent in [
        "x-protocol-signature",
        "authorization",
        "cookie",
        "x-custom",
        "webhook-signature",
    ] {
        assert!(r.headers.get(absent).is_none(), "{absent} was forwarded");
    }
    assert_eq!(
        r.header("content-length"),
        Some(r.body.len().to_string().as_str())
    );
    let event = r.json();
    assert_eq!(event["message"]["text"], "hi");
    assert_eq!(event["room"]["id"], "c1");
}

#[tokio::test]
async fn each_refusal_row_of_the_table() {
    let (upstream, gw) =
        protocol_gateway("allow_cidrs = [\"127.0.0.0/8\"]", "max_body_bytes = 200").await;
    let sig = signature();

    let a = post(&gw, "/nope", &[], "{}").await;
    assert_eq!(
        (a.status, a.json()),
        (404, serde_json::json!({"error":"not_found"}))
    );
    assert!(a.header("x-request-id").is_some_and(|id| id.len() == 32));
    // Only a 429 says when to come back.
    assert_eq!(a.header("retry-after"), None);

    let a = send(gw.addr, "GET", "/hooks/p", &[], Bytes::new()).await;
    assert_eq!((a.status, a.header("allow")), (405, Some("POST")));
    assert_eq!(a.header("retry-after"), None);
    assert_eq!(a.json(), serde_json::json!({"error":"method_not_allowed"}));

    let big = format!("{{\"pad\":\"{}\"}}", "x".repeat(300));
    let a = post(&gw, "/hooks/p", &sig_header(&sig), &big).await;
    assert_eq!(
        (a.status, a.json()),
        (413, serde_json::json!({"error":"payload_too_large"}))
    );

    let a = deliver_with(&gw, &[("content-encoding", "gzip")]).await;
    assert_eq!(
        (a.status, a.json()),
        (415, serde_json::json!({"error":"unsupported_media_type"}))
    );
    // A transfer coding before `chunked` (hyper reads the chunks as they are): refused, not
    // taken as the body, though here the chunks hold the signed body itself.
    for codings in [
        "gzip, chunked",
        "chunked\r\ntransfer-encoding: x-custom, chunked",
    ] {
        let request = format!(
            "POST /hooks/p HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\
             x-protocol-signature: {sig}\r\ntransfer-encoding: {codings}\r\n\r\n\
             {:x}\r\n{BODY}\r\n0\r\n\r\n",
            BODY.len()
        );
        let answer = raw_exchange(gw.addr, request.as_bytes(), Duration::from_secs(5)).await;
        assert!(answer.starts_with("HTTP/1.1 415 "), "{codings}: {answer}");
        assert!(
            answer.ends_with(r#"{"error":"unsupported_media_type"}"#),
            "{answer}"
        );
    }

    // Missing, malformed and wrong proofs get the very same answer.
    let wrong = hmac_hex("other", BODY.as_bytes());
    let mut bodies = Vec::new();
    for headers in [
        vec![],
        vec![("x-protocol-signature", "zz")],
        vec![("x-protocol-signature", wrong.as_str())],
    ] {
        let a = post(&gw, "/hooks/p", &headers, BODY).await;
        assert_eq!(a.status, 401);
        bodies.push(a.body.clone());
    }
    assert!(
        bodies
            .iter()
            .all(|b| &b[..] == br#"{"error":"unauthorized"}"#),
        "{bodies:?}"
    );

    let not_json = "not json";
    let a = post_signed(&gw, not_json).await;
    assert_eq!(
        (a.status, a.json()),
        (400, serde_json::json!({"error":"bad_request"}))
    );
    let no_type = r#"{"id":"x"}"#;
    let a = post_signed(&gw, no_type).await;
    assert_eq!(a.status, 400);

    assert!(
        upstream.requests().is_empty(),
        "a refused request reached the upstream"
    );
    let a = deliver(&gw).await;
    assert_eq!(a.status, 200);
    assert_eq!(upstream.requests().len(), 1);
}

/// A source path written with non-ASCII in the config is reached the way senders send it
/// (percent-encoded, in either case of hex) and as raw UTF-8; other paths are not.
#[tokio::test]
async fn a_non_ascii_source_path_is_reached_as_senders_spell_it() {
    let upstream = spawn_upstream(Reply::json(200, "{}")).await;
    let gw = spawn_gateway(&one_source(
        &upstream.url("/app"),
        "protocol",
        "/hooks/grüße",
        &[SECRET],
        "dedupe_window_s = 0",
    ))
    .await;
    let encoded = "/hooks/gr%C3%BC%C3%9Fe";
    for path in [
        encoded,
        "/hooks/gr%c3%bc%c3%9fe",
        "/hooks/gr%C3%bc%c3%9Fe?x=1",
    ] {
        let a = post(&gw, path, &sig_header(&signature()), BODY).await;
        assert_eq!(a.status, 200, "{path}: {:?}", a.body);
    }
    let raw = raw_exchange(
        gw.addr,
        signed_post("/hooks/grüße", SECRET, BODY).as_bytes(),
        Duration::from_millis(500),
    )
    .await;
    assert!(raw.starts_with("HTTP/1.1 200 "), "{raw}");
    assert_eq!(upstream.requests().len(), 4);
    // Other strings are other paths: decomposed ü, an escaped letter, a prefix.
    for path in [
        "/hooks/gru%CC%88%C3%9Fe",
        "/hooks/%67r%C3%BC%C3%9Fe",
        "/hooks/gr%C3%BC",
    ] {
        let a = post(&gw, path, &sig_header(&signature()), BODY).await;
        assert_eq!(a.status, 404, "{path}");
    }
    assert_eq!(upstream.requests().len(), 4);
}

#[tokio::test]
async fn allow_cidrs_refuses_other_clients() {
    let (upstream, gw) = protocol_gateway("allow_cidrs = [\"203.0.113.0/24\"]", "").await;
    let a = deliver(&gw).await;
    assert_eq!(
        (a.status, a.json()),
        (403, serde_json::json!({"error":"forbidden"}))
    );
    assert!(upstream.requests().is_empty());
}

/// The loopback peer a trusted proxy, and only 203.0.113.0/24 allowed.
async fn behind_trusted_proxy() -> (Upstream, Gateway) {
    protocol_gateway(
        "allow_cidrs = [\"203.0.113.0/24\"]",
        "trusted_proxies = [\"127.0.0.0/8\"]",
    )
    .await
}

#[tokio::test]
async fn trusted_proxy_forwarded_for() {
    // The loopback peer is a trusted proxy: the sender's X-Forwarded-For is believed.
    let (upstream, gw) = behind_trusted_proxy().await;
    let a = deliver_with(
        &gw,
        &[
            ("x-forwarded-for", "203.0.113.7"),
            ("x-forwarded-proto", "https"),
        ],
    )
    .await;
    assert_eq!(a.status, 200);
    let r = &upstream.requests()[0];
    assert_eq!(r.header("x-forwarded-for"), Some("203.0.113.7, 127.0.0.1"));
    assert_eq!(r.header("x-forwarded-proto"), Some("https"));
    // A client outside allow_cidrs behind the proxy is refused.
    let a = deliver_with(&gw, &[("x-forwarded-for", "198.51.100.1")]).await;
    assert_eq!(a.status, 403);
}

/// A header value may hold bytes past ASCII (HTTP's obs-text); a sender can put some in
/// the `X-Forwarded-For` it gives a proxy, which appends the address it saw to that same
/// line. The client is still that address. Before, the whole line was skipped: the client
/// was the proxy (here refused by `allow_cidrs`; elsewhere let in, limited and logged as
/// the proxy, hiding the sender), and its address was not forwarded.
#[tokio::test]
async fn a_forwarded_for_line_with_bytes_past_ascii_still_names_the_client() {
    let (upstream, gw) = behind_trusted_proxy().await;
    let mut request = format!(
        "POST /hooks/p HTTP/1.1\r\nhost: x\r\nx-protocol-signature: {}\r\n\
         content-length: {}\r\nconnection: close\r\nx-forwarded-for: ",
        signature(),
        BODY.len()
    )
    .into_bytes();
    request.extend_from_slice(b"caf\xc3\xa9 \xff, 203.0.113.7\r\n\r\n");
    request.extend_from_slice(BODY.as_bytes());
    let answer = raw_exchange(gw.addr, &request, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    let r = &upstream.requests()[0];
    assert_eq!(
        r.headers.get("x-forwarded-for").map(|v| v.as_bytes()),
        Some(&b"caf\xc3\xa9 \xff, 203.0.113.7, 127.0.0.1"[..])
    );
}

#[tokio::test]
async fn untrusted_peer_cannot_claim_an_address() {
    let (upstream, gw) = protocol_gateway("allow_cidrs = [\"127.0.0.1/32\"]", "").await;
    let a = deliver_with(&gw, &[("x-forwarded-for", "203.0.113.7")]).await;
    assert_eq!(a.status, 200);
    assert_eq!(
        upstream.requests()[0].header("x-forwarded-for"),
        Some("127.0.0.1")
    );
}

/// A listener on `[::]` with two protocol sources without dedupe: `/hooks/p` with
/// `allow_cidrs = p_cidrs`, and `/hooks/{name}` with `allow_cidrs = cidrs`.
fn dual_stack_sources(upstream: &Upstream, p_cidrs: &str, (name, cidrs): (&str, &str)) -> String {
    let mut config = one_source(
        &upstream.url("/"),
        "protocol",
        "/hooks/p",
        &[SECRET],
        &format!("dedupe_window_s = 0\nallow_cidrs = {p_cidrs}"),
    )
    .replace("listen = \"127.0.0.1:0\"", "listen = \"[::]:0\"");
    config.push_str(&format!(
        "\n[[source]]\nname = \"{name}\"\nplatform = \"protocol\"\npath = \"/hooks/{name}\"\n\
         secrets = [\"{SECRET}\"]\ndedupe_window_s = 0\nallow_cidrs = {cidrs}\n"
    ));
    config
}

/// A listener on `[::]` (dual-stack, as Kubernetes pods often bind) sees an IPv4 sender as
/// `::ffff:a.b.c.d`: it is written, allow-listed and rate-limited in its IPv4 form (SPEC §5),
/// and an IPv6 sender as itself.
#[tokio::test]
async fn a_dual_stack_listener_sees_ipv4_senders_as_ipv4() {
    let upstream = spawn_upstream(Reply::json(200, "{}")).await;
    let config = dual_stack_sources(
        &upstream,
        r#"["127.0.0.0/8", "::1/128"]"#,
        ("v4", r#"["127.0.0.0/8"]"#),
    );
    let config = with_server(&config, "client_rate_limit = { per_second = 1, burst = 1 }");
    let dir = temp_dir("dual");
    let gw = spawn_gateway_with(&config, &dir, hookgate::limit::LimitClock::fake()).await;
    let port = gw.addr.port();
    let v4: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let v6: std::net::SocketAddr = (std::net::Ipv6Addr::LOCALHOST, port).into();
    let sig = signature();
    let signed = [("x-protocol-signature", sig.as_str())];

    let a = send(v4, "POST", "/hooks/p", &signed, BODY).await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    assert_eq!(
        upstream.requests()[0].header("x-forwarded-for"),
        Some("127.0.0.1")
    );
    // The same client, by its IPv4 form: its one request is used up.
    assert_eq!(
        send(v4, "POST", "/hooks/p", &signed, BODY).await.status,
        429
    );

    let a = send(v6, "POST", "/hooks/p", &signed, BODY).await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    assert_eq!(
        upstream.requests()[1].header("x-forwarded-for"),
        Some("::1")
    );
    // An IPv4 allow-list admits the IPv4 sender, not the IPv6 one.
    assert_eq!(
        send(v6, "POST", "/hooks/v4", &signed, BODY).await.status,
        403
    );
    let v4_again = send(v4, "POST", "/hooks/v4", &signed, BODY).await;
    assert_eq!(v4_again.status, 429, "admitted, then over its client limit");
    assert_eq!(upstream.requests().len(), 2);
}

/// On such a listener an operator may list IPv4 peers as they show there
/// (`::ffff:10.0.0.0/104`), or write `::/0` for "everyone": those nets hold the IPv4 form
/// of the addresses hookgate compares. Before, neither held any IPv4 sender: every
/// delivery got 403, and a proxy listed so was not trusted.
#[tokio::test]
async fn ipv4_mapped_nets_in_the_config_hold_ipv4_senders() {
    let upstream = spawn_upstream(Reply::json(200, "{}")).await;
    let config = dual_stack_sources(
        &upstream,
        r#"["::ffff:127.0.0.0/104", "::ffff:203.0.113.0/120"]"#,
        ("all", r#"["::/0"]"#),
    );
    let config = with_server(&config, "trusted_proxies = [\"::ffff:127.0.0.1\"]");
    let gw = spawn_gateway(&config).await;
    let port = gw.addr.port();
    let v4: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let v6: std::net::SocketAddr = (std::net::Ipv6Addr::LOCALHOST, port).into();
    let sig = signature();
    let post = |addr, path: &'static str, xff: &'static str| {
        let sig = sig.clone();
        async move {
            let mut headers = vec![("x-protocol-signature", sig.as_str())];
            if !xff.is_empty() {
                headers.push(("x-forwarded-for", xff));
            }
            send(addr, "POST", path, &headers, BODY).await.status
        }
    };

    // The peer is trusted: the sender's address is the client, and the peer is appended.
    assert_eq!(post(v4, "/hooks/p", "203.0.113.9").await, 200);
    assert_eq!(
        upstream.requests()[0].header("x-forwarded-for"),
        Some("203.0.113.9, 127.0.0.1")
    );
    // A client outside both nets, named by the trusted peer.
    assert_eq!(post(v4, "/hooks/p", "198.51.100.1").await, 403);
    assert_eq!(post(v4, "/hooks/p", "").await, 200);
    // An IPv6 sender is in neither net, nor is it trusted.
    assert_eq!(post(v6, "/hooks/p", "203.0.113.9").await, 403);
    // `::/0` holds every sender, IPv4 ones included.
    assert_eq!(post(v4, "/hooks/all", "198.51.100.1").await, 200);
    assert_eq!(post(v6, "/hooks/all", "").await, 200);
    assert_eq!(upstream.requests().len(), 4);
}

#[tokio::test]
async fn raw_mode_forwards_the_bytes_unchanged() {
    let (upstream, gw) = protocol_gateway("forward = \"raw\"", "").await;
    // Odd spacing and number literals that a re-serialization would change.
    let body = "{ \"type\" : \"message.created\", \"id\": \"r-1\", \"n\": 1.50e+0 }\n";
    let a = post_signed(&gw, body).await;
    assert_eq!(a.status, 200);
    let r = &upstream.requests()[0];
    assert_eq!(&r.body[..], body.as_bytes());
    assert_eq!(r.header("x-hookgate-event-id"), Some("r-1"));
    assert_eq!(r.header("x-hookgate-event-type"), Some("message.created"));
    assert!(r.headers.get("x-protocol-signature").is_none());
}

#[tokio::test]
async fn include_raw_false_leaves_raw_out() {
    let (upstream, gw) = protocol_gateway("include_raw = false", "").await;
    let a = deliver(&gw).await;
    assert_eq!(a.status, 200);
    let event = upstream.requests()[0].json();
    assert!(event.get("raw").is_none());
    assert_eq!(event["id"], "evt-1");
}

/// A lone surrogate (`\ud83d`: what JavaScript's `JSON.stringify` writes for an emoji
/// cut in half) is a replacement character, as Go and browsers decode it: the text keeps
/// its other characters, a delivery is not refused over one (SPEC §7: nothing verified is
/// dropped), `raw` carries `\ufffd` so that strict parsers (serde_json here) read the
/// event, ids that do not decode exactly are not used (two would become one), and an
/// APIKey holding one matches no secret.
#[tokio::test]
async fn a_lone_surrogate_is_a_replacement_character_not_a_lost_text_or_delivery() {
    let upstream = spawn_upstream(Reply::json(200, r#"{"reply":{"text":"ok \ud83d"}}"#)).await;
    let source = |platform: &str| {
        format!(
            "[[source]]\nname = {platform:?}\nplatform = {platform:?}\npath = \"/{platform}\"\nsecrets = [\"k3y\"]\n"
        )
    };
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[upstream]\nurl = {:?}\n{}{}{}{}",
        upstream.url("/app"),
        source("protocol"),
        source("spika"),
        source("funtek"),
        source("barertc"),
    );
    let gw = spawn_gateway(&config).await;

    let spika = r#"{"message":{"id":7,"roomId":1,"fromUserId":2,"body":{"text":"hi \ud83d"},"type":"text"},"fromUser":{"displayName":"A\udc00B"},"room":{"name":"r"}}"#;
    let a = post(&gw, "/spika", &[("verification-signature", "k3y")], spika).await;
    assert_eq!(a.status, 200);
    let event = upstream.requests()[0].json();
    assert_eq!(event["message"]["text"], "hi \u{FFFD}");
    assert_eq!(event["actor"]["name"], "A\u{FFFD}B");
    assert_eq!(event["raw"]["message"]["body"]["text"], "hi \u{FFFD}");
    assert_eq!(event["raw"]["fromUser"]["displayName"], "A\u{FFFD}B");

    // A type and a top-level key with one: forwarded, not 400; an id with one is not used.
    let protocol = r#"{"id":"e\ud800","\udbff":1,"type":"message.cr\ud800eated","payload":{"id":"m","message":"x\ud83d\ude00\ud83d","conversation_id":"c\udc00"}}"#;
    let sig = hmac_hex("k3y", protocol.as_bytes());
    let a = post(
        &gw,
        "/protocol",
        &[("x-protocol-signature", &sig)],
        protocol,
    )
    .await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    let forwarded = &upstream.requests()[1];
    let event = forwarded.json();
    assert_eq!(event["type"], "protocol.message.cr_eated");
    assert_eq!(event["platform_type"], "message.cr\u{FFFD}eated");
    assert_eq!(event["message"]["text"], "x\u{1F600}\u{FFFD}");
    assert_eq!(event["room"], serde_json::Value::Null);
    let id = event["id"].as_str().expect("id");
    assert_eq!(id.len(), 32, "the derived id, not {id:?}");
    assert_eq!(forwarded.header("x-hookgate-event-id"), Some(id));
    assert_eq!(event["raw"]["\u{FFFD}"], 1);
    assert_eq!(event["raw"]["id"], "e\u{FFFD}");

    // The app's reply text holding one reaches the bot as a replacement character.
    let funtek = r#"{"appID":"a","roomID":"r","event":"MESSAGE","data":{"id":"i","message":"hey \udbff","sender":{"id":"u"}}}"#;
    let a = post(&gw, "/funtek?token=k3y", &[], funtek).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.json()["data"]["message"], "ok \u{FFFD}");
    assert_eq!(
        upstream.requests()[2].json()["message"]["text"],
        "hey \u{FFFD}"
    );

    // An APIKey with one matches no secret (it does not decode exactly): 401.
    let barertc = r#"{"Action":"profile","APIKey":"k3y\ud800","Username":"u"}"#;
    let a = post(&gw, "/barertc", &[], barertc).await;
    assert_eq!(a.status, 401);
    assert_eq!(upstream.requests().len(), 3);
}

/// An app whose JSON writer puts a UTF-8 byte-order mark first (.NET's `Encoding.UTF8`,
/// PowerShell) still has its normalized reply translated: RFC 8259 §8.1 lets a parser skip
/// one. Before, the reply reached the FUNTEK bot as the app wrote it, which it cannot read.
#[tokio::test]
async fn an_app_reply_after_a_byte_order_mark_is_translated() {
    let upstream = spawn_upstream(Reply::json(
        200,
        "\u{FEFF}{\"reply\":{\"text\":\"Hi\",\"sender_id\":\"robot001\"},\"state\":\"active\"}\r\n",
    ))
    .await;
    let config = one_source(&upstream.url("/app"), "funtek", "/hooks/f", &["k3y"], "");
    let gw = spawn_gateway(&config).await;
    let body = r#"{"appID":"a","roomID":"r","event":"MESSAGE","data":{"id":"i","message":"hey"}}"#;
    let a = post(&gw, "/hooks/f?token=k3y", &[], body).await;
    assert_eq!(a.status, 200);
    assert_eq!(
        String::from_utf8_lossy(&a.body),
        r#"{"senderID":"robot001","toBotState":"active","data":{"message":"Hi","messageType":"text"}}"#
    );
    assert_eq!(a.header("content-type"), Some("application/json"));
}

/// The protocol of a plaintext connection is told by its first bytes, however they are
/// split: HTTP/2's preface in two writes is HTTP/2 (the server's SETTINGS frame comes back,
/// not an HTTP/1 400), and an HTTP/1 request written a few bytes at a time, its first byte
/// alone (`P`, as the preface's), is served whole.
#[tokio::test]
async fn the_protocol_is_told_by_the_first_bytes_however_split() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (upstream, gw) = protocol_gateway("", "").await;

    let mut s = tokio::net::TcpStream::connect(gw.addr)
        .await
        .expect("connect");
    s.write_all(b"PRI * HTTP/2.0\r\n").await.expect("write");
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The rest of the preface, then an empty SETTINGS frame.
    s.write_all(b"\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .expect("write");
    let mut frame = [0u8; 9];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut frame))
        .await
        .expect("an answer")
        .expect("read");
    assert_eq!(frame[3], 0x04, "not an HTTP/2 SETTINGS frame: {frame:?}");

    let request = format!(
        "POST /hooks/p HTTP/1.1\r\nhost: x\r\nx-protocol-signature: {}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{BODY}",
        signature(),
        BODY.len()
    );
    let mut s = tokio::net::TcpStream::connect(gw.addr)
        .await
        .expect("connect");
    s.set_nodelay(true).expect("nodelay");
    for piece in std::iter::once(&request.as_bytes()[..1]).chain(request.as_bytes()[1..].chunks(7))
    {
        s.write_all(piece).await.expect("write");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut answer))
        .await
        .expect("an answer")
        .expect("read");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(upstream.requests().len(), 1);
    assert_eq!(upstream.requests()[0].json()["id"], "evt-1");
}

#[tokio::test]
async fn http2_delivery() {
    let (upstream, gw) = protocol_gateway("", "").await;
    let sig = signature();
    let a = send_h2(
        gw.addr,
        "/hooks/p",
        &[
            ("x-protocol-signature", &sig),
            ("content-type", "application/json"),
        ],
        BODY,
    )
    .await;
    assert_eq!(a.status, 200);
    assert_eq!(&a.body[..], br#"{"ok":true}"#);
    assert!(a.header("x-request-id").is_some());
    let r = &upstream.requests()[0];
    assert_eq!(r.json()["id"], "evt-1");
    let a = send_h2(gw.addr, "/hooks/p", &[("x-protocol-signature", "00")], BODY).await;
    assert_eq!(a.status, 401);
}

/// A body of most of `max_body_bytes` comes in many pieces (HTTP/1.1 reads of at most 64
/// KiB, HTTP/2 windows of 256 KiB) within a budget of one such body, and is forwarded whole.
#[tokio::test]
async fn a_large_body_arrives_whole_over_http1_and_http2() {
    let (upstream, gw) = protocol_gateway(
        "dedupe_window_s = 0",
        "max_body_bytes = 1000000\nmax_buffered_bytes = 1000000",
    )
    .await;
    let text = "t".repeat(900_000);
    let body = BODY.replace(r#""message":"hi""#, &format!(r#""message":"{text}""#));
    let sig = hmac_hex(SECRET, body.as_bytes());
    let headers = [("x-protocol-signature", sig.as_str())];
    let a = send_h2(gw.addr, "/hooks/p", &headers, body.clone()).await;
    assert_eq!(a.status, 200);
    let b = send(gw.addr, "POST", "/hooks/p", &headers, Bytes::from(body)).await;
    assert_eq!(b.status, 200);
    let requests = upstream.requests();
    assert_eq!(requests.len(), 2);
    for r in &requests {
        let event = r.json();
        assert_eq!(
            event["message"]["text"].as_str().map(str::len),
            Some(900_000)
        );
        assert_eq!(event["raw"]["payload"]["message"], event["message"]["text"]);
    }
}

/// Without a sender's `x-request-id`, a new one (32 hex digits, fresh each time) goes to the
/// upstream and back in the answer.
#[tokio::test]
async fn a_new_request_id_is_the_same_upstream_and_in_the_answer() {
    let (upstream, gw) = protocol_gateway("dedupe_window_s = 0", "").await;
    let mut ids = Vec::new();
    // No id, then an empty one (no id to correlate by: a new one too).
    for sent in [&[][..], &[("x-request-id", "")][..]] {
        let a = deliver_with(&gw, sent).await;
        assert_eq!(a.status, 200);
        let id = a.header("x-request-id").expect("an id").to_string();
        assert!(
            id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
            "{id}"
        );
        ids.push(id);
    }
    assert_ne!(ids[0], ids[1]);
    let forwarded: Vec<String> = upstream
        .requests()
        .iter()
        .map(|r| r.header("x-request-id").unwrap_or("").to_string())
        .collect();
    assert_eq!(forwarded, ids);
}

#[tokio::test]
async fn keep_alive_serves_several_requests_on_one_connection() {
    let (upstream, gw) = protocol_gateway("dedupe_window_s = 0", "").await;
    let statuses = deliveries_on_one_connection(&gw, 3, Duration::ZERO).await;
    assert_eq!(statuses, [200; 3]);
    assert_eq!(upstream.requests().len(), 3);
}

/// An app that restarts refuses connections for a moment: the delivery waits for it
/// (`connect_retry_ms`, default 3 s) instead of being lost to a 502 the sender may never
/// retry (Spika does not).
#[tokio::test]
async fn a_refused_connection_is_tried_again_until_the_app_listens() {
    // By address, and by a name (looked up, its addresses tried in turn).
    for host in ["127.0.0.1", "localhost"] {
        let (addr, socket) = refusing_address();
        let url = format!("http://{host}:{}/app", addr.port());
        let config = one_source(&url, "protocol", "/hooks/p", &[SECRET], "");
        let (gw, metrics) = spawn_gateway_with_metrics(&config, "connect-retry", Some(1)).await;
        let t = Instant::now();
        let delivery = tokio::spawn(async move { deliver(&gw).await });
        tokio::time::sleep(Duration::from_millis(400)).await;
        let listener = socket.listen(1024).expect("listen");
        let upstream = spawn_upstream_on(listener, Reply::json(200, r#"{"ok":true}"#));
        let a = delivery.await.expect("delivery");
        assert_eq!(
            (a.status, a.json()),
            (200, serde_json::json!({"ok":true})),
            "{host}"
        );
        assert!(
            t.elapsed() >= Duration::from_millis(400),
            "{:?}",
            t.elapsed()
        );
        assert_eq!(upstream.event_ids(), ["evt-1"]);
        // Refused at 0, 50, 150 and 350 ms at least.
        assert!(metrics.upstream.connect_retries.get() >= 3, "{host}");
    }
}

/// Refused for good: a 502 once `connect_retry_ms` is spent, or at once with 0; a retry
/// that would end past `timeout_ms` is not waited for, so it stays a 502, not a 504.
#[tokio::test]
async fn a_refused_connection_is_502_once_the_retries_are_spent() {
    let (refusing, _held) = refusing_address();
    let dead = format!("http://{refusing}/");
    for (upstream_keys, at_least, under) in [
        ("timeout_ms = 5000\nconnect_retry_ms = 300", 150, 1000),
        // Retries left on would take 2.55 s.
        ("timeout_ms = 5000\nconnect_retry_ms = 0", 0, 1000),
        // The status tells a 504; the time, that the retry at 350 ms was made.
        ("timeout_ms = 500", 350, 2000),
    ] {
        let config = one_source(&dead, "protocol", "/hooks/p", &[SECRET], "")
            .replace("timeout_ms = 5000", upstream_keys);
        let gw = spawn_gateway(&config).await;
        let t = Instant::now();
        let a = deliver(&gw).await;
        let took = t.elapsed();
        assert_eq!(
            (a.status, a.json()),
            (502, serde_json::json!({"error":"bad_gateway"})),
            "{upstream_keys}"
        );
        assert!(
            took >= Duration::from_millis(at_least) && took < Duration::from_millis(under),
            "{upstream_keys}: {took:?}"
        );
    }
}

#[tokio::test]
async fn upstream_failures_are_502_and_504() {
    // Connection refused.
    let (refusing, _held) = refusing_address();
    let dead = format!("http://{refusing}/");
    let gw = spawn_gateway(&one_source(&dead, "protocol", "/hooks/p", &[SECRET], "")).await;
    let a = deliver(&gw).await;
    assert_eq!(
        (a.status, a.json()),
        (502, serde_json::json!({"error":"bad_gateway"}))
    );

    // Too slow: 504 after timeout_ms.
    let slow = Reply::json(200, "{}").after(Duration::from_millis(1500));
    let (_up, gw) = behind(slow, "timeout_ms = 300").await;
    let t = Instant::now();
    let a = deliver(&gw).await;
    assert_eq!(
        (a.status, a.json()),
        (504, serde_json::json!({"error":"gateway_timeout"}))
    );
    assert!(
        t.elapsed() < Duration::from_millis(1400),
        "{:?}",
        t.elapsed()
    );

    // A compressed answer: 502.
    let mut gz = Reply::json(200, "{}");
    gz.headers.push(("content-encoding".into(), "gzip".into()));
    let (_up, gw) = behind(gz, "").await;
    assert_eq!(deliver(&gw).await.status, 502);

    // An answer over max_body_bytes: 502.
    let upstream = spawn_upstream(Reply::json(200, &format!("\"{}\"", "y".repeat(5000)))).await;
    let config = one_source(&upstream.url("/"), "protocol", "/hooks/p", &[SECRET], "")
        .replace("[server]\n", "[server]\nmax_body_bytes = 1000\n");
    let gw = spawn_gateway(&config).await;
    assert_eq!(deliver(&gw).await.status, 502);
}

#[tokio::test]
async fn upstream_status_and_retry_after_are_relayed_but_no_other_header() {
    let mut reply = Reply::json(503, r#"{"busy":true}"#);
    reply.headers.push(("retry-after".into(), "7".into()));
    reply.headers.push(("set-cookie".into(), "s=1".into()));
    reply.headers.push(("x-app".into(), "1".into()));
    let (_up, gw) = behind(reply, "").await;
    let a = deliver(&gw).await;
    assert_eq!(a.status, 503);
    assert_eq!(&a.body[..], br#"{"busy":true}"#);
    assert_eq!(a.header("retry-after"), Some("7"));
    assert_eq!(a.header("content-type"), Some("application/json"));
    assert!(a.headers.get("set-cookie").is_none() && a.headers.get("x-app").is_none());

    // No content-type from the upstream: none relayed.
    let (_up, gw) = behind(
        Reply {
            headers: vec![],
            ..Reply::json(200, "plain")
        },
        "",
    )
    .await;
    let a = deliver(&gw).await;
    assert_eq!(
        (a.status, &a.body[..], a.header("content-type")),
        (200, &b"plain"[..], None)
    );
}

#[tokio::test]
async fn barertc_errors_carry_the_profile_card_fields() {
    let upstream = spawn_upstream(Reply::json(200, "{}")).await;
    let gw = spawn_gateway(&one_source(
        &upstream.url("/"),
        "barertc",
        "/hooks/b",
        &["k"],
        "",
    ))
    .await;
    let a = send(gw.addr, "GET", "/hooks/b", &[], Bytes::new()).await;
    assert_eq!(a.status, 405);
    assert_eq!(
        a.json(),
        serde_json::json!({"error":"method_not_allowed","StatusCode":405,"Data":{"OK":false,"Error":"method_not_allowed"}})
    );
    let a = post(
        &gw,
        "/hooks/b",
        &[],
        r#"{"Action":"profile","APIKey":"wrong","Username":"u"}"#,
    )
    .await;
    assert_eq!(a.json()["Data"]["Error"], "unauthorized");
    assert_eq!(a.status, 401);
}

/// A protocol source at `/hooks/p` (with `extra` lines) whose forwarded requests are signed
/// under `key`; and the `signing_secret` that names it.
async fn signing_gateway(key: &[u8], extra: &str) -> (Upstream, Gateway, String) {
    use base64::Engine;
    let secret = format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(key)
    );
    let upstream = spawn_upstream(Reply::json(200, "{}")).await;
    let config = one_source(&upstream.url("/"), "protocol", "/hooks/p", &[SECRET], extra).replace(
        "timeout_ms = 5000\n",
        &format!("timeout_ms = 5000\nsigning_secret = {secret:?}\n"),
    );
    let gw = spawn_gateway(&config).await;
    (upstream, gw, secret)
}

/// What an app's check with the Standard Webhooks library itself says of `body`.
fn standard_check(
    secret: &str,
    body: &[u8],
    headers: &http::HeaderMap,
) -> Result<(), standardwebhooks::WebhookError> {
    standardwebhooks::Webhook::new(secret)
        .expect("secret")
        .verify(body, headers)
}

#[tokio::test]
async fn standard_webhooks_signature_on_forwarded_requests() {
    use base64::Engine;
    use hmac::{Hmac, KeyInit, Mac};
    let key = [42u8; 32];
    let (upstream, gw, secret) = signing_gateway(&key, "").await;
    // A small event, and one whose 64 KiB text is sent as chunks shared with the delivery:
    // the signature covers the whole body either way.
    let long_text = "x".repeat(64 * 1024);
    let bodies = [
        r#"{"id":"a b%","type":"message.created"}"#.to_string(),
        format!(
            r#"{{"id":"long","type":"message.created","payload":{{"id":"m","message":"{long_text}","conversation_id":"c"}}}}"#
        ),
    ];
    for (i, body) in bodies.iter().enumerate() {
        let a = post_signed(&gw, body).await;
        assert_eq!(a.status, 200);
        let r = &upstream.requests()[i];
        let id = r.header("webhook-id").expect("webhook-id");
        assert_eq!(id, ["a%20b%25", "long"][i]);
        assert_eq!(r.header("x-hookgate-event-id"), Some(id));
        let ts = r.header("webhook-timestamp").expect("timestamp");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("t")
            .as_secs();
        assert!(ts.parse::<u64>().expect("number").abs_diff(now) < 5);
        let mut mac = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(&key).expect("key");
        mac.update(format!("{id}.{ts}.").as_bytes());
        mac.update(&r.body);
        let expected =
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        assert_eq!(
            r.header("webhook-signature"),
            Some(format!("v1,{expected}").as_str())
        );
        assert_eq!(
            r.header("content-length"),
            Some(r.body.len().to_string().as_str())
        );
        // And as an app would check it: with the Standard Webhooks library itself.
        let verified = standard_check(&secret, &r.body, &r.headers);
        assert!(verified.is_ok(), "{verified:?}");
        let event = r.json();
        let sent: serde_json::Value = serde_json::from_str(body).expect("json");
        assert_eq!(event["raw"], sent);
        if i == 1 {
            assert_eq!(event["message"]["text"], long_text.as_str());
        }
    }

    // A forged event fails that check: the library is no rubber stamp.
    let r = &upstream.requests()[0];
    let mut altered = r.body.to_vec();
    let last_but_one = altered.len() - 2;
    altered[last_but_one] ^= 1;
    assert!(standard_check(&secret, &altered, &r.headers).is_err());
}

/// `forward = "raw"` signs the received bytes as forwarded, and the id is the one derived
/// from them when the body has none of its own (SPEC §5 and §7).
#[tokio::test]
async fn standard_webhooks_signature_covers_a_raw_forward() {
    let (upstream, gw, secret) = signing_gateway(&[7u8; 24], "forward = \"raw\"").await;
    let body = r#"{ "type" : "message.created", "payload": {"message": "h\u00e9 é"} }"#;
    let a = post_signed(&gw, body).await;
    assert_eq!(a.status, 200);
    let r = &upstream.requests()[0];
    assert_eq!(&r.body[..], body.as_bytes());
    let id = r.header("webhook-id").expect("webhook-id");
    assert_eq!(id.len(), 32, "the derived id: {id}");
    assert_eq!(r.header("x-hookgate-event-id"), Some(id));
    let verified = standard_check(&secret, &r.body, &r.headers);
    assert!(verified.is_ok(), "{verified:?}");
}

#[tokio::test]
async fn health_endpoints_on_main_and_admin_listeners() {
    let upstream = spawn_upstream(Reply::json(200, "{}")).await;
    let config = one_source(
        &upstream.url("/"),
        "protocol",
        "/hooks/p",
        &[SECRET],
        "allow_cidrs = [\"203.0.113.0/24\"]",
    )
    .replace(
        "[upstream]",
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n[upstream]",
    );
    let gw = spawn_gateway(&config).await;
    let admin = gw.server.admin_addr.expect("admin listener");
    for addr in [gw.addr, admin] {
        for path in ["/healthz", "/readyz"] {
            let a = send(addr, "GET", path, &[], Bytes::new()).await;
            assert_eq!(a.status, 200, "{addr} {path}");
            // The GET's length, without its body (RFC 9110 §9.3.2).
            let a = send(addr, "HEAD", path, &[], Bytes::new()).await;
            assert_eq!(
                (a.status, a.body.len(), a.header("content-length")),
                (200, 0, Some("15")),
                "{addr} {path}"
            );
        }
    }
    // Over HTTP/2 too, where a body sent to HEAD is a protocol error the client resets.
    // Refusals too: 405 on a source path, 404 elsewhere.
    let (mut h2, _connection) = h2_connect(gw.addr).await;
    for (path, status, length) in [
        ("/healthz", 200, "15"),
        ("/hooks/p", 405, "30"),
        ("/elsewhere", 404, "21"),
    ] {
        let head = http::Request::head(format!("http://{}{path}", gw.addr))
            .version(http::Version::HTTP_2)
            .body(http_body_util::Full::new(Bytes::new()))
            .expect("request");
        let a = collect(h2.send_request(head).await.expect("h2 answer")).await;
        assert_eq!(
            (a.status, a.body.len(), a.header("content-length")),
            (status, 0, Some(length)),
            "{path}"
        );
    }
    // Read-only endpoints: any other method is 405, on the admin listener's /metrics too.
    for (addr, path) in [
        (gw.addr, "/healthz"),
        (admin, "/readyz"),
        (admin, "/metrics"),
    ] {
        let a = send(addr, "POST", path, &[], Bytes::new()).await;
        assert_eq!(
            (a.status, a.header("allow")),
            (405, Some("GET, HEAD")),
            "{path}"
        );
        assert_eq!(a.json(), serde_json::json!({"error":"method_not_allowed"}));
    }
    let get = send(admin, "GET", "/metrics", &[], Bytes::new()).await;
    let a = send(admin, "HEAD", "/metrics", &[], Bytes::new()).await;
    assert_eq!((a.status, a.body.len()), (200, 0));
    // The two scrapes' process figures differ: the length is each one's own, and there.
    assert!(
        a.header("content-length")
            .and_then(|l| l.parse::<usize>().ok())
            .is_some_and(|l| l.abs_diff(get.body.len()) < 64),
        "{:?} against {}",
        a.header("content-length"),
        get.body.len()
    );
    gw.server.set_unready();
    assert_eq!(
        send(gw.addr, "GET", "/readyz", &[], Bytes::new())
            .await
            .status,
        503
    );
    assert_eq!(
        send(admin, "GET", "/readyz", &[], Bytes::new())
            .await
            .status,
        503
    );
    assert_eq!(
        send(gw.addr, "GET", "/healthz", &[], Bytes::new())
            .await
            .status,
        200
    );
}

/// A declared length over `max_body_bytes` is refused from the head, before a byte of the
/// body (SPEC §3: "413 without reading them whole"): at once, not at `body_timeout_s`, and
/// the connection closes.
#[tokio::test]
async fn a_declared_length_over_the_limit_is_413_before_any_of_the_body() {
    let (upstream, gw) = protocol_gateway("", "max_body_bytes = 100000\nbody_timeout_s = 10").await;
    let started = Instant::now();
    let answer = raw_exchange(
        gw.addr,
        b"POST /hooks/p HTTP/1.1\r\nhost: x\r\ncontent-length: 100001\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("connection: close"), "{answer}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(upstream.requests().is_empty());
}

#[tokio::test]
async fn chunked_body_over_the_limit_is_413_without_a_content_length() {
    let (upstream, gw) = protocol_gateway("", "max_body_bytes = 100").await;
    let chunk = "a".repeat(80);
    let req = format!(
        "POST /hooks/p HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n50\r\n{chunk}\r\n50\r\n{chunk}\r\n0\r\n\r\n"
    );
    let out = raw_exchange(gw.addr, req.as_bytes(), Duration::from_secs(3)).await;
    assert!(out.starts_with("HTTP/1.1 413"), "{out}");
    assert!(out.contains(r#"{"error":"payload_too_large"}"#), "{out}");
    assert!(upstream.requests().is_empty());
}

/// A sender that hangs up once its delivery is sent does not cancel it: a half-closed
/// client still gets its answer, and a delivery whose sender left is forwarded to the end
/// (so its id is remembered and a retry is a duplicate, not a second forward).
#[tokio::test]
async fn a_delivery_whose_sender_hangs_up_is_still_forwarded_whole() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let upstream =
        spawn_upstream(Reply::json(200, r#"{"ok":true}"#).after(Duration::from_millis(300))).await;
    let gw = spawn_gateway(&one_source(
        &upstream.url("/app"),
        "protocol",
        "/hooks/p",
        &[SECRET],
        "",
    ))
    .await;
    let request = |id: &str| signed_post("/hooks/p", SECRET, &BODY.replace("evt-1", id));

    // Half-closed: the write side shut, the read side still waiting for the answer.
    let mut s = connect_and_write(gw.addr, request("evt-half").as_bytes()).await;
    s.shutdown().await.expect("shutdown");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("HTTP/1.1 200"), "{out:?}");
    assert!(out.ends_with(r#"{"ok":true}"#), "{out:?}");

    // Gone at once: the forward still completes and its id is remembered.
    let s = connect_and_write(gw.addr, request("evt-gone").as_bytes()).await;
    drop(s);
    tokio::time::sleep(Duration::from_millis(800)).await;
    let retry = raw_exchange(
        gw.addr,
        request("evt-gone")
            .replace("host: x\r\n", "host: x\r\nconnection: close\r\n")
            .as_bytes(),
        Duration::from_secs(5),
    )
    .await;
    assert!(retry.starts_with("HTTP/1.1 200"), "{retry}");
    assert!(
        retry.to_lowercase().contains("x-hookgate-duplicate: true"),
        "{retry}"
    );
    let ids = upstream.event_ids();
    assert_eq!(ids, ["evt-half", "evt-gone"]);
}

/// Writes `head`, then each piece of `body` as its own chunk, pausing between writes so
/// the gateway reads them one at a time; returns what it answers.
async fn chunked_in_pieces(gw: &Gateway, head: &str, pieces: &[&str]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(gw.addr)
        .await
        .expect("connect");
    s.write_all(
        format!("{head}transfer-encoding: chunked\r\nconnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .expect("write");
    for piece in pieces {
        tokio::time::sleep(Duration::from_millis(30)).await;
        s.write_all(format!("{:x}\r\n{piece}\r\n", piece.len()).as_bytes())
            .await
            .expect("write");
    }
    s.write_all(b"0\r\n\r\n").await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn a_body_in_pieces_is_verified_whole_up_to_exactly_the_limit() {
    let limit = format!("max_body_bytes = {}", BODY.len());
    let (upstream, gw) = protocol_gateway("dedupe_window_s = 0", &limit).await;
    let head = format!(
        "POST /hooks/p HTTP/1.1\r\nhost: x\r\nx-protocol-signature: {}\r\n",
        signature()
    );
    let (a, rest) = BODY.split_at(10);
    let (b, c) = rest.split_at(40);
    let out = chunked_in_pieces(&gw, &head, &[a, b, c]).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let sent = upstream.requests();
    assert_eq!(sent.len(), 1);
    assert_eq!(
        sent[0].json()["raw"],
        serde_json::from_str::<serde_json::Value>(BODY).expect("json")
    );

    // One byte more, in pieces: 413, nothing forwarded.
    let longer = format!("{BODY} ");
    let (a, b) = longer.split_at(60);
    let out = chunked_in_pieces(&gw, &head, &[a, b]).await;
    assert!(out.starts_with("HTTP/1.1 413"), "{out}");
    assert_eq!(upstream.requests().len(), 1);

    // Its length declared: exactly the limit is read, one byte more refused from the head.
    assert_eq!(deliver(&gw).await.status, 200);
    assert_eq!(upstream.requests().len(), 2);
    let signed = hmac_hex(SECRET, longer.as_bytes());
    let refused = post(
        &gw,
        "/hooks/p",
        &[("x-protocol-signature", &signed)],
        &longer,
    )
    .await;
    assert_eq!(refused.status, 413);
    assert_eq!(upstream.requests().len(), 2);
}

#[tokio::test]
async fn an_answer_in_pieces_is_relayed_whole() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/app", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                // Read the request head and body, then answer in three chunks.
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                while !String::from_utf8_lossy(&seen).contains(r#""hi"}}"#) {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let head = "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n";
                if s.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                for piece in ["first,", "second,", "third"] {
                    tokio::time::sleep(Duration::from_millis(30)).await;
                    let chunk = format!("{:x}\r\n{piece}\r\n", piece.len());
                    if s.write_all(chunk.as_bytes()).await.is_err() {
                        return;
                    }
                }
                let _ = s.write_all(b"0\r\n\r\n").await;
            });
        }
    });
    let gw = gateway_without_dedupe(&url).await;
    let a = deliver(&gw).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.header("content-type"), Some("text/plain"));
    assert_eq!(&a.body[..], b"first,second,third");
}

/// A request head over 64 KiB gets 431 whether it comes in one write or in pieces; one just
/// under it is served.
#[tokio::test]
async fn a_request_head_over_64_kib_is_431_however_it_arrives() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (upstream, gw) = protocol_gateway("dedupe_window_s = 0", "").await;
    let sig = signature();
    let head = |pad: usize| {
        format!(
            "POST /hooks/p HTTP/1.1\r\nhost: x\r\nx-pad: {}\r\nx-protocol-signature: {sig}\r\ncontent-length: {}\r\n\r\n{BODY}",
            "p".repeat(pad),
            BODY.len()
        )
    };
    let out = raw_exchange(gw.addr, head(100_000).as_bytes(), Duration::from_secs(3)).await;
    assert!(out.starts_with("HTTP/1.1 431"), "one write: {out:.40}");
    let mut s = tokio::net::TcpStream::connect(gw.addr)
        .await
        .expect("connect");
    for piece in head(100_000).as_bytes().chunks(8_000) {
        if s.write_all(piece).await.is_err() {
            break; // answered and closed before the rest
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut out)).await;
    assert!(out.starts_with(b"HTTP/1.1 431"), "in pieces");
    let out = raw_exchange(gw.addr, head(60_000).as_bytes(), Duration::from_millis(500)).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out:.40}");
    assert_eq!(upstream.requests().len(), 1);
}

#[tokio::test]
async fn malformed_framing_is_400_never_5xx_nor_forwarded() {
    let (upstream, gw) = protocol_gateway("", "").await;
    let sig = signature();
    // A bad chunk size.
    let req = format!(
        "POST /hooks/p HTTP/1.1\r\nhost: x\r\nx-protocol-signature: {sig}\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n{BODY}\r\n0\r\n\r\n"
    );
    let out = raw_exchange(gw.addr, req.as_bytes(), Duration::from_secs(3)).await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    // Two different Content-Length values.
    let req = format!(
        "POST /hooks/p HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n{BODY}"
    );
    let out = raw_exchange(gw.addr, req.as_bytes(), Duration::from_secs(3)).await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    // Both Content-Length and Transfer-Encoding: refused, or read by the chunks alone.
    // Chunked twice (one header or two), which hyper would read as chunked once.
    for te in [
        "transfer-encoding: chunked, chunked",
        "transfer-encoding: chunked\r\ntransfer-encoding: chunked",
    ] {
        let req = format!(
            "POST /hooks/p HTTP/1.1\r\nhost: x\r\nx-protocol-signature: {sig}\r\n{te}\r\n\r\n{:x}\r\n{BODY}\r\n0\r\n\r\n",
            BODY.len()
        );
        let out = raw_exchange(gw.addr, req.as_bytes(), Duration::from_secs(3)).await;
        assert!(out.starts_with("HTTP/1.1 400"), "{te}: {out}");
    }
    assert!(upstream.requests().is_empty());

    let req = format!(
        "POST /hooks/p HTTP/1.1\r\nhost: x\r\nx-protocol-signature: {sig}\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{BODY}\r\n0\r\n\r\n",
        BODY.len()
    );
    let out = raw_exchange(gw.addr, req.as_bytes(), Duration::from_secs(3)).await;
    assert!(
        out.starts_with("HTTP/1.1 400") || out.starts_with("HTTP/1.1 200"),
        "{out}"
    );
    for r in upstream.requests() {
        assert_eq!(
            &r.json()["raw"],
            &serde_json::from_str::<serde_json::Value>(BODY).expect("json")
        );
    }
}

/// RFC 9112 §3.2: an HTTP/1.1 head without `Host`, with two, or with one that names no host
/// is 400 and not forwarded; HTTP/1.0 needs none.
#[tokio::test]
async fn a_head_without_exactly_one_host_is_400_and_not_forwarded() {
    let (upstream, gw) = protocol_gateway("", "").await;
    let sig = signature();
    for (version, hosts, refused) in [
        ("1.1", "", true),
        ("1.1", "host: a\r\nhost: b\r\n", true),
        ("1.0", "host: a\r\nhost: a\r\n", true),
        ("1.1", "host: a/b\r\n", true),
        ("1.1", "host: a b\r\n", true),
        ("1.1", "host:\r\n", true),
        ("1.0", "", false),
    ] {
        let req = format!(
            "POST /hooks/p HTTP/{version}\r\n{hosts}x-protocol-signature: {sig}\r\ncontent-length: {}\r\n\r\n{BODY}",
            BODY.len()
        );
        let out = raw_exchange(gw.addr, req.as_bytes(), Duration::from_secs(3)).await;
        let status = if refused { 400 } else { 200 };
        assert!(
            out.starts_with(&format!("HTTP/{version} {status}")),
            "{version} {hosts:?}: {out}"
        );
        if refused {
            assert!(out.ends_with(r#"{"error":"bad_request"}"#), "{out}");
            assert!(out.contains("\r\nconnection: close\r\n"), "{out}");
        }
    }
    // Only the HTTP/1.0 head without a Host was forwarded.
    assert_eq!(upstream.requests().len(), 1);
}

/// A coding refused with the length declared is refused before the body: a sender that
/// waits for `100 Continue` gets 415 at once, not a `100` for a body refused anyway.
#[tokio::test]
async fn a_refused_coding_is_answered_before_100_continue() {
    let (upstream, gw) = protocol_gateway("", "body_timeout_s = 2").await;
    let req = format!(
        "POST /hooks/p HTTP/1.1\r\nhost: x\r\nx-protocol-signature: {}\r\ncontent-encoding: gzip\r\nexpect: 100-continue\r\ncontent-length: {}\r\n\r\n",
        signature(),
        BODY.len()
    );
    let out = raw_exchange(gw.addr, req.as_bytes(), Duration::from_secs(1)).await;
    assert!(out.starts_with("HTTP/1.1 415"), "{out}");
    assert!(
        out.ends_with(r#"{"error":"unsupported_media_type"}"#),
        "{out}"
    );
    assert!(upstream.requests().is_empty());
}

#[tokio::test]
async fn slow_body_gets_408_and_slow_head_is_cut_off() {
    let (upstream, gw) = protocol_gateway("", "body_timeout_s = 1\nheader_timeout_s = 1").await;
    let t = Instant::now();
    let req = "POST /hooks/p HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{\"partial\":";
    let out = raw_exchange(gw.addr, req.as_bytes(), Duration::from_secs(5)).await;
    assert!(out.starts_with("HTTP/1.1 408"), "{out}");
    assert!(out.contains(r#"{"error":"request_timeout"}"#), "{out}");
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());

    // Nothing sent at all: disconnected after header_timeout_s, without an answer.
    let t = Instant::now();
    let out = raw_exchange(gw.addr, b"", Duration::from_secs(5)).await;
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "not cut off: {:?}",
        t.elapsed()
    );
    assert!(!out.contains("HTTP/1.1 5"), "{out}");
    // Half a head, then silence.
    let t = Instant::now();
    let _ = raw_exchange(
        gw.addr,
        b"POST /hooks/p HTTP/1.1\r\nhost:",
        Duration::from_secs(5),
    )
    .await;
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "not cut off: {:?}",
        t.elapsed()
    );
    assert!(upstream.requests().is_empty());
}

/// How the bare upstream treats its connections.
#[derive(Clone, Copy)]
enum Keeps {
    /// Open for as many requests as come.
    Open,
    /// Closed 50 ms after each answer without saying so (what a keep-alive timeout does).
    ClosedWhenIdle,
    /// After this many answers, the next request is read and the connection closed without
    /// an answer (what a server that times out an idle connection just as a request
    /// arrives does).
    AnsweringOnly(usize),
}

/// A bare HTTP/1.1 upstream that counts its connections and records each request head.
async fn counting_upstream(
    keeps: Keeps,
) -> (
    String,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
    std::sync::Arc<std::sync::Mutex<Vec<String>>>,
) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/app", listener.local_addr().expect("addr"));
    let connections = Arc::new(AtomicUsize::new(0));
    let heads = Arc::new(Mutex::new(Vec::new()));
    let (count, seen) = (Arc::clone(&connections), Arc::clone(&heads));
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let seen = Arc::clone(&seen);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut answered = 0;
                loop {
                    let Some(request) = read_message(&mut stream, &mut buf).await else {
                        return;
                    };
                    let head_end = request
                        .windows(4)
                        .position(|w| w == b"\r\n\r\n")
                        .map_or(request.len(), |at| at + 4);
                    let head = String::from_utf8_lossy(&request[..head_end]).to_lowercase();
                    seen.lock().expect("lock").push(head);
                    if matches!(keeps, Keeps::AnsweringOnly(n) if answered == n) {
                        return;
                    }
                    let answer = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
                    if stream.write_all(answer).await.is_err() {
                        return;
                    }
                    answered += 1;
                    if let Keeps::ClosedWhenIdle = keeps {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        return;
                    }
                }
            });
        }
    });
    (url, connections, heads)
}

async fn gateway_without_dedupe(upstream_url: &str) -> Gateway {
    spawn_gateway(&config_without_dedupe(upstream_url)).await
}

/// One protocol source at `/hooks/p`, dedupe off (tests send one delivery over and over).
fn config_without_dedupe(upstream_url: &str) -> String {
    one_source(
        upstream_url,
        "protocol",
        "/hooks/p",
        &[SECRET],
        "dedupe_window_s = 0",
    )
}

/// Deliveries on one kept-alive client connection (so all on one worker).
async fn deliveries_on_one_connection(gw: &Gateway, n: usize, gap: Duration) -> Vec<u16> {
    use hyper_util::rt::TokioIo;
    let stream = tokio::net::TcpStream::connect(gw.addr)
        .await
        .expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("hs");
    tokio::spawn(conn);
    let sig = signature();
    let mut statuses = Vec::new();
    for _ in 0..n {
        let req = http::Request::post("/hooks/p")
            .header("host", "x")
            .header("x-protocol-signature", &sig)
            .body(http_body_util::Full::new(Bytes::from_static(
                BODY.as_bytes(),
            )))
            .expect("req");
        statuses.push(
            collect(sender.send_request(req).await.expect("resp"))
                .await
                .status,
        );
        tokio::time::sleep(gap).await;
    }
    statuses
}

#[tokio::test]
async fn upstream_connections_are_kept_alive_with_host_and_origin_form() {
    use std::sync::atomic::Ordering;
    let (url, connections, heads) = counting_upstream(Keeps::Open).await;
    let gw = gateway_without_dedupe(&url).await;
    let statuses = deliveries_on_one_connection(&gw, 4, Duration::ZERO).await;
    assert_eq!(statuses, [200; 4]);
    assert_eq!(
        connections.load(Ordering::SeqCst),
        1,
        "one upstream connection reused"
    );
    let heads = heads.lock().expect("lock").clone();
    assert_eq!(heads.len(), 4);
    let authority = url.trim_start_matches("http://").trim_end_matches("/app");
    for head in &heads {
        assert!(head.starts_with("post /app http/1.1\r\n"), "{head}");
        assert!(
            head.contains(&format!("\r\nhost: {authority}\r\n")),
            "{head}"
        );
    }
}

/// An upstream connection is retired after 1,000 exchanges (nginx's `keepalive_requests`),
/// so that behind a Kubernetes Service new pods get connections of their own.
#[tokio::test]
async fn an_upstream_connection_is_retired_after_a_thousand_exchanges() {
    use std::sync::atomic::Ordering;
    let (url, connections, heads) = counting_upstream(Keeps::Open).await;
    let config = config_without_dedupe(&url);
    let (gw, metrics) = spawn_gateway_with_metrics(&config, "retired", None).await;
    let statuses = deliveries_on_one_connection(&gw, 1001, Duration::ZERO).await;
    assert!(statuses.iter().all(|s| *s == 200));
    assert_eq!(heads.lock().expect("lock").len(), 1001);
    assert_eq!(
        connections.load(Ordering::SeqCst),
        2,
        "the 1,001st exchange on a new connection"
    );
    // Counted as hookgate_upstream_connections_total.
    assert_eq!(metrics.upstream.connections.get(), 2);
}

#[tokio::test]
async fn an_upstream_connection_closed_while_idle_is_replaced_not_failed() {
    use std::sync::atomic::Ordering;
    let (url, connections, heads) = counting_upstream(Keeps::ClosedWhenIdle).await;
    let gw = gateway_without_dedupe(&url).await;
    let statuses = deliveries_on_one_connection(&gw, 3, Duration::from_millis(200)).await;
    assert_eq!(statuses, [200; 3]);
    assert_eq!(connections.load(Ordering::SeqCst), 3);
    assert_eq!(heads.lock().expect("lock").len(), 3);
}

/// An idle upstream connection the app closes (its keep-alive timeout) is closed by
/// hookgate too within `SWEEP`, also when no delivery comes to find it: it does not sit in
/// CLOSE-WAIT until the next one.
#[tokio::test]
async fn an_upstream_connection_the_app_closes_is_closed_while_no_delivery_comes() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/app", listener.local_addr().expect("addr"));
    let (closed_tx, closed_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.expect("accept");
        let mut buf = Vec::new();
        read_message(&mut stream, &mut buf)
            .await
            .expect("a request");
        let answer =
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
        stream.write_all(answer).await.expect("answer");
        // The app's keep-alive timeout: it sends its FIN, and reads on until hookgate's.
        tokio::time::sleep(Duration::from_millis(50)).await;
        stream.shutdown().await.expect("FIN");
        let closed_at = std::time::Instant::now();
        let mut rest = Vec::new();
        let read = stream.read_to_end(&mut rest).await;
        let _ = closed_tx.send((read.map(|_| rest.len()), closed_at.elapsed()));
    });
    let gw = gateway_without_dedupe(&url).await;
    assert_eq!(deliver(&gw).await.status, 200);
    let (read, took) = tokio::time::timeout(
        hookgate::upstream::SWEEP + Duration::from_secs(2),
        closed_rx,
    )
    .await
    .expect("hookgate closed its end while no delivery came")
    .expect("the upstream task reports");
    assert_eq!(read.expect("an orderly close"), 0, "nothing more was sent");
    assert!(
        took <= hookgate::upstream::SWEEP + Duration::from_millis(500),
        "{took:?}"
    );
}

#[tokio::test]
async fn a_kept_alive_connection_closed_as_the_request_goes_out_is_retried_once_on_a_new_one() {
    use std::sync::atomic::Ordering;
    let (url, connections, heads) = counting_upstream(Keeps::AnsweringOnly(1)).await;
    let gw = gateway_without_dedupe(&url).await;
    let statuses = deliveries_on_one_connection(&gw, 2, Duration::ZERO).await;
    assert_eq!(statuses, [200; 2]);
    // The second delivery went out on the kept-alive connection, got no answer, and went
    // again on a new connection: at least once, never lost.
    assert_eq!(connections.load(Ordering::SeqCst), 2);
    assert_eq!(heads.lock().expect("lock").len(), 3);

    // A new connection that closes without an answer is not tried again: 502.
    let (url, connections, heads) = counting_upstream(Keeps::AnsweringOnly(0)).await;
    let gw = gateway_without_dedupe(&url).await;
    let statuses = deliveries_on_one_connection(&gw, 1, Duration::ZERO).await;
    assert_eq!(statuses, [502]);
    assert_eq!(connections.load(Ordering::SeqCst), 1);
    assert_eq!(heads.lock().expect("lock").len(), 1);
}

/// An upstream named by a host name is reached by its addresses, also when it closes every
/// connection after its answer (each delivery then connects anew; the name's addresses
/// come from the worker's cache after the first lookup).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_named_by_host_name_is_reached_on_every_new_connection() {
    let mut reply = Reply::json(200, r#"{"ok":true}"#);
    reply.headers.push(("connection".into(), "close".into()));
    let upstream = spawn_upstream(reply).await;
    let url = format!("http://localhost:{}/app", upstream.addr.port());
    let gw = spawn_gateway(&one_source(
        &url,
        "protocol",
        "/hooks/p",
        &[SECRET],
        "dedupe_window_s = 0",
    ))
    .await;
    for _ in 0..3 {
        let a = deliver(&gw).await;
        assert_eq!((a.status, &a.body[..]), (200, &br#"{"ok":true}"#[..]));
    }
    let requests = upstream.requests();
    assert_eq!(requests.len(), 3);
    let host = format!("localhost:{}", upstream.addr.port());
    assert!(
        requests
            .iter()
            .all(|r| r.header("host") == Some(host.as_str()))
    );
}

/// Writes `head`, reads the answer (before any of the body is sent), then writes `body`;
/// the answer's head, lower-cased.
async fn answered_before_the_body(
    stream: &mut tokio::net::TcpStream,
    buf: &mut Vec<u8>,
    head: &str,
    body: &[u8],
) -> String {
    use tokio::io::AsyncWriteExt;
    stream.write_all(head.as_bytes()).await.expect("write");
    let answer = tokio::time::timeout(Duration::from_secs(5), read_message(stream, buf))
        .await
        .expect("an answer before the body")
        .expect("an answer");
    stream.write_all(body).await.expect("write the body");
    let answer = String::from_utf8_lossy(&answer).to_lowercase();
    answer[..answer.find("\r\n\r\n").unwrap_or(answer.len())].to_string()
}

/// A refusal made before the body is read (404, 405, 403) does not cost the sender its
/// connection when the body follows the head: hookgate reads the body and drops it, and the
/// connection carries the next request (before, hyper closed it with the answer saying
/// nothing of it, so a client's next request on it failed). One whose declared length is
/// over `max_body_bytes` is not read: its answer says `connection: close`.
#[tokio::test]
async fn a_refusal_before_the_body_keeps_the_connection_for_the_next_request() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fenced = "dedupe_window_s = 0\n\n[[source]]\nname = \"fenced\"\nplatform = \"protocol\"\n\
                  path = \"/hooks/fenced\"\nsecrets = [\"x\"]\nallow_cidrs = [\"10.0.0.0/8\"]";
    let (upstream, gw) = protocol_gateway(fenced, "max_body_bytes = 100000").await;
    let mut s = tokio::net::TcpStream::connect(gw.addr)
        .await
        .expect("connect");
    s.set_nodelay(true).expect("nodelay");
    let mut buf = Vec::new();
    let big = vec![b'a'; 100_000];
    let half = format!("{:x}\r\n{}\r\n", 50_000, "a".repeat(50_000));
    let exactly_the_limit_chunked = format!("{half}{half}0\r\n\r\n");
    for (head, body, status) in [
        (
            "POST /nope HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n",
            &big[..100],
            "404",
        ),
        (
            "PUT /hooks/p HTTP/1.1\r\nhost: x\r\ncontent-length: 90000\r\n\r\n",
            &big[..90_000],
            "405",
        ),
        (
            "POST /nope HTTP/1.1\r\nhost: x\r\ncontent-length: 100000\r\n\r\n",
            &big[..],
            "404",
        ),
        (
            "POST /hooks/fenced HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n",
            &b"5\r\nhello\r\n0\r\n\r\n"[..],
            "403",
        ),
        // Streamed, exactly max_body_bytes: read to its last chunk too.
        (
            "POST /nope HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n",
            exactly_the_limit_chunked.as_bytes(),
            "404",
        ),
    ] {
        let answer = answered_before_the_body(&mut s, &mut buf, head, body).await;
        assert!(
            answer.starts_with(&format!("http/1.1 {status}")),
            "{answer}"
        );
        assert!(!answer.contains("connection: close"), "{answer}");
    }
    // The same connection still delivers.
    let request = format!(
        "POST /hooks/p HTTP/1.1\r\nhost: x\r\nx-protocol-signature: {}\r\ncontent-length: {}\r\n\r\n{BODY}",
        signature(),
        BODY.len()
    );
    let answer = answered_before_the_body(&mut s, &mut buf, &request, b"").await;
    assert!(answer.starts_with("http/1.1 200"), "{answer}");
    assert_eq!(upstream.requests().len(), 1);

    // An HTTP/1.0 sender that keeps its connection alive: the same.
    let mut s10 = tokio::net::TcpStream::connect(gw.addr)
        .await
        .expect("connect");
    let head = "POST /nope HTTP/1.0\r\nconnection: keep-alive\r\ncontent-length: 100\r\n\r\n";
    let answer = answered_before_the_body(&mut s10, &mut buf, head, &big[..100]).await;
    assert!(answer.starts_with("http/1.0 404"), "{answer}");
    assert!(answer.contains("connection: keep-alive"), "{answer}");
    let head = "GET /healthz HTTP/1.0\r\nconnection: keep-alive\r\n\r\n";
    let answer = answered_before_the_body(&mut s10, &mut buf, head, b"").await;
    assert!(answer.starts_with("http/1.0 200"), "{answer}");

    // Over max_body_bytes by its declared length: not read, and said so.
    let head = "POST /nope HTTP/1.1\r\nhost: x\r\ncontent-length: 100001\r\n\r\n";
    let answer = answered_before_the_body(&mut s, &mut buf, head, b"").await;
    assert!(answer.starts_with("http/1.1 404"), "{answer}");
    assert!(answer.contains("connection: close"), "{answer}");
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
    assert!(matches!(closed, Ok(Ok(0))), "{closed:?} {rest:?}");

    // A sender that waits for `100 Continue` gets none (it would send the body), and is
    // told that the connection closes rather than waited for.
    let mut s = tokio::net::TcpStream::connect(gw.addr)
        .await
        .expect("connect");
    let head =
        "POST /nope HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\nexpect: 100-continue\r\n\r\n";
    let answer = answered_before_the_body(&mut s, &mut buf, head, b"").await;
    assert!(answer.starts_with("http/1.1 404"), "{answer}");
    assert!(answer.contains("connection: close"), "{answer}");
    let closed = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
    assert!(matches!(closed, Ok(Ok(0))), "{closed:?} {rest:?}");

    // A streamed body is read and dropped up to max_body_bytes only, not for as long as
    // its sender sends (body_timeout_s is 10 s here). Chunks of 30,000, so that the bytes
    // read do not reach exactly 100,000 at a chunk's end (a piece never spans two).
    let mut s = tokio::net::TcpStream::connect(gw.addr)
        .await
        .expect("connect");
    let head = "POST /nope HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n";
    let chunk = format!("{:x}\r\n{}\r\n", 30_000, "a".repeat(30_000));
    let answer = answered_before_the_body(&mut s, &mut buf, head, chunk.as_bytes()).await;
    assert!(answer.starts_with("http/1.1 404"), "{answer}");
    let started = Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if s.write_all(chunk.as_bytes()).await.is_err() {
                return;
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "still read after {:?}", started.elapsed());
}

/// An app that reads a request's head only and answers 413 at once, then closes the
/// connection (its unread body makes that a reset) or holds it without reading more.
async fn early_refusing_app(close: bool) -> std::net::SocketAddr {
    raw_app(move |mut s| async move {
        if answer_413_after_the_head(&mut s).await && !close {
            tokio::time::sleep(Duration::from_secs(30)).await;
        }
    })
    .await
}

/// An app that refuses a large event by its length before reading it (Go's `MaxBytesReader`,
/// nginx's `client_max_body_size`) has its 413 relayed, whether it then closes the
/// connection or stops reading and holds it: before, the closed one gave 502 (the write's
/// reset), the held one 504 at `timeout_ms`.
#[tokio::test]
async fn an_app_that_refuses_a_large_event_before_reading_it_has_its_answer_relayed() {
    for close in [true, false] {
        let app = early_refusing_app(close).await;
        let (gw, _) = large_events_gateway(app).await;
        let started = Instant::now();
        let a = post_large(&gw, 3_000_000).await;
        assert_eq!(
            (a.status, &a.body[..]),
            (413, &b"{\"error\":\"too big\"}\n"[..]),
            "close={close}"
        );
        assert!(started.elapsed() < Duration::from_secs(3), "close={close}");
    }
}

/// A protocol source (no dedupe) that takes webhooks of up to 4 MB, in front of the app at
/// `app`, on one worker (one upstream pool), with its metrics.
async fn large_events_gateway(
    app: std::net::SocketAddr,
) -> (Gateway, std::sync::Arc<hookgate::metrics::Metrics>) {
    let config = one_source(
        &format!("http://{app}/app"),
        "protocol",
        "/hooks/p",
        &[SECRET],
        "dedupe_window_s = 0",
    )
    .replace(
        "[server]\n",
        "[server]\nmax_body_bytes = 4000000\nmax_buffered_bytes = 8000000\n",
    );
    spawn_gateway_with_metrics(&config, "large-events", Some(1)).await
}

/// An app that writes `early` once it has a request's head, then, after a pause, reads
/// the whole body and writes `then`, request after request on a connection.
async fn early_answering_app(early: &'static str, then: &'static str) -> std::net::SocketAddr {
    use tokio::io::AsyncWriteExt;
    raw_app(move |mut s| async move {
        let mut buf = Vec::new();
        while read_head_into(&mut s, &mut buf).await {
            let _ = s.write_all(early.as_bytes()).await;
            // Then slow to take the body: the sender's write waits meanwhile.
            tokio::time::sleep(Duration::from_millis(200)).await;
            // The head already in `buf`, then the body by its length.
            if read_message(&mut s, &mut buf).await.is_none() {
                return;
            }
            let _ = s.write_all(then.as_bytes()).await;
        }
    })
    .await
}

/// An app that sends `100 Continue` unasked while a large event is still going out does not
/// cut the write: an interim answer is read past and the rest is sent (cutting it at any
/// answer, as f7a31b2 first did, left the app waiting for the body and hookgate for the
/// final answer, and the sender got 504 at `timeout_ms`).
#[tokio::test]
async fn an_interim_answer_while_a_large_event_goes_out_does_not_cut_it() {
    const OK: &str = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{\"ok\":true}";
    let app = early_answering_app("HTTP/1.1 100 Continue\r\n\r\n", OK).await;
    let (gw, _) = large_events_gateway(app).await;
    for size in [1_000, 3_000_000] {
        let a = post_large(&gw, size).await;
        assert_eq!(
            (a.status, &a.body[..]),
            (200, &b"{\"ok\":true}"[..]),
            "{size}"
        );
    }
}

/// A signed webhook whose message is `size` bytes long, to /hooks/p.
async fn post_large(gw: &Gateway, size: usize) -> Answer {
    let text = "t".repeat(size);
    let body = BODY.replace(r#""message":"hi""#, &format!(r#""message":"{text}""#));
    post(
        gw,
        "/hooks/p",
        &sig_header(&hmac_hex(SECRET, body.as_bytes())),
        &body,
    )
    .await
}

/// An app that answers before the body but keeps the connection and reads the rest, as
/// Node's server does, gets the whole event and keeps the connection for the next one
/// (RFC 9112 §9.5 has a client stop sending only when the server closes): its answer is
/// relayed once the event is sent.
#[tokio::test]
async fn an_early_answer_that_keeps_the_connection_lets_the_event_go_out_whole() {
    const EARLY: &str = "HTTP/1.1 413 Payload Too Large\r\ncontent-type: application/json\r\n\
                         content-length: 20\r\n\r\n{\"error\":\"too big\"}\n";
    let app = early_answering_app(EARLY, "").await;
    let (gw, metrics) = large_events_gateway(app).await;
    for _ in 0..2 {
        let a = post_large(&gw, 3_000_000).await;
        assert_eq!(
            (a.status, &a.body[..]),
            (413, &b"{\"error\":\"too big\"}\n"[..])
        );
    }
    // The app read each event whole, so one connection carried both.
    assert_eq!(metrics.upstream.connections.get(), 1);
}

/// The same over HTTP/2, where a sender that gives up resets its stream (or closes the
/// connection) instead of hanging up: the delivery is forwarded to the end, its id is
/// remembered, and it is counted and logged as finished (`hookgate_in_flight_requests`
/// back at 0), as over HTTP/1.1.
#[tokio::test]
async fn an_http2_delivery_whose_sender_gives_up_is_still_forwarded_whole() {
    let upstream =
        spawn_upstream(Reply::json(200, r#"{"ok":true}"#).after(Duration::from_millis(300))).await;
    let config = one_source(&upstream.url("/app"), "protocol", "/hooks/p", &[SECRET], "");
    let (gw, metrics) = spawn_gateway_with_metrics(&config, "h2-gives-up", None).await;
    let request = |id: &str| {
        let body = BODY.replace("evt-1", id);
        http::Request::post(gw.url("/hooks/p"))
            .version(http::Version::HTTP_2)
            .header("x-protocol-signature", hmac_hex(SECRET, body.as_bytes()))
            .body(http_body_util::Full::new(Bytes::from(body)))
            .expect("request")
    };

    // The stream reset (the answer's future dropped before the answer), the connection kept.
    let (mut sender, connection) = h2_connect(gw.addr).await;
    let gave_up = tokio::time::timeout(
        Duration::from_millis(100),
        sender.send_request(request("evt-reset")),
    )
    .await;
    assert!(gave_up.is_err(), "answered before the upstream did");
    // The whole connection closed while the upstream holds the delivery.
    let sent_then_closed = |id: &str| {
        let request = request(id);
        async move {
            let (mut sender, connection) = h2_connect(gw.addr).await;
            let _ = tokio::time::timeout(Duration::from_millis(100), sender.send_request(request))
                .await;
            drop(sender);
            connection.abort();
        }
    };
    sent_then_closed("evt-closed").await;

    upstream.wait_for_requests(2).await;
    let deadline = Instant::now() + Duration::from_secs(3);
    while metrics.in_flight.get() != 0 {
        assert!(
            Instant::now() < deadline,
            "deliveries still counted in flight"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for id in ["evt-reset", "evt-closed"] {
        let retry = collect(sender.send_request(request(id)).await.expect("answer")).await;
        assert_eq!(retry.status, 200);
        assert_eq!(retry.header("x-hookgate-duplicate"), Some("true"), "{id}");
    }
    let mut ids = upstream.event_ids();
    ids.sort();
    assert_eq!(ids, ["evt-closed", "evt-reset"]);
    let text = metrics.encode();
    assert!(
        text.contains(r#"hookgate_requests_total{source="protocol",status="200"} 4"#),
        "{text}"
    );
    drop(sender);
    connection.abort();

    // A drain waits for such a delivery as for a connection.
    sent_then_closed("evt-drain").await;
    upstream.wait_for_requests(3).await;
    assert!(gw.server.shutdown().await, "the drain timed out");
    let text = metrics.encode();
    assert!(
        text.contains(r#"hookgate_requests_total{source="protocol",status="200"} 5"#),
        "{text}"
    );
}

/// A body cut off by its sender is never taken for the whole body. hyper reads an HTTP/2
/// stream reset with NO_ERROR as the end of the body (RFC 9113 §8.1's early answer); with a
/// declared length the body is then known to be short, without one the stream's reset
/// tells. Here the part sent is the whole JSON (the spaces after it are not, where a length
/// is declared), on a source without proof, so nothing else would refuse it: before, the
/// NO_ERROR ones were forwarded. A reset with CANCEL (what a client that gives up sends) is
/// an error to hyper.
#[tokio::test]
async fn an_http2_body_its_sender_cut_off_is_not_forwarded() {
    let upstream = spawn_upstream(Reply::json(200, "{}")).await;
    let config = one_source(
        &upstream.url("/"),
        "protocol",
        "/hooks/p",
        &[],
        "verify = \"none\"",
    );
    let gw = spawn_gateway(&config).await;
    let tcp = tokio::net::TcpStream::connect(gw.addr)
        .await
        .expect("connect");
    let (client, connection) = h2::client::handshake(tcp).await.expect("handshake");
    tokio::spawn(connection);
    for (id, reason, sized) in [
        ("evt-no-error", h2::Reason::NO_ERROR, true),
        ("evt-cancel", h2::Reason::CANCEL, true),
        ("evt-no-error-unsized", h2::Reason::NO_ERROR, false),
    ] {
        let body = BODY.replace("evt-1", id);
        let mut request = http::Request::post(gw.url("/hooks/p"));
        if sized {
            request = request.header("content-length", body.len() + 8);
        }
        let request = request.body(()).expect("request");
        let mut client = client.clone().ready().await.expect("ready");
        let (_answer, mut stream) = client.send_request(request, false).expect("send");
        stream.send_data(Bytes::from(body), false).expect("data");
        tokio::time::sleep(Duration::from_millis(200)).await;
        stream.send_reset(reason);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        upstream.requests().is_empty(),
        "a cut-off body was forwarded"
    );
    // A whole body without a length goes through.
    let request = http::Request::post(gw.url("/hooks/p"))
        .body(())
        .expect("request");
    let mut client = client.ready().await.expect("ready");
    let (answer, mut stream) = client.send_request(request, false).expect("send");
    stream
        .send_data(Bytes::from(BODY.replace("evt-1", "evt-whole")), true)
        .expect("data");
    let answer = answer.await.expect("answer");
    assert_eq!(answer.status(), 200);
    let ids = upstream.event_ids();
    assert_eq!(ids, ["evt-whole"]);
}

/// A server dropped without a drain (an embedder's, a test's) stops: its workers end and
/// close the listener, so its port refuses connections rather than serving on unowned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_server_stops_serving() {
    let (_upstream, gw) = protocol_gateway("", "").await;
    assert_eq!(deliver(&gw).await.status, 200);
    let addr = gw.addr;
    drop(gw);
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(addr).await.is_ok() {
        assert!(Instant::now() < deadline, "{addr} still accepts");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
