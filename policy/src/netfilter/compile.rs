//! `NetfilterConfig` + facts → validated [`NetfilterSpec`]. Every check lives here; an invalid
//! config is an error naming its key, never a rule silently left out.

use std::collections::{BTreeMap, BTreeSet};

use ipnet::IpNet;

use super::model::{Mode, NetfilterConfig, PortSpec, ProxyUser};
use super::services::{builtin_group, builtin_service};
use super::spec::{
    Direct, Family, Lan, Nat, NetfilterFacts, NetfilterSpec, PortEntry, PortSet, Web,
};

/// Why a `[netfilter]` section cannot be turned into rules. `key` is the config path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompileError {
    #[error("{key}: unknown service or group {name:?}")]
    UnknownName { key: String, name: String },
    #[error("{key}: {name:?} is a built-in service or group; choose another name")]
    ShadowsBuiltin { key: String, name: String },
    #[error("{key}: invalid name {name:?}: use up to 32 of a-z 0-9 - _, starting with a-z or 0-9")]
    InvalidName { key: String, name: String },
    #[error("{key}: group cycle {path}")]
    GroupCycle { key: String, path: String },
    #[error("{key}: invalid interface name {name:?}: up to 15 of A-Z a-z 0-9 . _ -")]
    InvalidInterface { key: String, name: String },
    #[error("{key}: gateway mode needs lan_interfaces or lan_networks; otherwise any source could be forwarded")]
    NoLan { key: String },
    #[error("{key}: passes web port {proto}/{port} to any destination, which bypasses the proxy; restrict it with `to`")]
    UnrestrictedWeb {
        key: String,
        proto: &'static str,
        port: PortSpec,
    },
    #[error("{key}: host mode needs the account the proxy runs as, so that only the proxy may reach web servers")]
    NoProxyUser { key: String },
    #[error("{key}: {what} needs gateway mode")]
    GatewayOnly { key: String, what: &'static str },
    #[error("{key}: {reason}")]
    Invalid { key: String, reason: String },
}

impl CompileError {
    /// The config key at fault (`netfilter.direct[1].services[0]`), for callers that report
    /// errors in their own format.
    pub fn key(&self) -> &str {
        match self {
            CompileError::UnknownName { key, .. }
            | CompileError::ShadowsBuiltin { key, .. }
            | CompileError::InvalidName { key, .. }
            | CompileError::GroupCycle { key, .. }
            | CompileError::InvalidInterface { key, .. }
            | CompileError::NoLan { key }
            | CompileError::UnrestrictedWeb { key, .. }
            | CompileError::NoProxyUser { key }
            | CompileError::GatewayOnly { key, .. }
            | CompileError::Invalid { key, .. } => key,
        }
    }
}

pub(super) const P: &str = "netfilter";

pub(super) fn invalid(key: String, reason: impl Into<String>) -> CompileError {
    CompileError::Invalid {
        key,
        reason: reason.into(),
    }
}

