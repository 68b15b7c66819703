//! A real browser through interception: headless Chromium trusting the proxy CA in its NSS
//! database loads an HTTPS page from a test origin (recipe 4 of shared/recipes/LAB.md).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

use portcullis_e2e::tls::OriginCert;
use portcullis_e2e::{TestOrigin, TestProxy};

fn chromium_available() -> bool {
    let ok = Path::new("/usr/bin/chromium").exists()
        && Command::new("certutil").arg("-H").output().is_ok();
    if !ok {
        assert!(
            std::env::var_os("PORTCULLIS_REQUIRE_CHROMIUM").is_none(),
            "chromium / certutil (Debian chromium, libnss3-tools) missing but PORTCULLIS_REQUIRE_CHROMIUM is set"
        );
        eprintln!("SKIP: Debian packages chromium and libnss3-tools are not installed");
    }
    ok
}

/// Runs `chromium --headless --dump-dom URL` through `proxy` with `home` as $HOME (its NSS
/// database decides what is trusted). Returns (DOM, stderr).
fn dump_dom(proxy: &TestProxy, home: &Path, url: &str) -> (String, String) {
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new("timeout")
        .arg("60")
        .arg("/usr/bin/chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--disable-quic",
            "--disable-features=NetworkTimeServiceQuerying",
            "--gaia-url=http://127.0.0.1:9",
            "--component-updater=url-source=http://127.0.0.1:9/",
        ])
        .arg(format!("--proxy-server=http://{}", proxy.addr))
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("--dump-dom")
        .arg(url)
        .env("HOME", home)
        .output()
        .unwrap();
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_loads_an_inspected_https_page() {
    if !chromium_available() {
        return;
    }
    let origin = TestOrigin::https_with(OriginCert::Good, true).await;
    let port = origin.addr.port();
    // Hermetic: the proxy knows only the lab name, so Chromium's stray background requests
    // fail inside the proxy instead of reaching any resolver.
    let proxy = TestProxy::start(&format!(
        "[server]\nconnect_ports = [{port}]\n[tls]\nupstream_ca_file = \"{}\"\n\
         [upstream]\nsystem_resolver = false\n[resolve]\n\"origin.lab.test\" = [\"127.0.0.1\"]\n",
        origin.ca_file.as_ref().unwrap().display()
    ));
    let url = format!("https://origin.lab.test:{port}/");

    let trusting = tempfile::tempdir().unwrap();
    let nssdb = trusting.path().join(".pki/nssdb");
    std::fs::create_dir_all(&nssdb).unwrap();
    let db = format!("sql:{}", nssdb.display());
    let ca = proxy.dir.path().join("data/ca.pem");
    assert!(Command::new("certutil")
        .args(["-d", &db, "-N", "--empty-password"])
        .status()
        .unwrap()
        .success());
    assert!(Command::new("certutil")
        .args(["-d", &db, "-A", "-t", "C,,", "-n", "portcullis-test", "-i"])
        .arg(&ca)
        .status()
        .unwrap()
        .success());

    let (dom, stderr) = dump_dom(&proxy, trusting.path(), &url);
    assert!(
        dom.contains("hello from origin"),
        "DOM: {dom}\nchromium: {}\nproxy: {}",
        tail(&stderr),
        proxy.stderr()
    );
    let log = proxy.access_log(2);
    assert!(
        log.iter()
            .any(|l| l.contains("TCP_MISS/200") && l.contains(&format!("GET {url}"))),
        "the page was not fetched through interception: {log:?}"
    );

    // Negative control: a browser that does not trust the proxy CA refuses the page, which
    // shows the certificate really came from the proxy.
    let untrusting = tempfile::tempdir().unwrap();
    let (dom, stderr) = dump_dom(&proxy, untrusting.path(), &url);
    assert!(
        !dom.contains("hello from origin"),
        "an untrusting browser loaded the page"
    );
    assert!(
        stderr.contains("ERR_CERT_AUTHORITY_INVALID"),
        "{}",
        tail(&stderr)
    );
}

fn tail(s: &str) -> String {
    s.lines()
        .rev()
        .take(15)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
        .join("\n")
}
