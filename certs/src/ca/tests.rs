#![expect(clippy::unwrap_used, reason = "tests fail loudly")]

use std::fs;
use std::os::unix::fs::PermissionsExt as _;

use rcgen::{CertificateParams, KeyPair};

use super::*;
use crate::test_util::{openssl, openssl_ok, test_ca, write};

fn mode(path: &std::path::Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

/// A self-signed certificate shaped by `shape`, with its key, as PEM.
fn self_signed(shape: impl FnOnce(&mut CertificateParams)) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["x.example".to_owned()]).unwrap();
    params.not_before = OffsetDateTime::now_utc() - Duration::from_secs(3600);
    params.not_after = OffsetDateTime::now_utc() + Duration::from_secs(86_400);
    shape(&mut params);
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

#[test]
fn generated_ca_is_a_ca_to_openssl() {
    let dir = tempfile::tempdir().unwrap();
    let ca = test_ca();
    let pem = write(dir.path(), "ca.pem", ca.cert_pem());
    let pem = pem.to_str().unwrap();
    let text = openssl_ok(&["x509", "-in", pem, "-noout", "-text"]);
    assert!(text.contains("CA:TRUE, pathlen:0"), "{text}");
    assert!(text.contains("Certificate Sign"), "{text}");
    assert!(text.contains("Subject: CN = Portcullis Test CA"), "{text}");
    assert!(text.contains("Subject Key Identifier"), "{text}");
    assert!(text.contains("ecdsa-with-SHA256"), "{text}");
    openssl_ok(&["verify", "-CAfile", pem, pem]);
    assert_eq!(ca.subject(), "CN=Portcullis Test CA");
    let fingerprint = openssl_ok(&["x509", "-in", pem, "-noout", "-fingerprint", "-sha256"]);
    assert!(fingerprint.contains(&ca.fingerprint()), "{fingerprint}");
}

#[test]
fn generated_ca_validity_follows_the_params() {
    let ca = CertificateAuthority::generate(&CaParams {
        validity: Duration::from_secs(10 * 86_400),
        ..CaParams::default()
    })
    .unwrap();
    let days = (ca.not_after() - ca.not_before()).whole_days();
    assert_eq!(days, 11, "10 days ahead plus one day backdated");
}

#[test]
fn pem_round_trip_keeps_the_ca() {
    let ca = test_ca();
    let loaded = CertificateAuthority::from_pem(&ca.cert_pem(), &ca.key_pem()).unwrap();
    assert_eq!(loaded.cert_der(), ca.cert_der());
    assert_eq!(loaded.fingerprint(), ca.fingerprint());
}

#[test]
fn a_key_from_another_ca_is_refused() {
    let (a, b) = (test_ca(), test_ca());
    let err = CertificateAuthority::from_pem(&a.cert_pem(), &b.key_pem()).unwrap_err();
    assert!(matches!(err, Error::KeyMismatch), "{err}");
}

#[test]
fn certificates_that_cannot_sign_are_refused() {
    type Shape = fn(&mut CertificateParams);
    let cases: [(Shape, NotCaReason); 3] = [
        (|_| {}, NotCaReason::NoBasicConstraints),
        (|p| p.is_ca = IsCa::ExplicitNoCa, NotCaReason::NotCaTrue),
        (
            |p| {
                p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
                p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            },
            NotCaReason::NoKeyCertSign,
        ),
    ];
    for (shape, expected) in cases {
        let (cert, key) = self_signed(shape);
        match CertificateAuthority::from_pem(&cert, &key) {
            Err(Error::NotCa { reason }) => assert_eq!(reason, expected),
            other => panic!("expected NotCa({expected:?}), got {other:?}"),
        }
        assert!(matches!(ca_cert_from_pem(&cert), Err(Error::NotCa { .. })));
    }
    // Without keyUsage a CA:TRUE certificate may sign (RFC 5280; openssl's default CAs).
    let (cert, key) = self_signed(|p| p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained));
    assert!(CertificateAuthority::from_pem(&cert, &key).is_ok());
}

#[test]
fn an_expired_ca_is_refused() {
    let (cert, key) = self_signed(|p| {
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.not_before = OffsetDateTime::now_utc() - Duration::from_secs(10 * 86_400);
        p.not_after = OffsetDateTime::now_utc() - Duration::from_secs(86_400);
    });
    let err = CertificateAuthority::from_pem(&cert, &key).unwrap_err();
    assert!(matches!(err, Error::CaNotValidNow { .. }), "{err}");
}

#[test]
fn missing_and_unsupported_pem_blocks_are_named() {
    let ca = test_ca();
    let err = CertificateAuthority::from_pem(&ca.key_pem(), &ca.key_pem()).unwrap_err();
    assert!(
        matches!(
            err,
            Error::MissingPem {
                label: "CERTIFICATE",
                ..
            }
        ),
        "{err}"
    );
    let err = CertificateAuthority::from_pem(&ca.cert_pem(), &ca.cert_pem()).unwrap_err();
    assert!(
        matches!(
            err,
            Error::MissingPem {
                label: "PRIVATE KEY",
                ..
            }
        ),
        "{err}"
    );
    // SEC1 EC key as `openssl ecparam -genkey` writes it.
    let sec1 = openssl_ok(&["ecparam", "-name", "prime256v1", "-genkey", "-noout"]);
    let err = CertificateAuthority::from_pem(&ca.cert_pem(), &sec1).unwrap_err();
    assert!(
        matches!(&err, Error::UnsupportedKeyFormat { found } if found == "EC PRIVATE KEY"),
        "{err}"
    );
    assert!(err.to_string().contains("openssl pkcs8 -topk8"));
}

