//! `iptables-restore --noflush` / `ip6tables-restore --noflush` input with our own chains.
//!
//! Portcullis owns the `PORTCULLIS-*` chains and one jump to each from a built-in chain. The
//! "default policy" is the last rule of our chains, so built-in policies are never changed and
//! removing our chains restores the previous state exactly. multiport takes at most 15 ports (a
//! range counts as two), so longer lists are split into several rules.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use super::model::{ChainPolicy, Mode, ProxyUser, WebAction};
use super::spec::{scope, Family, NetfilterSpec, PortEntry, Proto};
use super::OUTLOOK_NOTE;

/// Prefix of every chain we own.
pub const CHAIN_PREFIX: &str = "PORTCULLIS-";
/// multiport's limit.
pub const MULTIPORT_MAX: usize = 15;
/// The kernel's comment match keeps 256 bytes including the terminator.
const MAX_COMMENT: usize = 250;

/// What an earlier load left behind, parsed from `iptables-save` output: our chains and the
/// rules in other chains that jump to them, per table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SavedState {
    tables: BTreeMap<String, SavedTable>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct SavedTable {
    chains: BTreeSet<String>,
    /// `-A` lines (without `-A `) in chains not ours that jump to ours.
    references: Vec<String>,
}

impl SavedState {
    /// Parses `iptables-save` output; unrelated lines are ignored.
    pub fn parse(save: &str) -> SavedState {
        let mut state = SavedState::default();
        let mut table = String::new();
        for line in save.lines().map(str::trim) {
            if let Some(t) = line.strip_prefix('*') {
                table = t.to_owned();
            } else if let Some(rest) = line.strip_prefix(':') {
                let chain = rest.split_whitespace().next().unwrap_or_default();
                if chain.starts_with(CHAIN_PREFIX) {
                    let t = state.tables.entry(table.clone()).or_default();
                    t.chains.insert(chain.to_owned());
                }
            } else if let Some(rest) = line.strip_prefix("-A ") {
                let tokens: Vec<&str> = rest.split_whitespace().collect();
                let ours = |c: &str| c.starts_with(CHAIN_PREFIX);
                let jumps_to_ours = matches!(tokens[..], [.., "-j" | "-g", target] if ours(target));
                if jumps_to_ours && !tokens.first().is_some_and(|c| ours(c)) {
                    let t = state.tables.entry(table.clone()).or_default();
                    t.references.push(rest.to_owned());
                }
            }
        }
        state
    }

    /// True when nothing of ours is loaded.
    pub fn is_clean(&self) -> bool {
        self.tables
            .values()
            .all(|t| t.chains.is_empty() && t.references.is_empty())
    }
}

/// The restore input for a system with nothing of ours loaded (what `render` prints).
pub fn render(spec: &NetfilterSpec, family: Family) -> String {
    restore_input(Some(spec), family, &SavedState::default())
}

/// Restore input that removes everything `current` shows of ours; empty when there is nothing.
pub fn removal(family: Family, current: &SavedState) -> String {
    restore_input(None, family, current)
}

/// Restore input that replaces whatever `current` shows of ours with `spec`'s rules in one
/// `iptables-restore --noflush` run: declaring a chain flushes it, and jumps left from earlier
/// loads are deleted in the same transaction, so applying twice leaves one copy.
pub fn restore_input(spec: Option<&NetfilterSpec>, family: Family, current: &SavedState) -> String {
    let wanted = spec.map(|s| tables(s, family)).unwrap_or_default();
    let mut names: Vec<&str> = ["filter", "nat"].into_iter().collect();
    for t in current.tables.keys().chain(wanted.keys()) {
        if !names.contains(&t.as_str()) {
            names.push(t);
        }
    }
    let mut body = String::new();
    for name in names {
        let empty = SavedTable::default();
        let old = current.tables.get(name).unwrap_or(&empty);
        let new = wanted.get(name);
        let chains: Vec<&Chain> = new.map(|t| t.iter().collect()).unwrap_or_default();
        if chains.is_empty() && old.chains.is_empty() && old.references.is_empty() {
            continue;
        }
        let _ = writeln!(body, "*{name}");
        for c in &chains {
            let _ = writeln!(body, ":{} - [0:0]", c.name);
        }
        for r in &old.references {
            let _ = writeln!(body, "-D {r}");
        }
        let stale: Vec<&String> = old
            .chains
            .iter()
            .filter(|o| !chains.iter().any(|c| &c.name == *o))
            .collect();
        for s in &stale {
            let _ = writeln!(body, "-F {s}");
        }
        for s in &stale {
            let _ = writeln!(body, "-X {s}");
        }
        for c in &chains {
            for r in &c.rules {
                let _ = writeln!(body, "-A {} {r}", c.name);
            }
        }
        for c in &chains {
            if let Some(hook) = c.hook {
                let _ = writeln!(body, "-I {hook} 1 -j {}", c.name);
            }
        }
        let _ = writeln!(body, "COMMIT");
    }
    match spec {
        Some(spec) if !body.is_empty() => header(spec, family) + &body,
        _ => body,
    }
}

