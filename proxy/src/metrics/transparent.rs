//! The transparent listeners' own series, labelled by listener kind (`transparent_http`,
//! `transparent_tls`): two values, times the four decisions, so the series stay bounded.

use prometheus::{IntCounterVec, Opts, Registry};

use super::Metrics;
use crate::original_dst::TransparentKind;
use crate::record::{Disposition, Record};

const KINDS: [TransparentKind; 2] = [TransparentKind::Http, TransparentKind::Tls];

pub(super) struct TransparentFamilies {
    transactions: IntCounterVec,
    refused: IntCounterVec,
}

impl TransparentFamilies {
    pub(super) fn register(r: &Registry) -> Result<TransparentFamilies, prometheus::Error> {
        let transactions = IntCounterVec::new(
            Opts::new(
                "transparent_transactions_total",
                "Finished transactions from transparent (netfilter-redirected) listeners, by listener kind and decision.",
            ),
            &["listener", "decision"],
        )?;
        let refused = IntCounterVec::new(
            Opts::new(
                "transparent_connections_refused_total",
                "Connections on transparent listeners closed unserved: not redirected, or the original destination is this proxy (a loop).",
            ),
            &["listener"],
        )?;
        r.register(Box::new(transactions.clone()))?;
        r.register(Box::new(refused.clone()))?;
        // Every series from the start, at zero.
        for kind in KINDS {
            refused.with_label_values(&[kind.as_str()]);
            for d in Disposition::ALL {
                transactions.with_label_values(&[kind.as_str(), d.as_str()]);
            }
        }
        Ok(TransparentFamilies {
            transactions,
            refused,
        })
    }

    pub(super) fn observe(&self, record: &Record) {
        if let Some(kind) = record.transparent {
            self.transactions
                .with_label_values(&[kind.as_str(), record.disposition().as_str()])
                .inc();
        }
    }
}

impl Metrics {
    /// A connection on a transparent listener was closed unserved (see `original_dst`).
    pub(crate) fn transparent_refused(&self, kind: TransparentKind) {
        self.transparent
            .refused
            .with_label_values(&[kind.as_str()])
            .inc();
    }
}
