//! The interception CA: generating one, loading one from PEM, and checking that it can sign.

use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PublicKeyData as _,
};
use rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer};
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;

use crate::error::{NotCaReason, PemSource};
use crate::keys::{self, GeneratedKey, KeyAlgorithm};
use crate::Error;

mod files;
#[cfg(test)]
mod tests;

pub use files::{read_ca_cert, CaFiles, KeyFileCheck, CA_CERT_FILE, CA_KEY_FILE};

/// How `ca init` builds a new CA.
#[derive(Debug, Clone)]
pub struct CaParams {
    /// The subject common name, which users see in trust-store dialogs.
    pub common_name: String,
    /// How long the CA is valid. Leaves never outlive it, so this bounds how long clients keep
    /// working without re-deploying a CA; ten years by default, as for other private roots.
    pub validity: Duration,
    /// Key algorithm. Use RSA only when some clients cannot verify ECDSA signatures.
    pub key_algorithm: KeyAlgorithm,
}

impl Default for CaParams {
    fn default() -> Self {
        CaParams {
            common_name: "Portcullis Interception CA".to_owned(),
            validity: Duration::from_secs(3650 * 86_400),
            key_algorithm: KeyAlgorithm::EcdsaP256,
        }
    }
}

/// A CA certificate and its key, checked to belong together and to be able to sign leaves.
pub struct CertificateAuthority {
    cert_der: CertificateDer<'static>,
    /// Built from the certificate itself, so leaves carry the CA's exact subject as issuer and
    /// the CA's own subjectKeyIdentifier as authorityKeyIdentifier, whoever made the CA.
    issuer: Issuer<'static, KeyPair>,
    subject: String,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
}

impl std::fmt::Debug for CertificateAuthority {
    // Hand-written so that the key can never end up in a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("subject", &self.subject)
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// Backdating a new CA by as much as leaves are backdated keeps the CA from clamping a leaf's
/// `not_before` to "now" in the CA's first day.
const CA_BACKDATE: Duration = Duration::from_secs(86_400);

impl CertificateAuthority {
    /// Generates a new self-signed CA.
    ///
    /// pathLenConstraint is 0: this CA signs leaves only, so a stolen leaf key cannot be turned
    /// into an intermediate.
    pub fn generate(params: &CaParams) -> Result<Self, Error> {
        let key = GeneratedKey::generate(params.key_algorithm)?;
        let now = OffsetDateTime::now_utc();
        let mut cert_params = CertificateParams::default();
        cert_params.distinguished_name = DistinguishedName::new();
        cert_params
            .distinguished_name
            .push(DnType::CommonName, params.common_name.as_str());
        cert_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        cert_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        cert_params.not_before = now - CA_BACKDATE;
        cert_params.not_after = now + params.validity;
        cert_params.serial_number = Some(keys::random_serial()?);
        let cert = cert_params.self_signed(&key.key_pair)?;
        Self::new(cert.der().clone(), key.key_pair)
    }

    /// Loads a CA from PEM text: the first CERTIFICATE block of `cert_pem` and the first
    /// PRIVATE KEY block of `key_pem`.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, Error> {
        let cert_der = cert_der_from_pem(cert_pem, PemSource::Certificate(None))?;
        let key = key_from_pem(key_pem, PemSource::Key(None))?;
        Self::new(cert_der, key)
    }

    /// Checks the pair and builds the issuer.
    fn new(cert_der: CertificateDer<'static>, key: KeyPair) -> Result<Self, Error> {
        let (_, cert) = x509_parser::parse_x509_certificate(&cert_der)
            .map_err(|source| Error::ParseCertificate { source })?;
        check_is_ca(&cert)?;
        // Comparing the bare public keys (not the whole SubjectPublicKeyInfo) tolerates encoders
        // that differ in how they write the algorithm parameters.
        if cert.public_key().subject_public_key.data.as_ref() != key.der_bytes() {
            return Err(Error::KeyMismatch);
        }
        let validity = cert.validity();
        let not_before = validity.not_before.to_datetime();
        let not_after = validity.not_after.to_datetime();
        let now = OffsetDateTime::now_utc();
        if now < not_before || now >= not_after {
            return Err(Error::CaNotValidNow {
                not_before,
                not_after,
            });
        }
        let subject = cert.subject().to_string();
        let issuer = Issuer::from_ca_cert_der(&cert_der, key)?;
        Ok(CertificateAuthority {
            cert_der,
            issuer,
            subject,
            not_before,
            not_after,
        })
    }

