//! A real browser through interception: headless Chromium trusting the proxy CA in its NSS
//! database loads an HTTPS page from a test origin (recipe 4 of shared/recipes/LAB.md); and the
//! proxy's own information page as Chromium renders it (a screenshot kept for a look by eye).
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

/// Headless Chromium without background traffic (shared/recipes/LAB.md, "Chromium flags").
const BASE_FLAGS: [&str; 11] = [
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
];

/// Runs `chromium --headless --dump-dom URL` through `proxy` with `home` as $HOME (its NSS
/// database decides what is trusted). Returns (DOM, stderr).
fn dump_dom(proxy: &TestProxy, home: &Path, url: &str) -> (String, String) {
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new("timeout")
        .arg("60")
        .arg("/usr/bin/chromium")
        .args(BASE_FLAGS)
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

/// The proxy's own page at `/`, as a person sees it in a real browser: styled without external
/// assets, linking the CA downloads and the PAC file, showing the CA's fingerprint. The
/// screenshot is kept and its path printed, for a look by eye.
#[test]
fn chromium_renders_the_info_page() {
    if !chromium_available() {
        return;
    }
    let proxy = TestProxy::start("");
    let url = format!("http://{}/", proxy.addr);
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let png = shots.join("info-page.png");
    let _ = std::fs::remove_file(&png);
    let profile = tempfile::tempdir().unwrap();
    let chromium = |extra: &[&str]| {
        Command::new("timeout")
            .arg("60")
            .arg("/usr/bin/chromium")
            .args(BASE_FLAGS)
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .args(extra)
            .arg(&url)
            .output()
            .unwrap()
    };
    // A loopback page is fetched directly (Chromium never proxies loopback): the proxy answers
    // the origin-form request itself.
    let shot = chromium(&[
        "--window-size=1000,1700",
        "--hide-scrollbars",
        &format!("--screenshot={}", png.display()),
    ]);
    eprintln!("screenshot of the info page: {}", png.display());
    let image = std::fs::read(&png).unwrap_or_else(|e| {
        panic!(
            "no screenshot ({e}); chromium: {}",
            tail(&String::from_utf8_lossy(&shot.stderr))
        )
    });
    assert_eq!(&image[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
    let width = u32::from_be_bytes(image[16..20].try_into().unwrap());
    let height = u32::from_be_bytes(image[20..24].try_into().unwrap());
    assert_eq!((width, height), (1000, 1700));
    // A blank or unstyled white page compresses to a few KiB; text, buttons and panels do not.
    assert!(
        image.len() > 40_000,
        "{} bytes: is the page empty?",
        image.len()
    );

    let dom = chromium(&["--dump-dom"]);
    let dom = String::from_utf8_lossy(&dom.stdout);
    let fingerprint = {
        let out = Command::new("openssl")
            .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
            .arg(proxy.dir.path().join("data/ca.pem"))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.trim().rsplit('=').next().unwrap().to_owned()
    };
    assert!(
        dom.contains(&fingerprint),
        "fingerprint {fingerprint} missing:\n{dom}"
    );
    for link in [
        "href=\"/ca.pem\"",
        "href=\"/ca.der\"",
        "href=\"/proxy.pac\"",
    ] {
        assert!(dom.contains(link), "{link} missing:\n{dom}");
    }
    for os in ["Windows", "macOS", "Linux", "Firefox"] {
        assert!(
            dom.contains(&format!("<h3>{os}</h3>")),
            "{os} steps missing"
        );
    }
    assert!(dom.contains("<style>"), "unstyled:\n{dom}");
    // Nothing loaded from elsewhere: the page must work before the device can use the proxy.
    for external in ["src=", "<link", "@import", "url("] {
        assert!(
            !dom.contains(external),
            "external asset ({external}):\n{dom}"
        );
    }
    let log = proxy.access_log(2);
    assert!(
        log.iter()
            .any(|l| l.contains("NONE/200") && l.contains("GET http://127.0.0.1:")),
        "{log:?}"
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
