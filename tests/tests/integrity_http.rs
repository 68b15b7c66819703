//! Control integrity for plain and decrypted HTTP (issue 15): nothing a client sends may carry a
//! request past the per-request policy and the access log — protocol upgrades other than
//! WebSocket, ambiguous chunked framing, `Max-Forwards`, and plain HTTP to arbitrary ports.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use portcullis_e2e::{curl, TestOrigin, TestProxy};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_goes_only_to_safe_ports() {
    let proxy = TestProxy::start("");
    // Squid's Safe_ports: SMTP and SSH are not among them. Refused before any dial: a 403, not
    // the 502 a closed port would give.
    for port in [25, 22] {
        let url = format!("http://127.0.0.1:{port}/");
        let r = curl(&["-x", &proxy.url(), "--data-binary", "MAIL FROM:<x@y>", &url]).await;
        assert_eq!(r.status, 403, "port {port}: {r:?}");
        assert_eq!(
            r.header("x-portcullis-error").as_deref(),
            Some("port-not-allowed"),
            "port {port}"
        );
    }
    let log = proxy.access_log(2).join("\n");
    assert!(log.contains("TCP_DENIED/403"), "{log}");

    // A configured list, as numbers and ranges: an origin outside it is never connected to.
    let origin = TestOrigin::http().await;
    let narrow = TestProxy::start("[server]\nhttp_ports = [80, \"1025-1030\"]\n");
    let r = curl(&["-x", &narrow.url(), &origin.url("/")]).await;
    assert_eq!(r.status, 403, "{r:?}");
    assert_eq!(origin.connections(), 0);
    let wide = TestProxy::start(&format!(
        "[server]\nhttp_ports = [\"80\", \"1025-{}\"]\n",
        origin.addr.port()
    ));
    let r = curl(&["-x", &wide.url(), &origin.url("/")]).await;
    assert_eq!(r.status, 200, "{r:?}");
    // Mistakes name the key.
    for bad in ["[0]", "[\"9-3\"]", "[\"http\"]", "[70000]"] {
        let err = TestProxy::try_start(&format!("[server]\nhttp_ports = {bad}\n"))
            .err()
            .unwrap_or_default();
        assert!(err.contains("server.http_ports"), "{bad}: {err}");
    }
}
