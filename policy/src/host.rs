//! Host name patterns, used by the policy rules (`host`, `sni`, `policy.direct`) and by
//! `tls.insecure_upstream`:
//!
//! | pattern | kind | matches |
//! |---|---|---|
//! | `example.com` | exact | `example.com` only |
//! | `*.example.com` | suffix | any subdomain (`a.example.com`, `a.b.example.com`), not the apex |
//! | `autodiscover.*` | prefix | `autodiscover.` followed by anything (`autodiscover.contoso.com`) |
//! | `~^mail[0-9]+\.corp$` | regex | the whole name against the regex, case-insensitively |
//!
//! Prefix patterns exist because Outlook looks up `autodiscover.<smtp-domain>` for *any* mail
//! domain, so "the autodiscover host of every domain" is one pattern rather than a list.
//! Regexes are anchored at both ends (`^(?:…)$`) so that a rule never matches more than its
//! author saw; write `.*` explicitly to match a part of a name.
//!
//! Names are compared case-insensitively and without a trailing dot or IPv6 brackets, so
//! `Outlook.Office365.COM.` matches `outlook.office365.com`. [`HostPattern::matches`] does this
//! without allocating; [`normalise`] is still provided for callers that store names.

use std::fmt;
use std::net::IpAddr;

/// A parsed host pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    Exact(String),
    /// The stored suffix starts with a dot: `*.example.com` keeps `.example.com`.
    Suffix(String),
    /// The stored prefix ends with a dot: `autodiscover.*` keeps `autodiscover.`.
    Prefix(String),
    /// `~regex`, matched against the whole normalised name.
    Regex(HostRegex),
}

/// A compiled host regex. Compared by its source text, so that patterns stay `Eq`.
#[derive(Debug, Clone)]
pub struct HostRegex {
    source: String,
    regex: regex::Regex,
}

impl HostRegex {
    /// The regex as written, without the leading `~`.
    pub fn as_str(&self) -> &str {
        &self.source
    }
}

impl PartialEq for HostRegex {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Eq for HostRegex {}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid host pattern {pattern:?}: {reason}")]
pub struct HostPatternError {
    pub pattern: String,
    pub reason: String,
}

/// Bound on compiled regex size: a policy is loaded from an admin's file, but a typo such as
/// `{1000}` repeated should fail at load rather than use megabytes per rule.
const REGEX_SIZE_LIMIT: usize = 256 * 1024;

impl HostPattern {
    pub fn parse(pattern: &str) -> Result<HostPattern, HostPatternError> {
        let err = |reason: &str| HostPatternError {
            pattern: pattern.to_owned(),
            reason: reason.to_owned(),
        };
        if let Some(re) = pattern.strip_prefix('~') {
            if re.is_empty() {
                return Err(err("empty regex"));
            }
            let regex = regex::RegexBuilder::new(&format!("^(?:{re})$"))
                .case_insensitive(true)
                .size_limit(REGEX_SIZE_LIMIT)
                .build()
                .map_err(|e| err(&e.to_string()))?;
            return Ok(HostPattern::Regex(HostRegex {
                source: re.to_owned(),
                regex,
            }));
        }
        let normal = normalise(pattern);
        let (kind, name) = if let Some(rest) = normal.strip_prefix("*.") {
            (Kind::Suffix, rest)
        } else if let Some(rest) = normal.strip_suffix(".*") {
            (Kind::Prefix, rest)
        } else {
            (Kind::Exact, normal.as_str())
        };
        if name.is_empty() {
            return Err(err("empty name"));
        }
        if name.contains('*') {
            return Err(err(
                "'*' is only allowed as the first label (\"*.example.com\") or the last \
                 (\"autodiscover.*\"); use \"~regex\" for anything else",
            ));
        }
        if !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':'))
        {
            return Err(err(
                "only letters, digits, '.', '-', '_' (and ':' in IPv6) are allowed",
            ));
        }
        if name.split('.').any(str::is_empty) && !name.contains(':') {
            return Err(err("empty label"));
        }
        Ok(match kind {
            Kind::Suffix => HostPattern::Suffix(format!(".{name}")),
            Kind::Prefix => HostPattern::Prefix(format!("{name}.")),
            Kind::Exact => HostPattern::Exact(name.to_owned()),
        })
    }

    /// Whether `host` matches. Case, a trailing dot and IPv6 brackets are ignored, so callers
    /// may pass the name as the client sent it; this never allocates.
    pub fn matches(&self, host: &str) -> bool {
        let host = trim(host);
        match self {
            HostPattern::Exact(name) => host.eq_ignore_ascii_case(name),
            HostPattern::Suffix(suffix) => {
                host.len() > suffix.len()
                    && host.as_bytes()[host.len() - suffix.len()..]
                        .eq_ignore_ascii_case(suffix.as_bytes())
            }
            HostPattern::Prefix(prefix) => {
                host.len() > prefix.len()
                    && host.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
            }
            HostPattern::Regex(re) => re.regex.is_match(host),
        }
    }
}

