//! `check-config` tells the truth: for every kind of file a config names, it fails exactly when
//! `run` fails, with the same one-line message naming the config file, the key and the cause
//! (said once); and it writes nothing. Also the start-up errors and log lines an operator meets
//! first: the admin listener's address in use, `--admin-listen`, an invalid `RUST_LOG`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use portcullis_e2e::{htpasswd, portcullis_bin};

fn portcullis(args: &[&str]) -> Output {
    Command::new(portcullis_bin())
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("run portcullis")
}

fn last_line(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .lines()
        .last()
        .unwrap_or_default()
        .to_owned()
}

/// `check-config FILE` and `run --config FILE` (on free ports, admin off) both fail, with the
/// same last line; returns it.
fn both_fail_alike(config: &Path) -> String {
    let file = config.to_str().unwrap();
    let check = portcullis(&["check-config", file]);
    assert!(
        !check.status.success(),
        "check-config accepted {file}: {}",
        String::from_utf8_lossy(&check.stdout)
    );
    let run = Command::new(portcullis_bin())
        .args(["run", "--config", file, "--listen", "127.0.0.1:0"])
        .args(["--admin-listen", "off"])
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!run.status.success(), "run started with {file}");
    let (check, run) = (last_line(&check.stderr), last_line(&run.stderr));
    assert_eq!(check, run, "check-config and run disagree");
    assert!(
        check.starts_with(&format!("portcullis: {file}: key `")),
        "{check}"
    );
    assert!(
        !check.contains("invalid config"),
        "the config is valid: {check}"
    );
    check
}

fn write_config(dir: &Path, name: &str, toml: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, toml).unwrap();
    path
}

/// Each OS error is printed once: "…(os error 2)" not "…(os error 2): …(os error 2)".
fn says_once(line: &str, cause: &str) {
    assert_eq!(
        line.matches(cause).count(),
        1,
        "{cause:?} not exactly once in: {line}"
    );
}

