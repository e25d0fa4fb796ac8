//! `[server] tls`: rustls with the ring provider, TLS 1.2+, ALPN h2, http/1.1 and http/1.0, and
//! client certificates required when `client_ca` is set (mTLS).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::TlsFiles;

/// A certificate or key that cannot be used: names the field (`cert`, `key`, `client_ca`)
/// and the file.
#[derive(Debug, thiserror::Error)]
#[error("server.tls.{field}: {path}: {message}")]
pub struct TlsError {
    pub field: &'static str,
    pub path: String,
    pub message: String,
}

impl TlsError {
    fn new(field: &'static str, path: &std::path::Path, message: impl Into<String>) -> TlsError {
        TlsError {
            field,
            path: path.display().to_string(),
            message: message.into(),
        }
    }
}

fn certs(
    field: &'static str,
    path: &std::path::Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |message: String| TlsError::new(field, path, message);
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(format!("cannot read certificates: {e}")))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(format!("bad PEM: {e}")))?;
    if certs.is_empty() {
        return Err(err("no certificate in it".into()));
    }
    Ok(certs)
}

/// The crypto provider of every TLS config, server and upstream client: *ring*, a lean build
/// (aws-lc-rs, rustls' default, compiles the whole AWS-LC C library: a long build on 2
/// cores). rustls 0.23.48 deprecates `ring::default_provider` because *ring* has no
/// post-quantum key exchange (X25519MLKEM768); the README says so under TLS.
#[allow(deprecated)]
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The listener's TLS: rustls' config, and when its certificate expires.
pub struct ServerTls {
    pub config: Arc<rustls::ServerConfig>,
    /// The leaf certificate's `notAfter`.
    pub not_after: Option<SystemTime>,
}

/// A DER certificate's validity, `notBefore` and `notAfter`, as durations since the Unix
/// epoch. By `x509-cert`: rustls checks a certificate against its key, and webpki against
/// the clock, but neither says when it expires.
pub fn validity(der: &[u8]) -> Option<(Duration, Duration)> {
    use x509_cert::der::Decode;
    let cert = x509_cert::Certificate::from_der(der).ok()?;
    let validity = cert.tbs_certificate().validity();
    Some((
        validity.not_before.to_unix_duration(),
        validity.not_after.to_unix_duration(),
    ))
}

/// Under this long before `notAfter`, startup, `check` and reloads warn.
const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 24 * 3600);

/// A warning when the certificate at `path` has expired or expires within 14 days.
pub fn expiry_warning(
    path: &std::path::Path,
    not_after: SystemTime,
    now: SystemTime,
) -> Option<String> {
    let at = not_after
        .duration_since(SystemTime::UNIX_EPOCH)
        .ok()
        .and_then(|d| i64::try_from(d.as_millis()).ok())
        .and_then(crate::time::Millis::new)
        .map_or_else(|| "?".to_string(), |m| m.to_rfc3339());
    match not_after.duration_since(now) {
        Err(_) => Some(format!(
            "warning: server.tls cert {}: expired at {at}; clients that check it refuse the handshake",
            path.display()
        )),
        Ok(left) if left < EXPIRY_WARNING => Some(format!(
            "warning: server.tls cert {}: expires at {at}, in {} hours",
            path.display(),
            left.as_secs() / 3600
        )),
        Ok(_) => None,
    }
}

