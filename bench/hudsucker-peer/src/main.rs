//! The Rust peer of `bench/run`: hudsucker's `noop` example (no handlers, no logging) with the
//! bench's plumbing instead of the example's hard-coded settings.
//!
//! Usage: hudsucker-peer LISTEN-ADDR CA-CERT.pem CA-KEY.pem UPSTREAM-CA.pem
//!
//! - LISTEN-ADDR: e.g. 127.0.0.1:18135
//! - CA-CERT.pem / CA-KEY.pem: the interception CA; hudsucker mints (and caches, 1,000 entries)
//!   leaf certificates from it for every CONNECT.
//! - UPSTREAM-CA.pem: the only CA trusted for upstream TLS (the bench origin's).
//!
//! Every host name resolves to 127.0.0.1 (the bench names are not in /etc/hosts). Crypto is
//! rustls' `ring` provider everywhere, as in Portcullis.

use hudsucker::{
    certificate_authority::RcgenAuthority,
    rcgen::{Issuer, KeyPair},
    Proxy,
};
use hyper_util::client::legacy::connect::{dns::Name, HttpConnector};
use rustls::{
    crypto::ring,
    pki_types::{pem::PemObject, CertificateDer},
    ClientConfig, RootCertStore,
};
use std::{
    convert::Infallible,
    future::{ready, Ready},
    iter::{once, Once},
    net::{Ipv4Addr, SocketAddr},
    sync::Arc,
    task::{Context, Poll},
};

/// A resolver for hyper-util's `HttpConnector` that maps every name to 127.0.0.1 (the connector
/// fills in the port from the URI).
#[derive(Clone, Copy)]
struct Loopback;

impl tower_service::Service<Name> for Loopback {
    type Response = Once<SocketAddr>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _name: Name) -> Self::Future {
        ready(Ok(once(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))))
    }
}

fn die(msg: String) -> ! {
    eprintln!("hudsucker-peer: {msg}");
    std::process::exit(2)
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 5 {
        die("usage: hudsucker-peer LISTEN-ADDR CA-CERT.pem CA-KEY.pem UPSTREAM-CA.pem".into());
    }
    let addr: SocketAddr = args[1]
        .parse()
        .unwrap_or_else(|e| die(format!("bad listen address {}: {e}", args[1])));
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_else(|e| die(format!("{p}: {e}")));

    let key_pair = KeyPair::from_pem(&read(&args[3]))
        .unwrap_or_else(|e| die(format!("{}: {e}", args[3])));
    let issuer = Issuer::from_ca_cert_pem(&read(&args[2]), key_pair)
        .unwrap_or_else(|e| die(format!("{}: {e}", args[2])));
    let ca = RcgenAuthority::new(issuer, 1_000, ring::default_provider());

    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&args[4])
        .unwrap_or_else(|e| die(format!("{}: {e}", args[4])))
    {
        let cert = cert.unwrap_or_else(|e| die(format!("{}: {e}", args[4])));
        roots.add(cert).unwrap_or_else(|e| die(format!("{}: {e}", args[4])));
    }
    let tls = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap_or_else(|e| die(format!("rustls: {e}")))
        .with_root_certificates(roots)
        .with_no_client_auth();

    let mut http = HttpConnector::new_with_resolver(Loopback);
    http.enforce_http(false);
    http.set_nodelay(true);
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);

    let proxy = Proxy::builder()
        .with_addr(addr)
        .with_ca(ca)
        .with_http_connector(connector)
        .build()
        .unwrap_or_else(|e| die(format!("build: {e}")));
    if let Err(e) = proxy.start().await {
        die(format!("{e}"));
    }
}
