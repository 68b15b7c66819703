//! The configuration file model: one serde struct per TOML section.
//!
//! Every struct rejects unknown keys and has defaults, so an empty file (or no file at all) is a
//! valid configuration: a proxy listening on 127.0.0.1:3128. Errors name the file, the key path
//! (`server.listen[0]`) and the reason.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The embedded default configuration, used when `portcullis run` gets no `--config`.
pub const DEFAULT_CONFIG_TOML: &str = include_str!("../../deploy/portcullis.default.toml");

/// The whole configuration file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
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
}

/// Listeners and per-connection limits.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Addresses to accept proxy clients on. Loopback by default so that a fresh install is not
    /// an open relay; set the LAN address explicitly.
    pub listen: Vec<SocketAddr>,
    /// Where persistent state (CA, caches) lives.
    pub data_dir: PathBuf,
    /// Client connections served at once; further connections get a 503 and are closed.
    pub max_connections: usize,
    /// Upper bound for the request line plus headers; larger requests get 431.
    pub max_header_bytes: usize,
    /// Upper bound for the number of request header fields; more get 431.
    pub max_headers: usize,
    /// Name this proxy adds to `Via`; seeing it in an incoming `Via` means a forwarding loop.
    pub via_pseudonym: String,
    /// What to do with `X-Forwarded-For` (Squid's `forwarded_for`).
    pub x_forwarded_for: ForwardedFor,
    /// Ports a CONNECT may reach (Squid's SSL_ports); anything else gets 403.
    pub connect_ports: Vec<u16>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 3128))],
            data_dir: PathBuf::from("/var/lib/portcullis"),
            max_connections: 10_000,
            max_header_bytes: 64 * 1024,
            max_headers: 100,
            via_pseudonym: "portcullis".to_owned(),
            x_forwarded_for: ForwardedFor::On,
            connect_ports: vec![443],
        }
    }
}

/// Squid's `forwarded_for` choices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ForwardedFor {
    /// Append the client's address (the default, as in Squid).
    On,
    /// Append `unknown` instead of the address.
    Off,
    /// Pass whatever the client sent, add nothing.
    Transparent,
    /// Remove the header entirely.
    Delete,
}

/// Timeouts. Values are human-readable durations: "30s", "5m", "1h 30m".
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    /// A client must send a complete request head within this time (slowloris guard).
    #[serde(with = "humantime_serde")]
    pub client_header: Duration,
    /// An idle keep-alive client connection (no request in flight) is closed after this.
    #[serde(with = "humantime_serde")]
    pub client_idle: Duration,
    /// Name resolution plus TCP connect to an origin; exceeding it gives 504.
    #[serde(with = "humantime_serde")]
    pub upstream_connect: Duration,
    /// Waiting for an origin's response head after the request was sent; exceeding it gives 504.
    #[serde(with = "humantime_serde")]
    pub upstream_response: Duration,
    /// A CONNECT tunnel or upgraded (WebSocket) connection with no bytes either way is closed.
    #[serde(with = "humantime_serde")]
    pub tunnel_idle: Duration,
    /// On SIGTERM/SIGINT, in-flight requests get this long to finish before the process exits.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            client_header: Duration::from_secs(30),
            client_idle: Duration::from_secs(120),
            upstream_connect: Duration::from_secs(15),
            upstream_response: Duration::from_secs(300),
            tunnel_idle: Duration::from_secs(15 * 60),
            shutdown_grace: Duration::from_secs(15),
        }
    }
}

/// Connections from the proxy to origins.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    /// An /etc/hosts-format file consulted before the system resolver.
    pub hosts_file: Option<PathBuf>,
    /// Idle pooled origin connections are closed after this.
    #[serde(with = "humantime_serde")]
    pub pool_idle_timeout: Duration,
    /// Idle pooled connections kept per origin.
    pub pool_max_idle_per_host: usize,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            hosts_file: None,
            pool_idle_timeout: Duration::from_secs(90),
            pool_max_idle_per_host: 64,
        }
    }
}

/// The access log: one line per request or tunnel.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccessLogConfig {
    pub enabled: bool,
    /// A file path, or "-" for standard output. Files are reopened on SIGUSR1 (logrotate).
    pub path: PathBuf,
    pub format: AccessLogFormat,
}

