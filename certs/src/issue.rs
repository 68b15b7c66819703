//! Minting leaf certificates for intercepted hosts.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyUsagePurpose,
};
use rustls::sign::CertifiedKey;
use time::OffsetDateTime;

use crate::keys::{self, GeneratedKey, KeyAlgorithm};
use crate::{CertificateAuthority, Error, LeafName};

#[cfg(test)]
mod tests;

/// Browsers reject leaves valid for longer than this (CA/Browser Forum baseline, enforced by
/// Apple and Chromium even for private roots; mitmproxy/mitmproxy#815).
pub const MAX_LEAF_VALIDITY: Duration = Duration::from_secs(397 * 86_400);

/// How leaves are minted.
#[derive(Debug, Clone)]
pub struct IssuerConfig {
    /// Leaf key algorithm. ECDSA P-256 unless old clients need RSA (and then the CA should be RSA
    /// too, since it signs the leaves).
    pub key_algorithm: KeyAlgorithm,
    /// Total validity, `not_after - not_before`, at most [`MAX_LEAF_VALIDITY`].
    ///
    /// 30 days by default: leaves live in memory only and are re-minted after half their
    /// remaining lifetime, so a short validity costs one mint per host per fortnight, limits what
    /// a leaked leaf key is worth, and lets changed origin SANs reach clients soon; it is still
    /// far longer than any Outlook session or tunnel stays open.
    pub validity: Duration,
    /// How far `not_before` lies in the past. One day by default (mitmproxy uses two): clients
    /// whose clock is behind, typically a hardware clock kept in local time and read as UTC, are
    /// off by up to 14 hours and would otherwise reject a leaf as "not yet valid".
    pub backdate: Duration,
}

impl Default for IssuerConfig {
    fn default() -> Self {
        IssuerConfig {
            key_algorithm: KeyAlgorithm::EcdsaP256,
            validity: Duration::from_secs(30 * 86_400),
            backdate: Duration::from_secs(86_400),
        }
    }
}

impl IssuerConfig {
    fn check(&self) -> Result<(), Error> {
        if self.validity > MAX_LEAF_VALIDITY {
            return Err(Error::InvalidValidity {
                reason: "validity must not exceed 397 days",
            });
        }
        // Leaves must stay valid for a while after they are minted, or the cache (which keeps
        // them for half their remaining life) would mint on nearly every connection.
        if self.validity < self.backdate + Duration::from_secs(3600) {
            return Err(Error::InvalidValidity {
                reason: "validity must exceed the backdate by at least an hour",
            });
        }
        Ok(())
    }
}

/// What to mint: the name the client asked for, plus further names to include.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafRequest {
    /// The cache key and first SAN (see [`LeafName::for_connection`]).
    pub name: LeafName,
    /// More SANs, usually [`crate::origin_sans`] of the verified origin certificate, so that
    /// clients that reached the origin by IP or another of its names still validate.
    pub extra_sans: Vec<LeafName>,
}

impl LeafRequest {
    /// A request for `name` alone.
    pub fn new(name: LeafName) -> Self {
        LeafRequest {
            name,
            extra_sans: Vec::new(),
        }
    }

    /// Adds the origin certificate's names.
    pub fn with_sans(mut self, sans: Vec<LeafName>) -> Self {
        self.extra_sans = sans;
        self
    }
}

/// A minted leaf, ready for rustls.
#[derive(Debug, Clone)]
pub struct IssuedLeaf {
    /// The chain (leaf, then CA) and the leaf's signing key.
    pub key: Arc<CertifiedKey>,
    /// The leaf's notAfter, from which the cache derives how long to keep it.
    pub not_after: SystemTime,
}

/// Something that mints leaves: the real [`Issuer`], or a test double.
///
/// Called on a blocking thread (see [`crate::CertCache`]), so it may take its time.
pub trait CertIssuer: Send + Sync + 'static {
    /// Mints a leaf for `request`.
    fn issue(&self, request: &LeafRequest) -> Result<IssuedLeaf, Error>;
}

