//! What the proxy tells the policy ([`ConnectFacts`], [`RequestFacts`]) and what it gets back
//! ([`Decision`]).
//!
//! Facts borrow from the proxy's own buffers and decisions share the policy's strings through
//! `Arc<str>`, so deciding allocates nothing.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::exchange::ExchangeClass;

/// What happens to the connection or request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Decrypt the CONNECT tunnel and handle its requests (per-request decisions then apply).
    /// For a plain-HTTP or already-inspected request: forward it.
    Inspect,
    /// Relay the tunnel's bytes untouched. For a plain-HTTP or already-inspected request:
    /// forward it (the request is already visible, there is nothing left to pass through).
    Tunnel,
    /// Refuse with 403 and show `reason` on the error page.
    Deny { reason: Arc<str> },
}

impl Action {
    /// Lower-case label for logs and metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            Action::Inspect => "inspect",
            Action::Tunnel => "tunnel",
            Action::Deny { .. } => "deny",
        }
    }
}

/// Whether the proxy asks for credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthRequirement {
    /// Authenticate if the proxy has any auth scheme configured.
    Required,
    /// Do not challenge: the destination cannot cope with proxy authentication.
    Exempt,
}

/// Which idle/response timeouts the proxy applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeoutProfile {
    /// The proxy's `[timeouts]`.
    Default,
    /// Outlook's long polls: MAPI NotificationWait (5 min), EAS Ping (up to 59 min) and RPC/HTTP
    /// channels need idle limits far beyond a browser's.
    LongPoll,
}

/// Where the rule that decided came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RuleSource {
    /// `policy.rules[index]`.
    Config,
    /// The built-in Outlook / Microsoft 365 profile.
    Outlook,
    /// `policy.outlook.exchange_hosts` / `accepted_domains`.
    Exchange,
    /// Rules built from the Microsoft 365 endpoints feed.
    M365,
    /// `policy.outlook.unknown_host_from_outlook_ua`.
    OutlookUserAgent,
    /// `policy.direct`.
    Direct,
    /// `policy.default`: nothing matched.
    Default,
}

impl RuleSource {
    /// Lower-case label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            RuleSource::Config => "config",
            RuleSource::Outlook => "outlook",
            RuleSource::Exchange => "exchange",
            RuleSource::M365 => "m365",
            RuleSource::OutlookUserAgent => "outlook-ua",
            RuleSource::Direct => "direct",
            RuleSource::Default => "default",
        }
    }
}

/// The rule that decided: what logs, metrics and `policy explain` name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MatchedRule {
    /// The rule's `name`, or a generated one such as `rules[3]` or `outlook:m365-hosts`.
    pub name: Arc<str>,
    pub source: RuleSource,
    /// Index within its source (`policy.rules[index]`); 0 for single built-in rules.
    pub index: usize,
    /// One-line description of the rule's conditions, prepared at compile time.
    pub summary: Arc<str>,
}

/// The outcome of [`crate::Policy::decide_connect`] or [`crate::Policy::decide_request`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub action: Action,
    pub auth: AuthRequirement,
    pub timeouts: TimeoutProfile,
    /// Exchange protocol of the request (per-request decisions only), for logs and metrics.
    pub class: Option<ExchangeClass>,
    /// The rule's `log_tag`; built-in rules tag themselves with their source (`outlook`,
    /// `exchange`, `m365`, `outlook-ua`, `direct`).
    pub tag: Option<Arc<str>>,
    /// ICAP services (by `[[icap.services]]` name, in order) that adapt this traffic where the
    /// proxy sees it in clear; empty for the built-in Outlook / Microsoft 365 rules.
    pub icap: Arc<[Arc<str>]>,
    /// Clients should reach this destination DIRECT (the PAC file says so).
    pub pac_direct: bool,
    /// A rule before the one that decided tests the addresses the target resolves to, and the
    /// facts had none (`resolved` unset): resolve the target and decide again with
    /// [`ConnectFacts::with_resolved`] / [`RequestFacts::with_resolved`] — before
    /// authenticating, since the answer may exempt — then connect to exactly those addresses.
    /// This decision is the one to apply when resolution fails.
    pub needs_resolution: bool,
    /// Direct, or the parent proxies to go through (in failover order). For a CONNECT, the
    /// route of the first decision is the one dialled; later decisions (user, SNI) run on a
    /// tunnel already open.
    pub route: crate::route::Route,
    pub rule: MatchedRule,
}

