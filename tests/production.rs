//! Production operation: real TLS handshakes with rcgen certificates (HTTP/1.1 and HTTP/2 by
//! ALPN, mTLS), an HTTPS upstream with a private CA, SIGTERM during a slow delivery, SIGHUP
//! secret rotation and a refused reload, the dev-cert script, and the Kubernetes manifests.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::TlsConnector;

const SECRET: &str = "prod-secret";
const BODY: &str = r#"{"id":"t1","type":"message.created","payload":{}}"#;

/// A test PKI written to `dir`: ca.crt, server.crt/key (127.0.0.1, localhost), client.crt/key.
struct Pki {
    ca: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
    dir: PathBuf,
}

fn make_pki(dir: &Path) -> Pki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "hookgate test CA");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca =
        CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("key")).expect("ca");
    std::fs::write(dir.join("ca.crt"), ca.pem()).expect("write");

    let leaf = |names: Vec<String>, usage: ExtendedKeyUsagePurpose, stem: &str| {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(names).expect("params");
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &ca).expect("sign");
        std::fs::write(dir.join(format!("{stem}.crt")), cert.pem()).expect("write");
        std::fs::write(dir.join(format!("{stem}.key")), key.serialize_pem()).expect("write");
    };
    leaf(
        vec!["127.0.0.1".into(), "localhost".into()],
        ExtendedKeyUsagePurpose::ServerAuth,
        "server",
    );
    leaf(
        vec!["client".into()],
        ExtendedKeyUsagePurpose::ClientAuth,
        "client",
    );
    Pki {
        ca: dir.join("ca.crt"),
        client_cert: dir.join("client.crt"),
        client_key: dir.join("client.key"),
        dir: dir.to_path_buf(),
    }
}

/// A TLS client trusting the test CA, offering `alpn`, optionally with a client certificate.
/// A self-signed CA:TRUE certificate made from `params`, written with a new key as
/// `dir/{stem}.crt` and `dir/{stem}.key`: what a partner or an app without a CA uses.
fn write_self_signed(dir: &Path, stem: &str, mut params: CertificateParams) {
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let key = KeyPair::generate().expect("key");
    let cert = params.self_signed(&key).expect("cert");
    std::fs::write(dir.join(format!("{stem}.crt")), cert.pem()).expect("write");
    std::fs::write(dir.join(format!("{stem}.key")), key.serialize_pem()).expect("write");
}

/// An HTTPS app's own self-signed certificate for `names`, valid from 2020 until `until`,
/// in `dir` as `server.crt` (also what hookgate's `ca` names) and `server.key`.
fn self_signed_app(dir: &Path, names: &[&str], until: (i32, u8, u8)) -> Pki {
    let mut params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .expect("params");
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(until.0, until.1, until.2);
    write_self_signed(dir, "server", params);
    Pki {
        ca: dir.join("server.crt"),
        client_cert: dir.join("-"),
        client_key: dir.join("-"),
        dir: dir.to_path_buf(),
    }
}

fn connector(pki: &Pki, alpn: &[&[u8]], with_client_cert: bool) -> TlsConnector {
    connector_speaking(pki, alpn, with_client_cert, rustls::DEFAULT_VERSIONS)
}

/// `connector`, speaking only `versions`.
fn connector_speaking(
    pki: &Pki,
    alpn: &[&[u8]],
    with_client_cert: bool,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(&pki.ca)
        .expect("ca")
        .flatten()
    {
        roots.add(c).expect("root");
    }
    let builder = rustls::ClientConfig::builder_with_provider(hookgate::tls::provider())
        .with_protocol_versions(versions)
        .expect("versions")
        .with_root_certificates(roots);
    let mut config = if with_client_cert {
        let chain: Vec<_> = CertificateDer::pem_file_iter(&pki.client_cert)
            .expect("cert")
            .flatten()
            .collect();
        let key = PrivateKeyDer::from_pem_file(&pki.client_key).expect("key");
        builder
            .with_client_auth_cert(chain, key)
            .expect("client auth")
    } else {
        builder.with_no_client_auth()
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    TlsConnector::from(Arc::new(config))
}

async fn tls_connect(
    addr: SocketAddr,
    c: &TlsConnector,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    c.connect(
        ServerName::try_from("127.0.0.1").expect("name").to_owned(),
        tcp,
    )
    .await
}

fn signed_request(uri: &str, version: http::Version) -> http::Request<Full<Bytes>> {
    http::Request::post(uri)
        .version(version)
        .header("host", "127.0.0.1")
        .header("x-protocol-signature", hmac_hex(SECRET, BODY.as_bytes()))
        .body(Full::new(Bytes::from_static(BODY.as_bytes())))
        .expect("request")
}

/// One signed delivery over an established TLS connection, HTTP/1.1.
async fn h1_delivery(tls: tokio_rustls::client::TlsStream<tokio::net::TcpStream>) -> Answer {
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .expect("h1");
    tokio::spawn(conn);
    let response = sender
        .send_request(signed_request("/hooks/p", http::Version::HTTP_11))
        .await
        .expect("resp");
    collect(response).await
}

/// One signed delivery to `uri` over HTTP/2 on an established connection.
async fn h2_delivery<IO>(io: IO, uri: &str) -> Answer
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
            .await
            .expect("h2");
    tokio::spawn(conn);
    let response = sender
        .send_request(signed_request(uri, http::Version::HTTP_2))
        .await
        .expect("resp");
    collect(response).await
}

