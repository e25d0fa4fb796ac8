//! One request's way through hookgate, in the order of SPEC §4's table:
//! health → route (404) → method (405) → allow_cidrs (403) → client rate limit (429) →
//! body limit (413) → content-encoding (415) → proof (401) → platform JSON (400) →
//! source rate limit (429) → dedupe → forward (502/504) → answer (§6).
//!
//! A request that fails a check is not counted by the later ones. Every answer carries
//! `x-request-id`; every refusal is a short JSON code, its reason in the log only.

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::Full;
use hyper::body::{Body as _, Incoming};
use tokio::sync::oneshot::error::TryRecvError;

use crate::admit;
use crate::body;
use crate::config::{self, Config, ForwardMode, Source};
use crate::dedupe::{Dedupe, IdKey};
use crate::error::{Refusal, error_body};
use crate::event::Event;
use crate::json::{BodyChunks, Object, SharingOut};
use crate::limit::{ClientLimiter, LimitClock, SourceLimiter};
use crate::metrics::{Metrics, SourceMetrics};
use crate::platforms::{Delivery, Platform};
use crate::reply::{self, Answer};
use crate::time::Millis;
use crate::upstream::{self, Forward, ForwardHeaders, Upstream, UpstreamSetup, shown_url};
use crate::verify::{Carriers, Verified};

/// What outlives a config: the limiters' clock, the metrics and the upstream names' addresses.
#[derive(Clone)]
pub struct Context {
    pub clock: LimitClock,
    pub metrics: Arc<Metrics>,
    /// How many worker threads serve connections (each with its own upstream client).
    pub workers: usize,
    /// The upstream host names' addresses, for every worker and every reload.
    pub dns: Arc<upstream::Dns>,
}

impl Default for Context {
    fn default() -> Self {
        Context {
            clock: LimitClock::default(),
            metrics: Arc::default(),
            workers: default_workers(),
            dns: Arc::default(),
        }
    }
}

impl Context {
    /// How many worker threads serve connections: `workers`, and at least one.
    pub fn worker_count(&self) -> usize {
        self.workers.max(1)
    }
}

/// One worker per core (`HOOKGATE_WORKERS` overrides it; `main` has refused a bad one).
fn default_workers() -> usize {
    workers_from_env()
        .ok()
        .flatten()
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// The most worker threads `HOOKGATE_WORKERS` may ask for.
const MAX_WORKERS: usize = 1024;

/// `HOOKGATE_WORKERS`, if set: a whole number from 1 to 1024. A bad value is an error at
/// start, not silently one worker per core (`two` or `0` would otherwise run as if unset,
/// and `100000` start as many threads).
pub fn workers_from_env() -> Result<Option<usize>, String> {
    let Some(value) = std::env::var_os("HOOKGATE_WORKERS") else {
        return Ok(None);
    };
    value
        .to_str()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|w| (1..=MAX_WORKERS).contains(w))
        .map(Some)
        .ok_or_else(|| {
            format!(
                "HOOKGATE_WORKERS: must be a whole number from 1 to {MAX_WORKERS}, not {value:?}"
            )
        })
}

/// Everything one config makes: swapped whole on reload, so a request in flight finishes
/// on the config it started with.
pub struct Gateway {
    pub config: Config,
    routes: HashMap<String, Route>,
    /// One pooled client per worker thread: a connection is only ever used on the thread
    /// whose runtime drives it.
    upstreams: Vec<Upstream>,
    /// Each worker's share of `max_buffered_bytes`, indexed like `upstreams`.
    budgets: Arc<[body::Budget]>,
    client_limiter: Option<Arc<ClientLimiter>>,
}

/// A source with its limiter and dedupe state.
struct Route {
    source: Arc<Source>,
    limiter: Option<Arc<SourceLimiter>>,
    dedupe: Option<Arc<Dedupe>>,
    metrics: SourceMetrics,
}

impl Gateway {
    /// Builds the gateway for `config`. State of `previous` (a reload) is kept where the
    /// SPEC says: dedupe for a source whose name stays; a rate limit's bucket for a source
    /// whose name and `rate_limit` stay, and `client_rate_limit`'s when it is unchanged.
    pub fn new(
        config: Config,
        context: &Context,
        previous: Option<&Gateway>,
    ) -> Result<Gateway, upstream::ClientSetupError> {
        let clock = &context.clock;
        let workers = context.worker_count();
        let setup = UpstreamSetup {
            ca: config.upstream.ca.as_deref(),
            signing_key: config.upstream.signing_key.as_ref(),
            max_body_bytes: config.server.max_body_bytes,
            max_connections: config.server.max_connections,
            counters: &context.metrics.upstream,
            dns: &context.dns,
            connect_retry: config.upstream.connect_retry,
        };
        let upstreams = upstream::clients(&setup, workers, previous.map(|p| &p.upstreams[..]))?;
        let old_route =
            |name: &str| previous.and_then(|p| p.routes.values().find(|r| r.source.name == name));
        let routes = config
            .sources
            .iter()
            .map(|s| {
                let old = old_route(&s.name);
                let limiter = s.rate_limit.map(|rate| {
                    old.and_then(|o| o.limiter.clone())
                        .filter(|l| l.rate == rate)
                        .unwrap_or_else(|| Arc::new(SourceLimiter::new(rate, clock.clone())))
                });
                // The ids already forwarded stay remembered across a reload, whatever
                // the new window.
                let dedupe = (!s.dedupe_window.is_zero()).then(|| {
                    match old.and_then(|o| o.dedupe.clone()) {
                        Some(d) => {
                            d.set_window(s.dedupe_window);
                            d.set_capacity(s.dedupe_capacity);
                            d
                        }
                        None => Arc::new(Dedupe::with_capacity(
                            s.dedupe_window,
                            clock.clone(),
                            s.dedupe_capacity,
                        )),
                    }
                });
                let route = Route {
                    source: Arc::clone(s),
                    limiter,
                    dedupe,
                    metrics: context.metrics.source(&s.name),
                };
                (s.path.clone(), route)
            })
            .collect();
        // A worker's share holds at least one largest body, or that body could never be read.
        let share = usize::try_from(
            (config.server.max_buffered_bytes / workers as u64).max(config.server.max_body_bytes),
        )
        .unwrap_or(usize::MAX);
        // Kept across a reload that leaves them as they are: requests in flight hold them.
        let budgets = previous
            .map(|p| Arc::clone(&p.budgets))
            .filter(|b| b.len() == workers && b[0].size() == share)
            .unwrap_or_else(|| {
                (0..workers)
                    .map(|_| body::Budget::new(share, context.metrics.body_budget_waits.clone()))
                    .collect()
            });
        let client_limiter = config.server.client_rate_limit.map(|rate| {
            previous
                .and_then(|p| p.client_limiter.clone())
                .filter(|l| l.rate == rate)
                .unwrap_or_else(|| {
                    Arc::new(ClientLimiter::new(
                        rate,
                        clock.clone(),
                        context.metrics.client_table_evictions.clone(),
                    ))
                })
        });
        Ok(Gateway {
            config,
            routes,
            upstreams,
            budgets,
            client_limiter,
        })
    }

