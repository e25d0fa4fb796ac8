//! Forwarding to the application (SPEC §5): keep-alive connections pooled per worker
//! (`pool`), one HTTP/1.1 exchange on one of them (`http1`), header hygiene, `timeout_ms`
//! over the whole exchange, Standard Webhooks signing.
//!
//! Takes a forwardable request (made only from a verified delivery); gives the upstream's
//! status, content-type, retry-after and body, or an [`UpstreamError`] (502 / 504).
//! Nothing of the sender's request is passed on but what §5 lists: hookgate frames
//! what it forwards itself.

pub mod http1;
mod pinned;
mod pool;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use bytes::Bytes;
use hmac::{Hmac, KeyInit, Mac};
use http::StatusCode;
use http::header::{HeaderName, HeaderValue};
use prometheus_client::metrics::counter::Counter;
use rustls_pki_types::CertificateDer;
use sha2::Sha256;
use tokio::sync::Semaphore;

use crate::json::BodyChunks;
use crate::verify::Secret;
use http1::{Connection, ExchangeError, Exchanged};
pub use pool::{Dns, SWEEP, Target, shown_url};
use pool::{Pool, TcpFailure};

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Why forwarding failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("connection failed: {0}")]
    Connect(String),
    // The three timeouts say where `timeout_ms` ran out, for the log line: a connection that
    // is never made (a firewall or a NetworkPolicy dropping it) would otherwise look like a
    // slow app. Unit variants: with a payload, the error grew the request path's code past
    // where the compiler inlines `pipeline::process` (~150 instructions per delivery).
    /// On a connection made: the request going out, or the answer not read whole.
    #[error(
        "no whole answer within timeout_ms: the connection was made, the app's whole answer was not read"
    )]
    Timeout,
    /// Looking the host up, connecting, or the TLS handshake.
    #[error(
        "no whole answer within timeout_ms: connecting to the app (name lookup, TCP or TLS handshake) did not finish"
    )]
    ConnectTimeout,
    /// Waiting for another delivery's exchange to end (`max_connections` in flight).
    #[error(
        "no whole answer within timeout_ms: waiting for a free upstream exchange (max_connections deliveries in flight)"
    )]
    SlotTimeout,
    #[error("invalid HTTP answer: {0}")]
    Invalid(String),
    #[error("answer body over max_body_bytes")]
    BodyTooLarge,
    #[error("answer with a content-encoding other than identity")]
    Encoding,
}

impl UpstreamError {
    /// The metrics/log label.
    pub fn kind(&self) -> &'static str {
        match self {
            UpstreamError::Connect(_) => "connect",
            UpstreamError::Timeout | UpstreamError::ConnectTimeout | UpstreamError::SlotTimeout => {
                "timeout"
            }
            UpstreamError::Invalid(_) => "invalid_response",
            UpstreamError::BodyTooLarge => "body_too_large",
            UpstreamError::Encoding => "content_encoding",
        }
    }
}

/// A future on the heap, its poll out of line.
type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// The upstream's answer, read whole.
#[derive(Debug)]
pub struct UpstreamAnswer {
    pub status: StatusCode,
    pub content_type: Option<HeaderValue>,
    pub retry_after: Option<HeaderValue>,
    /// A redirect's `location`, for the log line only: hookgate follows no redirect, and a
    /// sender is not given one. Boxed: every answer carries the field, and inline it cost
    /// ~200 instructions per delivery in moves (callgrind), boxed ~50.
    pub location: Option<Box<HeaderValue>>,
    pub body: Bytes,
}

/// What to send: built by the pipeline from a verified delivery only.
pub struct Forward<'a> {
    pub target: &'a Target,
    /// When forwarding began (read once per request for the timeout, the metrics and the
    /// pool's idle times).
    pub started: Instant,
    pub timeout: Duration,
    pub headers: ForwardHeaders,
    /// The body, in chunks (one, unless the event shares long texts with the delivery).
    pub body: BodyChunks,
}

