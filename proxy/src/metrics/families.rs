//! The metric families, registered in groups by what they describe. Names, help texts and
//! label sets are the exported interface (dashboards, alerts): change them only on purpose.

use std::sync::OnceLock;

use prometheus::{
    Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry,
};

use super::{AuthAttemptScheme, Side, TlsTunnelReason, EXCHANGE_VALUES};
use crate::record::Disposition;

type Result<T> = std::result::Result<T, prometheus::Error>;

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

/// Finished transactions: counted once each, from the access-log record.
pub(super) struct Requests {
    pub(super) requests: IntCounterVec,
    pub(super) errors: IntCounterVec,
    pub(super) policy_decisions: IntCounterVec,
    /// Children with fixed labels, resolved once: every request touches them, and a label
    /// lookup hashes and locks.
    pub(super) client_sent: IntCounter,
    pub(super) client_received: IntCounter,
    pub(super) upstream_sent: IntCounter,
    pub(super) upstream_received: IntCounter,
    /// `request_duration_seconds`.
    duration: HistogramVec,
    /// Its children by [`Disposition`] (in [`Disposition::ALL`] order) and Exchange class (in
    /// `exchange_label` order), each resolved at its first sample: a scrape shows only the
    /// combinations that happened (most decisions never see an Exchange class), and after that
    /// a sample costs no label lookup.
    duration_children: [[OnceLock<Histogram>; EXCHANGE_VALUES]; Disposition::ALL.len()],
}

impl Requests {
    pub(super) fn register(r: &Registry) -> Result<Requests> {
        let requests = counter_vec(
            r,
            "requests_total",
            "Finished transactions (requests and whole CONNECT tunnels) by method, decision, status class and Exchange protocol.",
            &["method", "decision", "status_class", "exchange"],
        )?;
        let duration = register(
            r,
            HistogramVec::new(
                HistogramOpts::new(
                    "request_duration_seconds",
                    "Time from the request head to the last response byte (a tunnel's whole life), by decision and Exchange protocol.",
                )
                .buckets(DURATION_BUCKETS.to_vec()),
                &["decision", "exchange"],
            )?,
        )?;
        let errors = counter_vec(
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
        let policy_decisions = counter_vec(
            r,
            "policy_decisions_total",
            "Policy decisions by the name of the rule that matched and the decision.",
            &["rule", "decision"],
        )?;
        Ok(Requests {
            requests,
            errors,
            policy_decisions,
            client_sent: client_bytes.with_label_values(&["sent"]),
            client_received: client_bytes.with_label_values(&["received"]),
            upstream_sent: upstream_bytes.with_label_values(&["sent"]),
            upstream_received: upstream_bytes.with_label_values(&["received"]),
            duration,
            duration_children: Default::default(),
        })
    }

    /// The duration histogram for `decision` and the `exchange` label (index, value).
    pub(super) fn duration(&self, decision: Disposition, exchange: (usize, &str)) -> &Histogram {
        let (index, label) = exchange;
        self.duration_children[decision as usize][index]
            .get_or_init(|| self.duration.with_label_values(&[decision.as_str(), label]))
    }
}

/// Client connections, tunnels and origin connects.
pub(super) struct Connections {
    pub(super) accepted: IntCounter,
    pub(super) refused: IntCounter,
    pub(super) active: IntGauge,
    pub(super) active_tunnels: IntGauge,
    pub(super) upstream_connect: Histogram,
    pub(super) dns_failures: IntCounter,
}

impl Connections {
    pub(super) fn register(r: &Registry) -> Result<Connections> {
        Ok(Connections {
            accepted: counter(
                r,
                "client_connections_total",
                "Client connections accepted.",
            )?,
            refused: counter(
                r,
                "client_connections_refused_total",
                "Client connections refused with a 503 because server.max_connections was reached.",
            )?,
            active: gauge(
                r,
                "active_client_connections",
                "Client connections open now (including those carrying a tunnel).",
            )?,
            active_tunnels: gauge(
                r,
                "active_tunnels",
                "CONNECT tunnels and upgraded (WebSocket) connections open now.",
            )?,
            upstream_connect: register(
                r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "upstream_connect_duration_seconds",
                        "Name resolution plus TCP connect to an origin, for successful connects.",
                    )
                    .buckets(CONNECT_BUCKETS.to_vec()),
                )?,
            )?,
            dns_failures: counter(
                r,
                "dns_failures_total",
                "Origin names that could not be resolved.",
            )?,
        })
    }
}

/// Proxy authentication; raised at scrape time from the authenticator's own counters.
pub(super) struct AuthFamilies {
    pub(super) attempts: IntCounterVec,
    pub(super) throttled: IntCounter,
    pub(super) hash_verifications: IntCounter,
    pub(super) cache_hits: IntCounter,
}

