//! `[icap]`: content adaptation services (RFC 3507) the policy's `icap` lists name.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::KeyError;

/// `[icap]`: the services; which traffic goes to them is the policy's `icap` (per rule and
/// `policy.default.icap`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IcapConfig {
    /// `[[icap.services]]`, each with a unique `name`.
    pub services: Vec<IcapServiceConfig>,
}

/// One ICAP service: where it is, which vectoring point it serves, and what happens when it
/// cannot be reached.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IcapServiceConfig {
    /// What policy rules (`icap = ["av"]`), logs and metrics call it.
    pub name: String,
    /// `icap://host[:port]/service` (port 1344 when omitted), or `icaps://host[:port]/service`
    /// for ICAP over TLS (port 11344 when omitted; the certificate is verified).
    pub url: String,
    /// `icaps://` only: PEM file of the CA(s) that sign the service's certificate; unset: the
    /// system store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<std::path::PathBuf>,
    /// `reqmod` adapts requests before they are forwarded; `respmod` adapts origin responses.
    pub method: IcapMethod,
    /// What to do when the service cannot be reached or answers nonsense: `false` (the
    /// default, fail closed) answers 502 `icap-error`, so that nothing the admin asked to be
    /// scanned passes unscanned; `true` (fail open) forwards the message unadapted and logs it.
    #[serde(default)]
    pub bypass_on_error: bool,
    /// Preview size in bytes, overriding the service's OPTIONS `Preview`; unset: the
    /// service's. A preview lets the service answer 204 without receiving the whole body.
    #[serde(default)]
    pub preview: Option<u32>,
    /// Deadline for connecting to the service.
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Deadline for each read from the service (its answer head, each body chunk): a scanner
    /// that stalls longer counts as an error.
    #[serde(default = "default_io_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Connections to the service at once (pooled, kept alive); a transaction waits up to
    /// `timeout` for one, then fails as the service would.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Messages whose `Content-Length` exceeds this many bytes are not sent to the service
    /// (logged `bypass-size`): scanners refuse or time out on very large bodies, and the proxy
    /// never buffers bodies. Bodies of unknown length are streamed, whatever their size.
    #[serde(default = "default_max_body")]
    pub max_body: u64,
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(2)
}

fn default_io_timeout() -> Duration {
    Duration::from_secs(30)
}

fn default_max_connections() -> usize {
    32
}

fn default_max_body() -> u64 {
    128 * 1024 * 1024
}

/// `[[icap.services]].method`: the ICAP vectoring point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IcapMethod {
    Reqmod,
    Respmod,
}

impl IcapMethod {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            IcapMethod::Reqmod => "REQMOD",
            IcapMethod::Respmod => "RESPMOD",
        }
    }
}

/// A service URL taken apart: what the client dials and what it writes in the request line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IcapUrl {
    pub(crate) host: String,
    pub(crate) port: u16,
    /// `icaps://`: TLS to the service.
    pub(crate) tls: bool,
    /// `icap://host:port/service`, as sent in request lines.
    pub(crate) uri: String,
}

impl IcapUrl {
    /// Parses `icap://host[:port]/path` or `icaps://host[:port]/path`.
    pub(crate) fn parse(url: &str) -> Result<IcapUrl, String> {
        let uri: http::Uri = url.parse().map_err(|e| format!("{e}"))?;
        let tls = match uri.scheme_str() {
            Some("icap") => false,
            Some("icaps") => true,
            _ => return Err("must start with icap:// or icaps://".into()),
        };
        let authority = uri.authority().ok_or("no host")?;
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        if host.is_empty() {
            return Err("no host".into());
        }
        let port = authority
            .port_u16()
            .unwrap_or(if tls { 11344 } else { 1344 });
        if port == 0 {
            return Err("port 0".into());
        }
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        if path.len() <= 1 {
            return Err("no service path (icap://host/service)".into());
        }
        Ok(IcapUrl {
            host: host.to_owned(),
            port,
            tls,
            // The request line names the service as `icap://` over TLS too (as Squid does).
            uri: format!("icap://{}{path}", authority.as_str()),
        })
    }
}

