//! Parsing of individual keys and of `[[policy.rules]]` entries; every error names its key.

use std::net::IpAddr;
use std::ops::RangeInclusive;
use std::sync::Arc;

use ipnet::IpNet;

use crate::config::{ActionKind, RawDefault, RawPort, RawRule};
use crate::decision::{Action, AuthRequirement, MatchedRule, RuleSource};
use crate::error::CompileError;
use crate::host::HostPattern;
use crate::m365;
use crate::rule::{Conditions, Rule, UaPattern};

/// Same bound as host regexes: fail at load rather than build huge automata.
const REGEX_SIZE_LIMIT: usize = 256 * 1024;

pub(super) fn value(key: &str, value: &str, reason: &str) -> CompileError {
    CompileError::Value {
        key: key.to_owned(),
        value: value.to_owned(),
        reason: reason.to_owned(),
    }
}

pub(super) fn conflict(key: String, reason: &str) -> CompileError {
    CompileError::Conflict {
        key,
        reason: reason.to_owned(),
    }
}

pub(super) fn hosts(
    key: &str,
    raw: &[String],
    allow_regex: bool,
) -> Result<Vec<HostPattern>, CompileError> {
    raw.iter()
        .map(|p| {
            let pattern = HostPattern::parse(p).map_err(|e| CompileError::Pattern {
                key: key.to_owned(),
                pattern: p.clone(),
                reason: e.reason,
            })?;
            if !allow_regex && matches!(pattern, HostPattern::Regex(_)) {
                return Err(CompileError::Pattern {
                    key: key.to_owned(),
                    pattern: p.clone(),
                    reason: "regexes cannot be expressed in a PAC file".to_owned(),
                });
            }
            Ok(pattern)
        })
        .collect()
}

pub(super) fn nets(key: &str, raw: &[String]) -> Result<Vec<IpNet>, CompileError> {
    raw.iter()
        .map(|s| {
            s.parse::<IpNet>()
                .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| value(key, s, "not an IP address or CIDR"))
        })
        .collect()
}

pub(super) fn ports(key: &str, raw: &[RawPort]) -> Result<Vec<RangeInclusive<u16>>, CompileError> {
    raw.iter()
        .map(|p| {
            let (text, range) = match p {
                RawPort::Number(n) => (n.to_string(), Some(*n..=*n)),
                RawPort::Range(s) => (s.clone(), m365::parse_port_range(s)),
            };
            match range {
                Some(r) if *r.start() > 0 && r.start() <= r.end() => Ok(r),
                _ => Err(value(
                    key,
                    &text,
                    "a port 1-65535 or a range \"first-last\"",
                )),
            }
        })
        .collect()
}

pub(super) fn tag(key: String, raw: &Option<String>) -> Result<Option<Arc<str>>, CompileError> {
    match raw {
        None => Ok(None),
        Some(t)
            if !t.is_empty()
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b)) =>
        {
            Ok(Some(t.as_str().into()))
        }
        // Tags land in log lines and metric labels: no spaces or quotes to escape there.
        Some(t) => Err(value(&key, t, "letters, digits, '-', '_', '.', ':' only")),
    }
}

pub(super) fn action(
    key: &str,
    kind: ActionKind,
    reason: &Option<String>,
) -> Result<Action, CompileError> {
    match (kind, reason) {
        (ActionKind::Deny, Some(r)) if !r.trim().is_empty() => Ok(Action::Deny {
            reason: r.as_str().into(),
        }),
        (ActionKind::Deny, _) => Err(conflict(
            format!("{key}.reason"),
            "required when action = \"deny\": it is shown to the user",
        )),
        (_, Some(_)) => Err(conflict(
            format!("{key}.reason"),
            "only used with action = \"deny\"",
        )),
        (ActionKind::Inspect, None) => Ok(Action::Inspect),
        (ActionKind::Tunnel | ActionKind::Direct, None) => Ok(Action::Tunnel),
    }
}