fn header(spec: &NetfilterSpec, family: Family) -> String {
    let (fam, tool) = match family {
        Family::V4 => ("IPv4", "iptables-restore"),
        Family::V6 => ("IPv6", "ip6tables-restore"),
    };
    let mode = match spec.mode {
        Mode::Gateway => "gateway",
        Mode::Host => "host",
    };
    let mut out = format!(
        "# Portcullis netfilter rules ({tool} input, {fam}), mode {mode}.\n\
         # Rendered by `portcullis netfilter render`; edit the [netfilter] config, not this file.\n#\n"
    );
    let text = format!(
        "Load with `{tool} --noflush`: without --noflush the whole table is flushed.\n\
         Portcullis owns only the {CHAIN_PREFIX}* chains and one jump to each from a built-in\n\
         chain. The default policy is the last rule of our chains, so built-in policies are never\n\
         changed. `portcullis netfilter apply` also deletes jumps left by an earlier load in the\n\
         same transaction, so applying twice leaves one copy.\n\n{OUTLOOK_NOTE}"
    );
    for line in text.lines() {
        let _ = writeln!(out, "{}", format!("# {line}").trim_end());
    }
    out.push('\n');
    out
}

/// One of our chains, its rules (without `-A NAME`) and the built-in chain that jumps to it.
#[derive(Debug, Default)]
struct Chain {
    name: String,
    hook: Option<&'static str>,
    rules: Vec<String>,
}

impl Chain {
    fn new(name: &str, hook: Option<&'static str>) -> Chain {
        Chain {
            name: format!("{CHAIN_PREFIX}{name}"),
            hook,
            rules: Vec::new(),
        }
    }

    fn rule(&mut self, matches: &str, why: &str, target: &str) {
        let mut why = format!("portcullis: {}", why.replace('"', "'"));
        if why.len() > MAX_COMMENT {
            let mut cut = MAX_COMMENT - 3;
            while !why.is_char_boundary(cut) {
                cut -= 1;
            }
            why.truncate(cut);
            why.push_str("...");
        }
        let sep = if matches.is_empty() { "" } else { " " };
        self.rules.push(format!(
            "{matches}{sep}-m comment --comment \"{why}\" -j {target}"
        ));
    }

    fn policy(&mut self, policy: ChainPolicy) {
        if policy == ChainPolicy::Drop {
            self.rule("", "default policy", "DROP");
        }
    }
}

type Tables = BTreeMap<String, Vec<Chain>>;

fn tables(spec: &NetfilterSpec, fam: Family) -> Tables {
    let mut filter = Vec::new();
    let mut input = Chain::new("INPUT", Some("INPUT"));
    common(&mut input, spec, fam, Some("-i"));
    lan_jumps(&mut input, spec, fam, "IN-LAN");
    input.policy(spec.default_policy);
    filter.push(input);

    let mut input_lan = Chain::new("IN-LAN", None);
    multiport(
        &mut input_lan,
        "-p tcp",
        &ports(&spec.proxy_ports),
        "proxy listeners",
        "ACCEPT",
    );
    if let Some(ic) = spec.intercept {
        let ports: Vec<String> = ic.listener_ports().iter().map(u16::to_string).collect();
        let m = format!(
            "-p tcp -m multiport --dports {} -m conntrack --ctstate DNAT",
            ports.join(",")
        );
        input_lan.rule(
            &m,
            "transparent interception listeners (redirected only)",
            "ACCEPT",
        );
    }
    for (proto, entries) in spec.host_services.by_proto() {
        let m = format!("-p {}", proto.name());
        multiport(&mut input_lan, &m, entries, "host services", "ACCEPT");
    }
    filter.push(input_lan);

    match spec.mode {
        Mode::Gateway => {
            let mut fwd = Chain::new("FORWARD", Some("FORWARD"));
            common(&mut fwd, spec, fam, None);
            for n in spec.nat.iter().filter(|n| n.family() == fam) {
                let m = format!("-d {} -m conntrack --ctstate DNAT", n.private);
                fwd.rule(
                    &m,
                    &format!("one-to-one NAT {}: to the server", n.name),
                    "ACCEPT",
                );
                if n.all_ports() {
                    let why = format!("one-to-one NAT {}: from the server", n.name);
                    fwd.rule(&format!("-s {}", n.private), &why, "ACCEPT");
                }
            }
            lan_jumps(&mut fwd, spec, fam, "FWD-LAN");
            fwd.policy(spec.default_policy);
            filter.push(fwd);
            let mut fwd_lan = Chain::new("FWD-LAN", None);
            direct_and_web(&mut fwd_lan, spec, fam);
            filter.push(fwd_lan);
        }
        Mode::Host => {
            let mut out = Chain::new("OUTPUT", Some("OUTPUT"));
            common(&mut out, spec, fam, Some("-o"));
            match &spec.proxy_user {
                Some(ProxyUser::Id(id)) => out.rule(
                    &format!("-m owner --uid-owner {id}"),
                    "the proxy itself",
                    "ACCEPT",
                ),
                Some(ProxyUser::Name(n)) => out.rule(
                    &format!("-m owner --uid-owner {n}"),
                    "the proxy itself",
                    "ACCEPT",
                ),
                None => {}
            }
            direct_and_web(&mut out, spec, fam);
            out.policy(spec.default_policy);
            filter.push(out);
        }
    }
    let mut tables = Tables::new();
    tables.insert("filter".to_owned(), filter);
    let nat = nat(spec, fam);
    if !nat.is_empty() {
        tables.insert("nat".to_owned(), nat);
    }
    tables
}