/// Validates `config` and resolves names, ports and facts into a [`NetfilterSpec`].
/// `mode` overrides `config.mode` (the CLI's `--mode`).
pub fn compile(
    config: &NetfilterConfig,
    facts: &NetfilterFacts,
    mode: Option<Mode>,
) -> Result<NetfilterSpec, CompileError> {
    let mode = mode.unwrap_or(config.mode);
    let names = Names::new(config)?;

    for (i, name) in config.lan_interfaces.iter().enumerate() {
        if !valid_interface(name) {
            return Err(CompileError::InvalidInterface {
                key: format!("{P}.lan_interfaces[{i}]"),
                name: name.clone(),
            });
        }
    }
    if mode == Mode::Gateway && config.lan_interfaces.is_empty() && config.lan_networks.is_empty() {
        return Err(CompileError::NoLan {
            key: format!("{P}.lan_networks"),
        });
    }
    let lan = Lan {
        interfaces: sorted(config.lan_interfaces.iter().cloned()),
        networks: normalize_nets(&config.lan_networks),
    };

    let mut host = Vec::new();
    for (i, name) in config.host_services.iter().enumerate() {
        host.extend(names.resolve(name, &format!("{P}.host_services[{i}]"))?);
    }

    // Entries with the same destinations are merged so that each port appears once per scope.
    let mut scopes: BTreeMap<Vec<IpNet>, Scope> = BTreeMap::new();
    for (i, rule) in config.direct.iter().enumerate() {
        let key = format!("{P}.direct[{i}]");
        if rule.services.is_empty() {
            return Err(invalid(format!("{key}.services"), "lists no services"));
        }
        let to = normalize_nets(&rule.to);
        let scope = scopes.entry(to.clone()).or_default();
        scope.0.push(i);
        for (j, name) in rule.services.iter().enumerate() {
            let resolved = names.resolve(name, &format!("{key}.services[{j}]"))?;
            if to.is_empty() {
                check_not_web(config, &resolved, &key)?;
            }
            if !scope.1.contains(name) {
                scope.1.push(name.clone());
            }
            scope.2.extend(resolved);
        }
    }
    let direct = scopes
        .into_iter()
        .map(|(to, (indexes, names, resolved))| Direct {
            label: format!(
                "direct[{}]",
                indexes
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            names,
            to,
            ports: port_set(&resolved),
        })
        .collect();

    let proxy_user = match (&config.proxy_user, mode) {
        (Some(ProxyUser::Name(name)), _) if !valid_user(name) => {
            return Err(invalid(
                format!("{P}.proxy_user"),
                format!("{name:?} is not a valid user name"),
            ))
        }
        (None, Mode::Host) => {
            return Err(CompileError::NoProxyUser {
                key: format!("{P}.proxy_user"),
            })
        }
        (user, _) => user.clone(),
    };

    let intercept = super::intercept::compile(&config.intercept, facts, mode)?;

    let nat = compile_nat(config, mode)?;

    let proxy_ports = if config.accept_proxy_ports {
        sorted(
            facts
                .proxy_listen
                .iter()
                .filter(|a| !a.ip().is_loopback())
                .map(|a| a.port()),
        )
    } else {
        Vec::new()
    };

    Ok(NetfilterSpec {
        mode,
        lan,
        default_policy: config.default_policy,
        accept_established: config.accept_established,
        accept_loopback: config.accept_loopback,
        accept_icmp: config.accept_icmp,
        proxy_ports,
        host_services: port_set(&host),
        direct,
        web: Web {
            action: config.web_action,
            tcp: sorted(config.web_tcp_ports.iter().copied()),
            udp: sorted(config.web_udp_ports.iter().copied()),
        },
        proxy_user,
        intercept,
        nat,
    })
}

fn compile_nat(config: &NetfilterConfig, mode: Mode) -> Result<Vec<Nat>, CompileError> {
    let mut seen = BTreeSet::new();
    let mut publics = BTreeSet::new();
    let mut out = Vec::new();
    for (i, n) in config.one_to_one_nat.iter().enumerate() {
        let key = format!("{P}.one_to_one_nat[{i}]");
        if mode != Mode::Gateway {
            return Err(CompileError::GatewayOnly {
                key,
                what: "one-to-one NAT",
            });
        }
        if !valid_name(&n.name) {
            return Err(CompileError::InvalidName {
                key: format!("{key}.name"),
                name: n.name.clone(),
            });
        }
        if !seen.insert(n.name.clone()) {
            return Err(invalid(
                format!("{key}.name"),
                format!("{:?} is used twice", n.name),
            ));
        }
        if !publics.insert(n.public) {
            return Err(invalid(
                format!("{key}.public"),
                format!("{} is mapped twice", n.public),
            ));
        }
        if Family::of_addr(&n.public) != Family::of_addr(&n.private) {
            return Err(invalid(
                format!("{key}.private"),
                format!(
                    "{} and {} are of different address families",
                    n.public, n.private
                ),
            ));
        }
        if n.public == n.private {
            return Err(invalid(
                format!("{key}.private"),
                "equals the public address",
            ));
        }
        let resolved = Resolved {
            name: n.name.clone(),
            tcp: n.tcp.clone(),
            udp: n.udp.clone(),
        };
        let mut ports = port_set(&[resolved]);
        // The mapping's name is in every rule's comment already.
        for e in ports.tcp.iter_mut().chain(ports.udp.iter_mut()) {
            e.services.clear();
        }
        out.push(Nat {
            name: n.name.clone(),
            public: n.public,
            private: n.private,
            ports,
        });
    }
    Ok(out)
}

/// Direct web ports to anywhere would make the proxy optional; to named networks (e.g. the
/// Microsoft 365 "Optimize" ranges) they are a deliberate bypass and allowed.
fn check_not_web(
    config: &NetfilterConfig,
    svcs: &[Resolved],
    key: &str,
) -> Result<(), CompileError> {
    for s in svcs {
        for (proto, ports, web) in [
            ("tcp", &s.tcp, &config.web_tcp_ports),
            ("udp", &s.udp, &config.web_udp_ports),
        ] {
            for p in ports {
                if let Some(w) = web.iter().find(|w| w.first <= p.last && p.first <= w.last) {
                    let port = PortSpec::single(w.first.max(p.first));
                    return Err(CompileError::UnrestrictedWeb {
                        key: format!("{key}.to"),
                        proto,
                        port,
                    });
                }
            }
        }
    }
    Ok(())
}

/// Config entry indexes, names as written, and resolved services of one destination scope.
type Scope = (Vec<usize>, Vec<String>, Vec<Resolved>);

/// A service resolved to its ports.
#[derive(Debug, Clone)]
struct Resolved {
    name: String,
    tcp: Vec<PortSpec>,
    udp: Vec<PortSpec>,
}

/// Name lookup over built-in and user-defined services and groups.
struct Names<'a> {
    config: &'a NetfilterConfig,
}

