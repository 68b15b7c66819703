//! Clients that refused an intercepted connection. A client that pins its server's certificate
//! aborts the handshake with an alert, and will abort every retry the same way. For the hosts
//! in `tls.tunnel_after_refusal_hosts` (the pinning applications' servers), and for
//! `tls.tunnel_after_refusal` (off by default), that client's further tunnels to that host are
//! relayed untouched instead, so the application works on its next attempt — the origin's own
//! certificate reaches it, which it verifies itself.
//!
//! Keyed by client *and* host: one client's refusal never turns off inspection for anybody
//! else. Limited to listed hosts because any client can abort a handshake: unlisted, one
//! alert would switch inspection of any host off for that client. The caller asks only for
//! tunnels the policy decided to inspect, after the SNI re-decision, so a refusal never opens
//! a host the policy denies (`http/inspect.rs`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use portcullis_policy::host::{normalise, HostPattern};

/// Remembered refusals; beyond this many, the oldest half is forgotten.
const MAX_ENTRIES: usize = 10_000;

pub(crate) struct Refusals {
    ttl: Duration,
    /// The only hosts refusals are remembered and honoured for.
    hosts: Vec<HostPattern>,
    seen: Mutex<HashMap<(IpAddr, Box<str>), Instant>>,
}

impl Refusals {
    /// `ttl` zero, or no `hosts`, disables the mechanism.
    pub(crate) fn new(ttl: Duration, hosts: Vec<HostPattern>) -> Refusals {
        Refusals {
            ttl,
            hosts,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// The key for `host` when refusals of it count at all: the mechanism is on and the host
    /// is listed.
    fn key(&self, host: &str) -> Option<Box<str>> {
        if self.ttl.is_zero() {
            return None;
        }
        let host = normalise(host);
        self.hosts
            .iter()
            .any(|p| p.matches(&host))
            .then(|| host.into_boxed_str())
    }

    /// Whether a refusal of `host` would be remembered (for the diagnostic log line).
    pub(crate) fn covers(&self, host: &str) -> bool {
        self.key(host).is_some()
    }

    pub(crate) fn remember(&self, client: IpAddr, host: &str) {
        let Some(key) = self.key(host) else {
            return;
        };
        let Ok(mut seen) = self.seen.lock() else {
            return;
        };
        if seen.len() >= MAX_ENTRIES {
            let mut ages: Vec<Instant> = seen.values().copied().collect();
            ages.sort_unstable();
            let cutoff = ages[ages.len() / 2];
            seen.retain(|_, at| *at > cutoff);
        }
        seen.insert((client, key), Instant::now());
    }

    /// Whether `client` refused an intercepted connection to the listed `host` within the last
    /// `ttl`.
    pub(crate) fn contains(&self, client: IpAddr, host: &str) -> bool {
        let Some(key) = self.key(host) else {
            return false;
        };
        let Ok(seen) = self.seen.lock() else {
            return false;
        };
        seen.get(&(client, key))
            .is_some_and(|at| at.elapsed() < self.ttl)
    }
}

#[cfg(test)]
mod tests {
    #![expect(clippy::unwrap_used, reason = "tests")]
    use super::*;

    fn listed(patterns: &[&str]) -> Vec<HostPattern> {
        patterns
            .iter()
            .map(|p| HostPattern::parse(p).unwrap())
            .collect()
    }

    #[test]
    fn remembered_per_client_and_host_until_the_ttl() {
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let r = Refusals::new(
            Duration::from_millis(200),
            listed(&["pinned.example", "other.example"]),
        );
        r.remember(a, "Pinned.Example");
        assert!(r.contains(a, "pinned.example"));
        assert!(!r.contains(b, "pinned.example"));
        assert!(!r.contains(a, "other.example"));
        std::thread::sleep(Duration::from_millis(250));
        assert!(!r.contains(a, "pinned.example"));
        let off = Refusals::new(Duration::ZERO, listed(&["x"]));
        off.remember(a, "x");
        assert!(!off.contains(a, "x"));
    }

    /// Only listed hosts: a refusal of any other host is neither remembered nor honoured.
    #[test]
    fn only_listed_hosts_count() {
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let r = Refusals::new(Duration::from_secs(60), listed(&["*.bank.example"]));
        for host in [
            "www.bank.example",
            "WWW.Bank.Example.",
            "other.example",
            "bank.example",
        ] {
            r.remember(a, host);
        }
        assert!(r.contains(a, "www.bank.example"));
        assert!(r.covers("login.bank.example"));
        assert!(!r.contains(a, "other.example"));
        assert!(!r.contains(a, "bank.example"));
        assert_eq!(r.seen.lock().unwrap().len(), 1);
        let none = Refusals::new(Duration::from_secs(60), Vec::new());
        none.remember(a, "www.bank.example");
        assert!(!none.contains(a, "www.bank.example"));
        assert!(!none.covers("www.bank.example"));
    }

    #[test]
    fn stays_bounded() {
        let r = Refusals::new(Duration::from_secs(60), listed(&["*.example"]));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        for i in 0..(MAX_ENTRIES + 10) {
            r.remember(a, &format!("h{i}.example"));
        }
        assert!(r.seen.lock().unwrap().len() <= MAX_ENTRIES);
        assert!(r.contains(a, &format!("h{}.example", MAX_ENTRIES + 9)));
    }
}
