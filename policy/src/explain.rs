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
        let rule = self.find(&f);
        explanation(rule, &f, self.decision(rule, None), None)
    }

    /// Explains [`Policy::decide_request`] for `facts`.
    pub fn explain_request(&self, facts: &RequestFacts<'_>) -> Explanation {
        let f = Facts::from(facts);
        let rule = self.find(&f);
        let predicate = exchange::classify(facts.method, facts.path, facts.user_agent);
        let decision = self.decision(rule, predicate.map(|p| p.class));
        explanation(rule, &f, decision, predicate)
    }
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
        if self.conditions.is_empty() {
            writeln!(f, "matched:  no rule matched; the default applies")?;
        }
        for c in &self.conditions {
            writeln!(f, "matched:  {} {} ~ {}", c.key, c.matched, c.fact)?;
        }
        Ok(())
    }
}
