//! CA: present, key file mode, validity left, key/cert match (loading it as the proxy does),
//! and a leaf minted for a test name verifies against it.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::sync::Arc;

use portcullis_certs::time::{Duration, OffsetDateTime};
use portcullis_certs::{
    CertIssuer as _, CertificateAuthority, Issuer, IssuerConfig, KeyFileCheck, LeafName,
    LeafRequest, CA_CERT_FILE, CA_KEY_FILE,
};

use super::{tls_probe, Check};
use crate::config::Config;

const FAMILY: &str = "ca";
/// A new CA must reach every client before the old one expires: a quarter's notice.
const WARN_LEFT: Duration = Duration::days(90);
/// The name minted for the leaf check; never looked up.
const TEST_NAME: &str = "doctor.portcullis.invalid";
const RENEW: &str = "create a new CA (`portcullis ca init --force`), restart the proxy and \
                     deploy ca.pem to every client's trusted root store";

pub(super) async fn run(config: &Config) -> Vec<Check> {
    if !config.tls.inspect {
        return vec![Check::skip(
            FAMILY,
            "CA",
            "tls.inspect is off: no CA is used",
        )];
    }
    let dir = config.server.data_dir.clone();
    let tls = config.tls.clone();
    tokio::task::spawn_blocking(move || checks(&dir, &tls))
        .await
        .unwrap_or_else(|e| {
            vec![Check::fail(
                FAMILY,
                "CA",
                format!("the check did not finish: {e}"),
                "run `portcullis ca check`",
            )]
        })
}

fn checks(dir: &Path, tls: &crate::config::TlsConfig) -> Vec<Check> {
    let cert = dir.join(CA_CERT_FILE);
    let key = dir.join(CA_KEY_FILE);
    if !cert.exists() && !key.exists() {
        let finding = format!("no CA in {}", dir.display());
        return vec![if tls.auto_init_ca {
            Check::warn(
                FAMILY,
                "present",
                finding,
                "`portcullis run` creates one (tls.auto_init_ca); then deploy ca.pem to clients",
            )
        } else {
            Check::fail(
                FAMILY,
                "present",
                finding,
                "create one with `portcullis ca init` and deploy ca.pem to clients",
            )
        }];
    }
    let mut out = vec![key_mode(&key, tls.allow_insecure_key_permissions)];
    // The mode was judged above; loading must not stop at it again.
    match CertificateAuthority::load_from_dir(dir, KeyFileCheck::AllowInsecure) {
        Ok(ca) => {
            out.push(Check::pass(FAMILY, "present, key matches the certificate", format!("{} in {}", ca.subject(), dir.display())));
            out.push(validity(&ca));
            out.push(leaf_verifies(ca, tls.leaf_key));
        }
        Err(portcullis_certs::Error::CaNotValidNow { not_before, not_after }) => {
            out.push(Check::fail(
                FAMILY,
                "validity",
                format!("{} is valid from {} to {}, not now", cert.display(), date(not_before), date(not_after)),
                RENEW,
            ));
        }
        Err(e) => out.push(Check::fail(
            FAMILY,
            "present, key matches the certificate",
            crate::error::Chain(&e).to_string(),
            "replace ca.pem and ca.key with a matching pair (`portcullis ca init --force`), then `portcullis ca check`",
        )),
    }
    out
}

fn key_mode(key: &Path, allowed: bool) -> Check {
    let name = "key file mode";
    match std::fs::metadata(key) {
        Ok(meta) => {
            let mode = meta.permissions().mode() & 0o777;
            let finding = format!("{} has mode {mode:04o}", key.display());
            if mode & 0o077 == 0 {
                Check::pass(FAMILY, name, finding)
            } else if allowed {
                Check::warn(
                    FAMILY,
                    name,
                    format!("{finding}, accepted by tls.allow_insecure_key_permissions"),
                    format!("chmod 600 {}", key.display()),
                )
            } else {
                Check::fail(
                    FAMILY,
                    name,
                    format!("{finding}: group or others can read the key"),
                    format!("chmod 600 {}", key.display()),
                )
            }
        }
        Err(e) => Check::fail(
            FAMILY,
            name,
            format!("cannot read {}: {e}", key.display()),
            "restore ca.key, or create a new CA with `portcullis ca init --force`",
        ),
    }
}

fn validity(ca: &CertificateAuthority) -> Check {
    let left = ca.not_after() - OffsetDateTime::now_utc();
    let finding = format!(
        "valid until {} ({} days left)",
        date(ca.not_after()),
        left.whole_days()
    );
    if left < WARN_LEFT {
        Check::warn(FAMILY, "validity", finding, RENEW)
    } else {
        Check::pass(FAMILY, "validity", finding)
    }
}

/// Mints a leaf as interception does and verifies it as a client would, with the CA as the only
/// trust anchor.
fn leaf_verifies(ca: CertificateAuthority, key: portcullis_certs::KeyAlgorithm) -> Check {
    let name = format!("leaf for {TEST_NAME} verifies");
    let anchor = ca.cert_der().clone();
    let config = IssuerConfig {
        key_algorithm: key,
        ..IssuerConfig::default()
    };
    let leaf = LeafName::from_host(TEST_NAME).and_then(|n| {
        Issuer::new(Arc::new(ca), config).and_then(|i| i.issue(&LeafRequest::new(n)))
    });
    let leaf = match leaf {
        Ok(leaf) => leaf,
        Err(e) => {
            return Check::fail(
                FAMILY,
                name,
                format!("cannot mint: {}", crate::error::Chain(&e)),
                "check tls.leaf_key against the CA's key type; `portcullis ca check`",
            )
        }
    };
    match tls_probe::verify_with(&[anchor], &leaf.key.cert, TEST_NAME) {
        Ok(()) => Check::pass(FAMILY, name, "a minted leaf chains to the CA"),
        Err(e) => Check::fail(FAMILY, name, e, RENEW),
    }
}

fn date(at: OffsetDateTime) -> String {
    httpdate::fmt_http_date(at.into())
}
