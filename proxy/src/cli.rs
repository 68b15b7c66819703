//! Command-line interface. `anyhow` is used here, at the binary's edge, and nowhere deeper.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};

use crate::config::{AdminListen, Config};
use crate::{ca_cmd, doctor_cmd, netfilter_cmd, policy_cmd};

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
    /// Check a config file the way `run` loads it — the htpasswd and hosts files, the CA, the
    /// upstream CA file and the keytab included — without listening; print the effective
    /// configuration (defaults filled in). Fails with the message `run` would fail with.
    CheckConfig {
        /// The TOML config file to check.
        file: PathBuf,
        /// Data directory, as `run --data-dir` would use it; replaces `server.data_dir`.
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
    },
    /// Render, check, apply or remove the netfilter rules that let mail, LDAP, DNS and Kerberos
    /// pass directly while web traffic must use the proxy.
    #[command(subcommand)]
    Netfilter(netfilter_cmd::NetfilterCommand),
    /// Explain what the policy does with a URL: inspect, tunnel or deny, authentication,
    /// timeouts, and the rule that decided.
    #[command(subcommand)]
    Policy(policy_cmd::PolicyCommand),
    /// Microsoft 365 endpoint list: import a saved copy of Microsoft's endpoints JSON (for
    /// proxies that cannot reach endpoints.office.com); a running proxy uses it after a reload.
    #[command(subcommand)]
    M365(M365Command),
    /// Create, inspect and export the certificate authority used for TLS inspection.
    #[command(subcommand)]
    Ca(ca_cmd::CaCommand),
    /// Make a running proxy re-read its config, htpasswd and hosts file (like SIGHUP):
    /// through its admin endpoint, which reports whether the new config was accepted, or by
    /// signalling the process named in a pid file.
    Reload(ReloadArgs),
    /// Outlook connectivity self-test: the config, the CA, Kerberos, the policy for Outlook's
    /// endpoints, the Microsoft 365 list, the route out from this host, the running proxy and
    /// the netfilter rules; one line per check with PASS/WARN/FAIL, the finding and the fix.
    /// Exit status 0 when no check fails, 1 when one does, 2 for usage errors.
    Doctor(doctor_cmd::DoctorArgs),
}

#[derive(Debug, Subcommand)]
pub enum M365Command {
    /// Validate FILE (the JSON of https://endpoints.office.com/endpoints/Worldwide) and store it
    /// as the cached list in the data directory.
    Import {
        /// The endpoints JSON file.
        file: PathBuf,
        /// The proxy's config file (for its data directory and Outlook profile settings).
        #[arg(short, long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Data directory; replaces `server.data_dir` from the config.
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
    },
}

#[derive(Debug, Args)]
pub struct ReloadArgs {
    /// The running proxy's config file, to find its admin address or pid file; without it the
    /// embedded default (admin on 127.0.0.1:9464).
    #[arg(short, long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Admin address (`http://127.0.0.1:9464` or `127.0.0.1:9464`); overrides the config.
    #[arg(long, value_name = "URL", conflicts_with = "pid_file")]
    pub admin: Option<String>,
    /// Send SIGHUP to the process id in this file instead of using the admin endpoint. The
    /// result is then only in the proxy's log.
    #[arg(long, value_name = "FILE")]
    pub pid_file: Option<PathBuf>,
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
    /// Admin listener for /metrics, /healthz, /readyz, /config and /reload (default
    /// 127.0.0.1:9464); replaces `admin.listen` from the config. `off` disables it.
    #[arg(long, value_name = "ADDR|off")]
    pub admin_listen: Option<AdminListen>,
}

/// Loads the config named on the command line, or the embedded default.
pub fn load_config(path: Option<&std::path::Path>) -> anyhow::Result<Config> {
    Ok(match path {
        Some(path) => Config::load(path)?,
        None => Config::embedded_default()?,
    })
}

/// Process-wide settings taken from the config, made before any thread starts (the only time
/// changing the environment is sound). `run` and `check-config` both need them.
pub(crate) fn prepare_process(config: &Config) {
    if let Some(keytab) = &config.auth.negotiate.keytab {
        // MIT krb5 reads the acceptor keytab from KRB5_KTNAME.
        std::env::set_var("KRB5_KTNAME", format!("FILE:{}", keytab.display()));
    }
}

fn run_proxy(config: Config, source: crate::reload::ConfigSource) -> anyhow::Result<()> {
    crate::telemetry::init(&config.log);
    tracing::info!(
        config = config.origin(),
        "portcullis {} starting",
        env!("CARGO_PKG_VERSION")
    );
    prepare_process(&config);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let shutdown = tokio_util::sync::CancellationToken::new();
        tokio::spawn(cancel_on_signal(shutdown.clone()));
        crate::server::run(config, source, shutdown).await
    })?;
    Ok(())
}

