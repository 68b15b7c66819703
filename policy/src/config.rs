//! The `[policy]` section of the proxy's TOML file, as written: serde types only.
//!
//! These types accept what an admin can type and nothing more (`deny_unknown_fields`); whether the
//! values make sense (patterns parse, addresses are addresses, keys do not contradict each other)
//! is checked once by [`crate::Policy::compile`], which names the offending key. List-valued
//! conditions accept a single value too (`host = "*.example.com"`), because most rules have one.
//!
//! ```toml
//! [policy]
//! default = { action = "inspect" }
//! direct = ["*.corp.example.com"]        # PAC: DIRECT, never through the proxy
//!
//! [[policy.rules]]
//! name = "no-gambling"
//! host = ["*.casino.example", "~bet[0-9]*\\.example"]
//! action = "deny"
//! reason = "Gambling sites are blocked by company policy."
//!
//! [policy.outlook]
//! mode = "tunnel"                          # tunnel | inspect | off
//! exchange_hosts = ["mail.corp.example.com"]
//! accepted_domains = ["corp.example.com"]
//! ```

use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, Deserializer, IntoDeserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

use crate::decision::{AuthRequirement, TimeoutProfile};

/// The whole `[policy]` section.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawPolicy {
    /// What happens when no rule matches.
    pub default: RawDefault,
    /// Hosts clients reach without the proxy: the generated PAC file says `DIRECT` for them (the
    /// firewall must let them out). Same patterns as `rules[].host`, regexes excepted because a
    /// PAC file cannot evaluate Rust regexes.
    pub direct: Vec<String>,
    /// Ordered; the first rule whose conditions all match decides.
    pub rules: Vec<RawRule>,
    /// Where transactions go when the deciding rule sets no `route`: `"direct"` (the default),
    /// a parent's name from `[[upstream.parents]]`, or a list of names tried in order.
    #[serde(
        default,
        deserialize_with = "one_or_many",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub default_route: Vec<String>,
    /// The built-in Outlook / Exchange profile, evaluated after `rules`.
    pub outlook: RawOutlook,
    /// The generated `/proxy.pac`.
    pub pac: RawPac,
}

/// The decision when no rule matches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawDefault {
    /// `inspect` by default, matching `tls.inspect = true`: unknown destinations are where
    /// inspection earns its keep.
    pub action: ActionKind,
    /// Shown to the user when `action = "deny"`.
    pub reason: Option<String>,
    /// Authentication is required unless a rule exempts the destination.
    pub auth: AuthRequirement,
    pub timeouts: TimeoutProfile,
    pub log_tag: Option<String>,
    /// ICAP services (`[[icap.services]]` names, in order) that adapt requests and responses
    /// seen in clear (plain HTTP, inspected TLS) when no rule matches, or when the matching
    /// rule has no `icap` of its own. Empty: no adaptation.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub icap: Vec<String>,
}

impl Default for RawDefault {
    fn default() -> Self {
        RawDefault {
            action: ActionKind::Inspect,
            reason: None,
            auth: AuthRequirement::Required,
            timeouts: TimeoutProfile::Default,
            log_tag: None,
            icap: Vec::new(),
        }
    }
}

/// What a rule does, as written in the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionKind {
    /// Decrypt and inspect the TLS inside CONNECT tunnels.
    Inspect,
    /// Pass the tunnel through untouched.
    Tunnel,
    /// The PAC file sends clients directly; should a client come through the proxy anyway, the
    /// tunnel is passed through untouched.
    Direct,
    /// Refuse, showing `reason`.
    Deny,
}

/// One `[[policy.rules]]` entry. Conditions are ANDed; the values of one condition are ORed.
/// A condition the facts cannot answer (a `path` at CONNECT time, a `user` before
/// authentication, an `sni` before the ClientHello) does not match.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    /// Used in logs, metrics and `policy explain`; defaults to `rules[<index>]`.
    #[serde(default)]
    pub name: Option<String>,
    /// Destination name: `host`, `*.suffix`, `prefix.*` or `~regex`. At CONNECT time the
    /// CONNECT target (what is dialled), for requests the URL host; never the SNI.
    #[serde(
        default,
        deserialize_with = "one_or_many",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub host: Vec<String>,
    /// Destination address or CIDR; matches CONNECTs to bare IPs (or resolved addresses when the
    /// caller supplies them).
    #[serde(
        default,
        deserialize_with = "one_or_many",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub dest_ip: Vec<String>,
    /// Destination port: `443` or `"8000-8100"`.
    #[serde(
        default,
        deserialize_with = "one_or_many",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub port: Vec<RawPort>,
    /// TLS server name from the ClientHello, same patterns as `host`.
    #[serde(
        default,
        deserialize_with = "one_or_many",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub sni: Vec<String>,
    /// HTTP method (case-insensitive); `CONNECT` matches at CONNECT time.
    #[serde(
        default,
        deserialize_with = "one_or_many",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub method: Vec<String>,
    /// URL path prefix, ASCII case-insensitive because IIS (Exchange) paths are.
    #[serde(
        default,
        deserialize_with = "one_or_many",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub path: Vec<String>,
    /// Case-insensitive substring, or `~regex` (unanchored).
    #[serde(
        default,
        deserialize_with = "one_or_many",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub user_agent: Vec<String>,
    /// Client source address or CIDR.
    #[serde(
        default,
        deserialize_with = "one_or_many",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub client: Vec<String>,
    /// Authenticated user name (case-insensitive).
    #[serde(
        default,
        deserialize_with = "one_or_many",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub user: Vec<String>,
    /// Group of the authenticated user (case-insensitive).
    #[serde(
        default,
        deserialize_with = "one_or_many",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub group: Vec<String>,
    pub action: ActionKind,
    /// Shown to the user when `action = "deny"` (required then).
    #[serde(default)]
    pub reason: Option<String>,
    /// Unset: the default's.
    #[serde(default)]
    pub auth: Option<AuthRequirement>,
    /// Unset: `long_poll` for Exchange requests, else the default's.
    #[serde(default)]
    pub timeouts: Option<TimeoutProfile>,
    /// Copied into the access log and the decision.
    #[serde(default)]
    pub log_tag: Option<String>,
    /// `"direct"`, a parent's name, or parents in failover order. Unset: `policy.default_route`.
    #[serde(
        default,
        deserialize_with = "one_or_many",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub route: Vec<String>,
    /// ICAP services for the traffic this rule decides, replacing `policy.default.icap`;
    /// `[]` turns adaptation off for it. Unset: the default's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icap: Option<Vec<String>>,
}

