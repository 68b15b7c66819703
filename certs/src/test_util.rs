//! Helpers shared by the unit tests: a runtime-generated CA and the real `openssl` binary.
#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers fail loudly"
)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use crate::{CaParams, CertificateAuthority, KeyAlgorithm};

/// A fresh ECDSA CA with a recognisable name.
pub(crate) fn test_ca() -> Arc<CertificateAuthority> {
    Arc::new(
        CertificateAuthority::generate(&CaParams {
            common_name: "Portcullis Test CA".to_owned(),
            ..CaParams::default()
        })
        .expect("generate test CA"),
    )
}

/// A fresh CA with the given key algorithm.
pub(crate) fn test_ca_with(key_algorithm: KeyAlgorithm) -> Arc<CertificateAuthority> {
    Arc::new(
        CertificateAuthority::generate(&CaParams {
            common_name: "Portcullis Test CA".to_owned(),
            key_algorithm,
            ..CaParams::default()
        })
        .expect("generate test CA"),
    )
}

/// Writes `contents` to `dir/name`.
pub(crate) fn write(dir: &Path, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

/// Runs `openssl` with `args`; returns (success, stdout + stderr). A missing binary fails the
/// test rather than skipping it.
pub(crate) fn openssl(args: &[&str]) -> (bool, String) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("the openssl binary is needed by these tests");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// Runs `openssl` and panics with its output unless it succeeds.
pub(crate) fn openssl_ok(args: &[&str]) -> String {
    let (ok, text) = openssl(args);
    assert!(ok, "openssl {args:?} failed:\n{text}");
    text
}
