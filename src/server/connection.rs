//! One connection from accept to close: the TLS handshake, the protocol (by ALPN, or by
//! the first bytes in plaintext), hyper's HTTP/1.1 or HTTP/2 connection with the gateway as
//! its service, the deadline for the first request head, the idle close and the drain.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::Poll;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulConnection;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, watch};
use tokio::time::{Instant, Sleep};
use tokio_rustls::TlsAcceptor;

use super::{State, drained};
use crate::pipeline::{self, Conn};

/// The HTTP/1.1 and HTTP/2 server settings, made once. A connection is served by one of
/// them, chosen before hyper reads a byte (`Protocol`).
pub(super) struct Http {
    http1: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
}

impl Http {
    pub(super) fn new() -> Http {
        let mut http1 = http1::Builder::new();
        // No timer for HTTP/1: hyper's header timer allocates a new sleep for every request.
        // `serve_http` keeps the deadline instead (first head: `HeadDeadline`; later heads:
        // the idle check, which closes a kept-alive connection whose next head is not in by
        // then). half_close: hyper would otherwise read the socket while a request is in
        // flight, to notice a sender that hung up, and cancel the delivery half-way (perhaps
        // with the upstream already holding it). A delivery that was read whole is
        // forwarded whole. (That read also took a new 8 KiB read buffer per request, the old
        // one being still held by the request's bytes.)
        //
        // max_buf_size: how far hyper grows a connection's read buffer, so about the largest
        // piece a body is read in (a read fills the buffer's spare room, which can be a
        // little more). Each piece is taken from the worker's memory budget (`body::Budget`)
        // before the next is read, so a connection waiting for the budget holds about one
        // piece beyond it (hyper's default, ~400 KiB, was the size of that piece before).
        // max_header_size: a request head over 64 KiB gets 431, however it arrived (without
        // it the buffer's size decides, and a head read whole in one read could be longer),
        // as HTTP/2's max_header_list_size below bounds a stream's headers.
        http1
            .max_buf_size(crate::body::PIECE)
            .max_header_size(64 * 1024)
            .header_read_timeout(None)
            .keep_alive(true)
            .half_close(true);
        let mut http2 = http2::Builder::new(TokioExecutor::new());
        http2
            .timer(TokioTimer::new())
            // What one connection can make hookgate hold is about its streams times a
            // stream's head and state (~22 KiB at most) plus its window: with 256 streams
            // of 64 KiB heads, 17.5 MiB (five connections took 92 MiB of RSS); here at most
            // ~1 MiB. nginx allows 128 streams of up to 32 KiB of headers; a webhook sender
            // has a few requests in flight, and a Go client opens another connection when
            // it would need more.
            .max_concurrent_streams(STREAMS)
            .max_header_list_size(16 * 1024)
            // The windows: what a connection's streams may have sent beyond what was read
            // (flow control stops the sender there). The streams' windows together stay
            // under the connection's, so that streams waiting for the body budget, each
            // with its window's worth unread, can never use up the connection's window that
            // the streams holding the budget need for the rest of their bodies: with 256
            // KiB for both, 32 streams of 1 MiB over one connection all waited until
            // `body_timeout_s`. A stream's 32 KiB is what it sends per round trip.
            .initial_connection_window_size(CONNECTION_WINDOW)
            .initial_stream_window_size(STREAM_WINDOW)
            .max_pending_accept_reset_streams(20)
            // Streams hookgate itself reset for the client's errors, over the connection's
            // life, past which h2 ends it (against resets that leave work running: here a
            // reset delivery still holds one of the 16 streams until it ends). A stream over
            // the 16 counts too: a client may open up to 100 (Go's) before it has read the
            // SETTINGS that say 16, and at 64 such a burst ended the connection with every
            // delivery on it. 1024 is h2's and hyper's default.
            .max_local_error_reset_streams(1024)
            .keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10));
        Http { http1, http2 }
    }
}

/// HTTP/2 streams a connection may have open at once.
const STREAMS: u32 = 16;
/// What an HTTP/2 stream may have sent beyond what was read.
const STREAM_WINDOW: u32 = 32 * 1024;
/// What an HTTP/2 connection may have sent beyond what was read: its streams' windows
/// together, and 128 KiB more that waiting streams cannot take.
const CONNECTION_WINDOW: u32 = STREAMS * STREAM_WINDOW + 128 * 1024;
const _: () = assert!(STREAMS * STREAM_WINDOW < CONNECTION_WINDOW);

/// Which protocol a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Http1,
    Http2,
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

impl Protocol {
    /// A TLS connection's protocol is what ALPN agreed (RFC 9113 §3.2: HTTP/2 over TLS is
    /// negotiated, never assumed).
    fn by_alpn(alpn: Option<&[u8]>) -> Protocol {
        if alpn == Some(b"h2") {
            Protocol::Http2
        } else {
            Protocol::Http1
        }
    }

