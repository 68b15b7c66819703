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
pub(crate) const DEFAULT_CONFIG_TOML: &str = include_str!("../../deploy/portcullis.default.toml");

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
    pub auth: AuthConfig,
    pub tls: TlsConfig,
    /// Which destinations are inspected, tunnelled untouched or refused, which need proxy
    /// authentication, and which get Outlook's long timeouts; includes the built-in Outlook /
    /// Exchange profile (`[policy.outlook]`) and the PAC file settings (`[policy.pac]`).
    pub policy: portcullis_policy::RawPolicy,
    /// The Microsoft 365 endpoints web service, whose Exchange/Common Optimize and Allow sets
    /// become tunnel/auth-exempt rules of the Outlook profile.
    pub m365: M365Config,
    pub admin: AdminConfig,
}

/// Where the Microsoft 365 endpoint list comes from. The last good list is cached in
/// `<data_dir>/m365/` and used at start, so an unreachable service changes nothing.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct M365Config {
    /// Check the web service for a new list. Off: only an imported or cached list is used
    /// (`portcullis m365 import FILE`).
    pub fetch: bool,
    /// The service's base URL (`http://` is accepted for a local mirror).
    pub url: String,
    /// `Worldwide`, `USGovDoD`, `USGovGCCHigh` or `China`.
    pub instance: String,
    /// How often `/version` is asked: at least 1h for Microsoft's service, which answers 429
    /// to clients asking more often; any interval for a local mirror.
    #[serde(with = "humantime_serde")]
    pub check_interval: Duration,
}

impl Default for M365Config {
    fn default() -> Self {
        M365Config {
            fetch: true,
            url: "https://endpoints.office.com".to_owned(),
            instance: "Worldwide".to_owned(),
            check_interval: Duration::from_secs(3600),
        }
    }
}

/// Listeners and per-connection limits.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Addresses to accept proxy clients on. Loopback by default so that a fresh install is not
    /// an open relay; set the LAN address explicitly.
    pub listen: Vec<SocketAddr>,
    /// Further listeners for use behind a load balancer (HAProxy `send-proxy-v2`, cloud LBs):
    /// every connection must start with a PROXY protocol v1 or v2 header naming the real
    /// client, and may only come from `proxy_protocol_trusted`.
    pub proxy_protocol_listen: Vec<SocketAddr>,
    /// Source networks of the load balancers allowed to send PROXY protocol headers; any other
    /// connection to a PROXY protocol listener is closed with a log line.
    pub proxy_protocol_trusted: Vec<ipnet::IpNet>,
    /// Where persistent state (CA, caches) lives.
    pub data_dir: PathBuf,
    /// Client connections served at once; further connections get a 503 and are closed.
    pub max_connections: usize,
    /// Client connections one source address may hold at once (0: no limit), so that one
    /// client cannot take every slot. Outlook opens a few dozen; an office behind NAT shares
    /// one address, so raise it there.
    pub max_connections_per_client: usize,
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
    /// Ports a plain-HTTP request may reach (Squid's Safe_ports): numbers, or ranges written
    /// `"1025-65535"`. Anything else gets 403 `port-not-allowed` before a connection is made,
    /// so that a POST cannot be delivered to a mail or SSH server as if it were a web server.
    pub http_ports: Vec<crate::ports::PortRange>,
    /// Protocols a request may switch to through the proxy (`Upgrade`). After the switch the
    /// proxy relays bytes that neither the policy nor the access log sees, so anything not
    /// listed is stripped from the request; `h2c` can never be listed (it would carry HTTP/2
    /// requests past both).
    pub allowed_upgrades: Vec<crate::http::upgrade::UpgradeProtocol>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 3128))],
            proxy_protocol_listen: Vec::new(),
            proxy_protocol_trusted: Vec::new(),
            data_dir: PathBuf::from("/var/lib/portcullis"),
            max_connections: 10_000,
            max_connections_per_client: 1_000,
            max_header_bytes: 64 * 1024,
            max_headers: 100,
            via_pseudonym: "portcullis".to_owned(),
            x_forwarded_for: ForwardedFor::On,
            connect_ports: vec![443],
            http_ports: crate::ports::squid_safe_ports(),
            allowed_upgrades: vec![crate::http::upgrade::UpgradeProtocol::websocket()],
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
    /// Replaces `tunnel_idle` and `upstream_response` for whatever the policy gives the
    /// `long_poll` profile (Outlook endpoints; MAPI, EWS, ActiveSync and RPC over HTTP
    /// requests): ActiveSync Ping waits up to 59 minutes for news, so anything under an hour
    /// cuts Outlook off.
    #[serde(with = "humantime_serde")]
    pub long_poll_idle: Duration,
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
            long_poll_idle: Duration::from_secs(65 * 60),
        }
    }
}

