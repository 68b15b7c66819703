//! `portcullis policy explain`: the decision for some facts, the rule that made it and each of
//! that rule's conditions with the value that matched.
//!
//! This re-runs the same lookup as the decision functions, so what it prints is what the proxy
//! would do; only here does it allocate, to build the report.

use std::fmt;

use crate::decision::{AuthRequirement, ConnectFacts, Decision, Facts, RequestFacts};
use crate::engine::Policy;
use crate::exchange::{self, Predicate};
use crate::rule::{Rule, KEYS};

/// One condition of the matched rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConditionMatch {
    /// Config key, e.g. `host`, `dest_ip`, `user_agent`.
    pub key: &'static str,
    /// The value of the rule's list that matched, e.g. `*.outlook.com`.
    pub matched: String,
    /// The fact it matched, e.g. `autodiscover-s.outlook.com`.
    pub fact: String,
}

/// Structured explanation of one decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    pub decision: Decision,
    /// Every condition of the matched rule (empty for the default, which has none).
    pub conditions: Vec<ConditionMatch>,
    /// The Exchange predicate that classified the request, if any.
    pub exchange: Option<&'static Predicate>,
    /// Set by [`Explanation::with_settled_auth`]: `decision.auth` was not this decision's to
    /// make, and this says where it was made (e.g. `decided at the CONNECT`).
    pub auth_settled: Option<&'static str>,
    /// How the addresses the host resolves to weighed in (`outlook:autodiscover`): why that
    /// rule applied, did not, or awaits resolution.
    pub resolution: Option<String>,
}

impl Explanation {
    /// This explanation with the authentication the proxy actually applies, settled by an
    /// earlier decision (`where_`, e.g. `decided at the CONNECT`): the CONNECT decides it for
    /// everything after it (the re-decision on the SNI, the requests inside an inspected
    /// tunnel), and a decision made before the user is known decides it for the one made with
    /// the user. Showing the later decision's own `auth` would tell the operator something the
    /// proxy never does.
    pub fn with_settled_auth(mut self, auth: AuthRequirement, where_: &'static str) -> Explanation {
        self.decision.auth = auth;
        self.auth_settled = Some(where_);
        self
    }
}

impl Policy {
    /// Explains [`Policy::decide_connect`] for `facts`.
    pub fn explain_connect(&self, facts: &ConnectFacts<'_>) -> Explanation {
        let f = Facts::from(facts);
        let id = self.find(&f);
        self.explanation(id, &f, self.decision(&f, id, None), None)
    }

    /// Explains [`Policy::decide_request`] for `facts`.
    pub fn explain_request(&self, facts: &RequestFacts<'_>) -> Explanation {
        let f = Facts::from(facts);
        let id = self.find(&f);
        let predicate = exchange::classify(facts.method, facts.path, facts.user_agent);
        let decision = self.decision(&f, id, predicate.map(|p| p.class));
        self.explanation(id, &f, decision, predicate)
    }

    fn explanation(
        &self,
        id: usize,
        f: &Facts<'_>,
        decision: Decision,
        exchange: Option<&'static Predicate>,
    ) -> Explanation {
        let mut e = explanation(self.rule(id), f, decision, exchange);
        e.resolution = self.resolution_note(f, id);
        e
    }

