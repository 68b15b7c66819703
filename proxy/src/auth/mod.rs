//! Proxy authentication: Basic (htpasswd), Negotiate (Kerberos) and NTLM (GSS-API NTLMSSP),
//! decided per request before anything is forwarded or tunnelled.
//!
//! Negotiate and NTLM authenticate the connection: once a client connection has a user, its later
//! requests (and everything inside a CONNECT tunnel) carry that user without a new handshake.
//! Basic credentials come with every request and are checked against a verified-credential
//! cache, so bcrypt does not run per request.

mod basic;
mod error;
mod gss;
pub(crate) mod htpasswd;
#[cfg(feature = "negotiate")]
mod negotiate;
#[cfg(feature = "negotiate")]
mod ntlm_wire;
pub(crate) mod spn;
mod throttle;

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use http::header::{HeaderMap, HeaderValue, PROXY_AUTHORIZATION};
use ipnet::IpNet;

use crate::config::{AuthConfig, AuthScheme};
use crate::metrics::{AuthAttemptScheme, AuthCounts};

pub(crate) use error::AuthSetupError;

/// Counters, read by the metrics at scrape time ([`crate::metrics::AuthCounters`]).
#[derive(Debug, Default)]
pub(crate) struct AuthStats {
    pub hash_verifications: AtomicU64,
    pub cache_hits: AtomicU64,
    /// `[successes, failures]` per scheme presented, in [`AuthAttemptScheme::ALL`] order.
    attempts: [[AtomicU64; 2]; 4],
    pub throttled: AtomicU64,
}

