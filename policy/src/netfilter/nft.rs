//! nftables rendering: one `table inet portcullis` with named sets, loaded atomically.

use std::fmt::Write as _;

use super::model::{ChainPolicy, Mode, PortSpec, ProxyUser, WebAction};
use super::spec::{scope, Direct, Family, NetfilterSpec, PortEntry};
use super::{OUTLOOK_NOTE, TABLE};

/// nft keeps comments in 128-byte kernel user data; longer ones are cut with "...".
const MAX_COMMENT: usize = 120;

/// The nft script for `spec`. Loading it with `nft -f` replaces our table and nothing else.
///
/// The script's header explains that Outlook over HTTPS (MAPI/HTTP, RPC over HTTP) through the
/// proxy is the better fix than one-to-one NAT, which only exists for legacy RPC/TCP clients
/// (Microsoft KB 291615).
pub fn render(spec: &NetfilterSpec) -> String {
    let mut out = String::new();
    header(&mut out, spec);
    out.push_str(&format!("table inet {TABLE}\ndelete table inet {TABLE}\n"));
    out.push_str(&format!("table inet {TABLE} {{\n"));
    out.push_str("\tcomment \"managed by portcullis; edit the [netfilter] config instead\"\n");
    sets(&mut out, spec);
    match spec.mode {
        Mode::Gateway => {
            input(&mut out, spec);
            forward(&mut out, spec);
            nat(&mut out, spec);
        }
        Mode::Host => {
            input(&mut out, spec);
            output(&mut out, spec);
        }
    }
    out.push_str("}\n");
    out
}

/// A script that deletes our table if it exists and touches nothing else.
pub fn removal() -> String {
    format!("table inet {TABLE}\ndelete table inet {TABLE}\n")
}

fn header(out: &mut String, spec: &NetfilterSpec) {
    let mode = match spec.mode {
        Mode::Gateway => "gateway",
        Mode::Host => "host",
    };
    let _ = writeln!(out, "#!/usr/sbin/nft -f");
    let _ = writeln!(out, "# Portcullis netfilter rules (nftables), mode {mode}.");
    let _ = writeln!(
        out,
        "# Rendered by `portcullis netfilter render`; edit the [netfilter] config, not this file."
    );
    let _ = writeln!(out, "#");
    for line in [
        "Loading replaces only the table `inet portcullis`, in one atomic transaction: the first",
        "line declares the table so that the delete succeeds even when it does not exist yet, the",
        "second deletes it, the block recreates it. Other tables are never flushed (a packet must",
        "still pass every table's chains on a hook, so a drop elsewhere wins).",
        "",
    ] {
        comment_line(out, line);
    }
    for line in OUTLOOK_NOTE.lines() {
        comment_line(out, line);
    }
    let _ = writeln!(out);
}

fn comment_line(out: &mut String, line: &str) {
    let _ = writeln!(out, "{}", format!("# {line}").trim_end());
}