    /// A plaintext connection's protocol by its first bytes: HTTP/2 with prior knowledge
    /// opens with the preface, anything else is HTTP/1 (or garbage, which hyper's HTTP/1
    /// parser answers). `None` while the bytes so far could still be the preface.
    fn by_first_bytes(first: &[u8]) -> Option<Protocol> {
        let n = first.len().min(H2_PREFACE.len());
        if first[..n] != H2_PREFACE[..n] {
            Some(Protocol::Http1)
        } else if n == H2_PREFACE.len() {
            Some(Protocol::Http2)
        } else {
            None
        }
    }

    /// Tells a plaintext connection's protocol by its first bytes: those `first_bytes`
    /// read, and more (within the head deadline) while they could still be the preface;
    /// they are put back for the protocol to read (`HeadDeadline::put_back`).
    ///
    /// By hand rather than hyper-util's `auto` connection: that reads exactly the
    /// preface's 24 bytes first, so hyper's own first read got those alone and its second
    /// grew the fresh 8 KiB read buffer to 16 KiB, copying it, on every new connection
    /// (a read syscall and a `realloc` more per connection, and 8 KiB more memory for each
    /// kept-alive one). Here one read of up to 8 KiB decides, and hyper finds the whole
    /// first request in it.
    async fn sniff(io: &mut HeadDeadline<TcpStream>) -> io::Result<Protocol> {
        use tokio::io::AsyncReadExt;
        // The bytes `first_bytes` read decide, most often, where they lie.
        if let Some(protocol) = Protocol::by_first_bytes(&io.unread) {
            return Ok(protocol);
        }
        // hyper's first read buffer is 8 KiB: what is read here fits it whole.
        let mut first = BytesMut::with_capacity(8 * 1024);
        loop {
            let n = io.read_buf(&mut first).await?;
            // At the end of the stream the bytes so far decide (hyper then sees the end).
            let decided = if n == 0 {
                Some(Protocol::Http1)
            } else {
                Protocol::by_first_bytes(&first)
            };
            if let Some(protocol) = decided {
                io.put_back(first.freeze());
                return Ok(protocol);
            }
        }
    }
}

/// Serves one accepted connection to its end: TLS if configured, then the protocol, then
/// hyper's connection until the client closes, the idle close or the drain.
pub(super) async fn serve_connection(
    state: &Arc<State>,
    stream: TcpStream,
    peer: SocketAddr,
    worker: usize,
    mut draining: watch::Receiver<bool>,
    place: OwnedSemaphorePermit,
) {
    // An IPv4 sender on a dual-stack (`[::]`) listener in its IPv4 form, as SPEC §5 writes
    // it, in every log line and check from here on.
    let peer = crate::admit::canonical_addr(peer);
    // One deadline from accept over the TLS handshake, the protocol detection and the first
    // request head (hyper has no header timer here; later heads: the idle check in serve_http).
    let activity = Activity::new();
    // Read per connection, so a reload's settings hold for the connections after it.
    let (header_timeout, keepalive_timeout, body_timeout, proxied) = {
        let server = &state.gateway().config.server;
        (
            server.header_timeout,
            server.keepalive_timeout,
            server.body_timeout,
            crate::admit::listed(peer.ip(), &server.proxy_protocol_from),
        )
    };
    let mut io = HeadDeadline::new(stream, header_timeout, Arc::clone(&activity));
    if !io.first_bytes(&mut draining).await {
        return;
    }
    let (peer, tls_at_balancer) = if proxied {
        match balancers_client(&mut io, state, peer, &mut draining).await {
            Some(client) => client,
            None => return,
        }
    } else {
        (peer, false)
    };
    let tls = state.tls.load_full();
    let misdirected = Misdirected::of(&io.unread, tls.is_some(), proxied);
    let serving = Serving {
        conn: Conn {
            peer,
            tls: tls.is_some() || tls_at_balancer,
            worker,
        },
        state,
        activity,
        keepalive_timeout,
        body_timeout,
        draining,
        place,
        misdirected,
    };
    match tls {
        // Boxed: a TLS connection's state (rustls' own, the handshake's) would otherwise
        // enlarge every connection's task, plaintext ones too (8.5 against 2.6 KiB), and a
        // task is copied into place for every new connection. A TLS connection pays one
        // allocation more, next to its handshake.
        Some(acceptor) => Box::pin(serve_tls(&acceptor, io, serving)).await,
        None => match Protocol::sniff(&mut io).await {
            Ok(protocol) => serve_http(serving, io, protocol).await,
            Err(e) => tracing::debug!(%peer, error = %e, "no request head"),
        },
    }
}

/// PROXY header failures get a warn line at most once a minute (process-wide).
static PROXY_HEADER_WARNED: std::sync::LazyLock<crate::logs::Throttle> =
    std::sync::LazyLock::new(|| crate::logs::Throttle::new(Duration::from_secs(60)));

