//! Feed parsing and conversion, on records shaped like the published worldwide feed.
#![expect(clippy::unwrap_used, reason = "tests")]

use std::net::IpAddr;

use super::*;
use crate::config::RawPolicy;
use crate::decision::{Action, AuthRequirement, ConnectFacts, RuleSource};
use crate::Policy;

const FEED: &str = r#"[
  {"id": 1, "serviceArea": "Exchange", "serviceAreaDisplayName": "Exchange Online",
   "urls": ["outlook.office.com", "outlook.office365.com"],
   "ips": ["13.107.6.152/31", "40.96.0.0/13", "2603:1006::/40"],
   "tcpPorts": "80,443", "expressRoute": true, "category": "Optimize", "required": true},
  {"id": 2, "serviceArea": "Exchange", "serviceAreaDisplayName": "Exchange Online",
   "urls": ["smtp.office365.com"], "tcpPorts": "587", "expressRoute": false,
   "category": "Allow", "required": true},
  {"id": 3, "serviceArea": "Exchange", "urls": ["r1.res.office365.com"], "tcpPorts": "80,443",
   "expressRoute": false, "category": "Default", "required": true},
  {"id": 11, "serviceArea": "Exchange", "ips": ["13.107.6.192/32"], "udpPorts": "443",
   "expressRoute": false, "category": "Optimize", "required": true},
  {"id": 31, "serviceArea": "SharePoint", "urls": ["*.sharepoint.com"], "tcpPorts": "443",
   "expressRoute": true, "category": "Optimize", "required": true},
  {"id": 154, "serviceArea": "Common", "urls": ["autodiscover.*.onmicrosoft.com"],
   "tcpPorts": "443,80", "expressRoute": false, "category": "Allow", "required": true,
   "notes": "Autodiscover for tenants", "futureField": {"ignored": true}},
  {"id": 200, "serviceArea": "Common", "urls": ["bad host.example"], "ips": ["300.1.1.1/8"],
   "tcpPorts": "443,x", "expressRoute": false, "category": "Allow", "required": false}
]"#;

#[test]
fn parses_every_field() {
    let sets = parse_endpoints(FEED).unwrap();
    assert_eq!(sets.len(), 7);
    let first = &sets[0];
    assert_eq!(first.id, 1);
    assert_eq!(first.service_area, "Exchange");
    assert_eq!(
        first.service_area_display_name.as_deref(),
        Some("Exchange Online")
    );
    assert_eq!(first.urls, ["outlook.office.com", "outlook.office365.com"]);
    assert_eq!(first.ips.len(), 3);
    assert_eq!(first.tcp_ports.as_deref(), Some("80,443"));
    assert!(first.express_route && first.required);
    assert_eq!(first.category, M365Category::Optimize);
    assert_eq!(sets[3].udp_ports.as_deref(), Some("443"));
    assert_eq!(sets[5].notes.as_deref(), Some("Autodiscover for tenants"));
}

#[test]
fn rejects_malformed_documents() {
    for bad in [
        "{",
        "[{\"id\": 1}]",
        "[{\"id\": 1, \"serviceArea\": \"Exchange\", \"category\": \"Sometimes\"}]",
    ] {
        let e = parse_endpoints(bad).unwrap_err();
        assert!(
            e.to_string().starts_with("Microsoft 365 endpoints data: "),
            "{e}"
        );
    }
}

#[test]
fn selection_by_area_and_category() {
    let sets = parse_endpoints(FEED).unwrap();
    let areas = ["Exchange".to_owned(), "common".to_owned()];
    let sel = select(
        &sets,
        &areas,
        &[M365Category::Optimize, M365Category::Allow],
    );
    let ids: Vec<u32> = sel.sets.iter().map(|s| s.id).collect();
    // 3 is Default, 11 has no TCP ports, 31 is SharePoint.
    assert_eq!(ids, [1, 2, 154, 200]);
    assert_eq!(sel.sets[0].tcp_ports, [80..=80, 443..=443]);
    let skipped: Vec<(u32, &str)> = sel
        .skipped
        .iter()
        .map(|s| (s.id, s.value.as_str()))
        .collect();
    assert_eq!(
        skipped,
        [(200, "x"), (200, "bad host.example"), (200, "300.1.1.1/8")]
    );

    let only_optimize = select(&sets, &areas, &[M365Category::Optimize]);
    assert_eq!(
        only_optimize.sets.iter().map(|s| s.id).collect::<Vec<_>>(),
        [1]
    );
}

