//! The origin side of one intercepted tunnel: a TLS connection to the origin (re-established
//! when the origin closes it), speaking the protocol the origin chose with ALPN.
//!
//! Requests of one client connection all go to the same origin connection in turn — Squid calls
//! this connection pinning — which is also what connection-oriented origin auth (NTLM/Negotiate
//! to Exchange) needs.

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::sync::Mutex;
use tokio_rustls::client::TlsStream;

use super::upstream_tls::classify_handshake_error;
use crate::body::ProxyBody;
use crate::error::ProxyError;
use crate::parents::{Hop, Parents};
use crate::upstream::Dialer;
use portcullis_policy::Route;

pub(crate) struct Session {
    /// The origin's (or the parent proxy's) address and the hierarchy code, for the access log.
    pub hop: Hop,
    /// The parent proxies the tunnel went through: a reconnection goes the same way.
    via: Option<(Arc<Parents>, Route)>,
    pub(crate) host: portcullis_policy::Host,
    pub port: u16,
    server_name: ServerName<'static>,
    tls: Arc<rustls::ClientConfig>,
    dialer: Arc<Dialer>,
    h2: bool,
    /// `upstream.read_buffer_bytes`.
    read_buffer: usize,
    sender: Mutex<Sender>,
}

enum Sender {
    /// The connection established during the CONNECT, not yet handshaken for HTTP.
    Fresh(Box<TlsStream<TcpStream>>),
    H1(http1::SendRequest<ProxyBody>),
    H2(http2::SendRequest<ProxyBody>),
    None,
}

impl Session {
    pub(crate) fn new(
        host: portcullis_policy::Host,
        port: u16,
        server_name: ServerName<'static>,
        tls: Arc<rustls::ClientConfig>,
        dialer: Arc<Dialer>,
        first: TlsStream<TcpStream>,
        (hop, via): (Hop, Option<(Arc<Parents>, Route)>),
    ) -> Session {
        let h2 = first.get_ref().1.alpn_protocol() == Some(super::upstream_tls::H2);
        Session {
            hop,
            via,
            host,
            port,
            server_name,
            tls,
            dialer,
            h2,
            read_buffer: crate::config::DEFAULT_READ_BUFFER_BYTES,
            sender: Mutex::new(Sender::Fresh(Box::new(first))),
        }
    }

    /// The largest read buffer of the origin connection (`upstream.read_buffer_bytes`).
    pub(crate) fn with_read_buffer(mut self, bytes: usize) -> Session {
        self.read_buffer = bytes;
        self
    }

    pub(crate) fn is_h2(&self) -> bool {
        self.h2
    }

    /// A new TLS connection to the origin, verified like the first.
    async fn reconnect(&self) -> Result<TlsStream<TcpStream>, ProxyError> {
        let tcp = match &self.via {
            Some((parents, route)) => {
                let authority = format!("{}:{}", self.host.to_uri_host(), self.port);
                parents.tunnel(route, &authority).await?.0
            }
            None => self.dialer.dial(&self.host, self.port).await?,
        };
        tokio_rustls::TlsConnector::from(Arc::clone(&self.tls))
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(|e| classify_handshake_error(&e, self.host.as_str()))
    }

    async fn handshake(&self, tls: TlsStream<TcpStream>) -> Result<Sender, ProxyError> {
        let io = TokioIo::new(tls);
        let upstream_err = |e: hyper::Error| ProxyError::Upstream(e.to_string());
        if self.h2 {
            let (sender, conn) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .handshake(io)
                .await
                .map_err(upstream_err)?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "origin h2 connection ended");
                }
            });
            Ok(Sender::H2(sender))
        } else {
            let (sender, conn) = http1::Builder::new()
                .preserve_header_case(true)
                .max_buf_size(self.read_buffer)
                .handshake(io)
                .await
                .map_err(upstream_err)?;
            tokio::spawn(async move {
                if let Err(e) = conn.with_upgrades().await {
                    tracing::debug!(error = %e, "origin connection ended");
                }
            });
            Ok(Sender::H1(sender))
        }
    }

    /// Sends one request, reconnecting when the origin has closed the connection. A request is
    /// retried on a new connection only if hyper hands it back unsent.
    pub(crate) async fn send(
        &self,
        req: Request<ProxyBody>,
    ) -> Result<Response<Incoming>, ProxyError> {
        self.send_inner(req).await.map_err(|e| match e {
            SendError::Proxy(e) => e,
            SendError::Hyper(e) => crate::error::classify_error(&e),
        })
    }

    async fn send_inner(
        &self,
        mut req: Request<ProxyBody>,
    ) -> Result<Response<Incoming>, SendError> {
        for attempt in 0..2 {
            let mut guard = self.sender.lock().await;
            let usable = match &mut *guard {
                Sender::H1(s) => s.ready().await.is_ok(),
                Sender::H2(s) => s.ready().await.is_ok(),
                Sender::Fresh(_) => true,
                Sender::None => false,
            };
            if !usable {
                *guard = Sender::None;
            }
            if let Sender::Fresh(_) | Sender::None = &*guard {
                let tls = match std::mem::replace(&mut *guard, Sender::None) {
                    Sender::Fresh(tls) => *tls,
                    _ => self.reconnect().await.map_err(SendError::Proxy)?,
                };
                *guard = self.handshake(tls).await.map_err(SendError::Proxy)?;
            }
            match &mut *guard {
                Sender::H2(s) => {
                    let mut s = s.clone();
                    drop(guard); // h2 multiplexes: don't serialise on the lock
                    return match s.try_send_request(req).await {
                        Ok(resp) => Ok(resp),
                        Err(mut e) => match e.take_message() {
                            Some(back) if attempt == 0 => {
                                req = back;
                                *self.sender.lock().await = Sender::None;
                                continue;
                            }
                            _ => Err(SendError::Hyper(e.into_error())),
                        },
                    };
                }
                Sender::H1(s) => match s.try_send_request(req).await {
                    Ok(resp) => return Ok(resp),
                    Err(mut e) => match e.take_message() {
                        Some(back) if attempt == 0 => {
                            req = back;
                            *guard = Sender::None;
                            continue;
                        }
                        _ => {
                            *guard = Sender::None;
                            return Err(SendError::Hyper(e.into_error()));
                        }
                    },
                },
                Sender::Fresh(_) | Sender::None => unreachable_sender()?,
            }
        }
        Err(SendError::Proxy(ProxyError::UpstreamClosed))
    }
}

fn unreachable_sender() -> Result<(), SendError> {
    Err(SendError::Proxy(ProxyError::Upstream(
        "no origin connection".into(),
    )))
}

#[derive(Debug)]
enum SendError {
    Proxy(ProxyError),
    Hyper(hyper::Error),
}
