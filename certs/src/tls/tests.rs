#![expect(clippy::unwrap_used, reason = "tests fail loudly")]

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, HandshakeKind, RootCertStore};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_rustls::{LazyConfigAcceptor, TlsConnector};

use super::*;
use crate::test_util::test_ca;
use crate::{CertCache, CertificateAuthority, Issuer, IssuerConfig, LeafName, LeafRequest};

struct Interceptor {
    cache: CertCache,
    configs: ServerConfigs,
}

impl Interceptor {
    fn new(ca: Arc<CertificateAuthority>) -> Arc<Self> {
        let issuer = Issuer::new(ca, IssuerConfig::default()).unwrap();
        Arc::new(Interceptor {
            cache: CertCache::new(Arc::new(issuer), 100),
            configs: ServerConfigs::new(256),
        })
    }

    /// What the proxy does per connection: peek SNI, get the leaf, finish the handshake with the
    /// ALPN "the origin chose", then echo one message.
    async fn serve(self: Arc<Self>, io: tokio::io::DuplexStream, connect_host: &str, alpn: &[u8]) {
        let start = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), io)
            .await
            .unwrap();
        let sni = start.client_hello().server_name().map(str::to_owned);
        let name = LeafName::for_connection(sni.as_deref(), connect_host).unwrap();
        let key = self.cache.get(&LeafRequest::new(name)).await.unwrap();
        let config = self.configs.build(key, vec![alpn.to_vec()]).unwrap();
        let Ok(mut tls) = start.into_stream(config).await else {
            return; // the client gave up (the untrusted-CA test)
        };
        let mut buf = [0u8; 5];
        tls.read_exact(&mut buf).await.unwrap();
        tls.write_all(&buf).await.unwrap();
        tls.shutdown().await.unwrap();
    }
}

fn client_config(ca: &CertificateAuthority) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.cert_der().clone()).unwrap();
    let mut config = ClientConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}

/// One intercepted connection; returns what the client saw.
async fn connect(
    proxy: &Arc<Interceptor>,
    client: &Arc<ClientConfig>,
    server_name: ServerName<'static>,
    connect_host: &'static str,
) -> Result<(Option<Vec<u8>>, usize, HandshakeKind), std::io::Error> {
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let server = tokio::spawn(proxy.clone().serve(server_io, connect_host, b"http/1.1"));
    let mut tls = TlsConnector::from(client.clone())
        .connect(server_name, client_io)
        .await?;
    tls.write_all(b"hello").await?;
    let mut echoed = [0u8; 5];
    tls.read_exact(&mut echoed).await?;
    assert_eq!(&echoed, b"hello");
    let (_, conn) = tls.get_ref();
    let seen = (
        conn.alpn_protocol().map(<[u8]>::to_vec),
        conn.peer_certificates().map_or(0, <[_]>::len),
        conn.handshake_kind().unwrap(),
    );
    server.await.unwrap();
    Ok(seen)
}

#[tokio::test]
async fn a_client_trusting_the_ca_completes_the_handshake() {
    let ca = test_ca();
    let proxy = Interceptor::new(ca.clone());
    let client = client_config(&ca);
    let name = ServerName::try_from("outlook.office365.com").unwrap();
    let (alpn, chain_len, kind) = connect(&proxy, &client, name.clone(), "ignored")
        .await
        .unwrap();
    assert_eq!(
        alpn.as_deref(),
        Some(&b"http/1.1"[..]),
        "the origin's ALPN was served"
    );
    assert_eq!(chain_len, 2, "leaf and CA");
    assert_eq!(kind, HandshakeKind::Full);

    // A second connection from the same client resumes through the shared session cache, even
    // though it gets a new ServerConfig.
    let (_, _, kind) = connect(&proxy, &client, name, "ignored").await.unwrap();
    assert_eq!(kind, HandshakeKind::Resumed);
    assert_eq!(proxy.cache.stats().mints, 1);
}

#[tokio::test]
async fn a_client_connecting_by_ip_gets_an_ip_leaf() {
    let ca = test_ca();
    let proxy = Interceptor::new(ca.clone());
    let name = ServerName::try_from("192.0.2.80").unwrap();
    // rustls sends no SNI for an IP; the proxy falls back to the CONNECT host.
    let result = connect(&proxy, &client_config(&ca), name, "192.0.2.80").await;
    assert!(result.is_ok(), "{result:?}");
}

#[tokio::test]
async fn a_client_not_trusting_the_ca_rejects_the_leaf() {
    let proxy = Interceptor::new(test_ca());
    // Another CA with the same name: the client finds it by subject, then the signature fails.
    let stranger = client_config(&test_ca());
    let name = ServerName::try_from("a.example").unwrap();
    let err = connect(&proxy, &stranger, name.clone(), "a.example")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("BadSignature"), "{err}");
    // A CA with another name is not even a candidate issuer.
    let other = Arc::new(
        CertificateAuthority::generate(&crate::CaParams {
            common_name: "Someone Else".to_owned(),
            ..crate::CaParams::default()
        })
        .unwrap(),
    );
    let err = connect(&proxy, &client_config(&other), name, "a.example")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("UnknownIssuer"), "{err}");
}
