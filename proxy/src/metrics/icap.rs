//! ICAP content adaptation: messages per service and result, and how long each service took.
//! Service names come from the config file (`[[icap.services]].name`), so their number is
//! bounded by it; results are [`IcapResult`]'s small enum.

use std::time::Duration;

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

use crate::icap::IcapResult;

/// A scan is bounded by the service's `timeout` per read; a large file can take seconds.
const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 30.0, 120.0,
];

pub(super) struct IcapFamilies {
    requests: IntCounterVec,
    duration: HistogramVec,
}

impl IcapFamilies {
    pub(super) fn register(r: &Registry) -> Result<IcapFamilies, prometheus::Error> {
        let requests = IntCounterVec::new(
            Opts::new(
                "icap_requests_total",
                "Messages handed to ICAP services, by service and result (unmodified, modified, responded, bypass-size, bypass-error, error).",
            ),
            &["service", "result"],
        )?;
        r.register(Box::new(requests.clone()))?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "icap_duration_seconds",
                "Time from handing a message to an ICAP service to having its answer's head.",
            )
            .buckets(BUCKETS.to_vec()),
            &["service"],
        )?;
        r.register(Box::new(duration.clone()))?;
        Ok(IcapFamilies { requests, duration })
    }

    /// Shows every configured service at zero from the start.
    pub(super) fn services(&self, names: &[&str]) {
        for name in names {
            for result in IcapResult::ALL {
                self.requests.with_label_values(&[name, result.as_str()]);
            }
        }
    }

    pub(super) fn observe(&self, service: &str, result: IcapResult, elapsed: Duration) {
        self.requests
            .with_label_values(&[service, result.as_str()])
            .inc();
        self.duration
            .with_label_values(&[service])
            .observe(elapsed.as_secs_f64());
    }
}
