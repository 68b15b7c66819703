#![expect(clippy::unwrap_used, reason = "tests")]

use super::*;

#[test]
fn empty_file_is_the_default() {
    let c = Config::parse("", "t").unwrap();
    assert_eq!(c.server.listen, vec!["127.0.0.1:3128".parse().unwrap()]);
    assert_eq!(c.server.connect_ports, vec![443]);
    assert_eq!(c.server.max_header_bytes, 65536);
}

#[test]
fn embedded_default_parses() {
    let c = Config::embedded_default().unwrap();
    assert_eq!(c.server.listen, vec!["127.0.0.1:3128".parse().unwrap()]);
}

#[test]
fn errors_name_file_key_and_reason() {
    let cases = [
        (
            "[server]\nlisten = [\"nope\"]\n",
            "server.listen[0]",
            "invalid socket address",
        ),
        (
            "[server]\nbogus = 1\n",
            "server.bogus",
            "unknown field `bogus`",
        ),
        (
            "[timeouts]\nclient_idle = \"ten\"\n",
            "timeouts.client_idle",
            "ten",
        ),
        (
            "[server]\nmax_header_bytes = 10\n",
            "server.max_header_bytes",
            "outside",
        ),
        (
            "[upstream]\nread_buffer_bytes = 4096\n",
            "upstream.read_buffer_bytes",
            "outside",
        ),
        (
            "[server]\nx_forwarded_for = \"maybe\"\n",
            "server.x_forwarded_for",
            "maybe",
        ),
        (
            "[resolve]\n\"a.test\" = [\"1.2.3\"]\n",
            "resolve.a.test[0]",
            "invalid",
        ),
        ("[log]\nlevel = \"[[[\"\n", "log.level", "not a valid"),
    ];
    for (text, key, reason) in cases {
        let err = Config::parse(text, "lab.toml").unwrap_err().to_string();
        assert!(err.contains("lab.toml"), "{err}");
        assert!(
            err.contains(&format!("key `{key}`")),
            "want key {key}: {err}"
        );
        assert!(err.contains(reason), "want {reason}: {err}");
    }
}

#[test]
fn admin_defaults_and_conflicts() {
    let c = Config::parse("", "t").unwrap();
    assert!(c.admin.enabled);
    assert_eq!(c.admin.listen, "127.0.0.1:9464".parse().unwrap());
    assert_eq!(c.admin.pid_file, None);
    for text in [
        "[server]\nlisten = [\"127.0.0.1:3128\"]\n[admin]\nlisten = \"127.0.0.1:3128\"\n",
        "[server]\nlisten = [\"0.0.0.0:3128\"]\n[admin]\nlisten = \"127.0.0.1:3128\"\n",
    ] {
        let err = Config::parse(text, "t").unwrap_err().to_string();
        assert!(err.contains("key `admin.listen`"), "{err}");
    }
    // Disabled, or on another port or address, is fine; so is port 0 (tests).
    for text in [
        "[server]\nlisten = [\"127.0.0.1:3128\"]\n[admin]\nenabled = false\nlisten = \"127.0.0.1:3128\"\n",
        "[server]\nlisten = [\"127.0.0.1:3128\"]\n[admin]\nlisten = \"127.0.0.2:3128\"\n",
        "[server]\nlisten = [\"127.0.0.1:0\"]\n[admin]\nlisten = \"127.0.0.1:0\"\n",
    ] {
        Config::parse(text, "t").unwrap();
    }
    let err = Config::parse("[admin]\nport = 1\n", "t")
        .unwrap_err()
        .to_string();
    assert!(err.contains("key `admin.port`"), "{err}");
}

#[test]
fn effective_config_round_trips() {
    let c = Config::parse("[server]\nconnect_ports = [443, 8443]\n", "t").unwrap();
    let again = Config::parse(&c.to_toml(), "t2").unwrap();
    assert_eq!(again.server.connect_ports, vec![443, 8443]);
}

#[test]
fn tls_values_are_parsed_once_into_their_types() {
    let c = Config::parse(
        "[tls]\nleaf_key = \"rsa-3072\"\ninsecure_upstream = [\"*.Lab.Test\", \"~mail[0-9]+\"]\n",
        "t",
    )
    .unwrap();
    assert_eq!(c.tls.leaf_key, portcullis_certs::KeyAlgorithm::Rsa3072);
    assert!(c.tls.insecure_upstream[0].matches("a.lab.test"));
    assert!(c.tls.insecure_upstream[1].matches("mail7"));
    assert_eq!(
        Config::parse("", "t").unwrap().tls.leaf_key,
        portcullis_certs::KeyAlgorithm::EcdsaP256
    );
    // They render back as text that parses to the same values.
    let text = c.to_toml();
    assert!(text.contains("leaf_key = \"rsa-3072\""), "{text}");
    assert!(text.contains("\"*.lab.test\""), "{text}");
    let again = Config::parse(&text, "t2").unwrap();
    assert_eq!(again.tls.leaf_key, c.tls.leaf_key);
    assert_eq!(again.tls.insecure_upstream, c.tls.insecure_upstream);
}