/// A protocol source behind TLS with the PKI's files (relative to the config's folder).
fn tls_config(upstream: &str, client_ca: bool) -> String {
    let ca = if client_ca {
        ", client_ca = \"ca.crt\""
    } else {
        ""
    };
    protocol_source(
        upstream,
        SECRET,
        "",
        &format!("tls = {{ cert = \"server.crt\", key = \"server.key\"{ca} }}"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_delivery_over_http1_and_http2_by_alpn() {
    let dir = temp_dir("tls");
    let pki = make_pki(&dir);
    let upstream = spawn_upstream(Reply::json(200, r#"{"ok":true}"#)).await;
    let config =
        tls_config(&upstream.url("/"), false).replace("secrets", "dedupe_window_s = 0\nsecrets");
    let gw = spawn_gateway_in(&config, &pki.dir).await;

    // HTTP/1.1
    let tls = tls_connect(gw.addr, &connector(&pki, &[b"http/1.1"], false))
        .await
        .expect("handshake");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let a = h1_delivery(tls).await;
    assert_eq!((a.status, &a.body[..]), (200, &br#"{"ok":true}"#[..]));

    // HTTP/2, chosen by ALPN
    let tls = tls_connect(gw.addr, &connector(&pki, &[b"h2", b"http/1.1"], false))
        .await
        .expect("handshake");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let a = h2_delivery(tls, "https://127.0.0.1/hooks/p").await;
    assert_eq!(a.status, 200);

    // HTTP/1.0, named by ALPN as `curl --http1.0` does: served (it is in plaintext), not
    // refused at the handshake for want of a protocol in common.
    let mut tls = tls_connect(gw.addr, &connector(&pki, &[b"http/1.0"], false))
        .await
        .expect("handshake");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.0"[..]));
    let sig = hmac_hex(SECRET, BODY.as_bytes());
    let request = format!(
        "POST /hooks/p HTTP/1.0\r\nhost: 127.0.0.1\r\nx-protocol-signature: {sig}\r\n\
         content-length: {}\r\n\r\n{BODY}",
        BODY.len()
    );
    tokio::io::AsyncWriteExt::write_all(&mut tls, request.as_bytes())
        .await
        .expect("write");
    let mut answer = Vec::new();
    // An HTTP/1.0 answer ends with the connection.
    let _ = tokio::io::AsyncReadExt::read_to_end(&mut tls, &mut answer).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.0 200"), "{answer}");
    assert!(answer.ends_with(r#"{"ok":true}"#), "{answer}");

    let fwd = upstream.requests();
    assert_eq!(fwd.len(), 3);
    assert!(
        fwd.iter()
            .all(|r| r.header("x-forwarded-proto") == Some("https"))
    );
}

/// A version 2 PROXY header (`PROXY` command, TCP over IPv4) naming `client`.
fn proxy_v2(client: [u8; 4], port: u16, tlvs: &[u8]) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n\x21\x11".to_vec();
    h.extend_from_slice(&(12 + tlvs.len() as u16).to_be_bytes());
    h.extend_from_slice(&client);
    h.extend_from_slice(&[127, 0, 0, 1]);
    h.extend_from_slice(&port.to_be_bytes());
    h.extend_from_slice(&8443u16.to_be_bytes());
    h.extend_from_slice(tlvs);
    h
}

/// `PP2_TYPE_SSL` with the client bit set: the client's TLS ended at the balancer.
const CLIENT_TLS_TLV: &[u8] = &[0x20, 0x00, 0x05, 0x01, 0, 0, 0, 0];

/// The first answer on a new connection with `bytes` written on it.
async fn first_answer(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut s = connect_and_write(addr, bytes).await;
    let answer = read_message(&mut s, &mut Vec::new())
        .await
        .unwrap_or_default();
    String::from_utf8_lossy(&answer).into_owned()
}

/// Behind a TCP balancer that sends the PROXY protocol (`proxy_protocol_from`), the client
/// it names is the connection's peer: `x-forwarded-for`, `allow_cidrs` and the limits see
/// the sender, over plaintext (HTTP/1.1 and HTTP/2) and TLS alike. A listed peer's
/// connection without a valid header is closed unanswered and counted; a balancer's own
/// connection (version 2 `LOCAL`, its health check) is served as from the balancer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_balancers_proxy_header_names_the_client_over_plaintext_and_tls() {
    let upstream = spawn_upstream(Reply::json(200, "{}")).await;
    let config = protocol_source(
        &upstream.url("/"),
        SECRET,
        "dedupe_window_s = 0\nallow_cidrs = [\"203.0.113.0/24\"]",
        "proxy_protocol_from = [\"127.0.0.0/8\"]",
    );
    let (gw, metrics) = spawn_gateway_with_metrics(&config, "proxy", None).await;
    let request = signed_post("/hooks/p", SECRET, BODY);
    let wait = Duration::from_secs(5);

    // Version 1, the header and the request in one write.
    let line = "PROXY TCP4 203.0.113.7 127.0.0.1 51234 8080\r\n";
    let a = first_answer(gw.addr, format!("{line}{request}").as_bytes()).await;
    assert!(a.starts_with("HTTP/1.1 200"), "{a}");
    // A request of some KiB after it, read with it in the connection's first read.
    let long_body = format!(
        r#"{{"id":"long","type":"message.created","payload":{{"message":"{}"}}}}"#,
        "x".repeat(3000)
    );
    let long = signed_post("/hooks/p", SECRET, &long_body);
    let a = first_answer(gw.addr, format!("{line}{long}").as_bytes()).await;
    assert!(a.starts_with("HTTP/1.1 200"), "{a}");
    // In two pieces, cut inside the protocol's name, and the request after a pause.
    let mut s = connect_and_write(gw.addr, &line.as_bytes()[..8]).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    tokio::io::AsyncWriteExt::write_all(&mut s, &line.as_bytes()[8..])
        .await
        .expect("write");
    tokio::time::sleep(Duration::from_millis(50)).await;
    tokio::io::AsyncWriteExt::write_all(&mut s, request.as_bytes())
        .await
        .expect("write");
    let a = read_message(&mut s, &mut Vec::new()).await.expect("answer");
    assert!(
        a.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&a)
    );
    // A client the header names outside allow_cidrs: 403, as if it had connected itself.
    let a = first_answer(
        gw.addr,
        format!("PROXY TCP4 198.51.100.1 127.0.0.1 1 8080\r\n{request}").as_bytes(),
    )
    .await;
    assert!(a.starts_with("HTTP/1.1 403"), "{a}");

    // Version 2, then HTTP/2 with prior knowledge on the same connection.
    let stream = connect_and_write(gw.addr, &proxy_v2([203, 0, 113, 8], 40000, &[])).await;
    let a = h2_delivery(stream, &format!("http://{}/hooks/p", gw.addr)).await;
    assert_eq!(a.status, 200);
    // The client's TLS ended at the balancer, which says so: its scheme is https.
    let header = proxy_v2([203, 0, 113, 9], 40001, CLIENT_TLS_TLV);
    let a = first_answer(gw.addr, &[&header[..], request.as_bytes()].concat()).await;
    assert!(a.starts_with("HTTP/1.1 200"), "{a}");

    // A client the header names IPv4-mapped (a dual-stack balancer): in its IPv4 form.
    let mapped = "PROXY TCP6 ::ffff:203.0.113.10 ::1 51235 8080\r\n";
    let a = first_answer(gw.addr, format!("{mapped}{request}").as_bytes()).await;
    assert!(a.starts_with("HTTP/1.1 200"), "{a}");

    // The balancer's own connection (LOCAL): served as from 127.0.0.1, outside allow_cidrs.
    let mut local = proxy_v2([0; 4], 0, CLIENT_TLS_TLV);
    local[12] = 0x20;
    let a = first_answer(gw.addr, &[&local[..], request.as_bytes()].concat()).await;
    assert!(a.starts_with("HTTP/1.1 403"), "{a}");
    let a = first_answer(
        gw.addr,
        &[&local[..], b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n"].concat(),
    )
    .await;
    assert!(a.starts_with("HTTP/1.1 200"), "{a}");

    let seen: Vec<_> = upstream
        .requests()
        .iter()
        .map(|r| {
            let header = |name| r.header(name).unwrap_or("").to_string();
            (header("x-forwarded-for"), header("x-forwarded-proto"))
        })
        .collect();
    let seen: Vec<_> = seen.iter().map(|(a, p)| (a.as_str(), p.as_str())).collect();
    assert_eq!(
        seen,
        [
            ("203.0.113.7", "http"),
            ("203.0.113.7", "http"),
            ("203.0.113.7", "http"),
            ("203.0.113.8", "http"),
            ("203.0.113.9", "https"),
            ("203.0.113.10", "http"),
        ]
    );

    // Closed unanswered, each checked once the gateway has closed its side: a TCP probe
    // (nothing sent) is no failure; no header, a malformed one, and one cut off by the peer
    // are counted.
    for (bad, failures) in [
        (String::new(), 0),
        (request.clone(), 1),
        (
            format!("PROXY TCP4 203.0.113.300 127.0.0.1 1 2\r\n{request}"),
            2,
        ),
        ("PROXY TCP4 203.0.113.7".to_string(), 3),
    ] {
        let mut s = connect_and_write(gw.addr, bad.as_bytes()).await;
        if !bad.ends_with(BODY) {
            tokio::io::AsyncWriteExt::shutdown(&mut s)
                .await
                .expect("shutdown");
        }
        let mut out = Vec::new();
        let _ = tokio::time::timeout(wait, tokio::io::AsyncReadExt::read_to_end(&mut s, &mut out))
            .await
            .expect("closed");
        assert!(out.is_empty(), "{bad:?}: {}", String::from_utf8_lossy(&out));
        assert_eq!(metrics.proxy_header_failures.get(), failures, "{bad:?}");
    }
    assert_eq!(upstream.requests().len(), 6);

    // Over TLS: the header comes before the handshake.
    let dir = temp_dir("proxy-tls");
    let pki = make_pki(&dir);
    let config = with_server(
        &tls_config(&upstream.url("/"), false).replace("secrets", "dedupe_window_s = 0\nsecrets"),
        "proxy_protocol_from = [\"127.0.0.1\"]",
    );
    let tls_gw = spawn_gateway_in(&config, &pki.dir).await;
    let tcp = connect_and_write(
        tls_gw.addr,
        b"PROXY TCP4 192.0.2.44 127.0.0.1 3333 8443\r\n",
    )
    .await;
    let tls = connector(&pki, &[b"http/1.1"], false)
        .connect(
            ServerName::try_from("127.0.0.1").expect("name").to_owned(),
            tcp,
        )
        .await
        .expect("handshake");
    assert_eq!(h1_delivery(tls).await.status, 200);
    let last = upstream.requests().pop().expect("forwarded");
    assert_eq!(last.header("x-forwarded-for"), Some("192.0.2.44"));
    assert_eq!(last.header("x-forwarded-proto"), Some("https"));

    // A peer not listed sends no header and is served as it is.
    let config = protocol_source(
        &upstream.url("/"),
        SECRET,
        "dedupe_window_s = 0",
        "proxy_protocol_from = [\"10.0.0.0/8\"]",
    );
    let plain = spawn_gateway(&config).await;
    let a = first_answer(plain.addr, request.as_bytes()).await;
    assert!(a.starts_with("HTTP/1.1 200"), "{a}");
    let last = upstream.requests().pop().expect("forwarded");
    assert_eq!(last.header("x-forwarded-for"), Some("127.0.0.1"));
}

/// The served certificate's expiry is a metric, and `check` (like startup and reloads) warns
/// when it is less than 14 days away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_certificate_expiry_is_a_metric_and_warned_about_when_near() {
    let dir = temp_dir("tls-expiry");
    // Valid until midnight (UTC) three days from now: two to three days left.
    let in_three_days =
        hookgate::time::Millis::new(hookgate::time::Millis::now().as_i64() + 3 * 24 * 3600 * 1000)
            .expect("a time")
            .to_rfc3339();
    let day: Vec<u16> = in_three_days[..10]
        .split('-')
        .map(|n| n.parse().expect("a number"))
        .collect();
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(vec!["127.0.0.1".to_string()]).expect("params");
    params.not_after = rcgen::date_time_ymd(i32::from(day[0]), day[1] as u8, day[2] as u8);
    let cert = params.self_signed(&key).expect("cert");
    std::fs::write(dir.join("server.crt"), cert.pem()).expect("write");
    std::fs::write(dir.join("server.key"), key.serialize_pem()).expect("write");
    let midnight = params.not_after.unix_timestamp();

    let upstream = spawn_upstream(Reply::json(200, "{}")).await;
    let config = tls_config(&upstream.url("/"), false).replace(
        "[upstream]",
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n[upstream]",
    );
    std::fs::write(dir.join("check.toml"), &config).expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_hookgate"))
        .args([
            "check",
            "--config",
            &dir.join("check.toml").display().to_string(),
        ])
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("warning: server.tls cert")
            && stderr.contains(&format!(
                "expires at {}T00:00:00.000Z",
                &in_three_days[..10]
            )),
        "{stderr}"
    );

    let gw = spawn_gateway_in(&config, &dir).await;
    let admin = gw.server.admin_addr.expect("admin");
    let metrics = send(admin, "GET", "/metrics", &[], Bytes::new()).await;
    let text = String::from_utf8_lossy(&metrics.body);
    let want = format!(
        "hookgate_tls_certificate_not_after_timestamp_seconds{{cert=\"{}\"}} {midnight}",
        dir.join("server.crt").display()
    );
    assert!(text.lines().any(|l| l == want), "no {want:?} in\n{text}");
    // A reload (what the reload log prints) warns again, and the metric stays.
    let reloaded = gw.server.reload().expect("reload");
    let expires = format!("expires at {}T00:00:00.000Z", &in_three_days[..10]);
    assert!(
        reloaded
            .warnings
            .iter()
            .any(|w| w.contains("server.tls cert") && w.contains(&expires)),
        "{reloaded:?}"
    );
    let metrics = send(admin, "GET", "/metrics", &[], Bytes::new()).await;
    assert!(
        String::from_utf8_lossy(&metrics.body)
            .lines()
            .any(|l| l == want)
    );
}

/// A delivery over TLS without a client certificate: refused at the handshake (TLS 1.3
/// reports it on first use).
async fn deliver_without_client_certificate(
    addr: SocketAddr,
    pki: &Pki,
) -> std::io::Result<http::Response<hyper::body::Incoming>> {
    deliver_over(addr, &connector(pki, &[b"http/1.1"], false)).await
}

/// A delivery over HTTP/1.1 on a TLS connection made by `connector`; an error where the
/// handshake fails (with TLS 1.3, a refused client certificate shows on first use, as the
/// connection's error: the request's own says only that the connection was not ready).
async fn deliver_over(
    addr: SocketAddr,
    connector: &TlsConnector,
) -> std::io::Result<http::Response<hyper::body::Incoming>> {
    let tls = tls_connect(addr, connector).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(std::io::Error::other)?;
    let connection = tokio::spawn(conn);
    match sender
        .send_request(signed_request("/hooks/p", http::Version::HTTP_11))
        .await
    {
        Ok(answer) => Ok(answer),
        Err(e) => Err(match connection.await {
            Ok(Err(cause)) => std::io::Error::other(cause),
            _ => std::io::Error::other(e),
        }),
    }
}

/// The alert a server's refusal of the client's certificate ended `result` with.
fn refused_alert(result: std::io::Result<http::Response<hyper::body::Incoming>>) -> String {
    match result {
        Ok(answer) => panic!("served: {}", answer.status()),
        Err(e) => format!("{e:?}"),
    }
}

/// A failed handshake is logged with rustls' reason (what an operator needs when a sender
/// cannot connect), one line per 10 s at most, so that scanners cannot fill the log; a peer
/// that closes before any handshake gets no line. Before, only a debug line said why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_handshake_is_logged_with_its_reason_at_most_once_per_ten_seconds() {
    let dir = temp_dir("mtls-log");
    let pki = make_pki(&dir);
    let upstream = spawn_upstream(Reply::json(200, "{}")).await;
    let p = spawn_process(&dir, &tls_config(&upstream.url("/"), true), &[]);
    drop(
        tokio::net::TcpStream::connect(p.addr)
            .await
            .expect("connect"),
    );
    for _ in 0..3 {
        let refused = refused_alert(deliver_without_client_certificate(p.addr, &pki).await);
        assert!(
            refused.contains("AlertReceived(CertificateRequired)"),
            "{refused}"
        );
    }
    p.wait_for_line("TLS handshake failed").await;
    // The other two (and any line the probe would have had) come within the 10 s.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log = p.log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("TLS handshake failed"))
        .collect();
    assert_eq!(lines.len(), 1, "{log}");
    assert!(
        lines[0].contains("error=peer sent no certificates")
            && lines[0].contains("since_last_line=0"),
        "{log}"
    );
    assert!(upstream.requests().is_empty());
}

/// A partner's self-signed certificate (as `openssl req -x509` makes it: `CA:TRUE`) named
/// as `client_ca` lets that partner in, as nginx's `ssl_client_certificate` does; webpki
/// alone refuses it (`CaUsedAsEndEntity`). Another self-signed certificate of the same
/// name, with another key, stays out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_takes_a_partners_self_signed_certificate_named_as_client_ca() {
    let dir = temp_dir("mtls-pinned");
    let pki = make_pki(&dir);
    let self_signed = |stem: &str| {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params
            .distinguished_name
            .push(DnType::CommonName, "partner");
        write_self_signed(&dir, stem, params);
        Pki {
            ca: pki.ca.clone(),
            client_cert: dir.join(format!("{stem}.crt")),
            client_key: dir.join(format!("{stem}.key")),
            dir: pki.dir.clone(),
        }
    };
    let (partner, impostor) = (self_signed("partner"), self_signed("impostor"));
    let upstream = spawn_upstream(Reply::json(200, "{}")).await;
    let config = protocol_source(
        &upstream.url("/"),
        SECRET,
        "",
        "tls = { cert = \"server.crt\", key = \"server.key\", client_ca = \"partner.crt\" }",
    );
    let gw =
        spawn_gateway_in_context(&config, &pki.dir, hookgate::pipeline::Context::default()).await;
    let a = h1_delivery(
        tls_connect(gw.addr, &connector(&partner, &[b"http/1.1"], true))
            .await
            .expect("handshake"),
    )
    .await;
    assert_eq!(a.status, 200);
    assert_eq!(upstream.requests().len(), 1);
    let impostor =
        refused_alert(deliver_over(gw.addr, &connector(&impostor, &[b"http/1.1"], true)).await);
    assert!(
        impostor.contains("AlertReceived(CertificateUnknown)"),
        "{impostor}"
    );
    let no_certificate = refused_alert(deliver_without_client_certificate(gw.addr, &pki).await);
    assert!(
        no_certificate.contains("AlertReceived(CertificateRequired)"),
        "{no_certificate}"
    );
    assert_eq!(upstream.requests().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_refuses_a_client_without_a_certificate_and_serves_one_with() {
    let dir = temp_dir("mtls");
    let pki = make_pki(&dir);
    let upstream = spawn_upstream(Reply::json(200, "{}")).await;
    let context = hookgate::pipeline::Context::default();
    let metrics = std::sync::Arc::clone(&context.metrics);
    let gw =
        spawn_gateway_in_context(&tls_config(&upstream.url("/"), true), &pki.dir, context).await;
    // A peer that connects and closes before any handshake (a TCP probe) is no failure.
    drop(
        tokio::net::TcpStream::connect(gw.addr)
            .await
            .expect("connect"),
    );

    let no_certificate = refused_alert(deliver_without_client_certificate(gw.addr, &pki).await);
    assert!(
        no_certificate.contains("AlertReceived(CertificateRequired)"),
        "{no_certificate}"
    );
    assert!(upstream.requests().is_empty());
    // Counted once the gateway's side of the handshake has ended.
    let deadline = Instant::now() + Duration::from_secs(5);
    while metrics.tls_handshake_failures.get() == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(metrics.tls_handshake_failures.get(), 1);

    let a = h1_delivery(
        tls_connect(gw.addr, &connector(&pki, &[b"http/1.1"], true))
            .await
            .expect("handshake"),
    )
    .await;
    assert_eq!(a.status, 200);
    assert_eq!(upstream.requests().len(), 1);
    assert_eq!(
        metrics.tls_handshake_failures.get(),
        1,
        "the TCP probe was counted"
    );
}

/// Plain HTTP sent to the TLS listener (a sender's URL written `http://`) is answered 400
/// in plain HTTP, as nginx answers it, and counted as a request refused under no source,
/// not as a TLS handshake failure; a sender still writing a body gets the answer whole
/// (its bytes are read, so the close is no reset); TLS is served on. The log line names
/// the head's method, path and request id; and a balancer's PROXY header where none is
/// asked for is not taken for plain HTTP, its failed handshake's line saying what it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_on_the_tls_listener_gets_a_400_in_plain_http() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = temp_dir("plain-on-tls");
    let pki = make_pki(&dir);
    let upstream = spawn_upstream(Reply::json(200, "{}")).await;
    let context = hookgate::pipeline::Context::default();
    let metrics = std::sync::Arc::clone(&context.metrics);
    let gw =
        spawn_gateway_in_context(&tls_config(&upstream.url("/"), false), &pki.dir, context).await;

    let bodies = [BODY.to_string(), format!("{BODY}{}", " ".repeat(900_000))];
    for (body, id) in bodies.iter().zip(["plain-1", ""]) {
        let request = signed_post("/hooks/p", SECRET, body).replacen(
            "\r\n",
            &format!("\r\nx-request-id: {id}\r\n"),
            1,
        );
        // A small send buffer, so that the body is still being written when the answer
        // comes (in the kernel's default one it would all be sent at once).
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_send_buffer_size(4096).expect("SO_SNDBUF");
        let mut s = socket.connect(gw.addr).await.expect("connect");
        s.write_all(request.as_bytes()).await.expect("write");
        let mut answer = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut answer)).await;
        let answer = String::from_utf8_lossy(&answer);
        let read = read.map(|r| r.map_err(|e| e.kind()));
        assert_eq!(
            read,
            Ok(Ok(answer.len())),
            "{} bytes: {answer:?}",
            body.len()
        );
        assert!(
            answer.starts_with("HTTP/1.1 400 Bad Request\r\n")
                && answer.contains("\r\nconnection: close\r\n")
                && answer.contains("\r\ncontent-length: 23\r\n")
                && answer.ends_with("\r\n\r\n{\"error\":\"bad_request\"}"),
            "{answer:?}"
        );
        // The sender's request id, else (an empty one is none) a new one.
        let answered_id = answer
            .lines()
            .find_map(|l| l.strip_prefix("x-request-id: "))
            .expect("an x-request-id");
        if id.is_empty() {
            assert!(answered_id.len() == 32 && answered_id.bytes().all(|b| b.is_ascii_hexdigit()));
        } else {
            assert_eq!(answered_id, id);
        }
    }
    assert!(upstream.requests().is_empty());
    let m = scrape(&metrics.encode());
    let refused = [("source", ""), ("status", "400")];
    assert_eq!(get(&m, "hookgate_requests_total", &refused), Some(2.0));
    assert_eq!(
        get(&m, "hookgate_tls_handshake_failures_total", &[]),
        Some(0.0)
    );

    let a = h1_delivery(
        tls_connect(gw.addr, &connector(&pki, &[b"http/1.1"], false))
            .await
            .expect("handshake"),
    )
    .await;
    assert_eq!(a.status, 200);

    // The log line of a `hookgate run`: the head's method, path (its query, which may hold
    // funtek's token, left out) and request id, and why.
    let config = with_server(
        &tls_config(&upstream.url("/"), false),
        "log_format = \"json\"",
    );
    let p = spawn_process(&pki.dir, &config, &[]);
    let request = "POST /hooks/p?token=sekrit HTTP/1.1\r\nhost: x\r\nx-request-id: plain-2\r\n\
                   content-length: 2\r\n\r\n{}";
    let answer = raw_exchange(p.addr, request.as_bytes(), Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer:?}");
    p.wait_for_line("plain-2").await;
    let line = json_lines(&p.log())
        .into_iter()
        .find(|l| l["request_id"] == "plain-2")
        .expect("the line");
    let field = |name: &str| line[name].as_str().unwrap_or_default().to_string();
    assert_eq!(
        [
            field("reason"),
            field("method"),
            field("path"),
            field("client")
        ],
        ["bad_head", "POST", "/hooks/p", "127.0.0.1"],
        "{line}"
    );
    assert_eq!(line["status"], 400, "{line}");
    assert!(
        field("detail").starts_with("plain HTTP on the TLS listener"),
        "{line}"
    );
    assert!(!p.log().contains("sekrit"));

    // A balancer's PROXY header where none is asked for (proxy_protocol_from unset) is not
    // plain HTTP: no HTTP answer (rustls' alert), and the handshake's line says what it was.
    let proxied =
        b"PROXY TCP4 203.0.113.7 127.0.0.1 5000 443\r\n\x16\x03\x01\x00\x05\x01\x00\x00\x01\x00";
    let answer = raw_exchange(p.addr, proxied, Duration::from_secs(5)).await;
    assert!(!answer.starts_with("HTTP/"), "{answer:?}");
    p.wait_for_line("TLS handshake failed").await;
    let line = json_lines(&p.log())
        .into_iter()
        .find(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("TLS handshake failed"))
        })
        .expect("the line");
    assert_eq!(
        line["error"],
        "a PROXY protocol header from a peer not in [server] proxy_protocol_from: list the \
         balancer's address there, or turn the protocol off at the balancer",
        "{line}"
    );
}

