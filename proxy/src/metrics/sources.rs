//! Components that keep their own counters (the authenticator, the certificate cache) are read
//! at scrape time through these traits rather than counted twice; metrics imports neither.

use std::sync::Arc;

use portcullis_certs::{CacheStats, CertCache};
use prometheus::IntCounter;

/// Whatever owns the certificate cache (the cache itself, or the interceptor holding it).
pub(crate) trait CertCacheStats: Send + Sync {
    fn cert_cache_stats(&self) -> CacheStats;
}

impl CertCacheStats for CertCache {
    fn cert_cache_stats(&self) -> CacheStats {
        self.stats()
    }
}

/// The authenticator's own counters.
pub(crate) trait AuthCounters: Send + Sync {
    fn auth_counts(&self) -> AuthCounts;
}

/// The scheme of the credentials an authentication attempt presented: the `scheme` label of
/// `auth_attempts_total`. A fixed set, whatever clients send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AuthAttemptScheme {
    Basic,
    Negotiate,
    /// NTLM, bare (`NTLM …`) or offered inside Negotiate.
    Ntlm,
    /// A scheme the proxy does not implement (Digest, …) or an unreadable header.
    Other,
}

impl AuthAttemptScheme {
    pub(crate) const ALL: [AuthAttemptScheme; 4] = [
        AuthAttemptScheme::Basic,
        AuthAttemptScheme::Negotiate,
        AuthAttemptScheme::Ntlm,
        AuthAttemptScheme::Other,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            AuthAttemptScheme::Basic => "basic",
            AuthAttemptScheme::Negotiate => "negotiate",
            AuthAttemptScheme::Ntlm => "ntlm",
            AuthAttemptScheme::Other => "other",
        }
    }
}

/// One reading of [`AuthCounters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct AuthCounts {
    /// `[successes, failures]` of attempts that presented credentials, indexed by
    /// [`AuthAttemptScheme`] (in [`AuthAttemptScheme::ALL`] order).
    pub(crate) attempts: [[u64; 2]; 4],
    /// Failures answered late because the client kept failing.
    pub(crate) throttled: u64,
    pub(crate) hash_verifications: u64,
    pub(crate) credential_cache_hits: u64,
}

/// How many numbers an [`AuthCounts`] holds, flattened for [`Accumulated`].
const AUTH_COUNTS: usize = 11;

impl AuthCounts {
    fn to_array(self) -> [u64; AUTH_COUNTS] {
        let [[bs, bf], [ns, nf], [ts, tf], [os, of]] = self.attempts;
        let (t, h, c) = (
            self.throttled,
            self.hash_verifications,
            self.credential_cache_hits,
        );
        [bs, bf, ns, nf, ts, tf, os, of, t, h, c]
    }

    fn from_array(a: [u64; AUTH_COUNTS]) -> AuthCounts {
        let [bs, bf, ns, nf, ts, tf, os, of, throttled, hash_verifications, credential_cache_hits] =
            a;
        AuthCounts {
            attempts: [[bs, bf], [ns, nf], [ts, tf], [os, of]],
            throttled,
            hash_verifications,
            credential_cache_hits,
        }
    }
}

pub(super) struct Sources {
    pub(super) auth: Accumulated<dyn AuthCounters, AUTH_COUNTS>,
    pub(super) cert_cache: Accumulated<dyn CertCacheStats, 5>,
}

impl Sources {
    pub(super) fn new() -> Sources {
        Sources {
            auth: Accumulated::new(auth_counts),
            cert_cache: Accumulated::new(cert_cache_counts),
        }
    }

    /// The authenticators' totals, over every instance (see [`Accumulated`]).
    pub(super) fn auth_totals(&mut self) -> AuthCounts {
        AuthCounts::from_array(self.auth.totals())
    }
}

fn auth_counts(auth: &dyn AuthCounters) -> [u64; AUTH_COUNTS] {
    auth.auth_counts().to_array()
}

fn cert_cache_counts(cache: &dyn CertCacheStats) -> [u64; 5] {
    let s = cache.cert_cache_stats();
    [s.hits, s.coalesced, s.misses, s.mints, s.mint_failures]
}

/// Raises a counter to `total` (counters only go up; a source that went backwards is ignored).
pub(super) fn raise(counter: &IntCounter, total: u64) {
    let current = counter.get();
    if total > current {
        counter.inc_by(total - current);
    }
}

/// Totals over every instance of a component that keeps its own counters, across reloads.
///
/// A reload replaces the authenticator, but connections that started before keep using the old
/// one for a while. Old instances are summed live until only this struct holds them, then their
/// final counts are folded into `base` and they are dropped, so totals never go backwards and
/// nothing is kept alive for long.
pub(super) struct Accumulated<T: ?Sized, const N: usize> {
    read: fn(&T) -> [u64; N],
    pub(super) current: Option<Arc<T>>,
    pub(super) retired: Vec<Arc<T>>,
    base: [u64; N],
}

impl<T: ?Sized, const N: usize> Accumulated<T, N> {
    pub(super) fn new(read: fn(&T) -> [u64; N]) -> Self {
        Accumulated {
            read,
            current: None,
            retired: Vec::new(),
            base: [0; N],
        }
    }

    pub(super) fn set(&mut self, next: Option<Arc<T>>) {
        let same = match (&self.current, &next) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        if same {
            return;
        }
        if let Some(old) = std::mem::replace(&mut self.current, next) {
            self.retired.push(old);
        }
    }

    pub(super) fn totals(&mut self) -> [u64; N] {
        let read = self.read;
        let base = &mut self.base;
        self.retired.retain(|old| {
            if Arc::strong_count(old) > 1 {
                return true;
            }
            add(base, read(old));
            false
        });
        let mut total = *base;
        for live in self.retired.iter().chain(&self.current) {
            add(&mut total, read(live));
        }
        total
    }
}

fn add<const N: usize>(into: &mut [u64; N], values: [u64; N]) {
    for (sum, v) in into.iter_mut().zip(values) {
        *sum = sum.saturating_add(v);
    }
}
