//! Dedupe (SPEC §3 `dedupe_window_s`): an event id this source forwarded with a 2xx in the
//! last N seconds is not forwarded again.
//!
//! An id is remembered only once the upstream answered 2xx, so a sender's retry after a
//! failure gets through. A duplicate does not extend the window. Two copies in flight at
//! once are both forwarded: neither is remembered until its answer comes back, and holding
//! one back could lose it if the other failed (at least once, never lost).
//! Memory is bounded: entries expire in insertion order (one window per source), and past
//! the capacity the oldest are forgotten first.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use governor::clock::Clock;
use governor::nanos::Nanos;

use crate::limit::LimitClock;

/// How many ids one source remembers at most.
pub const CAPACITY: usize = 100_000;

pub struct Dedupe {
    /// The window in nanoseconds; a reload may change it (ids already remembered keep
    /// the expiry they were given).
    window_ns: AtomicU64,
    clock: LimitClock,
    capacity: usize,
    inner: Mutex<Seen>,
}

#[derive(Default)]
struct Seen {
    /// id → when it expires.
    expires: HashMap<String, u64>,
    /// (expiry, id) in insertion order, which is expiry order.
    order: VecDeque<(u64, String)>,
}

impl Seen {
    fn expire(&mut self, now: u64) {
        while let Some((at, _)) = self.order.front() {
            if *at > now {
                break;
            }
            if let Some((at, id)) = self.order.pop_front() {
                // Only remove the map entry if it is this one (not a later re-insert).
                if self.expires.get(&id) == Some(&at) {
                    self.expires.remove(&id);
                }
            }
        }
    }
}

impl Dedupe {
    pub fn new(window: Duration, clock: LimitClock) -> Dedupe {
        Dedupe::with_capacity(window, clock, CAPACITY)
    }

    pub fn with_capacity(window: Duration, clock: LimitClock, capacity: usize) -> Dedupe {
        Dedupe {
            window_ns: AtomicU64::new(window.as_nanos() as u64),
            clock,
            capacity,
            inner: Mutex::new(Seen::default()),
        }
    }

    pub fn window(&self) -> Duration {
        Duration::from_nanos(self.window_ns.load(Ordering::Relaxed))
    }

    /// A reload's new `dedupe_window_s` for the same source.
    pub fn set_window(&self, window: Duration) {
        self.window_ns
            .store(window.as_nanos() as u64, Ordering::Relaxed);
    }

    fn now(&self) -> u64 {
        Nanos::into(self.clock.now())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Seen> {
        // A poisoned lock only means another request panicked; the maps are consistent.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether `id` was forwarded with a 2xx within the window.
    pub fn seen(&self, id: &str) -> bool {
        let now = self.now();
        let mut s = self.lock();
        s.expire(now);
        s.expires.contains_key(id)
    }

    /// Remembers `id` after a 2xx answer (a remembered id keeps its first expiry).
    pub fn remember(&self, id: &str) {
        let now = self.now();
        let at = now.saturating_add(self.window_ns.load(Ordering::Relaxed));
        let mut s = self.lock();
        s.expire(now);
        if s.expires.contains_key(id) {
            return;
        }
        while s.expires.len() >= self.capacity {
            match s.order.pop_front() {
                Some((_, old)) => {
                    s.expires.remove(&old);
                }
                None => break,
            }
        }
        s.expires.insert(id.to_string(), at);
        s.order.push_back((at, id.to_string()));
    }

    /// Drops expired ids (also done on every call; this frees memory in quiet times).
    pub fn housekeeping(&self) {
        let now = self.now();
        self.lock().expire(now);
    }

    pub fn len(&self) -> usize {
        self.lock().expires.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_within_the_window_without_extending_it() {
        let clock = LimitClock::fake();
        let d = Dedupe::new(Duration::from_secs(300), clock.clone());
        assert!(!d.seen("a"));
        d.remember("a");
        assert!(d.seen("a"));
        clock.advance(Duration::from_secs(200));
        d.remember("a"); // a duplicate's 2xx does not extend the window
        assert!(d.seen("a"));
        clock.advance(Duration::from_secs(100));
        assert!(!d.seen("a"), "expired at 300 s");
        assert!(d.is_empty());
    }

    #[test]
    fn capacity_forgets_the_oldest_first() {
        let clock = LimitClock::fake();
        let d = Dedupe::with_capacity(Duration::from_secs(60), clock, 1000);
        for i in 0..100_000 {
            d.remember(&i.to_string());
        }
        assert_eq!(d.len(), 1000);
        assert!(!d.seen("0"));
        assert!(d.seen("99999"));
    }
}
