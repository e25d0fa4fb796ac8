//! Test helpers: a recording upstream, an in-process gateway on 127.0.0.1:0, and clients
//! that speak real HTTP/1.1 and HTTP/2 over real sockets.
#![allow(dead_code)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};

use hookgate::config::Config;
use hookgate::limit::LimitClock;
use hookgate::pipeline::Context;
use hookgate::server::{self, Server};

/// One request the upstream received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: http::Method,
    pub uri: http::Uri,
    pub version: http::Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("forwarded body is JSON")
    }
}

/// How the upstream answers.
#[derive(Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    pub delay: Duration,
}

impl Reply {
    pub fn json(status: u16, body: &str) -> Reply {
        Reply {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: Bytes::copy_from_slice(body.as_bytes()),
            delay: Duration::ZERO,
        }
    }

    /// The same answer, given `delay` after the request has arrived (an app slow to answer).
    pub fn after(self, delay: Duration) -> Reply {
        Reply { delay, ..self }
    }
}

/// What the upstream answers a request with.
type Replier = Arc<dyn Fn(&Recorded) -> Reply + Send + Sync>;

pub struct Upstream {
    pub addr: SocketAddr,
    pub received: Arc<Mutex<Vec<Recorded>>>,
    reply: Arc<Mutex<Replier>>,
}

impl Upstream {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
    pub fn requests(&self) -> Vec<Recorded> {
        self.received.lock().expect("lock").clone()
    }
    /// Waits until `n` requests have arrived (at most 5 s).
    pub async fn wait_for_requests(&self, n: usize) {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while self.requests().len() < n {
            assert!(
                std::time::Instant::now() < deadline,
                "{n} requests not forwarded"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    /// The event ids (`x-hookgate-event-id`) of the requests received, in their order.
    pub fn event_ids(&self) -> Vec<String> {
        self.requests()
            .iter()
            .map(|r| r.header("x-hookgate-event-id").unwrap_or("").to_owned())
            .collect()
    }
    pub fn set_reply(&self, reply: Reply) {
        *self.reply.lock().expect("lock") = Arc::new(move |_| reply.clone());
    }
}

/// A real HTTP/1.1 + HTTP/2 server on 127.0.0.1:0 that records every request.
pub async fn spawn_upstream(reply: Reply) -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind upstream");
    spawn_upstream_on(listener, reply)
}

/// The same, on a listener of the caller's (an app that comes up at a given address).
pub fn spawn_upstream_on(listener: TcpListener, reply: Reply) -> Upstream {
    spawn_upstream_answering(listener, move |_| reply.clone())
}

/// The same, answering each request as `replier` says from what it received.
pub fn spawn_upstream_answering<F>(listener: TcpListener, replier: F) -> Upstream
where
    F: Fn(&Recorded) -> Reply + Send + Sync + 'static,
{
    let addr = listener.local_addr().expect("addr");
    let received = Arc::new(Mutex::new(Vec::new()));
    let reply: Arc<Mutex<Replier>> = Arc::new(Mutex::new(Arc::new(replier)));
    let (rec, rep) = (Arc::clone(&received), Arc::clone(&reply));
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (rec, rep) = (Arc::clone(&rec), Arc::clone(&rep));
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let (rec, rep) = (Arc::clone(&rec), Arc::clone(&rep));
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        let recorded = Recorded {
                            method: parts.method,
                            uri: parts.uri,
                            version: parts.version,
                            headers: parts.headers,
                            body,
                        };
                        let replier = Arc::clone(&rep.lock().expect("lock"));
                        let reply = replier(&recorded);
                        rec.lock().expect("lock").push(recorded);
                        tokio::time::sleep(reply.delay).await;
                        let mut r = Response::new(Full::new(reply.body.clone()));
                        *r.status_mut() = StatusCode::from_u16(reply.status).expect("status");
                        for (k, v) in &reply.headers {
                            r.headers_mut().insert(
                                http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                                http::HeaderValue::from_str(v).expect("value"),
                            );
                        }
                        Ok::<_, Infallible>(r)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Upstream {
        addr,
        received,
        reply,
    }
}

/// A gateway serving `config` (a TOML text), whose `file:` paths resolve in `dir`.
pub struct Gateway {
    pub server: Server,
    pub addr: SocketAddr,
    /// The folder of its config, when the gateway owns it (removed with the gateway).
    dir: Option<TempDir>,
}

impl Gateway {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Keeps `dir` (its config, its secret files) for as long as the gateway lives.
    pub fn keeping(mut self, dir: TempDir) -> Gateway {
        self.dir = Some(dir);
        self
    }
}

/// A test's temporary folder, removed when dropped; reads as the `Path` it is.
pub struct TempDir(tempfile::TempDir);

impl std::ops::Deref for TempDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        self.0.path()
    }
}