impl Default for AccessLogConfig {
    fn default() -> Self {
        AccessLogConfig {
            enabled: true,
            path: PathBuf::from("-"),
            format: AccessLogFormat::Squid,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessLogFormat {
    /// Squid's native access.log format, so existing log tools keep working.
    Squid,
    /// One JSON object per line.
    Json,
}

/// Diagnostic logging (to standard error).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A `tracing` filter such as "info" or "portcullis=debug"; `RUST_LOG` overrides it.
    pub level: String,
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".to_owned(),
            format: LogFormat::Text,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// A configuration that could not be loaded; `Display` names the file, the key and the reason.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {file}: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid config {file}: key `{key}`: {reason}")]
    Invalid {
        file: String,
        key: String,
        reason: String,
    },
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: path.display().to_string(),
            source,
        })?;
        Config::parse(&text, &path.display().to_string())
    }

    /// The embedded default configuration.
    pub fn embedded_default() -> Result<Config, ConfigError> {
        Config::parse(DEFAULT_CONFIG_TOML, "<embedded default>")
    }

    /// Parses and validates TOML text; `origin` names the source in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let de = toml::Deserializer::new(text);
        let config: Config = serde_path_to_error::deserialize(de).map_err(|err| {
            let key = err.path().to_string();
            let inner = err.into_inner();
            let line = inner
                .span()
                .map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1);
            let mut reason = one_line(inner.message());
            if let Some(line) = line {
                reason.push_str(&format!(" (line {line})"));
            }
            ConfigError::Invalid {
                file: origin.to_owned(),
                key: if key == "." {
                    "(top level)".to_owned()
                } else {
                    key
                },
                reason,
            }
        })?;
        config
            .validate()
            .map_err(|(key, reason)| ConfigError::Invalid {
                file: origin.to_owned(),
                key: key.to_owned(),
                reason,
            })?;
        Ok(config)
    }

    /// Cross-field checks serde cannot express. Returns the offending key and why.
    fn validate(&self) -> Result<(), (&'static str, String)> {
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
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            return Err((
                "log.level",
                format!("{:?} is not a valid log filter", self.log.level),
            ));
        }
        Ok(())
    }

    /// The effective configuration as TOML (for `check-config`).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
    }
}

fn one_line(s: &str) -> String {
    s.split('\n')
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" | ")
}

impl fmt::Display for ForwardedFor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ForwardedFor::On => "on",
            ForwardedFor::Off => "off",
            ForwardedFor::Transparent => "transparent",
            ForwardedFor::Delete => "delete",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_the_default() {
        let c = Config::parse("", "t").unwrap();
        assert_eq!(c.server.listen, vec!["127.0.0.1:3128".parse().unwrap()]);
        assert_eq!(c.server.connect_ports, vec![443]);
        assert_eq!(c.server.max_header_bytes, 65536);
    }

    #[test]
    fn embedded_default_parses() {
        let c = Config::embedded_default().unwrap();
        assert_eq!(c.server.listen, vec!["127.0.0.1:3128".parse().unwrap()]);
    }

    #[test]
    fn errors_name_file_key_and_reason() {
        let cases = [
            (
                "[server]\nlisten = [\"nope\"]\n",
                "server.listen[0]",
                "invalid socket address",
            ),
            (
                "[server]\nbogus = 1\n",
                "server.bogus",
                "unknown field `bogus`",
            ),
            (
                "[timeouts]\nclient_idle = \"ten\"\n",
                "timeouts.client_idle",
                "ten",
            ),
            (
                "[server]\nmax_header_bytes = 10\n",
                "server.max_header_bytes",
                "outside",
            ),
            (
                "[server]\nx_forwarded_for = \"maybe\"\n",
                "server.x_forwarded_for",
                "maybe",
            ),
            (
                "[resolve]\n\"a.test\" = [\"1.2.3\"]\n",
                "resolve.a.test[0]",
                "invalid",
            ),
            ("[log]\nlevel = \"[[[\"\n", "log.level", "not a valid"),
        ];
        for (text, key, reason) in cases {
            let err = Config::parse(text, "lab.toml").unwrap_err().to_string();
            assert!(err.contains("lab.toml"), "{err}");
            assert!(
                err.contains(&format!("key `{key}`")),
                "want key {key}: {err}"
            );
            assert!(err.contains(reason), "want {reason}: {err}");
        }
    }

    #[test]
    fn effective_config_round_trips() {
        let c = Config::parse("[server]\nconnect_ports = [443, 8443]\n", "t").unwrap();
        let again = Config::parse(&c.to_toml(), "t2").unwrap();
        assert_eq!(again.server.connect_ports, vec![443, 8443]);
    }
}
