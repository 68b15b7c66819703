//! htpasswd files written by Apache's own `htpasswd` (Debian package apache2-utils).

use std::path::Path;
use std::process::Command;

/// Adds or updates `user` in the htpasswd file `file`, creating it if needed. `flag` picks the
/// hash: `-B` bcrypt, `-m` apr1, `-2`/`-5` SHA-256/512 crypt, `-s` {SHA}. A copy is edited and
/// renamed over the original, as config management does, so a proxy watching the file never
/// reads it half-written.
pub fn htpasswd(file: &Path, flag: &str, user: &str, password: &str) {
    htpasswd_with(file, &[flag], user, password);
}

/// [`htpasswd`] with several options, e.g. `["-B", "-C", "12"]` for bcrypt at cost 12.
pub fn htpasswd_with(file: &Path, flags: &[&str], user: &str, password: &str) {
    let tmp = file.with_extension("new");
    if file.exists() {
        std::fs::copy(file, &tmp).unwrap_or_else(|e| panic!("{e}"));
    }
    let create = if tmp.exists() { "-b" } else { "-cb" };
    let out = Command::new("htpasswd")
        .arg(create)
        .args(flags)
        .arg(&tmp)
        .args([user, password])
        .output()
        .expect("htpasswd (Debian package apache2-utils) is needed");
    assert!(
        out.status.success(),
        "htpasswd: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::rename(&tmp, file).unwrap_or_else(|e| panic!("{e}"));
}
