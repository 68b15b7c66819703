//! RESPMOD against a scripted ICAP service on loopback: what is sent after a preview, and what
//! the caller gets back for 204, an error status and a 200 with a page.
#![expect(clippy::unwrap_used, reason = "tests")]

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use http::{Response, StatusCode};
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::{Client, Failed, Icap, IcapResult, Service};
use crate::body;
use crate::config::IcapConfig;

const CLIENT: Client<'static> = Client {
    ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
    user: Some("alice"),
};

/// Reads until `end`; returns everything read.
async fn read_until(s: &mut TcpStream, end: &[u8]) -> Vec<u8> {
    let mut buf = Vec::new();
    while !buf.ends_with(end) {
        let mut b = [0u8; 4096];
        let n = s.read(&mut b).await.unwrap();
        assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&b[..n]);
    }
    buf
}

/// A service with `Preview: 4` that answers the RESPMOD preview with `answer`; the task returns
/// the RESPMOD bytes it received (and anything sent after its answer within 200 ms).
async fn service(answer: &'static [u8]) -> (Arc<Service>, tokio::task::JoinHandle<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        read_until(&mut s, b"\r\n\r\n").await;
        s.write_all(b"ICAP/1.0 200 OK\r\nMethods: RESPMOD\r\nPreview: 4\r\nISTag: \"t1\"\r\nOptions-TTL: 60\r\nEncapsulated: null-body=0\r\n\r\n").await.unwrap();
        let mut got = read_until(&mut s, b"\r\n0\r\n\r\n").await;
        s.write_all(answer).await.unwrap();
        let mut more = [0u8; 4096];
        if let Ok(Ok(n)) =
            tokio::time::timeout(std::time::Duration::from_millis(200), s.read(&mut more)).await
        {
            got.extend_from_slice(&more[..n]);
        }
        got
    });
    let config: IcapConfig = toml::from_str(&format!(
        "[[services]]\nname = \"t\"\nurl = \"icap://127.0.0.1:{port}/scan\"\nmethod = \"respmod\"\n"
    ))
    .unwrap();
    let icap = Icap::new(&config);
    (Arc::clone(&icap.services()[0]), task)
}

fn origin_response() -> Response<body::ProxyBody> {
    Response::builder()
        .header("content-type", "text/plain")
        .body(body::full("hello world"))
        .unwrap()
}

async fn text(body: body::ProxyBody) -> String {
    String::from_utf8(body.collect().await.unwrap().to_bytes().to_vec()).unwrap()
}

#[tokio::test]
async fn a_204_after_the_preview_keeps_the_rest_of_the_body_here() {
    let (svc, task) = service(b"ICAP/1.0 204 No Content\r\nISTag: \"t1\"\r\n\r\n").await;
    let (response, result) = svc
        .respmod(
            &CLIENT,
            b"GET http://a.test/ HTTP/1.1\r\n\r\n",
            origin_response(),
        )
        .await
        .ok()
        .unwrap();
    assert_eq!(result, IcapResult::Unmodified);
    assert_eq!(text(response.into_body()).await, "hello world");
    let sent = String::from_utf8(task.await.unwrap()).unwrap();
    assert!(sent.starts_with("RESPMOD icap://127.0.0.1:"), "{sent}");
    assert!(sent.contains("\r\nPreview: 4\r\n"), "{sent}");
    assert!(sent.contains("\r\nX-Client-IP: 127.0.0.1\r\n"), "{sent}");
    assert!(
        sent.contains("\r\nX-Authenticated-User: YWxpY2U=\r\n"),
        "{sent}"
    );
    assert!(
        !sent.contains("Allow: 204"),
        "the proxy does not hold the whole body: {sent}"
    );
    assert!(
        sent.ends_with("content-type: text/plain\r\n\r\n4\r\nhell\r\n0\r\n\r\n"),
        "the preview and nothing after it: {sent:?}"
    );
}