#[test]
fn middle_wildcards_become_anchored_regexes() {
    let p = url_pattern("autodiscover.*.onmicrosoft.com").unwrap();
    assert!(p.matches("autodiscover.contoso.onmicrosoft.com"));
    assert!(!p.matches("autodiscover.contoso.onmicrosoft.com.evil.example"));
    assert!(!p.matches("autodiscover..onmicrosoft.com"));
    assert!(matches!(
        url_pattern("*.outlook.com").unwrap(),
        HostPattern::Suffix(_)
    ));
    assert!(url_pattern("bad host").is_err());
}

#[test]
fn port_ranges() {
    assert_eq!(parse_port_range(" 443 "), Some(443..=443));
    assert_eq!(parse_port_range("1024-65535"), Some(1024..=65535));
    for bad in ["", "0", "443-80", "a", "70000", "1-2-3"] {
        assert_eq!(parse_port_range(bad), None, "{bad}");
    }
}

#[test]
fn feed_rules_in_the_policy() {
    let sets = parse_endpoints(FEED).unwrap();
    let raw: RawPolicy = toml::from_str("").unwrap();
    let p = Policy::compile_with_m365(&raw, &sets).unwrap();
    assert_eq!(p.m365_skipped().len(), 3);
    let client: IpAddr = "10.0.0.1".parse().unwrap();

    // Not in the built-in list, only in the feed (set 1): a bare IP in 40.96.0.0/13 is covered
    // by the built-in networks, so use a feed-only address and name.
    let sets = parse_endpoints(
        r#"[{"id": 77, "serviceArea": "Exchange", "urls": ["feedonly.office.example"],
             "ips": ["198.51.100.0/24"], "tcpPorts": "443", "category": "Allow"}]"#,
    )
    .unwrap();
    let p = Policy::compile_with_m365(&raw, &sets).unwrap();
    for (host, port, want) in [
        ("feedonly.office.example", 443, Some("m365:77:hosts")),
        ("198.51.100.9", 443, Some("m365:77:ips")),
        // The set's ports bound the rule.
        ("feedonly.office.example", 8443, None),
    ] {
        let d = p.decide_connect(&ConnectFacts::new(host, port, client));
        match want {
            Some(name) => {
                assert_eq!(d.rule.name.as_ref(), name, "{host}");
                assert_eq!(d.rule.source, RuleSource::M365);
                assert_eq!(
                    (d.action, d.auth),
                    (Action::Tunnel, AuthRequirement::Exempt)
                );
            }
            None => assert_eq!(d.rule.source, RuleSource::Default, "{host}:{port}"),
        }
    }
    // Mode off: no feed rules either.
    let off: RawPolicy = toml::from_str("[outlook]\nmode = \"off\"").unwrap();
    let p = Policy::compile_with_m365(&off, &sets).unwrap();
    let d = p.decide_connect(&ConnectFacts::new("198.51.100.9", 443, client));
    assert_eq!(d.rule.source, RuleSource::Default);
}

#[test]
fn version_answers() {
    let one = parse_versions(r#"{"instance": "Worldwide", "latest": "2018063000"}"#).unwrap();
    assert_eq!(
        one,
        [VersionInfo {
            instance: "Worldwide".into(),
            latest: "2018063000".into(),
            versions: vec![]
        }]
    );
    let all = parse_versions(
        r#"[{"instance": "Worldwide", "latest": "2026110200", "versions": ["2026110200", "2026100100"]},
            {"instance": "China", "latest": "2026090100"}]"#,
    )
    .unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].versions.len(), 2);
    for bad in [
        r#"{"instance": "Worldwide", "latest": "latest"}"#,
        r#"{"instance": "W"}"#,
        "[1]",
    ] {
        assert!(parse_versions(bad).is_err(), "{bad}");
    }
}
