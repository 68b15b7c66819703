//! Proxy authentication under attack: password guessing interleaved with a valid login, user
//! enumeration by timing, clients that leave while held back, and a 407 to a large upload.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use portcullis_e2e::{curl, TestOrigin, TestProxy};

fn basic_config(file: &Path, extra: &str) -> String {
    format!(
        "[auth]\nschemes = [\"basic\"]\nhtpasswd = \"{}\"\n{extra}",
        file.display()
    )
}

/// The median of three timings of `f`.
async fn median_of_three<F, Fut>(mut f: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut times = Vec::new();
    for _ in 0..3 {
        let started = Instant::now();
        f().await;
        times.push(started.elapsed());
    }
    times.sort();
    times[1]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_user_costs_as_much_as_a_wrong_password() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("users");
    // Cost 12, as a careful administrator chooses: the dummy verified for unknown users must
    // cost the same, or the answer's speed says whether a name exists.
    let out = Command::new("htpasswd")
        .args(["-cbB", "-C", "12"])
        .arg(&file)
        .args(["alice", "alice-secret"])
        .output()
        .expect("htpasswd (apache2-utils)");
    assert!(out.status.success(), "{out:?}");
    let origin = TestOrigin::http().await;
    let proxy = TestProxy::start(&basic_config(&file, "[auth.throttle]\nfailures = 1000\n"));
    let url = origin.url("/");
    let attempt = |user: &'static str| {
        let (proxy_url, url) = (proxy.url(), url.clone());
        move || {
            let (proxy_url, url) = (proxy_url.clone(), url.clone());
            async move {
                let r = curl(&["-x", &proxy_url, "-U", &format!("{user}:wrong"), &url]).await;
                assert_eq!(r.status, 407, "{r:?}");
            }
        }
    };
    let known = median_of_three(attempt("alice")).await;
    let unknown = median_of_three(attempt("nobody")).await;
    assert!(
        unknown * 2 >= known,
        "an unknown user is answered in {unknown:?}, a wrong password in {known:?}"
    );
}