/// The headers SPEC §5 adds to a forwarded request. The exchange writes them straight into
/// the request's head, after `host`, `content-type` and `accept-encoding`, and before the
/// signature's and `content-length`: no `HeaderMap` is built for them.
pub struct ForwardHeaders {
    pub source: HeaderValue,
    pub platform: &'static str,
    /// The id as written in headers (percent-encoded); also the signature's `webhook-id`.
    pub event_id: HeaderValue,
    pub event_type: HeaderValue,
    pub request_id: HeaderValue,
    pub forwarded_for: HeaderValue,
    pub forwarded_proto: HeaderValue,
    /// The sender's, passed on.
    pub user_agent: Option<HeaderValue>,
}

impl ForwardHeaders {
    fn each(&self) -> impl Iterator<Item = (&'static str, &[u8])> {
        [
            ("x-hookgate-source", self.source.as_bytes()),
            ("x-hookgate-platform", self.platform.as_bytes()),
            ("x-hookgate-event-id", self.event_id.as_bytes()),
            ("x-hookgate-event-type", self.event_type.as_bytes()),
            ("x-request-id", self.request_id.as_bytes()),
            ("x-forwarded-for", self.forwarded_for.as_bytes()),
            ("x-forwarded-proto", self.forwarded_proto.as_bytes()),
        ]
        .into_iter()
        .chain(
            self.user_agent
                .as_ref()
                .map(|ua| ("user-agent", ua.as_bytes())),
        )
    }
}

/// A worker's upstream client: its connections, with the signing key.
pub struct Upstream {
    /// Kept by a reload that leaves `[upstream] ca` as it was (`clients`).
    pool: Arc<Pool>,
    /// The certificates of `[upstream] ca` (none without it): what the pool's TLS trusts
    /// beyond the public roots.
    ca_certs: Vec<CertificateDer<'static>>,
    signing: Option<Hmac<Sha256>>,
    max_body_bytes: u64,
    /// The worker's share of `max_connections` exchanges in flight (see [`exchange_slots`]).
    slots: Arc<Semaphore>,
    counters: UpstreamCounters,
    /// `[upstream] connect_retry_ms`.
    connect_retry: Duration,
}

/// What the upstream clients count, for the metrics.
#[derive(Clone, Default)]
pub struct UpstreamCounters {
    /// Deliveries that waited for a slot.
    pub waits: Counter,
    /// New connections opened: near the delivery rate, the app closes its connections.
    pub connections: Counter,
    /// Connections tried again after the app refused them (`Upstream::connect`).
    pub connect_retries: Counter,
}

/// The first pause before a refused connection is tried again; each next one is twice as
/// long, up to the longest (`Upstream::connect`).
const FIRST_CONNECT_PAUSE: Duration = Duration::from_millis(50);
const LONGEST_CONNECT_PAUSE: Duration = Duration::from_secs(1);

/// Each worker's share of the exchanges in flight: `max_connections` in all, at least one
/// each. Each exchange holds an upstream connection, a descriptor like a client's; over
/// HTTP/2 one client connection carries up to 256 deliveries at once, so without a bound
/// the exchanges in flight could outgrow the open-files limit (and the app's patience)
/// however `max_connections` was set. Past it a delivery waits, its `timeout_ms` running.
fn exchange_slots(max_connections: usize, workers: usize) -> Vec<Arc<Semaphore>> {
    let workers = workers.max(1);
    let share = max_connections
        .div_ceil(workers)
        .clamp(1, Semaphore::MAX_PERMITS);
    (0..workers)
        .map(|_| Arc::new(Semaphore::new(share)))
        .collect()
}

/// An error building the client (an unreadable `[upstream] ca`).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ClientSetupError(pub String);

/// The certificates of `[upstream] ca`, if set.
fn ca_certs(ca: Option<&Path>) -> Result<Vec<CertificateDer<'static>>, ClientSetupError> {
    let Some(path) = ca else {
        return Ok(Vec::new());
    };
    crate::tls::pem_certs(path).map_err(|e| ClientSetupError(format!("{}: {e}", path.display())))
}

