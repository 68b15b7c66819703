//! The `[auth]` section: proxy authentication.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Proxy authentication. Off unless `schemes` names at least one scheme.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Enabled schemes, e.g. `["negotiate", "ntlm", "basic"]`, offered by the 407 in this order
    /// (clients take the first they support).
    pub schemes: Vec<AuthScheme>,
    /// The Basic realm shown in the browser's login prompt.
    pub realm: String,
    /// htpasswd file for Basic (bcrypt, apr1, {SHA}, $5$, $6$, $1$); reloaded when it changes.
    pub htpasswd: Option<PathBuf>,
    /// How long verified Basic credentials are remembered (so bcrypt does not run per request).
    #[serde(with = "humantime_serde")]
    pub credentials_ttl: Duration,
    /// Client networks that need no authentication (destinations are exempted by the policy:
    /// `auth = "exempt"` on a rule, and the Outlook profile).
    pub exempt_clients: Vec<ipnet::IpNet>,
    pub negotiate: NegotiateConfig,
    pub throttle: ThrottleConfig,
    /// Group membership for `group` rules (issue 20).
    pub groups: super::groups::GroupsConfig,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            schemes: Vec::new(),
            realm: "Portcullis proxy".to_owned(),
            htpasswd: None,
            credentials_ttl: Duration::from_secs(300),
            exempt_clients: Vec::new(),
            negotiate: NegotiateConfig::default(),
            throttle: ThrottleConfig::default(),
            groups: super::groups::GroupsConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthScheme {
    Basic,
    Negotiate,
    /// NTLM through GSS-API's NTLMSSP mechanism (Debian `gss-ntlmssp`), bare or inside
    /// Negotiate.
    Ntlm,
}

/// Kerberos acceptor settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NegotiateConfig {
    /// Keytab with the proxy's `HTTP/<fqdn>` key; without it, `KRB5_KTNAME` or the system
    /// default keytab is used.
    pub keytab: Option<PathBuf>,
    /// Accept only tickets for this principal (`HTTP/proxy.example.com@EXAMPLE.COM`); without
    /// it, tickets for any principal in the keytab are accepted.
    pub service_principal: Option<String>,
    /// Log and match users as `alice` instead of `alice@EXAMPLE.COM` (NTLM: instead of
    /// `alice@DOMAIN`, from `DOMAIN\alice`).
    pub strip_realm: bool,
}

/// Slowing down clients that keep failing authentication.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ThrottleConfig {
    /// Failures allowed per client address, or per user name, within `window` before answers
    /// are delayed.
    pub failures: u32,
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// The longest delay; delays start at 100 ms and double per further failure.
    #[serde(with = "humantime_serde")]
    pub max_delay: Duration,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        ThrottleConfig {
            failures: 5,
            window: Duration::from_secs(60),
            max_delay: Duration::from_secs(5),
        }
    }
}
