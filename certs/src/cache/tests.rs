#![expect(clippy::unwrap_used, reason = "tests fail loudly")]

use std::sync::atomic::AtomicUsize;
use std::sync::Mutex;

use super::*;
use crate::test_util::test_ca;
use crate::{IssuedLeaf, Issuer, IssuerConfig};

/// Wraps the real issuer: counts calls, can be slowed down, made to fail or to panic, and can
/// pretend the leaf expires at a chosen time.
struct TestIssuer {
    inner: Issuer,
    calls: AtomicUsize,
    delay: Duration,
    fail: bool,
    panic: bool,
    lifetime: Option<Duration>,
    requests: Mutex<Vec<LeafRequest>>,
}

impl TestIssuer {
    fn new() -> Self {
        TestIssuer {
            inner: Issuer::new(test_ca(), IssuerConfig::default()).unwrap(),
            calls: AtomicUsize::new(0),
            delay: Duration::ZERO,
            fail: false,
            panic: false,
            lifetime: None,
            requests: Mutex::default(),
        }
    }

    fn calls(&self) -> usize {
        self.calls.load(Relaxed)
    }
}

impl CertIssuer for TestIssuer {
    fn issue(&self, request: &LeafRequest) -> Result<IssuedLeaf, Error> {
        self.calls.fetch_add(1, Relaxed);
        self.requests.lock().unwrap().push(request.clone());
        // A real sleep: this runs on a blocking thread, outside tokio's (possibly paused) clock.
        std::thread::sleep(self.delay);
        assert!(!self.panic, "issuer panicked on purpose");
        if self.fail {
            return Err(Error::InvalidName {
                name: request.name.to_string(),
            });
        }
        let mut leaf = self.inner.issue(request)?;
        if let Some(lifetime) = self.lifetime {
            leaf.not_after = SystemTime::now() + lifetime;
        }
        Ok(leaf)
    }
}

fn request(name: &str) -> LeafRequest {
    LeafRequest::new(LeafName::from_sni(name).unwrap())
}

fn cache(issuer: &Arc<TestIssuer>) -> Arc<CertCache> {
    Arc::new(CertCache::new(issuer.clone(), 100))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_for_one_new_host_mints_once() {
    let issuer = Arc::new(TestIssuer {
        delay: Duration::from_millis(200),
        ..TestIssuer::new()
    });
    let cache = cache(&issuer);
    // tokio::spawn also proves that `get`'s future is Send.
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let cache = cache.clone();
            tokio::spawn(async move { cache.get(&request("burst.example")).await })
        })
        .collect();
    let mut keys = Vec::new();
    for task in tasks {
        keys.push(task.await.unwrap().unwrap());
    }
    assert_eq!(issuer.calls(), 1);
    assert!(
        keys.iter().all(|k| Arc::ptr_eq(k, &keys[0])),
        "everyone got the one leaf"
    );
    let stats = cache.stats();
    assert_eq!((stats.mints, stats.misses), (1, 1));
    assert_eq!(stats.hits + stats.coalesced, 99);
    assert!(
        stats.coalesced > 0,
        "the 200 ms mint must have made someone wait: {stats:?}"
    );
    assert_eq!(stats.entries, 1);
    assert!(stats.mint_time >= Duration::from_millis(200));
}

#[tokio::test]
async fn later_lookups_hit_and_names_are_normalised() {
    let issuer = Arc::new(TestIssuer::new());
    let cache = cache(&issuer);
    let first = cache.get(&request("Example.COM.")).await.unwrap();
    let again = cache.get(&request("example.com")).await.unwrap();
    assert!(Arc::ptr_eq(&first, &again));
    cache.get(&request("other.example")).await.unwrap();
    assert_eq!(issuer.calls(), 2);
    let stats = cache.stats();
    assert_eq!((stats.hits, stats.misses, stats.mints), (1, 2, 2));
    assert_eq!(cache.len(), 2);
}

