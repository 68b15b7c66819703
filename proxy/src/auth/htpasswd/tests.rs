#![expect(clippy::unwrap_used, reason = "tests")]

use super::*;

/// (stored, password), each written by the tool named beside it.
const WRITTEN_BY_TOOLS: [(&str, &str); 11] = [
    // htpasswd -nbB -C 4
    (
        "$2y$04$xxSDOUYBpBrXedFS5hdD2.LcMO2zlLdB/XQIKmCp5Ki42kleOaAWG",
        "pw-bcrypt",
    ),
    // htpasswd -nbB -C 4 (empty password)
    (
        "$2y$04$H5MkG1hy9zPOGZmNlmPeRunNGvZ57whf6Ht.KlgDfTrQq1woGQI2G",
        "",
    ),
    // htpasswd -nbm
    ("$apr1$Gt8Dsw/F$tSopJKlZas0YxVLljAfVB0", "pw-apr1"),
    // openssl passwd -1 -salt Q9.z/Ab
    ("$1$Q9.z/Ab$8NySE7ZV.AIrifJeLOywY.", "pw-md5crypt"),
    // htpasswd -nb2
    (
        "$5$A.2GBxnEe0qb8KkS$lnUE1vkGZtyIRA6INntW5cO0ogBCxsFooGINYiXDS47",
        "pw-sha256",
    ),
    // htpasswd -nb2 -r 1234
    (
        "$5$rounds=1234$jGXVCFGqJR0Z7Pum$vx7TqKhcxCd3lkYhtHybUh.rk76h.QKaRzTIBv5zhC9",
        "pw-sha256r",
    ),
    // htpasswd -nb5
    (
        "$6$gLZBkdqfIZzCDGkF$QEBu73SKLTgLx4AupxI6FgvNhccvDnBRn6fRFm7wqiiFFmq8Pmt59UUEbgscC7RSd987YzMZVcOcHNMOfF5mW.",
        "pw-sha512",
    ),
    // htpasswd -nb5 -r 20000
    (
        "$6$rounds=20000$WooIgJbHfBW1RRAB$EpEH0Is31sRXlsy3KUCvSWxNGXbVdDpW3tgFJc5EVegwDk1OqKOLy3r/NlHG1sSmg2zMau2ZJRg5/LUeJ4DrD0",
        "pw",
    ),
    // glibc crypt(3) with an explicit default: rounds=5000
    (
        "$6$rounds=5000$abc$usA6e2SKXu57y0i27eHq.DAdP06cXx82MQtjEiUAyf.SfWEVdyZNaRzfXifTq8IYFLlEzMo1AOkuJiDGLawSl1",
        "pw-sha512",
    ),
    // htpasswd -nbs
    ("{SHA}xijDgoRYDk0v1vFBsFGjJUAqaCA=", "pw-sha1"),
    // {SHA} of "password"
    ("{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=", "password"),
];

#[test]
fn every_format_verifies_what_its_tool_wrote() {
    for (stored, password) in WRITTEN_BY_TOOLS {
        let hash = Hash::parse(stored).unwrap();
        assert_eq!(hash.check(password.as_bytes()), Some(true), "{stored}");
        assert_eq!(hash.check(b"wrong"), Some(false), "{stored}");
        let mut longer = password.as_bytes().to_vec();
        longer.push(b'x');
        assert!(!hash.verify(&longer), "{stored}");
    }
}

/// `$2a$`, `$2b$` and `$2y$` name the same computation for the passwords htpasswd can write.
#[test]
fn bcrypt_accepts_each_prefix() {
    let (stored, password) = WRITTEN_BY_TOOLS[0];
    for prefix in ["$2a$", "$2b$", "$2y$"] {
        let hash = Hash::parse(&stored.replacen("$2y$", prefix, 1)).unwrap();
        assert!(hash.verify(password.as_bytes()), "{prefix}");
    }
    // $2x$ (crypt_blowfish's compatibility mode for a historical bug) is not accepted.
    assert!(Hash::parse(&stored.replacen("$2y$", "$2x$", 1)).is_err());
}

