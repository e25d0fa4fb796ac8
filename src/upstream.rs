//! Forwarding to the application (SPEC §5): keep-alive connections pooled per worker
//! (`pool`), one HTTP/1.1 exchange on one of them (`http1`), header hygiene, `timeout_ms` over the whole exchange, Standard Webhooks signing.
//!
//! Takes a forwardable request (made only from a verified delivery); gives the upstream's
//! status, content-type, retry-after and body, or an [`UpstreamError`] (502 / 504).
//! Nothing of the sender's request is passed on but what §5 lists: hookgate frames
//! what it forwards itself.

mod http1;
mod pool;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use bytes::Bytes;
use hmac::{Hmac, KeyInit, Mac};
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, StatusCode};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use sha2::Sha256;

use crate::json::BodyChunks;
use crate::verify::Secret;
use http1::{ExchangeError, Exchanged};
use pool::Pool;
pub use pool::Target;

pub static X_HOOKGATE_SOURCE: HeaderName = HeaderName::from_static("x-hookgate-source");
pub static X_HOOKGATE_PLATFORM: HeaderName = HeaderName::from_static("x-hookgate-platform");
pub static X_HOOKGATE_EVENT_ID: HeaderName = HeaderName::from_static("x-hookgate-event-id");
pub static X_HOOKGATE_EVENT_TYPE: HeaderName = HeaderName::from_static("x-hookgate-event-type");
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static WEBHOOK_ID: HeaderName = HeaderName::from_static("webhook-id");
static WEBHOOK_TIMESTAMP: HeaderName = HeaderName::from_static("webhook-timestamp");
static WEBHOOK_SIGNATURE: HeaderName = HeaderName::from_static("webhook-signature");

/// Why forwarding failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("connection failed: {0}")]
    Connect(String),
    #[error("no whole answer within timeout_ms")]
    Timeout,
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
            UpstreamError::Timeout => "timeout",
            UpstreamError::Invalid(_) => "invalid_response",
            UpstreamError::BodyTooLarge => "body_too_large",
            UpstreamError::Encoding => "content_encoding",
        }
    }
}

/// The upstream's answer, read whole.
#[derive(Debug)]
pub struct UpstreamAnswer {
    pub status: StatusCode,
    pub content_type: Option<HeaderValue>,
    pub retry_after: Option<HeaderValue>,
    pub body: Bytes,
}

/// What to send: built by the pipeline from a verified delivery only.
pub struct Forward<'a> {
    pub target: &'a Target,
    pub timeout: Duration,
    /// The `x-hookgate-*`, `x-request-id`, `x-forwarded-*` and `user-agent` headers.
    pub headers: HeaderMap,
    /// The body, in chunks (one, unless the event shares long texts with the delivery).
    pub body: BodyChunks,
}

/// A worker's upstream client: its connections, with the signing key.
pub struct Upstream {
    pool: Pool,
    signing: Option<Hmac<Sha256>>,
    max_body_bytes: u64,
}

/// An error building the client (an unreadable `[upstream] ca`).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ClientSetupError(pub String);

