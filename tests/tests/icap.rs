//! Content adaptation (ICAP, RFC 3507) through the real binary, against a real c-icap: its echo
//! service (preview, 204 and 200 answers) and, where installed, ClamAV with an EICAR signature.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use portcullis_e2e::icap::{self, CIcap, EICAR};
use portcullis_e2e::proxy::proc_status_kib;
use portcullis_e2e::{curl, scrape_until, TestOrigin, TestProxy};

/// One `[[icap.services]]` entry.
fn service(name: &str, url: &str, method: &str, extra: &str) -> String {
    format!(
        "[[icap.services]]\nname = \"{name}\"\nurl = \"{url}\"\nmethod = \"{method}\"\n{extra}\n"
    )
}

/// A proxy logging JSON, with `services` and every decision adapted by `default_icap`.
fn proxy(services: &str, default_icap: &str, extra: &str) -> TestProxy {
    TestProxy::start(&format!(
        "{extra}\n[access_log]\nformat = \"json\"\n{services}\n[policy]\ndefault = {{ icap = [{default_icap}] }}\n"
    ))
}

/// The JSON access log lines whose URL ends with `path`.
fn lines_for(proxy: &TestProxy, n: usize, path: &str) -> Vec<serde_json::Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let lines: Vec<serde_json::Value> = proxy
            .access_log(0)
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .filter(|v: &serde_json::Value| v["url"].as_str().unwrap_or("").ends_with(path))
            .collect();
        if lines.len() >= n || std::time::Instant::now() > deadline {
            return lines;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn icap_results(line: &serde_json::Value) -> Vec<String> {
    line["icap"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|n| {
                    format!(
                        "{}:{}",
                        n["service"].as_str().unwrap(),
                        n["result"].as_str().unwrap()
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// RESPMOD over plain HTTP: c-icap's echo answers a preview with 204 (the rest of the body goes
/// straight to the client, never to the service) or 100 Continue and then a 200 with the whole
/// body echoed (the client gets the service's version, with its `Via`). Both arrive intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn respmod_plain_http_preview_204_and_modified_200() {
    if !icap::available() {
        return;
    }
    let c = CIcap::start(false);
    let origin = TestOrigin::http().await;
    let proxy = proxy(
        &service("echo", &c.url("echo"), "respmod", ""),
        "\"echo\"",
        "",
    );
    let url = origin.url("/bytes/100000");
    let mut via_icap = 0;
    for _ in 0..4 {
        let r = curl(&["-sS", "-x", &proxy.url(), &url]).await;
        assert_eq!(r.status, 200, "{r:?}\n{}", proxy.stderr());
        assert_eq!(r.body.len(), 100_000);
        // c-icap adds its own `Via` line to the head it sends back.
        if r.headers.contains("C-ICAP") {
            via_icap += 1;
        }
    }
    let lines = lines_for(&proxy, 4, "/bytes/100000");
    let results: Vec<String> = lines.iter().flat_map(icap_results).collect();
    assert_eq!(lines.len(), 4, "one line per transaction: {lines:?}");
    let unmodified = results.iter().filter(|r| *r == "echo:unmodified").count();
    let modified = results.iter().filter(|r| *r == "echo:modified").count();
    assert_eq!((unmodified, modified), (2, 2), "{results:?}");
    assert_eq!(via_icap, 2, "the modified responses are the service's");
    for line in &lines {
        assert!(line["icap"][0]["ms"].is_u64(), "{line}");
        // The service's state tag (c-icap's echo has a fixed one), quotes included.
        assert_eq!(line["icap"][0]["istag"], "\"CI0001-XXXXXXXXX\"", "{line}");
    }
    // The service's own account: after a 204 it had received the 1024-byte preview only.
    let seen = c.wait_log("RESPMOD", 4);
    assert!(seen.contains(&"RESPMOD 204 1024 0".to_owned()), "{seen:?}");
    assert!(
        seen.contains(&"RESPMOD 200 100000 100000".to_owned()),
        "{seen:?}"
    );
    assert_eq!(seen.len(), 4, "{seen:?}");

    let admin = proxy.admin_url();
    let s = scrape_until(&admin, |s| {
        s.value("portcullis_icap_requests_total", &[r#"service="echo""#]) >= 4.0
    })
    .await;
    let v = |result: &str| {
        s.value(
            "portcullis_icap_requests_total",
            &[r#"service="echo""#, &format!("result=\"{result}\"")],
        )
    };
    assert_eq!(
        (v("unmodified"), v("modified"), v("error")),
        (2.0, 2.0, 0.0)
    );
    assert_eq!(
        s.value(
            "portcullis_icap_duration_seconds_count",
            &[r#"service="echo""#]
        ),
        4.0
    );
}

/// RESPMOD and REQMOD inside inspected TLS: the decrypted request goes through REQMOD (no
/// body: the echo passes it with 204), the origin's response through RESPMOD.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reqmod_and_respmod_inside_inspected_tls() {
    if !icap::available() {
        return;
    }
    let c = CIcap::start(false);
    let origin = TestOrigin::https().await;
    let services = format!(
        "{}{}",
        service("req", &c.url("echo"), "reqmod", ""),
        service("resp", &c.url("echo"), "respmod", "")
    );
    let extra = format!(
        "[server]\nconnect_ports = [{}]\n[tls]\nupstream_ca_file = \"{}\"",
        origin.addr.port(),
        origin.ca_file.as_ref().unwrap().display()
    );
    let proxy = proxy(&services, "\"req\", \"resp\"", &extra);
    let ca = proxy.dir.path().join("data/ca.pem").display().to_string();
    let url = format!("https://localhost:{}/bytes/5000", origin.addr.port());
    for _ in 0..2 {
        let r = curl(&["-sS", "-x", &proxy.url(), "--cacert", &ca, &url]).await;
        assert_eq!(r.status, 200, "{r:?}\n{}", proxy.stderr());
        assert_eq!(r.body.len(), 5000);
    }
    let lines = lines_for(&proxy, 2, "/bytes/5000");
    assert_eq!(lines.len(), 2, "{lines:?}");
    let mut resp = Vec::new();
    for line in &lines {
        assert!(
            line["url"].as_str().unwrap().starts_with("https://"),
            "{line}"
        );
        let results = icap_results(line);
        assert_eq!(results[0], "req:unmodified", "{results:?}");
        resp.push(results[1].clone());
    }
    resp.sort();
    assert_eq!(resp, ["resp:modified", "resp:unmodified"]);
    assert_eq!(
        c.wait_log("REQMOD", 2),
        ["REQMOD 204 0 0", "REQMOD 204 0 0"]
    );
    assert_eq!(origin.seen().len(), 2, "the requests reached the origin");
}

/// REQMOD over plain HTTP: a request without a body is passed with 204; an upload is sent
/// with a preview and either passed after it (204: the rest goes to the origin only) or
/// streamed through the service (100 Continue, then 200 with the body echoed). The origin gets
/// the body intact either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reqmod_plain_http_with_and_without_a_body() {
    if !icap::available() {
        return;
    }
    let c = CIcap::start(false);
    let origin = TestOrigin::http().await;
    let proxy = proxy(&service("req", &c.url("echo"), "reqmod", ""), "\"req\"", "");
    let r = curl(&["-sS", "-x", &proxy.url(), &origin.url("/get")]).await;
    assert_eq!(
        (r.status, r.body_text().as_str()),
        (200, "hello from origin\n")
    );
    assert_eq!(
        icap_results(&lines_for(&proxy, 1, "/get")[0]),
        ["req:unmodified"]
    );

    let upload = proxy.dir.path().join("upload.bin");
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&upload, &data).unwrap();
    let at = format!("@{}", upload.display());
    for _ in 0..2 {
        let r = curl(&[
            "-sS",
            "-x",
            &proxy.url(),
            "--data-binary",
            &at,
            &origin.url("/echo"),
        ])
        .await;
        assert_eq!(r.status, 200, "{r:?}\n{}", proxy.stderr());
        assert!(r.body == data, "the origin got the upload intact");
    }
    let mut results: Vec<String> = lines_for(&proxy, 2, "/echo")
        .iter()
        .flat_map(icap_results)
        .collect();
    results.sort();
    assert_eq!(results, ["req:modified", "req:unmodified"]);
    // The service's version of the request is what the origin got: c-icap's echo adds its
    // `Via` to the head it sends back, on exactly one of the two uploads.
    let via_icap = origin
        .seen()
        .iter()
        .filter(|r| r.uri == "/echo")
        .filter(|r| {
            r.headers
                .get_all("via")
                .iter()
                .any(|v| v.to_str().unwrap_or("").contains("C-ICAP"))
        })
        .count();
    assert_eq!(via_icap, 1, "{:?}", origin.seen());
    let seen = c.wait_log("REQMOD", 3);
    assert!(
        seen.contains(&"REQMOD 204 1024 0".to_owned()),
        "not re-sent after 204: {seen:?}"
    );
    assert!(
        seen.contains(&"REQMOD 200 100000 100000".to_owned()),
        "{seen:?}"
    );
}

/// REQMOD with ClamAV: an upload carrying EICAR is answered by the service's page and never
/// reaches the origin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eicar_upload_is_blocked_before_the_origin() {
    if !icap::available() || !icap::clamav_available() {
        return;
    }
    let c = CIcap::start(true);
    let origin = TestOrigin::http().await;
    let proxy = proxy(&service("av", &c.url("avscan"), "reqmod", ""), "\"av\"", "");
    let r = curl(&[
        "-sS",
        "-x",
        &proxy.url(),
        "--data-binary",
        EICAR,
        &origin.url("/sink"),
    ])
    .await;
    assert_eq!(r.status, 403, "{r:?}\n{}", proxy.stderr());
    assert!(r.body_text().contains("VIRUS FOUND"), "{}", r.body_text());
    assert!(
        origin.seen().is_empty(),
        "the upload must not reach the origin"
    );
    assert_eq!(
        icap_results(&lines_for(&proxy, 1, "/sink")[0]),
        ["av:responded"]
    );
    let r = curl(&[
        "-sS",
        "-x",
        &proxy.url(),
        "--data-binary",
        "clean",
        &origin.url("/sink"),
    ])
    .await;
    assert_eq!(
        (r.status, r.body_text().as_str()),
        (200, "received 5 bytes\n")
    );
}

/// A service that is down: failing closed (the default) answers 502 `icap-error` and makes
/// `/readyz` fail; failing open (`bypass_on_error`) forwards unadapted, logs it, and `/readyz`
/// stays ready while naming the service as down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_down_fails_closed_by_default_and_open_when_bypassed() {
    let origin = TestOrigin::http().await;
    let down = format!(
        "icap://127.0.0.1:{}/echo",
        portcullis_e2e::ports::free_port()
    );
    let url = origin.url("/bytes/3000");

    let closed = proxy(&service("av", &down, "respmod", ""), "\"av\"", "");
    let r = curl(&["-sS", "-x", &closed.url(), &url]).await;
    assert_eq!(r.status, 502, "{r:?}");
    assert_eq!(
        r.header("x-portcullis-error").as_deref(),
        Some("icap-error")
    );
    let line = &lines_for(&closed, 1, "/bytes/3000")[0];
    assert_eq!(icap_results(line), ["av:error"]);
    assert_eq!(line["error"], "icap-error");
    let ready = curl(&[&format!("{}/readyz", closed.admin_url())]).await;
    assert_eq!(ready.status, 503, "{ready:?}");
    assert!(
        ready.body_text().contains("icap av: FAIL: down"),
        "{}",
        ready.body_text()
    );

    let open = proxy(
        &service("av", &down, "respmod", "bypass_on_error = true"),
        "\"av\"",
        "",
    );
    let r = curl(&["-sS", "-x", &open.url(), &url]).await;
    assert_eq!((r.status, r.body.len()), (200, 3000), "{r:?}");
    assert_eq!(
        icap_results(&lines_for(&open, 1, "/bytes/3000")[0]),
        ["av:bypass-error"]
    );
    assert!(
        open.stderr().contains("ICAP service failed"),
        "{}",
        open.stderr()
    );
    let ready = curl(&[&format!("{}/readyz", open.admin_url())]).await;
    assert_eq!(ready.status, 200, "{ready:?}");
    assert!(
        ready.body_text().contains("icap av: ok: down, bypassed"),
        "{}",
        ready.body_text()
    );
}

/// ClamAV through c-icap: an EICAR download is replaced by the service's block page; a clean
/// one passes unmodified.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eicar_download_gets_the_services_block_page() {
    if !icap::available() || !icap::clamav_available() {
        return;
    }
    let c = CIcap::start(true);
    let origin = TestOrigin::http().await;
    let proxy = proxy(
        &service("av", &c.url("avscan"), "respmod", ""),
        "\"av\"",
        "",
    );
    // The origin's /echo sends back what it is given: here, the EICAR file.
    let r = curl(&[
        "-sS",
        "-x",
        &proxy.url(),
        "--data-binary",
        EICAR,
        &origin.url("/echo"),
    ])
    .await;
    assert_eq!(r.status, 403, "{r:?}\n{}", proxy.stderr());
    assert!(r.body_text().contains("VIRUS FOUND"), "{}", r.body_text());
    assert!(
        !r.body_text().contains("EICAR-STANDARD"),
        "the file must not pass"
    );
    let r = curl(&[
        "-sS",
        "-x",
        &proxy.url(),
        "--data-binary",
        "clean text",
        &origin.url("/echo"),
    ])
    .await;
    assert_eq!((r.status, r.body_text().as_str()), (200, "clean text"));
    let lines = lines_for(&proxy, 2, "/echo");
    let results: Vec<String> = lines.iter().flat_map(icap_results).collect();
    assert_eq!(results, ["av:modified", "av:unmodified"]);
}

/// 1 GiB through RESPMOD, twice (the echo service passes one after the preview and streams
/// the other back through itself): the proxy's memory does not grow with the body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_download_streams_through_respmod() {
    if !icap::available() {
        return;
    }
    const SIZE: u64 = 1024 * 1024 * 1024;
    let c = CIcap::start(false);
    let origin = TestOrigin::http().await;
    let proxy = proxy(
        &service(
            "echo",
            &c.url("echo"),
            "respmod",
            "max_body = 1099511627776",
        ),
        "\"echo\"",
        "",
    );
    let r = curl(&["-sS", "-x", &proxy.url(), &origin.url("/bytes/10")]).await;
    assert_eq!(r.status, 200);
    let before = proc_status_kib(proxy.pid() as u32, "VmRSS:");
    let url = origin.url(&format!("/bytes/{SIZE}"));
    for _ in 0..2 {
        let got = portcullis_e2e::client::download_discarding(&proxy.url(), &url).await;
        assert_eq!(got, format!("200 {SIZE}"), "{}", proxy.stderr());
    }
    let peak = proxy.peak_rss_kib();
    assert!(
        peak.saturating_sub(before) < 64 * 1024,
        "RSS grew from {before} KiB to a peak of {peak} KiB"
    );
    let lines = lines_for(&proxy, 2, &format!("/bytes/{SIZE}"));
    let mut results: Vec<String> = lines.iter().flat_map(icap_results).collect();
    results.sort();
    assert_eq!(results, ["echo:modified", "echo:unmodified"]);
    let seen = c.wait_log("RESPMOD", 3);
    assert!(
        seen.contains(&format!("RESPMOD 200 {SIZE} {SIZE}")),
        "{seen:?}"
    );
}

/// ICAP over TLS (`icaps://`) to c-icap's `TlsPort`, the certificate verified against
/// `ca_file`; without that CA the handshake fails and the request fails closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn icaps_with_a_verified_certificate() {
    if !icap::available() {
        return;
    }
    let c = CIcap::start_tls();
    let origin = TestOrigin::http().await;
    let ca = format!("ca_file = \"{}\"", c.ca_file().display());
    let proxy = proxy(
        &service("echo", &c.tls_url("echo"), "respmod", &ca),
        "\"echo\"",
        "",
    );
    for _ in 0..2 {
        let r = curl(&["-sS", "-x", &proxy.url(), &origin.url("/bytes/5000")]).await;
        assert_eq!(
            (r.status, r.body.len()),
            (200, 5000),
            "{r:?}\n{}",
            proxy.stderr()
        );
    }
    let mut results: Vec<String> = lines_for(&proxy, 2, "/bytes/5000")
        .iter()
        .flat_map(icap_results)
        .collect();
    results.sort();
    assert_eq!(results, ["echo:modified", "echo:unmodified"]);
    assert_eq!(c.wait_log("RESPMOD", 2).len(), 2);

    let untrusted = proxy_untrusted(&c);
    let r = curl(&["-sS", "-x", &untrusted.url(), &origin.url("/bytes/5000")]).await;
    assert_eq!(r.status, 502, "{r:?}");
    assert!(r.body_text().contains("TLS"), "{}", r.body_text());
}