/// Loads the files into a server config (PKCS#8, PKCS#1 and SEC1 keys).
pub fn server_config(files: &TlsFiles) -> Result<ServerTls, TlsError> {
    let chain = certs("cert", &files.cert)?;
    let expires = chain
        .first()
        .and_then(|leaf| validity(leaf))
        .and_then(|(_, not_after)| SystemTime::UNIX_EPOCH.checked_add(not_after));
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| TlsError::new("key", &files.key, format!("cannot read a private key: {e}")))?;
    let provider = provider();
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::new("cert", &files.cert, e.to_string()))?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca_path) => {
            let mut roots = rustls::RootCertStore::empty();
            let ca_err = |e: String| TlsError::new("client_ca", ca_path, e);
            for c in certs("client_ca", ca_path)? {
                roots.add(c).map_err(|e| ca_err(e.to_string()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| ca_err(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|e| {
        TlsError::new(
            "key",
            &files.key,
            format!(
                "does not fit the certificate ({}): {e}",
                files.cert.display()
            ),
        )
    })?;
    // In the server's order of preference. http/1.0 too: rustls refuses the handshake of a
    // client that names only protocols not listed here (`curl --http1.0` names http/1.0),
    // and hyper's HTTP/1 serves 1.0 as it does in plaintext.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec(), b"http/1.0".to_vec()];
    // Stateless session tickets (TLS 1.2 and 1.3), keys rotated every 6 hours, as nginx
    // does by default. Without them resumption rests on rustls' cache of 256 sessions: past
    // ~128 clients that connect anew per delivery, every handshake is a full one, and
    // throughput at 512 such connections fell to 0.61x of nginx's (README, "Over TLS").
    config.ticketer = rustls::crypto::ring::Ticketer::new().map_err(|e| {
        TlsError::new(
            "cert",
            &files.cert,
            format!("cannot make session ticket keys: {e}"),
        )
    })?;
    Ok(ServerTls {
        config: Arc::new(config),
        not_after: expires,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed certificate for 127.0.0.1 valid until the given day, and its key, as
    /// PEM files in `dir`.
    fn cert_until(dir: &std::path::Path, (y, m, d): (i32, u8, u8)) -> TlsFiles {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".into()]).expect("params");
        params.not_after = rcgen::date_time_ymd(y, m, d);
        let cert = params.self_signed(&key).expect("cert");
        std::fs::write(dir.join("c.crt"), cert.pem()).expect("write");
        std::fs::write(dir.join("c.key"), key.serialize_pem()).expect("write");
        TlsFiles {
            cert: dir.join("c.crt"),
            key: dir.join("c.key"),
            client_ca: None,
        }
    }

    #[test]
    fn the_certificate_expiry_is_read_from_the_leaf() {
        let dir = tempfile::tempdir().expect("temp dir");
        let tls = server_config(&cert_until(dir.path(), (2030, 1, 2))).expect("loads");
        // 2030-01-02T00:00:00Z
        assert_eq!(
            tls.not_after,
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_893_542_400))
        );
    }

    /// Each file that cannot be used is named with its field, as config errors are.
    #[test]
    fn an_unusable_file_is_named_with_its_field() {
        let dir = tempfile::tempdir().expect("temp dir");
        let files = cert_until(dir.path(), (2030, 1, 2));
        let other = rcgen::KeyPair::generate().expect("key");
        std::fs::write(dir.path().join("other.key"), other.serialize_pem()).expect("write");
        let error = |files: TlsFiles| match server_config(&files) {
            Ok(_) => panic!("loaded"),
            Err(e) => e.to_string(),
        };
        let p = |name: &str| dir.path().join(name).display().to_string();
        let mismatched = error(TlsFiles {
            key: dir.path().join("other.key"),
            ..files.clone()
        });
        assert!(
            mismatched.starts_with(&format!(
                "server.tls.key: {}: does not fit the certificate ({}): ",
                p("other.key"),
                p("c.crt")
            )),
            "{mismatched}"
        );
        let key_as_cert = error(TlsFiles {
            cert: files.key.clone(),
            ..files.clone()
        });
        assert_eq!(
            key_as_cert,
            format!("server.tls.cert: {}: no certificate in it", p("c.key"))
        );
        let key_as_ca = error(TlsFiles {
            client_ca: Some(files.key.clone()),
            ..files.clone()
        });
        assert_eq!(
            key_as_ca,
            format!("server.tls.client_ca: {}: no certificate in it", p("c.key"))
        );
    }

    #[test]
    fn an_expired_or_expiring_certificate_is_warned_about() {
        let path = std::path::Path::new("certs/server.crt");
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_893_542_400);
        let day = Duration::from_secs(24 * 3600);
        let expired = expiry_warning(path, at, at + day).expect("a warning");
        assert!(
            expired.contains("certs/server.crt")
                && expired.contains("expired at 2030-01-02T00:00:00.000Z"),
            "{expired}"
        );
        let soon = expiry_warning(path, at, at - 3 * day).expect("a warning");
        assert!(
            soon.contains("expires at 2030-01-02T00:00:00.000Z, in 72 hours"),
            "{soon}"
        );
        assert_eq!(expiry_warning(path, at, at - 15 * day), None);
    }
}
