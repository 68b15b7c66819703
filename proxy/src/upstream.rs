//! Reaching origins: name resolution (static map, hosts file, system resolver), connecting with
//! a deadline, loop detection against our own listeners, and the pooled HTTP client.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use crate::body::ProxyBody;
use hyper::Uri;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

use portcullis_policy::Host;

use crate::config::Config;
use crate::error::ProxyError;

/// Resolves origin names: `[resolve]` entries first, then `upstream.hosts_file`, then the system
/// resolver (getaddrinfo, so /etc/hosts and /etc/resolv.conf apply as for any program).
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct Resolver {
    /// Shared, not copied: the running dialer and the reloader (which compares a reload's
    /// resolver with the running one) hold the same map, which can be large (a hosts file of
    /// tens of thousands of names).
    overrides: Arc<HashMap<Box<str>, Box<[IpAddr]>>>,
    no_system: bool,
}

impl Resolver {
    pub(crate) fn new(config: &Config) -> io::Result<Resolver> {
        let mut entries = match &config.upstream.hosts_file {
            Some(path) => read_hosts_file(path)?,
            None => Vec::new(),
        };
        // The static map wins over the hosts file: it is the more specific statement.
        let mut overrides: HashMap<Box<str>, Box<[IpAddr]>> = HashMap::new();
        for (name, addrs) in &config.resolve {
            overrides.insert(Host::new(name).as_str().into(), addrs.as_slice().into());
        }
        // Grouped by name (stable: a name's addresses keep the file's order), one exactly sized
        // allocation per name.
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        overrides.reserve(entries.len());
        let mut entries = entries.into_iter().peekable();
        let mut addrs = Vec::new();
        while let Some((name, ip)) = entries.next() {
            addrs.push(ip);
            if entries.peek().is_some_and(|(next, _)| *next == name) {
                continue;
            }
            overrides
                .entry(name)
                .or_insert_with(|| addrs.as_slice().into());
            addrs.clear();
        }
        overrides.shrink_to_fit();
        Ok(Resolver {
            overrides: Arc::new(overrides),
            no_system: !config.upstream.system_resolver,
        })
    }

    /// Socket addresses for `host:port`, in the order they should be tried.
    pub(crate) async fn resolve(
        &self,
        host: &Host,
        port: u16,
    ) -> Result<Vec<SocketAddr>, ProxyError> {
        if let Some(ip) = host.ip() {
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        if let Some(ips) = self.overrides.get(host.as_str()) {
            return Ok(ips.iter().map(|ip| SocketAddr::new(*ip, port)).collect());
        }
        let dns_error = |reason: String| ProxyError::Dns {
            host: host.to_string(),
            reason,
        };
        if self.no_system {
            return Err(dns_error(
                "not in [resolve] or upstream.hosts_file, and upstream.system_resolver is off"
                    .into(),
            ));
        }
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|e| dns_error(e.to_string()))?
            .collect();
        if addrs.is_empty() {
            return Err(dns_error("no addresses".into()));
        }
        Ok(addrs)
    }
}

fn read_hosts_file(path: &Path) -> io::Result<Vec<(Box<str>, IpAddr)>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| io::Error::new(e.kind(), format!("hosts file {}: {e}", path.display())))?;
    Ok(parse_hosts(&text))
}

fn parse_hosts(text: &str) -> Vec<(Box<str>, IpAddr)> {
    let mut entries = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("");
        let mut fields = line.split_whitespace();
        let Some(ip) = fields.next().and_then(|f| f.parse::<IpAddr>().ok()) else {
            continue;
        };
        entries.extend(fields.map(|name| (Box::from(Host::new(name).as_str()), ip)));
    }
    entries
}

/// The addresses of a name, resolved ahead of dialling, or why there are none.
pub(crate) type Resolution = Result<Vec<SocketAddr>, ProxyError>;

/// Opens TCP connections to origins under one deadline and refuses to connect to ourselves.
#[derive(Debug)]
pub(crate) struct Dialer {
    resolver: Resolver,
    connect_timeout: Duration,
    own_addrs: Vec<SocketAddr>,
    deny: Vec<ipnet::IpNet>,
    metrics: Option<Arc<crate::metrics::Metrics>>,
}

impl Dialer {
    pub(crate) fn new(
        resolver: Resolver,
        connect_timeout: Duration,
        own_addrs: Vec<SocketAddr>,
    ) -> Self {
        Dialer {
            resolver,
            connect_timeout,
            own_addrs,
            deny: Vec::new(),
            metrics: None,
        }
    }