/// Logs a PROXY header failure at warn level, at most once a minute: a balancer that was
/// not set to send the header makes every delivery fail this way, and an operator looks at
/// the log first (every one is counted in the metric, and logged at debug level).
fn warn_of_proxy_header_failure(peer: SocketAddr, error: &io::Error, now: std::time::Instant) {
    if PROXY_HEADER_WARNED.due(now).is_none() {
        return;
    }
    tracing::warn!(
        %peer,
        error = %error,
        "a connection from a proxy_protocol_from address did not open with a valid PROXY \
         header, and was closed unanswered: is the balancer set to send one? (logged once a \
         minute; hookgate_proxy_protocol_failures_total counts them all)"
    );
}

/// A `proxy_protocol_from` peer's connection: the client its PROXY header names (read
/// before TLS, within the head deadline) and whether that client's TLS ended at the
/// balancer; the balancer itself for a header that names no client (its health check).
/// `None` closes the connection: no valid header (counted, unless the peer sent nothing),
/// or the drain began before the client sent a byte after the header.
async fn balancers_client(
    io: &mut HeadDeadline<TcpStream>,
    state: &State,
    balancer: SocketAddr,
    draining: &mut watch::Receiver<bool>,
) -> Option<(SocketAddr, bool)> {
    let client = match read_proxy_header(io).await {
        Ok(client) => client.unwrap_or((balancer, false)),
        Err(e) => {
            // Closed before a byte: a TCP health probe, no failure (as for a TLS handshake).
            if e.kind() != io::ErrorKind::UnexpectedEof {
                state.context.metrics.proxy_header_failures.inc();
                warn_of_proxy_header_failure(balancer, &e, std::time::Instant::now());
            }
            tracing::debug!(peer = %balancer, error = %e, "no valid PROXY header: connection closed");
            return None;
        }
    };
    // A header alone, the client's bytes yet to come (a balancer connects as its client
    // does): that client has sent nothing, and the drain closes it as any such one.
    if io.unread.is_empty() && !io.first_bytes(draining).await {
        return None;
    }
    Some(client)
}

/// Reads the PROXY header a balancer opens its connection with, and puts back what follows
/// it. The client it names and whether the client's connection to the balancer was TLS, or
/// `None` for the balancer's own connection (a health check).
async fn read_proxy_header(
    io: &mut HeadDeadline<TcpStream>,
) -> io::Result<Option<(SocketAddr, bool)>> {
    use super::proxy_header::{Parsed, parse};
    use tokio::io::AsyncReadExt;
    let mut buf = BytesMut::with_capacity(512);
    loop {
        if io.read_buf(&mut buf).await? == 0 {
            // `UnexpectedEof` only for a connection closed before a byte (`balancers_client`).
            let (kind, what) = if buf.is_empty() {
                (io::ErrorKind::UnexpectedEof, "closed before a PROXY header")
            } else {
                (io::ErrorKind::InvalidData, "closed inside a PROXY header")
            };
            return Err(io::Error::new(kind, what));
        }
        match parse(&buf) {
            Parsed::Header { len, client, tls } => {
                io.put_back(buf.split_off(len).freeze());
                // In its IPv4 form when IPv4-mapped, as the socket's peer is at accept.
                return Ok(client.map(|c| (crate::admit::canonical_addr(c), tls)));
            }
            Parsed::Partial => {}
            Parsed::Invalid(reason) => {
                return Err(io::Error::new(io::ErrorKind::InvalidData, reason));
            }
        }
    }
}

/// Connections cut off for a slow head get a log line at most this often (process-wide).
static HEAD_TIMEOUTS_LOGGED: std::sync::LazyLock<crate::logs::Throttle> =
    std::sync::LazyLock::new(|| crate::logs::Throttle::new(Duration::from_secs(10)));

/// What `HeadDeadline`'s reads fail with past the deadline: its own type, so that it is
/// told from a socket's `ETIMEDOUT` (a peer gone, TCP giving up its retransmissions).
#[derive(Debug, thiserror::Error)]
#[error("request head not received within header_timeout_s")]
struct HeadTimeout;

/// Whether hyper's connection ended on the head deadline.
fn head_timed_out(error: &hyper::Error) -> bool {
    std::error::Error::source(error)
        .and_then(|cause| cause.downcast_ref::<io::Error>())
        .and_then(|e| e.get_ref())
        .is_some_and(|inner| inner.is::<HeadTimeout>())
}

/// Failed handshakes get a log line at most this often (process-wide).
static TLS_FAILURES_LOGGED: std::sync::LazyLock<crate::logs::Throttle> =
    std::sync::LazyLock::new(|| crate::logs::Throttle::new(Duration::from_secs(10)));

