//! Prometheus metrics, served by the admin listener ([`crate::admin`]).
//!
//! One explicit [`Registry`] per process (never the crate's global default registry), created at
//! start and shared by every config snapshot, so a reload never resets a counter. Label values
//! come from small enums or from fixed strings in the code — never host names, URLs or users —
//! so a scrape stays the same size however many clients and origins there are.
//!
//! The request path only touches counters: finished transactions arrive through
//! [`Metrics::observe`] (called by the access log for every record, whose typed outcome gives
//! the labels), and components that keep their own atomics (authentication, the certificate
//! cache) are read at scrape time ([`sources`]) instead of being counted twice.

mod families;
mod groups;
mod icap;
mod parents;
mod sources;
mod transparent;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use portcullis_policy::ExchangeClass;
use prometheus::{Encoder as _, IntGauge, Registry, TextEncoder};

pub(crate) use crate::error::Side;
use crate::record::{Disposition, Record};
use families::{AuthFamilies, ConfigFamilies, Connections, Requests, Tls};
use groups::GroupFamilies;
pub(crate) use groups::{GroupLookup, GroupSource};
pub(crate) use parents::ParentFailure;
use sources::{raise, Sources};
pub(crate) use sources::{AuthAttemptScheme, AuthCounters, AuthCounts, CertCacheStats};

/// Why a CONNECT tunnel's TLS was passed through instead of intercepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TlsTunnelReason {
    /// An Outlook/Exchange endpoint the Outlook profile says must not be intercepted.
    OutlookProfile,
    /// A policy rule (`action = "tunnel"` or `direct`) other than the Outlook profile.
    BypassRule,
    /// The client did not start TLS (no ClientHello within the deadline).
    NonTls,
    /// Interception failed before (the client rejected our certificate: pinning); passed
    /// through from then on.
    PinningFailure,
}

impl TlsTunnelReason {
    const ALL: [TlsTunnelReason; 4] = [
        TlsTunnelReason::OutlookProfile,
        TlsTunnelReason::BypassRule,
        TlsTunnelReason::NonTls,
        TlsTunnelReason::PinningFailure,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            TlsTunnelReason::OutlookProfile => "outlook_profile",
            TlsTunnelReason::BypassRule => "bypass_rule",
            TlsTunnelReason::NonTls => "non_tls",
            TlsTunnelReason::PinningFailure => "pinning_failure",
        }
    }
}

impl Side {
    fn as_str(self) -> &'static str {
        match self {
            Side::Client => "client",
            Side::Upstream => "upstream",
        }
    }
}

/// Methods that get their own label value; anything else is `other`, because the method comes
/// from the network and an attacker must not be able to create series. Outlook's RPC over HTTP
/// methods are listed because Exchange traffic is what this proxy is for.
const METHODS: [&str; 12] = [
    "GET",
    "HEAD",
    "POST",
    "PUT",
    "DELETE",
    "CONNECT",
    "OPTIONS",
    "TRACE",
    "PATCH",
    "RPC_IN_DATA",
    "RPC_OUT_DATA",
    "NONE",
];

fn method_label(method: &str) -> &'static str {
    METHODS
        .iter()
        .find(|m| **m == method)
        .copied()
        .unwrap_or("other")
}

/// How many values the `exchange` label has: the Exchange classes and `none`.
const EXCHANGE_VALUES: usize = 7;

/// The `exchange` label of a request — its Exchange protocol (the policy's own name for it),
/// or `none` — and its index among [`EXCHANGE_VALUES`]. The match is exhaustive, so a new
/// class cannot be added without a slot here, and the series stay bounded.
fn exchange_label(class: Option<ExchangeClass>) -> (usize, &'static str) {
    let index = match class {
        None => return (0, "none"),
        Some(ExchangeClass::Autodiscover) => 1,
        Some(ExchangeClass::Mapi) => 2,
        Some(ExchangeClass::RpcHttp) => 3,
        Some(ExchangeClass::Ews) => 4,
        Some(ExchangeClass::Eas) => 5,
        Some(ExchangeClass::Oab) => 6,
    };
    (index, class.map_or("none", ExchangeClass::as_str))
}

fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => "other",
    }
}

