//! Hot reload: SIGHUP, `POST /reload` and `portcullis reload` re-read the config and the
//! htpasswd file and swap them in at once, under load, without failing a request; an invalid
//! config is rejected and the old rules stay.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::Signal;
use portcullis_e2e::proxy::write_atomically;
use portcullis_e2e::{curl, portcullis_bin, scrape, scrape_until, TestOrigin, TestProxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// `alice:secret-pw`, as a Basic credential.
const ALICE: &str = "YWxpY2U6c2VjcmV0LXB3";

fn auth_config(htpasswd: &Path, origin: &TestOrigin, exempt: &[&str]) -> String {
    // Destinations are exempted by the policy; an empty list means no rule at all.
    let rule = if exempt.is_empty() {
        String::new()
    } else {
        let hosts = exempt
            .iter()
            .map(|h| format!("\"{h}\""))
            .collect::<Vec<_>>()
            .join(", ");
        format!("[[policy.rules]]\nhost = [{hosts}]\naction = \"tunnel\"\nauth = \"exempt\"\n")
    };
    format!(
        "[tls]\ninspect = false\n\
         [auth]\nschemes = [\"basic\"]\nhtpasswd = \"{}\"\n\
         [resolve]\n\"a.test\" = [\"{ip}\"]\n\"b.test\" = [\"{ip}\"]\n\"slow.test\" = [\"{ip}\"]\n\
         {rule}",
        htpasswd.display(),
        ip = origin.addr.ip(),
    )
}

async fn status(proxy: &TestProxy, user: Option<&str>, url: &str) -> u16 {
    let proxy_url = proxy.url();
    let mut args = vec!["-x", proxy_url.as_str(), url];
    if let Some(user) = user {
        args.extend(["-U", user]);
    }
    curl(&args).await.status
}

/// A CONNECT through `proxy` to `origin` (curl's proxy tunnel) and a GET inside it: the
/// GET's status (0 when the CONNECT was refused) and the refusal's `X-Portcullis-Error`.
async fn tunnel(proxy: &TestProxy, origin: &TestOrigin) -> (u16, Option<String>) {
    let r = curl(&["-p", "-x", &proxy.url(), &origin.url("/")]).await;
    (r.status, r.header("x-portcullis-error"))
}

/// Waits until `result` reloads were counted (success or failure).
async fn wait_reloads(proxy: &TestProxy, result: &str, n: f64) {
    let label = format!("result=\"{result}\"");
    let s = scrape_until(&proxy.admin_url(), |s| {
        s.value("portcullis_config_reloads_total", &[&label]) >= n
    })
    .await;
    assert_eq!(
        s.value("portcullis_config_reloads_total", &[&label]),
        n,
        "reloads ({result}); stderr:\n{}",
        proxy.stderr()
    );
}

/// One request on a kept-alive raw connection: `GET url` with optional credentials; returns the
/// status and reads the body so the connection can carry the next request.
async fn keep_alive_get(stream: &mut TcpStream, url: &str, auth: Option<&str>) -> u16 {
    let auth = auth
        .map(|c| format!("Proxy-Authorization: Basic {c}\r\n"))
        .unwrap_or_default();
    let request = format!("GET {url} HTTP/1.1\r\nHost: x\r\n{auth}\r\n");
    if stream.write_all(request.as_bytes()).await.is_err() {
        return 0;
    }
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut byte)).await {
            Ok(Ok(1)) => head.push(byte[0]),
            _ => return 0,
        }
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    if stream.read_exact(&mut body).await.is_err() {
        return 0;
    }
    head.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_under_load_swaps_rules_and_users_without_failing_a_request() {
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users");
    portcullis_e2e::htpasswd(&users, "-B", "alice", "secret-pw");
    let origin = TestOrigin::http().await;
    let proxy = Arc::new(TestProxy::start(&auth_config(&users, &origin, &[])));
    let port = origin.addr.port();
    let a = format!("http://a.test:{port}/");
    let b = format!("http://b.test:{port}/");
    assert_eq!(status(&proxy, None, &b).await, 407);
    assert_eq!(status(&proxy, Some("bob:bob-pw"), &a).await, 407);

    // Load: two clients, one opening a connection per request (curl), one keeping a single
    // connection alive across the reload; every answer must be 200.
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let mut clients = Vec::new();
    {
        let (proxy, stop, done, failures, a) = (
            Arc::clone(&proxy),
            Arc::clone(&stop),
            Arc::clone(&done),
            Arc::clone(&failures),
            a.clone(),
        );
        clients.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let got = status(&proxy, Some("alice:secret-pw"), &a).await;
                done.fetch_add(1, Ordering::Relaxed);
                if got != 200 {
                    failures.lock().unwrap().push(format!("curl: {got}"));
                }
            }
        }));
    }
    let mut kept = TcpStream::connect(proxy.addr).await.unwrap();
    assert_eq!(keep_alive_get(&mut kept, &a, Some(ALICE)).await, 200);
    let kept = Arc::new(tokio::sync::Mutex::new(kept));
    {
        let (kept, stop, done, failures, a) = (
            Arc::clone(&kept),
            Arc::clone(&stop),
            Arc::clone(&done),
            Arc::clone(&failures),
            a.clone(),
        );
        clients.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let got = keep_alive_get(&mut *kept.lock().await, &a, Some(ALICE)).await;
                done.fetch_add(1, Ordering::Relaxed);
                if got != 200 {
                    failures.lock().unwrap().push(format!("keep-alive: {got}"));
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The change: a new user, and a new rule (b.test needs no login).
    portcullis_e2e::htpasswd(&users, "-B", "bob", "bob-pw");
    proxy.rewrite_config(&auth_config(&users, &origin, &["b.test"]));
    let before = done.load(Ordering::Relaxed);
    proxy.signal(Signal::SIGHUP);
    wait_reloads(&proxy, "success", 1.0).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let during = done.load(Ordering::Relaxed) - before;

    assert_eq!(status(&proxy, None, &b).await, 200, "the new rule applies");
    assert_eq!(
        status(&proxy, Some("bob:bob-pw"), &a).await,
        200,
        "the new user works"
    );
    // The kept-alive connection that predates the reload gets the new rule at its next request.
    assert_eq!(keep_alive_get(&mut *kept.lock().await, &b, None).await, 200);

    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.unwrap();
    }
    let failures = failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "requests failed across the reload: {failures:?}"
    );
    assert!(during > 0, "the clients were not running during the reload");
    eprintln!(
        "{} requests, {during} of them in the 300 ms after SIGHUP, none failed",
        done.load(Ordering::Relaxed)
    );

    // An invalid config is rejected; the rules in effect stay.
    write_atomically(
        &proxy.config_path(),
        "[server]\nlisten = [\"127.0.0.1:0\"]\nbogus = 1\n",
    );
    proxy.signal(Signal::SIGHUP);
    wait_reloads(&proxy, "failure", 1.0).await;
    let s = scrape(&proxy.admin_url()).await;
    assert_eq!(
        s.value("portcullis_config_last_reload_successful", &[]),
        0.0
    );
    assert!(
        proxy.stderr().contains("server.bogus"),
        "the error names the key:\n{}",
        proxy.stderr()
    );
    assert_eq!(status(&proxy, None, &b).await, 200, "old rule kept");
    assert_eq!(status(&proxy, Some("alice:secret-pw"), &a).await, 200);

    // A broken htpasswd file rejects the whole reload, config included: b.test stays exempt
    // although the new config would drop the exemption, and the known users keep working.
    let text = std::fs::read_to_string(&users).unwrap();
    write_atomically(&users, &format!("{text}carol:plaintext-password\n"));
    proxy.rewrite_config(&auth_config(&users, &origin, &[]));
    proxy.signal(Signal::SIGHUP);
    wait_reloads(&proxy, "failure", 2.0).await;
    assert!(
        proxy.stderr().contains("auth.htpasswd"),
        "{}",
        proxy.stderr()
    );
    assert_eq!(status(&proxy, None, &b).await, 200, "old rule kept");
    assert_eq!(
        status(&proxy, Some("bob:bob-pw"), &a).await,
        200,
        "old users kept"
    );
    assert_eq!(
        status(&proxy, Some("carol:plaintext-password"), &a).await,
        407
    );

    // Fixed again: the next reload applies.
    write_atomically(&users, &text);
    proxy.signal(Signal::SIGHUP);
    wait_reloads(&proxy, "success", 2.0).await;
    assert_eq!(status(&proxy, None, &b).await, 407, "exemption removed");
    let s = scrape(&proxy.admin_url()).await;
    assert_eq!(
        s.value("portcullis_config_last_reload_successful", &[]),
        1.0
    );
}

