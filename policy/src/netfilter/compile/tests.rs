#![expect(clippy::unwrap_used, reason = "tests")]

use super::*;
use crate::netfilter::model::{ChainPolicy, WebAction};

fn parse(text: &str) -> NetfilterConfig {
    toml::from_str(text).unwrap_or_else(|e| panic!("{text}\n{e}"))
}

fn facts() -> NetfilterFacts {
    NetfilterFacts {
        proxy_listen: vec![
            "127.0.0.1:3128".parse().unwrap(),
            "10.0.0.1:3128".parse().unwrap(),
            "[::]:8080".parse().unwrap(),
        ],
        transparent_http: vec![
            "0.0.0.0:3129".parse().unwrap(),
            "[::]:3129".parse().unwrap(),
        ],
        transparent_tls: vec!["0.0.0.0:3130".parse().unwrap()],
    }
}

fn ok(text: &str) -> NetfilterSpec {
    compile(&parse(text), &facts(), None).unwrap_or_else(|e| panic!("{text}\n{e}"))
}

#[test]
fn default_config_compiles_to_outlook_direct() {
    let spec = compile(&NetfilterConfig::default(), &facts(), None).unwrap();
    assert_eq!(spec.mode, Mode::Gateway);
    assert_eq!(spec.default_policy, ChainPolicy::Drop);
    assert_eq!(spec.web.action, WebAction::Reject);
    assert_eq!(
        spec.proxy_ports,
        vec![3128, 8080],
        "loopback listener left out"
    );
    assert_eq!(spec.direct.len(), 1);
    let tcp: Vec<String> = spec.direct[0]
        .ports
        .tcp
        .iter()
        .map(|e| e.port.to_string())
        .collect();
    let udp: Vec<String> = spec.direct[0]
        .ports
        .udp
        .iter()
        .map(|e| e.port.to_string())
        .collect();
    assert_eq!(
        tcp,
        [
            "25", "53", "88", "110", "143", "389", "464", "465", "587", "636", "993", "995",
            "3268", "3269"
        ]
    );
    assert_eq!(udp, ["53", "88", "389", "464"]);
    assert_eq!(spec.direct[0].ports.tcp[0].services, ["smtp"]);
    let ssh: Vec<u16> = spec
        .host_services
        .tcp
        .iter()
        .map(|e| e.port.first)
        .collect();
    assert_eq!(ssh, [22]);
}

#[test]
fn rejections_name_their_key() {
    let cases = [
        ("[[direct]]\nservices = [\"smpt\"]\n", "netfilter.direct[0].services[0]", "unknown service"),
        ("[[direct]]\nservices = []\n", "netfilter.direct[0].services", "no services"),
        ("[services.smtp]\ntcp = [2525]\n", "netfilter.services.smtp", "built-in"),
        ("[services.Bad]\ntcp = [1]\n", "netfilter.services.Bad", "invalid name"),
        ("[services.x]\n", "netfilter.services.x", "no tcp or udp"),
        ("[groups]\na = [\"b\"]\nb = [\"a\"]\n", "netfilter.groups.a[0]", "cycle a -> b -> a"),
        ("[groups]\na = [\"nope\"]\n", "netfilter.groups.a[0]", "unknown"),
        ("[groups]\nx = []\n[services.x]\ntcp = [1]\n", "netfilter.groups.x", "also a service"),
        ("lan_interfaces = [\"eth0; drop\"]\n", "netfilter.lan_interfaces[0]", "interface"),
        ("lan_networks = []\n", "netfilter.lan_networks", "gateway mode needs"),
        ("host_services = [\"nope\"]\n", "netfilter.host_services[0]", "unknown"),
        (
            "[services.web]\ntcp = [\"440-450\"]\n[[direct]]\nservices = [\"web\"]\n",
            "netfilter.direct[0].to",
            "tcp/443",
        ),
        (
            "[services.q]\nudp = [443]\n[[direct]]\nservices = [\"q\"]\n",
            "netfilter.direct[0].to",
            "udp/443",
        ),
        ("mode = \"host\"\n", "netfilter.proxy_user", "host mode needs"),
        ("mode = \"host\"\nproxy_user = \"Bad User\"\n", "netfilter.proxy_user", "not a valid user"),
        (
            "mode = \"host\"\nproxy_user = 1\n[intercept]\nenabled = true\n",
            "netfilter.intercept.enabled",
            "needs gateway mode",
        ),
        ("[intercept]\nenabled = true\nhttps_port = 3129\n", "netfilter.intercept.https_port", "listens on port 3130"),
        ("[intercept]\nenabled = true\nhttp_port = 8080\n", "netfilter.intercept.http_port", "leave it unset"),
        ("[intercept]\nenabled = true\nhttp_port = 0\n", "netfilter.intercept.http_port", "port 0"),
        (
            "[[one_to_one_nat]]\nname = \"x\"\npublic = \"192.0.2.1\"\nprivate = \"fd00::1\"\n",
            "netfilter.one_to_one_nat[0].private",
            "families",
        ),
        (
            "[[one_to_one_nat]]\nname = \"x\"\npublic = \"192.0.2.1\"\nprivate = \"10.0.0.1\"\n\
             [[one_to_one_nat]]\nname = \"x\"\npublic = \"192.0.2.2\"\nprivate = \"10.0.0.2\"\n",
            "netfilter.one_to_one_nat[1].name",
            "used twice",
        ),
        (
            "[[one_to_one_nat]]\nname = \"x\"\npublic = \"192.0.2.1\"\nprivate = \"10.0.0.1\"\n\
             [[one_to_one_nat]]\nname = \"y\"\npublic = \"192.0.2.1\"\nprivate = \"10.0.0.2\"\n",
            "netfilter.one_to_one_nat[1].public",
            "mapped twice",
        ),
        (
            "mode = \"host\"\nproxy_user = 0\n[[one_to_one_nat]]\nname = \"x\"\npublic = \"192.0.2.1\"\nprivate = \"10.0.0.1\"\n",
            "netfilter.one_to_one_nat[0]",
            "needs gateway mode",
        ),
    ];
    for (text, key, reason) in cases {
        let err = compile(&parse(text), &facts(), None).unwrap_err();
        assert_eq!(err.key(), key, "{text}\n{err}");
        let msg = err.to_string();
        assert!(msg.starts_with(key), "{msg}");
        assert!(msg.contains(reason), "want {reason:?}: {msg}");
    }
}

