//! The `ldap` group source: one pooled (multiplexed) connection to the first server in
//! `urls` that answers, re-opened — with failover to the next URL — when it breaks.
//!
//! Membership, nested groups included:
//! - `ad-in-chain` (Active Directory): one search for groups whose `member` contains the user
//!   through `LDAP_MATCHING_RULE_IN_CHAIN` (1.2.840.113556.1.4.1941);
//! - `group-filter` (any directory, e.g. OpenLDAP): `(member={dn})` for the user, then for each
//!   group found, with a visited set against cycles. Only equality searches, so
//!   no server feature is needed.
//!
//! Every value put into a filter is escaped (RFC 4515).
//!
//! The bind is a simple bind (DN and password file), a SASL GSSAPI bind as the process's
//! Kerberos client principal (`sasl = "gssapi"`), or none (anonymous).

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;

use ldap3::{ldap_escape, Ldap, LdapConnAsync, LdapConnSettings, Scope, SearchEntry};
use portcullis_policy::group_aliases;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};

use crate::config::{LdapConfig, Membership, SaslMechanism};

/// A nested-group search stops after this many groups (a directory loop or a huge tree must
/// not keep a lookup busy for long).
const MAX_GROUPS: usize = 1000;

/// Why the LDAP source cannot be set up; names the key.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LdapSetupError {
    #[error("{}: {error}", path.display())]
    Password {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{}: {reason}", path.display())]
    Ca { path: PathBuf, reason: String },
    #[error("TLS settings: {0}")]
    Tls(rustls::Error),
    #[cfg(not(feature = "negotiate"))]
    #[error("this build has no Kerberos support (feature `negotiate`)")]
    NoGssapi,
}

impl LdapSetupError {
    pub(crate) fn key(&self) -> &'static str {
        match self {
            LdapSetupError::Password { .. } => "auth.groups.ldap.bind_password_file",
            LdapSetupError::Ca { .. } => "auth.groups.ldap.ca_file",
            LdapSetupError::Tls(_) => "auth.groups.ldap",
            #[cfg(not(feature = "negotiate"))]
            LdapSetupError::NoGssapi => "auth.groups.ldap.sasl",
        }
    }
}

/// Why one lookup failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LdapError {
    #[error("no directory server answered: {0}")]
    Unavailable(String),
    #[error("search under {base:?} failed: {reason}")]
    Search { base: String, reason: String },
}

pub(crate) struct LdapSource {
    config: LdapConfig,
    password: Option<String>,
    tls: Arc<ClientConfig>,
    conn: tokio::sync::Mutex<Option<Ldap>>,
    /// A SASL GSSAPI bind is running on a blocking thread (possibly one a lookup gave up on):
    /// while it is, no other starts, so a KDC that does not answer ties up one thread, not
    /// one per lookup.
    #[cfg(feature = "negotiate")]
    gssapi_busy: Arc<std::sync::atomic::AtomicBool>,
}