enum Kind {
    Exact,
    Suffix,
    Prefix,
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Exact(name) => f.write_str(name),
            HostPattern::Suffix(suffix) => write!(f, "*{suffix}"),
            HostPattern::Prefix(prefix) => write!(f, "{prefix}*"),
            HostPattern::Regex(re) => write!(f, "~{}", re.source),
        }
    }
}

/// Without IPv6 brackets and a trailing dot; a sub-slice, so nothing is allocated.
pub(crate) fn trim(host: &str) -> &str {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.strip_suffix('.').unwrap_or(host)
}

/// Lower-case, without IPv6 brackets and without a trailing dot.
pub fn normalise(host: &str) -> String {
    Host::new(host).text
}

/// A destination host in its one spelling, whoever looks at it — the policy's facts, the
/// resolver, the dialer, interception, connection pinning and the certificate cache key:
/// ASCII lower case, no IPv6 brackets, no trailing dot, and an IP literal in its canonical
/// form (`::FFFF:10.0.0.1` is `10.0.0.1`, `2001:DB8::0:1` is `2001:db8::1`). Two places that
/// hold the same `Host` can never disagree about which name or address it is.
///
/// It does not judge whether the name is acceptable (the proxy's authority parser refuses
/// userinfo, bad characters and inet_aton spellings before a `Host` is made).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Host {
    text: String,
    ip: Option<IpAddr>,
}

impl Host {
    /// `host` as received (`Example.COM.`, `[::1]`, `::ffff:10.0.0.1`) in its one spelling.
    pub fn new(host: &str) -> Host {
        match Host::ip_of(host) {
            Some(ip) => Host {
                text: ip.to_string(),
                ip: Some(ip),
            },
            None => Host {
                text: trim(host).to_ascii_lowercase(),
                ip: None,
            },
        }
    }

    /// The address `host` names when it is an IP literal (brackets allowed), canonical:
    /// an IPv4-mapped IPv6 address is the IPv4 address. No allocation, so the per-request
    /// decision can call it on the name as received.
    pub fn ip_of(host: &str) -> Option<IpAddr> {
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        host.parse::<IpAddr>().ok().map(|ip| ip.to_canonical())
    }

    /// The name, or the address's text (without brackets).
    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn ip(&self) -> Option<IpAddr> {
        self.ip
    }