/// Root certificates: the public web roots, plus the operator's private CA if any (which
/// may also be the app's own self-signed certificate: `pinned`).
fn tls_config(
    ca: Option<&Path>,
    ca_certs: &[CertificateDer<'static>],
) -> Result<rustls::ClientConfig, ClientSetupError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let pinned = ca_certs.to_vec();
    for c in ca_certs {
        roots.add(c.clone()).map_err(|e| {
            let path = ca.map(|p| p.display().to_string()).unwrap_or_default();
            ClientSetupError(format!("{path}: {e}"))
        })?;
    }
    let provider = crate::tls::provider();
    let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::clone(&provider),
    )
    .build()
    .map_err(|e| ClientSetupError(e.to_string()))?;
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientSetupError(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(pinned::PinnedOrWebPki { webpki, pinned }))
        .with_no_client_auth();
    // The forwarded request is one small HTTP/1.1 exchange on a kept-alive connection.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// What every worker's [`Upstream`] is made of.
pub struct UpstreamSetup<'a> {
    pub ca: Option<&'a Path>,
    pub signing_key: Option<&'a Secret>,
    pub max_body_bytes: u64,
    /// `[server] max_connections`, shared out as the workers' exchange slots.
    pub max_connections: usize,
    pub counters: &'a UpstreamCounters,
    pub dns: &'a Arc<Dns>,
    pub connect_retry: Duration,
}

/// Every worker's client for a config (`workers` of them). A reload's (`previous`, the
/// clients it replaces) keep their exchange slots, which deliveries in flight hold (and
/// `max_connections` changes at the next start), and their idle connections when `ca`
/// trusts what it trusted: a reload then opens no new connection to the app, which would
/// otherwise see every kept-alive connection closed and opened again (and, over TLS, a
/// handshake each) at every SIGHUP or changed file. Connections are keyed by scheme, host
/// and port, so one to an upstream the new config no longer names is never taken, and the
/// sweep closes it once idle too long. The CA file is read, and new pools' TLS config made,
/// once for all workers.
pub fn clients(
    setup: &UpstreamSetup<'_>,
    workers: usize,
    previous: Option<&[Upstream]>,
) -> Result<Vec<Upstream>, ClientSetupError> {
    let workers = workers.max(1);
    let previous = previous.filter(|p| p.len() == workers);
    let ca_certs = ca_certs(setup.ca)?;
    let slots = match previous {
        Some(p) => p.iter().map(|u| Arc::clone(&u.slots)).collect(),
        None => exchange_slots(setup.max_connections, workers),
    };
    let same_trust = previous.filter(|p| p.iter().all(|u| u.ca_certs == ca_certs));
    let pools: Vec<Arc<Pool>> = match same_trust {
        Some(p) => p.iter().map(|u| Arc::clone(&u.pool)).collect(),
        None => {
            let tls = Arc::new(tls_config(setup.ca, &ca_certs)?);
            (0..workers)
                .map(|_| Arc::new(Pool::new(Arc::clone(&tls), Arc::clone(setup.dns))))
                .collect()
        }
    };
    let signing = setup.signing_key.map(|k| {
        <Hmac<Sha256> as KeyInit>::new_from_slice(k.expose()).expect("HMAC takes any key")
    });
    Ok(slots
        .into_iter()
        .zip(pools)
        .map(|(slots, pool)| Upstream {
            pool,
            ca_certs: ca_certs.clone(),
            signing: signing.clone(),
            max_body_bytes: setup.max_body_bytes,
            slots,
            counters: setup.counters.clone(),
            connect_retry: setup.connect_retry,
        })
        .collect())
}

impl Upstream {
    /// Closes idle connections that expired or that the upstream closed (`Pool::sweep`).
    pub fn sweep(&self) {
        self.pool.sweep(Instant::now());
    }

    /// The worker's share of the exchanges in flight.
    pub fn slots(&self) -> &Arc<Semaphore> {
        &self.slots
    }

    #[cfg(test)]
    pub(crate) fn dns(&self) -> &Arc<Dns> {
        self.pool.dns()
    }