#[tokio::test]
async fn extra_sans_reach_the_issuer_on_a_miss() {
    let issuer = Arc::new(TestIssuer::new());
    let cache = cache(&issuer);
    let extra = vec![LeafName::from_sni("alt.example").unwrap()];
    let req = request("main.example").with_sans(extra.clone());
    cache.get(&req).await.unwrap();
    assert_eq!(issuer.requests.lock().unwrap()[0].extra_sans, extra);
}

#[tokio::test(start_paused = true)]
async fn entries_expire_at_half_the_leaf_lifetime() {
    let issuer = Arc::new(TestIssuer {
        lifetime: Some(Duration::from_secs(2 * 3600)),
        ..TestIssuer::new()
    });
    let cache = cache(&issuer);
    let first = cache.get(&request("a.example")).await.unwrap();

    tokio::time::advance(Duration::from_secs(59 * 60)).await;
    let still = cache.get(&request("a.example")).await.unwrap();
    assert!(Arc::ptr_eq(&first, &still), "fresh for an hour");
    assert_eq!(issuer.calls(), 1);

    tokio::time::advance(Duration::from_secs(2 * 60)).await;
    let renewed = cache.get(&request("a.example")).await.unwrap();
    assert!(!Arc::ptr_eq(&first, &renewed), "stale after an hour");
    assert_eq!(issuer.calls(), 2);
    assert_eq!(
        cache.len(),
        1,
        "the stale entry was replaced, not duplicated"
    );
}

#[tokio::test]
async fn failures_are_reported_and_not_cached() {
    let issuer = Arc::new(TestIssuer {
        fail: true,
        ..TestIssuer::new()
    });
    let cache = cache(&issuer);
    for _ in 0..2 {
        let err = cache.get(&request("a.example")).await.unwrap_err();
        assert!(matches!(err, Error::InvalidName { .. }), "{err}");
    }
    assert_eq!(
        issuer.calls(),
        2,
        "a failed mint is retried by the next lookup"
    );
    let stats = cache.stats();
    assert_eq!((stats.mints, stats.mint_failures, stats.entries), (0, 2, 0));
}

#[tokio::test]
async fn a_panicking_issuer_becomes_an_error() {
    let issuer = Arc::new(TestIssuer {
        panic: true,
        ..TestIssuer::new()
    });
    let cache = cache(&issuer);
    let err = cache.get(&request("a.example")).await.unwrap_err();
    assert!(
        matches!(err, Error::MintTask { ref name, .. } if name == "a.example"),
        "{err}"
    );
}

#[tokio::test]
async fn the_cache_stays_within_its_capacity() {
    let issuer = Arc::new(TestIssuer::new());
    let cache = CertCache::new(issuer.clone(), 10);
    for i in 0..50 {
        cache.get(&request(&format!("h{i}.example"))).await.unwrap();
    }
    assert_eq!(issuer.calls(), 50);
    assert!(cache.len() <= 10, "{} entries", cache.len());
    assert!(!cache.is_empty());
}

#[tokio::test]
async fn the_mint_observer_sees_every_mint() {
    let issuer = Arc::new(TestIssuer::new());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    let cache =
        CertCache::new(issuer, 10).with_mint_observer(move |d| sink.lock().unwrap().push(d));
    cache.get(&request("a.example")).await.unwrap();
    cache.get(&request("a.example")).await.unwrap();
    cache.get(&request("b.example")).await.unwrap();
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 2);
    assert!(seen.iter().all(|d| *d > Duration::ZERO));
}

#[test]
fn freshness_is_half_the_remaining_lifetime() {
    let now = SystemTime::now();
    assert_eq!(
        fresh_for(now + Duration::from_secs(100), now),
        Duration::from_secs(50)
    );
    assert_eq!(fresh_for(now - Duration::from_secs(1), now), Duration::ZERO);
}
