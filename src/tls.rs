//! `[server] tls`: rustls with the ring provider, TLS 1.2+, ALPN h2, http/1.1 and http/1.0, and
//! client certificates required when `client_ca` is set (mTLS).

use std::sync::Arc;

use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::TlsFiles;

/// A certificate or key that cannot be used: names the file.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct TlsError {
    pub path: String,
    pub message: String,
}

fn certs(path: &std::path::Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |message: String| TlsError {
        path: path.display().to_string(),
        message,
    };
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

/// *ring*'s ticketer.
fn ticketer() -> Result<Arc<dyn rustls::server::ProducesTickets>, rustls::Error> {
    rustls::crypto::ring::Ticketer::new()
}

/// Loads the files into a server config (PKCS#8, PKCS#1 and SEC1 keys).
pub fn server_config(files: &TlsFiles) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let chain = certs(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| TlsError {
        path: files.key.display().to_string(),
        message: format!("cannot read a private key: {e}"),
    })?;
    let provider = provider();
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError {
            path: files.cert.display().to_string(),
            message: e.to_string(),
        })?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca_path) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in certs(ca_path)? {
                roots.add(c).map_err(|e| TlsError {
                    path: ca_path.display().to_string(),
                    message: e.to_string(),
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| TlsError {
                    path: ca_path.display().to_string(),
                    message: e.to_string(),
                })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|e| TlsError {
        path: files.key.display().to_string(),
        message: format!("certificate and key do not fit: {e}"),
    })?;
    // In the server's order of preference. http/1.0 too: rustls refuses the handshake of a
    // client that names only protocols not listed here (`curl --http1.0` names http/1.0),
    // and hyper's HTTP/1 serves 1.0 as it does in plaintext.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec(), b"http/1.0".to_vec()];
    // Stateless session tickets (TLS 1.2 and 1.3), keys rotated every 6 hours, as nginx
    // does by default. Without them resumption rests on rustls' cache of 256 sessions: past
    // ~128 clients that connect anew per delivery, every handshake is a full one, and
    // throughput at 512 such connections fell to 0.61x of nginx's (README, "Over TLS").
    config.ticketer = ticketer().map_err(|e| TlsError {
        path: files.cert.display().to_string(),
        message: format!("cannot make session ticket keys: {e}"),
    })?;
    Ok(Arc::new(config))
}
