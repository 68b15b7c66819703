//! Compiled rules: typed conditions that test [`Facts`] without allocating.

use std::fmt::{self, Write as _};
use std::net::IpAddr;
use std::ops::RangeInclusive;
use std::sync::Arc;

use ipnet::IpNet;

use crate::decision::{Action, AuthRequirement, Facts, MatchedRule, TimeoutProfile};
use crate::exchange::{contains_ci, starts_with_ci};
use crate::host::HostPattern;

/// A User-Agent pattern: case-insensitive substring, or `~regex` (unanchored).
#[derive(Debug, Clone)]
pub(crate) enum UaPattern {
    Substring(Box<str>),
    Regex(regex::Regex),
}

impl UaPattern {
    fn matches(&self, ua: &str) -> bool {
        match self {
            UaPattern::Substring(s) => contains_ci(ua, s),
            UaPattern::Regex(re) => re.is_match(ua),
        }
    }
}

impl fmt::Display for UaPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UaPattern::Substring(s) => write!(f, "{s:?}"),
            UaPattern::Regex(re) => write!(f, "~{}", re.as_str()),
        }
    }
}

/// The condition keys, in evaluation order: cheap integer tests first, regexes last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Key {
    Port,
    Method,
    Client,
    DestIp,
    Host,
    Sni,
    Path,
    User,
    Group,
    UserAgent,
    /// Built-in: the User-Agent is one of Outlook's (exchange::OUTLOOK_USER_AGENTS).
    OutlookUserAgent,
    /// Built-in: every address the host resolves to is in these networks (the Outlook
    /// profile's Microsoft 365 networks, for `autodiscover.*`).
    Resolved,
}

/// Host before `resolved`: the resolution is only asked for when everything else matches.
pub(crate) const KEYS: [Key; 12] = [
    Key::Port,
    Key::Method,
    Key::Client,
    Key::DestIp,
    Key::Host,
    Key::Resolved,
    Key::Sni,
    Key::Path,
    Key::User,
    Key::Group,
    Key::UserAgent,
    Key::OutlookUserAgent,
];

impl Key {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Key::Port => "port",
            Key::Method => "method",
            Key::Client => "client",
            Key::DestIp => "dest_ip",
            Key::Host => "host",
            Key::Sni => "sni",
            Key::Path => "path",
            Key::User => "user",
            Key::Group => "group",
            Key::UserAgent => "user_agent",
            Key::OutlookUserAgent => "outlook_user_agent",
            Key::Resolved => "resolved",
        }
    }
}

/// A rule's conditions; an empty list means "not a condition".
#[derive(Debug, Clone, Default)]
pub(crate) struct Conditions {
    pub(crate) host: Vec<HostPattern>,
    pub(crate) dest_ip: Vec<IpNet>,
    pub(crate) port: Vec<RangeInclusive<u16>>,
    pub(crate) sni: Vec<HostPattern>,
    /// Upper-case.
    pub(crate) method: Vec<Box<str>>,
    pub(crate) path: Vec<Box<str>>,
    pub(crate) user_agent: Vec<UaPattern>,
    pub(crate) client: Vec<IpNet>,
    pub(crate) user: Vec<Box<str>>,
    /// Normalised ([`crate::group::normalize_group`]).
    pub(crate) group: Vec<Box<str>>,
    pub(crate) outlook_user_agent: bool,
    /// Every resolved address must lie in one of these; unresolved facts do not match (and the
    /// decision then says it needs resolution).
    pub(crate) resolved_in: Vec<IpNet>,
}

/// Outcome of one condition: absent, or the index of the value that matched (`Some(None)`:
/// present, nothing matched).
type Check = Option<Option<usize>>;

fn find<T>(values: &[T], f: impl FnMut(&T) -> bool) -> Check {
    if values.is_empty() {
        None
    } else {
        Some(values.iter().position(f))
    }
}

fn in_nets(nets: &[IpNet], ip: Option<IpAddr>) -> Check {
    find(nets, |n| ip.is_some_and(|ip| n.contains(&ip)))
}

impl Conditions {
    pub(crate) fn check(&self, key: Key, f: &Facts<'_>) -> Check {
        match key {
            Key::Port => find(&self.port, |r| r.contains(&f.port)),
            Key::Method => find(&self.method, |m| m.eq_ignore_ascii_case(f.method)),
            Key::Client => in_nets(&self.client, Some(f.client)),
            Key::DestIp => in_nets(&self.dest_ip, f.dest_ip),
            Key::Host => find(&self.host, |p| p.matches(f.host)),
            Key::Sni => find(&self.sni, |p| f.sni.is_some_and(|s| p.matches(s))),
            Key::Path => find(&self.path, |p| {
                f.path.is_some_and(|path| starts_with_ci(path, p))
            }),
            Key::User => find(&self.user, |u| {
                f.user.is_some_and(|id| id.name.eq_ignore_ascii_case(u))
            }),
            Key::Group => find(&self.group, |g| {
                f.user.is_some_and(|id| {
                    id.groups
                        .iter()
                        .any(|have| crate::group::group_matches(have, g))
                })
            }),
            Key::UserAgent => find(&self.user_agent, |p| {
                f.user_agent.is_some_and(|ua| p.matches(ua))
            }),
            Key::OutlookUserAgent => self.outlook_user_agent.then(|| {
                f.user_agent
                    .is_some_and(crate::exchange::is_outlook_user_agent)
                    .then_some(0)
            }),
            Key::Resolved => (!self.resolved_in.is_empty()).then(|| {
                f.resolved
                    .is_some_and(|ips| !ips.is_empty() && ips.iter().all(|ip| self.in_resolved(ip)))
                    .then_some(0)
            }),
        }
    }

