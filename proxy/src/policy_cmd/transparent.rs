//! `policy explain --transparent DEST_IP`: the decision a transparent listener makes for a
//! redirected connection — the same facts as the proxy (`http/transparent.rs`,
//! `http/inspect/transparent.rs`): the name the client gave counts only when it resolves to
//! the original destination, `dest_ip` is always that address, and no credentials can be
//! asked for.

use std::net::IpAddr;

use portcullis_policy::{Action, AuthRequirement, ConnectFacts, Policy, RequestFacts};

use super::{indent, join, ExplainArgs, Lookup, Url};
use crate::config::{Config, TransparentAuth};

/// What decides authentication on a transparent connection, from the config.
pub(crate) struct AuthView {
    /// `[auth]` has a scheme.
    enabled: bool,
    /// The client is in `auth.exempt_clients`.
    client_exempt: bool,
    /// `server.transparent_auth = "exempt"`.
    all_exempt: bool,
}

impl AuthView {
    pub(crate) fn new(config: &Config, client: IpAddr) -> AuthView {
        AuthView {
            enabled: !config.auth.schemes.is_empty(),
            client_exempt: config
                .auth
                .exempt_clients
                .iter()
                .any(|n| n.contains(&client)),
            all_exempt: config.server.transparent_auth == TransparentAuth::Exempt,
        }
    }

    /// The line saying what happens with authentication after a decision with `auth`.
    fn line(&self, auth: AuthRequirement) -> &'static str {
        match (self.enabled, auth, self.client_exempt, self.all_exempt) {
            (false, ..) => "authentication: none configured",
            (true, AuthRequirement::Exempt, ..) => "authentication: the destination is exempt",
            (true, _, true, _) => "authentication: the client is in auth.exempt_clients",
            (true, _, _, true) => "authentication: not asked (server.transparent_auth = \"exempt\")",
            _ => "authentication: required, and a transparent connection cannot be asked: refused with 403 transparent-auth-required",
        }
    }
}

pub(crate) fn explain(
    policy: &Policy,
    args: &ExplainArgs,
    lookup: Lookup<'_>,
    dest: IpAddr,
    auth: AuthView,
) -> anyhow::Result<String> {
    let url = Url::parse(&args.url)?;
    let dest = dest.to_canonical();
    let mut out = format!(
        "transparent {} connection from {} to {} (original destination), {} {}\n",
        if url.tls { "TLS" } else { "HTTP" },
        args.client,
        std::net::SocketAddr::new(dest, url.port),
        if url.tls { "SNI" } else { "Host" },
        url.host,
    );
    let name = named(&url, dest, lookup, &mut out);
    let address = dest.to_string();
    let host = name.unwrap_or(&address);
    let (explanation, action) = if url.tls {
        let mut facts = ConnectFacts::new(host, url.port, args.client);
        facts.dest_ip = Some(dest);
        let e = policy.explain_connect(&facts);
        let action = e.decision.action.clone();
        (e, action)
    } else {
        let ip = [dest];
        let mut facts = RequestFacts::new(&args.method, host, url.port, &url.path, args.client)
            .with_user_agent(args.ua.as_deref())
            .with_resolved(Some(&ip));
        facts.dest_ip = Some(dest);
        let e = policy.explain_request(&facts);
        let action = e.decision.action.clone();
        (e, action)
    };
    let auth_line = auth.line(explanation.decision.auth);
    out.push_str(&indent(&explanation.to_string()));
    let refused = auth_line.ends_with("transparent-auth-required");
    out.push_str(match (&action, refused) {
        (Action::Deny { .. }, _) => "the client gets 403 with the reason above",
        (_, true) => auth_line,
        (Action::Tunnel, false) if url.tls => "relayed untouched to the original destination",
        (Action::Inspect, false) if url.tls => {
            "inspected: the leaf is minted for the SNI, the origin verified for it at the original destination"
        }
        _ => "forwarded to the original destination",
    });
    out.push('\n');
    if !refused {
        out.push_str(auth_line);
        out.push('\n');
    }
    Ok(out)
}

