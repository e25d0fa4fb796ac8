//! `[server] tls`: rustls with the ring provider, TLS 1.2+, ALPN h2, http/1.1 and http/1.0, and
//! client certificates required when `client_ca` is set (mTLS).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::{TlsFiles, read_file};

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
    pem_certs(path).map_err(|message| TlsError::new(field, path, message))
}

/// The certificates in the PEM file at `path`, at least one (also for `[upstream] ca`); the
/// error says what is wrong with the file, without its path.
pub fn pem_certs(path: &std::path::Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes = read_file(path).map_err(|e| format!("cannot read certificates: {e}"))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("bad PEM: {e}"))?;
    if certs.is_empty() {
        return Err(if is_der(&bytes) {
            "no certificate in it: it is DER, and hookgate reads PEM (`openssl x509 -inform der -in FILE -out FILE.pem`)".into()
        } else {
            "no certificate in it".into()
        });
    }
    Ok(certs)
}

/// The first private key in the PEM file at `path` (PKCS#8, PKCS#1 or SEC1). An encrypted
/// or DER one is named as such: the PEM reader skips the first and cannot read the second,
/// and would say only "no items found" or a base64 error.
fn private_key(path: &std::path::Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read_file(path)
        .map_err(|e| TlsError::new("key", path, format!("cannot read a private key: {e}")))?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        let holds = |label: &[u8]| pem.windows(label.len()).any(|w| w == label);
        let message = if holds(ENCRYPTED_KEY) || holds(ENCRYPTED_TRADITIONAL_KEY) {
            "the private key is encrypted; hookgate reads an unencrypted one (`openssl pkey -in KEY -out PLAIN`, kept as private as the secrets)".to_string()
        } else if is_der(&pem) {
            "cannot read a private key: it is DER, and hookgate reads PEM (`openssl pkey -inform der -in KEY -out KEY.pem`)".to_string()
        } else {
            format!("cannot read a private key: {e}")
        };
        TlsError::new("key", path, message)
    })
}

/// The chain with its key, whose first certificate must be one rustls can read, and the
/// key's.
fn certified_key(
    files: &TlsFiles,
    chain: Vec<CertificateDer<'static>>,
    key: Arc<dyn rustls::sign::SigningKey>,
) -> Result<rustls::sign::CertifiedKey, TlsError> {
    let fits = |cert: &CertificateDer<'static>| {
        rustls::sign::CertifiedKey::new(vec![cert.clone()], Arc::clone(&key)).keys_match()
    };
    // `certs` gave at least one.
    let leaf = chain
        .first()
        .map_or(Err(rustls::Error::NoCertificatesPresented), fits);
    match leaf {
        // A key that cannot tell its public half: rustls takes it as it is, so do we.
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            Ok(rustls::sign::CertifiedKey::new(chain, key))
        }
        Err(rustls::Error::InconsistentKeys(_)) => {
            Err(match chain.iter().skip(1).position(|c| fits(c).is_ok()) {
                Some(i) => TlsError::new(
                    "cert",
                    &files.cert,
                    format!(
                        "the key ({}) fits certificate {} of it, not the first: the server's own certificate comes first, then the ones that signed it",
                        files.key.display(),
                        i + 2
                    ),
                ),
                None => TlsError::new(
                    "key",
                    &files.key,
                    format!("does not fit the certificate ({})", files.cert.display()),
                ),
            })
        }
        Err(e) => {
            let message = if chain
                .first()
                .and_then(|leaf| version(leaf))
                .is_some_and(|v| v != x509_cert::certificate::Version::V3)
            {
                "the first certificate is not X.509 v3 (`openssl x509 -req` without extensions makes v1), which rustls does not take: make it with a subjectAltName, which makes it v3".to_string()
            } else {
                format!("the first certificate cannot be used: {e}")
            };
            Err(TlsError::new("cert", &files.cert, message))
        }
    }
}

/// Whether `now` is within the certificate's validity; `Err` says which end it is past.
pub fn valid_at(
    cert: &CertificateDer<'_>,
    now: rustls_pki_types::UnixTime,
) -> Result<(), rustls::CertificateError> {
    let (not_before, not_after) = validity(cert).ok_or(rustls::CertificateError::BadEncoding)?;
    let now = now.as_secs();
    if now < not_before.as_secs() {
        Err(rustls::CertificateError::NotValidYet)
    } else if now > not_after.as_secs() {
        Err(rustls::CertificateError::Expired)
    } else {
        Ok(())
    }
}

