//! A real OpenLDAP `slapd` on a loopback port for group tests (shared/recipes/DIRECTORY.md):
//! `dc=lab,dc=test` in a temp dir, nothing under /etc read but the schema files.
//!
//! Users alice, bob, carol (`uid=…,ou=people`); groups (`groupOfNames`, `ou=groups`):
//! team-a = {alice}, finance = {team-a, bob}, staff = {finance} — so alice is in finance and
//! staff only through nesting. The proxy binds as `cn=portcullis,ou=services` (`svc-pw`), or
//! with SASL GSSAPI ([`Slapd::start_kerberos`]) as any principal of the test realm, which reads
//! like every bound identity.

use crate::ports::ReservedPort;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BASE: &str = "dc=lab,dc=test";
pub const ADMIN_DN: &str = "cn=admin,dc=lab,dc=test";
pub const SERVICE_DN: &str = "cn=portcullis,ou=services,dc=lab,dc=test";

pub struct Slapd {
    pub dir: tempfile::TempDir,
    /// `ldap://` (StartTLS offered). Reserved, because [`Slapd::resume`] binds it again.
    pub port: u16,
    /// `ldaps://`.
    pub tls_port: u16,
    _reserved: [ReservedPort; 2],
    child: Option<Child>,
    /// slapd's environment: the realm and keytab for SASL GSSAPI.
    env: Vec<(&'static str, PathBuf)>,
}

impl Drop for Slapd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// True when slapd and the LDAP tools are installed. Tests skip (with a message) only where
/// they are not; `PORTCULLIS_REQUIRE_SLAPD=1` (set by `./dev.sh test`) turns a skip into a
/// failure.
pub fn available() -> bool {
    let ok = [
        "/usr/sbin/slapd",
        "/usr/sbin/slapadd",
        "/usr/bin/ldapmodify",
    ]
    .iter()
    .all(|p| std::path::Path::new(p).exists());
    if !ok {
        assert!(
            std::env::var_os("PORTCULLIS_REQUIRE_SLAPD").is_none(),
            "slapd or ldap-utils is missing but PORTCULLIS_REQUIRE_SLAPD is set"
        );
        eprintln!("SKIP: slapd and ldap-utils not installed");
    }
    ok
}

/// True when Cyrus SASL's GSSAPI plugin (Debian `libsasl2-modules-gssapi-mit`) is installed,
/// which slapd needs for SASL GSSAPI binds; like [`available`], a skip is a failure under
/// `PORTCULLIS_REQUIRE_SLAPD`.
pub fn gssapi_available() -> bool {
    let ok = std::fs::read_dir("/usr/lib")
        .into_iter()
        .flatten()
        .flatten()
        .any(|dir| dir.path().join("sasl2/libgssapiv2.so.2").exists());
    if !ok {
        assert!(
            std::env::var_os("PORTCULLIS_REQUIRE_SLAPD").is_none(),
            "libsasl2-modules-gssapi-mit is missing but PORTCULLIS_REQUIRE_SLAPD is set"
        );
        eprintln!("SKIP: libsasl2-modules-gssapi-mit (SASL GSSAPI for slapd) not installed");
    }
    ok
}

fn run(program: &str, args: &[&str], stdin: Option<&str>) {
    use std::io::Write as _;
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    if let Some(text) = stdin {
        let mut pipe = child.stdin.take().unwrap_or_else(|| panic!("stdin"));
        pipe.write_all(text.as_bytes())
            .unwrap_or_else(|e| panic!("{program} stdin: {e}"));
    }
    drop(child.stdin.take());
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn hash(password: &str) -> String {
    let out = Command::new("/usr/sbin/slappasswd")
        .args(["-s", password])
        .output()
        .unwrap_or_else(|e| panic!("slappasswd: {e}"));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

impl Slapd {
    /// Creates the directory and starts slapd on a free loopback port.
    pub fn start() -> Slapd {
        Slapd::start_with(Vec::new(), "")
    }

    /// [`Slapd::start`], also accepting SASL GSSAPI binds: slapd is `ldap/localhost` of the
    /// realm `krb5_conf` names, its key in `keytab`. Clients must address it as `localhost`
    /// ([`Slapd::url_localhost`]) to ask for that principal.
    pub fn start_kerberos(krb5_conf: &std::path::Path, keytab: &std::path::Path) -> Slapd {
        let env = vec![
            ("KRB5_CONFIG", krb5_conf.to_path_buf()),
            ("KRB5_KTNAME", keytab.to_path_buf()),
        ];
        // The SASL host names the principal (`ldap@localhost`, no DNS); the realm the identity.
        Slapd::start_with(env, "sasl-host localhost\nsasl-realm LAB.TEST\n")
    }

    fn start_with(env: Vec<(&'static str, PathBuf)>, global: &str) -> Slapd {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let w = dir.path();
        std::fs::create_dir(w.join("db")).unwrap_or_else(|e| panic!("{e}"));
        // A lab CA and a server certificate for 127.0.0.1 signed by it (webpki refuses a CA
        // certificate used as the server's own).
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        std::fs::write(
            w.join("tls.ext"),
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        for args in [
            &[
                "req",
                "-x509",
                ec[0],
                ec[1],
                ec[2],
                ec[3],
                ec[4],
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=Lab LDAP CA",
            ][..],
            &[
                "req",
                ec[0],
                ec[1],
                ec[2],
                ec[3],
                ec[4],
                "-keyout",
                "tls.key",
                "-out",
                "tls.csr",
                "-subj",
                "/CN=127.0.0.1",
            ],
            &[
                "x509",
                "-req",
                "-in",
                "tls.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "tls.pem",
                "-days",
                "2",
                "-extfile",
                "tls.ext",
            ],
        ] {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(w)
                .output()
                .unwrap_or_else(|e| panic!("openssl: {e}"));
            assert!(out.status.success(), "openssl {args:?}: {out:?}");
        }
        std::fs::write(
            w.join("slapd.conf"),
            format!(
                "include /etc/ldap/schema/core.schema\ninclude /etc/ldap/schema/cosine.schema\n\
                 include /etc/ldap/schema/inetorgperson.schema\nmodulepath /usr/lib/ldap\n\
                 moduleload back_mdb\npidfile {d}/slapd.pid\ndisallow bind_anon\n{global}\
                 TLSCertificateFile {d}/tls.pem\nTLSCertificateKeyFile {d}/tls.key\ndatabase mdb\n\
                 suffix \"{BASE}\"\nrootdn \"{ADMIN_DN}\"\nrootpw {pw}\ndirectory {d}/db\nmaxsize 10485760\n\
                 access to attrs=userPassword by self =xw by anonymous auth by * none\n\
                 access to * by users read by * none\n",
                d = w.display(),
                pw = hash("admin-pw"),
            ),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let mut ldif = format!(
            "dn: {BASE}\nobjectClass: dcObject\nobjectClass: organization\ndc: lab\no: Lab\n\n"
        );
        for ou in ["people", "groups", "services"] {
            ldif += &format!("dn: ou={ou},{BASE}\nobjectClass: organizationalUnit\nou: {ou}\n\n");
        }
        for u in ["alice", "bob", "carol"] {
            ldif += &format!(
                "dn: uid={u},ou=people,{BASE}\nobjectClass: inetOrgPerson\nuid: {u}\ncn: {u}\nsn: {u}\n\n"
            );
        }
        ldif += &format!(
            "dn: {SERVICE_DN}\nobjectClass: applicationProcess\nobjectClass: simpleSecurityObject\n\
             cn: portcullis\nuserPassword: {}\n\n",
            hash("svc-pw")
        );
        for (group, members) in [
            ("team-a", vec![user_dn("alice")]),
            ("finance", vec![group_dn("team-a"), user_dn("bob")]),
            ("staff", vec![group_dn("finance")]),
        ] {
            ldif += &format!(
                "dn: {}\nobjectClass: groupOfNames\ncn: {group}\n",
                group_dn(group)
            );
            for m in members {
                ldif += &format!("member: {m}\n");
            }
            ldif += "\n";
        }
        let conf = w.join("slapd.conf").display().to_string();
        run("/usr/sbin/slapadd", &["-q", "-f", &conf], Some(&ldif));
        let reserved = [ReservedPort::new(), ReservedPort::new()];
        let mut slapd = Slapd {
            dir,
            port: reserved[0].port(),
            tls_port: reserved[1].port(),
            _reserved: reserved,
            child: None,
            env,
        };
        slapd.resume();
        slapd
    }

    /// The `ldap://` URL.
    pub fn url(&self) -> String {
        format!("ldap://127.0.0.1:{}", self.port)
    }

    /// The `ldap://` URL by name, `localhost`, as SASL GSSAPI needs (`ldap/localhost`).
    pub fn url_localhost(&self) -> String {
        format!("ldap://localhost:{}", self.port)
    }

    /// The `ldaps://` URL.
    pub fn url_tls(&self) -> String {
        format!("ldaps://127.0.0.1:{}", self.tls_port)
    }

    /// The PEM file clients must trust for LDAPS and StartTLS.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// Starts slapd again on the same ports and data (after [`Slapd::stop`]); waits until it
    /// accepts connections. A start that exits (a port still held by a connection closing) is
    /// tried again for up to 10 s.
    pub fn resume(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut attempts = 0;
        loop {
            attempts += 1;
            match self.spawn_and_wait(deadline) {
                Ok(()) => return,
                Err(e) if Instant::now() >= deadline => {
                    panic!("slapd did not start ({attempts} attempts): {e}")
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    fn spawn_and_wait(&mut self, deadline: Instant) -> Result<(), String> {
        let w = self.dir.path();
        let listen = format!("{}/ {}/", self.url(), self.url_tls());
        let log_path = w.join("slapd.log");
        let log = std::fs::File::create(&log_path).unwrap_or_else(|e| panic!("slapd.log: {e}"));
        let mut child = Command::new("/usr/sbin/slapd")
            .args(["-h", &listen, "-f"])
            .arg(w.join("slapd.conf"))
            .args(["-d", "0"])
            .envs(self.env.iter().map(|(k, v)| (*k, v)))
            .env("KRB5RCACHEDIR", w)
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap_or_else(|e| panic!("slapd: {e}"));
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                self.child = Some(child);
                return Ok(());
            }
            if let Ok(Some(status)) = child.try_wait() {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                return Err(format!("slapd exited ({status}): {}", log.trim()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        Err("slapd did not listen in time".into())
    }

    /// Stops slapd and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = child.wait();
        }
    }

    /// Applies an LDIF change as the directory's administrator.
    pub fn modify(&self, ldif: &str) {
        run(
            "/usr/bin/ldapmodify",
            &["-x", "-H", &self.url(), "-D", ADMIN_DN, "-w", "admin-pw"],
            Some(ldif),
        );
    }

    /// Adds `member` (a DN) to group `group` (a CN).
    pub fn add_member(&self, group: &str, member: &str) {
        self.modify(&format!(
            "dn: {}\nchangetype: modify\nadd: member\nmember: {member}\n",
            group_dn(group)
        ));
    }

    /// Writes the service account's password to a file for `bind_password_file`.
    pub fn password_file(&self) -> PathBuf {
        let path = self.dir.path().join("bind.pw");
        std::fs::write(&path, "svc-pw\n").unwrap_or_else(|e| panic!("{e}"));
        path
    }

    /// `[auth.groups.ldap]` for this directory (OpenLDAP: `group-filter` membership).
    pub fn groups_toml(&self) -> String {
        self.groups_toml_with(&[&self.url()], "")
    }

    /// [`Slapd::groups_toml`] with other `urls` and extra keys (`starttls`, `ca_file`).
    pub fn groups_toml_with(&self, urls: &[&str], extra: &str) -> String {
        let urls: Vec<String> = urls.iter().map(|u| format!("{u:?}")).collect();
        format!(
            "[auth.groups.ldap]\n{extra}\nurls = [{}]\nbind_dn = \"{SERVICE_DN}\"\nbind_password_file = \"{}\"\n{}",
            urls.join(", "),
            self.password_file().display(),
            search_toml()
        )
    }

    /// `[auth.groups.ldap]` binding with SASL GSSAPI to `ldap/localhost` (needs
    /// [`Slapd::start_kerberos`]).
    pub fn groups_toml_gssapi(&self) -> String {
        self.groups_toml_gssapi_with(&self.url_localhost(), "")
    }

    /// [`Slapd::groups_toml_gssapi`] with another URL and extra keys (`sasl_host`, `starttls`).
    pub fn groups_toml_gssapi_with(&self, url: &str, extra: &str) -> String {
        format!(
            "[auth.groups.ldap]\n{extra}\nurls = [{url:?}]\nsasl = \"gssapi\"\n{}",
            search_toml()
        )
    }
}

/// The search settings of `[auth.groups.ldap]` for this directory.
fn search_toml() -> String {
    format!(
        "base_dn = \"{BASE}\"\nuser_filter = \"(uid={{user}})\"\nmembership = \"group-filter\"\n\
         group_base_dn = \"ou=groups,{BASE}\"\n"
    )
}

pub fn user_dn(user: &str) -> String {
    format!("uid={user},ou=people,{BASE}")
}

pub fn group_dn(group: &str) -> String {
    format!("cn={group},ou=groups,{BASE}")
}