/// An address that refuses connections, and that no test running beside this one can take
/// meanwhile: a socket bound to it that does not listen (the kernel resets a connect to
/// it). A port merely closed again could be bound by another test's listener, and a
/// delivery meant to be refused would reach that test's app. Keep the socket for as long
/// as the address must refuse; `listen` on it turns it into the app's listener.
pub fn refusing_address() -> (SocketAddr, tokio::net::TcpSocket) {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .expect("bind");
    let addr = socket.local_addr().expect("addr");
    (addr, socket)
}

/// An address whose connections are never made (as behind a firewall that drops them): a
/// listener with room for one waiting connection, which it never accepts, and that one
/// taken; the kernel drops the SYNs of the next. Keep both for as long as it must hold.
pub async fn silent_address() -> (SocketAddr, tokio::net::TcpListener, TcpStream) {
    let (addr, socket) = refusing_address();
    let listener = socket.listen(0).expect("listen");
    let queued = TcpStream::connect(addr).await.expect("the one queued");
    (addr, listener, queued)
}

/// A loopback port free a moment ago, for a process that must be told its port (the process
/// binds it itself, so it cannot be held meanwhile).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A fresh temporary folder for a test's files.
pub fn temp_dir(tag: &str) -> TempDir {
    let dir = tempfile::Builder::new()
        .prefix(&format!("hookgate-test-{tag}-"))
        .tempdir()
        .expect("temp dir");
    TempDir(dir)
}

pub async fn spawn_gateway(config: &str) -> Gateway {
    let dir = temp_dir("gw");
    spawn_gateway_in(config, &dir).await.keeping(dir)
}

pub async fn spawn_gateway_in(config: &str, dir: &Path) -> Gateway {
    spawn_gateway_with(config, dir, LimitClock::default()).await
}

/// A gateway whose rate limits and dedupe run on `clock` (a fake one: no sleeps).
pub async fn spawn_gateway_with(config: &str, dir: &Path, clock: LimitClock) -> Gateway {
    let context = Context {
        clock,
        ..Context::default()
    };
    spawn_gateway_in_context(config, dir, context).await
}

/// A gateway on a context of the test's own (its worker count, its metrics).
pub async fn spawn_gateway_in_context(config: &str, dir: &Path, context: Context) -> Gateway {
    let path = dir.join("hookgate.toml");
    std::fs::write(&path, config).expect("write config");
    let config = Config::load(&path).expect("valid test config");
    let prepared = server::prepare_with(config, context, None).expect("prepare");
    let server = Server::start(prepared).await.expect("start");
    let addr = server.local_addr;
    Gateway {
        server,
        addr,
        dir: None,
    }
}

