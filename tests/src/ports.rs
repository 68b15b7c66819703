//! Loopback ports for the servers the tests start.
//!
//! [`free_port`] is enough for a server that binds once. A server the test stops and starts
//! again on the same port (a directory or parent outage) needs [`ReservedPort`]: while it is
//! down, a port from the ephemeral range can become the local port of any connection another
//! test makes, and the restart then fails to bind (CI saw exactly that: "slapd did not start").

use nix::fcntl::{Flock, FlockArg};
use std::fs::{File, OpenOptions};
use std::net::TcpListener;
use std::time::{SystemTime, UNIX_EPOCH};

/// A loopback port the kernel found free just now (bound to port 0 and released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("cannot find a free port: {e}"))
}

/// A loopback port outside the kernel's ephemeral range, held by this process until dropped.
///
/// Outside the range, no connection is ever given it as its local port; the lock file keeps
/// other test processes (nextest runs each test in its own) from choosing it too.
pub struct ReservedPort {
    port: u16,
    _lock: Flock<File>,
}

impl ReservedPort {
    pub fn new() -> ReservedPort {
        let (low, high) = ephemeral_range();
        let candidates: Vec<u16> = (10_000..low)
            .chain(high.saturating_add(1)..=65_535)
            .collect();
        assert!(
            candidates.len() > 1_000,
            "the ephemeral port range {low}-{high} leaves no room for reserved test ports"
        );
        let dir = std::env::temp_dir().join("portcullis-e2e-ports");
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let mut seed = seed();
        for _ in 0..1_000 {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let port = candidates[(seed >> 33) as usize % candidates.len()];
            let path = dir.join(port.to_string());
            let Ok(lock) = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
            else {
                continue;
            };
            let Ok(lock) = Flock::lock(lock, FlockArg::LockExclusiveNonblock) else {
                continue;
            };
            // Someone outside the tests may be listening on it.
            if TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return ReservedPort { port, _lock: lock };
            }
        }
        panic!("no free port outside the ephemeral range {low}-{high}");
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:port`.
    pub fn addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.port))
    }
}

impl Default for ReservedPort {
    fn default() -> Self {
        ReservedPort::new()
    }
}

fn ephemeral_range() -> (u16, u16) {
    let text =
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default();
    let mut parts = text.split_whitespace().map(str::parse::<u16>);
    match (parts.next(), parts.next()) {
        (Some(Ok(low)), Some(Ok(high))) => (low, high),
        _ => (32_768, 60_999),
    }
}

fn seed() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default();
    nanos ^ (u64::from(std::process::id()) << 32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_ports_are_outside_the_ephemeral_range_and_distinct() {
        let (low, high) = ephemeral_range();
        let a = ReservedPort::new();
        let b = ReservedPort::new();
        assert_ne!(
            a.port(),
            b.port(),
            "a held reservation was handed out again"
        );
        for p in [a.port(), b.port()] {
            assert!(!(low..=high).contains(&p), "{p} is in {low}-{high}");
            TcpListener::bind(("127.0.0.1", p)).unwrap();
        }
    }
}