/// Root certificates: the public web roots, plus the operator's private CA if any.
fn tls_config(ca: Option<&Path>) -> Result<rustls::ClientConfig, ClientSetupError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca {
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| ClientSetupError(format!("{}: {e}", path.display())))?;
        if certs.is_empty() {
            return Err(ClientSetupError(format!(
                "{}: no certificate in it",
                path.display()
            )));
        }
        for c in certs {
            roots
                .add(c)
                .map_err(|e| ClientSetupError(format!("{}: {e}", path.display())))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientSetupError(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    // The forwarded request is one small HTTP/1.1 exchange on a kept-alive connection.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

impl Upstream {
    pub fn new(
        ca: Option<&Path>,
        signing_key: Option<&Secret>,
        max_body_bytes: u64,
    ) -> Result<Upstream, ClientSetupError> {
        let pool = Pool::new(Arc::new(tls_config(ca)?));
        let signing = signing_key.map(|k| {
            <Hmac<Sha256> as KeyInit>::new_from_slice(k.expose()).expect("HMAC takes any key")
        });
        Ok(Upstream {
            pool,
            signing,
            max_body_bytes,
        })
    }

    /// Sends one request and reads the whole answer within `timeout`.
    pub async fn send(&self, fwd: Forward<'_>) -> Result<UpstreamAnswer, UpstreamError> {
        let timeout = fwd.timeout;
        match tokio::time::timeout(timeout, self.exchange(fwd)).await {
            Ok(result) => result,
            Err(_) => Err(UpstreamError::Timeout),
        }
    }

    async fn exchange(&self, fwd: Forward<'_>) -> Result<UpstreamAnswer, UpstreamError> {
        let mut headers = fwd.headers;
        if let Some(mac) = &self.signing {
            sign(mac, &fwd.body, &mut headers);
        }
        let target = fwd.target;
        let head = request_head(target, &headers, &fwd.body);
        let limit = usize::try_from(self.max_body_bytes).unwrap_or(usize::MAX);
        loop {
            let (mut connection, reused) = match self.pool.checkout(target) {
                Some(connection) => (connection, true),
                // Boxed: connecting (TCP, then TLS) holds ~2 KiB of state that a request on a
                // reused connection would otherwise carry too.
                None => (Box::pin(self.pool.connect(target)).await?, false),
            };
            match connection.exchange(&head, &fwd.body, limit).await {
                Ok(Exchanged { answer, reusable }) => {
                    if reusable {
                        self.pool.checkin(target, connection);
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
/// request's own headers, and the body's length.
fn request_head(target: &Target, headers: &HeaderMap, body: &[Bytes]) -> Vec<u8> {
    let prefix = target.head_prefix();
    let mut head = Vec::with_capacity(prefix.len() + 64 * headers.len() + 24);
    head.extend_from_slice(prefix);
    for (name, value) in headers {
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    let length: usize = body.iter().map(Bytes::len).sum();
    head.extend_from_slice(b"content-length: ");
    head.extend_from_slice(length.to_string().as_bytes());
    head.extend_from_slice(b"\r\n\r\n");
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

/// Standard Webhooks: `webhook-signature: v1,<base64 HMAC-SHA256(key, "{id}.{ts}.{body}")>`,
/// where the id is `x-hookgate-event-id` as the headers already carry it.
fn sign(mac: &Hmac<Sha256>, body: &[Bytes], headers: &mut HeaderMap) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    sign_at(mac, body, headers, now);
}

fn sign_at(mac: &Hmac<Sha256>, body: &[Bytes], headers: &mut HeaderMap, ts: u64) {
    let id = headers
        .get(&X_HOOKGATE_EVENT_ID)
        .cloned()
        .unwrap_or_else(|| HeaderValue::from_static(""));
    let ts_text = ts.to_string();
    let mut mac = mac.clone();
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(ts_text.as_bytes());
    mac.update(b".");
    for part in body {
        mac.update(part);
    }
    let signature = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    headers.insert(WEBHOOK_ID.clone(), id);
    if let Ok(v) = HeaderValue::from_str(&ts_text) {
        headers.insert(WEBHOOK_TIMESTAMP.clone(), v);
    }
    if let Ok(v) = HeaderValue::from_str(&format!("v1,{signature}")) {
        headers.insert(WEBHOOK_SIGNATURE.clone(), v);
    }
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

    #[test]
    fn ids_in_headers_are_percent_encoded() {
        assert_eq!(encode_id("abc-123_~!"), "abc-123_~!");
        assert_eq!(encode_id("a b%c"), "a%20b%25c");
        assert_eq!(encode_id("é\u{7f}\n"), "%C3%A9%7F%0A");
    }

    #[test]
    fn standard_webhooks_signature_matches_the_reference() {
        // The Standard Webhooks spec's own example, its body in two chunks.
        let key = base64::engine::general_purpose::STANDARD
            .decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
            .expect("b64");
        let mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&key).expect("key");
        let mut h = HeaderMap::new();
        h.insert(
            X_HOOKGATE_EVENT_ID.clone(),
            HeaderValue::from_static("msg_p5jXN8AQM9LWM0D4loKWxJek"),
        );
        sign_at(
            &mac,
            &[
                Bytes::from_static(b"{\"test\": "),
                Bytes::from_static(b"2432232314}"),
            ],
            &mut h,
            1614265330,
        );
        let header = |name: &str| h.get(name).map(|v| v.as_bytes().to_vec());
        assert_eq!(
            header("webhook-id"),
            Some(b"msg_p5jXN8AQM9LWM0D4loKWxJek".to_vec())
        );
        assert_eq!(header("webhook-timestamp"), Some(b"1614265330".to_vec()));
        assert_eq!(
            header("webhook-signature"),
            Some(b"v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=".to_vec())
        );
    }
}