/// A request in flight during a reload finishes under the rules it started with; the next one
/// uses the new rules.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_requests_finish_with_the_snapshot_they_started_with() {
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users");
    portcullis_e2e::htpasswd(&users, "-B", "alice", "secret-pw");
    let origin = TestOrigin::http().await;
    let proxy = Arc::new(TestProxy::start(&auth_config(
        &users,
        &origin,
        &["slow.test"],
    )));
    let slow = format!("http://slow.test:{}/delay/1500", origin.addr.port());
    let in_flight = {
        let (proxy, slow) = (Arc::clone(&proxy), slow.clone());
        tokio::spawn(async move { curl(&["-x", &proxy.url(), &slow]).await })
    };
    tokio::time::sleep(Duration::from_millis(400)).await;
    proxy.rewrite_config(&auth_config(&users, &origin, &[]));
    proxy.signal(Signal::SIGHUP);
    wait_reloads(&proxy, "success", 1.0).await;
    let finished = in_flight.await.unwrap();
    assert_eq!(finished.status, 200, "{finished:?}");
    assert_eq!(finished.body_text(), "done after delay\n");
    assert_eq!(
        status(&proxy, None, &slow).await,
        407,
        "the next request has the new rules"
    );
}

/// `portcullis reload` through the admin endpoint reports the outcome; through the pid file
/// it signals; listener changes are reported as needing a restart and the old ones stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reload_command_uses_the_admin_endpoint_or_the_pid_file() {
    let origin = TestOrigin::http().await;
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("portcullis.pid");
    let base = format!(
        "[tls]\ninspect = false\n[admin]\nlisten = \"127.0.0.1:0\"\npid_file = \"{}\"\n",
        pid_file.display()
    );
    let mut proxy = TestProxy::start(&base);
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(pid, proxy.pid());
    let refused = (
        0,
        Some("port-not-allowed; setting=server.connect_ports".to_owned()),
    );
    assert_eq!(tunnel(&proxy, &origin).await, refused);

    let with_port = format!("{base}[server]\nconnect_ports = [{}]\n", origin.addr.port());
    proxy.rewrite_config(&with_port);
    let admin = proxy.admin_url();
    let out = reload_cmd(&["--admin", &admin]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "reloaded\n");
    assert_eq!(tunnel(&proxy, &origin).await.0, 200);

    // An invalid config: the command fails and says why; the running config stays.
    write_atomically(
        &proxy.config_path(),
        "[server]\nconnect_ports = [\"https\"]\n",
    );
    let out = reload_cmd(&["--admin", &admin]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("server.connect_ports"), "{err}");
    assert!(err.contains("previous configuration stays"), "{err}");
    assert_eq!(tunnel(&proxy, &origin).await.0, 200);

    // A new listen address is not applied (the socket is bound once) and is reported.
    let moved = format!("{with_port}listen = [\"127.0.0.1:1\"]\n");
    proxy.rewrite_config(&moved);
    let out = reload_cmd(&["--admin", &admin]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("server.listen changed: restart to apply it"),
        "{out:?}"
    );
    assert_eq!(
        tunnel(&proxy, &origin).await.0,
        200,
        "still on the old listener"
    );
    let effective: toml::Table =
        toml::from_str(&curl(&[&format!("{admin}/config")]).await.body_text()).unwrap();
    let listen = effective["server"]["listen"].as_array().unwrap();
    assert_eq!(listen.len(), 1);
    assert_eq!(
        listen[0].as_str(),
        Some("127.0.0.1:0"),
        "/config shows what is in effect"
    );
    assert!(
        proxy.stderr().contains("needs a restart"),
        "{}",
        proxy.stderr()
    );

    // Through the pid file: SIGHUP, outcome in the log and the metrics.
    proxy.rewrite_config(&base);
    let out = reload_cmd(&["--pid-file", &pid_file.display().to_string()]);
    assert!(out.status.success(), "{out:?}");
    wait_reloads(&proxy, "success", 3.0).await;
    assert_eq!(tunnel(&proxy, &origin).await, refused);

    // A clean exit removes the pid file.
    proxy.signal(Signal::SIGTERM);
    assert!(proxy
        .wait_exit(Duration::from_secs(10))
        .is_some_and(|s| s.success()));
    assert!(!pid_file.exists());
}

fn reload_cmd(args: &[&str]) -> std::process::Output {
    Command::new(portcullis_bin())
        .arg("reload")
        .args(args)
        .output()
        .unwrap()
}
