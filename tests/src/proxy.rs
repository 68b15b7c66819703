//! Running the real `portcullis` binary with a config written for one test.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use crate::portcullis_bin;

/// A running proxy process. Killed when dropped.
pub struct TestProxy {
    child: Child,
    /// The first listening address (bound to 127.0.0.1:0 unless the config says otherwise).
    pub addr: SocketAddr,
    pub addrs: Vec<SocketAddr>,
    pub dir: tempfile::TempDir,
    stderr: Arc<Mutex<Vec<String>>>,
    /// The admin listener's address, from its `admin endpoints on ADDR` log line.
    admin: Arc<Mutex<Option<SocketAddr>>>,
}

impl TestProxy {
    /// Starts the proxy with `extra_toml` merged over a test base config: listen on
    /// 127.0.0.1:0, access log to `<dir>/access.log`, debug logging.
    pub fn start(extra_toml: &str) -> TestProxy {
        TestProxy::try_start(extra_toml).unwrap_or_else(|e| panic!("proxy did not start: {e}"))
    }

    pub fn try_start(extra_toml: &str) -> Result<TestProxy, String> {
        TestProxy::try_start_with_env(extra_toml, &[])
    }

    /// Like [`TestProxy::start`], with extra environment variables (Kerberos settings).
    pub fn start_with_env(extra_toml: &str, env: &[(&str, String)]) -> TestProxy {
        TestProxy::try_start_with_env(extra_toml, env)
            .unwrap_or_else(|e| panic!("proxy did not start: {e}"))
    }

