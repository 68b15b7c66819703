//! `policy explain` against the embedded default and small configs.
#![expect(clippy::unwrap_used, reason = "tests")]

use super::*;

fn args(url: &str) -> ExplainArgs {
    ExplainArgs {
        config: None,
        url: url.to_owned(),
        method: "GET".to_owned(),
        ua: None,
        client: "10.0.0.7".parse().unwrap(),
        user: None,
        groups: None,
        sni: None,
        resolved: Vec::new(),
        transparent: None,
    }
}

fn no_lookups(host: &str, _port: u16) -> Result<Vec<IpAddr>, String> {
    Err(format!("no lookups here ({host})"))
}

fn default_policy() -> std::sync::Arc<Policy> {
    crate::config::Config::embedded_default()
        .unwrap()
        .compiled_policy(&[])
        .unwrap()
}

#[test]
fn outlook_is_tunnelled_and_exempt() {
    let out = explain(
        &default_policy(),
        &args("https://outlook.office365.com/mapi/"),
        &no_lookups,
    )
    .unwrap();
    assert!(
        out.starts_with("CONNECT outlook.office365.com:443 from 10.0.0.7\n"),
        "{out}"
    );
    assert!(out.contains("decision: tunnel"), "{out}");
    assert!(out.contains("auth:     Exempt"), "{out}");
    assert!(out.contains("relayed untouched"), "{out}");
}

#[test]
fn other_https_is_inspected_and_its_request_explained() {
    let mut a = args("https://www.example.test/Microsoft-Server-ActiveSync?Cmd=Ping");
    a.method = "POST".to_owned();
    let out = explain(&default_policy(), &a, &no_lookups).unwrap();
    assert!(out.contains("decision: inspect"), "{out}");
    assert!(out.contains("auth:     Required"), "{out}");
    assert!(
        out.contains("inspected request POST https://www.example.test/"),
        "{out}"
    );
    assert!(out.contains("exchange: eas"), "{out}");
    assert!(out.contains("timeouts: LongPoll"), "{out}");
}

#[test]
fn bare_ip_is_judged_again_by_its_sni() {
    let mut a = args("203.0.113.9:443");
    a.sni = Some("outlook.office365.com".to_owned());
    let out = explain(&default_policy(), &a, &no_lookups).unwrap();
    assert!(
        out.contains("after the ClientHello (SNI outlook.office365.com;"),
        "{out}"
    );
    assert!(
        out.contains("auth:     Required (decided at the CONNECT)"),
        "{out}"
    );
    assert!(out.contains("relayed untouched"), "{out}");
}

#[test]
fn authentication_is_always_the_one_the_proxy_applies() {
    let config = crate::config::Config::parse(
        "[[policy.rules]]\nname = \"lab\"\nhost = \"*.exempt.test\"\naction = \"inspect\"\nauth = \"exempt\"\n",
        "t",
    )
    .unwrap();
    let policy = config.compiled_policy(&[]).unwrap();
    // A bare IP is challenged: neither the SNI's rule nor the request inside exempts it.
    let mut a = args("203.0.113.9:443");
    a.sni = Some("www.exempt.test".to_owned());
    let out = explain(&policy, &a, &no_lookups).unwrap();
    assert!(out.contains("rule:     lab"), "{out}");
    assert!(!out.contains("Exempt"), "{out}");
    assert_eq!(
        out.matches("auth:     Required (decided at the CONNECT)")
            .count(),
        2,
        "{out}"
    );
    // The exempt host itself: exempt all the way down.
    let out = explain(&policy, &args("https://www.exempt.test/"), &no_lookups).unwrap();
    assert!(!out.contains("Required"), "{out}");
    assert_eq!(out.matches("auth:     Exempt").count(), 2, "{out}");
}

#[test]
fn autodiscover_hosts_are_judged_on_their_addresses() {
    let policy = default_policy();
    let url = "https://autodiscover.attacker.example/autodiscover/autodiscover.xml";
    // Given addresses outside Microsoft 365: the default, and why.
    let mut a = args(url);
    a.resolved = vec!["127.0.0.1".parse().unwrap()];
    let out = explain(&policy, &a, &no_lookups).unwrap();
    assert!(out.contains("rule:     default"), "{out}");
    assert!(out.contains("auth:     Required"), "{out}");
    assert!(
        out.contains(
            "127.0.0.1 outside Microsoft 365 networks, so outlook:autodiscover does not apply"
        ),
        "{out}"
    );
    // Looked up like the proxy would: Microsoft 365 addresses, tunnelled and exempt.
    let m365 = |_: &str, _: u16| Ok(vec!["52.97.1.1".parse().unwrap()]);
    let out = explain(&policy, &args(url), &m365).unwrap();
    assert!(
        out.contains("(looked up autodiscover.attacker.example: 52.97.1.1)"),
        "{out}"
    );
    assert!(out.contains("rule:     outlook:autodiscover"), "{out}");
    assert!(
        out.contains("decision: tunnel") && out.contains("auth:     Exempt"),
        "{out}"
    );
    // A failed lookup: the default, as in the proxy.
    let out = explain(&policy, &args(url), &no_lookups).unwrap();
    assert!(
        out.contains("(cannot look up autodiscover.attacker.example: no lookups here"),
        "{out}"
    );
    assert!(out.contains("rule:     default"), "{out}");
    // Plain HTTP alike.
    let mut a = args("http://autodiscover.attacker.example/autodiscover/autodiscover.xml");
    a.resolved = vec!["52.97.1.1".parse().unwrap()];
    let out = explain(&policy, &a, &no_lookups).unwrap();
    assert!(out.contains("rule:     outlook:autodiscover"), "{out}");
    // Hosts that need no addresses are not looked up.
    let out = explain(&policy, &args("https://www.example.com/"), &no_lookups).unwrap();
    assert!(!out.contains("look"), "{out}");
}

#[test]
fn bad_urls_are_named() {
    let err = explain(&default_policy(), &args("ftp://x/"), &no_lookups).unwrap_err();
    assert!(err.to_string().contains("ftp scheme"), "{err}");
}

/// `--groups` feeds a `group` rule, in any spelling; without the group the rule does not match.
#[test]
fn groups_given_on_the_command_line_decide_group_rules() {
    let raw: portcullis_policy::RawPolicy = toml::from_str(
        "[outlook]\nmode = \"off\"\n[[rules]]\nname = \"no-finance\"\nhost = \"*.test\"\ngroup = \"finance\"\naction = \"deny\"\nreason = \"no\"\n",
    )
    .unwrap();
    let policy = Policy::compile(&raw).unwrap();
    let mut a = args("http://www.example.test/");
    a.user = Some("LAB\\alice".to_owned());
    a.groups = Some(vec!["Staff".to_owned(), "FINANCE".to_owned()]);
    let out = explain(&policy, &a, &no_lookups).unwrap();
    assert!(out.contains("decision: deny"), "{out}");
    assert!(out.contains("no-finance"), "{out}");
    a.groups = Some(vec!["staff".to_owned()]);
    let out = explain(&policy, &a, &no_lookups).unwrap();
    assert!(!out.contains("decision: deny"), "{out}");
}
