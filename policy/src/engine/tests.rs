//! Decisions, the Outlook profile, compile errors and explanations, table-driven.
#![expect(clippy::unwrap_used, reason = "tests")]

use std::net::{IpAddr, Ipv4Addr};

use crate::config::RawPolicy;
use crate::decision::{
    Action, AuthRequirement, ConnectFacts, Identity, RequestFacts, RuleSource, TimeoutProfile,
};
use crate::exchange::ExchangeClass;
use crate::Policy;

const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3));
const OUTLOOK_UA: &str =
    "Microsoft Office/16.0 (Windows NT 10.0; Microsoft Outlook 16.0.17328; Pro)";
const BROWSER_UA: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/120.0";

fn raw(text: &str) -> RawPolicy {
    toml::from_str(text).unwrap()
}

fn policy(text: &str) -> Policy {
    Policy::compile(&raw(text)).unwrap()
}

fn compile_err(text: &str) -> String {
    Policy::compile(&raw(text)).unwrap_err().to_string()
}

fn connect<'a>(host: &'a str, port: u16) -> ConnectFacts<'a> {
    ConnectFacts::new(host, port, CLIENT)
}

/// Rule name chosen at CONNECT time.
fn connect_rule(p: &Policy, facts: &ConnectFacts<'_>) -> String {
    p.decide_connect(facts).rule.name.to_string()
}

const RULES: &str = r#"
[outlook]
mode = "off"

[[rules]]
name = "deny-casino"
host = ["*.casino.example", "casino.example"]
action = "deny"
reason = "Gambling is blocked."

[[rules]]
name = "bank-tunnel"
host = "~(www|online)\\.bank[0-9]*\\.example"
action = "tunnel"
log_tag = "bank"

[[rules]]
name = "autodiscover-any"
host = "autodiscover.*"
action = "tunnel"
auth = "exempt"

[[rules]]
name = "lab-ips"
dest_ip = ["192.0.2.0/24", "2001:db8::1"]
action = "tunnel"

[[rules]]
name = "alt-ports"
host = "*.example"
port = [8443, "9000-9010"]
action = "deny"
reason = "Non-standard port."

[[rules]]
name = "pinned-sni"
sni = "*.pinned.example"
action = "tunnel"

[[rules]]
name = "guests"
client = "10.99.0.0/16"
action = "deny"
reason = "Guest network."

[[rules]]
name = "curl"
user_agent = ["curl/", "~^Wget/[0-9]"]
action = "tunnel"
timeouts = "long_poll"

[[rules]]
name = "admins"
group = "Proxy-Admins"
action = "tunnel"

[[rules]]
name = "bob"
user = "bob@CORP.EXAMPLE"
action = "deny"
reason = "Bob is on leave."

[[rules]]
name = "uploads"
method = "put"
path = "/upload/"
action = "deny"
reason = "Uploads are blocked."
"#;

#[test]
fn connect_conditions_table() {
    let p = policy(RULES);
    let groups = vec!["proxy-admins".to_owned()];
    let admin = Identity {
        name: "alice",
        groups: &groups,
    };
    let bob = Identity {
        name: "Bob@corp.example",
        groups: &[],
    };
    let cases: Vec<(ConnectFacts<'_>, &str)> = vec![
        (connect("casino.example", 443), "deny-casino"),
        (connect("WWW.Casino.Example.", 443), "deny-casino"),
        (connect("online.bank42.example", 443), "bank-tunnel"),
        (connect("online.bank42.example.evil", 443), "default"),
        (connect("autodiscover.contoso.com", 443), "autodiscover-any"),
        (connect("192.0.2.77", 443), "lab-ips"),
        (connect("[2001:db8::1]", 443), "lab-ips"),
        (connect("2001:db8::2", 443), "default"),
        (connect("shop.example", 8443), "alt-ports"),
        (connect("shop.example", 9005), "alt-ports"),
        (connect("shop.example", 443), "default"),
        (
            connect("1.2.3.4", 443).with_sni(Some("app.pinned.example")),
            "pinned-sni",
        ),
        (connect("1.2.3.4", 443), "default"),
        (
            ConnectFacts::new("x.test", 443, "10.99.1.1".parse().unwrap()),
            "guests",
        ),
        (
            connect("x.test", 443).with_user_agent(Some("curl/8.5")),
            "curl",
        ),
        (
            connect("x.test", 443).with_user_agent(Some("Wget/1.21")),
            "curl",
        ),
        (
            connect("x.test", 443).with_user_agent(Some("NotWget/1.21")),
            "default",
        ),
        (connect("x.test", 443).with_user(Some(admin)), "admins"),
        (connect("x.test", 443).with_user(Some(bob)), "bob"),
        // A path condition never matches a CONNECT.
        (connect("x.test", 443), "default"),
    ];
    for (facts, want) in cases {
        assert_eq!(connect_rule(&p, &facts), want, "{facts:?}");
    }
}