/// The same service without its CA: the system store does not know it.
fn proxy_untrusted(c: &CIcap) -> TestProxy {
    proxy(
        &service("echo", &c.tls_url("echo"), "respmod", ""),
        "\"echo\"",
        "",
    )
}

/// The Outlook profile never adapts, even when it inspects: with `policy.default.icap` set and
/// `policy.outlook.mode = "inspect"`, a request to outlook.office365.com is inspected and
/// forwarded without ICAP, while another inspected host goes through the service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outlook_profile_traffic_is_never_adapted() {
    if !icap::available() {
        return;
    }
    let c = CIcap::start(false);
    let origin = TestOrigin::https_for(&["outlook.office365.com", "www.scanned.test"]).await;
    let port = origin.addr.port();
    let extra = format!(
        "[server]\nconnect_ports = [{port}]\n[tls]\nupstream_ca_file = \"{}\"\n\
         [resolve]\n\"outlook.office365.com\" = [\"127.0.0.1\"]\n\"www.scanned.test\" = [\"127.0.0.1\"]",
        origin.ca_file.as_ref().unwrap().display()
    );
    let proxy = TestProxy::start(&format!(
        "{extra}\n[access_log]\nformat = \"json\"\n{}\n[policy]\ndefault = {{ icap = [\"echo\"] }}\n[policy.outlook]\nmode = \"inspect\"\n",
        service("echo", &c.url("echo"), "respmod", "")
    ));
    let ca = proxy.dir.path().join("data/ca.pem").display().to_string();
    for host in ["outlook.office365.com", "www.scanned.test"] {
        let url = format!("https://{host}:{port}/bytes/2000");
        let r = curl(&["-sS", "-x", &proxy.url(), "--cacert", &ca, &url]).await;
        assert_eq!(
            (r.status, r.body.len()),
            (200, 2000),
            "{host}: {r:?}\n{}",
            proxy.stderr()
        );
    }
    let lines = lines_for(&proxy, 2, "/bytes/2000");
    let outlook = lines
        .iter()
        .find(|l| l["url"].as_str().unwrap().contains("outlook.office365.com"))
        .unwrap();
    assert!(outlook["icap"].is_null(), "{outlook}");
    assert_eq!(outlook["action"], "inspect", "{outlook}");
    assert_eq!(
        outlook["tag"], "outlook",
        "decided by the Outlook profile: {outlook}"
    );
    let other = lines
        .iter()
        .find(|l| l["url"].as_str().unwrap().contains("www.scanned.test"))
        .unwrap();
    assert_eq!(other["icap"][0]["service"], "echo", "{other}");
    assert_eq!(c.wait_log("RESPMOD", 1).len(), 1);
}