/// The TLS handshake (within the head deadline), then the protocol ALPN agreed; plain
/// HTTP instead gets a 400 in plain HTTP.
async fn serve_tls(acceptor: &TlsAcceptor, io: HeadDeadline<TcpStream>, serving: Serving<'_>) {
    if serving.misdirected == Some(Misdirected::PlainHttp) {
        return answer_plain_http(io, &serving).await;
    }
    match acceptor.accept(io).await {
        Ok(tls) => {
            let protocol = Protocol::by_alpn(tls.get_ref().1.alpn_protocol());
            serve_http(serving, tls, protocol).await
        }
        Err(e) => {
            // A peer that closes before a handshake (a TCP health probe) is not a failure.
            if e.kind() == io::ErrorKind::UnexpectedEof {
                tracing::debug!(peer = %serving.conn.peer, error = %e, "TLS handshake failed");
                return;
            }
            serving.state.context.metrics.tls_handshake_failures.inc();
            // Logged, at most once per 10 s: the reason (no client certificate, one from
            // another CA, a PROXY header not asked for) is what an operator needs when a
            // sender cannot connect, and scanners must not fill the log.
            let error = serving
                .misdirected
                .map_or_else(|| e.to_string(), |m| m.detail().to_string());
            match TLS_FAILURES_LOGGED.due(std::time::Instant::now()) {
                Some(skipped) => tracing::info!(
                    peer = %serving.conn.peer,
                    error = %error,
                    since_last_line = skipped,
                    "TLS handshake failed (one line per 10 s at most; hookgate_tls_handshake_failures_total counts them all)"
                ),
                None => {
                    tracing::debug!(peer = %serving.conn.peer, error = %error, "TLS handshake failed")
                }
            }
        }
    }
}

/// The most of a plain-HTTP sender's bytes read and dropped after its 400, so that the
/// close is a FIN the sender reads the answer before, not a reset that can discard it.
const PLAIN_HTTP_DRAINED: usize = 1 << 20;

/// Answers plain HTTP on the TLS listener with a 400 in plain HTTP (`plain_http_on_tls`:
/// a TLS alert would show the sender a protocol error, curl's "Received HTTP/0.9 when not
/// allowed"), then reads what the sender still sends (up to `PLAIN_HTTP_DRAINED`, within
/// the head deadline, which still runs) until it closes.
async fn answer_plain_http(mut io: HeadDeadline<TcpStream>, serving: &Serving<'_>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let answer = pipeline::plain_http_on_tls(
        &serving.state.context.metrics,
        serving.conn,
        &io.unread,
        Misdirected::PlainHttp.detail(),
    );
    let answered = async {
        io.write_all(&answer).await?;
        io.shutdown().await?;
        let mut drained = 0;
        let mut buf = [0u8; 8 * 1024];
        while drained < PLAIN_HTTP_DRAINED {
            match io.read(&mut buf).await? {
                0 => break,
                n => drained += n,
            }
        }
        io::Result::Ok(())
    };
    if let Err(e) = answered.await {
        tracing::debug!(peer = %serving.conn.peer, error = %e, "plain HTTP on the TLS listener: no clean close");
    }
}

/// What serving a connection needs besides its socket.
struct Serving<'a> {
    state: &'a Arc<State>,
    conn: Conn,
    activity: Arc<Activity>,
    /// How long the connection is kept with no request open (`drive`).
    keepalive_timeout: Duration,
    body_timeout: Duration,
    draining: watch::Receiver<bool>,
    /// The connection's place under `max_connections`: given back when the connection and
    /// the deliveries it started have all ended, so that a drain waits for both.
    place: OwnedSemaphorePermit,
    /// What its first bytes are instead of what its listener serves, when they tell.
    misdirected: Option<Misdirected>,
}

/// What a connection's first bytes are when they are not what its listener serves: told
/// once, from the bytes read to tell the protocol, so that plain HTTP on the TLS listener
/// is answered in plain HTTP and the others are logged in an operator's words (hyper would
/// log a PROXY header or a TLS handshake on the plain listener as "invalid HTTP
/// version/method parsed", rustls a PROXY header on the TLS one as "corrupt message of
/// type InvalidContentType").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Misdirected {
    /// A PROXY header from a peer not in `proxy_protocol_from`.
    ProxyHeader,
    /// A TLS handshake record on the plain-HTTP listener.
    TlsHandshake,
    /// A request line's method and its space on the TLS listener, where a TLS record
    /// begins with its type (0x16 for a handshake).
    PlainHttp,
}

impl Misdirected {
    fn of(first: &[u8], tls: bool, proxied: bool) -> Option<Misdirected> {
        let request_line = || {
            let method = first.iter().take_while(|b| b.is_ascii_uppercase()).count();
            method > 0 && first.get(method) == Some(&b' ')
        };
        if !proxied && super::proxy_header::looks_like_header(first) {
            Some(Misdirected::ProxyHeader)
        } else if !tls && first.starts_with(&[0x16, 0x03]) {
            Some(Misdirected::TlsHandshake)
        } else if tls && request_line() {
            Some(Misdirected::PlainHttp)
        } else {
            None
        }
    }