/// Senders that speak only TLS 1.2 (older HTTP stacks) are served, client certificates
/// included: the certificate's signature is checked the TLS 1.2 way, and a sender without
/// one is refused in the handshake itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_1_2_senders_are_served_and_their_client_certificates_checked() {
    let dir = temp_dir("mtls-tls12");
    let pki = make_pki(&dir);
    let upstream = spawn_upstream(Reply::json(200, "{}")).await;
    let gw = spawn_gateway_in(&tls_config(&upstream.url("/"), true), &pki.dir).await;
    let tls12 = &[&rustls::version::TLS12];

    let refused = tls_connect(
        gw.addr,
        &connector_speaking(&pki, &[b"http/1.1"], false, tls12),
    )
    .await
    .map(|_| ());
    let refused = format!("{:?}", refused.expect_err("served without a certificate"));
    assert!(
        refused.contains("AlertReceived(CertificateRequired)"),
        "{refused}"
    );
    assert!(upstream.requests().is_empty());

    for alpn in [&b"http/1.1"[..], b"h2"] {
        let tls = tls_connect(gw.addr, &connector_speaking(&pki, &[alpn], true, tls12))
            .await
            .expect("handshake");
        assert_eq!(
            tls.get_ref().1.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_2)
        );
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(alpn));
        let a = if alpn == b"h2" {
            h2_delivery(tls, "https://127.0.0.1/hooks/p").await
        } else {
            h1_delivery(tls).await
        };
        assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(alpn));
    }
    // The same event twice: the second, verified too, is answered by dedupe.
    assert_eq!(upstream.requests().len(), 1);
}

