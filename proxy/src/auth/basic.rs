//! Basic authentication against an htpasswd file: verified-credential cache, one hash per
//! burst of identical credentials, reload on change.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use sha2::{Digest as _, Sha256};
use tokio::sync::OnceCell;

use super::htpasswd::Users;
use super::{AuthSetupError, AuthStats};

/// Bound on remembered credentials; when full, expired entries go, then everything.
const CACHE_MAX: usize = 10_000;

pub(super) struct Basic {
    path: PathBuf,
    users: ArcSwap<Users>,
    /// A new value from [`next_generation`] on every load and reload, so a cached or
    /// remembered credential never outlives a password change — nor a new `Basic` built by a
    /// configuration reload (a connection outlives the snapshot it authenticated against).
    generation: AtomicU64,
    /// (size, mtime) of the loaded file, to notice edits.
    loaded_stamp: Mutex<Option<(u64, SystemTime)>>,
    cache: Mutex<HashMap<[u8; 32], CacheEntry>>,
    /// Verifications running now, by credentials and load of the file. A browser or Outlook
    /// opens several connections at once with the same credentials; they all miss the cache,
    /// and each would otherwise run the deliberately slow hash (bcrypt: milliseconds of CPU
    /// each). The first runs it, the others wait for its answer.
    in_flight: Mutex<HashMap<InFlightKey, Arc<OnceCell<bool>>>>,
    cache_key: [u8; 32],
    ttl: Duration,
}

/// Keyed credentials hash ([`Basic::cache_key`]) and the generation they are checked against.
type InFlightKey = ([u8; 32], u64);

/// Credentials found good: who, until when, and against which load of the file.
pub(super) struct Verified {
    pub(super) user: Arc<str>,
    pub(super) until: Instant,
    pub(super) generation: u64,
}

struct CacheEntry {
    user: Arc<str>,
    expires: Instant,
    generation: u64,
}

impl Basic {
    pub(super) fn load(path: PathBuf, ttl: Duration) -> Result<Basic, AuthSetupError> {
        let users = Users::load(&path).map_err(AuthSetupError::Htpasswd)?;
        let stamp = file_stamp(&path);
        let mut cache_key = [0u8; 32];
        getrandom::fill(&mut cache_key).map_err(AuthSetupError::Random)?;
        Ok(Basic {
            path,
            users: ArcSwap::from_pointee(users),
            generation: AtomicU64::new(next_generation()),
            loaded_stamp: Mutex::new(stamp),
            cache: Mutex::new(HashMap::new()),
            in_flight: Mutex::new(HashMap::new()),
            cache_key,
            ttl,
        })
    }

    /// Whether credentials verified against load `generation` of the file still count.
    pub(super) fn is_current(&self, generation: u64) -> bool {
        self.generation.load(Ordering::Acquire) == generation
    }

    pub(super) fn user_count(&self) -> usize {
        self.users.load().len()
    }

    /// Verifies `user:password`. The expensive hash runs on the blocking pool, and only when the
    /// credentials are not in the cache.
    pub(super) async fn verify(
        self: &Arc<Self>,
        user: &str,
        password: &[u8],
        stats: &AuthStats,
    ) -> Option<Verified> {
        let key = self.cache_key(user, password);
        let generation = self.generation.load(Ordering::Acquire);
        if let Ok(cache) = self.cache.lock() {
            if let Some(entry) = cache.get(&key) {
                if entry.expires > Instant::now() && entry.generation == generation {
                    stats.cache_hits.fetch_add(1, Ordering::Relaxed);
                    return Some(Verified {
                        user: Arc::clone(&entry.user),
                        until: entry.expires,
                        generation,
                    });
                }
            }
        }
        let flight = InFlight::join(self, (key, generation));
        let ok = *flight
            .cell
            .get_or_init(|| self.hash_and_remember(user, password, key, generation, stats))
            .await;
        drop(flight);
        ok.then(|| Verified {
            user: Arc::from(user),
            until: Instant::now() + self.ttl,
            generation,
        })
    }

