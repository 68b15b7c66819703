#![expect(clippy::unwrap_used, reason = "tests")]

use std::net::IpAddr;
use std::sync::atomic::Ordering;

use super::*;
use crate::auth::Auth;
use crate::config::{AuthConfig, AuthScheme};

fn record(method: &str, result: &'static str, status: u16) -> Record {
    use crate::record::{Channel, Hierarchy, ResultCode};
    let code = match result {
        "TCP_DENIED" => ResultCode::TcpDenied,
        "TCP_TUNNEL" => ResultCode::TcpTunnel,
        "NONE" => ResultCode::None,
        _ => ResultCode::TcpMiss,
    };
    Record {
        time: SystemTime::now(),
        elapsed_ms: 250,
        client: IpAddr::from([127, 0, 0, 1]),
        result: code,
        status,
        bytes: 1000,
        bytes_in: 10,
        method: method.into(),
        url: "http://example.test/".into(),
        user: Some("alice".into()),
        groups: None,
        hierarchy: if result == "TCP_DENIED" {
            Hierarchy::None
        } else {
            Hierarchy::Direct
        },
        peer: None,
        content_type: None,
        error: (result == "TCP_DENIED").then_some("auth-required"),
        channel: if method == "CONNECT" {
            Channel::Tunnel
        } else {
            Channel::Plain
        },
        policy: None,
        transparent: None,
        icap: Vec::new(),
    }
}