    /// What the log says of it.
    fn detail(self) -> &'static str {
        match self {
            Misdirected::ProxyHeader => {
                "a PROXY protocol header from a peer not in [server] proxy_protocol_from: list \
                 the balancer's address there, or turn the protocol off at the balancer"
            }
            Misdirected::TlsHandshake => {
                "a TLS handshake on the plain-HTTP listener: the sender's URL must be http://, \
                 or set [server] tls"
            }
            Misdirected::PlainHttp => {
                "plain HTTP on the TLS listener: the sender's URL must be https://"
            }
        }
    }
}

/// What one connection's parts share: whether its first request head is still awaited (the
/// socket's deadline), its requests in flight and since when it has had none (the idle
/// close), and the bytes written to its socket (whether its client still reads).
struct Activity {
    base: Instant,
    head_pending: AtomicBool,
    open: AtomicUsize,
    idle_since_ms: AtomicU64,
    written: AtomicU64,
}

impl Activity {
    fn new() -> Arc<Activity> {
        Arc::new(Activity {
            base: Instant::now(),
            head_pending: AtomicBool::new(true),
            open: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
            written: AtomicU64::new(0),
        })
    }

    /// Counts what a write to the socket took.
    fn count_written(&self, written: Poll<io::Result<usize>>) -> Poll<io::Result<usize>> {
        if let Poll::Ready(Ok(n)) = written {
            self.written.fetch_add(n as u64, Ordering::Relaxed);
        }
        written
    }

    /// When the connection may be closed for idleness, if it is idle now.
    fn idle_deadline(&self, timeout: Duration) -> Option<Instant> {
        (self.open.load(Ordering::SeqCst) == 0).then(|| {
            self.base + Duration::from_millis(self.idle_since_ms.load(Ordering::SeqCst)) + timeout
        })
    }

    /// When `drive` next looks whether the connection is idle: at its idle deadline, or
    /// with a request open, `timeout` from now (no sooner can it be idle that long).
    fn next_idle_check(&self, timeout: Duration) -> Instant {
        self.idle_deadline(timeout)
            .unwrap_or_else(|| Instant::now() + timeout)
    }
}

/// Counts a request as open until it is dropped (finished or cancelled).
struct OpenRequest(Arc<Activity>);

impl OpenRequest {
    fn new(activity: &Arc<Activity>) -> OpenRequest {
        activity.open.fetch_add(1, Ordering::SeqCst);
        OpenRequest(Arc::clone(activity))
    }
}

impl Drop for OpenRequest {
    fn drop(&mut self) {
        let a = &self.0;
        let since = a.base.elapsed().as_millis() as u64;
        a.idle_since_ms.store(since, Ordering::SeqCst);
        a.open.fetch_sub(1, Ordering::SeqCst);
    }
}