/// Connections from the proxy to origins.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    /// An /etc/hosts-format file consulted before the system resolver.
    pub hosts_file: Option<PathBuf>,
    /// Ask the system resolver for names not in `[resolve]`/`hosts_file`. Off makes a hermetic
    /// lab: unknown names fail at once (502 dns-failure) without any DNS query leaving the host.
    pub system_resolver: bool,
    /// Idle pooled origin connections are closed after this.
    #[serde(with = "humantime_serde")]
    pub pool_idle_timeout: Duration,
    /// Idle pooled connections kept per origin.
    pub pool_max_idle_per_host: usize,
    /// Destination networks the proxy never connects to, whatever name resolves to them:
    /// loopback (services on the proxy host itself), link-local and cloud metadata addresses
    /// (169.254.169.254, fd00:ec2::254), "this host" (0.0.0.0/8, ::). Checked on the resolved
    /// address, IPv4-mapped IPv6 included; refused with 403 `destination-denied` before any
    /// connection is made. Set `[]` to allow everything (test labs on loopback).
    pub deny_networks: Vec<ipnet::IpNet>,
}

/// The default `upstream.deny_networks`.
pub(crate) fn default_deny_networks() -> Vec<ipnet::IpNet> {
    [
        "127.0.0.0/8",
        "::1/128",
        "0.0.0.0/8",
        "::/128",
        "169.254.0.0/16",
        "fe80::/10",
        "fd00:ec2::/32",
    ]
    .iter()
    .filter_map(|n| n.parse().ok())
    .collect()
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            hosts_file: None,
            system_resolver: true,
            pool_idle_timeout: Duration::from_secs(90),
            pool_max_idle_per_host: 64,
            deny_networks: default_deny_networks(),
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

/// TLS inspection of CONNECT tunnels.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// Intercept TLS in CONNECT tunnels (decrypt, inspect, re-encrypt) where the policy says
    /// `inspect`. Off: every tunnel is relayed untouched whatever the policy says.
    pub inspect: bool,
    /// Hosts whose certificate is NOT verified (labs only). Everything else must present a
    /// valid certificate, or the client gets a 502 page naming the problem.
    pub insecure_upstream: Vec<String>,
    /// Extra trusted CA certificates (PEM) for origins, on top of the system store.
    pub upstream_ca_file: Option<PathBuf>,
    /// Create a CA in `server.data_dir` on first start when none exists.
    pub auto_init_ca: bool,
    /// Load a CA key readable by group/others (refused by default).
    pub allow_insecure_key_permissions: bool,
    /// Leaf key type: "ecdsa-p256" (default), or "rsa-2048" / "rsa-3072" for old clients.
    pub leaf_key: String,
    /// Minted certificates kept in memory.
    pub cert_cache_size: usize,
    /// After a client refuses an intercepted connection to one of `tunnel_after_refusal_hosts`
    /// (an application pinning its server's certificate), that client's tunnels to that host
    /// are relayed untouched for this long, so the application works on its next try. "0s"
    /// (the default) turns this off: any client can abort a handshake, so a refusal must not
    /// switch inspection off by itself.
    #[serde(with = "humantime_serde")]
    pub tunnel_after_refusal: Duration,
    /// The only hosts (host patterns) `tunnel_after_refusal` applies to: the servers of the
    /// applications known to pin certificates. Never a host the policy denies or does not
    /// inspect.
    pub tunnel_after_refusal_hosts: Vec<String>,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            inspect: true,
            insecure_upstream: Vec::new(),
            upstream_ca_file: None,
            auto_init_ca: true,
            allow_insecure_key_permissions: false,
            leaf_key: "ecdsa-p256".to_owned(),
            tunnel_after_refusal: Duration::ZERO,
            tunnel_after_refusal_hosts: Vec::new(),
            cert_cache_size: 10_000,
        }
    }
}

