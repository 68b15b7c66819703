#![expect(clippy::unwrap_used, reason = "tests")]

use std::sync::Arc;

use rustls::pki_types::{ServerName, UnixTime};
use rustls::{CertificateError, ExtendedKeyPurpose, OtherError};

use super::*;

/// Every certificate problem rustls can report, and the webpki errors it passes on as `Other`.
#[allow(deprecated, reason = "rustls and webpki still report these")]
fn every_problem() -> Vec<CertificateError> {
    let time = UnixTime::since_unix_epoch(std::time::Duration::from_secs(1_700_000_000));
    let webpki = [
        webpki::Error::CaUsedAsEndEntity,
        webpki::Error::EndEntityUsedAsCa,
        webpki::Error::CertDistrusted,
        webpki::Error::NameConstraintViolation,
        webpki::Error::PathLenConstraintViolated,
        webpki::Error::MaximumPathDepthExceeded,
        webpki::Error::MaximumPathBuildCallsExceeded,
        webpki::Error::MaximumSignatureChecksExceeded,
        webpki::Error::MaximumNameConstraintComparisonsExceeded,
        webpki::Error::InvalidSignatureForPublicKey,
        webpki::Error::UnsupportedSignatureAlgorithmForPublicKey,
        webpki::Error::EmptyEkuExtension,
        webpki::Error::SignatureAlgorithmMismatch,
        webpki::Error::ExtensionValueInvalid,
        webpki::Error::MalformedExtensions,
        webpki::Error::InvalidSerialNumber,
        webpki::Error::BadDer,
    ];
    let mut all = vec![
        CertificateError::BadEncoding,
        CertificateError::Expired,
        CertificateError::ExpiredContext {
            time,
            not_after: time,
        },
        CertificateError::NotValidYet,
        CertificateError::NotValidYetContext {
            time,
            not_before: time,
        },
        CertificateError::Revoked,
        CertificateError::UnhandledCriticalExtension,
        CertificateError::UnknownIssuer,
        CertificateError::UnknownRevocationStatus,
        CertificateError::ExpiredRevocationList,
        CertificateError::ExpiredRevocationListContext {
            time,
            next_update: time,
        },
        CertificateError::BadSignature,
        CertificateError::UnsupportedSignatureAlgorithm,
        CertificateError::UnsupportedSignatureAlgorithmContext {
            signature_algorithm_id: vec![1, 2, 3],
            supported_algorithms: vec![rustls::pki_types::alg_id::ECDSA_SHA256],
        },
        CertificateError::UnsupportedSignatureAlgorithmForPublicKeyContext {
            signature_algorithm_id: vec![1, 2, 3],
            public_key_algorithm_id: vec![4, 5, 6],
        },
        CertificateError::NotValidForName,
        CertificateError::NotValidForNameContext {
            expected: ServerName::try_from("mail.example.com").unwrap(),
            presented: vec!["a.example".into(), "b.example".into()],
        },
        CertificateError::InvalidPurpose,
        CertificateError::InvalidPurposeContext {
            required: ExtendedKeyPurpose::ServerAuth,
            presented: vec![ExtendedKeyPurpose::ClientAuth],
        },
        CertificateError::InvalidOcspResponse,
        CertificateError::ApplicationVerificationFailure,
    ];
    all.extend(
        webpki
            .into_iter()
            .map(|e| CertificateError::Other(OtherError(Arc::new(e)))),
    );
    all
}

/// What the issue saw on error pages: Rust's debug output instead of a sentence.
fn looks_like_debug_output(text: &str) -> bool {
    ["{", "}", "Context", "Error(", "::", "OtherError", "[", "\""]
        .iter()
        .any(|s| text.contains(s))
}

