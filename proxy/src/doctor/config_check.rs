//! Config: loads exactly as `run` would — the same [`ConfigSource::load`] and
//! [`crate::reload::load`] that `check-config` calls, so every file the config names (htpasswd,
//! hosts file, CA, upstream CA file, keytab) is read and validated, and nothing is written.

use super::Check;
use crate::intercept::InterceptError;
use crate::reload::{ConfigSource, FileError, LoadError, LoadMode};

const FAMILY: &str = "config";

pub(super) async fn run(source: &ConfigSource) -> Vec<Check> {
    let source = source.clone();
    let loaded = tokio::task::spawn_blocking(move || -> Result<String, String> {
        let config = source.load().map_err(|e| e.to_string())?;
        let origin = config.origin().to_owned();
        let metrics = crate::metrics::Metrics::new().map_err(|e| e.to_string())?;
        match crate::reload::load(config, None, &metrics, LoadMode::Check) {
            Ok(_) => Ok(origin),
            // The CA family reports its own files, once, with the fix.
            Err(LoadError::File {
                error:
                    FileError::Intercept(InterceptError::CaLoad(_) | InterceptError::CaMissing(_)),
                ..
            }) => Ok(format!("{origin} (the CA: see the ca checks)")),
            Err(e) => Err(e.to_string()),
        }
    })
    .await;
    let check = match loaded {
        Ok(Ok(origin)) => Check::pass(
            FAMILY,
            "loads as `run` would",
            format!("{origin}: every file it names is readable and valid"),
        ),
        Ok(Err(error)) => Check::fail(
            FAMILY,
            "loads as `run` would",
            error,
            "correct the file and key named above; `portcullis check-config FILE` shows the same error",
        ),
        Err(e) => Check::fail(
            FAMILY,
            "loads as `run` would",
            format!("the check did not finish: {e}"),
            "run `portcullis check-config FILE`",
        ),
    };
    vec![check]
}
