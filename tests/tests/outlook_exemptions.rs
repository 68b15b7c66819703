//! What the Outlook profile exempts from authentication and inspection, and no more:
//! `autodiscover.*` names only when they are Microsoft's or an accepted domain's, Outlook's
//! User-Agent never as a way around inspection, and `policy explain` telling the same story as
//! the proxy.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use portcullis_e2e::{curl, htpasswd, TestOrigin, TestProxy};

const OUTLOOK_UA: &str =
    "Microsoft Office/16.0 (Windows NT 10.0; Microsoft Outlook 16.0.17328; Pro)";

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