impl AuthStats {
    /// Counts one attempt that presented credentials in `scheme`.
    pub(crate) fn attempt(&self, scheme: AuthAttemptScheme, success: bool) {
        let [successes, failures] = &self.attempts[scheme as usize];
        let counter = if success { successes } else { failures };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// What one client connection knows about its user.
#[derive(Default)]
pub(crate) struct ConnAuth {
    user: Mutex<Option<Arc<str>>>,
    /// The Basic credentials this connection last had verified. A keep-alive client repeats
    /// the same `Proxy-Authorization` on every request; comparing its bytes is much cheaper
    /// than decoding and hashing it again for the credentials cache.
    basic: Mutex<Option<BasicMemo>>,
    #[cfg(feature = "negotiate")]
    negotiate: negotiate::NegotiateSlot,
}

struct BasicMemo {
    /// The whole `Proxy-Authorization` value, byte for byte.
    value: Box<[u8]>,
    verified: basic::Verified,
}

impl ConnAuth {
    /// The user of `value` if this connection presented exactly these bytes before, they were
    /// good, and neither the credentials TTL nor a reload of the file has passed since.
    fn remembered_basic(&self, value: &[u8], basic: &basic::Basic) -> Option<Arc<str>> {
        let memo = self.basic.lock().ok()?;
        let memo = memo.as_ref()?;
        let fresh = *memo.value == *value
            && memo.verified.until > std::time::Instant::now()
            && basic.is_current(memo.verified.generation);
        fresh.then(|| Arc::clone(&memo.verified.user))
    }
}

/// The outcome of authenticating one request.
pub(crate) enum Outcome {
    /// Exempt by destination or client address; no user.
    Exempt,
    Authenticated {
        user: Arc<str>,
        /// A Negotiate mutual-authentication token for the successful response.
        reply: Option<HeaderValue>,
    },
    /// Answer 407. `cause` goes to `X-Portcullis-Error`; `negotiate_token` continues a
    /// multi-leg Negotiate exchange. `delay`: hold the answer this long (repeated failures);
    /// the caller waits, after committing the attempt to the access log, so that a client
    /// leaving during the wait still leaves its line.
    Challenge {
        cause: &'static str,
        negotiate_token: Option<Continuation>,
        delay: Duration,
    },
}

/// The next leg of a multi-leg handshake: the scheme the client used (`Negotiate` or `NTLM`)
/// and the base64 token the 407 carries for it.
pub(crate) struct Continuation {
    scheme: &'static str,
    token: String,
}

impl Outcome {
    fn failed(cause: &'static str) -> Outcome {
        Outcome::Challenge {
            cause,
            negotiate_token: None,
            delay: Duration::ZERO,
        }
    }
}

pub(crate) struct Auth {
    schemes: Vec<AuthScheme>,
    realm: String,
    basic: Option<Arc<basic::Basic>>,
    #[cfg(feature = "negotiate")]
    negotiate: Option<negotiate::Negotiate>,
    #[cfg(feature = "negotiate")]
    ntlm: Option<negotiate::Negotiate>,
    exempt_clients: Vec<IpNet>,
    throttle: throttle::Throttle,
    pub stats: AuthStats,
}

impl crate::metrics::AuthCounters for Auth {
    fn auth_counts(&self) -> AuthCounts {
        use std::sync::atomic::Ordering::Relaxed;
        let s = &self.stats;
        AuthCounts {
            attempts: s
                .attempts
                .each_ref()
                .map(|[ok, failed]| [ok.load(Relaxed), failed.load(Relaxed)]),
            throttled: s.throttled.load(Relaxed),
            hash_verifications: s.hash_verifications.load(Relaxed),
            credential_cache_hits: s.cache_hits.load(Relaxed),
        }
    }
}

/// Longest `Proxy-Authorization` value looked at; Kerberos tokens with a large PAC reach ~12 KB.
const MAX_CREDENTIALS: usize = 48 * 1024;

impl Auth {
    /// Builds the authenticator, or `None` when no scheme is enabled. Errors name the key.
    pub(crate) fn new(config: &AuthConfig) -> Result<Option<Auth>, AuthSetupError> {
        if config.schemes.is_empty() {
            return Ok(None);
        }
        let basic = if config.schemes.contains(&AuthScheme::Basic) {
            let path = config.htpasswd.clone().ok_or(AuthSetupError::NoHtpasswd)?;
            let basic = basic::Basic::load(path, config.credentials_ttl)?;
            if basic.user_count() == 0 {
                tracing::warn!("the htpasswd file has no users; every Basic login will fail");
            }
            Some(Arc::new(basic))
        } else {
            None
        };
        #[cfg(feature = "negotiate")]
        let negotiate = if config.schemes.contains(&AuthScheme::Negotiate) {
            let spnego_ntlm = config.schemes.contains(&AuthScheme::Ntlm);
            Some(
                negotiate::Negotiate::new(&config.negotiate, spnego_ntlm)
                    .map_err(AuthSetupError::Negotiate)?,
            )
        } else {
            None
        };
        #[cfg(feature = "negotiate")]
        let ntlm = if config.schemes.contains(&AuthScheme::Ntlm) {
            Some(negotiate::Negotiate::ntlm(&config.negotiate).map_err(AuthSetupError::Ntlm)?)
        } else {
            None
        };
        #[cfg(not(feature = "negotiate"))]
        if config
            .schemes
            .iter()
            .any(|s| matches!(s, AuthScheme::Negotiate | AuthScheme::Ntlm))
        {
            return Err(AuthSetupError::NegotiateNotBuilt);
        }
        // In the configured order: clients pick the first scheme they support.
        let mut schemes: Vec<AuthScheme> = Vec::new();
        for scheme in &config.schemes {
            if !schemes.contains(scheme) {
                schemes.push(*scheme);
            }
        }
        Ok(Some(Auth {
            schemes,
            realm: config.realm.clone(),
            basic,
            #[cfg(feature = "negotiate")]
            negotiate,
            #[cfg(feature = "negotiate")]
            ntlm,
            exempt_clients: config.exempt_clients.clone(),
            throttle: throttle::Throttle::new(
                config.throttle.failures,
                config.throttle.window,
                config.throttle.max_delay,
            ),
            stats: AuthStats::default(),
        }))
    }

    /// Re-reads the htpasswd file if it changed (`force`: even if it did not).
    pub(crate) fn reload(&self, force: bool) {
        if let Some(basic) = &self.basic {
            basic.reload(force);
        }
    }

    pub(crate) fn is_exempt_client(&self, client: IpAddr) -> bool {
        self.exempt_clients.iter().any(|net| net.contains(&client))
    }

    /// The `Proxy-Authenticate` values of a 407: the next leg of a handshake in progress, or
    /// one per enabled scheme in the configured order.
    pub(crate) fn challenges(&self, continuation: Option<&Continuation>) -> Vec<HeaderValue> {
        if let Some(next) = continuation {
            // Only the scheme being spoken: a client must not read the next leg as a new offer.
            return HeaderValue::from_str(&format!("{} {}", next.scheme, next.token))
                .into_iter()
                .collect();
        }
        self.schemes
            .iter()
            .filter_map(|scheme| match scheme {
                AuthScheme::Negotiate => Some(HeaderValue::from_static("Negotiate")),
                AuthScheme::Ntlm => Some(HeaderValue::from_static("NTLM")),
                AuthScheme::Basic => {
                    let realm = self.realm.replace(['"', '\\'], "");
                    HeaderValue::from_str(&format!("Basic realm=\"{realm}\", charset=\"UTF-8\""))
                        .ok()
                }
            })
            .collect()
    }

    /// Authenticates one request from `client`. `exempt_destination`: the policy exempts where
    /// it goes; the connection's user (Negotiate) is still attributed if already known.
    pub(crate) async fn authenticate(
        &self,
        conn: &ConnAuth,
        client: IpAddr,
        exempt_destination: bool,
        headers: &HeaderMap,
    ) -> Outcome {
        if exempt_destination || self.is_exempt_client(client) {
            return match conn.user.lock().ok().and_then(|u| u.clone()) {
                Some(user) => Outcome::Authenticated { user, reply: None },
                None => Outcome::Exempt,
            };
        }
        let presented = headers.get(PROXY_AUTHORIZATION);
        if presented.is_none() {
            if let Some(user) = conn.user.lock().ok().and_then(|u| u.clone()) {
                return Outcome::Authenticated { user, reply: None };
            }
            return Outcome::failed("auth-required");
        }
        let value = presented.map(HeaderValue::as_bytes).unwrap_or_default();
        if let Some(user) = self
            .basic
            .as_ref()
            .and_then(|basic| conn.remembered_basic(value, basic))
        {
            self.stats.attempt(AuthAttemptScheme::Basic, true);
            self.stats.cache_hits.fetch_add(1, Ordering::Relaxed);
            return Outcome::Authenticated { user, reply: None };
        }
        let (mut outcome, scheme, presented_user) = self.check_credentials(conn, value).await;
        match &mut outcome {
            Outcome::Authenticated { user, .. } => {
                self.stats.attempt(scheme, true);
                self.throttle.success(client, user);
                tracing::debug!(%client, %user, "authenticated");
            }
            Outcome::Challenge {
                cause,
                negotiate_token: None,
                delay,
            } => {
                self.stats.attempt(scheme, false);
                *delay = self.throttle.failure(client, presented_user.as_deref());
                tracing::info!(%client, cause, "proxy authentication failed");
                if !delay.is_zero() {
                    self.stats.throttled.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%client, delay_ms = delay.as_millis() as u64, "repeated authentication failures; slowing this client down");
                }
            }
            _ => {}
        }
        outcome
    }

    /// Checks a `Proxy-Authorization` value; also returns the scheme it presented (for the
    /// metrics) and the Basic user name it presented (right or wrong), which the throttle
    /// counts failures for.
    async fn check_credentials(
        &self,
        conn: &ConnAuth,
        value: &[u8],
    ) -> (Outcome, AuthAttemptScheme, Option<String>) {
        use AuthAttemptScheme::{Basic, Negotiate, Ntlm, Other};
        let failed = |scheme, cause| (Outcome::failed(cause), scheme, None);
        if value.len() > MAX_CREDENTIALS {
            return failed(Other, "auth-malformed");
        }
        let Ok(value) = std::str::from_utf8(value) else {
            return failed(Other, "auth-malformed");
        };
        let (scheme, param) = value.trim().split_once(' ').unwrap_or((value.trim(), ""));
        let param = param.trim();
        if scheme.eq_ignore_ascii_case("basic") {
            let Some(basic) = &self.basic else {
                return failed(Basic, "auth-scheme-not-enabled");
            };
            let Some((user, password)) = decode_basic(param) else {
                return failed(Basic, "auth-malformed");
            };
            let outcome = match basic.verify(&user, &password, &self.stats).await {
                Some(verified) => {
                    let user = Arc::clone(&verified.user);
                    if let Ok(mut memo) = conn.basic.lock() {
                        *memo = Some(BasicMemo {
                            value: value.as_bytes().into(),
                            verified,
                        });
                    }
                    Outcome::Authenticated { user, reply: None }
                }
                None => Outcome::failed("auth-failed"),
            };
            return (outcome, Basic, Some(user));
        }
        if scheme.eq_ignore_ascii_case("negotiate") {
            let ntlm_inside = base64::engine::general_purpose::STANDARD
                .decode(param)
                .is_ok_and(|t| t.starts_with(b"NTLMSSP\0"));
            let label = if ntlm_inside { Ntlm } else { Negotiate };
            return (self.negotiate(conn, param).await, label, None);
        }
        if scheme.eq_ignore_ascii_case("ntlm") {
            return (self.ntlm(conn, param, "NTLM").await, Ntlm, None);
        }
        failed(Other, "auth-scheme-not-enabled")
    }
}

/// Decodes `base64(user:password)`. The password may contain colons; control bytes (NUL, CR,
/// LF, …) anywhere are refused so that no component sees a truncated or split name.
pub(crate) fn decode_basic(param: &str) -> Option<(String, Vec<u8>)> {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(param)
        .ok()?;
    if raw.iter().any(|b| b.is_ascii_control()) {
        return None;
    }
    let colon = raw.iter().position(|&b| b == b':')?;
    let user = std::str::from_utf8(&raw[..colon]).ok()?;
    if user.is_empty() {
        return None;
    }
    Some((user.to_owned(), raw[colon + 1..].to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each attempt is counted under the scheme it presented; anything unreadable or in a
    /// scheme the proxy does not implement is `Other`, so the label values stay a fixed set.
    #[tokio::test]
    async fn attempts_are_counted_by_the_scheme_presented() {
        use crate::metrics::AuthCounters as _;
        let config = AuthConfig {
            schemes: vec![AuthScheme::Basic],
            htpasswd: Some(std::path::PathBuf::from("/dev/null")),
            ..AuthConfig::default()
        };
        let Ok(Some(auth)) = Auth::new(&config) else {
            panic!("an authenticator")
        };
        let enc = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let presented = [
            format!("Basic {}", enc("nobody:pw")),
            "basic !!!".to_owned(),
            "Negotiate YIIB".to_owned(),
            "NTLM TlRMTVNTUAABAAAAB4IIogAAAAAAAAAAAAAAAAAAAAAKAGFKAAAADw==".to_owned(),
            "Digest username=\"x\"".to_owned(),
            "x".repeat(MAX_CREDENTIALS + 1),
        ];
        let conn = ConnAuth::default();
        let client = IpAddr::from([192, 0, 2, 1]);
        for value in presented {
            let mut headers = HeaderMap::new();
            let Ok(value) = HeaderValue::from_str(&value) else {
                panic!("a header value")
            };
            headers.insert(PROXY_AUTHORIZATION, value);
            let outcome = auth.authenticate(&conn, client, false, &headers).await;
            assert!(matches!(outcome, Outcome::Challenge { .. }));
        }
        // No credentials at all: not an attempt.
        let _ = auth
            .authenticate(&conn, client, false, &HeaderMap::new())
            .await;
        assert_eq!(
            auth.auth_counts().attempts,
            [[0, 2], [0, 1], [0, 1], [0, 2]],
            "[basic, negotiate, ntlm, other] × [success, failure]"
        );
    }

    #[test]
    fn basic_decoding() {
        let enc = |s: &[u8]| base64::engine::general_purpose::STANDARD.encode(s);
        assert_eq!(
            decode_basic(&enc(b"alice:pw")),
            Some(("alice".into(), b"pw".to_vec()))
        );
        assert_eq!(
            decode_basic(&enc(b"alice:p:w:")),
            Some(("alice".into(), b"p:w:".to_vec()))
        );
        assert_eq!(
            decode_basic(&enc(b"alice:")),
            Some(("alice".into(), Vec::new()))
        );
        for bad in [
            &b"nocolon"[..],
            b":pw",
            b"ali\0ce:pw",
            b"alice:p\nw",
            b"\xff:pw",
        ] {
            assert_eq!(decode_basic(&enc(bad)), None, "{bad:?}");
        }
        assert_eq!(decode_basic("!!!not base64"), None);
    }
}
