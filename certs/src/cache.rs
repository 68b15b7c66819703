//! A bounded cache of minted leaves with one mint per name at a time.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use quick_cache::sync::{Cache, EntryAction, EntryResult};
use rustls::sign::CertifiedKey;
use tokio::time::Instant;

use crate::{CertIssuer, Error, LeafName, LeafRequest};

#[cfg(test)]
mod tests;

/// Called with the duration of every mint, successful or not (for a histogram).
pub type MintObserver = Box<dyn Fn(Duration) + Send + Sync>;

/// Minted leaves by [`LeafName`].
///
/// - Bounded: at most `capacity` leaves; quick_cache evicts the least useful (S3-FIFO-like), so a
///   scan of many one-off hosts cannot flush the busy ones.
/// - Single-flight: concurrent requests for a name nobody has minted yet wait for one mint.
///   quick_cache's placeholder does this, which is why it was chosen over moka (much heavier to
///   build) and over a hand-written map of `OnceCell`s (which would need its own eviction).
/// - Expiring: an entry is used for half of the leaf's remaining lifetime (as hudsucker does),
///   so a client never receives a leaf that is about to expire.
/// - Off the runtime: minting runs in `spawn_blocking`; RSA signing or a slow key generation
///   must not stall the connections sharing the worker thread.
///
/// The expiry clock is tokio's, so tests can pause and advance it.
pub struct CertCache {
    entries: Cache<LeafName, Entry>,
    issuer: Arc<dyn CertIssuer>,
    counters: Counters,
    mint_observer: Option<MintObserver>,
}

#[derive(Clone)]
struct Entry {
    key: Arc<CertifiedKey>,
    fresh_until: Instant,
}

#[derive(Default)]
struct Counters {
    hits: AtomicU64,
    coalesced: AtomicU64,
    misses: AtomicU64,
    mints: AtomicU64,
    mint_failures: AtomicU64,
    mint_nanos: AtomicU64,
}

/// A snapshot of the cache counters, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CacheStats {
    /// Lookups answered from a fresh entry without waiting.
    pub hits: u64,
    /// Lookups that waited for a mint another lookup had started (single-flight followers).
    pub coalesced: u64,
    /// Lookups that found no fresh entry and minted.
    pub misses: u64,
    /// Successful mints.
    pub mints: u64,
    /// Failed mints (the error went to the lookup that minted).
    pub mint_failures: u64,
    /// Total time spent minting.
    pub mint_time: Duration,
    /// Entries currently held (fresh or not yet noticed to be stale).
    pub entries: usize,
}

impl CertCache {
    /// A cache holding at most `capacity` leaves, minting with `issuer`. A leaf is about 1–2 KB
    /// (plus the CA certificate, copied into each chain), so 10 000 entries cost some 25 MB.
    pub fn new(issuer: Arc<dyn CertIssuer>, capacity: usize) -> Self {
        CertCache {
            entries: Cache::new(capacity.max(1)),
            issuer,
            counters: Counters::default(),
            mint_observer: None,
        }
    }

    /// Reports each mint's duration to `observer`, e.g. a Prometheus histogram.
    pub fn with_mint_observer(
        mut self,
        observer: impl Fn(Duration) + Send + Sync + 'static,
    ) -> Self {
        self.mint_observer = Some(Box::new(observer));
        self
    }

    /// The leaf for `request.name`: cached if fresh, otherwise minted once however many callers
    /// ask at the same time. `request.extra_sans` only matter when this call mints.
    ///
    /// If the future is dropped while minting, another waiter takes over and mints again; if the
    /// mint fails, the error goes to this caller and the next waiter retries.
    pub async fn get(&self, request: &LeafRequest) -> Result<Arc<CertifiedKey>, Error> {
        if let Some(entry) = self.entries.get(&request.name) {
            if entry.fresh_until > Instant::now() {
                self.counters.hits.fetch_add(1, Relaxed);
                return Ok(entry.key);
            }
        }
        let guard = loop {
            // Takes the shard's write lock; only reached on a miss or a stale entry.
            let result = self
                .entries
                .entry_async(&request.name, |_, entry| {
                    if entry.fresh_until > Instant::now() {
                        EntryAction::Retain(entry.key.clone())
                    } else {
                        EntryAction::ReplaceWithGuard
                    }
                })
                .await;
            match result {
                EntryResult::Retained(key) => {
                    self.counters.coalesced.fetch_add(1, Relaxed);
                    return Ok(key);
                }
                EntryResult::Vacant(guard) | EntryResult::Replaced(guard, _) => break guard,
                // Neither happens here: the callback never removes and the async variant has
                // no timeout. Looking again is the safe answer anyway.
                EntryResult::Removed(..) | EntryResult::Timeout => continue,
            }
        };
        self.counters.misses.fetch_add(1, Relaxed);

        let issuer = Arc::clone(&self.issuer);
        let owned = request.clone();
        let started = Instant::now();
        let joined = tokio::task::spawn_blocking(move || issuer.issue(&owned)).await;
        self.observe(started.elapsed());
        let leaf = match joined {
            Ok(Ok(leaf)) => leaf,
            Ok(Err(e)) => {
                self.counters.mint_failures.fetch_add(1, Relaxed);
                return Err(e);
            }
            Err(source) => {
                self.counters.mint_failures.fetch_add(1, Relaxed);
                return Err(Error::MintTask {
                    name: request.name.to_string(),
                    source,
                });
            }
        };
        self.counters.mints.fetch_add(1, Relaxed);
        let _ = guard.insert(Entry {
            key: Arc::clone(&leaf.key),
            fresh_until: Instant::now() + fresh_for(leaf.not_after, SystemTime::now()),
        });
        Ok(leaf.key)
    }

    fn observe(&self, elapsed: Duration) {
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.counters.mint_nanos.fetch_add(nanos, Relaxed);
        if let Some(observer) = &self.mint_observer {
            observer(elapsed);
        }
    }

    /// The counters and the current size.
    pub fn stats(&self) -> CacheStats {
        let c = &self.counters;
        CacheStats {
            hits: c.hits.load(Relaxed),
            coalesced: c.coalesced.load(Relaxed),
            misses: c.misses.load(Relaxed),
            mints: c.mints.load(Relaxed),
            mint_failures: c.mint_failures.load(Relaxed),
            mint_time: Duration::from_nanos(c.mint_nanos.load(Relaxed)),
            entries: self.entries.len(),
        }
    }

    /// Entries currently held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the cache holds no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// How long a leaf expiring at `not_after` is handed out: half its remaining lifetime, so that a
/// client's connection that starts at the end of that window still has as long again.
fn fresh_for(not_after: SystemTime, now: SystemTime) -> Duration {
    not_after.duration_since(now).unwrap_or_default() / 2
}
