//! Through the running proxy (`--proxy`, default the first configured listener): a CONNECT to
//! Exchange Online without credentials gets what the policy says (for the Outlook profile: 200
//! and the origin's own certificate); an ordinary site gets 407 when authentication is on and,
//! with credentials, our CA's leaf; the PAC file served is the one the policy renders.
//!
//! Each is compared with what the config says the proxy should do, so a wrong policy is
//! reported once, by the policy check, and a finding here means the running proxy differs from
//! its config (not reloaded, another proxy on the port) or a link beyond it is missing.

use std::net::SocketAddr;

use base64::Engine as _;
use portcullis_policy::{Action, AuthRequirement, Decision, Policy};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use super::{outlook, policy, tls_probe, Check, Credentials, Inputs, PROBE_TIMEOUT};
use crate::config::{AuthScheme, Config};

const FAMILY: &str = "proxy";
/// An ordinary site: any name the Outlook profile does not cover.
const ORDINARY: &str = "www.example.com";
const OFFLINE: &str =
    "without Internet access this is expected; otherwise see the host checks: the proxy \
                       host must reach it";
const NOT_RUNNING: &str = "start the proxy, or name the one to test with --proxy http://HOST:PORT";

pub(super) async fn run(inputs: &Inputs, policy: Option<&Policy>) -> Vec<Check> {
    let config = &inputs.config;
    let Some(proxy) = inputs
        .proxy
        .or_else(|| config.server.listen.first().map(|a| connectable(*a)))
    else {
        return vec![Check::skip(
            FAMILY,
            "running proxy",
            "no listener configured",
        )];
    };
    let Some(policy) = policy else {
        return vec![Check::fail(
            FAMILY,
            "running proxy",
            "the policy does not compile",
            "see the config check above",
        )];
    };
    if let Err(e) = TcpStream::connect(proxy).await {
        return vec![Check::fail(
            FAMILY,
            format!("proxy at {proxy}"),
            format!("cannot connect: {e}"),
            NOT_RUNNING,
        )];
    }
    let resolver = crate::upstream::Resolver::new(config).ok();
    let ca = our_ca(proxy).await;
    let mut out = Vec::new();
    let target = outlook::EXCHANGE_ONLINE;
    let expected = policy::decide(policy, resolver.as_ref(), target).await;
    out.push(connect_check(config, proxy, target, &expected, None, ca.as_ref()).await);
    let expected = policy::decide(policy, resolver.as_ref(), ORDINARY).await;
    let auth_on = !config.auth.schemes.is_empty() && expected.auth == AuthRequirement::Required;
    if auth_on {
        out.push(connect_check(config, proxy, ORDINARY, &expected, None, ca.as_ref()).await);
    }
    out.push(match (&inputs.credentials, auth_on) {
        (_, false) => connect_check(config, proxy, ORDINARY, &expected, None, ca.as_ref()).await,
        (Some(creds), true) if config.auth.schemes.contains(&AuthScheme::Basic) => {
            connect_check(config, proxy, ORDINARY, &expected, Some(creds), ca.as_ref()).await
        }
        (Some(_), true) => Check::skip(
            FAMILY,
            format!("CONNECT {ORDINARY} with credentials"),
            "Basic is off; the doctor authenticates with Basic only",
        ),
        (None, true) => Check::skip(
            FAMILY,
            format!("CONNECT {ORDINARY} with credentials"),
            "no credentials given (--user and --password-file)",
        ),
    });
    out.push(pac(config, proxy, policy).await);
    out
}

/// A wildcard listen address is reached through loopback.
fn connectable(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        let ip = if addr.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        };
        SocketAddr::new(ip, addr.port())
    } else {
        addr
    }
}

/// The CA the running proxy hands out to clients (`/ca.pem`): the one its leaves must chain to.
/// The CA files on disk are the CA checks' business; a proxy started before they changed still
/// uses the old one.
async fn our_ca(proxy: SocketAddr) -> Option<rustls::pki_types::CertificateDer<'static>> {
    let (status, body) = get_local(proxy, "/ca.pem").await.ok()?;
    if status != 200 {
        return None;
    }
    portcullis_certs::ca_cert_from_pem(&body).ok()
}

/// `GET path` from the proxy itself (origin-form: no credentials needed): status and body.
async fn get_local(proxy: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let exchange = async {
        let mut stream = TcpStream::connect(proxy).await.map_err(|e| e.to_string())?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {proxy}\r\nConnection: close\r\n\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut answer = Vec::new();
        (&mut stream)
            .take(1024 * 1024)
            .read_to_end(&mut answer)
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(String::from_utf8_lossy(&answer).into_owned())
    };
    let answer = tokio::time::timeout(PROBE_TIMEOUT, exchange)
        .await
        .unwrap_or_else(|_| Err("no answer within 5 s".to_owned()))?;
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = status_of(head).map_err(|e| format!("answered {e}"))?;
    Ok((status, body.to_owned()))
}

/// The status code of a response head; the first line quoted when it is not HTTP.
fn status_of(head: &str) -> Result<u16, String> {
    head.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| format!("{:?}, not HTTP", head.lines().next().unwrap_or_default()))
}

