//! A worker thread's keep-alive HTTP/1.1 connections to the upstreams.
//!
//! Written here rather than taken from hyper-util's legacy client, which measured as the
//! largest single cost of a forward after the kernel's: that client is one pool shared by
//! every thread (a mutex and a SipHash map lookup per checkout, the Host header formatted
//! per request, the URI rebuilt). Each worker owns one of these pools and only its own
//! runtime drives its connections, so a checkout is a pop from a short `Vec`, and the
//! connection's address, TLS name, Host header and request-target are worked out once, at
//! config load, in [`Target`].

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
/// At most this many idle connections per worker; more are closed when they come back.
const MAX_IDLE: usize = 1024;

/// Where a source's deliveries go, resolved once from its URL.
#[derive(Debug, Clone)]
pub struct Target {
    /// The URL as configured (for `check` and the logs).
    pub uri: Uri,
    /// `scheme://host:port`: connections are shared by targets with the same key.
    key: Arc<str>,
    /// The host to connect to (an IPv6 literal without its brackets).
    host: String,
    port: u16,
    /// Present for https: the name the certificate must carry.
    tls_name: Option<ServerName<'static>>,
    /// The start of every request's head: the request line (the URL's path and query as
    /// the request-target), `host`, and the headers every forwarded request carries.
    head_prefix: Vec<u8>,
}

impl Target {
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
        let port = authority.port_u16().unwrap_or(if tls { 443 } else { 80 });
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
            self.host.parse::<IpAddr>().into_iter().collect()
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

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.uri.fmt(f)
    }
}

struct Idle {
    key: Arc<str>,
    connection: Connection,
    since: Instant,
}

/// One worker's connections.
pub struct Pool {
    /// Most recently returned last. Only the owning worker's thread takes this lock, so
    /// it is never contended; it is a `Mutex` only because the gateway is shared.
    idle: Mutex<Vec<Idle>>,
    tls: tokio_rustls::TlsConnector,
}

impl Pool {
    pub fn new(tls: Arc<rustls::ClientConfig>) -> Pool {
        Pool {
            idle: Mutex::new(Vec::new()),
            tls: tokio_rustls::TlsConnector::from(tls),
        }
    }

    /// The most recently used open connection to `target`, if any (`now`: the caller's
    /// clock reading, one per request).
    pub fn checkout(&self, target: &Target, now: Instant) -> Option<Connection> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        // Oldest first: drop what has idled too long.
        let expired = idle
            .iter()
            .take_while(|i| now.duration_since(i.since) > IDLE_TIMEOUT)
            .count();
        idle.drain(..expired);
        while let Some(at) = idle.iter().rposition(|i| i.key == target.key) {
            let mut entry = idle.remove(at);
            if entry.connection.is_open() {
                return Some(entry.connection);
            }
        }
        None
    }

    /// Gives a connection back after its answer was read whole; `since`: when the request
    /// it carried started (its idle time counts from a little early, never late).
    pub fn checkin(&self, target: &Target, connection: Connection, since: Instant) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push(Idle {
                key: Arc::clone(&target.key),
                connection,
                since,
            });
        }
    }

    /// A new connection: TCP, then TLS for https.
    pub async fn connect(&self, target: &Target) -> Result<Connection, UpstreamError> {
        let failed = |e: &dyn std::fmt::Display| {
            UpstreamError::Connect(format!("{}:{}: {e}", target.host, target.port))
        };
        let tcp = TcpStream::connect((target.host.as_str(), target.port))
            .await
            .map_err(|e| failed(&e))?;
        // Headers and body go out in one write; Nagle would hold back the next request.
        tcp.set_nodelay(true).map_err(|e| failed(&e))?;
        let stream = match &target.tls_name {
            None => Stream::Tcp(tcp),
            Some(name) => Stream::Tls(Box::new(
                self.tls
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|e| failed(&e))?,
            )),
        };
        Ok(Connection::new(stream))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(url: &str) -> Result<Target, String> {
        Target::from_uri(url.parse().map_err(|_| "not a URI".to_string())?)
    }

    #[test]
    fn targets_split_the_url_once() {
        let t = target("http://app:3000/hooks?x=1").expect("target");
        assert_eq!(&*t.key, "http://app:3000");
        assert_eq!((t.host.as_str(), t.port), ("app", 3000));
        assert!(
            t.head_prefix()
                .starts_with(b"POST /hooks?x=1 HTTP/1.1\r\nhost: app:3000\r\n")
        );
        assert!(t.tls_name.is_none());

        let t = target("https://[::1]").expect("target");
        assert_eq!((t.host.as_str(), t.port), ("::1", 443));
        assert!(
            t.head_prefix()
                .starts_with(b"POST / HTTP/1.1\r\nhost: [::1]\r\n")
        );
        assert!(t.tls_name.is_some());

        assert!(target("ftp://x/").is_err());
        assert!(target("/relative").is_err());
        assert!(target("http://user:pw@x/").is_err());
    }
}
