//! Test certificates, generated at run time (no keys are checked in).

use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A fresh CA and a leaf for `names` (DNS names or IP literals). Returns the CA certificate
/// PEM, the leaf chain (leaf, CA) and the leaf key.
pub fn origin_certificate(
    names: &[&str],
) -> (String, Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let ca_key = KeyPair::generate().unwrap_or_else(|e| panic!("{e}"));
    let mut ca_params =
        CertificateParams::new(Vec::<String>::new()).unwrap_or_else(|e| panic!("{e}"));
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Portcullis Test Origin CA");
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key).unwrap_or_else(|e| panic!("{e}"));

    let leaf_key = KeyPair::generate().unwrap_or_else(|e| panic!("{e}"));
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let mut params = CertificateParams::new(names).unwrap_or_else(|e| panic!("{e}"));
    params
        .distinguished_name
        .push(DnType::CommonName, "test origin");
    let leaf = params
        .signed_by(&leaf_key, &ca)
        .unwrap_or_else(|e| panic!("{e}"));
    let chain = vec![leaf.der().clone(), ca.der().clone()];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
    (ca.pem(), chain, key)
}

pub fn acceptor(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> tokio_rustls::TlsAcceptor {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(chain, key))
        .unwrap_or_else(|e: rustls::Error| panic!("{e}"));
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

/// What is wrong (or not) with a test origin's certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OriginCert {
    Good,
    Expired,
    /// Valid, but for `wrong.example` only.
    WrongHost,
    /// A self-signed leaf; the trust anchor handed out is an unrelated CA.
    SelfSigned,
    /// A self-signed leaf with `CA:TRUE`, as `openssl req -x509` makes one by default.
    SelfSignedCa,
    /// Signed by an intermediate the server does not send; the anchor is the root.
    IncompleteChain,
}

fn ca_params(cn: &str) -> CertificateParams {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap_or_else(|e| panic!("{e}"));
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.distinguished_name.push(DnType::CommonName, cn);
    p
}

/// A trust anchor (PEM), the chain the origin sends, and its key, for `kind`.
pub fn origin_certificate_kind(
    kind: OriginCert,
    names: &[&str],
) -> (String, Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let fail = |e: rcgen::Error| -> ! { panic!("{e}") };
    let root_key = KeyPair::generate().unwrap_or_else(|e| fail(e));
    let root = CertifiedIssuer::self_signed(ca_params("Portcullis Test Root"), root_key)
        .unwrap_or_else(|e| fail(e));
    let leaf_key = KeyPair::generate().unwrap_or_else(|e| fail(e));
    let names: Vec<String> = match kind {
        OriginCert::WrongHost => vec!["wrong.example".to_owned()],
        _ => names.iter().map(|n| n.to_string()).collect(),
    };
    let mut params = CertificateParams::new(names).unwrap_or_else(|e| fail(e));
    params
        .distinguished_name
        .push(DnType::CommonName, "test origin");
    if kind == OriginCert::Expired {
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    }
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
    let chain = match kind {
        OriginCert::SelfSigned => {
            let leaf = params.self_signed(&leaf_key).unwrap_or_else(|e| fail(e));
            vec![leaf.der().clone()]
        }
        OriginCert::SelfSignedCa => {
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            let leaf = params.self_signed(&leaf_key).unwrap_or_else(|e| fail(e));
            vec![leaf.der().clone()]
        }
        OriginCert::IncompleteChain => {
            let mid_key = KeyPair::generate().unwrap_or_else(|e| fail(e));
            let mid = CertifiedIssuer::signed_by(
                ca_params("Portcullis Test Intermediate"),
                mid_key,
                &root,
            )
            .unwrap_or_else(|e| fail(e));
            let leaf = params
                .signed_by(&leaf_key, &mid)
                .unwrap_or_else(|e| fail(e));
            vec![leaf.der().clone()] // the intermediate is missing on purpose
        }
        _ => {
            let leaf = params
                .signed_by(&leaf_key, &root)
                .unwrap_or_else(|e| fail(e));
            vec![leaf.der().clone(), root.der().clone()]
        }
    };
    (root.pem(), chain, key)
}

/// An acceptor that offers ALPN `h2` and `http/1.1` (the origin then speaks what was chosen).
pub fn acceptor_with_alpn(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    alpn: &[&[u8]],
) -> tokio_rustls::TlsAcceptor {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(chain, key))
        .unwrap_or_else(|e: rustls::Error| panic!("{e}"));
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}