#[test]
fn serde_rejects_unknown_keys_and_bad_ports() {
    for (text, reason) in [
        (
            "lan_interface = [\"eth0\"]\n",
            "unknown field `lan_interface`",
        ),
        ("[services.x]\ntcp = [0]\n", "not a valid port"),
        ("[services.x]\ntcp = [70000]\n", "not a valid port"),
        ("[services.x]\ntcp = [\"9-1\"]\n", "empty"),
        ("[services.x]\ntcp = [\"a-b\"]\n", "not a port"),
        (
            "[[direct]]\nservices = [\"dns\"]\nport = 1\n",
            "unknown field `port`",
        ),
        ("mode = \"router\"\n", "unknown variant"),
        (
            "[[one_to_one_nat]]\nname = \"x\"\n",
            "missing field `public`",
        ),
    ] {
        let err = toml::from_str::<NetfilterConfig>(text)
            .unwrap_err()
            .to_string();
        assert!(err.contains(reason), "{text}: want {reason:?}: {err}");
    }
}

#[test]
fn direct_entries_with_same_destinations_merge_and_ports_dedupe() {
    let spec = ok("
        [services.gc-range]
        tcp = [\"3260-3270\"]
        [[direct]]
        services = [\"dns\", \"directory\"]
        [[direct]]
        services = [\"smtp\"]
        to = [\"192.0.2.7/24\"]
        [[direct]]
        services = [\"gc-range\"]
    ");
    assert_eq!(spec.direct.len(), 2);
    let any = &spec.direct[0];
    assert_eq!(any.label, "direct[0,2]");
    assert_eq!(any.names, ["dns", "directory", "gc-range"]);
    let dns: Vec<_> = any
        .ports
        .tcp
        .iter()
        .filter(|e| e.port.first == 53)
        .collect();
    assert_eq!(dns.len(), 1, "dns listed twice but rendered once");
    let gc = any.ports.tcp.iter().find(|e| e.port.first == 3260).unwrap();
    assert_eq!(
        gc.port.last, 3270,
        "3268/3269 merged into the overlapping range"
    );
    assert_eq!(gc.services, ["gc-range", "global-catalog"]);
    let restricted = &spec.direct[1];
    assert_eq!(
        restricted.to,
        ["192.0.2.0/24".parse::<IpNet>().unwrap()],
        "host bits cleared"
    );
}

#[test]
fn web_ports_to_named_destinations_are_allowed() {
    let spec = ok("
        [services.m365]
        tcp = [443]
        udp = [443]
        [[direct]]
        services = [\"m365\"]
        to = [\"40.96.0.0/13\", \"2603:1006::/40\"]
    ");
    assert_eq!(spec.direct[0].ports.udp[0].port.first, 443);
}

#[test]
fn nested_user_groups_resolve() {
    let spec = ok("
        [services.sap]
        tcp = [3200, \"3300-3399\"]
        [groups]
        apps = [\"sap\", \"office\"]
        office = [\"outlook\"]
        [[direct]]
        services = [\"apps\"]
    ");
    let d = &spec.direct[0];
    assert!(d
        .ports
        .tcp
        .iter()
        .any(|e| e.port.first == 3300 && e.port.last == 3399));
    assert!(d.ports.tcp.iter().any(|e| e.port.first == 993));
}

#[test]
fn mode_override_and_proxy_ports_switch() {
    let spec = compile(
        &parse("proxy_user = \"portcullis\"\naccept_proxy_ports = false\n"),
        &facts(),
        Some(Mode::Host),
    )
    .unwrap();
    assert_eq!(spec.mode, Mode::Host);
    assert!(spec.proxy_ports.is_empty());
    assert_eq!(spec.proxy_user, Some(ProxyUser::Name("portcullis".into())));
}

#[test]
fn config_round_trips_through_toml() {
    let cfg = parse(
        "
        lan_interfaces = [\"eth0\"]
        proxy_user = 998
        [services.sap]
        tcp = [3200, \"3300-3399\"]
        [[direct]]
        services = [\"sap\"]
        to = [\"10.1.0.0/16\"]
        [[one_to_one_nat]]
        name = \"exchange\"
        public = \"192.0.2.25\"
        private = \"10.1.0.25\"
    ",
    );
    let text = toml::to_string(&cfg).unwrap();
    assert_eq!(parse(&text), cfg, "{text}");
}

#[test]
fn intercept_redirects_to_the_transparent_listeners_ports() {
    let spec = ok("[intercept]\nenabled = true\n");
    let ic = spec.intercept.unwrap();
    assert_eq!(
        ic.redirects().collect::<Vec<_>>(),
        [(80, 3129), (443, 3130)]
    );
    assert!(ic.reject_quic, "on by default with interception");
    let nft = crate::netfilter::nft::render(&spec);
    assert!(nft.contains("tcp dport 80 redirect to :3129"), "{nft}");
    assert!(nft.contains("tcp dport 443 redirect to :3130"), "{nft}");
    assert!(nft.contains("udp dport 443 reject"), "{nft}");
    let v4 = crate::netfilter::iptables::render(&spec, Family::V4);
    assert!(v4.contains("-p udp --dport 443"), "{v4}");
    assert!(v4.contains("REDIRECT --to-ports 3130"), "{v4}");
    let off = ok("[intercept]\nenabled = true\nreject_quic = false\n");
    assert!(!crate::netfilter::nft::render(&off).contains("udp dport 443 reject"));
    // Only the HTTP listener: only port 80 is redirected (443 stays under the web rules).
    let mut only_http = facts();
    only_http.transparent_tls.clear();
    let spec = compile(&parse("[intercept]\nenabled = true\n"), &only_http, None).unwrap();
    assert_eq!(
        spec.intercept.unwrap().redirects().collect::<Vec<_>>(),
        [(80, 3129)]
    );
}

#[test]
fn intercept_refuses_to_redirect_where_nothing_listens() {
    let cfg = parse("[intercept]\nenabled = true\n");
    let none = NetfilterFacts {
        transparent_http: Vec::new(),
        transparent_tls: Vec::new(),
        ..facts()
    };
    let err = compile(&cfg, &none, None).unwrap_err();
    assert_eq!(err.key(), "netfilter.intercept.enabled", "{err}");
    assert!(err.to_string().contains("no transparent listener"), "{err}");
    let loopback = NetfilterFacts {
        transparent_http: vec!["127.0.0.1:3129".parse().unwrap()],
        ..none.clone()
    };
    let err = compile(&cfg, &loopback, None).unwrap_err();
    assert_eq!(err.key(), "server.transparent_http_listen", "{err}");
    assert!(err.to_string().contains("loopback"), "{err}");
    let split = NetfilterFacts {
        transparent_tls: vec![
            "0.0.0.0:3130".parse().unwrap(),
            "[::]:3131".parse().unwrap(),
        ],
        ..none
    };
    let err = compile(&cfg, &split, None).unwrap_err();
    assert!(err.to_string().contains("different ports"), "{err}");
    let err = compile(
        &parse("[intercept]\nenabled = true\nhttps_port = 443\n"),
        &NetfilterFacts {
            transparent_tls: Vec::new(),
            ..facts()
        },
        None,
    )
    .unwrap_err();
    assert!(err.to_string().contains("is empty"), "{err}");
}
