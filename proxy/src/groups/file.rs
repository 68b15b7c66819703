//! The `file` group source: Apache `AuthGroupFile` format, re-read when it changes.
//!
//! ```text
//! # comment
//! finance: alice bob
//! staff: carol LAB\dave erin@LAB.TEST
//! ```
//! Members are account names; `DOMAIN\user` and `user@REALM` mean the account `user`
//! ([`portcullis_policy::account_name`]), as they do for the directory.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use portcullis_policy::{account_name, normalize_group};

/// Why a group file could not be loaded; names the file and the line.
#[derive(Debug, thiserror::Error)]
pub(crate) enum GroupFileError {
    #[error("{}: {error}", path.display())]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{}: line {line}: {reason}", path.display())]
    Line {
        path: PathBuf,
        line: usize,
        reason: &'static str,
    },
}

/// account name → its groups (normalised, in file order).
type Members = HashMap<String, Vec<String>>;

pub(crate) struct FileSource {
    path: PathBuf,
    members: ArcSwap<Members>,
    /// (size, mtime) of the loaded file, to notice edits.
    stamp: Mutex<Option<(u64, SystemTime)>>,
}

impl FileSource {
    pub(crate) fn load(path: &Path) -> Result<FileSource, GroupFileError> {
        let members = parse_file(path)?;
        Ok(FileSource {
            path: path.to_owned(),
            members: ArcSwap::from_pointee(members),
            stamp: Mutex::new(stamp(path)),
        })
    }

    /// The groups `account` (an [`account_name`]) is listed in.
    pub(crate) fn groups_of(&self, account: &str) -> Vec<String> {
        self.members
            .load()
            .get(account)
            .cloned()
            .unwrap_or_default()
    }

    /// Re-reads the file if it changed (`force`: even if it did not). A broken file keeps the
    /// previous groups and says so. Blocking: call it off the async workers.
    pub(crate) fn reload(&self, force: bool) {
        let now = stamp(&self.path);
        if let Ok(mut loaded) = self.stamp.lock() {
            if !force && now == *loaded {
                return;
            }
            *loaded = now;
        }
        match parse_file(&self.path) {
            Ok(members) => {
                let users = members.len();
                self.members.store(Arc::new(members));
                tracing::info!(path = %self.path.display(), users, "group file reloaded");
            }
            Err(error) => {
                tracing::error!(%error, "group file reload failed; keeping the previous groups");
            }
        }
    }
}

fn stamp(path: &Path) -> Option<(u64, SystemTime)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.len(), meta.modified().ok()?))
}

fn parse_file(path: &Path) -> Result<Members, GroupFileError> {
    let text = std::fs::read_to_string(path).map_err(|error| GroupFileError::Read {
        path: path.to_owned(),
        error,
    })?;
    parse(&text).map_err(|(line, reason)| GroupFileError::Line {
        path: path.to_owned(),
        line,
        reason,
    })
}

/// Parses `group: member member …` lines; `#` starts a comment line. Errors carry the line
/// number (from 1) and the reason.
fn parse(text: &str) -> Result<Members, (usize, &'static str)> {
    let mut members: Members = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((group, users)) = line.split_once(':') else {
            return Err((i + 1, "expected `group: user1 user2`"));
        };
        let group = normalize_group(group);
        if group.is_empty() || group.chars().any(char::is_whitespace) {
            return Err((i + 1, "the group name is empty or has blanks"));
        }
        for user in users.split_whitespace() {
            let groups = members.entry(account_name(user)).or_default();
            if !groups.contains(&group) {
                groups.push(group.clone());
            }
        }
    }
    Ok(members)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_by_account_name() {
        let m = parse(
            "# c\n\nFinance: alice Bob\nstaff: LAB\\alice carol@LAB.TEST\nfinance: alice\nempty:\n",
        )
        .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(
            m.get("alice"),
            Some(&vec!["finance".to_owned(), "staff".to_owned()])
        );
        assert_eq!(m.get("bob"), Some(&vec!["finance".to_owned()]));
        assert_eq!(m.get("carol"), Some(&vec!["staff".to_owned()]));
        assert_eq!(m.len(), 3);
    }

    #[test]
    fn bad_lines_are_named() {
        assert_eq!(
            parse("ok: a\nno colon here\n").err(),
            Some((2, "expected `group: user1 user2`"))
        );
        assert_eq!(parse(": a\n").err().map(|e| e.0), Some(1));
        assert_eq!(parse("two words: a\n").err().map(|e| e.0), Some(1));
    }

    #[test]
    fn a_broken_file_keeps_the_previous_groups() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("groups");
        std::fs::write(&path, "finance: alice\n").unwrap_or_else(|e| panic!("{e}"));
        let source = FileSource::load(&path).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(&path, "finance alice bob\n").unwrap_or_else(|e| panic!("{e}"));
        source.reload(true);
        assert_eq!(source.groups_of("alice"), vec!["finance"]);
        std::fs::write(&path, "finance: bob\n").unwrap_or_else(|e| panic!("{e}"));
        source.reload(true);
        assert!(source.groups_of("alice").is_empty());
        assert_eq!(source.groups_of("bob"), vec!["finance"]);
        assert!(matches!(
            FileSource::load(&dir.path().join("missing")),
            Err(GroupFileError::Read { .. })
        ));
    }
}