    /// As it goes into a Host header or an authority: IPv6 literals in brackets.
    pub fn to_uri_host(&self) -> String {
        match self.ip {
            Some(IpAddr::V6(_)) => format!("[{}]", self.text),
            _ => self.text.clone(),
        }
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl AsRef<str> for Host {
    fn as_ref(&self) -> &str {
        &self.text
    }
}

#[cfg(test)]
mod tests {
    #![expect(clippy::unwrap_used, reason = "tests")]
    use super::*;

    #[test]
    fn host_has_one_spelling() {
        let same = [
            ("Outlook.Office365.COM.", "outlook.office365.com", None),
            ("outlook.office365.com", "outlook.office365.com", None),
            ("[::ffff:203.0.113.9]", "203.0.113.9", Some("203.0.113.9")),
            ("::FFFF:203.0.113.9", "203.0.113.9", Some("203.0.113.9")),
            ("203.0.113.9", "203.0.113.9", Some("203.0.113.9")),
            ("[2001:DB8:0::1]", "2001:db8::1", Some("2001:db8::1")),
            ("2001:db8::1", "2001:db8::1", Some("2001:db8::1")),
        ];
        for (input, text, ip) in same {
            let host = Host::new(input);
            assert_eq!(host.as_str(), text, "{input}");
            assert_eq!(host.ip(), ip.map(|i| i.parse().unwrap()), "{input}");
            assert_eq!(Host::ip_of(input), host.ip(), "{input}");
            assert_eq!(normalise(input), text, "{input}");
        }
        assert_eq!(Host::new("[::ffff:10.0.0.1]"), Host::new("10.0.0.1"));
        assert_eq!(Host::new("2001:db8::1").to_uri_host(), "[2001:db8::1]");
        assert_eq!(Host::new("10.0.0.1").to_uri_host(), "10.0.0.1");
        assert_eq!(Host::new("Mail.Example.").to_uri_host(), "mail.example");
    }

    #[test]
    fn matching_table() {
        let cases = [
            ("example.com", "example.com", true),
            ("example.com", "EXAMPLE.com.", true),
            ("example.com", "www.example.com", false),
            ("*.example.com", "www.example.com", true),
            ("*.example.com", "WWW.Example.Com.", true),
            ("*.example.com", "a.b.example.com", true),
            ("*.example.com", "example.com", false),
            ("*.example.com", "badexample.com", false),
            ("*.outlook.com", "autodiscover-s.outlook.com", true),
            ("10.0.0.1", "10.0.0.1", true),
            ("::1", "[::1]", true),
            ("autodiscover.*", "autodiscover.contoso.com", true),
            ("autodiscover.*", "Autodiscover.Contoso.COM.", true),
            ("autodiscover.*", "autodiscover.", false),
            ("autodiscover.*", "autodiscover", false),
            ("autodiscover.*", "xautodiscover.contoso.com", false),
            ("autodiscover.*", "mail.autodiscover.com", false),
            ("~mail[0-9]+\\.corp\\.example", "mail12.corp.example", true),
            ("~mail[0-9]+\\.corp\\.example", "MAIL12.CORP.EXAMPLE.", true),
            // Anchored: a regex never matches a part of a name.
            ("~mail[0-9]+\\.corp\\.example", "xmail1.corp.example", false),
            (
                "~mail[0-9]+\\.corp\\.example",
                "mail1.corp.example.evil",
                false,
            ),
            ("~.*\\.corp\\.example", "a.corp.example", true),
        ];
        for (pattern, host, want) in cases {
            let p = HostPattern::parse(pattern).unwrap();
            assert_eq!(p.matches(host), want, "{pattern} vs {host}");
            assert_eq!(
                p.matches(&normalise(host)),
                want,
                "{pattern} vs normalised {host}"
            );
        }
    }

    #[test]
    fn invalid_patterns() {
        for bad in [
            "",
            "*.",
            "a.*.com",
            "exa mple.com",
            "a..b",
            "*",
            ".*",
            "*.a.*",
            "~",
            "~(",
            "~a{99999999}",
        ] {
            assert!(HostPattern::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn display_round_trips() {
        for (input, shown) in [
            ("*.Example.COM.", "*.example.com"),
            ("Autodiscover.*", "autodiscover.*"),
            ("~Mail\\d+", "~Mail\\d+"),
            ("Host.Example", "host.example"),
        ] {
            let p = HostPattern::parse(input).unwrap();
            assert_eq!(p.to_string(), shown);
            assert_eq!(HostPattern::parse(shown).unwrap(), p);
        }
    }
}