    /// The CA certificate, DER. It is sent after every leaf: Chromium's SPKI-pinning trust method
    /// needs the CA in the chain.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// The CA certificate as PEM, for distribution to clients.
    pub fn cert_pem(&self) -> String {
        cert_pem(&self.cert_der)
    }

    /// The CA key as PKCS#8 PEM. Only `ca init` needs it, to write the key file.
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// The CA subject in RFC 4514 form, for logs and `ca check`.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// Start of the CA's validity; leaves never start earlier.
    pub fn not_before(&self) -> OffsetDateTime {
        self.not_before
    }

    /// End of the CA's validity; leaves never end later. The proxy should warn when it is near.
    pub fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }

    /// SHA-256 fingerprint of the CA certificate, for checking what clients installed.
    pub fn fingerprint(&self) -> String {
        keys::sha256_fingerprint(&self.cert_der)
    }

    pub(crate) fn issuer(&self) -> &Issuer<'static, KeyPair> {
        &self.issuer
    }
}

/// Reads a CA certificate (PEM) on its own and checks that it is a CA, without its key: `ca
/// export` runs as a user who may read the certificate but not the key.
pub fn ca_cert_from_pem(cert_pem: &str) -> Result<CertificateDer<'static>, Error> {
    checked_ca_cert(cert_der_from_pem(cert_pem, PemSource::Certificate(None))?)
}

fn checked_ca_cert(der: CertificateDer<'static>) -> Result<CertificateDer<'static>, Error> {
    let (_, cert) = x509_parser::parse_x509_certificate(&der)
        .map_err(|source| Error::ParseCertificate { source })?;
    check_is_ca(&cert)?;
    Ok(der)
}

/// Encodes a DER certificate as PEM.
pub fn cert_pem(der: &[u8]) -> String {
    pem::encode(&pem::Pem::new("CERTIFICATE", der.to_vec()))
}

/// basicConstraints CA:TRUE is required. keyUsage, when present, must allow keyCertSign; when
/// absent RFC 5280 allows every use, and `openssl req -x509` CAs commonly omit it.
fn check_is_ca(cert: &X509Certificate<'_>) -> Result<(), Error> {
    let constraints = cert
        .basic_constraints()
        .map_err(|source| Error::ParseExtension { source })?
        .ok_or(Error::NotCa {
            reason: NotCaReason::NoBasicConstraints,
        })?;
    if !constraints.value.ca {
        return Err(Error::NotCa {
            reason: NotCaReason::NotCaTrue,
        });
    }
    let key_usage = cert
        .key_usage()
        .map_err(|source| Error::ParseExtension { source })?;
    if key_usage.is_some_and(|ku| !ku.value.key_cert_sign()) {
        return Err(Error::NotCa {
            reason: NotCaReason::NoKeyCertSign,
        });
    }
    Ok(())
}

fn cert_der_from_pem(text: &str, what: PemSource) -> Result<CertificateDer<'static>, Error> {
    let blocks = pem::parse_many(text).map_err(|source| Error::Pem {
        what: what.clone(),
        source,
    })?;
    blocks
        .into_iter()
        .find(|b| b.tag() == "CERTIFICATE")
        .map(|b| CertificateDer::from(b.into_contents()))
        .ok_or(Error::MissingPem {
            what,
            label: "CERTIFICATE",
        })
}

/// Only unencrypted PKCS#8 loads with `ring`; other common key blocks get a conversion hint.
fn key_from_pem(text: &str, what: PemSource) -> Result<KeyPair, Error> {
    let blocks = pem::parse_many(text).map_err(|source| Error::Pem {
        what: what.clone(),
        source,
    })?;
    if let Some(block) = blocks.iter().find(|b| b.tag() == "PRIVATE KEY") {
        let der = PrivatePkcs8KeyDer::from(block.contents().to_vec());
        return Ok(KeyPair::try_from(&der)?);
    }
    match blocks.iter().find(|b| b.tag().ends_with("PRIVATE KEY")) {
        Some(other) => Err(Error::UnsupportedKeyFormat {
            found: other.tag().to_owned(),
        }),
        None => Err(Error::MissingPem {
            what,
            label: "PRIVATE KEY",
        }),
    }
}