/// An HTTPS app that speaks only TLS 1.2, behind its own self-signed certificate named as
/// `ca` (the pinned path, whose signature check for TLS 1.2 is its own): delivered; and one
/// whose certificate is not the named one is still refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_app_speaking_only_tls_1_2_is_reached() {
    let dir = temp_dir("tls12-app");
    let pki = self_signed_app(&dir, &["127.0.0.1"], (4000, 1, 1));
    let (app, seen, connections) =
        spawn_tls_upstream_speaking(&pki, &[&rustls::version::TLS12]).await;
    let gw = spawn_gateway_in(&https_upstream_config_trusting(app, "server.crt"), &dir).await;
    assert_eq!(deliver_body(gw.addr).await.status, 200);
    assert_eq!(seen.lock().expect("lock").len(), 1);
    assert_eq!(connections.load(std::sync::atomic::Ordering::SeqCst), 1);

    // Another self-signed certificate for the same name, not the one named: refused.
    let strange_dir = temp_dir("tls12-app-stranger");
    let strange = self_signed_app(&strange_dir, &["127.0.0.1"], (4000, 1, 1));
    let (app, seen, _) = spawn_tls_upstream_speaking(&strange, &[&rustls::version::TLS12]).await;
    let gw = spawn_gateway_in(&https_upstream_config_trusting(app, "server.crt"), &dir).await;
    assert_eq!(deliver_body(gw.addr).await.status, 502);
    assert!(seen.lock().expect("lock").is_empty());
}

/// An HTTPS upstream with the test PKI's server certificate; records bodies and counts
/// its TLS connections.
async fn spawn_tls_upstream(
    pki: &Pki,
) -> (
    SocketAddr,
    Arc<std::sync::Mutex<Vec<Bytes>>>,
    Arc<std::sync::atomic::AtomicUsize>,
) {
    spawn_tls_upstream_speaking(pki, rustls::DEFAULT_VERSIONS).await
}

/// `spawn_tls_upstream`, speaking only `versions`.
async fn spawn_tls_upstream_speaking(
    pki: &Pki,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> (
    SocketAddr,
    Arc<std::sync::Mutex<Vec<Bytes>>>,
    Arc<std::sync::atomic::AtomicUsize>,
) {
    use http_body_util::BodyExt;
    let acceptor = app_tls_acceptor_speaking(pki, versions);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (seen2, counted) = (Arc::clone(&seen), Arc::clone(&connections));
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let (acceptor, seen) = (acceptor.clone(), Arc::clone(&seen2));
            let counted = Arc::clone(&counted);
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let svc =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let seen = Arc::clone(&seen);
                        async move {
                            let body = req
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            seen.lock().expect("lock").push(body);
                            Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                                Bytes::from_static(b"{}"),
                            )))
                        }
                    });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    (addr, seen, connections)
}

/// A protocol source (no dedupe) in front of the HTTPS app at `app`, trusted through the
/// test PKI's `ca.crt`.
fn https_upstream_config(app: SocketAddr) -> String {
    https_upstream_config_trusting(app, "ca.crt")
}

