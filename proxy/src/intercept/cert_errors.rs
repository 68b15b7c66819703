//! An origin's failed TLS handshake in words a user can act on: every rustls and webpki error
//! becomes a sentence (never Rust's debug output) and, for certificate problems, one of a fixed
//! set of causes for `X-Portcullis-Error` ([`CAUSES`], all listed in the README's table).

use rustls::{AlertDescription, CertificateError};

use crate::error::ProxyError;

const EXPIRED: &str = "upstream-certificate-expired";
const NOT_YET_VALID: &str = "upstream-certificate-not-yet-valid";
const WRONG_HOST: &str = "upstream-certificate-wrong-host";
const UNTRUSTED: &str = "upstream-certificate-untrusted";
const REVOKED: &str = "upstream-certificate-revoked";
const WRONG_PURPOSE: &str = "upstream-certificate-wrong-purpose";
const UNSUPPORTED_ALGORITHM: &str = "upstream-certificate-unsupported-algorithm";
const INVALID: &str = "upstream-certificate-invalid";

/// Every cause a certificate problem can have (the README lists them all).
#[cfg(test)]
const CAUSES: [&str; 8] = [
    EXPIRED,
    NOT_YET_VALID,
    WRONG_HOST,
    UNTRUSTED,
    REVOKED,
    WRONG_PURPOSE,
    UNSUPPORTED_ALGORITHM,
    INVALID,
];

const UNKNOWN_ISSUER: &str = "its certificate is not signed by a trusted CA (self-signed, a \
                              private CA, or an incomplete chain)";
const NO_CHAIN: &str = "no acceptable chain to a trusted CA can be built from the certificates \
                        it sent";
const BAD_SIGNATURE: &str = "a signature in its certificate chain does not verify (a damaged or \
                             forged chain)";
const ALGORITHM: &str = "its certificate chain is signed with an algorithm this proxy does not \
                         accept (RSA PKCS#1, RSA-PSS or ECDSA P-256/P-384 are)";
const PURPOSE: &str = "its certificate is not meant for TLS servers (extended key usage)";

/// Names what went wrong in the TLS handshake with the origin `host`.
pub(crate) fn classify_handshake_error(err: &std::io::Error, host: &str) -> ProxyError {
    let rustls_error = err
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match rustls_error {
        Some(rustls::Error::InvalidCertificate(problem)) => {
            let (cause, reason) = certificate_problem(problem, host);
            ProxyError::UpstreamCertificate {
                cause,
                host: host.to_owned(),
                reason,
            }
        }
        Some(other) => ProxyError::UpstreamTls(format!("{host}: {}", tls_problem(other))),
        // An I/O error (reset, closed) already reads as a sentence.
        None => ProxyError::UpstreamTls(format!("{host}: {err}")),
    }
}

/// A certificate rustls refused: the cause and a sentence about "it", the origin.
pub(crate) fn certificate_problem(
    problem: &CertificateError,
    host: &str,
) -> (&'static str, String) {
    #[allow(deprecated, reason = "rustls still reports the variant it deprecated")]
    let (cause, reason): (&'static str, String) = match problem {
        CertificateError::Expired => (EXPIRED, "its certificate has expired".into()),
        CertificateError::ExpiredContext { not_after, .. } => (
            EXPIRED,
            format!("its certificate expired on {}", date(not_after.as_secs())),
        ),
        CertificateError::NotValidYet => (NOT_YET_VALID, "its certificate is not valid yet".into()),
        CertificateError::NotValidYetContext { not_before, .. } => (
            NOT_YET_VALID,
            format!(
                "its certificate is not valid before {}",
                date(not_before.as_secs())
            ),
        ),
        CertificateError::NotValidForName => (
            WRONG_HOST,
            format!("its certificate is not valid for {host}"),
        ),
        CertificateError::NotValidForNameContext { presented, .. } => {
            (WRONG_HOST, wrong_host(host, presented))
        }
        CertificateError::UnknownIssuer => (UNTRUSTED, UNKNOWN_ISSUER.into()),
        CertificateError::BadSignature => (UNTRUSTED, BAD_SIGNATURE.into()),
        CertificateError::Revoked => (REVOKED, "its certificate has been revoked".into()),
        CertificateError::UnknownRevocationStatus => (
            REVOKED,
            "the revocation status of its certificate is unknown".into(),
        ),
        CertificateError::ExpiredRevocationList
        | CertificateError::ExpiredRevocationListContext { .. } => (
            REVOKED,
            "the revocation list for its certificate has expired".into(),
        ),
        CertificateError::UnsupportedSignatureAlgorithm
        | CertificateError::UnsupportedSignatureAlgorithmContext { .. }
        | CertificateError::UnsupportedSignatureAlgorithmForPublicKeyContext { .. } => {
            (UNSUPPORTED_ALGORITHM, ALGORITHM.into())
        }
        CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
            (WRONG_PURPOSE, PURPOSE.into())
        }
        CertificateError::BadEncoding => (
            INVALID,
            "its certificate is malformed (it cannot be parsed)".into(),
        ),
        CertificateError::UnhandledCriticalExtension => (
            INVALID,
            "its certificate has a critical extension that cannot be checked".into(),
        ),
        CertificateError::InvalidOcspResponse => (
            INVALID,
            "the OCSP response it stapled to its certificate is invalid".into(),
        ),
        CertificateError::ApplicationVerificationFailure => {
            (INVALID, "its certificate failed verification".into())
        }
        CertificateError::Other(other) => match other.0.downcast_ref::<webpki::Error>() {
            Some(e) => webpki_problem(e),
            None => (INVALID, "its certificate failed verification".into()),
        },
        _ => (INVALID, "its certificate failed verification".into()),
    };
    (cause, reason)
}