#[test]
fn bad_tls_values_name_file_and_key() {
    for (text, key, reason) in [
        (
            "[tls]\nleaf_key = \"rsa-1024\"\n",
            "tls.leaf_key",
            "\"rsa-1024\" is not one of ecdsa-p256, rsa-2048, rsa-3072",
        ),
        (
            "[tls]\ninsecure_upstream = [\"lab.test\", \"a.*.test\"]\n",
            "tls.insecure_upstream",
            "invalid host pattern \"a.*.test\": '*' is only allowed",
        ),
    ] {
        let err = Config::parse(text, "lab.toml").unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("invalid config lab.toml: key `{key}`: {reason}")),
            "{err}"
        );
    }
}

#[test]
fn configs_compare_by_value() {
    let text =
        "[server]\nconnect_ports = [443, 8443]\n[tls]\ninsecure_upstream = [\"*.lab.test\"]\n\
                [[policy.rules]]\nhost = \"a.test\"\naction = \"deny\"\nreason = \"no\"\n";
    let a = Config::parse(text, "a").unwrap();
    assert_eq!(a, Config::parse(text, "b").unwrap());
    // What check-config prints is the same configuration, and so is the embedded default's.
    assert_eq!(a, Config::parse(&a.to_toml(), "c").unwrap());
    let default = Config::embedded_default().unwrap();
    assert_eq!(default, Config::parse(&default.to_toml(), "d").unwrap());
    // A change anywhere makes the configs, and only that section, differ.
    let mut b = a.clone();
    b.tls.insecure_upstream.clear();
    assert_ne!(a, b);
    assert_ne!(a.tls, b.tls);
    assert_eq!(a.server, b.server);
    let mut c = a.clone();
    c.policy.rules[0].reason = Some("other".to_owned());
    assert_ne!(a, c);
}

#[test]
fn the_policy_is_compiled_once_and_again_only_when_it_must_be() {
    use std::sync::Arc;

    let c = Config::parse(
        "[[policy.rules]]\nhost = \"a.test\"\naction = \"tunnel\"\n",
        "t",
    )
    .unwrap();
    let policy = c.compiled_policy(&[]).unwrap();
    // Validation compiled it; asking again, or asking a clone, compiles nothing.
    assert!(Arc::ptr_eq(&policy, &c.compiled_policy(&[]).unwrap()));
    assert!(Arc::ptr_eq(
        &policy,
        &c.clone().compiled_policy(&[]).unwrap()
    ));
    // Microsoft 365 sets come from elsewhere, so they need a compile of their own.
    let sets = portcullis_policy::m365::parse_endpoints(
        r#"[{"id": 1, "serviceArea": "Exchange", "urls": ["outlook.example.test"],
             "tcpPorts": "443", "category": "Optimize"}]"#,
    )
    .unwrap();
    let with_sets = c.compiled_policy(&sets).unwrap();
    assert!(!Arc::ptr_eq(&policy, &with_sets));
    assert!(with_sets.len() > policy.len());
    // A policy changed after validation is compiled afresh, never served stale.
    let mut changed = c.clone();
    changed.policy.rules[0].action = portcullis_policy::config::ActionKind::Deny;
    changed.policy.rules[0].reason = Some("no".to_owned());
    assert!(!Arc::ptr_eq(
        &policy,
        &changed.compiled_policy(&[]).unwrap()
    ));
}

#[test]
fn a_policy_error_found_after_parsing_names_the_file_and_the_key_path() {
    let mut c = Config::parse(
        "[[policy.rules]]\nhost = \"a.test\"\naction = \"tunnel\"\n",
        "lab.toml",
    )
    .unwrap();
    c.policy.rules[0].host = vec!["a b".to_owned()];
    let err = c.compiled_policy(&[]).unwrap_err().to_string();
    assert!(
        err.starts_with(
            "invalid config lab.toml: key `policy.rules[0].host`: invalid pattern \"a b\": "
        ),
        "{err}"
    );
}

#[test]
fn parent_credentials_are_basic_or_negotiate_and_errors_name_the_key() {
    let parent = |extra: &str| {
        format!(
            "[[upstream.parents]]\nname = \"corp\"\naddress = \"proxy.corp.example:3128\"\n{extra}"
        )
    };
    let cases = [
        (
            "negotiate = true\nuser = \"portcullis\"\npassword_file = \"/etc/portcullis/corp.password\"\n",
            "upstream.parents[0].negotiate",
            "not both",
        ),
        (
            "negotiate = true\nuser = \"portcullis\"\n",
            "upstream.parents[0].negotiate",
            "not both",
        ),
        (
            "negotiate = true\npassword_file = \"/etc/portcullis/corp.password\"\n",
            "upstream.parents[0].negotiate",
            "not both",
        ),
        (
            "service_principal = \"HTTP@proxy.corp.example\"\n",
            "upstream.parents[0].service_principal",
            "only used with negotiate = true",
        ),
        (
            "negotiate = true\nservice_principal = \"HTTP/proxy.corp.example@CORP.EXAMPLE\"\n",
            "upstream.parents[0].service_principal",
            "service@host",
        ),
    ];
    for (extra, key, reason) in cases {
        let err = Config::parse(&parent(extra), "lab.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!("key `{key}`")),
            "want key {key}: {err}"
        );
        assert!(err.contains(reason), "want {reason:?}: {err}");
    }
    let c = Config::parse(
        &parent("negotiate = true\nservice_principal = \"HTTP@proxy.corp.example\"\n"),
        "lab.toml",
    )
    .unwrap();
    assert!(c.upstream.parents[0].negotiate);
    assert!(Config::parse(&parent("negotiate = true\n"), "lab.toml").is_ok());
}
