//! Netfilter (when `[netfilter]` is used and we are root): the live ruleset holds Portcullis'
//! table with every rule `portcullis netfilter render` produces for this config — the direct
//! passes for mail, LDAP, DNS and Kerberos among them. Rules are matched by their comments,
//! which the renderer writes on every rule and nft keeps as they are.

use super::Check;
use crate::config::Config;
use crate::netfilter_cmd;

const FAMILY: &str = "netfilter";
const APPLY: &str = "apply the rules: `portcullis netfilter apply --config FILE`";

pub(super) async fn run(config: &Config) -> Vec<Check> {
    let name = "ruleset applied";
    if config.netfilter == portcullis_policy::netfilter::NetfilterConfig::default() {
        return vec![Check::skip(FAMILY, name, "no [netfilter] section")];
    }
    if !is_root() {
        return vec![Check::skip(FAMILY, name, "reading the ruleset needs root")];
    }
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
    let live = tokio::task::spawn_blocking(|| {
        netfilter_cmd::tool("nft", &["list", "table", "inet", "portcullis"], None)
    })
    .await;
    let live = match live {
        Ok(Ok(text)) => text,
        Ok(Err(e)) => {
            return vec![Check::fail(
                FAMILY,
                name,
                format!("no Portcullis table: {e:#}"),
                APPLY,
            )]
        }
        Err(e) => return vec![Check::fail(FAMILY, name, e.to_string(), APPLY)],
    };
    let have = comments(&live);
    let missing: Vec<String> = comments(&rendered)
        .into_iter()
        .filter(|c| !have.contains(c))
        .collect();
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
    fn comments_are_collected_from_rules_and_elements() {
        let text = "# comment \"not this\"\n\t\ttcp dport 25 accept comment \"smtp direct\"\n\
                    elements = { 88 comment \"kerberos\", 389 comment \"ldap\" }\n";
        assert_eq!(comments(text), ["smtp direct", "kerberos", "ldap"]);
    }
}