#[test]
fn request_conditions_and_first_match() {
    let p = policy(RULES);
    let req = |m, host, path| RequestFacts::new(m, host, 80, path, CLIENT);
    let d = p.decide_request(&req("PUT", "files.test", "/Upload/a.bin"));
    assert_eq!(d.rule.name.as_ref(), "uploads");
    assert_eq!(
        d.action,
        Action::Deny {
            reason: "Uploads are blocked.".into()
        }
    );
    assert_eq!(
        p.decide_request(&req("GET", "files.test", "/upload/a.bin"))
            .rule
            .name
            .as_ref(),
        "default"
    );
    // First match wins: the casino deny precedes the alt-port rule that also matches.
    assert_eq!(
        p.decide_request(&RequestFacts::new(
            "GET",
            "a.casino.example",
            8443,
            "/",
            CLIENT
        ))
        .rule
        .name
        .as_ref(),
        "deny-casino"
    );
}

#[test]
fn decision_fields() {
    let p = policy(RULES);
    let d = p.decide_connect(&connect("www.bank.example", 443));
    assert_eq!(d.action, Action::Tunnel);
    assert_eq!(d.tag.as_deref(), Some("bank"));
    assert_eq!(d.rule.source, RuleSource::Config);
    assert_eq!(d.rule.index, 1);
    assert_eq!(d.auth, AuthRequirement::Required);
    assert_eq!(d.timeouts, TimeoutProfile::Default);
    assert!(d.why().contains("bank-tunnel"), "{}", d.why());

    let d = p.decide_connect(&connect("x.test", 443).with_user_agent(Some("curl/8")));
    assert_eq!(d.timeouts, TimeoutProfile::LongPoll);
    let d = p.decide_connect(&connect("autodiscover.a.example", 443));
    assert_eq!(d.auth, AuthRequirement::Exempt);

    let d = p.decide_connect(&connect("nothing.test", 443));
    assert_eq!(d.rule.source, RuleSource::Default);
    assert_eq!(d.action, Action::Inspect);
}

#[test]
fn default_is_configurable() {
    let p = policy(
        r#"
        default = { action = "deny", reason = "Not on the list.", timeouts = "long_poll", log_tag = "blocked" }
        outlook = { mode = "off" }
        "#,
    );
    let d = p.decide_connect(&connect("x.test", 443));
    assert_eq!(
        d.action,
        Action::Deny {
            reason: "Not on the list.".into()
        }
    );
    assert_eq!(d.timeouts, TimeoutProfile::LongPoll);
    assert_eq!(d.tag.as_deref(), Some("blocked"));
}

#[test]
fn outlook_profile_defaults() {
    let p = policy("");
    let cases = [
        ("outlook.office365.com", "outlook:m365-hosts"),
        ("outlook.office.com", "outlook:m365-hosts"),
        ("autodiscover-s.outlook.com", "outlook:m365-hosts"),
        (
            "contoso-com.mail.protection.outlook.com",
            "outlook:m365-hosts",
        ),
        ("autodiscover-s.outlook.com", "outlook:m365-hosts"),
        ("autodiscover.outlook.com", "outlook:m365-hosts"),
        ("autodiscover.office365.com", "outlook:m365-hosts"),
        ("login.microsoftonline.com", "outlook:m365-hosts"),
        ("login.microsoft.com", "outlook:m365-hosts"),
        ("login.windows.net", "outlook:m365-hosts"),
        ("aadcdn.msauth.net", "outlook:m365-hosts"),
        ("aadcdn.msftauth.net", "outlook:m365-hosts"),
        ("outlook.cloud.microsoft", "outlook:m365-hosts"),
        ("52.97.1.1", "outlook:m365-networks"),
        ("2603:1006::5", "outlook:m365-networks"),
        ("www.example.com", "default"),
        // The apex of a suffix pattern is not included.
        ("cloud.microsoft", "default"),
    ];
    for (host, want) in cases {
        let d = p.decide_connect(&connect(host, 443));
        assert_eq!(d.rule.name.as_ref(), want, "{host}");
        if want != "default" {
            assert_eq!(d.action, Action::Tunnel, "{host}");
            assert_eq!(d.auth, AuthRequirement::Exempt, "{host}");
            assert_eq!(d.timeouts, TimeoutProfile::LongPoll, "{host}");
        }
    }
}

