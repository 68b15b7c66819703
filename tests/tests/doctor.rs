//! `portcullis doctor` against a lab: the real binary, a real MIT KDC, a TLS origin standing in
//! for Microsoft 365 under its real names (through `[resolve]`) on port 443 of a loopback
//! address of its own, and the proxy running. A healthy lab passes every check; each broken
//! link (the KDC's clock, a keytab without the SPN, a rule that inspects Outlook, an expired
//! CA) makes exactly its own check fail, with the fix.
//!
//! The origin listens on port 443 (the doctor checks what Outlook uses), which needs root;
//! without root the tests skip unless `PORTCULLIS_REQUIRE_NETNS=1` (set by `./dev.sh test` as
//! root). The KDC tools and `faketime` follow `PORTCULLIS_REQUIRE_KDC`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use portcullis_e2e::kdc::{self, Kdc};
use portcullis_e2e::{htpasswd, portcullis_bin, TestProxy};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The names the doctor checks, plus its "ordinary site", all served by the lab origin.
const NAMES: [&str; 5] = [
    "outlook.office365.com",
    "autodiscover-s.outlook.com",
    "login.microsoftonline.com",
    "login.windows.net",
    "www.example.com",
];
const M365_LIST: &str = r#"[{"id":1,"serviceArea":"Exchange","urls":["outlook.office365.com"],"tcpPorts":"443","category":"Optimize","required":true}]"#;

struct Lab {
    kdc: Kdc,
    proxy: TestProxy,
    dir: tempfile::TempDir,
    /// Everything of the config but the keytab and extra rules.
    base: String,
    _origin: tokio::task::JoinHandle<()>,
}

/// A loopback address of this test's own, so that parallel tests can each have port 443.
fn unique_loopback() -> String {
    static NEXT: AtomicU8 = AtomicU8::new(1);
    format!(
        "127.77.{}.{}",
        std::process::id() % 250,
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A TLS origin on `ip:443` with a certificate for [`NAMES`]; `None` when port 443 cannot be
/// bound (not root) and the environment does not require it.
async fn origin(ip: &str, dir: &Path) -> Option<(PathBuf, tokio::task::JoinHandle<()>)> {
    let listener = match tokio::net::TcpListener::bind((ip, 443)).await {
        Ok(l) => l,
        Err(e) => {
            assert!(
                std::env::var_os("PORTCULLIS_REQUIRE_NETNS").is_none(),
                "cannot bind {ip}:443 ({e}) but PORTCULLIS_REQUIRE_NETNS is set"
            );
            eprintln!("SKIP: cannot bind {ip}:443 ({e}); run as root");
            return None;
        }
    };
    let (ca_pem, chain, key) = portcullis_e2e::tls::origin_certificate(&NAMES);
    let ca_file = dir.join("origin-ca.pem");
    std::fs::write(&ca_file, ca_pem).unwrap();
    let acceptor = portcullis_e2e::tls::acceptor(chain, key);
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = [0u8; 4096];
                if matches!(tls.read(&mut buf).await, Ok(n) if n > 0) {
                    let _ = tls
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n")
                        .await;
                }
            });
        }
    });
    Some((ca_file, task))
}

