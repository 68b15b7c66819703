//! Checks serde cannot express: ranges, cross-field rules, values parsed by other crates.

use std::net::SocketAddr;
use std::time::Duration;

use super::{AuthScheme, Config};

impl Config {
    /// Cross-field checks serde cannot express. Returns the offending key and why.
    pub(super) fn validate(&self) -> Result<(), (&'static str, String)> {
        let s = &self.server;
        if s.listen.is_empty() {
            return Err((
                "server.listen",
                "at least one listen address is required".into(),
            ));
        }
        // hyper cannot parse a request head in a buffer smaller than 8 KiB.
        if !(8192..=16 * 1024 * 1024).contains(&s.max_header_bytes) {
            return Err((
                "server.max_header_bytes",
                format!("{} is outside 8192..=16777216", s.max_header_bytes),
            ));
        }
        if s.max_headers == 0 {
            return Err(("server.max_headers", "must be at least 1".into()));
        }
        if !s.proxy_protocol_listen.is_empty() && s.proxy_protocol_trusted.is_empty() {
            return Err((
                "server.proxy_protocol_trusted",
                "must name the load balancers' networks when server.proxy_protocol_listen is set \
                 (otherwise any client could claim any address)"
                    .into(),
            ));
        }
        if s.max_connections == 0 {
            return Err(("server.max_connections", "must be at least 1".into()));
        }
        if s.via_pseudonym.is_empty()
            || !s
                .via_pseudonym
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b',')
        {
            return Err((
                "server.via_pseudonym",
                "must be a non-empty token without spaces or commas".into(),
            ));
        }
        if s.connect_ports.contains(&0) {
            return Err(("server.connect_ports", "port 0 is not a valid port".into()));
        }
        let t = &self.timeouts;
        for (key, value) in [
            ("timeouts.client_header", t.client_header),
            ("timeouts.client_idle", t.client_idle),
            ("timeouts.upstream_connect", t.upstream_connect),
            ("timeouts.upstream_response", t.upstream_response),
            ("timeouts.tunnel_idle", t.tunnel_idle),
            ("timeouts.long_poll_idle", t.long_poll_idle),
        ] {
            if value.is_zero() {
                return Err((key, "must be greater than zero".into()));
            }
        }
        for (name, addrs) in &self.resolve {
            if addrs.is_empty() {
                return Err(("resolve", format!("entry {name:?} has no addresses")));
            }
        }
        if self.auth.schemes.contains(&AuthScheme::Basic) && self.auth.htpasswd.is_none() {
            return Err((
                "auth.htpasswd",
                "Basic authentication needs an htpasswd file".into(),
            ));
        }
        for pattern in &self.tls.insecure_upstream {
            if let Err(e) = portcullis_policy::host::HostPattern::parse(pattern) {
                return Err(("tls.insecure_upstream", e.to_string()));
            }
        }
        if self
            .tls
            .leaf_key
            .parse::<portcullis_certs::KeyAlgorithm>()
            .is_err()
        {
            return Err((
                "tls.leaf_key",
                format!(
                    "{:?} is not one of ecdsa-p256, rsa-2048, rsa-3072",
                    self.tls.leaf_key
                ),
            ));
        }
        if !(self.m365.url.starts_with("https://") || self.m365.url.starts_with("http://"))
            || self.m365.url.parse::<http::Uri>().is_err()
        {
            return Err((
                "m365.url",
                format!("{:?} is not an http(s) URL", self.m365.url),
            ));
        }
        if self.m365.instance.is_empty()
            || !self
                .m365
                .instance
                .bytes()
                .all(|b| b.is_ascii_alphanumeric())
        {
            return Err(("m365.instance", "must be a name such as Worldwide".into()));
        }
        // Microsoft's service throttles eager clients (429); a local mirror may be asked more often.
        if self.m365.check_interval < Duration::from_secs(3600)
            && self.m365.url.contains("endpoints.office.com")
        {
            return Err((
                "m365.check_interval",
                "Microsoft's endpoints service must not be asked more than hourly".into(),
            ));
        }
        if self.m365.check_interval.is_zero() {
            return Err(("m365.check_interval", "must be greater than zero".into()));
        }
        if self.tls.cert_cache_size == 0 {
            return Err(("tls.cert_cache_size", "must be at least 1".into()));
        }
        if self.admin.enabled
            && self
                .server
                .listen
                .iter()
                .any(|l| same_socket(*l, self.admin.listen))
        {
            return Err((
                "admin.listen",
                format!(
                    "{} is also a proxy listener; the admin endpoints need their own address",
                    self.admin.listen
                ),
            ));
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            return Err((
                "log.level",
                format!("{:?} is not a valid log filter", self.log.level),
            ));
        }
        Ok(())
    }
}

/// Two socket addresses that cannot both be bound: the same port, and the same IP or either a
/// wildcard of the same family.
fn same_socket(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port()
        && a.port() != 0
        && (a.ip() == b.ip()
            || (a.is_ipv4() == b.is_ipv4() && (a.ip().is_unspecified() || b.ip().is_unspecified())))
}
