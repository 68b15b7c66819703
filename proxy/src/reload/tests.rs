#![expect(clippy::unwrap_used, reason = "tests")]

use super::*;

#[test]
fn restart_only_keys_keep_the_running_value() {
    let running = Config::parse("[server]\nlisten = [\"127.0.0.1:3128\"]\n", "a").unwrap();
    let mut new = Config::parse(
        "[server]\nlisten = [\"127.0.0.1:3129\"]\nconnect_ports = [443, 8443]\n[log]\nlevel = \"debug\"\n",
        "b",
    )
    .unwrap();
    let changed = keep_restart_only(&mut new, &running);
    assert_eq!(changed, vec!["server.listen", "log"]);
    assert_eq!(new.server.listen, running.server.listen);
    assert_eq!(new.log.level, "info");
    // Everything else is the new file's.
    assert_eq!(new.server.connect_ports, vec![443, 8443]);
    let mut same_again = running.clone();
    assert!(keep_restart_only(&mut same_again, &running).is_empty());
}

#[test]
fn overrides_apply_to_every_load() {
    let source = ConfigSource {
        path: None,
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        data_dir: Some("/tmp/x".into()),
        admin_listen: Some("off".parse().unwrap()),
    };
    let config = source.load().unwrap();
    assert_eq!(config.server.listen, source.listen);
    assert_eq!(config.server.data_dir, PathBuf::from("/tmp/x"));
    assert!(!config.admin.enabled);
    let source = ConfigSource {
        admin_listen: Some("127.0.0.1:0".parse().unwrap()),
        ..ConfigSource::default()
    };
    let config = source.load().unwrap();
    assert!(config.admin.enabled);
    assert_eq!(config.admin.listen, "127.0.0.1:0".parse().unwrap());
    assert!("9464".parse::<AdminListen>().is_err());
}

#[test]
fn a_broken_file_named_by_the_config_is_a_keyed_error() {
    let dir = tempfile::tempdir().unwrap();
    let htpasswd = dir.path().join("users");
    std::fs::write(&htpasswd, "alice:plaintext\n").unwrap();
    let config = Config::parse(
        &format!(
            "[auth]\nschemes = [\"basic\"]\nhtpasswd = \"{}\"\n[tls]\ninspect = false\n",
            htpasswd.display()
        ),
        "lab.toml",
    )
    .unwrap();
    let metrics = Metrics::new().unwrap();
    let err = load(config, None, &metrics, LoadMode::Serve)
        .err()
        .unwrap()
        .to_string();
    assert_eq!(
        err,
        format!(
            "lab.toml: key `auth.htpasswd`: {}: line 1 (user alice): not a supported password \
             hash (plaintext, DES crypt or an unsupported scheme; use htpasswd -B, -m, -2, -5 or \
             -s)",
            htpasswd.display()
        )
    );
}

#[test]
fn a_policy_error_found_at_load_names_the_file_and_the_full_key_path() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("lab.toml");
    std::fs::write(
        &file,
        "[tls]\ninspect = false\n[[policy.rules]]\nhost = \"a.test\"\naction = \"tunnel\"\n",
    )
    .unwrap();
    let mut config = Config::load(&file).unwrap();
    // Only code can change a config after validation; the load still catches it.
    config.policy.rules[0].host = vec!["*".to_owned()];
    let metrics = Metrics::new().unwrap();
    let err = load(config, None, &metrics, LoadMode::Serve)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.starts_with(&format!(
            "invalid config {}: key `policy.rules[0].host`: invalid pattern \"*\"",
            file.display()
        )),
        "{err}"
    );
}

#[test]
fn the_interceptor_is_kept_while_its_settings_are_equal() {
    let config = Config::parse("[tls]\ninspect = false\n", "t").unwrap();
    let metrics = Metrics::new().unwrap();
    let same = load(config.clone(), Some(&config), &metrics, LoadMode::Serve).unwrap();
    assert!(
        same.interceptor.is_none(),
        "unchanged [tls]: keep the interceptor"
    );
    let mut changed = config.clone();
    changed.tls.cert_cache_size += 1;
    let rebuilt = load(changed, Some(&config), &metrics, LoadMode::Serve).unwrap();
    assert!(
        rebuilt.interceptor.is_some(),
        "changed [tls]: build it again"
    );
}

#[test]
fn interception_setup_errors_name_their_key() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.pem");
    let config = Config::parse(
        &format!(
            "[server]\ndata_dir = \"{}\"\n[tls]\nupstream_ca_file = \"{}\"\n",
            dir.path().display(),
            missing.display()
        ),
        "t",
    )
    .unwrap();
    let metrics = Metrics::new().unwrap();
    let err = load(config, None, &metrics, LoadMode::Serve).err().unwrap();
    assert!(
        matches!(
            err,
            LoadError::File {
                error: FileError::Intercept(_),
                ..
            }
        ),
        "{err:?}"
    );
    let err = err.to_string();
    assert_eq!(
        err,
        format!(
            "t: key `tls.upstream_ca_file`: {}: No such file or directory (os error 2)",
            missing.display()
        )
    );
}
