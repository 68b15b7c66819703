//! What a parent is told about us: Basic credentials (the password read from a file) or a
//! Kerberos ticket (Negotiate, through libgssapi as the *initiator*, with the process's client
//! credentials: `KRB5CCNAME` or the client keytab `KRB5_CLIENT_KTNAME`).

use std::path::Path;

use base64::Engine as _;
use http::HeaderValue;

use super::PasswordFileError;
use crate::error::ProxyError;

/// The `Proxy-Authorization` a parent gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Credentials {
    None,
    /// `Basic base64(user:password)`, built once when the config is loaded.
    Basic(HeaderValue),
    /// A fresh SPNEGO token for this service (`HTTP@proxy.corp.example`) per request: a
    /// Kerberos authenticator is good for one use.
    Negotiate {
        service: String,
    },
}

impl Credentials {
    /// The header value for one request or CONNECT to `parent`. A failure to get a ticket is
    /// our configuration's problem, reported like a refused password.
    pub(crate) async fn header(&self, parent: &str) -> Result<Option<HeaderValue>, ProxyError> {
        match self {
            Credentials::None => Ok(None),
            Credentials::Basic(value) => Ok(Some(value.clone())),
            Credentials::Negotiate { service } => {
                let service = service.clone();
                let token = tokio::task::spawn_blocking(move || negotiate_token(&service))
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|r| r);
                let token = token.map_err(|reason| ProxyError::ParentCredentials {
                    parent: parent.to_owned(),
                    reason,
                })?;
                let b64 = base64::engine::general_purpose::STANDARD.encode(token);
                let mut value = HeaderValue::from_str(&format!("Negotiate {b64}"))
                    .map_err(|e| ProxyError::Upstream(e.to_string()))?;
                value.set_sensitive(true);
                Ok(Some(value))
            }
        }
    }
}

/// The first SPNEGO token for `service` (a host-based name, `HTTP@host`).
#[cfg(feature = "negotiate")]
fn negotiate_token(service: &str) -> Result<Vec<u8>, String> {
    use libgssapi::context::{ClientCtx, CtxFlags};
    use libgssapi::name::Name;
    use libgssapi::oid::{GSS_MECH_SPNEGO, GSS_NT_HOSTBASED_SERVICE};
    let name = Name::new(service.as_bytes(), Some(GSS_NT_HOSTBASED_SERVICE))
        .map_err(|e| format!("invalid service name {service:?}: {e}"))?;
    let mut ctx = ClientCtx::new(None, name, CtxFlags::empty(), Some(GSS_MECH_SPNEGO));
    let token = match ctx.step(None, None) {
        Ok(Some(token)) => token.to_vec(),
        Ok(None) => return Err("GSS-API produced no token".to_owned()),
        Err(e) => return Err(format!("no Kerberos ticket for {service}: {e}")),
    };
    // Kerberos only: with another SPNEGO mechanism installed (gss-ntlmssp) and credentials
    // for it, SPNEGO could start a multi-leg exchange the parent would answer with a 407.
    match crate::auth::spn::requested_spn(&token) {
        Some(principal) => {
            tracing::debug!(service, %principal, "Kerberos ticket for the parent");
            Ok(token)
        }
        None => Err(format!(
            "GSS-API offered no Kerberos ticket for {service} (another SPNEGO mechanism?)"
        )),
    }
}

#[cfg(not(feature = "negotiate"))]
fn negotiate_token(_service: &str) -> Result<Vec<u8>, String> {
    Err("this build has no Negotiate support (feature `negotiate`)".to_owned())
}

/// `Basic base64(user:password)`, the password being the first line of `file`.
pub(super) fn basic(
    parent: &str,
    user: &str,
    file: &Path,
) -> Result<Credentials, PasswordFileError> {
    let error = |reason: String| PasswordFileError {
        parent: parent.to_owned(),
        file: file.display().to_string(),
        reason,
    };
    let text = std::fs::read_to_string(file).map_err(|e| error(e.to_string()))?;
    let password = text.lines().next().unwrap_or("");
    if password.is_empty() {
        return Err(error("the file is empty".into()));
    }
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let mut value = HeaderValue::from_str(&format!("Basic {token}"))
        .map_err(|_| error("the password is not a valid header value".into()))?;
    value.set_sensitive(true);
    Ok(Credentials::Basic(value))
}
