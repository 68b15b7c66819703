//! Negotiate (SPNEGO / Kerberos) with `libgssapi`: the acceptor side.
//!
//! A context lives on the client connection (`ConnAuth`), so multi-leg exchanges keep their state
//! and a completed handshake authenticates the connection, not just one request.

use std::sync::Mutex;

use libgssapi::context::{SecurityContext as _, ServerCtx};
use libgssapi::credential::{Cred, CredUsage};
use libgssapi::name::Name;
use libgssapi::oid::GSS_NT_KRB5_PRINCIPAL;

use crate::config::NegotiateConfig;

/// Why acceptor credentials cannot be acquired (`auth.negotiate`).
///
/// GSS-API's reasons are turned into text where they happen: MIT krb5 keeps the detailed
/// message ("Keytab FILE:/etc/krb5.keytab is nonexistent or empty") per thread, and a
/// `libgssapi` error formatted later on another thread only says "Key table entry not found".
#[derive(Debug, thiserror::Error)]
pub(crate) enum NegotiateError {
    #[error("no acceptor credentials in the keytab: {0}")]
    NoCredentials(String),
    #[error("invalid service principal {principal:?}: {reason}")]
    Principal { principal: String, reason: String },
    #[error("no key for {principal} in the keytab: {reason}")]
    NoKey { principal: String, reason: String },
}

pub(super) struct Negotiate {
    principal: Option<String>,
    strip_realm: bool,
}

/// Per-connection acceptor state.
#[derive(Default)]
pub(super) struct NegotiateSlot(Mutex<Option<ServerCtx>>);

pub(super) enum Step {
    Complete {
        user: String,
        reply: Option<Vec<u8>>,
    },
    Continue(Vec<u8>),
    Failed(String),
}

impl Negotiate {
    /// Checks that acceptor credentials can be acquired now, so a missing keytab or a principal
    /// not in it is a start-up error rather than a 407 for everyone.
    pub(super) fn new(config: &NegotiateConfig) -> Result<Negotiate, NegotiateError> {
        let negotiate = Negotiate {
            principal: config.service_principal.clone(),
            strip_realm: config.strip_realm,
        };
        negotiate.acceptor_cred()?;
        Ok(negotiate)
    }

    fn acceptor_cred(&self) -> Result<Option<Cred>, NegotiateError> {
        let Some(principal) = &self.principal else {
            // No principal: accept tickets for any service principal in the keytab.
            Cred::acquire(None, None, CredUsage::Accept, None)
                .map_err(|e| NegotiateError::NoCredentials(e.to_string()))?;
            return Ok(None);
        };
        let name =
            Name::new(principal.as_bytes(), Some(GSS_NT_KRB5_PRINCIPAL)).map_err(|error| {
                NegotiateError::Principal {
                    principal: principal.clone(),
                    reason: error.to_string(),
                }
            })?;
        Cred::acquire(Some(&name), None, CredUsage::Accept, None)
            .map(Some)
            .map_err(|error| NegotiateError::NoKey {
                principal: principal.clone(),
                reason: error.to_string(),
            })
    }

    /// Feeds one client token to the connection's context (GSS-API calls block on the keytab
    /// and replay cache, so this runs on the blocking pool).
    pub(super) async fn step(&self, slot: &NegotiateSlot, token: Vec<u8>) -> Step {
        let existing = slot.0.lock().ok().and_then(|mut s| s.take());
        let ctx = match existing {
            Some(ctx) => ctx,
            None => match self.acceptor_cred() {
                Ok(cred) => ServerCtx::new(cred),
                Err(e) => return Step::Failed(e.to_string()),
            },
        };
        let strip_realm = self.strip_realm;
        let expected = self
            .principal
            .clone()
            .unwrap_or_else(|| "any principal in the keytab".into());
        let joined = tokio::task::spawn_blocking(move || {
            let mut ctx = ctx;
            let result = ctx.step(&token, None);
            (ctx, result)
        })
        .await;
        let (ctx, result) = match joined {
            Ok(pair) => pair,
            Err(e) => return Step::Failed(format!("GSS-API task failed: {e}")),
        };
        match result {
            Err(e) => Step::Failed(format!("{e} (acceptor: {expected})")),
            Ok(reply) if ctx.is_complete() => match ctx.source_name() {
                Ok(name) => {
                    let mut user = name.to_string();
                    if strip_realm {
                        if let Some((u, _realm)) = user.rsplit_once('@') {
                            user = u.to_owned();
                        }
                    }
                    Step::Complete {
                        user,
                        reply: reply.map(|b| b.to_vec()),
                    }
                }
                Err(e) => Step::Failed(format!("no client principal: {e}")),
            },
            Ok(Some(token)) => {
                let token = token.to_vec();
                if let Ok(mut s) = slot.0.lock() {
                    *s = Some(ctx);
                }
                Step::Continue(token)
            }
            Ok(None) => Step::Failed("handshake neither complete nor continuing".into()),
        }
    }
}
