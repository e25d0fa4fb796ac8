//! A worker thread's keep-alive HTTP/1.1 connections to the upstreams.
//!
//! Written here rather than taken from hyper-util's legacy client, which measured as the
//! largest single cost of a forward after the kernel's: that client is one pool shared by
//! every thread (a mutex and a SipHash map lookup per checkout, the Host header formatted
//! per request, the URI rebuilt). Each worker owns one of these pools and only its own
//! runtime drives its connections, so a checkout is a pop from a short `Vec`, and the
//! connection's address, TLS name, Host header and request-target are worked out once, at
//! config load, in [`Target`].

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::Uri;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;

use super::UpstreamError;
use super::http1::{Connection, Stream};

/// Idle connections older than this are closed rather than reused (most servers close
/// theirs after 5–75 s; a connection the server closed is noticed before it is used).
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// A connection is closed, not kept, once it has carried this many exchanges or is this
/// old (nginx's `keepalive_requests` and `keepalive_time` defaults): behind a Kubernetes
/// ClusterIP Service, kube-proxy picks a pod per connection, so a connection kept for ever
/// would keep its pod's share for ever, and pods added by a scale-out would get no
/// deliveries from connections opened before them.
const MAX_EXCHANGES: u32 = 1000;
const MAX_AGE: Duration = Duration::from_secs(3600);
/// How often a worker closes the idle connections that have expired or that the upstream
/// closed, while no delivery comes to do it (`Pool::sweep`).
pub const SWEEP: Duration = Duration::from_secs(2);
/// At most this many idle connections per worker; more are closed when they come back.
const MAX_IDLE: usize = 1024;
/// How long a host name's addresses are used before they are looked up again.
const DNS_TTL: Duration = Duration::from_secs(10);
/// After a connection to them failed, how long they are still used: a moved app is found
/// again within a second, and an app that is down costs a lookup a second, not one per
/// delivery.
const DNS_RETRY: Duration = Duration::from_secs(1);

/// Where a source's deliveries go, resolved once from its URL.
#[derive(Debug, Clone)]
pub struct Target {
    /// The URL as configured (for `check` and the logs).
    pub uri: Uri,
    /// `scheme://host:port`: connections are shared by targets with the same key.
    key: Arc<str>,
    /// The host to connect to (an IPv6 literal without its brackets).
    host: String,
    /// The host as an IP address, when it is one (a name is looked up: `Dns`).
    ip: Option<IpAddr>,
    port: u16,
    /// Present for https: the name the certificate must carry.
    tls_name: Option<ServerName<'static>>,
    /// The start of every request's head: the request line (the URL's path and query as
    /// the request-target), `host`, and the headers every forwarded request carries.
    head_prefix: Vec<u8>,
}

impl Target {
    /// A failure to connect, naming where to.
    fn connect_error(&self, e: &dyn std::fmt::Display) -> UpstreamError {
        UpstreamError::Connect(format!("{}:{}: {e}", self.host, self.port))
    }

    /// Checks and splits an http:// or https:// URL.
    pub fn from_uri(uri: Uri) -> Result<Target, String> {
        let tls = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err("must be an http:// or https:// URL".into()),
        };
        let authority = uri.authority().ok_or("must name a host")?;
        if authority.as_str().contains('@') {
            return Err("must not carry user:password@".into());
        }
        let host = authority.host();
        if host.is_empty() {
            return Err("must name a host".into());
        }
        let bare_host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        // RFC 6874's zone (`[fe80::1%25eth0]`): no `IpAddr`, and no resolver finds it as a
        // name, so every delivery would fail; refused here, where the operator sees it.
        if host.starts_with('[') && bare_host.contains('%') {
            return Err(format!(
                "host [{bare_host}] names an IPv6 zone, which is not supported: give the app a \
                 loopback or routable address"
            ));
        }
        let ip = bare_host.parse::<IpAddr>().ok();
        if ip.is_none() && is_numeric_host(&bare_host) {
            return Err(match resolver_reading(&bare_host) {
                Some(read) => format!(
                    "host {bare_host} is read by resolvers as {read} (a number with a leading 0 \
                     is octal, 0x hex, and fewer than four numbers fill the address from the \
                     last): write the address as four decimal numbers without leading zeros"
                ),
                None => format!(
                    "host {bare_host} is not an IP address (four decimal numbers from 0 to 255)"
                ),
            });
        }
        // `Uri` takes any digits for a port, and `port_u16` gives none for one past 65535:
        // `:99999` would have connected to port 80.
        let scheme_port = if tls { 443 } else { 80 };
        let port = match authority.as_str()[host.len()..].strip_prefix(':') {
            None | Some("") => scheme_port,
            Some(text) => match text.parse::<u16>() {
                Ok(port) if port > 0 => port,
                _ => return Err(format!("port {text} is not one from 1 to 65535")),
            },
        };
        let tls_name = if tls {
            Some(
                ServerName::try_from(bare_host.clone())
                    .map_err(|_| format!("{bare_host:?} is not a valid TLS server name"))?,
            )
        } else {
            None
        };
        // `Uri` has already refused what a request line or a header cannot carry.
        let origin_form = uri.path_and_query().map_or("/", |p| p.as_str());
        let head_prefix = format!(
            "POST {origin_form} HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\n\
             accept-encoding: identity\r\n",
            authority.as_str()
        )
        .into_bytes();
        let scheme = if tls { "https" } else { "http" };
        Ok(Target {
            key: format!("{scheme}://{host}:{port}").into(),
            ip,
            host: bare_host,
            port,
            tls_name,
            head_prefix,
            uri,
        })
    }

    /// The addresses this target names without asking DNS: its IP literal, or `localhost`'s
    /// loopback ones; none for another host name.
    pub fn known_addrs(&self) -> Vec<SocketAddr> {
        let ips = if self.host.eq_ignore_ascii_case("localhost") {
            vec![Ipv4Addr::LOCALHOST.into(), Ipv6Addr::LOCALHOST.into()]
        } else {
            self.ip.into_iter().collect()
        };
        ips.into_iter()
            .map(|ip| SocketAddr::new(ip, self.port))
            .collect()
    }

    /// The request line and the headers every request to this target starts with.
    pub fn head_prefix(&self) -> &[u8] {
        &self.head_prefix
    }
}