/// A protocol source (no dedupe) in front of the HTTPS app at `app`, trusted through `ca`.
fn https_upstream_config_trusting(app: SocketAddr, ca: &str) -> String {
    one_source(
        &format!("https://127.0.0.1:{}/app", app.port()),
        "protocol",
        "/hooks/p",
        &[SECRET],
        "dedupe_window_s = 0",
    )
    .replace(
        "timeout_ms = 5000\n",
        &format!("timeout_ms = 5000\nca = {ca:?}\n"),
    )
}

/// An HTTPS app that reads a request's head only, answers 413 at once and closes the
/// connection, the rest of the request unread (so the close is a reset).
async fn early_refusing_tls_app(pki: &Pki) -> SocketAddr {
    let acceptor = app_tls_acceptor(pki);
    raw_app(move |tcp| {
        // As Go's server and nginx's keep-alive connections: the answer is not held back
        // behind the TLS session tickets' unacknowledged segment.
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        async move {
            if let Ok(mut tls) = acceptor.accept(tcp).await {
                answer_413_after_the_head(&mut tls).await;
            }
        }
    })
    .await
}

/// The TLS side of an HTTPS app: the test PKI's server certificate, HTTP/2 or HTTP/1.1.
fn app_tls_acceptor(pki: &Pki) -> tokio_rustls::TlsAcceptor {
    app_tls_acceptor_speaking(pki, rustls::DEFAULT_VERSIONS)
}