    /// Whether `ip` lies in the `resolved` condition's networks.
    pub(crate) fn in_resolved(&self, ip: &IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.resolved_in.iter().any(|n| n.contains(&ip))
    }

    /// All present conditions match.
    pub(crate) fn matches(&self, f: &Facts<'_>) -> bool {
        KEYS.iter()
            .all(|&k| !matches!(self.check(k, f), Some(None)))
    }

    /// Unresolved facts that match every condition but `resolved`: resolving could make this
    /// rule match.
    pub(crate) fn awaits_resolution(&self, f: &Facts<'_>) -> bool {
        !self.resolved_in.is_empty()
            && f.resolved.is_none()
            && KEYS
                .iter()
                .filter(|&&k| k != Key::Resolved)
                .all(|&k| !matches!(self.check(k, f), Some(None)))
    }

    /// The value at `index` of condition `key`, for explanations.
    pub(crate) fn describe(&self, key: Key, index: usize) -> String {
        fn at<T: fmt::Display>(v: &[T], i: usize) -> String {
            v.get(i).map(ToString::to_string).unwrap_or_default()
        }
        match key {
            Key::Port => self.port.get(index).map(port_range).unwrap_or_default(),
            Key::Method => at(&self.method, index),
            Key::Client => at(&self.client, index),
            Key::DestIp => at(&self.dest_ip, index),
            Key::Host => at(&self.host, index),
            Key::Sni => at(&self.sni, index),
            Key::Path => at(&self.path, index),
            Key::User => at(&self.user, index),
            Key::Group => at(&self.group, index),
            Key::UserAgent => at(&self.user_agent, index),
            Key::OutlookUserAgent => "Outlook".to_owned(),
            Key::Resolved => format!(
                "Microsoft 365 networks ({} networks)",
                self.resolved_in.len()
            ),
        }
    }

    /// One line listing every condition, e.g. `host *.example.com|example.org, port 443`.
    pub(crate) fn summary(&self) -> String {
        let mut out = String::new();
        for key in KEYS {
            let n = self.len(key);
            if n == 0 {
                continue;
            }
            if !out.is_empty() {
                out.push_str(", ");
            }
            out.push_str(key.as_str());
            out.push(' ');
            const SHOWN: usize = 4;
            for i in 0..n.min(SHOWN) {
                if i > 0 {
                    out.push('|');
                }
                out.push_str(&self.describe(key, i));
            }
            if n > SHOWN {
                let _ = write!(out, "|… ({n} values)");
            }
        }
        if out.is_empty() {
            out.push_str("always");
        }
        out
    }

    pub(crate) fn len(&self, key: Key) -> usize {
        match key {
            Key::Port => self.port.len(),
            Key::Method => self.method.len(),
            Key::Client => self.client.len(),
            Key::DestIp => self.dest_ip.len(),
            Key::Host => self.host.len(),
            Key::Sni => self.sni.len(),
            Key::Path => self.path.len(),
            Key::User => self.user.len(),
            Key::Group => self.group.len(),
            Key::UserAgent => self.user_agent.len(),
            Key::OutlookUserAgent => usize::from(self.outlook_user_agent),
            // One value: the whole list is one condition ("every address in these").
            Key::Resolved => usize::from(!self.resolved_in.is_empty()),
        }
    }
}

pub(crate) fn port_range(r: &RangeInclusive<u16>) -> String {
    if r.start() == r.end() {
        r.start().to_string()
    } else {
        format!("{}-{}", r.start(), r.end())
    }
}

/// One compiled rule.
#[derive(Debug, Clone)]
pub(crate) struct Rule {
    pub(crate) meta: MatchedRule,
    pub(crate) cond: Conditions,
    pub(crate) action: Action,
    pub(crate) auth: AuthRequirement,
    /// `None`: long_poll for Exchange requests, else the default's.
    pub(crate) timeouts: Option<TimeoutProfile>,
    pub(crate) tag: Option<Arc<str>>,
    /// ICAP service names, in order (empty for every built-in rule: Outlook never adapts).
    pub(crate) icap: Arc<[Arc<str>]>,
    pub(crate) pac_direct: bool,
    /// Applies to CONNECTs only (the Outlook User-Agent fallback).
    pub(crate) connect_only: bool,
    /// `None`: `policy.default_route`.
    pub(crate) route: Option<crate::route::Route>,
}
