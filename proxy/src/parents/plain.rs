//! Plain HTTP through a parent: absolute-form requests over a pool of keep-alive connections
//! to the parent, with our `Proxy-Authorization` (the client's was stripped with the other
//! hop-by-hop headers long before). A parent that cannot be connected to is failed over from
//! without losing the request: its body is only handed to a connection once one is open.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::PROXY_AUTHORIZATION;
use http::{Request, Response, StatusCode, Uri};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpInfo};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioIo;
use portcullis_policy::{Host, Route};
use tokio::net::TcpStream;

use super::{Hop, ParentSpec, Parents};
use crate::body::{BoxError, ProxyBody};
use crate::config::Config;
use crate::error::{classify_error, ProxyError};
use crate::upstream::Dialer;

/// One parent's pool: every connection goes to the parent, whatever origin the request names.
pub(super) type ParentClient = Client<ParentConnector, RetryBody>;

pub(super) fn client(config: &Config, dialer: Arc<Dialer>, spec: &ParentSpec) -> ParentClient {
    crate::upstream::pooled_client_builder(config).build(ParentConnector {
        dialer,
        host: spec.host.clone(),
        port: spec.port,
    })
}

/// Dials the parent for any origin `Uri`.
#[derive(Clone, Debug)]
pub(crate) struct ParentConnector {
    dialer: Arc<Dialer>,
    host: Host,
    port: u16,
}

impl tower_service::Service<Uri> for ParentConnector {
    type Response = ParentIo;
    type Error = ProxyError;
    type Future = Pin<Box<dyn Future<Output = Result<ParentIo, ProxyError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _origin: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let stream = this.dialer.dial_parent(&this.host, this.port).await?;
            Ok(ParentIo(TokioIo::new(stream)))
        })
    }
}

/// A connection to a parent: tells hyper to write absolute-form request targets on it.
pub(crate) struct ParentIo(TokioIo<TcpStream>);

impl Connection for ParentIo {
    fn connected(&self) -> Connected {
        self.0.connected().proxy(true)
    }
}

impl hyper::rt::Read for ParentIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for ParentIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    // Forwarded so that hyper queues body chunks instead of copying them into a flat buffer.
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// The client's request body, left in a shared slot until a connection first reads it: when
/// connecting to one parent fails, the body is still there for the next.
pub(crate) struct RetryBody {
    state: State,
    hint: SizeHint,
    end: bool,
}

enum State {
    Waiting(Arc<Mutex<Option<ProxyBody>>>),
    Taken(ProxyBody),
}

impl Body for RetryBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let State::Waiting(slot) = &self.state {
            let taken = slot.lock().unwrap_or_else(|e| e.into_inner()).take();
            match taken {
                Some(body) => self.state = State::Taken(body),
                // Another attempt took it: this one must not send half a body.
                None => return Poll::Ready(None),
            }
        }
        match &mut self.state {
            State::Taken(body) => Pin::new(body).poll_frame(cx),
            State::Waiting(_) => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.state {
            State::Taken(body) => body.is_end_stream(),
            State::Waiting(_) => self.end,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.state {
            State::Taken(body) => body.size_hint(),
            State::Waiting(_) => self.hint,
        }
    }
}

impl Parents {
    /// Sends an absolute-form request (`Host` set, hop-by-hop headers gone) through the first
    /// parent of `route` that can be connected to.
    pub(crate) async fn send(
        &self,
        route: &Route,
        req: Request<ProxyBody>,
    ) -> Result<(Response<Incoming>, Hop), ProxyError> {
        let (head, body) = req.into_parts();
        let (hint, end) = (body.size_hint(), body.is_end_stream());
        let slot = Arc::new(Mutex::new(Some(body)));
        let mut last = None;
        for parent in self.route(route) {
            if parent.is_down() {
                continue;
            }
            let mut req = Request::new(RetryBody {
                state: State::Waiting(Arc::clone(&slot)),
                hint,
                end,
            });
            *req.method_mut() = head.method.clone();
            *req.uri_mut() = head.uri.clone();
            *req.version_mut() = head.version;
            *req.headers_mut() = head.headers.clone();
            // A fresh value per request: a Negotiate token is good for one use, and the
            // request may go out on any pooled connection, new or reused.
            let credentials = match parent.spec.credentials.header(parent.name()).await {
                Ok(credentials) => credentials,
                Err(err) => {
                    self.metrics
                        .parent_failed(parent.name(), super::ParentFailure::of(&err));
                    return Err(err);
                }
            };
            match credentials {
                Some(credentials) => {
                    req.headers_mut().insert(PROXY_AUTHORIZATION, credentials);
                }
                None => {
                    req.headers_mut().remove(PROXY_AUTHORIZATION);
                }
            }
            match parent.pool.request(req).await {
                Ok(response) if response.status() == StatusCode::PROXY_AUTHENTICATION_REQUIRED => {
                    let err = ProxyError::ParentAuth {
                        parent: parent.name().to_owned(),
                    };
                    self.metrics
                        .parent_failed(parent.name(), super::ParentFailure::of(&err));
                    return Err(err);
                }
                Ok(response) => {
                    self.succeeded(parent);
                    let peer = response
                        .extensions()
                        .get::<HttpInfo>()
                        .map(|info| info.remote_addr().ip());
                    let hierarchy = Self::hierarchy(route);
                    return Ok((response, Hop { hierarchy, peer }));
                }
                Err(e) if e.is_connect() => {
                    let err = classify_error(&e);
                    self.failed(parent, &err);
                    last = Some(err);
                }
                Err(e) => return Err(classify_error(&e)),
            }
        }
        Err(self.all_down(route, last))
    }
}
