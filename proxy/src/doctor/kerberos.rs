//! Kerberos (when Negotiate is on): the keytab is readable and holds `HTTP/<name>` for the names
//! clients use, with enctypes the KDC uses for that principal, and the KDC's clock is within
//! the 5 minutes Kerberos tolerates — measured from a KDC answer, not the local clock alone.

use std::path::PathBuf;
use std::time::SystemTime;

use super::kdc::{self, Reply};
use super::keytab::{self, enctype_name, Entry};
use super::Check;
use crate::config::{AuthScheme, Config};

const FAMILY: &str = "kerberos";
/// Kerberos' default `clockskew`: beyond it every ticket is refused (KRB5KRB_AP_ERR_SKEW).
const MAX_SKEW_SECS: u64 = 300;
const EXPORT: &str = "export the key again (`ktpass … -crypto AES256-SHA1` on Windows, \
                      `kadmin ktadd -k FILE HTTP/<name>` with MIT) and point auth.negotiate.keytab at it";

pub(super) async fn run(config: &Config) -> Vec<Check> {
    if !config.auth.schemes.contains(&AuthScheme::Negotiate) {
        return vec![Check::skip(
            FAMILY,
            "Negotiate",
            "auth.schemes has no \"negotiate\"",
        )];
    }
    let path = keytab_path(config);
    let entries = match keytab::read(&path) {
        Ok(entries) if !entries.is_empty() => entries,
        Ok(_) => {
            return vec![Check::fail(
                FAMILY,
                "keytab readable",
                format!("{} holds no keys", path.display()),
                EXPORT,
            )]
        }
        Err(e) => return vec![Check::fail(FAMILY, "keytab readable", e, EXPORT)],
    };
    let mut out = vec![Check::pass(
        FAMILY,
        "keytab readable",
        format!("{}: {} keys", path.display(), entries.len()),
    )];
    let realm = realm(config, &entries);
    for spn in principals(config, &realm) {
        let mine: Vec<&Entry> = entries
            .iter()
            .filter(|e| e.principal.eq_ignore_ascii_case(&spn))
            .collect();
        if mine.is_empty() {
            let held: Vec<&str> = entries.iter().map(|e| e.principal.as_str()).collect();
            out.push(Check::fail(
                FAMILY,
                format!("keytab has {spn}"),
                format!("clients ask for {spn}, the keytab holds only {}", dedup(&held).join(", ")),
                format!("create the SPN for the proxy's account (`setspn -S {} <account>`) and {EXPORT}", spn.split('@').next().unwrap_or(&spn)),
            ));
            continue;
        }
        out.push(Check::pass(
            FAMILY,
            format!("keytab has {spn}"),
            format!("kvno {}", mine[0].kvno),
        ));
        out.push(enctypes(&spn, &realm, &mine).await);
    }
    out.push(clock(&realm).await);
    out
}

/// The keytab `run` uses: `auth.negotiate.keytab`, else `KRB5_KTNAME`, else the system one.
fn keytab_path(config: &Config) -> PathBuf {
    if let Some(path) = &config.auth.negotiate.keytab {
        return path.clone();
    }
    match std::env::var("KRB5_KTNAME") {
        Ok(name) => PathBuf::from(name.strip_prefix("FILE:").unwrap_or(&name)),
        Err(_) => PathBuf::from("/etc/krb5.keytab"),
    }
}

fn realm(config: &Config, entries: &[Entry]) -> String {
    config
        .auth
        .negotiate
        .service_principal
        .as_deref()
        .and_then(|p| p.rsplit_once('@').map(|(_, r)| r.to_owned()))
        .or_else(kdc::default_realm)
        .or_else(|| {
            entries
                .first()
                .and_then(|e| e.principal.rsplit_once('@').map(|(_, r)| r.to_owned()))
        })
        .unwrap_or_default()
}

/// The principals clients ask for: `auth.negotiate.service_principal`, and `HTTP/<name>` for
/// the name the PAC file hands out (`policy.pac.proxy`); without either, this host's name.
fn principals(config: &Config, realm: &str) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(spn) = &config.auth.negotiate.service_principal {
        out.push(if spn.contains('@') {
            spn.clone()
        } else {
            format!("{spn}@{realm}")
        });
    }
    let pac_host = config
        .policy
        .pac
        .proxy
        .as_deref()
        .and_then(|p| p.rsplit_once(':'))
        .map(|(h, _)| h.to_owned());
    let host = pac_host.filter(|h| h.parse::<std::net::IpAddr>().is_err() && !h.starts_with('['));
    let host = host.or_else(|| {
        if out.is_empty() {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        } else {
            None
        }
    });
    if let Some(host) = host {
        let spn = format!("HTTP/{}@{realm}", host.to_ascii_lowercase());
        if !out.iter().any(|s| s.eq_ignore_ascii_case(&spn)) {
            out.push(spn);
        }
    }
    out
}