#[test]
fn a_missing_htpasswd_file_fails_check_config_as_it_fails_run() {
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users");
    let config = write_config(
        dir.path(),
        "auth.toml",
        &format!(
            "[auth]\nschemes = [\"basic\"]\nhtpasswd = \"{}\"\n[tls]\ninspect = false\n",
            users.display()
        ),
    );
    let line = both_fail_alike(&config);
    assert!(line.contains("key `auth.htpasswd`"), "{line}");
    assert!(line.contains(&users.display().to_string()), "{line}");
    says_once(&line, "No such file or directory (os error 2)");

    // A plaintext line (Apache's `htpasswd -p`) is refused without repeating any of it.
    htpasswd(&users, "-p", "bob", "s3cret-Passw0rd");
    let line = both_fail_alike(&config);
    assert!(
        line.contains("line 1 (user bob): not a supported password hash"),
        "{line}"
    );
    assert!(!line.contains("s3c"), "the password leaked: {line}");

    // And once it is fixed, check-config says OK where run starts.
    htpasswd(&users, "-B", "bob", "s3cret-Passw0rd");
    let out = portcullis(&["check-config", config.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(last_line(&out.stderr).ends_with("auth.toml: OK"));
}

#[test]
fn an_unusable_ca_fails_check_config_as_it_fails_run() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let other = dir.path().join("other");
    for d in [&data, &other] {
        let out = portcullis(&["ca", "init", "--data-dir", d.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let config = write_config(
        dir.path(),
        "ca.toml",
        &format!("[server]\ndata_dir = \"{}\"\n", data.display()),
    );
    let key = data.join("ca.key");

    // A key others can read: the message names the setting that accepts it.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let line = both_fail_alike(&config);
    assert!(line.contains("key `server.data_dir`"), "{line}");
    assert!(line.contains("has mode 0644"), "{line}");
    assert!(
        line.contains("tls.allow_insecure_key_permissions = true"),
        "{line}"
    );

    // The key of another CA.
    std::fs::copy(other.join("ca.key"), &key).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let line = both_fail_alike(&config);
    assert!(
        line.ends_with("the CA key does not match the CA certificate's public key"),
        "{line}"
    );

    // A directory where the key should be is said to be one, not "has mode 0755".
    std::fs::remove_file(&key).unwrap();
    std::fs::create_dir(&key).unwrap();
    let line = both_fail_alike(&config);
    assert!(
        line.ends_with(&format!("{} is not a regular file", key.display())),
        "{line}"
    );

    // A missing key keeps the operating system's reason.
    std::fs::remove_dir(&key).unwrap();
    let line = both_fail_alike(&config);
    assert!(
        line.ends_with(&format!(
            "cannot read {}: No such file or directory (os error 2)",
            key.display()
        )),
        "{line}"
    );
}

#[test]
fn a_missing_upstream_ca_file_fails_check_config_as_it_fails_run() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("origin-ca.pem");
    let config = write_config(
        dir.path(),
        "upstream-ca.toml",
        &format!(
            "[server]\ndata_dir = \"{}\"\n[tls]\nupstream_ca_file = \"{}\"\n",
            dir.path().join("data").display(),
            missing.display()
        ),
    );
    let line = both_fail_alike(&config);
    assert!(line.contains("key `tls.upstream_ca_file`"), "{line}");
    says_once(&line, "No such file or directory (os error 2)");
    std::fs::write(&missing, "not a certificate\n").unwrap();
    let line = both_fail_alike(&config);
    assert!(
        line.ends_with(&format!("{}: no certificates", missing.display())),
        "{line}"
    );
}

#[test]
fn a_missing_hosts_file_fails_check_config_as_it_fails_run() {
    let dir = tempfile::tempdir().unwrap();
    let hosts = dir.path().join("hosts");
    let config = write_config(
        dir.path(),
        "hosts.toml",
        &format!(
            "[upstream]\nhosts_file = \"{}\"\n[tls]\ninspect = false\n",
            hosts.display()
        ),
    );
    let line = both_fail_alike(&config);
    assert!(line.contains("key `upstream.hosts_file`"), "{line}");
    says_once(&line, "No such file or directory (os error 2)");
}

#[test]
fn a_missing_keytab_fails_check_config_as_it_fails_run() {
    let dir = tempfile::tempdir().unwrap();
    let keytab = dir.path().join("proxy.keytab");
    let config = write_config(
        dir.path(),
        "keytab.toml",
        &format!(
            "[auth]\nschemes = [\"negotiate\"]\nnegotiate.keytab = \"{}\"\n[tls]\ninspect = false\n",
            keytab.display()
        ),
    );
    let line = both_fail_alike(&config);
    assert!(line.contains("key `auth.negotiate"), "{line}");
    assert!(line.contains(&keytab.display().to_string()), "{line}");
}

#[test]
fn check_config_accepts_a_first_start_without_writing_the_ca() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("var/lib/portcullis");
    let config = write_config(
        dir.path(),
        "first.toml",
        &format!("[server]\ndata_dir = \"{}\"\n", data.display()),
    );
    let out = portcullis(&["check-config", config.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("`portcullis run` will create one"),
        "{stderr}"
    );
    assert!(!data.exists(), "check-config wrote to the data directory");
}

#[test]
fn the_admin_listener_is_named_in_help_and_in_its_bind_error() {
    let help = portcullis(&["run", "--help"]);
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("--admin-listen <ADDR|off>"), "{help}");
    assert!(help.contains("127.0.0.1:9464"), "{help}");

    // What a second instance meets: the admin address is taken.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let data = tempfile::tempdir().unwrap();
    let out = Command::new(portcullis_bin())
        .args(["run", "--listen", "127.0.0.1:0", "--admin-listen", &addr])
        .arg("--data-dir")
        .arg(data.path())
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let line = last_line(&out.stderr);
    assert!(
        line.starts_with(&format!(
            "portcullis: cannot listen on {addr} (admin.listen): "
        )),
        "{line}"
    );
    says_once(&line, "Address already in use (os error 98)");
    assert!(line.contains("--admin-listen off"), "{line}");
}

/// Start-up says which version runs and where it listens, and an invalid `RUST_LOG` is a warning
/// rather than silence.
#[test]
fn start_up_logs_the_version_and_every_listener() {
    let data = tempfile::tempdir().unwrap();
    let mut child = Command::new(portcullis_bin())
        .args(["run", "--listen", "127.0.0.1:0", "--admin-listen", "off"])
        .arg("--data-dir")
        .arg(data.path())
        .env("RUST_LOG", "portcullis=loud")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stderr)).map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut lines = Vec::new();
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(20)) {
        let ready = line.contains(" ready: ");
        lines.push(line);
        if ready {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let log = lines.join("\n");
    assert!(
        log.contains("RUST_LOG=\"portcullis=loud\" is not a valid log filter"),
        "{log}"
    );
    let version = env!("CARGO_PKG_VERSION");
    assert!(
        log.contains(&format!("portcullis {version} starting")),
        "{log}"
    );
    let ready = lines.last().unwrap();
    assert!(
        ready.contains(&format!("portcullis {version} ready: proxy 127.0.0.1:")),
        "{log}"
    );
    assert!(ready.ends_with("admin off"), "{ready}");
}