/// Whether a host that is not an IP address as written is made of numbers only, which a
/// resolver takes as an IPv4 address by older rules instead of looking it up: the system
/// resolver (glibc's `getaddrinfo`, through `inet_aton`) and the URL standard alike read
/// `010.0.0.1` as 8.0.0.1 and `127.1` as 127.0.0.1. `check` would show one address and the
/// deliveries go to another (and `127.1` would slip past the own-listener check), so such a
/// host is refused unless written as four decimal numbers. One trailing dot is ignored.
fn is_numeric_host(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    !host.is_empty()
        && host.split('.').all(|label| match hex_digits(label) {
            Some(hex) => hex.bytes().all(|b| b.is_ascii_hexdigit()),
            None => !label.is_empty() && label.bytes().all(|b| b.is_ascii_digit()),
        })
}

/// The digits of a label written in hex (`0x…` or `0X…`), as `inet_aton` and the URL
/// standard take it.
fn hex_digits(label: &str) -> Option<&str> {
    label
        .strip_prefix("0x")
        .or_else(|| label.strip_prefix("0X"))
}

/// The address `inet_aton` reads a numeric host as (`None` where it reads none): one to four
/// numbers, each decimal, octal after a leading `0` or hex after `0x`; all but the last are a
/// byte each, and the last fills the bytes left. Hand-written: `inet_aton` is not in Rust's
/// std, and the `url` crate (which has the URL standard's like reading) would bring its IDNA
/// tables for a dozen lines used only to word an error.
fn resolver_reading(host: &str) -> Option<Ipv4Addr> {
    let numbers = host
        .split('.')
        .map(|label| {
            let (digits, radix) = match hex_digits(label) {
                Some(hex) => (hex, 16),
                None if label.len() > 1 && label.starts_with('0') => (&label[1..], 8),
                None => (label, 10),
            };
            // `from_str_radix` would take a sign, and "" as no number at all is right here.
            if !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            u32::from_str_radix(digits, radix).ok()
        })
        .collect::<Option<Vec<u32>>>()?;
    let (last, bytes) = numbers.split_last()?;
    if bytes.len() > 3 || bytes.iter().any(|&b| b > 255) {
        return None;
    }
    let last_bits = 32 - 8 * bytes.len() as u32;
    if last_bits < 32 && last >> last_bits != 0 {
        return None;
    }
    let high = bytes
        .iter()
        .enumerate()
        .fold(0u32, |addr, (i, &b)| addr | b << (24 - 8 * i as u32));
    Some(Ipv4Addr::from(high | last))
}

/// The URL as `check`, the logs and config errors show it: a `user:password@` as `…@` and
/// the query's values as `…` (`?token=…`), since the operator may have put the app's own
/// credential in either (SPEC §3: a config error never quotes a secret).
impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&shown_url(&self.uri.to_string()))
    }
}

/// `url` with its userinfo and its query's values left out (see `Target`'s `Display`). Works
/// on the text, not a parsed URI: a config error quotes URLs that do not parse too.
pub fn shown_url(url: &str) -> Cow<'_, str> {
    let start = url.find("://").map_or(0, |i| i + 3);
    let authority_end = url[start..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| start + i);
    let (head, query) = match url[authority_end..].find('?') {
        Some(q) => (
            &url[..authority_end + q],
            Some(&url[authority_end + q + 1..]),
        ),
        None => (url, None),
    };
    let head = match url[start..authority_end].rfind('@') {
        Some(at) => Cow::Owned(format!("{}…{}", &url[..start], &head[start + at..])),
        None => Cow::Borrowed(head),
    };
    let Some(query) = query else {
        return head;
    };
    let (query, fragment) = query.split_once('#').unwrap_or((query, ""));
    let pairs: Vec<Cow<'_, str>> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((name, _)) => format!("{name}=…").into(),
            None if pair.is_empty() => "".into(),
            None => "…".into(),
        })
        .collect();
    let fragment = if fragment.is_empty() { "" } else { "#…" };
    Cow::Owned(format!("{head}?{}{fragment}", pairs.join("&")))
}

struct Idle {
    key: Arc<str>,
    connection: Connection,
    since: Instant,
}

/// Drops what has idled too long (oldest first).
fn drop_expired(idle: &mut Vec<Idle>, now: Instant) {
    let expired = idle
        .iter()
        .take_while(|i| now.saturating_duration_since(i.since) > IDLE_TIMEOUT)
        .count();
    idle.drain(..expired);
}

/// One worker's connections.
pub struct Pool {
    /// Most recently returned last. Only the owning worker's thread takes this lock, so
    /// it is never contended; it is a `Mutex` only because the gateway is shared.
    idle: Mutex<Vec<Idle>>,
    tls: tokio_rustls::TlsConnector,
    dns: Arc<Dns>,
}