fn ips(list: &[&str]) -> Vec<IpAddr> {
    list.iter().map(|ip| ip.parse().unwrap()).collect()
}

#[test]
fn autodiscover_of_other_domains_needs_microsoft_addresses() {
    let p = policy("[outlook]\naccepted_domains = [\"corp.example\"]");
    let host = "autodiscover.contoso.example";
    // Unresolved: the default for now, and a request to resolve and decide again.
    let d = p.decide_connect(&connect(host, 443));
    assert_eq!(d.rule.name.as_ref(), "default");
    assert_eq!(
        (d.action, d.auth),
        (Action::Inspect, AuthRequirement::Required)
    );
    assert!(d.needs_resolution);

    let cases: &[(&[&str], &str)] = &[
        (&["52.97.1.1"], "outlook:autodiscover"),
        (
            &["52.97.1.1", "40.99.10.2", "2603:1006::1"],
            "outlook:autodiscover",
        ),
        // IPv4-mapped spellings are the IPv4 address.
        (&["::ffff:52.97.1.1"], "outlook:autodiscover"),
        (&["127.0.0.1"], "default"),
        (&["203.0.113.5"], "default"),
        // Every address, not just one: a name must not smuggle an outside address in.
        (&["52.97.1.1", "203.0.113.5"], "default"),
        // Resolution failed.
        (&[], "default"),
    ];
    for (resolved, want) in cases {
        let addrs = ips(resolved);
        let d = p.decide_connect(&connect(host, 443).with_resolved(Some(&addrs)));
        assert_eq!(d.rule.name.as_ref(), *want, "{resolved:?}");
        assert!(!d.needs_resolution, "{resolved:?}");
        if *want == "outlook:autodiscover" {
            assert_eq!(d.action, Action::Tunnel);
            assert_eq!(d.auth, AuthRequirement::Exempt);
            assert_eq!(d.timeouts, TimeoutProfile::LongPoll);
            assert_eq!(d.rule.source, RuleSource::Outlook);
        } else {
            assert_eq!(d.auth, AuthRequirement::Required, "{resolved:?}");
        }
    }

    // Plain HTTP the same (Outlook's step 4, the HTTP redirect).
    let req = RequestFacts::new("GET", host, 80, "/autodiscover/autodiscover.xml", CLIENT);
    assert!(p.decide_request(&req).needs_resolution);
    let m365 = ips(&["52.97.1.1"]);
    let d = p.decide_request(&req.with_resolved(Some(&m365)));
    assert_eq!(
        (d.rule.name.as_ref(), d.auth),
        ("outlook:autodiscover", AuthRequirement::Exempt)
    );

    // Names that need no resolution: Microsoft's own, accepted domains, anything else.
    for (host, want) in [
        ("autodiscover.office365.com", "outlook:m365-hosts"),
        ("autodiscover-s.outlook.com", "outlook:m365-hosts"),
        ("autodiscover.corp.example", "outlook:exchange"),
        ("www.example.com", "default"),
        ("autodiscover", "default"),
        ("xautodiscover.contoso.example", "default"),
    ] {
        let d = p.decide_connect(&connect(host, 443));
        assert_eq!(d.rule.name.as_ref(), want, "{host}");
        assert!(!d.needs_resolution, "{host}");
    }
    let d = p.decide_connect(&connect("autodiscover.corp.example", 443));
    assert_eq!(d.auth, AuthRequirement::Exempt);

    // Outlook's User-Agent does not skip the question: the autodiscover rule comes first.
    let d = p.decide_connect(&connect(host, 443).with_user_agent(Some(OUTLOOK_UA)));
    assert_eq!(d.rule.name.as_ref(), "outlook:unknown-host-ua");
    assert!(d.needs_resolution);
}

