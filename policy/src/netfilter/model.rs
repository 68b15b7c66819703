//! The `[netfilter]` config section as written by the admin (raw serde types).
//!
//! Everything here is data; [`super::compile`] turns it into a validated [`super::NetfilterSpec`].
//! Unknown keys are rejected so that a misspelt key (`lan_interface`) cannot silently leave the
//! LAN unrestricted.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// The `[netfilter]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetfilterConfig {
    /// `gateway`: the proxy host routes the LAN (FORWARD chain). `host`: only the proxy host's own
    /// INPUT and OUTPUT are filtered (a terminal server whose users must use the local proxy).
    pub mode: Mode,
    /// Interfaces facing the LAN. Traffic counts as "from the LAN" only if it arrives on one of
    /// them (when any are listed) *and* comes from `lan_networks` (when any are listed).
    pub lan_interfaces: Vec<String>,
    /// LAN source networks, IPv4 and IPv6. When some are listed but none of a family, no traffic
    /// of that family counts as LAN: listing only IPv4 must not open IPv6 from anywhere.
    pub lan_networks: Vec<IpNet>,
    /// Verdict for traffic no rule accepted, in every chain Portcullis owns.
    pub default_policy: ChainPolicy,
    /// Accept packets of connections already accepted (and drop conntrack-invalid ones); without
    /// it every reply would need its own rule.
    pub accept_established: bool,
    /// Accept traffic on the loopback interface (INPUT/OUTPUT): local services talk over it.
    pub accept_loopback: bool,
    /// Accept ICMP and ICMPv6 (path-MTU discovery needs it). IPv6 neighbour discovery is accepted
    /// on INPUT/OUTPUT even when this is off, because IPv6 does not work at all without it.
    pub accept_icmp: bool,
    /// Accept the proxy's own listening ports (`server.listen`, non-loopback) from the LAN.
    pub accept_proxy_ports: bool,
    /// Services the proxy host itself accepts from the LAN (INPUT), e.g. `ssh`, so that applying
    /// a drop policy does not lock the admin out.
    pub host_services: Vec<String>,
    /// Services and groups clients may reach directly, optionally only at some destinations.
    pub direct: Vec<DirectRule>,
    /// What happens to direct web traffic from the LAN: `reject` fails fast in the browser,
    /// `drop` lets it time out.
    pub web_action: WebAction,
    /// TCP ports treated as web traffic that must go through the proxy.
    pub web_tcp_ports: Vec<PortSpec>,
    /// UDP ports treated as web traffic (443: QUIC/HTTP3 would otherwise bypass the proxy).
    pub web_udp_ports: Vec<PortSpec>,
    /// Host mode: the user the proxy runs as; only it may reach web servers directly.
    pub proxy_user: Option<ProxyUser>,
    /// User-defined services by name.
    pub services: BTreeMap<String, ServiceDef>,
    /// User-defined groups by name: lists of service or group names.
    pub groups: BTreeMap<String, Vec<String>>,
    /// Transparent interception of LAN web traffic (gateway mode).
    pub intercept: InterceptConfig,
    /// One-to-one NAT for named internal servers (Microsoft KB 291615 workaround).
    pub one_to_one_nat: Vec<OneToOneNat>,
}

impl Default for NetfilterConfig {
    fn default() -> Self {
        NetfilterConfig {
            mode: Mode::Gateway,
            lan_interfaces: Vec::new(),
            // The private ranges: a safe notion of "the LAN" until the admin narrows it.
            lan_networks: ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"]
                .iter()
                .filter_map(|n| n.parse().ok())
                .collect(),
            default_policy: ChainPolicy::Drop,
            accept_established: true,
            accept_loopback: true,
            accept_icmp: true,
            accept_proxy_ports: true,
            host_services: vec!["ssh".to_owned()],
            direct: vec![DirectRule {
                services: vec!["outlook".to_owned()],
                to: Vec::new(),
            }],
            web_action: WebAction::Reject,
            web_tcp_ports: vec![PortSpec::single(80), PortSpec::single(443)],
            web_udp_ports: vec![PortSpec::single(443)],
            proxy_user: None,
            services: BTreeMap::new(),
            groups: BTreeMap::new(),
            intercept: InterceptConfig::default(),
            one_to_one_nat: Vec::new(),
        }
    }
}

/// Which chains the rules go into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The proxy host routes a LAN: FORWARD (plus INPUT for the proxy ports).
    Gateway,
    /// The proxy host itself: INPUT and OUTPUT.
    Host,
}

/// Verdict for packets no rule matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChainPolicy {
    Drop,
    Accept,
}

/// How blocked direct web traffic is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WebAction {
    /// TCP reset / ICMP port unreachable: the client fails at once and can fall back to the proxy.
    Reject,
    /// Silently dropped: the client waits for its connect timeout.
    Drop,
}

