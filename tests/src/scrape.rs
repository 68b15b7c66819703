//! Reading the proxy's `/metrics` the way Prometheus does: the text exposition format.

use std::time::{Duration, Instant};

use crate::client::curl;

/// One scrape of `/metrics`.
#[derive(Debug, Clone)]
pub struct Scrape(pub String);

impl Scrape {
    /// The sum of every sample of `name` whose labels include all `labels` fragments (such as
    /// `r#"method="GET""#`); 0 when there is none, as Prometheus treats an absent counter.
    pub fn value(&self, name: &str, labels: &[&str]) -> f64 {
        self.0
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| l.split(['{', ' ']).next() == Some(name))
            .filter(|l| labels.iter().all(|f| l.contains(f)))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Whether the scrape declares the metric family `name`.
    pub fn has_family(&self, name: &str) -> bool {
        self.0.contains(&format!("# TYPE {name} "))
    }
}

/// GETs `{admin_url}/metrics`; panics unless it answers 200.
pub async fn scrape(admin_url: &str) -> Scrape {
    let response = curl(&[&format!("{admin_url}/metrics")]).await;
    assert_eq!(response.status, 200, "GET /metrics: {response:?}");
    Scrape(response.body_text())
}

/// Scrapes until `done` holds (records are counted when a transaction ends, a moment after
/// the client saw its last byte), for at most 10 s; returns the last scrape either way.
pub async fn scrape_until(admin_url: &str, done: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let scrape = scrape(admin_url).await;
        if done(&scrape) || Instant::now() > deadline {
            return scrape;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
