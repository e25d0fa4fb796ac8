//! Rate limits (SPEC §3, §4) with governor: `client_rate_limit` keyed by client address
//! (IPv6 per /64), checked before the proof; a source's `rate_limit`, checked for verified
//! deliveries only. Over either: 429 with `Retry-After` from governor's wait time.
//!
//! The keyed limiter's table is bounded: governor's own keyed stores only shrink by
//! `retain_recent()`, which cannot stop a flood of fresh addresses from growing them, so
//! the store here is a sharded LRU of fixed capacity (the least recently seen addresses
//! are forgotten first, as the SPEC says).

use std::hash::{BuildHasher, Hash};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::keyed::ShrinkableKeyedStateStore;
use governor::state::{InMemoryState, NotKeyed, StateStore};
use governor::{Quota, RateLimiter};
use prometheus_client::metrics::counter::Counter;

use crate::config::RateLimit;

/// How many client addresses the keyed limiter remembers at most (about 100 bytes each).
pub const CLIENT_TABLE_CAPACITY: usize = 65_536;
const SHARDS: usize = 16;

/// The limiters' clock: real time, or a fake that tests move by hand (no sleeps).
#[derive(Clone, Debug)]
pub struct LimitClock {
    start: std::time::Instant,
    fake: Option<Arc<AtomicU64>>,
}

impl Default for LimitClock {
    fn default() -> Self {
        LimitClock {
            start: std::time::Instant::now(),
            fake: None,
        }
    }
}

impl LimitClock {
    /// A clock that stands still until [`LimitClock::advance`] moves it.
    pub fn fake() -> LimitClock {
        LimitClock {
            start: std::time::Instant::now(),
            fake: Some(Arc::new(AtomicU64::new(0))),
        }
    }

    /// Moves a fake clock forward (no effect on a real one).
    pub fn advance(&self, by: Duration) {
        if let Some(f) = &self.fake {
            f.fetch_add(by.as_nanos() as u64, Ordering::SeqCst);
        }
    }
}

impl Clock for LimitClock {
    type Instant = Nanos;
    fn now(&self) -> Nanos {
        match &self.fake {
            Some(f) => Nanos::from(f.load(Ordering::SeqCst)),
            None => Nanos::from(self.start.elapsed()),
        }
    }
}

fn quota(r: RateLimit) -> Quota {
    // Config validation makes both at least 1.
    let per_second = NonZeroU32::new(r.per_second).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(r.burst).unwrap_or(NonZeroU32::MIN);
    Quota::per_second(per_second).allow_burst(burst)
}

/// Whole seconds to wait, at least 1.
fn retry_after_s(wait: Duration) -> u64 {
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}

/// A client address as the limiter keys it: IPv4 as is, IPv6 by its /64.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match crate::admit::canonical(ip) {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
        v4 => v4,
    }
}

/// A source's `rate_limit`: one bucket.
pub struct SourceLimiter {
    pub rate: RateLimit,
    limiter: RateLimiter<NotKeyed, InMemoryState, LimitClock, NoOpMiddleware<Nanos>>,
    clock: LimitClock,
}

impl SourceLimiter {
    pub fn new(rate: RateLimit, clock: LimitClock) -> SourceLimiter {
        SourceLimiter {
            rate,
            limiter: RateLimiter::direct_with_clock(quota(rate), clock.clone()),
            clock,
        }
    }

    /// `Err(seconds to wait)` when over the limit.
    pub fn check(&self) -> Result<(), u64> {
        self.limiter
            .check()
            .map_err(|not_until| retry_after_s(not_until.wait_time_from(self.clock.now())))
    }
}

/// `client_rate_limit`: one bucket per client address, in a bounded table.
pub struct ClientLimiter {
    pub rate: RateLimit,
    limiter: RateLimiter<IpAddr, LruStore, LimitClock, NoOpMiddleware<Nanos>>,
    clock: LimitClock,
}

impl ClientLimiter {
    /// `evictions` counts addresses forgotten to make room for new ones.
    pub fn new(rate: RateLimit, clock: LimitClock, evictions: Counter) -> ClientLimiter {
        ClientLimiter::with_capacity(rate, clock, CLIENT_TABLE_CAPACITY, evictions)
    }

    pub fn with_capacity(
        rate: RateLimit,
        clock: LimitClock,
        capacity: usize,
        evictions: Counter,
    ) -> ClientLimiter {
        ClientLimiter {
            rate,
            limiter: RateLimiter::new(
                quota(rate),
                LruStore::new(capacity, evictions),
                clock.clone(),
            ),
            clock,
        }
    }

    /// `Err(seconds to wait)` when this client is over the limit.
    pub fn check(&self, client: IpAddr) -> Result<(), u64> {
        self.limiter
            .check_key(&client_key(client))
            .map_err(|not_until| retry_after_s(not_until.wait_time_from(self.clock.now())))
    }

    /// Forgets addresses whose bucket is full again (they are as good as new).
    pub fn housekeeping(&self) {
        self.limiter.retain_recent();
    }