/// One `[[netfilter.direct]]` entry.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DirectRule {
    /// Service and group names (built-in or user-defined).
    pub services: Vec<String>,
    /// Only to these destination networks; empty means any destination.
    pub to: Vec<IpNet>,
}

/// A user-defined service.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceDef {
    pub tcp: Vec<PortSpec>,
    pub udp: Vec<PortSpec>,
    /// Free text for the admin; not rendered.
    pub description: String,
}

/// `[netfilter.intercept]`: redirect LAN web traffic to transparent proxy listeners.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InterceptConfig {
    /// Off by default: interception needs the proxy's transparent listeners
    /// (`server.transparent_http_listen`, `server.transparent_tls_listen`), whose ports the
    /// redirects use.
    pub enabled: bool,
    /// Optional: the port LAN tcp/80 is redirected to. Must be the HTTP listener's port; it is
    /// taken from `server.transparent_http_listen` when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_port: Option<u16>,
    /// Optional: the port LAN tcp/443 is redirected to; as `http_port`, for
    /// `server.transparent_tls_listen`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub https_port: Option<u16>,
    /// Reject UDP 443 (QUIC) from the LAN, so that browsers and Office fall back to TCP, which
    /// is intercepted.
    pub reject_quic: bool,
}

impl Default for InterceptConfig {
    fn default() -> Self {
        InterceptConfig {
            enabled: false,
            http_port: None,
            https_port: None,
            reject_quic: true,
        }
    }
}

/// One `[[netfilter.one_to_one_nat]]` entry: `public` is rewritten to `private` (DNAT) and
/// connections the server opens leave as `public` (SNAT).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OneToOneNat {
    /// Names the mapping in rule comments.
    pub name: String,
    pub public: IpAddr,
    pub private: IpAddr,
    /// Ports mapped; with `tcp` and `udp` both empty, every port and protocol is mapped (what
    /// RPC needs, since its dynamic ports are not known in advance).
    #[serde(default)]
    pub tcp: Vec<PortSpec>,
    #[serde(default)]
    pub udp: Vec<PortSpec>,
}

/// A port or an inclusive port range; written `25` or `"5000-5010"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortSpec {
    pub first: u16,
    pub last: u16,
}

impl PortSpec {
    pub const fn single(port: u16) -> Self {
        PortSpec {
            first: port,
            last: port,
        }
    }

    /// Slots this takes in an iptables multiport match, which holds at most 15: a range takes two.
    pub fn multiport_cost(&self) -> usize {
        if self.first == self.last {
            1
        } else {
            2
        }
    }
}

impl fmt::Display for PortSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

impl std::str::FromStr for PortSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let port = |p: &str| {
            p.trim()
                .parse::<u16>()
                .map_err(|_| format!("{p:?} is not a port number"))
        };
        let spec = match s.split_once('-') {
            Some((a, b)) => PortSpec {
                first: port(a)?,
                last: port(b)?,
            },
            None => PortSpec::single(port(s)?),
        };
        if spec.first == 0 {
            return Err("port 0 is not a valid port".to_owned());
        }
        if spec.first > spec.last {
            return Err(format!("range {s:?} is empty (first > last)"));
        }
        Ok(spec)
    }
}

impl Serialize for PortSpec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.first == self.last {
            s.serialize_u16(self.first)
        } else {
            s.collect_str(self)
        }
    }
}

impl<'de> Deserialize<'de> for PortSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = PortSpec;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port number (25) or a range (\"5000-5010\")")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<PortSpec, E> {
                match u16::try_from(v) {
                    Ok(port) if port != 0 => Ok(PortSpec::single(port)),
                    _ => Err(E::custom(format!("{v} is not a valid port (1-65535)"))),
                }
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<PortSpec, E> {
                i64::try_from(v)
                    .map_err(|_| E::custom(format!("{v} is not a port number")))
                    .and_then(|v| self.visit_i64(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<PortSpec, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// The account the proxy runs as: a name (resolved by nft/iptables when the rules are loaded)
/// or a numeric uid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyUser {
    Id(u32),
    Name(String),
}

impl Serialize for ProxyUser {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            ProxyUser::Id(id) => s.serialize_u32(*id),
            ProxyUser::Name(name) => s.serialize_str(name),
        }
    }
}

impl<'de> Deserialize<'de> for ProxyUser {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ProxyUser;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a user name or a numeric uid")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ProxyUser, E> {
                u32::try_from(v)
                    .map(ProxyUser::Id)
                    .map_err(|_| E::custom(format!("{v} is not a uid")))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ProxyUser, E> {
                u32::try_from(v)
                    .map(ProxyUser::Id)
                    .map_err(|_| E::custom(format!("{v} is not a uid")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ProxyUser, E> {
                Ok(ProxyUser::Name(v.to_owned()))
            }
        }
        d.deserialize_any(V)
    }
}
