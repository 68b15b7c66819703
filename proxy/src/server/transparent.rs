//! Binding the transparent listeners (`server.transparent_http_listen`,
//! `server.transparent_tls_listen`). A netfilter `redirect` sends a connection to the incoming
//! interface's address, so these usually listen on `0.0.0.0` and `[::]` together: an IPv6
//! listener is made v6-only, so both can hold the same port and each reads its own family's
//! original-destination option.

use super::{Bound, StartError};
use crate::config::ServerConfig;
use crate::original_dst::TransparentKind;

pub(super) fn bind(server: &ServerConfig) -> Result<Vec<Bound>, StartError> {
    let http = server
        .transparent_http_listen
        .iter()
        .map(|a| (a, TransparentKind::Http, "server.transparent_http_listen"));
    let tls = server
        .transparent_tls_listen
        .iter()
        .map(|a| (a, TransparentKind::Tls, "server.transparent_tls_listen"));
    let mut bound = Vec::new();
    for (addr, kind, key) in http.chain(tls) {
        let listener =
            super::listen::bind(*addr, server.listen_backlog, true).map_err(|error| {
                StartError::Listen {
                    addr: *addr,
                    key,
                    error,
                }
            })?;
        bound.push(Bound {
            addr: listener.local_addr()?,
            listener,
            proxy_protocol: false,
            transparent: Some(kind),
        });
    }
    Ok(bound)
}
