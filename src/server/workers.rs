//! The worker threads and how connections reach them: every worker accepts on its own
//! handle of the one listening socket, under `max_connections`, and `Balance` hands a
//! connection on when one worker has been given more than its share.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use super::connection::serve_connection;
use super::{State, drained};

/// A connection taken by one worker and handed to another (see `Balance`), with its place
/// under `max_connections`.
pub(super) type Handoff = (std::net::TcpStream, SocketAddr, OwnedSemaphorePermit);

/// How many connections each worker has been given, and the way to hand one to another
/// worker. Workers accept for themselves, and a burst of new connections lands on whichever
/// woke first (all 64 of wrk's, once in five runs, without this): a worker that has been
/// given two more than another hands the connection to the one given fewest. So the
/// connections are spread as evenly as round robin spreads them, while a worker keeps most
/// of what it accepts when the workers take turns at accepting anyway (a hand-over costs a
/// cross-thread wake). Counted over the process's life, not as connections open now: those
/// counts lag while closing connections wait to be read, and a burst of new ones during a
/// burst of closes could then all land on one worker, for as long as they are kept alive.
pub(super) struct Balance {
    given: Box<[AtomicUsize]>,
    handoff: Box<[tokio::sync::mpsc::UnboundedSender<Handoff>]>,
}

impl Balance {
    pub(super) fn new(
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
pub(super) struct Worker {
    pub(super) index: usize,
    pub(super) listener: std::net::TcpListener,
    pub(super) state: Arc<State>,
    pub(super) connections: Arc<Semaphore>,
    pub(super) balance: Arc<Balance>,
    pub(super) handed: tokio::sync::mpsc::UnboundedReceiver<Handoff>,
    pub(super) draining: watch::Receiver<bool>,
    /// Held while the worker accepts (see `Server::accepting`).
    pub(super) accepting: tokio::sync::mpsc::Sender<()>,
    /// Held until the worker thread ends (see `Server::running`).
    pub(super) running: tokio::sync::mpsc::Sender<()>,
}

/// A worker: an OS thread with its own single-threaded runtime and its own upstream client.
/// Each worker accepts for itself and serves a connection start to end on its thread, so
/// neither a request nor (mostly) a new connection wakes another thread: the multi-threaded
/// scheduler's cross-thread wake-ups cost more than the whole verification, and a separate
/// accepting thread handing every connection over cost 4-5 µs of CPU per connection
/// (`benches/PERFORMANCE.md`, "New connections").
pub(super) fn spawn_worker(worker: Worker, mut stop: watch::Receiver<bool>) -> io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        // The worker's log lines are written in batches: what it holds, before it idles.
        .on_thread_park(crate::logs::flush)
        .build()?;
    std::thread::Builder::new()
        .name(format!("hookgate-worker-{}", worker.index))
        .spawn(move || {
            crate::logs::batch_this_thread();
            let Worker {
                index,
                listener,
                state,
                connections,
                balance,
                mut handed,
                draining,
                accepting,
                running,
            } = worker;
            runtime.block_on(async move {
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
                // Idle upstream connections the app closed, or that idled out, are closed
                // while no delivery comes to find them.
                let sweep = async {
                    let mut tick = tokio::time::interval(crate::upstream::SWEEP);
                    loop {
                        tick.tick().await;
                        spawner.state.worker_gateway(index).sweep_idle(index);
                    }
                };
                tokio::select! {
                    _ = async { tokio::join!(accept, take_handed) } => {}
                    _ = stop.wait_for(|s| *s) => {}
                    _ = sweep => {}
                }
            });
            // Connection tasks still there (cut off at the grace) go with the runtime.
            drop(runtime);
            crate::logs::flush();
            drop(running);
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
            // Held by the task: uncounted however it ends.
            let _open = state.context.metrics.open_connections.hold(worker);
            serve_connection(&state, stream, peer, worker, draining, permit).await;
        });
    }
}

/// How often a worker logs that accepting fails while it goes on failing.
const ACCEPT_ERROR_EVERY: Duration = Duration::from_secs(10);

/// A worker's failed accepts, for the log. Out of file descriptors (`EMFILE`), accept fails
/// again at every retry, 20 times a second per worker, for as long as the connections last:
/// one line for the first, then one per `ACCEPT_ERROR_EVERY` with how many it stands for.
struct AcceptErrors(crate::logs::Throttle);

impl AcceptErrors {
    fn new() -> AcceptErrors {
        AcceptErrors(crate::logs::Throttle::new(ACCEPT_ERROR_EVERY))
    }

    /// Counts a failed accept at `now`; whether it wrote a line.
    fn failed(&mut self, error: &io::Error, now: Instant) -> bool {
        let Some(unlogged) = self.0.due(now) else {
            return false;
        };
        let out_of_descriptors = matches!(error.raw_os_error(), Some(libc::EMFILE | libc::ENFILE));
        tracing::warn!(
            error = %error,
            since_last_line = unlogged,
            "accept failed; new connections wait in the listen backlog until it passes{}",
            if out_of_descriptors {
                " (raise the open-files limit, or lower max_connections)"
            } else {
                ""
            }
        );
        true
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
    let mut accept_errors = AcceptErrors::new();
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
                    accept_errors.failed(&e, Instant::now());
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A failing accept is logged once, then once per `ACCEPT_ERROR_EVERY`, not at each of
    /// its retries.
    #[test]
    fn accept_errors_are_logged_once_per_ten_seconds() {
        let mut errors = AcceptErrors::new();
        let e = io::Error::from_raw_os_error(libc::EMFILE);
        let t0 = Instant::now();
        let logged: Vec<bool> = (0..=400u64)
            .map(|i| errors.failed(&e, t0 + Duration::from_millis(50 * i)))
            .collect();
        // At 0, 10 and 20 s of 50 ms retries.
        let at: Vec<usize> = (0..logged.len()).filter(|&i| logged[i]).collect();
        assert_eq!(at, [0, 200, 400]);
        // The next line stands for the 199 retries since the last.
        for i in 401..600u64 {
            assert!(!errors.failed(&e, t0 + Duration::from_millis(50 * i)));
        }
        assert_eq!(errors.0.due(t0 + Duration::from_secs(30)), Some(199));
    }

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
    fn a_worker_ahead_by_two_hands_over_until_even() {
        // Worker 1 took three in a row: the third goes to worker 0.
        assert_eq!(assigned(2, [1, 1, 1, 1]), [1, 1, 0, 1]);
    }
}
