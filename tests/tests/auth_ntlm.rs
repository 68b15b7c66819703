//! NTLM proxy authentication through GSS-API's NTLMSSP mechanism (gss-ntlmssp), with users
//! from an `NTLM_USER_FILE` (shared/recipes/NTLM.md): curl `--proxy-ntlm`, and a GSS-API
//! NTLM initiator (python3-gssapi) offering NTLM inside `Negotiate` as Windows does when it
//! has no Kerberos ticket for the proxy.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

use portcullis_e2e::kdc::{self, Kdc};
use portcullis_e2e::{curl, TestOrigin, TestProxy};

/// True when gss-ntlmssp is registered with GSS-API and python3-gssapi is there. Tests skip
/// only where they are not; `PORTCULLIS_REQUIRE_NTLM=1` (set by `./dev.sh test`) makes a skip
/// a failure.
fn available() -> bool {
    let mech = Path::new("/etc/gss/mech.d/mech.ntlmssp.conf").exists();
    let python = Command::new("/usr/bin/python3")
        .args(["-c", "import gssapi"])
        .status()
        .is_ok_and(|s| s.success());
    if !(mech && python) {
        assert!(
            std::env::var_os("PORTCULLIS_REQUIRE_NTLM").is_none(),
            "gss-ntlmssp or python3-gssapi is missing but PORTCULLIS_REQUIRE_NTLM is set"
        );
        eprintln!("SKIP: gss-ntlmssp and python3-gssapi not installed");
    }
    mech && python
}

fn user_file(dir: &Path) -> String {
    let path = dir.join("ntlm.users");
    std::fs::write(&path, "LAB:alice:alice-pw\nLAB:bob:bob-pw\n").unwrap();
    path.display().to_string()
}

/// A GSS-API NTLM initiator speaking `scheme` (`NTLM` or `Negotiate`) to the proxy on one
/// connection; prints the final status and the origin's body.
const CLIENT: &str = r#"
import base64, gssapi, gssapi.raw as gr, http.client, sys
NTLM = gssapi.OID.from_int_seq("1.3.6.1.4.1.311.2.2.10")
SPNEGO = gssapi.OID.from_int_seq("1.3.6.1.5.5.2")
port, scheme, user, pw, url = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4].encode(), sys.argv[5]
# `Negotiate+spnego`: NTLM wrapped in SPNEGO (a NegTokenInit offering only NTLMSSP).
mech = SPNEGO if scheme.endswith("+spnego") else NTLM
scheme = scheme.split("+")[0]
cred = gr.acquire_cred_with_password(gssapi.Name(user, gssapi.NameType.user), pw, usage="initiate", mechs=[NTLM, SPNEGO] if mech == SPNEGO else [NTLM]).creds
ctx = gssapi.SecurityContext(name=gssapi.Name("HTTP@127.0.0.1", gssapi.NameType.hostbased_service), creds=cred, mech=mech, usage="initiate")
c = http.client.HTTPConnection("127.0.0.1", port); tok = ctx.step()
while True:
    c.request("GET", url, headers={"Proxy-Authorization": scheme + " " + base64.b64encode(tok).decode()})
    r = c.getresponse(); body = r.read(); ch = r.getheader("Proxy-Authenticate", "")
    if r.status != 407 or not ch.startswith(scheme + " ") or ctx.complete: break
    tok = ctx.step(base64.b64decode(ch[len(scheme) + 1:]))
print(r.status, body.decode().strip())
"#;

fn gss_client(
    dir: &Path,
    proxy: &TestProxy,
    scheme: &str,
    user: &str,
    pw: &str,
    url: &str,
) -> String {
    let script = dir.join("client.py");
    std::fs::write(&script, CLIENT).unwrap();
    let out = Command::new("/usr/bin/python3")
        .arg(&script)
        .args([&proxy.addr.port().to_string(), scheme, user, pw, url])
        .output()
        .unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    )
}

