//! The compiled [`Policy`] and its two decision points.
//!
//! Rules are evaluated in order (config `rules`, then `direct`, then the Outlook profile, then
//! the Outlook User-Agent fallback) and the first whose conditions all match decides; nothing
//! matching means `policy.default`. To stay fast with thousands of rules, rules whose `host`
//! condition has no regex are reached through hash indexes keyed by name, by every suffix after
//! a dot (`*.suffix`) and every prefix before a dot (`prefix.*`); only the remaining rules are
//! scanned. The candidate lists are merged in rule order, so the index never changes which rule
//! wins, and every candidate is still checked in full.

// foldhash: the index is probed up to 2×labels+1 times per decision; SipHash dominated that.
use std::sync::Arc;

use foldhash::HashMap;

use crate::decision::{ConnectFacts, Decision, Facts, RequestFacts, TimeoutProfile};
use crate::exchange::{self, ExchangeClass};
use crate::host::{self, HostPattern};
use crate::m365::Skipped;
use crate::pac::PacSettings;
use crate::rule::Rule;

/// An immutable, validated policy. Build it with [`Policy::compile`] (or
/// [`Policy::compile_with_m365`] once the endpoint feed is loaded); swap it whole on reload
/// (`ArcSwap<Policy>`).
///
/// ```
/// use std::net::IpAddr;
/// use portcullis_policy::{Action, ConnectFacts, Policy, RawPolicy, RequestFacts};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let raw: RawPolicy = toml::from_str(r#"
///     [[rules]]
///     host = "*.casino.example"
///     action = "deny"
///     reason = "Gambling sites are blocked."
/// "#)?;
/// let policy = Policy::compile(&raw)?;
/// let client: IpAddr = "10.0.0.7".parse()?;
///
/// let d = policy.decide_connect(&ConnectFacts::new("outlook.office365.com", 443, client));
/// assert_eq!(d.action, Action::Tunnel); // built-in Outlook profile
///
/// let req = RequestFacts::new("GET", "www.casino.example", 80, "/", client);
/// assert!(matches!(policy.decide_request(&req).action, Action::Deny { .. }));
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Policy {
    pub(crate) rules: Vec<Rule>,
    pub(crate) default: Rule,
    pub(crate) default_timeouts: TimeoutProfile,
    /// `policy.default_route`: for rules that set no `route`, and the default.
    pub(crate) default_route: crate::route::Route,
    pub(crate) index: Index,
    pub(crate) pac: PacSettings,
    pub(crate) m365_skipped: Vec<Skipped>,
    /// Whether any rule has an `sni` condition (asked per CONNECT).
    pub(crate) uses_sni: bool,
    /// Whether any rule has a `user` or `group` condition (asked per request).
    pub(crate) uses_identity: bool,
    /// Rules with a `resolved` condition (`outlook:autodiscover`), in order.
    pub(crate) resolving: Vec<u32>,
}

/// Longest host name looked up through the index (DNS names are at most 253 bytes); longer
/// names fall back to the linear scan.
const MAX_INDEXED_HOST: usize = 255;
/// Candidate lists merged at once: exact + two per dot + unindexed; more dots → linear scan.
const MAX_LISTS: usize = 64;

#[derive(Debug, Clone, Default)]
pub(crate) struct Index {
    exact: HashMap<Box<str>, Vec<u32>>,
    /// `*.example.com` under `example.com`.
    suffix: HashMap<Box<str>, Vec<u32>>,
    /// `autodiscover.*` under `autodiscover`.
    prefix: HashMap<Box<str>, Vec<u32>>,
    /// Rules without an indexable host condition, always candidates.
    always: Vec<u32>,
}

impl Index {
    pub(crate) fn build(rules: &[Rule]) -> Index {
        let mut index = Index::default();
        for (i, rule) in rules.iter().enumerate() {
            let id = i as u32;
            let hosts = &rule.cond.host;
            if hosts.is_empty() || hosts.iter().any(|p| matches!(p, HostPattern::Regex(_))) {
                index.always.push(id);
                continue;
            }
            for pattern in hosts {
                let (map, key) = match pattern {
                    HostPattern::Exact(name) => (&mut index.exact, name.as_str()),
                    HostPattern::Suffix(s) => (&mut index.suffix, &s[1..]),
                    HostPattern::Prefix(p) => (&mut index.prefix, &p[..p.len() - 1]),
                    HostPattern::Regex(_) => continue,
                };
                let ids = map.entry(key.into()).or_default();
                // Two patterns of one rule can share a key; keep each list strictly increasing.
                if ids.last() != Some(&id) {
                    ids.push(id);
                }
            }
        }
        index
    }
}

impl Policy {
    /// The decision for a CONNECT (before or after the ClientHello was peeked).
    pub fn decide_connect(&self, facts: &ConnectFacts<'_>) -> Decision {
        let f = Facts::from(facts);
        self.decision(&f, self.find(&f), None)
    }

    /// The decision for one plain-HTTP or inspected request. Its Exchange class, if any, is in
    /// [`Decision::class`] and selects `long_poll` timeouts unless the rule sets `timeouts`.
    pub fn decide_request(&self, facts: &RequestFacts<'_>) -> Decision {
        let f = Facts::from(facts);
        let class = exchange::classify(facts.method, facts.path, facts.user_agent).map(|p| p.class);
        self.decision(&f, self.find(&f), class)
    }