    /// Refuses destinations that resolve into `deny` (`upstream.deny_networks`).
    pub(crate) fn with_deny(mut self, deny: Vec<ipnet::IpNet>) -> Self {
        self.deny = deny;
        self
    }

    /// Reports connect times and DNS failures to `metrics`.
    pub(crate) fn with_metrics(mut self, metrics: Arc<crate::metrics::Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Resolves and connects to an origin; the whole of it is bounded by
    /// `timeouts.upstream_connect`. Counted in the origin metrics (connect time, DNS failures).
    pub(crate) async fn dial(&self, host: &Host, port: u16) -> Result<TcpStream, ProxyError> {
        self.dial_with(host, port, None).await
    }

    /// Resolves `host:port` for a decision that depends on its addresses (the policy's
    /// `needs_resolution`), bounded by `timeouts.upstream_connect`. The answer is then dialled
    /// as it is ([`Dialer::dial_resolved`]): the addresses judged are the addresses connected
    /// to, and the name is not looked up twice.
    pub(crate) async fn resolve(&self, host: &Host, port: u16) -> Resolution {
        match tokio::time::timeout(self.connect_timeout, self.resolver.resolve(host, port)).await {
            Ok(result) => result,
            Err(_) => Err(ProxyError::ConnectTimeout {
                host: format!("{host}:{port}"),
            }),
        }
    }

    /// Connects to `host:port` at the addresses [`Dialer::resolve`] found (or fails as it did),
    /// with the same checks and deadline as [`Dialer::dial`].
    pub(crate) async fn dial_resolved(
        &self,
        host: &Host,
        port: u16,
        resolved: &Resolution,
    ) -> Result<TcpStream, ProxyError> {
        self.dial_with(host, port, Some(resolved)).await
    }

    async fn dial_with(
        &self,
        host: &Host,
        port: u16,
        resolved: Option<&Resolution>,
    ) -> Result<TcpStream, ProxyError> {
        let started = std::time::Instant::now();
        let result = self.dial_timed(host, port, resolved).await;
        if let Some(metrics) = &self.metrics {
            match &result {
                Ok(_) => metrics.upstream_connected(started.elapsed()),
                Err(ProxyError::Dns { .. }) => metrics.dns_failure(),
                Err(_) => {}
            }
        }
        result
    }

    /// [`Dialer::dial`] without the origin metrics, for the proxy's own requests (the Microsoft
    /// 365 feed has its own counter): with no Internet, its failures are not origins' failures.
    pub(crate) async fn dial_uncounted(
        &self,
        host: &Host,
        port: u16,
    ) -> Result<TcpStream, ProxyError> {
        self.dial_timed(host, port, None).await
    }

    /// Resolves (unless `resolved` is given) and connects, under `timeouts.upstream_connect`.
    async fn dial_timed(
        &self,
        host: &Host,
        port: u16,
        resolved: Option<&Resolution>,
    ) -> Result<TcpStream, ProxyError> {
        let dial = async {
            let addrs = match resolved {
                Some(resolved) => resolved.clone()?,
                None => self.resolver.resolve(host, port).await?,
            };
            self.connect(host, port, addrs).await
        };
        match tokio::time::timeout(self.connect_timeout, dial).await {
            Ok(result) => result,
            Err(_) => Err(ProxyError::ConnectTimeout {
                host: format!("{host}:{port}"),
            }),
        }
    }

    /// Resolves and connects to a parent proxy under `timeouts.upstream_connect`. Parents are
    /// the admin's own choice, so `deny_networks` does not apply; our own listeners still do.
    pub(crate) async fn dial_parent(
        &self,
        host: &Host,
        port: u16,
    ) -> Result<TcpStream, ProxyError> {
        let dial = async {
            let addrs = self.resolver.resolve(host, port).await?;
            self.connect_checked(host, port, addrs, &[]).await
        };
        match tokio::time::timeout(self.connect_timeout, dial).await {
            Ok(result) => result,
            Err(_) => Err(ProxyError::ConnectTimeout {
                host: format!("{host}:{port}"),
            }),
        }
    }

    /// Refuses an address literal in `upstream.deny_networks`, for a destination a parent
    /// will connect to (names are resolved by the parent, where our resolver may not work).
    pub(crate) fn check_literal(&self, host: &Host) -> Result<(), ProxyError> {
        match host.ip().map(|ip| ip.to_canonical()) {
            Some(addr) if self.deny.iter().any(|n| n.contains(&addr)) => {
                Err(ProxyError::DestinationDenied {
                    host: host.to_string(),
                    addr,
                })
            }
            _ => Ok(()),
        }
    }

    async fn connect(
        &self,
        host: &Host,
        port: u16,
        addrs: Vec<SocketAddr>,
    ) -> Result<TcpStream, ProxyError> {
        self.connect_checked(host, port, addrs, &self.deny).await
    }

    async fn connect_checked(
        &self,
        host: &Host,
        port: u16,
        addrs: Vec<SocketAddr>,
        deny: &[ipnet::IpNet],
    ) -> Result<TcpStream, ProxyError> {
        if let Some(addr) = addrs.iter().find(|a| self.is_own(a)) {
            return Err(ProxyError::Loop(format!(
                "{host}:{port} is this proxy ({addr})"
            )));
        }
        // Every address is checked, not just the first: a name must not smuggle a denied
        // address in behind an allowed one.
        if let Some(addr) = addrs
            .iter()
            .map(|a| a.ip().to_canonical())
            .find(|ip| deny.iter().any(|n| n.contains(ip)))
        {
            return Err(ProxyError::DestinationDenied {
                host: host.to_string(),
                addr,
            });
        }
        let mut last_err = None;
        for addr in addrs {
            match TcpStream::connect(addr).await {
                Ok(stream) => {
                    // Proxied traffic is mostly request/response: don't let Nagle delay it.
                    let _ = stream.set_nodelay(true);
                    return Ok(stream);
                }
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    last_err = Some(ProxyError::Refused { addr });
                }
                Err(e) => {
                    last_err = Some(ProxyError::Connect {
                        addr,
                        reason: e.to_string(),
                    })
                }
            }
        }
        Err(last_err.unwrap_or_else(|| ProxyError::Dns {
            host: host.to_string(),
            reason: "no addresses".into(),
        }))
    }

