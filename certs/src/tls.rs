//! Handing a minted leaf to rustls.
//!
//! rustls' certificate resolver is synchronous, so it cannot wait for a mint. The proxy therefore
//! reads the ClientHello first (`tokio_rustls::LazyConfigAcceptor`), awaits the leaf from the
//! [`crate::CertCache`], and only then builds the `ServerConfig` for that one connection, whose
//! resolver simply returns the leaf it was built with.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::{
    ClientHello, ResolvesServerCert, ServerSessionMemoryCache, StoresServerSessions,
};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

use crate::Error;

/// The rustls crypto provider Portcullis uses on both sides of an intercepted connection: ring
/// (aws-lc-rs needs cmake and a long C build). The proxy should build its upstream `ClientConfig`
/// with this provider too.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A resolver that answers every ClientHello with one certificate.
#[derive(Debug)]
pub struct SingleCertResolver(Arc<CertifiedKey>);

impl SingleCertResolver {
    /// Serves `key` to whoever connects.
    pub fn new(key: Arc<CertifiedKey>) -> Self {
        SingleCertResolver(key)
    }
}

impl ResolvesServerCert for SingleCertResolver {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.0))
    }
}

/// Builds the per-connection `ServerConfig`s for intercepted connections, sharing what can be
/// shared between them.
///
/// The session cache is shared so that clients can resume across connections (Outlook opens a
/// dozen at once). rustls only resumes a session under the SNI it was created for, so a session
/// for one host never resumes on another.
#[derive(Debug, Clone)]
pub struct ServerConfigs {
    provider: Arc<CryptoProvider>,
    sessions: Arc<dyn StoresServerSessions>,
}

impl ServerConfigs {
    /// `session_capacity` bounds the shared TLS session cache (entries are a few hundred bytes).
    pub fn new(session_capacity: usize) -> Self {
        ServerConfigs {
            provider: crypto_provider(),
            sessions: ServerSessionMemoryCache::new(session_capacity),
        }
    }

    /// A TLS 1.2/1.3 server config presenting `key`, offering `alpn` (in preference order; the
    /// proxy passes the protocol the origin chose, so both sides speak the same one).
    pub fn build(
        &self,
        key: Arc<CertifiedKey>,
        alpn: Vec<Vec<u8>>,
    ) -> Result<Arc<ServerConfig>, Error> {
        let mut config = ServerConfig::builder_with_provider(Arc::clone(&self.provider))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(SingleCertResolver::new(key)));
        config.alpn_protocols = alpn;
        config.session_storage = Arc::clone(&self.sessions);
        Ok(Arc::new(config))
    }
}

#[cfg(test)]
mod tests;
