//! The validated rule description both renderers read. Built only by [`super::compile`], so a
//! renderer never has to re-check names, families or port lists.

use std::net::IpAddr;

use ipnet::IpNet;

use super::model::{ChainPolicy, Mode, PortSpec, ProxyUser, WebAction};

/// Facts about the running proxy that the rules depend on, passed in by the caller so that this
/// module stays pure.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetfilterFacts {
    /// `server.listen` of the proxy config.
    pub proxy_listen: Vec<std::net::SocketAddr>,
    /// `server.transparent_http_listen`: where redirected tcp/80 must go.
    pub transparent_http: Vec<std::net::SocketAddr>,
    /// `server.transparent_tls_listen`: where redirected tcp/443 must go.
    pub transparent_tls: Vec<std::net::SocketAddr>,
}

/// Everything a renderer needs; every list is sorted and free of duplicates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetfilterSpec {
    pub mode: Mode,
    pub lan: Lan,
    pub default_policy: ChainPolicy,
    pub accept_established: bool,
    pub accept_loopback: bool,
    pub accept_icmp: bool,
    /// TCP ports of the proxy's non-loopback listeners (empty when `accept_proxy_ports` is off).
    pub proxy_ports: Vec<u16>,
    /// Accepted from the LAN on INPUT.
    pub host_services: PortSet,
    /// Accepted from the LAN (gateway: FORWARD; host: OUTPUT), one entry per destination scope.
    pub direct: Vec<Direct>,
    pub web: Web,
    /// Host mode only: the proxy's account, allowed out to any port.
    pub proxy_user: Option<ProxyUser>,
    pub intercept: Option<Intercept>,
    pub nat: Vec<Nat>,
}

/// Address family, for rules that name addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub const BOTH: [Family; 2] = [Family::V4, Family::V6];

    pub fn of_net(net: &IpNet) -> Family {
        match net {
            IpNet::V4(_) => Family::V4,
            IpNet::V6(_) => Family::V6,
        }
    }

    pub fn of_addr(addr: &IpAddr) -> Family {
        match addr {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }
}

/// The networks of `family` in a restriction list.
///
/// `None` means nothing of this family matches (the list restricts, but not to this family);
/// `Some(empty)` means any address (the list is empty, so it does not restrict).
pub fn scope(nets: &[IpNet], family: Family) -> Option<Vec<IpNet>> {
    if nets.is_empty() {
        return Some(Vec::new());
    }
    let of_family: Vec<IpNet> = nets
        .iter()
        .filter(|n| Family::of_net(n) == family)
        .copied()
        .collect();
    (!of_family.is_empty()).then_some(of_family)
}

/// What counts as "from the LAN".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lan {
    pub interfaces: Vec<String>,
    pub networks: Vec<IpNet>,
}

impl Lan {
    /// Source networks of `family` that count as LAN; see [`scope`].
    pub fn sources(&self, family: Family) -> Option<Vec<IpNet>> {
        scope(&self.networks, family)
    }
}

/// One port (or range) and the services that asked for it, for comments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortEntry {
    pub port: PortSpec,
    pub services: Vec<String>,
}

/// TCP and UDP ports, each list sorted with overlapping ranges merged.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortSet {
    pub tcp: Vec<PortEntry>,
    pub udp: Vec<PortEntry>,
}

impl PortSet {
    pub fn is_empty(&self) -> bool {
        self.tcp.is_empty() && self.udp.is_empty()
    }

    /// `(protocol, entries)` for the non-empty protocols.
    pub fn by_proto(&self) -> impl Iterator<Item = (Proto, &[PortEntry])> {
        [(Proto::Tcp, &self.tcp[..]), (Proto::Udp, &self.udp[..])]
            .into_iter()
            .filter(|(_, e)| !e.is_empty())
    }
}

/// Transport protocol of a port list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// Direct services for one destination scope (config entries with the same `to` are merged, so
/// every port appears once per scope).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Direct {
    /// `direct[0]` or, when merged, `direct[0,2]`: where in the config this came from.
    pub label: String,
    /// The service and group names as written in the config.
    pub names: Vec<String>,
    /// Destination networks; empty means any destination.
    pub to: Vec<IpNet>,
    pub ports: PortSet,
}

/// Direct web traffic that must use the proxy instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Web {
    pub action: WebAction,
    pub tcp: Vec<PortSpec>,
    pub udp: Vec<PortSpec>,
}

/// Transparent interception targets (the transparent listeners' ports); a port is `None` when
/// no listener of that kind is configured, and its traffic is then not redirected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Intercept {
    pub http_port: Option<u16>,
    pub https_port: Option<u16>,
    /// Reject UDP 443 from the LAN, so QUIC falls back to TCP, which is intercepted.
    pub reject_quic: bool,
}

impl Intercept {
    /// `(web port, listener port)` for each redirect.
    pub fn redirects(&self) -> impl Iterator<Item = (u16, u16)> {
        [(80, self.http_port), (443, self.https_port)]
            .into_iter()
            .filter_map(|(port, to)| Some((port, to?)))
    }

    /// The listener ports, for the INPUT rule accepting redirected connections.
    pub fn listener_ports(&self) -> Vec<u16> {
        self.redirects().map(|(_, to)| to).collect()
    }
}

/// A one-to-one NAT mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nat {
    pub name: String,
    pub public: IpAddr,
    pub private: IpAddr,
    /// Mapped ports; empty means every port and protocol.
    pub ports: PortSet,
}

impl Nat {
    pub fn family(&self) -> Family {
        Family::of_addr(&self.public)
    }

    pub fn all_ports(&self) -> bool {
        self.ports.is_empty()
    }
}
