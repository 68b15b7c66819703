//! The admin listener and Prometheus metrics, driven with real clients (curl, raw TCP) and a
//! real Prometheus server scraping the admin port.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use portcullis_e2e::{curl, scrape, scrape_until, Scrape, TestOrigin, TestProxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Interception is tested elsewhere; here it would only add a CA to every proxy.
const NO_INSPECT: &str = "[tls]\ninspect = false\n";

fn get_plain() -> [&'static str; 3] {
    [
        r#"method="GET""#,
        r#"decision="plain""#,
        r#"status_class="2xx""#,
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_counters_move_by_the_right_amounts() {
    let origin = TestOrigin::http().await;
    let config = format!(
        "{NO_INSPECT}[upstream]\nsystem_resolver = false\n[server]\nconnect_ports = [443]\n"
    );
    let proxy = TestProxy::start(&config);
    let admin = proxy.admin_url();
    let before = scrape(&admin).await;

    for _ in 0..3 {
        let r = curl(&["-x", &proxy.url(), &origin.url("/bytes/1000")]).await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.body.len(), 1000);
    }
    let after = scrape_until(&admin, |s| {
        delta(s, &before, "portcullis_requests_total", &get_plain()) >= 3.0
    })
    .await;
    let d = |name: &str, labels: &[&str]| delta(&after, &before, name, labels);
    assert_eq!(d("portcullis_requests_total", &get_plain()), 3.0);
    assert_eq!(
        d("portcullis_requests_total", &[]),
        3.0,
        "nothing else was counted"
    );
    assert_eq!(
        d("portcullis_client_bytes_total", &[r#"direction="sent""#]),
        3000.0
    );
    assert_eq!(
        d(
            "portcullis_client_bytes_total",
            &[r#"direction="received""#]
        ),
        0.0
    );
    assert_eq!(
        d(
            "portcullis_upstream_bytes_total",
            &[r#"direction="received""#]
        ),
        3000.0
    );
    let plain = [r#"decision="plain""#];
    assert_eq!(d("portcullis_request_duration_seconds_count", &plain), 3.0);
    assert_eq!(d("portcullis_client_connections_total", &[]), 3.0);
    // The pool may reuse the origin connection; at least one connect was timed.
    let connects = d("portcullis_upstream_connect_duration_seconds_count", &[]);
    assert!((1.0..=3.0).contains(&connects), "{connects}");
    assert_eq!(d("portcullis_request_errors_total", &[]), 0.0);

    // A CONNECT to a port that is not allowed is a denial; an unknown name a DNS failure.
    let denied = curl(&["-p", "-x", &proxy.url(), &origin.url("/")]).await;
    assert_eq!(
        denied.header("x-portcullis-error").as_deref(),
        Some("port-not-allowed; setting=server.connect_ports")
    );
    let unknown = curl(&["-x", &proxy.url(), "http://nowhere.test/"]).await;
    assert_eq!(unknown.status, 502, "{unknown:?}");
    let before = after;
    let deny = [
        r#"method="CONNECT""#,
        r#"decision="deny""#,
        r#"status_class="4xx""#,
    ];
    let after = scrape_until(&admin, |s| {
        delta(s, &before, "portcullis_requests_total", &[]) >= 2.0
    })
    .await;
    let d = |name: &str, labels: &[&str]| delta(&after, &before, name, labels);
    assert_eq!(d("portcullis_requests_total", &deny), 1.0);
    let bad_gateway = [
        r#"method="GET""#,
        r#"decision="plain""#,
        r#"status_class="5xx""#,
    ];
    assert_eq!(d("portcullis_requests_total", &bad_gateway), 1.0);
    assert_eq!(d("portcullis_dns_failures_total", &[]), 1.0);
    assert_eq!(
        d(
            "portcullis_request_errors_total",
            &[r#"cause="port-not-allowed""#]
        ),
        1.0
    );
    assert_eq!(
        d(
            "portcullis_request_errors_total",
            &[r#"cause="dns-failure""#]
        ),
        1.0
    );
    // Error pages never touched an origin.
    assert_eq!(d("portcullis_upstream_bytes_total", &[]), 0.0);

    // Label values are bounded: no host, URL or client address ever becomes a label.
    for leak in ["nowhere.test", &origin.addr.to_string(), "127.0.0.1"] {
        assert!(!after.0.contains(leak), "{leak} appears in /metrics");
    }
}

/// A CONNECT tunnel is one request when it ends; while it is open it is an active tunnel; its
/// bytes are counted exactly, both ways and on both sides.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnel_bytes_and_active_gauges() {
    let origin = TestOrigin::http().await;
    let config = format!(
        "{NO_INSPECT}[server]\nconnect_ports = [{}]\n",
        origin.addr.port()
    );
    let proxy = TestProxy::start(&config);
    let admin = proxy.admin_url();
    let before = scrape(&admin).await;
    assert_eq!(before.value("portcullis_active_tunnels", &[]), 0.0);

    let mut tunnel = TcpStream::connect(proxy.addr).await.unwrap();
    let target = origin.addr.to_string();
    let connect = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n");
    tunnel.write_all(connect.as_bytes()).await.unwrap();
    let established = read_head(&mut tunnel).await;
    assert!(established.starts_with("HTTP/1.1 200"), "{established}");

    // Inside the tunnel: one request, the response read to its end while the tunnel stays open.
    let request = "GET /bytes/5000 HTTP/1.1\r\nHost: origin\r\n\r\n";
    tunnel.write_all(request.as_bytes()).await.unwrap();
    let head = read_head(&mut tunnel).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("content-length: 5000"),
        "{head}"
    );
    let mut body = vec![0u8; 5000];
    tunnel.read_exact(&mut body).await.unwrap();
    let mut received = head.into_bytes();
    received.extend(body);
    let open = scrape_until(&admin, |s| s.value("portcullis_active_tunnels", &[]) == 1.0).await;
    assert_eq!(open.value("portcullis_active_tunnels", &[]), 1.0);
    assert_eq!(open.value("portcullis_active_client_connections", &[]), 1.0);
    let tunnel_requests = [r#"method="CONNECT""#, r#"decision="tunnel""#];
    assert_eq!(
        delta(
            &open,
            &before,
            "portcullis_requests_total",
            &tunnel_requests
        ),
        0.0,
        "counted when it ends"
    );

    tunnel.shutdown().await.unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tunnel.read_to_end(&mut rest)).await;
    received.extend(rest);
    drop(tunnel);

    let after = scrape_until(&admin, |s| {
        delta(s, &before, "portcullis_requests_total", &tunnel_requests) >= 1.0
    })
    .await;
    let d = |name: &str, labels: &[&str]| delta(&after, &before, name, labels);
    let sent = received.len() as f64;
    let got = request.len() as f64;
    assert_eq!(d("portcullis_requests_total", &tunnel_requests), 1.0);
    // The CONNECT head and its 200 are not payload; everything inside the tunnel is.
    let to_client = d("portcullis_client_bytes_total", &[r#"direction="sent""#]);
    assert_eq!(to_client, sent, "tunnel payload to the client");
    assert_eq!(
        d(
            "portcullis_client_bytes_total",
            &[r#"direction="received""#]
        ),
        got
    );
    assert_eq!(
        d(
            "portcullis_upstream_bytes_total",
            &[r#"direction="received""#]
        ),
        to_client
    );
    assert_eq!(
        d("portcullis_upstream_bytes_total", &[r#"direction="sent""#]),
        got
    );
    let closed = scrape_until(&admin, |s| {
        s.value("portcullis_active_client_connections", &[]) == 0.0
    })
    .await;
    assert_eq!(closed.value("portcullis_active_tunnels", &[]), 0.0);
    assert_eq!(
        closed.value("portcullis_active_client_connections", &[]),
        0.0
    );
}

/// `auth_attempts_total{scheme, result}` for one series: the scheme and result labels.
fn attempt(scheme: &'static str, result: &'static str) -> [String; 2] {
    [
        format!(r#"scheme="{scheme}""#),
        format!(r#"result="{result}""#),
    ]
}

/// Every `scheme`/`result` pair of `auth_attempts_total`, as dashboards rely on.
const ATTEMPT_SERIES: [(&str, &str); 8] = [
    ("basic", "success"),
    ("basic", "failure"),
    ("negotiate", "success"),
    ("negotiate", "failure"),
    ("ntlm", "success"),
    ("ntlm", "failure"),
    ("other", "success"),
    ("other", "failure"),
];

/// The change of one `auth_attempts_total` series between two scrapes.
fn attempts_delta(
    after: &Scrape,
    before: &Scrape,
    scheme: &'static str,
    result: &'static str,
) -> f64 {
    let labels = attempt(scheme, result);
    let labels = [labels[0].as_str(), labels[1].as_str()];
    delta(after, before, "portcullis_auth_attempts_total", &labels)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_attempts_and_credential_cache_are_exported() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("users");
    portcullis_e2e::htpasswd(&file, "-B", "alice", "secret-pw");
    let origin = TestOrigin::http().await;
    let proxy = TestProxy::start(&format!(
        "{NO_INSPECT}[auth]\nschemes = [\"basic\"]\nhtpasswd = \"{}\"\n",
        file.display()
    ));
    let admin = proxy.admin_url();
    let before = scrape(&admin).await;
    // Every series is there before the first attempt, at zero.
    for (scheme, result) in ATTEMPT_SERIES {
        let labels = attempt(scheme, result);
        let present = before.0.lines().any(|l| {
            l.starts_with("portcullis_auth_attempts_total{")
                && l.ends_with(" 0")
                && labels.iter().all(|label| l.contains(label.as_str()))
        });
        assert!(present, "{labels:?} missing:\n{}", before.0);
    }
    for (user, status) in [
        ("alice:secret-pw", 200),
        ("alice:secret-pw", 200),
        ("alice:wrong", 407),
    ] {
        let r = curl(&["-x", &proxy.url(), "-U", user, &origin.url("/")]).await;
        assert_eq!(r.status, status, "{user}: {r:?}");
    }
    // NTLM, which this proxy does not have enabled (Windows offers it when it has no Kerberos
    // ticket), and a scheme it does not implement at all.
    let ntlm = "Proxy-Authorization: NTLM TlRMTVNTUAABAAAAB4IIogAAAAAAAAAAAAAAAAAAAAAKAGFKAAAADw==";
    let r = curl(&["-x", &proxy.url(), "-H", ntlm, &origin.url("/")]).await;
    assert_eq!(r.status, 407, "{r:?}");
    let digest = "Proxy-Authorization: Digest username=\"alice\"";
    let r = curl(&["-x", &proxy.url(), "-H", digest, &origin.url("/")]).await;
    assert_eq!(r.status, 407, "{r:?}");
    let after = scrape_until(&admin, |s| {
        delta(s, &before, "portcullis_requests_total", &[]) >= 5.0
    })
    .await;
    let d = |name: &str, labels: &[&str]| delta(&after, &before, name, labels);
    for (scheme, result, n) in [
        ("basic", "success", 2.0),
        ("basic", "failure", 1.0),
        ("negotiate", "success", 0.0),
        ("negotiate", "failure", 0.0),
        ("ntlm", "success", 0.0),
        ("ntlm", "failure", 1.0),
        ("other", "success", 0.0),
        ("other", "failure", 1.0),
    ] {
        assert_eq!(
            attempts_delta(&after, &before, scheme, result),
            n,
            "{scheme} {result}"
        );
    }
    // The second good login came from the cache; the first and the wrong one were hashed.
    assert_eq!(d("portcullis_auth_credential_cache_hits_total", &[]), 1.0);
    assert_eq!(d("portcullis_auth_hash_verifications_total", &[]), 2.0);
    let denied = [r#"decision="deny""#, r#"status_class="4xx""#];
    assert_eq!(d("portcullis_requests_total", &denied), 3.0);
    assert_eq!(
        d(
            "portcullis_request_errors_total",
            &[r#"cause="auth-failed""#]
        ),
        1.0
    );
    assert!(!after.0.contains("alice"), "a user name became a label");
}

/// Kerberos through a real MIT KDC and Basic on one proxy: each login lands on its scheme.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_attempts_are_counted_per_scheme_with_kerberos_and_basic() {
    use portcullis_e2e::kdc::{self, Kdc};
    if !kdc::available() {
        return;
    }
    let kdc = Kdc::start(&["localhost"]);
    let ccache = kdc.kinit_alice();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("users");
    portcullis_e2e::htpasswd(&file, "-B", "bob", "bob-pw");
    let origin = TestOrigin::http().await;
    let proxy = TestProxy::start_with_env(
        &format!(
            "{NO_INSPECT}[auth]\nschemes = [\"negotiate\", \"basic\"]\nhtpasswd = \"{}\"\n\
             [auth.negotiate]\nkeytab = \"{}\"\n",
            file.display(),
            kdc.keytab().display()
        ),
        &[
            ("KRB5_CONFIG", kdc.krb5_conf().display().to_string()),
            ("KRB5RCACHEDIR", kdc.rcache().display().to_string()),
        ],
    );
    let admin = proxy.admin_url();
    let before = scrape(&admin).await;
    // curl asks for HTTP/localhost, the principal the KDC made.
    let proxy_url = format!("http://localhost:{}", proxy.addr.port());
    let env = [
        ("KRB5_CONFIG", kdc.krb5_conf().display().to_string()),
        ("KRB5CCNAME", format!("FILE:{}", ccache.display())),
    ];
    let negotiate = ["--proxy-negotiate", "-U", ":", "-x", &proxy_url];
    let r = portcullis_e2e::curl_env(&[&negotiate[..], &[&origin.url("/")]].concat(), &env).await;
    assert_eq!(r.status, 200, "{r:?}\n{}", proxy.stderr());
    // A token the KDC never issued.
    let forged = "Proxy-Authorization: Negotiate YIIBhgYGKwYBBQUCoIIBejCCAXagDTALBgkqhkiG9xIBAgI=";
    let r = curl(&["-x", &proxy_url, "-H", forged, &origin.url("/")]).await;
    assert_eq!(r.status, 407, "{r:?}");
    let r = curl(&["-x", &proxy_url, "-U", "bob:bob-pw", &origin.url("/")]).await;
    assert_eq!(r.status, 200, "{r:?}");

    let after = scrape_until(&admin, |s| {
        delta(s, &before, "portcullis_requests_total", &[]) >= 3.0
    })
    .await;
    for (scheme, result, n) in [
        ("basic", "success", 1.0),
        ("basic", "failure", 0.0),
        ("negotiate", "success", 1.0),
        ("negotiate", "failure", 1.0),
        ("other", "success", 0.0),
        ("other", "failure", 0.0),
    ] {
        assert_eq!(
            attempts_delta(&after, &before, scheme, result),
            n,
            "{scheme} {result}\n{}",
            after.0
        );
    }
}

/// The admin listener is up before the proxy listeners: while a file the config names is still
/// being read, `/healthz` is 200 and `/readyz` 503; once the listeners are bound, ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_not_ready_before_the_listeners_are_bound() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("hosts");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    // Reading the hosts file blocks until we write it: start-up stops right there.
    let mut proxy = TestProxy::start_until_admin(&format!(
        "[upstream]\nhosts_file = \"{}\"\n",
        fifo.display()
    ));
    let admin = proxy.admin_url();

    let health = curl(&[&format!("{admin}/healthz")]).await;
    assert_eq!(health.status, 200, "{health:?}");
    let ready = curl(&[&format!("{admin}/readyz")]).await;
    assert_eq!(ready.status, 503, "{ready:?}");
    assert!(
        ready.body_text().contains("listeners: FAIL"),
        "{}",
        ready.body_text()
    );
    let config = curl(&[&format!("{admin}/config")]).await;
    assert_eq!(config.status, 503, "no config in effect yet");
    assert!(
        !proxy.stderr().contains("listening on"),
        "{}",
        proxy.stderr()
    );

    let writer = fifo.clone();
    tokio::task::spawn_blocking(move || std::fs::write(writer, "127.0.0.1 fifo.test\n"))
        .await
        .unwrap()
        .unwrap();
    assert!(
        proxy.wait_listening(Duration::from_secs(20)),
        "{}",
        proxy.stderr()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let ready = loop {
        let ready = curl(&[&format!("{admin}/readyz")]).await;
        if ready.status == 200 || Instant::now() > deadline {
            break ready;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(ready.status, 200, "{}", ready.body_text());
    let body = ready.body_text();
    assert!(
        body.contains(&format!("listeners: ok: bound ({})", proxy.addr)),
        "{body}"
    );
    // Inspection is on by default: the CA is part of readiness.
    assert!(body.contains("ca: ok: loaded"), "{body}");

    let config = curl(&[&format!("{admin}/config")]).await;
    assert_eq!(config.status, 200);
    let effective: toml::Table = toml::from_str(&config.body_text()).unwrap();
    assert_eq!(
        effective["upstream"]["hosts_file"].as_str(),
        Some(fifo.display().to_string().as_str())
    );
}

/// Clients of the proxy must not reach the admin endpoints by asking the proxy to fetch them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_is_not_reachable_through_the_proxy() {
    let proxy = TestProxy::start(NO_INSPECT);
    let admin = proxy.admin_url();
    let direct = curl(&[&format!("{admin}/healthz")]).await;
    assert_eq!(direct.status, 200);
    let through = curl(&["-x", &proxy.url(), &format!("{admin}/config")]).await;
    assert_eq!(through.status, 403, "{through:?}");
    assert_eq!(
        through.header("x-portcullis-error").as_deref(),
        Some("forwarding-loop")
    );
    let post = curl(&["-x", &proxy.url(), "-X", "POST", &format!("{admin}/reload")]).await;
    assert_eq!(post.status, 403, "{post:?}");
}

/// A real Prometheus server scrapes the admin port: the target is up and the request counter
/// it stored is positive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_the_admin_port() {
    let Some(binary) = prometheus_or_skip() else {
        return;
    };
    let origin = TestOrigin::http().await;
    let proxy = TestProxy::start(NO_INSPECT);
    for _ in 0..2 {
        let r = curl(&["-x", &proxy.url(), &origin.url("/")]).await;
        assert_eq!(r.status, 200);
    }
    let prometheus = Prometheus::start(&binary, &proxy.admin_addr().to_string());

    let up = prometheus
        .query_until("up{job=\"portcullis\"}", |v| v == 1.0)
        .await;
    assert_eq!(
        up,
        Some(1.0),
        "target not up; prometheus log:\n{}",
        prometheus.log()
    );
    let requests = prometheus
        .query_until("sum(portcullis_requests_total{decision=\"plain\"})", |v| {
            v > 0.0
        })
        .await;
    assert_eq!(requests, Some(2.0), "prometheus log:\n{}", prometheus.log());
    let info = prometheus
        .query_until("portcullis_build_info", |v| v == 1.0)
        .await;
    assert_eq!(info, Some(1.0));
    let rss = prometheus
        .query_until("process_resident_memory_bytes{job=\"portcullis\"}", |v| {
            v > 0.0
        })
        .await;
    assert!(
        rss.is_some_and(|v| v > 0.0),
        "prometheus log:\n{}",
        prometheus.log()
    );
}

/// Requests carry their Exchange protocol as the `exchange` label of the request counter and
/// the duration histogram; anything else is `none`, and no other value can appear.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_labelled_with_their_exchange_class() {
    let origin = TestOrigin::http().await;
    let proxy = TestProxy::start(NO_INSPECT);
    let admin = proxy.admin_url();
    for (path, times) in [
        ("/EWS/Exchange.asmx", 2),
        ("/mapi/emsmdb/?MailboxId=x", 1),
        ("/autodiscover/autodiscover.xml", 1),
        ("/Microsoft-Server-ActiveSync?Cmd=Ping", 1),
        ("/OAB/x/oab.xml", 1),
        ("/rpc/rpcproxy.dll?mail:6001", 1),
        ("/plain", 1),
    ] {
        for _ in 0..times {
            let r = curl(&["-x", &proxy.url(), &origin.url(path)]).await;
            assert_eq!(r.status, 200, "{path}: {r:?}");
        }
    }
    let s = scrape_until(&admin, |s| s.value("portcullis_requests_total", &[]) >= 8.0).await;
    let count = |class: &str| {
        s.value(
            "portcullis_requests_total",
            &[&format!("exchange=\"{class}\"")],
        )
    };
    assert_eq!(count("ews"), 2.0);
    for class in ["mapi", "autodiscover", "eas", "oab", "rpc-http", "none"] {
        assert_eq!(count(class), 1.0, "{class}");
    }
    let ews = [r#"decision="plain""#, r#"exchange="ews""#];
    assert_eq!(
        s.value("portcullis_request_duration_seconds_count", &ews),
        2.0
    );
    let allowed = [
        "none",
        "autodiscover",
        "mapi",
        "rpc-http",
        "ews",
        "eas",
        "oab",
    ];
    for line in s.0.lines().filter(|l| l.contains("exchange=\"")) {
        let value = line.split("exchange=\"").nth(1).unwrap();
        let value = value.split('"').next().unwrap();
        assert!(allowed.contains(&value), "{line}");
    }
}

/// The standard `process_*` series describe the proxy's own process, as `/proc` shows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_metrics_describe_the_proxy_process() {
    let proxy = TestProxy::start(NO_INSPECT);
    let s = scrape(&proxy.admin_url()).await;
    let pid = proxy.pid();
    let rss = portcullis_e2e::proxy::proc_status_kib(pid as u32, "VmRSS:") as f64 * 1024.0;
    let exported = s.value("process_resident_memory_bytes", &[]);
    assert!(
        exported > rss / 2.0 && exported < rss * 2.0,
        "resident memory {exported} vs VmRSS {rss}"
    );
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count() as f64;
    let open = s.value("process_open_fds", &[]);
    assert!(
        open >= 3.0 && (open - fds).abs() <= 8.0,
        "open fds {open} vs {fds}"
    );
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let max: f64 = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert_eq!(s.value("process_max_fds", &[]), max);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let started = s.value("process_start_time_seconds", &[]);
    assert!(
        (now - started).abs() < 120.0,
        "start time {started}, now {now}"
    );
    assert!(s.has_family("process_cpu_seconds_total"));
    assert!(s.value("process_threads", &[]) >= 2.0);
    assert!(!s.has_family("portcullis_process_resident_memory_bytes"));
}

/// Every query of the Grafana dashboard (`deploy/grafana/`) is valid PromQL for a real
/// Prometheus scraping a real proxy, uses only exported series, and the Exchange panels show
/// the `exchange` label.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grafana_dashboard_queries_run_on_a_real_prometheus() {
    let Some(binary) = prometheus_or_skip() else {
        return;
    };
    let dashboard =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/portcullis-dashboard.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dashboard).unwrap()).unwrap();
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(str::to_owned))
        .collect();
    assert!(exprs.len() > 20, "{exprs:?}");
    assert!(
        exprs.iter().any(|e| e.contains("sum by (exchange)")),
        "no panel shows the exchange label"
    );

    // Families with labels appear with their first sample: a success, an Exchange request and
    // an error.
    let origin = TestOrigin::http().await;
    let proxy = TestProxy::start(&format!(
        "{NO_INSPECT}[upstream]\nsystem_resolver = false\n"
    ));
    for path in ["/EWS/Exchange.asmx", "/plain"] {
        assert_eq!(
            curl(&["-x", &proxy.url(), &origin.url(path)]).await.status,
            200
        );
    }
    let failed = curl(&["-x", &proxy.url(), "http://nowhere.test/"]).await;
    assert_eq!(failed.status, 502);
    let exported = scrape_until(&proxy.admin_url(), |s| {
        s.has_family("portcullis_request_errors_total")
    })
    .await;
    // Exported only once a Microsoft 365 list is loaded, which this proxy never does.
    let later = ["portcullis_m365_endpoints_version_info"];
    for expr in &exprs {
        for name in expr
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("portcullis_") || w.starts_with("process_"))
            .filter(|w| !later.contains(w))
        {
            let family = ["_bucket", "_count", "_sum"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .unwrap_or(name);
            assert!(
                exported.has_family(family),
                "the dashboard uses {name}: {expr}"
            );
        }
    }

    let prometheus = Prometheus::start(&binary, &proxy.admin_addr().to_string());
    let grafana = |expr: &str| {
        expr.replace("$instance", ".*")
            .replace("$__rate_interval", "1m")
            .replace("$__range", "5m")
    };
    let ews = exprs
        .iter()
        .find(|e| e.starts_with("sum by (exchange) (rate(portcullis_requests_total"))
        .unwrap();
    // A rate needs requests between two scrapes: keep Outlook busy until the panel shows it.
    let deadline = Instant::now() + Duration::from_secs(30);
    let series = loop {
        let r = curl(&["-x", &proxy.url(), &origin.url("/EWS/Exchange.asmx")]).await;
        assert_eq!(r.status, 200);
        let answer = prometheus.query(&grafana(ews)).await;
        let result = answer["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if !result.is_empty() || Instant::now() > deadline {
            break result;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(
        series.len(),
        1,
        "{series:?}\nprometheus log:\n{}",
        prometheus.log()
    );
    assert_eq!(series[0]["metric"]["exchange"], "ews", "{series:?}");
    for expr in &exprs {
        let answer = prometheus.query(&grafana(expr)).await;
        assert_eq!(answer["status"], "success", "{expr}: {answer}");
    }
}

/// The example Prometheus files in `deploy/prometheus/` are valid for Prometheus' own checker,
/// and every metric their alert rules use is one the proxy exports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_prometheus_examples_are_valid_and_use_real_metrics() {
    let Some(prometheus) = prometheus_or_skip() else {
        return;
    };
    let promtool = prometheus.with_file_name("promtool");
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus");
    for (what, file) in [
        ("config", "prometheus.yml"),
        ("rules", "portcullis.rules.yml"),
    ] {
        let out = Command::new(&promtool)
            .args(["check", what])
            .arg(deploy.join(file))
            .output()
            .unwrap_or_else(|e| panic!("{}: {e}", promtool.display()));
        assert!(
            out.status.success(),
            "promtool check {what} {file}: {out:?}"
        );
    }

    // Families with labels appear with their first sample: make one request.
    let origin = TestOrigin::http().await;
    let proxy = TestProxy::start(NO_INSPECT);
    assert_eq!(
        curl(&["-x", &proxy.url(), &origin.url("/")]).await.status,
        200
    );
    let exported = scrape_until(&proxy.admin_url(), |s| {
        s.has_family("portcullis_requests_total")
    })
    .await;
    let rules = std::fs::read_to_string(deploy.join("portcullis.rules.yml")).unwrap();
    let mut used: Vec<&str> = rules
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("portcullis_"))
        .collect();
    used.sort_unstable();
    used.dedup();
    assert!(used.len() >= 4, "{used:?}");
    for name in used {
        assert!(
            exported.has_family(name),
            "the rules use {name}, which is not exported"
        );
    }
}

fn delta(after: &Scrape, before: &Scrape, name: &str, labels: &[&str]) -> f64 {
    after.value(name, labels) - before.value(name, labels)
}

/// Reads a response head (through the blank line).
async fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut byte))
            .await
            .expect("response head timed out")
            .unwrap();
        assert_eq!(
            n,
            1,
            "closed inside a response head: {:?}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap()
}

/// The Prometheus binary, or `None` (the caller skips) when it is not installed; a failure
/// instead when PORTCULLIS_REQUIRE_PROMETHEUS=1 says it must be.
fn prometheus_or_skip() -> Option<PathBuf> {
    let found = prometheus_binary();
    if found.is_none() {
        assert!(
            std::env::var("PORTCULLIS_REQUIRE_PROMETHEUS").as_deref() != Ok("1"),
            "prometheus is not installed (Debian package `prometheus`) but \
             PORTCULLIS_REQUIRE_PROMETHEUS=1"
        );
        eprintln!(
            "SKIPPED: prometheus (and promtool) are not installed (apt-get install prometheus)"
        );
    }
    found
}

fn prometheus_binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join("prometheus"))
        .find(|candidate| candidate.is_file())
}

/// Polls Prometheus' readiness endpoint; false if it exits or is not ready within 30 s.
fn wait_ready(child: &mut Child, url: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        let ready = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
            .arg(format!("{url}/-/ready"))
            .output()
            .map(|o| o.stdout == b"200")
            .unwrap_or(false);
        if ready {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// A Prometheus server on loopback with its own storage, scraping one target every second.
struct Prometheus {
    child: Child,
    url: String,
    dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(binary: &Path, target: &str) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: portcullis\n    static_configs:\n      - targets: [\"{target}\"]\n"
            ),
        )
        .unwrap();
        // Prometheus binds its own port: find a free one, and try again if another process
        // took it in between.
        let log_path = dir.path().join("prometheus.log");
        for _ in 0..3 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .unwrap()
                .port();
            let log = std::fs::File::create(&log_path).unwrap();
            let mut child = Command::new(binary)
                .arg(format!("--config.file={}", config.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.path().join("data").display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
            let url = format!("http://127.0.0.1:{port}");
            if wait_ready(&mut child, &url) {
                return Prometheus { child, url, dir };
            }
            let _ = child.kill();
            let _ = child.wait();
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            assert!(
                log.contains("address already in use"),
                "prometheus did not start:\n{log}"
            );
        }
        panic!("no free port for prometheus after three tries")
    }

    /// Runs an instant query until its first sample satisfies `done` (30 s at most); returns
    /// the last value seen.
    async fn query_until(&self, query: &str, done: impl Fn(f64) -> bool) -> Option<f64> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut last = None;
        while Instant::now() < deadline {
            let r = curl(&[
                "-G",
                "--data-urlencode",
                &format!("query={query}"),
                &format!("{}/api/v1/query", self.url),
            ])
            .await;
            let json: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
            last = json["data"]["result"][0]["value"][1]
                .as_str()
                .and_then(|v| v.parse::<f64>().ok());
            if last.is_some_and(&done) {
                return last;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        last
    }

    /// One instant query; the API's whole answer (`status`, `data` or `error`).
    async fn query(&self, query: &str) -> serde_json::Value {
        let r = curl(&[
            "-G",
            "--data-urlencode",
            &format!("query={query}"),
            &format!("{}/api/v1/query", self.url),
        ])
        .await;
        serde_json::from_slice(&r.body).unwrap_or_default()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