/// `app_tls_acceptor`, speaking only `versions`.
fn app_tls_acceptor_speaking(
    pki: &Pki,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> tokio_rustls::TlsAcceptor {
    let chain: Vec<_> = CertificateDer::pem_file_iter(pki.dir.join("server.crt"))
        .expect("c")
        .flatten()
        .collect();
    let key = PrivateKeyDer::from_pem_file(pki.dir.join("server.key")).expect("k");
    let mut config = rustls::ServerConfig::builder_with_provider(hookgate::tls::provider())
        .with_protocol_versions(versions)
        .expect("v")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("cert");
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

/// An HTTPS app that refuses a large event by its length and resets the connection has its
/// 413 relayed over TLS too: the write fails with the reset, and the answer that came before
/// it is read (with the read after a failed write left out, 502).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_app_that_refuses_a_large_event_and_resets_has_its_answer_relayed() {
    let dir = temp_dir("tls-early");
    let pki = make_pki(&dir);
    let app = early_refusing_tls_app(&pki).await;
    let config = https_upstream_config(app).replace(
        "[server]\n",
        "[server]\nmax_body_bytes = 4000000\nmax_buffered_bytes = 8000000\n",
    );
    let gw = spawn_gateway_in(&config, &pki.dir).await;
    let text = "t".repeat(3_000_000);
    let body = BODY.replace("{}", &format!(r#"{{"message":"{text}"}}"#));
    let sig = hmac_hex(SECRET, body.as_bytes());
    for _ in 0..3 {
        let a = send(
            gw.addr,
            "POST",
            "/hooks/p",
            &[("x-protocol-signature", &sig)],
            Bytes::from(body.clone()),
        )
        .await;
        assert_eq!(
            (a.status, &a.body[..]),
            (413, &b"{\"error\":\"too big\"}\n"[..])
        );
    }
}

/// `[upstream] ca` naming the app's own self-signed certificate, as `openssl req -x509` makes
/// it (basicConstraints CA:TRUE): trusted as that certificate, as OpenSSL trusts it, when it
/// names the URL's host and is valid now; webpki alone refuses a CA as the server's own.
/// The signed `BODY` to `/hooks/p` over plain HTTP/1.1.
async fn deliver_body(addr: SocketAddr) -> Answer {
    let sig = hmac_hex(SECRET, BODY.as_bytes());
    send(
        addr,
        "POST",
        "/hooks/p",
        &[("x-protocol-signature", &sig)],
        Bytes::from_static(BODY.as_bytes()),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_upstream_with_its_own_self_signed_certificate_as_ca() {
    for (names, until, want) in [
        (&["127.0.0.1"][..], (4000, 1, 1), 200),
        (&["app.example"][..], (4000, 1, 1), 502),
        (&["127.0.0.1"][..], (2021, 1, 1), 502),
    ] {
        let dir = temp_dir("tls-self-signed");
        let pki = self_signed_app(&dir, names, until);
        let (up, seen, _) = spawn_tls_upstream(&pki).await;
        let config = https_upstream_config_trusting(up, "server.crt");
        let gw = spawn_gateway_in(&config, &dir).await;
        let a = deliver_body(gw.addr).await;
        assert_eq!(a.status, want, "{names:?} until {until:?}");
        assert_eq!(seen.lock().expect("lock").len(), usize::from(want == 200));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_upstream_with_a_private_ca() {
    let dir = temp_dir("tls-up");
    let pki = make_pki(&dir);
    let (up, seen, connections) = spawn_tls_upstream(&pki).await;
    // Trusted through [upstream] ca: delivered.
    // No dedupe: the same delivery is sent five times.
    let config = https_upstream_config(up);
    let gw = spawn_gateway_in(&config, &pki.dir).await;
    let deliver = || deliver_body(gw.addr);
    assert_eq!(deliver().await.status, 200);
    assert_eq!(seen.lock().expect("lock").len(), 1);
    // Kept alive over TLS too: four more deliveries, at most one new TLS connection per
    // worker thread (each worker has its own pool; without reuse this would be 5).
    for _ in 0..4 {
        assert_eq!(deliver().await.status, 200);
    }
    assert_eq!(seen.lock().expect("lock").len(), 5);
    let tls_connections = connections.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        (1..=2).contains(&tls_connections),
        "{tls_connections} TLS connections for 5 deliveries"
    );
    // Idle past a sweep (which reads what the app sent meanwhile, TLS 1.3 session tickets
    // among it), the connections are still open and used: no new one.
    tokio::time::sleep(hookgate::upstream::SWEEP + Duration::from_millis(500)).await;
    for _ in 0..4 {
        assert_eq!(deliver().await.status, 200);
    }
    let after = connections.load(std::sync::atomic::Ordering::SeqCst);
    assert!(after <= 2, "{after} TLS connections after the sweep");
    // Without the CA the certificate is unknown: 502, nothing delivered.
    let url = format!("https://127.0.0.1:{}/app", up.port());
    let gw = spawn_gateway(&one_source(&url, "protocol", "/hooks/p", &[SECRET], "")).await;
    assert_eq!(deliver_body(gw.addr).await.status, 502);
    assert_eq!(seen.lock().expect("lock").len(), 9);
}

/// A reload takes over the worker's idle upstream connections, so the app sees no new
/// connection (over TLS, no new handshake) at every SIGHUP or changed file; one that changes
/// what `[upstream] ca` trusts opens new ones under the new trust.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_the_upstream_connections_unless_the_ca_changed() {
    let dir = temp_dir("tls-reload");
    let pki = make_pki(&dir);
    let (up, seen, connections) = spawn_tls_upstream(&pki).await;
    // One worker: one pool, so every delivery could take the same connection.
    let context = hookgate::pipeline::Context {
        workers: 1,
        ..Default::default()
    };
    let gw = spawn_gateway_in_context(&https_upstream_config(up), &pki.dir, context).await;
    let opened = || connections.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(deliver_body(gw.addr).await.status, 200);
    assert_eq!(opened(), 1);

    gw.server.reload().expect("reload");
    assert_eq!(deliver_body(gw.addr).await.status, 200);
    assert_eq!(opened(), 1, "a reload opened a new upstream connection");

    // The CA file now holds one certificate more: new trust, new connections.
    let mut ca = std::fs::read(&pki.ca).expect("ca");
    ca.extend(std::fs::read(pki.dir.join("client.crt")).expect("cert"));
    std::fs::write(&pki.ca, ca).expect("write");
    gw.server.reload().expect("reload");
    assert_eq!(deliver_body(gw.addr).await.status, 200);
    assert_eq!(opened(), 2);
    assert_eq!(seen.lock().expect("lock").len(), 3);
}

#[test]
fn unreadable_certificates_exit_2_naming_the_path() {
    let dir = temp_dir("tls-bad");
    make_pki(&dir);
    std::fs::write(dir.join("server.key"), "not a key").expect("write");
    let path = dir.join("hookgate.toml");
    std::fs::write(&path, tls_config("http://127.0.0.1:9/", false)).expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_hookgate"))
        .args(["check", "--config", &path.display().to_string()])
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    let key = dir.join("server.key");
    assert!(
        err.contains(&format!(
            "server.tls.key: {}: cannot read a private key",
            key.display()
        )),
        "{err}"
    );
}

#[test]
fn the_dev_cert_script_makes_certificates_that_load() {
    if Command::new("openssl").arg("version").output().is_err() {
        panic!("openssl is needed for this test (CI installs it)");
    }
    let dir = temp_dir("devcerts");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/certs/make-dev-certs.sh");
    let st = Command::new("bash")
        .arg(script)
        .arg(&*dir)
        .output()
        .expect("run script");
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let config = one_source("http://127.0.0.1:9/", "protocol", "/p", &["s"], "").replace(
        "[server]\n",
        "[server]\ntls = { cert = \"server.crt\", key = \"server.key\", client_ca = \"ca.crt\" }\n",
    );
    let path = dir.join("hookgate.toml");
    std::fs::write(&path, config).expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_hookgate"))
        .args(["check", "--config", &path.display().to_string()])
        .output()
        .expect("run");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("https"));
}

// ------------------------------------------------------------------ signals

async fn deliver_with(addr: SocketAddr, key: &str, id: &str) -> u16 {
    deliver_to(addr, "/hooks/p", key, id).await
}

/// A protocol delivery of event `id` to `path`, signed with `key`; its status.
async fn deliver_to(addr: SocketAddr, path: &str, key: &str, id: &str) -> u16 {
    let b = format!(r#"{{"id":"{id}","type":"message.created"}}"#);
    post_signed_status(addr, path, key, b).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_an_in_flight_delivery_finish_then_exits_0() {
    let upstream =
        spawn_upstream(Reply::json(200, r#"{"slow":true}"#).after(Duration::from_millis(1500)))
            .await;
    let dir = temp_dir("sigterm");
    let config = one_source(&upstream.url("/"), "protocol", "/hooks/p", &[SECRET], "").replace(
        "[server]\n",
        "[server]\nshutdown_delay_s = 1\nshutdown_grace_s = 10\n",
    );
    let mut p = spawn_process(&dir, &config, &[]);
    let addr = p.addr;
    let in_flight = deliver_in_background(addr);
    // The same delivery over HTTP/2, whose connection gets a GOAWAY in the drain.
    let (h2, h2_connection) = h2_connect(addr).await;
    let h2_post = || {
        hyper::Request::builder()
            .method("POST")
            .uri(format!("http://{addr}/hooks/p"))
            .header("x-protocol-signature", hmac_hex(SECRET, BODY.as_bytes()))
            .body(Full::new(Bytes::from_static(BODY.as_bytes())))
            .expect("request")
    };
    let h2_in_flight = tokio::spawn(h2.clone().send_request(h2_post()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    p.signal("TERM");
    tokio::time::sleep(Duration::from_millis(200)).await;
    // During shutdown_delay_s: still serving, but not ready.
    assert_eq!(
        send(addr, "GET", "/readyz", &[], Bytes::new()).await.status,
        503
    );
    assert_eq!(
        send(addr, "GET", "/healthz", &[], Bytes::new())
            .await
            .status,
        200
    );
    let a = in_flight.await.expect("task");
    assert_eq!(
        (a.status, &a.body[..]),
        (200, &br#"{"slow":true}"#[..]),
        "the in-flight delivery completed"
    );
    let h2_answer = collect(
        h2_in_flight
            .await
            .expect("task")
            .expect("the HTTP/2 stream in flight is answered"),
    )
    .await;
    assert_eq!(
        (h2_answer.status, &h2_answer.body[..]),
        (200, &br#"{"slow":true}"#[..])
    );
    // Past the GOAWAY, the connection takes no new stream, and then ends.
    assert!(h2.clone().send_request(h2_post()).await.is_err());
    tokio::time::timeout(Duration::from_secs(5), h2_connection)
        .await
        .expect("the HTTP/2 connection ends")
        .expect("task")
        .expect("it ends cleanly (GOAWAY, then close)");
    assert_eq!(p.wait_exit(Duration::from_secs(10)), Some(0), "{}", p.log());
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "still accepting after exit"
    );
    assert_eq!(upstream.requests().len(), 2);
    // Its log line was written before the exit (a worker writes its lines in batches).
    let request_id = a.headers["x-request-id"].to_str().expect("ascii");
    let log = p.log();
    assert!(
        log.lines()
            .any(|l| l.contains(request_id) && l.contains("status=200")),
        "no log line for {request_id}:\n{log}"
    );
}

/// A process serving one protocol source whose secret is the file `p.secret` (`old-secret`,
/// checked to verify), `server` added to its `[server]`.
async fn serving_a_secret_file(tag: &str, server: &str) -> (Upstream, TempDir, Process) {
    let upstream = spawn_upstream(Reply::json(200, "{}")).await;
    let dir = temp_dir(tag);
    std::fs::write(dir.join("p.secret"), "old-secret\n").expect("write");
    let config = protocol_source(
        &upstream.url("/"),
        "file:p.secret",
        "dedupe_window_s = 0",
        server,
    );
    let p = spawn_process(&dir, &config, &[]);
    assert_eq!(deliver_with(p.addr, "old-secret", "1").await, 200);
    (upstream, dir, p)
}

/// Polls `deliver` until it gives `want`, for up to 5 s.
async fn eventually<F, Fut>(p: &Process, what: &str, want: u16, mut deliver: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = u16>,
{
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let got = deliver().await;
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: still {got}, not {want}:\n{}",
            p.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_rotates_secrets_and_keeps_the_old_config_when_the_new_one_is_invalid() {
    let (_upstream, dir, mut p) = serving_a_secret_file("sighup", "").await;
    let addr = p.addr;
    assert_eq!(deliver_with(addr, "new-secret", "2").await, 401);

    std::fs::write(dir.join("p.secret"), "new-secret\n").expect("write");
    p.signal("HUP");
    eventually(&p, "the new secret", 200, || {
        deliver_with(addr, "new-secret", "3")
    })
    .await;
    assert_eq!(deliver_with(p.addr, "old-secret", "4").await, 401);
    assert!(p.log().contains("config reloaded"), "{}", p.log());
    // The log says the rotation was taken up (how many secrets, never what).
    assert_eq!(
        p.lines_with(r#"source "protocol": secrets changed (1 now)"#),
        1,
        "{}",
        p.log()
    );

    // An invalid config: logged in one line, the old one stays.
    std::fs::write(dir.join("hookgate.toml"), "[server]\nlisten = 5\n").expect("write");
    p.signal("HUP");
    p.wait_for_line("reload refused").await;
    assert_eq!(deliver_with(p.addr, "new-secret", "5").await, 200);
    let refused: Vec<String> = p
        .log()
        .lines()
        .filter(|l| l.contains("reload refused"))
        .map(String::from)
        .collect();
    assert_eq!(refused.len(), 1);
    assert!(
        refused[0].contains("hookgate.toml") && refused[0].contains("listen"),
        "{}",
        refused[0]
    );
    assert!(!p.log().contains("new-secret") && !p.log().contains("old-secret"));
    p.signal("TERM");
    assert_eq!(p.wait_exit(Duration::from_secs(10)), Some(0));
}

/// With `reload_poll_s`, a changed file is a reload without a signal: a secret swapped in as
/// the kubelet does (a symlink renamed over another), and a config that names a secret file before that file
/// exists (a ConfigMap and a Secret update separately): refused and logged once, then
/// loaded once the file is there, though the serving config never named it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_poll_picks_up_changed_files_without_a_signal() {
    let (_upstream, dir, p) = serving_a_secret_file("reload-poll", "reload_poll_s = 1\n").await;
    let addr = p.addr;

    // The kubelet's layout: p.secret -> ..data/p.secret, ..data -> ..v1 (same contents as
    // before, so no reload), and an update renames a new ..data link over the old one.
    let version = |v: &str, secret: &str| {
        std::fs::create_dir(dir.join(v)).expect("dir");
        std::fs::write(dir.join(v).join("p.secret"), secret).expect("write");
        std::os::unix::fs::symlink(v, dir.join("..data_tmp")).expect("link");
        std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).expect("rename");
    };
    version("..v1", "old-secret\n");
    std::os::unix::fs::symlink("..data/p.secret", dir.join("p.secret.link")).expect("link");
    std::fs::rename(dir.join("p.secret.link"), dir.join("p.secret")).expect("rename");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(p.lines_with("config reloaded"), 0, "{}", p.log());
    assert_eq!(deliver_with(addr, "old-secret", "1b").await, 200);

    version("..v2", "new-secret\n");
    eventually(&p, "the swapped secret", 200, || {
        deliver_with(addr, "new-secret", "2")
    })
    .await;
    assert_eq!(deliver_with(addr, "old-secret", "3").await, 401);
    assert_eq!(p.lines_with("config reloaded (a file changed)"), 1);

    // Unchanged files: no more reloads.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert_eq!(p.lines_with("config reloaded"), 1, "{}", p.log());

    let serving = std::fs::read_to_string(dir.join("hookgate.toml")).expect("read");
    let with_q = format!(
        "{serving}\n[[source]]\nname = \"q\"\nplatform = \"protocol\"\npath = \"/hooks/q\"\n\
         secrets = [\"file:q.secret\"]\n"
    );
    std::fs::write(dir.join("hookgate.toml"), with_q).expect("write");
    let deliver_q = || deliver_to(addr, "/hooks/q", "q-secret", "q1");
    p.wait_for_line("reload refused").await;
    // Tried again at every poll, told once.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(p.lines_with("reload refused"), 1, "{}", p.log());
    assert!(p.log().contains("q.secret"), "{}", p.log());
    assert_eq!(deliver_q().await, 404, "the old config serves");
    assert_eq!(deliver_with(addr, "new-secret", "4").await, 200);

    std::fs::write(dir.join("q.secret"), "q-secret").expect("write");
    eventually(&p, "the new source", 200, deliver_q).await;
    assert_eq!(deliver_with(addr, "new-secret", "5").await, 200);
    assert_eq!(p.lines_with("config reloaded (a file changed)"), 2);
    assert!(
        !p.log().contains("-secret"),
        "a secret in the log:\n{}",
        p.log()
    );
}

// -------------------------------------------------------------- kubernetes

fn yaml_docs(path: &str) -> Vec<yaml_rust2::Yaml> {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path))
        .expect("manifest");
    yaml_rust2::YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn find<'a>(docs: &'a [yaml_rust2::Yaml], kind: &str) -> &'a yaml_rust2::Yaml {
    docs.iter()
        .find(|d| d["kind"].as_str() == Some(kind))
        .unwrap_or_else(|| panic!("no {kind}"))
}

/// The ConfigMap's hookgate.toml validates as hookgate would read it in the pod, with the
/// Secret's keys as files beside it.
fn check_configmap(docs: &[yaml_rust2::Yaml]) -> hookgate::config::Config {
    let cm = find(docs, "ConfigMap");
    let toml = cm["data"]["hookgate.toml"]
        .as_str()
        .expect("hookgate.toml in the ConfigMap");
    let secret = find(docs, "Secret");
    let dir = temp_dir("k8s");
    let data = secret["stringData"].as_hash().expect("Secret stringData");
    std::fs::create_dir_all(dir.join("secrets")).expect("dir");
    for (k, v) in data {
        std::fs::write(
            dir.join("secrets").join(k.as_str().expect("key")),
            v.as_str().expect("value"),
        )
        .expect("write");
    }
    hookgate::config::Config::from_toml_str(toml, &dir.join("hookgate.toml"))
        .unwrap_or_else(|e| panic!("ConfigMap config: {e}"))
}

fn hookgate_container(deploy: &yaml_rust2::Yaml) -> &yaml_rust2::Yaml {
    deploy["spec"]["template"]["spec"]["containers"]
        .as_vec()
        .expect("containers")
        .iter()
        .find(|c| c["name"].as_str() == Some("hookgate"))
        .expect("a hookgate container")
}

#[test]
fn kubernetes_manifests_parse_and_match_the_config() {
    for (path, sidecar) in [
        ("deploy/kubernetes/sidecar.yaml", true),
        ("deploy/kubernetes/standalone.yaml", false),
    ] {
        let docs = yaml_docs(path);
        let config = check_configmap(&docs);
        let deploy = find(&docs, "Deployment");
        let pod = &deploy["spec"]["template"]["spec"];
        let c = hookgate_container(deploy);
        let port = config.server.listen.port() as i64;
        assert_eq!(
            c["readinessProbe"]["httpGet"]["path"].as_str(),
            Some("/readyz"),
            "{path}"
        );
        assert_eq!(
            c["livenessProbe"]["httpGet"]["path"].as_str(),
            Some("/healthz"),
            "{path}"
        );
        assert_eq!(
            c["readinessProbe"]["httpGet"]["port"].as_i64(),
            Some(port),
            "{path}"
        );
        // Liveness on the admin listener, on the pod's address: at max_connections the main
        // listener makes a probe wait past its timeout, and the kubelet would restart
        // hookgate under load.
        let admin = config.admin.expect("an admin listener");
        assert!(
            admin.ip().is_unspecified(),
            "{path}: the kubelet reaches {admin}"
        );
        assert_eq!(
            c["livenessProbe"]["httpGet"]["port"].as_i64(),
            Some(i64::from(admin.port())),
            "{path}"
        );
        let grace = pod["terminationGracePeriodSeconds"]
            .as_i64()
            .expect("terminationGracePeriodSeconds");
        let needed = (config.server.shutdown_delay + config.server.shutdown_grace).as_secs() as i64;
        assert!(
            grace > needed,
            "{path}: terminationGracePeriodSeconds {grace} must exceed {needed}"
        );
        assert_eq!(
            c["securityContext"]["runAsNonRoot"].as_bool(),
            Some(true),
            "{path}"
        );
        let mounts: Vec<&str> = c["volumeMounts"]
            .as_vec()
            .expect("mounts")
            .iter()
            .filter_map(|m| m["mountPath"].as_str())
            .collect();
        assert!(mounts.contains(&"/etc/hookgate"), "{path}: {mounts:?}");
        assert!(
            mounts.contains(&"/etc/hookgate/secrets"),
            "{path}: {mounts:?}"
        );
        // The kubelet never updates a subPath mount: reload_poll_s would see no change.
        assert!(
            c["volumeMounts"]
                .as_vec()
                .expect("mounts")
                .iter()
                .all(|m| m["subPath"].is_badvalue()),
            "{path}: a subPath mount"
        );
        assert!(config.server.reload_poll.is_some(), "{path}: reload_poll_s");
        // Workers set, not one per node core (a container without a CPU limit sees them
        // all), so that the body budget is max_buffered_bytes as the memory limit assumes.
        let workers: u64 = c["env"]
            .as_vec()
            .expect("env")
            .iter()
            .find(|e| e["name"].as_str() == Some("HOOKGATE_WORKERS"))
            .and_then(|e| e["value"].as_str())
            .and_then(|v| v.parse().ok())
            .expect("HOOKGATE_WORKERS");
        assert!((1..=1024).contains(&workers), "{path}: {workers} workers");
        assert!(
            workers * config.server.max_body_bytes <= config.server.max_buffered_bytes,
            "{path}: {workers} workers would take more than max_buffered_bytes"
        );
        // The memory limit holds the worst senders can do (README "Memory"): ~8 MiB, the
        // body budget, and up to 1.25 MiB per connection (an HTTP/2 one: 16 streams of 16
        // KiB heads and its window, measured at ~1.02 MiB).
        const MIB: u64 = 1024 * 1024;
        let limit = c["resources"]["limits"]["memory"]
            .as_str()
            .and_then(|m| m.strip_suffix("Mi"))
            .and_then(|m| m.parse::<u64>().ok())
            .expect("a memory limit in Mi")
            * MIB;
        let worst = 8 * MIB
            + config.server.max_buffered_bytes
            + config.server.max_connections as u64 * MIB * 5 / 4;
        assert!(
            limit >= worst,
            "{path}: a memory limit of {} MiB under the worst case of {} MiB",
            limit / MIB,
            worst / MIB
        );
        let service = find(&docs, "Service");
        let ports = service["spec"]["ports"].as_vec().expect("ports");
        assert_eq!(
            ports.len(),
            1,
            "{path}: the Service exposes only hookgate's port"
        );
        assert_eq!(ports[0]["targetPort"].as_i64(), Some(port), "{path}");
        let upstream = config.sources[0].upstream.to_string();
        if sidecar {
            let containers = pod["containers"].as_vec().expect("containers");
            assert_eq!(containers.len(), 2, "{path}: app and hookgate");
            // The app gets SIGTERM with hookgate: it must stay up while hookgate drains,
            // and still have time to stop within the pod's grace.
            let app = containers
                .iter()
                .find(|c| c["name"].as_str() == Some("app"))
                .expect("an app container");
            let sleep = app["lifecycle"]["preStop"]["sleep"]["seconds"]
                .as_i64()
                .expect("the app's preStop sleep");
            assert!(
                sleep >= needed,
                "{path}: the app's preStop sleep {sleep} < {needed}"
            );
            assert!(
                grace > sleep,
                "{path}: grace {grace} <= the app's sleep {sleep}"
            );
            assert!(
                upstream.starts_with("http://127.0.0.1:"),
                "{path}: forwards to the app on localhost: {upstream}"
            );
        } else {
            assert!(
                upstream.contains(".svc"),
                "{path}: forwards to the app's Service: {upstream}"
            );
        }
    }
}

/// A client that connects anew for every delivery resumes its TLS session from a ticket,
/// however many other clients came in between: past the 256 sessions rustls' own cache
/// keeps (two per handshake), only a stateless ticket still resumes. Not past a reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_sessions_resume_from_tickets_past_any_session_cache() {
    let dir = temp_dir("tls-tickets");
    let pki = make_pki(&dir);
    let upstream = spawn_upstream(Reply::json(200, "{}")).await;
    let gw = spawn_gateway_in(&tls_config(&upstream.url("/"), false), &dir).await;
    let handshake = |tls: &tokio_rustls::client::TlsStream<tokio::net::TcpStream>| {
        tls.get_ref().1.handshake_kind()
    };
    // The client keeps its sessions across connections (its config's own store).
    let first = connector(&pki, &[b"http/1.1"], false);
    let tls = tls_connect(gw.addr, &first).await.expect("handshake");
    assert_eq!(handshake(&tls), Some(rustls::HandshakeKind::Full));
    assert_eq!(h1_delivery(tls).await.status, 200, "tickets arrive");
    let tls = tls_connect(gw.addr, &first).await.expect("handshake");
    assert_eq!(handshake(&tls), Some(rustls::HandshakeKind::Resumed));
    assert_eq!(h1_delivery(tls).await.status, 200);

    for _ in 0..150 {
        let other = connector(&pki, &[b"http/1.1"], false);
        let tls = tls_connect(gw.addr, &other).await.expect("handshake");
        assert_eq!(h1_delivery(tls).await.status, 200);
    }
    let tls = tls_connect(gw.addr, &first).await.expect("handshake");
    assert_eq!(
        handshake(&tls),
        Some(rustls::HandshakeKind::Resumed),
        "300 sessions later"
    );
    assert_eq!(h1_delivery(tls).await.status, 200);

    // A reload makes new ticket keys: no session from before it resumes (so a changed
    // client_ca holds for every client at once).
    gw.server.reload().expect("reload");
    let tls = tls_connect(gw.addr, &first).await.expect("handshake");
    assert_eq!(handshake(&tls), Some(rustls::HandshakeKind::Full));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_serves_new_connections_with_the_new_certificate() {
    let dir = temp_dir("tls-reload");
    let old = make_pki(&dir);
    let upstream = spawn_upstream(Reply::json(200, "{}")).await;
    let config = tls_config(&upstream.url("/"), false);
    let gw = spawn_gateway_in(&config, &dir).await;
    let old_client = connector(&old, &[b"http/1.1"], false);
    assert!(tls_connect(gw.addr, &old_client).await.is_ok());

    // A new PKI in place of the old files, then a reload.
    let new_dir = temp_dir("tls-reload-new");
    let new = make_pki(&new_dir);
    for f in ["server.crt", "server.key"] {
        std::fs::copy(new_dir.join(f), dir.join(f)).expect("copy");
    }
    gw.server.reload().expect("reload");
    let new_client = connector(&new, &[b"http/1.1"], false);
    let a = h1_delivery(
        tls_connect(gw.addr, &new_client)
            .await
            .expect("the new certificate is served"),
    )
    .await;
    assert_eq!(a.status, 200);
    assert!(
        tls_connect(gw.addr, &old_client).await.is_err(),
        "the old certificate is gone"
    );
}

/// The signed `BODY` sent to `/hooks/p` by a task of its own.
fn deliver_in_background(addr: SocketAddr) -> tokio::task::JoinHandle<Answer> {
    tokio::spawn(deliver_body(addr))
}

/// A drain lets a delivery still waiting on a slow upstream finish, even past
/// `body_timeout_s`, which bounds only how long an answer may go unread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_waits_for_a_slow_upstream_past_body_timeout() {
    let upstream =
        spawn_upstream(Reply::json(200, r#"{"slow":true}"#).after(Duration::from_millis(2500)))
            .await;
    let config = one_source(&upstream.url("/"), "protocol", "/hooks/p", &[SECRET], "").replace(
        "[server]\n",
        "[server]\nbody_timeout_s = 1\nshutdown_grace_s = 10\n",
    );
    let gw = spawn_gateway(&config).await;
    let addr = gw.addr;
    let in_flight = deliver_in_background(addr);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let server = gw.server;
    assert!(server.shutdown().await, "the drain did not end cleanly");
    let a = in_flight.await.expect("the delivery's answer");
    assert_eq!((a.status, &a.body[..]), (200, &br#"{"slow":true}"#[..]));
}

/// A connection that has sent nothing when the drain begins is closed then, as a kept-alive
/// one between requests is, instead of holding the drain for its head deadline (also one
/// whose balancer has sent its PROXY header and nothing of the client's yet); one whose
/// head has begun is waited for and answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_closes_connections_that_sent_nothing_and_answers_begun_heads() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let upstream = spawn_upstream(Reply::json(200, "{}")).await;
    let config = protocol_source(
        &upstream.url("/"),
        SECRET,
        "",
        "header_timeout_s = 5\nshutdown_grace_s = 10\nproxy_protocol_from = [\"127.0.0.0/8\"]",
    );
    let gw = spawn_gateway(&config).await;
    let line = "PROXY TCP4 203.0.113.7 127.0.0.1 51234 8080\r\n";
    let request = format!("{line}{}", signed_post("/hooks/p", SECRET, BODY));
    let (head, rest) = request.split_at(line.len() + 20);
    let silent = tokio::net::TcpStream::connect(gw.addr)
        .await
        .expect("connect");
    let header_only = connect_and_write(gw.addr, line.as_bytes()).await;
    let mut begun = connect_and_write(gw.addr, head.as_bytes()).await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    let started = Instant::now();
    let server = gw.server;
    let drain = tokio::spawn(async move { server.shutdown().await });
    for (what, mut idle) in [("silent", silent), ("header only", header_only)] {
        let mut buf = [0u8; 64];
        let closed = tokio::time::timeout(Duration::from_secs(2), idle.read(&mut buf)).await;
        assert!(
            matches!(closed, Ok(Ok(0))),
            "a {what} connection held the drain: {closed:?}"
        );
    }
    begun.write_all(rest.as_bytes()).await.expect("write");
    let answer = read_message(&mut begun, &mut Vec::new())
        .await
        .expect("an answer");
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    assert!(drain.await.expect("drain"), "the drain did not end cleanly");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(upstream.requests().len(), 1);
}

/// A second SIGTERM or SIGINT during the drain (an operator's second Ctrl-C) exits at once,
/// with status 1, instead of waiting out `shutdown_grace_s` for a slow delivery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_during_the_drain_exits_at_once() {
    let upstream = spawn_upstream(Reply::json(200, "{}").after(Duration::from_secs(20))).await;
    let dir = temp_dir("second-signal");
    let config = one_source(&upstream.url("/"), "protocol", "/hooks/p", &[SECRET], "")
        .replace("[server]\n", "[server]\nshutdown_grace_s = 30\n");
    let mut p = spawn_process(&dir, &config, &[]);
    // A raw connection: the delivery is cut when hookgate exits, and nothing waits for it.
    let _in_flight =
        connect_and_write(p.addr, signed_post("/hooks/p", SECRET, BODY).as_bytes()).await;
    upstream.wait_for_requests(1).await;
    p.signal("TERM");
    // The first signal drains: still running while the delivery waits on its upstream.
    assert_eq!(p.wait_exit(Duration::from_millis(700)), None);
    p.signal("INT");
    assert_eq!(p.wait_exit(Duration::from_secs(3)), Some(1));
    assert!(p.log().contains("second SIGTERM or SIGINT"), "{}", p.log());
}

/// Out of file descriptors, accepting fails at each retry (20 a second per worker): the log
/// says so once per worker and 10 s, with what to do, and once connections close, new ones
/// are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_out_of_descriptors_is_logged_once_and_passes() {
    let (_upstream, _dir, p) = serving_a_secret_file("emfile", "").await;
    let pid = libc::pid_t::try_from(p.child.id()).expect("pid");
    rlimit::prlimit(pid, rlimit::Resource::NOFILE, Some((48, 48)), None).expect("prlimit");

    let held = open_connections(p.addr, 80).await;
    p.wait_for_line("accept failed").await;
    // 1.5 s more of failing accepts: 30 more retries per worker.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let lines = p.lines_with("accept failed");
    assert!((1..=2).contains(&lines), "{lines} lines:\n{}", p.log());
    assert!(
        p.log().contains("raise the open-files limit"),
        "{}",
        p.log()
    );

    drop(held);
    eventually(&p, "a delivery once connections closed", 200, || {
        deliver_with(p.addr, "old-secret", "2")
    })
    .await;
}

/// A balancer not set to send the PROXY header makes every delivery fail unanswered: the
/// first such connection is logged at warn level, naming the setting, and the next ones
/// within the minute only counted (a log line per connection would flood the log).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_proxy_header_is_logged_once_a_minute() {
    let upstream = spawn_upstream(Reply::json(200, "{}")).await;
    let dir = temp_dir("proxy-warn");
    let config = protocol_source(
        &upstream.url("/"),
        SECRET,
        "",
        "proxy_protocol_from = [\"127.0.0.0/8\"]",
    );
    let p = spawn_process(&dir, &config, &[]);
    let request = signed_post("/hooks/p", SECRET, BODY);
    for _ in 0..3 {
        let a = raw_exchange(p.addr, request.as_bytes(), Duration::from_secs(5)).await;
        assert!(a.is_empty(), "{a}");
    }
    p.wait_for_line("did not open with a valid PROXY header")
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        p.lines_with("did not open with a valid PROXY header"),
        1,
        "{}",
        p.log()
    );
    assert!(p.log().contains("is the balancer set to send one?"));
    assert!(upstream.requests().is_empty());
}