/// Services are well formed and uniquely named, and every name the policy uses exists.
pub(super) fn validate(
    icap: &IcapConfig,
    policy: &portcullis_policy::RawPolicy,
) -> Result<(), KeyError> {
    for (i, s) in icap.services.iter().enumerate() {
        let key = |f: &str| format!("icap.services[{i}].{f}");
        if s.name.trim().is_empty() || s.name.contains(|c: char| c.is_whitespace() || c == ',') {
            return Err(KeyError::new(key("name"), "must be a non-empty word"));
        }
        if icap.services[..i].iter().any(|o| o.name == s.name) {
            return Err(KeyError::new(
                key("name"),
                format!("duplicate service name {:?}", s.name),
            ));
        }
        let url = IcapUrl::parse(&s.url)
            .map_err(|reason| KeyError::new(key("url"), format!("{:?}: {reason}", s.url)))?;
        if s.ca_file.is_some() && !url.tls {
            return Err(KeyError::new(
                key("ca_file"),
                "only used with icaps:// URLs",
            ));
        }
        if s.max_connections == 0 {
            return Err(KeyError::new(key("max_connections"), "must be at least 1"));
        }
        if s.connect_timeout.is_zero() || s.timeout.is_zero() {
            let which = if s.timeout.is_zero() {
                "timeout"
            } else {
                "connect_timeout"
            };
            return Err(KeyError::new(key(which), "must be greater than zero"));
        }
    }
    let known = |name: &String| icap.services.iter().any(|s| s.name == *name);
    let check = |key: String, names: &[String]| match names.iter().find(|n| !known(n)) {
        Some(name) => Err(KeyError::new(
            key,
            format!("no [[icap.services]] entry is named {name:?}"),
        )),
        None => Ok(()),
    };
    check("policy.default.icap".to_owned(), &policy.default.icap)?;
    for (i, rule) in policy.rules.iter().enumerate() {
        if let Some(names) = &rule.icap {
            check(format!("policy.rules[{i}].icap"), names)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![expect(clippy::unwrap_used, reason = "tests")]

    use super::IcapUrl;
    use crate::config::Config;

    fn err(text: &str) -> String {
        Config::parse(text, "t").unwrap_err().to_string()
    }

    #[test]
    fn services_parse_with_defaults() {
        let c = Config::parse(
            "[[icap.services]]\nname = \"av\"\nurl = \"icap://127.0.0.1/avscan\"\nmethod = \"respmod\"\n\
             [policy]\ndefault = { icap = [\"av\"] }\n",
            "t",
        )
        .unwrap();
        let s = &c.icap.services[0];
        assert!(!s.bypass_on_error, "fail closed by default");
        assert_eq!((s.max_connections, s.preview), (32, None));
        let url = IcapUrl::parse(&s.url).unwrap();
        assert_eq!((url.host.as_str(), url.port), ("127.0.0.1", 1344));
        assert_eq!(url.uri, "icap://127.0.0.1/avscan");
        let tls = IcapUrl::parse("icaps://av.corp.example/avscan").unwrap();
        assert_eq!((tls.port, tls.tls), (11344, true));
    }

    #[test]
    fn rejections_name_their_key() {
        let svc = |extra: &str| {
            format!("[[icap.services]]\nname = \"av\"\nurl = \"icap://h:1344/s\"\nmethod = \"respmod\"\n{extra}")
        };
        let cases = [
            (svc("bogus = 1"), "icap.services[0].bogus"),
            (
                "[[icap.services]]\nname = \"av\"\nurl = \"icap://h/s\"\nmethod = \"options\"".to_owned(),
                "icap.services[0].method",
            ),
            (svc("max_connections = 0"), "key `icap.services[0].max_connections`"),
            (svc("timeout = \"0s\""), "key `icap.services[0].timeout`"),
            (
                "[[icap.services]]\nname = \"av\"\nurl = \"http://h/s\"\nmethod = \"respmod\"".to_owned(),
                "key `icap.services[0].url`",
            ),
            (
                svc("ca_file = \"/x.pem\""),
                "key `icap.services[0].ca_file`: only used with icaps://",
            ),
            (
                "[[icap.services]]\nname = \"av\"\nurl = \"icap://h\"\nmethod = \"respmod\"".to_owned(),
                "key `icap.services[0].url`",
            ),
            (
                format!("{}\n{}", svc(""), svc("").replace("[[icap", "\n[[icap")),
                "key `icap.services[1].name`: duplicate",
            ),
            (
                format!("{}\n[policy]\ndefault = {{ icap = [\"dlp\"] }}", svc("")),
                "key `policy.default.icap`: no [[icap.services]] entry is named \"dlp\"",
            ),
            (
                format!("{}\n[[policy.rules]]\nhost = \"a.test\"\naction = \"inspect\"\nicap = [\"av\", \"x\"]", svc("")),
                "key `policy.rules[0].icap`: no [[icap.services]] entry is named \"x\"",
            ),
        ];
        for (text, want) in cases {
            let got = err(&text);
            assert!(got.contains(want), "{text}\n got: {got}\nwant: {want}");
        }
    }
}