/// The admin listener: `/metrics`, `/healthz`, `/readyz`, `/config` and `POST /reload`.
///
/// It is a separate listener so that monitoring never competes with, or is reachable through,
/// the proxy port; keep it on loopback (or a management network) because `/config` shows the
/// configuration and `/reload` re-reads it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Serve the admin endpoints at all. Off means no metrics and no `/reload` (SIGHUP still
    /// reloads).
    pub enabled: bool,
    /// Address of the admin listener; 9464 is the port Prometheus exporters conventionally use.
    /// Loopback by default: metrics and the effective config are not for the LAN.
    pub listen: SocketAddr,
    /// A file the proxy writes its process id to, so that `portcullis reload --pid-file` and
    /// init scripts can signal it; removed on a clean exit.
    pub pid_file: Option<PathBuf>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
            pid_file: None,
        }
    }
}

/// Proxy authentication. Off unless `schemes` names at least one scheme.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Enabled schemes, e.g. `["negotiate", "basic"]`. The 407 offers Negotiate first.
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
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthScheme {
    Basic,
    Negotiate,
}

/// Kerberos acceptor settings.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NegotiateConfig {
    /// Keytab with the proxy's `HTTP/<fqdn>` key; without it, `KRB5_KTNAME` or the system
    /// default keytab is used.
    pub keytab: Option<PathBuf>,
    /// Accept only tickets for this principal (`HTTP/proxy.example.com@EXAMPLE.COM`); without
    /// it, tickets for any principal in the keytab are accepted.
    pub service_principal: Option<String>,
    /// Log and match users as `alice` instead of `alice@EXAMPLE.COM`.
    pub strip_realm: bool,
}