    /// A source whose path differs from `path` only by a trailing `/` or by ASCII letter
    /// case, for a 404's log line. Looked through whole: only 404s that are logged ask.
    fn near_route(&self, path: &str) -> Option<&Source> {
        fn unslashed(p: &str) -> &str {
            p.strip_suffix('/').unwrap_or(p)
        }
        let asked = unslashed(path);
        self.routes
            .values()
            .map(|r| r.source.as_ref())
            .find(|s| unslashed(&s.path).eq_ignore_ascii_case(asked))
    }

    /// Frees memory of state that no longer matters (run on a timer).
    pub fn housekeeping(&self) {
        if let Some(l) = &self.client_limiter {
            l.housekeeping();
        }
        for d in self.routes.values().filter_map(|r| r.dedupe.as_ref()) {
            d.housekeeping();
        }
    }

    /// Closes `worker`'s idle upstream connections that expired or that the upstream closed
    /// (on that worker's thread, whose runtime drives them).
    pub fn sweep_idle(&self, worker: usize) {
        self.upstream(worker).sweep();
    }

    /// `worker`'s own upstream client (only that worker's runtime drives its connections).
    fn upstream(&self, worker: usize) -> &Upstream {
        &self.upstreams[worker % self.upstreams.len()]
    }

    /// `worker`'s own share of `max_buffered_bytes`.
    fn budget(&self, worker: usize) -> &body::Budget {
        &self.budgets[worker % self.budgets.len()]
    }

    /// How many client addresses the client limiter remembers (for tests and metrics).
    pub fn client_table_len(&self) -> usize {
        self.client_limiter.as_ref().map_or(0, |l| l.len())
    }
}

/// The connection a request came on.
#[derive(Debug, Clone, Copy)]
pub struct Conn {
    /// The client: the socket's peer, or the one a balancer's PROXY header named.
    pub peer: SocketAddr,
    /// The client's connection was TLS: to hookgate, or to a balancer that said so in its
    /// PROXY header (the scheme in `x-forwarded-proto`).
    pub tls: bool,
    /// The worker thread serving it.
    pub worker: usize,
}

/// Process-wide state the request path reads.
pub struct Health {
    /// False from SIGTERM/SIGINT on: `/readyz` answers 503.
    pub ready: std::sync::atomic::AtomicBool,
}

pub type Body = Full<Bytes>;

/// Resolves when the request's sender is gone (HTTP/2: its stream reset or its connection
/// closed, `server::connection::Detachable`). A delivery whose body is still being read then
/// ends; one read whole goes on to the end. `None` where a request in flight is never
/// cancelled (HTTP/1.1).
pub type SenderGone = tokio::sync::oneshot::Receiver<()>;

static JSON: HeaderValue = HeaderValue::from_static("application/json");
static X_HOOKGATE_DUPLICATE: header::HeaderName =
    header::HeaderName::from_static("x-hookgate-duplicate");

/// What a request turned into, for the log line.
#[derive(Default)]
struct Outcome<'g> {
    route: Option<&'g Route>,
    client: Option<std::net::IpAddr>,
    /// Whether the log line will be written: the id and type are copied for it only then.
    logged: bool,
    event_id: Option<HeaderValue>,
    event_type: Option<HeaderValue>,
    /// A refused request's body that will not be read: the connection closes after the
    /// answer (`body::discard`).
    body_unread: bool,
    /// Answered as a duplicate (dedupe), not forwarded: the log line says so.
    duplicate: bool,
    /// The app answered with a redirect, to here: the log line says so.
    redirected_to: Option<Box<HeaderValue>>,
    /// A 404's source whose path differs only by a trailing `/` or letter case (logged only).
    near_route: Option<&'g Source>,
}

impl Outcome<'_> {
    fn source(&self) -> Option<&Source> {
        self.route.map(|r| r.source.as_ref())
    }
}