impl LdapSource {
    /// Reads the password and CA files now, so a wrong path is a start-up error.
    pub(crate) fn new(config: &LdapConfig) -> Result<LdapSource, LdapSetupError> {
        #[cfg(not(feature = "negotiate"))]
        if config.sasl.is_some() {
            return Err(LdapSetupError::NoGssapi);
        }
        let password = match &config.bind_password_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .map_err(|error| LdapSetupError::Password {
                        path: path.clone(),
                        error,
                    })?
                    .trim_end_matches(['\r', '\n'])
                    .to_owned(),
            ),
            None => None,
        };
        Ok(LdapSource {
            config: config.clone(),
            password,
            tls: tls_config(config)?,
            conn: tokio::sync::Mutex::new(None),
            #[cfg(feature = "negotiate")]
            gssapi_busy: Arc::default(),
        })
    }

    /// The groups of `account` (an account name, no realm), normalised, each as DN and CN.
    /// A user the directory does not know has no groups; that is not an error.
    pub(crate) async fn groups_of(&self, account: &str) -> Result<Vec<String>, LdapError> {
        let mut ldap = self.connection().await?;
        let result = self.lookup(&mut ldap, account).await;
        if result.is_err() {
            // The connection may be what broke: the next lookup opens a fresh one.
            *self.conn.lock().await = None;
        }
        result
    }

    async fn lookup(&self, ldap: &mut Ldap, account: &str) -> Result<Vec<String>, LdapError> {
        let c = &self.config;
        let filter = c.user_filter.replace("{user}", &ldap_escape(account));
        let users = self.search(ldap, &c.base_dn, &filter).await?;
        let user_dn = match users.as_slice() {
            [] => return Ok(Vec::new()),
            [dn] => dn.clone(),
            _ => {
                tracing::warn!(
                    account,
                    filter,
                    "the user filter matched more than one entry; no directory groups"
                );
                return Ok(Vec::new());
            }
        };
        let base = c.group_base_dn.as_deref().unwrap_or(&c.base_dn);
        let dns = match c.membership {
            Membership::AdInChain => {
                let filter = format!(
                    "(member:1.2.840.113556.1.4.1941:={})",
                    ldap_escape(user_dn.as_str())
                );
                self.search(ldap, base, &filter).await?
            }
            Membership::GroupFilter => self.nested(ldap, base, &user_dn).await?,
        };
        let mut names = Vec::new();
        for dn in dns {
            for name in group_aliases(&dn) {
                if !names.contains(&name) {
                    names.push(name);
                }
            }
        }
        Ok(names)
    }

    /// Repeated `group_filter` searches from `user_dn`: every group that contains it,
    /// directly or through other groups.
    async fn nested(
        &self,
        ldap: &mut Ldap,
        base: &str,
        user_dn: &str,
    ) -> Result<Vec<String>, LdapError> {
        let mut seen: HashSet<String> = HashSet::new();
        let mut found = Vec::new();
        let mut todo = vec![user_dn.to_owned()];
        while let Some(dn) = todo.pop() {
            let filter = self
                .config
                .group_filter
                .replace("{dn}", &ldap_escape(dn.as_str()));
            for group in self.search(ldap, base, &filter).await? {
                if found.len() >= MAX_GROUPS {
                    tracing::warn!(
                        user_dn,
                        "more than {MAX_GROUPS} nested groups; the rest are ignored"
                    );
                    return Ok(found);
                }
                if seen.insert(group.to_lowercase()) {
                    found.push(group.clone());
                    todo.push(group);
                }
            }
        }
        Ok(found)
    }

    /// The DNs of the entries `filter` finds under `base` (no attributes fetched).
    async fn search(
        &self,
        ldap: &mut Ldap,
        base: &str,
        filter: &str,
    ) -> Result<Vec<String>, LdapError> {
        let failed = |reason: String| LdapError::Search {
            base: base.to_owned(),
            reason,
        };
        let (entries, _) = ldap
            .with_timeout(self.config.connect_timeout)
            .search(base, Scope::Subtree, filter, vec!["1.1"])
            .await
            .map_err(|e| failed(e.to_string()))?
            .success()
            .map_err(|e| failed(e.to_string()))?;
        Ok(entries
            .into_iter()
            .map(|e| SearchEntry::construct(e).dn)
            .collect())
    }

    /// The pooled connection, or a new one to the first URL that connects and binds.
    async fn connection(&self) -> Result<Ldap, LdapError> {
        let mut slot = self.conn.lock().await;
        if let Some(ldap) = slot.as_mut() {
            if !ldap.is_closed() {
                return Ok(ldap.clone());
            }
        }
        let mut errors = Vec::new();
        for url in &self.config.urls {
            match self.connect(url).await {
                Ok(ldap) => {
                    *slot = Some(ldap.clone());
                    return Ok(ldap);
                }
                Err(e) => {
                    tracing::warn!(url, error = %e, "directory server unavailable; trying the next");
                    errors.push(format!("{url}: {e}"));
                }
            }
        }
        *slot = None;
        Err(LdapError::Unavailable(errors.join("; ")))
    }

    async fn connect(&self, url: &str) -> Result<Ldap, String> {
        let timeout = self.config.connect_timeout;
        let settings = LdapConnSettings::new()
            .set_conn_timeout(timeout)
            .set_starttls(self.config.starttls)
            .set_config(Arc::clone(&self.tls));
        let (conn, mut ldap) =
            tokio::time::timeout(timeout, LdapConnAsync::with_settings(settings, url))
                .await
                .map_err(|_| format!("no connection within {timeout:?}"))?
                .map_err(|e| e.to_string())?;
        ldap3::drive!(conn);
        match (self.config.sasl, &self.config.bind_dn, &self.password) {
            (Some(SaslMechanism::Gssapi), _, _) => self.gssapi_bind(&ldap, url).await?,
            (None, Some(dn), Some(password)) => {
                ldap.with_timeout(timeout)
                    .simple_bind(dn, password)
                    .await
                    .and_then(ldap3::LdapResult::success)
                    .map_err(|e| format!("bind as {dn:?} failed: {e}"))?;
            }
            _ => {}
        }
        Ok(ldap)
    }

    /// SASL GSSAPI bind as the process's Kerberos client principal (`KRB5CCNAME`, or the
    /// client keytab `KRB5_CLIENT_KTNAME`) to `ldap/<host>`. Over `ldap://` without StartTLS,
    /// ldap3 then encrypts the connection with Kerberos (the SASL privacy layer).
    #[cfg(feature = "negotiate")]
    async fn gssapi_bind(&self, ldap: &Ldap, url: &str) -> Result<(), String> {
        use std::sync::atomic::Ordering;
        let host = match (&self.config.sasl_host, crate::config::ldap_url_host(url)) {
            (Some(host), _) => host.clone(),
            (None, Some(host)) => host.to_owned(),
            (None, None) => return Err(format!("no host in {url:?} for ldap/<host>")),
        };
        if self.gssapi_busy.swap(true, Ordering::AcqRel) {
            return Err(format!(
                "the previous SASL GSSAPI bind to ldap/{host} has not finished (a slow KDC?)"
            ));
        }
        // Cleared when the blocking bind ends, however it ends.
        struct Busy(Arc<std::sync::atomic::AtomicBool>);
        impl Drop for Busy {
            fn drop(&mut self) {
                self.0.store(false, Ordering::Release);
            }
        }
        let busy = Busy(Arc::clone(&self.gssapi_busy));
        let timeout = self.config.connect_timeout;
        let mut ldap = ldap.clone();
        let runtime = tokio::runtime::Handle::current();
        // GSS-API blocks (ldap3 calls it inline in the async bind): it reads the credential
        // cache or client keytab and asks the KDC for tickets. So the whole bind runs on a
        // blocking thread and a slow KDC holds no runtime worker; the bind's LDAP messages
        // still go through the connection task on the runtime. A lookup that gives up
        // (`[auth.groups] timeout`) leaves this thread to finish on its own.
        let bind = tokio::task::spawn_blocking(move || {
            let _busy = busy;
            runtime.block_on(async move {
                let principal = format!("ldap/{host}");
                match tokio::time::timeout(timeout, ldap.sasl_gssapi_bind(&host)).await {
                    Ok(Ok(result)) => result
                        .success()
                        .map(drop)
                        .map_err(|e| format!("SASL GSSAPI bind to {principal} refused: {e}")),
                    Ok(Err(e)) => Err(format!("SASL GSSAPI bind to {principal} failed: {e}")),
                    Err(_) => Err(format!(
                        "SASL GSSAPI bind to {principal}: no answer within {timeout:?}"
                    )),
                }
            })
        });
        bind.await.map_err(|e| e.to_string())?
    }

    #[cfg(not(feature = "negotiate"))]
    async fn gssapi_bind(&self, _ldap: &Ldap, _url: &str) -> Result<(), String> {
        Err("this build has no Kerberos support (feature `negotiate`)".to_owned())
    }
}

/// Trust for `ldaps://` and StartTLS: `ca_file` when given, else the system store.
fn tls_config(config: &LdapConfig) -> Result<Arc<ClientConfig>, LdapSetupError> {
    let mut roots = RootCertStore::empty();
    match &config.ca_file {
        Some(path) => {
            let ca = |reason: String| LdapSetupError::Ca {
                path: path.clone(),
                reason,
            };
            let pem = std::fs::read(path).map_err(|e| ca(e.to_string()))?;
            for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(&pem) {
                let cert: CertificateDer<'static> = cert.map_err(|e| ca(e.to_string()))?;
                roots.add(cert).map_err(|e| ca(e.to_string()))?;
            }
            if roots.is_empty() {
                return Err(ca("no certificates in the file".to_owned()));
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
    }
    let config = ClientConfig::builder_with_provider(portcullis_certs::crypto_provider())
        .with_safe_default_protocol_versions()
        .map_err(LdapSetupError::Tls)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}