/// Host names' addresses, looked up at most once per `DNS_TTL`, and taken in turn by new
/// connections. One per process, shared by the workers' pools and kept by a reload (a new
/// worker or a reloaded gateway would otherwise have no addresses to keep, below).
///
/// Why: without it every new upstream connection to a named host ran `getaddrinfo` on
/// tokio's blocking pool. Against an app that closes its connections after each answer,
/// that cost 9 µs of CPU per delivery (29.4–30.3 against 20.8–21.1 µs with the same app
/// named by its IP; 25 % fewer req/s) and grew the process to 118 threads within 12 s; in
/// Kubernetes each lookup also goes to the cluster's DNS, once per search domain. nginx
/// looks a name up once, at start; here it is at most `DNS_TTL` old, and `DNS_RETRY` old
/// once a connection to all its addresses failed, so a moved app is found again within a
/// second.
///
/// A name with several addresses (a headless Kubernetes service, a scaled Compose service)
/// is several apps: as nginx does with such a name, new connections start at each address
/// in turn, and one whose connection failed is tried last until the next lookup (nginx:
/// `max_fails=1 fail_timeout=10s`). Taking the first address every time sent every
/// delivery to one of them for as long as the cache held it.
///
/// A lookup that fails while addresses from an earlier one are held keeps them, and asks
/// again `DNS_RETRY` later (as Envoy and HAProxy do): a blip of the cluster's DNS must not
/// turn every new connection to an app that is still there into a 502.
#[derive(Default)]
pub struct Dns {
    /// host → its addresses and when they were looked up, each behind a lock of its own
    /// that is held over a lookup: a burst of new connections to one host waits for one
    /// lookup, and a slow lookup holds up no other host.
    names: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<Looked>>>>>,
}

/// A host's addresses as looked up, and what new connections have made of them since.
struct Looked {
    addrs: Vec<SocketAddr>,
    at: Instant,
    /// A connection to every address failed since, or the addresses are an earlier
    /// lookup's kept when the last one failed: looked up again once `DNS_RETRY` old.
    failed: bool,
    /// Where the next new connection starts (round robin).
    next: usize,
    /// Per address: a connection to it failed since the lookup (it is tried last).
    down: Vec<bool>,
}

impl Looked {
    fn new(addrs: Vec<SocketAddr>, at: Instant) -> Looked {
        Looked {
            down: vec![false; addrs.len()],
            addrs,
            at,
            failed: false,
            next: 0,
        }
    }

    /// The addresses in the order the next connection tries them: those whose connection
    /// has not failed, from the next one in turn around to the one before it, then the
    /// others.
    fn order(&mut self, port: u16) -> Vec<SocketAddr> {
        let (mut up, down): (Vec<usize>, Vec<usize>) =
            (0..self.addrs.len()).partition(|&i| !self.down[i]);
        if let Some(turn) = self.next.checked_rem(up.len()) {
            up.rotate_left(turn);
        }
        self.next = self.next.wrapping_add(1);
        up.into_iter()
            .chain(down)
            .map(|i| SocketAddr::new(self.addrs[i].ip(), port))
            .collect()
    }
}

impl Dns {
    fn entry(&self, host: &str) -> Arc<tokio::sync::Mutex<Option<Looked>>> {
        let mut names = self.names.lock().unwrap_or_else(|e| e.into_inner());
        // Looked for before `entry`, which would take an owned key every time.
        if let Some(looked) = names.get(host) {
            return Arc::clone(looked);
        }
        Arc::clone(names.entry(host.to_string()).or_default())
    }

    /// The addresses of `host:port` for a new connection to try in order ([`Looked::order`]),
    /// from the cache while fresh, else from `lookup`.
    async fn addrs<F, Fut>(
        &self,
        host: &str,
        port: u16,
        now: Instant,
        lookup: F,
    ) -> std::io::Result<Vec<SocketAddr>>
    where
        F: FnOnce(String, u16) -> Fut,
        Fut: std::future::Future<Output = std::io::Result<Vec<SocketAddr>>>,
    {
        let entry = self.entry(host);
        let mut looked = entry.lock().await;
        let fresh_for = |failed: bool| if failed { DNS_RETRY } else { DNS_TTL };
        if let Some(l) = looked.as_mut()
            && now.saturating_duration_since(l.at) < fresh_for(l.failed)
        {
            return Ok(l.order(port));
        }
        match (lookup(host.to_string(), port).await, looked.as_mut()) {
            (Ok(addrs), _) => Ok(looked.insert(Looked::new(addrs, now)).order(port)),
            (Err(e), Some(kept)) => {
                tracing::warn!(
                    upstream = host,
                    error = %e,
                    "upstream host name lookup failed; its earlier addresses are used, and it is looked up again in a second"
                );
                kept.at = now;
                kept.failed = true;
                Ok(kept.order(port))
            }
            (Err(e), None) => Err(e),
        }
    }

    /// A connection to `addr`, one of `host`'s addresses, failed: it is tried last until
    /// the next lookup.
    async fn down(&self, host: &str, addr: SocketAddr) {
        if let Some(looked) = self.entry(host).lock().await.as_mut() {
            for (a, down) in looked.addrs.iter().zip(looked.down.iter_mut()) {
                *down |= a.ip() == addr.ip();
            }
        }
    }

    /// A connection to every one of `host`'s addresses failed: they are looked up again
    /// once they are `DNS_RETRY` old.
    async fn failed(&self, host: &str) {
        if let Some(looked) = self.entry(host).lock().await.as_mut() {
            looked.failed = true;
        }
    }
}

