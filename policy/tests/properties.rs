//! Property tests over random configs: every configured direct port appears exactly once per
//! destination scope in both renderings, no multiport rule exceeds 15 slots, and each iptables
//! rule's comment names the services whose ports it carries.
#![expect(clippy::unwrap_used, reason = "tests")]

use std::collections::{BTreeMap, BTreeSet};

use ipnet::IpNet;
use portcullis_policy::netfilter::{
    builtin_group, builtin_service, compile, iptables, nft, scope, DirectRule, Family, Mode,
    NetfilterConfig, NetfilterFacts, PortSpec, ProxyUser, ServiceDef,
};
use proptest::prelude::*;

const BUILTINS: &[&str] = &["dns", "smtp", "ldap", "global-catalog", "mail", "outlook"];
const DESTS: &[&str] = &[
    "10.1.0.0/16",
    "192.0.2.0/24",
    "2001:db8::/32",
    "fd00:1::/64",
];

/// User service `u{i}`: distinct singles in 1000..2000 and non-overlapping ranges from 5000 up,
/// so that the expected port set can be computed here without re-implementing range merging.
fn user_service(i: usize) -> impl Strategy<Value = ServiceDef> {
    let singles = proptest::collection::btree_set(1000u16..2000, 0..20);
    let ranges = proptest::collection::btree_set(0u16..40, 0..5);
    let udp = proptest::collection::btree_set(1000u16..2000, 0..6);
    (singles, ranges, udp).prop_map(move |(singles, ranges, udp)| {
        let mut tcp: Vec<PortSpec> = singles.into_iter().map(PortSpec::single).collect();
        // Ranges of user i live in their own block so that services never partly overlap.
        tcp.extend(ranges.into_iter().map(|r| {
            let first = 5000 + (i as u16) * 1000 + r * 20;
            PortSpec {
                first,
                last: first + 9,
            }
        }));
        let mut udp: Vec<PortSpec> = udp.into_iter().map(PortSpec::single).collect();
        if tcp.is_empty() && udp.is_empty() {
            udp.push(PortSpec::single(1999));
        }
        ServiceDef {
            tcp,
            udp,
            description: String::new(),
        }
    })
}

fn config() -> impl Strategy<Value = NetfilterConfig> {
    let services = (user_service(0), user_service(1), user_service(2));
    let names: Vec<String> = (0..3)
        .map(|i| format!("u{i}"))
        .chain(BUILTINS.iter().map(|s| s.to_string()))
        .collect();
    let rule = (
        proptest::sample::subsequence(names, 1..4),
        proptest::sample::subsequence(DESTS.to_vec(), 0..3),
    )
        .prop_map(|(services, to)| DirectRule {
            services,
            to: to.iter().map(|d| d.parse().unwrap()).collect(),
        });
    let rules = proptest::collection::vec(rule, 1..5);
    (services, rules, any::<bool>()).prop_map(|((a, b, c), direct, host)| NetfilterConfig {
        mode: if host { Mode::Host } else { Mode::Gateway },
        proxy_user: Some(ProxyUser::Id(990)),
        services: [("u0", a), ("u1", b), ("u2", c)]
            .into_iter()
            .map(|(n, s)| (n.to_owned(), s))
            .collect(),
        direct,
        ..NetfilterConfig::default()
    })
}

