//! `/doctor` on the admin listener: the report of the last minute, shared by every caller, so
//! that polling it cannot make the proxy probe the network more than once a minute. The last
//! summary is kept for the proxy's info page.
//!
//! One cache per process, in a static: the admin listener and the info page are served by
//! different layers that share no state, and a process runs one proxy.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use super::{Inputs, Report, Summary};
use crate::reload::Reloader;

const TTL: Duration = Duration::from_secs(60);

static LAST: tokio::sync::Mutex<Option<(Instant, Arc<Report>)>> =
    tokio::sync::Mutex::const_new(None);
static SUMMARY: Mutex<Option<(SystemTime, Summary)>> = Mutex::new(None);

/// The report of the last minute, or a fresh one. Callers arriving while a run is under way
/// wait for it instead of starting their own.
pub(crate) async fn report(reloader: &Reloader) -> Arc<Report> {
    let mut last = LAST.lock().await;
    if let Some((at, report)) = last.as_ref() {
        if at.elapsed() < TTL {
            return Arc::clone(report);
        }
    }
    let proxy = reloader.current();
    let inputs = Inputs {
        source: reloader.source().clone(),
        config: (*proxy.config).clone(),
        proxy: proxy.listen_addrs.first().copied(),
        // Never with credentials: the admin endpoint has none to use.
        credentials: None,
    };
    drop(proxy);
    let report = Arc::new(super::run(inputs).await);
    if let Ok(mut summary) = SUMMARY.lock() {
        *summary = Some((SystemTime::now(), report.summary));
    }
    *last = Some((Instant::now(), Arc::clone(&report)));
    report
}

/// The info page's line about the last `/doctor` run: counts only, the details are for the
/// administrator (`portcullis doctor`, or `/doctor` on the admin listener).
pub(crate) fn info_line() -> Option<String> {
    let (at, s) = SUMMARY.lock().ok().and_then(|s| *s)?;
    Some(format!(
        "Outlook connectivity self-test of {}: {} passed, {} warnings, {} failed. Details: \
         `portcullis doctor` on the proxy host.",
        httpdate::fmt_http_date(at),
        s.pass,
        s.warn,
        s.fail
    ))
}