/// hyper's HTTP/1.1 or HTTP/2 connection over `io`, every request going to the worker's
/// gateway (`pipeline::handle`), counted open while it runs for the idle close.
async fn serve_http<IO>(serving: Serving<'_>, io: IO, protocol: Protocol)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Serving {
        state,
        conn,
        activity,
        keepalive_timeout,
        body_timeout,
        mut draining,
        // Held until this returns; HTTP/2 shares it with its streams' deliveries.
        place,
        misdirected,
    } = serving;
    // The connection's own handle on the state: each request clones this one, whose count
    // only this connection's worker writes, rather than the `State`'s (see `worker_gateways`).
    let svc_state = Arc::new(Arc::clone(state));
    let svc_activity = Arc::clone(&activity);
    // A request's delivery, counted open for the idle close while it runs.
    let deliver = move |request, gone: Option<pipeline::SenderGone>| {
        svc_activity.head_pending.store(false, Ordering::Relaxed);
        let open = OpenRequest::new(&svc_activity);
        let state = Arc::clone(&svc_state);
        async move {
            let gateway = state.worker_gateway(conn.worker);
            let response = pipeline::handle(
                &gateway,
                &state.health,
                &state.context.metrics,
                conn,
                request,
                gone,
            )
            .await;
            drop(open);
            Ok::<_, Infallible>(response)
        }
    };
    let io = TokioIo::new(io);
    let result = match protocol {
        Protocol::Http1 => {
            let service = service_fn(move |request| deliver(request, None));
            let connection = state.http.http1.serve_connection(io, service);
            drive(
                connection,
                &activity,
                keepalive_timeout,
                body_timeout,
                &mut draining,
            )
            .await
        }
        // HTTP/2: hyper drops a stream's future when its sender resets the stream or closes
        // the connection, which would cancel a delivery half-way (perhaps with the upstream
        // already holding it), leave it uncounted and unlogged, and its id not remembered
        // for dedupe. So a stream's delivery that is dropped unfinished goes on in a task of
        // its own (`Detachable`), holding the connection's place for the drain: a delivery
        // read whole is forwarded whole, as over HTTP/1.1, where hyper finishes its one
        // request in flight before it notices the client gone (`half_close`). One whose
        // body is still being read is told the sender is gone (`SenderGone`) and ends.
        // (hyper 1.13's HTTP/1.1 dispatcher does drop a request whose write fails while it
        // waits, as a `100 Continue` to a sender that reset: seen in a soak, and what the
        // in-flight gauge's guard is for.)
        //
        // A delivery also holds one of the connection's `STREAMS` turns until it ends, so
        // that the deliveries its resets leave running count against the connection's
        // streams: a new stream waits for a turn. Without this one connection that reset
        // each stream once its body was read had 3,000 deliveries in flight (and as many
        // upstream connections open) against an app slow to answer.
        Protocol::Http2 => {
            // Shared with the stream's deliveries, which may outlive the connection.
            let place = Arc::new(place);
            let turns = Arc::new(tokio::sync::Semaphore::new(STREAMS as usize));
            let service = service_fn(move |request| {
                let (present, gone) = tokio::sync::oneshot::channel();
                // Boxed from the start: hyper moves a pointer, not the delivery's state.
                let rest = Box::pin(deliver(request, Some(gone)));
                let (place, turns) = (Arc::clone(&place), Arc::clone(&turns));
                async move {
                    // Dropped while it waits (its stream reset): the delivery never began.
                    // The semaphore is never closed.
                    let turn = turns.acquire_owned().await.ok();
                    Detachable {
                        rest: Some(rest),
                        held: Some((place, turn)),
                        _present: present,
                    }
                    .await
                }
            });
            let connection = state.http.http2.serve_connection(io, service);
            // Boxed: HTTP/2's connection state would otherwise enlarge every connection's
            // task, which is copied into place for each new connection.
            let driven = drive(
                connection,
                &activity,
                keepalive_timeout,
                body_timeout,
                &mut draining,
            );
            Box::pin(driven).await
        }
    };
    let Err(e) = result else {
        return;
    };
    let metrics = &state.context.metrics;
    if protocol != Protocol::Http1 {
        tracing::debug!(peer = %conn.peer, error = %e, "connection ended with an error");
    } else if let Some(status) = pipeline::unparsed_status(&e) {
        pipeline::unparsed_request(
            metrics,
            conn,
            status,
            &e,
            misdirected.map(Misdirected::detail),
        );
    } else if head_timed_out(&e) {
        // Its first bytes came (the protocol was told by them), the rest of the head did
        // not: a sender stalled or far too slow, or a slowloris. No answer can be framed;
        // counted, and logged at most once per 10 s.
        metrics.header_timeouts.inc();
        match HEAD_TIMEOUTS_LOGGED.due(std::time::Instant::now()) {
            Some(skipped) => tracing::info!(
                peer = %conn.peer,
                since_last_line = skipped,
                "a request head begun was not whole within header_timeout_s; connection closed (one line per 10 s at most; hookgate_header_timeouts_total counts them all)"
            ),
            None => {
                tracing::debug!(peer = %conn.peer, "request head not whole within header_timeout_s")
            }
        }
    } else {
        tracing::debug!(peer = %conn.peer, error = %e, "connection ended with an error");
    }
}

/// A future that, dropped before its end, is finished by a task of its own (on the worker's
/// runtime) instead of being cancelled, and is told so by `present`'s end. Polled in place
/// until then, so the common case pays a box and no task; and boxed from the start, so hyper
/// moves a pointer where it would move the delivery's whole state (~4 KiB). `held` lives as
/// long as the future, in the task too. Hand-written: tokio's `spawn` would pay a task and a
/// wake-up on every request to cover the rare one.
struct Detachable<F: Future + Send + 'static, H: Send + 'static>
where
    F::Output: Send,
{
    rest: Option<Pin<Box<F>>>,
    held: Option<H>,
    /// Dropped with this (after `drop` has handed `rest` on): the delivery's `SenderGone`.
    _present: tokio::sync::oneshot::Sender<()>,
}

impl<F: Future + Send + 'static, H: Send + Unpin + 'static> Future for Detachable<F, H>
where
    F::Output: Send,
{
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<F::Output> {
        // Not polled again once ready (the future contract).
        let Some(rest) = self.rest.as_mut() else {
            return Poll::Pending;
        };
        let output = std::task::ready!(rest.as_mut().poll(cx));
        self.rest = None;
        self.held = None;
        Poll::Ready(output)
    }
}

impl<F: Future + Send + 'static, H: Send + 'static> Drop for Detachable<F, H>
where
    F::Output: Send,
{
    fn drop(&mut self) {
        // Outside a runtime (the worker's is being torn down) there is nothing to finish on.
        if let (Some(rest), Ok(runtime)) = (self.rest.take(), tokio::runtime::Handle::try_current())
        {
            let held = self.held.take();
            runtime.spawn(async move {
                let output = rest.await;
                drop(held);
                output
            });
        }
    }
}

