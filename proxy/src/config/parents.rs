//! `[[upstream.parents]]`: parent proxies this proxy can chain to, and the checks that tie the
//! policy's `route` keys to them. Credentials never sit in the config text: the password is
//! read from `password_file` when the config is loaded (and again on every reload), and a
//! Kerberos ticket (`negotiate`) comes from the process's own credential cache or client keytab.

use std::path::PathBuf;

use portcullis_policy::route::is_parent_name;
use portcullis_policy::{Host, RawPolicy};
use serde::{Deserialize, Serialize};

use super::KeyError;

/// One parent proxy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParentConfig {
    /// What routes (`policy.default_route`, `policy.rules[].route`), logs and metrics call it.
    pub name: String,
    /// `host:port` of the parent's HTTP proxy listener (`[v6]:port` for IPv6 literals).
    pub address: String,
    /// Basic credentials for the parent: the user name. Needs `password_file`.
    #[serde(default)]
    pub user: Option<String>,
    /// File holding the password for `user` (its first line; a trailing newline is ignored).
    /// Read at start and on every reload, so rotating it needs no config change.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Authenticate to the parent with Kerberos (Negotiate) instead: a ticket for
    /// `service_principal` from the process's client credentials (`KRB5CCNAME`, or the client
    /// keytab `KRB5_CLIENT_KTNAME`).
    #[serde(default)]
    pub negotiate: bool,
    /// The parent's service as a host-based name; default `HTTP@<address host>`.
    #[serde(default)]
    pub service_principal: Option<String>,
}

impl ParentConfig {
    /// `address` split into host and port; validation has checked it parses.
    pub(crate) fn host_port(&self) -> Option<(Host, u16)> {
        split_address(&self.address).ok()
    }
}

fn split_address(address: &str) -> Result<(Host, u16), &'static str> {
    let (host, port) = address
        .rsplit_once(':')
        .ok_or("host:port (the port is required)")?;
    let port: u16 = port
        .parse()
        .map_err(|_| "the port is not a number 1-65535")?;
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if port == 0 || bare.is_empty() || bare.contains(|c: char| c.is_whitespace() || c == '/') {
        return Err("host:port with a host name or address and a port 1-65535");
    }
    if host.starts_with('[') != host.ends_with(']')
        || (!host.starts_with('[') && bare.contains(':'))
    {
        return Err("an IPv6 address goes in brackets: [2001:db8::1]:3128");
    }
    Ok((Host::new(host), port))
}

/// `HTTP@proxy.corp.example`: GSS-API's host-based service form, not a Kerberos principal.
fn is_host_based(name: &str) -> bool {
    name.split_once('@').is_some_and(|(service, host)| {
        !service.is_empty()
            && !host.is_empty()
            && !name.contains(|c: char| c == '/' || c.is_whitespace())
            && !host.contains('@')
    })
}

/// Each parent well-formed and named once; every route names configured parents.
pub(super) fn validate(parents: &[ParentConfig], policy: &RawPolicy) -> Result<(), KeyError> {
    for (i, p) in parents.iter().enumerate() {
        let key = |field: &str| format!("upstream.parents[{i}].{field}");
        if !is_parent_name(&p.name) || p.name == "direct" {
            return Err(KeyError::new(
                key("name"),
                format!(
                    "{:?}: letters, digits, '-', '_', '.' only, and not \"direct\"",
                    p.name
                ),
            ));
        }
        if parents[..i].iter().any(|q| q.name == p.name) {
            return Err(KeyError::new(
                key("name"),
                format!("{:?} is used twice", p.name),
            ));
        }
        if let Err(why) = split_address(&p.address) {
            return Err(KeyError::new(
                key("address"),
                format!("{:?}: {why}", p.address),
            ));
        }
        if p.negotiate && (p.user.is_some() || p.password_file.is_some()) {
            return Err(KeyError::new(
                key("negotiate"),
                "choose Basic (user, password_file) or negotiate, not both",
            ));
        }
        if p.negotiate && !cfg!(feature = "negotiate") {
            return Err(KeyError::new(
                key("negotiate"),
                "this build has no Negotiate support (feature `negotiate`)",
            ));
        }
        match &p.service_principal {
            Some(_) if !p.negotiate => {
                return Err(KeyError::new(
                    key("service_principal"),
                    "only used with negotiate = true",
                ))
            }
            Some(service) if !is_host_based(service) => {
                return Err(KeyError::new(
                    key("service_principal"),
                    format!(
                        "{service:?}: a host-based service name, service@host \
                         (\"HTTP@proxy.corp.example\" for HTTP/proxy.corp.example@REALM)"
                    ),
                ))
            }
            _ => {}
        }
        match (&p.user, &p.password_file) {
            (Some(user), Some(_)) if user.is_empty() || user.contains(':') => {
                return Err(KeyError::new(
                    key("user"),
                    "must be non-empty and without ':' (Basic credentials are user:password)",
                ))
            }
            (Some(_), None) => {
                return Err(KeyError::new(
                    key("password_file"),
                    "required when user is set",
                ))
            }
            (None, Some(_)) => {
                return Err(KeyError::new(
                    key("user"),
                    "required when password_file is set",
                ))
            }
            _ => {}
        }
    }
    let known = |name: &str| name == "direct" || parents.iter().any(|p| p.name == name);
    let mut routes = vec![
        ("policy.default_route".to_owned(), &policy.default_route),
        ("policy.outlook.route".to_owned(), &policy.outlook.route),
    ];
    for (i, rule) in policy.rules.iter().enumerate() {
        routes.push((format!("policy.rules[{i}].route"), &rule.route));
    }
    for (key, names) in routes {
        if let Some(name) = names.iter().find(|n| !known(n)) {
            return Err(KeyError::new(
                key,
                format!("no parent named {name:?} in [[upstream.parents]]"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert!(split_address("proxy.corp.example:3128").is_ok());
        assert!(split_address("[2001:db8::1]:8080").is_ok());
        for bad in [
            "proxy",
            "proxy:0",
            "proxy:x",
            ":3128",
            "2001:db8::1:3128",
            "[::1:3128",
        ] {
            assert!(split_address(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn host_based_service_names() {
        assert!(is_host_based("HTTP@proxy.corp.example"));
        for bad in [
            "HTTP/proxy.corp.example@CORP.EXAMPLE",
            "HTTP/proxy.corp.example",
            "proxy.corp.example",
            "@proxy",
            "HTTP@",
            "HTTP@a@b",
            "HTTP@proxy corp",
        ] {
            assert!(!is_host_based(bad), "{bad}");
        }
    }
}