type Expected = BTreeMap<(&'static str, PortSpec), BTreeSet<String>>;

/// Independent expansion of a name into `(proto, port)` → service names.
fn expand(cfg: &NetfilterConfig, name: &str, out: &mut Expected) {
    let mut add = |proto, port, svc: &str| {
        out.entry((proto, port)).or_default().insert(svc.to_owned());
    };
    if let Some(def) = cfg.services.get(name) {
        def.tcp.iter().for_each(|p| add("tcp", *p, name));
        def.udp.iter().for_each(|p| add("udp", *p, name));
    } else if let Some(s) = builtin_service(name) {
        s.tcp
            .iter()
            .for_each(|p| add("tcp", PortSpec::single(*p), name));
        s.udp
            .iter()
            .for_each(|p| add("udp", PortSpec::single(*p), name));
    } else {
        for m in builtin_group(name).unwrap().members {
            expand(cfg, m, out);
        }
    }
}

/// The label's config indexes (`direct[0,2]` → [0, 2]).
fn indexes(label: &str) -> Vec<usize> {
    let inner = label.trim_start_matches("direct[").trim_end_matches(']');
    inner.split(',').map(|i| i.parse().unwrap()).collect()
}

fn port_text(p: &PortSpec, sep: char) -> String {
    if p.first == p.last {
        p.first.to_string()
    } else {
        format!("{}{sep}{}", p.first, p.last)
    }
}

/// `--dports` lists per `(comment label, proto)` plus every list's slot count.
/// Ports listed per `(label, proto)`.
type ByLabel = BTreeMap<(String, String), Vec<String>>;

fn iptables_ports(text: &str) -> (ByLabel, Vec<usize>) {
    let mut by_label = ByLabel::new();
    let mut slots = Vec::new();
    for line in text.lines().filter(|l| l.starts_with("-A ")) {
        let tokens: Vec<&str> = line.split_whitespace().collect();
        let Some(i) = tokens.iter().position(|t| *t == "--dports") else {
            continue;
        };
        let list: Vec<&str> = tokens[i + 1].split(',').collect();
        slots.push(
            list.iter()
                .map(|p| if p.contains(':') { 2 } else { 1 })
                .sum(),
        );
        let proto = tokens[tokens.iter().position(|t| *t == "-p").unwrap() + 1];
        let comment = line.split("--comment \"").nth(1).unwrap();
        let comment = comment.split('"').next().unwrap();
        let label = comment.trim_start_matches("portcullis: ");
        let label = label.split(':').next().unwrap().to_owned();
        if !label.starts_with("direct[") {
            continue;
        }
        let e = by_label.entry((label, proto.to_owned())).or_default();
        e.extend(list.iter().map(|p| p.to_string()));
        if let Some(dest) = tokens.iter().position(|t| *t == "-d") {
            e.push(format!("dest:{}", tokens[dest + 1]));
        }
    }
    (by_label, slots)
}

/// Elements of `set NAME { ... elements = { ... } }` in an nft script.
fn nft_set(text: &str, name: &str) -> Vec<String> {
    let Some(body) = text.split(&format!("\tset {name} {{\n")).nth(1) else {
        return Vec::new();
    };
    let line = body.lines().find(|l| l.contains("elements = {")).unwrap();
    let inner = line
        .split("elements = { ")
        .nth(1)
        .unwrap()
        .trim_end_matches(" }");
    // Split on commas outside the quoted element comments.
    let mut items = vec![String::new()];
    let mut quoted = false;
    for c in inner.chars() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => items.push(String::new()),
            _ if !quoted => items.last_mut().unwrap().push(c),
            _ => {}
        }
    }
    items
        .iter()
        .map(|e| e.split_whitespace().next().unwrap().to_owned())
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 200,
        // Shrunk failures are printed; no regression files are written into the tree.
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn every_port_once_and_multiport_within_limit(cfg in config()) {
        let spec = compile(&cfg, &NetfilterFacts::default(), None).unwrap();
        let nft_text = nft::render(&spec);
        for fam in Family::BOTH {
            let text = iptables::render(&spec, fam);
            let (by_label, slots) = iptables_ports(&text);
            // The limit is iptables' own, not the crate's constant.
            prop_assert!(slots.iter().all(|s| *s <= 15), "{slots:?}");
            for (k, d) in spec.direct.iter().enumerate() {
                let mut want = Expected::new();
                for i in indexes(&d.label) {
                    for name in &cfg.direct[i].services {
                        expand(&cfg, name, &mut want);
                    }
                }
                for proto in ["tcp", "udp"] {
                    let mut expect_ipt: Vec<String> = want
                        .keys()
                        .filter(|(p, _)| *p == proto)
                        .map(|(_, port)| port_text(port, ':'))
                        .collect();
                    let expect_nft: Vec<String> = want
                        .keys()
                        .filter(|(p, _)| *p == proto)
                        .map(|(_, port)| port_text(port, '-'))
                        .collect();
                    // nft: one set per scope and protocol, each port once.
                    let mut got = nft_set(&nft_text, &format!("direct{k}_{proto}"));
                    got.sort();
                    let mut exp = expect_nft.clone();
                    exp.sort();
                    prop_assert_eq!(&got, &exp, "nft {} {}", d.label, proto);
                    // iptables: the rules for this scope carry each port exactly once.
                    let mut got: Vec<String> = by_label
                        .get(&(d.label.clone(), proto.to_owned()))
                        .cloned()
                        .unwrap_or_default()
                        .into_iter()
                        .filter(|p| !p.starts_with("dest:"))
                        .collect();
                    if scope(&d.to, fam).is_none() {
                        expect_ipt.clear(); // no destination of this family
                    }
                    got.sort();
                    expect_ipt.sort();
                    prop_assert_eq!(got, expect_ipt, "{:?} {} {}", fam, d.label, proto);
                    // Each rule's comment names the services of the ports it carries.
                    let marker = format!("--comment \"portcullis: {}: ", d.label);
                    for line in text.lines().filter(|l| l.contains(&marker)) {
                        if !line.contains(&format!("-p {proto} ")) {
                            continue;
                        }
                        let names = line.split(&marker).nth(1).unwrap().split('"').next().unwrap();
                        let names: BTreeSet<&str> = names.split(", ").collect();
                        let list = line.split("--dports ").nth(1).unwrap().split(' ').next().unwrap();
                        for port in list.split(',') {
                            let spec: PortSpec = port.replace(':', "-").parse().unwrap();
                            for svc in &want[&(proto, spec)] {
                                prop_assert!(names.contains(svc.as_str()), "{svc} missing: {line}");
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn destination_restrictions_stay_on_every_chunk(cfg in config()) {
        let spec = compile(&cfg, &NetfilterFacts::default(), None).unwrap();
        let text = iptables::render(&spec, Family::V4);
        for line in text.lines().filter(|l| l.contains("--comment \"portcullis: direct[")) {
            let label = line.split("portcullis: ").nth(1).unwrap().split(':').next().unwrap();
            let d = spec.direct.iter().find(|d| d.label == label).unwrap();
            let v4: Vec<&IpNet> = d.to.iter().filter(|n| matches!(n, IpNet::V4(_))).collect();
            if v4.is_empty() {
                prop_assert!(!line.contains(" -d "), "{line}");
            } else {
                let list: Vec<String> = v4.iter().map(|n| n.to_string()).collect();
                let want = format!(" -d {} ", list.join(","));
                prop_assert!(line.contains(&want), "{line}");
            }
        }
    }
}