/// The client-certificate check with `client_ca`: webpki, and one case more, as for the
/// upstream (`upstream::pinned`). A partner's self-signed certificate made by `openssl req
/// -x509` carries `basicConstraints CA:TRUE`; an operator naturally names it as the
/// `client_ca`, and OpenSSL (nginx's `ssl_client_certificate`) accepts the client that
/// presents it, but webpki refuses a CA certificate as a client's (`CaUsedAsEndEntity`), so
/// its handshake failed. Here a client certificate that is byte for byte one of the
/// `client_ca` file's is accepted while it is valid. Everything else is webpki's.
#[derive(Debug)]
struct PinnedOrWebPkiClient {
    webpki: Arc<dyn rustls::server::danger::ClientCertVerifier>,
    /// The certificates of `client_ca`.
    pinned: Vec<CertificateDer<'static>>,
}

impl rustls::server::danger::ClientCertVerifier for PinnedOrWebPkiClient {
    fn offer_client_auth(&self) -> bool {
        self.webpki.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.webpki.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.webpki.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        let verified = self
            .webpki
            .verify_client_cert(end_entity, intermediates, now);
        if verified.is_ok() || !self.pinned.iter().any(|p| p == end_entity) {
            return verified;
        }
        valid_at(end_entity, now).map_err(rustls::Error::InvalidCertificate)?;
        Ok(rustls::server::danger::ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// A DER certificate's X.509 version, if it parses.
fn version(der: &[u8]) -> Option<x509_cert::certificate::Version> {
    use x509_cert::der::Decode;
    let cert = x509_cert::Certificate::from_der(der).ok()?;
    Some(cert.tbs_certificate().version())
}

/// Whether a file's `bytes` are one whole DER value (an ASN.1 SEQUENCE whose length is the
/// file's): a certificate or key exported in binary (Windows' `.cer`, Java's tools) rather
/// than PEM. By hand, from the header alone: only the hint in an error message hangs on it.
fn is_der(bytes: &[u8]) -> bool {
    let (header, content) = match bytes.get(..2) {
        Some([0x30, n]) if *n < 0x80 => (2, usize::from(*n)),
        Some([0x30, n @ 0x81..=0x83]) => {
            let width = usize::from(n - 0x80);
            let Some(length) = bytes.get(2..2 + width) else {
                return false;
            };
            let content = length.iter().fold(0, |a, &b| (a << 8) | usize::from(b));
            (2 + width, content)
        }
        _ => return false,
    };
    header + content == bytes.len()
}

/// A PKCS#8 key encrypted with a passphrase: its PEM label.
const ENCRYPTED_KEY: &[u8] = b"-----BEGIN ENCRYPTED PRIVATE KEY-----";
/// A PKCS#1 or SEC1 key encrypted the OpenSSL way: the header inside its PEM block.
const ENCRYPTED_TRADITIONAL_KEY: &[u8] = b"Proc-Type: 4,ENCRYPTED";

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
    let key = private_key(&files.key)?;
    let provider = provider();
    // Loaded here, not by `with_single_cert`, so that a key *ring* cannot sign with, a
    // certificate rustls cannot read and a key that fits another certificate are each named
    // as such: its error says "does not fit the certificate" for all of them.
    let signing_key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| {
            TlsError::new(
                "key",
                &files.key,
                format!(
                    "a kind of key this build cannot sign with (it takes RSA of 2048 to 4096 bits, ECDSA P-256 or P-384, Ed25519): {e}"
                ),
            )
        })?;
    let certified = certified_key(files, chain, signing_key)?;
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::new("cert", &files.cert, e.to_string()))?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca_path) => {
            let mut roots = rustls::RootCertStore::empty();
            let ca_err = |e: String| TlsError::new("client_ca", ca_path, e);
            let pinned = certs("client_ca", ca_path)?;
            for c in &pinned {
                roots.add(c.clone()).map_err(|e| ca_err(e.to_string()))?;
            }
            let webpki = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| ca_err(e.to_string()))?;
            builder.with_client_cert_verifier(Arc::new(PinnedOrWebPkiClient { webpki, pinned }))
        }
    };
    let mut config =
        builder.with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(certified)));
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

    /// A CA certificate's parameters, its subject named `common_name`.
    fn ca_params(common_name: &str) -> rcgen::CertificateParams {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, common_name);
        params
    }

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
        assert_eq!(
            mismatched,
            format!(
                "server.tls.key: {}: does not fit the certificate ({})",
                p("other.key"),
                p("c.crt")
            )
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

    /// Throwaway keys made for this test by openssl: ones *ring* cannot sign with (Ed448,
    /// ECDSA P-521), and an Ed25519 key under a passphrase.
    const ED448_KEY: &str = "-----BEGIN PRIVATE KEY-----
MEcCAQAwBQYDK2VxBDsEOUIxj93870BuZ17jmFNbJujrQzwjcmM2TKEoERzOqjVy
0+7TXMSTRtRnD68RN/5ccznstOGqXjm3xg==
-----END PRIVATE KEY-----
";
    const P521_KEY: &str = "-----BEGIN PRIVATE KEY-----
MIHuAgEAMBAGByqGSM49AgEGBSuBBAAjBIHWMIHTAgEBBEIB7wx6a64mv9w0+ca9
vRq73zAy/1JWG6JxAg6dJvG3lLnU0/wjDAowfxVVnFJC0xQunbT8vju7jJpYKICG
A4qAQXWhgYkDgYYABAHcXR5OcH3NhpQOAs7m+fWPWzqNdoPasxs5lregWUGeoi/m
CAHKWOamcDajvo1s2XP/MjPhBdi44vdGBuWADnBeygCaufdKDyQX3KNXMtI2EJaT
z2Yi7sAEeY2kLxSD7AA3Ulm0sxTyqChFn0Gfm1LZvl90nY5kd/xWpPa4yY11QvQE
qw==
-----END PRIVATE KEY-----
";
    const ENCRYPTED_ED25519_KEY: &str = "-----BEGIN ENCRYPTED PRIVATE KEY-----
MIGbMFcGCSqGSIb3DQEFDTBKMCkGCSqGSIb3DQEFDDAcBAir4+dA+FWSYAICCAAw
DAYIKoZIhvcNAgkFADAdBglghkgBZQMEASoEEEsiuuEUClZvJbs03HHlQBUEQFA4
R1I5sYsa9Jtgaqe5rhEpmijtfsrmaiJjnUSJLO+edQsqpqFkgzL1uBT22eesQUHu
k/AH8QZOv7G/DTIsHGA=
-----END ENCRYPTED PRIVATE KEY-----
";

    /// A key that *ring* cannot sign with, or one under a passphrase, is named as what it
    /// is, not as a key that "does not fit the certificate" or a file with "no items".
    #[test]
    fn an_unusable_or_encrypted_key_says_so() {
        let dir = tempfile::tempdir().expect("temp dir");
        let files = cert_until(dir.path(), (2030, 1, 2));
        for (name, pem, expected) in [
            (
                "ed448.key",
                ED448_KEY,
                "a kind of key this build cannot sign with (it takes RSA of 2048 to 4096 bits, ECDSA P-256 or P-384, Ed25519): ",
            ),
            (
                "p521.key",
                P521_KEY,
                "a kind of key this build cannot sign with (it takes RSA of 2048 to 4096 bits, ECDSA P-256 or P-384, Ed25519): ",
            ),
            (
                "enc.key",
                ENCRYPTED_ED25519_KEY,
                "the private key is encrypted; hookgate reads an unencrypted one",
            ),
        ] {
            let key = dir.path().join(name);
            std::fs::write(&key, pem).expect("write");
            let error = match server_config(&TlsFiles {
                key: key.clone(),
                ..files.clone()
            }) {
                Ok(_) => panic!("{name} loaded"),
                Err(e) => e.to_string(),
            };
            let prefix = format!("server.tls.key: {}: {expected}", key.display());
            assert!(error.starts_with(&prefix), "{name}: {error}");
        }
        // The OpenSSL way of encrypting a PKCS#1 key (`openssl genrsa -aes256 -traditional`),
        // which the PEM reader cannot even decode.
        let traditional = dir.path().join("traditional.key");
        std::fs::write(
            &traditional,
            "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-256-CBC,052C7F2EF743948ED0D920B8B4D160C4\n\nMIIB\n-----END RSA PRIVATE KEY-----\n",
        )
        .expect("write");
        let error = server_config(&TlsFiles {
            key: traditional.clone(),
            ..files.clone()
        })
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(
            error.starts_with(&format!(
                "server.tls.key: {}: the private key is encrypted",
                traditional.display()
            )),
            "{error}"
        );
        // A file with no key at all still says that.
        let empty = dir.path().join("empty.key");
        std::fs::write(&empty, "").expect("write");
        let error = server_config(&TlsFiles {
            key: empty.clone(),
            ..files
        })
        .err()
        .map(|e| e.to_string());
        assert_eq!(
            error,
            Some(format!(
                "server.tls.key: {}: cannot read a private key: no items found",
                empty.display()
            ))
        );
    }

    /// A certificate or key in DER, not PEM, is named as DER, with the command that converts
    /// it; a file that only begins like DER is not.
    #[test]
    fn a_der_certificate_or_key_is_named_as_der() {
        let dir = tempfile::tempdir().expect("temp dir");
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".into()])
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        let (pem_cert, pem_key) = (dir.path().join("c.crt"), dir.path().join("c.key"));
        std::fs::write(&pem_cert, cert.pem()).expect("write");
        std::fs::write(&pem_key, key.serialize_pem()).expect("write");
        let (der_cert, der_key) = (dir.path().join("c.cer"), dir.path().join("c.der"));
        std::fs::write(&der_cert, cert.der()).expect("write");
        std::fs::write(&der_key, key.serialize_der()).expect("write");
        let error = |cert: &std::path::Path, key: &std::path::Path| {
            server_config(&TlsFiles {
                cert: cert.to_path_buf(),
                key: key.to_path_buf(),
                client_ca: None,
            })
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
        };
        assert_eq!(
            error(&der_cert, &pem_key),
            format!(
                "server.tls.cert: {}: no certificate in it: it is DER, and hookgate reads PEM (`openssl x509 -inform der -in FILE -out FILE.pem`)",
                der_cert.display()
            )
        );
        assert_eq!(
            error(&pem_cert, &der_key),
            format!(
                "server.tls.key: {}: cannot read a private key: it is DER, and hookgate reads PEM (`openssl pkey -inform der -in KEY -out KEY.pem`)",
                der_key.display()
            )
        );
        let der = |p: &std::path::Path| is_der(&std::fs::read(p).expect("read"));
        assert!(der(&der_cert) && der(&der_key));
        // The same bytes one short, or one over, are not one DER value; nor is text.
        let cut = dir.path().join("cut");
        std::fs::write(&cut, &cert.der()[..cert.der().len() - 1]).expect("write");
        let long = dir.path().join("long");
        std::fs::write(&long, [cert.der().as_ref(), b"\n"].concat()).expect("write");
        assert!(!der(&cut) && !der(&long) && !der(&pem_cert));
        assert_eq!(
            error(&cut, &pem_key),
            format!("server.tls.cert: {}: no certificate in it", cut.display())
        );
    }

    /// A throwaway self-signed X.509 v1 certificate and its key, made for this test by
    /// `openssl x509 -req` without extensions.
    const V1_CERT: &str = "-----BEGIN CERTIFICATE-----
MIIBFTCBvQIUbhUqlBdBn7Mo/IMaAGwSGJPsqJMwCgYIKoZIzj0EAwIwDTELMAkG
A1UEAwwCdjEwIBcNMjYxMjA2MjAwNjM3WhgPMjEyNjExMTIyMDA2MzdaMA0xCzAJ
BgNVBAMMAnYxMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEAostruueetspYsSg
FhF+LgY3olaAIVcOlc1rB4R8G9P4008CsqwNzYjtHF5Tg8I2mAH/mx8w3TTJdQMJ
3ClysTAKBggqhkjOPQQDAgNHADBEAiBS5CdK2OE+uYY5xWGwum/t/HzsC+d3NeKo
qr6+g60ouAIgGWYlpWoSqJMV4zQHNfNmH9CkMI+su5U7WZbfl5TpSbw=
-----END CERTIFICATE-----
";
    const V1_KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg3bZjPBQ1OTOxWVpK
16l+t0nJPo/13bYMigDhZIxVAQKhRANCAAQCiy2u65562ylixKAWEX4uBjeiVoAh
Vw6VzWsHhHwb0/jTTwKyrA3NiO0cXlODwjaYAf+bHzDdNMl1AwncKXKx
-----END PRIVATE KEY-----
";

    /// A chain written leaf last, and a certificate rustls cannot read, are named as what
    /// they are, not as a key that "does not fit".
    #[test]
    fn a_chain_out_of_order_or_a_v1_certificate_says_so() {
        let dir = tempfile::tempdir().expect("temp dir");
        let ca = rcgen::CertifiedIssuer::self_signed(
            ca_params("test CA"),
            rcgen::KeyPair::generate().expect("key"),
        )
        .expect("ca");
        let key = rcgen::KeyPair::generate().expect("key");
        let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".into()])
            .expect("params")
            .signed_by(&key, &ca)
            .expect("leaf");
        let p = |name: &str| dir.path().join(name);
        std::fs::write(p("leaf.key"), key.serialize_pem()).expect("write");
        std::fs::write(p("right.crt"), [leaf.pem(), ca.pem()].concat()).expect("write");
        std::fs::write(p("wrong.crt"), [ca.pem(), leaf.pem()].concat()).expect("write");
        std::fs::write(p("v1.crt"), V1_CERT).expect("write");
        std::fs::write(p("v1.key"), V1_KEY).expect("write");
        // A PEM block whose bytes are no certificate at all (of no version).
        std::fs::write(
            p("junk.crt"),
            "-----BEGIN CERTIFICATE-----\nMAMBAgM=\n-----END CERTIFICATE-----\n",
        )
        .expect("write");
        let load = |cert: &str, key: &str| {
            server_config(&TlsFiles {
                cert: p(cert),
                key: p(key),
                client_ca: None,
            })
            .map(|_| ())
            .map_err(|e| e.to_string())
        };
        assert_eq!(load("right.crt", "leaf.key"), Ok(()));
        assert_eq!(
            load("wrong.crt", "leaf.key"),
            Err(format!(
                "server.tls.cert: {}: the key ({}) fits certificate 2 of it, not the first: the server's own certificate comes first, then the ones that signed it",
                p("wrong.crt").display(),
                p("leaf.key").display()
            ))
        );
        assert_eq!(
            load("v1.crt", "v1.key"),
            Err(format!(
                "server.tls.cert: {}: the first certificate is not X.509 v3 (`openssl x509 -req` without extensions makes v1), which rustls does not take: make it with a subjectAltName, which makes it v3",
                p("v1.crt").display()
            ))
        );
        let junk = load("junk.crt", "leaf.key").expect_err("refused");
        assert!(
            junk.starts_with(&format!(
                "server.tls.cert: {}: the first certificate cannot be used: ",
                p("junk.crt").display()
            )),
            "{junk}"
        );
    }

    /// What a client is told when asked for its certificate: the subjects of the
    /// `client_ca` file's certificates, so that a client holding several (a partner's
    /// gateway) can pick the one they signed.
    #[test]
    fn a_client_is_asked_for_a_certificate_by_the_client_cas_names() {
        #[derive(Debug, Default)]
        struct Asked(std::sync::Mutex<Vec<Vec<u8>>>);
        impl rustls::client::ResolvesClientCert for Asked {
            fn resolve(
                &self,
                hints: &[&[u8]],
                _: &[rustls::SignatureScheme],
            ) -> Option<Arc<rustls::sign::CertifiedKey>> {
                if let Ok(mut asked) = self.0.lock() {
                    *asked = hints.iter().map(|h| h.to_vec()).collect();
                }
                None
            }
            fn has_certs(&self) -> bool {
                true
            }
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let mut files = cert_until(dir.path(), (2100, 1, 1));
        let ca = ca_params("partner client CA")
            .self_signed(&rcgen::KeyPair::generate().expect("key"))
            .expect("ca");
        std::fs::write(dir.path().join("ca.crt"), ca.pem()).expect("write");
        files.client_ca = Some(dir.path().join("ca.crt"));
        let server_tls = server_config(&files).expect("server config");

        let mut roots = rustls::RootCertStore::empty();
        for c in pem_certs(&files.cert).expect("certs") {
            roots.add(c).expect("root");
        }
        let asked = Arc::new(Asked::default());
        let client_config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_client_cert_resolver(Arc::clone(&asked) as _);
        let name = rustls_pki_types::ServerName::try_from("127.0.0.1").expect("name");
        let mut client =
            rustls::ClientConnection::new(Arc::new(client_config), name).expect("client");
        let mut server = rustls::ServerConnection::new(server_tls.config).expect("server");
        // The handshake in memory, until the client has read the certificate request (it
        // then sends none, and the server refuses it: not what this test is about).
        for _ in 0..4 {
            let mut wire = Vec::new();
            client.write_tls(&mut wire).expect("client writes");
            server.read_tls(&mut wire.as_slice()).expect("server reads");
            let _ = server.process_new_packets();
            wire.clear();
            server.write_tls(&mut wire).expect("server writes");
            client.read_tls(&mut wire.as_slice()).expect("client reads");
            let _ = client.process_new_packets();
        }
        let asked = asked.0.lock().map(|a| a.clone()).unwrap_or_default();
        let [subject] = &asked[..] else {
            panic!("one name expected: {asked:?}");
        };
        let cn = b"partner client CA";
        assert!(subject.windows(cn.len()).any(|w| w == cn), "{subject:?}");
    }

    /// A certificate is good from its first second to its last (RFC 5280 §4.1.2.5: both
    /// ends inclusive), and before or after them says which end it is past.
    #[test]
    fn a_certificate_is_valid_from_its_first_second_to_its_last() {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".into()]).expect("params");
        params.not_before = rcgen::date_time_ymd(2030, 1, 1);
        params.not_after = rcgen::date_time_ymd(2031, 1, 1);
        let cert = params.self_signed(&key).expect("cert");
        // 2030-01-01 and 2031-01-01 at 00:00 UTC, in Unix seconds.
        let (first, last) = (1_893_456_000, 1_924_992_000);
        let at = |secs: u64| {
            valid_at(
                cert.der(),
                rustls_pki_types::UnixTime::since_unix_epoch(Duration::from_secs(secs)),
            )
        };
        use rustls::CertificateError::{Expired, NotValidYet};
        assert_eq!(at(first - 86_400), Err(NotValidYet));
        assert_eq!(at(first - 1), Err(NotValidYet));
        assert_eq!(at(first), Ok(()));
        assert_eq!(at(last), Ok(()));
        assert_eq!(at(last + 1), Err(Expired));
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
        // 14 days to the second is not yet "within 14 days".
        assert_eq!(expiry_warning(path, at, at - 14 * day), None);
        let edge = expiry_warning(path, at, at - 14 * day + Duration::from_secs(1));
        assert!(edge.is_some_and(|w| w.contains("in 335 hours")));
    }

    /// DER is told by its header's length, in each form: short (under 0x80), long (0x81 to
    /// 0x83 length bytes), and not 0x80 (BER's "indefinite", which DER has not).
    #[test]
    fn a_der_value_is_told_by_its_length_in_every_form() {
        let sized = |header: &[u8], content: usize| {
            let mut bytes = header.to_vec();
            bytes.resize(header.len() + content, 0);
            bytes
        };
        assert!(is_der(&sized(&[0x30, 0x00], 0)));
        assert!(is_der(&sized(&[0x30, 0x7f], 0x7f)));
        assert!(!is_der(&sized(&[0x30, 0x03], 2)), "one short");
        assert!(!is_der(&sized(&[0x30, 0x80], 0x80)), "no length");
        assert!(is_der(&sized(&[0x30, 0x81, 0x80], 0x80)));
        assert!(is_der(&sized(&[0x30, 0x82, 0x01, 0x00], 0x100)));
        assert!(!is_der(&[0x30, 0x82, 0x01]), "the length cut short");
        assert!(!is_der(&sized(&[0x31, 0x00], 0)), "a SET, not a SEQUENCE");
    }
}
