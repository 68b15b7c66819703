//! Policy: for the canonical Outlook endpoints the CONNECT decision is tunnel, exempt from
//! authentication, long-poll timeouts — or the finding names the rule that overrides it. The
//! decision is made as `policy explain` and the proxy make it: the same compiled policy (with
//! the cached Microsoft 365 list) and, for names whose decision depends on their addresses,
//! resolved by the proxy's resolver and decided again.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use portcullis_policy::{
    Action, AuthRequirement, ConnectFacts, Decision, Policy, RuleSource, TimeoutProfile,
};

use super::outlook::{self, Endpoint};
use super::Check;
use crate::config::Config;
use crate::upstream::Resolver;

const FAMILY: &str = "policy";
/// The client the decisions are made for: a rule about particular clients is not Outlook's
/// general case, so a loopback client matches none in a usual config.
const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// The policy the proxy runs with, as `policy explain` compiles it.
pub(super) fn compiled(config: &Config) -> Option<Arc<Policy>> {
    let m365 = crate::m365_cache::load_cached(config);
    config.compiled_policy(&m365.sets).ok()
}

/// The CONNECT decision for `host:443` before the user is known — the one that exempts or
/// challenges.
pub(super) async fn decide(policy: &Policy, resolver: Option<&Resolver>, host: &str) -> Decision {
    let facts = ConnectFacts::new(host, 443, CLIENT);
    let first = policy.explain_connect(&facts).decision;
    if !first.needs_resolution {
        return first;
    }
    let Some(resolver) = resolver else {
        return first;
    };
    match resolver
        .resolve(&portcullis_policy::Host::new(host), 443)
        .await
    {
        Ok(addrs) => {
            let ips: Vec<IpAddr> = addrs.iter().map(|a| a.ip()).collect();
            policy
                .explain_connect(&facts.with_resolved(Some(&ips)))
                .decision
        }
        Err(_) => first,
    }
}

/// What Outlook needs: relayed untouched, no 407, long-poll timeouts.
pub(super) fn is_outlook_ready(d: &Decision) -> bool {
    d.pac_direct
        || (d.action == Action::Tunnel
            && d.auth == AuthRequirement::Exempt
            && d.timeouts == TimeoutProfile::LongPoll)
}

pub(super) async fn run(
    config: &Config,
    policy: Option<&Policy>,
    resolver: Option<&Resolver>,
) -> Vec<Check> {
    let Some(policy) = policy else {
        return vec![Check::fail(
            FAMILY,
            "Outlook endpoints",
            "the policy does not compile",
            "see the config check above",
        )];
    };
    let endpoints = outlook::endpoints(config);
    let mut out = Vec::new();
    for host in outlook::hosts(config) {
        let roles: Vec<&str> = endpoints
            .iter()
            .filter(|e| e.host == host)
            .map(|e: &Endpoint| e.role)
            .collect();
        let name = format!("{host} ({})", roles.join(", "));
        let d = decide(policy, resolver, &host).await;
        out.push(if is_outlook_ready(&d) {
            Check::pass(FAMILY, name, short(&d))
        } else {
            Check::fail(FAMILY, name, format!("{d}"), fix(config, &d))
        });
    }
    out
}

/// The decision without the rule's conditions: enough when it is the expected one.
fn short(d: &Decision) -> String {
    let full = d.to_string();
    let head = full.split("; rule ").next().unwrap_or(&full);
    format!("{head}; rule {} [{}]", d.rule.name, d.rule.source.as_str())
}

/// What to change, by where the deciding rule came from.
fn fix(config: &Config, d: &Decision) -> String {
    let outlook = &config.policy.outlook;
    match d.rule.source {
        RuleSource::Config => format!(
            "rule {:?} (policy.rules[{}]) overrides the Outlook profile: narrow its host, or put a rule with \
             action = \"tunnel\", auth = \"exempt\", timeouts = \"long_poll\" for the Outlook hosts before it",
            &*d.rule.name, d.rule.index
        ),
        RuleSource::Outlook | RuleSource::Exchange | RuleSource::M365 if d.action != Action::Tunnel => {
            format!("policy.outlook.mode is {:?}: Microsoft says these endpoints must not be inspected; set it to \"tunnel\"", outlook.mode)
        }
        RuleSource::Outlook | RuleSource::Exchange | RuleSource::M365 if d.auth != AuthRequirement::Exempt => {
            "Outlook's background connections cannot answer a 407: set policy.outlook.auth = \"exempt\"".to_owned()
        }
        _ => "the Outlook profile does not cover it: set policy.outlook.mode = \"tunnel\" (and list on-premises names in \
              policy.outlook.exchange_hosts or accepted_domains)"
            .to_owned(),
    }
}
