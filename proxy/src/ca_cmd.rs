//! `portcullis ca …`: create, check and export the CA that signs intercepted sites' leaves.

use std::io::{IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Subcommand, ValueEnum};
use portcullis_certs::time::{self, OffsetDateTime};
use portcullis_certs::{CaParams, CertificateAuthority, KeyAlgorithm, KeyFileCheck};

#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Generate a new CA into the data directory: ca.pem (mode 0644, for clients) and ca.key
    /// (mode 0600). Refuses to replace an existing CA without --force.
    Init(InitArgs),
    /// Write the CA certificate to standard output, for installing in clients' trust stores
    /// (on Windows the machine's Trusted Root store, or Outlook will not trust it).
    Export(ExportArgs),
    /// Load the CA as the proxy does (key file permissions, CA flags, key match, validity) and
    /// describe it.
    Check(CheckArgs),
}

/// Where the CA lives: `server.data_dir` of the config, unless --data-dir overrides it.
#[derive(Debug, Args)]
pub struct Location {
    /// TOML config file whose `server.data_dir` holds the CA; without it the embedded default.
    #[arg(short, long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Data directory; replaces `server.data_dir` from the config.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

impl Location {
    fn data_dir(&self) -> anyhow::Result<PathBuf> {
        let config = crate::cli::load_config(self.config.as_deref())?;
        Ok(self.data_dir.clone().unwrap_or(config.server.data_dir))
    }
}

#[derive(Debug, Args)]
pub struct InitArgs {
    #[command(flatten)]
    pub location: Location,
    /// Common name of the CA, shown to users in certificate dialogs.
    #[arg(long, value_name = "CN", default_value = "Portcullis Interception CA")]
    pub subject: String,
    /// Validity in days. Leaves never outlive the CA, so this is how long clients work before
    /// a new CA must be deployed.
    #[arg(long, value_name = "N", default_value_t = 3650,
          value_parser = clap::value_parser!(u32).range(1..=36_500))]
    pub days: u32,
    /// Key algorithm. RSA only for clients that cannot verify ECDSA signatures (RSA keys take a
    /// few seconds to generate).
    #[arg(long, value_enum, default_value_t = KeyType::EcdsaP256)]
    pub key_type: KeyType,
    /// Replace an existing CA. Every client must then be given the new certificate.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KeyType {
    #[value(name = "ecdsa-p256")]
    EcdsaP256,
    #[value(name = "rsa-2048")]
    Rsa2048,
    #[value(name = "rsa-3072")]
    Rsa3072,
}

impl From<KeyType> for KeyAlgorithm {
    fn from(key_type: KeyType) -> Self {
        match key_type {
            KeyType::EcdsaP256 => KeyAlgorithm::EcdsaP256,
            KeyType::Rsa2048 => KeyAlgorithm::Rsa2048,
            KeyType::Rsa3072 => KeyAlgorithm::Rsa3072,
        }
    }
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    #[command(flatten)]
    pub location: Location,
    /// PEM for most tools and Linux trust stores; DER (.cer/.crt) for Windows and macOS dialogs.
    #[arg(long, value_enum, default_value_t = ExportFormat::Pem)]
    pub format: ExportFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    Pem,
    Der,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub location: Location,
    /// Accept a key file that group or others can access (refused by default: whoever reads the
    /// key can impersonate every intercepted site).
    #[arg(long)]
    pub allow_insecure_key_permissions: bool,
}

pub(crate) fn run(cmd: CaCommand) -> anyhow::Result<()> {
    match cmd {
        CaCommand::Init(args) => init(&args),
        CaCommand::Export(args) => export(&args),
        CaCommand::Check(args) => check(&args),
    }
}

fn init(args: &InitArgs) -> anyhow::Result<()> {
    let dir = args.location.data_dir()?;
    let params = CaParams {
        common_name: args.subject.clone(),
        validity: Duration::from_secs(u64::from(args.days) * 86_400),
        key_algorithm: args.key_type.into(),
    };
    let ca = CertificateAuthority::generate(&params).context("cannot generate the CA")?;
    let files = ca.write_to_dir(&dir, args.force)?;
    println!(
        "Created CA {} (valid until {})",
        ca.subject(),
        date(ca.not_after())
    );
    println!(
        "  certificate: {} (give this to clients: portcullis ca export)",
        files.cert.display()
    );
    println!(
        "  private key: {} (mode 0600; keep it secret)",
        files.key.display()
    );
    println!("  SHA-256 fingerprint: {}", ca.fingerprint());
    Ok(())
}

fn export(args: &ExportArgs) -> anyhow::Result<()> {
    let dir = args.location.data_dir()?;
    let der = portcullis_certs::read_ca_cert(&dir.join(portcullis_certs::CA_CERT_FILE))?;
    let mut stdout = std::io::stdout().lock();
    let bytes = match args.format {
        ExportFormat::Pem => portcullis_certs::cert_pem(&der).into_bytes(),
        ExportFormat::Der if stdout.is_terminal() => {
            anyhow::bail!("refusing to write binary DER to a terminal; redirect it to a file")
        }
        ExportFormat::Der => der.to_vec(),
    };
    stdout
        .write_all(&bytes)
        .context("cannot write to standard output")?;
    stdout.flush().context("cannot write to standard output")?;
    Ok(())
}

fn check(args: &CheckArgs) -> anyhow::Result<()> {
    let dir = args.location.data_dir()?;
    let key_check = if args.allow_insecure_key_permissions {
        KeyFileCheck::AllowInsecure
    } else {
        KeyFileCheck::OwnerOnly
    };
    let ca = CertificateAuthority::load_from_dir(&dir, key_check)?;
    describe(&dir, &ca);
    Ok(())
}

fn describe(dir: &Path, ca: &CertificateAuthority) {
    println!("CA in {}: OK", dir.display());
    println!("  subject: {}", ca.subject());
    println!(
        "  valid: {} to {}",
        date(ca.not_before()),
        date(ca.not_after())
    );
    println!("  SHA-256 fingerprint: {}", ca.fingerprint());
    let remaining = ca.not_after() - OffsetDateTime::now_utc();
    if remaining < DEPLOY_MARGIN {
        println!(
            "  warning: the CA expires in {} days; deploy a new one to every client",
            remaining.whole_days()
        );
    }
}

/// A new CA must reach every client before the old one expires; a month is a realistic minimum.
const DEPLOY_MARGIN: time::Duration = time::Duration::days(30);

fn date(at: OffsetDateTime) -> String {
    httpdate::fmt_http_date(at.into())
}
