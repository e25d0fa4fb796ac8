//! The listeners: accept, TLS, HTTP/1.1 and HTTP/2, the head deadline, graceful drain,
//! and reload (SPEC §3 defaults, §8).
//!
//! Takes a validated [`Config`]; gives a running [`Server`] whose requests go to
//! [`pipeline::handle`]. A reload swaps the whole [`Gateway`] at once: a request in flight
//! keeps the one it started with.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::Poll;
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use bytes::{Bytes, BytesMut};
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulConnection;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::{Instant, Sleep};
use tokio_rustls::TlsAcceptor;

use crate::config::Config;
use crate::pipeline::{self, Conn, Context, Gateway, Health};
use crate::tls;

/// Why the gateway could not start (or a reload was refused): one line each.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("{file}: server.tls: {source}")]
    Tls { file: String, source: tls::TlsError },
    #[error("{file}: upstream.ca: {source}")]
    Upstream {
        file: String,
        source: crate::upstream::ClientSetupError,
    },
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
}

/// A config with everything `run` needs loaded (secrets, certificates, upstream client),
/// short of binding the ports. `check` stops here.
pub struct Prepared {
    pub gateway: Gateway,
    pub tls: Option<TlsAcceptor>,
    context: Context,
}

pub fn prepare(config: Config) -> Result<Prepared, StartError> {
    prepare_with(config, Context::default(), None)
}

/// `prepare` with a given context (tests use a fake clock) and the gateway it replaces.
pub fn prepare_with(
    config: Config,
    context: Context,
    previous: Option<&Gateway>,
) -> Result<Prepared, StartError> {
    let file = config.path.display().to_string();
    let tls = config
        .server
        .tls
        .as_ref()
        .map(tls::server_config)
        .transpose()
        .map_err(|source| StartError::Tls {
            file: file.clone(),
            source,
        })?
        .map(TlsAcceptor::from);
    let gateway = Gateway::new(config, &context, previous)
        .map_err(|source| StartError::Upstream { file, source })?;
    Ok(Prepared {
        gateway,
        tls,
        context,
    })
}

struct State {
    /// The gateway in force, once per worker, each behind an `Arc` of the worker's own: a
    /// request holds its config by cloning its worker's handle, so the reference count it
    /// writes twice per request is on a cache line only its own core uses (one count shared
    /// by every worker moved between cores on every request: `benches/PERFORMANCE.md`,
    /// "Shared cache lines"). All point to the same `Gateway`; a reload swaps every one.
    worker_gateways: Box<[ArcSwap<Arc<Gateway>>]>,
    tls: ArcSwapOption<TlsAcceptor>,
    health: Health,
    http: Http,
    context: Context,
}

impl State {
    /// The gateway in force, for what is not a request (reload, drain, housekeeping, a new
    /// connection's head deadline): every worker's handle holds the same one.
    fn gateway(&self) -> Arc<Gateway> {
        Arc::clone(&self.worker_gateways[0].load())
    }
}

/// A running gateway.
pub struct Server {
    state: Arc<State>,
    pub local_addr: SocketAddr,
    pub admin_addr: Option<SocketAddr>,
    draining: watch::Sender<bool>,
    /// Tells the worker threads to end (after the drain, or when the server is dropped).
    stop: watch::Sender<bool>,
    connections: Arc<Semaphore>,
    max_connections: u32,
    /// Every worker's accept loop holds a sender: `recv` gives `None` once all have stopped
    /// accepting (and closed their handle on the listener).
    accepting: tokio::sync::mpsc::Receiver<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.draining.send(true);
        let _ = self.stop.send(true);
    }
}

/// The HTTP/1.1 and HTTP/2 server settings, made once. A connection is served by one of
/// them, chosen before hyper reads a byte (`Protocol`).
struct Http {
    http1: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
}

