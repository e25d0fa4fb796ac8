//! Prometheus metrics (SPEC §8) with `prometheus-client`, served on the admin listener.
//!
//! The hot path takes no lock that all requests contend for: each source gets its handles
//! (plain atomic counters) once, when a config is loaded; a status counter is looked up in
//! the label family once per (source, status) and kept. The upstream latency histogram is
//! our own atomic one, because the crate's `Histogram` takes a mutex on every observation.
//!
//! What every forwarded request writes (its status counter, the in-flight gauge, the
//! latency histogram) is sharded by worker thread, each shard on its own cache line, and
//! summed when scraped: one atomic shared by two cores moves its cache line between them on
//! every write, and with each worker on its own core that was a measured part of a
//! request's CPU (`benches/PERFORMANCE.md`, "Shared cache lines"). Counters a request
//! touches only when refused stay plain.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

mod process;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceStatus {
    source: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabel {
    source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceScope {
    source: String,
    scope: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceKind {
    source: String,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Version {
    version: &'static str,
}

/// Upper bounds in seconds: 1 ms to 10 s.
const BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The upstream error kinds, each with its counter made up front.
pub const UPSTREAM_ERROR_KINDS: [&str; 6] = [
    "connect",
    "timeout",
    "invalid_response",
    "body_too_large",
    "content_encoding",
    "status_5xx",
];

/// Shards per sharded metric: a worker writes shard `worker % SHARDS`. Workers past it
/// share shards (still correct, only contended again); one per core is the default.
const SHARDS: usize = 8;

/// One shard, alone on its cache line(s) (128 bytes: the pair of lines Intel's adjacent-line
/// prefetcher fetches together).
#[derive(Debug, Default)]
#[repr(align(128))]
struct Padded<T>(T);

fn shards<T: Default>() -> Arc<[Padded<T>]> {
    (0..SHARDS).map(|_| Padded::default()).collect()
}

/// A metric written by many threads, one shard each (see the module's doc); its value is
/// the shards' sum.
#[derive(Debug)]
pub struct Sharded<A> {
    shards: Arc<[Padded<A>]>,
}

// By hand: a derive would ask `A: Clone`, and a clone shares the shards.
impl<A> Clone for Sharded<A> {
    fn clone(&self) -> Self {
        Sharded {
            shards: Arc::clone(&self.shards),
        }
    }
}

impl<A: Default> Default for Sharded<A> {
    fn default() -> Self {
        Sharded { shards: shards() }
    }
}

impl<A> Sharded<A> {
    /// The shard `worker` writes.
    fn shard(&self, worker: usize) -> &A {
        &self.shards[worker % SHARDS].0
    }
}

/// A counter (requests by source and status).
pub type ShardedCounter = Sharded<AtomicU64>;
/// A gauge (requests in flight); a request's `inc` and `dec` land on its worker's shard.
pub type ShardedGauge = Sharded<AtomicI64>;

impl ShardedCounter {
    pub fn inc(&self, worker: usize) {
        self.shard(worker).fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| s.0.load(Ordering::Relaxed))
            .sum()
    }
}

impl ShardedGauge {
    pub fn inc(&self, worker: usize) {
        self.shard(worker).fetch_add(1, Ordering::Relaxed);
    }

    pub fn dec(&self, worker: usize) {
        self.shard(worker).fetch_sub(1, Ordering::Relaxed);
    }

    pub fn get(&self) -> i64 {
        self.shards
            .iter()
            .map(|s| s.0.load(Ordering::Relaxed))
            .sum()
    }

    /// Counts one on `worker`'s shard until the guard is dropped.
    pub fn hold(&self, worker: usize) -> Held<'_> {
        self.inc(worker);
        Held {
            gauge: self,
            worker,
        }
    }
}

/// One count of a [`ShardedGauge`] for as long as this lives. A guard rather than an
/// increment and a decrement: a request's future can be dropped before its end (hyper
/// drops it when its HTTP/1.1 connection fails), and the gauge would stay one too high.
pub struct Held<'g> {
    gauge: &'g ShardedGauge,
    worker: usize,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.gauge.dec(self.worker);
    }
}

impl TypedMetric for ShardedCounter {
    const TYPE: MetricType = MetricType::Counter;
}

