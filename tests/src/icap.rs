//! A real c-icap (Debian `c-icap`) in the foreground on a loopback port, with its `echo`
//! service and, when `libc-icap-mod-virus-scan` and ClamAV are installed, `avscan` (ClamAV with
//! a lab-made EICAR signature, bound over `/var/lib/clamav` in a private mount namespace, as
//! shared/recipes/ICAP.md does). Its access log records, per request, the method, the ICAP
//! status and the body bytes it received (`%Ib`), so tests can tell a body was not re-sent.

use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const MODULES: &str = "/usr/lib/x86_64-linux-gnu/c_icap";

/// The EICAR test file (not a virus; every scanner flags it).
pub const EICAR: &str = r"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*";

pub struct CIcap {
    pub port: u16,
    /// `TlsPort`, when started with [`CIcap::start_tls`].
    pub tls_port: Option<u16>,
    pub dir: tempfile::TempDir,
    child: Child,
}

/// True when c-icap is installed. `PORTCULLIS_REQUIRE_ICAP=1` (set by `./dev.sh test`) turns a
/// skip into a failure.
pub fn available() -> bool {
    let ok =
        Path::new("/usr/bin/c-icap").exists() && Path::new(MODULES).join("srv_echo.so").exists();
    if !ok {
        assert!(
            std::env::var_os("PORTCULLIS_REQUIRE_ICAP").is_none(),
            "c-icap is missing but PORTCULLIS_REQUIRE_ICAP is set"
        );
        eprintln!("SKIP: c-icap not installed");
    }
    ok
}

/// True when the ClamAV service can be run (module, ClamAV, `unshare`, root for the mount).
pub fn clamav_available() -> bool {
    let ok = Path::new(MODULES).join("virus_scan.so").exists()
        && Path::new(MODULES).join("clamav_mod.so").exists()
        && Path::new("/usr/bin/unshare").exists()
        && std::fs::read_to_string("/proc/self/status")
            .unwrap_or_default()
            .lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"));
    if !ok {
        assert!(
            std::env::var_os("PORTCULLIS_REQUIRE_ICAP").is_none(),
            "c-icap's ClamAV module is missing (or not root) but PORTCULLIS_REQUIRE_ICAP is set"
        );
        eprintln!("SKIP: c-icap ClamAV module not installed");
    }
    ok
}

impl CIcap {
    /// Starts c-icap with `echo` (and `avscan` when `clamav`) on a free loopback port.
    pub fn start(clamav: bool) -> CIcap {
        CIcap::start_with(clamav, false)
    }

    /// With a `TlsPort` too, its certificate (for `127.0.0.1`) signed by a fresh CA whose PEM
    /// is [`CIcap::ca_file`].
    pub fn start_tls() -> CIcap {
        CIcap::start_with(false, true)
    }

    /// The CA of the TLS port's certificate.
    pub fn ca_file(&self) -> std::path::PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// `icaps://127.0.0.1:PORT/service`.
    pub fn tls_url(&self, service: &str) -> String {
        format!("icaps://127.0.0.1:{}/{service}", self.tls_port.unwrap())
    }

    fn start_with(clamav: bool, tls: bool) -> CIcap {
        for _ in 0..5 {
            let port = crate::ports::free_port();
            let tls_port = tls.then(crate::ports::free_port);
            if let Some(c) = CIcap::try_start(port, tls_port, clamav) {
                return c;
            }
        }
        panic!("c-icap did not start");
    }

