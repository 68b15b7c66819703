//! `[netfilter.intercept]` + the proxy's transparent listeners → the redirects. The redirect
//! ports are the listeners' own, read from the same config, so the rules can never point at a
//! port nothing listens on; with no transparent listener there is nothing to redirect to, and
//! enabling interception is an error rather than a rule sending web traffic into a closed port.

use std::net::SocketAddr;

use super::compile::{invalid, CompileError, P};
use super::model::{InterceptConfig, Mode};
use super::spec::{Intercept, NetfilterFacts};

pub(super) fn compile(
    ic: &InterceptConfig,
    facts: &NetfilterFacts,
    mode: Mode,
) -> Result<Option<Intercept>, CompileError> {
    if !ic.enabled {
        return Ok(None);
    }
    if mode != Mode::Gateway {
        return Err(CompileError::GatewayOnly {
            key: format!("{P}.intercept.enabled"),
            what: "transparent interception",
        });
    }
    if facts.transparent_http.is_empty() && facts.transparent_tls.is_empty() {
        return Err(invalid(
            format!("{P}.intercept.enabled"),
            "no transparent listener is configured (server.transparent_http_listen, \
             server.transparent_tls_listen): a redirect would send LAN web traffic to a port \
             nothing serves",
        ));
    }
    let http_port = port(
        ic.http_port,
        &facts.transparent_http,
        "http_port",
        "server.transparent_http_listen",
    )?;
    let https_port = port(
        ic.https_port,
        &facts.transparent_tls,
        "https_port",
        "server.transparent_tls_listen",
    )?;
    if http_port.is_some() && http_port == https_port {
        return Err(invalid(
            format!("{P}.intercept.https_port"),
            "must differ from http_port: the proxy tells HTTP from TLS by the listener",
        ));
    }
    Ok(Some(Intercept {
        http_port,
        https_port,
        reject_quic: ic.reject_quic,
    }))
}

/// The one port the listeners of a kind share, checked against the optional config value.
fn port(
    configured: Option<u16>,
    listeners: &[SocketAddr],
    key: &str,
    listen_key: &str,
) -> Result<Option<u16>, CompileError> {
    let key = format!("{P}.intercept.{key}");
    if configured == Some(0) {
        return Err(invalid(key, "port 0 is not valid"));
    }
    // A redirect goes to the address of the interface the packet came in on, never loopback.
    let reachable: Vec<&SocketAddr> = listeners.iter().filter(|a| !a.ip().is_loopback()).collect();
    let Some(first) = reachable.first() else {
        return match (configured, listeners.is_empty()) {
            (Some(p), true) => Err(invalid(key, format!("redirects to port {p}, but {listen_key} is empty"))),
            (_, false) => Err(invalid(
                listen_key.to_owned(),
                "listens only on loopback, which a netfilter redirect never reaches: listen on 0.0.0.0 and [::]",
            )),
            (None, true) => Ok(None),
        };
    };
    let listener_port = first.port();
    if listener_port == 0 {
        return Err(invalid(
            listen_key.to_owned(),
            "port 0 (chosen by the OS) cannot be a redirect target",
        ));
    }
    if let Some(other) = reachable.iter().find(|a| a.port() != listener_port) {
        return Err(invalid(
            listen_key.to_owned(),
            format!("{first} and {other} use different ports; one redirect needs one port"),
        ));
    }
    match configured {
        Some(p) if p != listener_port => Err(invalid(
            key,
            format!("is {p}, but {listen_key} listens on port {listener_port}; leave it unset to use the listener's"),
        )),
        _ => Ok(Some(listener_port)),
    }
}