/// The least time a connection attempt gets while another address is left to try (Go's
/// `net.Dialer` has the same floor).
const MIN_ATTEMPT: Duration = Duration::from_secs(2);

/// Until when a connection attempt to one of `left` addresses may run: an equal share of
/// the time to `deadline`, but at least `MIN_ATTEMPT` (or all that is left, if less), so an
/// address that never answers (a pod that is gone) leaves time to try the others.
fn attempt_deadline(now: Instant, deadline: Instant, left: usize) -> Instant {
    let remaining = deadline.saturating_duration_since(now);
    let share = remaining / u32::try_from(left.max(1)).unwrap_or(u32::MAX);
    now + share.max(MIN_ATTEMPT.min(remaining))
}

/// Why [`connect_first`] found no connection.
#[derive(Debug)]
enum ConnectFailure {
    /// The delivery's deadline came while an address was still connecting: no fault of it.
    Deadline,
    /// Every address failed (refused, or silent for its share): the last one's error,
    /// naming it.
    Failed(std::io::Error),
}

/// A TCP connection to the first of `addrs` that takes one, each attempt within its
/// [`attempt_deadline`]; `on_failure` hears of each address that failed.
async fn connect_first<F, Fut>(
    addrs: &[SocketAddr],
    deadline: Instant,
    mut on_failure: F,
) -> Result<TcpStream, ConnectFailure>
where
    F: FnMut(SocketAddr) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut last_error = None;
    for (i, &addr) in addrs.iter().enumerate() {
        let until = attempt_deadline(Instant::now(), deadline, addrs.len() - i);
        let attempt = tokio::time::timeout_at(until.into(), TcpStream::connect(addr));
        let error = match attempt.await {
            Ok(Ok(tcp)) => return Ok(tcp),
            Ok(Err(e)) => e,
            Err(_) if until >= deadline => return Err(ConnectFailure::Deadline),
            Err(_) => std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"),
        };
        on_failure(addr).await;
        last_error = Some(std::io::Error::new(
            error.kind(),
            format!("{addr}: {error}"),
        ));
    }
    Err(ConnectFailure::Failed(
        last_error.unwrap_or_else(|| std::io::Error::other("no address")),
    ))
}

/// The system resolver (`getaddrinfo`, on tokio's blocking pool).
async fn system_lookup(host: String, port: u16) -> std::io::Result<Vec<SocketAddr>> {
    Ok(tokio::net::lookup_host((host.as_str(), port))
        .await?
        .collect())
}

impl Pool {
    pub fn new(tls: Arc<rustls::ClientConfig>, dns: Arc<Dns>) -> Pool {
        Pool {
            idle: Mutex::new(Vec::new()),
            tls: tokio_rustls::TlsConnector::from(tls),
            dns,
        }
    }

    #[cfg(test)]
    pub(crate) fn dns(&self) -> &Arc<Dns> {
        &self.dns
    }

    /// The most recently used open connection to `target`, if any (`now`: the caller's
    /// clock reading, one per request).
    pub fn checkout(&self, target: &Target, now: Instant) -> Option<Connection> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        drop_expired(&mut idle, now);
        while let Some(at) = idle.iter().rposition(|i| i.key == target.key) {
            let mut entry = idle.remove(at);
            if entry.connection.is_open() {
                return Some(entry.connection);
            }
        }
        None
    }

    /// Closes the idle connections that idled past `IDLE_TIMEOUT` or that the upstream has
    /// closed (run by the worker every `SWEEP`). Without it they stayed until the next
    /// delivery: after a burst, 64 sockets sat in CLOSE-WAIT for as long as none came.
    pub fn sweep(&self, now: Instant) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        drop_expired(&mut idle, now);
        idle.retain_mut(|i| i.connection.is_open());
    }

    /// Gives a connection back after its answer was read whole; `since`: when the request
    /// it carried started (its idle time counts from a little early, never late).
    pub fn checkin(&self, target: &Target, connection: Connection, since: Instant) {
        if connection.exchanges() >= MAX_EXCHANGES
            || since.saturating_duration_since(connection.opened()) >= MAX_AGE
        {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push(Idle {
                key: Arc::clone(&target.key),
                connection,
                since,
            });
        }
    }

    /// A new TCP connection to `target`; `deadline`: the delivery's.
    pub async fn tcp(&self, target: &Target, deadline: Instant) -> Result<TcpStream, TcpFailure> {
        let refused = |e: &dyn std::fmt::Display| TcpFailure::Refused(target.connect_error(e));
        let tcp = match target.ip {
            // An IP literal is its own address.
            Some(ip) => TcpStream::connect(SocketAddr::new(ip, target.port))
                .await
                .map_err(|e| refused(&e))?,
            // A name is looked up (cached, its addresses taken in turn: `Dns`).
            None => {
                let host = target.host.as_str();
                let addrs = self
                    .dns
                    .addrs(host, target.port, Instant::now(), system_lookup)
                    .await
                    .map_err(|e| TcpFailure::Other(target.connect_error(&e)))?;
                match connect_first(&addrs, deadline, |addr| self.dns.down(host, addr)).await {
                    Ok(tcp) => tcp,
                    // As when an IP literal's connect is cut at the deadline: 504.
                    Err(ConnectFailure::Deadline) => {
                        return Err(TcpFailure::Other(UpstreamError::ConnectTimeout));
                    }
                    Err(ConnectFailure::Failed(e)) => {
                        self.dns.failed(host).await;
                        return Err(refused(&e));
                    }
                }
            }
        };
        // Headers and body go out in one write; Nagle would hold back the next request.
        tcp.set_nodelay(true)
            .map_err(|e| TcpFailure::Other(target.connect_error(&e)))?;
        Ok(tcp)
    }

    /// A new connection, not tried again (the tests').
    #[cfg(test)]
    pub(crate) async fn connect(
        &self,
        target: &Target,
        deadline: Instant,
    ) -> Result<Connection, UpstreamError> {
        let tcp = self.tcp(target, deadline).await?;
        self.open(target, tcp).await
    }

    /// A connection over `tcp`: TLS first for https.
    pub async fn open(&self, target: &Target, tcp: TcpStream) -> Result<Connection, UpstreamError> {
        let stream = match &target.tls_name {
            None => Stream::Tcp(tcp),
            Some(name) => Stream::Tls(Box::new(
                self.tls
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|e| target.connect_error(&format!("{e}{}", tls_hint(&e))))?,
            )),
        };
        Ok(Connection::new(stream))
    }
}