/// Runs a connection to its end, or closes it gracefully at the drain or when it has had no
/// request open for `keepalive` (what it still has to write going out, unless its client
/// reads none of it for `body_timeout`: see `finish`).
async fn drive<C: GracefulConnection>(
    connection: C,
    activity: &Activity,
    keepalive: Duration,
    body_timeout: Duration,
    draining: &mut watch::Receiver<bool>,
) -> Result<(), C::Error> {
    tokio::pin!(connection);
    loop {
        // A connection with no request open for keepalive_timeout_s (header_timeout_s unless
        // set) is closed: HTTP/2 with a GOAWAY, HTTP/1.1 between two requests (its next head
        // counts from the last answer).
        let wake_at = activity.next_idle_check(keepalive);
        tokio::select! {
            // The connection first: it is what wakes this task nearly every time.
            biased;
            r = connection.as_mut() => return r,
            _ = drained(draining) => {
                return finish(connection, activity, body_timeout).await;
            }
            _ = tokio::time::sleep_until(wake_at) => {
                if activity.idle_deadline(keepalive).is_some_and(|at| at <= Instant::now()) {
                    return finish(connection, activity, body_timeout).await;
                }
            }
        }
    }
}

/// Closes a connection gracefully: requests in flight finish (their own timeouts bound
/// them), and the answers it is writing go out whole, however slowly they are read; but a
/// client that reads none of them for `stall` while no request is in flight is let go (the
/// connection dropped), since it would otherwise hold the connection and its answers'
/// memory for good.
async fn finish<C: GracefulConnection>(
    mut connection: Pin<&mut C>,
    activity: &Activity,
    stall: Duration,
) -> Result<(), C::Error> {
    connection.as_mut().graceful_shutdown();
    loop {
        let written = activity.written.load(Ordering::Relaxed);
        match tokio::time::timeout(stall, connection.as_mut()).await {
            Ok(result) => return result,
            Err(_)
                if activity.open.load(Ordering::SeqCst) == 0
                    && activity.written.load(Ordering::Relaxed) == written =>
            {
                tracing::debug!("answer not read for body_timeout_s; connection dropped");
                return Ok(());
            }
            Err(_) => {}
        }
    }
}

pin_project_lite::pin_project! {
    /// A connection's socket, with a deadline that holds until the first request head has
    /// arrived (reads fail with `TimedOut` past it), counting the bytes written to it in
    /// the connection's `Activity` (whether its client still reads: `finish`).
    struct HeadDeadline<IO> {
        #[pin]
        io: IO,
        deadline: Pin<Box<Sleep>>,
        activity: Arc<Activity>,
        // Bytes read to tell the protocol, read again first.
        unread: Bytes,
    }
}

impl<IO> HeadDeadline<IO> {
    fn new(io: IO, timeout: Duration, activity: Arc<Activity>) -> Self {
        HeadDeadline {
            io,
            deadline: Box::pin(tokio::time::sleep_until(Instant::now() + timeout)),
            activity,
            unread: Bytes::new(),
        }
    }

    /// Bytes already read, to be read again before the socket's, and before what is left
    /// of bytes put back earlier, which they were read from: `first_bytes` puts back up to
    /// 8 KiB, the PROXY header's reader takes 512 of them at a time and puts back what
    /// follows the header in front of the rest (test: a request of some KiB after a header).
    fn put_back(&mut self, bytes: Bytes) {
        self.unread = if self.unread.is_empty() {
            bytes
        } else {
            [&bytes[..], &self.unread[..]].concat().into()
        };
    }
}