impl Http {
    fn new() -> Http {
        let mut http1 = http1::Builder::new();
        // No timer for HTTP/1: hyper's header timer allocates a new sleep for every request.
        // `serve_http` keeps the deadline instead (first head: `HeadDeadline`; later heads:
        // the idle check, which closes a kept-alive connection whose next head is not in by
        // then). half_close: hyper would otherwise read the socket while a request is in
        // flight, to notice a sender that hung up, and cancel the delivery half-way (perhaps
        // with the upstream already holding it). A delivery that was read whole is
        // forwarded whole. (That read also took a new 8 KiB read buffer per request, the old
        // one being still held by the request's bytes.)
        http1
            .header_read_timeout(None)
            .keep_alive(true)
            .half_close(true);
        let mut http2 = http2::Builder::new(TokioExecutor::new());
        http2
            .timer(TokioTimer::new())
            .max_concurrent_streams(256)
            .max_header_list_size(64 * 1024)
            .max_pending_accept_reset_streams(20)
            .max_local_error_reset_streams(64)
            .keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10));
        Http { http1, http2 }
    }
}

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

    /// Reads a plaintext connection's first bytes (within the head deadline) to tell its
    /// protocol; they are put back for the protocol to read (`HeadDeadline::put_back`).
    ///
    /// By hand rather than hyper-util's `auto` connection: that reads exactly the
    /// preface's 24 bytes first, so hyper's own first read got those alone and its second
    /// grew the fresh 8 KiB read buffer to 16 KiB, copying it, on every new connection
    /// (a read syscall and a `realloc` more per connection, and 8 KiB more memory for each
    /// kept-alive one). Here one read of up to 8 KiB decides, and hyper finds the whole
    /// first request in it.
    async fn sniff(io: &mut HeadDeadline<TcpStream>) -> io::Result<Protocol> {
        use tokio::io::AsyncReadExt;
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

impl Server {
    /// Binds the listeners and starts serving.
    pub async fn start(prepared: Prepared) -> Result<Server, StartError> {
        let server_cfg = &prepared.gateway.config.server;
        let listen = server_cfg.listen;
        let max_connections = u32::try_from(server_cfg.max_connections).unwrap_or(u32::MAX);
        let admin = prepared.gateway.config.admin;

        let listener = TcpListener::bind(listen)
            .await
            .map_err(|source| StartError::Bind {
                addr: listen,
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| StartError::Bind {
            addr: listen,
            source,
        })?;
        let admin_listener = match admin {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| StartError::Bind { addr, source })?,
            ),
            None => None,
        };
        let admin_addr = admin_listener.as_ref().and_then(|l| l.local_addr().ok());

        let gateway = Arc::new(prepared.gateway);
        let workers = prepared.context.workers.max(1);
        let state = Arc::new(State {
            worker_gateways: (0..workers)
                .map(|_| ArcSwap::from_pointee(Arc::clone(&gateway)))
                .collect(),
            tls: ArcSwapOption::new(prepared.tls.map(Arc::new)),
            health: Health {
                ready: AtomicBool::new(true),
            },
            http: Http::new(),
            context: prepared.context,
        });
        let (draining, drain_rx) = watch::channel(false);
        let (stop, stop_rx) = watch::channel(false);
        let connections = Arc::new(Semaphore::new(max_connections as usize));
        let (accepting_tx, accepting) = tokio::sync::mpsc::channel(1);

        let bind_error = |source| StartError::Bind {
            addr: listen,
            source,
        };
        let listener = listener.into_std().map_err(bind_error)?;
        let (balance, handed) = Balance::new(workers);
        for (index, handed) in handed.into_iter().enumerate() {
            let worker = Worker {
                index,
                // One listening socket, a handle on it per worker.
                listener: listener.try_clone().map_err(bind_error)?,
                state: Arc::clone(&state),
                connections: Arc::clone(&connections),
                balance: Arc::clone(&balance),
                handed,
                draining: drain_rx.clone(),
                accepting: accepting_tx.clone(),
            };
            spawn_worker(worker, stop_rx.clone()).map_err(bind_error)?;
        }
        drop(listener);
        tokio::spawn(housekeeping(Arc::clone(&state)));
        if let Some(l) = admin_listener {
            tokio::spawn(admin_loop(l, Arc::clone(&state)));
        }
        Ok(Server {
            state,
            local_addr,
            admin_addr,
            draining,
            stop,
            connections,
            max_connections,
            accepting,
        })
    }

    /// The gateway now in force.
    pub fn gateway(&self) -> Arc<Gateway> {
        self.state.gateway()
    }

    /// Re-reads the config file; on any error the old config stays and the error is returned.
    pub fn reload(&self) -> Result<Vec<&'static str>, StartError> {
        let old = self.state.gateway();
        let config = Config::load(&old.config.path)?;
        let prepared = prepare_with(config, self.state.context.clone(), Some(&old))?;
        let (o, n) = (&old.config, &prepared.gateway.config);
        let mut at_next_start = Vec::new();
        if o.server.listen != n.server.listen {
            at_next_start.push("server.listen");
        }
        if o.admin != n.admin {
            at_next_start.push("admin");
        }
        if o.server.tls.is_some() != n.server.tls.is_some() {
            at_next_start.push("server.tls (on/off)");
        }
        if o.server.max_connections != n.server.max_connections {
            at_next_start.push("server.max_connections");
        }
        if o.server.log_format != n.server.log_format {
            at_next_start.push("server.log_format");
        }
        // TLS stays as it was when it is switched on or off; new certificates take effect.
        if o.server.tls.is_some() == n.server.tls.is_some() {
            self.state.tls.store(prepared.tls.map(Arc::new));
        }
        let gateway = Arc::new(prepared.gateway);
        for worker in &self.state.worker_gateways {
            worker.store(Arc::new(Arc::clone(&gateway)));
        }
        Ok(at_next_start)
    }

    /// `/readyz` turns 503 (the first step of a drain).
    pub fn set_unready(&self) {
        self.state.health.ready.store(false, Ordering::SeqCst);
    }

    /// Drains: `/readyz` 503, `shutdown_delay`, stop accepting, let in-flight requests
    /// finish for up to `shutdown_grace`. Returns whether every connection finished in time.
    pub async fn shutdown(mut self) -> bool {
        self.set_unready();
        let (delay, grace) = {
            let g = self.state.gateway();
            (
                g.config.server.shutdown_delay,
                g.config.server.shutdown_grace,
            )
        };
        tokio::time::sleep(delay).await;
        let _ = self.draining.send(true);
        // No worker accepts any more, and the listening socket is closed.
        let _ = self.accepting.recv().await;
        // Every connection holds a permit: all of them back means all connections closed.
        let clean =
            tokio::time::timeout(grace, self.connections.acquire_many(self.max_connections))
                .await
                .is_ok();
        let _ = self.stop.send(true);
        clean
    }
}