    fn try_start(port: u16, tls_port: Option<u16>, clamav: bool) -> Option<CIcap> {
        let dir = tempfile::tempdir().unwrap();
        let w = dir.path().display().to_string();
        let tls_line = match tls_port {
            Some(tls_port) => {
                write_certificate(dir.path());
                format!("TlsPort 127.0.0.1:{tls_port} cert={w}/cert.pem key={w}/key.pem\n")
            }
            None => String::new(),
        };
        let mut conf = format!(
            "Port 127.0.0.1:{port}\n{tls_line}PidFile {w}/c-icap.pid\nCommandsSocket {w}/c-icap.ctl\n\
             StartServers 1\nMaxServers 1\nMinSpareThreads 2\nMaxSpareThreads 4\nThreadsPerChild 8\n\
             TmpDir {w}\nServerLog {w}/server.log\n\
             LogFormat counts \"%im %is %Ib %Ob\"\nAccessLog {w}/access.log counts\n\
             ModulesDir {MODULES}\nServicesDir {MODULES}\nTemplateDir /usr/share/c_icap/templates/\n\
             LoadMagicFile /etc/c-icap/c-icap.magic\nService echo srv_echo.so\n"
        );
        if clamav {
            std::fs::create_dir(dir.path().join("avdb")).unwrap();
            let hex: String = "EICAR-STANDARD-ANTIVIRUS-TEST-FILE"
                .bytes()
                .map(|b| format!("{b:02x}"))
                .collect();
            std::fs::write(
                dir.path().join("avdb/lab.ndb"),
                format!("Lab.EICAR:0:*:{hex}\n"),
            )
            .unwrap();
            conf.push_str(&format!(
                "Module common clamav_mod.so\nclamav_mod.TmpDir {w}\n\
                 Service antivirus_module virus_scan.so\n\
                 ServiceAlias avscan virus_scan?allow204=on&sizelimit=off&mode=simple\n\
                 virus_scan.ScanFileTypes TEXT DATA EXECUTABLE ARCHIVE GIF JPEG MSOFFICE\n"
            ));
        }
        std::fs::write(dir.path().join("c-icap.conf"), conf).unwrap();
        let conf_path = format!("{w}/c-icap.conf");
        let out = std::fs::File::create(dir.path().join("stdout.log")).unwrap();
        let err = out.try_clone().unwrap();
        let mut cmd = if clamav {
            // clamav_mod always loads /var/lib/clamav: our database goes over it, privately.
            let mut c = Command::new("unshare");
            c.args(["-m", "--propagation", "private", "sh", "-c"])
                .arg(format!(
                    "mount --bind {w}/avdb /var/lib/clamav && exec c-icap -N -f {conf_path}"
                ));
            c
        } else {
            let mut c = Command::new("c-icap");
            c.args(["-N", "-f", &conf_path]);
            c
        };
        // A group of its own: c-icap forks a child server, and both go when the test ends.
        let child = std::os::unix::process::CommandExt::process_group(&mut cmd, 0)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap();
        let mut c = CIcap {
            port,
            tls_port,
            dir,
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let tls_up = tls_port.is_none_or(|p| TcpStream::connect(("127.0.0.1", p)).is_ok());
            if TcpStream::connect(("127.0.0.1", port)).is_ok() && tls_up {
                return Some(c);
            }
            if let Ok(Some(_)) = c.child.try_wait() {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// `icap://127.0.0.1:PORT/service`.
    pub fn url(&self, service: &str) -> String {
        format!("icap://127.0.0.1:{}/{service}", self.port)
    }

    /// c-icap's access log: `METHOD STATUS BODY_BYTES_IN BODY_BYTES_OUT` per line.
    pub fn access_log(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("access.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Access log lines, waiting up to 5 s for at least `n` of them matching `method`.
    pub fn wait_log(&self, method: &str, n: usize) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let lines: Vec<String> = self
                .access_log()
                .into_iter()
                .filter(|l| l.starts_with(method))
                .collect();
            if lines.len() >= n || Instant::now() > deadline {
                return lines;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for CIcap {
    fn drop(&mut self) {
        // The group this c-icap leads (its monitor and its child server), by its id.
        let group = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port nobody listens on right now.
/// `ca.pem`, `cert.pem` (for 127.0.0.1) and `key.pem` in `dir`.
fn write_certificate(dir: &Path) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Portcullis Test ICAP CA");
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("cert.pem"), leaf.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
}
