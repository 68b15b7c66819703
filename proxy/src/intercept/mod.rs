//! The TLS machinery of interception: the CA, leaf minting and its cache, the TLS server
//! configs for clients, the verified TLS client configs for origins ([`upstream_tls`]), the
//! origin session of a tunnel ([`session`]), the ClientHello peek ([`hello`]) and the memory of
//! refused interceptions ([`refusals`]).
//!
//! What is done with an intercepted tunnel — deciding again on the SNI, serving its decrypted
//! requests — is a request handler's job: `http/inspect.rs`.

mod cert_errors;
pub(crate) mod hello;
pub(crate) mod refusals;
pub(crate) mod session;
pub(crate) mod upstream_tls;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use portcullis_certs::{
    CaParams, CertCache, CertificateAuthority, Issuer, IssuerConfig, KeyFileCheck, LeafRequest,
    ServerConfigs,
};
use portcullis_policy::host::{normalise, HostPattern};
use rustls::sign::CertifiedKey;

use crate::config::Config;
use crate::error::Chain;
use upstream_tls::{UpstreamTls, UpstreamTlsError};

/// Why interception could not be set up; [`InterceptError::key`] names the key to fix.
///
/// The certs crate keeps the operating system's reason as an error's source; these messages
/// print the whole chain ([`Chain`]), so "cannot read /var/lib/portcullis/ca.key" never
/// loses its "Permission denied".
#[derive(Debug, thiserror::Error)]
pub(crate) enum InterceptError {
    #[error("cannot create the interception CA: {}", Chain(.0))]
    CaGenerate(portcullis_certs::Error),
    #[error("cannot create the interception CA: {}", Chain(.0))]
    CaWrite(portcullis_certs::Error),
    #[error("{}", ca_load_message(.0))]
    CaLoad(portcullis_certs::Error),
    /// No CA in the data directory, and `tls.auto_init_ca` is off.
    #[error(
        "no interception CA in {}: create one with `portcullis ca init`, or set \
         tls.auto_init_ca = true",
        .0.display()
    )]
    CaMissing(PathBuf),
    /// The leaf issuer refused its settings.
    #[error("{}", Chain(.0))]
    Issuer(portcullis_certs::Error),
    #[error("{0}")]
    UpstreamTls(UpstreamTlsError),
}

/// A CA that does not load; a key others can read names the setting that would accept it.
fn ca_load_message(error: &portcullis_certs::Error) -> String {
    match error {
        portcullis_certs::Error::InsecureKeyFile { path, mode } => format!(
            "the CA key {} has mode {mode:04o}: it must not be accessible by group or others \
             (chmod 600 it, or set tls.allow_insecure_key_permissions = true to accept it)",
            path.display()
        ),
        other => Chain(other).to_string(),
    }
}

impl InterceptError {
    /// The config key the error is about.
    pub(crate) fn key(&self) -> &'static str {
        match self {
            InterceptError::CaGenerate(_) => "tls",
            InterceptError::CaWrite(_)
            | InterceptError::CaLoad(_)
            | InterceptError::CaMissing(_) => "server.data_dir",
            InterceptError::Issuer(_) => "tls.leaf_key",
            InterceptError::UpstreamTls(_) => "tls.upstream_ca_file",
        }
    }
}

/// Everything interception needs, built once at start-up.
pub(crate) struct Interceptor {
    pub(crate) ca: Arc<CertificateAuthority>,
    cache: CertCache,
    server_configs: ServerConfigs,
    upstream: UpstreamTls,
    insecure: Vec<HostPattern>,
    /// Client/host pairs whose interception the client refused.
    pub(crate) refusals: refusals::Refusals,
}

impl Interceptor {
    /// Loads (or, with `tls.auto_init_ca`, creates) the CA in `server.data_dir`. `None` when
    /// inspection is off. Errors name the key to fix.
    /// `mint_observer` hears how long each certificate took to mint (a metrics histogram).
    pub(crate) fn new(
        config: &Config,
        init: CaInit,
        mint_observer: impl Fn(Duration) + Send + Sync + 'static,
    ) -> Result<Option<Interceptor>, InterceptError> {
        let tls = &config.tls;
        if !tls.inspect {
            return Ok(None);
        }
        let dir = &config.server.data_dir;
        let ca = load_or_create_ca(dir, tls, init)?;
        let ca = Arc::new(ca);
        let issuer = Issuer::new(
            Arc::clone(&ca),
            IssuerConfig {
                key_algorithm: tls.leaf_key,
                ..IssuerConfig::default()
            },
        )
        .map_err(InterceptError::Issuer)?;
        let upstream = UpstreamTls::new(tls).map_err(InterceptError::UpstreamTls)?;
        if !tls.tunnel_after_refusal.is_zero() && tls.tunnel_after_refusal_hosts.is_empty() {
            tracing::warn!(
                "tls.tunnel_after_refusal is set but tls.tunnel_after_refusal_hosts is empty: \
                 no client refusal changes anything (list the pinning applications' hosts)"
            );
        }
        tracing::info!(
            ca = %ca.subject(),
            fingerprint = %ca.fingerprint(),
            roots = upstream.roots,
            "TLS inspection on"
        );
        Ok(Some(Interceptor {
            cache: CertCache::new(Arc::new(issuer), tls.cert_cache_size)
                .with_mint_observer(mint_observer),
            server_configs: ServerConfigs::new(4096),
            upstream,
            insecure: tls.insecure_upstream.clone(),
            refusals: refusals::Refusals::new(
                tls.tunnel_after_refusal,
                tls.tunnel_after_refusal_hosts.clone(),
            ),
            ca,
        }))
    }

