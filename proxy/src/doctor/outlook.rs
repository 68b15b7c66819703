//! The canonical set of Outlook endpoints the doctor checks: what Outlook 2016+ and Microsoft
//! 365 Apps reach (OUTLOOK.md §4.3–4.5), plus the config's own Exchange names.

use crate::config::Config;

/// The Exchange Online host every Outlook profile talks to.
pub(super) const EXCHANGE_ONLINE: &str = "outlook.office365.com";

/// One endpoint: a host on 443 and a path that shows what it is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Endpoint {
    pub host: String,
    pub path: &'static str,
    /// What Outlook uses it for, in the check's name.
    pub role: &'static str,
}

impl Endpoint {
    fn new(host: &str, path: &'static str, role: &'static str) -> Endpoint {
        Endpoint {
            host: host.to_owned(),
            path,
            role,
        }
    }
}

/// Microsoft 365's fixed endpoints, then Autodiscover for each accepted domain, then the
/// configured on-premises Exchange hosts.
pub(super) fn endpoints(config: &Config) -> Vec<Endpoint> {
    let mut all = vec![
        Endpoint::new(EXCHANGE_ONLINE, "/mapi/emsmdb/", "MAPI"),
        Endpoint::new(EXCHANGE_ONLINE, "/EWS/Exchange.asmx", "EWS"),
        Endpoint::new(EXCHANGE_ONLINE, "/OAB/", "OAB"),
        Endpoint::new(
            EXCHANGE_ONLINE,
            "/Microsoft-Server-ActiveSync",
            "ActiveSync",
        ),
        Endpoint::new(
            "autodiscover-s.outlook.com",
            "/autodiscover/autodiscover.xml",
            "Microsoft 365 Autodiscover",
        ),
        Endpoint::new("login.microsoftonline.com", "/", "sign-in"),
        Endpoint::new("login.windows.net", "/", "sign-in"),
    ];
    let outlook = &config.policy.outlook;
    for domain in &outlook.accepted_domains {
        all.push(Endpoint::new(
            &format!("autodiscover.{}", domain.trim_start_matches('.')),
            "/autodiscover/autodiscover.xml",
            "Autodiscover",
        ));
    }
    for host in &outlook.exchange_hosts {
        // A pattern such as `*.mail.example.com` names no host to try.
        if !host.contains('*') {
            all.push(Endpoint::new(host, "/EWS/Exchange.asmx", "Exchange"));
        }
    }
    all
}

/// The distinct hosts of [`endpoints`], in order.
pub(super) fn hosts(config: &Config) -> Vec<String> {
    let mut hosts: Vec<String> = Vec::new();
    for e in endpoints(config) {
        if !hosts.contains(&e.host) {
            hosts.push(e.host);
        }
    }
    hosts
}
