//! Prometheus metrics, served by the admin listener ([`crate::admin`]).
//!
//! One explicit [`Registry`] per process (never the crate's global default registry), created at
//! start and shared by every config snapshot, so a reload never resets a counter. Label values
//! come from small enums or from fixed strings in the code — never host names, URLs or users —
//! so a scrape stays the same size however many clients and origins there are.
//!
//! The request path only touches counters: finished transactions arrive through
//! [`Metrics::observe`] (called by the access log for every record), and components that keep
//! their own atomics (authentication, the certificate cache) are read at scrape time instead of
//! being counted twice.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use portcullis_certs::{CacheStats, CertCache};
use prometheus::{
    Encoder as _, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

pub(crate) use crate::error::Side;
use crate::record::{Disposition, Record};

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
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            TlsTunnelReason::OutlookProfile => "outlook_profile",
            TlsTunnelReason::BypassRule => "bypass_rule",
            TlsTunnelReason::NonTls => "non_tls",
            TlsTunnelReason::PinningFailure => "pinning_failure",
        }
    }
}

fn side_label(side: Side) -> &'static str {
    match side {
        Side::Client => "client",
        Side::Upstream => "upstream",
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

/// Request durations run from sub-millisecond local answers to hour-long tunnels.
const DURATION_BUCKETS: [f64; 16] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
];
/// Connects (resolution included) are bounded by `timeouts.upstream_connect`, 15 s by default.
const CONNECT_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 15.0,
];
/// An ECDSA leaf takes about a millisecond, an RSA-2048 key pair tens to hundreds.
const MINT_BUCKETS: [f64; 11] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

struct HotChildren {
    client_sent: IntCounter,
    client_received: IntCounter,
    upstream_sent: IntCounter,
    upstream_received: IntCounter,
    /// `request_duration_seconds` by [`Disposition`], in [`Disposition::ALL`] order.
    duration: [Histogram; 4],
}

/// Every metric the proxy exports. Cheap to share (`Arc<Metrics>`); all methods take `&self`.
pub(crate) struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    request_errors: IntCounterVec,
    client_bytes: IntCounterVec,
    upstream_bytes: IntCounterVec,
    /// Children of the vectors above with fixed labels, resolved once: every request touches
    /// them, and a label lookup hashes and locks.
    hot: HotChildren,
    connections_accepted: IntCounter,
    connections_refused: IntCounter,
    active_connections: IntGauge,
    active_tunnels: IntGauge,
    upstream_connect: Histogram,
    dns_failures: IntCounter,
    auth_attempts: IntCounterVec,
    auth_throttled: IntCounter,
    auth_hash_verifications: IntCounter,
    auth_cache_hits: IntCounter,
    tls_intercepted: IntCounter,
    tls_tunnelled: IntCounterVec,
    tls_handshake_failures: IntCounterVec,
    certs_minted: IntCounter,
    cert_mint_failures: IntCounter,
    cert_mint_duration: Histogram,
    cert_cache_lookups: IntCounterVec,
    cert_cache_entries: IntGauge,
    policy_decisions: IntCounterVec,
    config_reloads: IntCounterVec,
    config_reload_time: Gauge,
    config_reload_ok: IntGauge,
    m365_version: IntGaugeVec,
    m365_fetches: IntCounterVec,
    /// Sources read at scrape time. One lock, so concurrent scrapes do not add a delta twice.
    sources: Mutex<Sources>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

struct Sources {
    auth: Accumulated<dyn AuthCounters, 5>,
    cert_cache: Accumulated<dyn CertCacheStats, 5>,
}

/// Whatever owns the certificate cache (the cache itself, or the interceptor holding it).
pub(crate) trait CertCacheStats: Send + Sync {
    fn cert_cache_stats(&self) -> CacheStats;
}

impl CertCacheStats for CertCache {
    fn cert_cache_stats(&self) -> CacheStats {
        self.stats()
    }
}

/// The authenticator's own counters, read at scrape time: successes, failures, throttled
/// failures, hash verifications, credential cache hits.
pub(crate) trait AuthCounters: Send + Sync {
    fn auth_counts(&self) -> [u64; 5];
}