    /// Sends one request and reads the whole answer within `timeout`.
    pub async fn send(&self, fwd: Forward<'_>) -> Result<UpstreamAnswer, UpstreamError> {
        let deadline = tokio::time::Instant::from_std(fwd.started + fwd.timeout);
        // The waits for a slot and for a new connection have timers of their own at the same
        // deadline, polled before this one, so that a timeout says which wait it cut (the
        // common exchange, on a kept connection with a free slot, sets no other timer).
        match tokio::time::timeout_at(deadline, self.exchange(fwd, deadline)).await {
            Ok(result) => result,
            Err(_) => Err(UpstreamError::Timeout),
        }
    }

    /// A new connection to `target`. A TCP connection that no address took is tried again
    /// for `connect_retry`, pausing 50 ms, then twice as long each time up to a second: an
    /// app that restarts in place refuses connections for a moment, and a sender such as
    /// Spika never delivers again. Nothing was sent, so nothing can arrive twice. A pause
    /// that would end past the delivery's deadline is not taken: the answer is then the
    /// refusal's 502, not a 504.
    async fn connect(
        &self,
        target: &Target,
        deadline: Instant,
    ) -> Result<Connection, UpstreamError> {
        let retry_until = Instant::now() + self.connect_retry;
        let mut pause = FIRST_CONNECT_PAUSE;
        let tcp = loop {
            match self.pool.tcp(target, deadline).await {
                Ok(tcp) => break tcp,
                Err(TcpFailure::Refused(e)) => {
                    let at = Instant::now() + pause;
                    if at > retry_until || at >= deadline {
                        return Err(e);
                    }
                    self.counters.connect_retries.inc();
                    tokio::time::sleep_until(at.into()).await;
                    pause = (pause * 2).min(LONGEST_CONNECT_PAUSE);
                }
                Err(other) => return Err(other.into()),
            }
        };
        self.pool.open(target, tcp).await
    }

    /// A slot, once another delivery's exchange ends (`max_connections` in flight). Out of
    /// line and boxed, as `new_connection`: the common exchange does not wait here.
    #[cold]
    #[inline(never)]
    fn wait_for_slot(
        &self,
        deadline: tokio::time::Instant,
    ) -> BoxFuture<'_, Result<tokio::sync::SemaphorePermit<'_>, UpstreamError>> {
        self.counters.waits.inc();
        Box::pin(async move {
            // Never closed: the semaphore lives as long as the gateways that share it.
            let acquired = tokio::time::timeout_at(deadline, self.slots.acquire()).await;
            acquired
                .ok()
                .and_then(Result::ok)
                .ok_or(UpstreamError::SlotTimeout)
        })
    }

    /// A new connection (`connect`), by `deadline`. Out of line and boxed: connecting (TCP,
    /// then TLS) holds ~2 KiB of state, and its code a timer, that a request on a reused
    /// connection would otherwise carry too.
    #[cold]
    #[inline(never)]
    fn new_connection<'a>(
        &'a self,
        target: &'a Target,
        deadline: tokio::time::Instant,
    ) -> BoxFuture<'a, Result<Connection, UpstreamError>> {
        Box::pin(async move {
            tokio::time::timeout_at(deadline, self.connect(target, deadline.into_std()))
                .await
                .map_err(|_| UpstreamError::ConnectTimeout)?
        })
    }

    /// `deadline`: `send`'s, for the waits that say where they were cut.
    async fn exchange(
        &self,
        fwd: Forward<'_>,
        deadline: tokio::time::Instant,
    ) -> Result<UpstreamAnswer, UpstreamError> {
        // Within `timeout_ms` (`send`): a delivery that waits too long for a slot gets 504.
        let _slot = match self.slots.try_acquire() {
            Ok(slot) => slot,
            Err(_) => self.wait_for_slot(deadline).await?,
        };
        let signature = self
            .signing
            .as_ref()
            .map(|mac| sign(mac, fwd.headers.event_id.as_bytes(), &fwd.body));
        let target = fwd.target;
        let head = request_head(target, &fwd.headers, signature.as_ref(), &fwd.body);
        let limit = usize::try_from(self.max_body_bytes).unwrap_or(usize::MAX);
        loop {
            let (mut connection, reused) = match self.pool.checkout(target, fwd.started) {
                Some(connection) => (connection, true),
                None => {
                    let connection = self.new_connection(target, deadline).await?;
                    self.counters.connections.inc();
                    (connection, false)
                }
            };
            match connection.exchange(&head, &fwd.body, limit).await {
                Ok(Exchanged { answer, reusable }) => {
                    if reusable {
                        self.pool.checkin(target, connection, fwd.started);
                    }
                    return Ok(answer);
                }
                // A kept-alive connection the upstream closed as the request went out: again,
                // on another one (each try takes a connection out of the pool, and a new
                // connection is tried once).
                Err(e) if reused && e.nothing_answered() => {}
                Err(ExchangeError::Write(e)) => {
                    return Err(UpstreamError::Connect(error_chain(&e)));
                }
                Err(ExchangeError::TooLarge) => return Err(UpstreamError::BodyTooLarge),
                Err(ExchangeError::Encoding) => return Err(UpstreamError::Encoding),
                Err(e) => return Err(UpstreamError::Invalid(e.to_string())),
            }
        }
    }
}