fn common(c: &mut Chain, spec: &NetfilterSpec, fam: Family, lo: Option<&str>) {
    if spec.accept_established {
        let m = "-m conntrack --ctstate ESTABLISHED,RELATED";
        c.rule(m, "replies to accepted connections", "ACCEPT");
        c.rule(
            "-m conntrack --ctstate INVALID",
            "not part of any known connection",
            "DROP",
        );
    }
    if let (Some(flag), true) = (lo, spec.accept_loopback) {
        c.rule(&format!("{flag} lo"), "loopback", "ACCEPT");
    }
    match (fam, spec.accept_icmp, lo.is_some()) {
        (Family::V4, true, _) => c.rule("-p icmp", "ICMP", "ACCEPT"),
        (Family::V6, true, _) => c.rule("-p ipv6-icmp", "ICMPv6", "ACCEPT"),
        (Family::V6, false, true) => {
            for t in [
                "router-solicitation",
                "router-advertisement",
                "neighbour-solicitation",
                "neighbour-advertisement",
            ] {
                let m = format!("-p ipv6-icmp --icmpv6-type {t}");
                c.rule(
                    &m,
                    "IPv6 neighbour discovery, without which IPv6 does not work",
                    "ACCEPT",
                );
            }
        }
        _ => {}
    }
}

/// Jumps to `target` for traffic from the LAN; none when no traffic of `fam` counts as LAN.
fn lan_jumps(c: &mut Chain, spec: &NetfilterSpec, fam: Family, target: &str) {
    let Some(nets) = spec.lan.sources(fam) else {
        return;
    };
    let target = format!("{CHAIN_PREFIX}{target}");
    let ifaces: Vec<Option<&String>> = if spec.lan.interfaces.is_empty() {
        vec![None]
    } else {
        spec.lan.interfaces.iter().map(Some).collect()
    };
    let nets: Vec<Option<String>> = if nets.is_empty() {
        vec![None]
    } else {
        nets.iter().map(|n| Some(n.to_string())).collect()
    };
    for i in &ifaces {
        for n in &nets {
            let mut m = Vec::new();
            if let Some(i) = i {
                m.push(format!("-i {i}"));
            }
            if let Some(n) = n {
                m.push(format!("-s {n}"));
            }
            c.rule(&m.join(" "), "from the LAN", &target);
        }
    }
}

