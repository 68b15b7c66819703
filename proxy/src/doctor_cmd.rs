//! `portcullis doctor`: the command-line edge of [`crate::doctor`] — arguments, the password
//! file, output as lines or JSON, and the exit code (0 all passed, 1 a check failed, 2 usage).

use std::net::{SocketAddr, ToSocketAddrs as _};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::Args;

use crate::doctor::{self, Credentials, Inputs};
use crate::reload::ConfigSource;

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// The proxy's TOML config file; without it the embedded default.
    #[arg(short, long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The running proxy to test through (`http://HOST:PORT` or `HOST:PORT`); default the
    /// first `server.listen` address.
    #[arg(long, value_name = "URL")]
    pub proxy: Option<String>,
    /// A user for the checks that need proxy credentials (Basic).
    #[arg(long, value_name = "U", requires = "password_file")]
    pub user: Option<String>,
    /// File holding that user's password (one line); never on the command line, where other
    /// users of the host can read it.
    #[arg(long, value_name = "F", requires = "user")]
    pub password_file: Option<PathBuf>,
    /// Print the report as JSON (as the admin listener's `/doctor` serves it).
    #[arg(long)]
    pub json: bool,
}

/// Exit code for a usage error, as clap uses for its own.
const USAGE: i32 = 2;

pub(crate) fn run(args: DoctorArgs) -> anyhow::Result<()> {
    let (proxy, credentials) = match usage(&args) {
        Ok(parsed) => parsed,
        Err(e) => {
            eprintln!("portcullis doctor: {e:#}");
            std::process::exit(USAGE);
        }
    };
    let source = ConfigSource {
        path: args.config.clone(),
        ..Default::default()
    };
    // As `run` does before any thread starts: the keytab path goes into the environment.
    let config = source.load();
    if let Ok(config) = &config {
        crate::cli::prepare_process(config);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let report = runtime.block_on(async {
        match config {
            Ok(config) => {
                crate::telemetry::init(&crate::config::LogConfig {
                    level: "warn".to_owned(),
                    ..config.log.clone()
                });
                doctor::run(Inputs {
                    source,
                    config,
                    proxy,
                    credentials,
                })
                .await
            }
            Err(_) => doctor::run_unloadable(&source).await,
        }
    });
    if args.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.to_text());
    }
    if !report.ok() {
        std::process::exit(1);
    }
    Ok(())
}

/// The arguments that can be wrong in ways clap cannot see.
fn usage(args: &DoctorArgs) -> anyhow::Result<(Option<SocketAddr>, Option<Credentials>)> {
    let proxy = args.proxy.as_deref().map(proxy_addr).transpose()?;
    let credentials = match (&args.user, &args.password_file) {
        (Some(user), Some(file)) => Some(Credentials {
            user: user.clone(),
            password: password(file)?,
        }),
        _ => None,
    };
    Ok((proxy, credentials))
}

fn proxy_addr(url: &str) -> anyhow::Result<SocketAddr> {
    let authority = url
        .strip_prefix("http://")
        .unwrap_or(url)
        .trim_end_matches('/');
    anyhow::ensure!(
        !authority.contains('/') && !authority.contains("://"),
        "--proxy takes http://HOST:PORT, got {url:?}"
    );
    authority
        .to_socket_addrs()
        .with_context(|| format!("--proxy {url:?}"))?
        .next()
        .with_context(|| format!("--proxy {url:?} resolves to no address"))
}

fn password(file: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("--password-file {}", file.display()))?;
    let line = text.lines().next().unwrap_or_default();
    anyhow::ensure!(
        !line.is_empty(),
        "--password-file {}: empty",
        file.display()
    );
    Ok(line.to_owned())
}

#[cfg(test)]
mod tests {
    #![expect(clippy::unwrap_used, reason = "tests")]
    use super::*;

    #[test]
    fn proxy_urls_and_password_files() {
        assert_eq!(proxy_addr("http://127.0.0.1:3128/").unwrap().port(), 3128);
        assert_eq!(proxy_addr("127.0.0.1:8080").unwrap().port(), 8080);
        assert!(proxy_addr("http://127.0.0.1:3128/x").is_err());
        assert!(proxy_addr("socks5://127.0.0.1:1080").is_err());
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "s3cret\n").unwrap();
        assert_eq!(password(&file).unwrap(), "s3cret");
        std::fs::write(&file, "\n").unwrap();
        assert!(password(&file).is_err());
        assert!(password(&dir.path().join("missing")).is_err());
    }
}
