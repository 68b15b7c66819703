//! The `[tls]` section: TLS inspection of CONNECT tunnels.
//!
//! `leaf_key` and `insecure_upstream` are parsed while the file is read, into the types
//! interception uses, so a bad value is reported with its key at load and nothing parses it
//! again. They serialise back to text, so `check-config` and `/config` show what is in effect.

use std::path::PathBuf;
use std::time::Duration;

use portcullis_certs::KeyAlgorithm;
use portcullis_policy::host::HostPattern;
use serde::{Deserialize, Serialize};

/// TLS inspection of CONNECT tunnels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// Intercept TLS in CONNECT tunnels (decrypt, inspect, re-encrypt) where the policy says
    /// `inspect`. Off: every tunnel is relayed untouched whatever the policy says.
    pub inspect: bool,
    /// Hosts whose certificate is NOT verified (labs only). Everything else must present a
    /// valid certificate, or the client gets a 502 page naming the problem. Same patterns as
    /// the policy's `host` (`example.com`, `*.example.com`, `autodiscover.*`, `~regex`).
    #[serde(with = "host_patterns")]
    pub insecure_upstream: Vec<HostPattern>,
    /// Extra trusted CA certificates (PEM) for origins, on top of the system store.
    pub upstream_ca_file: Option<PathBuf>,
    /// Create a CA in `server.data_dir` on first start when none exists.
    pub auto_init_ca: bool,
    /// Load a CA key readable by group/others (refused by default).
    pub allow_insecure_key_permissions: bool,
    /// Leaf key type: "ecdsa-p256" (default), or "rsa-2048" / "rsa-3072" for old clients.
    #[serde(with = "key_algorithm")]
    pub leaf_key: KeyAlgorithm,
    /// Minted certificates kept in memory.
    pub cert_cache_size: usize,
    /// After a client refuses an intercepted connection to one of `tunnel_after_refusal_hosts`
    /// (an application pinning its server's certificate), that client's tunnels to that host
    /// are relayed untouched for this long, so the application works on its next try. "0s"
    /// (the default) turns this off: any client can abort a handshake, so a refusal must not
    /// switch inspection off by itself.
    #[serde(with = "humantime_serde")]
    pub tunnel_after_refusal: Duration,
    /// The only hosts (host patterns) `tunnel_after_refusal` applies to: the servers of the
    /// applications known to pin certificates. Never a host the policy denies or does not
    /// inspect.
    #[serde(with = "host_patterns")]
    pub tunnel_after_refusal_hosts: Vec<HostPattern>,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            inspect: true,
            insecure_upstream: Vec::new(),
            upstream_ca_file: None,
            auto_init_ca: true,
            allow_insecure_key_permissions: false,
            leaf_key: KeyAlgorithm::EcdsaP256,
            tunnel_after_refusal: Duration::ZERO,
            tunnel_after_refusal_hosts: Vec::new(),
            cert_cache_size: 10_000,
        }
    }
}

/// A [`KeyAlgorithm`] as its name (`ecdsa-p256`, `rsa-2048`, `rsa-3072`).
mod key_algorithm {
    use portcullis_certs::KeyAlgorithm;
    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(alg: &KeyAlgorithm, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(alg.as_str())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<KeyAlgorithm, D::Error> {
        let name = String::deserialize(d)?;
        name.parse().map_err(|_| {
            D::Error::custom(format!(
                "{name:?} is not one of {}",
                KeyAlgorithm::NAMES.join(", ")
            ))
        })
    }
}

/// A list of [`HostPattern`]s as their text. An invalid pattern is reported under the list's
/// key, as the policy reports its host lists.
mod host_patterns {
    use portcullis_policy::host::HostPattern;
    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(
        patterns: &[HostPattern],
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_seq(patterns.iter().map(ToString::to_string))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Vec<HostPattern>, D::Error> {
        Vec::<String>::deserialize(d)?
            .iter()
            .map(|p| HostPattern::parse(p).map_err(D::Error::custom))
            .collect()
    }
}