/// The value of the one sample of `name` whose labels include every `labels` fragment.
fn sample(text: &str, name: &str, labels: &[&str]) -> f64 {
    let matching: Vec<&str> = text
        .lines()
        .filter(|l| {
            l.split(['{', ' ']).next() == Some(name) && labels.iter().all(|f| l.contains(f))
        })
        .collect();
    assert_eq!(matching.len(), 1, "{name} {labels:?} in:\n{text}");
    matching[0]
        .rsplit(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no value in {}", matching[0]))
}

#[test]
fn records_count_by_method_decision_and_status_class() {
    let m = Metrics::new().unwrap();
    m.observe(&record("GET", "TCP_MISS", 200));
    m.observe(&record("GET", "TCP_MISS", 200));
    m.observe(&record("CONNECT", "TCP_TUNNEL", 200));
    m.observe(&record("POST", "TCP_DENIED", 407));
    // Methods and statuses from the network cannot create series.
    m.observe(&record("X-EVIL-1", "TCP_MISS", 999));
    m.observe(&record("X-EVIL-2", "TCP_MISS", 999));
    let text = m.render().unwrap();
    let requests = "portcullis_requests_total";
    let get = [
        r#"method="GET""#,
        r#"decision="plain""#,
        r#"status_class="2xx""#,
    ];
    assert_eq!(sample(&text, requests, &get), 2.0);
    let tunnel = [r#"method="CONNECT""#, r#"decision="tunnel""#];
    assert_eq!(sample(&text, requests, &tunnel), 1.0);
    let deny = [
        r#"method="POST""#,
        r#"decision="deny""#,
        r#"status_class="4xx""#,
    ];
    assert_eq!(sample(&text, requests, &deny), 1.0);
    let other = [r#"method="other""#, r#"status_class="other""#];
    assert_eq!(sample(&text, requests, &other), 2.0);
    assert!(!text.contains("EVIL") && !text.contains("alice") && !text.contains("example.test"));

    let errors = "portcullis_request_errors_total";
    assert_eq!(sample(&text, errors, &[r#"cause="auth-required""#]), 1.0);
    // Six records of 1000 bytes out and 10 in; the 407 never reached an origin.
    let client = "portcullis_client_bytes_total";
    assert_eq!(sample(&text, client, &[r#"direction="sent""#]), 6000.0);
    assert_eq!(sample(&text, client, &[r#"direction="received""#]), 60.0);
    let upstream = "portcullis_upstream_bytes_total";
    assert_eq!(
        sample(&text, upstream, &[r#"direction="received""#]),
        5000.0
    );
    assert_eq!(sample(&text, upstream, &[r#"direction="sent""#]), 50.0);

    let duration = "portcullis_request_duration_seconds_count";
    assert_eq!(sample(&text, duration, &[r#"decision="plain""#]), 4.0);
    let under = "portcullis_request_duration_seconds_bucket";
    assert_eq!(
        sample(&text, under, &[r#"decision="tunnel""#, r#"le="0.25""#]),
        1.0
    );
    assert_eq!(
        sample(&text, under, &[r#"decision="tunnel""#, r#"le="0.1""#]),
        0.0
    );
}

/// An intercepted CONNECT that failed before its first request (`NONE_NONE…/000`) counts as an
/// inspected transaction of no status class, with its cause.
#[test]
fn failed_interceptions_count_as_inspect_with_their_cause() {
    use crate::record::{Channel, ResultCode};
    let m = Metrics::new().unwrap();
    for (result, cause) in [
        (ResultCode::NoneAborted, "client-tls-refused"),
        (ResultCode::NoneTimedOut, "client-tls-timeout"),
        (ResultCode::NoneNone, "certificate-mint-failed"),
    ] {
        let mut r = record("CONNECT", "NONE", 0);
        r.result = result;
        r.channel = Channel::Inspected;
        r.error = Some(cause);
        m.observe(&r);
    }
    let text = m.render().unwrap();
    let failed = [
        r#"method="CONNECT""#,
        r#"decision="inspect""#,
        r#"status_class="other""#,
    ];
    assert_eq!(sample(&text, "portcullis_requests_total", &failed), 3.0);
    for cause in [
        "client-tls-refused",
        "client-tls-timeout",
        "certificate-mint-failed",
    ] {
        let label = format!("cause=\"{cause}\"");
        assert_eq!(
            sample(&text, "portcullis_request_errors_total", &[&label]),
            1.0
        );
    }
}

#[test]
fn the_exchange_class_labels_requests_and_durations() {
    use portcullis_policy::ExchangeClass;
    let m = Metrics::new().unwrap();
    let mut ews = record("POST", "TCP_MISS", 200);
    ews.policy = Some(crate::record::PolicyNote {
        action: "inspect",
        rule: "default".into(),
        exchange: Some(ExchangeClass::Ews),
        tag: None,
    });
    m.observe(&ews);
    m.observe(&ews);
    m.observe(&record("GET", "TCP_MISS", 200));
    let text = m.render().unwrap();
    let requests = "portcullis_requests_total";
    assert_eq!(sample(&text, requests, &[r#"exchange="ews""#]), 2.0);
    assert_eq!(sample(&text, requests, &[r#"exchange="none""#]), 1.0);
    let count = "portcullis_request_duration_seconds_count";
    assert_eq!(sample(&text, count, &[r#"exchange="ews""#]), 2.0);
    assert_eq!(sample(&text, count, &[r#"exchange="none""#]), 1.0);
    // Only combinations that happened are exported.
    assert!(!text.contains(r#"exchange="mapi""#), "{text}");
    // Every class has its own label value, and none is "none".
    let classes = [
        ExchangeClass::Autodiscover,
        ExchangeClass::Mapi,
        ExchangeClass::RpcHttp,
        ExchangeClass::Ews,
        ExchangeClass::Eas,
        ExchangeClass::Oab,
    ];
    let mut seen = vec![exchange_label(None)];
    for class in classes {
        assert_eq!(exchange_label(Some(class)).1, class.as_str());
        seen.push(exchange_label(Some(class)));
    }
    // One slot each, all within the table the duration children are kept in.
    let mut indexes: Vec<usize> = seen.iter().map(|(i, _)| *i).collect();
    indexes.sort_unstable();
    indexes.dedup();
    assert_eq!(indexes, (0..EXCHANGE_VALUES).collect::<Vec<_>>());
    assert_eq!(exchange_label(None).1, "none");
}

/// Families whose label values are known up front are exported at zero from the start, so
/// dashboards and `rate()` see them before the first event; request families (whose label
/// combinations are many) appear with their first sample.
#[test]
fn every_family_is_present_from_the_start() {
    let m = Metrics::new().unwrap();
    let text = m.render().unwrap();
    for family in [
        "portcullis_client_bytes_total",
        "portcullis_upstream_bytes_total",
        "portcullis_client_connections_total",
        "portcullis_active_client_connections",
        "portcullis_active_tunnels",
        "portcullis_upstream_connect_duration_seconds",
        "portcullis_dns_failures_total",
        "portcullis_auth_attempts_total",
        "portcullis_auth_throttled_total",
        "portcullis_tls_intercepted_total",
        "portcullis_tls_tunnelled_total",
        "portcullis_tls_handshake_failures_total",
        "portcullis_certs_minted_total",
        "portcullis_cert_mint_duration_seconds",
        "portcullis_cert_cache_lookups_total",
        "portcullis_cert_cache_entries",
        "portcullis_config_reloads_total",
        "portcullis_config_last_reload_success_timestamp_seconds",
        "portcullis_config_last_reload_successful",
        "portcullis_m365_fetches_total",
        "portcullis_build_info",
        // The standard process families, without the portcullis_ prefix.
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_virtual_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_start_time_seconds",
        "process_threads",
    ] {
        assert!(
            text.contains(&format!("# TYPE {family} ")),
            "{family} missing:\n{text}"
        );
    }
    assert!(!text.contains("portcullis_process_"), "{text}");
    assert!(sample(&text, "process_resident_memory_bytes", &[]) > 0.0);
    let version = format!(r#"version="{}""#, env!("CARGO_PKG_VERSION"));
    assert_eq!(sample(&text, "portcullis_build_info", &[&version]), 1.0);
    assert_eq!(
        sample(&text, "portcullis_config_last_reload_successful", &[]),
        1.0
    );
}

#[test]
fn interception_api_counts_with_fixed_labels() {
    let m = Metrics::new().unwrap();
    m.tls_intercepted();
    m.tls_tunnelled(TlsTunnelReason::PinningFailure);
    m.tls_tunnelled(TlsTunnelReason::PinningFailure);
    m.tls_handshake_failed(Side::Upstream);
    m.policy_decision("outlook", crate::record::Disposition::Tunnel);
    m.upstream_connected(Duration::from_millis(3));
    m.dns_failure();
    (m.cert_mint_observer())(Duration::from_millis(2));
    let text = m.render().unwrap();
    assert_eq!(sample(&text, "portcullis_tls_intercepted_total", &[]), 1.0);
    let pinning = [r#"reason="pinning_failure""#];
    assert_eq!(
        sample(&text, "portcullis_tls_tunnelled_total", &pinning),
        2.0
    );
    let upstream = [r#"side="upstream""#];
    assert_eq!(
        sample(&text, "portcullis_tls_handshake_failures_total", &upstream),
        1.0
    );
    let rule = [r#"rule="outlook""#, r#"decision="tunnel""#];
    assert_eq!(
        sample(&text, "portcullis_policy_decisions_total", &rule),
        1.0
    );
    let connect = "portcullis_upstream_connect_duration_seconds_count";
    assert_eq!(sample(&text, connect, &[]), 1.0);
    assert_eq!(sample(&text, "portcullis_dns_failures_total", &[]), 1.0);
    assert_eq!(
        sample(&text, "portcullis_cert_mint_duration_seconds_count", &[]),
        1.0
    );
}

#[test]
fn guards_track_open_connections_and_tunnels() {
    let m = Metrics::new().unwrap();
    let a = m.connection_opened();
    let b = m.connection_opened();
    let t = m.tunnel_opened();
    let text = m.render().unwrap();
    assert_eq!(
        sample(&text, "portcullis_active_client_connections", &[]),
        2.0
    );
    assert_eq!(sample(&text, "portcullis_active_tunnels", &[]), 1.0);
    drop((a, t));
    let text = m.render().unwrap();
    assert_eq!(
        sample(&text, "portcullis_active_client_connections", &[]),
        1.0
    );
    assert_eq!(sample(&text, "portcullis_active_tunnels", &[]), 0.0);
    assert_eq!(
        sample(&text, "portcullis_client_connections_total", &[]),
        2.0
    );
    drop(b);
}

#[test]
fn reloads_count_and_flag_failure() {
    let m = Metrics::new().unwrap();
    m.config_reloaded(true);
    m.config_reloaded(false);
    let text = m.render().unwrap();
    let reloads = "portcullis_config_reloads_total";
    assert_eq!(sample(&text, reloads, &[r#"result="success""#]), 1.0);
    assert_eq!(sample(&text, reloads, &[r#"result="failure""#]), 1.0);
    assert_eq!(
        sample(&text, "portcullis_config_last_reload_successful", &[]),
        0.0
    );
    let stamp = sample(
        &text,
        "portcullis_config_last_reload_success_timestamp_seconds",
        &[],
    );
    assert!(stamp > 1.7e9, "{stamp}");
}

fn auth() -> Arc<Auth> {
    let config = AuthConfig {
        schemes: vec![AuthScheme::Basic],
        htpasswd: Some(std::path::PathBuf::from("/dev/null")),
        ..AuthConfig::default()
    };
    Arc::new(Auth::new(&config).unwrap().unwrap())
}

/// Every scheme × result series exists at zero from the start, and each attempt lands on its
/// own scheme's series.
#[test]
fn auth_attempts_are_labelled_by_scheme_and_result() {
    let attempts = |text: &str, scheme: &str, result: &str| {
        let labels = [
            format!(r#"scheme="{scheme}""#),
            format!(r#"result="{result}""#),
        ];
        let labels = [labels[0].as_str(), labels[1].as_str()];
        sample(text, "portcullis_auth_attempts_total", &labels)
    };
    let m = Metrics::new().unwrap();
    let text = m.render().unwrap();
    for scheme in ["basic", "negotiate", "ntlm", "other"] {
        for result in ["success", "failure"] {
            assert_eq!(attempts(&text, scheme, result), 0.0, "{scheme} {result}");
        }
    }
    let auth = auth();
    m.watch_auth(Some(Arc::clone(&auth) as Arc<dyn AuthCounters>));
    let stats = &auth.stats;
    stats.attempt(AuthAttemptScheme::Basic, true);
    for _ in 0..2 {
        stats.attempt(AuthAttemptScheme::Basic, false);
    }
    for _ in 0..3 {
        stats.attempt(AuthAttemptScheme::Negotiate, true);
    }
    for _ in 0..4 {
        stats.attempt(AuthAttemptScheme::Negotiate, false);
    }
    for _ in 0..5 {
        stats.attempt(AuthAttemptScheme::Other, false);
    }
    stats.attempt(AuthAttemptScheme::Ntlm, true);
    let text = m.render().unwrap();
    for (scheme, result, n) in [
        ("basic", "success", 1.0),
        ("basic", "failure", 2.0),
        ("negotiate", "success", 3.0),
        ("negotiate", "failure", 4.0),
        ("ntlm", "success", 1.0),
        ("ntlm", "failure", 0.0),
        ("other", "success", 0.0),
        ("other", "failure", 5.0),
    ] {
        assert_eq!(attempts(&text, scheme, result), n, "{scheme} {result}");
    }
}

/// A reload replaces the authenticator while old connections still use the old one: totals
/// must include both, and must not drop when the old one is finally released.
#[test]
fn auth_totals_survive_replacement() {
    use AuthAttemptScheme::{Basic, Negotiate};
    let m = Metrics::new().unwrap();
    let first = auth();
    m.watch_auth(Some(Arc::clone(&first) as Arc<dyn AuthCounters>));
    for _ in 0..3 {
        first.stats.attempt(Basic, true);
    }
    first.stats.attempt(Negotiate, false);
    first.stats.throttled.fetch_add(1, Ordering::Relaxed);
    let attempts = "portcullis_auth_attempts_total";
    let ok = [r#"scheme="basic""#, r#"result="success""#];
    let failed = [r#"scheme="negotiate""#, r#"result="failure""#];
    assert_eq!(sample(&m.render().unwrap(), attempts, &ok), 3.0);

    let second = auth();
    m.watch_auth(Some(Arc::clone(&second) as Arc<dyn AuthCounters>));
    // An in-flight request on the old snapshot still counts.
    first.stats.attempt(Basic, true);
    second.stats.attempt(Basic, true);
    second.stats.attempt(Basic, true);
    assert_eq!(sample(&m.render().unwrap(), attempts, &ok), 6.0);
    drop(first);
    let text = m.render().unwrap();
    assert_eq!(sample(&text, attempts, &ok), 6.0);
    assert_eq!(sample(&text, attempts, &failed), 1.0);
    assert_eq!(sample(&text, "portcullis_auth_throttled_total", &[]), 1.0);
    assert_eq!(
        m.sources.lock().unwrap().auth.retired.len(),
        0,
        "the old one was released"
    );

    // Auth switched off by a reload: the totals stay.
    m.watch_auth(None);
    drop(second);
    let text = m.render().unwrap();
    assert_eq!(sample(&text, attempts, &ok), 6.0);
    assert_eq!(sample(&text, attempts, &failed), 1.0);
}
