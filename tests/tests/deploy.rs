//! Deployment: two instances behind a real HAProxy speaking PROXY protocol v2, systemd
//! readiness over NOTIFY_SOCKET, and every file in deploy/ parsing (systemd units verified by
//! `systemd-analyze verify` where it exists; the container image built where Docker runs).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use portcullis_e2e::{curl, TestOrigin, TestProxy};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

fn required(var: &str) -> bool {
    std::env::var(var).is_ok_and(|v| v == "1")
}

/// The address of the `PROXY protocol listener on ADDR` log line.
fn proxy_protocol_addr(proxy: &TestProxy) -> SocketAddr {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let log = proxy.stderr();
        if let Some(addr) = log
            .lines()
            .find_map(|l| l.split("PROXY protocol listener on ").nth(1))
            .and_then(|rest| rest.trim().parse().ok())
        {
            return addr;
        }
        assert!(
            Instant::now() < deadline,
            "no PROXY protocol listener line:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

struct Haproxy(Child);

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_behind_haproxy_see_the_real_client() {
    if Command::new("haproxy").arg("-v").output().is_err() {
        assert!(
            !required("PORTCULLIS_REQUIRE_HAPROXY"),
            "haproxy missing but required"
        );
        eprintln!("SKIPPED: haproxy (Debian package haproxy) is not installed");
        return;
    }
    let origin = TestOrigin::http().await;
    // HAProxy connects from 127.0.0.1; only it may send PROXY headers.
    let instance = || {
        TestProxy::start(
            "[server]\nproxy_protocol_listen = [\"127.0.0.1:0\"]\nproxy_protocol_trusted = [\"127.0.0.1/32\"]\n",
        )
    };
    let (a, b) = (instance(), instance());
    let (pa, pb) = (proxy_protocol_addr(&a), proxy_protocol_addr(&b));
    let dir = tempfile::tempdir().unwrap();
    let port = portcullis_e2e::ports::free_port();
    let cfg = dir.path().join("haproxy.cfg");
    std::fs::write(
        &cfg,
        format!(
            "global\n  log stderr format raw local0\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n\
             frontend proxy\n  bind 127.0.0.1:{port}\n  default_backend portcullis\n\
             backend portcullis\n  balance roundrobin\n  server a {pa} send-proxy-v2\n  server b {pb} send-proxy-v2\n"
        ),
    )
    .unwrap();
    let check = Command::new("haproxy")
        .arg("-c")
        .arg("-f")
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let _haproxy = Haproxy(
        Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let front = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "haproxy did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The real client is 127.0.0.5; HAProxy itself connects from 127.0.0.1.
    for i in 0..4 {
        let r = curl(&[
            "--interface",
            "127.0.0.5",
            "-x",
            &front,
            &origin.url(&format!("/{i}")),
        ])
        .await;
        assert_eq!(r.status, 200, "{r:?}");
    }
    for (name, instance) in [("a", &a), ("b", &b)] {
        let log = instance.access_log(2);
        assert_eq!(
            log.len(),
            2,
            "instance {name} did not serve its share: {log:?}"
        );
        for line in &log {
            let client = line.split_whitespace().nth(2).unwrap();
            assert_eq!(client, "127.0.0.5", "instance {name} logged {line}");
        }
    }
    // The origin saw the real client in X-Forwarded-For too.
    assert!(origin
        .seen()
        .iter()
        .all(|s| s.headers["x-forwarded-for"] == "127.0.0.5"));

    // A client that is not the load balancer cannot claim an address.
    let direct = curl(&[
        "--interface",
        "127.0.0.9",
        "-x",
        &format!("http://{pa}"),
        &origin.url("/"),
    ])
    .await;
    assert_eq!(direct.status, 0, "{direct:?}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !a
        .stderr()
        .contains("127.0.0.9 is not in server.proxy_protocol_trusted")
    {
        assert!(Instant::now() < deadline, "{}", a.stderr());
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_readiness_and_stopping_are_notified() {
    use std::os::unix::net::UnixDatagram;
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("notify.sock");
    let listener = UnixDatagram::bind(&socket).unwrap();
    listener
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let proxy = TestProxy::start_with_env("", &[("NOTIFY_SOCKET", socket.display().to_string())]);
    let mut buf = [0u8; 256];
    let n = listener.recv(&mut buf).unwrap();
    let ready = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(ready.contains("READY=1"), "{ready}");
    // Ready means the listeners are bound: a request is served now.
    let origin = TestOrigin::http().await;
    assert_eq!(
        curl(&["-x", &proxy.url(), &origin.url("/")]).await.status,
        200
    );
    proxy.signal(nix::sys::signal::Signal::SIGTERM);
    let n = listener.recv(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1"));
}

/// Every file under deploy/ with `ext`.
fn deploy_files(ext: &[&str]) -> Vec<PathBuf> {
    fn walk(dir: &Path, ext: &[&str], out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, ext, out);
            } else if path
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| ext.contains(&e))
            {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(&repo().join("deploy"), ext, &mut out);
    out.sort();
    out
}

#[test]
fn every_yaml_json_and_toml_file_in_deploy_parses() {
    let yaml = deploy_files(&["yaml", "yml"]);
    assert!(!yaml.is_empty());
    for path in &yaml {
        let text = std::fs::read_to_string(path).unwrap();
        let docs = yaml_rust2::YamlLoader::load_from_str(&text)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(!docs.is_empty(), "{}: empty", path.display());
    }
    for path in deploy_files(&["json"]) {
        let text = std::fs::read_to_string(&path).unwrap();
        serde_json::from_str::<serde_json::Value>(&text)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
    // Every TOML file is a config the binary accepts. check-config loads what a config names
    // as `run` would, so the data directory (the CA an install would have) is a test one.
    let data = tempfile::tempdir().unwrap();
    let ca = Command::new(portcullis_e2e::portcullis_bin())
        .args(["ca", "init", "--data-dir"])
        .arg(data.path())
        .output()
        .unwrap();
    assert!(
        ca.status.success(),
        "{}",
        String::from_utf8_lossy(&ca.stderr)
    );
    for path in deploy_files(&["toml"]) {
        let out = Command::new(portcullis_e2e::portcullis_bin())
            .arg("check-config")
            .arg(&path)
            .arg("--data-dir")
            .arg(data.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// deploy/README's "Sizing" quotes the benchmark: every figure in its "measured" column and its
/// memory table is one `bench/RESULTS.md` reports, so the two cannot drift apart silently.
#[test]
fn the_sizing_figures_are_the_benchmark_results() {
    let readme = std::fs::read_to_string(repo().join("deploy/README.md")).unwrap();
    let results = std::fs::read_to_string(repo().join("bench/RESULTS.md")).unwrap();
    let sizing = readme
        .split("## Sizing")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .unwrap();
    let mut figures = Vec::new();
    for row in sizing
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("|--"))
    {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        // Throughput table: | workload | measured | CPU | per core |; memory: | what | figure |.
        let figure = if cells.len() == 6 {
            cells[2]
        } else {
            cells[cells.len() - 2]
        };
        let number = figure.split_whitespace().next().unwrap_or_default();
        if number.chars().next().is_some_and(|c| c.is_ascii_digit()) {
            figures.push(number.to_owned());
        }
    }
    assert!(figures.len() >= 10, "{figures:?}");
    for number in figures {
        assert!(
            results.contains(&format!("| {number} |")),
            "deploy/README.md Sizing says {number}, bench/RESULTS.md does not"
        );
    }
    assert!(!sizing.contains("no load-test harness"));
}

#[test]
fn systemd_units_pass_systemd_analyze_verify() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("SKIPPED: systemd-analyze is not installed");
        return;
    }
    let units = deploy_files(&["service"]);
    assert!(units.len() >= 2, "{units:?}");
    let dir = tempfile::tempdir().unwrap();
    let bin = portcullis_e2e::portcullis_bin();
    for unit in &units {
        // The units name the installed path; verify them against the binary under test.
        let text = std::fs::read_to_string(unit)
            .unwrap()
            .replace("/usr/bin/portcullis", &bin.display().to_string());
        let copy = dir.path().join(unit.file_name().unwrap());
        std::fs::write(&copy, text).unwrap();
    }
    for unit in &units {
        let copy = dir.path().join(unit.file_name().unwrap());
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(&copy)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        // Outside a booted systemd, verify may warn about the host's own units; only lines
        // about ours count.
        let ours: Vec<_> = stderr
            .lines()
            .filter(|l| {
                l.contains(&*copy.display().to_string())
                    || l.contains(unit.file_name().unwrap().to_str().unwrap())
            })
            .filter(|l| !l.contains("Failed to load") || l.contains("portcullis"))
            .collect();
        assert!(
            ours.is_empty() && out.status.success(),
            "{}:\n{stderr}",
            unit.display()
        );
    }
}

#[test]
fn the_container_image_builds_and_serves_where_docker_runs() {
    let docker = Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output();
    match docker {
        Ok(out) if out.status.success() => {}
        _ => {
            eprintln!("SKIPPED: no usable Docker daemon on this machine (docker info failed); the image is not built here");
            return;
        }
    }
    let out = Command::new("docker")
        .args([
            "build",
            "-q",
            "-t",
            "portcullis:test",
            "-f",
            "deploy/container/Dockerfile",
            ".",
        ])
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = Command::new("docker")
        .args(["run", "--rm", "portcullis:test", "--version"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&run.stdout).contains("portcullis"));
}
