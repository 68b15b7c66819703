//! `portcullis policy explain`: what the proxy would do with a URL, which rule decided and why,
//! for the moment a user says "Outlook is broken".

use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use portcullis_policy::{Action, ConnectFacts, Identity, Policy, RequestFacts};

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Print the decision for a URL: for https the CONNECT decision (inspect, tunnel or deny;
    /// authentication; timeouts) and, when inspected, the decision for the request inside; for
    /// http the request decision. Names the rule that matched and each condition's match.
    Explain(ExplainArgs),
}

#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// The config whose policy to use (with the Microsoft 365 list cached in its data
    /// directory); without it the embedded default (the Outlook profile).
    #[arg(short, long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// `https://outlook.office365.com/mapi/emsmdb/`, `http://intranet/`, or `host:port` for a
    /// bare CONNECT.
    #[arg(long, value_name = "URL")]
    pub url: String,
    /// The request method inside the tunnel (or of the plain-HTTP request).
    #[arg(long, value_name = "M", default_value = "GET")]
    pub method: String,
    /// The client's User-Agent.
    #[arg(long, value_name = "UA")]
    pub ua: Option<String>,
    /// The client's address.
    #[arg(long, value_name = "IP", default_value = "127.0.0.1")]
    pub client: IpAddr,
    /// The authenticated user. With `[auth.groups]` in the config, the user's groups are
    /// resolved as the proxy would (the group file; the directory is queried) unless
    /// `--groups` gives them.
    #[arg(long, value_name = "U")]
    pub user: Option<String>,
    /// The user's groups, comma-separated (`--groups finance,staff`), instead of asking the
    /// config's group sources.
    #[arg(long, value_name = "G,G", value_delimiter = ',', requires = "user")]
    pub groups: Option<Vec<String>>,
    /// The TLS SNI (for a CONNECT to a bare IP, the name in the ClientHello).
    #[arg(long, value_name = "NAME")]
    pub sni: Option<String>,
    /// An address the host resolves to (repeat for each), for decisions that depend on them
    /// (`autodiscover.*` names). Without it such a host is resolved as the proxy would: the
    /// config's `[resolve]`, `upstream.hosts_file`, then the system resolver.
    #[arg(long, value_name = "IP")]
    pub resolved: Vec<IpAddr>,
    /// Explain a connection redirected to a transparent listener whose original destination
    /// is this address: the URL's host is then what the client named (the `Host` header for
    /// http, the SNI for https), used only if it resolves to this address as the proxy would
    /// resolve it; otherwise the decision is on the address alone. Shows what happens with
    /// authentication, which such a connection cannot be asked for.
    #[arg(long, value_name = "DEST_IP")]
    pub transparent: Option<IpAddr>,
}

/// Looks a host up as the proxy would; `Err` says why it could not.
pub(crate) type Lookup<'a> = &'a dyn Fn(&str, u16) -> Result<Vec<IpAddr>, String>;

pub(crate) fn run(cmd: PolicyCommand) -> anyhow::Result<()> {
    match cmd {
        PolicyCommand::Explain(args) => {
            let config = crate::cli::load_config(args.config.as_deref())?;
            // The same list the running proxy uses: the cached Microsoft 365 endpoints.
            let m365 = crate::m365_cache::load_cached(&config);
            let policy = config.compiled_policy(&m365.sets)?;
            let resolver =
                crate::upstream::Resolver::new(&config).context("upstream.hosts_file")?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            let lookup = |host: &str, port: u16| {
                runtime
                    .block_on(resolver.resolve(&portcullis_policy::Host::new(host), port))
                    .map(|addrs| addrs.iter().map(|a| a.ip()).collect())
                    .map_err(|e| e.to_string())
            };
            let mut args = args;
            if let (Some(user), None) = (&args.user, &args.groups) {
                if let Some(groups) = resolve_groups(&config, user, &runtime)? {
                    println!(
                        "(groups of {user} from [auth.groups]: {})",
                        groups.join(", ")
                    );
                    args.groups = Some(groups);
                }
            }
            let text = match args.transparent {
                Some(dest) => {
                    let auth = transparent::AuthView::new(&config, args.client);
                    transparent::explain(&policy, &args, &lookup, dest, auth)?
                }
                None => explain(&policy, &args, &lookup)?,
            };
            print!("{text}");
            Ok(())
        }
    }
}

