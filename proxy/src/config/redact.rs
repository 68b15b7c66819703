//! The effective configuration for the admin `/config` endpoint, with secrets hidden.

use super::Config;

impl Config {
    /// The effective configuration as TOML with secret values replaced by `"<redacted>"`, for
    /// the admin `/config` endpoint.
    ///
    /// Redaction goes by key name (see [`is_secret_key`]) over the serialised form rather than
    /// field by field, so that a secret added to any section later is hidden without anyone
    /// having to remember this function.
    pub fn to_redacted_toml(&self) -> String {
        let mut value = match toml::Value::try_from(self) {
            Ok(value) => value,
            Err(e) => return format!("# cannot render config: {e}\n"),
        };
        redact(&mut value);
        toml::to_string_pretty(&value).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
    }
}

/// Whether a config key holds a secret value (passwords, tokens, key passphrases). Paths to
/// files holding secrets (`htpasswd`, `keytab`) are not secrets themselves and stay visible,
/// because they are what an operator needs to check.
pub(crate) fn is_secret_key(key: &str) -> bool {
    const SECRET_WORDS: [&str; 5] = ["password", "passphrase", "secret", "token", "psk"];
    let key = key.to_ascii_lowercase();
    SECRET_WORDS.iter().any(|w| key.contains(w))
}

fn redact(value: &mut toml::Value) {
    match value {
        toml::Value::Table(table) => {
            for (key, v) in table.iter_mut() {
                if is_secret_key(key) {
                    *v = toml::Value::String("<redacted>".to_owned());
                } else {
                    redact(v);
                }
            }
        }
        toml::Value::Array(items) => items.iter_mut().for_each(redact),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    #![expect(clippy::unwrap_used, reason = "tests")]

    use super::*;

    #[test]
    fn redaction_hides_secret_keys_at_any_depth() {
        let mut value: toml::Value = toml::from_str(
            "[a]\npassword = \"hunter2\"\nkeep = \"x\"\n[[a.list]]\napi_token = \"t\"\n[b.c]\nkey_passphrase = \"p\"\n",
        )
        .unwrap();
        redact(&mut value);
        let text = value.to_string();
        for secret in ["hunter2", "\"t\"", "\"p\""] {
            assert!(!text.contains(secret), "{secret} leaked: {text}");
        }
        assert!(text.contains("keep = \"x\""), "{text}");
        assert!(
            !is_secret_key("htpasswd")
                && !is_secret_key("keytab")
                && !is_secret_key("credentials_ttl")
        );
        // The real config renders and parses back.
        let c = Config::parse("[auth]\nrealm = \"r\"\n", "t").unwrap();
        Config::parse(&c.to_redacted_toml(), "t2").unwrap();
    }
}