/// One CONNECT, judged against the decision the config makes for it.
async fn connect_check(
    config: &Config,
    proxy: SocketAddr,
    host: &str,
    expected: &Decision,
    creds: Option<&Credentials>,
    ca: Option<&rustls::pki_types::CertificateDer<'static>>,
) -> Check {
    let with = if creds.is_some() {
        "with credentials"
    } else {
        "without credentials"
    };
    let name = format!("CONNECT {host}:443 {with}");
    let challenged = creds.is_none()
        && !config.auth.schemes.is_empty()
        && expected.auth == AuthRequirement::Required;
    let want = match &expected.action {
        Action::Deny { .. } => 403,
        _ if challenged => 407,
        _ => 200,
    };
    let (status, cause, stream) = match connect(proxy, host, creds).await {
        Ok(answer) => answer,
        Err(e) => return Check::fail(FAMILY, name, e, NOT_RUNNING),
    };
    let cause = cause.map(|c| format!(" ({c})")).unwrap_or_default();
    if status != want {
        if want == 200 && matches!(status, 502..=504) {
            return Check::warn(
                FAMILY,
                name,
                format!("{status}{cause}: the proxy cannot reach {host}"),
                OFFLINE,
            );
        }
        return Check::fail(
            FAMILY,
            name,
            format!("{status}{cause}, but its config says {want} ({expected})"),
            "the running proxy does not run this config: reload it (`portcullis reload`) or check that --proxy names it",
        );
    }
    if status != 200 {
        return Check::pass(FAMILY, name, format!("{status}, as the policy says"));
    }
    let chain = match tls_probe::server_chain(stream, host).await {
        Ok(chain) => chain,
        Err(e) => return Check::warn(FAMILY, name, format!("200, then {e}"), OFFLINE),
    };
    let ours =
        ca.is_some_and(|ca| tls_probe::verify_with(std::slice::from_ref(ca), &chain, host).is_ok());
    let issuer = tls_probe::issuer(&chain[0]);
    match (&expected.action, ours) {
        (Action::Inspect, true) => {
            Check::pass(FAMILY, name, format!("200; our CA's leaf ({issuer})"))
        }
        (Action::Inspect, false) if ca.is_some() => Check::fail(
            FAMILY,
            name,
            format!(
                "200, but the leaf is issued by {issuer}, not the CA the proxy serves at /ca.pem"
            ),
            "another TLS-inspecting proxy answers on this address: check --proxy",
        ),
        (Action::Inspect, false) => Check::pass(FAMILY, name, format!("200; issued by {issuer}")),
        (_, false) => Check::pass(
            FAMILY,
            name,
            format!("200; the origin's own certificate (issued by {issuer})"),
        ),
        (_, true) => Check::fail(
            FAMILY,
            name,
            "200, but the certificate is our CA's leaf: the proxy inspects it",
            "the running proxy does not run this config: reload it (`portcullis reload`)",
        ),
    }
}

/// Sends `CONNECT host:443` and reads the answer's head: status, `X-Portcullis-Error`, and the
/// connection (a tunnel on 200).
async fn connect(
    proxy: SocketAddr,
    host: &str,
    creds: Option<&Credentials>,
) -> Result<(u16, Option<String>, TcpStream), String> {
    let mut request = format!("CONNECT {host}:443 HTTP/1.1\r\nHost: {host}:443\r\n");
    if let Some(c) = creds {
        let token =
            base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", c.user, c.password));
        request.push_str(&format!("Proxy-Authorization: Basic {token}\r\n"));
    }
    request.push_str("\r\n");
    let exchange = async {
        let mut stream = TcpStream::connect(proxy)
            .await
            .map_err(|e| format!("cannot connect to the proxy at {proxy}: {e}"))?;
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("proxy {proxy}: {e}"))?;
        let head = read_head(&mut stream).await?;
        let status = status_of(&head).map_err(|e| format!("proxy {proxy} answered {e}"))?;
        let cause = head.lines().find_map(|l| {
            l.split_once(':')
                .filter(|(k, _)| k.eq_ignore_ascii_case("x-portcullis-error"))
                .map(|(_, v)| v.trim().to_owned())
        });
        Ok((status, cause, stream))
    };
    // The proxy dials the origin before it answers: allow for its connect timeout.
    tokio::time::timeout(PROBE_TIMEOUT * 4, exchange)
        .await
        .unwrap_or_else(|_| Err(format!("the proxy at {proxy} did not answer within 20 s")))
}

/// Reads up to the end of a response head, no further (on 200 the tunnel follows).
async fn read_head(stream: &mut TcpStream) -> Result<String, String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 16 * 1024 {
            return Err("the answer's head is longer than 16 KB".to_owned());
        }
        match stream.read(&mut byte).await {
            Ok(0) => break,
            Ok(_) => head.push(byte[0]),
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

/// `GET /proxy.pac` from the proxy itself, compared with what the policy renders.
async fn pac(config: &Config, proxy: SocketAddr, policy: &Policy) -> Check {
    let name = "PAC file served";
    let (status, body) = match get_local(proxy, "/proxy.pac").await {
        Ok(answer) => answer,
        Err(e) => return Check::fail(FAMILY, name, e, NOT_RUNNING),
    };
    if status != 200 {
        return Check::fail(
            FAMILY,
            name,
            format!("answered {status}"),
            "the process on this port is not Portcullis: check --proxy",
        );
    }
    let authority = proxy.to_string();
    // The proxy sends the file with a Content-Length; the body is the rendered text as is.
    if body == portcullis_policy::pac::render(policy, &authority) {
        Check::pass(
            FAMILY,
            name,
            format!(
                "identical to what the policy renders; clients are sent to {}",
                pac_target(config, &authority)
            ),
        )
    } else {
        Check::fail(
            FAMILY,
            name,
            "differs from what this config renders",
            "the running proxy does not run this config: reload it (`portcullis reload`)",
        )
    }
}

fn pac_target(config: &Config, authority: &str) -> String {
    config
        .policy
        .pac
        .proxy
        .clone()
        .map_or_else(|| format!("PROXY {authority}"), |p| format!("PROXY {p}"))
}