    /// Runs the password hash on the blocking pool; good credentials go into the cache before
    /// the waiting requests are answered, so none arriving after them hashes again.
    async fn hash_and_remember(
        self: &Arc<Self>,
        user: &str,
        password: &[u8],
        key: [u8; 32],
        generation: u64,
        stats: &AuthStats,
    ) -> bool {
        let this = Arc::clone(self);
        let user_owned = user.to_owned();
        let password = password.to_vec();
        let ok = tokio::task::spawn_blocking(move || {
            let users = this.users.load();
            match users.get(&user_owned) {
                Some(hash) => hash.verify(&password),
                // An unknown name costs what a wrong password costs (see `Users::dummy`).
                None => {
                    let _ = users.dummy().verify(&password);
                    false
                }
            }
        })
        .await
        .unwrap_or(false);
        let n = stats.hash_verifications.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::debug!(user, ok, hash_verifications = n, "password hash verified");
        if ok {
            self.remember(key, Arc::from(user), generation);
        }
        ok
    }

    fn remember(&self, key: [u8; 32], user: Arc<str>, generation: u64) {
        let Ok(mut cache) = self.cache.lock() else {
            return;
        };
        if cache.len() >= CACHE_MAX {
            let now = Instant::now();
            cache.retain(|_, e| e.expires > now);
            if cache.len() >= CACHE_MAX {
                cache.clear();
            }
        }
        cache.insert(
            key,
            CacheEntry {
                user,
                expires: Instant::now() + self.ttl,
                generation,
            },
        );
    }

    /// Keyed hash of the credentials: the cache never holds a password, not even hashed
    /// without a secret.
    fn cache_key(&self, user: &str, password: &[u8]) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.cache_key);
        h.update(user.as_bytes());
        h.update([0u8]);
        h.update(password);
        h.finalize().into()
    }

    /// Reloads the file if it changed (or unconditionally with `force`). A broken file keeps the
    /// old users and logs why. Returns true when new users were loaded.
    pub(super) fn reload(&self, force: bool) -> bool {
        let stamp = file_stamp(&self.path);
        if let Ok(mut loaded) = self.loaded_stamp.lock() {
            if !force && stamp == *loaded {
                return false;
            }
            *loaded = stamp;
        }
        match Users::load(&self.path) {
            Ok(users) => {
                let n = users.len();
                self.users.store(Arc::new(users));
                self.generation.store(next_generation(), Ordering::Release);
                tracing::info!(path = %self.path.display(), users = n, "htpasswd reloaded");
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "htpasswd reload failed; keeping the previous users");
                false
            }
        }
    }
}

/// One request's share in a running verification. Dropping it (answered, or the client gone
/// mid-hash) removes the entry once nobody else waits on it unanswered, so abandoned
/// attempts leave nothing behind; a waiter left on an unanswered cell runs the hash itself.
struct InFlight<'a> {
    basic: &'a Basic,
    key: InFlightKey,
    cell: Arc<OnceCell<bool>>,
}

impl<'a> InFlight<'a> {
    fn join(basic: &'a Basic, key: InFlightKey) -> InFlight<'a> {
        let cell = match basic.in_flight.lock() {
            Ok(mut map) => Arc::clone(map.entry(key).or_default()),
            // A poisoned map only costs the sharing: hash alone.
            Err(_) => Arc::default(),
        };
        InFlight { basic, key, cell }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let Ok(mut map) = self.basic.in_flight.lock() else {
            return;
        };
        let ours = map
            .get(&self.key)
            .is_some_and(|c| Arc::ptr_eq(c, &self.cell));
        // The map holds one reference and this share another.
        if ours && (self.cell.initialized() || Arc::strong_count(&self.cell) <= 2) {
            map.remove(&self.key);
        }
    }
}

/// Generations are unique in the process, across every `Basic` ever loaded.
fn next_generation() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

fn file_stamp(path: &std::path::Path) -> Option<(u64, SystemTime)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.len(), meta.modified().ok()?))
}

#[cfg(test)]
mod tests {
    #![expect(clippy::unwrap_used, reason = "tests")]
    use super::*;
    use std::future::Future;
    use std::pin::Pin;
    use std::task::Poll;

