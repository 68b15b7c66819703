//! Group lookups (`[auth.groups]`): counted by source and result, directory latency observed.

use std::time::Duration;

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

/// Directory lookups are bounded by `auth.groups.timeout` (at most 30 s).
const LOOKUP_BUCKETS: [f64; 11] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 30.0,
];

/// Where a user's groups came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GroupSource {
    File,
    Ldap,
}

impl GroupSource {
    const ALL: [GroupSource; 2] = [GroupSource::File, GroupSource::Ldap];

    fn as_str(self) -> &'static str {
        match self {
            GroupSource::File => "file",
            GroupSource::Ldap => "ldap",
        }
    }
}

/// What one lookup found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GroupLookup {
    /// A fresh answer (the file, or the cache within its TTL).
    Hit,
    /// A cached answer older than the TTL, served while a background lookup refreshes it.
    Stale,
    /// Nothing cached: the request waited for the directory.
    Miss,
    /// The directory failed (or failed a moment ago, with nothing cached).
    Error,
}

impl GroupLookup {
    const ALL: [GroupLookup; 4] = [
        GroupLookup::Hit,
        GroupLookup::Stale,
        GroupLookup::Miss,
        GroupLookup::Error,
    ];

    fn as_str(self) -> &'static str {
        match self {
            GroupLookup::Hit => "hit",
            GroupLookup::Stale => "stale",
            GroupLookup::Miss => "miss",
            GroupLookup::Error => "error",
        }
    }
}

pub(super) struct GroupFamilies {
    lookups: IntCounterVec,
    duration: HistogramVec,
}

impl GroupFamilies {
    pub(super) fn register(r: &Registry) -> Result<GroupFamilies, prometheus::Error> {
        let lookups = IntCounterVec::new(
            Opts::new(
                "group_lookups_total",
                "Group membership lookups for authenticated users, by source and result (hit, stale, miss, error).",
            ),
            &["source", "result"],
        )?;
        r.register(Box::new(lookups.clone()))?;
        for source in GroupSource::ALL {
            for result in GroupLookup::ALL {
                lookups.with_label_values(&[source.as_str(), result.as_str()]);
            }
        }
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "group_lookup_duration_seconds",
                "Time a directory group lookup took (foreground and background refreshes).",
            )
            .buckets(LOOKUP_BUCKETS.to_vec()),
            &["source"],
        )?;
        r.register(Box::new(duration.clone()))?;
        Ok(GroupFamilies { lookups, duration })
    }

    pub(super) fn lookup(&self, source: GroupSource, result: GroupLookup) {
        self.lookups
            .with_label_values(&[source.as_str(), result.as_str()])
            .inc();
    }

    pub(super) fn duration(&self, source: GroupSource, elapsed: Duration) {
        self.duration
            .with_label_values(&[source.as_str()])
            .observe(elapsed.as_secs_f64());
    }
}
