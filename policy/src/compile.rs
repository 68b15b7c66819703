//! `RawPolicy` → [`Policy`]: every check a config can fail, each naming its key.

mod fields;

use std::collections::HashSet;
use std::sync::Arc;

use ipnet::IpNet;

use crate::config::{OutlookMode, RawPolicy, UnknownUaAction};
use crate::decision::{Action, AuthRequirement, MatchedRule, RuleSource, TimeoutProfile};
use crate::engine::{Index, Policy};
use crate::error::CompileError;
use crate::exchange::{AUTODISCOVER_ANY, M365_HOSTS, M365_NETWORKS};
use crate::host::HostPattern;
use crate::m365::{self, EndpointSet};
use crate::pac::PacSettings;
use crate::route::Route;
use crate::rule::{Conditions, Rule};

use fields::{default_rule, hosts, user_rule, value};

impl Policy {
    /// Validates `raw` and builds the runtime policy, with the built-in Outlook profile.
    pub fn compile(raw: &RawPolicy) -> Result<Policy, CompileError> {
        Policy::compile_with_m365(raw, &[])
    }

    /// As [`Policy::compile`], adding tunnel/auth-exempt rules for the Microsoft 365 endpoint
    /// sets selected by `policy.outlook.m365_service_areas` / `m365_categories` (see
    /// [`crate::m365`]). Feed entries that cannot be used are listed in
    /// [`Policy::m365_skipped`] rather than failing the load: the feed is not the admin's text.
    pub fn compile_with_m365(
        raw: &RawPolicy,
        endpoints: &[EndpointSet],
    ) -> Result<Policy, CompileError> {
        let default_auth = raw.default.auth;
        let default_icap = fields::icap("policy.default.icap".to_owned(), &raw.default.icap)?;
        let mut rules = Vec::new();
        let mut names = HashSet::new();
        for (i, r) in raw.rules.iter().enumerate() {
            let rule = user_rule(i, r, default_auth, &default_icap)?;
            if !names.insert(rule.meta.name.clone()) {
                return Err(CompileError::Conflict {
                    key: format!("policy.rules[{i}].name"),
                    reason: format!("duplicate rule name {:?}", rule.meta.name),
                });
            }
            rules.push(rule);
        }

        if !raw.direct.is_empty() {
            let cond = Conditions {
                host: hosts("policy.direct", &raw.direct, false)?,
                ..Conditions::default()
            };
            rules.push(builtin(
                RuleSource::Direct,
                0,
                "direct",
                cond,
                Action::Tunnel,
                default_auth,
                None,
                true,
            ));
        }

        let outlook = &raw.outlook;
        let mut skipped = Vec::new();
        let profile_action = match outlook.mode {
            OutlookMode::Tunnel => Some(Action::Tunnel),
            OutlookMode::Inspect => Some(Action::Inspect),
            OutlookMode::Off => None,
        };
        // The on-prem lists are validated even when the profile is off, so that switching it on
        // later cannot reveal an old typo.
        let mut exchange = hosts(
            "policy.outlook.exchange_hosts",
            &outlook.exchange_hosts,
            true,
        )?;
        for (i, domain) in outlook.accepted_domains.iter().enumerate() {
            let key = format!("policy.outlook.accepted_domains[{i}]");
            match HostPattern::parse(&format!("autodiscover.{domain}")) {
                Ok(p @ HostPattern::Exact(_)) => exchange.push(p),
                Ok(_) => {
                    return Err(value(
                        &key,
                        domain,
                        "a plain domain name, without '*' or '~'",
                    ))
                }
                Err(e) => return Err(value(&key, domain, &e.reason)),
            }
        }
        let areas = &outlook.m365_service_areas;
        for (i, area) in areas.iter().enumerate() {
            if !m365::SERVICE_AREAS.contains(&area.as_str()) {
                let reason = format!("one of {}", m365::SERVICE_AREAS.join(", "));
                return Err(value(
                    &format!("policy.outlook.m365_service_areas[{i}]"),
                    area,
                    &reason,
                ));
            }
        }

        // The profile's own route, direct unless `policy.outlook.route` says otherwise.
        let outlook_route =
            Route::compile("policy.outlook.route", &outlook.route)?.unwrap_or(Route::Direct);
        let first_builtin = rules.len();
        if let Some(action) = profile_action {
            let long = Some(TimeoutProfile::LongPoll);
            let auth = outlook.auth;
            if !exchange.is_empty() {
                let cond = Conditions {
                    host: exchange,
                    ..Conditions::default()
                };
                rules.push(builtin(
                    RuleSource::Exchange,
                    0,
                    "outlook:exchange",
                    cond,
                    action.clone(),
                    auth,
                    long,
                    false,
                ));
            }
            let cond = Conditions {
                host: M365_HOSTS
                    .iter()
                    .filter_map(|h| HostPattern::parse(h).ok())
                    .collect(),
                ..Conditions::default()
            };
            rules.push(builtin(
                RuleSource::Outlook,
                0,
                "outlook:m365-hosts",
                cond,
                action.clone(),
                auth,
                long,
                false,
            ));
            let m365_networks: Vec<IpNet> = M365_NETWORKS
                .iter()
                .filter_map(|n| n.parse().ok())
                .collect();
            let cond = Conditions {
                dest_ip: m365_networks.clone(),
                ..Conditions::default()
            };
            rules.push(builtin(
                RuleSource::Outlook,
                1,
                "outlook:m365-networks",
                cond,
                action.clone(),
                auth,
                long,
                false,
            ));

            let feed = m365::select(endpoints, areas, &outlook.m365_categories);
            skipped = feed.skipped;
            // Every Microsoft 365 address the profile knows, for `outlook:autodiscover`.
            let mut microsoft = m365_networks;
            for set in &feed.sets {
                for net in &set.networks {
                    if !microsoft.contains(net) {
                        microsoft.push(*net);
                    }
                }
            }
            for (i, set) in feed.sets.into_iter().enumerate() {
                for (part, hosts, nets) in [
                    ("hosts", set.hosts, Vec::new()),
                    ("ips", Vec::new(), set.networks),
                ] {
                    if hosts.is_empty() && nets.is_empty() {
                        continue;
                    }
                    let cond = Conditions {
                        host: hosts,
                        dest_ip: nets,
                        port: set.tcp_ports.clone(),
                        ..Conditions::default()
                    };
                    let name = format!("m365:{}:{part}", set.id);
                    rules.push(builtin(
                        RuleSource::M365,
                        i,
                        &name,
                        cond,
                        action.clone(),
                        auth,
                        long,
                        false,
                    ));
                }
            }

            // Any other `autodiscover.*` name, only if it resolves into Microsoft 365 alone
            // (exchange::AUTODISCOVER_ANY). After the lists that need no resolution, so that
            // their hosts never wait for DNS before authentication.
            let cond = Conditions {
                host: HostPattern::parse(AUTODISCOVER_ANY).into_iter().collect(),
                resolved_in: microsoft,
                ..Conditions::default()
            };
            rules.push(builtin(
                RuleSource::Outlook,
                2,
                "outlook:autodiscover",
                cond,
                action.clone(),
                auth,
                long,
                false,
            ));

            let ua_action = match outlook.unknown_host_from_outlook_ua {
                UnknownUaAction::Tunnel => Action::Tunnel,
                UnknownUaAction::Inspect => Action::Inspect,
            };
            let cond = Conditions {
                outlook_user_agent: true,
                ..Conditions::default()
            };
            // Auth follows the default: a User-Agent is the client's say-so, never an exemption.
            let mut rule = builtin(
                RuleSource::OutlookUserAgent,
                0,
                "outlook:unknown-host-ua",
                cond,
                ua_action,
                default_auth,
                long,
                false,
            );
            rule.connect_only = true;
            rules.push(rule);
        }
        for rule in &mut rules[first_builtin..] {
            if rule.meta.source != RuleSource::Direct {
                rule.route = Some(outlook_route.clone());
            }
        }

        let default = default_rule(&raw.default)?;
        let default_route =
            Route::compile("policy.default_route", &raw.default_route)?.unwrap_or(Route::Direct);
        let pac = PacSettings::compile(&raw.pac)?;
        Ok(Policy {
            index: Index::build(&rules),
            uses_sni: rules.iter().any(|r| !r.cond.sni.is_empty()),
            uses_identity: rules
                .iter()
                .any(|r| !r.cond.user.is_empty() || !r.cond.group.is_empty()),
            resolving: (0..rules.len() as u32)
                .filter(|&i| !rules[i as usize].cond.resolved_in.is_empty())
                .collect(),
            rules,
            default,
            default_timeouts: raw.default.timeouts,
            default_route,
            pac,
            m365_skipped: skipped,
        })
    }
}

#[expect(
    clippy::too_many_arguments,
    reason = "private constructor, each argument named at its call"
)]
fn builtin(
    source: RuleSource,
    index: usize,
    name: &str,
    cond: Conditions,
    action: Action,
    auth: AuthRequirement,
    timeouts: Option<TimeoutProfile>,
    pac_direct: bool,
) -> Rule {
    Rule {
        meta: MatchedRule {
            name: name.into(),
            source,
            index,
            summary: cond.summary().into(),
        },
        cond,
        action,
        auth,
        timeouts,
        tag: Some(source.as_str().into()),
        icap: Arc::from([]),
        pac_direct,
        connect_only: false,
        route: None,
    }
}