impl Metrics {
    /// Creates the registry and every metric family, so that a scrape shows all of them (at
    /// zero) from the start, and dashboards do not have to cope with missing series.
    pub(crate) fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new_custom(Some("portcullis".to_owned()), None)?;
        let r = &registry;
        let requests = counter_vec(
            r,
            "requests_total",
            "Finished transactions (requests and whole CONNECT tunnels) by method, decision and status class.",
            &["method", "decision", "status_class"],
        )?;
        let request_duration = register(
            r,
            HistogramVec::new(
                HistogramOpts::new(
                    "request_duration_seconds",
                    "Time from the request head to the last response byte (a tunnel's whole life).",
                )
                .buckets(DURATION_BUCKETS.to_vec()),
                &["decision"],
            )?,
        )?;
        let request_errors = counter_vec(
            r,
            "request_errors_total",
            "Transactions the proxy answered with an error, by cause (the X-Portcullis-Error value).",
            &["cause"],
        )?;
        let client_bytes = counter_vec(
            r,
            "client_bytes_total",
            "Payload bytes between clients and the proxy (bodies and tunnel data, not heads).",
            &["direction"],
        )?;
        let upstream_bytes = counter_vec(
            r,
            "upstream_bytes_total",
            "Payload bytes between the proxy and origins (bodies and tunnel data, not heads).",
            &["direction"],
        )?;
        let active_tunnels = gauge(
            r,
            "active_tunnels",
            "CONNECT tunnels and upgraded (WebSocket) connections open now.",
        )?;
        let upstream_connect = register(
            r,
            Histogram::with_opts(
                HistogramOpts::new(
                    "upstream_connect_duration_seconds",
                    "Name resolution plus TCP connect to an origin, for successful connects.",
                )
                .buckets(CONNECT_BUCKETS.to_vec()),
            )?,
        )?;
        let cert_mint_duration = register(
            r,
            Histogram::with_opts(
                HistogramOpts::new(
                    "cert_mint_duration_seconds",
                    "Time to mint one leaf certificate (key generation and signing).",
                )
                .buckets(MINT_BUCKETS.to_vec()),
            )?,
        )?;
        let build_info = register(
            r,
            IntGaugeVec::new(
                Opts::new(
                    "build_info",
                    "Always 1; the labels say which version and features are running.",
                ),
                &["version", "features"],
            )?,
        )?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION"), features()])
            .set(1);
        let hot = HotChildren {
            client_sent: client_bytes.with_label_values(&["sent"]),
            client_received: client_bytes.with_label_values(&["received"]),
            upstream_sent: upstream_bytes.with_label_values(&["sent"]),
            upstream_received: upstream_bytes.with_label_values(&["received"]),
            duration: Disposition::ALL.map(|d| request_duration.with_label_values(&[d.as_str()])),
        };
        let metrics = Metrics {
            requests,
            request_errors,
            client_bytes,
            upstream_bytes,
            hot,
            connections_accepted: counter(
                r,
                "client_connections_total",
                "Client connections accepted.",
            )?,
            connections_refused: counter(
                r,
                "client_connections_refused_total",
                "Client connections refused with a 503 because server.max_connections was reached.",
            )?,
            active_connections: gauge(
                r,
                "active_client_connections",
                "Client connections open now (including those carrying a tunnel).",
            )?,
            active_tunnels,
            upstream_connect,
            dns_failures: counter(
                r,
                "dns_failures_total",
                "Origin names that could not be resolved.",
            )?,
            auth_attempts: counter_vec(
                r,
                "auth_attempts_total",
                "Proxy authentication attempts that presented credentials, by result.",
                &["result"],
            )?,
            auth_throttled: counter(
                r,
                "auth_throttled_total",
                "Authentication failures answered late because the client kept failing.",
            )?,
            auth_hash_verifications: counter(
                r,
                "auth_hash_verifications_total",
                "Password hashes computed (credential cache misses for Basic).",
            )?,
            auth_cache_hits: counter(
                r,
                "auth_credential_cache_hits_total",
                "Basic credentials accepted from the verified-credential cache.",
            )?,
            tls_intercepted: counter(
                r,
                "tls_intercepted_total",
                "CONNECT tunnels whose TLS was intercepted.",
            )?,
            tls_tunnelled: counter_vec(
                r,
                "tls_tunnelled_total",
                "CONNECT tunnels passed through without interception, by reason.",
                &["reason"],
            )?,
            tls_handshake_failures: counter_vec(
                r,
                "tls_handshake_failures_total",
                "Failed TLS handshakes during interception, by side (client or upstream).",
                &["side"],
            )?,
            certs_minted: counter(r, "certs_minted_total", "Leaf certificates minted.")?,
            cert_mint_failures: counter(
                r,
                "cert_mint_failures_total",
                "Leaf certificates that could not be minted.",
            )?,
            cert_mint_duration,
            cert_cache_lookups: counter_vec(
                r,
                "cert_cache_lookups_total",
                "Certificate cache lookups by result: hit, coalesced (waited for another lookup's mint) or miss.",
                &["result"],
            )?,
            cert_cache_entries: gauge(
                r,
                "cert_cache_entries",
                "Leaf certificates held in the cache now.",
            )?,
            policy_decisions: counter_vec(
                r,
                "policy_decisions_total",
                "Policy decisions by the name of the rule that matched and the decision.",
                &["rule", "decision"],
            )?,
            config_reloads: counter_vec(
                r,
                "config_reloads_total",
                "Configuration reloads (SIGHUP or POST /reload) by result.",
                &["result"],
            )?,
            config_reload_time: register(
                r,
                Gauge::new(
                    "config_last_reload_success_timestamp_seconds",
                    "When the configuration in use was loaded (Unix time).",
                )?,
            )?,
            config_reload_ok: gauge(
                r,
                "config_last_reload_successful",
                "1 if the last reload succeeded (or none was tried), 0 if it was rejected.",
            )?,
            m365_version: register(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        "m365_endpoints_version_info",
                        "The Microsoft 365 endpoint list in use (1 for its instance and version).",
                    ),
                    &["instance", "version"],
                )?,
            )?,
            m365_fetches: counter_vec(
                r,
                "m365_fetches_total",
                "Requests to the Microsoft 365 endpoints web service by result (unchanged, updated, throttled, failed).",
                &["result"],
            )?,
            sources: Mutex::new(Sources {
                auth: Accumulated::new(auth_counts),
                cert_cache: Accumulated::new(cert_cache_counts),
            }),
            registry,
        };
        for direction in ["received", "sent"] {
            metrics.client_bytes.with_label_values(&[direction]);
            metrics.upstream_bytes.with_label_values(&[direction]);
        }
        for result in ["success", "failure"] {
            metrics.auth_attempts.with_label_values(&[result]);
            metrics.config_reloads.with_label_values(&[result]);
        }
        for result in ["hit", "coalesced", "miss"] {
            metrics.cert_cache_lookups.with_label_values(&[result]);
        }
        for reason in [
            TlsTunnelReason::OutlookProfile,
            TlsTunnelReason::BypassRule,
            TlsTunnelReason::NonTls,
            TlsTunnelReason::PinningFailure,
        ] {
            metrics.tls_tunnelled.with_label_values(&[reason.as_str()]);
        }
        for side in [Side::Client, Side::Upstream] {
            metrics
                .tls_handshake_failures
                .with_label_values(&[side_label(side)]);
        }
        metrics.config_loaded();
        Ok(metrics)
    }

    /// Counts one finished transaction. Called by the access log for every record, so every
    /// path that logs (requests, tunnels, 407s, unparsable requests) is counted exactly once,
    /// whether or not the access log itself is enabled.
    pub(crate) fn observe(&self, record: &Record) {
        let kind = record.disposition();
        let decision = kind.as_str();
        self.requests
            .with_label_values(&[
                method_label(&record.method),
                decision,
                status_class(record.status),
            ])
            .inc();
        self.hot.duration[kind as usize].observe(record.elapsed_ms as f64 / 1000.0);
        if let Some(cause) = record.error {
            self.request_errors.with_label_values(&[cause]).inc();
        }
        if let Some(policy) = &record.policy {
            self.policy_decision(&policy.rule, kind);
        }
        self.hot.client_sent.inc_by(record.bytes);
        self.hot.client_received.inc_by(record.bytes_in);
        // Only transactions that reached an origin moved bytes upstream; an error page or a
        // 407 was produced here.
        if record.reached_origin() {
            self.hot.upstream_received.inc_by(record.bytes);
            self.hot.upstream_sent.inc_by(record.bytes_in);
        }
    }

    /// A client connection was accepted; the gauge drops when the guard does.
    pub(crate) fn connection_opened(&self) -> ActiveGuard {
        self.connections_accepted.inc();
        ActiveGuard::new(&self.active_connections)
    }

    /// A client connection was refused because `server.max_connections` was reached.
    pub(crate) fn connection_refused(&self) {
        self.connections_refused.inc();
    }

    /// A tunnel (CONNECT or upgraded connection) started; the gauge drops when the guard does.
    pub(crate) fn tunnel_opened(&self) -> ActiveGuard {
        ActiveGuard::new(&self.active_tunnels)
    }

    /// A successful origin connect (resolution included) took `elapsed`.
    pub(crate) fn upstream_connected(&self, elapsed: Duration) {
        self.upstream_connect.observe(elapsed.as_secs_f64());
    }

    /// An origin name could not be resolved.
    pub(crate) fn dns_failure(&self) {
        self.dns_failures.inc();
    }

    /// A CONNECT tunnel's TLS is being intercepted.
    pub(crate) fn tls_intercepted(&self) {
        self.tls_intercepted.inc();
    }

    /// A CONNECT tunnel's TLS is passed through, and why.
    pub(crate) fn tls_tunnelled(&self, reason: TlsTunnelReason) {
        self.tls_tunnelled
            .with_label_values(&[reason.as_str()])
            .inc();
    }

    /// An interception handshake failed on `side` (the client, or the origin).
    pub(crate) fn tls_handshake_failed(&self, side: Side) {
        self.tls_handshake_failures
            .with_label_values(&[side_label(side)])
            .inc();
    }

    /// The Microsoft 365 endpoint list now in use.
    pub(crate) fn m365_loaded(&self, instance: &str, version: &str) {
        self.m365_version.reset();
        self.m365_version
            .with_label_values(&[instance, version])
            .set(1);
    }

    /// One check of the Microsoft 365 web service; `result` is one of a fixed set of labels.
    pub(crate) fn m365_fetched(&self, result: &'static str) {
        self.m365_fetches.with_label_values(&[result]).inc();
    }

    /// A policy rule named `rule` decided `decision`. Rule names come from the config file,
    /// so their number is bounded by it.
    pub(crate) fn policy_decision(&self, rule: &str, decision: Disposition) {
        self.policy_decisions
            .with_label_values(&[rule, decision.as_str()])
            .inc();
    }

    /// A function for [`CertCache::with_mint_observer`] that feeds the mint duration histogram.
    pub(crate) fn cert_mint_observer(&self) -> impl Fn(Duration) + Send + Sync + 'static {
        let histogram = self.cert_mint_duration.clone();
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
        self.config_reloads.with_label_values(&[result]).inc();
        if ok {
            self.config_loaded();
        } else {
            self.config_reload_ok.set(0);
        }
    }

    /// False after a rejected reload, until the next successful one.
    pub(crate) fn last_reload_ok(&self) -> bool {
        self.config_reload_ok.get() == 1
    }

    fn config_loaded(&self) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        self.config_reload_time.set(now.as_secs_f64());
        self.config_reload_ok.set(1);
    }

    /// The Prometheus text exposition of every metric.
    pub(crate) fn render(&self) -> Result<String, prometheus::Error> {
        self.sync_sources();
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out)?;
        String::from_utf8(out).map_err(|e| prometheus::Error::Msg(e.to_string()))
    }

    /// Copies the counters other components keep into the registry.
    fn sync_sources(&self) {
        let Ok(mut sources) = self.sources.lock() else {
            return;
        };
        let [successes, failures, throttled, verifications, cache_hits] = sources.auth.totals();
        raise(
            &self.auth_attempts.with_label_values(&["success"]),
            successes,
        );
        raise(
            &self.auth_attempts.with_label_values(&["failure"]),
            failures,
        );
        raise(&self.auth_throttled, throttled);
        raise(&self.auth_hash_verifications, verifications);
        raise(&self.auth_cache_hits, cache_hits);

        let [hits, coalesced, misses, mints, mint_failures] = sources.cert_cache.totals();
        raise(&self.cert_cache_lookups.with_label_values(&["hit"]), hits);
        raise(
            &self.cert_cache_lookups.with_label_values(&["coalesced"]),
            coalesced,
        );
        raise(
            &self.cert_cache_lookups.with_label_values(&["miss"]),
            misses,
        );
        raise(&self.certs_minted, mints);
        raise(&self.cert_mint_failures, mint_failures);
        let entries = sources
            .cert_cache
            .current
            .as_ref()
            .map_or(0, |cache| cache.cert_cache_stats().entries);
        self.cert_cache_entries
            .set(i64::try_from(entries).unwrap_or(i64::MAX));
    }
}