    fn users_file(dir: &std::path::Path, name: &str, line: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, line).unwrap();
        path
    }

    /// A connection remembers the generation its credentials were verified against. Neither a
    /// reload of the file nor a `Basic` built anew by a configuration reload may share it.
    #[tokio::test]
    async fn generations_are_never_shared_between_loads() {
        let dir = tempfile::tempdir().unwrap();
        // SHA-1 `{SHA}` form: cheap to verify in a test.
        let line = "alice:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n";
        let first = Arc::new(
            Basic::load(users_file(dir.path(), "a", line), Duration::from_secs(60)).unwrap(),
        );
        let stats = AuthStats::default();
        let verified = first.verify("alice", b"password", &stats).await.unwrap();
        assert!(first.is_current(verified.generation));
        let second =
            Basic::load(users_file(dir.path(), "b", line), Duration::from_secs(60)).unwrap();
        assert!(!second.is_current(verified.generation));
        first.reload(true);
        assert!(!first.is_current(verified.generation));
    }

    /// Polls every future once before any of them can finish, as requests that arrive
    /// together are: the overlap the in-flight sharing is for, without depending on timing.
    async fn together<'a, T>(futures: Vec<Pin<Box<dyn Future<Output = T> + 'a>>>) -> Vec<T> {
        let mut pending: Vec<_> = futures.into_iter().map(Some).collect();
        let mut done: Vec<Option<T>> = pending.iter().map(|_| None).collect();
        std::future::poll_fn(|cx| {
            for (slot, out) in pending.iter_mut().zip(done.iter_mut()) {
                if let Some(f) = slot {
                    if let Poll::Ready(v) = f.as_mut().poll(cx) {
                        *out = Some(v);
                        *slot = None;
                    }
                }
            }
            if pending.iter().all(Option::is_none) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
        done.into_iter().flatten().collect()
    }

    /// A burst of connections with the same credentials runs the hash once; wrong ones share
    /// their one failure; an attempt abandoned mid-hash leaves nothing behind.
    #[tokio::test]
    async fn a_burst_of_identical_credentials_is_hashed_once() {
        let dir = tempfile::tempdir().unwrap();
        // bcrypt, not the instant `{SHA}`: a hash that finished before the next request was
        // even polled would leave nothing to share (failures are not cached), and the test
        // would measure the blocking pool's speed instead of the sharing.
        let line = format!("alice:{}\n", bcrypt::hash("password", 8).unwrap());
        let basic = Arc::new(
            Basic::load(users_file(dir.path(), "a", &line), Duration::from_secs(60)).unwrap(),
        );
        let stats = AuthStats::default();
        let burst = |requests: &[(&'static str, &'static [u8])]| {
            let futures = requests
                .iter()
                .map(|&(user, password)| {
                    let verify = basic.verify(user, password, &stats);
                    Box::pin(async move { verify.await.is_some() })
                        as Pin<Box<dyn Future<Output = bool>>>
                })
                .collect();
            together(futures)
        };
        let right: (&str, &[u8]) = ("alice", b"password");
        let wrong: (&str, &[u8]) = ("alice", b"wrong");
        assert_eq!(burst(&[right; 8]).await, vec![true; 8]);
        assert_eq!(stats.hash_verifications.load(Ordering::Relaxed), 1);
        assert_eq!(burst(&[wrong; 8]).await, vec![false; 8]);
        assert_eq!(stats.hash_verifications.load(Ordering::Relaxed), 2);
        assert!(basic.in_flight.lock().unwrap().is_empty());

        // Sharing never lends an answer across credentials: a right and a wrong password for
        // one user, and the right password for a user the file does not have, arriving
        // together, each get their own (the right one from the cache by now).
        let other = ("alice", &b"guess"[..]);
        let unknown = ("bob", &b"password"[..]);
        let mixed = [right, other, unknown, right, other, unknown];
        assert_eq!(
            burst(&mixed).await,
            vec![true, false, false, true, false, false]
        );
        assert_eq!(stats.hash_verifications.load(Ordering::Relaxed), 4);
        assert!(basic.in_flight.lock().unwrap().is_empty());

        // Polled once (the hash started), then dropped as a closed connection would be.
        let abandoned = basic.verify("alice", b"other", &stats);
        let _ = tokio::time::timeout(Duration::ZERO, abandoned).await;
        assert!(basic.in_flight.lock().unwrap().is_empty());
    }
}