/// The webpki errors rustls does not map to a [`CertificateError`] of its own.
fn webpki_problem(error: &webpki::Error) -> (&'static str, String) {
    use webpki::Error as E;
    #[allow(deprecated, reason = "webpki still reports the variants it deprecated")]
    let (cause, reason) = match error {
        E::CaUsedAsEndEntity => (
            UNTRUSTED,
            "it presents a CA certificate as its own (typically a self-signed certificate made \
             with `openssl req -x509`); a server certificate must be issued by a CA",
        ),
        E::EndEntityUsedAsCa => (
            UNTRUSTED,
            "its chain uses a server certificate as if it were a CA",
        ),
        E::UnknownIssuer => (UNTRUSTED, UNKNOWN_ISSUER),
        E::CertDistrusted => (
            UNTRUSTED,
            "its certificate, or a CA above it, is explicitly distrusted",
        ),
        E::NameConstraintViolation => (
            UNTRUSTED,
            "its certificate names hosts its CA is not allowed to vouch for (name constraints)",
        ),
        E::PathLenConstraintViolated
        | E::MaximumPathDepthExceeded
        | E::MaximumPathBuildCallsExceeded
        | E::MaximumSignatureChecksExceeded
        | E::MaximumNameConstraintComparisonsExceeded => (UNTRUSTED, NO_CHAIN),
        E::InvalidSignatureForPublicKey => (UNTRUSTED, BAD_SIGNATURE),
        E::UnsupportedSignatureAlgorithm
        | E::UnsupportedSignatureAlgorithmContext(_)
        | E::UnsupportedSignatureAlgorithmForPublicKey
        | E::UnsupportedSignatureAlgorithmForPublicKeyContext(_) => {
            (UNSUPPORTED_ALGORITHM, ALGORITHM)
        }
        E::EmptyEkuExtension | E::RequiredEkuNotFound | E::RequiredEkuNotFoundContext(_) => {
            (WRONG_PURPOSE, PURPOSE)
        }
        E::CertExpired { .. } | E::InvalidCertValidity => (EXPIRED, "its certificate has expired"),
        E::CertNotValidYet { .. } => (NOT_YET_VALID, "its certificate is not valid yet"),
        E::CertRevoked => (REVOKED, "its certificate has been revoked"),
        E::SignatureAlgorithmMismatch => (
            INVALID,
            "its certificate states two different signature algorithms",
        ),
        _ => (
            INVALID,
            "its certificate is malformed or uses a feature this proxy cannot check",
        ),
    };
    (cause, reason.to_owned())
}

/// A handshake that failed for a reason other than the certificate.
fn tls_problem(error: &rustls::Error) -> String {
    use rustls::Error as E;
    match error {
        E::AlertReceived(alert) => alert_problem(*alert),
        E::PeerIncompatible(_) => "its TLS settings are incompatible with this proxy's (no common \
                                   protocol version, cipher suite, key exchange or signature \
                                   scheme)"
            .into(),
        E::PeerMisbehaved(_) => "it broke the TLS protocol during the handshake".into(),
        E::InvalidMessage(_)
        | E::InappropriateMessage { .. }
        | E::InappropriateHandshakeMessage { .. }
        | E::PeerSentOversizedRecord
        | E::DecryptError => "it sent a malformed or unexpected TLS message (is it speaking TLS \
                              on this port?)"
            .into(),
        E::NoCertificatesPresented => "it sent no certificate".into(),
        E::NoApplicationProtocol => {
            "it accepts none of the application protocols offered (ALPN)".into()
        }
        E::InvalidCertificate(problem) => certificate_problem(problem, "it").1,
        // The rest are local failures (clock, randomness, configuration) whose rustls text is
        // already a sentence.
        other => format!("the TLS handshake failed: {other}"),
    }
}

fn alert_problem(alert: AlertDescription) -> String {
    use AlertDescription as A;
    match alert {
        A::HandshakeFailure | A::ProtocolVersion | A::InsufficientSecurity => {
            "it refused the TLS handshake: it shares no protocol version or cipher suite with \
             this proxy (TLS 1.2 or 1.3 with current ciphers)"
                .into()
        }
        A::UnrecognisedName => "it does not serve this name (it refused the SNI)".into(),
        A::CertificateRequired | A::BadCertificate | A::UnknownCA | A::AccessDenied => {
            "it asks for a client certificate, which an inspecting proxy cannot present (give \
             this host a policy rule with action = \"tunnel\")"
                .into()
        }
        A::NoApplicationProtocol => {
            "it accepts none of the application protocols offered (ALPN)".into()
        }
        other => format!(
            "it ended the handshake with the TLS alert \"{}\"",
            alert_name(other)
        ),
    }
}

/// An alert as RFC 8446 names it in words: `DecodeError` → "decode error".
fn alert_name(alert: AlertDescription) -> String {
    let Some(name) = alert.as_str() else {
        return format!("number {}", u8::from(alert));
    };
    let mut words = String::new();
    for c in name.chars() {
        if c.is_ascii_uppercase() && !words.is_empty() {
            words.push(' ');
        }
        words.push(c.to_ascii_lowercase());
    }
    words
}

/// Up to three of the names a certificate is for.
fn wrong_host(host: &str, presented: &[String]) -> String {
    if presented.is_empty() {
        return format!("its certificate is not valid for {host}");
    }
    let mut names = presented
        .iter()
        .take(3)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if presented.len() > 3 {
        names.push_str(", …");
    }
    format!("its certificate is not valid for {host} (it is for {names})")
}

/// A Unix time as an HTTP date (`Sun, 06 Nov 1994 08:49:37 GMT`).
fn date(secs: u64) -> String {
    httpdate::fmt_http_date(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
}

#[cfg(test)]
mod tests;
