//! `portcullis ca init|export|check` through the real binary, checked with the real `openssl`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use portcullis_e2e::portcullis_bin;

fn portcullis(args: &[&str]) -> Output {
    Command::new(portcullis_bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run portcullis")
}

/// Runs portcullis and returns stdout, failing the test with stderr if it did not succeed.
fn portcullis_ok(args: &[&str]) -> Vec<u8> {
    let out = portcullis(args);
    assert!(
        out.status.success(),
        "portcullis {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Runs openssl with `input` on stdin; returns (success, stdout + stderr).
fn openssl(args: &[&str], input: &[u8]) -> (bool, String) {
    use std::io::Write as _;
    let mut child = Command::new("openssl")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the openssl binary is needed by these tests");
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

#[test]
fn init_writes_a_ca_with_the_right_modes_subject_and_validity() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("var/lib/portcullis");
    let data_str = data.to_str().unwrap();
    let stdout = portcullis_ok(&[
        "ca",
        "init",
        "--data-dir",
        data_str,
        "--subject",
        "Contoso Inspection CA",
        "--days",
        "2",
    ]);
    let stdout = String::from_utf8(stdout).unwrap();

    let (cert, key) = (data.join("ca.pem"), data.join("ca.key"));
    assert_eq!(mode(&cert), 0o644);
    assert_eq!(mode(&key), 0o600);
    assert_eq!(mode(&data), 0o700, "a newly created data dir is private");
    assert_eq!(
        fs::read_dir(&data).unwrap().count(),
        2,
        "nothing else left behind"
    );

    let pem = fs::read(&cert).unwrap();
    let (ok, text) = openssl(&["x509", "-noout", "-text"], &pem);
    assert!(ok, "{text}");
    assert!(
        text.contains("Subject: CN = Contoso Inspection CA"),
        "{text}"
    );
    assert!(text.contains("CA:TRUE"), "{text}");
    assert!(text.contains("Certificate Sign"), "{text}");
    // --days 2: still valid a day from now, expired three days from now.
    assert!(openssl(&["x509", "-noout", "-checkend", "86400"], &pem).0);
    assert!(!openssl(&["x509", "-noout", "-checkend", "259200"], &pem).0);
    // The key is an unencrypted PKCS#8 key that belongs to the certificate.
    let key_pem = fs::read(&key).unwrap();
    assert!(String::from_utf8_lossy(&key_pem).starts_with("-----BEGIN PRIVATE KEY-----"));
    let (_, cert_pub) = openssl(&["x509", "-noout", "-pubkey"], &pem);
    let (_, key_pub) = openssl(&["pkey", "-pubout"], &key_pem);
    assert_eq!(cert_pub, key_pub);

    // What init printed matches the certificate.
    let (_, fingerprint) = openssl(&["x509", "-noout", "-fingerprint", "-sha256"], &pem);
    let fingerprint = fingerprint.trim().rsplit('=').next().unwrap().to_owned();
    assert!(stdout.contains(&fingerprint), "{stdout}");
    assert!(stdout.contains(cert.to_str().unwrap()), "{stdout}");
}

#[test]
fn init_refuses_to_replace_a_ca_without_force() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_str().unwrap();
    portcullis_ok(&["ca", "init", "--data-dir", dir]);
    let before = (
        fs::read(tmp.path().join("ca.pem")).unwrap(),
        fs::read(tmp.path().join("ca.key")).unwrap(),
    );

    let again = portcullis(&["ca", "init", "--data-dir", dir]);
    assert!(!again.status.success());
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(
        stderr.contains("already exists") && stderr.contains("--force"),
        "{stderr}"
    );
    let after = (
        fs::read(tmp.path().join("ca.pem")).unwrap(),
        fs::read(tmp.path().join("ca.key")).unwrap(),
    );
    assert_eq!(before, after, "the existing CA is untouched");

    portcullis_ok(&["ca", "init", "--data-dir", dir, "--force"]);
    let forced = fs::read(tmp.path().join("ca.pem")).unwrap();
    assert_ne!(before.0, forced, "--force replaced the CA");
    assert_eq!(mode(&tmp.path().join("ca.key")), 0o600);
}

#[test]
fn export_writes_der_and_pem_that_openssl_reads() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_str().unwrap();
    portcullis_ok(&["ca", "init", "--data-dir", dir]);
    let pem = fs::read(tmp.path().join("ca.pem")).unwrap();

    let der = portcullis_ok(&["ca", "export", "--data-dir", dir, "--format", "der"]);
    assert_eq!(der[0], 0x30, "DER starts with a SEQUENCE");
    let (ok, der_text) = openssl(
        &[
            "x509",
            "-inform",
            "der",
            "-noout",
            "-subject",
            "-fingerprint",
            "-sha256",
        ],
        &der,
    );
    assert!(ok, "{der_text}");
    assert!(
        der_text.contains("CN = Portcullis Interception CA"),
        "{der_text}"
    );
    let (_, pem_text) = openssl(
        &["x509", "-noout", "-subject", "-fingerprint", "-sha256"],
        &pem,
    );
    assert_eq!(der_text, pem_text, "the DER is the certificate in ca.pem");

    let exported_pem = portcullis_ok(&["ca", "export", "--data-dir", dir, "--format", "pem"]);
    assert_eq!(exported_pem, pem);
    let default_format = portcullis_ok(&["ca", "export", "--data-dir", dir]);
    assert_eq!(default_format, pem);

    // Export needs the certificate only: it works for a user who cannot read the key.
    fs::remove_file(tmp.path().join("ca.key")).unwrap();
    assert_eq!(portcullis_ok(&["ca", "export", "--data-dir", dir]), pem);
}

#[test]
fn the_data_dir_comes_from_the_config_file() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("state");
    let config = tmp.path().join("portcullis.toml");
    fs::write(
        &config,
        format!("[server]\ndata_dir = {:?}\n", data.to_str().unwrap()),
    )
    .unwrap();
    let config = config.to_str().unwrap();
    portcullis_ok(&["ca", "init", "--config", config]);
    assert!(data.join("ca.pem").exists() && data.join("ca.key").exists());
    let der = portcullis_ok(&["ca", "export", "--config", config, "--format", "der"]);
    assert!(openssl(&["x509", "-inform", "der", "-noout"], &der).0);
    // --data-dir wins over the config.
    let other = tmp.path().join("other");
    portcullis_ok(&[
        "ca",
        "init",
        "--config",
        config,
        "--data-dir",
        other.to_str().unwrap(),
    ]);
    assert!(other.join("ca.pem").exists());
}

