//! Failure throttling: after `failures` bad credentials within `window` from one client address,
//! or for one user name from anywhere, each further failure is answered after a growing delay
//! (100 ms, doubling, capped at `max_delay`). Only failing requests wait: a correct login is
//! never held back, and nobody else is slowed.
//!
//! A success clears only what it proves: the failures of *that* user name — its own counter and
//! the ones this address made for that name. It never clears another name's counter, nor the
//! address's failures for other names, so an attacker holding one valid account cannot wipe
//! the slate by logging in between guesses at someone else's password.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Bound on tracked addresses and on tracked user names; beyond it, entries outside the window
/// are dropped first.
const MAX_TRACKED: usize = 100_000;
/// Names remembered per address (so that a success can take back that name's failures); the
/// failures for names beyond this stay on the address until the window ends.
const MAX_NAMES_PER_CLIENT: usize = 32;

pub(super) struct Throttle {
    failures: u32,
    window: Duration,
    max_delay: Duration,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    clients: HashMap<IpAddr, ClientEntry>,
    users: HashMap<Box<str>, Entry>,
}

#[derive(Clone, Copy)]
struct Entry {
    count: u32,
    since: Instant,
}

impl Entry {
    fn new(now: Instant) -> Entry {
        Entry {
            count: 0,
            since: now,
        }
    }
}

struct ClientEntry {
    total: Entry,
    /// The part of `total.count` made for each presented user name.
    by_user: HashMap<Box<str>, u32>,
}

impl Throttle {
    pub(super) fn new(failures: u32, window: Duration, max_delay: Duration) -> Throttle {
        Throttle {
            failures,
            window,
            max_delay,
            state: Mutex::new(State::default()),
        }
    }

    /// Records a failure from `client` for `user` (the name presented, if any) and returns how
    /// long to hold the answer (zero below the threshold).
    pub(super) fn failure(&self, client: IpAddr, user: Option<&str>) -> Duration {
        let Ok(mut state) = self.state.lock() else {
            return Duration::ZERO;
        };
        let now = Instant::now();
        let window = self.window;
        let fresh = |e: &Entry| now.duration_since(e.since) < window;
        let State { clients, users } = &mut *state;
        if clients.len() >= MAX_TRACKED {
            clients.retain(|_, e| fresh(&e.total));
            if clients.len() >= MAX_TRACKED {
                clients.clear();
            }
        }
        let entry = clients.entry(client).or_insert_with(|| ClientEntry {
            total: Entry::new(now),
            by_user: HashMap::new(),
        });
        if !fresh(&entry.total) {
            entry.total = Entry::new(now);
            entry.by_user.clear();
        }
        entry.total.count = entry.total.count.saturating_add(1);
        let mut count = entry.total.count;
        if let Some(user) = user {
            let tracked =
                entry.by_user.len() < MAX_NAMES_PER_CLIENT || entry.by_user.contains_key(user);
            if tracked {
                let n = entry.by_user.entry(user.into()).or_default();
                *n = n.saturating_add(1);
            }
            if users.len() >= MAX_TRACKED && !users.contains_key(user) {
                users.retain(|_, e| fresh(e));
                if users.len() >= MAX_TRACKED {
                    users.clear();
                }
            }
            let named = users.entry(user.into()).or_insert(Entry::new(now));
            if !fresh(named) {
                *named = Entry::new(now);
            }
            named.count = named.count.saturating_add(1);
            count = count.max(named.count);
        }
        self.delay(count)
    }

    /// `user` proved its credentials from `client`: forget that name's failures, and only those.
    pub(super) fn success(&self, client: IpAddr, user: &str) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        state.users.remove(user);
        if let Some(entry) = state.clients.get_mut(&client) {
            if let Some(n) = entry.by_user.remove(user) {
                entry.total.count = entry.total.count.saturating_sub(n);
            }
            if entry.total.count == 0 {
                state.clients.remove(&client);
            }
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

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn ms(d: Duration) -> u64 {
        d.as_millis() as u64
    }

    #[test]
    fn delay_grows_per_client_only() {
        let t = Throttle::new(3, Duration::from_secs(60), Duration::from_secs(1));
        let (a, b) = (ip("10.0.0.1"), ip("10.0.0.2"));
        let delays: Vec<u64> = (0..8).map(|_| ms(t.failure(a, None))).collect();
        assert_eq!(delays, [0, 0, 0, 100, 200, 400, 800, 1000]);
        assert_eq!(
            t.failure(b, None),
            Duration::ZERO,
            "another client was slowed"
        );
    }

    #[test]
    fn another_users_success_clears_nothing() {
        let t = Throttle::new(5, Duration::from_secs(60), Duration::from_secs(1));
        let a = ip("10.0.0.1");
        let mut delayed = 0;
        for _ in 0..10 {
            for _ in 0..4 {
                if !t.failure(a, Some("alice")).is_zero() {
                    delayed += 1;
                }
            }
            t.success(a, "mallory");
        }
        assert_eq!(delayed, 35);
    }

    #[test]
    fn a_success_clears_its_own_name_only() {
        let t = Throttle::new(2, Duration::from_secs(60), Duration::from_secs(1));
        let a = ip("10.0.0.1");
        t.failure(a, Some("bob"));
        t.failure(a, Some("bob"));
        t.failure(a, Some("carol"));
        // bob logs in: bob's two failures go, carol's stays with the address.
        t.success(a, "bob");
        assert_eq!(t.failure(a, Some("dave")), Duration::ZERO);
        assert_eq!(ms(t.failure(a, Some("dave"))), 100);
        // Failures without a name (malformed, Negotiate) are never taken back by a success.
        let b = ip("10.0.0.2");
        t.failure(b, None);
        t.failure(b, None);
        t.success(b, "erin");
        assert_eq!(ms(t.failure(b, Some("erin"))), 100);
    }

    #[test]
    fn a_user_guessed_from_many_addresses_is_slowed_everywhere() {
        let t = Throttle::new(3, Duration::from_secs(60), Duration::from_secs(1));
        let delays: Vec<u64> = (1..=5)
            .map(|i| ms(t.failure(ip(&format!("10.0.1.{i}")), Some("alice"))))
            .collect();
        assert_eq!(delays, [0, 0, 0, 100, 200]);
        // Another name from a fresh address is not slowed.
        assert_eq!(t.failure(ip("10.0.1.9"), Some("bob")), Duration::ZERO);
        // alice's own success ends it.
        t.success(ip("10.0.1.1"), "alice");
        assert_eq!(t.failure(ip("10.0.1.6"), Some("alice")), Duration::ZERO);
    }

    #[test]
    fn the_window_forgets() {
        let t = Throttle::new(1, Duration::from_millis(50), Duration::from_secs(1));
        let a = ip("10.0.0.1");
        t.failure(a, Some("x"));
        assert_eq!(ms(t.failure(a, Some("x"))), 100);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(t.failure(a, Some("x")), Duration::ZERO);
    }
}