/// Resolves once the drain has begun.
async fn drained(rx: &mut watch::Receiver<bool>) {
    // An error means the sender is gone: that is a drain too.
    let _ = rx.wait_for(|d| *d).await;
}

/// Forgets rate-limit and dedupe state that no longer matters, every 10 s.
async fn housekeeping(state: Arc<State>) {
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    loop {
        tick.tick().await;
        state.gateway().housekeeping();
    }
}

/// A connection taken by one worker and handed to another (see `Balance`), with its place
/// under `max_connections`.
type Handoff = (std::net::TcpStream, SocketAddr, OwnedSemaphorePermit);

/// How many connections each worker has been given, and the way to hand one to another
/// worker. Workers accept for themselves, and a burst of new connections lands on whichever
/// woke first (all 64 of wrk's, once in five runs, without this): a worker that has been
/// given two more than another hands the connection to the one given fewest. So the
/// connections are spread as evenly as round robin spreads them, while a worker keeps most
/// of what it accepts when the workers take turns at accepting anyway (a hand-over costs a
/// cross-thread wake). Counted over the process's life, not as connections open now: those
/// counts lag while closing connections wait to be read, and a burst of new ones during a
/// burst of closes could then all land on one worker, for as long as they are kept alive.
struct Balance {
    given: Box<[AtomicUsize]>,
    handoff: Box<[tokio::sync::mpsc::UnboundedSender<Handoff>]>,
}

impl Balance {
    fn new(
        workers: usize,
    ) -> (
        Arc<Balance>,
        Vec<tokio::sync::mpsc::UnboundedReceiver<Handoff>>,
    ) {
        let (senders, receivers) = (0..workers)
            .map(|_| tokio::sync::mpsc::unbounded_channel())
            .unzip::<_, _, Vec<_>, Vec<_>>();
        let balance = Balance {
            given: (0..workers).map(|_| AtomicUsize::new(0)).collect(),
            handoff: senders.into_boxed_slice(),
        };
        (Arc::new(balance), receivers)
    }

