//! What the Outlook profile exempts from authentication and inspection, and no more:
//! `autodiscover.*` names only when they are Microsoft's or an accepted domain's, Outlook's
//! User-Agent never as a way around inspection, and `policy explain` telling the same story as
//! the proxy.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use portcullis_e2e::{curl, htpasswd, portcullis_bin, raw, TestOrigin, TestProxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const OUTLOOK_UA: &str =
    "Microsoft Office/16.0 (Windows NT 10.0; Microsoft Outlook 16.0.17328; Pro)";

/// A plain HTTP server on `ip` answering every request head with `200 ok` (a stand-in for an
/// Autodiscover endpoint, reached directly or through a tunnel).
async fn ok_server(ip: &str) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind((ip, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                    while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                        seen.drain(..end + 4);
                        let reply = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n";
                        if stream.write_all(reply).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    (addr, task)
}

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

/// Writes a Microsoft 365 endpoint list whose Exchange Optimize set has `ips`, as
/// `portcullis m365 import` stores it in `data_dir`.
fn import_feed(data_dir: &Path, ips: &str) {
    let file = data_dir.with_extension("endpoints.json");
    std::fs::write(
        &file,
        format!(
            r#"[{{"id":1,"serviceArea":"Exchange","urls":["outlook.office365.com"],"ips":["{ips}"],"tcpPorts":"443","category":"Optimize","required":true}}]"#
        ),
    )
    .unwrap();
    let out = Command::new(portcullis_bin())
        .args(["m365", "import"])
        .arg(&file)
        .arg("--data-dir")
        .arg(data_dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

fn users(dir: &Path) -> PathBuf {
    let file = dir.join("users");
    htpasswd(&file, "-m", "alice", "secret");
    file
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autodiscover_names_are_exempt_only_when_they_are_microsofts_or_ours() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // The lab's "Microsoft 365 network": the endpoint list says 127.0.0.2 is Exchange Online.
    import_feed(&data, "127.0.0.2/32");
    let (m365, _m365_task) = ok_server("127.0.0.2").await;
    let (other, _other_task) = ok_server("127.0.0.1").await;
    let proxy = TestProxy::start(&format!(
        "[server]\nconnect_ports = [{m365p}, {otherp}]\ndata_dir = \"{data}\"\n\
         [auth]\nschemes = [\"basic\"]\nhtpasswd = \"{users}\"\n\
         [policy.outlook]\naccepted_domains = [\"corp.example\"]\n\
         [resolve]\n\
         \"autodiscover.attacker.example\" = [\"127.0.0.1\"]\n\
         \"autodiscover.mixed.example\" = [\"127.0.0.2\", \"127.0.0.1\"]\n\
         \"autodiscover.contoso.example\" = [\"127.0.0.2\"]\n\
         \"autodiscover.corp.example\" = [\"127.0.0.1\"]\n\
         \"autodiscover.office365.com\" = [\"127.0.0.1\"]\n",
        m365p = m365.port(),
        otherp = other.port(),
        data = data.display(),
        users = users(dir.path()).display(),
    ));

    // Any other autodiscover.* name resolving outside Microsoft 365: credentials first, over
    // CONNECT and plain HTTP alike, even if only one of its addresses is outside.
    for target in [
        format!("autodiscover.attacker.example:{}", other.port()),
        format!("autodiscover.mixed.example:{}", m365.port()),
    ] {
        let status = connect_without_credentials(&proxy, &target).await;
        assert!(status.starts_with("HTTP/1.1 407"), "{target}: {status}");
        let plain = format!(
            "GET http://{target}/autodiscover/autodiscover.xml HTTP/1.1\r\nHost: {target}\r\n\r\n"
        );
        let reply = raw(proxy.addr, plain.as_bytes(), Duration::from_millis(500)).await;
        assert!(reply.starts_with("HTTP/1.1 407"), "{target}: {reply}");
    }

    // A name whose every address is a Microsoft 365 address: tunnelled and answered without
    // credentials, over CONNECT and plain HTTP.
    let target = format!("autodiscover.contoso.example:{}", m365.port());
    let status = connect_without_credentials(&proxy, &target).await;
    assert!(
        status.starts_with("HTTP/1.1 200") && status.ends_with("ok\n"),
        "{status}\n{}",
        proxy.stderr()
    );
    let r = curl(&[
        "-x",
        &proxy.url(),
        &format!("http://{target}/autodiscover/autodiscover.xml"),
    ])
    .await;
    assert_eq!((r.status, r.body_text().as_str()), (200, "ok\n"), "{r:?}");

    // Microsoft's own Autodiscover host and an accepted domain's need no resolution at all.
    for name in ["autodiscover.office365.com", "autodiscover.corp.example"] {
        let target = format!("{name}:{}", other.port());
        let status = connect_without_credentials(&proxy, &target).await;
        assert!(status.starts_with("HTTP/1.1 200"), "{target}: {status}");
    }

    // With credentials the attacker's name is an ordinary, inspected destination.
    let r = curl(&[
        "-x",
        &proxy.url(),
        "-U",
        "alice:secret",
        &format!(
            "http://autodiscover.attacker.example:{}/autodiscover/autodiscover.xml",
            other.port()
        ),
    ])
    .await;
    assert_eq!(r.status, 200, "{r:?}");

    let log = proxy.access_log(9).join("\n");
    assert!(
        log.lines().any(|l| l.contains("TCP_TUNNEL/200")
            && l.contains("CONNECT autodiscover.contoso.example:")
            && l.ends_with(" tunnel/outlook:autodiscover")),
        "{log}"
    );

    // `policy explain` with the proxy's config looks the names up as the proxy does and says
    // which way it went and why.
    let explain = |url: &str| {
        let out = Command::new(portcullis_bin())
            .args(["policy", "explain", "--config"])
            .arg(proxy.config_path())
            .args(["--url", url])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let attacker = explain(&format!(
        "https://autodiscover.attacker.example:{}/",
        other.port()
    ));
    assert!(
        attacker.contains("rule:     default")
            && attacker.contains("auth:     Required")
            && attacker.contains("127.0.0.1 outside Microsoft 365 networks"),
        "{attacker}"
    );
    let contoso = explain(&format!(
        "http://autodiscover.contoso.example:{}/",
        m365.port()
    ));
    assert!(
        contoso.contains("rule:     outlook:autodiscover")
            && contoso.contains("auth:     Exempt")
            && contoso.contains("all in Microsoft 365 networks"),
        "{contoso}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("autodiscover.attacker.example")
                && l.contains(" alice ")
                && l.ends_with("/default")),
        "{log}"
    );
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
