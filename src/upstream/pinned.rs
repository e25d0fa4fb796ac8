//! The server-certificate check for an `https://` upstream: webpki against the public roots
//! and `[upstream] ca`, and one case more. A self-signed certificate made by `openssl req
//! -x509` carries `basicConstraints CA:TRUE` by default; an operator naturally names it as
//! the app's "CA", and OpenSSL (nginx's `proxy_ssl_trusted_certificate`) accepts it as the
//! app's own, but webpki refuses a CA certificate as a server's (`CaUsedAsEndEntity`), so
//! every delivery got 502. Here a certificate the app presents that is byte for byte one of
//! the `[upstream] ca` file's is accepted when it is valid now and names the URL's host:
//! what OpenSSL checks of a trusted self-signed certificate. Everything else is webpki's.

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{DigitallySignedStruct, SignatureScheme};

#[derive(Debug)]
pub struct PinnedOrWebPki {
    pub webpki: Arc<WebPkiServerVerifier>,
    /// The certificates of `[upstream] ca`.
    pub pinned: Vec<CertificateDer<'static>>,
}

impl ServerCertVerifier for PinnedOrWebPki {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = self.webpki.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        );
        if verified.is_ok() || !self.pinned.iter().any(|p| p == end_entity) {
            return verified;
        }
        rustls::client::verify_server_name(&ParsedCertificate::try_from(end_entity)?, server_name)?;
        crate::tls::valid_at(end_entity, now).map_err(rustls::Error::InvalidCertificate)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}