async fn curl_ntlm(proxy: &TestProxy, credentials: &str, extra: &[&str], url: &str) -> u16 {
    let proxy_url = proxy.url();
    let mut args = vec!["--proxy-ntlm", "-U", credentials, "-x", &proxy_url];
    args.extend_from_slice(extra);
    args.push(url);
    curl(&args).await.status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_ntlm_authenticates_and_groups_apply() {
    if !available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let groups = dir.path().join("htgroup");
    std::fs::write(&groups, "finance: alice\n").unwrap();
    let origin = TestOrigin::http().await;
    let tls_origin = TestOrigin::https().await;
    let proxy = TestProxy::start_with_env(
        &format!(
            "[server]\nconnect_ports = [{}]\n[tls]\ninspect = false\n\
             [auth]\nschemes = [\"ntlm\", \"basic\"]\nhtpasswd = \"/dev/null\"\n\
             [auth.groups]\nsources = [\"file\"]\nfile = \"{}\"\n\
             [[policy.rules]]\nname = \"no-finance\"\npath = \"/finance/\"\ngroup = \"finance\"\naction = \"deny\"\nreason = \"no\"\n",
            tls_origin.addr.port(),
            groups.display()
        ),
        &[("NTLM_USER_FILE", user_file(dir.path()))],
    );
    let page = origin.url("/");
    // The 407 offers the schemes in the configured order.
    let r = curl(&["-x", &proxy.url(), &page]).await;
    assert_eq!(r.status, 407);
    let offered: Vec<&str> = r
        .headers
        .lines()
        .filter_map(|l| {
            l.strip_prefix("proxy-authenticate: ")
                .or_else(|| l.strip_prefix("Proxy-Authenticate: "))
        })
        .collect();
    assert_eq!(offered.len(), 2, "{}", r.headers);
    assert_eq!(offered[0].trim(), "NTLM", "{}", r.headers);
    assert!(offered[1].starts_with("Basic "), "{}", r.headers);

    assert_eq!(
        curl_ntlm(&proxy, "LAB\\alice:alice-pw", &[], &page).await,
        200,
        "{}",
        proxy.stderr()
    );
    assert_eq!(
        curl_ntlm(&proxy, "bob:bob-pw", &[], &page).await,
        200,
        "{}",
        proxy.stderr()
    );
    assert_eq!(curl_ntlm(&proxy, "LAB\\alice:wrong", &[], &page).await, 407);
    assert_eq!(curl_ntlm(&proxy, "LAB\\carol:x", &[], &page).await, 407);
    // A CONNECT tunnel authenticated by NTLM.
    let ca = tls_origin.ca_file.as_ref().unwrap().display().to_string();
    let tunnelled = format!("https://localhost:{}/", tls_origin.addr.port());
    let status = curl_ntlm(
        &proxy,
        "LAB\\bob:bob-pw",
        &["-p", "--cacert", &ca],
        &tunnelled,
    )
    .await;
    assert_eq!(status, 200, "{}", proxy.stderr());
    // `LAB\alice` is the account alice: the group file's finance denies her.
    let denied = curl_ntlm(
        &proxy,
        "LAB\\alice:alice-pw",
        &[],
        &origin.url("/finance/x"),
    )
    .await;
    assert_eq!(denied, 403, "{}", proxy.stderr());

    // 407 without credentials; two legs each for alice, bob, the wrong password, carol, the
    // CONNECT (its line is written when the tunnel ends) and the denied request.
    let log = proxy.access_log(13);
    let joined = log.join("\n");
    assert!(
        log.iter()
            .any(|l| l.contains("TCP_MISS/200") && l.contains(" alice@LAB ")),
        "{joined}"
    );
    assert!(
        log.iter()
            .any(|l| l.contains("TCP_TUNNEL/200") && l.contains(" bob@LAB ")),
        "{joined}"
    );
    assert!(
        log.iter()
            .any(|l| l.contains("TCP_DENIED/403") && l.contains(" alice@LAB ")),
        "{joined}"
    );
    assert!(!log.iter().any(|l| l.contains("carol")), "{joined}");
}

/// NTLM offered inside `Negotiate` (what Windows sends when it has no Kerberos ticket for the
/// proxy) is accepted when `ntlm` is enabled, and refused with the old cause when it is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ntlm_inside_negotiate() {
    if !available() || !kdc::available() {
        return;
    }
    let kdc = Kdc::start(&["localhost"]);
    let dir = tempfile::tempdir().unwrap();
    let origin = TestOrigin::http().await;
    let start = |schemes: &str| {
        TestProxy::start_with_env(
            &format!(
                "[auth]\nschemes = {schemes}\n[auth.negotiate]\nkeytab = \"{}\"\nstrip_realm = true\n",
                kdc.keytab().display()
            ),
            &[
                ("KRB5_CONFIG", kdc.krb5_conf().display().to_string()),
                ("KRB5RCACHEDIR", kdc.rcache().display().to_string()),
                ("NTLM_USER_FILE", user_file(dir.path())),
            ],
        )
    };
    let page = origin.url("/");
    let proxy = start("[\"negotiate\", \"ntlm\"]");
    let out = gss_client(
        dir.path(),
        &proxy,
        "Negotiate",
        "LAB\\alice",
        "alice-pw",
        &page,
    );
    assert!(out.starts_with("200"), "{out}\n{}", proxy.stderr());
    let out = gss_client(
        dir.path(),
        &proxy,
        "Negotiate",
        "LAB\\alice",
        "wrong",
        &page,
    );
    assert!(out.starts_with("407"), "{out}");
    // NTLM wrapped in SPNEGO, settled by the Kerberos acceptor: allowed since `ntlm` is on.
    let out = gss_client(
        dir.path(),
        &proxy,
        "Negotiate+spnego",
        "LAB\\alice",
        "alice-pw",
        &page,
    );
    assert!(out.starts_with("200"), "{out}\n{}", proxy.stderr());
    let out = gss_client(dir.path(), &proxy, "NTLM", "LAB\\bob", "bob-pw", &page);
    assert!(out.starts_with("200"), "{out}\n{}", proxy.stderr());
    let log = proxy.access_log(8);
    assert!(
        log.iter()
            .any(|l| l.contains("TCP_MISS/200") && l.contains(" alice ")),
        "{log:?}"
    );
    assert!(
        log.iter()
            .any(|l| l.contains("TCP_MISS/200") && l.contains(" bob ")),
        "{log:?}"
    );

    let kerberos_only = start("[\"negotiate\"]");
    let out = gss_client(
        dir.path(),
        &kerberos_only,
        "Negotiate",
        "LAB\\alice",
        "alice-pw",
        &page,
    );
    assert!(out.starts_with("407"), "{out}");
    // Nor does NTLM get in wrapped in SPNEGO while `ntlm` is not enabled.
    let out = gss_client(
        dir.path(),
        &kerberos_only,
        "Negotiate+spnego",
        "LAB\\alice",
        "alice-pw",
        &page,
    );
    assert!(out.starts_with("407"), "{out}\n{}", kerberos_only.stderr());
    assert!(
        kerberos_only.stderr().contains("NTLM is not enabled"),
        "{}",
        kerberos_only.stderr()
    );
}