    /// Whether any rule has an `sni` condition: only then is a second decision after peeking
    /// the ClientHello needed.
    pub fn uses_sni(&self) -> bool {
        self.uses_sni
    }

    /// Whether any rule has a `user` or `group` condition: only then is a second decision after
    /// authentication needed.
    pub fn uses_identity(&self) -> bool {
        self.uses_identity
    }

    /// Feed entries (Microsoft 365 endpoints) that could not be turned into rules, with why.
    pub fn m365_skipped(&self) -> &[Skipped] {
        &self.m365_skipped
    }

    /// Number of rules, default excluded.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The decision of rule `id` (`rules.len()`: the default) for `f`.
    pub(crate) fn decision(
        &self,
        f: &Facts<'_>,
        id: usize,
        class: Option<ExchangeClass>,
    ) -> Decision {
        let rule = self.rule(id);
        let timeouts = rule
            .timeouts
            .or(class.map(|_| TimeoutProfile::LongPoll))
            .unwrap_or(self.default_timeouts);
        Decision {
            action: rule.action.clone(),
            auth: rule.auth,
            timeouts,
            class,
            tag: rule.tag.clone(),
            icap: Arc::clone(&rule.icap),
            pac_direct: rule.pac_direct,
            needs_resolution: self.awaiting_resolution(f, id).is_some(),
            route: rule
                .route
                .clone()
                .unwrap_or_else(|| self.default_route.clone()),
            rule: rule.meta.clone(),
        }
    }

    /// Rule `id`, or the default for `rules.len()`.
    pub(crate) fn rule(&self, id: usize) -> &Rule {
        self.rules.get(id).unwrap_or(&self.default)
    }

    /// The first rule before `id` that could match `f` once its host is resolved.
    pub(crate) fn awaiting_resolution(&self, f: &Facts<'_>, id: usize) -> Option<&Rule> {
        if f.resolved.is_some() {
            return None;
        }
        self.resolving
            .iter()
            .map(|&r| r as usize)
            .take_while(|&r| r < id)
            .map(|r| self.rule(r))
            .find(|r| !(r.connect_only && f.path.is_some()) && r.cond.awaits_resolution(f))
    }

    /// The index of the first matching rule, or `rules.len()` for the default.
    pub(crate) fn find(&self, f: &Facts<'_>) -> usize {
        self.find_indexed(f).unwrap_or_else(|| self.find_linear(f))
    }

    fn applies(rule: &Rule, f: &Facts<'_>) -> bool {
        !(rule.connect_only && f.path.is_some()) && rule.cond.matches(f)
    }

    fn find_linear(&self, f: &Facts<'_>) -> usize {
        self.rules
            .iter()
            .position(|r| Self::applies(r, f))
            .unwrap_or(self.rules.len())
    }

    /// `None` when the host cannot be indexed (too long, too many labels): scan instead.
    fn find_indexed(&self, f: &Facts<'_>) -> Option<usize> {
        let trimmed = host::trim(f.host);
        if trimmed.len() > MAX_INDEXED_HOST {
            return None;
        }
        let mut buf = [0u8; MAX_INDEXED_HOST];
        let buf = &mut buf[..trimmed.len()];
        buf.copy_from_slice(trimmed.as_bytes());
        buf.make_ascii_lowercase();
        // Lower-casing ASCII bytes keeps UTF-8 valid; a failure here would be a bug, so fall
        // back to the scan rather than panic.
        let name = std::str::from_utf8(buf).ok()?;

        let empty: &[u32] = &[];
        let mut lists: [&[u32]; MAX_LISTS] = [empty; MAX_LISTS];
        let mut n = 0;
        fn push<'p>(
            lists: &mut [&'p [u32]],
            n: &mut usize,
            list: Option<&'p Vec<u32>>,
        ) -> Option<()> {
            if let Some(list) = list {
                *lists.get_mut(*n)? = list;
                *n += 1;
            }
            Some(())
        }
        let index = &self.index;
        push(&mut lists, &mut n, Some(&index.always))?;
        push(&mut lists, &mut n, index.exact.get(name))?;
        for (dot, _) in name.match_indices('.') {
            push(&mut lists, &mut n, index.suffix.get(&name[dot + 1..]))?;
            push(&mut lists, &mut n, index.prefix.get(&name[..dot]))?;
        }

        // k-way merge in rule order: the smallest head is the next candidate.
        let lists = &mut lists[..n];
        loop {
            let mut next = u32::MAX;
            for list in lists.iter() {
                if let Some(&id) = list.first() {
                    next = next.min(id);
                }
            }
            if next == u32::MAX {
                return Some(self.rules.len());
            }
            for list in lists.iter_mut() {
                if list.first() == Some(&next) {
                    *list = &list[1..];
                }
            }
            let rule = self.rules.get(next as usize)?;
            if Self::applies(rule, f) {
                return Some(next as usize);
            }
        }
    }
}

#[cfg(test)]
mod tests;