/// The groups `[auth.groups]` gives `user` (querying the directory), or `None` when the config
/// has no group source.
fn resolve_groups(
    config: &crate::config::Config,
    user: &str,
    runtime: &tokio::runtime::Runtime,
) -> anyhow::Result<Option<Vec<String>>> {
    let groups = crate::groups::Groups::new(&config.auth.groups)
        .map_err(|e| anyhow::anyhow!("key `{}`: {e}", e.key()))?;
    let Some(groups) = groups else {
        return Ok(None);
    };
    let metrics = std::sync::Arc::new(
        crate::metrics::Metrics::new().context("cannot create the metrics registry")?,
    );
    let found = runtime.block_on(groups.resolve(user, &metrics));
    Ok(Some(found.to_vec()))
}

/// Where the authentication shown for a later decision was decided.
const AT_CONNECT: &str = "decided at the CONNECT";
const BEFORE_AUTH: &str = "decided before the user is known";

/// What `explain` prints; separate from printing so that it can be tested.
///
/// Every `auth:` line is the authentication the proxy applies, which only the first decision
/// makes — on the CONNECT or plain request, before the user is known. Later decisions (with
/// the user, on the SNI, for the requests inside an inspected tunnel) show it as settled.
pub(crate) fn explain(
    policy: &Policy,
    args: &ExplainArgs,
    lookup: Lookup<'_>,
) -> anyhow::Result<String> {
    let target = Url::parse(&args.url)?;
    let groups: Vec<String> = args
        .groups
        .iter()
        .flatten()
        .map(|g| portcullis_policy::normalize_group(g))
        .filter(|g| !g.is_empty())
        .collect();
    let e = Explaining {
        policy,
        args,
        user: args
            .user
            .as_deref()
            .map(|name| Identity::with_groups(name, &groups)),
        target: &target,
        lookup,
    };
    let mut out = String::new();
    if target.tls {
        e.connect(&mut out);
    } else {
        e.plain(&mut out);
    }
    Ok(out)
}

/// One `explain` run: what was asked, and how to look names up.
struct Explaining<'a> {
    policy: &'a Policy,
    args: &'a ExplainArgs,
    user: Option<Identity<'a>>,
    target: &'a Url,
    lookup: Lookup<'a>,
}

impl<'a> Explaining<'a> {
    /// The addresses, when the decision depends on them (`needed`) or were given: as given, or
    /// looked up (an empty list when the lookup fails, as the proxy decides then).
    fn resolve(&self, needed: bool, out: &mut String) -> Option<Vec<IpAddr>> {
        let (args, target) = (self.args, self.target);
        if !args.resolved.is_empty() {
            return Some(args.resolved.clone());
        }
        if !needed {
            return None;
        }
        Some(match (self.lookup)(&target.host, target.port) {
            Ok(addrs) => {
                out.push_str(&format!("(looked up {}: {})\n", target.host, join(&addrs)));
                addrs
            }
            Err(why) => {
                out.push_str(&format!("(cannot look up {}: {why})\n", target.host));
                Vec::new()
            }
        })
    }

    /// A plain-HTTP request: one decision, made again with the user if one was given.
    fn plain(&self, out: &mut String) {
        let (policy, args, target) = (self.policy, self.args, self.target);
        out.push_str(&format!(
            "{} http://{}:{}{} from {}\n",
            args.method, target.host, target.port, target.path, args.client
        ));
        let facts = RequestFacts::new(
            &args.method,
            &target.host,
            target.port,
            &target.path,
            args.client,
        )
        .with_user_agent(args.ua.as_deref())
        .with_sni(args.sni.as_deref());
        let resolved = self.resolve(policy.decide_request(&facts).needs_resolution, out);
        let facts = facts.with_resolved(resolved.as_deref());
        let mut e = policy.explain_request(&facts.with_user(self.user));
        if self.user.is_some() {
            let auth = policy.decide_request(&facts).auth;
            e = e.with_settled_auth(auth, BEFORE_AUTH);
        }
        out.push_str(&indent(&e.to_string()));
    }