/// What a failed TLS handshake with the app most likely means, for the log line's detail,
/// where rustls's own words do not say: an app that speaks plain HTTP behind an https:// URL
/// (its first byte, `H`, is no TLS record type: "corrupt message"), or a certificate from a
/// CA that is not trusted ("UnknownIssuer").
fn tls_hint(e: &std::io::Error) -> &'static str {
    use rustls::{CertificateError, Error, InvalidMessage};
    match e.get_ref().and_then(|e| e.downcast_ref::<Error>()) {
        Some(Error::InvalidMessage(InvalidMessage::InvalidContentType)) => {
            " (the app answered in plain HTTP: its URL wants http://)"
        }
        Some(Error::InvalidCertificate(CertificateError::UnknownIssuer)) => {
            " (no trusted CA signed the app's certificate: set [upstream] ca to the one that did)"
        }
        _ => "",
    }
}

/// Why [`Pool::tcp`] has no connection.
#[derive(Debug)]
pub enum TcpFailure {
    /// No address took it (refused, unreachable, or silent for its share): an app that
    /// restarts refuses connections for a moment, so this one is worth trying again.
    Refused(UpstreamError),
    /// Anything else: a name that did not resolve (the lookup's cache says when it is asked
    /// again), the deadline.
    Other(UpstreamError),
}