#[test]
fn autodiscover_resolution_follows_the_profile_and_rules() {
    let host = "autodiscover.contoso.example";
    let m365 = ips(&["52.97.1.1"]);
    // A config rule deciding first needs no resolution.
    let p = policy("[[rules]]\nhost = \"*.contoso.example\"\naction = \"deny\"\nreason = \"r\"");
    assert!(!p.decide_connect(&connect(host, 443)).needs_resolution);
    // The profile's mode and auth apply to the rule as to the rest of the profile.
    let p = policy("[outlook]\nmode = \"inspect\"\nauth = \"required\"");
    let d = p.decide_connect(&connect(host, 443).with_resolved(Some(&m365)));
    assert_eq!(d.rule.name.as_ref(), "outlook:autodiscover");
    assert_eq!(
        (d.action, d.auth),
        (Action::Inspect, AuthRequirement::Required)
    );
    // No profile, no question.
    let p = policy("[outlook]\nmode = \"off\"");
    assert!(!p.decide_connect(&connect(host, 443)).needs_resolution);
    // The endpoint list's networks count as Microsoft 365 networks.
    let sets = crate::m365::parse_endpoints(
        r#"[{"id":1,"serviceArea":"Exchange","urls":["outlook.office365.com"],"ips":["198.51.100.0/24"],"tcpPorts":"443","category":"Optimize","required":true}]"#,
    )
    .unwrap();
    let p = Policy::compile_with_m365(&raw(""), &sets).unwrap();
    let lab = ips(&["198.51.100.7"]);
    let d = p.decide_connect(&connect(host, 443).with_resolved(Some(&lab)));
    assert_eq!(d.rule.name.as_ref(), "outlook:autodiscover");
    let without = policy("");
    let d = without.decide_connect(&connect(host, 443).with_resolved(Some(&lab)));
    assert_eq!(d.rule.name.as_ref(), "default");
}

#[test]
fn explain_says_how_resolution_decided() {
    let p = policy("");
    let host = "autodiscover.attacker.example";
    let text = p.explain_connect(&connect(host, 443)).to_string();
    assert!(
        text.contains("resolved: autodiscover.attacker.example is not resolved; outlook:autodiscover applies only if"),
        "{text}"
    );
    let local = ips(&["127.0.0.1", "52.97.1.1"]);
    let text = p
        .explain_connect(&connect(host, 443).with_resolved(Some(&local)))
        .to_string();
    assert!(text.contains("rule:     default"), "{text}");
    assert!(
        text.contains("resolved: autodiscover.attacker.example resolves to 127.0.0.1, 52.97.1.1: 127.0.0.1 outside Microsoft 365 networks, so outlook:autodiscover does not apply"),
        "{text}"
    );
    let m365 = ips(&["52.97.1.1"]);
    let e = p.explain_connect(&connect(host, 443).with_resolved(Some(&m365)));
    let text = e.to_string();
    assert!(text.contains("rule:     outlook:autodiscover"), "{text}");
    assert!(
        text.contains("matched:  resolved Microsoft 365 networks") && text.contains("~ 52.97.1.1"),
        "{text}"
    );
    assert!(text.contains("all in Microsoft 365 networks"), "{text}");
    // Ordinary hosts say nothing about resolution.
    let text = p
        .explain_connect(&connect("www.example.com", 443))
        .to_string();
    assert!(!text.contains("resolved:"), "{text}");
}

