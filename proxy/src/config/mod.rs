//! The configuration file model: one serde struct per TOML section.
//!
//! Every struct rejects unknown keys and has defaults, so an empty file (or no file at all) is a
//! valid configuration: a proxy listening on 127.0.0.1:3128. Errors name the file, the key path
//! (`server.listen[0]`) and the reason.
//!
//! Everything is parsed once, by [`Config::parse`]: durations, addresses, the leaf key algorithm
//! and host patterns into their types while the file is read, the `[policy]` section compiled
//! by validation and kept. Nothing downstream parses a config value again.

mod auth;
mod error;
mod groups;
mod icap;
mod parents;
mod redact;
mod sections;
mod tls;
mod upgrade;
mod validate;

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use portcullis_policy::m365::EndpointSet;
use portcullis_policy::{Policy, RawPolicy};
use serde::{Deserialize, Serialize};

#[cfg(feature = "negotiate")]
pub(crate) use auth::NegotiateConfig;
pub(crate) use auth::{AuthConfig, AuthScheme};
pub(crate) use error::{ConfigError, KeyError};
#[cfg(feature = "negotiate")]
pub(crate) use groups::ldap_url_host;
pub(crate) use groups::{GroupSourceKind, GroupsConfig, LdapConfig, Membership, SaslMechanism};
pub(crate) use icap::{IcapConfig, IcapMethod, IcapUrl};
pub(crate) use parents::ParentConfig;
pub(crate) use sections::{
    AccessLogConfig, AccessLogFormat, AdminConfig, AdminListen, ForwardedFor, LogConfig, LogFormat,
    M365Config, ServerConfig, Timeouts, TransparentAuth, UpstreamConfig, DEFAULT_READ_BUFFER_BYTES,
};
pub(crate) use tls::TlsConfig;
pub(crate) use upgrade::UpgradeProtocol;

/// The embedded default configuration, used when `portcullis run` gets no `--config`.
pub(crate) const DEFAULT_CONFIG_TOML: &str =
    include_str!("../../../deploy/portcullis.default.toml");

/// The whole configuration file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub timeouts: Timeouts,
    pub upstream: UpstreamConfig,
    /// Static name → addresses map, consulted before `upstream.hosts_file` and the system
    /// resolver. Test labs use it to point real names (outlook.office365.com) at lab servers.
    pub resolve: BTreeMap<String, Vec<IpAddr>>,
    pub access_log: AccessLogConfig,
    pub log: LogConfig,
    /// Firewall rules rendered by `portcullis netfilter`: mail, LDAP, DNS and Kerberos pass
    /// directly, web only through the proxy. Lives in the proxy config so that the rules and
    /// the proxy agree on its listening ports.
    pub netfilter: portcullis_policy::netfilter::NetfilterConfig,
    pub auth: AuthConfig,
    pub tls: TlsConfig,
    /// Which destinations are inspected, tunnelled untouched or refused, which need proxy
    /// authentication, and which get Outlook's long timeouts; includes the built-in Outlook /
    /// Exchange profile (`[policy.outlook]`) and the PAC file settings (`[policy.pac]`).
    pub policy: RawPolicy,
    /// The Microsoft 365 endpoints web service, whose Exchange/Common Optimize and Allow sets
    /// become tunnel/auth-exempt rules of the Outlook profile.
    pub m365: M365Config,
    /// Content adaptation services (ICAP, RFC 3507): antivirus, DLP. Which traffic they see is
    /// the policy's `icap` lists.
    pub icap: IcapConfig,
    pub admin: AdminConfig,
    /// What [`Config::parse`] derived while validating, so that nothing derives it again.
    #[serde(skip)]
    validated: Validated,
}

/// What validation derived from a [`Config`]: where it was read from, and its `[policy]`
/// compiled.
///
/// Derived data, so it takes no part in serialisation or comparison: two configs with the same
/// values are equal wherever they were read from.
#[derive(Clone)]
struct Validated {
    /// The file the config was read from, to name it in errors found later.
    origin: String,
    /// `policy` as compiled by validation, with the section it was compiled from: a config
    /// whose `policy` was changed since is compiled afresh.
    policy: Option<(RawPolicy, Arc<Policy>)>,
}

impl Default for Validated {
    fn default() -> Self {
        Validated {
            origin: "<built-in defaults>".to_owned(),
            policy: None,
        }
    }
}

impl PartialEq for Validated {
    fn eq(&self, _: &Validated) -> bool {
        true
    }
}

/// Without the compiled policy, which would swamp any printed config.
impl fmt::Debug for Validated {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Validated")
            .field("origin", &self.origin)
            .field("policy_compiled", &self.policy.is_some())
            .finish()
    }
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            file: path.display().to_string(),
            error,
        })?;
        Config::parse(&text, &path.display().to_string())
    }

    /// The embedded default configuration.
    pub fn embedded_default() -> Result<Config, ConfigError> {
        Config::parse(DEFAULT_CONFIG_TOML, "<embedded default>")
    }

    /// Parses and validates TOML text; `origin` names the source in errors. Values are parsed
    /// into their types and the policy is compiled here, once.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let mut config = deserialize(text).map_err(|e| ConfigError::invalid(origin, e))?;
        config
            .validate()
            .map_err(|e| ConfigError::invalid(origin, e))?;
        let policy =
            Policy::compile(&config.policy).map_err(|e| ConfigError::invalid(origin, e))?;
        config.validated = Validated {
            origin: origin.to_owned(),
            policy: Some((config.policy.clone(), Arc::new(policy))),
        };
        Ok(config)
    }

    /// The compiled `[policy]` with the Microsoft 365 endpoint `sets` merged in.
    ///
    /// Without sets this is the policy [`Config::parse`] compiled. Sets come from the data
    /// directory rather than the file, so with them the policy is compiled again. Errors name
    /// the file and the key (`policy.rules[3].host`).
    pub fn compiled_policy(&self, sets: &[EndpointSet]) -> Result<Arc<Policy>, ConfigError> {
        let validated = self.validated.policy.as_ref();
        if let Some((_, policy)) =
            validated.filter(|(raw, _)| sets.is_empty() && *raw == self.policy)
        {
            return Ok(Arc::clone(policy));
        }
        Policy::compile_with_m365(&self.policy, sets)
            .map(Arc::new)
            .map_err(|e| ConfigError::invalid(&self.validated.origin, e))
    }

    /// The file this config was read from (`<embedded default>` for the built-in one), to name
    /// it in errors found after parsing, such as a missing htpasswd file.
    pub(crate) fn origin(&self) -> &str {
        &self.validated.origin
    }

    /// The effective configuration as TOML (for `check-config`).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
    }
}

/// The TOML text as a [`Config`], not yet validated. Errors name the key path and the line.
fn deserialize(text: &str) -> Result<Config, KeyError> {
    let de = toml::Deserializer::new(text);
    serde_path_to_error::deserialize(de).map_err(|err| {
        let key = err.path().to_string();
        let inner = err.into_inner();
        let line = inner
            .span()
            .map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1);
        let mut reason = one_line(inner.message());
        if let Some(line) = line {
            reason.push_str(&format!(" (line {line})"));
        }
        let key = if key == "." {
            "(top level)".to_owned()
        } else {
            key
        };
        KeyError::new(key, reason)
    })
}

fn one_line(s: &str) -> String {
    s.split('\n')
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" | ")
}

#[cfg(test)]
mod tests;