/// `check-config`: everything `run` loads before it listens, loaded the same way
/// ([`crate::reload::load`]) but without writing anything; the same error if it fails.
fn check_config(file: PathBuf, data_dir: Option<PathBuf>) -> anyhow::Result<()> {
    let source = crate::reload::ConfigSource {
        path: Some(file.clone()),
        data_dir,
        ..Default::default()
    };
    let config = source.load()?;
    // Warnings found while loading (an htpasswd file without users, a damaged Microsoft 365
    // cache) are worth showing; progress messages are not.
    crate::telemetry::init(&crate::config::LogConfig {
        level: "warn".to_owned(),
        ..config.log.clone()
    });
    prepare_process(&config);
    let metrics = crate::metrics::Metrics::new()?;
    crate::reload::load(
        config.clone(),
        None,
        &metrics,
        crate::reload::LoadMode::Check,
    )?;
    print!("{}", config.to_toml());
    if config.tls.inspect
        && !config
            .server
            .data_dir
            .join(portcullis_certs::CA_CERT_FILE)
            .exists()
    {
        eprintln!(
            "note: there is no CA in {} yet; `portcullis run` will create one (tls.auto_init_ca)",
            config.server.data_dir.display()
        );
    }
    eprintln!("{}: OK", file.display());
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
            // A reload reads the same file with the same overrides.
            let source = crate::reload::ConfigSource {
                path: args.config,
                listen: args.listen,
                data_dir: args.data_dir,
                admin_listen: args.admin_listen,
            };
            let config = source.load()?;
            run_proxy(config, source)
        }
        Command::CheckConfig { file, data_dir } => check_config(file, data_dir),
        Command::Netfilter(cmd) => netfilter_cmd::run(cmd).context("netfilter"),
        Command::Ca(cmd) => ca_cmd::run(cmd).context("ca"),
        Command::Policy(cmd) => policy_cmd::run(cmd),
        Command::M365(M365Command::Import {
            file,
            config,
            data_dir,
        }) => {
            let mut config = load_config(config.as_deref())?;
            if let Some(dir) = data_dir {
                config.server.data_dir = dir;
            }
            let json = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let sets = portcullis_policy::m365::parse_endpoints(&json).with_context(|| {
                format!("{} is not a Microsoft 365 endpoint list", file.display())
            })?;
            let policy = config.compiled_policy(&sets)?;
            crate::m365_cache::store(&config, &json, "imported").map_err(anyhow::Error::msg)?;
            println!(
                "imported {} endpoint sets into {}; {} values skipped; reload the proxy to use them",
                sets.len(),
                config.server.data_dir.join("m365").display(),
                policy.m365_skipped().len()
            );
            for s in policy.m365_skipped() {
                println!("  skipped set {}: {:?}: {}", s.id, s.value, s.reason);
            }
            Ok(())
        }
        Command::Reload(args) => reload(args),
        Command::Doctor(args) => doctor_cmd::run(args),
    }
}

/// `portcullis reload`: the admin endpoint when it can be found (it says whether the new config
/// was accepted), otherwise SIGHUP to the pid file's process.
fn reload(args: ReloadArgs) -> anyhow::Result<()> {
    if let Some(pid_file) = &args.pid_file {
        return signal_reload(pid_file);
    }
    let admin = match &args.admin {
        Some(url) => url.clone(),
        None => {
            let config = load_config(args.config.as_deref())?;
            if !config.admin.enabled {
                let Some(pid_file) = &config.admin.pid_file else {
                    anyhow::bail!(
                        "the admin endpoint is disabled and no admin.pid_file is configured; \
                         send SIGHUP to the proxy process"
                    );
                };
                return signal_reload(pid_file);
            }
            connectable(config.admin.listen).to_string()
        }
    };
    let answer = post_reload(&admin)?;
    print!("{answer}");
    Ok(())
}

/// A wildcard listen address is reached through loopback.
fn connectable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, addr.port()))
        }
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, addr.port()))
        }
        _ => addr,
    }
}

/// `POST /reload` with a blocking socket: one request, answered with `Connection: close`.
fn post_reload(admin: &str) -> anyhow::Result<String> {
    use std::io::{Read as _, Write as _};
    let authority = admin
        .strip_prefix("http://")
        .unwrap_or(admin)
        .trim_end_matches('/');
    anyhow::ensure!(
        !authority.contains('/') && !authority.contains("://"),
        "--admin takes http://HOST:PORT, got {admin:?}"
    );
    let timeout = std::time::Duration::from_secs(60);
    let addrs = std::net::ToSocketAddrs::to_socket_addrs(authority)
        .with_context(|| format!("admin address {authority:?}"))?;
    let mut last_err = None;
    let mut stream = None;
    for addr in addrs {
        match std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(5)) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last_err = Some(e),
        }
    }
    let mut stream = match (stream, last_err) {
        (Some(s), _) => s,
        (None, Some(e)) => {
            return Err(e)
                .with_context(|| format!("cannot reach the admin endpoint at {authority}"))
        }
        (None, None) => anyhow::bail!("{authority:?} resolves to no address"),
    };
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "POST /reload HTTP/1.1\r\nHost: {authority}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = Vec::new();
    stream
        .take(1024 * 1024)
        .read_to_end(&mut response)
        .context("reading the admin endpoint's answer")?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .with_context(|| format!("not an HTTP answer from {authority}"))?;
    anyhow::ensure!(status == 200, "{}", body.trim_end());
    Ok(body.to_owned())
}

fn signal_reload(pid_file: &std::path::Path) -> anyhow::Result<()> {
    use nix::sys::signal::{kill, Signal};
    let text = std::fs::read_to_string(pid_file)
        .with_context(|| format!("cannot read the pid file {}", pid_file.display()))?;
    let pid: i32 = text
        .trim()
        .parse()
        .ok()
        .filter(|pid| *pid > 0)
        .with_context(|| format!("{} does not hold a process id", pid_file.display()))?;
    kill(nix::unistd::Pid::from_raw(pid), Signal::SIGHUP)
        .with_context(|| format!("cannot signal process {pid}"))?;
    eprintln!(
        "sent SIGHUP to process {pid}; the proxy's log says whether the new config was accepted"
    );
    Ok(())
}