/// Handles one request.
pub async fn handle(
    gateway: &Gateway,
    health: &Health,
    metrics: &Metrics,
    conn: Conn,
    request: Request<Incoming>,
    gone: Option<SenderGone>,
) -> Response<Body> {
    let started = Instant::now();
    let request_id = request_id_or_new(request.headers().get(&upstream::X_REQUEST_ID));
    let version = request.version();
    // Only refused (405 on a source path, 404 elsewhere), but with no body, as any HEAD.
    let head = request.method() == Method::HEAD;

    let path = request.uri().path();
    if path == "/healthz" || path == "/readyz" {
        let mut response = health_answer(path, request.method(), health);
        response
            .headers_mut()
            .insert(upstream::X_REQUEST_ID.clone(), request_id);
        return response;
    }

    let worker = conn.worker;
    let in_flight = metrics.in_flight.hold(worker);
    // What the log line needs of the request, only when it will be written.
    let logged = tracing::enabled!(target: "hookgate::request", tracing::Level::INFO)
        .then(|| (request.method().clone(), path.to_string()));
    let mut outcome = Outcome {
        logged: logged.is_some(),
        ..Outcome::default()
    };
    let result = deliver(
        gateway,
        conn,
        request,
        started,
        &request_id,
        gone,
        &mut outcome,
    )
    .await;
    let barertc = outcome
        .source()
        .is_some_and(|s| s.platform == Platform::Barertc);

    // The answer takes the upstream's body; a refusal is kept for the metrics and the log.
    let (mut response, refusal) = match result {
        Ok(Delivered::Answered(answer)) => {
            let mut r = Response::new(Full::new(answer.body));
            *r.status_mut() = answer.status;
            if let Some(ct) = answer.content_type {
                r.headers_mut().insert(header::CONTENT_TYPE, ct);
            }
            if let Some(ra) = answer.retry_after {
                r.headers_mut().insert(header::RETRY_AFTER, ra);
            }
            (r, None)
        }
        Ok(Delivered::Duplicate) => {
            outcome.duplicate = true;
            let mut r = Response::new(Full::new(Bytes::from_static(b"{}")));
            r.headers_mut().insert(header::CONTENT_TYPE, JSON.clone());
            r.headers_mut().insert(
                X_HOOKGATE_DUPLICATE.clone(),
                HeaderValue::from_static("true"),
            );
            (r, None)
        }
        Err(refusal) => {
            let closes = refusal.closes_connection() || outcome.body_unread;
            let r = refusal_response(&refusal, barertc, version, closes);
            (r, Some(refusal))
        }
    };
    response
        .headers_mut()
        .insert(upstream::X_REQUEST_ID.clone(), request_id.clone());
    if head {
        leave_out_body(&mut response);
    }

    let status = response.status().as_u16();
    drop(in_flight);
    let source_metrics = outcome.route.map_or(&metrics.unmatched, |r| &r.metrics);
    source_metrics.request(worker, status);
    match &refusal {
        Some(Refusal::Unverified(_)) => {
            source_metrics.verification_failures.inc();
        }
        Some(Refusal::ClientRateLimited { .. }) => {
            source_metrics.rate_limited_client.inc();
        }
        Some(Refusal::SourceRateLimited { .. }) => {
            source_metrics.rate_limited_source.inc();
        }
        Some(Refusal::Upstream(e)) => source_metrics.upstream_error(e.kind()),
        _ => {}
    }
    if let Some(request_line) = logged {
        log_request(
            &outcome,
            refusal.as_ref(),
            conn,
            &request_id,
            status,
            started,
            &request_line,
        );
    }
    response
}

/// Remembers a forwarded id; ids that a full table forgot before their window ended are
/// counted, and warned about at most once a minute, since a retry of one would be forwarded
/// again.
fn remember(route: &Route, dedupe: &Dedupe, key: IdKey) {
    let remembered = dedupe.remember(key);
    if remembered.forgotten_early == 0 {
        return;
    }
    route
        .metrics
        .dedupe_forgotten_early
        .inc_by(remembered.forgotten_early);
    if remembered.warn {
        tracing::warn!(
            source = route.source.name.as_str(),
            dedupe_capacity = dedupe.capacity(),
            dedupe_window_s = dedupe.window().as_secs(),
            "dedupe forgets ids before their window ends: more ids are forwarded within \
             dedupe_window_s than dedupe_capacity holds, so a retry of a forgotten one is \
             forwarded again; raise dedupe_capacity or shorten dedupe_window_s (logged once a \
             minute; hookgate_dedupe_forgotten_early_total counts them all)"
        );
    }
}

/// The one log line per request.
fn log_request(
    outcome: &Outcome<'_>,
    refusal: Option<&Refusal>,
    conn: Conn,
    request_id: &HeaderValue,
    status: u16,
    started: Instant,
    (method, path): &(Method, String),
) {
    // A duplicate is answered 200 like a forwarded delivery; its reason tells the operator
    // looking for an event the app never saw that hookgate held it back on purpose.
    let (reason, detail) = match refusal {
        Some(r) => {
            let detail = match refusal_hint(r, outcome) {
                Some(hint) => format!("{r}; {hint}"),
                None => r.to_string(),
            };
            (r.reason(), Cow::Owned(detail))
        }
        None if outcome.duplicate => ("duplicate", Cow::Borrowed(DUPLICATE_DETAIL)),
        // An app that redirects (`/webhooks` to `/webhooks/`, http to https) never sees a
        // delivery; its status alone would not say why.
        None if (300..400).contains(&status) => (
            "upstream_redirect",
            Cow::Owned(redirect_detail(outcome.redirected_to.as_deref())),
        ),
        // The app's own refusal or failure, relayed: its line would otherwise read like a
        // delivery, and an app's 404 like hookgate's own.
        None if status >= 400 => (
            "upstream_status",
            Cow::Owned(app_status_detail(status, outcome)),
        ),
        None => ("", Cow::Borrowed("")),
    };
    // The sender's own text is logged as a string (quoted in text lines), so that it cannot
    // pass itself off as more fields, and a request id that is not UTF-8 is still logged.
    let request_id = String::from_utf8_lossy(request_id.as_bytes());
    RequestLine {
        source: outcome.source().map_or("", |s| s.name.as_str()),
        platform: outcome.source().map_or("", |s| s.platform.as_str()),
        status,
        duration_ms: started.elapsed().as_micros() as f64 / 1000.0,
        event_id: outcome
            .event_id
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .unwrap_or(""),
        event_type: outcome
            .event_type
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .unwrap_or(""),
        request_id: &clipped(&request_id),
        client: outcome.client.unwrap_or_else(|| conn.peer.ip()),
        method: &clipped(method.as_str()),
        path: &clipped(path),
        reason,
        detail: &detail,
    }
    .write();
}

/// A request line's fields (README "Logs"), in the order text lines write them: the one
/// place they are written, for requests the pipeline handled and heads hyper refused.
struct RequestLine<'a> {
    source: &'a str,
    platform: &'a str,
    status: u16,
    duration_ms: f64,
    event_id: &'a str,
    event_type: &'a str,
    request_id: &'a str,
    client: std::net::IpAddr,
    method: &'a str,
    path: &'a str,
    reason: &'a str,
    detail: &'a str,
}