#[test]
fn outlook_profile_modes() {
    let inspect = policy("[outlook]\nmode = \"inspect\"\nauth = \"required\"");
    let d = inspect.decide_connect(&connect("outlook.office365.com", 443));
    assert_eq!(
        (d.action, d.auth),
        (Action::Inspect, AuthRequirement::Required)
    );
    let off = policy("[outlook]\nmode = \"off\"");
    let d = off.decide_connect(&connect("outlook.office365.com", 443));
    assert_eq!(d.rule.source, RuleSource::Default);
    // Config rules come first: an admin can still deny a Microsoft host.
    let deny = policy(
        "[[rules]]\nhost = \"outlook.office365.com\"\nclient = \"10.99.0.0/16\"\naction = \"deny\"\nreason = \"r\"",
    );
    let d = deny.decide_connect(&ConnectFacts::new(
        "outlook.office365.com",
        443,
        "10.99.0.1".parse().unwrap(),
    ));
    assert_eq!(d.rule.name.as_ref(), "rules[0]");
}

#[test]
fn on_prem_exchange() {
    let p = policy(
        r#"
        [outlook]
        exchange_hosts = ["mail.corp.example", "~cas[0-9]+\\.corp\\.example"]
        accepted_domains = ["corp.example", "Subsidiary.Example"]
        "#,
    );
    for host in [
        "mail.corp.example",
        "cas2.corp.example",
        "autodiscover.subsidiary.example",
    ] {
        let d = p.decide_connect(&connect(host, 443));
        assert_eq!(d.rule.name.as_ref(), "outlook:exchange", "{host}");
        assert_eq!(d.rule.source, RuleSource::Exchange);
        assert_eq!(
            (d.action.clone(), d.timeouts),
            (Action::Tunnel, TimeoutProfile::LongPoll)
        );
    }
    // Classification applies to plain HTTP and inspected requests, giving long_poll.
    let cases = [
        (
            "POST",
            "/mapi/emsmdb/?MailboxId=x",
            Some(ExchangeClass::Mapi),
        ),
        (
            "RPC_IN_DATA",
            "/rpc/rpcproxy.dll?mail:6001",
            Some(ExchangeClass::RpcHttp),
        ),
        ("POST", "/EWS/Exchange.asmx", Some(ExchangeClass::Ews)),
        ("GET", "/owa/", None),
    ];
    for (method, path, class) in cases {
        let d = p.decide_request(&RequestFacts::new(
            method,
            "www.other.example",
            80,
            path,
            CLIENT,
        ));
        assert_eq!(d.class, class, "{path}");
        let want = if class.is_some() {
            TimeoutProfile::LongPoll
        } else {
            TimeoutProfile::Default
        };
        assert_eq!(d.timeouts, want, "{path}");
    }
}

#[test]
fn explicit_timeouts_beat_exchange_class() {
    let p = policy("[[rules]]\nhost = \"mail.test\"\naction = \"inspect\"\ntimeouts = \"default\"");
    let d = p.decide_request(&RequestFacts::new(
        "POST",
        "mail.test",
        443,
        "/mapi/emsmdb/",
        CLIENT,
    ));
    assert_eq!(
        (d.class, d.timeouts),
        (Some(ExchangeClass::Mapi), TimeoutProfile::Default)
    );
}

#[test]
fn outlook_user_agent_on_unknown_host_is_inspected_by_default() {
    let p = policy("");
    for ua in [OUTLOOK_UA, "MSRPC", "Outlook-iOS/2.0"] {
        let d = p.decide_connect(&connect("mail.unknown.example", 443).with_user_agent(Some(ua)));
        assert_eq!(d.rule.name.as_ref(), "outlook:unknown-host-ua", "{ua}");
        assert_eq!(d.action, Action::Inspect, "{ua}");
        assert_eq!(d.auth, AuthRequirement::Required, "{ua}");
    }
}