fn sets(out: &mut String, spec: &NetfilterSpec) {
    if !spec.lan.interfaces.is_empty() {
        let elems = spec.lan.interfaces.iter().map(|i| format!("\"{i}\""));
        set(out, "lan_ifaces", "ifname", false, "LAN interfaces", elems);
    }
    for (fam, name, ty) in [
        (Family::V4, "lan_v4", "ipv4_addr"),
        (Family::V6, "lan_v6", "ipv6_addr"),
    ] {
        if let Some(nets) = spec.lan.sources(fam).filter(|n| !n.is_empty()) {
            set(
                out,
                name,
                ty,
                true,
                "LAN source networks",
                nets.iter().map(|n| n.to_string()),
            );
        }
    }
    let proxy = spec.proxy_ports.iter().map(|p| p.to_string());
    set(
        out,
        "proxy_ports",
        "inet_service",
        false,
        "proxy listeners",
        proxy,
    );
    for (proto, entries) in spec.host_services.by_proto() {
        let name = format!("host_{}", proto.name());
        set(
            out,
            &name,
            "inet_service",
            true,
            "host services",
            port_elems(entries),
        );
    }
    for (k, d) in spec.direct.iter().enumerate() {
        let what = format!("{}: {}", d.label, d.names.join(", "));
        for (proto, entries) in d.ports.by_proto() {
            let name = format!("direct{k}_{}", proto.name());
            set(out, &name, "inet_service", true, &what, port_elems(entries));
        }
        for (fam, ty) in [(Family::V4, "ipv4_addr"), (Family::V6, "ipv6_addr")] {
            if let Some(nets) = scope(&d.to, fam).filter(|n| !n.is_empty()) {
                let name = format!("direct{k}_to_{}", fam_suffix(fam));
                let what = format!("{} destinations", d.label);
                set(
                    out,
                    &name,
                    ty,
                    true,
                    &what,
                    nets.iter().map(|n| n.to_string()),
                );
            }
        }
    }
    let web = |ports: &[PortSpec]| ports.iter().map(|p| p.to_string()).collect::<Vec<_>>();
    let (tcp, udp) = (web(&spec.web.tcp), web(&spec.web.udp));
    set(
        out,
        "web_tcp",
        "inet_service",
        true,
        "web: use the proxy",
        tcp.into_iter(),
    );
    set(
        out,
        "web_udp",
        "inet_service",
        true,
        "QUIC: use the proxy",
        udp.into_iter(),
    );
}

/// Writes a named set; empty sets are left out (nft rejects `elements = { }`), and so are the
/// rules that would use them.
fn set(
    out: &mut String,
    name: &str,
    ty: &str,
    interval: bool,
    what: &str,
    elements: impl Iterator<Item = String>,
) {
    let elements: Vec<String> = elements.collect();
    if elements.is_empty() {
        return;
    }
    let _ = writeln!(out, "\n\tset {name} {{");
    let _ = writeln!(out, "\t\ttype {ty}");
    if interval {
        let _ = writeln!(out, "\t\tflags interval");
    }
    let _ = writeln!(out, "\t\tcomment {}", quote(what));
    let _ = writeln!(out, "\t\telements = {{ {} }}", elements.join(", "));
    let _ = writeln!(out, "\t}}");
}

/// Port elements, each commented with the services that asked for it.
fn port_elems(entries: &[PortEntry]) -> impl Iterator<Item = String> + '_ {
    entries
        .iter()
        .map(|e| format!("{} comment {}", e.port, quote(&e.services.join(", "))))
}

fn quote(text: &str) -> String {
    let mut t = text.replace('"', "'");
    if t.len() > MAX_COMMENT {
        let mut cut = MAX_COMMENT - 3;
        while !t.is_char_boundary(cut) {
            cut -= 1;
        }
        t.truncate(cut);
        t.push_str("...");
    }
    format!("\"{t}\"")
}

fn fam_suffix(fam: Family) -> &'static str {
    match fam {
        Family::V4 => "v4",
        Family::V6 => "v6",
    }
}

fn fam_kw(fam: Family) -> &'static str {
    match fam {
        Family::V4 => "ip",
        Family::V6 => "ip6",
    }
}

/// A chain under construction.
struct Chain {
    text: String,
}

impl Chain {
    fn base(name: &str, ty: &str, hook: &str, prio: &str, policy: ChainPolicy) -> Chain {
        let policy = match policy {
            ChainPolicy::Drop => "drop",
            ChainPolicy::Accept => "accept",
        };
        Chain {
            text: format!(
                "\n\tchain {name} {{\n\t\ttype {ty} hook {hook} priority {prio}; policy {policy};\n"
            ),
        }
    }

    fn regular(name: &str) -> Chain {
        Chain {
            text: format!("\n\tchain {name} {{\n"),
        }
    }

    fn rule(&mut self, rule: &str, why: &str) {
        let _ = writeln!(self.text, "\t\t{rule} comment {}", quote(why));
    }

    fn finish(mut self, out: &mut String) {
        self.text.push_str("\t}\n");
        out.push_str(&self.text);
    }
}