/// A config with one source; `extra` lines go into the `[[source]]` table.
pub fn one_source(
    upstream: &str,
    platform: &str,
    path: &str,
    secrets: &[&str],
    extra: &str,
) -> String {
    let secrets = secrets
        .iter()
        .map(|s| format!("{s:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n\n[upstream]\nurl = {upstream:?}\ntimeout_ms = 5000\n\n\
         [[source]]\nname = {platform:?}\nplatform = {platform:?}\npath = {path:?}\nsecrets = [{secrets}]\n{extra}\n"
    )
}

/// A config with one protocol source at `/hooks/p` with `secret`, `source` lines in its
/// `[[source]]` table and `server` lines in `[server]`: what most tests serve.
pub fn protocol_source(upstream: &str, secret: &str, source: &str, server: &str) -> String {
    with_server(
        &one_source(upstream, "protocol", "/hooks/p", &[secret], source),
        server,
    )
}

/// `config` with `lines` (TOML, one key per line) added to its `[server]` table.
pub fn with_server(config: &str, lines: &str) -> String {
    config.replace("[server]\n", &format!("[server]\n{lines}\n"))
}

/// The answer a client got.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|_| {
            panic!(
                "answer body is not JSON: {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// Sends one request over a new HTTP/1.1 connection.
pub async fn send(
    addr: SocketAddr,
    method: &str,
    path_and_query: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Answer {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(method)
        .uri(path_and_query)
        .header("host", addr.to_string());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(body.into())).expect("request");
    let resp = sender.send_request(req).await.expect("response");
    collect(resp).await
}

/// A new HTTP/2 (prior knowledge) connection to `addr`: its request sender, and the task
/// that drives the connection (which ends when the connection does).
pub async fn h2_connect(
    addr: SocketAddr,
) -> (
    hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    tokio::task::JoinHandle<hyper::Result<()>>,
) {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2 handshake");
    (sender, tokio::spawn(conn))
}

/// Sends one request over a new HTTP/2 (prior knowledge) connection.
pub async fn send_h2(
    addr: SocketAddr,
    path_and_query: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Answer {
    let (mut sender, _connection) = h2_connect(addr).await;
    let mut req = Request::builder()
        .method("POST")
        .version(http::Version::HTTP_2)
        .uri(format!("http://{addr}{path_and_query}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(body.into())).expect("request");
    let resp = sender.send_request(req).await.expect("h2 response");
    collect(resp).await
}

pub async fn collect(resp: Response<Incoming>) -> Answer {
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    Answer {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body,
    }
}

/// hex(HMAC-SHA256(key, body)).
pub fn hmac_hex(key: &str, body: &[u8]) -> String {
    use hmac::{Hmac, KeyInit, Mac};
    let mut mac = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(key.as_bytes()).expect("key");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// POSTs `body` to `path` over a new HTTP/1.1 connection, signed the protocol way with
/// `key`; the answer's status.
pub async fn post_signed_status(addr: SocketAddr, path: &str, key: &str, body: String) -> u16 {
    signed_delivery(addr, path, key, body).await.status
}

/// `body` POSTed to `path` with its protocol signature by `key`, on a new HTTP/1.1
/// connection: the answer.
pub async fn signed_delivery(addr: SocketAddr, path: &str, key: &str, body: String) -> Answer {
    let sig = hmac_hex(key, body.as_bytes());
    send(
        addr,
        "POST",
        path,
        &[("x-protocol-signature", &sig)],
        Bytes::from(body),
    )
    .await
}

/// A raw HTTP/1.1 POST of `body` to `path`, with its protocol signature made with `secret`.
pub fn signed_post(path: &str, secret: &str, body: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nhost: x\r\nx-protocol-signature: {}\r\ncontent-length: {}\r\n\r\n{body}",
        hmac_hex(secret, body.as_bytes()),
        body.len()
    )
}

/// `n` new connections to `addr`, held open (nothing written) until dropped.
pub async fn open_connections(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        held.push(TcpStream::connect(addr).await.expect("connect"));
    }
    held
}

/// A new connection with `bytes` written on it.
pub async fn connect_and_write(addr: SocketAddr, bytes: &[u8]) -> TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(bytes).await.expect("write");
    s
}

/// Reads one HTTP/1.1 message (its head and a `content-length` body) off a raw connection,
/// taking `buf`'s bytes first and leaving what follows the message there; `None` if the
/// peer closes (or the read fails) before the message is whole.
pub async fn read_message(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|n| n.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + length {
                return Some(buf.drain(..end + 4 + length).collect());
            }
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Writes raw bytes on a new connection and reads until the server closes it or `wait` passes.
pub async fn raw_exchange(addr: SocketAddr, bytes: &[u8], wait: Duration) -> String {
    use tokio::io::AsyncReadExt;
    let mut s = connect_and_write(addr, bytes).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(wait, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// The JSON lines of a log written with `log_format = "json"`, parsed (a line that is not
/// JSON, as a panic's, is left out).
pub fn json_lines(log: &str) -> Vec<serde_json::Value> {
    log.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// A `hookgate run` process; killed on drop.
pub struct Process {
    pub child: std::process::Child,
    pub addr: SocketAddr,
    log: PathBuf,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Process {
    /// Sends a signal (`TERM`, `HUP`, …).
    pub fn signal(&self, sig: &str) {
        let ok = std::process::Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(ok.success());
    }

    /// Everything the process printed so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// How many of its log lines so far contain `text`.
    pub fn lines_with(&self, text: &str) -> usize {
        self.log().lines().filter(|l| l.contains(text)).count()
    }

    /// Waits up to 5 s for a log line containing `text`.
    pub async fn wait_for_line(&self, text: &str) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while self.lines_with(text) == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "no {text:?} in:\n{}",
                self.log()
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// The exit code, if it exits within `within`.
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        self.wait_status(within).and_then(|s| s.code())
    }

    /// How it ended (an exit code or a signal), if it ends within `within`.
    pub fn wait_status(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + within;
        while std::time::Instant::now() < deadline {
            if let Some(s) = self.child.try_wait().expect("wait") {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

/// `command`, set to be killed when the thread that starts it ends, so that a test run
/// killed from outside (cargo-mutants' timeout, a ^C) leaves no `hookgate run` behind
/// spinning a core: `Process`'s `Drop` runs only when the test ends normally. The signal
/// follows the starting *thread*, which here is the test's own, that lives as long as the
/// child is wanted.
#[allow(unsafe_code)] // `pre_exec` is unsafe; nothing in the product's code needs this.
pub fn ends_with_the_test(command: &mut std::process::Command) -> &mut std::process::Command {
    use std::os::unix::process::CommandExt;
    let parent = std::process::id();
    // SAFETY: `prctl`, `getppid` and `_exit` are async-signal-safe and touch no memory of
    // the parent's.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have ended before the signal was asked for.
            if libc::getppid() as u32 != parent {
                libc::_exit(1);
            }
            Ok(())
        })
    }
}

/// Runs the binary on `config` written to `dir/hookgate.toml`, with a `:0` listen port
/// replaced by a free one; everything it prints goes to `dir/out.log` (a full pipe would
/// block a process that logs a lot). Returns once it accepts connections.
pub fn spawn_process(dir: &Path, config: &str, env: &[(&str, &str)]) -> Process {
    let port = free_port();
    let config = config
        .replace("127.0.0.1:0\"", &format!("127.0.0.1:{port}\""))
        .replace("0.0.0.0:0\"", &format!("0.0.0.0:{port}\""))
        .replace("[::]:0\"", &format!("[::]:{port}\""));
    let path = dir.join("hookgate.toml");
    std::fs::write(&path, config).expect("write config");
    let log = dir.join("out.log");
    let out = std::fs::File::create(&log).expect("log file");
    let child = ends_with_the_test(&mut std::process::Command::new(env!(
        "CARGO_BIN_EXE_hookgate"
    )))
    .args(["run", "--config", &path.display().to_string()])
    .env("RUST_LOG", "info")
    .envs(env.iter().copied())
    .stdout(std::process::Stdio::from(out.try_clone().expect("clone")))
    .stderr(std::process::Stdio::from(out))
    .spawn()
    .expect("spawn hookgate");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "hookgate did not come up"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Process { child, addr, log }
}

/// An app's 413, as one that refuses a request by its head answers before reading the body.
pub const EARLY_413: &str = "HTTP/1.1 413 Payload Too Large\r\ncontent-type: application/json\r\n\
                             content-length: 20\r\nconnection: close\r\n\r\n{\"error\":\"too big\"}\n";

/// Reads off `io` into `buf` until `buf` holds a whole head (and whatever came with it);
/// `false` if the connection ended first.
pub async fn read_head_into<IO>(io: &mut IO, buf: &mut Vec<u8>) -> bool
where
    IO: tokio::io::AsyncRead + Unpin,
{
    use tokio::io::AsyncReadExt;
    let mut piece = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match io.read(&mut piece).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => buf.extend_from_slice(&piece[..n]),
        }
    }
    true
}

/// Reads a request's head (and whatever came with it) off `io`, then writes `EARLY_413`;
/// `false` if the connection ended first.
pub async fn answer_413_after_the_head<IO>(io: &mut IO) -> bool
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::AsyncWriteExt;
    if !read_head_into(io, &mut Vec::new()).await {
        return false;
    }
    let _ = io.write_all(EARLY_413.as_bytes()).await;
    let _ = io.flush().await;
    true
}

/// An app on a loopback port that serves each connection with `serve`.
pub async fn raw_app<F, Fut>(serve: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(serve(s));
        }
    });
    addr
}

/// A gateway on metrics of the test's own, to read them directly; `workers` threads
/// (`Some(1)`: one body budget and one upstream pool), else one per core.
pub async fn spawn_gateway_with_metrics(
    config: &str,
    tag: &str,
    workers: Option<usize>,
) -> (Gateway, Arc<hookgate::metrics::Metrics>) {
    let default = Context::default();
    let context = Context {
        workers: workers.unwrap_or(default.workers),
        ..default
    };
    let metrics = Arc::clone(&context.metrics);
    let dir = temp_dir(tag);
    let gw = spawn_gateway_in_context(config, &dir, context)
        .await
        .keeping(dir);
    (gw, metrics)
}

/// The admin listener's scrape, parsed, and its text.
pub async fn scrape_admin(admin: SocketAddr) -> (Samples, String) {
    let a = send(admin, "GET", "/metrics", &[], Bytes::new()).await;
    assert_eq!(a.status, 200);
    let text = String::from_utf8(a.body.to_vec()).expect("utf-8");
    (scrape(&text), text)
}

/// (metric name, sorted labels) → value.
pub type Samples = HashMap<(String, Vec<(String, String)>), f64>;

/// The scrape, parsed.
pub fn scrape(text: &str) -> Samples {
    let parsed = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .expect("valid exposition");
    let mut out = HashMap::new();
    for s in parsed.samples {
        let mut labels: Vec<(String, String)> = s
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        labels.sort();
        match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => {
                out.insert((s.metric, labels), v);
            }
            prometheus_parse::Value::Histogram(buckets) => {
                for b in buckets {
                    let mut l = labels.clone();
                    l.push(("le".into(), b.less_than.to_string()));
                    l.sort();
                    out.insert((format!("{}_bucket", s.metric), l), b.count);
                }
            }
            prometheus_parse::Value::Summary(_) => {}
        }
    }
    out
}

/// A sample's key in [`Samples`]: its name and its labels, sorted.
pub fn sample(name: &str, labels: &[(&str, &str)]) -> (String, Vec<(String, String)>) {
    let mut l: Vec<(String, String)> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    l.sort();
    (name.to_string(), l)
}

pub fn get(m: &Samples, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    m.get(&sample(name, labels)).copied()
}

/// One figure of `/proc/PID/...` as the kernel shows it from outside the process.
#[cfg(target_os = "linux")]
pub fn proc_field(pid: u32, file: &str, prefix: &str, column: usize) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/{file}"))
        .expect("proc file")
        .lines()
        .find_map(|l| l.strip_prefix(prefix))
        .and_then(|rest| rest.split_whitespace().nth(column))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{prefix} in /proc/{pid}/{file}"))
}
