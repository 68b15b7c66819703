//! htpasswd files as Apache's `htpasswd` writes them.
//!
//! Accepted hash formats: bcrypt (`$2y$`, `$2b$`, `$2a$`), APR1-MD5 (`$apr1$`, htpasswd's
//! default), `{SHA}` (unsalted SHA-1, legacy), SHA-256/512 crypt (`$5$`, `$6$`) and MD5 crypt
//! (`$1$`). Plaintext and DES crypt are refused at load time with the line number: a file that
//! "works" with entries we silently cannot verify is worse than a clear error.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use md5::{Digest as _, Md5};
use sha1::Sha1;
use subtle::ConstantTimeEq;

/// Why a stored hash was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum HashError {
    #[error("malformed $apr1$ hash")]
    Apr1,
    #[error("malformed {{SHA}} hash (not base64)")]
    ShaNotBase64,
    #[error("malformed {{SHA}} hash (not 20 bytes)")]
    ShaLength,
    /// Plaintext, DES crypt, or a scheme we do not verify (yescrypt, Argon2). Nothing of the
    /// value is shown: it may be the password itself.
    #[error(
        "not a supported password hash (plaintext, DES crypt or an unsupported scheme; use \
         htpasswd -B, -m, -2, -5 or -s)"
    )]
    Unsupported,
}

/// Why a line of an htpasswd file was refused; the line number counts from 1.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum EntryError {
    #[error("line {line}: expected user:hash")]
    NoColon { line: usize },
    #[error("line {line}: empty user name")]
    EmptyUser { line: usize },
    #[error("line {line} (user {user}): {error}")]
    Hash {
        line: usize,
        user: String,
        error: HashError,
    },
}

/// Why an htpasswd file could not be loaded; names the file.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HtpasswdError {
    #[error("{}: {error}", path.display())]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{}: {error}", path.display())]
    Entry { path: PathBuf, error: EntryError },
}

/// One stored password hash.
#[derive(Debug, Clone)]
pub(crate) enum Hash {
    /// bcrypt, MD5/SHA-256/SHA-512 crypt: verified by `pwhash`.
    Crypt(String),
    /// Apache's MD5 variant: salt and the full `$apr1$salt$hash` string.
    Apr1 { salt: String, full: String },
    /// `{SHA}` base64(SHA-1(password)).
    Sha1([u8; 20]),
}