/// Rules every filter base chain starts with.
fn common(c: &mut Chain, spec: &NetfilterSpec, lo: Option<&str>, nd: bool) {
    if spec.accept_established {
        c.rule(
            "ct state established,related accept",
            "replies to accepted connections",
        );
        c.rule("ct state invalid drop", "not part of any known connection");
    }
    if let (Some(lo), true) = (lo, spec.accept_loopback) {
        c.rule(&format!("{lo} \"lo\" accept"), "loopback");
    }
    if spec.accept_icmp {
        c.rule("meta l4proto { icmp, ipv6-icmp } accept", "ICMP and ICMPv6");
    } else if nd {
        c.rule(
            "icmpv6 type { nd-router-solicit, nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert } accept",
            "IPv6 neighbour discovery, without which IPv6 does not work",
        );
    }
}

/// Rules jumping to `target` for traffic from the LAN.
fn lan_jumps(c: &mut Chain, spec: &NetfilterSpec, target: &str) {
    let iface = if spec.lan.interfaces.is_empty() {
        ""
    } else {
        "iifname @lan_ifaces "
    };
    if spec.lan.networks.is_empty() {
        c.rule(&format!("{iface}jump {target}"), "from the LAN");
        return;
    }
    for fam in Family::BOTH {
        if spec.lan.sources(fam).is_some() {
            let (kw, sfx) = (fam_kw(fam), fam_suffix(fam));
            c.rule(
                &format!("{iface}{kw} saddr @lan_{sfx} jump {target}"),
                "from the LAN",
            );
        }
    }
}

fn input(out: &mut String, spec: &NetfilterSpec) {
    let mut c = Chain::base("input", "filter", "input", "filter", spec.default_policy);
    common(&mut c, spec, Some("iifname"), true);
    lan_jumps(&mut c, spec, "input_lan");
    c.finish(out);

    let mut c = Chain::regular("input_lan");
    if !spec.proxy_ports.is_empty() {
        c.rule("tcp dport @proxy_ports accept", "the proxy's listeners");
    }
    if let Some(ic) = spec.intercept {
        let ports: Vec<String> = ic.listener_ports().iter().map(u16::to_string).collect();
        c.rule(
            &format!("ct status dnat tcp dport {{ {} }} accept", ports.join(", ")),
            "transparent interception listeners (redirected only)",
        );
    }
    for (proto, _) in spec.host_services.by_proto() {
        let p = proto.name();
        c.rule(&format!("{p} dport @host_{p} accept"), "host services");
    }
    c.finish(out);
}

fn forward(out: &mut String, spec: &NetfilterSpec) {
    let mut c = Chain::base(
        "forward",
        "filter",
        "forward",
        "filter",
        spec.default_policy,
    );
    common(&mut c, spec, None, false);
    for n in &spec.nat {
        let kw = fam_kw(n.family());
        let why = format!("one-to-one NAT {}: to the server", n.name);
        c.rule(
            &format!("ct status dnat {kw} daddr {} accept", n.private),
            &why,
        );
        if n.all_ports() {
            let why = format!("one-to-one NAT {}: from the server", n.name);
            c.rule(&format!("{kw} saddr {} accept", n.private), &why);
        }
    }
    lan_jumps(&mut c, spec, "forward_lan");
    c.finish(out);

    let mut c = Chain::regular("forward_lan");
    direct_and_web(&mut c, spec);
    c.finish(out);
}

fn output(out: &mut String, spec: &NetfilterSpec) {
    let mut c = Chain::base("output", "filter", "output", "filter", spec.default_policy);
    common(&mut c, spec, Some("oifname"), true);
    match &spec.proxy_user {
        Some(ProxyUser::Id(id)) => c.rule(&format!("meta skuid {id} accept"), "the proxy itself"),
        Some(ProxyUser::Name(name)) => {
            c.rule(&format!("meta skuid \"{name}\" accept"), "the proxy itself")
        }
        None => {}
    }
    direct_and_web(&mut c, spec);
    c.finish(out);
}

