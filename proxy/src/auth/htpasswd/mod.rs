//! htpasswd files as Apache's `htpasswd` writes them.
//!
//! Accepted hash formats: bcrypt (`$2y$`, `$2b$`, `$2a$`), APR1-MD5 (`$apr1$`, htpasswd's
//! default), `{SHA}` (unsalted SHA-1, legacy), SHA-256/512 crypt (`$5$`, `$6$`) and MD5 crypt
//! (`$1$`). Plaintext and DES crypt are refused at load time with the line number, and so is a
//! hash of a known format that is malformed: a file that "works" with entries we silently
//! cannot verify is worse than a clear error.
//!
//! bcrypt comes from the `bcrypt` crate, SHA-crypt from `sha-crypt`, MD5 crypt from
//! [`md5_crypt`] (one function for `$1$` and `$apr1$`).

mod md5_crypt;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use sha1::{Digest as _, Sha1};
use sha_crypt::password_hash::{Error as PasswordHashError, PasswordVerifier as _};
use subtle::ConstantTimeEq;

use md5_crypt::{md5_crypt, Magic, ITOA64};

/// Why a stored hash was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum HashError {
    #[error("malformed bcrypt hash")]
    Bcrypt,
    #[error("bcrypt cost {cost} out of range (4 to 31)")]
    BcryptCost { cost: u32 },
    #[error("malformed {magic} hash")]
    Md5Crypt { magic: &'static str },
    #[error("malformed {magic} hash")]
    ShaCrypt { magic: &'static str },
    #[error("{magic} rounds out of range (1000 to 999999999)")]
    ShaCryptRounds { magic: &'static str },
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

/// One stored password hash, checked for well-formedness when parsed.
#[derive(Debug, Clone)]
pub(crate) enum Hash {
    /// `$2y$`/`$2b$`/`$2a$`; `cost` is log2 of the rounds.
    Bcrypt { cost: u32, stored: String },
    /// `$5$` (SHA-256) or `$6$` (SHA-512) crypt; `rounds` is 5000 unless the hash names it.
    ShaCrypt {
        sha512: bool,
        rounds: u32,
        stored: String,
    },
    /// `$1$` or `$apr1$`: the salt and the whole stored string, which a recomputation must
    /// reproduce.
    Md5Crypt {
        magic: Magic,
        salt: String,
        stored: String,
    },
    /// `{SHA}` base64(SHA-1(password)).
    Sha1([u8; 20]),
}

impl Hash {
    pub(crate) fn parse(stored: &str) -> Result<Hash, HashError> {
        for magic in [Magic::Apr1, Magic::Md5] {
            if let Some(rest) = stored.strip_prefix(magic.as_str()) {
                return parse_md5_crypt(magic, rest).map(|salt| Hash::Md5Crypt {
                    magic,
                    salt: salt.to_owned(),
                    stored: stored.to_owned(),
                });
            }
        }
        if ["$2y$", "$2b$", "$2a$"]
            .iter()
            .any(|p| stored.starts_with(p))
        {
            let parts: bcrypt::HashParts = stored.parse().map_err(|_| HashError::Bcrypt)?;
            let cost = parts.get_cost();
            if !(4..=31).contains(&cost) {
                return Err(HashError::BcryptCost { cost });
            }
            return Ok(Hash::Bcrypt {
                cost,
                stored: stored.to_owned(),
            });
        }
        for (magic, sha512) in [("$5$", false), ("$6$", true)] {
            if let Some(rest) = stored.strip_prefix(magic) {
                let rounds = parse_sha_crypt(magic, sha512, rest)?;
                return Ok(Hash::ShaCrypt {
                    sha512,
                    rounds,
                    stored: stored.to_owned(),
                });
            }
        }
        if let Some(b64) = stored.strip_prefix("{SHA}") {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|_| HashError::ShaNotBase64)?;
            let digest: [u8; 20] = bytes.try_into().map_err(|_| HashError::ShaLength)?;
            return Ok(Hash::Sha1(digest));
        }
        Err(HashError::Unsupported)
    }

    /// What verifying against this hash costs, in rough microseconds: enough to tell which of
    /// two hashes is the more expensive one.
    fn cost(&self) -> u64 {
        match self {
            Hash::Bcrypt { cost, .. } => 60u64 << cost,
            Hash::ShaCrypt { rounds, .. } => u64::from(*rounds),
            Hash::Md5Crypt { .. } => 300,
            Hash::Sha1(_) => 1,
        }
    }

    /// A hash of the same scheme and cost that no password matches (salt and checksum are
    /// fixed placeholders, well-formed so that verifying runs the whole computation): verifying
    /// against it takes as long as against `self`.
    fn dummy_like(&self) -> Hash {
        match *self {
            Hash::Bcrypt { cost, .. } => Hash::Bcrypt {
                cost,
                stored: format!("$2y${cost:02}${DUMMY_BCRYPT}"),
            },
            Hash::ShaCrypt { sha512, rounds, .. } => {
                let (magic, checksum) = if sha512 { ("$6$", 86) } else { ("$5$", 43) };
                // An all-zero digest: canonical in crypt's base 64, and no password makes it.
                let stored = format!(
                    "{magic}rounds={rounds}$portcullisdummy${}",
                    ".".repeat(checksum)
                );
                Hash::ShaCrypt {
                    sha512,
                    rounds,
                    stored,
                }
            }
            Hash::Md5Crypt { magic, .. } => Hash::Md5Crypt {
                magic,
                salt: "portcull".to_owned(),
                stored: format!(
                    "{}portcull${}",
                    magic.as_str(),
                    ".".repeat(md5_crypt::CHECKSUM_LEN)
                ),
            },
            Hash::Sha1(_) => Hash::Sha1([0; 20]),
        }
    }

    /// Checks `password`; comparisons of derived values are constant-time.
    pub(crate) fn verify(&self, password: &[u8]) -> bool {
        self.check(password) == Some(true)
    }

    /// Whether `password` matches, or `None` when the stored hash could not be used (which
    /// parsing rules out).
    fn check(&self, password: &[u8]) -> Option<bool> {
        match self {
            // Both crates compare the derived digests in constant time themselves.
            Hash::Bcrypt { stored, .. } => bcrypt::verify(password, stored).ok(),
            Hash::ShaCrypt { stored, .. } => {
                match sha_crypt::ShaCrypt::default().verify_password(password, stored.as_str()) {
                    Ok(()) => Some(true),
                    Err(PasswordHashError::PasswordInvalid) => Some(false),
                    Err(_) => None,
                }
            }
            Hash::Md5Crypt {
                magic,
                salt,
                stored,
            } => {
                let computed = md5_crypt(*magic, password, salt.as_bytes());
                Some(computed.as_bytes().ct_eq(stored.as_bytes()).into())
            }
            Hash::Sha1(digest) => {
                let computed = Sha1::digest(password);
                Some(computed.as_slice().ct_eq(digest.as_slice()).into())
            }
        }
    }
}

/// Salt and checksum of the dummy bcrypt hashes (any cost): a valid-looking hash of nothing.
const DUMMY_BCRYPT: &str = "5b6a4SYx1AwE0P4FLzZ8lOfXbAr3w8zdxGW2oEzTPuL5WTXSqWXqy";

/// Checks `salt$checksum` after an MD5-crypt magic; returns the salt.
fn parse_md5_crypt(magic: Magic, rest: &str) -> Result<&str, HashError> {
    let malformed = HashError::Md5Crypt {
        magic: magic.as_str(),
    };
    let (salt, checksum) = rest.split_once('$').ok_or(malformed.clone())?;
    let salt_ok = !salt.is_empty() && salt.len() <= md5_crypt::MAX_SALT;
    if !salt_ok || !is_crypt_base64(checksum, md5_crypt::CHECKSUM_LEN) {
        return Err(malformed);
    }
    Ok(salt)
}

/// Checks `[rounds=N$]salt$checksum` after a SHA-crypt magic; returns the rounds.
fn parse_sha_crypt(magic: &'static str, sha512: bool, rest: &str) -> Result<u32, HashError> {
    let malformed = HashError::ShaCrypt { magic };
    let (rounds, rest) = match rest.strip_prefix("rounds=") {
        Some(r) => {
            let (n, rest) = r.split_once('$').ok_or(malformed.clone())?;
            let n: u32 = n.parse().map_err(|_| malformed.clone())?;
            // crypt(3) would clamp such a count; sha-crypt would read the field as the salt.
            // Neither is what the file's author meant.
            if sha_crypt::Params::new(n).is_err() {
                return Err(HashError::ShaCryptRounds { magic });
            }
            (n, rest)
        }
        None => (sha_crypt::Params::RECOMMENDED_ROUNDS, rest),
    };
    let (salt, checksum) = rest.split_once('$').ok_or(malformed.clone())?;
    let checksum_len = if sha512 { 86 } else { 43 };
    if salt.is_empty() || salt.len() > 16 || !is_crypt_base64(checksum, checksum_len) {
        return Err(malformed);
    }
    Ok(rounds)
}

/// `text` is `len` characters of crypt(3)'s base 64 whose unused trailing bits are zero (the
/// decoders refuse anything else).
fn is_crypt_base64(text: &str, len: usize) -> bool {
    let value = |c: u8| ITOA64.iter().position(|&a| a == c);
    let Some(last) = text.bytes().last().and_then(value) else {
        return false;
    };
    // Characters encode 6 bits, least significant first, so the last one's high bits are
    // padding: 22 chars → 16 bytes (4 padding bits), 43 → 32 (2), 86 → 64 (4).
    let padding = len * 6 % 8;
    let trailing_ok = last >> (6 - padding) == 0;
    text.len() == len && text.bytes().all(|c| value(c).is_some()) && trailing_ok
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
            dummy: Hash::Bcrypt {
                cost: 5,
                stored: format!("$2y$05${DUMMY_BCRYPT}"),
            },
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

#[cfg(test)]
mod tests;