impl Hash {
    pub(crate) fn parse(stored: &str) -> Result<Hash, HashError> {
        if let Some(rest) = stored.strip_prefix("$apr1$") {
            let salt = rest
                .split('$')
                .next()
                .filter(|s| !s.is_empty() && s.len() <= 8)
                .ok_or(HashError::Apr1)?;
            return Ok(Hash::Apr1 {
                salt: salt.to_owned(),
                full: stored.to_owned(),
            });
        }
        if let Some(b64) = stored.strip_prefix("{SHA}") {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|_| HashError::ShaNotBase64)?;
            let digest: [u8; 20] = bytes.try_into().map_err(|_| HashError::ShaLength)?;
            return Ok(Hash::Sha1(digest));
        }
        for prefix in ["$2y$", "$2b$", "$2a$", "$5$", "$6$", "$1$"] {
            if stored.starts_with(prefix) {
                // Reject hashes pwhash cannot even parse now, not at the first login.
                let _ = pwhash::unix::verify("", stored);
                return Ok(Hash::Crypt(stored.to_owned()));
            }
        }
        Err(HashError::Unsupported)
    }

    /// What verifying against this hash costs, in rough microseconds: enough to tell which of
    /// two hashes is the more expensive one.
    fn cost(&self) -> u64 {
        match self {
            Hash::Crypt(stored) => match crypt_params(stored) {
                CryptParams::Bcrypt(cost) => 60u64 << cost.min(31),
                CryptParams::Sha(_, rounds) => u64::from(rounds),
                CryptParams::Md5 => 300,
            },
            Hash::Apr1 { .. } => 300,
            Hash::Sha1(_) => 1,
        }
    }

    /// A hash of the same scheme and cost that no password matches (salt and checksum are
    /// fixed placeholders): verifying against it takes as long as against `self`.
    fn dummy_like(&self) -> Hash {
        match self {
            Hash::Crypt(stored) => Hash::Crypt(match crypt_params(stored) {
                CryptParams::Bcrypt(cost) => format!("$2y${cost:02}${DUMMY_BCRYPT}"),
                CryptParams::Sha(magic, rounds) => {
                    let checksum = if magic == '5' { 43 } else { 86 };
                    format!(
                        "${magic}$rounds={rounds}$portcullisdummy${}",
                        "x".repeat(checksum)
                    )
                }
                CryptParams::Md5 => "$1$portcull$xxxxxxxxxxxxxxxxxxxxxx".to_owned(),
            }),
            Hash::Apr1 { .. } => Hash::Apr1 {
                salt: "portcull".to_owned(),
                full: "$apr1$portcull$xxxxxxxxxxxxxxxxxxxxxx".to_owned(),
            },
            Hash::Sha1(_) => Hash::Sha1([0; 20]),
        }
    }

    /// Checks `password`; comparisons of derived values are constant-time.
    pub(crate) fn verify(&self, password: &[u8]) -> bool {
        match self {
            Hash::Crypt(stored) => pwhash::unix::verify(password, stored),
            Hash::Apr1 { salt, full } => {
                let computed = apr1(password, salt.as_bytes());
                computed.as_bytes().ct_eq(full.as_bytes()).into()
            }
            Hash::Sha1(digest) => {
                let computed = Sha1::digest(password);
                computed.as_slice().ct_eq(digest.as_slice()).into()
            }
        }
    }
}

/// Salt and checksum of the dummy bcrypt hashes (any cost): a valid-looking hash of nothing.
const DUMMY_BCRYPT: &str = "5b6a4SYx1AwE0P4FLzZ8lOfXbAr3w8zdxGW2oEzTPuL5WTXSqWXqy";

/// The parameters of a crypt(3)-style hash that decide what verifying it costs.
enum CryptParams {
    /// `$2y$`/`$2b$`/`$2a$`: the cost (log2 of the rounds).
    Bcrypt(u32),
    /// `$5$`/`$6$`: the magic digit and the rounds (5000 unless `rounds=` says otherwise).
    Sha(char, u32),
    /// `$1$`: fixed 1000 rounds.
    Md5,
}

fn crypt_params(stored: &str) -> CryptParams {
    if stored.starts_with("$2") {
        let cost = stored.get(4..6).and_then(|c| c.parse().ok()).unwrap_or(10);
        return CryptParams::Bcrypt(cost);
    }
    for magic in ['5', '6'] {
        if let Some(rest) = stored.strip_prefix(&format!("${magic}$")) {
            let rounds = rest
                .strip_prefix("rounds=")
                .and_then(|r| r.split('$').next())
                .and_then(|r| r.parse::<u32>().ok())
                // crypt(3) clamps the rounds to this range.
                .map_or(5000, |r| r.clamp(1000, 999_999_999));
            return CryptParams::Sha(magic, rounds);
        }
    }
    CryptParams::Md5
}

/// Parsed users of one htpasswd file.
#[derive(Debug)]
pub(crate) struct Users {
    users: HashMap<String, Hash>,
    /// Verified against when a user does not exist, so that an unknown name costs as much time
    /// as a wrong password (no user enumeration by timing): the scheme and cost of the file's
    /// most expensive hash — for bcrypt its highest cost — so an unknown name is never
    /// answered faster than a known one. (Mixed schemes in one file still differ among
    /// themselves: keep to one.)
    dummy: Hash,
}

impl Default for Users {
    fn default() -> Users {
        Users {
            users: HashMap::new(),
            dummy: Hash::Crypt(format!("$2y$05${DUMMY_BCRYPT}")),
        }
    }
}

