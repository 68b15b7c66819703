//! Group membership of authenticated users, for the policy's `group` rules (`[auth.groups]`).
//!
//! Groups are a fact the proxy resolves for the user it authenticated — from a group file or
//! the directory, never from anything the client sent — and hands to the (pure) policy as
//! [`portcullis_policy::Identity::groups`], normalised so spelling cannot dodge a rule.
//!
//! Directory answers are cached per account for `ttl`. An older answer is served at once while
//! one background lookup refreshes it, so a request never waits on the directory when an answer
//! is cached. With nothing cached, a request waits at most `timeout`; a failure then means no
//! directory groups for that request (a `group` rule does not match), counted and logged, and
//! the account is not asked about again for a short back-off so that an outage does not make
//! every request wait.
//!
//! One [`Groups`] lives across reloads while `[auth.groups]` is unchanged (`reload.rs`), so a
//! SIGHUP does not throw the cache away; the group file is re-read on change and on SIGHUP.

mod file;
mod ldap;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use portcullis_policy::account_name;

use crate::config::{GroupSourceKind, GroupsConfig};
use crate::metrics::{GroupLookup, GroupSource, Metrics};
use file::FileSource;
pub(crate) use file::GroupFileError;
pub(crate) use ldap::LdapSetupError;
use ldap::LdapSource;

/// Bound on cached accounts; when full, answers older than the TTL go, then everything.
const CACHE_MAX: usize = 50_000;

/// Why `[auth.groups]` cannot be set up.
#[derive(Debug, thiserror::Error)]
pub(crate) enum GroupsSetupError {
    #[error("{0}")]
    File(GroupFileError),
    #[error("{0}")]
    Ldap(LdapSetupError),
}

impl GroupsSetupError {
    /// The config key the error is about.
    pub(crate) fn key(&self) -> &'static str {
        match self {
            GroupsSetupError::File(_) => "auth.groups.file",
            GroupsSetupError::Ldap(e) => e.key(),
        }
    }
}

/// One account's directory answer.
struct Entry {
    /// `None`: the last lookup failed and nothing was known before it.
    groups: Option<Arc<[String]>>,
    fetched: Instant,
    /// No new lookup for this account before this instant (after a failure).
    retry_at: Instant,
    refreshing: Arc<AtomicBool>,
}

pub(crate) struct Groups {
    config: GroupsConfig,
    file: Option<FileSource>,
    ldap: Option<Arc<LdapSource>>,
    cache: Arc<Mutex<HashMap<String, Entry>>>,
}

impl Groups {
    /// Builds the sources, or `None` when `[auth.groups]` names none. Reads the group file
    /// (and the LDAP password and CA files) now: a wrong path fails the start or the reload.
    pub(crate) fn new(config: &GroupsConfig) -> Result<Option<Groups>, GroupsSetupError> {
        if config.sources.is_empty() {
            return Ok(None);
        }
        let file = match (
            &config.file,
            config.sources.contains(&GroupSourceKind::File),
        ) {
            (Some(path), true) => Some(FileSource::load(path).map_err(GroupsSetupError::File)?),
            _ => None,
        };
        let ldap = match (
            &config.ldap,
            config.sources.contains(&GroupSourceKind::Ldap),
        ) {
            (Some(ldap), true) => Some(Arc::new(
                LdapSource::new(ldap).map_err(GroupsSetupError::Ldap)?,
            )),
            _ => None,
        };
        Ok(Some(Groups {
            config: config.clone(),
            file,
            ldap,
            cache: Arc::new(Mutex::new(HashMap::new())),
        }))
    }

    /// Re-reads the group file if it changed (`force`: even if not). Blocking.
    pub(crate) fn reload(&self, force: bool) {
        if let Some(file) = &self.file {
            file.reload(force);
        }
    }

    /// The groups of `user` (as authenticated: `alice`, `alice@REALM`, `DOMAIN\alice`) from
    /// every source in order, normalised and without duplicates.
    pub(crate) async fn resolve(&self, user: &str, metrics: &Arc<Metrics>) -> Arc<[String]> {
        let account = account_name(user);
        let mut all: Vec<String> = Vec::new();
        for kind in &self.config.sources {
            let found: Vec<String> = match kind {
                GroupSourceKind::File => match &self.file {
                    Some(file) => {
                        metrics.group_lookup(GroupSource::File, GroupLookup::Hit);
                        file.groups_of(&account)
                    }
                    None => Vec::new(),
                },
                GroupSourceKind::Ldap => match &self.ldap {
                    Some(ldap) => self
                        .directory_answer(ldap, &account, metrics)
                        .await
                        .to_vec(),
                    None => Vec::new(),
                },
            };
            for group in found {
                if !all.contains(&group) {
                    all.push(group);
                }
            }
        }
        all.into()
    }