impl EncodeMetric for ShardedCounter {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_counter::<NoLabelSet, _, u64>(&self.get(), None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

impl TypedMetric for ShardedGauge {
    const TYPE: MetricType = MetricType::Gauge;
}

impl EncodeMetric for ShardedGauge {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_gauge(&self.get())
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// A histogram of atomics: observing is a few relaxed atomic adds to the worker's shard, no
/// lock.
#[derive(Clone, Debug, Default)]
pub struct AtomicHistogram {
    inner: Sharded<HistogramInner>,
}

#[derive(Debug, Default)]
struct HistogramInner {
    /// One count per bucket of `BUCKETS`, plus +Inf (not cumulative).
    counts: [AtomicU64; BUCKETS.len() + 1],
    sum_micros: AtomicU64,
}

impl AtomicHistogram {
    pub fn observe(&self, worker: usize, d: Duration) {
        let secs = d.as_secs_f64();
        let i = BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(BUCKETS.len());
        let shard = self.inner.shard(worker);
        shard.counts[i].fetch_add(1, Ordering::Relaxed);
        shard
            .sum_micros
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }
}

impl TypedMetric for AtomicHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for AtomicHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let buckets: Vec<(f64, u64)> = BUCKETS
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .enumerate()
            .map(|(i, le)| {
                let n = self
                    .inner
                    .shards
                    .iter()
                    .map(|s| s.0.counts[i].load(Ordering::Relaxed));
                (le, n.sum())
            })
            .collect();
        let sum_micros: u64 = self
            .inner
            .shards
            .iter()
            .map(|s| s.0.sum_micros.load(Ordering::Relaxed))
            .sum();
        let sum = sum_micros as f64 / 1e6;
        // The count is the buckets' total, so the exposition is self-consistent.
        let count = buckets.iter().map(|(_, c)| c).sum();
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CertLabel {
    cert: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadResult {
    result: &'static str,
}

/// The process's metrics.
pub struct Metrics {
    registry: Registry,
    requests: Family<SourceStatus, ShardedCounter>,
    verification_failures: Family<SourceLabel, Counter>,
    rate_limited: Family<SourceScope, Counter>,
    upstream_duration: Family<SourceLabel, AtomicHistogram>,
    upstream_errors: Family<SourceKind, Counter>,
    duplicates: Family<SourceLabel, Counter>,
    dedupe_forgotten_early: Family<SourceLabel, Counter>,
    pub in_flight: ShardedGauge,
    /// Request bodies that waited for the memory budget (`server.max_buffered_bytes`).
    pub body_budget_waits: Counter,
    /// Client addresses the `client_rate_limit` table forgot to make room for new ones.
    pub client_table_evictions: Counter,
    /// Deliveries that waited for an upstream exchange (`max_connections` in flight), and
    /// new upstream connections.
    pub upstream: crate::upstream::UpstreamCounters,
    /// Connections on the main listener now, counted by the worker serving each (its
    /// `max_connections` is a gauge of its own).
    pub open_connections: ShardedGauge,
    max_connections: Gauge,
    /// TLS handshakes on the main listener that failed (no or a wrong client certificate,
    /// a PROXY header not asked for, a client that gave up; plain HTTP is answered 400 and
    /// counted as a request instead).
    pub tls_handshake_failures: Counter,
    /// Connections from a `proxy_protocol_from` peer closed because they did not open
    /// with a valid PROXY header (a balancer not set to send one, or not a balancer).
    pub proxy_header_failures: Counter,
    /// HTTP/1.1 connections cut off because the first request head, begun, was not whole
    /// within `header_timeout_s` (a slow or stalled sender, or a slowloris).
    pub header_timeouts: Counter,
    config_reloads: Family<ReloadResult, Counter>,
    config_last_reload_successful: Gauge,
    /// Unix seconds (to the millisecond) of the start, then of each reload that succeeded:
    /// whether a rotation has been taken up.
    config_last_reload_success_timestamp: Gauge<f64, AtomicU64>,
    /// The served certificate's `notAfter`, by its file; no sample without TLS.
    tls_not_after: Family<CertLabel, Gauge>,
    /// Requests that match no source count under `source=""`.
    pub unmatched: SourceMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// Now, in seconds since the Unix epoch, to the millisecond.
fn unix_seconds() -> f64 {
    crate::time::Millis::now().as_i64() as f64 / 1000.0
}

impl Metrics {
    pub fn new() -> Metrics {
        // The process metrics keep their standard names; hookgate's own carry its prefix.
        let mut root = Registry::default();
        root.register_collector(Box::new(process::ProcessCollector));
        let registry = root.sub_registry_with_prefix("hookgate");
        let requests = Family::<SourceStatus, ShardedCounter>::default();
        let verification_failures = Family::<SourceLabel, Counter>::default();
        let rate_limited = Family::<SourceScope, Counter>::default();
        let upstream_duration = Family::<SourceLabel, AtomicHistogram>::default();
        let upstream_errors = Family::<SourceKind, Counter>::default();
        let in_flight = ShardedGauge::default();
        let body_budget_waits = Counter::default();
        let client_table_evictions = Counter::default();
        let upstream = crate::upstream::UpstreamCounters::default();
        let open_connections = ShardedGauge::default();
        let max_connections = Gauge::default();
        let tls_handshake_failures = Counter::default();
        let proxy_header_failures = Counter::default();
        let header_timeouts = Counter::default();
        let config_reloads = Family::<ReloadResult, Counter>::default();
        for result in ["success", "failure"] {
            let _ = config_reloads.get_or_create_owned(&ReloadResult { result });
        }
        let config_last_reload_successful = Gauge::default();
        config_last_reload_successful.set(1);
        let tls_not_after = Family::<CertLabel, Gauge>::default();
        let config_last_reload_success_timestamp = Gauge::<f64, AtomicU64>::default();
        config_last_reload_success_timestamp.set(unix_seconds());
        let duplicates = Family::<SourceLabel, Counter>::default();
        let dedupe_forgotten_early = Family::<SourceLabel, Counter>::default();
        let build_info = Family::<Version, Gauge>::default();
        build_info
            .get_or_create(&Version {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        registry.register(
            "requests",
            "Requests to source paths, by source and status",
            requests.clone(),
        );
        registry.register(
            "verification_failures",
            "Deliveries whose proof was missing, malformed or wrong",
            verification_failures.clone(),
        );
        registry.register(
            "rate_limited",
            "Requests refused by a rate limit (scope client or source)",
            rate_limited.clone(),
        );
        registry.register(
            "upstream_duration_seconds",
            "Time until the upstream's whole answer was read",
            upstream_duration.clone(),
        );
        registry.register(
            "upstream_errors",
            "Failed or 5xx upstream exchanges, by kind",
            upstream_errors.clone(),
        );
        registry.register(
            "in_flight_requests",
            "Requests being handled now",
            in_flight.clone(),
        );
        registry.register(
            "body_budget_waits",
            "Request bodies that waited for server.max_buffered_bytes",
            body_budget_waits.clone(),
        );
        registry.register(
            "log_lines_dropped",
            "Log lines dropped because stderr was not read fast enough (its reader stopped or fell behind)",
            crate::logs::DROPPED_TOTAL.clone(),
        );
        registry.register(
            "client_table_evictions",
            "Client addresses the client_rate_limit table forgot to make room for new ones (it was full); a forgotten address starts with a full burst again",
            client_table_evictions.clone(),
        );
        registry.register(
            "upstream_waits",
            "Deliveries that waited for another's upstream exchange to end (server.max_connections in flight)",
            upstream.waits.clone(),
        );
        registry.register(
            "upstream_connections",
            "Connections opened to the upstreams (a rate near the delivery rate: the app closes them; one per 1000 deliveries: retired)",
            upstream.connections.clone(),
        );
        registry.register(
            "upstream_connect_retries",
            "Connections to an upstream tried again after no address took them (upstream.connect_retry_ms)",
            upstream.connect_retries.clone(),
        );
        registry.register(
            "duplicates",
            "Deliveries answered as duplicates (dedupe_window_s), not forwarded",
            duplicates.clone(),
        );
        registry.register(
            "dedupe_forgotten_early",
            "Event ids dedupe forgot before dedupe_window_s ended, its table being full (dedupe_capacity)",
            dedupe_forgotten_early.clone(),
        );
        registry.register(
            "open_connections",
            "Connections open on the main listener",
            open_connections.clone(),
        );
        registry.register(
            "max_connections",
            "server.max_connections of the main listener",
            max_connections.clone(),
        );
        registry.register(
            "tls_handshake_failures",
            "TLS handshakes on the main listener that failed",
            tls_handshake_failures.clone(),
        );
        registry.register(
            "header_timeouts",
            "HTTP/1.1 connections cut off because a request head begun was not whole within header_timeout_s",
            header_timeouts.clone(),
        );
        registry.register(
            "proxy_protocol_failures",
            "Connections from a proxy_protocol_from peer closed for a missing or malformed PROXY header",
            proxy_header_failures.clone(),
        );
        registry.register(
            "config_reloads",
            "Config reloads (SIGHUP, or a changed file with reload_poll_s), by result (a failed one keeps the old config)",
            config_reloads.clone(),
        );
        registry.register(
            "config_last_reload_successful",
            "1 unless the last reload failed",
            config_last_reload_successful.clone(),
        );
        registry.register(
            "config_last_reload_success_timestamp_seconds",
            "When the serving config was loaded (the start, or the last reload that succeeded)",
            config_last_reload_success_timestamp.clone(),
        );
        registry.register(
            "tls_certificate_not_after_timestamp_seconds",
            "When the served certificate expires (its notAfter), by its file",
            tls_not_after.clone(),
        );
        registry.register("build_info", "hookgate's version", build_info);
        let mut m = Metrics {
            registry: root,
            requests,
            verification_failures,
            rate_limited,
            upstream_duration,
            upstream_errors,
            in_flight,
            body_budget_waits,
            client_table_evictions,
            upstream,
            open_connections,
            max_connections,
            tls_handshake_failures,
            proxy_header_failures,
            header_timeouts,
            config_reloads,
            config_last_reload_successful,
            config_last_reload_success_timestamp,
            tls_not_after,
            duplicates,
            dedupe_forgotten_early,
            unmatched: SourceMetrics::placeholder(),
        };
        m.unmatched = m.source("");
        m
    }

    /// The main listener's `max_connections`, as a gauge beside `open_connections`.
    pub fn set_max_connections(&self, max: u32) {
        self.max_connections.set(i64::from(max));
    }

    /// A reload's outcome.
    pub fn config_reloaded(&self, success: bool) {
        let result = if success { "success" } else { "failure" };
        self.config_reloads
            .get_or_create(&ReloadResult { result })
            .inc();
        self.config_last_reload_successful.set(i64::from(success));
        if success {
            self.config_last_reload_success_timestamp
                .set(unix_seconds());
        }
    }

    /// The served certificate and when it expires (at start and at each reload).
    pub fn set_tls_not_after(
        &self,
        cert: Option<&std::path::Path>,
        not_after: Option<std::time::SystemTime>,
    ) {
        self.tls_not_after.clear();
        let seconds = not_after
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .and_then(|d| i64::try_from(d.as_secs()).ok());
        if let (Some(cert), Some(seconds)) = (cert, seconds) {
            self.tls_not_after
                .get_or_create(&CertLabel {
                    cert: cert.display().to_string(),
                })
                .set(seconds);
        }
    }

    /// A source's handles (made when a config is loaded, not per request).
    pub fn source(&self, name: &str) -> SourceMetrics {
        let label = SourceLabel {
            source: name.to_string(),
        };
        SourceMetrics {
            name: name.to_string(),
            statuses: std::array::from_fn(|_| OnceLock::new()),
            requests: self.requests.clone(),
            verification_failures: self.verification_failures.get_or_create_owned(&label),
            rate_limited_client: self.rate_limited.get_or_create_owned(&SourceScope {
                source: name.to_string(),
                scope: "client",
            }),
            rate_limited_source: self.rate_limited.get_or_create_owned(&SourceScope {
                source: name.to_string(),
                scope: "source",
            }),
            upstream_duration: self.upstream_duration.get_or_create_owned(&label),
            duplicates: self.duplicates.get_or_create_owned(&label),
            dedupe_forgotten_early: self.dedupe_forgotten_early.get_or_create_owned(&label),
            upstream_errors: UPSTREAM_ERROR_KINDS.map(|kind| {
                self.upstream_errors.get_or_create_owned(&SourceKind {
                    source: name.to_string(),
                    kind,
                })
            }),
        }
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(4096);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// The statuses a source's answers mostly have, each with its counter at hand: hookgate's
/// own (SPEC §4, and 414 and 431 for a head hyper refuses) and the ones apps answer most,
/// 200 first. Any other is counted through the family's map (a lookup and a label). A slot
/// for each of the 500 statuses took 12 KiB per source: 60 MB with 5,000 sources, twice
/// that while a reload builds the next ones.
const COMMON_STATUSES: [u16; 22] = [
    200, 202, 204, 201, 401, 400, 404, 429, 502, 504, 403, 405, 408, 413, 415, 414, 431, 409, 410,
    422, 500, 503,
];

/// One source's metric handles.
pub struct SourceMetrics {
    name: String,
    /// A status of [`COMMON_STATUSES`] → its counter, looked up in the family once.
    statuses: [OnceLock<ShardedCounter>; COMMON_STATUSES.len()],
    requests: Family<SourceStatus, ShardedCounter>,
    pub verification_failures: Counter,
    pub rate_limited_client: Counter,
    pub rate_limited_source: Counter,
    pub upstream_duration: AtomicHistogram,
    pub duplicates: Counter,
    pub dedupe_forgotten_early: Counter,
    upstream_errors: [Counter; UPSTREAM_ERROR_KINDS.len()],
}

impl SourceMetrics {
    /// Handles registered nowhere (only while `Metrics::new` builds the real ones).
    fn placeholder() -> SourceMetrics {
        SourceMetrics {
            name: String::new(),
            statuses: std::array::from_fn(|_| OnceLock::new()),
            requests: Family::default(),
            verification_failures: Counter::default(),
            rate_limited_client: Counter::default(),
            rate_limited_source: Counter::default(),
            upstream_duration: AtomicHistogram::default(),
            duplicates: Counter::default(),
            dedupe_forgotten_early: Counter::default(),
            upstream_errors: Default::default(),
        }
    }

    /// A request answered with `status`, counted in `worker`'s shard.
    pub fn request(&self, worker: usize, status: u16) {
        if !(100..600).contains(&status) {
            return;
        }
        let counter = || {
            self.requests.get_or_create_owned(&SourceStatus {
                source: self.name.clone(),
                status,
            })
        };
        match COMMON_STATUSES.iter().position(|&s| s == status) {
            Some(i) => self.statuses[i].get_or_init(counter).inc(worker),
            None => counter().inc(worker),
        }
    }

    pub fn upstream_error(&self, kind: &str) {
        if let Some(i) = UPSTREAM_ERROR_KINDS.iter().position(|k| *k == kind) {
            self.upstream_errors[i].inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each of the first `SHARDS` workers writes a cache line of its own (the type's
    /// reason: a worker never waits for another's line); later ones wrap around.
    #[test]
    fn workers_write_shards_of_their_own() {
        let c = ShardedCounter::default();
        let lines: std::collections::HashSet<*const AtomicU64> = (0..SHARDS)
            .map(|w| std::ptr::from_ref(c.shard(w)))
            .collect();
        assert_eq!(lines.len(), SHARDS);
        assert!(std::ptr::eq(c.shard(SHARDS + 1), c.shard(1)));
    }

    #[test]
    fn exposition_has_the_spec_families() {
        let m = Metrics::new();
        let s = m.source("p");
        // Counted on different workers' shards, and on one shard by two workers (9 % 8):
        // the exposition sums them.
        s.request(0, 200);
        s.request(1, 200);
        s.request(9, 200);
        s.request(1, 401);
        // Statuses without a slot of their own are counted too, and nothing outside 100..599.
        s.request(0, 418);
        s.request(1, 418);
        s.request(0, 207);
        s.request(0, 99);
        s.request(0, 600);
        s.verification_failures.inc();
        s.upstream_duration.observe(0, Duration::from_millis(3));
        s.upstream_duration.observe(1, Duration::from_millis(300));
        s.upstream_error("status_5xx");
        m.unmatched.request(3, 404);
        m.in_flight.inc(0);
        m.in_flight.inc(1);
        m.in_flight.dec(1);
        let text = m.encode();
        for line in [
            "hookgate_requests_total{source=\"p\",status=\"200\"} 3",
            "hookgate_requests_total{source=\"p\",status=\"401\"} 1",
            "hookgate_requests_total{source=\"p\",status=\"418\"} 2",
            "hookgate_requests_total{source=\"p\",status=\"207\"} 1",
            "hookgate_requests_total{source=\"\",status=\"404\"} 1",
            "hookgate_verification_failures_total{source=\"p\"} 1",
            "hookgate_upstream_duration_seconds_bucket{le=\"0.005\",source=\"p\"} 1",
            "hookgate_upstream_duration_seconds_bucket{le=\"0.5\",source=\"p\"} 2",
            "hookgate_upstream_duration_seconds_count{source=\"p\"} 2",
            "hookgate_upstream_duration_seconds_sum{source=\"p\"} 0.303",
            "hookgate_upstream_errors_total{source=\"p\",kind=\"status_5xx\"} 1",
            "hookgate_in_flight_requests 1",
        ] {
            assert!(text.contains(line), "missing {line}\n{text}");
        }
        assert!(text.contains("hookgate_build_info{version=\""), "{text}");
        assert!(!text.contains("status=\"99\"") && !text.contains("status=\"600\""));
    }
}
