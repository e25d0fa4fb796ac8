//! Where log lines go: stderr (SPEC §8). A worker thread gathers its lines and writes them
//! in batches instead of one `write` each, and writes what it holds before it goes idle.
//!
//! Why: at the default level every request logs a line, and one `write` per line cost
//! 2.7 µs of CPU per request at 64 connections against 1.7 µs in batches (−1.0 µs, +7 %
//! req/s; `benches/PERFORMANCE.md`, "Request log lines"). A batch ends at a line's end and
//! is at most `PIPE_BUF` (4 KiB): one `write` that size to a pipe (a container's stderr) is
//! atomic, so no line is cut into by another writer, even another process's; batches of
//! 64 KiB measured no cheaper. A line waits at most until its worker runs out of ready
//! work, under load about what filling a batch takes (well under a millisecond); a crash
//! can lose up to one batch per worker. Threads other than the workers (start-up, reload,
//! shutdown) write each line at once.
//!
//! When stderr is a pipe or a socket, the workers write through a handle of their own on
//! it that never waits ([`NonBlocking`]): a batch the pipe has no room for is dropped and
//! its lines counted, and a warning says how many once lines go through again. Before, a
//! log reader that stopped reading stopped hookgate: after ~64 KiB every worker waited in
//! `write` and the main listener answered nothing (223 requests, then none). A log thread
//! the workers hand batches to would not wait either, but measured +1.4 µs of CPU per
//! request at the default level (17.3–17.9 against 15.8–16.5 µs, wrk -c64, stderr piped).

use std::cell::RefCell;
use std::fs::File;
use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{LazyLock, OnceLock};

use prometheus_client::metrics::counter::Counter;
use tracing_subscriber::fmt::MakeWriter;

/// At most one log line per period for something that can happen many times a second (a
/// failing accept, failed TLS handshakes): the first occurrence gets a line, then the first
/// after each period, with how many it stands for. Shared by threads, so lock-free.
pub struct Throttle {
    every_ms: u64,
    base: std::time::Instant,
    /// Milliseconds after `base` before which no line is due.
    next_ms: AtomicU64,
    /// Occurrences since the last line that got none.
    skipped: AtomicU64,
}

impl Throttle {
    pub fn new(every: std::time::Duration) -> Throttle {
        Throttle {
            every_ms: every.as_millis() as u64,
            base: std::time::Instant::now(),
            next_ms: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
        }
    }

    /// An occurrence at `now`: `Some(skipped)` when it gets a line, with how many occurred
    /// since the last line without one.
    pub fn due(&self, now: std::time::Instant) -> Option<u64> {
        let at = now.saturating_duration_since(self.base).as_millis() as u64;
        let next = self.next_ms.load(Ordering::Relaxed);
        // One thread takes the line; the others count themselves skipped.
        if at < next
            || self
                .next_ms
                .compare_exchange(
                    next,
                    at + self.every_ms,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_err()
        {
            self.skipped.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(self.skipped.swap(0, Ordering::Relaxed))
    }
}

/// Most a batch holds: Linux's `PIPE_BUF`, the most one `write` to a pipe keeps whole
/// (some 15 request lines).
const BATCH: usize = 4096;

thread_local! {
    /// This thread's lines not yet written; `None` where each line is written at once.
    static PENDING: RefCell<Option<Batch>> = const { RefCell::new(None) };
}

/// Lines the workers dropped (stderr full) since a warning last said so.
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// Every line dropped since the start, for `/metrics` (`hookgate_log_lines_dropped_total`):
/// the warning may itself be dropped, and an alert should not depend on reading the log.
pub static DROPPED_TOTAL: LazyLock<Counter> = LazyLock::new(Counter::default);

thread_local! {
    /// Whether stderr took this thread's last batch whole: then a warning about dropped
    /// lines has a chance to be read.
    static TAKEN: std::cell::Cell<bool> = const { std::cell::Cell::new(true) };
}

/// The workers' own handle on stderr, opened anew with `O_NONBLOCK` so that stderr's own
/// file description (the process's, its children's and its parent's) is left as it is:
/// only when stderr is a pipe or a socket. A file gets no such handle (a second file
/// description has an offset of its own, and would write over the first's lines); a
/// file or a terminal seldom stops taking lines.
fn non_blocking() -> Option<&'static File> {
    static HANDLE: OnceLock<Option<File>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
            let path = "/proc/self/fd/2";
            let kind = std::fs::metadata(path).ok()?.file_type();
            if !(kind.is_fifo() || kind.is_socket()) {
                return None;
            }
            std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(path)
                .ok()
        })
        .as_ref()
}