    pub fn try_start_with_env(
        extra_toml: &str,
        env: &[(&str, String)],
    ) -> Result<TestProxy, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let config = merged_config(extra_toml, dir.path());
        let config_path = dir.path().join("portcullis.toml");
        std::fs::write(&config_path, config).map_err(|e| e.to_string())?;
        let args = ["run", "--config", &config_path.display().to_string()];
        TestProxy::spawn(dir, &args, env, true)
    }

    /// Like [`TestProxy::start`], inside the network namespace `netns` (`ip netns exec`, which
    /// execs the proxy: the child's pid is the proxy's).
    pub fn start_in_netns(netns: &str, extra_toml: &str) -> TestProxy {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let config = merged_config(extra_toml, dir.path());
        let config_path = dir.path().join("portcullis.toml");
        std::fs::write(&config_path, config).unwrap_or_else(|e| panic!("{e}"));
        let bin = portcullis_bin().display().to_string();
        let config_path = config_path.display().to_string();
        let args = [
            "netns",
            "exec",
            netns,
            &bin,
            "run",
            "--config",
            &config_path,
        ];
        TestProxy::spawn_program(Path::new("ip"), dir, &args, &[], true)
            .unwrap_or_else(|e| panic!("proxy did not start: {e}"))
    }

    /// Starts the proxy and returns as soon as its admin listener is up, without waiting for
    /// the proxy listeners (`addr` is unset until [`TestProxy::wait_listening`]).
    pub fn start_until_admin(extra_toml: &str) -> TestProxy {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let config = merged_config(extra_toml, dir.path());
        let config_path = dir.path().join("portcullis.toml");
        std::fs::write(&config_path, config).unwrap_or_else(|e| panic!("{e}"));
        let args = ["run", "--config", &config_path.display().to_string()];
        let proxy = TestProxy::spawn(dir, &args, &[], false)
            .unwrap_or_else(|e| panic!("proxy did not start: {e}"));
        let _ = proxy.admin_addr();
        proxy
    }

    /// Waits until the proxy logged its listening addresses; fills `addr` and `addrs`.
    pub fn wait_listening(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let addrs: Vec<SocketAddr> = self
                .stderr
                .lock()
                .map(|lines| lines.iter().filter_map(|l| listening_addr(l)).collect())
                .unwrap_or_default();
            if let Some(first) = addrs.first() {
                self.addr = *first;
                self.addrs = addrs;
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn spawn(
        dir: tempfile::TempDir,
        args: &[&str],
        env: &[(&str, String)],
        wait_for_listeners: bool,
    ) -> Result<TestProxy, String> {
        TestProxy::spawn_program(&portcullis_bin(), dir, args, env, wait_for_listeners)
    }

    fn spawn_program(
        program: &Path,
        dir: tempfile::TempDir,
        args: &[&str],
        env: &[(&str, String)],
        wait_for_listeners: bool,
    ) -> Result<TestProxy, String> {
        let mut child = Command::new(program)
            .args(args)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .env("RUST_LOG", "portcullis=debug,info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", program.display()))?;
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let admin = Arc::new(Mutex::new(None));
        let (tx, rx) = mpsc::channel();
        let pipe = child.stderr.take().ok_or("no stderr pipe")?;
        {
            let stderr = Arc::clone(&stderr);
            let admin = Arc::clone(&admin);
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    if let Some(addr) = listening_addr(&line) {
                        let _ = tx.send(addr);
                    }
                    if let Some(addr) = line.split("admin endpoints on ").nth(1) {
                        let addr = strip_ansi(addr);
                        let addr = addr.split_whitespace().next().unwrap_or_default();
                        if let (Ok(addr), Ok(mut slot)) = (addr.parse::<SocketAddr>(), admin.lock())
                        {
                            *slot = Some(addr);
                        }
                    }
                    if let Ok(mut lines) = stderr.lock() {
                        lines.push(line);
                    }
                }
            });
        }
        if !wait_for_listeners {
            return Ok(TestProxy {
                child,
                addr: SocketAddr::from(([0, 0, 0, 0], 0)),
                addrs: Vec::new(),
                dir,
                stderr,
                admin,
            });
        }
        let mut addrs = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        // Wait for the first address, then briefly for more listeners.
        while let Ok(addr) = rx.recv_timeout(if addrs.is_empty() {
            deadline.saturating_duration_since(Instant::now())
        } else {
            Duration::from_millis(200)
        }) {
            addrs.push(addr);
        }
        if addrs.is_empty() {
            let _ = child.kill();
            let _ = child.wait();
            let log = stderr.lock().map(|l| l.join("\n")).unwrap_or_default();
            return Err(format!("no 'listening on' line; stderr:\n{log}"));
        }
        Ok(TestProxy {
            child,
            addr: addrs[0],
            addrs,
            dir,
            stderr,
            admin,
        })
    }

    /// The admin listener's address (the test base config binds it to 127.0.0.1:0). Waits up
    /// to 20 s for its log line; panics if the admin listener is disabled.
    pub fn admin_addr(&self) -> SocketAddr {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(addr) = self.admin.lock().ok().and_then(|a| *a) {
                return addr;
            }
            assert!(
                Instant::now() < deadline,
                "no 'admin endpoints on' line; stderr:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `http://ADMIN_ADDR`, for `/metrics`, `/readyz`, `/config` and `/reload`.
    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin_addr())
    }

    /// The config file the proxy was started with (what a reload re-reads).
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("portcullis.toml")
    }

    /// Replaces the config file with `extra_toml` merged over the same test base config, by
    /// rename, so a reload never reads a half-written file.
    pub fn rewrite_config(&self, extra_toml: &str) {
        write_atomically(
            &self.config_path(),
            &merged_config(extra_toml, self.dir.path()),
        );
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), signal);
    }

    /// Waits for the process to exit on its own.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().map(|l| l.join("\n")).unwrap_or_default()
    }

    pub fn access_log_path(&self) -> PathBuf {
        self.dir.path().join("access.log")
    }

    /// Access log lines, waiting up to 5 s for at least `n` of them (the writer is async).
    pub fn access_log(&self, n: usize) -> Vec<String> {
        read_lines_eventually(&self.access_log_path(), n)
    }

    /// Peak resident set size (VmHWM) in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        proc_status_kib(self.child.id(), "VmHWM:")
    }
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn read_lines_eventually(path: &Path, n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let lines: Vec<String> = std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect();
        if lines.len() >= n || Instant::now() > deadline {
            return lines;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn proc_status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Writes `path` by rename, as an administrator's editor or config management should.
pub fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp-write");
    std::fs::write(&tmp, text).unwrap_or_else(|e| panic!("{}: {e}", tmp.display()));
    std::fs::rename(&tmp, path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

/// The address of a proxy listener's `listening on ADDR` line.
fn listening_addr(line: &str) -> Option<SocketAddr> {
    let addr = strip_ansi(line.split("listening on ").nth(1)?);
    addr.trim().parse().ok()
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn merged_config(extra: &str, dir: &Path) -> String {
    let mut table: toml::Table =
        toml::from_str(extra).unwrap_or_else(|e| panic!("test config: {e}"));
    let server = table
        .entry("server")
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    if let Some(server) = server.as_table_mut() {
        server
            .entry("listen")
            .or_insert_with(|| toml::Value::Array(vec!["127.0.0.1:0".into()]));
        server
            .entry("data_dir")
            .or_insert_with(|| dir.join("data").display().to_string().into());
    }
    // Parallel tests must never meet on the default admin port 9464.
    let admin = table
        .entry("admin")
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    if let Some(admin) = admin.as_table_mut() {
        admin
            .entry("listen")
            .or_insert_with(|| "127.0.0.1:0".into());
    }
    // Test origins live on loopback, which `upstream.deny_networks` refuses by default;
    // tests/tests/hardening.rs checks the default.
    let upstream = table
        .entry("upstream")
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    if let Some(upstream) = upstream.as_table_mut() {
        upstream
            .entry("deny_networks")
            .or_insert_with(|| toml::Value::Array(Vec::new()));
    }
    // Tests never ask Microsoft's endpoints service; tests/tests/m365.rs runs its own.
    let m365 = table
        .entry("m365")
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    if let Some(m365) = m365.as_table_mut() {
        m365.entry("fetch").or_insert_with(|| false.into());
    }
    let log = table
        .entry("access_log")
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    if let Some(log) = log.as_table_mut() {
        log.entry("path")
            .or_insert_with(|| dir.join("access.log").display().to_string().into());
    }
    toml::to_string(&table).unwrap_or_default()
}
