//! Process-level behaviour: CLI, config errors, graceful shutdown, log formats and reopening.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;
use portcullis_e2e::{curl, portcullis_bin, TestOrigin, TestProxy};

#[test]
fn bad_config_exits_non_zero_naming_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(
        &file,
        "[server]\nlisten = [\"127.0.0.1:3128\"]\nmax_conections = 5\n",
    )
    .unwrap();
    for sub in [&["check-config"][..], &["run", "--config"][..]] {
        let out = Command::new(portcullis_bin())
            .args(sub)
            .arg(&file)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{sub:?} accepted a bad config");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("bad.toml"), "{err}");
        assert!(err.contains("server.max_conections"), "{err}");
        assert!(err.contains("unknown field"), "{err}");
    }
    std::fs::write(&file, "[timeouts]\nclient_idle = \"soon\"\n").unwrap();
    let out = Command::new(portcullis_bin())
        .arg("check-config")
        .arg(&file)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("timeouts.client_idle"));
}

#[test]
fn check_config_prints_the_effective_config() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ok.toml");
    std::fs::write(&file, "[server]\nconnect_ports = [443, 8443]\n").unwrap();
    let out = Command::new(portcullis_bin())
        .arg("check-config")
        .arg(&file)
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("connect_ports = [\n    443,\n    8443,\n]")
            || text.contains("connect_ports = [443, 8443]"),
        "{text}"
    );
    assert!(
        text.contains("max_header_bytes = 65536"),
        "defaults missing: {text}"
    );
}

#[test]
fn help_and_version() {
    let version = Command::new(portcullis_bin())
        .arg("--version")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("portcullis "));
    for sub in [
        &["--help"][..],
        &["run", "--help"],
        &["check-config", "--help"],
    ] {
        let out = Command::new(portcullis_bin()).args(sub).output().unwrap();
        assert!(out.status.success(), "{sub:?}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("Usage:"),
            "{sub:?}"
        );
    }
    let run_help = Command::new(portcullis_bin())
        .args(["run", "--help"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&run_help.stdout);
    assert!(
        text.contains("--listen")
            && text.contains("--data-dir")
            && text.contains("embedded default"),
        "{text}"
    );
}

#[test]
fn runs_with_no_config_file_on_cli_listen_address() {
    // `portcullis run` without --config uses the embedded default; --listen overrides it, and
    // --admin-listen keeps the test off the default admin port 9464.
    let data = tempfile::tempdir().unwrap();
    let mut child = Command::new(portcullis_bin())
        .args([
            "run",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(data.path())
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let line = std::io::BufRead::lines(std::io::BufReader::new(stderr))
        .map_while(Result::ok)
        .find(|l| l.contains("listening on"))
        .unwrap_or_default();
    let _ = child.kill();
    let _ = child.wait();
    assert!(line.contains("127.0.0.1:"), "{line}");
    assert!(
        !line.contains(":3128"),
        "--listen did not override the default: {line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_then_exits_zero() {
    let origin = TestOrigin::http().await;
    let mut proxy = TestProxy::start("[timeouts]\nshutdown_grace = \"10s\"\n");
    let url = origin.url("/delay/1500");
    let proxy_url = proxy.url();
    let in_flight = tokio::spawn(async move { curl(&["-x", &proxy_url, &url]).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    proxy.signal(Signal::SIGTERM);
    tokio::time::sleep(Duration::from_millis(200)).await;
    // No new connections once draining.
    let refused = tokio::net::TcpStream::connect(proxy.addr).await;
    assert!(refused.is_err(), "listener still open after SIGTERM");
    let r = in_flight.await.unwrap();
    assert_eq!(r.status, 200, "in-flight request was cut: {r:?}");
    assert_eq!(r.body_text(), "done after delay\n");
    let status = proxy
        .wait_exit(Duration::from_secs(10))
        .expect("proxy did not exit");
    assert!(
        status.success(),
        "exit status {status:?}; stderr:\n{}",
        proxy.stderr()
    );
    let log = std::fs::read_to_string(proxy.access_log_path()).unwrap();
    assert!(
        log.contains("/delay/1500"),
        "access log lost the drained request: {log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_access_log() {
    let origin = TestOrigin::http().await;
    let proxy = TestProxy::start("[access_log]\nformat = \"json\"\n");
    let r = curl(&["-x", &proxy.url(), &origin.url("/bytes/123")]).await;
    assert_eq!(r.status, 200);
    let log = proxy.access_log(1);
    let v: serde_json::Value = serde_json::from_str(&log[0]).unwrap();
    assert_eq!(v["status"], 200);
    assert_eq!(v["bytes"], 123);
    assert_eq!(v["method"], "GET");
    assert_eq!(v["result"], "TCP_MISS");
    assert_eq!(v["url"], origin.url("/bytes/123"));
    assert!(v["time"].as_f64().unwrap() > 1.7e9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr1_reopens_the_access_log() {
    let origin = TestOrigin::http().await;
    let proxy = TestProxy::start("");
    assert_eq!(
        curl(&["-x", &proxy.url(), &origin.url("/one")])
            .await
            .status,
        200
    );
    assert_eq!(proxy.access_log(1).len(), 1);
    let rotated = proxy.dir.path().join("access.log.1");
    std::fs::rename(proxy.access_log_path(), &rotated).unwrap();
    proxy.signal(Signal::SIGUSR1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        curl(&["-x", &proxy.url(), &origin.url("/two")])
            .await
            .status,
        200
    );
    let fresh = proxy.access_log(1);
    assert_eq!(fresh.len(), 1, "{fresh:?}");
    assert!(fresh[0].contains("/two"));
    let old = std::fs::read_to_string(rotated).unwrap();
    assert!(old.contains("/one") && !old.contains("/two"));
}