/// Where a worker's batches go: stderr, without waiting for it when it is a pipe.
struct NonBlocking {
    /// Whether the lines of a batch stderr had no room for count as dropped: not those of
    /// the warning that says how many were, whose count goes on to its next try instead.
    /// (Counted, each try while stderr stayed full added one: 1,501 deliveries with 1,278
    /// of their lines dropped were told as 5,484.)
    count_dropped: bool,
}

impl Write for NonBlocking {
    fn write(&mut self, batch: &[u8]) -> io::Result<usize> {
        let Some(mut out) = non_blocking() else {
            let _ = io::stderr().write_all(batch);
            return Ok(batch.len());
        };
        let rest = write_until_full(&mut out, batch);
        // A batch of up to PIPE_BUF goes whole or not at all; a longer line may be cut.
        let lost = lines_in(rest);
        if lost > 0 && self.count_dropped {
            DROPPED.fetch_add(lost, Ordering::Relaxed);
            DROPPED_TOTAL.inc_by(lost);
        }
        TAKEN.with(|t| t.set(rest.is_empty()));
        Ok(batch.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Writes `bytes` to `out` for as long as it takes them; what it did not take.
fn write_until_full<'a>(out: &mut impl Write, bytes: &'a [u8]) -> &'a [u8] {
    let mut rest = bytes;
    while !rest.is_empty() {
        match out.write(rest) {
            Ok(0) => break,
            Ok(n) => rest = &rest[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    rest
}

/// How many lines end in `bytes`: a line cut short counts, its end being there.
fn lines_in(bytes: &[u8]) -> u64 {
    bytes.iter().filter(|&&b| b == b'\n').count() as u64
}

/// Gathers this thread's lines from now on. For a worker thread, which calls [`flush`]
/// before it parks and when it ends.
pub fn batch_this_thread() {
    PENDING.with(|p| {
        if let Ok(mut p) = p.try_borrow_mut() {
            *p = Some(Batch::new());
        }
    });
}

/// Writes what this thread has gathered; then, if lines were dropped and stderr took that
/// batch, writes a warning that says how many.
pub fn flush() {
    // With nothing to write, this thread cannot tell whether stderr has room again (its
    // last batch may have been dropped long ago, and the lines other workers dropped since
    // their last flush are told by none but this one): it tries.
    if !write_gathered(&mut NonBlocking {
        count_dropped: true,
    }) {
        TAKEN.with(|t| t.set(true));
    }
    if TAKEN.with(|t| t.get()) {
        let dropped = DROPPED.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            tracing::warn!(
                dropped,
                "log lines dropped: stderr was not read fast enough"
            );
            // Now: a worker's last flush has no next one to carry it.
            write_gathered(&mut NonBlocking {
                count_dropped: false,
            });
            if !TAKEN.with(|t| t.get()) {
                // The warning was dropped in turn (not counted): its count goes on to the next.
                DROPPED.fetch_add(dropped, Ordering::Relaxed);
            }
        }
    }
}

/// Writes this thread's gathered lines; `false` if it had none.
fn write_gathered(out: &mut NonBlocking) -> bool {
    PENDING.with(|p| {
        if let Ok(mut p) = p.try_borrow_mut()
            && let Some(batch) = p.as_mut()
        {
            return batch.flush(out);
        }
        false
    })
}

/// The writer tracing-subscriber formats each line into (one `write_all` per line).
#[derive(Clone, Copy, Debug, Default)]
pub struct Stderr;

impl<'a> MakeWriter<'a> for Stderr {
    type Writer = Stderr;
    fn make_writer(&'a self) -> Stderr {
        Stderr
    }
}

impl Write for Stderr {
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        PENDING.with(|p| {
            if let Ok(mut p) = p.try_borrow_mut()
                && let Some(batch) = p.as_mut()
            {
                batch.push(
                    line,
                    &mut NonBlocking {
                        count_dropped: true,
                    },
                );
                return Ok(line.len());
            }
            // Never an error: tracing-subscriber reports a failed write with `eprintln!`,
            // which panics when stderr is gone (a log reader that exited: EPIPE), and a
            // reload or SIGTERM logged from this thread then ended the process (exit 101).
            if io::stderr().write_all(line).is_err() {
                DROPPED.fetch_add(1, Ordering::Relaxed);
                DROPPED_TOTAL.inc();
            }
            Ok(line.len())
        })
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Lines gathered for one write.
struct Batch {
    bytes: Vec<u8>,
}

impl Batch {
    fn new() -> Batch {
        Batch {
            bytes: Vec::with_capacity(BATCH),
        }
    }

    /// Adds a line, first writing out what is gathered if the line would not fit with it.
    /// A line of a batch's size or more is written on its own. (Lost if `out` fails: stderr
    /// is all a log has.)
    fn push(&mut self, line: &[u8], out: &mut impl Write) {
        if self.bytes.len() + line.len() > BATCH {
            self.flush(out);
        }
        if line.len() >= BATCH {
            let _ = out.write_all(line);
        } else {
            self.bytes.extend_from_slice(line);
        }
    }

    /// Writes what is gathered; `false` if there was nothing.
    fn flush(&mut self, out: &mut impl Write) -> bool {
        if self.bytes.is_empty() {
            return false;
        }
        let _ = out.write_all(&self.bytes);
        self.bytes.clear();
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records each write it is given.
    #[derive(Default)]
    struct Writes(Vec<Vec<u8>>);

    impl Write for Writes {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0.push(bytes.to_vec());
            Ok(bytes.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn line(n: usize, len: usize) -> Vec<u8> {
        let mut l = format!("line {n} ").into_bytes();
        l.resize(len - 1, b'x');
        l.push(b'\n');
        l
    }

    #[test]
    fn batches_are_whole_lines_of_at_most_pipe_buf() {
        let mut batch = Batch::new();
        let mut out = Writes::default();
        let lines: Vec<Vec<u8>> = (0..100).map(|n| line(n, 150 + n * 7 % 300)).collect();
        for l in &lines {
            batch.push(l, &mut out);
        }
        assert!(out.0.len() > 1, "written in more than one batch");
        batch.flush(&mut out);
        for write in &out.0 {
            assert!(write.len() <= BATCH, "a write of {} bytes", write.len());
            assert_eq!(
                write.last(),
                Some(&b'\n'),
                "a write that ends inside a line"
            );
        }
        assert_eq!(out.0.concat(), lines.concat(), "every line, in order");
        // Each batch as full as the next line allowed: that line would not have fitted.
        for pair in out.0.windows(2) {
            let next_line = pair[1]
                .split_inclusive(|&b| b == b'\n')
                .next()
                .expect("a line");
            assert!(
                pair[0].len() + next_line.len() > BATCH,
                "a batch of {} bytes written before a {}-byte line",
                pair[0].len(),
                next_line.len()
            );
        }
    }

    /// Lines that fill a batch to the byte go in one write: `PIPE_BUF` is kept whole.
    #[test]
    fn lines_that_fill_a_batch_exactly_are_one_write() {
        let mut batch = Batch::new();
        let mut out = Writes::default();
        let (a, b) = (line(1, 1000), line(2, BATCH - 1000));
        batch.push(&a, &mut out);
        batch.push(&b, &mut out);
        assert!(out.0.is_empty(), "written before the batch was full");
        batch.flush(&mut out);
        assert_eq!(out.0, vec![[a, b].concat()]);
    }

    #[test]
    fn a_long_line_is_written_alone_after_what_was_gathered() {
        let mut batch = Batch::new();
        let mut out = Writes::default();
        let (short, long) = (line(1, 100), line(2, BATCH + 500));
        batch.push(&short, &mut out);
        batch.push(&long, &mut out);
        assert_eq!(out.0, vec![short.clone(), long.clone()]);
        batch.push(&short, &mut out);
        batch.flush(&mut out);
        batch.flush(&mut out);
        assert_eq!(
            out.0,
            vec![short.clone(), long, short],
            "an empty batch writes nothing"
        );
    }

    /// A non-blocking pipe: takes at most `chunk` bytes a call up to `room` in all, then
    /// would block; the first `interrupts` calls are interrupted by a signal.
    struct Pipe {
        room: usize,
        chunk: usize,
        interrupts: usize,
        taken: Vec<u8>,
    }

    impl Write for Pipe {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            if self.interrupts > 0 {
                self.interrupts -= 1;
                return Err(io::ErrorKind::Interrupted.into());
            }
            let n = bytes.len().min(self.room).min(self.chunk);
            if n == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            self.room -= n;
            self.taken.extend_from_slice(&bytes[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// A write goes on through short writes and signals, and stops where the pipe is full:
    /// the lines not taken, the one cut short among them, are what is counted dropped.
    #[test]
    fn a_write_stops_where_the_pipe_is_full_and_its_lines_are_counted() {
        let lines: Vec<u8> = (0..10).flat_map(|n| line(n, 100)).collect();
        let mut pipe = Pipe {
            room: 450,
            chunk: 64,
            interrupts: 2,
            taken: Vec::new(),
        };
        let rest = write_until_full(&mut pipe, &lines);
        assert_eq!(pipe.taken, &lines[..450]);
        assert_eq!(rest, &lines[450..]);
        // Lines 4 (cut after 50 bytes) to 9.
        assert_eq!(lines_in(rest), 6);
        assert_eq!(lines_in(&lines[..450]), 4);
        let mut roomy = Pipe {
            room: usize::MAX,
            chunk: 64,
            interrupts: 1,
            taken: Vec::new(),
        };
        assert_eq!(write_until_full(&mut roomy, &lines), b"");
        assert_eq!(roomy.taken, lines);
        assert_eq!(lines_in(b""), 0);
    }

    /// Of threads that all hit a throttle at once, one gets the line; the next line is due
    /// a period later and stands for the others. Every occurrence without a line is counted
    /// by exactly one line: a thread that counts itself skipped while the winner takes the
    /// line may be counted by that line rather than the next (both happened at once), so the
    /// two lines' counts are held to their sum, not each to a share (each was, until a run
    /// on a busy 2-core VM counted 7,999 at the second line and 1 at the first).
    #[test]
    fn a_throttle_gives_one_line_per_period_across_threads() {
        let throttle = Throttle::new(std::time::Duration::from_secs(10));
        let now = std::time::Instant::now();
        let first: Vec<u64> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    scope.spawn(|| {
                        (0..1000)
                            .filter_map(|_| throttle.due(now))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().expect("thread"))
                .collect()
        });
        assert_eq!(first.len(), 1, "one line for 8,000 at once: {first:?}");
        let later = now + std::time::Duration::from_millis(9_999);
        assert_eq!(throttle.due(later), None);
        let second = throttle.due(now + std::time::Duration::from_secs(11));
        // The 7,999 at once that got no line, and the one at 9.999 s.
        assert_eq!(second.map(|n| n + first[0]), Some(8_000));
    }
}
