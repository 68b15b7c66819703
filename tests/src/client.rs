//! Clients: curl (the real thing) and raw TCP for requests curl will not send.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The result of one curl run.
#[derive(Debug)]
pub struct Curl {
    pub status: u16,
    pub headers: String,
    pub body: Vec<u8>,
    pub stderr: String,
    pub exit: i32,
}

impl Curl {
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The value of response header `name` (case-insensitive) of the last response.
    pub fn header(&self, name: &str) -> Option<String> {
        let last = self
            .headers
            .rsplit("\r\n\r\n")
            .find(|b| !b.trim().is_empty())?;
        last.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    }
}

/// Runs curl with `args` (add `-x PROXY` yourself), capturing status, headers and body.
pub async fn curl(args: &[&str]) -> Curl {
    curl_env(args, &[]).await
}

/// [`curl`] with extra environment variables (e.g. `KRB5CCNAME`).
pub async fn curl_env(args: &[&str], env: &[(&str, String)]) -> Curl {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let headers = dir.path().join("headers");
    let out = tokio::process::Command::new("curl")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .args([
            "-sS",
            "--max-time",
            "60",
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
            "-D",
        ])
        .arg(&headers)
        .args(args)
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run curl: {e}"));
    let mut body = out.stdout;
    let code_at = body.iter().rposition(|&b| b == b'\n').unwrap_or(0);
    let status = String::from_utf8_lossy(&body[code_at..])
        .trim()
        .parse()
        .unwrap_or(0);
    body.truncate(code_at);
    Curl {
        status,
        headers: std::fs::read_to_string(&headers).unwrap_or_default(),
        body,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        exit: out.status.code().unwrap_or(-1),
    }
}

/// Sends raw bytes to `addr` and returns everything read until the peer closes or `wait`
/// passes without data.
pub async fn raw(addr: SocketAddr, request: &[u8], wait: Duration) -> String {
    let mut stream = TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    let _ = stream.write_all(request).await;
    read_until_quiet(&mut stream, wait).await
}

pub async fn read_until_quiet(stream: &mut TcpStream, wait: Duration) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match tokio::time::timeout(wait, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Writes `request` on a kept-alive connection and reads exactly one response (its head and a
/// `Content-Length` body), leaving the connection open; returns the head. Panics if the peer
/// closes first.
pub async fn exchange(stream: &mut TcpStream, request: &str) -> String {
    stream
        .write_all(request.as_bytes())
        .await
        .unwrap_or_else(|e| panic!("write: {e}"));
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).into_owned();
            let length = head
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if got.len() >= end + 4 + length {
                return head;
            }
        }
        let n = stream
            .read(&mut chunk)
            .await
            .unwrap_or_else(|e| panic!("read: {e}"));
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&chunk[..n]);
    }
}

/// GETs `url` through `proxy` with curl, discarding the body: `"<status> <bytes>"`. For bodies
/// too big to keep in the test's memory.
pub async fn download_discarding(proxy: &str, url: &str) -> String {
    let out = tokio::process::Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{size_download}",
            "-x",
            proxy,
            url,
        ])
        .output()
        .await
        .unwrap_or_else(|e| panic!("curl: {e}"));
    String::from_utf8_lossy(&out.stdout).into_owned()
}
