//! A real MIT Kerberos KDC on loopback for Negotiate tests (recipe 1a of shared/recipes/LAB.md):
//! realm LAB.TEST in a temp dir, nothing under /etc read or written.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const REALM: &str = "LAB.TEST";

pub struct Kdc {
    pub dir: tempfile::TempDir,
    child: Child,
}

impl Drop for Kdc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// True when the KDC tools are installed. Tests skip (with a message) only where they are not,
/// and `PORTCULLIS_REQUIRE_KDC=1` (set by `./dev.sh test` in CI) turns a skip into a failure.
pub fn available() -> bool {
    let ok = ["krb5kdc", "kdb5_util", "kadmin.local", "kinit"]
        .iter()
        .all(|tool| {
            Command::new("sh")
                .args([
                    "-c",
                    &format!("command -v {tool} || test -x /usr/sbin/{tool}"),
                ])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        });
    if !ok {
        assert!(
            std::env::var_os("PORTCULLIS_REQUIRE_KDC").is_none(),
            "MIT Kerberos KDC tools are missing but PORTCULLIS_REQUIRE_KDC is set"
        );
        eprintln!(
            "SKIP: MIT Kerberos KDC tools (krb5-kdc, krb5-admin-server, krb5-user) not installed"
        );
    }
    ok
}

fn tool(name: &str) -> String {
    for dir in ["/usr/sbin", "/usr/bin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p.display().to_string();
        }
    }
    name.to_owned()
}

impl Kdc {
    /// Creates the realm with user `alice` (password `alice-pw`) and service principals
    /// `HTTP/<name>` for each of `services`, exported to `http.keytab`.
    pub fn start(services: &[&str]) -> Kdc {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or_else(|e| panic!("{e}"));
        let w = dir.path();
        std::fs::write(
            w.join("krb5.conf"),
            format!(
                "[libdefaults]\n default_realm = {REALM}\n dns_lookup_kdc = false\n dns_lookup_realm = false\n \
                 rdns = false\n dns_canonicalize_hostname = false\n udp_preference_limit = 1\n\
                 [realms]\n {REALM} = {{\n  kdc = 127.0.0.1:{port}\n }}\n\
                 [domain_realm]\n localhost = {REALM}\n .lab.test = {REALM}\n"
            ),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(
            w.join("kdc.conf"),
            format!(
                "[kdcdefaults]\n kdc_listen = 127.0.0.1:{port}\n kdc_tcp_listen = 127.0.0.1:{port}\n\
                 [realms]\n {REALM} = {{\n  database_name = {d}/principal\n  key_stash_file = {d}/stash\n  acl_file = {d}/kadm5.acl\n }}\n\
                 [logging]\n kdc = FILE:{d}/kdc.log\n",
                d = w.display()
            ),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(w.join("kadm5.acl"), "").unwrap_or_else(|e| panic!("{e}"));
        std::fs::create_dir(w.join("rcache")).unwrap_or_else(|e| panic!("{e}"));
        let kdc_cmd = |program: &str, args: &[&str]| {
            let out = Command::new(tool(program))
                .args(args)
                .env("KRB5_CONFIG", w.join("krb5.conf"))
                .env("KRB5_KDC_PROFILE", w.join("kdc.conf"))
                .output()
                .unwrap_or_else(|e| panic!("{program}: {e}"));
            assert!(
                out.status.success(),
                "{program} {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        kdc_cmd(
            "kdb5_util",
            &["create", "-s", "-r", REALM, "-P", "master-pw"],
        );
        kdc_cmd("kadmin.local", &["-q", "addprinc -pw alice-pw alice"]);
        let keytab = w.join("http.keytab").display().to_string();
        for service in services {
            kdc_cmd(
                "kadmin.local",
                &["-q", &format!("addprinc -randkey HTTP/{service}")],
            );
            kdc_cmd(
                "kadmin.local",
                &["-q", &format!("ktadd -k {keytab} HTTP/{service}")],
            );
        }
        let child = Command::new(tool("krb5kdc"))
            .args(["-n", "-P"])
            .arg(w.join("kdc.pid"))
            .env("KRB5_CONFIG", w.join("krb5.conf"))
            .env("KRB5_KDC_PROFILE", w.join("kdc.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("krb5kdc: {e}"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "KDC did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Kdc { dir, child }
    }

    pub fn krb5_conf(&self) -> PathBuf {
        self.dir.path().join("krb5.conf")
    }

    pub fn keytab(&self) -> PathBuf {
        self.dir.path().join("http.keytab")
    }

    pub fn rcache(&self) -> PathBuf {
        self.dir.path().join("rcache")
    }

    /// A new service principal (`ldap/localhost`) with a random key, exported to its own keytab
    /// `file` in the realm's directory (for a server such as slapd, through `KRB5_KTNAME`).
    pub fn service_keytab(&self, principal: &str, file: &str) -> PathBuf {
        let keytab = self.dir.path().join(file);
        for query in [
            format!("addprinc -randkey {principal}"),
            format!("ktadd -k {} {principal}", keytab.display()),
        ] {
            let out = Command::new(tool("kadmin.local"))
                .args(["-q", &query])
                .env("KRB5_CONFIG", self.krb5_conf())
                .env("KRB5_KDC_PROFILE", self.dir.path().join("kdc.conf"))
                .output()
                .unwrap_or_else(|e| panic!("kadmin.local: {e}"));
            assert!(
                out.status.success(),
                "{query}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        assert!(keytab.exists(), "no keytab {}", keytab.display());
        keytab
    }

    /// A client keytab with alice's key (her password unchanged), for `KRB5_CLIENT_KTNAME`.
    pub fn client_keytab_alice(&self) -> PathBuf {
        let keytab = self.dir.path().join("alice.keytab");
        let out = Command::new(tool("kadmin.local"))
            .args([
                "-q",
                &format!("ktadd -k {} -norandkey alice", keytab.display()),
            ])
            .env("KRB5_CONFIG", self.krb5_conf())
            .env("KRB5_KDC_PROFILE", self.dir.path().join("kdc.conf"))
            .output()
            .unwrap_or_else(|e| panic!("kadmin.local: {e}"));
        assert!(
            out.status.success() && keytab.exists(),
            "ktadd alice: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        keytab
    }

    /// A credential cache with a TGT for alice.
    pub fn kinit_alice(&self) -> PathBuf {
        let cc = self.dir.path().join("cc.alice");
        let mut child = Command::new(tool("kinit"))
            .arg(format!("alice@{REALM}"))
            .env("KRB5_CONFIG", self.krb5_conf())
            .env("KRB5CCNAME", format!("FILE:{}", cc.display()))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("kinit: {e}"));
        if let Some(stdin) = child.stdin.as_mut() {
            use std::io::Write as _;
            let _ = stdin.write_all(b"alice-pw\n");
        }
        let status = child.wait().unwrap_or_else(|e| panic!("{e}"));
        assert!(status.success(), "kinit failed");
        cc
    }
}
