//! Test harness: start the real `portcullis` binary and loopback origins.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

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
        if !bin.exists() {
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