impl<'a> Names<'a> {
    fn new(config: &'a NetfilterConfig) -> Result<Self, CompileError> {
        for (name, def) in &config.services {
            let key = format!("{P}.services.{name}");
            check_user_name(name, &key)?;
            if def.tcp.is_empty() && def.udp.is_empty() {
                return Err(invalid(key, "has no tcp or udp ports"));
            }
        }
        for (name, members) in &config.groups {
            let key = format!("{P}.groups.{name}");
            check_user_name(name, &key)?;
            if config.services.contains_key(name) {
                return Err(invalid(key, format!("{name:?} is also a service")));
            }
            if members.is_empty() {
                return Err(invalid(key, "has no members"));
            }
        }
        let names = Names { config };
        // Resolve every group once so that cycles and unknown members are reported at the
        // group's own key even when no rule uses the group.
        for (name, members) in &config.groups {
            for (i, member) in members.iter().enumerate() {
                let key = format!("{P}.groups.{name}[{i}]");
                names.expand(member, &key, &mut vec![name.clone()])?;
            }
        }
        Ok(names)
    }

    fn resolve(&self, name: &str, key: &str) -> Result<Vec<Resolved>, CompileError> {
        self.expand(name, key, &mut Vec::new())
    }

    fn expand(
        &self,
        name: &str,
        key: &str,
        stack: &mut Vec<String>,
    ) -> Result<Vec<Resolved>, CompileError> {
        if stack.iter().any(|s| s == name) {
            stack.push(name.to_owned());
            return Err(CompileError::GroupCycle {
                key: key.to_owned(),
                path: stack.join(" -> "),
            });
        }
        if let Some(def) = self.config.services.get(name) {
            return Ok(vec![Resolved {
                name: name.to_owned(),
                tcp: def.tcp.clone(),
                udp: def.udp.clone(),
            }]);
        }
        if let Some(s) = builtin_service(name) {
            let ports = |p: &[u16]| p.iter().map(|&p| PortSpec::single(p)).collect();
            return Ok(vec![Resolved {
                name: name.to_owned(),
                tcp: ports(s.tcp),
                udp: ports(s.udp),
            }]);
        }
        let members: Vec<String> = match (self.config.groups.get(name), builtin_group(name)) {
            (Some(m), _) => m.clone(),
            (None, Some(g)) => g.members.iter().map(|m| (*m).to_owned()).collect(),
            (None, None) => {
                return Err(CompileError::UnknownName {
                    key: key.to_owned(),
                    name: name.to_owned(),
                })
            }
        };
        stack.push(name.to_owned());
        let mut out = Vec::new();
        for m in &members {
            out.extend(self.expand(m, key, stack)?);
        }
        stack.pop();
        Ok(out)
    }
}

fn check_user_name(name: &str, key: &str) -> Result<(), CompileError> {
    if !valid_name(name) {
        return Err(CompileError::InvalidName {
            key: key.to_owned(),
            name: name.to_owned(),
        });
    }
    if builtin_service(name).is_some() || builtin_group(name).is_some() {
        return Err(CompileError::ShadowsBuiltin {
            key: key.to_owned(),
            name: name.to_owned(),
        });
    }
    Ok(())
}

/// Names end up in rule comments and set names, so they are kept to a quote-free alphabet.
fn valid_name(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// Linux limits interface names to 15 bytes; the alphabet keeps them safe to quote.
fn valid_interface(name: &str) -> bool {
    (1..=15).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// POSIX-ish user names (useradd's default pattern).
fn valid_user(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

fn sorted<T: Ord>(items: impl Iterator<Item = T>) -> Vec<T> {
    items.collect::<BTreeSet<T>>().into_iter().collect()
}

/// Host bits cleared (`10.0.0.1/8` → `10.0.0.0/8`, which nft requires), sorted, deduplicated.
fn normalize_nets(nets: &[IpNet]) -> Vec<IpNet> {
    sorted(nets.iter().map(IpNet::trunc))
}

/// Sorted ports per protocol; overlapping ranges are merged so that no port is listed twice
/// (nft rejects overlapping interval elements, and duplicates waste multiport slots).
fn port_set(services: &[Resolved]) -> PortSet {
    let merge = |pick: fn(&Resolved) -> &Vec<PortSpec>| {
        let mut items: Vec<(PortSpec, &str)> = services
            .iter()
            .flat_map(|s| pick(s).iter().map(move |p| (*p, s.name.as_str())))
            .collect();
        items.sort();
        let mut out: Vec<PortEntry> = Vec::new();
        for (port, name) in items {
            match out.last_mut() {
                Some(last) if port.first <= last.port.last => {
                    last.port.last = last.port.last.max(port.last);
                    if !last.services.iter().any(|s| s == name) {
                        last.services.push(name.to_owned());
                    }
                }
                _ => out.push(PortEntry {
                    port,
                    services: vec![name.to_owned()],
                }),
            }
        }
        out
    };
    PortSet {
        tcp: merge(|s| &s.tcp),
        udp: merge(|s| &s.udp),
    }
}

#[cfg(test)]
mod tests;
