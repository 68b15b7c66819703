//! The crate's one error type.

use std::path::PathBuf;

use time::OffsetDateTime;

/// Everything that can go wrong loading a CA, minting a leaf or building a TLS config.
///
/// Variants carry the context (path, name, dates) so that the caller can report once, at its
/// boundary, without wrapping the error in strings.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading a CA file failed. The operating system's reason is the source, so callers that
    /// print one line must print the error's source chain.
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// Writing a CA file (or creating its directory) failed.
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// `ca init` would overwrite an existing CA; a CA that clients already trust must not be
    /// replaced by accident.
    #[error("{path} already exists (use --force to replace the CA)")]
    AlreadyExists { path: PathBuf },

    /// The CA key file can be read or written by group or others. The key can impersonate every
    /// intercepted site, so this is refused unless the operator explicitly allows it.
    #[error(
        "{path} has mode {mode:04o}: the CA key must not be accessible by group or others \
         (chmod 600 it, or explicitly allow insecure key permissions)"
    )]
    InsecureKeyFile { path: PathBuf, mode: u32 },

    /// The CA key path names a directory or another non-regular file.
    #[error("{path} is not a regular file")]
    NotAFile { path: PathBuf },

    /// A PEM file did not contain the block we need.
    #[error("{what}: no {label} PEM block found")]
    MissingPem {
        what: PemSource,
        label: &'static str,
    },

    /// A PEM file could not be decoded at all.
    #[error("{what}: invalid PEM")]
    Pem {
        what: PemSource,
        #[source]
        source: pem::PemError,
    },

    /// The CA key is in a format `ring` cannot load (PKCS#1, SEC1, encrypted PKCS#8).
    #[error(
        "CA key is a {found} block; only unencrypted PKCS#8 (\"PRIVATE KEY\") is supported: \
         convert it with `openssl pkcs8 -topk8 -nocrypt -in KEY -out KEY.pk8`"
    )]
    UnsupportedKeyFormat { found: String },

    /// A certificate's DER could not be parsed.
    #[error("cannot parse certificate")]
    ParseCertificate {
        #[source]
        source: x509_parser::nom::Err<x509_parser::error::X509Error>,
    },

    /// A certificate extension could not be parsed (duplicate or malformed extension).
    #[error("cannot parse certificate extension")]
    ParseExtension {
        #[source]
        source: x509_parser::error::X509Error,
    },

    /// The certificate given as CA cannot sign leaves.
    #[error("the certificate is not a usable CA: {reason}")]
    NotCa { reason: NotCaReason },

    /// The CA key does not belong to the CA certificate, so leaves would not verify.
    #[error("the CA key does not match the CA certificate's public key")]
    KeyMismatch,

    /// The CA is outside its validity period: every leaf it signs would be rejected.
    #[error("the CA certificate is valid from {not_before} to {not_after}, not now")]
    CaNotValidNow {
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    },

    /// A name (SNI, CONNECT host or origin SAN) is not a DNS name or IP address we can put in a
    /// certificate.
    #[error("{name:?} is not a valid DNS name or IP address for a certificate")]
    InvalidName { name: String },

    /// A key algorithm name was not recognised.
    #[error("unknown key algorithm {name:?} (expected ecdsa-p256, rsa-2048 or rsa-3072)")]
    UnknownKeyAlgorithm { name: String },

    /// The issuer settings are unusable (see the field for which limit).
    #[error("invalid leaf validity settings: {reason}")]
    InvalidValidity { reason: &'static str },

    /// rcgen refused to build or sign a certificate, or to load a key.
    #[error("certificate generation failed")]
    Rcgen {
        #[source]
        source: rcgen::Error,
    },

    /// Generating an RSA key failed.
    #[error("RSA key generation failed")]
    RsaKeyGen {
        #[source]
        source: rsa::Error,
    },

    /// Encoding a generated RSA key as PKCS#8 failed.
    #[error("RSA key encoding failed")]
    RsaKeyEncode {
        #[source]
        source: rsa::pkcs8::Error,
    },

    /// The operating system's random number generator failed.
    #[error("the system random number generator failed")]
    Random {
        #[source]
        source: getrandom::Error,
    },

    /// rustls rejected the key or the configuration.
    #[error("TLS configuration failed")]
    Tls {
        #[source]
        source: rustls::Error,
    },

    /// The blocking minting task panicked or was cancelled by runtime shutdown.
    #[error("minting task for {name} did not complete")]
    MintTask {
        name: String,
        #[source]
        source: tokio::task::JoinError,
    },
}

/// Which PEM input an error is about (a path when read from disk).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PemSource {
    /// The CA certificate.
    Certificate(Option<PathBuf>),
    /// The CA private key.
    Key(Option<PathBuf>),
}

impl std::fmt::Display for PemSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (what, path) = match self {
            PemSource::Certificate(path) => ("CA certificate", path),
            PemSource::Key(path) => ("CA key", path),
        };
        match path {
            Some(path) => write!(f, "{what} {}", path.display()),
            None => f.write_str(what),
        }
    }
}

/// Why a certificate cannot act as the interception CA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotCaReason {
    /// No basicConstraints extension: RFC 5280 clients refuse to chain through it.
    NoBasicConstraints,
    /// basicConstraints says CA:FALSE.
    NotCaTrue,
    /// keyUsage is present but lacks keyCertSign.
    NoKeyCertSign,
}

impl std::fmt::Display for NotCaReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NotCaReason::NoBasicConstraints => "it has no basicConstraints extension",
            NotCaReason::NotCaTrue => "basicConstraints is CA:FALSE",
            NotCaReason::NoKeyCertSign => "its keyUsage does not include keyCertSign",
        })
    }
}

impl From<rcgen::Error> for Error {
    fn from(source: rcgen::Error) -> Self {
        Error::Rcgen { source }
    }
}

impl From<rustls::Error> for Error {
    fn from(source: rustls::Error) -> Self {
        Error::Tls { source }
    }
}