#[test]
fn outlook_user_agent_on_unknown_host() {
    let p = policy("[outlook]\nunknown_host_from_outlook_ua = \"tunnel\"");
    let d =
        p.decide_connect(&connect("mail.unknown.example", 443).with_user_agent(Some(OUTLOOK_UA)));
    assert_eq!(d.rule.source, RuleSource::OutlookUserAgent);
    assert_eq!(d.action, Action::Tunnel);
    // The User-Agent never exempts from authentication on its own.
    assert_eq!(d.auth, AuthRequirement::Required);
    assert_eq!(d.timeouts, TimeoutProfile::LongPoll);

    let d =
        p.decide_connect(&connect("mail.unknown.example", 443).with_user_agent(Some(BROWSER_UA)));
    assert_eq!(d.rule.source, RuleSource::Default);
    // CONNECT only: a request inside an inspected tunnel falls to the default.
    let r = RequestFacts::new("GET", "mail.unknown.example", 443, "/", CLIENT)
        .with_user_agent(Some(OUTLOOK_UA));
    assert_eq!(p.decide_request(&r).rule.source, RuleSource::Default);

    let p = policy("[outlook]\nunknown_host_from_outlook_ua = \"inspect\"");
    let d = p.decide_connect(&connect("mail.unknown.example", 443).with_user_agent(Some("MSRPC")));
    assert_eq!(d.action, Action::Inspect);
    // A known host keeps its own rule whatever the User-Agent.
    let d =
        p.decide_connect(&connect("outlook.office365.com", 443).with_user_agent(Some(OUTLOOK_UA)));
    assert_eq!(d.rule.name.as_ref(), "outlook:m365-hosts");
}

#[test]
fn direct_hosts() {
    let p = policy(
        "direct = [\"*.corp.example\"]\n[[rules]]\nhost = \"wiki.test\"\naction = \"direct\"",
    );
    let d = p.decide_connect(&connect("intranet.corp.example", 443));
    assert_eq!(
        (d.rule.source, d.action.clone(), d.pac_direct),
        (RuleSource::Direct, Action::Tunnel, true)
    );
    let d = p.decide_connect(&connect("wiki.test", 443));
    assert_eq!((d.rule.source, d.pac_direct), (RuleSource::Config, true));
}

#[test]
fn compile_errors_name_the_key() {
    let cases = [
        ("[[rules]]\nhost = \"a.*.com\"\naction = \"tunnel\"", "policy.rules[0].host: invalid pattern \"a.*.com\""),
        ("[[rules]]\nhost = \"~(\"\naction = \"tunnel\"", "policy.rules[0].host: invalid pattern \"~(\""),
        ("[[rules]]\nsni = \"\"\naction = \"tunnel\"", "policy.rules[0].sni: invalid pattern"),
        ("[[rules]]\ndest_ip = \"10.0.0.0/33\"\naction = \"tunnel\"", "policy.rules[0].dest_ip: invalid value \"10.0.0.0/33\""),
        ("[[rules]]\nclient = \"nope\"\naction = \"tunnel\"", "policy.rules[0].client: invalid value"),
        ("[[rules]]\nport = 0\naction = \"tunnel\"", "policy.rules[0].port: invalid value \"0\""),
        ("[[rules]]\nport = \"90-80\"\naction = \"tunnel\"", "policy.rules[0].port: invalid value \"90-80\""),
        ("[[rules]]\nmethod = \"GE T\"\naction = \"tunnel\"", "policy.rules[0].method: invalid value"),
        ("[[rules]]\npath = \"mapi\"\naction = \"tunnel\"", "policy.rules[0].path: invalid value \"mapi\""),
        ("[[rules]]\nuser_agent = \"~[\"\naction = \"tunnel\"", "policy.rules[0].user_agent: invalid pattern"),
        ("[[rules]]\nhost = \"a.test\"\naction = \"deny\"", "policy.rules[0].reason: required when action = \"deny\""),
        ("[[rules]]\nhost = \"a.test\"\naction = \"tunnel\"\nreason = \"x\"", "policy.rules[0].reason: only used"),
        ("[[rules]]\nuser_agent = \"Outlook\"\naction = \"tunnel\"\nauth = \"exempt\"", "policy.rules[0].auth: \"exempt\" needs a destination"),
        // The SNI is the client's say-so too.
        ("[[rules]]\nsni = \"a.test\"\naction = \"tunnel\"\nauth = \"exempt\"", "policy.rules[0].auth: \"exempt\" needs a destination"),
        ("[[rules]]\nhost = \"a.test\"\ngroup = \"g\"\naction = \"tunnel\"\nauth = \"exempt\"", "policy.rules[0].auth: \"exempt\" cannot be combined"),
        ("[[rules]]\nhost = \"a.test\"\nport = 443\naction = \"direct\"", "policy.rules[0].action: \"direct\" rules take only a host"),
        ("[[rules]]\nhost = \"~a\"\naction = \"direct\"", "policy.rules[0].host: \"direct\" rules cannot use regexes"),
        ("[[rules]]\nhost = \"a.test\"\naction = \"tunnel\"\nlog_tag = \"a b\"", "policy.rules[0].log_tag: invalid value"),
        ("[[rules]]\nname = \"x\"\nhost = \"a\"\naction = \"tunnel\"\n[[rules]]\nname = \"x\"\nhost = \"b\"\naction = \"tunnel\"", "policy.rules[1].name: duplicate rule name"),
        ("direct = [\"~x\"]", "policy.direct: invalid pattern \"~x\": regexes cannot be expressed in a PAC file"),
        ("default = { action = \"deny\" }", "policy.default.reason: required"),
        ("default = { action = \"direct\" }", "policy.default.action"),
        ("[outlook]\nexchange_hosts = [\"a..b\"]", "policy.outlook.exchange_hosts: invalid pattern \"a..b\""),
        ("[outlook]\naccepted_domains = [\"*.corp\"]", "policy.outlook.accepted_domains[0]: invalid value \"*.corp\""),
        ("[outlook]\nm365_service_areas = [\"Teams\"]", "policy.outlook.m365_service_areas[0]: invalid value \"Teams\""),
        ("[[rules]]\nhost = \"a.test\"\naction = \"inspect\"\nicap = [\"av\", \"av\"]", "policy.rules[0].icap: invalid value \"av\": listed twice"),
        ("default = { icap = [\"\"] }", "policy.default.icap: invalid value \"\": empty"),
    ];
    for (text, want) in cases {
        let got = compile_err(text);
        assert!(got.starts_with(want), "{text}\n got: {got}\nwant: {want}…");
    }
}