impl AuthFamilies {
    pub(super) fn register(r: &Registry) -> Result<AuthFamilies> {
        let attempts = counter_vec(
            r,
            "auth_attempts_total",
            "Proxy authentication attempts that presented credentials, by scheme and result.",
            &["scheme", "result"],
        )?;
        for scheme in AuthAttemptScheme::ALL {
            for result in ["success", "failure"] {
                attempts.with_label_values(&[scheme.as_str(), result]);
            }
        }
        Ok(AuthFamilies {
            attempts,
            throttled: counter(
                r,
                "auth_throttled_total",
                "Authentication failures answered late because the client kept failing.",
            )?,
            hash_verifications: counter(
                r,
                "auth_hash_verifications_total",
                "Password hashes computed (credential cache misses for Basic).",
            )?,
            cache_hits: counter(
                r,
                "auth_credential_cache_hits_total",
                "Basic credentials accepted from the verified-credential cache.",
            )?,
        })
    }
}

/// TLS interception and the certificate cache.
pub(super) struct Tls {
    pub(super) intercepted: IntCounter,
    pub(super) tunnelled: IntCounterVec,
    pub(super) handshake_failures: IntCounterVec,
    pub(super) certs_minted: IntCounter,
    pub(super) mint_failures: IntCounter,
    pub(super) mint_duration: Histogram,
    pub(super) cache_lookups: IntCounterVec,
    pub(super) cache_entries: IntGauge,
}

impl Tls {
    pub(super) fn register(r: &Registry) -> Result<Tls> {
        let tls = Tls {
            intercepted: counter(
                r,
                "tls_intercepted_total",
                "CONNECT tunnels whose TLS was intercepted.",
            )?,
            tunnelled: counter_vec(
                r,
                "tls_tunnelled_total",
                "CONNECT tunnels passed through without interception, by reason.",
                &["reason"],
            )?,
            handshake_failures: counter_vec(
                r,
                "tls_handshake_failures_total",
                "Failed TLS handshakes during interception, by side (client or upstream).",
                &["side"],
            )?,
            certs_minted: counter(r, "certs_minted_total", "Leaf certificates minted.")?,
            mint_failures: counter(
                r,
                "cert_mint_failures_total",
                "Leaf certificates that could not be minted.",
            )?,
            mint_duration: register(
                r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "cert_mint_duration_seconds",
                        "Time to mint one leaf certificate (key generation and signing).",
                    )
                    .buckets(MINT_BUCKETS.to_vec()),
                )?,
            )?,
            cache_lookups: counter_vec(
                r,
                "cert_cache_lookups_total",
                "Certificate cache lookups by result: hit, coalesced (waited for another lookup's mint) or miss.",
                &["result"],
            )?,
            cache_entries: gauge(
                r,
                "cert_cache_entries",
                "Leaf certificates held in the cache now.",
            )?,
        };
        for result in ["hit", "coalesced", "miss"] {
            tls.cache_lookups.with_label_values(&[result]);
        }
        for reason in TlsTunnelReason::ALL {
            tls.tunnelled.with_label_values(&[reason.as_str()]);
        }
        for side in [Side::Client, Side::Upstream] {
            tls.handshake_failures.with_label_values(&[side.as_str()]);
        }
        Ok(tls)
    }
}

/// The configuration in use, its reloads and the Microsoft 365 endpoint list.
pub(super) struct ConfigFamilies {
    pub(super) reloads: IntCounterVec,
    pub(super) reload_time: Gauge,
    pub(super) reload_ok: IntGauge,
    pub(super) m365_version: IntGaugeVec,
    pub(super) m365_fetches: IntCounterVec,
}

impl ConfigFamilies {
    pub(super) fn register(r: &Registry) -> Result<ConfigFamilies> {
        let reloads = counter_vec(
            r,
            "config_reloads_total",
            "Configuration reloads (SIGHUP or POST /reload) by result.",
            &["result"],
        )?;
        for result in ["success", "failure"] {
            reloads.with_label_values(&[result]);
        }
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
        Ok(ConfigFamilies {
            reloads,
            reload_time: register(
                r,
                Gauge::new(
                    "config_last_reload_success_timestamp_seconds",
                    "When the configuration in use was loaded (Unix time).",
                )?,
            )?,
            reload_ok: gauge(
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
            m365_fetches: {
                let fetches = counter_vec(
                    r,
                    "m365_fetches_total",
                    "Requests to the Microsoft 365 endpoints web service by result (unchanged, updated, throttled, failed).",
                    &["result"],
                )?;
                for result in M365_FETCH_RESULTS {
                    fetches.with_label_values(&[result]);
                }
                fetches
            },
        })
    }
}

/// The `result` values of `m365_fetches_total`, exported at zero from the start so that an
/// offline installation's alert on `failed` has a series to watch.
pub(super) const M365_FETCH_RESULTS: [&str; 4] = ["unchanged", "updated", "throttled", "failed"];

fn features() -> &'static str {
    if cfg!(feature = "negotiate") {
        "negotiate"
    } else {
        "none"
    }
}

fn register<C: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    collector: C,
) -> Result<C> {
    registry.register(Box::new(collector.clone()))?;
    Ok(collector)
}

fn counter(registry: &Registry, name: &str, help: &str) -> Result<IntCounter> {
    register(registry, IntCounter::new(name, help)?)
}

fn counter_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<IntCounterVec> {
    register(registry, IntCounterVec::new(Opts::new(name, help), labels)?)
}

fn gauge(registry: &Registry, name: &str, help: &str) -> Result<IntGauge> {
    register(registry, IntGauge::new(name, help)?)
}