    /// Why a rule that tests the resolved addresses did or did not decide.
    fn resolution_note(&self, f: &Facts<'_>, id: usize) -> Option<String> {
        if let Some(rule) = self.awaiting_resolution(f, id) {
            return Some(format!(
                "{} is not resolved; {} applies only if every address it resolves to is in \
                 Microsoft 365 networks (the proxy resolves it before asking for credentials)",
                f.host, rule.meta.name
            ));
        }
        let ips = f.resolved?;
        let rule = self.rule(id);
        if !rule.cond.resolved_in.is_empty() {
            return Some(format!(
                "{} resolves to {} only, all in Microsoft 365 networks: {} applies",
                f.host,
                join(ips),
                rule.meta.name
            ));
        }
        // A resolving rule before the winner whose other conditions matched: the addresses
        // are why it did not apply.
        self.resolving
            .iter()
            .map(|&r| r as usize)
            .take_while(|&r| r < id)
            .map(|r| self.rule(r))
            .find(|r| {
                let unresolved = Facts {
                    resolved: None,
                    ..*f
                };
                !(r.connect_only && f.path.is_some()) && r.cond.awaits_resolution(&unresolved)
            })
            .map(|r| {
                let outside: Vec<_> = ips
                    .iter()
                    .filter(|ip| !r.cond.in_resolved(ip))
                    .copied()
                    .collect();
                let why = if outside.is_empty() {
                    "no address".to_owned()
                } else {
                    format!("{} outside Microsoft 365 networks", join(&outside))
                };
                format!(
                    "{} resolves to {}: {why}, so {} does not apply",
                    f.host,
                    if ips.is_empty() {
                        "nothing".to_owned()
                    } else {
                        join(ips)
                    },
                    r.meta.name
                )
            })
    }
}

fn join(ips: &[std::net::IpAddr]) -> String {
    ips.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn explanation(
    rule: &Rule,
    f: &Facts<'_>,
    decision: Decision,
    exchange: Option<&'static Predicate>,
) -> Explanation {
    let conditions = KEYS
        .iter()
        .filter_map(|&key| {
            let index = rule.cond.check(key, f)??;
            Some(ConditionMatch {
                key: key.as_str(),
                matched: rule.cond.describe(key, index),
                fact: fact(key.as_str(), f),
            })
        })
        .collect();
    Explanation {
        decision,
        conditions,
        exchange,
        auth_settled: None,
        resolution: None,
    }
}

fn fact(key: &str, f: &Facts<'_>) -> String {
    let opt = |v: Option<&str>| v.unwrap_or("-").to_owned();
    match key {
        "port" => f.port.to_string(),
        "method" => f.method.to_owned(),
        "client" => f.client.to_string(),
        "dest_ip" => f
            .dest_ip
            .map_or_else(|| "-".to_owned(), |ip| ip.to_string()),
        "host" => f.host.to_owned(),
        "sni" => opt(f.sni),
        "path" => opt(f.path),
        "user" => opt(f.user.map(|u| u.name)),
        "group" => f.user.map(|u| u.groups.join(",")).unwrap_or_default(),
        "resolved" => f.resolved.map_or_else(
            || "-".to_owned(),
            |ips| {
                ips.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            },
        ),
        _ => opt(f.user_agent),
    }
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = &self.decision;
        writeln!(f, "decision: {}", d.action.as_str())?;
        if let crate::Action::Deny { reason } = &d.action {
            writeln!(f, "reason:   {reason}")?;
        }
        match self.auth_settled {
            Some(where_) => writeln!(f, "auth:     {:?} ({where_})", d.auth)?,
            None => writeln!(f, "auth:     {:?}", d.auth)?,
        }
        writeln!(f, "timeouts: {:?}", d.timeouts)?;
        writeln!(f, "route:    {}", d.route)?;
        writeln!(
            f,
            "rule:     {} ({}, index {})",
            d.rule.name,
            d.rule.source.as_str(),
            d.rule.index
        )?;
        if d.pac_direct {
            writeln!(f, "pac:      DIRECT")?;
        }
        if let Some(tag) = &d.tag {
            writeln!(f, "tag:      {tag}")?;
        }
        if let Some(p) = self.exchange {
            writeln!(f, "exchange: {} ({})", p.class, p.why)?;
        }
        if let Some(note) = &self.resolution {
            writeln!(f, "resolved: {note}")?;
        }
        if self.conditions.is_empty() {
            writeln!(f, "matched:  no rule matched; the default applies")?;
        }
        for c in &self.conditions {
            writeln!(f, "matched:  {} {} ~ {}", c.key, c.matched, c.fact)?;
        }
        Ok(())
    }
}