#[test]
fn check_refuses_a_key_others_can_read_unless_allowed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_str().unwrap();
    portcullis_ok(&["ca", "init", "--data-dir", dir]);
    let ok = String::from_utf8(portcullis_ok(&["ca", "check", "--data-dir", dir])).unwrap();
    assert!(
        ok.contains("OK") && ok.contains("Portcullis Interception CA"),
        "{ok}"
    );

    let key = tmp.path().join("ca.key");
    fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
    let refused = portcullis(&["ca", "check", "--data-dir", dir]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("mode 0644") && stderr.contains("ca.key"),
        "{stderr}"
    );
    portcullis_ok(&[
        "ca",
        "check",
        "--data-dir",
        dir,
        "--allow-insecure-key-permissions",
    ]);
}

#[test]
fn export_without_a_ca_names_the_missing_file() {
    let tmp = tempfile::tempdir().unwrap();
    let out = portcullis(&["ca", "export", "--data-dir", tmp.path().to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("ca.pem"), "{stderr}");
}

#[test]
fn init_can_make_an_rsa_ca_for_old_clients() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_str().unwrap();
    portcullis_ok(&["ca", "init", "--data-dir", dir, "--key-type", "rsa-2048"]);
    let (ok, text) = openssl(
        &["x509", "-noout", "-text"],
        &fs::read(tmp.path().join("ca.pem")).unwrap(),
    );
    assert!(ok, "{text}");
    assert!(
        text.contains("Public-Key: (2048 bit)") && text.contains("sha256WithRSAEncryption"),
        "{text}"
    );
    portcullis_ok(&["ca", "check", "--data-dir", dir]);
}
