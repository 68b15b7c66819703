//! Certificate authority and leaf minting for TLS inspection.
//!
//! The pieces, in the order an intercepted connection uses them:
//!
//! 1. At start-up: [`CertificateAuthority::load_from_dir`] (or `portcullis ca init`, which uses
//!    [`CertificateAuthority::generate`] and [`CertificateAuthority::write_to_dir`]), then an
//!    [`Issuer`], a [`CertCache`] and a [`ServerConfigs`].
//! 2. Per connection: the proxy peeks the ClientHello, names the leaf with
//!    [`LeafName::for_connection`], connects to and verifies the origin, adds its names with
//!    [`origin_sans`], awaits [`CertCache::get`], and serves the client with
//!    [`ServerConfigs::build`].
//!
//! Every leaf gets a random serial, a subjectAltName of the right type (DNS or IP), serverAuth,
//! a backdated `not_before`, a validity inside the CA's and under 397 days, an
//! authorityKeyIdentifier equal to the CA's subjectKeyIdentifier and its own, different SKI; the
//! chain sent to clients is leaf then CA. Each of these is a bug another proxy shipped.

mod ca;
mod cache;
mod error;
mod issue;
mod keys;
mod name;
mod tls;

#[cfg(test)]
mod test_util;

pub use ca::{
    ca_cert_from_pem, cert_pem, read_ca_cert, CaFiles, CaParams, CertificateAuthority,
    KeyFileCheck, CA_CERT_FILE, CA_KEY_FILE,
};
pub use cache::{CacheStats, CertCache, MintObserver};
pub use error::{Error, NotCaReason, PemSource};
pub use issue::{CertIssuer, IssuedLeaf, Issuer, IssuerConfig, LeafRequest, MAX_LEAF_VALIDITY};
pub use keys::{sha256_fingerprint, KeyAlgorithm};
pub use name::{origin_sans, DnsName, LeafName, MAX_ORIGIN_SANS};
pub use tls::{crypto_provider, ServerConfigs, SingleCertResolver};

/// Re-exported so that the proxy names exactly the rustls this crate builds against.
pub use rustls;
/// Re-exported because CA validity dates are `time::OffsetDateTime`s.
pub use time;
