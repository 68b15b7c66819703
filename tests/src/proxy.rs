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
}

impl TestProxy {
    /// Starts the proxy with `extra_toml` merged over a test base config: listen on
    /// 127.0.0.1:0, access log to `<dir>/access.log`, debug logging.
    pub fn start(extra_toml: &str) -> TestProxy {
        TestProxy::try_start(extra_toml).unwrap_or_else(|e| panic!("proxy did not start: {e}"))
    }

    pub fn try_start(extra_toml: &str) -> Result<TestProxy, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let config = merged_config(extra_toml, dir.path());
        let config_path = dir.path().join("portcullis.toml");
        std::fs::write(&config_path, config).map_err(|e| e.to_string())?;
        TestProxy::spawn(
            dir,
            &["run", "--config", &config_path.display().to_string()],
        )
    }

    fn spawn(dir: tempfile::TempDir, args: &[&str]) -> Result<TestProxy, String> {
        let mut child = Command::new(portcullis_bin())
            .args(args)
            .env("RUST_LOG", "portcullis=debug,info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", portcullis_bin().display()))?;
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let pipe = child.stderr.take().ok_or("no stderr pipe")?;
        {
            let stderr = Arc::clone(&stderr);
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    if let Some(addr) = line.split("listening on ").nth(1) {
                        let addr = strip_ansi(addr);
                        if let Ok(addr) = addr.trim().parse::<SocketAddr>() {
                            let _ = tx.send(addr);
                        }
                    }
                    if let Ok(mut lines) = stderr.lock() {
                        lines.push(line);
                    }
                }
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
        })
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
    let log = table
        .entry("access_log")
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    if let Some(log) = log.as_table_mut() {
        log.entry("path")
            .or_insert_with(|| dir.join("access.log").display().to_string().into());
    }
    toml::to_string(&table).unwrap_or_default()
}