impl RequestLine<'_> {
    // Inlined into `log_request`, as the macro was: called apart, it cost ~60 instructions
    // a request more at `RUST_LOG=info` (callgrind).
    #[inline(always)]
    fn write(&self) {
        tracing::info!(
            target: "hookgate::request",
            source = self.source,
            platform = self.platform,
            status = self.status,
            duration_ms = self.duration_ms,
            event_id = self.event_id,
            event_type = self.event_type,
            request_id = self.request_id,
            client = %self.client,
            method = %self.method,
            path = self.path,
            reason = self.reason,
            detail = self.detail,
            "request"
        );
    }
}

/// A request hyper answered itself and never handed over (HTTP/1.1: a head it could not
/// parse, or one over 64 KiB): counted and logged as a refusal under no source, like a
/// path of no source, so that a sender whose requests are malformed (a broken client, a
/// proxy that mangles heads) shows in the log and the metrics, not only in its own 400s.
/// Its method, path and request id were never read; its duration is 0. `misdirected`: what
/// the bytes were instead, when they said (a TLS handshake, a PROXY header).
pub fn unparsed_request(
    metrics: &Metrics,
    conn: Conn,
    status: u16,
    error: &hyper::Error,
    misdirected: Option<&str>,
) {
    let detail = match misdirected {
        Some(what) => format!("{what}; answered {status} by hyper"),
        None => format!(
            "the request head does not parse as HTTP/1.1 ({error}); answered {status} by hyper"
        ),
    };
    refused_before_parsing(metrics, conn, status, ("", "", ""), &detail);
}

/// Plain HTTP on the TLS listener (a sender's URL written `http://` where hookgate serves
/// `https://`): counted and logged (`detail`) as a head refused under no source, with the
/// method, path and `x-request-id` of the head in `first` (the connection's first bytes)
/// when they hold it whole. Returns the 400 to write back in plain HTTP, as nginx answers it.
pub fn plain_http_on_tls(metrics: &Metrics, conn: Conn, first: &[u8], detail: &str) -> Vec<u8> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut head = httparse::Request::new(&mut headers);
    let whole = matches!(head.parse(first), Ok(httparse::Status::Complete(_)));
    let sent = whole
        .then(|| {
            head.headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(upstream::X_REQUEST_ID.as_str()))
                .and_then(|h| HeaderValue::from_bytes(h.value).ok())
        })
        .flatten();
    let request_id = request_id_or_new(sent.as_ref());
    // As for a request handled: the path without its query (funtek's token is in it).
    let path = head.path.map_or("", |p| p.split('?').next().unwrap_or(p));
    refused_before_parsing(
        metrics,
        conn,
        400,
        (
            head.method.unwrap_or(""),
            path,
            &String::from_utf8_lossy(request_id.as_bytes()),
        ),
        &format!("{detail}; answered 400 in plain HTTP"),
    );
    let body = error_body(StatusCode::BAD_REQUEST, "bad_request", false);
    let mut answer = format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\nx-request-id: ",
        body.len()
    )
    .into_bytes();
    answer.extend_from_slice(request_id.as_bytes());
    answer.extend_from_slice(b"\r\n\r\n");
    answer.extend_from_slice(&body);
    answer
}

/// The log line and count of a request refused before the pipeline had it: under no
/// source, its duration 0, its reason `bad_head`.
fn refused_before_parsing(
    metrics: &Metrics,
    conn: Conn,
    status: u16,
    (method, path, request_id): (&str, &str, &str),
    detail: &str,
) {
    metrics.unmatched.request(conn.worker, status);
    RequestLine {
        source: "",
        platform: "",
        status,
        duration_ms: 0.0,
        event_id: "",
        event_type: "",
        request_id: &clipped(request_id),
        client: conn.peer.ip(),
        method: &clipped(method),
        path: &clipped(path),
        reason: Refusal::BadHead("").reason(),
        detail,
    }
    .write();
}

/// The status hyper answered a connection's HTTP/1.1 request with, when it ended with
/// `error` (`Some` for a head it could not parse: 400, or 431 past its size). hyper's error
/// kinds are private: a too-large URI (414) is told from a too-large head by its message.
/// (No 414 comes today: hyper's URI bound, 65,534 bytes, is past what a 64 KiB head holds,
/// so a long URI is a 431; the arm follows hyper should it lower that bound.)
pub fn unparsed_status(error: &hyper::Error) -> Option<u16> {
    if !error.is_parse() || error.is_parse_version_h2() {
        return None;
    }
    Some(match error.is_parse_too_large() {
        true if error.to_string().contains("URI") => 414,
        true => 431,
        false => 400,
    })
}

/// What a refusal's log line adds to its reason where the operator's fix is not in it:
/// where a proof was looked for (so that a 401 on every delivery can be told apart; never
/// what it was compared with), or the source a 404's path is a near miss of (a sender
/// registered with a slightly different URL).
fn refusal_hint(refusal: &Refusal, outcome: &Outcome<'_>) -> Option<String> {
    match refusal {
        Refusal::Unverified(_) => {
            let scheme = outcome.source()?.verifier.scheme()?;
            Some(format!("expected {scheme}"))
        }
        Refusal::NoRoute => outcome.near_route.map(|s| {
            format!(
                "source {:?} has path {} (paths match exactly)",
                s.name, s.path
            )
        }),
        _ => None,
    }
}

/// What a relayed 4xx or 5xx of the app's says; for a 404 or 405, where the delivery went
/// (most often the source's upstream URL names a path the app does not serve).
fn app_status_detail(status: u16, outcome: &Outcome<'_>) -> String {
    let target = outcome
        .source()
        .filter(|_| status == 404 || status == 405)
        .map(|s| s.upstream.uri.to_string());
    match target {
        Some(url) => format!(
            "the app answered {status}, relayed: is {} a URL where it takes deliveries \
             (the source's upstream URL)?",
            shown_url(&url)
        ),
        None => format!("the app answered {status}, relayed"),
    }
}

/// What the log says of an app's redirect: where to, with its query's values left out (as
/// in every URL hookgate logs) and clipped, since the app chose it.
fn redirect_detail(location: Option<&HeaderValue>) -> String {
    let to = location.map_or(Cow::Borrowed("nowhere (no location)"), |l| {
        let text = String::from_utf8_lossy(l.as_bytes());
        Cow::Owned(clipped(&shown_url(&text)).into_owned())
    });
    format!(
        "the app redirected to {to}; hookgate follows no redirect and relays the status alone: \
         set the source's upstream URL to where the app takes deliveries"
    )
}

