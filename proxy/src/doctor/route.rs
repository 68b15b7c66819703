//! From this host: each Outlook host resolves (with the proxy's resolver), TCP 443 connects, and
//! the certificate verifies against the system store and comes from a public CA. A certificate
//! from anyone else means another TLS-inspecting device between the proxy and Microsoft.
//!
//! No answer (offline, no DNS, a firewall dropping packets) is a warning with the reason: the
//! doctor must be usable in a lab without Internet access. A wrong answer is a failure.

use std::net::SocketAddr;
use std::time::Instant;

use rustls::RootCertStore;

use super::{outlook, tls_probe, Check, PROBE_TIMEOUT};
use crate::config::Config;
use crate::intercept::upstream_tls::{extra_roots, system_roots};
use crate::upstream::Resolver;

const FAMILY: &str = "host";
const OFFLINE: &str =
    "without Internet access this is expected; otherwise let this host resolve and reach \
                       Microsoft 365 on port 443 (DNS, default route, outbound firewall)";

pub(super) async fn run(config: &Config, resolver: Option<&Resolver>) -> Vec<Check> {
    let Some(resolver) = resolver else {
        return vec![Check::fail(
            FAMILY,
            "name resolution",
            "upstream.hosts_file cannot be read",
            "see the config check above",
        )];
    };
    let extra = config
        .tls
        .upstream_ca_file
        .as_deref()
        .and_then(|p| extra_roots(p).ok())
        .unwrap_or_default();
    let mut out = Vec::new();
    for host in outlook::hosts(config) {
        out.push(reach(resolver, &host, &extra).await);
    }
    out
}

async fn reach(
    resolver: &Resolver,
    host: &str,
    extra: &[rustls::pki_types::CertificateDer<'static>],
) -> Check {
    let name = format!("{host}:443 from this host");
    let addrs = match resolver
        .resolve(&portcullis_policy::Host::new(host), 443)
        .await
    {
        Ok(addrs) => addrs,
        Err(e) => return Check::warn(FAMILY, name, format!("does not resolve: {e}"), OFFLINE),
    };
    let started = Instant::now();
    let (stream, addr) = match connect(&addrs).await {
        Ok(pair) => pair,
        Err(e) => {
            return Check::warn(
                FAMILY,
                name,
                format!("resolves to {}, but {e}", list(&addrs)),
                OFFLINE,
            )
        }
    };
    let connected = started.elapsed().as_millis();
    let chain = match tls_probe::server_chain(stream, host).await {
        Ok(chain) => chain,
        Err(e) => {
            return Check::warn(
                FAMILY,
                name,
                format!("TCP to {addr} connects, but {e}"),
                OFFLINE,
            )
        }
    };
    let seen = format!(
        "{addr} connects in {connected} ms; certificate issued by {}",
        tls_probe::issuer(&chain[0])
    );
    judge(name, host, &chain, extra, seen)
}

/// Verified by the system store (plus `tls.upstream_ca_file`, as the proxy verifies origins),
/// and by whom: the public (Mozilla) roots, the configured extra CAs, or only something a
/// local administrator added.
fn judge(
    name: String,
    host: &str,
    chain: &[rustls::pki_types::CertificateDer<'static>],
    extra: &[rustls::pki_types::CertificateDer<'static>],
    seen: String,
) -> Check {
    let mut trusted = system_roots();
    for cert in extra {
        let _ = trusted.add(cert.clone());
    }
    if let Err(e) = tls_probe::verify_in(trusted, chain, host) {
        return Check::fail(
            FAMILY,
            name,
            format!("{seen}, which does not verify ({e}): another TLS-inspecting device is on the path"),
            "exempt this proxy host (or Microsoft 365) from that device's inspection; Outlook's endpoints must not be inspected twice",
        );
    }
    let public = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if tls_probe::verify_in(public, chain, host).is_ok() {
        return Check::pass(FAMILY, name, format!("{seen}, a public CA"));
    }
    if tls_probe::verify_with(extra, chain, host).is_ok() {
        return Check::pass(
            FAMILY,
            name,
            format!("{seen}, trusted through tls.upstream_ca_file"),
        );
    }
    Check::warn(
        FAMILY,
        name,
        format!("{seen}, which is trusted by this host's store but is not a public CA: another TLS-inspecting device on the path?"),
        "exempt this proxy host from that device's inspection, or list its CA in tls.upstream_ca_file if it is meant to be there",
    )
}

async fn connect(addrs: &[SocketAddr]) -> Result<(tokio::net::TcpStream, SocketAddr), String> {
    let mut last = "no addresses".to_owned();
    for addr in addrs {
        match tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => return Ok((stream, *addr)),
            Ok(Err(e)) => last = format!("TCP to {addr} fails: {e}"),
            Err(_) => last = format!("TCP to {addr} does not connect within 5 s"),
        }
    }
    Err(last)
}

fn list(addrs: &[SocketAddr]) -> String {
    addrs
        .iter()
        .map(|a| a.ip().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
