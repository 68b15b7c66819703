#![expect(clippy::unwrap_used, reason = "tests fail loudly")]

use std::net::IpAddr;
use std::path::Path;

use x509_parser::extensions::ParsedExtension;

use super::*;
use crate::test_util::{openssl, openssl_ok, test_ca, test_ca_with, write};
use crate::{cert_pem, origin_sans};

fn dns(name: &str) -> LeafName {
    LeafName::from_sni(name).unwrap()
}

fn ip(addr: &str) -> LeafName {
    LeafName::Ip(addr.parse::<IpAddr>().unwrap())
}

fn mint(issuer: &Issuer, request: LeafRequest) -> IssuedLeaf {
    issuer.issue(&request).unwrap()
}

/// Writes the CA and the leaf as PEM; returns their paths as strings for openssl.
fn write_pair(dir: &Path, ca: &CertificateAuthority, leaf: &IssuedLeaf) -> (String, String) {
    let ca_path = write(dir, "ca.pem", ca.cert_pem());
    let leaf_path = write(dir, "leaf.pem", cert_pem(&leaf.key.cert[0]));
    (
        ca_path.to_str().unwrap().to_owned(),
        leaf_path.to_str().unwrap().to_owned(),
    )
}

/// `openssl verify` with server purpose and, optionally, a host or IP check.
fn verify(ca: &str, leaf: &str, check: &[&str]) -> (bool, String) {
    let mut args = vec!["verify", "-CAfile", ca, "-purpose", "sslserver"];
    args.extend_from_slice(check);
    args.push(leaf);
    openssl(&args)
}

fn extension_key_ids(der: &[u8]) -> (Option<Vec<u8>>, Option<Vec<u8>>) {
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    let (mut ski, mut aki) = (None, None);
    for ext in cert.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(id) => ski = Some(id.0.to_vec()),
            ParsedExtension::AuthorityKeyIdentifier(a) => {
                aki = a.key_identifier.as_ref().map(|id| id.0.to_vec())
            }
            _ => {}
        }
    }
    (ski, aki)
}

#[test]
fn ecdsa_leaf_verifies_and_has_the_required_fields() {
    let dir = tempfile::tempdir().unwrap();
    let ca = test_ca();
    let issuer = Issuer::new(ca.clone(), IssuerConfig::default()).unwrap();
    let leaf = mint(&issuer, LeafRequest::new(dns("Outlook.Office365.com.")));
    let (ca_pem, leaf_pem) = write_pair(dir.path(), &ca, &leaf);

    let (ok, out) = verify(
        &ca_pem,
        &leaf_pem,
        &["-verify_hostname", "outlook.office365.com"],
    );
    assert!(ok && out.contains("OK"), "{out}");
    let (ok, out) = verify(&ca_pem, &leaf_pem, &["-verify_hostname", "other.example"]);
    assert!(!ok, "hostname check must fail for another name: {out}");

    let text = openssl_ok(&["x509", "-in", &leaf_pem, "-noout", "-text"]);
    assert!(text.contains("DNS:outlook.office365.com"), "{text}");
    assert!(!text.contains("IP Address"), "{text}");
    assert!(text.contains("TLS Web Server Authentication"), "{text}");
    assert!(text.contains("CA:FALSE"), "{text}");
    assert!(text.contains("Digital Signature"), "{text}");
    assert!(
        text.contains("Subject: CN = outlook.office365.com"),
        "{text}"
    );
    assert!(text.contains("Issuer: CN = Portcullis Test CA"), "{text}");
    assert!(text.contains("ASN1 OID: prime256v1"), "{text}");

    // serial=<hex>: 16 bytes, top bit clear (positive).
    let serial = openssl_ok(&["x509", "-in", &leaf_pem, "-noout", "-serial"]);
    let hex = serial.trim().strip_prefix("serial=").unwrap();
    assert_eq!(hex.len(), 32, "{serial}");
    assert!(u8::from_str_radix(&hex[..2], 16).unwrap() < 0x80);

    // Validity: backdated by the configured day, 30 days in total.
    let (_, cert) = x509_parser::parse_x509_certificate(&leaf.key.cert[0]).unwrap();
    let (nb, na) = (
        cert.validity().not_before.to_datetime(),
        cert.validity().not_after.to_datetime(),
    );
    let now = OffsetDateTime::now_utc();
    assert!(
        (now - nb - time::Duration::DAY).abs() < time::Duration::minutes(1),
        "{nb}"
    );
    assert_eq!(na - nb, time::Duration::days(30));
    assert_eq!(SystemTime::from(na), leaf.not_after);

    // AKI = CA's SKI; the leaf's own SKI differs.
    let (ca_ski, _) = extension_key_ids(ca.cert_der());
    let (leaf_ski, leaf_aki) = extension_key_ids(&leaf.key.cert[0]);
    assert!(ca_ski.is_some());
    assert_eq!(leaf_aki, ca_ski);
    assert_ne!(leaf_ski, ca_ski);

    // The chain handed to rustls: leaf, then CA.
    assert_eq!(leaf.key.cert.len(), 2);
    assert_eq!(&leaf.key.cert[1], ca.cert_der());
    assert!(leaf.key.keys_match().is_ok());
}