pub(super) fn user_rule(
    i: usize,
    r: &RawRule,
    default_auth: AuthRequirement,
    default_icap: &Arc<[Arc<str>]>,
) -> Result<Rule, CompileError> {
    let key = format!("policy.rules[{i}]");
    let k = |field: &str| format!("{key}.{field}");
    let non_empty = |field: &str, list: &[String]| -> Result<Vec<Box<str>>, CompileError> {
        list.iter()
            .map(|s| {
                if s.trim().is_empty() {
                    Err(value(&k(field), s, "empty"))
                } else {
                    Ok(s.as_str().into())
                }
            })
            .collect()
    };
    let mut cond = Conditions {
        host: hosts(&k("host"), &r.host, true)?,
        dest_ip: nets(&k("dest_ip"), &r.dest_ip)?,
        port: ports(&k("port"), &r.port)?,
        sni: hosts(&k("sni"), &r.sni, true)?,
        client: nets(&k("client"), &r.client)?,
        user: non_empty("user", &r.user)?,
        group: non_empty("group", &r.group)?
            .iter()
            .map(|g| crate::group::normalize_group(g).into())
            .collect(),
        ..Conditions::default()
    };
    for m in &r.method {
        let token = !m.is_empty()
            && m.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if !token {
            return Err(value(&k("method"), m, "not an HTTP method token"));
        }
        cond.method.push(m.to_ascii_uppercase().into());
    }
    for p in &r.path {
        if !p.starts_with('/') {
            return Err(value(&k("path"), p, "a path prefix starts with '/'"));
        }
        cond.path.push(p.as_str().into());
    }
    for ua in &r.user_agent {
        let pattern = match ua.strip_prefix('~') {
            Some(re) => regex::RegexBuilder::new(re)
                .size_limit(REGEX_SIZE_LIMIT)
                .build()
                .map(UaPattern::Regex)
                .map_err(|e| CompileError::Pattern {
                    key: k("user_agent"),
                    pattern: ua.clone(),
                    reason: e.to_string(),
                })?,
            None if ua.is_empty() => return Err(value(&k("user_agent"), ua, "empty")),
            None => UaPattern::Substring(ua.as_str().into()),
        };
        cond.user_agent.push(pattern);
    }

    let auth = r.auth.unwrap_or(default_auth);
    if auth == AuthRequirement::Exempt {
        // The SNI is as forgeable as the User-Agent: only what the proxy dials (host, dest_ip)
        // or where the connection comes from (client) may exempt.
        if cond.host.is_empty() && cond.dest_ip.is_empty() && cond.client.is_empty() {
            return Err(conflict(k("auth"), "\"exempt\" needs a destination (host, dest_ip) or client condition: User-Agent, SNI, method and path are the client's say-so"));
        }
        if !cond.user.is_empty() || !cond.group.is_empty() {
            return Err(conflict(k("auth"), "\"exempt\" cannot be combined with user/group: the user is only known after authentication"));
        }
    }
    if r.action == ActionKind::Direct {
        let only_hosts = cond.dest_ip.is_empty()
            && cond.port.is_empty()
            && cond.sni.is_empty()
            && cond.method.is_empty()
            && cond.path.is_empty()
            && cond.user_agent.is_empty()
            && cond.client.is_empty()
            && cond.user.is_empty()
            && cond.group.is_empty();
        if cond.host.is_empty() || !only_hosts {
            return Err(conflict(
                k("action"),
                "\"direct\" rules take only a host condition: the PAC file sees nothing else",
            ));
        }
        if cond.host.iter().any(|p| matches!(p, HostPattern::Regex(_))) {
            return Err(conflict(
                k("host"),
                "\"direct\" rules cannot use regexes: a PAC file cannot evaluate them",
            ));
        }
    }
    let name: Arc<str> = match &r.name {
        Some(n) if n.trim().is_empty() => return Err(value(&k("name"), n, "empty")),
        Some(n) => n.as_str().into(),
        None => format!("rules[{i}]").into(),
    };
    Ok(Rule {
        meta: MatchedRule {
            name,
            source: RuleSource::Config,
            index: i,
            summary: cond.summary().into(),
        },
        action: action(&key, r.action, &r.reason)?,
        auth,
        timeouts: r.timeouts,
        tag: tag(k("log_tag"), &r.log_tag)?,
        icap: match &r.icap {
            Some(names) => icap(k("icap"), names)?,
            None => Arc::clone(default_icap),
        },
        pac_direct: r.action == ActionKind::Direct,
        connect_only: false,
        route: crate::route::Route::compile(&k("route"), &r.route)?,
        cond,
    })
}

pub(super) fn default_rule(d: &RawDefault) -> Result<Rule, CompileError> {
    if d.action == ActionKind::Direct {
        return Err(conflict(
            "policy.default.action".to_owned(),
            "\"direct\" needs hosts; use it in rules or policy.direct",
        ));
    }
    let cond = Conditions::default();
    Ok(Rule {
        meta: MatchedRule {
            name: "default".into(),
            source: RuleSource::Default,
            index: 0,
            summary: cond.summary().into(),
        },
        action: action("policy.default", d.action, &d.reason)?,
        auth: d.auth,
        timeouts: None,
        tag: tag("policy.default.log_tag".to_owned(), &d.log_tag)?,
        icap: icap("policy.default.icap".to_owned(), &d.icap)?,
        pac_direct: false,
        connect_only: false,
        route: None,
        cond,
    })
}

/// ICAP service names as written: non-empty and each once. Whether a `[[icap.services]]`
/// entry has the name is checked by the proxy's config validation, which knows the services.
pub(super) fn icap(key: String, names: &[String]) -> Result<Arc<[Arc<str>]>, CompileError> {
    let mut out: Vec<Arc<str>> = Vec::with_capacity(names.len());
    for name in names {
        if name.trim().is_empty() {
            return Err(value(&key, name, "empty ICAP service name"));
        }
        if out.iter().any(|n| **n == **name) {
            return Err(value(&key, name, "listed twice"));
        }
        out.push(name.as_str().into());
    }
    Ok(out.into())
}
