//! Properties of host matching: pattern semantics against a string model, insensitivity to case
//! and a trailing dot, and the indexed rule lookup against a plain first-match scan.
#![expect(clippy::unwrap_used, reason = "tests")]

use std::net::{IpAddr, Ipv4Addr};

use portcullis_policy::config::{ActionKind, OutlookMode, RawPolicy, RawRule};
use portcullis_policy::host::HostPattern;
use portcullis_policy::{ConnectFacts, Policy, RuleSource};
use proptest::prelude::*;

/// Few distinct labels, so that random patterns and names often overlap.
fn label() -> impl Strategy<Value = String> {
    prop::sample::select(vec!["a", "b", "mail", "autodiscover", "x-1", "outlook"])
        .prop_map(str::to_owned)
}

fn name() -> impl Strategy<Value = String> {
    prop::collection::vec(label(), 1..5).prop_map(|l| l.join("."))
}

#[derive(Debug, Clone)]
enum Kind {
    Exact,
    Suffix,
    Prefix,
}

fn pattern() -> impl Strategy<Value = (Kind, String)> {
    (
        prop::sample::select(vec![Kind::Exact, Kind::Suffix, Kind::Prefix]),
        name(),
    )
}

fn text((kind, name): &(Kind, String)) -> String {
    match kind {
        Kind::Exact => name.clone(),
        Kind::Suffix => format!("*.{name}"),
        Kind::Prefix => format!("{name}.*"),
    }
}

/// The documented semantics, on lower-case names.
fn model((kind, name): &(Kind, String), host: &str) -> bool {
    match kind {
        Kind::Exact => host == name,
        Kind::Suffix => host.ends_with(&format!(".{name}")),
        Kind::Prefix => host.starts_with(&format!("{name}.")),
    }
}

/// Upper-cases the letters selected by `mask`.
fn recase(host: &str, mask: u64) -> String {
    host.chars()
        .enumerate()
        .map(|(i, c)| {
            if mask >> (i % 64) & 1 == 1 {
                c.to_ascii_uppercase()
            } else {
                c
            }
        })
        .collect()
}

proptest! {
    #[test]
    fn pattern_matches_model(p in pattern(), host in name(), mask in any::<u64>(), dot in any::<bool>()) {
        let parsed = HostPattern::parse(&text(&p)).unwrap();
        let want = model(&p, &host);
        prop_assert_eq!(parsed.matches(&host), want);
        let mut variant = recase(&host, mask);
        if dot {
            variant.push('.');
        }
        prop_assert_eq!(parsed.matches(&variant), want, "variant {}", variant);
    }

    #[test]
    fn regex_equivalent_matches_the_same(p in pattern(), host in name()) {
        let escaped = regex_text(&p);
        let re = HostPattern::parse(&escaped).unwrap();
        prop_assert_eq!(re.matches(&host), model(&p, &host), "{}", escaped);
    }

    #[test]
    fn policy_lookup_is_first_match(
        patterns in prop::collection::vec(prop::collection::vec(pattern(), 1..3), 1..40),
        hosts in prop::collection::vec(name(), 1..10),
        mask in any::<u64>(),
    ) {
        let rules = patterns.iter().map(|ps| RawRule {
            name: None,
            host: ps.iter().map(text).collect(),
            dest_ip: vec![], port: vec![], sni: vec![], method: vec![], path: vec![],
            user_agent: vec![], client: vec![], user: vec![], group: vec![],
            action: ActionKind::Tunnel, reason: None, auth: None, timeouts: None, log_tag: None, route: Vec::new(), icap: None,
        }).collect();
        let mut raw = RawPolicy { rules, ..RawPolicy::default() };
        raw.outlook.mode = OutlookMode::Off;
        let policy = Policy::compile(&raw).unwrap();
        for host in &hosts {
            let want = patterns.iter().position(|ps| ps.iter().any(|p| model(p, host)));
            let asked = recase(host, mask);
            let d = policy.decide_connect(&ConnectFacts::new(&asked, 443, IpAddr::V4(Ipv4Addr::LOCALHOST)));
            let got = (d.rule.source == RuleSource::Config).then_some(d.rule.index);
            prop_assert_eq!(got, want, "host {}", host);
        }
    }
}

/// The same pattern as an anchored `~regex`, to check that regexes get the same treatment.
fn regex_text((kind, name): &(Kind, String)) -> String {
    let name = name.replace('.', "\\.");
    match kind {
        Kind::Exact => format!("~{name}"),
        Kind::Suffix => format!("~.+\\.{name}"),
        Kind::Prefix => format!("~{name}\\..+"),
    }
}