/// The forwarded request's head: the target's request line and fixed headers, the
/// delivery's own headers, the signature, and the body's length.
fn request_head(
    target: &Target,
    headers: &ForwardHeaders,
    signature: Option<&Signature>,
    body: &[Bytes],
) -> Vec<u8> {
    let prefix = target.head_prefix();
    let mut head = Vec::with_capacity(prefix.len() + 512);
    head.extend_from_slice(prefix);
    let mut field = |name: &str, value: &[u8]| {
        head.extend_from_slice(name.as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value);
        head.extend_from_slice(b"\r\n");
    };
    for (name, value) in headers.each() {
        field(name, value);
    }
    if let Some(s) = signature {
        field("webhook-id", headers.event_id.as_bytes());
        field("webhook-timestamp", s.timestamp.as_bytes());
        field("webhook-signature", s.value.as_bytes());
    }
    let length: usize = body.iter().map(Bytes::len).sum();
    field(
        "content-length",
        itoa::Buffer::new().format(length).as_bytes(),
    );
    head.extend_from_slice(b"\r\n");
    head
}

/// An error with its causes, for the log (hyper's top-level messages say little).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// A Standard Webhooks signature: `webhook-timestamp` and `webhook-signature`.
struct Signature {
    timestamp: String,
    /// `v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>`
    value: String,
}

/// Signs a forwarded request now; `id` is the event id as `x-hookgate-event-id` carries it.
fn sign(mac: &Hmac<Sha256>, id: &[u8], body: &[Bytes]) -> Signature {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    sign_at(mac, id, body, now)
}

fn sign_at(mac: &Hmac<Sha256>, id: &[u8], body: &[Bytes], ts: u64) -> Signature {
    let timestamp = ts.to_string();
    let mut mac = mac.clone();
    mac.update(id);
    mac.update(b".");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    for part in body {
        mac.update(part);
    }
    let mut value = String::from("v1,");
    base64::engine::general_purpose::STANDARD
        .encode_string(mac.finalize().into_bytes(), &mut value);
    Signature { timestamp, value }
}