#[test]
fn unknown_keys_are_rejected() {
    for text in [
        "rulez = []",
        "[[rules]]\nhots = \"a\"\naction = \"tunnel\"",
        "[outlook]\nmod = \"off\"",
        "[pac]\nproxi = \"a:1\"",
        "default = { acton = \"deny\" }",
    ] {
        assert!(toml::from_str::<RawPolicy>(text).is_err(), "{text}");
    }
    // A rule without an action is an error too.
    assert!(toml::from_str::<RawPolicy>("[[rules]]\nhost = \"a\"").is_err());
}

#[test]
fn raw_policy_serializes_back() {
    // The proxy's /config endpoint shows the configuration as TOML.
    let r = raw(RULES);
    let text = toml::to_string(&r).unwrap();
    assert_eq!(raw(&text), r, "{text}");
    assert_eq!(
        raw(&toml::to_string(&RawPolicy::default()).unwrap()),
        RawPolicy::default()
    );
}

#[test]
fn values_accept_one_or_many() {
    let one = raw("[[rules]]\nhost = \"a.test\"\nport = 443\naction = \"tunnel\"");
    let many = raw("[[rules]]\nhost = [\"a.test\"]\nport = [443]\naction = \"tunnel\"");
    assert_eq!(one, many);
    assert_eq!(raw(""), RawPolicy::default());
}

#[test]
fn explain_lists_each_matched_condition() {
    let p = policy(RULES);
    let e = p.explain_connect(&connect("a.example", 9001));
    assert_eq!(e.decision.rule.name.as_ref(), "alt-ports");
    let got: Vec<(&str, &str, &str)> = e
        .conditions
        .iter()
        .map(|c| (c.key, c.matched.as_str(), c.fact.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            ("port", "9000-9010", "9001"),
            ("host", "*.example", "a.example")
        ]
    );
    let text = e.to_string();
    assert!(
        text.contains("decision: deny") && text.contains("matched:  port 9000-9010 ~ 9001"),
        "{text}"
    );

    let e = p.explain_request(&RequestFacts::new(
        "POST",
        "nothing.test",
        80,
        "/EWS/Exchange.asmx",
        CLIENT,
    ));
    assert!(e.conditions.is_empty());
    assert_eq!(e.exchange.map(|p| p.class), Some(ExchangeClass::Ews));
    assert!(e.to_string().contains("the default applies"));

    let p = policy("");
    let e = p.explain_connect(&connect("x.test", 443).with_user_agent(Some(OUTLOOK_UA)));
    assert_eq!(e.conditions[0].key, "outlook_user_agent");
}

