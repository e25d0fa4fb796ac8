//! The listeners: startup, reload, the graceful drain and the admin port (SPEC §3
//! defaults, §8). How connections reach the worker threads is in [`workers`]; how one
//! connection is served (TLS, HTTP/1.1 or HTTP/2, the head deadline) in [`connection`].
//!
//! Takes a validated [`Config`]; gives a running [`Server`] whose requests go to
//! [`pipeline::handle`]. A reload swaps the whole [`Gateway`] at once: a request in flight
//! keeps the one it started with.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use arc_swap::{ArcSwap, ArcSwapOption};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;

use crate::config::Config;
use crate::pipeline::{self, Context, Gateway, Health};
use crate::tls;
use connection::Http;
use workers::{Balance, Worker, spawn_worker};

mod connection;
pub mod proxy_header;
mod workers;

/// Why the gateway could not start (or a reload was refused): one line each.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("{file}: {source}")]
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
    /// When the listener's certificate expires, if TLS is on.
    pub tls_not_after: Option<SystemTime>,
    context: Context,
}

impl Prepared {
    /// What an operator must be warned about: the config's warnings, and a certificate that
    /// has expired or soon will.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = self.gateway.config.warnings();
        let tls = self.gateway.config.server.tls.as_ref();
        if let (Some(tls), Some(not_after)) = (tls, self.tls_not_after) {
            warnings.extend(tls::expiry_warning(&tls.cert, not_after, SystemTime::now()));
        }
        warnings
    }

    /// How many worker threads will serve connections.
    pub fn workers(&self) -> usize {
        self.context.worker_count()
    }
}

/// What a reload did besides swapping the config in.
#[derive(Debug)]
pub struct Reloaded {
    /// Changed settings that take effect only at the next start.
    pub later: Vec<&'static str>,
    /// The new config's warnings (`Prepared::warnings`).
    pub warnings: Vec<String>,
    /// What changed in the routes, and the settings that took effect at once
    /// (`reload::route_changes`, `reload::setting_changes`).
    pub changes: Vec<String>,
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
        })?;
    let tls_not_after = tls.as_ref().and_then(|t| t.not_after);
    let gateway = Gateway::new(config, &context, previous)
        .map_err(|source| StartError::Upstream { file, source })?;
    Ok(Prepared {
        gateway,
        tls: tls.map(|t| TlsAcceptor::from(t.config)),
        tls_not_after,
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

    /// The gateway in force, as `worker`'s own handle has it.
    pub(super) fn worker_gateway(&self, worker: usize) -> Arc<Gateway> {
        Arc::clone(&self.worker_gateways[worker % self.worker_gateways.len()].load())
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
    /// Every worker thread holds a sender until it has ended and written its last log lines.
    running: tokio::sync::mpsc::Receiver<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.draining.send(true);
        let _ = self.stop.send(true);
    }
}

impl Server {
    /// Binds the listeners and starts serving.
    pub async fn start(prepared: Prepared) -> Result<Server, StartError> {
        let server_cfg = &prepared.gateway.config.server;
        let listen = server_cfg.listen;
        let max_connections = u32::try_from(server_cfg.max_connections).unwrap_or(u32::MAX);
        let admin = prepared.gateway.config.admin;

        let listener = listen_on(listen).map_err(|source| StartError::Bind {
            addr: listen,
            source,
        })?;
        let local_addr = listener.local_addr().map_err(|source| StartError::Bind {
            addr: listen,
            source,
        })?;
        let admin_listener = match admin {
            Some(addr) => {
                Some(listen_on(addr).map_err(|source| StartError::Bind { addr, source })?)
            }
            None => None,
        };
        let admin_addr = admin_listener.as_ref().and_then(|l| l.local_addr().ok());

        prepared.context.metrics.set_tls_not_after(
            prepared
                .gateway
                .config
                .server
                .tls
                .as_ref()
                .map(|t| t.cert.as_path()),
            prepared.tls_not_after,
        );
        let workers = prepared.workers();
        let gateway = Arc::new(prepared.gateway);
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
        state.context.metrics.set_max_connections(max_connections);
        let (accepting_tx, accepting) = tokio::sync::mpsc::channel(1);
        let (running_tx, running) = tokio::sync::mpsc::channel(1);

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
                running: running_tx.clone(),
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
            running,
        })
    }

    /// The gateway now in force.
    pub fn gateway(&self) -> Arc<Gateway> {
        self.state.gateway()
    }

    /// Re-reads the config file; on any error the old config stays and the error is returned.
    pub fn reload(&self) -> Result<Reloaded, StartError> {
        let result = self.load_again();
        self.count_reload(result.is_ok());
        result
    }

    /// Counts a reload in the metrics (`reload` does; `load_again` does not).
    pub fn count_reload(&self, success: bool) {
        self.state.context.metrics.config_reloaded(success);
    }

    /// `reload`, not counted: for a retry that may fail again as before (`reload::Reloader`).
    pub fn load_again(&self) -> Result<Reloaded, StartError> {
        let old = self.state.gateway();
        let config = Config::load(&old.config.path)?;
        let prepared = prepare_with(config, self.state.context.clone(), Some(&old))?;
        let warnings = prepared.warnings();
        let (o, n) = (&old.config, &prepared.gateway.config);
        let settings = crate::reload::setting_changes(o, n);
        let mut changes = crate::reload::route_changes(o, n);
        changes.extend(settings.now);
        // TLS stays as it was when it is switched on or off; new certificates take effect.
        if o.server.tls.is_some() == n.server.tls.is_some() {
            self.state.tls.store(prepared.tls.map(Arc::new));
            self.state.context.metrics.set_tls_not_after(
                n.server.tls.as_ref().map(|t| t.cert.as_path()),
                prepared.tls_not_after,
            );
        }
        let gateway = Arc::new(prepared.gateway);
        for worker in &self.state.worker_gateways {
            worker.store(Arc::new(Arc::clone(&gateway)));
        }
        Ok(Reloaded {
            later: settings.at_next_start,
            warnings,
            changes,
        })
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
        // The workers' last log lines are written as they end (bounded: a worker stuck in
        // a request past the grace must not hold up the exit).
        let _ = tokio::time::timeout(Duration::from_secs(2), self.running.recv()).await;
        clean
    }
}

