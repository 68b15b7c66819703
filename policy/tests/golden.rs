//! Golden-file tests: every `golden/NAME.toml` (a portcullis config) renders to
//! `golden/NAME.nft`, `golden/NAME.v4.rules` and `golden/NAME.v6.rules`.
//!
//! Regenerate after an intended change with `UPDATE_GOLDEN=1 cargo test -p portcullis-policy
//! --test golden`, then review the diff. The e2e crate loads the same golden files into the real
//! `nft -c` and `iptables-restore --test`.
#![expect(clippy::unwrap_used, reason = "tests")]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use portcullis_policy::netfilter::{
    compile, iptables, nft, Family, NetfilterConfig, NetfilterFacts, NetfilterSpec,
};
use serde::Deserialize;

/// The two parts of a portcullis config the netfilter rules depend on.
#[derive(Deserialize, Default)]
#[serde(default)]
struct GoldenInput {
    server: Server,
    netfilter: NetfilterConfig,
}

#[derive(Deserialize)]
#[serde(default)]
struct Server {
    listen: Vec<SocketAddr>,
    transparent_http_listen: Vec<SocketAddr>,
    transparent_tls_listen: Vec<SocketAddr>,
}

impl Default for Server {
    /// Same default as the proxy's `server.listen`.
    fn default() -> Self {
        Server {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 3128))],
            transparent_http_listen: Vec::new(),
            transparent_tls_listen: Vec::new(),
        }
    }
}

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn spec_for(toml_file: &Path) -> NetfilterSpec {
    let text = std::fs::read_to_string(toml_file).unwrap();
    let input: GoldenInput = toml::from_str(&text).unwrap();
    let facts = NetfilterFacts {
        proxy_listen: input.server.listen,
        transparent_http: input.server.transparent_http_listen,
        transparent_tls: input.server.transparent_tls_listen,
    };
    compile(&input.netfilter, &facts, None)
        .unwrap_or_else(|e| panic!("{}: {e}", toml_file.display()))
}

fn check(path: &Path, actual: &str, failures: &mut Vec<String>) {
    if std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1") {
        std::fs::write(path, actual).unwrap();
        return;
    }
    let Ok(expected) = std::fs::read_to_string(path) else {
        failures.push(format!(
            "{} is missing; run with UPDATE_GOLDEN=1 to create it",
            path.display()
        ));
        return;
    };
    if expected != actual {
        let line = expected
            .lines()
            .zip(actual.lines())
            .position(|(e, a)| e != a)
            .unwrap_or_else(|| expected.lines().count().min(actual.lines().count()));
        failures.push(format!(
            "{} differs from the rendering at line {}:\n  golden: {:?}\n  actual: {:?}\n\
             (UPDATE_GOLDEN=1 regenerates it)",
            path.display(),
            line + 1,
            expected.lines().nth(line).unwrap_or("<end>"),
            actual.lines().nth(line).unwrap_or("<end>"),
        ));
    }
}

#[test]
fn rendered_rules_match_golden_files() {
    let mut inputs: Vec<PathBuf> = std::fs::read_dir(golden_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    inputs.sort();
    let names: Vec<String> = inputs
        .iter()
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["default", "gateway", "host"], "golden inputs");

    let mut failures = Vec::new();
    for input in &inputs {
        let spec = spec_for(input);
        check(
            &input.with_extension("nft"),
            &nft::render(&spec),
            &mut failures,
        );
        check(
            &input.with_extension("v4.rules"),
            &iptables::render(&spec, Family::V4),
            &mut failures,
        );
        check(
            &input.with_extension("v6.rules"),
            &iptables::render(&spec, Family::V6),
            &mut failures,
        );
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The golden files must show what the issue asks for, so that regenerating them cannot quietly
/// drop a feature.
#[test]
fn golden_files_show_the_required_shapes() {
    let read = |name: &str| std::fs::read_to_string(golden_dir().join(name)).unwrap();
    let nft = read("gateway.nft");
    for needle in [
        "table inet portcullis\ndelete table inet portcullis\ntable inet portcullis {",
        "set direct0_tcp {",
        "25 comment \"smtp\"",
        "143 comment \"imap\"",
        "3268 comment \"global-catalog\"",
        "ct state established,related accept",
        "iifname @lan_ifaces ip saddr @lan_v4 jump forward_lan",
        "ip6 saddr @lan_v6 jump forward_lan",
        "tcp dport @web_tcp reject with tcp reset",
        "fib daddr type != local tcp dport 80 redirect to :3129",
        "ip daddr 10.77.9.25 dnat ip to 10.77.2.2",
        "ip saddr 10.77.2.2 snat ip to 10.77.9.25",
        "MAPI over HTTP",
        "KB 291615",
    ] {
        assert!(nft.contains(needle), "gateway.nft lacks {needle:?}");
    }
    let v4 = read("gateway.v4.rules");
    for needle in [
        "-I FORWARD 1 -j PORTCULLIS-FORWARD",
        "-A PORTCULLIS-FWD-LAN -p tcp -m multiport --dports 25,53,88,110,143,389,464,465,587,636,993,995,3268,3269 -m comment --comment \"portcullis: direct[0]: smtp, dns, kerberos, pop3, imap, ldap, kpasswd, submissions, submission, ldaps, imaps, pop3s, global-catalog\" -j ACCEPT",
        "-A PORTCULLIS-FORWARD -m comment --comment \"portcullis: default policy\" -j DROP",
        "-j DNAT --to-destination 10.77.2.2",
        "KB 291615",
    ] {
        assert!(v4.contains(needle), "gateway.v4.rules lacks {needle:?}");
    }
    assert!(
        v4.matches("-p tcp -d 10.77.2.0/24 -m multiport").count() == 2,
        "17 ERP slots need two rules"
    );
    let v6 = read("gateway.v6.rules");
    assert!(v6.contains("-p ipv6-icmp"));
    assert!(v6.contains("-d fd77:9::25 -p tcp -m multiport --dports 25,135,443,6001:6004"));
    assert!(!v6.contains("10.77."), "no IPv4 address in the IPv6 file");
    let host = read("host.nft");
    assert!(host.contains("meta skuid \"nobody\" accept"));
    assert!(host.contains("chain output {"));
    assert!(!host.contains("chain forward"));
    assert!(
        host.contains("nd-neighbor-solicit"),
        "ND kept with accept_icmp = false"
    );
}