    /// An `https://` URL: the CONNECT, the decision again on the SNI, then the request inside
    /// an inspected tunnel (or what happens instead).
    fn connect(&self, out: &mut String) {
        let (policy, args, target, user) = (self.policy, self.args, self.target, self.user);
        let connect = ConnectFacts::new(&target.host, target.port, args.client)
            .with_user_agent(args.ua.as_deref());
        out.push_str(&format!(
            "CONNECT {}:{} from {}\n",
            target.host, target.port, args.client
        ));
        let resolved = self.resolve(policy.decide_connect(&connect).needs_resolution, out);
        let connect = connect.with_resolved(resolved.as_deref());
        // What the proxy challenges on: the CONNECT decided before the user is known.
        let auth = policy.decide_connect(&connect).auth;
        let mut first = policy.explain_connect(&connect.with_user(user));
        if user.is_some() {
            first = first.with_settled_auth(auth, BEFORE_AUTH);
        }
        out.push_str(&indent(&first.to_string()));
        let mut action = first.decision.action.clone();
        // The proxy decides again once the ClientHello names the server: always for a bare IP
        // (judged by the SNI name), and when rules test the SNI. Only the action can change.
        let by_ip = connect.dest_ip.is_some();
        let mut host = target.host.as_str();
        if let (Some(sni), Action::Inspect) = (args.sni.as_deref(), &action) {
            if by_ip || policy.uses_sni() {
                let mut facts = connect.with_sni(Some(sni)).with_user(user);
                if by_ip {
                    facts.host = sni;
                    host = sni;
                }
                let mut second = policy
                    .explain_connect(&facts)
                    .with_settled_auth(auth, AT_CONNECT);
                if by_ip {
                    // The SNI name is never looked up: what is dialled is the address.
                    second.resolution = None;
                }
                out.push_str(&format!(
                    "after the ClientHello (SNI {sni}; only the action can change):\n"
                ));
                out.push_str(&indent(&second.to_string()));
                action = second.decision.action.clone();
            }
        }
        match action {
            Action::Inspect => self.inside(host, auth, out),
            Action::Tunnel => out.push_str(
                "the tunnel is relayed untouched: the proxy never sees the requests inside it\n",
            ),
            Action::Deny { .. } => out.push_str("the client gets 403 with the reason above\n"),
        }
    }

    /// The request inside an inspected tunnel to `host`; authentication was settled (`auth`).
    fn inside(&self, host: &str, auth: portcullis_policy::AuthRequirement, out: &mut String) {
        let (args, target) = (self.args, self.target);
        out.push_str(&format!(
            "inspected request {} https://{host}{}:\n",
            args.method, target.path
        ));
        let facts = RequestFacts::new(&args.method, host, target.port, &target.path, args.client)
            .with_user_agent(args.ua.as_deref())
            .with_sni(args.sni.as_deref())
            .with_user(self.user);
        let mut inner = self
            .policy
            .explain_request(&facts)
            .with_settled_auth(auth, AT_CONNECT);
        // Inside the tunnel the origin is fixed: nothing is looked up again.
        inner.resolution = None;
        out.push_str(&indent(&inner.to_string()));
    }
}

fn join(addrs: &[IpAddr]) -> String {
    if addrs.is_empty() {
        return "no addresses".to_owned();
    }
    addrs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

pub(crate) fn indent(text: &str) -> String {
    text.lines().map(|l| format!("  {l}\n")).collect()
}

/// The parts of `--url` a decision needs.
pub(crate) struct Url {
    pub(crate) tls: bool,
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) path: String,
}

impl Url {
    pub(crate) fn parse(url: &str) -> anyhow::Result<Url> {
        let bad = |why: &str| anyhow::anyhow!("--url {url:?}: {why}");
        let (tls, rest) = match url.split_once("://") {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("https") => (true, rest),
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => (false, rest),
            Some((scheme, _)) => return Err(bad(&format!("the {scheme} scheme is not proxied"))),
            // `host:port`: what a CONNECT names.
            None => (true, url),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let authority: http::uri::Authority =
            authority.parse().map_err(|e| bad(&format!("{e}")))?;
        let host = authority.host();
        if host.is_empty() {
            return Err(bad("no host"));
        }
        Ok(Url {
            tls,
            host: host.to_owned(),
            port: authority.port_u16().unwrap_or(if tls { 443 } else { 80 }),
            path: path.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests;
mod transparent;