/// An id as a header value: every byte outside `!`…`~`, and `%` itself, as `%XX`.
pub fn encode_id(id: &str) -> HeaderValue {
    // Most ids need no encoding: no intermediate String for them.
    if id.bytes().all(|b| b.is_ascii_graphic() && b != b'%')
        && let Ok(v) = HeaderValue::from_str(id)
    {
        return v;
    }
    const SET: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS.add(b' ').add(b'%');
    let encoded = percent_encoding::utf8_percent_encode(id, SET).to_string();
    // Only visible ASCII is left, which is always a valid header value.
    HeaderValue::from_str(&encoded).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forward_headers() -> ForwardHeaders {
        ForwardHeaders {
            source: HeaderValue::from_static("chat"),
            platform: "funtek",
            event_id: HeaderValue::from_static("a%20b"),
            event_type: HeaderValue::from_static("message.created"),
            request_id: HeaderValue::from_static("r1"),
            forwarded_for: HeaderValue::from_static("203.0.113.9"),
            forwarded_proto: HeaderValue::from_static("https"),
            user_agent: Some(HeaderValue::from_static("bot/1")),
        }
    }

    /// A delivery whose `timeout_ms` runs out while every exchange slot is taken says so,
    /// and is counted as a wait; the app is never reached.
    #[tokio::test]
    async fn a_timeout_waiting_for_a_slot_is_a_slot_timeout() {
        let counters = UpstreamCounters::default();
        let dns = Arc::default();
        let setup = UpstreamSetup {
            ca: None,
            signing_key: None,
            max_body_bytes: 1024,
            max_connections: 1,
            counters: &counters,
            dns: &dns,
            connect_retry: Duration::ZERO,
        };
        let upstream = clients(&setup, 1, None).expect("client").remove(0);
        let _taken = upstream.slots().try_acquire().expect("the one slot");
        // Nothing listens at port 9 of TEST-NET-1; the delivery never gets that far.
        let target = Target::from_uri("http://192.0.2.1:9/".parse().expect("uri")).expect("t");
        let sent = upstream
            .send(Forward {
                target: &target,
                started: Instant::now(),
                timeout: Duration::from_millis(100),
                headers: forward_headers(),
                body: [Bytes::from_static(b"{}")].into_iter().collect(),
            })
            .await;
        assert!(matches!(sent, Err(UpstreamError::SlotTimeout)), "{sent:?}");
        assert_eq!(counters.waits.get(), 1);
        assert_eq!(counters.connections.get(), 0);
    }

    #[test]
    fn ids_in_headers_are_percent_encoded() {
        assert_eq!(encode_id("abc-123_~!"), "abc-123_~!");
        assert_eq!(encode_id("a b%c"), "a%20b%25c");
        // An id of `%` alone is encoded too: read back, it must not be taken for an escape.
        assert_eq!(encode_id("%"), "%25");
        assert_eq!(encode_id("%%"), "%25%25");
        assert_eq!(encode_id("é\u{7f}\n"), "%C3%A9%7F%0A");
    }

    /// A write that failed is logged with what caused it (hyper's and rustls' top-level
    /// messages say little): each cause after a colon.
    #[test]
    fn an_error_is_logged_with_its_causes() {
        #[derive(Debug, thiserror::Error)]
        #[error("writing the request")]
        struct Outer(#[source] std::io::Error);
        let reset = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset by the app");
        assert_eq!(
            error_chain(&Outer(reset)),
            "writing the request: reset by the app"
        );
    }

    #[test]
    fn standard_webhooks_signature_matches_the_reference() {
        // The Standard Webhooks spec's own example, its body in two chunks.
        let key = base64::engine::general_purpose::STANDARD
            .decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
            .expect("b64");
        let mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&key).expect("key");
        let body = [
            Bytes::from_static(b"{\"test\": "),
            Bytes::from_static(b"2432232314}"),
        ];
        let signature = sign_at(&mac, b"msg_p5jXN8AQM9LWM0D4loKWxJek", &body, 1614265330);
        assert_eq!(signature.timestamp, "1614265330");
        assert_eq!(
            signature.value,
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn the_head_carries_every_header_once_and_the_exact_length() {
        let target = Target::from_uri("http://app:3000/in?x=1".parse().expect("uri")).expect("t");
        let headers = forward_headers();
        let body = [Bytes::from_static(b"{\"a\":"), Bytes::from_static(b"1}")];
        let signature = Signature {
            timestamp: "7".into(),
            value: "v1,xyz".into(),
        };
        let head = request_head(&target, &headers, Some(&signature), &body);
        assert_eq!(
            String::from_utf8(head).expect("ascii"),
            "POST /in?x=1 HTTP/1.1\r\nhost: app:3000\r\ncontent-type: application/json\r\n\
             accept-encoding: identity\r\nx-hookgate-source: chat\r\nx-hookgate-platform: funtek\r\n\
             x-hookgate-event-id: a%20b\r\nx-hookgate-event-type: message.created\r\n\
             x-request-id: r1\r\nx-forwarded-for: 203.0.113.9\r\nx-forwarded-proto: https\r\n\
             user-agent: bot/1\r\nwebhook-id: a%20b\r\nwebhook-timestamp: 7\r\n\
             webhook-signature: v1,xyz\r\ncontent-length: 7\r\n\r\n"
        );
    }
}
