//! Per-client failure throttling: after `failures` bad credentials from one address within
//! `window`, each further failure from that address is answered after a growing delay (100 ms,
//! doubling, capped at `max_delay`). Only that client's own requests wait; nobody else is slowed.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Bound on tracked addresses; beyond it, entries outside the window are dropped first.
const MAX_TRACKED: usize = 100_000;

pub(super) struct Throttle {
    failures: u32,
    window: Duration,
    max_delay: Duration,
    clients: Mutex<HashMap<IpAddr, Entry>>,
}

struct Entry {
    count: u32,
    since: Instant,
}

impl Throttle {
    pub(super) fn new(failures: u32, window: Duration, max_delay: Duration) -> Throttle {
        Throttle {
            failures,
            window,
            max_delay,
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// Records a failure and returns how long to hold the answer (zero below the threshold).
    pub(super) fn failure(&self, client: IpAddr) -> Duration {
        let Ok(mut clients) = self.clients.lock() else {
            return Duration::ZERO;
        };
        let now = Instant::now();
        if clients.len() >= MAX_TRACKED {
            let window = self.window;
            clients.retain(|_, e| now.duration_since(e.since) < window);
            if clients.len() >= MAX_TRACKED {
                clients.clear();
            }
        }
        let entry = clients.entry(client).or_insert(Entry {
            count: 0,
            since: now,
        });
        if now.duration_since(entry.since) >= self.window {
            *entry = Entry {
                count: 0,
                since: now,
            };
        }
        entry.count = entry.count.saturating_add(1);
        self.delay(entry.count)
    }

    pub(super) fn success(&self, client: IpAddr) {
        if let Ok(mut clients) = self.clients.lock() {
            clients.remove(&client);
        }
    }

    fn delay(&self, count: u32) -> Duration {
        if count <= self.failures {
            return Duration::ZERO;
        }
        let exponent = (count - self.failures - 1).min(16);
        Duration::from_millis(100u64 << exponent).min(self.max_delay)
    }
}

#[cfg(test)]
mod tests {
    #![expect(clippy::unwrap_used, reason = "tests")]
    use super::*;

    #[test]
    fn delay_grows_per_client_only() {
        let t = Throttle::new(3, Duration::from_secs(60), Duration::from_secs(1));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let delays: Vec<u64> = (0..8).map(|_| t.failure(a).as_millis() as u64).collect();
        assert_eq!(delays, [0, 0, 0, 100, 200, 400, 800, 1000]);
        assert_eq!(t.failure(b), Duration::ZERO, "another client was slowed");
        t.success(a);
        assert_eq!(t.failure(a), Duration::ZERO);
    }
}
