//! TLS probes for the doctor: verify a chain against chosen trust anchors, and shake hands with
//! a server only to see its certificate chain (then judge it), without sending any data.

use std::sync::Arc;

use portcullis_certs::crypto_provider;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite};

/// Verifies `chain` (leaf first) for `name` with `anchors` as the only trust anchors, as a TLS
/// client would. `Err` says why in words.
pub(super) fn verify_with(
    anchors: &[CertificateDer<'static>],
    chain: &[CertificateDer<'static>],
    name: &str,
) -> Result<(), String> {
    let mut roots = RootCertStore::empty();
    for anchor in anchors {
        roots
            .add(anchor.clone())
            .map_err(|e| format!("unusable trust anchor: {e}"))?;
    }
    verify_in(roots, chain, name)
}

/// Like [`verify_with`], with a whole root store.
pub(super) fn verify_in(
    roots: RootCertStore,
    chain: &[CertificateDer<'static>],
    name: &str,
) -> Result<(), String> {
    let Some((leaf, intermediates)) = chain.split_first() else {
        return Err("the server sent no certificate".to_owned());
    };
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), crypto_provider())
        .build()
        .map_err(|e| e.to_string())?;
    let server = ServerName::try_from(name.to_owned()).map_err(|e| e.to_string())?;
    verifier
        .verify_server_cert(leaf, intermediates, &server, &[], UnixTime::now())
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// The chain a TLS server at the other end of `io` presents for `name`, unverified (judge it
/// with [`verify_in`]); the connection is closed after the handshake.
pub(super) async fn server_chain<IO>(
    io: IO,
    name: &str,
) -> Result<Vec<CertificateDer<'static>>, String>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let capture = Arc::new(Capture::default());
    let config = rustls::ClientConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::clone(&capture) as Arc<dyn ServerCertVerifier>)
        .with_no_client_auth();
    let server = ServerName::try_from(name.to_owned()).map_err(|e| e.to_string())?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let handshake = tokio::time::timeout(super::PROBE_TIMEOUT, connector.connect(server, io)).await;
    match handshake {
        Err(_) => return Err("no TLS handshake within 5 s".to_owned()),
        Ok(Err(e)) => return Err(format!("TLS handshake failed: {e}")),
        Ok(Ok(_stream)) => {}
    }
    let chain = capture.chain.lock().map(|c| c.clone()).unwrap_or_default();
    if chain.is_empty() {
        return Err("the server sent no certificate".to_owned());
    }
    Ok(chain)
}

/// The issuer's distinguished name, for findings ("issued by CN=Corp Inspection CA").
pub(super) fn issuer(cert: &CertificateDer<'_>) -> String {
    match x509_parser::parse_x509_certificate(cert) {
        Ok((_, c)) => c.tbs_certificate.issuer.to_string(),
        Err(_) => "an unreadable issuer".to_owned(),
    }
}

/// Accepts any chain but keeps it; handshake signatures are still checked, so the chain is the
/// one the server holds the key for.
#[derive(Debug, Default)]
struct Capture {
    chain: std::sync::Mutex<Vec<CertificateDer<'static>>>,
}

impl ServerCertVerifier for Capture {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Ok(mut chain) = self.chain.lock() {
            chain.push(end_entity.clone().into_owned());
            chain.extend(intermediates.iter().map(|c| c.clone().into_owned()));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = crypto_provider().signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, &algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = crypto_provider().signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, &algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        crypto_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}