#[tokio::test]
async fn an_error_status_gives_the_original_back_whole() {
    let (svc, _task) = service(b"ICAP/1.0 500 Server Error\r\n\r\n").await;
    let Err(Failed { error, original }) = svc
        .respmod(
            &CLIENT,
            b"GET http://a.test/ HTTP/1.1\r\n\r\n",
            origin_response(),
        )
        .await
    else {
        panic!("a 500 is an error");
    };
    assert_eq!(error.to_string(), "the ICAP service answered 500");
    let original = original.unwrap();
    assert_eq!(original.headers()["content-type"], "text/plain");
    assert_eq!(text(original.into_body()).await, "hello world");
}

#[tokio::test]
async fn a_200_on_the_preview_is_the_services_page() {
    let (svc, _task) = service(
        b"ICAP/1.0 200 OK\r\nEncapsulated: res-hdr=0, res-body=71\r\n\r\n\
          HTTP/1.1 403 Forbidden\r\nContent-Type: text/html\r\nContent-Length: 99\r\n\r\n\
          7\r\nblocked\r\n0\r\n\r\n",
    )
    .await;
    let (response, result) = svc
        .respmod(
            &CLIENT,
            b"GET http://a.test/ HTTP/1.1\r\n\r\n",
            origin_response(),
        )
        .await
        .ok()
        .unwrap();
    assert_eq!(result, IcapResult::Modified);
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert!(
        response.headers().get("content-length").is_none(),
        "the service's stale length is dropped"
    );
    assert_eq!(text(response.into_body()).await, "blocked");
}

/// A REQMOD service whose answer sends the request elsewhere (another host in the target and
/// in `Host`): the method, path and headers are the service's, the destination stays the one
/// the policy decided on — a service cannot redirect a request past the policy.
#[tokio::test]
async fn a_reqmod_answer_cannot_change_the_destination() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        read_until(&mut s, b"\r\n\r\n").await;
        s.write_all(b"ICAP/1.0 200 OK\r\nMethods: REQMOD\r\nISTag: \"t1\"\r\nOptions-TTL: 60\r\nEncapsulated: null-body=0\r\n\r\n").await.unwrap();
        // The REQMOD: its ICAP head, then the encapsulated request head (no body).
        let mut got = read_until(&mut s, b"\r\n\r\n").await;
        if got.windows(4).filter(|w| w == b"\r\n\r\n").count() < 2 {
            got.extend(read_until(&mut s, b"\r\n\r\n").await);
        }
        let head =
            b"POST http://evil.test/other HTTP/1.1\r\nHost: evil.test\r\nX-Scanned: yes\r\n\r\n";
        let answer = format!(
            "ICAP/1.0 200 OK\r\nISTag: \"t1\"\r\nEncapsulated: req-hdr=0, null-body={}\r\n\r\n",
            head.len()
        );
        s.write_all(answer.as_bytes()).await.unwrap();
        s.write_all(head).await.unwrap();
        got
    });
    let config: IcapConfig = toml::from_str(&format!(
        "[[services]]\nname = \"t\"\nurl = \"icap://127.0.0.1:{port}/req\"\nmethod = \"reqmod\"\n"
    ))
    .unwrap();
    let icap = Icap::new(&config);
    let svc = Arc::clone(&icap.services()[0]);
    let req = http::Request::builder()
        .uri("http://a.test/page")
        .header("host", "a.test")
        .body(body::empty())
        .unwrap();
    let adapted = svc
        .reqmod(&CLIENT, "http://a.test/page", req)
        .await
        .ok()
        .unwrap();
    let super::Adapted::Message(req, result) = adapted else {
        panic!("the service changed the request, it did not answer for the origin");
    };
    assert_eq!(result, IcapResult::Modified);
    assert_eq!(req.method(), http::Method::POST);
    assert_eq!(req.uri().to_string(), "http://a.test/other");
    assert_eq!(req.headers()["host"], "a.test");
    assert_eq!(req.headers()["x-scanned"], "yes");
    let sent = String::from_utf8(task.await.unwrap()).unwrap();
    assert!(sent.starts_with("REQMOD icap://127.0.0.1:"), "{sent}");
}