#[test]
fn explain_shows_authentication_settled_elsewhere() {
    let p = policy(
        "[[rules]]\nname = \"lab\"\nhost = \"*.exempt.test\"\naction = \"inspect\"\nauth = \"exempt\"",
    );
    // A bare-IP CONNECT is decided Required; the SNI then finds the exempt rule, whose own
    // `auth` the proxy never applies.
    let first = p.decide_connect(&connect("192.0.2.9", 443));
    assert_eq!(first.auth, AuthRequirement::Required);
    let e = p.explain_connect(&connect("www.exempt.test", 443).with_sni(Some("www.exempt.test")));
    assert_eq!(e.decision.auth, AuthRequirement::Exempt);
    let e = e.with_settled_auth(first.auth, "decided at the CONNECT");
    assert_eq!(e.decision.auth, AuthRequirement::Required);
    assert_eq!(e.decision.rule.name.as_ref(), "lab");
    let text = e.to_string();
    assert!(
        text.contains("auth:     Required (decided at the CONNECT)\n"),
        "{text}"
    );
    assert!(!text.contains("Exempt"), "{text}");
}

#[test]
fn index_agrees_with_linear_scan() {
    // Many overlapping patterns, checked against the unindexed scan for a set of names.
    let mut text = String::from("[outlook]\nmode = \"off\"\n");
    for i in 0..50 {
        text.push_str(&format!(
            "[[rules]]\nhost = [\"h{i}.a.test\", \"*.s{}.test\"]\naction = \"tunnel\"\n",
            i % 7
        ));
        if i % 5 == 0 {
            text.push_str(&format!(
                "[[rules]]\nhost = \"p{}.*\"\naction = \"inspect\"\n",
                i % 3
            ));
            text.push_str(&format!(
                "[[rules]]\nhost = \"~h{i}\\\\..*\"\nport = {}\naction = \"tunnel\"\n",
                400 + i
            ));
        }
    }
    let p = policy(&text);
    for host in [
        "h3.a.test",
        "x.s3.test",
        "p1.q.s2.test",
        "h10.x.y",
        "p2.zzz",
        "nothing",
        "a.b.c.d.e.s6.test",
        "H0.A.TEST.",
    ] {
        for port in [443, 400, 410] {
            let f = connect(host, port);
            let facts = crate::decision::Facts::from(&f);
            let linear = p
                .rules
                .iter()
                .position(|r| r.cond.matches(&facts))
                .unwrap_or(p.rules.len());
            assert_eq!(p.find(&facts), linear, "{host}:{port}");
        }
    }
}

#[test]
fn hints_for_second_decisions() {
    assert!(!policy("").uses_sni());
    assert!(!policy("").uses_identity());
    let p = policy(RULES);
    assert!(p.uses_sni() && p.uses_identity());
}

/// `icap`: a rule's own list replaces the default's, `[]` turns it off, a rule without one
/// inherits `policy.default.icap`, and the built-in Outlook rules never adapt.
#[test]
fn icap_services_per_rule_default_and_never_outlook() {
    let p = policy(
        r#"
default = { icap = ["av"] }
[outlook]
mode = "inspect"
[[rules]]
name = "dlp"
host = "upload.example"
action = "inspect"
icap = ["dlp", "av"]
[[rules]]
name = "off"
host = "trusted.example"
action = "inspect"
icap = []
[[rules]]
name = "inherit"
host = "other.example"
action = "inspect"
"#,
    );
    let names = |host: &str| -> Vec<String> {
        let facts = RequestFacts::new("GET", host, 80, "/", CLIENT);
        p.decide_request(&facts)
            .icap
            .iter()
            .map(|n| n.to_string())
            .collect()
    };
    assert_eq!(names("upload.example"), ["dlp", "av"]);
    assert!(names("trusted.example").is_empty());
    assert_eq!(names("other.example"), ["av"]);
    assert_eq!(names("unknown.example"), ["av"]);
    // The Outlook profile inspects here, yet never adapts.
    let outlook = p.decide_connect(&connect("outlook.office365.com", 443));
    assert_eq!(outlook.rule.source, RuleSource::Outlook);
    assert!(outlook.icap.is_empty());
}
