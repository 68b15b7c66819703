//! The TLS client side of interception: which roots are trusted, ALPN mirroring, and turning a
//! failed origin handshake into an error the user can read.

use std::path::PathBuf;
use std::sync::Arc;

use portcullis_certs::crypto_provider;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::config::TlsConfig;
use crate::error::ProxyError;

pub(crate) const H2: &[u8] = b"h2";
pub(crate) const HTTP11: &[u8] = b"http/1.1";

/// Why the origin-side TLS configs could not be built; all but the last are about
/// `tls.upstream_ca_file`.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UpstreamTlsError {
    #[error("{}: {error}", path.display())]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{}: {error}", path.display())]
    Pem {
        path: PathBuf,
        error: rustls::pki_types::pem::Error,
    },
    #[error("{}: {error}", path.display())]
    Certificate { path: PathBuf, error: rustls::Error },
    #[error("{}: no certificates", path.display())]
    NoCertificates { path: PathBuf },
    /// The crypto provider offers no protocol version rustls accepts.
    #[error("{0}")]
    Protocols(rustls::Error),
}

/// Client configs for each ALPN offer we mirror, verifying and (for `insecure_upstream` hosts)
/// not verifying.
pub(crate) struct UpstreamTls {
    verified: [Arc<ClientConfig>; 3],
    insecure: [Arc<ClientConfig>; 3],
    pub roots: usize,
}

/// The ALPN offers we can mirror: both, HTTP/1.1 only, none.
fn alpn_sets() -> [Vec<Vec<u8>>; 3] {
    [
        vec![H2.to_vec(), HTTP11.to_vec()],
        vec![HTTP11.to_vec()],
        vec![],
    ]
}

impl UpstreamTls {
    pub(crate) fn new(config: &TlsConfig) -> Result<UpstreamTls, UpstreamTlsError> {
        let mut roots = system_roots();
        if let Some(path) = &config.upstream_ca_file {
            for cert in extra_roots(path)? {
                roots
                    .add(cert)
                    .map_err(|error| UpstreamTlsError::Certificate {
                        path: path.clone(),
                        error,
                    })?;
            }
        }
        let count = roots.len();
        let roots = Arc::new(roots);
        let build = |verifier: Option<Arc<dyn ServerCertVerifier>>,
                     alpn: Vec<Vec<u8>>|
         -> Result<Arc<ClientConfig>, UpstreamTlsError> {
            let builder = ClientConfig::builder_with_provider(crypto_provider())
                .with_safe_default_protocol_versions()
                .map_err(UpstreamTlsError::Protocols)?;
            let mut config = match verifier {
                None => builder
                    .with_root_certificates(Arc::clone(&roots))
                    .with_no_client_auth(),
                Some(v) => builder
                    .dangerous()
                    .with_custom_certificate_verifier(v)
                    .with_no_client_auth(),
            };
            config.alpn_protocols = alpn;
            Ok(Arc::new(config))
        };
        let [a, b, c] = alpn_sets();
        let [d, e, f] = alpn_sets();
        let none: Arc<dyn ServerCertVerifier> = Arc::new(NoVerification);
        Ok(UpstreamTls {
            verified: [build(None, a)?, build(None, b)?, build(None, c)?],
            insecure: [
                build(Some(Arc::clone(&none)), d)?,
                build(Some(Arc::clone(&none)), e)?,
                build(Some(none), f)?,
            ],
            roots: count,
        })
    }

    /// The config that offers the origin what the client offered (as far as we can serve it).
    pub(crate) fn config(&self, client_alpn: &[Vec<u8>], insecure: bool) -> Arc<ClientConfig> {
        let index = if client_alpn.iter().any(|p| p == H2) {
            0
        } else if client_alpn.iter().any(|p| p == HTTP11) {
            1
        } else {
            2
        };
        let set = if insecure {
            &self.insecure
        } else {
            &self.verified
        };
        Arc::clone(&set[index])
    }
}

/// The OS store, honouring SSL_CERT_FILE / SSL_CERT_DIR as OpenSSL-based tools do; the
/// Mozilla roots when it is empty.
pub(crate) fn system_roots() -> RootCertStore {
    let mut roots = RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        tracing::warn!("no CA certificates in the system store; using the Mozilla roots");
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    roots
}

/// The certificates of `tls.upstream_ca_file`: at least one, or an error naming the file.
pub(crate) fn extra_roots(
    path: &std::path::Path,
) -> Result<Vec<CertificateDer<'static>>, UpstreamTlsError> {
    let path = path.to_owned();
    let pem = std::fs::read(&path).map_err(|error| UpstreamTlsError::Read {
        path: path.clone(),
        error,
    })?;
    let certs = rustls::pki_types::pem::PemObject::pem_slice_iter(&pem)
        .collect::<Result<Vec<CertificateDer<'static>>, _>>()
        .map_err(|error| UpstreamTlsError::Pem {
            path: path.clone(),
            error,
        })?;
    if certs.is_empty() {
        return Err(UpstreamTlsError::NoCertificates { path });
    }
    Ok(certs)
}

pub(crate) use super::cert_errors::classify_handshake_error;

pub(crate) fn server_name(
    sni: Option<&str>,
    host: &portcullis_policy::Host,
) -> Result<ServerName<'static>, ProxyError> {
    let name = sni.unwrap_or(host.as_str());
    ServerName::try_from(name.to_owned())
        .map_err(|_| ProxyError::BadRequest(format!("{name:?} is not a valid TLS server name")))
}

/// For `insecure_upstream` hosts only: accepts any certificate (labs with self-signed origins).
#[derive(Debug)]
struct NoVerification;

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        crypto_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}