fn features() -> &'static str {
    if cfg!(feature = "negotiate") {
        "negotiate"
    } else {
        "none"
    }
}

fn auth_counts(auth: &dyn AuthCounters) -> [u64; 5] {
    auth.auth_counts()
}

fn cert_cache_counts(cache: &dyn CertCacheStats) -> [u64; 5] {
    let s = cache.cert_cache_stats();
    [s.hits, s.coalesced, s.misses, s.mints, s.mint_failures]
}

/// Raises a counter to `total` (counters only go up; a source that went backwards is ignored).
fn raise(counter: &IntCounter, total: u64) {
    let current = counter.get();
    if total > current {
        counter.inc_by(total - current);
    }
}

/// Totals over every instance of a component that keeps its own counters, across reloads.
///
/// A reload replaces the authenticator, but connections that started before keep using the old
/// one for a while. Old instances are summed live until only this struct holds them, then their
/// final counts are folded into `base` and they are dropped, so totals never go backwards and
/// nothing is kept alive for long.
struct Accumulated<T: ?Sized, const N: usize> {
    read: fn(&T) -> [u64; N],
    current: Option<Arc<T>>,
    retired: Vec<Arc<T>>,
    base: [u64; N],
}

impl<T: ?Sized, const N: usize> Accumulated<T, N> {
    fn new(read: fn(&T) -> [u64; N]) -> Self {
        Accumulated {
            read,
            current: None,
            retired: Vec::new(),
            base: [0; N],
        }
    }