const DUPLICATE_DETAIL: &str =
    "this event id was forwarded within the source's dedupe_window_s; not forwarded again";

/// At most this much of what a sender chose before any proof (the method, the path, its
/// request id) goes into a log line: a request head may be 64 KiB, and a line that size per
/// request would let anyone fill the logs 200 times faster than with plain requests.
const LOGGED_MAX: usize = 256;

/// `text`, or its first `LOGGED_MAX` bytes (to a character's end) and how long it was.
fn clipped(text: &str) -> Cow<'_, str> {
    if text.len() <= LOGGED_MAX {
        return text.into();
    }
    let end = (0..=LOGGED_MAX)
        .rev()
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0);
    format!("{}…({} bytes)", &text[..end], text.len()).into()
}

/// The sender's `x-request-id`, else a new one: an empty id is no id (nothing could be
/// correlated by it).
fn request_id_or_new(sent: Option<&HeaderValue>) -> HeaderValue {
    sent.filter(|id| !id.is_empty())
        .cloned()
        .unwrap_or_else(new_request_id)
}

/// A fresh request id: 32 hex digits (not a secret, so a fast generator does).
fn new_request_id() -> HeaderValue {
    let mut id = [0u8; 32];
    // 16 bytes always fit 32 hex digits.
    let _ = hex::encode_to_slice(fastrand::u128(..).to_be_bytes(), &mut id);
    // Owned by its `Bytes` from the start: the id goes to the upstream and into the answer,
    // and a copied one would allocate again at its first clone.
    HeaderValue::from_maybe_shared(Bytes::from_owner(id))
        .unwrap_or_else(|_| HeaderValue::from_static("0"))
}