/// Mints leaves signed by the interception CA.
pub struct Issuer {
    ca: Arc<CertificateAuthority>,
    config: IssuerConfig,
    /// In RSA mode, one key generated at start-up and reused for every leaf: `ring` cannot
    /// generate RSA keys and the pure-Rust generator takes tens to hundreds of milliseconds per
    /// key, far too slow per host. The cost is that one key serves every RSA leaf of this process,
    /// so whoever steals it from memory can impersonate every intercepted host, which is no worse
    /// than stealing the CA key from the same memory. Each leaf still gets its own serial.
    shared_rsa_key: Option<GeneratedKey>,
}

impl std::fmt::Debug for Issuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issuer")
            .field("ca", &self.ca)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Issuer {
    /// Builds an issuer. In RSA mode this generates the shared leaf key, which takes a while:
    /// call it at start-up (or in `spawn_blocking`).
    pub fn new(ca: Arc<CertificateAuthority>, config: IssuerConfig) -> Result<Self, Error> {
        config.check()?;
        let shared_rsa_key = if config.key_algorithm.is_rsa() {
            Some(GeneratedKey::generate(config.key_algorithm)?)
        } else {
            None
        };
        Ok(Issuer {
            ca,
            config,
            shared_rsa_key,
        })
    }

    /// The CA the leaves chain to.
    pub fn ca(&self) -> &Arc<CertificateAuthority> {
        &self.ca
    }

    /// The leaf's validity window: backdated, `validity` long, and clamped into the CA's, since
    /// clients reject a leaf that outlives its issuer.
    fn validity_window(&self) -> Result<(OffsetDateTime, OffsetDateTime), Error> {
        // Whole seconds, as in the certificate, so that `IssuedLeaf::not_after` is exact.
        let now = OffsetDateTime::now_utc();
        let now = now - time::Duration::nanoseconds(i64::from(now.nanosecond()));
        if now < self.ca.not_before() || now >= self.ca.not_after() {
            return Err(Error::CaNotValidNow {
                not_before: self.ca.not_before(),
                not_after: self.ca.not_after(),
            });
        }
        let not_before = (now - self.config.backdate).max(self.ca.not_before());
        let not_after = (not_before + self.config.validity).min(self.ca.not_after());
        Ok((not_before, not_after))
    }

    fn leaf_params(&self, request: &LeafRequest) -> Result<CertificateParams, Error> {
        let (not_before, not_after) = self.validity_window()?;
        let mut params = CertificateParams::default();
        params.not_before = not_before;
        params.not_after = not_after;
        params.serial_number = Some(keys::random_serial()?);
        // Subject CN for clients that still read it; RFC 5280 caps it at 64 characters, and a
        // longer name is still covered by the SAN.
        params.distinguished_name = DistinguishedName::new();
        let cn = request.name.common_name();
        if cn.len() <= 64 {
            params.distinguished_name.push(DnType::CommonName, cn);
        }
        let mut names = vec![&request.name];
        for extra in &request.extra_sans {
            if !names.contains(&extra) {
                names.push(extra);
            }
        }
        params.subject_alt_names = names
            .into_iter()
            .map(LeafName::to_san)
            .collect::<Result<_, _>>()?;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        if self.config.key_algorithm.is_rsa() {
            // TLS 1.2 RSA key exchange; rustls never uses it, but some old clients insist on the bit.
            params.key_usages.push(KeyUsagePurpose::KeyEncipherment);
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        // AKI = the CA's own SKI (the issuer was built from the CA certificate); the leaf's SKI
        // is derived from the leaf's key, so it never equals the CA's (SChannel rejects that,
        // mitmproxy/mitmproxy#6494).
        params.use_authority_key_identifier_extension = true;
        Ok(params)
    }
}

impl CertIssuer for Issuer {
    fn issue(&self, request: &LeafRequest) -> Result<IssuedLeaf, Error> {
        let params = self.leaf_params(request)?;
        let not_after = SystemTime::from(params.not_after);
        let fresh_key;
        let key = match &self.shared_rsa_key {
            Some(key) => key,
            None => {
                fresh_key = GeneratedKey::generate(self.config.key_algorithm)?;
                &fresh_key
            }
        };
        let leaf = params.signed_by(&key.key_pair, self.ca.issuer())?;
        let chain = vec![leaf.der().clone(), self.ca.cert_der().clone()];
        Ok(IssuedLeaf {
            key: Arc::new(CertifiedKey::new(chain, key.signing_key.clone())),
            not_after,
        })
    }
}
