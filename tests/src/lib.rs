//! Test harness: start the real `portcullis` binary, loopback origins and real clients.
//!
//! Everything binds 127.0.0.1:0, so tests run in parallel.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

pub mod client;
pub mod icap;
pub mod kdc;
pub mod origin;
pub mod ports;
pub mod proxy;
pub mod raw_origin;
pub mod scrape;
pub mod slapd;
pub mod squid;
pub mod tls;
pub mod users;

pub use client::{curl, curl_env, exchange, raw, Curl};
pub use origin::TestOrigin;
pub use proxy::TestProxy;
pub use scrape::{scrape, scrape_until, Scrape};
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
pub use users::{htpasswd, htpasswd_with};

/// Path of the `portcullis` binary under test.
///
/// `PORTCULLIS_BIN` wins; otherwise the binary next to this test executable's target directory
/// (`target/debug/portcullis`), built with cargo if it is missing. The test command
/// (`./dev.sh test`) builds it before running the suite, so the build here is a fallback for a
/// bare `cargo test`.
pub fn portcullis_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(path) = std::env::var_os("PORTCULLIS_BIN") {
            return PathBuf::from(path);
        }
        // current_exe = <target>/<profile>/deps/<test-binary>
        let exe = std::env::current_exe().unwrap_or_else(|e| panic!("current_exe: {e}"));
        let profile_dir = exe
            .parent()
            .and_then(|deps| deps.parent())
            .unwrap_or_else(|| panic!("unexpected test binary location {}", exe.display()))
            .to_path_buf();
        let bin = profile_dir.join("portcullis");
        if is_stale(&bin) {
            let target_dir = profile_dir.parent().map(PathBuf::from).unwrap_or_default();
            let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
                .args(["build", "-p", "portcullis", "--bin", "portcullis"])
                .env("CARGO_TARGET_DIR", target_dir)
                .status()
                .unwrap_or_else(|e| panic!("cannot run cargo build: {e}"));
            assert!(status.success(), "building portcullis failed");
        }
        bin
    })
    .clone()
}

/// True when the binary is missing or older than any source file of the crates it is built
/// from, so that `cargo test -p portcullis-e2e` never runs a stale proxy.
fn is_stale(bin: &std::path::Path) -> bool {
    let Ok(built) = std::fs::metadata(bin).and_then(|m| m.modified()) else {
        return true;
    };
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut dirs: Vec<PathBuf> = ["proxy", "policy", "certs", "deploy"]
        .iter()
        .map(|d| root.join(d))
        .collect();
    let mut files = vec![root.join("Cargo.toml"), root.join("Cargo.lock")];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files.iter().any(|f| {
        std::fs::metadata(f)
            .and_then(|m| m.modified())
            .is_ok_and(|m| m > built)
    })
}