impl From<TcpFailure> for UpstreamError {
    fn from(failure: TcpFailure) -> UpstreamError {
        match failure {
            TcpFailure::Refused(e) | TcpFailure::Other(e) => e,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(url: &str) -> Result<Target, String> {
        Target::from_uri(url.parse().map_err(|_| "not a URI".to_string())?)
    }

    #[test]
    fn a_host_of_numbers_is_an_address_as_written_or_refused() {
        // The error for a host, which must say what it says of it.
        let refused = |host: &str, says: &str| {
            let e = target(&format!("http://{host}:3000/")).expect_err(host);
            assert!(e.contains(&format!("host {host} {says}")), "{e}");
        };
        // What glibc's getaddrinfo connects to for each (checked with Python's
        // `socket.getaddrinfo(host, 80, AF_INET, 0, 0, AI_NUMERICHOST)`), named in the error.
        for (host, read) in [
            ("010.0.0.1", "8.0.0.1"),
            ("127.1", "127.0.0.1"),
            ("2130706433", "127.0.0.1"),
            ("0x7f.1", "127.0.0.1"),
            ("0X7f.0.0.1", "127.0.0.1"),
            ("0177.0.0.1", "127.0.0.1"),
            ("1.2.3.04", "1.2.3.4"),
            ("1.2.65535", "1.2.255.255"),
            ("1.16777215", "1.255.255.255"),
            ("4294967295", "255.255.255.255"),
            ("0xffffffff", "255.255.255.255"),
            ("00", "0.0.0.0"),
        ] {
            refused(host, &format!("is read by resolvers as {read} "));
        }
        // Numbers that are no address (getaddrinfo: none either): refused in other words.
        for host in [
            "08.0.0.1",
            "1.2.3.09",
            "1.2.3.256",
            "256.1.2.3",
            "1.2.3.4.5",
            "4294967296",
            "1.16777216",
            "0x",
            "0x.1",
            "127.0.0.1.",
        ] {
            refused(host, "is not an IP address");
        }
        let e = target("http://[fe80::1%25eth0]:3000/").expect_err("a zone");
        assert!(e.contains("names an IPv6 zone"), "{e}");
        // Addresses as written are connected to as such; names (a label of letters makes a
        // name) are left to the resolver, as they were.
        for (url, ip) in [
            ("http://10.0.0.1:3000/", Some("10.0.0.1")),
            ("http://0.0.0.0:3000/", Some("0.0.0.0")),
            ("https://127.0.0.1/", Some("127.0.0.1")),
            ("http://[::ffff:10.0.0.1]:3000/", Some("::ffff:10.0.0.1")),
            ("http://app1.example:3000/", None),
            ("http://1e100.net/", None),
            ("http://123.example/", None),
            ("http://example.123/", None),
            ("http://0xapp.local/", None),
            ("http://app.svc.cluster.local.:3000/", None),
        ] {
            let taken = target(url).unwrap_or_else(|e| panic!("{url}: {e}"));
            assert_eq!(taken.ip.map(|ip| ip.to_string()).as_deref(), ip, "{url}");
        }
    }

    #[tokio::test]
    async fn a_host_is_looked_up_once_per_ttl_and_a_second_after_a_failure() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let dns = Dns::default();
        let lookups = AtomicUsize::new(0);
        let lookup = |_: String, port: u16| {
            let n = lookups.fetch_add(1, Ordering::SeqCst);
            async move {
                tokio::task::yield_now().await;
                if n == 3 {
                    return Err(std::io::Error::other("no such host"));
                }
                Ok(vec![SocketAddr::new(
                    Ipv4Addr::new(10, 0, 0, n as u8).into(),
                    port,
                )])
            }
        };
        let t0 = Instant::now();
        let ip = |addrs: std::io::Result<Vec<SocketAddr>>| addrs.expect("addrs")[0].to_string();
        let looked_up = || lookups.load(Ordering::SeqCst);

        // Concurrent first lookups: one of them asks, the other waits for its answer.
        let (a, b) = tokio::join!(
            dns.addrs("app", 80, t0, lookup),
            dns.addrs("app", 80, t0, lookup)
        );
        assert_eq!((ip(a), ip(b)), ("10.0.0.0:80".into(), "10.0.0.0:80".into()));
        assert_eq!(looked_up(), 1);

        // Fresh: from the cache, for another port too.
        let fresh = t0 + DNS_TTL - Duration::from_millis(1);
        assert_eq!(
            ip(dns.addrs("app", 8080, fresh, lookup).await),
            "10.0.0.0:8080"
        );
        assert_eq!(looked_up(), 1);

        // Stale: looked up again.
        let stale = t0 + DNS_TTL;
        assert_eq!(ip(dns.addrs("app", 80, stale, lookup).await), "10.0.0.1:80");
        // A connection failed: still used for DNS_RETRY, then looked up again, well within
        // DNS_TTL.
        dns.failed("app").await;
        let retry = stale + DNS_RETRY;
        let before = retry - Duration::from_millis(1);
        assert_eq!(
            ip(dns.addrs("app", 80, before, lookup).await),
            "10.0.0.1:80"
        );
        assert_eq!(ip(dns.addrs("app", 80, retry, lookup).await), "10.0.0.2:80");
        assert_eq!(looked_up(), 3);

        // A failed lookup keeps the addresses held, for DNS_RETRY, then asks again.
        dns.failed("app").await;
        let later = retry + DNS_RETRY;
        assert_eq!(ip(dns.addrs("app", 80, later, lookup).await), "10.0.0.2:80");
        assert_eq!(looked_up(), 4);
        let before = later + DNS_RETRY - Duration::from_millis(1);
        assert_eq!(
            ip(dns.addrs("app", 80, before, lookup).await),
            "10.0.0.2:80"
        );
        assert_eq!(looked_up(), 4);
        let again = later + DNS_RETRY;
        assert_eq!(ip(dns.addrs("app", 80, again, lookup).await), "10.0.0.4:80");
        assert_eq!(looked_up(), 5);
    }

    /// A first lookup that fails has nothing to fall back on: the error, and the next
    /// connection asks again.
    #[tokio::test]
    async fn a_first_lookup_that_fails_is_not_kept() {
        let dns = Dns::default();
        let none = |_: String, _: u16| std::future::ready(Err(std::io::Error::other("no such")));
        let one = |_: String, port: u16| {
            std::future::ready(Ok(vec![SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port)]))
        };
        let t0 = Instant::now();
        assert!(dns.addrs("app", 80, t0, none).await.is_err());
        let addrs = dns
            .addrs("app", 80, t0, one)
            .await
            .expect("looked up again");
        assert_eq!(addrs[0].to_string(), "127.0.0.1:80");
    }

    #[tokio::test]
    async fn new_connections_take_a_names_addresses_in_turn_failed_ones_last() {
        let dns = Dns::default();
        let three = |_: String, port: u16| async move {
            Ok((2..5)
                .map(|n| SocketAddr::new(Ipv4Addr::new(10, 0, 0, n).into(), port))
                .collect())
        };
        let t0 = Instant::now();
        let order = |addrs: std::io::Result<Vec<SocketAddr>>| {
            let addrs = addrs.expect("addrs");
            addrs
                .iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(" ")
        };
        let mut seen = Vec::new();
        for _ in 0..4 {
            seen.push(order(dns.addrs("app", 80, t0, three).await));
        }
        assert_eq!(
            seen,
            [
                "10.0.0.2:80 10.0.0.3:80 10.0.0.4:80",
                "10.0.0.3:80 10.0.0.4:80 10.0.0.2:80",
                "10.0.0.4:80 10.0.0.2:80 10.0.0.3:80",
                "10.0.0.2:80 10.0.0.3:80 10.0.0.4:80",
            ]
        );
        // One failed: the others take turns, and it is still tried, but last.
        dns.down("app", "10.0.0.3:80".parse().expect("addr")).await;
        let mut seen = Vec::new();
        for port in [80, 8080, 80] {
            seen.push(order(dns.addrs("app", port, t0, three).await));
        }
        assert_eq!(
            seen,
            [
                "10.0.0.2:80 10.0.0.4:80 10.0.0.3:80",
                "10.0.0.4:8080 10.0.0.2:8080 10.0.0.3:8080",
                "10.0.0.2:80 10.0.0.4:80 10.0.0.3:80",
            ]
        );
        // The next lookup starts afresh.
        assert_eq!(
            order(dns.addrs("app", 80, t0 + DNS_TTL, three).await),
            "10.0.0.2:80 10.0.0.3:80 10.0.0.4:80"
        );
    }