impl Decision {
    /// Human-readable reason, e.g. `tunnel (auth exempt, long_poll) by outlook:m365-hosts [outlook]:
    /// host *.outlook.com`. Allocates; meant for logs at debug level and `policy explain`.
    pub fn why(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.action.as_str())?;
        if let Action::Deny { reason } = &self.action {
            write!(f, " ({reason:?})")?;
        }
        let auth = match self.auth {
            AuthRequirement::Required => "auth required",
            AuthRequirement::Exempt => "auth exempt",
        };
        let timeouts = match self.timeouts {
            TimeoutProfile::Default => "default timeouts",
            TimeoutProfile::LongPoll => "long_poll timeouts",
        };
        write!(f, ", {auth}, {timeouts}")?;
        if self.route != crate::route::Route::Direct {
            write!(f, ", route {}", self.route)?;
        }
        if let Some(class) = self.class {
            write!(f, ", exchange {}", class.as_str())?;
        }
        write!(
            f,
            "; rule {} [{}]: {}",
            self.rule.name,
            self.rule.source.as_str(),
            self.rule.summary
        )
    }
}

/// An authenticated user, for `user` and `group` conditions.
#[derive(Debug, Clone, Copy)]
pub struct Identity<'a> {
    pub name: &'a str,
    /// Resolved by the proxy from its group sources for this authenticated user — never from
    /// anything the client sent. Normalised spellings ([`crate::normalize_group`]); others are
    /// normalised when compared.
    pub groups: &'a [String],
}

impl<'a> Identity<'a> {
    /// A user whose groups are not known (no group source is configured).
    pub fn named(name: &'a str) -> Identity<'a> {
        Identity { name, groups: &[] }
    }

    /// A user and the groups the proxy resolved for them.
    pub fn with_groups(name: &'a str, groups: &'a [String]) -> Identity<'a> {
        Identity { name, groups }
    }
}

/// Facts about a CONNECT, before or after the ClientHello was peeked.
///
/// The intended sequence in the proxy:
/// 1. Decide without `sni` and `user` when the CONNECT arrives; if the decision
///    [needs resolution](Decision::needs_resolution), resolve the target and decide again with
///    `resolved`. `Deny` → 403. The decision's `auth` says whether to challenge (this first
///    decision is the only one that may exempt).
/// 2. After authenticating, if [`crate::Policy::uses_identity`], decide again with `user`.
/// 3. After answering 200: when the decision is `Inspect` (the ClientHello is peeked anyway) or
///    [`crate::Policy::uses_sni`] is true, decide again with `sni`; the result may turn the
///    tunnel into a raw relay or a denial. The second decision's `auth` is moot by then.
///
/// `host` conditions test the CONNECT target (what is dialled), never the SNI, so a forged SNI
/// cannot earn a tunnel or an exemption that the destination would not get.
#[derive(Debug, Clone, Copy)]
pub struct ConnectFacts<'a> {
    /// CONNECT target host (a name or an IP literal, brackets allowed), as received.
    pub host: &'a str,
    pub port: u16,
    /// The destination address when known: the target itself when it is an IP literal (set by
    /// [`ConnectFacts::new`]), or a resolved address if the caller resolved first.
    pub dest_ip: Option<IpAddr>,
    /// Every address `host` resolves to, when the caller resolved it (see
    /// [`Decision::needs_resolution`]); `None`: not resolved.
    pub resolved: Option<&'a [IpAddr]>,
    pub client: IpAddr,
    pub user_agent: Option<&'a str>,
    pub sni: Option<&'a str>,
    pub user: Option<Identity<'a>>,
}

