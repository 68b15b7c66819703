//! Property-based fuzzing of everything that parses bytes from the network or the admin:
//! request targets, Proxy-Authorization (Basic and Negotiate tokens), htpasswd files and the
//! config loader. `cargo fuzz` needs a nightly toolchain this project does not use, so these run
//! under `cargo test` with proptest, bounded by `PROPTEST_CASES` (default below), on every CI
//! run. A failing input proptest finds is kept in `proptest-regressions/` next to this file and
//! replayed first from then on.
#![expect(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use proptest::prelude::*;

use crate::auth::spn::requested_spn;
use crate::auth::{decode_basic, htpasswd};
use crate::config::Config;
use crate::http::target::Target;
use crate::intercept::hello::read_client_hello;

fn config() -> ProptestConfig {
    ProptestConfig {
        // Overridable with PROPTEST_CASES for a longer local run.
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(2000),
        ..ProptestConfig::default()
    }
}

/// Authority-like strings: mostly the characters that matter, sometimes anything.
fn authority() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z0-9.:\\[\\]@%_+-]{0,40}",
        "\\[[0-9a-fA-F:.]{0,40}\\](:[0-9]{0,6})?",
        "([0-9]{1,10}|0x[0-9a-fA-F]{1,8})(\\.[0-9x]{1,4}){0,4}(:[0-9]{1,6})?",
        any::<String>(),
    ]
}

/// DER-ish byte strings: real tags and lengths in front of noise, so the parser goes deep.
fn token() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..256),
        proptest::collection::vec(
            prop_oneof![
                Just(0x60u8),
                Just(0x30),
                Just(0xa0),
                Just(0x6e),
                Just(0x61),
                Just(0x1b),
                Just(0x82),
                Just(0x81),
                any::<u8>()
            ],
            0..256
        ),
    ]
}

/// Bytes that start like a TLS handshake record (0x16 0x03 0x01, a length, a ClientHello type)
/// before noise, so the parser gets past the first checks.
fn client_hello_like() -> impl Strategy<Value = Vec<u8>> {
    (
        any::<u16>(),
        any::<u8>(),
        proptest::collection::vec(any::<u8>(), 0..600),
    )
        .prop_map(|(len, version, body)| {
            let mut v = vec![0x16, 0x03, version % 4, (len >> 8) as u8, len as u8, 0x01];
            v.extend(body);
            v
        })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn targets_parse_without_panicking_and_round_trip(input in authority()) {
        if let Ok(t) = Target::parse(&input, Some(80)) {
            // What we connect to is printable again as an authority that parses to itself.
            let again = Target::parse(&t.authority(), None).unwrap();
            prop_assert_eq!(&again.host, &t.host);
            prop_assert_eq!(again.port, t.port);
            prop_assert!(t.port != 0);
            prop_assert!(!t.host.as_str().contains('@'));
        }
    }

    #[test]
    fn basic_credentials_never_panic_nor_carry_control_bytes(raw in proptest::collection::vec(any::<u8>(), 0..128), text in any::<String>()) {
        use base64::Engine as _;
        for param in [base64::engine::general_purpose::STANDARD.encode(&raw), text] {
            if let Some((user, password)) = decode_basic(&param) {
                prop_assert!(!user.is_empty() && !user.contains(':'));
                prop_assert!(!user.bytes().chain(password.iter().copied()).any(|b| b.is_ascii_control()));
            }
        }
    }

    #[test]
    fn negotiate_tokens_never_panic(bytes in token()) {
        let _ = requested_spn(&bytes);
    }

    #[test]
    fn client_hello_peeking_never_panics_and_ends(first in client_hello_like(), rest in proptest::collection::vec(any::<u8>(), 0..512)) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        let outcome = runtime.block_on(async {
            let mut reader: &[u8] = &rest;
            let seen = bytes::BytesMut::from(&first[..]);
            tokio::time::timeout(
                std::time::Duration::from_secs(5),
                read_client_hello(&mut reader, seen, std::time::Duration::from_millis(100)),
            )
            .await
        });
        match outcome.expect("the ClientHello reader hung") {
            // Whatever it saw is handed back whole, to be relayed untouched.
            Err(bytes) => prop_assert!(bytes.len() >= first.len()),
            Ok((accepted, seen)) => {
                let _ = accepted.client_hello().server_name();
                prop_assert!(seen.len() >= first.len());
            }
        }
    }

    #[test]
    fn htpasswd_files_never_panic(text in "([a-z]{0,8}:(\\$2[aby]\\$[0-9]{2}\\$|\\$apr1\\$|\\{SHA\\}|\\$[156]\\$)?[./A-Za-z0-9$=+]{0,60}\n?){0,5}", junk in any::<String>()) {
        for text in [text, junk] {
            if let Ok(users) = htpasswd::Users::parse(&text) {
                let _ = users;
            }
            for line in text.lines() {
                if let Some((_, stored)) = line.split_once(':') {
                    // Parsing only: verifying would run bcrypt at whatever cost the input names.
                    let _ = htpasswd::Hash::parse(stored);
                }
            }
        }
    }

    #[test]
    fn the_config_loader_never_panics(lines in proptest::collection::vec(
        prop_oneof![
            Just("[server]".to_owned()), Just("[tls]".to_owned()), Just("[[policy.rules]]".to_owned()),
            Just("[policy.outlook]".to_owned()), Just("[auth]".to_owned()), Just("[m365]".to_owned()),
            "[a-z_]{1,12} = (\"[^\"\\\\]{0,12}\"|[0-9]{1,6}|true|\\[\\]|\\[\"[a-z*.~]{0,10}\"\\])",
            any::<String>(),
        ],
        0..8,
    )) {
        let text = lines.join("\n");
        if let Err(e) = Config::parse(&text, "fuzz.toml") {
            // Every refusal names the file.
            prop_assert!(e.to_string().contains("fuzz.toml"), "{}", e);
        }
    }
}
