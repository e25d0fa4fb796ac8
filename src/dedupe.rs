//! Dedupe (SPEC §3 `dedupe_window_s`): an event id this source forwarded with a 2xx in the
//! last N seconds is not forwarded again.
//!
//! An id is remembered only once the upstream answered 2xx, so a sender's retry after a
//! failure gets through. A duplicate does not extend the window. Two copies in flight at
//! once are both forwarded: neither is remembered until its answer comes back, and holding
//! one back could lose it if the other failed (at least once, never lost).
//! Memory is bounded: entries expire in insertion order (one window per source), and past
//! the capacity the oldest are forgotten first.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher, RandomState};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use governor::clock::Clock;
use governor::nanos::Nanos;

use crate::limit::LimitClock;

/// How many ids one source remembers at most.
pub const CAPACITY: usize = 100_000;

/// An event id as dedupe remembers it, not the id itself: 128 bits of keyed SipHash (std's
/// `RandomState`, whose keys come from the OS's random source; two 64-bit hashes of the id,
/// each with its own tag). A fixed-size key takes no allocation per delivery and keeps a
/// full table at ~10 MiB of RSS instead of ~20 (two owned copies of every id). Two ids
/// share a key with odds of about `CAPACITY` in 2^128 per delivery, and nobody outside the
/// process knows the hash keys, so no sender can make two of its ids collide on purpose.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct IdKey([u64; 2]);

impl Hash for IdKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.0[0]);
    }
}

/// The map's hash of an [`IdKey`] is its first half as it is: that is already a keyed
/// SipHash, so hashing it again would only spend time (criterion `dedupe_new_id_full_table`:
/// 137 ns, against 162 with std's hasher for the map). Hand-written: ten lines, where a
/// crate would be a dependency for them.
#[derive(Default)]
struct IdKeyHasher(u64);

impl Hasher for IdKeyHasher {
    fn write_u64(&mut self, half: u64) {
        self.0 = half;
    }
    fn write(&mut self, bytes: &[u8]) {
        // The trait's one required method; `IdKey` writes a `u64`, so this is not reached.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

pub struct Dedupe {
    /// The window in nanoseconds; a reload may change it (ids already remembered keep
    /// the expiry they were given).
    window_ns: AtomicU64,
    clock: LimitClock,
    capacity: usize,
    /// The SipHash keys of [`IdKey`], for the life of this state (kept across reloads with
    /// it).
    hash: RandomState,
    inner: Mutex<Seen>,
}

#[derive(Default)]
struct Seen {
    /// id → when it expires.
    expires: HashMap<IdKey, u64, BuildHasherDefault<IdKeyHasher>>,
    /// (expiry, id) in insertion order, which is expiry order while the window stays.
    order: VecDeque<(u64, IdKey)>,
}

impl Seen {
    /// Forgets the oldest id (if `order`'s entry is still the map's: an id remembered
    /// again after its expiry has a later entry too).
    fn forget_oldest(&mut self) -> bool {
        let Some((at, key)) = self.order.pop_front() else {
            return false;
        };
        if let Entry::Occupied(e) = self.expires.entry(key)
            && *e.get() == at
        {
            e.remove();
        }
        true
    }

    fn expire(&mut self, now: u64) {
        while self.order.front().is_some_and(|(at, _)| *at <= now) {
            self.forget_oldest();
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
            hash: RandomState::new(),
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

    /// The key an id is remembered by (taken once per delivery, for `seen` and `remember`).
    pub fn key(&self, id: &[u8]) -> IdKey {
        IdKey([self.hash.hash_one((0u8, id)), self.hash.hash_one((1u8, id))])
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

    /// Whether the id was forwarded with a 2xx within the window.
    pub fn seen(&self, key: IdKey) -> bool {
        let now = self.now();
        let mut s = self.lock();
        s.expire(now);
        // Past its expiry but not yet expired: a reload shortened the window, and an older
        // id with the longer one is still ahead of it in `order`.
        s.expires.get(&key).is_some_and(|&at| at > now)
    }

    /// Remembers an id after a 2xx answer (a remembered id keeps its first expiry).
    pub fn remember(&self, key: IdKey) {
        let now = self.now();
        let at = now.saturating_add(self.window_ns.load(Ordering::Relaxed));
        let mut s = self.lock();
        s.expire(now);
        // New, or remembered before but past its expiry (see `seen`): remembered from now.
        let expiry = s.expires.entry(key).or_insert(0);
        if *expiry > now {
            return;
        }
        *expiry = at;
        s.order.push_back((at, key));
        while s.expires.len() > self.capacity && s.forget_oldest() {}
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
        let a = d.key(b"a");
        assert!(!d.seen(a));
        d.remember(a);
        assert!(d.seen(a));
        assert!(!d.seen(d.key(b"b")));
        clock.advance(Duration::from_secs(200));
        d.remember(a); // a duplicate's 2xx does not extend the window
        assert!(d.seen(a));
        clock.advance(Duration::from_secs(100));
        assert!(!d.seen(a), "expired at 300 s");
        assert!(d.is_empty());
    }

    #[test]
    fn capacity_forgets_the_oldest_first() {
        let clock = LimitClock::fake();
        let d = Dedupe::with_capacity(Duration::from_secs(60), clock, 1000);
        for i in 0..100_000 {
            d.remember(d.key(i.to_string().as_bytes()));
        }
        assert_eq!(d.len(), 1000);
        assert!(!d.seen(d.key(b"0")));
        assert!(!d.seen(d.key(b"98999")));
        assert!(d.seen(d.key(b"99000")));
        assert!(d.seen(d.key(b"99999")));
    }

    #[test]
    fn a_shorter_window_after_a_reload_holds_for_ids_remembered_under_it() {
        let clock = LimitClock::fake();
        let d = Dedupe::new(Duration::from_secs(300), clock.clone());
        let (old, new) = (d.key(b"old"), d.key(b"new"));
        d.remember(old);
        d.set_window(Duration::from_secs(10));
        d.remember(new);
        clock.advance(Duration::from_secs(11));
        assert!(
            !d.seen(new),
            "remembered for 10 s, not for the 300 s of the id ahead of it"
        );
        assert!(d.seen(old), "keeps the expiry it was given");
        // Remembered again once its window has passed, with a new expiry; the stale entry
        // for it, when it comes up, forgets nothing.
        d.remember(new);
        assert!(d.seen(new));
        clock.advance(Duration::from_secs(290));
        assert!(!d.seen(old));
        assert!(!d.seen(new));
        assert!(d.is_empty());
    }

    #[test]
    fn keys_are_per_id_and_per_state() {
        let clock = LimitClock::fake();
        let d = Dedupe::new(Duration::from_secs(60), clock.clone());
        assert!(d.key(b"evt_1") == d.key(b"evt_1"));
        assert!(d.key(b"evt_1") != d.key(b"evt_2"));
        // Each state draws its own hash keys: nothing about them is fixed in the binary.
        let other = Dedupe::new(Duration::from_secs(60), clock);
        assert!(d.key(b"evt_1") != other.key(b"evt_1"));
    }
}