#[test]
fn ip_targets_get_an_ip_san_not_a_dns_san() {
    let dir = tempfile::tempdir().unwrap();
    let ca = test_ca();
    let issuer = Issuer::new(ca.clone(), IssuerConfig::default()).unwrap();
    let name = LeafName::for_connection(None, "[2001:db8::10]").unwrap();
    let leaf = mint(&issuer, LeafRequest::new(name));
    let (ca_pem, leaf_pem) = write_pair(dir.path(), &ca, &leaf);
    let (ok, out) = verify(&ca_pem, &leaf_pem, &["-verify_ip", "2001:db8::10"]);
    assert!(ok, "{out}");
    let sans = openssl_ok(&["x509", "-in", &leaf_pem, "-noout", "-ext", "subjectAltName"]);
    assert!(sans.contains("IP Address:2001:DB8:0:0:0:0:0:10"), "{sans}");
    assert!(!sans.contains("DNS:"), "{sans}");
}

#[test]
fn origin_sans_are_copied_so_other_names_validate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = test_ca();
    let issuer = Issuer::new(ca.clone(), IssuerConfig::default()).unwrap();
    // An "origin" certificate made by openssl, with names of every kind.
    let key = dir.path().join("origin.key");
    let origin = dir.path().join("origin.pem");
    openssl_ok(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-subj",
        "/CN=mail.contoso.example",
        "-days",
        "2",
        "-addext",
        "subjectAltName=DNS:Mail.Contoso.Example,DNS:*.contoso.example,IP:192.0.2.25,\
         email:admin@contoso.example,URI:https://contoso.example/",
        "-keyout",
        key.to_str().unwrap(),
        "-out",
        origin.to_str().unwrap(),
    ]);
    let der = pem::parse(std::fs::read(&origin).unwrap())
        .unwrap()
        .into_contents();
    let sans = origin_sans(&der).unwrap();
    let shown: Vec<String> = sans.iter().map(ToString::to_string).collect();
    assert_eq!(
        shown,
        ["mail.contoso.example", "*.contoso.example", "192.0.2.25"]
    );

    // The client asked by IP; the leaf also carries the origin's names.
    let leaf = mint(&issuer, LeafRequest::new(ip("192.0.2.25")).with_sans(sans));
    let (ca_pem, leaf_pem) = write_pair(dir.path(), &ca, &leaf);
    for check in [
        ["-verify_ip", "192.0.2.25"],
        ["-verify_hostname", "mail.contoso.example"],
        ["-verify_hostname", "autodiscover.contoso.example"],
    ] {
        let (ok, out) = verify(&ca_pem, &leaf_pem, &check);
        assert!(ok, "{check:?}: {out}");
    }
    let text = openssl_ok(&["x509", "-in", &leaf_pem, "-noout", "-ext", "subjectAltName"]);
    // The requested name comes first and is not repeated.
    assert_eq!(text.matches("192.0.2.25").count(), 1, "{text}");
    assert!(
        text.contains("IP Address:192.0.2.25, DNS:mail.contoso.example"),
        "{text}"
    );
}

#[test]
fn every_leaf_gets_its_own_serial() {
    let ca = test_ca();
    let issuer = Issuer::new(ca, IssuerConfig::default()).unwrap();
    let serial = |leaf: &IssuedLeaf| {
        let (_, cert) = x509_parser::parse_x509_certificate(&leaf.key.cert[0]).unwrap();
        cert.raw_serial().to_vec()
    };
    let a = mint(&issuer, LeafRequest::new(dns("a.example")));
    let b = mint(&issuer, LeafRequest::new(dns("a.example")));
    assert_ne!(serial(&a), serial(&b));
}

