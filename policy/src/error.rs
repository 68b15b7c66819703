//! The one error type of policy compilation.
//!
//! Every variant names the key it is about in the form the admin wrote it
//! (`policy.rules[3].host`), so that a failed load or reload points at one line of the file.

/// Why a `[policy]` section (or the Microsoft 365 feed data merged into it) was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompileError {
    /// A host, SNI or User-Agent pattern that does not parse.
    #[error("{key}: invalid pattern {pattern:?}: {reason}")]
    Pattern {
        key: String,
        pattern: String,
        reason: String,
    },
    /// A value of the wrong shape: an address, a port range, a method, a name.
    #[error("{key}: invalid value {value:?}: {reason}")]
    Value {
        key: String,
        value: String,
        reason: String,
    },
    /// A combination of keys that cannot mean what the admin intended.
    #[error("{key}: {reason}")]
    Conflict { key: String, reason: String },
    /// A Microsoft 365 web-service answer (`endpoints`, `version`) that does not parse.
    #[error("Microsoft 365 {document} data: {reason}")]
    Feed {
        document: &'static str,
        reason: String,
    },
}

impl CompileError {
    /// The key path the error is about, e.g. `policy.rules[3].host` (for feed data: the
    /// document, `endpoints` or `version`).
    pub fn key(&self) -> &str {
        match self {
            CompileError::Pattern { key, .. }
            | CompileError::Value { key, .. }
            | CompileError::Conflict { key, .. } => key,
            CompileError::Feed { document, .. } => document,
        }
    }
}
