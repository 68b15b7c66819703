//! Why a configuration was rejected. Every error names the key path it is about, so that a
//! failed start or reload points at one line of the file.

use portcullis_policy::CompileError;

/// A configuration that could not be loaded; `Display` names the file, the key and the reason.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The OS reason is part of the message (and not the error's source), so it is said once.
    #[error("cannot read config file {file}: {error}")]
    Read { file: String, error: std::io::Error },
    #[error("invalid config {file}: {error}")]
    Invalid { file: String, error: KeyError },
}

impl ConfigError {
    /// `error`, found in the config read from `file`.
    pub(crate) fn invalid(file: &str, error: impl Into<KeyError>) -> ConfigError {
        ConfigError::Invalid {
            file: file.to_owned(),
            error: error.into(),
        }
    }
}

/// A rejected value: the key path it sits at (`server.listen[0]`, `policy.rules[3].host`) and
/// what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("key `{key}`: {reason}")]
pub struct KeyError {
    pub key: String,
    pub reason: String,
}

impl KeyError {
    pub(crate) fn new(key: impl Into<String>, reason: impl Into<String>) -> KeyError {
        KeyError {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

/// The policy compiler names the key itself (`policy.rules[3].host: invalid pattern ...`); the
/// key moves to [`KeyError::key`] so that it is not said twice.
impl From<CompileError> for KeyError {
    fn from(e: CompileError) -> KeyError {
        let key = e.key().to_owned();
        let text = e.to_string();
        let reason = match text.strip_prefix(&format!("{key}: ")) {
            Some(reason) => reason.to_owned(),
            None => text,
        };
        KeyError { key, reason }
    }
}