    #[test]
    fn each_address_gets_a_share_of_the_time_left_but_at_least_two_seconds() {
        let now = Instant::now();
        let s = |d: Instant| d.duration_since(now);
        let ten = now + Duration::from_secs(10);
        assert_eq!(s(attempt_deadline(now, ten, 1)), Duration::from_secs(10));
        assert_eq!(s(attempt_deadline(now, ten, 2)), Duration::from_secs(5));
        assert_eq!(s(attempt_deadline(now, ten, 10)), MIN_ATTEMPT);
        let one = now + Duration::from_secs(1);
        assert_eq!(s(attempt_deadline(now, one, 3)), Duration::from_secs(1));
        assert_eq!(
            attempt_deadline(one, now, 3),
            one,
            "past the deadline: none"
        );
    }

    /// An address that never answers: a listener whose backlog of one is taken, so that
    /// later SYNs are dropped (what a pod that is gone looks like).
    struct Silent {
        addr: SocketAddr,
        _listener: tokio::net::TcpListener,
        _queued: TcpStream,
    }

    async fn silent_listener(ip: &str) -> Silent {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind(SocketAddr::new(ip.parse().expect("ip"), 0))
            .expect("bind");
        let listener = socket.listen(0).expect("listen");
        let addr = listener.local_addr().expect("addr");
        let queued = TcpStream::connect(addr).await.expect("the one queued");
        Silent {
            addr,
            _listener: listener,
            _queued: queued,
        }
    }

    #[tokio::test]
    async fn a_connection_goes_past_addresses_that_refuse_or_never_answer() {
        use std::sync::Mutex as StdMutex;
        let silent = silent_listener("127.0.0.2").await;
        let silent_addr = silent.addr;
        // Refuses: nothing listens there.
        let refused = {
            let l = std::net::TcpListener::bind("127.0.0.3:0").expect("bind");
            l.local_addr().expect("addr")
        };
        let live = tokio::net::TcpListener::bind("127.0.0.4:0")
            .await
            .expect("bind");
        let live_addr = live.local_addr().expect("addr");

        let failures = StdMutex::new(Vec::new());
        let started = Instant::now();
        let deadline = started + Duration::from_secs(6);
        let tcp = connect_first(&[silent_addr, refused, live_addr], deadline, |a| {
            failures.lock().expect("lock").push(a);
            async {}
        })
        .await
        .expect("the live address");
        let took = started.elapsed();
        assert_eq!(tcp.peer_addr().expect("peer"), live_addr);
        assert_eq!(*failures.lock().expect("lock"), [silent_addr, refused]);
        // The silent one got its share (6 s over three addresses), not the whole deadline.
        assert!(
            took >= MIN_ATTEMPT && took < Duration::from_secs(4),
            "{took:?}"
        );

        // None takes one: the last error names its address.
        let e = connect_first(&[refused], deadline, |_| async {}).await;
        let Err(ConnectFailure::Failed(e)) = e else {
            panic!("refused: {e:?}");
        };
        assert!(e.to_string().starts_with(&refused.to_string()), "{e}");
    }

    /// A pool, and a listener standing for the app, named by the target.
    async fn pool_and_app() -> (Pool, tokio::net::TcpListener, Target) {
        let config = super::super::tls_config(None, &[]).expect("client config");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let t =
            target(&format!("http://{}/", listener.local_addr().expect("addr"))).expect("target");
        (Pool::new(Arc::new(config), Arc::default()), listener, t)
    }

    #[tokio::test]
    async fn a_sweep_closes_idle_connections_that_expired_or_that_the_upstream_closed() {
        let (pool, listener, t) = pool_and_app().await;
        let t0 = Instant::now();
        // The sweeps run at `now`: the first connection idled past the timeout by then.
        let now = t0 + IDLE_TIMEOUT + Duration::from_secs(1);
        let mut ends = Vec::new();
        for since in [t0, t0 + Duration::from_secs(2), t0 + Duration::from_secs(2)] {
            let connection = pool.connect(&t, t0 + Duration::from_secs(5)).await;
            let (end, _) = listener.accept().await.expect("accept");
            pool.checkin(&t, connection.expect("connect"), since);
            ends.push(end);
        }
        let idle = || pool.idle.lock().expect("lock").len();
        assert_eq!(idle(), 3);
        pool.sweep(now);
        assert_eq!(idle(), 2, "the expired one");
        // The upstream closes one: the next sweep closes it too, once its FIN is in.
        drop(ends.pop());
        for _ in 0..100 {
            pool.sweep(now);
            if idle() == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(idle(), 1, "the one the upstream closed");
        assert!(
            pool.checkout(&t, now).is_some(),
            "the open one is still there"
        );
    }

    #[tokio::test]
    async fn a_connection_past_its_age_is_closed_not_kept() {
        let (pool, listener, t) = pool_and_app().await;
        let deadline = Instant::now() + Duration::from_secs(5);
        for (age, kept) in [(MAX_AGE - Duration::from_secs(1), 1), (MAX_AGE, 0)] {
            let connection = pool.connect(&t, deadline).await.expect("connect");
            let (_end, _) = listener.accept().await.expect("accept");
            let opened = connection.opened();
            pool.checkin(&t, connection, opened + age);
            let idle = pool.idle.lock().expect("lock").len();
            assert_eq!(idle, kept, "{age:?}");
            pool.idle.lock().expect("lock").clear();
        }
    }

    /// Connects to an https:// URL served by `app` (given the listener), and gives the
    /// connect error's text.
    async fn https_connect_error<F>(app: impl FnOnce(tokio::net::TcpListener) -> F) -> String
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let (pool, listener, _) = pool_and_app().await;
        let port = listener.local_addr().expect("addr").port();
        let t = target(&format!("https://localhost:{port}/")).expect("target");
        let app = tokio::spawn(app(listener));
        let e = pool
            .connect(&t, Instant::now() + Duration::from_secs(5))
            .await
            .err()
            .expect("no connection");
        app.await.expect("app");
        assert!(matches!(e, UpstreamError::Connect(_)), "{e:?}");
        e.to_string()
    }