impl Lab {
    /// The healthy lab, or `None` when it cannot be built here (see the module docs).
    async fn start() -> Option<Lab> {
        if !kdc::available() {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let ip = unique_loopback();
        let (origin_ca, task) = origin(&ip, dir.path()).await?;
        let kdc = Kdc::start(&["proxy.lab.test"]);
        let users = dir.path().join("htpasswd");
        htpasswd(&users, "-B", "alice", "alice-pw");
        std::fs::write(dir.path().join("password"), "alice-pw\n").unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(data.join("m365")).unwrap();
        std::fs::write(data.join("m365/endpoints.json"), M365_LIST).unwrap();
        std::fs::write(data.join("m365/version"), "2026110100\n").unwrap();
        let resolve: String = NAMES
            .iter()
            .map(|n| format!("\"{n}\" = [\"{ip}\"]\n"))
            .collect();
        let base = format!(
            "[server]\ndata_dir = \"{data}\"\n\
             [tls]\nupstream_ca_file = \"{ca}\"\n\
             [policy.pac]\nproxy = \"proxy.lab.test:3128\"\n[m365]\nfetch = false\n\
             [resolve]\n{resolve}",
            data = data.display(),
            ca = origin_ca.display(),
        );
        let auth = auth_section(&users, &kdc.keytab());
        let proxy = TestProxy::start_with_env(&format!("{auth}{base}"), &env(&kdc));
        Some(Lab {
            kdc,
            proxy,
            dir,
            base,
            _origin: task,
        })
    }

    /// The proxy's config file with `extra` TOML (and another keytab, if given).
    fn config(&self, extra: &str, keytab: Option<&Path>) -> String {
        let keytab = keytab.map_or_else(|| self.kdc.keytab(), Path::to_owned);
        format!(
            "{}{extra}{}",
            auth_section(&self.dir.path().join("htpasswd"), &keytab),
            self.base
        )
    }

    /// Runs `portcullis doctor --json` (under `faketime OFFSET` when given) with `config`.
    fn doctor(&self, config: &Path, faketime: Option<&str>) -> (i32, Value) {
        let password = self.dir.path().join("password");
        let proxy = self.proxy.url();
        let args = [
            "doctor".as_ref(),
            "--config".as_ref(),
            config.as_os_str(),
            "--proxy".as_ref(),
            proxy.as_ref(),
            "--user".as_ref(),
            "alice".as_ref(),
            "--password-file".as_ref(),
            password.as_os_str(),
            "--json".as_ref(),
        ];
        let mut cmd = match faketime {
            Some(offset) => {
                let mut c = Command::new("faketime");
                c.args(["-f", offset]).arg(portcullis_bin());
                // Only the wall clock moves; timers keep working.
                c.env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
                c
            }
            None => Command::new(portcullis_bin()),
        };
        let out = cmd.args(args).envs(env(&self.kdc)).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let report: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (out.status.code().unwrap_or(-1), report)
    }
}

fn auth_section(users: &Path, keytab: &Path) -> String {
    format!(
        "[auth]\nschemes = [\"negotiate\", \"basic\"]\nhtpasswd = \"{}\"\n\
         [auth.negotiate]\nkeytab = \"{}\"\n",
        users.display(),
        keytab.display()
    )
}

fn env(kdc: &Kdc) -> Vec<(&'static str, String)> {
    vec![
        ("KRB5_CONFIG", kdc.krb5_conf().display().to_string()),
        ("KRB5RCACHEDIR", kdc.rcache().display().to_string()),
    ]
}

/// `(family, name, status, fix)` of every check that is neither PASS nor SKIP.
fn findings(report: &Value) -> Vec<(String, String, String, String)> {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["status"] != "pass" && c["status"] != "skip")
        .map(|c| {
            let s = |k: &str| c[k].as_str().unwrap_or_default().to_owned();
            (
                s("family"),
                format!("{}: {}", s("name"), s("finding")),
                s("status"),
                s("fix"),
            )
        })
        .collect()
}

/// Exactly one check is not PASS/SKIP: a FAIL of `family` whose name and finding contain
/// `name` and whose fix contains `fix`; exit status 1.
fn only_failure(code: i32, report: &Value, family: &str, name: &str, fix: &str) {
    let found = findings(report);
    assert_eq!(found.len(), 1, "expected one failure, got {found:#?}");
    let (f, n, status, x) = &found[0];
    assert_eq!(
        (f.as_str(), status.as_str()),
        (family, "fail"),
        "{found:#?}"
    );
    assert!(n.contains(name), "{n}");
    assert!(x.contains(fix), "fix: {x}");
    assert_eq!(code, 1);
}

