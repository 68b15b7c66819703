//! Checks serde cannot express: ranges, cross-field rules, values parsed by other crates. One
//! function per section; each error names the offending key.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use super::{
    AdminConfig, AuthConfig, AuthScheme, Config, KeyError, LogConfig, M365Config, ServerConfig,
    Timeouts, TlsConfig,
};

impl Config {
    /// Cross-field checks serde cannot express; the first failure names its key.
    pub(super) fn validate(&self) -> Result<(), KeyError> {
        validate_server(&self.server)?;
        validate_timeouts(&self.timeouts)?;
        validate_resolve(&self.resolve)?;
        validate_auth(&self.auth)?;
        validate_tls(&self.tls)?;
        validate_m365(&self.m365)?;
        validate_admin(&self.admin, &self.server)?;
        validate_upstream(&self.upstream)?;
        super::parents::validate(&self.upstream.parents, &self.policy)?;
        super::icap::validate(&self.icap, &self.policy)?;
        validate_log(&self.log)
    }
}

fn validate_upstream(u: &super::UpstreamConfig) -> Result<(), KeyError> {
    // The buffer must hold a response head as large as Squid's default limit (64 KB).
    if !(64 * 1024..=16 * 1024 * 1024).contains(&u.read_buffer_bytes) {
        return Err(KeyError::new(
            "upstream.read_buffer_bytes",
            format!("{} is outside 65536..=16777216", u.read_buffer_bytes),
        ));
    }
    Ok(())
}

fn validate_server(s: &ServerConfig) -> Result<(), KeyError> {
    if s.listen.is_empty() {
        return Err(KeyError::new(
            "server.listen",
            "at least one listen address is required",
        ));
    }
    // hyper cannot parse a request head in a buffer smaller than 8 KiB.
    if !(8192..=16 * 1024 * 1024).contains(&s.max_header_bytes) {
        return Err(KeyError::new(
            "server.max_header_bytes",
            format!("{} is outside 8192..=16777216", s.max_header_bytes),
        ));
    }
    if s.max_headers == 0 {
        return Err(KeyError::new("server.max_headers", "must be at least 1"));
    }
    if !s.proxy_protocol_listen.is_empty() && s.proxy_protocol_trusted.is_empty() {
        return Err(KeyError::new(
            "server.proxy_protocol_trusted",
            "must name the load balancers' networks when server.proxy_protocol_listen is set \
             (otherwise any client could claim any address)",
        ));
    }
    if s.max_connections == 0 {
        return Err(KeyError::new(
            "server.max_connections",
            "must be at least 1",
        ));
    }
    if s.listen_backlog == 0 || s.listen_backlog > i32::MAX as u32 {
        return Err(KeyError::new(
            "server.listen_backlog",
            format!("{} is outside 1..=2147483647", s.listen_backlog),
        ));
    }
    if s.via_pseudonym.is_empty()
        || !s
            .via_pseudonym
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b',')
    {
        return Err(KeyError::new(
            "server.via_pseudonym",
            "must be a non-empty token without spaces or commas",
        ));
    }
    if s.connect_ports.contains(&0) {
        return Err(KeyError::new(
            "server.connect_ports",
            "port 0 is not a valid port",
        ));
    }
    Ok(())
}

fn validate_timeouts(t: &Timeouts) -> Result<(), KeyError> {
    for (key, value) in [
        ("timeouts.client_header", t.client_header),
        ("timeouts.client_idle", t.client_idle),
        ("timeouts.upstream_connect", t.upstream_connect),
        ("timeouts.upstream_response", t.upstream_response),
        ("timeouts.tunnel_idle", t.tunnel_idle),
        ("timeouts.long_poll_idle", t.long_poll_idle),
    ] {
        if value.is_zero() {
            return Err(KeyError::new(key, "must be greater than zero"));
        }
    }
    Ok(())
}

fn validate_resolve(resolve: &BTreeMap<String, Vec<IpAddr>>) -> Result<(), KeyError> {
    match resolve.iter().find(|(_, addrs)| addrs.is_empty()) {
        Some((name, _)) => Err(KeyError::new(
            "resolve",
            format!("entry {name:?} has no addresses"),
        )),
        None => Ok(()),
    }
}

fn validate_auth(auth: &AuthConfig) -> Result<(), KeyError> {
    if auth.schemes.contains(&AuthScheme::Basic) && auth.htpasswd.is_none() {
        return Err(KeyError::new(
            "auth.htpasswd",
            "Basic authentication needs an htpasswd file",
        ));
    }
    super::groups::validate(&auth.groups)
}

fn validate_tls(tls: &TlsConfig) -> Result<(), KeyError> {
    if tls.cert_cache_size == 0 {
        return Err(KeyError::new("tls.cert_cache_size", "must be at least 1"));
    }
    Ok(())
}

fn validate_m365(m365: &M365Config) -> Result<(), KeyError> {
    if !(m365.url.starts_with("https://") || m365.url.starts_with("http://"))
        || m365.url.parse::<http::Uri>().is_err()
    {
        return Err(KeyError::new(
            "m365.url",
            format!("{:?} is not an http(s) URL", m365.url),
        ));
    }
    if m365.instance.is_empty() || !m365.instance.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(KeyError::new(
            "m365.instance",
            "must be a name such as Worldwide",
        ));
    }
    // Microsoft's service throttles eager clients (429); a local mirror may be asked more often.
    if m365.check_interval < Duration::from_secs(3600) && m365.url.contains("endpoints.office.com")
    {
        return Err(KeyError::new(
            "m365.check_interval",
            "Microsoft's endpoints service must not be asked more than hourly",
        ));
    }
    if m365.check_interval.is_zero() {
        return Err(KeyError::new(
            "m365.check_interval",
            "must be greater than zero",
        ));
    }
    Ok(())
}

fn validate_admin(admin: &AdminConfig, server: &ServerConfig) -> Result<(), KeyError> {
    if admin.enabled && server.listen.iter().any(|l| same_socket(*l, admin.listen)) {
        return Err(KeyError::new(
            "admin.listen",
            format!(
                "{} is also a proxy listener; the admin endpoints need their own address",
                admin.listen
            ),
        ));
    }
    Ok(())
}

fn validate_log(log: &LogConfig) -> Result<(), KeyError> {
    if tracing_subscriber::EnvFilter::try_new(&log.level).is_err() {
        return Err(KeyError::new(
            "log.level",
            format!("{:?} is not a valid log filter", log.level),
        ));
    }
    Ok(())
}

/// Two socket addresses that cannot both be bound: the same port, and the same IP or either a
/// wildcard of the same family.
fn same_socket(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port()
        && a.port() != 0
        && (a.ip() == b.ip()
            || (a.is_ipv4() == b.is_ipv4() && (a.ip().is_unspecified() || b.ip().is_unspecified())))
}
