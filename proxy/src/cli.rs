//! Command-line interface. `anyhow` is used here, at the binary's edge, and nowhere deeper.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};

use crate::config::Config;
use crate::{ca_cmd, netfilter_cmd};

/// Portcullis: a forward proxy that keeps Outlook working behind proxy authentication and TLS
/// inspection.
#[derive(Debug, Parser)]
#[command(name = "portcullis", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy. Without --config it uses the embedded default (listens on 127.0.0.1:3128).
    Run(RunArgs),
    /// Validate a config file and print the effective configuration (defaults filled in).
    CheckConfig {
        /// The TOML config file to check.
        file: PathBuf,
    },
    /// Render, check, apply or remove the netfilter rules that let mail, LDAP, DNS and Kerberos
    /// pass directly while web traffic must use the proxy.
    #[command(subcommand)]
    Netfilter(netfilter_cmd::NetfilterCommand),
    /// Create, inspect and export the certificate authority used for TLS inspection.
    #[command(subcommand)]
    Ca(ca_cmd::CaCommand),
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// TOML config file; without it the embedded default is used.
    #[arg(short, long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Listen address (repeatable); replaces `server.listen` from the config.
    #[arg(short, long, value_name = "ADDR")]
    pub listen: Vec<SocketAddr>,
    /// Data directory (CA, caches); replaces `server.data_dir` from the config.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

/// Loads the config named on the command line, or the embedded default.
pub fn load_config(path: Option<&std::path::Path>) -> anyhow::Result<Config> {
    Ok(match path {
        Some(path) => Config::load(path)?,
        None => Config::embedded_default()?,
    })
}

fn run_proxy(config: Config) -> anyhow::Result<()> {
    crate::telemetry::init(&config.log);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let shutdown = tokio_util::sync::CancellationToken::new();
        tokio::spawn(cancel_on_signal(shutdown.clone()));
        crate::server::run(config, shutdown).await
    })?;
    Ok(())
}

/// SIGTERM (systemd, Kubernetes) and SIGINT (Ctrl-C) start a graceful shutdown.
async fn cancel_on_signal(shutdown: tokio_util::sync::CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
    shutdown.cancel();
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run(args) => {
            let mut config = load_config(args.config.as_deref())?;
            if !args.listen.is_empty() {
                config.server.listen = args.listen;
            }
            if let Some(dir) = args.data_dir {
                config.server.data_dir = dir;
            }
            run_proxy(config)
        }
        Command::CheckConfig { file } => {
            let config = Config::load(&file)?;
            print!("{}", config.to_toml());
            eprintln!("{}: OK", file.display());
            Ok(())
        }
        Command::Netfilter(cmd) => netfilter_cmd::run(cmd).context("netfilter"),
        Command::Ca(cmd) => ca_cmd::run(cmd).context("ca"),
    }
}