    /// The directory's answer for `account`: cached (refreshed in the background when older
    /// than the TTL), or looked up now within `timeout`.
    async fn directory_answer(
        &self,
        ldap: &Arc<LdapSource>,
        account: &str,
        metrics: &Arc<Metrics>,
    ) -> Arc<[String]> {
        let count = |result| metrics.group_lookup(GroupSource::Ldap, result);
        let now = Instant::now();
        let cached = self.cache.lock().ok().and_then(|cache| {
            cache.get(account).map(|e| {
                (
                    e.groups.clone(),
                    e.fetched,
                    e.retry_at,
                    Arc::clone(&e.refreshing),
                )
            })
        });
        match cached {
            Some((Some(groups), fetched, retry_at, refreshing)) => {
                if now.duration_since(fetched) < self.config.ttl {
                    count(GroupLookup::Hit);
                } else {
                    count(GroupLookup::Stale);
                    if now >= retry_at && !refreshing.swap(true, Ordering::AcqRel) {
                        self.refresh_in_background(ldap, account, refreshing, metrics);
                    }
                }
                groups
            }
            Some((None, _, retry_at, _)) if now < retry_at => {
                // Failed a moment ago: do not make this request wait for it again.
                count(GroupLookup::Error);
                Arc::from([])
            }
            _ => {
                count(GroupLookup::Miss);
                let answer = lookup(ldap, account, self.config.timeout, metrics).await;
                store(&self.cache, account, answer.clone(), self.config.ttl);
                answer.unwrap_or_else(|| Arc::from([]))
            }
        }
    }

    fn refresh_in_background(
        &self,
        ldap: &Arc<LdapSource>,
        account: &str,
        flag: Arc<AtomicBool>,
        metrics: &Arc<Metrics>,
    ) {
        let ldap = Arc::clone(ldap);
        let account = account.to_owned();
        let cache = Arc::clone(&self.cache);
        let metrics = Arc::clone(metrics);
        let (timeout, ttl) = (self.config.timeout, self.config.ttl);
        tokio::spawn(async move {
            let answer = lookup(&ldap, &account, timeout, &metrics).await;
            store(&cache, &account, answer, ttl);
            flag.store(false, Ordering::Release);
        });
    }
}

/// How long an account whose lookup failed is left alone.
fn backoff(ttl: Duration) -> Duration {
    ttl.min(Duration::from_secs(10))
}

/// Asks the directory, within `timeout`; `None` on failure (counted and logged).
async fn lookup(
    ldap: &LdapSource,
    account: &str,
    timeout: Duration,
    metrics: &Metrics,
) -> Option<Arc<[String]>> {
    let started = Instant::now();
    let result = tokio::time::timeout(timeout, ldap.groups_of(account)).await;
    metrics.group_lookup_duration(GroupSource::Ldap, started.elapsed());
    let error = match result {
        Ok(Ok(groups)) => {
            tracing::debug!(account, groups = groups.len(), "directory groups looked up");
            return Some(groups.into());
        }
        Ok(Err(e)) => e.to_string(),
        Err(_) => format!("no answer within {timeout:?}"),
    };
    metrics.group_lookup(GroupSource::Ldap, GroupLookup::Error);
    tracing::warn!(account, %error, "directory group lookup failed; a cached answer is kept if there is one, otherwise group rules do not match for this user until the directory answers");
    None
}

/// Records a lookup's answer. A failure keeps a previous answer (marked for a retry after the
/// back-off) rather than forgetting it.
fn store(
    cache: &Mutex<HashMap<String, Entry>>,
    account: &str,
    answer: Option<Arc<[String]>>,
    ttl: Duration,
) {
    let Ok(mut cache) = cache.lock() else {
        return;
    };
    let now = Instant::now();
    if let Some(entry) = cache.get_mut(account) {
        match answer {
            Some(groups) => {
                entry.groups = Some(groups);
                entry.fetched = now;
                entry.retry_at = now;
            }
            None => entry.retry_at = now + backoff(ttl),
        }
        return;
    }
    if cache.len() >= CACHE_MAX {
        cache.retain(|_, e| now.duration_since(e.fetched) < ttl);
        if cache.len() >= CACHE_MAX {
            cache.clear();
        }
    }
    let failed = answer.is_none();
    cache.insert(
        account.to_owned(),
        Entry {
            groups: answer,
            fetched: now,
            retry_at: if failed { now + backoff(ttl) } else { now },
            refreshing: Arc::new(AtomicBool::new(false)),
        },
    );
}
