//! Outlook / Exchange awareness as data: which requests are which Exchange protocol, which
//! User-Agents are Outlook's, and which hosts and networks the built-in profile covers.
//!
//! Everything the proxy knows about Exchange is in the tables below (sources:
//! `shared/recipes/OUTLOOK.md` §4.3–4.7), so that no special case hides in `proxy`.
//!
//! ## Request classes ([`PREDICATES`], first match wins)
//!
//! | predicate | class | why |
//! |---|---|---|
//! | method `RPC_IN_DATA` | rpc-http | Outlook Anywhere IN channel: 1 GiB body held open |
//! | method `RPC_OUT_DATA` | rpc-http | Outlook Anywhere OUT channel: 1 GiB response held open |
//! | path `/rpc/rpcproxy.dll` | rpc-http | RPC over HTTP endpoint (auth probes use ordinary verbs) |
//! | User-Agent `MSRPC` | rpc-http | the RPC/HTTP client's own User-Agent |
//! | path `/autodiscover/` | autodiscover | Autodiscover v1 XML and v2 JSON |
//! | path `/mapi/` | mapi | MAPI over HTTP: Execute streams PENDING, NotificationWait waits 5 min |
//! | path `/EWS/` | ews | Exchange Web Services, streaming notifications up to 30 min |
//! | path `/Microsoft-Server-ActiveSync` | eas | ActiveSync Ping/Sync long polls up to 59 min |
//! | path `/OAB/` | oab | Offline Address Book: large downloads |
//!
//! Paths compare ASCII case-insensitively because IIS does. Classified requests get `long_poll`
//! timeouts unless their rule says otherwise.
//!
//! ## Outlook User-Agents ([`OUTLOOK_USER_AGENTS`])
//!
//! | predicate | client |
//! |---|---|
//! | contains `Microsoft Outlook` | Outlook for Windows (`Microsoft Office/16.0 (…; Microsoft Outlook 16.0.…)`) |
//! | is `MSRPC` | Outlook's RPC over HTTP channels |
//! | starts with `Outlook-iOS/` | Outlook for iOS |
//! | starts with `Outlook-Android/` | Outlook for Android |

use std::fmt;

/// Exchange protocol of a request, for logs and the `exchange` label of the request metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExchangeClass {
    Autodiscover,
    Mapi,
    RpcHttp,
    Ews,
    Eas,
    Oab,
}

impl ExchangeClass {
    /// Metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ExchangeClass::Autodiscover => "autodiscover",
            ExchangeClass::Mapi => "mapi",
            ExchangeClass::RpcHttp => "rpc-http",
            ExchangeClass::Ews => "ews",
            ExchangeClass::Eas => "eas",
            ExchangeClass::Oab => "oab",
        }
    }
}