impl Users {
    pub(crate) fn load(path: &Path) -> Result<Users, HtpasswdError> {
        let text = std::fs::read_to_string(path).map_err(|error| HtpasswdError::Read {
            path: path.to_owned(),
            error,
        })?;
        Users::parse(&text).map_err(|error| HtpasswdError::Entry {
            path: path.to_owned(),
            error,
        })
    }

    pub(crate) fn parse(text: &str) -> Result<Users, EntryError> {
        let mut users = HashMap::new();
        for (index, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let line_no = index + 1;
            let (user, stored) = line
                .split_once(':')
                .ok_or(EntryError::NoColon { line: line_no })?;
            if user.is_empty() {
                return Err(EntryError::EmptyUser { line: line_no });
            }
            let hash = Hash::parse(stored).map_err(|error| EntryError::Hash {
                line: line_no,
                user: user.to_owned(),
                error,
            })?;
            users.insert(user.to_owned(), hash);
        }
        let dummy = users
            .values()
            .max_by_key(|h| h.cost())
            .map(Hash::dummy_like)
            .unwrap_or_else(|| Users::default().dummy);
        Ok(Users { users, dummy })
    }

    /// What an unknown user's password is verified against.
    pub(crate) fn dummy(&self) -> &Hash {
        &self.dummy
    }

    pub(crate) fn get(&self, user: &str) -> Option<&Hash> {
        self.users.get(user)
    }

    pub(crate) fn len(&self) -> usize {
        self.users.len()
    }
}

const ITOA64: &[u8; 64] = b"./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Apache's APR1 MD5 crypt: the FreeBSD MD5 crypt algorithm with the magic `$apr1$`.
/// (`pwhash` implements the same algorithm but only with the `$1$` magic.)
pub(crate) fn apr1(password: &[u8], salt: &[u8]) -> String {
    const MAGIC: &[u8] = b"$apr1$";
    let salt = &salt[..salt.len().min(8)];
    let alt = {
        let mut d = Md5::new();
        d.update(password);
        d.update(salt);
        d.update(password);
        d.finalize()
    };
    let mut ctx = Md5::new();
    ctx.update(password);
    ctx.update(MAGIC);
    ctx.update(salt);
    let mut left = password.len();
    while left > 0 {
        ctx.update(&alt[..left.min(16)]);
        left = left.saturating_sub(16);
    }
    let mut bits = password.len();
    while bits > 0 {
        if bits & 1 == 1 {
            ctx.update([0u8]);
        } else {
            ctx.update(&password[..1]);
        }
        bits >>= 1;
    }
    let mut digest = ctx.finalize();
    for round in 0..1000 {
        let mut d = Md5::new();
        if round & 1 == 1 {
            d.update(password);
        } else {
            d.update(digest);
        }
        if round % 3 != 0 {
            d.update(salt);
        }
        if round % 7 != 0 {
            d.update(password);
        }
        if round & 1 == 1 {
            d.update(digest);
        } else {
            d.update(password);
        }
        digest = d.finalize();
    }
    let mut out = String::with_capacity(37);
    out.push_str("$apr1$");
    out.push_str(&String::from_utf8_lossy(salt));
    out.push('$');
    let mut emit = |mut v: u32, n: usize| {
        for _ in 0..n {
            out.push(ITOA64[(v & 0x3f) as usize] as char);
            v >>= 6;
        }
    };
    let b = |i: usize| u32::from(digest[i]);
    emit((b(0) << 16) | (b(6) << 8) | b(12), 4);
    emit((b(1) << 16) | (b(7) << 8) | b(13), 4);
    emit((b(2) << 16) | (b(8) << 8) | b(14), 4);
    emit((b(3) << 16) | (b(9) << 8) | b(15), 4);
    emit((b(4) << 16) | (b(10) << 8) | b(5), 4);
    emit(b(11), 2);
    out
}

#[cfg(test)]
mod tests {
    #![expect(clippy::unwrap_used, reason = "tests")]
    use super::*;