#[test]
fn rsa_leaves_from_an_rsa_ca_verify_and_share_one_key() {
    let dir = tempfile::tempdir().unwrap();
    let ca = test_ca_with(KeyAlgorithm::Rsa2048);
    let config = IssuerConfig {
        key_algorithm: KeyAlgorithm::Rsa2048,
        ..IssuerConfig::default()
    };
    let issuer = Issuer::new(ca.clone(), config).unwrap();
    let a = mint(&issuer, LeafRequest::new(dns("a.example")));
    let b = mint(&issuer, LeafRequest::new(dns("b.example")));
    let (ca_pem, leaf_pem) = write_pair(dir.path(), &ca, &a);
    let (ok, out) = verify(&ca_pem, &leaf_pem, &["-verify_hostname", "a.example"]);
    assert!(ok, "{out}");
    let text = openssl_ok(&["x509", "-in", &leaf_pem, "-noout", "-text"]);
    assert!(text.contains("Public-Key: (2048 bit)"), "{text}");
    assert!(text.contains("sha256WithRSAEncryption"), "{text}");
    assert!(text.contains("Key Encipherment"), "{text}");
    assert!(a.key.keys_match().is_ok() && b.key.keys_match().is_ok());

    let spki = |leaf: &IssuedLeaf| {
        let (_, cert) = x509_parser::parse_x509_certificate(&leaf.key.cert[0]).unwrap();
        (cert.public_key().raw.to_vec(), cert.raw_serial().to_vec())
    };
    let ((key_a, serial_a), (key_b, serial_b)) = (spki(&a), spki(&b));
    assert_eq!(key_a, key_b, "RSA mode reuses the process' leaf key");
    assert_ne!(serial_a, serial_b, "but never a serial");
}

#[test]
fn leaves_stay_inside_the_ca_validity() {
    // A CA valid from an hour ago (less than the one-day backdate) until two days from now.
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.not_before = OffsetDateTime::now_utc() - Duration::from_secs(3600);
    params.not_after = OffsetDateTime::now_utc() + Duration::from_secs(2 * 86_400);
    let cert = params.self_signed(&key).unwrap();
    let ca = Arc::new(CertificateAuthority::from_pem(&cert.pem(), &key.serialize_pem()).unwrap());

    let issuer = Issuer::new(ca.clone(), IssuerConfig::default()).unwrap();
    let leaf = mint(&issuer, LeafRequest::new(dns("a.example")));
    let (_, cert) = x509_parser::parse_x509_certificate(&leaf.key.cert[0]).unwrap();
    assert_eq!(cert.validity().not_before.to_datetime(), ca.not_before());
    assert_eq!(cert.validity().not_after.to_datetime(), ca.not_after());
}

#[test]
fn long_names_get_no_common_name_but_still_validate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = test_ca();
    let issuer = Issuer::new(ca.clone(), IssuerConfig::default()).unwrap();
    let long = format!("{}.{}.example", "a".repeat(60), "b".repeat(60));
    let leaf = mint(&issuer, LeafRequest::new(dns(&long)));
    let (ca_pem, leaf_pem) = write_pair(dir.path(), &ca, &leaf);
    let (ok, out) = verify(&ca_pem, &leaf_pem, &["-verify_hostname", &long]);
    assert!(ok, "{out}");
}

#[test]
fn an_openssl_made_ca_signs_leaves_that_chain_by_its_sha1_ski() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
    openssl_ok(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/O=Corp/CN=Corp Proxy CA",
        "-days",
        "30",
        "-keyout",
        key.to_str().unwrap(),
        "-out",
        cert.to_str().unwrap(),
    ]);
    let ca = Arc::new(
        CertificateAuthority::load(&cert, &key, crate::KeyFileCheck::AllowInsecure).unwrap(),
    );
    let issuer = Issuer::new(ca.clone(), IssuerConfig::default()).unwrap();
    let leaf = mint(&issuer, LeafRequest::new(dns("a.example")));
    let (ca_ski, _) = extension_key_ids(ca.cert_der());
    let (_, leaf_aki) = extension_key_ids(&leaf.key.cert[0]);
    assert_eq!(leaf_aki, ca_ski);
    let (ca_pem, leaf_pem) = write_pair(dir.path(), &ca, &leaf);
    let (ok, out) = verify(&ca_pem, &leaf_pem, &["-verify_hostname", "a.example"]);
    assert!(ok, "{out}");
    let text = openssl_ok(&["x509", "-in", &leaf_pem, "-noout", "-text"]);
    assert!(
        text.contains("Issuer: O = Corp, CN = Corp Proxy CA"),
        "{text}"
    );
}

#[test]
fn unusable_validity_settings_are_refused() {
    let ca = test_ca();
    for (validity_days, backdate_hours) in [(398, 1), (1, 24)] {
        let config = IssuerConfig {
            validity: Duration::from_secs(validity_days * 86_400),
            backdate: Duration::from_secs(backdate_hours * 3600),
            ..IssuerConfig::default()
        };
        assert!(matches!(
            Issuer::new(ca.clone(), config),
            Err(Error::InvalidValidity { .. })
        ));
    }
    let max = IssuerConfig {
        validity: MAX_LEAF_VALIDITY,
        ..IssuerConfig::default()
    };
    assert!(Issuer::new(ca, max).is_ok());
}
