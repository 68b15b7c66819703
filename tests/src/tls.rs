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

/// Opens a CONNECT tunnel through `proxy` to `target` (`host:port`) and returns the connection
/// once the proxy's `200` head has been read; panics on any other answer.
pub async fn connect_tunnel(proxy: std::net::SocketAddr, target: &str) -> tokio::net::TcpStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(proxy)
        .await
        .unwrap_or_else(|e| panic!("connect {proxy}: {e}"));
    tcp.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        let n = tcp.read(&mut b).await.unwrap_or(0);
        assert_eq!(n, 1, "proxy closed: {}", String::from_utf8_lossy(&head));
        head.push(b[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    tcp
}

/// A rustls client config trusting the certificates in `ca_pem`.
pub fn client_config(ca_pem: &[u8]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(ca_pem) {
        roots
            .add(cert.unwrap_or_else(|e| panic!("{e}")))
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap_or_else(|e| panic!("{e}"))
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// The first flight a TLS client for `host` sends (its ClientHello), for tests that start a
/// handshake and then stop answering.
pub fn client_hello(host: &str) -> Vec<u8> {
    let name =
        rustls::pki_types::ServerName::try_from(host.to_owned()).unwrap_or_else(|e| panic!("{e}"));
    let mut conn =
        rustls::ClientConnection::new(client_config(b""), name).unwrap_or_else(|e| panic!("{e}"));
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).unwrap_or_else(|e| panic!("{e}"));
    }
    out
}

/// TLS to `host` through a CONNECT to `target`, trusting `ca_pem` (the proxy's CA when the
/// tunnel is inspected).
pub async fn tls_through(
    proxy: std::net::SocketAddr,
    target: &str,
    host: &str,
    ca_pem: &[u8],
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tcp = connect_tunnel(proxy, target).await;
    let name =
        rustls::pki_types::ServerName::try_from(host.to_owned()).unwrap_or_else(|e| panic!("{e}"));
    tokio_rustls::TlsConnector::from(client_config(ca_pem))
        .connect(name, tcp)
        .await
}

/// Writes a CA (`ca.pem`, `ca.key`) into `dir` that is valid now and expires `valid_for` from
/// now, for tests of what happens when minting starts to fail. Returns when it expires.
pub fn short_lived_ca(
    dir: &std::path::Path,
    valid_for: std::time::Duration,
) -> std::time::SystemTime {
    use std::os::unix::fs::PermissionsExt;
    let now = std::time::SystemTime::now();
    let expires = now + valid_for;
    let key = KeyPair::generate().unwrap_or_else(|e| panic!("{e}"));
    let mut params = ca_params("Portcullis Short-lived Test CA");
    params.not_before = (now - std::time::Duration::from_secs(60)).into();
    params.not_after = expires.into();
    let cert = params.self_signed(&key).unwrap_or_else(|e| panic!("{e}"));
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(dir.join("ca.pem"), cert.pem()).unwrap_or_else(|e| panic!("{e}"));
    let key_path = dir.join("ca.key");
    std::fs::write(&key_path, key.serialize_pem()).unwrap_or_else(|e| panic!("{e}"));
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600))
        .unwrap_or_else(|e| panic!("{e}"));
    expires
}
