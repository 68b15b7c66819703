//! The `[tls]` section: TLS inspection of CONNECT tunnels.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// TLS inspection of CONNECT tunnels.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// Intercept TLS in CONNECT tunnels (decrypt, inspect, re-encrypt) where the policy says
    /// `inspect`. Off: every tunnel is relayed untouched whatever the policy says.
    pub inspect: bool,
    /// Hosts whose certificate is NOT verified (labs only). Everything else must present a
    /// valid certificate, or the client gets a 502 page naming the problem.
    pub insecure_upstream: Vec<String>,
    /// Extra trusted CA certificates (PEM) for origins, on top of the system store.
    pub upstream_ca_file: Option<PathBuf>,
    /// Create a CA in `server.data_dir` on first start when none exists.
    pub auto_init_ca: bool,
    /// Load a CA key readable by group/others (refused by default).
    pub allow_insecure_key_permissions: bool,
    /// Leaf key type: "ecdsa-p256" (default), or "rsa-2048" / "rsa-3072" for old clients.
    pub leaf_key: String,
    /// Minted certificates kept in memory.
    pub cert_cache_size: usize,
    /// After a client refuses an intercepted connection (certificate pinning, or the proxy's
    /// CA not installed), that client's tunnels to that host are relayed untouched for this
    /// long, so the application works on its next try. "0s" turns this off.
    #[serde(with = "humantime_serde")]
    pub tunnel_after_refusal: Duration,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            inspect: true,
            insecure_upstream: Vec::new(),
            upstream_ca_file: None,
            auto_init_ca: true,
            allow_insecure_key_permissions: false,
            leaf_key: "ecdsa-p256".to_owned(),
            tunnel_after_refusal: Duration::from_secs(3600),
            cert_cache_size: 10_000,
        }
    }
}