    /// The worker to serve a connection that `taker` has accepted (counted at once, so that
    /// a burst is split as it is accepted).
    fn assign(&self, taker: usize) -> usize {
        let given = |w: usize| self.given[w].load(Ordering::Relaxed);
        let fewest = (0..self.given.len())
            .min_by_key(|&w| given(w))
            .unwrap_or(taker);
        let worker = if given(taker) >= given(fewest) + 2 {
            fewest
        } else {
            taker
        };
        self.given[worker].fetch_add(1, Ordering::Relaxed);
        worker
    }
}

/// What a worker thread serves: its own handle on the listening socket, under the
/// connection limit, until the drain; and the connections other workers hand it.
struct Worker {
    index: usize,
    listener: std::net::TcpListener,
    state: Arc<State>,
    connections: Arc<Semaphore>,
    balance: Arc<Balance>,
    handed: tokio::sync::mpsc::UnboundedReceiver<Handoff>,
    draining: watch::Receiver<bool>,
    /// Held while the worker accepts (see `Server::accepting`).
    accepting: tokio::sync::mpsc::Sender<()>,
}

/// A worker: an OS thread with its own single-threaded runtime and its own upstream client.
/// Each worker accepts for itself and serves a connection start to end on its thread, so
/// neither a request nor (mostly) a new connection wakes another thread: the multi-threaded
/// scheduler's cross-thread wake-ups cost more than the whole verification, and a separate
/// accepting thread handing every connection over cost 4-5 µs of CPU per connection
/// (`benches/PERFORMANCE.md`, "New connections").
fn spawn_worker(worker: Worker, mut stop: watch::Receiver<bool>) -> io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name(format!("hookgate-worker-{}", worker.index))
        .spawn(move || {
            runtime.block_on(async move {
                let Worker {
                    index,
                    listener,
                    state,
                    connections,
                    balance,
                    mut handed,
                    draining,
                    accepting,
                } = worker;
                let spawner = Spawner {
                    state,
                    worker: index,
                    draining,
                };
                let accept = async {
                    accept_loop(listener, &spawner, &connections, &balance).await;
                    drop(accepting);
                };
                // Handed-over connections are served after the drain too: they were
                // accepted before it.
                let take_handed = async {
                    while let Some((stream, peer, permit)) = handed.recv().await {
                        if let Ok(stream) = TcpStream::from_std(stream) {
                            spawner.spawn(stream, peer, permit);
                        }
                    }
                };
                tokio::select! {
                    _ = async { tokio::join!(accept, take_handed) } => {}
                    _ = stop.wait_for(|s| *s) => {}
                }
            });
        })?;
    Ok(())
}

/// Starts a worker's connection tasks, with what they all share.
struct Spawner {
    state: Arc<State>,
    worker: usize,
    draining: watch::Receiver<bool>,
}

impl Spawner {
    fn spawn(&self, stream: TcpStream, peer: SocketAddr, permit: OwnedSemaphorePermit) {
        let state = Arc::clone(&self.state);
        let (worker, draining) = (self.worker, self.draining.clone());
        tokio::spawn(async move {
            serve_connection(state, stream, peer, worker, draining).await;
            drop(permit);
        });
    }
}

/// Accepts on the worker's handle of the listening socket until the drain. Every worker
/// waits on the same socket: a new connection wakes each idle one, and the first to take it
/// serves it or hands it on (the others find nothing, one failed `accept` each). One socket
/// and not `SO_REUSEPORT` sockets: with those, a second hookgate on the same port would
/// start instead of failing (SPEC §2).
async fn accept_loop(
    listener: std::net::TcpListener,
    spawner: &Spawner,
    connections: &Arc<Semaphore>,
    balance: &Balance,
) {
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(worker = spawner.worker, error = %e, "cannot accept on the listener");
            return;
        }
    };
    let mut draining = spawner.draining.clone();
    loop {
        // Past max_connections, new connections wait in the backlog.
        let permit = tokio::select! {
            p = Arc::clone(connections).acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = drained(&mut draining) => return,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = drained(&mut draining) => return,
        };
        let _ = stream.set_nodelay(true);
        let to = balance.assign(spawner.worker);
        if to == spawner.worker {
            spawner.spawn(stream, peer, permit);
        } else if let Ok(stream) = stream.into_std() {
            // The other worker's runtime holds the receiver until the process ends.
            let _ = balance.handoff[to].send((stream, peer, permit));
        }
    }
}

