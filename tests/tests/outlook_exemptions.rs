//! What the Outlook profile exempts from authentication and inspection, and no more:
//! `autodiscover.*` names only when they are Microsoft's or an accepted domain's, Outlook's
//! User-Agent never as a way around inspection, and `policy explain` telling the same story as
//! the proxy.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use portcullis_e2e::{curl, htpasswd, portcullis_bin, TestOrigin, TestProxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const OUTLOOK_UA: &str =
    "Microsoft Office/16.0 (Windows NT 10.0; Microsoft Outlook 16.0.17328; Pro)";

/// The status line a CONNECT without credentials gets; on `200`, also the answer to one request
/// sent through the tunnel.
async fn connect_without_credentials(proxy: &TestProxy, target: &str) -> String {
    let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let connect = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n");
    tcp.write_all(connect.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let head = String::from_utf8_lossy(&buf[..n]).into_owned();
    let status = head.lines().next().unwrap_or_default().to_owned();
    if !status.starts_with("HTTP/1.1 200") {
        return status;
    }
    // A TLS origin just closes on this; the status line is what counts then.
    let _ = tcp
        .write_all(b"GET /autodiscover/autodiscover.xml HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let n = match tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf)).await {
        Ok(Ok(n)) => n,
        _ => 0,
    };
    format!("{status} | {}", String::from_utf8_lossy(&buf[..n]))
}

fn users(dir: &Path) -> PathBuf {
    let file = dir.join("users");
    htpasswd(&file, "-m", "alice", "secret");
    file
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outlook_user_agent_to_an_unknown_host_is_inspected_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let origin = TestOrigin::https_for(&["www.example.test"]).await;
    let port = origin.addr.port();
    let config = |extra: &str| {
        format!(
            "[server]\nconnect_ports = [{port}]\n\
             [tls]\nupstream_ca_file = \"{ca}\"\n\
             [auth]\nschemes = [\"basic\"]\nhtpasswd = \"{users}\"\n\
             [resolve]\n\"www.example.test\" = [\"127.0.0.1\"]\n{extra}",
            ca = origin.ca_file.as_ref().unwrap().display(),
            users = users(dir.path()).display(),
        )
    };
    let url = format!("https://www.example.test:{port}/");
    let through = |proxy: &TestProxy, trust: &Path| {
        let (proxy_url, trust, url) = (proxy.url(), trust.display().to_string(), url.clone());
        async move {
            curl(&[
                "-x",
                &proxy_url,
                "-U",
                "alice:secret",
                "--proxy-header",
                &format!("User-Agent: {OUTLOOK_UA}"),
                "-A",
                OUTLOOK_UA,
                "--cacert",
                &trust,
                &url,
            ])
            .await
        }
    };

    // Default: inspected, so a client trusting only the proxy's CA gets through.
    let proxy = TestProxy::start(&config(""));
    let r = through(&proxy, &proxy.dir.path().join("data/ca.pem")).await;
    assert_eq!(r.status, 200, "{r:?}\n{}", proxy.stderr());
    let log = proxy.access_log(2).join("\n");
    assert!(
        log.lines().any(|l| l.contains("CONNECT www.example.test:")
            && l.contains(" alice ")
            && l.ends_with(" inspect/outlook:unknown-host-ua")),
        "{log}"
    );

    // `tunnel` stays available, as an explicit choice: the origin's own certificate.
    let proxy = TestProxy::start(&config(
        "[policy.outlook]\nunknown_host_from_outlook_ua = \"tunnel\"\n",
    ));
    let r = through(&proxy, origin.ca_file.as_ref().unwrap()).await;
    assert_eq!(r.status, 200, "{r:?}\n{}", proxy.stderr());
}

/// Every `auth:` line of `portcullis policy explain` for `url` (and `--sni`).
fn explained_auth(config: &Path, url: &str, sni: Option<&str>) -> (Vec<String>, String) {
    let mut cmd = Command::new(portcullis_bin());
    cmd.args(["policy", "explain", "--config"])
        .arg(config)
        .args(["--url", url]);
    if let Some(sni) = sni {
        cmd.args(["--sni", sni]);
    }
    let out = cmd.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("auth:"))
        .map(|v| v.trim().to_owned())
        .collect();
    (lines, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_explain_shows_the_authentication_the_proxy_applies() {
    let dir = tempfile::tempdir().unwrap();
    let origin = TestOrigin::https_for(&["outlook.office365.com", "www.exempt.test"]).await;
    let port = origin.addr.port();
    let config = format!(
        "[server]\nconnect_ports = [{port}]\n\
         [tls]\nupstream_ca_file = \"{ca}\"\n\
         [auth]\nschemes = [\"basic\"]\nhtpasswd = \"{users}\"\n\
         [[policy.rules]]\nname = \"exempt-lab\"\nhost = \"*.exempt.test\"\naction = \"inspect\"\nauth = \"exempt\"\n\
         [resolve]\n\"outlook.office365.com\" = [\"127.0.0.1\"]\n\"www.exempt.test\" = [\"127.0.0.1\"]\n",
        ca = origin.ca_file.as_ref().unwrap().display(),
        users = users(dir.path()).display(),
    );
    let proxy = TestProxy::start(&config);
    let config_file = proxy.config_path();

    let cases = [
        // A bare IP: credentials are asked for whatever the SNI later says.
        (format!("127.0.0.1:{port}"), Some("outlook.office365.com")),
        (format!("127.0.0.1:{port}"), Some("www.exempt.test")),
        (format!("outlook.office365.com:{port}"), None),
        (format!("www.exempt.test:{port}"), None),
    ];
    for (target, sni) in cases {
        let status = connect_without_credentials(&proxy, &target).await;
        let applied = if status.starts_with("HTTP/1.1 407") {
            "Required"
        } else {
            assert!(status.starts_with("HTTP/1.1 200"), "{target}: {status}");
            "Exempt"
        };
        let (shown, text) = explained_auth(&config_file, &format!("https://{target}/"), sni);
        assert!(!shown.is_empty(), "{text}");
        for auth in &shown {
            assert!(
                auth.starts_with(applied),
                "{target} (SNI {sni:?}): the proxy applies {applied}, explain says {auth}:\n{text}"
            );
        }
    }
}