/// Every metric the proxy exports. Cheap to share (`Arc<Metrics>`); all methods take `&self`.
pub(crate) struct Metrics {
    registry: Registry,
    /// The standard `process_*` families (resident memory, CPU seconds, open and maximum file
    /// descriptors, start time, threads), read from `/proc/self` at scrape time. Their own
    /// registry, because the main one prefixes every name with `portcullis_` and these keep
    /// the names every exporter uses, so stock dashboards and alerts work.
    process: Registry,
    requests: Requests,
    connections: Connections,
    auth: AuthFamilies,
    tls: Tls,
    config: ConfigFamilies,
    transparent: transparent::TransparentFamilies,
    groups: GroupFamilies,
    parents: parents::ParentFamilies,
    icap: icap::IcapFamilies,
    /// Sources read at scrape time. One lock, so concurrent scrapes do not add a delta twice.
    sources: Mutex<Sources>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// Creates the registry and every metric family, so that a scrape shows all of them (at
    /// zero) from the start, and dashboards do not have to cope with missing series.
    pub(crate) fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new_custom(Some("portcullis".to_owned()), None)?;
        let metrics = Metrics {
            requests: Requests::register(&registry)?,
            connections: Connections::register(&registry)?,
            auth: AuthFamilies::register(&registry)?,
            tls: Tls::register(&registry)?,
            config: ConfigFamilies::register(&registry)?,
            transparent: transparent::TransparentFamilies::register(&registry)?,
            groups: GroupFamilies::register(&registry)?,
            parents: parents::ParentFamilies::register(&registry)?,
            icap: icap::IcapFamilies::register(&registry)?,
            sources: Mutex::new(Sources::new()),
            registry,
            process: process_registry()?,
        };
        metrics.config_loaded();
        Ok(metrics)
    }

    /// Counts one finished transaction. Called by the access log for every record, so every
    /// path that logs (requests, tunnels, 407s, unparsable requests) is counted exactly once,
    /// whether or not the access log itself is enabled.
    pub(crate) fn observe(&self, record: &Record) {
        let r = &self.requests;
        let kind = record.disposition();
        let exchange = exchange_label(record.policy.as_ref().and_then(|p| p.exchange));
        r.requests
            .with_label_values(&[
                method_label(&record.method),
                kind.as_str(),
                status_class(record.status),
                exchange.1,
            ])
            .inc();
        r.duration(kind, exchange)
            .observe(record.elapsed_ms as f64 / 1000.0);
        if let Some(cause) = record.error {
            r.errors.with_label_values(&[cause]).inc();
        }
        if let Some(policy) = &record.policy {
            self.policy_decision(&policy.rule, kind);
        }
        r.client_sent.inc_by(record.bytes);
        r.client_received.inc_by(record.bytes_in);
        // Only transactions that reached an origin moved bytes upstream; an error page or a
        // 407 was produced here.
        if record.reached_origin() {
            r.upstream_received.inc_by(record.bytes);
            r.upstream_sent.inc_by(record.bytes_in);
        }
        self.transparent.observe(record);
    }

    /// A policy rule named `rule` decided `decision`. Rule names come from the config file,
    /// so their number is bounded by it.
    pub(crate) fn policy_decision(&self, rule: &str, decision: Disposition) {
        self.requests
            .policy_decisions
            .with_label_values(&[rule, decision.as_str()])
            .inc();
    }

    /// One group lookup for an authenticated user (`[auth.groups]`).
    pub(crate) fn group_lookup(&self, source: GroupSource, result: GroupLookup) {
        self.groups.lookup(source, result);
    }

    /// A directory group lookup took `elapsed`.
    pub(crate) fn group_lookup_duration(&self, source: GroupSource, elapsed: Duration) {
        self.groups.duration(source, elapsed);
    }

    /// One ICAP service's part in a transaction (`icap_requests_total`, `icap_duration_seconds`).
    pub(crate) fn icap(&self, service: &str, result: crate::icap::IcapResult, elapsed: Duration) {
        self.icap.observe(service, result, elapsed);
    }

    /// The configured ICAP services, shown at zero until they are used.
    pub(crate) fn icap_services(&self, names: &[&str]) {
        self.icap.services(names);
    }

    /// A client connection was accepted; the gauge drops when the guard does.
    pub(crate) fn connection_opened(&self) -> ActiveGuard {
        self.connections.accepted.inc();
        ActiveGuard::new(&self.connections.active)
    }

    /// A client connection was refused because `server.max_connections` was reached.
    pub(crate) fn connection_refused(&self) {
        self.connections.refused.inc();
    }

    /// A tunnel (CONNECT or upgraded connection) started; the gauge drops when the guard does.
    pub(crate) fn tunnel_opened(&self) -> ActiveGuard {
        ActiveGuard::new(&self.connections.active_tunnels)
    }

    /// A successful origin connect (resolution included) took `elapsed`.
    pub(crate) fn upstream_connected(&self, elapsed: Duration) {
        self.connections
            .upstream_connect
            .observe(elapsed.as_secs_f64());
    }

    /// An origin name could not be resolved.
    pub(crate) fn dns_failure(&self) {
        self.connections.dns_failures.inc();
    }

    /// A CONNECT tunnel's TLS is being intercepted.
    pub(crate) fn tls_intercepted(&self) {
        self.tls.intercepted.inc();
    }

    /// A CONNECT tunnel's TLS is passed through, and why.
    pub(crate) fn tls_tunnelled(&self, reason: TlsTunnelReason) {
        self.tls
            .tunnelled
            .with_label_values(&[reason.as_str()])
            .inc();
    }

    /// An interception handshake failed on `side` (the client, or the origin).
    pub(crate) fn tls_handshake_failed(&self, side: Side) {
        self.tls
            .handshake_failures
            .with_label_values(&[side.as_str()])
            .inc();
    }

    /// The Microsoft 365 endpoint list now in use.
    pub(crate) fn m365_loaded(&self, instance: &str, version: &str) {
        self.config.m365_version.reset();
        self.config
            .m365_version
            .with_label_values(&[instance, version])
            .set(1);
    }

    /// One check of the Microsoft 365 web service; `result` is one of a fixed set of labels.
    pub(crate) fn m365_fetched(&self, result: &'static str) {
        self.config.m365_fetches.with_label_values(&[result]).inc();
    }

    /// A function for [`portcullis_certs::CertCache::with_mint_observer`] that feeds the mint
    /// duration histogram.
    pub(crate) fn cert_mint_observer(&self) -> impl Fn(Duration) + Send + Sync + 'static {
        let histogram = self.tls.mint_duration.clone();
        move |elapsed| histogram.observe(elapsed.as_secs_f64())
    }

    /// Exports a certificate cache's counters (read at scrape time); called for every
    /// snapshot. A new cache keeps the totals monotonic: the old cache's counts are kept.
    pub(crate) fn watch_cert_cache(&self, cache: Option<Arc<dyn CertCacheStats>>) {
        if let Ok(mut sources) = self.sources.lock() {
            sources.cert_cache.set(cache);
        }
    }

    /// Exports the authenticator's counters (read at scrape time); called for every snapshot.
    pub(crate) fn watch_auth(&self, auth: Option<Arc<dyn AuthCounters>>) {
        if let Ok(mut sources) = self.sources.lock() {
            sources.auth.set(auth);
        }
    }

    /// Records a reload attempt; a success also stamps the config's load time.
    pub(crate) fn config_reloaded(&self, ok: bool) {
        let result = if ok { "success" } else { "failure" };
        self.config.reloads.with_label_values(&[result]).inc();
        if ok {
            self.config_loaded();
        } else {
            self.config.reload_ok.set(0);
        }
    }

    /// False after a rejected reload, until the next successful one.
    pub(crate) fn last_reload_ok(&self) -> bool {
        self.config.reload_ok.get() == 1
    }

    fn config_loaded(&self) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        self.config.reload_time.set(now.as_secs_f64());
        self.config.reload_ok.set(1);
    }

    /// The Prometheus text exposition of every metric.
    pub(crate) fn render(&self) -> Result<String, prometheus::Error> {
        self.sync_sources();
        let mut families = self.registry.gather();
        families.extend(self.process.gather());
        let mut out = Vec::new();
        TextEncoder::new().encode(&families, &mut out)?;
        String::from_utf8(out).map_err(|e| prometheus::Error::Msg(e.to_string()))
    }

    /// Copies the counters other components keep into the registry.
    fn sync_sources(&self) {
        let Ok(mut sources) = self.sources.lock() else {
            return;
        };
        let a = &self.auth;
        let auth = sources.auth_totals();
        for (scheme, counts) in AuthAttemptScheme::ALL.into_iter().zip(auth.attempts) {
            for (result, total) in ["success", "failure"].into_iter().zip(counts) {
                raise(
                    &a.attempts.with_label_values(&[scheme.as_str(), result]),
                    total,
                );
            }
        }
        raise(&a.throttled, auth.throttled);
        raise(&a.hash_verifications, auth.hash_verifications);
        raise(&a.cache_hits, auth.credential_cache_hits);

        let t = &self.tls;
        let [hits, coalesced, misses, mints, mint_failures] = sources.cert_cache.totals();
        raise(&t.cache_lookups.with_label_values(&["hit"]), hits);
        raise(
            &t.cache_lookups.with_label_values(&["coalesced"]),
            coalesced,
        );
        raise(&t.cache_lookups.with_label_values(&["miss"]), misses);
        raise(&t.certs_minted, mints);
        raise(&t.mint_failures, mint_failures);
        let entries = sources
            .cert_cache
            .current
            .as_ref()
            .map_or(0, |cache| cache.cert_cache_stats().entries);
        t.cache_entries
            .set(i64::try_from(entries).unwrap_or(i64::MAX));
    }
}

/// A registry holding only the process collector (Linux `/proc`; elsewhere it is empty).
fn process_registry() -> Result<Registry, prometheus::Error> {
    let registry = Registry::new();
    #[cfg(target_os = "linux")]
    registry.register(Box::new(
        prometheus::process_collector::ProcessCollector::for_self(),
    ))?;
    Ok(registry)
}

/// Keeps a gauge raised while it lives (an open connection or tunnel).
#[must_use = "the gauge drops again when the guard is dropped"]
pub(crate) struct ActiveGuard(IntGauge);

impl ActiveGuard {
    fn new(gauge: &IntGauge) -> Self {
        gauge.inc();
        ActiveGuard(gauge.clone())
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests;