#[test]
fn malformed_hashes_of_known_formats_are_refused_at_load() {
    let sha256 = "lnUE1vkGZtyIRA6INntW5cO0ogBCxsFooGINYiXDS47";
    let cases: [(String, HashError); 10] = [
        (
            "$apr1$toolongsalt$tSopJKlZas0YxVLljAfVB0".into(),
            HashError::Md5Crypt { magic: "$apr1$" },
        ),
        (
            "$apr1$Gt8Dsw/F$tSopJKlZas0YxVLljAfVB".into(),
            HashError::Md5Crypt { magic: "$apr1$" },
        ),
        (
            "$1$$8NySE7ZV.AIrifJeLOywY.".into(),
            HashError::Md5Crypt { magic: "$1$" },
        ),
        // Bits past the digest's end set: no tool writes that.
        (
            "$1$Q9.z/Ab$8NySE7ZV.AIrifJeLOywYz".into(),
            HashError::Md5Crypt { magic: "$1$" },
        ),
        ("$2y$04$xxSDOUYBpBrXedFS5hdD2".into(), HashError::Bcrypt),
        (
            "$2y$03$xxSDOUYBpBrXedFS5hdD2.LcMO2zlLdB/XQIKmCp5Ki42kleOaAWG".into(),
            HashError::BcryptCost { cost: 3 },
        ),
        (
            format!("$5$rounds=999$salt${sha256}"),
            HashError::ShaCryptRounds { magic: "$5$" },
        ),
        (
            format!("$5$rounds=many$salt${sha256}"),
            HashError::ShaCrypt { magic: "$5$" },
        ),
        (
            format!("$5$${sha256}"),
            HashError::ShaCrypt { magic: "$5$" },
        ),
        (
            format!("$6$salt${}", "a".repeat(86)),
            HashError::ShaCrypt { magic: "$6$" },
        ),
    ];
    for (stored, error) in cases {
        assert_eq!(Hash::parse(&stored).unwrap_err(), error, "{stored}");
    }
    let err = Users::parse("alice:$5$rounds=10$salt$x\n").unwrap_err();
    assert_eq!(
        err.to_string(),
        "line 1 (user alice): $5$ rounds out of range (1000 to 999999999)"
    );
}

#[test]
fn the_dummy_has_the_costliest_scheme_and_cost_of_the_file() {
    let bcrypt = |cost: u32| bcrypt::hash("pw", cost).unwrap();
    let sha512 = WRITTEN_BY_TOOLS[7].0;
    let apr1 = "$apr1$Gt8Dsw/F$tSopJKlZas0YxVLljAfVB0";
    let file = format!(
        "a:{}\nb:{}\nc:{apr1}\nd:{{SHA}}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n",
        bcrypt(4),
        bcrypt(6)
    );
    let users = Users::parse(&file).unwrap();
    match users.dummy() {
        Hash::Bcrypt { cost: 6, stored } => assert!(stored.starts_with("$2y$06$"), "{stored}"),
        other => panic!("{other:?}"),
    }
    let users = Users::parse(&format!("{file}e:{sha512}\n")).unwrap();
    match users.dummy() {
        Hash::ShaCrypt {
            sha512: true,
            rounds: 20000,
            stored,
        } => assert!(stored.starts_with("$6$rounds=20000$"), "{stored}"),
        other => panic!("{other:?}"),
    }
    let users = Users::parse(&format!("c:{apr1}\n")).unwrap();
    assert!(matches!(
        users.dummy(),
        Hash::Md5Crypt {
            magic: Magic::Apr1,
            ..
        }
    ));
    let users = Users::parse("").unwrap();
    assert!(matches!(users.dummy(), Hash::Bcrypt { cost: 5, .. }));
}

/// A dummy must cost what the real hash costs: it is well-formed, so verifying it runs the whole
/// computation and ends in "no" (`Some(false)`) rather than failing early on its format.
#[test]
fn no_password_matches_a_dummy_and_each_is_verified_in_full() {
    for (stored, password) in WRITTEN_BY_TOOLS {
        let dummy = Hash::parse(stored).unwrap().dummy_like();
        let reparsed = match &dummy {
            Hash::Bcrypt { stored, .. }
            | Hash::ShaCrypt { stored, .. }
            | Hash::Md5Crypt { stored, .. } => Hash::parse(stored).map(|_| ()),
            Hash::Sha1(_) => Ok(()),
        };
        assert_eq!(reparsed, Ok(()), "{dummy:?}");
        for pw in [&b""[..], b"pw", b"password", password.as_bytes()] {
            assert_eq!(dummy.check(pw), Some(false), "{stored} -> {dummy:?}");
        }
        assert!(dummy.cost() == Hash::parse(stored).unwrap().cost());
    }
}

#[test]
fn unknown_formats_name_the_line() {
    let err = Users::parse("# users\nalice:$apr1$Gt8Dsw/F$tSopJKlZas0YxVLljAfVB0\nbob:plaintext\n")
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