/// `/healthz`, `/readyz` and `/metrics` are read with GET or HEAD; anything else gets 405.
fn read_only(method: &Method) -> Option<Response<Body>> {
    if method == Method::GET || method == Method::HEAD {
        return None;
    }
    let mut r = json_response(
        StatusCode::METHOD_NOT_ALLOWED,
        error_body(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", false),
    );
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
    Some(r)
}

fn health_answer(path: &str, method: &Method, health: &Health) -> Response<Body> {
    let mut response = if let Some(refused) = read_only(method) {
        refused
    } else if path == "/readyz" && !health.ready.load(std::sync::atomic::Ordering::Relaxed) {
        json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            Bytes::from_static(br#"{"status":"shutting_down"}"#),
        )
    } else {
        json_response(StatusCode::OK, Bytes::from_static(br#"{"status":"ok"}"#))
    };
    if method == Method::HEAD {
        leave_out_body(&mut response);
    }
    response
}

/// An answer to HEAD: the length of the body it would have had (RFC 9110 §9.3.2), and no
/// body. hyper leaves the body out of an HTTP/1.1 answer to HEAD itself, but its HTTP/2
/// server sends it, which the client takes for a protocol error and resets the stream.
fn leave_out_body(response: &mut Response<Body>) {
    let length = response.body().size_hint().exact().unwrap_or(0);
    response
        .headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    *response.body_mut() = Full::new(Bytes::new());
}

/// `/healthz`, `/readyz` and `/metrics` for the admin listener.
pub fn admin_answer(
    request: &Request<Incoming>,
    health: &Health,
    metrics: &Metrics,
) -> Response<Body> {
    let path = request.uri().path();
    if path == "/healthz" || path == "/readyz" {
        health_answer(path, request.method(), health)
    } else if path == "/metrics" {
        if let Some(refused) = read_only(request.method()) {
            return refused;
        }
        let mut r = Response::new(Full::new(Bytes::from(metrics.encode())));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
        );
        r
    } else {
        json_response(
            StatusCode::NOT_FOUND,
            error_body(StatusCode::NOT_FOUND, "not_found", false),
        )
    }
}

fn json_response(status: StatusCode, body: Bytes) -> Response<Body> {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, JSON.clone());
    r
}

/// The one place a refusal becomes a response.
fn refusal_response(
    refusal: &Refusal,
    barertc: bool,
    version: Version,
    closes: bool,
) -> Response<Body> {
    let (status, code) = refusal.status_code();
    let mut r = json_response(status, error_body(status, code, barertc));
    let h = r.headers_mut();
    if matches!(refusal, Refusal::Method) {
        h.insert(header::ALLOW, HeaderValue::from_static("POST"));
    }
    if let Some(s) = refusal.retry_after() {
        h.insert(header::RETRY_AFTER, HeaderValue::from(s));
    }
    // The body was not read to its end: the connection cannot carry another request.
    if closes && version <= Version::HTTP_11 {
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    r
}

enum Delivered {
    Answered(Answer),
    Duplicate,
}

/// The checks and the forwarding, top to bottom.
async fn deliver<'g>(
    gateway: &'g Gateway,
    conn: Conn,
    request: Request<Incoming>,
    // When the request's head was in: body_timeout_s counts from then.
    started: Instant,
    request_id: &HeaderValue,
    gone: Option<SenderGone>,
    outcome: &mut Outcome<'g>,
) -> Result<Delivered, Refusal> {
    let server = &gateway.config.server;
    let (parts, body) = request.into_parts();
    let declared = body.size_hint().exact();
    // With a length declared within max_body_bytes, no check before the coding's needs the
    // body: refused now, a sender that waits for `100 Continue` is not asked to send it.
    let admitted = admit_head(gateway, conn, &parts, outcome).and_then(|admitted| match declared {
        Some(n) if n <= server.max_body_bytes && !identity_coded(&parts.headers) => {
            Err(Refusal::Encoding)
        }
        _ => Ok(admitted),
    });
    let (route, client) = match admitted {
        Ok(admitted) => admitted,
        // A malformed head closes the connection: its body is not worth reading.
        Err(refusal) if refusal.closes_connection() => return Err(refusal),
        Err(refusal) => {
            let deadline = tokio::time::Instant::from_std(started + server.body_timeout);
            let read = body::discard(
                body,
                parts.version,
                &parts.headers,
                server.max_body_bytes,
                deadline,
            );
            outcome.body_unread = !read;
            return Err(refusal);
        }
    };
    let source = &route.source;
    // A body without a declared length can be cut off unseen (`unless_gone`).
    let sized = declared.is_some();
    let read = read_body(
        body,
        server.max_body_bytes,
        started + server.body_timeout,
        gateway.budget(conn.worker),
    );
    // Held until the delivery is answered: the forwarded event shares the body's bytes.
    let (body, _held) = unless_gone(read, gone, sized).await?;
    let headers = &parts.headers;
    // A streamed body's coding is refused only once it is known not to be too large.
    if !sized {
        if !identity_coded(headers) {
            return Err(Refusal::Encoding);
        }
        transfer_codings(headers)?;
    }

    let carriers = Carriers {
        headers,
        query: parts.uri.query(),
    };
    let delivery = process(source, &carriers, body, Millis::now())?;
    if outcome.logged {
        outcome.event_id = Some(delivery.event_id_header.clone());
        outcome.event_type = Some(delivery.event_type.clone());
    }

    // Verified deliveries only count against the source's budget.
    if let Some(limiter) = &route.limiter {
        limiter
            .check()
            .map_err(|retry_after_s| Refusal::SourceRateLimited { retry_after_s })?;
    }
    // The id's header form is a one-to-one encoding of it (every `%` is encoded too), so
    // it keys dedupe as well as the id itself.
    let dedupe = route
        .dedupe
        .as_ref()
        .map(|d| (d, d.key(delivery.event_id_header.as_bytes())));
    if dedupe.is_some_and(|(d, key)| d.seen(key)) {
        route.metrics.duplicates.inc();
        return Ok(Delivered::Duplicate);
    }
    let Processed {
        event_id_header,
        event_type,
        body: forward_body,
    } = delivery;

    let headers = ForwardHeaders {
        source: source.source_header.clone(),
        platform: source.platform.as_str(),
        event_id: event_id_header.clone(),
        event_type,
        request_id: request_id.clone(),
        forwarded_for: client.forwarded_for,
        forwarded_proto: client.forwarded_proto,
        user_agent: parts.headers.get(header::USER_AGENT).cloned(),
    };

    let forwarded_at = Instant::now();
    let upstream = gateway.upstream(conn.worker);
    let sent = upstream
        .send(Forward {
            target: &source.upstream,
            started: forwarded_at,
            timeout: source.timeout,
            headers,
            body: forward_body,
        })
        .await;
    route
        .metrics
        .upstream_duration
        .observe(conn.worker, forwarded_at.elapsed());
    let answer = sent?;
    if answer.status.is_server_error() {
        route.metrics.upstream_error("status_5xx");
    }
    if answer.status.is_success()
        && let Some((d, key)) = dedupe
    {
        remember(route, d, key);
    }
    let retry_after = answer.retry_after.clone();
    let mut translated = reply::translate(
        source.platform,
        answer.status,
        answer.content_type,
        answer.body,
    );
    translated.retry_after = retry_after;
    // Only a redirect carries one (`UpstreamAnswer::location`).
    outcome.redirected_to = answer.location;
    Ok(Delivered::Answered(translated))
}

/// The checks on the request's head, before its body is read: route (404), method (405),
/// `allow_cidrs` (403), the client rate limit (429).
fn admit_head<'g>(
    gateway: &'g Gateway,
    conn: Conn,
    parts: &http::request::Parts,
    outcome: &mut Outcome<'g>,
) -> Result<(&'g Route, admit::Client), Refusal> {
    // First, so that every refusal's log line names the client (SPEC §5: the address
    // `X-Forwarded-For` gives through trusted proxies), not a balancer in front of it.
    let scheme = if conn.tls { "https" } else { "http" };
    let client = admit::client(
        conn.peer.ip(),
        &parts.headers,
        &gateway.config.server.trusted_proxies,
        scheme,
    );
    outcome.client = Some(client.addr);
    host_header(parts.version, &parts.headers)?;
    let path = parts.uri.path();
    // On a miss, the path in another spelling of a route's: raw UTF-8, lower-case escapes.
    let route = gateway
        .routes
        .get(path)
        .or_else(|| match config::wire_form(path) {
            Cow::Owned(wire) => gateway.routes.get(&wire),
            Cow::Borrowed(_) => None,
        })
        .ok_or_else(|| {
            if outcome.logged {
                outcome.near_route = gateway.near_route(path);
            }
            Refusal::NoRoute
        })?;
    outcome.route = Some(route);
    if parts.method != Method::POST {
        return Err(Refusal::Method);
    }
    if !admit::allowed(client.addr, route.source.allow_cidrs.as_deref()) {
        return Err(Refusal::Forbidden);
    }
    // Before the proof, so forged traffic cannot use up a source's budget.
    if let Some(limiter) = &gateway.client_limiter {
        limiter
            .check(client.addr)
            .map_err(|retry_after_s| Refusal::ClientRateLimited { retry_after_s })?;
    }
    Ok((route, client))
}

/// A verified, normalized delivery, ready to forward.
pub struct Processed {
    /// The id as a header value (percent-encoded).
    pub event_id_header: HeaderValue,
    pub event_type: HeaderValue,
    /// What the upstream gets: the event, or the raw body in raw mode, in chunks.
    pub body: BodyChunks,
}

/// The CPU part of a delivery, no I/O: verify the proof over the raw bytes, check the body
/// is the platform's JSON, normalize it, and write what is forwarded.
pub fn process(
    source: &Source,
    carriers: &Carriers<'_>,
    body: Bytes,
    received_at: Millis,
) -> Result<Processed, Refusal> {
    let verified = source.verifier.verify(carriers, body)?;
    let object = parse(&verified)?;
    let event = normalize(source, &verified, &object, received_at)?;
    let body = match source.forward {
        ForwardMode::Event => {
            let mut out = SharingOut::new(verified.body());
            event.write_json(&mut out);
            out.finish()
        }
        ForwardMode::Raw => smallvec::smallvec![verified.body().clone()],
    };
    Ok(Processed {
        event_id_header: upstream::encode_id(&event.id),
        // The type is `[a-z0-9_.]` only (or a listed type), always a valid header value.
        event_type: HeaderValue::from_str(&event.kind)
            .unwrap_or_else(|_| HeaderValue::from_static("unknown")),
        body,
    })
}

