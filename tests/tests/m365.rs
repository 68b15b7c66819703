//! The live Microsoft 365 endpoint list, against a loopback server that behaves like
//! endpoints.office.com: version checks, fetching only on a new version, 429, malformed JSON,
//! the cached list surviving an unreachable service, and `portcullis m365 import`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use portcullis_e2e::scrape::scrape_until;
use portcullis_e2e::{portcullis_bin, raw, TestOrigin, TestProxy};

/// What the fake service answers.
struct Feed {
    version: Mutex<String>,
    endpoints: Mutex<String>,
    /// Answer every request with 429.
    throttle: Mutex<bool>,
    version_requests: AtomicUsize,
    endpoint_requests: AtomicUsize,
    /// The last request's query (to check the ClientRequestId).
    last_query: Mutex<String>,
}

struct FakeService {
    addr: SocketAddr,
    feed: Arc<Feed>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeService {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An Exchange Optimize set naming `host` on `port`.
fn endpoints(host: &str, port: u16) -> String {
    format!(
        r#"[{{"id":1,"serviceArea":"Exchange","serviceAreaDisplayName":"Exchange Online","urls":["{host}"],"ips":["198.51.100.0/24"],"tcpPorts":"80,443,{port}","expressRoute":true,"category":"Optimize","required":true}}]"#
    )
}

async fn fake_service(version: &str, endpoints: String) -> FakeService {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let feed = Arc::new(Feed {
        version: Mutex::new(version.to_owned()),
        endpoints: Mutex::new(endpoints),
        throttle: Mutex::new(false),
        version_requests: AtomicUsize::new(0),
        endpoint_requests: AtomicUsize::new(0),
        last_query: Mutex::new(String::new()),
    });
    let state = Arc::clone(&feed);
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let state = Arc::clone(&state);
            tokio::spawn(async move {
                let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let state = Arc::clone(&state);
                    async move {
                        *state.last_query.lock().unwrap() =
                            req.uri().query().unwrap_or("").to_owned();
                        let path = req.uri().path();
                        let (status, body) = if *state.throttle.lock().unwrap() {
                            (StatusCode::TOO_MANY_REQUESTS, String::new())
                        } else if path == "/version/Worldwide" {
                            state.version_requests.fetch_add(1, Ordering::SeqCst);
                            let v = state.version.lock().unwrap().clone();
                            (
                                StatusCode::OK,
                                format!(r#"{{"instance":"Worldwide","latest":"{v}"}}"#),
                            )
                        } else if path == "/endpoints/Worldwide" {
                            state.endpoint_requests.fetch_add(1, Ordering::SeqCst);
                            (StatusCode::OK, state.endpoints.lock().unwrap().clone())
                        } else {
                            (StatusCode::NOT_FOUND, String::new())
                        };
                        let mut r = Response::new(Full::new(Bytes::from(body)));
                        *r.status_mut() = status;
                        Ok::<_, Infallible>(r)
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    FakeService { addr, feed, task }
}

/// A proxy with Basic auth whose only way to exempt `mail.m365.test` is the feed.
fn proxy_for(service: SocketAddr, origin: &TestOrigin, data_dir: &std::path::Path) -> TestProxy {
    let users = data_dir.parent().unwrap().join("users");
    if !users.exists() {
        portcullis_e2e::htpasswd(&users, "-B", "alice", "pw");
    }
    TestProxy::start(&format!(
        "[server]\nconnect_ports = [{port}]\ndata_dir = \"{data}\"\n\
         [auth]\nschemes = [\"basic\"]\nhtpasswd = \"{users}\"\n\
         [m365]\nfetch = true\nurl = \"http://{service}\"\ncheck_interval = \"1s\"\n\
         [resolve]\n\"mail.m365.test\" = [\"127.0.0.1\"]\n",
        port = origin.addr.port(),
        data = data_dir.display(),
        users = users.display(),
    ))
}

async fn connect_status(proxy: &TestProxy, port: u16) -> String {
    let request = format!("CONNECT mail.m365.test:{port} HTTP/1.1\r\nHost: mail.m365.test\r\n\r\n");
    let reply = raw(proxy.addr, request.as_bytes(), Duration::from_millis(300)).await;
    reply.lines().next().unwrap_or_default().to_owned()
}

async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("timed out waiting for: {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_exempts_its_hosts_survives_bad_answers_and_outlives_the_service() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let origin = TestOrigin::http().await;
    let port = origin.addr.port();
    let service = fake_service("2026110100", endpoints("mail.m365.test", port)).await;
    let proxy = proxy_for(service.addr, &origin, &data);

    // Fetched, cached, reloaded: the feed's host is tunnelled without credentials.
    eventually("the feed's host to be auth-exempt", async || {
        connect_status(&proxy, port)
            .await
            .starts_with("HTTP/1.1 200")
    })
    .await;
    let admin = proxy.admin_url();
    let s = scrape_until(&admin, |s| {
        s.value(
            "portcullis_m365_endpoints_version_info",
            &[r#"version="2026110100""#],
        ) == 1.0
    })
    .await;
    assert_eq!(
        s.value(
            "portcullis_m365_endpoints_version_info",
            &[r#"instance="Worldwide""#, r#"version="2026110100""#]
        ),
        1.0,
        "{}",
        s.0
    );
    let query = service.feed.last_query.lock().unwrap().clone();
    let id = query.strip_prefix("ClientRequestId=").unwrap_or_default();
    assert_eq!(id.len(), 36, "{query}");
    assert_eq!(
        std::fs::read_to_string(data.join("m365/client-request-id"))
            .unwrap()
            .trim(),
        id
    );

    // The same version again and again: the list is not downloaded again.
    let checks = service.feed.version_requests.load(Ordering::SeqCst);
    eventually("two more version checks", async || {
        service.feed.version_requests.load(Ordering::SeqCst) >= checks + 2
    })
    .await;
    assert_eq!(service.feed.endpoint_requests.load(Ordering::SeqCst), 1);

    // A new version with a broken list: counted as failed, the cached list stays.
    *service.feed.endpoints.lock().unwrap() = "[{\"id\": oops".to_owned();
    *service.feed.version.lock().unwrap() = "2026110200".to_owned();
    scrape_until(&admin, |s| {
        s.value("portcullis_m365_fetches_total", &[r#"result="failed""#]) >= 1.0
    })
    .await;
    assert!(connect_status(&proxy, port)
        .await
        .starts_with("HTTP/1.1 200"));

    // 429: counted as throttled, nothing changes.
    *service.feed.throttle.lock().unwrap() = true;
    let s = scrape_until(&admin, |s| {
        s.value("portcullis_m365_fetches_total", &[r#"result="throttled""#]) >= 1.0
    })
    .await;
    assert!(
        s.value("portcullis_m365_fetches_total", &[r#"result="throttled""#]) >= 1.0,
        "{}",
        s.0
    );
    assert!(connect_status(&proxy, port)
        .await
        .starts_with("HTTP/1.1 200"));
    assert!(proxy.stderr().contains("429"), "{}", proxy.stderr());

    // The service goes away and the proxy restarts: the cached list still applies.
    drop(proxy);
    drop(service);
    let gone: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let restarted = proxy_for(gone, &origin, &data);
    assert!(connect_status(&restarted, port)
        .await
        .starts_with("HTTP/1.1 200"));
    // An unknown host still needs credentials.
    let other = raw(
        restarted.addr,
        format!("CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
        Duration::from_millis(300),
    )
    .await;
    assert!(other.starts_with("HTTP/1.1 407"), "{other}");
}

/// An installation without Internet access: the first failed check is one INFO line naming
/// `m365.fetch`, later ones are only counted, and the feed's failures never count as origins'
/// (`portcullis_dns_failures_total` is about origin names).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_proxy_says_so_once_and_counts_the_feed_apart_from_origins() {
    let proxy = TestProxy::start(
        "[m365]\nfetch = true\nurl = \"https://endpoints.offline.test\"\ncheck_interval = \"1s\"\n\
         [upstream]\nsystem_resolver = false\n[tls]\ninspect = false\n",
    );
    let admin = proxy.admin_url();
    let failed = [r#"result="failed""#];
    let s = scrape_until(&admin, |s| {
        s.value("portcullis_m365_fetches_total", &failed) >= 3.0
    })
    .await;
    assert!(
        s.value("portcullis_m365_fetches_total", &failed) >= 3.0,
        "{}",
        proxy.stderr()
    );
    assert_eq!(s.value("portcullis_dns_failures_total", &[]), 0.0);
    assert_eq!(
        s.value("portcullis_upstream_connect_duration_seconds_count", &[]),
        0.0
    );
    let log = proxy.stderr();
    let said: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("Microsoft 365 endpoints service cannot be reached"))
        .collect();
    assert_eq!(said.len(), 1, "{log}");
    assert!(
        said[0].contains(" INFO ") && said[0].contains("m365.fetch = false"),
        "{}",
        said[0]
    );
    assert!(
        !log.lines()
            .any(|l| l.contains(" WARN ") && l.contains("Microsoft 365")),
        "{log}"
    );

    // An origin name that does not resolve is still counted.
    let r = portcullis_e2e::curl(&["-x", &proxy.url(), "http://nowhere.offline.test/"]).await;
    assert_eq!(r.status, 502);
    let s = scrape_until(&admin, |s| {
        s.value("portcullis_dns_failures_total", &[]) >= 1.0
    })
    .await;
    assert_eq!(s.value("portcullis_dns_failures_total", &[]), 1.0);
}

#[test]
fn import_validates_and_stores_the_list() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("endpoints.json");
    let data = dir.path().join("data");
    let run = |file: &std::path::Path| {
        Command::new(portcullis_bin())
            .args(["m365", "import"])
            .arg(file)
            .arg("--data-dir")
            .arg(&data)
            .output()
            .unwrap()
    };
    std::fs::write(&file, "{\"not\": \"a list\"}").unwrap();
    let bad = run(&file);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("is not a Microsoft 365 endpoint list"),
        "{err}"
    );
    assert!(!data.join("m365/endpoints.json").exists());

    std::fs::write(&file, endpoints("mail.m365.test", 8443)).unwrap();
    let good = run(&file);
    let out = String::from_utf8_lossy(&good.stdout);
    assert!(
        good.status.success(),
        "{}",
        String::from_utf8_lossy(&good.stderr)
    );
    assert!(out.contains("imported 1 endpoint sets"), "{out}");
    assert_eq!(
        std::fs::read_to_string(data.join("m365/endpoints.json")).unwrap(),
        endpoints("mail.m365.test", 8443)
    );
}