async fn serve_connection(
    state: Arc<State>,
    stream: TcpStream,
    peer: SocketAddr,
    worker: usize,
    draining: watch::Receiver<bool>,
) {
    // One deadline from accept over the TLS handshake, the protocol detection and the first
    // request head (hyper has no header timer here; later heads: the idle check in serve_http).
    let head_pending = Arc::new(AtomicBool::new(true));
    // Read per connection, so a reload's header_timeout_s holds for the connections after it.
    let header_timeout = state.gateway().config.server.header_timeout;
    let mut io = HeadDeadline::new(stream, header_timeout, Arc::clone(&head_pending));
    let tls = state.tls.load_full();
    let serving = Serving {
        conn: Conn {
            peer,
            tls: tls.is_some(),
            worker,
        },
        state,
        head_pending,
        header_timeout,
        draining,
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

async fn serve_tls(acceptor: &TlsAcceptor, io: HeadDeadline<TcpStream>, serving: Serving) {
    match acceptor.accept(io).await {
        Ok(tls) => {
            let protocol = Protocol::by_alpn(tls.get_ref().1.alpn_protocol());
            serve_http(serving, tls, protocol).await
        }
        Err(e) => tracing::debug!(peer = %serving.conn.peer, error = %e, "TLS handshake failed"),
    }
}

/// What serving a connection needs besides its socket.
struct Serving {
    state: Arc<State>,
    conn: Conn,
    /// Until the first request head is in (`HeadDeadline`).
    head_pending: Arc<AtomicBool>,
    header_timeout: Duration,
    draining: watch::Receiver<bool>,
}

/// Requests in flight on one connection, and since when it has had none.
struct Activity {
    base: Instant,
    open: AtomicUsize,
    idle_since_ms: std::sync::atomic::AtomicU64,
}

impl Activity {
    fn new() -> Arc<Activity> {
        Arc::new(Activity {
            base: Instant::now(),
            open: AtomicUsize::new(0),
            idle_since_ms: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// When the connection may be closed for idleness, if it is idle now.
    fn idle_deadline(&self, timeout: Duration) -> Option<Instant> {
        (self.open.load(Ordering::SeqCst) == 0).then(|| {
            self.base + Duration::from_millis(self.idle_since_ms.load(Ordering::SeqCst)) + timeout
        })
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

async fn serve_http<IO>(serving: Serving, io: IO, protocol: Protocol)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Serving {
        state,
        conn,
        head_pending,
        header_timeout,
        mut draining,
    } = serving;
    let activity = Activity::new();
    // The connection's own handle on the state: each request clones this one, whose count
    // only this connection's worker writes, rather than the `State`'s (see `worker_gateways`).
    let svc_state = Arc::new(Arc::clone(&state));
    let svc_activity = Arc::clone(&activity);
    let worker_gateway = conn.worker % state.worker_gateways.len();
    let service = service_fn(move |request| {
        head_pending.store(false, Ordering::Relaxed);
        let open = OpenRequest::new(&svc_activity);
        let state = Arc::clone(&svc_state);
        async move {
            let gateway = state.worker_gateways[worker_gateway].load_full();
            let response = pipeline::handle(
                &gateway,
                &state.health,
                &state.context.metrics,
                conn,
                request,
            )
            .await;
            drop(open);
            Ok::<_, Infallible>(response)
        }
    });
    let io = TokioIo::new(io);
    let result = match protocol {
        Protocol::Http1 => {
            let connection = state.http.http1.serve_connection(io, service);
            drive(connection, &activity, header_timeout, &mut draining).await
        }
        // Boxed: HTTP/2's connection state would otherwise enlarge every connection's task,
        // which is copied into place for each new connection.
        Protocol::Http2 => {
            let connection = state.http.http2.serve_connection(io, service);
            Box::pin(drive(connection, &activity, header_timeout, &mut draining)).await
        }
    };
    if let Err(e) = result {
        tracing::debug!(peer = %conn.peer, error = %e, "connection ended with an error");
    }
}

/// Runs a connection to its end, or closes it gracefully at the drain or when it has had no
/// request open for `header_timeout`.
async fn drive<C: GracefulConnection>(
    connection: C,
    activity: &Activity,
    header_timeout: Duration,
    draining: &mut watch::Receiver<bool>,
) -> Result<(), C::Error> {
    tokio::pin!(connection);
    loop {
        // A connection with no request open for header_timeout_s is closed: HTTP/2 with a
        // GOAWAY, HTTP/1.1 between two requests (its next head counts from the last answer).
        let idle_at = activity.idle_deadline(header_timeout);
        let wake_at = idle_at.unwrap_or_else(|| Instant::now() + header_timeout);
        tokio::select! {
            // The connection first: it is what wakes this task nearly every time.
            biased;
            r = connection.as_mut() => return r,
            _ = drained(draining) => {
                connection.as_mut().graceful_shutdown();
                return connection.await;
            }
            _ = tokio::time::sleep_until(wake_at) => {
                if activity.idle_deadline(header_timeout).is_some_and(|at| at <= Instant::now()) {
                    connection.as_mut().graceful_shutdown();
                    return connection.await;
                }
            }
        }
    }
}

async fn admin_loop(listener: TcpListener, state: Arc<State>) {
    // HTTP/1.1: what Prometheus and the kubelet's probes speak.
    let builder = Arc::new(http1::Builder::new());
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let state = Arc::clone(&state);
        let builder = Arc::clone(&builder);
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let state = Arc::clone(&state);
                async move {
                    Ok::<_, Infallible>(pipeline::admin_answer(
                        &request,
                        &state.health,
                        &state.context.metrics,
                    ))
                }
            });
            let _ = builder
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

pin_project_lite::pin_project! {
    /// A socket with a deadline that holds until the first request head has arrived:
    /// reads fail with `TimedOut` past it.
    struct HeadDeadline<IO> {
        #[pin]
        io: IO,
        deadline: Pin<Box<Sleep>>,
        head_pending: Arc<AtomicBool>,
        // Bytes read to tell the protocol, read again first.
        unread: Bytes,
    }
}

impl<IO> HeadDeadline<IO> {
    fn new(io: IO, timeout: Duration, head_pending: Arc<AtomicBool>) -> Self {
        HeadDeadline {
            io,
            deadline: Box::pin(tokio::time::sleep_until(Instant::now() + timeout)),
            head_pending,
            unread: Bytes::new(),
        }
    }

    /// Bytes already read, to be read again before the socket's.
    fn put_back(&mut self, bytes: Bytes) {
        self.unread = bytes;
    }
}

impl<IO: AsyncRead> AsyncRead for HeadDeadline<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        if this.head_pending.load(Ordering::Relaxed) && this.deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "request head not received within header_timeout_s",
            )));
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
        self.project().io.poll_write(cx, buf)
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
        self.project().io.poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Who serves each connection of a sequence accepted by `takers`.
    fn assigned(workers: usize, takers: impl IntoIterator<Item = usize>) -> Vec<usize> {
        let (balance, _handed) = Balance::new(workers);
        takers.into_iter().map(|t| balance.assign(t)).collect()
    }

    #[test]
    fn a_burst_accepted_by_one_worker_is_split_evenly() {
        let served = assigned(2, std::iter::repeat_n(0, 64));
        let on = |w| served.iter().filter(|&&s| s == w).count();
        assert_eq!((on(0), on(1)), (33, 31));
        let served = assigned(4, std::iter::repeat_n(3, 100));
        let counts: Vec<usize> = (0..4)
            .map(|w| served.iter().filter(|&&s| s == w).count())
            .collect();
        assert!(counts.iter().all(|&c| (24..=27).contains(&c)), "{counts:?}");
    }

    #[test]
    fn workers_taking_turns_keep_what_they_accept() {
        let takers = [0, 1, 1, 0, 0, 1, 0, 1, 1, 0];
        assert_eq!(assigned(2, takers), takers);
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

    #[test]
    fn a_worker_ahead_by_two_hands_over_until_even() {
        // Worker 1 took three in a row: the third goes to worker 0.
        assert_eq!(assigned(2, [1, 1, 1, 1]), [1, 1, 0, 1]);
    }
}