    /// True when `addr` is one of our listeners. A wildcard listener matches every loopback
    /// address on its port; other local interface addresses are caught by `Via` loop detection.
    fn is_own(&self, addr: &SocketAddr) -> bool {
        self.own_addrs.iter().any(|own| {
            own.port() == addr.port()
                && (own.ip() == addr.ip() || (own.ip().is_unspecified() && addr.ip().is_loopback()))
        })
    }
}

/// The connector the pooled client uses: a `tower::Service<Uri>` over [`Dialer`].
#[derive(Clone, Debug)]
pub(crate) struct Connector {
    dialer: Arc<Dialer>,
}

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<TcpStream>;
    type Error = ProxyError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, ProxyError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let dialer = Arc::clone(&self.dialer);
        Box::pin(async move {
            let host = uri
                .host()
                .ok_or_else(|| ProxyError::BadRequest("request target has no host".into()))?;
            let port = uri.port_u16().unwrap_or(80);
            dialer.dial(&Host::new(host), port).await.map(TokioIo::new)
        })
    }
}

/// The pooled HTTP/1.1 client used for forwarding: one pool of keep-alive connections per origin.
pub(crate) type HttpClient = Client<Connector, ProxyBody>;

pub(crate) fn http_client(config: &Config, dialer: Arc<Dialer>) -> HttpClient {
    pooled_client_builder(config).build(Connector { dialer })
}

/// The settings of every pooled HTTP/1.1 client: to origins, and to each parent proxy.
pub(crate) fn pooled_client_builder(config: &Config) -> hyper_util::client::legacy::Builder {
    let mut builder = Client::builder(TokioExecutor::new());
    builder
        .pool_idle_timeout(config.upstream.pool_idle_timeout)
        .pool_max_idle_per_host(config.upstream.pool_max_idle_per_host)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        // Some origins (and Exchange front-ends behind appliances) are picky about header case;
        // pass the client's spelling through.
        .http1_preserve_header_case(true)
        .http1_max_buf_size(config.upstream.read_buffer_bytes)
        // We always set Host ourselves, from the authority we actually connect to.
        .set_host(false);
    builder
}

#[cfg(test)]
mod tests {
    #![expect(clippy::unwrap_used, reason = "tests")]
    use super::*;

