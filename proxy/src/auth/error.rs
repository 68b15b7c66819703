//! Why proxy authentication could not be set up from the `[auth]` section.

use super::htpasswd::HtpasswdError;

/// A start or reload failure of [`super::Auth::new`]; [`AuthSetupError::key`] names the key to
/// fix.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AuthSetupError {
    #[error("Basic authentication needs an htpasswd file")]
    NoHtpasswd,
    #[error("{0}")]
    Htpasswd(HtpasswdError),
    /// The key of the verified-credential cache cannot be drawn.
    #[error("no randomness: {0}")]
    Random(getrandom::Error),
    #[cfg(feature = "negotiate")]
    #[error("{0}")]
    Negotiate(super::negotiate::NegotiateError),
    #[cfg(feature = "negotiate")]
    #[error("{0}")]
    Ntlm(super::negotiate::NegotiateError),
    #[cfg(not(feature = "negotiate"))]
    #[error(
        "this portcullis was built without Negotiate (Kerberos) support; rebuild with the \
         default `negotiate` feature (needs libkrb5-dev, libclang-dev, pkg-config)"
    )]
    NegotiateNotBuilt,
}

impl AuthSetupError {
    /// The config key the error is about.
    pub(crate) fn key(&self) -> &'static str {
        match self {
            AuthSetupError::NoHtpasswd
            | AuthSetupError::Htpasswd(_)
            | AuthSetupError::Random(_) => "auth.htpasswd",
            #[cfg(feature = "negotiate")]
            AuthSetupError::Negotiate(_) => "auth.negotiate",
            #[cfg(feature = "negotiate")]
            AuthSetupError::Ntlm(_) => "auth.schemes",
            #[cfg(not(feature = "negotiate"))]
            AuthSetupError::NegotiateNotBuilt => "auth.schemes",
        }
    }
}
