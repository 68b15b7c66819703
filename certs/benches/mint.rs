//! Leaf minting and cache lookups.
//!
//! `cargo bench -p portcullis-certs -- --quick` prints:
//! - `mint/ecdsa-p256`: one ECDSA leaf (fresh P-256 key, signed by an ECDSA CA): the cost of a
//!   cache miss for a new host.
//! - `mint/rsa-2048`: one RSA leaf (the process-wide RSA key, signed by an RSA-2048 CA).
//! - `rsa-2048 key generation`: the once-per-process cost of RSA mode (also why RSA leaves
//!   share one key).
//! - `cache/miss-ecdsa`: a miss through the cache, including `spawn_blocking`.
//! - `cache/hit`: a lookup of a cached leaf (includes a `block_on` on a current-thread runtime).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use portcullis_certs::{
    CaParams, CertCache, CertIssuer, CertificateAuthority, Issuer, IssuerConfig, KeyAlgorithm,
    LeafName, LeafRequest,
};

fn ca(key_algorithm: KeyAlgorithm) -> Arc<CertificateAuthority> {
    Arc::new(
        CertificateAuthority::generate(&CaParams {
            key_algorithm,
            ..CaParams::default()
        })
        .unwrap(),
    )
}

fn issuer(ca_key: KeyAlgorithm, leaf_key: KeyAlgorithm) -> Issuer {
    let config = IssuerConfig {
        key_algorithm: leaf_key,
        ..IssuerConfig::default()
    };
    Issuer::new(ca(ca_key), config).unwrap()
}

fn request(name: &str) -> LeafRequest {
    LeafRequest::new(LeafName::from_sni(name).unwrap())
}

fn mint(c: &mut Criterion) {
    let mut group = c.benchmark_group("mint");
    let ecdsa = issuer(KeyAlgorithm::EcdsaP256, KeyAlgorithm::EcdsaP256);
    let req = request("outlook.office365.com");
    group.bench_function("ecdsa-p256", |b| {
        b.iter(|| ecdsa.issue(black_box(&req)).unwrap())
    });
    let rsa = issuer(KeyAlgorithm::Rsa2048, KeyAlgorithm::Rsa2048);
    group.bench_function("rsa-2048", |b| {
        b.iter(|| rsa.issue(black_box(&req)).unwrap())
    });
    group.finish();
}

fn rsa_keygen(c: &mut Criterion) {
    let mut group = c.benchmark_group("rsa-2048 key generation");
    // Prime search makes each sample slow and noisy: few samples, more time.
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    let ca = ca(KeyAlgorithm::EcdsaP256);
    let config = IssuerConfig {
        key_algorithm: KeyAlgorithm::Rsa2048,
        ..IssuerConfig::default()
    };
    group.bench_function("Issuer::new", |b| {
        b.iter(|| Issuer::new(ca.clone(), config.clone()).unwrap())
    });
    group.finish();
}

fn cache(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let issuer: Arc<dyn CertIssuer> =
        Arc::new(issuer(KeyAlgorithm::EcdsaP256, KeyAlgorithm::EcdsaP256));
    let cache = CertCache::new(issuer, 10_000);
    let mut group = c.benchmark_group("cache");

    let hit = request("outlook.office365.com");
    rt.block_on(cache.get(&hit)).unwrap();
    group.bench_function("hit", |b| {
        b.iter(|| rt.block_on(cache.get(black_box(&hit))).unwrap())
    });

    let n = AtomicU64::new(0);
    group.bench_function("miss-ecdsa", |b| {
        b.iter(|| {
            let name = format!("h{}.example", n.fetch_add(1, Ordering::Relaxed));
            rt.block_on(cache.get(&request(&name))).unwrap()
        })
    });
    group.finish();
    let stats = cache.stats();
    println!(
        "cache stats: hits {} misses {} mints {} entries {} mean mint {:?}",
        stats.hits,
        stats.misses,
        stats.mints,
        stats.entries,
        stats.mint_time / u32::try_from(stats.mints.max(1)).unwrap_or(u32::MAX)
    );
}

criterion_group!(benches, mint, rsa_keygen, cache);
criterion_main!(benches);
