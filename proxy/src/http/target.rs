//! The request target: the one host and port the proxy connects to, parsed strictly from an
//! authority (CONNECT's, or an absolute-form URL's).

use std::net::IpAddr;

use portcullis_policy::Host;

use crate::error::ProxyError;

/// The one host and port the proxy will connect to for a target authority.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    /// In its one spelling ([`Host`]): what the policy decides on, the dialer resolves, the
    /// upstream TLS names and the certificate cache keys on.
    pub(crate) host: Host,
    pub(crate) port: u16,
}

impl Target {
    /// Parses `host[:port]` / `[v6][:port]`. Userinfo, empty hosts, empty, non-numeric,
    /// zero or out-of-range ports are refused rather than guessed at: a lenient parse here is
    /// how a proxy ends up connecting somewhere its checks never looked at.
    pub(crate) fn parse(authority: &str, default_port: Option<u16>) -> Result<Target, ProxyError> {
        let bad =
            |why: &str| ProxyError::BadRequest(format!("invalid authority {authority:?}: {why}"));
        if authority.contains('@') {
            return Err(bad("userinfo is not allowed"));
        }
        let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
            let (v6, after) = rest.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
            if v6.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(bad("invalid IPv6 literal"));
            }
            match after {
                "" => (v6, None),
                _ => (
                    v6,
                    Some(
                        after
                            .strip_prefix(':')
                            .ok_or_else(|| bad("junk after ']'"))?,
                    ),
                ),
            }
        } else {
            match authority.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(bad("empty host"));
        }
        if !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':'))
        {
            return Err(bad("invalid character in host"));
        }
        // The inet_aton forms (`2130706433`, `0x7f.1`, `0177.0.0.1`, `127.1`), which resolvers
        // accept as IPv4 but policies and people read differently, are refused; everything
        // else gets its one spelling from `Host` (`[::ffff:10.0.0.1]` is 10.0.0.1).
        if !host.contains(':') && looks_numeric(host) && host.parse::<std::net::Ipv4Addr>().is_err()
        {
            return Err(bad("not a dotted-quad IPv4 address nor a host name"));
        }
        if host.contains(':') && host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(bad("invalid IPv6 literal"));
        }
        let port = match port {
            None => default_port.ok_or_else(|| bad("a port is required"))?,
            Some(p) => {
                if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(bad("invalid port"));
                }
                match p.parse::<u16>() {
                    Ok(0) | Err(_) => return Err(bad("port out of range")),
                    Ok(port) => port,
                }
            }
        };
        let host = Host::new(host);
        // One trailing dot is the root (`example.com.`); any other empty label is no name.
        let name = host.as_str();
        if host.ip().is_none()
            && (name.is_empty()
                || name.starts_with('.')
                || name.ends_with('.')
                || name.contains(".."))
        {
            return Err(bad("empty label in host name"));
        }
        Ok(Target { host, port })
    }

    /// The address, when the host is an IP literal.
    pub(crate) fn ip(&self) -> Option<IpAddr> {
        self.host.ip()
    }

    /// `host:port` with brackets around IPv6 literals, as used in a Host header or CONNECT line.
    pub(crate) fn authority(&self) -> String {
        format!("{}:{}", self.host.to_uri_host(), self.port)
    }

    /// The Host header value: the port is left out when it is the scheme's default.
    pub(crate) fn host_header(&self, default_port: u16) -> String {
        if self.port == default_port {
            self.host.to_uri_host()
        } else {
            self.authority()
        }
    }
}

/// Whether a name's last label is a number (`2130706433`, `127.1`, `0x7f`): no DNS name ends
/// so (RFC 1123 §2.1, and URL parsers treat such hosts as IPv4).
fn looks_numeric(host: &str) -> bool {
    let last = host.trim_end_matches('.').rsplit('.').next().unwrap_or("");
    let hex = last
        .strip_prefix("0x")
        .or_else(|| last.strip_prefix("0X"))
        .is_some_and(|h| h.bytes().all(|b| b.is_ascii_hexdigit()));
    hex || (!last.is_empty() && last.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    #![expect(clippy::unwrap_used, reason = "tests")]
    use super::*;

    #[test]
    fn authority_parsing() {
        let ok = [
            ("example.com:443", None, "example.com", 443),
            ("Example.com", Some(80), "example.com", 80),
            ("[::1]:8443", None, "::1", 8443),
            ("[2001:db8::1]", Some(80), "2001:db8::1", 80),
            ("10.0.0.1:65535", None, "10.0.0.1", 65535),
            // IPv4-mapped IPv6 is the IPv4 address it maps.
            ("[::ffff:10.0.0.1]:443", None, "10.0.0.1", 443),
            ("www.example.com.:443", None, "www.example.com", 443),
            ("1password.com:443", None, "1password.com", 443),
            ("x.0x7g:443", None, "x.0x7g", 443),
        ];
        for (input, default, host, port) in ok {
            let t = Target::parse(input, default).unwrap();
            assert_eq!((t.host.as_str(), t.port), (host, port), "{input}");
        }
        let bad = [
            "example.com",
            "example.com:",
            "example.com:65561",
            "example.com:0",
            "example.com:80:80",
            "user:pw@example.com:443",
            "[::1:443",
            "[zz]:443",
            ":443",
            "exa mple.com:443",
            "example.com:+443",
            // inet_aton spellings of 127.0.0.1 that resolvers accept.
            "2130706433:443",
            "0x7f000001:443",
            "0177.0.0.1:443",
            "127.1:443",
            "127.0.0.1.:443",
            "example.123:443",
            ".:443",
            "a..b:443",
            ".example.com:443",
            "example.com..:443",
        ];
        for input in bad {
            assert!(
                Target::parse(input, None).is_err(),
                "{input} should be refused"
            );
        }
        assert_eq!(
            Target::parse("[::1]:80", None).unwrap().host_header(80),
            "[::1]"
        );
    }
}
