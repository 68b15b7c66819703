//! The GSS-API schemes of [`Auth`]: Negotiate (Kerberos through SPNEGO) and NTLM (bare, or
//! raw NTLM messages inside Negotiate), both connection-scoped through [`ConnAuth`].

#[cfg(feature = "negotiate")]
use std::{sync::Arc, time::Duration};

#[cfg(feature = "negotiate")]
use base64::Engine as _;
#[cfg(feature = "negotiate")]
use http::HeaderValue;

#[cfg(feature = "negotiate")]
use super::{negotiate, ntlm_wire, spn, Continuation};
use super::{Auth, ConnAuth, Outcome};

impl Auth {
    #[cfg(feature = "negotiate")]
    pub(super) async fn negotiate(&self, conn: &ConnAuth, param: &str) -> Outcome {
        let failed = Outcome::failed;
        let Some(negotiate) = &self.negotiate else {
            return failed("auth-scheme-not-enabled");
        };
        let token = match base64::engine::general_purpose::STANDARD.decode(param) {
            Ok(t) if !t.is_empty() => t,
            _ => return failed("auth-malformed"),
        };
        if token.starts_with(b"NTLMSSP\0") {
            if self.ntlm.is_some() {
                return self.ntlm(conn, param, "Negotiate").await;
            }
            tracing::info!(
                "client offered NTLM inside Negotiate; NTLM is not enabled (auth.schemes). Clients \
                 use Kerberos when they address the proxy by the host name of its HTTP/<fqdn> service principal"
            );
            return failed("auth-ntlm-unsupported");
        }
        let asked_for = spn::requested_spn(&token);
        self.finish(
            conn,
            negotiate.step(&conn.negotiate, token).await,
            "Negotiate",
            || {
                asked_for
                    .as_deref()
                    .unwrap_or("(not readable from the token)")
                    .to_owned()
            },
        )
    }

    /// NTLM messages, from `NTLM …` or inside `Negotiate …` (`scheme`: the one the client used,
    /// which the next leg answers in).
    #[cfg(feature = "negotiate")]
    pub(super) async fn ntlm(&self, conn: &ConnAuth, param: &str, scheme: &'static str) -> Outcome {
        let Some(ntlm) = &self.ntlm else {
            return Outcome::failed("auth-scheme-not-enabled");
        };
        let token = match base64::engine::general_purpose::STANDARD.decode(param) {
            Ok(t) if ntlm_wire::message_type(&t).is_some() => t,
            _ => return Outcome::failed("auth-malformed"),
        };
        let step = ntlm.step(&conn.negotiate, token).await;
        self.finish(conn, step, scheme, || "NTLM".to_owned())
    }

    /// Turns a GSS-API step into an outcome: a completed handshake names the connection's
    /// user; a continuing one answers 407 with the next token in `scheme`.
    #[cfg(feature = "negotiate")]
    fn finish(
        &self,
        conn: &ConnAuth,
        step: negotiate::Step,
        scheme: &'static str,
        asked_for: impl FnOnce() -> String,
    ) -> Outcome {
        let failed = Outcome::failed;
        match step {
            negotiate::Step::Complete { user, reply } => {
                let user: Arc<str> = Arc::from(user);
                if let Ok(mut slot) = conn.user.lock() {
                    *slot = Some(Arc::clone(&user));
                }
                let reply = reply.and_then(|r| {
                    HeaderValue::from_str(&format!(
                        "{scheme} {}",
                        base64::engine::general_purpose::STANDARD.encode(r)
                    ))
                    .ok()
                });
                Outcome::Authenticated { user, reply }
            }
            negotiate::Step::Continue(token) => Outcome::Challenge {
                cause: "auth-continue",
                negotiate_token: Some(Continuation {
                    scheme,
                    token: base64::engine::general_purpose::STANDARD.encode(token),
                }),
                delay: Duration::ZERO,
            },
            negotiate::Step::Failed(reason) => {
                let spn = asked_for();
                tracing::info!(client_asked_for = spn, %reason, scheme, "{scheme} handshake failed");
                failed("auth-failed")
            }
        }
    }

    #[cfg(not(feature = "negotiate"))]
    pub(super) async fn negotiate(&self, _conn: &ConnAuth, _param: &str) -> Outcome {
        Outcome::failed("auth-scheme-not-enabled")
    }

    #[cfg(not(feature = "negotiate"))]
    pub(super) async fn ntlm(
        &self,
        _conn: &ConnAuth,
        _param: &str,
        _scheme: &'static str,
    ) -> Outcome {
        Outcome::failed("auth-scheme-not-enabled")
    }
}