impl<'a> ConnectFacts<'a> {
    /// Facts for `CONNECT host:port` from `client`; `dest_ip` is filled when `host` is an IP.
    pub fn new(host: &'a str, port: u16, client: IpAddr) -> ConnectFacts<'a> {
        ConnectFacts {
            host,
            port,
            dest_ip: parse_ip(host),
            resolved: None,
            client,
            user_agent: None,
            sni: None,
            user: None,
        }
    }

    pub fn with_user_agent(self, user_agent: Option<&'a str>) -> Self {
        ConnectFacts { user_agent, ..self }
    }

    pub fn with_sni(self, sni: Option<&'a str>) -> Self {
        ConnectFacts { sni, ..self }
    }

    pub fn with_user(self, user: Option<Identity<'a>>) -> Self {
        ConnectFacts { user, ..self }
    }

    /// The addresses `host` resolved to (all of them; empty when resolution failed).
    pub fn with_resolved(self, resolved: Option<&'a [IpAddr]>) -> Self {
        ConnectFacts { resolved, ..self }
    }
}

/// Facts about one HTTP request: plain HTTP (absolute-form) or decrypted inside an inspected
/// tunnel.
#[derive(Debug, Clone, Copy)]
pub struct RequestFacts<'a> {
    pub method: &'a str,
    /// Host of the URL (or of the tunnel, for inspected requests).
    pub host: &'a str,
    pub port: u16,
    /// URL path, query allowed (`/mapi/emsmdb/?MailboxId=…`).
    pub path: &'a str,
    pub dest_ip: Option<IpAddr>,
    /// As [`ConnectFacts::resolved`].
    pub resolved: Option<&'a [IpAddr]>,
    pub client: IpAddr,
    pub user_agent: Option<&'a str>,
    /// For inspected requests: the tunnel's SNI.
    pub sni: Option<&'a str>,
    pub user: Option<Identity<'a>>,
}

impl<'a> RequestFacts<'a> {
    /// Facts for `method` on `host:port` + `path` from `client`.
    pub fn new(
        method: &'a str,
        host: &'a str,
        port: u16,
        path: &'a str,
        client: IpAddr,
    ) -> RequestFacts<'a> {
        RequestFacts {
            method,
            host,
            port,
            path,
            dest_ip: parse_ip(host),
            resolved: None,
            client,
            user_agent: None,
            sni: None,
            user: None,
        }
    }

    pub fn with_user_agent(self, user_agent: Option<&'a str>) -> Self {
        RequestFacts { user_agent, ..self }
    }

    pub fn with_sni(self, sni: Option<&'a str>) -> Self {
        RequestFacts { sni, ..self }
    }

    pub fn with_user(self, user: Option<Identity<'a>>) -> Self {
        RequestFacts { user, ..self }
    }

    /// As [`ConnectFacts::with_resolved`].
    pub fn with_resolved(self, resolved: Option<&'a [IpAddr]>) -> Self {
        RequestFacts { resolved, ..self }
    }
}

/// `10.0.0.1`, `::1` or `[::1]` → an address; a name → `None`. No allocation.
fn parse_ip(host: &str) -> Option<IpAddr> {
    crate::host::Host::ip_of(host)
}

/// The facts as the matcher sees them: one shape for both decision points.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Facts<'a> {
    pub(crate) host: &'a str,
    pub(crate) port: u16,
    pub(crate) dest_ip: Option<IpAddr>,
    pub(crate) resolved: Option<&'a [IpAddr]>,
    pub(crate) client: IpAddr,
    pub(crate) user_agent: Option<&'a str>,
    pub(crate) sni: Option<&'a str>,
    pub(crate) user: Option<Identity<'a>>,
    /// `CONNECT` at CONNECT time.
    pub(crate) method: &'a str,
    /// `None` at CONNECT time.
    pub(crate) path: Option<&'a str>,
}

impl<'a> From<&ConnectFacts<'a>> for Facts<'a> {
    fn from(c: &ConnectFacts<'a>) -> Self {
        Facts {
            host: c.host,
            port: c.port,
            dest_ip: c.dest_ip,
            resolved: c.resolved,
            client: c.client,
            user_agent: c.user_agent,
            sni: c.sni,
            user: c.user,
            method: "CONNECT",
            path: None,
        }
    }
}

impl<'a> From<&RequestFacts<'a>> for Facts<'a> {
    fn from(r: &RequestFacts<'a>) -> Self {
        Facts {
            host: r.host,
            port: r.port,
            dest_ip: r.dest_ip,
            resolved: r.resolved,
            client: r.client,
            user_agent: r.user_agent,
            sni: r.sni,
            user: r.user,
            method: r.method,
            path: Some(r.path),
        }
    }
}
