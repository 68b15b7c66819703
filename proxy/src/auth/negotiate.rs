//! Negotiate (SPNEGO / Kerberos) and NTLM with `libgssapi`: the acceptor side.
//!
//! A context lives on the client connection (`ConnAuth`), so multi-leg exchanges keep their state
//! and a completed handshake authenticates the connection, not just one request.
//!
//! NTLM is GSS-API's NTLMSSP mechanism (gss-ntlmssp, loaded by MIT krb5 from
//! `/etc/gss/mech.d`): the same acceptor with credentials for that mechanism only, fed raw
//! NTLM messages (from `NTLM …`, or from `Negotiate …` when a client without a Kerberos ticket
//! offers NTLM). gss-ntlmssp checks the proof against winbind (a domain member) or
//! `NTLM_USER_FILE`; no NTLM cryptography is done here.

use std::sync::Mutex;

use libgssapi::context::{SecurityContext as _, ServerCtx};
use libgssapi::credential::{Cred, CredUsage};
use libgssapi::name::Name;
use libgssapi::oid::{Oid, OidSet, GSS_MECH_IAKERB, GSS_MECH_KRB5, GSS_NT_KRB5_PRINCIPAL};

use super::ntlm_wire;
use crate::config::NegotiateConfig;

/// The NTLMSSP mechanism, 1.3.6.1.4.1.311.2.2.10.
static GSS_MECH_NTLMSSP: Oid<'static> =
    Oid::from_slice(b"\x2b\x06\x01\x04\x01\x82\x37\x02\x02\x0a");
/// Microsoft's Kerberos OID, 1.2.840.48018.1.2.2, which Windows clients offer in SPNEGO.
static GSS_MECH_KRB5_MS: Oid<'static> = Oid::from_slice(b"\x2a\x86\x48\x82\xf7\x12\x01\x02\x02");

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
    #[error(
        "NTLM needs the GSS-API NTLMSSP mechanism (Debian package gss-ntlmssp, registered in \
         /etc/gss/mech.d): {0}"
    )]
    NoNtlm(String),
}

pub(super) struct Negotiate {
    principal: Option<String>,
    strip_realm: bool,
    /// NTLMSSP only (the `ntlm` scheme), instead of Kerberos through SPNEGO.
    ntlm: bool,
    /// Whether SPNEGO may settle on NTLM (the `ntlm` scheme is enabled). The acceptor's default
    /// credentials cover every mechanism GSS-API has loaded, so with gss-ntlmssp installed a
    /// SPNEGO token offering only NTLM would otherwise be accepted without `ntlm` enabled.
    spnego_ntlm: bool,
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
    pub(super) fn new(
        config: &NegotiateConfig,
        spnego_ntlm: bool,
    ) -> Result<Negotiate, NegotiateError> {
        let negotiate = Negotiate {
            principal: config.service_principal.clone(),
            strip_realm: config.strip_realm,
            ntlm: false,
            spnego_ntlm,
        };
        negotiate.acceptor_cred()?;
        Ok(negotiate)
    }

    /// The NTLM acceptor; checks now that the NTLMSSP mechanism is there.
    pub(super) fn ntlm(config: &NegotiateConfig) -> Result<Negotiate, NegotiateError> {
        let ntlm = Negotiate {
            principal: None,
            strip_realm: config.strip_realm,
            ntlm: true,
            spnego_ntlm: true,
        };
        ntlm.acceptor_cred()?;
        Ok(ntlm)
    }