    fn is_insecure(&self, host: &str) -> bool {
        let host = normalise(host);
        self.insecure.iter().any(|p| p.matches(&host))
    }

    /// The TLS client config for an origin known as `names` (the SNI and the CONNECT host),
    /// offering the client's `alpn`; unverified only if one of the names is in
    /// `tls.insecure_upstream`.
    pub(crate) fn origin_config(
        &self,
        alpn: &[Vec<u8>],
        names: [&str; 2],
    ) -> Arc<rustls::ClientConfig> {
        let insecure = names.iter().any(|n| self.is_insecure(n));
        self.upstream.config(alpn, insecure)
    }

    /// The leaf for `request`, minted at most once per name (cached).
    pub(crate) async fn leaf(
        &self,
        request: &LeafRequest,
    ) -> Result<Arc<CertifiedKey>, portcullis_certs::Error> {
        self.cache.get(request).await
    }

    /// The TLS server config for the client side, offering `alpn`.
    pub(crate) fn server_config(
        &self,
        key: Arc<CertifiedKey>,
        alpn: Vec<Vec<u8>>,
    ) -> Result<Arc<rustls::ServerConfig>, portcullis_certs::Error> {
        self.server_configs.build(key, alpn)
    }

    pub(crate) fn cache_stats(&self) -> portcullis_certs::CacheStats {
        self.cache.stats()
    }
}

impl crate::metrics::CertCacheStats for Interceptor {
    fn cert_cache_stats(&self) -> portcullis_certs::CacheStats {
        self.cache_stats()
    }
}

/// What to do when there is no CA yet and `tls.auto_init_ca` asks for one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CaInit {
    /// Create it in the data directory (start and reload).
    Write,
    /// `check-config`: generate one in memory only, after checking that the data directory
    /// could take it, so that checking a config never writes anything.
    DryRun,
}

fn load_or_create_ca(
    dir: &Path,
    tls: &crate::config::TlsConfig,
    init: CaInit,
) -> Result<CertificateAuthority, InterceptError> {
    let check = if tls.allow_insecure_key_permissions {
        KeyFileCheck::AllowInsecure
    } else {
        KeyFileCheck::OwnerOnly
    };
    let cert = dir.join(portcullis_certs::CA_CERT_FILE);
    let key = dir.join(portcullis_certs::CA_KEY_FILE);
    let missing = |path: &Path| matches!(path.try_exists(), Ok(false));
    if missing(&cert) && missing(&key) {
        if !tls.auto_init_ca {
            return Err(InterceptError::CaMissing(dir.to_owned()));
        }
        let ca = CertificateAuthority::generate(&CaParams::default())
            .map_err(InterceptError::CaGenerate)?;
        match init {
            CaInit::Write => {
                ca.write_to_dir(dir, false)
                    .map_err(InterceptError::CaWrite)?;
                tracing::warn!(
                    path = %cert.display(),
                    "created a new interception CA; clients must trust it (download it from http://<proxy>/ca.pem or run `portcullis ca export`)"
                );
            }
            CaInit::DryRun => writable(dir).map_err(InterceptError::CaWrite)?,
        }
        return Ok(ca);
    }
    CertificateAuthority::load_from_dir(dir, check).map_err(InterceptError::CaLoad)
}

/// Whether `dir` could be created (its nearest existing ancestor is writable) or written to,
/// asked without writing: the error [`CertificateAuthority::write_to_dir`] would meet.
fn writable(dir: &Path) -> Result<(), portcullis_certs::Error> {
    let existing = dir
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"));
    nix::unistd::access(
        existing,
        nix::unistd::AccessFlags::W_OK | nix::unistd::AccessFlags::X_OK,
    )
    .map_err(|errno| portcullis_certs::Error::Write {
        path: dir.to_owned(),
        source: errno.into(),
    })
}