impl HeadDeadline<TcpStream> {
    /// Reads the connection's first bytes (up to 8 KiB, hyper's first read buffer) and puts
    /// them back for what reads next; `false` if the head deadline, the drain or an error
    /// comes first. A connection that has sent nothing when the drain begins is closed
    /// then, as hyper closes a kept-alive one between requests, rather than holding the
    /// drain for up to `header_timeout_s` (a balancer's or client's connection opened
    /// ahead of use, or a silent one). The read is the one the protocol's detection did
    /// before (`Protocol::sniff` decides on these bytes), so it costs no syscall more.
    async fn first_bytes(&mut self, draining: &mut watch::Receiver<bool>) -> bool {
        let mut first = BytesMut::with_capacity(8 * 1024);
        loop {
            tokio::select! {
                biased;
                ready = self.io.readable() => {
                    if ready.is_err() {
                        return false;
                    }
                }
                _ = &mut self.deadline => return false,
                _ = drained(draining) => return false,
            }
            // `readable` may be a false positive (tokio says so): then wait again.
            match self.io.try_read_buf(&mut first) {
                // Bytes, or the end of the stream (which the next read sees again).
                Ok(_) => {
                    self.put_back(first.freeze());
                    return true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return false,
            }
        }
    }
}

impl<IO: AsyncRead> AsyncRead for HeadDeadline<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let head_pending = this.activity.head_pending.load(Ordering::Relaxed);
        if head_pending && this.deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, HeadTimeout)));
        }
        if !this.unread.is_empty() {
            let n = this.unread.len().min(buf.remaining());
            buf.put_slice(&this.unread.split_to(n));
            return Poll::Ready(Ok(()));
        }
        this.io.poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite> AsyncWrite for HeadDeadline<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        this.activity.count_written(this.io.poll_write(cx, buf))
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_flush(cx)
    }
    fn poll_shutdown(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        this.activity
            .count_written(this.io.poll_write_vectored(cx, bufs))
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes put back are read before the socket's, and bytes put back again after a
    /// partial read of them come before the rest of them: nothing is lost or reordered.
    #[tokio::test]
    async fn bytes_put_back_are_read_first_in_their_order() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (near, mut far) = tokio::io::duplex(64);
        far.write_all(b"-socket").await.expect("write");
        drop(far);
        let mut io = HeadDeadline::new(near, Duration::from_secs(5), Activity::new());
        io.put_back(Bytes::from_static(b"leftover"));
        let mut first = [0u8; 4];
        io.read_exact(&mut first).await.expect("read");
        assert_eq!(&first, b"left");
        io.put_back(Bytes::copy_from_slice(&first));
        let mut all = Vec::new();
        io.read_to_end(&mut all).await.expect("read");
        assert_eq!(all, b"leftover-socket");
    }

    /// With a request open the idle check waits a whole keep-alive (were it due at once,
    /// `drive` would spin for as long as the request lasts); once none is, it is due a
    /// keep-alive after the last one ended.
    #[tokio::test]
    async fn the_idle_check_waits_for_the_last_request_and_a_keepalive() {
        let keepalive = Duration::from_secs(5);
        let activity = Activity::new();
        let open = OpenRequest::new(&activity);
        let before = Instant::now();
        assert_eq!(activity.idle_deadline(keepalive), None);
        let check = activity.next_idle_check(keepalive);
        assert!(
            check >= before + keepalive && check <= Instant::now() + keepalive,
            "{:?} from now",
            check - before
        );
        drop(open);
        let ended = Instant::now();
        let check = activity.next_idle_check(keepalive);
        // Kept to the millisecond (`idle_since_ms`), and this thread may be preempted.
        assert!(
            check + Duration::from_millis(100) >= ended + keepalive
                && check <= Instant::now() + keepalive,
            "{:?} from the end",
            check - ended
        );
        assert_eq!(activity.idle_deadline(keepalive), Some(check));
    }

    #[test]
    fn misdirected_first_bytes_are_told_by_their_listener() {
        use Misdirected::*;
        let hello = [0x16, 0x03, 0x01, 0x00, 0x05];
        let proxy = b"PROXY TCP4 203.0.113.7 10.0.0.5 1 2\r\n";
        // (first bytes, TLS listener, peer in proxy_protocol_from) -> what they are
        let cases: [(&[u8], bool, bool, Option<Misdirected>); 9] = [
            (b"POST /p HTTP/1.1\r\n", false, false, None),
            (b"POST /p HTTP/1.1\r\n", true, false, Some(PlainHttp)),
            (b"PRI * HTTP/2.0\r\n", true, false, Some(PlainHttp)),
            (b"post /p", true, false, None),
            (&hello, true, false, None),
            (&hello, false, false, Some(TlsHandshake)),
            // A PROXY header where none is asked for, on either listener: not plain HTTP.
            (proxy, true, false, Some(ProxyHeader)),
            (proxy, false, false, Some(ProxyHeader)),
            // From a listed peer the header was read already: these are the client's bytes.
            (&hello, true, true, None),
        ];
        for (first, tls, proxied, want) in cases {
            assert_eq!(
                Misdirected::of(first, tls, proxied),
                want,
                "{first:?} tls {tls}"
            );
        }
    }

    #[test]
    fn the_first_bytes_tell_http2_prior_knowledge_from_http1() {
        use Protocol::*;
        assert_eq!(Protocol::by_first_bytes(H2_PREFACE), Some(Http2));
        assert_eq!(
            Protocol::by_first_bytes(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0"),
            Some(Http2)
        );
        for undecided in [&b""[..], b"P", b"PRI * HTTP/2.0\r\n", &H2_PREFACE[..23]] {
            assert_eq!(Protocol::by_first_bytes(undecided), None);
        }
        for http1 in [
            &b"POST / HTTP/1.1\r\n"[..],
            b"G",
            b"PRI * HTTP/1.1\r\n\r\n",
            b"\r\n",
        ] {
            assert_eq!(Protocol::by_first_bytes(http1), Some(Http1));
        }
        assert_eq!(Protocol::by_alpn(Some(b"h2")), Http2);
        assert_eq!(Protocol::by_alpn(Some(b"http/1.1")), Http1);
        assert_eq!(Protocol::by_alpn(None), Http1);
    }
}
