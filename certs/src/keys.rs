//! Key generation and the random numbers certificates need.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use rcgen::{KeyPair, SerialNumber};
use rsa::pkcs8::EncodePrivateKey as _;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::SigningKey;

use crate::Error;

/// The public-key algorithm of a generated CA or leaf key.
///
/// ECDSA P-256 is the default: `ring` generates it in microseconds and every TLS client of the
/// last decade accepts it. RSA exists for old clients that cannot verify ECDSA; such a client also
/// needs an RSA CA, since the CA's key type decides how every leaf is signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum KeyAlgorithm {
    /// ECDSA on NIST P-256 with SHA-256.
    #[default]
    EcdsaP256,
    /// RSA with a 2048-bit modulus, signing with PKCS#1 v1.5 SHA-256.
    Rsa2048,
    /// RSA with a 3072-bit modulus: for a long-lived RSA CA.
    Rsa3072,
}

impl KeyAlgorithm {
    /// The names accepted by [`FromStr`], for help texts.
    pub const NAMES: [&'static str; 3] = ["ecdsa-p256", "rsa-2048", "rsa-3072"];

    /// The name accepted by [`FromStr`].
    pub fn as_str(self) -> &'static str {
        match self {
            KeyAlgorithm::EcdsaP256 => "ecdsa-p256",
            KeyAlgorithm::Rsa2048 => "rsa-2048",
            KeyAlgorithm::Rsa3072 => "rsa-3072",
        }
    }

    pub(crate) fn is_rsa(self) -> bool {
        !matches!(self, KeyAlgorithm::EcdsaP256)
    }
}

impl fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for KeyAlgorithm {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        match s.to_ascii_lowercase().as_str() {
            "ecdsa-p256" | "ecdsa" | "p256" => Ok(KeyAlgorithm::EcdsaP256),
            "rsa-2048" | "rsa" => Ok(KeyAlgorithm::Rsa2048),
            "rsa-3072" => Ok(KeyAlgorithm::Rsa3072),
            _ => Err(Error::UnknownKeyAlgorithm { name: s.to_owned() }),
        }
    }
}

/// A private key in both forms we need: rcgen's (to put its public half in a certificate and to
/// sign certificates) and rustls' (to sign handshakes).
pub(crate) struct GeneratedKey {
    pub(crate) key_pair: KeyPair,
    pub(crate) signing_key: Arc<dyn SigningKey>,
}

impl GeneratedKey {
    /// Generates a fresh key. RSA generation is slow (tens to hundreds of milliseconds in pure
    /// Rust, since `ring` cannot generate RSA keys), so callers generate RSA keys rarely.
    pub(crate) fn generate(algorithm: KeyAlgorithm) -> Result<Self, Error> {
        let pkcs8: PrivatePkcs8KeyDer<'static> = match algorithm {
            KeyAlgorithm::EcdsaP256 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?
                .serialize_der()
                .into(),
            KeyAlgorithm::Rsa2048 => rsa_pkcs8(2048)?,
            KeyAlgorithm::Rsa3072 => rsa_pkcs8(3072)?,
        };
        Self::from_pkcs8(pkcs8)
    }

    pub(crate) fn from_pkcs8(pkcs8: PrivatePkcs8KeyDer<'static>) -> Result<Self, Error> {
        let key_pair = KeyPair::try_from(&pkcs8)?;
        let signing_key =
            rustls::crypto::ring::sign::any_supported_type(&PrivateKeyDer::Pkcs8(pkcs8))?;
        Ok(GeneratedKey {
            key_pair,
            signing_key,
        })
    }
}

fn rsa_pkcs8(bits: usize) -> Result<PrivatePkcs8KeyDer<'static>, Error> {
    let key = rsa::PrivateKey::new(&mut getrandom::SysRng, bits)
        .map_err(|source| Error::RsaKeyGen { source })?;
    let der = key
        .to_pkcs8_der()
        .map_err(|source| Error::RsaKeyEncode { source })?;
    Ok(PrivatePkcs8KeyDer::from(der.as_bytes().to_vec()))
}

/// A fresh random serial number: 16 bytes, positive, with the top byte's second bit set so the
/// DER encoding is always exactly 16 bytes (126 random bits).
///
/// Every certificate gets its own: Firefox rejects two certificates with the same issuer and
/// serial (`SEC_ERROR_REUSED_ISSUER_AND_SERIAL`, bytedance/g3#157), and rcgen's default serial is
/// a hash of the public key, which repeats whenever a key is reused (our RSA leaf mode does).
pub(crate) fn random_serial() -> Result<SerialNumber, Error> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|source| Error::Random { source })?;
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

/// The SHA-256 fingerprint of a DER certificate as colon-separated upper-case hex, the form
/// `openssl x509 -fingerprint -sha256` and the Windows certificate dialog show.
pub fn sha256_fingerprint(der: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    digest
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn algorithm_names_round_trip() {
        for name in KeyAlgorithm::NAMES {
            let alg: KeyAlgorithm = name.parse().unwrap_or_default();
            assert_eq!(alg.as_str(), name);
        }
        assert!("dsa".parse::<KeyAlgorithm>().is_err());
    }

    #[test]
    fn serials_are_16_positive_bytes_and_differ() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..64 {
            let serial = random_serial().map(|s| s.to_bytes()).unwrap_or_default();
            assert_eq!(serial.len(), 16);
            assert_eq!(serial[0] & 0xc0, 0x40, "top bits must be 01");
            assert!(seen.insert(serial), "serial repeated");
        }
    }

    #[test]
    fn ecdsa_keys_load_into_rustls() {
        let key = GeneratedKey::generate(KeyAlgorithm::EcdsaP256);
        assert!(key.is_ok_and(|k| k.signing_key.algorithm() == rustls::SignatureAlgorithm::ECDSA));
    }
}