    #[test]
    fn apr1_matches_apache() {
        // From the htpasswd-verify documentation and Apache's own tools.
        assert_eq!(
            apr1(b"password", b"RandSalt"),
            "$apr1$RandSalt$PgCXHRrkpSt4cbyC2C6bm/"
        );
        let h = Hash::parse("$apr1$lZL6V/ci$eIMz/iKDkbtys/uU7LEK00").unwrap();
        assert!(h.verify(b"password"));
        assert!(!h.verify(b"Password"));
    }

    #[test]
    fn sha1_and_crypt_formats() {
        // {SHA} of "password".
        let h = Hash::parse("{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=").unwrap();
        assert!(h.verify(b"password") && !h.verify(b"passw0rd"));
        // openssl passwd -1 -salt abc password
        let md5 = Hash::parse("$1$abc$BXBqpb9BZcZhXLgbee.0s/").unwrap();
        assert!(md5.verify(b"password") && !md5.verify(b"x"));
    }

    #[test]
    fn the_dummy_has_the_costliest_scheme_and_cost_of_the_file() {
        let bcrypt = |cost: u32| {
            pwhash::bcrypt::hash_with(
                pwhash::bcrypt::BcryptSetup {
                    cost: Some(cost),
                    ..Default::default()
                },
                "pw",
            )
            .unwrap()
        };
        let sha512 = "$6$rounds=20000$saltsalt$".to_owned() + &"a".repeat(86);
        let file = format!(
            "a:{}\nb:{}\nc:$apr1$lZL6V/ci$eIMz/iKDkbtys/uU7LEK00\nd:{{SHA}}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n",
            bcrypt(4),
            bcrypt(6)
        );
        let users = Users::parse(&file).unwrap();
        match users.dummy() {
            Hash::Crypt(d) => assert!(d.starts_with("$2y$06$"), "{d}"),
            other => panic!("{other:?}"),
        }
        let users = Users::parse(&format!("{file}e:{sha512}\n")).unwrap();
        match users.dummy() {
            Hash::Crypt(d) => assert!(d.starts_with("$6$rounds=20000$"), "{d}"),
            other => panic!("{other:?}"),
        }
        let users = Users::parse("c:$apr1$lZL6V/ci$eIMz/iKDkbtys/uU7LEK00\n").unwrap();
        assert!(matches!(users.dummy(), Hash::Apr1 { .. }));
        // No password matches a dummy, whatever its scheme.
        for stored in [
            bcrypt(4),
            sha512,
            "$5$saltsalt$".to_owned() + &"a".repeat(43),
            "$1$abc$BXBqpb9BZcZhXLgbee.0s/".to_owned(),
            "$apr1$lZL6V/ci$eIMz/iKDkbtys/uU7LEK00".to_owned(),
            "{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=".to_owned(),
        ] {
            let dummy = Hash::parse(&stored).unwrap().dummy_like();
            for pw in [&b""[..], b"pw", b"password", b"x"] {
                assert!(!dummy.verify(pw), "{stored} -> {dummy:?}");
            }
        }
    }

    #[test]
    fn unknown_formats_name_the_line() {
        let err =
            Users::parse("# users\nalice:$apr1$lZL6V/ci$eIMz/iKDkbtys/uU7LEK00\nbob:plaintext\n")
                .unwrap_err();
        assert_eq!(
            err.to_string(),
            "line 3 (user bob): not a supported password hash (plaintext, DES crypt or an \
             unsupported scheme; use htpasswd -B, -m, -2, -5 or -s)"
        );
        // Nothing of a refused value is repeated: it may be a password.
        for secret in ["plaintext", "$ecret$pw", "$y$j9T$salt$hash", "{SHX}pw"] {
            let err = Hash::parse(secret).err().map(|e| e.to_string());
            assert_eq!(err, Some(HashError::Unsupported.to_string()), "{secret}");
        }
        let err = Users::parse("nocolon\n").unwrap_err();
        assert_eq!(err, EntryError::NoColon { line: 1 });
        assert_eq!(err.to_string(), "line 1: expected user:hash");
        assert!(
            Users::parse("carol:rnFl3R2gXJ7Yc\n").is_err(),
            "DES crypt must be refused"
        );
    }
}