/// Asked of `listen(2)` for the accept queue; Linux takes the smaller of it and
/// `net.core.somaxconn` (4096 by default since 5.4), as Go's listeners do.
const BACKLOG: u32 = 65_535;

/// A listening socket whose accept queue is as long as the kernel allows. tokio's `bind`
/// takes std's 128: a burst of 500 new connections then had 137 of them wait a SYN
/// retransmit, over a second, to connect, and past `max_connections` no more than 128 could
/// wait.
fn listen_on(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    // As tokio's `bind`: a restart can listen again while old connections linger.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// Resolves once the drain has begun.
async fn drained(rx: &mut watch::Receiver<bool>) {
    // An error means the sender is gone: that is a drain too.
    let _ = rx.wait_for(|d| *d).await;
}

/// Forgets rate-limit and dedupe state that no longer matters, and hands memory freed
/// after a burst back to the system, every 10 s.
async fn housekeeping(state: Arc<State>) {
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    let mut trimmer = crate::memory::Trimmer::default();
    loop {
        tick.tick().await;
        state.gateway().housekeeping();
        if let Some(t) = trimmer.tick() {
            tracing::debug!(
                resident_before_kib = t.resident_before / 1024,
                resident_after_kib = t.resident_after / 1024,
                micros = t.micros,
                "freed memory handed back to the system"
            );
        }
    }
}

/// Admin connections served at once; past it a new one is closed at once. Prometheus and
/// the kubelet's probes need a few; the cap keeps a flood on the admin port from taking the
/// file descriptors the main listener needs.
const ADMIN_CONNECTIONS: usize = 256;

/// An admin connection is closed after this long (its answer in progress finished first):
/// scrapes and probes take milliseconds, and a kept-alive scraper simply connects again.
const ADMIN_CONNECTION_LIFETIME: Duration = Duration::from_secs(60);

async fn admin_loop(listener: TcpListener, state: Arc<State>) {
    let open = Arc::new(Semaphore::new(ADMIN_CONNECTIONS));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Ok(permit) = Arc::clone(&open).try_acquire_owned() else {
            continue;
        };
        // HTTP/1.1: what Prometheus and the kubelet's probes speak. A client that has not
        // sent a whole head within header_timeout_s (read per connection, for reloads) is
        // cut off, as on the main listener; hyper's header timer needs a timer to run.
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(state.gateway().config.server.header_timeout);
        let state = Arc::clone(&state);
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
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            if tokio::time::timeout(ADMIN_CONNECTION_LIFETIME, connection.as_mut())
                .await
                .is_err()
            {
                // Past its lifetime: the answer being written is finished, then it closes
                // (a client that does not read it has another lifetime at most).
                connection.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(ADMIN_CONNECTION_LIFETIME, connection).await;
            }
            drop(permit);
        });
    }
}