/// The client's name when the proxy would use it (it resolves to `dest`), with a line why.
fn named<'u>(url: &'u Url, dest: IpAddr, lookup: Lookup<'_>, out: &mut String) -> Option<&'u str> {
    if let Some(ip) = portcullis_policy::Host::ip_of(&url.host) {
        return (ip == dest).then_some(url.host.as_str());
    }
    match lookup(&url.host, url.port) {
        Ok(addrs) if addrs.iter().any(|a| a.to_canonical() == dest) => {
            out.push_str(&format!(
                "({} resolves to {dest}: the name is used)\n",
                url.host
            ));
            Some(url.host.as_str())
        }
        Ok(addrs) => {
            out.push_str(&format!(
                "({} resolves to {}, not {dest}: decided on the address alone)\n",
                url.host,
                join(&addrs)
            ));
            None
        }
        Err(why) => {
            out.push_str(&format!(
                "(cannot resolve {}: {why}; decided on the address alone)\n",
                url.host
            ));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    #![expect(clippy::unwrap_used, reason = "tests")]
    use super::*;

    fn args(url: &str, client: &str) -> ExplainArgs {
        ExplainArgs {
            config: None,
            url: url.to_owned(),
            method: "GET".to_owned(),
            ua: None,
            client: client.parse().unwrap(),
            user: None,
            groups: None,
            sni: None,
            resolved: Vec::new(),
            transparent: None,
        }
    }

    fn lab_dns(host: &str, _port: u16) -> Result<Vec<IpAddr>, String> {
        match host {
            "outlook.office365.com" => Ok(vec!["10.88.2.2".parse().unwrap()]),
            _ => Err("NXDOMAIN".into()),
        }
    }

    fn config() -> Config {
        Config::parse(
            "[auth]\nschemes = [\"basic\"]\nhtpasswd = \"/dev/null\"\nexempt_clients = [\"10.0.0.2/32\"]\n\
             [policy.default]\naction = \"deny\"\nreason = \"not listed\"\n",
            "t",
        )
        .unwrap()
    }

    fn run(url: &str, client: &str, dest: &str) -> String {
        let config = config();
        let policy = config.compiled_policy(&[]).unwrap();
        let args = args(url, client);
        let auth = AuthView::new(&config, args.client);
        explain(&policy, &args, &lab_dns, dest.parse().unwrap(), auth).unwrap()
    }

    #[test]
    fn a_name_counts_only_at_its_own_address() {
        let real = run("https://outlook.office365.com/", "10.0.0.9", "10.88.2.2");
        assert!(
            real.contains("resolves to 10.88.2.2: the name is used"),
            "{real}"
        );
        assert!(real.contains("decision: tunnel"), "{real}");
        assert!(real.contains("relayed untouched"), "{real}");
        assert!(real.contains("the destination is exempt"), "{real}");
        let forged = run("https://outlook.office365.com/", "10.0.0.9", "10.88.2.3");
        assert!(
            forged.contains("not 10.88.2.3: decided on the address alone"),
            "{forged}"
        );
        assert!(forged.contains("decision: deny"), "{forged}");
        assert!(forged.contains("403 with the reason"), "{forged}");
    }

    #[test]
    fn authentication_is_shown_as_it_will_be_applied() {
        let config = Config::parse(
            "[auth]\nschemes = [\"basic\"]\nhtpasswd = \"/dev/null\"\nexempt_clients = [\"10.0.0.2/32\"]\n",
            "t",
        )
        .unwrap();
        let policy = config.compiled_policy(&[]).unwrap();
        let explain_from = |client: &str| {
            let args = args("http://intranet.example/", client);
            let auth = AuthView::new(&config, args.client);
            explain(&policy, &args, &lab_dns, "192.0.2.1".parse().unwrap(), auth).unwrap()
        };
        let stranger = explain_from("10.0.0.9");
        assert!(stranger.contains("transparent-auth-required"), "{stranger}");
        let exempt = explain_from("10.0.0.2");
        assert!(
            exempt.contains("forwarded to the original destination"),
            "{exempt}"
        );
        assert!(exempt.contains("auth.exempt_clients"), "{exempt}");
    }
}