fn direct_and_web(c: &mut Chain, spec: &NetfilterSpec, fam: Family) {
    if spec.intercept.is_some_and(|ic| ic.reject_quic) {
        // Before any direct rule: QUIC must fall back to TCP, which is intercepted.
        let why = "QUIC: fall back to TCP, which is intercepted (intercept.reject_quic)";
        c.rule("-p udp --dport 443", why, "REJECT");
    }
    for d in &spec.direct {
        let Some(to) = scope(&d.to, fam) else {
            continue;
        };
        let dest = if to.is_empty() {
            String::new()
        } else {
            let list: Vec<String> = to.iter().map(ToString::to_string).collect();
            format!(" -d {}", list.join(","))
        };
        for (proto, entries) in d.ports.by_proto() {
            let m = format!("-p {}{dest}", proto.name());
            multiport(c, &m, entries, &d.label, "ACCEPT");
        }
    }
    let (tcp_target, udp_target) = match spec.web.action {
        WebAction::Reject => ("REJECT --reject-with tcp-reset", "REJECT"),
        WebAction::Drop => ("DROP", "DROP"),
    };
    for (proto, list, target) in [
        (Proto::Tcp, &spec.web.tcp, tcp_target),
        (Proto::Udp, &spec.web.udp, udp_target),
    ] {
        let entries: Vec<PortEntry> = list
            .iter()
            .map(|p| PortEntry {
                port: *p,
                services: Vec::new(),
            })
            .collect();
        let m = format!("-p {}", proto.name());
        let why = format!("direct web ({}): use the proxy", proto.name());
        multiport(c, &m, &entries, &why, target);
    }
}

fn nat(spec: &NetfilterSpec, fam: Family) -> Vec<Chain> {
    let nats: Vec<_> = spec.nat.iter().filter(|n| n.family() == fam).collect();
    let intercept = spec.intercept.filter(|_| spec.lan.sources(fam).is_some());
    if nats.is_empty() && intercept.is_none() {
        return Vec::new();
    }
    let mut pre = Chain::new("PREROUTING", Some("PREROUTING"));
    // One-to-one NAT first: a connection to a mapped public address is the server's, even on
    // port 80, and must not be intercepted.
    for n in &nats {
        let why = format!("one-to-one NAT {}: public to private", n.name);
        let target = format!("DNAT --to-destination {}", n.private);
        if n.all_ports() {
            pre.rule(&format!("-d {}", n.public), &why, &target);
        }
        for (proto, entries) in n.ports.by_proto() {
            let m = format!("-d {} -p {}", n.public, proto.name());
            multiport(&mut pre, &m, entries, &why, &target);
        }
    }
    let mut chains = Vec::new();
    if let Some(ic) = intercept {
        lan_jumps(&mut pre, spec, fam, "PRE-LAN");
        let mut lan = Chain::new("PRE-LAN", None);
        // Traffic to the gateway's own addresses must not loop into the proxy.
        for (port, to) in ic.redirects() {
            let m = format!("-p tcp --dport {port} -m addrtype ! --dst-type LOCAL");
            let why = format!("transparent interception: tcp/{port}");
            lan.rule(&m, &why, &format!("REDIRECT --to-ports {to}"));
        }
        chains.push(lan);
    }
    chains.insert(0, pre);
    if !nats.is_empty() {
        let mut post = Chain::new("POSTROUTING", Some("POSTROUTING"));
        for n in &nats {
            let why = format!(
                "one-to-one NAT {}: the server leaves as its public address",
                n.name
            );
            post.rule(
                &format!("-s {}", n.private),
                &why,
                &format!("SNAT --to-source {}", n.public),
            );
        }
        chains.push(post);
    }
    chains
}

fn ports(ports: &[u16]) -> Vec<PortEntry> {
    ports
        .iter()
        .map(|p| PortEntry {
            port: super::model::PortSpec::single(*p),
            services: Vec::new(),
        })
        .collect()
}

/// Rules of at most [`MULTIPORT_MAX`] port slots each; the comment names the services whose
/// ports are in that rule.
fn multiport(c: &mut Chain, matches: &str, entries: &[PortEntry], why: &str, target: &str) {
    for chunk in chunks(entries) {
        let list: Vec<String> = chunk
            .iter()
            .map(|e| e.port.to_string().replace('-', ":"))
            .collect();
        let mut names: Vec<&str> = Vec::new();
        for e in &chunk {
            for s in &e.services {
                if !names.contains(&s.as_str()) {
                    names.push(s);
                }
            }
        }
        let why = if names.is_empty() {
            why.to_owned()
        } else {
            format!("{why}: {}", names.join(", "))
        };
        let m = format!("{matches} -m multiport --dports {}", list.join(","));
        c.rule(&m, &why, target);
    }
}

/// Greedy packing in port order.
pub(crate) fn chunks(entries: &[PortEntry]) -> Vec<Vec<&PortEntry>> {
    let mut out: Vec<Vec<&PortEntry>> = Vec::new();
    let mut used = 0;
    for e in entries {
        let cost = e.port.multiport_cost();
        match out.last_mut() {
            Some(last) if used + cost <= MULTIPORT_MAX => {
                last.push(e);
                used += cost;
            }
            _ => {
                out.push(vec![e]);
                used = cost;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests;