    /// How many addresses the table holds now.
    pub fn len(&self) -> usize {
        self.limiter.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A keyed state store of fixed capacity: sharded LRU maps, so a flood of fresh keys
/// evicts the least recently seen ones instead of growing memory. Each eviction is
/// counted: an address forgotten so starts with a full burst again, so a steady count
/// means more addresses are sending than the table holds (a flood from many addresses).
pub struct LruStore {
    shards: Vec<Mutex<lru::LruCache<IpAddr, u64>>>,
    hasher: std::collections::hash_map::RandomState,
    evictions: Counter,
}

impl LruStore {
    fn new(capacity: usize, evictions: Counter) -> LruStore {
        let per_shard = NonZeroUsizeOrOne::of(capacity.div_ceil(SHARDS));
        LruStore {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(lru::LruCache::new(per_shard)))
                .collect(),
            hasher: std::collections::hash_map::RandomState::new(),
            evictions,
        }
    }

    fn shard(&self, key: &IpAddr) -> &Mutex<lru::LruCache<IpAddr, u64>> {
        let mut h = self.hasher.build_hasher();
        key.hash(&mut h);
        &self.shards[(std::hash::Hasher::finish(&h) as usize) % SHARDS]
    }
}

struct NonZeroUsizeOrOne;
impl NonZeroUsizeOrOne {
    fn of(n: usize) -> std::num::NonZeroUsize {
        std::num::NonZeroUsize::new(n).unwrap_or(std::num::NonZeroUsize::MIN)
    }
}

impl StateStore for LruStore {
    type Key = IpAddr;

    fn measure_and_replace<T, F, E>(&self, key: &IpAddr, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        // A poisoned shard only means another request panicked mid-update; the map is intact.
        let mut shard = self
            .shard(key)
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let previous = shard.get(key).copied().map(Nanos::from);
        let (outcome, next) = f(previous)?;
        // `push` hands back what it displaced: this key's old value, or another key's
        // entry when the shard was full.
        if shard
            .push(*key, next.as_u64())
            .is_some_and(|(displaced, _)| displaced != *key)
        {
            self.evictions.inc();
        }
        Ok(outcome)
    }
}

impl ShrinkableKeyedStateStore<IpAddr> for LruStore {
    fn retain_recent(&self, drop_below: Nanos) {
        for shard in &self.shards {
            let mut s = shard
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let stale: Vec<IpAddr> = s
                .iter()
                .filter(|(_, t)| **t < drop_below.as_u64())
                .map(|(k, _)| *k)
                .collect();
            for k in stale {
                s.pop(&k);
            }
        }
    }

    fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                s.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .len()
            })
            .sum()
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(per_second: u32, burst: u32) -> RateLimit {
        RateLimit { per_second, burst }
    }

    #[test]
    fn source_limit_allows_a_burst_then_says_how_long_to_wait() {
        let clock = LimitClock::fake();
        let l = SourceLimiter::new(rate(1, 3), clock.clone());
        assert_eq!((l.check(), l.check(), l.check()), (Ok(()), Ok(()), Ok(())));
        assert_eq!(l.check(), Err(1));
        clock.advance(Duration::from_millis(1000));
        assert_eq!(l.check(), Ok(()));
        assert_eq!(l.check(), Err(1));
    }

    #[test]
    fn retry_after_rounds_the_wait_up_to_whole_seconds_at_least_one() {
        assert_eq!(retry_after_s(Duration::ZERO), 1);
        assert_eq!(retry_after_s(Duration::from_millis(700)), 1);
        assert_eq!(retry_after_s(Duration::from_secs(1)), 1);
        assert_eq!(retry_after_s(Duration::from_millis(1001)), 2);
        assert_eq!(retry_after_s(Duration::from_millis(2100)), 3);
    }

    #[test]
    fn client_limit_is_per_address_and_per_ipv6_64() {
        let clock = LimitClock::fake();
        let l = ClientLimiter::new(rate(1, 1), clock.clone(), Counter::default());
        let a: IpAddr = "192.0.2.1".parse().expect("ip");
        let b: IpAddr = "192.0.2.2".parse().expect("ip");
        assert_eq!(l.check(a), Ok(()));
        assert_eq!(l.check(a), Err(1));
        assert_eq!(l.check(b), Ok(()));
        let v6a: IpAddr = "2001:db8:1:2::1".parse().expect("ip");
        let v6b: IpAddr = "2001:db8:1:2:ffff::9".parse().expect("ip");
        let v6c: IpAddr = "2001:db8:1:3::1".parse().expect("ip");
        assert_eq!(l.check(v6a), Ok(()));
        assert_eq!(l.check(v6b), Err(1), "same /64");
        assert_eq!(l.check(v6c), Ok(()));
        // A mapped IPv4 address is the IPv4 address.
        assert_eq!(l.check("::ffff:192.0.2.2".parse().expect("ip")), Err(1));
    }

    #[test]
    fn the_client_table_is_bounded_and_forgets_the_least_recent() {
        let clock = LimitClock::fake();
        let evictions = Counter::default();
        let l = ClientLimiter::with_capacity(rate(1, 1), clock.clone(), 1_600, evictions.clone());
        let first: IpAddr = "10.255.255.255".parse().expect("ip");
        assert_eq!(l.check(first), Ok(()));
        assert_eq!(
            l.check(first),
            Err(1),
            "an address seen again is no eviction"
        );
        for i in 0..100_000u32 {
            let ip = IpAddr::V4((0x0a00_0000 + i).into());
            let _ = l.check(ip);
        }
        assert!(l.len() <= 1_600, "table grew to {}", l.len());
        // And it holds what it was sized for, not a few per shard.
        assert!(l.len() > 1_500, "table holds only {}", l.len());
        assert!(!l.is_empty());
        // Every address past the table's room pushed one out (each of the 16 shards evicts
        // once its own 100 are full, so the table may hold a few under 1,600).
        let held = l.len() as u64;
        assert_eq!(evictions.get(), 100_001 - held);
        // The first address was evicted: it starts afresh.
        assert_eq!(l.check(first), Ok(()));
        // After a quiet spell every bucket is full again and housekeeping empties the table.
        clock.advance(Duration::from_secs(5));
        l.housekeeping();
        assert_eq!(l.len(), 0);
        assert!(l.is_empty());
    }
}
