//! A real Squid (Debian `squid-openssl`) as a parent proxy requiring Basic authentication, in
//! the foreground on a loopback port of its own, with its own directory: tests run in parallel.
//! The set-up follows /work/shared/recipes/PARENT.md.

use crate::ports::ReservedPort;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Whether Squid and `htpasswd` are installed. Without them the test is skipped — unless
/// `PORTCULLIS_REQUIRE_SQUID` is set (by `./dev.sh test`, in CI), which turns a skip into a
/// failure.
pub fn available() -> bool {
    let found = Path::new("/usr/sbin/squid").exists()
        && Path::new("/usr/lib/squid/basic_ncsa_auth").exists()
        && Command::new("htpasswd").arg("-h").output().is_ok();
    if !found {
        assert!(
            std::env::var_os("PORTCULLIS_REQUIRE_SQUID").is_none(),
            "Squid (Debian squid-openssl) is missing but PORTCULLIS_REQUIRE_SQUID is set"
        );
        eprintln!("skipped: Squid is not installed");
    }
    found
}

/// A running Squid; killed when dropped.
pub struct Squid {
    pub addr: SocketAddr,
    /// Held for [`Squid::restart`], which binds the same port again.
    port: ReservedPort,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Squid {
    /// A parent accepting `users` (name, password) with Basic auth, on a free loopback port.
    pub fn start(users: &[(&str, &str)]) -> Squid {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let work = dir.path().display().to_string();
        // Squid drops to the `proxy` user: it must reach its directory and write in it.
        run("chmod", &["755", &work]);
        let users_file = dir.path().join("users");
        for (user, password) in users {
            crate::htpasswd(&users_file, "-B", user, password);
        }
        let port = ReservedPort::new();
        let mut squid = Squid {
            addr: port.addr(),
            port,
            dir,
            child: None,
        };
        // The reserved port is free of tests, not of everything else on the machine: a failed
        // start is tried again on another.
        let mut last_err = String::new();
        for _ in 0..5 {
            write_config(squid.dir.path(), squid.addr, &users_file);
            run("chown", &["-R", "proxy:proxy", &work]);
            match squid.spawn() {
                Ok(()) => return squid,
                Err(e) => last_err = e,
            }
            squid.port = ReservedPort::new();
            squid.addr = squid.port.addr();
        }
        panic!("Squid did not start: {last_err}");
    }

    /// Starts Squid on its address and waits until it accepts connections.
    fn spawn(&mut self) -> Result<(), String> {
        let conf = self.dir.path().join("squid.conf");
        let child = Command::new("/usr/sbin/squid")
            .arg("-N")
            .arg("-f")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run squid: {e}"))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if TcpStream::connect(self.addr).is_ok() {
                return Ok(());
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                self.child = None;
                return Err(format!("squid exited: {status}\n{}", self.cache_log()));
            }
            std::thread::sleep(Duration::from_millis(30));
        }
        self.stop();
        Err(format!("squid did not listen on {}", self.addr))
    }

    /// Stops Squid at once (SIGKILL: a crash, as far as its clients can tell).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and directory.
    pub fn restart(&mut self) {
        self.stop();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.spawn() {
                Ok(()) => return,
                Err(e) if Instant::now() > deadline => panic!("Squid did not restart: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Access log lines (`TIME CLIENT CODE/STATUS METHOD URL user=USER`), waiting up to 5 s
    /// for at least `n`.
    pub fn access_log(&self, n: usize) -> Vec<String> {
        crate::proxy::read_lines_eventually(&self.dir.path().join("access.log"), n)
    }

    pub fn cache_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("cache.log")).unwrap_or_default()
    }
}

impl Drop for Squid {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run(program: &str, args: &[&str]) {
    let status = Command::new(program)
        .args(args)
        .status()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(status.success(), "{program} {args:?} failed");
}

fn write_config(work: &Path, addr: SocketAddr, users: &Path) {
    let w = work.display();
    let conf = format!(
        "http_port {addr}
visible_hostname lab-parent-{port}
pid_filename {w}/squid.pid
cache_log {w}/cache.log
logformat lab %ts.%03tu %>a %Ss/%03>Hs %rm %ru user=%un
access_log stdio:{w}/access.log lab
cache deny all
cache_mem 8 MB
coredump_dir {w}
cache_effective_user proxy
pinger_enable off
netdb_filename none
logfile_rotate 0
shutdown_lifetime 0 seconds
dns_nameservers 127.0.0.1
auth_param basic program /usr/lib/squid/basic_ncsa_auth {users}
auth_param basic children 2 startup=1
auth_param basic realm lab-parent
auth_param basic credentialsttl 1 minute
acl authed proxy_auth REQUIRED
http_access allow authed
http_access deny all
",
        port = addr.port(),
        users = users.display(),
    );
    std::fs::write(work.join("squid.conf"), conf).unwrap_or_else(|e| panic!("{e}"));
}