    fn acceptor_cred(&self) -> Result<Option<Cred>, NegotiateError> {
        if self.ntlm {
            let mut mechs = OidSet::new();
            mechs
                .add(GSS_MECH_NTLMSSP)
                .map_err(|e| NegotiateError::NoNtlm(e.to_string()))?;
            return Cred::acquire(None, None, CredUsage::Accept, Some(&mechs))
                .map(Some)
                .map_err(|e| NegotiateError::NoNtlm(e.to_string()));
        }
        let Some(principal) = &self.principal else {
            // No principal: accept tickets for any service principal in the keytab. Checked
            // for Kerberos alone: with gss-ntlmssp installed, acquiring for every mechanism
            // succeeds through NTLMSSP even when the keytab is missing.
            let mut kerberos = OidSet::new();
            kerberos
                .add(GSS_MECH_KRB5)
                .map_err(|e| NegotiateError::NoCredentials(e.to_string()))?;
            Cred::acquire(None, None, CredUsage::Accept, Some(&kerberos))
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
        let mut existing = slot.0.lock().ok().and_then(|mut s| s.take());
        let token = if self.ntlm {
            if ntlm_wire::message_type(&token) == Some(1) {
                // A NEGOTIATE starts a new handshake, whatever came before on the connection.
                existing = None;
            }
            ntlm_wire::relayout(token)
        } else {
            token
        };
        let ctx = match existing {
            Some(ctx) => ctx,
            None => match self.acceptor_cred() {
                Ok(cred) => ServerCtx::new(cred),
                Err(e) => return Step::Failed(e.to_string()),
            },
        };
        let (strip_realm, ntlm_allowed) = (self.strip_realm, self.spnego_ntlm);
        let expected = match (&self.principal, self.ntlm) {
            (_, true) => "NTLMSSP".to_owned(),
            (Some(principal), false) => principal.clone(),
            (None, false) => "any principal in the keytab".to_owned(),
        };
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
            Ok(_) if ctx.is_complete() && !mechanism_allowed(&ctx, ntlm_allowed) => {
                Step::Failed("SPNEGO settled on a mechanism other than Kerberos (NTLM is not enabled in auth.schemes)".into())
            }
            Ok(reply) if ctx.is_complete() => match ctx.source_name() {
                Ok(name) => match user_name(&name.to_string(), strip_realm) {
                    Some(user) => Step::Complete {
                        user,
                        reply: reply.map(|b| b.to_vec()),
                    },
                    None => Step::Failed("the client principal is empty or has control characters".into()),
                },
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

/// Whether a completed context used Kerberos, or NTLM where NTLM is allowed.
fn mechanism_allowed(ctx: &ServerCtx, ntlm_allowed: bool) -> bool {
    match ctx.mechanism() {
        Ok(mech) => {
            [GSS_MECH_KRB5, GSS_MECH_KRB5_MS, GSS_MECH_IAKERB].contains(&mech)
                || (ntlm_allowed && mech == GSS_MECH_NTLMSSP)
        }
        Err(_) => false,
    }
}

/// The user name a completed handshake names, in one shape for policy, groups and the log:
/// Kerberos `alice@REALM`, and NTLM's `DOMAIN\alice` (which gss-ntlmssp ends with a NUL) as
/// `alice@DOMAIN`; just `alice` with `strip_realm`. `None` for an empty name or one with
/// control characters.
fn user_name(raw: &str, strip_realm: bool) -> Option<String> {
    let raw = raw.trim_end_matches('\0');
    if raw.is_empty() || raw.chars().any(char::is_control) {
        return None;
    }
    let (user, realm) = match raw.split_once('\\') {
        Some((domain, user)) => (user, (!domain.is_empty()).then_some(domain)),
        None => match raw.rsplit_once('@') {
            Some((user, realm)) => (user, Some(realm)),
            None => (raw, None),
        },
    };
    if user.is_empty() {
        return None;
    }
    Some(match realm {
        Some(realm) if !strip_realm => format!("{user}@{realm}"),
        _ => user.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::user_name;

    #[test]
    fn user_names_take_one_shape() {
        for (raw, strip, want) in [
            ("alice@LAB.TEST", false, Some("alice@LAB.TEST")),
            ("alice@LAB.TEST", true, Some("alice")),
            ("LAB\\alice\0", false, Some("alice@LAB")),
            ("LAB\\alice\0", true, Some("alice")),
            ("alice\0", false, Some("alice")),
            ("\\alice", false, Some("alice")),
            ("LAB\\", false, None),
            ("", false, None),
            ("ali\nce", false, None),
        ] {
            assert_eq!(user_name(raw, strip).as_deref(), want, "{raw:?}");
        }
    }
}