/// Check that a verified body is a JSON object (the first step after `verify` in `process`;
/// public, with `normalize`, so the benchmarks time exactly these steps).
pub fn parse(verified: &Verified) -> Result<Object<'_>, Refusal> {
    Object::parse(verified.body()).ok_or(Refusal::NotPlatformJson("the body is not a JSON object"))
}

/// Normalize a verified body's object into the event (SPEC §7), or refuse it as not the
/// platform's JSON. The event borrows the body and the object.
pub fn normalize<'a>(
    source: &'a Source,
    verified: &'a Verified,
    object: &'a Object<'a>,
    received_at: Millis,
) -> Result<Event<'a>, Refusal> {
    let delivery = Delivery {
        source: &source.name,
        body: verified.body(),
        received_at,
        include_raw: source.include_raw,
    };
    source
        .platform
        .normalize(object, &delivery)
        .map_err(|e| Refusal::NotPlatformJson(e.0))
}

/// RFC 9112 §3.2: an HTTP/1.1 request without `Host`, and any with two or with one that
/// cannot name a host, is answered 400 (hyper leaves this to the server; nginx refuses the
/// same). hookgate routes by path alone and writes its own `Host` upstream, but a head
/// the RFC calls malformed is refused, not guessed at. The value check is nginx's: no
/// control byte, space, DEL or path separator; HTTP/2 names the host in `:authority`.
fn host_header(version: Version, headers: &http::HeaderMap) -> Result<(), Refusal> {
    let mut hosts = headers.get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (None, _) if version == Version::HTTP_11 => Err(Refusal::BadHead("no host header")),
        (Some(_), Some(_)) => Err(Refusal::BadHead("more than one host header")),
        (Some(host), None)
            if host.is_empty()
                || host
                    .as_bytes()
                    .iter()
                    .any(|&b| b <= b' ' || b == 0x7f || b == b'/' || b == b'\\') =>
        {
            Err(Refusal::BadHead("host header names no host"))
        }
        _ => Ok(()),
    }
}

/// Whether the body comes as it is: no `Content-Encoding`, or only `identity`.
fn identity_coded(headers: &http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_ENCODING)
        .is_none_or(|v| body::codings_only(v.as_bytes(), b"identity"))
}

/// Checks the `Transfer-Encoding` of a body without a declared length, which hyper reads as
/// chunked once whatever else the list names (RFC 9112 §6.1 wants other codings undone or
/// refused): a coding besides `chunked` (`gzip, chunked`) is refused as a `Content-Encoding`
/// is, since the coded bytes read as they came would go on to look like a forged signature
/// or not JSON; `chunked` twice, which a sender must not send, is bad framing.
fn transfer_codings(headers: &http::HeaderMap) -> Result<(), Refusal> {
    let lines = headers.get_all(header::TRANSFER_ENCODING);
    match body::chunked_count(lines.iter().map(HeaderValue::as_bytes)) {
        None => Err(Refusal::Encoding),
        Some(n) if n > 1 => Err(Refusal::BadBody("chunked applied more than once".into())),
        Some(_) => Ok(()),
    }
}

/// `read` (a body's), unless its sender leaves first (`gone`, HTTP/2): most of all while it
/// waits for the budget, the body will never come. hyper ends an HTTP/2 body at a reset with
/// NO_ERROR: a declared length tells a body cut off so (`body::read_whole`); without one
/// (`sized` false), the stream's reset does, which hyper looks for once this yields, and
/// then drops the stream's future, which ends `gone`.
async fn unless_gone<T>(
    read: impl Future<Output = Result<T, Refusal>>,
    gone: Option<SenderGone>,
    sized: bool,
) -> Result<T, Refusal> {
    let Some(mut gone) = gone else {
        return read.await;
    };
    let left = || Refusal::BadBody("the sender left before its body was read".into());
    let read = tokio::select! {
        biased;
        read = read => read?,
        _ = &mut gone => return Err(left()),
    };
    if !sized {
        tokio::task::yield_now().await;
        if matches!(gone.try_recv(), Err(TryRecvError::Closed)) {
            return Err(left());
        }
    }
    Ok(read)
}

