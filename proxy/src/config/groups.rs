//! `[auth.groups]`: where the groups of an authenticated user come from, for `group` rules.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::KeyError;

/// Group sources, asked in the order of `sources`; a user's groups are the union of their
/// answers. Off unless `sources` names one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GroupsConfig {
    /// `["file"]`, `["ldap"]` or both, in the order they are asked.
    pub sources: Vec<GroupSourceKind>,
    /// Apache `AuthGroupFile` format (`group: user1 user2`); re-read when it changes.
    pub file: Option<PathBuf>,
    /// How long a directory answer is fresh; an older one is still used while a background
    /// lookup refreshes it, so no request waits on the directory when an answer is cached.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// The longest a request waits for the directory when no answer is cached; after it, the
    /// user has no directory groups for this request (a `group` rule does not match).
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    pub ldap: Option<LdapConfig>,
}

impl Default for GroupsConfig {
    fn default() -> Self {
        GroupsConfig {
            sources: Vec::new(),
            file: None,
            ttl: Duration::from_secs(300),
            timeout: Duration::from_secs(3),
            ldap: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GroupSourceKind {
    File,
    Ldap,
}

/// How membership is read from the directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Membership {
    /// Active Directory: groups whose members include the user, nested groups too, in one
    /// search (`LDAP_MATCHING_RULE_IN_CHAIN`, 1.2.840.113556.1.4.1941).
    AdInChain,
    /// Any directory: `group_filter` (`(member={dn})`) searched under `group_base_dn`, repeated
    /// for each group found (nested groups), with a visited set against cycles.
    GroupFilter,
}

/// A SASL mechanism for binding to the directory, instead of a simple bind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SaslMechanism {
    /// Kerberos: the process's client credentials (`KRB5CCNAME`, or the client keytab
    /// `KRB5_CLIENT_KTNAME`) get a ticket for `ldap/<host>`, so no password is stored.
    Gssapi,
}

/// `[auth.groups.ldap]`: an LDAP or Active Directory server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LdapConfig {
    /// `ldap://` or `ldaps://` URLs, tried in order (failover).
    pub urls: Vec<String>,
    /// Upgrade `ldap://` connections with StartTLS before binding.
    pub starttls: bool,
    /// PEM CA certificates trusted for LDAPS/StartTLS, instead of the system's.
    pub ca_file: Option<PathBuf>,
    /// Simple bind as this DN (with `bind_password_file`); without it (and without `sasl`), an
    /// anonymous bind.
    pub bind_dn: Option<String>,
    /// File holding the bind password (one line; trailing newline ignored).
    pub bind_password_file: Option<PathBuf>,
    /// `"gssapi"`: a SASL GSSAPI (Kerberos) bind with the process's client credentials,
    /// instead of `bind_dn` and a password kept on disk.
    pub sasl: Option<SaslMechanism>,
    /// The host in the directory's Kerberos principal `ldap/<host>` (`sasl = "gssapi"`);
    /// default: the host of each URL, which must then be the name the principal has (not an
    /// IP address, which Active Directory has no principal for).
    pub sasl_host: Option<String>,
    /// Where users are searched.
    pub base_dn: String,
    /// Finds the user's entry; `{user}` is the account name (no realm or domain), escaped.
    pub user_filter: String,
    pub membership: Membership,
    /// Where groups are searched (`group-filter`, and `ad-in-chain`); defaults to `base_dn`.
    pub group_base_dn: Option<String>,
    /// `group-filter` membership: `{dn}` is a DN whose groups are wanted, escaped.
    pub group_filter: String,
    /// Dial plus bind deadline per server; the next URL is tried after it.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
}

impl Default for LdapConfig {
    fn default() -> Self {
        LdapConfig {
            urls: Vec::new(),
            starttls: false,
            ca_file: None,
            bind_dn: None,
            bind_password_file: None,
            sasl: None,
            sasl_host: None,
            base_dn: String::new(),
            user_filter: "(sAMAccountName={user})".to_owned(),
            membership: Membership::AdInChain,
            group_base_dn: None,
            group_filter: "(member={dn})".to_owned(),
            connect_timeout: Duration::from_secs(2),
        }
    }
}

/// The host of an `ldap://` or `ldaps://` URL, without port or IPv6 brackets; `None` when the
/// URL has none (`ldap:///`).
pub(crate) fn ldap_url_host(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?']).next()?;
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next()?,
        None => authority
            .rsplit_once(':')
            .map_or(authority, |(host, _)| host),
    };
    (!host.is_empty()).then_some(host)
}