/// The KDC's own answer for the principal: which key it would encrypt tickets with, compared to
/// the keytab's keys.
async fn enctypes(spn: &str, realm: &str, mine: &[&Entry]) -> Check {
    let name = format!("{spn}: enctypes the KDC uses");
    let held: Vec<i32> = mine.iter().map(|e| e.enctype).collect();
    let held_names = dedup(&held.iter().map(|e| enctype_name(*e)).collect::<Vec<_>>()).join(", ");
    if !held.iter().any(|e| keytab::is_strong(*e)) {
        return Check::fail(
            FAMILY,
            name,
            format!("the keytab has only {held_names}, which current KDCs refuse"),
            EXPORT,
        );
    }
    let client = spn.split('@').next().unwrap_or(spn);
    let reply = match ask(realm, client).await {
        Ok(reply) => reply,
        Err(e) => return Check::fail(FAMILY, name, e, "set the realm's `kdc` in krb5.conf (KRB5_CONFIG) and let this host reach it on port 88"),
    };
    match reply {
        Reply::AsRep { etype, kvno } => {
            let matches = mine
                .iter()
                .any(|e| e.enctype == etype && kvno.is_none_or(|k| k == e.kvno));
            let kdc_key = format!(
                "{} kvno {}",
                enctype_name(etype),
                kvno.map_or("?".to_owned(), |k| k.to_string())
            );
            if matches {
                Check::pass(
                    FAMILY,
                    name,
                    format!("the KDC's key ({kdc_key}) is in the keytab"),
                )
            } else {
                Check::fail(
                    FAMILY,
                    name,
                    format!(
                        "the KDC's key is {kdc_key}, the keytab has {held_names} (kvno {})",
                        mine[0].kvno
                    ),
                    format!("the key changed since the keytab was made: {EXPORT}"),
                )
            }
        }
        Reply::Error { code, etypes, .. }
            if code == kdc::KDC_ERR_PREAUTH_REQUIRED && !etypes.is_empty() =>
        {
            if etypes.iter().any(|e| held.contains(e)) {
                Check::pass(
                    FAMILY,
                    name,
                    format!(
                        "the KDC offers {}; the keytab has {held_names}",
                        etypes
                            .iter()
                            .map(|e| enctype_name(*e))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )
            } else {
                Check::fail(
                    FAMILY,
                    name,
                    format!(
                        "the KDC has keys of {} for it, the keytab {held_names}",
                        etypes
                            .iter()
                            .map(|e| enctype_name(*e))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    EXPORT,
                )
            }
        }
        Reply::Error { code, .. } if code == kdc::KDC_ERR_C_PRINCIPAL_UNKNOWN => Check::fail(
            FAMILY,
            name,
            format!("the KDC does not know {spn}"),
            format!("create it in the directory (`setspn -S {client} <account>`) and {EXPORT}"),
        ),
        Reply::Error { code, .. } => Check::warn(
            FAMILY,
            name,
            format!("the KDC answered with error {code}; enctypes not compared"),
            "compare with `klist -ke` and the account's msDS-SupportedEncryptionTypes",
        ),
    }
}

/// Clock skew from the KDC's `stime` in its answer to an AS-REQ for a name it does not know.
async fn clock(realm: &str) -> Check {
    let name = "clock skew to the KDC";
    let before = SystemTime::now();
    let reply = ask(realm, "portcullis-doctor-clock-probe").await;
    let after = SystemTime::now();
    let stime = match reply {
        Ok(Reply::Error { stime, .. }) => stime,
        Ok(Reply::AsRep { .. }) => return Check::warn(FAMILY, name, "the KDC issued a ticket to the probe name instead of an error", "compare the clocks by hand (`date` here and on the domain controller)"),
        Err(e) => return Check::fail(FAMILY, name, e, "set the realm's `kdc` in krb5.conf (KRB5_CONFIG) and let this host reach it on port 88"),
    };
    // The KDC answered between `before` and `after`; its second-resolution stime is compared
    // with the middle of that window.
    let local = before + after.duration_since(before).unwrap_or_default() / 2;
    let (ahead, skew) = match stime.duration_since(local) {
        Ok(d) => ("ahead of", d),
        Err(e) => ("behind", e.duration()),
    };
    let finding = format!("the KDC's clock is {}s {ahead} this host's", skew.as_secs());
    if skew.as_secs() > MAX_SKEW_SECS {
        Check::fail(FAMILY, name, format!("{finding}: tickets are refused (KRB5KRB_AP_ERR_SKEW) beyond 5 minutes"), "synchronise this host's clock with the domain controllers (chrony or systemd-timesyncd pointed at them)")
    } else if skew.as_secs() > MAX_SKEW_SECS / 2 {
        Check::warn(FAMILY, name, finding, "synchronise this host's clock with the domain controllers before it drifts past 5 minutes")
    } else {
        Check::pass(FAMILY, name, finding)
    }
}

/// One AS-REQ to the first KDC of `realm` that answers.
async fn ask(realm: &str, client: &str) -> Result<Reply, String> {
    let kdcs = kdc::kdcs(realm);
    if kdcs.is_empty() {
        return Err(format!(
            "no `kdc` for realm {realm:?} in krb5.conf (KRB5_CONFIG or /etc/krb5.conf)"
        ));
    }
    let mut last = String::new();
    for kdc in &kdcs {
        match kdc::as_request(kdc, client, realm).await {
            Ok(reply) => return Ok(reply),
            Err(e) => last = e,
        }
    }
    Err(last)
}

fn dedup<T: AsRef<str>>(items: &[T]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for i in items {
        if !out.iter().any(|o| o == i.as_ref()) {
            out.push(i.as_ref().to_owned());
        }
    }
    out
}