fn direct_and_web(c: &mut Chain, spec: &NetfilterSpec) {
    if spec.intercept.is_some_and(|ic| ic.reject_quic) {
        // Before any direct rule: QUIC must fall back to TCP, which is intercepted.
        c.rule(
            "udp dport 443 reject",
            "QUIC: fall back to TCP, which is intercepted (intercept.reject_quic)",
        );
    }
    for (k, d) in spec.direct.iter().enumerate() {
        direct(c, k, d);
    }
    let verdict = match spec.web.action {
        WebAction::Reject => ["reject with tcp reset", "reject"],
        WebAction::Drop => ["drop", "drop"],
    };
    if !spec.web.tcp.is_empty() {
        c.rule(
            &format!("tcp dport @web_tcp {}", verdict[0]),
            "direct web: use the proxy",
        );
    }
    if !spec.web.udp.is_empty() {
        c.rule(
            &format!("udp dport @web_udp {}", verdict[1]),
            "direct QUIC: use the proxy",
        );
    }
}

fn direct(c: &mut Chain, k: usize, d: &Direct) {
    let why = format!("{}: {}", d.label, d.names.join(", "));
    for (proto, _) in d.ports.by_proto() {
        let p = proto.name();
        let ports = format!("{p} dport @direct{k}_{p} accept");
        if d.to.is_empty() {
            c.rule(&ports, &why);
            continue;
        }
        for fam in Family::BOTH {
            if scope(&d.to, fam).is_some() {
                let (kw, sfx) = (fam_kw(fam), fam_suffix(fam));
                c.rule(&format!("{kw} daddr @direct{k}_to_{sfx} {ports}"), &why);
            }
        }
    }
}

fn nat(out: &mut String, spec: &NetfilterSpec) {
    if spec.nat.is_empty() && spec.intercept.is_none() {
        return;
    }
    let mut c = Chain::base(
        "prerouting",
        "nat",
        "prerouting",
        "dstnat",
        ChainPolicy::Accept,
    );
    // One-to-one NAT first: a connection to a mapped public address is the server's, even on
    // port 80, and must not be intercepted.
    for n in &spec.nat {
        let kw = fam_kw(n.family());
        let why = format!("one-to-one NAT {}: public to private", n.name);
        let to = format!("dnat {kw} to {}", n.private);
        if n.all_ports() {
            c.rule(&format!("{kw} daddr {} {to}", n.public), &why);
        }
        for (proto, entries) in n.ports.by_proto() {
            let ports: Vec<String> = entries.iter().map(|e| e.port.to_string()).collect();
            let p = proto.name();
            let rule = format!(
                "{kw} daddr {} {p} dport {{ {} }} {to}",
                n.public,
                ports.join(", ")
            );
            c.rule(&rule, &why);
        }
    }
    if spec.intercept.is_some() {
        lan_jumps(&mut c, spec, "prerouting_lan");
    }
    c.finish(out);

    if let Some(ic) = spec.intercept {
        let mut c = Chain::regular("prerouting_lan");
        // Traffic to the gateway's own addresses (a PAC file, the admin UI) is not web traffic
        // leaving the LAN and must not loop into the proxy.
        for (port, to) in ic.redirects() {
            let rule = format!("fib daddr type != local tcp dport {port} redirect to :{to}");
            c.rule(&rule, &format!("transparent interception: tcp/{port}"));
        }
        c.finish(out);
    }

    if !spec.nat.is_empty() {
        let mut c = Chain::base(
            "postrouting",
            "nat",
            "postrouting",
            "srcnat",
            ChainPolicy::Accept,
        );
        for n in &spec.nat {
            let kw = fam_kw(n.family());
            let why = format!(
                "one-to-one NAT {}: the server leaves as its public address",
                n.name
            );
            c.rule(
                &format!("{kw} saddr {} snat {kw} to {}", n.private, n.public),
                &why,
            );
        }
        c.finish(out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_comments_are_cut_on_a_char_boundary() {
        let q = quote(&"é".repeat(200));
        assert!(q.len() <= MAX_COMMENT + 2, "{}", q.len());
        assert!(q.ends_with("...\""));
        assert_eq!(quote("a\"b"), "\"a'b\"");
    }

    #[test]
    fn removal_only_names_our_table() {
        assert_eq!(
            removal(),
            "table inet portcullis\ndelete table inet portcullis\n"
        );
    }
}
