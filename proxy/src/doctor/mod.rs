//! `portcullis doctor` and the admin listener's `GET /doctor`: an Outlook connectivity
//! self-test that says which link fails — the config, the CA, Kerberos, the policy, the
//! Microsoft 365 list, the route out from this host, the running proxy, the netfilter rules.
//!
//! Each check family lives in its own file and returns [`Check`]s (status, finding, fix); this
//! module runs them in order and renders the [`Report`] as lines or JSON. The checks reuse the
//! code the proxy runs with — the loader of `check-config`, the decision of `policy explain`,
//! the render of `netfilter render` — so the doctor cannot disagree with the proxy.
//!
//! What a remote caller of `/doctor` can make the proxy do is fixed by the config: the targets
//! come from it, never from the request, and no credentials are used there.

mod ca;
pub(crate) mod cache;
mod config_check;
mod kdc;
mod kerberos;
mod keytab;
mod m365;
mod netfilter;
mod outlook;
mod policy;
mod route;
mod through_proxy;
mod tls_probe;

use std::net::SocketAddr;
use std::time::Duration;

use serde::Serialize;

use crate::config::Config;
use crate::reload::ConfigSource;

/// How a check came out. `Skip`: it does not apply to this configuration (Kerberos without
/// Negotiate, netfilter without `[netfilter]` or root).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Status {
    Pass,
    Warn,
    Fail,
    Skip,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Status::Pass => "PASS",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
            Status::Skip => "SKIP",
        }
    }
}

/// One finding: what was checked, what was found, and what to do about it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Check {
    /// The family (`config`, `ca`, `kerberos`, `policy`, `m365`, `host`, `proxy`, `netfilter`).
    pub family: &'static str,
    /// What was checked, e.g. `keytab has HTTP/proxy.lab.test`.
    pub name: String,
    pub status: Status,
    pub finding: String,
    /// What to do; set for every WARN and FAIL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Check {
    pub(crate) fn pass(
        family: &'static str,
        name: impl Into<String>,
        finding: impl Into<String>,
    ) -> Check {
        Check::new(family, name, Status::Pass, finding, None)
    }

    pub(crate) fn skip(
        family: &'static str,
        name: impl Into<String>,
        finding: impl Into<String>,
    ) -> Check {
        Check::new(family, name, Status::Skip, finding, None)
    }

    pub(crate) fn warn(
        family: &'static str,
        name: impl Into<String>,
        finding: impl Into<String>,
        fix: impl Into<String>,
    ) -> Check {
        Check::new(family, name, Status::Warn, finding, Some(fix.into()))
    }

    pub(crate) fn fail(
        family: &'static str,
        name: impl Into<String>,
        finding: impl Into<String>,
        fix: impl Into<String>,
    ) -> Check {
        Check::new(family, name, Status::Fail, finding, Some(fix.into()))
    }

    fn new(
        family: &'static str,
        name: impl Into<String>,
        status: Status,
        finding: impl Into<String>,
        fix: Option<String>,
    ) -> Check {
        Check {
            family,
            name: name.into(),
            status,
            finding: finding.into(),
            fix,
        }
    }
}

/// Everything the doctor found, in the order the checks ran.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Report {
    /// When the checks ran (HTTP date).
    pub generated: String,
    pub checks: Vec<Check>,
    pub summary: Summary,
}

/// How many checks came out each way.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub(crate) struct Summary {
    pub pass: usize,
    pub warn: usize,
    pub fail: usize,
    pub skip: usize,
}

impl Report {
    fn new(checks: Vec<Check>) -> Report {
        let mut summary = Summary::default();
        for check in &checks {
            match check.status {
                Status::Pass => summary.pass += 1,
                Status::Warn => summary.warn += 1,
                Status::Fail => summary.fail += 1,
                Status::Skip => summary.skip += 1,
            }
        }
        Report {
            generated: httpdate::fmt_http_date(std::time::SystemTime::now()),
            checks,
            summary,
        }
    }

    /// True when no check failed (warnings do not fail the run).
    pub(crate) fn ok(&self) -> bool {
        self.summary.fail == 0
    }

    /// One line per check: `FAIL kerberos  keytab has HTTP/x: finding` and, indented, the fix.
    pub(crate) fn to_text(&self) -> String {
        let mut out = String::new();
        for c in &self.checks {
            out.push_str(&format!(
                "{} {:<9} {}: {}\n",
                c.status.label(),
                c.family,
                c.name,
                c.finding
            ));
            if let Some(fix) = &c.fix {
                out.push_str(&format!("     fix: {fix}\n"));
            }
        }
        let s = self.summary;
        out.push_str(&format!(
            "{} passed, {} warnings, {} failed, {} skipped\n",
            s.pass, s.warn, s.fail, s.skip
        ));
        out
    }

    pub(crate) fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
}

/// Where the doctor runs: on the command line (may use credentials, reads the config file) or
/// inside the running proxy for `/doctor` (never uses credentials).
#[derive(Debug, Clone)]
pub(crate) struct Inputs {
    /// How the config was read, for the "loads exactly as `run` would" check.
    pub source: ConfigSource,
    /// The config the other checks use (as loaded by `source`).
    pub config: Config,
    /// The proxy to test through; `None`: the first configured listener.
    pub proxy: Option<SocketAddr>,
    /// Basic credentials for the "with credentials" checks (from a password file).
    pub credentials: Option<Credentials>,
}

/// A user name and password for Basic proxy authentication; never printed.
#[derive(Clone)]
pub(crate) struct Credentials {
    pub user: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// How long a probe of the network (DNS, TCP, TLS, the KDC, the proxy) may take. Short: the
/// doctor is run while someone waits, and an answer that takes longer is itself a finding.
pub(crate) const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// The report when the config itself does not load: that one failure, since every other check
/// needs the config.
pub(crate) async fn run_unloadable(source: &ConfigSource) -> Report {
    Report::new(config_check::run(source).await)
}

/// Runs every check family in order.
pub(crate) async fn run(inputs: Inputs) -> Report {
    let config = &inputs.config;
    let mut checks = Vec::new();
    checks.extend(config_check::run(&inputs.source).await);
    checks.extend(ca::run(config).await);
    checks.extend(kerberos::run(config).await);
    let resolver = crate::upstream::Resolver::new(config).ok();
    let policy = policy::compiled(config);
    checks.extend(policy::run(config, policy.as_deref(), resolver.as_ref()).await);
    checks.extend(m365::run(config));
    checks.extend(route::run(config, resolver.as_ref()).await);
    checks.extend(through_proxy::run(&inputs, policy.as_deref()).await);
    checks.extend(netfilter::run(config).await);
    Report::new(checks)
}
