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
