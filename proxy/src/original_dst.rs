//! The original destination of a connection netfilter redirected to a transparent listener
//! (`SO_ORIGINAL_DST` for IPv4, `IP6T_SO_ORIGINAL_DST` for IPv6, read through nix's safe
//! wrappers), and the checks that keep a transparent listener from connecting to itself.

use std::net::{IpAddr, SocketAddr};

use nix::sys::socket::{getsockopt, sockopt, SockaddrIn, SockaddrIn6};
use tokio::net::TcpStream;

/// Which transparent listener accepted a connection: what its first bytes are expected to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TransparentKind {
    /// Redirected port 80: origin-form HTTP requests.
    Http,
    /// Redirected port 443: a TLS ClientHello.
    Tls,
}

impl TransparentKind {
    /// The `listener` metric label and the log word.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            TransparentKind::Http => "transparent_http",
            TransparentKind::Tls => "transparent_tls",
        }
    }
}

/// A redirected connection: which listener took it and where the client was really going.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OriginalDst {
    pub(crate) kind: TransparentKind,
    pub(crate) addr: SocketAddr,
}

/// Why a connection on a transparent listener is closed without being served.
#[derive(Debug, thiserror::Error)]
pub(crate) enum NotRedirected {
    #[error("no original destination ({0}): was the connection redirected by netfilter?")]
    Unknown(nix::Error),
    #[error("the original destination {0} is this listener itself: the connection was not redirected, and serving it would connect the proxy to itself")]
    Itself(SocketAddr),
    #[error(
        "the original destination {0} is one of this proxy's own listeners (a forwarding loop)"
    )]
    OwnListener(SocketAddr),
}

/// The destination the client connected to before netfilter redirected it, refused when it is
/// this proxy itself. `local`: the accepted socket's own address; `own`: every address this
/// process listens on (proxy, transparent and admin listeners).
pub(crate) fn lookup(
    stream: &TcpStream,
    local: SocketAddr,
    own: &[SocketAddr],
) -> Result<SocketAddr, NotRedirected> {
    let addr = read(stream, local).map_err(NotRedirected::Unknown)?;
    check(addr, local, own)?;
    Ok(addr)
}

/// Reads the option matching the listener's family (IPv6 transparent listeners are v6-only).
fn read(stream: &TcpStream, local: SocketAddr) -> nix::Result<SocketAddr> {
    let addr = if local.is_ipv4() {
        SocketAddr::from(SockaddrIn::from(getsockopt(stream, sockopt::OriginalDst)?))
    } else {
        SocketAddr::from(SockaddrIn6::from(getsockopt(
            stream,
            sockopt::Ip6tOriginalDst,
        )?))
    };
    // An IPv4-mapped IPv6 address is the IPv4 one, as everywhere else (`policy::Host`).
    Ok(SocketAddr::new(addr.ip().to_canonical(), addr.port()))
}

/// A connection that was not NATed reports the socket's own address; one whose original
/// destination is one of our listeners on one of this host's addresses would loop.
fn check(addr: SocketAddr, local: SocketAddr, own: &[SocketAddr]) -> Result<(), NotRedirected> {
    let local = SocketAddr::new(local.ip().to_canonical(), local.port());
    if addr == local {
        return Err(NotRedirected::Itself(addr));
    }
    let ours = own.iter().any(|o| {
        o.port() == addr.port()
            && (o.ip().to_canonical() == addr.ip()
                || (o.ip().is_unspecified() && is_local_address(addr.ip())))
    });
    if ours {
        return Err(NotRedirected::OwnListener(addr));
    }
    Ok(())
}

/// Whether `ip` is one of this host's addresses: only those can be bound (unless the
/// `ip_nonlocal_bind` sysctl is set, which the README mentions).
fn is_local_address(ip: IpAddr) -> bool {
    ip.is_loopback() || ip.is_unspecified() || std::net::UdpSocket::bind((ip, 0)).is_ok()
}

#[cfg(test)]
mod tests {
    #![expect(clippy::unwrap_used, reason = "tests")]
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_connection_to_the_listener_itself_is_refused() {
        let err = check(a("10.0.0.1:3129"), a("10.0.0.1:3129"), &[]).unwrap_err();
        assert!(matches!(err, NotRedirected::Itself(_)), "{err}");
        // The same through a dual-stack socket's IPv4-mapped spelling.
        let err = check(a("10.0.0.1:3129"), a("[::ffff:10.0.0.1]:3129"), &[]).unwrap_err();
        assert!(matches!(err, NotRedirected::Itself(_)), "{err}");
    }

    #[test]
    fn our_own_listeners_on_our_own_addresses_are_a_loop() {
        let own = [a("0.0.0.0:3128"), a("192.0.2.7:8080")];
        let local = a("10.0.0.1:3129");
        let err = check(a("127.0.0.1:3128"), local, &own).unwrap_err();
        assert!(matches!(err, NotRedirected::OwnListener(_)), "{err}");
        let err = check(a("192.0.2.7:8080"), local, &own).unwrap_err();
        assert!(matches!(err, NotRedirected::OwnListener(_)), "{err}");
        // Another host on our port, and our address on another port, are origins.
        check(a("192.0.2.99:3128"), local, &own).unwrap();
        check(a("127.0.0.1:80"), local, &own).unwrap();
    }

    #[tokio::test]
    async fn a_plain_connection_has_no_original_destination_but_its_own() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = TcpStream::connect(addr).await.unwrap();
        let (stream, _) = listener.accept().await.unwrap();
        // Without conntrack's NAT the kernel reports the socket's own address (or, with no
        // conntrack entry at all, an error): either way the connection is refused.
        match lookup(&stream, addr, &[addr]) {
            Err(NotRedirected::Itself(got)) => assert_eq!(got, addr),
            Err(NotRedirected::Unknown(_)) => {}
            other => panic!("{other:?}"),
        }
    }
}