    /// An https:// URL whose app speaks plain HTTP (it answers the ClientHello with a 400,
    /// as Go's and nginx's servers do) fails to connect, and the error says what it met.
    #[tokio::test]
    async fn a_plain_http_app_behind_an_https_url_is_named_in_the_error() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let e = https_connect_error(|listener| async move {
            let (mut end, _) = listener.accept().await.expect("accept");
            let mut hello = [0u8; 512];
            let _ = end.read(&mut hello).await;
            end.write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
                .await
                .expect("write");
        })
        .await;
        assert!(
            e.ends_with(" (the app answered in plain HTTP: its URL wants http://)"),
            "{e}"
        );
    }

    /// An app whose certificate no trusted CA signed (no `[upstream] ca` for a private CA)
    /// fails to connect, and the error says which setting is missing.
    #[tokio::test]
    async fn an_app_certificate_from_an_untrusted_ca_is_named_in_the_error() {
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        let config = rustls::ServerConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .expect("server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let e = https_connect_error(|listener| async move {
            let (end, _) = listener.accept().await.expect("accept");
            // The client refuses the certificate: the handshake fails on this side too.
            acceptor.accept(end).await.expect_err("refused");
        })
        .await;
        assert!(
            e.ends_with(
                "UnknownIssuer (no trusted CA signed the app's certificate: set [upstream] ca \
                 to the one that did)"
            ),
            "{e}"
        );
    }

    /// A connection still being made when the delivery's time runs out is a timeout (504),
    /// not a failed address.
    #[tokio::test]
    async fn a_connect_cut_at_the_deadline_is_a_timeout_and_blames_no_address() {
        let silent = silent_listener("127.0.0.1").await;
        let (pool, _app, _) = pool_and_app().await;
        let t = target(&format!("http://localhost:{}/", silent.addr.port())).expect("target");
        let started = Instant::now();
        let e = pool
            .connect(&t, started + Duration::from_millis(300))
            .await
            .err()
            .expect("no connection");
        assert!(matches!(e, UpstreamError::ConnectTimeout), "{e:?}");
        assert!(started.elapsed() >= Duration::from_millis(300));
        let entry = pool.dns.entry("localhost");
        let looked = entry.lock().await;
        let looked = looked.as_ref().expect("looked up");
        assert!(!looked.failed && looked.down.iter().all(|d| !d));
    }

    /// What `check`, the logs and config errors show of a URL: no userinfo, no query value.
    #[test]
    fn a_url_is_shown_without_userinfo_or_query_values() {
        for (url, shown) in [
            ("http://app:3000/hooks", "http://app:3000/hooks"),
            ("http://app/x@y", "http://app/x@y"),
            ("http://u:pw@app/x", "http://…@app/x"),
            (
                "http://app/x?key=s3cr3t&mode=a",
                "http://app/x?key=…&mode=…",
            ),
            ("http://app/x?s3cr3t", "http://app/x?…"),
            ("http://app/x?a=1&&b#s3cr3t", "http://app/x?a=…&&…#…"),
            ("https://u:pw@app?key=s3cr3t", "https://…@app?key=…"),
            ("app host/x?k=v", "app host/x?k=…"),
        ] {
            assert_eq!(shown_url(url), shown, "{url}");
        }
        let t = target("http://app:3000/hooks?key=s3cr3t").expect("target");
        assert_eq!(t.to_string(), "http://app:3000/hooks?key=…");
    }

    #[test]
    fn targets_split_the_url_once() {
        let t = target("http://app:3000/hooks?x=1").expect("target");
        assert_eq!(&*t.key, "http://app:3000");
        assert_eq!((t.host.as_str(), t.port), ("app", 3000));
        assert_eq!(t.ip, None, "a name is looked up");
        assert!(
            t.head_prefix()
                .starts_with(b"POST /hooks?x=1 HTTP/1.1\r\nhost: app:3000\r\n")
        );
        assert!(t.tls_name.is_none());

        let t = target("https://[::1]").expect("target");
        assert_eq!((t.host.as_str(), t.port), ("::1", 443));
        assert_eq!(t.ip, Some(Ipv6Addr::LOCALHOST.into()));
        assert!(
            t.head_prefix()
                .starts_with(b"POST / HTTP/1.1\r\nhost: [::1]\r\n")
        );
        assert!(t.tls_name.is_some());

        assert!(target("ftp://x/").is_err());
        assert!(target("/relative").is_err());
        assert!(target("http://user:pw@x/").is_err());

        // Ports: the scheme's when none or an empty one is written; 0 and past 65535 are
        // no port to connect to.
        for (url, port) in [
            ("http://app:/x", 80),
            ("https://app:/x", 443),
            ("http://app:65535/x", 65535),
            ("http://[::1]:1/x", 1),
        ] {
            assert_eq!(target(url).map(|t| t.port), Ok(port), "{url}");
        }
        for url in [
            "http://app:99999/x",
            "http://app:0/x",
            "http://[::1]:65536/x",
        ] {
            let e = target(url).err().unwrap_or_default();
            assert!(e.contains("is not one from 1 to 65535"), "{url}: {e}");
        }
    }
}
