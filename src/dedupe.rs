//! Dedupe (SPEC §3 `dedupe_window_s`): an event id this source forwarded with a 2xx in the
//! last N seconds is not forwarded again.
//!
//! An id is remembered only once the upstream answered 2xx, so a sender's retry after a
//! failure gets through. A duplicate does not extend the window. Two copies in flight at
//! once are both forwarded: neither is remembered until its answer comes back, and holding
//! one back could lose it if the other failed (at least once, never lost).
//! Memory is bounded: entries expire in insertion order (one window per source), and past
//! the capacity (`dedupe_capacity`) the oldest are forgotten first. An id forgotten so,
//! before its window ended, is counted and warned about: a retry of it would be forwarded
//! again, and the operator can raise the capacity or shorten the window.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher, RandomState};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use governor::clock::Clock;
use governor::nanos::Nanos;

use crate::limit::LimitClock;

/// How many ids one source remembers at most, unless its `dedupe_capacity` says otherwise.
pub const CAPACITY: usize = 100_000;

/// How often a full table is warned about at most (each forgotten id is counted).
const FULL_WARN_EVERY_NS: u64 = 60_000_000_000;

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
    /// A reload may change it too; a smaller one takes effect at the next id remembered.
    capacity: AtomicUsize,
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
    /// When a full table was last warned about.
    warned_at: Option<u64>,
}

impl Seen {
    /// Forgets the oldest id (if `order`'s entry is still the map's: an id remembered
    /// again after its expiry has a later entry too). `None` when there is none, else
    /// whether it forgot an id whose window had not ended by `now`.
    fn forget_oldest(&mut self, now: u64) -> Option<bool> {
        let (at, key) = self.order.pop_front()?;
        if let Entry::Occupied(e) = self.expires.entry(key)
            && *e.get() == at
        {
            e.remove();
            return Some(at > now);
        }
        Some(false)
    }

    fn expire(&mut self, now: u64) {
        while self.order.front().is_some_and(|(at, _)| *at <= now) {
            self.forget_oldest(now);
        }
    }
}

/// What remembering an id did to the ids remembered before it.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Remembered {
    /// Ids forgotten before their window ended, the table being over its capacity.
    pub forgotten_early: u64,
    /// Whether to warn of that now (at most once a minute per source).
    pub warn: bool,
}

impl Dedupe {
    pub fn new(window: Duration, clock: LimitClock) -> Dedupe {
        Dedupe::with_capacity(window, clock, CAPACITY)
    }

    pub fn with_capacity(window: Duration, clock: LimitClock, capacity: usize) -> Dedupe {
        Dedupe {
            window_ns: AtomicU64::new(window.as_nanos() as u64),
            clock,
            capacity: AtomicUsize::new(capacity),
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

    /// A reload's new `dedupe_capacity` for the same source.
    pub fn set_capacity(&self, capacity: usize) {
        self.capacity.store(capacity, Ordering::Relaxed);
    }

    pub fn capacity(&self) -> usize {
        self.capacity.load(Ordering::Relaxed)
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
    pub fn remember(&self, key: IdKey) -> Remembered {
        let now = self.now();
        let at = now.saturating_add(self.window_ns.load(Ordering::Relaxed));
        let capacity = self.capacity();
        let mut s = self.lock();
        s.expire(now);
        // New, or remembered before but past its expiry (see `seen`): remembered from now.
        let expiry = s.expires.entry(key).or_insert(0);
        if *expiry > now {
            return Remembered::default();
        }
        *expiry = at;
        s.order.push_back((at, key));
        let mut remembered = Remembered::default();
        while s.expires.len() > capacity
            && let Some(early) = s.forget_oldest(now)
        {
            remembered.forgotten_early += u64::from(early);
        }
        if remembered.forgotten_early > 0
            && s.warned_at
                .is_none_or(|w| now.saturating_sub(w) >= FULL_WARN_EVERY_NS)
        {
            s.warned_at = Some(now);
            remembered.warn = true;
        }
        remembered
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
    fn housekeeping_forgets_expired_ids_while_no_delivery_comes() {
        let clock = LimitClock::fake();
        let d = Dedupe::new(Duration::from_secs(60), clock.clone());
        d.remember(d.key(b"a"));
        d.remember(d.key(b"b"));
        assert_eq!(d.len(), 2);
        assert!(!d.is_empty());
        clock.advance(Duration::from_secs(59));
        d.housekeeping();
        assert_eq!(d.len(), 2, "not yet expired");
        clock.advance(Duration::from_secs(1));
        d.housekeeping();
        assert!(
            d.is_empty(),
            "expired, with no seen() or remember() to drop them"
        );
    }

    #[test]
    fn capacity_forgets_the_oldest_first() {
        let clock = LimitClock::fake();
        let d = Dedupe::with_capacity(Duration::from_secs(60), clock, 1000);
        let mut forgotten = 0;
        let mut warnings = 0;
        for i in 0..100_000 {
            let r = d.remember(d.key(i.to_string().as_bytes()));
            forgotten += r.forgotten_early;
            warnings += u32::from(r.warn);
        }
        assert_eq!(d.len(), 1000);
        assert!(!d.seen(d.key(b"0")));
        assert!(!d.seen(d.key(b"98999")));
        assert!(d.seen(d.key(b"99000")));
        assert!(d.seen(d.key(b"99999")));
        // Every id past the first thousand pushed one out within its window; the clock
        // stood still, so that was warned about once.
        assert_eq!((forgotten, warnings), (99_000, 1));
    }

    #[test]
    fn ids_forgotten_early_are_counted_and_warned_about_once_a_minute() {
        let clock = LimitClock::fake();
        let d = Dedupe::with_capacity(Duration::from_secs(300), clock.clone(), 2);
        let (a, b, c) = (d.key(b"a"), d.key(b"b"), d.key(b"c"));
        assert_eq!(d.remember(a), Remembered::default());
        assert_eq!(d.remember(b), Remembered::default());
        let full = Remembered {
            forgotten_early: 1,
            warn: true,
        };
        let counted = Remembered {
            forgotten_early: 1,
            warn: false,
        };
        assert_eq!(d.remember(c), full);
        assert!(!d.seen(a) && d.seen(b) && d.seen(c));
        clock.advance(Duration::from_secs(59));
        assert_eq!(d.remember(a), counted, "b out, within the minute");
        clock.advance(Duration::from_secs(1));
        assert_eq!(d.remember(b), full, "c out, a minute on");
        // Ids whose window has ended are let go as always, and not counted.
        clock.advance(Duration::from_secs(300));
        assert_eq!(d.remember(c), Remembered::default());
        assert_eq!(d.len(), 1);
        // A reload's smaller capacity takes effect at the next id.
        d.set_capacity(1);
        assert_eq!(d.remember(a), full, "c out");
        assert!(d.seen(a) && !d.seen(c));
        assert_eq!(d.len(), 1);
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
