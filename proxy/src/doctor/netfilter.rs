//! Netfilter (when `[netfilter]` is used and we are root): the live ruleset holds Portcullis'
//! table with every rule `portcullis netfilter render` produces for this config — the direct
//! passes for mail, LDAP, DNS and Kerberos among them. Rules are matched by their comments,
//! which the renderer writes on every rule and nft keeps as they are.

use std::collections::{BTreeMap, BTreeSet};

use super::Check;
use crate::config::Config;
use crate::netfilter_cmd;

const FAMILY: &str = "netfilter";
const APPLY: &str = "apply the rules: `portcullis netfilter apply --config FILE`";

pub(super) async fn run(config: &Config) -> Vec<Check> {
    let name = "ruleset applied";
    // Rules applied from a config that keeps every default are "used" too: they show as a
    // loaded table.
    let configured = config.netfilter != portcullis_policy::netfilter::NetfilterConfig::default();
    if !is_root() {
        return vec![Check::skip(FAMILY, name, "reading the ruleset needs root")];
    }
    let live = tokio::task::spawn_blocking(|| {
        netfilter_cmd::tool("nft", &["list", "table", "inet", "portcullis"], None)
    })
    .await
    .map_err(|e| anyhow::anyhow!(e))
    .and_then(|r| r);
    let live = match live {
        Ok(text) => text,
        Err(_) if !configured => {
            return vec![Check::skip(
                FAMILY,
                name,
                "no [netfilter] section and no Portcullis table loaded",
            )]
        }
        Err(e) => {
            let why = format!("{e:#}");
            let why = why.lines().next().unwrap_or_default();
            return vec![Check::fail(
                FAMILY,
                name,
                format!("table inet portcullis is not loaded ({why})"),
                APPLY,
            )];
        }
    };
    let spec = match netfilter_cmd::compile(config, None) {
        Ok(spec) => spec,
        Err(e) => {
            return vec![Check::fail(
                FAMILY,
                name,
                e.to_string(),
                "correct [netfilter]; `portcullis netfilter render` shows the same error",
            )]
        }
    };
    let rendered = portcullis_policy::netfilter::nft::render(&spec);
    let have = comments(&live);
    let mut missing: Vec<String> = comments(&rendered)
        .into_iter()
        .filter(|c| !have.contains(c))
        .collect();
    // Set contents (LAN networks, ports) carry no comment of their own: compare them by set.
    let live_sets = sets(&live);
    for (set, elements) in sets(&rendered) {
        if live_sets.get(&set) != Some(&elements) {
            missing.push(format!("set {set}"));
        }
    }
    vec![if missing.is_empty() {
        Check::pass(
            FAMILY,
            name,
            format!(
                "table inet portcullis holds all {} rules the config renders",
                have.len()
            ),
        )
    } else {
        Check::fail(
            FAMILY,
            name,
            format!(
                "{} rules the config renders are not loaded, e.g. {:?}",
                missing.len(),
                missing[0]
            ),
            format!("the config changed since the rules were applied: {APPLY}"),
        )
    }]
}

/// The effective user id is 0 (from /proc: no libc call needed for one number).
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1))
            == Some("0")
    })
}

/// The elements of each named set, without their comments (nft wraps long lists).
fn sets(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out = BTreeMap::new();
    let mut current: Option<String> = None;
    let mut collecting: Option<String> = None;
    for line in text.lines().map(str::trim) {
        if let Some(acc) = collecting.as_mut() {
            acc.push(' ');
            acc.push_str(line);
        } else if let Some(name) = line.strip_prefix("set ").and_then(|l| l.strip_suffix(" {")) {
            current = Some(name.to_owned());
        } else if let Some(rest) = line.strip_prefix("elements = {") {
            collecting = Some(rest.to_owned());
        }
        let done = collecting
            .as_deref()
            .and_then(|acc| acc.split_once('}'))
            .map(|(items, _)| items.to_owned());
        if let (Some(items), Some(set)) = (done, current.as_ref()) {
            let elements = items
                .split(',')
                .filter_map(|e| e.split_whitespace().next())
                .map(str::to_owned)
                .collect();
            out.insert(set.clone(), elements);
            collecting = None;
        }
    }
    out
}

/// Every `comment "…"` in an nft script or listing, except script comment lines.
fn comments(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim_start().starts_with('#')) {
        let mut rest = line;
        while let Some(at) = rest.find("comment \"") {
            rest = &rest[at + 9..];
            let Some(end) = rest.find('"') else { break };
            out.push(rest[..end].to_owned());
            rest = &rest[end + 1..];
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_elements_are_compared_without_comments_or_wrapping() {
        let rendered = "set lan_v4 {\n\telements = { 10.0.0.0/8, 192.168.0.0/16 }\n}\n\
                        set ports {\n\telements = { 25 comment \"smtp\", 88 comment \"kerberos\" }\n}\n";
        let live = "set lan_v4 {\n\t\telements = { 10.0.0.0/8,\n\t\t\t     192.168.0.0/16 }\n}\n\
                    set ports {\n\t\telements = { 25 comment \"smtp\", 88 comment \"kerberos\" }\n}\n";
        assert_eq!(sets(rendered), sets(live));
        assert_eq!(sets(live)["ports"].len(), 2);
        assert_ne!(
            sets(&rendered.replace("10.0.0.0/8", "10.1.0.0/16")),
            sets(live)
        );
    }

    #[test]
    fn comments_are_collected_from_rules_and_elements() {
        let text = "# comment \"not this\"\n\t\ttcp dport 25 accept comment \"smtp direct\"\n\
                    elements = { 88 comment \"kerberos\", 389 comment \"ldap\" }\n";
        assert_eq!(comments(text), ["smtp direct", "kerberos", "ldap"]);
    }
}
