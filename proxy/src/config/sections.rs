//! The plain sections of the configuration file: listeners and limits, timeouts, origins,
//! logs, the admin listener and the Microsoft 365 feed. `[tls]` and `[auth]` have their own
//! modules.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Where the Microsoft 365 endpoint list comes from. The last good list is cached in
/// `<data_dir>/m365/` and used at start, so an unreachable service changes nothing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    /// Connections the kernel may queue on each proxy listener before the proxy accepts them
    /// (`listen(2)` backlog). After a network blip every Outlook client reconnects at once;
    /// a short queue overflows and each dropped SYN costs its client a 1 s retransmit. The
    /// kernel caps it at `net.core.somaxconn` (4096 on current kernels).
    pub listen_backlog: u32,
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
    pub allowed_upgrades: Vec<super::UpgradeProtocol>,
    /// Transparent HTTP listeners: connections redirected here by netfilter (`redirect`,
    /// `REDIRECT`) carry origin-form requests; the destination is the connection's original
    /// one (`SO_ORIGINAL_DST`). Empty: none. See README "Transparent mode".
    pub transparent_http_listen: Vec<SocketAddr>,
    /// Transparent TLS listeners (redirected port 443): the ClientHello's SNI and the original
    /// destination decide tunnel, inspect or deny.
    pub transparent_tls_listen: Vec<SocketAddr>,
    /// What happens on a transparent connection when proxy authentication is configured and
    /// neither the client (`auth.exempt_clients`) nor the destination (the policy) is exempt:
    /// credentials cannot be asked for there. `deny` (the default) refuses with a page saying
    /// so; `exempt` lets such connections through unauthenticated.
    pub transparent_auth: TransparentAuth,
}

/// `server.transparent_auth`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TransparentAuth {
    /// Refuse (403 `transparent-auth-required`).
    Deny,
    /// Pass unauthenticated: the admin's explicit choice.
    Exempt,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 3128))],
            proxy_protocol_listen: Vec::new(),
            proxy_protocol_trusted: Vec::new(),
            listen_backlog: 4096,
            data_dir: PathBuf::from("/var/lib/portcullis"),
            max_connections: 10_000,
            max_connections_per_client: 1_000,
            max_header_bytes: 64 * 1024,
            max_headers: 100,
            via_pseudonym: "portcullis".to_owned(),
            x_forwarded_for: ForwardedFor::On,
            connect_ports: vec![443],
            http_ports: crate::ports::squid_safe_ports(),
            allowed_upgrades: vec![super::UpgradeProtocol::websocket()],
            transparent_http_listen: Vec::new(),
            transparent_tls_listen: Vec::new(),
            transparent_auth: TransparentAuth::Deny,
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    /// The largest read buffer of a connection to an origin or a parent, in bytes; also the
    /// largest response head. Larger buffers move bulk responses in fewer, larger reads (less
    /// CPU per MiB) at that much memory per busy or pooled connection.
    pub read_buffer_bytes: usize,
    /// Destination networks the proxy never connects to, whatever name resolves to them:
    /// loopback (services on the proxy host itself), link-local and cloud metadata addresses
    /// (169.254.169.254, fd00:ec2::254), "this host" (0.0.0.0/8, ::). Checked on the resolved
    /// address, IPv4-mapped IPv6 included; refused with 403 `destination-denied` before any
    /// connection is made. Set `[]` to allow everything (test labs on loopback).
    pub deny_networks: Vec<ipnet::IpNet>,
    /// Parent proxies routes may send traffic through (`policy.default_route`,
    /// `policy.rules[].route`). A parent is not subject to `deny_networks`: it is the admin's
    /// own choice, often on an internal network.
    pub parents: Vec<super::ParentConfig>,
    /// How long a parent that refused, timed out or answered 502/503 is skipped before it is
    /// tried again.
    #[serde(with = "humantime_serde")]
    pub parent_backoff: Duration,
}

/// The default `upstream.read_buffer_bytes`.
pub(crate) const DEFAULT_READ_BUFFER_BYTES: usize = 128 * 1024;

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
            read_buffer_bytes: DEFAULT_READ_BUFFER_BYTES,
            deny_networks: default_deny_networks(),
            parents: Vec::new(),
            parent_backoff: Duration::from_secs(30),
        }
    }
}

/// The access log: one line per request or tunnel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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

/// The admin listener: `/metrics`, `/healthz`, `/readyz`, `/config` and `POST /reload`.
///
/// It is a separate listener so that monitoring never competes with, or is reachable through,
/// the proxy port; keep it on loopback (or a management network) because `/config` shows the
/// configuration and `/reload` re-reads it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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

/// `portcullis run --admin-listen`: an address for the admin listener, or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminListen {
    Off,
    On(SocketAddr),
}

impl std::str::FromStr for AdminListen {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s.eq_ignore_ascii_case("off") {
            return Ok(AdminListen::Off);
        }
        s.parse()
            .map(AdminListen::On)
            .map_err(|_| format!("{s:?} is neither an address such as 127.0.0.1:9464 nor `off`"))
    }
}

impl AdminConfig {
    /// Applies `--admin-listen`.
    pub(crate) fn apply(&mut self, choice: AdminListen) {
        match choice {
            AdminListen::Off => self.enabled = false,
            AdminListen::On(addr) => {
                self.enabled = true;
                self.listen = addr;
            }
        }
    }
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