/// Reads the whole body within `max` bytes, `timeout` and the worker's `budget`, never
/// buffering past the limit.
async fn read_body<'b>(
    body: Incoming,
    max: u64,
    deadline: Instant,
    budget: &'b body::Budget,
) -> Result<(Bytes, body::Held<'b>), Refusal> {
    let limit = usize::try_from(max).unwrap_or(usize::MAX);
    let deadline = tokio::time::Instant::from_std(deadline);
    match tokio::time::timeout_at(deadline, body::read_whole(body, limit, budget)).await {
        Err(_) => Err(Refusal::BodyTimeout),
        Ok(Err(body::ReadError::TooLarge)) => Err(Refusal::TooLarge),
        Ok(Err(e @ (body::ReadError::Short | body::ReadError::Failed(_)))) => {
            Err(Refusal::BadBody(e.to_string()))
        }
        Ok(Ok(read)) => Ok(read),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logged_values_are_clipped_at_a_character_end() {
        assert_eq!(clipped("/hooks/p"), "/hooks/p");
        let exact = "x".repeat(LOGGED_MAX);
        assert_eq!(clipped(&exact), exact);
        // "€" is 3 bytes: 85 of them end at byte 255, the last before the bound.
        let euros = "€".repeat(100);
        assert_eq!(clipped(&euros), format!("{}…(300 bytes)", "€".repeat(85)));
    }

    /// A request's future that hyper drops before its end (as when its HTTP/1.1 connection
    /// fails) leaves no count in `hookgate_in_flight_requests`: here the connection's task
    /// is ended while the delivery waits for the rest of its body.
    #[tokio::test]
    async fn a_request_dropped_unfinished_is_no_longer_in_flight() {
        use tokio::io::AsyncWriteExt;
        let context = Context {
            workers: 1,
            ..Context::default()
        };
        let metrics = Arc::clone(&context.metrics);
        let gateway = Arc::new(gateway_in("", None, &context));
        let health = Arc::new(Health {
            ready: std::sync::atomic::AtomicBool::new(true),
        });
        let (mut client, server) = tokio::io::duplex(4096);
        let in_hyper = Arc::clone(&metrics);
        let serving = tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let (gateway, health, metrics) = (
                    Arc::clone(&gateway),
                    Arc::clone(&health),
                    Arc::clone(&in_hyper),
                );
                async move {
                    let conn = Conn {
                        peer: SocketAddr::from(([127, 0, 0, 1], 1)),
                        tls: false,
                        worker: 0,
                    };
                    let answer = handle(&gateway, &health, &metrics, conn, request, None).await;
                    Ok::<_, std::convert::Infallible>(answer)
                }
            });
            hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(server), service)
                .await
        });
        client
            .write_all(b"POST /p HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{\"a\"")
            .await
            .expect("write");
        let deadline = Instant::now() + std::time::Duration::from_secs(5);
        while metrics.in_flight.get() != 1 {
            assert!(Instant::now() < deadline, "the delivery never began");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        serving.abort();
        assert!(serving.await.is_err_and(|e| e.is_cancelled()));
        assert_eq!(metrics.in_flight.get(), 0);
    }

    fn gateway(server: &str, previous: Option<&Gateway>) -> Gateway {
        let context = Context {
            workers: 2,
            ..Context::default()
        };
        gateway_in(server, previous, &context)
    }

    fn gateway_in(server: &str, previous: Option<&Gateway>, context: &Context) -> Gateway {
        let text = format!(
            "[server]\n{server}\n[upstream]\nurl = \"http://127.0.0.1:9/\"\n\
             [[source]]\nname = \"p\"\nplatform = \"protocol\"\npath = \"/p\"\nsecrets = [\"s\"]\n"
        );
        let config = Config::from_toml_str(&text, std::path::Path::new("/etc/hookgate/t.toml"))
            .expect("valid");
        Gateway::new(config, context, previous).expect("gateway")
    }

    /// The timer's housekeeping reaches both tables: a client whose bucket is full again
    /// and an id past its window are forgotten, not kept until the next request touches them.
    #[test]
    fn housekeeping_forgets_full_buckets_and_expired_ids() {
        let context = Context {
            clock: LimitClock::fake(),
            workers: 1,
            ..Context::default()
        };
        let gw = gateway_in(
            "client_rate_limit = { per_second = 1, burst = 1 }",
            None,
            &context,
        );
        let client = std::net::IpAddr::from([192, 0, 2, 1]);
        let limiter = gw.client_limiter.as_ref().expect("a client limiter");
        assert_eq!(limiter.check(client), Ok(()));
        let dedupe = gw.routes["/p"].dedupe.as_ref().expect("dedupe is on");
        dedupe.remember(dedupe.key(b"id-1"));
        gw.housekeeping();
        assert_eq!(
            (gw.client_table_len(), dedupe.len()),
            (1, 1),
            "still in use"
        );
        context.clock.advance(std::time::Duration::from_secs(301));
        gw.housekeeping();
        assert_eq!((gw.client_table_len(), dedupe.len()), (0, 0));
    }

    /// The upstream names' addresses are one cache for every worker, kept by a reload: a
    /// failed lookup falls back on what any worker looked up before, however recent the
    /// gateway.
    #[test]
    fn every_worker_and_reload_shares_the_upstream_names_addresses() {
        let config = || {
            Config::from_toml_str(
                "[upstream]\nurl = \"http://app.example:9/\"\n[[source]]\nname = \"p\"\n\
                 platform = \"protocol\"\npath = \"/p\"\nsecrets = [\"s\"]\n",
                std::path::Path::new("/etc/hookgate/t.toml"),
            )
            .expect("valid")
        };
        let context = Context {
            workers: 2,
            ..Context::default()
        };
        let a = Gateway::new(config(), &context, None).expect("gateway");
        let b = Gateway::new(config(), &context, Some(&a)).expect("reloaded");
        let caches: Vec<_> = a
            .upstreams
            .iter()
            .chain(&b.upstreams)
            .map(|u| u.dns())
            .collect();
        assert_eq!(caches.len(), 4);
        assert!(caches.iter().all(|d| Arc::ptr_eq(d, &context.dns)));
    }

    #[test]
    fn the_body_budget_is_shared_out_and_kept_by_a_reload_that_leaves_it() {
        let a = gateway("max_buffered_bytes = 4000000", None);
        assert_eq!(a.budgets.len(), 2);
        assert_eq!(a.budgets[0].size(), 2_000_000);
        let b = gateway("max_buffered_bytes = 4000000", Some(&a));
        assert!(Arc::ptr_eq(&a.budgets, &b.budgets), "unchanged: kept");
        // Each worker reads against its own share, not all against one.
        for worker in 0..2 {
            assert!(std::ptr::eq(a.budget(worker), &a.budgets[worker]));
        }
        let c = gateway("max_buffered_bytes = 1500000", Some(&b));
        assert!(!Arc::ptr_eq(&b.budgets, &c.budgets), "changed: new");
        assert_eq!(
            c.budgets[1].size(),
            1_048_576,
            "a share holds one largest body"
        );
    }

    /// Each worker's share of `max_connections` exchanges, kept by a reload (its
    /// `max_connections` takes effect at the next start) so that requests in flight and new
    /// ones count against one bound.
    #[test]
    fn the_exchange_slots_are_shared_out_and_kept_by_a_reload() {
        let a = gateway("max_connections = 5", None);
        let permits: Vec<usize> = a
            .upstreams
            .iter()
            .map(|u| u.slots().available_permits())
            .collect();
        assert_eq!(permits, [3, 3], "5 over two workers, rounded up");
        let b = gateway("max_connections = 100", Some(&a));
        for (old, new) in a.upstreams.iter().zip(&b.upstreams) {
            assert!(Arc::ptr_eq(old.slots(), new.slots()));
        }
    }
}