/// A port condition value: `443` or `"8000-8100"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RawPort {
    Number(u16),
    Range(String),
}

/// The built-in Outlook / Exchange profile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawOutlook {
    /// `tunnel` by default: Microsoft says Optimize and Allow endpoints must not be TLS-inspected
    /// (login loops, broken WebSockets, SChannel trust failures). `off` removes the profile.
    pub mode: OutlookMode,
    /// `exempt` by default: Outlook's no-UI network stacks cannot answer a proxy's Basic
    /// challenge, and Microsoft calls proxy auth incompatible with those endpoints.
    pub auth: AuthRequirement,
    /// Internal Exchange names (`mail.corp.example.com`), same patterns as `rules[].host`.
    pub exchange_hosts: Vec<String>,
    /// SMTP domains; `autodiscover.<domain>` joins the Exchange hosts.
    pub accepted_domains: Vec<String>,
    /// A CONNECT carrying Outlook's User-Agent to a host no rule knows. `inspect` by default:
    /// a User-Agent is trivially forged, so it earns neither an exemption from authentication
    /// (authentication always follows the default) nor, unless chosen here, a way around
    /// inspection. `tunnel` is an explicit choice: it lets any authenticated user relay
    /// anything uninspected by sending Outlook's User-Agent.
    pub unknown_host_from_outlook_ua: UnknownUaAction,
    /// Microsoft 365 endpoint-feed service areas turned into rules (`Common` is always in the
    /// feed, but is only used when listed here).
    pub m365_service_areas: Vec<String>,
    /// Feed categories turned into rules; `Default` endpoints are ordinary Internet traffic.
    pub m365_categories: Vec<M365Category>,
    /// Where the profile's traffic goes. `direct` by default: Microsoft's advice is to send
    /// Optimize and Allow endpoints straight out, not through further proxies. A rule in
    /// `policy.rules` that matches first (with its own `route`) still wins.
    #[serde(
        deserialize_with = "one_or_many",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub route: Vec<String>,
}

impl Default for RawOutlook {
    fn default() -> Self {
        RawOutlook {
            mode: OutlookMode::Tunnel,
            auth: AuthRequirement::Exempt,
            exchange_hosts: Vec::new(),
            accepted_domains: Vec::new(),
            unknown_host_from_outlook_ua: UnknownUaAction::Inspect,
            m365_service_areas: vec!["Exchange".to_owned(), "Common".to_owned()],
            m365_categories: vec![M365Category::Optimize, M365Category::Allow],
            route: Vec::new(),
        }
    }
}

/// How the Outlook profile treats its endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutlookMode {
    Tunnel,
    /// For sites that must inspect everything despite Microsoft's advice.
    Inspect,
    Off,
}

/// What `unknown_host_from_outlook_ua` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnknownUaAction {
    /// Relay untouched: a bypass of inspection for every authenticated user who sends
    /// Outlook's User-Agent.
    Tunnel,
    Inspect,
}

/// Microsoft 365 endpoint categories (`category` in the feed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum M365Category {
    Optimize,
    Allow,
    Default,
}

/// The generated PAC file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawPac {
    /// `host:port` clients use to reach the proxy. Unset: the caller's default (its listener).
    pub proxy: Option<String>,
    /// Single-label names (`intranet`) are local by convention and go DIRECT.
    pub plain_hostnames_direct: bool,
    /// Append `; DIRECT` so that clients still work when the proxy is down. Off by default
    /// because it silently bypasses the proxy's policy.
    pub fallback_direct: bool,
}

impl Default for RawPac {
    fn default() -> Self {
        RawPac {
            proxy: None,
            plain_hostnames_direct: true,
            fallback_direct: false,
        }
    }
}

/// Accepts `x` or `[x, y]` for list-valued keys, with the element type's own error messages.
fn one_or_many<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct OneOrMany<T>(PhantomData<T>);

    impl<'de, T: Deserialize<'de>> Visitor<'de> for OneOrMany<T> {
        type Value = Vec<T>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a value or a list of values")
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Vec<T>, E> {
            T::deserialize(v.into_deserializer()).map(|one| vec![one])
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Vec<T>, E> {
            T::deserialize(v.into_deserializer()).map(|one| vec![one])
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Vec<T>, E> {
            T::deserialize(v.into_deserializer()).map(|one| vec![one])
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0));
            while let Some(item) = seq.next_element()? {
                out.push(item);
            }
            Ok(out)
        }
    }

    deserializer.deserialize_any(OneOrMany(PhantomData))
}
