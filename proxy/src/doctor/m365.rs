//! Microsoft 365 list: loaded (as the proxy loads it), its version and age, and the result of
//! the feed's last fetch.

use std::time::{Duration, SystemTime};

use super::Check;
use crate::config::Config;
use crate::m365_cache;

const FAMILY: &str = "m365";
/// Microsoft changes the list every month or two; a list this old is missing changes.
const STALE: Duration = Duration::from_secs(60 * 86_400);
const IMPORT: &str =
    "allow this host to reach endpoints.office.com (m365.fetch = true), or import a \
                      current list with `portcullis m365 import FILE` and reload";

pub(super) fn run(config: &Config) -> Vec<Check> {
    let cached = m365_cache::load_cached(config);
    let mut out = Vec::new();
    match &cached.version {
        None => out.push(Check::warn(
            FAMILY,
            "endpoint list loaded",
            "no Microsoft 365 endpoint list: only the built-in Outlook hosts and networks apply",
            IMPORT,
        )),
        Some(version) => {
            let age = m365_cache::stored_at(config)
                .and_then(|at| SystemTime::now().duration_since(at).ok())
                .unwrap_or_default();
            let finding = format!(
                "version {version}, {} endpoint sets, stored {} days ago",
                cached.sets.len(),
                age.as_secs() / 86_400
            );
            out.push(if age > STALE {
                Check::warn(FAMILY, "endpoint list loaded", finding, IMPORT)
            } else {
                Check::pass(FAMILY, "endpoint list loaded", finding)
            });
        }
    }
    out.push(last_fetch(config));
    out
}

fn last_fetch(config: &Config) -> Check {
    let name = "last fetch";
    if !config.m365.fetch {
        return Check::pass(
            FAMILY,
            name,
            "fetching is off (m365.fetch = false); the list is imported by hand",
        );
    }
    let Some(last) = m365_cache::last_fetch(config) else {
        return Check::warn(
            FAMILY,
            name,
            "the running proxy has not fetched the list yet",
            "wait for its first check, or look at portcullis_m365_fetches_total",
        );
    };
    let ago = SystemTime::now()
        .duration_since(last.at)
        .unwrap_or_default();
    let finding = format!(
        "{} {} min ago{}",
        last.result,
        ago.as_secs() / 60,
        if last.detail.is_empty() {
            String::new()
        } else {
            format!(": {}", last.detail)
        }
    );
    match last.result.as_str() {
        "unchanged" | "updated" => Check::pass(FAMILY, name, finding),
        // Needs the Internet: a failure here is a warning, with the reason.
        _ => Check::warn(FAMILY, name, finding, IMPORT),
    }
}
