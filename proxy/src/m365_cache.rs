//! The Microsoft 365 endpoint list kept on disk: `<data_dir>/m365/endpoints.json` (+
//! `version`), the last good list, loaded at start and on every reload and replaced only by a
//! list that parses; and the installation's ClientRequestId GUID. Read by reload (a component
//! below it), written by the feed (`m365_feed.rs`) and `portcullis m365 import`.

use std::path::{Path, PathBuf};

use portcullis_policy::m365::{self, EndpointSet};

use crate::config::Config;

const DIR: &str = "m365";
const ENDPOINTS_FILE: &str = "endpoints.json";
const VERSION_FILE: &str = "version";
const ID_FILE: &str = "client-request-id";
/// `<unix seconds> <result> <detail>` of the feed's last check, for `portcullis doctor`.
const LAST_FETCH_FILE: &str = "last-fetch";

/// The cached list, as loaded for a snapshot.
#[derive(Debug, Default)]
pub(crate) struct Cached {
    pub sets: Vec<EndpointSet>,
    /// `YYYYMMDDNN`, or `imported` for a file from `portcullis m365 import`.
    pub version: Option<String>,
}

fn dir(config: &Config) -> PathBuf {
    config.server.data_dir.join(DIR)
}

/// The cached endpoint list, or none. A damaged cache is reported and ignored: the profile's
/// built-in hosts still apply, and the next fetch replaces it.
pub(crate) fn load_cached(config: &Config) -> Cached {
    let dir = dir(config);
    let text = match std::fs::read_to_string(dir.join(ENDPOINTS_FILE)) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Cached::default(),
        Err(e) => {
            tracing::warn!(path = %dir.display(), error = %e, "cannot read the cached Microsoft 365 endpoint list");
            return Cached::default();
        }
    };
    match m365::parse_endpoints(&text) {
        Ok(sets) => Cached {
            sets,
            version: std::fs::read_to_string(dir.join(VERSION_FILE))
                .ok()
                .map(|v| v.trim().to_owned()),
        },
        Err(e) => {
            tracing::warn!(path = %dir.display(), error = %e, "ignoring the damaged cached Microsoft 365 endpoint list");
            Cached::default()
        }
    }
}

/// Validates `json` as an endpoint list and stores it as the cached list with `version`.
pub(crate) fn store(config: &Config, json: &str, version: &str) -> Result<usize, String> {
    let sets = m365::parse_endpoints(json).map_err(|e| e.to_string())?;
    let dir = dir(config);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    write_atomically(&dir.join(ENDPOINTS_FILE), json.as_bytes())?;
    write_atomically(&dir.join(VERSION_FILE), format!("{version}\n").as_bytes())?;
    Ok(sets.len())
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// The GUID identifying this installation to the service, created once.
pub(crate) fn client_request_id(config: &Config) -> String {
    let path = dir(config).join(ID_FILE);
    if let Ok(id) = std::fs::read_to_string(&path) {
        let id = id.trim();
        if id.len() == 36 {
            return id.to_owned();
        }
    }
    let id = uuid::Uuid::new_v4().to_string();
    let _ = std::fs::create_dir_all(dir(config));
    if let Err(e) = std::fs::write(&path, format!("{id}\n")) {
        tracing::debug!(path = %path.display(), error = %e, "cannot keep the Microsoft 365 ClientRequestId");
    }
    id
}

/// The version of the cached list, if any (`YYYYMMDDNN` or `imported`).
pub(crate) fn cached_version(config: &Config) -> Option<String> {
    std::fs::read_to_string(dir(config).join(VERSION_FILE)).ok()
}

/// When the cached list was stored (its file's modification time).
pub(crate) fn stored_at(config: &Config) -> Option<std::time::SystemTime> {
    std::fs::metadata(dir(config).join(ENDPOINTS_FILE))
        .and_then(|m| m.modified())
        .ok()
}

/// The outcome of the feed's last check (`unchanged`, `updated`, `throttled`, `failed`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LastFetch {
    pub at: std::time::SystemTime,
    pub result: String,
    pub detail: String,
}

/// Remembers the feed's last check on disk, so that `portcullis doctor` (another process) can
/// report it. Best effort: a data directory that cannot take it changes nothing else.
pub(crate) fn record_fetch(config: &Config, result: &str, detail: &str) {
    let at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let line = format!("{at} {result} {}\n", detail.replace('\n', " "));
    let _ = std::fs::create_dir_all(dir(config));
    if let Err(e) = write_atomically(&dir(config).join(LAST_FETCH_FILE), line.as_bytes()) {
        tracing::debug!(error = %e, "cannot record the Microsoft 365 fetch result");
    }
}

/// The last check [`record_fetch`] remembered.
pub(crate) fn last_fetch(config: &Config) -> Option<LastFetch> {
    let text = std::fs::read_to_string(dir(config).join(LAST_FETCH_FILE)).ok()?;
    let mut parts = text.trim_end().splitn(3, ' ');
    let secs = parts.next()?.parse::<u64>().ok()?;
    Some(LastFetch {
        at: std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs),
        result: parts.next()?.to_owned(),
        detail: parts.next().unwrap_or_default().to_owned(),
    })
}

#[cfg(test)]
mod tests {
    #![expect(clippy::unwrap_used, reason = "tests")]
    use super::*;

    #[test]
    fn request_ids_are_version_4_guids_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.server.data_dir = dir.path().to_owned();
        let id = client_request_id(&config);
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert!("89ab".contains(&id[19..20]), "{id}");
        assert_eq!(client_request_id(&config), id);
    }

    #[test]
    fn a_damaged_cache_is_ignored_and_a_valid_one_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.server.data_dir = dir.path().to_owned();
        assert!(load_cached(&config).sets.is_empty());
        assert!(store(&config, "{not json", "2026010100").is_err());
        let json = r#"[{"id":1,"serviceArea":"Exchange","urls":["outlook.example.test"],"tcpPorts":"443","category":"Optimize","required":true}]"#;
        assert_eq!(store(&config, json, "2026010100").unwrap(), 1);
        let cached = load_cached(&config);
        assert_eq!(
            (cached.sets.len(), cached.version.as_deref()),
            (1, Some("2026010100"))
        );
        assert!(stored_at(&config).is_some());
        assert_eq!(last_fetch(&config), None);
        record_fetch(&config, "failed", "dns error:\nno such host");
        let last = last_fetch(&config).unwrap();
        assert_eq!(
            (last.result.as_str(), last.detail.as_str()),
            ("failed", "dns error: no such host")
        );
        std::fs::write(dir.path().join("m365/endpoints.json"), "garbage").unwrap();
        assert!(load_cached(&config).sets.is_empty());
    }
}
