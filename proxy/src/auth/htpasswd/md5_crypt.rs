//! MD5 crypt: Poul-Henning Kamp's FreeBSD algorithm (`$1$`), which Apache's `htpasswd -m`
//! writes with its own magic (`$apr1$`). One algorithm, two magics; the magic is hashed in.
//!
//! No maintained crate implements it (`pwhash` did, without `$apr1$`, and is unmaintained), and
//! it is short. Test vectors come from `openssl passwd -1`/`-apr1` and `htpasswd -m`.

use md5::{Digest as _, Md5};

/// Which of the two spellings of MD5 crypt a hash uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Magic {
    /// `$1$`: crypt(3), `openssl passwd -1`.
    Md5,
    /// `$apr1$`: Apache, `htpasswd -m` (its default).
    Apr1,
}

impl Magic {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Magic::Md5 => "$1$",
            Magic::Apr1 => "$apr1$",
        }
    }
}

/// Longest salt the algorithm uses; longer salts are cut here, as crypt(3) does.
pub(crate) const MAX_SALT: usize = 8;

/// Length of the encoded checksum after the last `$`.
pub(crate) const CHECKSUM_LEN: usize = 22;

/// The alphabet of crypt(3)'s base-64 encoding.
pub(crate) const ITOA64: &[u8; 64] =
    b"./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// The full `$magic$salt$checksum` string for `password` and `salt` (at most 8 bytes used).
pub(crate) fn md5_crypt(magic: Magic, password: &[u8], salt: &[u8]) -> String {
    let magic_str = magic.as_str();
    let salt = &salt[..salt.len().min(MAX_SALT)];
    let alt = Md5::new()
        .chain_update(password)
        .chain_update(salt)
        .chain_update(password)
        .finalize();
    let mut ctx = Md5::new()
        .chain_update(password)
        .chain_update(magic_str)
        .chain_update(salt);
    for chunk in password.chunks(16) {
        ctx.update(&alt[..chunk.len()]);
    }
    // One byte per bit of the password's length: NUL for a set bit, the password's first
    // byte for a clear one (the original's "weird" step, kept for compatibility).
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
    // 1000 rounds, "to slow down" (1994): the cost is fixed.
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

    let mut out = String::with_capacity(magic_str.len() + salt.len() + 1 + CHECKSUM_LEN);
    out.push_str(magic_str);
    out.push_str(&String::from_utf8_lossy(salt));
    out.push('$');
    let mut emit = |mut v: u32, n: usize| {
        for _ in 0..n {
            out.push(char::from(ITOA64[(v & 0x3f) as usize]));
            v >>= 6;
        }
    };
    let b = |i: usize| u32::from(digest[i]);
    // The digest bytes in crypt(3)'s order, three at a time, least significant sextet first.
    for [x, y, z] in [[0, 6, 12], [1, 7, 13], [2, 8, 14], [3, 9, 15], [4, 10, 5]] {
        emit((b(x) << 16) | (b(y) << 8) | b(z), 4);
    }
    emit(b(11), 2);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (magic, password, salt, expected), each from `openssl passwd -1 -salt SALT PASSWORD` or
    /// `openssl passwd -apr1 -salt SALT PASSWORD`.
    const VECTORS: [(Magic, &str, &str, &str); 8] = [
        (
            Magic::Md5,
            "password",
            "abc",
            "$1$abc$BXBqpb9BZcZhXLgbee.0s/",
        ),
        (
            Magic::Md5,
            "",
            "saltsalt",
            "$1$saltsalt$5Jhcit4zN9UlGiA0txPkO0",
        ),
        (
            Magic::Md5,
            "a-much-longer-password-of-forty-bytes!!",
            "12345678",
            "$1$12345678$GovtZRcRM9wEu14lE5CFV/",
        ),
        (
            Magic::Md5,
            "pässwörd",
            "./AZaz09",
            "$1$./AZaz09$87xngk/H7sx3dxtRf5NlC1",
        ),
        (
            Magic::Apr1,
            "password",
            "RandSalt",
            "$apr1$RandSalt$PgCXHRrkpSt4cbyC2C6bm/",
        ),
        (Magic::Apr1, "", "x", "$apr1$x$tMwYqBfQwi3FYAr0aJc8M/"),
        (
            Magic::Apr1,
            "pässwörd",
            "./AZaz09",
            "$apr1$./AZaz09$yhWgqMrGhxqqphl02ZQn/.",
        ),
        (
            Magic::Apr1,
            "0123456789abcdef0123456789abcdef0123456789abcdefXYZ",
            "q1w2e3r4",
            "$apr1$q1w2e3r4$OLq/4Djnw0JbsrIRpUTTf.",
        ),
    ];

    #[test]
    fn matches_openssl() {
        for (magic, password, salt, expected) in VECTORS {
            assert_eq!(
                md5_crypt(magic, password.as_bytes(), salt.as_bytes()),
                expected,
                "{magic:?} {password:?}"
            );
        }
    }

    #[test]
    fn matches_htpasswd_m() {
        // htpasswd -nbm u 'pa:ss word'
        assert_eq!(
            md5_crypt(Magic::Apr1, b"pa:ss word", b"COEbUgqD"),
            "$apr1$COEbUgqD$KG8KL1TNyFAWWrdil3Wct/"
        );
    }

    #[test]
    fn the_magic_is_hashed_in_and_long_salts_are_cut() {
        let md5 = md5_crypt(Magic::Md5, b"password", b"RandSalt");
        let apr1 = md5_crypt(Magic::Apr1, b"password", b"RandSalt");
        assert_ne!(md5["$1$".len()..], apr1["$apr1$".len()..]);
        assert_eq!(
            md5_crypt(Magic::Apr1, b"password", b"RandSaltAndMore"),
            "$apr1$RandSalt$PgCXHRrkpSt4cbyC2C6bm/"
        );
    }
}