impl fmt::Display for ExchangeClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One thing a request can be tested for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Test {
    /// The method, exactly (extension methods are case-sensitive tokens).
    Method(&'static str),
    /// The path starts with this, ASCII case-insensitively.
    PathPrefix(&'static str),
    /// The User-Agent is this, exactly.
    UserAgentIs(&'static str),
    /// The User-Agent contains this, ASCII case-insensitively.
    UserAgentContains(&'static str),
    /// The User-Agent starts with this, ASCII case-insensitively.
    UserAgentStartsWith(&'static str),
}

impl Test {
    fn matches(self, method: &str, path: &str, user_agent: Option<&str>) -> bool {
        let ua = user_agent.unwrap_or("");
        match self {
            Test::Method(m) => method == m,
            Test::PathPrefix(p) => starts_with_ci(path, p),
            Test::UserAgentIs(s) => user_agent == Some(s),
            Test::UserAgentContains(s) => contains_ci(ua, s),
            Test::UserAgentStartsWith(s) => starts_with_ci(ua, s),
        }
    }
}

/// A named request predicate: the table row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Predicate {
    pub test: Test,
    pub class: ExchangeClass,
    pub why: &'static str,
}

/// The request classification table; the order matters only for RPC/HTTP, whose verbs are
/// checked first because its auth probes may use other paths' verbs.
pub const PREDICATES: &[Predicate] = &[
    Predicate {
        test: Test::Method("RPC_IN_DATA"),
        class: ExchangeClass::RpcHttp,
        why: "Outlook Anywhere IN channel",
    },
    Predicate {
        test: Test::Method("RPC_OUT_DATA"),
        class: ExchangeClass::RpcHttp,
        why: "Outlook Anywhere OUT channel",
    },
    Predicate {
        test: Test::PathPrefix("/rpc/rpcproxy.dll"),
        class: ExchangeClass::RpcHttp,
        why: "RPC over HTTP endpoint",
    },
    Predicate {
        test: Test::UserAgentIs("MSRPC"),
        class: ExchangeClass::RpcHttp,
        why: "RPC over HTTP client User-Agent",
    },
    Predicate {
        test: Test::PathPrefix("/autodiscover/"),
        class: ExchangeClass::Autodiscover,
        why: "Autodiscover",
    },
    Predicate {
        test: Test::PathPrefix("/mapi/"),
        class: ExchangeClass::Mapi,
        why: "MAPI over HTTP",
    },
    Predicate {
        test: Test::PathPrefix("/EWS/"),
        class: ExchangeClass::Ews,
        why: "Exchange Web Services",
    },
    Predicate {
        test: Test::PathPrefix("/Microsoft-Server-ActiveSync"),
        class: ExchangeClass::Eas,
        why: "Exchange ActiveSync",
    },
    Predicate {
        test: Test::PathPrefix("/OAB/"),
        class: ExchangeClass::Oab,
        why: "Offline Address Book",
    },
];

/// User-Agents that identify Outlook.
pub const OUTLOOK_USER_AGENTS: &[Test] = &[
    Test::UserAgentContains("Microsoft Outlook"),
    Test::UserAgentIs("MSRPC"),
    Test::UserAgentStartsWith("Outlook-iOS/"),
    Test::UserAgentStartsWith("Outlook-Android/"),
];

/// The first [`PREDICATES`] row a request matches. No allocation.
pub fn classify(method: &str, path: &str, user_agent: Option<&str>) -> Option<&'static Predicate> {
    PREDICATES
        .iter()
        .find(|p| p.test.matches(method, path, user_agent))
}

/// Whether `user_agent` is one of Outlook's.
pub fn is_outlook_user_agent(user_agent: &str) -> bool {
    OUTLOOK_USER_AGENTS
        .iter()
        .any(|t| t.matches("", "", Some(user_agent)))
}

/// Exchange Online, Microsoft 365 identity and unified-domain hosts that must be neither
/// inspected nor proxy-authenticated (OUTLOOK.md §4.3: IDs 1, 8, 9, 56, 59, 154, 184).
pub const M365_HOSTS: &[&str] = &[
    "outlook.office.com",
    "outlook.office365.com",
    "*.outlook.office.com",
    // ID 8: autodiscover-s.outlook.com, autodiscover.outlook.com and the rest of outlook.com.
    "*.outlook.com",
    "attachments.office.net",
    "*.protection.outlook.com",
    // Microsoft's own Autodiscover host outside outlook.com. Any other domain's
    // `autodiscover.<domain>` is not Microsoft's: see AUTODISCOVER_ANY.
    "autodiscover.office365.com",
    // Modern authentication (IDs 56, 59): login loops when inspected.
    "login.microsoftonline.com",
    "login.microsoft.com",
    "login.windows.net",
    "*.microsoftonline.com",
    "*.msftidentity.com",
    "*.msauth.net",
    "*.msftauth.net",
    "enterpriseregistration.windows.net",
    "accounts.accesscontrol.windows.net",
    "graph.microsoft.com",
    // Unified domains (ID 184).
    "*.cloud.microsoft",
    "*.static.microsoft",
    "*.usercontent.microsoft",
];

/// Autodiscover names of any domain. Outlook looks up `autodiscover.<smtp-domain>` for every
/// mailbox, so this is where a domain hosted in Exchange Online points its CNAME
/// (`autodiscover.outlook.com`); but anyone can name a host `autodiscover.<their-domain>`, so
/// the name alone exempts nothing. The built-in rule `outlook:autodiscover` applies only when
/// **every** address the name resolves to is a Microsoft 365 address ([`M365_NETWORKS`] plus the
/// loaded endpoint list's networks); `autodiscover.<accepted domain>` (`outlook:exchange`) and
/// Microsoft's own hosts ([`M365_HOSTS`]) need no resolution. This covers
/// `autodiscover.<tenant>.onmicrosoft.com` (ID 154) too.
pub const AUTODISCOVER_ANY: &str = "autodiscover.*";

/// Exchange Online Optimize (ID 1) and identity (ID 56) networks, for CONNECTs to bare IPs and
/// for the addresses of `autodiscover.*` names ([`AUTODISCOVER_ANY`]).
/// The Microsoft 365 feed, when loaded, adds the current full lists.
pub const M365_NETWORKS: &[&str] = &[
    "13.107.6.152/31",
    "13.107.18.10/31",
    "13.107.128.0/22",
    "23.103.160.0/20",
    "40.96.0.0/13",
    "40.104.0.0/15",
    "52.96.0.0/14",
    "131.253.33.215/32",
    "132.245.0.0/16",
    "150.171.32.0/22",
    "204.79.197.215/32",
    "20.190.128.0/18",
    "40.126.0.0/18",
    "2603:1006::/40",
    "2603:1016::/36",
    "2a01:111:f400::/48",
];

pub(crate) fn starts_with_ci(haystack: &str, prefix: &str) -> bool {
    haystack.len() >= prefix.len()
        && haystack.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
}

pub(crate) fn contains_ci(haystack: &str, needle: &str) -> bool {
    let (h, n) = (haystack.as_bytes(), needle.as_bytes());
    n.is_empty() || h.windows(n.len()).any(|w| w.eq_ignore_ascii_case(n))
}

#[cfg(test)]
mod tests;