    fn set(&mut self, next: Option<Arc<T>>) {
        let same = match (&self.current, &next) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        if same {
            return;
        }
        if let Some(old) = std::mem::replace(&mut self.current, next) {
            self.retired.push(old);
        }
    }

    fn totals(&mut self) -> [u64; N] {
        let read = self.read;
        let base = &mut self.base;
        self.retired.retain(|old| {
            if Arc::strong_count(old) > 1 {
                return true;
            }
            add(base, read(old));
            false
        });
        let mut total = *base;
        for live in self.retired.iter().chain(&self.current) {
            add(&mut total, read(live));
        }
        total
    }
}

fn add<const N: usize>(into: &mut [u64; N], values: [u64; N]) {
    for (sum, v) in into.iter_mut().zip(values) {
        *sum = sum.saturating_add(v);
    }
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

fn register<C: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    collector: C,
) -> Result<C, prometheus::Error> {
    registry.register(Box::new(collector.clone()))?;
    Ok(collector)
}

fn counter(registry: &Registry, name: &str, help: &str) -> Result<IntCounter, prometheus::Error> {
    register(registry, IntCounter::new(name, help)?)
}

fn counter_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<IntCounterVec, prometheus::Error> {
    register(registry, IntCounterVec::new(Opts::new(name, help), labels)?)
}

fn gauge(registry: &Registry, name: &str, help: &str) -> Result<IntGauge, prometheus::Error> {
    register(registry, IntGauge::new(name, help)?)
}

#[cfg(test)]
mod tests;
