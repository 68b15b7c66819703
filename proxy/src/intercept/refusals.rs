//! Clients that refused an intercepted connection. A client that pins its server's certificate
//! (or lacks the proxy's CA) aborts the handshake with an alert; it will abort every retry the
//! same way. For `tls.tunnel_after_refusal`, that client's further tunnels to that host are
//! relayed untouched instead, so the application works on its next attempt — the origin's own
//! certificate reaches it, which it verifies itself. Keyed by client *and* host: one client's
//! refusal never turns off inspection for anybody else.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Remembered refusals; beyond this many, the oldest half is forgotten.
const MAX_ENTRIES: usize = 10_000;

pub(crate) struct Refusals {
    ttl: Duration,
    seen: Mutex<HashMap<(IpAddr, Box<str>), Instant>>,
}

impl Refusals {
    /// `ttl` zero disables the mechanism.
    pub(crate) fn new(ttl: Duration) -> Refusals {
        Refusals {
            ttl,
            seen: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn remember(&self, client: IpAddr, host: &str) {
        if self.ttl.is_zero() {
            return;
        }
        let Ok(mut seen) = self.seen.lock() else {
            return;
        };
        if seen.len() >= MAX_ENTRIES {
            let mut ages: Vec<Instant> = seen.values().copied().collect();
            ages.sort_unstable();
            let cutoff = ages[ages.len() / 2];
            seen.retain(|_, at| *at > cutoff);
        }
        seen.insert((client, host.to_ascii_lowercase().into()), Instant::now());
    }

    /// Whether `client` refused an intercepted connection to `host` within the last `ttl`.
    pub(crate) fn contains(&self, client: IpAddr, host: &str) -> bool {
        if self.ttl.is_zero() {
            return false;
        }
        let Ok(seen) = self.seen.lock() else {
            return false;
        };
        seen.get(&(client, host.to_ascii_lowercase().into()))
            .is_some_and(|at| at.elapsed() < self.ttl)
    }
}

#[cfg(test)]
mod tests {
    #![expect(clippy::unwrap_used, reason = "tests")]
    use super::*;

    #[test]
    fn remembered_per_client_and_host_until_the_ttl() {
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let r = Refusals::new(Duration::from_millis(200));
        r.remember(a, "Pinned.Example");
        assert!(r.contains(a, "pinned.example"));
        assert!(!r.contains(b, "pinned.example"));
        assert!(!r.contains(a, "other.example"));
        std::thread::sleep(Duration::from_millis(250));
        assert!(!r.contains(a, "pinned.example"));
        let off = Refusals::new(Duration::ZERO);
        off.remember(a, "x");
        assert!(!off.contains(a, "x"));
    }

    #[test]
    fn stays_bounded() {
        let r = Refusals::new(Duration::from_secs(60));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        for i in 0..(MAX_ENTRIES + 10) {
            r.remember(a, &format!("h{i}"));
        }
        assert!(r.seen.lock().unwrap().len() <= MAX_ENTRIES);
        assert!(r.contains(a, &format!("h{}", MAX_ENTRIES + 9)));
    }
}
