//! Connections per client address (`server.max_connections_per_client`): one client — a
//! runaway script, a slowloris — cannot take every slot of `server.max_connections`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

#[derive(Default)]
pub(crate) struct ClientSlots {
    counts: Mutex<HashMap<IpAddr, usize>>,
}

/// One client connection's slot; given back when dropped.
pub(crate) struct ClientSlot {
    slots: Arc<ClientSlots>,
    ip: IpAddr,
}

impl ClientSlots {
    /// A slot for `ip`, unless it already holds `max` (0: no per-client limit).
    pub(crate) fn try_take(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<ClientSlot> {
        let mut counts = self.counts.lock().ok()?;
        let count = counts.entry(ip).or_insert(0);
        if max != 0 && *count >= max {
            return None;
        }
        *count += 1;
        Some(ClientSlot {
            slots: Arc::clone(self),
            ip,
        })
    }

    #[cfg(test)]
    fn held(&self, ip: IpAddr) -> usize {
        self.counts
            .lock()
            .map(|c| c.get(&ip).copied().unwrap_or(0))
            .unwrap_or(0)
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        if let Ok(mut counts) = self.slots.counts.lock() {
            if let Some(count) = counts.get_mut(&self.ip) {
                *count -= 1;
                if *count == 0 {
                    counts.remove(&self.ip);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![expect(clippy::unwrap_used, reason = "tests")]
    use super::*;

    #[test]
    fn per_client_slots_are_bounded_and_given_back() {
        let slots = Arc::new(ClientSlots::default());
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let first = slots.try_take(a, 2).unwrap();
        let _second = slots.try_take(a, 2).unwrap();
        assert!(slots.try_take(a, 2).is_none());
        assert!(
            slots.try_take(b, 2).is_some(),
            "other clients are not affected"
        );
        drop(first);
        assert!(slots.try_take(a, 2).is_some());
        assert!(slots.try_take(a, 0).is_some(), "0 means no limit");
        drop(_second);
        assert_eq!(slots.held(b), 0);
    }
}
