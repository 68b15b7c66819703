//! Proxy authentication under attack: password guessing interleaved with a valid login, user
//! enumeration by timing, clients that leave while held back, and a 407 to a large upload.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use portcullis_e2e::{curl, htpasswd, htpasswd_with, TestOrigin, TestProxy};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

fn basic_config(file: &Path, extra: &str) -> String {
    format!(
        "[auth]\nschemes = [\"basic\"]\nhtpasswd = \"{}\"\n{extra}",
        file.display()
    )
}

/// The median of three timings of `f`.
async fn median_of_three<F, Fut>(mut f: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut times = Vec::new();
    for _ in 0..3 {
        let started = Instant::now();
        f().await;
        times.push(started.elapsed());
    }
    times.sort();
    times[1]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_user_costs_as_much_as_a_wrong_password() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("users");
    // Cost 12, as a careful administrator chooses: the dummy verified for unknown users must
    // cost the same, or the answer's speed says whether a name exists.
    htpasswd_with(&file, &["-B", "-C", "12"], "alice", "alice-secret");
    let origin = TestOrigin::http().await;
    let proxy = TestProxy::start(&basic_config(&file, "[auth.throttle]\nfailures = 1000\n"));
    let url = origin.url("/");
    let attempt = |user: &'static str| {
        let (proxy_url, url) = (proxy.url(), url.clone());
        move || {
            let (proxy_url, url) = (proxy_url.clone(), url.clone());
            async move {
                let r = curl(&["-x", &proxy_url, "-U", &format!("{user}:wrong"), &url]).await;
                assert_eq!(r.status, 407, "{r:?}");
            }
        }
    };
    let known = median_of_three(attempt("alice")).await;
    let unknown = median_of_three(attempt("nobody")).await;
    assert!(
        unknown * 2 >= known,
        "an unknown user is answered in {unknown:?}, a wrong password in {known:?}"
    );
}

/// How many failures the proxy held back (its own log line per delayed answer).
fn delayed(proxy: &TestProxy) -> usize {
    proxy.stderr().matches("slowing this client down").count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guesses_interleaved_with_a_valid_login_are_still_delayed() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("users");
    // apr1: cheap hashes, so the test measures the throttle and not the hashing.
    htpasswd(&file, "-m", "alice", "alice-secret");
    htpasswd(&file, "-m", "mallory", "mallory-pw");
    let origin = TestOrigin::http().await;
    let proxy = TestProxy::start(&basic_config(
        &file,
        "[auth.throttle]\nfailures = 5\nwindow = \"10m\"\nmax_delay = \"200ms\"\n",
    ));
    let url = origin.url("/");
    // The attacker guesses alice's password from one address and logs in with its own valid
    // account after every fourth guess, hoping that each success wipes the slate clean.
    for round in 0..10 {
        for guess in 0..4 {
            let r = curl(&[
                "-x",
                &proxy.url(),
                "-U",
                &format!("alice:guess-{round}-{guess}"),
                &url,
            ])
            .await;
            assert_eq!(r.status, 407, "{r:?}");
        }
        let ok = curl(&["-x", &proxy.url(), "-U", "mallory:mallory-pw", &url]).await;
        assert_eq!(ok.status, 200, "{ok:?}");
    }
    // 40 wrong guesses: the first five are free, every later one is held back.
    assert_eq!(delayed(&proxy), 35, "{}", proxy.stderr());

    // alice's own success clears alice's failures only: mallory's next mistakes from a fresh
    // address start from zero, and alice typing her password right is never held back.
    let ok = curl(&["-x", &proxy.url(), "-U", "alice:alice-secret", &url]).await;
    assert_eq!(ok.status, 200);
    let before = delayed(&proxy);
    let typo = curl(&[
        "--interface",
        "127.0.0.5",
        "-x",
        &proxy.url(),
        "-U",
        "mallory:typo",
        &url,
    ])
    .await;
    assert_eq!(typo.status, 407);
    assert_eq!(delayed(&proxy), before, "{}", proxy.stderr());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_during_the_throttle_delay_is_still_logged() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("users");
    htpasswd(&file, "-m", "alice", "alice-secret");
    let origin = TestOrigin::http().await;
    // After one free failure the answers wait 100, 200, 400, 800 ms and 1.6 s.
    let proxy = TestProxy::start(&basic_config(
        &file,
        "[auth.throttle]\nfailures = 1\nwindow = \"10m\"\nmax_delay = \"5s\"\n",
    ));
    let first = curl(&["-x", &proxy.url(), "-U", "alice:wrong", &origin.url("/")]).await;
    assert_eq!(first.status, 407);
    // "Authorization: Basic alice:wrong"
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nProxy-Authorization: Basic YWxpY2U6d3Jvbmc=\r\n\r\n",
        origin.url("/"),
        origin.addr
    );
    for _ in 0..5 {
        let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
        tcp.write_all(request.as_bytes()).await.unwrap();
        // Gone long before the proxy answers.
        tokio::time::sleep(Duration::from_millis(30)).await;
        drop(tcp);
    }
    // Every attempt is one line, whether or not its client stayed for the answer.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let log = proxy.access_log(6);
    let denied = log.iter().filter(|l| l.contains("TCP_DENIED/407")).count();
    assert_eq!(denied, 6, "{log:#?}\n{}", proxy.stderr());
    assert_eq!(delayed(&proxy), 5, "{}", proxy.stderr());
}