/// Checks `[auth.groups]` for contradictions; errors name the key.
pub(super) fn validate(groups: &GroupsConfig) -> Result<(), KeyError> {
    let key = |k: &str| format!("auth.groups.{k}");
    for (i, kind) in groups.sources.iter().enumerate() {
        if groups.sources[..i].contains(kind) {
            return Err(KeyError::new(
                key("sources"),
                format!("{kind:?} is listed twice"),
            ));
        }
    }
    if groups.sources.contains(&GroupSourceKind::File) && groups.file.is_none() {
        return Err(KeyError::new(
            key("file"),
            "the \"file\" source needs a group file",
        ));
    }
    if groups.ttl.is_zero() {
        return Err(KeyError::new(key("ttl"), "must be longer than zero"));
    }
    if groups.timeout.is_zero() || groups.timeout > Duration::from_secs(30) {
        return Err(KeyError::new(key("timeout"), "must be between 1ms and 30s"));
    }
    if !groups.sources.contains(&GroupSourceKind::Ldap) {
        return Ok(());
    }
    let Some(ldap) = &groups.ldap else {
        return Err(KeyError::new(
            key("ldap"),
            "the \"ldap\" source needs an [auth.groups.ldap] section",
        ));
    };
    validate_ldap(ldap)
}

fn validate_ldap(ldap: &LdapConfig) -> Result<(), KeyError> {
    let key = |k: &str| format!("auth.groups.ldap.{k}");
    if ldap.urls.is_empty() {
        return Err(KeyError::new(
            key("urls"),
            "needs at least one ldap:// or ldaps:// URL",
        ));
    }
    for (i, url) in ldap.urls.iter().enumerate() {
        if !(url.starts_with("ldap://") || url.starts_with("ldaps://")) {
            return Err(KeyError::new(
                format!("auth.groups.ldap.urls[{i}]"),
                format!("{url:?} is not an ldap:// or ldaps:// URL"),
            ));
        }
        if ldap.starttls && url.starts_with("ldaps://") {
            return Err(KeyError::new(
                format!("auth.groups.ldap.urls[{i}]"),
                "starttls is for ldap:// URLs; ldaps:// is TLS already",
            ));
        }
    }
    if ldap.base_dn.trim().is_empty() {
        return Err(KeyError::new(
            key("base_dn"),
            "must name where users are searched",
        ));
    }
    if !ldap.user_filter.contains("{user}") {
        return Err(KeyError::new(key("user_filter"), "must contain {user}"));
    }
    if ldap.membership == Membership::GroupFilter && !ldap.group_filter.contains("{dn}") {
        return Err(KeyError::new(key("group_filter"), "must contain {dn}"));
    }
    if ldap.bind_dn.is_some() != ldap.bind_password_file.is_some() {
        return Err(KeyError::new(
            key("bind_password_file"),
            "bind_dn and bind_password_file go together",
        ));
    }
    if ldap.sasl.is_some() && ldap.bind_dn.is_some() {
        return Err(KeyError::new(
            key("sasl"),
            "a SASL bind uses the process's Kerberos credentials, not bind_dn and \
             bind_password_file; remove one or the other",
        ));
    }
    if let Some(host) = &ldap.sasl_host {
        if ldap.sasl.is_none() {
            return Err(KeyError::new(
                key("sasl_host"),
                "only used with sasl = \"gssapi\"",
            ));
        }
        if host.is_empty() || host.contains(['/', '@', ':', ' ']) {
            return Err(KeyError::new(
                key("sasl_host"),
                format!("{host:?} is not a host name (the principal is ldap/<sasl_host>)"),
            ));
        }
    }
    if ldap.sasl.is_some() && ldap.sasl_host.is_none() {
        if let Some(i) = ldap.urls.iter().position(|u| ldap_url_host(u).is_none()) {
            return Err(KeyError::new(
                format!("auth.groups.ldap.urls[{i}]"),
                "has no host to name the directory's principal ldap/<host>; set sasl_host",
            ));
        }
    }
    if ldap.connect_timeout.is_zero() {
        return Err(KeyError::new(
            key("connect_timeout"),
            "must be longer than zero",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    #[test]
    fn ldap_url_hosts() {
        for (url, host) in [
            ("ldap://dc1.example.com", Some("dc1.example.com")),
            ("ldaps://dc1.example.com:636/", Some("dc1.example.com")),
            ("ldap://localhost:3389/dc=x?uid", Some("localhost")),
            ("ldap://[::1]:389", Some("::1")),
            ("ldap:///", None),
            ("ldap://:389", None),
        ] {
            assert_eq!(super::ldap_url_host(url), host, "{url}");
        }
    }

    /// Contradictions in `[auth.groups]` are refused at load, naming the key.
    #[test]
    fn bad_group_settings_name_their_key() {
        let ldap = "[auth.groups.ldap]\nurls = [\"ldap://dc\"]\nbase_dn = \"dc=x\"\n";
        for (text, key) in [
            ("[auth.groups]\nsources = [\"file\"]\n", "auth.groups.file"),
            ("[auth.groups]\nsources = [\"file\", \"file\"]\nfile = \"g\"\n", "auth.groups.sources"),
            ("[auth.groups]\nsources = [\"ldap\"]\n", "auth.groups.ldap"),
            ("[auth.groups]\nsources = [\"nis\"]\n", "auth.groups.sources"),
            ("[auth.groups]\nsources = [\"file\"]\nfile = \"g\"\nttl = \"0s\"\n", "auth.groups.ttl"),
            ("[auth.groups]\nsources = [\"file\"]\nfile = \"g\"\ntimeout = \"5m\"\n", "auth.groups.timeout"),
            ("[auth.groups]\nsources = [\"ldap\"]\n[auth.groups.ldap]\nbase_dn = \"dc=x\"\n", "auth.groups.ldap.urls"),
            ("[auth.groups]\nsources = [\"ldap\"]\n[auth.groups.ldap]\nurls = [\"http://dc\"]\nbase_dn = \"dc=x\"\n", "auth.groups.ldap.urls[0]"),
            ("[auth.groups]\nsources = [\"ldap\"]\n[auth.groups.ldap]\nurls = [\"ldaps://dc\"]\nstarttls = true\nbase_dn = \"dc=x\"\n", "auth.groups.ldap.urls[0]"),
            ("[auth.groups]\nsources = [\"ldap\"]\n[auth.groups.ldap]\nurls = [\"ldap://dc\"]\n", "auth.groups.ldap.base_dn"),
            (&format!("[auth.groups]\nsources = [\"ldap\"]\n{ldap}user_filter = \"(uid=alice)\"\n"), "auth.groups.ldap.user_filter"),
            (&format!("[auth.groups]\nsources = [\"ldap\"]\n{ldap}membership = \"group-filter\"\ngroup_filter = \"(member=x)\"\n"), "auth.groups.ldap.group_filter"),
            (&format!("[auth.groups]\nsources = [\"ldap\"]\n{ldap}bind_dn = \"cn=svc\"\n"), "auth.groups.ldap.bind_password_file"),
            (&format!("[auth.groups]\nsources = [\"ldap\"]\n{ldap}password = \"x\"\n"), "auth.groups.ldap"),
            (&format!("[auth.groups]\nsources = [\"ldap\"]\n{ldap}sasl = \"gssapi\"\nbind_dn = \"cn=svc\"\nbind_password_file = \"pw\"\n"), "auth.groups.ldap.sasl"),
            (&format!("[auth.groups]\nsources = [\"ldap\"]\n{ldap}sasl = \"digest-md5\"\n"), "auth.groups.ldap.sasl"),
            (&format!("[auth.groups]\nsources = [\"ldap\"]\n{ldap}sasl_host = \"dc1.example.com\"\n"), "auth.groups.ldap.sasl_host"),
            (&format!("[auth.groups]\nsources = [\"ldap\"]\n{ldap}sasl = \"gssapi\"\nsasl_host = \"ldap/dc1\"\n"), "auth.groups.ldap.sasl_host"),
            ("[auth.groups]\nsources = [\"ldap\"]\n[auth.groups.ldap]\nurls = [\"ldap://dc\", \"ldap:///\"]\nbase_dn = \"dc=x\"\nsasl = \"gssapi\"\n", "auth.groups.ldap.urls[1]"),
        ] {
            let err = match Config::parse(text, "t") {
                Ok(_) => panic!("accepted: {text}"),
                Err(e) => e.to_string(),
            };
            assert!(err.contains(&format!("`{key}")), "{key}: {err}");
        }
        let ok = format!("[auth.groups]\nsources = [\"ldap\", \"file\"]\nfile = \"g\"\n{ldap}");
        assert!(Config::parse(&ok, "t").is_ok());
        let gssapi = format!(
            "[auth.groups]\nsources = [\"ldap\"]\n{ldap}sasl = \"gssapi\"\nsasl_host = \"dc1.example.com\"\n"
        );
        let config = match Config::parse(&gssapi, "t") {
            Ok(config) => config,
            Err(e) => panic!("{e}"),
        };
        let ldap = config
            .auth
            .groups
            .ldap
            .as_ref()
            .map(|l| (l.sasl, l.sasl_host.as_deref()));
        assert_eq!(
            ldap,
            Some((Some(super::SaslMechanism::Gssapi), Some("dc1.example.com")))
        );
    }
}