    #[test]
    fn hosts_file_lines() {
        let entries = parse_hosts(
            "# comment\n127.0.0.1 localhost\n10.0.0.5  Outlook.Office365.com. mail # x\n\nbogus line\n::1 ip6-localhost\n",
        );
        let ip5: IpAddr = "10.0.0.5".parse().unwrap();
        assert!(entries.contains(&("outlook.office365.com".into(), ip5)));
        assert!(entries.contains(&("mail".into(), ip5)));
        assert!(entries.contains(&("ip6-localhost".into(), "::1".parse().unwrap())));
        assert_eq!(entries.len(), 4);
    }

    #[tokio::test]
    async fn static_map_beats_system_resolver() {
        let config = Config::parse(
            "[resolve]\n\"Outlook.Office365.com\" = [\"127.0.0.9\"]\n",
            "t",
        )
        .unwrap();
        let r = Resolver::new(&config).unwrap();
        let addrs = r
            .resolve(&Host::new("outlook.office365.com."), 443)
            .await
            .unwrap();
        assert_eq!(addrs, vec!["127.0.0.9:443".parse().unwrap()]);
        let v6 = r.resolve(&Host::new("[::1]"), 8080).await.unwrap();
        assert_eq!(v6, vec!["[::1]:8080".parse().unwrap()]);
    }

    #[tokio::test]
    async fn hosts_file_names_keep_every_address_in_file_order_and_resolve_wins() {
        let dir = tempfile::tempdir().unwrap();
        let hosts = dir.path().join("hosts");
        std::fs::write(
            &hosts,
            "10.0.0.2 b.test multi.test\n10.0.0.1 a.test\n10.0.0.3 Multi.Test\n10.0.0.4 pinned.test\n",
        )
        .unwrap();
        let config = Config::parse(
            &format!(
                "[upstream]\nhosts_file = {:?}\n[resolve]\n\"pinned.test\" = [\"127.0.0.7\"]\n",
                hosts.display().to_string()
            ),
            "t",
        )
        .unwrap();
        let r = Resolver::new(&config).unwrap();
        let lookup = |name: &'static str| {
            let r = r.clone();
            async move { r.resolve(&Host::new(name), 80).await.unwrap() }
        };
        let multi = lookup("multi.test").await;
        assert_eq!(
            multi,
            vec![
                "10.0.0.2:80".parse().unwrap(),
                "10.0.0.3:80".parse().unwrap()
            ]
        );
        assert_eq!(lookup("a.test").await, vec!["10.0.0.1:80".parse().unwrap()]);
        assert_eq!(lookup("b.test").await, vec!["10.0.0.2:80".parse().unwrap()]);
        assert_eq!(
            lookup("pinned.test").await,
            vec!["127.0.0.7:80".parse().unwrap()]
        );
    }

    #[tokio::test]
    async fn resolved_addresses_are_dialled_as_given_and_still_checked() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // The name resolves elsewhere; the dial goes where the earlier answer said.
        let config = Config::parse(
            "[resolve]\n\"autodiscover.lab.test\" = [\"192.0.2.1\"]\n",
            "t",
        )
        .unwrap();
        let d = Dialer::new(
            Resolver::new(&config).unwrap(),
            Duration::from_secs(2),
            Vec::new(),
        );
        let stream = d
            .dial_resolved(
                &Host::new("autodiscover.lab.test"),
                addr.port(),
                &Ok(vec![addr]),
            )
            .await
            .unwrap();
        assert_eq!(stream.peer_addr().unwrap(), addr);
        // A failed resolution fails the dial the same way.
        let failed = Err(ProxyError::Dns {
            host: "x".into(),
            reason: "nx".into(),
        });
        let err = d
            .dial_resolved(&Host::new("x"), 1, &failed)
            .await
            .unwrap_err();
        assert!(matches!(err, ProxyError::Dns { .. }), "{err}");
        // deny_networks still applies.
        let d = d.with_deny(vec!["127.0.0.0/8".parse().unwrap()]);
        let err = d
            .dial_resolved(
                &Host::new("autodiscover.lab.test"),
                addr.port(),
                &Ok(vec![addr]),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, ProxyError::DestinationDenied { .. }), "{err}");
    }

    #[tokio::test]
    async fn own_listener_is_a_loop() {
        let d = Dialer::new(
            Resolver::default(),
            Duration::from_secs(1),
            vec!["0.0.0.0:3128".parse().unwrap()],
        );
        let err = d.dial(&Host::new("127.0.0.1"), 3128).await.unwrap_err();
        assert!(matches!(err, ProxyError::Loop(_)), "{err}");
    }
}