/// A client uploading a body too large to wait for: sends the head and `send_mib` MiB of body
/// in 64 KiB pieces, then reads the answer. Prints what happened, one fact per line.
const UPLOADER: &str = r#"
import socket, sys, time
proxy_port, target, declared, send_mib = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
s = socket.create_connection(("127.0.0.1", proxy_port))
s.sendall(("POST %s HTTP/1.1\r\nHost: upload.test\r\nContent-Length: %d\r\n\r\n" % (target, declared)).encode())
chunk = b"u" * 65536
sent, send_error = 0, None
try:
    while sent < send_mib << 20:
        s.sendall(chunk)
        sent += len(chunk)
        time.sleep(0.001)
except OSError as e:
    send_error = type(e).__name__
s.settimeout(10)
data, recv_error = b"", None
try:
    while b"\r\n\r\n" not in data:
        more = s.recv(65536)
        if not more:
            break
        data += more
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        more = s.recv(65536)
        if not more:
            break
        body += more
except OSError as e:
    recv_error = type(e).__name__
    head, body, length = data, b"", -1
print("sent", sent)
print("send_error", send_error)
print("recv_error", recv_error)
print("status", head.split(b"\r\n")[0].decode(errors="replace"))
print("body_complete", length >= 0 and len(body) >= length)
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_407_to_a_large_upload_is_read_by_the_client() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("users");
    htpasswd(&file, "-m", "alice", "alice-secret");
    let origin = TestOrigin::http().await;
    let proxy = TestProxy::start(&basic_config(&file, ""));
    // 1 GiB declared, as Outlook's RPC_IN_DATA channel does; 16 MiB sent before reading.
    let out = tokio::process::Command::new("python3")
        .args(["-c", UPLOADER])
        .arg(proxy.addr.port().to_string())
        .arg(origin.url("/sink"))
        .arg((1u64 << 30).to_string())
        .arg("16")
        .output()
        .await
        .expect("python3");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The upload was never reset under the client, and it read the whole 407.
    assert!(report.contains("send_error None"), "{report}");
    assert!(report.contains("recv_error None"), "{report}");
    assert!(
        report.contains("status HTTP/1.1 407 Proxy Authentication Required"),
        "{report}"
    );
    assert!(report.contains("body_complete True"), "{report}");
    assert_eq!(
        origin.sink_bytes(),
        0,
        "an unauthenticated body reached the origin"
    );
    let log = proxy.access_log(1);
    assert!(log.iter().any(|l| l.contains("TCP_DENIED/407")), "{log:?}");
}