#[test]
fn every_certificate_problem_is_a_sentence_with_a_listed_cause() {
    for problem in every_problem() {
        let (cause, reason) = certificate_problem(&problem, "mail.example.com");
        assert!(CAUSES.contains(&cause), "{problem:?}: {cause}");
        assert!(
            !looks_like_debug_output(&reason.replace("`openssl req -x509`", "")),
            "{problem:?}: {reason}"
        );
        assert!(
            reason.starts_with("its ")
                || reason.starts_with("it ")
                || reason.starts_with("a ")
                || reason.starts_with("the ")
                || reason.starts_with("no "),
            "{problem:?}: {reason}"
        );
    }
}

#[test]
fn self_signed_leaves_are_untrusted_whatever_their_ca_flag() {
    let ca_flag = CertificateError::Other(OtherError(Arc::new(webpki::Error::CaUsedAsEndEntity)));
    for problem in [CertificateError::UnknownIssuer, ca_flag] {
        assert_eq!(
            certificate_problem(&problem, "h").0,
            UNTRUSTED,
            "{problem:?}"
        );
    }
    let (_, reason) = certificate_problem(
        &CertificateError::Other(OtherError(Arc::new(webpki::Error::CaUsedAsEndEntity))),
        "h",
    );
    assert!(reason.contains("self-signed"), "{reason}");
}

#[test]
fn dates_and_names_are_written_for_people() {
    let time = UnixTime::since_unix_epoch(std::time::Duration::from_secs(1_700_000_000));
    let (cause, reason) = certificate_problem(
        &CertificateError::ExpiredContext {
            time,
            not_after: time,
        },
        "h",
    );
    assert_eq!(cause, EXPIRED);
    assert_eq!(
        reason,
        "its certificate expired on Tue, 14 Nov 2023 22:13:20 GMT"
    );
    let names: Vec<String> = (1..=5).map(|i| format!("n{i}.example")).collect();
    let (_, reason) = certificate_problem(
        &CertificateError::NotValidForNameContext {
            expected: ServerName::try_from("mail.example.com").unwrap(),
            presented: names,
        },
        "mail.example.com",
    );
    assert_eq!(
        reason,
        "its certificate is not valid for mail.example.com (it is for n1.example, n2.example, \
         n3.example, …)"
    );
}

#[test]
fn other_handshake_failures_are_sentences_too() {
    use rustls::{AlertDescription, PeerIncompatible, PeerMisbehaved};
    for error in [
        rustls::Error::AlertReceived(AlertDescription::HandshakeFailure),
        rustls::Error::AlertReceived(AlertDescription::DecodeError),
        rustls::Error::AlertReceived(AlertDescription::Unknown(200)),
        rustls::Error::AlertReceived(AlertDescription::CertificateRequired),
        rustls::Error::PeerIncompatible(PeerIncompatible::NoCipherSuitesInCommon),
        rustls::Error::PeerMisbehaved(PeerMisbehaved::TooManyEmptyFragments),
        rustls::Error::InvalidMessage(rustls::InvalidMessage::MissingData("x")),
        rustls::Error::NoCertificatesPresented,
        rustls::Error::DecryptError,
    ] {
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, error.clone());
        let err = classify_handshake_error(&io, "mail.example.com");
        assert_eq!(err.cause(), "upstream-tls-error", "{error:?}");
        let text = err.to_string();
        assert!(
            !looks_like_debug_output(&text.replace('"', "")),
            "{error:?}: {text}"
        );
    }
    let io = std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        rustls::Error::AlertReceived(AlertDescription::DecodeError),
    );
    assert_eq!(
        classify_handshake_error(&io, "h").to_string(),
        "TLS handshake with the origin failed: h: it ended the handshake with the TLS alert \
         \"decode error\""
    );
    let io = std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
    );
    let err = classify_handshake_error(&io, "h");
    assert_eq!(err.cause(), UNTRUSTED);
}

/// The README's error table lists every cause a certificate problem can have.
#[test]
fn the_readme_lists_every_cause() {
    let readme = include_str!("../../../../README.md");
    let table = readme
        .split("## Errors clients see")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .unwrap();
    for cause in CAUSES {
        assert!(
            table.contains(&format!("`{cause}`")),
            "{cause} missing from the README"
        );
    }
}