fn write(lab: &Lab, name: &str, text: &str) -> PathBuf {
    let path = lab.dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_lab_passes_everything_also_at_the_admin_endpoint() {
    let Some(lab) = Lab::start().await else {
        return;
    };
    let (code, report) = lab.doctor(&lab.proxy.config_path(), None);
    assert_eq!(findings(&report), [], "{report:#}");
    assert_eq!(code, 0);
    let names: Vec<&str> = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["status"] == "pass")
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    for expected in [
        "keytab has HTTP/proxy.lab.test@LAB.TEST",
        "HTTP/proxy.lab.test@LAB.TEST: enctypes the KDC uses",
        "clock skew to the KDC",
        "outlook.office365.com:443 from this host",
        "CONNECT outlook.office365.com:443 without credentials",
        "CONNECT www.example.com:443 with credentials",
        "PAC file served",
    ] {
        assert!(
            names.contains(&expected),
            "{expected} not passed: {names:#?}"
        );
    }

    // The admin endpoint runs the same checks (without credentials) and caches them.
    let url = format!("{}/doctor", lab.proxy.admin_url());
    let first = portcullis_e2e::curl(&["-s", &url]).await.body_text();
    let admin: Value = serde_json::from_str(&first).unwrap_or_else(|e| panic!("{e}: {first}"));
    assert_eq!(findings(&admin), [], "{admin:#}");
    assert_eq!(admin["summary"]["fail"], 0);
    let second = portcullis_e2e::curl(&["-s", &url]).await.body_text();
    assert_eq!(
        first, second,
        "a second call within a minute is served from the cache"
    );
    let info = portcullis_e2e::curl(&["-s", &lab.proxy.url()])
        .await
        .body_text();
    assert!(info.contains("self-test of"), "{info}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kdc_clock_ten_minutes_off_fails_only_the_clock_check() {
    let Some(lab) = Lab::start().await else {
        return;
    };
    let has_faketime = Command::new("faketime").arg("--version").output().is_ok();
    if !has_faketime {
        assert!(
            std::env::var_os("PORTCULLIS_REQUIRE_KDC").is_none(),
            "faketime is missing but PORTCULLIS_REQUIRE_KDC is set"
        );
        eprintln!("SKIP: faketime (Debian package faketime) is not installed");
        return;
    }
    // This host's clock runs 10 minutes behind the KDC's.
    let (code, report) = lab.doctor(&lab.proxy.config_path(), Some("-10m"));
    only_failure(
        code,
        &report,
        "kerberos",
        "clock skew to the KDC: the KDC's clock is",
        "synchronise this host's clock",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keytab_without_the_spn_fails_only_that_check() {
    let Some(lab) = Lab::start().await else {
        return;
    };
    let other = lab.dir.path().join("other.keytab");
    let out = Command::new("kadmin.local")
        .args(["-q", "addprinc -randkey HTTP/other.lab.test"])
        .env("KRB5_CONFIG", lab.kdc.krb5_conf())
        .env("KRB5_KDC_PROFILE", lab.kdc.dir.path().join("kdc.conf"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let out = Command::new("kadmin.local")
        .args([
            "-q",
            &format!("ktadd -k {} HTTP/other.lab.test", other.display()),
        ])
        .env("KRB5_CONFIG", lab.kdc.krb5_conf())
        .env("KRB5_KDC_PROFILE", lab.kdc.dir.path().join("kdc.conf"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let config = write(&lab, "other.toml", &lab.config("", Some(&other)));
    let (code, report) = lab.doctor(&config, None);
    only_failure(
        code,
        &report,
        "kerberos",
        "keytab has HTTP/proxy.lab.test@LAB.TEST: clients ask for HTTP/proxy.lab.test@LAB.TEST, \
         the keytab holds only HTTP/other.lab.test@LAB.TEST",
        "setspn -S HTTP/proxy.lab.test",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_that_inspects_outlook_fails_only_its_policy_check() {
    let Some(lab) = Lab::start().await else {
        return;
    };
    let rule = "[[policy.rules]]\nname = \"inspect-exo\"\nhost = \"outlook.office365.com\"\n\
                action = \"inspect\"\n";
    // The running proxy gets the rule too: the doctor compares it with its config.
    lab.proxy.rewrite_config(&lab.config(rule, None));
    let reload = portcullis_e2e::curl(&[
        "-s",
        "-X",
        "POST",
        &format!("{}/reload", lab.proxy.admin_url()),
    ])
    .await
    .body_text();
    assert!(reload.starts_with("reloaded"), "{reload}");
    let (code, report) = lab.doctor(&lab.proxy.config_path(), None);
    only_failure(
        code,
        &report,
        "policy",
        "outlook.office365.com (MAPI, EWS, OAB, ActiveSync): inspect, auth required",
        "rule \"inspect-exo\" (policy.rules[0]) overrides the Outlook profile",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_ca_fails_only_the_ca_validity_check() {
    let Some(lab) = Lab::start().await else {
        return;
    };
    // The running proxy keeps the CA it started with; the one on disk is what a restart loads.
    let data = lab.dir.path().join("data");
    portcullis_e2e::tls::short_lived_ca(&data, Duration::from_secs(1));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (code, report) = lab.doctor(&lab.proxy.config_path(), None);
    only_failure(
        code,
        &report,
        "ca",
        "validity:",
        "portcullis ca init --force",
    );
}

#[test]
fn usage_errors_exit_2_and_an_invalid_config_fails_its_check() {
    let dir = tempfile::tempdir().unwrap();
    let status = |args: &[&str]| {
        Command::new(portcullis_bin())
            .args(args)
            .output()
            .unwrap()
            .status
            .code()
    };
    assert_eq!(status(&["doctor", "--user", "alice"]), Some(2));
    assert_eq!(
        status(&["doctor", "--proxy", "socks5://127.0.0.1:1"]),
        Some(2)
    );
    let missing = dir.path().join("missing");
    let missing = missing.display().to_string();
    let pw = ["doctor", "--user", "a", "--password-file", &missing];
    assert_eq!(status(&pw), Some(2));

    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "[server]\nlisten = \"not a list\"\n").unwrap();
    let out = Command::new(portcullis_bin())
        .args(["doctor", "--config", &config.display().to_string()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.starts_with("FAIL config"), "{text}");
    assert!(text.contains("server.listen"), "{text}");
    assert!(text.contains("fix: "), "{text}");
}

/// In a network namespace of its own: with `[netfilter]` in the config, the check fails until
/// `netfilter apply` loaded the rules, then passes; a config changed since fails it again.
#[test]
fn the_netfilter_check_compares_the_live_table_with_the_render() {
    let probe = Command::new("unshare").args(["-n", "true"]).status();
    if !probe.is_ok_and(|s| s.success()) {
        assert!(
            std::env::var_os("PORTCULLIS_REQUIRE_NETNS").is_none(),
            "`unshare -n` failed but PORTCULLIS_REQUIRE_NETNS is set"
        );
        eprintln!("SKIP: no network namespaces here (run as root)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("nf.toml");
    let text = |extra: &str| {
        format!(
            "[server]\nlisten = [\"127.0.0.1:3128\"]\ndata_dir = \"{}\"\n[m365]\nfetch = false\n\
             [netfilter]\naccept_icmp = false\n{extra}",
            dir.path().join("data").display()
        )
    };
    std::fs::write(&config, text("")).unwrap();
    let changed = dir.path().join("changed.toml");
    std::fs::write(&changed, text("lan_networks = [\"10.1.0.0/16\"]\n")).unwrap();
    let bin = portcullis_bin().display().to_string();
    let script = format!(
        "{bin} doctor --config {c}; echo =; {bin} netfilter apply --config {c} 2>/dev/null; \
         {bin} doctor --config {c}; echo =; {bin} doctor --config {n}",
        c = config.display(),
        n = changed.display()
    );
    let out = Command::new("unshare")
        .args(["-n", "sh", "-c", &script])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text
        .split("\n=\n")
        .map(|part| {
            part.lines()
                .find(|l| l.contains(" netfilter "))
                .unwrap_or_default()
        })
        .collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(
        lines[0].starts_with("FAIL netfilter") && lines[0].contains("not loaded"),
        "{text}"
    );
    assert!(lines[1].starts_with("PASS netfilter"), "{text}");
    assert!(
        lines[2].starts_with("FAIL netfilter") && lines[2].contains("not loaded, e.g."),
        "{text}"
    );
    assert!(
        text.contains("fix: the config changed since the rules were applied"),
        "{text}"
    );
}
