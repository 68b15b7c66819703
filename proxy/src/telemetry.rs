//! Diagnostic logging with `tracing`, to standard error (the access log has its own file).

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Installs the global subscriber. `RUST_LOG`, when set, overrides `log.level`; an invalid
/// `RUST_LOG` is reported (once the subscriber runs) instead of being silently ignored.
pub(crate) fn init(config: &LogConfig) {
    let (filter, rejected) = match std::env::var("RUST_LOG") {
        Ok(value) if value.trim().is_empty() => (EnvFilter::new(&config.level), None),
        Ok(value) => match EnvFilter::try_new(&value) {
            Ok(filter) => (filter, None),
            Err(e) => (
                EnvFilter::new(&config.level),
                Some(format!(
                    "RUST_LOG={value:?} is not a valid log filter ({e})"
                )),
            ),
        },
        Err(std::env::VarError::NotPresent) => (EnvFilter::new(&config.level), None),
        Err(std::env::VarError::NotUnicode(_)) => (
            EnvFilter::new(&config.level),
            Some("RUST_LOG is not valid UTF-8".to_owned()),
        ),
    };
    // Colours only for a person at a terminal, never into journald or a log file.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let _ = match config.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    if let Some(problem) = rejected {
        tracing::warn!("{problem}; using log.level {:?} instead", config.level);
    }
}