/// Slowing down clients that keep failing authentication.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ThrottleConfig {
    /// Failures allowed per client address within `window` before answers are delayed.
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
        config.compile_policy().map_err(|e| {
            let key = e.key().to_owned();
            let text = e.to_string();
            let reason = text
                .strip_prefix(&format!("{key}: "))
                .unwrap_or(&text)
                .to_owned();
            ConfigError::Invalid {
                file: origin.to_owned(),
                key,
                reason,
            }
        })?;
        Ok(config)
    }

    /// The compiled `[policy]` section. Errors name the key (`policy.rules[3].host`).
    pub fn compile_policy(
        &self,
    ) -> Result<portcullis_policy::Policy, portcullis_policy::CompileError> {
        portcullis_policy::Policy::compile(&self.policy)
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
        for pattern in &self.tls.tunnel_after_refusal_hosts {
            if let Err(e) = portcullis_policy::host::HostPattern::parse(pattern) {
                return Err(("tls.tunnel_after_refusal_hosts", e.to_string()));
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

    /// The effective configuration as TOML (for `check-config`).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
    }

    /// The effective configuration as TOML with secret values replaced by `"<redacted>"`, for
    /// the admin `/config` endpoint.
    ///
    /// Redaction goes by key name (see [`is_secret_key`]) over the serialised form rather than
    /// field by field, so that a secret added to any section later is hidden without anyone
    /// having to remember this function.
    pub fn to_redacted_toml(&self) -> String {
        let mut value = match toml::Value::try_from(self) {
            Ok(value) => value,
            Err(e) => return format!("# cannot render config: {e}\n"),
        };
        redact(&mut value);
        toml::to_string_pretty(&value).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
    }
}

/// Whether a config key holds a secret value (passwords, tokens, key passphrases). Paths to
/// files holding secrets (`htpasswd`, `keytab`) are not secrets themselves and stay visible,
/// because they are what an operator needs to check.
pub(crate) fn is_secret_key(key: &str) -> bool {
    const SECRET_WORDS: [&str; 5] = ["password", "passphrase", "secret", "token", "psk"];
    let key = key.to_ascii_lowercase();
    SECRET_WORDS.iter().any(|w| key.contains(w))
}

fn redact(value: &mut toml::Value) {
    match value {
        toml::Value::Table(table) => {
            for (key, v) in table.iter_mut() {
                if is_secret_key(key) {
                    *v = toml::Value::String("<redacted>".to_owned());
                } else {
                    redact(v);
                }
            }
        }
        toml::Value::Array(items) => items.iter_mut().for_each(redact),
        _ => {}
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
    #![expect(clippy::unwrap_used, reason = "tests")]

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
    fn admin_defaults_and_conflicts() {
        let c = Config::parse("", "t").unwrap();
        assert!(c.admin.enabled);
        assert_eq!(c.admin.listen, "127.0.0.1:9464".parse().unwrap());
        assert_eq!(c.admin.pid_file, None);
        for text in [
            "[server]\nlisten = [\"127.0.0.1:3128\"]\n[admin]\nlisten = \"127.0.0.1:3128\"\n",
            "[server]\nlisten = [\"0.0.0.0:3128\"]\n[admin]\nlisten = \"127.0.0.1:3128\"\n",
        ] {
            let err = Config::parse(text, "t").unwrap_err().to_string();
            assert!(err.contains("key `admin.listen`"), "{err}");
        }
        // Disabled, or on another port or address, is fine; so is port 0 (tests).
        for text in [
            "[server]\nlisten = [\"127.0.0.1:3128\"]\n[admin]\nenabled = false\nlisten = \"127.0.0.1:3128\"\n",
            "[server]\nlisten = [\"127.0.0.1:3128\"]\n[admin]\nlisten = \"127.0.0.2:3128\"\n",
            "[server]\nlisten = [\"127.0.0.1:0\"]\n[admin]\nlisten = \"127.0.0.1:0\"\n",
        ] {
            Config::parse(text, "t").unwrap();
        }
        let err = Config::parse("[admin]\nport = 1\n", "t")
            .unwrap_err()
            .to_string();
        assert!(err.contains("key `admin.port`"), "{err}");
    }

    #[test]
    fn redaction_hides_secret_keys_at_any_depth() {
        let mut value: toml::Value = toml::from_str(
            "[a]\npassword = \"hunter2\"\nkeep = \"x\"\n[[a.list]]\napi_token = \"t\"\n[b.c]\nkey_passphrase = \"p\"\n",
        )
        .unwrap();
        redact(&mut value);
        let text = value.to_string();
        for secret in ["hunter2", "\"t\"", "\"p\""] {
            assert!(!text.contains(secret), "{secret} leaked: {text}");
        }
        assert!(text.contains("keep = \"x\""), "{text}");
        assert!(
            !is_secret_key("htpasswd")
                && !is_secret_key("keytab")
                && !is_secret_key("credentials_ttl")
        );
        // The real config renders and parses back.
        let c = Config::parse("[auth]\nrealm = \"r\"\n", "t").unwrap();
        Config::parse(&c.to_redacted_toml(), "t2").unwrap();
    }

    #[test]
    fn effective_config_round_trips() {
        let c = Config::parse("[server]\nconnect_ports = [443, 8443]\n", "t").unwrap();
        let again = Config::parse(&c.to_toml(), "t2").unwrap();
        assert_eq!(again.server.connect_ports, vec![443, 8443]);
    }
}