#[test]
fn an_openssl_made_ca_loads() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
    openssl_ok(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-subj",
        "/CN=OpenSSL Made CA",
        "-days",
        "30",
        "-keyout",
        key.to_str().unwrap(),
        "-out",
        cert.to_str().unwrap(),
    ]);
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
    let ca = CertificateAuthority::load(&cert, &key, KeyFileCheck::OwnerOnly).unwrap();
    assert_eq!(ca.subject(), "CN=OpenSSL Made CA");
}

#[test]
fn write_to_dir_sets_modes_and_refuses_to_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let ca = test_ca();
    let files = ca.write_to_dir(&data, false).unwrap();
    assert_eq!(mode(&files.cert), 0o644);
    assert_eq!(mode(&files.key), 0o600);
    assert_eq!(mode(&data), 0o700);
    assert_eq!(
        fs::read_dir(&data).unwrap().count(),
        2,
        "no temporary files left"
    );

    let other = test_ca();
    let err = other.write_to_dir(&data, false).unwrap_err();
    assert!(matches!(err, Error::AlreadyExists { .. }), "{err}");
    let loaded = CertificateAuthority::load_from_dir(&data, KeyFileCheck::OwnerOnly).unwrap();
    assert_eq!(
        loaded.fingerprint(),
        ca.fingerprint(),
        "the first CA survived"
    );

    other.write_to_dir(&data, true).unwrap();
    let loaded = CertificateAuthority::load_from_dir(&data, KeyFileCheck::OwnerOnly).unwrap();
    assert_eq!(loaded.fingerprint(), other.fingerprint());
    assert_eq!(mode(&files.key), 0o600);
}

#[test]
fn a_key_readable_by_others_is_refused_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let files = test_ca().write_to_dir(dir.path(), false).unwrap();
    for loose in [0o640, 0o604, 0o620, 0o644] {
        fs::set_permissions(&files.key, fs::Permissions::from_mode(loose)).unwrap();
        match CertificateAuthority::load_from_dir(dir.path(), KeyFileCheck::OwnerOnly) {
            Err(Error::InsecureKeyFile { mode, .. }) => assert_eq!(mode, loose),
            other => panic!("mode {loose:o} accepted: {other:?}"),
        }
        assert!(
            CertificateAuthority::load_from_dir(dir.path(), KeyFileCheck::AllowInsecure).is_ok()
        );
    }
    fs::set_permissions(&files.key, fs::Permissions::from_mode(0o400)).unwrap();
    assert!(CertificateAuthority::load_from_dir(dir.path(), KeyFileCheck::OwnerOnly).is_ok());
}

/// A key path that is a directory is said to be one (not "has mode 0755"), and a key that
/// cannot be opened keeps the operating system's reason as the error's source.
#[test]
fn a_key_that_is_not_a_readable_file_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let files = test_ca().write_to_dir(dir.path(), false).unwrap();
    fs::remove_file(&files.key).unwrap();
    fs::create_dir(&files.key).unwrap();
    for check in [KeyFileCheck::OwnerOnly, KeyFileCheck::AllowInsecure] {
        match CertificateAuthority::load_from_dir(dir.path(), check) {
            Err(e @ Error::NotAFile { .. }) => {
                assert_eq!(
                    e.to_string(),
                    format!("{} is not a regular file", files.key.display())
                );
            }
            other => panic!("a directory as key: {other:?}"),
        }
    }
    fs::remove_dir(&files.key).unwrap();
    let err = CertificateAuthority::load_from_dir(dir.path(), KeyFileCheck::OwnerOnly).unwrap_err();
    let source = std::error::Error::source(&err).map(ToString::to_string);
    assert!(matches!(err, Error::Read { .. }), "{err:?}");
    assert_eq!(
        source.as_deref(),
        Some("No such file or directory (os error 2)")
    );
}

#[test]
fn read_ca_cert_checks_the_certificate_alone() {
    let dir = tempfile::tempdir().unwrap();
    let ca = test_ca();
    let files = ca.write_to_dir(dir.path(), false).unwrap();
    fs::remove_file(&files.key).unwrap();
    assert_eq!(&read_ca_cert(&files.cert).unwrap(), ca.cert_der());

    let (leaf, _) = self_signed(|p| p.is_ca = IsCa::ExplicitNoCa);
    let path = write(dir.path(), "leaf.pem", leaf);
    assert!(matches!(read_ca_cert(&path), Err(Error::NotCa { .. })));
    assert!(matches!(
        read_ca_cert(&dir.path().join("missing.pem")),
        Err(Error::Read { .. })
    ));
    let (ok, _) = openssl(&["x509", "-in", path.to_str().unwrap(), "-noout"]);
    assert!(ok, "the leaf fixture itself is a valid certificate");
}
